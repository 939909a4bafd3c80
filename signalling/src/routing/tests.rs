//! Router tests on a virtual clock: one scenario per test, plus a seeded randomised run checking invariants.

use std::time::Duration;

use super::*;

const S: Duration = Duration::from_secs(1);

fn g(name: &str) -> GroupId {
    GroupId::new(name)
}

fn c(n: u64) -> ConversationId {
    ConversationId(n)
}

fn a(n: i64) -> AgentId {
    AgentId(n)
}

/// A router driven by a virtual clock, collecting every action.
struct Sim {
    r: Router,
    now: Instant,
}

impl Sim {
    fn new() -> Self {
        Self::with(RouterConfig::default())
    }

    fn with(config: RouterConfig) -> Self {
        Self {
            r: Router::new(config),
            now: Instant::now(),
        }
    }

    /// Drains pending actions (after checking the invariants) and returns them.
    fn drain(&mut self) -> Vec<Action> {
        self.r.check_invariants().unwrap();
        let mut out = Vec::new();
        while let Some(act) = self.r.poll_action() {
            out.push(act);
        }
        out
    }

    /// Drains pending actions without the (linear) invariant check, for the large scenario.
    fn drain_unchecked(&mut self) -> Vec<Action> {
        std::iter::from_fn(|| self.r.poll_action()).collect()
    }

    /// Advances the clock by `d`, firing each timer at its own instant, and returns the actions.
    fn advance(&mut self, d: Duration) -> Vec<Action> {
        let target = self.now + d;
        while let Some(t) = self.r.poll_timeout() {
            if t > target {
                break;
            }
            self.now = self.now.max(t);
            self.r.handle_timeout(self.now);
        }
        self.now = target;
        self.drain()
    }

    /// An agent, connected and available, in `groups` with `capacity`.
    fn agent(&mut self, id: i64, groups: &[&str], capacity: u32) {
        self.r
            .add_agent(self.now, a(id), groups.iter().map(|n| g(n)), capacity)
            .unwrap();
        self.r.handle_agent_connected(self.now, a(id)).unwrap();
        self.r.set_presence(self.now, a(id), Presence::Available).unwrap();
        self.drain();
    }

    fn enqueue(&mut self, conv: u64, group: &str) -> Vec<Action> {
        self.r.enqueue(self.now, c(conv), g(group)).unwrap();
        self.drain()
    }

    fn accept(&mut self, agent: i64, conv: u64) -> Vec<Action> {
        self.r.accept(self.now, a(agent), c(conv)).unwrap();
        self.drain()
    }

    fn end(&mut self, conv: u64) -> Vec<Action> {
        self.r.end(self.now, c(conv)).unwrap();
        self.drain()
    }

    /// The agent the conversation is currently offered to (queue or transfer offer).
    fn offered_to(&self, conv: u64) -> Option<AgentId> {
        match self.r.conversation_state(c(conv))? {
            ConversationState::Queued { offered_to, .. } => offered_to,
            ConversationState::Assigned { transfer_to, .. } => transfer_to,
        }
    }

    fn assigned_to(&self, conv: u64) -> Option<AgentId> {
        match self.r.conversation_state(c(conv))? {
            ConversationState::Assigned { agent, .. } => Some(agent),
            ConversationState::Queued { .. } => None,
        }
    }
}

fn offers(actions: &[Action]) -> Vec<(ConversationId, AgentId)> {
    actions
        .iter()
        .filter_map(|x| match x {
            Action::Offer {
                conversation, agent, ..
            } => Some((*conversation, *agent)),
            _ => None,
        })
        .collect()
}

fn positions(actions: &[Action]) -> Vec<(ConversationId, u32)> {
    actions
        .iter()
        .filter_map(|x| match x {
            Action::QueuePosition { conversation, position } => Some((*conversation, *position)),
            _ => None,
        })
        .collect()
}

#[test]
fn longest_idle_agent_gets_the_offer() {
    let mut s = Sim::new();
    s.agent(1, &["sales"], 1);
    s.advance(S);
    s.agent(2, &["sales"], 1);
    s.advance(S);
    s.agent(3, &["sales"], 1);

    let acts = s.enqueue(10, "sales");
    assert_eq!(offers(&acts), vec![(c(10), a(1))]);
    let Action::Offer {
        expires_at,
        transfer_from,
        ..
    } = acts.iter().find(|x| matches!(x, Action::Offer { .. })).unwrap()
    else {
        unreachable!()
    };
    assert_eq!(*expires_at, s.now + Duration::from_secs(20));
    assert_eq!(*transfer_from, None);
    s.accept(1, 10);
    assert_eq!(offers(&s.enqueue(11, "sales")), vec![(c(11), a(2))]);
    s.accept(2, 11);

    // Agent 1 finishes at t=10: now idle since 10, later than agent 3 (idle since 2).
    s.advance(8 * S);
    s.end(10);
    assert_eq!(offers(&s.enqueue(12, "sales")), vec![(c(12), a(3))]);
    s.accept(3, 12);
    assert_eq!(offers(&s.enqueue(13, "sales")), vec![(c(13), a(1))]);
}

#[test]
fn least_loaded_first_then_longest_idle() {
    let mut s = Sim::new();
    s.agent(1, &["g"], 3);
    s.advance(S);
    s.agent(2, &["g"], 3);
    // 1 is longer idle: gets the first; then 2 (load 0 beats load 1); then 1 again (both load 1, 1 idle longer).
    assert_eq!(offers(&s.enqueue(1, "g")), vec![(c(1), a(1))]);
    s.accept(1, 1);
    assert_eq!(offers(&s.enqueue(2, "g")), vec![(c(2), a(2))]);
    s.accept(2, 2);
    assert_eq!(offers(&s.enqueue(3, "g")), vec![(c(3), a(1))]);
}

#[test]
fn agent_in_several_groups_gets_the_longest_waiting_visitor() {
    let mut s = Sim::new();
    // Visitors wait in "zeta" first, then "alpha"; the name order must not decide.
    s.enqueue(1, "zeta");
    s.advance(S);
    s.enqueue(2, "alpha");
    s.agent(1, &["alpha", "zeta"], 1);
    assert_eq!(s.offered_to(1), Some(a(1)));
    s.accept(1, 1);
    s.end(1);
    assert_eq!(s.offered_to(2), Some(a(1)));
    s.accept(1, 2);
    // A requeued conversation goes before fresh visitors of every group.
    s.enqueue(3, "zeta");
    s.advance(S);
    s.r.set_presence(s.now, a(1), Presence::Away).unwrap();
    s.r.transfer_to_group(s.now, a(1), c(2), g("alpha")).unwrap();
    s.drain();
    s.agent(2, &["alpha", "zeta"], 1);
    assert_eq!(s.offered_to(2), Some(a(2)), "the transferred conversation first");
    assert_eq!(s.offered_to(3), None);
}

#[test]
fn capacity_is_respected() {
    let mut s = Sim::new();
    s.agent(1, &["g"], 2);
    s.enqueue(1, "g");
    s.accept(1, 1);
    s.enqueue(2, "g");
    let acts = s.accept(1, 2);
    assert!(acts.contains(&Action::AgentStatusChanged {
        agent: a(1),
        status: AgentStatus::Busy
    }));
    let acts = s.enqueue(3, "g");
    assert!(offers(&acts).is_empty(), "{acts:?}");
    assert_eq!(positions(&acts), vec![(c(3), 1)]);
    assert_eq!(s.r.agent_status(a(1)), Some(AgentStatus::Busy));
    // Nothing happens with time alone.
    assert!(offers(&s.advance(600 * S)).is_empty());
    let acts = s.end(1);
    assert_eq!(offers(&acts), vec![(c(3), a(1))]);
    assert_eq!(s.r.agent_conversations(a(1)), vec![c(2)]);
}

#[test]
fn one_offer_at_a_time_per_agent() {
    let mut s = Sim::new();
    s.agent(1, &["g"], 5);
    s.enqueue(1, "g");
    let acts = s.enqueue(2, "g");
    assert!(
        offers(&acts).is_empty(),
        "second offer while the first is outstanding: {acts:?}"
    );
    assert_eq!(offers(&s.accept(1, 1)), vec![(c(2), a(1))]);
}

#[test]
fn offer_timeout_reroutes_and_skips_the_silent_agent() {
    let mut s = Sim::new();
    s.agent(1, &["g"], 1);
    s.advance(S);
    s.agent(2, &["g"], 1);
    s.enqueue(7, "g");
    assert_eq!(s.offered_to(7), Some(a(1)));
    let deadline = s.r.poll_timeout().unwrap();
    assert_eq!(deadline, s.now + Duration::from_secs(20));
    let acts = s.advance(Duration::from_millis(19_999));
    assert!(acts.is_empty(), "{acts:?}");
    let acts = s.advance(Duration::from_millis(1));
    assert_eq!(
        acts[0],
        Action::OfferWithdrawn {
            conversation: c(7),
            agent: a(1),
            reason: WithdrawReason::Timeout
        }
    );
    assert_eq!(offers(&acts), vec![(c(7), a(2))]);
    // The late accept is refused.
    assert_eq!(
        s.r.accept(s.now, a(1), c(7)),
        Err(RoutingError::NotOfferedToYou {
            conversation: c(7),
            agent: a(1)
        })
    );
    // Agent 2 is silent too: agent 1 is still skipped (60 s), so nobody gets it for now...
    let acts = s.advance(20 * S);
    assert!(offers(&acts).is_empty(), "{acts:?}");
    // ...until agent 1's skip ends (60 s after their lapse).
    let acts = s.advance(40 * S);
    assert_eq!(offers(&acts), vec![(c(7), a(1))]);
    s.accept(1, 7);
    assert_eq!(s.assigned_to(7), Some(a(1)));
}

#[test]
fn decline_goes_to_the_next_agent() {
    let mut s = Sim::new();
    s.agent(1, &["g"], 1);
    s.advance(S);
    s.agent(2, &["g"], 1);
    s.advance(S);
    s.agent(3, &["g"], 1);
    s.enqueue(1, "g");
    s.r.decline(s.now, a(1), c(1)).unwrap();
    let acts = s.drain();
    assert_eq!(offers(&acts), vec![(c(1), a(2))]);
    assert!(
        !acts.iter().any(|x| matches!(x, Action::OfferWithdrawn { .. })),
        "decliner needs no withdrawal"
    );
    s.r.decline(s.now, a(2), c(1)).unwrap();
    assert_eq!(offers(&s.drain()), vec![(c(1), a(3))]);
    // Declining something not offered to you is an error.
    assert_eq!(
        s.r.decline(s.now, a(1), c(1)),
        Err(RoutingError::NotOfferedToYou {
            conversation: c(1),
            agent: a(1)
        })
    );
    s.accept(3, 1);
}

#[test]
fn decline_by_the_only_agent_retries_after_the_skip() {
    let mut s = Sim::new();
    s.agent(1, &["g"], 1);
    s.enqueue(1, "g");
    s.r.decline(s.now, a(1), c(1)).unwrap();
    assert!(offers(&s.drain()).is_empty());
    // A second visitor is not blocked by the first.
    assert_eq!(offers(&s.enqueue(2, "g")), vec![(c(2), a(1))]);
    s.r.decline(s.now, a(1), c(2)).unwrap();
    s.drain();
    let acts = s.advance(60 * S);
    assert_eq!(offers(&acts), vec![(c(1), a(1))], "first in queue first");
}

#[test]
fn agent_drop_requeues_after_grace_not_before() {
    let mut s = Sim::new();
    s.agent(1, &["g"], 2);
    s.enqueue(1, "g");
    s.accept(1, 1);
    s.enqueue(2, "g");
    s.accept(1, 2);
    s.enqueue(3, "g"); // waits: agent 1 is at capacity
    s.r.handle_agent_disconnected(s.now, a(1)).unwrap();
    let acts = s.drain();
    assert!(acts.contains(&Action::AgentStatusChanged {
        agent: a(1),
        status: AgentStatus::Offline
    }));
    assert_eq!(s.r.poll_timeout(), Some(s.now + Duration::from_secs(30)));
    let acts = s.advance(Duration::from_millis(29_999));
    assert!(acts.is_empty(), "{acts:?}");
    assert_eq!(s.assigned_to(1), Some(a(1)));

    // A fresh agent arrives meanwhile; it takes the waiting visitor, not the dropped agent's ones.
    s.agent(2, &["g"], 3);
    assert_eq!(s.offered_to(3), Some(a(2)));
    s.accept(2, 3);

    let acts = s.advance(Duration::from_millis(1));
    let requeued: Vec<_> = acts
        .iter()
        .filter(|x| matches!(x, Action::Requeued { .. }))
        .cloned()
        .collect();
    assert_eq!(
        requeued,
        vec![
            Action::Requeued {
                conversation: c(1),
                group: g("g"),
                previous_agent: a(1),
                reason: RequeueReason::AgentLost
            },
            Action::Requeued {
                conversation: c(2),
                group: g("g"),
                previous_agent: a(1),
                reason: RequeueReason::AgentLost
            },
        ]
    );
    assert_eq!(positions(&acts), vec![(c(1), 1), (c(2), 2)]);
    assert_eq!(offers(&acts), vec![(c(1), a(2))]);
    assert_eq!(s.r.agent_presence(a(1)), Some(Presence::Offline));
    assert!(s.r.agent_conversations(a(1)).is_empty());
    // Coming back later does not make the agent available by itself.
    s.r.handle_agent_connected(s.now, a(1)).unwrap();
    s.drain();
    assert_eq!(s.r.agent_status(a(1)), Some(AgentStatus::Offline));
}

#[test]
fn reconnect_within_grace_keeps_conversations() {
    let mut s = Sim::new();
    s.agent(1, &["g"], 2);
    s.agent(2, &["g"], 2);
    s.enqueue(1, "g");
    let holder = s.offered_to(1).unwrap();
    s.r.accept(s.now, holder, c(1)).unwrap();
    s.drain();
    s.r.handle_agent_disconnected(s.now, holder).unwrap();
    s.advance(29 * S);
    s.r.handle_agent_connected(s.now, holder).unwrap();
    let acts = s.drain();
    assert!(acts.contains(&Action::AgentStatusChanged {
        agent: holder,
        status: AgentStatus::Available
    }));
    assert_eq!(s.r.poll_timeout(), None, "grace timer cancelled");
    let acts = s.advance(600 * S);
    assert!(acts.is_empty(), "{acts:?}");
    assert_eq!(s.assigned_to(1), Some(holder));
    // A second drop gets a fresh grace period.
    s.r.handle_agent_disconnected(s.now, holder).unwrap();
    s.drain();
    assert!(s.advance(29 * S).is_empty());
    assert_eq!(
        s.advance(S)
            .iter()
            .filter(|x| matches!(x, Action::Requeued { .. }))
            .count(),
        1
    );
}

#[test]
fn an_agent_with_two_sockets_stays_connected_until_both_close() {
    let mut s = Sim::new();
    s.agent(1, &["g"], 1);
    s.r.handle_agent_connected(s.now, a(1)).unwrap(); // second tab
    s.enqueue(1, "g");
    s.accept(1, 1);
    s.r.handle_agent_disconnected(s.now, a(1)).unwrap();
    assert!(s.drain().is_empty(), "one tab closed: nothing changes");
    assert_eq!(s.r.poll_timeout(), None, "no grace period started");
    assert_eq!(s.r.agent_status(a(1)), Some(AgentStatus::Busy));
    s.r.handle_agent_disconnected(s.now, a(1)).unwrap();
    assert!(s.drain().contains(&Action::AgentStatusChanged {
        agent: a(1),
        status: AgentStatus::Offline
    }));
    // More closes than opens are ignored.
    s.r.handle_agent_disconnected(s.now, a(1)).unwrap();
    s.drain();
    let acts = s.advance(30 * S);
    assert_eq!(acts.iter().filter(|x| matches!(x, Action::Requeued { .. })).count(), 1);
    s.r.handle_agent_connected(s.now, a(1)).unwrap();
    s.drain();
    s.r.set_presence(s.now, a(1), Presence::Available).unwrap();
    assert_eq!(offers(&s.drain()), vec![(c(1), a(1))]);
}

#[test]
fn disconnect_withdraws_an_outstanding_offer_at_once() {
    let mut s = Sim::new();
    s.agent(1, &["g"], 1);
    s.advance(S);
    s.agent(2, &["g"], 1);
    s.enqueue(1, "g");
    assert_eq!(s.offered_to(1), Some(a(1)));
    s.r.handle_agent_disconnected(s.now, a(1)).unwrap();
    let acts = s.drain();
    assert_eq!(
        acts[0],
        Action::OfferWithdrawn {
            conversation: c(1),
            agent: a(1),
            reason: WithdrawReason::AgentUnavailable
        }
    );
    assert_eq!(offers(&acts), vec![(c(1), a(2))]);
}

#[test]
fn away_keeps_conversations_and_takes_no_offers() {
    let mut s = Sim::new();
    s.agent(1, &["g"], 3);
    s.enqueue(1, "g");
    s.accept(1, 1);
    s.enqueue(2, "g");
    s.r.set_presence(s.now, a(1), Presence::Away).unwrap();
    let acts = s.drain();
    assert!(acts.contains(&Action::OfferWithdrawn {
        conversation: c(2),
        agent: a(1),
        reason: WithdrawReason::AgentUnavailable
    }));
    assert!(acts.contains(&Action::AgentStatusChanged {
        agent: a(1),
        status: AgentStatus::Away
    }));
    assert_eq!(s.assigned_to(1), Some(a(1)));
    assert!(offers(&s.enqueue(3, "g")).is_empty());
    s.r.set_presence(s.now, a(1), Presence::Available).unwrap();
    assert_eq!(offers(&s.drain()), vec![(c(2), a(1))]);
}

#[test]
fn missed_offers_set_the_agent_away() {
    let mut s = Sim::new();
    s.agent(1, &["g"], 5);
    for conv in 1..=3 {
        s.enqueue(conv, "g");
    }
    // Each lapse skips the agent for that conversation only; the next one is offered.
    s.advance(20 * S);
    s.advance(20 * S);
    assert_eq!(s.r.agent_presence(a(1)), Some(Presence::Available));
    let acts = s.advance(20 * S);
    assert!(
        acts.contains(&Action::AgentStatusChanged {
            agent: a(1),
            status: AgentStatus::Away
        }),
        "{acts:?}"
    );
    assert_eq!(s.r.agent_presence(a(1)), Some(Presence::Away));
    assert!(offers(&s.advance(600 * S)).is_empty());
    // An answer (even a decline) resets the count.
    s.r.set_presence(s.now, a(1), Presence::Available).unwrap();
    s.drain();
    assert!(s.offered_to(1).is_some());
}

#[test]
fn transfer_to_agent_accepted() {
    let mut s = Sim::new();
    s.agent(1, &["g"], 2);
    s.advance(S);
    s.agent(2, &["h"], 2);
    s.enqueue(1, "g");
    s.accept(1, 1);
    s.r.transfer_to_agent(s.now, a(1), c(1), a(2)).unwrap();
    let acts = s.drain();
    assert!(matches!(
        acts.as_slice(),
        [Action::Offer { conversation, agent, transfer_from: Some(from), .. }, ..]
            if *conversation == c(1) && *agent == a(2) && *from == a(1)
    ));
    // Still with agent 1 until agent 2 accepts.
    assert_eq!(s.assigned_to(1), Some(a(1)));
    assert_eq!(
        s.r.transfer_to_agent(s.now, a(1), c(1), a(2)),
        Err(RoutingError::TransferPending(c(1)))
    );
    let acts = s.accept(2, 1);
    assert!(acts.contains(&Action::Assigned {
        conversation: c(1),
        agent: a(2),
        previous: Some(a(1))
    }));
    assert_eq!(s.assigned_to(1), Some(a(2)));
    assert!(s.r.agent_conversations(a(1)).is_empty());
    assert_eq!(s.r.agent_conversations(a(2)), vec![c(1)]);
    // The group stays the original one.
    assert_eq!(s.r.access(c(1)).unwrap().group, g("g"));
}

#[test]
fn transfer_to_agent_declined_or_lapsed_stays() {
    let mut s = Sim::new();
    s.agent(1, &["g"], 2);
    s.agent(2, &["g"], 2);
    s.enqueue(1, "g");
    let first = s.offered_to(1).unwrap();
    let other = if first == a(1) { a(2) } else { a(1) };
    s.r.accept(s.now, first, c(1)).unwrap();
    s.drain();
    s.r.transfer_to_agent(s.now, first, c(1), other).unwrap();
    s.drain();
    s.r.decline(s.now, other, c(1)).unwrap();
    let acts = s.drain();
    assert_eq!(
        acts,
        vec![Action::TransferFailed {
            conversation: c(1),
            from: first,
            to: other,
            reason: TransferFailure::Declined
        }]
    );
    assert_eq!(s.assigned_to(1), Some(first));
    s.r.transfer_to_agent(s.now, first, c(1), other).unwrap();
    s.drain();
    let acts = s.advance(20 * S);
    assert!(acts.contains(&Action::TransferFailed {
        conversation: c(1),
        from: first,
        to: other,
        reason: TransferFailure::Timeout
    }));
    assert!(acts.contains(&Action::OfferWithdrawn {
        conversation: c(1),
        agent: other,
        reason: WithdrawReason::Timeout
    }));
    assert_eq!(s.assigned_to(1), Some(first));
}

#[test]
fn transfer_errors() {
    let mut s = Sim::new();
    s.agent(1, &["g"], 1);
    s.agent(2, &["g"], 1);
    s.r.add_agent(s.now, a(3), [g("g")], 1).unwrap(); // registered, not connected
    s.enqueue(1, "g");
    let holder = s.offered_to(1).unwrap();
    let other = if holder == a(1) { a(2) } else { a(1) };
    assert_eq!(
        s.r.transfer_to_agent(s.now, holder, c(1), other),
        Err(RoutingError::NotAssignedToYou {
            conversation: c(1),
            agent: holder
        })
    );
    s.r.accept(s.now, holder, c(1)).unwrap();
    s.drain();
    assert_eq!(
        s.r.transfer_to_agent(s.now, other, c(1), holder),
        Err(RoutingError::NotAssignedToYou {
            conversation: c(1),
            agent: other
        })
    );
    assert_eq!(
        s.r.transfer_to_agent(s.now, holder, c(1), holder),
        Err(RoutingError::TransferToSelf(c(1)))
    );
    assert_eq!(
        s.r.transfer_to_agent(s.now, holder, c(1), a(3)),
        Err(RoutingError::TargetUnavailable {
            agent: a(3),
            status: AgentStatus::Offline
        })
    );
    assert_eq!(
        s.r.transfer_to_agent(s.now, holder, c(1), a(9)),
        Err(RoutingError::UnknownAgent(a(9)))
    );
    assert_eq!(
        s.r.transfer_to_agent(s.now, holder, c(99), other),
        Err(RoutingError::UnknownConversation(c(99)))
    );
    s.enqueue(2, "g");
    s.accept(other.0, 2);
    assert_eq!(
        s.r.transfer_to_agent(s.now, holder, c(1), other),
        Err(RoutingError::TargetUnavailable {
            agent: other,
            status: AgentStatus::Busy
        })
    );
    assert!(s.drain().is_empty(), "failed calls emit nothing here");
}

#[test]
fn transfer_to_group_goes_ahead_of_fresh_visitors() {
    let mut s = Sim::new();
    s.agent(1, &["g"], 1);
    s.enqueue(1, "g");
    s.accept(1, 1);
    // Billing has no free agent: two fresh visitors wait.
    s.agent(2, &["billing"], 1);
    s.enqueue(2, "billing");
    s.accept(2, 2);
    s.enqueue(3, "billing");
    s.enqueue(4, "billing");
    s.r.transfer_to_group(s.now, a(1), c(1), g("billing")).unwrap();
    let acts = s.drain();
    assert!(acts.contains(&Action::Requeued {
        conversation: c(1),
        group: g("billing"),
        previous_agent: a(1),
        reason: RequeueReason::Transferred
    }));
    assert_eq!(
        positions(&acts),
        vec![(c(1), 1), (c(3), 2), (c(4), 3)],
        "positions front to back"
    );
    assert_eq!(s.r.queue(&g("billing")), vec![c(1), c(3), c(4)]);
    assert!(s.r.agent_conversations(a(1)).is_empty());
    assert_eq!(
        s.r.access(c(1)).unwrap(),
        ConversationAccess {
            group: g("billing"),
            agent: None
        }
    );
    // Agent 1 (not in billing) is free again; agent 2 frees up and gets the transferred one first.
    let acts = s.end(2);
    assert_eq!(offers(&acts), vec![(c(1), a(2))]);
}

#[test]
fn transfer_to_own_group_skips_the_transferring_agent() {
    let mut s = Sim::new();
    s.agent(1, &["g"], 1);
    s.advance(S);
    s.agent(2, &["g"], 1);
    s.enqueue(1, "g");
    s.accept(1, 1);
    s.advance(5 * S);
    s.r.transfer_to_group(s.now, a(1), c(1), g("g")).unwrap();
    // Agent 1 is now the longest idle? No: idle since now. Agent 2 (idle since t=1) gets it anyway.
    assert_eq!(offers(&s.drain()), vec![(c(1), a(2))]);
    s.r.decline(s.now, a(2), c(1)).unwrap();
    assert!(offers(&s.drain()).is_empty(), "the transferring agent is skipped");
}

#[test]
fn positions_update_in_order() {
    let mut s = Sim::new();
    let mut all = Vec::new();
    for conv in 1..=4 {
        all.extend(positions(&s.enqueue(conv, "g")));
    }
    assert_eq!(all, vec![(c(1), 1), (c(2), 2), (c(3), 3), (c(4), 4)]);
    // The second visitor leaves: only those behind it move.
    assert_eq!(positions(&s.end(2)), vec![(c(3), 2), (c(4), 3)]);
    // An agent arrives: the head is offered, nobody moves until it is accepted.
    s.r.add_agent(s.now, a(1), [g("g")], 1).unwrap();
    s.r.handle_agent_connected(s.now, a(1)).unwrap();
    s.r.set_presence(s.now, a(1), Presence::Available).unwrap();
    let acts = s.drain();
    assert_eq!(offers(&acts), vec![(c(1), a(1))]);
    assert!(positions(&acts).is_empty());
    assert_eq!(
        s.r.conversation_state(c(3)),
        Some(ConversationState::Queued {
            group: g("g"),
            position: 2,
            offered_to: None
        })
    );
    assert_eq!(positions(&s.accept(1, 1)), vec![(c(3), 1), (c(4), 2)]);
}

#[test]
fn end_withdraws_offer_and_frees_capacity() {
    let mut s = Sim::new();
    s.agent(1, &["g"], 1);
    s.enqueue(1, "g");
    let acts = s.end(1);
    assert_eq!(
        acts,
        vec![Action::OfferWithdrawn {
            conversation: c(1),
            agent: a(1),
            reason: WithdrawReason::ConversationEnded
        }]
    );
    assert_eq!(s.r.poll_timeout(), None, "offer timer cancelled");
    s.enqueue(2, "g");
    s.accept(1, 2);
    assert_eq!(s.r.end(s.now, c(2)), Ok(Some(a(1))));
    s.drain();
    assert_eq!(s.r.agent_status(a(1)), Some(AgentStatus::Available));
    assert_eq!(s.r.end(s.now, c(2)), Err(RoutingError::UnknownConversation(c(2))));
    assert_eq!(s.r.live_conversations(), 0);
}

#[test]
fn end_during_transfer_cancels_it() {
    let mut s = Sim::new();
    s.agent(1, &["g"], 1);
    s.agent(2, &["g"], 1);
    s.enqueue(1, "g");
    let holder = s.offered_to(1).unwrap();
    let other = if holder == a(1) { a(2) } else { a(1) };
    s.r.accept(s.now, holder, c(1)).unwrap();
    s.drain();
    s.r.transfer_to_agent(s.now, holder, c(1), other).unwrap();
    s.drain();
    let acts = s.end(1);
    assert!(acts.contains(&Action::OfferWithdrawn {
        conversation: c(1),
        agent: other,
        reason: WithdrawReason::ConversationEnded
    }));
    assert_eq!(s.r.agent_status(other), Some(AgentStatus::Available));
}

#[test]
fn lowered_capacity_refuses_accept_and_reroutes() {
    let mut s = Sim::new();
    s.agent(1, &["g"], 1);
    s.advance(S);
    s.agent(2, &["g"], 1);
    s.enqueue(1, "g");
    assert_eq!(s.offered_to(1), Some(a(1)));
    s.r.update_agent(s.now, a(1), [g("g")], 0).unwrap();
    s.drain();
    assert_eq!(s.r.accept(s.now, a(1), c(1)), Err(RoutingError::CapacityFull(a(1))));
    let acts = s.drain();
    assert!(acts.contains(&Action::OfferWithdrawn {
        conversation: c(1),
        agent: a(1),
        reason: WithdrawReason::CapacityFull
    }));
    assert_eq!(offers(&acts), vec![(c(1), a(2))]);
}

#[test]
fn removed_agent_conversations_are_requeued_now() {
    let mut s = Sim::new();
    s.agent(1, &["g"], 2);
    s.enqueue(1, "g");
    s.accept(1, 1);
    s.r.remove_agent(s.now, a(1)).unwrap();
    let acts = s.drain();
    assert!(acts.contains(&Action::Requeued {
        conversation: c(1),
        group: g("g"),
        previous_agent: a(1),
        reason: RequeueReason::AgentRemoved
    }));
    assert_eq!(s.r.agent_status(a(1)), None);
    assert_eq!(s.r.accept(s.now, a(1), c(1)), Err(RoutingError::UnknownAgent(a(1))));
}

#[test]
fn errors_are_typed() {
    let mut s = Sim::new();
    s.agent(1, &["g"], 1);
    assert_eq!(
        s.r.add_agent(s.now, a(1), [], 1),
        Err(RoutingError::DuplicateAgent(a(1)))
    );
    assert_eq!(
        s.r.set_presence(s.now, a(5), Presence::Away),
        Err(RoutingError::UnknownAgent(a(5)))
    );
    assert_eq!(
        s.r.handle_agent_connected(s.now, a(5)),
        Err(RoutingError::UnknownAgent(a(5)))
    );
    assert_eq!(
        s.r.accept(s.now, a(1), c(1)),
        Err(RoutingError::UnknownConversation(c(1)))
    );
    s.enqueue(1, "g");
    assert_eq!(
        s.r.enqueue(s.now, c(1), g("g")),
        Err(RoutingError::DuplicateConversation(c(1)))
    );
    s.agent(2, &["g"], 1);
    assert_eq!(
        s.r.accept(s.now, a(2), c(1)),
        Err(RoutingError::NotOfferedToYou {
            conversation: c(1),
            agent: a(2)
        })
    );
    assert_eq!(
        s.r.transfer_to_group(s.now, a(1), c(1), g("x")),
        Err(RoutingError::NotAssignedToYou {
            conversation: c(1),
            agent: a(1)
        })
    );
    assert!(s.drain().is_empty());
}

#[test]
fn authorisation_matrix() {
    let group = g("sales");
    let live = ConversationAccess {
        group: group.clone(),
        agent: Some(a(1)),
    };
    let waiting = ConversationAccess {
        group: group.clone(),
        agent: None,
    };
    let mine = [group.clone()];
    let other = [g("billing")];
    // (user, role, groups, conversation) -> (read, write, manage, monitor)
    type Case<'a> = (
        AgentId,
        Role,
        &'a [GroupId],
        &'a ConversationAccess,
        (bool, bool, bool, bool),
    );
    let cases: Vec<Case> = vec![
        (a(1), Role::Agent, &mine, &live, (true, true, true, false)),
        (a(2), Role::Agent, &mine, &live, (false, false, false, false)),
        (a(2), Role::Agent, &mine, &waiting, (false, false, false, false)),
        (a(1), Role::Agent, &other, &live, (true, true, true, false)),
        (a(3), Role::Supervisor, &mine, &live, (true, false, true, true)),
        (a(3), Role::Supervisor, &mine, &waiting, (true, false, true, true)),
        (a(3), Role::Supervisor, &other, &live, (false, false, false, false)),
        (a(3), Role::Supervisor, &[], &live, (false, false, false, false)),
        (a(1), Role::Supervisor, &other, &live, (true, true, true, false)),
        (a(1), Role::Supervisor, &mine, &live, (true, true, true, false)),
        (a(4), Role::Admin, &[], &live, (true, false, true, true)),
        (a(4), Role::Admin, &other, &waiting, (true, false, true, true)),
        (a(1), Role::Admin, &[], &live, (true, true, true, false)),
    ];
    for (i, (user, role, groups, conv, expected)) in cases.into_iter().enumerate() {
        let got = (
            can_read(user, role, groups, conv),
            can_write(user, role, groups, conv),
            can_manage(user, role, groups, conv),
            can_monitor(user, role, groups, conv),
        );
        assert_eq!(got, expected, "case {i}: {user} {role:?} {groups:?} {conv:?}");
    }
}

#[test]
fn access_follows_router_state() {
    let mut s = Sim::new();
    s.agent(1, &["g"], 1);
    s.agent(2, &["g"], 1);
    s.enqueue(1, "g");
    let holder = s.offered_to(1).unwrap();
    let other = if holder == a(1) { a(2) } else { a(1) };
    let acc = s.r.access(c(1)).unwrap();
    assert!(
        !can_read(holder, Role::Agent, &[g("g")], &acc),
        "an offer alone grants no access"
    );
    s.r.accept(s.now, holder, c(1)).unwrap();
    s.drain();
    let acc = s.r.access(c(1)).unwrap();
    assert!(can_write(holder, Role::Agent, &[g("g")], &acc));
    assert!(!can_read(other, Role::Agent, &[g("g")], &acc));
    assert!(s.r.access(c(2)).is_none());
}

/// splitmix64: a tiny seeded generator for reproducible randomised tests.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What the action stream says, checked against the router's own view.
#[derive(Default)]
struct Model {
    live: BTreeSet<ConversationId>,
    assigned: BTreeMap<ConversationId, AgentId>,
    offers: BTreeMap<ConversationId, AgentId>,
    /// How many actions of each kind were seen (coverage of the randomised run).
    seen: BTreeMap<&'static str, usize>,
}

impl Model {
    fn apply(&mut self, act: &Action) {
        let kind = match act {
            Action::Offer {
                transfer_from: Some(_), ..
            } => "transfer offer",
            Action::Offer { .. } => "offer",
            Action::OfferWithdrawn { .. } => "withdrawn",
            Action::Assigned { previous: Some(_), .. } => "transferred",
            Action::Assigned { .. } => "assigned",
            Action::QueuePosition { .. } => "position",
            Action::Requeued {
                reason: RequeueReason::Transferred,
                ..
            } => "requeued by transfer",
            Action::Requeued {
                reason: RequeueReason::AgentRemoved,
                ..
            } => "requeued by removal",
            Action::Requeued { .. } => "requeued",
            Action::TransferFailed { .. } => "transfer failed",
            Action::AgentStatusChanged {
                status: AgentStatus::Busy,
                ..
            } => "busy",
            Action::AgentStatusChanged { .. } => "status",
            Action::QueueTimedOut { .. } => "queue timeout",
        };
        *self.seen.entry(kind).or_default() += 1;
        match act {
            Action::Offer {
                conversation, agent, ..
            } => {
                assert!(self.live.contains(conversation), "offer of a dead {conversation}");
                assert!(
                    self.offers.insert(*conversation, *agent).is_none(),
                    "second offer of {conversation}"
                );
            }
            Action::OfferWithdrawn {
                conversation, agent, ..
            } => {
                assert_eq!(self.offers.remove(conversation), Some(*agent));
            }
            Action::TransferFailed {
                conversation,
                to,
                reason,
                ..
            } => {
                if *reason == TransferFailure::Declined {
                    assert_eq!(self.offers.remove(conversation), Some(*to));
                }
            }
            Action::Assigned {
                conversation,
                agent,
                previous,
            } => {
                assert_eq!(self.offers.remove(conversation), Some(*agent));
                let before = self.assigned.insert(*conversation, *agent);
                assert_eq!(before, *previous, "{conversation} assigned twice");
            }
            Action::Requeued {
                conversation,
                previous_agent,
                ..
            } => {
                assert_eq!(self.assigned.remove(conversation), Some(*previous_agent));
            }
            Action::QueuePosition { conversation, position } => {
                assert!(self.live.contains(conversation));
                assert!(*position >= 1);
            }
            Action::AgentStatusChanged { .. } => {}
            Action::QueueTimedOut { conversation, .. } => {
                assert!(self.live.remove(conversation), "timeout of a dead {conversation}");
                assert!(
                    !self.assigned.contains_key(conversation),
                    "{conversation} timed out while assigned"
                );
                assert!(
                    !self.offers.contains_key(conversation),
                    "offer of {conversation} left behind"
                );
            }
        }
    }
}

fn randomised_run(seed: u64, steps: usize) -> BTreeMap<&'static str, usize> {
    let mut rng = Rng(seed);
    let config = RouterConfig {
        offer_timeout: Duration::from_secs(20),
        reconnect_grace: Duration::from_secs(30),
        reoffer_after: Duration::from_secs(45),
        away_after_missed_offers: Some(2),
        queue_timeout: Some(Duration::from_secs(300)),
    };
    let mut s = Sim::with(config);
    let groups = ["a", "b", "c"];
    let n_agents = 12i64;
    let mut capacity = BTreeMap::new();
    for id in 0..n_agents {
        let mut gs: Vec<GroupId> = groups.iter().filter(|_| rng.below(2) == 0).map(|n| g(n)).collect();
        if gs.is_empty() {
            gs.push(g(groups[usize::try_from(rng.below(3)).unwrap()]));
        }
        let cap = u32::try_from(rng.below(4)).unwrap() + 1;
        capacity.insert(a(id), cap);
        s.r.add_agent(s.now, a(id), gs, cap).unwrap();
    }
    let mut model = Model::default();
    let mut next_conv = 0u64;
    let mut ended = 0usize;
    let pick = |rng: &mut Rng, n: usize| usize::try_from(rng.below(u64::try_from(n).unwrap())).unwrap();
    for _ in 0..steps {
        let agent = a(i64::try_from(pick(&mut rng, usize::try_from(n_agents).unwrap())).unwrap());
        let now = s.now;
        let mut acts = Vec::new();
        match rng.below(18) {
            0 | 15 => {
                next_conv += 1;
                model.live.insert(c(next_conv));
                let group = g(groups[pick(&mut rng, 3)]);
                s.r.enqueue(now, c(next_conv), group).unwrap();
            }
            2 => {
                let _ = s.r.handle_agent_connected(now, agent);
            }
            3 => {
                let _ = s.r.handle_agent_disconnected(now, agent);
            }
            4 => {
                let p = [
                    Presence::Available,
                    Presence::Available,
                    Presence::Away,
                    Presence::Offline,
                ];
                let _ = s.r.set_presence(now, agent, p[pick(&mut rng, 4)]);
            }
            5 | 6 | 11 | 12 => {
                // Accept a random outstanding offer; an accept by anyone else must fail.
                if !model.offers.is_empty() {
                    let (conv, holder) = model.offers.iter().nth(pick(&mut rng, model.offers.len())).unwrap();
                    let (conv, holder) = (*conv, *holder);
                    if agent != holder {
                        assert!(s.r.accept(now, agent, conv).is_err());
                    }
                    s.r.accept(now, holder, conv).unwrap();
                }
            }
            7 => {
                if let Some((conv, _)) = model.offers.iter().find(|(_, ag)| **ag == agent) {
                    let conv = *conv;
                    s.r.decline(now, agent, conv).unwrap();
                    // A declined queue offer emits nothing (the agent knows); a declined transfer emits
                    // TransferFailed.
                    if !model.assigned.contains_key(&conv) {
                        model.offers.remove(&conv);
                    }
                }
            }
            1 | 8 => {
                if !model.live.is_empty() {
                    let conv = *model.live.iter().nth(pick(&mut rng, model.live.len())).unwrap();
                    s.r.end(now, conv).unwrap();
                    // The end's withdrawals are applied before the conversation leaves the live set.
                    for act in s.drain() {
                        model.apply(&act);
                    }
                    model.live.remove(&conv);
                    model.assigned.remove(&conv);
                    model.offers.remove(&conv);
                    ended += 1;
                }
            }
            9 | 13 => {
                // A random assigned conversation is transferred by its agent.
                if !model.assigned.is_empty() {
                    let (conv, agent) = model.assigned.iter().nth(pick(&mut rng, model.assigned.len())).unwrap();
                    let (conv, agent) = (&conv.clone(), *agent);
                    if rng.below(2) == 0 {
                        // Mostly to an agent who can take it, sometimes to anyone (then it is refused).
                        let free: Vec<AgentId> = (0..n_agents)
                            .map(a)
                            .filter(|x| *x != agent && s.r.agent_status(*x) == Some(AgentStatus::Available))
                            .filter(|x| !model.offers.values().any(|o| o == x))
                            .collect();
                        let to = if !free.is_empty() && rng.below(4) != 0 {
                            free[pick(&mut rng, free.len())]
                        } else {
                            a(i64::try_from(pick(&mut rng, usize::try_from(n_agents).unwrap())).unwrap())
                        };
                        let _ = s.r.transfer_to_agent(now, agent, *conv, to);
                    } else {
                        let _ = s.r.transfer_to_group(now, agent, *conv, g(groups[pick(&mut rng, 3)]));
                    }
                }
            }
            16 => {
                // An admin edits the agent's groups (capacity unchanged, so the bound below holds).
                let gs: Vec<GroupId> = groups.iter().filter(|_| rng.below(2) == 0).map(|n| g(n)).collect();
                s.r.update_agent(now, agent, gs, capacity[&agent]).unwrap();
            }
            17 if rng.below(4) == 0 => {
                // The account is disabled and enabled again: its conversations are requeued at once.
                s.r.remove_agent(now, agent).unwrap();
                acts.extend(s.drain());
                assert!(s.r.agent_conversations(agent).is_empty());
                s.r.add_agent(now, agent, [g(groups[pick(&mut rng, 3)])], capacity[&agent])
                    .unwrap();
            }
            _ => acts = s.advance(Duration::from_millis(rng.below(15_000))),
        }
        acts.extend(s.drain());
        for act in &acts {
            model.apply(act);
        }
        check_model(&s, &model, &capacity);
    }
    // Settle: everyone available, every offer accepted, time passes. No visitor may stay queued while an
    // agent of their group is free (the "chats stuck unassigned" complaint).
    for _ in 0..100 {
        for id in 0..n_agents {
            s.r.handle_agent_connected(s.now, a(id)).unwrap();
            s.r.set_presence(s.now, a(id), Presence::Available).unwrap();
        }
        let mut acts = s.drain();
        for act in &acts {
            model.apply(act);
        }
        let pending: Vec<(ConversationId, AgentId)> = model.offers.iter().map(|(c, a)| (*c, *a)).collect();
        for (conv, agent) in pending {
            s.r.accept(s.now, agent, conv).unwrap();
            acts = s.drain();
            for act in &acts {
                model.apply(act);
            }
        }
        for act in s.advance(Duration::from_secs(50)) {
            model.apply(&act);
        }
        check_model(&s, &model, &capacity);
    }
    for conv in &model.live {
        if let Some(ConversationState::Queued { group, .. }) = s.r.conversation_state(*conv) {
            for id in 0..n_agents {
                let member = s.r.agents.get(&a(id)).is_some_and(|ag| ag.groups.contains(&group));
                assert!(
                    !member || s.r.agent_status(a(id)) != Some(AgentStatus::Available),
                    "seed {seed}: {conv} stuck in {group} while {} is available",
                    a(id)
                );
            }
        }
    }
    assert!(next_conv > 0 && ended > 0);
    model.seen
}

fn check_model(s: &Sim, model: &Model, capacity: &BTreeMap<AgentId, u32>) {
    s.r.check_invariants().unwrap();
    assert_eq!(
        s.r.live_conversations(),
        model.live.len(),
        "conversation lost or invented"
    );
    for conv in &model.live {
        let state =
            s.r.conversation_state(*conv)
                .expect("live conversation known to the router");
        match state {
            ConversationState::Assigned { agent, transfer_to, .. } => {
                assert_eq!(model.assigned.get(conv), Some(&agent));
                assert_eq!(model.offers.get(conv).copied(), transfer_to);
            }
            ConversationState::Queued {
                offered_to, position, ..
            } => {
                assert!(!model.assigned.contains_key(conv));
                assert_eq!(model.offers.get(conv).copied(), offered_to);
                assert!(position >= 1);
            }
        }
    }
    for (agent, cap) in capacity {
        let load = s.r.agent_conversations(*agent).len();
        assert!(
            load <= usize::try_from(*cap).unwrap(),
            "{agent} over capacity: {load} > {cap}"
        );
    }
}

#[test]
fn randomised_invariants_hold() {
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for seed in 1..=16u64 {
        for (kind, n) in randomised_run(seed, 1200) {
            *seen.entry(kind).or_default() += n;
        }
    }
    // Every kind of event happened, many times: the run exercised what it claims to.
    for kind in [
        "offer",
        "transfer offer",
        "withdrawn",
        "assigned",
        "transferred",
        "position",
        "requeued",
        "requeued by transfer",
        "requeued by removal",
        "transfer failed",
        "busy",
        "status",
    ] {
        assert!(seen.get(kind).copied().unwrap_or(0) >= 10, "{kind}: {seen:?}");
    }
}

/// A busy day in one go: visitors queue before the agents arrive, then every offer is accepted and every
/// conversation ends after a while. Checks that everyone is offered and served exactly once, first come first
/// served, and that positions only ever decrease; prints the router's cost per call (no timed assertion).
#[test]
fn a_long_queue_is_served_in_order_exactly_once() {
    let visitors = 1500u64;
    let agents = 60i64;
    let mut s = Sim::new();
    let started = std::time::Instant::now();
    let mut last_position: BTreeMap<ConversationId, u32> = BTreeMap::new();
    let mut assigned: BTreeMap<ConversationId, AgentId> = BTreeMap::new();
    let mut offered = Vec::new();
    let mut pending: VecDeque<(ConversationId, AgentId)> = VecDeque::new();
    let mut calls = 0u64;
    let mut handle = |acts: Vec<Action>,
                      pending: &mut VecDeque<(ConversationId, AgentId)>,
                      assigned: &mut BTreeMap<ConversationId, AgentId>,
                      offered: &mut Vec<ConversationId>| {
        for act in acts {
            match act {
                Action::QueuePosition { conversation, position } => {
                    if let Some(before) = last_position.insert(conversation, position) {
                        assert!(position < before, "{conversation} moved back: {before} -> {position}");
                    }
                }
                Action::Offer {
                    conversation, agent, ..
                } => {
                    pending.push_back((conversation, agent));
                    offered.push(conversation);
                }
                Action::Assigned {
                    conversation,
                    agent,
                    previous,
                } => {
                    assert_eq!(previous, None);
                    assert!(
                        assigned.insert(conversation, agent).is_none(),
                        "{conversation} assigned twice"
                    );
                }
                _ => {}
            }
        }
    };
    for v in 1..=visitors {
        s.r.enqueue(s.now, c(v), g("support")).unwrap();
        calls += 1;
        let acts = s.drain_unchecked();
        handle(acts, &mut pending, &mut assigned, &mut offered);
    }
    for id in 0..agents {
        s.r.add_agent(s.now, a(id), [g("support")], 3).unwrap();
        s.r.handle_agent_connected(s.now, a(id)).unwrap();
        s.r.set_presence(s.now, a(id), Presence::Available).unwrap();
        calls += 3;
        let acts = s.drain_unchecked();
        handle(acts, &mut pending, &mut assigned, &mut offered);
    }
    s.r.check_invariants().unwrap();
    let mut ends: VecDeque<(Instant, ConversationId)> = VecDeque::new();
    let mut ended = 0u64;
    while ended < visitors {
        while let Some((conv, agent)) = pending.pop_front() {
            s.r.accept(s.now, agent, conv).unwrap();
            calls += 1;
            ends.push_back((s.now + Duration::from_secs(120), conv));
            let acts = s.drain_unchecked();
            handle(acts, &mut pending, &mut assigned, &mut offered);
        }
        let Some((at, conv)) = ends.pop_front() else {
            panic!("stalled with {ended} ended")
        };
        s.now = s.now.max(at);
        s.r.end(s.now, conv).unwrap();
        calls += 1;
        ended += 1;
        let acts = s.drain_unchecked();
        handle(acts, &mut pending, &mut assigned, &mut offered);
        if ended.is_multiple_of(250) {
            s.r.check_invariants().unwrap();
        }
    }
    let elapsed = started.elapsed();
    s.r.check_invariants().unwrap();
    assert_eq!(s.r.live_conversations(), 0);
    assert_eq!(assigned.len(), usize::try_from(visitors).unwrap());
    // One group, nobody declines: offered strictly first come, first served, each exactly once.
    assert_eq!(offered.len(), assigned.len());
    assert!(offered.windows(2).all(|w| w[0] < w[1]), "offered out of order");
    eprintln!(
        "router: {visitors} visitors, {agents} agents, {calls} calls in {elapsed:?} ({:.1} us per call)",
        elapsed.as_secs_f64() * 1e6 / calls as f64
    );
}

#[test]
fn absurd_durations_are_capped_not_panicking() {
    let config = RouterConfig {
        offer_timeout: Duration::MAX,
        reconnect_grace: Duration::MAX,
        reoffer_after: Duration::MAX,
        away_after_missed_offers: None,
        queue_timeout: Some(Duration::MAX),
    };
    let mut s = Sim::with(config);
    assert_eq!(s.r.config().offer_timeout, MAX_DURATION);
    assert_eq!(s.r.config().queue_timeout, Some(MAX_DURATION));
    s.agent(1, &["g"], 1);
    s.enqueue(1, "g");
    s.r.decline(s.now, a(1), c(1)).unwrap();
    s.drain();
    s.r.handle_agent_disconnected(s.now, a(1)).unwrap();
    s.drain();
    assert_eq!(s.r.poll_timeout(), Some(s.now + MAX_DURATION));
    // Early and repeated timeouts are harmless.
    s.r.handle_timeout(s.now);
    s.r.handle_timeout(s.now);
    assert!(s.drain().is_empty());
}

fn timed_out(actions: &[Action]) -> Vec<ConversationId> {
    actions
        .iter()
        .filter_map(|x| match x {
            Action::QueueTimedOut { conversation, .. } => Some(*conversation),
            _ => None,
        })
        .collect()
}

fn with_queue_timeout(secs: u64) -> Sim {
    Sim::with(RouterConfig {
        queue_timeout: Some(Duration::from_secs(secs)),
        ..RouterConfig::default()
    })
}

#[test]
fn a_visitor_nobody_takes_times_out_of_the_queue() {
    let mut s = with_queue_timeout(600);
    s.enqueue(1, "g");
    s.advance(100 * S);
    s.enqueue(2, "g");
    let acts = s.advance(499 * S);
    assert!(timed_out(&acts).is_empty(), "{acts:?}");
    let acts = s.advance(S);
    assert_eq!(
        acts,
        vec![
            Action::QueueTimedOut {
                conversation: c(1),
                group: g("g")
            },
            Action::QueuePosition {
                conversation: c(2),
                position: 1
            },
        ]
    );
    assert_eq!(s.r.conversation_state(c(1)), None);
    assert_eq!(s.r.live_conversations(), 1);
    assert_eq!(s.r.end(s.now, c(1)), Err(RoutingError::UnknownConversation(c(1))));
    assert_eq!(timed_out(&s.advance(100 * S)), vec![c(2)]);
    assert_eq!(s.r.poll_timeout(), None, "no timer left behind");
}

#[test]
fn an_outstanding_offer_is_withdrawn_when_the_queue_times_out() {
    let mut s = Sim::with(RouterConfig {
        queue_timeout: Some(Duration::from_secs(10)),
        offer_timeout: Duration::from_secs(20),
        ..RouterConfig::default()
    });
    s.agent(1, &["g"], 1);
    s.enqueue(5, "g");
    assert_eq!(s.offered_to(5), Some(a(1)));
    let acts = s.advance(10 * S);
    assert_eq!(
        acts[0],
        Action::OfferWithdrawn {
            conversation: c(5),
            agent: a(1),
            reason: WithdrawReason::ConversationEnded
        }
    );
    assert_eq!(timed_out(&acts), vec![c(5)]);
    assert_eq!(s.r.agent_status(a(1)), Some(AgentStatus::Available));
    // The agent is free for the next visitor at once.
    assert_eq!(offers(&s.enqueue(6, "g")), vec![(c(6), a(1))]);
}

#[test]
fn assigned_conversations_never_time_out_and_a_requeue_restarts_the_clock() {
    let mut s = with_queue_timeout(60);
    s.agent(1, &["g"], 1);
    s.enqueue(3, "g");
    s.advance(10 * S);
    s.accept(1, 3);
    assert!(timed_out(&s.advance(120 * S)).is_empty());
    assert_eq!(s.assigned_to(3), Some(a(1)));
    // The agent transfers it to a group nobody serves: a new queue stay with a full timeout.
    s.r.transfer_to_group(s.now, a(1), c(3), g("empty")).unwrap();
    s.drain();
    assert!(timed_out(&s.advance(59 * S)).is_empty());
    assert_eq!(timed_out(&s.advance(S)), vec![c(3)]);
    assert_eq!(s.r.agent_conversations(a(1)), Vec::<ConversationId>::new());
}

#[test]
fn ending_a_queued_conversation_disarms_its_timeout() {
    let mut s = with_queue_timeout(60);
    s.enqueue(4, "g");
    s.end(4);
    assert_eq!(s.r.poll_timeout(), None);
    assert!(timed_out(&s.advance(120 * S)).is_empty());
}

#[test]
fn restored_conversations_stay_with_an_agent_who_comes_back_in_grace_and_are_requeued_otherwise() {
    let mut s = Sim::new();
    // After a restart: agents 1 and 2 registered from the store, not connected yet.
    for id in [1, 2] {
        s.r.add_agent(s.now, a(id), [g("sales")], 1).unwrap();
    }
    // Agent 1 had two conversations (above a capacity lowered meanwhile); agent 2 one; one was queued.
    s.r.restore_assigned(s.now, c(10), g("sales"), a(1)).unwrap();
    s.r.restore_assigned(s.now, c(11), g("sales"), a(1)).unwrap();
    s.r.restore_assigned(s.now, c(12), g("sales"), a(2)).unwrap();
    assert_eq!(
        s.r.restore_assigned(s.now, c(12), g("sales"), a(2)),
        Err(RoutingError::DuplicateConversation(c(12)))
    );
    assert_eq!(
        s.r.restore_assigned(s.now, c(13), g("sales"), a(9)),
        Err(RoutingError::UnknownAgent(a(9)))
    );
    let restored = s.drain();
    assert!(
        !restored.iter().any(|x| matches!(x, Action::Assigned { .. })),
        "{restored:?}"
    );
    s.enqueue(14, "sales");
    for id in [1, 2] {
        s.r.handle_agent_connected(s.now, a(id)).unwrap();
        s.r.handle_agent_disconnected(s.now, a(id)).unwrap();
    }
    s.drain();
    assert_eq!(s.r.agent_conversations(a(1)), vec![c(10), c(11)]);
    // Agent 1 is back within the grace period: nothing moves.
    s.advance(S * 10);
    s.r.handle_agent_connected(s.now, a(1)).unwrap();
    s.drain();
    // Agent 2 is not: their conversation is requeued at the front, ahead of the fresh visitor.
    let acts = s.advance(RouterConfig::default().reconnect_grace);
    assert!(
        acts.iter()
            .any(|x| matches!(x, Action::Requeued { conversation, previous_agent, .. }
            if *conversation == c(12) && *previous_agent == a(2))),
        "{acts:?}"
    );
    assert_eq!(s.r.queue(&g("sales")), vec![c(12), c(14)]);
    assert_eq!(s.assigned_to(10), Some(a(1)));
    assert_eq!(s.assigned_to(11), Some(a(1)));
}

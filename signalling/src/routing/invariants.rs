//! The router's internal invariants, checked by tests.

use super::*;

impl Router {
    /// Checks the internal invariants; used by tests (also of the wiring). Returns a description of the
    /// first violation found.
    #[doc(hidden)]
    pub fn check_invariants(&self) -> std::result::Result<(), String> {
        let mut seen_assigned = BTreeMap::new();
        for (id, a) in &self.agents {
            for c in &a.assigned {
                if let Some(other) = seen_assigned.insert(*c, *id) {
                    return Err(format!("{c} assigned to {other} and {id}"));
                }
                match self.conversations.get(c).map(|c| &c.state) {
                    Some(ConvState::Assigned { agent, .. }) if agent == id => {}
                    other => return Err(format!("{id} holds {c} in state {other:?}")),
                }
            }
            if let Some(c) = a.offer {
                match self.conversations.get(&c).map(|c| &c.state) {
                    Some(ConvState::Queued { offer: Some(o), .. } | ConvState::Assigned { transfer: Some(o), .. })
                        if o.agent == *id => {}
                    other => return Err(format!("{id} has offer of {c} in state {other:?}")),
                }
            }
        }
        let mut queued = BTreeSet::new();
        for (g, q) in &self.queues {
            if q.is_empty() {
                return Err(format!("empty queue {g} kept"));
            }
            for (i, c) in q.iter().enumerate() {
                if !queued.insert(*c) {
                    return Err(format!("{c} queued twice"));
                }
                let reported = self.conversations.get(c).and_then(|conv| conv.reported_position);
                if reported.and_then(|p| usize::try_from(p).ok()) != Some(i + 1) {
                    return Err(format!("{c} is at {} in {g} but was told {reported:?}", i + 1));
                }
                match self.conversations.get(c) {
                    Some(conv) if &conv.group == g && matches!(conv.state, ConvState::Queued { .. }) => {}
                    other => return Err(format!("{c} in queue {g} but {other:?}")),
                }
            }
        }
        for (id, c) in &self.conversations {
            match &c.state {
                ConvState::Queued { offer, .. } => {
                    if !queued.contains(id) {
                        return Err(format!("{id} queued but in no queue"));
                    }
                    if let Some(o) = offer
                        && self.agents.get(&o.agent).and_then(|a| a.offer) != Some(*id)
                    {
                        return Err(format!("{id} offered to {} who does not know", o.agent));
                    }
                }
                ConvState::Assigned { agent, transfer } => {
                    if seen_assigned.get(id) != Some(agent) {
                        return Err(format!("{id} assigned to {agent} who does not hold it"));
                    }
                    if let Some(o) = transfer
                        && self.agents.get(&o.agent).and_then(|a| a.offer) != Some(*id)
                    {
                        return Err(format!("{id} transfer to {} who does not know", o.agent));
                    }
                }
            }
        }
        Ok(())
    }
}

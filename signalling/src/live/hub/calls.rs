//! Calls: a leg's offer, its TURN servers, its end, its state, and the media side's events.

use super::*;

impl Hub {
    // ----- calls -----

    pub(super) fn call_offer(&mut self, conv: ConversationId, party: Party, socket: SocketId, sdp: String) {
        let refuse = |hub: &mut Self, r: Refusal| match party {
            Party::Visitor => hub.visitor_error(socket, r),
            Party::Agent(_) | Party::Supervisor(_) => hub.agent_error(socket, Some(conv), r),
        };
        if !self.config.media {
            refuse(
                self,
                (ErrorCode::MediaUnavailable, "calls are not available on this server"),
            );
            return;
        }
        if self.router.access(conv).and_then(|a| a.agent).is_none() {
            refuse(self, (ErrorCode::Conflict, "no agent has joined the conversation yet"));
            return;
        }
        if !self.sockets.contains(&socket) {
            return;
        }
        let next = MediaParticipantId(self.next_participant);
        let Some(c) = self.convs.get_mut(&conv) else { return };
        if matches!(party, Party::Supervisor(_))
            && !c.calls.contains_key(&party)
            && !c.calls.keys().any(|p| p.is_party_to_call())
        {
            refuse(self, (ErrorCode::Conflict, "no call in progress"));
            return;
        }
        // A new leg must fit the node's media capacity; a leg of a call in progress (the other party joining,
        // or anyone re-offering) always does: the call reserved it.
        let in_call = c.calls.keys().any(|p| p.is_party_to_call());
        if !c.calls.contains_key(&party) {
            let needed = match party {
                Party::Supervisor(_) => 1,
                Party::Visitor | Party::Agent(_) if in_call => 0,
                Party::Visitor | Party::Agent(_) => 2,
            };
            let load = media_load(&self.ix.legs);
            let max = self.config.max_media_participants;
            if needed > 0 && load + needed > max {
                metrics::counter!("relaydesk_calls_refused_total", "reason" => "media_capacity").increment(1);
                tracing::info!(conversation = %conv, load, max, "call refused: media capacity");
                refuse(self, (ErrorCode::MediaBusy, MEDIA_BUSY));
                return;
            }
        }
        let Some(c) = self.convs.get_mut(&conv) else { return };
        let offered = invite::offered_lines(&sdp);
        let (participant, renegotiate) = match c.calls.get_mut(&party) {
            Some(leg) => {
                leg.socket = socket;
                leg.offered = offered;
                (leg.participant, true)
            }
            None => {
                c.calls.insert(
                    party,
                    CallLeg {
                        participant: next,
                        socket,
                        whisper: false,
                        offered,
                    },
                );
                self.next_participant += 1;
                self.ix.legs.insert(next, (conv, party));
                if party.is_party_to_call() {
                    self.live_dirty.insert(conv);
                    self.offer_settles_invitation(conv, party);
                }
                (next, false)
            }
        };
        let role = match party {
            Party::Visitor => MediaRole::Visitor,
            Party::Agent(_) => MediaRole::Agent,
            // Silent until `whisper`.
            Party::Supervisor(_) => MediaRole::Supervisor { whisper: false },
        };
        let leg = LegOffer {
            conversation: conv,
            participant,
            party,
            socket,
            renegotiate,
        };
        self.out.push_back(Output::Media(MediaRequest::Join { leg, role, sdp }));
    }

    /// The media side's answer to a leg's offer: the SDP answer, or the refusal, to the leg's socket. A leg
    /// whose join failed is forgotten.
    pub(super) fn call_answered(&mut self, leg: LegOffer, result: Result<String, MediaError>) {
        let LegOffer {
            conversation: conv,
            participant,
            party,
            socket,
            renegotiate,
        } = leg;
        let frame = match result {
            Ok(answer) => call_frame(party, conv, Ok(answer)),
            Err(e) => {
                tracing::info!(conversation = %conv, error = %e, "call offer refused");
                if !renegotiate {
                    self.forget_failed_leg(participant);
                }
                call_frame(party, conv, Err(media_refusal(&e)))
            }
        };
        if let Some(text) = frame {
            self.send_text(socket, text);
        }
    }

    /// A join failed: forget the leg (if it is still that participant's).
    fn forget_failed_leg(&mut self, participant: MediaParticipantId) {
        if let Some((conv, party)) = self.ix.legs.remove(&participant)
            && let Some(c) = self.convs.get_mut(&conv)
            && c.calls.get(&party).is_some_and(|l| l.participant == participant)
        {
            c.calls.remove(&party);
            if party.is_party_to_call() {
                self.live_dirty.insert(conv);
            }
        }
    }

    /// Answers `call_prepare` with the TURN servers for the coming leg: fresh credentials from `[turn]`, or an
    /// empty list without it.
    pub(super) fn call_prepare(&mut self, conv: ConversationId, party: Party, socket: SocketId) {
        let refused = match party {
            _ if !self.config.media => Some((ErrorCode::MediaUnavailable, "calls are not available on this server")),
            Party::Visitor if self.router.access(conv).and_then(|a| a.agent).is_none() => {
                Some((ErrorCode::Conflict, "no agent has joined the conversation yet"))
            }
            _ => None,
        };
        if let Some(r) = refused {
            match party {
                Party::Visitor => self.visitor_error(socket, r),
                Party::Agent(_) | Party::Supervisor(_) => self.agent_error(socket, Some(conv), r),
            }
            return;
        }
        let leg = match party {
            Party::Visitor => format!("{}-visitor", conv.0),
            Party::Agent(a) => format!("{}-agent-{}", conv.0, a.0),
            Party::Supervisor(a) => format!("{}-supervisor-{}", conv.0, a.0),
        };
        let (ice_servers, expires_at_ms) = match &self.config.turn {
            Some(turn) => {
                let issued = turn.credentials(self.now.unix_ms / 1000, &leg);
                metrics::counter!("relaydesk_turn_credentials_issued_total").increment(1);
                (issued.ice_servers, Some(issued.expires_at_ms))
            }
            None => (Vec::new(), None),
        };
        // Told before any media: the recording state comes before the ICE servers.
        self.recording_notice(conv, party, socket);
        match party {
            Party::Visitor => {
                if let Some(text) = to_json(&ServerToVisitor::IceServers {
                    ice_servers,
                    expires_at_ms,
                }) {
                    self.send_text(socket, text);
                }
            }
            Party::Agent(_) | Party::Supervisor(_) => self.send_agent_socket(
                socket,
                &ServerToAgent::IceServers {
                    conversation: conv,
                    ice_servers,
                    expires_at_ms,
                },
            ),
        }
    }

    /// Ends a party's leg (hang-up, disconnect, transfer) and tells both parties.
    pub(super) fn drop_leg(&mut self, conv: ConversationId, party: Party, reason: &str) {
        let Some(leg) = self.convs.get_mut(&conv).and_then(|c| c.calls.remove(&party)) else {
            return;
        };
        self.ix.legs.remove(&leg.participant);
        if party.is_party_to_call() {
            self.live_dirty.insert(conv);
        }
        if self.config.media {
            self.out.push_back(Output::Media(MediaRequest::Leave {
                room: MediaRoomId(conv.0),
                participant: leg.participant,
            }));
        }
        self.leg_state(
            conv,
            party,
            leg.socket,
            leg.whisper,
            CallLegState::Left,
            Some(reason.to_owned()),
        );
        self.recording_leg_gone(conv);
    }

    /// Reports a leg's new state: a supervisor's to its own socket only (and, if it was whispering, the end of
    /// the whisper to the agent); the visitor's and the agent's to both parties and the watchers.
    pub(super) fn leg_state(
        &mut self,
        conv: ConversationId,
        party: Party,
        socket: SocketId,
        whispering: bool,
        state: CallLegState,
        reason: Option<String>,
    ) {
        let Party::Supervisor(supervisor) = party else {
            self.call_state(conv, party, state, reason);
            return;
        };
        self.send_agent_socket(
            socket,
            &ServerToAgent::CallState {
                conversation: conv,
                party: party.wire(),
                state,
                reason,
            },
        );
        if whispering && state == CallLegState::Left {
            self.notify_whisper(conv, supervisor, false);
        }
    }
    pub(super) fn call_state(
        &mut self,
        conv: ConversationId,
        party: Party,
        state: CallLegState,
        reason: Option<String>,
    ) {
        self.send_visitor(
            conv,
            &ServerToVisitor::CallState {
                party: party.wire(),
                state,
                reason: reason.clone(),
            },
        );
        self.send_agent_viewers(
            conv,
            &ServerToAgent::CallState {
                conversation: conv,
                party: party.wire(),
                state,
                reason,
            },
        );
    }

    pub(super) fn media_event(&mut self, event: MediaEvent) {
        match event {
            MediaEvent::Connected { participant, .. } => {
                if let Some(&(conv, party)) = self.ix.legs.get(&participant)
                    && let Some(leg) = self.convs.get(&conv).and_then(|c| c.calls.get(&party))
                {
                    let (socket, whisper) = (leg.socket, leg.whisper);
                    self.leg_state(conv, party, socket, whisper, CallLegState::Connected, None);
                    if party.is_party_to_call() {
                        self.recording_leg_connected(conv);
                    }
                }
            }
            MediaEvent::Left {
                participant, reason, ..
            } => {
                if let Some((conv, party)) = self.ix.legs.remove(&participant)
                    && let Some(leg) = self.convs.get_mut(&conv).and_then(|c| c.calls.remove(&party))
                {
                    if party.is_party_to_call() {
                        self.live_dirty.insert(conv);
                    }
                    self.leg_state(conv, party, leg.socket, leg.whisper, CallLegState::Left, Some(reason));
                    self.recording_leg_gone(conv);
                }
            }
            MediaEvent::RenegotiationNeeded {
                participant,
                audio,
                video,
                ..
            } => {
                let Some(&(conv, party)) = self.ix.legs.get(&participant) else {
                    return;
                };
                let Some((socket, offered)) = self
                    .convs
                    .get(&conv)
                    .and_then(|c| c.calls.get(&party))
                    .map(|l| (l.socket, l.offered))
                else {
                    return;
                };
                // The SFU may ask before it has read the leg's m-lines (it scans an offer's media once the
                // leg is set up): a leg whose own offer already has the slots needs no new offer.
                if audio <= offered.0 && video <= offered.1 {
                    tracing::debug!(conversation = %conv, audio, video, "renegotiation already satisfied");
                    return;
                }
                let audio = u32::try_from(audio).unwrap_or(u32::MAX);
                let video = u32::try_from(video).unwrap_or(u32::MAX);
                let text = match party {
                    Party::Visitor => to_json(&ServerToVisitor::CallRenegotiate { audio, video }),
                    Party::Agent(_) | Party::Supervisor(_) => to_json(&ServerToAgent::CallRenegotiate {
                        conversation: conv,
                        audio,
                        video,
                    }),
                };
                if let Some(text) = text {
                    self.send_text(socket, text);
                }
            }
            MediaEvent::CallText {
                participant,
                text,
                amended,
                ..
            } => self.call_text(participant, &text, amended),
            MediaEvent::CallFile {
                participant,
                name,
                size,
                mime,
                sha256,
                ..
            } => self.call_file(participant, &name, CallFile { size, mime, sha256 }),
            MediaEvent::DataChannelRefused { participant, label, .. } => {
                self.data_channel_refused(participant, &label);
            }
            _ => {}
        }
    }
}

//! Speaking: who is talking now, from the audio level (or voice activity) of the packets a participant
//! sends, announced as [`Event::Speaking`] when it starts and when it has been silent for a while.

use std::time::{Duration, Instant};

use str0m::rtp::ExtensionValues;

use super::{Participant, Sfu, Shared};
use crate::types::Event;

/// A speaker is silent after this long without a loud packet.
const SPEAKING_HOLD: Duration = Duration::from_millis(600);
/// Audio level (-dBov) at or above which a packet counts as speech.
const SPEAKING_LEVEL: i8 = -50;

/// An audio packet from `p` with these header extensions arrived at `now`: a loud one makes `p` a speaker.
pub(super) fn on_audio(p: &mut Participant, shared: &mut Shared, now: Instant, ext: &ExtensionValues) {
    let level = ext.audio_level;
    let loud = level.is_some_and(|l| l >= SPEAKING_LEVEL) || ext.voice_activity == Some(true);
    if loud {
        p.last_loud = Some(now);
        if !p.speaking {
            p.speaking = true;
            // Watched from now on, so its silence is announced too.
            shared.speaking.push(p.id);
            shared.events.push_back(Event::Speaking {
                room: p.room,
                participant: p.id,
                speaking: true,
            });
        }
    }
}

impl Sfu {
    /// When the earliest current speaker turns silent if no loud packet comes first.
    pub(super) fn speaking_deadline(&self) -> Option<Instant> {
        self.shared
            .speaking
            .iter()
            .filter_map(|id| self.participants.get(id).and_then(|p| p.last_loud))
            .min()
            .map(|t| t + SPEAKING_HOLD)
    }

    /// Announce the end of speech of every speaker silent for [`SPEAKING_HOLD`] at `now`.
    pub(super) fn expire_speakers(&mut self, now: Instant) {
        let participants = &mut self.participants;
        let Shared { speaking, events, .. } = &mut self.shared;
        speaking.retain(|id| {
            let Some(p) = participants.get_mut(id) else {
                return false;
            };
            if p.last_loud.is_some_and(|t| now >= t + SPEAKING_HOLD) {
                p.speaking = false;
                events.push_back(Event::Speaking {
                    room: p.room,
                    participant: p.id,
                    speaking: false,
                });
                false
            } else {
                true
            }
        });
    }
}

//! Data channels: the in-call text relay (each message through the text filter) and the file relay
//! (header checked against the file policy, chunks forwarded with backpressure, SHA-256 checked at the
//! end); a channel with another label is refused (an error on it, then closed). The formats are in
//! [`crate::wire`].

use sha2::{Digest, Sha256};
use str0m::channel::{ChannelData, ChannelId};
use tracing::{debug, warn};

use super::{Participant, Sfu, Shared, Work, doom, guard, mark_dirty};
use crate::types::*;
use crate::wire::{ChannelError, FILE_LABEL, FileMessage, TEXT_LABEL, TextMessage, error_code};

/// Buffered-amount threshold of the file channel, for backpressure (str0m buffers at most 128 KiB per
/// association by default, so the threshold must be well below that to ever be crossed).
const FILE_LOW_WATER: usize = 32 * 1024;

/// State of an incoming file on a sender's `file` channel.
#[derive(Debug, Default)]
#[allow(clippy::large_enum_variant)] // one per participant; boxing buys nothing
pub(super) enum FileIn {
    #[default]
    Idle,
    Receiving {
        name: String,
        size: u64,
        mime: String,
        sha256: String,
        received: u64,
        hasher: Sha256,
        recipients: Vec<ParticipantId>,
    },
    /// Refused: chunks are ignored until the next header.
    Refusing,
}

/// Longest part of a refused label that is echoed in the error and reported.
const MAX_LABEL_ECHO: usize = 64;

/// A data channel of `p` opened: the text and file channels are known by their labels; any other is
/// refused: an `unknown_data_channel` error on it, then it is closed.
pub(super) fn on_channel_open(p: &mut Participant, shared: &mut Shared, id: ChannelId, label: &str) {
    match label {
        TEXT_LABEL => p.text_ch = Some(id),
        FILE_LABEL => {
            p.file_ch = Some(id);
            if let Some(mut c) = p.rtc.channel(id) {
                c.set_buffered_amount_low_threshold(FILE_LOW_WATER);
            }
        }
        other => {
            let mut end = other.len().min(MAX_LABEL_ECHO);
            while !other.is_char_boundary(end) {
                end -= 1;
            }
            let label = &other[..end];
            debug!(parent: &p.span, label, "unknown data channel refused");
            shared.stats.drops.data_refused += 1;
            let error = ChannelError::new(
                error_code::UNKNOWN_DATA_CHANNEL,
                format!(
                    "unknown data channel label {label:?}: this server has only \"{TEXT_LABEL}\" and \"{FILE_LABEL}\""
                ),
            );
            if let Some(mut c) = p.rtc.channel(id) {
                let _ = c.write(false, &error.to_json());
            }
            p.rtc.direct_api().close_data_channel(id);
            mark_dirty(shared, p);
            shared.events.push_back(Event::DataChannelRefused {
                room: p.room,
                participant: p.id,
                label: label.to_owned(),
            });
        }
    }
}

/// A message arrived on a data channel of `p`: relayed as deferred work.
pub(super) fn on_channel_data(p: &mut Participant, shared: &mut Shared, d: ChannelData) {
    if Some(d.id) == p.text_ch {
        shared.work.push_back(Work::Text {
            from: p.id,
            binary: d.binary,
            data: d.data,
        });
    } else if Some(d.id) == p.file_ch {
        shared.work.push_back(Work::File {
            from: p.id,
            binary: d.binary,
            data: d.data,
        });
    } else {
        shared.stats.drops.data_refused += 1;
    }
}

/// A data channel of `p` closed: a closed file channel drops what was queued on it.
pub(super) fn on_channel_close(p: &mut Participant, id: ChannelId) {
    if p.text_ch == Some(id) {
        p.text_ch = None;
    }
    if p.file_ch == Some(id) {
        p.file_ch = None;
        p.file_out.clear();
        p.file_out_bytes = 0;
    }
}

/// Write queued file-channel messages while the recipient's SCTP buffer has room.
pub(super) fn flush_file_out(q: &mut Participant, shared: &mut Shared) {
    let Some(ch) = q.file_ch else {
        q.file_out.clear();
        q.file_out_bytes = 0;
        return;
    };
    let mut wrote = false;
    while let Some((binary, data)) = q.file_out.front() {
        match guard(|| q.rtc.channel(ch).map(|mut c| c.write(*binary, data))) {
            Some(Some(Ok(true))) => {
                q.file_out_bytes = q.file_out_bytes.saturating_sub(data.len());
                q.file_out.pop_front();
                wrote = true;
            }
            // Buffer full: resume on ChannelBufferedAmountLow.
            Some(Some(Ok(false))) => break,
            Some(_) => {
                shared.stats.drops.data_refused += q.file_out.len() as u64;
                q.file_out.clear();
                q.file_out_bytes = 0;
                break;
            }
            None => {
                doom(shared, q, LeaveReason::Panicked);
                break;
            }
        }
    }
    if wrote {
        mark_dirty(shared, q);
    }
}

impl Sfu {
    /// The room and role of `from`, and the live members its text and files reach.
    fn members_reached_by(&self, from: ParticipantId) -> Option<(RoomId, Role, Vec<ParticipantId>)> {
        let p = self.participants.get(&from)?;
        let room = self.rooms.get(&p.room)?;
        let to = room
            .members
            .iter()
            .filter(|m| **m != from)
            .filter(|m| {
                self.participants
                    .get(m)
                    .is_some_and(|q| q.doomed.is_none() && p.role.texts_to(q.role))
            })
            .copied()
            .collect();
        Some((p.room, p.role, to))
    }

    /// Answer `to` on its text channel with an error (a refused message).
    fn text_error(&mut self, to: ParticipantId, code: &str, reason: String) {
        self.shared.stats.drops.data_refused += 1;
        let Some(q) = self.participants.get_mut(&to) else {
            return;
        };
        let Some(ch) = q.text_ch else { return };
        let json = ChannelError::new(code, reason).to_json();
        match guard(|| q.rtc.channel(ch).map(|mut c| c.write(false, &json))) {
            Some(_) => {}
            None => doom(&mut self.shared, q, LeaveReason::Panicked),
        }
        mark_dirty(&mut self.shared, q);
    }

    /// Relay a text-channel message of `from` (filtered) to the members its role may text.
    pub(super) fn relay_text(&mut self, from: ParticipantId, binary: bool, data: Vec<u8>) {
        if binary {
            let reason = "in-call text must be a text (string) message".to_owned();
            return self.text_error(from, error_code::NOT_TEXT, reason);
        }
        if data.len() > self.config.max_text_len {
            let reason = format!("in-call text is limited to {} bytes", self.config.max_text_len);
            return self.text_error(from, error_code::TOO_LONG, reason);
        }
        let Ok(text) = String::from_utf8(data) else {
            return self.text_error(from, error_code::NOT_TEXT, "in-call text must be UTF-8".to_owned());
        };
        let Some((room, role, to)) = self.members_reached_by(from) else {
            return;
        };
        // Fail closed: if the embedder's filter panics, the text is dropped, never relayed unfiltered.
        let filter = &mut self.filter;
        let Some(filtered) = guard(|| filter.filter_text(room, from, &text)) else {
            warn!(%room, %from, "text filter panicked; message dropped");
            self.shared.stats.drops.data_refused += 1;
            return;
        };
        let masked = filtered.text;
        let msg = TextMessage {
            from: from.0,
            role: role.as_str().into(),
            text: masked.clone(),
        };
        let Ok(json) = serde_json::to_vec(&msg) else { return };
        for id in to {
            let Some(q) = self.participants.get_mut(&id) else {
                continue;
            };
            let Some(ch) = q.text_ch else { continue };
            match guard(|| q.rtc.channel(ch).map(|mut c| c.write(false, &json))) {
                Some(Some(Ok(true))) => {}
                Some(_) => self.shared.stats.drops.data_refused += 1,
                None => doom(&mut self.shared, q, LeaveReason::Panicked),
            }
            mark_dirty(&mut self.shared, q);
        }
        self.shared.events.push_back(Event::TextRelayed {
            room,
            from,
            text: masked,
            amended: filtered.amended,
        });
    }

    /// Send a control message on the file channel of each of `to`.
    pub(super) fn send_file_control(&mut self, to: &[ParticipantId], msg: &FileMessage) {
        let Ok(json) = serde_json::to_vec(msg) else { return };
        for id in to {
            self.enqueue_file(*id, false, json.clone());
        }
    }

    /// Queue a file-channel message for `to`, bounded by the largest file plus 1 MiB, and write what fits.
    fn enqueue_file(&mut self, to: ParticipantId, binary: bool, data: Vec<u8>) {
        let limit = usize::try_from(self.config.files.max_size)
            .unwrap_or(usize::MAX)
            .saturating_add(1 << 20);
        let Some(q) = self.participants.get_mut(&to) else {
            return;
        };
        if q.file_out_bytes.saturating_add(data.len()) > limit {
            self.shared.stats.drops.data_refused += 1;
            return;
        }
        q.file_out_bytes += data.len();
        q.file_out.push_back((binary, data));
        flush_file_out(q, &mut self.shared);
    }

    /// Handle a file-channel message of `from`: a control message (JSON) or a chunk of the file being sent.
    pub(super) fn relay_file(&mut self, from: ParticipantId, binary: bool, data: Vec<u8>) {
        let Some((room, _, to)) = self.members_reached_by(from) else {
            return;
        };
        let Some(p) = self.participants.get_mut(&from) else {
            return;
        };
        if binary {
            match &mut p.file_in {
                FileIn::Receiving {
                    size,
                    received,
                    hasher,
                    recipients,
                    ..
                } => {
                    if data.len() > self.config.files.max_chunk || *received + data.len() as u64 > *size {
                        let recipients = std::mem::take(recipients);
                        p.file_in = FileIn::Refusing;
                        self.refuse_file(room, from, "chunk too large or file longer than declared");
                        self.send_file_control(
                            &recipients,
                            &FileMessage::Abort {
                                reason: "invalid".into(),
                            },
                        );
                        return;
                    }
                    *received += data.len() as u64;
                    hasher.update(&data);
                    let recipients = recipients.clone();
                    let n = recipients.len();
                    let mut data = Some(data);
                    for (i, r) in recipients.into_iter().enumerate() {
                        // The last recipient takes the buffer itself.
                        let chunk = if i + 1 == n { data.take() } else { data.clone() };
                        if let Some(chunk) = chunk {
                            self.enqueue_file(r, true, chunk);
                        }
                    }
                }
                _ => self.shared.stats.drops.data_refused += 1,
            }
            return;
        }
        let msg: FileMessage = match serde_json::from_slice(&data) {
            Ok(m) => m,
            Err(_) => {
                self.shared.stats.drops.data_refused += 1;
                self.reply_file(
                    from,
                    &FileMessage::Error {
                        reason: "bad control message".into(),
                    },
                );
                return;
            }
        };
        match msg {
            FileMessage::Header {
                name,
                size,
                mime,
                sha256,
                ..
            } => {
                if let FileIn::Receiving { recipients, .. } = std::mem::take(&mut p.file_in) {
                    self.send_file_control(
                        &recipients,
                        &FileMessage::Abort {
                            reason: "superseded".into(),
                        },
                    );
                }
                let policy = &self.config.files;
                let reason = if size > policy.max_size {
                    Some("file too large")
                } else if !policy.allows_type(&mime) {
                    Some("file type not allowed")
                } else if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                    Some("bad sha256")
                } else if name.len() > 1024 || name.is_empty() {
                    Some("bad file name")
                } else {
                    None
                };
                if let Some(reason) = reason {
                    if let Some(p) = self.participants.get_mut(&from) {
                        p.file_in = FileIn::Refusing;
                    }
                    self.refuse_file(room, from, reason);
                    return;
                }
                let filter = &mut self.filter;
                let Some(name) = guard(|| filter.filter_name(room, from, &name)) else {
                    if let Some(p) = self.participants.get_mut(&from) {
                        p.file_in = FileIn::Refusing;
                    }
                    self.refuse_file(room, from, "file name refused");
                    return;
                };
                let recipients: Vec<ParticipantId> = to
                    .into_iter()
                    .filter(|r| self.participants.get(r).is_some_and(|q| q.file_ch.is_some()))
                    .collect();
                let header = FileMessage::Header {
                    from: Some(from.0),
                    name: name.clone(),
                    size,
                    mime: mime.clone(),
                    sha256: sha256.to_ascii_lowercase(),
                };
                self.send_file_control(&recipients, &header);
                if let Some(p) = self.participants.get_mut(&from) {
                    p.file_in = FileIn::Receiving {
                        name,
                        size,
                        mime,
                        sha256: sha256.to_ascii_lowercase(),
                        received: 0,
                        hasher: Sha256::new(),
                        recipients,
                    };
                }
                self.reply_file(from, &FileMessage::Accepted);
            }
            FileMessage::End => {
                let FileIn::Receiving {
                    name,
                    size,
                    mime,
                    sha256,
                    received,
                    hasher,
                    recipients,
                } = std::mem::take(&mut p.file_in)
                else {
                    self.shared.stats.drops.data_refused += 1;
                    return;
                };
                let digest = hex::encode(hasher.finalize());
                if received != size || digest != sha256 {
                    self.send_file_control(
                        &recipients,
                        &FileMessage::Abort {
                            reason: "hash mismatch".into(),
                        },
                    );
                    self.refuse_file(room, from, "size or hash mismatch");
                    return;
                }
                self.send_file_control(&recipients, &FileMessage::End);
                self.reply_file(from, &FileMessage::Done);
                self.shared.events.push_back(Event::FileTransferred {
                    room,
                    from,
                    name,
                    size,
                    mime,
                    sha256: digest,
                });
            }
            FileMessage::Abort { .. } => {
                if let FileIn::Receiving { recipients, .. } = std::mem::take(&mut p.file_in) {
                    self.send_file_control(
                        &recipients,
                        &FileMessage::Abort {
                            reason: "sender aborted".into(),
                        },
                    );
                }
            }
            _ => self.shared.stats.drops.data_refused += 1,
        }
    }

    /// Send a control message back to the sender `to`.
    fn reply_file(&mut self, to: ParticipantId, msg: &FileMessage) {
        self.send_file_control(&[to], msg);
    }

    /// Refuse the file `from` is sending: an error to the sender, an event to the embedder.
    fn refuse_file(&mut self, room: RoomId, from: ParticipantId, reason: &str) {
        self.shared.stats.drops.data_refused += 1;
        self.reply_file(from, &FileMessage::Error { reason: reason.into() });
        self.shared.events.push_back(Event::FileRejected {
            room,
            from,
            reason: reason.into(),
        });
    }
}

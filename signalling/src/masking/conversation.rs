//! Per-conversation masking: catches a number that one sender splits across consecutive messages.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::Hash;

use super::MaskedText;
use super::detect::{Findings, GapCount, MASK_CHAR, PriorDigit, TailOut};
use super::policy::Masker;

/// Identifies a sender within one conversation (e.g. 0 for the visitor, an agent's numeric id for an
/// agent). Any `Eq + Hash` key works with [`ConversationMasker`]; this is the default.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct SenderKey(pub u64);

impl From<u64> for SenderKey {
    fn from(v: u64) -> Self {
        SenderKey(v)
    }
}

/// An earlier message of the same sender, re-masked because the current message completed a card number
/// that began in it. Replace that message (in the agent's view, the supervisor's, the archive) by `text`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Amendment {
    /// How many of this sender's messages back: 1 is the sender's previous message, 2 the one before.
    pub back: usize,
    /// The earlier message, masked again.
    pub text: MaskedText,
}

/// The result of masking one chat message.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub struct MaskOutcome {
    /// The message as everyone but its sender's own browser may see it.
    pub text: MaskedText,
    /// The sender's previous message, re-masked, when this message completed a card number it began.
    pub amend_previous: Option<MaskedText>,
    /// Older messages of the same sender to re-mask (a card split across three or more messages); `back`
    /// is at least 2, ordered from the most recent.
    pub amend_earlier: Vec<Amendment>,
    /// What was masked in this message (counts only: safe for metrics and logs).
    pub findings: Findings,
}

impl MaskOutcome {
    /// Every amendment, the previous message (`back == 1`) first.
    pub fn amendments(&self) -> impl Iterator<Item = Amendment> + '_ {
        self.amend_previous
            .iter()
            .map(|t| Amendment {
                back: 1,
                text: t.clone(),
            })
            .chain(self.amend_earlier.iter().cloned())
    }
}

/// A digit of a sender's remembered tail: where it is in which earlier masked message.
#[derive(Clone, Copy, Debug)]
struct TailDigit {
    value: u8,
    group_start: bool,
    /// Sequence number (per sender) of the message holding it.
    msg: u64,
    /// Byte offset of the digit in that message's masked text.
    out_byte: usize,
}

/// A recent masked message of a sender that the tail still points into.
struct Pending {
    seq: u64,
    text: String,
}

impl Drop for Pending {
    fn drop(&mut self) {
        wipe_string(&mut self.text);
    }
}

#[derive(Default)]
struct SenderState {
    /// Sequence number of the sender's last message.
    seq: u64,
    /// The last message held a card: a CVV or expiry may follow at the start of the next one.
    card_recent: bool,
    /// The digits the sender's last message(s) ended with, oldest first.
    tail: Vec<TailDigit>,
    /// What the sender wrote after `tail` (words, characters).
    gap: GapCount,
    /// The messages `tail` points into, oldest first.
    pending: VecDeque<Pending>,
}

impl Drop for SenderState {
    fn drop(&mut self) {
        wipe_tail(&mut self.tail);
    }
}

/// Best-effort overwrite of a string's bytes before its memory is freed.
fn wipe_string(s: &mut String) {
    let mut bytes = std::mem::take(s).into_bytes();
    bytes.fill(0);
    std::hint::black_box(&bytes);
}

fn wipe_tail(tail: &mut Vec<TailDigit>) {
    for t in tail.iter_mut() {
        t.value = 0;
    }
    std::hint::black_box(&tail);
    tail.clear();
}

/// Replaces the characters starting at `bytes` (char boundaries of `text`) by the mask character, and
/// moves `offsets` (char boundaries of `text`) to the same characters in the result.
fn mask_at(text: &str, bytes: &[usize], offsets: &mut [&mut usize]) -> String {
    let mut out = String::with_capacity(text.len() + 2 * bytes.len());
    let mut moved = vec![false; offsets.len()];
    for (b, c) in text.char_indices() {
        for (o, done) in offsets.iter_mut().zip(moved.iter_mut()) {
            if !*done && **o == b {
                **o = out.len();
                *done = true;
            }
        }
        out.push(if bytes.contains(&b) { MASK_CHAR } else { c });
    }
    out
}

/// Masks the chat messages of one conversation, keeping per sender the little state needed to catch a card
/// number split across consecutive messages.
///
/// Call order: [`ConversationMasker::new`] when the conversation starts; [`mask`](Self::mask) for every
/// message, in the order the conversation records them, before anyone else sees the message; apply the
/// outcome's amendments to the earlier messages (agent view, supervisor view, archive);
/// [`set_masker`](Self::set_masker) when the conversation moves to a group with other patterns; drop it
/// (or [`forget`](Self::forget) a sender) when done, which wipes the remembered digits.
///
/// What is remembered per sender, in memory only: the digits their last message(s) ended with (at most
/// 19; a few words may follow them, and messages without digits may come in between, see
/// [`MAX_JOIN_WORDS`](super::MAX_JOIN_WORDS)), how many words and characters came after them, and the
/// masked text of the messages those digits are in. It is overwritten (and the old copy
/// wiped) when the next message of that sender arrives, and wiped on drop.
pub struct ConversationMasker<K = SenderKey> {
    masker: Masker,
    senders: HashMap<K, SenderState>,
}

impl<K> std::fmt::Debug for ConversationMasker<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConversationMasker")
            .field("senders", &self.senders.len())
            .finish_non_exhaustive()
    }
}

impl<K: Eq + Hash> ConversationMasker<K> {
    /// A masker for a new conversation.
    pub fn new(masker: Masker) -> Self {
        Self {
            masker,
            senders: HashMap::new(),
        }
    }

    /// The policy in force.
    pub fn masker(&self) -> &Masker {
        &self.masker
    }

    /// Switches to another policy (e.g. after a transfer to a group with its own patterns). The senders'
    /// remembered tails are kept.
    pub fn set_masker(&mut self, masker: Masker) {
        self.masker = masker;
    }

    /// Masks one message of `sender`. The outcome's `text` is what may be shown, stored and logged; its
    /// amendments replace earlier messages of the same sender.
    pub fn mask(&mut self, sender: K, text: &str) -> MaskOutcome {
        let state = self.senders.entry(sender).or_default();
        let seq = state.seq + 1;
        state.seq = seq;
        let prior: Vec<PriorDigit> = state
            .tail
            .iter()
            .map(|t| PriorDigit {
                value: t.value,
                group_start: t.group_start,
            })
            .collect();
        let analysed = self.masker.analyse(text, &prior, state.gap, state.card_recent);
        if text
            .chars()
            .all(|c| c.is_whitespace() || super::digits::is_separator(c))
        {
            // A blank message (or a lone separator) neither continues nor ends a number.
            return MaskOutcome {
                text: analysed.text,
                amend_previous: None,
                amend_earlier: Vec::new(),
                findings: analysed.findings,
            };
        }

        // Re-mask the earlier messages that hold the first digits of a card completed now.
        let mut by_message: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
        for &i in &analysed.prior_masked {
            if let Some(t) = state.tail.get(i) {
                by_message.entry(t.msg).or_default().push(t.out_byte);
            }
        }
        let mut amend_previous = None;
        let mut amend_earlier = Vec::new();
        for (msg, bytes) in by_message.into_iter().rev() {
            let Some(pending) = state.pending.iter_mut().find(|p| p.seq == msg) else {
                continue;
            };
            // The remembered digits of this message move when a digit becomes the (longer) mask character.
            let mut offsets: Vec<&mut usize> = state
                .tail
                .iter_mut()
                .filter(|t| t.msg == msg)
                .map(|t| &mut t.out_byte)
                .collect();
            let remasked = mask_at(&pending.text, &bytes, &mut offsets);
            wipe_string(&mut pending.text);
            pending.text.clone_from(&remasked);
            let back = usize::try_from(seq - msg).unwrap_or(usize::MAX);
            if back == 1 {
                amend_previous = Some(MaskedText::new(remasked));
            } else {
                amend_earlier.push(Amendment {
                    back,
                    text: MaskedText::new(remasked),
                });
            }
        }

        if let Some(gap) = analysed.passthrough {
            // No digits: the tail waits for its next part while only a few words stand in between.
            let gap = state.gap.add(gap);
            if gap.joins() && !state.tail.is_empty() {
                state.gap = gap;
            } else {
                wipe_tail(&mut state.tail);
                state.gap = GapCount::default();
                state.pending.clear();
            }
            state.card_recent = false;
            return MaskOutcome {
                text: analysed.text,
                amend_previous,
                amend_earlier,
                findings: analysed.findings,
            };
        }

        // The new tail supersedes the old one.
        let mut tail = Vec::with_capacity(analysed.tail.len());
        for t in &analysed.tail {
            match *t {
                TailOut::Prior(i) => {
                    if let Some(d) = state.tail.get(i) {
                        tail.push(*d);
                    }
                }
                TailOut::Here {
                    value,
                    group_start,
                    out_byte,
                } => {
                    tail.push(TailDigit {
                        value,
                        group_start,
                        msg: seq,
                        out_byte,
                    });
                }
            }
        }
        wipe_tail(&mut state.tail);
        state.tail = tail;
        state.gap = analysed.trail;
        let oldest = state.tail.first().map(|t| t.msg);
        state.pending.retain(|p| oldest.is_some_and(|o| p.seq >= o));
        if state.tail.last().is_some_and(|t| t.msg == seq) {
            state.pending.push_back(Pending {
                seq,
                text: analysed.text.as_str().to_owned(),
            });
        }
        state.card_recent = analysed.findings.cards > 0;

        MaskOutcome {
            text: analysed.text,
            amend_previous,
            amend_earlier,
            findings: analysed.findings,
        }
    }

    /// How many of `sender`'s most recent messages (counting the last one) a later message could still
    /// amend. 0 when their last message did not end with digits. Messages older than that are final.
    pub fn open_messages(&self, sender: &K) -> usize {
        self.senders
            .get(sender)
            .and_then(|s| {
                s.tail
                    .first()
                    .map(|t| usize::try_from(s.seq - t.msg + 1).unwrap_or(usize::MAX))
            })
            .unwrap_or(0)
    }

    /// Forgets (and wipes) what is remembered of `sender`.
    pub fn forget(&mut self, sender: &K) {
        self.senders.remove(sender);
    }
}

//! Masking of sensitive data in text, before anyone but its author sees it.
//!
//! Every text that reaches an agent, a supervisor, the archive, metrics or logs is a [`MaskedText`], and
//! only this module can make one (ARCHITECTURE.md, convention 8). What is masked (see `docs/masking.md`):
//!
//! - payment card numbers: 12–19 digits (Unicode decimal digits of any script, and compatibility forms
//!   such as superscript or circled digits), optionally in groups joined by short gaps without letters
//!   (spaces, line breaks, punctuation, invisible format characters and combining marks:
//!   [`MAX_GAP_SYMBOL_RUNS`]), Luhn-valid and matching a brand's prefix and length. A masked card keeps
//!   its last four digits and the shape of the text:
//!   `4111 1111 1111 1111` → `•••• •••• •••• 1111`;
//! - a CVV and an expiry date next to a card or after a keyword (`cvv`, `exp`, …);
//! - IBANs (country length and mod-97), keeping the last four characters;
//! - US social security numbers written with separators;
//! - operator-defined patterns ([`ExtraPattern`]).
//!
//! Numbers preceded by `+` (phone numbers) and everything inside URLs are left alone, as are numbers that
//! fail the checks above (order ids, dates, amounts, IP addresses, reference numbers).
//!
//! Use a [`Masker`] (compiled from a [`MaskPolicy`], shared) for single texts and a [`ConversationMasker`]
//! per conversation for chat and the file names shared in it: it remembers the digits each sender's last
//! message ended with, so that a card number typed over several messages (with at most
//! [`MAX_JOIN_WORDS`] words and [`MAX_JOIN_CHARS`] characters in between) is still caught; the earlier
//! messages are then re-masked
//! ([`MaskOutcome::amend_previous`]). [`mask_lines`] runs a whole conversation from a reader to a writer
//! (`relaydesk mask`). Nothing here logs message text.

#[cfg(test)]
mod adversarial_tests;
mod card;
mod conversation;
mod detect;
mod digits;
mod iban;
mod lines;
mod policy;
#[cfg(test)]
mod tests;

use std::fmt;

use serde::Serialize;

pub use conversation::{Amendment, ConversationMasker, MaskOutcome, SenderKey};
pub use detect::{Findings, MASK_CHAR, MAX_GAP_SYMBOL_RUNS, MAX_JOIN_CHARS, MAX_JOIN_WORDS};
pub use digits::is_invisible;
pub use lines::{MAX_LINE_BYTES, MaskIoError, mask_lines};
pub use policy::{
    ExtraPattern, MAX_EXTRA_PATTERNS, MAX_NAME_LEN, MAX_PATTERN_LEN, MAX_REPLACEMENT_LEN, MaskPolicy, Masker,
    PolicyError, REGEX_DFA_SIZE_LIMIT, REGEX_SIZE_LIMIT,
};

/// Text that went through the masker: the only text type that may reach an agent, a supervisor, the
/// archive, metrics or logs. It can be created only by this module ([`Masker::mask`],
/// [`ConversationMasker::mask`]); it serialises as a plain JSON string.
#[derive(Clone, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(transparent)]
pub struct MaskedText(String);

impl MaskedText {
    /// Wraps text the masker produced. Private to the masking module on purpose.
    fn new(text: String) -> Self {
        MaskedText(text)
    }

    /// The masked text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The masked text, owned.
    pub fn into_string(self) -> String {
        self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True for the empty text.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for MaskedText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for MaskedText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl AsRef<str> for MaskedText {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl From<MaskedText> for String {
    fn from(t: MaskedText) -> Self {
        t.0
    }
}

/// A value that must not appear in logs or error messages (a customer's identifier, e-mail address, IP
/// address, …): `Debug` and `Display` print `[redacted]`. Read it with [`Redacted::expose`] where it is
/// really needed; the name makes each use visible in review.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Redacted<T>(T);

impl<T> Redacted<T> {
    /// Wraps a sensitive value.
    pub fn new(value: T) -> Self {
        Redacted(value)
    }

    /// The value itself. Never pass it to a log macro.
    pub fn expose(&self) -> &T {
        &self.0
    }

    /// Unwraps the value.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> From<T> for Redacted<T> {
    fn from(value: T) -> Self {
        Redacted(value)
    }
}

impl<T> fmt::Debug for Redacted<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl<T> fmt::Display for Redacted<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

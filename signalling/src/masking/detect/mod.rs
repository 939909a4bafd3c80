//! The detection engine: finds sensitive values in one message (plus the digits the same sender left at
//! the end of the previous message) and rewrites the message by character positions.
//!
//! Steps, in order: URLs are found and their characters excluded; IBANs; digit runs (digits joined by
//! single separators); chains of runs (runs joined by a short gap without letters: spaces, punctuation,
//! invisible characters, see [`MAX_GAP_SYMBOL_RUNS`]) with the previous message's tail prepended to the
//! first chain when few words stand between them ([`MAX_JOIN_WORDS`], [`MAX_JOIN_CHARS`]); card numbers
//! in each chain; expiry dates next to a card or after a keyword; US SSNs; CVVs next to a card or after a
//! keyword (these three on runs).
//! Digits are Unicode decimal digits and compatibility digit forms (`digits::digit_value`); invisible
//! format characters and combining marks never separate anything (`digits::is_ignorable`).
//! Every masked character becomes [`MASK_CHAR`]; everything else is copied unchanged, so separators, the
//! spelling of digits and the text around keep their shape.

use regex::Regex;

use super::card;
use super::digits::{self, NOT_DIGIT, SepKind};
use super::iban::{self, Alnum};

/// The character that replaces every masked letter or digit.
pub const MASK_CHAR: char = '\u{2022}';

/// How far (in characters) a CVV or an expiry date may be from a card number to be "next to" it.
pub(crate) const NEAR_CHARS: usize = 40;
/// How far (in characters) a CVV or an expiry date may follow its keyword ("cvv", "exp", …).
pub(crate) const KEYWORD_GAP: usize = 20;
/// The longest tail of digits remembered per sender (a card has at most 19 digits).
pub(crate) const MAX_TAIL_DIGITS: usize = card::MAX_LEN;
/// Within one message, two digit runs belong to one number when the characters between them hold no
/// letter and at most this many runs of visible characters (a run is one character repeated, e.g. `---`;
/// all whitespace, line breaks included, is one character; invisible characters do not count). So
/// `4111 - 1111`, `4111/1111`, `4111,\t1111`, `4111\u{200B}1111` and `4111 -- 1111` join; `4111 - - 1111`
/// does not.
pub const MAX_GAP_SYMBOL_RUNS: u32 = 4;
/// Across messages of one sender (and the file names they share), the digits one message ends with and
/// those the next begins with belong to one number when at most this many words stand between them
/// (after the first part, in messages without digits in between, and before the second part) ...
pub const MAX_JOIN_WORDS: u32 = 4;
/// ... and at most this many visible characters that are not whitespace (words included).
pub const MAX_JOIN_CHARS: u32 = 32;

/// What stands between two parts of a number split across messages: words and visible characters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct GapCount {
    words: u32,
    chars: u32,
    /// A URL or an IBAN stands in between: never joined.
    blocked: bool,
}

impl GapCount {
    /// The count of `chars` (stops early once over the limits).
    fn of(chars: impl Iterator<Item = (char, bool)>) -> Self {
        let mut g = GapCount::default();
        let mut in_word = false;
        for (c, excluded) in chars {
            if excluded {
                g.blocked = true;
                return g;
            }
            match digits::gap_class(c) {
                digits::GapClass::Ignorable => continue,
                digits::GapClass::Space => in_word = false,
                digits::GapClass::Letter => {
                    if !in_word {
                        g.words += 1;
                    }
                    in_word = true;
                    g.chars += 1;
                }
                digits::GapClass::Symbol => {
                    in_word = false;
                    g.chars += 1;
                }
            }
            if !g.joins() {
                return g;
            }
        }
        g
    }

    /// The count of a whole text (a message without digits).
    pub(crate) fn of_text(text: &str) -> Self {
        Self::of(text.chars().map(|c| (c, false)))
    }

    fn of_chars(ch: &[Ch]) -> Self {
        Self::of(ch.iter().map(|c| (c.c, c.excluded)))
    }

    /// Both gaps, one after the other.
    pub(crate) fn add(self, other: GapCount) -> Self {
        GapCount {
            words: self.words.saturating_add(other.words),
            chars: self.chars.saturating_add(other.chars),
            blocked: self.blocked || other.blocked,
        }
    }

    /// Short enough to join the parts of a number.
    pub(crate) fn joins(self) -> bool {
        !self.blocked && self.words <= MAX_JOIN_WORDS && self.chars <= MAX_JOIN_CHARS
    }
}

/// The compiled built-in rules, shared by every masker.
#[derive(Debug)]
pub(crate) struct Builtin {
    url: Regex,
    cvv_keyword: Regex,
    expiry_keyword: Regex,
}

impl Builtin {
    /// Compiles the built-in regular expressions.
    pub(crate) fn new() -> Result<Self, regex::Error> {
        Ok(Self {
            // No `\b`: a match counts when no ASCII letter touches it (see `letter_bounded`), so that
            // a digit and the mask character that replaces it are the same context (masking is
            // idempotent), and the regexes stay on the fast DFA engines for any text.
            url: Regex::new(r"(?i)(?:https?://|ftp://|www\.)\S+")?,
            cvv_keyword: Regex::new(
                r"(?i)(?:cvv2?|cvc2?|cvn|cid|csc|security\s*code|card\s*code|verification\s*(?:code|value))",
            )?,
            expiry_keyword: Regex::new(
                r"(?i)(?:exp(?:iry|ires|iration|\.)?(?:\s*date)?|valid\s*(?:thru|through|until|to)|good\s*thru)",
            )?,
        })
    }
}

/// Which built-in rules are on.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Switches {
    pub cards: bool,
    pub cvv_expiry: bool,
    pub iban: bool,
    pub us_ssn: bool,
}

/// How many values of each kind a message held. Counts only, never content: safe for metrics and logs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Findings {
    /// Card numbers (including one completed across messages).
    pub cards: u32,
    /// Card numbers that began in an earlier message of the same sender.
    pub split_cards: u32,
    /// CVV / security codes.
    pub cvv: u32,
    /// Expiry dates.
    pub expiry: u32,
    /// IBANs.
    pub iban: u32,
    /// US social security numbers.
    pub ssn: u32,
    /// Matches of operator-defined patterns.
    pub extra: u32,
}

impl Findings {
    /// True when nothing was masked.
    pub fn is_empty(&self) -> bool {
        *self == Findings::default()
    }
}

/// A digit the same sender left at the end of their previous message(s), as the engine sees it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PriorDigit {
    pub value: u8,
    /// True when this digit starts a group (after a separator, a message boundary or at the run start).
    pub group_start: bool,
}

/// One digit of the tail the analysed message leaves for the next one.
#[derive(Clone, Copy, Debug)]
pub(crate) enum TailOut {
    /// Digit `i` of the prior tail that was given to the engine.
    Prior(usize),
    /// A digit of this message, at `out_byte` in the masked output.
    Here {
        value: u8,
        group_start: bool,
        out_byte: usize,
    },
}

/// The result of analysing one message.
#[derive(Debug)]
pub(crate) struct Analysis {
    /// The masked message.
    pub text: String,
    /// Indices of prior-tail digits that belong to a card completed by this message: they must be masked
    /// in the earlier message(s).
    pub prior_masked: Vec<usize>,
    /// The digit run this message ends with (at most [`MAX_TAIL_DIGITS`] digits), oldest first.
    pub tail: Vec<TailOut>,
    /// What follows the tail in this message.
    pub trail: GapCount,
    /// The message holds no digit (outside URLs and IBANs): its gap count, which the prior tail may
    /// survive. `None` when it holds digits.
    pub passthrough: Option<GapCount>,
    /// What was masked.
    pub findings: Findings,
}

#[derive(Clone, Copy)]
struct Ch {
    c: char,
    digit: u8,
    masked: bool,
    /// Inside a URL or an IBAN: not available to the digit rules.
    excluded: bool,
    /// Part of a card number (masked, or one of its last four digits).
    in_card: bool,
}

impl Ch {
    /// A digit, or the mask character that may have replaced one: context checks treat both alike so
    /// that masking masked text changes nothing.
    fn digitish(&self) -> bool {
        self.digit != NOT_DIGIT || self.c == MASK_CHAR
    }
}

/// A maximal run of digit groups joined by single separators, or a chain of runs (possibly continuing the
/// prior tail). Its digits live in a [`DigitBuf`] shared by all runs (or all chains) of the message: one
/// allocation per field and message, not per run.
struct Run<'a> {
    prior_len: usize,
    values: &'a [u8],
    group_start: &'a [bool],
    /// The separator before each digit that starts a group (`None` at the run start or message boundary;
    /// empty in a chain).
    sep_before: &'a [Option<char>],
    /// Character index of each digit of this message (`digit index - prior_len`).
    chars: &'a [usize],
    /// One past the last character index of the run.
    end_char: usize,
    /// The run is preceded by `+` (an international phone number).
    plus_before: bool,
    /// Number of groups (a group starts after a separator or a message boundary).
    group_count: usize,
    /// A chain made of one run that reads as an IPv4 address.
    ipv4_alone: bool,
}

/// The digits of a message's runs or chains, one after the other.
#[derive(Default)]
struct DigitBuf {
    values: Vec<u8>,
    group_start: Vec<bool>,
    sep_before: Vec<Option<char>>,
    chars: Vec<usize>,
}

/// Where a run or chain lies in its [`DigitBuf`], and what else it knows.
struct RunMeta {
    /// Range in `DigitBuf::values` and `group_start` (prior digits included).
    digits: (usize, usize),
    /// Range in `DigitBuf::chars` (and `sep_before`, for runs).
    chars: (usize, usize),
    prior_len: usize,
    end_char: usize,
    plus_before: bool,
    group_count: usize,
    ipv4_alone: bool,
}

impl DigitBuf {
    /// Room for `digits` digits (with separators for runs), so that filling it never reallocates.
    fn with_capacity(digits: usize, separators: bool) -> Self {
        DigitBuf {
            values: Vec::with_capacity(digits),
            group_start: Vec::with_capacity(digits),
            sep_before: Vec::with_capacity(if separators { digits } else { 0 }),
            chars: Vec::with_capacity(digits),
        }
    }

    fn runs<'a>(&'a self, metas: &[RunMeta]) -> Vec<Run<'a>> {
        metas
            .iter()
            .map(|m| Run {
                prior_len: m.prior_len,
                values: &self.values[m.digits.0..m.digits.1],
                group_start: &self.group_start[m.digits.0..m.digits.1],
                sep_before: self.sep_before.get(m.chars.0..m.chars.1).unwrap_or(&[]),
                chars: &self.chars[m.chars.0..m.chars.1],
                end_char: m.end_char,
                plus_before: m.plus_before,
                group_count: m.group_count,
                ipv4_alone: m.ipv4_alone,
            })
            .collect()
    }
}

impl Run<'_> {
    fn len(&self) -> usize {
        self.values.len()
    }

    /// Groups as `(first digit index, digit count)`.
    fn groups(&self) -> Vec<(usize, usize)> {
        let mut out = Vec::with_capacity(self.group_count);
        self.groups_into(&mut out);
        out
    }

    /// [`Run::groups`] appended to `out`.
    fn groups_into(&self, out: &mut Vec<(usize, usize)>) {
        let mut start = 0;
        for i in 1..=self.len() {
            if i == self.len() || self.group_start[i] {
                out.push((start, i - start));
                start = i;
            }
        }
    }

    /// True when a group has 3 or 4 digits (a CVV candidate).
    fn has_group_of_3_or_4(&self) -> bool {
        let mut start = 0;
        (1..=self.len()).any(|i| {
            let end = self.is_boundary(i);
            let hit = end && (3..=4).contains(&(i - start));
            if end {
                start = i;
            }
            hit
        })
    }

    fn is_boundary(&self, i: usize) -> bool {
        i == self.len() || self.group_start[i]
    }

    /// Four groups of 1–3 digits, each at most 255, joined by dots: an IPv4 address, never a card (no
    /// 12-digit card number starts with a value up to 255).
    fn is_ipv4(&self) -> bool {
        if self.prior_len != 0 {
            return false;
        }
        let groups = self.groups();
        let octet = |first: usize, n: usize| {
            self.values[first..first + n]
                .iter()
                .fold(0u32, |acc, &d| acc * 10 + u32::from(d))
                <= 255
        };
        groups.len() == 4
            && groups.iter().all(|&(first, n)| (1..=3).contains(&n) && octet(first, n))
            && groups[1..]
                .iter()
                .all(|&(first, _)| self.sep_before[first].and_then(digits::separator_kind) == Some(SepKind::Dot))
    }
}

/// A card found in a run: digit indices `start..end` of the run.
struct CardSpan {
    /// First and last character index of this message's part of the card.
    first_char: usize,
    last_char: usize,
}

/// Analyses and masks one message. `prior` is the sender's remembered tail (empty for stateless use);
/// `card_recent` says the sender's previous message held a card (its CVV or expiry may follow here).
/// `prior_gap` is what stood between that tail and this message.
pub(crate) fn analyse(
    builtin: &Builtin,
    sw: Switches,
    text: &str,
    prior: &[PriorDigit],
    prior_gap: GapCount,
    card_recent: bool,
) -> Analysis {
    let mut findings = Findings::default();
    if !digits::has_digit(text) {
        // The fast path: ordinary chat text. Its words matter only when a tail waits for its next part.
        let gap = if prior.is_empty() {
            GapCount::default()
        } else {
            GapCount::of_text(text)
        };
        return Analysis {
            text: text.to_owned(),
            prior_masked: Vec::new(),
            tail: Vec::new(),
            trail: GapCount::default(),
            passthrough: Some(gap),
            findings,
        };
    }
    let mut ch: Vec<Ch> = text
        .chars()
        .map(|c| Ch {
            c,
            digit: digits::digit_or_marker(c),
            masked: false,
            excluded: false,
            in_card: false,
        })
        .collect();
    // Byte offset of each character in `text`, for mapping regex matches.
    let byte_of: Vec<usize> = text.char_indices().map(|(b, _)| b).collect();
    let char_at = |byte: usize| byte_of.partition_point(|&b| b < byte);

    // Every URL start holds "://" or "www." (any case): most messages have neither, and skip the regex.
    let may_hold_url = memchr::memmem::find(text.as_bytes(), b"://").is_some()
        || memchr::memchr2_iter(b'w', b'W', text.as_bytes()).any(|i| {
            text.as_bytes()
                .get(i..i + 4)
                .is_some_and(|w| w.eq_ignore_ascii_case(b"www."))
        });
    for m in builtin
        .url
        .find_iter(if may_hold_url { text } else { "" })
        .filter(|m| letter_bounded(text, m.start(), None))
    {
        for c in &mut ch[char_at(m.start())..char_at(m.end())] {
            c.excluded = true;
        }
    }
    if sw.iban {
        findings.iban = find_ibans(&mut ch);
    }

    let digit_count = ch.iter().filter(|c| c.digit != NOT_DIGIT).count();
    let mut run_buf = DigitBuf::with_capacity(digit_count, true);
    let run_metas = find_runs(&ch, &mut run_buf);
    let runs = run_buf.runs(&run_metas);
    let mut chain_buf = DigitBuf::with_capacity(digit_count + prior.len(), false);
    let chain_metas = find_chains(&runs, &ch, prior, prior_gap, &mut chain_buf);
    let chains = chain_buf.runs(&chain_metas);
    let mut prior_masked: Vec<usize> = Vec::new();
    let mut cards: Vec<CardSpan> = Vec::new();
    if sw.cards {
        for chain in &chains {
            mask_cards(chain, &mut ch, &mut prior_masked, &mut cards, &mut findings);
        }
    }
    // The keyword searches run only when a value they could qualify is there: an expiry needs a slash,
    // a CVV a group of 3–4 digits.
    let has_slash = text.contains(['/', '\u{FF0F}']);
    let cvv_candidate = runs.iter().any(Run::has_group_of_3_or_4);
    let near = sw.cvv_expiry.then(|| {
        let keywords = Keywords {
            cvv: cvv_candidate.then_some(&builtin.cvv_keyword),
            expiry: has_slash.then_some(&builtin.expiry_keyword),
        };
        Nearness::new(keywords, text, &ch, &cards, card_recent, &char_at)
    });
    if let Some(near) = &near
        && has_slash
    {
        findings.expiry += mask_expiry(&runs, &mut ch, near);
    }
    if sw.us_ssn {
        for run in &runs {
            findings.ssn += mask_ssn(run, &mut ch);
        }
    }
    if let Some(near) = &near {
        findings.cvv += mask_cvv(&runs, &mut ch, near);
    }

    // Rewrite by positions and remember where this message's digits land in the output.
    // Nothing masked (most messages with numbers): the text itself, every character where it was.
    let (out, out_byte) = if ch.iter().any(|c| c.masked) {
        let mut out = String::with_capacity(text.len() + 16);
        let mut out_byte: Vec<usize> = Vec::with_capacity(ch.len());
        for c in &ch {
            out_byte.push(out.len());
            out.push(if c.masked { MASK_CHAR } else { c.c });
        }
        (out, out_byte)
    } else {
        (text.to_owned(), byte_of)
    };

    let (tail, trail) = compute_tail(&chains, &ch, &out_byte);
    let passthrough = runs.is_empty().then(|| GapCount::of_chars(&ch));
    Analysis {
        text: out,
        prior_masked,
        tail,
        trail,
        passthrough,
        findings,
    }
}

/// True when no ASCII letter comes right before byte `start` (nor right at byte `end`, if given).
fn letter_bounded(text: &str, start: usize, end: Option<usize>) -> bool {
    let letter_before = text[..start]
        .chars()
        .next_back()
        .is_some_and(|c| c.is_ascii_alphabetic());
    let letter_after = end.is_some_and(|e| text[e..].chars().next().is_some_and(|c| c.is_ascii_alphabetic()));
    !letter_before && !letter_after
}

/// Character index just after each keyword match that stands as a word of its own.
fn keyword_ends(re: &Regex, text: &str, char_at: &dyn Fn(usize) -> usize) -> Vec<usize> {
    re.find_iter(text)
        .filter(|m| letter_bounded(text, m.start(), Some(m.end())))
        .map(|m| char_at(m.end()))
        .collect()
}

mod runs;
mod values;

use runs::*;
use values::*;

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

/// IBANs: two letters, two check digits, the BBAN, single spaces allowed, the country's length, mod-97.
/// Keeps the last four characters; every character of the IBAN is excluded from the digit rules.
fn find_ibans(ch: &mut [Ch]) -> u32 {
    let n = ch.len();
    let is_alnum = |c: &Ch| !c.excluded && (c.c.is_ascii_alphanumeric() || c.digit != NOT_DIGIT);
    let mut found = 0;
    let mut i = 0;
    while i + 3 < n {
        let starts = ch[i].c.is_ascii_alphabetic()
            && ch[i + 1].c.is_ascii_alphabetic()
            && ch[i + 2].digit != NOT_DIGIT
            && ch[i + 3].digit != NOT_DIGIT
            && !ch[i].excluded
            && (i == 0 || !(ch[i - 1].c.is_alphanumeric() || ch[i - 1].digit != NOT_DIGIT));
        if !starts {
            i += 1;
            continue;
        }
        let cc = [
            ch[i].c.to_ascii_uppercase() as u8,
            ch[i + 1].c.to_ascii_uppercase() as u8,
        ];
        let Some(want) = iban::country_length(cc) else {
            i += 1;
            continue;
        };
        let mut idx: Vec<usize> = Vec::with_capacity(want);
        let mut j = i;
        while idx.len() < want && j < n {
            if is_alnum(&ch[j]) {
                idx.push(j);
                j += 1;
            } else if matches!(ch[j].c, ' ' | '\u{00A0}') && j + 1 < n && is_alnum(&ch[j + 1]) {
                j += 1;
            } else {
                break;
            }
        }
        let ends_cleanly = j == n || !(ch[j].c.is_alphanumeric() || ch[j].digit != NOT_DIGIT);
        if idx.len() == want && ends_cleanly {
            let chars: Vec<Alnum> = idx
                .iter()
                .map(|&k| {
                    if ch[k].digit != NOT_DIGIT {
                        Alnum::Digit(ch[k].digit)
                    } else {
                        Alnum::Letter(ch[k].c as u8)
                    }
                })
                .collect();
            if iban::mod97_valid(&chars) {
                for (pos, &k) in idx.iter().enumerate() {
                    ch[k].excluded = true;
                    if pos + 4 < idx.len() {
                        ch[k].masked = true;
                    }
                }
                found += 1;
                i = j;
                continue;
            }
        }
        i += 1;
    }
    found
}

/// Digit runs of the message: digit groups joined by single separators, their digits in `buf`.
fn find_runs(ch: &[Ch], buf: &mut DigitBuf) -> Vec<RunMeta> {
    let n = ch.len();
    let is_digit = |i: usize| i < n && ch[i].digit != NOT_DIGIT && !ch[i].excluded;
    let mut runs = Vec::new();
    let mut i = 0;
    while i < n {
        if !is_digit(i) {
            i += 1;
            continue;
        }
        let start = i;
        let from = buf.values.len();
        let mut group_count = 0;
        let mut sep: Option<char> = None;
        loop {
            let mut first = true;
            group_count += 1;
            while is_digit(i) {
                buf.values.push(ch[i].digit);
                buf.group_start.push(first);
                buf.sep_before.push(if first { sep } else { None });
                buf.chars.push(i);
                first = false;
                i += 1;
            }
            if i + 1 < n && digits::is_separator(ch[i].c) && is_digit(i + 1) {
                sep = Some(ch[i].c);
                i += 1;
                continue;
            }
            break;
        }
        let to = buf.values.len();
        runs.push(RunMeta {
            digits: (from, to),
            chars: (from, to),
            prior_len: 0,
            end_char: i,
            // After `+` (a phone number), or glued to a mask character: `•` stands for a digit, so the run
            // continues a longer (masked) number and its first group is no group boundary. Without this a
            // second pass could start a card on the digits an IBAN or a card kept visible.
            plus_before: start > 0 && matches!(ch[start - 1].c, '+' | '\u{FF0B}' | MASK_CHAR),
            group_count,
            ipv4_alone: false,
        });
    }
    runs
}

/// True when the characters between two runs make them one number: no letter, nothing excluded, at most
/// [`MAX_GAP_SYMBOL_RUNS`] runs of visible characters.
fn short_gap(between: &[Ch]) -> bool {
    let mut runs = 0u32;
    // The last visible character, whitespace as ' '.
    let mut last: Option<char> = None;
    for c in between {
        if c.excluded {
            return false;
        }
        let key = match digits::gap_class(c.c) {
            digits::GapClass::Ignorable => continue,
            digits::GapClass::Letter => return false,
            digits::GapClass::Space => ' ',
            digits::GapClass::Symbol => c.c,
        };
        if last != Some(key) {
            runs += 1;
            if runs > MAX_GAP_SYMBOL_RUNS {
                return false;
            }
            last = Some(key);
        }
    }
    true
}

/// Chains: runs joined by short gaps ([`short_gap`]), where card numbers are looked for. The first chain
/// carries the prior tail when `prior_gap` plus the text before the chain is short ([`GapCount::joins`])
/// and the chain does not start with `+` (a phone number).
fn find_chains(
    runs: &[Run<'_>],
    ch: &[Ch],
    prior: &[PriorDigit],
    prior_gap: GapCount,
    buf: &mut DigitBuf,
) -> Vec<RunMeta> {
    // Spans of runs first: (first run, one past the last run, carries the prior tail, digit count).
    let mut spans: Vec<(usize, usize, bool, usize)> = Vec::new();
    let mut prev_end: Option<usize> = None;
    for (k, run) in runs.iter().enumerate() {
        let Some(&first) = run.chars.first() else { continue };
        let joined = prev_end.is_some_and(|end| short_gap(&ch[end..first]));
        prev_end = Some(run.end_char);
        if joined && let Some(span) = spans.last_mut() {
            span.1 = k + 1;
            span.3 += run.len();
            continue;
        }
        let with_prior = spans.is_empty()
            && !prior.is_empty()
            && !run.plus_before
            && prior_gap.add(GapCount::of_chars(&ch[..first])).joins();
        let prior_len = if with_prior { prior.len() } else { 0 };
        spans.push((k, k + 1, with_prior, prior_len + run.len()));
    }
    // Only a chain long enough to hold a card, or the last one (the tail), is built.
    let last = spans.len().saturating_sub(1);
    let mut chains: Vec<RunMeta> = Vec::new();
    for (i, &(from, to, with_prior, len)) in spans.iter().enumerate() {
        if len < card::MIN_LEN && i != last {
            continue;
        }
        let first_run = &runs[from];
        let digits_from = buf.values.len();
        let chars_from = buf.chars.len();
        if with_prior {
            for p in prior {
                buf.values.push(p.value);
                buf.group_start.push(p.group_start);
            }
        }
        let mut group_count = 0;
        for run in &runs[from..to] {
            buf.values.extend_from_slice(run.values);
            buf.group_start.extend_from_slice(run.group_start);
            buf.chars.extend_from_slice(run.chars);
            group_count += run.group_count;
        }
        chains.push(RunMeta {
            digits: (digits_from, buf.values.len()),
            chars: (chars_from, buf.chars.len()),
            prior_len: if with_prior { prior.len() } else { 0 },
            end_char: runs[to - 1].end_char,
            plus_before: first_run.plus_before && !with_prior,
            group_count,
            ipv4_alone: !with_prior && to - from == 1 && len >= card::MIN_LEN && first_run.is_ipv4(),
        });
    }
    chains
}

/// Finds cards in a chain (windows that start and end on group boundaries, shortest first), masks every
/// digit of this message's part of the run except the last four of each card, and records which prior
/// digits belong to a card (they are masked by amending the earlier message).
fn mask_cards(
    run: &Run<'_>,
    ch: &mut [Ch],
    prior_masked: &mut Vec<usize>,
    cards: &mut Vec<CardSpan>,
    f: &mut Findings,
) {
    let len = run.len();
    if len < card::MIN_LEN || run.ipv4_alone {
        return;
    }
    // (start, end, keep the last four): overlapping valid windows form one entry. Two valid readings of
    // the same digits (a 16-digit card and a CVV, a 19-digit card, a card glued to a phone number):
    // which four digits are "the last four" is unknown, so none stays visible.
    let mut found: Vec<(usize, usize, bool)> = Vec::new();
    for s in 0..=len - card::MIN_LEN {
        // A window must start on a group; not on the first group after '+'; and must reach this message
        // (windows inside the prior tail were examined with the previous message).
        if !run.group_start[s] || (s == 0 && run.plus_before) {
            continue;
        }
        for l in card::MIN_LEN..=card::MAX_LEN {
            let e = s + l;
            if e > len {
                break;
            }
            if e <= run.prior_len || !run.is_boundary(e) || !card::is_card(&run.values[s..e]) {
                continue;
            }
            match found.last_mut() {
                Some(last) if s < last.1 => {
                    last.1 = last.1.max(e);
                    last.2 = false;
                }
                _ => found.push((s, e, true)),
            }
        }
    }
    if found.is_empty() {
        return;
    }
    for &ci in run.chars {
        ch[ci].masked = true;
    }
    for &(_, e, keep4) in &found {
        if keep4 {
            for i in e.saturating_sub(4).max(run.prior_len)..e {
                ch[run.chars[i - run.prior_len]].masked = false;
            }
        }
    }
    for &(s, e, _) in &found {
        for i in s.max(run.prior_len)..e {
            ch[run.chars[i - run.prior_len]].in_card = true;
        }
        f.cards += 1;
        if s < run.prior_len {
            f.split_cards += 1;
            prior_masked.extend(s..run.prior_len.min(e));
        }
        let here_first = s.max(run.prior_len) - run.prior_len;
        let here_last = e - 1 - run.prior_len;
        cards.push(CardSpan {
            first_char: run.chars[here_first],
            last_char: run.chars[here_last],
        });
    }
}

/// US SSNs written with separators: `AAA-GG-SSSS` or `AAA GG SSSS` (the same separator twice), with the
/// never-issued areas 000, 666 and 900–999, group 00 and serial 0000 excluded. Masks all nine digits.
fn mask_ssn(run: &Run<'_>, ch: &mut [Ch]) -> u32 {
    if run.group_count < 3 {
        return 0;
    }
    let groups = run.groups();
    let mut found = 0;
    let sep_kind = |first: usize| run.sep_before[first].and_then(digits::separator_kind);
    for g in 0..groups.len().saturating_sub(2) {
        let (a, b, c) = (groups[g], groups[g + 1], groups[g + 2]);
        if (a.1, b.1, c.1) != (3, 2, 4) || a.0 < run.prior_len || (a.0 == 0 && run.plus_before) {
            continue;
        }
        let (s1, s2) = (run.sep_before[b.0], run.sep_before[c.0]);
        if s1.is_none() || s2 != s1 || !matches!(sep_kind(b.0), Some(SepKind::Dash | SepKind::Space)) {
            continue;
        }
        // The three groups must stand alone: no neighbouring group joined by the same separator.
        // (A masked neighbour counts as none: masked text must read as the original did.)
        let live = |(first, n): (usize, usize)| {
            (first..first + n).any(|i| i < run.prior_len || !ch[run.chars[i - run.prior_len]].masked)
        };
        let joined_before = g > 0 && run.sep_before[a.0] == s1 && live(groups[g - 1]);
        let joined_after = groups.get(g + 3).is_some_and(|&d| run.sep_before[d.0] == s1 && live(d));
        if joined_before || joined_after {
            continue;
        }
        let num = |(first, n): (usize, usize)| {
            run.values[first..first + n]
                .iter()
                .fold(0u32, |acc, &d| acc * 10 + u32::from(d))
        };
        let (area, group, serial) = (num(a), num(b), num(c));
        if area == 0 || area == 666 || area >= 900 || group == 0 || serial == 0 {
            continue;
        }
        let here = |i: usize| run.chars[i - run.prior_len];
        if (a.0..c.0 + 4).any(|i| ch[here(i)].masked || ch[here(i)].in_card) {
            continue;
        }
        for i in a.0..c.0 + 4 {
            ch[here(i)].masked = true;
        }
        found += 1;
    }
    found
}

/// The keyword expressions worth running on a message (`None`: nothing they could qualify is there).
struct Keywords<'a> {
    cvv: Option<&'a Regex>,
    expiry: Option<&'a Regex>,
}

/// What makes a CVV or an expiry date "sensitive here": a card close by, a card in the sender's previous
/// message, or a keyword just before it.
struct Nearness {
    cards: Vec<(usize, usize)>,
    card_recent: bool,
    /// Character index just after each CVV keyword / expiry keyword.
    cvv_kw: Vec<usize>,
    exp_kw: Vec<usize>,
    /// Prefix count of digits (and mask characters), to check that no other number stands between a
    /// keyword and its value.
    digits_before: Vec<u32>,
}

impl Nearness {
    fn new(
        keywords: Keywords<'_>,
        text: &str,
        ch: &[Ch],
        cards: &[CardSpan],
        card_recent: bool,
        char_at: &dyn Fn(usize) -> usize,
    ) -> Self {
        let mut digits_before = Vec::with_capacity(ch.len() + 1);
        let mut count = 0u32;
        for c in ch {
            digits_before.push(count);
            // The mask character counts as a digit, so that masked text reads like the original.
            if c.digitish() {
                count += 1;
            }
        }
        digits_before.push(count);
        Self {
            cards: cards.iter().map(|c| (c.first_char, c.last_char)).collect(),
            card_recent,
            cvv_kw: keywords
                .cvv
                .map(|re| keyword_ends(re, text, char_at))
                .unwrap_or_default(),
            exp_kw: keywords
                .expiry
                .map(|re| keyword_ends(re, text, char_at))
                .unwrap_or_default(),
            digits_before,
        }
    }

    /// Cards are sorted and do not overlap: only the card starting last at or before `last` and the one
    /// after it can be the nearest.
    fn near_card(&self, first: usize, last: usize) -> bool {
        if self.card_recent && first <= NEAR_CHARS {
            return true;
        }
        let idx = self.cards.partition_point(|&(cf, _)| cf <= last);
        let before = idx
            .checked_sub(1)
            .and_then(|i| self.cards.get(i))
            .is_some_and(|&(_, cl)| cl >= first || first - cl <= NEAR_CHARS);
        let after = self.cards.get(idx).is_some_and(|&(cf, _)| cf - last <= NEAR_CHARS);
        before || after
    }

    /// Keyword ends are sorted: the closest keyword before `first` decides (a farther one is farther and
    /// has at least the same digits in between).
    fn after_keyword(&self, keywords: &[usize], first: usize) -> bool {
        let idx = keywords.partition_point(|&k| k <= first);
        idx.checked_sub(1)
            .map(|i| keywords[i])
            .is_some_and(|k| first - k <= KEYWORD_GAP && self.digits_before[k] == self.digits_before[first])
    }

    fn cvv(&self, first: usize, last: usize) -> bool {
        self.near_card(first, last) || self.after_keyword(&self.cvv_kw, first)
    }

    fn expiry(&self, first: usize, last: usize) -> bool {
        self.near_card(first, last) || self.after_keyword(&self.exp_kw, first)
    }
}

/// A group of this message's digits: character indices `first..=last`, digit count, value (when short).
#[derive(Clone, Copy)]
struct Group {
    first: usize,
    last: usize,
    len: usize,
    value: u32,
    /// The group is the first / last of its run (this message's part).
    run_first: bool,
    run_last: bool,
    /// The groups next to it in its run are masked (or there are none): it stands alone.
    lone: bool,
    plus_before: bool,
}

fn message_groups(runs: &[Run<'_>], ch: &[Ch]) -> Vec<Group> {
    let mut out = Vec::new();
    let mut groups: Vec<(usize, usize)> = Vec::new();
    let mut masked: Vec<bool> = Vec::new();
    for run in runs {
        groups.clear();
        run.groups_into(&mut groups);
        groups.retain(|&(first, _)| first >= run.prior_len);
        let masked_group = |&(first, n): &(usize, usize)| {
            (first..first + n).all(|i| {
                let c = ch[run.chars[i - run.prior_len]];
                c.masked || c.in_card
            })
        };
        let count = groups.len();
        masked.clear();
        masked.extend(groups.iter().map(masked_group));
        for (gi, &(first, n)) in groups.iter().enumerate() {
            // Judged on the neighbours only: masked digits read like no digits, so masked text is
            // judged as the original was (idempotence).
            let prev_clear = if gi == 0 { run.prior_len == 0 } else { masked[gi - 1] };
            let lone = prev_clear && (gi + 1 == count || masked[gi + 1]);
            let value = run.values[first..first + n]
                .iter()
                .take(9)
                .fold(0u32, |acc, &d| acc * 10 + u32::from(d));
            out.push(Group {
                first: run.chars[first - run.prior_len],
                last: run.chars[first + n - 1 - run.prior_len],
                len: n,
                value,
                run_first: gi == 0 && run.prior_len == 0,
                run_last: gi + 1 == count,
                lone,
                plus_before: gi == 0 && run.plus_before,
            });
        }
    }
    out
}

fn is_slash(c: char) -> bool {
    matches!(c, '/' | '\u{FF0F}')
}

/// Expiry dates `MM/YY` and `MM/YYYY` (one optional space around the slash), not part of a longer date.
fn mask_expiry(runs: &[Run<'_>], ch: &mut [Ch], near: &Nearness) -> u32 {
    let groups = message_groups(runs, ch);
    let n = ch.len();
    let mut found = 0;
    for (gi, a) in groups.iter().enumerate() {
        if !(1..=2).contains(&a.len) || !(1..=12).contains(&a.value) || !a.run_last {
            continue;
        }
        if a.first > 0 && is_slash(ch[a.first - 1].c) {
            continue;
        }
        // a, optional space, slash, optional space, b
        let mut j = a.last + 1;
        if j < n && ch[j].c == ' ' {
            j += 1;
        }
        if !(j < n && is_slash(ch[j].c)) {
            continue;
        }
        j += 1;
        if j < n && ch[j].c == ' ' {
            j += 1;
        }
        let Some(b) = groups.get(gi + 1) else { continue };
        if b.first != j || !b.run_first {
            continue;
        }
        let year_ok = match b.len {
            2 => true,
            4 => (2000..=2099).contains(&b.value),
            _ => false,
        };
        // 03/12/2027 is a date, not an expiry.
        let more_date = b.last + 2 < n && is_slash(ch[b.last + 1].c) && ch[b.last + 2].digitish();
        let in_card = (a.first..=a.last).chain(b.first..=b.last).any(|k| ch[k].in_card);
        if !year_ok || more_date || in_card || !near.expiry(a.first, b.last) {
            continue;
        }
        for k in (a.first..=a.last).chain(b.first..=b.last) {
            if ch[k].digit != NOT_DIGIT {
                ch[k].masked = true;
            }
        }
        found += 1;
    }
    found
}

/// CVVs: a lone group of 3–4 digits (the neighbouring groups of its run, if any, already masked) that is not part of a
/// date, a fraction or an amount, next to a card or after a CVV keyword.
fn mask_cvv(runs: &[Run<'_>], ch: &mut [Ch], near: &Nearness) -> u32 {
    let groups = message_groups(runs, ch);
    let mut found = 0;
    for g in &groups {
        if !(3..=4).contains(&g.len) || !g.lone || g.plus_before {
            continue;
        }
        if (g.first..=g.last).any(|k| ch[k].masked || ch[k].in_card) {
            continue;
        }
        let before = |k: usize| if g.first >= k { Some(ch[g.first - k]) } else { None };
        let after = |k: usize| ch.get(g.last + k).copied();
        let slash_next = before(1).is_some_and(|c| is_slash(c.c)) || after(1).is_some_and(|c| is_slash(c.c));
        let amount = (before(1).is_some_and(|c| c.c == ',') && before(2).is_some_and(|c| c.digitish()))
            || (after(1).is_some_and(|c| c.c == ',') && after(2).is_some_and(|c| c.digitish()));
        let glued = before(1).is_some_and(|c| c.c.is_alphabetic()) || after(1).is_some_and(|c| c.c.is_alphabetic());
        if slash_next || amount || glued || !near.cvv(g.first, g.last) {
            continue;
        }
        for c in &mut ch[g.first..=g.last] {
            c.masked = true;
        }
        found += 1;
    }
    found
}

/// The digits of the chain the message ends with (at most a few words may follow, [`GapCount::joins`]),
/// oldest first, at most [`MAX_TAIL_DIGITS`], masked or not: a longer card may begin with a shorter valid
/// one. Also what follows them. A chain that starts with `+` is a phone number and leaves no tail.
fn compute_tail(chains: &[Run<'_>], ch: &[Ch], out_byte: &[usize]) -> (Vec<TailOut>, GapCount) {
    let Some(run) = chains.last().filter(|c| !c.plus_before) else {
        return (Vec::new(), GapCount::default());
    };
    let trail = GapCount::of_chars(&ch[run.end_char..]);
    if !trail.joins() {
        return (Vec::new(), GapCount::default());
    }
    let from = run.len().saturating_sub(MAX_TAIL_DIGITS);
    let tail = (from..run.len())
        .map(|i| {
            if i < run.prior_len {
                TailOut::Prior(i)
            } else {
                let ci = run.chars[i - run.prior_len];
                TailOut::Here {
                    value: run.values[i],
                    group_start: run.group_start[i],
                    out_byte: out_byte[ci],
                }
            }
        })
        .collect();
    (tail, trail)
}

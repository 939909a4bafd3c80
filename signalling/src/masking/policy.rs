//! The masking policy (operator configuration) and the compiled, shareable [`Masker`].

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

use regex::{Regex, RegexBuilder};
use serde::{Deserialize, Serialize};

use super::MaskedText;
use super::detect::{self, Builtin, Findings, GapCount, PriorDigit, Switches};

/// At most this many operator patterns per masker (global plus group patterns together).
pub const MAX_EXTRA_PATTERNS: usize = 64;
/// At most this many bytes of regex source per operator pattern.
pub const MAX_PATTERN_LEN: usize = 1024;
/// At most this many bytes per pattern name.
pub const MAX_NAME_LEN: usize = 64;
/// At most this many bytes per replacement text.
pub const MAX_REPLACEMENT_LEN: usize = 256;
/// Compiled-program size limit per operator pattern (`RegexBuilder::size_limit`).
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;
/// Lazy-DFA cache limit per operator pattern (`RegexBuilder::dfa_size_limit`).
pub const REGEX_DFA_SIZE_LIMIT: usize = 2 << 20;

/// What to mask. Deserialised from the operator's configuration (TOML or JSON); every switch defaults to
/// on and `extra` to no pattern, so an empty table is the safe default.
///
/// ```toml
/// [masking]
/// cards = true
/// card_cvv_expiry = true
/// iban = true
/// us_ssn = true
/// extra = [{ name = "order", regex = "\\bORD-[0-9]{6}\\b", replacement = "[order]" }]
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MaskPolicy {
    /// Payment card numbers (Luhn + brand prefix and length); keeps the last four digits.
    pub cards: bool,
    /// CVV / security codes and expiry dates next to a card (or after a keyword such as "cvv" or "exp").
    pub card_cvv_expiry: bool,
    /// IBANs (country length + mod-97); keeps the last four characters.
    pub iban: bool,
    /// US social security numbers written with separators (`123-45-6789`, `123 45 6789`).
    pub us_ssn: bool,
    /// Operator-defined patterns, applied before the built-in rules.
    pub extra: Vec<ExtraPattern>,
}

impl Default for MaskPolicy {
    fn default() -> Self {
        Self {
            cards: true,
            card_cvv_expiry: true,
            iban: true,
            us_ssn: true,
            extra: Vec::new(),
        }
    }
}

impl MaskPolicy {
    /// Compiles the policy into a [`Masker`]. Same as [`Masker::new`].
    pub fn compile(&self) -> Result<Masker, PolicyError> {
        Masker::new(self)
    }
}

/// An operator-defined pattern: every non-empty match of `regex` is replaced by `replacement` (literal
/// text; `$` has no special meaning), or by `[name]` when no replacement is given.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtraPattern {
    /// A short label (1–64 bytes), shown in errors and in the default replacement.
    pub name: String,
    /// The pattern, in the `regex` crate's syntax (linear-time matching, no look-around or back-references).
    pub regex: String,
    /// The literal replacement text; defaults to `[name]`.
    #[serde(default)]
    pub replacement: Option<String>,
}

/// Why a masking policy was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// More operator patterns than [`MAX_EXTRA_PATTERNS`].
    #[error("too many extra masking patterns: {count} (at most {max})")]
    TooManyPatterns {
        /// How many patterns were given (global and group together).
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A pattern name is empty or longer than [`MAX_NAME_LEN`].
    #[error("masking pattern name must be 1 to {max} bytes long (got {len} bytes)")]
    BadName {
        /// The name's length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A pattern's source is longer than [`MAX_PATTERN_LEN`].
    #[error("masking pattern `{name}` is {len} bytes long (at most {max})")]
    PatternTooLong {
        /// The pattern's name.
        name: String,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A replacement is longer than [`MAX_REPLACEMENT_LEN`].
    #[error("replacement of masking pattern `{name}` is {len} bytes long (at most {max})")]
    ReplacementTooLong {
        /// The pattern's name.
        name: String,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A pattern compiles to a program larger than [`REGEX_SIZE_LIMIT`].
    #[error("masking pattern `{name}` is too big once compiled (limit {limit} bytes); simplify it")]
    TooBig {
        /// The pattern's name.
        name: String,
        /// The compiled-size limit in bytes.
        limit: usize,
    },
    /// A pattern is not a valid regular expression.
    #[error("masking pattern `{name}` is not a valid regular expression: {message}")]
    InvalidRegex {
        /// The pattern's name.
        name: String,
        /// The regex compiler's explanation.
        message: String,
    },
}

/// A compiled operator pattern.
#[derive(Debug)]
struct Extra {
    regex: Regex,
    replacement: String,
}

/// A compiled masking policy: cheap to clone (reference-counted), `Send + Sync`, shared by every
/// conversation of a server (or of an agent group, see [`Masker::with_extra`]).
///
/// [`Masker::mask`] masks one text without any conversation state (file names, data-channel text, a
/// single message). Chat uses a [`ConversationMasker`](super::ConversationMasker) built on it, which also
/// catches numbers split across messages.
#[derive(Clone, Debug)]
pub struct Masker {
    builtin: Arc<Builtin>,
    switches: Switches,
    extras: Arc<[Extra]>,
    /// The policies' patterns as given, kept so that group patterns can be added.
    sources: Arc<[ExtraPattern]>,
}

fn builtin() -> Arc<Builtin> {
    static BUILTIN: OnceLock<Arc<Builtin>> = OnceLock::new();
    BUILTIN
        .get_or_init(|| {
            // The built-in expressions are constants covered by unit tests; they always compile.
            Arc::new(Builtin::new().expect("built-in masking expressions compile"))
        })
        .clone()
}

fn compile_extra(p: &ExtraPattern) -> Result<Extra, PolicyError> {
    if p.name.is_empty() || p.name.len() > MAX_NAME_LEN {
        return Err(PolicyError::BadName {
            len: p.name.len(),
            max: MAX_NAME_LEN,
        });
    }
    if p.regex.len() > MAX_PATTERN_LEN {
        return Err(PolicyError::PatternTooLong {
            name: p.name.clone(),
            len: p.regex.len(),
            max: MAX_PATTERN_LEN,
        });
    }
    let replacement = p.replacement.clone().unwrap_or_else(|| format!("[{}]", p.name));
    if replacement.len() > MAX_REPLACEMENT_LEN {
        return Err(PolicyError::ReplacementTooLong {
            name: p.name.clone(),
            len: replacement.len(),
            max: MAX_REPLACEMENT_LEN,
        });
    }
    let regex = RegexBuilder::new(&p.regex)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_DFA_SIZE_LIMIT)
        .nest_limit(64)
        .build()
        .map_err(|e| match e {
            regex::Error::CompiledTooBig(limit) => PolicyError::TooBig {
                name: p.name.clone(),
                limit,
            },
            other => PolicyError::InvalidRegex {
                name: p.name.clone(),
                message: other.to_string(),
            },
        })?;
    Ok(Extra { regex, replacement })
}

impl Masker {
    /// Compiles `policy`. Fails on a bad or too large operator pattern.
    pub fn new(policy: &MaskPolicy) -> Result<Self, PolicyError> {
        let switches = Switches {
            cards: policy.cards,
            cvv_expiry: policy.card_cvv_expiry,
            iban: policy.iban,
            us_ssn: policy.us_ssn,
        };
        let empty = Self {
            builtin: builtin(),
            switches,
            extras: Arc::from(Vec::new()),
            sources: Arc::from(Vec::new()),
        };
        empty.with_extra(&policy.extra)
    }

    /// A masker with the same rules plus `patterns` (e.g. the patterns of one agent group on top of the
    /// global ones). The limits count all patterns together.
    pub fn with_extra(&self, patterns: &[ExtraPattern]) -> Result<Self, PolicyError> {
        if patterns.is_empty() {
            return Ok(self.clone());
        }
        let count = self.sources.len() + patterns.len();
        if count > MAX_EXTRA_PATTERNS {
            return Err(PolicyError::TooManyPatterns {
                count,
                max: MAX_EXTRA_PATTERNS,
            });
        }
        let mut sources: Vec<ExtraPattern> = self.sources.to_vec();
        sources.extend_from_slice(patterns);
        let extras = sources.iter().map(compile_extra).collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            builtin: self.builtin.clone(),
            switches: self.switches,
            extras: Arc::from(extras),
            sources: Arc::from(sources),
        })
    }

    /// The operator patterns in force (global then group).
    pub fn extra_patterns(&self) -> &[ExtraPattern] {
        &self.sources
    }

    /// Masks one text on its own (no conversation state): file names, data-channel text, a single line.
    pub fn mask(&self, text: &str) -> MaskedText {
        self.analyse(text, &[], GapCount::default(), false).text
    }

    /// Masks `text` and reports what was found (counts only).
    pub fn mask_with_findings(&self, text: &str) -> (MaskedText, Findings) {
        let a = self.analyse(text, &[], GapCount::default(), false);
        (a.text, a.findings)
    }

    /// Applies the operator patterns, then the built-in rules.
    pub(crate) fn analyse(&self, text: &str, prior: &[PriorDigit], prior_gap: GapCount, card_recent: bool) -> Analysed {
        let mut extra_hits = 0u32;
        let mut staged: Cow<'_, str> = Cow::Borrowed(text);
        for extra in self.extras.iter() {
            if let Some(replaced) = replace_non_empty(&extra.regex, &staged, &extra.replacement, &mut extra_hits) {
                staged = Cow::Owned(replaced);
            }
        }
        let mut a = detect::analyse(&self.builtin, self.switches, &staged, prior, prior_gap, card_recent);
        a.findings.extra = extra_hits;
        if !a.findings.is_empty() {
            tracing::trace!(findings = ?a.findings, "masked a message");
        }
        Analysed {
            text: MaskedText::new(a.text),
            prior_masked: a.prior_masked,
            tail: a.tail,
            trail: a.trail,
            passthrough: a.passthrough,
            findings: a.findings,
        }
    }
}

impl Default for Masker {
    /// The default policy: every built-in rule on, no operator pattern.
    fn default() -> Self {
        Self {
            builtin: builtin(),
            switches: Switches {
                cards: true,
                cvv_expiry: true,
                iban: true,
                us_ssn: true,
            },
            extras: Arc::from(Vec::new()),
            sources: Arc::from(Vec::new()),
        }
    }
}

/// Replaces every non-empty match of `re` in `text` by the literal `with`; `None` when nothing matched.
fn replace_non_empty(re: &Regex, text: &str, with: &str, hits: &mut u32) -> Option<String> {
    let mut out: Option<String> = None;
    let mut last = 0;
    for m in re.find_iter(text) {
        if m.is_empty() {
            continue;
        }
        let buf = out.get_or_insert_with(|| String::with_capacity(text.len()));
        buf.push_str(&text[last..m.start()]);
        buf.push_str(with);
        last = m.end();
        *hits += 1;
    }
    let mut buf = out?;
    buf.push_str(&text[last..]);
    Some(buf)
}

/// The engine's result with the masked text already typed.
pub(crate) struct Analysed {
    pub text: MaskedText,
    pub prior_masked: Vec<usize>,
    pub tail: Vec<detect::TailOut>,
    pub trail: GapCount,
    pub passthrough: Option<GapCount>,
    pub findings: Findings,
}

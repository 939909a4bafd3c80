//! Unicode digits, the separators allowed between digit groups, and the characters a number may hide
//! behind (invisible format characters, combining marks).
//!
//! `char::to_digit` knows only ASCII, and `char::is_numeric` also accepts fractions, Roman numerals and
//! circled numbers. A decimal digit (general category Nd) always belongs to a contiguous block of ten code
//! points `0..=9`, so a sorted table of the blocks' zeros plus `is_numeric` (a guard against a wrong table
//! entry) gives every decimal digit its value. Other characters whose compatibility form (NFKC) is one
//! decimal digit — superscript `²`, subscript `₂`, circled `②`, parenthesised `⑵`, `⒉` — count as that
//! digit too: a reader sees the digit, so the masker must.

/// The code points of the digit zero of every block of Unicode decimal digits (general category Nd), sorted.
/// Generated from the Unicode character database (14.0) and completed by hand with the blocks of 15.0 and
/// 16.0; a unit test checks that every entry starts ten numeric characters.
pub(crate) const ND_ZEROS: [u32; 76] = [
    0x30, 0x660, 0x6F0, 0x7C0, 0x966, 0x9E6, 0xA66, 0xAE6, 0xB66, 0xBE6, 0xC66, 0xCE6, 0xD66, 0xDE6, 0xE50, 0xED0,
    0xF20, 0x1040, 0x1090, 0x17E0, 0x1810, 0x1946, 0x19D0, 0x1A80, 0x1A90, 0x1B50, 0x1BB0, 0x1C40, 0x1C50, 0xA620,
    0xA8D0, 0xA900, 0xA9D0, 0xA9F0, 0xAA50, 0xABF0, 0xFF10, 0x104A0, 0x10D30, 0x10D40, 0x11066, 0x110F0, 0x11136,
    0x111D0, 0x112F0, 0x11450, 0x114D0, 0x11650, 0x116C0, 0x116D0, 0x116DA, 0x11730, 0x118E0, 0x11950, 0x11BF0,
    0x11C50, 0x11D50, 0x11DA0, 0x11F50, 0x16130, 0x16A60, 0x16AC0, 0x16B50, 0x16D70, 0x1CCF0, 0x1D7CE, 0x1D7D8,
    0x1D7E2, 0x1D7EC, 0x1D7F6, 0x1E140, 0x1E2F0, 0x1E4F0, 0x1E5F1, 0x1E950, 0x1FBF0,
];

/// Marker for "not a digit" in the per-character digit value.
pub(crate) const NOT_DIGIT: u8 = 0xFF;

/// The value `0..=9` of a Unicode decimal digit (ASCII, full-width `４`, Arabic-Indic `٤`, Devanagari `४`,
/// …), or `None`.
#[inline]
pub(crate) fn digit_value(c: char) -> Option<u8> {
    let cp = c as u32;
    if cp < 0x80 {
        return if c.is_ascii_digit() {
            Some((cp - 0x30) as u8)
        } else {
            None
        };
    }
    if cp < ND_ZEROS[1] {
        // Below U+0660 only the superscripts ² ³ ¹ are digit forms.
        return match c {
            '\u{B2}' => Some(2),
            '\u{B3}' => Some(3),
            '\u{B9}' => Some(1),
            _ => None,
        };
    }
    let idx = ND_ZEROS.partition_point(|&z| z <= cp);
    // idx >= 2 here because cp >= ND_ZEROS[1].
    let zero = ND_ZEROS[idx - 1];
    let d = cp - zero;
    if d < 10 && c.is_numeric() {
        Some(d as u8)
    } else {
        compat_digit(c)
    }
}

/// The digit a compatibility character stands for: its NFKC form holds exactly one decimal digit and no
/// letter (`²` → 2, `₇` → 7, `⑦` → 7, `⑺` → "(7)", `⒎` → "7.", `🄈` → "7,"). Numbers of two digits in one
/// character (`⑫`, `½`) are not digits.
fn compat_digit(c: char) -> Option<u8> {
    // Only numeric characters can decompose to a digit (category No; Nd was handled by the table).
    if !c.is_numeric() {
        return None;
    }
    let mut value: Option<u8> = None;
    let mut digits = 0u8;
    let mut letters = false;
    unicode_normalization::char::decompose_compatible(c, |d| {
        if d.is_ascii_digit() {
            digits += 1;
            value = Some(d as u8 - b'0');
        } else if d.is_alphanumeric() {
            letters = true;
        }
    });
    if digits == 1 && !letters { value } else { None }
}

/// True for a character a reader does not see, or sees only as a mark on its neighbour: format
/// characters (zero-width space and joiners, word joiner, soft hyphen, byte-order mark, direction marks,
/// invisible operators, tags), variation selectors, fillers and combining marks (the Unicode
/// default-ignorable code points plus general categories Mn and Me), and control characters other than
/// whitespace. They never separate digit groups.
#[inline]
pub(crate) fn is_ignorable(c: char) -> bool {
    if c.is_control() {
        return !c.is_whitespace();
    }
    if c.is_ascii() {
        return false;
    }
    is_invisible(c) || unicode_normalization::char::is_combining_mark(c)
}

/// True for a format or default-ignorable character that shows nothing (or only steers its neighbours):
/// zero-width space and joiners, word joiner, soft hyphen, byte-order mark, bidirectional marks,
/// embeddings, overrides and isolates (U+202E), invisible operators, prepended number marks, variation
/// selectors, fillers, tags. Not combining marks, which show on their base.
#[inline]
pub fn is_invisible(c: char) -> bool {
    !c.is_ascii()
        && matches!(
            c,
            '\u{00AD}'
                | '\u{0600}'..='\u{0605}'
                | '\u{06DD}'
                | '\u{070F}'
                | '\u{0890}'..='\u{0891}'
                | '\u{08E2}'
                | '\u{110BD}'
                | '\u{110CD}'
                | '\u{13430}'..='\u{1343F}'
                | '\u{034F}'
                | '\u{061C}'
                | '\u{115F}'
                | '\u{1160}'
                | '\u{17B4}'
                | '\u{17B5}'
                | '\u{180B}'..='\u{180F}'
                | '\u{200B}'..='\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2060}'..='\u{206F}'
                | '\u{3164}'
                | '\u{FE00}'..='\u{FE0F}'
                | '\u{FEFF}'
                | '\u{FFA0}'
                | '\u{FFF0}'..='\u{FFFB}'
                | '\u{1BCA0}'..='\u{1BCA3}'
                | '\u{1D173}'..='\u{1D17A}'
                | '\u{E0000}'..='\u{E0FFF}'
        )
}

/// How a character that is not a digit counts in the gap between two digit groups.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GapClass {
    /// Invisible ([`is_ignorable`]): does not count.
    Ignorable,
    /// Any whitespace, line breaks included.
    Space,
    /// A letter (any script): a digit gap with a letter is no separator.
    Letter,
    /// Punctuation, symbols and everything else visible.
    Symbol,
}

/// The [`GapClass`] of a character that is not a digit.
#[inline]
pub(crate) fn gap_class(c: char) -> GapClass {
    if c.is_ascii_graphic() {
        return if c.is_ascii_alphabetic() {
            GapClass::Letter
        } else {
            GapClass::Symbol
        };
    }
    if is_ignorable(c) {
        GapClass::Ignorable
    } else if c.is_whitespace() {
        GapClass::Space
    } else if c.is_alphabetic() {
        GapClass::Letter
    } else {
        GapClass::Symbol
    }
}

/// `digit_value` as the compact per-character form used by the scanner.
#[inline]
pub(crate) fn digit_or_marker(c: char) -> u8 {
    digit_value(c).unwrap_or(NOT_DIGIT)
}

/// Bytes per block of the fast scan in [`has_digit`].
const SCAN_BLOCK: usize = 32;

/// True when `text` holds at least one digit (any script or digit form). Ordinary chat text is ASCII
/// without digits: it is checked a block of bytes at a time (the compiler vectorises the block test), and
/// characters are decoded only from the first non-ASCII byte on.
pub(crate) fn has_digit(text: &str) -> bool {
    let bytes = text.as_bytes();
    let interesting = |b: u8| b.wrapping_sub(b'0') < 10 || b >= 0x80;
    let mut start = 0;
    let mut blocks = bytes.chunks_exact(SCAN_BLOCK);
    let mut hit = None;
    for block in &mut blocks {
        if block.iter().fold(false, |acc, &b| acc | interesting(b)) {
            hit = block.iter().position(|&b| interesting(b)).map(|p| start + p);
            break;
        }
        start += SCAN_BLOCK;
    }
    let first = match hit {
        Some(i) => i,
        None => match blocks.remainder().iter().position(|&b| interesting(b)) {
            Some(p) => start + p,
            None => return false,
        },
    };
    if bytes[first].is_ascii_digit() {
        return true;
    }
    // `first` is the first byte of a multi-byte character (every byte before it is ASCII).
    text.get(first..)
        .is_some_and(|rest| rest.chars().any(|c| digit_value(c).is_some()))
}

/// The kind of a separator allowed between two digit groups (a single one, between digits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SepKind {
    /// A space (ASCII, no-break, thin, ideographic, …).
    Space,
    /// A hyphen or dash (ASCII `-`, Unicode hyphens and dashes, minus, full-width hyphen-minus).
    Dash,
    /// A full stop (ASCII or full-width).
    Dot,
}

/// The separator kind of `c`, or `None` when `c` does not separate digit groups.
#[inline]
pub(crate) fn separator_kind(c: char) -> Option<SepKind> {
    match c {
        ' ' | '\u{00A0}' | '\u{2002}'..='\u{200A}' | '\u{202F}' | '\u{3000}' => Some(SepKind::Space),
        '-' | '\u{2010}'..='\u{2015}' | '\u{2212}' | '\u{FE58}' | '\u{FE63}' | '\u{FF0D}' => Some(SepKind::Dash),
        '.' | '\u{FF0E}' => Some(SepKind::Dot),
        _ => None,
    }
}

/// True for a separator character.
#[inline]
pub(crate) fn is_separator(c: char) -> bool {
    separator_kind(c).is_some()
}

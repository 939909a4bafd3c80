//! Unicode decimal digits and the separators allowed between digit groups.
//!
//! `char::to_digit` knows only ASCII, and `char::is_numeric` also accepts fractions, Roman numerals and
//! circled numbers. A decimal digit (general category Nd) always belongs to a contiguous block of ten code
//! points `0..=9`, so a sorted table of the blocks' zeros plus `is_numeric` (a guard against a wrong table
//! entry) gives every decimal digit its value.

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
        return None;
    }
    let idx = ND_ZEROS.partition_point(|&z| z <= cp);
    // idx >= 2 here because cp >= ND_ZEROS[1].
    let zero = ND_ZEROS[idx - 1];
    let d = cp - zero;
    if d < 10 && c.is_numeric() { Some(d as u8) } else { None }
}

/// `digit_value` as the compact per-character form used by the scanner.
#[inline]
pub(crate) fn digit_or_marker(c: char) -> u8 {
    digit_value(c).unwrap_or(NOT_DIGIT)
}

/// True when `text` holds at least one decimal digit (any script). Fast on ASCII.
pub(crate) fn has_digit(text: &str) -> bool {
    if text.is_ascii() {
        return text.bytes().any(|b| b.is_ascii_digit());
    }
    text.chars().any(|c| digit_value(c).is_some())
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

//! The masking detector (`signalling/src/masking/`): `Masker::mask` on one message and
//! `ConversationMasker::mask` over several messages of one sender, with the default policy.
//!
//! The first byte picks the mode: even, the rest is one message as UTF-8 text; odd, the rest is spelled in
//! the alphabet of card numbers (each byte one of `0`–`9`, space, `-`, a line break) and split into up to
//! eight messages at each byte 0xFF, masked by one `ConversationMasker`.
//!
//! Properties, checked by code written from docs/masking.md and independent of the masker:
//! - no unmasked card: no line of the output made only of ASCII digits, spaces and hyphens holds a window
//!   of its digit groups (starting and ending on a group boundary, the groups joined by gaps of at most
//!   [`MAX_GAP_SYMBOL_RUNS`] runs) that is a Luhn-valid number of 13 to 19 digits with the prefix and
//!   length of Visa, Mastercard, American Express or Discover;
//! - masking changes characters only into `•`, one for one (the text keeps its length in characters);
//! - masking masked text never reveals anything: a second pass changes characters only into `•` (it may
//!   mask more: a masked group between two digit groups reads as a separator there, see docs/RELIABILITY.md).
#![no_main]

use libfuzzer_sys::fuzz_target;
use relaydesk_signalling::masking::{
    ConversationMasker, MASK_CHAR, MAX_GAP_SYMBOL_RUNS, MaskPolicy, Masker, SenderKey,
};
use std::sync::OnceLock;

fn masker() -> &'static Masker {
    static MASKER: OnceLock<Masker> = OnceLock::new();
    MASKER.get_or_init(|| Masker::new(&MaskPolicy::default()).expect("default policy compiles"))
}

/// Luhn check over digit values.
fn luhn(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = u32::from(d);
            if !i.is_multiple_of(2) {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// A subset of the brand table of docs/masking.md: Visa, Mastercard, Amex, Discover 6011.
fn brand(digits: &[u8]) -> bool {
    let n = digits.len();
    let prefix = |k: usize| digits.iter().take(k).fold(0u32, |acc, &d| acc * 10 + u32::from(d));
    (digits[0] == 4 && matches!(n, 13 | 16 | 19))
        || ((51..=55).contains(&prefix(2)) && n == 16)
        || ((2221..=2720).contains(&prefix(4)) && n == 16)
        || (matches!(prefix(2), 34 | 37) && n == 15)
        || (prefix(4) == 6011 && (16..=19).contains(&n))
}

/// Visible runs in a gap of spaces and hyphens: all whitespace counts as one character, a run is one
/// character repeated.
fn gap_runs(gap: &str) -> usize {
    let mut runs = 0;
    let mut last = None;
    for c in gap.chars() {
        let class = if c.is_whitespace() { ' ' } else { c };
        if last != Some(class) {
            runs += 1;
            last = Some(class);
        }
    }
    runs
}

/// An unmasked card in `line` (digits, spaces and hyphens only), if any.
fn unmasked_card(line: &str) -> Option<String> {
    // Groups of digits with the gap before each.
    let mut groups: Vec<(String, Vec<u8>)> = Vec::new();
    let mut gap = String::new();
    let mut digits = Vec::new();
    for c in line.chars() {
        if let Some(d) = c.to_digit(10) {
            digits.push(d as u8);
        } else {
            if !digits.is_empty() {
                groups.push((std::mem::take(&mut gap), std::mem::take(&mut digits)));
            }
            gap.push(c);
        }
    }
    if !digits.is_empty() {
        groups.push((gap, digits));
    }
    for start in 0..groups.len() {
        let mut number: Vec<u8> = Vec::new();
        for (i, (gap, g)) in groups.iter().enumerate().skip(start) {
            if i > start && gap_runs(gap) > MAX_GAP_SYMBOL_RUNS as usize {
                break;
            }
            number.extend(g);
            if number.len() > 19 {
                break;
            }
            if number.len() >= 13 && luhn(&number) && brand(&number) {
                return Some(number.iter().map(|d| char::from(b'0' + d)).collect());
            }
        }
    }
    None
}

fn check_masked(input: &str, output: &str) {
    let (a, b): (Vec<char>, Vec<char>) = (input.chars().collect(), output.chars().collect());
    assert_eq!(a.len(), b.len(), "masking changed the length in characters");
    for (x, y) in a.iter().zip(&b) {
        assert!(x == y || *y == MASK_CHAR, "masking turned {x:?} into {y:?}");
    }
    for line in output.split('\n') {
        if line.chars().all(|c| c.is_ascii_digit() || c == ' ' || c == '-')
            && let Some(card) = unmasked_card(line)
        {
            panic!("unmasked card {card} in {line:?}");
        }
    }
}

fn one_message(text: &str) {
    let out = masker().mask(text);
    check_masked(text, out.as_str());
    let again = masker().mask(out.as_str());
    let (a, b): (Vec<char>, Vec<char>) = (out.as_str().chars().collect(), again.as_str().chars().collect());
    assert_eq!(a.len(), b.len(), "masking masked text changed its length");
    for (x, y) in a.iter().zip(&b) {
        assert!(x == y || *y == MASK_CHAR, "masking masked text turned {x:?} into {y:?}");
    }
}

fn conversation(spelled: &[u8]) {
    const ALPHABET: &[u8; 13] = b"0123456789 -\n";
    let mut conv = ConversationMasker::new(masker().clone());
    let mut sent: Vec<(String, String)> = Vec::new();
    for part in spelled.split(|&b| b == 0xFF).take(8) {
        let text: String = part
            .iter()
            .map(|&b| char::from(ALPHABET[usize::from(b) % ALPHABET.len()]))
            .collect();
        let outcome = conv.mask(SenderKey(0), &text);
        for amendment in outcome.amendments() {
            let i = sent
                .len()
                .checked_sub(amendment.back)
                .expect("amendment of a message that was never sent");
            sent[i].1 = amendment.text.as_str().to_owned();
        }
        sent.push((text, outcome.text.as_str().to_owned()));
    }
    for (input, output) in &sent {
        check_masked(input, output);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode.is_multiple_of(2) {
        if let Some(text) = relaydesk_fuzz::text(rest) {
            one_message(text);
        }
    } else {
        conversation(rest);
    }
});

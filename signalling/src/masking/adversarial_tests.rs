//! The masker against a visitor (or a rogue agent coaching one) who writes a card number "differently" to
//! get it past: invisible characters, odd separators, other digit forms, a number spread over messages
//! and file names. And the other side: ordinary numbers that must stay readable (`testdata/`).
//!
//! The judge is independent of the masker's own digit tables: what the agent sees is put in NFKC, every
//! character that is not an ASCII digit is dropped, and the card's digits must not be in what is left
//! (at most its last four are).

use std::io::Cursor;

use proptest::prelude::*;
use unicode_normalization::UnicodeNormalization;

use super::tests::TEST_BRANDS as BRANDS;
use super::*;

/// The ASCII digits a reader gets from `text`: NFKC, then every non-digit dropped.
fn nfkc_digits(text: &str) -> String {
    text.nfkc().filter(char::is_ascii_digit).collect()
}

/// True when the digits still readable in `seen` expose more of `card` than its last four.
fn leaks(card: &str, seen: &str) -> bool {
    let digits = nfkc_digits(seen);
    digits.contains(card) || digits.len() > 4 || !card.ends_with(&digits)
}

/// Masks `messages` of one sender as the hub does and returns the agent's final view of each.
fn agent_view(messages: &[String]) -> Vec<String> {
    let mut c = ConversationMasker::new(Masker::default());
    let mut view: Vec<String> = Vec::new();
    for text in messages {
        let outcome = c.mask(SenderKey(0), text);
        for a in outcome.amendments() {
            if let Some(i) = view.len().checked_sub(a.back) {
                view[i] = a.text.into_string();
            }
        }
        view.push(outcome.text.into_string());
    }
    view
}

fn one(text: &str) -> String {
    Masker::default().mask(text).into_string()
}

// ---------------------------------------------------------------- one message

#[test]
fn invisible_characters_between_groups_hide_nothing() {
    for inv in [
        "\u{200B}", "\u{200D}", "\u{2060}", "\u{FEFF}", "\u{00AD}", "\u{0301}", "\u{20E3}", "\u{FE0F}",
    ] {
        for text in [
            format!("4111{inv}1111{inv}1111{inv}1111"),
            format!("4{inv}1{inv}1{inv}1{inv}1{inv}1{inv}1{inv}1{inv}1{inv}1{inv}1{inv}1{inv}1{inv}1{inv}1{inv}1"),
            format!("card: 4111 {inv}1111{inv} 1111 1111 ok"),
            format!("4111{inv}{inv}{inv}{inv}{inv}1111 1111 1111"),
        ] {
            let out = one(&text);
            assert!(!leaks("4111111111111111", &out), "{text:?} -> {out:?}");
            assert_eq!(out.chars().count(), text.chars().count());
        }
    }
}

#[test]
fn spaces_line_breaks_and_punctuation_between_groups_hide_nothing() {
    let more = [
        "\r\n",
        "   ",
        "      ",
        " · ",
        "|",
        ";",
        "...",
        "\u{2022}",
        " -\u{200B}- ",
        "+",
    ];
    for sep in SEPARATORS.iter().chain(&more).filter(|s| !s.is_empty()) {
        let text = format!("my number 5555{sep}5555{sep}5555{sep}4444 thanks");
        let out = one(&text);
        assert!(!leaks("5555555555554444", &out), "{sep:?}: {out:?}");
        assert!(out.contains("4444"), "the last four stay readable: {out:?}");
    }
}

#[test]
fn other_digit_forms_hide_nothing() {
    let card = "4111111111111111";
    for form in 0..DIGIT_FORMS {
        let spelled: String = card.bytes().map(|b| digit_form(b - b'0', form)).collect();
        for text in [spelled.clone(), format!("it is {spelled}!")] {
            let out = one(&text);
            assert!(!leaks(card, &out), "{text:?} -> {out:?}");
        }
    }
    // Mixed forms in one number.
    let text = "4¹1₁ ①1１1 𝟏111 ⑴⒈11";
    assert!(!leaks(card, &one(text)), "{text:?}");
}

#[test]
fn a_separator_trick_does_not_turn_an_amount_into_a_hiding_place() {
    // Thousands separators are punctuation like any other: a card written as an "amount" is caught.
    let out = one("paid 4,111,111,111,111,111 yesterday");
    assert!(!leaks("4111111111111111", &out), "{out:?}");
}

// ---------------------------------------------------------------- across messages

#[test]
fn groups_over_messages_with_words_in_between_are_caught() {
    let messages: Vec<String> = ["first 5555", "then 5555", "then 5555", "and last 4444"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    let view = agent_view(&messages);
    assert!(!leaks("5555555555554444", &view.concat()), "{view:?}");
    assert_eq!(view, ["first ••••", "then ••••", "then ••••", "and last 4444"]);

    // A word-only message in between does not help either.
    let messages: Vec<String> = ["4111 1111", "ok", "next: 1111", "1111 done"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    let view = agent_view(&messages);
    assert!(!leaks("4111111111111111", &view.concat()), "{view:?}");

    // Invisible characters and digit forms across messages.
    let messages: Vec<String> = ["⁴¹¹¹\u{200B}", "\u{FEFF}1111 then", "①①①① and", "1111"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    let view = agent_view(&messages);
    assert!(!leaks("4111111111111111", &view.concat()), "{view:?}");
}

#[test]
fn relaydesk_mask_catches_groups_over_lines_with_words() {
    let mut out = Vec::new();
    mask_lines(
        &Masker::default(),
        Cursor::new(&b"first 5555\nthen 5555\nthen 5555\nthen 4444\n"[..]),
        &mut out,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let out = String::from_utf8(out).unwrap_or_default();
    assert_eq!(out, "first ••••\nthen ••••\nthen ••••\nthen 4444\n");
}

// ---------------------------------------------------------------- ordinary numbers stay

const NEGATIVE: &str = include_str!("testdata/negative_corpus.txt");

fn negative_lines() -> impl Iterator<Item = &'static str> {
    NEGATIVE.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty())
}

#[test]
fn negative_corpus_stays_untouched() {
    let masker = Masker::default();
    for line in negative_lines() {
        assert_eq!(masker.mask(line).as_str(), line, "masked alone");
    }
    // As one conversation of one sender (cross-message joining must not invent a card), in both orders.
    let mut lines: Vec<String> = negative_lines().map(str::to_owned).collect();
    for _ in 0..2 {
        let view = agent_view(&lines);
        for (seen, line) in view.iter().zip(&lines) {
            assert_eq!(seen, line, "masked as part of the conversation");
        }
        lines.reverse();
    }
}

// ---------------------------------------------------------------- property tests

/// A valid card number: a brand prefix, random digits, the Luhn check digit.
fn card() -> impl Strategy<Value = String> {
    let random = proptest::collection::vec(0u8..10, card::MAX_LEN);
    (0..BRANDS.len(), any::<usize>(), random).prop_map(|(b, pick, random)| {
        let (prefix, lengths) = BRANDS[b];
        let len = lengths[pick % lengths.len()];
        let mut digits: Vec<u8> = prefix.bytes().map(|c| c - b'0').collect();
        let fill = (len - 1).saturating_sub(digits.len());
        digits.extend_from_slice(&random[..fill]);
        let check = (0..10u8)
            .find(|&d| {
                let mut all = digits.clone();
                all.push(d);
                card::luhn_valid(&all)
            })
            .unwrap_or(0);
        digits.push(check);
        digits.iter().map(|d| char::from(b'0' + d)).collect()
    })
}

/// How many forms [`digit_form`] knows.
const DIGIT_FORMS: u8 = 9;

/// One digit in one of the forms a reader takes for it.
fn digit_form(d: u8, form: u8) -> String {
    let d32 = u32::from(d);
    let c = match form % DIGIT_FORMS {
        0 => char::from(b'0' + d),
        1 => char::from_u32(0xFF10 + d32).unwrap_or('0'),
        2 => ['⁰', '¹', '²', '³', '⁴', '⁵', '⁶', '⁷', '⁸', '⁹'][usize::from(d)],
        3 => char::from_u32(0x2080 + d32).unwrap_or('0'),
        4 => ['⓪', '①', '②', '③', '④', '⑤', '⑥', '⑦', '⑧', '⑨'][usize::from(d)],
        5 => char::from_u32(0x1D7D8 + d32).unwrap_or('0'),
        6 if d > 0 => char::from_u32(0x2473 + d32).unwrap_or('0'), // parenthesised ⑴
        7 if d > 0 => char::from_u32(0x2487 + d32).unwrap_or('0'), // with full stop ⒈
        6 | 7 => '🄀',                                              // 0 with full stop
        _ => return format!("{}\u{0332}", char::from(b'0' + d)),   // a digit with a combining low line
    };
    c.to_string()
}

/// Separators an attacker puts between groups: visible (at most four runs of characters) or invisible.
const SEPARATORS: &[&str] = &[
    "",
    " ",
    "  ",
    "\t",
    "\n",
    "-",
    " - ",
    "/",
    " / ",
    ",",
    ", ",
    "_",
    "·",
    ".",
    ":",
    "\u{200B}",
    "\u{200D}",
    "\u{2060}",
    "\u{FEFF}",
    "\u{00AD}",
    "\u{0301}",
    " \u{200B}",
    "\u{3000}",
    "\u{a0}",
    "--",
    "*",
];

/// Words around and between the parts (no digits).
const WORDS: &[&str] = &[
    "",
    "then",
    "next",
    "ok",
    "and",
    "first",
    "last part",
    "my card is",
    "here:",
    "カード",
    "é",
];

#[derive(Debug, Clone)]
struct Spelling {
    card: String,
    /// Per digit: its form; per gap after it: separator index, and whether a message ends there.
    forms: Vec<u8>,
    seps: Vec<usize>,
    cuts: Vec<bool>,
    words: Vec<usize>,
}

fn spelling() -> impl Strategy<Value = Spelling> {
    card().prop_flat_map(|card| {
        let n = card.len();
        (
            Just(card),
            proptest::collection::vec(0..DIGIT_FORMS, n),
            // Mostly no separator (groups), sometimes one.
            proptest::collection::vec(prop_oneof![3 => Just(0usize), 2 => 0..SEPARATORS.len()], n),
            proptest::collection::vec(proptest::bool::weighted(0.08), n),
            proptest::collection::vec(0..WORDS.len(), n + 2),
        )
            .prop_map(|(card, forms, seps, cuts, words)| Spelling {
                card,
                forms,
                seps,
                cuts,
                words,
            })
    })
}

/// The messages the visitor sends: the card spelled out, split where `cuts` says, with a word or two
/// (from `words`) at the start of each message after the first.
fn messages(s: &Spelling) -> Vec<String> {
    let mut out = vec![format!("{} ", WORDS[s.words[0]])];
    for (i, d) in s.card.bytes().enumerate() {
        out.last_mut()
            .map(|m| m.push_str(&digit_form(d - b'0', s.forms[i])))
            .unwrap_or_default();
        if i + 1 == s.card.len() {
            break;
        }
        if s.cuts[i] {
            out.push(format!("{} ", WORDS[s.words[i + 1]]));
        } else if let Some(m) = out.last_mut() {
            m.push_str(SEPARATORS[s.seps[i]]);
        }
    }
    if let Some(m) = out.last_mut() {
        m.push(' ');
        m.push_str(WORDS[s.words[s.card.len() + 1]]);
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    /// Whatever the spelling and however it is split, the agent's final view holds no more than the
    /// card's last four digits.
    #[test]
    fn no_card_survives_any_spelling(s in spelling()) {
        let msgs = messages(&s);
        let view = agent_view(&msgs);
        let seen = view.concat();
        prop_assert!(!leaks(&s.card, &seen), "{msgs:?} -> {view:?}");
        // One message alone goes through the stateless masker the same way.
        if msgs.len() == 1 {
            let out = one(&msgs[0]);
            prop_assert!(!leaks(&s.card, &out), "{msgs:?} -> {out:?}");
        }
    }

    /// Masking never changes the number of characters, never touches a letter, and is idempotent.
    #[test]
    fn masking_replaces_only_and_is_idempotent(s in spelling()) {
        let text = messages(&s).join(" ");
        let once = one(&text);
        prop_assert_eq!(once.chars().count(), text.chars().count());
        for (a, b) in text.chars().zip(once.chars()) {
            prop_assert!(a == b || b == MASK_CHAR, "{text:?} -> {once:?}");
        }
        prop_assert_eq!(one(&once), once);
    }
}

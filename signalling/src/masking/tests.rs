//! Unit tests of the masker.

use std::io::Cursor;
use std::sync::{Arc, Mutex};

use super::card::{brand_name, luhn_valid};
use super::digits::{ND_ZEROS, digit_value};
use super::*;

/// Masks one text with the default policy.
fn m(text: &str) -> String {
    Masker::default().mask(text).into_string()
}

/// Asserts that `text` comes out unchanged.
fn stays(text: &str) {
    assert_eq!(m(text), text, "should not be masked");
}

/// Appends the Luhn check digit to an ASCII digit prefix.
fn luhn_complete(prefix: &str) -> String {
    let values: Vec<u8> = prefix.bytes().map(|b| b - b'0').collect();
    for d in 0..10u8 {
        let mut all = values.clone();
        all.push(d);
        if luhn_valid(&all) {
            return format!("{prefix}{d}");
        }
    }
    unreachable!("one check digit always fits")
}

fn values(digits: &str) -> Vec<u8> {
    digits.chars().map(|c| digit_value(c).unwrap()).collect()
}

/// Every digit but the last four replaced by the mask character.
fn masked_keep4(card: &str) -> String {
    let total = card.chars().filter(|c| digit_value(*c).is_some()).count();
    let mut seen = 0;
    card.chars()
        .map(|c| {
            if digit_value(c).is_some() {
                seen += 1;
                if seen + 4 <= total { MASK_CHAR } else { c }
            } else {
                c
            }
        })
        .collect()
}

// ---------------------------------------------------------------- digits

#[test]
fn digit_table_is_sorted_and_every_block_is_ten_numeric_chars() {
    assert!(
        ND_ZEROS.windows(2).all(|w| w[0] + 10 <= w[1]),
        "sorted, blocks do not overlap"
    );
    for &zero in &ND_ZEROS {
        for d in 0..10 {
            let c = char::from_u32(zero + d).unwrap();
            assert!(c.is_numeric(), "U+{:04X} should be numeric", zero + d);
            assert_eq!(digit_value(c), Some(d as u8), "U+{:04X}", zero + d);
        }
    }
}

#[test]
fn digit_values_of_several_scripts() {
    assert_eq!(digit_value('7'), Some(7));
    assert_eq!(digit_value('７'), Some(7)); // full-width
    assert_eq!(digit_value('٣'), Some(3)); // Arabic-Indic
    assert_eq!(digit_value('۴'), Some(4)); // extended Arabic-Indic (Persian)
    assert_eq!(digit_value('९'), Some(9)); // Devanagari
    assert_eq!(digit_value('๕'), Some(5)); // Thai
    assert_eq!(digit_value('𝟘'), Some(0)); // mathematical double-struck
    // Compatibility digit forms: their NFKC form is one digit.
    for (c, v) in [
        ('²', 2),
        ('¹', 1),
        ('⁷', 7),
        ('₅', 5),
        ('②', 2),
        ('⓪', 0),
        ('⑴', 1),
        ('⒈', 1),
        ('🄂', 1),
    ] {
        assert_eq!(digit_value(c), Some(v), "{c:?}");
    }
    for c in ['a', '½', 'Ⅻ', '¼', '⑫', '〇', '十', ' ', '•'] {
        assert_eq!(digit_value(c), None, "{c:?} is not a decimal digit");
    }
}

// ---------------------------------------------------------------- cards

#[test]
fn each_brand_is_recognised_and_masked() {
    let cases = [
        ("4111111111111111", "visa"),
        ("4222222222222", "visa"),
        ("4887623286012904049", "visa"),
        ("5555555555554444", "mastercard"),
        ("5105105105105100", "mastercard"),
        ("2221000000000009", "mastercard"),
        ("2700123456789014", "mastercard"),
        ("378282246310005", "amex"),
        ("371449635398431", "amex"),
        ("6011111111111117", "discover"),
        ("6445644564456445", "discover"),
        ("6500000000000000003", "discover"),
        ("30569309025904", "diners"),
        ("38520000023237", "diners"),
        ("3636143612345672", "diners"),
        ("3530111333300000", "jcb"),
        ("3566002020360505", "jcb"),
        ("620000000000000005", "unionpay"),
        ("6759649826438453", "maestro"),
        ("501800000009", "maestro"),
        ("2200123456789019", "mir"),
    ];
    for (number, brand) in cases {
        assert!(luhn_valid(&values(number)), "{number} must be Luhn-valid for this test");
        assert_eq!(brand_name(&values(number)), Some(brand), "{number}");
        let text = format!("my card is {number}, thanks");
        assert_eq!(
            m(&text),
            format!("my card is {}, thanks", masked_keep4(number)),
            "{brand}"
        );
    }
}

#[test]
fn brand_lengths_are_enforced() {
    // Luhn-valid but a length the brand does not issue.
    for prefix in [
        "41111111111111",
        "5555555555555",
        "3782822463100",
        "60111111111111",
        "35301113333",
    ] {
        let number = luhn_complete(prefix);
        assert_eq!(brand_name(&values(&number)), None, "{number}");
        stays(&format!("ref {number}"));
    }
    // Luhn-valid, right length, unknown prefix.
    for prefix in [
        "100000000000000",
        "900000000000000",
        "700000000000000",
        "123456789012345",
    ] {
        let number = luhn_complete(prefix);
        stays(&format!("order {number}"));
    }
}

#[test]
fn separators_keep_their_shape() {
    assert_eq!(m("4111 1111 1111 1111"), "•••• •••• •••• 1111");
    assert_eq!(m("4111-1111-1111-1111"), "••••-••••-••••-1111");
    assert_eq!(m("4111.1111.1111.1111"), "••••.••••.••••.1111");
    assert_eq!(m("4111111111111111"), "••••••••••••1111");
    assert_eq!(m("3782 822463 10005"), "•••• •••••• •0005");
    assert_eq!(
        m("4111\u{a0}1111\u{a0}1111\u{a0}1111"),
        "••••\u{a0}••••\u{a0}••••\u{a0}1111"
    );
    assert_eq!(m("41 11 11 11 11 11 11 11"), "•• •• •• •• •• •• 11 11");
    assert_eq!(m("4111 1111-1111.1111"), "•••• ••••-••••.1111");
    assert_eq!(m("card:4111111111111111."), "card:••••••••••••1111.");
    assert_eq!(m("(4111 1111 1111 1111)"), "(•••• •••• •••• 1111)");
}

#[test]
fn short_gaps_without_letters_join_the_groups() {
    assert_eq!(m("4111  1111  1111  1111"), "••••  ••••  ••••  1111");
    assert_eq!(m("4111 - 1111 - 1111 - 1111"), "•••• - •••• - •••• - 1111");
    // Five runs of visible characters (space, dash, space, dash, space) do not join.
    stays("4111 - - 1111 - - 1111 - - 1111");
    // Nor does a letter.
    stays("4111 a 1111 a 1111 a 1111");
}

#[test]
fn full_width_digits_are_masked() {
    assert_eq!(
        m("カード４１１１　１１１１　１１１１　１１１１です"),
        "カード••••　••••　••••　１１１１です"
    );
    assert_eq!(m("４１１１１１１１１１１１１１１１"), "••••••••••••１１１１");
    assert_eq!(
        m("４１１１－１１１１－１１１１－１１１１"),
        "••••－••••－••••－１１１１"
    );
}

#[test]
fn arabic_indic_and_other_digits_are_masked() {
    assert_eq!(m("بطاقتي ٤١١١ ١١١١ ١١١١ ١١١١"), "بطاقتي •••• •••• •••• ١١١١");
    assert_eq!(m("۴۱۱۱۱۱۱۱۱۱۱۱۱۱۱۱"), "••••••••••••۱۱۱۱");
    assert_eq!(m("४१११ ११११ ११११ ११११"), "•••• •••• •••• ११११");
    // Mixed scripts in one number still count.
    assert_eq!(m("4111 ١١١١ １１１１ 1111"), "•••• •••• •••• 1111");
}

#[test]
fn luhn_invalid_numbers_stay() {
    stays("4111 1111 1111 1112");
    stays("5555555555554445");
    stays("378282246310006");
}

#[test]
fn international_phone_numbers_stay() {
    stays("call me on +44 20 7946 0958");
    stays("+1 415 555 0199");
    stays("+49 1512 3456789");
    stays("+4111111111111111");
    stays("＋4111111111111111");
    stays("(555) 123-4567 or 0044 20 7946 0958 or 06 12 34 56 78");
    // A card after the phone number in the same run is still found.
    assert_eq!(m("+1 4111 1111 1111 1111"), "+• •••• •••• •••• 1111");
}

#[test]
fn dates_ips_amounts_and_ids_stay() {
    for text in [
        "see you on 2024-03-12 at 10:30:45",
        "born 12.03.1984, moved 03/12/2027",
        "server 192.168.100.200 and 255.255.255.255 and 10.0.0.1",
        "total $1,234.56 or 12,345,678.90 EUR, paid 4,111,111,112",
        "order 123456789012 and ORD-2024-000123",
        "reference 12345678901234567890123",
        "4111111111111111111111 is a 22-digit reference",
        "tracking 1Z999AA10123456784",
        "version 1.2.3.4, 3.14159",
        "due 12/27",
        "code 123",
    ] {
        stays(text);
    }
}

#[test]
fn urls_are_left_alone() {
    stays("https://shop.example/orders/4111111111111111");
    stays("see www.example.com/p?id=4111-1111-1111-1111&x=1");
    stays("HTTP://EXAMPLE.COM/4111111111111111");
    assert_eq!(
        m("https://shop.example/orders/1 and 4111 1111 1111 1111"),
        "https://shop.example/orders/1 and •••• •••• •••• 1111"
    );
}

#[test]
fn several_cards_in_one_message() {
    assert_eq!(
        m("4111111111111111 5555555555554444"),
        "••••••••••••1111 ••••••••••••4444"
    );
    assert_eq!(
        m("a 4111-1111-1111-1111, b 378282246310005"),
        "a ••••-••••-••••-1111, b •••••••••••0005"
    );
}

#[test]
fn other_digits_in_a_card_run_are_masked_too() {
    // A CVV glued to the card with a single space belongs to the same run.
    assert_eq!(m("4111 1111 1111 1111 123"), "•••• •••• •••• 1111 •••");
    assert_eq!(m("qty 12 4111 1111 1111 1111"), "qty •• •••• •••• •••• 1111");
}

// ---------------------------------------------------------------- CVV and expiry

#[test]
fn cvv_and_expiry_next_to_a_card() {
    assert_eq!(
        m("4111 1111 1111 1111 exp 12/27 cvv 123"),
        "•••• •••• •••• 1111 exp ••/•• cvv •••"
    );
    assert_eq!(m("4111111111111111, 09/2029, 1234"), "••••••••••••1111, ••/••••, ••••");
    assert_eq!(m("4111111111111111 12/27 123"), "••••••••••••1111 ••/•• •••");
    assert_eq!(m("12/27 4111111111111111"), "••/•• ••••••••••••1111");
    assert_eq!(
        m("4111111111111111 valid thru 1 / 28"),
        "••••••••••••1111 valid thru • / ••"
    );
}

#[test]
fn cvv_after_a_keyword() {
    assert_eq!(m("my CVV is 987"), "my CVV is •••");
    assert_eq!(m("security code: 0123"), "security code: ••••");
    assert_eq!(m("cvc2=456 thanks"), "cvc2=••• thanks");
    assert_eq!(m("exp: 11/26"), "exp: ••/••");
    // Too far from the keyword, or another number in between.
    stays("cvv please, I will send it later tomorrow 123");
    stays("cvv of order 5 is 123");
}

#[test]
fn cvv_and_expiry_alone_stay() {
    stays("I need 123 boxes by 12/27");
    stays("room 4112, floor 3");
}

#[test]
fn cvv_in_the_message_after_a_card() {
    let mut c = ConversationMasker::new(Masker::default());
    let s = SenderKey(1);
    assert_eq!(c.mask(s, "4111 1111 1111 1111").text.as_str(), "•••• •••• •••• 1111");
    assert_eq!(c.mask(s, "12/27 and 123").text.as_str(), "••/•• and •••");
    // Only the message right after the card.
    assert_eq!(c.mask(s, "12/27 and 123").text.as_str(), "12/27 and 123");
}

#[test]
fn numbers_far_from_the_card_stay() {
    let text = "4111111111111111 - and by the way, about something else entirely, room 123";
    assert_eq!(m(text), text.replace("4111111111111111", "••••••••••••1111"));
}

// ---------------------------------------------------------------- IBAN

#[test]
fn valid_ibans_are_masked() {
    assert_eq!(
        m("IBAN DE89 3704 0044 0532 0130 00 please"),
        "IBAN •••• •••• •••• •••• ••30 00 please"
    );
    assert_eq!(m("GB82WEST12345698765432"), "••••••••••••••••••5432");
    assert_eq!(m("gb82 west 1234 5698 7654 32"), "•••• •••• •••• •••• ••54 32");
    assert_eq!(
        m("FR14 2004 1010 0505 0001 3M02 606."),
        "•••• •••• •••• •••• •••• •••2 606."
    );
    assert_eq!(m("NL91ABNA0417164300"), "••••••••••••••4300");
    assert_eq!(m("NO9386011117947"), "•••••••••••7947");
    assert_eq!(m("DE89 ３７０４ 0044 0532 0130 00"), "•••• •••• •••• •••• ••30 00");
}

#[test]
fn invalid_ibans_stay() {
    stays("GB82 WEST 1234 5698 7654 33"); // checksum
    stays("DE89 3704 0044 0532 0130 0"); // too short for DE
    stays("DE89 3704 0044 0532 0130 001"); // too long for DE
    stays("QQ89 3704 0044 0532 0130 00"); // no such country
    stays("XDE89370400440532013000"); // glued to a letter
    stays("https://bank.example/DE89370400440532013000");
}

// ---------------------------------------------------------------- SSN

#[test]
fn us_ssn_with_separators_is_masked() {
    assert_eq!(m("SSN 123-45-6789."), "SSN •••-••-••••.");
    assert_eq!(m("ssn: 123 45 6789"), "ssn: ••• •• ••••");
    assert_eq!(
        m("078-05-1120 and 123-45-6789 1234"),
        "•••-••-•••• and •••-••-•••• 1234"
    );
}

#[test]
fn us_ssn_invalid_forms_stay() {
    for text in [
        "000-12-3456",
        "666-12-3456",
        "900-12-3456",
        "987-65-4321",
        "123-00-4567",
        "123-45-0000",
        "123456789",
        "123-45 6789",
        "123.45.6789",
        "555-123-45-6789",
        "+123-45-6789",
    ] {
        stays(text);
    }
}

#[test]
fn switches_turn_rules_off() {
    let policy = MaskPolicy {
        cards: false,
        card_cvv_expiry: false,
        iban: false,
        us_ssn: false,
        extra: vec![],
    };
    let masker = policy.compile().unwrap();
    let text = "4111 1111 1111 1111 cvv 123 DE89 3704 0044 0532 0130 00 123-45-6789";
    assert_eq!(masker.mask(text).as_str(), text);
    let only_iban = MaskPolicy { iban: true, ..policy };
    assert_eq!(
        only_iban.compile().unwrap().mask(text).as_str(),
        "4111 1111 1111 1111 cvv 123 •••• •••• •••• •••• ••30 00 123-45-6789"
    );
}

// ---------------------------------------------------------------- split across messages

#[test]
fn card_split_across_two_messages() {
    let mut c = ConversationMasker::new(Masker::default());
    let s = SenderKey(7);
    let first = c.mask(s, "my card 4111 1111");
    assert_eq!(first.text.as_str(), "my card 4111 1111");
    assert_eq!(c.open_messages(&s), 1);
    let second = c.mask(s, "1111 1111 thanks");
    assert_eq!(second.text.as_str(), "•••• 1111 thanks");
    assert_eq!(
        second.amend_previous.as_ref().map(MaskedText::as_str),
        Some("my card •••• ••••")
    );
    assert!(second.amend_earlier.is_empty());
    assert_eq!(second.findings.split_cards, 1);
    assert_eq!(second.findings.cards, 1);
    // A longer card may still follow: both messages stay open.
    assert_eq!(c.open_messages(&s), 2);
}

#[test]
fn card_split_without_separators_and_with_whitespace_around() {
    let mut c = ConversationMasker::new(Masker::default());
    let s = SenderKey(1);
    assert_eq!(c.mask(s, "41111111").text.as_str(), "41111111");
    let out = c.mask(s, "  11111111");
    assert_eq!(out.text.as_str(), "  ••••1111");
    assert_eq!(out.amend_previous.unwrap().as_str(), "••••••••");

    let mut c = ConversationMasker::new(Masker::default());
    assert_eq!(c.mask(s, "4111-1111-1111- ").text.as_str(), "4111-1111-1111- ");
    let out = c.mask(s, "1111");
    assert_eq!(out.text.as_str(), "1111");
    assert_eq!(out.amend_previous.unwrap().as_str(), "••••-••••-••••- ");
}

#[test]
fn card_split_inside_a_group() {
    let mut c = ConversationMasker::new(Masker::default());
    let s = SenderKey(1);
    assert_eq!(c.mask(s, "4111 1111 11").text.as_str(), "4111 1111 11");
    let out = c.mask(s, "11 1111");
    assert_eq!(out.text.as_str(), "•• 1111");
    assert_eq!(out.amend_previous.unwrap().as_str(), "•••• •••• ••");
}

#[test]
fn card_split_with_last_four_across_the_boundary() {
    let mut c = ConversationMasker::new(Masker::default());
    let s = SenderKey(1);
    let _ = c.mask(s, "4111 1111 1111 11");
    let out = c.mask(s, "11");
    // At most the last four are visible in total: "11" here, none in the amended message.
    assert_eq!(out.text.as_str(), "11");
    assert_eq!(out.amend_previous.unwrap().as_str(), "•••• •••• •••• ••");
}

#[test]
fn card_split_across_three_messages() {
    let mut c = ConversationMasker::new(Masker::default());
    let s = SenderKey(1);
    let a = c.mask(s, "4111 1111");
    assert_eq!(a.text.as_str(), "4111 1111");
    let b = c.mask(s, "1111");
    assert_eq!(b.text.as_str(), "1111");
    assert!(b.amend_previous.is_none());
    assert_eq!(c.open_messages(&s), 2);
    let last = c.mask(s, "1111 that's all");
    assert_eq!(last.text.as_str(), "1111 that's all");
    assert_eq!(last.amend_previous.as_ref().unwrap().as_str(), "••••");
    assert_eq!(
        last.amend_earlier,
        vec![Amendment {
            back: 2,
            text: Masker::default().mask("•••• ••••")
        }]
    );
    let all: Vec<(usize, String)> = last.amendments().map(|a| (a.back, a.text.into_string())).collect();
    assert_eq!(all, vec![(1, "••••".to_owned()), (2, "•••• ••••".to_owned())]);
}

#[test]
fn full_width_card_split_across_messages() {
    let mut c = ConversationMasker::new(Masker::default());
    let s = SenderKey(1);
    let _ = c.mask(s, "番号は４１１１　１１１１");
    let out = c.mask(s, "１１１１　１１１１");
    assert_eq!(out.text.as_str(), "••••　１１１１");
    assert_eq!(out.amend_previous.unwrap().as_str(), "番号は••••　••••");
}

#[test]
fn split_card_then_cvv_in_the_same_message() {
    let mut c = ConversationMasker::new(Masker::default());
    let s = SenderKey(1);
    let _ = c.mask(s, "5555 5555");
    let out = c.mask(s, "5555 4444 exp 10/28 cvv 321");
    assert_eq!(out.text.as_str(), "•••• 4444 exp ••/•• cvv •••");
    assert_eq!(out.amend_previous.unwrap().as_str(), "•••• ••••");
}

#[test]
fn different_senders_do_not_combine() {
    let mut c = ConversationMasker::new(Masker::default());
    let _ = c.mask(SenderKey(1), "4111 1111");
    let out = c.mask(SenderKey(2), "1111 1111");
    assert_eq!(out.text.as_str(), "1111 1111");
    assert!(out.amend_previous.is_none());
    // Sender 1's tail survives the other sender's message.
    let out = c.mask(SenderKey(1), "1111 1111");
    assert_eq!(out.text.as_str(), "•••• 1111");
    assert_eq!(out.amend_previous.unwrap().as_str(), "•••• ••••");
}

#[test]
fn split_joins_only_over_a_few_words() {
    let s = SenderKey(1);
    for (a, b) in [("4111 1111 thanks", "1111 1111"), ("4111 1111", "and 1111 1111")] {
        let mut c = ConversationMasker::new(Masker::default());
        let _ = c.mask(s, a);
        let out = c.mask(s, b);
        assert!(out.amend_previous.is_some(), "{a:?} + {b:?}");
    }
    for (a, b) in [
        ("4111 1111 thanks, that is the first half of it", "1111 1111"),
        ("4111 1111", "and now the second half of the number: 1111 1111"),
        ("4111 1111", "see https://example.com/ 1111 1111"),
        ("4111 1111", "+1111 1111"),
        ("+4111 1111", "1111 1111"),
        ("4111 1111 1111 1111", "1111 1111"),
    ] {
        let mut c = ConversationMasker::new(Masker::default());
        let _ = c.mask(s, a);
        let out = c.mask(s, b);
        assert!(out.amend_previous.is_none(), "{a:?} + {b:?}");
    }
    // A message without digits in between supersedes the tail when it is long enough...
    let mut c = ConversationMasker::new(Masker::default());
    let _ = c.mask(s, "4111 1111");
    let _ = c.mask(s, "hm, wait, let me look for the other card");
    let out = c.mask(s, "1111 1111");
    assert_eq!(out.text.as_str(), "1111 1111");
    assert!(out.amend_previous.is_none());
    assert_eq!(c.open_messages(&s), 1);
    c.forget(&s);
    assert_eq!(c.open_messages(&s), 0);
    // ... and not when it is a word or two.
    let _ = c.mask(s, "4111 1111");
    let _ = c.mask(s, "hm");
    let out = c.mask(s, "1111 1111");
    assert_eq!(out.text.as_str(), "•••• 1111");
    assert_eq!(
        out.amend_earlier.first().map(|a| (a.back, a.text.as_str())),
        Some((2, "•••• ••••"))
    );
}

#[test]
fn split_does_not_join_a_long_reference() {
    let mut c = ConversationMasker::new(Masker::default());
    let s = SenderKey(1);
    // 22 digits then 2: no window starts on a group inside the old run.
    let _ = c.mask(s, "ref 4111111111111111111111");
    let out = c.mask(s, "11");
    assert_eq!(out.text.as_str(), "11");
    assert!(out.amend_previous.is_none());
}

// ---------------------------------------------------------------- operator patterns and policy

#[test]
fn extra_patterns_replace_matches() {
    let policy: MaskPolicy = toml::from_str(
        r#"
        extra = [
            { name = "order", regex = '\bORD-[0-9]{6}\b' },
            { name = "email", regex = '[\w.+-]+@[\w-]+\.[\w.]+', replacement = "[e-mail]" },
        ]
        "#,
    )
    .unwrap();
    assert!(policy.cards && policy.iban && policy.us_ssn && policy.card_cvv_expiry);
    let masker = policy.compile().unwrap();
    let (out, found) = masker.mask_with_findings("ORD-123456 for jo@example.com, card 4111111111111111");
    assert_eq!(out.as_str(), "[order] for [e-mail], card ••••••••••••1111");
    assert_eq!(found.extra, 2);
    assert_eq!(found.cards, 1);
    // `$` in a replacement is literal.
    let dollar = Masker::default()
        .with_extra(&[ExtraPattern {
            name: "x".into(),
            regex: "(secret)".into(),
            replacement: Some("$1".into()),
        }])
        .unwrap();
    assert_eq!(dollar.mask("a secret").as_str(), "a $1");
}

#[test]
fn group_patterns_add_to_global_ones() {
    let global = MaskPolicy {
        extra: vec![ExtraPattern {
            name: "a".into(),
            regex: "alpha".into(),
            replacement: None,
        }],
        ..MaskPolicy::default()
    }
    .compile()
    .unwrap();
    let group = global
        .with_extra(&[ExtraPattern {
            name: "b".into(),
            regex: "beta".into(),
            replacement: Some("<b>".into()),
        }])
        .unwrap();
    assert_eq!(global.mask("alpha beta").as_str(), "[a] beta");
    assert_eq!(group.mask("alpha beta").as_str(), "[a] <b>");
    assert_eq!(group.extra_patterns().len(), 2);
}

#[test]
fn empty_matches_are_ignored() {
    let masker = Masker::default()
        .with_extra(&[ExtraPattern {
            name: "e".into(),
            regex: "x*".into(),
            replacement: Some("!".into()),
        }])
        .unwrap();
    assert_eq!(masker.mask("abxxc").as_str(), "ab!c");
    assert_eq!(masker.mask("").as_str(), "");
}

fn one(name: &str, regex: &str) -> Vec<ExtraPattern> {
    vec![ExtraPattern {
        name: name.into(),
        regex: regex.into(),
        replacement: None,
    }]
}

#[test]
fn policy_errors() {
    let base = Masker::default();
    assert!(
        matches!(base.with_extra(&one("bad", "(unclosed")), Err(PolicyError::InvalidRegex { name, .. }) if name == "bad")
    );
    assert!(matches!(
        base.with_extra(&one("big", r"\w{1000}\w{1000}\w{1000}")),
        Err(PolicyError::TooBig { .. })
    ));
    assert!(matches!(
        base.with_extra(&one("", "x")),
        Err(PolicyError::BadName { len: 0, .. })
    ));
    assert!(matches!(
        base.with_extra(&one(&"n".repeat(65), "x")),
        Err(PolicyError::BadName { len: 65, .. })
    ));
    assert!(matches!(
        base.with_extra(&one("long", &"a".repeat(MAX_PATTERN_LEN + 1))),
        Err(PolicyError::PatternTooLong { .. })
    ));
    let long_replacement = vec![ExtraPattern {
        name: "r".into(),
        regex: "x".into(),
        replacement: Some("y".repeat(MAX_REPLACEMENT_LEN + 1)),
    }];
    assert!(matches!(
        base.with_extra(&long_replacement),
        Err(PolicyError::ReplacementTooLong { .. })
    ));
    let many: Vec<ExtraPattern> = (0..=MAX_EXTRA_PATTERNS)
        .map(|i| ExtraPattern {
            name: format!("p{i}"),
            regex: "x".into(),
            replacement: None,
        })
        .collect();
    assert!(matches!(
        base.with_extra(&many),
        Err(PolicyError::TooManyPatterns { count: 65, max: 64 })
    ));
    // The limit counts global and group patterns together.
    let global = base.with_extra(&many[..MAX_EXTRA_PATTERNS]).unwrap();
    assert!(matches!(
        global.with_extra(&one("more", "y")),
        Err(PolicyError::TooManyPatterns { .. })
    ));
    // The errors read well.
    let err = base.with_extra(&one("bad", "(unclosed")).unwrap_err().to_string();
    assert!(
        err.contains("`bad`") && err.contains("not a valid regular expression"),
        "{err}"
    );
}

#[test]
fn policy_rejects_unknown_fields() {
    assert!(toml::from_str::<MaskPolicy>("cardz = true").is_err());
    assert!(toml::from_str::<MaskPolicy>("extra = [{ name = \"a\", regex = \"b\", oops = 1 }]").is_err());
    let p: MaskPolicy = toml::from_str("iban = false").unwrap();
    assert!(!p.iban && p.cards);
    assert_eq!(toml::from_str::<MaskPolicy>("").unwrap(), MaskPolicy::default());
}

// ---------------------------------------------------------------- types

#[test]
fn masked_text_serialises_as_a_string_and_redacted_hides() {
    let t = Masker::default().mask("4111 1111 1111 1111");
    assert_eq!(serde_json::to_string(&t).unwrap(), "\"•••• •••• •••• 1111\"");
    assert_eq!(t.to_string(), "•••• •••• •••• 1111");
    assert_eq!(format!("{t:?}"), "\"•••• •••• •••• 1111\"");
    let id = Redacted::new("visitor@example.com".to_owned());
    assert_eq!(format!("{id}"), "[redacted]");
    assert_eq!(format!("{id:?}"), "[redacted]");
    assert_eq!(format!("{:?}", Some(&id)), "Some([redacted])");
    assert_eq!(id.expose(), "visitor@example.com");
}

#[test]
fn masker_is_shareable() {
    fn send_sync<T: Send + Sync + Clone>() {}
    fn send<T: Send>() {}
    send_sync::<Masker>();
    send_sync::<MaskedText>();
    send::<ConversationMasker>();
    let shared = Arc::new(Masker::default());
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let m = shared.clone();
            std::thread::spawn(move || m.mask("4111111111111111").into_string())
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), "••••••••••••1111");
    }
}

// ---------------------------------------------------------------- idempotence

const CORPUS: &[&str] = &[
    "hello, how can I help?",
    "card 4111 1111 1111 1111 exp 12/27 cvv 123",
    "４１１１－１１１１－１１１１－１１１１",
    "IBAN DE89 3704 0044 0532 0130 00",
    "SSN 123-45-6789",
    "+44 20 7946 0958, order 123456789012",
    "https://x.example/4111111111111111 and 5555555555554444",
    "٤١١١ ١١١١ ١١١١ ١١١١",
    "4111 1111 1111 1111 1111 1111 1111 1111 1111",
    "378282246310005 378282246310005 378282246310005",
];

#[test]
fn masking_masked_text_changes_nothing() {
    let masker = Masker::default();
    for text in CORPUS {
        let once = masker.mask(text);
        let twice = masker.mask(once.as_str());
        assert_eq!(once, twice, "{text:?}");
    }
}

/// Found by the `masking` fuzz target (`fuzz/src/bin/masking.rs`, the input file keeps its mode byte): an IBAN
/// whose kept last four digits ("30 00") are followed by digits that, read from those last four, form a
/// Luhn-valid Diners number. The first pass rightly sees no card (the "30" does not start a group of the
/// input); the second pass read the mask characters before "30" as a group boundary and masked a card:
/// masking was not idempotent. A run glued to `•` now never starts a card, as after `+`.
#[test]
fn fuzz_regression_iban_last_four_then_digits_is_idempotent() {
    let input = include_bytes!("testdata/fuzz/idempotence-iban-then-card");
    let text = std::str::from_utf8(&input[1..]).unwrap();
    let masker = Masker::default();
    let once = masker.mask(text);
    assert_eq!(masker.mask(once.as_str()), once, "{text:?}");
    // The IBAN is masked but its last four; the digits after it are no card of the input.
    assert!(
        once.as_str().starts_with("DE\0•••• •••• •••• ••••••30 00 897 30"),
        "{once:?}"
    );
    // The same shape written plainly.
    for text in [
        "DE89 3704 0044 0532 0130 00 897 30 4 4 0044 0532",
        "IBAN DE89 3704 0044 0532 0130 00",
    ] {
        let once = masker.mask(text);
        assert_eq!(masker.mask(once.as_str()), once, "{text:?}");
    }
    // A card right after masked text is still found when it starts its own group.
    assert_eq!(m("•••• 4111 1111 1111 1111"), "•••• •••• •••• •••• 1111");
}

#[test]
fn built_in_masking_keeps_the_character_count() {
    let masker = Masker::default();
    for text in CORPUS {
        assert_eq!(
            masker.mask(text).as_str().chars().count(),
            text.chars().count(),
            "{text:?}"
        );
    }
}

// ---------------------------------------------------------------- randomised

/// xorshift64*: a small deterministic generator for bounded randomised tests.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// A random valid card number (ASCII digits) of a random brand.
/// Brand prefixes and lengths the randomised tests draw cards from (a subset of `card::BRANDS`).
pub(super) const TEST_BRANDS: &[(&str, &[usize])] = &[
    ("4", &[13, 16, 19]),
    ("51", &[16]),
    ("55", &[16]),
    ("2221", &[16]),
    ("2720", &[16]),
    ("34", &[15]),
    ("37", &[15]),
    ("6011", &[16, 17, 18, 19]),
    ("65", &[16, 19]),
    ("300", &[14, 16]),
    ("36", &[14]),
    ("3528", &[16, 19]),
    ("62", &[16, 17, 18, 19]),
    ("6759", &[12, 13, 16, 19]),
    ("5018", &[12, 15]),
    ("2200", &[16]),
];

fn random_card(rng: &mut Rng) -> String {
    let (prefix, lengths) = rng.pick(TEST_BRANDS);
    let len = *rng.pick(lengths);
    let mut digits = (*prefix).to_owned();
    while digits.len() < len - 1 {
        digits.push(char::from(b'0' + rng.below(10) as u8));
    }
    luhn_complete(&digits)
}

/// Writes `card` in a random script with random grouping and a random separator.
fn random_spelling(rng: &mut Rng, card: &str) -> String {
    let zeros = [0x30u32, 0xFF10, 0x660, 0x6F0, 0x966];
    let zero = *rng.pick(&zeros);
    let sep = *rng.pick(&["", " ", "-", ".", "\u{a0}", "\u{3000}"]);
    let group = *rng.pick(&[4usize, 3, 5, 6, 19]);
    let mut out = String::new();
    for (i, b) in card.bytes().enumerate() {
        if i > 0 && i % group == 0 {
            out.push_str(sep);
        }
        out.push(char::from_u32(zero + u32::from(b - b'0')).unwrap());
    }
    out
}

fn random_words(rng: &mut Rng) -> String {
    let words = [
        "hello",
        "my",
        "card",
        "is",
        "please",
        "order",
        "42",
        "room 7",
        "ok",
        "thanks",
        "€12,50",
        "10:30",
        "12/27",
        "bonjour",
        "شكرا",
        "カード",
        "https://example.com/a/1234",
        "+33 6 12 34 56 78",
        "x1",
    ];
    (0..rng.below(6))
        .map(|_| *rng.pick(&words))
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn random_cards_in_random_text_never_leak() {
    let masker = Masker::default();
    let mut rng = Rng(0x5EED_1234_ABCD_0001);
    for _ in 0..3000 {
        let card = random_card(&mut rng);
        let spelled = random_spelling(&mut rng, &card);
        let before = random_words(&mut rng);
        let after = random_words(&mut rng);
        let text = format!("{before}: {spelled}, {after}");
        let out = masker.mask(&text).into_string();
        assert!(!out.contains(&spelled), "{text:?} -> {out:?}");
        // Characters are replaced one for one: the card's span is at the same character offset.
        let start = before.chars().count() + 2;
        let span: String = out.chars().skip(start).take(spelled.chars().count()).collect();
        // The last four stay, or nothing when two readings of the digits are both valid cards.
        let all_masked: String = spelled
            .chars()
            .map(|c| if digit_value(c).is_some() { MASK_CHAR } else { c })
            .collect();
        assert!(
            span == masked_keep4(&spelled) || span == all_masked,
            "{text:?} -> {out:?}"
        );
        let normalised: String = out
            .chars()
            .filter_map(digit_value)
            .map(|d| char::from(b'0' + d))
            .collect();
        assert!(!normalised.contains(&card), "{text:?} -> {out:?}");
    }
}

#[test]
fn random_cards_split_across_messages_never_leak() {
    let masker = Masker::default();
    let mut rng = Rng(0x5EED_5678_0000_0002);
    for _ in 0..1500 {
        let card = random_card(&mut rng);
        let spelled = random_spelling(&mut rng, &card);
        let chars: Vec<char> = spelled.chars().collect();
        // Two or three pieces, each non-empty.
        let pieces = 2 + rng.below(2);
        let mut cuts: Vec<usize> = (0..pieces - 1).map(|_| 1 + rng.below(chars.len() - 1)).collect();
        cuts.sort_unstable();
        cuts.dedup();
        let mut lines = Vec::new();
        let mut last = 0;
        for &c in cuts.iter().chain(std::iter::once(&chars.len())) {
            lines.push(chars[last..c].iter().collect::<String>());
            last = c;
        }
        lines[0] = format!("my card is {}", lines[0]);
        let input = lines.join("\n");
        let mut out = Vec::new();
        mask_lines(&masker, Cursor::new(input.as_bytes()), &mut out).unwrap();
        let out = String::from_utf8(out).unwrap();
        let visible: Vec<u8> = out.chars().filter_map(digit_value).collect();
        assert!(visible.len() <= 4, "{input:?} -> {out:?}");
        let last4 = &values(&card)[card.len() - 4..];
        assert!(last4.ends_with(&visible), "{input:?} -> {out:?}");
        assert_eq!(out.lines().count(), lines.len());
    }
}

// ---------------------------------------------------------------- mask_lines

fn run_lines(input: &[u8]) -> (Result<(), MaskIoError>, String) {
    let mut out = Vec::new();
    let res = mask_lines(&Masker::default(), Cursor::new(input), &mut out);
    (res, String::from_utf8(out).unwrap())
}

#[test]
fn mask_lines_prints_the_final_view() {
    let (res, out) = run_lines(b"hello\nmy card 4111 1111\n1111 1111\nok 5555555555554444\r\nbye");
    res.unwrap();
    assert_eq!(out, "hello\nmy card •••• ••••\n•••• 1111\nok ••••••••••••4444\nbye\n");
    let (res, out) = run_lines(b"4111 1111\n1111\n1111\n");
    res.unwrap();
    assert_eq!(out, "•••• ••••\n••••\n1111\n");
    let (res, out) = run_lines(b"");
    res.unwrap();
    assert_eq!(out, "");
    let (res, out) = run_lines(b"\n\n");
    res.unwrap();
    assert_eq!(out, "\n\n");
}

#[test]
fn mask_lines_reports_invalid_utf8_after_printing_earlier_lines() {
    let (res, out) = run_lines(b"fine 4111111111111111\nbad \xff\xfe line\nnever read\n");
    assert!(
        matches!(
            res,
            Err(MaskIoError::InvalidUtf8 {
                line: 2,
                valid_up_to: 4
            })
        ),
        "{res:?}"
    );
    assert_eq!(out, "fine ••••••••••••1111\n");
    let msg = res.unwrap_err().to_string();
    assert!(msg.contains("line 2") && msg.contains("UTF-8"), "{msg}");
}

#[test]
fn mask_lines_refuses_a_huge_line() {
    let mut input = b"first\n".to_vec();
    input.extend(std::iter::repeat_n(b'a', MAX_LINE_BYTES + 10));
    let (res, out) = run_lines(&input);
    assert!(matches!(res, Err(MaskIoError::LineTooLong { line: 2, .. })), "{res:?}");
    assert_eq!(out, "first\n");
    // Exactly the limit is fine.
    let mut input = vec![b'a'; MAX_LINE_BYTES];
    input.extend_from_slice(b"\r\n");
    let (res, out) = run_lines(&input);
    res.unwrap();
    assert_eq!(out.len(), MAX_LINE_BYTES + 1);
}

#[test]
fn mask_lines_reports_write_errors() {
    struct Broken;
    impl std::io::Write for Broken {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("disk full"))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let res = mask_lines(&Masker::default(), Cursor::new(&b"a\nb\n"[..]), Broken);
    assert!(matches!(res, Err(MaskIoError::Io(_))));
}

// ---------------------------------------------------------------- logs

/// A minimal `tracing` subscriber that records every field of every span and event.
struct Capture(Arc<Mutex<String>>);

struct Fields<'a>(&'a mut String);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write;
        let _ = write!(self.0, "{}={:?} ", field.name(), value);
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        span.record(&mut Fields(&mut self.0.lock().unwrap()));
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, values: &tracing::span::Record<'_>) {
        values.record(&mut Fields(&mut self.0.lock().unwrap()));
    }
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut log = self.0.lock().unwrap();
        log.push_str(event.metadata().target());
        log.push(' ');
        event.record(&mut Fields(&mut log));
        log.push('\n');
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[test]
fn logs_never_hold_message_text() {
    let log = Arc::new(Mutex::new(String::new()));
    tracing::subscriber::with_default(Capture(log.clone()), || {
        let masker = Masker::default();
        let mut c = ConversationMasker::new(masker.clone());
        let _ = c.mask(SenderKey(1), "4111 1111 1111 1111 cvv 123 secretword");
        let _ = c.mask(SenderKey(1), "5555 5555");
        let _ = c.mask(SenderKey(1), "5555 4444");
        let _ = masker.mask("DE89 3704 0044 0532 0130 00");
    });
    let log = log.lock().unwrap();
    assert!(log.contains("findings"), "the masker reports counts: {log}");
    for secret in ["4111", "1111", "5555", "4444", "3704", "secretword", "123"] {
        assert!(!log.contains(secret), "{secret} in logs: {log}");
    }
}

// ---------------------------------------------------------------- large and hostile input

/// Large, repetitive inputs built to trip a scanner (long digit runs, separators, keywords, other digit forms)
/// come back whole, one masked character for one, with the card masked, from both maskers. This checks
/// results, not speed: how the cost grows with the input is for `benches/masking.rs`.
#[test]
fn large_hostile_inputs_keep_their_length_and_lose_their_card() {
    let masker = Masker::default();
    let pieces = [
        "cvv 4111111111111111 12/27 123 ".repeat(2000),
        "1 ".repeat(30000),
        "123 ".repeat(20000),
        "4111 1111 1111 1111 ".repeat(3000),
        "DE89 3704 0044 0532 0130 ".repeat(3000),
        "exp cvv 12/27 ".repeat(5000),
        "４".repeat(50000),
        "+1 ".repeat(20000),
    ];
    for text in &pieces {
        let out = masker.mask(text);
        assert_eq!(out.as_str().chars().count(), text.chars().count());
    }
    let out = masker.mask(&pieces[0]);
    assert!(!out.as_str().contains("4111111111111111"));
    let mut c = ConversationMasker::new(masker);
    for text in &pieces {
        let out = c.mask(SenderKey(1), text);
        assert_eq!(out.text.as_str().chars().count(), text.chars().count());
    }
}

#[test]
fn random_text_keeps_invariants() {
    // Characters that exercise every rule: digits of several scripts, separators, slashes, plus signs,
    // letters of IBANs and keywords, URL starts.
    let alphabet: Vec<&str> = vec![
        "0",
        "1",
        "2",
        "3",
        "4",
        "5",
        "6",
        "7",
        "8",
        "9",
        "４",
        "١",
        "٠",
        " ",
        " ",
        "-",
        ".",
        ",",
        "/",
        "+",
        "\u{a0}",
        "\u{3000}",
        "DE",
        "GB82",
        "cvv ",
        "exp ",
        "https://",
        "www.",
        "\n",
        "a",
        "é",
        "•",
        "4111",
        "1111",
        "5555",
        "12/27",
        "123-45-6789",
    ];
    let masker = Masker::default();
    let mut rng = Rng(0xF00D_0000_0000_0007);
    let mut conversation = ConversationMasker::new(masker.clone());
    for round in 0..4000 {
        let len = rng.below(40);
        let text: String = (0..len).map(|_| *rng.pick(&alphabet)).collect();
        let once = masker.mask(&text);
        assert_eq!(once.as_str().chars().count(), text.chars().count(), "{text:?}");
        assert_eq!(masker.mask(once.as_str()), once, "idempotence: {text:?}");
        // Masking only ever replaces characters by the mask character.
        for (a, b) in text.chars().zip(once.as_str().chars()) {
            assert!(a == b || b == MASK_CHAR, "{text:?} -> {once:?}");
        }
        let sender = SenderKey(round % 2);
        let outcome = conversation.mask(sender, &text);
        assert_eq!(outcome.text.as_str().chars().count(), text.chars().count());
        for amendment in outcome.amendments() {
            assert!(amendment.back >= 1);
        }
    }
}

#[test]
fn ambiguous_card_readings_hide_every_digit() {
    // 4111111111111111 is a card, and so is the 19-digit 4111111111111111110: no "last four" is shown.
    assert_eq!(m("4111 1111 1111 1111 110"), "•••• •••• •••• •••• •••");
    // A 19-digit card whose shorter prefixes are not cards keeps its last four.
    assert_eq!(m("4887 6232 8601 2904 049"), "•••• •••• •••• •••4 049");
}

#[test]
fn expiry_right_after_a_card_group() {
    assert_eq!(m("4111 1111 1111 1111 12/27"), "•••• •••• •••• 1111 ••/••");
}

#[test]
fn set_masker_switches_policy_and_keeps_tails() {
    let mut c = ConversationMasker::new(Masker::default());
    let s = SenderKey(3);
    let _ = c.mask(s, "4111 1111");
    let group = Masker::default()
        .with_extra(&[ExtraPattern {
            name: "vip".into(),
            regex: "VIP".into(),
            replacement: None,
        }])
        .unwrap();
    c.set_masker(group);
    assert_eq!(c.masker().extra_patterns().len(), 1);
    let out = c.mask(s, "1111 1111 VIP");
    assert_eq!(out.text.as_str(), "•••• 1111 [vip]");
    assert!(out.amend_previous.is_some());
}

#[test]
fn the_documented_example_holds() {
    // docs/masking.md, section `relaydesk mask`.
    let (res, out) = run_lines(b"my card 4111 1111\n1111 1111\ncvv 123\n");
    res.unwrap();
    assert_eq!(
        out,
        "my card \u{2022}\u{2022}\u{2022}\u{2022} \u{2022}\u{2022}\u{2022}\u{2022}\n\u{2022}\u{2022}\u{2022}\u{2022} 1111\ncvv \u{2022}\u{2022}\u{2022}\n"
    );
}

/// Found by `cargo xtask fuzz` (masking): a masked CVV between two digit groups. The first pass is right: it
/// masks the Visa and the CVV `111` near it, and `4111111111`, `111` and `441111111` (after `+`) hold no
/// card (`4111111111111` fails Luhn). A second pass reads the `•••` as a separator between `4111111111` and
/// `441111111`, a Luhn-valid 19-digit reading, and masks it: masking masked text may mask more, never less.
/// (Reading `•` as a digit instead would let a visitor hide a card behind typed `•` separators.)
#[test]
fn fuzz_regression_remasking_a_masked_cvv_between_groups_only_masks_more() {
    let input = include_bytes!("testdata/fuzz/remask-cvv-between-groups");
    let text = std::str::from_utf8(&input[1..]).unwrap();
    let masker = Masker::default();
    let once = masker.mask(text);
    assert_eq!(once.as_str(), "••••••••••••7958o4111111111#•••+441111111");
    let twice = masker.mask(once.as_str());
    assert_eq!(twice.as_str().chars().count(), once.as_str().chars().count());
    for (a, b) in once.as_str().chars().zip(twice.as_str().chars()) {
        assert!(a == b || b == MASK_CHAR, "{once:?} -> {twice:?}");
    }
}

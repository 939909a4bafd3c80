//! Masking throughput in MB/s per core, beside a plain `memchr` scan of the same text (the floor: no
//! masker can read its input faster than that).
//!
//! Corpora: ordinary chat lines (most without digits, some with small numbers), lines with numbers that
//! are not cards, lines with card numbers (plus CVV/expiry), and card numbers spelled to get past a
//! masker (invisible characters, odd separators, other digit forms). Each goes through the stateless
//! `Masker::mask`, the per-conversation `ConversationMasker::mask` used by chat, and `mask_lines` (what
//! `relaydesk mask` runs: reading lines, masking, writing). Each iteration masks a batch of `LINES` lines.
//!
//! Run: `cargo bench --bench masking`. `cargo test --benches` runs each benchmark once and first checks
//! that no corpus line comes out with a readable card number.

use std::hint::black_box;
use std::io::Cursor;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use relaydesk_signalling::masking::{ConversationMasker, Masker, SenderKey, mask_lines};

/// Messages per iteration.
const LINES: usize = 256;

/// Ordinary chat: mostly words, a few small numbers (quantities, times, an order number).
const CHAT: &[&str] = &[
    "Hello, I ordered a blue jacket last week and it has not arrived yet, can you check for me?",
    "Thanks for waiting! Let me look that up for you, it will only take a moment.",
    "The parcel says delivered but there is nothing at my door, what should I do now?",
    "Bonjour, je voudrais changer l'adresse de livraison de ma commande, s'il vous plaît.",
    "Could you send me a link to reset my password? The email never arrives.",
    "Great, that worked perfectly. Have a nice day and thanks again for your help!",
    "Sure, I can see your order now. It left our warehouse yesterday and should arrive soon.",
    "I would like to return the shoes, they are too small. Is the return free of charge?",
    "Yes, returns are free within thirty days. I will email you a prepaid label right away.",
    "It was 2 items, I think around 3 pm, order 7734.",
];

const NUMBERS: &[&str] = &[
    "My order ORD-2024-001234 was shipped on 2024-03-12, tracking 1Z999AA10123456784.",
    "Total was $1,234.56 (or 1.234,56 EUR), paid on 12/03/2024 at 10:30:45.",
    "Please call me back on +44 20 7946 0958 or (555) 123-4567 after 6 pm.",
    "The router at 192.168.100.200 shows error 503 since version 2.14.7 was installed.",
    "Reference number 12345678901234567890 and invoice 987654321012 are both mine.",
    "I have 3 items, 2 of size 42 and 1 of size 44, order 7734 from 2023.",
];

const CARDS: &[&str] = &[
    "my card is 4111 1111 1111 1111 exp 12/27 cvv 123, please charge it",
    "ok the number: 5555-5555-5555-4444 and the security code is 321",
    "use 378282246310005 valid thru 09/2029 thanks",
    "カード番号は４１１１　１１１１　１１１１　１１１１です",
    "IBAN DE89 3704 0044 0532 0130 00, SSN 123-45-6789",
    "card 6011111111111117 expires 01/30 cvc 9876",
];

/// Card numbers spelled to get past a masker.
const ADVERSARIAL: &[&str] = &[
    "my card 4111\u{200B}1111\u{200B}1111\u{200B}1111 ok",
    "it is 5555 - 5555 - 5555 - 4444, thanks",
    "number: 4111/1111/1111/1111",
    "⁴¹¹¹ ¹¹¹¹ ①①①① 1111",
    "5\u{0301}555\u{00AD}5555\u{FEFF}5555\u{2060}4444",
    "4111\t1111\n1111_1111 · done",
];

/// The card numbers of the corpora (their last four may stay readable, nothing more).
const KNOWN_CARDS: &[&str] = &[
    "4111111111111111",
    "5555555555554444",
    "378282246310005",
    "6011111111111117",
];

fn batch(samples: &[&str]) -> Vec<String> {
    (0..LINES).map(|i| samples[i % samples.len()].to_owned()).collect()
}

/// The check run before measuring (also in `cargo test --benches`): masked, no line holds a known card's
/// digits (after NFKC-like digit reading: every Unicode digit form the masker knows counts).
fn check_no_card_survives(masker: &Masker) {
    for line in CARDS.iter().chain(ADVERSARIAL) {
        let out = masker.mask(line);
        let digits: String = out
            .as_str()
            .chars()
            .filter_map(|c| match c {
                '0'..='9' => Some(c),
                '\u{FF10}'..='\u{FF19}' => char::from_u32(c as u32 - 0xFF10 + 0x30),
                '¹' => Some('1'),
                '⁴' => Some('4'),
                '①' => Some('1'),
                _ => None,
            })
            .collect();
        for card in KNOWN_CARDS {
            assert!(!digits.contains(card), "a card survived masking: {out:?}");
            assert!(
                !digits.contains(&card[..8]),
                "more than the last four survived: {out:?}"
            );
        }
    }
}

fn bench_masking(c: &mut Criterion) {
    let masker = Masker::default();
    check_no_card_survives(&masker);
    for (name, samples) in [
        ("chat", CHAT),
        ("numbers_not_cards", NUMBERS),
        ("cards", CARDS),
        ("adversarial", ADVERSARIAL),
    ] {
        let lines = batch(samples);
        let bytes: usize = lines.iter().map(String::len).sum();
        let input: String = lines.iter().map(|l| format!("{l}\n")).collect();
        let mut group = c.benchmark_group(format!("masking/{name}"));
        group.throughput(Throughput::Bytes(bytes as u64));
        group.bench_function("floor_memchr", |b| {
            b.iter(|| {
                let mut found = 0usize;
                for line in &lines {
                    found += usize::from(memchr::memchr(b'\n', black_box(line.as_bytes())).is_some());
                }
                black_box(found)
            })
        });
        group.bench_function("masker", |b| {
            b.iter(|| {
                for line in &lines {
                    black_box(masker.mask(black_box(line)));
                }
            })
        });
        group.bench_function("conversation", |b| {
            b.iter(|| {
                let mut conversation = ConversationMasker::new(masker.clone());
                for line in &lines {
                    let outcome = conversation.mask(SenderKey(1), black_box(line));
                    black_box(&outcome);
                }
            })
        });
        group.bench_function("mask_lines", |b| {
            let mut out: Vec<u8> = Vec::with_capacity(input.len() * 2);
            b.iter(|| {
                out.clear();
                let done = mask_lines(&masker, Cursor::new(black_box(input.as_bytes())), &mut out);
                assert!(done.is_ok(), "mask_lines failed");
                black_box(out.len())
            })
        });
        group.finish();
    }
}

criterion_group!(benches, bench_masking);
criterion_main!(benches);

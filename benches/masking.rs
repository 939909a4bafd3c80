//! Masking throughput: typical chat lines without digits, lines with numbers that are not cards, and lines
//! with card numbers (plus CVV/expiry), through the stateless `Masker::mask` and the per-conversation
//! `ConversationMasker::mask` used by chat. Each iteration masks a batch of `LINES` messages;
//! messages/s = `LINES` / time per iteration. Run: `cargo bench --bench masking`.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use relaydesk_signalling::masking::{ConversationMasker, Masker, SenderKey};

/// Messages per iteration.
const LINES: usize = 256;

const CHAT: &[&str] = &[
    "Hello, I ordered a blue jacket last week and it has not arrived yet, can you check for me?",
    "Thanks for waiting! Let me look that up for you, it will only take a moment.",
    "The parcel says delivered but there is nothing at my door, what should I do now?",
    "Bonjour, je voudrais changer l'adresse de livraison de ma commande, s'il vous plaît.",
    "Could you send me a link to reset my password? The email never arrives.",
    "Great, that worked perfectly. Have a nice day and thanks again for your help!",
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

fn batch(samples: &[&str]) -> Vec<String> {
    (0..LINES).map(|i| samples[i % samples.len()].to_owned()).collect()
}

fn bench_masking(c: &mut Criterion) {
    let masker = Masker::default();
    for (name, samples) in [
        ("chat_no_digits", CHAT),
        ("numbers_not_cards", NUMBERS),
        ("cards", CARDS),
    ] {
        let lines = batch(samples);
        let bytes: usize = lines.iter().map(String::len).sum();
        let mut group = c.benchmark_group(format!("masking/{name}"));
        group.throughput(Throughput::Bytes(bytes as u64));
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
        group.finish();
    }
}

criterion_group!(benches, bench_masking);
criterion_main!(benches);

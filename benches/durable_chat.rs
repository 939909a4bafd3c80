//! What "acknowledged means durable" costs: committing a chat message (sealed, as the hub does) to the
//! live conversations at rest (`relaydesk_signalling::live_store`) before its echo, on a real file in a
//! temporary directory of the build machine's disk.
//!
//! Cases: one message per transaction (a lone message: the hub's worst case) and 16 per transaction (the
//! hub's group commit when messages arrive while a commit is running), each with SQLite's
//! `synchronous = FULL` (the server's setting: the WAL is fsynced at every commit, so a power loss keeps
//! every acknowledged message) and `NORMAL` (synced only at checkpoints: safe against a crash of the
//! process, not of the machine); plus sealing a message alone (the CPU part). Criterion reports time per
//! transaction; docs/PERFORMANCE.md divides by the messages in it.
//!
//! Run: `cargo bench --bench durable_chat`. `cargo test --benches` runs each case once and first checks
//! that committed messages read back, decrypt, and hold no plaintext at rest.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use relaydesk_signalling::archive::{ArchiveKeys, KeySource};
use relaydesk_signalling::archive_crypto::{ConversationCipher, DataKey};
use relaydesk_signalling::live_store::{self, LiveWrite, NewLiveConversation};
use relaydesk_signalling::store::Db;

const CONVERSATION: u64 = 42;
/// A typical chat message as the hub stores it (JSON of id, time, author, masked body), before sealing.
const MESSAGE: &str = r#"{"id":"42-7","ts":1767225600000,"from":{"role":"visitor"},"party":{"kind":"visitor"},"client_id":"c-7","body":"Hello, I ordered a blue jacket last week and it has not arrived yet, can you check?","amended":false,"file":null}"#;

struct Fixture {
    db: Db,
    keys: ArchiveKeys,
    cipher: ConversationCipher,
    next_seq: u64,
}

fn fixture(dir: &Path, full: bool) -> Fixture {
    let db = Db::open(dir).expect("database");
    db.set_synchronous_full(full).expect("pragma");
    let keys = ArchiveKeys::open(KeySource::File(dir.join("master.key")), &db).expect("keys");
    let key = Arc::new(DataKey::generate().expect("random"));
    let cipher = ConversationCipher::new(&key, CONVERSATION.to_string());
    let state = cipher.seal(0, b"{}").expect("seal");
    let create = LiveWrite::Create(Box::new(NewLiveConversation {
        id: CONVERSATION,
        group: "sales".into(),
        site_key: "pk_bench".into(),
        origin: "https://shop.example".into(),
        started_at_ms: 1,
        resume_hash: [1; 32],
        files_hash: [2; 32],
        key,
        state,
    }));
    live_store::apply(&db, &keys, &[create]).expect("create");
    Fixture {
        db,
        keys,
        cipher,
        next_seq: 1,
    }
}

impl Fixture {
    /// Seals and commits `n` new messages in one transaction.
    fn commit(&mut self, n: usize) {
        let writes: Vec<LiveWrite> = (0..n)
            .map(|_| {
                let seq = self.next_seq;
                self.next_seq += 1;
                LiveWrite::Message {
                    id: CONVERSATION,
                    seq,
                    body: self.cipher.seal(seq, MESSAGE.as_bytes()).expect("seal"),
                }
            })
            .collect();
        live_store::apply(&self.db, &self.keys, &writes).expect("commit");
    }
}

/// Committed messages read back and decrypt; no plaintext is in the database files.
fn check(dir: &Path) {
    let mut f = fixture(dir, true);
    f.commit(3);
    let stored = live_store::load(&f.db, &f.keys).expect("load");
    assert_eq!(stored.len(), 1);
    let conv = &stored[0];
    let key = conv.key.as_ref().expect("key opens");
    let cipher = ConversationCipher::new(key, CONVERSATION.to_string());
    assert_eq!(conv.messages.len(), 3);
    for (seq, sealed) in &conv.messages {
        assert_eq!(cipher.open(*seq, sealed).expect("decrypts"), MESSAGE.as_bytes());
    }
    for name in ["relaydesk.db", "relaydesk.db-wal"] {
        if let Ok(bytes) = std::fs::read(dir.join(name)) {
            assert!(
                !bytes.windows(12).any(|w| w == b"blue jacket "),
                "plaintext at rest in {name}"
            );
        }
    }
}

fn bench_durable_chat(c: &mut Criterion) {
    check(tempfile::tempdir().expect("tempdir").path());
    let mut group = c.benchmark_group("durable_chat");
    for (name, full) in [("full", true), ("normal", false)] {
        for batch in [1usize, 16] {
            let dir = tempfile::tempdir().expect("tempdir");
            let mut f = fixture(dir.path(), full);
            group.bench_function(format!("{name}/{batch}_per_commit"), |b| {
                b.iter(|| f.commit(black_box(batch)))
            });
        }
    }
    let key = DataKey::generate().expect("random");
    let cipher = ConversationCipher::new(&key, "42");
    group.bench_function("seal_only", |b| {
        b.iter(|| black_box(cipher.seal(7, black_box(MESSAGE.as_bytes())).expect("seal")))
    });
    group.finish();
}

criterion_group!(benches, bench_durable_chat);
criterion_main!(benches);

use super::*;
use crate::masking::Masker;
use crate::store::Db;

fn record(id: &str, visitor: &str) -> ConversationRecord {
    ConversationRecord {
        id: id.into(),
        group: "sales".into(),
        site_key_id: "pk_1".into(),
        visitor_id: Redacted::new(visitor.to_string()),
        participants: vec![ArchivedParticipant::visitor("Visitor", 0)],
        started_at: 0,
        ended_at: 10,
        messages: vec![ArchivedMessage {
            seq: 1,
            author: MessageAuthor::Visitor,
            sent_at: 5,
            body: Masker::default().mask("hello"),
            kind: MessageKind::Chat,
            file: None,
        }],
    }
}

#[test]
fn in_call_entries_round_trip_with_their_kind_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open_in_memory().unwrap();
    let keys = ArchiveKeys::open(KeySource::File(dir.path().join("k")), &db).unwrap();
    let masker = Masker::default();
    let file = CallFile {
        size: 3,
        mime: "text/plain".into(),
        sha256: "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".into(),
    };
    let mut r = record("1", "v");
    r.messages.push(ArchivedMessage {
        seq: 2,
        author: MessageAuthor::Agent { user_id: 4 },
        sent_at: 6,
        body: masker.mask("card 4111 1111 1111 1111"),
        kind: MessageKind::CallText,
        file: None,
    });
    r.messages.push(ArchivedMessage {
        seq: 3,
        author: MessageAuthor::Visitor,
        sent_at: 7,
        body: masker.mask("abc.txt"),
        kind: MessageKind::CallFile,
        file: Some(file.clone()),
    });
    keys.store_conversation(&db, &r).unwrap();
    let t = keys.export(&db, "1", &AuditEvent::default()).unwrap();
    let kinds: Vec<MessageKind> = t.messages.iter().map(|m| m.kind).collect();
    assert_eq!(kinds, [MessageKind::Chat, MessageKind::CallText, MessageKind::CallFile]);
    assert_eq!(t.messages[1].body, "card •••• •••• •••• 1111");
    assert_eq!(
        (t.messages[2].body.as_str(), t.messages[2].file.as_ref()),
        ("abc.txt", Some(&file))
    );
    let json: serde_json::Value = serde_json::from_str(&t.to_json_pretty()).unwrap();
    assert_eq!(json["messages"][0]["kind"], "chat");
    assert!(json["messages"][0].get("file").is_none());
    assert_eq!(json["messages"][2]["file"]["sha256"], file.sha256.as_str());
    // The documented example (docs/protocol.md, "Archive") has the fields of real entries, kind by kind.
    let doc = include_str!("../../../docs/protocol.md");
    let start = doc.find("```json transcript").unwrap();
    let block = doc[start..]
        .lines()
        .skip(1)
        .take_while(|l| l.trim() != "```")
        .collect::<Vec<_>>()
        .join("\n");
    let example: serde_json::Value = serde_json::from_str(&block).unwrap();
    let fields = |v: &serde_json::Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(fields(&example), fields(&json));
    let mut shown = Vec::new();
    for m in example["messages"].as_array().unwrap() {
        let real = json["messages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["kind"] == m["kind"])
            .unwrap_or_else(|| panic!("no real entry of kind {}", m["kind"]));
        assert_eq!(fields(m), fields(real), "{m}");
        if let Some(f) = m.get("file") {
            assert_eq!(fields(f), fields(&real["file"]));
        }
        shown.push(m["kind"].as_str().unwrap().to_owned());
    }
    shown.dedup();
    assert!(shown.contains(&"call_text".to_owned()) && shown.contains(&"call_file".to_owned()));
    let text = t.to_text();
    assert!(text.contains("#2 user 4 (in call): card •••• •••• •••• 1111"), "{text}");
    assert!(
        text.contains(&format!(
            "#3 visitor (in call, file): abc.txt (text/plain, 3 bytes, sha256 {})",
            file.sha256
        )),
        "{text}"
    );
    // A call file needs its details, and only a call file has them.
    for (kind, f) in [(MessageKind::CallFile, None), (MessageKind::Chat, Some(file.clone()))] {
        let mut bad = record("2", "v");
        bad.messages[0].kind = kind;
        bad.messages[0].file = f;
        assert!(matches!(
            keys.store_conversation(&db, &bad),
            Err(ArchiveError::Invalid(_))
        ));
    }
    let mut bad = record("3", "v");
    bad.messages[0].kind = MessageKind::CallFile;
    bad.messages[0].file = Some(CallFile {
        sha256: "XYZ".into(),
        ..file
    });
    assert!(matches!(
        keys.store_conversation(&db, &bad),
        Err(ArchiveError::Invalid(_))
    ));
}

#[test]
fn formats_unix_ms_as_rfc3339() {
    assert_eq!(format_unix_ms(0), "1970-01-01T00:00:00.000Z");
    assert_eq!(format_unix_ms(951_782_400_123), "2000-02-29T00:00:00.123Z");
    assert_eq!(format_unix_ms(1_763_758_487_001), "2025-11-21T20:54:47.001Z");
    assert_eq!(format_unix_ms(-1), "1969-12-31T23:59:59.999Z");
    // Extremes do not panic.
    let _ = format_unix_ms(i64::MAX);
    let _ = format_unix_ms(i64::MIN);
}

#[test]
fn retention_cutoff_rules() {
    assert_eq!(retention_cutoff(0, 1_000_000_000_000), None);
    assert_eq!(
        retention_cutoff(1, 1_000_000_000_000),
        Some(1_000_000_000_000 - 86_400_000)
    );
    assert_eq!(retention_cutoff(36_500, i64::MIN + 5), Some(i64::MIN));
}

#[test]
fn record_debug_redacts_the_visitor() {
    let r = record("1", "visitor-secret-id");
    let text = format!("{r:?}");
    assert!(!text.contains("visitor-secret-id"), "{text}");
}

#[test]
fn store_export_in_memory_and_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open_in_memory().unwrap();
    let keys = ArchiveKeys::open(KeySource::File(dir.path().join("k")), &db).unwrap();
    keys.store_conversation(&db, &record("1", "v")).unwrap();
    let t = keys.export(&db, "1", &AuditEvent::default()).unwrap();
    assert_eq!(t.messages[0].body, "hello");
    assert!(matches!(
        keys.store_conversation(&db, &record("1", "v")),
        Err(ArchiveError::Duplicate(_))
    ));
    let mut big = record("2", "v");
    big.messages[0].body = Masker::default().mask(&"a".repeat(MAX_BODY_BYTES + 1));
    assert!(matches!(
        keys.store_conversation(&db, &big),
        Err(ArchiveError::Invalid(_))
    ));
    let mut huge_seq = record("3", "v");
    huge_seq.messages[0].seq = u64::MAX;
    assert!(matches!(
        keys.store_conversation(&db, &huge_seq),
        Err(ArchiveError::Invalid(_))
    ));
    let mut empty_visitor = record("4", "");
    empty_visitor.visitor_id = Redacted::new(String::new());
    assert!(matches!(
        keys.store_conversation(&db, &empty_visitor),
        Err(ArchiveError::Invalid(m)) if m == "visitor id length"
    ));
    assert!(matches!(
        purge_visitor(&db, &Redacted::new(String::new()), "t"),
        Err(ArchiveError::Invalid(_))
    ));
    assert_eq!(purge_visitor(&db, &Redacted::new("v".into()), "t").unwrap(), 1);
    assert!(matches!(
        keys.export(&db, "1", &AuditEvent::default()),
        Err(ArchiveError::NotFound(_))
    ));
    // The cascade removed the rows.
    assert_eq!(db.count_rows("archive_messages"), 0);
}

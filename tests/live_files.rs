//! Files shared in the chat outside a call, over the real HTTPS server: upload by the visitor (bearer
//! `files_token`) and by the agent (cookie + CSRF), the `message` with its `file` reaching both sides with a
//! masked name, downloads byte for byte, the type and size policy, access rules, and the sealed file on
//! disk: never plaintext, gone when the conversation ends.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod live_common;

use live_common::{Live, Ws, assigned_pair};
use relaydesk_signalling::live::LiveParts;
use serde_json::{Value, json};
use sha2::Digest as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

fn hex_sha256(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// A visitor whose `welcome` gave it a files token: (socket, conversation, token).
async fn visitor_with_token(live: &Live, agent: &mut Ws) -> (Ws, String, String) {
    let (v, conv) = assigned_pair(live, agent).await;
    let welcome: Value = v
        .log
        .iter()
        .map(|f| serde_json::from_str::<Value>(f).unwrap())
        .find(|f| f["type"] == "welcome")
        .unwrap_or_else(|| panic!("no welcome in {:?}", v.log));
    let token = welcome["files_token"]
        .as_str()
        .expect("files_token in welcome")
        .to_string();
    (v, conv, token)
}

/// A server taking files up to 256 KiB, three per conversation; alice (agent of sales) with a visitor
/// assigned to her.
struct Shared {
    live: Live,
    alice: common::Client,
    a: Ws,
    v: Ws,
    conv: String,
    http: common::Client,
    bearer: String,
}

async fn shared() -> Shared {
    let live = Live::start(
        |c| {
            c.live.files.max_bytes = 256 * 1024;
            c.live.files.max_per_conversation = 3;
        },
        LiveParts::default(),
    )
    .await;
    let (_, alice) = live.user("alice", "agent", &["sales"]).await;
    let mut a = live.agent(&alice).await;
    let (v, conv, token) = visitor_with_token(&live, &mut a).await;
    let http = live.client();
    Shared {
        live,
        alice,
        a,
        v,
        conv,
        http,
        bearer: format!("Bearer {token}"),
    }
}

/// The visitor uploads a PDF whose name holds a card number: (its bytes, the file as the server describes
/// it).
async fn upload_statement(s: &Shared) -> (Vec<u8>, Value) {
    let mut pdf = b"%PDF-1.7\n".to_vec();
    pdf.extend((0..100_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8));
    let r = s
        .http
        .raw(
            "POST",
            "/api/v1/visitor/files?name=statement%204111%201111%201111%201111.pdf",
            &[("authorization", &s.bearer), ("content-type", "application/pdf")],
            pdf.clone(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    (pdf, r.json())
}

/// The name of the statement once masked: exactly the card's last four survive, separators in place
/// (docs/masking.md, "Card format").
fn masked_statement() -> String {
    let dots = "\u{2022}".repeat(4);
    format!("statement {dots} {dots} {dots} 1111.pdf")
}

#[tokio::test]
async fn a_visitors_file_reaches_both_sides_checked_with_its_name_masked() {
    let mut s = shared().await;
    let (pdf, file) = upload_statement(&s).await;
    assert_eq!(file["sha256"], hex_sha256(&pdf));
    assert_eq!(file["size"], pdf.len());
    assert_eq!(file["mime"], "application/pdf");
    assert_eq!(file["name"], masked_statement().as_str());
    let id = file["id"].as_str().unwrap();

    // Both sides get it in the chat, in order, with the masked name only.
    let m = s.a.expect("message").await;
    assert_eq!(
        (m["file"]["id"].as_str(), m["body"].as_str()),
        (Some(id), Some(masked_statement().as_str()))
    );
    assert_eq!(m["from"]["role"], "visitor");
    assert_eq!(s.v.expect("message").await["file"]["sha256"], hex_sha256(&pdf));
    assert!(
        !s.a.log.iter().any(|f| f.contains("4111 ")),
        "no frame to the agent holds the first digits"
    );
}

#[tokio::test]
async fn a_shared_file_is_downloaded_whole_by_the_agent_and_supervisors_of_its_group_only() {
    let s = shared().await;
    let (_, bob) = s.live.user("bob", "agent", &["sales"]).await;
    let (_, sam) = s.live.user("sam", "supervisor", &["sales"]).await;
    let (pdf, file) = upload_statement(&s).await;
    let id = file["id"].as_str().unwrap();
    let r = s.alice.get(&format!("/api/v1/agent/files/{id}")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, pdf);
    assert_eq!(r.header("content-type").as_deref(), Some("application/octet-stream"));
    assert_eq!(r.header("x-content-type-options").as_deref(), Some("nosniff"));
    assert!(r.header("content-disposition").unwrap().starts_with("attachment;"));
    let _s = s.live.agent(&sam).await;
    assert_eq!(sam.get(&format!("/api/v1/agent/files/{id}")).await.body, pdf);
    let _b = s.live.agent(&bob).await;
    assert_eq!(bob.get(&format!("/api/v1/agent/files/{id}")).await.status, 404);
    assert_eq!(
        s.live.client().get(&format!("/api/v1/agent/files/{id}")).await.status,
        401
    );
}

#[tokio::test]
async fn a_shared_file_is_sealed_at_rest_and_deleted_with_the_conversation() {
    let mut s = shared().await;
    let (pdf, file) = upload_statement(&s).await;
    let id = file["id"].as_str().unwrap();

    // On disk: one sealed file, no plaintext.
    let files_dir = s.live.dir.join("files");
    let on_disk = std::fs::read(files_dir.join(id)).unwrap();
    assert!(on_disk.len() > pdf.len());
    assert!(
        !on_disk.windows(9).any(|w| w == b"%PDF-1.7\n"),
        "the file is sealed at rest"
    );

    // The conversation ends: the files are gone (and their keys with them).
    s.v.send(json!({"type": "end"})).await;
    let ended = s.live.next_ended().await;
    assert!(
        ended.messages.iter().any(|m| m.body.as_str() == masked_statement()),
        "the transcript keeps the masked name"
    );
    assert_eq!(s.alice.get(&format!("/api/v1/agent/files/{id}")).await.status, 404);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::fs::read_dir(&files_dir).unwrap().next().is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "sealed files left in {files_dir:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// The agent's upload route in the conversation (cookie + CSRF).
fn agent_upload_path(s: &Shared) -> String {
    format!("/api/v1/agent/conversations/{}/files?name=note.txt", s.conv)
}

/// Alice uploads a text file in the conversation, with her cookie and the CSRF header.
async fn agent_upload(s: &Shared, body: Vec<u8>) -> common::Resp {
    s.alice
        .raw(
            "POST",
            &agent_upload_path(s),
            &[("content-type", "text/plain"), ("x-relaydesk-csrf", "1")],
            body,
        )
        .await
}

#[tokio::test]
async fn the_agent_shares_a_file_the_visitor_downloads_with_its_token() {
    let mut s = shared().await;
    let note = "Your reference is 12345".as_bytes().to_vec();
    let r = agent_upload(&s, note.clone()).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let back = r.json()["id"].as_str().unwrap().to_string();
    let m =
        s.v.expect_where(|f| f["type"] == "message" && f["file"]["id"] == back.as_str())
            .await;
    assert_eq!(m["from"]["role"], "agent");
    let r = s
        .http
        .raw(
            "GET",
            &format!("/api/v1/visitor/files/{back}"),
            &[("authorization", &s.bearer)],
            vec![],
        )
        .await;
    assert_eq!((r.status, r.body.clone()), (200, note));
}

/// A visitor upload with `headers` (name `x`).
async fn visitor_upload(s: &Shared, headers: &[(&str, &str)], body: Vec<u8>) -> common::Resp {
    s.http.raw("POST", "/api/v1/visitor/files?name=x", headers, body).await
}

#[tokio::test]
async fn refused_uploads_and_downloads_get_a_clear_error() {
    let s = shared().await;
    let (_, bob) = s.live.user("bob", "agent", &["sales"]).await;
    let auth = ("authorization", s.bearer.as_str());
    let png = ("content-type", "image/png");
    let r = visitor_upload(&s, &[auth, png], b"MZ\x90\x00 not a picture".to_vec()).await;
    assert_eq!((r.status, r.error_code()), (415, "file_refused".to_string()));
    let r = visitor_upload(&s, &[auth, ("content-type", "text/html")], b"<script>".to_vec()).await;
    assert_eq!((r.status, r.error_code()), (415, "file_refused".to_string()));
    let r = visitor_upload(&s, &[auth, png], vec![7; 256 * 1024 + 1]).await;
    assert_eq!((r.status, r.error_code()), (413, "too_large".to_string()));
    let r = visitor_upload(
        &s,
        &[("authorization", "Bearer nope"), png],
        b"\x89PNG\r\n\x1a\n".to_vec(),
    )
    .await;
    assert_eq!(r.status, 401);
    let r = visitor_upload(&s, &[png], b"\x89PNG\r\n\x1a\n".to_vec()).await;
    assert_eq!(r.status, 401);
    let path = agent_upload_path(&s);
    let r = s
        .alice
        .raw("POST", &path, &[("content-type", "text/plain")], b"no csrf".to_vec())
        .await;
    assert_eq!((r.status, r.error_code()), (403, "csrf".to_string()));
    let r = bob
        .raw(
            "POST",
            &path,
            &[("content-type", "text/plain"), ("x-relaydesk-csrf", "1")],
            b"hi".to_vec(),
        )
        .await;
    assert_eq!(r.status, 403, "only the conversation's agent uploads");
    let r = s
        .http
        .raw(
            "GET",
            "/api/v1/visitor/files/..%2F..%2Fetc%2Fpasswd",
            &[("authorization", &s.bearer)],
            vec![],
        )
        .await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn files_per_conversation_count_both_sides_but_not_refused_uploads() {
    let s = shared().await;
    let auth = ("authorization", s.bearer.as_str());
    let png = ("content-type", "image/png");
    let tiny = b"\x89PNG\r\n\x1a\n tiny".to_vec();
    let r = visitor_upload(&s, &[auth, png], tiny.clone()).await;
    assert_eq!(r.status, 201, "{}", r.text());
    // Refused: a type that does not match, a file over the size limit.
    let r = visitor_upload(&s, &[auth, png], b"MZ\x90\x00 not a picture".to_vec()).await;
    assert_eq!(r.status, 415);
    let r = visitor_upload(&s, &[auth, png], vec![7; 256 * 1024 + 1]).await;
    assert_eq!(r.status, 413);
    // The agent's files count too: one from the agent and one more from the visitor fit (the limit is
    // three per conversation), a fourth does not.
    let r = agent_upload(&s, b"from the agent".to_vec()).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = visitor_upload(&s, &[auth, png], tiny.clone()).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = visitor_upload(&s, &[auth, png], tiny).await;
    assert_eq!(
        (r.status, r.error_code()),
        (413, "too_large".to_string()),
        "{}",
        r.text()
    );
}

#[tokio::test]
async fn a_file_download_is_checked_against_the_stored_groups_not_an_open_socket() {
    let live = Live::quick().await;
    let (_, alice) = live.user("alice", "agent", &["sales"]).await;
    let (sam_id, sam) = live.user("sam", "supervisor", &["sales"]).await;
    let mut a = live.agent(&alice).await;
    let (_v, _conv, token) = visitor_with_token(&live, &mut a).await;
    let pdf = b"%PDF-1.7\nhello".to_vec();
    let r = live
        .client()
        .raw(
            "POST",
            "/api/v1/visitor/files?name=a.pdf",
            &[
                ("authorization", &format!("Bearer {token}")),
                ("content-type", "application/pdf"),
            ],
            pdf.clone(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    // Sam supervises sales and has his console open: he may download it.
    let mut s = live.agent(&sam).await;
    assert_eq!(sam.get(&format!("/api/v1/agent/files/{id}")).await.body, pdf);
    // He leaves sales in the store alone, as the offline command line changes it (no admin API call).
    live.store_update(sam_id, |u| u.groups = Some(vec!["billing".into()]));
    // His next request is refused, whatever his socket was opened with; the socket itself is closed.
    assert_eq!(sam.get(&format!("/api/v1/agent/files/{id}")).await.status, 404);
    assert_eq!(s.closed().await, live_common::Closed::Code(4410));
}

/// Sends the head of a visitor upload with `Expect: 100-continue` and waits for `100 Continue`: the server
/// has authorised the upload and taken its file slot, and waits for the body.
async fn held_upload(http: &common::Client, bearer: &str, len: usize) -> TlsStream {
    let mut s = http.connect_tls().await;
    let head = format!(
        "POST /api/v1/visitor/files?name=held.txt HTTP/1.1\r\nhost: x\r\nauthorization: {bearer}\r\n\
         content-type: text/plain\r\ncontent-length: {len}\r\nexpect: 100-continue\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 100"), "{head}");
    s
}

type TlsStream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// Reads one response head (up to the blank line), bounded in time and size.
async fn read_head(s: &mut TlsStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert!(head.len() < 16 * 1024, "response head too long");
        let n = tokio::time::timeout(common::IO_TIMEOUT, s.read(&mut byte))
            .await
            .expect("response head in time")
            .unwrap();
        assert_eq!(
            n,
            1,
            "connection closed in the head: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

#[tokio::test]
async fn an_upload_takes_its_file_slot_before_its_body_and_names_are_checked() {
    let live = Live::start(|c| c.live.files.max_per_conversation = 3, LiveParts::default()).await;
    let (_, alice) = live.user("alice", "agent", &["sales"]).await;
    let mut a = live.agent(&alice).await;
    let (_v, _conv, token) = visitor_with_token(&live, &mut a).await;
    let http = live.client();
    let bearer = format!("Bearer {token}");
    let upload = |name: &'static str, mime: &'static str, body: &'static [u8]| {
        let (http, bearer) = (http.clone(), bearer.clone());
        async move {
            let path = format!("/api/v1/visitor/files?name={name}");
            let h = [("authorization", bearer.as_str()), ("content-type", mime)];
            http.raw("POST", &path, &h, body.to_vec()).await
        }
    };

    // Names: a bidi override cannot hide a program's extension, and is gone from a name that passes.
    let r = upload("invoice%E2%80%AEfdp.exe", "application/pdf", b"%PDF-1.7").await;
    assert_eq!(
        (r.status, r.error_code()),
        (415, "file_refused".to_string()),
        "{}",
        r.text()
    );
    let r = upload("page.html", "text/plain", b"<script>").await;
    assert_eq!((r.status, r.error_code()), (415, "file_refused".to_string()));
    let r = upload("photo.pdf", "image/png", b"\x89PNG\r\n\x1a\n").await;
    assert_eq!((r.status, r.error_code()), (415, "file_refused".to_string()));
    let r = upload("blob", "application/octet-stream", b"\x00\x01").await;
    assert_eq!((r.status, r.error_code()), (415, "file_refused".to_string()));
    let r = upload("re%E2%80%AEport%E2%80%8B.pdf", "application/pdf", b"%PDF-1.7").await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["name"], "report.pdf");
    let r = upload("notes", "text/plain", b"plain").await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["name"], "notes.txt");

    // One slot left: a held upload takes it before its body is read, so a complete one is refused
    // at once, while the held body is still to come.
    let mut held = held_upload(&http, &bearer, 5).await;
    let r = upload("late.txt", "text/plain", b"late").await;
    assert_eq!(
        (r.status, r.error_code()),
        (413, "too_large".to_string()),
        "{}",
        r.text()
    );
    // A second held upload is refused before its body too.
    let mut refused = http.connect_tls().await;
    let head = format!(
        "POST /api/v1/visitor/files?name=b.txt HTTP/1.1\r\nhost: x\r\nauthorization: {bearer}\r\n\
         content-type: text/plain\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n"
    );
    refused.write_all(head.as_bytes()).await.unwrap();
    let head = read_head(&mut refused).await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");

    // A client that goes away gives its slot back: a complete upload then gets it (bounded retries, as
    // the server learns of the closed connection on its own time).
    drop(held);
    let mut attempts = 0;
    loop {
        let r = upload("again.txt", "text/plain", b"again").await;
        if r.status == 201 {
            break;
        }
        assert_eq!(r.status, 413, "{}", r.text());
        attempts += 1;
        assert!(attempts < 500, "the abandoned upload's slot was never given back");
        tokio::task::yield_now().await;
    }
    // The conversation is full now: a held upload is refused before its body...
    let r = upload("full.txt", "text/plain", b"full").await;
    assert_eq!(r.status, 413);
    // ...and a held upload that completes is a file like any other (in a fresh conversation).
    let (_v2, _conv2, token2) = visitor_with_token(&live, &mut a).await;
    let bearer2 = format!("Bearer {token2}");
    held = held_upload(&http, &bearer2, 5).await;
    held.write_all(b"hello").await.unwrap();
    let head = read_head(&mut held).await;
    assert!(head.starts_with("HTTP/1.1 201"), "{head}");
}

/// A server with `tweak`, an agent and an assigned visitor: (server, agent socket, visitor socket, HTTP client,
/// the visitor's `Authorization` value for the file routes).
async fn files_visitor(
    tweak: impl FnOnce(&mut relaydesk_signalling::config::Config),
) -> (Live, Ws, Ws, common::Client, String) {
    let live = Live::start(tweak, LiveParts::default()).await;
    let (_, alice) = live.user("alice", "agent", &["sales"]).await;
    let mut a = live.agent(&alice).await;
    let (v, _conv, token) = visitor_with_token(&live, &mut a).await;
    let http = live.client();
    (live, a, v, http, format!("Bearer {token}"))
}

#[tokio::test]
async fn a_conversation_over_its_file_byte_budget_refuses_uploads() {
    let (live, _a, _v, http, bearer) = files_visitor(|c| c.live.limits.max_file_bytes_per_conversation = 1000).await;
    let send = |len: usize| {
        let http = http.clone();
        let bearer = bearer.clone();
        async move {
            let headers = [("authorization", bearer.as_str()), ("content-type", "text/plain")];
            http.raw("POST", "/api/v1/visitor/files?name=f.txt", &headers, vec![b'a'; len])
                .await
        }
    };
    assert_eq!(send(600).await.status, 201);
    // 600 + 600 is over the budget: refused, and nothing is kept for it.
    let r = send(600).await;
    assert_eq!(
        (r.status, r.error_code()),
        (413, "too_large".to_string()),
        "{}",
        r.text()
    );
    assert_eq!(send(400).await.status, 201, "what fits still fits");
    let r = send(1).await;
    assert_eq!((r.status, r.error_code()), (413, "too_large".to_string()));
    // The refused upload's file is deleted (asynchronously): wait for it, bounded.
    let count = || std::fs::read_dir(live.dir.join("files")).map_or(0, |d| d.count());
    let cleaned = tokio::time::timeout(live_common::FRAME_TIMEOUT, async {
        while count() != 2 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(cleaned.is_ok(), "the refused upload left its file on disk: {}", count());
}

#[tokio::test]
async fn uploads_in_progress_are_bounded_per_conversation_and_per_server() {
    // (limits, status and code of a second upload while one is in progress)
    let cases: [(usize, usize, u16, &str); 2] = [(1, 16, 429, "too_many_uploads"), (2, 1, 503, "busy")];
    for (per_conversation, per_server, status, code) in cases {
        let (_live, _a, _v, http, bearer) = files_visitor(|c| {
            c.live.limits.max_uploads_per_conversation = per_conversation;
            c.live.limits.max_concurrent_uploads = per_server;
        })
        .await;
        let upload = || {
            let (http, bearer) = (http.clone(), bearer.clone());
            async move {
                let h = [("authorization", bearer.as_str()), ("content-type", "text/plain")];
                http.raw("POST", "/api/v1/visitor/files?name=x.txt", &h, b"hello".to_vec())
                    .await
            }
        };
        // An upload whose body the server waits for holds its place (its body would be held in memory).
        let held = held_upload(&http, &bearer, 1000).await;
        let r = upload().await;
        assert_eq!((r.status, r.error_code().as_str()), (status, code), "{}", r.text());
        assert!(r.header("retry-after").is_some());
        // The held client goes away: its place is released.
        drop(held);
        let stored = live_common::until_status(upload, 201, status).await;
        assert!(stored, "the dropped upload released its place");
    }
}

#[tokio::test]
async fn a_card_number_split_between_messages_and_file_names_is_masked_everywhere() {
    let live = Live::start(|_| {}, LiveParts::default()).await;
    let (_, alice) = live.user("alice", "agent", &["sales"]).await;
    let mut a = live.agent(&alice).await;
    let (mut v, _conv, token) = visitor_with_token(&live, &mut a).await;
    let http = live.client();
    let bearer = format!("Bearer {token}");
    let upload = |name: &'static str| {
        let http = http.clone();
        let bearer = bearer.clone();
        async move {
            let r = http
                .raw(
                    "POST",
                    &format!("/api/v1/visitor/files?name={name}"),
                    &[("authorization", &bearer), ("content-type", "text/plain")],
                    b"hello".to_vec(),
                )
                .await;
            assert_eq!(r.status, 201, "{}", r.text());
            r.json()
        }
    };

    // A message, then a file name: the name completes the card, the message is amended.
    v.send(json!({"type": "message", "client_id": "f1", "body": "my card 4111 1111"}))
        .await;
    let first = a.expect("message").await;
    assert_eq!(first["body"], "my card 4111 1111");
    let file = upload("1111%201111.txt").await;
    assert_eq!(file["name"], "\u{2022}\u{2022}\u{2022}\u{2022} 1111.txt");
    let m = a.expect("message").await;
    assert_eq!(m["file"]["name"], "\u{2022}\u{2022}\u{2022}\u{2022} 1111.txt");
    let amended = a.expect("message_amended").await;
    assert_eq!(
        (amended["id"].clone(), amended["body"].clone()),
        (
            first["id"].clone(),
            json!("my card \u{2022}\u{2022}\u{2022}\u{2022} \u{2022}\u{2022}\u{2022}\u{2022}")
        )
    );
    assert!(v.expect("message_amended").await["body"].as_str().is_some());

    // Over two file names, with a zero-width space: the first file's name is amended.
    let one = upload("5555%E2%80%8B5555%205555.txt").await;
    let one_id = one["id"].as_str().unwrap().to_string();
    let _ = a
        .expect_where(|f| f["type"] == "message" && f["file"]["id"] == one_id.as_str())
        .await;
    let _two = upload("4444.txt").await;
    let amended = a.expect_where(|f| f["type"] == "message_amended").await;
    let body = amended["body"].as_str().unwrap();
    assert!(!body.contains("5555"), "{body}");
    assert!(
        !a.log.iter().any(|f| f.contains("5555\u{200b}5555")),
        "the agent never saw the number"
    );
}

//! No card number reaches the logs during a chat with cards (every level, every target, captured in-process).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod live_common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use live_common::Live;
use serde_json::json;

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn no_card_number_in_the_logs() {
    let buf = Buffer::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let mut live = Live::quick().await;
    let (_, alice) = live.user("alice", "agent", &["sales"]).await;
    let mut a = live.agent(&alice).await;
    let (mut v, welcome) = live.visitor().await;
    let resume_token = welcome["resume_token"].as_str().unwrap().to_string();
    // A replayed session token is refused and logged, without the token.
    let token = live.token().await;
    let path = format!("/api/v1/visitor/ws?token={token}");
    let _used = live.ws(&path, Some(live_common::SHOP), None).await.unwrap();
    assert_eq!(live.ws(&path, Some(live_common::SHOP), None).await.err(), Some(401));
    let conv = welcome["conversation"].as_str().unwrap().to_string();
    a.expect("offered").await;
    a.send(json!({"type": "accept", "conversation": conv})).await;
    a.expect("assigned").await;
    let cards = [
        "4111 1111 1111 1111",
        "5500-0000-0000-0004",
        "378282246310005",
        "４１１１１１１１１１１１１１１１",
    ];
    for (i, card) in cards.iter().enumerate() {
        v.send(json!({"type": "message", "client_id": format!("v{i}"), "body": format!("card {card} please")}))
            .await;
        a.expect("message").await;
    }
    v.send(json!({"type": "message", "client_id": "s1", "body": "6011 1111"}))
        .await;
    a.expect("message").await;
    v.send(json!({"type": "message", "client_id": "s2", "body": "1111 1117"}))
        .await;
    a.expect("message_amended").await;
    a.send(json!({"type": "message", "conversation": conv, "client_id": "a1", "body": "you wrote 4111111111111111?"}))
        .await;
    v.expect("message").await;
    // Refused frames are logged without their content too.
    v.send_text(r#"{"type":"message","client_id":"x","body":"4111111111111111","oops":1}"#.to_string())
        .await;
    v.expect("error").await;
    a.send(json!({"type": "end", "conversation": conv})).await;
    live.next_ended().await;
    let server = live.server.take().unwrap();
    server.shutdown().await.unwrap();

    let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.contains("conversation ended"),
        "logs were captured: {} bytes",
        text.len()
    );
    let digits: String = text.chars().filter(|c| c.is_ascii_digit() || *c == '\n').collect();
    for needle in [
        "4111111111111111",
        "5500000000000004",
        "378282246310005",
        "6011111111111117",
    ] {
        assert!(!digits.contains(needle), "card {needle} in the logs");
    }
    for needle in ["4111 1111", "5500-0000", "４１１１", "6011 1111", "1111 1117"] {
        assert!(!text.contains(needle), "{needle} in the logs");
    }
    assert!(!text.contains("please"), "message bodies are never logged");
    assert!(text.contains("visitor token refused"), "the refusal is logged");
    assert!(!text.contains(&token), "session tokens are never logged");
    assert!(!text.contains(&resume_token), "resume tokens are never logged");
}

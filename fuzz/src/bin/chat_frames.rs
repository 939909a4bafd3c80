//! WebSocket text frames of the visitor and agent protocols (`chat_protocol::parse_frame` into
//! `VisitorToServer` and `AgentToServer`, then the checks of a chat message).
//!
//! Properties: no panic; a frame that parses serialises back to JSON that parses to the same value; an
//! error's text is short ASCII that never quotes the frame (no run of 6 or more digits: positions in a
//! frame of at most 16 KiB have 5, a card number has 13 or more).
#![no_main]

use libfuzzer_sys::fuzz_target;
use relaydesk_fuzz::{longest_digit_run, text};
use relaydesk_signalling::chat_protocol::{
    AgentToServer, MAX_BODY_BYTES, MAX_FRAME_BYTES, ProtocolError, VisitorToServer, check_chat_message, parse_frame,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

fn check<T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug>(frame: &str) -> Option<T> {
    match parse_frame::<T>(frame, MAX_FRAME_BYTES) {
        Ok(value) => {
            let again = serde_json::to_string(&value).expect("a parsed frame serialises");
            let back: T = parse_frame(&again, usize::MAX).expect("a serialised frame parses");
            assert_eq!(back, value, "round trip changed the frame");
            Some(value)
        }
        Err(e) => {
            let shown = e.to_string();
            assert!(shown.is_ascii() && shown.len() <= 200, "error text: {shown:?}");
            assert!(longest_digit_run(&shown) < 6, "error quotes the frame: {shown:?}");
            if let ProtocolError::TooLarge { len, max } = e {
                assert!(len > max && frame.len() > MAX_FRAME_BYTES);
            }
            None
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(frame) = text(data) else { return };
    if let Some(VisitorToServer::Message { client_id, body }) = check::<VisitorToServer>(frame) {
        let _ = check_chat_message(&client_id, &body, MAX_BODY_BYTES);
    }
    if let Some(AgentToServer::Message { client_id, body, .. }) = check::<AgentToServer>(frame) {
        let _ = check_chat_message(&client_id, &body, MAX_BODY_BYTES);
    }
});

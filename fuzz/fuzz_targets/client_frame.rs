//! A client's WebSocket text frame, read as the gateway reads it (`gateway/frames.rs`):
//! `ClientFrame::parse`, then the cursor of a `hello` or an `ack`.
//!
//! Properties: the hand-written readers of the common frames agree with the derived reading;
//! a frame that parses re-serialises to JSON that parses to the same frame; a refused frame
//! says why, and echoes a string `client_id` as `ref`.

#![no_main]

use confab_protocol::ClientFrame;
use confab_server::gateway::parse_cursor;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // A text frame is UTF-8 by the time it reaches the parser (the socket closes on bad UTF-8).
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let derived = serde_json::from_str::<ClientFrame>(text).ok();
    match ClientFrame::parse(text) {
        Ok(frame) => {
            assert_eq!(
                derived.as_ref(),
                Some(&frame),
                "fast and derived readings differ"
            );
            let json = serde_json::to_string(&frame).expect("a frame serialises");
            let again = ClientFrame::parse(&json)
                .unwrap_or_else(|e| panic!("{json} does not parse back: {}", e.message));
            assert_eq!(again, frame, "{json} parses to another frame");
            match &frame {
                ClientFrame::Hello {
                    cursor: Some(cursor),
                    ..
                }
                | ClientFrame::Ack { cursor } => {
                    let _ = parse_cursor(cursor);
                }
                _ => {}
            }
        }
        Err(e) => {
            assert_eq!(
                derived, None,
                "the derived reading accepts what parse refuses"
            );
            assert!(!e.message.is_empty(), "an error says why");
            let value = serde_json::from_str::<serde_json::Value>(text).ok();
            let client_id = value
                .as_ref()
                .and_then(|v| v.get("client_id"))
                .and_then(|c| c.as_str());
            assert_eq!(
                e.reference.as_deref(),
                client_id,
                "`ref` echoes the client_id"
            );
        }
    }
});

//! Stream cursors as `hello` and `ack` carry them, read by `gateway::parse_cursor`.
//!
//! Properties: a cursor that reads is the canonical decimal of its position (one spelling per
//! position, as the server writes them) and a position the store can hold (at most 2^63-1);
//! every position the server can write reads back.

#![no_main]

use confab_server::gateway::parse_cursor;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data)
        && let Some(pos) = parse_cursor(s)
    {
        assert_eq!(
            pos.to_string(),
            s,
            "{s:?} reads as {pos} but is not its spelling"
        );
        assert!(
            pos <= i64::MAX as u64,
            "{s:?}: a position past 2^63-1 reads"
        );
    }
    if let Some(bytes) = data.first_chunk::<8>() {
        let pos = u64::from_le_bytes(*bytes) >> 1;
        assert_eq!(parse_cursor(&pos.to_string()), Some(pos));
    }
});

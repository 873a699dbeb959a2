//! Cursors as `hello` and `ack` carry them: a stream position, or a group message's
//! `POS.GROUP.SEQ`, read by `confab_protocol::Cursor::parse` (and `gateway::parse_cursor`,
//! the stream position of either).
//!
//! Properties: a cursor that reads is the canonical spelling of what it names (one spelling per
//! cursor, as the server writes them), every number in it is one the store can hold (at most
//! 2^63-1), and every cursor the server can write reads back.

#![no_main]

use confab_protocol::{Cursor, GroupCursor, Id};
use confab_server::gateway::parse_cursor;
use libfuzzer_sys::fuzz_target;

const MAX: u64 = i64::MAX as u64;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let cursor = Cursor::parse(s);
        assert_eq!(parse_cursor(s), cursor.map(Cursor::pos), "{s:?}");
        match cursor {
            Some(Cursor::Stream(pos)) => {
                assert_eq!(pos.to_string(), s, "{s:?} reads as {pos} but is not its spelling");
                assert!(pos <= MAX, "{s:?}: a position past 2^63-1 reads");
            }
            Some(Cursor::Group(g)) => {
                assert_eq!(g.to_string(), s, "{s:?} reads as {g} but is not its spelling");
                assert!(
                    g.pos <= MAX && g.group.0 <= MAX && g.seq <= MAX,
                    "{s:?}: a number past 2^63-1 reads"
                );
            }
            None => {}
        }
    }
    if let Some(bytes) = data.first_chunk::<24>() {
        let n = |i: usize| {
            let mut b = [0; 8];
            b.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
            u64::from_le_bytes(b) >> 1
        };
        let (pos, group, seq) = (n(0), n(1), n(2));
        assert_eq!(parse_cursor(&pos.to_string()), Some(pos));
        let g = GroupCursor {
            pos,
            group: Id(group),
            seq,
        };
        assert_eq!(Cursor::parse(&g.to_string()), Some(Cursor::Group(g)));
    }
});

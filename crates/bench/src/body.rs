//! What a benchmark message carries, so the recipient (in the same process) can tell which run
//! and which send it is and how late it arrived, without any shared state with the sender.
//!
//! Body layout, all lowercase hex, then padding to the requested size:
//! `RRRRRRRR SSSSSSSS IIIIIIIIIIIIIIII WWWWWWWWWWWWWWWW .....` (without the spaces) where `R` is
//! the run id, `S` the sender's sequence number, `I` the intended send time and `W` the actual
//! write time, both in nanoseconds since the run's shared start `Instant`.

/// Bytes of a body taken by the stamp; `--body` may not be smaller.
pub const STAMP_LEN: usize = 8 + 8 + 16 + 16;

/// The fields a benchmark message body carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    /// Random per run: a message from an earlier run (replayed by catch-up) is not counted.
    pub run: u32,
    /// The sender's sequence number within the run, from 0.
    pub seq: u32,
    /// When the open-loop schedule meant the message to leave (ns since the run's start).
    pub intended_ns: u64,
    /// When the sender actually wrote it (ns since the run's start).
    pub written_ns: u64,
}

/// Writes `stamp` into `out` (cleared first), padded with `.` to `len` bytes (at least
/// [`STAMP_LEN`]).
pub fn encode(stamp: &Stamp, len: usize, out: &mut String) {
    use std::fmt::Write;
    out.clear();
    // Writing to a String cannot fail.
    let _ = write!(
        out,
        "{:08x}{:08x}{:016x}{:016x}",
        stamp.run, stamp.seq, stamp.intended_ns, stamp.written_ns
    );
    while out.len() < len {
        out.push('.');
    }
}

/// Reads a stamp back; `None` for a body that is not a benchmark message.
pub fn decode(body: &str) -> Option<Stamp> {
    let hex32 = |range: std::ops::Range<usize>| {
        body.get(range)
            .and_then(|s| u32::from_str_radix(s, 16).ok())
    };
    let hex64 = |range: std::ops::Range<usize>| {
        body.get(range)
            .and_then(|s| u64::from_str_radix(s, 16).ok())
    };
    Some(Stamp {
        run: hex32(0..8)?,
        seq: hex32(8..16)?,
        intended_ns: hex64(16..32)?,
        written_ns: hex64(32..48)?,
    })
}

/// The `client_id` of message `seq` of run `run`. The run is in it because `client_id`s are
/// unique per sender forever: reusing `seq` alone across runs on the same accounts would be
/// deduplicated by the server as a retry, and nothing new would be delivered.
pub fn client_id(run: u32, seq: u32) -> String {
    format!("{run:08x}-{seq:x}")
}

/// The run and sequence number of a [`client_id`]; `None` for anything else.
pub fn parse_client_id(id: &str) -> Option<(u32, u32)> {
    let (run, seq) = id.split_once('-')?;
    if run.len() != 8 {
        return None;
    }
    Some((
        u32::from_str_radix(run, 16).ok()?,
        u32::from_str_radix(seq, 16).ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_round_trips_and_pads_to_the_size() {
        let stamp = Stamp {
            run: 0xdead_beef,
            seq: 7,
            intended_ns: 1_234_567_890_123,
            written_ns: u64::MAX,
        };
        let mut body = String::new();
        encode(&stamp, 100, &mut body);
        assert_eq!(body.len(), 100);
        assert!(body.is_ascii());
        assert_eq!(decode(&body), Some(stamp));
        // The minimum size is exactly the stamp.
        encode(&stamp, 0, &mut body);
        assert_eq!(body.len(), STAMP_LEN);
        assert_eq!(decode(&body), Some(stamp));
    }

    #[test]
    fn foreign_bodies_are_not_stamps() {
        assert_eq!(decode("hello"), None);
        assert_eq!(decode(&"z".repeat(64)), None);
        assert_eq!(decode(""), None);
        // Multi-byte UTF-8 where a hex digit should be must not panic.
        assert_eq!(decode(&"é".repeat(40)), None);
    }

    #[test]
    fn client_ids_carry_run_and_seq() {
        let id = client_id(0x0000_00ab, 0x1234);
        assert_eq!(id, "000000ab-1234");
        assert!(id.len() <= confab_protocol::MAX_CLIENT_ID_CHARS);
        assert_eq!(parse_client_id(&id), Some((0xab, 0x1234)));
        assert_eq!(
            parse_client_id(&client_id(u32::MAX, u32::MAX)),
            Some((u32::MAX, u32::MAX))
        );
        assert_eq!(parse_client_id("abc"), None);
        assert_eq!(parse_client_id("ab-1"), None);
        assert_eq!(parse_client_id("000000ab-"), None);
    }
}

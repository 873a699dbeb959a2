//! Conversation ids, `<lower id>-<higher id>`, read by `conversation_members` (paths and
//! frames name conversations so).
//!
//! Properties: what reads is two distinct canonical ids, lower first, and is exactly the
//! conversation id of those two; every conversation id of two distinct ids reads back.

#![no_main]

use confab_protocol::{Id, conversation_id, conversation_members};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data)
        && let Some((lo, hi)) = conversation_members(s)
    {
        assert!(lo < hi, "{s:?}: members out of order");
        assert_eq!(
            conversation_id(lo, hi),
            s,
            "{s:?} reads but is not canonical"
        );
        assert!(hi.0 <= i64::MAX as u64, "{s:?}: an id past 2^63-1 reads");
    }
    // The other way: any two ids the sequencer could make (at most 2^63-1).
    if let Some((a, b)) = data.split_first_chunk::<8>().and_then(|(a, rest)| {
        let b = rest.first_chunk::<8>()?;
        Some((u64::from_le_bytes(*a) >> 1, u64::from_le_bytes(*b) >> 1))
    }) && a != b
    {
        let c = conversation_id(Id(a), Id(b));
        assert_eq!(c, conversation_id(Id(b), Id(a)));
        assert_eq!(
            conversation_members(&c),
            Some((Id(a.min(b)), Id(a.max(b)))),
            "{c:?} does not read back"
        );
    }
});

//! `confab_protocol::Id`, read with `FromStr` (paths) and with serde (frames and bodies).
//!
//! Properties (PROTOCOL.md, Conventions): an id is canonical decimal, with no sign, no leading
//! zeros and at most 2^63-1, so an id that parses re-serialises to exactly its input, and every
//! canonical decimal parses; serde reads the same ids, from JSON strings only.

#![no_main]

use confab_protocol::Id;
use libfuzzer_sys::fuzz_target;

/// The rule, written independently of the parser under test.
fn canonical(s: &str) -> bool {
    let digits = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let no_leading_zero = s == "0" || !s.starts_with('0');
    digits && no_leading_zero && s.parse::<u64>().is_ok_and(|n| n <= i64::MAX as u64)
}

fuzz_target!(|data: &[u8]| {
    // Serde reads an id from JSON: only from a string, and as FromStr reads that string.
    if let Ok(id) = serde_json::from_slice::<Id>(data) {
        let s: String = serde_json::from_slice(data).expect("an id is read from a JSON string");
        assert_eq!(
            s.parse::<Id>().ok(),
            Some(id),
            "serde and FromStr disagree on {s:?}"
        );
    }
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    match s.parse::<Id>() {
        Ok(id) => {
            assert_eq!(
                id.to_string(),
                s,
                "an id that parses re-serialises to its input"
            );
            assert!(canonical(s), "{s:?} is not canonical but parses as {id}");
        }
        Err(_) => assert!(!canonical(s), "canonical {s:?} does not parse"),
    }
    let json = serde_json::to_string(s).expect("a string serialises");
    assert_eq!(
        serde_json::from_str::<Id>(&json).ok(),
        s.parse::<Id>().ok(),
        "serde and FromStr disagree on {s:?}"
    );
});

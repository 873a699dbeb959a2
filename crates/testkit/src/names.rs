//! Fresh names, so that tests sharing an engine never meet, in one run or across runs (a
//! crashed run leaves its names behind).

/// `prefix` and 16 random hex digits. With a prefix of lower-case letters, digits and `_` or
/// `-`, the name is a valid cluster name, Redis key prefix and NATS stream-name part; with `_`
/// only, a valid PostgreSQL database name too.
pub fn fresh(prefix: &str) -> String {
    format!("{prefix}{:016x}", rand::random::<u64>())
}

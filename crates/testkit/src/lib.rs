//! What confab's tests share: the engines a test may use (found through the environment, and
//! skipped with a message when absent), throwaway PostgreSQL databases, fresh names, and a raw
//! WebSocket client for speaking the protocol by hand.
//!
//! It knows engines and sockets, not confab: it depends on none of confab's crates, so their
//! APIs can change without touching it.

pub mod engines;
pub mod names;
pub mod postgres;
pub mod redis;
pub mod ws;

/// Writes `line` to the process's stderr, past the test harness's capture: the harness shows
/// what a passing test prints through `eprintln!` only on request, and a skipped test or a
/// database left behind should be seen in every run.
fn tell(line: &str) {
    use std::io::Write;
    // In one write, so that lines of tests running in parallel do not interleave.
    let _ = std::io::stderr().write_all(format!("{line}\n").as_bytes());
}

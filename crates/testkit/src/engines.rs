//! The engines a test may use, found through the environment (`.ci/run` sets them all).
//!
//! A test that needs an engine asks here and returns early on `None`: the helper has already
//! said that the test is skipped, and why.

/// The variable holding a PostgreSQL URL, e.g. `postgres://postgres@127.0.0.1:5432/postgres`.
pub const POSTGRES: &str = "CONFAB_TEST_POSTGRES";
/// The variable holding a Redis URL, e.g. `redis://127.0.0.1:6379`.
pub const REDIS: &str = "CONFAB_TEST_REDIS";
/// The variable holding the URL of a NATS server with JetStream, e.g. `nats://127.0.0.1:4222`.
pub const NATS: &str = "CONFAB_TEST_NATS";

/// The PostgreSQL server to create test databases on, or `None` once the skip is reported.
pub fn postgres() -> Option<String> {
    url(POSTGRES)
}

/// The Redis server, or `None` once the skip is reported.
pub fn redis() -> Option<String> {
    url(REDIS)
}

/// The NATS server, or `None` once the skip is reported.
pub fn nats() -> Option<String> {
    url(NATS)
}

/// The URL in `var`, or `None` once the skip is reported; an empty value counts as unset.
pub fn url(var: &str) -> Option<String> {
    let [url] = urls([var])?;
    Some(url)
}

/// The URLs in `vars`, for a test that needs several engines, or `None` once the skip is
/// reported, naming every variable missing.
pub fn urls<const N: usize>(vars: [&str; N]) -> Option<[String; N]> {
    let urls = vars.map(|var| std::env::var(var).ok().filter(|u| !u.is_empty()));
    let missing: Vec<&str> = vars
        .iter()
        .zip(&urls)
        .filter(|(_, url)| url.is_none())
        .map(|(var, _)| *var)
        .collect();
    match missing.as_slice() {
        [] => Some(urls.map(Option::unwrap_or_default)),
        [one] => {
            skipped(&format!("{one} is not set"));
            None
        }
        [several @ .., last] => {
            skipped(&format!("{} and {last} are not set", several.join(", ")));
            None
        }
    }
}

/// Reports that the running test is skipped, and why.
pub fn skipped(why: &str) {
    // The harness runs each test on a thread named after it.
    let test = std::thread::current()
        .name()
        .filter(|name| *name != "main")
        .map(|name| format!(" ({name})"))
        .unwrap_or_default();
    crate::tell(&format!("skipped: {why}{test}"));
}

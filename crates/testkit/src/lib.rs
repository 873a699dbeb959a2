//! What confab's tests share: the engines a test may use (found through the environment, and
//! skipped with a message when absent), throwaway PostgreSQL databases, fresh names, and a raw
//! WebSocket client for speaking the protocol by hand.
//!
//! It knows engines and sockets, not confab: it depends on none of confab's crates, so their
//! APIs can change without touching it.

pub mod engines;
pub mod names;
pub mod postgres;
pub mod push;
pub mod redis;
pub mod ws;

/// One `#[tokio::test]` per case and backend, named `<backend>::<case>`: the cases every
/// backend passes, then each backend's own.
///
/// The invoking file defines an `async fn <case>(&Backend)` per case, and a `Backend` type with
/// a constructor per backend, `Backend::<backend>() -> Option<Backend>` (`None`, after saying
/// so, when the backend's engine is not configured: the test then passes as skipped), and an
/// `async fn clean_up(&self)` run after a passing case.
///
/// ```ignore
/// confab_testkit::contract! {
///     every backend: [events_arrive_in_order],
///     memory only: [],
///     nats only: [a_node_cut_off_catches_up],
/// }
/// ```
#[macro_export]
macro_rules! contract {
    (every backend: $shared:tt, $($backend:ident only: $own:tt),+ $(,)?) => {
        $( $crate::contract!(@module $backend $shared $own); )+
    };
    (@module $backend:ident [$($shared:ident),* $(,)?] [$($own:ident),* $(,)?]) => {
        mod $backend {
            $( $crate::contract!(@test $backend $shared); )*
            $( $crate::contract!(@test $backend $own); )*
        }
    };
    (@test $backend:ident $case:ident) => {
        #[tokio::test]
        async fn $case() {
            let Some(backend) = super::Backend::$backend() else {
                return;
            };
            super::$case(&backend).await;
            backend.clean_up().await;
        }
    };
}

/// Writes `line` to the process's stderr, past the test harness's capture: the harness shows
/// what a passing test prints through `eprintln!` only on request, and a skipped test or a
/// database left behind should be seen in every run.
fn tell(line: &str) {
    use std::io::Write;
    // In one write, so that lines of tests running in parallel do not interleave.
    let _ = std::io::stderr().write_all(format!("{line}\n").as_bytes());
}

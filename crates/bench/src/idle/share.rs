//! Opens one process's share of the sockets, from their source addresses, into its holder.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::anyhow;
use futures_util::stream::{self, StreamExt};
use tokio::time::Instant;

use super::holder::Holder;
use crate::connect::{SourcePlan, connect_from, count, failure_reason};
use crate::target::SeededAccount;

/// Counters shared by the connecting tasks of one process.
#[derive(Default)]
pub(super) struct Live {
    pub(super) connected: AtomicU64,
    pub(super) failed: AtomicU64,
}

/// Opens the sockets of `accounts` (socket numbers from `first_index`) into `holder`.
/// Returns the failures by reason.
#[allow(
    clippy::too_many_arguments,
    reason = "one share's whole plan; a struct would only repeat the caller's locals"
)]
pub(super) async fn open_share(
    server: SocketAddr,
    ws_url: &str,
    accounts: &[SeededAccount],
    first_index: usize,
    plan: Option<SourcePlan>,
    concurrency: usize,
    deadline: Instant,
    live: &Live,
    holder: &Holder,
) -> BTreeMap<String, u64> {
    let mut errors = BTreeMap::new();
    let ws_url: Arc<str> = Arc::from(ws_url);
    // Each attempt is a task of its own, so that the handshakes of one process run on all of
    // the runtime's threads (in one task they were bound to one core, which capped the rate).
    let attempts = stream::iter(accounts.iter().enumerate())
        .map(|(i, a)| {
            let source = plan.map(|p| p.source(first_index + i));
            let (ws_url, token) = (ws_url.clone(), a.token.clone());
            let task =
                tokio::spawn(async move { connect_from(server, &ws_url, source, &token).await });
            async move {
                task.await
                    .unwrap_or_else(|e| Err(anyhow!("connect task failed: {e}")))
            }
        })
        .buffer_unordered(concurrency.max(1));
    let mut attempts = std::pin::pin!(attempts);
    loop {
        let next = tokio::time::timeout_at(deadline, attempts.next()).await;
        match next {
            Ok(Some(Ok(ws))) => {
                live.connected.fetch_add(1, Ordering::Relaxed);
                let _ = holder.add.send(ws);
            }
            Ok(Some(Err(e))) => {
                live.failed.fetch_add(1, Ordering::Relaxed);
                count(&mut errors, &failure_reason(&e));
            }
            Ok(None) => break,
            Err(_) => {
                let done =
                    live.connected.load(Ordering::Relaxed) + live.failed.load(Ordering::Relaxed);
                let left = (accounts.len() as u64).saturating_sub(done);
                live.failed.fetch_add(left, Ordering::Relaxed);
                *errors
                    .entry("timeout: not connected in time".into())
                    .or_default() += left;
                break;
            }
        }
    }
    errors
}

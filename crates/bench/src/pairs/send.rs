//! A worker's sender task: writes each send when the schedule says, and the acks the reader
//! asks for.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use confab_client::{ClientFrame, ConnectionSender, Id};
use hdrhistogram::Histogram;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::ctx::RunCtx;
use crate::body::{self, Stamp};
use crate::connect::{count, sdk_reason};
use crate::schedule::Planned;
use crate::stats;

/// What the sender tells the reader once the schedule is through.
pub(super) struct SendDone {
    pub(super) written: u64,
    pub(super) at: Instant,
}

/// What the sender task measured.
pub(super) struct SendStats {
    pub(super) written: u64,
    pub(super) unsent: u64,
    pub(super) errors: BTreeMap<String, u64>,
    pub(super) lag: Histogram<u64>,
}

/// Where a planned send goes: which of the worker's sockets writes it, and to whom.
pub(crate) struct Route {
    pub(crate) socket: usize,
    pub(crate) to: Option<Id>,
    pub(crate) conversation: Option<String>,
}

/// Walks the schedule of `senders` (the worker's part) and writes each send when it is due,
/// where `route` says; writes the acks the reader asks for. Ends when the schedule is through
/// and the reader hung up.
pub(super) async fn send_loop(
    mut sinks: Vec<ConnectionSender>,
    senders: Range<usize>,
    route: impl Fn(&Planned) -> Route,
    ctx: Arc<RunCtx>,
    mut acks: mpsc::UnboundedReceiver<(usize, String)>,
    done: oneshot::Sender<SendDone>,
) -> (Vec<ConnectionSender>, SendStats) {
    let n = sinks.len();
    let mut stats = SendStats {
        written: 0,
        unsent: 0,
        errors: BTreeMap::new(),
        lag: stats::histogram(),
    };
    let mut dead = vec![false; n];
    let mut plan = ctx.schedule.iter_range(senders).peekable();
    let mut done = Some(done);
    let mut body = String::with_capacity(ctx.body_len);
    loop {
        let due = plan
            .peek()
            .map(|p| ctx.start + Duration::from_nanos(p.offset_ns));
        if due.is_none()
            && let Some(tx) = done.take()
        {
            let _ = tx.send(SendDone {
                written: stats.written,
                at: Instant::now(),
            });
        }
        tokio::select! {
            biased;
            req = acks.recv() => match req {
                Some((i, cursor)) => {
                    if !dead[i] && let Err(e) = sinks[i].send(&ClientFrame::Ack { cursor }).await {
                        dead[i] = true;
                        count(&mut stats.errors, &format!("write: {}", sdk_reason(&e)));
                    }
                }
                None => break,
            },
            _ = tokio::time::sleep_until(due.unwrap_or(ctx.hard_deadline)), if due.is_some() => {
                if Instant::now() > ctx.stop_sending {
                    stats.unsent += plan.by_ref().count() as u64;
                    continue;
                }
                // Everything due by now goes out in this burst (timers tick per millisecond).
                while let Some(p) = plan.peek().copied() {
                    if ctx.start + Duration::from_nanos(p.offset_ns) > Instant::now() {
                        break;
                    }
                    plan.next();
                    let Route { socket: i, to, conversation } = route(&p);
                    if dead[i] {
                        stats.unsent += 1;
                        continue;
                    }
                    let written_ns = ctx.now_ns();
                    body::encode(
                        &Stamp { run: ctx.run, seq: p.seq, intended_ns: p.offset_ns, written_ns },
                        ctx.body_len,
                        &mut body,
                    );
                    let frame = ClientFrame::Send {
                        to,
                        conversation,
                        client_id: body::client_id(ctx.run, p.seq),
                        body: body.clone(),
                    };
                    match sinks[i].send(&frame).await {
                        Ok(()) => {
                            stats.written += 1;
                            ctx.live.sent.fetch_add(1, Ordering::Relaxed);
                            stats::record_ns(&mut stats.lag, written_ns.saturating_sub(p.offset_ns));
                        }
                        Err(e) => {
                            dead[i] = true;
                            stats.unsent += 1;
                            count(&mut stats.errors, &format!("write: {}", sdk_reason(&e)));
                        }
                    }
                }
            }
        }
    }
    // The reader gave up before the schedule was through.
    stats.unsent += plan.count() as u64;
    if let Some(tx) = done.take() {
        let _ = tx.send(SendDone {
            written: stats.written,
            at: Instant::now(),
        });
    }
    (sinks, stats)
}

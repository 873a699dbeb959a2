//! A worker's reader task: multiplexes the worker's sockets, records acks, deliveries and
//! errors in the scenario's [`Ledger`], and asks the sender to ack the cursor now and then.

use std::sync::atomic::Ordering;
use std::time::Duration;

use confab_client::{ConnectionReceiver, Message, ServerFrame};
use futures_util::stream::{self, SelectAll, Stream, StreamExt};
use tokio::sync::{mpsc, oneshot};

use super::ctx::RunCtx;
use super::result::WorkerResult;
use super::send::SendDone;
use crate::body;
use crate::connect::{count, sdk_reason};
use crate::stats;

/// One event from one of a worker's sockets.
pub(super) enum Incoming {
    Frame(ServerFrame),
    /// The socket closed (close code, if the server sent one).
    Ended(Option<u16>),
    Failed(String),
}

/// A socket's frames as a stream tagged with its index, for multiplexing.
pub(super) fn frames(
    idx: usize,
    rx: ConnectionReceiver,
) -> impl Stream<Item = (usize, Incoming)> + Send {
    stream::unfold(Some(rx), move |state| async move {
        let mut rx = state?;
        match rx.next().await {
            Ok(Some(f)) => Some(((idx, Incoming::Frame(f)), Some(rx))),
            Ok(None) => {
                let code = rx.close_code();
                Some(((idx, Incoming::Ended(code)), None))
            }
            // A frame it could not parse leaves the socket usable.
            Err(e) if *e.kind() == confab_client::ErrorKind::Protocol => {
                Some(((idx, Incoming::Failed(sdk_reason(&e))), Some(rx)))
            }
            Err(e) => Some(((idx, Incoming::Failed(sdk_reason(&e))), None)),
        }
    })
}

/// A send's state in a [`Ledger`]: answered with `sent`, or with an error naming it.
pub(crate) type SendState = u8;
pub(crate) const ACKED: SendState = 1;
pub(crate) const ERRORED: SendState = 2;

/// What a scenario keeps of its messages, so that the read loop, the same for every
/// scenario, knows when a worker has nothing outstanding.
pub(crate) trait Ledger {
    /// The state of socket `i`'s own send `seq` of this run, if it is one.
    fn send_state(&mut self, i: usize, seq: u32) -> Option<&mut SendState>;
    /// The schedule's sender (see [`crate::schedule::Schedule`]) whose sends socket `i` writes.
    fn schedule_sender(&self, i: usize) -> usize;
    /// Socket `i`'s send `seq` was just acked for the first time.
    fn first_ack(&mut self, i: usize, seq: u32);
    /// A `message` frame on socket `i`: a delivery to count (with
    /// [`WorkerResult::delivery`]), an echo, or something foreign.
    fn message(&mut self, i: usize, message: &Message, ctx: &RunCtx, r: &mut WorkerResult);
    /// Every acked send has reached everyone it should.
    fn drained(&self, r: &WorkerResult) -> bool;
    /// Counts what never arrived into `r.undelivered`.
    fn finish(self, r: &mut WorkerResult);
}

/// Reads every socket of the worker until each written message is settled (acked or
/// refused) and `ledger` has every acked one delivered, or the grace period is over.
pub(super) async fn read_loop<S, L: Ledger>(
    mut readers: SelectAll<S>,
    mut ledger: L,
    ctx: &RunCtx,
    acks: mpsc::UnboundedSender<(usize, String)>,
    mut done_rx: oneshot::Receiver<SendDone>,
) -> WorkerResult
where
    S: Stream<Item = (usize, Incoming)> + Unpin,
{
    let n = readers.len();
    let mut cursor: Vec<Option<String>> = vec![None; n];
    let mut acked_cursor: Vec<Option<String>> = vec![None; n];
    let mut r = WorkerResult::default();
    let mut settled = 0u64;
    let mut done: Option<SendDone> = None;
    // Each connection acks once per interval at its own phase, as independent clients would.
    // Acking all of them on one tick sent the server bursts of hundreds of cursor writes that
    // every message in the same commit waited behind; so did 16 phases per interval (625
    // acks every 62.5 ms with 10,000 connections). A phase per millisecond spreads them out.
    let phases = ack_phases(ctx.ack_interval);
    let mut ack_tick = tokio::time::interval(
        ctx.ack_interval.unwrap_or(Duration::from_secs(3600)) / phases as u32,
    );
    let mut ack_phase = 0usize;
    ack_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let window_end = ctx.start + Duration::from_nanos(ctx.window_end_ns);
    // A `client_id` or error `ref` of this run: the send's number.
    let ours =
        |id: &str| body::parse_client_id(id).and_then(|(run, seq)| (run == ctx.run).then_some(seq));

    loop {
        if let Some(d) = &done
            && ((settled == d.written && ledger.drained(&r)) || readers.is_empty())
        {
            break;
        }
        let deadline = match &done {
            Some(d) => (d.at.max(window_end) + ctx.grace).min(ctx.hard_deadline),
            None => ctx.hard_deadline,
        };
        tokio::select! {
            biased;
            d = &mut done_rx, if done.is_none() => match d {
                Ok(d) => done = Some(d),
                Err(_) => break,
            },
            Some((i, incoming)) = readers.next(), if !readers.is_empty() => match incoming {
                Incoming::Frame(ServerFrame::Sent { client_id, .. }) => {
                    if let Some(seq) = ours(&client_id)
                        && let Some(st) = ledger.send_state(i, seq)
                    {
                        if *st & (ACKED | ERRORED) == 0 {
                            settled += 1;
                        }
                        if *st & ACKED == 0 {
                            *st |= ACKED;
                            r.acked += 1;
                            let due = ctx.schedule.offset_of(ledger.schedule_sender(i), seq);
                            stats::record_ns(&mut r.ack_latency, ctx.now_ns().saturating_sub(due));
                            ledger.first_ack(i, seq);
                        }
                    }
                }
                Incoming::Frame(ServerFrame::Message { message, cursor: c }) => {
                    cursor[i] = Some(c);
                    ledger.message(i, &message, ctx, &mut r);
                }
                Incoming::Frame(ServerFrame::Error { code, reference, .. }) => {
                    count(&mut r.errors, code.as_str());
                    ctx.live.errors.fetch_add(1, Ordering::Relaxed);
                    if let Some(seq) = reference.as_deref().and_then(ours)
                        && let Some(st) = ledger.send_state(i, seq)
                        && *st & (ACKED | ERRORED) == 0
                    {
                        *st |= ERRORED;
                        settled += 1;
                        r.refused += 1;
                    }
                }
                Incoming::Frame(_) => {}
                Incoming::Ended(code) => {
                    let key = code.map_or("no close frame".to_owned(), |c| format!("close {c}"));
                    count(&mut r.disconnects, &key);
                }
                Incoming::Failed(reason) => count(&mut r.disconnects, &reason),
            },
            _ = ack_tick.tick(), if ctx.ack_interval.is_some() => {
                request_acks(&cursor, &mut acked_cursor, &acks, Some((ack_phase, phases)));
                ack_phase = (ack_phase + 1) % phases;
            }
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    let _ = tokio::time::timeout_at(ctx.hard_deadline, ctx.settled.wait()).await;
    // Ack what was read, so a later run on these accounts does not replay it.
    request_acks(&cursor, &mut acked_cursor, &acks, None);
    drop(acks);
    ledger.finish(&mut r);
    r
}

/// Ack phases per ack interval: one per millisecond of it (at least one). Connection `i`
/// acks in phase `i % phases`.
fn ack_phases(interval: Option<Duration>) -> usize {
    interval.map_or(1, |d| d.as_millis().clamp(1, 60_000) as usize)
}

/// Asks the sender to ack the latest cursor of each socket (of those in phase `p` of
/// `phases`, if given) that has not been acked yet.
fn request_acks(
    cursor: &[Option<String>],
    acked: &mut [Option<String>],
    acks: &mpsc::UnboundedSender<(usize, String)>,
    phase: Option<(usize, usize)>,
) {
    let (first, step) = phase.unwrap_or((0, 1));
    for i in (first..cursor.len()).step_by(step.max(1)) {
        if let Some(c) = &cursor[i]
            && acked[i].as_ref() != Some(c)
        {
            let _ = acks.send((i, c.clone()));
            acked[i] = Some(c.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_go_out_by_phase_and_once_per_cursor() {
        const PHASES: usize = 16;
        let n = 2 * PHASES;
        let cursor: Vec<Option<String>> = (0..n).map(|i| Some(i.to_string())).collect();
        let mut acked = vec![None; n];
        let (tx, mut rx) = mpsc::unbounded_channel();
        request_acks(&cursor, &mut acked, &tx, Some((3, PHASES)));
        let mut sent = Vec::new();
        while let Ok((i, _)) = rx.try_recv() {
            sent.push(i);
        }
        assert_eq!(sent, [3, 3 + PHASES]);
        // The final sweep acks everyone not acked yet, and nobody twice.
        request_acks(&cursor, &mut acked, &tx, None);
        let mut rest = Vec::new();
        while let Ok((i, c)) = rx.try_recv() {
            assert_eq!(c, i.to_string());
            rest.push(i);
        }
        assert_eq!(rest.len(), n - 2);
        assert!(!rest.contains(&3) && !rest.contains(&(3 + PHASES)));
        request_acks(&cursor, &mut acked, &tx, None);
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn a_phase_per_millisecond_of_the_ack_interval() {
        assert_eq!(ack_phases(Some(Duration::from_secs(1))), 1000);
        assert_eq!(ack_phases(Some(Duration::from_micros(300))), 1);
        assert_eq!(ack_phases(Some(Duration::from_secs(3600))), 60_000);
        assert_eq!(ack_phases(None), 1);
    }
}

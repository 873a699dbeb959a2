//! What one worker measured, and its merge over workers.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use hdrhistogram::Histogram;

use super::RunCtx;
use crate::body::Stamp;
use crate::stats;

/// What one worker measured; merged over workers.
pub(crate) struct WorkerResult {
    pub(crate) written: u64,
    pub(crate) unsent: u64,
    pub(crate) acked: u64,
    pub(crate) refused: u64,
    pub(crate) delivered: u64,
    pub(crate) delivered_in_window: u64,
    /// When the last message arrived, ns after the start.
    pub(crate) last_delivery_ns: u64,
    pub(crate) undelivered: u64,
    pub(crate) unacked: u64,
    pub(crate) duplicates: u64,
    pub(crate) foreign: u64,
    pub(crate) errors: BTreeMap<String, u64>,
    pub(crate) disconnects: BTreeMap<String, u64>,
    pub(crate) latency: Histogram<u64>,
    pub(crate) write_latency: Histogram<u64>,
    pub(crate) send_lag: Histogram<u64>,
    /// `sent` − intended send time, at the sender.
    pub(crate) ack_latency: Histogram<u64>,
}

impl Default for WorkerResult {
    fn default() -> Self {
        WorkerResult {
            written: 0,
            unsent: 0,
            acked: 0,
            refused: 0,
            delivered: 0,
            delivered_in_window: 0,
            last_delivery_ns: 0,
            undelivered: 0,
            unacked: 0,
            duplicates: 0,
            foreign: 0,
            errors: BTreeMap::new(),
            disconnects: BTreeMap::new(),
            latency: stats::histogram(),
            write_latency: stats::histogram(),
            send_lag: stats::histogram(),
            ack_latency: stats::histogram(),
        }
    }
}

impl WorkerResult {
    pub(crate) fn merge(&mut self, o: WorkerResult) {
        self.written += o.written;
        self.unsent += o.unsent;
        self.acked += o.acked;
        self.refused += o.refused;
        self.delivered += o.delivered;
        self.delivered_in_window += o.delivered_in_window;
        self.last_delivery_ns = self.last_delivery_ns.max(o.last_delivery_ns);
        self.undelivered += o.undelivered;
        self.unacked += o.unacked;
        self.duplicates += o.duplicates;
        self.foreign += o.foreign;
        for (k, v) in o.errors {
            *self.errors.entry(k).or_default() += v;
        }
        for (k, v) in o.disconnects {
            *self.disconnects.entry(k).or_default() += v;
        }
        // Same bounds everywhere, so adding cannot fail.
        let _ = self.latency.add(&o.latency);
        let _ = self.write_latency.add(&o.write_latency);
        let _ = self.send_lag.add(&o.send_lag);
        let _ = self.ack_latency.add(&o.ack_latency);
    }

    /// Counts a message of this run, `stamp`, read just now.
    pub(crate) fn delivery(&mut self, ctx: &RunCtx, stamp: &Stamp) {
        let now_ns = ctx.now_ns();
        self.delivered += 1;
        self.last_delivery_ns = self.last_delivery_ns.max(now_ns);
        if now_ns <= ctx.window_end_ns {
            self.delivered_in_window += 1;
        }
        ctx.live.delivered.fetch_add(1, Ordering::Relaxed);
        stats::record_ns(&mut self.latency, now_ns.saturating_sub(stamp.intended_ns));
        stats::record_ns(
            &mut self.write_latency,
            now_ns.saturating_sub(stamp.written_ns),
        );
    }
}

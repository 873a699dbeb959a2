//! What one worker measured, and its merge over workers.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;

use crate::stats;

/// What one worker measured; merged over workers.
pub(super) struct WorkerResult {
    pub(super) written: u64,
    pub(super) unsent: u64,
    pub(super) acked: u64,
    pub(super) refused: u64,
    pub(super) delivered: u64,
    pub(super) delivered_in_window: u64,
    /// When the last message arrived, ns after the start.
    pub(super) last_delivery_ns: u64,
    pub(super) undelivered: u64,
    pub(super) unacked: u64,
    pub(super) duplicates: u64,
    pub(super) foreign: u64,
    pub(super) errors: BTreeMap<String, u64>,
    pub(super) disconnects: BTreeMap<String, u64>,
    pub(super) latency: Histogram<u64>,
    pub(super) write_latency: Histogram<u64>,
    pub(super) send_lag: Histogram<u64>,
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
        }
    }
}

impl WorkerResult {
    pub(super) fn merge(&mut self, o: WorkerResult) {
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
    }
}

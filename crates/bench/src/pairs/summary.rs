//! What a `pairs` run measured ([`PairsReport`]), and how it prints.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::PairsConfig;
use crate::report::{self, Table, fmt_counts, fmt_n};
use crate::stats::{LatencySummary, ProcessStats};

/// Everything one `pairs` run measured.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PairsReport {
    pub config: PairsConfig,
    /// The WebSocket URL loaded (several, comma-separated, for the nodes of a cluster).
    pub server: String,
    pub spawned: bool,
    /// Random id of this run, in every `client_id` and body.
    pub run_id: u32,
    /// Seconds to open all sockets (connect, hello, catch-up to `synced`).
    pub connect_s: f64,
    /// Old messages replayed to the sockets on connect (history of earlier runs).
    pub replayed: u64,
    /// Messages the schedule held.
    pub scheduled: u64,
    /// Messages written to a socket.
    pub sent: u64,
    /// Scheduled but never written (dead socket, or the bench fell more than the grace
    /// period behind its schedule).
    pub unsent: u64,
    /// Sends answered with `sent` (durably stored).
    pub acked: u64,
    /// Sends answered with an `error` frame naming them (e.g. `rate_limited`).
    pub refused: u64,
    /// Messages the partner received (each counted once).
    pub delivered: u64,
    /// Of those, received before the schedule's end.
    pub delivered_in_window: u64,
    /// `sent` per second of the schedule's duration.
    pub sent_per_sec: f64,
    /// The delivered throughput: `delivered` over the time from the schedule's start to the
    /// last delivery (at least the schedule's duration). A server that keeps up delivers at
    /// the offered rate; an overloaded one works through its backlog after the schedule's end
    /// and so shows its capacity, not a share of the offered rate cut off by the deadline.
    pub delivered_per_sec: f64,
    /// Seconds from the schedule's start to the last delivery.
    pub last_delivery_s: f64,
    /// Acked, but not received by the partner by the end of the grace period.
    pub undelivered: u64,
    /// Written, but neither `sent` nor an `error` came back by the end of the grace period.
    pub unacked: u64,
    /// Messages the partner received more than once.
    pub duplicates: u64,
    /// Messages from outside this run (other senders, earlier runs), ignored.
    pub foreign: u64,
    /// `error` frames by code, plus failed writes.
    pub errors: BTreeMap<String, u64>,
    /// Sockets that ended during the run, by close code.
    pub disconnects: BTreeMap<String, u64>,
    /// What `latency_ms` is measured from.
    pub latency_from: String,
    /// Recipient's read − intended send time (coordinated-omission corrected).
    pub latency_ms: LatencySummary,
    /// Recipient's read − the sender's actual write.
    pub write_latency_ms: LatencySummary,
    /// The sender's actual write − intended send time: how far behind its schedule the bench was.
    pub send_lag_ms: LatencySummary,
    /// The sender's read of `sent` − intended send time.
    #[serde(default)]
    pub ack_latency_ms: LatencySummary,
    /// The spawned server's CPU and memory over the run.
    pub server_process: Option<ProcessStats>,
    /// This bench process's CPU and memory over the run.
    pub bench_process: Option<ProcessStats>,
}

/// What `latency_ms` is measured from, as the report says it.
pub(super) const LATENCY_FROM: &str =
    "intended send time (open-loop schedule, coordinated-omission corrected)";

impl fmt::Display for PairsReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        let mut t = Table::new(format!(
            "confab bench pairs: {} users, {} msgs/s offered for {} s, {}-byte bodies",
            fmt_n(c.users as u64),
            c.rate,
            c.duration_s,
            c.body_bytes
        ));
        t.row("server", report::fmt_server(&self.server, self.spawned));
        t.row(
            "connected",
            format!(
                "{} sockets in {:.2} s ({} workers)",
                fmt_n(c.users as u64),
                self.connect_s,
                c.workers
            ),
        );
        t.row(
            "sent",
            format!(
                "{} of {} scheduled ({:.1} msgs/s)",
                fmt_n(self.sent),
                fmt_n(self.scheduled),
                self.sent_per_sec
            ),
        );
        t.row(
            "acked / refused",
            format!("{} / {}", fmt_n(self.acked), fmt_n(self.refused)),
        );
        t.row(
            "delivered",
            format!(
                "{}: {:.1} msgs/s ({} before the schedule's end, the last at {:.2} s)",
                fmt_n(self.delivered),
                self.delivered_per_sec,
                fmt_n(self.delivered_in_window),
                self.last_delivery_s
            ),
        );
        t.row(
            "undelivered",
            format!(
                "{} (acked, not received within the {} s grace)",
                fmt_n(self.undelivered),
                c.grace_s
            ),
        );
        t.row("unacked", fmt_n(self.unacked));
        if self.unsent > 0 {
            t.row("unsent", fmt_n(self.unsent));
        }
        if self.duplicates > 0 || self.foreign > 0 {
            t.row(
                "duplicates/foreign",
                format!("{} / {}", fmt_n(self.duplicates), fmt_n(self.foreign)),
            );
        }
        t.row("errors", fmt_counts(&self.errors));
        t.row("disconnects", fmt_counts(&self.disconnects));
        t.row("latency", self.latency_ms.line());
        t.row("  measured from", "the intended (scheduled) send time");
        t.row("latency from write", self.write_latency_ms.line());
        t.row("sent (ack) latency", self.ack_latency_ms.line());
        t.row("bench lag", self.send_lag_ms.line());
        if let Some(s) = &self.server_process {
            t.row("server", process_line(s));
        }
        if let Some(written) = self
            .server_process
            .as_ref()
            .and_then(|s| s.disk_written_mib)
        {
            t.row("server disk", disk_line(written, self.delivered));
        }
        if let Some(s) = &self.bench_process {
            t.row("bench", process_line(s));
        }
        write!(f, "{t}")
    }
}

/// `CPU 85.0 % of a core (2.55 s), RSS 40.1 MiB (peak 42.0 MiB)`.
pub(crate) fn process_line(s: &ProcessStats) -> String {
    format!(
        "pid {}: CPU {:.1} % of a core ({:.2} s), RSS {:.1} MiB (peak {:.1} MiB)",
        s.pid, s.cpu_pct, s.cpu_secs, s.rss_mib, s.peak_rss_mib
    )
}

/// `812.4 MiB written toward the disk: 3.3 KiB per message` (what a durable message costs in
/// writes: WAL frames, checkpoints, acks).
pub(crate) fn disk_line(written_mib: f64, messages: u64) -> String {
    let per = if messages > 0 {
        format!(
            ": {:.1} KiB per message",
            written_mib * 1024.0 / messages as f64
        )
    } else {
        String::new()
    };
    format!("{written_mib:.1} MiB written toward the disk{per}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pairs::config::tests::load;

    #[test]
    fn report_round_trips_through_json() {
        let mut report = PairsReport {
            config: load(4).config(200.0).unwrap(),
            server: "ws://127.0.0.1:1/v1/ws".into(),
            run_id: 42,
            scheduled: 400,
            sent: 400,
            acked: 399,
            delivered: 399,
            latency_from: LATENCY_FROM.into(),
            ..Default::default()
        };
        report.errors.insert("rate_limited".into(), 1);
        report.latency_ms.p99_ms = 12.5;
        report.server_process = Some(ProcessStats {
            pid: 9,
            cpu_pct: 50.0,
            disk_written_mib: Some(3.9),
            ..Default::default()
        });
        let json = serde_json::to_string(&report).unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["latency_ms"]["p99_ms"], 12.5);
        assert_eq!(v["errors"]["rate_limited"], 1);
        assert_eq!(v["config"]["users"], 4);
        let back: PairsReport = serde_json::from_str(&json).unwrap();
        assert_eq!(back, report);
        let table = report.to_string();
        assert!(table.contains("rate_limited: 1"), "{table}");
        assert!(table.contains("intended"), "{table}");
        // 3.9 MiB over 399 messages.
        assert!(
            table.contains("3.9 MiB written toward the disk: 10.0 KiB per message"),
            "{table}"
        );
        // A report from before the disk figure still reads.
        let mut old: serde_json::Value = serde_json::from_str(&json).unwrap();
        old["server_process"]
            .as_object_mut()
            .unwrap()
            .remove("disk_written_mib");
        let back: PairsReport = serde_json::from_value(old).unwrap();
        assert_eq!(back.server_process.unwrap().disk_written_mib, None);
    }
}

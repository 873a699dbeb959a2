//! What an `idle` run measured ([`IdleReport`]), and how it prints.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::pairs::process_line;
use crate::report::{self, Table, fmt_counts, fmt_n};
use crate::stats::ProcessStats;

/// Everything an `idle` run measured.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct IdleReport {
    pub server: String,
    pub spawned: bool,
    pub requested: u64,
    pub connected: u64,
    pub failed: u64,
    /// Failures by reason.
    pub errors: BTreeMap<String, u64>,
    /// Seconds from the first connect to the last socket past `synced`.
    pub connect_s: f64,
    /// Sockets past `synced` per second.
    pub connect_per_sec: f64,
    /// Processes holding sockets (this one, or its children).
    pub processes: usize,
    /// Source addresses used, and sockets per address at most.
    pub source_addresses: usize,
    /// The first and last of them.
    pub source_range: String,
    pub per_address: usize,
    /// Seconds the sockets were held after connecting.
    pub hold_s: f64,
    /// Sockets that closed while held.
    pub dropped: u64,
    /// The spawned server's resident memory before the first connect and after the hold, MiB.
    pub server_rss_before_mib: Option<f64>,
    pub server_rss_after_mib: Option<f64>,
    /// (after − before) / connected, KiB.
    pub server_kib_per_connection: Option<f64>,
    /// The spawned server over connect and hold.
    pub server_process: Option<ProcessStats>,
    /// Resident memory of the processes holding the sockets, MiB, and per socket, KiB.
    pub client_rss_mib: f64,
    pub client_kib_per_connection: f64,
}

impl fmt::Display for IdleReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut t = Table::new(format!(
            "confab bench idle: {} authenticated idle sockets",
            fmt_n(self.requested)
        ));
        t.row("server", report::fmt_server(&self.server, self.spawned));
        t.row(
            "connected",
            format!(
                "{} of {} in {:.2} s ({:.0} sockets/s)",
                fmt_n(self.connected),
                fmt_n(self.requested),
                self.connect_s,
                self.connect_per_sec
            ),
        );
        t.row(
            "failed",
            format!("{} ({})", fmt_n(self.failed), fmt_counts(&self.errors)),
        );
        t.row(
            "spread",
            format!(
                "{} process(es), {} source address(es) ({}) of up to {} sockets",
                self.processes,
                self.source_addresses,
                self.source_range,
                fmt_n(self.per_address as u64)
            ),
        );
        t.row(
            "held",
            format!("{} s, {} dropped", self.hold_s, fmt_n(self.dropped)),
        );
        if let (Some(b), Some(a)) = (self.server_rss_before_mib, self.server_rss_after_mib) {
            t.row(
                "server RSS",
                format!(
                    "{b:.1} MiB → {a:.1} MiB: {:.1} KiB per socket",
                    self.server_kib_per_connection.unwrap_or(0.0)
                ),
            );
        }
        if let Some(s) = &self.server_process {
            t.row("server", process_line(s));
        }
        t.row(
            "bench RSS",
            format!(
                "{:.1} MiB ({:.1} KiB per socket)",
                self.client_rss_mib, self.client_kib_per_connection
            ),
        );
        write!(f, "{t}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_report_round_trips() {
        let r = IdleReport {
            server: "ws://127.0.0.1:1/v1/ws".into(),
            requested: 10,
            connected: 10,
            processes: 1,
            source_addresses: 1,
            per_address: 25_000,
            server_rss_before_mib: Some(10.0),
            server_rss_after_mib: Some(11.0),
            server_kib_per_connection: Some(102.4),
            ..Default::default()
        };
        let back: IdleReport = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
        assert!(r.to_string().contains("102.4 KiB per socket"));
    }
}

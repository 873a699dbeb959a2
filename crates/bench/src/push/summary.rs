//! What a `push` run measured ([`PushReport`]), and how it prints: the notifications of the
//! push phase, then both phases side by side with the difference, the added cost of a
//! recipient with a subscription.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::PushConfig;
use super::phase::PhaseReport;
use crate::pairs::process_line;
use crate::report::{self, Table, fmt_counts, fmt_n};
use crate::stats::{LatencySummary, fmt_ms};

/// Everything one `push` run measured.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PushReport {
    pub config: PushConfig,
    pub server: String,
    pub spawned: bool,
    /// The receiver's origin, `http://127.0.0.1:PORT`.
    pub receiver: String,
    /// Seconds to subscribe the recipients' devices.
    pub subscribe_s: f64,
    /// Messages to recipients whose device is subscribed to the receiver.
    pub push: PhaseReport,
    /// The same load to recipients without a subscription.
    pub baseline: Option<PhaseReport>,
}

impl PushReport {
    /// Whether every notification was accounted for and the sample was genuine: all
    /// arrived (or the rest were coalesced, the server idle), none dropped, no bad payload.
    pub fn passed(&self) -> bool {
        self.push.notifications.as_ref().is_some_and(|n| {
            n.complete
                && n.bad.is_empty()
                && n.missing(self.push.push_counters.coalesced) == 0
                && self.push.push_counters.dropped == 0
        })
    }

    /// The added server CPU per message of a recipient with a subscription, µs.
    pub fn added_cpu_us(&self) -> Option<f64> {
        Some(self.push.cpu_us_per_message()? - self.baseline.as_ref()?.cpu_us_per_message()?)
    }

    /// The added writes toward the disk per message of a recipient with a subscription, KiB.
    pub fn added_disk_kib(&self) -> Option<f64> {
        Some(self.push.disk_kib_per_message()? - self.baseline.as_ref()?.disk_kib_per_message()?)
    }
}

/// The value columns of the side-by-side rows: at least this wide, and two spaces apart.
const COLUMN: usize = 20;

fn columns(push: String, baseline: Option<String>, added: Option<String>) -> String {
    let mut line = format!("{push:<COLUMN$}  ");
    if let Some(b) = baseline {
        line.push_str(&format!("{b:<COLUMN$}  "));
        if let Some(a) = added {
            line.push_str(&a);
        }
    }
    line.trim_end().to_owned()
}

fn p50_p99(l: &LatencySummary) -> String {
    if l.count == 0 {
        return "none".into();
    }
    format!("{} / {}", fmt_ms(l.p50_ms), fmt_ms(l.p99_ms))
}

impl fmt::Display for PushReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        let mut t = Table::new(format!(
            "confab bench push: {} senders → {} recipients subscribed to Web Push, {} msgs/s offered for {} s, {}-byte bodies",
            fmt_n(c.senders as u64),
            fmt_n(c.recipients as u64),
            c.rate,
            c.duration_s,
            c.body_bytes
        ));
        t.row("server", report::fmt_server(&self.server, self.spawned));
        t.row(
            "receiver",
            format!(
                "{}: {} devices subscribed in {:.2} s",
                self.receiver,
                fmt_n(c.recipients as u64),
                self.subscribe_s
            ),
        );
        let p = &self.push;
        if let Some(n) = &p.notifications {
            t.row(
                "notifications",
                format!(
                    "{} arrived for {} acked messages{}",
                    fmt_n(n.arrived),
                    fmt_n(n.expected),
                    if n.complete {
                        String::new()
                    } else {
                        format!(" (gave up {:.1} s after the schedule's end)", n.waited_s)
                    }
                ),
            );
            t.row(
                "delivered",
                format!(
                    "{:.1}/s over the send window ({} before its end); {:.1}/s to the last, at {:.2} s",
                    n.per_sec_in_window,
                    fmt_n(n.arrived_in_window),
                    n.per_sec_to_last,
                    n.last_arrival_s
                ),
            );
            t.row(
                "per endpoint",
                format!(
                    "{} of {} devices notified, {} to {} each",
                    fmt_n(n.devices_notified),
                    fmt_n(n.devices),
                    n.per_device_min,
                    n.per_device_max
                ),
            );
            let pc = &p.push_counters;
            t.row(
                "push server",
                format!(
                    "sent {} · coalesced {} · dropped {} · failed {} · online skipped {}",
                    fmt_n(pc.sent),
                    fmt_n(pc.coalesced),
                    fmt_n(pc.dropped),
                    fmt_n(pc.failed),
                    fmt_n(pc.online_skipped)
                ),
            );
            t.row(
                "unnotified",
                format!(
                    "{} messages without a notification of their own, {} missing (not coalesced)",
                    fmt_n(n.without_own),
                    fmt_n(n.missing(pc.coalesced))
                ),
            );
            if n.extra > 0 || n.unknown > 0 {
                t.row(
                    "extra",
                    format!(
                        "{} beyond their device's messages, {} to no device",
                        fmt_n(n.extra),
                        fmt_n(n.unknown)
                    ),
                );
            }
            t.row("latency", n.latency_ms.line());
            t.row(
                "  measured",
                if n.without_own == 0 {
                    "from the intended send time to the arrival, matched by order per device"
                } else {
                    "by order per device: overstated, as messages were coalesced"
                },
            );
            t.row("sample latency", n.sample_latency_ms.line());
            t.row(
                "  measured",
                "the decrypted ones, from the intended send time of the message each carries",
            );
            t.row(
                "payloads",
                format!(
                    "{} decrypted (every {}): {} this run's messages to their device, {} the one matched by order; bad: {}",
                    fmt_n(n.decrypted),
                    c.decrypt_every,
                    fmt_n(n.genuine),
                    fmt_n(n.in_order),
                    fmt_counts(&n.bad)
                ),
            );
        }
        let b = self.baseline.as_ref();
        let both = |f: &dyn Fn(&PhaseReport) -> String| (f(p), b.map(f));
        t.row(
            "phase",
            columns(
                "push".into(),
                b.map(|_| "baseline".into()),
                Some("added by a subscription".into()),
            ),
        );
        let mut side =
            |label: &str, (push, base): (String, Option<String>), added: Option<String>| {
                t.row(label, columns(push, base, added));
            };
        side(
            "acked of sent",
            both(&|r| format!("{} of {}", fmt_n(r.acked), fmt_n(r.sent))),
            None,
        );
        side(
            "sent (ack) p50 / p99",
            both(&|r| p50_p99(&r.ack_latency_ms)),
            None,
        );
        side(
            "bench lag p99",
            both(&|r| fmt_ms(r.send_lag_ms.p99_ms)),
            None,
        );
        let opt = |v: Option<String>| v.unwrap_or_else(|| "—".into());
        side(
            "server CPU",
            both(&|r| {
                opt(r
                    .server_process
                    .as_ref()
                    .map(|s| format!("{:.1} % of {:.1} s", s.cpu_pct, r.measured_s)))
            }),
            None,
        );
        side(
            "server CPU / message",
            both(&|r| opt(r.cpu_us_per_message().map(|v| format!("{v:.0} µs")))),
            self.added_cpu_us().map(|v| format!("{v:+.0} µs")),
        );
        side(
            "disk / message",
            both(&|r| opt(r.disk_kib_per_message().map(|v| format!("{v:.1} KiB")))),
            self.added_disk_kib().map(|v| format!("{v:+.1} KiB")),
        );
        let added_wchar =
            b.and_then(|b| Some(p.wchar_kib_per_message()? - b.wchar_kib_per_message()?));
        side(
            "commits / message",
            both(&|r| {
                let per = r.push_counters.commits as f64 / r.acked.max(1) as f64;
                format!("{per:.2}")
            }),
            b.map(|b| {
                let per = |r: &PhaseReport| r.push_counters.commits as f64 / r.acked.max(1) as f64;
                format!("{:+.2}", per(p) - per(b))
            }),
        );
        side(
            "write()s / message",
            both(&|r| opt(r.wchar_kib_per_message().map(|v| format!("{v:.1} KiB")))),
            added_wchar.map(|v| format!("{v:+.1} KiB")),
        );
        side(
            "bench CPU",
            both(&|r| {
                opt(r
                    .bench_process
                    .as_ref()
                    .map(|s| format!("{:.1} %", s.cpu_pct)))
            }),
            None,
        );
        for (name, r) in std::iter::once(("push", p)).chain(b.map(|b| ("baseline", b))) {
            let trouble = r.unacked + r.refused + r.unsent + r.duplicates + r.foreign;
            if trouble > 0 || !r.errors.is_empty() || !r.disconnects.is_empty() {
                t.row(
                    &format!("{name} trouble"),
                    format!(
                        "unacked {} · refused {} · unsent {} · duplicates {} · foreign {} · errors {} · disconnects {}",
                        r.unacked,
                        r.refused,
                        r.unsent,
                        r.duplicates,
                        r.foreign,
                        fmt_counts(&r.errors),
                        fmt_counts(&r.disconnects)
                    ),
                );
            }
            if let Some(s) = &r.server_process {
                t.row(&format!("{name} server"), process_line(s));
            }
        }
        write!(f, "{t}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::push::matching::Notifications;
    use crate::stats::ProcessStats;

    fn phase(cpu_secs: f64, disk_mib: f64) -> PhaseReport {
        let wide = LatencySummary {
            count: 1,
            p50_ms: 12.25,
            p99_ms: 195.5,
            ..Default::default()
        };
        PhaseReport {
            sent: 1000,
            acked: 1000,
            ack_latency_ms: wide,
            measured_s: 2.0,
            server_process: Some(ProcessStats {
                pid: 1,
                cpu_pct: cpu_secs * 50.0,
                cpu_secs,
                disk_written_mib: Some(disk_mib),
                chars_written_mib: Some(disk_mib),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn the_added_cost_is_the_difference_and_prints_beside_both() {
        let mut report = PushReport {
            config: PushConfig {
                senders: 10,
                recipients: 100,
                rate: 500.0,
                duration_s: 2.0,
                body_bytes: 100,
                decrypt_every: 1,
                baseline: true,
                ..Default::default()
            },
            push: phase(0.6, 10.0),
            baseline: Some(phase(0.4, 8.0)),
            ..Default::default()
        };
        report.push.notifications = Some(Notifications {
            expected: 1000,
            arrived: 1000,
            complete: true,
            ..Default::default()
        });
        assert!((report.added_cpu_us().unwrap() - 200.0).abs() < 1e-6);
        assert!((report.added_disk_kib().unwrap() - 2.048).abs() < 1e-6);
        assert!(report.passed());
        let table = report.to_string();
        assert!(table.contains("10 senders → 100 recipients"), "{table}");
        assert!(
            table.contains("1,000 arrived for 1,000 acked messages"),
            "{table}"
        );
        let ack = table.lines().find(|l| l.contains("sent (ack)")).unwrap();
        assert!(!ack.contains("ms1"), "columns stay apart: {ack}");
        let cpu = table
            .lines()
            .find(|l| l.contains("server CPU / message"))
            .unwrap();
        assert!(
            cpu.contains("600 µs") && cpu.contains("400 µs") && cpu.contains("+200 µs"),
            "{cpu}"
        );
        let json = serde_json::to_string(&report).unwrap();
        let back: PushReport = serde_json::from_str(&json).unwrap();
        assert_eq!(back, report);

        report.push.notifications.as_mut().unwrap().arrived = 990;
        assert!(!report.passed(), "ten missing");
        report.push.push_counters.coalesced = 10;
        assert!(report.passed(), "ten folded into others");
        report.baseline = None;
        assert_eq!(report.added_cpu_us(), None);
        assert!(!report.to_string().contains("baseline"));
    }
}

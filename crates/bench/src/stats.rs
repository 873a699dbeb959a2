//! Numbers: latency histograms and their summaries, and CPU and memory of a process from
//! `/proc`.

use std::time::Instant;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Largest latency a histogram holds (µs): an hour. Longer ones are clamped to it.
const MAX_MICROS: u64 = 3_600_000_000;

/// A latency histogram in microseconds, 3 significant digits (0.1 % error).
pub fn histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts; this cannot fail.
    Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("valid histogram bounds")
}

/// Records a latency in nanoseconds (sub-microsecond ones count as 1 µs).
pub fn record_ns(hist: &mut Histogram<u64>, ns: u64) {
    hist.saturating_record((ns / 1_000).clamp(1, MAX_MICROS));
}

/// The usual percentiles of a latency histogram, in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub count: u64,
    pub min_ms: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl LatencySummary {
    /// Summarises a histogram of microseconds; all zeros when it is empty.
    pub fn of(hist: &Histogram<u64>) -> LatencySummary {
        if hist.is_empty() {
            return LatencySummary::default();
        }
        let ms = |us: u64| us as f64 / 1_000.0;
        LatencySummary {
            count: hist.len(),
            min_ms: ms(hist.min()),
            mean_ms: hist.mean() / 1_000.0,
            p50_ms: ms(hist.value_at_quantile(0.50)),
            p90_ms: ms(hist.value_at_quantile(0.90)),
            p99_ms: ms(hist.value_at_quantile(0.99)),
            p999_ms: ms(hist.value_at_quantile(0.999)),
            max_ms: ms(hist.max()),
        }
    }

    /// `p50 / p90 / p99 / p99.9 / max` as one short line.
    pub fn line(&self) -> String {
        if self.count == 0 {
            return "no samples".into();
        }
        format!(
            "p50 {} · p90 {} · p99 {} · p99.9 {} · max {}",
            fmt_ms(self.p50_ms),
            fmt_ms(self.p90_ms),
            fmt_ms(self.p99_ms),
            fmt_ms(self.p999_ms),
            fmt_ms(self.max_ms)
        )
    }
}

/// A duration in milliseconds with a precision that suits its size.
pub fn fmt_ms(ms: f64) -> String {
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else if ms < 1_000.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{:.2} s", ms / 1_000.0)
    }
}

/// Clock ticks per second in `/proc/PID/stat` (`USER_HZ`, fixed at 100 on Linux's ABI).
const TICKS_PER_SEC: f64 = 100.0;

/// One reading of a process's CPU time and memory.
#[derive(Clone, Copy, Debug)]
pub struct ProcSample {
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
    /// Resident set now (VmRSS), KiB.
    pub rss_kib: u64,
    /// Peak resident set (VmHWM), KiB.
    pub hwm_kib: u64,
    /// Bytes the process has sent toward storage (`write_bytes` of `/proc/PID/io`), where
    /// that file is readable.
    pub write_bytes: Option<u64>,
    /// Bytes the process has passed to `write(2)` and its kin (`wchar` of `/proc/PID/io`),
    /// whether or not they reach storage: files and pipes. Sockets written with `send(2)`,
    /// as tokio's are, are not counted.
    pub wchar: Option<u64>,
    pub at: Instant,
}

impl ProcSample {
    /// Reads `/proc/PID/{stat,status}` (`pid` `None`: this process); `None` where there is no
    /// `/proc` or the process is gone.
    pub fn read(pid: Option<u32>) -> Option<ProcSample> {
        let dir = match pid {
            Some(p) => format!("/proc/{p}"),
            None => "/proc/self".to_owned(),
        };
        let stat = std::fs::read_to_string(format!("{dir}/stat")).ok()?;
        let status = std::fs::read_to_string(format!("{dir}/status")).ok()?;
        let io = std::fs::read_to_string(format!("{dir}/io")).ok();
        let io_field = |key| io.as_deref().and_then(|io| parse_io_field(io, key));
        Some(ProcSample {
            cpu_ticks: parse_stat_cpu_ticks(&stat)?,
            rss_kib: parse_status_kib(&status, "VmRSS").unwrap_or(0),
            hwm_kib: parse_status_kib(&status, "VmHWM").unwrap_or(0),
            write_bytes: io_field("write_bytes"),
            wchar: io_field("wchar"),
            at: Instant::now(),
        })
    }

    /// CPU time between two samples as a percentage of one core over the wall time between them.
    pub fn cpu_pct_since(&self, before: &ProcSample) -> f64 {
        let wall = self.at.duration_since(before.at).as_secs_f64();
        if wall <= 0.0 {
            return 0.0;
        }
        self.cpu_secs_since(before) / wall * 100.0
    }

    /// CPU seconds (user + system) between two samples.
    pub fn cpu_secs_since(&self, before: &ProcSample) -> f64 {
        self.cpu_ticks.saturating_sub(before.cpu_ticks) as f64 / TICKS_PER_SEC
    }
}

/// utime + stime (fields 14 and 15) of a `/proc/PID/stat` line. The command name (field 2)
/// may contain spaces and parentheses, so fields are counted from its last `)`.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state), so field n is fields[n - 3].
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// A `Key:   1234 kB` line of `/proc/PID/status`, in KiB.
pub fn parse_status_kib(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let value = line.strip_prefix(key)?.strip_prefix(':')?;
        value.split_whitespace().next()?.parse().ok()
    })
}

/// A `key: 1234` line of `/proc/PID/io`.
pub fn parse_io_field(io: &str, key: &str) -> Option<u64> {
    io.lines().find_map(|line| {
        let value = line.strip_prefix(key)?.strip_prefix(':')?;
        value.trim().parse().ok()
    })
}

/// CPU, memory and disk writes of a process (the spawned server, the load generator) over a run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessStats {
    pub pid: u32,
    /// CPU (user + system) over the run, in % of one core.
    pub cpu_pct: f64,
    pub cpu_secs: f64,
    /// Resident memory at the end (VmRSS), MiB.
    pub rss_mib: f64,
    /// Peak resident memory since the process started (VmHWM), MiB.
    pub peak_rss_mib: f64,
    /// What the process wrote toward storage over the run (page cache pages it dirtied,
    /// counted when dirtied), MiB; `None` where `/proc/PID/io` cannot be read.
    #[serde(default)]
    pub disk_written_mib: Option<f64>,
    /// What the process passed to `write(2)` calls over the run (`wchar`: before the page
    /// cache; not its sockets' `send(2)`s), MiB.
    #[serde(default)]
    pub chars_written_mib: Option<f64>,
}

impl ProcessStats {
    /// The stats between two samples of process `pid`.
    pub fn between(pid: u32, before: &ProcSample, after: &ProcSample) -> ProcessStats {
        ProcessStats {
            pid,
            cpu_pct: after.cpu_pct_since(before),
            cpu_secs: after.cpu_secs_since(before),
            rss_mib: after.rss_kib as f64 / 1024.0,
            peak_rss_mib: after.hwm_kib as f64 / 1024.0,
            disk_written_mib: mib_between(before.write_bytes, after.write_bytes),
            chars_written_mib: mib_between(before.wchar, after.wchar),
        }
    }
}

/// The growth of a byte counter read twice, in MiB.
fn mib_between(before: Option<u64>, after: Option<u64>) -> Option<f64> {
    Some(after?.saturating_sub(before?) as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_known_samples() {
        let mut h = histogram();
        // 1..=1000 ms, one sample each.
        for ms in 1..=1000u64 {
            record_ns(&mut h, ms * 1_000_000);
        }
        let s = LatencySummary::of(&h);
        assert_eq!(s.count, 1000);
        let close = |got: f64, want: f64| (got - want).abs() <= want * 0.001 + 1e-9;
        assert!(close(s.min_ms, 1.0), "{s:?}");
        assert!(close(s.p50_ms, 500.0), "{s:?}");
        assert!(close(s.p90_ms, 900.0), "{s:?}");
        assert!(close(s.p99_ms, 990.0), "{s:?}");
        assert!(close(s.p999_ms, 999.0), "{s:?}");
        assert!(close(s.max_ms, 1000.0), "{s:?}");
        assert!(close(s.mean_ms, 500.5), "{s:?}");
    }

    #[test]
    fn skewed_samples_and_merging() {
        // 990 fast (2 ms) and 10 slow (800 ms) split over two histograms, as workers do.
        let (mut a, mut b) = (histogram(), histogram());
        for i in 0..990 {
            record_ns(if i % 2 == 0 { &mut a } else { &mut b }, 2_000_000);
        }
        for _ in 0..10 {
            record_ns(&mut b, 800_000_000);
        }
        a.add(&b).unwrap();
        let s = LatencySummary::of(&a);
        assert_eq!(s.count, 1000);
        assert!((s.p50_ms - 2.0).abs() < 0.01);
        assert!(
            (s.p99_ms - 2.0).abs() < 0.01,
            "p99 is the 990th sample: {s:?}"
        );
        assert!((s.p999_ms - 800.0).abs() < 1.0);
        assert!((s.max_ms - 800.0).abs() < 1.0);
    }

    #[test]
    fn empty_and_extreme_values() {
        let mut h = histogram();
        assert_eq!(LatencySummary::of(&h), LatencySummary::default());
        assert_eq!(LatencySummary::of(&h).line(), "no samples");
        record_ns(&mut h, 10); // sub-µs counts as 1 µs
        record_ns(&mut h, u64::MAX); // clamped to an hour
        let s = LatencySummary::of(&h);
        assert_eq!(s.min_ms, 0.001);
        assert!((s.max_ms - 3_600_000.0).abs() < 3_600.0);
    }

    #[test]
    fn proc_stat_and_status_parsing() {
        let stat = "4242 (confab (x) y) S 1 2 3 4 5 6 7 8 9 10 150 25 0 0 20 0 8 0 100 1000 200";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(175));
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
        let status = "Name:\tconfab\nVmHWM:\t  20480 kB\nVmRSS:\t   10240 kB\n";
        assert_eq!(parse_status_kib(status, "VmRSS"), Some(10240));
        assert_eq!(parse_status_kib(status, "VmHWM"), Some(20480));
        assert_eq!(parse_status_kib(status, "VmSwap"), None);
        let io = "rchar: 10\nwchar: 20\nsyscw: 3\nread_bytes: 4096\nwrite_bytes: 8192\ncancelled_write_bytes: 0\n";
        assert_eq!(parse_io_field(io, "write_bytes"), Some(8192));
        assert_eq!(parse_io_field(io, "read_bytes"), Some(4096));
        assert_eq!(parse_io_field(io, "syscr"), None);
        // This process has a /proc entry on Linux.
        if let Some(s) = ProcSample::read(None) {
            assert!(s.rss_kib > 0 && s.hwm_kib >= s.rss_kib);
        }
    }

    #[test]
    fn cpu_percentage_is_of_one_core() {
        let t0 = Instant::now();
        let before = ProcSample {
            cpu_ticks: 100,
            rss_kib: 0,
            hwm_kib: 0,
            write_bytes: Some(1 << 20),
            wchar: Some(0),
            at: t0,
        };
        let after = ProcSample {
            cpu_ticks: 400,
            rss_kib: 2048,
            hwm_kib: 4096,
            write_bytes: Some(5 << 19),
            wchar: Some(3 << 20),
            at: t0 + std::time::Duration::from_secs(2),
        };
        let s = ProcessStats::between(7, &before, &after);
        assert_eq!(s.cpu_secs, 3.0);
        assert_eq!(s.cpu_pct, 150.0);
        assert_eq!(s.rss_mib, 2.0);
        assert_eq!(s.peak_rss_mib, 4.0);
        assert_eq!(s.disk_written_mib, Some(1.5));
        assert_eq!(s.chars_written_mib, Some(3.0));
        // Without /proc/PID/io at either end there is no figure.
        let unread = ProcSample {
            write_bytes: None,
            ..after
        };
        assert_eq!(
            ProcessStats::between(7, &before, &unread).disk_written_mib,
            None
        );
    }
}

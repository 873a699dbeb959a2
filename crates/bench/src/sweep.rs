//! `confab bench sweep`: `pairs` at rising offered rates until the delivered throughput stops
//! growing, then an SVG of latency and delivered rate against offered rate.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::UsageError;
use crate::pairs::{LoadArgs, PairsConfig, PairsReport, run_pairs};
use crate::report::{self, OutputArgs, fmt_counts};
use crate::stats::fmt_ms;
use crate::svg::{Panel, Series, plot};
use crate::target::{Target, TargetArgs};

/// Most steps one sweep may take.
pub const MAX_STEPS: usize = 100;

/// `confab bench sweep`.
#[derive(clap::Args, Clone, Debug)]
pub struct SweepArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub load: LoadArgs,
    /// First offered rate, msgs/s.
    #[arg(long, default_value_t = 1000.0)]
    pub from: f64,
    /// Last offered rate, msgs/s (the sweep stops earlier once throughput stops growing).
    #[arg(long, default_value_t = 50_000.0)]
    pub to: f64,
    /// Rate added per step, msgs/s.
    #[arg(long, default_value_t = 1000.0)]
    pub step: f64,
    /// The offered rates, comma-separated, instead of --from/--to/--step.
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["from", "to", "step"])]
    pub rates: Vec<f64>,
    /// A step "grows" the throughput when it beats the best so far by this fraction...
    #[arg(long, default_value_t = 0.05)]
    pub min_gain: f64,
    /// ...and the sweep stops after this many steps in a row that did not.
    #[arg(long, default_value_t = 2)]
    pub patience: usize,
    /// Where to write the plot.
    #[arg(long, default_value = "confab-sweep.svg")]
    pub svg: PathBuf,
    /// Seconds of rest between steps, so one step's backlog does not spill into the next.
    #[arg(long, default_value_t = 1.0)]
    pub pause: f64,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// The rates `from, from + step, …` up to `to`.
pub fn stepped_rates(from: f64, to: f64, step: f64) -> Result<Vec<f64>, String> {
    if !(from.is_finite() && from > 0.0 && step.is_finite() && step > 0.0 && to.is_finite()) {
        return Err("--from and --step must be positive rates".into());
    }
    if to < from {
        return Err("--to must not be below --from".into());
    }
    let n = ((to - from) / step + 1e-9).floor() as usize + 1;
    if n > MAX_STEPS {
        return Err(format!(
            "{n} steps from {from} to {to} by {step}; at most {MAX_STEPS}"
        ));
    }
    Ok((0..n).map(|i| from + i as f64 * step).collect())
}

/// Whether delivered throughput has stopped growing: none of the last `patience` steps beat
/// the best of the steps before it by at least `min_gain` (a fraction). Comparing with the
/// best so far, not the previous step, keeps one noisy dip from restarting the count.
pub fn plateaued(delivered: &[f64], min_gain: f64, patience: usize) -> bool {
    if patience == 0 || delivered.len() <= patience {
        return false;
    }
    let first = delivered.len() - patience;
    (first..delivered.len()).all(|i| {
        let best = delivered[..i].iter().copied().fold(0.0, f64::max);
        delivered[i] < best * (1.0 + min_gain)
    })
}

/// Everything a sweep measured.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SweepReport {
    /// One `pairs` report per step, in order.
    pub steps: Vec<PairsReport>,
    /// Why the sweep ended.
    pub stopped: String,
    /// The highest delivered throughput, msgs/s, and the offered rate that reached it.
    pub peak_delivered_per_sec: f64,
    pub peak_at_rate: f64,
    /// Where the plot went.
    pub svg: String,
}

impl fmt::Display for SweepReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(first) = self.steps.first() else {
            return writeln!(f, "confab bench sweep: no step ran");
        };
        let c = &first.config;
        writeln!(
            f,
            "confab bench sweep: {} users, {} s per step, {}-byte bodies, against {}",
            c.users,
            c.duration_s,
            c.body_bytes,
            report::fmt_server(&first.server, first.spawned)
        )?;
        writeln!(
            f,
            "  latency measured from the intended send time (open-loop, coordinated-omission corrected)"
        )?;
        writeln!(
            f,
            "  {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>8} {:>8}  errors",
            "offered/s", "sent/s", "deliv/s", "p50", "p99", "p99.9", "undeliv", "srv CPU"
        )?;
        for s in &self.steps {
            let cpu = s
                .server_process
                .as_ref()
                .map_or("-".to_owned(), |p| format!("{:.0}%", p.cpu_pct));
            writeln!(
                f,
                "  {:>10.0} {:>10.1} {:>10.1} {:>10} {:>10} {:>10} {:>8} {:>8}  {}",
                s.config.rate,
                s.sent_per_sec,
                s.delivered_per_sec,
                fmt_ms(s.latency_ms.p50_ms),
                fmt_ms(s.latency_ms.p99_ms),
                fmt_ms(s.latency_ms.p999_ms),
                s.undelivered,
                cpu,
                fmt_counts(&s.errors)
            )?;
        }
        writeln!(
            f,
            "  peak: {:.1} msgs/s delivered at {} offered; {}",
            self.peak_delivered_per_sec, self.peak_at_rate, self.stopped
        )?;
        writeln!(f, "  plot: {}", self.svg)
    }
}

/// The sweep's SVG: latency percentiles (log scale) and delivered rate against offered rate.
pub fn sweep_svg(steps: &[PairsReport]) -> String {
    let pts = |f: &dyn Fn(&PairsReport) -> f64| -> Vec<(f64, f64)> {
        steps.iter().map(|s| (s.config.rate, f(s))).collect()
    };
    let max_rate = steps.iter().map(|s| s.config.rate).fold(0.0, f64::max);
    let title = match steps.first() {
        Some(s) => format!(
            "confab bench sweep: {} users, {}-byte bodies, {} s per step",
            s.config.users, s.config.body_bytes, s.config.duration_s
        ),
        None => "confab bench sweep".to_owned(),
    };
    let series = |name: &str, color: &str, points: Vec<(f64, f64)>, dashed: bool| Series {
        name: name.into(),
        color: color.into(),
        points,
        dashed,
    };
    plot(
        &title,
        "offered load (msgs/s)",
        &[
            Panel {
                title: "End-to-end latency from intended send time".into(),
                y_label: "ms (log scale)".into(),
                log_y: true,
                series: vec![
                    series("p50", "#1f77b4", pts(&|s| s.latency_ms.p50_ms), false),
                    series("p99", "#d62728", pts(&|s| s.latency_ms.p99_ms), false),
                ],
            },
            Panel {
                title: "Delivered throughput".into(),
                y_label: "delivered msgs/s".into(),
                log_y: false,
                series: vec![
                    series("delivered", "#2ca02c", pts(&|s| s.delivered_per_sec), false),
                    series(
                        "offered",
                        "#999999",
                        vec![(0.0, 0.0), (max_rate, max_rate)],
                        true,
                    ),
                ],
            },
        ],
    )
}

/// `confab bench sweep`: runs the steps, writes the plot, prints.
pub async fn main(args: SweepArgs) -> anyhow::Result<bool> {
    let usage = |e: String| anyhow::Error::new(UsageError(e));
    let rates = if args.rates.is_empty() {
        stepped_rates(args.from, args.to, args.step).map_err(usage)?
    } else if args.rates.len() > MAX_STEPS {
        return Err(usage(format!("at most {MAX_STEPS} --rates")));
    } else {
        args.rates.clone()
    };
    if !(args.min_gain.is_finite() && args.min_gain >= 0.0) {
        return Err(usage("--min-gain must be a fraction ≥ 0".into()));
    }
    let pause = Duration::try_from_secs_f64(args.pause)
        .ok()
        .filter(|p| p.as_secs() <= 600)
        .ok_or_else(|| usage("--pause must be 0 to 600 seconds".into()))?;
    let configs: Vec<PairsConfig> = rates
        .iter()
        .map(|&r| args.load.config(r))
        .collect::<Result<_, _>>()
        .map_err(usage)?;
    let spawned_rate = args.target.spawn.then_some(args.target.server_send_rate);
    if let Some(top) = configs.last() {
        for n in top.limit_notes(spawned_rate) {
            report::note(format!("at {} msgs/s: {n}", top.rate));
        }
    }
    let users = configs[0].users;
    crate::target::ensure_fd_budget(users)?;
    let target = Target::prepare(&args.target, users).await?;
    let result = sweep(&target, &configs, &args, pause).await;
    target.shutdown().await;
    let report = result?;
    args.output.print(&report);
    // Overloading the server is the point of a sweep: late (undelivered) messages in its top
    // steps are a result, not a failure.
    Ok(!report.steps.is_empty())
}

async fn sweep(
    target: &Target,
    configs: &[PairsConfig],
    args: &SweepArgs,
    pause: Duration,
) -> anyhow::Result<SweepReport> {
    let mut steps: Vec<PairsReport> = Vec::new();
    let mut stopped = format!("reached the last rate, {}", configs[configs.len() - 1].rate);
    for (i, cfg) in configs.iter().enumerate() {
        if !args.output.quiet {
            eprintln!(
                "step {}/{}: {} msgs/s offered",
                i + 1,
                configs.len(),
                cfg.rate
            );
        }
        let step = match run_pairs(target, cfg, args.output.bars()).await {
            Ok(s) => s,
            Err(e) => {
                stopped = format!("step at {} msgs/s failed: {e:#}", cfg.rate);
                break;
            }
        };
        if !args.output.quiet {
            eprintln!(
                "  delivered {:.1} msgs/s · latency {}",
                step.delivered_per_sec,
                step.latency_ms.line()
            );
        }
        steps.push(step);
        let delivered: Vec<f64> = steps.iter().map(|s| s.delivered_per_sec).collect();
        if plateaued(&delivered, args.min_gain, args.patience) {
            stopped = format!(
                "throughput grew less than {:.0} % for {} steps in a row",
                args.min_gain * 100.0,
                args.patience
            );
            break;
        }
        if i + 1 < configs.len() {
            tokio::time::sleep(pause).await;
        }
    }
    let peak = steps
        .iter()
        .max_by(|a, b| a.delivered_per_sec.total_cmp(&b.delivered_per_sec));
    let (peak_delivered_per_sec, peak_at_rate) =
        peak.map_or((0.0, 0.0), |s| (s.delivered_per_sec, s.config.rate));
    std::fs::write(&args.svg, sweep_svg(&steps))
        .with_context(|| format!("cannot write {}", args.svg.display()))?;
    Ok(SweepReport {
        steps,
        stopped,
        peak_delivered_per_sec,
        peak_at_rate,
        svg: args.svg.display().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stops_after_two_steps_without_five_percent_growth() {
        assert!(!plateaued(&[], 0.05, 2));
        assert!(
            !plateaued(&[1000.0, 1000.0], 0.05, 2),
            "too few steps to tell"
        );
        assert!(!plateaued(&[1000.0, 2000.0, 3000.0], 0.05, 2));
        assert!(
            !plateaued(&[1000.0, 2000.0, 2050.0], 0.05, 2),
            "one flat step is not enough"
        );
        assert!(plateaued(&[1000.0, 2000.0, 2050.0, 2080.0], 0.05, 2));
        // A dip does not count as growth when the next step merely returns to the peak.
        assert!(plateaued(&[1000.0, 3000.0, 2000.0, 3050.0], 0.05, 2));
        // Real growth resets the count.
        assert!(!plateaued(&[1000.0, 2000.0, 2050.0, 2300.0], 0.05, 2));
        assert!(plateaued(&[1000.0, 1000.0, 1000.0, 1000.0], 0.05, 3));
        assert!(
            !plateaued(&[1000.0, 1000.0, 1000.0], 0.05, 0),
            "patience 0 never stops"
        );
    }

    #[test]
    fn rates_step_up_to_the_last() {
        assert_eq!(
            stepped_rates(1000.0, 3000.0, 1000.0).unwrap(),
            [1000.0, 2000.0, 3000.0]
        );
        assert_eq!(
            stepped_rates(1000.0, 3500.0, 1000.0).unwrap(),
            [1000.0, 2000.0, 3000.0]
        );
        assert_eq!(stepped_rates(0.1, 0.3, 0.1).unwrap().len(), 3);
        assert_eq!(stepped_rates(5.0, 5.0, 1.0).unwrap(), [5.0]);
        assert!(stepped_rates(0.0, 10.0, 1.0).is_err());
        assert!(stepped_rates(10.0, 1.0, 1.0).is_err());
        assert!(stepped_rates(1.0, 1e6, 1.0).is_err(), "too many steps");
    }

    #[test]
    fn sweep_report_and_plot() {
        let step = |rate: f64, delivered: f64, p99: f64| {
            let mut s = PairsReport::default();
            s.config.rate = rate;
            s.config.users = 10;
            s.delivered_per_sec = delivered;
            s.latency_ms.p50_ms = p99 / 4.0;
            s.latency_ms.p99_ms = p99;
            s
        };
        let steps = vec![step(1000.0, 999.0, 3.0), step(2000.0, 1500.0, 800.0)];
        let svg = sweep_svg(&steps);
        let doc = roxmltree::Document::parse(&svg).unwrap();
        let names: Vec<&str> = doc
            .descendants()
            .filter_map(|n| n.attribute("data-name"))
            .collect();
        assert_eq!(names, ["p50", "p99", "delivered", "offered"]);
        let report = SweepReport {
            steps,
            stopped: "done".into(),
            peak_delivered_per_sec: 1500.0,
            peak_at_rate: 2000.0,
            svg: "x.svg".into(),
        };
        let json = serde_json::to_string(&report).unwrap();
        assert_eq!(serde_json::from_str::<SweepReport>(&json).unwrap(), report);
        assert!(report.to_string().contains("1500.0"));
    }
}

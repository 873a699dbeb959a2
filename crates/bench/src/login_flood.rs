//! `confab bench login-flood`: what a password-guessing flood costs other users. A pair of
//! users chats at a steady rate, first alone (the quiet phase), then while `--guessers`
//! clients each send wrong passwords for a third account as fast as the answers come back
//! (the flood phase); the report puts the pair's message latency of both phases side by side,
//! with the flood's answers by status. Against any server (`--server`, `--accounts`) or one it
//! starts (`--spawn`, with `--confab-bin` for another build), so that two builds are measured
//! by the same command.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::UsageError;
use crate::pairs::{LoadArgs, PaceArgs, PairsReport, run_pairs};
use crate::report::{self, OutputArgs, Table, fmt_counts, fmt_n};
use crate::stats::{self, LatencySummary};
use crate::target::{Target, TargetArgs};

/// Most guessing clients one run may start.
pub const MAX_GUESSERS: usize = 1_024;
/// How long the flood runs before the flood phase's messages start, so that they meet it in
/// full swing.
const WARM_UP: Duration = Duration::from_secs(1);

/// `confab bench login-flood`.
#[derive(clap::Args, Clone, Debug)]
pub struct LoginFloodArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Clients guessing passwords at once, each waiting for its answer before the next guess.
    #[arg(long, short = 'g', default_value_t = 16)]
    pub guessers: usize,
    /// Seconds of each phase (quiet, then flood).
    #[arg(long, short = 'd', default_value_t = 10.0)]
    pub duration: f64,
    /// Messages per second the pair sends, both together.
    #[arg(long, short = 'r', default_value_t = 50.0)]
    pub rate: f64,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// What the guessers got.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FloodCounts {
    /// Login attempts answered, by HTTP status (`401`, `429`, `503`, …) or transport error.
    pub answers: BTreeMap<String, u64>,
    /// Attempts answered per second over the flood.
    pub per_sec: f64,
    /// Time to an answer, every status together.
    pub latency_ms: LatencySummary,
}

/// Everything one login-flood run measured.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LoginFloodReport {
    pub server: String,
    pub spawned: bool,
    pub guessers: usize,
    pub rate: f64,
    pub duration_s: f64,
    /// The pair alone.
    pub quiet: PairsReport,
    /// The pair while the guessers run.
    pub flood: PairsReport,
    pub flood_counts: FloodCounts,
}

/// `confab bench login-flood`: sets up the target, runs both phases, prints.
pub async fn main(args: LoginFloodArgs) -> anyhow::Result<bool> {
    if !(1..=MAX_GUESSERS).contains(&args.guessers) {
        return Err(UsageError(format!("--guessers must be 1 to {MAX_GUESSERS}")).into());
    }
    let load = LoadArgs {
        users: 2,
        pace: PaceArgs {
            duration: args.duration,
            body: 100,
            grace: 2.0,
            workers: Some(1),
            ack_interval: 1000,
            connect_concurrency: 2,
        },
    };
    let cfg = load
        .config(args.rate)
        .map_err(|e| anyhow::Error::new(UsageError(e)))?;
    args.target.one_server("login-flood")?;
    // Users 0 and 1 chat; user 2 is the one whose password is guessed.
    let target = Target::prepare(&args.target, 3).await?;
    let result = run(&target, &args, &cfg).await;
    target.shutdown().await;
    let report = result?;
    args.output.print(&report);
    Ok(report.quiet.undelivered == 0 && report.flood.undelivered == 0)
}

async fn run(
    target: &Target,
    args: &LoginFloodArgs,
    cfg: &crate::pairs::PairsConfig,
) -> anyhow::Result<LoginFloodReport> {
    let bars = args.output.bars();
    let victim = target.accounts[2].username.clone();
    let base = format!("http://{}", target.addr);

    report::note("quiet phase: the pair alone");
    let quiet = run_pairs(target, cfg, bars).await?;

    report::note(format!(
        "flood phase: the pair while {} clients guess {victim}'s password",
        args.guessers
    ));
    let flood = Flood::start(&base, &victim, args.guessers, bars)?;
    tokio::time::sleep(WARM_UP).await;
    let measured = run_pairs(target, cfg, bars).await;
    let flood_counts = flood.stop().await;
    Ok(LoginFloodReport {
        server: target.describe(),
        spawned: target.server.is_some(),
        guessers: args.guessers,
        rate: args.rate,
        duration_s: args.duration,
        quiet,
        flood: measured?,
        flood_counts,
    })
}

/// The guessing clients, running until stopped.
struct Flood {
    stop: Arc<AtomicBool>,
    started: Instant,
    tasks: Vec<tokio::task::JoinHandle<Guesses>>,
    bar: indicatif::ProgressBar,
    ticker: tokio::task::JoinHandle<()>,
}

/// What one guesser saw.
struct Guesses {
    answers: BTreeMap<String, u64>,
    latency: hdrhistogram::Histogram<u64>,
}

impl Flood {
    fn start(base: &str, victim: &str, guessers: usize, bars: bool) -> anyhow::Result<Flood> {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let url = format!("{base}/v1/sessions");
        let mut tasks = Vec::with_capacity(guessers);
        for g in 0..guessers {
            // One client each, as independent attackers would be: its own connection.
            let http = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .build()
                .context("cannot build an HTTP client")?;
            let (stop, answered, url, victim) = (
                stop.clone(),
                answered.clone(),
                url.clone(),
                victim.to_owned(),
            );
            tasks.push(tokio::spawn(async move {
                let mut out = Guesses {
                    answers: BTreeMap::new(),
                    latency: stats::histogram(),
                };
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let body = serde_json::json!({
                        "username": victim,
                        "password": format!("wrong-guess-{g}-{n}"),
                    });
                    let sent = std::time::Instant::now();
                    let answer = match http.post(&url).json(&body).send().await {
                        Ok(r) => {
                            let status = r.status().as_u16().to_string();
                            // Read the body so the connection is reused.
                            let _ = r.bytes().await;
                            status
                        }
                        Err(e) => {
                            // A refused connection must not turn into a busy loop.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            format!(
                                "error: {}",
                                if e.is_connect() { "connect" } else { "other" }
                            )
                        }
                    };
                    stats::record_ns(&mut out.latency, sent.elapsed().as_nanos() as u64);
                    *out.answers.entry(answer).or_default() += 1;
                    answered.fetch_add(1, Ordering::Relaxed);
                }
                out
            }));
        }
        let bar = report::bar(
            bars,
            0,
            "guessing {spinner} {pos} attempts answered ({per_sec})",
        );
        let ticker_bar = bar.clone();
        let ticker = tokio::spawn(async move {
            let bar = ticker_bar;
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tick.tick().await;
                bar.set_position(answered.load(Ordering::Relaxed));
            }
        });
        Ok(Flood {
            stop,
            started: Instant::now(),
            tasks,
            bar,
            ticker,
        })
    }

    async fn stop(self) -> FloodCounts {
        self.stop.store(true, Ordering::Relaxed);
        let secs = self.started.elapsed().as_secs_f64();
        let mut answers = BTreeMap::new();
        let mut latency = stats::histogram();
        for task in self.tasks {
            if let Ok(g) = task.await {
                for (k, v) in g.answers {
                    *answers.entry(k).or_default() += v;
                }
                let _ = latency.add(&g.latency);
            }
        }
        self.ticker.abort();
        self.bar.finish_and_clear();
        let total: u64 = answers.values().sum();
        FloodCounts {
            answers,
            per_sec: total as f64 / secs.max(1e-9),
            latency_ms: LatencySummary::of(&latency),
        }
    }
}

impl fmt::Display for LoginFloodReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut t = Table::new(format!(
            "confab bench login-flood: a pair at {} msgs/s for {} s alone, then for {} s while \
             {} clients guess a password",
            self.rate, self.duration_s, self.duration_s, self.guessers
        ));
        t.row("server", report::fmt_server(&self.server, self.spawned));
        for (label, r) in [("quiet", &self.quiet), ("flood", &self.flood)] {
            t.row(
                &format!("{label}: messages"),
                format!(
                    "{} sent, {} delivered, {} undelivered, errors {}",
                    fmt_n(r.sent),
                    fmt_n(r.delivered),
                    fmt_n(r.undelivered),
                    fmt_counts(&r.errors)
                ),
            );
            t.row(&format!("{label}: latency"), r.latency_ms.line());
        }
        let c = &self.flood_counts;
        t.row(
            "login attempts",
            format!(
                "{} answered ({:.1}/s): {}",
                fmt_n(c.answers.values().sum()),
                c.per_sec,
                fmt_counts(&c.answers)
            ),
        );
        t.row("  time to answer", c.latency_ms.line());
        if let Some(s) = &self.flood.server_process {
            t.row("server (flood)", crate::pairs::process_line(s));
        }
        write!(f, "{t}")
    }
}

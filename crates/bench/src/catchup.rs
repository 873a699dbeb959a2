//! `confab bench catchup`: one device is offline while M messages for it are stored; then it
//! reconnects, and the time from opening the socket to `synced` is measured, and every one of
//! the M messages must have arrived in the catch-up.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use confab_client::{ClientFrame, Connection, DEFAULT_READ_BUFFER, ErrorCode, Id, ServerFrame};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::UsageError;
use crate::body::{self, Stamp};
use crate::connect::{connect_synced, count, sdk_reason};
use crate::pairs::process_line;
use crate::report::{self, OutputArgs, Table, fmt_counts, fmt_n};
use crate::stats::{ProcessStats, fmt_ms};
use crate::target::{Target, TargetArgs};

/// Most messages one run may pile up.
pub const MAX_MESSAGES: usize = 10_000_000;
/// Most partners one run may use.
pub const MAX_SENDERS: usize = 1_000;
/// A send neither acked nor refused this long is sent again (same `client_id`, so the server
/// stores it once): a frame over the server's per-socket frame limit is refused without a
/// `ref`, so the refusal cannot be matched to its send.
const RESEND_AFTER: Duration = Duration::from_secs(3);

/// `confab bench catchup`.
#[derive(clap::Args, Clone, Debug)]
pub struct CatchupArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Messages stored for the offline device.
    #[arg(long, short = 'm', default_value_t = 1000)]
    pub messages: usize,
    /// Message body size in bytes (48-4096).
    #[arg(long, short = 'b', default_value_t = 100)]
    pub body: usize,
    /// Partners that store the messages between them, each on its own socket [default: one
    /// per 5,000 messages, at most 64]. The server takes at most 200 frames/s from one socket,
    /// so one partner alone stores 100,000 messages in no less than 500 s.
    #[arg(long)]
    pub senders: Option<usize>,
    /// Sends awaiting their ack at once, per partner, while the messages are stored.
    #[arg(long, default_value_t = 100)]
    pub window: usize,
    /// Seconds the whole run may take.
    #[arg(long, default_value_t = 300.0)]
    pub timeout: f64,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// Everything one catch-up run measured.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CatchupReport {
    pub server: String,
    pub spawned: bool,
    pub run_id: u32,
    /// Messages the partners were asked to send.
    pub messages: u64,
    /// Partners (each its own account and socket) that sent them.
    pub senders: usize,
    pub body_bytes: usize,
    /// Of those, acked with `sent` before the reconnect.
    pub acked: u64,
    /// Sends given up on (refused with an error other than `rate_limited`).
    pub failed: u64,
    /// Sends repeated after `rate_limited` or no answer (idempotent: same `client_id`).
    pub resends: u64,
    /// Error frames while storing, by code.
    pub errors: BTreeMap<String, u64>,
    /// Seconds to store the messages, and the rate.
    pub fill_s: f64,
    pub fill_per_sec: f64,
    /// Reconnect: opening the socket to `welcome`, ms.
    pub welcome_ms: f64,
    /// Reconnect: opening the socket to `synced`, ms (the headline number).
    pub synced_ms: f64,
    /// `welcome` to `synced`, ms: the catch-up itself.
    pub catchup_ms: f64,
    /// Messages replayed per second of catch-up.
    pub catchup_per_sec: f64,
    /// Messages of this run received before `synced` (each counted once).
    pub delivered: u64,
    /// Acked messages that were not in the catch-up.
    pub missing: u64,
    pub duplicates: u64,
    /// Other messages in the catch-up (not from this run), ignored.
    pub foreign: u64,
    /// The spawned server over the reconnect (socket open to `synced`).
    pub server_process: Option<ProcessStats>,
}

impl fmt::Display for CatchupReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut t = Table::new(format!(
            "confab bench catchup: {} messages of {} bytes for an offline device",
            fmt_n(self.messages),
            self.body_bytes
        ));
        t.row("server", report::fmt_server(&self.server, self.spawned));
        t.row(
            "stored",
            format!(
                "{} acked, {} failed, from {} partner(s) in {:.2} s ({:.1} msgs/s, {} resends)",
                fmt_n(self.acked),
                fmt_n(self.failed),
                self.senders,
                self.fill_s,
                self.fill_per_sec,
                fmt_n(self.resends)
            ),
        );
        t.row("errors while storing", fmt_counts(&self.errors));
        t.row("reconnect → welcome", fmt_ms(self.welcome_ms));
        t.row("reconnect → synced", fmt_ms(self.synced_ms));
        t.row(
            "catch-up",
            format!(
                "{} in {} ({:.0} msgs/s)",
                fmt_n(self.delivered),
                fmt_ms(self.catchup_ms),
                self.catchup_per_sec
            ),
        );
        t.row(
            "missing",
            format!(
                "{} (acked, not in the catch-up){}",
                fmt_n(self.missing),
                if self.missing == 0 && self.acked == self.messages {
                    ": all delivered"
                } else {
                    ""
                }
            ),
        );
        if self.duplicates > 0 || self.foreign > 0 {
            t.row(
                "duplicates/foreign",
                format!("{} / {}", fmt_n(self.duplicates), fmt_n(self.foreign)),
            );
        }
        if let Some(s) = &self.server_process {
            t.row("server (reconnect)", process_line(s));
        }
        write!(f, "{t}")
    }
}

/// `confab bench catchup`: sets up the target, runs, prints.
pub async fn main(args: CatchupArgs) -> anyhow::Result<bool> {
    let usage = |e: String| anyhow::Error::new(UsageError(e));
    if args.target.relay {
        return Err(usage(
            "the relay stores nothing, so there is nothing to catch up from: catchup needs \
             `confab serve`"
                .to_owned(),
        ));
    }
    if args.messages == 0 || args.messages > MAX_MESSAGES {
        return Err(usage(format!("--messages must be 1 to {MAX_MESSAGES}")));
    }
    if !(body::STAMP_LEN..=confab_protocol::MAX_BODY_BYTES).contains(&args.body) {
        return Err(usage(format!(
            "--body must be {} to {} bytes",
            body::STAMP_LEN,
            confab_protocol::MAX_BODY_BYTES
        )));
    }
    let timeout = Duration::try_from_secs_f64(args.timeout)
        .ok()
        .filter(|t| !t.is_zero() && t.as_secs() <= 3600)
        .ok_or_else(|| usage("--timeout must be more than 0 and at most 3600 seconds".into()))?;
    let senders = match args.senders {
        Some(0) => return Err(usage("--senders must be at least 1".into())),
        Some(k) => k.min(args.messages).min(MAX_SENDERS),
        None => args.messages.div_ceil(5_000).clamp(1, 64),
    };
    if !args.target.spawn {
        report::note(
            "the partner's sends are retried after rate_limited; a server at its default limit \
             (20 msgs/s per device, burst 100) makes storing them slow: start it with a higher \
             --send-rate/--send-burst",
        );
    }
    args.target.one_server("catchup")?;
    let target = Target::prepare(&args.target, 1 + senders).await?;
    let result = tokio::time::timeout(
        timeout,
        run_catchup(
            &target,
            args.messages,
            senders,
            args.body,
            args.window.max(1),
            args.output.bars(),
        ),
    )
    .await
    .map_err(|_| anyhow!("the run took longer than --timeout {}s", args.timeout))
    .and_then(|r| r);
    target.shutdown().await;
    let report = result?;
    args.output.print(&report);
    Ok(report.missing == 0 && report.acked == report.messages)
}

/// One send of the fill phase.
#[derive(Clone, Copy, PartialEq)]
enum Slot {
    Queued,
    InFlight(Instant),
    Acked,
    Failed,
}

/// Runs the catch-up benchmark with `target.accounts[0]` as the offline device and the next
/// `senders` accounts as its partners, who store `messages` messages for it between them.
pub async fn run_catchup(
    target: &Target,
    messages: usize,
    senders: usize,
    body_len: usize,
    window: usize,
    bars: bool,
) -> anyhow::Result<CatchupReport> {
    let senders = senders.clamp(1, messages.max(1));
    let Some((reader, partners)) = target.accounts.split_first() else {
        bail!("catchup needs accounts");
    };
    if partners.len() < senders {
        bail!(
            "catchup with {senders} senders needs {} accounts",
            senders + 1
        );
    }
    let partners = &partners[..senders];
    let run: u32 = rand::random();
    let mut report = CatchupReport {
        server: target.ws_url().to_owned(),
        spawned: target.server.is_some(),
        run_id: run,
        messages: messages as u64,
        senders,
        body_bytes: body_len,
        ..Default::default()
    };

    // 1. The reader's device comes online once, learns where its stream ends, and goes away.
    let first = connect_synced(target.ws_url(), &reader.token, None, DEFAULT_READ_BUFFER)
        .await
        .context("first connect of the offline device")?;
    let resume_at = first.cursor.clone();
    let _ = first.conn.close().await;

    // 2. The partners store the messages, each acked; partner k sends its share of the
    // sequence numbers, so that every message of the run has its own.
    let fill_bar = report::bar(
        bars,
        messages as u64,
        "storing {bar:40} {pos}/{len} msgs ({per_sec})",
    );
    let t_fill = Instant::now();
    let fills = partners.iter().enumerate().map(|(k, p)| {
        let seqs = (k * messages / senders) as u32..((k + 1) * messages / senders) as u32;
        let bar = fill_bar.clone();
        async move {
            let partner = connect_synced(target.ws_url(), &p.token, None, DEFAULT_READ_BUFFER)
                .await
                .context("connect of a sending partner")?;
            fill(
                partner.conn,
                reader.user_id,
                run,
                seqs,
                body_len,
                window,
                &bar,
            )
            .await
        }
    });
    let fills = futures_util::future::join_all(fills).await;
    fill_bar.finish_and_clear();
    report.fill_s = t_fill.elapsed().as_secs_f64();
    let mut acked = vec![false; messages];
    for f in fills {
        let f = f?;
        for seq in f.acked {
            acked[seq as usize] = true;
            report.acked += 1;
        }
        report.failed += f.failed;
        report.resends += f.resends;
        for (k, v) in f.errors {
            *report.errors.entry(k).or_default() += v;
        }
    }
    report.fill_per_sec = report.acked as f64 / report.fill_s.max(1e-9);
    let partner_ids: Vec<Id> = partners.iter().map(|p| p.user_id).collect();

    // 3. The reader reconnects where it left off; everything acked must be in the catch-up.
    let server_before = target.server_sample();
    let t0 = Instant::now();
    let (mut conn, _) = Connection::connect(target.ws_url(), &reader.token, Some(&resume_at))
        .await
        .map_err(|e| anyhow!("reconnect of the offline device: {}", sdk_reason(&e)))?;
    let t_welcome = Instant::now();
    let mut seen = vec![false; messages];
    let synced_cursor = loop {
        match conn.next().await {
            Ok(Some(ServerFrame::Synced { cursor })) => break cursor,
            Ok(Some(ServerFrame::Message { message, .. })) => {
                match body::decode(&message.body)
                    .filter(|s| s.run == run && partner_ids.contains(&message.from))
                    .map(|s| s.seq as usize)
                    .filter(|&s| s < messages)
                {
                    Some(seq) if seen[seq] => report.duplicates += 1,
                    Some(seq) => {
                        seen[seq] = true;
                        report.delivered += 1;
                    }
                    None => report.foreign += 1,
                }
            }
            Ok(Some(ServerFrame::Error { code, message, .. })) => {
                bail!("error during catch-up: {code}: {message}")
            }
            Ok(Some(_)) => {}
            Ok(None) => bail!(
                "socket closed during catch-up (code {:?})",
                conn.close_code()
            ),
            Err(e) => bail!("catch-up failed: {}", sdk_reason(&e)),
        }
    };
    let t_synced = Instant::now();
    let server_after = target.server_sample();
    let _ = conn
        .send(&ClientFrame::Ack {
            cursor: synced_cursor,
        })
        .await;
    let _ = conn.close().await;

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    report.welcome_ms = ms(t_welcome - t0);
    report.synced_ms = ms(t_synced - t0);
    report.catchup_ms = ms(t_synced - t_welcome);
    report.catchup_per_sec =
        report.delivered as f64 / (t_synced - t_welcome).as_secs_f64().max(1e-9);
    report.missing = acked
        .iter()
        .zip(&seen)
        .filter(|(acked, seen)| **acked && !**seen)
        .count() as u64;
    report.server_process = match (target.server_pid(), server_before, server_after) {
        (Some(pid), Some(b), Some(a)) => Some(ProcessStats::between(pid, &b, &a)),
        _ => None,
    };
    Ok(report)
}

/// What one partner's storing achieved.
struct Fill {
    /// The sequence numbers acked with `sent`.
    acked: Vec<u32>,
    failed: u64,
    resends: u64,
    errors: BTreeMap<String, u64>,
}

/// Sends messages `seqs` of run `run` to `to` over `conn`, at most `window` awaiting their
/// ack at once, until each is acked or refused for good. `rate_limited` (and silence, see
/// [`RESEND_AFTER`]) is retried with the same `client_id`, which the server stores once.
async fn fill(
    mut conn: Connection,
    to: Id,
    run: u32,
    seqs: std::ops::Range<u32>,
    body_len: usize,
    window: usize,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<Fill> {
    let base = seqs.start;
    let n = seqs.len();
    let mut out = Fill {
        acked: Vec::with_capacity(n),
        failed: 0,
        resends: 0,
        errors: BTreeMap::new(),
    };
    // Slot of message `seq` is `slots[seq - base]`.
    let mut slots = vec![Slot::Queued; n];
    let mut queue: VecDeque<u32> = seqs.clone().collect();
    let mut inflight = 0usize;
    let mut paused_until = Instant::now();
    let mut last_cursor = None;
    let mut settled = 0usize;
    let mut body = String::with_capacity(body_len);
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut last_scan = Instant::now();
    let t0 = Instant::now();
    let slot_of = |client_id: &str| {
        body::parse_client_id(client_id)
            .filter(|&(r, seq)| r == run && seqs.contains(&seq))
            .map(|(_, seq)| (seq - base) as usize)
    };
    while settled < n {
        let now = Instant::now();
        while inflight < window && now >= paused_until {
            let Some(seq) = queue.pop_front() else { break };
            let i = (seq - base) as usize;
            if slots[i] != Slot::Queued {
                continue;
            }
            let ns = t0.elapsed().as_nanos() as u64;
            let stamp = Stamp {
                run,
                seq,
                intended_ns: ns,
                written_ns: ns,
            };
            body::encode(&stamp, body_len, &mut body);
            let frame = ClientFrame::Send {
                to: Some(to),
                conversation: None,
                client_id: body::client_id(run, seq),
                body: body.clone(),
            };
            conn.send(&frame)
                .await
                .map_err(|e| anyhow!("a partner's socket failed: {}", sdk_reason(&e)))?;
            slots[i] = Slot::InFlight(now);
            inflight += 1;
        }
        tokio::select! {
            frame = conn.next() => match frame {
                Ok(Some(ServerFrame::Sent { client_id, .. })) => {
                    if let Some(i) = slot_of(&client_id)
                        && let Slot::InFlight(_) | Slot::Queued = slots[i]
                    {
                        if let Slot::InFlight(_) = slots[i] {
                            inflight -= 1;
                        }
                        slots[i] = Slot::Acked;
                        settled += 1;
                        out.acked.push(base + i as u32);
                        bar.inc(1);
                    }
                }
                Ok(Some(ServerFrame::Error { code, reference, .. })) => {
                    count(&mut out.errors, code.as_str());
                    if code == ErrorCode::RateLimited {
                        paused_until = Instant::now() + Duration::from_millis(100);
                    }
                    if let Some(i) = reference.as_deref().and_then(slot_of)
                        && let Slot::InFlight(_) = slots[i]
                    {
                        inflight -= 1;
                        if code == ErrorCode::RateLimited {
                            slots[i] = Slot::Queued;
                            queue.push_back(base + i as u32);
                            out.resends += 1;
                        } else {
                            slots[i] = Slot::Failed;
                            settled += 1;
                            out.failed += 1;
                        }
                    }
                }
                Ok(Some(ServerFrame::Message { cursor, .. })) => last_cursor = Some(cursor),
                Ok(Some(_)) => {}
                Ok(None) => bail!("a partner's socket closed (code {:?})", conn.close_code()),
                Err(e) => bail!("a partner's socket failed: {}", sdk_reason(&e)),
            },
            _ = tick.tick() => {
                // Unanswered sends (refused without a ref) go again; scanned twice a second.
                let now = Instant::now();
                if now.duration_since(last_scan) < Duration::from_millis(500) {
                    continue;
                }
                last_scan = now;
                for (i, slot) in slots.iter_mut().enumerate() {
                    if let Slot::InFlight(at) = *slot
                        && now.duration_since(at) > RESEND_AFTER
                    {
                        *slot = Slot::Queued;
                        queue.push_back(base + i as u32);
                        inflight -= 1;
                        out.resends += 1;
                    }
                }
            }
        }
    }
    // Ack the echoes of its own sends, so a later run on this account does not replay them.
    if let Some(cursor) = last_cursor {
        let _ = conn.send(&ClientFrame::Ack { cursor }).await;
    }
    let _ = conn.close().await;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_round_trips_and_reads_well() {
        let mut r = CatchupReport {
            server: "ws://127.0.0.1:1/v1/ws".into(),
            messages: 1000,
            body_bytes: 100,
            acked: 1000,
            delivered: 1000,
            synced_ms: 42.0,
            ..Default::default()
        };
        r.errors.insert("rate_limited".into(), 3);
        let back: CatchupReport =
            serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
        let table = r.to_string();
        assert!(table.contains("all delivered"), "{table}");
        assert!(table.contains("42.0 ms"), "{table}");
    }
}

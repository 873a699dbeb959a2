//! Runs `push`: starts the receiver, subscribes the recipients' devices, runs the baseline
//! phase and then the push phase, and puts them side by side.
//!
//! The baseline runs first, so that nothing of the push phase's work (notifications still
//! going out, their outcomes written) can be charged to it.

use std::time::Duration;

use anyhow::{Context, bail};

use super::PushConfig;
use super::phase::Phase;
use super::receiver::Receiver;
use super::setup::{subscribe, unsubscribe};
use super::summary::PushReport;
use crate::target::Target;

/// Between the phases: the first one's closing sockets and final acks, and the store's
/// checkpoint after them, stay out of the second one's readings.
const PAUSE: Duration = Duration::from_secs(2);

/// Runs `push` against `target`: its first `senders` accounts send, the next `recipients`
/// are subscribed, and the `recipients` after them (with a baseline) are not.
pub async fn run_push(target: &Target, cfg: &PushConfig, bars: bool) -> anyhow::Result<PushReport> {
    if target.accounts.len() < cfg.users() {
        bail!(
            "{} accounts for {} senders and {} recipients{}",
            target.accounts.len(),
            cfg.senders,
            cfg.recipients,
            if cfg.baseline {
                " (twice: one set for the baseline)"
            } else {
                ""
            }
        );
    }
    let (senders, rest) = target.accounts.split_at(cfg.senders);
    let (subscribed, rest) = rest.split_at(cfg.recipients);
    let plain = &rest[..if cfg.baseline { cfg.recipients } else { 0 }];
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .context("cannot make an HTTP client")?;
    let base = format!("http://{}", target.addr);
    let receiver = Receiver::start(cfg.recipients).await?;
    let subscribe_s = subscribe(&client, &base, subscribed, &receiver, bars).await?;
    if target.server.is_none() {
        // A server not started for this run may hold an earlier run's subscriptions.
        unsubscribe(&client, &base, plain, bars).await?;
    }
    let phase = |recipients, receiver| Phase {
        target,
        cfg,
        senders,
        recipients,
        receiver,
        client: &client,
        bars,
    };
    let baseline = if cfg.baseline {
        let report = phase(plain, None).run().await?;
        tokio::time::sleep(PAUSE).await;
        Some(report)
    } else {
        None
    };
    let push = phase(subscribed, Some(&receiver)).run().await?;
    Ok(PushReport {
        config: cfg.clone(),
        server: target.describe(),
        spawned: target.server.is_some(),
        receiver: receiver.origin(),
        subscribe_s,
        push,
        baseline,
    })
}

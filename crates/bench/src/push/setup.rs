//! Subscribing the recipients' devices over HTTP before the run (`PUT
//! /v1/push/subscription` with each device's token), and making sure the baseline's have
//! none.

use std::time::Instant;

use anyhow::{Context, bail};
use futures_util::stream::{self, StreamExt, TryStreamExt};

use super::receiver::Receiver;
use crate::report;
use crate::target::SeededAccount;

/// Requests in flight at once: each is one transaction of the store's writer, so more would
/// only queue there.
const CONCURRENCY: usize = 8;

/// Subscribes device `i` of `recipients` to its endpoint on `receiver`; returns the seconds
/// it took.
pub(super) async fn subscribe(
    client: &reqwest::Client,
    base: &str,
    recipients: &[SeededAccount],
    receiver: &Receiver,
    bars: bool,
) -> anyhow::Result<f64> {
    let url = format!("{base}/v1/push/subscription");
    let bar = report::bar(
        bars,
        recipients.len() as u64,
        "subscribing {bar:40} {pos}/{len} devices",
    );
    let t0 = Instant::now();
    stream::iter(recipients.iter().enumerate())
        .map(|(i, account)| {
            let (url, bar) = (&url, &bar);
            let subscription = receiver.subscription(i);
            async move {
                let response = client
                    .put(url)
                    .bearer_auth(&account.token)
                    .json(&subscription)
                    .send()
                    .await
                    .with_context(|| format!("subscribing {}", account.username))?;
                let status = response.status();
                if !status.is_success() {
                    let text = response.text().await.unwrap_or_default();
                    bail!(
                        "the server refused {}'s subscription ({status}): {}{}",
                        account.username,
                        text.trim(),
                        if status == 400 {
                            "; a server started without `--push-allow-private` refuses \
                             endpoints on 127.0.0.1"
                        } else {
                            ""
                        }
                    );
                }
                bar.inc(1);
                anyhow::Ok(())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<()>()
        .await?;
    bar.finish_and_clear();
    Ok(t0.elapsed().as_secs_f64())
}

/// Deletes any subscription `accounts`' devices have (an earlier run's, on a server that
/// was not spawned for this one), so that the baseline's recipients have none.
pub(super) async fn unsubscribe(
    client: &reqwest::Client,
    base: &str,
    accounts: &[SeededAccount],
    bars: bool,
) -> anyhow::Result<()> {
    let url = format!("{base}/v1/push/subscription");
    let bar = report::bar(
        bars,
        accounts.len() as u64,
        "unsubscribing {bar:40} {pos}/{len} baseline devices",
    );
    stream::iter(accounts)
        .map(|account| {
            let (url, bar) = (&url, &bar);
            async move {
                client
                    .delete(url)
                    .bearer_auth(&account.token)
                    .send()
                    .await
                    .and_then(reqwest::Response::error_for_status)
                    .with_context(|| format!("deleting {}'s subscription", account.username))?;
                bar.inc(1);
                anyhow::Ok(())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<()>()
        .await?;
    bar.finish_and_clear();
    Ok(())
}

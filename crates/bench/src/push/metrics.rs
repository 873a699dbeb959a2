//! The push server's own counters, read from the server's `/metrics` before and after a
//! phase: what it says it sent, folded, dropped and failed, beside what the receiver got;
//! and the store's commits, which tell what the writes per message are made of.

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// The push server's counters (summed over their labels), or their growth over a phase.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PushCounters {
    /// `confab_push_sent_total`: notifications the push service accepted.
    pub sent: u64,
    /// `confab_push_coalesced_total`: messages folded into a notification waiting for
    /// their conversation.
    pub coalesced: u64,
    /// `confab_push_dropped_total`: notifications given up.
    pub dropped: u64,
    /// `confab_push_failed_total`: attempts that failed (retried, rejected or gone).
    pub failed: u64,
    /// `confab_push_online_skipped_total`: devices not pushed to because they had a socket.
    pub online_skipped: u64,
    /// `confab_store_commit_batch_size_count`: the store's transactions, each one `fsync`
    /// (the embedded store; none counted with PostgreSQL).
    #[serde(default)]
    pub commits: u64,
}

impl PushCounters {
    /// The growth from `before` to `self`.
    pub fn since(&self, before: &PushCounters) -> PushCounters {
        PushCounters {
            sent: self.sent.saturating_sub(before.sent),
            coalesced: self.coalesced.saturating_sub(before.coalesced),
            dropped: self.dropped.saturating_sub(before.dropped),
            failed: self.failed.saturating_sub(before.failed),
            online_skipped: self.online_skipped.saturating_sub(before.online_skipped),
            commits: self.commits.saturating_sub(before.commits),
        }
    }
}

/// One reading of `/metrics`: the counters, and the work waiting (intents not expanded plus
/// notifications due), as of the push server's last look at its backlog.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct Scrape {
    pub(super) counters: PushCounters,
    pub(super) backlog: u64,
}

/// Reads the server's `/metrics`.
pub(super) async fn scrape(client: &reqwest::Client, base: &str) -> anyhow::Result<Scrape> {
    let url = format!("{base}/metrics");
    let text = client
        .get(&url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .with_context(|| format!("cannot read {url}"))?
        .text()
        .await
        .with_context(|| format!("cannot read {url}"))?;
    Ok(parse(&text))
}

/// The counters and the backlog in a Prometheus text exposition.
pub(super) fn parse(text: &str) -> Scrape {
    let sum = |name: &str| total(text, name).round() as u64;
    Scrape {
        counters: PushCounters {
            sent: sum("confab_push_sent_total"),
            coalesced: sum("confab_push_coalesced_total"),
            dropped: sum("confab_push_dropped_total"),
            failed: sum("confab_push_failed_total"),
            online_skipped: sum("confab_push_online_skipped_total"),
            commits: sum("confab_store_commit_batch_size_count"),
        },
        backlog: sum("confab_push_outbox_depth"),
    }
}

/// The sum of every sample of metric `name`, whatever its labels.
fn total(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            // `name 3` or `name{…} 3`, not `name_other 3`.
            let value = if let Some(labelled) = rest.strip_prefix('{') {
                &labelled[labelled.rfind('}')? + 1..]
            } else if rest.starts_with(' ') {
                rest
            } else {
                return None;
            };
            value.split_whitespace().next()?.parse::<f64>().ok()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_sum_over_their_labels() {
        let text = "\
# HELP confab_push_sent_total Push notifications accepted by their push service
# TYPE confab_push_sent_total counter
confab_push_sent_total{kind=\"webpush\"} 1200
confab_push_sent_total{kind=\"apns\"} 3
confab_push_coalesced_total 7
confab_push_dropped_total{reason=\"full\"} 2
confab_push_failed_total{kind=\"webpush\",outcome=\"retry\"} 5
confab_push_failed_total{kind=\"webpush\",outcome=\"gone\"} 1
confab_push_online_skipped_total 0
confab_push_outbox_depth{queue=\"outbox\"} 10
confab_push_outbox_depth{queue=\"pending\"} 4
confab_push_outbox_age_seconds 0.5
confab_store_commit_batch_size_sum 40
confab_store_commit_batch_size_count 9
";
        let s = parse(text);
        assert_eq!(
            s.counters,
            PushCounters {
                sent: 1203,
                coalesced: 7,
                dropped: 2,
                failed: 6,
                online_skipped: 0,
                commits: 9,
            }
        );
        assert_eq!(s.backlog, 14, "not the age");
        let later = PushCounters {
            sent: 1300,
            ..s.counters.clone()
        };
        assert_eq!(later.since(&s.counters).sent, 97);
        assert_eq!(parse("").counters, PushCounters::default());
    }
}

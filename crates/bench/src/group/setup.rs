//! Making the run's groups over HTTP, before any socket connects: each group's `created`
//! event is then history that every member's catch-up holds, not a frame of the measured run.

use std::time::Instant;

use anyhow::Context;
use confab_client::{Api, Id};
use futures_util::stream::{self, StreamExt, TryStreamExt};

use super::GroupConfig;
use crate::report;
use crate::target::{SeededAccount, Target};

/// Group creations in flight at once: each is one transaction of the store's writer, so more
/// would only queue there.
const CREATE_CONCURRENCY: usize = 8;

/// The run's groups: their conversation ids, in order, and the seconds it took.
pub(super) struct Groups {
    pub(super) conversations: Vec<String>,
    pub(super) setup_s: f64,
}

/// Group `g`'s members, owner first: accounts `g × members ..`.
pub(super) fn members_of<'a>(
    cfg: &GroupConfig,
    accounts: &'a [SeededAccount],
    g: usize,
) -> &'a [SeededAccount] {
    &accounts[g * cfg.members..(g + 1) * cfg.members]
}

/// Creates `cfg.groups` groups on `target`, each of its own `cfg.members` accounts, the first
/// of them the owner.
pub(super) async fn create_groups(
    target: &Target,
    cfg: &GroupConfig,
    bars: bool,
) -> anyhow::Result<Groups> {
    let api = Api::new(&format!("http://{}", target.addr));
    let bar = report::bar(
        bars,
        cfg.groups as u64,
        "creating groups {bar:40} {pos}/{len}",
    );
    let t0 = Instant::now();
    let conversations: Vec<String> = stream::iter(0..cfg.groups)
        .map(|g| {
            let (api, bar) = (api.clone(), bar.clone());
            let members = members_of(cfg, &target.accounts, g);
            async move {
                let others: Vec<Id> = members[1..].iter().map(|a| a.user_id).collect();
                let group = api
                    .create_group(&members[0].token, &format!("bench {g}"), others)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))
                    .with_context(|| format!("creating group {g} of {} members", cfg.members))?;
                bar.inc(1);
                anyhow::Ok(group.conversation)
            }
        })
        .buffered(CREATE_CONCURRENCY)
        .try_collect()
        .await?;
    bar.finish_and_clear();
    Ok(Groups {
        conversations,
        setup_s: t0.elapsed().as_secs_f64(),
    })
}

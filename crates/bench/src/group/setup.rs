//! Making the run's groups over HTTP, before any socket connects: the groups' membership
//! events are then history that the members' catch-up holds, not frames of the measured run.
//!
//! A create's body holds at most `MAX_GROUP_BODY_BYTES` (64 KiB: some 2,900 member ids, more
//! than a full group of 1,024), so a group is made in one request; a larger one (a server
//! started with a larger `--max-group-members`) is created with the members that fit and the
//! rest are added one request each. Each addition is a `member_added` event that every member
//! at the time stores and later replays, so the online members, the ones that replay, are
//! added last: each sees only the additions after its own.

use std::time::Instant;

use anyhow::Context;
use confab_client::{Api, Id};
use confab_protocol::{CreateGroup, MAX_GROUP_BODY_BYTES};
use futures_util::stream::{self, StreamExt, TryStreamExt};

use super::GroupConfig;
use crate::report;
use crate::target::{SeededAccount, Target};

/// Requests in flight at once: each is one transaction of the store's writer, so more would
/// only queue there.
const CONCURRENCY: usize = 8;

/// The run's groups: their conversation ids, in order, and the seconds it took.
pub(super) struct Groups {
    pub(super) conversations: Vec<String>,
    pub(super) setup_s: f64,
}

/// Group `g`'s members, owner first: accounts `g × members ..`. The first `online` of them
/// hold sockets.
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
        (cfg.groups * cfg.members) as u64,
        "creating groups {bar:40} {pos}/{len} members",
    );
    let t0 = Instant::now();
    let conversations: Vec<String> = stream::iter(0..cfg.groups)
        .map(|g| {
            let (api, bar) = (api.clone(), bar.clone());
            let members = members_of(cfg, &target.accounts, g);
            async move {
                let owner = &members[0].token;
                // Offline members first, then the online ones but the owner.
                let order: Vec<Id> = members[cfg.online..]
                    .iter()
                    .chain(&members[1..cfg.online])
                    .map(|a| a.user_id)
                    .collect();
                let title = format!("bench {g}");
                let first = fitting(&title, &order);
                let group = api
                    .create_group(owner, &title, &order[..first])
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))
                    .with_context(|| format!("creating group {g}"))?;
                bar.inc(first as u64 + 1);
                // The offline rest, then the online rest, each part in parallel.
                let offline_rest = first.max(cfg.members - cfg.online);
                for part in [&order[first..offline_rest], &order[offline_rest..]] {
                    stream::iter(part)
                        .map(|&user| {
                            let (api, bar, group) = (&api, &bar, &group.conversation);
                            async move {
                                api.add_member(owner, group, user)
                                    .await
                                    .map_err(|e| anyhow::anyhow!("{e}"))
                                    .with_context(|| format!("adding {user} to group {g}"))?;
                                bar.inc(1);
                                anyhow::Ok(())
                            }
                        })
                        .buffer_unordered(CONCURRENCY)
                        .try_collect::<()>()
                        .await?;
                }
                anyhow::Ok(group.conversation)
            }
        })
        .buffered(CONCURRENCY)
        .try_collect()
        .await?;
    bar.finish_and_clear();
    Ok(Groups {
        conversations,
        setup_s: t0.elapsed().as_secs_f64(),
    })
}

/// How many of `members`, from the first, fit in one `POST /v1/groups` body.
fn fitting(title: &str, members: &[Id]) -> usize {
    let size = |n: usize| {
        let body = CreateGroup {
            title: title.to_owned(),
            members: members[..n].to_vec(),
        };
        serde_json::to_vec(&body).map_or(usize::MAX, |b| b.len())
    };
    // The size grows with n: find the largest n that fits.
    let (mut lo, mut hi) = (0, members.len());
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if size(mid) <= MAX_GROUP_BODY_BYTES {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    lo
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_create_body_takes_as_many_members_as_fit() {
        let ids: Vec<Id> = (0..4096).map(|i| Id(1u64 << 62 | i)).collect();
        let n = fitting("bench 0", &ids);
        assert!(n > 1024 && n < 4096, "a full group fits, not four: {n}");
        let body = |n: usize| {
            serde_json::to_vec(&CreateGroup {
                title: "bench 0".into(),
                members: ids[..n].to_vec(),
            })
            .unwrap()
            .len()
        };
        assert!(body(n) <= MAX_GROUP_BODY_BYTES && body(n + 1) > MAX_GROUP_BODY_BYTES);
        assert_eq!(fitting("t", &ids[..9]), 9, "a small group fits whole");
    }
}

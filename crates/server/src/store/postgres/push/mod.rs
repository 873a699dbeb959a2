//! [`Push`] on PostgreSQL: subscriptions, the outbox and the pending notifications, shared by
//! every node.
//!
//! Several nodes run a push server over one database, so a claim is a lease written in the
//! row (`lease_until`), taken with `FOR UPDATE SKIP LOCKED`: two claims at once take different
//! rows, neither waits for the other, and a row stays with its claimer until the lease ends.
//! A message's intent is written by the append's own function (migration 8), so a stored
//! message always has it. Revoking a device deletes its subscription and pending rows in the
//! revocation's transaction (`forget_devices`).

mod claims;
mod settle;
mod statements;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use confab_protocol::{Id, PushSubscription};
use deadpool_postgres::GenericClient;

use super::PostgresStore;
use super::retry::Failure;
use super::rows::{execute, query_one, query_opt, u64_col};
use crate::store::push::{Backlog, Due, DueKind, NewPending, OutboxEntry, Outcome, Push, Settled};
use crate::store::sql_integers::{count_to_sql, id_to_sql};
use crate::store::{StoreError, StoreResult};

use statements::*;

/// Deletes the subscriptions and pending rows of `devices` (as stored), in the caller's
/// transaction: revoking a device, changing the password, unsubscribing.
pub(super) async fn forget_devices(c: &impl GenericClient, devices: &[i64]) -> Result<(), Failure> {
    if devices.is_empty() {
        return Ok(());
    }
    execute(c, FORGET_SUBSCRIPTIONS_SQL, &[&devices]).await?;
    execute(c, FORGET_PENDING_SQL, &[&devices]).await?;
    Ok(())
}

/// When a lease taken at `now` ends.
fn lease_until(now: i64, lease: Duration) -> i64 {
    now.saturating_add(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX))
}

#[async_trait]
impl Push for PostgresStore {
    async fn set_subscription(
        &self,
        user: Id,
        device: Id,
        id: Id,
        subscription: &PushSubscription,
        now: i64,
    ) -> StoreResult<()> {
        let data = serde_json::to_string(subscription)
            .map_err(|e| StoreError::Internal(format!("a subscription as JSON: {e}")))?;
        let kind = subscription.kind().as_str();
        let made = self
            .run(move |c| {
                let data = data.clone();
                Box::pin(async move {
                    let params = (id_to_sql(device), id_to_sql(user), id_to_sql(id));
                    Ok(execute(
                        c,
                        SET_SUBSCRIPTION_SQL,
                        &[&params.0, &params.1, &params.2, &kind, &data, &now],
                    )
                    .await?)
                })
            })
            .await?;
        // A revoked device (or one that is not the user's) gets none: a subscription made
        // after its revocation would outlive it.
        if made == 0 {
            return Err(StoreError::NotFound("no such device".into()));
        }
        Ok(())
    }

    async fn subscription(&self, device: Id) -> StoreResult<Option<PushSubscription>> {
        let data: Option<String> = self
            .run(move |c| {
                Box::pin(async move {
                    let row = query_opt(
                        c,
                        "SELECT data FROM push_subscriptions WHERE device_id = $1",
                        &[&id_to_sql(device)],
                    )
                    .await?;
                    Ok(row.map(|r| r.try_get(0)).transpose()?)
                })
            })
            .await?;
        data.map(|d| {
            serde_json::from_str(&d)
                .map_err(|e| StoreError::Internal(format!("a stored subscription: {e}")))
        })
        .transpose()
    }

    async fn delete_subscription(&self, device: Id) -> StoreResult<()> {
        self.write(move |tx| {
            Box::pin(async move { forget_devices(tx, &[id_to_sql(device)]).await })
        })
        .await
    }

    async fn record_read(
        &self,
        user: Id,
        device: Id,
        conversation: &str,
        seq: u64,
        now: i64,
    ) -> StoreResult<()> {
        let conversation = conversation.to_owned();
        // Retried on a lost connection like an append: a second intent for one read changes
        // nothing the first did not (a read at or below a pending one is coalesced).
        self.run(move |c| {
            let conversation = conversation.clone();
            Box::pin(async move {
                execute(
                    c,
                    RECORD_READ_SQL,
                    &[
                        &id_to_sql(user),
                        &id_to_sql(device),
                        &conversation,
                        &count_to_sql(seq),
                        &now,
                    ],
                )
                .await?;
                Ok(())
            })
        })
        .await
    }

    async fn claim_outbox(
        &self,
        now: i64,
        lease: Duration,
        limit: usize,
    ) -> StoreResult<Vec<OutboxEntry>> {
        let until = lease_until(now, lease);
        self.run(move |c| Box::pin(claims::claim_outbox_in(c, now, until, limit)))
            .await
    }

    async fn settle_outbox(
        &self,
        done: Vec<u64>,
        pending: Vec<NewPending>,
        max_pending: u64,
        now: i64,
    ) -> StoreResult<Settled> {
        let done: Arc<Vec<i64>> = Arc::new(done.into_iter().map(count_to_sql).collect());
        let pending = Arc::new(pending);
        self.write(move |tx| {
            let (done, pending) = (done.clone(), pending.clone());
            Box::pin(async move { settle::settle_in(tx, &done, &pending, max_pending, now).await })
        })
        .await
    }

    async fn claim_due(&self, now: i64, lease: Duration, limit: usize) -> StoreResult<Vec<Due>> {
        let until = lease_until(now, lease);
        // In a transaction: a row that cannot be sent is deleted with its claim.
        self.write(move |tx| Box::pin(claims::claim_due_in(tx, now, until, limit)))
            .await
    }

    async fn finish(&self, due: &Due, outcome: Outcome, _now: i64) -> StoreResult<()> {
        let device = id_to_sql(due.target.device);
        let conversation = due.conversation.clone();
        let version = count_to_sql(due.version);
        let subscription = id_to_sql(due.subscription_id);
        let sent_seq = match due.what {
            DueKind::Message { seq, .. } => Some(count_to_sql(seq)),
            DueKind::Read { .. } => None,
        };
        self.write(move |tx| {
            let conversation = conversation.clone();
            Box::pin(async move {
                let key = (&device, &conversation, &version);
                match (outcome, sent_seq) {
                    (Outcome::Sent, Some(seq)) => {
                        execute(tx, SENT_MESSAGE_SQL, &[key.0, key.1, key.2, &seq]).await?;
                    }
                    (Outcome::Sent, None) | (Outcome::Dropped, _) => {
                        execute(tx, DELETE_OR_RELEASE_SQL, &[key.0, key.1, key.2]).await?;
                    }
                    (Outcome::Retry { at, attempts }, _) => {
                        let attempts = i32::try_from(attempts).unwrap_or(i32::MAX);
                        execute(tx, RETRY_SQL, &[key.0, key.1, key.2, &at, &attempts]).await?;
                    }
                    (Outcome::Gone, _) => {
                        let deleted =
                            execute(tx, DELETE_SUBSCRIPTION_IF_SQL, &[&device, &subscription])
                                .await?;
                        if deleted > 0 {
                            let devices = [device];
                            execute(tx, FORGET_PENDING_SQL, &[&devices.as_slice()]).await?;
                        } else {
                            // A newer subscription replaced the one found gone: the row is
                            // sent to that one.
                            execute(tx, RELEASE_SQL, &[key.0, key.1]).await?;
                        }
                    }
                }
                Ok(())
            })
        })
        .await
    }

    async fn push_backlog(&self) -> StoreResult<Backlog> {
        self.run(|c| {
            Box::pin(async move {
                let r = query_one(c, BACKLOG_SQL, &[]).await?;
                Ok(Backlog {
                    outbox: u64_col(&r, 0)?,
                    pending: u64_col(&r, 1)?,
                    oldest: r.try_get(2)?,
                })
            })
        })
        .await
    }

    async fn vapid_key(&self, candidate: &str) -> StoreResult<String> {
        let candidate = candidate.to_owned();
        // Two statements in one transaction: the read is a statement of its own, so its
        // snapshot sees the key a concurrent first node stored (its insert waited for it).
        self.write(move |tx| {
            let candidate = candidate.clone();
            Box::pin(async move {
                execute(tx, PUT_KEY_SQL, &[&candidate]).await?;
                Ok(query_one(tx, GET_KEY_SQL, &[]).await?.try_get(0)?)
            })
        })
        .await
    }
}

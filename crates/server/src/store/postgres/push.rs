//! Push state: subscriptions, the outbox, pending notifications (`store::push`).

use std::time::Duration;

use async_trait::async_trait;
use confab_protocol::{Id, PushSubscription};

use super::PostgresStore;
use crate::store::push::{Backlog, Due, NewPending, OutboxEntry, Outcome, Push, Settled};
use crate::store::{StoreError, StoreResult};

fn not_built<T>() -> StoreResult<T> {
    Err(StoreError::Internal(
        "push state is not built for this store yet".into(),
    ))
}

#[async_trait]
impl Push for PostgresStore {
    async fn set_subscription(
        &self,
        _user: Id,
        _device: Id,
        _id: Id,
        _subscription: &PushSubscription,
        _now: i64,
    ) -> StoreResult<()> {
        not_built()
    }
    async fn subscription(&self, _device: Id) -> StoreResult<Option<PushSubscription>> {
        not_built()
    }
    async fn delete_subscription(&self, _device: Id) -> StoreResult<()> {
        not_built()
    }
    async fn record_read(
        &self,
        _user: Id,
        _device: Id,
        _conversation: &str,
        _seq: u64,
        _now: i64,
    ) -> StoreResult<()> {
        not_built()
    }
    async fn claim_outbox(
        &self,
        _now: i64,
        _lease: Duration,
        _limit: usize,
    ) -> StoreResult<Vec<OutboxEntry>> {
        not_built()
    }
    async fn settle_outbox(
        &self,
        _done: Vec<u64>,
        _pending: Vec<NewPending>,
        _max_pending: u64,
        _now: i64,
    ) -> StoreResult<Settled> {
        not_built()
    }
    async fn claim_due(&self, _now: i64, _lease: Duration, _limit: usize) -> StoreResult<Vec<Due>> {
        not_built()
    }
    async fn finish(&self, _due: &Due, _outcome: Outcome, _now: i64) -> StoreResult<()> {
        not_built()
    }
    async fn push_backlog(&self) -> StoreResult<Backlog> {
        not_built()
    }
    async fn vapid_key(&self, _candidate: &str) -> StoreResult<String> {
        not_built()
    }
}

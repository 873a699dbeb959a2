//! The cluster message store: PostgreSQL, shared by every node.
//!
//! Every operation is one short transaction on a pooled connection (deadpool, no TLS). Every
//! connection runs with `synchronous_commit = on`, so a write's `Ok` means its commit reached
//! the WAL on disk, as the SQLite store's fsync does. The guarantees of [`MessageStore`] are
//! kept by the schema and by row locks, never by one node's memory, because several nodes
//! write at once:
//!
//! - `seq`: `conversations.last_seq` is incremented in the append transaction; the row lock of
//!   the upsert serialises appends per conversation, and `UNIQUE (conversation, seq)` would
//!   reject any bug that produced a duplicate.
//! - stream positions: `users.stream_head` is incremented in the append transaction (see
//!   `streams::append_in` for why this also makes positions visible in order).
//! - idempotency: `UNIQUE (sender, client_id)`; the loser of a race rolls back and returns the
//!   winner's message.
//! - a group's `seq`: `groups.last_seq`, taken by every write to the group; the row's lock also
//!   puts the group's membership changes in turn (see `groups`).
//!
//! Deadlocks and serialization failures are retried a few times; a connection that breaks
//! before `COMMIT` is sent is retried on a fresh one (nothing was written). A connection that
//! breaks during `COMMIT` is reported as `Unavailable`: the outcome is unknown there, and the
//! client's retry with the same `client_id` is what makes it exact.

mod accounts;
mod contacts;
mod conversations;
#[cfg(test)]
mod group_read_tests;
#[cfg(test)]
mod group_tests;
mod groups;
mod push;
mod retry;
mod rows;
mod schema;
mod streams;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime, Transaction,
};
use tokio_postgres::NoTls;

use self::retry::{Failure, at_commit, classify, pool_error, retrying};
use super::{MessageStore, StoreError, StoreResult};

/// How long a caller waits for a pooled connection (or for a new one to be made) before the
/// store answers `Unavailable`: a down database fails requests, it does not hang them.
const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a request may queue for a free pooled connection. Longer than the connect
/// timeout: a hot conversation serialises its appends on one row lock, so under a burst many
/// requests wait their turn behind healthy connections; a database that is down still fails
/// fast through the create timeout.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long sent data may stay unacknowledged before a connection counts as broken.
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(10);

/// `check()` (behind `/readyz`) answers within this.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// How long `close()` waits for operations in flight to hand their connections back.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// The PostgreSQL message store, for several nodes sharing one database.
pub struct PostgresStore {
    pool: Pool,
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

impl PostgresStore {
    /// Connects to `url` (a `postgres://` URL or key-value string) with a pool of up to
    /// `pool_size` connections and applies pending migrations. `Unavailable` if the database
    /// cannot be reached.
    pub async fn connect(url: &str, pool_size: usize) -> StoreResult<PostgresStore> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Internal(format!("invalid PostgreSQL URL: {e}")))?;
        // `Ok` from a write must mean committed to disk whatever the server's default; a
        // later `-c` wins, so this overrides any setting in the URL.
        let options = match config.get_options() {
            Some(o) if !o.trim().is_empty() => format!("{o} -c synchronous_commit=on"),
            _ => "-c synchronous_commit=on".to_owned(),
        };
        config.options(options);
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CHECKOUT_TIMEOUT);
        }
        // A server that vanished without closing its sockets: fail the statement after this
        // long instead of waiting for the kernel's retransmission limit (minutes).
        if config.get_tcp_user_timeout().is_none() {
            config.tcp_user_timeout(TCP_USER_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("confab");
        }
        // `Fast` recycling checks `is_closed()` on checkout: a connection the server ended
        // (restart, failover) is dropped and replaced, so the store recovers by itself. One
        // that died unnoticed fails its first statement, which is retried on a new one.
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(QUEUE_TIMEOUT))
            .create_timeout(Some(CHECKOUT_TIMEOUT))
            .recycle_timeout(Some(CHECKOUT_TIMEOUT))
            .build()
            .map_err(|e| StoreError::Internal(format!("cannot build the connection pool: {e}")))?;
        let store = PostgresStore { pool };
        store.migrate().await?;
        Ok(store)
    }

    async fn client(&self) -> StoreResult<Object> {
        self.pool.get().await.map_err(pool_error)
    }

    /// Runs `op` on a pooled connection, again on a fresh one if it failed in a way that may
    /// pass (`Failure::Retry`). Each of `op`'s statements is a transaction of its own: reads,
    /// and writes made in one statement (the functions of migration 2).
    async fn run<T, F>(&self, op: F) -> StoreResult<T>
    where
        T: Send,
        F: for<'c> Fn(&'c Object) -> BoxFuture<'c, Result<T, Failure>> + Send + Sync,
    {
        let op = &op;
        retrying(move || async move {
            let client = self.client().await.map_err(Failure::Final)?;
            op(&client).await
        })
        .await
    }

    /// Runs `op` in a transaction and commits it; retries the whole transaction on deadlock,
    /// serialization failure or a connection that broke before `COMMIT`.
    async fn write<T, F>(&self, op: F) -> StoreResult<T>
    where
        T: Send,
        F: for<'t> Fn(&'t Transaction<'t>) -> BoxFuture<'t, Result<T, Failure>> + Send + Sync,
    {
        let op = &op;
        retrying(move || async move {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            let value = op(&tx).await?;
            tx.commit().await.map_err(at_commit)?;
            Ok(value)
        })
        .await
    }
}

#[async_trait]
impl MessageStore for PostgresStore {
    async fn check(&self) -> StoreResult<()> {
        let probe = async {
            let client = self.client().await?;
            // A real round trip; a standby (read-only after a failover) is not ready.
            let in_recovery: bool = client
                .query_one("SELECT pg_is_in_recovery()", &[])
                .await
                .and_then(|r| r.try_get(0))
                .map_err(|e| match classify(&e) {
                    Failure::Retry(e) | Failure::Final(e) => e,
                })?;
            if in_recovery {
                return Err(StoreError::Unavailable(
                    "PostgreSQL is read-only (in recovery)".into(),
                ));
            }
            // Reachable is not enough: a commit proves the server can write its WAL.
            client
                .execute(
                    "INSERT INTO readiness (id, checked_at) VALUES (1, $1) \
                     ON CONFLICT (id) DO UPDATE SET checked_at = excluded.checked_at",
                    &[&crate::time::now_ms()],
                )
                .await
                .map_err(|e| match classify(&e) {
                    Failure::Retry(e) | Failure::Final(e) => e,
                })?;
            Ok(())
        };
        tokio::time::timeout(CHECK_TIMEOUT, probe)
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::Unavailable(
                    "PostgreSQL did not answer in time".into(),
                ))
            })
    }

    async fn close(&self) {
        // Later calls fail `Unavailable` (the pool answers `Closed`); idle connections are
        // dropped now, busy ones when their operation hands them back.
        self.pool.close();
        let deadline = Instant::now() + CLOSE_TIMEOUT;
        while self.pool.status().size > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

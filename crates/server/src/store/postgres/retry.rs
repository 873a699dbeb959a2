//! Which failures are worth another attempt, and the loop that makes them. Several nodes write
//! at once, so deadlocks and serialization failures are part of normal operation, and a
//! database that restarts or fails over breaks connections that a fresh one replaces.

use std::future::Future;
use std::time::Duration;

use deadpool_postgres::PoolError;
use tokio_postgres::error::SqlState;

use crate::store::{StoreError, StoreResult};

/// Attempts of one operation when it meets a deadlock, a serialization failure or a broken
/// connection.
const MAX_ATTEMPTS: u32 = 5;

pub(super) type PgError = tokio_postgres::Error;

/// Why one attempt at an operation failed.
pub(super) enum Failure {
    /// Nothing was written and another attempt may succeed (deadlock, serialization failure,
    /// a connection that broke before `COMMIT`).
    Retry(StoreError),
    /// The answer.
    Final(StoreError),
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::Final(e)
    }
}

impl From<PgError> for Failure {
    fn from(e: PgError) -> Self {
        classify(&e)
    }
}

/// The error's text with its cause (tokio-postgres' own `Display` omits the cause).
fn describe(e: &PgError) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} ({})", db.message(), db.code().code());
    }
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

pub(super) fn classify(e: &PgError) -> Failure {
    let text = describe(e);
    if let Some(code) = e.code() {
        if *code == SqlState::T_R_DEADLOCK_DETECTED || *code == SqlState::T_R_SERIALIZATION_FAILURE
        {
            return Failure::Retry(StoreError::Unavailable(format!("database busy: {text}")));
        }
        // The server ended the session (restart, failover): a new connection may work.
        if code.code().starts_with("08")
            || *code == SqlState::ADMIN_SHUTDOWN
            || *code == SqlState::CRASH_SHUTDOWN
            || *code == SqlState::CANNOT_CONNECT_NOW
        {
            return Failure::Retry(StoreError::Unavailable(text));
        }
        if *code == SqlState::TOO_MANY_CONNECTIONS
            || *code == SqlState::READ_ONLY_SQL_TRANSACTION
            || *code == SqlState::QUERY_CANCELED
        {
            return Failure::Final(StoreError::Unavailable(text));
        }
        return Failure::Final(StoreError::Internal(text));
    }
    let io = std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>());
    if e.is_closed() || io || text.starts_with("timeout") {
        return Failure::Retry(StoreError::Unavailable(text));
    }
    Failure::Final(StoreError::Internal(text))
}

/// `COMMIT` failed. A database error means it was rolled back (safe to retry if transient);
/// a broken connection leaves the outcome unknown, so that is final.
pub(super) fn at_commit(e: PgError) -> Failure {
    match (e.code().is_some(), classify(&e)) {
        (true, failure) => failure,
        (false, Failure::Retry(e) | Failure::Final(e)) => Failure::Final(e),
    }
}

pub(super) fn pool_error(e: PoolError) -> StoreError {
    match e {
        PoolError::Timeout(_) => {
            StoreError::Unavailable("timed out waiting for a PostgreSQL connection".into())
        }
        PoolError::Closed => StoreError::Unavailable("store is closed".into()),
        PoolError::Backend(e) => {
            StoreError::Unavailable(format!("cannot connect to PostgreSQL: {}", describe(&e)))
        }
        PoolError::PostCreateHook(e) => {
            StoreError::Unavailable(format!("cannot set up a PostgreSQL connection: {e}"))
        }
        PoolError::NoRuntimeSpecified => StoreError::Internal("pool has no runtime".into()),
    }
}

/// Runs `attempt` until it succeeds, fails for good (`Failure::Final`) or has failed
/// [`MAX_ATTEMPTS`] times, backing off between tries.
pub(super) async fn retrying<T, Fut>(mut attempt: impl FnMut() -> Fut) -> StoreResult<T>
where
    Fut: Future<Output = Result<T, Failure>>,
{
    let mut tries = 1;
    loop {
        match attempt().await {
            Ok(v) => return Ok(v),
            Err(Failure::Retry(e)) if tries < MAX_ATTEMPTS => backoff(&mut tries, &e).await,
            Err(Failure::Retry(e) | Failure::Final(e)) => return Err(e),
        }
    }
}

/// Waits a little longer each attempt, with jitter so that two deadlocked transactions do not
/// meet again.
async fn backoff(attempt: &mut u32, e: &StoreError) {
    tracing::debug!(attempt = *attempt, error = %e, "retrying a store transaction");
    let ms = 5 * u64::from(*attempt) + rand::random_range(0..10u64);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    *attempt += 1;
}

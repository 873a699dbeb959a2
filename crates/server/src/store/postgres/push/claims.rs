//! Claims: the outbox rows with their targets, and the due notifications with their payload's
//! data, each one statement (`statements.rs`) read into the store's types.

use confab_protocol::PushSubscription;
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

use super::super::retry::Failure;
use super::super::rows::{execute, id_col, query, u64_col};
use super::statements::{CLAIM_DUE_SQL, CLAIM_OUTBOX_SQL, DELETE_CLAIMED_SQL};
use crate::store::StoreError;
use crate::store::push::{Due, DueKind, Intent, OutboxEntry, PushTarget};
use crate::store::sql_integers::{id_from_sql, limit_to_sql};

fn corrupt(what: String) -> Failure {
    Failure::Final(StoreError::Internal(what))
}

/// Up to `limit` outbox rows leased until `until`, oldest first, with their targets.
pub(super) async fn claim_outbox_in(
    c: &impl GenericClient,
    now: i64,
    until: i64,
    limit: usize,
) -> Result<Vec<OutboxEntry>, Failure> {
    let rows = query(c, CLAIM_OUTBOX_SQL, &[&now, &until, &limit_to_sql(limit)]).await?;
    rows.iter().map(outbox_entry).collect()
}

fn outbox_entry(r: &Row) -> Result<OutboxEntry, Failure> {
    let kind: &str = r.try_get(2)?;
    let intent = match kind {
        "message" => {
            let message: Option<i64> = r.try_get(3)?;
            Intent::Message {
                message: id_from_sql(
                    message.ok_or_else(|| corrupt("an outbox message with no id".into()))?,
                ),
                seq: u64_col(r, 4)?,
                sender: id_col(r, 5)?,
            }
        }
        "read" => {
            let device: Option<i64> = r.try_get(6)?;
            Intent::Read {
                user: id_col(r, 5)?,
                device: id_from_sql(
                    device.ok_or_else(|| corrupt("an outbox read with no device".into()))?,
                ),
                seq: u64_col(r, 4)?,
            }
        }
        other => return Err(corrupt(format!("unknown outbox kind {other:?}"))),
    };
    let users: Vec<i64> = r.try_get::<_, Option<Vec<i64>>>(8)?.unwrap_or_default();
    let devices: Vec<i64> = r.try_get::<_, Option<Vec<i64>>>(9)?.unwrap_or_default();
    // Sorted here, not in SQL: ids are stored two's complement, so SQL's order is not theirs.
    let mut targets: Vec<PushTarget> = users
        .into_iter()
        .zip(devices)
        .map(|(u, d)| PushTarget {
            user: id_from_sql(u),
            device: id_from_sql(d),
        })
        .collect();
    targets.sort_unstable();
    targets.dedup();
    Ok(OutboxEntry {
        id: u64_col(r, 0)?,
        conversation: r.try_get(1)?,
        intent,
        created_at: r.try_get(7)?,
        targets,
    })
}

/// Up to `limit` due notifications leased until `until`, longest due first. A claimed row that
/// cannot be sent (its subscription was deleted, its message is gone, its subscription does
/// not parse) is deleted instead of handed out, so that it does not come back.
pub(super) async fn claim_due_in(
    c: &impl GenericClient,
    now: i64,
    until: i64,
    limit: usize,
) -> Result<Vec<Due>, Failure> {
    let rows = query(c, CLAIM_DUE_SQL, &[&now, &until, &limit_to_sql(limit)]).await?;
    let mut due = Vec::with_capacity(rows.len());
    for r in &rows {
        match due_from(r)? {
            Ok(d) => due.push(d),
            Err(why) => {
                let (device, conversation, version): (i64, String, i64) =
                    (r.try_get(0)?, r.try_get(2)?, r.try_get(3)?);
                tracing::warn!(device, %conversation, %why, "dropping a pending notification");
                execute(c, DELETE_CLAIMED_SQL, &[&device, &conversation, &version]).await?;
            }
        }
    }
    Ok(due)
}

/// A row of [`CLAIM_DUE_SQL`] as a [`Due`], or why it cannot be one.
fn due_from(r: &Row) -> Result<Result<Due, String>, Failure> {
    let (sub_id, data): (Option<i64>, Option<String>) = (r.try_get(9)?, r.try_get(10)?);
    let (Some(sub_id), Some(data)) = (sub_id, data) else {
        return Ok(Err("the device has no subscription".into()));
    };
    let subscription: PushSubscription = match serde_json::from_str(&data) {
        Ok(s) => s,
        Err(e) => return Ok(Err(format!("its subscription does not parse: {e}"))),
    };
    let kind: &str = r.try_get(6)?;
    let what = match kind {
        "message" => {
            let (message, sender, body, username): (
                Option<i64>,
                Option<i64>,
                Option<String>,
                Option<String>,
            ) = (
                r.try_get(7)?,
                r.try_get(11)?,
                r.try_get(12)?,
                r.try_get(13)?,
            );
            let (Some(message), Some(sender), Some(body), Some(username)) =
                (message, sender, body, username)
            else {
                return Ok(Err("its message or sender is gone".into()));
            };
            DueKind::Message {
                id: id_from_sql(message),
                seq: u64_col(r, 8)?,
                from: id_from_sql(sender),
                from_username: username,
                body,
                unread: u64_col(r, 14)?,
            }
        }
        "read" => DueKind::Read {
            seq: u64_col(r, 8)?,
        },
        other => return Err(corrupt(format!("unknown pending kind {other:?}"))),
    };
    let attempts: i32 = r.try_get(4)?;
    Ok(Ok(Due {
        target: PushTarget {
            user: id_col(r, 1)?,
            device: id_col(r, 0)?,
        },
        conversation: r.try_get(2)?,
        version: u64_col(r, 3)?,
        attempts: u32::try_from(attempts).unwrap_or(0),
        created_at: r.try_get(5)?,
        subscription_id: id_from_sql(sub_id),
        subscription,
        what,
    }))
}

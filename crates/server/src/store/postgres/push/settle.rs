//! [`Push::settle_outbox`]'s transaction: the outbox rows go, and the pending rows they bring
//! are made or changed by the rules of `store::push::rules`.
//!
//! A batch costs the same few statements whatever its size (a group's message may bring a
//! row for each of its members' devices): the subscriptions and the rows concerned are read
//! and locked, the rules run here, and what changed is written back in one statement per
//! kind of write.
//!
//! [`Push::settle_outbox`]: crate::store::push::Push::settle_outbox

use std::collections::{BTreeMap, HashSet};

use deadpool_postgres::Transaction;
use tokio_postgres::Row;

use super::super::retry::Failure;
use super::super::rows::{execute, id_col, query, query_one, u64_col};
use super::statements::{
    DELETE_OUTBOX_SQL, DELETE_PENDING_SQL, DUE_COUNT_SQL, INSERT_PENDING_SQL, PENDING_SQL,
    SUBSCRIBED_SQL, UPDATE_PENDING_SQL,
};
use crate::store::StoreError;
use crate::store::push::rules::{Room, Slot};
use crate::store::push::{NewPending, PendingKind, Settled};
use crate::store::sql_integers::{count_to_sql, id_from_sql, id_to_sql};

/// A pending row's key: device (as stored) and conversation. Ordered as the statements lock.
type Key = (i64, String);

/// A row as it was, and as the rules left it.
struct Change {
    before: Option<Slot>,
    after: Option<Slot>,
}

pub(super) async fn settle_in(
    tx: &Transaction<'_>,
    done: &[i64],
    pending: &[NewPending],
    max_pending: u64,
    now: i64,
) -> Result<Settled, Failure> {
    if !done.is_empty() {
        execute(tx, DELETE_OUTBOX_SQL, &[&done]).await?;
    }
    let mut settled = Settled::default();
    if pending.is_empty() {
        return Ok(settled);
    }
    // A device whose subscription went since the claim gets nothing: its rows would never
    // be sent. Those that remain stay until this commits.
    let devices: Vec<i64> = pending.iter().map(|p| id_to_sql(p.target.device)).collect();
    let subscribed: HashSet<i64> = query(tx, SUBSCRIBED_SQL, &[&devices])
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?;
    let pending: Vec<&NewPending> = pending
        .iter()
        .filter(|p| subscribed.contains(&id_to_sql(p.target.device)))
        .collect();
    if pending.is_empty() {
        return Ok(settled);
    }
    let due = u64_col(&query_one(tx, DUE_COUNT_SQL, &[]).await?, 0)?;
    let mut room = Room {
        due,
        max: max_pending,
    };

    let mut changes = load(tx, &pending, now).await?;
    for p in &pending {
        let key = (id_to_sql(p.target.device), p.conversation.clone());
        let change = changes.entry(key).or_insert(Change {
            before: None,
            after: None,
        });
        Slot::apply(
            &mut change.after,
            p.target.user,
            p.kind,
            p.created_at,
            &mut room,
        )
        .count(&mut settled);
    }
    write(tx, &changes, now).await?;
    Ok(settled)
}

/// The existing rows for `pending`'s keys, locked.
async fn load(
    tx: &Transaction<'_>,
    pending: &[&NewPending],
    now: i64,
) -> Result<BTreeMap<Key, Change>, Failure> {
    let (mut devices, mut conversations) = (Vec::new(), Vec::new());
    for p in pending {
        devices.push(id_to_sql(p.target.device));
        conversations.push(p.conversation.as_str());
    }
    let rows = query(tx, PENDING_SQL, &[&devices, &conversations, &now]).await?;
    let mut changes = BTreeMap::new();
    for r in &rows {
        let key: Key = (r.try_get(0)?, r.try_get(1)?);
        let slot = slot_from(r)?;
        changes.insert(
            key,
            Change {
                before: Some(slot.clone()),
                after: Some(slot),
            },
        );
    }
    Ok(changes)
}

/// A row of [`PENDING_SQL`] as the rules see it.
fn slot_from(r: &Row) -> Result<Slot, Failure> {
    let kind: &str = r.try_get(3)?;
    let seq = u64_col(r, 5)?;
    let kind = match kind {
        "message" => {
            let message: Option<i64> = r.try_get(4)?;
            let message = message.ok_or_else(|| {
                Failure::Final(StoreError::Internal("a pending message with no id".into()))
            })?;
            PendingKind::Message {
                message: id_from_sql(message),
                seq,
            }
        }
        "read" => PendingKind::Read { seq },
        other => {
            return Err(Failure::Final(StoreError::Internal(format!(
                "unknown pending kind {other:?}"
            ))));
        }
    };
    let state: &str = r.try_get(6)?;
    Ok(Slot {
        user: id_col(r, 2)?,
        kind,
        due: state == "due",
        shown_seq: u64_col(r, 7)?,
        in_flight: r.try_get(8)?,
        created_at: r.try_get(9)?,
        changed: false,
    })
}

/// A pending kind as its columns: `kind`, `message_id`, `seq`.
fn columns(kind: PendingKind) -> (&'static str, Option<i64>, i64) {
    match kind {
        PendingKind::Message { message, seq } => {
            ("message", Some(id_to_sql(message)), count_to_sql(seq))
        }
        PendingKind::Read { seq } => ("read", None, count_to_sql(seq)),
    }
}

/// Column arrays of the rows to make or change, one entry per row.
#[derive(Default)]
struct Rows<'a> {
    devices: Vec<i64>,
    conversations: Vec<&'a str>,
    users: Vec<i64>,
    kinds: Vec<&'static str>,
    messages: Vec<Option<i64>>,
    seqs: Vec<i64>,
    created: Vec<i64>,
}

impl<'a> Rows<'a> {
    fn push(&mut self, key: &'a Key, slot: &Slot) {
        let (kind, message, seq) = columns(slot.kind);
        self.devices.push(key.0);
        self.conversations.push(&key.1);
        self.users.push(id_to_sql(slot.user));
        self.kinds.push(kind);
        self.messages.push(message);
        self.seqs.push(seq);
        self.created.push(slot.created_at);
    }
}

/// Writes back what the rules changed: rows made, changed, deleted.
async fn write(
    tx: &Transaction<'_>,
    changes: &BTreeMap<Key, Change>,
    now: i64,
) -> Result<(), Failure> {
    let (mut made, mut changed) = (Rows::default(), Rows::default());
    let (mut gone_devices, mut gone_conversations) = (Vec::new(), Vec::new());
    for (key, change) in changes {
        match (&change.before, &change.after) {
            (None, Some(slot)) => made.push(key, slot),
            (Some(_), Some(slot)) if slot.changed => changed.push(key, slot),
            (Some(_), None) => {
                gone_devices.push(key.0);
                gone_conversations.push(key.1.as_str());
            }
            _ => {}
        }
    }
    if !gone_devices.is_empty() {
        execute(
            tx,
            DELETE_PENDING_SQL,
            &[&gone_devices, &gone_conversations],
        )
        .await?;
    }
    if !changed.devices.is_empty() {
        let c = &changed;
        execute(
            tx,
            UPDATE_PENDING_SQL,
            &[
                &c.devices,
                &c.conversations,
                &c.kinds,
                &c.messages,
                &c.seqs,
                &c.created,
                &now,
            ],
        )
        .await?;
    }
    if !made.devices.is_empty() {
        let m = &made;
        let inserted = execute(
            tx,
            INSERT_PENDING_SQL,
            &[
                &m.devices,
                &m.conversations,
                &m.users,
                &m.kinds,
                &m.messages,
                &m.seqs,
                &m.created,
                &now,
            ],
        )
        .await?;
        // Another settle made one of these rows after this one looked: the rules must see it,
        // so the whole transaction runs again (it finds the row and locks it).
        if usize::try_from(inserted).ok() != Some(m.devices.len()) {
            return Err(Failure::Retry(StoreError::Unavailable(
                "a pending notification was made concurrently".into(),
            )));
        }
    }
    Ok(())
}

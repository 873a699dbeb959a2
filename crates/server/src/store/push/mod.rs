//! The push server's durable state (design messaging steps 6-8): each device's subscription,
//! the **outbox** of intents to notify, and each device's **pending** notification per
//! conversation.
//!
//! The path of one notification:
//!
//! 1. **Intent.** The transaction that stores a text message (`Streams::append`,
//!    `Groups::append_group`) also writes one outbox row when any recipient (the peer, or the
//!    group's members at its `seq`, never the sender) has a subscribed device. Nothing is
//!    written per recipient, and nothing at all when no recipient has a subscription. A read
//!    that advances a mark writes an intent to clear ([`Push::record_read`]).
//! 2. **Expansion.** The push server claims outbox rows ([`Push::claim_outbox`]), each with its
//!    candidate devices; it drops the devices that have a socket (the presence check) and
//!    settles the rest ([`Push::settle_outbox`]): the outbox rows go, and each device's
//!    pending notification for the conversation is made or replaced (coalesced).
//! 3. **Delivery.** It claims due notifications ([`Push::claim_due`]), sends them, and
//!    records the outcome ([`Push::finish`]): sent, retry later, dropped, or the subscription
//!    is gone.
//!
//! Claims are leases: a claimed row is not handed out again until the lease ends, so of the
//! nodes sharing a store one at a time works on each row, and a node that dies mid-way
//! leaves rows that another claims when the lease runs out (sent at least once).
//!
//! A pending row has a `version` that every change bumps. [`Push::finish`] applies only to
//! the version claimed: a message that arrived while the previous one was in flight is sent
//! next, not lost.

pub(crate) mod rules;

use std::time::Duration;

use async_trait::async_trait;
use confab_protocol::{Id, PushSubscription};

use super::StoreResult;

/// A device to notify.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PushTarget {
    pub user: Id,
    pub device: Id,
}

/// What an outbox row asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Intent {
    /// Message `message` (`seq` in its conversation) from `sender` was stored.
    Message { message: Id, seq: u64, sender: Id },
    /// `user` read the conversation up to `seq` on `device`: its other devices clear theirs.
    Read { user: Id, device: Id, seq: u64 },
}

/// A claimed outbox row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxEntry {
    /// The row's id, to settle it by.
    pub id: u64,
    pub conversation: String,
    pub intent: Intent,
    /// When the intent was written (ms).
    pub created_at: i64,
    /// The subscribed devices it concerns, as of the claim: for a message, every subscribed
    /// device of every recipient (never the sender's); for a read, the reader's other
    /// subscribed devices. Sorted, no repeats.
    pub targets: Vec<PushTarget>,
}

/// A device's pending notification to make or replace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewPending {
    pub target: PushTarget,
    pub conversation: String,
    pub kind: PendingKind,
    /// When the intent was written (ms): a notification is dropped 24 hours after it.
    pub created_at: i64,
}

/// The notification a pending row will send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PendingKind {
    Message { message: Id, seq: u64 },
    Read { seq: u64 },
}

/// What [`Push::settle_outbox`] did with the pending rows it was given.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settled {
    /// A new pending row was made.
    pub queued: u64,
    /// A pending message was replaced by a newer one, or a newer one already waited.
    pub coalesced: u64,
    /// A pending message was dropped by a read (and nothing had been shown: no clear needed).
    pub cleared: u64,
    /// Not queued: the pending rows are at the bound (`max_pending`).
    pub dropped_full: u64,
}

/// A claimed notification, with what its payload needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Due {
    pub target: PushTarget,
    pub conversation: String,
    /// The pending row's version at the claim: [`Push::finish`] names it.
    pub version: u64,
    /// Failed attempts so far.
    pub attempts: u32,
    /// When the intent was written (ms).
    pub created_at: i64,
    /// The subscription's id: a `Gone` outcome deletes this one, not a newer one.
    pub subscription_id: Id,
    pub subscription: PushSubscription,
    pub what: DueKind,
}

/// What a due notification tells.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DueKind {
    Message {
        id: Id,
        seq: u64,
        from: Id,
        from_username: String,
        /// The full text; the push server includes it only with `preview`.
        body: String,
        /// The recipient's unread messages in the conversation: its last `seq` minus the
        /// user's read mark.
        unread: u64,
    },
    Read {
        seq: u64,
    },
}

/// How a claimed notification ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The push service accepted it. A message's row is kept as *shown* (so a later read
    /// sends a clear); a read's row is deleted.
    Sent,
    /// Try again at `at` (ms), after `attempts` failures.
    Retry { at: i64, attempts: u32 },
    /// Give up on it (too old, or refused for good); the row is deleted.
    Dropped,
    /// The endpoint no longer exists: the subscription (if still `subscription_id`) and every
    /// pending row of the device are deleted.
    Gone,
}

/// How much is waiting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Outbox rows not yet expanded.
    pub outbox: u64,
    /// Pending notifications due or waiting for a retry (not the shown ones).
    pub pending: u64,
    /// When the oldest of either was written (ms); 0 when there is none.
    pub oldest: i64,
}

/// The push server's state in the message store.
///
/// Guarantees every backend keeps (the contract tests check them):
/// - The outbox row of a message is written in the message's own transaction, exactly when a
///   recipient other than the sender has a subscribed device: a message acknowledged as
///   `sent` has its intent stored, and a repeated `client_id` writes no second one.
/// - A claim hands a row to one caller until `lease` has passed; expansion and delivery
///   therefore run on one node at a time per row, and resume on another if it dies.
/// - Subscriptions are one per device; revoking a device (`Accounts::revoke_device`,
///   `Accounts::set_password`) deletes its subscription and its pending rows in the same
///   transaction.
#[async_trait]
pub trait Push: Send + Sync {
    /// Makes or replaces `device`'s subscription; `id` names this one (from the sequencer).
    async fn set_subscription(
        &self,
        user: Id,
        device: Id,
        id: Id,
        subscription: &PushSubscription,
        now: i64,
    ) -> StoreResult<()>;
    /// `device`'s subscription.
    async fn subscription(&self, device: Id) -> StoreResult<Option<PushSubscription>>;
    /// Deletes `device`'s subscription and its pending rows. Idempotent.
    async fn delete_subscription(&self, device: Id) -> StoreResult<()>;

    /// `user` read `conversation` up to `seq` on `device`: writes an intent to clear when the
    /// user has another subscribed device.
    async fn record_read(
        &self,
        user: Id,
        device: Id,
        conversation: &str,
        seq: u64,
        now: i64,
    ) -> StoreResult<()>;

    /// Claims up to `limit` outbox rows not under another lease, oldest first.
    async fn claim_outbox(
        &self,
        now: i64,
        lease: Duration,
        limit: usize,
    ) -> StoreResult<Vec<OutboxEntry>>;
    /// In one transaction: deletes outbox rows `done` and makes or replaces the pending rows.
    ///
    /// A message for a device with a pending row for its conversation replaces it if newer
    /// (an older one changes nothing); both count as coalesced. A read removes a pending
    /// message at or below its `seq`: if the device was shown a notification for the
    /// conversation (or one is in flight) the row becomes a read to send, else it is deleted.
    /// A read for a device with nothing pending or shown for the conversation is nothing to
    /// do. A new row is not made while `max_pending` rows are due (counted as dropped).
    async fn settle_outbox(
        &self,
        done: Vec<u64>,
        pending: Vec<NewPending>,
        max_pending: u64,
        now: i64,
    ) -> StoreResult<Settled>;
    /// Claims up to `limit` pending notifications due at `now` (`next_at <= now`), not under
    /// another lease, oldest first, each with its subscription and payload's data.
    async fn claim_due(&self, now: i64, lease: Duration, limit: usize) -> StoreResult<Vec<Due>>;
    /// Records how a claimed notification ended, for the `version` claimed; if the row
    /// changed since (a newer message), its lease is released so it is sent next, and a
    /// `Sent` still records what was shown.
    async fn finish(&self, due: &Due, outcome: Outcome, now: i64) -> StoreResult<()>;
    /// How much is waiting, for the metrics.
    async fn push_backlog(&self) -> StoreResult<Backlog>;
    /// The VAPID private key (PKCS#8 PEM) every node signs with: the stored one, or
    /// `candidate` stored if there is none yet (the first node to start generates it).
    async fn vapid_key(&self, candidate: &str) -> StoreResult<String>;
}

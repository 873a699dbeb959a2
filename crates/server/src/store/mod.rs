//! The message store (design step 4): the source of truth for accounts, devices, messages and
//! every user's event stream.
//!
//! Each user has one **stream**: a gapless sequence of positions `1, 2, 3, …`, one per event
//! (today: each message the user sent or received). A device's cursor is a position in its
//! user's stream; catch-up is "every entry after the cursor". Positions are assigned in commit
//! order per user (the row that holds the user's head is written in the same transaction), so a
//! reader that has seen position `p` has seen every position below it: nothing commits "late"
//! behind a cursor.
//!
//! Backends: [`sqlite::SqliteStore`] (embedded, default) and [`postgres::PostgresStore`]
//! (shared by the nodes of a cluster).

// Numbers cross a boundary here (the wire, SQL's signed 64-bit integers): the casts that
// could wrap or truncate are denied for the whole server, at its root.

pub mod groups;
pub mod postgres;
pub mod push;
mod sql_integers;
pub mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use confab_protocol::{ConversationSummary, Id, Message, MessagePage, User};

/// Why a store operation failed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    /// A uniqueness rule was broken (e.g. the username is taken).
    #[error("{0}")]
    Conflict(String),
    /// A referenced row does not exist (e.g. an unknown recipient).
    #[error("{0}")]
    NotFound(String),
    /// The operation is not allowed (e.g. the recipient blocked the sender).
    #[error("{0}")]
    Forbidden(String),
    /// The request breaks a rule of the data (e.g. a group past its maximum size).
    #[error("{0}")]
    Invalid(String),
    /// The backend cannot be reached or is shutting down. The write may or may not have
    /// happened (a connection lost during COMMIT cannot tell); a retry with the same
    /// `client_id` gives the exact outcome, which is why clients resend with the same id.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Anything else: a bug or a corrupt database.
    #[error("store error: {0}")]
    Internal(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// An account with its password hash, for login.
#[derive(Clone, Debug)]
pub struct UserRecord {
    pub id: Id,
    pub username: String,
    pub password_hash: String,
}

/// A device (one login session) to create.
#[derive(Clone, Debug)]
pub struct NewDevice {
    pub id: Id,
    pub user_id: Id,
    pub name: Option<String>,
    /// SHA-256 of the bearer token; the token itself is never stored.
    pub token_hash: [u8; 32],
    pub now: i64,
}

/// An account with one logged-in device, written in bulk by `confab admin seed`.
#[derive(Clone, Debug)]
pub struct SeedAccount {
    pub user_id: Id,
    pub username: String,
    pub password_hash: String,
    pub device_id: Id,
    pub token_hash: [u8; 32],
    pub now: i64,
}

/// An unrevoked device, found by its token. Whether it has expired is the server's to decide
/// from `last_active` (`crate::sessions`): the store keeps the time, not the policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceSession {
    pub user_id: Id,
    pub device_id: Id,
    /// The last stream position this device acknowledged.
    pub cursor: u64,
    /// When the device was last used, as last persisted (ms).
    pub last_active: i64,
}

/// One unrevoked device of an account, as the session list shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceRecord {
    pub device_id: Id,
    pub name: Option<String>,
    pub created_at: i64,
    /// When the device was last used, as last persisted (ms).
    pub last_active: i64,
}

/// A message to append, its id already made by the sequencer.
#[derive(Clone, Debug)]
pub struct NewMessage {
    pub id: Id,
    pub from: Id,
    pub to: Id,
    pub client_id: String,
    pub body: String,
    pub ts: i64,
}

/// The outcome of [`Streams::append`].
#[derive(Clone, Debug)]
pub struct Appended {
    /// The stored message; on a duplicate, the one stored the first time.
    pub message: Arc<Message>,
    /// Stream position of the message in the sender's and the recipient's streams.
    /// Zero on a duplicate: no new event exists.
    pub sender_pos: u64,
    pub recipient_pos: u64,
    /// True when `(from, client_id)` had been stored before: nothing new was written.
    pub duplicate: bool,
    /// An intent to notify was written with it (`push`): a recipient has a subscribed device.
    pub notify: bool,
}

impl Appended {
    /// The answer to a repeated `client_id`: the message stored the first time.
    pub fn duplicate(message: Message) -> Self {
        Appended {
            message: Arc::new(message),
            sender_pos: 0,
            recipient_pos: 0,
            duplicate: true,
            notify: false,
        }
    }
}

/// One entry of a user's stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamEntry {
    pub pos: u64,
    pub message: Message,
}

/// What a socket reads once its user is known: see [`MessageStore::login_state`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoginState {
    /// The head of the user's stream.
    pub head: u64,
    /// The user's friends, as [`Contacts::friends`].
    pub friends: Vec<Id>,
    /// The first page of the stream after the resume position, as
    /// [`Streams::stream_after`].
    pub entries: Vec<StreamEntry>,
}

/// One entry of a user's contact list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContactEntry {
    pub user_id: Id,
    pub username: String,
    /// The contact added the owner back.
    pub mutual: bool,
    /// Either side blocks the other: presence must not flow.
    pub blocked: bool,
    /// Last time the contact was online, as last persisted (0 if never).
    pub last_seen: i64,
}

/// A conversation's delivered mark moved forward because a device acknowledged its stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveredAdvance {
    pub conversation: String,
    /// The other participant: the one whose devices hear the receipt.
    pub peer: Id,
    pub seq: u64,
    /// The two are friends ([`Contacts::are_friends`]) as of this write: only then may the
    /// peer hear of it. Read in the same statement as the advance, so an ack costs no
    /// second round trip.
    pub friends: bool,
}

/// A page of a user's conversation list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConversationPage {
    pub conversations: Vec<ConversationSummary>,
    /// Older conversations exist past the last one of this page.
    pub more: bool,
}

impl ConversationPage {
    /// A page from the newest entries of the list's parts (1:1 conversations and groups), at
    /// most `limit + 1` of each: ordered as one list, by the id of each one's last message,
    /// newest first, and cut to `limit`.
    pub(crate) fn merged(mut conversations: Vec<ConversationSummary>, limit: usize) -> Self {
        conversations.sort_by_key(|c| std::cmp::Reverse(c.last_message.as_ref().map(|m| m.id)));
        let more = conversations.len() > limit;
        conversations.truncate(limit);
        ConversationPage {
            conversations,
            more,
        }
    }
}

/// A page of history from up to `limit + 1` messages read newest first: the newest `limit`,
/// ascending, and whether older ones exist.
pub(crate) fn page_of_newest(mut messages: Vec<Message>, limit: usize) -> MessagePage {
    let more = messages.len() > limit;
    messages.truncate(limit);
    messages.reverse();
    MessagePage { messages, more }
}

/// A user's read mark moved forward.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadAdvance {
    pub peer: Id,
    pub seq: u64,
    /// The reader and the peer are friends as of this write (see [`DeliveredAdvance`]).
    pub friends: bool,
}

/// SQL true when users `a` and `b` (SQL expressions) are friends: each has the other as a
/// contact and neither blocks the other. The same text serves both backends, so that every
/// place that decides "friends" (the list's marks, receipts, typing, presence) agrees.
pub(crate) fn friends_sql(a: &str, b: &str) -> String {
    format!(
        "(EXISTS (SELECT 1 FROM contacts fa JOIN contacts fb
                    ON fb.owner = fa.contact AND fb.contact = fa.owner
                  WHERE fa.owner = {a} AND fa.contact = {b})
          AND NOT EXISTS (SELECT 1 FROM blocks fx
                          WHERE (fx.owner = {a} AND fx.blocked = {b})
                             OR (fx.owner = {b} AND fx.blocked = {a})))"
    )
}

/// A message row's recipient as the message's `to`: a group's messages store 0, no user.
pub(crate) fn recipient(stored: Id) -> Option<Id> {
    (stored.0 != 0).then_some(stored)
}

/// A stored `system` column (JSON) as the event it records.
pub(crate) fn system_event(json: &str) -> Result<confab_protocol::SystemEvent, String> {
    serde_json::from_str(json).map_err(|e| format!("malformed system event {json:?}: {e}"))
}

/// Conversation ids are part of the protocol; the store names its rows by them.
pub use confab_protocol::{conversation_id, conversation_members};

/// `user`'s place in a conversation it takes part in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Side {
    /// `user` is the lower id (its marks are the `_lo` columns).
    pub is_lo: bool,
    /// The other participant.
    pub peer: Id,
}

/// `user`'s side of `conversation`; `None` if the id is malformed or `user` is not one of
/// its two participants (callers answer both alike, so as not to tell them apart).
pub fn side_of(conversation: &str, user: Id) -> Option<Side> {
    let (lo, hi) = conversation_members(conversation)?;
    match user {
        u if u == lo => Some(Side {
            is_lo: true,
            peer: hi,
        }),
        u if u == hi => Some(Side {
            is_lo: false,
            peer: lo,
        }),
        _ => None,
    }
}

/// What every message store provides: the operations of [`Accounts`], [`Contacts`],
/// [`Streams`] and [`Conversations`], a socket's start, and the store's own lifecycle.
/// Operations are at the level of chat, not of rows. The server holds a store as
/// `Arc<dyn MessageStore>`; the groups are traits of their own so that each states the
/// guarantees of its part, and so that a caller can say which part it uses.
///
/// Guarantee every backend must keep for every operation (the contract tests check it): a
/// write that returned `Ok` is durable, it survives `kill -9` of the process right after.
#[async_trait]
pub trait MessageStore:
    Accounts + Contacts + Streams + Conversations + groups::Groups + push::Push + Send + Sync + 'static
{
    /// A socket's start, in one round trip where the backend can: the stream head, the
    /// friends, and up to `limit` stream entries after `after`. It reads both [`Streams`] and
    /// [`Contacts`], so it belongs to the whole store.
    async fn login_state(&self, user: Id, after: u64, limit: usize) -> StoreResult<LoginState> {
        Ok(LoginState {
            head: self.stream_head(user).await?,
            friends: self.friends(user).await?,
            entries: self.stream_after(user, after, limit).await?,
        })
    }

    /// Succeeds when the backend is reachable and can commit: it makes a durable write, as a
    /// message would, so that a full or read-only disk fails here.
    async fn check(&self) -> StoreResult<()>;
    /// Finishes every accepted write and releases the backend. Later calls fail `Unavailable`.
    async fn close(&self);
}

/// Accounts and their devices: who may log in, and which bearer token is whose.
///
/// Usernames are unique ignoring ASCII case; a token is stored only as its hash, and a
/// revoked device is never found by it again.
#[async_trait]
pub trait Accounts: Send + Sync {
    /// Creates an account. `Conflict` if the username is taken, ignoring ASCII case.
    async fn create_user(
        &self,
        id: Id,
        username: &str,
        password_hash: &str,
        now: i64,
    ) -> StoreResult<User>;
    /// Finds an account by username, ignoring ASCII case.
    async fn user_by_name(&self, username: &str) -> StoreResult<Option<UserRecord>>;
    /// Finds an account by id.
    async fn user_by_id(&self, id: Id) -> StoreResult<Option<UserRecord>>;

    /// Creates many accounts, each with one device, in as few transactions as the backend
    /// allows. `Conflict` (and nothing of that chunk written) if a username is taken.
    async fn seed_accounts(&self, accounts: Vec<SeedAccount>) -> StoreResult<()>;

    /// Creates a device; its `last_active` is `now`.
    async fn create_device(&self, device: NewDevice) -> StoreResult<()>;
    /// The unrevoked device holding this token hash.
    async fn device_by_token(&self, token_hash: [u8; 32]) -> StoreResult<Option<DeviceSession>>;
    /// Revokes a device's token. Idempotent.
    async fn revoke_device(&self, device_id: Id, now: i64) -> StoreResult<()>;
    /// `user`'s unrevoked devices, oldest first.
    async fn devices(&self, user: Id) -> StoreResult<Vec<DeviceRecord>>;
    /// Records that these devices were used at `now`: each unrevoked one's `last_active`
    /// moves forward to `now` (never back). Unknown or revoked devices are skipped.
    async fn touch_devices(&self, devices: Vec<Id>, now: i64) -> StoreResult<()>;
    /// Replaces `user`'s password hash and revokes every other unrevoked device of the
    /// account, in one transaction: a new password never coexists with the sessions the old
    /// one opened. Returns the devices revoked. `NotFound` if the user does not exist.
    async fn set_password(
        &self,
        user: Id,
        password_hash: &str,
        keep_device: Id,
        now: i64,
    ) -> StoreResult<Vec<Id>>;
}

/// Who knows whom: contacts, blocks and when each user was last online. Together they decide
/// where presence flows ([`Contacts::friends`]) and whose messages a user refuses.
///
/// Every change is idempotent.
#[async_trait]
pub trait Contacts: Send + Sync {
    /// Adds `contact` to `owner`'s contacts (idempotent). Returns whether they are now mutual.
    /// `NotFound` if `contact` does not exist.
    async fn add_contact(&self, owner: Id, contact: Id, now: i64) -> StoreResult<bool>;
    /// Removes a contact (idempotent). Returns whether they had been mutual.
    async fn remove_contact(&self, owner: Id, contact: Id) -> StoreResult<bool>;
    /// `owner`'s contacts, by username.
    async fn contacts(&self, owner: Id) -> StoreResult<Vec<ContactEntry>>;
    /// Mutual contacts of `user` with no block either way: who may see its presence.
    async fn friends(&self, user: Id) -> StoreResult<Vec<Id>>;
    /// Sets or lifts `owner`'s block of `other` (idempotent). `NotFound` if `other` does not exist.
    async fn set_block(&self, owner: Id, other: Id, blocked: bool, now: i64) -> StoreResult<()>;
    /// Whether either user blocks the other.
    async fn blocked_between(&self, a: Id, b: Id) -> StoreResult<bool>;
    /// Whether `a` and `b` are friends: mutual contacts, no block either way (the relation
    /// [`Contacts::friends`] lists).
    async fn are_friends(&self, a: Id, b: Id) -> StoreResult<bool>;
    /// Records when `user` was last online.
    async fn set_last_seen(&self, user: Id, ts: i64) -> StoreResult<()>;
}

/// Each user's stream and the devices' cursors in it: how a message is stored, and how every
/// device catches up.
///
/// Guarantees every backend must keep (the contract tests check them):
/// - `append` is atomic and idempotent by `(from, client_id)`, also across restarts: a repeat
///   returns the first message and writes nothing. `seq` per conversation starts at 1 and grows
///   by exactly 1; stream positions per user likewise; both under any number of concurrent
///   appends.
/// - `stream_after(user, p, n)` returns entries in position order with no gaps, and a position
///   is visible only once every lower position of that user is.
#[async_trait]
pub trait Streams: Send + Sync {
    /// Stores a message in its conversation and in both participants' streams.
    /// `NotFound` if the recipient does not exist, `Forbidden` if the recipient blocks the
    /// sender (checked in the same transaction).
    async fn append(&self, message: NewMessage) -> StoreResult<Appended>;
    /// The head (highest position) of a user's stream; 0 when empty.
    async fn stream_head(&self, user: Id) -> StoreResult<u64>;
    /// Up to `limit` stream entries after position `after`, in order.
    async fn stream_after(
        &self,
        user: Id,
        after: u64,
        limit: usize,
    ) -> StoreResult<Vec<StreamEntry>>;
    /// Moves a device's cursor forward to `pos` (never back, never past the stream's head),
    /// and with it the user's delivered mark of each conversation with a message received in
    /// the acknowledged range. Returns the marks that advanced (each advance once, whichever
    /// device acknowledged first), each saying whether the two are friends.
    async fn set_cursor(&self, device_id: Id, pos: u64) -> StoreResult<Vec<DeliveredAdvance>>;
}

/// Conversations as a user browses them: the list, pages of history, and read marks.
///
/// A user who is not one of a conversation's two participants learns nothing of it: the
/// answer is the same as for a conversation that does not exist. Groups (`g<id>`) are listed
/// and paged here too, for their current members only (see [`groups`]): a group's entry has
/// no `peer` and no peer marks, `read_seq` is the member's own mark, and `group` holds the
/// title and the count of current members; its history starts at the event that added the
/// member (their current span), and anyone else gets `None`. Read marks of groups move with
/// [`groups::Groups::mark_group_read`]; `mark_read` with a group id is `NotFound`.
#[async_trait]
pub trait Conversations: Send + Sync {
    /// A page of the user's conversations, newest activity first: ordered by the id of each
    /// one's last message, descending, from the one just below `before` (exclusive), at most
    /// `limit`. The peer's marks (`peer_read_seq`, `peer_delivered_seq`) are 0 unless the
    /// two are friends now.
    async fn conversations(
        &self,
        user: Id,
        before: Option<Id>,
        limit: usize,
    ) -> StoreResult<ConversationPage>;
    /// A page of a conversation's messages, ascending; `None` if `user` is not a participant
    /// or the conversation does not exist (indistinguishable on purpose).
    async fn messages(
        &self,
        user: Id,
        conversation: &str,
        before: Option<u64>,
        limit: usize,
    ) -> StoreResult<Option<MessagePage>>;
    /// Advances `user`'s read mark in `conversation` to `seq` (clamped to the last message).
    /// `None` if it did not move forward; `NotFound` if `user` is not a participant.
    async fn mark_read(
        &self,
        user: Id,
        conversation: &str,
        seq: u64,
    ) -> StoreResult<Option<ReadAdvance>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_side_is_found_only_for_a_participant() {
        let c = conversation_id(Id(9), Id(3));
        assert_eq!(
            side_of(&c, Id(3)),
            Some(Side {
                is_lo: true,
                peer: Id(9)
            })
        );
        assert_eq!(
            side_of(&c, Id(9)),
            Some(Side {
                is_lo: false,
                peer: Id(3)
            })
        );
        assert_eq!(side_of(&c, Id(4)), None);
        assert_eq!(side_of("garbage", Id(3)), None);
    }
}

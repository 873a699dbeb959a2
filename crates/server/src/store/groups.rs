//! Group conversations in the store: creation, membership changes as `system` messages in the
//! group's own `seq`, sends, reads, and what a device catches up on.
//!
//! The layout (message-store guide, "Group conversations: the layout"): a group's messages are
//! its own log (`messages` by conversation `g<id>` and `seq`); nothing is written per member per
//! message. Membership is a list of spans per member: the member sees `seq` from the event that
//! added them (`from_seq`) to the one that removed them (`to_seq`, inclusive; open while a
//! member). Each device keeps the highest `seq` it acknowledged per group.

use std::sync::Arc;

use async_trait::async_trait;
use confab_protocol::{Id, MemberMarks, Message, Role};

use super::StoreResult;

/// A group to create; its ids are made by the sequencer.
#[derive(Clone, Debug)]
pub struct NewGroup {
    pub group: Id,
    /// The id of its `created` message (seq 1).
    pub message_id: Id,
    pub creator: Id,
    pub title: String,
    /// The other initial members: the creator and repeats are ignored.
    pub members: Vec<Id>,
    pub now: i64,
    /// Most members a group may have, the creator included.
    pub max_members: usize,
    /// Most groups a user may be a member of at once.
    pub max_groups: usize,
}

/// A change to a group, made by a member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GroupChange {
    /// Adds a user as a `member` (owner or admin; a user already in is no change).
    Add(Id),
    /// Removes a member (owner or admin; an admin cannot remove the owner), or, when it is the
    /// actor, leaves. An owner who leaves hands ownership to the longest-standing admin, else
    /// the longest-standing member (a second `system` message, `role_changed`).
    Remove(Id),
    /// Sets the title (owner or admin; the same title is no change).
    Rename(String),
    /// Sets a member's role to `admin` or `member` (owner only; the same role is no change).
    SetRole(Id, Role),
}

/// [`GroupChange`] with who makes it and the ids it may need.
#[derive(Clone, Debug)]
pub struct ChangeGroup {
    pub group: Id,
    pub actor: Id,
    pub change: GroupChange,
    /// Ids for the `system` messages the change stores (at most two are used).
    pub message_ids: [Id; 2],
    pub now: i64,
    pub max_members: usize,
    pub max_groups: usize,
}

/// A text message into a group.
#[derive(Clone, Debug)]
pub struct NewGroupMessage {
    pub id: Id,
    pub group: Id,
    pub from: Id,
    pub client_id: String,
    pub body: String,
    pub ts: i64,
}

/// One message stored in a group, and who receives it.
#[derive(Clone, Debug)]
pub struct GroupAppended {
    pub message: Arc<Message>,
    /// The members at the message's `seq` (a removed member included, for the event that
    /// removed them); empty on a duplicate, which is delivered to nobody again.
    pub recipients: Arc<[Id]>,
    /// `(from, client_id)` had been stored before: nothing new was written.
    pub duplicate: bool,
    /// An intent to notify was written with it (`push`): a member has a subscribed device.
    pub notify: bool,
}

/// A member as the group object shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberRecord {
    pub user_id: Id,
    pub username: String,
    pub role: Role,
}

/// A group as its members see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupRecord {
    pub group: Id,
    pub title: String,
    /// Current members, longest-standing first.
    pub members: Vec<MemberRecord>,
    pub created_at: i64,
}

/// Part of a group a device has still to catch up on: `seq` after `after` up to `upto`
/// (inclusive; `None` while the user is a member).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupSpan {
    pub group: Id,
    pub after: u64,
    pub upto: Option<u64>,
}

/// The `client_id` a `system` message is stored under: longer than any client may send
/// (`MAX_CLIENT_ID_CHARS`), so no client's send can ever repeat one.
pub fn system_client_id(message: Id) -> String {
    format!("system-event-{:0>60}", message.0)
}

/// The refusal of a user who is a member of `max` groups already.
pub fn too_many_groups(user: Id, max: usize) -> super::StoreError {
    super::StoreError::Invalid(format!("user {user} is in {max} groups, the most allowed"))
}

/// Groups, their membership and their messages.
///
/// Guarantees every backend keeps (the contract tests check them):
/// - Every write to a group (a message or a change) takes the group's next `seq`, gaplessly,
///   whatever runs concurrently, and changes to one group apply one at a time: two admins
///   removing each other leave exactly one removed.
/// - A user who is not a member now learns nothing of a group: `NotFound` from every write,
///   `None` from every read, the same as for a group that does not exist.
/// - `append_group` is idempotent by `(from, client_id)` like a 1:1 append, across restarts.
#[async_trait]
pub trait Groups: Send + Sync {
    /// Creates a group with its `created` message at seq 1 (`system.members`: the creator,
    /// then the others in the order given). `Invalid` past `max_members`, or for a member
    /// already in `max_groups` groups; `NotFound` for an unknown user; `Forbidden` if a member
    /// blocks the creator.
    async fn create_group(&self, group: NewGroup) -> StoreResult<(GroupRecord, GroupAppended)>;
    /// Applies a change; returns the `system` messages it stored, in `seq` order (none when it
    /// changed nothing). `NotFound` if the actor is not a member (or there is no such group),
    /// or the user changed is not one (removing, setting a role) or does not exist (adding);
    /// `Forbidden` without the right, or adding a user who blocks the actor; `Invalid` past
    /// `max_members`, for a user already in `max_groups` groups, or for a role other than
    /// `admin` or `member`.
    async fn change_group(&self, change: ChangeGroup) -> StoreResult<Vec<GroupAppended>>;
    /// Stores a member's text message. `NotFound` if `from` is not a member.
    async fn append_group(&self, message: NewGroupMessage) -> StoreResult<GroupAppended>;
    /// The group, if `viewer` is a member.
    async fn group(&self, viewer: Id, group: Id) -> StoreResult<Option<GroupRecord>>;
    /// Every member's read and delivered marks, if `viewer` is a member.
    async fn group_receipts(&self, viewer: Id, group: Id) -> StoreResult<Option<Vec<MemberMarks>>>;
    /// Moves `user`'s read mark in the group forward to `seq` (clamped to the last message).
    /// `Some(mark)` if it moved; `NotFound` if `user` is not a member.
    async fn mark_group_read(&self, user: Id, group: Id, seq: u64) -> StoreResult<Option<u64>>;
    /// Where `device` (of `user`) stands in each group: every current membership (with
    /// `after` its mark, so that a socket knows where live messages continue even when there
    /// is nothing to read), and each ended span with something left to read after the
    /// device's mark. An ended span (the user was removed) is included only for a device that
    /// existed when it ended, so that a device made later learns nothing of a group its user
    /// has left.
    async fn group_spans(&self, device: Id, user: Id) -> StoreResult<Vec<GroupSpan>>;
    /// Up to `limit` of a group's messages with `seq` after `after` up to `upto` (inclusive),
    /// ascending.
    async fn group_messages(
        &self,
        group: Id,
        after: u64,
        upto: Option<u64>,
        limit: usize,
    ) -> StoreResult<Vec<Message>>;
    /// Records that `device` (of `user`) has every message of the group up to `seq`: its mark
    /// moves forward (never back), and with it `user`'s delivered mark.
    async fn set_group_mark(&self, device: Id, user: Id, group: Id, seq: u64) -> StoreResult<()>;
}

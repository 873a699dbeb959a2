//! Group conversations on the wire: the group object, its requests, the `system` event of a
//! membership change, group conversation ids and the cursor of a group message.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::{Id, parse_number};

/// Longest group title, in characters.
pub const MAX_TITLE_CHARS: usize = 128;

/// A member's role in a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Owner,
    Admin,
    Member,
}

impl Role {
    /// As stored and sent.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Member => "member",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "owner" => Some(Role::Owner),
            "admin" => Some(Role::Admin),
            "member" => Some(Role::Member),
            _ => None,
        }
    }

    /// May add, remove (all but the owner) and rename.
    pub fn manages(self) -> bool {
        matches!(self, Role::Owner | Role::Admin)
    }
}

/// What a `system` message records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SystemKind {
    Created,
    MemberAdded,
    MemberRemoved,
    MemberLeft,
    TitleChanged,
    RoleChanged,
}

/// The `system` field of a group's membership change: stored in the conversation as a
/// message, so every member's history shows who did what.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemEvent {
    pub event: SystemKind,
    /// Whom the change is about (added, removed, left, whose role changed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<Id>,
    /// The new title (`created`, `title_changed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// The new role (`role_changed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// The initial members, the creator included (`created`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members: Option<Vec<Id>>,
}

impl SystemEvent {
    /// An event about `user` alone.
    pub fn about(event: SystemKind, user: Id) -> Self {
        SystemEvent {
            event,
            user_id: Some(user),
            title: None,
            role: None,
            members: None,
        }
    }
}

/// `POST /v1/groups`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateGroup {
    pub title: String,
    pub members: Vec<Id>,
}

/// `PATCH /v1/groups/{conversation}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenameGroup {
    pub title: String,
}

/// `PATCH /v1/groups/{conversation}/members/{user_id}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetRole {
    pub role: Role,
}

/// One member in the group object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMember {
    pub user_id: Id,
    pub username: String,
    pub role: Role,
}

/// The group object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    pub conversation: String,
    pub title: String,
    pub members: Vec<GroupMember>,
    pub created_at: i64,
}

/// One member's marks in `GET /v1/groups/{conversation}/receipts`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberMarks {
    pub user_id: Id,
    pub read_seq: u64,
    pub delivered_seq: u64,
}

/// `GET /v1/groups/{conversation}/receipts`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupReceipts {
    pub members: Vec<MemberMarks>,
}

/// `group` in an entry of the conversation list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSummary {
    pub title: String,
    pub members_count: u64,
}

/// A group's conversation id: `g` and the group's id.
pub fn group_conversation_id(group: Id) -> String {
    format!("g{group}")
}

/// The group a conversation id names, if it is a well-formed group id (`g` and a canonical
/// decimal id).
pub fn group_of(conversation: &str) -> Option<Id> {
    conversation
        .strip_prefix('g')
        .and_then(parse_number)
        .map(Id)
}

/// The cursor of a group message: the device's place in its account's stream when the
/// message was sent to it, the group, and the message's `seq`, written `POS.GROUP.SEQ`. An
/// `ack` of it moves both the stream cursor and the device's mark in the group; a `hello`
/// with it resumes the stream after `POS`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupCursor {
    pub pos: u64,
    pub group: Id,
    pub seq: u64,
}

impl fmt::Display for GroupCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.pos, self.group, self.seq)
    }
}

/// A cursor as a client sends it back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cursor {
    /// A place in the account's stream.
    Stream(u64),
    /// A group message's.
    Group(GroupCursor),
}

impl Cursor {
    /// Parses a cursor the server wrote: `POS`, or `POS.GROUP.SEQ`, each part canonical
    /// decimal.
    pub fn parse(s: &str) -> Option<Cursor> {
        let mut parts = s.split('.');
        let pos = parse_number(parts.next()?)?;
        match (parts.next(), parts.next(), parts.next()) {
            (None, _, _) => Some(Cursor::Stream(pos)),
            (Some(group), Some(seq), None) => Some(Cursor::Group(GroupCursor {
                pos,
                group: Id(parse_number(group)?),
                seq: parse_number(seq)?,
            })),
            _ => None,
        }
    }

    /// The place in the account's stream it names.
    pub fn pos(self) -> u64 {
        match self {
            Cursor::Stream(pos) => pos,
            Cursor::Group(g) => g.pos,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_ids_are_g_and_a_canonical_id() {
        assert_eq!(group_conversation_id(Id(42)), "g42");
        assert_eq!(group_of("g42"), Some(Id(42)));
        for bad in [
            "g",
            "g042",
            "g-1",
            "42",
            "G42",
            "g9223372036854775808",
            "3-9",
        ] {
            assert_eq!(group_of(bad), None, "{bad}");
        }
    }

    #[test]
    fn cursors_name_a_stream_place_or_a_group_message() {
        assert_eq!(Cursor::parse("17"), Some(Cursor::Stream(17)));
        let g = GroupCursor {
            pos: 17,
            group: Id(5),
            seq: 3,
        };
        assert_eq!(Cursor::parse(&g.to_string()), Some(Cursor::Group(g)));
        assert_eq!(Cursor::parse("17.5.3").map(Cursor::pos), Some(17));
        for bad in ["", "1.2", "1.2.3.4", "01.2.3", "1..3", "a", "1.2.-3"] {
            assert_eq!(Cursor::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_system_event_carries_only_what_it_says() {
        let e = SystemEvent::about(SystemKind::MemberLeft, Id(9));
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"event":"member_left","user_id":"9"}"#
        );
        assert_eq!(Role::parse(Role::Admin.as_str()), Some(Role::Admin));
    }
}

//! What the group writes share on the writer: membership reads, the checks a change makes,
//! spans, `system` messages, and the changes themselves ([`change_in`]).

use std::sync::Arc;

use confab_protocol::{Id, Message, Role, SystemEvent, SystemKind, group_conversation_id};
use rusqlite::{Connection, OptionalExtension, params};

use super::super::rows::{id_col, internal};
use crate::store::groups::{
    ChangeGroup, GroupAppended, GroupChange, GroupRecord, MemberRecord, system_client_id,
    too_many_groups,
};
use crate::store::sql_integers::id_to_sql;
use crate::store::{StoreError, StoreResult};

pub(super) fn no_group() -> StoreError {
    StoreError::NotFound("no such conversation".into())
}

/// `user`'s role in `group` if a member now.
pub(super) fn role_of(conn: &Connection, group: Id, user: Id) -> StoreResult<Option<Role>> {
    let role: Option<String> = conn
        .prepare_cached(
            "SELECT role FROM group_members
             WHERE group_id = ?1 AND user_id = ?2 AND to_seq IS NULL",
        )
        .and_then(|mut s| {
            s.query_row(params![id_to_sql(group), id_to_sql(user)], |r| r.get(0))
                .optional()
        })
        .map_err(internal)?;
    role.as_deref().map(role_col).transpose()
}

/// The current members, longest-standing first (the owner first among equals).
pub(super) fn members(conn: &Connection, group: Id) -> StoreResult<Vec<(Id, Role)>> {
    conn.prepare_cached(
        "SELECT user_id, role FROM group_members WHERE group_id = ?1 AND to_seq IS NULL
         ORDER BY from_seq, role <> 'owner', user_id",
    )
    .and_then(|mut s| {
        s.query_map(params![id_to_sql(group)], |r| {
            Ok((id_col(r, 0)?, r.get::<_, String>(1)?))
        })?
        .collect::<Result<Vec<_>, _>>()
    })
    .map_err(internal)?
    .into_iter()
    .map(|(user, role)| Ok((user, role_col(&role)?)))
    .collect()
}

/// A stored role.
fn role_col(role: &str) -> StoreResult<Role> {
    Role::parse(role).ok_or_else(|| StoreError::Internal(format!("unknown role {role:?}")))
}

/// `Invalid` if `user` is a member of `max` groups already.
pub(super) fn check_room(conn: &Connection, user: Id, max: usize) -> StoreResult<()> {
    let n: u64 = conn
        .prepare_cached("SELECT count(*) FROM group_members WHERE user_id = ?1 AND to_seq IS NULL")
        .and_then(|mut s| s.query_row(params![id_to_sql(user)], |r| r.get(0)))
        .map_err(internal)?;
    if usize::try_from(n).unwrap_or(usize::MAX) >= max {
        return Err(too_many_groups(user, max));
    }
    Ok(())
}

pub(super) fn user_exists(conn: &Connection, user: Id) -> StoreResult<bool> {
    conn.prepare_cached("SELECT 1 FROM users WHERE id = ?1")
        .and_then(|mut s| s.exists(params![id_to_sql(user)]))
        .map_err(internal)
}

pub(super) fn blocks(conn: &Connection, owner: Id, blocked: Id) -> StoreResult<bool> {
    conn.prepare_cached("SELECT 1 FROM blocks WHERE owner = ?1 AND blocked = ?2")
        .and_then(|mut s| s.exists(params![id_to_sql(owner), id_to_sql(blocked)]))
        .map_err(internal)
}

/// The group object, if the group exists.
pub(super) fn load_group(conn: &Connection, group: Id) -> StoreResult<Option<GroupRecord>> {
    let head: Option<(String, i64)> = conn
        .prepare_cached("SELECT title, created_at FROM groups WHERE id = ?1")
        .and_then(|mut s| {
            s.query_row(params![id_to_sql(group)], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })
        .map_err(internal)?;
    let Some((title, created_at)) = head else {
        return Ok(None);
    };
    // The members with their names in one statement, in the order of `members`.
    let rows: Vec<(Id, String, String)> = conn
        .prepare_cached(
            "SELECT gm.user_id, u.username, gm.role
             FROM group_members gm JOIN users u ON u.id = gm.user_id
             WHERE gm.group_id = ?1 AND gm.to_seq IS NULL
             ORDER BY gm.from_seq, gm.role <> 'owner', gm.user_id",
        )
        .and_then(|mut s| {
            s.query_map(params![id_to_sql(group)], |r| {
                Ok((id_col(r, 0)?, r.get(1)?, r.get(2)?))
            })?
            .collect()
        })
        .map_err(internal)?;
    let members = rows
        .into_iter()
        .map(|(user_id, username, role)| {
            Ok(MemberRecord {
                user_id,
                username,
                role: role_col(&role)?,
            })
        })
        .collect::<StoreResult<Vec<_>>>()?;
    Ok(Some(GroupRecord {
        group,
        title,
        members,
        created_at,
    }))
}

/// Stores a message of the group's at `seq`; a `system` one when `system` is given.
#[expect(
    clippy::too_many_arguments,
    reason = "one argument per column of the row"
)]
pub(super) fn insert_message(
    conn: &Connection,
    id: Id,
    conversation: &str,
    seq: u64,
    from: Id,
    client_id: &str,
    body: &str,
    system: Option<&SystemEvent>,
    ts: i64,
) -> rusqlite::Result<usize> {
    let system = system.map(|s| serde_json::to_string(s).unwrap_or_default());
    // `OR FAIL`: see `append_in`, which explains why no statement journal is needed.
    conn.prepare_cached(
        "INSERT OR FAIL INTO messages
             (id, conversation, seq, sender, recipient, client_id, body, ts, system)
         VALUES (?1, ?2, ?3, ?4, 0, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        id_to_sql(id),
        conversation,
        seq,
        id_to_sql(from),
        client_id,
        body,
        ts,
        system
    ])
}

/// Stores the `system` message `event` at `seq`, from `actor`, for `recipients`.
#[expect(
    clippy::too_many_arguments,
    reason = "the message's fields and its recipients"
)]
pub(super) fn system_message(
    conn: &Connection,
    group: Id,
    id: Id,
    seq: u64,
    actor: Id,
    event: SystemEvent,
    ts: i64,
    recipients: Vec<Id>,
) -> StoreResult<GroupAppended> {
    let conversation = group_conversation_id(group);
    insert_message(
        conn,
        id,
        &conversation,
        seq,
        actor,
        &system_client_id(id),
        "",
        Some(&event),
        ts,
    )
    .map_err(internal)?;
    Ok(GroupAppended {
        message: Arc::new(Message {
            id,
            conversation,
            seq,
            from: actor,
            to: None,
            body: String::new(),
            system: Some(event),
            ts,
        }),
        recipients: recipients.into(),
        duplicate: false,
        notify: false,
    })
}

pub(super) fn open_span(
    conn: &Connection,
    group: Id,
    user: Id,
    seq: u64,
    role: Role,
) -> StoreResult<()> {
    conn.prepare_cached(
        "INSERT INTO group_members (group_id, user_id, from_seq, role) VALUES (?1, ?2, ?3, ?4)",
    )
    .and_then(|mut s| {
        s.execute(params![
            id_to_sql(group),
            id_to_sql(user),
            seq,
            role.as_str()
        ])
    })
    .map(drop)
    .map_err(internal)
}

pub(super) fn close_span(conn: &Connection, group: Id, user: Id, seq: u64) -> StoreResult<()> {
    conn.prepare_cached(
        "UPDATE group_members SET to_seq = ?3
         WHERE group_id = ?1 AND user_id = ?2 AND to_seq IS NULL",
    )
    .and_then(|mut s| s.execute(params![id_to_sql(group), id_to_sql(user), seq]))
    .map(drop)
    .map_err(internal)
}

pub(super) fn set_role(conn: &Connection, group: Id, user: Id, role: Role) -> StoreResult<()> {
    conn.prepare_cached(
        "UPDATE group_members SET role = ?3
         WHERE group_id = ?1 AND user_id = ?2 AND to_seq IS NULL",
    )
    .and_then(|mut s| s.execute(params![id_to_sql(group), id_to_sql(user), role.as_str()]))
    .map(drop)
    .map_err(internal)
}

pub(super) fn ids(members: &[(Id, Role)]) -> Vec<Id> {
    members.iter().map(|(user, _)| *user).collect()
}

/// The change `c` on `conn`, the group's last `seq` being `last`.
pub(super) fn change_in(
    conn: &Connection,
    c: &ChangeGroup,
    last: u64,
) -> StoreResult<Vec<GroupAppended>> {
    let (group, actor) = (c.group, c.actor);
    let actor_role = role_of(conn, group, actor)?.ok_or_else(no_group)?;
    let before = members(conn, group)?;
    let seq = last + 1;
    let about = |kind, user| SystemEvent::about(kind, user);
    let forbidden = |m: &str| Err(StoreError::Forbidden(m.into()));
    // The change's `system` messages: the first at `seq`, an owner's hand-off after it.
    let record = |id, seq, event, recipients| {
        system_message(conn, group, id, seq, actor, event, c.now, recipients)
    };
    let first = |event, recipients| record(c.message_ids[0], seq, event, recipients);
    match &c.change {
        GroupChange::Add(user) => {
            if !actor_role.manages() {
                return forbidden("only the owner or an admin adds members");
            }
            if !user_exists(conn, *user)? {
                return Err(StoreError::NotFound(format!("no user {user}")));
            }
            if before.iter().any(|(m, _)| m == user) {
                return Ok(Vec::new());
            }
            if blocks(conn, *user, actor)? {
                return forbidden("that user does not accept you");
            }
            if before.len() + 1 > c.max_members {
                return Err(StoreError::Invalid(format!(
                    "a group holds at most {} members",
                    c.max_members
                )));
            }
            check_room(conn, *user, c.max_groups)?;
            open_span(conn, group, *user, seq, Role::Member)?;
            let mut recipients = ids(&before);
            recipients.push(*user);
            let event = about(SystemKind::MemberAdded, *user);
            let added = first(event, recipients)?;
            Ok(vec![added])
        }
        GroupChange::Remove(user) => {
            let Some(&(_, target_role)) = before.iter().find(|(m, _)| m == user) else {
                return Err(StoreError::NotFound(format!("{user} is not a member")));
            };
            let leaving = *user == actor;
            if !leaving {
                if !actor_role.manages() {
                    return forbidden("only the owner or an admin removes members");
                }
                if target_role == Role::Owner {
                    return forbidden("the owner cannot be removed");
                }
            }
            close_span(conn, group, *user, seq)?;
            let kind = if leaving {
                SystemKind::MemberLeft
            } else {
                SystemKind::MemberRemoved
            };
            let removed = system_message(
                conn,
                group,
                c.message_ids[0],
                seq,
                actor,
                about(kind, *user),
                c.now,
                ids(&before),
            )?;
            let mut stored = vec![removed];
            // An owner who leaves hands the group on: the longest-standing admin, else member.
            let rest: Vec<(Id, Role)> = before.into_iter().filter(|(m, _)| m != user).collect();
            if target_role == Role::Owner
                && let Some(&(heir, _)) = rest
                    .iter()
                    .find(|(_, r)| *r == Role::Admin)
                    .or_else(|| rest.first())
            {
                set_role(conn, group, heir, Role::Owner)?;
                let event = SystemEvent {
                    role: Some(Role::Owner),
                    ..about(SystemKind::RoleChanged, heir)
                };
                stored.push(record(c.message_ids[1], seq + 1, event, ids(&rest))?);
            }
            Ok(stored)
        }
        GroupChange::Rename(title) => {
            if !actor_role.manages() {
                return forbidden("only the owner or an admin renames the group");
            }
            let current: String = conn
                .prepare_cached("SELECT title FROM groups WHERE id = ?1")
                .and_then(|mut s| s.query_row(params![id_to_sql(group)], |r| r.get(0)))
                .map_err(internal)?;
            if current == *title {
                return Ok(Vec::new());
            }
            conn.prepare_cached("UPDATE groups SET title = ?2 WHERE id = ?1")
                .and_then(|mut s| s.execute(params![id_to_sql(group), title]))
                .map_err(internal)?;
            let event = SystemEvent {
                event: SystemKind::TitleChanged,
                user_id: None,
                title: Some(title.clone()),
                role: None,
                members: None,
            };
            let renamed = first(event, ids(&before))?;
            Ok(vec![renamed])
        }
        GroupChange::SetRole(user, role) => {
            if actor_role != Role::Owner {
                return forbidden("only the owner sets roles");
            }
            if *role == Role::Owner {
                return Err(StoreError::Invalid("a role is `admin` or `member`".into()));
            }
            let Some(&(_, current)) = before.iter().find(|(m, _)| m == user) else {
                return Err(StoreError::NotFound(format!("{user} is not a member")));
            };
            if current == Role::Owner {
                return Err(StoreError::Invalid(
                    "the owner's role changes only when the owner leaves".into(),
                ));
            }
            if current == *role {
                return Ok(Vec::new());
            }
            set_role(conn, group, *user, *role)?;
            let event = SystemEvent {
                role: Some(*role),
                ..about(SystemKind::RoleChanged, *user)
            };
            let changed = first(event, ids(&before))?;
            Ok(vec![changed])
        }
    }
}

//! What the group operations share in PostgreSQL: the statements, membership reads, the
//! checks a change makes, `system` messages, and the writes themselves (creation, changes,
//! sends).

use std::collections::HashSet;
use std::sync::Arc;

use confab_protocol::{Id, Message, Role, SystemEvent, SystemKind, group_conversation_id};
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

use super::super::retry::{Failure, classify};
use super::super::rows::{
    execute, id_col, is_unique_violation, message_from_row, query, query_one, query_opt, u64_col,
};
use super::statements::*;
use crate::store::StoreError;
use crate::store::groups::{
    ChangeGroup, GroupAppended, GroupChange, GroupRecord, MemberRecord, NewGroup, NewGroupMessage,
    system_client_id, too_many_groups,
};
use crate::store::sql_integers::{count_to_sql, id_from_sql, id_to_sql};

pub(super) fn not_a_member() -> StoreError {
    StoreError::NotFound("no such conversation".into())
}

pub(super) fn no_user(user: Id) -> StoreError {
    StoreError::NotFound(format!("no user {user}"))
}

pub(super) fn role_col(row: &Row, i: usize) -> Result<Role, Failure> {
    let text: &str = row.try_get(i)?;
    Role::parse(text).ok_or_else(|| {
        Failure::Final(StoreError::Internal(format!(
            "unknown role {text:?} in group_members"
        )))
    })
}

pub(super) fn ids_to_sql(ids: &[Id]) -> Vec<i64> {
    ids.iter().copied().map(id_to_sql).collect()
}

/// The creator, then the other members in the order given, each once.
pub(super) fn initial_members(creator: Id, others: &[Id]) -> Vec<Id> {
    let mut seen = HashSet::from([creator]);
    let mut members = vec![creator];
    members.extend(others.iter().copied().filter(|u| seen.insert(*u)));
    members
}

/// The current members of `group`, in [`MEMBER_ORDER`].
pub(super) async fn members_in(c: &impl GenericClient, group: Id) -> Result<Vec<Id>, Failure> {
    let rows = query(c, &MEMBERS_SQL, &[&id_to_sql(group)]).await?;
    Ok(rows
        .iter()
        .map(|r| id_col(r, 0))
        .collect::<Result<_, _>>()?)
}

/// `user`'s role in `group` if they are a member now.
pub(super) async fn current_role(
    c: &impl GenericClient,
    group: Id,
    user: Id,
) -> Result<Option<Role>, Failure> {
    match query_opt(c, CURRENT_SPAN_SQL, &[&id_to_sql(group), &id_to_sql(user)]).await? {
        Some(row) => Ok(Some(role_col(&row, 0)?)),
        None => Ok(None),
    }
}

/// The group as `viewer` sees it, `None` unless `viewer` is a member now.
pub(super) async fn group_in(
    c: &impl GenericClient,
    viewer: Id,
    group: Id,
) -> Result<Option<GroupRecord>, Failure> {
    let rows = query(c, &GROUP_SQL, &[&id_to_sql(group), &id_to_sql(viewer)]).await?;
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let mut members = Vec::with_capacity(rows.len());
    for r in &rows {
        members.push(MemberRecord {
            user_id: id_col(r, 2)?,
            username: r.try_get(3)?,
            role: role_col(r, 4)?,
        });
    }
    Ok(Some(GroupRecord {
        group,
        title: first.try_get(0)?,
        members,
        created_at: first.try_get(1)?,
    }))
}

/// A `system` message of `group` at `seq`, stored; the caller holds the group's row.
pub(super) struct SystemMessage {
    id: Id,
    group: Id,
    seq: u64,
    from: Id,
    event: SystemEvent,
    ts: i64,
}

pub(super) async fn store_system(
    c: &impl GenericClient,
    m: SystemMessage,
) -> Result<Message, Failure> {
    let json = serde_json::to_string(&m.event)
        .map_err(|e| StoreError::Internal(format!("cannot encode a system event: {e}")))?;
    let conversation = group_conversation_id(m.group);
    execute(
        c,
        "INSERT INTO messages
             (id, conversation, seq, sender, recipient, client_id, body, ts, system)
         VALUES ($1, $2, $3, $4, 0, $5, '', $6, $7)",
        &[
            &id_to_sql(m.id),
            &conversation,
            &count_to_sql(m.seq),
            &id_to_sql(m.from),
            &system_client_id(m.id),
            &m.ts,
            &json,
        ],
    )
    .await?;
    Ok(Message {
        id: m.id,
        conversation,
        seq: m.seq,
        from: m.from,
        to: None,
        body: String::new(),
        system: Some(m.event),
        ts: m.ts,
    })
}

/// Takes the group's next `seq` (its row is locked already).
pub(super) async fn next_seq(c: &impl GenericClient, group: Id) -> Result<u64, Failure> {
    let row = query_one(
        c,
        "UPDATE groups SET last_seq = last_seq + 1 WHERE id = $1 RETURNING last_seq",
        &[&id_to_sql(group)],
    )
    .await?;
    u64_col(&row, 0)
}

pub(super) fn appended(message: Message, recipients: Vec<Id>) -> GroupAppended {
    GroupAppended {
        message: Arc::new(message),
        recipients: recipients.into(),
        duplicate: false,
        notify: false,
    }
}

/// `Invalid` if one of `users` is a member of `max` groups already. The users' rows are
/// locked first (in id order, as every append locks them), so two joins of one user to
/// different groups count one after the other.
pub(super) async fn check_room(
    c: &impl GenericClient,
    users: &[i64],
    max: usize,
) -> Result<(), Failure> {
    query(
        c,
        "SELECT id FROM users WHERE id = ANY($1) ORDER BY id FOR UPDATE",
        &[&users],
    )
    .await?;
    let full = query_opt(
        c,
        "SELECT user_id FROM group_members
         WHERE user_id = ANY($1) AND to_seq IS NULL
         GROUP BY user_id HAVING count(*) >= $2 LIMIT 1",
        &[&users, &i64::try_from(max).unwrap_or(i64::MAX)],
    )
    .await?;
    match full {
        Some(row) => Err(Failure::Final(too_many_groups(id_col(&row, 0)?, max))),
        None => Ok(()),
    }
}

pub(super) async fn create_in(
    c: &impl GenericClient,
    g: &NewGroup,
) -> Result<(GroupRecord, GroupAppended), Failure> {
    let members = initial_members(g.creator, &g.members);
    if members.len() > g.max_members {
        return Err(Failure::Final(StoreError::Invalid(format!(
            "a group has at most {} members",
            g.max_members
        ))));
    }
    let member_ids = ids_to_sql(&members);
    let known: HashSet<Id> = query(c, "SELECT id FROM users WHERE id = ANY($1)", &[&member_ids])
        .await?
        .iter()
        .map(|r| id_col(r, 0))
        .collect::<Result<_, _>>()?;
    if let Some(unknown) = members.iter().find(|u| !known.contains(u)) {
        return Err(Failure::Final(no_user(*unknown)));
    }
    check_room(c, &member_ids, g.max_groups).await?;
    let blocking = query_opt(
        c,
        "SELECT 1 FROM blocks WHERE blocked = $1 AND owner = ANY($2) LIMIT 1",
        &[&id_to_sql(g.creator), &member_ids],
    )
    .await?;
    if blocking.is_some() {
        return Err(Failure::Final(StoreError::Forbidden(
            "a member does not accept your messages".into(),
        )));
    }
    execute(
        c,
        "INSERT INTO groups (id, title, created_at, last_seq) VALUES ($1, $2, $3, 1)",
        &[&id_to_sql(g.group), &g.title, &g.now],
    )
    .await
    .map_err(|e| {
        if is_unique_violation(&e, None) {
            Failure::Final(StoreError::Conflict(format!("group {} exists", g.group)))
        } else {
            classify(&e)
        }
    })?;
    execute(
        c,
        "INSERT INTO group_members (group_id, user_id, from_seq, role)
         SELECT $1, u, 1, CASE WHEN u = $2 THEN 'owner' ELSE 'member' END
         FROM unnest($3::BIGINT[]) AS u",
        &[&id_to_sql(g.group), &id_to_sql(g.creator), &member_ids],
    )
    .await?;
    let message = store_system(
        c,
        SystemMessage {
            id: g.message_id,
            group: g.group,
            seq: 1,
            from: g.creator,
            event: SystemEvent {
                event: SystemKind::Created,
                user_id: None,
                title: Some(g.title.clone()),
                role: None,
                members: Some(members),
            },
            ts: g.now,
        },
    )
    .await?;
    let record = group_in(c, g.creator, g.group)
        .await?
        .ok_or_else(|| StoreError::Internal("a group just created is not found".into()))?;
    let recipients = record.members.iter().map(|m| m.user_id).collect();
    Ok((record, appended(message, recipients)))
}

pub(super) async fn change_in(
    c: &impl GenericClient,
    ch: &ChangeGroup,
) -> Result<Vec<GroupAppended>, Failure> {
    let group = id_to_sql(ch.group);
    // The lock comes first: what the change checks below is what it changes.
    let Some(row) = query_opt(
        c,
        "SELECT title FROM groups WHERE id = $1 FOR UPDATE",
        &[&group],
    )
    .await?
    else {
        return Err(Failure::Final(not_a_member()));
    };
    let title: String = row.try_get(0)?;
    let actor_role = current_role(c, ch.group, ch.actor)
        .await?
        .ok_or_else(not_a_member)?;
    let forbidden = |what: &str| Failure::Final(StoreError::Forbidden(what.to_owned()));
    let system = |seq: u64, id: Id, event: SystemEvent| SystemMessage {
        id,
        group: ch.group,
        seq,
        from: ch.actor,
        event,
        ts: ch.now,
    };
    let [first_id, second_id] = ch.message_ids;
    match &ch.change {
        GroupChange::Add(user) => {
            if !actor_role.manages() {
                return Err(forbidden("only the owner or an admin may add members"));
            }
            let exists = query_opt(c, "SELECT 1 FROM users WHERE id = $1", &[&id_to_sql(*user)])
                .await?
                .is_some();
            if !exists {
                return Err(Failure::Final(no_user(*user)));
            }
            if current_role(c, ch.group, *user).await?.is_some() {
                return Ok(Vec::new());
            }
            let blocks = query_opt(
                c,
                "SELECT 1 FROM blocks WHERE owner = $1 AND blocked = $2",
                &[&id_to_sql(*user), &id_to_sql(ch.actor)],
            )
            .await?;
            if blocks.is_some() {
                return Err(forbidden("the user does not accept your messages"));
            }
            let members = members_in(c, ch.group).await?;
            if members.len() + 1 > ch.max_members {
                return Err(Failure::Final(StoreError::Invalid(format!(
                    "a group has at most {} members",
                    ch.max_members
                ))));
            }
            check_room(c, &[id_to_sql(*user)], ch.max_groups).await?;
            let seq = next_seq(c, ch.group).await?;
            execute(
                c,
                "INSERT INTO group_members (group_id, user_id, from_seq, role)
                 VALUES ($1, $2, $3, 'member')",
                &[&group, &id_to_sql(*user), &count_to_sql(seq)],
            )
            .await?;
            let event = SystemEvent::about(SystemKind::MemberAdded, *user);
            let message = store_system(c, system(seq, first_id, event)).await?;
            Ok(vec![appended(message, members_in(c, ch.group).await?)])
        }
        GroupChange::Remove(user) => {
            let leaving = *user == ch.actor;
            if !leaving {
                if !actor_role.manages() {
                    return Err(forbidden("only the owner or an admin may remove members"));
                }
                let target = current_role(c, ch.group, *user)
                    .await?
                    .ok_or_else(|| StoreError::NotFound(format!("{user} is not a member")))?;
                if target == Role::Owner {
                    return Err(forbidden("nobody may remove the owner"));
                }
            }
            // Who receives the event: everyone who was a member at it, the one leaving too.
            let before = members_in(c, ch.group).await?;
            let seq = next_seq(c, ch.group).await?;
            execute(
                c,
                "UPDATE group_members SET to_seq = $3
                 WHERE group_id = $1 AND user_id = $2 AND to_seq IS NULL",
                &[&group, &id_to_sql(*user), &count_to_sql(seq)],
            )
            .await?;
            let kind = if leaving {
                SystemKind::MemberLeft
            } else {
                SystemKind::MemberRemoved
            };
            let message =
                store_system(c, system(seq, first_id, SystemEvent::about(kind, *user))).await?;
            let mut stored = vec![appended(message, before)];
            if leaving && actor_role == Role::Owner {
                stored.extend(hand_over(c, ch, second_id).await?);
            }
            Ok(stored)
        }
        GroupChange::Rename(new_title) => {
            if !actor_role.manages() {
                return Err(forbidden("only the owner or an admin may rename the group"));
            }
            if *new_title == title {
                return Ok(Vec::new());
            }
            let seq = next_seq(c, ch.group).await?;
            execute(
                c,
                "UPDATE groups SET title = $2 WHERE id = $1",
                &[&group, new_title],
            )
            .await?;
            let event = SystemEvent {
                event: SystemKind::TitleChanged,
                user_id: None,
                title: Some(new_title.clone()),
                role: None,
                members: None,
            };
            let message = store_system(c, system(seq, first_id, event)).await?;
            Ok(vec![appended(message, members_in(c, ch.group).await?)])
        }
        GroupChange::SetRole(user, role) => {
            if actor_role != Role::Owner {
                return Err(forbidden("only the owner may set roles"));
            }
            if !matches!(role, Role::Admin | Role::Member) {
                return Err(Failure::Final(StoreError::Invalid(
                    "a role is set to admin or member".into(),
                )));
            }
            let target = current_role(c, ch.group, *user)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("{user} is not a member")))?;
            if target == Role::Owner {
                return Err(Failure::Final(StoreError::Invalid(
                    "the owner's role changes only when the owner leaves".into(),
                )));
            }
            if target == *role {
                return Ok(Vec::new());
            }
            let seq = next_seq(c, ch.group).await?;
            set_role(c, ch.group, *user, *role).await?;
            let event = SystemEvent {
                event: SystemKind::RoleChanged,
                user_id: Some(*user),
                title: None,
                role: Some(*role),
                members: None,
            };
            let message = store_system(c, system(seq, first_id, event)).await?;
            Ok(vec![appended(message, members_in(c, ch.group).await?)])
        }
    }
}

pub(super) async fn set_role(
    c: &impl GenericClient,
    group: Id,
    user: Id,
    role: Role,
) -> Result<(), Failure> {
    execute(
        c,
        "UPDATE group_members SET role = $3
         WHERE group_id = $1 AND user_id = $2 AND to_seq IS NULL",
        &[&id_to_sql(group), &id_to_sql(user), &role.as_str()],
    )
    .await?;
    Ok(())
}

/// The owner has left (their span is closed): the longest-standing admin, else the
/// longest-standing member, becomes the owner, recorded as the change's second message.
/// Nothing when nobody remains.
pub(super) async fn hand_over(
    c: &impl GenericClient,
    ch: &ChangeGroup,
    message_id: Id,
) -> Result<Option<GroupAppended>, Failure> {
    let Some(row) = query_opt(
        c,
        "SELECT gm.user_id FROM group_members gm
         WHERE gm.group_id = $1 AND gm.to_seq IS NULL
         ORDER BY gm.role <> 'admin', gm.from_seq, gm.user_id LIMIT 1",
        &[&id_to_sql(ch.group)],
    )
    .await?
    else {
        return Ok(None);
    };
    let heir = id_col(&row, 0)?;
    let seq = next_seq(c, ch.group).await?;
    set_role(c, ch.group, heir, Role::Owner).await?;
    let event = SystemEvent {
        event: SystemKind::RoleChanged,
        user_id: Some(heir),
        title: None,
        role: Some(Role::Owner),
        members: None,
    };
    let message = store_system(
        c,
        SystemMessage {
            id: message_id,
            group: ch.group,
            seq,
            from: ch.actor,
            event,
            ts: ch.now,
        },
    )
    .await?;
    Ok(Some(appended(message, members_in(c, ch.group).await?)))
}

/// A group send: one call of `confab_append_group_notify` (migration 8: `confab_append_group`
/// of migration 7, then the push intent), a transaction of its own.
///
/// Its steps: a stored `(from, client_id)` is answered as it was (before membership, so that
/// a sender removed since still learns the outcome of its send); the group's counter is
/// taken, which locks the group's row until commit; membership is read after the lock, so it
/// is the membership every earlier write left; the message is stored and the members read as
/// its recipients; last, the intent to notify, when a recipient other than the sender has a
/// subscribed device.
pub(super) async fn append_group_in(
    c: &impl GenericClient,
    m: &NewGroupMessage,
) -> Result<GroupAppended, Failure> {
    let row = query_one(
        c,
        "SELECT * FROM confab_append_group_notify($1, $2, $3, $4, $5, $6, $7)",
        &[
            &id_to_sql(m.id),
            &id_to_sql(m.group),
            &group_conversation_id(m.group),
            &id_to_sql(m.from),
            &m.client_id,
            &m.body,
            &m.ts,
        ],
    )
    .await
    .map_err(|e| match e.as_db_error() {
        Some(d) if d.code().code() == NOT_A_MEMBER => Failure::Final(not_a_member()),
        // The same (sender, client_id) was stored concurrently, which rolled this call back:
        // the next attempt finds it and answers it as a duplicate.
        _ if is_unique_violation(&e, Some("messages_sender_client_id")) => Failure::Retry(
            StoreError::Conflict("(sender, client_id) stored concurrently".into()),
        ),
        _ => classify(&e),
    })?;
    let status: &str = row.try_get(0)?;
    match status {
        "not_member" => Err(Failure::Final(not_a_member())),
        "duplicate" => Ok(GroupAppended {
            message: Arc::new(message_from_row(&row, 1)?),
            recipients: Arc::new([]),
            duplicate: true,
            notify: false,
        }),
        "stored" => {
            let recipients: Vec<i64> = row.try_get::<_, Option<Vec<i64>>>(9)?.unwrap_or_default();
            Ok(GroupAppended {
                notify: row.try_get(10)?,
                ..appended(
                    message_from_row(&row, 1)?,
                    recipients.into_iter().map(id_from_sql).collect(),
                )
            })
        }
        other => Err(Failure::Final(StoreError::Internal(format!(
            "confab_append_group_notify answered {other:?}"
        )))),
    }
}

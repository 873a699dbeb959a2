//! The PostgreSQL side of `store::groups`: creating and changing groups, with the races only
//! several connections can make.

use confab_protocol::{Id, Role, SystemEvent, SystemKind};
use confab_testkit::postgres::Database;

use super::PostgresStore;
use crate::store::groups::{
    ChangeGroup, GroupChange, Groups, NewGroup, NewGroupMessage, system_client_id,
};
use crate::store::{Accounts, Contacts, MessageStore, StoreError};

// Groups: the PostgreSQL side of `store::groups`, with the races only several connections
// can make.

/// Users 1 to 6 (named `user1` …) on a fresh store with a pool of `pool`.
pub(super) async fn six_users(url: &str, pool: usize) -> PostgresStore {
    let store = PostgresStore::connect(url, pool).await.unwrap();
    for id in 1..=6 {
        store
            .create_user(Id(id), &format!("user{id}"), "h", 1)
            .await
            .unwrap();
    }
    store
}

pub(super) fn new_group(group: u64, creator: u64, members: &[u64]) -> NewGroup {
    NewGroup {
        group: Id(group),
        message_id: Id(group * 1000),
        creator: Id(creator),
        title: format!("group {group}"),
        members: members.iter().copied().map(Id).collect(),
        now: 10,
        max_members: 5,
        max_groups: 100,
    }
}

/// A change by `actor`, its message ids made from `ids` (unique per test).
pub(super) fn change(group: u64, actor: u64, ids: u64, change: GroupChange) -> ChangeGroup {
    ChangeGroup {
        group: Id(group),
        actor: Id(actor),
        change,
        message_ids: [Id(ids), Id(ids + 1)],
        now: 20,
        max_members: 5,
        max_groups: 100,
    }
}

pub(super) fn group_msg(id: u64, group: u64, from: u64, client_id: &str) -> NewGroupMessage {
    NewGroupMessage {
        id: Id(id),
        group: Id(group),
        from: Id(from),
        client_id: client_id.into(),
        body: format!("m{id}"),
        ts: 30,
    }
}

pub(super) fn ids(list: &[Id]) -> Vec<u64> {
    list.iter().map(|i| i.0).collect()
}

pub(super) async fn members(store: &PostgresStore, viewer: u64, group: u64) -> Vec<(u64, Role)> {
    store
        .group(Id(viewer), Id(group))
        .await
        .unwrap()
        .expect("a member sees the group")
        .members
        .iter()
        .map(|m| (m.user_id.0, m.role))
        .collect()
}

#[tokio::test]
pub(super) async fn a_group_is_created_with_its_created_message() {
    let Some(db) = Database::from_env().await else {
        return;
    };
    let store = six_users(&db.url(), 2).await;
    // Repeats and the creator among the others count once.
    let (record, created) = store
        .create_group(new_group(7, 2, &[3, 1, 3, 2, 5]))
        .await
        .unwrap();
    assert_eq!(record.group, Id(7));
    assert_eq!(record.title, "group 7");
    assert_eq!(record.created_at, 10);
    let listed: Vec<_> = record
        .members
        .iter()
        .map(|m| (m.user_id.0, m.username.as_str(), m.role))
        .collect();
    assert_eq!(
        listed,
        [
            (2, "user2", Role::Owner),
            (1, "user1", Role::Member),
            (3, "user3", Role::Member),
            (5, "user5", Role::Member),
        ]
    );
    let m = &created.message;
    assert!(!created.duplicate);
    assert_eq!(
        (m.id, m.seq, m.from, m.to, m.ts),
        (Id(7000), 1, Id(2), None, 10)
    );
    assert_eq!(m.conversation, "g7");
    assert!(m.body.is_empty());
    assert_eq!(
        m.system,
        Some(SystemEvent {
            event: SystemKind::Created,
            user_id: None,
            title: Some("group 7".into()),
            role: None,
            members: Some(vec![Id(2), Id(3), Id(1), Id(5)]),
        })
    );
    assert_eq!(ids(&created.recipients), [2, 1, 3, 5]);
    // Stored as it was answered, under a client id no client can send.
    let stored = store.group_messages(Id(7), 0, None, 10).await.unwrap();
    assert_eq!(stored, [(**m).clone()]);
    let c = store.pool.get().await.unwrap();
    let row = c
        .query_one(
            "SELECT client_id, recipient FROM messages WHERE id = 7000",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), system_client_id(Id(7000)));
    assert_eq!(row.get::<_, i64>(1), 0);
    drop(c);
    // Members see it; anyone else learns nothing.
    assert_eq!(store.group(Id(5), Id(7)).await.unwrap(), Some(record));
    assert_eq!(store.group(Id(4), Id(7)).await.unwrap(), None);
    assert_eq!(store.group(Id(2), Id(8)).await.unwrap(), None);
    store.close().await;
}

#[tokio::test]
pub(super) async fn a_group_is_refused_past_its_size_or_with_an_unknown_or_blocking_member() {
    let Some(db) = Database::from_env().await else {
        return;
    };
    let store = six_users(&db.url(), 2).await;
    let too_many = NewGroup {
        max_members: 3,
        ..new_group(7, 1, &[2, 3, 4])
    };
    let err = store.create_group(too_many).await.unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");
    // Exactly the maximum, repeats not counted.
    let full = NewGroup {
        max_members: 3,
        ..new_group(8, 1, &[2, 3, 2, 1])
    };
    store.create_group(full).await.unwrap();

    let err = store
        .create_group(new_group(9, 1, &[2, 99]))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::NotFound(m) if m == "no user 99"),
        "{err:?}"
    );
    let err = store
        .create_group(new_group(9, 98, &[2]))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::NotFound(m) if m == "no user 98"),
        "{err:?}"
    );

    // A block by the creator of a member is no refusal; a member's block of the creator is.
    store.set_block(Id(1), Id(4), true, 1).await.unwrap();
    store.create_group(new_group(10, 1, &[4])).await.unwrap();
    store.set_block(Id(3), Id(1), true, 1).await.unwrap();
    let err = store
        .create_group(new_group(9, 1, &[2, 3]))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Forbidden(_)), "{err:?}");
    // Nothing of a refused group was written: its id is free.
    assert_eq!(store.group(Id(1), Id(9)).await.unwrap(), None);
    store.create_group(new_group(9, 1, &[2])).await.unwrap();
    store.close().await;
}

#[tokio::test]
pub(super) async fn adding_a_member() {
    let Some(db) = Database::from_env().await else {
        return;
    };
    let store = six_users(&db.url(), 2).await;
    store.create_group(new_group(7, 1, &[2, 3])).await.unwrap();
    let add = |actor, user, ids| change(7, actor, ids, GroupChange::Add(Id(user)));

    let err = store.change_group(add(2, 4, 100)).await.unwrap_err();
    assert!(matches!(err, StoreError::Forbidden(_)), "a member: {err:?}");
    let err = store.change_group(add(4, 5, 100)).await.unwrap_err();
    assert!(
        matches!(err, StoreError::NotFound(_)),
        "not a member: {err:?}"
    );
    let err = store
        .change_group(change(8, 1, 100, GroupChange::Add(Id(4))))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "no group: {err:?}");
    let err = store.change_group(add(1, 99, 100)).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::NotFound(m) if m == "no user 99"),
        "{err:?}"
    );
    assert!(store.change_group(add(1, 3, 100)).await.unwrap().is_empty());
    store.set_block(Id(4), Id(1), true, 1).await.unwrap();
    let err = store.change_group(add(1, 4, 100)).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Forbidden(_)),
        "blocks the actor: {err:?}"
    );

    // An admin adds.
    store
        .change_group(change(7, 1, 100, GroupChange::SetRole(Id(2), Role::Admin)))
        .await
        .unwrap();
    let added = store.change_group(add(2, 5, 110)).await.unwrap();
    assert_eq!(added.len(), 1);
    let m = &added[0].message;
    assert_eq!((m.id, m.seq, m.from, m.ts), (Id(110), 3, Id(2), 20));
    assert_eq!(
        m.system,
        Some(SystemEvent::about(SystemKind::MemberAdded, Id(5)))
    );
    assert_eq!(ids(&added[0].recipients), [1, 2, 3, 5]);
    assert_eq!(
        members(&store, 5, 7).await,
        [
            (1, Role::Owner),
            (2, Role::Admin),
            (3, Role::Member),
            (5, Role::Member)
        ]
    );
    // The fifth member fills the group; a sixth is refused.
    store.change_group(add(1, 6, 120)).await.unwrap();
    store.set_block(Id(4), Id(1), false, 1).await.unwrap();
    let err = store.change_group(add(1, 4, 130)).await.unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");
    let last = store.group_messages(Id(7), 0, None, 10).await.unwrap();
    assert_eq!(last.len(), 4, "refusals store nothing");
    store.close().await;
}

#[tokio::test]
pub(super) async fn removing_and_leaving() {
    let Some(db) = Database::from_env().await else {
        return;
    };
    let store = six_users(&db.url(), 2).await;
    store
        .create_group(new_group(7, 1, &[2, 3, 4]))
        .await
        .unwrap();
    store
        .change_group(change(7, 1, 100, GroupChange::SetRole(Id(2), Role::Admin)))
        .await
        .unwrap();
    let remove = |actor, user, ids| change(7, actor, ids, GroupChange::Remove(Id(user)));

    let err = store.change_group(remove(3, 4, 110)).await.unwrap_err();
    assert!(matches!(err, StoreError::Forbidden(_)), "a member: {err:?}");
    let err = store.change_group(remove(2, 5, 110)).await.unwrap_err();
    assert!(
        matches!(err, StoreError::NotFound(_)),
        "not a member: {err:?}"
    );
    let err = store.change_group(remove(2, 1, 110)).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Forbidden(_)),
        "the owner: {err:?}"
    );

    let removed = store.change_group(remove(2, 4, 110)).await.unwrap();
    assert_eq!(removed.len(), 1);
    let m = &removed[0].message;
    assert_eq!((m.id, m.seq, m.from), (Id(110), 3, Id(2)));
    assert_eq!(
        m.system,
        Some(SystemEvent::about(SystemKind::MemberRemoved, Id(4)))
    );
    // The removed member hears of it, and of nothing after.
    assert_eq!(ids(&removed[0].recipients), [1, 2, 3, 4]);
    assert_eq!(store.group(Id(4), Id(7)).await.unwrap(), None);
    let err = store
        .append_group(group_msg(200, 7, 4, "after"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    let err = store.change_group(remove(4, 4, 120)).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    let err = store.change_group(remove(2, 4, 120)).await.unwrap_err();
    assert!(
        matches!(err, StoreError::NotFound(_)),
        "removed twice: {err:?}"
    );

    // A member leaves by removing themself.
    let left = store.change_group(remove(3, 3, 120)).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(
        left[0].message.system,
        Some(SystemEvent::about(SystemKind::MemberLeft, Id(3)))
    );
    assert_eq!(left[0].message.seq, 4);
    assert_eq!(ids(&left[0].recipients), [1, 2, 3]);
    assert_eq!(
        members(&store, 1, 7).await,
        [(1, Role::Owner), (2, Role::Admin)]
    );

    // Added again: a second span, from the event that added them.
    let again = store
        .change_group(change(7, 1, 130, GroupChange::Add(Id(4))))
        .await
        .unwrap();
    assert_eq!(again[0].message.seq, 5);
    assert_eq!(
        members(&store, 4, 7).await,
        [(1, Role::Owner), (2, Role::Admin), (4, Role::Member)]
    );
    store.close().await;
}

#[tokio::test]
pub(super) async fn renaming_and_setting_roles() {
    let Some(db) = Database::from_env().await else {
        return;
    };
    let store = six_users(&db.url(), 2).await;
    store.create_group(new_group(7, 1, &[2, 3])).await.unwrap();
    // Fresh message ids for each change.
    let last_id = std::cell::Cell::new(100);
    let next = || {
        last_id.set(last_id.get() + 2);
        last_id.get()
    };
    let rename = |actor, title: &str| change(7, actor, next(), GroupChange::Rename(title.into()));
    let set_role =
        |actor, user, role| change(7, actor, next(), GroupChange::SetRole(Id(user), role));

    let err = store.change_group(rename(2, "x")).await.unwrap_err();
    assert!(matches!(err, StoreError::Forbidden(_)), "{err:?}");
    assert!(
        store
            .change_group(rename(1, "group 7"))
            .await
            .unwrap()
            .is_empty()
    );
    let renamed = store.change_group(rename(1, "news")).await.unwrap();
    assert_eq!(renamed.len(), 1);
    assert_eq!(renamed[0].message.seq, 2);
    assert_eq!(
        renamed[0].message.system.as_ref().unwrap().title.as_deref(),
        Some("news")
    );
    assert_eq!(
        renamed[0].message.system.as_ref().unwrap().event,
        SystemKind::TitleChanged
    );
    assert_eq!(ids(&renamed[0].recipients), [1, 2, 3]);
    assert_eq!(
        store.group(Id(2), Id(7)).await.unwrap().unwrap().title,
        "news"
    );

    let err = store
        .change_group(set_role(2, 3, Role::Admin))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Forbidden(_)), "a member: {err:?}");
    let err = store
        .change_group(set_role(1, 2, Role::Owner))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");
    let err = store
        .change_group(set_role(1, 4, Role::Admin))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    let err = store
        .change_group(set_role(1, 1, Role::Member))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "the owner: {err:?}");
    assert!(
        store
            .change_group(set_role(1, 2, Role::Member))
            .await
            .unwrap()
            .is_empty()
    );
    let promoted = store
        .change_group(set_role(1, 2, Role::Admin))
        .await
        .unwrap();
    assert_eq!(promoted[0].message.seq, 3);
    assert_eq!(
        promoted[0].message.system,
        Some(SystemEvent {
            event: SystemKind::RoleChanged,
            user_id: Some(Id(2)),
            title: None,
            role: Some(Role::Admin),
            members: None,
        })
    );
    // An admin renames, but sets no roles.
    store.change_group(rename(2, "news 2")).await.unwrap();
    let err = store
        .change_group(set_role(2, 3, Role::Admin))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Forbidden(_)), "an admin: {err:?}");
    store.close().await;
}

#[tokio::test]
pub(super) async fn an_owner_who_leaves_hands_the_group_on() {
    let Some(db) = Database::from_env().await else {
        return;
    };
    let store = six_users(&db.url(), 2).await;
    store
        .create_group(new_group(7, 1, &[2, 3, 4]))
        .await
        .unwrap();
    // 5 is the newest member; 4 and 3 become admins, 4 first: the longest-standing admin is
    // 3 (same span start, lower id).
    store
        .change_group(change(7, 1, 100, GroupChange::Add(Id(5))))
        .await
        .unwrap();
    for (user, ids) in [(4, 110), (3, 120)] {
        store
            .change_group(change(
                7,
                1,
                ids,
                GroupChange::SetRole(Id(user), Role::Admin),
            ))
            .await
            .unwrap();
    }
    let left = store
        .change_group(change(7, 1, 130, GroupChange::Remove(Id(1))))
        .await
        .unwrap();
    assert_eq!(left.len(), 2);
    assert_eq!((left[0].message.id, left[0].message.seq), (Id(130), 5));
    assert_eq!(
        left[0].message.system,
        Some(SystemEvent::about(SystemKind::MemberLeft, Id(1)))
    );
    assert_eq!(ids(&left[0].recipients), [1, 2, 3, 4, 5]);
    let m = &left[1].message;
    assert_eq!((m.id, m.seq, m.from), (Id(131), 6, Id(1)));
    assert_eq!(
        m.system,
        Some(SystemEvent {
            event: SystemKind::RoleChanged,
            user_id: Some(Id(3)),
            title: None,
            role: Some(Role::Owner),
            members: None,
        })
    );
    assert_eq!(ids(&left[1].recipients), [3, 2, 4, 5]);
    assert_eq!(
        members(&store, 2, 7).await,
        [
            (3, Role::Owner),
            (2, Role::Member),
            (4, Role::Admin),
            (5, Role::Member)
        ]
    );

    // Without admins the longest-standing member takes over: 2 before the later-added 5.
    let left = store
        .change_group(change(7, 3, 140, GroupChange::Remove(Id(4))))
        .await
        .unwrap();
    assert_eq!(left.len(), 1, "removing an admin hands nothing on");
    let left = store
        .change_group(change(7, 3, 150, GroupChange::Remove(Id(3))))
        .await
        .unwrap();
    assert_eq!(left.len(), 2);
    assert_eq!(
        left[1].message.system.as_ref().unwrap().user_id,
        Some(Id(2))
    );
    assert_eq!(
        members(&store, 5, 7).await,
        [(2, Role::Owner), (5, Role::Member)]
    );

    // The last one out: nothing more.
    store
        .change_group(change(7, 2, 160, GroupChange::Remove(Id(5))))
        .await
        .unwrap();
    let last = store
        .change_group(change(7, 2, 170, GroupChange::Remove(Id(2))))
        .await
        .unwrap();
    assert_eq!(last.len(), 1);
    assert_eq!(ids(&last[0].recipients), [2]);
    assert_eq!(last[0].message.seq, 11);
    assert_eq!(store.group(Id(2), Id(7)).await.unwrap(), None);
    store.close().await;
}

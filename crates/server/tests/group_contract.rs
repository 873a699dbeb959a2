//! The `Groups` contract of the message store: one suite, written once against
//! `Arc<dyn MessageStore>` and run for every backend, as `store_contract.rs` does for the rest
//! (PostgreSQL when `CONFAB_TEST_POSTGRES` holds a URL, each test in a fresh database).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use confab_protocol::{Id, Role, SystemKind, conversation_id, group_conversation_id};
use confab_server::config::SqliteConfig;
use confab_server::store::groups::{
    ChangeGroup, GroupAppended, GroupChange, GroupSpan, NewGroup, NewGroupMessage,
};
use confab_server::store::postgres::PostgresStore;
use confab_server::store::sqlite::{SqliteMetrics, SqliteStore};
use confab_server::store::{MessageStore, NewDevice, NewMessage, StoreError};
use confab_testkit::postgres::Database;

enum Backend {
    Sqlite(tempfile::TempDir),
    Postgres(Database),
}

impl Backend {
    async fn open(&self) -> Arc<dyn MessageStore> {
        match self {
            Backend::Sqlite(dir) => {
                let dir: PathBuf = dir.path().to_owned();
                let store = tokio::task::spawn_blocking(move || {
                    SqliteStore::open(&dir, SqliteConfig::default(), SqliteMetrics::default())
                })
                .await
                .unwrap()
                .expect("sqlite store opens");
                Arc::new(store)
            }
            Backend::Postgres(db) => Arc::new(
                PostgresStore::connect(&db.url(), 8)
                    .await
                    .expect("postgres store connects"),
            ),
        }
    }
}

/// One `#[tokio::test]` per case and backend.
macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let backend = super::Backend::Sqlite(tempfile::tempdir().unwrap());
                    let store = backend.open().await;
                    super::$name(store.clone()).await;
                    store.close().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(db) = confab_testkit::postgres::Database::from_env().await else {
                        return;
                    };
                    let backend = super::Backend::Postgres(db);
                    let store = backend.open().await;
                    super::$name(store.clone()).await;
                    store.close().await;
                }
            )*
        }
    };
}

contract!(
    creating_checks_size_users_and_blocks,
    changes_need_the_right_and_are_recorded_in_seq,
    a_removed_member_learns_nothing_more,
    an_owner_who_leaves_hands_the_group_on,
    sends_are_gapless_and_idempotent,
    racing_changes_stay_consistent,
    devices_catch_up_by_spans_and_marks,
    groups_are_listed_and_paged_for_members,
    a_user_is_in_at_most_max_groups,
);

type Store = Arc<dyn MessageStore>;

async fn users(store: &Store, n: u64) -> Vec<Id> {
    let mut out = Vec::new();
    for i in 1..=n {
        store
            .create_user(Id(i), &format!("user{i}"), "hash", 1)
            .await
            .unwrap();
        out.push(Id(i));
    }
    out
}

async fn device(store: &Store, id: u64, user: Id, now: i64) -> Id {
    store
        .create_device(NewDevice {
            id: Id(id),
            user_id: user,
            name: None,
            token_hash: [u8::try_from(id % 250).unwrap(); 32],
            now,
        })
        .await
        .unwrap();
    Id(id)
}

const GROUP: Id = Id(1000);

/// A group of `members` (the first is the owner) with at most `max` members.
async fn group(store: &Store, members: &[Id], max: usize) -> GroupAppended {
    store
        .create_group(NewGroup {
            group: GROUP,
            message_id: Id(1001),
            creator: members[0],
            title: "team".into(),
            members: members[1..].to_vec(),
            now: 10,
            max_members: max,
            max_groups: 1000,
        })
        .await
        .unwrap()
        .1
}

/// Ids for changes: each call takes two fresh ones.
static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(5000);

fn two_ids() -> [Id; 2] {
    let n = NEXT_ID.fetch_add(2, std::sync::atomic::Ordering::Relaxed);
    [Id(n), Id(n + 1)]
}

async fn change(
    store: &Store,
    actor: Id,
    change: GroupChange,
) -> Result<Vec<GroupAppended>, StoreError> {
    store
        .change_group(ChangeGroup {
            group: GROUP,
            actor,
            change,
            message_ids: two_ids(),
            now: 20,
            max_members: 1024,
            max_groups: 1000,
        })
        .await
}

async fn say(store: &Store, from: Id, client_id: &str) -> Result<GroupAppended, StoreError> {
    let id = two_ids()[0];
    store
        .append_group(NewGroupMessage {
            id,
            group: GROUP,
            from,
            client_id: client_id.into(),
            body: format!("{client_id} from {from}"),
            ts: 30,
        })
        .await
}

fn set(ids: &[Id]) -> HashSet<Id> {
    ids.iter().copied().collect()
}

fn kind(a: &GroupAppended) -> SystemKind {
    a.message.system.as_ref().expect("a system message").event
}

async fn creating_checks_size_users_and_blocks(store: Store) {
    let u = users(&store, 5).await;
    let new = |members: Vec<Id>, max| NewGroup {
        group: GROUP,
        message_id: Id(1001),
        creator: u[0],
        title: "t".into(),
        members,
        now: 10,
        max_members: max,
        max_groups: 1000,
    };
    let too_many = store.create_group(new(vec![u[1], u[2], u[3]], 3)).await;
    assert!(
        matches!(too_many, Err(StoreError::Invalid(_))),
        "{too_many:?}"
    );
    let unknown = store.create_group(new(vec![u[1], Id(99)], 10)).await;
    assert!(
        matches!(unknown, Err(StoreError::NotFound(_))),
        "{unknown:?}"
    );
    store.set_block(u[4], u[0], true, 1).await.unwrap();
    let blocked = store.create_group(new(vec![u[1], u[4]], 10)).await;
    assert!(
        matches!(blocked, Err(StoreError::Forbidden(_))),
        "{blocked:?}"
    );
    // Nothing of the refused attempts was kept.
    assert_eq!(store.group(u[0], GROUP).await.unwrap(), None);

    // Repeats and the creator are ignored; the limit counts distinct members, creator included.
    let (record, created) = store
        .create_group(new(vec![u[1], u[2], u[1], u[0]], 3))
        .await
        .unwrap();
    assert_eq!(record.title, "t");
    assert_eq!(record.created_at, 10);
    let roles: Vec<(Id, Role)> = record.members.iter().map(|m| (m.user_id, m.role)).collect();
    assert_eq!(roles[0], (u[0], Role::Owner));
    assert_eq!(
        set(&roles.iter().map(|r| r.0).collect::<Vec<_>>()),
        set(&u[..3])
    );
    assert!(roles[1..].iter().all(|r| r.1 == Role::Member));
    assert_eq!(record.members[0].username, "user1");
    let m = &created.message;
    assert_eq!((m.seq, m.from, m.to), (1, u[0], None));
    assert_eq!(m.conversation, group_conversation_id(GROUP));
    let system = m.system.as_ref().unwrap();
    assert_eq!(system.event, SystemKind::Created);
    assert_eq!(system.members.as_deref(), Some(&[u[0], u[1], u[2]][..]));
    assert_eq!(system.title.as_deref(), Some("t"));
    assert_eq!(set(&created.recipients), set(&u[..3]));
    // Every member sees it; others learn nothing.
    assert!(store.group(u[2], GROUP).await.unwrap().is_some());
    assert_eq!(store.group(u[3], GROUP).await.unwrap(), None);
    assert_eq!(store.group_receipts(u[3], GROUP).await.unwrap(), None);
}

async fn changes_need_the_right_and_are_recorded_in_seq(store: Store) {
    let u = users(&store, 6).await;
    group(&store, &u[..3], 1024).await; // owner u0; members u1, u2
    let forbidden = |r: Result<Vec<GroupAppended>, StoreError>| {
        assert!(matches!(r, Err(StoreError::Forbidden(_))), "{r:?}")
    };
    forbidden(change(&store, u[1], GroupChange::Add(u[3])).await);
    forbidden(change(&store, u[1], GroupChange::Rename("x".into())).await);
    forbidden(change(&store, u[1], GroupChange::SetRole(u[2], Role::Admin)).await);
    forbidden(change(&store, u[1], GroupChange::Remove(u[2])).await);
    let outsider = change(&store, u[5], GroupChange::Add(u[4])).await;
    assert!(
        matches!(outsider, Err(StoreError::NotFound(_))),
        "{outsider:?}"
    );

    let added = change(&store, u[0], GroupChange::Add(u[3])).await.unwrap();
    assert_eq!(added.len(), 1);
    assert_eq!(
        (added[0].message.seq, kind(&added[0])),
        (2, SystemKind::MemberAdded)
    );
    assert_eq!(
        added[0].message.system.as_ref().unwrap().user_id,
        Some(u[3])
    );
    assert_eq!(set(&added[0].recipients), set(&u[..4]));
    assert!(
        change(&store, u[0], GroupChange::Add(u[3]))
            .await
            .unwrap()
            .is_empty(),
        "already in"
    );
    let unknown = change(&store, u[0], GroupChange::Add(Id(99))).await;
    assert!(
        matches!(unknown, Err(StoreError::NotFound(_))),
        "{unknown:?}"
    );
    store.set_block(u[4], u[0], true, 1).await.unwrap();
    forbidden(change(&store, u[0], GroupChange::Add(u[4])).await);

    let promoted = change(&store, u[0], GroupChange::SetRole(u[1], Role::Admin))
        .await
        .unwrap();
    assert_eq!(
        (promoted[0].message.seq, kind(&promoted[0])),
        (3, SystemKind::RoleChanged)
    );
    assert_eq!(
        promoted[0].message.system.as_ref().unwrap().role,
        Some(Role::Admin)
    );
    assert!(
        change(&store, u[0], GroupChange::SetRole(u[1], Role::Admin))
            .await
            .unwrap()
            .is_empty()
    );
    let owner_role = change(&store, u[0], GroupChange::SetRole(u[1], Role::Owner)).await;
    assert!(
        matches!(owner_role, Err(StoreError::Invalid(_))),
        "{owner_role:?}"
    );
    let self_demote = change(&store, u[0], GroupChange::SetRole(u[0], Role::Member)).await;
    assert!(
        matches!(self_demote, Err(StoreError::Invalid(_))),
        "{self_demote:?}"
    );
    // An admin adds, renames and removes members, but not the owner, and sets no roles.
    forbidden(change(&store, u[1], GroupChange::SetRole(u[2], Role::Admin)).await);
    forbidden(change(&store, u[1], GroupChange::Remove(u[0])).await);
    let renamed = change(&store, u[1], GroupChange::Rename("new".into()))
        .await
        .unwrap();
    assert_eq!(
        (renamed[0].message.seq, kind(&renamed[0])),
        (4, SystemKind::TitleChanged)
    );
    assert!(
        change(&store, u[1], GroupChange::Rename("new".into()))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.group(u[2], GROUP).await.unwrap().unwrap().title,
        "new"
    );
    let removed = change(&store, u[1], GroupChange::Remove(u[2]))
        .await
        .unwrap();
    assert_eq!(
        (removed[0].message.seq, kind(&removed[0])),
        (5, SystemKind::MemberRemoved)
    );
    assert_eq!(
        set(&removed[0].recipients),
        set(&u[..4]),
        "the removed member hears it"
    );
    let again = change(&store, u[1], GroupChange::Remove(u[2])).await;
    assert!(matches!(again, Err(StoreError::NotFound(_))), "{again:?}");
    let left = change(&store, u[3], GroupChange::Remove(u[3]))
        .await
        .unwrap();
    assert_eq!(
        (left[0].message.seq, kind(&left[0])),
        (6, SystemKind::MemberLeft)
    );
    // The history holds every change, in seq order, from whoever made it.
    let page = store
        .messages(u[0], &group_conversation_id(GROUP), None, 50)
        .await
        .unwrap()
        .unwrap();
    let seqs: Vec<u64> = page.messages.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5, 6]);
    assert_eq!(page.messages[4].from, u[1]);
}

async fn a_removed_member_learns_nothing_more(store: Store) {
    let u = users(&store, 3).await;
    group(&store, &u, 1024).await;
    say(&store, u[2], "before").await.unwrap();
    change(&store, u[0], GroupChange::Remove(u[2]))
        .await
        .unwrap();
    let conversation = group_conversation_id(GROUP);
    assert_eq!(store.group(u[2], GROUP).await.unwrap(), None);
    assert_eq!(
        store.messages(u[2], &conversation, None, 50).await.unwrap(),
        None
    );
    let send = say(&store, u[2], "after").await;
    assert!(matches!(send, Err(StoreError::NotFound(_))), "{send:?}");
    let read = store.mark_group_read(u[2], GROUP, 1).await;
    assert!(matches!(read, Err(StoreError::NotFound(_))), "{read:?}");
    let later = say(&store, u[0], "later").await.unwrap();
    assert!(!later.recipients.contains(&u[2]));
    assert!(
        store
            .conversations(u[2], None, 50)
            .await
            .unwrap()
            .conversations
            .is_empty(),
        "a former member does not list the group"
    );
    // Re-added, the member sees from the new event on.
    let readded = change(&store, u[0], GroupChange::Add(u[2])).await.unwrap();
    let page = store
        .messages(u[2], &conversation, None, 50)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        page.messages.first().map(|m| m.seq),
        Some(readded[0].message.seq)
    );
}

async fn an_owner_who_leaves_hands_the_group_on(store: Store) {
    let u = users(&store, 4).await;
    group(&store, &u, 1024).await;
    change(&store, u[0], GroupChange::SetRole(u[3], Role::Admin))
        .await
        .unwrap();
    let left = change(&store, u[0], GroupChange::Remove(u[0]))
        .await
        .unwrap();
    assert_eq!(left.len(), 2);
    assert_eq!(kind(&left[0]), SystemKind::MemberLeft);
    assert_eq!(kind(&left[1]), SystemKind::RoleChanged);
    assert_eq!(left[1].message.seq, left[0].message.seq + 1);
    let handed = left[1].message.system.as_ref().unwrap();
    assert_eq!(
        (handed.user_id, handed.role),
        (Some(u[3]), Some(Role::Owner)),
        "the admin"
    );
    assert!(!left[1].recipients.contains(&u[0]));
    // With no admin left, the longest-standing member.
    let left = change(&store, u[3], GroupChange::Remove(u[3]))
        .await
        .unwrap();
    let heir = left[1].message.system.as_ref().unwrap().user_id.unwrap();
    assert!([u[1], u[2]].contains(&heir));
    let record = store.group(heir, GROUP).await.unwrap().unwrap();
    let owners: Vec<Id> = record
        .members
        .iter()
        .filter(|m| m.role == Role::Owner)
        .map(|m| m.user_id)
        .collect();
    assert_eq!(owners, [heir]);
}

async fn sends_are_gapless_and_idempotent(store: Store) {
    let u = users(&store, 4).await;
    group(&store, &u[..3], 1024).await;
    let outsider = say(&store, u[3], "x").await;
    assert!(
        matches!(outsider, Err(StoreError::NotFound(_))),
        "{outsider:?}"
    );
    let mut tasks = Vec::new();
    for (k, member) in u[..3].iter().enumerate() {
        let (store, member) = (store.clone(), *member);
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..20 {
                let sent = say(&store, member, &format!("{k}-{i}")).await.unwrap();
                seqs.push(sent.message.seq);
            }
            seqs
        }));
    }
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.extend(t.await.unwrap());
    }
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (2..62).collect::<Vec<u64>>(),
        "after `created` at 1, no gaps"
    );
    let first = say(&store, u[1], "once").await.unwrap();
    assert_eq!(first.message.to, None);
    assert_eq!(set(&first.recipients), set(&u[..3]));
    let again = say(&store, u[1], "once").await.unwrap();
    assert!(again.duplicate && again.recipients.is_empty());
    assert_eq!(
        (again.message.id, again.message.seq),
        (first.message.id, first.message.seq)
    );
    // A retry after leaving still gets its first answer.
    change(&store, u[1], GroupChange::Remove(u[1]))
        .await
        .unwrap();
    assert_eq!(
        say(&store, u[1], "once").await.unwrap().message.id,
        first.message.id
    );
}

async fn racing_changes_stay_consistent(store: Store) {
    let u = users(&store, 4).await;
    group(&store, &u, 1024).await;
    for admin in [u[1], u[2]] {
        change(&store, u[0], GroupChange::SetRole(admin, Role::Admin))
            .await
            .unwrap();
    }
    // Two admins remove each other at once: exactly one goes.
    let (a, b) = tokio::join!(
        change(&store, u[1], GroupChange::Remove(u[2])),
        change(&store, u[2], GroupChange::Remove(u[1]))
    );
    assert!(a.is_ok() != b.is_ok(), "{a:?} / {b:?}");
    let members = store
        .group(u[0], GROUP)
        .await
        .unwrap()
        .unwrap()
        .members
        .len();
    assert_eq!(members, 3);
    // An add and a remove of the same user at once: either order, a consistent end.
    let (add, remove) = tokio::join!(
        change(&store, u[0], GroupChange::Add(u[3])),
        change(&store, u[0], GroupChange::Remove(u[3]))
    );
    let in_group = store
        .group(u[0], GROUP)
        .await
        .unwrap()
        .unwrap()
        .members
        .iter()
        .any(|m| m.user_id == u[3]);
    let receipts = store.group_receipts(u[0], GROUP).await.unwrap().unwrap();
    assert_eq!(
        in_group,
        receipts.iter().any(|m| m.user_id == u[3]),
        "{add:?} {remove:?}"
    );
    // The seqs stayed gapless through all of it.
    let page = store
        .messages(u[0], &group_conversation_id(GROUP), None, 50)
        .await
        .unwrap()
        .unwrap();
    let seqs: Vec<u64> = page.messages.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
}

async fn devices_catch_up_by_spans_and_marks(store: Store) {
    let u = users(&store, 3).await;
    let old = device(&store, 1, u[2], 1).await;
    group(&store, &u[..2], 1024).await; // u2 not yet in
    say(&store, u[0], "m2").await.unwrap();
    assert!(store.group_spans(old, u[2]).await.unwrap().is_empty());
    let added = change(&store, u[0], GroupChange::Add(u[2])).await.unwrap();
    let joined = added[0].message.seq; // 3
    say(&store, u[1], "m4").await.unwrap();
    let spans = store.group_spans(old, u[2]).await.unwrap();
    assert_eq!(
        spans,
        [GroupSpan {
            group: GROUP,
            after: joined - 1,
            upto: None
        }]
    );
    let seen = store
        .group_messages(GROUP, joined - 1, None, 50)
        .await
        .unwrap();
    assert_eq!(seen.iter().map(|m| m.seq).collect::<Vec<_>>(), [3, 4]);
    store.set_group_mark(old, u[2], GROUP, 4).await.unwrap();
    let spans = store.group_spans(old, u[2]).await.unwrap();
    let still_in = GroupSpan {
        group: GROUP,
        after: 4,
        upto: None,
    };
    assert_eq!(spans, [still_in], "all seen, and still a member");
    let marks = store.group_receipts(u[0], GROUP).await.unwrap().unwrap();
    let mine = marks.iter().find(|m| m.user_id == u[2]).unwrap();
    assert_eq!((mine.delivered_seq, mine.read_seq), (4, 0));
    assert_eq!(
        store.mark_group_read(u[2], GROUP, 99).await.unwrap(),
        Some(4),
        "clamped"
    );
    assert_eq!(
        store.mark_group_read(u[2], GROUP, 2).await.unwrap(),
        None,
        "never back"
    );

    // Removed while offline: the device still catches up to the removal, not past it.
    say(&store, u[0], "m5").await.unwrap();
    let removed = change(&store, u[0], GroupChange::Remove(u[2]))
        .await
        .unwrap()[0]
        .message
        .seq;
    say(&store, u[0], "m7").await.unwrap();
    let spans = store.group_spans(old, u[2]).await.unwrap();
    assert_eq!(
        spans,
        [GroupSpan {
            group: GROUP,
            after: 4,
            upto: Some(removed)
        }]
    );
    let seen = store
        .group_messages(GROUP, 4, Some(removed), 50)
        .await
        .unwrap();
    assert_eq!(seen.iter().map(|m| m.seq).collect::<Vec<_>>(), [5, removed]);
    store
        .set_group_mark(old, u[2], GROUP, removed)
        .await
        .unwrap();
    assert!(
        store.group_spans(old, u[2]).await.unwrap().is_empty(),
        "an ended span, read"
    );
    // A device made after the user left learns nothing of the group.
    let later = device(&store, 2, u[2], i64::MAX / 2).await;
    assert!(store.group_spans(later, u[2]).await.unwrap().is_empty());
    // A member's new device starts at the event that added its user.
    let fresh = device(&store, 3, u[1], i64::MAX / 2).await;
    let spans = store.group_spans(fresh, u[1]).await.unwrap();
    assert_eq!(
        spans,
        [GroupSpan {
            group: GROUP,
            after: 0,
            upto: None
        }]
    );
}

async fn groups_are_listed_and_paged_for_members(store: Store) {
    let u = users(&store, 3).await;
    let dm = store
        .append(NewMessage {
            id: Id(10),
            from: u[0],
            to: u[1],
            client_id: "dm".into(),
            body: "hi".into(),
            ts: 5,
        })
        .await
        .unwrap();
    group(&store, &u[..2], 1024).await; // created message id 1001 > 10: newest
    let list = store
        .conversations(u[0], None, 50)
        .await
        .unwrap()
        .conversations;
    assert_eq!(list.len(), 2);
    let g = &list[0];
    assert_eq!(g.conversation, group_conversation_id(GROUP));
    assert_eq!(
        (g.peer, g.peer_read_seq, g.peer_delivered_seq),
        (None, None, None)
    );
    let summary = g.group.as_ref().unwrap();
    assert_eq!((summary.title.as_str(), summary.members_count), ("team", 2));
    assert_eq!((g.last_seq, g.read_seq), (1, 0));
    assert_eq!(list[1].conversation, conversation_id(u[0], u[1]));
    assert_eq!(list[1].last_message.as_ref(), Some(&*dm.message));
    // Pages by the last message's id, groups and 1:1 alike.
    let first = store.conversations(u[0], None, 1).await.unwrap();
    assert!(first.more);
    assert_eq!(first.conversations[0].conversation, g.conversation);
    let second = store.conversations(u[0], Some(Id(1001)), 1).await.unwrap();
    assert_eq!(second.conversations[0].conversation, list[1].conversation);
    assert!(!second.more);
    // A newer 1:1 message moves that conversation first.
    store
        .append(NewMessage {
            id: Id(2000),
            from: u[1],
            to: u[0],
            client_id: "dm2".into(),
            body: "again".into(),
            ts: 6,
        })
        .await
        .unwrap();
    let list = store
        .conversations(u[0], None, 50)
        .await
        .unwrap()
        .conversations;
    assert_eq!(list[0].conversation, conversation_id(u[0], u[1]));
    // Not a member: not listed, no history; a page of it for a member.
    assert!(
        store
            .conversations(u[2], None, 50)
            .await
            .unwrap()
            .conversations
            .is_empty()
    );
    let conversation = group_conversation_id(GROUP);
    assert_eq!(
        store.messages(u[2], &conversation, None, 50).await.unwrap(),
        None
    );
    for i in 0..5 {
        say(&store, u[1], &format!("p{i}")).await.unwrap();
    }
    let page = store
        .messages(u[0], &conversation, None, 3)
        .await
        .unwrap()
        .unwrap();
    assert!(page.more);
    assert_eq!(
        page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        [4, 5, 6]
    );
    let older = store
        .messages(u[0], &conversation, Some(4), 10)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        older.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert!(!older.more);
    let read = store.mark_read(u[0], &conversation, 3).await;
    assert!(
        matches!(read, Err(StoreError::NotFound(_))),
        "group reads go through the group"
    );
}

async fn a_user_is_in_at_most_max_groups(store: Store) {
    let u = users(&store, 3).await;
    let new = |group: u64, creator: Id, members: Vec<Id>| NewGroup {
        group: Id(group),
        message_id: Id(group + 1),
        creator,
        title: "t".into(),
        members,
        now: 10,
        max_members: 10,
        max_groups: 2,
    };
    store
        .create_group(new(100, u[0], vec![u[1]]))
        .await
        .unwrap();
    store
        .create_group(new(200, u[0], vec![u[2]]))
        .await
        .unwrap();
    // u0 is in two groups: a third, made by anyone, is refused and stores nothing.
    for (creator, members) in [(u[0], vec![u[1]]), (u[1], vec![u[0]])] {
        let third = store.create_group(new(300, creator, members)).await;
        assert!(matches!(third, Err(StoreError::Invalid(_))), "{third:?}");
    }
    store
        .create_group(new(300, u[1], vec![u[2]]))
        .await
        .unwrap();
    let add = |actor: Id, change: GroupChange| ChangeGroup {
        group: Id(300),
        actor,
        change,
        message_ids: two_ids(),
        now: 20,
        max_members: 10,
        max_groups: 2,
    };
    let added = store.change_group(add(u[1], GroupChange::Add(u[0]))).await;
    assert!(matches!(added, Err(StoreError::Invalid(_))), "{added:?}");
    // Leaving one makes room.
    let leave = ChangeGroup {
        group: Id(100),
        ..add(u[0], GroupChange::Remove(u[0]))
    };
    store.change_group(leave).await.unwrap();
    assert_eq!(
        store
            .change_group(add(u[1], GroupChange::Add(u[0])))
            .await
            .unwrap()
            .len(),
        1
    );
}

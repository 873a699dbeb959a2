//! PostgreSQL-only behaviour the contract suite (`tests/store_contract.rs`) cannot see:
//! connection settings, concurrent migrations, recovery from broken connections and outages.
//! They run when `CONFAB_TEST_POSTGRES` holds a URL and are skipped otherwise.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use confab_protocol::{
    ConversationSummary, GroupSummary, Id, MemberMarks, MessagePage, Role, SystemEvent, SystemKind,
};
use confab_testkit::engines;
use confab_testkit::postgres::Database;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_postgres::NoTls;

use super::schema::MIGRATIONS;
use super::{CHECK_TIMEOUT, CHECKOUT_TIMEOUT, PostgresStore};
use crate::store::groups::{
    ChangeGroup, GroupChange, GroupSpan, Groups, NewGroup, NewGroupMessage, system_client_id,
};
use crate::store::{
    Accounts, Contacts, Conversations, MessageStore, NewDevice, NewMessage, StoreError, Streams,
    conversation_id,
};

/// A store on `url` (a pool of `pool`) holding users 1 and 2, between whom [`msg`] sends.
async fn two_users(url: &str, pool: usize) -> PostgresStore {
    let store = PostgresStore::connect(url, pool).await.unwrap();
    for id in [1, 2] {
        store
            .create_user(Id(id), &format!("user{id}"), "h", 1)
            .await
            .unwrap();
    }
    store
}

fn msg(id: u64, client_id: &str) -> NewMessage {
    NewMessage {
        id: Id(id),
        from: Id(1),
        to: Id(2),
        client_id: client_id.into(),
        body: "hi".into(),
        ts: 1,
    }
}

#[tokio::test]
async fn every_connection_commits_synchronously() {
    let Some(db) = Database::from_env().await else {
        return;
    };
    // Even when the URL asks for the opposite.
    let url = db.url_with_param("options", "-c synchronous_commit=off");
    let store = PostgresStore::connect(&url, 3).await.unwrap();
    let clients = futures::future::try_join_all((0..3).map(|_| store.pool.get()))
        .await
        .unwrap();
    for c in &clients {
        let row = c.query_one("SHOW synchronous_commit", &[]).await.unwrap();
        assert_eq!(row.get::<_, String>(0), "on");
    }
    drop(clients);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_starting_at_once_migrate_once() {
    let Some(db) = Database::from_env().await else {
        return;
    };
    let url = db.url();
    let stores = futures::future::try_join_all((0..4).map(|_| PostgresStore::connect(&url, 1)))
        .await
        .expect("every node starts");
    let c = stores[0].pool.get().await.unwrap();
    let row = c
        .query_one("SELECT count(*), max(version) FROM schema_migrations", &[])
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, i64>(0),
        i64::try_from(MIGRATIONS.len()).unwrap()
    );
    assert_eq!(
        row.get::<_, i32>(1),
        i32::try_from(MIGRATIONS.len()).unwrap()
    );
    // A schema from a newer confab is refused, not used.
    c.execute("INSERT INTO schema_migrations (version) VALUES (999)", &[])
        .await
        .unwrap();
    drop(c);
    let newer = PostgresStore::connect(&url, 1).await;
    assert!(matches!(newer, Err(StoreError::Internal(_))));
    for s in &stores {
        s.close().await;
    }
}

#[tokio::test]
async fn a_version_1_database_is_upgraded_in_place() {
    let Some(db) = Database::from_env().await else {
        return;
    };
    let url = db.url();
    let store = two_users(&url, 2).await;
    let first = store.append(msg(10, "a")).await.unwrap();
    // Back to version 1 with its data: what a database of the previous release holds.
    let c = store.pool.get().await.unwrap();
    c.batch_execute(
        "DROP FUNCTION confab_append; DROP FUNCTION confab_set_cursor;
         DROP INDEX conversations_lo; DROP INDEX conversations_hi;
         CREATE INDEX conversations_lo ON conversations(user_lo, last_ts);
         CREATE INDEX conversations_hi ON conversations(user_hi, last_ts);
         ALTER TABLE conversations RESET (fillfactor);
         ALTER TABLE users RESET (fillfactor);
         ALTER TABLE devices RESET (fillfactor);
         ALTER TABLE devices DROP COLUMN last_active;
         DROP TABLE readiness;
         DROP FUNCTION confab_append_group;
         ALTER TABLE messages DROP COLUMN system;
         DROP TABLE groups; DROP TABLE group_members; DROP TABLE group_marks;
         DELETE FROM schema_migrations WHERE version >= 2",
    )
    .await
    .unwrap();
    drop(c);
    store.close().await;

    let store = PostgresStore::connect(&url, 2).await.unwrap();
    let second = store.append(msg(11, "b")).await.unwrap();
    assert_eq!(second.message.seq, first.message.seq + 1);
    assert_eq!(second.sender_pos, first.sender_pos + 1);
    assert_eq!(second.recipient_pos, first.recipient_pos + 1);
    let again = store.append(msg(12, "a")).await.unwrap();
    assert!(again.duplicate);
    assert_eq!(again.message.id, first.message.id);
    let device = Id(20);
    store
        .create_device(NewDevice {
            id: device,
            user_id: Id(2),
            name: None,
            token_hash: [7; 32],
            now: 1,
        })
        .await
        .unwrap();
    let advanced = store.set_cursor(device, 99).await.unwrap();
    assert_eq!(advanced.len(), 1);
    assert_eq!(advanced[0].seq, second.message.seq);
    assert_eq!(advanced[0].peer, Id(1));
    store.close().await;
}

#[tokio::test]
async fn a_device_from_before_expiry_counts_as_used_at_the_upgrade() {
    let Some(db) = Database::from_env().await else {
        return;
    };
    let url = db.url();
    let store = two_users(&url, 1).await;
    // Back to version 4, with a device created then (it had no `last_active`).
    let c = store.pool.get().await.unwrap();
    c.batch_execute(
        "ALTER TABLE devices DROP COLUMN last_active;
         INSERT INTO devices (id, user_id, token_hash, created_at)
             VALUES (20, 1, decode(repeat('07', 32), 'hex'), 1);
         DROP FUNCTION confab_append_group;
         ALTER TABLE messages DROP COLUMN system;
         DROP TABLE groups; DROP TABLE group_members; DROP TABLE group_marks;
         DELETE FROM schema_migrations WHERE version >= 5",
    )
    .await
    .unwrap();
    drop(c);
    store.close().await;

    let before = crate::time::now_ms();
    let store = PostgresStore::connect(&url, 1).await.unwrap();
    let after = crate::time::now_ms();
    let session = store.device_by_token([7; 32]).await.unwrap().expect("live");
    assert!(
        (before - 1..=after + 1).contains(&session.last_active),
        "{before} <= {} <= {after}",
        session.last_active
    );
    // New devices name the column; the migration's default does not linger.
    store
        .create_device(NewDevice {
            id: Id(21),
            user_id: Id(2),
            name: None,
            token_hash: [8; 32],
            now: 5,
        })
        .await
        .unwrap();
    assert_eq!(
        store
            .device_by_token([8; 32])
            .await
            .unwrap()
            .unwrap()
            .last_active,
        5
    );
    store.close().await;
}

#[tokio::test]
async fn a_message_updates_its_conversation_in_place() {
    let Some(db) = Database::from_env().await else {
        return;
    };
    let url = db.url();
    let store = two_users(&url, 1).await;
    for i in 0..20u64 {
        // A later `ts` each time, so that an index on it would have to change.
        let m = NewMessage {
            ts: i64::try_from(i).unwrap() + 1,
            ..msg(100 + i, &format!("c{i}"))
        };
        store.append(m).await.unwrap();
    }
    // A backend reports its table statistics when it ends.
    store.close().await;
    let (c, conn) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    tokio::spawn(conn);
    let mut counts = (0, 0);
    for _ in 0..50 {
        let row = c
            .query_one(
                "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables
                 WHERE relname = 'conversations'",
                &[],
            )
            .await
            .unwrap();
        counts = (row.get::<_, i64>(0), row.get::<_, i64>(1));
        if counts.0 >= 19 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The first message made the row; each later one updated it, all without index entries.
    assert_eq!(counts, (19, 19), "(updates, heap-only updates)");
    drop(c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_whose_session_ends_mid_call_is_retried_and_stored_once() {
    let Some(db) = Database::from_env().await else {
        return;
    };
    let url = db.url();
    let store = Arc::new(two_users(&url, 2).await);
    // Hold user 1's row, so that the append waits inside `confab_append`.
    let (mut blocker, conn) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    tokio::spawn(conn);
    let tx = blocker.transaction().await.unwrap();
    tx.execute("SELECT 1 FROM users WHERE id = 1 FOR UPDATE", &[])
        .await
        .unwrap();
    let appending = tokio::spawn({
        let store = store.clone();
        async move { store.append(msg(10, "a")).await }
    });
    // End the waiting call's session, as a failover would, then let the row go.
    let admin = db.admin().await;
    let mut ended = 0;
    for _ in 0..100 {
        ended = admin
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE datname = $1 AND wait_event_type = 'Lock'
                   AND query LIKE '%confab_append%'",
                &[&db.name()],
            )
            .await
            .unwrap();
        if ended > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ended, 1, "the append never waited on the lock");
    tx.rollback().await.unwrap();
    let appended = appending
        .await
        .unwrap()
        .expect("retried on a fresh connection");
    assert!(
        !appended.duplicate,
        "the ended call rolled back: this is the first store"
    );
    assert_eq!(appended.message.seq, 1);
    let stored: i64 = blocker
        .query_one("SELECT count(*) FROM messages", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 1);
    drop(blocker);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovers_when_the_server_ends_its_sessions() {
    let Some(db) = Database::from_env().await else {
        return;
    };
    let store = two_users(&db.url(), 4).await;
    // Fill the pool, then end every session as a server restart would.
    let held = futures::future::try_join_all((0..4).map(|_| store.pool.get()))
        .await
        .unwrap();
    drop(held);
    let ended = db
        .admin()
        .await
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = $1 AND pid <> pg_backend_pid()",
            &[&db.name()],
        )
        .await
        .unwrap();
    assert!(ended >= 4, "terminated {ended}");
    // Every call succeeds: dead connections are replaced, not handed out.
    for i in 0..10u64 {
        let r = store.append(msg(100 + i, &format!("c{i}"))).await.unwrap();
        assert_eq!(r.message.seq, i + 1);
    }
    store.check().await.unwrap();
    store.close().await;
}

/// A TCP forwarder to PostgreSQL that can be switched off (connections cut, port closed)
/// and on again (same port).
struct Proxy {
    port: u16,
    target: String,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(target: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let proxy = Proxy {
            port,
            target,
            tasks: Arc::default(),
        };
        proxy.serve(listener);
        proxy
    }

    fn serve(&self, listener: TcpListener) {
        let (target, tasks) = (self.target.clone(), self.tasks.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = target.clone();
                let pipe = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                tasks.lock().unwrap().push(pipe);
            }
        });
        self.tasks.lock().unwrap().push(accept);
    }

    fn down(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    async fn up(&self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
        self.serve(listener);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_fast_while_down_and_recovers_by_itself() {
    let Some(db) = Database::from_env().await else {
        return;
    };
    let Some(target) = db.addr() else {
        engines::skipped(&format!("{} is not a TCP address", engines::POSTGRES));
        return;
    };
    let proxy = Proxy::start(target.to_string()).await;
    let store = two_users(
        &db.url_via(SocketAddr::from(([127, 0, 0, 1], proxy.port))),
        4,
    )
    .await;
    store.append(msg(100, "a")).await.unwrap();

    proxy.down();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let err = store.check().await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(started.elapsed() < CHECK_TIMEOUT + Duration::from_millis(500));
    let started = Instant::now();
    let err = store.append(msg(101, "b")).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    let err = store.stream_head(Id(1)).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(
        started.elapsed() < 2 * CHECKOUT_TIMEOUT,
        "{:?}",
        started.elapsed()
    );

    proxy.up().await;
    store.check().await.expect("ready again");
    let r = store.append(msg(101, "b")).await.unwrap();
    assert!(!r.duplicate);
    assert_eq!((r.message.seq, r.sender_pos, r.recipient_pos), (2, 2, 2));
    store.close().await;
    proxy.down();
}

/// `/readyz` must prove a commit, not a round trip: the check leaves its row for another
/// session to read.
#[tokio::test]
async fn readiness_check_commits_a_write() {
    let Some(db) = Database::from_env().await else {
        return;
    };
    let store = PostgresStore::connect(&db.url(), 1).await.unwrap();
    let before = crate::time::now_ms();
    store.check().await.unwrap();
    let (other, connection) = tokio_postgres::connect(&db.url(), NoTls).await.unwrap();
    tokio::spawn(connection);
    let row = other
        .query_one("SELECT checked_at FROM readiness WHERE id = 1", &[])
        .await
        .unwrap();
    let checked_at: i64 = row.get(0);
    assert!(checked_at >= before, "{checked_at} < {before}");
    store.close().await;
}

// Groups: the PostgreSQL side of `store::groups`, with the races only several connections
// can make.

/// Users 1 to 6 (named `user1` …) on a fresh store with a pool of `pool`.
async fn six_users(url: &str, pool: usize) -> PostgresStore {
    let store = PostgresStore::connect(url, pool).await.unwrap();
    for id in 1..=6 {
        store
            .create_user(Id(id), &format!("user{id}"), "h", 1)
            .await
            .unwrap();
    }
    store
}

fn new_group(group: u64, creator: u64, members: &[u64]) -> NewGroup {
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
fn change(group: u64, actor: u64, ids: u64, change: GroupChange) -> ChangeGroup {
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

fn group_msg(id: u64, group: u64, from: u64, client_id: &str) -> NewGroupMessage {
    NewGroupMessage {
        id: Id(id),
        group: Id(group),
        from: Id(from),
        client_id: client_id.into(),
        body: format!("m{id}"),
        ts: 30,
    }
}

fn ids(list: &[Id]) -> Vec<u64> {
    list.iter().map(|i| i.0).collect()
}

async fn members(store: &PostgresStore, viewer: u64, group: u64) -> Vec<(u64, Role)> {
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
async fn a_group_is_created_with_its_created_message() {
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
async fn a_group_is_refused_past_its_size_or_with_an_unknown_or_blocking_member() {
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
async fn adding_a_member() {
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
async fn removing_and_leaving() {
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
async fn renaming_and_setting_roles() {
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
async fn an_owner_who_leaves_hands_the_group_on() {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_to_a_group_take_gapless_seqs() {
    let Some(db) = Database::from_env().await else {
        return;
    };
    let store = Arc::new(six_users(&db.url(), 8).await);
    store
        .create_group(new_group(7, 1, &[2, 3, 4]))
        .await
        .unwrap();
    let tasks = (0..8u64).map(|t| {
        let store = store.clone();
        tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..10 {
                let id = 10_000 + t * 100 + i;
                let m = group_msg(id, 7, 1 + t % 4, &format!("t{t}-{i}"));
                let r = store.append_group(m).await.unwrap();
                assert!(!r.duplicate);
                assert_eq!(ids(&r.recipients), [1, 2, 3, 4]);
                seqs.push(r.message.seq);
            }
            seqs
        })
    });
    // Changes between the sends take their seqs from the same counter.
    let changes = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 0..5u64 {
                let title = format!("t{i}");
                let r = store
                    .change_group(change(7, 1, 500 + i * 2, GroupChange::Rename(title)))
                    .await
                    .unwrap();
                assert_eq!(r.len(), 1);
            }
        })
    };
    let mut seqs: Vec<u64> = futures::future::try_join_all(tasks)
        .await
        .unwrap()
        .into_iter()
        .flatten()
        .collect();
    changes.await.unwrap();
    seqs.sort_unstable();
    assert_eq!(seqs.len(), 80);
    let stored = store.group_messages(Id(7), 0, None, 1000).await.unwrap();
    let stored: Vec<u64> = stored.iter().map(|m| m.seq).collect();
    assert_eq!(stored, (1..=86).collect::<Vec<_>>(), "gapless, 1 + 80 + 5");
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_admins_removing_each_other_leave_one_removed() {
    let Some(db) = Database::from_env().await else {
        return;
    };
    let store = Arc::new(six_users(&db.url(), 4).await);
    for round in 0..10u64 {
        let group = 100 + round;
        store
            .create_group(new_group(group, 1, &[2, 3]))
            .await
            .unwrap();
        for (user, ids) in [(2, 10), (3, 20)] {
            store
                .change_group(change(
                    group,
                    1,
                    group * 1000 + ids,
                    GroupChange::SetRole(Id(user), Role::Admin),
                ))
                .await
                .unwrap();
        }
        let [a, b] = [(2, 3, 30), (3, 2, 40)].map(|(actor, target, ids)| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .change_group(change(
                        group,
                        actor,
                        group * 1000 + ids,
                        GroupChange::Remove(Id(target)),
                    ))
                    .await
            })
        });
        let outcomes = [a.await.unwrap(), b.await.unwrap()];
        let removed = outcomes.iter().filter(|r| r.is_ok()).count();
        assert_eq!(removed, 1, "round {round}: {outcomes:?}");
        let refused = outcomes.iter().find_map(|r| r.as_ref().err()).unwrap();
        assert!(matches!(refused, StoreError::NotFound(_)), "{refused:?}");
        let left = members(&store, 1, group).await;
        assert_eq!(left.len(), 2, "round {round}: {left:?}");
        let seqs: Vec<u64> = store
            .group_messages(Id(group), 0, None, 10)
            .await
            .unwrap()
            .iter()
            .map(|m| m.seq)
            .collect();
        assert_eq!(seqs, [1, 2, 3, 4]);
    }
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_send_is_answered_with_the_first() {
    let Some(db) = Database::from_env().await else {
        return;
    };
    let store = Arc::new(six_users(&db.url(), 4).await);
    store.create_group(new_group(7, 1, &[2, 3])).await.unwrap();
    let first = store.append_group(group_msg(100, 7, 2, "a")).await.unwrap();
    assert!(!first.duplicate);
    assert_eq!(first.message.seq, 2);
    assert_eq!(first.message.to, None);
    assert_eq!(first.message.body, "m100");
    let again = store.append_group(group_msg(101, 7, 2, "a")).await.unwrap();
    assert!(again.duplicate);
    assert!(again.recipients.is_empty());
    assert_eq!(*again.message, *first.message);

    // Several identical sends at once store one message.
    let racing = (0..4u64).map(|i| {
        let store = store.clone();
        tokio::spawn(async move { store.append_group(group_msg(200 + i, 7, 3, "b")).await })
    });
    let answers = futures::future::try_join_all(racing).await.unwrap();
    let answers: Vec<_> = answers.into_iter().map(Result::unwrap).collect();
    assert_eq!(answers.iter().filter(|a| !a.duplicate).count(), 1);
    let id = answers[0].message.id;
    assert!(
        answers
            .iter()
            .all(|a| a.message.id == id && a.message.seq == 3)
    );

    // A sender removed since still gets the answer of its send, and no new one.
    store
        .change_group(change(7, 1, 300, GroupChange::Remove(Id(2))))
        .await
        .unwrap();
    let late = store.append_group(group_msg(102, 7, 2, "a")).await.unwrap();
    assert!(late.duplicate);
    assert_eq!(late.message.id, Id(100));
    let err = store
        .append_group(group_msg(103, 7, 2, "c"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    let err = store
        .append_group(group_msg(104, 8, 1, "d"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "no group: {err:?}");
    let seqs: Vec<u64> = store
        .group_messages(Id(7), 0, None, 10)
        .await
        .unwrap()
        .iter()
        .map(|m| m.seq)
        .collect();
    assert_eq!(seqs, [1, 2, 3, 4], "refusals take no seq");
    store.close().await;
}

async fn device(store: &PostgresStore, id: u64, user: u64, now: i64) -> Id {
    store
        .create_device(NewDevice {
            id: Id(id),
            user_id: Id(user),
            name: None,
            token_hash: [u8::try_from(id % 256).unwrap(); 32],
            now,
        })
        .await
        .unwrap();
    Id(id)
}

fn span(group: u64, after: u64, upto: Option<u64>) -> GroupSpan {
    GroupSpan {
        group: Id(group),
        after,
        upto,
    }
}

#[tokio::test]
async fn a_device_catches_up_on_its_spans_from_its_marks() {
    let Some(db) = Database::from_env().await else {
        return;
    };
    let store = six_users(&db.url(), 2).await;
    let early = device(&store, 50, 2, 5).await;
    store.create_group(new_group(7, 1, &[2])).await.unwrap();
    store.create_group(new_group(8, 1, &[3])).await.unwrap();
    for i in 0..3 {
        store
            .append_group(group_msg(100 + i, 7, 1, &format!("a{i}")))
            .await
            .unwrap();
    }
    assert_eq!(
        store.group_spans(early, Id(2)).await.unwrap(),
        [span(7, 0, None)]
    );
    assert_eq!(
        store
            .group_messages(Id(7), 0, None, 2)
            .await
            .unwrap()
            .iter()
            .map(|m| m.seq)
            .collect::<Vec<_>>(),
        [1, 2]
    );
    assert_eq!(
        store
            .group_messages(Id(7), 1, Some(3), 10)
            .await
            .unwrap()
            .iter()
            .map(|m| m.seq)
            .collect::<Vec<_>>(),
        [2, 3]
    );

    // Acknowledged up to 3: the device's mark, and the user's delivered mark.
    store.set_group_mark(early, Id(2), Id(7), 3).await.unwrap();
    assert_eq!(
        store.group_spans(early, Id(2)).await.unwrap(),
        [span(7, 3, None)]
    );
    // A mark never moves back, nor past the last message.
    store.set_group_mark(early, Id(2), Id(7), 1).await.unwrap();
    assert_eq!(
        store.group_spans(early, Id(2)).await.unwrap(),
        [span(7, 3, None)]
    );
    store.set_group_mark(early, Id(2), Id(7), 99).await.unwrap();
    assert_eq!(
        store.group_spans(early, Id(2)).await.unwrap(),
        [span(7, 4, None)],
        "nothing to read, and still a member"
    );
    let receipts = store.group_receipts(Id(1), Id(7)).await.unwrap().unwrap();
    assert_eq!(
        receipts[1],
        MemberMarks {
            user_id: Id(2),
            read_seq: 0,
            delivered_seq: 4
        }
    );

    // Removed at 6 after a message at 5: the device that existed then reads up to 6.
    store.append_group(group_msg(110, 7, 1, "b")).await.unwrap();
    let removed = store
        .change_group(ChangeGroup {
            now: 40,
            ..change(7, 1, 120, GroupChange::Remove(Id(2)))
        })
        .await
        .unwrap();
    assert_eq!(removed[0].message.seq, 6);
    store.append_group(group_msg(111, 7, 1, "c")).await.unwrap();
    assert_eq!(
        store.group_spans(early, Id(2)).await.unwrap(),
        [span(7, 4, Some(6))]
    );
    // A device made when the removal happened learns of it; one made later does not.
    let at_removal = device(&store, 51, 2, 40).await;
    assert_eq!(
        store.group_spans(at_removal, Id(2)).await.unwrap(),
        [span(7, 0, Some(6))]
    );
    let late = device(&store, 52, 2, 41).await;
    assert!(store.group_spans(late, Id(2)).await.unwrap().is_empty());
    // Acknowledged to the span's end: nothing left, and delivered stops at the removal.
    store.set_group_mark(early, Id(2), Id(7), 7).await.unwrap();
    assert!(store.group_spans(early, Id(2)).await.unwrap().is_empty());

    // Added again at 8: a second span, from the event that added them.
    store
        .change_group(change(7, 1, 130, GroupChange::Add(Id(2))))
        .await
        .unwrap();
    assert_eq!(
        store.group_spans(late, Id(2)).await.unwrap(),
        [span(7, 7, None)]
    );
    assert_eq!(
        store.group_spans(at_removal, Id(2)).await.unwrap(),
        [span(7, 0, Some(6)), span(7, 7, None)]
    );
    // Delivered marks live on the latest span.
    store.set_group_mark(late, Id(2), Id(7), 8).await.unwrap();
    let receipts = store.group_receipts(Id(2), Id(7)).await.unwrap().unwrap();
    assert_eq!(
        receipts
            .iter()
            .find(|m| m.user_id == Id(2))
            .unwrap()
            .delivered_seq,
        8
    );
    // Another user's spans and groups are not the device's.
    assert_eq!(
        store.group_spans(late, Id(3)).await.unwrap(),
        [span(8, 0, None)]
    );
    store.close().await;
}

#[tokio::test]
async fn read_marks_and_receipts_are_for_members() {
    let Some(db) = Database::from_env().await else {
        return;
    };
    let store = six_users(&db.url(), 2).await;
    store.create_group(new_group(7, 1, &[2, 3])).await.unwrap();
    store.append_group(group_msg(100, 7, 1, "a")).await.unwrap();
    assert_eq!(
        store.mark_group_read(Id(2), Id(7), 1).await.unwrap(),
        Some(1)
    );
    assert_eq!(store.mark_group_read(Id(2), Id(7), 1).await.unwrap(), None);
    assert_eq!(store.mark_group_read(Id(2), Id(7), 0).await.unwrap(), None);
    // Clamped to the last message.
    assert_eq!(
        store.mark_group_read(Id(2), Id(7), 50).await.unwrap(),
        Some(2)
    );
    assert_eq!(store.mark_group_read(Id(2), Id(7), 50).await.unwrap(), None);
    for (user, group) in [(4, 7), (1, 8)] {
        let err = store
            .mark_group_read(Id(user), Id(group), 1)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    }
    let receipts = store.group_receipts(Id(3), Id(7)).await.unwrap().unwrap();
    assert_eq!(
        receipts,
        [
            MemberMarks {
                user_id: Id(1),
                read_seq: 0,
                delivered_seq: 0
            },
            MemberMarks {
                user_id: Id(2),
                read_seq: 2,
                delivered_seq: 0
            },
            MemberMarks {
                user_id: Id(3),
                read_seq: 0,
                delivered_seq: 0
            },
        ]
    );
    assert_eq!(store.group_receipts(Id(4), Id(7)).await.unwrap(), None);
    // A removed member: no receipts, no marks, and not in the others' receipts.
    store
        .change_group(change(7, 1, 110, GroupChange::Remove(Id(2))))
        .await
        .unwrap();
    assert_eq!(store.group_receipts(Id(2), Id(7)).await.unwrap(), None);
    let err = store.mark_group_read(Id(2), Id(7), 3).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    let receipts = store.group_receipts(Id(1), Id(7)).await.unwrap().unwrap();
    assert_eq!(
        receipts.iter().map(|m| m.user_id.0).collect::<Vec<_>>(),
        [1, 3]
    );
    // The group's read marks are not the 1:1 ones.
    let err = store.mark_read(Id(1), "g7", 1).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    store.close().await;
}

#[tokio::test]
async fn the_conversation_list_merges_groups_by_last_message() {
    let Some(db) = Database::from_env().await else {
        return;
    };
    let store = six_users(&db.url(), 2).await;
    let one_to_one = |id: u64, to: u64| NewMessage {
        id: Id(id),
        from: Id(1),
        to: Id(to),
        client_id: format!("c{id}"),
        body: "hi".into(),
        ts: 1,
    };
    // Last message ids, newest first: g8 (60), 1:3 (50), g7 (40), 1:2 (30); group 9 has
    // user 1 removed, so it is not listed.
    store.append(one_to_one(10, 2)).await.unwrap();
    store
        .create_group(NewGroup {
            message_id: Id(20),
            ..new_group(7, 2, &[1, 3])
        })
        .await
        .unwrap();
    store.append(one_to_one(30, 2)).await.unwrap();
    store.append_group(group_msg(40, 7, 3, "x")).await.unwrap();
    store
        .create_group(NewGroup {
            message_id: Id(45),
            ..new_group(9, 2, &[1])
        })
        .await
        .unwrap();
    store.append(one_to_one(50, 3)).await.unwrap();
    store
        .create_group(NewGroup {
            message_id: Id(60),
            ..new_group(8, 1, &[])
        })
        .await
        .unwrap();
    store
        .change_group(change(9, 2, 70, GroupChange::Remove(Id(1))))
        .await
        .unwrap();
    store.mark_group_read(Id(1), Id(7), 1).await.unwrap();

    let page = store.conversations(Id(1), None, 10).await.unwrap();
    assert!(!page.more);
    let order: Vec<_> = page
        .conversations
        .iter()
        .map(|c| c.conversation.as_str())
        .collect();
    let c13 = conversation_id(Id(1), Id(3));
    let c12 = conversation_id(Id(1), Id(2));
    assert_eq!(order, ["g8", c13.as_str(), "g7", c12.as_str()]);
    let g7 = &page.conversations[2];
    assert_eq!(
        *g7,
        ConversationSummary {
            conversation: "g7".into(),
            peer: None,
            last_seq: 2,
            last_message: Some(store.group_messages(Id(7), 1, None, 1).await.unwrap()[0].clone()),
            read_seq: 1,
            peer_read_seq: None,
            peer_delivered_seq: None,
            group: Some(GroupSummary {
                title: "group 7".into(),
                members_count: 3,
            }),
        }
    );
    assert_eq!(g7.last_message.as_ref().unwrap().id, Id(40));
    assert_eq!(
        page.conversations[0].group.as_ref().unwrap().members_count,
        1
    );
    let c12_entry = &page.conversations[3];
    assert_eq!(c12_entry.peer, Some(Id(2)));
    assert_eq!(c12_entry.peer_read_seq, Some(0));
    assert!(c12_entry.group.is_none());

    // Pages of two: the cursor is the last message's id, exclusive, across both kinds.
    let first = store.conversations(Id(1), None, 2).await.unwrap();
    assert!(first.more);
    assert_eq!(first.conversations, page.conversations[..2]);
    let second = store.conversations(Id(1), Some(Id(50)), 2).await.unwrap();
    assert!(!second.more);
    assert_eq!(second.conversations, page.conversations[2..]);
    let third = store.conversations(Id(1), Some(Id(40)), 1).await.unwrap();
    assert!(!third.more);
    assert_eq!(third.conversations, page.conversations[3..]);
    let groups_only = store.conversations(Id(1), Some(Id(61)), 1).await.unwrap();
    assert!(groups_only.more);
    assert_eq!(groups_only.conversations, page.conversations[..1]);
    // The removed member's list no longer holds group 9; its owner's does.
    let owner = store.conversations(Id(2), None, 10).await.unwrap();
    assert!(owner.conversations.iter().any(|c| c.conversation == "g9"));
    store.close().await;
}

#[tokio::test]
async fn a_members_history_starts_where_they_were_added() {
    let Some(db) = Database::from_env().await else {
        return;
    };
    let store = six_users(&db.url(), 2).await;
    store.create_group(new_group(7, 1, &[2])).await.unwrap();
    for i in 0..3 {
        store
            .append_group(group_msg(100 + i, 7, 1, &format!("a{i}")))
            .await
            .unwrap();
    }
    // 3 is added at 5 and sees from there on.
    store
        .change_group(change(7, 1, 110, GroupChange::Add(Id(3))))
        .await
        .unwrap();
    store.append_group(group_msg(120, 7, 2, "b")).await.unwrap();
    let seqs = |page: Option<MessagePage>| {
        let page = page.expect("a member sees the history");
        (
            page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
            page.more,
        )
    };
    assert_eq!(
        seqs(store.messages(Id(3), "g7", None, 10).await.unwrap()),
        (vec![5, 6], false)
    );
    assert_eq!(
        seqs(store.messages(Id(2), "g7", None, 10).await.unwrap()),
        (vec![1, 2, 3, 4, 5, 6], false)
    );
    // Newest page first, ascending within; `before` exclusive.
    assert_eq!(
        seqs(store.messages(Id(2), "g7", None, 2).await.unwrap()),
        (vec![5, 6], true)
    );
    assert_eq!(
        seqs(store.messages(Id(2), "g7", Some(5), 3).await.unwrap()),
        (vec![2, 3, 4], true)
    );
    assert_eq!(
        seqs(store.messages(Id(3), "g7", Some(6), 3).await.unwrap()),
        (vec![5], false)
    );
    assert_eq!(
        seqs(store.messages(Id(3), "g7", Some(5), 3).await.unwrap()),
        (vec![], false)
    );
    // Anyone else, a removed member and a group that does not exist: `None` alike.
    assert_eq!(store.messages(Id(4), "g7", None, 10).await.unwrap(), None);
    assert_eq!(store.messages(Id(1), "g8", None, 10).await.unwrap(), None);
    store
        .change_group(change(7, 1, 130, GroupChange::Remove(Id(3))))
        .await
        .unwrap();
    assert_eq!(store.messages(Id(3), "g7", None, 10).await.unwrap(), None);
    // Added again: the history restarts at the new span.
    store
        .change_group(change(7, 1, 140, GroupChange::Add(Id(3))))
        .await
        .unwrap();
    assert_eq!(
        seqs(store.messages(Id(3), "g7", None, 10).await.unwrap()),
        (vec![8], false)
    );
    store.close().await;
}

#[tokio::test]
async fn a_version_6_database_is_upgraded_in_place() {
    let Some(db) = Database::from_env().await else {
        return;
    };
    let url = db.url();
    let store = six_users(&url, 1).await;
    store.create_group(new_group(7, 1, &[2])).await.unwrap();
    let c = store.pool.get().await.unwrap();
    c.batch_execute(
        "DROP FUNCTION confab_append_group;
         ALTER TABLE groups RESET (fillfactor);
         ALTER TABLE group_members RESET (fillfactor);
         DELETE FROM schema_migrations WHERE version >= 7",
    )
    .await
    .unwrap();
    drop(c);
    store.close().await;

    let store = PostgresStore::connect(&url, 1).await.unwrap();
    let sent = store.append_group(group_msg(100, 7, 2, "a")).await.unwrap();
    assert_eq!(sent.message.seq, 2);
    assert_eq!(ids(&sent.recipients), [1, 2]);
    store.close().await;
}

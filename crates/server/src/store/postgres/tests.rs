//! PostgreSQL-only behaviour the contract suite (`tests/store_contract.rs`) cannot see:
//! connection settings, concurrent migrations, recovery from broken connections and outages.
//! They run when `CONFAB_TEST_POSTGRES` holds a URL and are skipped otherwise.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use confab_protocol::Id;
use confab_testkit::engines;
use confab_testkit::postgres::Database;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_postgres::NoTls;

use super::group_tests::{group_msg, ids, new_group, six_users};
use super::schema::MIGRATIONS;
use super::{CHECK_TIMEOUT, CHECKOUT_TIMEOUT, PostgresStore};
use crate::store::groups::Groups;
use crate::store::{Accounts, MessageStore, NewDevice, NewMessage, StoreError, Streams};

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

/// What undoes migration 8 (push), for the tests that take a database back to an older
/// version.
const UNDO_PUSH: &str = "
    DROP FUNCTION confab_append_notify; DROP FUNCTION confab_append_group_notify;
    DROP TABLE push_subscriptions, push_outbox, push_pending, push_keys;
    DROP SEQUENCE push_pending_versions;";

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
    c.batch_execute(&format!(
        "{UNDO_PUSH}
         DROP FUNCTION confab_append; DROP FUNCTION confab_set_cursor;
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
         DELETE FROM schema_migrations WHERE version >= 2"
    ))
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
    c.batch_execute(&format!(
        "{UNDO_PUSH}
         ALTER TABLE devices DROP COLUMN last_active;
         INSERT INTO devices (id, user_id, token_hash, created_at)
             VALUES (20, 1, decode(repeat('07', 32), 'hex'), 1);
         DROP FUNCTION confab_append_group;
         ALTER TABLE messages DROP COLUMN system;
         DROP TABLE groups; DROP TABLE group_members; DROP TABLE group_marks;
         DELETE FROM schema_migrations WHERE version >= 5"
    ))
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

#[tokio::test]
async fn a_version_6_database_is_upgraded_in_place() {
    let Some(db) = Database::from_env().await else {
        return;
    };
    let url = db.url();
    let store = six_users(&url, 1).await;
    store.create_group(new_group(7, 1, &[2])).await.unwrap();
    let c = store.pool.get().await.unwrap();
    c.batch_execute(&format!(
        "{UNDO_PUSH}
         DROP FUNCTION confab_append_group;
         ALTER TABLE groups RESET (fillfactor);
         ALTER TABLE group_members RESET (fillfactor);
         DELETE FROM schema_migrations WHERE version >= 7"
    ))
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

//! Behaviour of the SQLite store that the contract suite (`tests/store_contract.rs`) cannot
//! see: prepared statements, the reader pool, the WAL gate and its restarts, a batch rolled
//! back halfway, the data-dir lock and the migrations.

use std::path::Path;
use std::sync::{Arc, Mutex};

use confab_protocol::Id;
use prometheus::IntCounter;
use rusqlite::{Connection, params};

use super::checkpoint::WalGate;
use super::connections::open_reader;
use super::read_pool::READ_POOL;
use super::rows::{MESSAGE_COLUMNS, internal};
use super::schema::{MIGRATIONS, migrate};
use super::streams::stream_after_in;
use super::{SqliteMetrics, SqliteStore};
use crate::config::SqliteConfig;
use crate::store::sql_integers::id_to_sql;
use crate::store::{
    Accounts, Conversations, MessageStore, NewMessage, StoreError, StoreResult, Streams,
    conversation_id,
};

/// The catch-up query runs from its cached, prepared form, not re-prepared per binding.
#[test]
fn catch_up_statement_is_prepared_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("confab.db");
    let mut conn = Connection::open(&path).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    migrate(&mut conn).unwrap();
    let reader = open_reader(&path).unwrap();
    for after in 0..5u8 {
        stream_after_in(&reader, Id(1), u64::from(after), 10 + usize::from(after)).unwrap();
    }
    let sql = format!(
        "SELECT s.pos, {MESSAGE_COLUMNS} FROM stream s
             JOIN messages m ON m.id = s.message_id
             WHERE s.user_id = ?1 AND s.pos > ?2 ORDER BY s.pos LIMIT +?3"
    );
    let stmt = reader.prepare_cached(&sql).unwrap();
    assert_eq!(
        stmt.get_status(rusqlite::StatementStatus::Run),
        5,
        "the same statement ran"
    );
    assert_eq!(stmt.get_status(rusqlite::StatementStatus::RePrepare), 0);
}

/// However many reads wait at once, at most `READ_POOL` reader threads (and connections)
/// serve them, and every read is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_share_a_bounded_pool_of_threads() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path()).await;
    let store = Arc::new(store);
    let names = Arc::new(Mutex::new(std::collections::HashSet::new()));
    let reads = (0..READ_POOL * 4).map(|_| {
        let (store, names) = (store.clone(), names.clone());
        tokio::spawn(async move {
            store
                .read(move |conn| {
                    names.lock().unwrap().insert(std::thread::current().id());
                    // Long enough that the reads pile up behind the pool.
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    conn.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))
                        .map_err(internal)
                })
                .await
        })
    });
    for read in futures::future::join_all(reads).await {
        assert_eq!(read.unwrap().unwrap(), 1);
    }
    let threads = names.lock().unwrap().len();
    assert!(threads <= READ_POOL, "{threads} reader threads");
    assert!(threads > 1, "reads ran on one thread only");
    let started = store
        .readers
        .threads
        .load(std::sync::atomic::Ordering::Acquire);
    assert!(
        threads <= started && started <= READ_POOL,
        "{started} started"
    );
    // A read that panics takes its thread down and answers `Unavailable`; reads go on.
    for _ in 0..READ_POOL + 1 {
        let failed = store
            .read(|_| -> StoreResult<()> { panic!("a read that panics") })
            .await;
        assert!(
            matches!(failed, Err(StoreError::Unavailable(_))),
            "{failed:?}"
        );
    }
    let after = store
        .read(|conn| {
            conn.query_row("SELECT 2", [], |r| r.get::<_, i64>(0))
                .map_err(internal)
        })
        .await;
    assert_eq!(after.unwrap(), 2);
    store.close().await;
    let refused = store.read(|_| Ok(())).await;
    assert!(matches!(refused, Err(StoreError::Unavailable(_))));
}

/// The checkpointer's restart runs only while the writer waits at the gate, and the writer
/// goes on once it is done; a writer that is not asked does not wait.
#[test]
fn the_wal_gate_holds_the_writer_for_the_restart_only() {
    let gate = Arc::new(WalGate::default());
    let t = std::time::Instant::now();
    gate.hold_if_wanted();
    assert!(t.elapsed() < std::time::Duration::from_millis(100));

    let writer_inside = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (gate, inside) = (gate.clone(), writer_inside.clone());
        std::thread::spawn(move || {
            // The writer between batches, until the checkpointer has asked once.
            while !gate.wanted.load(std::sync::atomic::Ordering::Acquire) {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            inside.store(true, std::sync::atomic::Ordering::SeqCst);
            gate.hold_if_wanted();
            inside.store(false, std::sync::atomic::Ordering::SeqCst);
        })
    };
    let mut ran_while_held = false;
    gate.restart_with_writer_held(|| {
        ran_while_held = writer_inside.load(std::sync::atomic::Ordering::SeqCst);
        // The writer stays put while the restart runs.
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(writer_inside.load(std::sync::atomic::Ordering::SeqCst));
    });
    writer.join().unwrap();
    assert!(ran_while_held);
    assert!(!gate.wanted.load(std::sync::atomic::Ordering::Acquire));
}

/// A write that fails after its first change (here: a stream position taken behind the
/// writer's back, so the stream insert fails after the message row is in) rolls the whole
/// batch back, forgets the writer's cached heads and seqs, and the sender's retry with the
/// same `client_id` is stored once, at the positions the store really has free.
#[tokio::test]
async fn a_write_failing_halfway_rolls_back_and_its_retry_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path()).await;
    let (a, b) = (Id(1), Id(2));
    store.create_user(a, "a", "x", 0).await.unwrap();
    store.create_user(b, "b", "x", 0).await.unwrap();
    let send = |id: u64, client_id: &str| NewMessage {
        id: Id(id),
        from: a,
        to: b,
        client_id: client_id.into(),
        body: "hi".into(),
        ts: 0,
    };
    let first = store.append(send(10, "c1")).await.unwrap();
    assert_eq!((first.message.seq, first.recipient_pos), (1, 1));

    // Another connection takes b's next position behind the writer's cached head, so the
    // next append's stream insert fails after its message row is written.
    {
        let other = Connection::open(dir.path().join("confab.db")).unwrap();
        other
            .execute(
                "INSERT INTO stream (user_id, pos, message_id) VALUES (?1, 2, 10)",
                params![id_to_sql(b)],
            )
            .unwrap();
    }
    let failed = store.append(send(11, "c2")).await;
    assert!(
        matches!(failed, Err(StoreError::Unavailable(_))),
        "{failed:?}"
    );
    let rows: i64 = store
        .read(|conn| {
            conn.query_row("SELECT count(*) FROM messages WHERE id = 11", [], |r| {
                r.get(0)
            })
            .map_err(internal)
        })
        .await
        .unwrap();
    assert_eq!(rows, 0, "the message row was rolled back with the batch");

    // The retry reads heads and seqs from the store again.
    let retry = store.append(send(12, "c2")).await.unwrap();
    assert!(!retry.duplicate);
    assert_eq!((retry.message.seq, retry.recipient_pos), (2, 3));
    let again = store.append(send(13, "c2")).await.unwrap();
    assert!(again.duplicate, "the retry was stored once");
    assert_eq!(again.message.id, Id(12));
    store.close().await;
}

/// Under writes that never let up, every checkpoint finds new frames to copy, so SQLite
/// alone never starts the WAL over: the checkpointer does, each time it holds more than
/// the bound (here 256 KiB, a few hundred messages).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_starts_over_past_its_bound() {
    const BOUND: u64 = 256 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let restarts = counter();
    let store = Arc::new(open_store_with(dir.path(), 64, BOUND, restarts.clone()).await);
    const USERS: u64 = 64;
    for u in 1..=USERS {
        store
            .create_user(Id(u), &format!("u{u}"), "x", 0)
            .await
            .unwrap();
    }
    // Eight senders back to back for 1.5 s: several checkpoints, each after more than
    // the bound was written.
    let until = std::time::Instant::now() + std::time::Duration::from_millis(1500);
    let senders = (0..8u64).map(|t| {
        let store = store.clone();
        tokio::spawn(async move {
            let mut i = 0u64;
            while std::time::Instant::now() < until {
                let from = 1 + (t * 8 + i) % USERS;
                let to = 1 + (from + 1 + i % 7) % USERS;
                let id = (t << 40) | i;
                let m = NewMessage {
                    id: Id(id),
                    from: Id(from),
                    to: Id(to),
                    client_id: format!("{t}-{i}"),
                    body: "x".repeat(500),
                    ts: 0,
                };
                store.append(m).await.unwrap();
                i += 1;
            }
            i
        })
    });
    let sent: u64 = futures::future::join_all(senders)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .sum();
    assert!(
        restarts.get() >= 1,
        "no restart after {sent} messages (WAL file {} bytes)",
        std::fs::metadata(dir.path().join("confab.db-wal"))
            .map(|m| m.len())
            .unwrap_or(0)
    );
    store.close().await;
}

/// While a store is open its data dir is locked: another open fails and says why, and
/// closing the store frees the dir.
#[tokio::test]
async fn an_open_store_holds_its_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let first = open_store(dir.path()).await;
    let options = SqliteConfig {
        max_commit_batch: 16,
        wal_restart_bytes: 1 << 20,
        ..SqliteConfig::default()
    };
    let second = SqliteStore::open(dir.path(), options, SqliteMetrics::default());
    match second {
        Err(StoreError::Unavailable(m)) => {
            assert!(m.contains("in use by another process"), "{m}")
        }
        Err(e) => panic!("unexpected error: {e:?}"),
        Ok(_) => panic!("a second store opened a locked data dir"),
    }
    first.close().await;
    let again = open_store(dir.path()).await;
    again.close().await;
}

/// Opens a store in `dir` with the default WAL bound.
async fn open_store(dir: &Path) -> SqliteStore {
    let wal = SqliteConfig::default().wal_restart_bytes;
    open_store_with(dir, 16, wal, counter()).await
}

/// Opens a store in `dir` off the async threads (opening migrates, which blocks).
async fn open_store_with(
    dir: &Path,
    max_commit_batch: usize,
    wal_restart_bytes: u64,
    restarts: IntCounter,
) -> SqliteStore {
    let path = dir.to_owned();
    tokio::task::spawn_blocking(move || {
        let options = SqliteConfig {
            max_commit_batch,
            wal_restart_bytes,
            ..SqliteConfig::default()
        };
        let metrics = SqliteMetrics {
            wal_restarts: restarts,
            ..SqliteMetrics::default()
        };
        SqliteStore::open(&path, options, metrics)
    })
    .await
    .unwrap()
    .unwrap()
}

fn counter() -> IntCounter {
    IntCounter::new("c", "c").unwrap()
}

/// A store written by schema 2 (heads and last seqs kept in columns) carries on from the
/// values its rows imply once migrated.
#[tokio::test]
async fn migration_3_continues_heads_and_seqs() {
    let dir = tempfile::tempdir().unwrap();
    {
        let conn = Connection::open(dir.path().join("confab.db")).unwrap();
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        conn.execute_batch(MIGRATIONS[1]).unwrap();
        conn.pragma_update(None, "user_version", 2).unwrap();
        conn.execute_batch(
            "INSERT INTO users (id, username, username_key, password_hash, created_at,
                                stream_head)
             VALUES (1, 'a', 'a', 'x', 0, 2), (2, 'b', 'b', 'x', 0, 2);
             INSERT INTO conversations (id, user_lo, user_hi, last_seq, last_ts)
             VALUES ('1-2', 1, 2, 2, 20);
             INSERT INTO messages (id, conversation, seq, sender, recipient, client_id,
                                   body, ts)
             VALUES (10, '1-2', 1, 1, 2, 'c1', 'one', 10),
                    (11, '1-2', 2, 2, 1, 'c2', 'two', 20);
             INSERT INTO stream (user_id, pos, message_id)
             VALUES (1, 1, 10), (2, 1, 10), (1, 2, 11), (2, 2, 11);",
        )
        .unwrap();
    }
    let store = open_store(dir.path()).await;
    let conversation = conversation_id(Id(1), Id(2));
    assert_eq!(
        conversation, "1-2",
        "the fixture names the conversation right"
    );
    assert_eq!(store.stream_head(Id(1)).await.unwrap(), 2);
    let appended = store
        .append(NewMessage {
            id: Id(12),
            from: Id(1),
            to: Id(2),
            client_id: "c3".into(),
            body: "three".into(),
            ts: 30,
        })
        .await
        .unwrap();
    assert_eq!(appended.message.seq, 3);
    assert_eq!((appended.sender_pos, appended.recipient_pos), (3, 3));
    let list = store
        .conversations(Id(2), None, 10)
        .await
        .unwrap()
        .conversations;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].last_seq, 3);
    assert_eq!(list[0].last_message.as_ref().unwrap().body, "three");
    store.close().await;
}

/// `/readyz` must prove a commit, not a round trip: the check leaves its row, written and
/// fsync'd, for a reader on another connection to see.
#[tokio::test]
async fn readiness_check_commits_a_write() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path()).await;
    let before = crate::time::now_ms();
    store.check().await.unwrap();
    let other = Connection::open(dir.path().join("confab.db")).unwrap();
    let checked_at: i64 = other
        .query_row("SELECT checked_at FROM readiness WHERE id = 1", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(checked_at >= before, "{checked_at} < {before}");
    store.close().await;
}

/// Below the free-space floor the store is not ready, though a small write still commits.
#[tokio::test]
async fn readiness_check_fails_under_the_free_space_floor() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    let store = tokio::task::spawn_blocking(move || {
        let options = SqliteConfig {
            min_free_disk_bytes: u64::MAX,
            ..SqliteConfig::default()
        };
        SqliteStore::open(&path, options, SqliteMetrics::default())
    })
    .await
    .unwrap()
    .unwrap();
    match store.check().await {
        Err(StoreError::Unavailable(m)) => assert!(m.contains("KiB free"), "{m}"),
        other => panic!("expected unavailable, got {other:?}"),
    }
    store.close().await;
}

//! The `MessageStore` contract: one suite of behaviour tests, written once against
//! `Arc<dyn MessageStore>` and run for every backend.
//!
//! - SQLite: always, in a fresh temporary directory.
//! - PostgreSQL: when `CONFAB_TEST_POSTGRES` holds a URL (e.g.
//!   `postgres://postgres@127.0.0.1:5432/postgres`). Each test creates its own database
//!   `confab_t_<random hex>` through that URL and drops it at the end. Without the variable
//!   the PostgreSQL tests say they are skipped and pass.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use confab_protocol::{ConversationSummary, Id};
use confab_server::config::SqliteConfig;
use confab_server::store::postgres::PostgresStore;
use confab_server::store::sqlite::{SqliteMetrics, SqliteStore};
use confab_server::store::{
    DeliveredAdvance, DeviceRecord, MessageStore, NewDevice, NewMessage, ReadAdvance, SeedAccount,
    StoreError, conversation_id,
};
use confab_testkit::postgres::Database;

const PG_POOL: usize = 8;

// ---------------------------------------------------------------------------------------------
// Backends

/// Where a test's data lives; `open` gives a store over it, again after `close`.
enum Backend {
    Sqlite(tempfile::TempDir),
    Postgres(Database),
}

impl Backend {
    fn sqlite() -> Backend {
        Backend::Sqlite(tempfile::tempdir().expect("a temporary directory"))
    }

    /// A fresh database, or `None` (after saying so) when PostgreSQL is not configured.
    async fn postgres() -> Option<Backend> {
        Database::from_env().await.map(Backend::Postgres)
    }

    async fn open(&self) -> Arc<dyn MessageStore> {
        match self {
            Backend::Sqlite(dir) => {
                let dir: PathBuf = dir.path().to_owned();
                let store = tokio::task::spawn_blocking(move || {
                    let options = SqliteConfig {
                        max_commit_batch: 64,
                        ..SqliteConfig::default()
                    };
                    SqliteStore::open(&dir, options, SqliteMetrics::default())
                })
                .await
                .unwrap()
                .expect("sqlite store opens");
                Arc::new(store)
            }
            Backend::Postgres(db) => Arc::new(
                PostgresStore::connect(&db.url(), PG_POOL)
                    .await
                    .expect("postgres store connects"),
            ),
        }
    }
}

/// Generates one `#[tokio::test]` per contract function and backend.
macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let backend = super::Backend::sqlite();
                    let store = backend.open().await;
                    super::$name(store.clone(), &backend).await;
                    store.close().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(backend) = super::Backend::postgres().await else { return };
                    let store = backend.open().await;
                    super::$name(store.clone(), &backend).await;
                    store.close().await;
                }
            )*
        }
    };
}

contract!(
    create_user_conflicts_ignoring_case,
    users_by_name_and_id,
    devices_and_tokens,
    devices_record_their_last_use,
    set_password_revokes_every_other_device,
    append_assigns_seq_and_positions,
    append_duplicate_returns_the_first_and_writes_nothing,
    append_to_unknown_recipient_is_not_found,
    append_to_a_blocker_is_forbidden,
    duplicate_to_another_recipient_returns_the_first,
    a_block_after_sends_stops_the_next_but_not_retries,
    concurrent_appends_are_gapless,
    concurrent_duplicates_store_one_message,
    stream_after_pages_without_gaps,
    login_state_matches_the_separate_reads,
    set_cursor_is_monotonic_and_clamped,
    delivered_marks_advance_once,
    contacts_friends_and_blocks,
    mark_read_is_forward_only_and_clamped,
    conversations_newest_first_with_marks,
    peer_marks_only_between_friends,
    conversations_page_by_last_message,
    messages_pages_backwards,
    numbers_past_i64_max_are_not_wrapped,
    last_seen_is_kept,
    seed_accounts_writes_all_or_nothing,
    data_survives_reopen,
    check_succeeds,
);

// ---------------------------------------------------------------------------------------------
// Helpers

type Store = Arc<dyn MessageStore>;

/// The first page of `user`'s conversation list, big enough for every test.
async fn listed(store: &Store, user: Id) -> Vec<ConversationSummary> {
    let page = store.conversations(user, None, 1000).await.unwrap();
    assert!(!page.more);
    page.conversations
}

/// Makes `a` and `b` friends (mutual contacts).
async fn befriend(store: &Store, a: Id, b: Id) {
    store.add_contact(a, b, 1).await.unwrap();
    store.add_contact(b, a, 1).await.unwrap();
}

async fn user(store: &Store, id: u64, name: &str) -> Id {
    store
        .create_user(Id(id), name, "hash", 1)
        .await
        .expect("create_user");
    Id(id)
}

fn token(n: u8) -> [u8; 32] {
    [n; 32]
}

async fn device(store: &Store, id: u64, user: Id, token_n: u8) -> Id {
    store
        .create_device(NewDevice {
            id: Id(id),
            user_id: user,
            name: Some(format!("device {id}")),
            token_hash: token(token_n),
            now: 1,
        })
        .await
        .expect("create_device");
    Id(id)
}

fn msg(id: u64, from: Id, to: Id, client_id: &str, ts: i64) -> NewMessage {
    NewMessage {
        id: Id(id),
        from,
        to,
        client_id: client_id.to_owned(),
        body: format!("body of {client_id}"),
        ts,
    }
}

async fn send(store: &Store, id: u64, from: Id, to: Id, ts: i64) -> confab_server::store::Appended {
    store
        .append(msg(id, from, to, &format!("c{id}"), ts))
        .await
        .expect("append")
}

fn positions(entries: &[confab_server::store::StreamEntry]) -> Vec<u64> {
    entries.iter().map(|e| e.pos).collect()
}

// ---------------------------------------------------------------------------------------------
// The contract

async fn create_user_conflicts_ignoring_case(store: Store, _: &Backend) {
    let u = store.create_user(Id(1), "Bob", "h", 1).await.unwrap();
    assert_eq!((u.user_id, u.username.as_str()), (Id(1), "Bob"));
    for name in ["bob", "BOB", "Bob"] {
        let err = store.create_user(Id(2), name, "h", 1).await.unwrap_err();
        assert!(matches!(err, StoreError::Conflict(_)), "{name}: {err:?}");
    }
    store.create_user(Id(3), "bob2", "h", 1).await.unwrap();
    // The refused id has no account: nobody can add it as a contact.
    let err = store.add_contact(Id(3), Id(2), 1).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
}

async fn users_by_name_and_id(store: Store, _: &Backend) {
    store
        .create_user(Id(7), "Alice.B", "argon", 5)
        .await
        .unwrap();
    let rec = store.user_by_name("alice.b").await.unwrap().expect("found");
    assert_eq!(rec.id, Id(7));
    assert_eq!(rec.username, "Alice.B");
    assert_eq!(rec.password_hash, "argon");
    assert_eq!(
        store.user_by_name("ALICE.B").await.unwrap().unwrap().id,
        Id(7)
    );
    assert!(store.user_by_name("alice").await.unwrap().is_none());
    // By id: an existing account can be added as a contact and is listed with its name; an
    // unknown one cannot.
    let owner = user(&store, 9, "owner").await;
    store.add_contact(owner, Id(7), 1).await.unwrap();
    let err = store.add_contact(owner, Id(8), 1).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    // Ids use the whole u64 range.
    let big = u64::MAX - 3;
    store.create_user(Id(big), "big", "h", 1).await.unwrap();
    store.add_contact(owner, Id(big), 1).await.unwrap();
    let listed = store.contacts(owner).await.unwrap();
    assert_eq!(
        listed
            .iter()
            .map(|c| (c.user_id, c.username.as_str()))
            .collect::<Vec<_>>(),
        [(Id(7), "Alice.B"), (Id(big), "big")]
    );
    assert_eq!(
        store.user_by_name("big").await.unwrap().unwrap().id,
        Id(big)
    );
}

async fn devices_and_tokens(store: Store, _: &Backend) {
    let a = user(&store, 1, "alice").await;
    let d1 = device(&store, 10, a, 1).await;
    let d2 = device(&store, 11, a, 2).await;
    let s = store
        .device_by_token(token(1))
        .await
        .unwrap()
        .expect("live");
    assert_eq!((s.user_id, s.device_id, s.cursor), (a, d1, 0));
    assert!(store.device_by_token(token(9)).await.unwrap().is_none());
    store.revoke_device(d1, 5).await.unwrap();
    store.revoke_device(d1, 6).await.unwrap(); // idempotent
    assert!(store.device_by_token(token(1)).await.unwrap().is_none());
    let s = store
        .device_by_token(token(2))
        .await
        .unwrap()
        .expect("other device lives");
    assert_eq!(s.device_id, d2);
    store.revoke_device(Id(999), 6).await.unwrap(); // unknown: nothing to do
}

async fn devices_record_their_last_use(store: Store, _: &Backend) {
    let a = user(&store, 1, "alice").await;
    let b = user(&store, 2, "bob").await;
    let d1 = device(&store, 10, a, 1).await;
    store
        .create_device(NewDevice {
            id: Id(11),
            user_id: a,
            name: None,
            token_hash: token(2),
            now: 3,
        })
        .await
        .unwrap();
    let d2 = Id(11);
    let d3 = device(&store, 12, a, 3).await;
    device(&store, 20, b, 4).await;
    let s = store.device_by_token(token(2)).await.unwrap().unwrap();
    assert_eq!(
        s.last_active, 3,
        "a new device was last used when it was made"
    );

    let listed = store.devices(a).await.unwrap();
    assert_eq!(
        listed,
        [
            DeviceRecord {
                device_id: d1,
                name: Some("device 10".into()),
                created_at: 1,
                last_active: 1
            },
            DeviceRecord {
                device_id: d3,
                name: Some("device 12".into()),
                created_at: 1,
                last_active: 1
            },
            DeviceRecord {
                device_id: d2,
                name: None,
                created_at: 3,
                last_active: 3
            },
        ],
        "oldest first, this account's only"
    );

    store
        .touch_devices(vec![d1, d2, Id(999)], 50)
        .await
        .unwrap();
    store.touch_devices(vec![d1], 40).await.unwrap(); // never back
    store.touch_devices(Vec::new(), 60).await.unwrap();
    let active = |store: Store, t: u8| async move {
        store
            .device_by_token(token(t))
            .await
            .unwrap()
            .map(|s| s.last_active)
    };
    assert_eq!(active(store.clone(), 1).await, Some(50));
    assert_eq!(active(store.clone(), 2).await, Some(50));
    assert_eq!(active(store.clone(), 3).await, Some(1));
    assert_eq!(active(store.clone(), 4).await, Some(1), "bob's untouched");

    store.revoke_device(d3, 55).await.unwrap();
    store.touch_devices(vec![d3], 70).await.unwrap();
    assert_eq!(
        active(store.clone(), 3).await,
        None,
        "a touch revives nothing"
    );
    let listed: Vec<Id> = store
        .devices(a)
        .await
        .unwrap()
        .iter()
        .map(|d| d.device_id)
        .collect();
    assert_eq!(listed, [d1, d2], "revoked devices are not listed");
    assert!(store.devices(Id(999)).await.unwrap().is_empty());
}

async fn set_password_revokes_every_other_device(store: Store, _: &Backend) {
    let a = user(&store, 1, "alice").await;
    let b = user(&store, 2, "bob").await;
    let keep = device(&store, 10, a, 1).await;
    let d2 = device(&store, 11, a, 2).await;
    let d3 = device(&store, 12, a, 3).await;
    let revoked_before = device(&store, 13, a, 4).await;
    device(&store, 20, b, 5).await;
    store.revoke_device(revoked_before, 2).await.unwrap();

    let mut revoked = store.set_password(a, "new hash", keep, 9).await.unwrap();
    revoked.sort();
    assert_eq!(revoked, [d2, d3], "only the devices it revoked");
    let rec = store.user_by_id(a).await.unwrap().expect("found by id");
    assert_eq!(
        (rec.id, rec.username.as_str(), rec.password_hash.as_str()),
        (a, "alice", "new hash")
    );
    assert_eq!(
        store
            .user_by_name("alice")
            .await
            .unwrap()
            .unwrap()
            .password_hash,
        "new hash"
    );
    assert_eq!(
        store.user_by_id(b).await.unwrap().unwrap().password_hash,
        "hash",
        "another account keeps its password"
    );
    assert!(store.device_by_token(token(1)).await.unwrap().is_some());
    for t in [2, 3, 4] {
        assert!(store.device_by_token(token(t)).await.unwrap().is_none());
    }
    assert!(store.device_by_token(token(5)).await.unwrap().is_some());
    let listed: Vec<Id> = store
        .devices(a)
        .await
        .unwrap()
        .iter()
        .map(|d| d.device_id)
        .collect();
    assert_eq!(listed, [keep]);

    assert!(
        store
            .set_password(a, "again", keep, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let err = store
        .set_password(Id(999), "h", keep, 10)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    assert!(store.user_by_id(Id(999)).await.unwrap().is_none());
}

async fn append_assigns_seq_and_positions(store: Store, _: &Backend) {
    let a = user(&store, 1, "alice").await;
    let b = user(&store, 2, "bob").await;
    let c = user(&store, 3, "carol").await;
    let ab = conversation_id(a, b);
    let r1 = send(&store, 100, a, b, 10).await;
    assert!(!r1.duplicate);
    assert_eq!(r1.message.conversation, ab);
    assert_eq!((r1.message.seq, r1.sender_pos, r1.recipient_pos), (1, 1, 1));
    assert_eq!(r1.message.body, "body of c100");
    assert_eq!(
        (r1.message.from, r1.message.to, r1.message.ts),
        (a, Some(b), 10)
    );
    let r2 = send(&store, 101, b, a, 11).await;
    assert_eq!((r2.message.seq, r2.sender_pos, r2.recipient_pos), (2, 2, 2));
    assert_eq!(r2.message.conversation, ab);
    // Another conversation has its own seq; positions are per user.
    let r3 = send(&store, 102, c, a, 12).await;
    assert_eq!(r3.message.conversation, conversation_id(a, c));
    assert_eq!((r3.message.seq, r3.sender_pos, r3.recipient_pos), (1, 1, 3));
    let r4 = send(&store, 103, a, b, 13).await;
    assert_eq!((r4.message.seq, r4.sender_pos, r4.recipient_pos), (3, 4, 3));
    assert_eq!(store.stream_head(a).await.unwrap(), 4);
    assert_eq!(store.stream_head(b).await.unwrap(), 3);
    assert_eq!(store.stream_head(c).await.unwrap(), 1);
    assert_eq!(store.stream_head(Id(77)).await.unwrap(), 0);
    let stream = store.stream_after(a, 0, 100).await.unwrap();
    assert_eq!(positions(&stream), [1, 2, 3, 4]);
    let ids: Vec<u64> = stream.iter().map(|e| e.message.id.0).collect();
    assert_eq!(ids, [100, 101, 102, 103]);
    assert_eq!(stream[2].message, *r3.message);
}

async fn append_duplicate_returns_the_first_and_writes_nothing(store: Store, _: &Backend) {
    let a = user(&store, 1, "alice").await;
    let b = user(&store, 2, "bob").await;
    let first = store.append(msg(100, a, b, "same", 10)).await.unwrap();
    let mut again = msg(101, a, b, "same", 20);
    again.body = "different".into();
    let dup = store.append(again).await.unwrap();
    assert!(dup.duplicate);
    assert_eq!(*dup.message, *first.message);
    assert_eq!(dup.message.body, "body of same");
    assert_eq!((dup.sender_pos, dup.recipient_pos), (0, 0));
    assert_eq!(store.stream_head(a).await.unwrap(), 1);
    assert_eq!(store.stream_head(b).await.unwrap(), 1);
    let page = store
        .messages(a, &first.message.conversation, None, 50)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(page.messages.len(), 1);
    // The same client_id from another sender is another message.
    let other = store.append(msg(102, b, a, "same", 30)).await.unwrap();
    assert!(!other.duplicate);
    assert_eq!(other.message.seq, 2);
}

async fn append_to_unknown_recipient_is_not_found(store: Store, _: &Backend) {
    let a = user(&store, 1, "alice").await;
    let err = store.append(msg(100, a, Id(42), "x", 1)).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    // Nothing written: the sender's stream did not move, and the client_id is still free.
    assert_eq!(store.stream_head(a).await.unwrap(), 0);
    let b = user(&store, 42, "bob").await;
    let ok = store.append(msg(101, a, b, "x", 2)).await.unwrap();
    assert!(!ok.duplicate);
    assert_eq!((ok.message.seq, ok.sender_pos), (1, 1));
}

async fn append_to_a_blocker_is_forbidden(store: Store, _: &Backend) {
    let a = user(&store, 1, "alice").await;
    let b = user(&store, 2, "bob").await;
    store.set_block(b, a, true, 1).await.unwrap();
    let err = store.append(msg(100, a, b, "x", 1)).await.unwrap_err();
    assert!(matches!(err, StoreError::Forbidden(_)), "{err:?}");
    assert_eq!(store.stream_head(a).await.unwrap(), 0);
    assert_eq!(store.stream_head(b).await.unwrap(), 0);
    // A block stops the blocked user's sends only.
    let r = send(&store, 101, b, a, 2).await;
    assert_eq!(r.message.seq, 1);
    store.set_block(b, a, false, 3).await.unwrap();
    let r = store.append(msg(102, a, b, "x", 4)).await.unwrap();
    assert!(!r.duplicate);
    assert_eq!(r.message.seq, 2);
}

/// The first message of a conversation that repeats an earlier `client_id` (sent to someone
/// else) is that earlier message, and starts no conversation.
async fn duplicate_to_another_recipient_returns_the_first(store: Store, _: &Backend) {
    let a = user(&store, 1, "alice").await;
    let b = user(&store, 2, "bob").await;
    let c = user(&store, 3, "carol").await;
    let first = store.append(msg(100, a, b, "same", 10)).await.unwrap();
    let dup = store.append(msg(101, a, c, "same", 20)).await.unwrap();
    assert!(dup.duplicate);
    assert_eq!(*dup.message, *first.message);
    assert_eq!(store.stream_head(c).await.unwrap(), 0);
    let conversations = listed(&store, a).await;
    assert_eq!(conversations.len(), 1, "{conversations:?}");
    assert!(listed(&store, c).await.is_empty());
    // A repeat into an existing conversation with someone else is the first one too.
    send(&store, 102, c, a, 30).await;
    let dup = store.append(msg(103, a, c, "same", 40)).await.unwrap();
    assert!(dup.duplicate);
    assert_eq!(*dup.message, *first.message);
    assert_eq!(store.stream_head(c).await.unwrap(), 1);
}

/// A block placed after messages went through stops the next new message, while a retry of
/// one stored before the block still gets its original answer.
async fn a_block_after_sends_stops_the_next_but_not_retries(store: Store, _: &Backend) {
    let a = user(&store, 1, "alice").await;
    let b = user(&store, 2, "bob").await;
    let first = store.append(msg(100, a, b, "x", 1)).await.unwrap();
    store.set_block(b, a, true, 2).await.unwrap();
    let err = store.append(msg(101, a, b, "y", 3)).await.unwrap_err();
    assert!(matches!(err, StoreError::Forbidden(_)), "{err:?}");
    let retry = store.append(msg(102, a, b, "x", 4)).await.unwrap();
    assert!(retry.duplicate);
    assert_eq!(*retry.message, *first.message);
    assert_eq!(store.stream_head(b).await.unwrap(), 1);
}

async fn concurrent_appends_are_gapless(store: Store, _: &Backend) {
    const N: u64 = 50;
    let a = user(&store, 1, "alice").await;
    let b = user(&store, 2, "bob").await;
    // Both directions at once: each append locks both users (the PostgreSQL store must take
    // the locks in one order or these deadlock).
    let tasks: Vec<_> = (0..N)
        .map(|i| {
            let store = store.clone();
            let (from, to) = if i % 2 == 0 { (a, b) } else { (b, a) };
            tokio::spawn(async move {
                store
                    .append(msg(1000 + i, from, to, &format!("c{i}"), i as i64))
                    .await
            })
        })
        .collect();
    let mut seqs = Vec::new();
    for t in tasks {
        let r = t.await.unwrap().expect("append");
        assert!(!r.duplicate);
        seqs.push(r.message.seq);
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=N).collect::<Vec<_>>());
    for u in [a, b] {
        assert_eq!(store.stream_head(u).await.unwrap(), N);
        let stream = store.stream_after(u, 0, 1000).await.unwrap();
        assert_eq!(positions(&stream), (1..=N).collect::<Vec<_>>());
        let ids: HashSet<u64> = stream.iter().map(|e| e.message.id.0).collect();
        assert_eq!(ids.len(), N as usize);
        // Stream order is commit order; seq order is too, within one conversation.
        let stream_seqs: Vec<u64> = stream.iter().map(|e| e.message.seq).collect();
        assert_eq!(stream_seqs, (1..=N).collect::<Vec<_>>());
    }
}

async fn concurrent_duplicates_store_one_message(store: Store, _: &Backend) {
    const N: u64 = 20;
    let a = user(&store, 1, "alice").await;
    let b = user(&store, 2, "bob").await;
    let tasks: Vec<_> = (0..N)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move { store.append(msg(1000 + i, a, b, "once", i as i64)).await })
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap().expect("append"));
    }
    assert_eq!(results.iter().filter(|r| !r.duplicate).count(), 1);
    let first = results.iter().find(|r| !r.duplicate).unwrap();
    for r in &results {
        assert_eq!(*r.message, *first.message);
    }
    assert_eq!(first.message.seq, 1);
    assert_eq!(store.stream_head(a).await.unwrap(), 1);
    assert_eq!(store.stream_head(b).await.unwrap(), 1);
    assert_eq!(store.stream_after(b, 0, 100).await.unwrap().len(), 1);
}

async fn stream_after_pages_without_gaps(store: Store, _: &Backend) {
    let a = user(&store, 1, "alice").await;
    let b = user(&store, 2, "bob").await;
    let c = user(&store, 3, "carol").await;
    for i in 0..25u64 {
        let (from, to) = match i % 3 {
            0 => (a, b),
            1 => (c, a),
            _ => (a, c),
        };
        send(&store, 100 + i, from, to, i as i64).await;
    }
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let page = store.stream_after(a, after, 10).await.unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 10);
        after = page.last().unwrap().pos;
        all.extend(page);
    }
    assert_eq!(positions(&all), (1..=25).collect::<Vec<_>>());
    let ids: Vec<u64> = all.iter().map(|e| e.message.id.0).collect();
    assert_eq!(ids, (100..125).collect::<Vec<_>>());
    assert_eq!(
        positions(&store.stream_after(a, 7, 3).await.unwrap()),
        [8, 9, 10]
    );
    assert!(store.stream_after(a, 25, 10).await.unwrap().is_empty());
    assert!(store.stream_after(a, 1000, 10).await.unwrap().is_empty());
    assert!(store.stream_after(a, 0, 0).await.unwrap().is_empty());
    // Bob only has the a→b messages: positions 1..=9, gapless.
    let bob = store.stream_after(b, 0, 100).await.unwrap();
    assert_eq!(positions(&bob), (1..=9).collect::<Vec<_>>());
    assert!(bob.iter().all(|e| e.message.to == Some(b)));
}

async fn login_state_matches_the_separate_reads(store: Store, _: &Backend) {
    let a = user(&store, 1, "alice").await;
    let b = user(&store, 2, "bob").await;
    let c = user(&store, 3, "carol").await;
    let empty = store.login_state(c, 0, 10).await.unwrap();
    assert_eq!(
        (empty.head, empty.friends.len(), empty.entries.len()),
        (0, 0, 0)
    );
    assert!(!store.add_contact(a, b, 1).await.unwrap());
    assert!(store.add_contact(b, a, 1).await.unwrap(), "now mutual");
    for i in 0..5u64 {
        send(&store, 100 + i, a, b, i as i64).await;
    }
    let login = store.login_state(a, 2, 2).await.unwrap();
    assert_eq!(login.head, 5);
    assert_eq!(login.head, store.stream_head(a).await.unwrap());
    assert_eq!(login.friends, vec![b]);
    assert_eq!(login.friends, store.friends(a).await.unwrap());
    assert_eq!(positions(&login.entries), [3, 4]);
    assert_eq!(login.entries, store.stream_after(a, 2, 2).await.unwrap());
}

async fn set_cursor_is_monotonic_and_clamped(store: Store, _: &Backend) {
    let a = user(&store, 1, "alice").await;
    let b = user(&store, 2, "bob").await;
    let d = device(&store, 10, b, 1).await;
    for i in 0..5 {
        send(&store, 100 + i, a, b, i as i64).await;
    }
    let cursor = async || {
        store
            .device_by_token(token(1))
            .await
            .unwrap()
            .unwrap()
            .cursor
    };
    store.set_cursor(d, 3).await.unwrap();
    assert_eq!(cursor().await, 3);
    assert!(store.set_cursor(d, 1).await.unwrap().is_empty());
    assert_eq!(cursor().await, 3);
    store.set_cursor(d, 1000).await.unwrap();
    assert_eq!(cursor().await, 5);
    assert!(store.set_cursor(d, 5).await.unwrap().is_empty());
    assert!(store.set_cursor(Id(999), 3).await.unwrap().is_empty());
}

async fn delivered_marks_advance_once(store: Store, _: &Backend) {
    let a = user(&store, 1, "alice").await;
    let b = user(&store, 2, "bob").await;
    let c = user(&store, 3, "carol").await;
    let d1 = device(&store, 10, b, 1).await;
    let d2 = device(&store, 11, b, 2).await;
    let ab = conversation_id(a, b);
    let cb = conversation_id(c, b);
    befriend(&store, a, b).await; // c stays a stranger to b
    send(&store, 100, a, b, 1).await; // b pos 1, ab seq 1
    send(&store, 101, a, b, 2).await; // b pos 2, ab seq 2
    send(&store, 102, b, a, 3).await; // b pos 3 (sent by b: no delivered mark)
    send(&store, 103, c, b, 4).await; // b pos 4, cb seq 1
    send(&store, 104, a, b, 5).await; // b pos 5, ab seq 4

    let adv = store.set_cursor(d1, 2).await.unwrap();
    assert_eq!(
        adv,
        [DeliveredAdvance {
            conversation: ab.clone(),
            peer: a,
            seq: 2,
            friends: true,
        }]
    );
    // Another device acknowledging the same range advances nothing.
    assert!(store.set_cursor(d2, 2).await.unwrap().is_empty());
    // Position 3 is b's own message: nothing to deliver.
    assert!(store.set_cursor(d2, 3).await.unwrap().is_empty());
    let mut adv = store.set_cursor(d1, 5).await.unwrap();
    adv.sort_by(|x, y| x.conversation.cmp(&y.conversation));
    let mut want = vec![
        DeliveredAdvance {
            conversation: ab.clone(),
            peer: a,
            seq: 4,
            friends: true,
        },
        DeliveredAdvance {
            conversation: cb.clone(),
            peer: c,
            seq: 1,
            friends: false,
        },
    ];
    want.sort_by(|x, y| x.conversation.cmp(&y.conversation));
    assert_eq!(adv, want);
    assert!(store.set_cursor(d2, 5).await.unwrap().is_empty());

    let for_a = listed(&store, a).await;
    let s = for_a.iter().find(|s| s.conversation == ab).unwrap();
    assert_eq!(s.peer_delivered_seq, Some(4));
    let for_b = listed(&store, b).await;
    let s = for_b.iter().find(|s| s.conversation == ab).unwrap();
    assert_eq!(s.peer_delivered_seq, Some(0), "a acknowledged nothing");
}

async fn contacts_friends_and_blocks(store: Store, _: &Backend) {
    let a = user(&store, 1, "alice").await;
    // Ordered by username ignoring case, byte-wise: "b.y" < "b_x" < "cat".
    let bx = user(&store, 2, "b_x").await;
    let by = user(&store, 3, "B.y").await;
    let cat = user(&store, 4, "cat").await;
    assert!(!store.add_contact(a, bx, 1).await.unwrap());
    assert!(!store.add_contact(a, bx, 2).await.unwrap()); // idempotent
    assert!(!store.add_contact(a, cat, 1).await.unwrap());
    assert!(!store.add_contact(a, by, 1).await.unwrap());
    let list = store.contacts(a).await.unwrap();
    let names: Vec<&str> = list.iter().map(|c| c.username.as_str()).collect();
    assert_eq!(names, ["B.y", "b_x", "cat"]);
    assert!(
        list.iter()
            .all(|c| !c.mutual && !c.blocked && c.last_seen == 0)
    );
    assert!(store.friends(a).await.unwrap().is_empty());
    assert!(!store.are_friends(a, bx).await.unwrap(), "one way only");

    assert!(store.add_contact(bx, a, 3).await.unwrap(), "now mutual");
    assert_eq!(store.friends(a).await.unwrap(), [bx]);
    assert!(store.are_friends(a, bx).await.unwrap());
    assert!(store.are_friends(bx, a).await.unwrap());
    assert_eq!(store.friends(bx).await.unwrap(), [a]);
    let entry = store
        .contacts(a)
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.user_id == bx)
        .unwrap();
    assert!(entry.mutual);

    // A block either way hides presence (friends) but keeps the contact entries.
    store.set_block(bx, a, true, 4).await.unwrap();
    store.set_block(bx, a, true, 5).await.unwrap(); // idempotent
    assert!(store.blocked_between(a, bx).await.unwrap());
    assert!(store.blocked_between(bx, a).await.unwrap());
    assert!(!store.blocked_between(a, cat).await.unwrap());
    assert!(store.friends(a).await.unwrap().is_empty());
    assert!(!store.are_friends(a, bx).await.unwrap(), "a block ends it");
    assert!(store.friends(bx).await.unwrap().is_empty());
    let entry = store
        .contacts(a)
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.user_id == bx)
        .unwrap();
    assert!(entry.mutual && entry.blocked);
    store.set_block(bx, a, false, 6).await.unwrap();
    store.set_block(bx, a, false, 7).await.unwrap(); // idempotent
    assert!(!store.blocked_between(a, bx).await.unwrap());
    assert_eq!(store.friends(a).await.unwrap(), [bx]);
    assert!(store.are_friends(a, bx).await.unwrap());

    assert!(
        store.remove_contact(a, bx).await.unwrap(),
        "had been mutual"
    );
    assert!(
        !store.remove_contact(a, bx).await.unwrap(),
        "already removed"
    );
    assert!(!store.remove_contact(a, cat).await.unwrap(), "never mutual");
    assert!(store.friends(a).await.unwrap().is_empty());
    assert!(!store.are_friends(bx, a).await.unwrap());
    assert!(store.friends(bx).await.unwrap().is_empty());
    // bx still lists a; a no longer lists bx.
    assert_eq!(store.contacts(bx).await.unwrap()[0].user_id, a);
    assert!(!store.contacts(bx).await.unwrap()[0].mutual);

    let err = store.add_contact(a, Id(99), 1).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    let err = store.set_block(a, Id(99), true, 1).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
}

async fn mark_read_is_forward_only_and_clamped(store: Store, _: &Backend) {
    let a = user(&store, 1, "alice").await;
    let b = user(&store, 2, "bob").await;
    let c = user(&store, 3, "carol").await;
    let ab = conversation_id(a, b);
    befriend(&store, a, b).await;
    for i in 0..3 {
        send(&store, 100 + i, a, b, i as i64).await;
    }
    assert_eq!(
        store.mark_read(b, &ab, 2).await.unwrap(),
        Some(ReadAdvance {
            peer: a,
            seq: 2,
            friends: true
        })
    );
    assert_eq!(store.mark_read(b, &ab, 1).await.unwrap(), None);
    assert_eq!(store.mark_read(b, &ab, 2).await.unwrap(), None);
    assert_eq!(
        store.mark_read(b, &ab, 99).await.unwrap(),
        Some(ReadAdvance {
            peer: a,
            seq: 3,
            friends: true
        })
    );
    assert_eq!(store.mark_read(b, &ab, 99).await.unwrap(), None);
    assert_eq!(
        store.mark_read(a, &ab, 1).await.unwrap(),
        Some(ReadAdvance {
            peer: b,
            seq: 1,
            friends: true
        })
    );
    for (who, conv) in [
        (c, ab.clone()),
        (a, "bogus".to_owned()),
        (a, format!("{}-{}", b.0, a.0)),
        (a, conversation_id(a, c)), // well formed, but no message yet
    ] {
        let err = store.mark_read(who, &conv, 1).await.unwrap_err();
        assert!(matches!(err, StoreError::NotFound(_)), "{conv}: {err:?}");
    }
    let s = listed(&store, a).await.remove(0);
    assert_eq!((s.read_seq, s.peer_read_seq), (1, Some(3)));
    let s = listed(&store, b).await.remove(0);
    assert_eq!((s.read_seq, s.peer_read_seq), (3, Some(1)));
}

async fn conversations_newest_first_with_marks(store: Store, _: &Backend) {
    let a = user(&store, 1, "alice").await;
    let b = user(&store, 2, "bob").await;
    let c = user(&store, 3, "carol").await;
    let d = user(&store, 4, "dave").await;
    assert!(listed(&store, a).await.is_empty());
    send(&store, 100, a, b, 100).await;
    send(&store, 101, c, a, 200).await;
    let last = send(&store, 102, b, a, 300).await;
    let list = listed(&store, a).await;
    let order: Vec<Id> = list.iter().filter_map(|s| s.peer).collect();
    assert_eq!(order, [b, c]);
    let ab = &list[0];
    assert_eq!(ab.conversation, conversation_id(a, b));
    assert_eq!(ab.last_seq, 2);
    assert_eq!(ab.last_message.as_ref(), Some(&*last.message));
    assert_eq!(
        (ab.read_seq, ab.peer_read_seq, ab.peer_delivered_seq),
        (0, Some(0), Some(0))
    );
    // From the other side, the peer is a.
    let for_c = listed(&store, c).await;
    assert_eq!(for_c.len(), 1);
    assert_eq!(for_c[0].peer, Some(a));
    assert_eq!(for_c[0].last_seq, 1);
    // Equal times: the later message (higher id) first.
    send(&store, 103, d, a, 300).await;
    let order: Vec<Id> = listed(&store, a)
        .await
        .iter()
        .filter_map(|s| s.peer)
        .collect();
    assert_eq!(order, [d, b, c]);
    // Fields seen from each side (friends see each other's marks).
    befriend(&store, a, b).await;
    store.mark_read(b, &conversation_id(a, b), 2).await.unwrap();
    let dev = device(&store, 10, a, 1).await;
    store.set_cursor(dev, 100).await.unwrap();
    let for_b = listed(&store, b).await;
    assert_eq!(
        (
            for_b[0].read_seq,
            for_b[0].peer_read_seq,
            for_b[0].peer_delivered_seq
        ),
        (2, Some(0), Some(2))
    );
    let for_a = listed(&store, a).await;
    let ab = for_a.iter().find(|s| s.peer == Some(b)).unwrap();
    assert_eq!(
        (ab.read_seq, ab.peer_read_seq, ab.peer_delivered_seq),
        (0, Some(2), Some(0))
    );
}

/// A stranger learns nothing of when the other side was online or read: the advances say who
/// is a friend, and the list shows the peer's marks only to a friend, as of now.
async fn peer_marks_only_between_friends(store: Store, _: &Backend) {
    let a = user(&store, 1, "alice").await;
    let b = user(&store, 2, "bob").await;
    let d = device(&store, 10, b, 1).await;
    let ab = conversation_id(a, b);
    send(&store, 100, a, b, 1).await;
    let adv = store.set_cursor(d, 1).await.unwrap();
    assert_eq!(adv.len(), 1);
    assert!(!adv[0].friends, "strangers: {adv:?}");
    let read = store.mark_read(b, &ab, 1).await.unwrap().unwrap();
    assert!(!read.friends);
    let marks = |s: &ConversationSummary| {
        let peer = |m: Option<u64>| m.expect("a 1:1 conversation shows the peer's marks");
        (
            s.read_seq,
            peer(s.peer_read_seq),
            peer(s.peer_delivered_seq),
        )
    };
    assert_eq!(marks(&listed(&store, a).await[0]), (0, 0, 0));
    assert_eq!(
        marks(&listed(&store, b).await[0]),
        (1, 0, 0),
        "own mark shown"
    );

    // One way is not enough.
    store.add_contact(a, b, 2).await.unwrap();
    assert_eq!(marks(&listed(&store, a).await[0]), (0, 0, 0));
    // Friends: the marks are there at once, and new advances say so.
    store.add_contact(b, a, 3).await.unwrap();
    assert_eq!(marks(&listed(&store, a).await[0]), (0, 1, 1));
    send(&store, 101, a, b, 4).await;
    let adv = store.set_cursor(d, 2).await.unwrap();
    assert!(adv[0].friends, "{adv:?}");
    assert!(store.mark_read(b, &ab, 2).await.unwrap().unwrap().friends);
    assert_eq!(marks(&listed(&store, a).await[0]), (0, 2, 2));

    // A block hides them again, and so does the end of the friendship.
    store.set_block(a, b, true, 5).await.unwrap();
    assert_eq!(marks(&listed(&store, a).await[0]), (0, 0, 0));
    store.set_block(a, b, false, 6).await.unwrap();
    assert_eq!(marks(&listed(&store, a).await[0]), (0, 2, 2));
    store.remove_contact(b, a).await.unwrap();
    assert_eq!(marks(&listed(&store, a).await[0]), (0, 0, 0));
    send(&store, 102, a, b, 7).await;
    assert!(!store.set_cursor(d, 3).await.unwrap()[0].friends);
    assert!(!store.mark_read(b, &ab, 3).await.unwrap().unwrap().friends);
}

/// The list in pages: newest activity (last message id) first, each page from just below the
/// previous page's last message, `more` while older ones exist. A conversation that gets a
/// new message moves above the cursor: the pages after it neither repeat nor skip another.
async fn conversations_page_by_last_message(store: Store, _: &Backend) {
    let a = user(&store, 1, "alice").await;
    let mut peers = Vec::new();
    for i in 0..5 {
        let p = user(&store, 10 + i, &format!("peer{i}")).await;
        send(&store, 100 + i, p, a, 10).await; // same time: the id orders them
        peers.push(p);
    }
    let page = |before: Option<u64>, limit| {
        let store = store.clone();
        async move {
            let page = store.conversations(a, before.map(Id), limit).await.unwrap();
            let ids: Vec<u64> = page
                .conversations
                .iter()
                .map(|s| s.last_message.as_ref().unwrap().id.0)
                .collect();
            (ids, page.more)
        }
    };
    assert_eq!(page(None, 2).await, (vec![104, 103], true));
    // peer 4 (already listed) and peer 0 (not yet) write again while a pages.
    send(&store, 200, peers[4], a, 20).await;
    send(&store, 201, peers[0], a, 20).await;
    // Peer 0 moved above the cursor: what is left below it is this page, and no more.
    assert_eq!(page(Some(103), 2).await, (vec![102, 101], false));
    assert_eq!(page(Some(101), 2).await, (vec![], false));
    // From the top again, the moved ones come first.
    assert_eq!(page(None, 3).await, (vec![201, 200, 103], true));
    assert!(!page(None, 5).await.1, "exactly the rest: no more");
    assert_eq!(page(Some(1), 5).await, (vec![], false));
    assert_eq!(page(Some(i64::MAX as u64), 1).await, (vec![201], true));
    // Another user's list is its own.
    assert_eq!(
        store
            .conversations(peers[1], None, 10)
            .await
            .unwrap()
            .conversations
            .len(),
        1
    );
}

async fn messages_pages_backwards(store: Store, _: &Backend) {
    let a = user(&store, 1, "alice").await;
    let b = user(&store, 2, "bob").await;
    let c = user(&store, 3, "carol").await;
    let ab = conversation_id(a, b);
    for i in 0..7 {
        let (from, to) = if i % 2 == 0 { (a, b) } else { (b, a) };
        send(&store, 100 + i, from, to, i as i64).await;
    }
    let seqs =
        |p: &confab_protocol::MessagePage| p.messages.iter().map(|m| m.seq).collect::<Vec<_>>();
    let p = store.messages(a, &ab, None, 3).await.unwrap().unwrap();
    assert_eq!((seqs(&p), p.more), (vec![5, 6, 7], true));
    let p = store.messages(b, &ab, Some(5), 3).await.unwrap().unwrap();
    assert_eq!((seqs(&p), p.more), (vec![2, 3, 4], true));
    let p = store.messages(a, &ab, Some(2), 3).await.unwrap().unwrap();
    assert_eq!((seqs(&p), p.more), (vec![1], false));
    let p = store.messages(a, &ab, Some(1), 3).await.unwrap().unwrap();
    assert_eq!((seqs(&p), p.more), (vec![], false));
    let p = store.messages(a, &ab, None, 7).await.unwrap().unwrap();
    assert_eq!((seqs(&p), p.more), ((1..=7).collect::<Vec<_>>(), false));
    let p = store.messages(a, &ab, Some(4), 3).await.unwrap().unwrap();
    assert_eq!((seqs(&p), p.more), (vec![1, 2, 3], false));
    assert_eq!(p.messages[0].id, Id(100));
    assert_eq!(p.messages[0].body, "body of c100");
    // Not a participant, malformed, or no such conversation: all the same None.
    assert!(store.messages(c, &ab, None, 3).await.unwrap().is_none());
    assert!(store.messages(a, "nope", None, 3).await.unwrap().is_none());
    assert!(
        store
            .messages(a, &conversation_id(a, c), None, 3)
            .await
            .unwrap()
            .is_none()
    );
}

/// SQL holds `i64`; a client may send any `u64` as a bound or a cursor. Past `i64::MAX` such a
/// number still lies past every stored seq and position: it is never wrapped into a negative
/// one, which would lie before them all.
async fn numbers_past_i64_max_are_not_wrapped(store: Store, _: &Backend) {
    let a = user(&store, 1, "alice").await;
    let b = user(&store, 2, "bob").await;
    let d = device(&store, 10, b, 1).await;
    for (id, ts) in [(100, 1), (101, 2), (102, 3)] {
        send(&store, id, a, b, ts).await;
    }
    let ab = conversation_id(a, b);
    let unbounded = store.messages(a, &ab, None, 10).await.unwrap().unwrap();
    assert_eq!(unbounded.messages.len(), 3);
    for huge in [1 << 63, u64::MAX] {
        let page = store.messages(a, &ab, Some(huge), 10).await.unwrap();
        assert_eq!(page.as_ref(), Some(&unbounded), "before {huge}");
        let after = store.stream_after(b, huge, 10).await.unwrap();
        assert!(after.is_empty(), "after {huge}: {after:?}");
        let login = store.login_state(b, huge, 10).await.unwrap();
        assert_eq!(
            (login.head, login.entries.len()),
            (3, 0),
            "login after {huge}"
        );
    }
    let all = store.stream_after(b, 0, usize::MAX).await.unwrap();
    assert_eq!(positions(&all), [1, 2, 3]);
    let page = store.messages(a, &ab, None, usize::MAX).await.unwrap();
    assert_eq!(page.as_ref(), Some(&unbounded));
    // An ack or a read mark that far ahead stops at the head, at the last message.
    store.set_cursor(d, u64::MAX).await.unwrap();
    let session = store.device_by_token(token(1)).await.unwrap().unwrap();
    assert_eq!(session.cursor, 3);
    let read = store.mark_read(b, &ab, u64::MAX).await.unwrap();
    assert_eq!(read.map(|r| r.seq), Some(3));
}

async fn last_seen_is_kept(store: Store, _: &Backend) {
    let a = user(&store, 1, "alice").await;
    let b = user(&store, 2, "bob").await;
    store.add_contact(a, b, 1).await.unwrap();
    store.set_last_seen(b, 500).await.unwrap();
    assert_eq!(store.contacts(a).await.unwrap()[0].last_seen, 500);
    store.set_last_seen(b, 400).await.unwrap();
    assert_eq!(
        store.contacts(a).await.unwrap()[0].last_seen,
        500,
        "never goes back"
    );
    store.set_last_seen(b, 900).await.unwrap();
    assert_eq!(store.contacts(a).await.unwrap()[0].last_seen, 900);
    store.set_last_seen(Id(99), 900).await.unwrap(); // unknown user: nothing to do
}

async fn seed_accounts_writes_all_or_nothing(store: Store, _: &Backend) {
    let account = |i: u64, name: String| SeedAccount {
        user_id: Id(i),
        username: name,
        password_hash: "shared".into(),
        device_id: Id(10_000 + i),
        token_hash: {
            let mut t = [0u8; 32];
            t[..8].copy_from_slice(&i.to_be_bytes());
            t
        },
        now: 1,
    };
    let accounts: Vec<_> = (1..=1200).map(|i| account(i, format!("seed{i}"))).collect();
    store.seed_accounts(accounts.clone()).await.unwrap();
    for a in [&accounts[0], &accounts[599], &accounts[1199]] {
        let rec = store
            .user_by_name(&a.username)
            .await
            .unwrap()
            .expect("seeded");
        assert_eq!((rec.id, rec.password_hash.as_str()), (a.user_id, "shared"));
        let s = store
            .device_by_token(a.token_hash)
            .await
            .unwrap()
            .expect("seeded device");
        assert_eq!(
            (s.user_id, s.device_id, s.cursor, s.last_active),
            (a.user_id, a.device_id, 0, a.now)
        );
    }
    // One taken name (in another case) rejects the whole call.
    let batch = vec![
        account(5000, "fresh1".into()),
        account(5001, "SEED7".into()),
        account(5002, "fresh2".into()),
    ];
    let err = store.seed_accounts(batch).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert!(store.user_by_name("fresh1").await.unwrap().is_none());
    assert!(store.user_by_name("fresh2").await.unwrap().is_none());
    store.seed_accounts(Vec::new()).await.unwrap();
}

async fn data_survives_reopen(store: Store, backend: &Backend) {
    let a = user(&store, 1, "alice").await;
    let b = user(&store, 2, "bob").await;
    let c = user(&store, 3, "carol").await;
    let d = device(&store, 10, b, 1).await;
    store.add_contact(a, b, 1).await.unwrap();
    store.add_contact(b, a, 1).await.unwrap();
    store.set_block(a, c, true, 1).await.unwrap();
    let sent = send(&store, 100, b, a, 1).await;
    send(&store, 101, a, b, 2).await;
    store.set_cursor(d, 2).await.unwrap();
    store
        .mark_read(a, &sent.message.conversation, 1)
        .await
        .unwrap();
    store.set_last_seen(b, 77).await.unwrap();
    store.close().await;
    let err = store.user_by_name("alice").await.unwrap_err();
    assert!(
        matches!(err, StoreError::Unavailable(_)),
        "after close: {err:?}"
    );

    let store = backend.open().await;
    assert_eq!(store.user_by_name("ALICE").await.unwrap().unwrap().id, a);
    assert_eq!(
        store
            .device_by_token(token(1))
            .await
            .unwrap()
            .unwrap()
            .cursor,
        2
    );
    assert_eq!(store.stream_head(a).await.unwrap(), 2);
    assert_eq!(
        positions(&store.stream_after(b, 0, 10).await.unwrap()),
        [1, 2]
    );
    let contact = &store.contacts(a).await.unwrap()[0];
    assert_eq!(
        (contact.user_id, contact.blocked, contact.last_seen),
        (b, false, 77)
    );
    assert!(store.blocked_between(c, a).await.unwrap());
    let s = &listed(&store, b).await[0];
    assert_eq!((s.last_seq, s.peer_read_seq, s.read_seq), (2, Some(1), 0));
    // Idempotency holds across restarts, and seq continues.
    let dup = store.append(msg(999, b, a, "c100", 5)).await.unwrap();
    assert!(dup.duplicate);
    assert_eq!(*dup.message, *sent.message);
    let next = send(&store, 102, b, a, 6).await;
    assert_eq!(
        (next.message.seq, next.sender_pos, next.recipient_pos),
        (3, 3, 3)
    );
    store.close().await;
}

async fn check_succeeds(store: Store, _: &Backend) {
    store.check().await.expect("check");
    store.check().await.expect("check again");
}

//! The `Push` contract of the message store: one suite, written once against
//! `Arc<dyn MessageStore>` and run for every backend, as `store_contract.rs` does for the rest
//! (PostgreSQL when `CONFAB_TEST_POSTGRES` holds a URL, each test in a fresh database; without
//! it the PostgreSQL tests say they are skipped and pass). One PostgreSQL-only test runs two
//! stores on one database, as two nodes do.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use confab_protocol::{Id, PushSubscription, WebPushKeys, conversation_id, group_conversation_id};
use confab_server::config::SqliteConfig;
use confab_server::store::groups::{ChangeGroup, GroupChange, NewGroup, NewGroupMessage};
use confab_server::store::postgres::PostgresStore;
use confab_server::store::push::{
    Backlog, Due, DueKind, Intent, NewPending, OutboxEntry, Outcome, PendingKind, PushTarget,
    Settled,
};
use confab_server::store::sqlite::{SqliteMetrics, SqliteStore};
use confab_server::store::{Appended, MessageStore, NewDevice, NewMessage, StoreError};
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
    subscriptions_are_one_per_device,
    a_revoked_device_cannot_subscribe,
    revoking_devices_deletes_their_subscriptions_and_pending_rows,
    a_message_writes_an_intent_only_for_a_subscribed_recipient,
    a_repeated_client_id_writes_no_second_intent,
    a_group_message_targets_the_members_at_its_seq,
    a_read_writes_an_intent_for_the_readers_other_devices,
    claims_are_leases,
    settling_makes_and_coalesces_pending_rows,
    a_read_clears_a_notification_never_shown,
    a_read_after_a_shown_notification_is_sent_as_a_clear,
    max_pending_bounds_new_rows,
    a_due_notification_carries_its_payloads_data,
    a_due_group_notification_counts_the_members_unread,
    finishing_records_each_outcome,
    a_message_coalesced_in_flight_is_sent_after_it,
    gone_deletes_only_the_subscription_claimed,
    the_first_vapid_key_wins,
    the_backlog_counts_what_waits,
);

type Store = Arc<dyn MessageStore>;

const NOW: i64 = 1_000_000;
const LEASE: Duration = Duration::from_secs(60);
const LEASE_MS: i64 = 60_000;
const MAX: u64 = 1000;

/// Users 1..=n, named `user<i>`.
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

/// Users 1 and 2.
async fn pair(store: &Store) -> (Id, Id) {
    let u = users(store, 2).await;
    (u[0], u[1])
}

async fn device(store: &Store, id: u64, user: Id) -> Id {
    store
        .create_device(NewDevice {
            id: Id(id),
            user_id: user,
            name: None,
            token_hash: [u8::try_from(id % 250).unwrap(); 32],
            now: 1,
        })
        .await
        .unwrap();
    Id(id)
}

fn webpush(n: u64) -> PushSubscription {
    PushSubscription::Webpush {
        endpoint: format!("https://push.example/{n}"),
        keys: WebPushKeys {
            p256dh: "BNcR".into(),
            auth: "tBHI".into(),
        },
        preview: true,
    }
}

/// A device of `user`, subscribed with subscription id `10 * id`.
async fn subscribed(store: &Store, id: u64, user: Id) -> Id {
    let d = device(store, id, user).await;
    store
        .set_subscription(user, d, Id(10 * id), &webpush(id), 1)
        .await
        .unwrap();
    d
}

fn target(user: Id, device: Id) -> PushTarget {
    PushTarget { user, device }
}

async fn send(store: &Store, id: u64, from: Id, to: Id) -> Appended {
    store
        .append(NewMessage {
            id: Id(id),
            from,
            to,
            client_id: format!("c{id}"),
            body: format!("body {id}"),
            ts: NOW,
        })
        .await
        .unwrap()
}

async fn claim(store: &Store, now: i64) -> Vec<OutboxEntry> {
    store.claim_outbox(now, LEASE, 100).await.unwrap()
}

async fn claim_due(store: &Store, now: i64) -> Vec<Due> {
    store.claim_due(now, LEASE, 100).await.unwrap()
}

/// Claims the outbox and settles every entry for all its targets (no device has a socket).
async fn expand(store: &Store, now: i64) -> Settled {
    let entries = claim(store, now).await;
    let mut pending = Vec::new();
    for e in &entries {
        let kind = match e.intent {
            Intent::Message { message, seq, .. } => PendingKind::Message { message, seq },
            Intent::Read { seq, .. } => PendingKind::Read { seq },
        };
        for t in &e.targets {
            pending.push(NewPending {
                target: *t,
                conversation: e.conversation.clone(),
                kind,
                created_at: e.created_at,
            });
        }
    }
    let done = entries.iter().map(|e| e.id).collect();
    store.settle_outbox(done, pending, MAX, now).await.unwrap()
}

/// A pending notification for `device` of `user`, settled directly.
async fn settle_one(
    store: &Store,
    user: Id,
    device: Id,
    conversation: &str,
    kind: PendingKind,
    max: u64,
) -> Settled {
    let p = NewPending {
        target: target(user, device),
        conversation: conversation.to_owned(),
        kind,
        created_at: NOW,
    };
    store
        .settle_outbox(vec![], vec![p], max, NOW)
        .await
        .unwrap()
}

fn message(a: &Appended) -> PendingKind {
    PendingKind::Message {
        message: a.message.id,
        seq: a.message.seq,
    }
}

fn queued(n: u64) -> Settled {
    Settled {
        queued: n,
        ..Settled::default()
    }
}

fn coalesced(n: u64) -> Settled {
    Settled {
        coalesced: n,
        ..Settled::default()
    }
}

fn seq_of(due: &Due) -> u64 {
    match due.what {
        DueKind::Message { seq, .. } | DueKind::Read { seq } => seq,
    }
}

fn is_read(due: &Due) -> bool {
    matches!(due.what, DueKind::Read { .. })
}

// ---------------------------------------------------------------------------------------------
// Subscriptions

async fn subscriptions_are_one_per_device(store: Store) {
    let (a, _) = pair(&store).await;
    let (d1, d2) = (device(&store, 10, a).await, device(&store, 11, a).await);
    assert_eq!(store.subscription(d1).await.unwrap(), None);
    store
        .set_subscription(a, d1, Id(100), &webpush(1), 1)
        .await
        .unwrap();
    assert_eq!(store.subscription(d1).await.unwrap(), Some(webpush(1)));
    assert_eq!(store.subscription(d2).await.unwrap(), None);
    let apns = PushSubscription::Apns {
        token: "abc".into(),
        preview: false,
    };
    store
        .set_subscription(a, d1, Id(101), &apns, 2)
        .await
        .unwrap();
    assert_eq!(store.subscription(d1).await.unwrap(), Some(apns));
    store.delete_subscription(d1).await.unwrap();
    assert_eq!(store.subscription(d1).await.unwrap(), None);
    store.delete_subscription(d1).await.unwrap();
}

async fn a_revoked_device_cannot_subscribe(store: Store) {
    let (a, b) = pair(&store).await;
    let d = device(&store, 10, a).await;
    store.revoke_device(d, 5).await.unwrap();
    let err = store.set_subscription(a, d, Id(100), &webpush(1), 6).await;
    assert!(matches!(err, Err(StoreError::NotFound(_))), "{err:?}");
    // Nor one that is not the user's, or does not exist.
    let other = device(&store, 11, a).await;
    let err = store
        .set_subscription(b, other, Id(101), &webpush(1), 6)
        .await;
    assert!(matches!(err, Err(StoreError::NotFound(_))), "{err:?}");
    let err = store
        .set_subscription(a, Id(99), Id(102), &webpush(1), 6)
        .await;
    assert!(matches!(err, Err(StoreError::NotFound(_))), "{err:?}");
    assert_eq!(store.subscription(d).await.unwrap(), None);
    assert_eq!(store.subscription(other).await.unwrap(), None);
}

async fn revoking_devices_deletes_their_subscriptions_and_pending_rows(store: Store) {
    let (a, b) = pair(&store).await;
    let d: Vec<Id> = futures::future::join_all((10..14).map(|i| subscribed(&store, i, a))).await;
    send(&store, 100, b, a).await;
    assert_eq!(expand(&store, NOW).await, queued(4));

    store.revoke_device(d[0], 5).await.unwrap();
    let revoked = store.set_password(a, "new", d[1], 6).await.unwrap();
    assert_eq!(
        HashSet::<Id>::from_iter(revoked),
        HashSet::from([d[2], d[3]])
    );
    assert_eq!(store.subscription(d[0]).await.unwrap(), None);
    assert_eq!(store.subscription(d[1]).await.unwrap(), Some(webpush(11)));
    assert_eq!(store.subscription(d[2]).await.unwrap(), None);
    let due = claim_due(&store, NOW).await;
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].target, target(a, d[1]));
}

// ---------------------------------------------------------------------------------------------
// Intents

async fn a_message_writes_an_intent_only_for_a_subscribed_recipient(store: Store) {
    let (a, b) = pair(&store).await;
    device(&store, 20, b).await;
    assert!(!send(&store, 100, a, b).await.notify);
    // The sender's own subscription is no reason.
    let a1 = subscribed(&store, 10, a).await;
    assert!(!send(&store, 101, a, b).await.notify);
    assert!(claim(&store, NOW).await.is_empty());

    let b2 = subscribed(&store, 21, b).await;
    let b3 = subscribed(&store, 22, b).await;
    let sent = send(&store, 102, a, b).await;
    assert!(sent.notify);
    let entries = claim(&store, NOW).await;
    assert_eq!(
        entries,
        [OutboxEntry {
            id: entries[0].id,
            conversation: conversation_id(a, b),
            intent: Intent::Message {
                message: Id(102),
                seq: 3,
                sender: a,
            },
            created_at: NOW,
            targets: vec![target(b, b2), target(b, b3)],
        }]
    );
    // Sent the other way, the targets are the other side's, never the sender's.
    assert!(send(&store, 103, b, a).await.notify);
    let entries = claim(&store, NOW).await;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].targets, [target(a, a1)]);
}

async fn a_repeated_client_id_writes_no_second_intent(store: Store) {
    let (a, b) = pair(&store).await;
    subscribed(&store, 20, b).await;
    let first = send(&store, 100, a, b).await;
    assert!(first.notify && !first.duplicate);
    let again = send(&store, 101, a, b).await;
    assert!(again.notify);
    let repeat = store
        .append(NewMessage {
            id: Id(102),
            from: a,
            to: b,
            client_id: "c100".into(),
            body: "body 100".into(),
            ts: NOW,
        })
        .await
        .unwrap();
    assert!(repeat.duplicate && !repeat.notify);
    assert_eq!(store.push_backlog().await.unwrap().outbox, 2);
    let ids: Vec<Id> = claim(&store, NOW)
        .await
        .iter()
        .map(|e| match e.intent {
            Intent::Message { message, .. } => message,
            Intent::Read { .. } => panic!("a read"),
        })
        .collect();
    assert_eq!(ids, [Id(100), Id(101)]);
}

const GROUP: Id = Id(1000);

async fn a_group_message_targets_the_members_at_its_seq(store: Store) {
    let u = users(&store, 4).await;
    let d: Vec<Id> = futures::future::join_all(
        u.iter()
            .enumerate()
            .map(|(i, user)| subscribed(&store, 10 + u64::try_from(i).unwrap(), *user)),
    )
    .await;
    let (_, created) = store
        .create_group(NewGroup {
            group: GROUP,
            message_id: Id(1001),
            creator: u[0],
            title: "team".into(),
            members: vec![u[1], u[2]],
            now: NOW,
            max_members: 10,
            max_groups: 10,
        })
        .await
        .unwrap();
    // Membership changes are system messages: no intent.
    assert!(!created.notify);
    let send = |id: u64, from: Id| NewGroupMessage {
        id: Id(id),
        group: GROUP,
        from,
        client_id: format!("g{id}"),
        body: format!("body {id}"),
        ts: NOW,
    };
    let first = store.append_group(send(1100, u[0])).await.unwrap();
    assert!(first.notify);
    for (ids, change) in [
        ([Id(1200), Id(1201)], GroupChange::Add(u[3])),
        ([Id(1202), Id(1203)], GroupChange::Remove(u[2])),
    ] {
        let ch = ChangeGroup {
            group: GROUP,
            actor: u[0],
            change,
            message_ids: ids,
            now: NOW,
            max_members: 10,
            max_groups: 10,
        };
        assert!(
            store
                .change_group(ch)
                .await
                .unwrap()
                .iter()
                .all(|m| !m.notify)
        );
    }
    let second = store.append_group(send(1101, u[1])).await.unwrap();
    assert!(second.notify);
    let repeat = store.append_group(send(1101, u[1])).await.unwrap();
    assert!(repeat.duplicate && !repeat.notify);

    // Claimed after the changes, each message still goes to its own seq's members.
    let entries = claim(&store, NOW).await;
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0].conversation, group_conversation_id(GROUP));
    assert_eq!(
        entries[0].intent,
        Intent::Message {
            message: Id(1100),
            seq: first.message.seq,
            sender: u[0],
        }
    );
    assert_eq!(entries[0].targets, [target(u[1], d[1]), target(u[2], d[2])]);
    assert_eq!(entries[1].targets, [target(u[0], d[0]), target(u[3], d[3])]);
}

async fn a_read_writes_an_intent_for_the_readers_other_devices(store: Store) {
    let (a, b) = pair(&store).await;
    let conversation = conversation_id(a, b);
    let a1 = subscribed(&store, 10, a).await;
    subscribed(&store, 20, b).await;
    // Its only subscribed device is the one it read on: nobody to clear.
    store
        .record_read(a, a1, &conversation, 3, NOW)
        .await
        .unwrap();
    let a2 = device(&store, 11, a).await;
    store
        .record_read(a, a2, &conversation, 3, NOW)
        .await
        .unwrap();
    let entries = claim(&store, NOW).await;
    assert_eq!(entries.len(), 1);
    assert_eq!(
        (
            &entries[0].conversation,
            &entries[0].intent,
            entries[0].created_at
        ),
        (
            &conversation,
            &Intent::Read {
                user: a,
                device: a2,
                seq: 3
            },
            NOW
        )
    );
    assert_eq!(entries[0].targets, [target(a, a1)]);
}

// ---------------------------------------------------------------------------------------------
// Claims and the settle's rules

async fn claims_are_leases(store: Store) {
    let (a, b) = pair(&store).await;
    subscribed(&store, 20, b).await;
    send(&store, 100, a, b).await;
    send(&store, 101, a, b).await;
    // Oldest first, up to the limit.
    let first = store.claim_outbox(NOW, LEASE, 1).await.unwrap();
    assert_eq!(first.len(), 1);
    let second = store.claim_outbox(NOW, LEASE, 1).await.unwrap();
    assert_eq!(second.len(), 1);
    assert!(first[0].id < second[0].id);
    assert!(claim(&store, NOW + LEASE_MS - 1).await.is_empty());
    let again = claim(&store, NOW + LEASE_MS).await;
    assert_eq!(
        again.iter().map(|e| e.id).collect::<Vec<_>>(),
        [first[0].id, second[0].id]
    );

    let later = NOW + LEASE_MS;
    store
        .settle_outbox(
            vec![first[0].id],
            vec![NewPending {
                target: first[0].targets[0],
                conversation: first[0].conversation.clone(),
                kind: PendingKind::Message {
                    message: Id(100),
                    seq: 1,
                },
                created_at: NOW,
            }],
            MAX,
            later,
        )
        .await
        .unwrap();
    assert_eq!(claim_due(&store, later).await.len(), 1);
    assert!(claim_due(&store, later + LEASE_MS - 1).await.is_empty());
    assert_eq!(claim_due(&store, later + LEASE_MS).await.len(), 1);
}

async fn settling_makes_and_coalesces_pending_rows(store: Store) {
    let (a, b) = pair(&store).await;
    let b1 = subscribed(&store, 20, b).await;
    let c = conversation_id(a, b);
    let mut m = Vec::new();
    for id in 100..104 {
        m.push(send(&store, id, a, b).await);
    }
    assert_eq!(
        settle_one(&store, b, b1, &c, message(&m[1]), MAX).await,
        queued(1)
    );
    assert_eq!(
        settle_one(&store, b, b1, &c, message(&m[0]), MAX).await,
        coalesced(1)
    );
    assert_eq!(
        settle_one(&store, b, b1, &c, message(&m[2]), MAX).await,
        coalesced(1)
    );
    // Several in one batch apply in order.
    let batch = [&m[3], &m[1]]
        .iter()
        .map(|x| NewPending {
            target: target(b, b1),
            conversation: c.clone(),
            kind: message(x),
            created_at: NOW,
        })
        .collect();
    let settled = store.settle_outbox(vec![], batch, MAX, NOW).await.unwrap();
    assert_eq!(settled, coalesced(2));
    let due = claim_due(&store, NOW).await;
    assert_eq!(due.len(), 1);
    assert_eq!(seq_of(&due[0]), m[3].message.seq);
    // The settled outbox rows are gone.
    expand(&store, NOW).await;
    assert_eq!(store.push_backlog().await.unwrap().outbox, 0);
}

async fn a_read_clears_a_notification_never_shown(store: Store) {
    let (a, b) = pair(&store).await;
    let b1 = subscribed(&store, 20, b).await;
    let c = conversation_id(a, b);
    let m1 = send(&store, 100, a, b).await;
    let m2 = send(&store, 101, a, b).await;
    settle_one(&store, b, b1, &c, message(&m2), MAX).await;
    // A read below the pending message changes nothing.
    let read = |seq| PendingKind::Read { seq };
    assert_eq!(
        settle_one(&store, b, b1, &c, read(m1.message.seq), MAX).await,
        coalesced(1)
    );
    let cleared = settle_one(&store, b, b1, &c, read(m2.message.seq), MAX).await;
    assert_eq!(
        cleared,
        Settled {
            cleared: 1,
            ..Settled::default()
        }
    );
    assert!(claim_due(&store, NOW).await.is_empty());
    assert_eq!(store.push_backlog().await.unwrap().pending, 0);
    // Nothing pending or shown: a read is nothing to do.
    assert_eq!(
        settle_one(&store, b, b1, &c, read(m2.message.seq), MAX).await,
        Settled::default()
    );
}

async fn a_read_after_a_shown_notification_is_sent_as_a_clear(store: Store) {
    let (a, b) = pair(&store).await;
    let b1 = subscribed(&store, 20, b).await;
    let c = conversation_id(a, b);
    let m1 = send(&store, 100, a, b).await;
    settle_one(&store, b, b1, &c, message(&m1), MAX).await;
    let due = claim_due(&store, NOW).await;
    store.finish(&due[0], Outcome::Sent, NOW).await.unwrap();
    assert!(claim_due(&store, NOW + LEASE_MS).await.is_empty());

    let read = PendingKind::Read {
        seq: m1.message.seq,
    };
    assert_eq!(settle_one(&store, b, b1, &c, read, MAX).await, queued(1));
    let due = claim_due(&store, NOW).await;
    assert_eq!(due.len(), 1);
    assert!(is_read(&due[0]));
    assert_eq!(seq_of(&due[0]), m1.message.seq);
    // A sent clear leaves nothing: the next read has nothing to clear.
    store.finish(&due[0], Outcome::Sent, NOW).await.unwrap();
    assert_eq!(store.push_backlog().await.unwrap().pending, 0);
    assert_eq!(
        settle_one(&store, b, b1, &c, read, MAX).await,
        Settled::default()
    );

    // A read that meets a message in flight (it may be showing by now) becomes a clear too.
    let m2 = send(&store, 101, a, b).await;
    settle_one(&store, b, b1, &c, message(&m2), MAX).await;
    let in_flight = claim_due(&store, NOW).await;
    let read = PendingKind::Read {
        seq: m2.message.seq,
    };
    assert_eq!(settle_one(&store, b, b1, &c, read, MAX).await, coalesced(1));
    store
        .finish(&in_flight[0], Outcome::Sent, NOW)
        .await
        .unwrap();
    let due = claim_due(&store, NOW).await;
    assert_eq!(due.len(), 1);
    assert!(is_read(&due[0]));
}

async fn max_pending_bounds_new_rows(store: Store) {
    let (a, b) = pair(&store).await;
    let d: Vec<Id> = futures::future::join_all((20..23).map(|i| subscribed(&store, i, b))).await;
    let c = conversation_id(a, b);
    let m1 = send(&store, 100, a, b).await;
    let m2 = send(&store, 101, a, b).await;
    let batch = |m: &Appended| {
        d.iter()
            .map(|device| NewPending {
                target: target(b, *device),
                conversation: c.clone(),
                kind: message(m),
                created_at: NOW,
            })
            .collect::<Vec<_>>()
    };
    let settled = store
        .settle_outbox(vec![], batch(&m1), 2, NOW)
        .await
        .unwrap();
    assert_eq!(
        settled,
        Settled {
            queued: 2,
            dropped_full: 1,
            ..Settled::default()
        }
    );
    // At the bound, rows that exist still take newer messages.
    let settled = store
        .settle_outbox(vec![], batch(&m2), 2, NOW)
        .await
        .unwrap();
    assert_eq!(
        settled,
        Settled {
            coalesced: 2,
            dropped_full: 1,
            ..Settled::default()
        }
    );
    // Shown rows are not counted.
    for due in claim_due(&store, NOW).await {
        store.finish(&due, Outcome::Sent, NOW).await.unwrap();
    }
    assert_eq!(
        settle_one(&store, b, d[2], &c, message(&m2), 2).await,
        queued(1)
    );
}

// ---------------------------------------------------------------------------------------------
// Delivery

async fn a_due_notification_carries_its_payloads_data(store: Store) {
    let (a, b) = pair(&store).await;
    let b1 = subscribed(&store, 20, b).await;
    let c = conversation_id(a, b);
    for id in 100..103 {
        send(&store, id, a, b).await;
    }
    store.mark_read(b, &c, 1).await.unwrap();
    let m = PendingKind::Message {
        message: Id(102),
        seq: 3,
    };
    settle_one(&store, b, b1, &c, m, MAX).await;
    let due = claim_due(&store, NOW).await;
    assert_eq!(
        due,
        [Due {
            target: target(b, b1),
            conversation: c.clone(),
            version: due[0].version,
            attempts: 0,
            created_at: NOW,
            subscription_id: Id(200),
            subscription: webpush(20),
            what: DueKind::Message {
                id: Id(102),
                seq: 3,
                from: a,
                from_username: "user1".into(),
                body: "body 102".into(),
                unread: 2,
            },
        }]
    );
}

async fn a_due_group_notification_counts_the_members_unread(store: Store) {
    let u = users(&store, 2).await;
    let d = subscribed(&store, 20, u[1]).await;
    store
        .create_group(NewGroup {
            group: GROUP,
            message_id: Id(1001),
            creator: u[0],
            title: "team".into(),
            members: vec![u[1]],
            now: NOW,
            max_members: 10,
            max_groups: 10,
        })
        .await
        .unwrap();
    for id in 1100..1103 {
        store
            .append_group(NewGroupMessage {
                id: Id(id),
                group: GROUP,
                from: u[0],
                client_id: format!("g{id}"),
                body: format!("body {id}"),
                ts: NOW,
            })
            .await
            .unwrap();
    }
    // seq 1 is the creation, 2..=4 the messages; read up to 2.
    store.mark_group_read(u[1], GROUP, 2).await.unwrap();
    let c = group_conversation_id(GROUP);
    let m = PendingKind::Message {
        message: Id(1102),
        seq: 4,
    };
    settle_one(&store, u[1], d, &c, m, MAX).await;
    let due = claim_due(&store, NOW).await;
    assert_eq!(due.len(), 1);
    assert_eq!(
        due[0].what,
        DueKind::Message {
            id: Id(1102),
            seq: 4,
            from: u[0],
            from_username: "user1".into(),
            body: "body 1102".into(),
            unread: 2,
        }
    );
}

async fn finishing_records_each_outcome(store: Store) {
    let (a, b) = pair(&store).await;
    let b1 = subscribed(&store, 20, b).await;
    let c = conversation_id(a, b);
    let m1 = send(&store, 100, a, b).await;
    settle_one(&store, b, b1, &c, message(&m1), MAX).await;

    // Retry: not due before its time, then due with its count.
    let due = claim_due(&store, NOW).await;
    let retry = Outcome::Retry {
        at: NOW + 5_000,
        attempts: 1,
    };
    store.finish(&due[0], retry, NOW).await.unwrap();
    assert!(claim_due(&store, NOW + 4_999).await.is_empty());
    let due = claim_due(&store, NOW + 5_000).await;
    assert_eq!(due[0].attempts, 1);

    // Sent: kept as shown, not due again, out of the backlog.
    store.finish(&due[0], Outcome::Sent, NOW).await.unwrap();
    assert!(claim_due(&store, NOW + 10 * LEASE_MS).await.is_empty());
    assert_eq!(store.push_backlog().await.unwrap().pending, 0);

    // Dropped: the row goes; a read then has nothing to clear.
    let m2 = send(&store, 101, a, b).await;
    assert_eq!(
        settle_one(&store, b, b1, &c, message(&m2), MAX).await,
        queued(1)
    );
    let due = claim_due(&store, NOW).await;
    assert_eq!(due[0].attempts, 0);
    store.finish(&due[0], Outcome::Dropped, NOW).await.unwrap();
    assert!(claim_due(&store, NOW + LEASE_MS).await.is_empty());
    let read = PendingKind::Read {
        seq: m2.message.seq,
    };
    assert_eq!(
        settle_one(&store, b, b1, &c, read, MAX).await,
        Settled::default()
    );
}

async fn a_message_coalesced_in_flight_is_sent_after_it(store: Store) {
    let (a, b) = pair(&store).await;
    let b1 = subscribed(&store, 20, b).await;
    let c = conversation_id(a, b);
    let m1 = send(&store, 100, a, b).await;
    let m2 = send(&store, 101, a, b).await;
    settle_one(&store, b, b1, &c, message(&m1), MAX).await;
    let in_flight = claim_due(&store, NOW).await;
    // Not coalesced: the one in flight goes anyway, and this one after it.
    assert_eq!(
        settle_one(&store, b, b1, &c, message(&m2), MAX).await,
        Settled {
            queued: 1,
            ..Settled::default()
        }
    );
    // Still leased while in flight.
    assert!(claim_due(&store, NOW).await.is_empty());
    store
        .finish(&in_flight[0], Outcome::Sent, NOW)
        .await
        .unwrap();
    let next = claim_due(&store, NOW).await;
    assert_eq!(next.len(), 1);
    assert_eq!(seq_of(&next[0]), m2.message.seq);
    assert_ne!(next[0].version, in_flight[0].version);
    // A Retry of an old version only releases the row too: the newer one is due at once.
    let m3 = send(&store, 102, a, b).await;
    settle_one(&store, b, b1, &c, message(&m3), MAX).await;
    let retry = Outcome::Retry {
        at: NOW + 5_000,
        attempts: 1,
    };
    store.finish(&next[0], retry, NOW).await.unwrap();
    let last = claim_due(&store, NOW).await;
    assert_eq!(last.len(), 1);
    assert_eq!((seq_of(&last[0]), last[0].attempts), (m3.message.seq, 0));
    // The first send is remembered as shown: a read of the newer one, no longer in flight,
    // is sent as a clear instead of being cleared quietly.
    let retry = Outcome::Retry {
        at: NOW,
        attempts: 1,
    };
    store.finish(&last[0], retry, NOW).await.unwrap();
    let read = PendingKind::Read {
        seq: m3.message.seq,
    };
    assert_eq!(settle_one(&store, b, b1, &c, read, MAX).await, coalesced(1));
    let due = claim_due(&store, NOW).await;
    assert_eq!(due.len(), 1);
    assert!(is_read(&due[0]));
}

async fn gone_deletes_only_the_subscription_claimed(store: Store) {
    let (a, b) = pair(&store).await;
    let b1 = subscribed(&store, 20, b).await;
    let b2 = subscribed(&store, 21, b).await;
    let c = conversation_id(a, b);
    let m = send(&store, 100, a, b).await;
    settle_one(&store, b, b1, &c, message(&m), MAX).await;
    settle_one(&store, b, b2, &c, message(&m), MAX).await;
    let due = claim_due(&store, NOW).await;
    assert_eq!(due.len(), 2);
    let (first, second) = if due[0].target.device == b1 {
        (&due[0], &due[1])
    } else {
        (&due[1], &due[0])
    };
    assert_eq!(first.subscription_id, Id(200));
    // b1 subscribed anew while its old endpoint was being found gone: the new one stays.
    let fresh = PushSubscription::Fcm {
        token: "new".into(),
        preview: false,
    };
    store
        .set_subscription(b, b1, Id(201), &fresh, NOW)
        .await
        .unwrap();
    store.finish(first, Outcome::Gone, NOW).await.unwrap();
    assert_eq!(store.subscription(b1).await.unwrap(), Some(fresh));
    // The one claimed with is still the device's: it goes, with every pending row.
    store.finish(second, Outcome::Gone, NOW).await.unwrap();
    assert_eq!(store.subscription(b2).await.unwrap(), None);
    // b1's notification was released to go to its new subscription; b2 has nothing left.
    let again = claim_due(&store, NOW).await;
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(again[0].target.device, b1);
    assert_eq!(again[0].subscription_id, Id(201));
}

async fn the_first_vapid_key_wins(store: Store) {
    let (x, y) = tokio::join!(store.vapid_key("pem-a"), store.vapid_key("pem-b"));
    let (x, y) = (x.unwrap(), y.unwrap());
    assert_eq!(x, y);
    assert!(x == "pem-a" || x == "pem-b");
    assert_eq!(store.vapid_key("pem-c").await.unwrap(), x);
}

async fn the_backlog_counts_what_waits(store: Store) {
    assert_eq!(store.push_backlog().await.unwrap(), Backlog::default());
    let (a, b) = pair(&store).await;
    subscribed(&store, 20, b).await;
    let m = store
        .append(NewMessage {
            id: Id(100),
            from: a,
            to: b,
            client_id: "x".into(),
            body: "hi".into(),
            ts: 500,
        })
        .await
        .unwrap();
    assert!(m.notify);
    assert_eq!(
        store.push_backlog().await.unwrap(),
        Backlog {
            outbox: 1,
            pending: 0,
            oldest: 500
        }
    );
    expand(&store, NOW).await;
    assert_eq!(
        store.push_backlog().await.unwrap(),
        Backlog {
            outbox: 0,
            pending: 1,
            oldest: 500
        }
    );
    let due = claim_due(&store, NOW).await;
    store.finish(&due[0], Outcome::Sent, NOW).await.unwrap();
    assert_eq!(store.push_backlog().await.unwrap(), Backlog::default());
}

// ---------------------------------------------------------------------------------------------
// Several nodes on one database (PostgreSQL only)

/// Two stores on one database, as two nodes: claims made at once, in small batches, never
/// hand one row to both, and between them take every row.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_claims_from_two_nodes_never_share_a_row() {
    let Some(db) = Database::from_env().await else {
        return;
    };
    let nodes: Vec<Store> = vec![
        Arc::new(PostgresStore::connect(&db.url(), 4).await.unwrap()),
        Arc::new(PostgresStore::connect(&db.url(), 4).await.unwrap()),
    ];
    let store = &nodes[0];
    let (a, b) = pair(store).await;
    let b1 = subscribed(store, 20, b).await;
    const N: u64 = 300;
    for id in 1..=N {
        send(store, 100 + id, a, b).await;
    }
    // One pending row per conversation name: rows enough to claim from both sides.
    let pending = (1..=N)
        .map(|i| NewPending {
            target: target(b, b1),
            conversation: format!("{}-{}", a, 10_000 + i),
            kind: PendingKind::Message {
                message: Id(100 + i),
                seq: i,
            },
            created_at: NOW,
        })
        .collect();
    assert_eq!(
        store
            .settle_outbox(vec![], pending, MAX, NOW)
            .await
            .unwrap(),
        queued(N)
    );

    let claimers = |outbox: bool| {
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let node = nodes[i % 2].clone();
                tokio::spawn(async move {
                    let mut taken = Vec::new();
                    loop {
                        let got: Vec<String> = if outbox {
                            let e = node.claim_outbox(NOW, LEASE, 7).await.unwrap();
                            e.iter().map(|e| e.id.to_string()).collect()
                        } else {
                            let d = node.claim_due(NOW, LEASE, 7).await.unwrap();
                            d.iter().map(|d| d.conversation.clone()).collect()
                        };
                        if got.is_empty() {
                            return taken;
                        }
                        taken.extend(got);
                    }
                })
            })
            .collect();
        async move {
            let mut all = Vec::new();
            for t in tasks {
                all.extend(t.await.unwrap());
            }
            all
        }
    };
    for outbox in [true, false] {
        let taken = claimers(outbox).await;
        let distinct: HashSet<&String> = taken.iter().collect();
        assert_eq!(distinct.len(), taken.len(), "a row was claimed twice");
        assert_eq!(taken.len(), usize::try_from(N).unwrap());
    }
    for node in nodes {
        node.close().await;
    }
}

/// Two stores settling the same new rows at once: each row is made once (the other settle
/// finds it and coalesces), and none fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_settles_from_two_nodes_make_each_row_once() {
    let Some(db) = Database::from_env().await else {
        return;
    };
    let nodes: Vec<Store> = vec![
        Arc::new(PostgresStore::connect(&db.url(), 4).await.unwrap()),
        Arc::new(PostgresStore::connect(&db.url(), 4).await.unwrap()),
    ];
    let (a, b) = pair(&nodes[0]).await;
    let b1 = subscribed(&nodes[0], 20, b).await;
    const KEYS: u64 = 50;
    const SETTLES: u64 = 8;
    let batch: Vec<NewPending> = (1..=KEYS)
        .map(|i| NewPending {
            target: target(b, b1),
            conversation: format!("{}-{}", a, 10_000 + i),
            kind: PendingKind::Message {
                message: Id(100 + i),
                seq: i,
            },
            created_at: NOW,
        })
        .collect();
    let tasks: Vec<_> = (0..SETTLES)
        .map(|i| {
            let node = nodes[usize::try_from(i % 2).unwrap()].clone();
            let batch = batch.clone();
            tokio::spawn(async move { node.settle_outbox(vec![], batch, MAX, NOW).await })
        })
        .collect();
    let mut total = Settled::default();
    for t in tasks {
        let s = t.await.unwrap().expect("every settle succeeds");
        total.queued += s.queued;
        total.coalesced += s.coalesced;
    }
    assert_eq!(
        (total.queued, total.coalesced),
        (KEYS, (SETTLES - 1) * KEYS)
    );
    assert_eq!(nodes[0].push_backlog().await.unwrap().pending, KEYS);
    for node in nodes {
        node.close().await;
    }
}

//! The contract every `PresenceService` keeps: one named test per case and backend,
//! `memory::<case>` (`MemoryPresence`) always and `redis::<case>` (`RedisPresence`) when
//! `CONFAB_TEST_REDIS` names a Redis server (e.g. `redis://127.0.0.1:6379`); without it the
//! Redis tests say they are skipped and pass. Every test uses a fresh cluster name and deletes
//! its keys at the end. The node-id lease, also kept in Redis, has its own suite,
//! `lease_contract.rs`.

use std::sync::Arc;
use std::time::Duration;

use confab_protocol::{Id, Presence, PresenceStatus};
use confab_server::presence::PresenceService;
use confab_server::presence::memory::MemoryPresence;
use confab_server::presence::redis::RedisPresence;
use confab_testkit::{engines, names};

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

const ONLINE: PresenceStatus = PresenceStatus::Online;
const OFFLINE: PresenceStatus = PresenceStatus::Offline;

/// A backend under test: makes "nodes" of one cluster.
enum Backend {
    Memory,
    Redis { url: String, cluster: String },
}

impl Backend {
    /// The in-process service, always there.
    fn memory() -> Option<Backend> {
        Some(Backend::Memory)
    }

    /// Redis with a fresh cluster, or `None` (after saying so) when it is not configured.
    fn redis() -> Option<Backend> {
        engines::redis().map(|url| Backend::Redis {
            url,
            cluster: names::fresh("test-"),
        })
    }

    fn name(&self) -> &'static str {
        match self {
            Backend::Memory => "memory",
            Backend::Redis { .. } => "redis",
        }
    }

    async fn node(&self) -> Arc<dyn PresenceService> {
        self.node_with_ttl(Duration::from_secs(30)).await
    }

    async fn node_with_ttl(&self, ttl: Duration) -> Arc<dyn PresenceService> {
        match self {
            Backend::Memory => Arc::new(MemoryPresence::new()),
            Backend::Redis { url, cluster } => Arc::new(
                RedisPresence::connect(url, cluster, ttl)
                    .await
                    .expect("redis connects"),
            ),
        }
    }

    /// Deletes the cluster's keys (best effort). Drop the nodes first: a live node's renewal
    /// would write some back.
    async fn clean_up(&self) {
        if let Backend::Redis { url, cluster } = self {
            confab_testkit::redis::delete_keys(url, cluster).await;
        }
    }
}

async fn status_of(p: &dyn PresenceService, user: u64) -> Presence {
    p.status(&[Id(user)]).await.expect("status")[0]
}

// One test per (case, backend): `confab_testkit::contract!`.
confab_testkit::contract! {
    every backend: [
        only_the_first_connect_and_the_last_disconnect_are_transitions,
        status_answers_for_many_users_in_the_order_asked,
        last_seen_is_the_time_of_the_last_disconnect,
        online_devices_are_those_with_a_live_socket,
    ],
    memory only: [has_nothing_to_sweep],
    redis only: [
        nodes_share_presence_and_exactly_one_sees_each_transition,
        a_live_node_keeps_its_sockets_past_the_ttl,
        a_dead_nodes_users_are_swept_offline_exactly_once,
        a_big_dead_node_is_swept_completely_and_once,
        an_unreachable_redis_is_unavailable_quickly,
    ],
}

// ---------------------------------------------------------------------------------------------
// The contract

/// The push server's presence check: which devices have a socket, on any node.
async fn online_devices_are_those_with_a_live_socket(backend: &Backend) {
    let name = backend.name();
    let (a, b) = (backend.node().await, backend.node().await);
    let now = now_ms();
    let (alice, bob) = (Id(1), Id(2));
    // Alice: her phone (10) has two sockets, one on each node; her laptop (11) none yet.
    a.connected(alice, Id(10), 100, now).await.unwrap();
    b.connected(alice, Id(10), 101, now).await.unwrap();
    b.connected(bob, Id(20), 200, now).await.unwrap();
    let online = |p: Arc<dyn PresenceService>, users: Vec<Id>| async move {
        let mut d: Vec<u64> = p
            .online_devices(&users)
            .await
            .expect("online devices")
            .into_iter()
            .map(|d| d.0)
            .collect();
        d.sort_unstable();
        d
    };
    if let Backend::Memory = backend {
        // One process: each node is its own; the cluster case is Redis's.
        assert_eq!(online(a.clone(), vec![alice]).await, vec![10], "{name}");
    } else {
        assert_eq!(
            online(a.clone(), vec![alice, bob]).await,
            vec![10, 20],
            "{name}"
        );
        assert_eq!(online(b.clone(), vec![bob]).await, vec![20], "{name}");
        b.disconnected(alice, 101, now).await.unwrap();
        assert_eq!(
            online(b.clone(), vec![alice]).await,
            vec![10],
            "{name}: one socket left"
        );
    }
    a.connected(alice, Id(11), 102, now).await.unwrap();
    assert_eq!(online(a.clone(), vec![alice]).await, vec![10, 11], "{name}");
    a.disconnected(alice, 100, now).await.unwrap();
    assert_eq!(
        online(a.clone(), vec![alice]).await,
        vec![11],
        "{name}: the phone left"
    );
    a.disconnected(alice, 102, now).await.unwrap();
    assert!(
        online(a.clone(), vec![alice, Id(99)]).await.is_empty(),
        "{name}: none"
    );
    drop((a, b));
    backend.clean_up().await;
}

async fn only_the_first_connect_and_the_last_disconnect_are_transitions(backend: &Backend) {
    let name = backend.name();
    let p = backend.node().await;
    let (user, now) = (Id(7), now_ms());
    assert!(
        p.connected(user, Id(1), 1, now).await.unwrap(),
        "{name}: first socket"
    );
    assert!(
        !p.connected(user, Id(2), 2, now).await.unwrap(),
        "{name}: second socket"
    );
    assert_eq!(status_of(&*p, 7).await.status, ONLINE, "{name}");
    assert!(
        !p.disconnected(user, 1, now).await.unwrap(),
        "{name}: one of two"
    );
    assert_eq!(status_of(&*p, 7).await.status, ONLINE, "{name}");
    assert!(
        p.disconnected(user, 2, now).await.unwrap(),
        "{name}: the last"
    );
    assert_eq!(status_of(&*p, 7).await.status, OFFLINE, "{name}");
    assert!(
        !p.disconnected(user, 2, now).await.unwrap(),
        "{name}: twice"
    );
    assert!(
        !p.disconnected(Id(8), 9, now).await.unwrap(),
        "{name}: unknown"
    );
    // Online again after being offline: a transition again.
    assert!(
        p.connected(user, Id(3), 3, now).await.unwrap(),
        "{name}: back"
    );
    p.check().await.expect("check");
}

async fn status_answers_for_many_users_in_the_order_asked(backend: &Backend) {
    let name = backend.name();
    let p = backend.node().await;
    let now = now_ms();
    // Users 1..=1000: the even ones online, every third one was online once.
    for u in 1..=1000u64 {
        if u % 2 == 0 || u % 3 == 0 {
            p.connected(Id(u), Id(u), u, now).await.unwrap();
        }
        if u % 2 != 0 && u % 3 == 0 {
            p.disconnected(Id(u), u, now + 5).await.unwrap();
        }
    }
    let mut asked: Vec<Id> = (1..=1000).rev().map(Id).collect();
    asked.push(Id(u64::MAX)); // never seen
    let started = std::time::Instant::now();
    let got = p.status(&asked).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{name}: status is slow"
    );
    assert_eq!(got.len(), asked.len());
    for (id, presence) in asked.iter().zip(&got) {
        let u = id.0;
        let expected = if u == u64::MAX || (u % 2 != 0 && u % 3 != 0) {
            Presence {
                status: OFFLINE,
                last_seen: 0,
            }
        } else if u % 2 == 0 {
            Presence {
                status: ONLINE,
                last_seen: now,
            }
        } else {
            Presence {
                status: OFFLINE,
                last_seen: now + 5,
            }
        };
        assert_eq!(*presence, expected, "{name}: user {u}");
    }
    assert!(p.status(&[]).await.unwrap().is_empty());
}

async fn last_seen_is_the_time_of_the_last_disconnect(backend: &Backend) {
    let name = backend.name();
    let p = backend.node().await;
    let t = now_ms();
    p.connected(Id(1), Id(10), 10, t).await.unwrap();
    p.connected(Id(1), Id(11), 11, t + 1).await.unwrap();
    p.disconnected(Id(1), 10, t + 2).await.unwrap();
    p.disconnected(Id(1), 11, t + 3).await.unwrap();
    let seen = status_of(&*p, 1).await;
    assert_eq!(
        seen,
        Presence {
            status: OFFLINE,
            last_seen: t + 3
        },
        "{name}"
    );
}

async fn nodes_share_presence_and_exactly_one_sees_each_transition(backend: &Backend) {
    let (a, b) = (backend.node().await, backend.node().await);
    let now = now_ms();
    assert!(a.connected(Id(1), Id(100), 100, now).await.unwrap());
    assert!(!b.connected(Id(1), Id(200), 200, now).await.unwrap());
    assert_eq!(status_of(&*b, 1).await.status, ONLINE);
    assert!(!a.disconnected(Id(1), 100, now).await.unwrap());
    assert_eq!(
        status_of(&*a, 1).await.status,
        ONLINE,
        "b's socket is still up"
    );
    assert!(b.disconnected(Id(1), 200, now).await.unwrap());
    assert_eq!(status_of(&*a, 1).await.status, OFFLINE);

    // Many sockets of one user opening at once on both nodes: one "online"...
    let nodes = [a.clone(), b.clone()];
    let opens = (0..40u64).map(|s| {
        let node = nodes[(s % 2) as usize].clone();
        tokio::spawn(async move {
            node.connected(Id(2), Id(1000 + s), 1000 + s, now)
                .await
                .unwrap()
        })
    });
    let firsts = futures::future::join_all(opens).await;
    assert_eq!(
        firsts.into_iter().filter(|r| *r.as_ref().unwrap()).count(),
        1
    );
    // ...and closing at once: one "offline".
    let closes = (0..40u64).map(|s| {
        let node = nodes[(s % 2) as usize].clone();
        tokio::spawn(async move { node.disconnected(Id(2), 1000 + s, now).await.unwrap() })
    });
    let lasts = futures::future::join_all(closes).await;
    assert_eq!(
        lasts.into_iter().filter(|r| *r.as_ref().unwrap()).count(),
        1
    );
}

async fn a_live_node_keeps_its_sockets_past_the_ttl(backend: &Backend) {
    let ttl = Duration::from_millis(300);
    let (a, b) = (
        backend.node_with_ttl(ttl).await,
        backend.node_with_ttl(ttl).await,
    );
    a.connected(Id(1), Id(1), 1, now_ms()).await.unwrap();
    tokio::time::sleep(ttl * 3).await;
    assert!(b.sweep(now_ms()).await.unwrap().is_empty());
    assert_eq!(status_of(&*b, 1).await.status, ONLINE);
}

async fn a_dead_nodes_users_are_swept_offline_exactly_once(backend: &Backend) {
    let ttl = Duration::from_millis(300);
    let dying = backend.node_with_ttl(ttl).await;
    let (b, c) = (
        backend.node_with_ttl(ttl).await,
        backend.node_with_ttl(ttl).await,
    );
    let now = now_ms();
    // User 1 only on the dying node; user 2 there and on b; user 3 only on b; users 4 and
    // 5 on the dying node and, later, on b.
    dying.connected(Id(1), Id(11), 11, now).await.unwrap();
    dying.connected(Id(1), Id(12), 12, now).await.unwrap();
    dying.connected(Id(2), Id(21), 21, now).await.unwrap();
    b.connected(Id(2), Id(22), 22, now).await.unwrap();
    b.connected(Id(3), Id(31), 31, now).await.unwrap();
    dying.connected(Id(4), Id(41), 41, now).await.unwrap();
    b.connected(Id(4), Id(42), 42, now).await.unwrap();
    dying.connected(Id(5), Id(51), 51, now).await.unwrap();
    drop(dying); // stops renewing without disconnecting anything

    assert!(
        b.sweep(now_ms()).await.unwrap().is_empty(),
        "nothing expired yet"
    );
    tokio::time::sleep(ttl * 2).await;
    assert_eq!(
        status_of(&*b, 1).await.status,
        OFFLINE,
        "expired counts as offline"
    );
    // Before any sweep: user 4's last live socket closes (that call reports the offline),
    // user 5 connects anew (online again: only unexpired sockets count).
    assert!(b.disconnected(Id(4), 42, now_ms()).await.unwrap());
    assert!(b.connected(Id(5), Id(52), 52, now_ms()).await.unwrap());
    let (from_b, from_c) = tokio::join!(b.sweep(now_ms()), c.sweep(now_ms()));
    let all: Vec<(Id, i64)> = [from_b.unwrap(), from_c.unwrap()].concat();
    let users: Vec<Id> = all.iter().map(|(u, _)| *u).collect();
    assert_eq!(users, vec![Id(1)], "swept once, by one of the sweepers");
    let last_seen = all[0].1;
    assert!(last_seen >= now && last_seen <= now_ms(), "{last_seen}");
    assert_eq!(
        status_of(&*c, 1).await,
        Presence {
            status: OFFLINE,
            last_seen
        }
    );
    assert_eq!(status_of(&*c, 2).await.status, ONLINE);
    assert_eq!(status_of(&*c, 3).await.status, ONLINE);
    assert_eq!(status_of(&*c, 4).await.status, OFFLINE);
    assert_eq!(status_of(&*c, 5).await.status, ONLINE);
    assert!(c.sweep(now_ms()).await.unwrap().is_empty(), "never twice");
    // User 2's last socket closes normally: that is the one transition.
    assert!(b.disconnected(Id(2), 22, now_ms()).await.unwrap());
}

async fn a_big_dead_node_is_swept_completely_and_once(backend: &Backend) {
    let ttl = Duration::from_millis(300);
    let dying = backend.node_with_ttl(ttl).await;
    let (b, c) = (
        backend.node_with_ttl(ttl).await,
        backend.node_with_ttl(ttl).await,
    );
    let now = now_ms();
    let users = 2500u64; // more than one sweep batch
    let opens = (0..users).map(|u| {
        let node = dying.clone();
        tokio::spawn(async move { node.connected(Id(u), Id(u), u, now).await.unwrap() })
    });
    futures::future::join_all(opens).await;
    drop(dying);
    tokio::time::sleep(ttl * 2).await;
    let (from_b, from_c) = tokio::join!(b.sweep(now_ms()), c.sweep(now_ms()));
    let mut swept: Vec<u64> = [from_b.unwrap(), from_c.unwrap()]
        .concat()
        .into_iter()
        .map(|(u, _)| u.0)
        .collect();
    swept.sort_unstable();
    assert_eq!(swept, (0..users).collect::<Vec<_>>());
}

async fn has_nothing_to_sweep(_: &Backend) {
    let p = MemoryPresence::new();
    p.connected(Id(1), Id(1), 1, 5).await.unwrap();
    assert!(p.sweep(i64::MAX).await.unwrap().is_empty());
}

async fn an_unreachable_redis_is_unavailable_quickly(_: &Backend) {
    let attempt = async {
        let p = RedisPresence::connect("redis://127.0.0.1:1", "x", Duration::from_secs(30)).await?;
        p.check().await
    };
    let result = tokio::time::timeout(Duration::from_secs(8), attempt)
        .await
        .expect("gives up within 8 s");
    assert!(result.is_err());
}

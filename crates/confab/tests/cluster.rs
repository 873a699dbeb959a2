//! Cluster mode on the real engines: three `confab serve` processes sharing PostgreSQL, NATS
//! and Redis. These run when `CONFAB_TEST_POSTGRES`, `CONFAB_TEST_NATS` and `CONFAB_TEST_REDIS`
//! hold URLs (`.ci/run` sets them) and print that they were skipped otherwise. Each test uses
//! a fresh database and a fresh cluster name (Redis key prefix, NATS subjects and stream).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use confab_testkit::postgres::Database;
use confab_testkit::ws::Ws;
use confab_testkit::{engines, names};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};

/// Presence must reach friends within this (PROTOCOL.md, Guarantees 5).
const PRESENCE_BOUND: Duration = Duration::from_secs(1);

/// The cluster tests run one at a time: each starts several servers on a 2-core machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[derive(Clone)]
struct Engines {
    postgres: String,
    nats: String,
    redis: String,
}

/// The three engines, or `None` once the skip is reported.
fn all_engines() -> Option<Engines> {
    let [postgres, nats, redis] =
        engines::urls([engines::POSTGRES, engines::NATS, engines::REDIS])?;
    Some(Engines {
        postgres,
        nats,
        redis,
    })
}

mod common;

use common::{Node, login, post, user};

/// Nodes sharing one fresh database and cluster name; on drop the nodes are killed, then the
/// database dropped.
struct Cluster {
    nodes: Vec<Option<Node>>,
    /// The nodes' rate-limit flags.
    limits: &'static [&'static str],
    engines: Engines,
    database: Database,
    name: String,
    dir: tempfile::TempDir,
}

/// The tests' senders keep several sends in flight as fast as the cluster answers them; the
/// limits are tested on their own, and would only make how fast the store is decide whether a
/// test passes.
const UNLIMITED: &[&str] = &[
    "--send-rate",
    "100000",
    "--send-burst",
    "100000",
    "--frame-rate",
    "100000",
    "--frame-burst",
    "100000",
];

impl Cluster {
    async fn start(engines: Engines, n: usize) -> Cluster {
        Cluster::start_limited(engines, n, UNLIMITED).await
    }

    /// Nodes started with these rate-limit flags (`&[]`: the defaults).
    async fn start_limited(engines: Engines, n: usize, limits: &'static [&'static str]) -> Cluster {
        let mut cluster = Cluster {
            nodes: Vec::new(),
            limits,
            name: names::fresh("t"),
            database: Database::create(&engines.postgres).await,
            engines,
            dir: tempfile::tempdir().unwrap(),
        };
        for _ in 0..n {
            let node = cluster.spawn(&[]);
            cluster.nodes.push(Some(node));
        }
        cluster
    }

    /// Starts one more node; `overrides` replace engine URLs (e.g. through a proxy).
    fn spawn(&self, overrides: &[(&str, String)]) -> Node {
        let url = |flag: &str, default: String| {
            overrides
                .iter()
                .find(|(f, _)| *f == flag)
                .map(|(_, u)| u.clone())
                .unwrap_or(default)
        };
        let store = url("--store", self.database.url());
        let queue = url("--queue", self.engines.nats.clone());
        let presence = url("--presence", self.engines.redis.clone());
        let data_dir = self.dir.path().to_string_lossy().into_owned();
        let mut args = vec![
            "--data-dir",
            &data_dir,
            "--store",
            &store,
            "--queue",
            &queue,
            "--presence",
            &presence,
            "--cluster",
            &self.name,
            "--presence-ttl",
            "3",
            "--postgres-pool",
            "8",
            "--resync-interval",
            "1",
        ];
        args.extend_from_slice(self.limits);
        Node::start(args)
    }

    fn addr(&self, i: usize) -> SocketAddr {
        self.nodes[i].as_ref().expect("node running").addr
    }

    fn kill(&mut self, i: usize) {
        drop(self.nodes[i].take()); // SIGKILL
    }
}

async fn put(addr: SocketAddr, path: &str, token: &str) {
    let r = reqwest::Client::new()
        .put(format!("http://{addr}{path}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204, "{path}");
}

#[tokio::test]
async fn users_on_different_nodes_chat_see_presence_and_receipts() {
    let Some(engines) = all_engines() else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(engines, 3).await;
    let (n0, n1, n2) = (cluster.addr(0), cluster.addr(1), cluster.addr(2));
    let alice = user(n0, "alice").await;
    let bob = user(n1, "bob").await;
    put(n2, &format!("/v1/contacts/{}", bob.id), &alice.token).await;
    put(n0, &format!("/v1/contacts/{}", alice.id), &bob.token).await;

    let (mut b, _) = Ws::caught_up(n1, &bob.token, None).await;
    let (mut a, _) = Ws::caught_up(n0, &alice.token, None).await;
    let p = b.next_of_within("presence", PRESENCE_BOUND).await;
    assert_eq!(
        (p["user_id"].as_str(), p["status"].as_str()),
        (Some(alice.id.as_str()), Some("online"))
    );

    a.send(json!({"type": "send", "to": bob.id, "client_id": "x1", "body": "across nodes"}))
        .await;
    let sent = a.next_of_within("sent", Duration::from_secs(5)).await;
    assert_eq!(sent["seq"], 1);
    let m = b.next_of_within("message", Duration::from_secs(2)).await;
    assert_eq!(m["body"], "across nodes");
    assert_eq!(m["id"], sent["id"]);

    b.send(json!({"type": "ack", "cursor": m["cursor"]})).await;
    let r = a.next_of_within("receipt", Duration::from_secs(2)).await;
    assert_eq!(
        (r["kind"].as_str(), r["seq"].as_u64()),
        (Some("delivered"), Some(1))
    );
    b.send(json!({"type": "read", "conversation": m["conversation"], "seq": 1}))
        .await;
    let r = a.next_of_within("receipt", Duration::from_secs(2)).await;
    assert_eq!(
        (r["kind"].as_str(), r["seq"].as_u64()),
        (Some("read"), Some(1))
    );

    // A third node's view of history is the same.
    let (_a3, history) = Ws::caught_up(n2, &login(n2, "alice").await.token, None).await;
    assert_eq!(history.len(), 1);

    // Clean close on node 0: offline on node 1 within the bound.
    a.inner.close(None).await.unwrap();
    // The new device on node 2 is still online, so close it too.
    drop(_a3);
    let p = b.next_of_within("presence", Duration::from_secs(3)).await;
    assert_eq!(p["status"], "offline");
}

/// Receipts travel the sync queue already filtered: a stranger on another node hears no
/// `delivered`, `read` or typing, and the list on a third node shows no marks.
#[tokio::test]
async fn a_stranger_on_another_node_learns_nothing() {
    let Some(engines) = all_engines() else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(engines, 3).await;
    let (n0, n1, n2) = (cluster.addr(0), cluster.addr(1), cluster.addr(2));
    let carol = user(n2, "carol").await;
    let bob = user(n1, "bob").await;
    let (mut b, _) = Ws::caught_up(n1, &bob.token, None).await;
    let (mut c, _) = Ws::caught_up(n2, &carol.token, None).await;
    c.send(json!({"type": "send", "to": bob.id, "client_id": "s1", "body": "hi stranger"}))
        .await;
    c.next_of_within("sent", Duration::from_secs(5)).await;
    let m = b.next_of_within("message", Duration::from_secs(2)).await;
    b.send(json!({"type": "ack", "cursor": m["cursor"]})).await;
    b.send(json!({"type": "read", "conversation": m["conversation"], "seq": 1}))
        .await;
    b.send(json!({"type": "typing", "to": carol.id})).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    while let Some(f) = c
        .next_within(deadline.saturating_duration_since(tokio::time::Instant::now()))
        .await
    {
        assert!(f["type"] != "receipt" && f["type"] != "typing", "{f}");
    }
    let r = reqwest::Client::new()
        .get(format!("http://{n0}/v1/conversations"))
        .bearer_auth(&carol.token)
        .send()
        .await
        .unwrap();
    let list: Value = r.json().await.unwrap();
    let e = &list["conversations"][0];
    assert_eq!(
        (&e["peer_read_seq"], &e["peer_delivered_seq"]),
        (&json!(0), &json!(0)),
        "{list}"
    );
}

/// Sends `count` messages from `ws` as fast as it can write them and answers how many were
/// accepted (`sent`); every other answer must be `rate_limited`.
async fn flood(ws: &mut Ws, to: &str, tag: &str, count: usize) -> usize {
    for i in 0..count {
        ws.send(json!({"type": "send", "to": to, "client_id": format!("{tag}-{i}"), "body": "x"}))
            .await;
    }
    let (mut sent, mut limited) = (0, 0);
    while sent + limited < count {
        let f = ws
            .next_within(Duration::from_secs(10))
            .await
            .expect("an answer to every send");
        match f["type"].as_str() {
            Some("sent") => sent += 1,
            Some("error") => {
                assert_eq!(f["code"], "rate_limited", "{f}");
                limited += 1;
            }
            _ => {}
        }
    }
    sent
}

/// A device's send limit holds across the nodes of a cluster within about one exchange
/// interval of rate (PROTOCOL.md, Guarantee 8; `gateway::limits::cluster`). A socket opened
/// on a node the device has not used, after spending its burst on another, finds the burst
/// spent; sockets of one token on both nodes flooding together get the rate once, where two
/// nodes each keeping their own limits would grant it twice.
#[tokio::test]
async fn a_devices_limits_hold_across_nodes() {
    let Some(engines) = all_engines() else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let limits = &["--send-rate", "5", "--send-burst", "50"];
    let cluster = Cluster::start_limited(engines, 2, limits).await;
    let (n0, n1) = (cluster.addr(0), cluster.addr(1));
    let alice = user(n0, "alice").await;
    let bob = user(n1, "bob").await;
    // What the device may be granted in `t`: the burst, the rate, and one second of rate for
    // the exchange between the nodes.
    let most = |t: Duration| 50.0 + 5.0 * (t.as_secs_f64() + 1.0);

    let started = Instant::now();
    let (mut a0, _) = Ws::caught_up(n0, &alice.token, None).await;
    assert_eq!(
        flood(&mut a0, &bob.id, "a", 50).await,
        50,
        "the burst passes"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (mut a1, _) = Ws::caught_up(n1, &alice.token, None).await;
    let second = flood(&mut a1, &bob.id, "b", 50).await;
    let bound = most(started.elapsed()) - 50.0;
    assert!(
        second as f64 <= bound,
        "a new socket on another node got {second} sends; the device had {bound:.0} left"
    );

    // Then two sockets on each node flood together for three seconds.
    let mut sockets = vec![a0, a1];
    for node in [n0, n1] {
        sockets.push(Ws::caught_up(node, &alice.token, None).await.0);
    }
    let flooding = Instant::now();
    let floods: Vec<_> = sockets
        .into_iter()
        .enumerate()
        .map(|(k, mut ws)| {
            let to = bob.id.clone();
            tokio::spawn(async move {
                let mut sent = 0;
                for round in 0.. {
                    if flooding.elapsed() >= Duration::from_secs(3) {
                        break;
                    }
                    sent += flood(&mut ws, &to, &format!("c{k}-{round}"), 10).await;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                sent
            })
        })
        .collect();
    let mut sent = 50 + second;
    for f in floods {
        sent += f.await.unwrap();
    }
    let elapsed = started.elapsed();
    let bound = most(elapsed);
    let apart = 2.0 * 50.0 + 5.0 * (2.0 * elapsed.as_secs_f64() - 1.0);
    assert!(
        sent as f64 <= bound,
        "{sent} sends accepted on two nodes in {elapsed:.2?}; the device may send {bound:.0} \
         (two nodes each on their own would allow about {apart:.0})"
    );
}

/// Typing relays are claimed cluster-wide: a device typing to a friend on two nodes at once
/// reaches the friend at most once a second.
#[tokio::test]
async fn typing_is_limited_per_device_across_nodes() {
    let Some(engines) = all_engines() else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start_limited(engines, 2, &[]).await;
    let (n0, n1) = (cluster.addr(0), cluster.addr(1));
    let alice = user(n0, "alice").await;
    let bob = user(n1, "bob").await;
    put(n0, &format!("/v1/contacts/{}", bob.id), &alice.token).await;
    put(n1, &format!("/v1/contacts/{}", alice.id), &bob.token).await;
    let (mut b, _) = Ws::caught_up(n1, &bob.token, None).await;
    let mut sockets = Vec::new();
    for node in [n0, n1, n0, n1] {
        sockets.push(Ws::caught_up(node, &alice.token, None).await.0);
    }
    let started = Instant::now();
    for round in 0..6 {
        if round > 0 {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        for ws in &mut sockets {
            ws.send(json!({"type": "typing", "to": bob.id})).await;
        }
    }
    let sending = started.elapsed().as_secs_f64();
    let mut relayed = 0;
    while let Some(f) = b.next_within(Duration::from_millis(700)).await {
        if f["type"] == "typing" {
            relayed += 1;
        }
    }
    let most = 1 + sending.floor() as usize;
    assert!(
        (1..=most).contains(&relayed),
        "{relayed} typing frames from 24 on two nodes over {sending:.2} s; at most {most}"
    );
}

/// `method` on `path` with `token` (and a JSON body), answering the status.
async fn call(
    addr: SocketAddr,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> u16 {
    let mut req = reqwest::Client::new()
        .request(method, format!("http://{addr}{path}"))
        .bearer_auth(token);
    if let Some(body) = body {
        req = req.json(&body);
    }
    req.send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn a_device_revoked_on_one_node_loses_its_socket_on_another() {
    let Some(engines) = all_engines() else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(engines, 2).await;
    let (n0, n1) = (cluster.addr(0), cluster.addr(1));
    let laptop = user(n0, "alice").await;
    let phone = post(
        n0,
        "/v1/sessions",
        json!({"username": "alice", "password": "password1"}),
    )
    .await;
    let tablet = login(n0, "alice").await;
    let (mut ws_phone, _) = Ws::caught_up(n1, phone["token"].as_str().unwrap(), None).await;
    let (mut ws_tablet, _) = Ws::caught_up(n1, &tablet.token, None).await;

    // Revoked by id on node 0: the socket on node 1 closes.
    let path = format!("/v1/sessions/{}", phone["device_id"].as_str().unwrap());
    let status = call(n0, reqwest::Method::DELETE, &path, &laptop.token, None).await;
    assert_eq!(status, 204);
    assert_eq!(ws_phone.closed().await, Some(1008));

    // A new password on node 0: every other device's socket on node 1 closes.
    let status = call(
        n0,
        reqwest::Method::PUT,
        "/v1/users/me/password",
        &laptop.token,
        Some(json!({"old_password": "password1", "new_password": "password2"})),
    )
    .await;
    assert_eq!(status, 204);
    assert_eq!(ws_tablet.closed().await, Some(1008));
    let status = call(
        n1,
        reqwest::Method::GET,
        "/v1/sessions",
        &laptop.token,
        None,
    )
    .await;
    assert_eq!(status, 200, "the caller's session lives on every node");
}

#[tokio::test]
async fn twenty_senders_on_three_nodes_get_gapless_seqs() {
    let Some(engines) = all_engines() else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(engines, 3).await;
    let n0 = cluster.addr(0);
    let alice = user(n0, "alice").await;
    let bob = user(n0, "bob").await;
    const SENDERS: usize = 20;
    const EACH: usize = 15;
    let mut tasks = Vec::new();
    for k in 0..SENDERS {
        let addr = cluster.addr(k % 3);
        let (me, to) = if k % 2 == 0 {
            ("alice", &bob)
        } else {
            ("bob", &alice)
        };
        let device = login(addr, me).await;
        let to = to.id.clone();
        tasks.push(tokio::spawn(async move {
            let (mut ws, _) = Ws::caught_up(addr, &device.token, None).await;
            for i in 0..EACH {
                ws.send(
                    json!({"type": "send", "to": to, "client_id": format!("{k}-{i}"), "body": "x"}),
                )
                .await;
            }
            let mut seqs = Vec::new();
            while seqs.len() < EACH {
                let f = ws.next_within(Duration::from_secs(10)).await.expect("acks");
                assert_ne!(f["type"], "error", "{f}");
                if f["type"] == "sent" {
                    seqs.push(f["seq"].as_u64().unwrap());
                }
            }
            seqs
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_unstable();
    assert_eq!(all, (1..=(SENDERS * EACH) as u64).collect::<Vec<_>>());
}

/// A group across three nodes: members on every node send at once while one member is
/// removed mid-stream (PROTOCOL.md, "Groups"). Every member's socket gets the group's messages
/// with gapless seqs in order; the removed member's gets them up to the event that removed it
/// and nothing after.
#[tokio::test]
async fn a_group_across_nodes_delivers_in_order_and_stops_at_a_removal() {
    let Some(engines) = all_engines() else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(engines, 3).await;
    let nodes = [cluster.addr(0), cluster.addr(1), cluster.addr(2)];
    let names = ["alice", "bob", "carol", "dave"];
    let mut users = Vec::new();
    for (i, name) in names.iter().enumerate() {
        users.push(user(nodes[i % 3], name).await);
    }
    let r = reqwest::Client::new()
        .post(format!("http://{}/v1/groups", nodes[0]))
        .bearer_auth(&users[0].token)
        .json(&json!({"title": "across", "members": [users[1].id, users[2].id, users[3].id]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let group: Value = r.json().await.unwrap();
    let g = group["conversation"].as_str().unwrap().to_owned();

    // A listening socket per member, each on its own node; dave is the one removed.
    let mut listeners = Vec::new();
    for (i, u) in users.iter().enumerate() {
        // `created` comes in the catch-up; the rest live.
        let (ws, caught_up) = Ws::caught_up(nodes[(i + 1) % 3], &u.token, None).await;
        listeners.push((ws, caught_up));
    }
    const EACH: usize = 20;
    let mut senders = Vec::new();
    for (i, u) in users.iter().take(3).enumerate() {
        let (addr, token, g) = (nodes[i], u.token.clone(), g.clone());
        senders.push(tokio::spawn(async move {
            let (mut ws, _) = Ws::caught_up(addr, &token, None).await;
            for k in 0..EACH {
                ws.send(json!({"type": "send", "conversation": g, "client_id": format!("{i}-{k}"), "body": format!("{i}-{k}")}))
                    .await;
                if k == EACH / 2 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            let mut sent = 0;
            while sent < EACH {
                let f = ws.next_within(Duration::from_secs(10)).await.expect("acks");
                assert_ne!(f["type"], "error", "{f}");
                sent += usize::from(f["type"] == "sent");
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    let removed = call(
        nodes[2],
        reqwest::Method::DELETE,
        &format!("/v1/groups/{g}/members/{}", users[3].id),
        &users[0].token,
        None,
    )
    .await;
    assert_eq!(removed, 204);
    for s in senders {
        s.await.unwrap();
    }
    // `created`, the messages, and the removal.
    let total = 1 + 3 * EACH as u64 + 1;
    let mut removal_seq = None;
    for (i, (ws, caught_up)) in listeners.iter_mut().enumerate() {
        let mut seqs = Vec::new();
        let mut last_event = Value::Null;
        let mut frames = std::mem::take(caught_up).into_iter();
        loop {
            let f = match frames.next() {
                Some(f) => f,
                None => match ws.next_within(Duration::from_secs(3)).await {
                    Some(f) => f,
                    None => break,
                },
            };
            if f["type"] == "message" && f["conversation"] == g.as_str() {
                seqs.push(f["seq"].as_u64().unwrap());
                if f["system"]["event"] == "member_removed" {
                    removal_seq = f["seq"].as_u64();
                }
                last_event = f;
            }
        }
        if i < 3 {
            assert_eq!(
                seqs,
                (1..=total).collect::<Vec<_>>(),
                "{} saw every message in order",
                names[i]
            );
        } else {
            let removal = removal_seq.expect("the removal was delivered");
            assert!(removal < total, "messages were sent after the removal");
            assert_eq!(
                seqs,
                (1..=removal).collect::<Vec<_>>(),
                "dave saw everything up to his removal, in order, and nothing after"
            );
            assert_eq!(last_event["system"]["event"], "member_removed");
        }
    }
}

#[tokio::test]
async fn sigkill_one_node_under_load_loses_nothing_and_repeats_nothing() {
    let Some(engines) = all_engines() else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(engines, 3).await;
    let (n0, n1, n2) = (cluster.addr(0), cluster.addr(1), cluster.addr(2));
    user(n0, "alice").await; // her devices log in below
    let bob = user(n0, "bob").await;
    let carol = user(n0, "carol").await;
    put(n0, &format!("/v1/contacts/{}", bob.id), &carol.token).await;
    put(n0, &format!("/v1/contacts/{}", carol.id), &bob.token).await;
    let (mut watcher, _) = Ws::caught_up(n2, &carol.token, None).await;

    // Senders on node 0 and node 1 (which will die); bob's receiving device on node 1.
    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    for (k, home, fallback) in [(0usize, n0, n0), (1, n1, n2)] {
        let device = login(n0, "alice").await;
        let (to, stop) = (bob.id.clone(), stop.clone());
        senders.push(tokio::spawn(async move {
            let mut acked: HashMap<String, Value> = HashMap::new();
            let mut addr = home;
            let mut next_id = 0u64;
            let mut pending: Vec<String> = Vec::new();
            'outer: loop {
                let (mut ws, _) = Ws::caught_up(addr, &device.token, None).await;
                // Resend whatever was unacknowledged, with the same client_ids.
                for cid in &pending {
                    if !ws.try_send(json!({"type": "send", "to": to, "client_id": cid, "body": cid}),
                    )
                    .await
                    {
                        addr = fallback;
                        continue 'outer;
                    }
                }
                loop {
                    while !stop.load(Ordering::Relaxed) && pending.len() < 8 {
                        let cid = format!("{k}-{next_id}");
                        next_id += 1;
                        if !ws.try_send(json!({"type": "send", "to": to, "client_id": cid, "body": cid}),
                        )
                        .await
                        {
                            addr = fallback;
                            continue 'outer;
                        }
                        pending.push(cid);
                    }
                    if pending.is_empty() {
                        return acked;
                    }
                    match ws.next_within(Duration::from_secs(5)).await {
                        None => {
                            addr = fallback;
                            continue 'outer;
                        }
                        Some(f) if f["type"] == "sent" => {
                            let cid = f["client_id"].as_str().unwrap().to_owned();
                            pending.retain(|p| *p != cid);
                            acked.insert(cid, f);
                        }
                        Some(f) if f["type"] == "error" && f["code"] == "unavailable" => {
                            // A retryable refusal: resend the same client_id shortly.
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            let cid = f["ref"].as_str().unwrap();
                            if !ws.try_send(json!({"type": "send", "to": to, "client_id": cid, "body": cid}),
                            )
                            .await
                            {
                                addr = fallback;
                                continue 'outer;
                            }
                        }
                        Some(f) if f["type"] == "error" => panic!("send error {f}"),
                        Some(_) => {}
                    }
                }
            }
        }));
    }
    let receiver = {
        let bob = bob.clone();
        tokio::spawn(async move {
            let mut cursors: Vec<u64> = Vec::new();
            let mut addr = n1;
            let mut reconnects = 0;
            loop {
                let cursor = cursors.last().map(|c| c.to_string());
                let (mut ws, caught) = Ws::caught_up(addr, &bob.token, cursor.as_deref()).await;
                for m in &caught {
                    cursors.push(m["cursor"].as_str().unwrap().parse().unwrap());
                }
                loop {
                    match ws.next_within(Duration::from_secs(3)).await {
                        Some(f) if f["type"] == "message" => {
                            cursors.push(f["cursor"].as_str().unwrap().parse().unwrap());
                            // A dying node may not take it; the next node resumes from the cursor.
                            ws.try_send(json!({"type": "ack", "cursor": f["cursor"]}))
                                .await;
                        }
                        Some(_) => {}
                        None if addr == n1 => {
                            addr = n2; // node 1 died: go to another node
                            reconnects += 1;
                            break;
                        }
                        None => return (cursors, reconnects), // quiet for 3 s: done
                    }
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let killed_at = Instant::now();
    cluster.kill(1);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acked = HashMap::new();
    for s in senders {
        acked.extend(s.await.unwrap());
    }
    let (cursors, reconnects) = receiver.await.unwrap();
    assert_eq!(reconnects, 1, "bob's device moved to another node");
    assert!(acked.len() > 20, "only {} acked", acked.len());

    // Nothing shown twice, nothing skipped: bob saw positions 1..=head exactly once, in order.
    let head = cursors.len() as u64;
    assert_eq!(cursors, (1..=head).collect::<Vec<_>>());
    // Every acknowledged message is stored, with gapless seqs.
    let (_, all) = Ws::caught_up(n0, &login(n0, "bob").await.token, None).await;
    let seqs: Vec<u64> = all.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=all.len() as u64).collect::<Vec<_>>());
    assert_eq!(all.len() as u64, head);
    let ids: std::collections::HashSet<&str> =
        all.iter().map(|m| m["id"].as_str().unwrap()).collect();
    for (cid, sent) in &acked {
        assert!(
            ids.contains(sent["id"].as_str().unwrap()),
            "acked {cid} lost"
        );
    }

    // Bob's sockets on the dead node expire and carol (a friend, on node 2) hears him go
    // offline; his device on node 2 is gone too by now, so the last presence is offline.
    let deadline = killed_at + Duration::from_secs(20);
    let mut last = None;
    while Instant::now() < deadline {
        match watcher.next_within(Duration::from_millis(500)).await {
            Some(f) if f["type"] == "presence" => last = Some(f),
            _ => {
                if last
                    .as_ref()
                    .is_some_and(|p: &Value| p["status"] == "offline")
                {
                    break;
                }
            }
        }
    }
    let last = last.expect("presence frames about bob");
    assert_eq!(
        (last["user_id"].as_str(), last["status"].as_str()),
        (Some(bob.id.as_str()), Some("offline"))
    );
}

/// A TCP proxy a test can cut and restore, to take an engine away from one node.
struct Proxy {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    links: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let links: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (up2, links2) = (up.clone(), links.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    continue; // dropped: connection refused-ish
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                links2.lock().unwrap().push(task.abort_handle());
            }
        });
        Proxy { addr, up, links }
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for l in self.links.lock().unwrap().drain(..) {
            l.abort();
        }
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// host:port of a NATS URL.
fn nats_addr(url: &str) -> SocketAddr {
    let rest = url.split_once("://").unwrap().1;
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let hostport = rest.split(['/', '?']).next().unwrap();
    let hostport = if hostport.contains(':') {
        hostport.to_owned()
    } else {
        format!("{hostport}:4222")
    };
    hostport.parse().unwrap_or_else(|_| {
        use std::net::ToSocketAddrs;
        hostport.to_socket_addrs().unwrap().next().unwrap()
    })
}

/// NATS `url` pointed at `proxy` instead of its own host:port.
fn through(url: &str, proxy: SocketAddr) -> String {
    let target = nats_addr(url);
    url.replacen(&target.to_string(), &proxy.to_string(), 1)
        .replacen(
            &format!("localhost:{}", target.port()),
            &proxy.to_string(),
            1,
        )
}

async fn ready(addr: SocketAddr) -> u16 {
    reqwest::Client::new()
        .get(format!("http://{addr}/readyz"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

async fn wait_ready(addr: SocketAddr, want: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while ready(addr).await != want {
        assert!(Instant::now() < deadline, "/readyz never became {want}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// Multi-threaded: the proxies must keep running while this thread blocks reading a node's
// first line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_loses_an_engine_refuses_sends_and_recovers() {
    let Some(engines) = all_engines() else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(engines.clone(), 1).await;
    let pg_addr = cluster.database.addr().expect("PostgreSQL over TCP");
    let pg = Proxy::start(pg_addr).await;
    let nats = Proxy::start(nats_addr(&engines.nats)).await;
    let node = cluster.spawn(&[
        ("--store", cluster.database.url_via(pg.addr)),
        ("--queue", through(&engines.nats, nats.addr)),
    ]);
    let addr = node.addr;
    cluster.nodes.push(Some(node));
    let alice = user(addr, "alice").await;
    let bob = user(addr, "bob").await;
    let (mut a, _) = Ws::caught_up(addr, &alice.token, None).await;
    assert_eq!(ready(addr).await, 200);

    let healthy = cluster.addr(0);
    for (engine, proxy) in [("postgres", &pg), ("nats", &nats)] {
        proxy.cut();
        wait_ready(addr, 503).await;
        a.send(json!({"type": "send", "to": bob.id, "client_id": format!("{engine}-down"), "body": "x"})).await;
        let f = loop {
            let f = a
                .next_within(Duration::from_secs(15))
                .await
                .expect("an answer");
            if f["type"] == "error" || f["type"] == "sent" {
                break f;
            }
        };
        assert_eq!(
            (f["type"].as_str(), f["code"].as_str()),
            (Some("error"), Some("unavailable")),
            "{engine} down: {f}"
        );
        if engine == "nats" {
            // Meanwhile bob, on a healthy node, writes to alice: the live event cannot reach
            // her node, but the periodic resync delivers it once NATS is back.
            let (mut b, _) = Ws::caught_up(healthy, &bob.token, None).await;
            b.send(json!({"type": "send", "to": alice.id, "client_id": "while-cut", "body": "missed live"})).await;
            b.next_of_within("sent", Duration::from_secs(5)).await;
        }
        proxy.restore();
        wait_ready(addr, 200).await;
        if engine == "nats" {
            // (Alice's own echo may come first.)
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let m = a.next_of_within("message", left).await;
                if m["body"] == "missed live" {
                    break;
                }
            }
        }
        // Recovered by itself: the same client_id now goes through.
        a.send(json!({"type": "send", "to": bob.id, "client_id": format!("{engine}-down"), "body": "x"})).await;
        let f = a.next_of_within("sent", Duration::from_secs(15)).await;
        assert_eq!(f["client_id"], format!("{engine}-down"));
    }
}

#[tokio::test]
async fn a_lost_node_id_lease_is_replaced_and_sends_resume() {
    let Some(engines) = all_engines() else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(engines.clone(), 1).await;
    let addr = cluster.addr(0);
    let alice = user(addr, "alice").await;
    let bob = user(addr, "bob").await;
    let (mut a, _) = Ws::caught_up(addr, &alice.token, None).await;
    a.send(json!({"type": "send", "to": bob.id, "client_id": "before", "body": "x"}))
        .await;
    let before = a.next_of_within("sent", Duration::from_secs(5)).await;

    // Another process takes the node's lease key, as if it had expired and been claimed.
    let client = redis::Client::open(engines.redis.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:node:*", cluster.name))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let _: () = redis::cmd("SET")
        .arg(&keys[0])
        .arg("someone-else")
        .arg("PX")
        .arg(60_000)
        .query_async(&mut conn)
        .await
        .unwrap();

    // The node notices at its next renewal (refusing sends with `unavailable` until it holds
    // a new lease, a window too short to observe reliably), leases another id, carries on.
    let node = |id: &Value| (id["id"].as_str().unwrap().parse::<u64>().unwrap() >> 12) & 1023;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut n = 0;
    let after = loop {
        assert!(Instant::now() < deadline, "no send from a new node id");
        n += 1;
        let cid = format!("after{n}");
        a.send(json!({"type": "send", "to": bob.id, "client_id": cid, "body": "y"}))
            .await;
        let f = loop {
            let f = a
                .next_within(Duration::from_secs(5))
                .await
                .expect("an answer");
            if f["type"] == "sent" || f["type"] == "error" {
                break f;
            }
        };
        if f["type"] == "error" {
            assert_eq!(f["code"], "unavailable", "{f}");
        } else if node(&f) != node(&before) {
            break f;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(ready(addr).await, 200);
    assert!(after["seq"].as_u64().unwrap() >= 2);
    let _: () = redis::cmd("DEL")
        .arg(&keys[0])
        .query_async(&mut conn)
        .await
        .unwrap();
}

/// `confab_messages_stored_total` on one node.
async fn stored_total(addr: SocketAddr) -> u64 {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("confab_messages_stored_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no confab_messages_stored_total in:\n{text}"))
}

/// `confab bench pairs` given two nodes puts the two users of each pair on different nodes,
/// so every message crosses the sync queue: each node stores its own users' half, and every
/// message reaches the partner on the other node.
#[tokio::test]
async fn bench_pairs_over_two_nodes_delivers_every_message_across_them() {
    let Some(engines) = all_engines() else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(engines, 0).await;
    let accounts = cluster.dir.path().join("accounts.json");
    let store = cluster.database.url();
    let seeded = std::process::Command::new(env!("CARGO_BIN_EXE_confab"))
        .args([
            "admin",
            "seed",
            "--count",
            "20",
            "--password",
            "bench-password",
        ])
        .arg("--out")
        .arg(&accounts)
        .args(["--store", &store, "--queue", &cluster.engines.nats])
        .args([
            "--presence",
            &cluster.engines.redis,
            "--cluster",
            &cluster.name,
        ])
        .env("RUST_LOG", "warn")
        .status()
        .unwrap();
    assert!(seeded.success(), "confab admin seed failed");
    for _ in 0..2 {
        let node = cluster.spawn(&[]);
        cluster.nodes.push(Some(node));
    }
    let (n0, n1) = (cluster.addr(0), cluster.addr(1));

    // 20 users at 200 msgs/s for 2 s: 10 senders per node, 20 messages each.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_confab"))
        .args(["bench", "pairs", "--quiet", "--json"])
        .args([
            "--server",
            &format!("http://{n0}"),
            "--server",
            &format!("http://{n1}"),
        ])
        .arg("--accounts")
        .arg(&accounts)
        .args(["-n", "20", "-r", "200", "-d", "2", "-b", "64"])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed: {stderr}");
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not a JSON report ({e}): {stderr}"));
    assert_eq!(report["sent"], 400, "{report:#}");
    assert_eq!(report["acked"], 400, "{report:#}");
    assert_eq!(report["delivered"], 400, "{report:#}");
    assert_eq!(report["undelivered"], 0, "{report:#}");
    assert_eq!(report["duplicates"], 0, "{report:#}");
    assert_eq!(report["errors"], json!({}), "{report:#}");
    let server = report["server"].as_str().unwrap();
    assert!(
        server.contains(&n0.to_string()) && server.contains(&n1.to_string()),
        "{server}"
    );
    // A message is stored by its sender's node: each node stored its own senders' half.
    assert_eq!((stored_total(n0).await, stored_total(n1).await), (200, 200));
}

//! Push notifications from the built `confab serve` binary, through crashes and across a
//! cluster (PROTOCOL.md "Push"): the intent stored with a message survives a SIGKILL of the
//! node; in a cluster each notification is sent by exactly one node, the presence check sees
//! sockets on every node, and a node that dies holding claims leaves them to another once
//! its lease ends.
//!
//! The cluster tests run when `CONFAB_TEST_POSTGRES`, `CONFAB_TEST_NATS` and
//! `CONFAB_TEST_REDIS` hold URLs and print that they were skipped otherwise; each uses a fresh
//! database and cluster name.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use confab_testkit::postgres::Database;
use confab_testkit::push::{GatewayReceiver, Received, Reply, WebPushReceiver};
use confab_testkit::ws::Ws;
use confab_testkit::{engines, names};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

mod common;

use common::{Node, User, login, user};

/// What every node here runs with: push services on loopback accepted, and quick retries.
const PUSH: &[&str] = &["--push-allow-private", "--push-retry-base", "0.2"];

/// How long a test waits for the notifications it expects.
const WAIT: Duration = Duration::from_secs(20);

/// How long a test watches for a repeat once the notifications it expects arrived: past the
/// push server's poll interval (1 s) and a quick retry.
const QUIET: Duration = Duration::from_secs(2);

/// The cluster tests run one at a time: each starts several servers on a small machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Sets the device's push subscription.
async fn subscribe(addr: SocketAddr, device: &User, subscription: Value) {
    let r = reqwest::Client::new()
        .put(format!("http://{addr}/v1/push/subscription"))
        .bearer_auth(&device.token)
        .json(&subscription)
        .send()
        .await
        .unwrap();
    let status = r.status();
    assert_eq!(status, 204, "{}", r.text().await.unwrap_or_default());
}

/// The server's VAPID public key.
async fn vapid_key(addr: SocketAddr) -> String {
    let r = reqwest::get(format!("http://{addr}/v1/push/vapid"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    body["public_key"].as_str().unwrap().to_owned()
}

/// The value of one series in the node's `/metrics` (0 when it has not appeared yet), e.g.
/// `confab_push_sent_total{kind="webpush"}`.
async fn metric(addr: SocketAddr, series: &str) -> u64 {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0, |v| v.trim().parse().unwrap())
}

/// A socket past `hello`, its catch-up read.
async fn connect(addr: SocketAddr, device: &User) -> Ws {
    Ws::caught_up(addr, &device.token, None).await.0
}

/// The pushes the receiver accepted (passed every check and answered 2xx).
fn accepted(receiver: &WebPushReceiver) -> Vec<Received> {
    receiver
        .received()
        .into_iter()
        .filter(|r| r.failure.is_none() && (200..300).contains(&r.status))
        .collect()
}

/// Waits until the receiver has accepted `n` pushes and returns them; panics after `within`,
/// saying what did arrive.
async fn wait_accepted(receiver: &WebPushReceiver, n: usize, within: Duration) -> Vec<Received> {
    let deadline = Instant::now() + within;
    loop {
        let got = accepted(receiver);
        if got.len() >= n {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} pushes accepted in {within:?}; every request: {:#?}",
            got.len(),
            receiver.received()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Watches for [`QUIET`] that nothing more is accepted than the `n` already counted.
async fn no_more_accepted(receiver: &WebPushReceiver, n: usize) {
    tokio::time::sleep(QUIET).await;
    let got = accepted(receiver);
    assert_eq!(got.len(), n, "pushes repeated: {got:#?}");
}

/// Checks that `push` is a well-formed, VAPID-signed notification of the message `sent` (the
/// sender's `sent` frame) from `from`, without its text (no preview).
fn assert_notifies(push: &Received, sent: &Value, from: &User) {
    assert!(push.vapid_ok, "{push:#?}");
    assert_eq!(push.failure, None, "{push:#?}");
    let p = &push.payload;
    assert_eq!(p["type"], "message", "{push:#?}");
    assert_eq!(p["id"], sent["id"], "{push:#?}");
    assert_eq!(p["seq"], sent["seq"], "{push:#?}");
    assert_eq!(p["conversation"], sent["conversation"], "{push:#?}");
    assert_eq!(p["from"].as_str(), Some(from.id.as_str()), "{push:#?}");
    assert!(p.get("body").is_none(), "no preview asked: {push:#?}");
}

/// `confab serve` on the embedded store in `dir`, with [`PUSH`].
fn sqlite_node(dir: &tempfile::TempDir) -> Node {
    let dir = dir.path().to_str().expect("a UTF-8 temporary path");
    Node::start(["--data-dir", dir].iter().chain(PUSH))
}

/// The intent to notify is written in the message's own transaction, so a node killed the
/// moment it answers `sent` still sends the notification once it is back. The push service
/// refuses the first push (503, `Retry-After: 1`) and the node has no time for a second
/// before it dies: whatever it tried was not delivered, and the notification that arrives
/// after the restart can only come from what the store kept. It arrives exactly once,
/// decrypted and VAPID-signed with the key the store kept.
#[tokio::test]
async fn a_notification_survives_kill_9_right_after_sent() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = WebPushReceiver::start().await;
    let node = sqlite_node(&dir);
    let alice = user(node.addr, "alice").await;
    let bob = user(node.addr, "bob").await;
    receiver.expect_server_key(&vapid_key(node.addr).await);
    subscribe(node.addr, &alice, receiver.subscription_json("alice-phone")).await;
    // One refusal: the node can try at most once before it dies (a retry would come a
    // second later); if it did not, the restarted node's first attempt is refused and its
    // retry, scheduled after the restart, delivers.
    receiver.respond_with("alice-phone", [Reply::status(503).retry_after("1")]);

    let mut ws = connect(node.addr, &bob).await;
    let sent = ws.send_message(&alice.id, "c1", "are you there?").await;
    drop(node); // SIGKILL, right after `sent`
    drop(ws);
    let before = receiver.received();
    assert!(
        before.iter().all(|r| r.status == 503),
        "a push was accepted before the kill: {before:#?}"
    );

    let node = sqlite_node(&dir);
    let got = wait_accepted(&receiver, 1, WAIT).await;
    assert_eq!(got[0].path, "/alice-phone");
    assert_notifies(&got[0], &sent, &bob);
    assert_eq!(got[0].payload["unread"], 1);
    no_more_accepted(&receiver, 1).await;
    assert_eq!(receiver.failures().len(), 0, "{:#?}", receiver.failures());
    assert_eq!(
        metric(node.addr, r#"confab_push_sent_total{kind="webpush"}"#).await,
        1,
        "the restarted node sent it"
    );
}

/// A node killed while several notifications wait (refused once and due again in 3 s, and
/// one intent stored just before the kill) sends every one of them after its restart, each
/// exactly once.
#[tokio::test]
async fn pending_notifications_survive_kill_9_and_each_arrives_once() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = WebPushReceiver::start().await;
    let node = sqlite_node(&dir);
    let addr = node.addr;
    receiver.expect_server_key(&vapid_key(addr).await);
    let senders = [user(addr, "bob").await, user(addr, "carol").await];
    let mut recipients = Vec::new();
    for i in 0..4 {
        let r = user(addr, &format!("rcpt{i}")).await;
        subscribe(addr, &r, receiver.subscription_json(&format!("r{i}"))).await;
        // One refusal for each of the two conversations to come; r0 gets a third message.
        let refusals = if i == 0 { 3 } else { 2 };
        receiver.respond_with(
            &format!("r{i}"),
            vec![Reply::status(503).retry_after("3"); refusals],
        );
        recipients.push(r);
    }

    // Each sender writes to each recipient: 8 notifications, in 8 conversations.
    let mut sockets = Vec::new();
    for s in &senders {
        sockets.push(connect(addr, s).await);
    }
    let dave = user(addr, "dave").await;
    let mut d = connect(addr, &dave).await;
    // (path, message id) -> (the `sent` frame, its sender)
    let mut expected: HashMap<(String, String), (Value, User)> = HashMap::new();
    for (k, (ws, s)) in sockets.iter_mut().zip(&senders).enumerate() {
        for (i, r) in recipients.iter().enumerate() {
            let sent = ws.send_message(&r.id, &format!("{k}-{i}"), "hi").await;
            let id = sent["id"].as_str().unwrap().to_owned();
            expected.insert((format!("/r{i}"), id), (sent, s.clone()));
        }
    }
    // Every one was tried and refused: they wait for their retry.
    receiver.wait_for(8, WAIT).await;
    // One more intent, stored just before the kill.
    let sent = d.send_message(&recipients[0].id, "d", "late").await;
    let id = sent["id"].as_str().unwrap().to_owned();
    expected.insert(("/r0".into(), id), (sent, dave));
    drop(node); // SIGKILL
    drop((sockets, d));
    let before = receiver.received();
    assert!(
        before.iter().all(|r| r.status == 503),
        "a push was accepted before the kill: {before:#?}"
    );

    let _node = sqlite_node(&dir);
    let got = wait_accepted(&receiver, expected.len(), WAIT).await;
    let mut seen = HashMap::new();
    for push in &got {
        let id = push.payload["id"].as_str().unwrap_or_default().to_owned();
        let key = (push.path.clone(), id);
        let (sent, from) = expected
            .get(&key)
            .unwrap_or_else(|| panic!("a push nobody expected: {push:#?}"));
        assert_notifies(push, sent, from);
        *seen.entry(key).or_insert(0) += 1;
    }
    assert!(seen.values().all(|n| *n == 1), "repeated: {seen:?}");
    assert_eq!(seen.len(), expected.len());
    no_more_accepted(&receiver, expected.len()).await;
    assert_eq!(receiver.failures().len(), 0, "{:#?}", receiver.failures());
}

/// Nodes on one fresh database and cluster name; the nodes are the caller's, and die first.
struct Cluster {
    nats: String,
    redis: String,
    name: String,
    dir: tempfile::TempDir,
    database: Database,
}

impl Cluster {
    /// A fresh cluster, or `None` once the skip is reported.
    async fn new() -> Option<Cluster> {
        let [postgres, nats, redis] =
            engines::urls([engines::POSTGRES, engines::NATS, engines::REDIS])?;
        Some(Cluster {
            database: Database::create(&postgres).await,
            nats,
            redis,
            name: names::fresh("t"),
            dir: tempfile::tempdir().unwrap(),
        })
    }

    /// Starts a node with [`PUSH`] and `extra`.
    fn node(&self, extra: &[&str]) -> Node {
        let store = self.database.url();
        let data_dir = self.dir.path().to_string_lossy().into_owned();
        let args: Vec<&str> = vec![
            "--data-dir",
            &data_dir,
            "--store",
            &store,
            "--queue",
            &self.nats,
            "--presence",
            &self.redis,
            "--cluster",
            &self.name,
            "--presence-ttl",
            "3",
            "--postgres-pool",
            "8",
            // The tests register dozens of users from one address and send in bursts.
            "--registrations-per-minute",
            "0",
            "--send-rate",
            "100000",
            "--send-burst",
            "100000",
        ];
        Node::start(args.iter().chain(PUSH).chain(extra))
    }
}

/// Two nodes on one store expand and send from one outbox: of 40 offline recipients, each
/// subscribed at a path of its own, every one gets its notification exactly once, though
/// the messages were stored through both nodes and both nodes' push servers claim from the
/// same rows (half the sends come back to back, so the two race for them). The receiver's
/// count per path is the proof; the nodes' own counts add up to it, and each has a share.
#[tokio::test]
async fn two_nodes_share_one_outbox_and_each_notification_is_sent_once() {
    let Some(cluster) = Cluster::new().await else {
        return;
    };
    let _serial = SERIAL.lock().await;
    const N: usize = 40;
    let receiver = WebPushReceiver::start().await;
    let nodes = [cluster.node(&[]), cluster.node(&[])];
    let addrs = [nodes[0].addr, nodes[1].addr];
    let key = vapid_key(addrs[0]).await;
    assert_eq!(key, vapid_key(addrs[1]).await, "one VAPID key per cluster");
    receiver.expect_server_key(&key);

    let mut recipients = Vec::new();
    for i in 0..N {
        let addr = addrs[i % 2];
        let r = user(addr, &format!("rcpt{i}")).await;
        subscribe(addr, &r, receiver.subscription_json(&format!("r{i}"))).await;
        recipients.push(r);
    }
    // A sender on each node; recipient i hears from the one on node i % 2.
    let senders = [
        user(addrs[0], "sender_a").await,
        user(addrs[1], "sender_b").await,
    ];
    let sends = (0..2).map(|k| {
        let (addr, sender) = (addrs[k], senders[k].clone());
        let to: Vec<(usize, String)> = recipients
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 2 == k)
            .map(|(i, r)| (i, r.id.clone()))
            .collect();
        tokio::spawn(async move {
            let mut ws = connect(addr, &sender).await;
            let mut sent = Vec::new();
            for (j, (i, to)) in to.into_iter().enumerate() {
                let s = ws.send_message(&to, &format!("m{i}"), "hello").await;
                sent.push((i, s));
                // The first half back to back, so that both nodes' loops race for the same
                // rows; the rest spread out, so that each node also finds work of its own.
                if j >= N / 4 {
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
            }
            sent
        })
    });
    let mut sent: HashMap<String, (Value, User)> = HashMap::new();
    for (k, task) in sends.enumerate() {
        for (i, s) in task.await.unwrap() {
            sent.insert(format!("/r{i}"), (s, senders[k].clone()));
        }
    }

    let got = wait_accepted(&receiver, N, WAIT).await;
    let mut per_path: HashMap<&str, usize> = HashMap::new();
    for push in &got {
        let (s, from) = &sent[&push.path];
        assert_notifies(push, s, from);
        *per_path.entry(push.path.as_str()).or_default() += 1;
    }
    assert_eq!(per_path.len(), N, "{per_path:?}");
    assert!(per_path.values().all(|n| *n == 1), "repeated: {per_path:?}");
    no_more_accepted(&receiver, N).await;
    assert_eq!(receiver.failures().len(), 0, "{:#?}", receiver.failures());

    let series = r#"confab_push_sent_total{kind="webpush"}"#;
    let by_node = [
        metric(addrs[0], series).await,
        metric(addrs[1], series).await,
    ];
    assert_eq!(
        by_node.iter().sum::<u64>(),
        N as u64,
        "each notification counted by the one node that sent it: {by_node:?}"
    );
    assert!(
        by_node.iter().all(|n| *n > 0),
        "both nodes took a share of the outbox: {by_node:?}"
    );
}

/// The presence check is cluster-wide: a recipient's device with a socket on node B gets no
/// push for a message stored through node A, while the same user's other device, subscribed
/// and offline, does.
#[tokio::test]
async fn a_socket_on_another_node_spares_its_device_the_push() {
    let Some(cluster) = Cluster::new().await else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let receiver = WebPushReceiver::start().await;
    let (a, b) = (cluster.node(&[]), cluster.node(&[]));
    receiver.expect_server_key(&vapid_key(a.addr).await);
    let sender = user(a.addr, "sender").await;
    let online = user(b.addr, "rita").await;
    let offline = login(a.addr, "rita").await;
    subscribe(b.addr, &online, receiver.subscription_json("rita-online")).await;
    subscribe(a.addr, &offline, receiver.subscription_json("rita-offline")).await;
    let mut rita = connect(b.addr, &online).await;

    let mut ws = connect(a.addr, &sender).await;
    let sent = ws.send_message(&online.id, "c1", "anyone?").await;
    let m = rita.next_of_within("message", WAIT).await;
    assert_eq!(m["id"], sent["id"]);

    let got = wait_accepted(&receiver, 1, WAIT).await;
    assert_eq!(got[0].path, "/rita-offline");
    assert_notifies(&got[0], &sent, &sender);
    no_more_accepted(&receiver, 1).await;
    assert!(
        receiver.received().iter().all(|r| r.path != "/rita-online"),
        "{:#?}",
        receiver.received()
    );
    let series = "confab_push_online_skipped_total";
    let skipped = metric(a.addr, series).await + metric(b.addr, series).await;
    assert_eq!(skipped, 1, "the device with a socket was skipped once");
}

/// A push gateway that takes each connection and reads its request but never answers, so a
/// node sending to it holds its claims until it dies.
struct Silent {
    addr: SocketAddr,
    /// The pushkey of each request read so far, and when it was read.
    pushkeys: Arc<Mutex<Vec<(String, Instant)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Silent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Silent {
    async fn start() -> Silent {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let pushkeys = Arc::new(Mutex::new(Vec::new()));
        let seen = pushkeys.clone();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut stream, _)) = listener.accept().await {
                let seen = seen.clone();
                connections.spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let mut recorded = false;
                    // Read until the peer goes away; answer nothing.
                    while let Ok(n @ 1..) = stream.read(&mut chunk).await {
                        buf.extend_from_slice(&chunk[..n]);
                        if !recorded && let Some(key) = pushkey(&buf) {
                            seen.lock().unwrap().push((key, Instant::now()));
                            recorded = true;
                        }
                    }
                });
            }
        });
        Silent {
            addr,
            pushkeys,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Waits until `n` requests were read and returns their pushkeys, each with when it was
    /// read; panics after `within`.
    async fn wait_for(&self, n: usize, within: Duration) -> HashMap<String, Instant> {
        let deadline = Instant::now() + within;
        loop {
            let keys = self.pushkeys.lock().unwrap().clone();
            if keys.len() >= n {
                return keys.into_iter().collect();
            }
            assert!(
                Instant::now() < deadline,
                "the silent gateway read {keys:?}, not {n} requests"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The pushkey of the notify request in `buf`, once its body is whole.
fn pushkey(buf: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(buf).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let length: usize = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse().ok())?
    })?;
    if body.len() < length {
        return None;
    }
    let json: Value = serde_json::from_str(&body[..length]).ok()?;
    Some(
        json["notification"]["devices"][0]["pushkey"]
            .as_str()?
            .to_owned(),
    )
}

/// A node that dies while it holds notifications (claimed and in flight to a gateway that
/// never answers it) leaves them to another node, which sends them once the dead node's
/// lease has run out, not before, and each once. Node A is configured with the silent
/// gateway and node B with a working one under the same name, so the test sees which node
/// sent what.
#[tokio::test]
async fn a_node_killed_mid_claim_leaves_its_notifications_to_the_other() {
    let Some(cluster) = Cluster::new().await else {
        return;
    };
    let _serial = SERIAL.lock().await;
    const N: usize = 5;
    const LEASE: Duration = Duration::from_secs(3);
    let lease = LEASE.as_secs().to_string();
    let silent = Silent::start().await;
    let gateway = GatewayReceiver::start().await;
    let to_silent = format!("g={}", silent.url());
    let to_gateway = format!("g={}", gateway.url());

    let a = cluster.node(&["--push-gateway", &to_silent, "--push-lease", &lease]);
    let sender = user(a.addr, "sender").await;
    let mut recipients = Vec::new();
    for i in 0..N {
        let r = user(a.addr, &format!("rcpt{i}")).await;
        let subscription = json!({
            "kind": "gateway", "gateway": "g", "pushkey": format!("r{i}"),
            "app_id": "chat.confab.test",
        });
        subscribe(a.addr, &r, subscription).await;
        recipients.push(r);
    }
    let mut ws = connect(a.addr, &sender).await;
    let mut sent = HashMap::new();
    for (i, r) in recipients.iter().enumerate() {
        let s = ws.send_message(&r.id, &format!("m{i}"), "hello").await;
        sent.insert(format!("r{i}"), s);
    }
    // Node A has claimed every notification and waits on the gateway's answers.
    let held = silent.wait_for(N, WAIT).await;
    let mut keys: Vec<&String> = held.keys().collect();
    keys.sort();
    let mut expected: Vec<&String> = sent.keys().collect();
    expected.sort();
    assert_eq!(keys, expected);

    let b = cluster.node(&["--push-gateway", &to_gateway, "--push-lease", &lease]);
    drop(a); // SIGKILL, its requests in flight
    drop(ws);

    // When each arrives at the working gateway, seen within 10 ms.
    let mut arrived: HashMap<String, Instant> = HashMap::new();
    let deadline = Instant::now() + WAIT;
    while arrived.len() < N {
        assert!(Instant::now() < deadline, "node B sent only {arrived:?}");
        for request in gateway.received() {
            let key = request.pushkey().unwrap_or_default().to_owned();
            arrived.entry(key).or_insert_with(Instant::now);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for (key, at) in &arrived {
        // Node A claimed it a moment before the silent gateway read it.
        let waited = at.duration_since(held[key]);
        assert!(
            waited >= LEASE - Duration::from_millis(300),
            "node B sent {key} {waited:?} after node A's request, within its lease of {LEASE:?}"
        );
    }
    tokio::time::sleep(QUIET).await;
    let got = gateway.received();
    assert_eq!(got.len(), N, "repeated: {got:#?}");
    let mut per_key: HashMap<String, usize> = HashMap::new();
    for request in &got {
        assert_eq!(
            (request.status, &request.error),
            (200, &None),
            "{request:#?}"
        );
        let key = request.pushkey().unwrap().to_owned();
        let n = request.notification();
        assert_eq!(n["event_id"], sent[&key]["id"], "{request:#?}");
        assert_eq!(n["room_id"], sent[&key]["conversation"], "{request:#?}");
        *per_key.entry(key).or_default() += 1;
    }
    assert_eq!(per_key.len(), N, "{per_key:?}");
    assert!(per_key.values().all(|n| *n == 1), "{per_key:?}");
    assert_eq!(
        metric(b.addr, r#"confab_push_sent_total{kind="gateway"}"#).await,
        N as u64
    );
}

//! Presence, friends, blocks, receipts and typing, black-box over real sockets.

mod common;

use std::time::{Duration, Instant};

use common::{TestServer, TestUser, Ws};
use serde_json::{Value, json};

/// Presence must reach friends within this (PROTOCOL.md, Guarantees 5).
const PRESENCE_BOUND: Duration = Duration::from_secs(1);

async fn put(s: &TestServer, path: &str, token: &str) -> u16 {
    s.http
        .put(s.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn delete(s: &TestServer, path: &str, token: &str) -> u16 {
    s.http
        .delete(s.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn befriend(s: &TestServer, a: &TestUser, b: &TestUser) {
    assert_eq!(
        put(s, &format!("/v1/contacts/{}", b.id), &a.token).await,
        204
    );
    assert_eq!(
        put(s, &format!("/v1/contacts/{}", a.id), &b.token).await,
        204
    );
}

/// The next `presence` frame within the protocol's bound.
async fn presence_within(ws: &mut Ws, bound: Duration) -> Value {
    tokio::time::timeout(bound, ws.next_of("presence"))
        .await
        .expect("presence frame within the bound")
}

/// Reads frames for `wait`; fails on any of the given types.
async fn none_of(ws: &mut Ws, types: &[&str], wait: Duration) {
    let deadline = Instant::now() + wait;
    while let Some(f) = ws
        .next_within(deadline.saturating_duration_since(Instant::now()))
        .await
    {
        assert!(
            !types.contains(&f["type"].as_str().unwrap_or("")),
            "unexpected {f}"
        );
    }
}

/// Every frame from `hello` to `synced`.
async fn connect_all(s: &TestServer, user: &TestUser) -> (Ws, Vec<Value>) {
    let mut ws = Ws::connect(s.addr).await;
    ws.send(json!({"type": "hello", "token": user.token})).await;
    let mut frames = Vec::new();
    loop {
        let f = ws.next().await;
        let done = f["type"] == "synced";
        frames.push(f);
        if done {
            return (ws, frames);
        }
    }
}

#[tokio::test]
async fn friends_see_online_and_offline_promptly() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    befriend(&s, &alice, &bob).await;
    let (mut b, _) = s.connect(&bob).await;

    let before = common_now();
    let (a1, _) = s.connect(&alice).await;
    let p = presence_within(&mut b, PRESENCE_BOUND).await;
    assert_eq!(p["user_id"], alice.id.as_str());
    assert_eq!(p["status"], "online");
    assert!(p["last_seen"].as_i64().unwrap() >= before);

    // A second device changes nothing; closing one of two changes nothing.
    let alice2 = s.login("alice").await;
    let (a2, _) = s.connect(&alice2).await;
    drop(a2);
    b.expect_silence(Duration::from_millis(300)).await;

    // The last device closing cleanly: offline within the bound, with last_seen.
    let mut a1 = a1;
    a1.inner.close(None).await.unwrap();
    let p = presence_within(&mut b, PRESENCE_BOUND).await;
    assert_eq!(
        (p["user_id"].as_str(), p["status"].as_str()),
        (Some(alice.id.as_str()), Some("offline"))
    );
    let last_seen = p["last_seen"].as_i64().unwrap();
    assert!(last_seen >= before && last_seen <= common_now());

    // GET /v1/contacts agrees.
    let (_, contacts) = s.get("/v1/contacts", &bob.token).await;
    let c = &contacts["contacts"][0];
    assert_eq!(c["user_id"], alice.id.as_str());
    assert_eq!(c["mutual"], true);
    assert_eq!(c["presence"]["status"], "offline");
    assert_eq!(c["presence"]["last_seen"], last_seen);
}

fn common_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test]
async fn welcome_is_followed_by_the_friends_online_now() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let carol = s.user("carol").await;
    let dave = s.user("dave").await;
    befriend(&s, &alice, &bob).await;
    befriend(&s, &alice, &carol).await;
    befriend(&s, &alice, &dave).await;
    let (_b, _) = s.connect(&bob).await;
    let (_c, _) = s.connect(&carol).await;
    // dave stays offline.
    let (_a, frames) = connect_all(&s, &alice).await;
    assert_eq!(frames[0]["type"], "welcome");
    let mut online: Vec<&str> = frames
        .iter()
        .filter(|f| f["type"] == "presence")
        .map(|f| {
            assert_eq!(f["status"], "online");
            f["user_id"].as_str().unwrap()
        })
        .collect();
    online.sort_unstable();
    let mut expected = vec![bob.id.as_str(), carol.id.as_str()];
    expected.sort_unstable();
    assert_eq!(online, expected);
}

#[tokio::test]
async fn non_friends_learn_nothing() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let carol = s.user("carol").await;
    // Carol adds alice; alice does not add carol back.
    assert_eq!(
        put(&s, &format!("/v1/contacts/{}", alice.id), &carol.token).await,
        204
    );
    let (mut c, _) = s.connect(&carol).await;
    let (a, _) = s.connect(&alice).await;
    drop(a);
    c.expect_silence(Duration::from_millis(500)).await;
    let (_, contacts) = s.get("/v1/contacts", &carol.token).await;
    let entry = &contacts["contacts"][0];
    assert_eq!(entry["mutual"], false);
    assert!(entry.get("presence").is_none(), "{entry}");
    // Alice's own list does not show carol (she never added her).
    let (_, contacts) = s.get("/v1/contacts", &alice.token).await;
    assert_eq!(contacts["contacts"], json!([]));
    // The same 204 whether or not the target is online; 404 only for a non-existent user.
    assert_eq!(put(&s, "/v1/contacts/12345", &carol.token).await, 404);
    assert_eq!(
        put(&s, &format!("/v1/contacts/{}", carol.id), &carol.token).await,
        400
    );
    assert_eq!(put(&s, "/v1/contacts/abc", &carol.token).await, 404);
}

#[tokio::test]
async fn a_block_stops_messages_presence_and_typing_both_ways() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    befriend(&s, &alice, &bob).await;
    let (mut a, _) = s.connect(&alice).await;
    let (mut b, _) = s.connect(&bob).await;
    presence_within(&mut a, PRESENCE_BOUND).await; // bob came online

    assert_eq!(
        put(&s, &format!("/v1/blocks/{}", bob.id), &alice.token).await,
        204
    );
    // Bob's sends to alice fail; alice's to bob still work.
    b.send(json!({"type": "send", "to": alice.id, "client_id": "x", "body": "hi"}))
        .await;
    let e = b.next_of("error").await;
    assert_eq!(
        (e["code"].as_str(), e["ref"].as_str()),
        (Some("forbidden"), Some("x"))
    );
    a.send_message(&bob.id, "y", "one way").await;
    assert_eq!(b.next_of("message").await["body"], "one way");
    // Typing is dropped both ways.
    b.send(json!({"type": "typing", "to": alice.id})).await;
    a.send(json!({"type": "typing", "to": bob.id})).await;
    // Presence is hidden both ways: new devices get no presence for the other at welcome,
    // and comings and goings are not announced.
    let (_b2, frames) = connect_all(&s, &s.login("bob").await).await;
    assert!(frames.iter().all(|f| f["type"] != "presence"), "{frames:?}");
    drop(a);
    let (_, contacts) = s.get("/v1/contacts", &bob.token).await;
    assert!(contacts["contacts"][0].get("presence").is_none());
    b.expect_silence(Duration::from_millis(500)).await;

    // Unblocking restores the flow at once.
    let (mut a, _) = s.connect(&alice).await;
    assert_eq!(
        delete(&s, &format!("/v1/blocks/{}", bob.id), &alice.token).await,
        204
    );
    let p = presence_within(&mut b, PRESENCE_BOUND).await;
    assert_eq!(
        (p["user_id"].as_str(), p["status"].as_str()),
        (Some(alice.id.as_str()), Some("online"))
    );
    let p = presence_within(&mut a, PRESENCE_BOUND).await;
    assert_eq!(p["user_id"], bob.id.as_str());
    assert_eq!(put(&s, "/v1/blocks/12345", &alice.token).await, 404);
}

#[tokio::test]
async fn befriending_starts_and_unfriending_stops_the_flow_at_once() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let (mut a, _) = s.connect(&alice).await;
    let (mut b, _) = s.connect(&bob).await;
    assert_eq!(
        put(&s, &format!("/v1/contacts/{}", bob.id), &alice.token).await,
        204
    );
    a.expect_silence(Duration::from_millis(200)).await;
    assert_eq!(
        put(&s, &format!("/v1/contacts/{}", alice.id), &bob.token).await,
        204
    );
    let p = presence_within(&mut a, PRESENCE_BOUND).await;
    assert_eq!(
        (p["user_id"].as_str(), p["status"].as_str()),
        (Some(bob.id.as_str()), Some("online"))
    );
    let p = presence_within(&mut b, PRESENCE_BOUND).await;
    assert_eq!(p["user_id"], alice.id.as_str());

    assert_eq!(
        delete(&s, &format!("/v1/contacts/{}", alice.id), &bob.token).await,
        204
    );
    drop(b);
    a.expect_silence(Duration::from_millis(500)).await;
}

#[tokio::test]
async fn a_vanished_device_is_reported_offline_by_heartbeat() {
    let s = TestServer::start_with(|c| {
        c.gateway.ping_interval = Duration::from_millis(100);
        c.gateway.idle_timeout = Duration::from_millis(400);
    })
    .await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    befriend(&s, &alice, &bob).await;
    let (mut b, _) = s.connect(&bob).await;
    // Alice's socket stops reading: it answers no pings, like a cut network.
    let (_vanished, _) = s.connect(&alice).await;
    assert_eq!(
        presence_within(&mut b, PRESENCE_BOUND).await["status"],
        "online"
    );
    let started = Instant::now();
    // Bob keeps reading (and so keeps answering pings) while he waits.
    let p = tokio::time::timeout(Duration::from_secs(5), b.next_of("presence"))
        .await
        .expect("offline after the idle timeout");
    assert_eq!(
        (p["user_id"].as_str(), p["status"].as_str()),
        (Some(alice.id.as_str()), Some("offline"))
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // Bob, who answered pings, is still connected.
    b.send(json!({"type": "ping"})).await;
    assert_eq!(b.next_of("pong").await["type"], "pong");
}

#[tokio::test]
async fn last_seen_survives_a_restart() {
    let mut s = TestServer::start().await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    befriend(&s, &alice, &bob).await;
    let (mut a, _) = s.connect(&alice).await;
    a.inner.close(None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, before) = s.get("/v1/contacts", &bob.token).await;
    let last_seen = before["contacts"][0]["presence"]["last_seen"]
        .as_i64()
        .unwrap();
    assert!(last_seen > 0);
    s.restart().await;
    let (_, after) = s.get("/v1/contacts", &bob.token).await;
    assert_eq!(
        after["contacts"][0]["presence"],
        json!({"status": "offline", "last_seen": last_seen})
    );
}

#[tokio::test]
async fn receipts_arrive_once_and_in_order_and_the_list_reflects_them() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    befriend(&s, &alice, &bob).await;
    let bob2 = s.login("bob").await;
    let (mut a, _) = s.connect(&alice).await;
    let mut conv = String::new();
    for i in 1..=3 {
        conv = a
            .send_message(&bob.id, &format!("m{i}"), &format!("m{i}"))
            .await["conversation"]
            .as_str()
            .unwrap()
            .to_owned();
    }
    let (mut b1, inbox) = s.connect(&bob).await;
    let (mut b2, inbox2) = s.connect(&bob2).await;
    assert_eq!(inbox.len(), 3);

    // Device 1 acks up to message 2: alice hears `delivered` 2 once.
    b1.send(json!({"type": "ack", "cursor": inbox[1]["cursor"]}))
        .await;
    let r = a.next_of("receipt").await;
    assert_eq!(
        r,
        json!({"type": "receipt", "conversation": conv, "user_id": bob.id, "kind": "delivered", "seq": 2})
    );
    // Device 2 acking the same range is no advance: no receipt. Then 3 is.
    b2.send(json!({"type": "ack", "cursor": inbox2[1]["cursor"]}))
        .await;
    b2.send(json!({"type": "ack", "cursor": inbox2[2]["cursor"]}))
        .await;
    let r = a.next_of("receipt").await;
    assert_eq!(
        (r["kind"].as_str(), r["seq"].as_u64()),
        (Some("delivered"), Some(3))
    );

    // Read marks: the peer and the reader's other devices learn them; never backwards.
    b1.send(json!({"type": "read", "conversation": conv, "seq": 2}))
        .await;
    let r = a.next_of("receipt").await;
    assert_eq!(
        r,
        json!({"type": "receipt", "conversation": conv, "user_id": bob.id, "kind": "read", "seq": 2})
    );
    let r2 = b2.next_of("receipt").await;
    assert_eq!(
        (r2["kind"].as_str(), r2["seq"].as_u64()),
        (Some("read"), Some(2))
    );
    b1.send(json!({"type": "read", "conversation": conv, "seq": 1}))
        .await;
    b1.send(json!({"type": "read", "conversation": conv, "seq": 99}))
        .await; // clamped to 3
    let r = a.next_of("receipt").await;
    assert_eq!(
        (r["kind"].as_str(), r["seq"].as_u64()),
        (Some("read"), Some(3))
    );
    a.expect_silence(Duration::from_millis(300)).await;
    // The reading device itself hears nothing back.
    b1.expect_silence(Duration::from_millis(100)).await;
    // Not your conversation: not_found.
    let carol = s.user("carol").await;
    let (mut c, _) = s.connect(&carol).await;
    c.send(json!({"type": "read", "conversation": conv, "seq": 1}))
        .await;
    assert_eq!(c.next_of("error").await["code"], "not_found");

    // A device that was offline catches up with the ticks from the conversation list.
    let (_, list) = s.get("/v1/conversations", &alice.token).await;
    let entry = &list["conversations"][0];
    assert_eq!(
        (
            entry["peer_read_seq"].as_u64(),
            entry["peer_delivered_seq"].as_u64()
        ),
        (Some(3), Some(3))
    );
    assert_eq!(entry["read_seq"], 0);
    let (_, list) = s.get("/v1/conversations", &bob.token).await;
    assert_eq!(list["conversations"][0]["read_seq"], 3);
    assert_eq!(list["conversations"][0]["peer_read_seq"], 0);
}

/// What a stranger could learn from receipts, typing and the list: nothing (Guarantee 5).
/// The marks become visible when the two become friends, and hidden again when they stop.
#[tokio::test]
async fn strangers_get_no_receipts_typing_or_marks_and_friends_do() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let bob2 = s.login("bob").await;
    let (mut a, _) = s.connect(&alice).await;
    let (mut b1, _) = s.connect(&bob).await;
    let (mut b2, _) = s.connect(&bob2).await;
    let marks = |list: &Value| {
        let e = &list["conversations"][0];
        (
            e["peer_read_seq"].as_u64().unwrap(),
            e["peer_delivered_seq"].as_u64().unwrap(),
        )
    };

    // Alice, a stranger, writes; bob is online, acks and reads: alice hears nothing.
    let sent = a.send_message(&bob.id, "m1", "hello").await;
    let conv = sent["conversation"].as_str().unwrap().to_owned();
    let m = b1.next_of("message").await;
    b1.send(json!({"type": "ack", "cursor": m["cursor"]})).await;
    b1.send(json!({"type": "read", "conversation": conv, "seq": 1}))
        .await;
    // Bob's other device still hears his own read.
    let r = b2.next_of("receipt").await;
    assert_eq!(
        (r["kind"].as_str(), r["user_id"].as_str()),
        (Some("read"), Some(bob.id.as_str()))
    );
    // Typing is not relayed either way.
    a.send(json!({"type": "typing", "to": bob.id})).await;
    b1.send(json!({"type": "typing", "to": alice.id})).await;
    none_of(&mut a, &["receipt", "typing"], Duration::from_millis(400)).await;
    none_of(&mut b1, &["typing"], Duration::from_millis(100)).await;
    let (_, list) = s.get("/v1/conversations", &alice.token).await;
    assert_eq!(marks(&list), (0, 0), "{list}");
    // One way is still strangers.
    assert_eq!(
        put(&s, &format!("/v1/contacts/{}", bob.id), &alice.token).await,
        204
    );
    let (_, list) = s.get("/v1/conversations", &alice.token).await;
    assert_eq!(marks(&list), (0, 0));

    // Friends: the marks already made show at once; new ones come as receipts.
    assert_eq!(
        put(&s, &format!("/v1/contacts/{}", alice.id), &bob.token).await,
        204
    );
    let (_, list) = s.get("/v1/conversations", &alice.token).await;
    assert_eq!(marks(&list), (1, 1));
    a.send_message(&bob.id, "m2", "again").await;
    let m = b1.next_of("message").await;
    b1.send(json!({"type": "ack", "cursor": m["cursor"]})).await;
    let r = a.next_of("receipt").await;
    assert_eq!(
        (r["kind"].as_str(), r["seq"].as_u64()),
        (Some("delivered"), Some(2))
    );
    b1.send(json!({"type": "read", "conversation": conv, "seq": 2}))
        .await;
    let r = a.next_of("receipt").await;
    assert_eq!(
        (r["kind"].as_str(), r["seq"].as_u64()),
        (Some("read"), Some(2))
    );
    tokio::time::sleep(Duration::from_millis(1100)).await; // past the typing limiter's second
    b1.send(json!({"type": "typing", "to": alice.id})).await;
    assert_eq!(a.next_of("typing").await["from"], bob.id.as_str());

    // No longer friends: hidden again, and silent.
    assert_eq!(
        delete(&s, &format!("/v1/contacts/{}", alice.id), &bob.token).await,
        204
    );
    let (_, list) = s.get("/v1/conversations", &alice.token).await;
    assert_eq!(marks(&list), (0, 0));
    a.send_message(&bob.id, "m3", "still there?").await;
    let m = b1.next_of("message").await;
    b1.send(json!({"type": "ack", "cursor": m["cursor"]})).await;
    b1.send(json!({"type": "read", "conversation": conv, "seq": 3}))
        .await;
    tokio::time::sleep(Duration::from_millis(1100)).await; // past the typing limiter's second
    b1.send(json!({"type": "typing", "to": alice.id})).await;
    none_of(&mut a, &["receipt", "typing"], Duration::from_millis(500)).await;
    let (_, list) = s.get("/v1/conversations", &bob.token).await;
    assert_eq!(list["conversations"][0]["read_seq"], 3, "bob's own mark");
}

#[tokio::test]
async fn typing_reaches_an_online_friend_rate_limited_and_is_dropped_for_an_offline_one() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    befriend(&s, &alice, &bob).await;
    let (mut a, _) = s.connect(&alice).await;
    // Bob offline: dropped, no error.
    a.send(json!({"type": "typing", "to": bob.id})).await;
    a.send(json!({"type": "ping"})).await;
    assert_eq!(a.next().await["type"], "pong");

    let (mut b, _) = s.connect(&bob).await;
    tokio::time::sleep(Duration::from_millis(1100)).await; // let the limiter's window pass
    for _ in 0..5 {
        a.send(json!({"type": "typing", "to": bob.id})).await;
    }
    let t = b.next_of("typing").await;
    assert_eq!(t["from"], alice.id.as_str());
    let conv = t["conversation"].as_str().unwrap().to_owned();
    b.expect_silence(Duration::from_millis(500)).await; // the other four were rate-limited
    tokio::time::sleep(Duration::from_millis(600)).await;
    a.send(json!({"type": "typing", "to": bob.id})).await;
    assert_eq!(b.next_of("typing").await["conversation"], conv.as_str());
    // Never stored: a new device of bob catches up on nothing.
    let (_b2, caught) = s.connect(&s.login("bob").await).await;
    assert!(caught.is_empty());
}

#[tokio::test]
async fn presence_fan_out_to_a_thousand_friends() {
    let s = TestServer::start().await;
    let app = s.server.as_ref().unwrap().app.clone();
    let star = s.user("star").await;
    let star_id: confab_protocol::Id = star.id.parse().unwrap();
    // 1,000 friends, seeded through the running node's store (no Argon2 per account).
    let seeded = confab_server::admin::seed_into(&app, "fan", 1000, "password1", |_| {})
        .await
        .expect("seeding");
    for acc in &seeded {
        app.store
            .add_contact(star_id, acc.user_id, 0)
            .await
            .unwrap();
        app.store
            .add_contact(acc.user_id, star_id, 0)
            .await
            .unwrap();
    }
    // 200 of them online.
    let mut sockets = Vec::new();
    for acc in seeded.iter().take(200) {
        let user = TestUser {
            name: acc.username.clone(),
            token: acc.token.clone(),
            id: acc.user_id.to_string(),
            device: acc.device_id.to_string(),
        };
        sockets.push(s.connect(&user).await.0);
    }
    let started = Instant::now();
    let (_star_ws, frames) = connect_all(&s, &star).await;
    let welcome_done = started.elapsed();
    assert_eq!(
        frames.iter().filter(|f| f["type"] == "presence").count(),
        200
    );
    for ws in &mut sockets {
        let p = presence_within(ws, PRESENCE_BOUND).await;
        assert_eq!(p["user_id"], star.id.as_str());
    }
    println!(
        "presence fan-out: 1,000 friends (200 online): welcome+presence+synced in {welcome_done:?}, all 200 notified in {:?}",
        started.elapsed()
    );
}

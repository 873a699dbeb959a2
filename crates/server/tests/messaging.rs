//! Black-box tests of 1:1 messaging: live delivery, catch-up, multi-device, idempotency,
//! ordering under concurrency, history.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{TestServer, Ws, without_rate_limits};
use serde_json::{Value, json};

fn seq(v: &Value) -> u64 {
    v["seq"].as_u64().unwrap()
}

#[tokio::test]
async fn two_users_chat() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let (mut a, _) = s.connect(&alice).await;
    let (mut b, _) = s.connect(&bob).await;

    let sent = a.send_message(&bob.id, "c1", "hello bob").await;
    assert_eq!(seq(&sent), 1);
    let id = sent["id"].as_str().unwrap();
    assert!(id.parse::<u64>().is_ok(), "ids are decimal strings");
    let conv = sent["conversation"].as_str().unwrap().to_owned();

    let got = b.next_of("message").await;
    assert_eq!(got["id"], id);
    assert_eq!(got["from"], alice.id.as_str());
    assert_eq!(got["to"], bob.id.as_str());
    assert_eq!(got["body"], "hello bob");
    assert_eq!(got["conversation"], conv.as_str());
    assert_eq!(got["ts"], sent["ts"]);
    assert!(got["cursor"].is_string());
    // The sending device gets its own message too.
    let echo = a.next_of("message").await;
    assert_eq!(echo["id"], id);

    let reply = b.send_message(&alice.id, "r1", "hi alice").await;
    assert_eq!(seq(&reply), 2);
    assert_eq!(reply["conversation"], conv.as_str());
    let got = a.next_of("message").await;
    assert_eq!(got["body"], "hi alice");
    assert!(reply["id"].as_str().unwrap().parse::<u64>().unwrap() > id.parse::<u64>().unwrap());
}

#[tokio::test]
async fn offline_user_catches_up_and_acked_events_are_not_repeated() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let (mut a, _) = s.connect(&alice).await;
    for i in 0..5 {
        a.send_message(&bob.id, &format!("m{i}"), &format!("msg {i}"))
            .await;
    }
    let (mut b, missed) = s.connect(&bob).await;
    let bodies: Vec<_> = missed.iter().map(|m| m["body"].as_str().unwrap()).collect();
    assert_eq!(bodies, ["msg 0", "msg 1", "msg 2", "msg 3", "msg 4"]);
    let seqs: Vec<_> = missed.iter().map(seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    assert_eq!(b.synced, missed[4]["cursor"].as_str().unwrap());

    // Ack the third; reconnecting resumes after it.
    b.send(json!({"type": "ack", "cursor": missed[2]["cursor"]}))
        .await;
    // A ping round-trip orders the ack before the close.
    b.send(json!({"type": "ping"})).await;
    b.next_of("pong").await;
    drop(b);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_b, again) = s.connect(&bob).await;
    let seqs: Vec<_> = again.iter().map(seq).collect();
    assert_eq!(seqs, [4, 5]);

    // An explicit cursor overrides the stored one.
    let (_b2, from_start) = s.connect_from(&bob, Some("0")).await;
    assert_eq!(from_start.len(), 5);
}

#[tokio::test]
async fn an_ack_counts_even_when_the_device_reconnects_at_once() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let (mut a, _) = s.connect(&alice).await;
    for i in 0..20 {
        a.send_message(&bob.id, &format!("m{i}"), "x").await;
    }
    for round in 0..5 {
        let (mut b, caught) = s.connect(&bob).await;
        if round == 0 {
            assert_eq!(caught.len(), 20);
        } else {
            assert!(
                caught.is_empty(),
                "round {round}: {} events repeated",
                caught.len()
            );
        }
        b.send(json!({"type": "ack", "cursor": b.synced.clone()}))
            .await;
        // A bogus ack past what was sent is clamped, not trusted.
        b.send(json!({"type": "ack", "cursor": "999999"})).await;
        // The pong shows the acks were read; the store write may still be in flight.
        b.send(json!({"type": "ping"})).await;
        b.next_of("pong").await;
        drop(b); // no close handshake, no wait: reconnect immediately
    }
}

#[tokio::test]
async fn second_device_sees_both_directions() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let bob2 = s.login("bob").await;
    assert_ne!(bob.device, bob2.device);
    let (mut a, _) = s.connect(&alice).await;
    let (mut b1, _) = s.connect(&bob).await;
    let (mut b2, _) = s.connect(&bob2).await;

    a.send_message(&bob.id, "a1", "to bob").await;
    assert_eq!(b1.next_of("message").await["body"], "to bob");
    assert_eq!(b2.next_of("message").await["body"], "to bob");
    b1.send_message(&alice.id, "b1", "from bob's phone").await;
    assert_eq!(b1.next_of("message").await["body"], "from bob's phone");
    assert_eq!(b2.next_of("message").await["body"], "from bob's phone");
    loop {
        let m = a.next_of("message").await;
        if m["from"] == bob.id.as_str() {
            assert_eq!(m["body"], "from bob's phone");
            break;
        }
    }

    // A third device that logs in later sees the whole history by catch-up.
    let bob3 = s.login("bob").await;
    let (_b3, history) = s.connect(&bob3).await;
    assert_eq!(history.len(), 2);
}

#[tokio::test]
async fn send_is_idempotent_on_the_same_socket_a_new_socket_and_after_restart() {
    let mut s = TestServer::start().await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let (mut a, _) = s.connect(&alice).await;
    let first = a.send_message(&bob.id, "same", "once").await;
    let again = a.send_message(&bob.id, "same", "once").await;
    assert_eq!(first, again);

    let (mut a2, caught) = s.connect(&alice).await;
    assert_eq!(caught.len(), 1);
    let third = a2.send_message(&bob.id, "same", "once").await;
    assert_eq!(first, third);
    drop((a, a2));

    s.restart().await;
    let (mut a3, caught) = s.connect(&alice).await;
    assert_eq!(
        caught.len(),
        1,
        "the stored cursor/session survive a restart"
    );
    let fourth = a3.send_message(&bob.id, "same", "once").await;
    assert_eq!(first, fourth);
    let next = a3.send_message(&bob.id, "other", "twice").await;
    assert_eq!(seq(&next), 2, "nothing new was stored by the repeats");
    let (_b, inbox) = s.connect(&bob).await;
    assert_eq!(inbox.len(), 2);
}

#[tokio::test]
async fn fifty_concurrent_senders_get_gapless_seqs() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    const SENDERS: usize = 50;
    const EACH: usize = 20;
    let mut devices = Vec::new();
    for i in 0..SENDERS {
        let (from, to) = if i % 2 == 0 {
            ("alice", &bob)
        } else {
            ("bob", &alice)
        };
        devices.push((s.login(from).await, to.clone()));
    }
    let addr = s.addr;
    let tasks: Vec<_> = devices
        .into_iter()
        .enumerate()
        .map(|(i, (me, to))| {
            tokio::spawn(async move {
                let mut ws = Ws::connect(addr).await;
                ws.send(json!({"type": "hello", "token": me.token})).await;
                ws.next_of("synced").await;
                for k in 0..EACH {
                    ws.send(json!({"type": "send", "to": to.id, "client_id": format!("{i}-{k}"), "body": "x"}))
                        .await;
                }
                let mut seqs = Vec::new();
                while seqs.len() < EACH {
                    let f = ws.next().await;
                    assert_ne!(f["type"], "error", "{f}");
                    if f["type"] == "sent" {
                        seqs.push(seq(&f));
                    }
                }
                seqs
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_unstable();
    let n = (SENDERS * EACH) as u64;
    assert_eq!(all, (1..=n).collect::<Vec<_>>());
    // The store agrees: history has exactly 1..N.
    let (_, inbox) = s.connect(&alice).await;
    let seqs: Vec<_> = inbox.iter().map(seq).collect();
    assert_eq!(seqs, (1..=n).collect::<Vec<_>>());
}

#[tokio::test]
async fn live_and_catch_up_meet_without_gaps_or_repeats() {
    let s = TestServer::start_with(without_rate_limits).await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    const N: usize = 600;
    let (mut a, _) = s.connect(&alice).await;
    let bob_id = bob.id.clone();
    let sender = tokio::spawn(async move {
        for i in 0..N {
            a.send(
                json!({"type": "send", "to": bob_id, "client_id": format!("r{i}"), "body": "b"}),
            )
            .await;
            if i % 50 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        let mut acks = 0;
        while acks < N {
            if a.next().await["type"] == "sent" {
                acks += 1;
            }
        }
    });
    // Bob connects while alice is mid-stream, and sees every position exactly once, in order.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (mut b, caught) = s.connect(&bob).await;
    let mut cursors: Vec<u64> = caught
        .iter()
        .map(|m| m["cursor"].as_str().unwrap().parse().unwrap())
        .collect();
    while cursors.len() < N {
        let f = b.next_of("message").await;
        cursors.push(f["cursor"].as_str().unwrap().parse().unwrap());
    }
    sender.await.unwrap();
    assert_eq!(cursors, (1..=N as u64).collect::<Vec<_>>());
    b.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn history_endpoints() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let carol = s.user("carol").await;
    let (mut a, _) = s.connect(&alice).await;
    let mut conv = String::new();
    for i in 1..=7 {
        conv = a
            .send_message(&bob.id, &format!("ab{i}"), &format!("ab {i}"))
            .await["conversation"]
            .as_str()
            .unwrap()
            .to_owned();
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    let ac = a.send_message(&carol.id, "ac1", "hi carol").await;

    let (status, list) = s.get("/v1/conversations", &alice.token).await;
    assert_eq!(status, 200);
    let list = list["conversations"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(
        list[0]["conversation"], ac["conversation"],
        "newest activity first"
    );
    assert_eq!(list[0]["peer"], carol.id.as_str());
    assert_eq!(list[1]["peer"], bob.id.as_str());
    assert_eq!(list[1]["last_seq"], 7);
    assert_eq!(list[1]["last_message"]["body"], "ab 7");
    assert!(list[1]["last_message"].get("cursor").is_none());
    for k in ["read_seq", "peer_read_seq", "peer_delivered_seq"] {
        assert!(list[1][k].is_u64(), "{k}");
    }
    let (_, whole) = s.get("/v1/conversations", &alice.token).await;
    assert_eq!((&whole["more"], whole.get("next")), (&json!(false), None));

    let path = format!("/v1/conversations/{conv}/messages");
    let (status, page) = s.get(&format!("{path}?limit=3"), &bob.token).await;
    assert_eq!(status, 200);
    let seqs: Vec<_> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(seq)
        .collect();
    assert_eq!(seqs, [5, 6, 7]);
    assert_eq!(page["more"], true);
    let (_, page) = s.get(&format!("{path}?limit=3&before=5"), &bob.token).await;
    let seqs: Vec<_> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(seq)
        .collect();
    assert_eq!(seqs, [2, 3, 4]);
    assert_eq!(page["more"], true);
    let (_, page) = s.get(&format!("{path}?before=2"), &bob.token).await;
    assert_eq!(page["messages"].as_array().unwrap().len(), 1);
    assert_eq!(page["more"], false);
    let (_, page) = s.get(&format!("{path}?limit=1000"), &bob.token).await;
    assert_eq!(page["messages"].as_array().unwrap().len(), 7);

    // Not a participant, or no such conversation: the same 404.
    let (status, body) = s.get(&path, &carol.token).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "not_found");
    let (status, _) = s.get("/v1/conversations/1-2/messages", &alice.token).await;
    assert_eq!(status, 404);
    let (status, _) = s
        .get("/v1/conversations/garbage/messages", &alice.token)
        .await;
    assert_eq!(status, 404);
    let (status, body) = s.get(&format!("{path}?limit=0"), &bob.token).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("bad_request"))
    );
    let (status, _) = s.get(&format!("{path}?limit=abc"), &bob.token).await;
    assert_eq!(status, 400);
    let (status, _) = s.get("/v1/conversations", "not-a-token").await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn users_lookup_and_logout() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let (status, body) = s.get("/v1/users/ALICE", &alice.token).await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({"user_id": alice.id, "username": "alice"}));
    let (status, body) = s.get("/v1/users/nobody", &alice.token).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let (status, _) = s.get("/v1/users/alice", "bad").await;
    assert_eq!(status, 401);

    let other = s.login("alice").await;
    let (mut ws, _) = s.connect(&alice).await;
    let (mut ws_other, _) = s.connect(&other).await;
    let r = s
        .http
        .delete(s.url("/v1/sessions/current"))
        .bearer_auth(&alice.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        ws.closed().await,
        Some(1008),
        "the revoked device's socket closes"
    );
    // The other device is untouched.
    ws_other.send(json!({"type": "ping"})).await;
    assert_eq!(ws_other.next().await["type"], "pong");
    let (status, _) = s.get("/v1/conversations", &alice.token).await;
    assert_eq!(status, 401, "a revoked token is refused");
    let mut again = Ws::connect(s.addr).await;
    again
        .send(json!({"type": "hello", "token": alice.token}))
        .await;
    assert_eq!(again.next().await["code"], "unauthorized");
    assert_eq!(again.closed().await, Some(1008));
}

#[tokio::test]
async fn registration_and_login_rules() {
    let s = TestServer::start().await;
    s.user("Bob").await;
    let (status, body) = s
        .post(
            "/v1/users",
            json!({"username": "bob", "password": "password1"}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("conflict"))
    );
    for bad in [
        json!({"username": "ab", "password": "password1"}),
        json!({"username": "bad name", "password": "password1"}),
        json!({"username": "carol", "password": "short"}),
        json!({"username": "carol"}),
        json!({"username": 5, "password": "password1"}),
    ] {
        let (status, body) = s.post("/v1/users", bad.clone()).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some("bad_request")),
            "{bad}"
        );
    }
    let wrong_password = s
        .post(
            "/v1/sessions",
            json!({"username": "bob", "password": "password2"}),
        )
        .await;
    let unknown_user = s
        .post(
            "/v1/sessions",
            json!({"username": "nobody", "password": "password1"}),
        )
        .await;
    assert_eq!(wrong_password.0, 401);
    assert_eq!(wrong_password, unknown_user, "the same answer for both");
    // Login is case-insensitive on the username, like registration.
    let (status, _) = s
        .post(
            "/v1/sessions",
            json!({"username": "BOB", "password": "password1"}),
        )
        .await;
    assert_eq!(status, 201);
}

#[tokio::test]
async fn tokens_are_unique_per_device() {
    let s = TestServer::start().await;
    s.user("alice").await;
    let mut tokens = HashSet::new();
    for _ in 0..5 {
        assert!(tokens.insert(s.login("alice").await.token));
    }
}

#[tokio::test]
async fn shutdown_closes_sockets_with_going_away() {
    let mut s = TestServer::start().await;
    let alice = s.user("alice").await;
    let (mut ws, _) = s.connect(&alice).await;
    let server = s.server.take().unwrap();
    let stopping = tokio::spawn(server.shutdown());
    assert_eq!(ws.closed().await, Some(1001));
    stopping.await.unwrap().unwrap();
}

#[tokio::test]
async fn metrics_and_health() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let (mut a, _) = s.connect(&alice).await;
    a.send_message(&bob.id, "m", "x").await;
    let r = s.http.get(s.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = s.http.get(s.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let text = s.metrics().await;
    for needle in [
        "confab_connections 1",
        "confab_connections_refused_total 0",
        "confab_messages_stored_total 1",
        "confab_send_latency_seconds_count 1",
        "confab_store_commit_batch_size_count",
        "confab_store_wal_restarts_total 0",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
}

/// PROTOCOL: history `limit` is 1-200, "more is clamped to 200".
#[tokio::test]
async fn history_limit_is_clamped_to_200() {
    let s = TestServer::start_with(without_rate_limits).await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let (mut a, _) = s.connect(&alice).await;
    let mut conversation = Value::Null;
    for i in 0..205 {
        conversation =
            a.send_message(&bob.id, &format!("c{i}"), "hi").await["conversation"].clone();
    }
    let conversation = conversation.as_str().unwrap().to_owned();
    let (status, page) = s
        .get(
            &format!("/v1/conversations/{conversation}/messages?limit=500"),
            &bob.token,
        )
        .await;
    assert_eq!(status, 200);
    let seqs: Vec<u64> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(
        seqs,
        (6..=205).collect::<Vec<_>>(),
        "the newest 200, ascending"
    );
    assert_eq!(page["more"], true);
}

#[tokio::test]
async fn sends_read_before_a_socket_drops_are_stored_and_delivered() {
    let s = TestServer::start_with(without_rate_limits).await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let (mut b, _) = s.connect(&bob).await;
    let (mut a, _) = s.connect(&alice).await;
    const N: u64 = 100;
    for i in 0..N {
        a.send(json!({"type": "send", "to": bob.id, "client_id": format!("d{i}"), "body": "x"}))
            .await;
    }
    // Once the pong shows the server has read every send, the socket goes without waiting
    // for their acks: every send the server read still completes.
    a.send(json!({"type": "ping"})).await;
    a.next_of("pong").await;
    drop(a);
    let mut first_id = None;
    for want in 1..=N {
        let m = b.next_of("message").await;
        assert_eq!(seq(&m), want);
        if want == 1 {
            first_id = Some(m["id"].clone());
        }
    }
    // The client's retry finds what was stored.
    let (mut a, _) = s.connect(&alice).await;
    let sent = a.send_message(&bob.id, "d0", "x").await;
    assert_eq!(Some(sent["id"].clone()), first_id);
    assert_eq!(seq(&sent), 1);
}

#[tokio::test]
async fn a_sender_that_stops_reading_does_not_hold_back_its_messages() {
    use futures_util::SinkExt;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use tokio_tungstenite::tungstenite::Message as WsMessage;
    let s = TestServer::start_with(|c| {
        without_rate_limits(c);
        // Room for every event: the server's writes to Alice stall instead of her socket
        // being dropped as too slow.
        c.gateway.outbound_queue = 100_000;
    })
    .await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let carol = s.user("carol").await;
    let (mut c, _) = s.connect(&carol).await;
    let (mut a, _) = s.connect(&alice).await;
    let (mut b, _) = s.connect(&bob).await;
    // Carol keeps up and notes the highest seq she got from Alice.
    let got = Arc::new(AtomicU64::new(0));
    let seen = got.clone();
    let reader = tokio::spawn(async move {
        loop {
            let m = c.next_of("message").await;
            seen.fetch_max(seq(&m), Ordering::SeqCst);
        }
    });
    // Bob floods Alice with 4 KB messages she never reads, until the server can no longer
    // write to her socket ...
    let stop = Arc::new(AtomicBool::new(false));
    let flooding = stop.clone();
    let to_alice = alice.clone();
    let flood = tokio::spawn(async move {
        let body = "z".repeat(4000);
        let mut i = 0;
        while !flooding.load(Ordering::SeqCst) {
            b.send_message(&to_alice.id, &format!("f{i}"), &body).await;
            i += 1;
        }
    });
    // ... while Alice keeps sending to Carol: the sends the server read before it stalled
    // on Alice's socket must still be stored and delivered.
    // In bursts of 64 frames per write: the server reads them one by one between writes to
    // Alice, so some are still being stored when a write to her stalls.
    let mut stalled = false;
    for burst in 0..2_000 {
        let frames = (0..64).map(|i| {
            let frame = json!({"type": "send", "to": carol.id, "client_id": format!("s{burst}-{i}"), "body": "hi"});
            Ok(WsMessage::Text(frame.to_string().into()))
        });
        let mut frames = futures_util::stream::iter(frames);
        if tokio::time::timeout(Duration::from_secs(2), a.inner.send_all(&mut frames))
            .await
            .is_err()
        {
            stalled = true;
            break;
        }
    }
    assert!(stalled, "the server kept reading Alice's sends");
    stop.store(true, Ordering::SeqCst);
    flood.await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, list) = s.get("/v1/conversations", &carol.token).await;
    assert_eq!(status, 200);
    let stored = list["conversations"][0]["last_seq"].as_u64().unwrap();
    let deadline = tokio::time::Instant::now() + confab_testkit::ws::WAIT;
    while got.load(Ordering::SeqCst) < stored {
        assert!(
            tokio::time::Instant::now() < deadline,
            "carol got {} of {stored} stored messages",
            got.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    reader.abort();
    drop(a);
}

/// `GET /v1/conversations` in pages: `limit` (default 50, clamped to 200), `more`, and `next`
/// to pass as `before`; a malformed cursor or limit is `bad_request`.
#[tokio::test]
async fn the_conversation_list_comes_in_pages() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let (mut a, _) = s.connect(&alice).await;
    let mut peers = Vec::new();
    for i in 0..5 {
        let p = s.user(&format!("peer{i}")).await;
        a.send_message(&p.id, &format!("c{i}"), "hi").await;
        peers.push(p.id);
    }
    let newest_first: Vec<String> = peers.iter().rev().cloned().collect();
    let peers_of = |page: &Value| -> Vec<String> {
        page["conversations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["peer"].as_str().unwrap().to_owned())
            .collect()
    };
    let mut seen = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let path = match &next {
            None => "/v1/conversations?limit=2".to_owned(),
            Some(n) => format!("/v1/conversations?limit=2&before={n}"),
        };
        let (status, page) = s.get(&path, &alice.token).await;
        assert_eq!(status, 200, "{page}");
        seen.extend(peers_of(&page));
        assert_eq!(page["more"].as_bool().unwrap(), page.get("next").is_some());
        match page.get("next") {
            Some(n) => next = Some(n.as_str().unwrap().to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, newest_first);
    let (_, page) = s.get("/v1/conversations?limit=1000", &alice.token).await;
    assert_eq!(peers_of(&page), newest_first, "clamped, not refused");
    for bad in [
        "limit=0",
        "limit=-1",
        "limit=x",
        "before=",
        "before=01",
        "before=-5",
        "before=abc",
        "before=9223372036854775808",
        "before=%2B5",
    ] {
        let (status, body) = s
            .get(&format!("/v1/conversations?{bad}"), &alice.token)
            .await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "bad_request", "{bad}");
    }
}

/// The default page is bounded: 60 conversations come as 50 and a cursor to the rest.
#[tokio::test]
async fn the_default_conversation_page_is_fifty() {
    let s = TestServer::start().await;
    let app = s.server.as_ref().unwrap().app.clone();
    let alice = s.user("alice").await;
    let seeded = confab_server::admin::seed_into(&app, "many", 60, "password1", |_| {})
        .await
        .unwrap();
    let (mut a, _) = s.connect(&alice).await;
    for (i, p) in seeded.iter().enumerate() {
        a.send_message(&p.user_id.to_string(), &format!("c{i}"), "hi")
            .await;
    }
    let (_, page) = s.get("/v1/conversations", &alice.token).await;
    assert_eq!(page["conversations"].as_array().unwrap().len(), 50);
    assert_eq!(page["more"], true);
    let next = page["next"].as_str().unwrap();
    let (_, rest) = s
        .get(&format!("/v1/conversations?before={next}"), &alice.token)
        .await;
    assert_eq!(rest["conversations"].as_array().unwrap().len(), 10);
    assert_eq!(rest["more"], false);
}

/// A 1:1 conversation can be named by its id instead of the peer: `send` and `typing` with
/// `conversation` reach the same conversation. A conversation the sender is not in, or one
/// that does not exist, is `not_found`; naming both `to` and `conversation`, or neither, is
/// `bad_request` (PROTOCOL.md, the `send` and `typing` rows).
#[tokio::test]
async fn a_send_or_typing_can_name_the_conversation() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let carol = s.user("carol").await;
    for (owner, other) in [(&alice, &bob), (&bob, &alice)] {
        let (status, _) = s
            .request(
                "PUT",
                &format!("/v1/contacts/{}", other.id),
                &owner.token,
                None,
            )
            .await;
        assert_eq!(status, 204);
    }
    let (mut a, _) = s.connect(&alice).await;
    let (mut b, _) = s.connect(&bob).await;
    let first = a.send_message(&bob.id, "c1", "by user").await;
    let conv = first["conversation"].as_str().unwrap().to_owned();
    b.next_of("message").await;

    a.send(
        json!({"type": "send", "conversation": conv, "client_id": "c2", "body": "by conversation"}),
    )
    .await;
    let sent = a.next_of("sent").await;
    assert_eq!(
        (sent["conversation"].as_str(), seq(&sent)),
        (Some(conv.as_str()), 2)
    );
    let got = b.next_of("message").await;
    assert_eq!(
        (got["body"].as_str(), got["to"].as_str()),
        (Some("by conversation"), Some(bob.id.as_str()))
    );

    a.send(json!({"type": "typing", "conversation": conv}))
        .await;
    let typing = b.next_of("typing").await;
    assert_eq!(typing["from"], alice.id.as_str());

    // Carol is not in it; a group id names nothing yet; a malformed id is unknown too.
    let (mut c, _) = s.connect(&carol).await;
    for (i, other) in [conv.as_str(), "g1", "not-a-conversation"]
        .into_iter()
        .enumerate()
    {
        let client_id = format!("x{i}");
        c.send(
            json!({"type": "send", "conversation": other, "client_id": client_id, "body": "hi"}),
        )
        .await;
        let e = c.next_of("error").await;
        assert_eq!(
            (e["code"].as_str(), e["ref"].as_str()),
            (Some("not_found"), Some(client_id.as_str())),
            "{other}"
        );
    }
    c.send(json!({"type": "typing", "conversation": conv}))
        .await;
    b.expect_silence(Duration::from_millis(300)).await;

    for frame in [
        json!({"type": "send", "client_id": "y1", "body": "hi"}),
        json!({"type": "send", "to": bob.id, "conversation": conv, "client_id": "y2", "body": "hi"}),
        json!({"type": "typing"}),
        json!({"type": "typing", "to": bob.id, "conversation": conv}),
    ] {
        a.send(frame.clone()).await;
        let e = a.next_of("error").await;
        assert_eq!(e["code"], "bad_request", "{frame}: {e}");
    }
    // Nothing was stored by the refused frames.
    let (_, page) = s
        .get(&format!("/v1/conversations/{conv}/messages"), &alice.token)
        .await;
    assert_eq!(page["messages"].as_array().unwrap().len(), 2);
}

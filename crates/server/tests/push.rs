//! Push against a real server (PROTOCOL.md "Push", Guarantee 6): subscriptions, the presence
//! check, Web Push as a browser's push service receives it (decrypted with the subscription's
//! private key, its VAPID JWT verified), retries, coalescing, clearing on read, the bound, and
//! the gateway, APNs and FCM stand-ins. The kill -9 and cluster cases run the binary:
//! `crates/confab/tests/push.rs`.

mod common;

use std::time::Duration;

use common::{TestServer, TestUser, Ws};
use confab_testkit::push::{ApnsDouble, FcmDouble, GatewayReceiver, Reply, WebPushReceiver};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(10);

/// A server whose Web Push may reach the loopback receiver, retrying quickly.
async fn server(tweak: impl FnOnce(&mut confab_server::Config)) -> TestServer {
    TestServer::start_with(|c| {
        c.push.allow_private = true;
        c.push.retry_base = Duration::from_millis(200);
        c.push.poll_interval = Duration::from_millis(100);
        tweak(c);
    })
    .await
}

/// A receiver that accepts only this server's VAPID key.
async fn receiver(s: &TestServer) -> WebPushReceiver {
    let r = WebPushReceiver::start().await;
    let (status, vapid) = s.get("/v1/push/vapid", "").await;
    assert_eq!(status, 200, "{vapid}");
    r.expect_server_key(vapid["public_key"].as_str().unwrap());
    r
}

async fn subscribe(s: &TestServer, user: &TestUser, body: Value) -> (u16, Value) {
    s.request("PUT", "/v1/push/subscription", &user.token, Some(body))
        .await
}

async fn subscribed(s: &TestServer, user: &TestUser, body: Value) {
    let (status, answer) = subscribe(s, user, body).await;
    assert_eq!(status, 204, "{answer}");
}

/// What arrived at `path` and was accepted (every check passed).
fn accepted(r: &WebPushReceiver, path: &str) -> Vec<Value> {
    r.received()
        .into_iter()
        .filter(|x| x.path.ends_with(path) && x.failure.is_none() && x.status < 300)
        .map(|x| x.payload)
        .collect()
}

/// Waits until `path` has `n` accepted notifications; returns them.
async fn wait_accepted(r: &WebPushReceiver, path: &str, n: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let got = accepted(r, path);
        if got.len() >= n {
            return got;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path}: {} of {n} arrived: {:?}",
            got.len(),
            r.received()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `user`'s device has no subscription (the push server deleted it).
async fn wait_unsubscribed(s: &TestServer, user: &TestUser, why: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, _) = s.get("/v1/push/subscription", &user.token).await;
        if status == 404 {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{why}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of a metric line starting with `prefix` (0 if absent).
fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

async fn send(ws: &mut Ws, to: &TestUser, client_id: &str, body: &str) -> Value {
    let sent = ws.send_message(&to.id, client_id, body).await;
    assert_eq!(sent["type"], "sent", "{sent}");
    sent
}

#[tokio::test]
async fn an_offline_device_gets_a_signed_encrypted_notification_and_an_online_one_none() {
    let s = server(|_| {}).await;
    let r = receiver(&s).await;
    let alice_phone = s.user("alice").await;
    let alice_laptop = s.login("alice").await;
    let bob = s.user("bob").await;
    subscribed(&s, &alice_phone, r.subscription_json("phone")).await;
    subscribed(&s, &alice_laptop, r.subscription_json("laptop")).await;
    // The sender's own subscription is no reason to notify.
    subscribed(&s, &bob, r.subscription_json("bob")).await;
    let (mut laptop, _) = s.connect(&alice_laptop).await;
    let (mut ws, _) = s.connect(&bob).await;

    let sent = send(&mut ws, &alice_phone, "c1", "secret text").await;
    let got = wait_accepted(&r, "phone", 1).await;
    assert_eq!(
        got[0],
        json!({"type": "message", "conversation": sent["conversation"], "id": sent["id"],
               "seq": 1, "from": bob.id, "from_username": "bob", "unread": 1}),
        "no body without preview"
    );
    let push = r
        .received()
        .into_iter()
        .find(|x| x.path.ends_with("phone"))
        .unwrap();
    assert!(push.vapid_ok, "{push:?}");
    assert_eq!(push.urgency.as_deref(), Some("high"));
    assert_eq!(push.topic.as_deref().map(str::len), Some(32));
    let ttl = push.ttl.unwrap();
    assert!(
        ttl > 86_000 && ttl <= 86_400,
        "TTL is what is left of 24 h: {ttl}"
    );
    // The laptop has its message on its socket; nobody else gets a push.
    assert_eq!(laptop.next_of("message").await["id"], sent["id"]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(r.received().len(), 1, "{:?}", r.received());

    let m = s.metrics().await;
    assert_eq!(metric(&m, "confab_push_sent_total{kind=\"webpush\"}"), 1.0);
    assert!(metric(&m, "confab_push_online_skipped_total") >= 1.0, "{m}");
    assert!(m.contains("confab_push_latency_seconds_count 1"), "{m}");
}

#[tokio::test]
async fn preview_puts_the_text_in_the_payload() {
    let s = server(|_| {}).await;
    let r = receiver(&s).await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    subscribed(&s, &alice, r.subscription_json_with_preview("alice", true)).await;
    let (mut ws, _) = s.connect(&bob).await;
    send(&mut ws, &alice, "c1", "hello <b>alice</b>").await;
    let got = wait_accepted(&r, "alice", 1).await;
    assert_eq!(got[0]["body"], "hello <b>alice</b>");
}

#[tokio::test]
async fn subscriptions_are_checked_kept_per_device_and_deleted() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let keys = json!({"p256dh": "BLn9b-VR0ca83knDNZ32dCHGyjJp-1riX9ZTN40MqV8K_LpQmLqxC_DoHvqvFXO_nGdAB4W9dogZb_sM-uV4JbY",
                      "auth": "_ordMnz7uTCmrpBTeUV4Bw"});
    for (body, why) in [
        (
            json!({"kind": "webpush", "endpoint": "http://push.example.com/x", "keys": keys}),
            "plain http",
        ),
        (
            json!({"kind": "webpush", "endpoint": "https://127.0.0.1/x", "keys": keys}),
            "loopback",
        ),
        (
            json!({"kind": "webpush", "endpoint": "https://10.1.2.3/x", "keys": keys}),
            "private",
        ),
        (
            json!({"kind": "webpush", "endpoint": "https://localhost/x", "keys": keys}),
            "a name resolving to loopback",
        ),
        (
            json!({"kind": "webpush", "endpoint": "https://push.example.com/x",
                   "keys": {"p256dh": "BNc", "auth": "x"}}),
            "malformed keys",
        ),
        (
            json!({"kind": "apns", "token": "abcd"}),
            "no APNs credentials",
        ),
        (
            json!({"kind": "fcm", "token": "abcd"}),
            "no FCM credentials",
        ),
        (
            json!({"kind": "gateway", "gateway": "sygnal", "pushkey": "k", "app_id": "a"}),
            "no such gateway",
        ),
        (json!({"kind": "sms", "to": "1"}), "no such kind"),
    ] {
        let (status, answer) = subscribe(&s, &alice, body).await;
        assert_eq!(status, 400, "{why}: {answer}");
        assert_eq!(answer["error"]["code"], "bad_request", "{why}: {answer}");
    }
    let (status, _) = s
        .request("PUT", "/v1/push/subscription", "nope", Some(json!({})))
        .await;
    assert_eq!(status, 401);
    let (status, answer) = s.get("/v1/push/subscription", &alice.token).await;
    assert_eq!(status, 404, "{answer}");
    assert_eq!(answer["error"]["code"], "not_found");

    // Allowed, kept, replaced, deleted: one per device.
    let s = server(|_| {}).await;
    let r = receiver(&s).await;
    let alice = s.user("alice").await;
    let other = s.login("alice").await;
    let first = r.subscription_json("one");
    subscribed(&s, &alice, first.clone()).await;
    let (status, got) = s.get("/v1/push/subscription", &alice.token).await;
    assert_eq!(status, 200);
    assert_eq!(got["endpoint"], first["endpoint"]);
    assert_eq!(got["preview"], false);
    let (status, _) = s.get("/v1/push/subscription", &other.token).await;
    assert_eq!(status, 404, "another device has its own");
    subscribed(&s, &alice, r.subscription_json_with_preview("two", true)).await;
    let (_, got) = s.get("/v1/push/subscription", &alice.token).await;
    assert_eq!(got["endpoint"], r.endpoint("two"));
    for _ in 0..2 {
        let (status, _) = s
            .request("DELETE", "/v1/push/subscription", &alice.token, None)
            .await;
        assert_eq!(status, 204, "idempotent");
    }
    let (status, _) = s.get("/v1/push/subscription", &alice.token).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn logging_out_stops_a_devices_notifications() {
    let s = server(|_| {}).await;
    let r = receiver(&s).await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    subscribed(&s, &alice, r.subscription_json("alice")).await;
    let (status, _) = s
        .request("DELETE", "/v1/sessions/current", &alice.token, None)
        .await;
    assert_eq!(status, 204);
    let (mut ws, _) = s.connect(&bob).await;
    send(&mut ws, &alice, "c1", "hi").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(r.received().is_empty(), "{:?}", r.received());
}

#[tokio::test]
async fn a_gone_endpoint_deletes_the_subscription() {
    let s = server(|_| {}).await;
    let r = receiver(&s).await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    subscribed(&s, &alice, r.subscription_json("alice")).await;
    r.respond_with("alice", [410]);
    let (mut ws, _) = s.connect(&bob).await;
    send(&mut ws, &alice, "c1", "hi").await;
    wait_unsubscribed(&s, &alice, "not deleted").await;
    // Nothing more is sent there.
    send(&mut ws, &alice, "c2", "again").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(r.received().len(), 1, "{:?}", r.received());
    let m = s.metrics().await;
    assert_eq!(
        metric(
            &m,
            "confab_push_failed_total{kind=\"webpush\",outcome=\"gone\"}"
        ),
        1.0,
        "{m}"
    );
}

#[tokio::test]
async fn a_503_is_retried_after_its_retry_after_until_accepted() {
    let s = server(|_| {}).await;
    let r = receiver(&s).await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    subscribed(&s, &alice, r.subscription_json("alice")).await;
    r.respond_with("alice", [Reply::status(503).retry_after("1")]);
    let (mut ws, _) = s.connect(&bob).await;
    send(&mut ws, &alice, "c1", "hi").await;
    let got = wait_accepted(&r, "alice", 1).await;
    assert_eq!(got[0]["seq"], 1);
    let all = r.received();
    assert_eq!(all.len(), 2, "one refusal, one acceptance: {all:?}");
    assert_eq!(all[0].status, 503);
    let m = s.metrics().await;
    assert_eq!(
        metric(&m, "confab_push_retried_total{kind=\"webpush\"}"),
        1.0
    );
    assert_eq!(metric(&m, "confab_push_sent_total{kind=\"webpush\"}"), 1.0);
}

#[tokio::test]
async fn messages_coalesce_into_the_notification_waiting() {
    let s = server(|_| {}).await;
    let r = receiver(&s).await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    subscribed(&s, &alice, r.subscription_json("alice")).await;
    r.respond_with("alice", [Reply::status(503).retry_after("2")]);
    let (mut ws, _) = s.connect(&bob).await;
    send(&mut ws, &alice, "c1", "one").await;
    // The first attempt fails; three more messages arrive while it waits to be retried.
    r.wait_for(1, WAIT).await;
    for i in 2..=4 {
        send(&mut ws, &alice, &format!("c{i}"), "more").await;
    }
    let got = wait_accepted(&r, "alice", 1).await;
    assert_eq!(got[0]["seq"], 4, "the newest replaced the waiting one");
    assert_eq!(got[0]["unread"], 4);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(accepted(&r, "alice").len(), 1, "{:?}", r.received());
    let m = s.metrics().await;
    assert_eq!(metric(&m, "confab_push_coalesced_total"), 3.0, "{m}");
}

#[tokio::test]
async fn reading_on_one_device_clears_the_others() {
    let s = server(|_| {}).await;
    let r = receiver(&s).await;
    let phone = s.user("alice").await;
    let laptop = s.login("alice").await;
    let bob = s.user("bob").await;
    subscribed(&s, &phone, r.subscription_json("phone")).await;
    let (mut ws, _) = s.connect(&bob).await;
    let sent = send(&mut ws, &phone, "c1", "hi").await;
    wait_accepted(&r, "phone", 1).await;

    // Read on the laptop: the phone's shown notification is cleared.
    let (mut lap, _) = s.connect(&laptop).await;
    lap.send(json!({"type": "read", "conversation": sent["conversation"], "seq": 1}))
        .await;
    let got = wait_accepted(&r, "phone", 2).await;
    assert_eq!(
        got[1],
        json!({"type": "read", "conversation": sent["conversation"], "seq": 1})
    );
    let push = r.received().pop().unwrap();
    assert_eq!(push.urgency.as_deref(), Some("normal"));

    // A notification still waiting (its push service failing) is dropped by a read: nothing
    // was shown, so nothing is sent at all.
    let carol_phone = s.user("carol").await;
    let carol_laptop = s.login("carol").await;
    subscribed(&s, &carol_phone, r.subscription_json("carol")).await;
    r.respond_with("carol", [Reply::status(503).retry_after("2")]);
    let sent = send(&mut ws, &carol_phone, "c2", "hi carol").await;
    r.wait_for(3, WAIT).await;
    let (mut cl, _) = s.connect(&carol_laptop).await;
    cl.send(json!({"type": "read", "conversation": sent["conversation"], "seq": 1}))
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(accepted(&r, "carol").is_empty(), "{:?}", r.received());
}

#[tokio::test]
async fn group_members_are_notified_and_never_the_sender() {
    let s = server(|_| {}).await;
    let r = receiver(&s).await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let carol = s.user("carol").await;
    for u in [&alice, &bob, &carol] {
        subscribed(&s, u, r.subscription_json(&u.name)).await;
    }
    let (status, group) = s
        .request(
            "POST",
            "/v1/groups",
            &bob.token,
            Some(json!({"title": "team", "members": [alice.id, carol.id]})),
        )
        .await;
    assert_eq!(status, 201, "{group}");
    let (mut ws, _) = s.connect(&bob).await;
    ws.send(
        json!({"type": "send", "conversation": group["conversation"],
                   "client_id": "g1", "body": "hi team"}),
    )
    .await;
    let sent = ws.next_of("sent").await;
    for name in ["alice", "carol"] {
        let got = wait_accepted(&r, name, 1).await;
        assert_eq!(got[0]["conversation"], group["conversation"]);
        assert_eq!(got[0]["id"], sent["id"]);
        assert_eq!(got[0]["from_username"], "bob");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(accepted(&r, "bob").is_empty(), "the sender is not notified");
}

#[tokio::test]
async fn past_the_bound_new_notifications_are_dropped_and_counted() {
    let s = server(|c| c.push.max_pending = 2).await;
    let r = receiver(&s).await;
    let bob = s.user("bob").await;
    let (mut ws, _) = s.connect(&bob).await;
    for name in ["user1", "user2", "user3"] {
        let u = s.user(name).await;
        subscribed(&s, &u, r.subscription_json(name)).await;
        // The push service is down for everyone: notifications wait.
        r.respond_with(name, [Reply::status(503).retry_after("30")]);
        send(&mut ws, &u, &format!("to-{name}"), "hi").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let m = s.metrics().await;
    assert_eq!(
        metric(&m, "confab_push_dropped_total{reason=\"full\"}"),
        1.0,
        "{m}"
    );
    let failed: Vec<_> = r.received().into_iter().map(|x| x.path).collect();
    assert_eq!(
        failed.len(),
        2,
        "two waited, the third was dropped: {failed:?}"
    );
}

#[tokio::test]
async fn gateways_apns_and_fcm_get_their_notifications() {
    let gateway = GatewayReceiver::start().await;
    let apns = ApnsDouble::start("chat.confab.app").await;
    let fcm = FcmDouble::start().await;
    let s = server(|c| {
        c.push.gateways = vec![("sygnal".into(), gateway.url())];
        c.push.apns = Some(confab_server::config::ApnsConfig {
            key: apns.key_path().to_owned(),
            key_id: apns.key_id().into(),
            team_id: apns.team_id().into(),
            topic: apns.topic().into(),
            endpoint: apns.url(),
        });
        c.push.fcm = Some(confab_server::config::FcmConfig {
            credentials: fcm.credentials().to_owned(),
            endpoint: fcm.url(),
        });
    })
    .await;
    let alice = s.user("alice").await;
    let tablet = s.login("alice").await;
    let phone = s.login("alice").await;
    let bob = s.user("bob").await;
    let token = "a".repeat(64);
    subscribed(
        &s,
        &alice,
        json!({"kind": "gateway", "gateway": "sygnal", "pushkey": "pk1", "app_id": "app.confab",
               "preview": true}),
    )
    .await;
    subscribed(&s, &tablet, json!({"kind": "apns", "token": token})).await;
    subscribed(&s, &phone, json!({"kind": "fcm", "token": "fcm-token-1"})).await;
    let (mut ws, _) = s.connect(&bob).await;
    let sent = send(&mut ws, &alice, "c1", "hello there").await;

    let g = gateway.wait_for(1, WAIT).await;
    let n = g[0].notification();
    assert_eq!(g[0].status, 200, "{:?}", g[0]);
    assert_eq!(n["event_id"], sent["id"]);
    assert_eq!(n["room_id"], sent["conversation"]);
    assert_eq!(n["sender_display_name"], "bob");
    assert_eq!(n["counts"]["unread"], 1);
    assert_eq!(n["content"]["body"], "hello there", "preview asked for");
    assert_eq!(n["devices"][0]["pushkey"], "pk1");

    let a = apns.wait_for(1, WAIT).await;
    assert_eq!(a[0].status, 200, "{:?}", a[0]);
    assert_eq!(a[0].device_token, token);
    assert_eq!(a[0].header("apns-push-type"), Some("alert"));
    assert_eq!(a[0].payload["confab"]["id"], sent["id"]);
    assert!(
        !a[0].payload.to_string().contains("hello there"),
        "no preview: no text"
    );

    let f = fcm.wait_for(1, WAIT).await;
    assert_eq!(f[0].status, 200, "{:?}", f[0]);
    assert_eq!(f[0].token(), Some("fcm-token-1"));
    assert_eq!(f[0].message()["data"]["id"], sent["id"]);

    // A pushkey the gateway rejects is deleted.
    gateway.reject("pk1");
    send(&mut ws, &alice, "c2", "again").await;
    wait_unsubscribed(&s, &alice, "rejected pushkey kept").await;
}

#[tokio::test]
async fn a_push_service_that_never_answers_does_not_delay_chat() {
    // Accepts connections and never answers: every push request waits out its timeout.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((conn, _)) = silent.accept().await {
            open.push(conn);
        }
    });
    let s = server(|c| {
        c.push.request_timeout = Duration::from_secs(30);
        c.push.concurrency = 4;
    })
    .await;
    let bob = s.user("bob").await;
    let mut users = Vec::new();
    for i in 0..8 {
        let u = s.user(&format!("silent{i}")).await;
        let mut body = receiver(&s).await.subscription_json("x");
        body["endpoint"] = json!(format!("http://{addr}/u{i}"));
        subscribed(&s, &u, body).await;
        users.push(u);
    }
    let (mut ws, _) = s.connect(&bob).await;
    // Every sending slot is taken by a request that hangs; messages keep their pace.
    let started = std::time::Instant::now();
    for round in 0..5 {
        for (i, u) in users.iter().enumerate() {
            send(&mut ws, u, &format!("m{round}-{i}"), "hi").await;
        }
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "40 sends took {took:?} with the push service hanging"
    );
    let (mut reader, caught_up) = s.connect(&users[0]).await;
    assert_eq!(caught_up.len(), 5, "the messages themselves are all there");
    reader.expect_silence(Duration::from_millis(100)).await;
    held.abort();
}

#[tokio::test]
async fn a_notification_older_than_its_age_is_dropped_not_retried_forever() {
    // 24 hours in production; a second here.
    let s = server(|c| c.push.max_age = Duration::from_secs(1)).await;
    let r = receiver(&s).await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    subscribed(&s, &alice, r.subscription_json("alice")).await;
    // The service asks for a retry after the notification's age is over.
    r.respond_with("alice", [Reply::status(503).retry_after("2")]);
    let (mut ws, _) = s.connect(&bob).await;
    send(&mut ws, &alice, "c1", "hi").await;
    r.wait_for(1, WAIT).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let m = s.metrics().await;
        // Dropped, and nothing left waiting (the gauge is read at the push server's poll).
        if metric(&m, "confab_push_dropped_total{reason=\"expired\"}") == 1.0
            && metric(&m, "confab_push_outbox_depth{queue=\"pending\"}") == 0.0
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not dropped: {m}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        r.received().len(),
        1,
        "never tried again: {:?}",
        r.received()
    );
}

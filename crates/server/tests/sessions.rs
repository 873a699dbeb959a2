//! Black-box tests of an account's sessions: expiry, the session list, revoking another
//! device, and changing the password.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{TestServer, Ws};
use serde_json::{Value, json};

fn now_ms() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// `hello` with `token` is refused with `unauthorized`, then close 1008.
async fn hello_refused(s: &TestServer, token: &str) {
    let mut ws = Ws::connect(s.addr).await;
    ws.send(json!({"type": "hello", "token": token})).await;
    assert_eq!(ws.next().await["code"], "unauthorized");
    assert_eq!(ws.closed().await, Some(1008));
}

/// The socket still answers.
async fn still_open(ws: &mut Ws) {
    ws.send(json!({"type": "ping"})).await;
    assert_eq!(ws.next_of("pong").await["type"], "pong");
}

fn code(body: &Value) -> Option<&str> {
    body["error"]["code"].as_str()
}

#[tokio::test]
async fn login_answers_when_the_token_expires() {
    let s = TestServer::start().await;
    let before = now_ms();
    s.post(
        "/v1/users",
        json!({"username": "alice", "password": "password1"}),
    )
    .await;
    let (status, body) = s
        .post(
            "/v1/sessions",
            json!({"username": "alice", "password": "password1"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let expires_at = body["expires_at"].as_i64().expect("expires_at in ms");
    let thirty_days = 30 * 24 * 3600 * 1000;
    assert!(
        (before + thirty_days..=now_ms() + thirty_days).contains(&expires_at),
        "{expires_at}"
    );
}

#[tokio::test]
async fn the_list_shows_every_device_and_which_is_current() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    // A second device with no name.
    let (status, body) = s
        .post(
            "/v1/sessions",
            json!({"username": "alice", "password": "password1"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let unnamed = body["device_id"].as_str().unwrap().to_owned();
    let bob = s.user("bob").await;

    let (status, body) = s.get("/v1/sessions", &alice.token).await;
    assert_eq!(status, 200, "{body}");
    let sessions = body["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 2, "only alice's devices: {body}");
    let first = &sessions[0];
    assert_eq!(first["device_id"], alice.device.as_str());
    assert_eq!(first["device_name"], "test");
    assert_eq!(first["current"], true);
    let second = &sessions[1];
    assert_eq!(second["device_id"], unnamed.as_str());
    assert_eq!(second["device_name"], Value::Null);
    assert_eq!(second["current"], false);
    for s in sessions {
        let (created, active) = (s["created_at"].as_i64(), s["last_active"].as_i64());
        assert!(created.is_some() && active >= created, "{s}");
        assert!(s["device_id"].is_string(), "ids are decimal strings");
    }

    let (_, body) = s.get("/v1/sessions", &bob.token).await;
    assert_eq!(body["sessions"].as_array().unwrap().len(), 1);
    assert_eq!(body["sessions"][0]["device_id"], bob.device.as_str());

    let (status, body) = s.get("/v1/sessions", "not-a-token").await;
    assert_eq!((status, code(&body)), (401, Some("unauthorized")));
}

#[tokio::test]
async fn revoking_another_device_closes_its_socket_and_refuses_its_token() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let phone = s.login("alice").await;
    let bob = s.user("bob").await;
    let (mut ws_alice, _) = s.connect(&alice).await;
    let (mut ws_phone, _) = s.connect(&phone).await;
    let (mut ws_bob, _) = s.connect(&bob).await;

    let phone_path = format!("/v1/sessions/{}", phone.device);
    let (status, _) = s.request("DELETE", &phone_path, &alice.token, None).await;
    assert_eq!(status, 204);
    assert_eq!(ws_phone.closed().await, Some(1008), "its socket closes");
    let (status, body) = s.get("/v1/conversations", &phone.token).await;
    assert_eq!((status, code(&body)), (401, Some("unauthorized")));
    hello_refused(&s, &phone.token).await;

    // The caller's device goes on.
    still_open(&mut ws_alice).await;
    let (status, body) = s.get("/v1/sessions", &alice.token).await;
    assert_eq!(status, 200);
    let listed: Vec<&str> = body["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["device_id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [alice.device.as_str()]);

    // Already revoked, another account's, not canonical, not an id: the same 404.
    let bob_path = format!("/v1/sessions/{}", bob.device);
    let padded = format!("/v1/sessions/0{}", alice.device);
    let plus = format!("/v1/sessions/+{}", alice.device);
    for path in [
        phone_path.as_str(),
        bob_path.as_str(),
        padded.as_str(),
        plus.as_str(),
        "/v1/sessions/9223372036854775808",
        "/v1/sessions/abc",
    ] {
        let (status, body) = s.request("DELETE", path, &alice.token, None).await;
        assert_eq!((status, code(&body)), (404, Some("not_found")), "{path}");
    }
    still_open(&mut ws_bob).await;
    let (status, _) = s.get("/v1/conversations", &bob.token).await;
    assert_eq!(status, 200, "bob's device was not touched");
    let (status, _) = s.request("DELETE", &bob_path, "not-a-token", None).await;
    assert_eq!(status, 401);

    // `current` is still the caller's own device.
    let (status, _) = s
        .request("DELETE", "/v1/sessions/current", &alice.token, None)
        .await;
    assert_eq!(status, 204);
    assert_eq!(ws_alice.closed().await, Some(1008));
}

async fn login_status(s: &TestServer, password: &str) -> u16 {
    s.post(
        "/v1/sessions",
        json!({"username": "alice", "password": password}),
    )
    .await
    .0
}

#[tokio::test]
async fn a_new_password_logs_out_every_other_device() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let phone = s.login("alice").await;
    let tablet = s.login("alice").await;
    let bob = s.user("bob").await;
    let (mut ws_alice, _) = s.connect(&alice).await;
    let (mut ws_phone, _) = s.connect(&phone).await;
    let (mut ws_bob, _) = s.connect(&bob).await;

    let body = json!({"old_password": "password1", "new_password": "a new secret"});
    let (status, body) = s
        .request("PUT", "/v1/users/me/password", &alice.token, Some(body))
        .await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(ws_phone.closed().await, Some(1008), "other sockets close");
    for other in [&phone, &tablet] {
        let (status, _) = s.get("/v1/conversations", &other.token).await;
        assert_eq!(status, 401, "other devices are logged out");
    }
    hello_refused(&s, &tablet.token).await;

    // The caller stays, on HTTP and on its socket.
    still_open(&mut ws_alice).await;
    let (status, body) = s.get("/v1/sessions", &alice.token).await;
    assert_eq!(status, 200);
    assert_eq!(body["sessions"].as_array().unwrap().len(), 1);
    // Another account is untouched.
    still_open(&mut ws_bob).await;

    assert_eq!(login_status(&s, "password1").await, 401, "old password");
    assert_eq!(login_status(&s, "a new secret").await, 201, "new password");
}

#[tokio::test]
async fn a_password_change_needs_the_old_password_and_a_valid_new_one() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let phone = s.login("alice").await;
    let change = |old: &str, new: &str| json!({"old_password": old, "new_password": new});
    let cases: [(Value, u16, &str); 5] = [
        (change("wrong pass", "a new secret"), 403, "forbidden"),
        (change("password1", "short"), 400, "bad_request"),
        (change("password1", &"x".repeat(1025)), 400, "bad_request"),
        (json!({"old_password": "password1"}), 400, "bad_request"),
        (json!({"new_password": "a new secret"}), 400, "bad_request"),
    ];
    for (body, want, want_code) in cases {
        let (status, answer) = s
            .request("PUT", "/v1/users/me/password", &alice.token, Some(body))
            .await;
        assert_eq!((status, code(&answer)), (want, Some(want_code)), "{answer}");
    }
    let body = change("password1", "a new secret");
    let (status, _) = s
        .request("PUT", "/v1/users/me/password", "not-a-token", Some(body))
        .await;
    assert_eq!(status, 401);
    // Nothing changed.
    let (status, _) = s.get("/v1/conversations", &phone.token).await;
    assert_eq!(status, 200);
    assert_eq!(login_status(&s, "password1").await, 201);
}

/// A server whose sessions expire after two seconds unused (their use is recorded every
/// 200 ms).
async fn short_lived() -> TestServer {
    TestServer::start_with(|c| c.session_ttl = Duration::from_secs(2)).await
}

#[tokio::test]
async fn a_token_expires_when_unused_and_lives_while_used() {
    let s = short_lived().await;
    let alice = s.user("alice").await;
    let idle = s.login("alice").await;
    // Used every 300 ms for twice the ttl: it stays valid.
    for _ in 0..14 {
        let (status, _) = s.get("/v1/conversations", &alice.token).await;
        assert_eq!(status, 200);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // The device left unused meanwhile has expired: as revoked everywhere.
    let (status, body) = s.get("/v1/conversations", &idle.token).await;
    assert_eq!((status, code(&body)), (401, Some("unauthorized")));
    hello_refused(&s, &idle.token).await;
    let (_, body) = s.get("/v1/sessions", &alice.token).await;
    let listed: Vec<&str> = body["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["device_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        listed,
        [alice.device.as_str()],
        "expired devices are not listed"
    );
    let (status, _) = s
        .request(
            "DELETE",
            &format!("/v1/sessions/{}", idle.device),
            &alice.token,
            None,
        )
        .await;
    assert_eq!(status, 404, "an expired device is as good as revoked");

    // Then unused past the ttl: expired too.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (status, _) = s.get("/v1/conversations", &alice.token).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn an_open_socket_keeps_its_session_alive() {
    let s = short_lived().await;
    let alice = s.user("alice").await;
    let (mut ws, _) = s.connect(&alice).await;
    // Three times the ttl with no HTTP request: the open socket is the use.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        still_open(&mut ws).await;
    }
    let (status, body) = s.get("/v1/sessions", &alice.token).await;
    assert_eq!(status, 200, "{body}");
    let last_active = body["sessions"][0]["last_active"].as_i64().unwrap();
    assert!(now_ms() - last_active < 2000, "{body}");
    drop(ws);
    // Closed, and unused past the ttl: expired.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    hello_refused(&s, &alice.token).await;
}

//! Throttled logins and registrations (429 with `Retry-After`), the client address behind a
//! trusted proxy, and the bounded hashing queue (503 with `Retry-After: 1`).

mod common;

use common::TestServer;
use serde_json::{Value, json};

/// What a request got: status, `Retry-After` in seconds, body.
struct Answer {
    status: u16,
    retry_after: Option<u64>,
    body: Value,
}

impl TestServer {
    async fn post_from(&self, path: &str, forwarded_for: Option<&str>, body: Value) -> Answer {
        let mut request = self.http.post(self.url(path)).json(&body);
        if let Some(addr) = forwarded_for {
            request = request.header("X-Forwarded-For", addr);
        }
        let r = request.send().await.unwrap();
        let status = r.status().as_u16();
        let retry_after = r
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().parse().expect("whole seconds"));
        Answer {
            status,
            retry_after,
            body: r.json().await.unwrap_or(Value::Null),
        }
    }

    async fn log_in(&self, from: Option<&str>, name: &str, password: &str) -> Answer {
        self.post_from(
            "/v1/sessions",
            from,
            json!({"username": name, "password": password}),
        )
        .await
    }
}

fn assert_throttled(a: &Answer) {
    assert_eq!(a.status, 429, "{}", a.body);
    assert_eq!(a.body["error"]["code"], "rate_limited", "{}", a.body);
    let secs = a.retry_after.expect("429 carries Retry-After");
    assert!((1..=60).contains(&secs), "Retry-After {secs}");
}

fn behind_local_proxy(c: &mut confab_server::Config) {
    c.auth.trusted_proxies = vec![confab_server::config::parse_proxy("127.0.0.1").unwrap()];
}

#[tokio::test]
async fn ten_failed_logins_for_an_account_then_429_with_retry_after() {
    let s = TestServer::start().await;
    s.user("alice").await;
    let started = std::time::Instant::now();
    for i in 0..10 {
        let a = s.log_in(None, "alice", &format!("guess-{i}")).await;
        assert_eq!(a.status, 401, "failure {i}: {}", a.body);
        assert_eq!(a.retry_after, None);
    }
    let a = s.log_in(None, "alice", "guess-10").await;
    // 10 a minute: a token comes back every 6 s, so only a machine slower than 10 hashes in
    // 6 s lets an eleventh through.
    if started.elapsed() < std::time::Duration::from_secs(6) {
        assert_throttled(&a);
        assert!(a.retry_after <= Some(6), "{:?}", a.retry_after);
        // Case does not make another account.
        assert_throttled(&s.log_in(None, "ALICE", "guess-11").await);
        // Operators see the refusals.
        let metrics = s.metrics().await;
        assert!(
            metrics.contains(r#"confab_rate_limited_total{limit="login"} 2"#),
            "{metrics}"
        );
    }
}

/// Two failures a minute per account: a token comes back only after 30 s, far longer than
/// any of these tests takes.
fn two_a_minute(c: &mut confab_server::Config) {
    c.auth.login_failures_per_minute = 2;
}

#[tokio::test]
async fn unknown_usernames_are_throttled_like_known_ones() {
    let s = TestServer::start_with(two_a_minute).await;
    for i in 0..2 {
        assert_eq!(s.log_in(None, "nobody", &format!("g{i}")).await.status, 401);
    }
    assert_throttled(&s.log_in(None, "nobody", "g2").await);
}

#[tokio::test]
async fn the_owner_logs_in_from_another_address_while_a_guesser_is_throttled() {
    let s = TestServer::start_with(|c| {
        behind_local_proxy(c);
        two_a_minute(c);
    })
    .await;
    s.user("alice").await;
    let attacker = Some("198.51.100.7");
    for i in 0..2 {
        assert_eq!(
            s.log_in(attacker, "alice", &format!("g{i}")).await.status,
            401
        );
    }
    assert_throttled(&s.log_in(attacker, "alice", "g2").await);
    // Even the right password is not checked for the guesser's address...
    assert_throttled(&s.log_in(attacker, "alice", "password1").await);
    // ...but the owner, elsewhere, logs in, again and again.
    for _ in 0..3 {
        let a = s.log_in(Some("203.0.113.20"), "alice", "password1").await;
        assert_eq!(a.status, 201, "{}", a.body);
    }
    // The client is the rightmost address the trusted proxy did not add.
    let a = s
        .log_in(Some("198.51.100.7, 203.0.113.21"), "alice", "password1")
        .await;
    assert_eq!(a.status, 201, "{}", a.body);
}

#[tokio::test]
async fn an_untrusted_peer_cannot_pick_its_address_with_x_forwarded_for() {
    let s = TestServer::start_with(two_a_minute).await;
    s.user("alice").await;
    for i in 0..2 {
        let from = format!("198.51.100.{i}");
        assert_eq!(
            s.log_in(Some(&from), "alice", &format!("g{i}"))
                .await
                .status,
            401
        );
    }
    // Every attempt came from 127.0.0.1, whatever the header said.
    assert_throttled(&s.log_in(Some("203.0.113.99"), "alice", "g2").await);
}

#[tokio::test]
async fn an_address_is_limited_across_accounts() {
    let s = TestServer::start_with(|c| {
        behind_local_proxy(c);
        two_a_minute(c);
    })
    .await;
    let from = Some("198.51.100.7");
    // 2 a minute per account, 6 per address: six accounts, one failure each.
    for i in 0..6 {
        let a = s.log_in(from, &format!("user{i}"), "wrong-password").await;
        assert_eq!(a.status, 401, "{}", a.body);
    }
    let a = s.log_in(from, "user6", "wrong-password").await;
    assert_throttled(&a);
    // 6 a minute: one every 10 s.
    assert!(a.retry_after <= Some(10), "{:?}", a.retry_after);
    assert_eq!(
        s.log_in(Some("198.51.100.8"), "user6", "wrong-password")
            .await
            .status,
        401,
        "another address is not limited"
    );
}

#[tokio::test]
async fn registrations_are_limited_per_address() {
    let s = TestServer::start_with(|c| {
        behind_local_proxy(c);
        c.auth.registrations_per_minute = 3;
    })
    .await;
    let register = |from: &'static str, name: String| {
        let s = &s;
        async move {
            s.post_from(
                "/v1/users",
                Some(from),
                json!({"username": name, "password": "password1"}),
            )
            .await
        }
    };
    for i in 0..3 {
        assert_eq!(
            register("198.51.100.7", format!("user{i}")).await.status,
            201
        );
    }
    let a = register("198.51.100.7", "user3".into()).await;
    assert_throttled(&a);
    // 3 a minute: one every 20 s.
    assert!(a.retry_after <= Some(20), "{:?}", a.retry_after);
    assert_eq!(register("198.51.100.8", "user3".into()).await.status, 201);
    let metrics = s.metrics().await;
    assert!(
        metrics.contains(r#"confab_rate_limited_total{limit="registration"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn zero_turns_the_limits_off() {
    let s = TestServer::start_with(|c| {
        c.auth.login_failures_per_minute = 0;
        c.auth.registrations_per_minute = 0;
    })
    .await;
    for i in 0..31 {
        s.user(&format!("user{i}")).await;
    }
    for i in 0..31 {
        assert_eq!(s.log_in(None, "user0", &format!("g{i}")).await.status, 401);
    }
}

#[tokio::test]
async fn a_full_hashing_queue_answers_503_with_retry_after() {
    let s = TestServer::start_with(|c| {
        c.auth.login_failures_per_minute = 0;
        c.auth.hash_concurrency = 1;
        c.auth.hash_queue = 1;
    })
    .await;
    let s = &s;
    let answers = futures_util::future::join_all(
        (0..16).map(|i| async move { s.log_in(None, "nobody", &format!("g{i}")).await }),
    )
    .await;
    let busy: Vec<&Answer> = answers.iter().filter(|a| a.status == 503).collect();
    assert!(
        answers.iter().all(|a| a.status == 401 || a.status == 503),
        "only 401 and 503"
    );
    assert!(
        answers.iter().filter(|a| a.status == 401).count() >= 2,
        "one hashing and one waiting get their answer"
    );
    assert!(!busy.is_empty(), "16 at once do not fit in 1 + 1");
    for a in busy {
        assert_eq!(a.body["error"]["code"], "unavailable", "{}", a.body);
        assert_eq!(a.retry_after, Some(1));
    }
}

/// A wrong old password in a password change counts as a failed login: a stolen token is no
/// way around the throttle to guess the password behind it.
#[tokio::test]
async fn wrong_old_passwords_count_as_failed_logins() {
    let s = TestServer::start_with(two_a_minute).await;
    let alice = s.user("alice").await;
    let change = |old: &str| {
        s.http
            .put(s.url("/v1/users/me/password"))
            .bearer_auth(&alice.token)
            .json(&json!({"old_password": old, "new_password": "a new password"}))
            .send()
    };
    for i in 0..2 {
        let r = change(&format!("guess-{i}")).await.unwrap();
        assert_eq!(r.status(), 403, "guess {i}");
    }
    let r = change("guess-2").await.unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    // The account is throttled for logins from here too.
    assert_throttled(&s.log_in(None, "alice", "guess-3").await);
}

//! The Web Push receiver checks what a real push service and browser would: these pushes are
//! made by hand, well-formed and not, and each is answered and recorded as it should be.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use confab_testkit::push::{Reply, WebPushReceiver};
use serde_json::{Value, json};
use web_push_native::jwt_simple::algorithms::{
    ECDSAP256KeyPairLike as _, ECDSAP256PublicKeyLike as _, ES256KeyPair,
};
use web_push_native::jwt_simple::claims::Claims;
use web_push_native::jwt_simple::prelude::{Clock, Duration as JwtDuration};

const WAIT: Duration = Duration::from_secs(10);

/// A push as a server sends it; each test spoils one part.
struct Push {
    /// Signs the JWT.
    signer: ES256KeyPair,
    /// Goes in `k=`.
    shown: ES256KeyPair,
    audience: String,
    valid_for: JwtDuration,
    subject: String,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

impl Push {
    fn new(receiver: &WebPushReceiver, subscription: &Value, payload: &Value) -> Push {
        let signer = ES256KeyPair::generate();
        let shown = ES256KeyPair::from_bytes(&signer.to_bytes()).unwrap();
        Push {
            signer,
            shown,
            audience: receiver.origin().to_owned(),
            valid_for: JwtDuration::from_hours(12),
            subject: "mailto:ops@example.org".into(),
            headers: vec![
                ("ttl", "60".into()),
                ("urgency", "high".into()),
                ("topic", "abc_DEF-123".into()),
                ("content-encoding", "aes128gcm".into()),
            ],
            body: encrypt_for(subscription, payload),
        }
    }

    fn without(mut self, header: &str) -> Push {
        self.headers.retain(|(name, _)| *name != header);
        self
    }

    fn with(self, header: &'static str, value: &str) -> Push {
        let mut push = self.without(header);
        push.headers.push((header, value.into()));
        push
    }

    fn authorization(&self) -> String {
        let claims = Claims::create(self.valid_for)
            .with_audience(&self.audience)
            .with_subject(&self.subject);
        let token = self.signer.sign(claims).unwrap();
        let key =
            URL_SAFE_NO_PAD.encode(self.shown.public_key().public_key().to_bytes_uncompressed());
        format!("vapid t={token}, k={key}")
    }

    /// Sends it; the status and the `Retry-After`.
    async fn post(&self, url: &str) -> (u16, Option<String>) {
        let mut request = reqwest::Client::new()
            .post(url)
            .header("authorization", self.authorization())
            .body(self.body.clone());
        for (name, value) in &self.headers {
            request = request.header(*name, value);
        }
        let response = request.send().await.unwrap();
        let retry_after = response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned());
        (response.status().as_u16(), retry_after)
    }
}

fn encrypt_for(subscription: &Value, payload: &Value) -> Vec<u8> {
    let key = |name: &str| {
        URL_SAFE_NO_PAD
            .decode(subscription["keys"][name].as_str().unwrap())
            .unwrap()
    };
    let public = web_push_native::p256::PublicKey::from_sec1_bytes(&key("p256dh")).unwrap();
    let auth = web_push_native::Auth::clone_from_slice(&key("auth"));
    web_push_native::encrypt(payload.to_string().into_bytes(), &public, &auth).unwrap()
}

fn payload() -> Value {
    json!({"type": "read", "conversation": "1-2", "seq": 3})
}

#[tokio::test]
async fn a_well_formed_push_is_decrypted_and_recorded() {
    let receiver = WebPushReceiver::start().await;
    let subscription = receiver.subscription_json_with_preview("phone", true);
    assert_eq!(subscription["kind"], "webpush");
    assert_eq!(subscription["preview"], true);
    assert_eq!(subscription["endpoint"], receiver.endpoint("/phone"));
    let push = Push::new(&receiver, &subscription, &payload());
    let key = URL_SAFE_NO_PAD.encode(push.shown.public_key().public_key().to_bytes_uncompressed());
    receiver.expect_server_key(&key);

    assert_eq!(push.post(&receiver.endpoint("phone")).await, (201, None));
    let got = receiver.wait_for(1, WAIT).await;
    let r = &got[0];
    assert_eq!(r.failure, None);
    assert!(r.vapid_ok);
    assert_eq!(r.path, "/phone");
    assert_eq!(r.payload, payload());
    assert_eq!(r.ttl, Some(60));
    assert_eq!(r.urgency.as_deref(), Some("high"));
    assert_eq!(r.topic.as_deref(), Some("abc_DEF-123"));
    assert_eq!(r.server_key.as_deref(), Some(key.as_str()));
    assert_eq!(r.subject.as_deref(), Some("mailto:ops@example.org"));
}

#[tokio::test]
async fn a_signature_by_another_key_is_refused_with_401() {
    let receiver = WebPushReceiver::start().await;
    let subscription = receiver.subscription_json("a");
    let mut push = Push::new(&receiver, &subscription, &payload());
    push.shown = ES256KeyPair::generate();
    assert_eq!(push.post(&receiver.endpoint("a")).await.0, 401);
    let failures = receiver.failures();
    assert_eq!(failures.len(), 1);
    assert!(!failures[0].vapid_ok);
    assert!(
        failures[0].failure.as_deref().unwrap().contains("verify"),
        "{failures:?}"
    );
    // What could be read is recorded all the same.
    assert_eq!(failures[0].ttl, Some(60));
    assert_eq!(failures[0].payload, payload());
}

#[tokio::test]
async fn a_key_other_than_the_expected_one_is_refused_with_403() {
    let receiver = WebPushReceiver::start().await;
    let subscription = receiver.subscription_json("a");
    let expected = ES256KeyPair::generate();
    receiver.expect_server_key(
        &URL_SAFE_NO_PAD.encode(expected.public_key().public_key().to_bytes_uncompressed()),
    );
    let push = Push::new(&receiver, &subscription, &payload());
    assert_eq!(push.post(&receiver.endpoint("a")).await.0, 403);
    assert_eq!(receiver.failures().len(), 1);
}

#[tokio::test]
async fn bad_claims_are_refused_with_401() {
    let receiver = WebPushReceiver::start().await;
    let subscription = receiver.subscription_json("a");
    let url = receiver.endpoint("a");
    type Spoil = fn(&mut Push);
    let spoil: [(&str, Spoil); 4] = [
        // What `web_push_native::vapid` signs: the origin without its port.
        ("aud", |p| p.audience = "http://127.0.0.1".into()),
        ("24 h", |p| p.valid_for = JwtDuration::from_hours(25)),
        ("sub", |p| p.subject = "ops@example.org".into()),
        ("verify", |p| p.audience = "https://push.example".into()),
    ];
    for (why, spoil) in spoil {
        let mut push = Push::new(&receiver, &subscription, &payload());
        spoil(&mut push);
        assert_eq!(push.post(&url).await.0, 401, "{why}");
        let last = receiver.received().pop().unwrap();
        assert!(last.failure.as_deref().unwrap().contains(why), "{last:?}");
    }
    // Signed long ago, expired now: past the minute of clock drift tolerated.
    let push = Push::new(&receiver, &subscription, &payload());
    let mut claims = Claims::create(JwtDuration::from_hours(1))
        .with_audience(receiver.origin())
        .with_subject("mailto:a@b.c");
    claims.expires_at = Some(Clock::now_since_epoch() - JwtDuration::from_mins(5));
    claims.issued_at = None;
    claims.invalid_before = None;
    let token = push.signer.sign(claims).unwrap();
    let key = URL_SAFE_NO_PAD.encode(push.shown.public_key().public_key().to_bytes_uncompressed());
    let status = reqwest::Client::new()
        .post(&url)
        .header("authorization", format!("vapid t={token}, k={key}"))
        .body(push.body.clone())
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 401);
    assert_eq!(receiver.failures().len(), 5);
}

#[tokio::test]
async fn missing_headers_and_bad_bodies_are_refused() {
    let receiver = WebPushReceiver::start().await;
    let subscription = receiver.subscription_json("a");
    let url = receiver.endpoint("a");
    let good = || Push::new(&receiver, &subscription, &payload());
    let cases = [
        (good().without("ttl"), 400),
        (good().with("ttl", "soon"), 400),
        (good().without("urgency"), 400),
        (good().with("urgency", "urgent"), 400),
        (good().without("topic"), 400),
        (good().with("topic", &"a".repeat(33)), 400),
        (good().with("content-encoding", "aesgcm"), 400),
        (
            Push {
                body: vec![7; 200],
                ..good()
            },
            400,
        ),
        (
            Push {
                // Encrypted for another subscription.
                body: encrypt_for(&receiver.subscription_json("b"), &payload()),
                ..good()
            },
            400,
        ),
        (
            Push {
                body: vec![0; 4097],
                ..good()
            },
            413,
        ),
    ];
    let n = cases.len();
    for (i, (push, status)) in cases.into_iter().enumerate() {
        assert_eq!(push.post(&url).await.0, status, "case {i}");
    }
    assert_eq!(good().post(&receiver.endpoint("nobody")).await.0, 404);
    assert_eq!(receiver.failures().len(), n + 1);
    assert!(receiver.failures().iter().all(|r| r.failure.is_some()));
}

#[tokio::test]
async fn scripted_answers_come_in_order_then_201() {
    let receiver = WebPushReceiver::start().await;
    let subscription = receiver.subscription_json("a");
    receiver.respond_with("/a", [Reply::status(503).retry_after("2"), 410.into()]);
    let push = Push::new(&receiver, &subscription, &payload());
    let url = receiver.endpoint("a");
    assert_eq!(push.post(&url).await, (503, Some("2".into())));
    assert_eq!(push.post(&url).await, (410, None));
    assert_eq!(push.post(&url).await, (201, None));
    let statuses: Vec<u16> = receiver.received().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [503, 410, 201]);
    assert!(
        receiver.failures().is_empty(),
        "scripted answers are no failures"
    );
}

#[tokio::test]
async fn wait_for_returns_once_enough_have_arrived() {
    let receiver = WebPushReceiver::start().await;
    let subscription = receiver.subscription_json("a");
    let push = Push::new(&receiver, &subscription, &payload());
    let url = receiver.endpoint("a");
    let sender = tokio::spawn(async move {
        for _ in 0..2 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            push.post(&url).await;
        }
    });
    assert_eq!(receiver.wait_for(2, WAIT).await.len(), 2);
    sender.await.unwrap();
}

#[tokio::test]
#[should_panic(expected = "got 0 of 1 requests")]
async fn wait_for_fails_saying_what_arrived() {
    let receiver = WebPushReceiver::start().await;
    receiver.wait_for(1, Duration::from_millis(50)).await;
}

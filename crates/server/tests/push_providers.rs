//! The push providers against test doubles of their services (`confab_testkit::push`), which
//! check each request as the real service does: what is sent, and how each answer ends an
//! attempt.

use std::time::Duration;

use confab_protocol::{Id, PushSubscription};
use confab_server::config::{ApnsConfig, FcmConfig, PushConfig};
use confab_server::push::apns::Apns;
use confab_server::push::fcm::Fcm;
use confab_server::push::gateway::Gateways;
use confab_server::push::{Delivery, Notification, Provider, payload, topic};
use confab_server::store::push::{Due, DueKind, PushTarget};
use confab_testkit::push::{ApnsDouble, FcmDouble, GatewayReceiver};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(10);
const TEXT: &str = "meet at noon";
const CONVERSATION: &str = "3-4";
const APNS_TOKEN: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
const TOPIC: &str = "org.confab.app";

/// A message from user 3 ("ann") to `subscription`'s device.
fn message_due(subscription: PushSubscription) -> Due {
    Due {
        target: PushTarget {
            user: Id(4),
            device: Id(40),
        },
        conversation: CONVERSATION.into(),
        version: 1,
        attempts: 0,
        created_at: 0,
        subscription_id: Id(99),
        subscription,
        what: DueKind::Message {
            id: Id(77),
            seq: 5,
            from: Id(3),
            from_username: "ann".into(),
            body: TEXT.into(),
            unread: 2,
        },
    }
}

fn read_due(subscription: PushSubscription) -> Due {
    Due {
        what: DueKind::Read { seq: 5 },
        ..message_due(subscription)
    }
}

async fn deliver(provider: &dyn Provider, due: &Due) -> Delivery {
    let payload = payload(due);
    let notification = Notification {
        due,
        payload: &payload,
        ttl: Duration::from_secs(3600),
    };
    provider.deliver(&notification).await
}

fn retried_after(delivery: &Delivery) -> Option<Duration> {
    match delivery {
        Delivery::Retry { after, .. } => *after,
        other => panic!("expected a retry, got {other:?}"),
    }
}

// Push gateways.

fn gateway_subscription(pushkey: &str, preview: bool) -> PushSubscription {
    PushSubscription::Gateway {
        gateway: "sygnal".into(),
        pushkey: pushkey.into(),
        app_id: "org.confab.app".into(),
        preview,
    }
}

fn gateways(receiver: &GatewayReceiver) -> Gateways {
    let config = PushConfig {
        gateways: vec![("sygnal".into(), receiver.url())],
        request_timeout: Duration::from_secs(5),
        ..PushConfig::default()
    };
    Gateways::new(&config).unwrap()
}

#[tokio::test]
async fn gateway_delivers_a_message_in_the_matrix_shape() {
    let receiver = GatewayReceiver::start().await;
    let gateways = gateways(&receiver);
    let due = message_due(gateway_subscription("key-1", true));
    assert_eq!(deliver(&gateways, &due).await, Delivery::Accepted);
    let got = receiver.wait_for(1, WAIT).await;
    assert_eq!((got[0].status, &got[0].error), (200, &None));
    let n = got[0].notification();
    assert_eq!(n["event_id"], "77");
    assert_eq!(n["room_id"], CONVERSATION);
    assert_eq!(n["sender"], "3");
    assert_eq!(n["sender_display_name"], "ann");
    assert_eq!(n["counts"]["unread"], 2);
    assert_eq!(n["prio"], "high");
    assert_eq!(n["content"]["body"], TEXT);
    assert_eq!(n["devices"][0]["app_id"], "org.confab.app");
    assert_eq!(n["devices"][0]["pushkey"], "key-1");
}

#[tokio::test]
async fn gateway_without_preview_sends_no_text() {
    let receiver = GatewayReceiver::start().await;
    let gateways = gateways(&receiver);
    let due = message_due(gateway_subscription("key-1", false));
    assert_eq!(deliver(&gateways, &due).await, Delivery::Accepted);
    let got = receiver.wait_for(1, WAIT).await;
    assert_eq!(got[0].status, 200);
    assert!(!got[0].body.to_string().contains(TEXT));
    assert!(got[0].notification().get("content").is_none());
}

#[tokio::test]
async fn gateway_read_is_a_zero_count_without_an_event() {
    let receiver = GatewayReceiver::start().await;
    let gateways = gateways(&receiver);
    let due = read_due(gateway_subscription("key-1", true));
    assert_eq!(deliver(&gateways, &due).await, Delivery::Accepted);
    let got = receiver.wait_for(1, WAIT).await;
    assert_eq!(got[0].status, 200);
    let n = got[0].notification();
    assert_eq!(n["counts"]["unread"], 0);
    assert_eq!(n["room_id"], CONVERSATION);
    assert!(n.get("event_id").is_none());
}

#[tokio::test]
async fn gateway_rejected_pushkey_is_gone() {
    let receiver = GatewayReceiver::start().await;
    let gateways = gateways(&receiver);
    receiver.reject("key-2");
    let accepted = message_due(gateway_subscription("key-1", false));
    assert_eq!(deliver(&gateways, &accepted).await, Delivery::Accepted);
    let gone = message_due(gateway_subscription("key-2", false));
    assert_eq!(deliver(&gateways, &gone).await, Delivery::Gone);
}

#[tokio::test]
async fn gateway_503_with_retry_after_is_retried_after_it() {
    let receiver = GatewayReceiver::start().await;
    let gateways = gateways(&receiver);
    receiver.script("key-1", [503, 400, 200]);
    receiver.set_retry_after(Some(30));
    let due = message_due(gateway_subscription("key-1", false));
    let first = deliver(&gateways, &due).await;
    assert_eq!(retried_after(&first), Some(Duration::from_secs(30)));
    assert!(matches!(
        deliver(&gateways, &due).await,
        Delivery::Rejected { .. }
    ));
    assert_eq!(deliver(&gateways, &due).await, Delivery::Accepted);
}

#[tokio::test]
async fn gateway_unknown_by_name_is_rejected_without_a_request() {
    let receiver = GatewayReceiver::start().await;
    let gateways = gateways(&receiver);
    let due = message_due(PushSubscription::Gateway {
        gateway: "gone".into(),
        pushkey: "key-1".into(),
        app_id: "a".into(),
        preview: false,
    });
    assert!(matches!(
        deliver(&gateways, &due).await,
        Delivery::Rejected { .. }
    ));
    assert!(receiver.received().is_empty());
}

// APNs.

fn apns_subscription(token: &str, preview: bool) -> PushSubscription {
    PushSubscription::Apns {
        token: token.into(),
        preview,
    }
}

fn apns(double: &ApnsDouble) -> Apns {
    let config = ApnsConfig {
        key: double.key_path().to_owned(),
        key_id: double.key_id().into(),
        team_id: double.team_id().into(),
        topic: double.topic().into(),
        endpoint: double.url(),
    };
    Apns::new(&config, Duration::from_secs(5)).unwrap()
}

#[tokio::test]
async fn apns_delivers_an_alert_with_the_headers_apple_checks() {
    let double = ApnsDouble::start(TOPIC).await;
    let apns = apns(&double);
    let due = message_due(apns_subscription(APNS_TOKEN, true));
    assert_eq!(deliver(&apns, &due).await, Delivery::Accepted);
    let got = double.wait_for(1, WAIT).await;
    let request = &got[0];
    assert_eq!((request.status, &request.reason), (200, &None));
    assert_eq!(request.device_token, APNS_TOKEN);
    assert_eq!(request.header("apns-topic"), Some(TOPIC));
    assert_eq!(request.header("apns-push-type"), Some("alert"));
    assert_eq!(request.header("apns-priority"), Some("10"));
    assert_eq!(
        request.header("apns-collapse-id"),
        Some(topic(CONVERSATION).as_str())
    );
    let expiration: u64 = request.header("apns-expiration").unwrap().parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(expiration > now + 3500 && expiration <= now + 3600);
    let aps = &request.payload["aps"];
    assert_eq!(aps["alert"]["title"], "ann");
    assert_eq!(aps["alert"]["body"], TEXT);
    assert_eq!(aps["thread-id"], CONVERSATION);
    assert_eq!(request.payload["confab"]["type"], "message");
    assert_eq!(request.payload["confab"]["id"], "77");
    assert_eq!(request.payload["confab"]["body"], TEXT);
}

#[tokio::test]
async fn apns_without_preview_sends_no_text() {
    let double = ApnsDouble::start(TOPIC).await;
    let apns = apns(&double);
    let due = message_due(apns_subscription(APNS_TOKEN, false));
    assert_eq!(deliver(&apns, &due).await, Delivery::Accepted);
    let got = double.wait_for(1, WAIT).await;
    assert_eq!(got[0].status, 200);
    assert!(!got[0].payload.to_string().contains(TEXT));
    assert_eq!(got[0].payload["aps"]["alert"]["body"], "New message");
}

#[tokio::test]
async fn apns_read_is_a_background_push() {
    let double = ApnsDouble::start(TOPIC).await;
    let apns = apns(&double);
    let due = read_due(apns_subscription(APNS_TOKEN, true));
    assert_eq!(deliver(&apns, &due).await, Delivery::Accepted);
    let got = double.wait_for(1, WAIT).await;
    assert_eq!((got[0].status, &got[0].reason), (200, &None));
    assert_eq!(got[0].header("apns-push-type"), Some("background"));
    assert_eq!(got[0].header("apns-priority"), Some("5"));
    assert_eq!(got[0].payload["aps"]["content-available"], 1);
    assert_eq!(got[0].payload["confab"]["type"], "read");
}

#[tokio::test]
async fn apns_unregistered_and_bad_tokens_are_gone() {
    let double = ApnsDouble::start(TOPIC).await;
    let apns = apns(&double);
    let due = message_due(apns_subscription(APNS_TOKEN, false));
    double.script(APNS_TOKEN, [410, 400]);
    double.script_reason(APNS_TOKEN, 400, "DeviceTokenNotForTopic");
    double.script_reason(APNS_TOKEN, 400, "BadTopic");
    for _ in 0..3 {
        assert_eq!(deliver(&apns, &due).await, Delivery::Gone);
    }
    assert!(matches!(
        deliver(&apns, &due).await,
        Delivery::Rejected { reason } if reason.contains("BadTopic")
    ));
    // Not hex: never sent.
    let not_hex = message_due(apns_subscription("not-a-token", false));
    assert_eq!(deliver(&apns, &not_hex).await, Delivery::Gone);
    assert_eq!(double.received().len(), 4);
}

#[tokio::test]
async fn apns_503_with_retry_after_is_retried_after_it() {
    let double = ApnsDouble::start(TOPIC).await;
    let apns = apns(&double);
    double.script(APNS_TOKEN, [503, 429]);
    double.set_retry_after(Some(12));
    let due = message_due(apns_subscription(APNS_TOKEN, false));
    let first = deliver(&apns, &due).await;
    assert_eq!(retried_after(&first), Some(Duration::from_secs(12)));
    assert!(matches!(deliver(&apns, &due).await, Delivery::Retry { .. }));
    assert_eq!(deliver(&apns, &due).await, Delivery::Accepted);
}

#[tokio::test]
async fn apns_reuses_its_provider_token_and_makes_a_new_one_when_it_expired() {
    let double = ApnsDouble::start(TOPIC).await;
    let apns = apns(&double);
    let due = message_due(apns_subscription(APNS_TOKEN, false));
    for _ in 0..3 {
        assert_eq!(deliver(&apns, &due).await, Delivery::Accepted);
    }
    assert_eq!(double.provider_tokens().len(), 1);
    double.expire_provider_tokens();
    let expired = deliver(&apns, &due).await;
    assert!(
        matches!(&expired, Delivery::Retry { reason, .. } if reason.contains("ExpiredProviderToken"))
    );
    assert_eq!(deliver(&apns, &due).await, Delivery::Accepted);
    assert_eq!(deliver(&apns, &due).await, Delivery::Accepted);
    let tokens = double.provider_tokens();
    assert_eq!(tokens.len(), 2);
    let statuses: Vec<u16> = double.received().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 200, 200, 403, 200, 200]);
}

// FCM.

fn fcm_subscription(token: &str, preview: bool) -> PushSubscription {
    PushSubscription::Fcm {
        token: token.into(),
        preview,
    }
}

fn fcm(double: &FcmDouble) -> Fcm {
    let config = FcmConfig {
        credentials: double.credentials().to_owned(),
        endpoint: double.url(),
    };
    Fcm::new(&config, Duration::from_secs(5)).unwrap()
}

#[tokio::test]
async fn fcm_delivers_a_data_message_with_an_access_token() {
    let double = FcmDouble::start().await;
    let fcm = fcm(&double);
    let due = message_due(fcm_subscription("fcm-1", true));
    assert_eq!(deliver(&fcm, &due).await, Delivery::Accepted);
    let got = double.wait_for(1, WAIT).await;
    assert_eq!((got[0].status, &got[0].error), (200, &None));
    let m = got[0].message();
    assert_eq!(got[0].token(), Some("fcm-1"));
    assert_eq!(m["data"]["type"], "message");
    assert_eq!(m["data"]["conversation"], CONVERSATION);
    assert_eq!(m["data"]["id"], "77");
    assert_eq!(m["data"]["seq"], "5");
    assert_eq!(m["data"]["from_id"], "3");
    assert_eq!(m["data"]["unread"], "2");
    assert_eq!(m["data"]["body"], TEXT);
    assert_eq!(m["notification"]["title"], "ann");
    assert_eq!(m["notification"]["body"], TEXT);
    assert_eq!(m["android"]["collapse_key"], topic(CONVERSATION));
    assert_eq!(m["android"]["priority"], "HIGH");
    assert_eq!(m["android"]["ttl"], "3600s");
    assert_eq!(
        m["apns"]["headers"]["apns-collapse-id"],
        topic(CONVERSATION)
    );
    let grants = double.grants();
    assert_eq!(grants.len(), 1);
    let bearer = format!("Bearer {}", grants[0].access_token.as_deref().unwrap());
    assert_eq!(got[0].authorization.as_deref(), Some(bearer.as_str()));
}

#[tokio::test]
async fn fcm_without_preview_sends_no_text() {
    let double = FcmDouble::start().await;
    let fcm = fcm(&double);
    let due = message_due(fcm_subscription("fcm-1", false));
    assert_eq!(deliver(&fcm, &due).await, Delivery::Accepted);
    let read = read_due(fcm_subscription("fcm-1", false));
    assert_eq!(deliver(&fcm, &read).await, Delivery::Accepted);
    let got = double.wait_for(2, WAIT).await;
    for request in &got {
        assert_eq!((request.status, &request.error), (200, &None));
        assert!(!request.body.to_string().contains(TEXT));
        assert!(request.message().get("notification").is_none());
    }
    assert_eq!(got[1].message()["data"]["type"], "read");
    assert_eq!(got[1].message()["android"]["priority"], "NORMAL");
}

#[tokio::test]
async fn fcm_unregistered_is_gone_and_invalid_argument_rejected() {
    let double = FcmDouble::start().await;
    let fcm = fcm(&double);
    double.script("fcm-1", [404, 400]);
    let due = message_due(fcm_subscription("fcm-1", false));
    assert_eq!(deliver(&fcm, &due).await, Delivery::Gone);
    assert!(matches!(
        deliver(&fcm, &due).await,
        Delivery::Rejected { reason } if reason.contains("INVALID_ARGUMENT")
    ));
    let errors: Vec<Option<String>> = double.received().into_iter().map(|r| r.error).collect();
    assert_eq!(
        errors,
        [
            Some("NOT_FOUND UNREGISTERED".into()),
            Some("INVALID_ARGUMENT INVALID_ARGUMENT".into())
        ]
    );
}

#[tokio::test]
async fn fcm_503_with_retry_after_is_retried_after_it() {
    let double = FcmDouble::start().await;
    let fcm = fcm(&double);
    double.script("fcm-1", [503]);
    double.set_retry_after(Some(45));
    let due = message_due(fcm_subscription("fcm-1", false));
    let first = deliver(&fcm, &due).await;
    assert_eq!(retried_after(&first), Some(Duration::from_secs(45)));
    assert_eq!(deliver(&fcm, &due).await, Delivery::Accepted);
}

#[tokio::test]
async fn fcm_reuses_its_access_token_and_gets_a_new_one_after_a_401() {
    let double = FcmDouble::start().await;
    let fcm = fcm(&double);
    let due = message_due(fcm_subscription("fcm-1", false));
    for _ in 0..3 {
        assert_eq!(deliver(&fcm, &due).await, Delivery::Accepted);
    }
    assert_eq!(double.grants().len(), 1);
    double.revoke_access_tokens();
    assert!(matches!(deliver(&fcm, &due).await, Delivery::Retry { .. }));
    assert_eq!(deliver(&fcm, &due).await, Delivery::Accepted);
    let grants = double.grants();
    assert_eq!(grants.len(), 2);
    assert!(grants.iter().all(|g| g.status == 200));
    let statuses: Vec<u16> = double.received().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 200, 200, 401, 200]);
}

#[tokio::test]
async fn long_texts_are_cut_to_what_apns_and_fcm_take() {
    let long = |subscription| {
        let mut due = message_due(subscription);
        if let DueKind::Message { body, .. } = &mut due.what {
            *body = "ü\"".repeat(4_000);
        }
        due
    };
    let apns_double = ApnsDouble::start(TOPIC).await;
    let due = long(apns_subscription(APNS_TOKEN, true));
    assert_eq!(deliver(&apns(&apns_double), &due).await, Delivery::Accepted);
    let fcm_double = FcmDouble::start().await;
    let due = long(fcm_subscription("fcm-1", true));
    assert_eq!(deliver(&fcm(&fcm_double), &due).await, Delivery::Accepted);
    let sent = &fcm_double.received()[0];
    let body = sent.message()["data"]["body"].as_str().unwrap();
    assert!(body.starts_with("ü\"") && body.ends_with('…'));
}

/// The doubles refuse what their service refuses, so a test passing against them means the
/// requests are right: a request with the wrong topic, or a wrong key, is turned away.
#[tokio::test]
async fn the_doubles_refuse_what_the_services_refuse() {
    let double = ApnsDouble::start(TOPIC).await;
    let other = ApnsDouble::start("org.other.app").await;
    let wrong_topic = Apns::new(
        &ApnsConfig {
            key: double.key_path().to_owned(),
            key_id: double.key_id().into(),
            team_id: double.team_id().into(),
            topic: other.topic().into(),
            endpoint: double.url(),
        },
        Duration::from_secs(5),
    )
    .unwrap();
    let due = message_due(apns_subscription(APNS_TOKEN, false));
    assert!(matches!(
        deliver(&wrong_topic, &due).await,
        Delivery::Rejected { reason } if reason.contains("TopicDisallowed")
    ));
    let wrong_key = Apns::new(
        &ApnsConfig {
            key: other.key_path().to_owned(),
            key_id: double.key_id().into(),
            team_id: double.team_id().into(),
            topic: TOPIC.into(),
            endpoint: double.url(),
        },
        Duration::from_secs(5),
    )
    .unwrap();
    assert!(matches!(
        deliver(&wrong_key, &due).await,
        Delivery::Rejected { reason } if reason.contains("InvalidProviderToken")
    ));
    let receiver = GatewayReceiver::start().await;
    let client = reqwest::Client::new();
    let url = format!("{}/_matrix/push/v1/notify", receiver.url());
    let no_devices = serde_json::json!({ "notification": { "devices": [] } });
    let answer = client.post(&url).json(&no_devices).send().await.unwrap();
    assert_eq!(answer.status(), 400);
    let recorded = receiver.received();
    assert_eq!(
        recorded[0].error.as_deref(),
        Some("No devices in notification")
    );
    assert_eq!(
        recorded[0].body["notification"]["devices"],
        Value::Array(vec![])
    );

    // APNs speaks HTTP/2 only.
    let http1 = client
        .post(format!("{}/3/device/{APNS_TOKEN}", double.url()))
        .send()
        .await;
    assert!(http1.is_err());

    let fcm_double = FcmDouble::start().await;
    let due = message_due(fcm_subscription("fcm-1", false));
    assert_eq!(deliver(&fcm(&fcm_double), &due).await, Delivery::Accepted);
    let issued = fcm_double.grants()[0].access_token.clone().unwrap();
    let send = format!(
        "{}/v1/projects/{}/messages:send",
        fcm_double.url(),
        fcm_double.project_id()
    );
    let reserved = serde_json::json!({ "message": { "token": "t", "data": { "from": "3" } } });
    let not_strings = serde_json::json!({ "message": { "token": "t", "data": { "seq": 5 } } });
    for (body, bearer, status) in [
        (&reserved, issued.as_str(), 400),
        (&not_strings, issued.as_str(), 400),
        (&reserved, "ya29.forged", 401),
    ] {
        let answer = client
            .post(&send)
            .bearer_auth(bearer)
            .json(body)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), status);
    }
}

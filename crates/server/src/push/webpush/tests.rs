//! Web Push against the test receiver: what it decrypts and verifies, and how its answers
//! become deliveries.

use confab_protocol::Id;
use confab_testkit::push::{Reply, WebPushReceiver};

use super::*;
use crate::store::push::{Due, DueKind, PushTarget};

const WAIT: Duration = Duration::from_secs(10);

fn provider(allow_private: bool, request_timeout: Duration) -> (WebPush, Arc<VapidKeyPair>) {
    let vapid = Arc::new(VapidKeyPair::from_pem(&VapidKeyPair::generate_pem()).unwrap());
    let config = PushConfig {
        allow_private,
        request_timeout,
        vapid_subject: "mailto:ops@example.org".into(),
        ..PushConfig::default()
    };
    (WebPush::new(&config, Arc::clone(&vapid)).unwrap(), vapid)
}

fn due(subscription: serde_json::Value) -> Due {
    Due {
        target: PushTarget {
            user: Id(1),
            device: Id(2),
        },
        conversation: "1-2".into(),
        version: 1,
        attempts: 0,
        created_at: 0,
        subscription_id: Id(3),
        subscription: serde_json::from_value(subscription).unwrap(),
        what: DueKind::Read { seq: 1 },
    }
}

fn message(body: Option<&str>) -> PushPayload {
    PushPayload::Message {
        conversation: "1-2".into(),
        id: Id(77),
        seq: 5,
        from: Id(9),
        from_username: "bob".into(),
        unread: 2,
        body: body.map(str::to_owned),
    }
}

async fn send(provider: &WebPush, due: &Due, payload: &PushPayload) -> Delivery {
    let notification = Notification {
        due,
        payload,
        ttl: Duration::from_secs(3600),
    };
    provider.deliver(&notification).await
}

#[tokio::test]
async fn a_message_reaches_the_receiver_decrypted_and_signed() {
    let receiver = WebPushReceiver::start().await;
    let (provider, vapid) = provider(true, WAIT);
    receiver.expect_server_key(vapid.public_key());
    let due = due(receiver.subscription_json_with_preview("alice", true));
    let payload = message(Some("hi there"));
    assert_eq!(send(&provider, &due, &payload).await, Delivery::Accepted);

    let got = receiver.wait_for(1, WAIT).await;
    let r = &got[0];
    assert_eq!(r.failure, None);
    assert_eq!(r.status, 201);
    assert!(r.vapid_ok);
    assert_eq!(r.path, "/alice");
    assert_eq!(r.payload, serde_json::to_value(&payload).unwrap());
    assert_eq!(r.ttl, Some(3600));
    assert_eq!(r.urgency.as_deref(), Some("high"));
    assert_eq!(r.topic.as_deref(), Some(crate::push::topic("1-2").as_str()));
    assert_eq!(r.server_key.as_deref(), Some(vapid.public_key()));
    assert_eq!(r.subject.as_deref(), Some("mailto:ops@example.org"));
}

#[tokio::test]
async fn a_read_goes_with_normal_urgency_and_a_long_preview_is_shortened_to_fit() {
    let receiver = WebPushReceiver::start().await;
    let (provider, _) = provider(true, WAIT);
    let due = due(receiver.subscription_json("a"));
    let read = PushPayload::Read {
        conversation: "1-2".into(),
        seq: 5,
    };
    assert_eq!(send(&provider, &due, &read).await, Delivery::Accepted);
    let long = "é\"".repeat(5000);
    assert_eq!(
        send(&provider, &due, &message(Some(&long))).await,
        Delivery::Accepted
    );

    let got = receiver.wait_for(2, WAIT).await;
    assert_eq!(got[0].urgency.as_deref(), Some("normal"));
    assert_eq!(got[0].payload, serde_json::to_value(&read).unwrap());
    assert_eq!(got[1].failure, None, "{:?}", got[1]);
    let body = got[1].payload["body"].as_str().unwrap();
    assert!(body.ends_with('…') && long.starts_with(body.trim_end_matches('…')));
    // Only as short as it must be: one more character would not fit.
    let json = serde_json::to_vec(&got[1].payload).unwrap();
    assert!(
        json.len() <= MAX_PLAINTEXT && json.len() + 4 > MAX_PLAINTEXT,
        "{}",
        json.len()
    );
}

#[tokio::test]
async fn answers_map_to_deliveries() {
    let receiver = WebPushReceiver::start().await;
    let (provider, _) = provider(true, WAIT);
    let due = due(receiver.subscription_json("a"));
    let in_30s = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(30));
    receiver.respond_with(
        "a",
        [
            Reply::status(503).retry_after("7"),
            Reply::status(429).retry_after(in_30s),
            Reply::status(500),
            Reply::status(410),
            Reply::status(404),
            Reply::status(413),
            Reply::status(400),
            Reply::status(307),
            Reply::status(202),
        ],
    );
    let payload = message(None);
    let mut outcomes = Vec::new();
    for _ in 0..9 {
        outcomes.push(send(&provider, &due, &payload).await);
    }
    let Delivery::Retry { after, reason } = &outcomes[0] else {
        panic!("{:?}", outcomes[0]);
    };
    assert_eq!(*after, Some(Duration::from_secs(7)));
    assert!(
        reason.contains("503") && reason.contains("scripted 503"),
        "{reason}"
    );
    let Delivery::Retry { after, .. } = &outcomes[1] else {
        panic!("{:?}", outcomes[1]);
    };
    let after = after.unwrap();
    assert!(after > Duration::from_secs(25) && after <= Duration::from_secs(30));
    assert!(matches!(&outcomes[2], Delivery::Retry { after: None, .. }));
    assert_eq!(outcomes[3], Delivery::Gone);
    assert_eq!(outcomes[4], Delivery::Gone);
    for (i, status) in [(5, "413"), (6, "400"), (7, "307")] {
        let Delivery::Rejected { reason } = &outcomes[i] else {
            panic!("{:?}", outcomes[i]);
        };
        assert!(reason.contains(status), "{reason}");
    }
    assert_eq!(outcomes[8], Delivery::Accepted);
    // The 307 was not followed.
    assert_eq!(receiver.received().len(), 9);
    assert!(receiver.failures().is_empty(), "{:?}", receiver.failures());
}

#[tokio::test]
async fn a_push_the_service_refuses_is_rejected() {
    let receiver = WebPushReceiver::start().await;
    let (provider, _) = provider(true, WAIT);
    let (_, other) = self::provider(true, WAIT);
    receiver.expect_server_key(other.public_key());
    let due = due(receiver.subscription_json("a"));
    let Delivery::Rejected { reason } = send(&provider, &due, &message(None)).await else {
        panic!("a 403 is not rejected");
    };
    assert!(reason.contains("403"), "{reason}");
    assert_eq!(receiver.failures().len(), 1);
}

#[tokio::test]
async fn an_endpoint_that_does_not_answer_is_retried() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent = listener.local_addr().unwrap();
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let (provider, _) = provider(true, Duration::from_millis(300));
    let receiver = WebPushReceiver::start().await;
    let mut subscription = receiver.subscription_json("a");
    for (addr, expect) in [(silent, "timed out"), (closed, "")] {
        subscription["endpoint"] = format!("http://{addr}/a").into();
        let Delivery::Retry { after, reason } =
            send(&provider, &due(subscription.clone()), &message(None)).await
        else {
            panic!("no answer from {addr} is not a retry");
        };
        assert_eq!(after, None);
        assert!(reason.contains(expect), "{reason}");
        assert!(!reason.contains(&addr.to_string()), "no URL: {reason}");
    }
    holder.abort();
}

#[tokio::test]
async fn private_endpoints_are_refused_at_send_without_allow_private() {
    let receiver = WebPushReceiver::start().await;
    let (provider, _) = provider(false, WAIT);
    let mut subscription = receiver.subscription_json("a");
    let port = receiver.addr().port();
    for endpoint in [
        receiver.endpoint("a"),
        format!("https://127.0.0.1:{port}/a"),
        format!("https://[::ffff:127.0.0.1]:{port}/a"),
        // A name: the resolver drops its loopback address.
        format!("https://localhost:{port}/a"),
    ] {
        subscription["endpoint"] = endpoint.clone().into();
        let outcome = send(&provider, &due(subscription.clone()), &message(None)).await;
        assert!(
            matches!(&outcome, Delivery::Rejected { reason } if reason.contains("public") || reason.contains("https")),
            "{endpoint}: {outcome:?}"
        );
    }
    assert!(receiver.received().is_empty());
}

#[tokio::test]
async fn an_invalid_subscription_is_rejected_without_a_request() {
    let receiver = WebPushReceiver::start().await;
    let (provider, _) = provider(true, WAIT);
    let mut subscription = receiver.subscription_json("a");
    subscription["keys"]["auth"] = "c2hvcnQ".into();
    let outcome = send(&provider, &due(subscription), &message(None)).await;
    assert!(
        matches!(&outcome, Delivery::Rejected { reason } if reason.contains("keys.auth")),
        "{outcome:?}"
    );
    assert!(receiver.received().is_empty());
}

#[tokio::test]
async fn validate_takes_browser_keys_padded_or_not() {
    let receiver = WebPushReceiver::start().await;
    let good = receiver.subscription_json("a");
    let parse = |v: &serde_json::Value| serde_json::from_value::<PushSubscription>(v.clone());
    assert_eq!(validate(&parse(&good).unwrap()), Ok(()));
    let mut padded = good.clone();
    padded["keys"]["p256dh"] = format!("{}=", good["keys"]["p256dh"].as_str().unwrap()).into();
    padded["keys"]["auth"] = format!("{}==", good["keys"]["auth"].as_str().unwrap()).into();
    assert_eq!(validate(&parse(&padded).unwrap()), Ok(()));

    let point = URL_SAFE_NO_PAD
        .decode(good["keys"]["p256dh"].as_str().unwrap())
        .unwrap();
    let mut off_curve = point.clone();
    off_curve[64] ^= 1;
    let compressed = {
        let mut c = vec![0x02 | (point[64] & 1)];
        c.extend_from_slice(&point[1..33]);
        c
    };
    let cases: [(&str, serde_json::Value); 7] = [
        ("p256dh", "not base64!".into()),
        ("p256dh", URL_SAFE_NO_PAD.encode(&point[..64]).into()),
        ("p256dh", URL_SAFE_NO_PAD.encode(off_curve).into()),
        ("p256dh", URL_SAFE_NO_PAD.encode(compressed).into()),
        ("auth", URL_SAFE_NO_PAD.encode([0u8; 15]).into()),
        ("auth", URL_SAFE_NO_PAD.encode([0u8; 17]).into()),
        ("auth", "***".into()),
    ];
    for (field, value) in cases {
        let mut bad = good.clone();
        bad["keys"][field] = value.clone();
        let e = validate(&parse(&bad).unwrap()).unwrap_err();
        assert!(e.contains(field), "{field}={value}: {e}");
    }
    let mut long = good.clone();
    long["endpoint"] = format!("https://push.example/{}", "a".repeat(MAX_ENDPOINT_CHARS)).into();
    assert!(
        validate(&parse(&long).unwrap())
            .unwrap_err()
            .contains("longer")
    );
    let apns = PushSubscription::Apns {
        token: "t".into(),
        preview: false,
    };
    assert!(validate(&apns).is_err());
}

#[tokio::test]
async fn the_providers_check_refuses_private_endpoints_unless_allowed() {
    let receiver = WebPushReceiver::start().await;
    let subscription: PushSubscription =
        serde_json::from_value(receiver.subscription_json("a")).unwrap();
    let (private_allowed, _) = provider(true, WAIT);
    assert_eq!(
        Provider::validate(&private_allowed, &subscription).await,
        Ok(())
    );
    let (public_only, _) = provider(false, WAIT);
    let e = Provider::validate(&public_only, &subscription)
        .await
        .unwrap_err();
    assert!(e.contains("https"), "{e}");
    let PushSubscription::Webpush { keys, .. } = subscription else {
        unreachable!()
    };
    let on_localhost = PushSubscription::Webpush {
        endpoint: "https://localhost/a".into(),
        keys: keys.clone(),
        preview: false,
    };
    let e = Provider::validate(&public_only, &on_localhost)
        .await
        .unwrap_err();
    assert!(e.contains("not a public address"), "{e}");
    let bad_keys = PushSubscription::Webpush {
        endpoint: receiver.endpoint("a"),
        keys: confab_protocol::WebPushKeys {
            auth: "AAAA".into(),
            ..keys
        },
        preview: false,
    };
    assert!(
        Provider::validate(&private_allowed, &bad_keys)
            .await
            .is_err()
    );
}

#[test]
fn retry_after_is_seconds_or_a_date() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let header = |v: &str| {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, v.parse().unwrap());
        retry_after(&h, now)
    };
    assert_eq!(header("120"), Some(Duration::from_secs(120)));
    assert_eq!(header(" 0 "), Some(Duration::ZERO));
    let later = httpdate::fmt_http_date(now + Duration::from_secs(90));
    assert_eq!(header(&later), Some(Duration::from_secs(90)));
    let earlier = httpdate::fmt_http_date(now - Duration::from_secs(90));
    assert_eq!(header(&earlier), Some(Duration::ZERO));
    assert_eq!(header("soon"), None);
    assert_eq!(header("-5"), None);
    assert_eq!(retry_after(&HeaderMap::new(), now), None);
}

#[test]
fn a_payload_that_fits_is_left_whole() {
    let payload = message(Some("short"));
    assert_eq!(fitted_json(&payload), serde_json::to_vec(&payload).unwrap());
    let json = fitted_json(&message(Some(&"\u{1}".repeat(4000))));
    assert!(json.len() <= MAX_PLAINTEXT, "{}", json.len());
    assert_eq!(
        outcome(StatusCode::CREATED, None, ""),
        Delivery::Accepted,
        "any 2xx"
    );
}

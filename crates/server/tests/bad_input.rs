//! Bad input gets the error PROTOCOL.md names, the server keeps serving everyone else, and
//! nothing stored is lost.

mod common;

use std::time::Duration;

use common::{TestServer, Ws, without_rate_limits};
use serde_json::json;

#[tokio::test]
async fn bad_frames_get_errors_and_the_socket_stays_open() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let (mut a, _) = s.connect(&alice).await;
    let (mut b, _) = s.connect(&bob).await;
    a.send_message(&bob.id, "before", "stored before the abuse")
        .await;

    let cases: &[(&str, &str, Option<&str>)] = &[
        ("{not json", "bad_request", None),
        ("[1,2]", "bad_request", None),
        ("\"hello\"", "bad_request", None),
        (r#"{"no":"type"}"#, "bad_request", None),
        (
            r#"{"type":"teleport","client_id":"t1"}"#,
            "bad_request",
            Some("t1"),
        ),
        (
            r#"{"type":"send","client_id":"m1"}"#,
            "bad_request",
            Some("m1"),
        ),
        (
            r#"{"type":"send","to":12,"client_id":"m2","body":"x"}"#,
            "bad_request",
            Some("m2"),
        ),
        (
            r#"{"type":"send","to":"1","client_id":"","body":"x"}"#,
            "bad_request",
            Some(""),
        ),
        (r#"{"type":"ack","cursor":"nope"}"#, "bad_request", None),
        (r#"{"type":"hello","token":"x"}"#, "bad_request", None),
    ];
    for (frame, code, reference) in cases {
        a.send_text(frame).await;
        let e = a.next_of("error").await;
        assert_eq!(e["code"], *code, "{frame} -> {e}");
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert_eq!(e["ref"].as_str(), *reference, "{frame} -> {e}");
    }

    let long_id = "x".repeat(65);
    a.send(json!({"type": "send", "to": bob.id, "client_id": long_id, "body": "x"}))
        .await;
    assert_eq!(a.next_of("error").await["code"], "bad_request");
    a.send(json!({"type": "send", "to": bob.id, "client_id": "big", "body": "x".repeat(4097)}))
        .await;
    let e = a.next_of("error").await;
    assert_eq!(
        (e["code"].as_str(), e["ref"].as_str()),
        (Some("too_large"), Some("big"))
    );
    a.send(json!({"type": "send", "to": "12345", "client_id": "who", "body": "x"}))
        .await;
    let e = a.next_of("error").await;
    assert_eq!(
        (e["code"].as_str(), e["ref"].as_str()),
        (Some("not_found"), Some("who"))
    );
    a.send(json!({"type": "send", "to": alice.id, "client_id": "me", "body": "x"}))
        .await;
    assert_eq!(a.next_of("error").await["code"], "bad_request");
    // A body of exactly 4096 bytes is fine.
    a.send_message(&bob.id, "max", &"é".repeat(2048)).await;

    // Still open and serving; bob got only the two valid messages.
    a.send(json!({"type": "ping"})).await;
    assert_eq!(a.next_of("pong").await["type"], "pong");
    let first = b.next_of("message").await;
    assert_eq!(first["body"], "stored before the abuse");
    let second = b.next_of("message").await;
    assert_eq!(second["body"].as_str().unwrap().len(), 4096);
    b.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn oversized_frame_closes_with_1009_and_others_are_unaffected() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let (mut a, _) = s.connect(&alice).await;
    let (mut b, _) = s.connect(&bob).await;
    a.send_message(&bob.id, "keep", "kept").await;
    let huge = format!(
        r#"{{"type":"send","to":"{}","client_id":"huge","body":"{}"}}"#,
        bob.id,
        "x".repeat(70_000)
    );
    a.send_text(&huge).await;
    assert_eq!(a.closed().await, Some(1009));

    b.send_message(&alice.id, "still", "still here").await;
    let (_a2, history) = s.connect(&alice).await;
    let bodies: Vec<_> = history
        .iter()
        .map(|m| m["body"].as_str().unwrap())
        .collect();
    assert_eq!(bodies, ["kept", "still here"]);
}

#[tokio::test]
async fn oversized_frame_before_hello_closes_with_1009() {
    let s = TestServer::start().await;
    let mut ws = Ws::connect(s.addr).await;
    ws.send_text(&"x".repeat(70_000)).await;
    assert_eq!(ws.closed().await, Some(1009));
}

#[tokio::test]
async fn the_frame_limit_echoes_the_client_id() {
    let s = TestServer::start_with(|c| {
        c.gateway.frame_rate_per_sec = 1.0;
        c.gateway.frame_burst = 2;
    })
    .await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let (mut a, _) = s.connect(&alice).await;
    for i in 0..4 {
        a.send(json!({"type": "send", "to": bob.id, "client_id": format!("f{i}"), "body": "x"}))
            .await;
    }
    let e = a.next_of("error").await;
    assert_eq!(e["code"], "rate_limited");
    assert!(e["ref"].as_str().is_some_and(|r| r.starts_with('f')), "{e}");
}

#[tokio::test]
async fn hello_rules() {
    let s = TestServer::start_with(|c| c.gateway.hello_timeout = Duration::from_millis(300)).await;
    let alice = s.user("alice").await;

    // No hello in time.
    let mut ws = Ws::connect(s.addr).await;
    assert_eq!(ws.closed().await, Some(1008));

    // A bad token.
    let mut ws = Ws::connect(s.addr).await;
    ws.send(json!({"type": "hello", "token": "forged"})).await;
    let e = ws.next().await;
    assert_eq!(e["code"], "unauthorized");
    assert_eq!(ws.closed().await, Some(1008));

    // No token at all.
    let mut ws = Ws::connect(s.addr).await;
    ws.send(json!({"type": "hello"})).await;
    assert_eq!(ws.next().await["code"], "unauthorized");
    assert_eq!(ws.closed().await, Some(1008));

    // Something other than hello first.
    let mut ws = Ws::connect(s.addr).await;
    ws.send(json!({"type": "ping"})).await;
    assert_eq!(ws.next().await["code"], "bad_request");
    assert_eq!(ws.closed().await, Some(1008));

    // A malformed or impossible cursor.
    for cursor in ["abc", "99"] {
        let mut ws = Ws::connect(s.addr).await;
        ws.send(json!({"type": "hello", "token": alice.token, "cursor": cursor}))
            .await;
        assert_eq!(ws.next().await["code"], "bad_request", "{cursor}");
        assert_eq!(ws.closed().await, Some(1008));
    }

    // The token in the upgrade request's Authorization header.
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        Ws::url(s.addr),
    )
    .unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", alice.token).parse().unwrap(),
    );
    let (inner, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let mut ws = Ws::from(inner);
    ws.send(json!({"type": "hello"})).await;
    assert_eq!(ws.next().await["type"], "welcome");
}

#[tokio::test]
async fn http_bad_input() {
    let s = TestServer::start().await;
    let r = s
        .http
        .post(s.url("/v1/users"))
        .header("content-type", "application/json")
        .body(format!(
            r#"{{"username":"alice","password":"{}"}}"#,
            "p".repeat(5000)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_large");

    let r = s
        .http
        .post(s.url("/v1/users"))
        .header("content-type", "application/json")
        .body("{oops")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "bad_request");

    let r = s.http.get(s.url("/v1/nothing-here")).send().await.unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn send_flood_is_rate_limited_by_default() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let (mut a, _) = s.connect(&alice).await;
    for i in 0..150 {
        a.send(json!({"type": "send", "to": bob.id, "client_id": format!("f{i}"), "body": "x"}))
            .await;
    }
    let (mut sent, mut limited) = (0, 0);
    while sent + limited < 150 {
        let f = a.next().await;
        match f["type"].as_str() {
            Some("sent") => sent += 1,
            Some("error") => {
                assert_eq!(f["code"], "rate_limited");
                assert!(f["ref"].as_str().unwrap().starts_with('f'));
                limited += 1;
            }
            _ => {}
        }
    }
    // The burst of 100 passes (plus what the rate refilled meanwhile); the rest is refused.
    assert!((100..150).contains(&sent), "sent {sent}");
    assert!(limited > 0);
}

#[tokio::test]
async fn a_client_that_cannot_keep_up_is_disconnected_and_catches_up() {
    let s = TestServer::start_with(|c| {
        c.gateway.outbound_queue = 32;
        without_rate_limits(c);
    })
    .await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let (mut a, _) = s.connect(&alice).await;
    // Bob connects and then never reads.
    let (mut b, _) = s.connect(&bob).await;
    let body = "y".repeat(4000);
    const N: usize = 3000; // ~12 MB: more than the socket buffers hold
    // Alice keeps up: a window of 8 sends, reading her acks and echoes as she goes.
    for chunk in (0..N).collect::<Vec<_>>().chunks(8) {
        for i in chunk {
            a.send(json!({"type": "send", "to": bob.id, "client_id": i.to_string(), "body": body}))
                .await;
        }
        let mut sent = 0;
        while sent < chunk.len() {
            let f = a.next().await;
            assert_ne!(f["type"], "error", "{f}");
            if f["type"] == "sent" {
                sent += 1;
            }
        }
    }
    assert_eq!(b.closed().await, Some(1013), "the slow reader is cut off");
    let metrics = s.metrics().await;
    assert!(
        metrics.contains("confab_slow_consumers_disconnected_total 1"),
        "{metrics}"
    );
    // Reconnecting catches up on everything.
    let (_b, caught) = s.connect(&bob).await;
    assert_eq!(caught.len(), N);
    // More than one catch-up page, in stream order, none repeated.
    let seqs: Vec<u64> = caught.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=N as u64).collect::<Vec<_>>());
}

#[tokio::test]
async fn connection_limit_refuses_with_a_clear_error() {
    let s = TestServer::start_with(|c| c.gateway.max_connections = 2).await;
    let alice = s.user("alice").await;
    let (_a1, _) = s.connect(&alice).await;
    let (_a2, _) = s.connect(&alice).await;
    let refused = Ws::try_connect(s.addr).await.unwrap_err();
    assert_eq!(refused.status, 503);
    let body = refused.body;
    assert!(
        body.contains("unavailable") && body.contains("limit"),
        "{body}"
    );
    // Each refusal is counted, though only the first a second is logged.
    Ws::try_connect(s.addr).await.unwrap_err();
    let metrics = s.metrics().await;
    assert!(
        metrics.contains("confab_connections_refused_total 2"),
        "{metrics}"
    );
}

/// A bare TCP connection to the server that has sent `bytes` (possibly none).
async fn raw(s: &TestServer, bytes: &[u8]) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    tcp.write_all(bytes).await.unwrap();
    tcp
}

/// Reads until the server closes the connection; returns what it sent and after how long.
/// Panics if it is still open after `limit`.
async fn read_until_closed(
    tcp: &mut tokio::net::TcpStream,
    limit: Duration,
) -> (Vec<u8>, Duration) {
    use tokio::io::AsyncReadExt;
    let started = std::time::Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = tokio::time::timeout(limit.saturating_sub(started.elapsed()), tcp.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("still open after {limit:?}; got {got:?}"));
        match n {
            Ok(0) | Err(_) => return (got, started.elapsed()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// A connection that sends no request, or only part of one (head or body), or sits idle
/// between requests, is closed after `hello_timeout`: silent connections cannot pile up and
/// hold the file descriptors every socket needs.
#[tokio::test]
async fn silent_http_connections_are_closed() {
    let s = TestServer::start_with(|c| c.gateway.hello_timeout = Duration::from_millis(500)).await;
    let limit = Duration::from_secs(5);

    // Nothing at all.
    let mut silent = raw(&s, b"").await;
    let (_, after) = read_until_closed(&mut silent, limit).await;
    assert!(
        after >= Duration::from_millis(400),
        "closed too soon: {after:?}"
    );

    // Half a request head.
    let mut slow = raw(&s, b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await;
    read_until_closed(&mut slow, limit).await;

    // A whole head, then half a body: answered with `bad_request` and closed.
    let mut trickle = raw(
        &s,
        b"POST /v1/users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
          Content-Length: 100\r\n\r\n{\"user",
    )
    .await;
    let (answer, after) = read_until_closed(&mut trickle, limit).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(
        answer.contains("request body not received within 0.5 s"),
        "{answer}"
    );
    assert!(
        after >= Duration::from_millis(400),
        "answered too soon: {after:?}"
    );

    // One whole request, answered; then idle on keep-alive.
    let mut idle = raw(&s, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let (answer, _) = read_until_closed(&mut idle, limit).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // The server still serves everyone else, over sockets too.
    let carol = s.user("carol").await;
    s.connect(&carol).await;
}

/// Shutdown answers the requests in hand and does not wait for connections that are silent
/// or still sending their first request head (hyper alone would wait out `hello_timeout`).
#[tokio::test]
async fn shutdown_answers_requests_in_hand_and_drops_silent_connections() {
    use tokio::io::AsyncWriteExt;
    let mut s = TestServer::start_with(|c| c.gateway.hello_timeout = Duration::from_secs(30)).await;
    let _silent = raw(&s, b"").await;
    let _half = raw(&s, b"GET /healthz HTTP/1.1\r\n").await;
    // A request whose head is in and whose body is not: it is being handled.
    let body = br#"{"username":"dora","password":"password1"}"#;
    let head = format!(
        "POST /v1/users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    let mut in_hand = raw(&s, head.as_bytes()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let server = s.server.take().unwrap();
    let started = std::time::Instant::now();
    let shutdown = tokio::spawn(server.shutdown());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !shutdown.is_finished(),
        "shutdown did not wait for the request in hand"
    );
    in_hand.write_all(body).await.unwrap();
    let (answer, _) = read_until_closed(&mut in_hand, Duration::from_secs(5)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    tokio::time::timeout(Duration::from_secs(5), shutdown)
        .await
        .expect("shutdown finishes")
        .unwrap()
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        started.elapsed()
    );
}

/// The send limit is per device: ten sockets of one token flooding together get the burst and
/// the rate once, not ten times (PROTOCOL.md, Guarantee 8).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_limits_hold_per_device_across_its_sockets() {
    let s = TestServer::start().await; // 20 a second, bursts of 100
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let mut sockets = Vec::new();
    for _ in 0..10 {
        sockets.push(s.connect(&alice).await.0);
    }
    let started = std::time::Instant::now();
    let floods = sockets.into_iter().enumerate().map(|(k, mut ws)| {
        let to = bob.id.clone();
        tokio::spawn(async move {
            for i in 0..100 {
                ws.send(json!({"type": "send", "to": to, "client_id": format!("s{k}-{i}"), "body": "x"}))
                    .await;
            }
            let (mut sent, mut limited) = (0, 0);
            while sent + limited < 100 {
                let f = ws.next().await;
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
        })
    });
    let sent: usize = futures::future::join_all(floods)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .sum();
    let elapsed = started.elapsed().as_secs_f64();
    let bound = 100.0 + 20.0 * elapsed;
    assert!(sent >= 100, "the burst passes: {sent}");
    assert!(
        sent as f64 <= bound + 1.0,
        "{sent} sends accepted in {elapsed:.2} s; the device may send {bound:.0}"
    );
    // Every refusal is counted, by the limit that refused it (the frame limit, 200 a second
    // with bursts of 400, refuses some of these floods before the send limit sees them).
    let metrics = s.metrics().await;
    let refused = |limit: &str| {
        let line = format!(r#"confab_rate_limited_total{{limit="{limit}"}} "#);
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(line.as_str()))
            .map_or(0, |v| v.parse::<usize>().unwrap())
    };
    assert!(refused("send") > 0, "{metrics}");
    assert_eq!(refused("send") + refused("frame"), 1000 - sent, "{metrics}");
}

/// The frame limit is per device too: four sockets of one token sending pings together get
/// the burst and the rate once, not four times (PROTOCOL.md, Guarantee 8).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_limits_hold_per_device_across_its_sockets() {
    let s = TestServer::start_with(|c| {
        c.gateway.frame_rate_per_sec = 1.0;
        c.gateway.frame_burst = 10;
    })
    .await;
    let alice = s.user("alice").await;
    let mut sockets = Vec::new();
    for _ in 0..4 {
        sockets.push(s.connect(&alice).await.0);
    }
    let started = std::time::Instant::now();
    let floods = sockets.into_iter().map(|mut ws| {
        tokio::spawn(async move {
            for _ in 0..10 {
                ws.send(json!({"type": "ping"})).await;
            }
            let (mut pongs, mut limited) = (0, 0);
            while pongs + limited < 10 {
                let f = ws.next().await;
                match f["type"].as_str() {
                    Some("pong") => pongs += 1,
                    Some("error") => {
                        assert_eq!(f["code"], "rate_limited", "{f}");
                        limited += 1;
                    }
                    _ => {}
                }
            }
            pongs
        })
    });
    let pongs: usize = futures::future::join_all(floods)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .sum();
    let bound = 10.0 + started.elapsed().as_secs_f64();
    assert!(pongs >= 10, "the burst passes: {pongs}");
    let metrics = s.metrics().await;
    assert!(
        metrics.contains(&format!(
            r#"confab_rate_limited_total{{limit="frame"}} {}"#,
            40 - pongs
        )),
        "{metrics}"
    );
    assert!(
        pongs as f64 <= bound + 1.0,
        "{pongs} frames answered; the device may send {bound:.0}"
    );
}

/// Typing relays are limited per device and peer: twenty sockets of one device typing to a
/// friend reach it at most once a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_is_limited_per_device_across_its_sockets() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    for (owner, other) in [(&alice, &bob), (&bob, &alice)] {
        let r = s
            .http
            .put(s.url(&format!("/v1/contacts/{}", other.id)))
            .bearer_auth(&owner.token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
    }
    let (mut b, _) = s.connect(&bob).await;
    let mut sockets = Vec::new();
    for _ in 0..20 {
        sockets.push(s.connect(&alice).await.0);
    }
    let started = std::time::Instant::now();
    for round in 0..4 {
        if round > 0 {
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        for ws in &mut sockets {
            ws.send(json!({"type": "typing", "to": bob.id})).await;
        }
    }
    let sending = started.elapsed().as_secs_f64();
    let mut relayed = 0;
    while let Some(f) = b.next_within(Duration::from_millis(500)).await {
        if f["type"] == "typing" {
            relayed += 1;
        }
    }
    // One at the start, then at most one per further second of sending.
    let most = 1 + sending.floor() as usize;
    assert!(
        (1..=most).contains(&relayed),
        "{relayed} typing frames from 80 over {sending:.2} s; at most {most}"
    );
}

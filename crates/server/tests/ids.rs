//! Ids, seqs and cursors are canonical decimal at every entry point (PROTOCOL.md,
//! Conventions): no sign, no leading zero, at most 2^63-1. Anything else is `bad_request`,
//! or 404 in a path; nothing past 2^63-1 wraps around or is clamped into a real value.

mod common;

use std::time::Duration;

use common::{TestServer, TestUser, Ws};
use serde_json::{Value, json};

/// Texts that are no id, whatever the id they look like (`7` stands for a real one).
fn non_canonical(id: &str) -> Vec<String> {
    vec![
        format!("0{id}"),
        format!("00{id}"),
        format!("+{id}"),
        format!("-{id}"),
        format!(" {id}"),
        format!("{id} "),
        format!("{id}.0"),
        "9223372036854775808".to_owned(),
        "18446744073709551615".to_owned(),
        "18446744073709551616".to_owned(),
        "-1".to_owned(),
        "\u{0663}".to_owned(), // ARABIC-INDIC DIGIT THREE
    ]
}

/// A path segment as it goes on the wire (the URL crate would normalise a few otherwise).
fn segment(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'-' {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// a sends b `n` messages; returns their 1:1 conversation id.
async fn messages(s: &TestServer, a: &TestUser, b: &TestUser, n: usize) -> String {
    let (mut ws, _) = s.connect(a).await;
    let mut conversation = String::new();
    for i in 0..n {
        let sent = ws.send_message(&b.id, &format!("m{i}"), "hi").await;
        conversation = sent["conversation"].as_str().unwrap().to_owned();
    }
    conversation
}

#[tokio::test]
async fn a_user_id_in_a_path_that_is_not_canonical_is_404() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    for base in ["/v1/contacts", "/v1/blocks"] {
        for method in ["PUT", "DELETE"] {
            for text in non_canonical(&bob.id) {
                let path = format!("{base}/{}", segment(&text));
                let (status, body) = s.request(method, &path, &alice.token, None).await;
                assert_eq!(status, 404, "{method} {path}: {body}");
                assert_eq!(body["error"]["code"], "not_found", "{method} {path}");
            }
        }
    }
    // A segment that is not UTF-8 names nobody either.
    let (status, body) = s
        .request("PUT", "/v1/contacts/%FF", &alice.token, None)
        .await;
    assert_eq!((status, &body["error"]["code"]), (404, &json!("not_found")));
    // None of them added bob; his canonical id does.
    let (_, contacts) = s.get("/v1/contacts", &alice.token).await;
    assert_eq!(contacts["contacts"], json!([]));
    let path = format!("/v1/contacts/{}", bob.id);
    assert_eq!(s.request("PUT", &path, &alice.token, None).await.0, 204);
}

#[tokio::test]
async fn a_conversation_in_a_path_names_its_members_canonically() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let conversation = messages(&s, &alice, &bob, 1).await;
    let (lo, hi) = conversation.split_once('-').unwrap();
    let page = |c: &str| format!("/v1/conversations/{}/messages", segment(c));
    let (status, body) = s.get(&page(&conversation), &alice.token).await;
    assert_eq!(status, 200, "{body}");
    for alias in [
        format!("0{lo}-{hi}"),
        format!("{lo}-0{hi}"),
        format!("00{lo}-00{hi}"),
        format!("+{lo}-{hi}"),
        format!("{lo}-+{hi}"),
        format!("{hi}-{lo}"),
    ] {
        let (status, body) = s.get(&page(&alias), &alice.token).await;
        assert_eq!(status, 404, "{alias}: {body}");
        assert_eq!(body["error"]["code"], "not_found", "{alias}");
    }
    let (status, _) = s
        .get("/v1/conversations/%FF-1/messages", &alice.token)
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn before_and_limit_must_be_canonical_and_in_range() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let conversation = messages(&s, &alice, &bob, 3).await;
    let page = |query: &str| format!("/v1/conversations/{conversation}/messages?{query}");
    for query in [
        "before=9223372036854775808",
        "before=18446744073709551615",
        "before=18446744073709551616",
        "before=%2B2",
        "before=+2",
        "before=02",
        "before=-1",
        "before=",
        "before=%202",
        "before=2.0",
        "before=%D9%A3",
        "limit=%2B2",
        "limit=02",
        "limit=9223372036854775808",
        "limit=-1",
        "limit=",
        "limit=0",
    ] {
        let (status, body) = s.get(&page(query), &alice.token).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"]["code"], "bad_request", "{query}");
    }
    let seqs = |body: &Value| -> Vec<u64> {
        body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["seq"].as_u64().unwrap())
            .collect()
    };
    // The largest `before` there is: every message is before it.
    let (status, body) = s
        .get(&page("before=9223372036854775807&limit=2"), &alice.token)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((seqs(&body), &body["more"]), (vec![2, 3], &json!(true)));
    let (_, body) = s.get(&page("before=3&limit=1"), &alice.token).await;
    assert_eq!(seqs(&body), [2]);
    // A page over the largest is clamped, however large.
    let (status, body) = s
        .get(&page("limit=9223372036854775807"), &alice.token)
        .await;
    assert_eq!((status, seqs(&body)), (200, vec![1, 2, 3]));
}

/// Sends `frame` and expects `bad_request`, echoing `reference`, on a socket that stays open.
async fn refused(ws: &mut Ws, frame: &Value, reference: Option<&str>) {
    ws.send(frame.clone()).await;
    let e = ws.next_of("error").await;
    assert_eq!(e["code"], "bad_request", "{frame} -> {e}");
    assert_eq!(e["ref"].as_str(), reference, "{frame} -> {e}");
    ws.send(json!({"type": "ping"})).await;
    assert_eq!(ws.next_of("pong").await["type"], "pong", "{frame}");
}

#[tokio::test]
async fn ids_in_frames_must_be_canonical_and_in_range() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let (mut a, _) = s.connect(&alice).await;
    let (mut b, _) = s.connect(&bob).await;
    for (i, to) in non_canonical(&bob.id).into_iter().enumerate() {
        let client_id = format!("c{i}");
        let send = json!({"type": "send", "to": to, "client_id": client_id, "body": "x"});
        refused(&mut a, &send, Some(&client_id)).await;
        refused(&mut a, &json!({"type": "typing", "to": to}), None).await;
    }
    // `0` is canonical: an id that names nobody.
    a.send(json!({"type": "send", "to": "0", "client_id": "zero", "body": "x"}))
        .await;
    let e = a.next_of("error").await;
    assert_eq!(
        (e["code"].as_str(), e["ref"].as_str()),
        (Some("not_found"), Some("zero"))
    );
    // Bob got none of them (nor their typing), and his canonical id still works.
    b.expect_silence(Duration::from_millis(200)).await;
    a.send_message(&bob.id, "ok", "canonical").await;
    assert_eq!(b.next_of("message").await["body"], "canonical");
}

#[tokio::test]
async fn a_read_past_2_63_minus_1_is_refused_and_moves_no_mark() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let conversation = messages(&s, &alice, &bob, 2).await;
    let (mut b, _) = s.connect(&bob).await;
    for seq in [
        json!(9_223_372_036_854_775_808_u64),
        json!(u64::MAX),
        json!(-1),
        json!(1.0),
        json!("1"),
    ] {
        let read = json!({"type": "read", "conversation": conversation, "seq": seq});
        refused(&mut b, &read, None).await;
    }
    let read_seq = async || {
        let (_, list) = s.get("/v1/conversations", &bob.token).await;
        list["conversations"][0]["read_seq"].as_u64().unwrap()
    };
    assert_eq!(read_seq().await, 0, "a refused read moved the mark");
    // The largest seq there is is no error: clamped to the last message, as any read past it.
    b.send(
        json!({"type": "read", "conversation": conversation, "seq": 9_223_372_036_854_775_807_u64}),
    )
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while read_seq().await != 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the read mark never moved"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    b.expect_silence(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn cursors_must_be_canonical_and_in_range() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    messages(&s, &alice, &bob, 2).await;
    let bad = [
        "01",
        "+1",
        "-1",
        " 1",
        "",
        "9223372036854775808",
        "18446744073709551615",
    ];

    // In an `ack`: refused, the socket open, and no cursor stored.
    let (mut b, caught) = s.connect(&bob).await;
    assert_eq!(caught.len(), 2);
    for cursor in bad {
        refused(&mut b, &json!({"type": "ack", "cursor": cursor}), None).await;
    }
    drop(b);
    let (_b, caught) = s.connect(&bob).await;
    assert_eq!(caught.len(), 2, "a refused ack moved the stored cursor");

    // In `hello`: refused, and the socket closed as for any bad hello.
    for cursor in bad {
        let mut ws = Ws::connect(s.addr).await;
        ws.hello(&bob.token, Some(cursor)).await;
        let e = ws.next().await;
        assert_eq!(e["code"], "bad_request", "{cursor:?} -> {e}");
        assert_eq!(ws.closed().await, Some(1008), "{cursor:?}");
    }
    // `0`, the beginning, is canonical.
    let (_b, caught) = s.connect_from(&bob, Some("0")).await;
    assert_eq!(caught.len(), 2);
}

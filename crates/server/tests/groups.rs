//! Groups against a real server: every endpoint and its errors, and a group's messages over
//! the WebSocket (PROTOCOL.md, "Groups").

mod common;

use std::time::Duration;

use common::{TestServer, TestUser, Ws};
use serde_json::{Value, json};

async fn create(s: &TestServer, owner: &TestUser, title: &str, members: &[&TestUser]) -> Value {
    let ids: Vec<&str> = members.iter().map(|m| m.id.as_str()).collect();
    let (status, body) = s
        .request(
            "POST",
            "/v1/groups",
            &owner.token,
            Some(json!({"title": title, "members": ids})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    body
}

/// The next `message` frame that is a group's.
async fn next_in(ws: &mut Ws, conversation: &str) -> Value {
    loop {
        let f = ws.next_of("message").await;
        if f["conversation"] == conversation {
            return f;
        }
    }
}

#[tokio::test]
async fn every_group_endpoint_answers_members_only() {
    let s = TestServer::start_with(|c| c.max_group_members = 3).await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let carol = s.user("carol").await;
    let dave = s.user("dave").await;

    // Bad input first: nothing is created.
    for (body, status) in [
        (json!({"title": "", "members": [bob.id]}), 400),
        (json!({"title": "x".repeat(129), "members": [bob.id]}), 400),
        (
            json!({"title": "t", "members": [bob.id, carol.id, dave.id]}),
            400,
        ),
        (json!({"title": "t", "members": ["12345"]}), 404),
        (json!({"title": "t", "members": ["007"]}), 400),
    ] {
        let (got, answer) = s
            .request("POST", "/v1/groups", &alice.token, Some(body.clone()))
            .await;
        assert_eq!(got, status, "{body}: {answer}");
        assert!(answer["error"]["code"].is_string(), "{answer}");
    }
    let (status, _) = s
        .request(
            "PUT",
            &format!("/v1/blocks/{}", alice.id),
            &dave.token,
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (status, answer) = s
        .request(
            "POST",
            "/v1/groups",
            &alice.token,
            Some(json!({"title": "t", "members": [dave.id]})),
        )
        .await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );

    // A create carries a full group's ids: a 10 KB body is read (and its unknown ids found),
    // where other requests stop at 4 KB.
    let many: Vec<String> = (0..400)
        .map(|i| format!("{}", 100_000_000_000_000_000u64 + i))
        .collect();
    let (status, answer) = s
        .request(
            "POST",
            "/v1/groups",
            &alice.token,
            Some(json!({"title": "big", "members": many})),
        )
        .await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (400, Some("bad_request")),
        "over the maximum of 3, before any lookup: {answer}"
    );

    // Repeats are ignored.
    let group = create(&s, &alice, "team", &[&bob, &bob]).await;
    let c = group["conversation"].as_str().unwrap().to_owned();
    assert!(c.starts_with('g'), "{c}");
    assert_eq!(group["title"], "team");
    let members = group["members"].as_array().unwrap();
    assert_eq!(members.len(), 2);
    assert_eq!(
        (
            &members[0]["user_id"],
            &members[0]["username"],
            &members[0]["role"]
        ),
        (&json!(alice.id), &json!("alice"), &json!("owner"))
    );
    assert!(group["created_at"].is_i64());
    let (status, got) = s.get(&format!("/v1/groups/{c}"), &bob.token).await;
    assert_eq!((status, &got), (200, &group));

    // Someone who is not a member learns nothing: 404 from every endpoint, as for a group
    // that does not exist.
    for (method, path, body) in [
        ("GET", format!("/v1/groups/{c}"), None),
        (
            "PATCH",
            format!("/v1/groups/{c}"),
            Some(json!({"title": "mine"})),
        ),
        ("PUT", format!("/v1/groups/{c}/members/{}", carol.id), None),
        (
            "PATCH",
            format!("/v1/groups/{c}/members/{}", bob.id),
            Some(json!({"role": "admin"})),
        ),
        ("DELETE", format!("/v1/groups/{c}/members/{}", bob.id), None),
        ("GET", format!("/v1/groups/{c}/receipts"), None),
        ("GET", format!("/v1/conversations/{c}/messages"), None),
        ("GET", "/v1/groups/g1".to_owned(), None),
        ("GET", "/v1/groups/g007".to_owned(), None),
        ("GET", "/v1/groups/3-9".to_owned(), None),
    ] {
        let (status, answer) = s.request(method, &path, &carol.token, body).await;
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (404, Some("not_found")),
            "{method} {path}: {answer}"
        );
    }

    // A member without the right: 403.
    for (method, path, body) in [
        (
            "PATCH",
            format!("/v1/groups/{c}"),
            Some(json!({"title": "mine"})),
        ),
        ("PUT", format!("/v1/groups/{c}/members/{}", carol.id), None),
        (
            "PATCH",
            format!("/v1/groups/{c}/members/{}", alice.id),
            Some(json!({"role": "member"})),
        ),
        (
            "DELETE",
            format!("/v1/groups/{c}/members/{}", alice.id),
            None,
        ),
    ] {
        let (status, answer) = s.request(method, &path, &bob.token, body).await;
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (403, Some("forbidden")),
            "{method} {path}: {answer}"
        );
    }

    // The owner: add (idempotent), roles, rename, the maximum.
    let add = |who: &TestUser| format!("/v1/groups/{c}/members/{}", who.id);
    for _ in 0..2 {
        let (status, answer) = s.request("PUT", &add(&carol), &alice.token, None).await;
        assert_eq!(status, 204, "{answer}");
    }
    let (status, answer) = s.request("PUT", &add(&dave), &alice.token, None).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "dave blocks alice"
    );
    let (status, _) = s
        .request(
            "DELETE",
            &format!("/v1/blocks/{}", alice.id),
            &dave.token,
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (status, answer) = s.request("PUT", &add(&dave), &alice.token, None).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (400, Some("bad_request")),
        "over 3"
    );
    let (status, _) = s
        .request(
            "PUT",
            &format!("/v1/groups/{c}/members/12345"),
            &alice.token,
            None,
        )
        .await;
    assert_eq!(status, 404);
    let (status, answer) = s
        .request(
            "PATCH",
            &add(&bob),
            &alice.token,
            Some(json!({"role": "owner"})),
        )
        .await;
    assert_eq!(status, 400, "{answer}");
    let (status, _) = s
        .request(
            "PATCH",
            &add(&bob),
            &alice.token,
            Some(json!({"role": "admin"})),
        )
        .await;
    assert_eq!(status, 204);
    let (status, renamed) = s
        .request(
            "PATCH",
            &format!("/v1/groups/{c}"),
            &bob.token,
            Some(json!({"title": "renamed"})),
        )
        .await;
    assert_eq!((status, renamed["title"].as_str()), (200, Some("renamed")));
    let (status, answer) = s
        .request(
            "PATCH",
            &format!("/v1/groups/{c}"),
            &bob.token,
            Some(json!({"title": " "})),
        )
        .await;
    assert_eq!(status, 400, "{answer}");

    // Receipts list every member's marks.
    let (status, receipts) = s
        .get(&format!("/v1/groups/{c}/receipts"), &carol.token)
        .await;
    assert_eq!(status, 200);
    assert_eq!(receipts["members"].as_array().unwrap().len(), 3);
    // The list shows the group with its title and size, and no peer.
    let (_, list) = s.get("/v1/conversations", &carol.token).await;
    let entry = &list["conversations"][0];
    assert_eq!(entry["conversation"], c.as_str());
    assert_eq!(
        entry["group"],
        json!({"title": "renamed", "members_count": 3})
    );
    assert!(
        entry.get("peer").is_none() && entry.get("peer_read_seq").is_none(),
        "{entry}"
    );

    // Leaving: anyone may; then the group is gone for them.
    let (status, _) = s.request("DELETE", &add(&carol), &carol.token, None).await;
    assert_eq!(status, 204);
    let (status, _) = s.get(&format!("/v1/groups/{c}"), &carol.token).await;
    assert_eq!(status, 404);
    // The history holds every change, in order, each a `system` message.
    let (_, page) = s
        .get(&format!("/v1/conversations/{c}/messages"), &alice.token)
        .await;
    let events: Vec<&str> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["system"]["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        events,
        [
            "created",
            "member_added",
            "role_changed",
            "title_changed",
            "member_left"
        ]
    );
}

#[tokio::test]
async fn a_groups_messages_reach_every_member_and_stop_at_removal() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let carol = s.user("carol").await;
    let (mut a, _) = s.connect(&alice).await;
    let (mut b, _) = s.connect(&bob).await;
    let (mut c, _) = s.connect(&carol).await;
    let group = create(&s, &alice, "team", &[&bob, &carol]).await;
    let g = group["conversation"].as_str().unwrap().to_owned();
    for ws in [&mut a, &mut b, &mut c] {
        let created = next_in(ws, &g).await;
        assert_eq!(created["seq"], 1);
        assert_eq!(created["system"]["event"], "created");
        assert!(
            created.get("to").is_none() && created.get("body").is_none(),
            "{created}"
        );
    }

    a.send(json!({"type": "send", "conversation": g, "client_id": "g1", "body": "hello team"}))
        .await;
    let sent = a.next_of("sent").await;
    assert_eq!(
        (sent["conversation"].as_str(), sent["seq"].as_u64()),
        (Some(g.as_str()), Some(2))
    );
    let mut last = Value::Null;
    for ws in [&mut a, &mut b, &mut c] {
        let m = next_in(ws, &g).await;
        assert_eq!(
            (m["body"].as_str(), m["from"].as_str()),
            (Some("hello team"), Some(alice.id.as_str()))
        );
        assert!(m.get("to").is_none(), "{m}");
        last = m;
    }
    // A repeat stores nothing new.
    a.send(json!({"type": "send", "conversation": g, "client_id": "g1", "body": "hello team"}))
        .await;
    assert_eq!(a.next_of("sent").await["id"], sent["id"]);

    // Blocks do not filter a group: carol blocks alice and still gets her group messages.
    let (status, _) = s
        .request(
            "PUT",
            &format!("/v1/blocks/{}", alice.id),
            &carol.token,
            None,
        )
        .await;
    assert_eq!(status, 204);
    a.send(
        json!({"type": "send", "conversation": g, "client_id": "g0", "body": "despite the block"}),
    )
    .await;
    assert_eq!(a.next_of("sent").await["seq"], 3);
    for ws in [&mut a, &mut b, &mut c] {
        assert_eq!(next_in(ws, &g).await["body"], "despite the block");
    }

    // Typing reaches the other members, friends or not.
    b.send(json!({"type": "typing", "conversation": g})).await;
    let typing = c.next_of("typing").await;
    assert_eq!(
        (typing["from"].as_str(), typing["conversation"].as_str()),
        (Some(bob.id.as_str()), Some(g.as_str()))
    );

    // Carol acks the message (a group cursor) and reads it: her marks show in the receipts,
    // and her other device hears of the read.
    let cursor = last["cursor"].as_str().unwrap().to_owned();
    c.send(json!({"type": "ack", "cursor": cursor})).await;
    let carol2 = s.login("carol").await;
    let (mut c2, _) = s.connect(&carol2).await;
    c.send(json!({"type": "read", "conversation": g, "seq": 2}))
        .await;
    let receipt = c2.next_of("receipt").await;
    assert_eq!(
        (receipt["kind"].as_str(), receipt["seq"].as_u64()),
        (Some("read"), Some(2))
    );
    b.expect_silence(Duration::from_millis(200)).await;
    let marks = wait_for_marks(&s, &alice, &g, &carol.id, (2, 2)).await;
    assert_eq!(marks, (2, 2));

    // Carol is removed: she hears that, and nothing after it.
    drop(c2);
    let (status, _) = s
        .request(
            "DELETE",
            &format!("/v1/groups/{g}/members/{}", carol.id),
            &alice.token,
            None,
        )
        .await;
    assert_eq!(status, 204);
    let removed = next_in(&mut c, &g).await;
    assert_eq!(
        removed["system"],
        json!({"event": "member_removed", "user_id": carol.id})
    );
    a.send(json!({"type": "send", "conversation": g, "client_id": "g2", "body": "after"}))
        .await;
    assert_eq!(
        next_in(&mut b, &g).await["system"]["event"],
        "member_removed"
    );
    assert_eq!(next_in(&mut b, &g).await["body"], "after");
    c.expect_silence(Duration::from_millis(300)).await;
    c.send(json!({"type": "send", "conversation": g, "client_id": "c1", "body": "still here?"}))
        .await;
    let e = c.next_of("error").await;
    assert_eq!(
        (e["code"].as_str(), e["ref"].as_str()),
        (Some("not_found"), Some("c1"))
    );

    // Carol's other device, offline meanwhile, catches up to the removal and not past it.
    let (_, caught_up) = s.connect(&carol2).await;
    let seen: Vec<&str> = caught_up
        .iter()
        .filter(|f| f["type"] == "message" && f["conversation"] == g.as_str())
        .filter_map(|f| f["system"]["event"].as_str())
        .collect();
    assert_eq!(seen.last(), Some(&"member_removed"), "{caught_up:?}");
    assert!(
        caught_up.iter().all(|f| f["body"] != "after"),
        "{caught_up:?}"
    );
}

/// Carol's (read, delivered) marks as the receipts show them once they are `want`.
async fn wait_for_marks(
    s: &TestServer,
    viewer: &TestUser,
    g: &str,
    user: &str,
    want: (u64, u64),
) -> (u64, u64) {
    let mut marks = (0, 0);
    for _ in 0..50 {
        let (_, receipts) = s
            .get(&format!("/v1/groups/{g}/receipts"), &viewer.token)
            .await;
        let m = receipts["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["user_id"] == user)
            .cloned()
            .unwrap();
        marks = (
            m["read_seq"].as_u64().unwrap(),
            m["delivered_seq"].as_u64().unwrap(),
        );
        if marks == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    marks
}

#[tokio::test]
async fn a_device_catches_up_on_its_groups_and_resumes_by_its_cursor() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let group = create(&s, &alice, "team", &[&bob]).await;
    let g = group["conversation"].as_str().unwrap().to_owned();
    let (mut a, _) = s.connect(&alice).await;
    for i in 0..5 {
        a.send(json!({"type": "send", "conversation": g, "client_id": format!("m{i}"), "body": format!("m{i}")}))
            .await;
        a.next_of("sent").await;
    }
    // Bob was offline: his first connect reads the group from the event that added him.
    let (mut b, caught_up) = s.connect(&bob).await;
    let seqs: Vec<u64> = caught_up
        .iter()
        .filter(|f| f["conversation"] == g.as_str())
        .map(|f| f["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5, 6]);
    let third = caught_up.iter().find(|f| f["seq"] == 3).unwrap();
    b.send(json!({"type": "ack", "cursor": third["cursor"]}))
        .await;
    b.send(json!({"type": "ping"})).await;
    b.next_of("pong").await;
    drop(b);
    // Reconnected without a cursor: after the acknowledged message, nothing repeated.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (_, again) = s.connect(&bob).await;
    let seqs: Vec<u64> = again
        .iter()
        .filter(|f| f["conversation"] == g.as_str())
        .map(|f| f["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [4, 5, 6]);
    // A group cursor given at `hello` resumes the account's stream after its position.
    let (_, resumed) = s.connect_from(&bob, third["cursor"].as_str()).await;
    assert!(resumed.iter().all(|f| f["type"] != "error"), "{resumed:?}");
}

/// Groups never make members friends: a member's coming and going reaches no other member
/// who is not a friend (PROTOCOL.md, "Groups"); a `read` in a group one is not in is
/// `not_found`.
#[tokio::test]
async fn membership_shows_no_presence_and_outsiders_cannot_read() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let carol = s.user("carol").await;
    let group = create(&s, &alice, "team", &[&bob]).await;
    let g = group["conversation"].as_str().unwrap().to_owned();
    let (mut a, _) = s.connect(&alice).await;
    let (b, _) = s.connect(&bob).await;
    drop(b);
    let (_b, _) = s.connect(&bob).await;
    let mut presence = 0;
    while let Some(f) = a.next_within(Duration::from_millis(500)).await {
        presence += usize::from(f["type"] == "presence");
    }
    assert_eq!(presence, 0, "a group member is no friend");

    let (mut c, _) = s.connect(&carol).await;
    c.send(json!({"type": "read", "conversation": g, "seq": 1}))
        .await;
    let e = c.next_of("error").await;
    assert_eq!(e["code"], "not_found", "{e}");
}

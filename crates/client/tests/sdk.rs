//! The SDK against a scripted fake server: every test drives both sides step by step, so
//! nothing depends on timing beyond generous per-step limits.

mod fake;

use std::time::Duration;

use confab_client::{
    Api, Client, ClientConfig, ClientFrame, ConnectOptions, Connection, ErrorCode, ErrorKind,
    Event, Id, Message, ServerFrame, SessionInfo,
};
use fake::{FakeServer, STEP, http_server};
use tokio_tungstenite::tungstenite::Message as WsMessage;

const TOKEN: &str = "tok";

fn config(server: &FakeServer) -> ClientConfig {
    let mut config = ClientConfig::new(&server.base_url, TOKEN);
    // Fast retries keep the suite quick; the logic is the same at any scale.
    config.min_backoff = Duration::from_millis(10);
    config.max_backoff = Duration::from_millis(40);
    config
}

fn message(id: u64, seq: u64, cursor: &str) -> ServerFrame {
    ServerFrame::Message {
        message: Message {
            id: Id(id),
            conversation: "1-2".into(),
            seq,
            from: Id(2),
            to: Some(Id(1)),
            body: format!("m{id}"),
            system: None,
            ts: 1000 + id as i64,
        },
        cursor: cursor.into(),
    }
}

fn sent(client_id: &str, id: u64, seq: u64) -> ServerFrame {
    ServerFrame::Sent {
        client_id: client_id.into(),
        id: Id(id),
        conversation: "1-2".into(),
        seq,
        ts: 5,
    }
}

async fn connect(server: &mut FakeServer, config: ClientConfig) -> (Client, fake::FakeConn) {
    let (client, (conn, _)) = tokio::join!(Client::connect(config), server.accept_hello(TOKEN));
    (client.unwrap(), conn)
}

async fn next(client: &Client) -> Option<Event> {
    tokio::time::timeout(STEP, client.next_event())
        .await
        .expect("no event in time")
}

/// The message id of a `Message` event, panicking on anything else.
fn message_id(event: Option<Event>) -> u64 {
    match event {
        Some(Event::Message { message, .. }) => message.id.0,
        other => panic!("expected a message, got {other:?}"),
    }
}

#[tokio::test]
async fn connection_hello_welcome_and_close_code() {
    let mut server = FakeServer::start().await;
    let url = Api::new(&server.base_url).ws_url();
    let (conn, cursor) = tokio::join!(
        Connection::connect(&url, TOKEN, Some("c9")),
        server.accept_hello(TOKEN)
    );
    let (mut conn, welcome) = conn.unwrap();
    let (mut fake, hello_cursor) = cursor;
    assert_eq!(hello_cursor.as_deref(), Some("c9"));
    assert_eq!((welcome.user_id, welcome.device_id), (Id(1), Id(10)));

    fake.send(&message(7, 1, "c10")).await;
    fake.send_raw(WsMessage::text("{\"type\":\"from_the_future\"}"))
        .await;
    fake.send(&ServerFrame::Pong).await;
    let Some(ServerFrame::Message { message, cursor }) = conn.next().await.unwrap() else {
        panic!("expected a message");
    };
    assert_eq!((message.id, cursor.as_str()), (Id(7), "c10"));
    // An unreadable frame is an error, but the socket stays usable.
    let e = conn.next().await.unwrap_err();
    assert_eq!(*e.kind(), ErrorKind::Protocol);
    assert_eq!(conn.next().await.unwrap(), Some(ServerFrame::Pong));

    conn.send_text("not json".into()).await.unwrap();
    assert_eq!(fake.recv_raw().await, Some(WsMessage::text("not json")));

    let closing = tokio::spawn(fake.close(1001, "going away"));
    assert_eq!(conn.next().await.unwrap(), None);
    assert_eq!(conn.close_code(), Some(1001));
    assert_eq!(conn.close_reason(), Some("going away"));
    closing.await.unwrap();
}

#[tokio::test]
async fn a_small_read_buffer_still_reads_frames_bigger_than_itself() {
    let mut server = FakeServer::start().await;
    let url = Api::new(&server.base_url).ws_url();
    let options = ConnectOptions {
        read_buffer: 64,
        ..ConnectOptions::default()
    };
    let (conn, (mut fake, _)) = tokio::join!(
        Connection::connect_with(&url, TOKEN, None, options),
        server.accept_hello(TOKEN)
    );
    let (mut conn, _) = conn.unwrap();
    // 4,096 bytes of body: the frame takes dozens of 64-byte reads.
    let mut big = message(7, 1, "c10");
    if let ServerFrame::Message { message, .. } = &mut big {
        message.body = "é".repeat(2048);
    }
    fake.send(&big).await;
    fake.send(&message(8, 2, "c11")).await;
    assert_eq!(conn.next().await.unwrap(), Some(big));
    let Some(ServerFrame::Message { message, .. }) = conn.next().await.unwrap() else {
        panic!("expected the second message");
    };
    assert_eq!(message.id, Id(8));
}

#[tokio::test]
async fn connection_refused_token_is_a_server_error() {
    let mut server = FakeServer::start().await;
    let url = Api::new(&server.base_url).ws_url();
    let fake = async {
        let mut fake = server.accept().await;
        fake.expect_hello(TOKEN).await;
        fake.send(&ServerFrame::error(
            ErrorCode::Unauthorized,
            "bad token",
            None,
        ))
        .await;
        fake.close(1008, "").await;
    };
    let (result, ()) = tokio::join!(Connection::connect(&url, TOKEN, None), fake);
    let e = result.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Unauthorized));
    assert!(matches!(e.kind(), ErrorKind::Server { message, .. } if message == "bad token"));
}

#[tokio::test]
async fn split_halves_work_from_two_tasks_and_answer_pings() {
    let mut server = FakeServer::start().await;
    let url = Api::new(&server.base_url).ws_url();
    let (conn, (mut fake, _)) = tokio::join!(
        Connection::connect(&url, TOKEN, None),
        server.accept_hello(TOKEN)
    );
    let (mut tx, mut rx) = conn.unwrap().0.split();
    let reader = tokio::spawn(async move {
        let frame = rx.next().await.unwrap();
        let end = rx.next().await.unwrap();
        (frame, end, rx.close_code())
    });
    let typing = ClientFrame::Typing {
        to: Some(Id(2)),
        conversation: None,
    };
    tx.send(&typing).await.unwrap();
    assert_eq!(fake.recv().await, typing);

    // The reader half alone (the sender is idle) must get the pong out.
    fake.send_raw(WsMessage::Ping(b"hb".to_vec().into())).await;
    fake.send(&ServerFrame::Pong).await;
    assert_eq!(
        fake.recv_raw().await,
        Some(WsMessage::Pong(b"hb".to_vec().into()))
    );
    fake.close(1000, "").await;
    let (frame, end, code) = tokio::time::timeout(STEP, reader).await.unwrap().unwrap();
    assert_eq!(frame, Some(ServerFrame::Pong));
    assert_eq!(end, None);
    assert_eq!(code, Some(1000));
}

#[tokio::test]
async fn client_first_connect_must_succeed() {
    let mut server = FakeServer::start().await;
    let config = config(&server);
    let fake = async {
        let mut fake = server.accept().await;
        fake.expect_hello(TOKEN).await;
        fake.send(&ServerFrame::error(ErrorCode::Unauthorized, "no", None))
            .await;
        fake.close(1008, "").await;
    };
    let (result, ()) = tokio::join!(Client::connect(config), fake);
    assert_eq!(result.unwrap_err().code(), Some(ErrorCode::Unauthorized));
}

#[tokio::test]
async fn repeated_messages_after_a_reconnect_are_delivered_once() {
    let mut server = FakeServer::start().await;
    let config = config(&server);
    let (client, mut conn1) = connect(&mut server, config).await;
    assert_eq!((client.user_id(), client.device_id()), (Id(1), Id(10)));

    conn1.send(&message(101, 1, "c1")).await;
    conn1.send(&message(102, 2, "c2")).await;
    assert_eq!(message_id(next(&client).await), 101);
    assert_eq!(message_id(next(&client).await), 102);
    assert_eq!(client.cursor().as_deref(), Some("c2"));
    drop(conn1);
    assert!(matches!(
        next(&client).await,
        Some(Event::Disconnected { .. })
    ));

    // Catch-up resumes at the last cursor the app got, and repeats what was in flight.
    let (mut conn2, cursor) = server.accept_hello(TOKEN).await;
    assert_eq!(cursor.as_deref(), Some("c2"));
    assert_eq!(next(&client).await, Some(Event::Reconnected));
    conn2.send(&message(101, 1, "c1")).await;
    conn2.send(&message(102, 2, "c2")).await;
    conn2.send(&message(103, 3, "c3")).await;
    conn2
        .send(&ServerFrame::Synced {
            cursor: "c3".into(),
        })
        .await;
    assert_eq!(message_id(next(&client).await), 103);
    assert_eq!(
        next(&client).await,
        Some(Event::Synced {
            cursor: "c3".into()
        })
    );
    // auto_ack: the cursor after `synced` is acked without waiting for the coalescing window.
    conn2.expect_ack("c3").await;
    assert_eq!(client.cursor().as_deref(), Some("c3"));
    conn2.drain_in_background();
    client.close().await;
}

#[tokio::test]
async fn send_with_id_resends_the_same_client_id_after_a_drop() {
    let mut server = FakeServer::start().await;
    let config = config(&server);
    let (client, mut conn1) = connect(&mut server, config).await;
    let sender = client.clone();
    let send = tokio::spawn(async move { sender.send_with_id(Id(2), "cid-1", "hello").await });

    let first = conn1.recv_skipping_acks().await;
    assert_eq!(
        first,
        ClientFrame::Send {
            to: Some(Id(2)),
            conversation: None,
            client_id: "cid-1".into(),
            body: "hello".into()
        }
    );
    // Dropped before `sent`: the client cannot know whether the message was stored.
    drop(conn1);

    let (mut conn2, _) = server.accept_hello(TOKEN).await;
    assert_eq!(conn2.recv_skipping_acks().await, first);
    conn2.send(&sent("cid-1", 77, 1)).await;
    let sent = tokio::time::timeout(STEP, send)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(sent.client_id, "cid-1");
    assert_eq!(
        (sent.id, sent.seq, sent.conversation.as_str()),
        (Id(77), 1, "1-2")
    );
    conn2.drain_in_background();
    client.close().await;
}

#[tokio::test]
async fn send_is_retried_on_the_same_socket_after_a_timeout() {
    let mut server = FakeServer::start().await;
    let mut config = config(&server);
    config.send_timeout = Duration::from_millis(100);
    let (client, mut conn) = connect(&mut server, config).await;
    let sender = client.clone();
    let send = tokio::spawn(async move { sender.send(Id(2), "hi").await });
    let first = conn.recv_skipping_acks().await;
    let ClientFrame::Send { client_id, .. } = &first else {
        panic!("expected send, got {first:?}");
    };
    assert_eq!(conn.recv_skipping_acks().await, first);
    conn.send(&sent(client_id, 5, 9)).await;
    let sent = tokio::time::timeout(STEP, send)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((&sent.client_id, sent.seq), (client_id, 9));
    assert_eq!(server.accepted(), 1);
}

#[tokio::test]
async fn permanent_errors_fail_a_send_and_transient_ones_retry_it() {
    let mut server = FakeServer::start().await;
    let config = config(&server);
    let (client, mut conn) = connect(&mut server, config).await;

    let c = client.clone();
    let forbidden = tokio::spawn(async move { c.send_with_id(Id(3), "a", "x").await });
    assert!(
        matches!(conn.recv_skipping_acks().await, ClientFrame::Send { client_id, .. } if client_id == "a")
    );
    conn.send(&ServerFrame::error(
        ErrorCode::Forbidden,
        "blocked",
        Some("a".into()),
    ))
    .await;
    let e = tokio::time::timeout(STEP, forbidden)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(
        *e.kind(),
        ErrorKind::Server {
            code: ErrorCode::Forbidden,
            message: "blocked".into()
        }
    );

    let c = client.clone();
    let limited = tokio::spawn(async move { c.send_with_id(Id(2), "b", "y").await });
    let frame = conn.recv_skipping_acks().await;
    conn.send(&ServerFrame::error(
        ErrorCode::RateLimited,
        "slow down",
        Some("b".into()),
    ))
    .await;
    assert_eq!(conn.recv_skipping_acks().await, frame);
    conn.send(&sent("b", 8, 2)).await;
    let ok = tokio::time::timeout(STEP, limited)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(ok.id, Id(8));

    // An error frame for no pending send reaches the app as an event.
    conn.send(&ServerFrame::error(
        ErrorCode::BadRequest,
        "huh",
        Some("zz".into()),
    ))
    .await;
    assert_eq!(
        next(&client).await,
        Some(Event::Error {
            code: ErrorCode::BadRequest,
            message: "huh".into(),
            reference: Some("zz".into())
        })
    );
}

#[tokio::test]
async fn revoked_token_stops_reconnecting_and_ends_the_events() {
    let mut server = FakeServer::start().await;
    let config = config(&server);
    let (client, conn1) = connect(&mut server, config).await;
    conn1.close(1008, "session revoked").await;
    match next(&client).await {
        Some(Event::Disconnected { reason }) => assert!(reason.contains("1008"), "{reason}"),
        other => panic!("expected disconnected, got {other:?}"),
    }

    let mut conn2 = server.accept().await;
    conn2.expect_hello(TOKEN).await;
    conn2
        .send(&ServerFrame::error(
            ErrorCode::Unauthorized,
            "revoked",
            None,
        ))
        .await;
    assert!(matches!(
        next(&client).await,
        Some(Event::Error {
            code: ErrorCode::Unauthorized,
            ..
        })
    ));
    assert_eq!(next(&client).await, None);
    // Many backoff periods later, still no new attempt.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(server.accepted(), 2);
    let e = client.send(Id(2), "x").await.unwrap_err();
    assert_eq!(*e.kind(), ErrorKind::Closed);
}

#[tokio::test]
async fn a_silent_connection_is_pinged_then_replaced() {
    let mut server = FakeServer::start().await;
    let mut config = config(&server);
    config.ping_interval = Duration::from_millis(50);
    config.idle_timeout = Duration::from_millis(250);
    let (client, mut conn1) = connect(&mut server, config).await;
    assert_eq!(conn1.recv().await, ClientFrame::Ping);
    // No pong: the client must give up on this socket and dial again.
    match next(&client).await {
        Some(Event::Disconnected { reason }) => assert!(reason.contains("no frame"), "{reason}"),
        other => panic!("expected disconnected, got {other:?}"),
    }
    let (_conn2, _) = server.accept_hello(TOKEN).await;
    assert_eq!(next(&client).await, Some(Event::Reconnected));
    drop(conn1);
}

#[tokio::test]
async fn manual_ack_read_and_typing_go_on_the_wire() {
    let mut server = FakeServer::start().await;
    let mut config = config(&server);
    config.auto_ack = false;
    let (client, mut conn) = connect(&mut server, config).await;
    conn.send(&message(1, 1, "c1")).await;
    assert_eq!(message_id(next(&client).await), 1);
    client.ack("manual").await.unwrap();
    // Without auto_ack the only ack is the app's own.
    assert_eq!(
        conn.recv().await,
        ClientFrame::Ack {
            cursor: "manual".into()
        }
    );
    client.read("1-2", 4).await.unwrap();
    assert_eq!(
        conn.recv().await,
        ClientFrame::Read {
            conversation: "1-2".into(),
            seq: 4
        }
    );
    client.typing(Id(2)).await.unwrap();
    assert_eq!(
        conn.recv().await,
        ClientFrame::Typing {
            to: Some(Id(2)),
            conversation: None
        }
    );
}

#[tokio::test]
async fn close_drains_events_then_ends() {
    let mut server = FakeServer::start().await;
    let config = config(&server);
    let (client, mut conn) = connect(&mut server, config).await;
    conn.send(&message(1, 1, "c1")).await;
    conn.send(&ServerFrame::Synced {
        cursor: "c1".into(),
    })
    .await;
    // The pong proves the task has read everything sent before the ping.
    conn.send_raw(WsMessage::Ping(b"p".to_vec().into())).await;
    assert_eq!(
        conn.recv_raw().await,
        Some(WsMessage::Pong(b"p".to_vec().into()))
    );
    let closer = tokio::spawn(client.clone().close());
    assert!(matches!(conn.recv_raw().await, Some(WsMessage::Close(_))));
    conn.drain_in_background();
    tokio::time::timeout(STEP, closer).await.unwrap().unwrap();
    assert_eq!(message_id(next(&client).await), 1);
    assert!(matches!(next(&client).await, Some(Event::Synced { .. })));
    assert_eq!(next(&client).await, None);
    assert_eq!(
        *client.ack("c1").await.unwrap_err().kind(),
        ErrorKind::Closed
    );
}

#[tokio::test]
async fn api_requests_and_error_mapping() {
    let (base, seen) = http_server(|req| match req.line.as_str() {
        "POST /v1/users" if req.body.contains("\"bob\"") => (
            409,
            r#"{"error":{"code":"conflict","message":"taken"}}"#.into(),
        ),
        "POST /v1/users" => (201, r#"{"user_id":"42","username":"ann"}"#.into()),
        "POST /v1/sessions" => (
            201,
            r#"{"token":"t1","user_id":"42","device_id":"7","expires_at":2592000000}"#.into(),
        ),
        "GET /v1/sessions" => (
            200,
            r#"{"sessions":[{"device_id":"7","device_name":null,"created_at":1,"last_active":2,"current":true}]}"#.into(),
        ),
        "POST /v1/groups" => (
            201,
            r#"{"conversation":"g9","title":"t","members":[{"user_id":"42","username":"ann","role":"owner"},{"user_id":"5","username":"cy","role":"member"}],"created_at":3}"#.into(),
        ),
        "GET /v1/conversations/a%2Fb/messages?before=9&limit=2" => {
            (200, r#"{"messages":[],"more":true}"#.into())
        }
        "PUT /v1/contacts/5"
        | "PUT /v1/groups/g9/members/6"
        | "DELETE /v1/blocks/5"
        | "DELETE /v1/sessions/current"
        | "DELETE /v1/sessions/8"
        | "PUT /v1/users/me/password" => (204, String::new()),
        _ => (502, "<html>bad gateway</html>".into()),
    })
    .await;
    let api = Api::new(&format!("{base}/"));

    let user = api.create_user("ann", "password1").await.unwrap();
    assert_eq!((user.user_id, user.username.as_str()), (Id(42), "ann"));
    let e = api.create_user("bob", "password1").await.unwrap_err();
    assert_eq!(
        *e.kind(),
        ErrorKind::Api {
            status: 409,
            code: ErrorCode::Conflict,
            message: "taken".into()
        }
    );
    let session = api.login("ann", "password1", Some("laptop")).await.unwrap();
    assert_eq!((session.token.as_str(), session.device_id), ("t1", Id(7)));
    assert_eq!(session.expires_at, 2_592_000_000);
    let sessions = api.sessions("t1").await.unwrap();
    assert_eq!(
        sessions.sessions,
        [SessionInfo {
            device_id: Id(7),
            device_name: None,
            created_at: 1,
            last_active: 2,
            current: true
        }]
    );
    api.revoke_session("t1", Id(8)).await.unwrap();
    api.change_password("t1", "password1", "password2")
        .await
        .unwrap();
    let page = api.messages("t1", "a/b", Some(9), Some(2)).await.unwrap();
    assert!(page.more && page.messages.is_empty());
    api.add_contact("t1", Id(5)).await.unwrap();
    let group = api.create_group("t1", "t", &[Id(5)]).await.unwrap();
    assert_eq!(
        (group.conversation.as_str(), group.members.len()),
        ("g9", 2)
    );
    api.unblock("t1", Id(5)).await.unwrap();
    api.logout("t1").await.unwrap();
    let e = api.contacts("t1").await.unwrap_err();
    assert!(matches!(
        e.kind(),
        ErrorKind::Api { status: 502, code: ErrorCode::Unavailable, message } if message.contains("bad gateway")
    ));

    let seen = seen.lock().unwrap();
    let login = seen.iter().find(|r| r.line == "POST /v1/sessions").unwrap();
    let body: serde_json::Value = serde_json::from_str(&login.body).unwrap();
    assert_eq!(body["device_name"], "laptop");
    assert_eq!(login.authorization, None);
    let logout = seen
        .iter()
        .find(|r| r.line.starts_with("DELETE /v1/sessions"))
        .unwrap();
    assert_eq!(logout.authorization.as_deref(), Some("Bearer t1"));
    let change = seen
        .iter()
        .find(|r| r.line == "PUT /v1/users/me/password")
        .unwrap();
    let body: serde_json::Value = serde_json::from_str(&change.body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"old_password": "password1", "new_password": "password2"})
    );
    assert_eq!(change.authorization.as_deref(), Some("Bearer t1"));
    let create = seen.iter().find(|r| r.line == "POST /v1/groups").unwrap();
    let body: serde_json::Value = serde_json::from_str(&create.body).unwrap();
    assert_eq!(body, serde_json::json!({"title": "t", "members": ["5"]}));
    assert_eq!(create.authorization.as_deref(), Some("Bearer t1"));
}

#[tokio::test]
async fn api_transport_failure_is_a_transport_error() {
    // Bind and drop, so the port is (almost certainly) closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let api = Api::new(&format!("http://127.0.0.1:{port}"));
    let e = api.user("t", "ann").await.unwrap_err();
    assert_eq!(*e.kind(), ErrorKind::Transport);
    assert!(std::error::Error::source(&e).is_some());
}

#[tokio::test]
async fn api_push_subscription_requests() {
    let (base, seen) = http_server(|req| match req.line.as_str() {
        "GET /v1/push/vapid" => (200, r#"{"public_key":"BKey"}"#.into()),
        "PUT /v1/push/subscription" | "DELETE /v1/push/subscription" => (204, String::new()),
        "GET /v1/push/subscription" => (
            404,
            r#"{"error":{"code":"not_found","message":"none"}}"#.into(),
        ),
        _ => (502, String::new()),
    })
    .await;
    let api = Api::new(&base);
    assert_eq!(api.push_vapid_key().await.unwrap().public_key, "BKey");
    let subscription = confab_protocol::PushSubscription::Fcm {
        token: "tok".into(),
        preview: true,
    };
    api.subscribe_push("t1", &subscription).await.unwrap();
    assert_eq!(api.push_subscription("t1").await.unwrap(), None);
    api.unsubscribe_push("t1").await.unwrap();

    let seen = seen.lock().unwrap();
    let put = seen
        .iter()
        .find(|r| r.line == "PUT /v1/push/subscription")
        .unwrap();
    let body: serde_json::Value = serde_json::from_str(&put.body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"kind": "fcm", "token": "tok", "preview": true})
    );
    assert_eq!(put.authorization.as_deref(), Some("Bearer t1"));
    let vapid = seen
        .iter()
        .find(|r| r.line == "GET /v1/push/vapid")
        .unwrap();
    assert_eq!(vapid.authorization, None);
}

//! The log keeps secrets out at every level: with `RUST_LOG=trace`, a whole conversation
//! (registration, login, `hello`, a message and its delivery) leaves no password, token or
//! message body in the server's output, on the embedded store and on PostgreSQL, whose client
//! library logs every statement's parameters below `info`.

use std::net::SocketAddr;
use std::process::{Command, Stdio};

use confab_testkit::postgres::Database;
use confab_testkit::ws::Ws;
use serde_json::json;

mod common;

use common::{Node, post};

const PASSWORD: &str = "pw-7f3a9c-never-logged";
const BODY: &str = "body-51d2e8-never-logged";

/// Registers and logs in `name`: (token, user_id).
async fn user(addr: SocketAddr, name: &str) -> (String, String) {
    post(
        addr,
        "/v1/users",
        json!({"username": name, "password": PASSWORD}),
    )
    .await;
    let s = post(
        addr,
        "/v1/sessions",
        json!({"username": name, "password": PASSWORD}),
    )
    .await;
    (
        s["token"].as_str().unwrap().to_owned(),
        s["user_id"].as_str().unwrap().to_owned(),
    )
}

/// Runs a conversation on a node started with `args` at `RUST_LOG=trace` and returns its log
/// and the tokens it handed out.
async fn conversation_log(args: &[String]) -> (String, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("server.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let data = dir.path().join("data");
    let mut all = vec!["--data-dir".to_owned(), data.display().to_string()];
    all.extend_from_slice(args);
    let node = Node::start_logging(&all, "trace", Stdio::from(log));

    let (alice, _) = user(node.addr, "alice").await;
    let (bob, bob_id) = user(node.addr, "bob").await;
    let mut a = Ws::connect(node.addr).await;
    a.hello(&alice, None).await;
    let (mut b, _) = Ws::caught_up(node.addr, &bob, None).await;
    a.send(json!({"type": "send", "to": bob_id, "client_id": "c1", "body": BODY}))
        .await;
    let got = b.next_of("message").await;
    assert_eq!(got["body"], BODY);
    b.send(json!({"type": "ack", "cursor": got["cursor"]}))
        .await;
    while a.next().await["type"] != "sent" {}

    // Stop it cleanly so every line is written.
    let ok = Command::new("kill")
        .args(["-TERM", &node.child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let mut node = node;
    node.child.wait().unwrap();
    (
        std::fs::read_to_string(&log_path).unwrap(),
        vec![alice, bob],
    )
}

fn assert_no_secrets(log: &str, tokens: &[String]) {
    assert!(
        log.contains("TRACE") || log.contains("DEBUG") || log.contains("INFO"),
        "the server logged nothing: the test would prove nothing"
    );
    for secret in [PASSWORD, BODY]
        .into_iter()
        .chain(tokens.iter().map(String::as_str))
    {
        let line = log.lines().find(|l| l.contains(secret));
        assert!(line.is_none(), "{secret:?} is in the log: {line:?}");
    }
}

#[tokio::test]
async fn trace_logs_hold_no_password_token_or_body() {
    let (log, tokens) = conversation_log(&[]).await;
    assert_no_secrets(&log, &tokens);
}

#[tokio::test]
async fn trace_logs_hold_no_secrets_on_postgres() {
    let Some(db) = Database::from_env().await else {
        return;
    };
    let (log, tokens) = conversation_log(&["--store".to_owned(), db.url()]).await;
    assert_no_secrets(&log, &tokens);
}

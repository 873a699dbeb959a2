//! `confab chat`, the terminal client, against the built binary: a group made and written
//! into from the command line.

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};

use serde_json::{Value, json};

mod common;

use common::{Node, post};

async fn user(addr: SocketAddr, name: &str) -> String {
    post(
        addr,
        "/v1/users",
        json!({"username": name, "password": "password1"}),
    )
    .await;
    let s = post(
        addr,
        "/v1/sessions",
        json!({"username": name, "password": "password1"}),
    )
    .await;
    s["token"].as_str().unwrap().to_owned()
}

/// Runs `confab chat` with `args`, `stdin` as its input; answers its stdout.
fn chat(addr: SocketAddr, args: &[&str], stdin: &str) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_confab"))
        .args(["chat", "--server", &format!("http://{addr}")])
        .args(["--password", "password1"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("confab runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn chat_makes_a_group_and_writes_into_it() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start([std::ffi::OsStr::new("--data-dir"), dir.path().as_os_str()]);
    let addr = node.addr;
    user(addr, "alice").await;
    let bob = user(addr, "bob").await;
    user(addr, "carol").await;

    let args = [
        "--user",
        "alice",
        "--new-group",
        "team",
        "--members",
        "bob,carol",
    ];
    let out = chat(addr, &args, "hello group\n");
    let conversation = out.trim().to_owned();
    assert!(
        conversation.starts_with('g'),
        "prints the group's id: {out:?}"
    );
    let out = chat(
        addr,
        &["--user", "bob", "--group", &conversation],
        "hi all\n",
    );
    assert!(out.is_empty(), "{out:?}");

    let page: Value = reqwest::Client::new()
        .get(format!(
            "http://{addr}/v1/conversations/{conversation}/messages"
        ))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let bodies: Vec<&str> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["body"].as_str())
        .collect();
    assert_eq!(bodies, ["hello group", "hi all"], "{page}");
}

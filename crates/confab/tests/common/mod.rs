//! Shared by the tests that run the built `confab` binary.

#![allow(
    dead_code,
    reason = "each test file uses a different part of the harness"
)]

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use serde_json::Value;

/// A running `confab serve` process; killed (SIGKILL) when dropped.
pub struct Node {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Node {
    /// Starts `confab serve --listen 127.0.0.1:0 <args>` and reads the address from the
    /// `confab listening on http://ADDR` line it prints first.
    pub fn start<I, S>(args: I) -> Node
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Node::start_logging(args, "warn", Stdio::inherit())
    }

    /// As [`Node::start`], logging at `rust_log` to `stderr`.
    pub fn start_logging<I, S>(args: I, rust_log: &str, stderr: Stdio) -> Node
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut child = Command::new(env!("CARGO_BIN_EXE_confab"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", rust_log)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("confab starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("confab listening on http://")
            .unwrap_or_else(|| panic!("node did not start: {line:?}"))
            .parse()
            .unwrap();
        Node { child, addr }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// POSTs `body` as JSON to `path` on `addr` and returns the answer's JSON; panics unless the
/// status is a success.
pub async fn post(addr: SocketAddr, path: &str, body: Value) -> Value {
    let r = reqwest::Client::new()
        .post(format!("http://{addr}{path}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{path}: {}", r.status());
    r.json().await.unwrap()
}

/// A user's logged-in device, as the tests hold it.
#[derive(Clone, Debug)]
pub struct User {
    pub token: String,
    pub id: String,
}

/// Registers `name` and logs in: a user with one device.
pub async fn user(addr: SocketAddr, name: &str) -> User {
    post(
        addr,
        "/v1/users",
        serde_json::json!({"username": name, "password": "password1"}),
    )
    .await;
    login(addr, name).await
}

/// A new device of `name`.
pub async fn login(addr: SocketAddr, name: &str) -> User {
    let s = post(
        addr,
        "/v1/sessions",
        serde_json::json!({"username": name, "password": "password1"}),
    )
    .await;
    User {
        token: s["token"].as_str().unwrap().to_owned(),
        id: s["user_id"].as_str().unwrap().to_owned(),
    }
}

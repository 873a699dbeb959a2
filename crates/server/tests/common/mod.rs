//! Test harness: a real server on 127.0.0.1:0 with a fresh data directory, driven over real
//! sockets with raw frames (the tests check the wire, not the SDK).

#![allow(
    dead_code,
    reason = "each test file uses a different part of the harness"
)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use confab_server::{Config, Server};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

/// How long a test waits for an expected frame before failing.
pub const WAIT: Duration = Duration::from_secs(10);

pub struct TestServer {
    pub server: Option<Server>,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub config: Config,
    pub http: reqwest::Client,
}

pub fn test_config(dir: PathBuf) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir,
        ..Config::default()
    }
}

/// Raises the per-socket send and frame limits out of the way, for tests that send floods
/// on purpose (and test something other than the limits).
pub fn without_rate_limits(c: &mut Config) {
    c.gateway.send_rate_per_sec = 1e6;
    c.gateway.send_burst = 1_000_000;
    c.gateway.frame_rate_per_sec = 1e6;
    c.gateway.frame_burst = 1_000_000;
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path().to_owned());
        tweak(&mut config);
        let server = Server::start(config.clone()).await.expect("server starts");
        TestServer {
            addr: server.addr,
            server: Some(server),
            dir,
            config,
            http: reqwest::Client::new(),
        }
    }

    /// Graceful shutdown, then a new server on the same data directory (new port).
    pub async fn restart(&mut self) {
        self.server.take().unwrap().shutdown().await.unwrap();
        let server = Server::start(self.config.clone())
            .await
            .expect("server restarts");
        self.addr = server.addr;
        self.server = Some(server);
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        let r = self
            .http
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        let r = self.http.get(self.url("/metrics")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.text().await.unwrap()
    }

    /// Creates a user and logs in one device.
    pub async fn user(&self, name: &str) -> TestUser {
        let (status, body) = self
            .post(
                "/v1/users",
                json!({"username": name, "password": "password1"}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        self.login(name).await
    }

    /// Another device (session) of an existing user.
    pub async fn login(&self, name: &str) -> TestUser {
        let (status, body) = self
            .post(
                "/v1/sessions",
                json!({"username": name, "password": "password1", "device_name": "test"}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        TestUser {
            name: name.to_owned(),
            token: body["token"].as_str().unwrap().to_owned(),
            id: body["user_id"].as_str().unwrap().to_owned(),
            device: body["device_id"].as_str().unwrap().to_owned(),
        }
    }

    /// A socket past `hello`/`welcome`, with its catch-up drained up to `synced`.
    pub async fn connect(&self, user: &TestUser) -> (Ws, Vec<Value>) {
        self.connect_from(user, None).await
    }

    pub async fn connect_from(&self, user: &TestUser, cursor: Option<&str>) -> (Ws, Vec<Value>) {
        let mut ws = Ws::open(self.addr).await;
        let mut hello = json!({"type": "hello", "token": user.token});
        if let Some(c) = cursor {
            hello["cursor"] = json!(c);
        }
        ws.send(hello).await;
        let welcome = ws.next().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        assert_eq!(welcome["user_id"], user.id.as_str());
        let mut caught_up = Vec::new();
        loop {
            let f = ws.next().await;
            match f["type"].as_str() {
                Some("synced") => {
                    ws.synced = f["cursor"].as_str().unwrap().to_owned();
                    break;
                }
                Some("message") => caught_up.push(f),
                _ => {}
            }
        }
        (ws, caught_up)
    }
}

#[derive(Clone, Debug)]
pub struct TestUser {
    pub name: String,
    pub token: String,
    pub id: String,
    pub device: String,
}

/// A raw WebSocket.
pub struct Ws {
    pub inner: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub synced: String,
}

impl Ws {
    pub async fn open(addr: SocketAddr) -> Ws {
        let (inner, _) = connect_async(format!("ws://{addr}/v1/ws")).await.unwrap();
        Ws {
            inner,
            synced: String::new(),
        }
    }

    pub async fn send(&mut self, v: Value) {
        self.inner
            .send(WsMessage::Text(v.to_string().into()))
            .await
            .unwrap();
    }

    pub async fn send_raw(&mut self, text: &str) {
        self.inner
            .send(WsMessage::Text(text.to_owned().into()))
            .await
            .unwrap();
    }

    /// The next JSON frame; panics on timeout or close.
    pub async fn next(&mut self) -> Value {
        match self.next_or_close().await {
            Ok(v) => v,
            Err(close) => panic!("socket closed ({close:?}) while a frame was expected"),
        }
    }

    /// The next JSON frame, or the close code if the socket closed instead.
    pub async fn next_or_close(&mut self) -> Result<Value, Option<u16>> {
        loop {
            let m = tokio::time::timeout(WAIT, self.inner.next())
                .await
                .expect("timed out waiting for a frame");
            match m {
                Some(Ok(WsMessage::Text(t))) => return Ok(serde_json::from_str(&t).unwrap()),
                Some(Ok(WsMessage::Close(c))) => return Err(c.map(|c| u16::from(c.code))),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Err(None),
            }
        }
    }

    /// Waits for the server to close the socket and returns the close code.
    pub async fn closed(&mut self) -> Option<u16> {
        loop {
            match self.next_or_close().await {
                Ok(_) => continue,
                Err(code) => return code,
            }
        }
    }

    /// The next frame of the given type, skipping others.
    pub async fn next_of(&mut self, ty: &str) -> Value {
        loop {
            let f = self.next().await;
            if f["type"] == ty {
                return f;
            }
        }
    }

    /// Sends a message and returns the `sent` ack.
    pub async fn send_message(&mut self, to: &TestUser, client_id: &str, body: &str) -> Value {
        self.send(json!({"type": "send", "to": to.id, "client_id": client_id, "body": body}))
            .await;
        loop {
            let f = self.next().await;
            if f["type"] == "sent" && f["client_id"] == client_id {
                return f;
            }
            if f["type"] == "error" && f["ref"] == client_id {
                panic!("send failed: {f}");
            }
        }
    }

    /// Expects no frame (other than pings) for `d`.
    pub async fn expect_silence(&mut self, d: Duration) {
        if let Ok(Some(Ok(WsMessage::Text(t)))) = tokio::time::timeout(d, self.inner.next()).await {
            panic!("unexpected frame: {t}");
        }
    }
}

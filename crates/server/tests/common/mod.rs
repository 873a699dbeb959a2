//! Test harness: a real server on 127.0.0.1:0 with a fresh data directory, driven over real
//! sockets with raw frames (the tests check the wire, not the SDK) through the test kit's
//! [`Ws`].

#![allow(
    dead_code,
    reason = "each test file uses a different part of the harness"
)]

use std::net::SocketAddr;
use std::path::PathBuf;

use confab_server::{Config, Server};
pub use confab_testkit::ws::Ws;
use serde_json::{Value, json};

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
        self.request("GET", path, token, None).await
    }

    /// `method` on `path` with `token` and, if given, a JSON body: the status and the answer's
    /// JSON (`null` if it has none).
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut r = self
            .http
            .request(method.parse().unwrap(), self.url(path))
            .bearer_auth(token);
        if let Some(body) = body {
            r = r.json(&body);
        }
        let r = r.send().await.unwrap();
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
        let mut ws = Ws::connect(self.addr).await;
        ws.hello(&user.token, cursor).await;
        let welcome = ws.next().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        assert_eq!(welcome["user_id"], user.id.as_str());
        let caught_up = ws.catch_up().await;
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

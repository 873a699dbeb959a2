//! A raw WebSocket client for tests that speak confab's protocol by hand: JSON frames in and
//! out, with the waits and close codes a test checks, and nothing of the SDK in between.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for a frame it expects before failing.
pub const WAIT: Duration = Duration::from_secs(10);

/// The socket under a [`Ws`].
pub type Stream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// One client socket on `/v1/ws`.
#[derive(Debug)]
pub struct Ws {
    /// The socket itself, for what the methods do not cover (raw messages, closing).
    pub inner: Stream,
    /// The cursor of the last `synced` frame [`catch_up`](Ws::catch_up) read.
    pub synced: String,
}

/// How the server refused an upgrade.
#[derive(Debug)]
pub struct Refused {
    /// The HTTP status, e.g. 503.
    pub status: u16,
    /// The response body.
    pub body: String,
}

impl From<Stream> for Ws {
    fn from(inner: Stream) -> Ws {
        Ws {
            inner,
            synced: String::new(),
        }
    }
}

impl Ws {
    /// The URL of the WebSocket endpoint of the server at `addr`.
    pub fn url(addr: SocketAddr) -> String {
        format!("ws://{addr}/v1/ws")
    }

    /// Opens a socket to the server at `addr`; panics if it cannot.
    pub async fn connect(addr: SocketAddr) -> Ws {
        let (inner, _) = tokio_tungstenite::connect_async(Ws::url(addr))
            .await
            .unwrap_or_else(|e| panic!("cannot open a WebSocket to {addr}: {e}"));
        Ws::from(inner)
    }

    /// Opens a socket, or says how the server refused the upgrade; panics on any other failure.
    pub async fn try_connect(addr: SocketAddr) -> Result<Ws, Refused> {
        match tokio_tungstenite::connect_async(Ws::url(addr)).await {
            Ok((inner, _)) => Ok(Ws::from(inner)),
            Err(tungstenite::Error::Http(resp)) => Err(Refused {
                status: resp.status().as_u16(),
                body: String::from_utf8(resp.body().clone().unwrap_or_default())
                    .expect("a UTF-8 body"),
            }),
            Err(other) => panic!("expected an HTTP refusal, got {other}"),
        }
    }

    /// A socket past `hello` (resuming after `cursor` if given), with its catch-up read up to
    /// `synced`: the socket and the catch-up's `message` frames.
    pub async fn caught_up(
        addr: SocketAddr,
        token: &str,
        cursor: Option<&str>,
    ) -> (Ws, Vec<Value>) {
        let mut ws = Ws::connect(addr).await;
        ws.hello(token, cursor).await;
        let caught = ws.catch_up().await;
        (ws, caught)
    }

    /// Sends `frame`; panics if the socket is broken.
    pub async fn send(&mut self, frame: Value) {
        self.send_text(&frame.to_string()).await;
    }

    /// Sends `frame`; false if the socket is broken.
    pub async fn try_send(&mut self, frame: Value) -> bool {
        self.inner
            .send(Message::Text(frame.to_string().into()))
            .await
            .is_ok()
    }

    /// Sends `text` as it is, JSON or not; panics if the socket is broken.
    pub async fn send_text(&mut self, text: &str) {
        self.inner
            .send(Message::Text(text.into()))
            .await
            .expect("the socket takes a frame");
    }

    /// Sends `hello` with `token`, resuming after `cursor` if given.
    pub async fn hello(&mut self, token: &str, cursor: Option<&str>) {
        let mut hello = json!({"type": "hello", "token": token});
        if let Some(c) = cursor {
            hello["cursor"] = json!(c);
        }
        self.send(hello).await;
    }

    /// Reads up to `synced`, keeping its cursor in [`synced`](Ws::synced), and returns the
    /// `message` frames on the way; other frames are skipped.
    pub async fn catch_up(&mut self) -> Vec<Value> {
        let mut messages = Vec::new();
        loop {
            let f = self.next().await;
            match f["type"].as_str() {
                Some("synced") => {
                    let cursor = f["cursor"].as_str();
                    self.synced = cursor
                        .unwrap_or_else(|| panic!("no cursor: {f}"))
                        .to_owned();
                    return messages;
                }
                Some("message") => messages.push(f),
                _ => {}
            }
        }
    }

    /// Sends a message to user `to` and returns its `sent` ack; panics on its error.
    pub async fn send_message(&mut self, to: &str, client_id: &str, body: &str) -> Value {
        self.send(json!({"type": "send", "to": to, "client_id": client_id, "body": body}))
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

    /// The next JSON frame; panics if the socket closes or nothing comes within [`WAIT`].
    pub async fn next(&mut self) -> Value {
        match self.next_or_close().await {
            Ok(v) => v,
            Err(close) => panic!("socket closed ({close:?}) while a frame was expected"),
        }
    }

    /// The next JSON frame, or the close code (`None` without one, or for a broken socket) if
    /// the socket closed instead; panics if nothing comes within [`WAIT`].
    pub async fn next_or_close(&mut self) -> Result<Value, Option<u16>> {
        loop {
            let m = tokio::time::timeout(WAIT, self.inner.next())
                .await
                .expect("timed out waiting for a frame");
            match m {
                Some(Ok(Message::Text(t))) => return Ok(parse(&t)),
                Some(Ok(Message::Close(c))) => return Err(c.map(|c| u16::from(c.code))),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Err(None),
            }
        }
    }

    /// The next JSON frame within `wait`, or `None` if the socket closed or nothing came.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Value> {
        let deadline = Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.inner.next())
                .await
                .ok()?
            {
                Some(Ok(Message::Text(t))) => return Some(parse(&t)),
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return None,
                Some(Ok(_)) => {}
            }
        }
    }

    /// The next frame of type `ty`, skipping others; panics as [`next`](Ws::next) does.
    pub async fn next_of(&mut self, ty: &str) -> Value {
        loop {
            let f = self.next().await;
            if f["type"] == ty {
                return f;
            }
        }
    }

    /// The next frame of type `ty` within `wait`, skipping others; panics if none comes.
    pub async fn next_of_within(&mut self, ty: &str, wait: Duration) -> Value {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let f = self
                .next_within(left)
                .await
                .unwrap_or_else(|| panic!("no {ty} frame within {wait:?}"));
            if f["type"] == ty {
                return f;
            }
        }
    }

    /// Waits for the server to close the socket, skipping frames, and returns the close code.
    pub async fn closed(&mut self) -> Option<u16> {
        loop {
            if let Err(code) = self.next_or_close().await {
                return code;
            }
        }
    }

    /// Panics if a frame (other than a control frame) comes within `wait`.
    pub async fn expect_silence(&mut self, wait: Duration) {
        if let Ok(Some(Ok(Message::Text(t)))) = tokio::time::timeout(wait, self.inner.next()).await
        {
            panic!("unexpected frame: {t}");
        }
    }
}

fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

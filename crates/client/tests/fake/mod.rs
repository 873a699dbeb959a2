//! Scripted stand-ins for the confab server: a WebSocket endpoint whose every accepted socket
//! is handed to the test to drive frame by frame, and a tiny HTTP responder.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use confab_client::{ClientFrame, ServerFrame};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// Longest any single step of a test may wait: far above what a passing test needs.
pub const STEP: Duration = Duration::from_secs(3);

/// A fake `/v1/ws` endpoint.
pub struct FakeServer {
    pub base_url: String,
    conns: mpsc::UnboundedReceiver<FakeConn>,
    accepted: Arc<AtomicUsize>,
}

impl FakeServer {
    pub async fn start() -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, conns) = mpsc::unbounded_channel();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut path = String::new();
                    #[allow(
                        clippy::result_large_err,
                        reason = "the signature is tungstenite's `Callback`; its error type is not ours to shrink"
                    )]
                    let callback =
                        |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
                            path = req.uri().path().to_owned();
                            Ok(resp)
                        };
                    if let Ok(ws) = tokio_tungstenite::accept_hdr_async(tcp, callback).await {
                        let _ = tx.send(FakeConn { ws, path });
                    }
                });
            }
        });
        FakeServer {
            base_url: format!("http://{addr}"),
            conns,
            accepted,
        }
    }

    /// The next upgraded socket.
    pub async fn accept(&mut self) -> FakeConn {
        let conn = tokio::time::timeout(STEP, self.conns.recv())
            .await
            .expect("no connection in time")
            .expect("listener gone");
        assert_eq!(conn.path, "/v1/ws");
        conn
    }

    /// Accepts, checks `hello` carries `token`, answers `welcome`; returns the hello cursor.
    pub async fn accept_hello(&mut self, token: &str) -> (FakeConn, Option<String>) {
        let mut conn = self.accept().await;
        let cursor = conn.expect_hello(token).await;
        conn.send(&ServerFrame::Welcome {
            user_id: confab_client::Id(1),
            device_id: confab_client::Id(10),
        })
        .await;
        (conn, cursor)
    }

    /// TCP connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// One accepted socket, driven by the test.
pub struct FakeConn {
    ws: WebSocketStream<TcpStream>,
    path: String,
}

impl FakeConn {
    pub async fn send(&mut self, frame: &ServerFrame) {
        self.ws
            .send(WsMessage::text(frame.to_json()))
            .await
            .unwrap();
    }

    pub async fn send_raw(&mut self, msg: WsMessage) {
        self.ws.send(msg).await.unwrap();
    }

    /// The next raw WebSocket message, or `None` once the socket closed.
    pub async fn recv_raw(&mut self) -> Option<WsMessage> {
        match tokio::time::timeout(STEP, self.ws.next())
            .await
            .expect("no frame in time")
        {
            Some(Ok(msg)) => Some(msg),
            _ => None,
        }
    }

    /// The next client frame (control frames skipped).
    pub async fn recv(&mut self) -> ClientFrame {
        loop {
            match self.recv_raw().await.expect("socket closed") {
                WsMessage::Text(text) => return ClientFrame::parse(&text).unwrap(),
                WsMessage::Close(_) => panic!("client closed the socket"),
                _ => {}
            }
        }
    }

    /// The next client frame that is not an `ack` or a `ping`.
    pub async fn recv_skipping_acks(&mut self) -> ClientFrame {
        loop {
            match self.recv().await {
                ClientFrame::Ack { .. } | ClientFrame::Ping => {}
                other => return other,
            }
        }
    }

    /// Reads until an `ack` of `cursor`.
    pub async fn expect_ack(&mut self, cursor: &str) {
        loop {
            if matches!(self.recv().await, ClientFrame::Ack { cursor: c } if c == cursor) {
                return;
            }
        }
    }

    /// Reads `hello`, checks its token, returns its cursor.
    pub async fn expect_hello(&mut self, token: &str) -> Option<String> {
        match self.recv().await {
            ClientFrame::Hello { token: t, cursor } => {
                assert_eq!(t.as_deref(), Some(token));
                cursor
            }
            other => panic!("expected hello, got {other:?}"),
        }
    }

    /// Keeps reading in the background until the client closes (answering its close), so a
    /// test can end without the client waiting for a reply that never comes.
    pub fn drain_in_background(mut self) {
        tokio::spawn(async move { while let Some(Ok(_)) = self.ws.next().await {} });
    }

    /// Closes with `code` and `reason`.
    pub async fn close(mut self, code: u16, reason: &str) {
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason.into(),
        };
        let _ = self.ws.close(Some(frame)).await;
        // Let the client's close reply arrive so the handshake completes.
        let _ = tokio::time::timeout(STEP, async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }
}

/// One request as the fake HTTP server saw it.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// e.g. `POST /v1/users`
    pub line: String,
    pub authorization: Option<String>,
    pub body: String,
}

type Handler = dyn Fn(&Recorded) -> (u16, String) + Send + Sync;

/// A one-request-per-connection HTTP server answering with `handler`; returns its base URL and
/// the requests it saw.
pub async fn http_server(
    handler: impl Fn(&Recorded) -> (u16, String) + Send + Sync + 'static,
) -> (String, Arc<Mutex<Vec<Recorded>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let handler: Arc<Handler> = Arc::new(handler);
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let handler = handler.clone();
            let log = log.clone();
            tokio::spawn(async move {
                let mut reader = BufReader::new(tcp);
                let mut request_line = String::new();
                reader.read_line(&mut request_line).await.unwrap();
                let mut length = 0;
                let mut authorization = None;
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).await.unwrap();
                    let line = line.trim_end();
                    if line.is_empty() {
                        break;
                    }
                    let (name, value) = line.split_once(':').unwrap();
                    match name.to_ascii_lowercase().as_str() {
                        "content-length" => length = value.trim().parse().unwrap(),
                        "authorization" => authorization = Some(value.trim().to_owned()),
                        _ => {}
                    }
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).await.unwrap();
                let mut parts = request_line.split_whitespace();
                let recorded = Recorded {
                    line: format!("{} {}", parts.next().unwrap(), parts.next().unwrap()),
                    authorization,
                    body: String::from_utf8(body).unwrap(),
                };
                let (status, body) = handler(&recorded);
                log.lock().unwrap().push(recorded);
                let response = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let mut tcp = reader.into_inner();
                tcp.write_all(response.as_bytes()).await.unwrap();
                let _ = tcp.shutdown().await;
            });
        }
    });
    (format!("http://{addr}"), seen)
}

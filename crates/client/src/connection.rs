//! One raw WebSocket session with no retry logic, for tests and the benchmark that need exact
//! control over what goes on the wire. [`crate::Client`] is built on it.

use std::fmt;
use std::time::Duration;

use confab_protocol::{ClientFrame, Id, ServerFrame};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::error::{Error, ErrorKind};

type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long [`Connection::connect`] waits for the upgrade and the `welcome`.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes a [`Connection`] asks its socket for per read unless told otherwise
/// ([`ConnectOptions::read_buffer`]). tungstenite's default reserves 128 KiB for reading
/// (and as much for writing); chat frames are small, and a process with thousands of
/// connections (a load test, a bridge) would spend gigabytes on them. Big enough that a
/// catch-up burst takes few reads; a bigger frame grows the buffer for itself.
pub const DEFAULT_READ_BUFFER: usize = 8 * 1024;
/// How long a clean close waits for the server's side of the closing handshake.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// How [`Connection::connect_with`] connects.
#[derive(Clone, Copy, Debug)]
pub struct ConnectOptions {
    /// Time for the upgrade and the `welcome` together.
    pub timeout: Duration,
    /// Bytes asked of the socket per read. tungstenite zeroes this much before every read, so
    /// a process holding thousands of sockets that each get a frame at a time (a load
    /// generator) spends less with a buffer near its frames' size; a bigger frame still
    /// arrives whole, over more reads.
    pub read_buffer: usize,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            timeout: CONNECT_TIMEOUT,
            read_buffer: DEFAULT_READ_BUFFER,
        }
    }
}

/// The server's `welcome`: who this socket is authenticated as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Welcome {
    pub user_id: Id,
    pub device_id: Id,
}

/// Close code and reason the peer sent.
#[derive(Clone, Debug, Default)]
struct CloseInfo {
    code: Option<u16>,
    reason: Option<String>,
}

/// One WebSocket session to `/v1/ws`, past `welcome`, with no reconnect or retry.
pub struct Connection {
    ws: WsStream,
    close: CloseInfo,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("close_code", &self.close.code)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Connects to `ws_url`, sends `hello{token, cursor}` and waits for `welcome`, all within
    /// [`CONNECT_TIMEOUT`]. An `error` frame instead (e.g. `unauthorized`) gives
    /// [`ErrorKind::Server`].
    pub async fn connect(
        ws_url: &str,
        token: &str,
        cursor: Option<&str>,
    ) -> Result<(Connection, Welcome), Error> {
        Self::connect_with(ws_url, token, cursor, ConnectOptions::default()).await
    }

    /// [`Connection::connect`] with a time limit of the caller's choosing.
    pub async fn connect_within(
        ws_url: &str,
        token: &str,
        cursor: Option<&str>,
        limit: Duration,
    ) -> Result<(Connection, Welcome), Error> {
        let options = ConnectOptions {
            timeout: limit,
            ..ConnectOptions::default()
        };
        Self::connect_with(ws_url, token, cursor, options).await
    }

    /// [`Connection::connect`] with every option of the caller's choosing.
    pub async fn connect_with(
        ws_url: &str,
        token: &str,
        cursor: Option<&str>,
        options: ConnectOptions,
    ) -> Result<(Connection, Welcome), Error> {
        let handshake = async {
            let mut conn = Connection::open_with(ws_url, options.read_buffer).await?;
            let welcome = conn.hello(token, cursor).await?;
            Ok((conn, welcome))
        };
        tokio::time::timeout(options.timeout, handshake)
            .await
            .map_err(|_| Error::new(ErrorKind::Timeout))?
    }

    /// Only the WebSocket upgrade, no `hello`: for tests of what the server does before or
    /// instead of a proper `hello`. No time limit.
    pub async fn open(ws_url: &str) -> Result<Connection, Error> {
        Self::open_with(ws_url, DEFAULT_READ_BUFFER).await
    }

    /// [`Connection::open`] reading `read_buffer` bytes at a time.
    async fn open_with(ws_url: &str, read_buffer: usize) -> Result<Connection, Error> {
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .read_buffer_size(read_buffer)
            .write_buffer_size(0);
        // Nagle would hold small frames back for up to 40 ms; chat frames are all small.
        let (ws, _response) =
            tokio_tungstenite::connect_async_with_config(ws_url, Some(config), true)
                .await
                .map_err(ws_error)?;
        Ok(Connection {
            ws,
            close: CloseInfo::default(),
        })
    }

    /// Sends `hello` and waits for `welcome`. Anything else first is an error: an `error`
    /// frame gives [`ErrorKind::Server`], a close gives [`ErrorKind::Closed`].
    pub async fn hello(&mut self, token: &str, cursor: Option<&str>) -> Result<Welcome, Error> {
        self.send(&ClientFrame::Hello {
            token: Some(token.to_owned()),
            cursor: cursor.map(str::to_owned),
        })
        .await?;
        match self.next().await? {
            Some(ServerFrame::Welcome { user_id, device_id }) => Ok(Welcome { user_id, device_id }),
            Some(ServerFrame::Error { code, message, .. }) => {
                Err(Error::new(ErrorKind::Server { code, message }))
            }
            Some(other) => Err(Error::with_source(
                ErrorKind::Protocol,
                format!("expected welcome, got {other:?}"),
            )),
            None => Err(Error::with_source(
                ErrorKind::Closed,
                format!(
                    "socket closed before welcome (code {:?}, reason {:?})",
                    self.close.code, self.close.reason
                ),
            )),
        }
    }

    /// Sends one frame.
    pub async fn send(&mut self, frame: &ClientFrame) -> Result<(), Error> {
        self.ws.send(encode(frame)?).await.map_err(ws_error)
    }

    /// Sends raw text as one frame, for tests of malformed input.
    pub async fn send_text(&mut self, text: String) -> Result<(), Error> {
        self.ws.send(WsMessage::text(text)).await.map_err(ws_error)
    }

    /// The next server frame; `None` once the socket closed. WebSocket pings are answered
    /// without surfacing here. A text frame that is not a known server frame gives
    /// [`ErrorKind::Protocol`] and leaves the socket usable. Cancel-safe.
    pub async fn next(&mut self) -> Result<Option<ServerFrame>, Error> {
        loop {
            let msg = self.ws.next().await;
            match decode(msg, &mut self.close) {
                Step::Frame(frame) => return Ok(Some(frame)),
                Step::Ping => {
                    // tungstenite queued the pong; push it out now rather than on the next read.
                    self.ws.flush().await.map_err(ws_error)?;
                }
                Step::Skip => {}
                Step::CloseFrame => {
                    finish_close(&mut self.ws).await;
                    return Ok(None);
                }
                Step::Ended => return Ok(None),
                Step::Err(e) => return Err(e),
            }
        }
    }

    /// The close code the server closed with, once [`next`](Self::next) returned `None`.
    pub fn close_code(&self) -> Option<u16> {
        self.close.code
    }

    /// The close reason the server closed with, once [`next`](Self::next) returned `None`.
    pub fn close_reason(&self) -> Option<&str> {
        self.close.reason.as_deref()
    }

    /// Closes cleanly (code 1000) and waits up to a second for the server's close reply.
    pub async fn close(mut self) -> Result<(), Error> {
        match self.ws.close(None).await {
            Ok(()) => {}
            // Already closed by the server: nothing left to do.
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                return Ok(());
            }
            Err(e) => return Err(ws_error(e)),
        }
        // Wait for the server's close reply; what arrives before it no longer matters.
        let reply = async {
            while let Some(Ok(msg)) = self.ws.next().await {
                if msg.is_close() {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, reply).await;
        Ok(())
    }

    /// Splits into halves that two tasks can use at once (e.g. a sender and a reader).
    pub fn split(self) -> (ConnectionSender, ConnectionReceiver) {
        let (sink, stream) = self.ws.split();
        (
            ConnectionSender { sink },
            ConnectionReceiver {
                stream,
                close: self.close,
            },
        )
    }
}

/// The sending half of a split [`Connection`].
pub struct ConnectionSender {
    sink: SplitSink<WsStream, WsMessage>,
}

impl fmt::Debug for ConnectionSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionSender").finish_non_exhaustive()
    }
}

impl ConnectionSender {
    /// Sends one frame.
    pub async fn send(&mut self, frame: &ClientFrame) -> Result<(), Error> {
        self.sink.send(encode(frame)?).await.map_err(ws_error)
    }

    /// Sends raw text as one frame.
    pub async fn send_text(&mut self, text: String) -> Result<(), Error> {
        self.sink
            .send(WsMessage::text(text))
            .await
            .map_err(ws_error)
    }

    /// Sends a close frame (code 1000); the receiving half then sees the server's reply.
    pub async fn close(mut self) -> Result<(), Error> {
        match self.sink.close().await {
            Ok(())
            | Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                Ok(())
            }
            Err(e) => Err(ws_error(e)),
        }
    }
}

/// The receiving half of a split [`Connection`]. Keep reading it: that is also what answers
/// the server's WebSocket pings.
pub struct ConnectionReceiver {
    stream: SplitStream<WsStream>,
    close: CloseInfo,
}

impl fmt::Debug for ConnectionReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionReceiver")
            .field("close_code", &self.close.code)
            .finish_non_exhaustive()
    }
}

impl ConnectionReceiver {
    /// The next server frame; `None` once the socket closed. As [`Connection::next`], except
    /// that pongs go out on the following read (the halves share one socket and tungstenite
    /// writes queued control frames whenever either half touches it).
    pub async fn next(&mut self) -> Result<Option<ServerFrame>, Error> {
        loop {
            let msg = self.stream.next().await;
            match decode(msg, &mut self.close) {
                Step::Frame(frame) => return Ok(Some(frame)),
                Step::Ping | Step::Skip => {}
                Step::CloseFrame => {
                    finish_close(&mut self.stream).await;
                    return Ok(None);
                }
                Step::Ended => return Ok(None),
                Step::Err(e) => return Err(e),
            }
        }
    }

    /// The close code the server closed with, once [`next`](Self::next) returned `None`.
    pub fn close_code(&self) -> Option<u16> {
        self.close.code
    }

    /// The close reason the server closed with, once [`next`](Self::next) returned `None`.
    pub fn close_reason(&self) -> Option<&str> {
        self.close.reason.as_deref()
    }
}

/// What one WebSocket message means to a reader.
enum Step {
    Frame(ServerFrame),
    Ping,
    Skip,
    CloseFrame,
    Ended,
    Err(Error),
}

fn decode(msg: Option<Result<WsMessage, tungstenite::Error>>, close: &mut CloseInfo) -> Step {
    match msg {
        None => Step::Ended,
        Some(Ok(WsMessage::Text(text))) => match ServerFrame::parse(&text) {
            Ok(frame) => Step::Frame(frame),
            Err(e) => Step::Err(Error::with_source(
                ErrorKind::Protocol,
                format!("bad server frame {:?}: {e}", clip(&text)),
            )),
        },
        Some(Ok(WsMessage::Binary(_))) => Step::Err(Error::with_source(
            ErrorKind::Protocol,
            "binary frame from server (the protocol uses text frames only)",
        )),
        Some(Ok(WsMessage::Ping(_))) => Step::Ping,
        Some(Ok(WsMessage::Pong(_) | WsMessage::Frame(_))) => Step::Skip,
        Some(Ok(WsMessage::Close(frame))) => {
            // A close without a payload is reported as 1005 ("no status received"), per RFC 6455.
            match frame {
                Some(frame) => {
                    close.code = Some(u16::from(frame.code));
                    close.reason = Some(frame.reason.to_string());
                }
                None => close.code = Some(1005),
            }
            Step::CloseFrame
        }
        Some(Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed)) => {
            Step::Ended
        }
        Some(Err(e)) => Step::Err(ws_error(e)),
    }
}

/// After the server's close frame: keep reading, which makes tungstenite write its queued
/// close reply, until the server ends the TCP connection (bounded, in case it never does).
async fn finish_close<S>(stream: &mut S)
where
    S: futures_util::Stream<Item = Result<WsMessage, tungstenite::Error>> + Unpin,
{
    let drain = async { while let Some(Ok(_)) = stream.next().await {} };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, drain).await;
}

fn encode(frame: &ClientFrame) -> Result<WsMessage, Error> {
    let text =
        serde_json::to_string(frame).map_err(|e| Error::with_source(ErrorKind::Protocol, e))?;
    Ok(WsMessage::text(text))
}

fn ws_error(e: tungstenite::Error) -> Error {
    let kind = match e {
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            ErrorKind::Closed
        }
        _ => ErrorKind::Transport,
    };
    Error::with_source(kind, e)
}

/// The start of a frame, for error messages.
fn clip(text: &str) -> &str {
    let mut end = text.len().min(200);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

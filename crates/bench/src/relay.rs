//! `confab bench relay`: a yardstick, not a chat server. It answers the frames `pairs` uses
//! (`hello`, `send`, `ack`, `ping`) with the frames confab answers them with, encoded by the
//! same protocol crate, over the same WebSocket stack with the same buffer sizes, one write
//! per batch of ready frames and `TCP_NODELAY` — and does nothing else: no store, no fsync,
//! no hub, presence, rate limits or catch-up. Run against it, `pairs` measures what the
//! machine's sockets and the load generator alone allow, the floor under any server's numbers
//! on the same machine.
//!
//! It holds one socket per user (a new `hello` for a user replaces the old socket's slot), and
//! its `seq`s and cursors are counters in memory: nothing survives it and nothing is checked
//! beyond what the load needs. The accounts it makes up (user ids 1…N, tokens `relay-<id>`)
//! are written in `confab admin seed --out` format for `--accounts`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use confab_client::Id;
use confab_protocol::{
    ClientFrame, ErrorCode, MAX_FRAME_BYTES, Message as ChatMessage, MessageFrame, ReceiptKind,
    ServerFrame, conversation_id,
};
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};

use crate::target::{SeededAccount, is_loopback};

/// The server's buffer sizes (`confab_server::gateway`), so the relay reads and writes the
/// same way: a 256-byte read buffer, frames gathered up to 8 KiB per write.
const READ_BUFFER: usize = 256;
const WRITE_BUFFER: usize = 8 * 1024;

/// `confab bench relay`.
#[derive(clap::Args, Clone, Debug)]
pub struct RelayArgs {
    /// Address to listen on (127.0.0.0/8 or ::1; port 0 picks one). Prints
    /// `confab listening on http://ADDR` once it accepts.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// How many accounts to make up (user ids 1 to N, paired 1↔2, 3↔4, … as `pairs` pairs them).
    #[arg(long, default_value_t = 100)]
    pub count: usize,
    /// Where to write those accounts, in `confab admin seed --out` format.
    #[arg(long)]
    pub out: PathBuf,
}

/// The accounts of a relay with `count` users.
pub fn accounts(count: usize) -> Vec<SeededAccount> {
    (1..=count as u64)
        .map(|u| SeededAccount {
            username: format!("relay-{u}"),
            user_id: Id(u),
            device_id: Id(u),
            token: token(u),
        })
        .collect()
}

fn token(user: u64) -> String {
    format!("relay-{user}")
}

pub async fn main(args: RelayArgs) -> anyhow::Result<bool> {
    if !is_loopback(args.listen.ip()) {
        bail!(
            "{}: the relay is a benchmark yardstick and listens on loopback only",
            args.listen
        );
    }
    let accounts = accounts(args.count);
    let json = serde_json::to_vec_pretty(&accounts)?;
    std::fs::write(&args.out, json)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let relay = Relay::new(args.count);
    // The same line as `confab serve`, so `--spawn` finds the address the same way.
    println!("confab listening on http://{}", listener.local_addr()?);
    relay.serve(listener).await?;
    Ok(true)
}

/// The relay's shared state.
pub struct Relay {
    /// Each user's socket, by user id (slot 0 unused).
    sockets: Vec<Mutex<Option<mpsc::UnboundedSender<String>>>>,
    /// Each user's next stream position (its cursors).
    streams: Vec<AtomicU64>,
    /// Each conversation's last `seq`, by its users' [`pair`].
    seqs: Mutex<HashMap<(u64, u64), u64>>,
    next_id: AtomicU64,
}

impl Relay {
    pub fn new(users: usize) -> Arc<Relay> {
        Arc::new(Relay {
            sockets: (0..=users).map(|_| Mutex::new(None)).collect(),
            streams: (0..=users).map(|_| AtomicU64::new(0)).collect(),
            seqs: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        })
    }

    /// Accepts until the listener fails.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> anyhow::Result<()> {
        loop {
            let (stream, _) = listener.accept().await.context("accept failed")?;
            let relay = self.clone();
            tokio::spawn(async move {
                let _ = stream.set_nodelay(true);
                relay.socket(stream).await;
            });
        }
    }

    fn user(&self, token: &str) -> Option<u64> {
        let user: u64 = token.strip_prefix("relay-")?.parse().ok()?;
        self.is_user(user).then_some(user)
    }

    fn cursor(&self, user: u64) -> u64 {
        self.streams[user as usize].fetch_add(1, Ordering::Relaxed) + 1
    }

    fn peer_socket(&self, user: u64) -> Option<mpsc::UnboundedSender<String>> {
        let slot = self.sockets.get(user as usize)?;
        slot.lock().ok()?.clone()
    }

    async fn socket(self: Arc<Self>, stream: TcpStream) {
        let config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER)
            .write_buffer_size(WRITE_BUFFER)
            .max_message_size(Some(MAX_FRAME_BYTES))
            .max_frame_size(Some(MAX_FRAME_BYTES));
        let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await
        else {
            return;
        };
        let Some(me) = self.hello(&mut ws).await else {
            return;
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        if let Ok(mut slot) = self.sockets[me as usize].lock() {
            *slot = Some(tx.clone());
        }
        let welcome = ServerFrame::Welcome {
            user_id: Id(me),
            device_id: Id(me),
        };
        let synced = ServerFrame::Synced {
            cursor: self.streams[me as usize]
                .load(Ordering::Relaxed)
                .to_string(),
        };
        let mut ok = ws.feed(Message::text(welcome.to_json())).await.is_ok()
            && ws.send(Message::text(synced.to_json())).await.is_ok();
        // The partner of the last conversation, for the receipts of this socket's acks.
        let mut last_peer = None;
        while ok {
            tokio::select! {
                incoming = ws.next() => {
                    let text = match incoming {
                        Some(Ok(Message::Text(t))) => t,
                        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                        Some(Ok(_)) => continue,
                    };
                    ok = match ClientFrame::parse(text.as_str()) {
                        Ok(frame) => self.handle(me, frame, &mut ws, &mut last_peer).await,
                        Err(e) => {
                            let err = ServerFrame::error(ErrorCode::BadRequest, e.message, e.reference);
                            ws.send(Message::text(err.to_json())).await.is_ok()
                        }
                    };
                }
                Some(frame) = rx.recv() => {
                    // Everything ready goes out in one write.
                    ok = ws.feed(Message::text(frame)).await.is_ok();
                    while ok && let Ok(frame) = rx.try_recv() {
                        ok = ws.feed(Message::text(frame)).await.is_ok();
                    }
                    ok = ok && ws.flush().await.is_ok();
                }
            }
        }
        if let Ok(mut slot) = self.sockets[me as usize].lock()
            && slot.as_ref().is_some_and(|s| s.same_channel(&tx))
        {
            *slot = None;
        }
    }

    /// Reads `hello`; the user it names, or `None` after refusing it.
    async fn hello(&self, ws: &mut WebSocketStream<TcpStream>) -> Option<u64> {
        let text = match ws.next().await {
            Some(Ok(Message::Text(t))) => t,
            _ => return None,
        };
        let user = match ClientFrame::parse(text.as_str()) {
            Ok(ClientFrame::Hello { token, .. }) => token.as_deref().and_then(|t| self.user(t)),
            _ => None,
        };
        if user.is_none() {
            let err = ServerFrame::error(ErrorCode::Unauthorized, "unknown token", None);
            let _ = ws.send(Message::text(err.to_json())).await;
            let _ = ws
                .close(Some(CloseFrame {
                    code: CloseCode::Policy,
                    reason: "unauthorized".into(),
                }))
                .await;
        }
        user
    }

    /// Answers one frame; false when the socket failed.
    async fn handle(
        &self,
        me: u64,
        frame: ClientFrame,
        ws: &mut WebSocketStream<TcpStream>,
        last_peer: &mut Option<u64>,
    ) -> bool {
        match frame {
            ClientFrame::Send {
                to,
                client_id,
                body,
                ..
            } => {
                // The relay serves the benchmark's 1:1 sends, which always name `to`.
                let to = to.map_or(0, |to| to.0);
                if !self.is_user(to) {
                    let err =
                        ServerFrame::error(ErrorCode::NotFound, "no such user", Some(client_id));
                    return ws.send(Message::text(err.to_json())).await.is_ok();
                }
                *last_peer = Some(to);
                let seq = {
                    let mut seqs = self.seqs.lock().unwrap_or_else(|e| e.into_inner());
                    let s = seqs.entry(pair(me, to)).or_default();
                    *s += 1;
                    *s
                };
                let message = ChatMessage {
                    id: Id(self.next_id.fetch_add(1, Ordering::Relaxed)),
                    conversation: conversation(me, to),
                    seq,
                    from: Id(me),
                    to: Some(Id(to)),
                    body,
                    system: None,
                    ts: now_ms(),
                };
                let frame = MessageFrame::new(&message);
                if let Some(peer) = self.peer_socket(to) {
                    let _ = peer.send(frame.with_cursor(self.cursor(to)));
                }
                let sent = ServerFrame::Sent {
                    client_id,
                    id: message.id,
                    conversation: message.conversation,
                    seq,
                    ts: message.ts,
                };
                ws.feed(Message::text(sent.to_json())).await.is_ok()
                    && ws
                        .send(Message::text(frame.with_cursor(self.cursor(me))))
                        .await
                        .is_ok()
            }
            ClientFrame::Ack { .. } => {
                // Confab tells the peer the highest `seq` acked; the relay, which keeps no
                // streams, the conversation's last one.
                if let Some(peer) = *last_peer
                    && let Some(socket) = self.peer_socket(peer)
                {
                    let seq = {
                        let seqs = self.seqs.lock().unwrap_or_else(|e| e.into_inner());
                        seqs.get(&pair(me, peer)).copied().unwrap_or(0)
                    };
                    let receipt = ServerFrame::Receipt {
                        conversation: conversation(me, peer),
                        user_id: Id(me),
                        kind: ReceiptKind::Delivered,
                        seq,
                    };
                    let _ = socket.send(receipt.to_json());
                }
                true
            }
            ClientFrame::Ping => ws
                .send(Message::text(ServerFrame::Pong.to_json()))
                .await
                .is_ok(),
            _ => true,
        }
    }

    fn is_user(&self, user: u64) -> bool {
        (1..self.sockets.len() as u64).contains(&user)
    }
}

/// The two users of a conversation, lower id first.
fn pair(a: u64, b: u64) -> (u64, u64) {
    (a.min(b), a.max(b))
}

/// A conversation's id as confab writes it, so the relay's frames are as long as confab's.
fn conversation(a: u64, b: u64) -> String {
    conversation_id(Id(a), Id(b))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

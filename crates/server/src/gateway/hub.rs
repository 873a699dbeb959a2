//! The registry of sockets this node holds, by user: where the sync queue's events land
//! (design steps 7-8).

use std::cell::OnceCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::ws::Utf8Bytes;
use confab_protocol::{Id, MessageFrame, group_of};
use tokio::sync::oneshot;

use super::queue::{QueueReceiver, QueueSender, SendError, queue};

use crate::chat::LocalSockets;
use crate::sync::SyncEvent;

/// Why the hub asks a socket to close.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// Its outbound queue overflowed: the client reads slower than events arrive.
    TooSlow,
    /// Its device's token was revoked.
    Revoked,
    /// The server is shutting down.
    ShuttingDown,
}

/// An event queued for one socket.
#[derive(Clone, Debug)]
pub enum Outbound {
    /// A message at position `pos` of the socket's user's stream.
    /// The frame is serialised once for all the sockets of both participants.
    Message { frame: Arc<MessageFrame>, pos: u64 },
    /// A group's message, serialised once for every socket of every recipient on this node.
    Group(Arc<GroupEvent>),
    /// A frame already serialised once for every socket it goes to.
    /// Boxed to keep `Outbound`, a queue slot, at 24 bytes: ephemeral frames are rare next to
    /// messages.
    Frame(Box<Utf8Bytes>),
    /// Re-read the stream from the store and re-check the token (cluster mode, periodic).
    Resync,
}

/// A group message on its way to sockets: the frame without its cursor, and where it stands in
/// its group (each socket orders a group's messages by `seq`).
#[derive(Debug)]
pub struct GroupEvent {
    pub frame: MessageFrame,
    pub group: Id,
    pub seq: u64,
}

struct Socket {
    id: u64,
    device: Id,
    tx: QueueSender<Outbound>,
    /// Taken by the first reason to close: a socket is told once. (A oneshot costs an idle
    /// socket far less than a watch channel.)
    close: Option<oneshot::Sender<CloseReason>>,
}

const SHARDS: usize = 64;

/// Sockets by user, sharded so that fan-out for different users does not contend.
pub struct Hub {
    shards: Vec<Mutex<HashMap<Id, Vec<Socket>>>>,
    next_socket: AtomicU64,
    /// Node-unique prefix for socket ids, so they are unique cluster-wide.
    node: u64,
    queue_len: usize,
    on_slow: Box<dyn Fn() + Send + Sync>,
}

/// A socket's place in the hub and its queues.
pub struct Registration {
    pub membership: Membership,
    pub events: QueueReceiver<Outbound>,
    pub close: oneshot::Receiver<CloseReason>,
}

/// A socket's membership in the hub; leaving is automatic on drop.
pub struct Membership {
    hub: Arc<Hub>,
    user: Id,
    pub socket: u64,
}

impl Drop for Membership {
    fn drop(&mut self) {
        let mut shard = self.hub.shard(self.user);
        if let Some(list) = shard.get_mut(&self.user) {
            list.retain(|s| s.id != self.socket);
            if list.is_empty() {
                shard.remove(&self.user);
            }
        }
    }
}

impl Hub {
    /// `queue_len` events may wait for one socket; `on_slow` counts sockets dropped for lag.
    pub fn new(node: u16, queue_len: usize, on_slow: Box<dyn Fn() + Send + Sync>) -> Self {
        Hub {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            next_socket: AtomicU64::new(1),
            node: u64::from(node),
            queue_len,
            on_slow,
        }
    }

    fn shard(&self, user: Id) -> std::sync::MutexGuard<'_, HashMap<Id, Vec<Socket>>> {
        // The remainder is below SHARDS: it fits any usize.
        self.shards[usize::try_from(user.0 % SHARDS as u64).unwrap_or(0)]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a socket of `user`'s `device`. Events for the user queue from this moment on.
    pub fn register(self: &Arc<Self>, user: Id, device: Id) -> Registration {
        let socket = (self.node << 48) | self.next_socket.fetch_add(1, Ordering::Relaxed);
        let (tx, events) = queue(self.queue_len);
        let (close_tx, close) = oneshot::channel();
        // Most users hold one socket: room for one, not the four `push` would make.
        self.shard(user)
            .entry(user)
            .or_insert_with(|| Vec::with_capacity(1))
            .push(Socket {
                id: socket,
                device,
                tx,
                close: Some(close_tx),
            });
        Registration {
            membership: Membership {
                hub: self.clone(),
                user,
                socket,
            },
            events,
            close,
        }
    }

    /// Number of sockets this node holds for `user`.
    pub fn sockets_of(&self, user: Id) -> usize {
        self.shard(user).get(&user).map_or(0, Vec::len)
    }

    /// The devices with at least one socket on this node, each once.
    pub fn devices(&self) -> Vec<Id> {
        let mut devices = Vec::new();
        for shard in &self.shards {
            let shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            devices.extend(shard.values().flatten().map(|s| s.device));
        }
        devices.sort_unstable();
        devices.dedup();
        devices
    }

    /// Tells every socket on this node to close (graceful shutdown). A socket that registers
    /// afterwards checks the shutdown token itself.
    pub fn close_all(&self, reason: CloseReason) {
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            for s in shard.values_mut().flatten() {
                if let Some(close) = s.close.take() {
                    let _ = close.send(reason);
                }
            }
        }
    }

    /// Asks every socket on this node to resync from the store. A socket whose queue is full
    /// is skipped: it is behind anyway and will be cut off or catch up.
    pub fn resync_all(&self) {
        for shard in &self.shards {
            let shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            for s in shard.values().flatten() {
                let _ = s.tx.try_send(Outbound::Resync);
            }
        }
    }

    /// Hands an event from the sync queue to the local sockets it concerns.
    pub fn deliver(&self, event: SyncEvent) {
        match event {
            // Frames are serialised once per event, and only if this node holds a socket
            // for it: a node with none (in a cluster, most nodes) does no work for it.
            SyncEvent::Message { message, positions } => {
                let frame = OnceCell::new();
                for (user, pos) in positions {
                    // A socket whose task has gone refuses the event in `try_send` (one
                    // lock per delivery, not a check and then a send).
                    self.each_socket(user, |_| {
                        Some(Outbound::Message {
                            frame: frame
                                .get_or_init(|| Arc::new(MessageFrame::new(&message)))
                                .clone(),
                            pos,
                        })
                    });
                }
            }
            SyncEvent::GroupMessage {
                message,
                recipients,
            } => {
                let Some(group) = group_of(&message.conversation) else {
                    return;
                };
                let event = OnceCell::new();
                for user in recipients.iter().copied() {
                    self.each_socket(user, |_| {
                        let event = event.get_or_init(|| {
                            Arc::new(GroupEvent {
                                frame: MessageFrame::new(&message),
                                group,
                                seq: message.seq,
                            })
                        });
                        Some(Outbound::Group(event.clone()))
                    });
                }
            }
            SyncEvent::Ephemeral {
                to,
                except_device,
                frame,
            } => {
                let text = OnceCell::new();
                for user in to {
                    self.each_socket(user, |s| {
                        (Some(s.device) != except_device).then(|| {
                            let text = text.get_or_init(|| Utf8Bytes::from(frame.to_json()));
                            Outbound::Frame(Box::new(text.clone()))
                        })
                    });
                }
            }
            SyncEvent::DeviceRevoked { user, device } => {
                let mut shard = self.shard(user);
                for s in shard.get_mut(&user).into_iter().flatten() {
                    if s.device == device
                        && let Some(close) = s.close.take()
                    {
                        let _ = close.send(CloseReason::Revoked);
                    }
                }
            }
        }
    }

    /// Queues `make(socket)` on each socket of `user`; a socket whose queue is full is told to
    /// close (it will catch up by cursor on reconnect) instead of growing memory.
    fn each_socket(&self, user: Id, make: impl Fn(&Socket) -> Option<Outbound>) {
        let mut shard = self.shard(user);
        for s in shard.get_mut(&user).into_iter().flatten() {
            let Some(out) = make(s) else { continue };
            if let Err(SendError::Full) = s.tx.try_send(out)
                && let Some(close) = s.close.take()
            {
                (self.on_slow)();
                let _ = close.send(CloseReason::TooSlow);
            }
        }
    }
}

impl LocalSockets for Hub {
    fn deliver(&self, event: SyncEvent) {
        Hub::deliver(self, event);
    }

    fn holds(&self, user: Id) -> bool {
        self.sockets_of(user) > 0
    }
}

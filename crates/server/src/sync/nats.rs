//! The message sync queue of a cluster, on NATS.
//!
//! Every node subscribes to all of its cluster's events and hands each one to its gateway; the
//! hub drops events for users it holds no socket of. Two paths, by what losing an event costs:
//!
//! - **Core NATS** for `Message` and `Ephemeral` events, on the subject
//!   `confab.<cluster>.events`. At-most-once and fast: the store is the source of truth and
//!   the gateway fills stream gaps from it, so a lost message only delays its delivery, and
//!   presence, receipts and typing are current state or best effort anyway. One subject for
//!   the whole cluster keeps a publisher's events in publish order (NATS orders per
//!   connection and subject), which gives the per-user, per-publisher order of the trait.
//! - **JetStream** for `DeviceRevoked`, on the subject `confab.<cluster>.control`, because a
//!   revoked device's sockets must close even if a node was briefly cut off from NATS when
//!   the revocation happened. The stream `CONFAB_<cluster>_CONTROL` has file storage,
//!   limits retention, `max_age` 1 h, at most 100,000 messages (oldest discarded) and one
//!   replica (raise it on a NATS cluster). A publish waits for the stream's PublishAck: that
//!   is the durable publish. Each node reads the stream with an ordered consumer (ephemeral,
//!   no acks, in memory) created at `DeliverPolicy::New` when it subscribes. Across a
//!   disconnect the consumer resumes after the last stream sequence it saw (async-nats
//!   recreates it if the server dropped it), so nothing published within the last hour is
//!   missed. A consumer that never received anything restarts from the stream's start
//!   instead, which replays up to an hour of revocations: harmless, because closing a
//!   revoked device's sockets is idempotent (a revoked token cannot open new ones).
//!
//! There is no order between the two paths: a revocation may overtake or trail a message
//! for the same user, which does not matter (the socket closes either way).
//!
//! `<cluster>` is the configured cluster name made NATS-safe: characters other than
//! `A-Z a-z 0-9 _ -` become `_`, and a name that had to change (or is longer than 64
//! characters, or empty) gets a hash of the original appended, so distinct names stay
//! distinct. The stream is created with these settings if it does not exist; an existing
//! stream is used as it is.
//!
//! While the client is not connected, `publish` fails at once with `Unavailable` instead of
//! letting async-nats buffer (a publish that still stalls is abandoned after 2 s); the client
//! reconnects forever, pings the server every 10 s (so a silently dead connection is noticed
//! in about 30 s), and its subscriptions survive reconnects. `check` is a 2 s round trip.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use async_nats::{Client, ConnectOptions, Subject};
use async_trait::async_trait;
use confab_protocol::{Id, Message, ServerFrame};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{EventHandler, SyncError, SyncEvent, SyncQueue};

/// How long `check`, a publish and connecting may take before the queue counts as unavailable.
const TIMEOUT: Duration = Duration::from_secs(2);
/// How long the control stream keeps a revocation: far longer than a NATS disconnect a node
/// can ride out without being restarted.
const CONTROL_MAX_AGE: Duration = Duration::from_secs(60 * 60);
/// A bound on the control stream, in case revocations come in a flood.
const CONTROL_MAX_MESSAGES: i64 = 100_000;
/// Longest cluster token before it is shortened and hashed.
const MAX_TOKEN: usize = 64;

/// The subjects and stream one cluster uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    /// Core NATS subject of `Message` and `Ephemeral` events.
    pub events: String,
    /// JetStream subject of `DeviceRevoked` events.
    pub control: String,
    /// The JetStream stream holding `control`.
    pub stream: String,
}

impl Names {
    /// The names for a cluster called `cluster` (any string).
    pub fn new(cluster: &str) -> Names {
        let token = nats_token(cluster);
        Names {
            events: format!("confab.{token}.events"),
            control: format!("confab.{token}.control"),
            stream: format!("CONFAB_{token}_CONTROL"),
        }
    }
}

/// `cluster` as one NATS subject token that is also a valid stream-name part.
fn nats_token(cluster: &str) -> String {
    let safe: String = cluster
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if safe == cluster && !safe.is_empty() && safe.len() <= MAX_TOKEN {
        return safe;
    }
    let short: String = safe.chars().take(MAX_TOKEN - 9).collect();
    // The low 32 bits of the hash: eight hex digits.
    format!("{short}_{:08x}", fnv1a(cluster.as_bytes()) & 0xffff_ffff)
}

/// FNV-1a: a hash that is stable across builds and platforms (unlike `DefaultHasher`), since
/// every node must derive the same names.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A `SyncEvent` on the wire, borrowed for serialising.
#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum WireOut<'a> {
    Message {
        message: &'a Message,
        positions: &'a [(Id, u64); 2],
    },
    GroupMessage {
        message: &'a Message,
        recipients: &'a [Id],
    },
    DeviceRevoked {
        user: Id,
        device: Id,
    },
    Ephemeral {
        to: &'a [Id],
        except_device: Option<Id>,
        frame: &'a ServerFrame,
    },
}

/// A `SyncEvent` on the wire, owned for deserialising.
#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum WireIn {
    Message {
        message: Message,
        positions: [(Id, u64); 2],
    },
    GroupMessage {
        message: Message,
        recipients: Vec<Id>,
    },
    DeviceRevoked {
        user: Id,
        device: Id,
    },
    Ephemeral {
        to: Vec<Id>,
        #[serde(default)]
        except_device: Option<Id>,
        frame: ServerFrame,
    },
}

fn encode(event: &SyncEvent) -> Vec<u8> {
    let wire = match event {
        SyncEvent::Message { message, positions } => WireOut::Message { message, positions },
        SyncEvent::GroupMessage {
            message,
            recipients,
        } => WireOut::GroupMessage {
            message,
            recipients,
        },
        SyncEvent::DeviceRevoked { user, device } => WireOut::DeviceRevoked {
            user: *user,
            device: *device,
        },
        SyncEvent::Ephemeral {
            to,
            except_device,
            frame,
        } => WireOut::Ephemeral {
            to,
            except_device: *except_device,
            frame,
        },
    };
    // Cannot fail: every map key is a string.
    serde_json::to_vec(&wire).unwrap_or_default()
}

fn decode(payload: &[u8]) -> Result<SyncEvent, serde_json::Error> {
    Ok(match serde_json::from_slice(payload)? {
        WireIn::Message { message, positions } => SyncEvent::Message {
            message: Arc::new(message),
            positions,
        },
        WireIn::GroupMessage {
            message,
            recipients,
        } => SyncEvent::GroupMessage {
            message: Arc::new(message),
            recipients: recipients.into(),
        },
        WireIn::DeviceRevoked { user, device } => SyncEvent::DeviceRevoked { user, device },
        WireIn::Ephemeral {
            to,
            except_device,
            frame,
        } => SyncEvent::Ephemeral {
            to,
            except_device,
            frame: Arc::new(frame),
        },
    })
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> SyncError {
    SyncError::Unavailable(format!("{what}: {e}"))
}

/// The sync queue of a cluster on NATS (core NATS plus one JetStream stream).
pub struct NatsQueue {
    client: Client,
    jetstream: jetstream::Context,
    names: Names,
    events: Subject,
    control: Subject,
    /// The handler the subscription tasks call; swapped if `subscribe` is called again.
    handler: Arc<RwLock<Option<EventHandler>>>,
    /// Stops the subscription tasks when the queue is dropped.
    stop: CancellationToken,
    _stop_on_drop: DropGuard,
}

impl NatsQueue {
    /// Connects to NATS at `url` for the cluster called `cluster`, and creates the cluster's
    /// control stream if it does not exist. Fails if NATS cannot be reached now.
    pub async fn connect(url: &str, cluster: &str) -> Result<NatsQueue, SyncError> {
        let names = Names::new(cluster);
        let options = ConnectOptions::new()
            .name(format!("confab {cluster}"))
            .connection_timeout(TIMEOUT)
            // Reconnect forever: a node outlives a NATS restart.
            .max_reconnects(None)
            // Notice a dead connection (no RST, e.g. a vanished host) within ~30 s, not minutes.
            .ping_interval(Duration::from_secs(10))
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Connected => tracing::info!("nats connected"),
                    async_nats::Event::Disconnected => tracing::warn!("nats disconnected"),
                    // Only this process ends the connection (it reconnects forever otherwise):
                    // a clean shutdown or the end of `confab admin seed`, nothing to warn of.
                    async_nats::Event::Draining | async_nats::Event::Closed => {
                        tracing::info!(event = %event, "nats connection ending")
                    }
                    other => tracing::warn!(event = %other, "nats event"),
                }
            });
        let client = tokio::time::timeout(TIMEOUT * 2, options.connect(url))
            .await
            .map_err(|_| unavailable("connecting to nats", "timed out"))?
            .map_err(|e| unavailable("connecting to nats", e))?;
        let jetstream = jetstream::new(client.clone());
        let config = stream::Config {
            name: names.stream.clone(),
            description: Some(format!("confab cluster {cluster:?}: device revocations")),
            subjects: vec![names.control.clone()],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::Old,
            max_age: CONTROL_MAX_AGE,
            max_messages: CONTROL_MAX_MESSAGES,
            num_replicas: 1,
            ..Default::default()
        };
        tokio::time::timeout(TIMEOUT * 2, jetstream.get_or_create_stream(config))
            .await
            .map_err(|_| unavailable("creating the control stream", "timed out"))?
            .map_err(|e| unavailable("creating the control stream", e))?;
        let stop = CancellationToken::new();
        Ok(NatsQueue {
            events: Subject::from(names.events.as_str()),
            control: Subject::from(names.control.as_str()),
            client,
            jetstream,
            names,
            handler: Arc::new(RwLock::new(None)),
            _stop_on_drop: stop.clone().drop_guard(),
            stop,
        })
    }

    /// The subjects and stream this queue uses.
    pub fn names(&self) -> &Names {
        &self.names
    }

    fn connected(&self) -> Result<(), SyncError> {
        match self.client.connection_state() {
            async_nats::connection::State::Connected => Ok(()),
            state => Err(SyncError::Unavailable(format!("nats is {state}"))),
        }
    }

    /// Reads the control stream from now on, in a task, until the queue is dropped.
    async fn consume_control(&self) -> Result<(), SyncError> {
        let source = self.control_source();
        let messages = source.control_messages().await?;
        let (handler, stop) = (self.handler.clone(), self.stop.clone());
        tokio::spawn(async move {
            let mut next_messages = Some(messages);
            loop {
                let mut messages = match next_messages.take() {
                    Some(m) => m,
                    // The ordered consumer gave up (it normally recreates itself after a
                    // disconnect): make a new one, retrying until NATS answers.
                    None => {
                        tokio::select! {
                            () = stop.cancelled() => return,
                            () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                        match source.control_messages().await {
                            Ok(m) => m,
                            Err(e) => {
                                tracing::warn!(error = %e, "cannot read the control stream; retrying");
                                continue;
                            }
                        }
                    }
                };
                loop {
                    let next = tokio::select! {
                        () = stop.cancelled() => return,
                        next = messages.next() => next,
                    };
                    match next {
                        Some(Ok(message)) => deliver(&handler, &message.payload),
                        Some(Err(e)) if e.kind() == consumer::pull::OrderedErrorKind::Recreate => {
                            tracing::warn!(error = %e, "control stream consumer lost; recreating it");
                            break;
                        }
                        Some(Err(e)) => tracing::warn!(error = %e, "control stream consumer error"),
                        None => break,
                    }
                }
            }
        });
        Ok(())
    }

    /// What the control task needs to (re)create its consumer.
    fn control_source(&self) -> ControlSource {
        ControlSource {
            jetstream: self.jetstream.clone(),
            names: self.names.clone(),
        }
    }
}

/// The part of the queue the control task keeps (not the queue itself, whose drop stops it).
struct ControlSource {
    jetstream: jetstream::Context,
    names: Names,
}

impl ControlSource {
    async fn control_messages(&self) -> Result<consumer::pull::Ordered, SyncError> {
        let create = async {
            let stream = self
                .jetstream
                .get_stream(&self.names.stream)
                .await
                .map_err(|e| unavailable("opening the control stream", e))?;
            let consumer = stream
                .create_consumer(consumer::pull::OrderedConfig {
                    filter_subject: self.names.control.clone(),
                    deliver_policy: consumer::DeliverPolicy::New,
                    ..Default::default()
                })
                .await
                .map_err(|e| unavailable("creating the control consumer", e))?;
            consumer
                .messages()
                .await
                .map_err(|e| unavailable("reading the control stream", e))
        };
        tokio::time::timeout(TIMEOUT * 2, create)
            .await
            .map_err(|_| unavailable("reading the control stream", "timed out"))?
    }
}

/// Decodes one event and hands it to the handler, if one is set.
fn deliver(handler: &RwLock<Option<EventHandler>>, payload: &[u8]) {
    let event = match decode(payload) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(error = %e, "undecodable sync event dropped");
            return;
        }
    };
    let handler = handler.read().unwrap_or_else(|e| e.into_inner()).clone();
    if let Some(handler) = handler {
        handler(event);
    }
}

#[async_trait]
impl SyncQueue for NatsQueue {
    async fn subscribe(&self, handler: EventHandler) -> Result<(), SyncError> {
        let first = {
            let mut slot = self.handler.write().unwrap_or_else(|e| e.into_inner());
            let first = slot.is_none();
            *slot = Some(handler);
            first
        };
        if !first {
            return Ok(());
        }
        self.consume_control().await?;
        let mut events = self
            .client
            .subscribe(self.events.clone())
            .await
            .map_err(|e| unavailable("subscribing", e))?;
        let (handler, stop) = (self.handler.clone(), self.stop.clone());
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    () = stop.cancelled() => return,
                    m = events.next() => m,
                };
                match message {
                    Some(m) => deliver(&handler, &m.payload),
                    None => return,
                }
            }
        });
        // The server has our subscription once it answers a ping sent after it.
        self.check().await
    }

    async fn publish(&self, event: SyncEvent) -> Result<(), SyncError> {
        self.connected()?;
        let payload = encode(&event);
        if let SyncEvent::DeviceRevoked { .. } = event {
            let durable = async {
                let ack = self
                    .jetstream
                    .publish(self.control.clone(), payload.into())
                    .await
                    .map_err(|e| unavailable("publishing a revocation", e))?;
                ack.await
                    .map_err(|e| unavailable("storing a revocation", e))
                    .map(drop)
            };
            return tokio::time::timeout(TIMEOUT, durable)
                .await
                .map_err(|_| unavailable("publishing a revocation", "timed out"))?;
        }
        // Bounded: the client's outgoing channel is full only while the connection is
        // stalled, and then the event is better dropped than waited for.
        tokio::time::timeout(
            TIMEOUT,
            self.client.publish(self.events.clone(), payload.into()),
        )
        .await
        .map_err(|_| unavailable("publishing", "timed out"))?
        .map_err(|e| unavailable("publishing", e))
    }

    fn available(&self) -> bool {
        self.connected().is_ok()
    }

    async fn check(&self) -> Result<(), SyncError> {
        self.connected()?;
        tokio::time::timeout(TIMEOUT, self.client.flush())
            .await
            .map_err(|_| unavailable("nats round trip", "timed out"))?
            .map_err(|e| unavailable("nats round trip", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use confab_protocol::{PresenceStatus, ReceiptKind};

    #[test]
    fn names_are_nats_safe_and_distinct() {
        assert_eq!(
            Names::new("confab"),
            Names {
                events: "confab.confab.events".into(),
                control: "confab.confab.control".into(),
                stream: "CONFAB_confab_CONTROL".into(),
            }
        );
        let dotted = nats_token("a.b");
        let underscored = nats_token("a_b");
        assert_ne!(dotted, underscored);
        assert!(dotted.starts_with("a_b_"));
        for name in ["", "a b", "x*>y", "ü", &"long".repeat(40)] {
            let t = nats_token(name);
            assert!(!t.is_empty() && t.len() <= MAX_TOKEN, "{t}");
            assert!(
                t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
                "{t}"
            );
        }
    }

    #[test]
    fn events_round_trip() {
        let message = Message {
            // The largest id the protocol reads back (the server makes none larger).
            id: Id(confab_protocol::MAX_NUMBER),
            conversation: "1-2".into(),
            seq: 7,
            from: Id(1),
            to: Some(Id(2)),
            body: "hé \"there\"".into(),
            system: None,
            ts: 1_700_000_000_000,
        };
        let events = [
            SyncEvent::Message {
                message: Arc::new(message),
                positions: [(Id(1), 10), (Id(2), u64::MAX)],
            },
            SyncEvent::DeviceRevoked {
                user: Id(3),
                device: Id(4),
            },
            SyncEvent::Ephemeral {
                to: vec![Id(5), Id(6)],
                except_device: Some(Id(7)),
                frame: Arc::new(ServerFrame::Receipt {
                    conversation: "1-2".into(),
                    user_id: Id(1),
                    kind: ReceiptKind::Read,
                    seq: 3,
                }),
            },
            SyncEvent::Ephemeral {
                to: vec![],
                except_device: None,
                frame: Arc::new(ServerFrame::Presence {
                    user_id: Id(1),
                    status: PresenceStatus::Online,
                    last_seen: 5,
                }),
            },
        ];
        for event in events {
            let back = decode(&encode(&event)).unwrap();
            assert_eq!(format!("{back:?}"), format!("{event:?}"));
        }
    }
}

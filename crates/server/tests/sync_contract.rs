//! The contract every `SyncQueue` keeps: one named test per case and backend,
//! `memory::<case>` (`MemoryQueue`) always and `nats::<case>` (`NatsQueue`) when
//! `CONFAB_TEST_NATS` names a NATS server with JetStream (e.g. `nats://127.0.0.1:4222`); without
//! it the NATS tests say they are skipped and pass. Every test uses a fresh cluster name, so
//! runs never see each other's events.

use std::sync::Arc;
use std::time::Duration;

use confab_protocol::{
    Id, MAX_NUMBER, Message, PresenceStatus, ReceiptKind, Role, ServerFrame, SystemEvent,
    SystemKind,
};
use confab_server::sync::memory::MemoryQueue;
use confab_server::sync::nats::NatsQueue;
use confab_server::sync::{SyncError, SyncEvent, SyncQueue};
use confab_testkit::{engines, names};
use tokio::sync::mpsc;

/// How long a test waits for an event it expects.
const WAIT: Duration = Duration::from_secs(5);

fn fresh_cluster() -> String {
    names::fresh("test-")
}

/// One node's view of the queue: the queue and what its handler received.
struct Node {
    queue: Arc<dyn SyncQueue>,
    events: mpsc::UnboundedReceiver<SyncEvent>,
}

impl Node {
    async fn subscribed(queue: Arc<dyn SyncQueue>) -> Node {
        let (tx, events) = mpsc::unbounded_channel();
        queue
            .subscribe(Arc::new(move |e| {
                let _ = tx.send(e);
            }))
            .await
            .expect("subscribe");
        Node { queue, events }
    }

    async fn next(&mut self) -> SyncEvent {
        tokio::time::timeout(WAIT, self.events.recv())
            .await
            .expect("an event within the wait")
            .expect("the handler is alive")
    }

    /// Receives `n` events, in arrival order.
    async fn take(&mut self, n: usize) -> Vec<SyncEvent> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.next().await);
        }
        out
    }

    async fn nothing_more(&mut self) {
        let extra = tokio::time::timeout(Duration::from_millis(200), self.events.recv()).await;
        assert!(extra.is_err(), "unexpected event: {extra:?}");
    }
}

/// A backend under test, able to make several nodes of one cluster.
enum Backend {
    Memory,
    Nats { url: String, cluster: String },
}

impl Backend {
    /// The in-process queue, always there.
    fn memory() -> Option<Backend> {
        Some(Backend::Memory)
    }

    /// NATS with a fresh cluster, or `None` (after saying so) when it is not configured.
    fn nats() -> Option<Backend> {
        engines::nats().map(|url| Backend::Nats {
            url,
            cluster: fresh_cluster(),
        })
    }

    /// The server and cluster of a NATS-only case.
    fn nats_parts(&self) -> (&str, &str) {
        match self {
            Backend::Nats { url, cluster } => (url, cluster),
            Backend::Memory => panic!("a NATS-only case given the memory backend"),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Backend::Memory => "memory",
            Backend::Nats { .. } => "nats",
        }
    }

    async fn queue(&self) -> Arc<dyn SyncQueue> {
        match self {
            Backend::Memory => Arc::new(MemoryQueue::new()),
            Backend::Nats { url, cluster } => Arc::new(
                NatsQueue::connect(url, cluster)
                    .await
                    .expect("nats connects"),
            ),
        }
    }

    async fn node(&self) -> Node {
        Node::subscribed(self.queue().await).await
    }

    /// Deletes what the backend keeps for the cluster (best effort).
    async fn clean_up(&self) {
        if let Backend::Nats { url, cluster } = self {
            let stream = confab_server::sync::nats::Names::new(cluster).stream;
            if let Ok(client) = async_nats::connect(url).await {
                let _ = async_nats::jetstream::new(client)
                    .delete_stream(&stream)
                    .await;
            }
        }
    }
}

fn message(seq: u64) -> SyncEvent {
    SyncEvent::Message {
        message: Arc::new(Message {
            id: Id(MAX_NUMBER - seq),
            conversation: "11-22".into(),
            seq,
            from: Id(11),
            to: Some(Id(22)),
            body: format!("body {seq} \"quoted\" é ✓"),
            system: None,
            ts: 1_700_000_000_000 + seq as i64,
        }),
        positions: [(Id(11), seq), (Id(22), u64::MAX - 1)],
    }
}

fn every_variant() -> Vec<SyncEvent> {
    vec![
        message(1),
        // A group's `system` message, with its recipients.
        SyncEvent::GroupMessage {
            message: Arc::new(Message {
                id: Id(MAX_NUMBER - 100),
                conversation: "g77".into(),
                seq: 3,
                from: Id(11),
                to: None,
                body: String::new(),
                system: Some(SystemEvent {
                    role: Some(Role::Admin),
                    ..SystemEvent::about(SystemKind::RoleChanged, Id(22))
                }),
                ts: 1_700_000_000_000,
            }),
            recipients: Arc::from([Id(11), Id(22), Id(MAX_NUMBER)]),
        },
        SyncEvent::DeviceRevoked {
            user: Id(11),
            device: Id(MAX_NUMBER),
        },
        SyncEvent::Ephemeral {
            to: vec![Id(22), Id(33)],
            except_device: Some(Id(44)),
            frame: Arc::new(ServerFrame::Receipt {
                conversation: "11-22".into(),
                user_id: Id(22),
                kind: ReceiptKind::Delivered,
                seq: 9,
            }),
        },
        SyncEvent::Ephemeral {
            to: vec![Id(22)],
            except_device: None,
            frame: Arc::new(ServerFrame::Presence {
                user_id: Id(11),
                status: PresenceStatus::Offline,
                last_seen: 1_700_000_000_123,
            }),
        },
        SyncEvent::Ephemeral {
            to: vec![Id(22)],
            except_device: None,
            frame: Arc::new(ServerFrame::Typing {
                from: Id(11),
                conversation: "11-22".into(),
            }),
        },
    ]
}

/// `SyncEvent` has no `PartialEq`; its `Debug` shows every field.
fn sorted_debug(events: &[SyncEvent]) -> Vec<String> {
    let mut all: Vec<String> = events.iter().map(|e| format!("{e:?}")).collect();
    all.sort();
    all
}

// One test per (case, backend): `confab_testkit::contract!`.
confab_testkit::contract! {
    every backend: [
        every_variant_arrives_with_all_its_fields,
        one_publishers_events_for_a_user_arrive_in_publish_order,
    ],
    memory only: [],
    nats only: [
        every_node_receives_what_one_publishes,
        an_unreachable_server_fails_fast,
        a_node_cut_off_fails_fast_and_still_gets_revocations_after_it_reconnects,
    ],
}

// ---------------------------------------------------------------------------------------------
// The contract

async fn every_variant_arrives_with_all_its_fields(backend: &Backend) {
    let mut node = backend.node().await;
    let sent = every_variant();
    for event in &sent {
        node.queue.publish(event.clone()).await.expect("publish");
    }
    // Revocations travel another path than the rest, so compare without order.
    let got = node.take(sent.len()).await;
    assert_eq!(
        sorted_debug(&got),
        sorted_debug(&sent),
        "{}",
        backend.name()
    );
    node.nothing_more().await;
    node.queue.check().await.expect("check");
}

async fn one_publishers_events_for_a_user_arrive_in_publish_order(backend: &Backend) {
    let mut node = backend.node().await;
    for seq in 1..=1000 {
        node.queue.publish(message(seq)).await.expect("publish");
    }
    let got = node.take(1000).await;
    let order: Vec<u64> = got
        .iter()
        .map(|e| match e {
            SyncEvent::Message { message, .. } => message.seq,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(order, (1..=1000).collect::<Vec<_>>(), "{}", backend.name());
}

async fn every_node_receives_what_one_publishes(backend: &Backend) {
    let (url, _) = backend.nats_parts();
    let mut a = backend.node().await;
    let mut b = backend.node().await;
    // Another cluster on the same server hears nothing of it.
    let other = Backend::Nats {
        url: url.to_owned(),
        cluster: fresh_cluster(),
    };
    let mut stranger = other.node().await;
    let sent = every_variant();
    for event in &sent {
        a.queue.publish(event.clone()).await.expect("publish");
    }
    for node in [&mut a, &mut b] {
        let got = node.take(sent.len()).await;
        assert_eq!(sorted_debug(&got), sorted_debug(&sent));
        node.nothing_more().await;
    }
    stranger.nothing_more().await;
    other.clean_up().await;
}

async fn an_unreachable_server_fails_fast(_: &Backend) {
    // Nothing listens on port 1: either connecting fails or publishing does, quickly.
    let attempt = async {
        let queue = NatsQueue::connect("nats://127.0.0.1:1", &fresh_cluster()).await?;
        queue.publish(message(1)).await?;
        queue.check().await
    };
    let result = tokio::time::timeout(Duration::from_secs(8), attempt)
        .await
        .expect("gives up within 8 s");
    assert!(
        matches!(result, Err(SyncError::Unavailable(_))),
        "{result:?}"
    );
}

/// A TCP proxy to the NATS server that can cut a node off and let it back.
mod proxy {
    use std::net::SocketAddr;

    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::watch;

    pub struct Proxy {
        pub addr: SocketAddr,
        cut: watch::Sender<bool>,
    }

    impl Proxy {
        pub async fn start(target: SocketAddr) -> Proxy {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (cut, cut_rx) = watch::channel(false);
            tokio::spawn(async move {
                loop {
                    let Ok((mut inbound, _)) = listener.accept().await else {
                        return;
                    };
                    let mut cut_rx = cut_rx.clone();
                    if *cut_rx.borrow() {
                        continue; // dropped: the client sees the connection close
                    }
                    tokio::spawn(async move {
                        let Ok(mut outbound) = TcpStream::connect(target).await else {
                            return;
                        };
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                            _ = cut_rx.wait_for(|cut| *cut) => {}
                        }
                    });
                }
            });
            Proxy { addr, cut }
        }

        pub fn set_cut(&self, cut: bool) {
            self.cut.send_replace(cut);
        }
    }
}

async fn a_node_cut_off_fails_fast_and_still_gets_revocations_after_it_reconnects(
    backend: &Backend,
) {
    let (url, cluster) = backend.nats_parts();
    let target = tokio::net::lookup_host(url.trim_start_matches("nats://"))
        .await
        .expect("resolve the nats address")
        .next()
        .expect("an address");
    let proxy = proxy::Proxy::start(target).await;
    let mut a = Node::subscribed(Arc::new(NatsQueue::connect(url, cluster).await.unwrap())).await;
    let mut b = Node::subscribed(Arc::new(
        NatsQueue::connect(&format!("nats://{}", proxy.addr), cluster)
            .await
            .unwrap(),
    ))
    .await;

    proxy.set_cut(true);
    // While cut off, b's publishes and checks fail at once instead of buffering.
    let failed = tokio::time::timeout(WAIT, async {
        loop {
            match b.queue.publish(message(1)).await {
                Err(SyncError::Unavailable(_)) => break,
                Ok(()) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    })
    .await;
    assert!(failed.is_ok(), "publish kept succeeding while cut off");
    let started = std::time::Instant::now();
    assert!(b.queue.publish(message(2)).await.is_err());
    assert!(b.queue.check().await.is_err());
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "did not fail fast"
    );

    let revoked = SyncEvent::DeviceRevoked {
        user: Id(5),
        device: Id(6),
    };
    a.queue
        .publish(revoked.clone())
        .await
        .expect("durable publish");
    assert_eq!(format!("{:?}", a.next().await), format!("{revoked:?}"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.set_cut(false);

    // Back on line, b gets the revocation it missed, and live events flow again.
    assert_eq!(format!("{:?}", b.next().await), format!("{revoked:?}"));
    let back = tokio::time::timeout(Duration::from_secs(8), async {
        while b.queue.check().await.is_err() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(back.is_ok(), "b did not reconnect");
    a.queue.publish(message(3)).await.expect("publish");
    for node in [&mut a, &mut b] {
        match node.next().await {
            SyncEvent::Message { message, .. } => assert_eq!(message.seq, 3),
            other => panic!("unexpected {other:?}"),
        }
    }
}

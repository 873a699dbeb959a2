//! The flows against an embedded store, in-memory presence and a recording sync queue: what
//! each flow stores and what it publishes, without a socket.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use confab_protocol::{ErrorCode, Id, PresenceStatus, ReceiptKind, ServerFrame};

use super::*;
use crate::presence::memory::MemoryPresence;
use crate::store::sqlite::SqliteStore;
use crate::store::{DeviceSession, NewDevice};
use crate::sync::{EventHandler, SyncError};

/// A sync queue that records what is published, and can be taken down.
#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<SyncEvent>>,
    down: AtomicBool,
}

impl Recorder {
    fn take(&self) -> Vec<SyncEvent> {
        std::mem::take(&mut *self.events.lock().unwrap())
    }
}

#[async_trait]
impl SyncQueue for Recorder {
    async fn subscribe(&self, _: EventHandler) -> Result<(), SyncError> {
        Ok(())
    }
    async fn publish(&self, event: SyncEvent) -> Result<(), SyncError> {
        self.events.lock().unwrap().push(event);
        Ok(())
    }
    async fn check(&self) -> Result<(), SyncError> {
        Ok(())
    }
    fn available(&self) -> bool {
        !self.down.load(Ordering::SeqCst)
    }
}

/// This node's sockets: which users have one, and what was delivered to them directly.
#[derive(Default)]
struct Sockets {
    held: Mutex<HashSet<Id>>,
    delivered: Mutex<Vec<SyncEvent>>,
}

impl LocalSockets for Sockets {
    fn deliver(&self, event: SyncEvent) {
        self.delivered.lock().unwrap().push(event);
    }
    fn holds(&self, user: Id) -> bool {
        self.held.lock().unwrap().contains(&user)
    }
}

struct Fixture {
    chat: Chat,
    store: Arc<dyn MessageStore>,
    sync: Arc<Recorder>,
    sockets: Arc<Sockets>,
    ids: Arc<IdSource>,
    a: Id,
    b: Id,
    _dir: tempfile::TempDir,
}

/// Two users, `a` and `b`, with no contact yet.
async fn fixture(sync_is_node_local: bool) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let store: Arc<dyn MessageStore> = Arc::new(
        SqliteStore::open(
            dir.path(),
            crate::config::SqliteConfig::default(),
            crate::store::sqlite::SqliteMetrics::default(),
        )
        .unwrap(),
    );
    let sync = Arc::new(Recorder::default());
    let sockets = Arc::new(Sockets::default());
    let ids = Arc::new(IdSource::fixed(1));
    let (a, b) = (ids.next_id().unwrap(), ids.next_id().unwrap());
    store.create_user(a, "alice", "hash", 1).await.unwrap();
    store.create_user(b, "bob", "hash", 1).await.unwrap();
    let chat = Chat::new(
        store.clone(),
        sync.clone(),
        Arc::new(MemoryPresence::new()),
        ids.clone(),
        sockets.clone(),
        metrics,
        Arc::new(tokio::sync::Notify::new()),
        sync_is_node_local,
    );
    Fixture {
        chat,
        store,
        sync,
        sockets,
        ids,
        a,
        b,
        _dir: dir,
    }
}

impl Fixture {
    /// `a` sends `b` "hi" with `client_id`.
    async fn a_sends_b(&self, client_id: &str) -> crate::error::Result<ServerFrame> {
        let (from, to) = (self.a, self.b);
        (self.chat)
            .send_message(from, to, client_id.into(), "hi".into())
            .await
    }

    async fn befriend(&self) {
        self.store.add_contact(self.a, self.b, 1).await.unwrap();
        self.store.add_contact(self.b, self.a, 1).await.unwrap();
    }

    async fn device(&self, user: Id, token: u8) -> DeviceSession {
        let id = self.ids.next_id().unwrap();
        let device = NewDevice {
            id,
            user_id: user,
            name: None,
            token_hash: [token; 32],
            now: 1,
        };
        self.store.create_device(device).await.unwrap();
        DeviceSession {
            user_id: user,
            device_id: id,
            cursor: 0,
            last_active: 1,
        }
    }
}

/// The ephemeral frames published, with their addressees.
fn ephemeral(events: Vec<SyncEvent>) -> Vec<(Vec<Id>, Option<Id>, ServerFrame)> {
    events
        .into_iter()
        .map(|e| match e {
            SyncEvent::Ephemeral {
                to,
                except_device,
                frame,
            } => (to, except_device, (*frame).clone()),
            other => panic!("expected an ephemeral event, got {other:?}"),
        })
        .collect()
}

#[tokio::test]
async fn a_message_is_stored_then_published_once_with_both_positions() {
    let f = fixture(true).await;
    let sent = f.a_sends_b("c1").await.unwrap();
    let ServerFrame::Sent {
        client_id, id, seq, ..
    } = sent
    else {
        panic!("expected sent, got {sent:?}");
    };
    assert_eq!((client_id.as_str(), seq), ("c1", 1));
    let events = f.sync.take();
    assert_eq!(events.len(), 1);
    match &events[0] {
        SyncEvent::Message { message, positions } => {
            assert_eq!(message.id, id);
            assert_eq!(positions, &[(f.a, 1), (f.b, 1)]);
        }
        other => panic!("expected a message event, got {other:?}"),
    }
    let stored = f.store.stream_after(f.b, 0, 10).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].message.body, "hi");

    // The same client_id again: the first message's answer, nothing new published.
    let again = f
        .chat
        .send_message(f.a, f.b, "c1".into(), "hi again".into())
        .await
        .unwrap();
    assert!(matches!(again, ServerFrame::Sent { id: again_id, seq: 1, .. } if again_id == id));
    assert!(f.sync.take().is_empty());
    assert_eq!(f.store.stream_after(f.b, 0, 10).await.unwrap().len(), 1);
}

#[tokio::test]
async fn no_message_is_stored_while_the_queue_is_down_or_the_lease_lost() {
    let f = fixture(false).await;
    f.sync.down.store(true, Ordering::SeqCst);
    let refused = f.a_sends_b("c1").await.unwrap_err();
    assert_eq!(refused.code(), ErrorCode::Unavailable);

    f.sync.down.store(false, Ordering::SeqCst);
    f.ids.lose_lease().await;
    let refused = f.a_sends_b("c2").await.unwrap_err();
    assert_eq!(refused.code(), ErrorCode::Unavailable);

    assert!(f.store.stream_after(f.b, 0, 10).await.unwrap().is_empty());
    assert!(f.sync.take().is_empty());
}

#[tokio::test]
async fn a_message_to_an_unknown_user_is_not_found_and_not_published() {
    let f = fixture(true).await;
    let refused = f
        .chat
        .send_message(f.a, Id(424_242), "c1".into(), "hi".into())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), ErrorCode::NotFound);
    assert!(f.sync.take().is_empty());
}

#[tokio::test]
async fn a_read_reaches_the_peer_and_the_readers_other_devices_once() {
    let f = fixture(true).await;
    f.befriend().await;
    let sent = f.a_sends_b("c1").await.unwrap();
    let ServerFrame::Sent { conversation, .. } = sent else {
        panic!("expected sent");
    };
    f.sync.take();
    let reader = f.device(f.b, 7).await;
    f.chat
        .mark_read(reader, conversation.clone(), 1)
        .await
        .unwrap();
    let published = ephemeral(f.sync.take());
    assert_eq!(published.len(), 1);
    let (to, except, frame) = &published[0];
    assert_eq!(to, &vec![f.a, f.b]);
    assert_eq!(*except, Some(reader.device_id));
    assert_eq!(
        frame,
        &ServerFrame::Receipt {
            conversation: conversation.clone(),
            user_id: f.b,
            kind: ReceiptKind::Read,
            seq: 1,
        }
    );
    // Not forward: ignored.
    f.chat.mark_read(reader, conversation, 1).await.unwrap();
    assert!(f.sync.take().is_empty());
}

#[tokio::test]
async fn an_ack_stores_the_cursor_and_tells_the_sender_it_was_delivered() {
    let f = fixture(true).await;
    f.befriend().await;
    f.a_sends_b("c1").await.unwrap();
    f.sync.take();
    let device = f.device(f.b, 8).await;
    f.chat.record_ack(device, 1).await.unwrap();
    let published = ephemeral(f.sync.take());
    assert_eq!(published.len(), 1);
    let (to, _, frame) = &published[0];
    assert_eq!(to, &vec![f.a]);
    assert!(matches!(
        frame,
        ServerFrame::Receipt { user_id, kind: ReceiptKind::Delivered, seq: 1, .. } if *user_id == f.b
    ));
    let stored = f.store.device_by_token([8; 32]).await.unwrap().unwrap();
    assert_eq!(stored.cursor, 1);
    // The same ack again moves nothing: no second receipt.
    f.chat.record_ack(device, 1).await.unwrap();
    assert!(f.sync.take().is_empty());
}

#[tokio::test]
async fn a_stranger_hears_of_no_read_and_no_delivery() {
    let f = fixture(true).await;
    let ServerFrame::Sent { conversation, .. } = f.a_sends_b("c1").await.unwrap() else {
        panic!("expected sent");
    };
    f.sync.take();
    // One way is not friends.
    f.store.add_contact(f.a, f.b, 1).await.unwrap();
    let device = f.device(f.b, 8).await;
    f.chat.record_ack(device, 1).await.unwrap();
    assert!(ephemeral(f.sync.take()).is_empty(), "no delivered receipt");
    f.chat
        .mark_read(device, conversation.clone(), 1)
        .await
        .unwrap();
    let published = ephemeral(f.sync.take());
    assert_eq!(published.len(), 1);
    assert_eq!(published[0].0, vec![f.b], "the reader's own devices only");
    assert_eq!(published[0].1, Some(device.device_id));

    // Friends now: the next advances reach a. The marks already made are in the list.
    f.store.add_contact(f.b, f.a, 2).await.unwrap();
    f.a_sends_b("c2").await.unwrap();
    f.sync.take();
    f.chat.record_ack(device, 2).await.unwrap();
    f.chat
        .mark_read(device, conversation.clone(), 2)
        .await
        .unwrap();
    let published = ephemeral(f.sync.take());
    assert_eq!(published.len(), 2, "{published:?}");
    assert_eq!(published[0].0, vec![f.a]);
    assert_eq!(published[1].0, vec![f.a, f.b]);

    // No longer friends: silent again.
    f.store.remove_contact(f.a, f.b).await.unwrap();
    f.a_sends_b("c3").await.unwrap();
    f.sync.take();
    f.chat.record_ack(device, 3).await.unwrap();
    f.chat.mark_read(device, conversation, 3).await.unwrap();
    let published = ephemeral(f.sync.take());
    assert_eq!(published.len(), 1);
    assert_eq!(published[0].0, vec![f.b]);
}

#[tokio::test]
async fn typing_reaches_a_friend_only() {
    let f = fixture(false).await;
    f.chat.relay_typing(f.a, f.b).await;
    assert!(f.sync.take().is_empty(), "strangers: nothing relayed");
    f.store.add_contact(f.a, f.b, 1).await.unwrap();
    f.chat.relay_typing(f.b, f.a).await;
    assert!(f.sync.take().is_empty(), "one way: nothing relayed");
    f.store.add_contact(f.b, f.a, 1).await.unwrap();
    f.chat.relay_typing(f.a, f.b).await;
    let published = ephemeral(f.sync.take());
    assert_eq!(published.len(), 1);
    assert_eq!(published[0].0, vec![f.b]);
    assert!(matches!(published[0].2, ServerFrame::Typing { from, .. } if from == f.a));

    f.store.set_block(f.b, f.a, true, 2).await.unwrap();
    f.chat.relay_typing(f.a, f.b).await;
    assert!(f.sync.take().is_empty(), "blocked: nothing relayed");
}

#[tokio::test]
async fn on_a_single_node_typing_to_a_peer_without_a_socket_is_not_made() {
    let f = fixture(true).await;
    f.befriend().await;
    f.chat.relay_typing(f.a, f.b).await;
    assert!(f.sync.take().is_empty());
    f.sockets.held.lock().unwrap().insert(f.b);
    f.chat.relay_typing(f.a, f.b).await;
    assert_eq!(ephemeral(f.sync.take()).len(), 1);
}

#[tokio::test]
async fn friends_hear_who_comes_online_and_goes_offline() {
    let f = fixture(true).await;
    f.befriend().await;
    // b comes online first: a is not online, and hears that b is.
    let online = f.chat.went_online(f.b, Id(2), 2, &[f.a]).await;
    assert!(online.is_empty());
    let published = ephemeral(f.sync.take());
    assert_eq!(published.len(), 1);
    assert_eq!(published[0].0, vec![f.a]);
    assert!(matches!(
        published[0].2,
        ServerFrame::Presence { user_id, status: PresenceStatus::Online, .. } if user_id == f.b
    ));
    // a comes online: told that b is online.
    let online = f.chat.went_online(f.a, Id(1), 1, &[f.b]).await;
    assert_eq!(online.len(), 1);
    assert_eq!(online[0].0, f.b);
    f.sync.take();
    // b's second socket closing is not b going offline; its last is.
    f.chat.went_online(f.b, Id(3), 3, &[f.a]).await;
    f.sync.take();
    f.chat.went_offline(f.b, 2).await;
    assert!(f.sync.take().is_empty());
    f.chat.went_offline(f.b, 3).await;
    let published = ephemeral(f.sync.take());
    assert!(published.iter().any(|(to, _, frame)| to == &vec![f.a]
        && matches!(frame, ServerFrame::Presence { user_id, status: PresenceStatus::Offline, .. } if *user_id == f.b)));
    let contacts = f.store.contacts(f.a).await.unwrap();
    assert!(contacts[0].last_seen > 0, "last_seen is stored");
}

#[tokio::test]
async fn strangers_hear_nothing_of_presence() {
    let f = fixture(true).await;
    f.chat.went_online(f.b, Id(2), 2, &[]).await;
    f.chat.became_friends(f.a, f.b).await; // not friends in the store: the caller decides
    f.chat.went_offline(f.b, 2).await;
    let presence_to_a = ephemeral(f.sync.take())
        .into_iter()
        .filter(|(to, _, _)| to.contains(&f.a))
        .filter(|(_, _, frame)| !matches!(frame, ServerFrame::Presence { user_id, .. } if *user_id == f.a))
        .count();
    // `became_friends` announces b to a (the API calls it only for friends); going offline
    // tells no one, because b has no friends.
    assert_eq!(presence_to_a, 1);
}

#[tokio::test]
async fn revoking_a_device_closes_its_sockets_here_and_on_every_node() {
    let f = fixture(false).await;
    let device = f.device(f.a, 9).await;
    f.chat.revoke_device(f.a, device.device_id).await.unwrap();
    assert!(f.store.device_by_token([9; 32]).await.unwrap().is_none());
    let here = f.sockets.delivered.lock().unwrap().clone();
    assert!(
        matches!(here.as_slice(), [SyncEvent::DeviceRevoked { user, device: d }] if *user == f.a && *d == device.device_id)
    );
    let everywhere = f.sync.take();
    assert!(matches!(
        everywhere.as_slice(),
        [SyncEvent::DeviceRevoked { .. }]
    ));
}

#[tokio::test]
async fn a_password_change_closes_every_other_device_here_and_on_every_node() {
    let f = fixture(false).await;
    let keep = f.device(f.a, 9).await;
    let other = f.device(f.a, 10).await;
    let bobs = f.device(f.b, 11).await;
    f.chat
        .change_password(f.a, "new hash", keep.device_id)
        .await
        .unwrap();
    let revoked = |events: &[SyncEvent]| -> Vec<(Id, Id)> {
        events
            .iter()
            .filter_map(|e| match e {
                SyncEvent::DeviceRevoked { user, device } => Some((*user, *device)),
                _ => None,
            })
            .collect()
    };
    let want = [(f.a, other.device_id)];
    assert_eq!(revoked(&f.sockets.delivered.lock().unwrap()), want);
    assert_eq!(revoked(&f.sync.take()), want);
    assert!(f.store.device_by_token([9; 32]).await.unwrap().is_some());
    assert!(f.store.device_by_token([10; 32]).await.unwrap().is_none());
    assert_eq!(
        f.store
            .device_by_token([11; 32])
            .await
            .unwrap()
            .map(|s| s.device_id),
        Some(bobs.device_id)
    );
}

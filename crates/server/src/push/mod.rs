//! The push server (design messaging steps 6-8): notifies the devices of a message's
//! recipients that have no socket.
//!
//! The store keeps the durable state (`store::push`: subscriptions, the outbox, the pending
//! notifications); this module moves it along: the outbox is expanded after the presence
//! check (`outbox.rs`), due notifications are sent through the provider of their
//! subscription's kind (`deliver.rs`), each outcome is recorded, and failures are retried
//! with backoff (`backoff.rs`).
//!
//! Providers, one per kind of subscription:
//! - `webpush.rs`: Web Push (RFC 8030), payload encrypted per RFC 8291, signed per RFC 8292
//!   (VAPID, `vapid.rs`); endpoints must be public addresses (`address.rs`);
//! - `gateway.rs`: the Matrix Push Gateway API v1 (e.g. Sygnal, which holds APNs/FCM keys);
//! - `apns.rs`, `fcm.rs`: APNs and FCM directly, with the operator's credentials.

pub mod apns;
pub mod fcm;
pub mod gateway;

use std::time::Duration;

use async_trait::async_trait;
use confab_protocol::PushPayload;

use crate::store::push::Due;

/// How one attempt to hand a notification to its push service went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Accepted (2xx).
    Accepted,
    /// The subscription no longer exists (Web Push 404/410, a gateway's `rejected` pushkey,
    /// APNs 410 or `BadDeviceToken`/`Unregistered`, FCM `UNREGISTERED`): delete it.
    Gone,
    /// Worth another try: a timeout, a connection failure, 429 or 5xx. `after` is the
    /// service's `Retry-After`, if it gave one.
    Retry {
        after: Option<Duration>,
        reason: String,
    },
    /// Refused for good (another 4xx, a payload the service will never take): drop it.
    Rejected { reason: String },
}

/// A notification ready to send: the claimed row and the payload built for it (its `body`
/// only with the subscription's `preview`).
pub struct Notification<'a> {
    pub due: &'a Due,
    pub payload: &'a PushPayload,
    /// How long the push service should keep it for an unreachable device: what is left of
    /// its 24 hours.
    pub ttl: Duration,
}

/// A push service of one kind.
#[async_trait]
pub trait Provider: Send + Sync {
    /// Sends one notification. Never takes longer than the configured request timeout.
    async fn deliver(&self, notification: &Notification<'_>) -> Delivery;
}

/// The `Topic` (Web Push) / collapse id (APNs, FCM) of a conversation's notifications: a
/// newer one replaces an older one still undelivered or shown. At most 32 characters of the
/// URL-safe base64 alphabet (RFC 8030 section 5.4), so a digest of the conversation id.
pub fn topic(conversation: &str) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(conversation.as_bytes());
    let mut topic = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest);
    topic.truncate(32);
    topic
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_topic_is_32_url_safe_characters_and_one_per_conversation() {
        let a = topic("123-456");
        assert_eq!(a.len(), 32);
        assert!(
            a.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_eq!(a, topic("123-456"));
        assert_ne!(a, topic("g789"));
    }
}

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

pub mod address;
pub mod apns;
pub mod backoff;
mod deliver;
pub mod fcm;
pub mod gateway;
mod outbox;
pub mod vapid;
pub mod webpush;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use confab_protocol::{
    MAX_ENDPOINT_CHARS, MAX_TOKEN_CHARS, PushKind, PushPayload, PushSubscription,
};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::config::PushConfig;
use crate::metrics::PushMetrics;
use crate::presence::PresenceService;
use crate::store::MessageStore;
use crate::store::push::Due;

pub use deliver::payload;

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

    /// Refuses a subscription this provider could never send to, with the reason (the
    /// client's 400): malformed keys, an endpoint on a private address, a gateway not
    /// configured. Called at `PUT /v1/push/subscription`.
    async fn validate(&self, _subscription: &PushSubscription) -> Result<(), String> {
        Ok(())
    }
}

/// The push server of a node. Every node of a cluster runs one over the shared store; the
/// store's leases make each intent and notification one node's at a time.
pub struct PushServer {
    store: Arc<dyn MessageStore>,
    presence: Arc<dyn PresenceService>,
    providers: HashMap<PushKind, Arc<dyn Provider>>,
    config: PushConfig,
    backoff: backoff::Backoff,
    metrics: PushMetrics,
    /// Rung when an intent was stored here (by the flows, who hold it too) or a sending slot
    /// came free.
    wake: Arc<Notify>,
    /// The VAPID public key browsers subscribe with (`GET /v1/push/vapid`).
    vapid_public_key: String,
    /// Requests to push services in flight (`PushConfig::concurrency`).
    slots: Arc<Semaphore>,
}

impl PushServer {
    /// A push server sending through `providers` (the kinds without one are refused at
    /// subscription).
    #[allow(
        clippy::too_many_arguments,
        reason = "one argument per handle the push server holds; the wiring is the only caller"
    )]
    pub fn new(
        store: Arc<dyn MessageStore>,
        presence: Arc<dyn PresenceService>,
        providers: HashMap<PushKind, Arc<dyn Provider>>,
        vapid_public_key: String,
        config: PushConfig,
        metrics: PushMetrics,
        wake: Arc<Notify>,
    ) -> Self {
        PushServer {
            store,
            presence,
            providers,
            backoff: backoff::Backoff {
                base: config.retry_base,
                max: config.max_retry_delay,
                max_age: config.max_age,
            },
            slots: Arc::new(Semaphore::new(config.concurrency.max(1))),
            config,
            metrics,
            wake,
            vapid_public_key,
        }
    }

    /// The VAPID public key (uncompressed P-256, base64url), browsers' `applicationServerKey`.
    pub fn vapid_public_key(&self) -> &str {
        &self.vapid_public_key
    }

    /// Refuses a subscription this server cannot send to, with the reason: a kind it has no
    /// provider for (no APNs credentials, say), fields out of bounds, or what the kind's
    /// provider refuses.
    pub async fn check(&self, subscription: &PushSubscription) -> Result<(), String> {
        let kind = subscription.kind();
        let provider = self.providers.get(&kind).ok_or_else(|| {
            format!(
                "this server sends no {} notifications (not configured)",
                kind.as_str()
            )
        })?;
        let fields: &[(&str, &str, usize)] = match subscription {
            PushSubscription::Webpush { endpoint, keys, .. } => &[
                ("endpoint", endpoint, MAX_ENDPOINT_CHARS),
                ("keys.p256dh", &keys.p256dh, 128),
                ("keys.auth", &keys.auth, 64),
            ],
            PushSubscription::Gateway {
                gateway,
                pushkey,
                app_id,
                ..
            } => &[
                ("gateway", gateway, 64),
                ("pushkey", pushkey, MAX_TOKEN_CHARS),
                ("app_id", app_id, 256),
            ],
            PushSubscription::Apns { token, .. } | PushSubscription::Fcm { token, .. } => {
                &[("token", token, MAX_TOKEN_CHARS)]
            }
        };
        for (name, value, max) in fields {
            if value.is_empty() || value.chars().count() > *max {
                return Err(format!("{name} must be 1 to {max} characters"));
            }
        }
        provider.validate(subscription).await
    }

    /// Runs until `shutdown`: expands the outbox and sends what is due whenever woken, and
    /// at least every `poll_interval` (for other nodes' intents and retries coming due).
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut backlog_read = tokio::time::Instant::now();
        loop {
            let busy = self.expand().await | self.deliver_due().await;
            if backlog_read.elapsed() >= self.config.poll_interval {
                self.read_backlog().await;
                backlog_read = tokio::time::Instant::now();
            }
            if busy {
                if shutdown.is_cancelled() {
                    return;
                }
                // More may be waiting past a batch; give other tasks a turn first.
                tokio::task::yield_now().await;
                continue;
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(self.config.poll_interval) => {}
            }
        }
    }

    async fn read_backlog(&self) {
        match self.store.push_backlog().await {
            Ok(b) => {
                let m = &self.metrics;
                m.backlog
                    .with_label_values(&["outbox"])
                    .set(i64::try_from(b.outbox).unwrap_or(i64::MAX));
                m.backlog
                    .with_label_values(&["pending"])
                    .set(i64::try_from(b.pending).unwrap_or(i64::MAX));
                let age_ms = if b.oldest == 0 {
                    0
                } else {
                    crate::time::now_ms().saturating_sub(b.oldest).max(0)
                };
                m.oldest_age
                    .set(Duration::from_millis(age_ms.unsigned_abs()).as_secs_f64());
            }
            Err(e) => tracing::debug!(error = %e, "push: cannot read the backlog"),
        }
    }
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

//! Delivery (design messaging steps 7-8 for an offline device): due notifications handed to
//! their push service, each outcome recorded.

use std::sync::Arc;
use std::time::Duration;

use confab_protocol::PushPayload;

use crate::store::push::{Due, DueKind, Outcome};

use super::{Delivery, Notification, PushServer};

impl PushServer {
    /// Claims as many due notifications as there are free sending slots and sends each on a
    /// task of its own. Returns whether it claimed any.
    pub(super) async fn deliver_due(self: &Arc<Self>) -> bool {
        let free = self.slots.available_permits();
        if free == 0 {
            return false;
        }
        let now = crate::time::now_ms();
        let due = match self.store.claim_due(now, self.config.lease, free).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "push: cannot read due notifications");
                return false;
            }
        };
        let any = !due.is_empty();
        for d in due {
            let Ok(permit) = self.slots.clone().acquire_owned().await else {
                return any;
            };
            let server = self.clone();
            tokio::spawn(async move {
                server.send_one(d).await;
                drop(permit);
                // A slot is free again: more may be due.
                server.wake.notify_one();
            });
        }
        any
    }

    /// Sends one notification and records how it ended.
    async fn send_one(&self, due: Due) {
        let kind = due.subscription.kind();
        let label = kind.as_str();
        let now = crate::time::now_ms();
        let age = Duration::from_millis(u64::try_from(now - due.created_at).unwrap_or(0));
        let outcome = if age >= self.config.max_age {
            self.metrics.dropped.with_label_values(&["expired"]).inc();
            Outcome::Dropped
        } else if let Some(provider) = self.providers.get(&kind) {
            let payload = payload(&due);
            let notification = Notification {
                due: &due,
                payload: &payload,
                ttl: self.config.max_age - age,
            };
            let delivery = match tokio::time::timeout(
                self.config.request_timeout + Duration::from_secs(1),
                provider.deliver(&notification),
            )
            .await
            {
                Ok(d) => d,
                Err(_) => Delivery::Retry {
                    after: None,
                    reason: "timed out".into(),
                },
            };
            self.outcome(&due, delivery, label)
        } else {
            // A subscription of a kind this node cannot send (its credentials were removed).
            self.metrics
                .dropped
                .with_label_values(&["unsupported"])
                .inc();
            Outcome::Dropped
        };
        if let Err(e) = self
            .store
            .finish(&due, outcome, crate::time::now_ms())
            .await
        {
            // The lease runs out and the notification is sent again: at least once.
            tracing::warn!(error = %e, "push: cannot record a notification's outcome");
        }
    }

    /// What a delivery means for the stored notification, counted.
    fn outcome(&self, due: &Due, delivery: Delivery, kind: &str) -> Outcome {
        let m = &self.metrics;
        let now = crate::time::now_ms();
        match delivery {
            Delivery::Accepted => {
                m.sent.with_label_values(&[kind]).inc();
                if let DueKind::Message { .. } = due.what {
                    let ms = u64::try_from(now - due.created_at).unwrap_or(0);
                    m.latency.observe(Duration::from_millis(ms).as_secs_f64());
                }
                Outcome::Sent
            }
            Delivery::Gone => {
                m.failed.with_label_values(&[kind, "gone"]).inc();
                tracing::info!(device = %due.target.device, kind, "push: subscription gone; deleted");
                Outcome::Gone
            }
            Delivery::Rejected { reason } => {
                m.failed.with_label_values(&[kind, "rejected"]).inc();
                m.dropped.with_label_values(&["rejected"]).inc();
                tracing::warn!(device = %due.target.device, kind, reason, "push: notification refused; dropped");
                Outcome::Dropped
            }
            Delivery::Retry { after, reason } => {
                m.failed.with_label_values(&[kind, "retry"]).inc();
                let attempts = due.attempts.saturating_add(1);
                match self.backoff.next(attempts, after, due.created_at, now) {
                    Some(at) => {
                        m.retried.with_label_values(&[kind]).inc();
                        tracing::debug!(device = %due.target.device, kind, reason, attempts, "push: will retry");
                        Outcome::Retry { at, attempts }
                    }
                    None => {
                        m.dropped.with_label_values(&["expired"]).inc();
                        tracing::warn!(device = %due.target.device, kind, reason, attempts, "push: retried for too long; dropped");
                        Outcome::Dropped
                    }
                }
            }
        }
    }
}

/// The payload of a notification: the message's text only if the subscription asked for
/// `preview` (PROTOCOL.md), decided here and nowhere else.
pub fn payload(due: &Due) -> PushPayload {
    match &due.what {
        DueKind::Message {
            id,
            seq,
            from,
            from_username,
            body,
            unread,
        } => PushPayload::Message {
            conversation: due.conversation.clone(),
            id: *id,
            seq: *seq,
            from: *from,
            from_username: from_username.clone(),
            unread: *unread,
            body: due.subscription.preview().then(|| body.clone()),
        },
        DueKind::Read { seq } => PushPayload::Read {
            conversation: due.conversation.clone(),
            seq: *seq,
        },
    }
}

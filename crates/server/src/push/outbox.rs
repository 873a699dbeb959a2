//! Expansion (design messaging step 6, the presence check): an outbox row becomes the
//! pending notifications of the devices it concerns that have no socket.

use std::collections::HashSet;

use crate::store::push::{Intent, NewPending, PendingKind};

use super::PushServer;

/// Outbox rows expanded per claim.
const BATCH: usize = 500;

impl PushServer {
    /// Expands every outbox row there is (up to a bound per call, so that delivery gets its
    /// turn). Returns whether it did anything.
    pub(super) async fn expand(&self) -> bool {
        let mut any = false;
        for _ in 0..20 {
            let now = crate::time::now_ms();
            let entries = match self.store.claim_outbox(now, self.config.lease, BATCH).await {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(error = %e, "push: cannot read the outbox");
                    return any;
                }
            };
            if entries.is_empty() {
                return any;
            }
            any = true;
            let users: Vec<_> = entries
                .iter()
                .flat_map(|e| e.targets.iter().map(|t| t.user))
                .collect::<HashSet<_>>()
                .into_iter()
                .collect();
            // No presence, no expansion: pushing to devices that may be online would double
            // what their sockets deliver. The rows stay leased and are claimed again later.
            let online = match self.presence.online_devices(&users).await {
                Ok(o) => o,
                Err(e) => {
                    tracing::warn!(error = %e, "push: presence unavailable; expansion waits");
                    return any;
                }
            };
            let mut pending = Vec::new();
            let mut done = Vec::with_capacity(entries.len());
            for entry in entries {
                done.push(entry.id);
                let kind = match entry.intent {
                    Intent::Message { message, seq, .. } => PendingKind::Message { message, seq },
                    Intent::Read { seq, .. } => PendingKind::Read { seq },
                };
                for target in entry.targets {
                    if online.contains(&target.device) {
                        if matches!(kind, PendingKind::Message { .. }) {
                            self.metrics.online_skipped.inc();
                        }
                        continue;
                    }
                    pending.push(NewPending {
                        target,
                        conversation: entry.conversation.clone(),
                        kind,
                        created_at: entry.created_at,
                    });
                }
            }
            match self
                .store
                .settle_outbox(done, pending, self.config.max_pending, now)
                .await
            {
                Ok(settled) => {
                    self.metrics.coalesced.inc_by(settled.coalesced);
                    self.metrics
                        .dropped
                        .with_label_values(&["full"])
                        .inc_by(settled.dropped_full);
                    if settled.dropped_full > 0 {
                        tracing::warn!(
                            dropped = settled.dropped_full,
                            max_pending = self.config.max_pending,
                            "push: too many notifications waiting; new ones dropped"
                        );
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "push: cannot settle the outbox");
                    return any;
                }
            }
        }
        any
    }
}

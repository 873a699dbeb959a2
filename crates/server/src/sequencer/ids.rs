//! [`IdSource`]: ids for the rest of the server, refused while this node may not make them.
//!
//! In a cluster the node id is leased ([`super::lease`]). From the moment the lease is lost
//! until a new one is held another node may own the id, so every id made then could collide:
//! [`IdSource::next_id`] answers [`Unavailable`] instead. The refusal is part of the call, not
//! a check each caller must remember to make first.

use std::sync::atomic::{AtomicBool, Ordering};

use confab_protocol::Id;
use tokio_util::sync::CancellationToken;

use super::lease::NodeLease;
use super::snowflake::Sequencer;

/// This node may not make ids now: its node-id lease was lost and no new one is held yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("this node lost its sequencer node-id lease; leasing a new one")]
pub struct Unavailable;

impl From<Unavailable> for crate::error::Error {
    fn from(e: Unavailable) -> Self {
        crate::error::Error::Unavailable(e.to_string())
    }
}

/// The node's id generator and the state of its node-id lease.
pub struct IdSource {
    sequencer: Sequencer,
    /// False from the loss of the lease until a new one is held.
    usable: AtomicBool,
    /// The node-id lease in a cluster (`None` with a configured node id), given back at
    /// shutdown so a restarted node can take the id at once.
    lease: tokio::sync::Mutex<Option<NodeLease>>,
}

impl IdSource {
    /// Ids for a node id fixed by configuration (a single node, or a cluster without Redis).
    pub fn fixed(node: u16) -> Self {
        Self::new(Sequencer::new(node), None)
    }

    /// Ids for the node id `lease` holds.
    pub fn leased(lease: NodeLease) -> Self {
        Self::new(Sequencer::new(lease.node_id()), Some(lease))
    }

    /// Ids from `sequencer`, whose node id `lease` holds if there is one.
    pub fn new(sequencer: Sequencer, lease: Option<NodeLease>) -> Self {
        IdSource {
            sequencer,
            usable: AtomicBool::new(true),
            lease: tokio::sync::Mutex::new(lease),
        }
    }

    /// The next id, or [`Unavailable`] while the node's lease is lost.
    pub fn next_id(&self) -> Result<Id, Unavailable> {
        self.check()?;
        Ok(Id(self.sequencer.next_id()))
    }

    /// Whether [`IdSource::next_id`] would make an id now (for readiness).
    pub fn check(&self) -> Result<(), Unavailable> {
        if self.usable.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(Unavailable)
        }
    }

    /// The node id in use.
    pub fn node(&self) -> u16 {
        self.sequencer.node()
    }

    /// Cancelled when the held lease is lost; `None` without a lease.
    pub async fn lease_lost(&self) -> Option<CancellationToken> {
        self.lease.lock().await.as_ref().map(NodeLease::lost)
    }

    /// The lease was lost: ids are refused from now on, and the lease is dropped without
    /// being released (its key may belong to another node by now).
    pub async fn lose_lease(&self) {
        self.usable.store(false, Ordering::SeqCst);
        drop(self.lease.lock().await.take());
    }

    /// A new lease replaces the lost one: ids are made with its node id from now on.
    pub async fn replace_lease(&self, lease: NodeLease) {
        self.sequencer.set_node(lease.node_id());
        *self.lease.lock().await = Some(lease);
        self.usable.store(true, Ordering::SeqCst);
    }

    /// Gives the lease back (at shutdown), so the id is free at once.
    pub async fn release_lease(&self) {
        if let Some(lease) = self.lease.lock().await.take()
            && let Err(e) = lease.release().await
        {
            tracing::warn!(error = %e, "could not release the node-id lease; it expires by itself");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sequencer::id_node;

    #[test]
    fn a_fixed_source_makes_distinct_ids_of_its_node() {
        let ids = IdSource::fixed(12);
        let a = ids.next_id().unwrap();
        let b = ids.next_id().unwrap();
        assert_ne!(a, b);
        assert_eq!(id_node(a.0), 12);
        assert_eq!(ids.node(), 12);
        assert_eq!(ids.check(), Ok(()));
    }

    #[tokio::test]
    async fn ids_are_refused_from_the_loss_of_the_lease() {
        let ids = IdSource::fixed(3);
        ids.lose_lease().await;
        assert_eq!(ids.next_id(), Err(Unavailable));
        assert_eq!(ids.check(), Err(Unavailable));
        let error = crate::error::Error::from(Unavailable);
        assert_eq!(error.code(), confab_protocol::ErrorCode::Unavailable);
    }

    #[tokio::test]
    async fn without_a_lease_there_is_nothing_to_lose_or_release() {
        let ids = IdSource::fixed(0);
        assert!(ids.lease_lost().await.is_none());
        ids.release_lease().await;
        assert!(ids.next_id().is_ok());
    }
}

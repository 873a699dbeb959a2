//! The sequencing service (design messaging step 3): every message, account and device gets a
//! unique, roughly time-ordered 64-bit id.
//!
//! - [`snowflake`]: the id layout and the per-node generator ([`Sequencer`]);
//! - [`lease`]: in a cluster, the node id is leased from Redis so two live nodes never share one;
//! - [`ids`]: [`IdSource`], what the rest of the server asks for ids: it refuses while the
//!   node's lease is lost, so no caller can forget to check.
//!
//! The per-conversation `seq` is *not* made here: it must be gapless, so the message store
//! assigns it in the same transaction that stores the message.

pub mod ids;
pub mod lease;
pub mod snowflake;

pub use ids::{IdSource, Unavailable};
pub use snowflake::{MAX_NODE, Sequencer, id_node, id_time_ms};

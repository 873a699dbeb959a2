//! confab's server: every box of the chat design as a module.
//!
//! - [`gateway`]: the chat service holding WebSockets (login step 1, messaging 1-2, 7-8)
//! - [`chat`]: the design's flows (send, read, ack, typing, online/offline) over the backends
//! - [`presence`]: who is online (login steps 2-4)
//! - [`sequencer`]: unique ids (messaging step 3)
//! - [`store`]: the message store (messaging step 4)
//! - [`sync`]: the message sync queue (messaging step 5)
//! - [`push`]: the push server: offline devices' notifications (messaging steps 6-8)
//! - [`api`]: the HTTP API; [`auth`]: passwords and tokens
//! - [`wiring`]: the backends the configuration names; [`server`]: serving and shutdown;
//!   [`jobs`]: background work; [`state`]: the shared handles

// Ids, positions and counts cross boundaries here (the wire, SQL's signed 64-bit integers,
// the sequencer's bit fields): a cast that wraps or truncates silently would turn a client's
// value into another one. Conversions say what happens when a value does not fit.
#![deny(
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss,
    clippy::cast_possible_truncation,
    clippy::cast_lossless
)]

pub mod admin;
pub mod api;
pub mod auth;
pub mod chat;
pub mod config;
pub mod edge;
pub mod error;
pub mod files;
pub mod gateway;
pub mod jobs;
pub mod metrics;
pub mod presence;
pub mod push;
pub mod sequencer;
pub mod server;
pub mod sessions;
pub mod state;
pub mod store;
pub mod sync;
pub mod throttle;
pub mod time;
pub mod wiring;

pub use config::Config;
pub use error::StartError;
pub use server::Server;
pub use state::App;

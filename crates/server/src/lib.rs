//! confab's server: every box of the chat design as a module.
//!
//! - [`gateway`]: the chat service holding WebSockets (login step 1, messaging 1-2, 7-8)
//! - [`presence`]: who is online (login steps 2-4)
//! - [`sequencer`]: unique message ids (messaging step 3)
//! - [`store`]: the message store (messaging step 4)
//! - [`sync`]: the message sync queue (messaging step 5)
//! - [`api`]: the HTTP API; [`auth`]: passwords and tokens; [`app`]: wiring and lifecycle.

pub mod admin;
pub mod api;
pub mod app;
pub mod auth;
pub mod config;
pub mod error;
pub mod files;
pub mod gateway;
pub mod lease;
pub mod metrics;
pub mod presence;
pub mod sequencer;
pub mod store;
pub mod sync;

pub use app::{App, Server, StartError};
pub use config::Config;

//! Push services for tests: HTTP servers on `127.0.0.1:0` that check requests as the real
//! service does, record them, and answer as a test scripts.

pub mod apns;
pub mod fcm;
pub mod gateway;

pub use apns::ApnsDouble;
pub use fcm::FcmDouble;
pub use gateway::GatewayReceiver;

//! Stand-ins for the push services a server sends notifications to, for end-to-end tests:
//! each listens on 127.0.0.1:0, checks every request as the real service would, records what
//! arrived, and answers as the test scripts it.

pub mod apns;
pub mod fcm;
pub mod gateway;
pub mod webpush;

pub use apns::ApnsDouble;
pub use fcm::FcmDouble;
pub use gateway::GatewayReceiver;
pub use webpush::{Received, Reply, WebPushReceiver};

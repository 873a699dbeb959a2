//! The settings a [`Client`](crate::Client) is started with, and their defaults.

use std::fmt;
use std::time::Duration;

/// Settings for [`Client::connect`](crate::Client::connect). Build with [`ClientConfig::new`]
/// and adjust fields.
#[derive(Clone)]
pub struct ClientConfig {
    /// The server's HTTP base URL, e.g. `http://127.0.0.1:8080`.
    pub base_url: String,
    /// A session token from [`crate::Api::login`].
    pub token: String,
    /// Where to resume the event stream; `None` resumes after this device's last ack.
    pub cursor: Option<String>,
    /// Ack each message once the app took it from
    /// [`Client::next_event`](crate::Client::next_event) (default `true`).
    pub auto_ack: bool,
    /// First reconnect delay, and the floor of every retry delay (default 100 ms).
    pub min_backoff: Duration,
    /// Ceiling of reconnect and retry delays (default 10 s).
    pub max_backoff: Duration,
    /// How long one send attempt waits for `sent` before resending (default 10 s).
    pub send_timeout: Duration,
    /// Limit for one connect attempt, upgrade to `welcome` (default 10 s).
    pub connect_timeout: Duration,
    /// Silence after which an application `ping` is sent (default 20 s).
    pub ping_interval: Duration,
    /// Silence after which the connection is taken for dead and replaced (default 60 s).
    pub idle_timeout: Duration,
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The token is a bearer credential: never let it reach a log line.
        f.debug_struct("ClientConfig")
            .field("base_url", &self.base_url)
            .field("token", &"<redacted>")
            .field("cursor", &self.cursor)
            .field("auto_ack", &self.auto_ack)
            .field("min_backoff", &self.min_backoff)
            .field("max_backoff", &self.max_backoff)
            .field("send_timeout", &self.send_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("ping_interval", &self.ping_interval)
            .field("idle_timeout", &self.idle_timeout)
            .finish()
    }
}

impl ClientConfig {
    /// Defaults for the server at `base_url`, authenticating with `token`.
    pub fn new(base_url: &str, token: &str) -> Self {
        ClientConfig {
            base_url: base_url.to_owned(),
            token: token.to_owned(),
            cursor: None,
            auto_ack: true,
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            send_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_debug_hides_the_token() {
        let shown = format!("{:?}", ClientConfig::new("http://h", "secret-token"));
        assert!(!shown.contains("secret-token"), "{shown}");
    }
}

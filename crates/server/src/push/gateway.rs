//! Push gateways: the Matrix Push Gateway API v1 (PROTOCOL.md "Push").
//!
//! A gateway such as Sygnal holds an app's APNs and FCM credentials, so an operator can serve
//! apps whose keys it does not have. Gateways are named by the operator (`--push-gateway
//! NAME=URL`); a subscription names one, and a name the configuration no longer has is refused
//! for good rather than retried.
//!
//! Also here, for every provider speaking HTTP: how a failed request and a `Retry-After`
//! header become a [`Delivery`].

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use confab_protocol::{PushPayload, PushSubscription};
use serde_json::{Value, json};

use super::{Delivery, Notification, Provider};
use crate::config::PushConfig;
use crate::error::StartError;

/// The path of the API's one endpoint, after the gateway's base URL.
const NOTIFY_PATH: &str = "/_matrix/push/v1/notify";

/// The configured push gateways, by name.
pub struct Gateways {
    client: reqwest::Client,
    /// Name → the URL to POST to (the base URL and [`NOTIFY_PATH`]).
    urls: HashMap<String, String>,
}

impl Gateways {
    /// The gateways of `config.gateways`, each request bounded by `config.request_timeout`.
    pub fn new(config: &PushConfig) -> Result<Gateways, StartError> {
        let client = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .build()
            .map_err(|e| StartError::Backend(format!("push gateway client: {e}")))?;
        let urls = config
            .gateways
            .iter()
            .map(|(name, url)| {
                let url = url.trim_end_matches('/');
                // Matrix pushers are often configured with the whole notify URL: take both.
                let url = if url.ends_with(NOTIFY_PATH) {
                    url.to_owned()
                } else {
                    format!("{url}{NOTIFY_PATH}")
                };
                (name.clone(), url)
            })
            .collect();
        Ok(Gateways { client, urls })
    }

    /// Whether a gateway of this name is configured: the API refuses a subscription naming
    /// another.
    pub fn has(&self, name: &str) -> bool {
        self.urls.contains_key(name)
    }
}

#[async_trait]
impl Provider for Gateways {
    async fn validate(&self, subscription: &PushSubscription) -> Result<(), String> {
        match subscription {
            PushSubscription::Gateway { gateway, .. } if !self.has(gateway) => Err(format!(
                "no push gateway named {gateway:?} is configured on this server"
            )),
            _ => Ok(()),
        }
    }

    async fn deliver(&self, notification: &Notification<'_>) -> Delivery {
        let PushSubscription::Gateway {
            gateway,
            pushkey,
            app_id,
            ..
        } = &notification.due.subscription
        else {
            return Delivery::Rejected {
                reason: "not a gateway subscription".into(),
            };
        };
        let Some(url) = self.urls.get(gateway) else {
            // Removed from the configuration: nothing will make it deliverable again.
            return Delivery::Rejected {
                reason: format!("no push gateway named {gateway:?}"),
            };
        };
        let body = notify_body(notification.payload, app_id, pushkey);
        let response = match self.client.post(url).json(&body).send().await {
            Ok(response) => response,
            Err(e) => return failed_request(&e),
        };
        let status = response.status();
        let after = retry_after(response.headers());
        let text = response.text().await.unwrap_or_default();
        outcome(status.as_u16(), after, &text, pushkey)
    }
}

/// The request body for one device. A message carries its text (`content`) only when the
/// payload has it (the subscription's `preview`); a read is a badge update to 0 for the
/// conversation, with no `event_id`, so the app clears what it shows for `room_id`.
fn notify_body(payload: &PushPayload, app_id: &str, pushkey: &str) -> Value {
    let devices = json!([{ "app_id": app_id, "pushkey": pushkey, "data": {} }]);
    match payload {
        PushPayload::Message {
            conversation,
            id,
            from,
            from_username,
            unread,
            body,
            ..
        } => {
            let mut notification = json!({
                "event_id": id.to_string(),
                "room_id": conversation,
                "type": "m.room.message",
                "sender": from.to_string(),
                "sender_display_name": from_username,
                "prio": "high",
                "counts": { "unread": unread },
                "devices": devices,
            });
            if let Some(body) = body {
                notification["content"] = json!({ "msgtype": "m.text", "body": body });
            }
            json!({ "notification": notification })
        }
        PushPayload::Read { conversation, .. } => json!({
            "notification": {
                "room_id": conversation,
                "prio": "low",
                "counts": { "unread": 0 },
                "devices": devices,
            }
        }),
    }
}

/// How the gateway's answer ends the attempt for `pushkey`.
fn outcome(status: u16, after: Option<Duration>, body: &str, pushkey: &str) -> Delivery {
    match status {
        200..=299 => {
            // The gateway lists the pushkeys its push service refused (or whose app it does
            // not know): those subscriptions will never work again.
            let rejected = serde_json::from_str::<Value>(body)
                .ok()
                .and_then(|v| v.get("rejected").cloned());
            let ours = rejected
                .as_ref()
                .and_then(Value::as_array)
                .is_some_and(|keys| keys.iter().any(|k| k.as_str() == Some(pushkey)));
            if ours {
                Delivery::Gone
            } else {
                Delivery::Accepted
            }
        }
        429 | 500..=599 => Delivery::Retry {
            after,
            reason: format!("gateway answered {status}"),
        },
        _ => Delivery::Rejected {
            reason: format!("gateway answered {status}: {}", excerpt(body)),
        },
    }
}

/// A request that got no answer (a timeout, a refused connection): worth another try.
pub(super) fn failed_request(e: &reqwest::Error) -> Delivery {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "failed"
    };
    Delivery::Retry {
        after: None,
        reason: format!("request {what}: {e}"),
    }
}

/// A `Retry-After` header: seconds, or an HTTP date (RFC 9110 section 10.2.3).
pub(super) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    // A date already past asks for no wait.
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// The start of an error body, for a reason that stays one line of a log.
pub(super) fn excerpt(body: &str) -> String {
    const MAX_CHARS: usize = 200;
    let line = body.trim().replace(['\r', '\n'], " ");
    match line.char_indices().nth(MAX_CHARS) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line,
    }
}

#[cfg(test)]
mod tests {
    use confab_protocol::Id;

    use super::*;

    fn message(body: Option<&str>) -> PushPayload {
        PushPayload::Message {
            conversation: "3-4".into(),
            id: Id(77),
            seq: 5,
            from: Id(3),
            from_username: "ann".into(),
            unread: 2,
            body: body.map(str::to_owned),
        }
    }

    #[test]
    fn a_message_names_its_event_room_and_sender_and_its_text_only_with_preview() {
        let with = notify_body(&message(Some("hi")), "app", "key");
        let n = &with["notification"];
        assert_eq!(n["event_id"], "77");
        assert_eq!(n["room_id"], "3-4");
        assert_eq!(n["sender"], "3");
        assert_eq!(n["sender_display_name"], "ann");
        assert_eq!(n["counts"]["unread"], 2);
        assert_eq!(n["content"]["body"], "hi");
        assert_eq!(n["devices"][0]["pushkey"], "key");
        assert_eq!(n["devices"][0]["app_id"], "app");
        let without = notify_body(&message(None), "app", "key");
        assert!(without["notification"].get("content").is_none());
    }

    #[test]
    fn a_read_is_a_zero_count_for_the_conversation_with_no_event() {
        let read = PushPayload::Read {
            conversation: "3-4".into(),
            seq: 5,
        };
        let n = notify_body(&read, "app", "key")["notification"].clone();
        assert_eq!(n["counts"]["unread"], 0);
        assert_eq!(n["room_id"], "3-4");
        assert!(n.get("event_id").is_none());
    }

    #[test]
    fn answers_end_the_attempt_as_the_api_says() {
        assert_eq!(
            outcome(200, None, r#"{"rejected":[]}"#, "k"),
            Delivery::Accepted
        );
        assert_eq!(outcome(200, None, "", "k"), Delivery::Accepted);
        assert_eq!(
            outcome(200, None, r#"{"rejected":["other"]}"#, "k"),
            Delivery::Accepted
        );
        assert_eq!(
            outcome(200, None, r#"{"rejected":["k"]}"#, "k"),
            Delivery::Gone
        );
        let after = Some(Duration::from_secs(3));
        assert!(
            matches!(outcome(503, after, "", "k"), Delivery::Retry { after: a, .. } if a == after)
        );
        assert!(matches!(
            outcome(429, None, "", "k"),
            Delivery::Retry { .. }
        ));
        assert!(matches!(
            outcome(400, None, "bad", "k"),
            Delivery::Rejected { .. }
        ));
    }

    #[test]
    fn retry_after_is_seconds_or_a_date() {
        use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(RETRY_AFTER, HeaderValue::from_static("120"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(120)));
        let later = SystemTime::now() + Duration::from_secs(600);
        let date = HeaderValue::from_str(&httpdate::fmt_http_date(later)).unwrap();
        headers.insert(RETRY_AFTER, date);
        let after = retry_after(&headers).unwrap();
        assert!(after > Duration::from_secs(590) && after <= Duration::from_secs(600));
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&headers), Some(Duration::ZERO));
    }

    #[test]
    fn a_base_url_or_the_whole_notify_url_is_taken() {
        let config = PushConfig {
            gateways: vec![
                ("a".into(), "http://a.example".into()),
                ("b".into(), "http://b.example/_matrix/push/v1/notify".into()),
            ],
            ..PushConfig::default()
        };
        let gateways = Gateways::new(&config).unwrap();
        assert!(gateways.has("a") && gateways.has("b") && !gateways.has("c"));
        assert_eq!(
            gateways.urls["a"],
            "http://a.example/_matrix/push/v1/notify"
        );
        assert_eq!(
            gateways.urls["b"],
            "http://b.example/_matrix/push/v1/notify"
        );
    }
}

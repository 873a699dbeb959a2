//! APNs directly: HTTP/2 with token-based authentication (PROTOCOL.md "Push").
//!
//! Every request carries a provider token, a JWT signed (ES256) with the operator's `.p8`
//! key. APNs refuses a token older than an hour and one refreshed too often (more than once
//! every 20 minutes), so one token serves every request for [`TOKEN_LIFETIME`], and is
//! replaced early only when APNs says it expired.
//!
//! A message is an `alert` the system shows (its text only with the subscription's
//! `preview`); a read is a `background` push that wakes the app to clear what it shows. Both
//! carry the payload under `confab` and the conversation's collapse id, so a newer one
//! replaces an older one.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use confab_protocol::{PushPayload, PushSubscription};
use jwt_simple::prelude::{Clock, ECDSAP256KeyPairLike, ES256KeyPair, JWTClaims, NoCustomClaims};
use serde_json::{Value, json};

use super::gateway::{excerpt, failed_request, retry_after};
use super::{Delivery, Notification, Provider, topic};
use crate::config::ApnsConfig;
use crate::error::StartError;

/// How long one provider token is used: under APNs' hour, with room for clock skew.
const TOKEN_LIFETIME: Duration = Duration::from_secs(50 * 60);
/// APNs refuses a larger payload (413).
const MAX_PAYLOAD_BYTES: usize = 4096;
/// The alert's text without `preview`.
const NO_PREVIEW_TEXT: &str = "New message";

/// APNs, sending with the operator's key to one app (`topic`).
pub struct Apns {
    client: reqwest::Client,
    key: ES256KeyPair,
    team_id: String,
    topic: String,
    endpoint: String,
    token: Mutex<Option<ProviderToken>>,
}

/// A signed provider token and when it was made.
struct ProviderToken {
    jwt: String,
    made: Instant,
}

impl Apns {
    /// Reads the `.p8` key of `config`; each request is bounded by `request_timeout`.
    pub fn new(config: &ApnsConfig, request_timeout: Duration) -> Result<Apns, StartError> {
        let pem = std::fs::read_to_string(&config.key)
            .map_err(|e| StartError::Backend(format!("APNs key {}: {e}", config.key.display())))?;
        let key = ES256KeyPair::from_pem(&pem)
            .map_err(|e| {
                StartError::Backend(format!(
                    "APNs key {}: not a PKCS#8 P-256 key: {e}",
                    config.key.display()
                ))
            })?
            .with_key_id(&config.key_id);
        // APNs speaks HTTP/2 only; prior knowledge also lets a plain `http://` test double
        // speak it (h2c), while `https://` negotiates h2 by ALPN.
        let client = reqwest::Client::builder()
            .http2_prior_knowledge()
            .timeout(request_timeout)
            .build()
            .map_err(|e| StartError::Backend(format!("APNs client: {e}")))?;
        Ok(Apns {
            client,
            key,
            team_id: config.team_id.clone(),
            topic: config.topic.clone(),
            endpoint: config.endpoint.trim_end_matches('/').to_owned(),
            token: Mutex::new(None),
        })
    }

    /// The current provider token, made anew when none is younger than [`TOKEN_LIFETIME`].
    fn provider_token(&self) -> Result<String, String> {
        let mut token = self
            .token
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if let Some(current) = token.as_ref().filter(|t| t.made.elapsed() < TOKEN_LIFETIME) {
            return Ok(current.jwt.clone());
        }
        // Only `iss` and `iat`: the claims APNs documents.
        let claims: JWTClaims<NoCustomClaims> = JWTClaims {
            issued_at: Some(Clock::now_since_epoch()),
            expires_at: None,
            invalid_before: None,
            issuer: Some(self.team_id.clone()),
            subject: None,
            audiences: None,
            jwt_id: None,
            nonce: None,
            custom: NoCustomClaims {},
        };
        let jwt = self
            .key
            .sign(claims)
            .map_err(|e| format!("cannot sign the APNs provider token: {e}"))?;
        *token = Some(ProviderToken {
            jwt: jwt.clone(),
            made: Instant::now(),
        });
        Ok(jwt)
    }

    /// APNs said `jwt` expired: the next request makes a new one. A token another request
    /// already replaced is left alone, so a burst of refusals makes one new token, not one
    /// each (APNs refuses too-frequent updates).
    fn expired(&self, jwt: &str) {
        let mut token = self
            .token
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if token.as_ref().is_some_and(|t| t.jwt == jwt) {
            *token = None;
        }
    }
}

#[async_trait]
impl Provider for Apns {
    async fn validate(&self, subscription: &PushSubscription) -> Result<(), String> {
        match subscription {
            PushSubscription::Apns { token, .. }
                if !token.bytes().all(|b| b.is_ascii_hexdigit()) =>
            {
                Err("an APNs device token is hexadecimal".into())
            }
            _ => Ok(()),
        }
    }

    async fn deliver(&self, notification: &Notification<'_>) -> Delivery {
        let PushSubscription::Apns { token, .. } = &notification.due.subscription else {
            return Delivery::Rejected {
                reason: "not an APNs subscription".into(),
            };
        };
        // A device token is hex; anything else can never be delivered (and stays out of
        // the path).
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Delivery::Gone;
        }
        let Some(payload) = apns_payload(notification.payload) else {
            return Delivery::Rejected {
                reason: "the payload does not fit APNs' 4 KiB".into(),
            };
        };
        let jwt = match self.provider_token() {
            Ok(jwt) => jwt,
            Err(reason) => return Delivery::Rejected { reason },
        };
        let (push_type, priority) = match notification.payload {
            PushPayload::Message { .. } => ("alert", "10"),
            // A background push must have priority 5.
            PushPayload::Read { .. } => ("background", "5"),
        };
        let expiration = SystemTime::now()
            .checked_add(notification.ttl)
            .and_then(|at| at.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        let response = self
            .client
            .post(format!("{}/3/device/{token}", self.endpoint))
            .header("authorization", format!("bearer {jwt}"))
            .header("apns-topic", &self.topic)
            .header("apns-push-type", push_type)
            .header("apns-priority", priority)
            .header("apns-expiration", expiration.to_string())
            .header(
                "apns-collapse-id",
                topic(notification.payload.conversation()),
            )
            .header("content-type", "application/json")
            .body(payload)
            .send()
            .await;
        let response = match response {
            Ok(response) => response,
            Err(e) => return failed_request(&e),
        };
        let status = response.status().as_u16();
        let after = retry_after(response.headers());
        let body = response.text().await.unwrap_or_default();
        let reason = reason_of(&body);
        if status == 403 && reason == "ExpiredProviderToken" {
            self.expired(&jwt);
        }
        outcome(status, after, &reason)
    }
}

/// The JSON APNs delivers, at most [`MAX_PAYLOAD_BYTES`]: a message's text is shortened to
/// fit. `None`: it does not fit even without text.
fn apns_payload(payload: &PushPayload) -> Option<Vec<u8>> {
    let PushPayload::Message {
        conversation,
        from_username,
        body,
        ..
    } = payload
    else {
        let json = json!({ "aps": { "content-available": 1 }, "confab": payload });
        return serde_json::to_vec(&json).ok();
    };
    let build = |text: Option<&str>| {
        let mut confab = serde_json::to_value(payload).unwrap_or(Value::Null);
        if let Some(text) = text {
            confab["body"] = Value::from(text);
        }
        let json = json!({
            "aps": {
                "alert": { "title": from_username, "body": text.unwrap_or(NO_PREVIEW_TEXT) },
                "thread-id": conversation,
                // Lets the app's notification service extension rewrite what is shown.
                "mutable-content": 1,
            },
            "confab": confab,
        });
        serde_json::to_vec(&json).unwrap_or_default()
    };
    let Some(text) = body else {
        let bytes = build(None);
        return (bytes.len() <= MAX_PAYLOAD_BYTES).then_some(bytes);
    };
    let whole = build(Some(text));
    if whole.len() <= MAX_PAYLOAD_BYTES {
        return Some(whole);
    }
    // The longest cut text that fits, found by bisection: escapes make a character's cost
    // in the JSON vary, and the text is there twice (the alert and `confab`).
    let cut = |keep: usize| build(Some(&format!("{}…", prefix(text, keep))));
    let (mut fits, mut over) = (None, text.len());
    let mut low = 0;
    while low < over {
        let mid = low + (over - low) / 2;
        let bytes = cut(mid);
        if bytes.len() <= MAX_PAYLOAD_BYTES {
            fits = Some(bytes);
            low = mid + 1;
        } else {
            over = mid;
        }
    }
    fits
}

/// The longest prefix of `text` of at most `bytes` bytes that ends on a character.
fn prefix(text: &str, bytes: usize) -> &str {
    let mut end = bytes.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The `reason` of an error answer's body (or the body's start, if it has none).
fn reason_of(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v.get("reason").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| excerpt(body))
}

/// How APNs' answer (its status, and its `reason` when not 200) ends the attempt.
fn outcome(status: u16, after: Option<Duration>, reason: &str) -> Delivery {
    if status == 200 {
        return Delivery::Accepted;
    }
    let said = format!("APNs answered {status} {reason}");
    match (status, reason) {
        // The device token is no longer (or never was) valid for this app.
        (410, _) | (400, "BadDeviceToken" | "Unregistered" | "DeviceTokenNotForTopic") => {
            Delivery::Gone
        }
        // The next attempt signs a new provider token (see `Apns::expired`).
        (403, "ExpiredProviderToken") | (429 | 500 | 503, _) => Delivery::Retry {
            after,
            reason: said,
        },
        _ => Delivery::Rejected { reason: said },
    }
}

#[cfg(test)]
mod tests {
    use confab_protocol::Id;

    use super::*;

    fn message(body: Option<String>) -> PushPayload {
        PushPayload::Message {
            conversation: "3-4".into(),
            id: Id(77),
            seq: 5,
            from: Id(3),
            from_username: "ann".into(),
            unread: 2,
            body,
        }
    }

    #[test]
    fn a_long_text_is_cut_to_fit_4_kib_on_a_character() {
        for text in ["a".repeat(10_000), "é\"".repeat(3_000), "😀".repeat(5_000)] {
            let bytes = apns_payload(&message(Some(text.clone()))).unwrap();
            assert!(bytes.len() <= MAX_PAYLOAD_BYTES, "{} bytes", bytes.len());
            // Not cut more than needed: within a few characters of the bound.
            assert!(
                bytes.len() > MAX_PAYLOAD_BYTES - 64,
                "{} bytes",
                bytes.len()
            );
            let json: Value = serde_json::from_slice(&bytes).unwrap();
            let alert = json["aps"]["alert"]["body"].as_str().unwrap();
            assert!(alert.ends_with('…'));
            assert_eq!(json["confab"]["body"].as_str().unwrap(), alert);
        }
        let short = apns_payload(&message(Some("hi".into()))).unwrap();
        let json: Value = serde_json::from_slice(&short).unwrap();
        assert_eq!(json["aps"]["alert"]["body"], "hi");
    }

    #[test]
    fn without_preview_the_alert_says_only_that_there_is_a_message() {
        let bytes = apns_payload(&message(None)).unwrap();
        let json: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["aps"]["alert"]["body"], NO_PREVIEW_TEXT);
        assert_eq!(json["aps"]["alert"]["title"], "ann");
        assert!(json["confab"].get("body").is_none());
        assert_eq!(json["confab"]["type"], "message");
    }

    #[test]
    fn answers_end_the_attempt_as_apple_documents() {
        assert_eq!(
            reason_of(r#"{"reason":"Unregistered","timestamp":1}"#),
            "Unregistered"
        );
        assert_eq!(reason_of("oops"), "oops");
        assert_eq!(outcome(200, None, ""), Delivery::Accepted);
        assert_eq!(outcome(410, None, "Unregistered"), Delivery::Gone);
        for reason in ["BadDeviceToken", "Unregistered", "DeviceTokenNotForTopic"] {
            assert_eq!(outcome(400, None, reason), Delivery::Gone);
        }
        for status in [429, 500, 503] {
            assert!(matches!(outcome(status, None, ""), Delivery::Retry { .. }));
        }
        assert!(matches!(
            outcome(403, None, "ExpiredProviderToken"),
            Delivery::Retry { .. }
        ));
        assert!(matches!(
            outcome(403, None, "InvalidProviderToken"),
            Delivery::Rejected { reason } if reason.contains("InvalidProviderToken")
        ));
        assert!(matches!(
            outcome(413, None, "PayloadTooLarge"),
            Delivery::Rejected { .. }
        ));
    }
}

//! FCM directly: the HTTP v1 API with a service account (PROTOCOL.md "Push").
//!
//! Requests carry an OAuth 2 access token, got from the account's `token_uri` by the JWT
//! bearer grant (RFC 7523: a JWT signed RS256 with the account's key) and kept until shortly
//! before it expires. One request fetches it while the others wait for it, so a burst of
//! notifications asks once.
//!
//! A message is a data message the app renders, with a `notification` (shown by the system
//! when the app is not running) only with the subscription's `preview`. The payload's fields
//! are its data, as strings (FCM takes no other values), except `from`, which FCM reserves,
//! sent as `from_id`. Both platforms get the conversation's collapse key.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use confab_protocol::{PushPayload, PushSubscription};
use jwt_simple::prelude::{Claims, RS256KeyPair, RSAKeyPairLike};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::gateway::{excerpt, failed_request, retry_after};
use super::{Delivery, Notification, Provider, topic};
use crate::config::FcmConfig;
use crate::error::StartError;

/// The scope that lets an access token send messages.
const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// The JWT bearer grant (RFC 7523 section 2.1).
const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// The most of a message's text sent: FCM takes at most 4 KiB of data and notification,
/// and the text is in both. More than a notification shows.
const MAX_TEXT_BYTES: usize = 1024;
/// How long the grant's assertion is valid: Google takes at most an hour.
const ASSERTION_LIFETIME: Duration = Duration::from_secs(3600);
/// An access token is replaced this long before it expires, so none expires in flight.
const TOKEN_MARGIN: Duration = Duration::from_secs(5 * 60);

/// FCM, sending with the operator's service account.
pub struct Fcm {
    client: reqwest::Client,
    key: RS256KeyPair,
    client_email: String,
    token_uri: String,
    /// Where messages are sent: the endpoint and the account's project.
    send_url: String,
    token: tokio::sync::Mutex<Option<AccessToken>>,
}

/// The fields of a service account's JSON key file that are used.
#[derive(Deserialize)]
struct ServiceAccount {
    project_id: String,
    client_email: String,
    private_key: String,
    token_uri: String,
}

/// An access token and when to stop using it.
struct AccessToken {
    token: String,
    until: Instant,
}

/// The token endpoint's answer.
#[derive(Deserialize)]
struct Granted {
    access_token: String,
    expires_in: u64,
}

/// The claims of the grant's assertion besides the registered ones.
#[derive(Serialize)]
struct Scope {
    scope: &'static str,
}

impl Fcm {
    /// Reads the service account of `config`; each request is bounded by `request_timeout`.
    pub fn new(config: &FcmConfig, request_timeout: Duration) -> Result<Fcm, StartError> {
        let path = config.credentials.display();
        let text = std::fs::read_to_string(&config.credentials)
            .map_err(|e| StartError::Backend(format!("FCM credentials {path}: {e}")))?;
        let account: ServiceAccount = serde_json::from_str(&text).map_err(|e| {
            StartError::Backend(format!(
                "FCM credentials {path}: not a service account key: {e}"
            ))
        })?;
        let key = RS256KeyPair::from_pem(&account.private_key).map_err(|e| {
            StartError::Backend(format!("FCM credentials {path}: private_key: {e}"))
        })?;
        let client = reqwest::Client::builder()
            .timeout(request_timeout)
            .build()
            .map_err(|e| StartError::Backend(format!("FCM client: {e}")))?;
        let send_url = format!(
            "{}/v1/projects/{}/messages:send",
            config.endpoint.trim_end_matches('/'),
            account.project_id
        );
        Ok(Fcm {
            client,
            key,
            client_email: account.client_email,
            token_uri: account.token_uri,
            send_url,
            token: tokio::sync::Mutex::new(None),
        })
    }

    /// The cached access token, or a new one from the token endpoint.
    async fn access_token(&self) -> Result<String, Delivery> {
        let mut cached = self.token.lock().await;
        if let Some(token) = cached.as_ref().filter(|t| Instant::now() < t.until) {
            return Ok(token.token.clone());
        }
        let assertion = self.assertion().map_err(|reason| Delivery::Retry {
            after: None,
            reason,
        })?;
        let response = self
            .client
            .post(&self.token_uri)
            .form(&[("grant_type", GRANT_TYPE), ("assertion", &assertion)])
            .send()
            .await
            .map_err(|e| failed_request(&e))?;
        let status = response.status();
        let after = retry_after(response.headers());
        let body = response.text().await.unwrap_or_default();
        // Even a refused grant is retried: the operator may fix the account meanwhile, and
        // the notifications are kept for their 24 hours rather than dropped.
        let refused = |what: String| Delivery::Retry {
            after,
            reason: format!("FCM access token: {what}"),
        };
        if !status.is_success() {
            return Err(refused(format!("{status}: {}", excerpt(&body))));
        }
        let granted: Granted =
            serde_json::from_str(&body).map_err(|e| refused(format!("unreadable answer: {e}")))?;
        let lifetime = Duration::from_secs(granted.expires_in).saturating_sub(TOKEN_MARGIN);
        *cached = Some(AccessToken {
            token: granted.access_token.clone(),
            until: Instant::now() + lifetime,
        });
        Ok(granted.access_token)
    }

    /// The signed JWT the grant asks for.
    fn assertion(&self) -> Result<String, String> {
        let mut claims =
            Claims::with_custom_claims(Scope { scope: SCOPE }, ASSERTION_LIFETIME.into())
                .with_issuer(&self.client_email)
                .with_audience(&self.token_uri);
        // Only the claims Google documents for the grant: iss, scope, aud, iat, exp.
        claims.invalid_before = None;
        self.key
            .sign(claims)
            .map_err(|e| format!("cannot sign the FCM grant: {e}"))
    }

    /// FCM refused `token`: the next request gets a new one, unless another request already
    /// replaced it.
    async fn refused(&self, token: &str) {
        let mut cached = self.token.lock().await;
        if cached.as_ref().is_some_and(|t| t.token == token) {
            *cached = None;
        }
    }
}

#[async_trait]
impl Provider for Fcm {
    async fn deliver(&self, notification: &Notification<'_>) -> Delivery {
        let PushSubscription::Fcm { token, .. } = &notification.due.subscription else {
            return Delivery::Rejected {
                reason: "not an FCM subscription".into(),
            };
        };
        let access = match self.access_token().await {
            Ok(access) => access,
            Err(delivery) => return delivery,
        };
        let body = message(notification.payload, token, notification.ttl);
        let response = self
            .client
            .post(&self.send_url)
            .bearer_auth(&access)
            .json(&body)
            .send()
            .await;
        let response = match response {
            Ok(response) => response,
            Err(e) => return failed_request(&e),
        };
        let status = response.status().as_u16();
        let after = retry_after(response.headers());
        let body = response.text().await.unwrap_or_default();
        if status == 401 {
            self.refused(&access).await;
        }
        outcome(status, after, &body)
    }
}

/// The request body: `{"message": …}` for the device `token`, kept by FCM for `ttl`.
fn message(payload: &PushPayload, token: &str, ttl: Duration) -> Value {
    let collapse = topic(payload.conversation());
    let mut data = Map::new();
    if let Ok(Value::Object(fields)) = serde_json::to_value(payload) {
        for (name, value) in fields {
            let name = if name == "from" {
                "from_id".into()
            } else {
                name
            };
            let value = match value {
                Value::String(s) if name == "body" => shortened(&s),
                Value::String(s) => s,
                other => other.to_string(),
            };
            data.insert(name, Value::String(value));
        }
    }
    let priority = match payload {
        PushPayload::Message { .. } => "HIGH",
        PushPayload::Read { .. } => "NORMAL",
    };
    let expiration = SystemTime::now()
        .checked_add(ttl)
        .and_then(|at| at.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    let mut message = json!({
        "token": token,
        "data": data,
        "android": {
            "collapse_key": collapse,
            "priority": priority,
            "ttl": format!("{}s", ttl.as_secs()),
        },
        "apns": {
            "headers": {
                "apns-collapse-id": collapse,
                "apns-expiration": expiration.to_string(),
            },
        },
    });
    match payload {
        PushPayload::Message {
            from_username,
            body: Some(body),
            ..
        } => {
            message["notification"] = json!({ "title": from_username, "body": shortened(body) });
            message["apns"]["headers"]["apns-priority"] = json!("10");
        }
        // Without a notification, a data message reaches an iOS app only as a background
        // push (which must have priority 5).
        _ => {
            message["apns"]["headers"]["apns-priority"] = json!("5");
            message["apns"]["payload"] = json!({ "aps": { "content-available": 1 } });
        }
    }
    json!({ "message": message })
}

/// `text`, cut on a character to at most [`MAX_TEXT_BYTES`] and an ellipsis.
fn shortened(text: &str) -> String {
    if text.len() <= MAX_TEXT_BYTES {
        return text.to_owned();
    }
    let mut end = MAX_TEXT_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// How FCM's answer ends the attempt.
fn outcome(status: u16, after: Option<Duration>, body: &str) -> Delivery {
    if (200..300).contains(&status) {
        return Delivery::Accepted;
    }
    // `{"error": {"status": "NOT_FOUND", "message": …, "details": [{"errorCode": …}]}}`
    let error = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v.get("error").cloned())
        .unwrap_or(Value::Null);
    let code = error["details"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|d| d.get("errorCode").and_then(Value::as_str))
        .or_else(|| error["status"].as_str())
        .unwrap_or("");
    let message = error["message"]
        .as_str()
        .map_or_else(|| excerpt(body), str::to_owned);
    let said = format!("FCM answered {status} {code}: {message}");
    match (status, code) {
        (404, _) | (_, "UNREGISTERED") => Delivery::Gone,
        // 401: the access token was refused; the next attempt gets another.
        (401 | 429 | 500..=599, _) => Delivery::Retry {
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

    fn payload(body: Option<&str>) -> PushPayload {
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
    fn the_data_are_the_payloads_fields_as_strings_and_from_is_renamed() {
        let m = &message(&payload(Some("hi")), "tok", Duration::from_secs(90))["message"];
        assert_eq!(m["token"], "tok");
        let data = m["data"].as_object().unwrap();
        assert!(data.values().all(Value::is_string));
        assert_eq!(data["seq"], "5");
        assert_eq!(data["id"], "77");
        assert_eq!(data["from_id"], "3");
        assert!(!data.contains_key("from"));
        assert_eq!(data["body"], "hi");
        assert_eq!(m["notification"]["body"], "hi");
        assert_eq!(m["android"]["ttl"], "90s");
        assert_eq!(m["android"]["priority"], "HIGH");
        assert_eq!(m["android"]["collapse_key"], topic("3-4"));
        assert_eq!(m["apns"]["headers"]["apns-collapse-id"], topic("3-4"));
    }

    #[test]
    fn a_long_text_is_cut_on_a_character() {
        let text = "é".repeat(MAX_TEXT_BYTES);
        let m = &message(&payload(Some(&text)), "tok", Duration::from_secs(90))["message"];
        let body = m["data"]["body"].as_str().unwrap();
        assert!(body.len() <= MAX_TEXT_BYTES + '…'.len_utf8() && body.ends_with('…'));
        assert_eq!(m["notification"]["body"], body);
    }

    #[test]
    fn without_preview_there_is_no_text_and_no_notification() {
        let m = message(&payload(None), "tok", Duration::from_secs(90));
        assert!(!m.to_string().contains("hi"));
        assert!(m["message"].get("notification").is_none());
        assert_eq!(
            m["message"]["apns"]["payload"]["aps"]["content-available"],
            1
        );
        let read = PushPayload::Read {
            conversation: "3-4".into(),
            seq: 5,
        };
        let r = &message(&read, "tok", Duration::from_secs(90))["message"];
        assert_eq!(r["data"]["type"], "read");
        assert_eq!(r["android"]["priority"], "NORMAL");
    }

    #[test]
    fn answers_end_the_attempt_as_google_documents() {
        let error = |status: &str, code: &str| {
            json!({"error": {"status": status, "message": "m",
                "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                             "errorCode": code}]}})
            .to_string()
        };
        assert_eq!(outcome(200, None, "{}"), Delivery::Accepted);
        assert_eq!(
            outcome(404, None, &error("NOT_FOUND", "UNREGISTERED")),
            Delivery::Gone
        );
        assert_eq!(
            outcome(400, None, &error("INVALID_ARGUMENT", "UNREGISTERED")),
            Delivery::Gone
        );
        assert!(matches!(
            outcome(400, None, &error("INVALID_ARGUMENT", "INVALID_ARGUMENT")),
            Delivery::Rejected { reason } if reason.contains("INVALID_ARGUMENT")
        ));
        let after = Some(Duration::from_secs(7));
        assert!(matches!(
            outcome(503, after, &error("UNAVAILABLE", "UNAVAILABLE")),
            Delivery::Retry { after: a, .. } if a == after
        ));
        assert!(matches!(outcome(401, None, ""), Delivery::Retry { .. }));
        assert!(matches!(outcome(429, None, ""), Delivery::Retry { .. }));
    }
}

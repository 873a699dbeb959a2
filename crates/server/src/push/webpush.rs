//! Web Push: a browser's subscription, sent to as RFC 8030 says (one POST to the endpoint),
//! the payload encrypted for the browser alone (RFC 8291, aes128gcm) and the request signed
//! with the server's VAPID key (RFC 8292, `vapid.rs`).
//!
//! The endpoint is the client's choice, so every request goes through the SSRF guard
//! (`address.rs`): the client connects only to public addresses and follows no redirect (a
//! public endpoint answering 307 to a private one would go around the guard).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use confab_protocol::{MAX_ENDPOINT_CHARS, PushPayload, PushSubscription};
use reqwest::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, HeaderMap, RETRY_AFTER};
use reqwest::{StatusCode, Url};
use web_push_native::Auth;

use super::address::{self, NotPublic, PublicResolver};
use super::vapid::VapidKeyPair;
use super::{Delivery, Notification, Provider};
use crate::config::PushConfig;

/// The largest encrypted body every push service must take (RFC 8030 section 7.2).
const MAX_BODY: usize = 4096;
/// What aes128gcm adds to the JSON: its header (salt 16, record size 4, key id length 1, the
/// sender's key 65) and, in the one record, a padding delimiter and the 16-byte tag.
const ENCRYPTION_OVERHEAD: usize = 86 + 1 + 16;
/// The longest JSON payload that fits [`MAX_BODY`] once encrypted.
pub const MAX_PLAINTEXT: usize = MAX_BODY - ENCRYPTION_OVERHEAD;
/// How much of a refusal's body goes into the reason: enough for a push service's error
/// message, not a whole page.
const EXCERPT_BYTES: usize = 200;

/// Web Push, for `PushSubscription::Webpush`.
pub struct WebPush {
    client: reqwest::Client,
    vapid: Arc<VapidKeyPair>,
    subject: String,
    allow_private: bool,
    /// A `Retry-After` is cut to this: past it the notification is dropped anyway.
    max_retry_after: Duration,
}

impl WebPush {
    /// The provider, with its HTTP client: `config.request_timeout` per request, no redirects,
    /// no proxy, and (unless `config.allow_private`) only public addresses.
    pub fn new(config: &PushConfig, vapid: Arc<VapidKeyPair>) -> Result<WebPush, String> {
        let mut builder = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .connect_timeout(config.request_timeout)
            .redirect(reqwest::redirect::Policy::none())
            // A proxy would resolve the endpoint itself, out of the guard's sight.
            .no_proxy()
            .user_agent(concat!("confab/", env!("CARGO_PKG_VERSION")));
        if !config.allow_private {
            builder = builder
                .https_only(true)
                .dns_resolver(Arc::new(PublicResolver));
        }
        let client = builder
            .build()
            .map_err(|e| format!("cannot make the Web Push client: {e}"))?;
        Ok(WebPush {
            client,
            vapid,
            subject: config.vapid_subject.clone(),
            allow_private: config.allow_private,
            max_retry_after: config.max_age,
        })
    }
}

#[async_trait]
impl Provider for WebPush {
    async fn deliver(&self, notification: &Notification<'_>) -> Delivery {
        let PushSubscription::Webpush { endpoint, keys, .. } = &notification.due.subscription
        else {
            return rejected("not a Web Push subscription".into());
        };
        let (ua_public, ua_auth) = match decode_keys(&keys.p256dh, &keys.auth) {
            Ok(keys) => keys,
            Err(e) => return rejected(format!("invalid subscription: {e}")),
        };
        let url = match Url::parse(endpoint) {
            Ok(url) => url,
            Err(e) => return rejected(format!("invalid subscription: the endpoint: {e}")),
        };
        // The resolver never sees an IP literal, and the server may have restarted without
        // `--push-allow-private` since the subscription was checked.
        if let Err(e) = address::check_url(&url, self.allow_private) {
            return rejected(e);
        }
        let json = fitted_json(notification.payload);
        let body = match web_push_native::encrypt(json, &ua_public, &ua_auth) {
            Ok(body) => body,
            Err(e) => return rejected(format!("cannot encrypt the payload: {e}")),
        };
        let authorization = match self.vapid.authorization(&url, &self.subject) {
            Ok(a) => a,
            Err(e) => return rejected(e),
        };
        let urgency = match notification.payload {
            PushPayload::Message { .. } => "high",
            // A clear shows nothing: no reason to wake a device on battery for it.
            PushPayload::Read { .. } => "normal",
        };
        let sent = self
            .client
            .post(url)
            .header("TTL", notification.ttl.as_secs())
            .header("Urgency", urgency)
            .header("Topic", super::topic(&notification.due.conversation))
            .header(CONTENT_ENCODING, "aes128gcm")
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(AUTHORIZATION, authorization)
            .body(body)
            .send()
            .await;
        match sent {
            Ok(response) => self.answered(response).await,
            Err(e) => failed(&e),
        }
    }

    /// The keys are a browser's, and the endpoint an https URL on public addresses (unless
    /// `allow_private`).
    async fn validate(&self, subscription: &PushSubscription) -> Result<(), String> {
        validate(subscription)?;
        let PushSubscription::Webpush { endpoint, .. } = subscription else {
            return Err("not a Web Push subscription".into());
        };
        address::check_endpoint(endpoint, self.allow_private).await
    }
}

impl WebPush {
    async fn answered(&self, mut response: reqwest::Response) -> Delivery {
        let status = response.status();
        if status.is_success() {
            return Delivery::Accepted;
        }
        let retry_after = retry_after(response.headers(), SystemTime::now())
            .map(|after| after.min(self.max_retry_after));
        let excerpt = if status.is_client_error() || status.is_server_error() {
            excerpt(&mut response).await
        } else {
            String::new()
        };
        outcome(status, retry_after, &excerpt)
    }
}

/// What a push service's answer means (RFC 8030 section 8, and what push services do).
fn outcome(status: StatusCode, retry_after: Option<Duration>, excerpt: &str) -> Delivery {
    let reason = if excerpt.is_empty() {
        format!("the push service answered {status}")
    } else {
        format!("the push service answered {status}: {excerpt}")
    };
    match status.as_u16() {
        200..=299 => Delivery::Accepted,
        404 | 410 => Delivery::Gone,
        429 | 500..=599 => Delivery::Retry {
            after: retry_after,
            reason,
        },
        // 413 (too large) and the rest of 4xx will not change by trying again; a 3xx is a
        // redirect not followed.
        _ => Delivery::Rejected { reason },
    }
}

fn rejected(reason: String) -> Delivery {
    Delivery::Rejected { reason }
}

/// A request that got no answer: worth another try (a timeout, a refused or reset
/// connection), except when the endpoint now resolves only to non-public addresses.
fn failed(error: &reqwest::Error) -> Delivery {
    let mut reason = error_chain(error);
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if e.downcast_ref::<NotPublic>().is_some() {
            return rejected(reason);
        }
        source = e.source();
    }
    if error.is_timeout() {
        reason = format!("timed out: {reason}");
    }
    Delivery::Retry {
        after: None,
        reason,
    }
}

/// The error and its causes on one line, without the URL: an endpoint's path is the
/// subscription's secret and has no place in logs.
fn error_chain(error: &reqwest::Error) -> String {
    let mut text = String::new();
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        let part = match e.downcast_ref::<reqwest::Error>() {
            Some(r) if r.url().is_some() => {
                let mut r = format!("{r}");
                if let Some(at) = r.find(" for url (") {
                    r.truncate(at);
                }
                r
            }
            _ => e.to_string(),
        };
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
        source = e.source();
    }
    text
}

/// The first bytes of a refusal's body, on one line, for the reason.
async fn excerpt(response: &mut reqwest::Response) -> String {
    let mut bytes = Vec::new();
    while bytes.len() < EXCERPT_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
            _ => break,
        }
    }
    bytes.truncate(EXCERPT_BYTES);
    let text = String::from_utf8_lossy(&bytes);
    let line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `Retry-After` as seconds or as an HTTP date (RFC 9110 section 10.2.3); a date in the past
/// is now.
fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The payload as JSON, its preview shortened when the whole would not fit a push service's
/// 4 KiB once encrypted (a long message; the notification says there is one all the same).
fn fitted_json(payload: &PushPayload) -> Vec<u8> {
    let json = serde_json::to_vec(payload).expect("a payload always serializes");
    let PushPayload::Message {
        body: Some(text), ..
    } = payload
    else {
        return json;
    };
    if json.len() <= MAX_PLAINTEXT || text.is_empty() {
        return json;
    }
    let mut shortened = payload.clone();
    let mut with_prefix = |end: usize| {
        if let PushPayload::Message { body, .. } = &mut shortened {
            *body = Some(format!("{}…", &text[..end]));
        }
        serde_json::to_vec(&shortened).expect("a payload always serializes")
    };
    // The longest prefix that fits, by bisection over the character boundaries: escapes make
    // the JSON's length no simple function of the text's.
    let ends: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
    let (mut fits, mut too_long) = (0, ends.len());
    while too_long - fits > 1 {
        let mid = usize::midpoint(fits, too_long);
        if with_prefix(ends[mid]).len() <= MAX_PLAINTEXT {
            fits = mid;
        } else {
            too_long = mid;
        }
    }
    with_prefix(ends[fits])
}

/// Checks a Web Push subscription when it is set (the API's 400): `p256dh` is an
/// uncompressed P-256 point and `auth` 16 bytes, both base64url (padded or not), and the
/// endpoint a URL of at most [`MAX_ENDPOINT_CHARS`]. Where the endpoint may point is
/// [`address::check_endpoint`]'s to say.
pub fn validate(subscription: &PushSubscription) -> Result<(), String> {
    let PushSubscription::Webpush { endpoint, keys, .. } = subscription else {
        return Err("not a Web Push subscription".into());
    };
    if endpoint.chars().count() > MAX_ENDPOINT_CHARS {
        return Err(format!(
            "the endpoint is longer than {MAX_ENDPOINT_CHARS} characters"
        ));
    }
    Url::parse(endpoint).map_err(|e| format!("the endpoint is not a URL: {e}"))?;
    decode_keys(&keys.p256dh, &keys.auth).map(|_| ())
}

/// The subscription's keys, as browsers give them: base64url, with or without padding.
fn decode_keys(p256dh: &str, auth: &str) -> Result<(p256::PublicKey, Auth), String> {
    let decode = |s: &str| {
        let s = s.trim();
        if s.ends_with('=') {
            URL_SAFE.decode(s)
        } else {
            URL_SAFE_NO_PAD.decode(s)
        }
    };
    let point = decode(p256dh).map_err(|_| "keys.p256dh is not base64url".to_owned())?;
    // Browsers send the uncompressed form; RFC 8291 names it, so nothing else is taken.
    if point.len() != 65 || point[0] != 0x04 {
        return Err("keys.p256dh is not an uncompressed P-256 point (65 bytes)".into());
    }
    let public = p256::PublicKey::from_sec1_bytes(&point)
        .map_err(|_| "keys.p256dh is not a point on P-256".to_owned())?;
    let secret = decode(auth).map_err(|_| "keys.auth is not base64url".to_owned())?;
    if secret.len() != 16 {
        return Err("keys.auth is not 16 bytes".into());
    }
    Ok((public, Auth::clone_from_slice(&secret)))
}

#[cfg(test)]
mod tests;

//! APNs for tests: HTTP/2 only (h2c with prior knowledge), token-based authentication with
//! a key pair it makes, and the checks APNs makes of each request, answered with APNs'
//! statuses and reasons.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use jwt_simple::prelude::{
    Clock, ECDSAP256PublicKeyLike, ES256KeyPair, ES256PublicKey, NoCustomClaims,
    VerificationOptions,
};
use serde_json::{Value, json};

use super::gateway::{Log, Server, answer, lock, read_body, retry_header, serve};

/// APNs refuses a larger payload.
pub const MAX_PAYLOAD_BYTES: usize = 4096;
/// APNs refuses a provider token issued longer ago.
const TOKEN_MAX_AGE: Duration = Duration::from_secs(3600);
/// APNs refuses a new provider token sooner than this after the previous one.
const TOKEN_MIN_REFRESH: Duration = Duration::from_secs(20 * 60);

/// APNs on `127.0.0.1`: configure the server with [`url`](ApnsDouble::url),
/// [`key_path`](ApnsDouble::key_path), [`key_id`](ApnsDouble::key_id),
/// [`team_id`](ApnsDouble::team_id) and [`topic`](ApnsDouble::topic).
///
/// By default every request that passes the checks is answered 200.
pub struct ApnsDouble {
    state: Arc<State>,
    server: Server,
    key_path: PathBuf,
    _dir: tempfile::TempDir,
}

/// One request APNs received, and how it answered.
#[derive(Clone, Debug)]
pub struct ApnsRequest {
    /// The device token of the path (`/3/device/<token>`).
    pub device_token: String,
    /// Every header, by lower-case name (`apns-topic`, `apns-push-type`, `authorization`…).
    pub headers: BTreeMap<String, String>,
    /// The payload as JSON (`Null` if it was not JSON).
    pub payload: Value,
    /// The payload's size in bytes.
    pub size: usize,
    /// The status APNs answered.
    pub status: u16,
    /// The `reason` APNs answered with, when not 200.
    pub reason: Option<String>,
}

impl ApnsRequest {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

struct State {
    public_key: ES256PublicKey,
    key_id: String,
    team_id: String,
    topic: String,
    log: Log<ApnsRequest>,
    script: Mutex<HashMap<String, VecDeque<(u16, String)>>>,
    retry_after: Mutex<Option<u64>>,
    tokens: Mutex<Tokens>,
}

/// The provider tokens seen.
#[derive(Default)]
struct Tokens {
    /// Each distinct token, in the order first seen.
    seen: Vec<String>,
    /// Tokens the test made APNs call expired.
    expired: HashSet<String>,
    /// When the last new token was first seen.
    last_new: Option<Instant>,
}

impl ApnsDouble {
    /// Starts APNs for the app `topic`, with a new signing key.
    pub async fn start(topic: &str) -> ApnsDouble {
        let key = ES256KeyPair::generate();
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("no temporary dir: {e}"));
        let key_path = dir.path().join("AuthKey.p8");
        let pem = key
            .to_pem()
            .unwrap_or_else(|e| panic!("cannot write the key as PEM: {e}"));
        std::fs::write(&key_path, pem).unwrap_or_else(|e| panic!("cannot write the key: {e}"));
        let state = Arc::new(State {
            public_key: key.public_key(),
            key_id: "TESTKEY123".into(),
            team_id: "TESTTEAM45".into(),
            topic: topic.to_owned(),
            log: Log::new(),
            script: Mutex::default(),
            retry_after: Mutex::default(),
            tokens: Mutex::default(),
        });
        let handler = Arc::clone(&state);
        let server = serve(true, move |request| {
            let state = Arc::clone(&handler);
            async move { state.handle(request).await }
        })
        .await;
        ApnsDouble {
            state,
            server,
            key_path,
            _dir: dir,
        }
    }

    /// The endpoint (`http://127.0.0.1:PORT`: h2c).
    pub fn url(&self) -> String {
        format!("http://{}", self.server.addr)
    }

    /// The `.p8` signing key (PKCS#8 PEM) to configure the server with.
    pub fn key_path(&self) -> &Path {
        &self.key_path
    }

    pub fn key_id(&self) -> &str {
        &self.state.key_id
    }

    pub fn team_id(&self) -> &str {
        &self.state.team_id
    }

    /// The app's bundle id: the only `apns-topic` accepted.
    pub fn topic(&self) -> &str {
        &self.state.topic
    }

    /// The statuses to answer the next requests for `device_token` with, in order (then
    /// 200), each with APNs' usual reason for it (400 `BadDeviceToken`, 410 `Unregistered`,
    /// 429 `TooManyRequests`, 500 `InternalServerError`, 503 `ServiceUnavailable`…).
    pub fn script(&self, device_token: &str, statuses: impl IntoIterator<Item = u16>) {
        let answers = statuses
            .into_iter()
            .map(|s| (s, usual_reason(s).to_owned()));
        lock(&self.state.script)
            .entry(device_token.to_owned())
            .or_default()
            .extend(answers);
    }

    /// The next request for `device_token` is answered `status` with `reason`.
    pub fn script_reason(&self, device_token: &str, status: u16, reason: &str) {
        lock(&self.state.script)
            .entry(device_token.to_owned())
            .or_default()
            .push_back((status, reason.to_owned()));
    }

    /// The `Retry-After` (seconds) sent with scripted 429 and 5xx answers.
    pub fn set_retry_after(&self, seconds: Option<u64>) {
        *lock(&self.state.retry_after) = seconds;
    }

    /// Every provider token seen so far is refused from now on with 403
    /// `ExpiredProviderToken`, as if an hour had passed.
    pub fn expire_provider_tokens(&self) {
        let mut tokens = lock(&self.state.tokens);
        let seen = tokens.seen.clone();
        tokens.expired.extend(seen);
    }

    /// The distinct provider tokens seen, in order.
    pub fn provider_tokens(&self) -> Vec<String> {
        lock(&self.state.tokens).seen.clone()
    }

    /// Every request so far.
    pub fn received(&self) -> Vec<ApnsRequest> {
        self.state.log.all()
    }

    /// Waits until `n` requests have come; panics after `timeout`.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<ApnsRequest> {
        self.state.log.wait_for(n, timeout, "APNs double").await
    }
}

/// The reason APNs gives with a status when nothing more specific applies.
fn usual_reason(status: u16) -> &'static str {
    match status {
        200 => "",
        400 => "BadDeviceToken",
        403 => "InvalidProviderToken",
        404 => "BadPath",
        405 => "MethodNotAllowed",
        410 => "Unregistered",
        413 => "PayloadTooLarge",
        429 => "TooManyRequests",
        503 => "ServiceUnavailable",
        _ => "InternalServerError",
    }
}

impl State {
    async fn handle(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let post = request.method() == hyper::Method::POST;
        let path = request.uri().path().to_owned();
        let headers: BTreeMap<String, String> = request
            .headers()
            .iter()
            .map(|(name, value)| {
                let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                (name.as_str().to_owned(), value)
            })
            .collect();
        let body = read_body(request).await;
        let mut record = ApnsRequest {
            device_token: path.strip_prefix("/3/device/").unwrap_or("").to_owned(),
            headers,
            payload: serde_json::from_slice(&body).unwrap_or(Value::Null),
            size: body.len(),
            status: 200,
            reason: None,
        };
        let checked = if post {
            self.check(&path, &record, &body)
        } else {
            Err((405, "MethodNotAllowed".to_owned()))
        };
        let (status, reason) = match checked {
            Err(refusal) => refusal,
            Ok(()) => lock(&self.script)
                .get_mut(&record.device_token)
                .and_then(VecDeque::pop_front)
                .unwrap_or((200, String::new())),
        };
        record.status = status;
        let reply = if status == 200 {
            let id = format!("00000000-0000-0000-0000-{:012}", self.log.len());
            answer(200, &[("apns-id", id)], "")
        } else {
            record.reason = Some(reason.clone());
            let mut body = json!({ "reason": reason });
            if status == 410 {
                // When APNs learned the token is no longer valid (ms).
                body["timestamp"] = json!(Clock::now_since_epoch().as_millis());
            }
            let headers = retry_header(status, *lock(&self.retry_after));
            answer(status, &headers, body.to_string())
        };
        self.log.push(record);
        reply
    }

    /// APNs' checks, in the order it makes them: the path and the device token, the
    /// provider token, the headers, the payload.
    fn check(&self, path: &str, request: &ApnsRequest, body: &[u8]) -> Result<(), (u16, String)> {
        let refuse = |status: u16, reason: &str| Err((status, reason.to_owned()));
        let Some(token) = path.strip_prefix("/3/device/") else {
            return refuse(404, "BadPath");
        };
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return refuse(400, "BadDeviceToken");
        }
        self.check_provider_token(request.header("authorization"))?;
        match request.header("apns-topic") {
            None => return refuse(400, "MissingTopic"),
            Some(topic) if topic != self.topic => return refuse(400, "TopicDisallowed"),
            Some(_) => {}
        }
        let push_type = request.header("apns-push-type");
        if !matches!(push_type, Some("alert" | "background")) {
            return refuse(400, "InvalidPushType");
        }
        let priority = request.header("apns-priority").unwrap_or("10");
        if !matches!(priority, "1" | "5" | "10") {
            return refuse(400, "BadPriority");
        }
        if let Some(expiration) = request.header("apns-expiration")
            && expiration.parse::<u64>().is_err()
        {
            return refuse(400, "BadExpirationDate");
        }
        if request
            .header("apns-collapse-id")
            .is_some_and(|id| id.len() > 64)
        {
            return refuse(400, "BadCollapseId");
        }
        if body.is_empty() {
            return refuse(400, "PayloadEmpty");
        }
        if body.len() > MAX_PAYLOAD_BYTES {
            return refuse(413, "PayloadTooLarge");
        }
        let Some(aps) = request.payload.get("aps").and_then(Value::as_object) else {
            return refuse(400, "BadPayload");
        };
        // A push type must match what the payload asks of the device.
        if push_type == Some("alert") && !aps.contains_key("alert") {
            return refuse(400, "InvalidPushType");
        }
        if push_type == Some("background") {
            if aps.get("content-available") != Some(&json!(1)) || aps.contains_key("alert") {
                return refuse(400, "InvalidPushType");
            }
            if priority == "10" {
                return refuse(400, "BadPriority");
            }
        }
        Ok(())
    }

    /// `authorization: bearer <JWT>`: ES256 by this double's key, `kid` and `iss` as
    /// configured, `iat` within the hour, not refreshed within 20 minutes of the last.
    fn check_provider_token(&self, authorization: Option<&str>) -> Result<(), (u16, String)> {
        let refuse = |status: u16, reason: &str| Err((status, reason.to_owned()));
        let Some(authorization) = authorization else {
            return refuse(403, "MissingProviderToken");
        };
        let Some(jwt) = authorization.strip_prefix("bearer ") else {
            return refuse(403, "InvalidProviderToken");
        };
        let options = VerificationOptions {
            required_key_id: Some(self.key_id.clone()),
            allowed_issuers: Some(HashSet::from([self.team_id.clone()])),
            ..VerificationOptions::default()
        };
        let Ok(claims) = self
            .public_key
            .verify_token::<NoCustomClaims>(jwt, Some(options))
        else {
            return refuse(403, "InvalidProviderToken");
        };
        let Some(issued) = claims.issued_at else {
            return refuse(403, "InvalidProviderToken");
        };
        let mut tokens = lock(&self.tokens);
        let age = Clock::now_since_epoch()
            .as_secs()
            .saturating_sub(issued.as_secs());
        if tokens.expired.contains(jwt) || age > TOKEN_MAX_AGE.as_secs() {
            return refuse(403, "ExpiredProviderToken");
        }
        if !tokens.seen.iter().any(|seen| seen == jwt) {
            // A new token is welcome only when the last one expired or is 20 minutes old.
            let last_expired = tokens
                .seen
                .last()
                .is_none_or(|t| tokens.expired.contains(t));
            let too_soon = tokens
                .last_new
                .is_some_and(|at| at.elapsed() < TOKEN_MIN_REFRESH);
            if too_soon && !last_expired {
                return refuse(429, "TooManyProviderTokenUpdates");
            }
            tokens.seen.push(jwt.to_owned());
            tokens.last_new = Some(Instant::now());
        }
        Ok(())
    }
}

//! A Web Push service for tests: it hands out subscriptions made like a browser's (a P-256
//! key pair and a 16-byte auth secret per subscription), and checks each push as a real
//! service and the browser together would: the VAPID signature (RFC 8292), the headers of
//! RFC 8030, and the payload decrypted with the subscription's private key (RFC 8291).
//!
//! A request that fails a check is answered as a push service answers it (401 or 403 for
//! VAPID, 400 for the rest, 413 past 4 KiB, 404 for an unknown subscription) and recorded
//! with the reason, so a test can assert that the server sent nothing malformed.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use p256::elliptic_curve::sec1::ToEncodedPoint as _;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use web_push_native::jwt_simple::algorithms::{
    ECDSAP256PublicKeyLike as _, ES256KeyPair, ES256PublicKey,
};
use web_push_native::jwt_simple::claims::NoCustomClaims;
use web_push_native::jwt_simple::common::VerificationOptions;
use web_push_native::jwt_simple::prelude::{Clock, Duration as JwtDuration};

/// The largest encrypted body a push service must take (RFC 8030 section 7.2); past it, 413.
pub const MAX_BODY: usize = 4096;
/// The longest a VAPID signature may be valid for (RFC 8292 section 2).
const MAX_VALIDITY: Duration = Duration::from_secs(24 * 3600);

/// One request the receiver got, whether it passed its checks or not.
#[derive(Clone, Debug)]
pub struct Received {
    /// The request's path, e.g. `/alice-phone`.
    pub path: String,
    /// The decrypted payload, `Null` when it could not be decrypted. Read even when another
    /// check failed: a test tells a delivery by `failure` being `None`.
    pub payload: Value,
    /// The `TTL` header, in seconds.
    pub ttl: Option<u64>,
    /// The `Urgency` header.
    pub urgency: Option<String>,
    /// The `Topic` header.
    pub topic: Option<String>,
    /// Whether the VAPID `Authorization` header passed every check.
    pub vapid_ok: bool,
    /// The `k=` of the `Authorization` header: the server's public key, base64url.
    pub server_key: Option<String>,
    /// The JWT's `sub`, once its signature verified.
    pub subject: Option<String>,
    /// The status the receiver answered.
    pub status: u16,
    /// The first check the request failed; `None` when it passed them all.
    pub failure: Option<String>,
}

/// A scripted answer: a status, and a `Retry-After` to give with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub retry_after: Option<String>,
}

impl Reply {
    /// An answer with `status` and no `Retry-After`.
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            retry_after: None,
        }
    }

    /// The same answer with `Retry-After: value` (seconds, or an HTTP date).
    pub fn retry_after(mut self, value: impl Into<String>) -> Reply {
        self.retry_after = Some(value.into());
        self
    }
}

impl From<u16> for Reply {
    fn from(status: u16) -> Reply {
        Reply::status(status)
    }
}

/// The browser's side of a subscription: what decrypts its pushes.
#[derive(Clone)]
struct Keys {
    secret: p256::SecretKey,
    auth: [u8; 16],
}

#[derive(Default)]
struct Inner {
    subscriptions: HashMap<String, Keys>,
    scripts: HashMap<String, VecDeque<Reply>>,
    expected_key: Option<Vec<u8>>,
    received: Vec<Received>,
}

struct Shared {
    origin: String,
    inner: Mutex<Inner>,
    /// Woken at each request recorded.
    arrived: Notify,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A test that panicked while holding it left nothing half-done worth refusing.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A Web Push service on 127.0.0.1; stops when dropped.
pub struct WebPushReceiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for WebPushReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl WebPushReceiver {
    /// Starts one on a port of its own; panics if it cannot listen.
    pub async fn start() -> WebPushReceiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("the Web Push receiver cannot listen on 127.0.0.1");
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let shared = Arc::new(Shared {
            origin: format!("http://{addr}"),
            inner: Mutex::new(Inner::default()),
            arrived: Notify::new(),
        });
        let router = axum::Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&shared));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        WebPushReceiver { addr, shared, task }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`: the `aud` a VAPID signature for it must name.
    pub fn origin(&self) -> &str {
        &self.shared.origin
    }

    /// The endpoint URL of the subscription at `path` (`"a"` and `"/a"` are the same).
    pub fn endpoint(&self, path: &str) -> String {
        format!("{}{}", self.shared.origin, normalize(path))
    }

    /// A new subscription at `path` as `PUT /v1/push/subscription` takes it:
    /// `{"kind":"webpush","endpoint","keys":{"p256dh","auth"},"preview":false}`. Its keys are
    /// made as a browser makes them, new for each call (a later call replaces them).
    pub fn subscription_json(&self, path: &str) -> Value {
        self.subscription_json_with_preview(path, false)
    }

    /// [`subscription_json`](Self::subscription_json) with `"preview"` set.
    pub fn subscription_json_with_preview(&self, path: &str, preview: bool) -> Value {
        let key = ES256KeyPair::generate();
        let secret = p256::SecretKey::from_slice(&key.to_bytes())
            .expect("a generated P-256 key is a valid secret");
        let auth: [u8; 16] = rand::random();
        let p256dh = URL_SAFE_NO_PAD.encode(secret.public_key().to_encoded_point(false));
        let path = normalize(path);
        self.shared
            .lock()
            .subscriptions
            .insert(path.clone(), Keys { secret, auth });
        json!({
            "kind": "webpush",
            "endpoint": format!("{}{path}", self.shared.origin),
            "keys": {"p256dh": p256dh, "auth": URL_SAFE_NO_PAD.encode(auth)},
            "preview": preview,
        })
    }

    /// From now on, a push signed with any other key than `public_key` (base64url, the
    /// server's `GET /v1/push/vapid`) is refused with 403, as a push service refuses one
    /// whose key is not the one the browser subscribed with.
    pub fn expect_server_key(&self, public_key: &str) {
        let key = decode(public_key).expect("the expected server key is base64url");
        self.shared.lock().expected_key = Some(key);
    }

    /// The answers to the next well-formed pushes to `path`, in order; after them, 201.
    /// E.g. `respond_with("a", [Reply::status(503).retry_after("2"), 201.into()])`.
    pub fn respond_with<R: Into<Reply>>(&self, path: &str, replies: impl IntoIterator<Item = R>) {
        self.shared
            .lock()
            .scripts
            .entry(normalize(path))
            .or_default()
            .extend(replies.into_iter().map(Into::into));
    }

    /// Every request so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.shared.lock().received.clone()
    }

    /// The requests so far that failed a check.
    pub fn failures(&self) -> Vec<Received> {
        let inner = self.shared.lock();
        inner
            .received
            .iter()
            .filter(|r| r.failure.is_some())
            .cloned()
            .collect()
    }

    /// Waits until `n` requests have arrived and returns them all; panics after `timeout`,
    /// saying what did arrive.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let arrived = self.shared.arrived.notified();
            tokio::pin!(arrived);
            // Registered before the count is read, so a push landing in between wakes it.
            arrived.as_mut().enable();
            let received = self.received();
            if received.len() >= n {
                return received;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                panic!(
                    "the Web Push receiver got {} of {n} requests in {timeout:?}: {received:#?}",
                    received.len()
                );
            }
        }
    }
}

fn normalize(path: &str) -> String {
    if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    }
}

/// base64url, with or without padding.
fn decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if s.ends_with('=') {
        URL_SAFE.decode(s).ok()
    } else {
        URL_SAFE_NO_PAD.decode(s).ok()
    }
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let (keys, expected_key) = {
        let inner = shared.lock();
        (
            inner.subscriptions.get(&path).cloned(),
            inner.expected_key.clone(),
        )
    };
    let mut record = examine(
        &shared.origin,
        keys.as_ref(),
        expected_key.as_deref(),
        &method,
        &headers,
        &body,
    );
    record.path = path;
    let reply = if record.failure.is_some() {
        Reply::status(record.status)
    } else {
        let scripted = shared
            .lock()
            .scripts
            .get_mut(&record.path)
            .and_then(VecDeque::pop_front);
        scripted.unwrap_or(Reply::status(201))
    };
    record.status = reply.status;
    let body = match &record.failure {
        Some(failure) => json!({"error": failure}).to_string(),
        None if reply.status >= 300 => format!("scripted {}", reply.status),
        None => String::new(),
    };
    let count = {
        let mut inner = shared.lock();
        inner.received.push(record);
        inner.received.len()
    };
    shared.arrived.notify_waiters();

    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, body).into_response();
    if let Some(value) = reply.retry_after.and_then(|v| v.parse().ok()) {
        response.headers_mut().insert("retry-after", value);
    }
    if status == StatusCode::CREATED {
        // Real services give the message's own URL.
        let location = format!("/m/{count}").parse().expect("a valid header value");
        response.headers_mut().insert("location", location);
    }
    response
}

/// Checks one request; the first failure sets `status` and `failure`, and every field that
/// could be read is filled in either way.
fn examine(
    origin: &str,
    keys: Option<&Keys>,
    expected_key: Option<&[u8]>,
    method: &Method,
    headers: &HeaderMap,
    body: &[u8],
) -> Received {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let mut record = Received {
        path: String::new(),
        payload: Value::Null,
        ttl: header("ttl").and_then(|t| t.trim().parse().ok()),
        urgency: header("urgency"),
        topic: header("topic"),
        vapid_ok: false,
        server_key: None,
        subject: None,
        status: 201,
        failure: None,
    };
    if method != Method::POST {
        fail(&mut record, 405, format!("{method} is not POST"));
    }
    let Some(keys) = keys else {
        fail(&mut record, 404, "no subscription at this path".into());
        return record;
    };
    match check_vapid(origin, expected_key, header("authorization").as_deref()) {
        Ok((server_key, subject)) => {
            record.vapid_ok = true;
            record.server_key = Some(server_key);
            record.subject = Some(subject);
        }
        Err((status, why, server_key)) => {
            record.server_key = server_key;
            fail(&mut record, status, why);
        }
    }
    if header("content-encoding").as_deref() != Some("aes128gcm") {
        fail(&mut record, 400, "Content-Encoding is not aes128gcm".into());
    }
    if record.ttl.is_none() {
        fail(&mut record, 400, "no TTL, or not a number".into());
    }
    let urgencies = ["very-low", "low", "normal", "high"];
    if !record
        .urgency
        .as_deref()
        .is_some_and(|u| urgencies.contains(&u))
    {
        let why = format!("Urgency {:?}", record.urgency);
        fail(&mut record, 400, why);
    }
    let topic_ok = |t: &str| {
        !t.is_empty()
            && t.len() <= 32
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if !record.topic.as_deref().is_some_and(topic_ok) {
        let why = format!("Topic {:?}", record.topic);
        fail(&mut record, 400, why);
    }
    if body.len() > MAX_BODY {
        fail(&mut record, 413, format!("a body of {} bytes", body.len()));
        return record;
    }
    let auth = web_push_native::Auth::clone_from_slice(&keys.auth);
    match web_push_native::decrypt(body.to_vec(), &keys.secret, &auth) {
        Ok(plain) => match serde_json::from_slice(&plain) {
            Ok(payload) => record.payload = payload,
            Err(e) => fail(&mut record, 400, format!("the payload is not JSON: {e}")),
        },
        Err(e) => fail(&mut record, 400, format!("the body does not decrypt: {e}")),
    }
    record
}

/// Records the first failure only: the answer a push service would give first.
fn fail(record: &mut Received, status: u16, why: String) {
    if record.failure.is_none() {
        record.status = status;
        record.failure = Some(why);
    }
}

/// Checks `Authorization: vapid t=<jwt>, k=<key>`: the key (the expected one, if set), the
/// ES256 signature, `aud` = this origin, `exp` ahead and at most 24 hours ahead, and a `sub`.
/// Gives the key and `sub`, or the status, the reason and the key if it was read.
fn check_vapid(
    origin: &str,
    expected_key: Option<&[u8]>,
    authorization: Option<&str>,
) -> Result<(String, String), (u16, String, Option<String>)> {
    let unauthorized = |why: &str| (401, why.to_owned(), None);
    let value = authorization.ok_or_else(|| unauthorized("no Authorization"))?;
    let (scheme, params) = value
        .split_once(' ')
        .ok_or_else(|| unauthorized("Authorization is not `vapid t=…, k=…`"))?;
    if !scheme.eq_ignore_ascii_case("vapid") {
        return Err(unauthorized("Authorization's scheme is not vapid"));
    }
    let mut token = None;
    let mut key = None;
    for param in params.split(',') {
        match param.trim().split_once('=') {
            Some(("t", v)) => token = Some(v.trim()),
            Some(("k", v)) => key = Some(v.trim()),
            _ => {}
        }
    }
    let (Some(token), Some(key_text)) = (token, key) else {
        return Err(unauthorized("Authorization lacks t= or k="));
    };
    let with_key = |status: u16, why: String| (status, why, Some(key_text.to_owned()));
    let key_bytes = decode(key_text).ok_or_else(|| with_key(401, "k= is not base64url".into()))?;
    if key_bytes.len() != 65 {
        return Err(with_key(401, "k= is not an uncompressed P-256 key".into()));
    }
    let public = ES256PublicKey::from_bytes(&key_bytes)
        .map_err(|e| with_key(401, format!("k= is not a P-256 key: {e}")))?;
    if expected_key.is_some_and(|expected| expected != key_bytes.as_slice()) {
        return Err(with_key(403, "k= is not the expected server key".into()));
    }
    let options = VerificationOptions {
        allowed_audiences: Some(HashSet::from([origin.to_owned()])),
        time_tolerance: Some(JwtDuration::from_secs(60)),
        ..Default::default()
    };
    let claims = public
        .verify_token::<NoCustomClaims>(token, Some(options))
        .map_err(|e| with_key(401, format!("the VAPID token does not verify: {e}")))?;
    let now = Clock::now_since_epoch();
    let exp = claims
        .expires_at
        .ok_or_else(|| with_key(401, "the VAPID token has no exp".into()))?;
    if exp <= now {
        return Err(with_key(401, "the VAPID token has expired".into()));
    }
    if (exp - now).as_secs() > MAX_VALIDITY.as_secs() {
        return Err(with_key(
            401,
            "the VAPID token's exp is over 24 h ahead".into(),
        ));
    }
    let audiences = claims.audiences.map(|a| a.into_set()).unwrap_or_default();
    if !audiences.contains(origin) {
        return Err(with_key(
            401,
            format!("the VAPID token's aud is not {origin}"),
        ));
    }
    let subject = claims
        .subject
        .filter(|s| s.starts_with("mailto:") || s.starts_with("https:"))
        .ok_or_else(|| with_key(401, "the VAPID token's sub is not mailto: or https:".into()))?;
    Ok((key_text.to_owned(), subject))
}

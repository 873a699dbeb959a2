//! A Matrix push gateway for tests (the part of Sygnal a server talks to): it checks each
//! request as Sygnal parses it, records it, and answers as scripted.
//!
//! Also here, for the other doubles of this folder: the HTTP server they run on and the log
//! a test waits on.

use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// The one endpoint of the Push Gateway API v1.
pub const NOTIFY_PATH: &str = "/_matrix/push/v1/notify";

/// A push gateway on `127.0.0.1`: configure the server with [`url`](GatewayReceiver::url).
///
/// By default every well-formed request is answered 200 with no rejected pushkey.
pub struct GatewayReceiver {
    state: Arc<State>,
    server: Server,
}

/// One request the gateway received, and how it answered.
#[derive(Clone, Debug)]
pub struct GatewayRequest {
    pub path: String,
    /// The body as JSON (`Null` if it was not JSON).
    pub body: Value,
    /// The status the gateway answered.
    pub status: u16,
    /// Why the gateway refused the request (400), when a check failed.
    pub error: Option<String>,
}

impl GatewayRequest {
    /// The body's `notification`.
    pub fn notification(&self) -> &Value {
        &self.body["notification"]
    }

    /// The first device's pushkey.
    pub fn pushkey(&self) -> Option<&str> {
        self.notification()["devices"][0]["pushkey"].as_str()
    }
}

struct State {
    log: Log<GatewayRequest>,
    script: Mutex<HashMap<String, VecDeque<u16>>>,
    rejected: Mutex<HashSet<String>>,
    retry_after: Mutex<Option<u64>>,
}

impl GatewayReceiver {
    /// Starts the gateway on `127.0.0.1:0`.
    pub async fn start() -> GatewayReceiver {
        let state = Arc::new(State {
            log: Log::new(),
            script: Mutex::default(),
            rejected: Mutex::default(),
            retry_after: Mutex::default(),
        });
        let handler = Arc::clone(&state);
        let server = serve(false, move |request| {
            let state = Arc::clone(&handler);
            async move { state.handle(request).await }
        })
        .await;
        GatewayReceiver { state, server }
    }

    /// The gateway's base URL (the server appends [`NOTIFY_PATH`]).
    pub fn url(&self) -> String {
        format!("http://{}", self.server.addr)
    }

    /// The statuses to answer the next requests for `pushkey` with, in order (then 200).
    pub fn script(&self, pushkey: &str, statuses: impl IntoIterator<Item = u16>) {
        lock(&self.state.script)
            .entry(pushkey.to_owned())
            .or_default()
            .extend(statuses);
    }

    /// Lists `pushkey` in `rejected` from now on, as a gateway does when the push service
    /// says the device is gone.
    pub fn reject(&self, pushkey: &str) {
        lock(&self.state.rejected).insert(pushkey.to_owned());
    }

    /// The `Retry-After` (seconds) sent with scripted 429 and 5xx answers.
    pub fn set_retry_after(&self, seconds: Option<u64>) {
        *lock(&self.state.retry_after) = seconds;
    }

    /// Every request so far.
    pub fn received(&self) -> Vec<GatewayRequest> {
        self.state.log.all()
    }

    /// Waits until `n` requests have come; panics after `timeout`.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<GatewayRequest> {
        self.state.log.wait_for(n, timeout, "push gateway").await
    }
}

impl State {
    async fn handle(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = request.uri().path().to_owned();
        let post = request.method() == hyper::Method::POST;
        let bytes = read_body(request).await;
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let mut record = GatewayRequest {
            path: path.clone(),
            body,
            status: 200,
            error: None,
        };
        let checked = if path != NOTIFY_PATH {
            Err((404, format!("no endpoint {path}")))
        } else if !post {
            Err((405, "only POST".to_owned()))
        } else {
            check_notify(&record.body).map_err(|e| (400, e))
        };
        let reply = match checked {
            Err((status, error)) => {
                record.error = Some(error.clone());
                answer(status, &[], json!({ "error": error }).to_string())
            }
            Ok(pushkeys) => {
                let scripted = pushkeys
                    .first()
                    .and_then(|key| lock(&self.script).get_mut(*key)?.pop_front());
                match scripted.filter(|status| *status != 200) {
                    Some(status) => {
                        let retry_after = *lock(&self.retry_after);
                        let headers = retry_header(status, retry_after);
                        answer(status, &headers, format!("scripted {status}"))
                    }
                    None => {
                        let rejected = lock(&self.rejected);
                        let keys: Vec<&str> = pushkeys
                            .into_iter()
                            .filter(|key| rejected.contains(*key))
                            .collect();
                        answer(200, &[], json!({ "rejected": keys }).to_string())
                    }
                }
            }
        };
        record.status = reply.status().as_u16();
        self.log.push(record);
        reply
    }
}

/// Checks a notify body as Sygnal parses it: a `notification` object, typed optional fields,
/// a non-empty `devices` list each with a string `app_id` and `pushkey`. The pushkeys.
fn check_notify(body: &Value) -> Result<Vec<&str>, String> {
    let notification = body
        .get("notification")
        .and_then(Value::as_object)
        .ok_or("Invalid notification: expecting object in 'notification' key")?;
    for key in [
        "event_id",
        "room_id",
        "type",
        "sender",
        "sender_display_name",
        "room_name",
        "room_alias",
        "membership",
    ] {
        if notification.get(key).is_some_and(|v| !v.is_string()) {
            return Err(format!("{key} is of invalid type"));
        }
    }
    if let Some(prio) = notification.get("prio")
        && !matches!(prio.as_str(), Some("high" | "low"))
    {
        return Err("prio must be high or low".into());
    }
    if notification.get("content").is_some_and(|v| !v.is_object()) {
        return Err("content is of invalid type".into());
    }
    if let Some(counts) = notification.get("counts") {
        let counts = counts.as_object().ok_or("counts is of invalid type")?;
        for key in ["unread", "missed_calls"] {
            if counts.get(key).is_some_and(|v| !v.is_u64()) {
                return Err(format!("{key} is of invalid type"));
            }
        }
    }
    let devices = notification
        .get("devices")
        .and_then(Value::as_array)
        .ok_or("Expected list in 'devices' key")?;
    if devices.is_empty() {
        return Err("No devices in notification".into());
    }
    let mut pushkeys = Vec::new();
    for device in devices {
        let app_id = device.get("app_id").and_then(Value::as_str);
        if app_id.is_none() {
            return Err("Device with missing or non-string app_id".into());
        }
        let pushkey = device
            .get("pushkey")
            .and_then(Value::as_str)
            .ok_or("Device with missing or non-string pushkey")?;
        if device.get("pushkey_ts").is_some_and(|v| !v.is_u64()) {
            return Err("pushkey_ts is of invalid type".into());
        }
        for key in ["data", "tweaks"] {
            if device.get(key).is_some_and(|v| !v.is_object()) {
                return Err(format!("{key} is of invalid type"));
            }
        }
        pushkeys.push(pushkey);
    }
    Ok(pushkeys)
}

/// A test double's HTTP server; dropping it stops it and its connections.
pub(super) struct Server {
    pub(super) addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `handle` on `127.0.0.1:0`: HTTP/1.1 and h2c, or h2c only (`http2_only`, as APNs).
pub(super) async fn serve<H, F>(http2_only: bool, handle: H) -> Server
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("cannot listen on 127.0.0.1: {e}"));
    let addr = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("no local address: {e}"));
    let task = tokio::spawn(async move {
        // Owned by the accept loop, so aborting it ends every connection too.
        let mut connections = JoinSet::new();
        while let Ok((stream, _)) = listener.accept().await {
            let handle = handle.clone();
            let service = hyper::service::service_fn(move |request| {
                let reply = handle(request);
                async move { Ok::<_, Infallible>(reply.await) }
            });
            let mut builder = auto::Builder::new(TokioExecutor::new());
            if http2_only {
                builder = builder.http2_only();
            }
            connections.spawn(async move {
                let _ = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
            // Forget the connections that ended.
            while connections.try_join_next().is_some() {}
        }
    });
    Server { addr, task }
}

/// A request's whole body (empty if it could not be read).
pub(super) async fn read_body(request: Request<Incoming>) -> Bytes {
    request
        .into_body()
        .collect()
        .await
        .map(http_body_util::Collected::to_bytes)
        .unwrap_or_default()
}

/// An answer with a JSON (or text) body.
pub(super) fn answer(
    status: u16,
    headers: &[(&'static str, String)],
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::builder()
        .status(status)
        .header("content-type", "application/json");
    for (name, value) in headers {
        response = response.header(*name, value);
    }
    response
        .body(Full::new(body.into()))
        .unwrap_or_else(|e| panic!("cannot make an answer: {e}"))
}

/// The `Retry-After` header a scripted 429 or 5xx carries, when the test set one.
pub(super) fn retry_header(status: u16, seconds: Option<u64>) -> Vec<(&'static str, String)> {
    match seconds {
        Some(s) if status == 429 || status >= 500 => vec![("retry-after", s.to_string())],
        _ => Vec::new(),
    }
}

/// A mutex's guard; a test that panicked while holding it does not hide what it recorded.
pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// What a double received, for a test to read and wait on.
pub(super) struct Log<T> {
    items: Mutex<Vec<T>>,
    count: watch::Sender<usize>,
}

impl<T: Clone> Log<T> {
    pub(super) fn new() -> Log<T> {
        Log {
            items: Mutex::default(),
            count: watch::Sender::new(0),
        }
    }

    pub(super) fn push(&self, item: T) {
        let mut items = lock(&self.items);
        items.push(item);
        self.count.send_replace(items.len());
    }

    pub(super) fn len(&self) -> usize {
        lock(&self.items).len()
    }

    pub(super) fn all(&self) -> Vec<T> {
        lock(&self.items).clone()
    }

    /// Waits until `n` items are in; panics after `timeout`, naming `what` waited.
    pub(super) async fn wait_for(&self, n: usize, timeout: Duration, what: &str) -> Vec<T> {
        let mut count = self.count.subscribe();
        let arrived = tokio::time::timeout(timeout, count.wait_for(|c| *c >= n)).await;
        if arrived.is_err() {
            let got = lock(&self.items).len();
            panic!("the {what} received {got} requests in {timeout:?}, not {n}");
        }
        self.all()
    }
}

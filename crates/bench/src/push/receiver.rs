//! The push service of the run: a plain HTTP/1.1 server on 127.0.0.1 standing in for a Web
//! Push service (RFC 8030). Each recipient's device has an endpoint of its own,
//! `http://127.0.0.1:PORT/d/{device}`, and a key pair and auth secret made as a browser makes
//! them, so that a notification can be decrypted as the browser would (RFC 8291).
//!
//! It shares the machine's cores with the server it measures, so it does little per request:
//! it reads the body, notes the arrival (device, time) in a log, and answers 201. Only a
//! sample of the bodies is decrypted, an elliptic-curve multiplication each, to check that
//! they are real notifications. VAPID and the headers are the testkit's receiver's to check.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use anyhow::Context;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use confab_protocol::{PushPayload, PushSubscription, WebPushKeys};
use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use p256::elliptic_curve::sec1::ToEncodedPoint as _;
use tokio::task::{JoinHandle, JoinSet};

/// The largest body a push service must take (RFC 8030 section 7.2); a larger one is not
/// read.
const MAX_BODY: usize = 4096;

/// What a decrypted body said: the payload, or why it is not one.
pub(super) type Decrypted = Result<PushPayload, String>;

/// One notification the receiver took.
pub(super) struct Arrival {
    /// Which device's endpoint it was posted to.
    pub(super) device: u32,
    pub(super) at: Instant,
    /// Set for the sample that was decrypted.
    pub(super) decrypted: Option<Box<Decrypted>>,
}

/// A device's side of its subscription: what decrypts its notifications.
struct DeviceKeys {
    secret: p256::SecretKey,
    auth: [u8; 16],
}

struct Shared {
    keys: Vec<DeviceKeys>,
    /// What arrival times count from.
    epoch: Instant,
    /// The latest arrival, ns after `epoch` (0: none yet).
    last_ns: AtomicU64,
    /// Arrivals of the current phase, in the order they were logged.
    log: Mutex<Vec<Arrival>>,
    /// Notifications taken in the current phase.
    count: AtomicU64,
    /// Requests to no device's endpoint, or not a POST.
    unknown: AtomicU64,
    /// Every this-many-th notification is decrypted.
    decrypt_every: AtomicU64,
}

impl Shared {
    fn log(&self) -> std::sync::MutexGuard<'_, Vec<Arrival>> {
        self.log.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The run's Web Push service; stops when dropped.
pub(super) struct Receiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    /// Listens on 127.0.0.1:0 with keys for `devices` devices.
    pub(super) async fn start(devices: usize) -> anyhow::Result<Receiver> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("the push receiver cannot listen on 127.0.0.1")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            keys: (0..devices).map(|_| new_keys()).collect(),
            epoch: Instant::now(),
            last_ns: AtomicU64::new(0),
            log: Mutex::new(Vec::new()),
            count: AtomicU64::new(0),
            unknown: AtomicU64::new(0),
            decrypt_every: AtomicU64::new(1),
        });
        let task = tokio::spawn(serve(listener, Arc::clone(&shared)));
        Ok(Receiver { addr, shared, task })
    }

    /// `http://127.0.0.1:PORT`.
    pub(super) fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Device `device`'s subscription, as `PUT /v1/push/subscription` takes it. With
    /// `preview`, so that a decrypted notification carries the message's body and its stamp.
    pub(super) fn subscription(&self, device: usize) -> PushSubscription {
        let keys = &self.shared.keys[device];
        PushSubscription::Webpush {
            endpoint: format!("{}/d/{device}", self.origin()),
            keys: WebPushKeys {
                p256dh: URL_SAFE_NO_PAD.encode(keys.secret.public_key().to_encoded_point(false)),
                auth: URL_SAFE_NO_PAD.encode(keys.auth),
            },
            preview: true,
        }
    }

    /// Starts a phase: forgets what arrived so far, and decrypts every `decrypt_every`-th
    /// notification from now on.
    pub(super) fn begin(&self, decrypt_every: u64, capacity: usize) {
        let mut log = self.shared.log();
        *log = Vec::with_capacity(capacity);
        self.shared.count.store(0, Ordering::Relaxed);
        self.shared.last_ns.store(0, Ordering::Relaxed);
        self.shared.unknown.store(0, Ordering::Relaxed);
        self.shared
            .decrypt_every
            .store(decrypt_every.max(1), Ordering::Relaxed);
    }

    /// Notifications taken since [`Receiver::begin`].
    pub(super) fn count(&self) -> u64 {
        self.shared.count.load(Ordering::Relaxed)
    }

    /// The time of the latest arrival, if any.
    pub(super) fn last_arrival(&self) -> Option<Instant> {
        let ns = self.shared.last_ns.load(Ordering::Relaxed);
        (ns > 0).then(|| self.shared.epoch + std::time::Duration::from_nanos(ns))
    }

    /// Ends a phase: what arrived since [`Receiver::begin`], and the requests to no device.
    pub(super) fn take(&self) -> (Vec<Arrival>, u64) {
        let log = std::mem::take(&mut *self.shared.log());
        (log, self.shared.unknown.load(Ordering::Relaxed))
    }
}

/// A key pair and auth secret, as a browser makes them for a subscription.
fn new_keys() -> DeviceKeys {
    loop {
        // A random 32-byte string is a valid P-256 scalar but for a chance of about 2^-32.
        if let Ok(secret) = p256::SecretKey::from_slice(&rand::random::<[u8; 32]>()) {
            return DeviceKeys {
                secret,
                auth: rand::random(),
            };
        }
    }
}

/// Accepts connections until dropped (the push server keeps a few open and reuses them).
async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let shared = Arc::clone(&shared);
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let shared = Arc::clone(&shared);
                async move { Ok::<_, Infallible>(handle(&shared, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
        // Reap the connections that ended.
        while connections.try_join_next().is_some() {}
    }
}

async fn handle(shared: &Shared, req: Request<Incoming>) -> Response<Empty<Bytes>> {
    let device = if req.method() == Method::POST {
        device_of(req.uri().path()).filter(|&d| (d as usize) < shared.keys.len())
    } else {
        None
    };
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return answer(StatusCode::BAD_REQUEST),
    };
    let at = Instant::now();
    let Some(device) = device else {
        shared.unknown.fetch_add(1, Ordering::Relaxed);
        return answer(StatusCode::NOT_FOUND);
    };
    let since = at.saturating_duration_since(shared.epoch).as_nanos() as u64;
    shared.last_ns.fetch_max(since.max(1), Ordering::Relaxed);
    let n = shared.count.fetch_add(1, Ordering::Relaxed);
    let decrypted = n
        .is_multiple_of(shared.decrypt_every.load(Ordering::Relaxed))
        .then(|| Box::new(decrypt(&shared.keys[device as usize], &body)));
    shared.log().push(Arrival {
        device,
        at,
        decrypted,
    });
    answer(StatusCode::CREATED)
}

fn answer(status: StatusCode) -> Response<Empty<Bytes>> {
    let mut response = Response::new(Empty::new());
    *response.status_mut() = status;
    response
}

/// The device of an endpoint path, `/d/{device}`.
fn device_of(path: &str) -> Option<u32> {
    path.strip_prefix("/d/")?.parse().ok()
}

/// Decrypts a body as the device's browser would and reads the payload.
fn decrypt(keys: &DeviceKeys, body: &[u8]) -> Decrypted {
    if body.len() > MAX_BODY {
        return Err(format!("a body of {} bytes", body.len()));
    }
    let auth = web_push_native::Auth::clone_from_slice(&keys.auth);
    let plain = web_push_native::decrypt(body.to_vec(), &keys.secret, &auth)
        .map_err(|e| format!("does not decrypt: {e}"))?;
    serde_json::from_slice(&plain).map_err(|e| format!("not a push payload: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_name_their_device() {
        assert_eq!(device_of("/d/0"), Some(0));
        assert_eq!(device_of("/d/917"), Some(917));
        assert_eq!(device_of("/d/"), None);
        assert_eq!(device_of("/x/1"), None);
        assert_eq!(device_of("/d/1/2"), None);
    }

    #[tokio::test]
    async fn it_takes_notifications_and_decrypts_the_sample() {
        let receiver = Receiver::start(3).await.unwrap();
        receiver.begin(2, 8);
        let PushSubscription::Webpush { endpoint, keys, .. } = receiver.subscription(1) else {
            unreachable!("a Web Push subscription")
        };
        assert_eq!(endpoint, format!("{}/d/1", receiver.origin()));
        let public =
            p256::PublicKey::from_sec1_bytes(&URL_SAFE_NO_PAD.decode(&keys.p256dh).unwrap())
                .unwrap();
        let auth =
            web_push_native::Auth::clone_from_slice(&URL_SAFE_NO_PAD.decode(&keys.auth).unwrap());
        let payload = PushPayload::Read {
            conversation: "c".into(),
            seq: 7,
        };
        let client = reqwest::Client::new();
        for _ in 0..3 {
            let body =
                web_push_native::encrypt(serde_json::to_vec(&payload).unwrap(), &public, &auth)
                    .unwrap();
            let r = client.post(&endpoint).body(body).send().await.unwrap();
            assert_eq!(r.status(), 201);
        }
        let r = client
            .post(format!("{}/d/3", receiver.origin()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "no such device");
        assert_eq!(receiver.count(), 3);
        assert!(receiver.last_arrival().is_some());
        let (log, unknown) = receiver.take();
        assert_eq!(unknown, 1);
        assert!(log.iter().all(|a| a.device == 1));
        let decrypted: Vec<&Decrypted> =
            log.iter().filter_map(|a| a.decrypted.as_deref()).collect();
        assert_eq!(decrypted.len(), 2, "the first and the third");
        assert!(decrypted.iter().all(|d| d.as_ref() == Ok(&payload)));
        // Another device's keys do not decrypt it.
        let body = web_push_native::encrypt(b"{}".to_vec(), &public, &auth).unwrap();
        assert!(decrypt(&receiver.shared.keys[0], &body).is_err());
    }
}

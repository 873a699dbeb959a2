//! Places for plain-HTTP connections, per client address and in total. Every connection
//! holds a file descriptor from its accept until it closes or becomes a WebSocket, and an
//! idle one may sit for `hello_timeout`: uncapped, enough of them would take the
//! descriptors the WebSockets need (see [`crate::files`], which budgets the two). The
//! per-address cap keeps one client from taking every place. A connection past either cap
//! is answered 503 `unavailable` (`Retry-After: 1`) at once, without reading its request,
//! and closed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use confab_protocol::{ErrorBody, ErrorCode, ErrorDetail};
use futures::FutureExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Semaphore;

use crate::metrics::Metrics;
use crate::throttle::address_key;
use crate::time::now_ms;

/// Refused connections that may linger at once (see [`Places::refuse`]); they come out of
/// [`crate::files::RESERVED_FILES`].
const LINGERING_REFUSALS: usize = 32;
/// How long a refused connection is kept open for its client to read the answer.
const REFUSAL_LINGER: Duration = Duration::from_millis(500);
/// The most a lingering refused connection reads (and drops) from its client.
const REFUSAL_DRAIN_BYTES: usize = 64 * 1024;

/// The plain-HTTP connections open now, against their caps.
pub struct Places {
    max_total: usize,
    /// 0: no per-address cap.
    max_per_address: usize,
    open: Mutex<Open>,
    metrics: Metrics,
    lingering: Arc<Semaphore>,
    /// When (`now_ms`) a refusal was last logged: at most one line a second (the metric
    /// counts them all).
    refusal_logged_ms: AtomicI64,
}

#[derive(Default)]
struct Open {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

/// Why a connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// At the total cap (the number).
    Total(usize),
    /// At the cap for this client address.
    Address(usize),
}

impl Refusal {
    fn message(self) -> String {
        match self {
            Refusal::Total(n) => format!("server is at its limit of {n} HTTP connections"),
            Refusal::Address(n) => {
                format!("this address is at its limit of {n} HTTP connections")
            }
        }
    }
}

/// A connection's place: given up when dropped.
pub struct Place {
    places: Arc<Places>,
    key: IpAddr,
}

impl Places {
    pub fn new(max_total: usize, max_per_address: usize, metrics: Metrics) -> Self {
        Places {
            max_total,
            max_per_address,
            open: Mutex::default(),
            metrics,
            lingering: Arc::new(Semaphore::new(LINGERING_REFUSALS)),
            refusal_logged_ms: AtomicI64::new(i64::MIN),
        }
    }

    /// A place for a new connection from `peer`, if both caps leave one.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Place, Refusal> {
        let key = address_key(peer);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.total >= self.max_total {
            return Err(Refusal::Total(self.max_total));
        }
        let from_here = open.by_address.entry(key).or_default();
        if self.max_per_address != 0 && *from_here >= self.max_per_address {
            return Err(Refusal::Address(self.max_per_address));
        }
        *from_here += 1;
        open.total += 1;
        self.metrics.http_connections.inc();
        Ok(Place {
            places: self.clone(),
            key,
        })
    }

    /// Answers a connection past a cap with 503 and closes it, counting it.
    ///
    /// The answer is written at once, without reading the request: reading it could take
    /// the client's time, and this connection has no place. Closing a socket that still has
    /// unread bytes resets it, which can destroy the answer in flight, so a refused
    /// connection lingers briefly (half-closed, its input read and dropped) for the client
    /// to read it. Only a few linger at once; in a flood the rest are closed right after the
    /// answer, which a client then may or may not see.
    pub fn refuse<Io>(&self, mut io: Io, refusal: Refusal)
    where
        Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        self.metrics.http_connections_refused.inc();
        self.log(refusal);
        let answer = refusal_response(&refusal.message());
        let Ok(permit) = self.lingering.clone().try_acquire_owned() else {
            // A fresh socket's send buffer takes the answer without waiting.
            let _ = io.write_all(&answer).now_or_never();
            return;
        };
        tokio::spawn(async move {
            let linger = async {
                io.write_all(&answer).await?;
                io.shutdown().await?;
                let mut sink = [0u8; 4096];
                let mut drained = 0;
                while drained < REFUSAL_DRAIN_BYTES {
                    match io.read(&mut sink).await? {
                        0 => break,
                        n => drained += n,
                    }
                }
                std::io::Result::Ok(())
            };
            let _ = tokio::time::timeout(REFUSAL_LINGER, linger).await;
            drop(permit);
        });
    }

    fn log(&self, refusal: Refusal) {
        let now = now_ms();
        let logged = self.refusal_logged_ms.load(Ordering::Relaxed);
        if now.saturating_sub(logged) >= 1000
            && self
                .refusal_logged_ms
                .compare_exchange(logged, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                refused_total = self.metrics.http_connections_refused.get(),
                "HTTP connection refused: {} (logged at most once a second)",
                refusal.message()
            );
        }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut open = self.places.open.lock().unwrap_or_else(|e| e.into_inner());
        open.total -= 1;
        if let Some(n) = open.by_address.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.by_address.remove(&self.key);
            }
        }
        self.places.metrics.http_connections.dec();
    }
}

/// The whole 503 response, in the protocol's shape.
fn refusal_response(message: &str) -> Vec<u8> {
    let body = serde_json::to_vec(&ErrorBody {
        error: ErrorDetail {
            code: ErrorCode::Unavailable,
            message: message.to_owned(),
        },
    })
    .unwrap_or_default();
    let mut out = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_address_and_in_total() {
        let places = Arc::new(Places::new(3, 2, Metrics::new()));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = places.admit(a).unwrap();
        let _a2 = places.admit(a).unwrap();
        assert_eq!(places.admit(a).err(), Some(Refusal::Address(2)));
        let _b1 = places.admit(b).unwrap();
        assert_eq!(places.admit(b).err(), Some(Refusal::Total(3)));
        drop(a1);
        assert_eq!(places.metrics.http_connections.get(), 2);
        let _a3 = places.admit(a).unwrap();
        assert_eq!(
            places.admit("10.0.0.3".parse().unwrap()).err(),
            Some(Refusal::Total(3))
        );
    }

    #[test]
    fn zero_turns_the_per_address_cap_off() {
        let places = Arc::new(Places::new(5, 0, Metrics::new()));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let held: Vec<Place> = (0..5).map(|_| places.admit(a).unwrap()).collect();
        assert_eq!(places.admit(a).err(), Some(Refusal::Total(5)));
        drop(held);
        assert!(places.open.lock().unwrap().by_address.is_empty());
    }

    #[test]
    fn an_ipv6_client_is_its_64() {
        let key = |s: &str| address_key(s.parse().unwrap());
        assert_eq!(key("2001:db8:1:2:aaaa::1"), key("2001:db8:1:2:bbbb::2"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::ffff:10.0.0.1"), key("10.0.0.1"));
    }

    #[test]
    fn the_refusal_is_a_whole_json_response() {
        let r = String::from_utf8(refusal_response("full")).unwrap();
        let (head, body) = r.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert!(head.contains("retry-after: 1"));
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["error"]["code"], "unavailable");
    }
}

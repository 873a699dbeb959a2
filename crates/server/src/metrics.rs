//! Prometheus metrics. Each server instance has its own registry, so several servers in one
//! process (as in the tests) do not mix their numbers.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// The server's metrics.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub connections: IntGauge,
    pub connections_refused: IntCounter,
    pub messages_stored: IntCounter,
    pub send_latency: Histogram,
    pub commit_batch_size: Histogram,
    pub wal_restarts: IntCounter,
    pub slow_consumers: IntCounter,
    pub http_connections: IntGauge,
    pub http_connections_refused: IntCounter,
    /// Requests and frames refused by a rate limit, by `limit`: `login`, `registration`
    /// (429 over HTTP), `send`, `frame` (`rate_limited` over the WebSocket).
    pub rate_limited: IntCounterVec,
    /// The push server's.
    pub push: PushMetrics,
}

/// The push server's metrics (the operations guide explains each).
#[derive(Clone)]
pub struct PushMetrics {
    /// Notifications a push service accepted, by `kind` of subscription.
    pub sent: IntCounterVec,
    /// Attempts that failed, by `kind` and `outcome`: `retry` (tried again later), `rejected`
    /// (refused for good: dropped), `gone` (the subscription no longer exists: deleted).
    pub failed: IntCounterVec,
    /// Retries scheduled, by `kind`.
    pub retried: IntCounterVec,
    /// Notifications given up, by `reason`: `expired` (24 h of retries), `rejected`, `full`
    /// (the bound of waiting notifications), `unsupported` (no provider for its kind here).
    pub dropped: IntCounterVec,
    /// Messages folded into a device's notification already waiting for their conversation.
    pub coalesced: IntCounter,
    /// Devices not notified because they had a socket (the presence check).
    pub online_skipped: IntCounter,
    /// Intents not yet expanded (`outbox`) and notifications waiting (`pending`).
    pub backlog: prometheus::IntGaugeVec,
    /// Age of the oldest intent or notification waiting, in seconds (0 when none).
    pub oldest_age: prometheus::Gauge,
    /// From the message's time to its notification's acceptance by the push service.
    pub latency: Histogram,
}

impl PushMetrics {
    fn new() -> Self {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
        };
        PushMetrics {
            sent: counter(
                "push_sent_total",
                "Push notifications accepted by their push service",
                &["kind"],
            ),
            failed: counter(
                "push_failed_total",
                "Push attempts that failed (outcome: retry, rejected, gone)",
                &["kind", "outcome"],
            ),
            retried: counter(
                "push_retried_total",
                "Push retries scheduled with backoff",
                &["kind"],
            ),
            dropped: counter(
                "push_dropped_total",
                "Push notifications given up (reason: expired, rejected, full, unsupported)",
                &["reason"],
            ),
            coalesced: IntCounter::new(
                "push_coalesced_total",
                "Messages folded into a notification already waiting for their conversation",
            )
            .expect("valid metric"),
            online_skipped: IntCounter::new(
                "push_online_skipped_total",
                "Devices not pushed to because they had a socket",
            )
            .expect("valid metric"),
            backlog: prometheus::IntGaugeVec::new(
                Opts::new(
                    "push_outbox_depth",
                    "Push work waiting (queue: outbox = intents, pending = notifications)",
                ),
                &["queue"],
            )
            .expect("valid metric"),
            oldest_age: prometheus::Gauge::new(
                "push_outbox_age_seconds",
                "Age of the oldest push intent or notification waiting",
            )
            .expect("valid metric"),
            latency: Histogram::with_opts(
                HistogramOpts::new(
                    "push_latency_seconds",
                    "From a message's time to its push notification's acceptance",
                )
                .buckets(vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 600.0,
                    3600.0,
                ]),
            )
            .expect("valid metric"),
        }
    }

    fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.sent.clone()),
            Box::new(self.failed.clone()),
            Box::new(self.retried.clone()),
            Box::new(self.dropped.clone()),
            Box::new(self.coalesced.clone()),
            Box::new(self.online_skipped.clone()),
            Box::new(self.backlog.clone()),
            Box::new(self.oldest_age.clone()),
            Box::new(self.latency.clone()),
        ]
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry =
            Registry::new_custom(Some("confab".into()), None).expect("a valid static prefix");
        let connections =
            IntGauge::new("connections", "Open WebSockets past welcome").expect("valid metric");
        let connections_refused = IntCounter::new(
            "connections_refused_total",
            "WebSocket upgrades refused (HTTP 503) at the connection limit",
        )
        .expect("valid metric");
        let messages_stored = IntCounter::new("messages_stored_total", "Messages durably stored")
            .expect("valid metric");
        let send_latency = Histogram::with_opts(
            HistogramOpts::new(
                "send_latency_seconds",
                "From a `send` frame read to its `sent` ack (includes the fsync)",
            )
            .buckets(vec![
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
        )
        .expect("valid metric");
        let commit_batch_size = Histogram::with_opts(
            HistogramOpts::new(
                "store_commit_batch_size",
                "Writes committed per transaction (per fsync)",
            )
            .buckets(vec![
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0, 16384.0,
            ]),
        )
        .expect("valid metric");
        let wal_restarts = IntCounter::new(
            "store_wal_restarts_total",
            "Times the embedded store's WAL started over past its bound (each holds writes briefly)",
        )
        .expect("valid metric");
        let slow_consumers = IntCounter::new(
            "slow_consumers_disconnected_total",
            "Sockets closed because they could not keep up",
        )
        .expect("valid metric");
        let http_connections = IntGauge::new(
            "http_connections",
            "Open plain-HTTP connections (not upgraded to a WebSocket)",
        )
        .expect("valid metric");
        let http_connections_refused = IntCounter::new(
            "http_connections_refused_total",
            "Connections answered 503 at the plain-HTTP caps (per address or in total)",
        )
        .expect("valid metric");
        let rate_limited = IntCounterVec::new(
            Opts::new(
                "rate_limited_total",
                "Requests and frames refused by a rate limit (login, registration, send, frame)",
            ),
            &["limit"],
        )
        .expect("valid metric");
        let push = PushMetrics::new();
        for m in push.collectors() {
            registry.register(m).expect("metric names are unique");
        }
        for m in [
            Box::new(connections.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(connections_refused.clone()),
            Box::new(messages_stored.clone()),
            Box::new(send_latency.clone()),
            Box::new(commit_batch_size.clone()),
            Box::new(wal_restarts.clone()),
            Box::new(slow_consumers.clone()),
            Box::new(http_connections.clone()),
            Box::new(http_connections_refused.clone()),
            Box::new(rate_limited.clone()),
        ] {
            registry.register(m).expect("metric names are unique");
        }
        Metrics {
            registry,
            connections,
            connections_refused,
            messages_stored,
            send_latency,
            commit_batch_size,
            wal_restarts,
            slow_consumers,
            http_connections,
            http_connections_refused,
            rate_limited,
            push,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

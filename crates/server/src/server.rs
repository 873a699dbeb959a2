//! The server's lifecycle: bind, serve HTTP and WebSockets on one port, shut down gracefully.
//! The routes are the API's and the gateway's; the parts come wired from [`crate::wiring`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::extract::ConnectInfo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, StoreConfig};
use crate::edge::Edge;
use crate::edge::parse_errors::JsonParseErrors;
use crate::edge::places::{Place, Places};
use crate::error::StartError;
use crate::state::App;
use crate::wiring::Node;

/// A server that is running.
pub struct Server {
    pub addr: SocketAddr,
    pub app: Arc<App>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    /// Binds `config.listen`, opens the backends and starts serving in a background task.
    pub async fn start(mut config: Config) -> Result<Server, StartError> {
        fit_connections_to_open_files(&mut config)?;
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| StartError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
        let gateway_config = config.gateway.clone();
        let node = crate::wiring::open(config).await?;
        let app = node.app.clone();
        let edge = Edge::new(&gateway_config, &app.metrics);
        let stop = CancellationToken::new();
        let task = tokio::spawn(serve(listener, node, edge, stop.clone()));
        Ok(Server {
            addr,
            app,
            stop,
            task,
        })
    }

    /// Graceful shutdown: stop accepting, close sockets with 1001, flush the store.
    pub async fn shutdown(self) -> std::io::Result<()> {
        self.stop.cancel();
        self.task
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?
    }
}

/// Raises the open-file limit and shares what it leaves between `max_connections` WebSockets
/// and `max_http_connections` plain-HTTP connections, lowering them to fit (see
/// [`crate::files`]), so that the connection past either is refused with a clear 503; and
/// says how many the node can hold.
fn fit_connections_to_open_files(config: &mut Config) -> Result<(), StartError> {
    let open_files = match crate::files::raise_open_file_limit() {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read or raise the open-file limit; connections are capped by max_connections alone");
            return Ok(());
        }
    };
    let pool = matches!(config.store, StoreConfig::Postgres(_)).then_some(config.postgres.pool);
    let reserved = crate::files::reserved_files(pool);
    let capacity = crate::files::socket_capacity(open_files, reserved);
    if capacity == 0 {
        return Err(StartError::OpenFiles {
            open_files,
            reserved,
        });
    }
    let gateway = &mut config.gateway;
    let budget = crate::files::share(
        capacity,
        gateway.max_connections,
        gateway.max_http_connections,
    );
    if budget.websockets < gateway.max_connections && gateway.max_connections != usize::MAX {
        tracing::warn!(
            "max_connections {} is more than the open-file limit allows; lowered to {}",
            gateway.max_connections,
            budget.websockets
        );
    }
    if budget.http < gateway.max_http_connections {
        tracing::warn!(
            "max_http_connections {} is more than the open-file limit leaves; lowered to {}",
            gateway.max_http_connections,
            budget.http
        );
    }
    gateway.max_connections = budget.websockets;
    gateway.max_http_connections = budget.http;
    let per_address = match gateway.max_http_connections_per_address {
        0 => "no cap per client address".to_owned(),
        n => format!("{n} per client address"),
    };
    tracing::info!(
        "up to {} WebSocket connections and {} plain-HTTP connections ({per_address}) \
         (open-file limit {open_files}, {reserved} kept for files and backends)",
        gateway.max_connections,
        gateway.max_http_connections
    );
    Ok(())
}

/// Serves until `stop` is cancelled, then shuts down gracefully.
pub async fn serve(
    listener: TcpListener,
    node: Node,
    edge: Edge,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let Node { app, gateway, jobs } = node;
    let router =
        edge.wrap(crate::api::routes(app.clone()).merge(crate::gateway::routes(gateway.clone())));
    let jobs = jobs.start(&app, &gateway);
    let connections = TaskTracker::new();
    accept(
        listener,
        router,
        &edge.places,
        app.http_timeout,
        &connections,
        &stop,
    )
    .await;
    app.shutdown.cancel();
    gateway.close_all();
    // Requests in progress finish and idle connections close (see `accept`). A connection
    // stops being tracked once it is upgraded: its socket is waited for below.
    connections.close();
    connections.wait().await;
    gateway.wait_for_sockets().await;
    drop(jobs);
    app.store.close().await;
    app.ids.release_lease().await;
    tracing::info!("shut down cleanly");
    Ok(())
}

/// How often a closing connection checks whether it still has a request in hand.
const SHUTDOWN_POLL: std::time::Duration = std::time::Duration::from_millis(50);

/// One request being handled on a connection, from its head to its response.
struct Handling(Arc<AtomicUsize>);

impl Handling {
    fn start(busy: &Arc<AtomicUsize>) -> Self {
        busy.fetch_add(1, Ordering::AcqRel);
        Handling(busy.clone())
    }
}

impl Drop for Handling {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Accepts connections until `stop` and serves each over HTTP/1.1 with upgrades.
///
/// Not `axum::serve`: it gives hyper no timer, so a connection that never sends a request, or
/// a keep-alive connection left idle, would hold its file descriptor for ever, and enough of
/// them would exhaust the open-file limit for everyone. Here a connection has `head_timeout`
/// to send each request's head (idle keep-alive time included), as a WebSocket has to send
/// `hello`, and is then closed; and it needs a place under the plain-HTTP caps
/// ([`crate::edge::places`]), else it is answered 503 at once.
async fn accept(
    listener: TcpListener,
    router: axum::Router,
    places: &Arc<Places>,
    head_timeout: std::time::Duration,
    connections: &TaskTracker,
    stop: &CancellationToken,
) {
    use axum::serve::{Listener, ListenerExt};
    // Frames are small and latency matters: no Nagle delay on any socket.
    let mut listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    loop {
        // axum's `Listener` retries failed accepts itself (once a second on `EMFILE`).
        let (io, peer) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.cancelled() => return,
        };
        let place = match places.admit(peer.ip()) {
            Ok(place) => place,
            Err(refusal) => {
                places.refuse(io, refusal);
                continue;
            }
        };
        // One router for all connections (a clone shares it): building one per connection
        // cost a few percent of a login's CPU.
        connections.spawn(serve_connection(
            io,
            peer,
            place,
            router.clone(),
            head_timeout,
            stop.clone(),
        ));
    }
}

/// One HTTP/1.1 connection, with upgrades, until it ends or `stop`. It holds its `place`
/// under the plain-HTTP caps until then: when it is upgraded, hyper hands the socket to the
/// WebSocket and this ends, so a WebSocket counts against `max_connections` only.
async fn serve_connection<Io>(
    io: Io,
    peer: SocketAddr,
    place: Place,
    router: axum::Router,
    head_timeout: std::time::Duration,
    stop: CancellationToken,
) where
    Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let router = hyper_util::service::TowerToHyperService::new(router);
    // Requests of this connection being handled, so that shutdown waits for them only.
    let busy = Arc::new(AtomicUsize::new(0));
    let service = {
        let busy = busy.clone();
        hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            // The TCP peer, for whatever reads the client address (as `axum::serve` would
            // give it with `into_make_service_with_connect_info`).
            request.extensions_mut().insert(ConnectInfo(peer));
            let handling = Handling::start(&busy);
            let response = hyper::service::Service::call(&router, request);
            async move {
                let response = response.await;
                drop(handling);
                response
            }
        })
    };
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(head_timeout)
        .max_header_size(crate::edge::MAX_HEAD_BYTES);
    let io = hyper_util::rt::TokioIo::new(JsonParseErrors::new(io));
    let conn = http.serve_connection(io, service).with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let served = tokio::select! {
        served = conn.as_mut() => served,
        () = stop.cancelled() => {
            // An idle keep-alive connection closes at once; one with a request in hand
            // answers it first. hyper would wait for a connection that has not finished
            // sending its first request head until `head_timeout`: that one is dropped as
            // soon as nothing is being handled.
            conn.as_mut().graceful_shutdown();
            loop {
                tokio::select! {
                    served = conn.as_mut() => break served,
                    () = tokio::time::sleep(SHUTDOWN_POLL) => {
                        if busy.load(Ordering::Acquire) == 0 {
                            break Ok(());
                        }
                    }
                }
            }
        }
    };
    if let Err(e) = served {
        tracing::debug!(error = %e, "connection ended with an error");
    }
    drop(place);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Whatever reads the client address (login throttling) finds the TCP peer in the
    /// request's extensions, as `ConnectInfo`.
    #[tokio::test]
    async fn requests_carry_the_peer_address() {
        let router = axum::Router::new().route(
            "/",
            axum::routing::get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move {
                peer.to_string()
            }),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let places = Arc::new(Places::new(4, 4, crate::metrics::Metrics::new()));
        let serving = {
            let places = places.clone();
            tokio::spawn(async move {
                let (io, peer) = listener.accept().await.unwrap();
                let place = places.admit(peer.ip()).unwrap();
                let timeout = std::time::Duration::from_secs(5);
                serve_connection(io, peer, place, router, timeout, CancellationToken::new()).await;
            })
        };
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let me = client.local_addr().unwrap();
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with(&me.to_string()), "{answer} (from {me})");
        serving.await.unwrap();
        assert!(places.admit(me.ip()).is_ok(), "the place was given back");
    }
}

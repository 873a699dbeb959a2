//! The server's lifecycle: bind, serve HTTP and WebSockets on one port, shut down gracefully.
//! The routes are the API's and the gateway's; the parts come wired from [`crate::wiring`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, StoreConfig};
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
        let node = crate::wiring::open(config).await?;
        let app = node.app.clone();
        let stop = CancellationToken::new();
        let task = tokio::spawn(serve(listener, node, stop.clone()));
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

/// Raises the open-file limit and lowers `max_connections` to the sockets it leaves room for
/// (see [`crate::files`]), so that the connection past it is refused with a clear 503, and
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
    if config.gateway.max_connections > capacity {
        if config.gateway.max_connections != usize::MAX {
            tracing::warn!(
                "max_connections {} is more than the open-file limit allows; lowered to {capacity}",
                config.gateway.max_connections
            );
        }
        config.gateway.max_connections = capacity;
    }
    tracing::info!(
        "up to {} WebSocket connections (open-file limit {open_files}, {reserved} kept for files and backends)",
        config.gateway.max_connections
    );
    Ok(())
}

/// Serves until `stop` is cancelled, then shuts down gracefully.
pub async fn serve(
    listener: TcpListener,
    node: Node,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let Node { app, gateway, jobs } = node;
    let router = crate::api::routes(app.clone()).merge(crate::gateway::routes(gateway.clone()));
    let jobs = jobs.start(&app, &gateway);
    let connections = TaskTracker::new();
    accept(listener, router, app.http_timeout, &connections, &stop).await;
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
/// `hello`, and is then closed.
async fn accept(
    listener: TcpListener,
    router: axum::Router,
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
        // One router for all connections (a clone shares it): building one per connection
        // cost a few percent of a login's CPU.
        connections.spawn(serve_connection(
            io,
            peer,
            router.clone(),
            head_timeout,
            stop.clone(),
        ));
    }
}

/// One HTTP/1.1 connection, with upgrades, until it ends or `stop`.
async fn serve_connection<Io>(
    io: Io,
    peer: SocketAddr,
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
            let handling = Handling::start(&busy);
            // The TCP peer, for whatever counts per client address.
            request
                .extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
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
        .header_read_timeout(head_timeout);
    let conn = http
        .serve_connection(hyper_util::rt::TokioIo::new(io), service)
        .with_upgrades();
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
}

//! The HTTP edge: what every connection and request passes before the API and the gateway
//! see it. A connection takes a place under the plain-HTTP caps ([`places`]) and gives it up
//! when it closes or becomes a WebSocket; hyper's own answers to requests it cannot parse get
//! the protocol's JSON body ([`parse_errors`]); a request must come from an allowed browser
//! origin, or from no browser ([`origin`]); an over-long URI and a method a path does not
//! take get JSON errors too (here).

pub mod origin;
pub mod parse_errors;
pub mod places;

use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use confab_protocol::ErrorCode;

use crate::config::GatewayConfig;
use crate::error::error_response;
use crate::metrics::Metrics;

/// The longest request target (path and query) served; a longer one gets 414. No endpoint
/// needs more than a few hundred bytes; hyper's own limit (64 KiB) is never reached, because
/// a request head over [`MAX_HEAD_BYTES`] is refused first.
pub const MAX_URI_BYTES: usize = 8 * 1024;

/// The largest request head (request line and headers) hyper reads before answering 431: it
/// bounds what a connection that never finishes its head can make the server buffer.
pub const MAX_HEAD_BYTES: usize = 32 * 1024;

/// The edge's settings and state, one per server.
pub struct Edge {
    pub places: Arc<places::Places>,
    origins: origin::Origins,
}

impl Edge {
    /// The edge for `config` (after [`crate::Server::start`] has fitted its caps).
    pub fn new(config: &GatewayConfig, metrics: &Metrics) -> Self {
        Edge {
            places: Arc::new(places::Places::new(
                config.max_http_connections,
                config.max_http_connections_per_address,
                metrics.clone(),
            )),
            origins: origin::Origins::new(&config.allowed_origins),
        }
    }

    /// `router` with the edge's checks around it. Call it on the whole router (the API's and
    /// the gateway's merged): the 405 fallback applies to the routes registered before it.
    pub fn wrap(&self, router: Router) -> Router {
        router
            .method_not_allowed_fallback(method_not_allowed)
            .layer(self.origins.cors())
            .layer(axum::middleware::from_fn_with_state(
                self.origins.clone(),
                origin::check,
            ))
            .layer(axum::middleware::from_fn(uri_length))
    }
}

/// 405 in the protocol's shape (axum keeps the `Allow` header it adds).
async fn method_not_allowed() -> Response {
    error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::BadRequest,
        "this path does not take that method",
    )
}

/// 414 past [`MAX_URI_BYTES`].
async fn uri_length(request: Request, next: Next) -> Response {
    let len = request
        .uri()
        .path_and_query()
        .map_or(0, |pq| pq.as_str().len());
    if len > MAX_URI_BYTES {
        return error_response(
            StatusCode::URI_TOO_LONG,
            ErrorCode::TooLarge,
            format!("request target over {MAX_URI_BYTES} bytes"),
        );
    }
    next.run(request).await
}

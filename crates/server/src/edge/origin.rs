//! Browser origins. A page on another site can make a browser send requests to confab, and
//! open WebSockets to it, with the user's network position; it cannot forge the `Origin`
//! header the browser adds. So a request that carries one must come from the server's own
//! origin or from one the operator allowed (`--allowed-origin`), else it gets 403
//! `forbidden`. Requests without `Origin` come from programs, not pages, and pass. Allowed
//! origins also get the CORS headers that let their pages read the answers.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, HOST, ORIGIN, RETRY_AFTER};
use axum::http::{HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::error::Error;

/// How long a browser may cache a preflight's answer.
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(600);

/// The allowed origins, normalised as [`crate::config::parse_origin`] makes them.
#[derive(Clone)]
pub struct Origins(Arc<[String]>);

impl Origins {
    pub fn new(allowed: &[String]) -> Self {
        Origins(allowed.iter().map(|o| o.to_ascii_lowercase()).collect())
    }

    /// Whether a request addressed to `host` may come from `origin`.
    ///
    /// The server's own origin is the scheme and the `Host` the request was addressed to.
    /// Both `http` and `https` count: behind a proxy that terminates TLS the page is served
    /// as `https://host` while the request reaches confab as plain HTTP, and a page of
    /// another site cannot name this host in its origin either way.
    pub fn permits(&self, origin: &str, host: Option<&str>) -> bool {
        let own = host.is_some_and(|host| {
            origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"))
                .is_some_and(|o| o.eq_ignore_ascii_case(host))
        });
        own || self.0.iter().any(|a| a.eq_ignore_ascii_case(origin))
    }

    /// CORS headers for the allowed origins: `Access-Control-Allow-Origin` echoing the
    /// origin, and preflights that allow the API's methods and the `Authorization` and
    /// `Content-Type` headers. (No credentials: the API takes bearer tokens, not cookies.)
    pub fn cors(&self) -> CorsLayer {
        let allowed: Vec<HeaderValue> = self
            .0
            .iter()
            .filter_map(|o| HeaderValue::from_str(o).ok())
            .collect();
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(allowed))
            .allow_methods([
                Method::GET,
                Method::POST,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
            ])
            .allow_headers([AUTHORIZATION, CONTENT_TYPE])
            // So that a page can honour a 429's or 503's `Retry-After`.
            .expose_headers([RETRY_AFTER])
            .max_age(PREFLIGHT_MAX_AGE)
    }
}

/// Refuses a request (or WebSocket upgrade) from a browser origin that is neither the
/// server's own nor allowed.
pub async fn check(State(origins): State<Origins>, request: Request, next: Next) -> Response {
    if let Some(origin) = request.headers().get(ORIGIN) {
        let host = request.headers().get(HOST).and_then(|h| h.to_str().ok());
        let permitted = origin.to_str().is_ok_and(|o| origins.permits(o, host));
        if !permitted {
            let shown = String::from_utf8_lossy(origin.as_bytes()).into_owned();
            return Error::forbidden(format!("origin {shown:?} is not allowed")).into_response();
        }
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_and_allowed_origins_pass() {
        let origins = Origins::new(&["https://app.example.com".to_owned()]);
        let host = Some("127.0.0.1:8080");
        assert!(origins.permits("http://127.0.0.1:8080", host));
        assert!(
            origins.permits("https://127.0.0.1:8080", host),
            "TLS proxy in front"
        );
        assert!(origins.permits("http://Chat.Example.com", Some("chat.example.com")));
        assert!(origins.permits("https://app.example.com", host));
        assert!(origins.permits("https://APP.example.com", None));

        assert!(
            !origins.permits("http://127.0.0.1:8081", host),
            "another port"
        );
        assert!(!origins.permits("http://evil.example", host));
        assert!(!origins.permits("http://127.0.0.1:8080.evil.example", host));
        assert!(!origins.permits("ws://127.0.0.1:8080", host));
        assert!(!origins.permits("null", host));
        assert!(!origins.permits("http://127.0.0.1:8080", None), "no Host");
        assert!(!origins.permits("https://app.example.com.evil", host));
    }
}

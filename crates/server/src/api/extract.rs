//! Extractors: the authenticated caller, the client's address, a JSON body in time, another user
//! named in the path.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Path, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use confab_protocol::{ErrorCode, Id, MAX_GROUP_BODY_BYTES, MAX_HTTP_BODY_BYTES};
use serde::de::DeserializeOwned;

use crate::auth::{bearer_token, token_hash};
use crate::error::{Error, Result, error_response};
use crate::state::App;

/// The authenticated caller of a request: a live (unrevoked, unexpired) token. Its use is
/// recorded (`Sessions::authenticate`).
pub struct Caller {
    pub user: Id,
    pub device: Id,
}

impl FromRequestParts<Arc<App>> for Caller {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self> {
        let token = bearer_token(&parts.headers).ok_or_else(Error::unauthorized)?;
        let session = app
            .sessions
            .authenticate(token_hash(token))
            .await?
            .ok_or_else(Error::unauthorized)?;
        Ok(Caller {
            user: session.user_id,
            device: session.device_id,
        })
    }
}

/// The client's address: the TCP peer, or what a trusted proxy says in `X-Forwarded-For`.
pub struct ClientAddr(pub IpAddr);

impl FromRequestParts<Arc<App>> for ClientAddr {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self> {
        // The accept loop puts the peer on every request; a router served some other way
        // (none is, outside tests) counts all its clients as one.
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
        let forwarded = parts
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok());
        Ok(ClientAddr(app.throttle.client_address(peer, forwarded)))
    }
}

/// A JSON body, with errors in the protocol's shape. It must be declared
/// `Content-Type: application/json` (parameters such as `charset` aside), else 415: a page
/// on another site can send a form or `text/plain` body without asking the browser's
/// permission (a CORS preflight), but not a JSON one. The whole body must arrive within
/// `hello_timeout`, as the request's head must (`server::serve_connection`): a client that
/// trickles it, or stops halfway, cannot hold the connection.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<Arc<App>> for JsonBody<T> {
    type Rejection = Response;

    async fn from_request(req: Request, app: &Arc<App>) -> Result<Self, Response> {
        if !declares_json(req.headers()) {
            return Err(error_response(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                ErrorCode::BadRequest,
                "the request body must be sent as Content-Type: application/json",
            ));
        }
        read_json(req, app)
            .await
            .map_err(IntoResponse::into_response)
    }
}

/// Whether `Content-Type` is `application/json`, with or without parameters.
fn declares_json(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
}

async fn read_json<T: DeserializeOwned>(req: Request, app: &Arc<App>) -> Result<JsonBody<T>> {
    let deadline = app.http_timeout;
    let bytes = tokio::time::timeout(deadline, Bytes::from_request(req, app))
        .await
        .map_err(|_| {
            Error::bad_request(format!(
                "request body not received within {} s",
                deadline.as_secs_f64()
            ))
        })?
        .map_err(|e: BytesRejection| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                Error::too_large(format!(
                    "request body over its limit ({MAX_HTTP_BODY_BYTES} bytes; \
                     {MAX_GROUP_BODY_BYTES} to create a group)"
                ))
            } else {
                Error::bad_request(e.body_text())
            }
        })?;
    serde_json::from_slice(&bytes)
        .map(JsonBody)
        .map_err(|e| Error::bad_request(format!("invalid JSON body: {e}")))
}

/// The caller and the other user named by a `{user_id}` path segment: a canonical id, not
/// the caller's own.
pub struct OtherUser {
    pub caller: Caller,
    pub other: Id,
}

impl FromRequestParts<Arc<App>> for OtherUser {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self> {
        let caller = Caller::from_request_parts(parts, app).await?;
        let other = Path::<String>::from_request_parts(parts, app)
            .await
            .ok()
            .and_then(|Path(id)| id_in_path(&id))
            .ok_or_else(|| Error::not_found("no such user"))?;
        if other == caller.user {
            return Err(Error::bad_request("that is your own user_id"));
        }
        Ok(OtherUser { caller, other })
    }
}

/// The id a path segment names, if it is a canonical one. A path names a resource, and a
/// text that is no id names none: callers answer 404, as for an id that exists nowhere, so
/// that `007` or `+7` is not a second name for `7`.
pub(super) fn id_in_path(segment: &str) -> Option<Id> {
    segment.parse().ok()
}

/// A malformed path segment, in the protocol's error shape.
pub(super) fn path_error(e: PathRejection) -> Error {
    Error::bad_request(e.body_text())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_json_is_json() {
        let with = |v: Option<&str>| {
            let mut h = HeaderMap::new();
            if let Some(v) = v {
                h.insert(CONTENT_TYPE, v.parse().unwrap());
            }
            declares_json(&h)
        };
        assert!(with(Some("application/json")));
        assert!(with(Some("application/json; charset=utf-8")));
        assert!(with(Some("Application/JSON;charset=UTF-8")));
        assert!(!with(None));
        assert!(!with(Some("text/plain")));
        assert!(!with(Some("text/plain; x=application/json")));
        assert!(!with(Some("application/x-www-form-urlencoded")));
        assert!(!with(Some("multipart/form-data; boundary=x")));
        assert!(!with(Some("application/jsonp")));
    }
}

//! Extractors: the authenticated caller, a JSON body in time, another user named in the path.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use confab_protocol::{Id, MAX_HTTP_BODY_BYTES};
use serde::de::DeserializeOwned;

use crate::auth::{bearer_token, token_hash};
use crate::error::{Error, Result};
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

/// A JSON body, parsed whatever its `Content-Type`, with errors in the protocol's shape. The
/// whole body must arrive within `hello_timeout`, as the request's head must
/// (`server::serve_connection`): a client that trickles it, or stops halfway, cannot hold the
/// connection.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<Arc<App>> for JsonBody<T> {
    type Rejection = Error;

    async fn from_request(req: Request, app: &Arc<App>) -> Result<Self> {
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
                    Error::too_large(format!("request body over {MAX_HTTP_BODY_BYTES} bytes"))
                } else {
                    Error::bad_request(e.body_text())
                }
            })?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| Error::bad_request(format!("invalid JSON body: {e}")))
    }
}

/// The caller and the other user named by a `{user_id}` path segment: a decimal id, not the
/// caller's own.
pub struct OtherUser {
    pub caller: Caller,
    pub other: Id,
}

impl FromRequestParts<Arc<App>> for OtherUser {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self> {
        let caller = Caller::from_request_parts(parts, app).await?;
        let Path(id) = Path::<String>::from_request_parts(parts, app)
            .await
            .map_err(path_error)?;
        let other: Id = id
            .parse()
            .map_err(|_| Error::bad_request("user_id must be a decimal 64-bit id"))?;
        if other == caller.user {
            return Err(Error::bad_request("that is your own user_id"));
        }
        Ok(OtherUser { caller, other })
    }
}

/// A malformed path segment, in the protocol's error shape.
pub(super) fn path_error(e: PathRejection) -> Error {
    Error::bad_request(e.body_text())
}

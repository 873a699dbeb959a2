//! The one error type of the server's request paths, and how it reaches a client; and why the
//! server could not start.
//!
//! 4xx-class errors are the client's business and are not logged as failures; `internal` and
//! `unavailable` are logged with their cause while the client gets a generic message.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use confab_protocol::{ErrorBody, ErrorCode, ErrorDetail, ServerFrame};

use crate::store::StoreError;

/// An error a request or frame ends with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The client's fault; the message is shown to it.
    #[error("{message}")]
    Client { code: ErrorCode, message: String },
    /// Refused for now, with when to come back: a limit (`rate_limited`) or a full queue
    /// (`unavailable`). Expected under load, so not logged; over HTTP it carries `Retry-After`.
    #[error("{message}")]
    RetryLater {
        code: ErrorCode,
        message: String,
        retry_after: std::time::Duration,
    },
    /// A backend is unreachable; the request may be retried.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A bug or an unexpected backend failure.
    #[error("internal: {0}")]
    Internal(String),
}

impl Error {
    pub fn bad_request(message: impl Into<String>) -> Self {
        Error::Client {
            code: ErrorCode::BadRequest,
            message: message.into(),
        }
    }
    pub fn unauthorized() -> Self {
        Error::Client {
            code: ErrorCode::Unauthorized,
            message: "missing, invalid or revoked credentials".into(),
        }
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Error::Client {
            code: ErrorCode::NotFound,
            message: message.into(),
        }
    }
    pub fn too_large(message: impl Into<String>) -> Self {
        Error::Client {
            code: ErrorCode::TooLarge,
            message: message.into(),
        }
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Error::Client {
            code: ErrorCode::Forbidden,
            message: message.into(),
        }
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Error::Client {
            code: ErrorCode::Conflict,
            message: message.into(),
        }
    }
    pub fn rate_limited(message: impl Into<String>) -> Self {
        Error::Client {
            code: ErrorCode::RateLimited,
            message: message.into(),
        }
    }

    /// `rate_limited`, to be retried after `retry_after`.
    pub fn throttled(message: impl Into<String>, retry_after: std::time::Duration) -> Self {
        Error::RetryLater {
            code: ErrorCode::RateLimited,
            message: message.into(),
            retry_after,
        }
    }

    /// `unavailable` because this node is busy (not because a backend is down), to be retried
    /// after `retry_after`.
    pub fn busy(message: impl Into<String>, retry_after: std::time::Duration) -> Self {
        Error::RetryLater {
            code: ErrorCode::Unavailable,
            message: message.into(),
            retry_after,
        }
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            Error::Client { code, .. } | Error::RetryLater { code, .. } => *code,
            Error::Unavailable(_) => ErrorCode::Unavailable,
            Error::Internal(_) => ErrorCode::Internal,
        }
    }

    /// What the client is told. Server-side causes stay in the log.
    pub fn public_message(&self) -> String {
        match self {
            Error::Client { message, .. } | Error::RetryLater { message, .. } => message.clone(),
            Error::Unavailable(_) => "a backend is unavailable; retry later".into(),
            Error::Internal(_) => "internal error".into(),
        }
    }

    fn log(&self) {
        match self {
            Error::Client { .. } | Error::RetryLater { .. } => {}
            Error::Unavailable(cause) => tracing::warn!(%cause, "request failed: unavailable"),
            Error::Internal(cause) => tracing::error!(%cause, "request failed: internal error"),
        }
    }

    /// The WebSocket form, with `ref` echoing the frame's `client_id`.
    pub fn to_frame(&self, reference: Option<String>) -> ServerFrame {
        self.log();
        ServerFrame::error(self.code(), self.public_message(), reference)
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(m) => Error::conflict(m),
            StoreError::NotFound(m) => Error::not_found(m),
            StoreError::Forbidden(m) => Error::forbidden(m),
            StoreError::Invalid(m) => Error::bad_request(m),
            StoreError::Unavailable(m) => Error::Unavailable(m),
            StoreError::Internal(m) => Error::Internal(m),
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        self.log();
        let code = self.code();
        let status =
            StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let retry_after = match &self {
            Error::RetryLater { retry_after, .. } => Some(*retry_after),
            _ => None,
        };
        let mut response = error_response(status, code, self.public_message());
        if let Some(wait) = retry_after {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(retry_after_secs(wait)),
            );
        }
        response
    }
}

/// An error answer whose status is not the one its code usually has (405, 414, 415, 431), in
/// the protocol's shape: the body `{"error":{"code","message"}}`, as JSON.
pub fn error_response(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Response {
    let body = ErrorBody {
        error: ErrorDetail {
            code,
            message: message.into(),
        },
    };
    (status, axum::Json(body)).into_response()
}

/// `Retry-After` counts whole seconds: rounded up, so that a client that waits that long is
/// not refused again, and at least 1.
pub fn retry_after_secs(wait: std::time::Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Backend(String),
    #[error(
        "the open-file limit ({open_files}) leaves no room for connections after the {reserved} \
         kept for files and backends: raise it (`ulimit -n`, `LimitNOFILE=` under systemd)"
    )]
    OpenFiles { open_files: u64, reserved: u64 },
}

//! The SDK's one error type: a kind to branch on plus the underlying cause, in the style of
//! async-nats's `error.rs`, so callers match on what went wrong without depending on reqwest
//! or tungstenite types.

use std::error::Error as StdError;
use std::fmt;

use confab_protocol::ErrorCode;

/// Boxed underlying cause of an [`Error`].
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Everything the SDK can fail with: an [`ErrorKind`] and, where there is one, its cause.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    source: Option<BoxError>,
}

/// What went wrong, for callers to branch on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The HTTP API answered with an error status.
    Api {
        status: u16,
        code: ErrorCode,
        message: String,
    },
    /// The server sent an `error` frame over the WebSocket.
    Server { code: ErrorCode, message: String },
    /// The network failed: connect refused, reset, or an HTTP/WebSocket transport error.
    Transport,
    /// The server sent something that does not follow the protocol.
    Protocol,
    /// No answer in time.
    Timeout,
    /// The connection or client is closed.
    Closed,
}

impl Error {
    /// An error of `kind` with no underlying cause.
    pub fn new(kind: ErrorKind) -> Error {
        Error { kind, source: None }
    }

    /// An error of `kind` caused by `source`.
    pub fn with_source(kind: ErrorKind, source: impl Into<BoxError>) -> Error {
        Error {
            kind,
            source: Some(source.into()),
        }
    }

    /// What went wrong.
    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }

    /// The protocol error code, for errors the server reported (over HTTP or the WebSocket).
    pub fn code(&self) -> Option<ErrorCode> {
        match &self.kind {
            ErrorKind::Api { code, .. } | ErrorKind::Server { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// A copy without the source, for handing one failure to several waiters.
    pub(crate) fn kind_only(&self) -> Error {
        Error::new(self.kind.clone())
    }
}

impl From<ErrorKind> for Error {
    fn from(kind: ErrorKind) -> Self {
        Error::new(kind)
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorKind::Api {
                status,
                code,
                message,
            } => write!(f, "API error {status} {code}: {message}"),
            ErrorKind::Server { code, message } => write!(f, "server error {code}: {message}"),
            ErrorKind::Transport => f.write_str("transport error"),
            ErrorKind::Protocol => f.write_str("protocol violation"),
            ErrorKind::Timeout => f.write_str("timed out"),
            ErrorKind::Closed => f.write_str("closed"),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Some(source) => write!(f, "{}: {}", self.kind, source),
            None => write!(f, "{}", self.kind),
        }
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

/// The error code an HTTP status stands for, when the body does not name one (a proxy's page).
pub(crate) fn code_for_status(status: u16) -> ErrorCode {
    match status {
        400 => ErrorCode::BadRequest,
        401 => ErrorCode::Unauthorized,
        403 => ErrorCode::Forbidden,
        404 => ErrorCode::NotFound,
        409 => ErrorCode::Conflict,
        413 => ErrorCode::TooLarge,
        429 => ErrorCode::RateLimited,
        502..=504 => ErrorCode::Unavailable,
        _ => ErrorCode::Internal,
    }
}

//! Admission: the connection cap, checked at the WebSocket upgrade.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};

use axum::extract::State;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use confab_protocol::{ErrorCode, MAX_FRAME_BYTES};

use super::socket::{Slot, run_task};
use super::{Gateway, READ_BUFFER, WRITE_BUFFER};
use crate::auth::bearer_token;
use crate::error::{Error, error_response};
use crate::time::now_ms;

/// Open sockets, against `max_connections`.
pub(super) struct Admission {
    open: AtomicUsize,
    /// When (`now_ms`) a refusal at the connection limit was last logged: at most one line a
    /// second, so a crowd of clients retrying cannot flood the log (the metric counts them all).
    refusal_logged_ms: AtomicI64,
}

impl Admission {
    /// A socket closed: its place is free.
    pub(super) fn release(&self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Default for Admission {
    fn default() -> Self {
        Admission {
            open: AtomicUsize::new(0),
            refusal_logged_ms: AtomicI64::new(i64::MIN),
        }
    }
}

/// `GET /v1/ws`. A request that is no WebSocket upgrade (a plain `GET`, a wrong version)
/// gets axum's status for it, with the protocol's JSON body rather than axum's text.
pub(super) async fn upgrade(
    State(gateway): State<Arc<Gateway>>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => return error_response(e.status(), ErrorCode::BadRequest, e.body_text()),
    };
    let open = gateway.admission.open.fetch_add(1, Ordering::Relaxed);
    let slot = Slot(gateway.clone());
    let limit = gateway.config.max_connections;
    if open >= limit {
        gateway.metrics.connections_refused.inc();
        let now = now_ms();
        let logged = gateway.admission.refusal_logged_ms.load(Ordering::Relaxed);
        if now.saturating_sub(logged) >= 1000
            && gateway
                .admission
                .refusal_logged_ms
                .compare_exchange(logged, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                limit,
                refused_total = gateway.metrics.connections_refused.get(),
                "connection refused: at the connection limit (logged at most once a second)"
            );
        }
        return Error::Client {
            code: ErrorCode::Unavailable,
            message: format!("server is at its limit of {limit} connections"),
        }
        .into_response();
    }
    // Boxed, not a String: it is held in the socket's task future (twice over).
    let header_token: Option<Box<str>> = bearer_token(&headers).map(Box::from);
    let tracked = gateway.sockets.token();
    ws.max_message_size(MAX_FRAME_BYTES)
        .max_frame_size(MAX_FRAME_BYTES)
        // tungstenite's 128 KiB defaults would cost an idle socket far more than the rest
        // of its state; frames are small, and the buffers grow for the rare big one.
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        // The socket is boxed before the task's future is made: what the future holds stays
        // in it for the socket's whole life, and the socket is a few hundred bytes. (Not
        // split: the loop reads and writes at different times, and halves cost a shared lock.)
        .on_upgrade(move |ws| run_task(slot, Box::new(ws), header_token, tracked))
}

//! The socket's transport: sending frames, the closing handshake, and why a socket stops.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message as WsMessage, Utf8Bytes, WebSocket};
use confab_protocol::ServerFrame;
use futures::{SinkExt, StreamExt};

use super::close;

/// A socket.
pub(super) struct Io {
    pub(super) ws: Box<WebSocket>,
}

impl Io {
    pub(super) async fn send(&mut self, frame: &ServerFrame) -> Result<(), axum::Error> {
        self.ws
            .send(WsMessage::Text(Utf8Bytes::from(frame.to_json())))
            .await
    }

    pub(super) async fn feed(&mut self, frame: &ServerFrame) -> Result<(), axum::Error> {
        self.ws
            .feed(WsMessage::Text(Utf8Bytes::from(frame.to_json())))
            .await
    }

    /// The closing handshake: send a close frame, then read until the client answers (or a
    /// short timeout), so the close frame is not lost to a TCP reset.
    pub(super) async fn finish(&mut self, code: u16, reason: &'static str) {
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        };
        if self.ws.send(WsMessage::Close(Some(frame))).await.is_err() {
            return;
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(Ok(m)) = self.ws.next().await {
                if matches!(m, WsMessage::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
}

/// How a socket ends when the server ends it: close code and reason.
pub(super) type End = Option<(u16, &'static str)>;

/// A server frame as a WebSocket text frame.
pub(super) fn text_frame(frame: &ServerFrame) -> WsMessage {
    WsMessage::Text(Utf8Bytes::from(frame.to_json()))
}

/// Why a socket stops.
pub(super) enum Stop {
    /// The client went away or the transport failed: nothing more can be sent.
    Gone,
    /// The server ends it with this close.
    Close(u16, &'static str),
}

/// How a socket ends on a transport error: 1009 for a frame over the size limit, else it is
/// gone.
pub(super) fn transport_error(e: axum::Error) -> Stop {
    // axum wraps tungstenite's error (the version axum uses: one in the tree); a capacity
    // error means the frame was over the limit.
    match e.into_inner().downcast::<tungstenite::Error>() {
        Ok(e) if matches!(*e, tungstenite::Error::Capacity(_)) => {
            Stop::Close(close::TOO_BIG, "message too big")
        }
        Ok(e) => {
            tracing::debug!(error = %e, "socket read failed");
            Stop::Gone
        }
        Err(e) => {
            tracing::debug!(error = %e, "socket read failed");
            Stop::Gone
        }
    }
}

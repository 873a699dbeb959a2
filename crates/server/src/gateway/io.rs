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

/// How a socket ends on a transport error: a client that broke RFC 6455 is told why with a
/// close frame (1009 for a message over the size limit, 1007 for a text message that is not
/// UTF-8, 1002 for any other violation of the framing); a transport that failed is gone.
///
/// Tungstenite reports a violation without changing its connection state, so the close
/// frame can still be written; only its stream of incoming messages has ended.
pub(super) fn transport_error(e: axum::Error) -> Stop {
    // axum wraps tungstenite's error (the version axum uses: one in the tree).
    let e = match e.into_inner().downcast::<tungstenite::Error>() {
        Ok(e) => e,
        Err(e) => {
            tracing::debug!(error = %e, "socket read failed");
            return Stop::Gone;
        }
    };
    let stop = violation(&e).map_or(Stop::Gone, |(code, reason)| Stop::Close(code, reason));
    tracing::debug!(error = %e, "socket read failed");
    stop
}

/// The close code and reason for a client's violation of the WebSocket protocol, or `None`
/// when the error is the transport's (the peer vanished, the connection reset).
fn violation(e: &tungstenite::Error) -> Option<(u16, &'static str)> {
    use tungstenite::error::ProtocolError as P;
    match e {
        tungstenite::Error::Capacity(_) => Some((close::TOO_BIG, "message too big")),
        tungstenite::Error::Utf8(_) => Some((close::INVALID_DATA, "text message is not UTF-8")),
        tungstenite::Error::Protocol(p) => match p {
            P::NonZeroReservedBits => Some((close::PROTOCOL, "reserved bits set")),
            P::UnmaskedFrameFromClient => Some((close::PROTOCOL, "unmasked client frame")),
            P::FragmentedControlFrame => Some((close::PROTOCOL, "fragmented control frame")),
            P::ControlFrameTooBig => Some((close::PROTOCOL, "control frame over 125 bytes")),
            P::UnknownControlFrameType(_) | P::UnknownDataFrameType(_) | P::InvalidOpcode(_) => {
                Some((close::PROTOCOL, "unknown opcode"))
            }
            P::UnexpectedContinueFrame => Some((close::PROTOCOL, "nothing to continue")),
            P::ExpectedFragment(_) => Some((close::PROTOCOL, "expected a continuation frame")),
            P::InvalidCloseSequence => Some((close::PROTOCOL, "malformed close frame")),
            // The peer reset or closed the connection, or sent after its own close (when no
            // frame can be written any more): nothing to tell it.
            _ => None,
        },
        _ => None,
    }
}

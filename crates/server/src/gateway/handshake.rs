//! The handshake: `hello` (authenticate), the resume position, the hub registration and the
//! login state read, in the order that makes catch-up meet live delivery exactly.

use std::sync::Arc;

use axum::extract::ws::Message as WsMessage;
use confab_protocol::{ClientFrame, ErrorCode, Id, ServerFrame};
use futures::StreamExt;
use tokio::time::Instant;

use super::hub::Registration;
use super::io::{End, Io, Stop, transport_error};
use super::limits::cluster::{Periods, Used};
use super::{CATCH_UP_PAGE, Gateway, close};
use crate::auth::token_hash;
use crate::error::Error;
use crate::store::{DeviceSession, LoginState};

/// A socket that passed the handshake.
pub(super) struct Handshake {
    pub(super) session: DeviceSession,
    /// The stream position the socket resumes after.
    pub(super) start_pos: u64,
    /// The hash of the token it authenticated with, to re-check it on resync.
    pub(super) token_hash: [u8; 32],
    /// Its place in the hub: live events queue from here on.
    pub(super) registration: Registration,
    /// What the store had for it, read after the registration.
    pub(super) login: Box<LoginState>,
}

/// Reads `hello` and authenticates. `Err` ends the socket with the given close.
async fn hello(
    gateway: &Gateway,
    io: &mut Io,
    header_token: Option<Box<str>>,
) -> Result<(DeviceSession, Option<String>, [u8; 32]), End> {
    let deadline = Instant::now() + gateway.config.hello_timeout;
    let text = loop {
        match tokio::time::timeout_at(deadline, io.ws.next()).await {
            Err(_) => return Err(Some((close::POLICY, "no hello within the timeout"))),
            Ok(None) => return Err(None),
            Ok(Some(Err(e))) => {
                return Err(match transport_error(e) {
                    Stop::Close(code, reason) => Some((code, reason)),
                    Stop::Gone => None,
                });
            }
            Ok(Some(Ok(WsMessage::Text(t)))) => break t,
            Ok(Some(Ok(WsMessage::Close(_)))) => return Err(None),
            Ok(Some(Ok(WsMessage::Binary(_)))) => {
                let _ = io
                    .send(&ServerFrame::error(
                        ErrorCode::BadRequest,
                        "binary frames are not supported; send JSON text",
                        None,
                    ))
                    .await;
                return Err(Some((close::POLICY, "expected hello")));
            }
            Ok(Some(Ok(_))) => continue,
        }
    };
    let refuse = async |io: &mut Io, code: ErrorCode, message: &str, reason: &'static str| {
        let _ = io.send(&ServerFrame::error(code, message, None)).await;
        Err(Some((close::POLICY, reason)))
    };
    let (token, cursor) = match ClientFrame::parse(&text) {
        Ok(ClientFrame::Hello { token, cursor }) => {
            (token.or(header_token.map(String::from)), cursor)
        }
        Ok(_) => {
            return refuse(
                io,
                ErrorCode::BadRequest,
                "the first frame must be hello",
                "expected hello",
            )
            .await;
        }
        Err(e) => return refuse(io, ErrorCode::BadRequest, &e.message, "expected hello").await,
    };
    let Some(token) = token else {
        return refuse(
            io,
            ErrorCode::Unauthorized,
            "hello needs a token",
            "unauthorized",
        )
        .await;
    };
    let hash = token_hash(&token);
    match gateway.sessions.authenticate(hash).await {
        Ok(Some(session)) => Ok((session, cursor, hash)),
        Ok(None) => {
            refuse(
                io,
                ErrorCode::Unauthorized,
                "invalid, expired or revoked token",
                "unauthorized",
            )
            .await
        }
        Err(e) => {
            let _ = io.send(&Error::from(e).to_frame(None)).await;
            Err(Some((close::INTERNAL, "store unavailable")))
        }
    }
}

/// `hello`, the cursor, the hub registration and the login state read.
pub(super) async fn handshake(
    gateway: &Arc<Gateway>,
    io: &mut Io,
    header_token: Option<Box<str>>,
) -> Result<Handshake, End> {
    let (session, cursor, token_hash) = Box::pin(hello(gateway, io, header_token)).await?;
    let user = session.user_id;
    let start_pos = match cursor {
        None => {
            let pending = gateway.pending_ack(session.device_id);
            session.cursor.max(pending.unwrap_or(0))
        }
        Some(c) => match parse_cursor(&c) {
            Some(p) => p,
            None => {
                let _ = io
                    .send(&ServerFrame::error(
                        ErrorCode::BadRequest,
                        malformed_cursor(),
                        None,
                    ))
                    .await;
                return Err(Some((close::POLICY, "malformed cursor")));
            }
        },
    };
    // Registered before the store is read, so that every event after the read reaches this
    // socket live; the ones the read already covers are skipped by position.
    let registration = gateway.hub.register(user, session.device_id);
    // Shutdown is announced through the hub; a socket registered after that sees the token.
    if gateway.shutdown.is_cancelled() {
        return Err(Some((close::GOING_AWAY, "server shutting down")));
    }
    // In a cluster the device's limits here start from its state cluster-wide, read beside
    // the store so that the socket waits for neither alone.
    let (login, ()) = tokio::join!(
        gateway.store.login_state(user, start_pos, CATCH_UP_PAGE),
        prime_limits(gateway, session.device_id)
    );
    let login = match login {
        Ok(login) if start_pos > login.head => {
            let _ = io
                .send(&ServerFrame::error(
                    ErrorCode::BadRequest,
                    "cursor is ahead of this account's stream",
                    None,
                ))
                .await;
            return Err(Some((close::POLICY, "bad cursor")));
        }
        Ok(login) => login,
        Err(e) => {
            let _ = io.send(&Error::from(e).to_frame(None)).await;
            return Err(Some((close::INTERNAL, "store unavailable")));
        }
    };
    Ok(Handshake {
        session,
        start_pos,
        token_hash,
        registration,
        login: Box::new(login),
    })
}

/// Starts `device`'s limits on this node from the cluster's state (see
/// `limits::cluster`); without it, or if it cannot be read, the node's own limits apply.
async fn prime_limits(gateway: &Gateway, device: Id) {
    let Some(shared) = &gateway.cluster_limits else {
        return;
    };
    let used = [Used {
        device,
        sends: 0,
        frames: 0,
    }];
    match shared
        .exchange(Periods::of(&gateway.config), &used)
        .await
        .map(|states| states.first().copied())
    {
        Ok(Some(state)) => gateway.limiters.prime(device, state),
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "reading a device's limits from the cluster failed"),
    }
}

/// Why a cursor was refused.
pub(super) fn malformed_cursor() -> String {
    format!(
        "malformed cursor: a cursor is one the server sent, a stream position or \
         POS.GROUP.SEQ, each a string of {}",
        confab_protocol::NUMBER_RULE
    )
}

/// The stream position a cursor names, as the client sends it back: a stream position's
/// canonical decimal, or a group message's `POS.GROUP.SEQ` (its `POS`), each number at most
/// 2^63-1 like every stored one.
pub fn parse_cursor(c: &str) -> Option<u64> {
    confab_protocol::Cursor::parse(c).map(confab_protocol::Cursor::pos)
}

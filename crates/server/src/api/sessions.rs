//! An account's sessions: list its devices, log one out, change the password (which logs out
//! every other device).

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use confab_protocol::{ChangePassword, SessionInfo, Sessions};

use super::extract::{Caller, ClientAddr, JsonBody, id_in_path};
use crate::auth::validate_password;
use crate::error::{Error, Result};
use crate::state::App;

/// `GET /v1/sessions`: the caller's account's live devices, oldest first.
pub(super) async fn list_sessions(
    State(app): State<Arc<App>>,
    caller: Caller,
) -> Result<Json<Sessions>> {
    let devices = app.sessions.live_devices(caller.user).await?;
    Ok(Json(Sessions {
        sessions: devices
            .into_iter()
            .map(|d| SessionInfo {
                current: d.device_id == caller.device,
                device_id: d.device_id,
                device_name: d.name,
                created_at: d.created_at,
                last_active: d.last_active,
            })
            .collect(),
    }))
}

/// `DELETE /v1/sessions/{device_id}`: logs out a device of the caller's account. A device of
/// another account, an expired or revoked one, and an id that is not canonical decimal all
/// answer the same 404, so the path tells nothing of other accounts' devices.
pub(super) async fn revoke_session(
    State(app): State<Arc<App>>,
    caller: Caller,
    device: std::result::Result<Path<String>, PathRejection>,
) -> Result<StatusCode> {
    let not_found = || Error::not_found("no such session");
    let device = device
        .ok()
        .and_then(|Path(d)| id_in_path(&d))
        .ok_or_else(not_found)?;
    let live = app.sessions.live_devices(caller.user).await?;
    if !live.iter().any(|d| d.device_id == device) {
        return Err(not_found());
    }
    app.chat.revoke_device(caller.user, device).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /v1/users/me/password`: a new password for the caller's account, given the old one.
/// Every other session of the account is revoked; the caller's stays. A wrong old password is
/// 403 `forbidden`: the token is valid, the request is refused.
///
/// A wrong old password counts as a failed login of the account, from the caller's address:
/// a stolen token must not become a way around the login throttle to guess the password.
pub(super) async fn change_password(
    State(app): State<Arc<App>>,
    caller: Caller,
    ClientAddr(client): ClientAddr,
    JsonBody(req): JsonBody<ChangePassword>,
) -> Result<StatusCode> {
    validate_password(&req.new_password)?;
    let user = app
        .store
        .user_by_id(caller.user)
        .await?
        .ok_or_else(Error::unauthorized)?;
    let attempt = app
        .throttle
        .login(&user.username, client)
        .inspect_err(|_| app.metrics.rate_limited.with_label_values(&["login"]).inc())?;
    let ok = app
        .auth
        .verify(&req.old_password, Some(user.password_hash.as_str()))
        .await?;
    if !ok {
        attempt.failed();
        return Err(Error::forbidden("old_password is wrong"));
    }
    attempt.succeeded();
    let hash = app.auth.hash(&req.new_password).await?;
    app.chat
        .change_password(caller.user, &hash, caller.device)
        .await?;
    tracing::info!(user = %caller.user, "password changed; other sessions revoked");
    Ok(StatusCode::NO_CONTENT)
}

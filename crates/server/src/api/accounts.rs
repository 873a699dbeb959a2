//! Accounts and sessions: register, look up, log in (one session per device), log out.
//! Logins and registrations are throttled per client address (and logins per account) first:
//! see [`crate::throttle`].

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use confab_protocol::{CreateSession, CreateUser, Session, User};

use super::extract::{Caller, ClientAddr, JsonBody, path_error};
use crate::auth::{new_token, validate_password, validate_username};
use crate::error::{Error, Result};
use crate::state::App;
use crate::store::NewDevice;
use crate::time::now_ms;

/// Longest `device_name` kept.
const MAX_DEVICE_NAME: usize = 64;

pub(super) async fn create_user(
    State(app): State<Arc<App>>,
    ClientAddr(client): ClientAddr,
    JsonBody(req): JsonBody<CreateUser>,
) -> Result<(StatusCode, Json<User>)> {
    validate_username(&req.username)?;
    validate_password(&req.password)?;
    app.throttle.registration(client).inspect_err(|_| {
        app.metrics
            .rate_limited
            .with_label_values(&["registration"])
            .inc()
    })?;
    // Cheap check first so a taken name does not cost a hash; the store's unique index
    // still decides races.
    if app.store.user_by_name(&req.username).await?.is_some() {
        return Err(Error::conflict(format!(
            "username {:?} is taken",
            req.username
        )));
    }
    // Before the hash: a node that may not make ids refuses at once.
    app.ids.check()?;
    let hash = app.auth.hash(&req.password).await?;
    let id = app.ids.next_id()?;
    let user = app
        .store
        .create_user(id, &req.username, &hash, now_ms())
        .await?;
    tracing::info!(user = %user.user_id, "user created");
    Ok((StatusCode::CREATED, Json(user)))
}

pub(super) async fn get_user(
    State(app): State<Arc<App>>,
    _caller: Caller,
    username: std::result::Result<Path<String>, PathRejection>,
) -> Result<Json<User>> {
    let Path(username) = username.map_err(path_error)?;
    let user = app
        .store
        .user_by_name(&username)
        .await?
        .ok_or_else(|| Error::not_found("no such user"))?;
    Ok(Json(User {
        user_id: user.id,
        username: user.username,
    }))
}

pub(super) async fn create_session(
    State(app): State<Arc<App>>,
    ClientAddr(client): ClientAddr,
    JsonBody(req): JsonBody<CreateSession>,
) -> Result<(StatusCode, Json<Session>)> {
    // Before the store and the hash: a throttled guess costs neither.
    let attempt = app
        .throttle
        .login(&req.username, client)
        .inspect_err(|_| app.metrics.rate_limited.with_label_values(&["login"]).inc())?;
    let user = app.store.user_by_name(&req.username).await?;
    let ok = app
        .auth
        .verify(
            &req.password,
            user.as_ref().map(|u| u.password_hash.as_str()),
        )
        .await?;
    let user = match user {
        Some(u) if ok => {
            attempt.succeeded();
            u
        }
        _ => {
            attempt.failed();
            return Err(Error::Client {
                code: confab_protocol::ErrorCode::Unauthorized,
                message: "wrong username or password".into(),
            });
        }
    };
    let device = app.ids.next_id()?;
    let (token, hash) = new_token();
    let name = req
        .device_name
        .map(|n| n.chars().take(MAX_DEVICE_NAME).collect());
    let now = now_ms();
    app.store
        .create_device(NewDevice {
            id: device,
            user_id: user.id,
            name,
            token_hash: hash,
            now,
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(Session {
            token,
            user_id: user.id,
            device_id: device,
            expires_at: app.sessions.expires_at(now),
        }),
    ))
}

pub(super) async fn delete_session(
    State(app): State<Arc<App>>,
    caller: Caller,
) -> Result<StatusCode> {
    app.chat.revoke_device(caller.user, caller.device).await?;
    Ok(StatusCode::NO_CONTENT)
}

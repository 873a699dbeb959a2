//! The HTTP API of PROTOCOL.md: accounts, sessions, history, and the operational endpoints.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use confab_protocol::{
    Contact, Contacts, Conversations, CreateSession, CreateUser, Id, MAX_HTTP_BODY_BYTES, Presence,
    PresenceStatus, ServerFrame, Session, User,
};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::app::{App, now_ms};
use crate::auth::{new_token, token_hash, validate_password, validate_username};
use crate::error::{Error, Result};
use crate::store::NewDevice;
use crate::sync::SyncEvent;

/// Default and largest page of `GET /v1/conversations/{c}/messages`.
const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 200;
/// Longest `device_name` kept.
const MAX_DEVICE_NAME: usize = 64;

/// The full HTTP router.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/users", post(create_user))
        .route("/v1/users/{username}", get(get_user))
        .route("/v1/sessions", post(create_session))
        .route("/v1/sessions/current", delete(delete_session))
        .route("/v1/contacts", get(list_contacts))
        .route(
            "/v1/contacts/{user_id}",
            axum::routing::put(add_contact).delete(remove_contact),
        )
        .route(
            "/v1/blocks/{user_id}",
            axum::routing::put(block).delete(unblock),
        )
        .route("/v1/conversations", get(list_conversations))
        .route(
            "/v1/conversations/{conversation}/messages",
            get(list_messages),
        )
        .route("/v1/ws", get(crate::gateway::upgrade))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .fallback(|| async { Error::not_found("no such endpoint") })
        .layer(DefaultBodyLimit::max(MAX_HTTP_BODY_BYTES))
        .with_state(app)
}

/// `Authorization: Bearer <token>`, if present.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The authenticated caller of a request.
pub struct Caller {
    pub user: Id,
    pub device: Id,
}

impl FromRequestParts<Arc<App>> for Caller {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self> {
        let token = bearer_token(&parts.headers).ok_or_else(Error::unauthorized)?;
        let session = app
            .store
            .device_by_token(token_hash(token))
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
/// (`app::serve_connection`): a client that trickles it, or stops halfway, cannot hold the
/// connection.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<Arc<App>> for JsonBody<T> {
    type Rejection = Error;

    async fn from_request(req: Request, app: &Arc<App>) -> Result<Self> {
        let deadline = app.config.hello_timeout;
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

fn path_error(e: PathRejection) -> Error {
    Error::bad_request(e.body_text())
}

async fn create_user(
    State(app): State<Arc<App>>,
    JsonBody(req): JsonBody<CreateUser>,
) -> Result<(StatusCode, Json<User>)> {
    validate_username(&req.username)?;
    validate_password(&req.password)?;
    // Cheap check first so a taken name does not cost a hash; the store's unique index
    // still decides races.
    if app.store.user_by_name(&req.username).await?.is_some() {
        return Err(Error::conflict(format!(
            "username {:?} is taken",
            req.username
        )));
    }
    app.can_make_ids()?;
    let hash = app.auth.hash(&req.password).await?;
    let id = Id(app.sequencer.next_id());
    let user = app
        .store
        .create_user(id, &req.username, &hash, now_ms())
        .await?;
    tracing::info!(user = %user.user_id, "user created");
    Ok((StatusCode::CREATED, Json(user)))
}

async fn get_user(
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

async fn create_session(
    State(app): State<Arc<App>>,
    JsonBody(req): JsonBody<CreateSession>,
) -> Result<(StatusCode, Json<Session>)> {
    let user = app.store.user_by_name(&req.username).await?;
    let ok = app
        .auth
        .verify(
            &req.password,
            user.as_ref().map(|u| u.password_hash.as_str()),
        )
        .await;
    let user = match user {
        Some(u) if ok => u,
        _ => {
            return Err(Error::Client {
                code: confab_protocol::ErrorCode::Unauthorized,
                message: "wrong username or password".into(),
            });
        }
    };
    app.can_make_ids()?;
    let (token, hash) = new_token();
    let device = Id(app.sequencer.next_id());
    let name = req
        .device_name
        .map(|n| n.chars().take(MAX_DEVICE_NAME).collect());
    app.store
        .create_device(NewDevice {
            id: device,
            user_id: user.id,
            name,
            token_hash: hash,
            now: now_ms(),
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(Session {
            token,
            user_id: user.id,
            device_id: device,
        }),
    ))
}

async fn delete_session(State(app): State<Arc<App>>, caller: Caller) -> Result<StatusCode> {
    app.store.revoke_device(caller.device, now_ms()).await?;
    let event = SyncEvent::DeviceRevoked {
        user: caller.user,
        device: caller.device,
    };
    // This node's sockets close at once, whatever the queue does; other nodes hear it through
    // the queue, or at their next resync if the queue is down.
    app.hub.deliver(event.clone());
    if let Err(e) = app.sync.publish(event).await {
        // The token is revoked in the store; open sockets notice at their next reconnect.
        tracing::warn!(error = %e, "could not broadcast a revocation");
    }
    Ok(StatusCode::NO_CONTENT)
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

async fn list_contacts(State(app): State<Arc<App>>, caller: Caller) -> Result<Json<Contacts>> {
    let entries = app.store.contacts(caller.user).await?;
    // Presence only for friends: mutual, and no block either way.
    let friends: Vec<Id> = entries
        .iter()
        .filter(|e| e.mutual && !e.blocked)
        .map(|e| e.user_id)
        .collect();
    let live = app
        .presence
        .status(&friends)
        .await
        .map_err(|e| Error::Unavailable(e.to_string()))?;
    let live: std::collections::HashMap<Id, Presence> = friends.into_iter().zip(live).collect();
    let contacts = entries
        .into_iter()
        .map(|e| Contact {
            presence: live
                .get(&e.user_id)
                .map(|p| crate::presence::merge_last_seen(*p, e.last_seen)),
            user_id: e.user_id,
            username: e.username,
            mutual: e.mutual,
        })
        .collect();
    Ok(Json(Contacts { contacts }))
}

/// Two users just became friends (again): each online one is announced to the other at once.
async fn start_presence_flow(app: &App, a: Id, b: Id) {
    let Ok(statuses) = app.presence.status(&[a, b]).await else {
        return;
    };
    for (who, to, p) in [(a, b, statuses[0]), (b, a, statuses[1])] {
        if p.status == PresenceStatus::Online {
            let event = SyncEvent::Ephemeral {
                to: vec![to],
                except_device: None,
                frame: Arc::new(ServerFrame::Presence {
                    user_id: who,
                    status: p.status,
                    last_seen: p.last_seen,
                }),
            };
            let _ = app.sync.publish(event).await;
        }
    }
}

async fn add_contact(
    State(app): State<Arc<App>>,
    OtherUser { caller, other }: OtherUser,
) -> Result<StatusCode> {
    let mutual = app.store.add_contact(caller.user, other, now_ms()).await?;
    if mutual && !app.store.blocked_between(caller.user, other).await? {
        start_presence_flow(&app, caller.user, other).await;
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn remove_contact(
    State(app): State<Arc<App>>,
    OtherUser { caller, other }: OtherUser,
) -> Result<StatusCode> {
    app.store.remove_contact(caller.user, other).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn block(
    State(app): State<Arc<App>>,
    OtherUser { caller, other }: OtherUser,
) -> Result<StatusCode> {
    app.store
        .set_block(caller.user, other, true, now_ms())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn unblock(
    State(app): State<Arc<App>>,
    OtherUser { caller, other }: OtherUser,
) -> Result<StatusCode> {
    app.store
        .set_block(caller.user, other, false, now_ms())
        .await?;
    if app.store.friends(caller.user).await?.contains(&other) {
        start_presence_flow(&app, caller.user, other).await;
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn list_conversations(
    State(app): State<Arc<App>>,
    caller: Caller,
) -> Result<Json<Conversations>> {
    let conversations = app.store.conversations(caller.user).await?;
    Ok(Json(Conversations { conversations }))
}

#[derive(Deserialize)]
struct PageQuery {
    before: Option<u64>,
    limit: Option<usize>,
}

async fn list_messages(
    State(app): State<Arc<App>>,
    caller: Caller,
    conversation: std::result::Result<Path<String>, PathRejection>,
    query: std::result::Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<confab_protocol::MessagePage>> {
    let Path(conversation) = conversation.map_err(path_error)?;
    let Query(query) = query.map_err(|e| {
        Error::bad_request(format!(
            "`before` and `limit` must be non-negative integers: {}",
            e.body_text()
        ))
    })?;
    let limit = match query.limit {
        None => DEFAULT_PAGE,
        Some(0) => return Err(Error::bad_request("limit must be 1-200")),
        Some(n) => n.min(MAX_PAGE),
    };
    let page = app
        .store
        .messages(caller.user, &conversation, query.before, limit)
        .await?
        .ok_or_else(|| Error::not_found("no such conversation"))?;
    Ok(Json(page))
}

async fn ready(State(app): State<Arc<App>>) -> Response {
    let mut problems = Vec::new();
    if let Err(e) = app.store.check().await {
        problems.push(e.to_string());
    }
    if let Err(e) = app.sync.check().await {
        problems.push(e.to_string());
    }
    if let Err(e) = app.presence.check().await {
        problems.push(e.to_string());
    }
    if app.shutdown.is_cancelled() {
        problems.push("shutting down".into());
    }
    if let Err(e) = app.can_make_ids() {
        problems.push(e.to_string());
    }
    if problems.is_empty() {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, problems.join("\n")).into_response()
    }
}

async fn metrics(State(app): State<Arc<App>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
}

//! The HTTP API of PROTOCOL.md: accounts and sessions, contacts and blocks, history, and the
//! operational endpoints. Handlers parse and answer; the flows they start are in
//! [`crate::chat`].

mod accounts;
mod contacts;
mod extract;
mod groups;
mod history;
mod ops;
mod push;
mod sessions;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::routing::{delete, get, post, put};
use confab_protocol::{MAX_GROUP_BODY_BYTES, MAX_HTTP_BODY_BYTES};

use crate::error::Error;
use crate::state::App;

pub use extract::{Caller, JsonBody, OtherUser};
pub use history::PageQuery;

/// The API's routes (the WebSocket route is the gateway's: `gateway::routes`).
pub fn routes(app: Arc<App>) -> Router {
    let readiness = Arc::new(ops::Readiness::default());
    Router::new()
        .route("/v1/users", post(accounts::create_user))
        .route("/v1/users/{username}", get(accounts::get_user))
        .route(
            "/v1/sessions",
            post(accounts::create_session).get(sessions::list_sessions),
        )
        .route("/v1/sessions/current", delete(accounts::delete_session))
        .route("/v1/sessions/{device_id}", delete(sessions::revoke_session))
        .route("/v1/users/me/password", put(sessions::change_password))
        .route("/v1/contacts", get(contacts::list_contacts))
        .route(
            "/v1/contacts/{user_id}",
            put(contacts::add_contact).delete(contacts::remove_contact),
        )
        .route(
            "/v1/blocks/{user_id}",
            put(contacts::block).delete(contacts::unblock),
        )
        .route(
            "/v1/groups",
            post(groups::create_group).layer(DefaultBodyLimit::max(MAX_GROUP_BODY_BYTES)),
        )
        .route(
            "/v1/groups/{conversation}",
            get(groups::get_group).patch(groups::rename_group),
        )
        .route(
            "/v1/groups/{conversation}/members/{user_id}",
            put(groups::add_member)
                .patch(groups::set_role)
                .delete(groups::remove_member),
        )
        .route("/v1/groups/{conversation}/receipts", get(groups::receipts))
        .route("/v1/push/vapid", get(push::vapid))
        .route(
            "/v1/push/subscription",
            put(push::put_subscription)
                .get(push::get_subscription)
                .delete(push::delete_subscription),
        )
        .route("/v1/conversations", get(history::list_conversations))
        .route(
            "/v1/conversations/{conversation}/messages",
            get(history::list_messages),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(app): State<Arc<App>>| ops::ready(app, readiness)),
        )
        .route("/metrics", get(ops::metrics))
        .fallback(|| async { Error::not_found("no such endpoint") })
        .layer(DefaultBodyLimit::max(MAX_HTTP_BODY_BYTES))
        .with_state(app)
}

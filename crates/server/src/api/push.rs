//! Push subscriptions (PROTOCOL.md "Push"): the server's VAPID key, and the caller's
//! device's subscription.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use confab_protocol::{PushSubscription, VapidKey};

use super::extract::{Caller, JsonBody};
use crate::error::{Error, Result};
use crate::state::App;
use crate::time::now_ms;

/// `GET /v1/push/vapid`: the `applicationServerKey` for browsers. Public, like the key.
pub(super) async fn vapid(State(app): State<Arc<App>>) -> Json<VapidKey> {
    Json(VapidKey {
        public_key: app.push.vapid_public_key().to_owned(),
    })
}

/// `PUT /v1/push/subscription`: the caller's device's subscription, replacing any other.
pub(super) async fn put_subscription(
    State(app): State<Arc<App>>,
    caller: Caller,
    JsonBody(subscription): JsonBody<PushSubscription>,
) -> Result<StatusCode> {
    app.push
        .check(&subscription)
        .await
        .map_err(Error::bad_request)?;
    let id = app.ids.next_id()?;
    app.store
        .set_subscription(caller.user, caller.device, id, &subscription, now_ms())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/push/subscription`: the caller's device's subscription, or 404.
pub(super) async fn get_subscription(
    State(app): State<Arc<App>>,
    caller: Caller,
) -> Result<Json<PushSubscription>> {
    app.store
        .subscription(caller.device)
        .await?
        .map(Json)
        .ok_or_else(|| Error::not_found("this device has no push subscription"))
}

/// `DELETE /v1/push/subscription`: no more notifications for the caller's device
/// (idempotent).
pub(super) async fn delete_subscription(
    State(app): State<Arc<App>>,
    caller: Caller,
) -> Result<StatusCode> {
    app.store.delete_subscription(caller.device).await?;
    Ok(StatusCode::NO_CONTENT)
}

//! Contacts and blocks: who may see whose presence.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use confab_protocol::{Contact, Contacts, Id, Presence};

use super::extract::{Caller, OtherUser};
use crate::error::{Error, Result};
use crate::state::App;
use crate::time::now_ms;

pub(super) async fn list_contacts(
    State(app): State<Arc<App>>,
    caller: Caller,
) -> Result<Json<Contacts>> {
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

pub(super) async fn add_contact(
    State(app): State<Arc<App>>,
    OtherUser { caller, other }: OtherUser,
) -> Result<StatusCode> {
    let mutual = app.store.add_contact(caller.user, other, now_ms()).await?;
    if mutual && !app.store.blocked_between(caller.user, other).await? {
        app.chat.became_friends(caller.user, other).await;
    }
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn remove_contact(
    State(app): State<Arc<App>>,
    OtherUser { caller, other }: OtherUser,
) -> Result<StatusCode> {
    app.store.remove_contact(caller.user, other).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn block(
    State(app): State<Arc<App>>,
    OtherUser { caller, other }: OtherUser,
) -> Result<StatusCode> {
    app.store
        .set_block(caller.user, other, true, now_ms())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn unblock(
    State(app): State<Arc<App>>,
    OtherUser { caller, other }: OtherUser,
) -> Result<StatusCode> {
    app.store
        .set_block(caller.user, other, false, now_ms())
        .await?;
    if app.store.friends(caller.user).await?.contains(&other) {
        app.chat.became_friends(caller.user, other).await;
    }
    Ok(StatusCode::NO_CONTENT)
}

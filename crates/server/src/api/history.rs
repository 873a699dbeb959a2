//! History: the conversation list and pages of a conversation's messages.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use confab_protocol::Conversations;
use serde::Deserialize;

use super::extract::{Caller, path_error};
use crate::error::{Error, Result};
use crate::state::App;

/// Default and largest page of `GET /v1/conversations/{c}/messages`.
const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 200;

pub(super) async fn list_conversations(
    State(app): State<Arc<App>>,
    caller: Caller,
) -> Result<Json<Conversations>> {
    let conversations = app.store.conversations(caller.user).await?;
    Ok(Json(Conversations { conversations }))
}

/// The query of `GET /v1/conversations/{c}/messages` (public for the fuzz targets in `fuzz/`).
#[derive(Deserialize)]
pub struct PageQuery {
    pub before: Option<u64>,
    pub limit: Option<usize>,
}

pub(super) async fn list_messages(
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

//! History: the conversation list and pages of a conversation's messages.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use confab_protocol::{Conversations, Id};
use serde::Deserialize;

use super::extract::Caller;
use crate::error::{Error, Result};
use crate::state::App;

/// Default and largest page of `GET /v1/conversations/{c}/messages` and of
/// `GET /v1/conversations`.
const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 200;

/// A page's bounds as the query string has them (`?before=…&limit=N`, on the list and on a
/// conversation's messages): read as text, because serde's integers accept a sign and leading
/// zeros, and each is then read as a canonical number. (Public for the fuzz targets in
/// `fuzz/`.)
#[derive(Deserialize)]
pub struct PageQuery {
    pub before: Option<String>,
    pub limit: Option<String>,
}

impl PageQuery {
    fn parse(
        query: std::result::Result<Query<PageQuery>, QueryRejection>,
    ) -> Result<(Option<u64>, usize)> {
        let Query(query) = query.map_err(|e| {
            Error::bad_request(format!("malformed query string: {}", e.body_text()))
        })?;
        query.bounds()
    }

    /// `before` and the page size: `before` as sent, `limit` defaulted and clamped.
    pub fn bounds(&self) -> Result<(Option<u64>, usize)> {
        let before = query_number("before", self.before.as_deref())?;
        let limit = match query_number("limit", self.limit.as_deref())? {
            None => DEFAULT_PAGE,
            Some(0) => return Err(Error::bad_request("limit must be 1-200")),
            // Past the largest page, however far past: clamped.
            Some(n) => usize::try_from(n).map_or(MAX_PAGE, |n| n.min(MAX_PAGE)),
        };
        Ok((before, limit))
    }
}

/// A query parameter that must be a number as the protocol writes one (see
/// [`confab_protocol::parse_number`]): past 2^63-1 it is refused, never wrapped or clamped.
fn query_number(name: &str, value: Option<&str>) -> Result<Option<u64>> {
    value
        .map(|text| {
            confab_protocol::parse_number(text).ok_or_else(|| {
                Error::bad_request(format!("`{name}` must be {}", confab_protocol::NUMBER_RULE))
            })
        })
        .transpose()
}

/// A page of the conversation list, newest activity first. The cursor `next` names the last
/// conversation of the page by its last message's id (a decimal string): the next page is the
/// conversations whose last message is older. A conversation that gets a new message while a
/// client pages moves to the top, ahead of every cursor, so the rest of the pages neither
/// repeat nor skip one; the new message reaches the client live anyway.
pub(super) async fn list_conversations(
    State(app): State<Arc<App>>,
    caller: Caller,
    query: std::result::Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<Conversations>> {
    let (before, limit) = PageQuery::parse(query)?;
    let page = app
        .store
        .conversations(caller.user, before.map(Id), limit)
        .await?;
    let next = if page.more {
        page.conversations
            .last()
            .and_then(|c| c.last_message.as_ref())
            .map(|m| m.id.to_string())
    } else {
        None
    };
    Ok(Json(Conversations {
        conversations: page.conversations,
        more: page.more,
        next,
    }))
}

pub(super) async fn list_messages(
    State(app): State<Arc<App>>,
    caller: Caller,
    conversation: std::result::Result<Path<String>, PathRejection>,
    query: std::result::Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<confab_protocol::MessagePage>> {
    // A segment that is not even text (bad percent-encoding) names no conversation either.
    let Path(conversation) = conversation.map_err(|_| no_such_conversation())?;
    let (before, limit) = PageQuery::parse(query)?;
    let page = app
        .store
        .messages(caller.user, &conversation, before, limit)
        .await?
        .ok_or_else(no_such_conversation)?;
    Ok(Json(page))
}

/// The one answer for a conversation that is malformed, unknown, or not the caller's: they
/// are not told apart.
fn no_such_conversation() -> Error {
    Error::not_found("no such conversation")
}

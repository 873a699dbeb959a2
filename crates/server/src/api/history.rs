//! History: the conversation list and pages of a conversation's messages.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use confab_protocol::{Conversations, Id};
use serde::Deserialize;

use super::extract::{Caller, path_error};
use crate::error::{Error, Result};
use crate::state::App;

/// Default and largest page of `GET /v1/conversations/{c}/messages` and of
/// `GET /v1/conversations`.
const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 200;

/// `?before=CURSOR&limit=N` of the conversation list. The cursor is read as text so that only
/// its canonical form is accepted.
#[derive(Deserialize)]
pub(super) struct ListQuery {
    before: Option<String>,
    limit: Option<usize>,
}

/// A page of the conversation list, newest activity first. The cursor `next` names the last
/// conversation of the page by its last message's id (a decimal string): the next page is the
/// conversations whose last message is older. A conversation that gets a new message while a
/// client pages moves to the top, ahead of every cursor, so the rest of the pages neither
/// repeat nor skip one; the new message reaches the client live anyway.
pub(super) async fn list_conversations(
    State(app): State<Arc<App>>,
    caller: Caller,
    query: std::result::Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Conversations>> {
    let Query(query) = query.map_err(|e| {
        Error::bad_request(format!(
            "`before` must be a cursor from `next` and `limit` a positive integer: {}",
            e.body_text()
        ))
    })?;
    let limit = page_limit(query.limit)?;
    let before = query
        .before
        .as_deref()
        .map(|b| {
            parse_list_cursor(b).ok_or_else(|| Error::bad_request("malformed `before` cursor"))
        })
        .transpose()?;
    let page = app.store.conversations(caller.user, before, limit).await?;
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

/// `limit` as the history endpoints take it: 1 and up, clamped to [`MAX_PAGE`].
fn page_limit(limit: Option<usize>) -> Result<usize> {
    match limit {
        None => Ok(DEFAULT_PAGE),
        Some(0) => Err(Error::bad_request("limit must be 1-200")),
        Some(n) => Ok(n.min(MAX_PAGE)),
    }
}

/// A list cursor in its one canonical form: the decimal digits of a message id, no sign, no
/// leading zero, at most 2^63-1 (the largest id the store holds).
fn parse_list_cursor(text: &str) -> Option<Id> {
    let canonical = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    let value: u64 = text.parse().ok().filter(|_| canonical)?;
    (value <= i64::MAX.unsigned_abs()).then_some(Id(value))
}

#[derive(Deserialize)]
pub(super) struct PageQuery {
    before: Option<u64>,
    limit: Option<usize>,
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
    let limit = page_limit(query.limit)?;
    let page = app
        .store
        .messages(caller.user, &conversation, query.before, limit)
        .await?
        .ok_or_else(|| Error::not_found("no such conversation"))?;
    Ok(Json(page))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_canonical_list_cursors_parse() {
        assert_eq!(parse_list_cursor("42"), Some(Id(42)));
        assert_eq!(parse_list_cursor("0"), Some(Id(0)));
        assert_eq!(
            parse_list_cursor("9223372036854775807"),
            Some(Id(9_223_372_036_854_775_807))
        );
        for bad in [
            "",
            "042",
            "+42",
            "-1",
            " 42",
            "42 ",
            "4a",
            "9223372036854775808",
            "18446744073709551616",
            "1.5",
        ] {
            assert_eq!(parse_list_cursor(bad), None, "{bad:?}");
        }
    }
}

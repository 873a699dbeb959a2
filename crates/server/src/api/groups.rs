//! Groups over HTTP: create, read, rename, members and roles, receipts. Anyone who is not a
//! member gets 404 from every one of them, as for a group that does not exist.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use confab_protocol::{
    CreateGroup, Group, GroupMember, GroupReceipts, Id, RenameGroup, SetRole,
    group_conversation_id, group_of,
};

use super::extract::{Caller, JsonBody, id_in_path};
use crate::error::{Error, Result};
use crate::state::App;
use crate::store::groups::{GroupChange, GroupRecord};

fn no_group() -> Error {
    Error::not_found("no such group")
}

/// The group a `{conversation}` path segment names.
fn group_in_path(conversation: &str) -> Result<Id> {
    group_of(conversation).ok_or_else(no_group)
}

fn group_object(record: GroupRecord) -> Group {
    Group {
        conversation: group_conversation_id(record.group),
        title: record.title,
        members: record
            .members
            .into_iter()
            .map(|m| GroupMember {
                user_id: m.user_id,
                username: m.username,
                role: m.role,
            })
            .collect(),
        created_at: record.created_at,
    }
}

pub(super) async fn create_group(
    State(app): State<Arc<App>>,
    caller: Caller,
    JsonBody(req): JsonBody<CreateGroup>,
) -> Result<(StatusCode, Json<Group>)> {
    // Checked before the store, so that a huge list costs no lookups: the store checks the
    // distinct members again.
    let max = app.group_bounds.max_members;
    if req.members.len() >= max.saturating_mul(2) {
        return Err(Error::bad_request(format!(
            "a group holds at most {max} members"
        )));
    }
    let record = app
        .chat
        .create_group(caller.user, req.title, req.members, app.group_bounds)
        .await?;
    Ok((StatusCode::CREATED, Json(group_object(record))))
}

pub(super) async fn get_group(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(conversation): Path<String>,
) -> Result<Json<Group>> {
    let group = group_in_path(&conversation)?;
    Ok(Json(group_object(
        app.chat.group(caller.user, group).await?,
    )))
}

pub(super) async fn rename_group(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(conversation): Path<String>,
    JsonBody(req): JsonBody<RenameGroup>,
) -> Result<Json<Group>> {
    let group = group_in_path(&conversation)?;
    app.chat
        .change_group(
            caller.user,
            group,
            GroupChange::Rename(req.title),
            app.group_bounds,
        )
        .await?;
    Ok(Json(group_object(
        app.chat.group(caller.user, group).await?,
    )))
}

/// The group and the user a `{conversation}/members/{user_id}` path names.
fn member_path(path: &(String, String)) -> Result<(Id, Id)> {
    let group = group_in_path(&path.0)?;
    let user = id_in_path(&path.1).ok_or_else(|| Error::not_found("no such user"))?;
    Ok((group, user))
}

async fn change(app: &App, caller: Caller, group: Id, change: GroupChange) -> Result<StatusCode> {
    app.chat
        .change_group(caller.user, group, change, app.group_bounds)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn add_member(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(path): Path<(String, String)>,
) -> Result<StatusCode> {
    let (group, user) = member_path(&path)?;
    change(&app, caller, group, GroupChange::Add(user)).await
}

pub(super) async fn set_role(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(path): Path<(String, String)>,
    JsonBody(req): JsonBody<SetRole>,
) -> Result<StatusCode> {
    let (group, user) = member_path(&path)?;
    change(&app, caller, group, GroupChange::SetRole(user, req.role)).await
}

pub(super) async fn remove_member(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(path): Path<(String, String)>,
) -> Result<StatusCode> {
    let (group, user) = member_path(&path)?;
    change(&app, caller, group, GroupChange::Remove(user)).await
}

pub(super) async fn receipts(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(conversation): Path<String>,
) -> Result<Json<GroupReceipts>> {
    let group = group_in_path(&conversation)?;
    let members = app
        .store
        .group_receipts(caller.user, group)
        .await?
        .ok_or_else(no_group)?;
    Ok(Json(GroupReceipts { members }))
}

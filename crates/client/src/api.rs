//! The HTTP half of the SDK: accounts, sessions, history, contacts and blocks, groups, push
//! subscriptions.

use confab_protocol::{
    ChangePassword, Contacts, Conversations, CreateGroup, CreateSession, CreateUser, ErrorBody,
    ErrorCode, Group, GroupReceipts, Id, MessagePage, PushSubscription, RenameGroup, Role, Session,
    Sessions, SetRole, User, VapidKey,
};
use reqwest::{Method, RequestBuilder, Response, Url};
use serde::de::DeserializeOwned;

use crate::error::{Error, ErrorKind, code_for_status};

/// Longest error body text kept in an [`ErrorKind::Api`] message when the body is not JSON.
const MAX_ERROR_TEXT: usize = 512;

/// Client for confab's HTTP API (`/v1/...`). Cheap to clone: clones share one connection pool.
#[derive(Clone, Debug)]
pub struct Api {
    base_url: String,
    http: reqwest::Client,
}

impl Api {
    /// An API client for the server at `base_url`, e.g. `http://127.0.0.1:8080`.
    pub fn new(base_url: &str) -> Api {
        Api {
            base_url: base_url.trim_end_matches('/').to_owned(),
            http: reqwest::Client::new(),
        }
    }

    /// The server's base URL, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The WebSocket endpoint: the base URL with `http` → `ws`, `https` → `wss`, plus `/v1/ws`.
    pub fn ws_url(&self) -> String {
        ws_url(&self.base_url)
    }

    /// `POST /v1/users`: registers a user.
    pub async fn create_user(&self, username: &str, password: &str) -> Result<User, Error> {
        let body = CreateUser {
            username: username.to_owned(),
            password: password.to_owned(),
        };
        let req = self.request(Method::POST, &["users"], None)?.json(&body);
        json(req).await
    }

    /// `POST /v1/sessions`: logs in, creating a new device.
    pub async fn login(
        &self,
        username: &str,
        password: &str,
        device_name: Option<&str>,
    ) -> Result<Session, Error> {
        let body = CreateSession {
            username: username.to_owned(),
            password: password.to_owned(),
            device_name: device_name.map(str::to_owned),
        };
        let req = self.request(Method::POST, &["sessions"], None)?.json(&body);
        json(req).await
    }

    /// `DELETE /v1/sessions/current`: revokes `token` (its open sockets are closed).
    pub async fn logout(&self, token: &str) -> Result<(), Error> {
        let req = self.request(Method::DELETE, &["sessions", "current"], Some(token))?;
        empty(req).await
    }

    /// `GET /v1/sessions`: the account's logged-in devices (`current` marks `token`'s).
    pub async fn sessions(&self, token: &str) -> Result<Sessions, Error> {
        let req = self.request(Method::GET, &["sessions"], Some(token))?;
        json(req).await
    }

    /// `DELETE /v1/sessions/{device}`: logs out another device of the account (its open
    /// sockets are closed).
    pub async fn revoke_session(&self, token: &str, device: Id) -> Result<(), Error> {
        let id = device.to_string();
        empty(self.request(Method::DELETE, &["sessions", &id], Some(token))?).await
    }

    /// `PUT /v1/users/me/password`: a new password; every other device of the account is
    /// logged out, `token` stays valid.
    pub async fn change_password(
        &self,
        token: &str,
        old_password: &str,
        new_password: &str,
    ) -> Result<(), Error> {
        let body = ChangePassword {
            old_password: old_password.to_owned(),
            new_password: new_password.to_owned(),
        };
        let req = self
            .request(Method::PUT, &["users", "me", "password"], Some(token))?
            .json(&body);
        empty(req).await
    }

    /// `GET /v1/users/{username}`.
    pub async fn user(&self, token: &str, username: &str) -> Result<User, Error> {
        let req = self.request(Method::GET, &["users", username], Some(token))?;
        json(req).await
    }

    /// The whole conversation list, newest activity first: every page of
    /// [`Api::conversations_page`], followed until the last (`more` is then false).
    pub async fn conversations(&self, token: &str) -> Result<Conversations, Error> {
        let mut all = self.conversations_page(token, None, Some(200)).await?;
        while let Some(next) = all.next.take() {
            let page = self
                .conversations_page(token, Some(&next), Some(200))
                .await?;
            all.conversations.extend(page.conversations);
            all.more = page.more;
            all.next = page.next;
        }
        Ok(all)
    }

    /// `GET /v1/conversations`: one page, newest activity first; `before` is a previous
    /// page's `next`, `limit` 1-200 (the server's default 50).
    pub async fn conversations_page(
        &self,
        token: &str,
        before: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Conversations, Error> {
        let mut req = self.request(Method::GET, &["conversations"], Some(token))?;
        if let Some(before) = before {
            req = req.query(&[("before", before)]);
        }
        if let Some(limit) = limit {
            req = req.query(&[("limit", limit)]);
        }
        json(req).await
    }

    /// `GET /v1/conversations/{conversation}/messages`: the newest page, or the one just
    /// before `before` (exclusive), ascending by `seq`.
    pub async fn messages(
        &self,
        token: &str,
        conversation: &str,
        before: Option<u64>,
        limit: Option<u32>,
    ) -> Result<MessagePage, Error> {
        let mut req = self.request(
            Method::GET,
            &["conversations", conversation, "messages"],
            Some(token),
        )?;
        if let Some(before) = before {
            req = req.query(&[("before", before)]);
        }
        if let Some(limit) = limit {
            req = req.query(&[("limit", limit)]);
        }
        json(req).await
    }

    /// `POST /v1/groups`: a group of the caller (its owner) and `members`.
    pub async fn create_group(
        &self,
        token: &str,
        title: &str,
        members: &[Id],
    ) -> Result<Group, Error> {
        let body = CreateGroup {
            title: title.to_owned(),
            members: members.to_vec(),
        };
        json(
            self.request(Method::POST, &["groups"], Some(token))?
                .json(&body),
        )
        .await
    }

    /// `GET /v1/groups/{conversation}`.
    pub async fn group(&self, token: &str, conversation: &str) -> Result<Group, Error> {
        json(self.request(Method::GET, &["groups", conversation], Some(token))?).await
    }

    /// `PATCH /v1/groups/{conversation}`: a new title.
    pub async fn rename_group(
        &self,
        token: &str,
        conversation: &str,
        title: &str,
    ) -> Result<Group, Error> {
        let body = RenameGroup {
            title: title.to_owned(),
        };
        let req = self.request(Method::PATCH, &["groups", conversation], Some(token))?;
        json(req.json(&body)).await
    }

    /// `PUT /v1/groups/{conversation}/members/{user}` (idempotent).
    pub async fn add_member(&self, token: &str, conversation: &str, user: Id) -> Result<(), Error> {
        let id = user.to_string();
        let path = ["groups", conversation, "members", &id];
        empty(self.request(Method::PUT, &path, Some(token))?).await
    }

    /// `DELETE /v1/groups/{conversation}/members/{user}`: removes a member, or leaves when
    /// `user` is the caller.
    pub async fn remove_member(
        &self,
        token: &str,
        conversation: &str,
        user: Id,
    ) -> Result<(), Error> {
        let id = user.to_string();
        let path = ["groups", conversation, "members", &id];
        empty(self.request(Method::DELETE, &path, Some(token))?).await
    }

    /// `PATCH /v1/groups/{conversation}/members/{user}`: `admin` or `member`.
    pub async fn set_role(
        &self,
        token: &str,
        conversation: &str,
        user: Id,
        role: Role,
    ) -> Result<(), Error> {
        let id = user.to_string();
        let path = ["groups", conversation, "members", &id];
        let req = self.request(Method::PATCH, &path, Some(token))?;
        empty(req.json(&SetRole { role })).await
    }

    /// `GET /v1/groups/{conversation}/receipts`.
    pub async fn group_receipts(
        &self,
        token: &str,
        conversation: &str,
    ) -> Result<GroupReceipts, Error> {
        let path = ["groups", conversation, "receipts"];
        json(self.request(Method::GET, &path, Some(token))?).await
    }

    /// `GET /v1/contacts`.
    pub async fn contacts(&self, token: &str) -> Result<Contacts, Error> {
        let req = self.request(Method::GET, &["contacts"], Some(token))?;
        json(req).await
    }

    /// `PUT /v1/contacts/{user}` (idempotent).
    pub async fn add_contact(&self, token: &str, user: Id) -> Result<(), Error> {
        let id = user.to_string();
        empty(self.request(Method::PUT, &["contacts", &id], Some(token))?).await
    }

    /// `DELETE /v1/contacts/{user}`.
    pub async fn remove_contact(&self, token: &str, user: Id) -> Result<(), Error> {
        let id = user.to_string();
        empty(self.request(Method::DELETE, &["contacts", &id], Some(token))?).await
    }

    /// `PUT /v1/blocks/{user}`.
    pub async fn block(&self, token: &str, user: Id) -> Result<(), Error> {
        let id = user.to_string();
        empty(self.request(Method::PUT, &["blocks", &id], Some(token))?).await
    }

    /// `DELETE /v1/blocks/{user}`.
    pub async fn unblock(&self, token: &str, user: Id) -> Result<(), Error> {
        let id = user.to_string();
        empty(self.request(Method::DELETE, &["blocks", &id], Some(token))?).await
    }

    /// `GET /v1/push/vapid`: the server's VAPID public key, a browser's `applicationServerKey`.
    pub async fn push_vapid_key(&self) -> Result<VapidKey, Error> {
        json(self.request(Method::GET, &["push", "vapid"], None)?).await
    }

    /// `PUT /v1/push/subscription`: this device's push subscription, replacing any other.
    pub async fn subscribe_push(
        &self,
        token: &str,
        subscription: &PushSubscription,
    ) -> Result<(), Error> {
        let req = self.request(Method::PUT, &["push", "subscription"], Some(token))?;
        empty(req.json(subscription)).await
    }

    /// `GET /v1/push/subscription`: this device's subscription, `None` if it has none.
    pub async fn push_subscription(&self, token: &str) -> Result<Option<PushSubscription>, Error> {
        let req = self.request(Method::GET, &["push", "subscription"], Some(token))?;
        match json(req).await {
            Ok(subscription) => Ok(Some(subscription)),
            Err(e) if e.code() == Some(ErrorCode::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `DELETE /v1/push/subscription` (idempotent).
    pub async fn unsubscribe_push(&self, token: &str) -> Result<(), Error> {
        empty(self.request(Method::DELETE, &["push", "subscription"], Some(token))?).await
    }

    /// A request to `/v1/<segments...>`. Segments are percent-encoded one by one, so a
    /// username or an opaque conversation id can never change the path's shape.
    fn request(
        &self,
        method: Method,
        segments: &[&str],
        token: Option<&str>,
    ) -> Result<RequestBuilder, Error> {
        let mut url =
            Url::parse(&self.base_url).map_err(|e| Error::with_source(ErrorKind::Transport, e))?;
        url.path_segments_mut()
            .map_err(|()| {
                Error::with_source(
                    ErrorKind::Transport,
                    format!("base URL {:?} cannot have a path", self.base_url),
                )
            })?
            .pop_if_empty()
            .push("v1")
            .extend(segments);
        let req = self.http.request(method, url);
        Ok(match token {
            Some(token) => req.bearer_auth(token),
            None => req,
        })
    }
}

/// Sends `req` and decodes a JSON success body.
async fn json<T: DeserializeOwned>(req: RequestBuilder) -> Result<T, Error> {
    let resp = checked(req).await?;
    resp.json().await.map_err(|e| {
        if e.is_decode() {
            Error::with_source(ErrorKind::Protocol, e)
        } else {
            transport(e)
        }
    })
}

/// Sends `req` and expects a success with no body of interest (204).
async fn empty(req: RequestBuilder) -> Result<(), Error> {
    checked(req).await.map(drop)
}

/// Sends `req`; a 4xx/5xx becomes [`ErrorKind::Api`] with the code from the error body.
async fn checked(req: RequestBuilder) -> Result<Response, Error> {
    let resp = req.send().await.map_err(transport)?;
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let status = status.as_u16();
    let text = resp.text().await.unwrap_or_default();
    let kind = match serde_json::from_str::<ErrorBody>(&text) {
        Ok(body) => ErrorKind::Api {
            status,
            code: body.error.code,
            message: body.error.message,
        },
        // Not the server's JSON (a proxy's page, say): keep the status's meaning and some text.
        Err(_) => ErrorKind::Api {
            status,
            code: code_for_status(status),
            message: truncate(text, MAX_ERROR_TEXT),
        },
    };
    Err(Error::new(kind))
}

fn transport(e: reqwest::Error) -> Error {
    let kind = if e.is_timeout() {
        ErrorKind::Timeout
    } else {
        ErrorKind::Transport
    };
    Error::with_source(kind, e)
}

fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// `http://h` → `ws://h/v1/ws`, `https://h` → `wss://h/v1/ws`; a `ws`/`wss` URL keeps its
/// scheme and a URL with no scheme is taken as `ws`.
pub(crate) fn ws_url(base_url: &str) -> String {
    let base = base_url.trim_end_matches('/');
    let (scheme, rest) = match base.split_once("://") {
        Some((scheme, rest)) => (scheme.to_ascii_lowercase(), rest),
        None => (String::from("http"), base),
    };
    let scheme = match scheme.as_str() {
        "https" | "wss" => "wss",
        _ => "ws",
    };
    format!("{scheme}://{rest}/v1/ws")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ws_url_swaps_the_scheme() {
        assert_eq!(ws_url("http://127.0.0.1:8080"), "ws://127.0.0.1:8080/v1/ws");
        assert_eq!(
            ws_url("http://127.0.0.1:8080/"),
            "ws://127.0.0.1:8080/v1/ws"
        );
        assert_eq!(ws_url("https://chat.example"), "wss://chat.example/v1/ws");
        assert_eq!(ws_url("HTTPS://chat.example/"), "wss://chat.example/v1/ws");
        assert_eq!(ws_url("http://h/prefix"), "ws://h/prefix/v1/ws");
        assert_eq!(ws_url("ws://h:1"), "ws://h:1/v1/ws");
        assert_eq!(ws_url("localhost:9"), "ws://localhost:9/v1/ws");
        let api = Api::new("https://chat.example/");
        assert_eq!(api.base_url(), "https://chat.example");
        assert_eq!(api.ws_url(), "wss://chat.example/v1/ws");
    }

    #[test]
    fn path_segments_are_encoded() {
        let api = Api::new("http://h:1/base/");
        let req = api
            .request(Method::GET, &["users", "a/b?c"], Some("t"))
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(req.url().as_str(), "http://h:1/base/v1/users/a%2Fb%3Fc");
        assert_eq!(req.headers()["authorization"], "Bearer t");
    }

    #[test]
    fn long_error_text_is_cut_on_a_char_boundary() {
        assert_eq!(truncate("ééé".into(), 3), "é");
        assert_eq!(truncate("abc".into(), 5), "abc");
    }
}

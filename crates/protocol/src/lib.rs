//! confab's wire protocol, v1 (`PROTOCOL.md`): every frame and HTTP body as a Rust type.
//!
//! This crate is the API boundary: it is the only place that knows the JSON shape of anything
//! on the wire, and it does no I/O, so the server, the SDK and the benchmark all agree by
//! construction.

// Numbers cross a boundary here (the wire, SQL's signed 64-bit integers): a cast that wraps
// or truncates silently would turn a client's value into another one.
#![deny(
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss,
    clippy::cast_possible_truncation,
    clippy::cast_lossless
)]

use std::fmt;

use serde::{Deserialize, Serialize};

mod destination;
mod errors;
mod groups;
mod ids;
mod push;

pub use destination::Destination;
pub use errors::{ErrorBody, ErrorCode, ErrorDetail};
pub use groups::{
    CreateGroup, Cursor, Group, GroupCursor, GroupMember, GroupReceipts, GroupSummary,
    MAX_TITLE_CHARS, MemberMarks, RenameGroup, Role, SetRole, SystemEvent, SystemKind,
    group_conversation_id, group_of,
};
use ids::client_seq;
pub use ids::{
    Id, InvalidId, MAX_NUMBER, NUMBER_RULE, conversation_id, conversation_members, parse_number,
};
pub use push::{
    MAX_ENDPOINT_CHARS, MAX_TOKEN_CHARS, PushKind, PushPayload, PushSubscription, VapidKey,
    WebPushKeys,
};

/// Largest WebSocket message the server accepts, after reassembly (bytes). Over it: close 1009.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;
/// Largest message `body` (bytes of UTF-8). Over it: `too_large`.
pub const MAX_BODY_BYTES: usize = 4096;
/// Largest HTTP request body the API accepts (bytes).
pub const MAX_HTTP_BODY_BYTES: usize = 4096;
/// Largest `POST /v1/groups` body (bytes): room for the ids of a full group of 1,024 (about
/// 22 bytes each) and a title. Larger groups grow by adding members.
pub const MAX_GROUP_BODY_BYTES: usize = 64 * 1024;
/// Longest `client_id` (chars).
pub const MAX_CLIENT_ID_CHARS: usize = 64;

/// Frames a client sends over the WebSocket.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    Hello {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cursor: Option<String>,
    },
    /// A message to a user (`to`, 1:1) or into a conversation (`conversation`): exactly one
    /// of the two ([`Destination::of`]).
    Send {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<Id>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        conversation: Option<String>,
        client_id: String,
        body: String,
    },
    Ack {
        cursor: String,
    },
    Read {
        conversation: String,
        #[serde(deserialize_with = "client_seq")]
        seq: u64,
    },
    /// Typing to a user or in a conversation, as [`ClientFrame::Send`] names them.
    Typing {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<Id>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        conversation: Option<String>,
    },
    Ping,
}

impl ClientFrame {
    /// Parses one text frame. On failure the error carries the frame's `client_id`, if it
    /// had a string one, so the server can echo it as `ref`.
    pub fn parse(text: &str) -> Result<ClientFrame, FrameError> {
        if let Some(frame) = ClientFrame::parse_common(text) {
            return Ok(frame);
        }
        match serde_json::from_str::<ClientFrame>(text) {
            Ok(f) => Ok(f),
            Err(e) => {
                // Slow path only for bad frames: find the `client_id` to echo and a clearer message.
                let value: Option<serde_json::Value> = serde_json::from_str(text).ok();
                let reference = value
                    .as_ref()
                    .and_then(|v| v.get("client_id"))
                    .and_then(|c| c.as_str())
                    .map(str::to_owned);
                let message = match &value {
                    None => format!("malformed JSON: {e}"),
                    Some(v) if !v.is_object() => "a frame must be a JSON object".to_owned(),
                    Some(v) => match v.get("type") {
                        None => "missing field `type`".to_owned(),
                        Some(t) if !t.is_string() => "`type` must be a string".to_owned(),
                        Some(_) => format!("invalid frame: {e}"),
                    },
                };
                Err(FrameError { message, reference })
            }
        }
    }
}

impl ClientFrame {
    /// `send` and `ack`, the frames of the hot path, read straight into their fields: the
    /// derived reading of an internally tagged enum first copies the whole frame into an
    /// intermediate tree. `None` for anything else, and for a frame these readers refuse, which
    /// the derived reading then parses (or explains).
    fn parse_common(text: &str) -> Option<ClientFrame> {
        #[derive(Deserialize)]
        struct SendIn {
            #[serde(default)]
            to: Option<Id>,
            #[serde(default)]
            conversation: Option<String>,
            client_id: String,
            body: String,
        }
        #[derive(Deserialize)]
        struct AckIn {
            cursor: String,
        }
        match frame_type(text)?.as_ref() {
            "send" => serde_json::from_str::<SendIn>(text)
                .ok()
                .map(|f| ClientFrame::Send {
                    to: f.to,
                    conversation: f.conversation,
                    client_id: f.client_id,
                    body: f.body,
                }),
            "ack" => serde_json::from_str::<AckIn>(text)
                .ok()
                .map(|f| ClientFrame::Ack { cursor: f.cursor }),
            _ => None,
        }
    }
}

/// A frame's `type`, read without building the rest (`None` if it has no string `type`).
fn frame_type(text: &str) -> Option<std::borrow::Cow<'_, str>> {
    #[derive(Deserialize)]
    struct Tag<'a> {
        #[serde(rename = "type", borrow)]
        ty: std::borrow::Cow<'a, str>,
    }
    serde_json::from_str::<Tag<'_>>(text).ok().map(|t| t.ty)
}

/// Why a client frame could not be parsed.
#[derive(Clone, Debug, PartialEq)]
pub struct FrameError {
    pub message: String,
    /// The frame's `client_id`, echoed as the error's `ref`.
    pub reference: Option<String>,
}

/// A message as stored: the `message` frame without its per-user `cursor`, and the
/// `last_message` of the conversation list.
///
/// A 1:1 message has `to` and a `body`; a group's has no `to`; a group's membership change
/// (a `system` message) has `system` instead of a `body` (stored and sent as absent: a text
/// message's body is never empty).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub id: Id,
    pub conversation: String,
    pub seq: u64,
    pub from: Id,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Id>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub body: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<SystemEvent>,
    pub ts: i64,
}

/// `online` or `offline`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceStatus {
    Online,
    Offline,
}

/// `delivered` or `read`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReceiptKind {
    Delivered,
    Read,
}

/// Frames the server sends over the WebSocket.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    Welcome {
        user_id: Id,
        device_id: Id,
    },
    Synced {
        cursor: String,
    },
    Sent {
        client_id: String,
        id: Id,
        conversation: String,
        seq: u64,
        ts: i64,
    },
    Message {
        #[serde(flatten)]
        message: Message,
        cursor: String,
    },
    Receipt {
        conversation: String,
        user_id: Id,
        kind: ReceiptKind,
        seq: u64,
    },
    Presence {
        user_id: Id,
        status: PresenceStatus,
        last_seen: i64,
    },
    Typing {
        from: Id,
        conversation: String,
    },
    Error {
        code: ErrorCode,
        message: String,
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
    },
    Pong,
}

impl ServerFrame {
    /// Parses one text frame. `message` and `sent`, most of any busy socket's traffic, are
    /// read straight into their fields (see [`ClientFrame::parse`]); the rest, and any frame
    /// those readers refuse, go through the derived reading.
    pub fn parse(text: &str) -> serde_json::Result<ServerFrame> {
        #[derive(Deserialize)]
        struct MessageIn {
            id: Id,
            conversation: String,
            seq: u64,
            from: Id,
            #[serde(default)]
            to: Option<Id>,
            #[serde(default)]
            body: String,
            #[serde(default)]
            system: Option<SystemEvent>,
            ts: i64,
            cursor: String,
        }
        #[derive(Deserialize)]
        struct SentIn {
            client_id: String,
            id: Id,
            conversation: String,
            seq: u64,
            ts: i64,
        }
        let fast = match frame_type(text).as_deref() {
            Some("message") => {
                serde_json::from_str::<MessageIn>(text)
                    .ok()
                    .map(|f| ServerFrame::Message {
                        message: Message {
                            id: f.id,
                            conversation: f.conversation,
                            seq: f.seq,
                            from: f.from,
                            to: f.to,
                            body: f.body,
                            system: f.system,
                            ts: f.ts,
                        },
                        cursor: f.cursor,
                    })
            }
            Some("sent") => serde_json::from_str::<SentIn>(text)
                .ok()
                .map(|f| ServerFrame::Sent {
                    client_id: f.client_id,
                    id: f.id,
                    conversation: f.conversation,
                    seq: f.seq,
                    ts: f.ts,
                }),
            _ => None,
        };
        match fast {
            Some(frame) => Ok(frame),
            None => serde_json::from_str(text),
        }
    }

    pub fn error(code: ErrorCode, message: impl Into<String>, reference: Option<String>) -> Self {
        ServerFrame::Error {
            code,
            message: message.into(),
            reference,
        }
    }

    /// The frame as JSON text.
    pub fn to_json(&self) -> String {
        // Serialising these types cannot fail: every map key is a string.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The `message` frame serialised straight from a borrowed [`Message`]: the same JSON as
/// `ServerFrame::Message`, without cloning the body.
pub fn message_frame_json(message: &Message, cursor: u64) -> String {
    MessageFrame::new(message).with_cursor(cursor)
}

/// A `message` frame serialised once for all the sockets it goes to: every field but the
/// `cursor`, which differs per user and is the frame's last field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageFrame {
    /// The frame up to the cursor's value: `{"type":"message",…,"cursor":"`.
    head: String,
}

impl MessageFrame {
    pub fn new(message: &Message) -> Self {
        #[derive(Serialize)]
        struct Out<'a> {
            #[serde(rename = "type")]
            ty: &'static str,
            id: Id,
            conversation: &'a str,
            seq: u64,
            from: Id,
            #[serde(skip_serializing_if = "Option::is_none")]
            to: Option<Id>,
            #[serde(skip_serializing_if = "str::is_empty")]
            body: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            system: Option<&'a SystemEvent>,
            ts: i64,
        }
        let mut head = serde_json::to_string(&Out {
            ty: "message",
            id: message.id,
            conversation: &message.conversation,
            seq: message.seq,
            from: message.from,
            to: message.to,
            body: &message.body,
            system: message.system.as_ref(),
            ts: message.ts,
        })
        .unwrap_or_default();
        // Serialising a struct of strings and numbers cannot fail; it ends in `}`.
        head.pop();
        head.push_str(r#","cursor":""#);
        MessageFrame { head }
    }

    /// The whole frame, for the stream position `cursor`.
    pub fn with_cursor(&self, cursor: u64) -> String {
        use std::fmt::Write;
        let mut text = String::with_capacity(self.head.len() + 22);
        text.push_str(&self.head);
        let _ = write!(text, "{cursor}\"}}");
        text
    }

    /// The whole frame, with a cursor already written out (a group's: see
    /// [`GroupCursor`](crate::GroupCursor)).
    pub fn with_cursor_text(&self, cursor: &str) -> String {
        let mut text = String::with_capacity(self.head.len() + cursor.len() + 2);
        text.push_str(&self.head);
        text.push_str(cursor);
        text.push_str("\"}");
        text
    }
}

/// `presence` as it appears in the contact list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    pub status: PresenceStatus,
    pub last_seen: i64,
}

// ---- HTTP bodies ----

/// `POST /v1/users` request.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CreateUser {
    pub username: String,
    pub password: String,
}

/// A user as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub user_id: Id,
    pub username: String,
}

/// `POST /v1/sessions` request.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CreateSession {
    pub username: String,
    pub password: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_name: Option<String>,
}

/// `POST /v1/sessions` response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub token: String,
    pub user_id: Id,
    pub device_id: Id,
    /// When the token expires unless it is used before (ms); each use pushes it back.
    pub expires_at: i64,
}

/// One entry of `GET /v1/sessions`: a logged-in device of the caller's account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    pub device_id: Id,
    /// `null` when the login named none.
    pub device_name: Option<String>,
    pub created_at: i64,
    pub last_active: i64,
    /// The device of the token that asked.
    pub current: bool,
}

/// `GET /v1/sessions` response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sessions {
    pub sessions: Vec<SessionInfo>,
}

/// `PUT /v1/users/me/password` request.
#[derive(Clone, Serialize, Deserialize)]
pub struct ChangePassword {
    pub old_password: String,
    pub new_password: String,
}

impl fmt::Debug for ChangePassword {
    /// Passwords never reach a log, whatever prints the request.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChangePassword").finish_non_exhaustive()
    }
}

/// One entry of `GET /v1/contacts`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contact {
    pub user_id: Id,
    pub username: String,
    pub mutual: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence: Option<Presence>,
}

/// `GET /v1/contacts` response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contacts {
    pub contacts: Vec<Contact>,
}

/// One entry of `GET /v1/conversations`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationSummary {
    pub conversation: String,
    /// The other participant of a 1:1 conversation (absent for a group).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<Id>,
    pub last_seq: u64,
    pub last_message: Option<Message>,
    pub read_seq: u64,
    /// The peer's marks in a 1:1 conversation (0 unless the two are friends; absent for a
    /// group, whose members' marks are at `GET /v1/groups/{conversation}/receipts`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_read_seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_delivered_seq: Option<u64>,
    /// A group's title and size (absent for a 1:1 conversation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<GroupSummary>,
}

/// `GET /v1/conversations` response: one page, newest activity first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conversations {
    pub conversations: Vec<ConversationSummary>,
    /// Older conversations exist past this page.
    #[serde(default)]
    pub more: bool,
    /// With `more`: the `before` that asks for the next page (an opaque cursor).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// `GET /v1/conversations/{c}/messages` response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessagePage {
    pub messages: Vec<Message>,
    pub more: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversation_ids_are_symmetric_and_parse_back() {
        let c = conversation_id(Id(9), Id(3));
        assert_eq!(c, conversation_id(Id(3), Id(9)));
        assert_eq!(conversation_members(&c), Some((Id(3), Id(9))));
        for bad in [
            "",
            "3",
            "9-3",
            "3-3",
            "03-9",
            "3-09",
            "0012-0034",
            "+3-9",
            "3-+9",
            " 3-9",
            "3-9 ",
            "a-b",
            "3-9-1",
            "-3-9",
            "3-9223372036854775808",
            "3-18446744073709551615",
        ] {
            assert_eq!(conversation_members(bad), None, "{bad}");
        }
        let top = format!("0-{MAX_NUMBER}");
        assert_eq!(conversation_members(&top), Some((Id(0), Id(MAX_NUMBER))));
    }

    /// One text per number, and none past 2^63-1.
    #[test]
    fn numbers_are_canonical_decimal_up_to_2_63_minus_1() {
        assert!(NUMBER_RULE.ends_with(&MAX_NUMBER.to_string()));
        for (text, n) in [
            ("0", 0),
            ("7", 7),
            ("10", 10),
            ("9223372036854775807", MAX_NUMBER),
        ] {
            assert_eq!(parse_number(text), Some(n), "{text}");
            assert_eq!(text.parse::<Id>(), Ok(Id(n)), "{text}");
        }
        for text in [
            "",
            "+5",
            "-5",
            "-0",
            "00",
            "007",
            "0x10",
            " 5",
            "5 ",
            "5\n",
            "\u{200b}5",
            "1_000",
            "1e3",
            "5.0",
            "٣",  // ARABIC-INDIC DIGIT THREE
            "５", // FULLWIDTH DIGIT FIVE
            "9223372036854775808",
            "18446744073709551615",
            "18446744073709551616",
            "99999999999999999999999",
            "09223372036854775807",
        ] {
            assert_eq!(parse_number(text), None, "{text:?}");
            assert_eq!(text.parse::<Id>(), Err(InvalidId), "{text:?}");
        }
    }

    #[test]
    fn frames_refuse_ids_and_seqs_out_of_range() {
        let refused = [
            r#"{"type":"send","to":"9223372036854775808","client_id":"a","body":"x"}"#,
            r#"{"type":"send","to":"18446744073709551615","client_id":"a","body":"x"}"#,
            r#"{"type":"send","to":"007","client_id":"a","body":"x"}"#,
            r#"{"type":"send","to":"+7","client_id":"a","body":"x"}"#,
            r#"{"type":"send","to":"","client_id":"a","body":"x"}"#,
            r#"{"type":"typing","to":"07"}"#,
            r#"{"type":"typing","to":"9223372036854775808"}"#,
            r#"{"type":"read","conversation":"1-2","seq":9223372036854775808}"#,
            r#"{"type":"read","conversation":"1-2","seq":18446744073709551615}"#,
            r#"{"type":"read","conversation":"1-2","seq":18446744073709551616}"#,
            r#"{"type":"read","conversation":"1-2","seq":-1}"#,
            r#"{"type":"read","conversation":"1-2","seq":1.0}"#,
            r#"{"type":"read","conversation":"1-2","seq":"1"}"#,
        ];
        for text in refused {
            let e = ClientFrame::parse(text).unwrap_err();
            assert!(
                e.message.contains("id") || e.message.contains("seq"),
                "{text}: {}",
                e.message
            );
        }
        let e = ClientFrame::parse(
            r#"{"type":"send","to":"9223372036854775808","client_id":"c9","body":"x"}"#,
        )
        .unwrap_err();
        assert_eq!(
            e.reference.as_deref(),
            Some("c9"),
            "the ref is still echoed"
        );
        assert!(e.message.contains("9223372036854775807"), "{}", e.message);
        assert_eq!(
            ClientFrame::parse(r#"{"type":"read","conversation":"1-2","seq":9223372036854775807}"#),
            Ok(ClientFrame::Read {
                conversation: "1-2".into(),
                seq: MAX_NUMBER
            })
        );
        assert_eq!(
            ClientFrame::parse(r#"{"type":"typing","to":"9223372036854775807"}"#),
            Ok(ClientFrame::Typing {
                to: Some(Id(MAX_NUMBER)),
                conversation: None
            })
        );
    }

    #[test]
    fn a_send_or_typing_names_a_user_or_a_conversation() {
        let send = ClientFrame::parse(
            r#"{"type":"send","conversation":"g12","client_id":"a","body":"x"}"#,
        );
        assert_eq!(
            send,
            Ok(ClientFrame::Send {
                to: None,
                conversation: Some("g12".into()),
                client_id: "a".into(),
                body: "x".into()
            })
        );
        let typing = ClientFrame::parse(r#"{"type":"typing","conversation":"3-9"}"#).unwrap();
        assert_eq!(
            typing,
            ClientFrame::Typing {
                to: None,
                conversation: Some("3-9".into())
            }
        );
        assert_eq!(
            Destination::of(None, Some("3-9")),
            Ok(Destination::Conversation("3-9"))
        );
        assert_eq!(
            Destination::of(Some(Id(3)), None),
            Ok(Destination::User(Id(3)))
        );
        assert!(Destination::of(None, None).is_err());
        assert!(Destination::of(Some(Id(3)), Some("3-9")).is_err());
        // A `to` that is not an id is refused, not read as absent.
        assert!(
            ClientFrame::parse(
                r#"{"type":"send","to":"07","conversation":"3-9","client_id":"a","body":"x"}"#
            )
            .is_err()
        );
    }

    /// The hand-written readers of the common frames agree with the derived reading on every
    /// input: same frame when both read it, and never a frame where it refuses one.
    #[test]
    fn common_frame_readers_agree_with_the_derived_ones() {
        let server = [
            r#"{"type":"message","id":"7","conversation":"c1","seq":3,"from":"1","to":"2","body":"hi","ts":5,"cursor":"9"}"#,
            r#"{"cursor":"9","ts":5,"body":"h\u00e9 \"q\"","to":"2","from":"1","seq":3,"conversation":"c1","id":"7","type":"message","extra":[1,{"a":null}]}"#,
            r#"{"type":"mes\u0073age","id":"7","conversation":"c1","seq":3,"from":"1","to":"2","body":"hi","ts":5,"cursor":"9"}"#,
            r#"{"type":"message","id":"7","conversation":"c1","seq":3,"from":"1","to":"2","body":"hi","ts":5}"#,
            r#"{"type":"message","id":7,"conversation":"c1","seq":3,"from":"1","to":"2","body":"hi","ts":5,"cursor":"9"}"#,
            r#"{"type":"message","id":"7","id":"8","conversation":"c1","seq":3,"from":"1","to":"2","body":"hi","ts":5,"cursor":"9"}"#,
            r#"{"type":"message","type":"sent","id":"7","conversation":"c1","seq":3,"from":"1","to":"2","body":"hi","ts":5,"cursor":"9"}"#,
            r#"{"type":"sent","client_id":"a","id":"7","conversation":"c1","seq":3,"ts":5}"#,
            r#"{"ts":5,"seq":3,"conversation":"c1","id":"7","client_id":"a","type":"sent"}"#,
            r#"{"type":"sent","client_id":"a","id":"7","conversation":"c1","seq":"3","ts":5}"#,
            r#"{"type":"pong"}"#,
            r#"{"type":"synced","cursor":"4"}"#,
            r#"{"type":7}"#,
            r#"[1,2]"#,
            r#"{"type":"message""#,
        ];
        for text in server {
            let derived = serde_json::from_str::<ServerFrame>(text).ok();
            assert_eq!(ServerFrame::parse(text).ok(), derived, "{text}");
        }
        let client = [
            r#"{"type":"send","to":"2","client_id":"a","body":"hi"}"#,
            r#"{"body":"h\n","client_id":"a","to":"2","type":"send","x":{}}"#,
            r#"{"type":"send","to":2,"client_id":"a","body":"hi"}"#,
            r#"{"type":"send","to":"2","client_id":"a"}"#,
            r#"{"type":"send","to":"2","to":"3","client_id":"a","body":"hi"}"#,
            r#"{"type":"ack","cursor":"12"}"#,
            r#"{"type":"ack","cursor":12}"#,
            r#"{"type":"ping"}"#,
            r#"{"type":"sen"}"#,
            r#"not json"#,
        ];
        for text in client {
            let derived = serde_json::from_str::<ClientFrame>(text).ok();
            assert_eq!(ClientFrame::parse(text).ok(), derived, "{text}");
        }
    }

    #[test]
    fn ids_travel_as_decimal_strings() {
        let f = ServerFrame::Welcome {
            user_id: Id(MAX_NUMBER),
            device_id: Id(0),
        };
        assert_eq!(
            f.to_json(),
            r#"{"type":"welcome","user_id":"9223372036854775807","device_id":"0"}"#
        );
        let back: ServerFrame = serde_json::from_str(&f.to_json()).unwrap();
        assert_eq!(back, f);
        // Any `u64` is written as it is, but one past 2^63-1 does not read back: the server
        // makes none, and a peer that sends one is refused.
        let past = ServerFrame::Welcome {
            user_id: Id(u64::MAX),
            device_id: Id(0),
        };
        assert_eq!(
            past.to_json(),
            r#"{"type":"welcome","user_id":"18446744073709551615","device_id":"0"}"#
        );
        assert!(serde_json::from_str::<ServerFrame>(&past.to_json()).is_err());
    }

    #[test]
    fn numeric_ids_are_rejected() {
        let e =
            ClientFrame::parse(r#"{"type":"send","to":5,"client_id":"a","body":"x"}"#).unwrap_err();
        assert_eq!(e.reference.as_deref(), Some("a"));
    }

    #[test]
    fn parse_errors_name_the_problem() {
        assert!(
            ClientFrame::parse("{")
                .unwrap_err()
                .message
                .contains("malformed JSON")
        );
        assert!(
            ClientFrame::parse("[1]")
                .unwrap_err()
                .message
                .contains("object")
        );
        assert!(
            ClientFrame::parse("{}")
                .unwrap_err()
                .message
                .contains("type")
        );
        let e = ClientFrame::parse(r#"{"type":"fly","client_id":"c1"}"#).unwrap_err();
        assert!(e.message.contains("unknown variant"), "{}", e.message);
        assert_eq!(e.reference.as_deref(), Some("c1"));
        let e = ClientFrame::parse(r#"{"type":"send","client_id":"c2"}"#).unwrap_err();
        assert!(e.message.contains("missing field"), "{}", e.message);
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let f = ClientFrame::parse(r#"{"type":"ping","extra":1}"#).unwrap();
        assert_eq!(f, ClientFrame::Ping);
    }

    #[test]
    fn message_frame_is_flat() {
        let f = ServerFrame::Message {
            message: Message {
                id: Id(7),
                conversation: "1-2".into(),
                seq: 1,
                from: Id(1),
                to: Some(Id(2)),
                body: "hi".into(),
                system: None,
                ts: 5,
            },
            cursor: "3".into(),
        };
        let v: serde_json::Value = serde_json::from_str(&f.to_json()).unwrap();
        assert_eq!(v["type"], "message");
        assert_eq!(v["id"], "7");
        assert_eq!(v["cursor"], "3");
        assert_eq!(v["from"], "1");
        assert_eq!(serde_json::from_value::<ServerFrame>(v.clone()).unwrap(), f);
        let ServerFrame::Message { message, .. } = &f else {
            unreachable!()
        };
        let fast: serde_json::Value =
            serde_json::from_str(&message_frame_json(message, 3)).unwrap();
        assert_eq!(fast, v);
        // One serialisation serves every cursor, whatever the body holds.
        let mut tricky = message.clone();
        tricky.body = "\"quoted\" \\ line\nbreak é 😀 }".into();
        let once = MessageFrame::new(&tricky);
        for cursor in [0, 3, u64::MAX] {
            let derived = ServerFrame::Message {
                message: tricky.clone(),
                cursor: cursor.to_string(),
            };
            assert_eq!(
                ServerFrame::parse(&once.with_cursor(cursor)).unwrap(),
                derived
            );
        }
    }

    #[test]
    fn error_ref_is_renamed() {
        let f = ServerFrame::error(ErrorCode::TooLarge, "big", Some("c".into()));
        assert_eq!(
            f.to_json(),
            r#"{"type":"error","code":"too_large","message":"big","ref":"c"}"#
        );
    }
}

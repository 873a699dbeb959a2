//! confab's wire protocol, v1 (`PROTOCOL.md`): every frame and HTTP body as a Rust type.
//!
//! This crate is the API boundary: it is the only place that knows the JSON shape of anything
//! on the wire, and it does no I/O, so the server, the SDK and the benchmark all agree by
//! construction.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Largest WebSocket message the server accepts, after reassembly (bytes). Over it: close 1009.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;
/// Largest message `body` (bytes of UTF-8). Over it: `too_large`.
pub const MAX_BODY_BYTES: usize = 4096;
/// Largest HTTP request body the API accepts (bytes).
pub const MAX_HTTP_BODY_BYTES: usize = 4096;
/// Longest `client_id` (chars).
pub const MAX_CLIENT_ID_CHARS: usize = 64;

/// A 64-bit identifier (user, device, message) that travels as a decimal string, because
/// JavaScript numbers cannot hold every 64-bit integer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Id(pub u64);

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl FromStr for Id {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(Id)
    }
}

impl Serialize for Id {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut buf = itoa_buf(self.0);
        s.serialize_str(buf.as_str_mut())
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse()
            .map_err(|_| serde::de::Error::custom("expected a decimal 64-bit id in a string"))
    }
}

/// Stack buffer for formatting a `u64` without allocating.
struct ItoaBuf {
    bytes: [u8; 20],
    start: usize,
}

impl ItoaBuf {
    fn as_str_mut(&mut self) -> &str {
        // Only ASCII digits are ever written.
        std::str::from_utf8(&self.bytes[self.start..]).unwrap_or("0")
    }
}

fn itoa_buf(mut v: u64) -> ItoaBuf {
    let mut bytes = [0u8; 20];
    let mut i = 20;
    loop {
        i -= 1;
        bytes[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    ItoaBuf { bytes, start: i }
}

/// Error codes shared by HTTP and WebSocket errors. Clients branch on these, never on messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    Conflict,
    TooLarge,
    RateLimited,
    Unavailable,
    Internal,
}

impl ErrorCode {
    /// The HTTP status this code is sent with.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::Conflict => 409,
            ErrorCode::TooLarge => 413,
            ErrorCode::RateLimited => 429,
            ErrorCode::Unavailable => 503,
            ErrorCode::Internal => 500,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

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
    Send {
        to: Id,
        client_id: String,
        body: String,
    },
    Ack {
        cursor: String,
    },
    Read {
        conversation: String,
        seq: u64,
    },
    Typing {
        to: Id,
    },
    Ping,
}

impl ClientFrame {
    /// Parses one text frame. On failure the error carries the frame's `client_id`, if it
    /// had a string one, so the server can echo it as `ref`.
    pub fn parse(text: &str) -> Result<ClientFrame, FrameError> {
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

/// Why a client frame could not be parsed.
#[derive(Clone, Debug, PartialEq)]
pub struct FrameError {
    pub message: String,
    /// The frame's `client_id`, echoed as the error's `ref`.
    pub reference: Option<String>,
}

/// A message as stored: the `message` frame without its per-user `cursor`, and the
/// `last_message` of the conversation list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub id: Id,
    pub conversation: String,
    pub seq: u64,
    pub from: Id,
    pub to: Id,
    pub body: String,
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
/// `ServerFrame::Message`, without cloning the body (this runs once per delivery).
pub fn message_frame_json(message: &Message, cursor: u64) -> String {
    #[derive(Serialize)]
    struct Out<'a> {
        #[serde(rename = "type")]
        ty: &'static str,
        id: Id,
        conversation: &'a str,
        seq: u64,
        from: Id,
        to: Id,
        body: &'a str,
        ts: i64,
        cursor: Id,
    }
    serde_json::to_string(&Out {
        ty: "message",
        id: message.id,
        conversation: &message.conversation,
        seq: message.seq,
        from: message.from,
        to: message.to,
        body: &message.body,
        ts: message.ts,
        cursor: Id(cursor),
    })
    .unwrap_or_default()
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
    pub peer: Id,
    pub last_seq: u64,
    pub last_message: Option<Message>,
    pub read_seq: u64,
    pub peer_read_seq: u64,
    pub peer_delivered_seq: u64,
}

/// `GET /v1/conversations` response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conversations {
    pub conversations: Vec<ConversationSummary>,
}

/// `GET /v1/conversations/{c}/messages` response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessagePage {
    pub messages: Vec<Message>,
    pub more: bool,
}

/// Body of every HTTP error.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_travel_as_decimal_strings() {
        let f = ServerFrame::Welcome {
            user_id: Id(u64::MAX),
            device_id: Id(0),
        };
        assert_eq!(
            f.to_json(),
            r#"{"type":"welcome","user_id":"18446744073709551615","device_id":"0"}"#
        );
        let back: ServerFrame = serde_json::from_str(&f.to_json()).unwrap();
        assert_eq!(back, f);
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
                to: Id(2),
                body: "hi".into(),
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

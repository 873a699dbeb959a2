//! Push (PROTOCOL.md "Push"): a device's subscription, the server's VAPID key, and the
//! payload a notification carries.

use serde::{Deserialize, Serialize};

use crate::Id;

/// Longest Web Push endpoint URL accepted (browsers' are well under 1 KiB).
pub const MAX_ENDPOINT_CHARS: usize = 2048;
/// Longest APNs/FCM token or gateway pushkey accepted (APNs tokens are 64 hex digits, FCM's
/// about 160 characters): a subscription fits the 4 KiB bound of HTTP bodies.
pub const MAX_TOKEN_CHARS: usize = 1024;

/// A device's push subscription: `PUT /v1/push/subscription`'s body and `GET`'s answer.
///
/// Unknown fields are ignored, so a browser's `PushSubscription.toJSON()` (which also has
/// `expirationTime`) can be sent with `kind` added.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PushSubscription {
    /// A browser's subscription (RFC 8030, encrypted per RFC 8291, signed per RFC 8292).
    Webpush {
        endpoint: String,
        keys: WebPushKeys,
        #[serde(default)]
        preview: bool,
    },
    /// A push gateway the operator configured by name (Matrix Push Gateway API v1).
    Gateway {
        gateway: String,
        pushkey: String,
        app_id: String,
        #[serde(default)]
        preview: bool,
    },
    /// An APNs device token, sent to with the operator's credentials.
    Apns {
        token: String,
        #[serde(default)]
        preview: bool,
    },
    /// An FCM registration token, sent to with the operator's credentials.
    Fcm {
        token: String,
        #[serde(default)]
        preview: bool,
    },
}

impl PushSubscription {
    /// Whether notifications may carry the message's text.
    pub fn preview(&self) -> bool {
        match self {
            PushSubscription::Webpush { preview, .. }
            | PushSubscription::Gateway { preview, .. }
            | PushSubscription::Apns { preview, .. }
            | PushSubscription::Fcm { preview, .. } => *preview,
        }
    }

    /// The kind as the wire names it (and as metrics label it).
    pub fn kind(&self) -> PushKind {
        match self {
            PushSubscription::Webpush { .. } => PushKind::Webpush,
            PushSubscription::Gateway { .. } => PushKind::Gateway,
            PushSubscription::Apns { .. } => PushKind::Apns,
            PushSubscription::Fcm { .. } => PushKind::Fcm,
        }
    }
}

/// The kinds of subscription.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PushKind {
    Webpush,
    Gateway,
    Apns,
    Fcm,
}

impl PushKind {
    pub const ALL: [PushKind; 4] = [
        PushKind::Webpush,
        PushKind::Gateway,
        PushKind::Apns,
        PushKind::Fcm,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PushKind::Webpush => "webpush",
            PushKind::Gateway => "gateway",
            PushKind::Apns => "apns",
            PushKind::Fcm => "fcm",
        }
    }
}

/// A browser subscription's keys, base64url as `PushSubscription.toJSON()` gives them:
/// `p256dh` the user agent's P-256 public key (65 bytes uncompressed), `auth` its 16-byte
/// authentication secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebPushKeys {
    pub p256dh: String,
    pub auth: String,
}

/// `GET /v1/push/vapid`: the `applicationServerKey` browsers subscribe with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VapidKey {
    /// The uncompressed P-256 public key (65 bytes), base64url without padding.
    pub public_key: String,
}

/// What a notification says (encrypted for Web Push; the data of the other kinds).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PushPayload {
    /// A new message in `conversation`; a newer one replaces it (one per conversation).
    Message {
        conversation: String,
        id: Id,
        seq: u64,
        from: Id,
        from_username: String,
        /// Messages of this conversation the recipient has not read, this one included.
        unread: u64,
        /// The text, only when the subscription asked for `preview`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        body: Option<String>,
    },
    /// The user read `conversation` up to `seq` on another device: clear its notification.
    Read { conversation: String, seq: u64 },
}

impl PushPayload {
    pub fn conversation(&self) -> &str {
        match self {
            PushPayload::Message { conversation, .. } | PushPayload::Read { conversation, .. } => {
                conversation
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_browsers_subscription_json_is_accepted_with_its_kind() {
        let sub: PushSubscription = serde_json::from_str(
            r#"{"kind":"webpush","endpoint":"https://push.example/abc","expirationTime":null,
                "keys":{"p256dh":"BNc","auth":"tBH"}}"#,
        )
        .unwrap();
        assert_eq!(sub.kind(), PushKind::Webpush);
        assert!(!sub.preview());
        let gateway: PushSubscription = serde_json::from_str(
            r#"{"kind":"gateway","gateway":"sygnal","pushkey":"k","app_id":"a","preview":true}"#,
        )
        .unwrap();
        assert!(gateway.preview());
        assert!(serde_json::from_str::<PushSubscription>(r#"{"kind":"sms","to":"1"}"#).is_err());
    }

    #[test]
    fn a_payload_without_preview_has_no_body() {
        let p = PushPayload::Message {
            conversation: "c".into(),
            id: Id(1),
            seq: 2,
            from: Id(3),
            from_username: "bob".into(),
            unread: 1,
            body: None,
        };
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(
            json,
            r#"{"type":"message","conversation":"c","id":"1","seq":2,"from":"3","from_username":"bob","unread":1}"#
        );
        let read = serde_json::to_string(&PushPayload::Read {
            conversation: "c".into(),
            seq: 4,
        })
        .unwrap();
        assert_eq!(read, r#"{"type":"read","conversation":"c","seq":4}"#);
    }
}

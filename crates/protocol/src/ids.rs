//! Ids and the numbers that travel with them: the one text each number has on the wire, and
//! the conversation ids made of two user ids.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A 64-bit identifier (user, device, message) that travels as a decimal string, because
/// JavaScript numbers cannot hold every 64-bit integer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Id(pub u64);

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// The largest id, `seq`, cursor or `before` the protocol carries, 2^63-1: every one of them
/// fits SQL's signed 64-bit integers, where the store keeps them.
pub const MAX_NUMBER: u64 = u64::MAX >> 1;

/// Reads a number as the protocol writes it (ids, cursors, `before`, `limit`): ASCII digits
/// with no sign, no leading zero (but `0` itself), no spaces, at most [`MAX_NUMBER`]. `None`
/// for anything else. Exactly one text names each number, so `007` cannot alias `7`, and a
/// number too large for the store is refused rather than wrapped or clamped.
pub fn parse_number(text: &str) -> Option<u64> {
    let digits = text.as_bytes();
    let canonical = match digits {
        [] => false,
        [b'0'] => true,
        [b'0', ..] => false,
        _ => digits.iter().all(u8::is_ascii_digit),
    };
    // Twenty digits may overflow `u64` (which `parse` refuses); nineteen never do.
    let n: u64 = text.parse().ok().filter(|_| canonical)?;
    (n <= MAX_NUMBER).then_some(n)
}

/// A text that is not an id as [`parse_number`] reads one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidId;

impl fmt::Display for InvalidId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "an id is a string of {NUMBER_RULE}")
    }
}

impl std::error::Error for InvalidId {}

/// What [`parse_number`] accepts, in words, for error messages.
pub const NUMBER_RULE: &str =
    "decimal digits with no sign or leading zero, at most 9223372036854775807";

impl FromStr for Id {
    type Err = InvalidId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_number(s).map(Id).ok_or(InvalidId)
    }
}

/// The id of the conversation between two users, `<lower id>-<higher id>`: the same whoever
/// sends, and what every frame and endpoint that names a conversation carries.
pub fn conversation_id(a: Id, b: Id) -> String {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    format!("{lo}-{hi}")
}

/// The two participants of a conversation id, lower id first, if it is well formed: two
/// canonical ids (so `0012-0034` is no other name for `12-34`), lower first.
pub fn conversation_members(conversation: &str) -> Option<(Id, Id)> {
    let (lo, hi) = conversation.split_once('-')?;
    let (lo, hi): (Id, Id) = (lo.parse().ok()?, hi.parse().ok()?);
    (lo < hi).then_some((lo, hi))
}

impl Serialize for Id {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Every frame carries ids: formatting on the stack spares an allocation for each.
        s.serialize_str(itoa::Buffer::new().format(self.0))
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(|_| {
            serde::de::Error::custom(format_args!("invalid id {:?}: {InvalidId}", truncated(&s)))
        })
    }
}

/// The start of a client's text, to quote it in an error without echoing a whole frame.
fn truncated(text: &str) -> &str {
    const QUOTED: usize = 24;
    match text.char_indices().nth(QUOTED) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

/// A `seq` from a client: at most [`MAX_NUMBER`], as every stored one is, so that a larger
/// one is refused rather than clamped to the newest message (which would move a read mark).
pub(crate) fn client_seq<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let seq = u64::deserialize(d)?;
    if seq > MAX_NUMBER {
        return Err(serde::de::Error::custom(format_args!(
            "`seq` {seq} is out of range: at most {MAX_NUMBER}"
        )));
    }
    Ok(seq)
}

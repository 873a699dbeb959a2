//! Where a `send` or a `typing` frame goes: a user, or a conversation by its id.

use crate::ids::Id;

/// Where a `send` or a `typing` goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Destination<'a> {
    /// A user, by id: the 1:1 conversation with them.
    User(Id),
    /// A conversation the sender is in, by its id (a group, or a 1:1).
    Conversation(&'a str),
}

impl<'a> Destination<'a> {
    /// The frame's destination: exactly one of `to` and `conversation`, else why not.
    pub fn of(to: Option<Id>, conversation: Option<&'a str>) -> Result<Self, &'static str> {
        match (to, conversation) {
            (Some(user), None) => Ok(Destination::User(user)),
            (None, Some(c)) => Ok(Destination::Conversation(c)),
            (None, None) => Err("missing field `to` or `conversation`"),
            (Some(_), Some(_)) => Err("give `to` or `conversation`, not both"),
        }
    }
}

//! How a device's pending notification for a conversation changes when the expansion of the
//! outbox brings it a message or a read ([`Push::settle_outbox`]'s rules), with no SQL: each
//! store's settle loads the rows, runs every new one through [`Slot::apply`] in order, and
//! writes back what changed. Both stores share them, so they cannot disagree.
//!
//! [`Push::settle_outbox`]: crate::store::push::Push::settle_outbox

use confab_protocol::Id;

use super::{PendingKind, Settled};

/// A pending row as the rules see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Slot {
    pub user: Id,
    pub kind: PendingKind,
    /// Waiting to be sent (`due`), or a message already sent and kept (`shown`) so that a
    /// later read sends a clear.
    pub due: bool,
    /// The highest `seq` a notification of this conversation showed the device; 0 when none
    /// is shown (or it was cleared).
    pub shown_seq: u64,
    /// Claimed for sending, the claim not yet over: the device may show it any moment.
    pub in_flight: bool,
    pub created_at: i64,
    /// Changed by this settle: written back, with a new version.
    pub changed: bool,
}

/// What one new pending notification did, counted into [`Settled`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Effect {
    /// Something to send where nothing waited: a new row, or a shown one due again.
    Queued,
    /// A row already waited for the conversation and took it in (or it changed nothing).
    Coalesced,
    /// A read removed a message never shown: nothing to send at all.
    Cleared,
    /// No room for a new row.
    DroppedFull,
    /// A read with nothing to clear.
    Nothing,
}

impl Effect {
    pub(crate) fn count(self, settled: &mut Settled) {
        match self {
            Effect::Queued => settled.queued += 1,
            Effect::Coalesced => settled.coalesced += 1,
            Effect::Cleared => settled.cleared += 1,
            Effect::DroppedFull => settled.dropped_full += 1,
            Effect::Nothing => {}
        }
    }
}

/// The bound on due rows, as counted at the start of the settle and moved by its changes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Room {
    pub due: u64,
    pub max: u64,
}

fn seq_of(kind: PendingKind) -> u64 {
    match kind {
        PendingKind::Message { seq, .. } | PendingKind::Read { seq } => seq,
    }
}

impl Slot {
    /// A new row: a message to send.
    fn new_message(user: Id, kind: PendingKind, created_at: i64) -> Slot {
        Slot {
            user,
            kind,
            due: true,
            shown_seq: 0,
            in_flight: false,
            created_at,
            changed: true,
        }
    }

    /// The row now says `kind` and is due.
    fn becomes(&mut self, kind: PendingKind, created_at: i64) {
        self.kind = kind;
        self.due = true;
        self.created_at = created_at;
        self.changed = true;
    }

    /// Applies `kind` for `user` (written at `created_at`) to `slot`, the device's row for the
    /// conversation (`None`: there is none, or it was deleted).
    ///
    /// - A message with no row makes one, if fewer than `room.max` rows are due.
    /// - A message meeting a due row replaces it if newer (a pending read included: the new
    ///   notification replaces the shown one by its topic); an older one changes nothing.
    ///   Both are coalesced, except a newer one meeting a row in flight: that one is sent
    ///   after it, so it is queued.
    /// - A message newer than a shown row makes it due again (queued); an older one is
    ///   coalesced.
    /// - A read meeting a due message at or below its `seq` turns it into a read to send when
    ///   something was shown or the message is in flight (coalesced), and otherwise deletes
    ///   it (cleared). Meeting a due read, it raises its `seq`; meeting a due message newer
    ///   than itself, it changes nothing (both coalesced: the row sends what is needed).
    /// - A read at or past a shown row's `shown_seq` makes it a read to send (queued).
    /// - A read with no row, or below what was shown, is nothing to do.
    pub(crate) fn apply(
        slot: &mut Option<Slot>,
        user: Id,
        kind: PendingKind,
        created_at: i64,
        room: &mut Room,
    ) -> Effect {
        let Some(row) = slot else {
            return match kind {
                PendingKind::Read { .. } => Effect::Nothing,
                PendingKind::Message { .. } if room.due >= room.max => Effect::DroppedFull,
                PendingKind::Message { .. } => {
                    room.due += 1;
                    *slot = Some(Slot::new_message(user, kind, created_at));
                    Effect::Queued
                }
            };
        };
        let (new_seq, old_seq) = (seq_of(kind), seq_of(row.kind));
        match (kind, row.due) {
            (PendingKind::Message { .. }, true) => {
                if new_seq <= old_seq {
                    return Effect::Coalesced;
                }
                // One in flight is sent anyway, and this one after it: nothing was saved.
                let queued = row.in_flight;
                row.becomes(kind, created_at);
                if queued {
                    Effect::Queued
                } else {
                    Effect::Coalesced
                }
            }
            (PendingKind::Message { .. }, false) => {
                if new_seq <= old_seq.max(row.shown_seq) {
                    return Effect::Coalesced;
                }
                room.due += 1;
                row.becomes(kind, created_at);
                Effect::Queued
            }
            (PendingKind::Read { seq }, true) => match row.kind {
                PendingKind::Message { .. } if old_seq <= seq => {
                    if row.shown_seq > 0 || row.in_flight {
                        row.becomes(kind, created_at);
                        Effect::Coalesced
                    } else {
                        room.due = room.due.saturating_sub(1);
                        *slot = None;
                        Effect::Cleared
                    }
                }
                PendingKind::Read { .. } if old_seq < seq => {
                    row.becomes(kind, created_at);
                    Effect::Coalesced
                }
                _ => Effect::Coalesced,
            },
            (PendingKind::Read { seq }, false) => {
                if row.shown_seq == 0 || seq < row.shown_seq {
                    return Effect::Nothing;
                }
                room.due += 1;
                row.becomes(kind, created_at);
                Effect::Queued
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const U: Id = Id(7);

    fn msg(seq: u64) -> PendingKind {
        PendingKind::Message {
            message: Id(100 + seq),
            seq,
        }
    }

    fn read(seq: u64) -> PendingKind {
        PendingKind::Read { seq }
    }

    fn room() -> Room {
        Room { due: 0, max: 10 }
    }

    fn due(kind: PendingKind) -> Option<Slot> {
        Some(Slot {
            changed: false,
            ..Slot::new_message(U, kind, 1)
        })
    }

    fn shown(seq: u64) -> Option<Slot> {
        Some(Slot {
            due: false,
            shown_seq: seq,
            changed: false,
            ..Slot::new_message(U, msg(seq), 1)
        })
    }

    fn apply(slot: &mut Option<Slot>, kind: PendingKind, room: &mut Room) -> Effect {
        Slot::apply(slot, U, kind, 5, room)
    }

    #[test]
    fn a_message_makes_a_row_until_the_bound() {
        let mut r = Room { due: 9, max: 10 };
        let mut slot = None;
        assert_eq!(apply(&mut slot, msg(1), &mut r), Effect::Queued);
        assert_eq!(r.due, 10);
        let mut other = None;
        assert_eq!(apply(&mut other, msg(1), &mut r), Effect::DroppedFull);
        assert_eq!(other, None);
        assert_eq!(apply(&mut None, read(1), &mut r), Effect::Nothing);
    }

    #[test]
    fn messages_coalesce_newest_wins() {
        let mut r = room();
        let mut slot = due(msg(3));
        assert_eq!(apply(&mut slot, msg(2), &mut r), Effect::Coalesced);
        assert_eq!(slot.as_ref().unwrap().kind, msg(3));
        assert!(!slot.as_ref().unwrap().changed);
        assert_eq!(apply(&mut slot, msg(4), &mut r), Effect::Coalesced);
        let row = slot.unwrap();
        assert_eq!((row.kind, row.created_at, row.changed), (msg(4), 5, true));
        // A pending read is replaced by a newer message too.
        let mut slot = due(read(4));
        assert_eq!(apply(&mut slot, msg(5), &mut r), Effect::Coalesced);
        assert_eq!(slot.unwrap().kind, msg(5));
        assert_eq!(r.due, 0);
    }

    #[test]
    fn a_shown_row_is_due_again_for_a_newer_message_only() {
        let mut r = room();
        let mut slot = shown(3);
        assert_eq!(apply(&mut slot, msg(3), &mut r), Effect::Coalesced);
        assert!(!slot.as_ref().unwrap().due);
        assert_eq!(apply(&mut slot, msg(4), &mut r), Effect::Queued);
        let row = slot.unwrap();
        assert!(row.due && row.changed);
        assert_eq!((row.kind, row.shown_seq, r.due), (msg(4), 3, 1));
    }

    #[test]
    fn a_read_clears_what_was_never_shown() {
        let mut r = Room { due: 1, max: 10 };
        let mut slot = due(msg(3));
        assert_eq!(apply(&mut slot, read(2), &mut r), Effect::Coalesced);
        assert_eq!(slot.as_ref().unwrap().kind, msg(3));
        assert_eq!(apply(&mut slot, read(3), &mut r), Effect::Cleared);
        assert_eq!((slot, r.due), (None, 0));
    }

    #[test]
    fn a_read_becomes_a_clear_when_something_was_shown_or_is_in_flight() {
        let mut r = room();
        let mut slot = due(msg(3));
        slot.as_mut().unwrap().in_flight = true;
        assert_eq!(apply(&mut slot, read(3), &mut r), Effect::Coalesced);
        assert_eq!(slot.as_ref().unwrap().kind, read(3));
        // A later read raises it; an earlier one changes nothing.
        assert_eq!(apply(&mut slot, read(5), &mut r), Effect::Coalesced);
        assert_eq!(apply(&mut slot, read(4), &mut r), Effect::Coalesced);
        assert_eq!(slot.as_ref().unwrap().kind, read(5));

        let mut slot = due(msg(4));
        slot.as_mut().unwrap().shown_seq = 2;
        assert_eq!(apply(&mut slot, read(4), &mut r), Effect::Coalesced);
        assert_eq!(slot.unwrap().kind, read(4));

        let mut slot = shown(3);
        assert_eq!(apply(&mut slot, read(2), &mut r), Effect::Nothing);
        assert!(!slot.as_ref().unwrap().due);
        assert_eq!(apply(&mut slot, read(3), &mut r), Effect::Queued);
        let row = slot.unwrap();
        assert!(row.due);
        assert_eq!((row.kind, r.due), (read(3), 1));
    }
}

//! The statements of the group operations that read or write in one go (the group object,
//! receipts, members, spans, marks), made once.

use std::sync::LazyLock;

/// SQLSTATE of `confab_append_group`'s "not a member" (migration 7).
pub(super) const NOT_A_MEMBER: &str = "CF404";

/// Members longest-standing first: by the start of their current span; among those added by
/// one event (the creation), the owner, then by id. Every list of members uses this order.
pub(super) const MEMBER_ORDER: &str = "gm.from_seq, gm.role <> 'owner', gm.user_id";

/// The group and its current members with their names, if `$2` is one of them. One
/// statement, so the viewer's membership and the list come from one snapshot.
pub(super) static GROUP_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT g.title, g.created_at, gm.user_id, u.username, gm.role
         FROM groups g
         JOIN group_members gm ON gm.group_id = g.id AND gm.to_seq IS NULL
         JOIN users u ON u.id = gm.user_id
         WHERE g.id = $1
           AND EXISTS (SELECT 1 FROM group_members v
                       WHERE v.group_id = $1 AND v.user_id = $2 AND v.to_seq IS NULL)
         ORDER BY {MEMBER_ORDER}"
    )
});

/// Every current member's marks, if `$2` is one of them.
pub(super) static RECEIPTS_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT gm.user_id, gm.read_seq, gm.delivered_seq
         FROM group_members gm
         WHERE gm.group_id = $1 AND gm.to_seq IS NULL
           AND EXISTS (SELECT 1 FROM group_members v
                       WHERE v.group_id = $1 AND v.user_id = $2 AND v.to_seq IS NULL)
         ORDER BY {MEMBER_ORDER}"
    )
});

/// The current members of a group, in [`MEMBER_ORDER`].
pub(super) static MEMBERS_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT gm.user_id FROM group_members gm
         WHERE gm.group_id = $1 AND gm.to_seq IS NULL ORDER BY {MEMBER_ORDER}"
    )
});

/// What a device has still to read, span by span. A span that ended counts only for a
/// device made no later than the event that ended it; a device that does not exist gets
/// none of those (its `created_at` is NULL).
pub(super) const SPANS_SQL: &str = "
    SELECT gm.group_id, GREATEST(COALESCE(mk.seq, 0), gm.from_seq - 1), gm.to_seq
    FROM group_members gm
    JOIN groups g ON g.id = gm.group_id
    LEFT JOIN group_marks mk ON mk.device_id = $1 AND mk.group_id = gm.group_id
    WHERE gm.user_id = $2
      AND (gm.to_seq IS NULL
           OR (gm.to_seq > GREATEST(COALESCE(mk.seq, 0), gm.from_seq - 1)
               AND (SELECT d.created_at FROM devices d WHERE d.id = $1)
              <= (SELECT m.ts FROM messages m
                  WHERE m.conversation = 'g' || gm.group_id::TEXT AND m.seq = gm.to_seq)))
    ORDER BY gm.group_id, gm.from_seq";

/// A device's mark moves forward (clamped to the group's last message, and kept only for a
/// user who has been a member), and the user's delivered mark on their latest span moves to
/// it, clamped to the span's end. One statement: an ack is one round trip.
pub(super) const SET_MARK_SQL: &str = "
    WITH g AS (
        SELECT g.id, g.last_seq FROM groups g
        WHERE g.id = $2
          AND EXISTS (SELECT 1 FROM group_members gm
                      WHERE gm.group_id = $2 AND gm.user_id = $3)
    ), mark AS (
        INSERT INTO group_marks AS mk (device_id, group_id, seq)
        SELECT $1, g.id, LEAST($4, g.last_seq) FROM g
        ON CONFLICT (device_id, group_id) DO UPDATE SET seq = GREATEST(mk.seq, EXCLUDED.seq)
        RETURNING 1
    )
    UPDATE group_members gm
    SET delivered_seq = LEAST($4, COALESCE(gm.to_seq, g.last_seq))
    FROM g
    WHERE gm.group_id = g.id AND gm.user_id = $3
      AND gm.from_seq = (SELECT max(s.from_seq) FROM group_members s
                         WHERE s.group_id = $2 AND s.user_id = $3)
      AND gm.delivered_seq < LEAST($4, COALESCE(gm.to_seq, g.last_seq))";

/// The read mark of a current member moves forward, clamped to the group's last message.
pub(super) const MARK_READ_SQL: &str = "
    UPDATE group_members gm SET read_seq = LEAST($3, g.last_seq)
    FROM groups g
    WHERE g.id = $1 AND gm.group_id = $1 AND gm.user_id = $2 AND gm.to_seq IS NULL
      AND gm.read_seq < LEAST($3, g.last_seq)
    RETURNING gm.read_seq";

/// `user`'s current span in `group`: its role and where it starts.
pub(super) const CURRENT_SPAN_SQL: &str = "
    SELECT gm.role, gm.from_seq FROM group_members gm
    WHERE gm.group_id = $1 AND gm.user_id = $2 AND gm.to_seq IS NULL";

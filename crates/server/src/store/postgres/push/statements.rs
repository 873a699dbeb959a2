//! The push state's statements: subscriptions, claims, the settle's reads and writes, the
//! outcomes and the backlog. A claim is one statement: it leases the rows it takes (`FOR
//! UPDATE SKIP LOCKED`, so concurrent claims on other nodes pass over them instead of waiting)
//! and answers them with what the caller needs.

/// The group a conversation id names, as SQL (NULL for a 1:1 one): `CASE` keeps the cast from
/// ever seeing a 1:1 id, which an `AND` would not promise.
macro_rules! group_of {
    ($conversation:literal) => {
        concat!(
            "(CASE WHEN ",
            $conversation,
            " LIKE 'g%' THEN substr(",
            $conversation,
            ", 2)::BIGINT END)"
        )
    };
}

/// Makes or replaces a device's subscription (`$1` device, `$2` user), if the device is the
/// user's and not revoked. Its row is locked, so a revocation waits for this to commit and
/// then deletes it; one that committed first leaves nothing to subscribe.
pub(super) const SET_SUBSCRIPTION_SQL: &str = "
    INSERT INTO push_subscriptions AS s (device_id, user_id, id, kind, data, created_at)
    SELECT d.id, d.user_id, $3, $4, $5, $6 FROM devices d
    WHERE d.id = $1 AND d.user_id = $2 AND d.revoked_at IS NULL
    FOR SHARE
    ON CONFLICT (device_id) DO UPDATE
        SET user_id = EXCLUDED.user_id, id = EXCLUDED.id, kind = EXCLUDED.kind,
            data = EXCLUDED.data, created_at = EXCLUDED.created_at";

/// An intent to clear (`$1` reader, `$2` its device), when the reader has another subscribed
/// device.
pub(super) const RECORD_READ_SQL: &str = "
    INSERT INTO push_outbox (conversation, kind, seq, user_id, device_id, created_at)
    SELECT $3, 'read', $4, $1, $2, $5
    WHERE EXISTS (SELECT 1 FROM push_subscriptions s
                  WHERE s.user_id = $1 AND s.device_id <> $2)";

/// Leases up to `$3` outbox rows free at `$1` until `$2`, oldest first, each with its targets
/// as two arrays (users, devices; NULL when there are none): for a read, the reader's other
/// devices; for a 1:1 message, the recipient's; for a group's, those of the members whose
/// span holds its `seq` (`from_seq` to `to_seq`, both inclusive). Never the sender's.
pub(super) const CLAIM_OUTBOX_SQL: &str = concat!(
    "
    WITH c AS (
        UPDATE push_outbox o SET lease_until = $2
        WHERE o.id IN (SELECT q.id FROM push_outbox q WHERE q.lease_until <= $1
                       ORDER BY q.id LIMIT $3 FOR UPDATE SKIP LOCKED)
        RETURNING o.id, o.conversation, o.kind, o.message_id, o.seq, o.user_id, o.device_id,
                  o.created_at
    ), t AS (
        SELECT c.id, s.user_id, s.device_id FROM c
        JOIN push_subscriptions s ON s.user_id = c.user_id AND s.device_id <> c.device_id
        WHERE c.kind = 'read'
        UNION
        SELECT c.id, s.user_id, s.device_id FROM c
        JOIN messages m ON m.id = c.message_id
        JOIN push_subscriptions s ON s.user_id = m.recipient
        WHERE c.kind = 'message' AND s.user_id <> c.user_id
        UNION
        SELECT c.id, s.user_id, s.device_id FROM c
        JOIN group_members gm ON gm.group_id = ",
    group_of!("c.conversation"),
    "
             AND gm.from_seq <= c.seq AND (gm.to_seq IS NULL OR gm.to_seq >= c.seq)
        JOIN push_subscriptions s ON s.user_id = gm.user_id
        WHERE c.kind = 'message' AND s.user_id <> c.user_id
    )
    SELECT c.id, c.conversation, c.kind, c.message_id, c.seq, c.user_id, c.device_id,
           c.created_at,
           array_agg(t.user_id) FILTER (WHERE t.id IS NOT NULL),
           array_agg(t.device_id) FILTER (WHERE t.id IS NOT NULL)
    FROM c LEFT JOIN t ON t.id = c.id
    GROUP BY c.id, c.conversation, c.kind, c.message_id, c.seq, c.user_id, c.device_id,
             c.created_at
    ORDER BY c.id"
);

/// Leases up to `$3` pending rows due at `$1` and free, until `$2`, longest due first, each
/// with its subscription (NULL if it is gone), and for a message its sender, text, the
/// sender's name and the recipient's unread count: the conversation's last `seq` (for a
/// group, the last the member saw if it has left) less the user's read mark.
pub(super) const CLAIM_DUE_SQL: &str = concat!(
    "
    WITH c AS (
        UPDATE push_pending p SET lease_until = $2
        WHERE (p.device_id, p.conversation) IN (
            SELECT q.device_id, q.conversation FROM push_pending q
            WHERE q.state = 'due' AND q.next_at <= $1 AND q.lease_until <= $1
            ORDER BY q.next_at LIMIT $3 FOR UPDATE SKIP LOCKED)
        RETURNING p.device_id, p.user_id, p.conversation, p.kind, p.message_id, p.seq,
                  p.version, p.attempts, p.next_at, p.created_at
    )
    SELECT c.device_id, c.user_id, c.conversation, c.version, c.attempts, c.created_at,
           c.kind, c.message_id, c.seq, s.id, s.data, m.sender, m.body, u.username,
           GREATEST(0, COALESCE(
               (SELECT cv.last_seq - CASE WHEN cv.user_lo = c.user_id
                                          THEN cv.read_lo ELSE cv.read_hi END
                FROM conversations cv WHERE cv.id = c.conversation),
               (SELECT LEAST(g.last_seq, COALESCE(gm.to_seq, g.last_seq)) - gm.read_seq
                FROM groups g JOIN group_members gm ON gm.group_id = g.id
                WHERE g.id = ",
    group_of!("c.conversation"),
    " AND gm.user_id = c.user_id
                ORDER BY gm.from_seq DESC LIMIT 1),
               0))
    FROM c
    LEFT JOIN push_subscriptions s ON s.device_id = c.device_id
    LEFT JOIN messages m ON c.kind = 'message' AND m.id = c.message_id
    LEFT JOIN users u ON u.id = m.sender
    ORDER BY c.next_at, c.device_id, c.conversation"
);

/// Deletes the outbox rows a settle expanded.
pub(super) const DELETE_OUTBOX_SQL: &str = "DELETE FROM push_outbox WHERE id = ANY($1)";

/// The settle's targets that still have a subscription, locked against a revocation until
/// the settle commits (in id order: settles lock alike).
pub(super) const SUBSCRIBED_SQL: &str = "
    SELECT device_id FROM push_subscriptions WHERE device_id = ANY($1)
    ORDER BY device_id FOR KEY SHARE";

/// Rows waiting to be sent: the bound `max_pending` counts them.
pub(super) const DUE_COUNT_SQL: &str = "SELECT count(*) FROM push_pending WHERE state = 'due'";

/// The pending rows of the settle's (device, conversation) pairs, locked in key order (two
/// settles meeting on some rows wait in turn, never in a cycle), and whether each is in
/// flight at `$3`.
pub(super) const PENDING_SQL: &str = "
    SELECT p.device_id, p.conversation, p.user_id, p.kind, p.message_id, p.seq, p.state,
           p.shown_seq, p.lease_until > $3, p.created_at
    FROM push_pending p
    JOIN unnest($1::BIGINT[], $2::TEXT[]) AS k(d, c) ON p.device_id = k.d AND p.conversation = k.c
    ORDER BY p.device_id, p.conversation
    FOR UPDATE OF p";

/// Rows made by a settle, in key order. A row another settle made meanwhile is skipped, and
/// the caller retries (see `settle.rs`).
pub(super) const INSERT_PENDING_SQL: &str = "
    INSERT INTO push_pending (device_id, conversation, user_id, kind, message_id, seq, state,
                              version, next_at, created_at)
    SELECT x.d, x.c, x.u, x.k, x.m, x.s, 'due', nextval('push_pending_versions'), $8, x.t
    FROM unnest($1::BIGINT[], $2::TEXT[], $3::BIGINT[], $4::TEXT[], $5::BIGINT[],
                $6::BIGINT[], $7::BIGINT[]) AS x(d, c, u, k, m, s, t)
    ORDER BY x.d, x.c
    ON CONFLICT (device_id, conversation) DO NOTHING";

/// Rows a settle changed: each is due with its new content and a new version; a shown one
/// is due at once, a due one keeps its retry time and count (a push service's backoff holds
/// for the newer content too) and its lease (one in flight is sent again after its finish).
pub(super) const UPDATE_PENDING_SQL: &str = "
    UPDATE push_pending p
    SET kind = x.k, message_id = x.m, seq = x.s, created_at = x.t, state = 'due',
        version = nextval('push_pending_versions'),
        next_at = CASE WHEN p.state = 'due' THEN p.next_at ELSE $7 END,
        attempts = CASE WHEN p.state = 'due' THEN p.attempts ELSE 0 END
    FROM unnest($1::BIGINT[], $2::TEXT[], $3::TEXT[], $4::BIGINT[], $5::BIGINT[],
                $6::BIGINT[]) AS x(d, c, k, m, s, t)
    WHERE p.device_id = x.d AND p.conversation = x.c";

/// Rows a settle cleared.
pub(super) const DELETE_PENDING_SQL: &str = "
    DELETE FROM push_pending p USING unnest($1::BIGINT[], $2::TEXT[]) AS k(d, c)
    WHERE p.device_id = k.d AND p.conversation = k.c";

/// A message was sent (`$3` the version claimed, `$4` its seq): the row claimed is kept as
/// shown; a row changed since is only released, and remembers what the device shows.
pub(super) const SENT_MESSAGE_SQL: &str = "
    UPDATE push_pending SET
        state = CASE WHEN version = $3 THEN 'shown' ELSE state END,
        attempts = CASE WHEN version = $3 THEN 0 ELSE attempts END,
        version = CASE WHEN version = $3 THEN nextval('push_pending_versions') ELSE version END,
        shown_seq = GREATEST(shown_seq, $4),
        lease_until = 0
    WHERE device_id = $1 AND conversation = $2";

/// A read was sent or a notification dropped: the row claimed (`$3`) goes; a row changed
/// since is only released. One statement, one snapshot: the update never sees the row the
/// delete took.
pub(super) const DELETE_OR_RELEASE_SQL: &str = "
    WITH gone AS (
        DELETE FROM push_pending
        WHERE device_id = $1 AND conversation = $2 AND version = $3
        RETURNING 1
    )
    UPDATE push_pending SET lease_until = 0
    WHERE device_id = $1 AND conversation = $2 AND version <> $3";

/// A retry at `$4` after `$5` failures, for the row claimed; a row changed since is only
/// released, to send its newer content next.
pub(super) const RETRY_SQL: &str = "
    UPDATE push_pending SET
        next_at = CASE WHEN version = $3 THEN $4 ELSE next_at END,
        attempts = CASE WHEN version = $3 THEN $5 ELSE attempts END,
        lease_until = 0
    WHERE device_id = $1 AND conversation = $2";

/// Notifications that cannot be built (the subscription or the message is gone) are
/// deleted, for the version claimed.
pub(super) const DELETE_CLAIMED_SQL: &str = "
    DELETE FROM push_pending WHERE device_id = $1 AND conversation = $2 AND version = $3";

/// A claimed row's lease ends: it may be claimed again at once.
pub(super) const RELEASE_SQL: &str =
    "UPDATE push_pending SET lease_until = 0 WHERE device_id = $1 AND conversation = $2";

/// The endpoint is gone: the subscription, if it is still the one that was claimed with.
pub(super) const DELETE_SUBSCRIPTION_IF_SQL: &str =
    "DELETE FROM push_subscriptions WHERE device_id = $1 AND id = $2";

/// A device's subscription and pending rows, in that order: a settle holding the
/// subscription's row finishes first, and the second statement's snapshot sees what it made.
pub(super) const FORGET_SUBSCRIPTIONS_SQL: &str =
    "DELETE FROM push_subscriptions WHERE device_id = ANY($1)";
pub(super) const FORGET_PENDING_SQL: &str = "DELETE FROM push_pending WHERE device_id = ANY($1)";

/// What waits: outbox rows, due pending rows, and when the oldest of either was written.
pub(super) const BACKLOG_SQL: &str = "
    SELECT (SELECT count(*) FROM push_outbox),
           (SELECT count(*) FROM push_pending WHERE state = 'due'),
           COALESCE(LEAST((SELECT min(created_at) FROM push_outbox),
                          (SELECT min(created_at) FROM push_pending WHERE state = 'due')), 0)";

/// The VAPID key: the first one stored wins.
pub(super) const PUT_KEY_SQL: &str =
    "INSERT INTO push_keys (name, pem) VALUES ('vapid', $1) ON CONFLICT (name) DO NOTHING";
pub(super) const GET_KEY_SQL: &str = "SELECT pem FROM push_keys WHERE name = 'vapid'";

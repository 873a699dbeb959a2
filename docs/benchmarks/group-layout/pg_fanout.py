#!/usr/bin/env python3
"""WAL bytes per message in PostgreSQL: 1:1 baseline (confab's own confab_append), group
fan-out on write (A: message + group seq bump + M user head bumps + M stream rows) and per-group
log (B: message + group seq bump). One transaction per message (autocommit, one function call),
synchronous_commit on.

Creates a fresh database fanout_exp_<random>, fills it like sqlite_fanout.py (10k users, 50k 1:1
conversations, 250k messages, ~50 stream rows per user), and drops it at the end.

For each scenario: CHECKPOINT, then
  phase "cold":  N messages right after the checkpoint (full-page images of every page first
                 touched are in here),
  phase "warm":  N more messages, no checkpoint in between (steady state between checkpoints).
WAL bytes = pg_wal_lsn_diff of pg_current_wal_lsn() around each phase; cross-checked with
pg_walinspect (record bytes vs full-page-image bytes) and the backend's /proc/<pid>/io wchar.

usage: pg_fanout.py [--dsn ...] [--quick] [--keep]
"""
import argparse
import io
import json
import os
import random
import secrets
import sys
import time

import psycopg

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sqlite_fanout import (USERS, PREFILL_MSGS, CONVS_PER_USER, T0, Snowflake,  # noqa: E402
                           rand_text, conv_id)

SCHEMA = r"""
CREATE TABLE users (
    id BIGINT PRIMARY KEY, username TEXT NOT NULL, username_key TEXT COLLATE "C" NOT NULL,
    password_hash TEXT NOT NULL, created_at BIGINT NOT NULL, stream_head BIGINT NOT NULL DEFAULT 0,
    last_seen BIGINT NOT NULL DEFAULT 0, CONSTRAINT users_username_key UNIQUE (username_key)
) WITH (fillfactor = 50);
CREATE TABLE conversations (
    id TEXT COLLATE "C" PRIMARY KEY, user_lo BIGINT NOT NULL, user_hi BIGINT NOT NULL,
    last_seq BIGINT NOT NULL, last_ts BIGINT NOT NULL,
    read_lo BIGINT NOT NULL DEFAULT 0, read_hi BIGINT NOT NULL DEFAULT 0,
    delivered_lo BIGINT NOT NULL DEFAULT 0, delivered_hi BIGINT NOT NULL DEFAULT 0
) WITH (fillfactor = 50);
CREATE INDEX conversations_lo ON conversations(user_lo);
CREATE INDEX conversations_hi ON conversations(user_hi);
CREATE TABLE messages (
    id BIGINT PRIMARY KEY, conversation TEXT COLLATE "C" NOT NULL, seq BIGINT NOT NULL,
    sender BIGINT NOT NULL, recipient BIGINT NOT NULL, client_id TEXT NOT NULL,
    body TEXT NOT NULL, ts BIGINT NOT NULL,
    CONSTRAINT messages_conversation_seq UNIQUE (conversation, seq),
    CONSTRAINT messages_sender_client_id UNIQUE (sender, client_id)
);
CREATE TABLE stream (
    user_id BIGINT NOT NULL, pos BIGINT NOT NULL, message_id BIGINT NOT NULL,
    PRIMARY KEY (user_id, pos)
);
CREATE TABLE blocks (
    owner BIGINT NOT NULL, blocked BIGINT NOT NULL, created_at BIGINT NOT NULL,
    PRIMARY KEY (owner, blocked)
);
-- experiment only: a group's seq counter and its members
CREATE TABLE groups (id BIGINT PRIMARY KEY, last_seq BIGINT NOT NULL DEFAULT 0) WITH (fillfactor = 50);
CREATE TABLE group_members (group_id BIGINT NOT NULL, user_id BIGINT NOT NULL, PRIMARY KEY (group_id, user_id));
"""

# confab's migration 2 function, verbatim in its steps.
CONFAB_APPEND = r"""
CREATE FUNCTION confab_append(
    p_id BIGINT, p_from BIGINT, p_to BIGINT, p_conversation TEXT, p_lo BIGINT,
    p_hi BIGINT, p_client_id TEXT, p_body TEXT, p_ts BIGINT,
    OUT o_status TEXT, OUT o_id BIGINT, OUT o_conversation TEXT, OUT o_seq BIGINT,
    OUT o_sender BIGINT, OUT o_recipient BIGINT, OUT o_body TEXT, OUT o_ts BIGINT,
    OUT o_sender_pos BIGINT, OUT o_recipient_pos BIGINT)
LANGUAGE plpgsql AS $fn$
BEGIN
    SELECT m.id, m.conversation, m.seq, m.sender, m.recipient, m.body, m.ts
      INTO o_id, o_conversation, o_seq, o_sender, o_recipient, o_body, o_ts
      FROM messages m WHERE m.sender = p_from AND m.client_id = p_client_id;
    IF FOUND THEN o_status := 'duplicate'; RETURN; END IF;
    IF EXISTS (SELECT 1 FROM blocks b WHERE b.owner = p_to AND b.blocked = p_from) THEN
        o_status := 'blocked'; RETURN;
    END IF;
    IF p_to <= p_from THEN
        UPDATE users SET stream_head = stream_head + 1 WHERE id = p_to RETURNING stream_head INTO o_recipient_pos;
        UPDATE users SET stream_head = stream_head + 1 WHERE id = p_from RETURNING stream_head INTO o_sender_pos;
    ELSE
        UPDATE users SET stream_head = stream_head + 1 WHERE id = p_from RETURNING stream_head INTO o_sender_pos;
        UPDATE users SET stream_head = stream_head + 1 WHERE id = p_to RETURNING stream_head INTO o_recipient_pos;
    END IF;
    IF o_recipient_pos IS NULL THEN RAISE EXCEPTION 'no user %', p_to USING ERRCODE = 'CF404'; END IF;
    IF o_sender_pos IS NULL THEN RAISE EXCEPTION 'no user %', p_from USING ERRCODE = 'CF404'; END IF;
    INSERT INTO conversations AS c (id, user_lo, user_hi, last_seq, last_ts)
        VALUES (p_conversation, p_lo, p_hi, 1, p_ts)
        ON CONFLICT (id) DO UPDATE
            SET last_seq = c.last_seq + 1, last_ts = GREATEST(c.last_ts, EXCLUDED.last_ts)
        RETURNING c.last_seq INTO o_seq;
    INSERT INTO messages (id, conversation, seq, sender, recipient, client_id, body, ts)
        VALUES (p_id, p_conversation, o_seq, p_from, p_to, p_client_id, p_body, p_ts);
    INSERT INTO stream (user_id, pos, message_id)
        VALUES (p_to, o_recipient_pos, p_id), (p_from, o_sender_pos, p_id);
    o_status := 'stored';
END
$fn$;
"""

# (A) fan-out on write: group seq, every member's head, one stream row per member, the message.
# One UPDATE for all heads: the same WAL records as one UPDATE per member. (A real multi-writer
# version must take the row locks in one order; a SELECT ... FOR UPDATE beforehand would add a
# lock record per member, so it is left out: this is the lower bound.)
GROUP_A = r"""
CREATE FUNCTION group_append_a(p_id BIGINT, p_group BIGINT, p_from BIGINT, p_client_id TEXT,
                               p_body TEXT, p_ts BIGINT) RETURNS BIGINT
LANGUAGE plpgsql AS $fn$
DECLARE v_seq BIGINT;
BEGIN
    PERFORM 1 FROM messages m WHERE m.sender = p_from AND m.client_id = p_client_id;
    IF FOUND THEN RETURN NULL; END IF;
    UPDATE groups SET last_seq = last_seq + 1 WHERE id = p_group RETURNING last_seq INTO v_seq;
    WITH bumped AS (
        UPDATE users u SET stream_head = u.stream_head + 1 FROM group_members gm
         WHERE gm.group_id = p_group AND u.id = gm.user_id
        RETURNING u.id, u.stream_head)
    INSERT INTO stream (user_id, pos, message_id) SELECT id, stream_head, p_id FROM bumped;
    INSERT INTO messages (id, conversation, seq, sender, recipient, client_id, body, ts)
        VALUES (p_id, 'g' || p_group, v_seq, p_from, p_group, p_client_id, p_body, p_ts);
    RETURN v_seq;
END
$fn$;
"""

# (B) per-group log: group seq and the message, nothing per member.
GROUP_B = r"""
CREATE FUNCTION group_append_b(p_id BIGINT, p_group BIGINT, p_from BIGINT, p_client_id TEXT,
                               p_body TEXT, p_ts BIGINT) RETURNS BIGINT
LANGUAGE plpgsql AS $fn$
DECLARE v_seq BIGINT;
BEGIN
    PERFORM 1 FROM messages m WHERE m.sender = p_from AND m.client_id = p_client_id;
    IF FOUND THEN RETURN NULL; END IF;
    UPDATE groups SET last_seq = last_seq + 1 WHERE id = p_group RETURNING last_seq INTO v_seq;
    INSERT INTO messages (id, conversation, seq, sender, recipient, client_id, body, ts)
        VALUES (p_id, 'g' || p_group, v_seq, p_from, p_group, p_client_id, p_body, p_ts);
    RETURN v_seq;
END
$fn$;
"""


def copy_rows(cur, table, cols, rows):
    with cur.copy(f"COPY {table} ({', '.join(cols)}) FROM STDIN") as cp:
        for r in rows:
            cp.write_row(r)


def prefill(conn, seed=1):
    rng = random.Random(seed)
    sf = Snowflake(T0 - 400 * 86_400_000)
    users = []
    urows = []
    for i in range(USERS):
        uid, ms = sf.next()
        sf.ms += rng.randint(1, 3_000_000)
        users.append(uid)
        name = f"user{i:05d}_{rand_text(rng, 6)}"
        urows.append((uid, name, name.lower(), "$argon2id$v=19$" + rand_text(rng, 80), ms))
    convs = set()
    while len(convs) < USERS * CONVS_PER_USER // 2:
        a, b = rng.sample(users, 2)
        convs.add((min(a, b), max(a, b)))
    convs = sorted(convs)
    heads = {u: 0 for u in users}
    seqs, last_ts = {}, {}
    mrows, srows = [], []
    for _ in range(PREFILL_MSGS):
        a, b = rng.choice(convs)
        if rng.random() < 0.5:
            a, b = b, a
        mid, ms = sf.next()
        sf.ms += rng.randint(0, 40_000)
        c = conv_id(a, b)
        seqs[c] = seqs.get(c, 0) + 1
        last_ts[c] = ms
        heads[a] += 1
        heads[b] += 1
        mrows.append((mid, c, seqs[c], a, b, rand_text(rng, 20), rand_text(rng, 100), ms))
        srows.append((b, heads[b], mid))
        srows.append((a, heads[a], mid))
    with conn.cursor() as cur:
        copy_rows(cur, "users", ["id", "username", "username_key", "password_hash", "created_at"], urows)
        copy_rows(cur, "conversations", ["id", "user_lo", "user_hi", "last_seq", "last_ts"],
                  [(conv_id(a, b), a, b, seqs.get(conv_id(a, b), 0), last_ts.get(conv_id(a, b), 0)) for a, b in convs])
        copy_rows(cur, "messages", ["id", "conversation", "seq", "sender", "recipient", "client_id", "body", "ts"], mrows)
        copy_rows(cur, "stream", ["user_id", "pos", "message_id"], srows)
        cur.execute("UPDATE users u SET stream_head = s.h FROM (SELECT user_id, max(pos) h FROM stream GROUP BY user_id) s WHERE s.user_id = u.id")
    return users, convs, sf.ms + 1000


def lsn(cur):
    return cur.execute("SELECT pg_current_wal_lsn()").fetchone()[0]


def wchar(pid):
    try:
        with open(f"/proc/{pid}/io") as f:
            return int(dict(l.split(":") for l in f)["wchar"])
    except OSError:
        return None


def ckpt_count(cur):
    return cur.execute("SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter").fetchone()[0]


def other_backends(cur):
    return cur.execute("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
                       " AND pid <> pg_backend_pid() AND state = 'active'").fetchone()[0]


def phase(conn, calls, pid):
    with conn.cursor() as cur:
        ck0, oth0 = ckpt_count(cur), other_backends(cur)
        l0, wc0 = lsn(cur), wchar(pid)
        first = None
        t0 = time.perf_counter()
        for i, (sql, args) in enumerate(calls):
            cur.execute(sql, args)
            if i == 0:
                first = cur.connection.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", (l0,)).fetchone()[0]
        t1 = time.perf_counter()
        l1, wc1 = lsn(cur), wchar(pid)
        n = len(calls)
        diff = cur.execute("SELECT pg_wal_lsn_diff(%s, %s)", (l1, l0)).fetchone()[0]
        st = cur.execute("SELECT sum(count), sum(record_size), sum(fpi_size) FROM pg_get_wal_stats(%s, %s, false)",
                         (l0, l1)).fetchone()
        ck1, oth1 = ckpt_count(cur), other_backends(cur)
    # `first` was measured with one extra statement (SELECT, no WAL); it includes the first commit.
    return {
        "n": n,
        "wal_bytes_per_msg": float(diff) / n,
        "first_msg_wal_bytes": float(first),
        "records_per_msg": float(st[0]) / n,
        "record_bytes_per_msg": float(st[1]) / n,
        "fpi_bytes_per_msg": float(st[2]) / n,
        "backend_wchar_per_msg": (wc1 - wc0) / n if wc0 is not None else None,
        "ms_per_msg": (t1 - t0) / n * 1e3,
        "checkpoints_during": ck1 - ck0,
        "other_active_backends": max(oth0, oth1),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dsn", default="host=127.0.0.1 port=5432 user=postgres")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--keep", action="store_true", help="do not drop the database")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results_pg.json"))
    args = ap.parse_args()
    dbname = "fanout_exp_" + secrets.token_hex(4)
    admin = psycopg.connect(args.dsn + " dbname=postgres", autocommit=True)
    admin.execute(f"CREATE DATABASE {dbname}")
    print(f"created {dbname}", file=sys.stderr)
    results = []
    try:
        conn = psycopg.connect(args.dsn + f" dbname={dbname}", autocommit=True)
        conn.execute("SET synchronous_commit = on")
        settings = {k: conn.execute(f"SHOW {k}").fetchone()[0] for k in
                    ("server_version", "synchronous_commit", "full_page_writes", "wal_compression",
                     "checkpoint_timeout", "max_wal_size", "shared_buffers", "wal_level", "fsync")}
        print(settings, file=sys.stderr)
        conn.execute("CREATE EXTENSION pg_walinspect")
        conn.execute(SCHEMA)
        conn.execute(CONFAB_APPEND)
        conn.execute(GROUP_A)
        conn.execute(GROUP_B)
        t = time.time()
        with conn.transaction():
            users, convs, next_ms = prefill(conn)
        conn.execute("VACUUM ANALYZE")
        print(f"prefilled in {time.time() - t:.0f}s", file=sys.stderr)
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        rng = random.Random(7)
        sf = Snowflake(next_ms)
        scale = 0.1 if args.quick else 1.0
        scenarios = [("1:1", 2, 0, 2000), ("A", 10, 100, 1000), ("A", 100, 10, 500), ("A", 1024, 4, 200),
                     ("B", 10, 100, 2000), ("B", 100, 10, 2000), ("B", 1024, 4, 2000)]
        for layout, m, ng, target in scenarios:
            n = max(int(target * scale), 20)
            groups = []
            for _ in range(ng):
                gid, _ = sf.next()
                members = rng.sample(users, m)
                groups.append((gid, members))
            if groups:
                with conn.transaction():
                    with conn.cursor() as cur:
                        cur.executemany("INSERT INTO groups (id) VALUES (%s)", [(g,) for g, _ in groups])
                        copy_rows(cur, "group_members", ["group_id", "user_id"], [(g, u) for g, ms in groups for u in ms])
                conn.execute("ANALYZE group_members")

            def make(k):
                out = []
                for i in range(k):
                    mid, ms = sf.next()
                    cid, body = rand_text(rng, 20), rand_text(rng, 100)
                    if layout == "1:1":
                        a, b = rng.choice(convs)
                        if rng.random() < 0.5:
                            a, b = b, a
                        lo, hi = min(a, b), max(a, b)
                        out.append(("SELECT o_status FROM confab_append(%s,%s,%s,%s,%s,%s,%s,%s,%s)",
                                    (mid, a, b, conv_id(a, b), lo, hi, cid, body, ms)))
                    else:
                        gid, members = groups[i % len(groups)]
                        fn = "group_append_a" if layout == "A" else "group_append_b"
                        out.append((f"SELECT {fn}(%s,%s,%s,%s,%s,%s)", (mid, gid, rng.choice(members), cid, body, ms)))
                return out

            # a few unmeasured calls first (plans cached, group rows warm), then CHECKPOINT
            for sql, a in make(max(len(groups), 5)):
                conn.execute(sql, a)
            conn.execute("CHECKPOINT")
            for ph in ("cold", "warm"):
                r = phase(conn, make(n), pid)
                r.update({"layout": layout, "M": m, "groups": ng, "phase": ph})
                results.append(r)
                print(json.dumps(r), file=sys.stderr)
        conn.close()
        with open(args.out, "w") as f:
            json.dump({"database": dbname, "settings": settings, "results": results}, f, indent=1)
    finally:
        if not args.keep:
            admin.execute(f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)")
            print(f"dropped {dbname}", file=sys.stderr)
        admin.close()
    print(f"{'layout':6} {'M':>5} {'phase':5} {'n':>5} {'WAL B/msg':>10} {'of it FPI':>10} {'non-FPI':>8} {'records/msg':>11}"
          f" {'1st msg WAL':>11} {'backend wchar/msg':>17} {'ms/msg':>7} {'ckpts':>5} {'others':>6}")
    for r in results:
        wc = f"{r['backend_wchar_per_msg']:.0f}" if r["backend_wchar_per_msg"] is not None else "-"
        print(f"{r['layout']:6} {r['M']:>5} {r['phase']:5} {r['n']:>5} {r['wal_bytes_per_msg']:>10.0f} {r['fpi_bytes_per_msg']:>10.0f} {r['record_bytes_per_msg']:>8.0f}"
              f" {r['records_per_msg']:>11.1f} {r['first_msg_wal_bytes']:>11.0f} {wc:>17} {r['ms_per_msg']:>7.2f}"
              f" {r['checkpoints_during']:>5} {r['other_active_backends']:>6}")


if __name__ == "__main__":
    main()

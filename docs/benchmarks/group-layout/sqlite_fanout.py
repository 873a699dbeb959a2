#!/usr/bin/env python3
"""What a group message costs to store in SQLite, fan-out on write (A) vs per-group log (B),
against the 1:1 baseline. Mirrors confab's writer: WAL, synchronous=FULL, page size 4096,
wal_autocheckpoint=0, BEGIN IMMEDIATE ... COMMIT around `batch` appends, heads and seqs kept
in memory, INSERT OR FAIL.

Per run: copy a pre-built base database (10k users, ~50 stream rows per user), warm up with
a few transactions of the same scenario, then measure N messages:
  - WAL growth in bytes (the WAL never resets: no checkpoint runs), hence frames,
  - /proc/self/io write_bytes and wchar deltas (cross-check),
  - wall time and CPU time.

usage: sqlite_fanout.py [--dir DIR] [--quick]
"""
import argparse
import json
import os
import random
import shutil
import sqlite3
import string
import sys
import time

USERS = 10_000
PREFILL_MSGS = 250_000          # 2 stream rows each -> ~50 stream rows per user
CONVS_PER_USER = 10             # 1:1 conversations: each user talks to ~10 others
PAGE = 4096
FRAME = PAGE + 24
T0 = 1_700_000_000_000          # ms, base time of the snowflakes

SCHEMA = """
CREATE TABLE users (
    id INTEGER PRIMARY KEY, username TEXT NOT NULL, username_key TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL, created_at INTEGER NOT NULL, last_seen INTEGER NOT NULL DEFAULT 0);
CREATE TABLE conversations (
    id TEXT PRIMARY KEY, user_lo INTEGER NOT NULL, user_hi INTEGER NOT NULL,
    read_lo INTEGER NOT NULL DEFAULT 0, read_hi INTEGER NOT NULL DEFAULT 0,
    delivered_lo INTEGER NOT NULL DEFAULT 0, delivered_hi INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;
CREATE INDEX conversations_lo ON conversations(user_lo);
CREATE INDEX conversations_hi ON conversations(user_hi);
CREATE TABLE messages (
    id INTEGER PRIMARY KEY, conversation TEXT NOT NULL, seq INTEGER NOT NULL,
    sender INTEGER NOT NULL, recipient INTEGER NOT NULL, client_id TEXT NOT NULL,
    body TEXT NOT NULL, ts INTEGER NOT NULL,
    UNIQUE (conversation, seq), UNIQUE (sender, client_id));
CREATE TABLE stream (
    user_id INTEGER NOT NULL, pos INTEGER NOT NULL, message_id INTEGER NOT NULL,
    PRIMARY KEY (user_id, pos)) WITHOUT ROWID;
"""

INS_MSG = ("INSERT OR FAIL INTO messages (id, conversation, seq, sender, recipient, client_id, body, ts)"
           " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)")
INS_STREAM2 = "INSERT OR FAIL INTO stream (user_id, pos, message_id) VALUES (?1, ?2, ?5), (?3, ?4, ?5)"
INS_STREAM1 = "INSERT OR FAIL INTO stream (user_id, pos, message_id) VALUES (?1, ?2, ?3)"

ALNUM = string.ascii_letters + string.digits


class Snowflake:
    """Increasing 64-bit ids: ms << 22 | sequence."""
    def __init__(self, ms):
        self.ms, self.n = ms, 0

    def next(self):
        self.n += 1
        if self.n >= 1 << 12:
            self.ms, self.n = self.ms + 1, 0
        return (self.ms << 22) | (1 << 12) | self.n, self.ms


def rand_text(rng, n):
    return "".join(rng.choices(ALNUM, k=n))


def conv_id(a, b):
    lo, hi = (a, b) if a <= b else (b, a)
    return f"{lo}-{hi}"


def open_writer(path):
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA temp_store=MEMORY")
    conn.execute("PRAGMA cache_size=-65536")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    return conn


def build_base(path, seed=1):
    """10k users, 50k 1:1 conversations, 250k messages in time order (so each user's stream
    rows arrive interleaved with everyone else's, as they would have)."""
    rng = random.Random(seed)
    for p in (path, path + "-wal", path + "-shm"):
        if os.path.exists(p):
            os.remove(p)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(f"PRAGMA page_size={PAGE}")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-262144")
    conn.executescript(SCHEMA)
    sf = Snowflake(T0 - 400 * 86_400_000)
    users = []
    conn.execute("BEGIN")
    for i in range(USERS):
        uid, ms = sf.next()
        sf.ms += rng.randint(1, 3_000_000)   # users sign up over time
        users.append(uid)
        name = f"user{i:05d}_{rand_text(rng, 6)}"
        conn.execute("INSERT INTO users (id, username, username_key, password_hash, created_at)"
                     " VALUES (?,?,?,?,?)", (uid, name, name.lower(), "$argon2id$v=19$" + rand_text(rng, 80), ms))
    conn.execute("COMMIT")
    # 1:1 conversations: each user picks ~CONVS_PER_USER/2 partners.
    convs = set()
    while len(convs) < USERS * CONVS_PER_USER // 2:
        a, b = rng.sample(users, 2)
        convs.add((min(a, b), max(a, b)))
    convs = sorted(convs)
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO conversations (id, user_lo, user_hi) VALUES (?,?,?)",
                     [(conv_id(a, b), a, b) for a, b in convs])
    conn.execute("COMMIT")
    heads = {u: 0 for u in users}
    seqs = {}
    conn.execute("BEGIN")
    for i in range(PREFILL_MSGS):
        a, b = rng.choice(convs)
        if rng.random() < 0.5:
            a, b = b, a
        mid, ms = sf.next()
        sf.ms += rng.randint(0, 40_000)
        c = conv_id(a, b)
        seqs[c] = seqs.get(c, 0) + 1
        heads[a] += 1
        heads[b] += 1
        conn.execute(INS_MSG, (mid, c, seqs[c], a, b, rand_text(rng, 20), rand_text(rng, 100), ms))
        conn.execute(INS_STREAM2, (b, heads[b], a, heads[a], mid))
        if i % 20000 == 19999:
            conn.execute("COMMIT")
            conn.execute("BEGIN")
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    meta = {"users": users, "convs": convs, "heads": heads, "seqs": seqs, "next_ms": sf.ms + 1000}
    with open(path + ".meta.json", "w") as f:
        json.dump(meta, f)
    return meta


def proc_io():
    d = {}
    with open("/proc/self/io") as f:
        for line in f:
            k, v = line.split(":")
            d[k] = int(v)
    return d


def make_messages(rng, sf, layout, m, n, meta, groups):
    """Pre-generates n messages (so the timed loop does only the store's work)."""
    out = []
    convs = meta["convs"]
    for i in range(n):
        mid, ms = sf.next()
        cid, body = rand_text(rng, 20), rand_text(rng, 100)
        if layout == "1:1":
            a, b = rng.choice(convs)
            if rng.random() < 0.5:
                a, b = b, a
            out.append((mid, ms, cid, body, a, b, None))
        else:
            g = groups[i % len(groups)]            # round-robin over the groups
            sender = rng.choice(g["members"])
            out.append((mid, ms, cid, body, sender, g["id"], g))
    return out


def append_batch(conn, layout, msgs, heads, seqs):
    conn.execute("BEGIN IMMEDIATE")
    for mid, ms, cid, body, sender, to, g in msgs:
        if layout == "1:1":
            c = conv_id(sender, to)
            seq = seqs.get(c, 0) + 1
            rp, sp = heads[to] + 1, heads[sender] + 1
            conn.execute(INS_MSG, (mid, c, seq, sender, to, cid, body, ms))
            conn.execute(INS_STREAM2, (to, rp, sender, sp, mid))
            heads[to], heads[sender], seqs[c] = rp, sp, seq
        else:
            c = g["conv"]
            seq = seqs[c] + 1
            # recipient column: the group's id (schema unchanged for the experiment)
            conn.execute(INS_MSG, (mid, c, seq, sender, to, cid, body, ms))
            if layout == "A":
                rows = []
                for u in g["members"]:
                    p = heads[u] + 1
                    heads[u] = p
                    rows.append((u, p, mid))
                conn.executemany(INS_STREAM1, rows)
            seqs[c] = seq
    conn.execute("COMMIT")


def fsync_probe(workdir, n=40):
    """p50 of appending one WAL-frame-sized write + fdatasync to a growing file, in ms: how
    slow the disk's sync is right now (it varies a lot on this shared VM)."""
    p = os.path.join(workdir, "fsync_probe")
    fd = os.open(p, os.O_CREAT | os.O_TRUNC | os.O_WRONLY)
    lat = []
    for _ in range(n):
        t = time.perf_counter()
        os.write(fd, b"y" * FRAME)
        os.fdatasync(fd)
        lat.append(time.perf_counter() - t)
    os.close(fd)
    os.remove(p)
    lat.sort()
    return lat[n // 2] * 1e3


def run(base, workdir, meta, layout, m, ngroups, batch, n, warm_txns, seed):
    rng = random.Random(seed)
    db = os.path.join(workdir, "run.db")
    for p in (db, db + "-wal", db + "-shm"):
        if os.path.exists(p):
            os.remove(p)
    shutil.copyfile(base, db)
    heads = dict(meta["heads"])
    seqs = dict(meta["seqs"])
    sf = Snowflake(meta["next_ms"])
    groups = []
    if layout != "1:1":
        for gi in range(ngroups):
            gid, _ = sf.next()
            members = rng.sample(meta["users"], m)
            groups.append({"id": gid, "conv": f"g{gid}", "members": members})
            seqs[f"g{gid}"] = 0
    probe_ms = fsync_probe(workdir)
    conn = open_writer(db)
    assert conn.execute("PRAGMA page_size").fetchone()[0] == PAGE
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # warm-up: the same scenario, not measured (page cache, first WAL frames, group seqs > 0)
    warm = make_messages(rng, sf, layout, m, warm_txns * batch, meta, groups)
    for i in range(0, len(warm), batch):
        append_batch(conn, layout, warm[i:i + batch], heads, seqs)
    msgs = make_messages(rng, sf, layout, m, n, meta, groups)
    wal = db + "-wal"
    w0, io0 = os.path.getsize(wal), proc_io()
    t0, c0 = time.perf_counter(), time.process_time()
    lat = []
    for i in range(0, n, batch):
        s = time.perf_counter()
        append_batch(conn, layout, msgs[i:i + batch], heads, seqs)
        lat.append(time.perf_counter() - s)
    t1, c1 = time.perf_counter(), time.process_time()
    w1, io1 = os.path.getsize(wal), proc_io()
    conn.close()
    for p in (db, db + "-wal", db + "-shm"):
        if os.path.exists(p):
            os.remove(p)
    txns = n // batch
    lat.sort()
    return {
        "layout": layout, "M": m, "groups": ngroups, "batch": batch, "n": n, "txns": txns,
        "wal_bytes_per_msg": (w1 - w0) / n,
        "wal_frames_per_txn": (w1 - w0) / FRAME / txns,
        "write_bytes_per_msg": (io1["write_bytes"] - io0["write_bytes"]) / n,
        "wchar_per_msg": (io1["wchar"] - io0["wchar"]) / n,
        "us_per_msg": (t1 - t0) / n * 1e6,
        "cpu_us_per_msg": (c1 - c0) / n * 1e6,
        "txn_ms_p50": lat[len(lat) // 2] * 1e3,
        "txn_ms_p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e3,
        "fsync_probe_ms_p50": probe_ms,
        "loadavg_1m": os.getloadavg()[0],
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="/var/tmp/fanout-sqlite")
    ap.add_argument("--quick", action="store_true", help="small N, for a smoke test")
    ap.add_argument("--rebuild", action="store_true")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results_sqlite.json"))
    args = ap.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    base = os.path.join(args.dir, "base.db")
    if args.rebuild or not os.path.exists(base + ".meta.json"):
        t = time.time()
        build_base(base)
        print(f"built base db in {time.time() - t:.0f}s, {os.path.getsize(base) / 1e6:.0f} MB", file=sys.stderr)
    with open(base + ".meta.json") as f:
        meta = json.load(f)
    meta["heads"] = {int(k): v for k, v in meta["heads"].items()}
    meta["convs"] = [tuple(c) for c in meta["convs"]]
    scale = 0.1 if args.quick else 1.0
    # (layout, M, groups, target N)
    scenarios = [("1:1", 2, 0, 3000),
                 ("A", 10, 100, 2000), ("A", 100, 10, 1000), ("A", 1024, 4, 300),
                 ("B", 10, 100, 3000), ("B", 100, 10, 3000), ("B", 1024, 4, 3000)]
    results = []
    print(f"sqlite {sqlite3.sqlite_version}", file=sys.stderr)
    for layout, m, g, target in scenarios:
        for batch in (1, 10, 50):
            n = max(int(target * scale) // batch * batch, 10 * batch)
            r = run(base, args.dir, meta, layout, m, g, batch, n, warm_txns=3, seed=m * 1000 + batch + (0 if layout == "A" else 7))
            results.append(r)
            print(json.dumps(r), file=sys.stderr)
    with open(args.out, "w") as f:
        json.dump({"sqlite_version": sqlite3.sqlite_version, "results": results}, f, indent=1)
    hdr = f"{'layout':6} {'M':>5} {'batch':>5} {'n':>5} {'WAL B/msg':>10} {'frames/txn':>10} {'write_bytes/msg':>15} {'wchar/msg':>10} {'us/msg':>9} {'cpu us/msg':>10} {'txn p50 ms':>10} {'p99 ms':>8} {'fsync p50':>9} {'load':>5}"
    print(hdr)
    for r in results:
        print(f"{r['layout']:6} {r['M']:>5} {r['batch']:>5} {r['n']:>5} {r['wal_bytes_per_msg']:>10.0f} {r['wal_frames_per_txn']:>10.1f}"
              f" {r['write_bytes_per_msg']:>15.0f} {r['wchar_per_msg']:>10.0f} {r['us_per_msg']:>9.0f} {r['cpu_us_per_msg']:>10.0f}"
              f" {r['txn_ms_p50']:>10.2f} {r['txn_ms_p99']:>8.2f} {r['fsync_probe_ms_p50']:>9.2f} {r['loadavg_1m']:>5.1f}")


if __name__ == "__main__":
    main()

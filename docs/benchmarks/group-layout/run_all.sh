#!/bin/sh
# Reproduces the measurement (about 3 minutes on a quiet 2-core machine): SQLite, then
# PostgreSQL on 127.0.0.1:5432. Everything it makes (the venv, the databases, the results)
# goes under $OUT, /var/tmp/group-layout by default, never into the repository.
set -e
here="$(cd "$(dirname "$0")" && pwd)"
OUT="${OUT:-/var/tmp/group-layout}"
mkdir -p "$OUT"
[ -x "$OUT/venv/bin/python" ] || { python3 -m venv "$OUT/venv" && "$OUT/venv/bin/pip" install -q "psycopg[binary]"; }
"$OUT/venv/bin/python" "$here/sqlite_fanout.py" --dir "$OUT/sqlite" --out "$OUT/results_sqlite.json" > "$OUT/sqlite_results.txt"
"$OUT/venv/bin/python" "$here/pg_fanout.py" --dsn "host=127.0.0.1 port=5432 user=postgres" --out "$OUT/results_pg.json" > "$OUT/pg_results.txt"
cat "$OUT/sqlite_results.txt" "$OUT/pg_results.txt"

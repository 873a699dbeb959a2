#!/usr/bin/env bash
# Runs every fuzz target for a few seconds each (default 10; `fuzz/smoke.sh 60` for a minute),
# starting from the committed seeds. New inputs go to a scratch corpus that is removed at the
# end, so the committed corpus stays small; a crash is kept under fuzz/artifacts/<target>/ and
# fails the script. Needs the nightly toolchain and `cargo install cargo-fuzz`.
#
# `FUZZ_TARGETS="id cursor" fuzz/smoke.sh` runs only those targets.
set -euo pipefail
cd "$(dirname "$0")"

seconds="${1:-10}"
targets="${FUZZ_TARGETS:-$(cargo +nightly fuzz list)}"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

# One build of every target first, so each run's time is spent fuzzing.
cargo +nightly fuzz build

failed=()
for target in $targets; do
  echo "== $target (${seconds} s)"
  mkdir -p "$scratch/$target" "artifacts/$target"
  # The scratch corpus comes first: libFuzzer writes what it finds into the first folder.
  if ! cargo +nightly fuzz run "$target" "$scratch/$target" "corpus/$target" -- \
      -max_total_time="$seconds" -print_final_stats=1 2>"$scratch/$target.log"; then
    failed+=("$target")
    # The crash, its input and the stack, without the run's progress lines.
    grep -v '^#[0-9]' "$scratch/$target.log" | tail -n 40 >&2
  fi
  # The last progress line (coverage, features, corpus) and the totals.
  grep -E '^#[0-9]+.*cov: ' "$scratch/$target.log" | tail -n 1 || true
  grep -E '^stat::(number_of_executed_units|average_exec_per_sec)' "$scratch/$target.log" || true
done

if ((${#failed[@]})); then
  echo "fuzz smoke: failed: ${failed[*]} (inputs under fuzz/artifacts/)" >&2
  exit 1
fi
echo "fuzz smoke: every target ran ${seconds} s without a finding"

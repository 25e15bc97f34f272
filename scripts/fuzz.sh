#!/usr/bin/env bash
# Runs every fuzz target for a bounded time on its committed corpus (fuzz/corpus/TARGET).
# FUZZ_SECONDS per target (default 30); 0 skips fuzzing. New inputs found are added to the
# corpus folder; a crash, or an input that takes more than 5 s (-timeout), fails the run and
# leaves its input under fuzz/artifacts/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../fuzz"

seconds=${FUZZ_SECONDS:-30}
if [ "$seconds" -eq 0 ]; then
  echo "fuzzing skipped (FUZZ_SECONDS=0)" >&2
  exit 0
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "== installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked --quiet
fi
# cargo-fuzz needs nightly-only flags (sanitizers); this machine has one stable toolchain.
export RUSTC_BOOTSTRAP=1
cargo fuzz build -O
for target in $(cargo fuzz list); do
  echo "== fuzz $target for ${seconds}s" >&2
  mkdir -p "corpus/$target"
  cargo fuzz run -O "$target" "corpus/$target" -- -max_total_time="$seconds" -timeout=5 -rss_limit_mb=2048 -print_final_stats=1 2>&1 \
    | grep -E '^(Done|stat::number_of_executed_units|==[0-9]+== ERROR|SUMMARY)' || true
  if [ -n "$(ls -A "artifacts/$target" 2>/dev/null)" ]; then
    echo "fuzz target $target found a crash: fuzz/artifacts/$target" >&2
    exit 1
  fi
done

#!/usr/bin/env bash
# Runs every fuzz target under fuzz/ for a bounded time each, one after another, from its checked-in seeds
# (fuzz/seeds/TARGET) plus the working corpus (fuzz/corpus/TARGET, kept between runs, not checked in).
# Stops at the first target that finds a crash, an oracle mismatch or a timeout, and names its artifact.
#
#   scripts/fuzz-all.sh              # 60 s per target
#   FUZZ_SECONDS=600 scripts/fuzz-all.sh handshake frame   # chosen targets, 10 min each
#
# Needs cargo-fuzz (installed here when missing) and a nightly compiler feature set: the stable toolchain with
# RUSTC_BOOTSTRAP=1, as docs/protocol.md ("Fuzzing") records. Prints one summary line per target.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds=${FUZZ_SECONDS:-60}
export CARGO_TARGET_DIR=${FUZZ_TARGET_DIR:-$PWD/target} RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install --locked cargo-fuzz
fi

if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list)
fi
[ ${#targets[@]} -gt 0 ] || { echo "no fuzz targets found" >&2; exit 1; }

echo "== building ${#targets[@]} targets"
cargo fuzz build -O

summary=()
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "seeds/$t" "artifacts/$t"
  log=$(mktemp)
  echo "== $t: ${seconds} s"
  if cargo fuzz run -O "$t" "corpus/$t" "seeds/$t" -- -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
    execs=$(grep -oP 'stat::number_of_executed_units:\s*\K\d+' "$log" || echo '?')
    rate=$(grep -oP 'stat::average_exec_per_sec:\s*\K\d+' "$log" || echo '?')
    cov=$(grep -oP '#\d+\s+DONE\s+cov: \K\d+' "$log" || echo '?')
    summary+=("$t: ok, $execs executions ($rate/s), coverage $cov edges")
    rm -f "$log"
  else
    tail -40 "$log"
    artifact=$(grep -oP 'Test unit written to \K\S+' "$log" | tail -1 || true)
    summary+=("$t: FAILED${artifact:+ (artifact: fuzz/$artifact)}; log: $log")
    printf '%s\n' "${summary[@]}"
    exit 1
  fi
done
echo "== summary (${seconds} s per target, $(date -u +%FT%TZ))"
printf '%s\n' "${summary[@]}"

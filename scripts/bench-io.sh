#!/usr/bin/env bash
# The I/O backends side by side (epoll vs io_uring), every workload of the comparison in one run, the servers
# alternating inside each repetition:
#   1. fan-out, 10,000 subscribers × 10 and 100 msg/s (scripts/bench-c10k.sh): CPU per delivery, p99, p99.9
#   2. echo round trips, 10,000 connections × 1 msg/s each (ECHO_RATES="1 10": also × 10) (scripts/bench-echo.sh)
#   3. handshakes/s during a 50,000-connection ramp, 3 gateway processes on one port (scripts/bench-c100k.sh)
#   4. memory per idle connection, 19,000 connections on one loop thread (scripts/idle-rss.py)
#   5. system calls per delivered message, fan-out and echo (scripts/syscalls.sh)
#   6. the io_uring options (SQPOLL, registered files) against plain io_uring at fan-out and echo
#   7. (not in the default PARTS) c100k: 100,000 subscribers over 7 gateway processes, a broadcast each second
# then prints one table of medians and io_uring ÷ epoll ratios (results/io-<date>/summary.txt).
#
#   scripts/bench-io.sh                 # everything, REPEAT=2 (about 25 minutes on the 2-core VM)
#   PARTS="fanout echo" REPEAT=3 scripts/bench-io.sh
#
# Settings (environment): PARTS (any of fanout echo ramp idle syscalls options c100k), REPEAT, ECHO_RATES, RESULTS,
# BENCH_PREBUILT=1 (no cargo: use target/release as it is), plus what the scripts above take (THREADS, PROCS, SIZE,
# WARMUP, DURATION, SOURCE_IPS).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
S=$ROOT/scripts
PARTS=${PARTS:-"fanout echo ramp idle syscalls options"}
REPEAT=${REPEAT:-2}
OUT=${RESULTS:-$ROOT/results/io-$(date -u +%Y%m%dT%H%M%SZ)}
BACKENDS="wsgate-epoll wsgate-uring"
mkdir -p "$OUT"
[ -n "${BENCH_PREBUILT:-}" ] || (cd "$ROOT" && cargo build --release --quiet -p wsgate -p wsgate-loadgen)
commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo "${BENCH_COMMIT:-unknown}")
{ echo "bench-io: parts=[$PARTS] repeat=$REPEAT commit=$commit"; uname -a; nproc; date -u; } \
  | tee "$OUT/params.txt"

has() { [[ " $PARTS " == *" $1 "* ]]; }

if has fanout; then
  RESULTS=$OUT/fanout SERVERS=$BACKENDS CONNS=10000 RATES="10 100" REPEAT=$REPEAT "$S/bench-c10k.sh"
fi
if has echo; then
  for rate in ${ECHO_RATES:-1}; do
    RESULTS=$OUT/echo SERVERS=$BACKENDS CONNS=10000 RATE=$rate REPEAT=$REPEAT "$S/bench-echo.sh"
  done
fi
# many_gateways PART CONNS GATEWAYS SECONDS: bench-c100k.sh for each backend, alternating, REPEAT times.
many_gateways() {
  local rep server
  for rep in $(seq 1 "$REPEAT"); do
    for server in $BACKENDS; do
      RESULTS=$OUT/$1/$server-$rep SERVER=$server CONNS=$2 GATEWAYS=$3 DURATION=$4 "$S/bench-c100k.sh"
    done
  done
}
has ramp && many_gateways ramp 50000 3 4
has c100k && many_gateways c100k 100000 7 6
if has idle; then
  source "$S/bench-lib.sh"
  for rep in $(seq 1 "$REPEAT"); do
    for server in $BACKENDS; do
      dir=$OUT/idle/$server-$rep.d
      mkdir -p "$dir"
      THREADS=1 start_standalone "$dir" "$server"
      port=${SERVER_URL##*:}; port=${port%%/*}
      "$S/idle-rss.py" --pid "$SERVER_PID" --port "$port" --connections 19000 | tee "$OUT/idle/$server-$rep.txt"
      bench_cleanup
    done
  done
fi
if has syscalls; then
  RESULTS=$OUT/syscalls-fanout SERVERS=$BACKENDS CONNS=10000 RATE=100 "$S/syscalls.sh"
  RESULTS=$OUT/syscalls-echo MODE=echo SERVERS=$BACKENDS CONNS=10000 RATE=1 "$S/syscalls.sh"
fi
if has options; then
  opts="wsgate-uring wsgate-uring-sqpoll wsgate-uring-fixed"
  RESULTS=$OUT/options-fanout SERVERS=$opts CONNS=10000 RATES=100 REPEAT=$REPEAT "$S/bench-c10k.sh"
  RESULTS=$OUT/options-echo SERVERS=$opts CONNS=10000 RATE=1 REPEAT=$REPEAT "$S/bench-echo.sh"
fi

python3 "$S/bench-io-summary.py" "$OUT" | tee "$OUT/summary.txt"

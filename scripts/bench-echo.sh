#!/usr/bin/env bash
# Echo round trips: N connections each send paced masked messages to a server started with --echo; the loadgen
# records receive time − scheduled send time. Servers alternate within each repetition.
#
#   scripts/bench-echo.sh                                 # wsgate and both peers, 1,000 connections × 10 msg/s
#   CONNS=10000 RATE=1 SERVERS=wsgate REPEAT=2 scripts/bench-echo.sh
#   SERVERS="wsgate-epoll wsgate-uring" CONNS=10000 RATE=1 REPEAT=3 scripts/bench-echo.sh   # the two backends
#
# Settings (environment): SERVERS, CONNS, RATE (messages/s per connection), SIZE, THREADS, PROCS, WARMUP,
# DURATION, REPEAT, SOURCE_IPS, RESULTS (default results/echo-<date>), FLAMEGRAPH=1 (profile each run into
# flamegraphs/echo-SERVER-cCONNS-rRATE.svg; do not quote figures from profiled runs).
set -euo pipefail
source "$(dirname "$0")/bench-lib.sh"

SERVERS=${SERVERS:-"wsgate fastwebsockets tokio-tungstenite"}
CONNS=${CONNS:-1000}
RATE=${RATE:-10}
bench_setup echo "servers=[$SERVERS] conns=$CONNS rate=$RATE/conn"

for rep in $(seq 1 "$REPEAT"); do
  for server in $SERVERS; do
    run="$server-echo-c$CONNS-r$RATE-$rep"
    dir="$RESULTS/$run.d"
    mkdir -p "$dir"
    echo "== $run" >&2
    start_standalone "$dir" "$server" --echo
    url=$SERVER_URL
    fg_pid=""
    if [ "${FLAMEGRAPH:-0}" = 1 ]; then
      # Sample 5 s in the middle of the measured window (after the ramp and the warm-up).
      ( sleep $((WARMUP + 6)); "$ROOT/scripts/flamegraph.sh" "$SERVER_PID" \
          "$ROOT/flamegraphs/echo-$server-c$CONNS-r$RATE.svg" 5 "$run" ) > "$dir/flamegraph.log" 2>&1 &
      fg_pid=$!
    fi
    "$LOADGEN" echo --url "$url" --connections "$CONNS" --rate "$RATE" --size "$SIZE" --procs "$PROCS" \
      --source-ips "$SOURCE_IPS" --warmup "$WARMUP" --duration "$DURATION" --server-pid "$SERVER_PID" \
      --json "$RESULTS/$run.json" --hgrm "$RESULTS/$run.hgrm" > "$dir/loadgen.out" 2> "$dir/loadgen.err" \
      || echo "loadgen failed for $run (see $dir/loadgen.err)" >&2
    [ -z "$fg_pid" ] || wait "$fg_pid" || echo "flamegraph failed for $run (see $dir/flamegraph.log)" >&2
    bench_cleanup
    wait 2>/dev/null || true
  done
done

hgrms=() labels=()
for server in $SERVERS; do
  f="$RESULTS/$server-echo-c$CONNS-r$RATE-1.hgrm"
  [ -f "$f" ] && hgrms+=("$f") && labels+=(--label "$server")
done
[ ${#hgrms[@]} -eq 0 ] || "$LOADGEN" chart --out "$RESULTS/echo-c$CONNS-r$RATE.svg" \
  --title "echo round trip, $CONNS conns x $RATE msg/s x ${SIZE} B" "${labels[@]}" "${hgrms[@]}" || true
summary_table "$RESULTS"/*.json | tee "$RESULTS/summary.txt"

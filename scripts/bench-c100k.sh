#!/usr/bin/env bash
# c100k: N idle subscribers held by several gateway processes sharing one port (SO_REUSEPORT), plus a broadcast
# every second: memory per connection, broadcast completion time (the latency distribution's max is the time
# until the last subscriber got a message), handshake rate during the ramp, loss.
#
#   scripts/bench-c100k.sh                     # 100,000 subscribers, 7 gateway processes, 1 msg/s
#   CONNS=40000 GATEWAYS=3 scripts/bench-c100k.sh
#   SERVER=wsgate-uring CONNS=50000 GATEWAYS=3 scripts/bench-c100k.sh   # one backend (see server_args)
#
# Why several processes: the development machines cap open files at 20,000 per process (not raisable), so one
# process cannot hold 100k sockets here. Production machines have no such cap; wsgate itself has no such limit.
# Settings (environment): CONNS, GATEWAYS, RATE (msg/s, default 1), SIZE, PROCS (loadgen processes), RAMP
# (connections/s, default unpaced), WARMUP, DURATION, SOURCE_IPS, RESULTS, SERVER (wsgate or a wsgate-* name),
# SERVER_EXTRA (more gateway arguments, e.g. "--ping-interval 1000 --pong-timeout 900" to measure the
# cost of the server's pings: compare server CPU and the broadcast completion time with and without).
set -euo pipefail
source "$(dirname "$0")/bench-lib.sh"

CONNS=${CONNS:-100000}
GATEWAYS=${GATEWAYS:-7}
RATE=${RATE:-1}
PROCS=${PROCS:-8}
WARMUP=${WARMUP:-3}
SOURCE_IPS=${SOURCE_IPS:-127.0.0.2-127.0.0.61}
SERVER=${SERVER:-wsgate}
SERVERS=$SERVER
bench_setup c100k "conns=$CONNS gateways=$GATEWAYS rate=$RATE ramp=${RAMP:-unpaced}"

run="$SERVER-c$CONNS-g$GATEWAYS-r$RATE"
dir="$RESULTS/$run.d"
mkdir -p "$dir"
start_feed "$dir" "$RATE" "$SIZE"
read -r -a extra <<< "${SERVER_EXTRA:-}"
start_server "$dir" "$SERVER" 127.0.0.1:0 "$FEED_ADDR" 1 "${extra[@]}"
url=$SERVER_URL
port=${url##*:}; port=${port%%/*}
pids=(--server-pid "$SERVER_PID")
for ((g = 1; g < GATEWAYS; g++)); do
  start_server "$dir" "$SERVER" "127.0.0.1:$port" "$FEED_ADDR" 1 "${extra[@]}"
  pids+=(--server-pid "$SERVER_PID")
done
ramp=()
[ -n "${RAMP:-}" ] && ramp=(--ramp "$RAMP")
"$LOADGEN" subscribe --url "$url" --connections "$CONNS" --procs "$PROCS" --source-ips "$SOURCE_IPS" \
  "${ramp[@]}" --warmup "$WARMUP" --duration "$DURATION" "${pids[@]}" \
  --json "$RESULTS/$run.json" --hgrm "$RESULTS/$run.hgrm" 2> "$dir/loadgen.err" | tee "$dir/loadgen.out"
bench_cleanup
"$LOADGEN" chart --out "$RESULTS/$run.svg" --title "c$CONNS idle + $RATE broadcast/s ($GATEWAYS processes)" \
  --label "$SERVER" "$RESULTS/$run.hgrm" || true
summary_table "$RESULTS"/*.json | tee "$RESULTS/summary.txt"

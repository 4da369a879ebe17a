#!/usr/bin/env bash
# System calls per delivered message, per server, counted by the kernel's raw_syscalls:sys_enter tracepoint
# (`perf stat`, cheap enough not to change the load) over a window in the middle of a run, plus a per-syscall
# table from `perf trace -s` over a shorter window.
#
#   SERVERS="wsgate-epoll wsgate-uring" scripts/syscalls.sh                        # fan-out, 10,000 × 100 msg/s
#   MODE=echo SERVERS="wsgate-epoll wsgate-uring" CONNS=10000 RATE=1 scripts/syscalls.sh
#
# Fan-out: deliveries in the window = feed messages the loop threads took in (from /healthz) × subscribers (the
# loadgen confirms nothing was lost). Echo: deliveries = round trips = connections × rate × window. The counts
# cover the whole server process (its feed thread too).
# Settings (environment): MODE (fanout|echo), SERVERS, CONNS, RATE, SIZE, THREADS, PROCS, WINDOW (s), RESULTS.
set -euo pipefail
source "$(dirname "$0")/bench-lib.sh"

MODE=${MODE:-fanout}
SERVERS=${SERVERS:-"wsgate-epoll wsgate-uring"}
CONNS=${CONNS:-10000}
RATE=${RATE:-100}
WINDOW=${WINDOW:-5}
WARMUP=${WARMUP:-3}
DURATION=$((WINDOW * 2 + 6))
bench_setup "syscalls-$MODE" "servers=[$SERVERS] conns=$CONNS rate=$RATE window=${WINDOW}s"

healthz_field() { # PORT FIELD
  python3 - "$1" "$2" <<'PY'
import json, socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
data = b""
while chunk := s.recv(65536):
    data += chunk
print(json.loads(data.split(b"\r\n\r\n", 1)[1])[sys.argv[2]])
PY
}

for server in $SERVERS; do
  run="$server-$MODE-c$CONNS-r$RATE"
  dir="$RESULTS/$run.d"
  mkdir -p "$dir"
  echo "== $run" >&2
  if [ "$MODE" = echo ]; then
    start_standalone "$dir" "$server" --echo
    "$LOADGEN" echo --url "$SERVER_URL" --connections "$CONNS" --rate "$RATE" --size "$SIZE" --procs "$PROCS" \
      --source-ips "$SOURCE_IPS" --warmup "$WARMUP" --duration "$DURATION" --server-pid "$SERVER_PID" \
      --json "$RESULTS/$run.json" > "$dir/loadgen.out" 2> "$dir/loadgen.err" &
  else
    start_feed "$dir" "$RATE" "$SIZE"
    start_server "$dir" "$server" 127.0.0.1:0 "$FEED_ADDR" "$THREADS"
    "$LOADGEN" subscribe --url "$SERVER_URL" --connections "$CONNS" --procs "$PROCS" --source-ips "$SOURCE_IPS" \
      --warmup "$WARMUP" --duration "$DURATION" --server-pid "$SERVER_PID" \
      --json "$RESULTS/$run.json" > "$dir/loadgen.out" 2> "$dir/loadgen.err" &
  fi
  loadgen_pid=$!
  port=${SERVER_URL##*:}; port=${port%%/*}
  # Wait for every connection, then let the load settle.
  for _ in $(seq 600); do
    [ "$(healthz_field "$port" connections)" -ge "$CONNS" ] && break
    sleep 0.1
  done
  sleep "$WARMUP"
  before=$(healthz_field "$port" feed_messages)
  perf stat -x, -e raw_syscalls:sys_enter -p "$SERVER_PID" -o "$dir/perf-stat.csv" -- sleep "$WINDOW"
  after=$(healthz_field "$port" feed_messages)
  perf trace -s -p "$SERVER_PID" -o "$dir/perf-trace.txt" -- sleep 2 || true
  wait "$loadgen_pid" || echo "loadgen failed for $run (see $dir/loadgen.err)" >&2
  bench_cleanup
  syscalls=$(grep raw_syscalls "$dir/perf-stat.csv" | cut -d, -f1)
  python3 - "$MODE" "$syscalls" "$before" "$after" "$CONNS" "$RATE" "$WINDOW" "$RESULTS/$run.json" <<'PY' \
    | tee "$dir/syscalls.txt"
import json, sys
mode, syscalls, before, after, conns, rate, window, js = sys.argv[1:]
syscalls, conns, rate, window = int(syscalls), int(conns), float(rate), float(window)
if mode == "echo":
    deliveries = conns * rate * window
else:
    deliveries = (int(after) - int(before)) * conns
try:
    lost = json.load(open(js)).get("messages_lost")
except Exception:
    lost = "?"
print(f"syscalls={syscalls} deliveries={deliveries:.0f} syscalls_per_delivery={syscalls / max(deliveries, 1):.4f} "
      f"loadgen_lost={lost}")
PY
  echo "   top syscalls (perf trace -s, 2 s):" >&2
  grep -E '^\s+[a-z_0-9]+\s+[0-9]+' "$dir/perf-trace.txt" | sort -k2 -n -r | head -6 >&2 || true
done

#!/usr/bin/env bash
# What slow consumers cost everyone else: CONNS whole-feed subscribers reading at full rate, with and without
# two laggards beside them (`wsgate-loadgen laggard`: one that stops reading right after the upgrade, one that
# reads SLOW_READ_BYTES every SLOW_EVERY_MS), under the slow-consumer policy $POLICY. Both variants run back to
# back within each repetition, so that they see the same machine conditions. Reports, per run, the others' p50 /
# p99 / p99.9 latency and loss, the gateway's RSS before (connections open, before the window) and after (end of
# the window), and what the laggards got (bytes read, closed with which code, still open) and the gateway's
# slow-consumer counters (`/healthz`).
#
#   scripts/bench-slow.sh                                      # 1,000 clients, 10,000 msg/s x 128 B, policy drop
#   POLICY=disconnect scripts/bench-slow.sh
#   CONNS=20 RATE=200 WARMUP=1 DURATION=2 scripts/bench-slow.sh # a smoke run
#
# Settings (environment): CONNS (1000), RATE (feed messages/s, 10000), SIZE (128), POLICY (disconnect, drop or
# conflate; drop), MAX_LAG (max_lag_bytes, 4194304), SLOW_READ_BYTES (4096), SLOW_EVERY_MS (10), THREADS (1),
# PROCS, WARMUP, DURATION, GRACE (2), REPEAT, SOURCE_IPS, RESULTS (default results/slow-<date>). Leaves per run:
# the loadgen's .json and .hgrm, the laggards' .json, the gateway's /healthz at the end, logs; summary.txt.
set -euo pipefail
source "$(dirname "$0")/bench-lib.sh"

CONNS=${CONNS:-1000}
RATE=${RATE:-10000}
POLICY=${POLICY:-drop}
MAX_LAG=${MAX_LAG:-4194304}
SLOW_READ_BYTES=${SLOW_READ_BYTES:-4096}
SLOW_EVERY_MS=${SLOW_EVERY_MS:-10}
GRACE=${GRACE:-2}
bench_setup slow "conns=$CONNS rate=$RATE policy=$POLICY max_lag=$MAX_LAG slow=${SLOW_READ_BYTES}B/${SLOW_EVERY_MS}ms"

rss_of() { awk '/^VmRSS:/ { print $2 * 1024 }' "/proc/$1/status"; }
health_of() {
  python3 -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())' \
    "http://$(hostport "$1")/healthz" | tr -d '\n'
}
hostport() { local u=${1#ws://}; echo "${u%%/*}"; }

for rep in $(seq 1 "$REPEAT"); do
  for variant in baseline laggards; do
    run="wsgate-$variant-c$CONNS-r$RATE-$POLICY-$rep"
    dir="$RESULTS/$run.d"
    mkdir -p "$dir"
    echo "== $run" >&2
    start_feed "$dir" "$RATE" "$SIZE"
    printf 'lag_policy = "%s"\nmax_lag_bytes = %s\n' "$POLICY" "$MAX_LAG" > "$dir/wsgate.toml"
    start_server "$dir" wsgate 127.0.0.1:0 "$FEED_ADDR" "$THREADS" --config "$dir/wsgate.toml"
    lag_pids=()
    if [ "$variant" = laggards ]; then
      # They stay for the subscribers' whole run: connecting, warm-up, window and grace (plus a margin).
      hold=$(python3 -c "print($WARMUP + $DURATION + $GRACE + 10)")
      "$LOADGEN" laggard --url "$SERVER_URL" --mode stop --duration "$hold" > "$RESULTS/$run.stop.json" \
        2> "$dir/laggard-stop.err" &
      lag_pids+=($!)
      "$LOADGEN" laggard --url "$SERVER_URL" --mode slow --read-bytes "$SLOW_READ_BYTES" \
        --every-ms "$SLOW_EVERY_MS" --duration "$hold" > "$RESULTS/$run.slowreader.json" \
        2> "$dir/laggard-slow.err" &
      lag_pids+=($!)
      BENCH_PIDS+=("${lag_pids[@]}")
    fi
    sleep 0.5
    rss_before=$(rss_of "$SERVER_PID")
    "$LOADGEN" subscribe --url "$SERVER_URL" --connections "$CONNS" --procs "$PROCS" --source-ips "$SOURCE_IPS" \
      --warmup "$WARMUP" --duration "$DURATION" --grace "$GRACE" --server-pid "$SERVER_PID" \
      --json "$RESULTS/$run.json" --hgrm "$RESULTS/$run.hgrm" > "$dir/loadgen.out" 2> "$dir/loadgen.err" \
      || echo "loadgen exited $? for $run (see $dir/loadgen.out and loadgen.err)" >&2
    rss_after=$(rss_of "$SERVER_PID")
    health_of "$SERVER_URL" > "$RESULTS/$run.health.json" || echo '{}' > "$RESULTS/$run.health.json"
    printf '{"rss_before": %s, "rss_after": %s}\n' "$rss_before" "$rss_after" > "$RESULTS/$run.rss.json"
    for pid in "${lag_pids[@]:-}"; do [ -n "$pid" ] && wait "$pid" 2>/dev/null || true; done
    bench_cleanup
  done
done

python3 - "$RESULTS" <<'PY' | tee "$RESULTS/summary.txt"
import glob, json, os, sys
res = sys.argv[1]
def load(p):
    try:
        return json.load(open(p))
    except Exception:
        return {}
rows = []
for path in sorted(glob.glob(os.path.join(res, "wsgate-*.json"))):
    base = path[: -len(".json")]
    if base.endswith((".stop", ".slowreader", ".health", ".rss")):
        continue
    j, rss, h = load(path), load(base + ".rss.json"), load(base + ".health.json")
    stop, slow = load(base + ".stop.json"), load(base + ".slowreader.json")
    lat = j.get("latency_us", {})
    mib = lambda b: "-" if b is None else f"{b / 1048576:.1f}"
    lag = lambda r: "-" if not r else f"{r.get('bytes_read', 0) // 1024}KiB closed={r.get('closed_with')} open={r.get('open_at_end')}"
    rows.append([
        os.path.basename(base), j.get("connections_ok", "-"), j.get("messages_lost", "-"),
        f"{lat.get('p50', 0):.0f}", f"{lat.get('p99', 0):.0f}", f"{lat.get('p999', 0):.0f}",
        mib(rss.get("rss_before")), mib(rss.get("rss_after")),
        h.get("slow_consumers", "-"), h.get("lag_skips", "-"), h.get("lag_messages_skipped", "-"),
        lag(stop), lag(slow),
    ])
head = ["run", "conns", "lost", "p50 µs", "p99 µs", "p99.9 µs", "RSS before MiB", "RSS after MiB",
        "slow_consumers", "lag_skips", "skipped msgs", "stopped laggard", "slow laggard"]
w = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
print("  ".join(str(h).rjust(w[i]) for i, h in enumerate(head)))
for r in rows:
    print("  ".join(str(c).rjust(w[i]) for i, c in enumerate(r)))
PY

#!/usr/bin/env bash
# c10k fan-out: one feed, one server process, N subscribers; every server in $SERVERS at every rate in $RATES,
# alternating servers within each repetition so that they see the same machine conditions.
#
#   scripts/bench-c10k.sh                      # wsgate and both peers, 10,000 subscribers, 10 and 100 msg/s
#   SERVERS=wsgate RATES="10 100 1000" CONNS=10000 REPEAT=2 scripts/bench-c10k.sh
#
# Settings (environment): SERVERS, RATES (feed messages/s), CONNS, SIZE (message bytes, default 128),
# THREADS (server loop/worker threads, default 1), PROCS (loadgen processes, default 2), WARMUP and DURATION
# (seconds of the measured window), REPEAT, SOURCE_IPS, FLAMEGRAPH=1 (profile each wsgate run into flamegraphs/),
# RESULTS (output folder; default results/c10k-<date>), TLS=1 (wsgate servers only, default SERVERS=wsgate:
# wss:// with a self-signed certificate made in the results folder; compare with a plain run for the CPU per
# delivery that TLS costs). Leaves per run: .json, .hgrm, logs; per rate: a chart.
set -euo pipefail
source "$(dirname "$0")/bench-lib.sh"

TLS=${TLS:-0}
if [ "$TLS" = 1 ]; then
  SERVERS=${SERVERS:-wsgate}
  for s in $SERVERS; do
    case "$s" in wsgate*) ;; *) echo "TLS=1: only wsgate servers speak TLS, not $s" >&2; exit 1 ;; esac
  done
else
  SERVERS=${SERVERS:-"wsgate fastwebsockets tokio-tungstenite"}
fi
RATES=${RATES:-"10 100"}
CONNS=${CONNS:-10000}
bench_setup c10k "servers=[$SERVERS] rates=[$RATES] conns=$CONNS tls=$TLS"

server_tls=() loadgen_tls=()
if [ "$TLS" = 1 ]; then
  make_cert "$RESULTS" ecdsa
  server_tls=(--tls-cert "$RESULTS/ecdsa.pem" --tls-key "$RESULTS/ecdsa.key")
  loadgen_tls=(--tls-ca "$RESULTS/ecdsa.pem")
fi

for rep in $(seq 1 "$REPEAT"); do
  for rate in $RATES; do
    for server in $SERVERS; do
      run="$server-c$CONNS-r$rate-$rep"
      dir="$RESULTS/$run.d"
      mkdir -p "$dir"
      echo "== $run" >&2
      start_feed "$dir" "$rate" "$SIZE"
      start_server "$dir" "$server" 127.0.0.1:0 "$FEED_ADDR" "$THREADS" "${server_tls[@]}"
      # The certificate names localhost.
      url=${SERVER_URL/#wss:\/\/127.0.0.1/wss://localhost}
      fg_pid=""
      if [ "${FLAMEGRAPH:-0}" = 1 ]; then
        # Sample 5 s in the middle of the measured window (after the ramp and the warm-up).
        ( sleep $((WARMUP + 6)); "$ROOT/scripts/flamegraph.sh" "$SERVER_PID" \
            "$ROOT/flamegraphs/c10k-$server-c$CONNS-r$rate.svg" 5 "$run" ) > "$dir/flamegraph.log" 2>&1 &
        fg_pid=$!
      fi
      "$LOADGEN" subscribe --url "$url" "${loadgen_tls[@]}" --connections "$CONNS" --procs "$PROCS" \
        --source-ips "$SOURCE_IPS" --warmup "$WARMUP" --duration "$DURATION" --server-pid "$SERVER_PID" \
        --json "$RESULTS/$run.json" --hgrm "$RESULTS/$run.hgrm" > "$dir/loadgen.out" 2> "$dir/loadgen.err" \
        || echo "loadgen failed for $run (see $dir/loadgen.err)" >&2
      [ -z "$fg_pid" ] || wait "$fg_pid" || echo "flamegraph failed for $run (see $dir/flamegraph.log)" >&2
      bench_cleanup
      wait 2>/dev/null || true
    done
  done
done

for rate in $RATES; do
  hgrms=() labels=()
  for server in $SERVERS; do
    f="$RESULTS/$server-c$CONNS-r$rate-1.hgrm"
    [ -f "$f" ] && hgrms+=("$f") && labels+=(--label "$server")
  done
  if [ ${#hgrms[@]} -gt 0 ]; then
    "$LOADGEN" chart --out "$RESULTS/c10k-r$rate.svg" --title "c$CONNS fan-out, $rate msg/s x ${SIZE} B" \
      "${labels[@]}" "${hgrms[@]}" || true
  fi
done

summary_table "$RESULTS"/*.json | tee "$RESULTS/summary.txt"

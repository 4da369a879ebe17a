#!/usr/bin/env bash
# The market shape: one feed spread over K topics, N subscribers taking M topics each (wsgate.v1.json envelopes,
# every topic checked on its own for loss, duplicates and order by `subscribe --topics`), at each feed rate in
# $RATES, with the gateway on one loop thread and on its default (one per core), alternating within each
# repetition so that both see the same machine conditions.
#
#   scripts/bench-market.sh                   # 10,000 connections x 20 of 1,000 topics, 128 B, 500 and 10,000 msg/s
#   CONNS=200 DURATION=3 RATES=500 scripts/bench-market.sh                # a smoke run
#   CHURN_MS=5000 scripts/bench-market.sh     # every connection drops and resumes every 5 s
#   STORM_AT=4 STORM_AWAY_MS=1000 scripts/bench-market.sh                 # a resume storm 4 s into the window
#
# Deliveries per second = RATE x (CONNS x PER_CONN / TOPICS): at 10,000 msg/s, 2,000,000/s.
# Settings (environment): CONNS, TOPICS, PER_CONN, RATES (feed messages/s over all topics), THREAD_SETS (gateway
# loop threads per variant; "default" = the gateway's own default, one per core), SIZE, PROCS, WARMUP, DURATION,
# GRACE, REPEAT, SOURCE_IPS, CHURN_MS, STORM_AT (s into the window) and STORM_AWAY_MS, BACKLOG (the gateway's
# listen backlog per loop thread; a storm of N reconnections needs N / threads, and net.core.somaxconn at least
# that, or the kernel drops connections that then retry after 1, 3, 7 s), RESULTS (default
# results/market-<date>). Leaves per run: .json, .hgrm, logs; per rate: a chart; summary.txt (per run, and
# medians per variant). The loadgen exits 2 when a run's verdict fails (a hole not covered by a gap notice, a
# duplicate, ...): the run is kept and its verdict shown.
set -euo pipefail
source "$(dirname "$0")/bench-lib.sh"

CONNS=${CONNS:-10000}
TOPICS=${TOPICS:-1000}
PER_CONN=${PER_CONN:-20}
RATES=${RATES:-"500 10000"}
THREAD_SETS=${THREAD_SETS:-"1 default"}
GRACE=${GRACE:-2}
SERVER=wsgate
THREADS=$THREAD_SETS # for the params line
bench_setup market "conns=$CONNS topics=$TOPICS per_conn=$PER_CONN rates=[$RATES] threads=[$THREAD_SETS]\
 churn=${CHURN_MS:-none} storm=${STORM_AT:-none}/${STORM_AWAY_MS:-0}ms"

extra=()
[ -n "${CHURN_MS:-}" ] && extra+=(--churn-interval "$CHURN_MS")
[ -n "${STORM_AT:-}" ] && extra+=(--storm-at "$STORM_AT" --storm-away "${STORM_AWAY_MS:-0}")

for rep in $(seq 1 "$REPEAT"); do
  for rate in $RATES; do
    for threads in $THREAD_SETS; do
      n=$threads
      [ "$threads" = default ] && n=$(nproc)
      run="$SERVER-t$threads-c$CONNS-k$TOPICS-m$PER_CONN-r$rate-$rep"
      dir="$RESULTS/$run.d"
      mkdir -p "$dir"
      echo "== $run" >&2
      start_feed "$dir" "$rate" "$SIZE" --topics "$TOPICS"
      server_extra=()
      if [ -n "${BACKLOG:-}" ]; then
        echo "backlog = $BACKLOG" > "$dir/wsgate.toml"
        server_extra=(--config "$dir/wsgate.toml")
      fi
      start_server "$dir" "$SERVER" 127.0.0.1:0 "$FEED_ADDR" "$n" "${server_extra[@]}"
      "$LOADGEN" subscribe --url "$SERVER_URL" --connections "$CONNS" --procs "$PROCS" \
        --source-ips "$SOURCE_IPS" --topics "$TOPICS" --per-conn "$PER_CONN" "${extra[@]}" \
        --warmup "$WARMUP" --duration "$DURATION" --grace "$GRACE" --server-pid "$SERVER_PID" \
        --json "$RESULTS/$run.json" --hgrm "$RESULTS/$run.hgrm" > "$dir/loadgen.out" 2> "$dir/loadgen.err" \
        || echo "loadgen exited $? for $run (2: verdict failed; see $dir/loadgen.out and loadgen.err)" >&2
      bench_cleanup
      wait 2>/dev/null || true
    done
  done
done

for rate in $RATES; do
  hgrms=() labels=()
  for threads in $THREAD_SETS; do
    f="$RESULTS/$SERVER-t$threads-c$CONNS-k$TOPICS-m$PER_CONN-r$rate-1.hgrm"
    [ -f "$f" ] && hgrms+=("$f") && labels+=(--label "$SERVER --threads $threads")
  done
  if [ ${#hgrms[@]} -gt 0 ]; then
    "$LOADGEN" chart --out "$RESULTS/market-r$rate.svg" \
      --title "market: $CONNS x $PER_CONN of $TOPICS topics, $rate msg/s x ${SIZE} B" "${labels[@]}" "${hgrms[@]}" || true
  fi
done

"$ROOT/scripts/bench-market-summary.py" "$RESULTS" | tee "$RESULTS/summary.txt"

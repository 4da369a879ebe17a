#!/usr/bin/env bash
# Connections opened per second, plain and over TLS (ECDSA P-256 and RSA-2048 certificates, self-signed for
# `localhost`, made here with openssl): a gateway with one loop thread and no feed, and the loadgen opening CONNS
# connections as fast as it can (unpaced, --max-pending attempts in flight per process; each a TCP connect, a
# full TLS 1.3 handshake and the WebSocket upgrade). The kinds alternate within each repetition.
#
#   scripts/bench-tls-handshakes.sh                        # 10,000 connections, epoll, REPEAT=3
#   IOS="epoll uring" CONNS=5000 REPEAT=1 scripts/bench-tls-handshakes.sh
#
# Per run the loadgen reports the rate (`handshakes_per_s`), the gateway's CPU per connection opened and the
# cores the gateway and the loadgen used while opening. A gateway near 1.00 core is the limit: that rate is its
# saturated handshake rate on one loop thread. Below that the client (or the machine) was the limit, and
# 1e6 / (µs per connection) is what the loop thread would reach.
#
# Settings (environment): CONNS (10000), IOS (epoll), KINDS ("plain ecdsa rsa"), REPEAT (3), PROCS (loadgen
# processes, 2), MAX_PENDING (256 per process), SOURCE_IPS, RESULTS (default results/tls-handshakes-<date>),
# BENCH_PREBUILT=1 (use the binaries as they are). Leaves per run a .json and the logs, and summary.txt.
set -euo pipefail
source "$(dirname "$0")/bench-lib.sh"

CONNS=${CONNS:-10000}
IOS=${IOS:-epoll}
KINDS=${KINDS:-plain ecdsa rsa}
MAX_PENDING=${MAX_PENDING:-256}
REPEAT=${REPEAT:-3}
SERVERS=wsgate bench_setup tls-handshakes "conns=$CONNS ios=[$IOS] kinds=[$KINDS] max_pending=$MAX_PENDING"

certs="$RESULTS/certs"
make_cert "$certs" ecdsa
make_cert "$certs" rsa

for rep in $(seq 1 "$REPEAT"); do
  for io in $IOS; do
    for kind in $KINDS; do
      run="$io-$kind-c$CONNS-$rep"
      dir="$RESULTS/$run.d"
      mkdir -p "$dir"
      echo "== $run" >&2
      server_tls=() loadgen_tls=()
      case "$kind" in
        plain) ;;
        ecdsa | rsa)
          server_tls=(--tls-cert "$certs/$kind.pem" --tls-key "$certs/$kind.key")
          loadgen_tls=(--tls-ca "$certs/$kind.pem") ;;
        *) echo "unknown kind: $kind (plain, ecdsa, rsa)" >&2; exit 1 ;;
      esac
      start_standalone "$dir" "wsgate-$io" --ping-interval 0 --idle-timeout 0 \
        --max-connections "$((CONNS + 100))" "${server_tls[@]}"
      # The certificate names localhost.
      url=${SERVER_URL/#wss:\/\/127.0.0.1/wss://localhost}
      "$LOADGEN" subscribe --url "$url" "${loadgen_tls[@]}" --connections "$CONNS" --procs "$PROCS" \
        --max-pending "$MAX_PENDING" --source-ips "$SOURCE_IPS" --warmup 0 --duration 1 --grace 0 \
        --server-pid "$SERVER_PID" --json "$RESULTS/$run.json" > "$dir/loadgen.out" 2> "$dir/loadgen.err" \
        || echo "loadgen failed for $run (see $dir/loadgen.err)" >&2
      bench_cleanup
      wait 2> /dev/null || true
    done
  done
done

shopt -s nullglob
runs=("$RESULTS"/*.json)
[ ${#runs[@]} -gt 0 ] || { echo "no run produced a report: see $RESULTS/*.d/loadgen.err" >&2; exit 1; }
python3 - "${runs[@]}" << 'PY' | tee "$RESULTS/summary.txt"
import json, os, sys
head = ["run", "ok", "failed", "handshakes/s", "gateway µs/conn", "gateway cores", "loadgen cores"]
rows = []
for path in sys.argv[1:]:
    j = json.load(open(path))
    f = lambda v, fmt: "-" if v is None else fmt.format(v)
    rows.append([os.path.basename(path)[:-5], str(j["connections_ok"]), str(j["connections_failed"]),
                 f(j["handshakes_per_s"], "{:.0f}"), f(j.get("server_cpu_us_per_conn_opened"), "{:.0f}"),
                 f(j.get("connect_server_cpu_cores"), "{:.2f}"), f(j.get("connect_loadgen_cpu_cores"), "{:.2f}")])
w = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
print("  ".join(h.rjust(w[i]) for i, h in enumerate(head)))
for r in rows:
    print("  ".join(c.rjust(w[i]) for i, c in enumerate(r)))
PY
echo "-> $RESULTS"

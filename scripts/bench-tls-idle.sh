#!/usr/bin/env bash
# What a TLS connection costs the gateway when idle, and what its handshake costs, beside a plain connection:
# for each backend, a gateway on the demo feed-less configuration (no feed, so connections stay idle) is started
# plain, with an ECDSA P-256 certificate and with an RSA-2048 certificate (self-signed for `localhost`, made here
# with openssl), and `scripts/idle-rss.py` opens N upgraded connections to it: user-space RSS per connection and
# the gateway's CPU time per connection opened (TCP accept, TLS handshake, WebSocket upgrade).
#
#   scripts/bench-tls-idle.sh                  # 5,000 connections, both backends, REPEAT=3
#   CONNS=1000 IOS=epoll REPEAT=1 scripts/bench-tls-idle.sh
#
# Settings (environment): CONNS (5000), IOS ("epoll uring"), REPEAT (3), WSGATE (target/release/wsgate, built
# when missing), RESULTS (default results/tls-idle-<date>). Prints one line per run and leaves them in summary.txt.
set -euo pipefail
source "$(dirname "$0")/bench-lib.sh" # ROOT, WSGATE, make_cert (its exit trap is replaced below)
CONNS=${CONNS:-5000}
IOS=${IOS:-epoll uring}
REPEAT=${REPEAT:-3}
RESULTS=${RESULTS:-$ROOT/results/tls-idle-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$RESULTS"
[ -x "$WSGATE" ] || (cd "$ROOT" && cargo build --release --quiet -p wsgate)
{ uname -a; nproc; date -u; echo "conns=$CONNS ios=[$IOS] repeat=$REPEAT wsgate=$WSGATE"; } > "$RESULTS/params.txt"

certs="$RESULTS/certs"
make_cert "$certs" ecdsa
make_cert "$certs" rsa

gw_pid=""
stop_gateway() {
  if [ -n "$gw_pid" ]; then kill "$gw_pid" 2>/dev/null || true; wait "$gw_pid" 2>/dev/null || true; gw_pid=""; fi
}
trap stop_gateway EXIT

# run IO KIND: one gateway, one measurement.
run() {
  local io=$1 kind=$2 log="$RESULTS/$1-$2-$3.log" args=() ca=() port
  case "$kind" in
    ecdsa | rsa) args=(--tls-cert "$certs/$kind.pem" --tls-key "$certs/$kind.key"); ca=(--tls-ca "$certs/$kind.pem") ;;
  esac
  "$WSGATE" --listen 127.0.0.1:0 --threads 1 --io "$io" --ping-interval 0 --idle-timeout 0 \
    --max-connections "$((CONNS + 100))" "${args[@]}" > "$log.out" 2> "$log" &
  gw_pid=$!
  for _ in $(seq 100); do grep -q "listening on" "$log.out" 2>/dev/null && break; sleep 0.1; done
  port=$(sed -n 's|.*listening on wss*://127.0.0.1:\([0-9]*\)/.*|\1|p' "$log.out" | head -1)
  [ -n "$port" ] || { echo "gateway did not start: $(cat "$log")" >&2; exit 1; }
  printf '%-6s %-6s %s\n' "$io" "$kind" \
    "$(python3 "$ROOT/scripts/idle-rss.py" --pid "$gw_pid" --port "$port" --connections "$CONNS" "${ca[@]}")"
  stop_gateway
}

for rep in $(seq 1 "$REPEAT"); do
  for io in $IOS; do
    for kind in plain ecdsa rsa; do
      run "$io" "$kind" "$rep"
    done
  done
done | tee "$RESULTS/summary.txt"
echo "-> $RESULTS"

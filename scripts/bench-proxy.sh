#!/usr/bin/env bash
# Load through a reverse proxy: CONNS whole-feed subscribers reach the gateway directly, through nginx and through
# HAProxy, each proxy running the configuration of docs/deployment/ (the one tests/edge_proxies.rs runs; HAProxy
# sends the PROXY protocol v2 to a gateway started with --proxy-protocol, nginx X-Forwarded-For to a gateway that
# trusts it). The three alternate within each repetition. Reports the loadgen's latency (publish to receive) and
# loss per run, and the CPU time the gateway and the proxy used over the whole loadgen run (ramp, warm-up and
# window), side by side.
#
#   scripts/bench-proxy.sh                                 # 10,000 connections, 100 msg/s, REPEAT=2
#   CONNS=500 RATE=10 WARMUP=1 DURATION=3 VIAS="direct nginx" scripts/bench-proxy.sh   # a smoke run
#
# The open-files cap of this machine (20,000 per process) is why the proxies run as two processes (nginx: two
# workers; HAProxy: two processes on one port, SO_REUSEPORT): a proxied connection holds two descriptors.
# Settings (environment): CONNS (10000), RATE (100), SIZE (128), VIAS ("direct nginx haproxy"), PROCS, WARMUP,
# DURATION, REPEAT (2), SOURCE_IPS, RESULTS (default results/proxy-<date>).
set -euo pipefail
source "$(dirname "$0")/bench-lib.sh"

CONNS=${CONNS:-10000}
RATE=${RATE:-100}
VIAS=${VIAS:-direct nginx haproxy}
REPEAT=${REPEAT:-2}
bench_setup proxy "conns=$CONNS rate=$RATE vias=[$VIAS]"
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)

# cpu_of PID...: user + system CPU seconds of these processes (every thread), summed.
cpu_of() {
  local pid total=0 t
  for pid in "$@"; do
    t=$(awk '{ print $14 + $15 }' "/proc/$pid/stat" 2>/dev/null || echo 0)
    total=$((total + t))
  done
  python3 -c "import os, sys; print(f'{int(sys.argv[1]) / os.sysconf(\"SC_CLK_TCK\"):.2f}')" "$total"
}

# fill TEMPLATE OUT KEY=VALUE...: the template with its {{KEY}} placeholders replaced.
fill() {
  local template=$1 out=$2
  shift 2
  python3 - "$template" "$out" "$@" <<'PY'
import sys
text = open(sys.argv[1]).read()
for kv in sys.argv[3:]:
    k, v = kv.split("=", 1)
    text = text.replace("{{" + k + "}}", v)
open(sys.argv[2], "w").write(text)
PY
}

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

certs="$RESULTS/certs"
make_cert "$certs" ecdsa
cat "$certs/ecdsa.pem" "$certs/ecdsa.key" > "$certs/both.pem"

# start_proxy DIR VIA GATEWAY: sets PROXY_URL and PROXY_PIDS (the processes doing the work).
start_proxy() {
  local dir=$1 via=$2 gateway=$3 port tls_port
  port=$(free_port)
  tls_port=$(free_port)
  PROXY_URL="ws://127.0.0.1:$port/ws"
  case "$via" in
    nginx)
      fill "$ROOT/docs/deployment/nginx-wsgate.conf" "$dir/wsgate.conf" "listen=127.0.0.1:$port" \
        "listen_tls=127.0.0.1:$tls_port" "cert=$certs/ecdsa.pem" "key=$certs/ecdsa.key" "gateway=$gateway" \
        "timeout=60s"
      mkdir -p "$dir/nginx"
      cat > "$dir/nginx.conf" <<EOF
user root;
worker_processes 2;
worker_rlimit_nofile 19000;
error_log $dir/nginx/error.log warn;
pid $dir/nginx/nginx.pid;
events { worker_connections 18000; }
http {
    access_log off;
    client_body_temp_path $dir/nginx/body;
    proxy_temp_path $dir/nginx/proxy;
    fastcgi_temp_path $dir/nginx/fastcgi;
    uwsgi_temp_path $dir/nginx/uwsgi;
    scgi_temp_path $dir/nginx/scgi;
    include $dir/wsgate.conf;
}
EOF
      "$NGINX" -c "$dir/nginx.conf" -p "$dir/nginx" -g 'daemon off;' > "$dir/proxy.out" 2>&1 &
      BENCH_PIDS+=($!)
      sleep 1
      mapfile -t PROXY_PIDS < <(pgrep -P "$!")
      ;;
    haproxy)
      fill "$ROOT/docs/deployment/haproxy-wsgate.cfg" "$dir/wsgate.cfg" "listen=127.0.0.1:$port" \
        "listen_tls=127.0.0.1:$tls_port" "pem=$certs/both.pem" "gateway=$gateway" "n=1" \
        "send_proxy=send-proxy-v2" "timeout=60s"
      printf 'global\n    maxconn 9000\n' > "$dir/global.cfg"
      PROXY_PIDS=()
      for i in 1 2; do
        "$HAPROXY" -f "$dir/global.cfg" -f "$dir/wsgate.cfg" -db > "$dir/proxy$i.out" 2>&1 &
        BENCH_PIDS+=($!)
        PROXY_PIDS+=($!)
      done
      sleep 1
      ;;
  esac
  for _ in $(seq 50); do
    python3 -c "import socket, sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), 1)" "$port" \
      2>/dev/null && return 0
    sleep 0.1
  done
  echo "$via did not start: $(cat "$dir"/proxy*.out)" >&2
  return 1
}

for rep in $(seq 1 "$REPEAT"); do
  for via in $VIAS; do
    run="wsgate-$via-c$CONNS-r$RATE-$rep"
    dir="$RESULTS/$run.d"
    mkdir -p "$dir"
    echo "== $run" >&2
    start_feed "$dir" "$RATE" "$SIZE"
    extra=(--ping-interval 0 --max-connections "$((CONNS + 1000))")
    case "$via" in
      nginx) extra+=(--trusted-proxies 127.0.0.1/32) ;;
      haproxy) extra+=(--proxy-protocol --trusted-proxies 127.0.0.1/32) ;;
    esac
    start_server "$dir" wsgate-epoll 127.0.0.1:0 "$FEED_ADDR" "$THREADS" "${extra[@]}"
    url=$SERVER_URL
    PROXY_PIDS=()
    if [ "$via" != direct ]; then
      gateway=${SERVER_URL#ws://}
      start_proxy "$dir" "$via" "${gateway%/ws}"
      url=$PROXY_URL
    fi
    gw_cpu0=$(cpu_of "$SERVER_PID")
    px_cpu0=$( [ ${#PROXY_PIDS[@]} -gt 0 ] && cpu_of "${PROXY_PIDS[@]}" || echo 0)
    "$LOADGEN" subscribe --url "$url" --connections "$CONNS" --procs "$PROCS" \
      --source-ips "$SOURCE_IPS" --warmup "$WARMUP" --duration "$DURATION" --server-pid "$SERVER_PID" \
      --json "$RESULTS/$run.json" --hgrm "$RESULTS/$run.hgrm" > "$dir/loadgen.out" 2> "$dir/loadgen.err" \
      || echo "loadgen failed for $run (see $dir/loadgen.err)" >&2
    gw_cpu=$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$gw_cpu0" \
      "$(cpu_of "$SERVER_PID")")
    px_cpu=$( [ ${#PROXY_PIDS[@]} -gt 0 ] && python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" \
      "$px_cpu0" "$(cpu_of "${PROXY_PIDS[@]}")" || echo -)
    echo "$run gateway_cpu_s=$gw_cpu proxy_cpu_s=$px_cpu" | tee -a "$RESULTS/cpu.txt" >&2
    bench_cleanup
    wait 2>/dev/null || true
  done
done

summary_table "$RESULTS"/*.json | tee "$RESULTS/summary.txt"
cat "$RESULTS/cpu.txt"

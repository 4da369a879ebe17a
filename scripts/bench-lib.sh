# Shared helpers for the benchmark scripts (sourced, not run). Every process started here is killed on exit.
# shellcheck shell=bash

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LOADGEN=${LOADGEN:-$ROOT/target/release/wsgate-loadgen}
WSGATE=${WSGATE:-$ROOT/target/release/wsgate}
# An older wsgate binary to compare against (server names wsgate-base, wsgate-base-epoll, wsgate-base-uring), e.g.
# one built from the previous commit.
WSGATE_BASE=${WSGATE_BASE:-}
PEERS_DIR=${PEERS_DIR:-$ROOT/target/peers/release}
BENCH_PIDS=()

bench_cleanup() {
  local pid
  for pid in "${BENCH_PIDS[@]:-}"; do
    [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  done
  # Servers close every client on SIGTERM (close 1001); give them a few seconds before SIGKILL.
  for pid in "${BENCH_PIDS[@]:-}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  BENCH_PIDS=()
}
trap bench_cleanup EXIT INT TERM

# make_cert DIR KIND: a self-signed certificate for `localhost`, KIND ecdsa (P-256) or rsa (2048 bits), as
# DIR/KIND.pem with its key in DIR/KIND.key (the loadgen's --tls-ca takes the .pem).
make_cert() {
  local dir=$1 kind=$2 key
  case "$kind" in
    ecdsa) key=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1) ;;
    rsa) key=(-newkey rsa:2048) ;;
    *) echo "make_cert: unknown kind $kind (ecdsa, rsa)" >&2; return 1 ;;
  esac
  mkdir -p "$dir"
  openssl req -x509 "${key[@]}" -nodes -days 2 -subj /CN=localhost -addext subjectAltName=DNS:localhost \
    -keyout "$dir/$kind.key" -out "$dir/$kind.pem" 2> /dev/null
}

# bench_setup KIND SUMMARY: the settings every benchmark shares (environment overrides the defaults), the results
# folder, the builds it needs (the peers only when $SERVERS names one), and params.txt recording the run.
bench_setup() {
  local kind=$1 summary=$2 need_peers="" s
  SIZE=${SIZE:-128}
  THREADS=${THREADS:-1}
  PROCS=${PROCS:-2}
  WARMUP=${WARMUP:-2}
  DURATION=${DURATION:-10}
  REPEAT=${REPEAT:-1}
  SOURCE_IPS=${SOURCE_IPS:-127.0.0.2-127.0.0.41}
  RESULTS=${RESULTS:-$ROOT/results/$kind-$(date -u +%Y%m%dT%H%M%SZ)}
  mkdir -p "$RESULTS"
  for s in ${SERVERS:-wsgate}; do case "$s" in wsgate*) ;; *) need_peers=peers ;; esac; done
  build_all $need_peers
  echo "$kind: $summary size=$SIZE threads=$THREADS procs=$PROCS window=${WARMUP}s+${DURATION}s" \
       "repeat=$REPEAT -> $RESULTS" | tee "$RESULTS/params.txt"
  { uname -a; nproc; date -u; } >> "$RESULTS/params.txt"
}

# build_all: release builds of the gateway and the load generator, and the peers when $1 == peers.
# BENCH_PREBUILT=1: use the binaries as they are (a machine without cargo, e.g. a lent benchmark machine).
build_all() {
  if [ -n "${BENCH_PREBUILT:-}" ]; then
    [ -x "$WSGATE" ] && [ -x "$LOADGEN" ] || { echo "BENCH_PREBUILT: $WSGATE or $LOADGEN missing" >&2; return 1; }
    return 0
  fi
  (cd "$ROOT" && cargo build --release --quiet -p wsgate -p wsgate-loadgen)
  if [ "${1:-}" = peers ]; then "$ROOT/scripts/build-peers.sh" >/dev/null; fi
}

# server_bin NAME: the binary of a server under test. wsgate-* names are wsgate with flags (server_args).
server_bin() {
  case "$1" in
    wsgate | wsgate-epoll | wsgate-uring | wsgate-uring-*) echo "$WSGATE" ;;
    wsgate-base | wsgate-base-*)
      [ -n "$WSGATE_BASE" ] || { echo "wsgate-base needs WSGATE_BASE=/path/to/old/wsgate" >&2; return 1; }
      echo "$WSGATE_BASE" ;;
    tokio-tungstenite) echo "$PEERS_DIR/peer-tokio-tungstenite" ;;
    fastwebsockets) echo "$PEERS_DIR/peer-fastwebsockets" ;;
    *) echo "unknown server: $1" >&2; return 1 ;;
  esac
}

# server_args NAME: the flags that make NAME out of its binary (one per line, for mapfile).
server_args() {
  case "$1" in
    wsgate-epoll | wsgate-base-epoll) printf '%s\n' --io epoll ;;
    wsgate-uring | wsgate-base-uring) printf '%s\n' --io uring ;;
    wsgate-uring-sqpoll) printf '%s\n' --io uring --uring-sqpoll ;;
    wsgate-uring-fixed) printf '%s\n' --io uring --uring-fixed-files ;;
    wsgate-uring-b*) printf '%s\n' --io uring --uring-submit-batch "${1#wsgate-uring-b}" ;;
    *) ;;
  esac
}

# wait_for_line FILE REGEX [SECONDS]: prints the first match of REGEX (grep -o) in FILE, waiting for it.
wait_for_line() {
  local file=$1 re=$2 secs=${3:-10} i match
  for ((i = 0; i < secs * 20; i++)); do
    match=$(grep -oE "$re" "$file" 2>/dev/null | head -n 1 || true)
    if [ -n "$match" ]; then echo "$match"; return 0; fi
    sleep 0.05
  done
  echo "timed out waiting for /$re/ in $file:" >&2
  cat "$file" >&2
  return 1
}

# start_feed OUTDIR RATE SIZE [EXTRA...]: starts an open-loop feed server (EXTRA: more feed options, e.g.
# --topics K); sets FEED_ADDR and FEED_PID.
start_feed() {
  local dir=$1 rate=$2 size=$3
  shift 3
  "$LOADGEN" feed --listen 127.0.0.1:0 --rate "$rate" --size "$size" --duration 1h "$@" \
    > "$dir/feed.out" 2> "$dir/feed.err" &
  FEED_PID=$!
  BENCH_PIDS+=("$FEED_PID")
  FEED_ADDR=$(wait_for_line "$dir/feed.out" '127\.0\.0\.1:[0-9]+')
}

# start_server OUTDIR NAME LISTEN UPSTREAM THREADS [EXTRA...]: sets SERVER_URL and SERVER_PID.
start_server() {
  local dir=$1 name=$2 listen=$3 upstream=$4 threads=$5
  shift 5
  local bin n=0 flags=()
  bin=$(server_bin "$name")
  mapfile -t flags < <(server_args "$name")
  while [ -e "$dir/server$n.out" ]; do n=$((n + 1)); done
  "$bin" --listen "$listen" --threads "$threads" --upstream "$upstream" "${flags[@]}" "$@" \
    > "$dir/server$n.out" 2> "$dir/server$n.err" &
  SERVER_PID=$!
  BENCH_PIDS+=("$SERVER_PID")
  SERVER_URL=$(wait_for_line "$dir/server$n.out" 'wss?://[0-9.:]+/ws')
}

# start_standalone OUTDIR NAME [EXTRA...]: a server with no feed (e.g. --echo, or idle connections), one loop
# thread per $THREADS (default 1); sets SERVER_URL and SERVER_PID.
start_standalone() {
  local dir=$1 name=$2 flags=()
  shift 2
  mapfile -t flags < <(server_args "$name")
  "$(server_bin "$name")" --listen 127.0.0.1:0 --threads "${THREADS:-1}" "${flags[@]}" "$@" \
    > "$dir/server0.out" 2> "$dir/server0.err" &
  SERVER_PID=$!
  BENCH_PIDS+=("$SERVER_PID")
  SERVER_URL=$(wait_for_line "$dir/server0.out" 'wss?://[0-9.:]+/ws')
}

# summary_table JSON...: one row per run from the loadgen's JSON summaries.
summary_table() {
  python3 - "$@" <<'PY'
import json, os, sys
rows = []
for path in sys.argv[1:]:
    try:
        j = json.load(open(path))
    except Exception as e:
        print(f"{path}: unreadable ({e})", file=sys.stderr)
        continue
    name = os.path.basename(path)[: -len(".json")]
    lat = j.get("latency_us", {})
    def f(v, fmt="{:.0f}"):
        return "-" if v is None else fmt.format(v)
    rows.append([
        name,
        f(j.get("connections_ok")),
        f(j.get("messages_per_s")),
        f(j.get("messages_lost")),
        f(lat.get("p50"), "{:.0f}"),
        f(lat.get("p99"), "{:.0f}"),
        f(lat.get("p999"), "{:.0f}"),
        f(lat.get("max"), "{:.0f}"),
        f(j.get("server_cpu_ns_per_msg")),
        f(j.get("loadgen_cpu_ns_per_msg")),
        f(j.get("server_rss_bytes_per_conn")),
    ])
head = ["run", "conns", "deliveries/s", "lost", "p50 µs", "p99 µs", "p99.9 µs", "max µs",
        "server ns/msg", "loadgen ns/msg", "RSS B/conn"]
w = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
print("  ".join(h.rjust(w[i]) for i, h in enumerate(head)))
for r in rows:
    print("  ".join(str(c).rjust(w[i]) for i, c in enumerate(r)))
PY
}

#!/usr/bin/env bash
# Exercises what docs/deployment.md shows that tests/edge_proxies.rs does not (that test runs the nginx and
# HAProxy configurations of docs/deployment/):
#   1. docs/deployment/sysctl-wsgate.conf: every key exists on this kernel with as many fields as the file gives;
#      the per-network-namespace ones are written for real in a throw-away namespace (unshare -n, needs root).
#   2. docs/systemd/ units: `systemd-analyze verify`, with ExecStart pointed at the built binary.
#   3. A seccomp filter that refuses io_uring as default container profiles do (scripts/no-io-uring.py), with
#      EPERM (Docker, containerd) and with ENOSYS (podman on Debian 12): `--check-io` says why, `--io auto` serves
#      on epoll with one log line, `--io uring` refuses to start.
#   4. The Dockerfile: its configuration (docs/deployment/wsgate-container.toml) accepted as its ENTRYPOINT gives
#      it; on request only (WSGATE_CHECK_DOCKER=1: it takes many minutes), the image built and run: with podman
#      where it is installed (scripts/check-container.sh: build, default seccomp and unconfined, demo messages
#      through a published port), else with a Docker daemon that answers and can pull; otherwise a loud SKIP line.
# Nothing here leaves loopback, and nothing changes the host's settings.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }
fail() { echo "check-deployment: FAIL: $*" >&2; exit 1; }

cargo build --quiet --bin wsgate
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
bin="$target_dir/debug/wsgate"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

step "sysctl: docs/deployment/sysctl-wsgate.conf"
trim() { local s="$*"; s="${s#"${s%%[![:space:]]*}"}"; echo "${s%"${s##*[![:space:]]}"}"; }
while IFS='=' read -r key value; do
  case "$key" in '#'* | '') continue ;; esac
  key=$(trim "$key"); value=$(trim "$value")
  file="/proc/sys/${key//.//}"
  if [ ! -e "$file" ]; then
    case "$key" in
      net.netfilter.*) echo "  $key: conntrack is not loaded on this host (nothing to size)"; continue ;;
      *) fail "$key does not exist on this kernel ($file)" ;;
    esac
  fi
  want=$(echo "$value" | wc -w); have=$(wc -w <"$file")
  [ "$want" -eq "$have" ] || fail "$key takes $have field(s), the file gives $want: '$value'"
  # Only net.core and net.ipv4 keys belong to a network namespace (fs.* and conntrack's max are the host's):
  # those alone are written, and only inside a new namespace.
  per_netns=0
  case "$key" in net.core.* | net.ipv4.*) per_netns=1 ;; esac
  if [ "$per_netns" -eq 1 ] && [ "$(id -u)" -eq 0 ] && unshare -n test -e "$file" 2>/dev/null; then
    got=$(unshare -n sh -c "sysctl -q -w '$key=$value' && cat '$file'") || fail "the kernel refuses $key = $value"
    [ "$(echo $got)" = "$value" ] || fail "$key = $value reads back as '$got'"
    echo "  $key = $value (written in a new network namespace)"
  else
    echo "  $key = $value (exists; not written: the host's value is '$(echo $(cat "$file"))')"
  fi
done <docs/deployment/sysctl-wsgate.conf

step "systemd units: systemd-analyze verify"
if command -v systemd-analyze >/dev/null 2>&1; then
  mkdir "$tmp/units"
  for unit in docs/systemd/*.service docs/systemd/*.socket; do
    sed "s|/usr/local/bin/wsgate|$bin|" "$unit" >"$tmp/units/$(basename "$unit")"
  done
  # wsgate@.service is a template: verify an instance of it.
  cp "$tmp/units/wsgate@.service" "$tmp/units/wsgate@blue.service"
  out=$(cd "$tmp/units" && systemd-analyze verify ./wsgate.socket ./wsgate.service ./wsgate-ingest.socket \
    ./wsgate@blue.service 2>&1) || fail "systemd-analyze verify: $out"
  [ -z "$out" ] || fail "systemd-analyze verify: $out"
  echo "  docs/systemd/*: no complaints"
else
  echo "SKIP systemd units: systemd-analyze is not installed" >&2
fi

step "no io_uring under seccomp (what a container's default profile does)"
for errno in EPERM ENOSYS; do
  echo "  io_uring_* fail with $errno:"
  out=$(scripts/no-io-uring.py --errno $errno "$bin" --check-io) && fail "--check-io passed under the filter: $out"
  echo "    --check-io: $out"
  case "$out" in *"seccomp filter"*) ;; *) fail "--check-io does not name the possible cause: $out" ;; esac
  scripts/no-io-uring.py --errno $errno "$bin" --io uring --listen 127.0.0.1:0 >"$tmp/uring.out" 2>&1 \
    && fail "--io uring started without io_uring"
  grep -q "io_uring unavailable" "$tmp/uring.out" || fail "--io uring: $(cat "$tmp/uring.out")"
  echo "    --io uring: refuses to start: $(grep -o 'io_uring unavailable.*' "$tmp/uring.out" | head -1)"
  : >"$tmp/auto.out"
  scripts/no-io-uring.py --errno $errno "$bin" --io auto --listen 127.0.0.1:0 --threads 1 >"$tmp/auto.out" 2>"$tmp/auto.err" &
  pid=$!
  for _ in $(seq 100); do grep -q "listening on" "$tmp/auto.out" && break; sleep 0.1; done
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" || true
  grep -q "(io: epoll)" "$tmp/auto.out" || fail "--io auto: $(cat "$tmp/auto.out" "$tmp/auto.err")"
  [ "$(grep -c "io backend: epoll (io_uring unavailable" "$tmp/auto.err")" -eq 1 ] \
    || fail "--io auto: not exactly one fallback line: $(cat "$tmp/auto.err")"
  echo "    --io auto: $(head -1 "$tmp/auto.out")"
done

step "Dockerfile"
# What the image runs, as its ENTRYPOINT runs it: the configuration must be accepted, flags after it win.
"$bin" --config docs/deployment/wsgate-container.toml --print-config | grep -qx 'listen = "0.0.0.0:8080"' \
  || fail "docs/deployment/wsgate-container.toml: not accepted, or listen is not 0.0.0.0:8080"
"$bin" --config docs/deployment/wsgate-container.toml --listen 127.0.0.1:9 --print-config \
  | grep -qx 'listen = "127.0.0.1:9"' || fail "a flag after the image's --config does not win"
echo "  the image's configuration is accepted; flags given to docker run override it"
# Building takes many minutes (a release build, and with podman the base images made by debootstrap on a first
# run): only on request, never by default in CI.
if [ "${WSGATE_CHECK_DOCKER:-}" = 1 ] && command -v podman >/dev/null 2>&1; then
  scripts/check-container.sh
elif [ "${WSGATE_CHECK_DOCKER:-}" = 1 ] && docker info >/dev/null 2>&1; then
  docker build -t wsgate:check .
  echo "  default seccomp: $(docker run --rm wsgate:check --check-io || true)"
  echo "  seccomp=unconfined: $(docker run --rm --security-opt seccomp=unconfined wsgate:check --check-io || true)"
else
  echo "SKIP Dockerfile: not built (set WSGATE_CHECK_DOCKER=1 where podman and debootstrap are installed, as root:" \
    "scripts/check-container.sh; or where a Docker daemon answers and can pull)" >&2
fi

step "deployment checks passed"

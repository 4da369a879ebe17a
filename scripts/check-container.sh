#!/usr/bin/env bash
# Builds the Dockerfile, unchanged, with podman and runs the image (docs/deployment.md, "Containers"):
#   1. Its two base images, made here when missing, because registries of container images cannot be reached
#      from the project's machines: debootstrap'd Debian bookworm roots imported under the exact names the
#      Dockerfile uses (docker.io/library/debian:bookworm-slim, docker.io/library/rust:1.95-bookworm; the Rust one
#      with gcc, libc6-dev, ca-certificates, curl and Rust installed by rustup as the official image does). They
#      stay in podman's storage: later runs reuse them. `podman rmi` them to make them again.
#   2. `podman build --pull=never` of the Dockerfile.
#   3. The image under podman's default seccomp profile, then with seccomp=unconfined: `--check-io` gives the
#      verdict the profile's errno implies, `--demo` serves on the backend that verdict implies (the fallback
#      logged in exactly one line), `--io uring` refuses to start where io_uring is refused, and a WebSocket
#      client on this host receives demo messages through `-p 127.0.0.1:PORT:8080`.
# Needs root (debootstrap, and rootful podman). The containers use slirp4netns (`-p`) or no network at all
# (`--check-io`): no bridge, so no firewall rule or sysctl of the host is changed; only 127.0.0.1 is reached.
# The build steps use the host's network (`--network host`) to fetch crates. Takes many minutes on 2 cores:
# scripts/check-deployment.sh runs it only on request (WSGATE_CHECK_DOCKER=1).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }
fail() { echo "check-container: FAIL: $*" >&2; exit 1; }

RUST_VERSION=1.95.0
SLIM=docker.io/library/debian:bookworm-slim
RUST=docker.io/library/rust:1.95-bookworm
IMAGE=localhost/wsgate:check

[ "$(id -u)" -eq 0 ] || fail "needs root (debootstrap and rootful podman)"
for tool in podman debootstrap curl python3; do
  command -v "$tool" >/dev/null 2>&1 || fail "$tool is not installed (apt-get install -y podman debootstrap)"
done
python3 -c 'import websockets.sync.client' 2>/dev/null \
  || fail "Python's websockets 11 or later is missing (scripts/install-test-deps.sh installs it)"
# The stand-ins must be the images the Dockerfile names, or the build would test something else.
if [ "$(grep -c '^FROM ' Dockerfile)" -ne 2 ] || ! grep -qx 'FROM rust:1.95-bookworm AS build' Dockerfile \
  || ! grep -qx 'FROM debian:bookworm-slim' Dockerfile; then
  fail "the Dockerfile's base images are no longer rust:1.95-bookworm and debian:bookworm-slim: update this script"
fi

# What every `podman run` and `podman build` here is given, for hosts where podman's defaults cannot start a
# container (the project's machines are such hosts):
# - crun (podman's default runtime in Debian 12) refuses hybrid cgroups (v1 controllers, and one or more in the
#   v2 hierarchy at /sys/fs/cgroup/unified): runc then runs the containers (apt-get install -y runc). Both apply
#   the seccomp profile podman gives them.
# - without CAP_SYS_RESOURCE podman cannot raise RLIMIT_NOFILE to its default of 1048576 (nor keep RLIMIT_NPROC
#   above the 32768 it sets for itself): the containers then get this process's open-files hard limit.
step "podman on this host"
echo "  $(podman --version); runtimes: $(crun --version 2>/dev/null | head -1 || echo no crun);" \
  "$(runc --version 2>/dev/null | head -1 || echo no runc)"
if command -v dpkg-query >/dev/null 2>&1; then
  echo "  seccomp profile: $(dpkg-query -S /usr/share/containers/seccomp.json 2>/dev/null | cut -d: -f1)" \
    "$(dpkg-query -W -f '${Version}' golang-github-containers-common containers-common 2>/dev/null)"
fi
runtime=()
limits=()
v2_controllers=$(cat /sys/fs/cgroup/unified/cgroup.controllers 2>/dev/null || true)
if [ "$(stat -f -c %T /sys/fs/cgroup)" = tmpfs ] && [ -n "$v2_controllers" ]; then
  command -v runc >/dev/null 2>&1 || fail "hybrid cgroups (crun refuses them) and runc is not installed"
  runtime=(--runtime runc)
  echo "  hybrid cgroups (v2 controllers: $v2_controllers): runtime runc" \
    "($(runc --version | head -1)), not crun"
fi
cap_eff=$(awk '/^CapEff:/ { print $2 }' /proc/self/status)
if (((0x$cap_eff >> 24) & 1)); then
  ulimits=(--ulimit nofile=1048576:1048576)
else
  nofile=$(ulimit -Hn)
  limits=(--ulimit "nofile=$nofile:$nofile" --ulimit nproc=32768:32768)
  ulimits=()
  echo "  no CAP_SYS_RESOURCE: containers get nofile=$nofile (not the documented 1048576)"
fi

# pm run|build ...: podman with the runtime and limits above.
pm() { podman "${runtime[@]}" "$1" "${limits[@]}" "${@:2}"; }

tmp=$(mktemp -d /var/tmp/wsgate-container.XXXXXX)
containers=()
cleanup() {
  for c in "${containers[@]}"; do podman rm -f -t 0 "$c" >/dev/null 2>&1 || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

# debootstrap ROOT [PACKAGES]: a minimal bookworm root, apt's lists and caches left out.
bootstrap() {
  local root=$1 include=${2:-}
  # shellcheck disable=SC2086 # DEBIAN_MIRROR: debootstrap's own default when unset.
  debootstrap --variant=minbase ${include:+--include="$include"} bookworm "$root" ${DEBIAN_MIRROR:-} >"$tmp/debootstrap.log" 2>&1 \
    || { tail -20 "$tmp/debootstrap.log" >&2; fail "debootstrap of $root"; }
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
}

# import ROOT NAME [--change ...]: the root as a one-layer image, labelled as a local stand-in.
import() {
  local root=$1 name=$2
  shift 2
  tar -C "$root" --numeric-owner -c . | podman import --quiet --change 'CMD ["bash"]' \
    --change "LABEL org.wsgate.stand-in=made by scripts/check-container.sh, not the registry's image" "$@" - "$name" >/dev/null
}

step "base images (stand-ins for $SLIM and $RUST)"
if podman image exists "$SLIM"; then
  echo "  $SLIM: present ($(podman image inspect --format '{{.Created}}' "$SLIM"))"
else
  echo "  $SLIM: debootstrap --variant=minbase bookworm"
  bootstrap "$tmp/slim"
  import "$tmp/slim" "$SLIM"
  rm -rf "$tmp/slim"
fi
if podman image exists "$RUST"; then
  echo "  $RUST: present ($(podman image inspect --format '{{.Created}}' "$RUST"))"
else
  echo "  $RUST: debootstrap bookworm + gcc libc6-dev ca-certificates curl, Rust $RUST_VERSION by rustup"
  bootstrap "$tmp/rust" gcc,libc6-dev,ca-certificates,curl
  arch=$(uname -m)-unknown-linux-gnu
  # This machine's rustup, run under the name rustup-init, is the installer; it downloads Rust as the official
  # image's rustup-init does.
  rustup=$(command -v rustup) || fail "rustup is not installed here (it installs Rust in the Rust stand-in)"
  cp "$(readlink -f "$rustup")" "$tmp/rust/rustup-init"
  cp /etc/resolv.conf "$tmp/rust/etc/resolv.conf"
  # The CA certificates this machine adds to Debian's (networks that inspect TLS, as the project's machines' do,
  # need them to fetch Rust and crates). Only the Rust stand-in gets them: it makes the build stage, of which
  # nothing but the binary reaches the image.
  local_cas=$(find /usr/local/share/ca-certificates -name '*.crt' 2>/dev/null | wc -l)
  if [ "$local_cas" -gt 0 ]; then
    cp -r /usr/local/share/ca-certificates/. "$tmp/rust/usr/local/share/ca-certificates/"
    echo "  with this machine's $local_cas local CA certificate(s) (/usr/local/share/ca-certificates)"
  fi
  # Then as the official image's Dockerfile does; /proc is mounted in a private mount namespace that ends with
  # the command.
  # shellcheck disable=SC2016 # $1..$3 are the inner shell's.
  unshare --mount --fork sh -c 'mount -t proc proc "$1/proc" \
    && exec chroot "$1" env -i PATH=/usr/local/cargo/bin:/usr/sbin:/usr/bin:/sbin:/bin \
      RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo \
      sh -euc "update-ca-certificates >/dev/null
        /rustup-init -y --no-modify-path --profile minimal --default-toolchain $2 --default-host $3
        rm /rustup-init; chmod -R a+w /usr/local/rustup /usr/local/cargo; rustc --version; cargo --version"' \
    sh "$tmp/rust" "$RUST_VERSION" "$arch" >"$tmp/rustup.log" 2>&1 \
    || { tail -20 "$tmp/rustup.log" >&2; fail "rustup in the Rust stand-in"; }
  echo "  $(tail -2 "$tmp/rustup.log" | paste -sd' ')"
  : >"$tmp/rust/etc/resolv.conf"
  import "$tmp/rust" "$RUST" \
    --change 'ENV RUSTUP_HOME=/usr/local/rustup' --change 'ENV CARGO_HOME=/usr/local/cargo' \
    --change "ENV RUST_VERSION=$RUST_VERSION" \
    --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
  rm -rf "$tmp/rust"
fi
rustc_version=$(pm run --rm --network none "$RUST" rustc --version)
[[ $rustc_version == "rustc $RUST_VERSION "* ]] || fail "$RUST does not run rustc $RUST_VERSION: $rustc_version"

step "podman build --pull=never -t $IMAGE . (the Dockerfile unchanged)"
started=$(date +%s)
# --layers=false: no intermediate images kept (the build stage's is 1.6 GB; `COPY . .` misses the cache anyway).
pm build --pull=never --layers=false --network host -t "$IMAGE" . >"$tmp/build.log" 2>&1 \
  || { tail -40 "$tmp/build.log" >&2; fail "podman build"; }
echo "  built in $(($(date +%s) - started)) s: $(podman image inspect --format '{{.Id}}' "$IMAGE" | cut -c1-12)," \
  "$(podman image inspect --format '{{.Size}}' "$IMAGE") bytes"
[ "$(pm run --rm --network none --entrypoint id "$IMAGE" -un)" = wsgate ] || fail "the image does not run as wsgate"

# The errno podman's default profile gives a syscall it does not list (io_uring_* are not listed in the
# profiles seen so far; ENOSYS = 38, EPERM = 1), and so the reason the gateway gives.
profile=/usr/share/containers/seccomp.json
errno=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1])).get("defaultErrnoRet", 1))' "$profile")
if python3 -c 'import json, sys; sys.exit(any("io_uring_setup" in s.get("names", []) for s in json.load(open(sys.argv[1]))["syscalls"]))' "$profile"; then
  :
else
  fail "$profile lists io_uring_setup: this script assumes podman's default profile refuses it; look again"
fi
case "$errno" in
  38) refused="io_uring_setup is not implemented" ;;
  1) refused="io_uring is not permitted" ;;
  *) fail "$profile: defaultErrnoRet $errno, neither ENOSYS nor EPERM" ;;
esac

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

# Whether container $1 has printed the gateway's listening line (read whole: a `podman logs | grep -q` pipeline
# can fail under pipefail when grep exits first).
listening() {
  local logs
  logs=$(podman logs "$1" 2>/dev/null) || return 1
  [[ $logs == *"listening on"* ]]
}

# demo NAME [SECCOMP-OPT...]: the documented `run --demo`, published on 127.0.0.1:$port; waits until it listens,
# then reads /healthz and demo messages from this host. Leaves the container's log in $tmp/NAME.log.
demo() {
  local label=$1 name=wsgate-check-$$-$1
  shift
  containers+=("$name")
  pm run "${ulimits[@]}" -d --name "$name" --network slirp4netns \
    -p "127.0.0.1:$port:8080" "$@" "$IMAGE" --demo --demo-rate 50 >/dev/null
  for _ in $(seq 100); do
    listening "$name" && break
    [ "$(podman inspect --format '{{.State.Running}}' "$name")" = true ] || break
    sleep 0.1
  done
  listening "$name" || { podman logs "$name" >&2; fail "$name did not start"; }
  local health=""
  for _ in $(seq 50); do health=$(curl -sS --max-time 2 "http://127.0.0.1:$port/healthz" 2>/dev/null) && break; sleep 0.1; done
  [ -n "$health" ] || fail "$name: no /healthz answer on 127.0.0.1:$port"
  echo "  /healthz through 127.0.0.1:$port: ${health:0:100}"
  python3 - "$port" <<'EOF' || fail "$name: no demo messages on ws://127.0.0.1:$port/ws"
import sys
from websockets.sync.client import connect

with connect(f"ws://127.0.0.1:{sys.argv[1]}/ws", open_timeout=5) as ws:
    got = [ws.recv(timeout=5) for _ in range(5)]
print(f"  ws://127.0.0.1:{sys.argv[1]}/ws: {len(got)} demo messages, the first: {got[0][:80]}")
EOF
  podman stop -t 5 "$name" >/dev/null
  podman logs "$name" >"$tmp/$label.log" 2>&1
  podman rm "$name" >/dev/null
}

step "podman's default seccomp profile ($profile: unlisted syscalls fail with errno $errno)"
out=$(pm run --rm --network none "$IMAGE" --check-io) && fail "--check-io: io_uring available: $out"
echo "  --check-io (exit 3): $out"
case "$out" in *"$refused"*) ;; *) fail "--check-io does not say '$refused'" ;; esac
pm run --rm --network none "$IMAGE" --io uring >"$tmp/uring.out" 2>&1 && fail "--io uring started"
grep -q "io_uring unavailable: $refused" "$tmp/uring.out" || fail "--io uring: $(cat "$tmp/uring.out")"
echo "  --io uring: refuses to start: $(grep -o 'io_uring unavailable.*' "$tmp/uring.out" | head -1)"
demo default
grep -q "(io: epoll)" "$tmp/default.log" || fail "--demo did not run on epoll: $(cat "$tmp/default.log")"
[ "$(grep -c 'io backend: epoll (io_uring unavailable' "$tmp/default.log")" -eq 1 ] \
  || fail "--demo: not exactly one fallback line: $(cat "$tmp/default.log")"
echo "  --demo: $(grep -o 'listening on.*' "$tmp/default.log")"
echo "  --demo: $(grep -o 'io backend: epoll.*' "$tmp/default.log")"

step "seccomp=unconfined"
if out=$(pm run --rm --network none --security-opt seccomp=unconfined "$IMAGE" --check-io); then
  echo "  --check-io: $out"
  demo unconfined --security-opt seccomp=unconfined
  grep -q "(io: uring)" "$tmp/unconfined.log" || fail "--demo did not run on io_uring: $(cat "$tmp/unconfined.log")"
  ! grep -q "io backend: epoll" "$tmp/unconfined.log" || fail "--demo fell back: $(cat "$tmp/unconfined.log")"
  echo "  --demo: $(grep -o 'listening on.*' "$tmp/unconfined.log"), no fallback line"
else
  # The host itself refuses io_uring (kernel.io_uring_disabled, an old kernel, or a seccomp filter around podman).
  echo "SKIP io_uring in the container: the host does not allow it either: $out" >&2
  demo unconfined --security-opt seccomp=unconfined
  grep -q "(io: epoll)" "$tmp/unconfined.log" || fail "--demo: $(cat "$tmp/unconfined.log")"
fi

step "container checks passed"

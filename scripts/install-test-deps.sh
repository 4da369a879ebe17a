#!/usr/bin/env bash
# What the test suite needs beyond the Rust toolchain, installed only when missing (idempotent):
# - Chromium (Debian package) and playwright-core (npm) for the browser tests in tests/browser/;
# - Python's websockets package (PyPI) for the Python wss:// client of tests/tls.rs;
# - nginx (with its stream module) and HAProxy (Debian packages) and openssl for tests/edge_proxies.rs (which
#   starts its own instances on loopback with generated configurations) and the TLS browser test. The packages' own services are never
#   started: the install runs under a policy-rc.d that forbids it (and no test relies on them), so nothing takes
#   port 80.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
apt_updated=0

# Installs Debian packages, never starting their services.
apt_install() {
  if [ -n "$SUDO" ] && ! command -v sudo >/dev/null 2>&1; then
    echo "install-test-deps: missing Debian package(s) $*; install them (needs root)" >&2
    exit 1
  fi
  echo "install-test-deps: installing $* (apt-get)" >&2
  if [ "$apt_updated" -eq 0 ]; then
    $SUDO apt-get update -qq
    apt_updated=1
  fi
  local policy=/usr/sbin/policy-rc.d created=0
  if [ ! -e "$policy" ]; then
    # exit 101: "action forbidden by policy" (invoke-rc.d), so postinst scripts start nothing.
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
    $SUDO chmod 755 "$policy"
    created=1
  fi
  local rc=0
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null || rc=$?
  [ "$created" -eq 0 ] || $SUDO rm -f "$policy"
  return "$rc"
}

# Debian puts the daemons in /usr/sbin, which an unprivileged user's PATH may lack.
has() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }

missing=()
has chromium || missing+=(chromium)
has nginx || missing+=(nginx)
# nginx's stream module, for the TCP pass-through configuration (docs/deployment/nginx-wsgate-stream.conf).
[ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || missing+=(libnginx-mod-stream)
has haproxy || missing+=(haproxy)
has openssl || missing+=(openssl)
[ "${#missing[@]}" -eq 0 ] || apt_install "${missing[@]}"

if ! command -v node >/dev/null 2>&1; then
  echo "install-test-deps: Node.js is missing (needed to drive Chromium); install the Debian package 'nodejs'" >&2
  exit 1
fi
if [ ! -d tests/browser/node_modules/playwright-core ]; then
  echo "install-test-deps: npm ci in tests/browser" >&2
  npm ci --prefix tests/browser --no-audit --no-fund --silent
fi
if command -v python3 >/dev/null 2>&1 && ! python3 -c 'import websockets' >/dev/null 2>&1; then
  echo "install-test-deps: pip install websockets (tests/python/wss_client.py)" >&2
  python3 -m pip install --quiet 'websockets>=12'
fi

#!/usr/bin/env bash
# What the test suite needs beyond the Rust toolchain: Chromium (Debian package) and playwright-core (npm) for
# the browser test in tests/browser/; Python's websockets package (PyPI) for the Python wss:// client of
# tests/tls.rs. Idempotent; installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ] && ! command -v sudo >/dev/null 2>&1; then
    echo "install-test-deps: Chromium is missing; install the Debian package 'chromium' (needs root)" >&2
    exit 1
  fi
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  echo "install-test-deps: installing chromium (apt-get)" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
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

#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, docs, unit + property + integration tests (the
# integration tests once per I/O backend: epoll, then io_uring), benches compiled and run once in test mode, a real
# browser against the gateway, and the portable (SIMD-off) unmasking path. Installs what the tests need first when
# it is missing (Chromium and playwright-core for the browser test; nginx, HAProxy and openssl for
# tests/edge_proxies.rs): scripts/install-test-deps.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

step "test dependencies (scripts/install-test-deps.sh)"
./scripts/install-test-deps.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo doc (warnings are errors)"
RUSTDOCFLAGS=-Dwarnings cargo doc --no-deps --workspace --quiet

step "cargo test (unit, property and integration tests; benches once in test mode) — I/O backend: epoll"
WSGATE_TEST_IO=epoll cargo test --workspace --all-targets

step "integration tests again — I/O backend: io_uring"
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
if probe=$("$target_dir/debug/wsgate" --check-io); then
  WSGATE_TEST_IO=uring cargo test --workspace --tests
else
  # Loud, not silent: this kernel or sandbox does not allow io_uring, so only epoll was tested.
  echo "SKIP io_uring suite: $probe" >&2
fi

step "browser: headless Chromium drives the gateway through the standard WebSocket API"
WSGATE_BIN="$target_dir/debug/wsgate" node --test tests/browser/

step "deployment guide: sysctl file, systemd units, no io_uring under seccomp, Dockerfile (scripts/check-deployment.sh)"
./scripts/check-deployment.sh

step "unmasking with SIMD disabled (--cfg wsgate_disable_simd)"
CARGO_TARGET_DIR=target/nosimd RUSTFLAGS="--cfg wsgate_disable_simd -D warnings" cargo test --lib proto::mask

step "all tests passed"

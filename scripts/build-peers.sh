#!/usr/bin/env bash
# Builds the benchmark baseline peers (benches/peers/: tokio-tungstenite and fastwebsockets) in release mode and
# prints the paths of their binaries. They are standalone crates, outside the wsgate workspace, built from the
# published crates pinned in their own Cargo.lock files. Idempotent: a second run only checks they are up to date.
#
#   scripts/build-peers.sh            # into target/peers (or $CARGO_TARGET_DIR when set)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target/peers}"
peers=(tokio-tungstenite fastwebsockets)

for peer in "${peers[@]}"; do
    cargo build --release --locked --manifest-path "$root/benches/peers/$peer/Cargo.toml" >&2
done
for peer in "${peers[@]}"; do
    echo "$CARGO_TARGET_DIR/release/peer-$peer"
done

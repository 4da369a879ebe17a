#!/usr/bin/env bash
# Profile a running gateway (or any process) with perf's cpu-clock sampler and render an SVG flamegraph.
#
#   scripts/flamegraph.sh PID OUT.svg [SECONDS] [TITLE]
#
# Hardware counters are not available on the development VMs, so this samples `cpu-clock` (a software timer) at
# 999 Hz with call graphs (DWARF unwinding: the release profile keeps debug line info, frame pointers are not
# forced). Collapsing and rendering use the `inferno` crate (installed with `cargo install inferno` if missing).
# Run it while a load is applied, e.g. from scripts/bench-c10k.sh with FLAMEGRAPH=1.
set -euo pipefail

pid=${1:?usage: flamegraph.sh PID OUT.svg [SECONDS] [TITLE]}
out=${2:?usage: flamegraph.sh PID OUT.svg [SECONDS] [TITLE]}
secs=${3:-5}
title=${4:-"wsgate (pid $pid), perf cpu-clock ${secs}s"}

if ! command -v perf >/dev/null; then
  echo "flamegraph.sh: perf not found; install it (Debian: apt-get install -y linux-perf)" >&2
  exit 1
fi
if ! command -v inferno-flamegraph >/dev/null; then
  echo "flamegraph.sh: installing inferno (cargo install inferno)..." >&2
  cargo install --quiet --locked inferno
fi
# perf refuses to sample other processes' kernel stacks under a strict paranoid setting; relax it if we may.
if [ -w /proc/sys/kernel/perf_event_paranoid ]; then echo -1 > /proc/sys/kernel/perf_event_paranoid; fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
perf record -e cpu-clock -F 999 --call-graph dwarf,16384 -p "$pid" -o "$tmp/perf.data" -- sleep "$secs" \
  2> "$tmp/record.log" || { cat "$tmp/record.log" >&2; exit 1; }
perf script -i "$tmp/perf.data" 2>/dev/null | inferno-collapse-perf > "$tmp/collapsed.txt"
mkdir -p "$(dirname "$out")"
inferno-flamegraph --title "$title" --width 1600 < "$tmp/collapsed.txt" > "$out"
# FOLDED=1 keeps the collapsed stacks beside the SVG (OUT.folded), for scripts/profile-breakdown.py.
if [ "${FOLDED:-0}" = 1 ]; then cp "$tmp/collapsed.txt" "${out%.svg}.folded"; fi

echo "flamegraph.sh: wrote $out"

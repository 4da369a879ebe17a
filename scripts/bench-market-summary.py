#!/usr/bin/env python3
"""Summarise a scripts/bench-market.sh results folder from the loadgen's JSON reports: one row per run, then
medians per variant (gateway threads x feed rate) over the repetitions.

Usage: scripts/bench-market-summary.py RESULTS_DIR
"""
import json
import os
import re
import statistics
import sys

# wsgate-tTHREADS-cCONNS-kTOPICS-mPER_CONN-rRATE-REP
RUN_NAME = re.compile(r"^(?P<variant>.+-t[^-]+)-c(?P<conns>\d+)-k(?P<topics>\d+)-m(?P<per>\d+)-r(?P<rate>\d+)-(?P<rep>\d+)$")


def fmt(v, spec="{:.0f}"):
    return "-" if v is None else spec.format(v)


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def table(head, rows):
    w = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    lines = ["  ".join(str(h).rjust(w[i]) for i, h in enumerate(head))]
    lines += ["  ".join(str(c).rjust(w[i]) for i, c in enumerate(r)) for r in rows]
    return "\n".join(lines)


def figures(j):
    """The figures quoted per run, from one loadgen report."""
    t = j.get("topics") or {}
    lat = j.get("latency_us") or {}
    storm = t.get("storm") or {}
    return {
        "conns": j.get("connections_ok"),
        "deliveries": t.get("deliveries_per_s", j.get("messages_per_s")),
        "holes": t.get("holes"),
        "tail": j.get("messages_lost_tail"),
        "gaps": sum((t.get("gap_notices") or {}).values()),
        "chain": (t.get("chain_holes") or 0) + (t.get("chain_duplicates") or 0),
        "dups": j.get("duplicates"),
        "verdict": j.get("verdict", "-"),
        "p50": lat.get("p50"),
        "p99": lat.get("p99"),
        "p999": lat.get("p999"),
        "max": lat.get("max"),
        "cpu": j.get("server_cpu_ns_per_msg"),
        "cores": j.get("server_cpu_cores"),
        "lg": j.get("loadgen_cpu_ns_per_msg"),
        "lg_busiest": j.get("loadgen_max_proc_core_fraction"),
        "reconnects": t.get("reconnects"),
        "storm_live": storm.get("all_live_ms"),
    }


def main():
    out = sys.argv[1]
    runs = {}
    rows = []
    for f in sorted(os.listdir(out)):
        m = RUN_NAME.match(f[: -len(".json")]) if f.endswith(".json") else None
        if not m:
            continue
        try:
            j = json.load(open(os.path.join(out, f)))
        except ValueError as e:
            print(f"{f}: unreadable ({e})", file=sys.stderr)
            continue
        x = figures(j)
        runs.setdefault((m["variant"], int(m["rate"])), []).append(x)
        rows.append([f[: -len(".json")], fmt(x["conns"]), fmt(x["deliveries"]), fmt(x["holes"]), fmt(x["tail"]),
                     x["gaps"], fmt(x["chain"]), fmt(x["dups"]), x["verdict"], fmt(x["p50"]), fmt(x["p99"]),
                     fmt(x["p999"]), fmt(x["max"]), fmt(x["cpu"]), fmt(x["cores"], "{:.2f}"), fmt(x["lg"]),
                     fmt(x["lg_busiest"] and 100 * x["lg_busiest"]), fmt(x["reconnects"]), fmt(x["storm_live"])])
    head = ["run", "conns", "deliveries/s", "holes", "late", "gap notices", "chain errs", "dups", "verdict",
            "p50 us", "p99 us", "p99.9 us", "max us", "server ns/delivery", "server cores", "loadgen ns/msg",
            "busiest loadgen %", "reconnects", "storm all live ms"]
    if not rows:
        print(f"no market runs in {out}")
        return
    print("Runs:")
    print(table(head, rows))
    rows = []
    for (variant, rate), xs in sorted(runs.items()):
        rows.append([variant, rate, len(xs), fmt(median([x["deliveries"] for x in xs])),
                     fmt(median([x["cpu"] for x in xs])), fmt(median([x["cores"] for x in xs]), "{:.2f}"),
                     fmt(median([x["p50"] for x in xs])), fmt(median([x["p99"] for x in xs])),
                     fmt(median([x["p999"] for x in xs])), fmt(median([x["lg"] for x in xs])),
                     "/".join(x["verdict"] for x in xs)])
    print("\nMedians per variant:")
    print(table(["variant", "feed msg/s", "runs", "deliveries/s", "server ns/delivery", "server cores", "p50 us",
                 "p99 us", "p99.9 us", "loadgen ns/msg", "verdicts"], rows))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Summarise a scripts/bench-io.sh results folder: medians per workload and server, and each server's ratio to
wsgate-epoll (or, for the io_uring options, to wsgate-uring) from those medians.

Usage: scripts/bench-io-summary.py RESULTS_DIR
"""
import json
import os
import re
import statistics
import sys

# NAME-[echo-|fanout-]cCONNS-...[-REP]: the server is what comes before the workload.
RUN_NAME = re.compile(r"^(?P<server>wsgate.*?)-(?P<workload>(?:echo-|fanout-)?c\d+.*?)(?:-\d+)?$")


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def split_run(name):
    """'wsgate-uring-c10000-r100-2' -> ('wsgate-uring', 'c10000-r100'); (None, name) for other files."""
    m = RUN_NAME.match(name)
    return (m["server"], m["workload"]) if m else (None, name)


def loadgen_runs(out):
    """(part, workload, server) -> list of loadgen JSON summaries."""
    runs = {}
    for dirpath, dirnames, filenames in os.walk(out):
        dirnames[:] = [d for d in dirnames if not d.endswith(".d")]
        for f in filenames:
            if not f.endswith(".json"):
                continue
            server, workload = split_run(f[: -len(".json")])
            if server is None:
                continue
            part = os.path.relpath(dirpath, out).split(os.sep)[0]
            try:
                data = json.load(open(os.path.join(dirpath, f)))
            except ValueError as e:
                print(f"{f}: unreadable ({e})", file=sys.stderr)
                continue
            runs.setdefault((part, workload, server), []).append(data)
    return runs


def fmt(v, spec="{:.0f}"):
    return "-" if v is None else spec.format(v)


def ratio(a, b):
    return None if a is None or not b else a / b


def table(head, rows):
    w = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    lines = ["  ".join(str(h).rjust(w[i]) for i, h in enumerate(head))]
    lines += ["  ".join(str(c).rjust(w[i]) for i, c in enumerate(r)) for r in rows]
    return "\n".join(lines)


def main():
    out = sys.argv[1]
    runs = loadgen_runs(out)
    rows = []
    medians = {}
    for (part, workload, server), items in sorted(runs.items()):
        lat = [j.get("latency_us", {}) for j in items]
        m = {
            "n": len(items),
            "cpu": median([j.get("server_cpu_ns_per_msg") for j in items]),
            "p50": median([x.get("p50") for x in lat]),
            "p99": median([x.get("p99") for x in lat]),
            "p999": median([x.get("p999") for x in lat]),
            "lost": sum(j.get("messages_lost") or 0 for j in items),
            "hs": median([j.get("handshakes_per_s") for j in items]),
            "rss": median([j.get("server_rss_bytes_per_conn") for j in items]),
            "lg": median([j.get("loadgen_cpu_ns_per_msg") for j in items]),
            "each_cpu": [j.get("server_cpu_ns_per_msg") for j in items],
            "each_p99": [x.get("p99") for x in lat],
            "each_hs": [j.get("handshakes_per_s") for j in items],
        }
        medians[(part, workload, server)] = m
    for (part, workload, server), m in sorted(medians.items()):
        base_server = "wsgate-uring" if part.startswith("options") else "wsgate-epoll"
        base = medians.get((part, workload, base_server))
        r_cpu = ratio(m["cpu"], base and base["cpu"]) if server != base_server else None
        r_p99 = ratio(m["p99"], base and base["p99"]) if server != base_server else None
        r_hs = ratio(m["hs"], base and base["hs"]) if server != base_server else None
        rows.append([
            part, workload, server, m["n"], fmt(m["cpu"]), fmt(r_cpu, "{:.2f}x"), fmt(m["p50"]), fmt(m["p99"]),
            fmt(r_p99, "{:.2f}x"), fmt(m["p999"]), m["lost"], fmt(m["hs"]), fmt(r_hs, "{:.2f}x"), fmt(m["rss"]),
            fmt(m["lg"]), "/".join(fmt(v) for v in m["each_cpu"]), "/".join(fmt(v) for v in m["each_p99"]),
            "/".join(fmt(v) for v in m["each_hs"]),
        ])
    head = ["part", "workload", "server", "runs", "cpu ns/msg", "ratio", "p50 us", "p99 us", "ratio", "p99.9 us",
            "lost", "handshakes/s", "ratio", "RSS B/conn", "loadgen ns/msg", "each cpu", "each p99", "each hs/s"]
    if rows:
        print("Loadgen runs (medians; ratio = server / wsgate-epoll, or / wsgate-uring for the options):")
        print(table(head, rows))

    idle_dir = os.path.join(out, "idle")
    if os.path.isdir(idle_dir):
        per = {}
        for f in sorted(os.listdir(idle_dir)):
            if not f.endswith(".txt"):
                continue
            server = re.sub(r"-\d+$", "", f[: -len(".txt")])
            text = open(os.path.join(idle_dir, f)).read()
            kv = dict(re.findall(r"(\w+)=([-\d.]+)", text))
            per.setdefault(server, []).append(kv)
        rows = []
        base = median([float(kv["bytes_per_conn"]) for kv in per.get("wsgate-epoll", []) if "bytes_per_conn" in kv])
        for server, kvs in sorted(per.items()):
            b = median([float(kv["bytes_per_conn"]) for kv in kvs if "bytes_per_conn" in kv])
            k = median([float(kv["kernel_slab_bytes_per_conn"]) for kv in kvs if "kernel_slab_bytes_per_conn" in kv])
            hs = median([float(kv["handshakes_per_s"]) for kv in kvs if "handshakes_per_s" in kv])
            rows.append([server, len(kvs), fmt(b), fmt(ratio(b, base), "{:.2f}x") if server != "wsgate-epoll" else "-",
                         fmt(k), fmt(hs), "/".join(kv.get("bytes_per_conn", "?") for kv in kvs)])
        print("\nIdle connections (19,000 on one loop thread; user-space RSS, machine-wide kernel slab):")
        print(table(["server", "runs", "RSS B/conn", "ratio", "kernel slab B/conn", "handshakes/s", "each"], rows))

    rows = []
    for part in ("syscalls-fanout", "syscalls-echo"):
        d = os.path.join(out, part)
        if not os.path.isdir(d):
            continue
        for run in sorted(os.listdir(d)):
            path = os.path.join(d, run, "syscalls.txt")
            if run.endswith(".d") and os.path.exists(path):
                kv = dict(re.findall(r"(\w+)=([-\w.?]+)", open(path).read()))
                rows.append([part, run[:-2], kv.get("syscalls"), kv.get("deliveries"),
                             kv.get("syscalls_per_delivery"), kv.get("loadgen_lost")])
    if rows:
        print("\nSystem calls per delivered message (perf stat raw_syscalls:sys_enter, whole process):")
        print(table(["part", "run", "syscalls", "deliveries", "per delivery", "lost"], rows))


if __name__ == "__main__":
    main()

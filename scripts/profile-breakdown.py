#!/usr/bin/env python3
"""Where a profiled gateway's CPU went, by kind of work, from collapsed stacks (flamegraph.sh with FOLDED=1).

Each sample is put in the first category (top to bottom) whose marker appears anywhere in its stack, so "TCP
send" includes the loopback softirq that delivers the bytes to the receiving socket, and "io_uring machinery"
is io_uring's own work outside the TCP calls it makes. With --ns-per-msg (server CPU per delivered message from
the loadgen's JSON) each share is also given in ns per delivered message.

Usage: scripts/profile-breakdown.py FILE.folded [--ns-per-msg N] [FILE.folded --ns-per-msg N ...]
"""
import sys

CATEGORIES = [
    ("TCP send (incl. loopback delivery to the peer)", ["tcp_sendmsg", "tcp_write_xmit", "__tcp_push_pending"]),
    ("TCP receive", ["tcp_recvmsg", "tcp_rcv_", "tcp_cleanup_rbuf"]),
    ("accept / connection set-up and teardown", ["inet_csk_accept", "do_accept", "__sys_accept", "tcp_close",
                                                 "__fput", "sock_close", "tcp_v4_syn", "io_accept"]),
    ("io_uring machinery (submit, completions, task work, wait)", ["__do_sys_io_uring_enter", "io_submit_sqes",
                                                                   "io_cqring", "io_issue_sqe", "io_req_", "__io_"]),
    ("epoll (wait, ready list, ctl)", ["do_epoll_wait", "do_epoll_ctl", "ep_poll", "ep_send_events", "ep_item_poll"]),
    ("other system-call work (entry, exit, scheduling)", ["entry_SYSCALL", "do_syscall_64", "schedule",
                                                         "syscall_exit"]),
    ("user space: wsgate", ["wsgate::"]),
]


def breakdown(path):
    counts = {name: 0 for name, _ in CATEGORIES}
    counts["other"] = 0
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, n = line.rstrip("\n").rpartition(" ")
            if not n.isdigit():
                continue
            n = int(n)
            total += n
            for name, markers in CATEGORIES:
                if any(m in stack for m in markers):
                    counts[name] += n
                    break
            else:
                counts["other"] += n
    return counts, total


def main(argv):
    runs = []  # [path, ns_per_msg]
    args = iter(argv)
    for arg in args:
        if arg == "--ns-per-msg":
            if not runs:
                sys.exit(__doc__)
            runs[-1][1] = float(next(args))
        else:
            runs.append([arg, None])
    if not runs:
        sys.exit(__doc__)
    for path, ns in runs:
        counts, total = breakdown(path)
        print(f"{path}: {total} samples")
        for name, n in counts.items():
            share = n / total if total else 0
            extra = f"  {share * ns:7.0f} ns/msg" if ns else ""
            print(f"  {share * 100:5.1f}%{extra}  {name}")


if __name__ == "__main__":
    main(sys.argv[1:])

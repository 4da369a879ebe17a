#!/usr/bin/env python3
"""Runs a command under a seccomp filter that refuses io_uring: io_uring_setup, io_uring_enter and
io_uring_register fail with EPERM (the default), or with ENOSYS given `--errno ENOSYS`. Everything else is
allowed. x86_64 and aarch64 (the io_uring syscall numbers are the same).

What real default profiles answer (docs/deployment.md, "Containers", gives the sources): Docker 25.0 and later,
and containerd 2.0 and later (so Kubernetes' RuntimeDefault on containerd), do not list io_uring_*, and an
unlisted syscall fails with EPERM; podman with Debian 12's containers-common (0.50.1) answers ENOSYS, as
scripts/check-container.sh sees in a real container. Older Docker and containerd 1.7 allow io_uring. Those
profiles refuse much more than io_uring; this filter refuses only io_uring.

    scripts/no-io-uring.py target/release/wsgate --check-io
    scripts/no-io-uring.py --errno ENOSYS target/release/wsgate --check-io

Used by scripts/check-deployment.sh to show what the gateway does in such a container.
"""
import ctypes
import os
import platform
import struct
import sys

# <linux/audit.h>
AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
IO_URING_SYSCALLS = (425, 426, 427)  # io_uring_setup, io_uring_enter, io_uring_register
ERRNO = {"EPERM": 1, "ENOSYS": 38}

# <linux/filter.h>, <linux/seccomp.h>
BPF_LD_W_ABS = 0x20
BPF_JEQ_K = 0x15
BPF_RET_K = 0x06
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_KILL_PROCESS = 0x80000000
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2


def insn(code, jt, jf, k):
    return struct.pack("=HBBI", code, jt, jf, k)


def main():
    args = sys.argv[1:]
    errno = ERRNO["EPERM"]
    if args[:1] == ["--errno"]:
        if len(args) < 2 or args[1] not in ERRNO:
            sys.exit(f"no-io-uring: --errno takes one of {', '.join(ERRNO)}")
        errno = ERRNO[args[1]]
        args = args[2:]
    if not args:
        sys.exit(__doc__)
    arch = AUDIT_ARCH.get(platform.machine())
    if arch is None:
        sys.exit(f"no-io-uring: unsupported architecture {platform.machine()}")
    prog = [
        insn(BPF_LD_W_ABS, 0, 0, 4),  # seccomp_data.arch
        insn(BPF_JEQ_K, 1, 0, arch),
        insn(BPF_RET_K, 0, 0, SECCOMP_RET_KILL_PROCESS),
        insn(BPF_LD_W_ABS, 0, 0, 0),  # seccomp_data.nr
    ]
    for i, nr in enumerate(IO_URING_SYSCALLS):
        left = len(IO_URING_SYSCALLS) - i
        # Match: jump over the remaining compares and the ALLOW to the ERRNO return.
        prog.append(insn(BPF_JEQ_K, left, 0, nr))
    prog.append(insn(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW))
    prog.append(insn(BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | errno))
    code = b"".join(prog)

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]

    libc = ctypes.CDLL(None, use_errno=True)
    fprog = SockFprog(len(prog), code)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        sys.exit(f"no-io-uring: PR_SET_NO_NEW_PRIVS: {os.strerror(ctypes.get_errno())}")
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        sys.exit(f"no-io-uring: PR_SET_SECCOMP: {os.strerror(ctypes.get_errno())}")
    os.execvp(args[0], args)


if __name__ == "__main__":
    main()

"""Older kernels, emulated with the kernel's own seccomp: a classic BPF filter, assembled here,
that answers the system calls a kernel did not have yet with ENOSYS and the ioctls it did not
know with ENOTTY, as such a kernel does.  A filter cannot be removed again and is inherited by
every child, so `install()` is for a forked child only, never the test runner."""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct
from typing import Dict, FrozenSet, List, NamedTuple, Optional, Tuple

# <linux/filter.h>, <linux/seccomp.h>, <linux/audit.h>, <sys/prctl.h>
BPF_LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS: A = 32-bit word of seccomp_data at k
BPF_ALU_AND_K = 0x54  # A &= k
BPF_JEQ_K, BPF_JGT_K, BPF_JGE_K = 0x15, 0x25, 0x35
BPF_RET_K = 0x06
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_MODE_FILTER = 2
PR_SET_SECCOMP = 22
PR_SET_NO_NEW_PRIVS = 38

# struct seccomp_data: int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6].  Both
# architectures here are little-endian: an argument's low 32 bits come first.
OFFSET_NR, OFFSET_ARCH = 0, 4


def offset_arg(i: int) -> int:
    return 16 + 8 * i


# The audit arch and the numbers of the calls the eras take away.  aarch64 uses the generic
# table (asm-generic/unistd.h); the pidfd calls and clone3 have one number on every arch.
ARCHES: Dict[str, Tuple[int, Dict[str, int]]] = {
    "x86_64": (0xC000003E, {"clone": 56, "ioctl": 16, "unshare": 272, "setns": 308,
                            "kcmp": 312, "pidfd_send_signal": 424, "pidfd_open": 434,
                            "clone3": 435, "pidfd_getfd": 438}),
    "aarch64": (0xC00000B7, {"clone": 220, "ioctl": 29, "unshare": 97, "setns": 268,
                             "kcmp": 272, "pidfd_send_signal": 424, "pidfd_open": 434,
                             "clone3": 435, "pidfd_getfd": 438}),
}


class Rule(NamedTuple):
    """Fail system call `syscall` with `err` -- when `arg` is given, only if
    lo <= (args[arg] & mask) <= hi, on the argument's low 32 bits."""
    syscall: str
    err: int
    arg: Optional[int] = None
    mask: int = 0xFFFFFFFF
    lo: int = 0
    hi: int = 0xFFFFFFFF


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k)  # struct sock_filter


def assemble(rules: List[Rule], machine: Optional[str] = None) -> bytes:
    """The filter program for `rules` on `machine` (default: this one), as sock_filter array
    bytes.  Another architecture's system calls (none here) are allowed."""
    arch, numbers = ARCHES[machine or platform.machine()]
    allow = _insn(BPF_RET_K, SECCOMP_RET_ALLOW)
    body: List[bytes] = [_insn(BPF_LD_W_ABS, OFFSET_NR)]
    for rule in rules:
        fail = _insn(BPF_RET_K, SECCOMP_RET_ERRNO | rule.err)
        if rule.arg is None:
            block = [fail]
        else:
            # A no longer holds the number afterwards: the last instruction loads it again,
            # and each mismatch jumps there.
            block = [_insn(BPF_LD_W_ABS, offset_arg(rule.arg)),
                     _insn(BPF_ALU_AND_K, rule.mask),
                     _insn(BPF_JGE_K, rule.lo, 0, 2),
                     _insn(BPF_JGT_K, rule.hi, 1, 0),
                     fail,
                     _insn(BPF_LD_W_ABS, OFFSET_NR)]
        body.append(_insn(BPF_JEQ_K, numbers[rule.syscall], 0, len(block)))
        body.extend(block)
    body.append(allow)
    head = [_insn(BPF_LD_W_ABS, OFFSET_ARCH),
            _insn(BPF_JEQ_K, arch, 0, len(body) - 1)]  # another arch: to `allow`, the last
    return b"".join(head + body)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install(rules: List[Rule]) -> None:
    """Install the filter for `rules` on the calling thread, for good, and on its future
    children: call it in a forked child only."""
    program = assemble(rules)
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.cast(buffer, ctypes.c_void_p))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
    libc.prctl.restype = ctypes.c_int
    # Without CAP_SYS_ADMIN the kernel takes a filter only under no_new_privs; set it anyway,
    # so the emulation behaves the same with and without root.
    for args in ((PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0),
                 (PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0)):
        if libc.prctl(*args) == -1:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))


def _io(kind: int, nr: int) -> int:
    return kind << 8 | nr  # _IO(): no direction, no size


PIDFS_IOCTL_MAGIC, NSIO = 0xFF, 0xB7
CLONE_NEWTIME, CLONE_PIDFD = 0x80, 0x1000

# What each kernel lacks, each era including the newer ones' losses (as a real kernel would);
# `missing` names the features the tests' expectations refer to.
#
# Not emulated (seccomp sees only the registers, not the fds or memory they point to):
# setns() on a pidfd (5.8; EINVAL before), clone3's struct with CLONE_NEWTIME (EINVAL before
# 5.6).  And a real kernel before 5.2 ignores CLONE_PIDFD (it reuses the bit of the long-gone
# CLONE_PID) instead of failing: the pre-5.2 era fails it with EINVAL, as the stricter answer.
PRE_6_11 = [
    # PIDFD_GET_{CGROUP,...,UTS}_NAMESPACE (_IO(0xFF, 1..10)) and 6.13's PIDFD_GET_INFO
    # (_IOWR(0xFF, 11, ...)): a kernel that does not know an ioctl answers ENOTTY.
    Rule("ioctl", errno.ENOTTY, arg=1, mask=0xFFFF, lo=_io(PIDFS_IOCTL_MAGIC, 1),
         hi=_io(PIDFS_IOCTL_MAGIC, 11)),
]
PRE_5_6 = PRE_6_11 + [
    Rule("pidfd_getfd", errno.ENOSYS),
    Rule("unshare", errno.EINVAL, arg=0, mask=CLONE_NEWTIME, lo=CLONE_NEWTIME),
    Rule("setns", errno.EINVAL, arg=1, mask=CLONE_NEWTIME, lo=CLONE_NEWTIME),
]
PRE_5_3 = PRE_5_6 + [Rule("clone3", errno.ENOSYS), Rule("pidfd_open", errno.ENOSYS)]
PRE_5_2 = PRE_5_3 + [Rule("clone", errno.EINVAL, arg=0, mask=CLONE_PIDFD, lo=CLONE_PIDFD)]
PRE_4_11 = PRE_5_2 + [
    Rule("pidfd_send_signal", errno.ENOSYS),
    # NS_GET_NSTYPE and NS_GET_OWNER_UID came in 4.11 (NS_GET_USERNS, NS_GET_PARENT in 4.9).
    Rule("ioctl", errno.ENOTTY, arg=1, mask=0xFFFFFFFF, lo=_io(NSIO, 3), hi=_io(NSIO, 4)),
]
NO_KCMP = [Rule("kcmp", errno.ENOSYS)]  # CONFIG_CHECKPOINT_RESTORE=n, on any version

ERAS: Dict[str, List[Rule]] = {
    "now": [],
    "pre-6.11": PRE_6_11,
    "pre-5.6": PRE_5_6,
    "pre-5.3": PRE_5_3,
    "pre-5.2": PRE_5_2,
    "pre-4.11": PRE_4_11,
    "no-kcmp": NO_KCMP,
}
MISSING: Dict[str, FrozenSet[str]] = {
    "now": frozenset(),
    "pre-6.11": frozenset({"pidfs_ioctl"}),
    "pre-5.6": frozenset({"pidfs_ioctl", "pidfd_getfd", "newtime"}),
    "pre-5.3": frozenset({"pidfs_ioctl", "pidfd_getfd", "newtime", "clone3", "pidfd_open"}),
    "pre-5.2": frozenset({"pidfs_ioctl", "pidfd_getfd", "newtime", "clone3", "pidfd_open",
                          "clone_pidfd"}),
    "pre-4.11": frozenset({"pidfs_ioctl", "pidfd_getfd", "newtime", "clone3", "pidfd_open",
                           "clone_pidfd", "pidfd_send_signal", "ns_get_nstype"}),
    "no-kcmp": frozenset({"kcmp"}),
}

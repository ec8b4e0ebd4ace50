"""python -m linux_clone.bench: how fast linux_clone makes the namespace calls, as a ratio to
raw C loops of the same syscalls (linux_clone._bench) run in the same process in the same run,
next to the other ways Python has to make them."""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import gc
import json
import os
import pickle
import platform
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from functools import partial
from importlib import metadata
from itertools import repeat
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import linux_clone
from linux_clone import _bench

Loop = Callable[[int], int]  # n -> elapsed ns for n calls

RAW, CIMPORT, LC = "raw C", "cimport", "linux_clone"
# The table's columns, in this order; a column shows when any row has it.
COLUMNS = [RAW, CIMPORT, LC, "os", "ctypes", "fcntl", "subprocess", "lxns", "pyroute2"]

# <linux/sockios.h>, <net/if.h>: for the stdlib way to bring up lo.
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
_os: Any = os  # os.setns and os.unshare exist from Python 3.12 on
IFREQ = struct.Struct("16sH22x")  # struct ifreq: ifr_name, ifr_flags, rest of the union


class Skip(Exception):
    """A row or an implementation that cannot run here; the message says why."""


@dataclass
class Settings:
    repetitions: int       # interleaved repetitions of the rows of fast calls
    loop_ns: float         # what one raw C loop there should take
    proc_repetitions: int  # interleaved single calls of the rows that make processes or netns


# Loops of a millisecond: on a busy machine most of them run without being preempted.
FULL = Settings(repetitions=61, loop_ns=1e6, proc_repetitions=41)
QUICK = Settings(repetitions=9, loop_ns=0.3e6, proc_repetitions=5)


@dataclass
class Target:
    """A goal of the spec for one implementation of a row."""
    impl: str
    limit: float
    text: str
    kind: str = "ratio"   # ratio: × raw C; vs: × `other`; speedup: other ÷ impl; ns: absolute
    other: str = ""

    def measure(self, samples: Dict[str, List[float]]) -> Optional[float]:
        mine = samples.get(self.impl)
        if mine is None or (self.kind != "ns" and self.other_key not in samples):
            return None
        if self.kind == "ns":
            return statistics.median(mine)
        theirs = samples[self.other_key]
        if self.kind == "speedup":
            return statistics.median(b / a for a, b in zip(mine, theirs))
        return statistics.median(a / b for a, b in zip(mine, theirs))

    @property
    def other_key(self) -> str:
        return self.other or RAW

    def met(self, value: float) -> bool:
        return value >= self.limit if self.kind == "speedup" else value <= self.limit


@dataclass
class Row:
    key: str
    title: str
    unit: str
    measure: Callable[[Settings], "Measured"]
    privileged: bool = True
    targets: List[Target] = field(default_factory=list)
    notes: str = ""


@dataclass
class Measured:
    """What a worker sends back: ns per call for each implementation, one per repetition."""
    n: int
    samples: Dict[str, List[float]]
    what: Dict[str, str]
    skipped: Dict[str, str]


# ---- loops: each takes n and returns the ns that n calls took ----

def _loop1(call: Callable[[Any], Any], a: Any) -> Loop:
    def run(n: int) -> int:
        start = time.perf_counter_ns()
        for _ in repeat(None, n):
            call(a)
        return time.perf_counter_ns() - start
    return run


def _loop2(call: Callable[[Any, Any], Any], a: Any, b: Any) -> Loop:
    def run(n: int) -> int:
        start = time.perf_counter_ns()
        for _ in repeat(None, n):
            call(a, b)
        return time.perf_counter_ns() - start
    return run


def _loop3(call: Callable[[Any, Any, Any], Any], a: Any, b: Any, c: Any) -> Loop:
    def run(n: int) -> int:
        start = time.perf_counter_ns()
        for _ in repeat(None, n):
            call(a, b, c)
        return time.perf_counter_ns() - start
    return run


def _round_trip(call: Callable[[Any, Any], Any], there: Any, back: Any, nstype: Any) -> Loop:
    def run(n: int) -> int:
        start = time.perf_counter_ns()
        for _ in repeat(None, n):
            call(there, nstype)
            call(back, nstype)
        return time.perf_counter_ns() - start
    return run


def _loop0(call: Callable[[], Any]) -> Loop:
    def run(n: int) -> int:
        start = time.perf_counter_ns()
        for _ in repeat(None, n):
            call()
        return time.perf_counter_ns() - start
    return run


def _c_loop(func: Callable[..., int], *args: Any) -> Loop:
    return lambda n: func(*args, n)


# ---- the comparators: each import guarded, none required ----

def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _ctypes_call(func: Any, argtypes: Sequence[Any], name: str) -> Callable[..., int]:
    """A libc function through ctypes, checked as a careful user wraps it."""
    func.argtypes = list(argtypes)
    func.restype = ctypes.c_long if func.__name__ == "syscall" else ctypes.c_int

    def call(*args: Any) -> int:
        rc = func(*args)
        if rc == -1:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), name)
        return rc  # type: ignore[no-any-return]
    return call


def _optional(module: str) -> Tuple[Any, str]:
    """(module, "") when `module` imports, else (None, why not)."""
    try:
        return __import__(module, fromlist=["_"]), ""
    except ImportError as exc:
        return None, f"{module.split('.')[0]} is not installed ({exc.name})"
    except Exception as exc:  # a broken third-party install must not stop the benchmark
        return None, f"{module} failed to import: {exc!r}"


def _os_needs_312(name: str) -> str:
    return f"os.{name} needs Python 3.12 (this is {platform.python_version()})"


# ---- the interleaved measurement, run in a worker process ----

def _measure(loops: Dict[str, Loop], what: Dict[str, str], n: int, repetitions: int,
             skipped: Optional[Dict[str, str]] = None) -> Measured:
    """Run each loop once to warm up (a failing comparator is skipped, a failing raw C or
    linux_clone loop fails the row), then `repetitions` rounds of every loop, each round in
    a rotated order: ns per call, one number per round."""
    skipped = dict(skipped or {})
    for name, loop in list(loops.items()):
        try:
            loop(1)
        except Exception as exc:
            if name in (RAW, CIMPORT, LC):
                raise
            skipped[name] = f"failed: {exc!r}"
            del loops[name]
    names = list(loops)
    samples: Dict[str, List[float]] = {name: [] for name in names}
    for rep in range(repetitions):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(loops[name](n) / n)
    return Measured(n, samples, {k: what[k] for k in names}, skipped)


def _calls_per_loop(raw: Loop, settings: Settings, cap: int = 200_000) -> int:
    """How many calls make one raw C loop last settings.loop_ns."""
    probe = 32
    per_call = max(raw(probe) / probe, 1.0)
    return max(8, min(cap, int(settings.loop_ns / per_call)))


def _own_netns_pair() -> Tuple[int, int]:
    """fds of this worker's network namespace and of a new one it made; the worker is back
    in the first.  The new one lives as long as its fd: at the latest until the worker exits."""
    here = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    linux_clone.unshare(linux_clone.NEWNET)
    there = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    linux_clone.setns(here, linux_clone.NEWNET)
    return here, there


# ---- the rows ----

def measure_setns(settings: Settings) -> Measured:
    here, there = _own_netns_pair()
    net = int(linux_clone.NEWNET)
    loops = {RAW: _c_loop(_bench.setns_raw, here, there, net),
             CIMPORT: _c_loop(_bench.setns_cimport, here, there, net),
             LC: _round_trip(linux_clone.setns, there, here, linux_clone.NEWNET)}
    what = {RAW: "syscall(SYS_setns) ×2, nogil loop", CIMPORT: "sys_setns ×2 (cimport), nogil",
            LC: "linux_clone.setns(fd, NEWNET) ×2"}
    skipped = {}
    if hasattr(os, "setns"):
        loops["os"] = _round_trip(_os.setns, there, here, _os.CLONE_NEWNET)
        what["os"] = "os.setns(fd, CLONE_NEWNET) ×2"
    else:
        skipped["os"] = _os_needs_312("setns")
    libc = _libc()
    loops["ctypes"] = _round_trip(_ctypes_call(libc.setns, [ctypes.c_int] * 2, "setns"),
                                  there, here, net)
    what["ctypes"] = "libc.setns via ctypes ×2"
    lxns_os, why = _optional("lxns.os")
    if lxns_os is not None:
        loops["lxns"] = _round_trip(lxns_os.setns, there, here, net)
        what["lxns"] = "lxns.os.setns(fd, CLONE_NEWNET) ×2"
    else:
        skipped["lxns"] = why
    netns, why = _optional("pyroute2.netns")
    if netns is not None:
        def pyroute2_trip(n: int) -> int:
            start = time.perf_counter_ns()
            for _ in repeat(None, n):
                netns.setns(there)
                netns.setns(here)
            return time.perf_counter_ns() - start
        loops["pyroute2"] = pyroute2_trip
        what["pyroute2"] = "pyroute2.netns.setns(fd) ×2"
    else:
        skipped["pyroute2"] = why
    return _measure(loops, what, _calls_per_loop(loops[RAW], settings),
                    settings.repetitions, skipped)


def measure_unshare(settings: Settings) -> Measured:
    # Every call makes a new UTS namespace and drops the last: this worker is thrown away.
    uts = int(linux_clone.NEWUTS)
    loops = {RAW: _c_loop(_bench.unshare_raw, uts), CIMPORT: _c_loop(_bench.unshare_cimport, uts),
             LC: _loop1(linux_clone.unshare, linux_clone.NEWUTS)}
    what = {RAW: "syscall(SYS_unshare), nogil loop", CIMPORT: "sys_unshare (cimport), nogil",
            LC: "linux_clone.unshare(NEWUTS)"}
    skipped = {}
    if hasattr(os, "unshare"):
        loops["os"] = _loop1(_os.unshare, _os.CLONE_NEWUTS)
        what["os"] = "os.unshare(CLONE_NEWUTS)"
    else:
        skipped["os"] = _os_needs_312("unshare")
    loops["ctypes"] = _loop1(_ctypes_call(_libc().unshare, [ctypes.c_int], "unshare"), uts)
    what["ctypes"] = "libc.unshare via ctypes"
    lxns_os, why = _optional("lxns.os")
    if lxns_os is not None:
        loops["lxns"] = _loop1(lxns_os.unshare, uts)
        what["lxns"] = "lxns.os.unshare(CLONE_NEWUTS)"
    else:
        skipped["lxns"] = why
    # Short loops: namespaces made faster than the kernel frees them make unshare slower.
    return _measure(loops, what, _calls_per_loop(loops[RAW], settings, cap=256),
                    settings.repetitions, skipped)


def measure_kcmp(settings: Settings) -> Measured:
    pid, vm = os.getpid(), linux_clone.KCMP_VM
    loops = {RAW: _c_loop(_bench.kcmp_raw, pid, pid, vm),
             CIMPORT: _c_loop(_bench.kcmp_cimport, pid, pid, vm),
             LC: _loop3(linux_clone.kcmp, pid, pid, vm)}
    what = {RAW: "syscall(SYS_kcmp), nogil loop", CIMPORT: "sys_kcmp (cimport), nogil",
            LC: "linux_clone.kcmp(pid, pid, KCMP_VM)"}
    syscall = _ctypes_call(_libc().syscall, [ctypes.c_long] * 6, "kcmp")
    number = _bench.SYS_KCMP

    def kcmp_ctypes(n: int) -> int:
        start = time.perf_counter_ns()
        for _ in repeat(None, n):
            syscall(number, pid, pid, vm, 0, 0)
        return time.perf_counter_ns() - start

    loops["ctypes"] = kcmp_ctypes
    what["ctypes"] = "libc.syscall(SYS_kcmp, ...) via ctypes"
    skipped = {"os": "os has no kcmp", "lxns": "lxns has no kcmp", "pyroute2": "no kcmp"}
    return _measure(loops, what, _calls_per_loop(loops[RAW], settings),
                    settings.repetitions, skipped)


def measure_nstype(settings: Settings) -> Measured:
    fd = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    request = linux_clone.NS_GET_NSTYPE
    loops = {RAW: _c_loop(_bench.ns_ioctl_raw, fd, request),
             CIMPORT: _c_loop(_bench.ns_ioctl_cimport, fd, request),
             LC: _loop1(linux_clone.ns_get_nstype, fd),
             "fcntl": _loop2(fcntl.ioctl, fd, request),
             "ctypes": _loop2(_ctypes_call(_libc()["ioctl"], [ctypes.c_int, ctypes.c_ulong],
                                           "ioctl"), fd, request)}
    what = {RAW: "syscall(SYS_ioctl, fd, NS_GET_NSTYPE), nogil loop",
            CIMPORT: "lc_ns_ioctl (cimport), nogil", LC: "linux_clone.ns_get_nstype(fd)",
            "fcntl": "fcntl.ioctl(fd, NS_GET_NSTYPE)", "ctypes": "libc.ioctl via ctypes"}
    skipped = {"os": "os has no nsfs ioctls"}
    lxns_os, why = _optional("lxns.os")
    if lxns_os is not None:
        loops["lxns"] = _loop1(lxns_os.ns_get_nstype, fd)
        what["lxns"] = "lxns.os.ns_get_nstype(fd)"
    else:
        skipped["lxns"] = why
    return _measure(loops, what, _calls_per_loop(loops[RAW], settings),
                    settings.repetitions, skipped)


def measure_owner_uid(settings: Settings) -> Measured:
    fd = os.open("/proc/self/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    request = linux_clone.NS_GET_OWNER_UID
    ioctl = _ctypes_call(_libc()["ioctl"], [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p],
                         "ioctl")
    zero = bytes(4)

    def fcntl_owner(ns: int) -> int:
        return int.from_bytes(fcntl.ioctl(ns, request, zero), sys.byteorder)

    def ctypes_owner(ns: int) -> int:
        uid = ctypes.c_uint()
        ioctl(ns, request, ctypes.byref(uid))
        return uid.value

    loops = {RAW: _c_loop(_bench.owner_uid_raw, fd),
             CIMPORT: _c_loop(_bench.owner_uid_cimport, fd),
             LC: _loop1(linux_clone.ns_get_owner_uid, fd),
             "fcntl": _loop1(fcntl_owner, fd), "ctypes": _loop1(ctypes_owner, fd)}
    what = {RAW: "syscall(SYS_ioctl, fd, NS_GET_OWNER_UID, &uid), nogil loop",
            CIMPORT: "lc_ns_get_owner_uid (cimport), nogil",
            LC: "linux_clone.ns_get_owner_uid(fd)",
            "fcntl": "fcntl.ioctl(fd, NS_GET_OWNER_UID, bytes(4)) + int.from_bytes",
            "ctypes": "libc.ioctl(fd, NS_GET_OWNER_UID, byref(c_uint)) via ctypes"}
    skipped = {"os": "os has no nsfs ioctls"}
    lxns_os, why = _optional("lxns.os")
    if lxns_os is not None:
        loops["lxns"] = _loop1(lxns_os.ns_get_owner_uid, fd)
        what["lxns"] = "lxns.os.ns_get_owner_uid(fd)"
    else:
        skipped["lxns"] = why
    return _measure(loops, what, _calls_per_loop(loops[RAW], settings),
                    settings.repetitions, skipped)


def measure_entered(settings: Settings) -> Measured:
    here, there = _own_netns_pair()
    net = int(linux_clone.NEWNET)
    entered, NEWNET = linux_clone.entered, linux_clone.NEWNET

    def with_entered(n: int) -> int:
        start = time.perf_counter_ns()
        for _ in repeat(None, n):
            with entered(there, NEWNET):
                pass
        return time.perf_counter_ns() - start

    loops = {RAW: _c_loop(_bench.setns_raw, here, there, net),
             CIMPORT: _c_loop(_bench.entered_c, there, net, b"/proc/thread-self/ns/net"),
             LC: with_entered}
    what = {RAW: "two raw setns: syscall(SYS_setns) ×2, nogil loop",
            CIMPORT: "entered()'s steps in C: open /proc/thread-self/ns/net, sys_setns ×2, close",
            LC: "with linux_clone.entered(fd, NEWNET): pass"}
    skipped = {}
    netns, why = _optional("pyroute2.netns")
    if netns is not None:
        def push_pop(n: int) -> int:
            start = time.perf_counter_ns()
            for _ in repeat(None, n):
                netns.pushns(there)
                netns.popns()
            return time.perf_counter_ns() - start
        loops["pyroute2"] = push_pop
        what["pyroute2"] = "pyroute2.netns.pushns(fd); popns()"
    else:
        skipped["pyroute2"] = why
    return _measure(loops, what, _calls_per_loop(loops[RAW], settings, cap=20_000),
                    settings.repetitions, skipped)


def _reap(pid: int) -> None:
    _, status = os.waitpid(pid, 0)
    if status != 0:
        raise RuntimeError(f"benchmark child {pid} ended with wait status {status:#x}")


def measure_clone(settings: Settings) -> Measured:
    clone, NEWUTS, unshare = linux_clone.clone, linux_clone.NEWUTS, linux_clone.unshare
    flags = NEWUTS | signal.SIGCHLD

    def child() -> int:
        return 0

    def with_clone(n: int) -> int:
        start = time.perf_counter_ns()
        for _ in repeat(None, n):
            _reap(clone(child, 0, flags))  # type: ignore[arg-type]
        return time.perf_counter_ns() - start

    def with_fork(n: int) -> int:
        start = time.perf_counter_ns()
        for _ in repeat(None, n):
            pid = os.fork()
            if pid == 0:
                status = 1
                try:
                    unshare(NEWUTS)
                    status = 0
                finally:
                    os._exit(status)
            _reap(pid)
        return time.perf_counter_ns() - start

    loops = {RAW: _c_loop(_bench.clone_reap, int(NEWUTS)), LC: with_clone, "os": with_fork}
    what = {RAW: "clone(NEWUTS|SIGCHLD), child _exit(0), waitpid; nogil loop",
            LC: "linux_clone.clone(lambda: 0, flags=NEWUTS|SIGCHLD) + os.waitpid",
            "os": "os.fork() + child linux_clone.unshare(NEWUTS) + os._exit(0) + os.waitpid"}
    return _measure(loops, what, 1, settings.proc_repetitions)


def _true_program() -> str:
    for path in ("/bin/true", "/usr/bin/true"):
        if os.access(path, os.X_OK):
            return path
    raise Skip("no /bin/true")


def measure_spawn(settings: Settings) -> Measured:
    spawn, NEWNET, unshare = linux_clone.spawn, linux_clone.NEWNET, linux_clone.unshare
    true = _true_program()
    argv = [true]

    def with_spawn(n: int) -> int:
        start = time.perf_counter_ns()
        for _ in repeat(None, n):
            _reap(spawn(argv, NEWNET))  # type: ignore[arg-type]
        return time.perf_counter_ns() - start

    def with_fork(n: int) -> int:
        start = time.perf_counter_ns()
        for _ in repeat(None, n):
            pid = os.fork()
            if pid == 0:
                try:
                    unshare(NEWNET)
                    os.execv(true, argv)
                finally:
                    os._exit(127)
            _reap(pid)
        return time.perf_counter_ns() - start

    loops = {RAW: _c_loop(_bench.spawn_reap, int(NEWNET), os.fsencode(true)), LC: with_spawn,
             "os": with_fork}
    what = {RAW: f"clone(VM|VFORK|NEWNET) + execve {true} + waitpid; nogil loop",
            LC: f"linux_clone.spawn([{true!r}], NEWNET) + os.waitpid",
            "os": f"os.fork() + linux_clone.unshare(NEWNET) + os.execv({true!r}) + os.waitpid"}
    skipped = {}
    unshare_program = shutil.which("unshare")
    if unshare_program is not None:
        command = [unshare_program, "--net", true]
        loops["subprocess"] = _loop1(lambda c: subprocess.run(c, check=True), command)
        what["subprocess"] = f"subprocess.run(['unshare', '--net', {true!r}], check=True)"
    else:
        skipped["subprocess"] = "no unshare(1) in PATH"
    return _measure(loops, what, 1, settings.proc_repetitions, skipped)


def _stdlib_loopback() -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        _, flags = IFREQ.unpack(fcntl.ioctl(sock, SIOCGIFFLAGS, IFREQ.pack(b"lo", 0)))
        if not flags & IFF_UP:
            fcntl.ioctl(sock, SIOCSIFFLAGS, IFREQ.pack(b"lo", flags | IFF_UP))


def measure_loopback(settings: Settings) -> Measured:
    # Each timed call gets a network namespace of its own, made before the clock starts;
    # this worker moves on to a new one per call and is thrown away.  The namespaces it
    # leaves stay alive (`kept`, ~100 KiB each) until it exits: tearing one down takes the
    # rtnl lock in a kernel worker, which would land in the next call's timing.
    unshare, NEWNET = linux_clone.unshare, linux_clone.NEWNET
    kept: List[int] = []

    def keep_current() -> None:
        kept.append(os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC))

    def fresh(call: Callable[[], Any]) -> Loop:
        def run(n: int) -> int:
            total = 0
            for _ in repeat(None, n):
                keep_current()
                unshare(NEWNET)
                start = time.perf_counter_ns()
                call()
                total += time.perf_counter_ns() - start
            return total
        return run

    def fresh_c(helper: bool) -> Loop:
        def run(n: int) -> int:
            total = 0
            for _ in repeat(None, n):
                keep_current()
                total += _bench.loopback_fresh(helper, 1)
            return total
        return run

    loops = {RAW: fresh_c(False), CIMPORT: fresh_c(True),
             LC: fresh(linux_clone.configure_loopback), "fcntl": fresh(_stdlib_loopback)}
    what = {RAW: "socket + SIOCGIFFLAGS + SIOCSIFFLAGS + close as bare syscalls, nogil",
            CIMPORT: "lc_configure_loopback (cimport), nogil",
            LC: "linux_clone.configure_loopback()",
            "fcntl": "socket.socket(AF_UNIX) + fcntl.ioctl SIOCGIFFLAGS/SIOCSIFFLAGS"}
    skipped = {}
    ip = shutil.which("ip")
    if ip is not None:
        loops["subprocess"] = fresh(lambda: subprocess.run([ip, "link", "set", "lo", "up"],
                                                           check=True))
        what["subprocess"] = "subprocess.run(['ip', 'link', 'set', 'lo', 'up'])"
    else:
        skipped["subprocess"] = "no ip(8) in PATH"
    pyroute2, why = _optional("pyroute2")
    if pyroute2 is not None:
        def with_iproute() -> None:
            with pyroute2.IPRoute() as ipr:
                ipr.link("set", index=1, state="up")
        loops["pyroute2"] = fresh(with_iproute)
        what["pyroute2"] = "with IPRoute() as ipr: ipr.link('set', index=1, state='up')"
    else:
        skipped["pyroute2"] = why
    return _measure(loops, what, 1, settings.proc_repetitions, skipped)


def measure_getpid(settings: Settings) -> Measured:
    loops = {RAW: _c_loop(_bench.getpid_raw), "os": _loop0(os.getpid),
             "ctypes": _loop0(_libc().getpid)}
    what = {RAW: "syscall(SYS_getpid), nogil loop", "os": "os.getpid()",
            "ctypes": "libc.getpid via ctypes (unchecked)"}
    return _measure(loops, what, _calls_per_loop(loops[RAW], settings),
                    settings.repetitions)


CIMPORT_TARGET = Target(CIMPORT, 1.05, "cimport ≤ 1.05×")

ROWS = [
    Row("setns", "setns round trip between two netns", "round trip", measure_setns,
        targets=[Target(LC, 1.15, "≤ 1.15×"), CIMPORT_TARGET]),
    Row("unshare", "unshare(NEWUTS), in a child", "call", measure_unshare,
        targets=[Target(LC, 1.10, "≤ 1.10×"), CIMPORT_TARGET]),
    Row("kcmp", "kcmp(pid, pid, KCMP_VM)", "call", measure_kcmp, privileged=False,
        targets=[Target(LC, 1.20, "≤ 1.20×"), CIMPORT_TARGET]),
    Row("ns_get_nstype", "ns_get_nstype(fd)", "call", measure_nstype, privileged=False,
        targets=[Target(LC, 1.40, "≤ 1.40×"), CIMPORT_TARGET]),
    Row("ns_get_owner_uid", "ns_get_owner_uid(fd)", "call", measure_owner_uid,
        privileged=False, targets=[CIMPORT_TARGET]),
    Row("entered", "entered(netns) enter + leave", "round trip", measure_entered,
        targets=[Target(LC, 2.5, "≤ 2.5× two raw setns")],
        notes="raw C is two bare setns; the cimport column does what entered() does, in C"),
    Row("clone", "clone(NEWUTS) child + reap", "child", measure_clone,
        targets=[Target(LC, 1.0, "≤ os.fork+unshare", kind="vs", other="os")]),
    Row("spawn", "spawn /bin/true in a new netns + reap", "child", measure_spawn,
        targets=[Target(LC, 10.0, "≥ 10× faster than subprocess unshare(1)", kind="speedup",
                        other="subprocess")]),
    Row("configure_loopback", "configure_loopback() in a fresh netns", "call",
        measure_loopback, targets=[Target(LC, 2000.0, "≤ 2 µs", kind="ns"), CIMPORT_TARGET],
        notes="one timed call per new netns, each between two clock reads"),
    Row("getpid", "reference: getpid()", "call", measure_getpid, privileged=False,
        notes="no namespace: what any call from Python costs over C on this machine"),
]


# ---- workers: every row runs in a forked child, so no namespace of ours ever changes ----

def in_worker(func: Callable[[], Any]) -> Any:
    """Call func() in a forked child and return its result or raise its exception.  The
    child is killed and reaped if this process is interrupted."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        status = 0
        try:
            os.close(rfd)
            gc.disable()
            try:
                payload: Tuple[bool, Any] = (True, func())
            except BaseException as exc:
                payload = (False, (exc, traceback.format_exc()))
            try:
                data = pickle.dumps(payload)
            except Exception as exc:
                data = pickle.dumps((False, (RuntimeError(repr(exc)), traceback.format_exc())))
            with os.fdopen(wfd, "wb") as out:
                out.write(data)
        except BaseException:
            status = 1
        finally:
            os._exit(status)
    os.close(wfd)
    try:
        with os.fdopen(rfd, "rb") as answer:
            data = answer.read()
        os.waitpid(pid, 0)
        pid = 0
    finally:
        if pid:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    if not data:
        raise RuntimeError("the benchmark worker died without an answer")
    ok, value = pickle.loads(data)
    if ok:
        return value
    error, text = value
    if not isinstance(error, Skip):
        print(text, file=sys.stderr, end="")
    raise error


def privilege_problem() -> Optional[str]:
    """None when this process may create the namespaces the benchmark needs, else why not."""
    def probe() -> None:
        linux_clone.unshare(linux_clone.NEWNET | linux_clone.NEWUTS)

    try:
        in_worker(probe)
    except OSError as exc:
        who = "root" if os.geteuid() == 0 else f"uid {os.geteuid()}"
        return f"needs CAP_SYS_ADMIN: unshare(NEWNET|NEWUTS) as {who}: {exc.strerror}"
    return None


# ---- the report ----

def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Hardware", "cpu model", "uarch"):
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return "unknown"


def machine() -> Dict[str, Any]:
    libc, libc_version = platform.libc_ver()
    return {
        "kernel": platform.release(), "arch": platform.machine(), "cpu": _cpu_model(),
        "cpus": os.cpu_count(), "loadavg": [round(x, 2) for x in os.getloadavg()],
        "clocksource": _read("/sys/devices/system/clocksource/clocksource0/current_clocksource"),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "libc": f"{libc} {libc_version}".strip(), "euid": os.geteuid(),
    }


def _versions() -> Dict[str, Optional[str]]:
    out: Dict[str, Optional[str]] = {}
    for name in ("linux_clone", "lxns", "pyroute2"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def summarize(row: Row, measured: Measured) -> Dict[str, Any]:
    raw = measured.samples[RAW]
    results = {}
    for name, values in measured.samples.items():
        results[name] = {
            "what": measured.what[name], "ns": statistics.median(values), "ns_min": min(values),
            "ratio": statistics.median(v / r for v, r in zip(values, raw)),
            "samples": [round(v, 1) for v in values],
        }
    targets = []
    for target in row.targets:
        value = target.measure(measured.samples)
        targets.append({"implementation": target.impl, "target": target.text,
                        "kind": target.kind, "limit": target.limit,
                        "compared_with": target.other_key if target.kind != "ns" else None,
                        "value": value, "met": None if value is None else target.met(value)})
    return {"id": row.key, "operation": row.title, "unit": row.unit, "notes": row.notes,
            "calls_per_loop": measured.n, "repetitions": len(raw), "results": results,
            "skipped": measured.skipped, "targets": targets}


def _time(ns: float) -> str:
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    if ns >= 1e4:
        return f"{ns / 1e3:.1f} µs"
    return f"{ns:,.0f} ns"


def _target_value(target: Dict[str, Any]) -> str:
    value = target["value"]
    if target["kind"] == "ns":
        return _time(value)
    return f"{value:.2f}×"


def table(report: Dict[str, Any]) -> str:
    m = report["machine"]
    versions = report["versions"]
    rows = [r for r in report["rows"] if "results" in r]
    columns = [c for c in COLUMNS if any(c in r["results"] for r in rows)]
    lines = [
        f"### linux_clone {versions['linux_clone']} benchmark"
        f" (`python -m linux_clone.bench{' --quick' if report['settings']['quick'] else ''}`)",
        "",
        f"- machine: Linux {m['kernel']} {m['arch']}, {m['cpu']} ({m['cpus']} CPUs), "
        f"clocksource {m['clocksource']}, load average {m['loadavg'][0]} at start",
        f"- python: {m['python']}, {m['libc']}; comparators: "
        + ", ".join(f"{k} {v}" if v else f"{k} (not installed)"
                    for k, v in versions.items() if k != "linux_clone"),
        f"- method: cells are the median time per {'/'.join(sorted({r['unit'] for r in rows}))}"
        f" over {report['settings']['repetitions']} interleaved repetitions"
        f" ({report['settings']['proc_repetitions']} single calls for the rows that create"
        " processes or namespaces) and, in parentheses, the median of each repetition's"
        " ratio to the raw C loop (syscall(2) in a nogil Cython loop) of the same row, same"
        " process, same run",
        "",
        "| operation | " + " | ".join(columns) + " | target | met |",
        "|---" * (len(columns) + 3) + "|",
    ]
    for r in rows:
        cells = []
        for c in columns:
            res = r["results"].get(c)
            cells.append("—" if res is None else f"{_time(res['ns'])} ({res['ratio']:.2f}×)")
        target = "; ".join(t["target"] for t in r["targets"])
        met = "; ".join("n/a" if t["met"] is None else
                        ("yes " if t["met"] else "**no** ") + _target_value(t)
                        for t in r["targets"])
        lines.append(f"| {r['operation']} | " + " | ".join(cells) + f" | {target or '—'} | "
                     f"{met or '—'} |")
    lines += ["", "Targets are for the linux_clone column unless they name cimport; "
              "× is relative to raw C unless the target names another column."]
    notes = [f"- {r['operation']}: {r['notes']}" for r in rows if r["notes"]]
    for r in rows:
        if r["id"] in ("clone", "spawn", "configure_loopback"):
            notes.append(f"- {r['operation']}: " + "; ".join(
                f"{name} = {res['what']}" for name, res in r["results"].items()
                if name not in (RAW, CIMPORT)))
    if notes:
        lines += ["", "Notes:", *notes]
    skipped = [f"- {r['operation']}: {r['skipped_row']}" for r in report["rows"]
               if "skipped_row" in r]
    if skipped:
        lines += ["", "Skipped rows:", *skipped]
    missing = [f"- {r['operation']}, {name}: {why}" for r in rows
               for name, why in r["skipped"].items() if name in columns]
    if missing:
        lines += ["", "Not measured:", *missing]
    errors = [f"- {r['operation']}: {r['error']}" for r in report["rows"] if "error" in r]
    if errors:
        lines += ["", "Errors:", *errors]
    return "\n".join(lines)


def plot(report: Dict[str, Any], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["rows"] if "results" in r]
    columns = [c for c in COLUMNS if c != RAW and any(c in r["results"] for r in rows)]
    fig, ax = plt.subplots(figsize=(10, 1.5 + 0.1 * len(rows) * len(columns)))
    height = 0.8 / max(1, len(columns))
    for i, column in enumerate(columns):
        ys = [k + i * height for k, r in enumerate(rows) if column in r["results"]]
        xs = [r["results"][column]["ratio"] for r in rows if column in r["results"]]
        ax.barh(ys, xs, height=height, label=column)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_yticks([k + 0.4 - height / 2 for k in range(len(rows))])
    ax.set_yticklabels([r["operation"] for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel("time per call, × the raw C loop (log scale; lower is better)")
    m = report["machine"]
    ax.set_title(f"linux_clone.bench — Linux {m['kernel']}, {m['cpu']}, {m['python']}")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---- main ----

def run(settings: Settings, quick: bool) -> Tuple[Dict[str, Any], bool]:
    """Measure every row; the report and whether every row that could run did."""
    def progress(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    progress("linux_clone.bench: measuring the machine")
    report: Dict[str, Any] = {
        "benchmark": "linux_clone.bench", "versions": _versions(), "machine": machine(),
        "settings": {"quick": quick, "repetitions": settings.repetitions,
                     "proc_repetitions": settings.proc_repetitions, "loop_ns": settings.loop_ns},
        "rows": [],
    }
    problem = privilege_problem()
    ok = True
    for number, row in enumerate(ROWS, 1):
        label = f"[{number}/{len(ROWS)}] {row.title}"
        entry: Dict[str, Any] = {"id": row.key, "operation": row.title, "unit": row.unit}
        if row.privileged and problem is not None:
            entry["skipped_row"] = problem
            progress(f"{label}: skipped, {problem}")
        else:
            start = time.monotonic()
            progress(f"{label} ...")
            try:
                measured = in_worker(partial(row.measure, settings))
            except Skip as exc:
                entry["skipped_row"] = str(exc)
                progress(f"{label}: skipped, {exc}")
            except Exception as exc:
                entry["error"] = repr(exc)
                ok = False
                progress(f"{label}: failed, {exc!r}")
            else:
                entry = summarize(row, measured)
                progress(f"{label}: {time.monotonic() - start:.1f} s")
        report["rows"].append(entry)
    return report, ok


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m linux_clone.bench",
        description="Time linux_clone's namespace calls against raw C loops of the same "
                    "syscalls and against os, ctypes, fcntl, subprocess, lxns and pyroute2 "
                    "where available, and print a table to paste into an issue.  Progress "
                    "goes to stderr.  Needs root for the rows that create namespaces.")
    parser.add_argument("--quick", action="store_true",
                        help="a short run (a few seconds), as CI does")
    parser.add_argument("--json", action="store_true",
                        help="print the results as JSON instead of the table")
    parser.add_argument("--plot", metavar="FILE.png",
                        help="also draw a chart of the ratios (needs matplotlib)")
    args = parser.parse_args(argv)
    if args.plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            parser.error("--plot needs matplotlib: pip install 'linux_clone[plot]'")
    report, ok = run(QUICK if args.quick else FULL, args.quick)
    if args.json:
        print(json.dumps(report, indent=1, ensure_ascii=False))
    else:
        print(table(report))
    if args.plot is not None:
        plot(report, args.plot)
        print(f"linux_clone.bench: chart written to {args.plot}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

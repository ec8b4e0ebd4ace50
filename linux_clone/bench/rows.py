"""The rows of the benchmark: for each operation, what to time as raw C, through the cimport
API, through linux_clone, and through the other ways Python has to make the call (os, ctypes,
fcntl, subprocess, lxns, pyroute2).  Each row's function runs in its own worker process."""

from __future__ import annotations

import ctypes
import fcntl
import os
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import linux_clone
from linux_clone import _bench

from .harness import (
    CIMPORT, LC, PROC_C, RAW, Column, Impl, Measured, Settings, Skip, c, forked, measure, optional,
    os_function, py, reap,
)

Columns = Dict[str, Column]

# <linux/sockios.h>, <net/if.h>: for the stdlib way to bring up lo.
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
IFREQ = struct.Struct("16sH22x")  # struct ifreq: ifr_name, ifr_flags, rest of the union
_os: Any = os  # os.CLONE_* exist from Python 3.12 on


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
    columns: Callable[[], Columns]  # run in the worker: set up, then say what to time
    privileged: bool = True
    targets: List[Target] = field(default_factory=list)
    notes: str = ""
    single: bool = False  # a process or a namespace per call: time single calls
    cap: int = 200_000    # at most this many calls per loop

    def measure(self, settings: Settings) -> Measured:
        return measure(self.columns(), settings, single=self.single, cap=self.cap)


# ---- the comparators' ways in ----

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


def _program(name: str, section: int) -> str:
    path = shutil.which(name)
    if path is None:
        raise Skip(f"no {name}({section}) in PATH")
    return path


def _own_netns_pair() -> Tuple[int, int]:
    """fds of this worker's network namespace and of a new one it made; the worker is back
    in the first.  The new one lives as long as its fd: at the latest until the worker exits."""
    here = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    linux_clone.unshare(linux_clone.NEWNET)
    there = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    linux_clone.setns(here, linux_clone.NEWNET)
    return here, there


# ---- the rows ----

def setns_columns() -> Columns:
    here, there = _own_netns_pair()
    net = int(linux_clone.NEWNET)
    trip = "setns(there, nstype); setns(here, nstype)"
    fds: Dict[str, Any] = {"here": here, "there": there}
    return {
        RAW: c("syscall(SYS_setns) ×2, nogil loop", _bench.setns_raw, here, there, net),
        CIMPORT: c("sys_setns ×2 (cimport), nogil", _bench.setns_cimport, here, there, net),
        LC: py("linux_clone.setns(fd, NEWNET) ×2", trip, setns=linux_clone.setns,
               nstype=linux_clone.NEWNET, **fds),
        "os": lambda: py("os.setns(fd, CLONE_NEWNET) ×2", trip, setns=os_function("setns"),
                         nstype=_os.CLONE_NEWNET, **fds),
        "ctypes": py("libc.setns via ctypes ×2", trip, nstype=net, **fds,
                     setns=_ctypes_call(_libc().setns, [ctypes.c_int] * 2, "setns")),
        "lxns": lambda: py("lxns.os.setns(fd, CLONE_NEWNET) ×2", trip, nstype=net, **fds,
                           setns=optional("lxns.os").setns),
        "pyroute2": lambda: py("pyroute2.netns.setns(fd) ×2",
                               "netns.setns(there); netns.setns(here)",
                               netns=optional("pyroute2.netns"), **fds),
    }


def unshare_columns() -> Columns:
    # Every call makes a new UTS namespace and drops the last: this worker is thrown away.
    uts = int(linux_clone.NEWUTS)
    return {
        RAW: c("syscall(SYS_unshare), nogil loop", _bench.unshare_raw, uts),
        CIMPORT: c("sys_unshare (cimport), nogil", _bench.unshare_cimport, uts),
        LC: py("linux_clone.unshare(NEWUTS)", "unshare(flags)", unshare=linux_clone.unshare,
               flags=linux_clone.NEWUTS),
        "os": lambda: py("os.unshare(CLONE_NEWUTS)", "unshare(flags)",
                         unshare=os_function("unshare"), flags=_os.CLONE_NEWUTS),
        "ctypes": py("libc.unshare via ctypes", "unshare(flags)", flags=uts,
                     unshare=_ctypes_call(_libc().unshare, [ctypes.c_int], "unshare")),
        "lxns": lambda: py("lxns.os.unshare(CLONE_NEWUTS)", "unshare(flags)", flags=uts,
                           unshare=optional("lxns.os").unshare),
    }


def kcmp_columns() -> Columns:
    pid, vm = os.getpid(), linux_clone.KCMP_VM
    return {
        RAW: c("syscall(SYS_kcmp), nogil loop", _bench.kcmp_raw, pid, pid, vm),
        CIMPORT: c("sys_kcmp (cimport), nogil", _bench.kcmp_cimport, pid, pid, vm),
        LC: py("linux_clone.kcmp(pid, pid, KCMP_VM)", "kcmp(pid, pid, vm)",
               kcmp=linux_clone.kcmp, pid=pid, vm=vm),
        "ctypes": py("libc.syscall(SYS_kcmp, ...) via ctypes",
                     "syscall(number, pid, pid, vm, 0, 0)", number=_bench.SYS_KCMP, pid=pid,
                     vm=vm, syscall=_ctypes_call(_libc().syscall, [ctypes.c_long] * 6, "kcmp")),
        "os": Skip("os has no kcmp"),
        "lxns": Skip("lxns has no kcmp"),
        "pyroute2": Skip("no kcmp"),
    }


def nstype_columns() -> Columns:
    fd = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    request = linux_clone.NS_GET_NSTYPE
    ioctl = _ctypes_call(_libc()["ioctl"], [ctypes.c_int, ctypes.c_ulong], "ioctl")
    return {
        RAW: c("syscall(SYS_ioctl, fd, NS_GET_NSTYPE), nogil loop", _bench.ns_ioctl_raw, fd,
               request),
        CIMPORT: c("lc_ns_ioctl (cimport), nogil", _bench.ns_ioctl_cimport, fd, request),
        LC: py("linux_clone.ns_get_nstype(fd)", "nstype(fd)",
               nstype=linux_clone.ns_get_nstype, fd=fd),
        "fcntl": py("fcntl.ioctl(fd, NS_GET_NSTYPE)", "ioctl(fd, request)", ioctl=fcntl.ioctl,
                    fd=fd, request=request),
        "ctypes": py("libc.ioctl via ctypes", "ioctl(fd, request)", ioctl=ioctl, fd=fd,
                     request=request),
        "os": Skip("os has no nsfs ioctls"),
        "lxns": lambda: py("lxns.os.ns_get_nstype(fd)", "nstype(fd)", fd=fd,
                           nstype=optional("lxns.os").ns_get_nstype),
    }


def owner_uid_columns() -> Columns:
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

    return {
        RAW: c("syscall(SYS_ioctl, fd, NS_GET_OWNER_UID, &uid), nogil loop",
               _bench.owner_uid_raw, fd),
        CIMPORT: c("lc_ns_get_owner_uid (cimport), nogil", _bench.owner_uid_cimport, fd),
        LC: py("linux_clone.ns_get_owner_uid(fd)", "owner(fd)",
               owner=linux_clone.ns_get_owner_uid, fd=fd),
        "fcntl": py("fcntl.ioctl(fd, NS_GET_OWNER_UID, bytes(4)) + int.from_bytes", "owner(fd)",
                    owner=fcntl_owner, fd=fd),
        "ctypes": py("libc.ioctl(fd, NS_GET_OWNER_UID, byref(c_uint)) via ctypes", "owner(fd)",
                     owner=ctypes_owner, fd=fd),
        "os": Skip("os has no nsfs ioctls"),
        "lxns": lambda: py("lxns.os.ns_get_owner_uid(fd)", "owner(fd)", fd=fd,
                           owner=optional("lxns.os").ns_get_owner_uid),
    }


def entered_columns() -> Columns:
    here, there = _own_netns_pair()
    net = int(linux_clone.NEWNET)
    return {
        RAW: c("two raw setns: syscall(SYS_setns) ×2, nogil loop", _bench.setns_raw, here, there,
               net),
        CIMPORT: c("entered()'s steps in C: its C saves the thread's netns (pidfd ioctl on "
                   "Linux 6.11+), sys_setns ×2 (fstat check between), close",
                   _bench.entered_steps, there, net),
        PROC_C: c("open /proc/thread-self/ns/net, sys_setns ×2, close, in C: the way back "
                  "without the kept pidfd", _bench.entered_c, there, net,
                   b"/proc/thread-self/ns/net"),
        LC: py("with linux_clone.entered(fd, NEWNET): pass",
               "with entered(there, NEWNET): pass", entered=linux_clone.entered, there=there,
               NEWNET=linux_clone.NEWNET),
        "pyroute2": lambda: py("pyroute2.netns.pushns(fd); popns()",
                               "netns.pushns(there); netns.popns()",
                               netns=optional("pyroute2.netns"), there=there),
    }


def clone_columns() -> Columns:
    def unshare_uts() -> None:
        linux_clone.unshare(linux_clone.NEWUTS)

    return {
        RAW: c("clone(NEWUTS|SIGCHLD), child _exit(0), waitpid; nogil loop", _bench.clone_reap,
               int(linux_clone.NEWUTS)),
        LC: py("linux_clone.clone(lambda: 0, flags=NEWUTS|SIGCHLD) + os.waitpid",
               "reap(clone(child, 0, flags))", reap=reap, clone=linux_clone.clone,
               child=lambda: 0, flags=linux_clone.NEWUTS | signal.SIGCHLD),
        "os": py("os.fork() + child linux_clone.unshare(NEWUTS) + os._exit(0) + os.waitpid",
                 "reap(forked(unshare_uts))", reap=reap, forked=forked, unshare_uts=unshare_uts),
    }


def _true_program() -> str:
    for path in ("/bin/true", "/usr/bin/true"):
        if os.access(path, os.X_OK):
            return path
    raise Skip("no /bin/true")


def spawn_columns() -> Columns:
    true = _true_program()
    argv = [true]

    def unshare_exec() -> None:
        linux_clone.unshare(linux_clone.NEWNET)
        os.execv(true, argv)

    return {
        RAW: c(f"clone(VM|VFORK|NEWNET) + execve {true} + waitpid; nogil loop",
               _bench.spawn_reap, int(linux_clone.NEWNET), os.fsencode(true)),
        LC: py(f"linux_clone.spawn([{true!r}], NEWNET) + os.waitpid",
               "reap(spawn(argv, NEWNET))", reap=reap, spawn=linux_clone.spawn, argv=argv,
               NEWNET=linux_clone.NEWNET),
        "os": py(f"os.fork() + linux_clone.unshare(NEWNET) + os.execv({true!r}) + os.waitpid",
                 "reap(forked(unshare_exec))", reap=reap, forked=forked,
                 unshare_exec=unshare_exec),
        "subprocess": lambda: py(
            f"subprocess.run(['unshare', '--net', {true!r}], check=True)",
            "run(command, check=True)", run=subprocess.run,
            command=[_program("unshare", 1), "--net", true]),
    }


def _stdlib_loopback() -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        _, flags = IFREQ.unpack(fcntl.ioctl(sock, SIOCGIFFLAGS, IFREQ.pack(b"lo", 0)))
        if not flags & IFF_UP:
            fcntl.ioctl(sock, SIOCSIFFLAGS, IFREQ.pack(b"lo", flags | IFF_UP))


def loopback_columns() -> Columns:
    # Each timed call gets a network namespace of its own, made before the clock starts;
    # this worker moves on to a new one per call and is thrown away.  The namespaces it
    # leaves stay alive (`kept`, ~100 KiB each) until it exits: tearing one down takes the
    # rtnl lock in a kernel worker, which would land in the next call's timing.
    kept: List[int] = []

    def keep_current() -> None:
        kept.append(os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC))

    def fresh_netns() -> None:
        keep_current()
        linux_clone.unshare(linux_clone.NEWNET)

    def fresh(what: str, statement: str, **names: Any) -> Impl:
        return py(what, statement, setup=fresh_netns, **names)

    return {
        # _bench.loopback_fresh makes the new netns itself, off its clock.
        RAW: c("socket + SIOCGIFFLAGS + SIOCSIFFLAGS + close as bare syscalls, nogil",
               _bench.loopback_fresh, False, setup=keep_current),
        CIMPORT: c("lc_configure_loopback (cimport), nogil", _bench.loopback_fresh, True,
                   setup=keep_current),
        LC: fresh("linux_clone.configure_loopback()", "configure_loopback()",
                  configure_loopback=linux_clone.configure_loopback),
        "fcntl": fresh("socket.socket(AF_UNIX) + fcntl.ioctl SIOCGIFFLAGS/SIOCSIFFLAGS",
                       "stdlib_loopback()", stdlib_loopback=_stdlib_loopback),
        "subprocess": lambda: fresh("subprocess.run(['ip', 'link', 'set', 'lo', 'up'])",
                                    "run(command, check=True)", run=subprocess.run,
                                    command=[_program("ip", 8), "link", "set", "lo", "up"]),
        "pyroute2": lambda: fresh(
            "with IPRoute() as ipr: ipr.link('set', index=1, state='up')",
            "with IPRoute() as ipr: ipr.link('set', index=1, state='up')",
            IPRoute=optional("pyroute2").IPRoute),
    }


def getpid_columns() -> Columns:
    return {
        RAW: c("syscall(SYS_getpid), nogil loop", _bench.getpid_raw),
        "os": py("os.getpid()", "getpid()", getpid=os.getpid),
        "ctypes": py("libc.getpid via ctypes (unchecked)", "getpid()", getpid=_libc().getpid),
    }


CIMPORT_TARGET = Target(CIMPORT, 1.05, "cimport ≤ 1.05×")

ROWS = [
    Row("setns", "setns round trip between two netns", "round trip", setns_columns,
        targets=[Target(LC, 1.15, "≤ 1.15×"), CIMPORT_TARGET]),
    # Short loops: namespaces made faster than the kernel frees them make unshare slower.
    Row("unshare", "unshare(NEWUTS), in a child", "call", unshare_columns, cap=256,
        targets=[Target(LC, 1.10, "≤ 1.10×"), CIMPORT_TARGET]),
    Row("kcmp", "kcmp(pid, pid, KCMP_VM)", "call", kcmp_columns, privileged=False,
        targets=[Target(LC, 1.20, "≤ 1.20×"), CIMPORT_TARGET]),
    Row("ns_get_nstype", "ns_get_nstype(fd)", "call", nstype_columns, privileged=False,
        targets=[Target(LC, 1.40, "≤ 1.40×"), CIMPORT_TARGET]),
    Row("ns_get_owner_uid", "ns_get_owner_uid(fd)", "call", owner_uid_columns,
        privileged=False, targets=[CIMPORT_TARGET]),
    Row("entered", "entered(netns) enter + leave", "round trip", entered_columns, cap=20_000,
        targets=[Target(LC, 2.5, "≤ 2.5× two raw setns")],
        notes="raw C is two bare setns; the cimport column does what entered() does, in C"),
    Row("clone", "clone(NEWUTS) child + reap", "child", clone_columns, single=True,
        targets=[Target(LC, 1.0, "≤ os.fork+unshare", kind="vs", other="os")]),
    Row("spawn", "spawn /bin/true in a new netns + reap", "child", spawn_columns, single=True,
        targets=[Target(LC, 10.0, "≥ 10× faster than subprocess unshare(1)", kind="speedup",
                        other="subprocess")]),
    Row("configure_loopback", "configure_loopback() in a fresh netns", "call",
        loopback_columns, single=True,
        targets=[Target(LC, 2000.0, "≤ 2 µs", kind="ns"), CIMPORT_TARGET],
        notes="one timed call per new netns, each between two clock reads"),
    Row("getpid", "reference: getpid()", "call", getpid_columns, privileged=False,
        notes="no namespace: what any call from Python costs over C on this machine"),
]

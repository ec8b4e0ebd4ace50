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
import threading
import time
from dataclasses import dataclass, field
from functools import partial
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
    kind: str = "ratio"   # ratio: × raw C; vs: × `other`; speedup: other ÷ impl; ns: absolute;
    other: str = ""       # over: impl − other, in ns
    not_here: str = ""    # why the goal does not apply to this run (measured, not judged)

    def measure(self, samples: Dict[str, List[float]]) -> Optional[float]:
        mine = samples.get(self.impl)
        if mine is None or (self.kind != "ns" and self.other_key not in samples):
            return None
        if self.kind == "ns":
            return statistics.median(mine)
        theirs = samples[self.other_key]
        if self.kind == "speedup":
            return statistics.median(b / a for a, b in zip(mine, theirs))
        if self.kind == "over":
            return statistics.median(a - b for a, b in zip(mine, theirs))
        return statistics.median(a / b for a, b in zip(mine, theirs))

    @property
    def other_key(self) -> str:
        return self.other or RAW

    def met(self, value: float) -> Optional[bool]:
        if self.not_here:
            return None
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


def fork_columns() -> Columns:
    return {
        RAW: c("clone(SIGCHLD), child _exit(0), waitpid; nogil loop", _bench.clone_reap, 0),
        LC: py("linux_clone.clone(lambda: 0) + os.waitpid", "reap(clone(child))", reap=reap,
               clone=linux_clone.clone, child=lambda: 0),
        "os": py("os.fork() + os._exit(0) + os.waitpid", "reap(forked(nothing))", reap=reap,
                 forked=forked, nothing=lambda: None),
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


def _echo_program() -> str:
    for path in ("/bin/echo", "/usr/bin/echo"):
        if os.access(path, os.X_OK):
            return path
    raise Skip("no /bin/echo")


def spawn_pipe_columns() -> Columns:
    echo = _echo_program()
    argv = [echo, "spawn"]
    return {
        RAW: c(f"pipe2 ×2 + clone(VM|VFORK|NEWNET), child dup2 to 1 and 2 + execve {echo} "
               "spawn; read both to EOF + waitpid; nogil loop", _bench.spawn_pipe_reap,
               int(linux_clone.NEWNET), os.fsencode(echo), b"spawn"),
        LC: py(f"linux_clone.run([{echo!r}, 'spawn'], NEWNET, capture_output=True, "
               "check=True)", "run(argv, NEWNET, capture_output=True, check=True)",
               run=linux_clone.run, argv=argv, NEWNET=linux_clone.NEWNET),
        "subprocess": lambda: py(
            f"subprocess.run(['unshare', '--net', {echo!r}, 'spawn'], capture_output=True, "
            "check=True)", "run(command, capture_output=True, check=True)",
            run=subprocess.run, command=[_program("unshare", 1), "--net", *argv]),
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


SETUP_FLAGS = linux_clone.NEWNET | linux_clone.NEWUTS | linux_clone.NEWIPC
SETUP_HOSTNAME = "bench"


def _setup_child() -> int:
    linux_clone.configure_loopback()
    socket.sethostname(SETUP_HOSTNAME)
    return 0


def setup_columns() -> Columns:
    """A child in new NET+UTS+IPC namespaces with lo up and a hostname, as users write it."""
    true = _true_program()
    ip = shutil.which("ip") or "ip"
    script = f"hostname {SETUP_HOSTNAME} && ip link set lo up"

    # os.unshare needs Python 3.12; before, the child unshares as the clone row's does.
    unshare = getattr(os, "unshare", linux_clone.unshare)
    module = "os" if hasattr(os, "unshare") else "linux_clone"

    def os_child() -> None:
        unshare(int(SETUP_FLAGS))
        socket.sethostname(SETUP_HOSTNAME)
        subprocess.run([ip, "link", "set", "lo", "up"], check=True)

    def os_column() -> Impl:
        return py(f"os.fork() + {module}.unshare(NEWNET|NEWUTS|NEWIPC) + "
                  "socket.sethostname + subprocess.run(['ip', 'link', 'set', 'lo', 'up']) + "
                  "os.waitpid", "reap(forked(child))", reap=reap, forked=forked, child=os_child)

    return {
        RAW: c("clone(NEWNET|NEWUTS|NEWIPC|SIGCHLD), child sethostname + "
               "lc_configure_loopback + _exit, waitpid; nogil loop", _bench.setup_reap,
               int(SETUP_FLAGS), SETUP_HOSTNAME.encode()),
        LC: py("linux_clone.clone(func, flags=NEWNET|NEWUTS|NEWIPC|SIGCHLD), func: "
               "configure_loopback() + socket.sethostname; os.waitpid",
               "reap(clone(child, 0, flags))", reap=reap, clone=linux_clone.clone,
               child=_setup_child, flags=SETUP_FLAGS | signal.SIGCHLD),
        "spawn": py(f"linux_clone.spawn([{true!r}], NEWNET|NEWUTS|NEWIPC, hostname=..., "
                    "loopback=True) + os.waitpid",
                    "reap(spawn(argv, flags, hostname=name, loopback=True))", reap=reap,
                    spawn=linux_clone.spawn, argv=[true], flags=SETUP_FLAGS,
                    name=SETUP_HOSTNAME),
        "os": os_column if shutil.which("ip") else Skip("no ip(8) in PATH"),
        "subprocess": lambda: py(
            f"subprocess.run(['unshare', '--net', '--uts', '--ipc', 'sh', '-c', {script!r}])",
            "run(command, check=True)", run=subprocess.run,
            command=[_program("unshare", 1), "--net", "--uts", "--ipc", _program("sh", 1),
                     "-c", script]),
    }


def free_threaded() -> bool:
    """A build without the GIL, running without it (3.13t; PYTHON_GIL=0 or not re-enabled)."""
    is_gil_enabled = getattr(sys, "_is_gil_enabled", None)
    return is_gil_enabled is not None and not is_gil_enabled()


def _in_threads(count: int, body: Callable[[int], object]) -> Callable[[int], float]:
    """A loop: body(n) in `count` threads at once, released together: wall ns per call of all
    of them together (so 2 threads that do not wait on each other halve it).  The threads are
    started once and wait between loops, as a user's long-lived threads do: starting a thread
    and its first entered() (which makes the thread's pidfd) are not in the time."""
    go, done = threading.Barrier(count + 1), threading.Barrier(count + 1)
    calls = [0]

    def run() -> None:
        while True:  # daemon threads: they end with the worker
            go.wait()
            body(calls[0])
            done.wait()

    for _ in range(count):
        threading.Thread(target=run, daemon=True).start()

    def loop(n: int) -> float:
        calls[0] = n
        start = time.perf_counter_ns()
        go.wait()
        done.wait()
        return (time.perf_counter_ns() - start) / count
    return loop


def threads_columns() -> Columns:
    here, there = _own_netns_pair()
    net = int(linux_clone.NEWNET)
    entered, NEWNET = linux_clone.entered, linux_clone.NEWNET

    def body(n: int) -> None:
        for _ in range(n):
            with entered(there, NEWNET):
                pass

    return {
        RAW: c("two raw setns: syscall(SYS_setns) ×2, nogil loop, 1 thread", _bench.setns_raw,
               here, there, net),
        LC: Impl("with linux_clone.entered(fd, NEWNET): pass, 1 thread", _in_threads(1, body)),
        "2 threads": Impl("the same in 2 threads at once: time per call of both together",
                          _in_threads(2, body)),
        # What this machine gives 2 threads at all, in the same run: the floor of the goal.
        "2 threads C": Impl("raw C's loop in 2 threads at once: time per round trip of both",
                            _in_threads(2, partial(_bench.setns_raw, here, there, net))),
    }


def startup_env() -> Dict[str, str]:
    """The environment of the start-up runs: this one, less PYTHONDONTWRITEBYTECODE, so they
    read (and the warm-up run writes, where the install left none) the bytecode cache, as a
    user's python does; without it every run would compile the package's .py files again."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def _python_command(*args: str) -> Callable[[int], float]:
    """A loop: n runs of `python [-P] args` (stdout to /dev/null), each started with
    posix_spawn and reaped."""
    command = [sys.executable, *(["-P"] if sys.version_info >= (3, 11) else []), *args]
    env = startup_env()

    def loop(n: int) -> float:
        start = time.perf_counter_ns()
        for _ in range(n):
            pid = os.posix_spawn(command[0], command, env, file_actions=[
                (os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_WRONLY, 0)])
            reap(pid)
        return time.perf_counter_ns() - start
    return loop


def startup_columns() -> Columns:
    os.chdir("/")  # this worker is thrown away; posix_spawn has no cwd before Python 3.13
    _true_program()  # the CLI finds `true` in PATH, as a user's shell does
    return {
        RAW: Impl("python -P -c pass (the interpreter alone)", _python_command("-c", "pass")),
        "import": Impl("python -P -c 'import linux_clone'",
                       _python_command("-c", "import linux_clone")),
        LC: Impl("python -P -m linux_clone --net -- true",
                 _python_command("-m", "linux_clone", "--net", "--", "true")),
    }


def getpid_columns() -> Columns:
    return {
        RAW: c("syscall(SYS_getpid), nogil loop", _bench.getpid_raw),
        "os": py("os.getpid()", "getpid()", getpid=os.getpid),
        "ctypes": py("libc.getpid via ctypes (unchecked)", "getpid()", getpid=_libc().getpid),
    }


def pidfd_ioctls() -> bool:
    """Whether this kernel has the pidfd namespace ioctls entered() goes back through (6.11,
    on a thread's pidfd: 6.9)."""
    try:
        pidfd = os.pidfd_open(threading.get_native_id(), os.O_EXCL)  # PIDFD_THREAD
    except (AttributeError, OSError):
        return False
    try:
        os.close(fcntl.ioctl(pidfd, 0xFF04))  # PIDFD_GET_NET_NAMESPACE
        return True
    except OSError:
        return False
    finally:
        os.close(pidfd)


# The goals of issue "Speed" (round 2), each in the target column of its row; the other rows
# are measured for comparison.
ENTERED_TARGET = (
    Target(LC, 2.0, "≤ 2.0× two raw setns (kernel has the pidfd namespace ioctls)")
    if pidfd_ioctls() else
    Target(LC, 4.5, "≤ 4.5× two raw setns (kernel without the pidfd namespace ioctls)"))
THREADS_TARGET = Target(
    "2 threads", 1.8, "2 threads ≥ 1.8× the throughput of 1 (free-threaded build)",
    kind="speedup", other=LC,
    not_here="" if free_threaded() else "the GIL runs one thread at a time")

ROWS = [
    Row("setns", "setns round trip between two netns", "round trip", setns_columns,
        targets=[Target(LC, 1.12, "≤ 1.12×")]),
    # Short loops: namespaces made faster than the kernel frees them make unshare slower.
    Row("unshare", "unshare(NEWUTS), in a child", "call", unshare_columns, cap=256),
    Row("kcmp", "kcmp(pid, pid, KCMP_VM)", "call", kcmp_columns, privileged=False,
        targets=[Target(LC, 1.15, "≤ 1.15×")]),
    Row("ns_get_nstype", "ns_get_nstype(fd)", "call", nstype_columns, privileged=False,
        targets=[Target(LC, 1.25, "≤ 1.25×")]),
    Row("ns_get_owner_uid", "ns_get_owner_uid(fd)", "call", owner_uid_columns,
        privileged=False),
    Row("entered", "entered(netns) enter + leave", "round trip", entered_columns, cap=20_000,
        targets=[ENTERED_TARGET],
        notes="raw C is two bare setns; the cimport column runs entered()'s own C steps (the "
              "kept pidfd's ioctl, the fstat checks), /proc in C the way older kernels take"),
    Row("entered_threads", "entered(netns) loops in 1 and 2 threads", "round trip",
        threads_columns, cap=20_000,
        targets=[THREADS_TARGET],
        notes="throughput ratio = linux_clone ÷ 2 threads; what the machine gives 2 threads "
              "of the same syscalls in C, no Python: 1 ÷ 2 threads C's ratio" + (
            "" if free_threaded() else "; not a free-threaded build (the GIL runs one thread "
            "at a time): measured, not judged")),
    Row("fork", "clone() child + reap, no namespaces", "child", fork_columns, single=True,
        targets=[Target(LC, 1.02, "≤ 1.02× os.fork", kind="vs", other="os")]),
    Row("clone", "clone(NEWUTS) child + reap", "child", clone_columns, single=True,
        targets=[Target(LC, 1.0, "≤ 1.0× os.fork+unshare", kind="vs", other="os")]),
    Row("spawn", "spawn /bin/true in a new netns + reap", "child", spawn_columns, single=True,
        targets=[Target(LC, 1.05, "≤ 1.05×")]),
    Row("spawn_pipe", "spawn echo in a new netns, stdout + stderr to pipes, read + reap",
        "child", spawn_pipe_columns, single=True,
        notes="linux_clone.run(capture_output=True): Popen's pipes and communicate() over "
              "spawn"),
    Row("setup", "child in new NET+UTS+IPC, lo up, hostname set + reap", "child",
        setup_columns, single=True,
        notes="children per second = 10⁹ ÷ the time per child"),
    Row("configure_loopback", "configure_loopback() in a fresh netns", "call",
        loopback_columns, single=True,
        notes="one timed call per new netns, each between two clock reads"),
    Row("startup", "start-up: python -P -c ...", "run", startup_columns, privileged=True,
        single=True,
        targets=[Target(LC, 1.3, "CLI ≤ 1.3× python -P -c pass"),
                 Target("import", 5e6, "import ≤ 5 ms of our own", kind="over")],
        notes="raw C is `python -P -c pass` here: the interpreter's own start-up; every run "
              "with the bytecode cache and PYTHONDONTWRITEBYTECODE unset, as users run"),
    Row("getpid", "reference: getpid()", "call", getpid_columns, privileged=False,
        notes="no namespace: what any call from Python costs over C on this machine"),
]

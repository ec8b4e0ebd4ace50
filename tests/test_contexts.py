"""The context matrix: every public call of linux_clone in each situation a user's program can
be in -- other threads (Python ones, a GIL-free C thread, one blocked in a C call, one that
has exited, one that forks), inside entered() of a net/UTS/pid namespace, after
unshare(NEWPID), SIGCHLD ignored or reaped by a handler, SIGPIPE default, a storm of
signals, RLIMIT_NOFILE with 0-3 free fds, at-fork hooks that call the API, and hostile
argument objects (whose __index__, fileno(), __fspath__ or items() raise, re-enter the API
or answer differently each time).

All the calls of one context run one after another in one process, a Sandbox (conftest.py)
with namespaces of its own, which sets the context up once and reports each call's outcome
through a pipe; the module caches the outcomes per context, and each (context, call) pair
is a test of its own.  A cell passes when the call gave the README's result (clone returns
the child's pid in the caller's namespace, the exit status arrives, a pidfd refers to the
child, entered() comes back, ...) or, where the context makes it legitimate, a clean
exception (OSError with an errno, TypeError, ValueError, OverflowError, or the hostile
argument's own error), and left no fd open and no child (zombie or running) behind.  A call
that hangs (CALL_TIMEOUT) or kills its process fails its cell, and the calls after it run in
a new sandbox.
"""

from __future__ import annotations

import collections.abc
import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import os
import resource
import select
import signal
import socket
import struct
import threading
import time
import traceback
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest

import linux_clone
from conftest import Sandbox, SandboxDied, SandboxHang, receive_message, send_message

# Seconds. Every call here takes milliseconds, but on a loaded machine the kernel's teardown
# of an exiting child's pid and mount namespaces (the pivot_root cell's child, after
# unshare(NEWPID)) was seen to take over 4 s in D state, with two qemu guests on 2 cores.
CALL_TIMEOUT = 20.0
SETUP_TIMEOUT = 30.0

NEWNET, NEWUTS, NEWPID, NEWUSER = (int(linux_clone.NEWNET), int(linux_clone.NEWUTS),
                                   int(linux_clone.NEWPID), int(linux_clone.NEWUSER))
NEWIPC, PIDFD, VFORK = int(linux_clone.NEWIPC), int(linux_clone.PIDFD), int(linux_clone.VFORK)
EXIT_CODE = 7  # what every child here exits with
STACK = linux_clone._core.MIN_STACK_SIZE  # the smallest stack clone() accepts
SIOCGIFFLAGS, IFF_UP = 0x8913, 0x1
PIDFD_GET_PID_FOR_CHILDREN_NAMESPACE = 0xFF06  # _IO(PIDFS_IOCTL_MAGIC, 6), <linux/pidfd.h>
PR_SET_PDEATHSIG = 1

_libc = ctypes.CDLL(None, use_errno=True)


def _timer_lib() -> ctypes.CDLL:
    """The library with timer_create: libc from glibc 2.34, librt before (bullseye's 2.31)."""
    if hasattr(_libc, "timer_create"):
        return _libc
    return ctypes.CDLL(ctypes.util.find_library("rt"), use_errno=True)


def _check(rc: int, what: str) -> int:
    if rc == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return rc


def raw_setns(fd: int, nstype: int) -> None:
    """setns(2) through libc, to restore a thread's namespaces independently of the API."""
    _check(_libc.setns(fd, nstype), "setns")


def raw_unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def thread_ns(kind: str) -> int:
    return os.stat(f"/proc/thread-self/ns/{kind}").st_ino


def pid_for_children() -> Optional[int]:
    """The main thread's pid_for_children namespace (inode).  Right after unshare(NEWPID),
    until that namespace has an init, /proc hides it (ENOENT) but the pidfd ioctl (Linux
    6.11) answers; None where neither does."""
    try:
        return thread_ns("pid_for_children")
    except FileNotFoundError:
        pass
    pidfd = os.pidfd_open(os.getpid())  # type: ignore[attr-defined]
    try:
        fd = fcntl.ioctl(pidfd, PIDFD_GET_PID_FOR_CHILDREN_NAMESPACE)
    except OSError:
        return None
    finally:
        os.close(pidfd)
    try:
        return os.fstat(fd).st_ino
    finally:
        os.close(fd)


def open_fds() -> Dict[int, str]:
    """The process's open fds and what they are (listdir's own fd is gone by readlink)."""
    out = {}
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            out[int(name)] = os.readlink(f"/proc/self/fd/{name}")
    return out


def fd_files() -> Dict[int, Tuple[str, int, int]]:
    """The process's open fds as (what, st_dev, st_ino): an fd whose number was closed and
    reused for another file (a pidfd's name says nothing of its process) is a new one."""
    out = {}
    for fd, what in open_fds().items():
        with contextlib.suppress(OSError):
            st = os.fstat(fd)
            out[fd] = (what, st.st_dev, st.st_ino)
    return out


def children(exclude_tids: Tuple[int, ...] = ()) -> Dict[int, str]:
    """This process's children (zombies included) and their state letter."""
    out = {}
    for tid in os.listdir("/proc/self/task"):
        if int(tid) in exclude_tids:
            continue
        with contextlib.suppress(OSError), open(f"/proc/self/task/{tid}/children") as f:
            for pid in f.read().split():
                state = "?"
                with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as g:
                    state = g.read().rsplit(")", 1)[1].split()[0]
                out[int(pid)] = state
    return out


def fdinfo_pid(fd: int) -> int:
    with open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            if line.startswith("Pid:"):
                return int(line.split()[1])
    raise AssertionError(f"fd {fd} is not a pidfd")


def is_cloexec(fd: int) -> bool:
    return bool(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC)


class Bad(AssertionError):
    """The call did not do what the README promises."""


class Clean(Exception):
    """The call ended with an exception the context makes legitimate."""


class HostileError(Exception):
    """What the hostile argument objects raise."""


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise Bad(message)


# ---- the contexts ----

class Ctx:
    """The process's situation and what the calls need: its home namespaces, a holder
    process (pid 1 of a pid namespace, in a network and a UTS namespace of its own) to
    enter, and the argument wrappers of the hostile contexts."""

    def __init__(self, parts: Tuple[str, ...]) -> None:
        self.parts = parts
        self.exclude_tids: Tuple[int, ...] = ()
        self.sigchld_ignored = False
        self.reaped: Optional[Dict[int, int]] = None
        self.free_fds: Optional[int] = None
        self.hostile: Optional[str] = None
        self.newpid_per_call = False
        # pid_for_children is not the active pid namespace: the kernel refuses NEWPID
        # (EINVAL) until the thread comes back.
        self.pidns_moved = False
        # Other threads run: clone() takes the forked-helper path, setns(mnt) is EINVAL.
        self.threaded = False
        self.cleanups: List[Callable[[], None]] = []
        self.keep: List[Any] = []  # objects the context holds on to (threads, entered, ...)
        self.hook_errors: List[str] = []
        self.reentries = 0
        self.own_pidns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        self.cgroup = self._cgroup_dir()
        # The holder: forked after unshare(NEWPID), so it is pid 1 of a new pid namespace
        # whose init stays alive; it then moves to new network and UTS namespaces.
        ready_r, ready_w = os.pipe()
        self.block_r, block_w = os.pipe()
        raw_unshare(NEWPID)
        pid = os.fork()
        if pid == 0:
            raw_unshare(NEWNET | NEWUTS)
            os.write(ready_w, b"1")
            os.read(self.block_r, 1)
            os._exit(0)
        raw_setns(self.own_pidns, NEWPID)
        os.close(ready_w)
        assert os.read(ready_r, 1) == b"1"
        os.close(ready_r)
        self.block_w = block_w
        self.holder = pid
        self.alt = {kind: os.open(f"/proc/{pid}/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC)
                    for kind in ("net", "uts", "pid")}
        self.alt_ino = {kind: os.fstat(fd).st_ino for kind, fd in self.alt.items()}

    @staticmethod
    def _cgroup_dir() -> Optional[str]:
        with open("/proc/self/mounts") as f:
            mounts = [line.split()[1] for line in f if line.split()[2] == "cgroup2"]
        with open("/proc/self/cgroup") as f:
            rel = [line.strip()[3:] for line in f if line.startswith("0::")]
        if not mounts or not rel:
            return None
        return mounts[0] + rel[0]

    # -- around each call --

    def before_call(self) -> None:
        if self.newpid_per_call:
            # Each call sees a fresh unshare(NEWPID): its first child becomes that pid
            # namespace's init.
            raw_setns(self.own_pidns, NEWPID)
            raw_unshare(NEWPID)

    def after_call(self) -> None:
        while self.cleanups:
            self.cleanups.pop()()

    @property
    def clone_refused(self) -> bool:
        # The README: "After unshare(NEWPID) the helper would become the new namespace's
        # init, so a threaded clone() there is a RuntimeError".
        return self.threaded and self.newpid_per_call

    @contextlib.contextmanager
    def guard(self, needs: int = 0, allow: Tuple[int, ...] = (),
              refused: bool = False) -> Iterator[None]:
        """Around the API call itself: the context's fd limit, and which exceptions are
        clean here (`needs`: the free fds the call needs to succeed; `allow`: errnos the
        kernel gives for this call in this context; `refused`: a RuntimeError is the
        README's answer here)."""
        limits = None
        if self.free_fds is not None:
            limits = resource.getrlimit(resource.RLIMIT_NOFILE)
            used, free, limit = set(open_fds()), 0, 0
            while limit in used or free < self.free_fds:
                free += limit not in used
                limit += 1
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limits[1]))
        try:
            yield
        except RuntimeError as exc:
            if not refused:
                raise
            raise Clean(repr(exc)) from exc
        except (HostileError, TypeError, ValueError, OverflowError) as exc:
            if self.hostile is None:
                raise
            raise Clean(repr(exc)) from exc
        except OSError as exc:
            if exc.errno is None:
                raise
            if self.hostile is not None or exc.errno in allow:
                raise Clean(repr(exc)) from exc
            if self.free_fds is not None and self.free_fds < needs and exc.errno == 24:
                raise Clean(repr(exc)) from exc
            raise
        finally:
            if limits is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, limits)

    def wait(self, pid: int, pidfd: Optional[int] = None) -> Optional[int]:
        """The child's exit code (-N: signal N), by pidfd if given; None where the context
        takes it (SIGCHLD ignored).  Bounded: Bad if it does not end in time."""
        deadline = time.monotonic() + CALL_TIMEOUT / 2
        try:
            while time.monotonic() < deadline:
                if pidfd is not None:
                    info = os.waitid(os.P_PIDFD, pidfd,  # type: ignore[attr-defined]
                                     os.WEXITED | os.WNOHANG)
                    if info is not None and info.si_pid:
                        if info.si_code == os.CLD_EXITED:
                            return info.si_status
                        return -info.si_status
                else:
                    done, status = os.waitpid(pid, linux_clone.WALL | os.WNOHANG)
                    if done:
                        return os.waitstatus_to_exitcode(status)
                time.sleep(0.001)
            raise Bad(f"child {pid} did not end")
        except ChildProcessError:
            if self.sigchld_ignored:
                return None
            if self.reaped is not None and pid in self.reaped:
                return self.reaped.pop(pid)
            raise

    def reenter(self) -> None:
        """What a re-entering argument does before it answers: one API call, in turn."""
        self.reentries += 1
        step = self.reentries % 4
        if step == 0:
            linux_clone.ns_get_nstype("/proc/self/ns/net")
        elif step == 1:
            with linux_clone.entered(self.alt["uts"]):
                pass
        elif step == 2:
            pid = linux_clone.clone(lambda: 0)
            self.wait(pid)  # type: ignore[arg-type]
        else:
            pid = linux_clone.spawn(["/bin/true"])
            self.wait(pid)  # type: ignore[arg-type]

    # -- arguments, as the context passes them --

    def _answer(self, name: str, first: Any, later: Callable[[], Any]) -> Callable[[], Any]:
        calls = [0]

        def answer() -> Any:
            calls[0] += 1
            if self.hostile == "raise":
                raise HostileError(name)
            if self.hostile == "reenter":
                self.reenter()
                return first
            return first if calls[0] == 1 else later()
        return answer

    def index(self, value: int, alt: Optional[int] = None) -> Any:
        """value, or an object with __index__ (varying: then alt, or an overflowing int)."""
        if self.hostile is None:
            return value
        answer = self._answer("__index__", value,
                              lambda: value + 2**64 if alt is None else alt)
        return type("HostileIndex", (), {"__index__": lambda s: answer(),
                                         "__int__": lambda s: answer()})()

    def fd(self, fd: int) -> Any:
        """fd, or an object with fileno() (varying: then a dup of fd, the same file)."""
        if self.hostile is None:
            return fd

        def dup() -> int:
            copy = os.dup(fd)
            self.cleanups.append(lambda: os.close(copy))
            return copy
        answer = self._answer("fileno", fd, dup)
        return type("HostileFileno", (), {"fileno": lambda s: answer()})()

    def path(self, path: str) -> Any:
        """path, or an os.PathLike (varying: then the same path spelled differently)."""
        if self.hostile is None:
            return path
        answer = self._answer("__fspath__", path, lambda: "/." + path)
        return type("HostilePath", (), {"__fspath__": lambda s: answer()})()

    def env(self, env: Dict[str, str]) -> Any:
        """env, or a mapping whose items() is hostile (varying: then with one more item)."""
        if self.hostile is None:
            return env
        answer = self._answer("items", list(env.items()),
                              lambda: list(env.items()) + [("VARYING", "1")])

        class HostileEnv(collections.abc.Mapping):
            def __getitem__(self, key: str) -> str:
                return env[key]

            def __iter__(self) -> Iterator[str]:
                return iter(env)

            def __len__(self) -> int:
                return len(env)

            def items(self) -> Any:
                return answer()
        return HostileEnv()


def _spin() -> None:
    while True:
        sum(range(200))
        time.sleep(0.0002)


def _start(ctx: Ctx, target: Callable[[], Any]) -> threading.Thread:
    ctx.threaded = True
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    ctx.keep.append(thread)
    return thread


def setup_threads(ctx: Ctx) -> None:
    for _ in range(2):
        _start(ctx, _spin)


def setup_c_thread(ctx: Ctx) -> None:
    # A thread Python does not know: pthread_create running libc's sleep(3600).
    # Created with every signal blocked (it inherits the mask), so no signal ends its sleep.
    tid = ctypes.c_ulong()
    start = ctypes.cast(_libc.sleep, ctypes.c_void_p)
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    try:
        assert _libc.pthread_create(ctypes.byref(tid), None, start, ctypes.c_void_p(3600)) == 0
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    ctx.keep.append(tid)
    ctx.threaded = True


def setup_blocked_thread(ctx: Ctx) -> None:
    r, w = os.pipe()
    ctx.keep.append(w)
    started = threading.Event()

    def blocked() -> None:
        started.set()
        os.read(r, 1)  # in read(2), without the GIL, for the whole context
    _start(ctx, blocked)
    started.wait()
    time.sleep(0.01)


def setup_thread_exited(ctx: Ctx) -> None:
    thread = threading.Thread(target=lambda: None)
    thread.start()
    thread.join()


def setup_thread_forking(ctx: Ctx) -> None:
    # Another thread forks children that live on (holding copies of every fd) until the
    # context ends.
    ready = threading.Event()

    def forker() -> None:
        ctx.exclude_tids = (threading.get_native_id(),)
        ready.set()
        while True:
            pid = os.fork()
            if pid == 0:
                _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
                time.sleep(60)
                os._exit(0)
            time.sleep(0.05)
    _start(ctx, forker)
    ready.wait()
    time.sleep(0.1)


def _enter(kind: str) -> Callable[[Ctx], None]:
    def setup(ctx: Ctx) -> None:
        ent = linux_clone.entered(ctx.alt[kind])
        ent.__enter__()
        ctx.keep.append(ent)
        ctx.pidns_moved = ctx.pidns_moved or kind == "pid"
        assert thread_ns("pid_for_children" if kind == "pid" else kind) == ctx.alt_ino[kind]
    return setup


def setup_unshare_newpid(ctx: Ctx) -> None:
    ctx.newpid_per_call = ctx.pidns_moved = True


def setup_sigchld_ignored(ctx: Ctx) -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    ctx.sigchld_ignored = True


def setup_sigchld_reaper(ctx: Ctx) -> None:
    reaped: Dict[int, int] = {}

    def reap(signum: int, frame: Any) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            reaped[pid] = os.waitstatus_to_exitcode(status)
    ctx.reaped = reaped
    signal.signal(signal.SIGCHLD, reap)


def setup_sigchld_default(ctx: Ctx) -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)


def setup_sigpipe_default(ctx: Ctx) -> None:
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)


def setup_signal_storm(ctx: Ctx) -> None:
    # A POSIX timer sending SIGUSR1 to the process every 100 us, caught by Python code.
    count = [0]

    def handler(signum: int, frame: Any) -> None:
        count[0] += 1
    signal.signal(signal.SIGUSR1, handler)
    sigevent = ctypes.create_string_buffer(64)
    struct.pack_into("iiI", sigevent, 8, signal.SIGUSR1, 0, 0)  # signo, SIGEV_SIGNAL
    timer = ctypes.c_void_p()
    rt = _timer_lib()
    _check(rt.timer_create(time.CLOCK_MONOTONIC, sigevent, ctypes.byref(timer)), "timer_create")
    spec = struct.pack("qqqq", 0, 100_000, 0, 100_000)  # interval, value
    _check(rt.timer_settime(timer, 0, spec, None), "timer_settime")
    ctx.keep.append((timer, count))
    time.sleep(0.01)
    assert count[0] > 0


def _nofile(n: int) -> Callable[[Ctx], None]:
    def setup(ctx: Ctx) -> None:
        ctx.free_fds = n
    return setup


def setup_atfork_hooks(ctx: Ctx, in_child: bool = True) -> None:
    # Hooks that call the API; the ones before a fork and in the child make a nested clone
    # (the child's only in the first generation, so that the nested child does not nest
    # again, and on a dedicated stack; the one before only when not already inside one).
    state = {"nest": True, "before": False}
    userns = os.stat("/proc/self/ns/user").st_ino

    def hook(name: str, action: Callable[[], Any]) -> Callable[[], None]:
        def run() -> None:
            try:
                action()
            except BaseException as exc:
                ctx.hook_errors.append(f"{name}: {exc!r}")
        return run

    def nested_clone() -> None:
        linux_clone.ns_get_nstype("/proc/self/ns/uts")
        if state["nest"]:
            state["nest"] = False
            pid = linux_clone.clone(lambda: 0, STACK)
            status = os.waitpid(pid, 0)[1]  # type: ignore[arg-type]
            if status != 0:
                raise AssertionError(f"nested clone child: wait status {status:#x}")

    def before() -> None:
        linux_clone.ns_get_nstype("/proc/self/ns/net")
        if not state["before"]:
            state["before"] = True
            try:
                pid = linux_clone.clone(lambda: 0)
                status = os.waitpid(pid, 0)[1]  # type: ignore[arg-type]
            finally:
                state["before"] = False
            if status != 0:
                raise AssertionError(f"clone in the before hook: wait status {status:#x}")

    def after_in_parent() -> None:
        linux_clone.kcmp(os.getpid(), os.getpid(), linux_clone.KCMP_VM)
        # Entering the holder's UTS namespace takes CAP_SYS_ADMIN in the user namespace that
        # owns it, which a clone child in a user namespace of its own (clone_maps, whose
        # nested clone runs this hook) does not have there: EPERM from the kernel.
        if os.stat("/proc/self/ns/user").st_ino == userns:
            with linux_clone.entered(ctx.alt["uts"]):
                pass

    os.register_at_fork(before=hook("before", before),
                        after_in_parent=hook("after_in_parent", after_in_parent))
    if in_child:
        os.register_at_fork(after_in_child=hook("after_in_child", nested_clone))


def _hostile(kind: str) -> Callable[[Ctx], None]:
    def setup(ctx: Ctx) -> None:
        ctx.hostile = kind
    return setup


SETUPS: Dict[str, Callable[[Ctx], None]] = {
    "single": lambda ctx: None,
    "threads": setup_threads,
    "c_thread": setup_c_thread,
    "blocked_thread": setup_blocked_thread,
    "thread_exited": setup_thread_exited,
    "thread_forking": setup_thread_forking,
    "entered_net": _enter("net"),
    "entered_uts": _enter("uts"),
    "entered_pid": _enter("pid"),
    "unshare_newpid": setup_unshare_newpid,
    "sigchld_ignored": setup_sigchld_ignored,
    "sigchld_reaper": setup_sigchld_reaper,
    "sigchld_default": setup_sigchld_default,
    "sigpipe_default": setup_sigpipe_default,
    "signal_storm": setup_signal_storm,
    **{f"nofile_{n}": _nofile(n) for n in range(4)},
    "atfork_hooks": setup_atfork_hooks,
    "atfork_parent_hooks": lambda ctx: setup_atfork_hooks(ctx, in_child=False),
    "hostile_raise": _hostile("raise"),
    "hostile_reenter": _hostile("reenter"),
    "hostile_varying": _hostile("varying"),
}
# Contexts combined: where two situations meet, defects hide that neither shows alone.
COMBINED = [("threads", "entered_pid"), ("threads", "unshare_newpid"),
            ("threads", "sigchld_ignored"), ("threads", "sigchld_reaper"),
            ("thread_exited", "nofile_0"), ("c_thread", "signal_storm"),
            ("threads", "sigpipe_default"), ("threads", "atfork_hooks")]
CONTEXTS = [name for name in SETUPS] + ["+".join(parts) for parts in COMBINED]


# ---- the calls ----

CALLS: Dict[str, Callable[[Ctx], Any]] = {}


def call(func: Callable[[Ctx], Any]) -> Callable[[Ctx], Any]:
    CALLS[func.__name__] = func
    return func


@contextlib.contextmanager
def saved_ns(*kinds: str) -> Iterator[Dict[str, int]]:
    """The calling thread's namespaces of these kinds (inodes), restored afterwards."""
    fds = {kind: os.open(f"/proc/thread-self/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC)
           for kind in kinds}
    try:
        yield {kind: os.fstat(fd).st_ino for kind, fd in fds.items()}
    finally:
        for fd in fds.values():
            raw_setns(fd, 0)
            os.close(fd)


@call
def unshare(ctx: Ctx) -> None:
    with saved_ns("net", "uts") as before:
        with ctx.guard():
            linux_clone.unshare(ctx.index(NEWNET | NEWUTS))
        for kind in ("net", "uts"):
            expect(thread_ns(kind) != before[kind], f"still in the old {kind} namespace")


@call
def setns_fd(ctx: Ctx) -> None:
    with saved_ns("net"):
        with ctx.guard():
            linux_clone.setns(ctx.fd(ctx.alt["net"]), ctx.index(NEWNET))
        expect(thread_ns("net") == ctx.alt_ino["net"], "not in the target network namespace")


@call
def setns_path(ctx: Ctx) -> None:
    with saved_ns("uts"):
        with ctx.guard(needs=1):
            linux_clone.setns(ctx.path(f"/proc/{ctx.holder}/ns/uts"))
        expect(thread_ns("uts") == ctx.alt_ino["uts"], "not in the target UTS namespace")


@call
def setns_pidfd(ctx: Ctx) -> None:
    pidfd = os.pidfd_open(ctx.holder)  # type: ignore[attr-defined]
    try:
        with saved_ns("net", "uts"):
            with ctx.guard():
                linux_clone.setns(ctx.fd(pidfd), ctx.index(NEWNET | NEWUTS))
            for kind in ("net", "uts"):
                expect(thread_ns(kind) == ctx.alt_ino[kind], f"not in the holder's {kind}")
    finally:
        os.close(pidfd)


@call
def setns_fd_2_63(ctx: Ctx) -> None:
    # An fd that no int holds: an error, whatever fd 0 is (here: a network namespace).
    saved = os.dup(0)
    os.dup2(ctx.alt["net"], 0)
    try:
        with saved_ns("net") as before:
            try:
                with ctx.guard():
                    linux_clone.setns(2**63, NEWNET)
            except (OverflowError, ValueError):
                pass
            except OSError as exc:
                expect(exc.errno == 9, f"{exc!r}, not EBADF")
            else:
                raise Bad("setns(2**63) succeeded")
            expect(thread_ns("net") == before["net"], "setns(2**63) entered fd 0's namespace")
    finally:
        os.dup2(saved, 0)
        os.close(saved)


def _in_entered(ctx: Ctx, kinds: Tuple[str, ...], make: Callable[[], Any],
                needs: int) -> None:
    """Enter with make(), check the namespaces inside, leave by an exception, check the
    thread is back."""
    names = ["pid_for_children" if k == "pid" else k for k in kinds]

    def where() -> Dict[str, Optional[int]]:
        return {name: pid_for_children() if name == "pid_for_children" else thread_ns(name)
                for name in names}
    before = where()
    if None in before.values():
        # pid_for_children right after unshare(NEWPID), on a kernel without the pidfd
        # ioctls: entered() cannot save it either.
        with ctx.guard(needs=needs, allow=(errno.ENOENT,)):
            with make():
                pass
        raise Bad("entered() a pid namespace it cannot come back from")

    class Leave(Exception):
        pass
    try:
        with ctx.guard(needs=needs):
            with make():
                for kind, name in zip(kinds, names):
                    expect(thread_ns(name) == ctx.alt_ino[kind], f"not in the target {name}")
                raise Leave
    except Leave:
        pass
    after = where()
    expect(after == before, f"not back after entered(): {before} -> {after}")


@call
def entered_fd(ctx: Ctx) -> None:
    _in_entered(ctx, ("net",), lambda: linux_clone.entered(ctx.fd(ctx.alt["net"])), needs=2)


@call
def entered_pid_kw(ctx: Ctx) -> None:
    _in_entered(ctx, ("net", "uts"), lambda: linux_clone.entered(
        pid=ctx.index(ctx.holder), nstype=ctx.index(NEWNET | NEWUTS)), needs=3)


@call
def entered_path(ctx: Ctx) -> None:
    _in_entered(ctx, ("uts",), lambda: linux_clone.entered(
        ctx.path(f"/proc/{ctx.holder}/ns/uts")), needs=2)


@call
def entered_pidns(ctx: Ctx) -> None:
    # Right after unshare(NEWPID) the kernel hides pid_for_children in /proc until that
    # namespace has an init: entered() saves it through the pidfd ioctl (README: "a pidfd
    # of itself, whose PIDFD_GET_*_NAMESPACE ioctls answer on Linux 6.11+") and comes back,
    # or, on older kernels, cannot know where to come back to: ENOENT.
    _in_entered(ctx, ("pid",), lambda: linux_clone.entered(ctx.fd(ctx.alt["pid"])), needs=2)


@call
def entered_mnt(ctx: Ctx) -> None:
    # A mount namespace needs a thread that shares its fs with no other: EINVAL with
    # threads (README), else in and back (here: the process's own mount namespace), and
    # back in the working directory.  It keeps 3 fds: the namespace, the root, the cwd.
    fd = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    cwd = os.open(".", os.O_RDONLY | os.O_CLOEXEC)
    try:
        before = thread_ns("mnt")
        with ctx.guard(needs=3, allow=(errno.EINVAL,) if ctx.threaded else ()):
            with linux_clone.entered(ctx.fd(fd)):
                expect(thread_ns("mnt") == before, "not in the target mount namespace")
            expect(not ctx.threaded, "entered a mount namespace with other threads running")
            expect(os.path.samestat(os.stat("."), os.fstat(cwd)), "not back in the cwd")
        expect(thread_ns("mnt") == before, "not back after entered()")
    finally:
        os.fchdir(cwd)  # whatever happened: the next calls run where they ran before
        os.close(cwd)
        os.close(fd)


@call
def entered_twice(ctx: Ctx) -> None:
    # One entered() object used again while active: RuntimeError, and the thread stays in.
    before = thread_ns("net")
    ent = linux_clone.entered(ctx.fd(ctx.alt["net"]))
    with ctx.guard(needs=1):
        with ent:
            try:
                ent.__enter__()
            except RuntimeError:
                pass
            else:
                raise Bad("an active entered() was entered again")
            expect(thread_ns("net") == ctx.alt_ino["net"], "moved by the refused __enter__")
    expect(thread_ns("net") == before, "not back after entered()")


@call
def entered_exit_unentered(ctx: Ctx) -> None:
    # __exit__ without __enter__: a RuntimeError or nothing, and the thread stays put.
    before = thread_ns("net")
    ent = linux_clone.entered(ctx.alt["net"])
    try:
        with ctx.guard():
            ent.__exit__(None, None, None)
    except RuntimeError:
        pass
    expect(thread_ns("net") == before, "moved by __exit__")


@call
def pivot_root(ctx: Ctx) -> None:
    # In a forked child, after unshare(NEWNS): a tmpfs becomes its root.
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        answer = b"?"
        try:
            os.close(r)
            raw_unshare(0x20000)  # NEWNS, of the forked child only
            _check(_libc.mount(b"none", b"/tmp", b"tmpfs", 0, None), "mount")
            os.mkdir("/tmp/new")
            _check(_libc.mount(b"none", b"/tmp/new", b"tmpfs", 0, None), "mount")
            os.mkdir("/tmp/new/old")
            with ctx.guard():
                linux_clone.pivot_root(ctx.path("/tmp/new"), ctx.path("/tmp/new/old"))
            answer = b"1" if os.listdir("/") == ["old"] and os.path.isdir("/old/proc") else b"0"
        except Clean:
            answer = b"c"
        except BaseException:
            traceback.print_exc()
        os.write(w, answer)
        os._exit(0)
    os.close(w)
    try:
        answer = os.read(r, 1)
    finally:
        os.close(r)
        ctx.wait(pid)
    if answer == b"c":
        raise Clean("pivot_root")
    expect(answer == b"1", f"pivot_root in the child: {answer!r} (see the log)")


@call
def pivot_root_error(ctx: Ctx) -> None:
    try:
        with ctx.guard():
            linux_clone.pivot_root(ctx.path("/nonexistent-new"), ctx.path("/nonexistent-old"))
    except FileNotFoundError as exc:
        expect(exc.filename is not None and exc.filename2 is not None,
               f"paths missing: {exc!r}")
    else:
        raise Bad("pivot_root of a missing directory succeeded")


@call
def kcmp_file(ctx: Ctx) -> None:
    fd = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
    copy = os.dup(fd)
    me = os.getpid()
    try:
        with ctx.guard():
            same = linux_clone.kcmp(ctx.index(me), ctx.index(me), ctx.index(linux_clone.KCMP_FILE),
                                    ctx.index(fd), ctx.index(copy))
            vm = linux_clone.kcmp(me, ctx.holder, linux_clone.KCMP_VM)
    finally:
        os.close(fd)
        os.close(copy)
    expect(same == 0, f"kcmp of an fd and its dup: {same}")
    expect(vm in (1, 2), f"kcmp of two processes' VM: {vm}")


@call
def kcmp_fd_2_32(ctx: Ctx) -> None:
    # fd + 2**32 is no fd: an error, not the answer for fd.
    fd = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
    me = os.getpid()
    try:
        with ctx.guard():
            result = linux_clone.kcmp(me, me, linux_clone.KCMP_FILE, fd + 2**32, fd)
    except (OverflowError, ValueError):
        return
    except OSError as exc:
        expect(exc.errno == 9, f"{exc!r}, not EBADF")
        return
    finally:
        os.close(fd)
    raise Bad(f"kcmp(fd + 2**32, fd) answered {result}")


@call
def configure_loopback(ctx: Ctx) -> None:
    with saved_ns("net"):
        raw_unshare(NEWNET)
        with ctx.guard(needs=1):
            linux_clone.configure_loopback()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            answer = fcntl.ioctl(s, SIOCGIFFLAGS, struct.pack("16sh14x", b"lo", 0))
        expect(struct.unpack("16sh14x", answer)[1] & IFF_UP != 0, "lo is not up")


@call
def ns_get_userns(ctx: Ctx) -> None:
    with ctx.guard(needs=1):
        fd = linux_clone.ns_get_userns(ctx.fd(ctx.alt["net"]))
    try:
        expect(os.fstat(fd).st_ino == os.stat("/proc/self/ns/user").st_ino, "not our userns")
        expect(is_cloexec(fd), "not close-on-exec")
    finally:
        os.close(fd)


@call
def ns_get_parent(ctx: Ctx) -> None:
    with ctx.guard(needs=1):
        fd = linux_clone.ns_get_parent(ctx.fd(ctx.alt["pid"]))
    try:
        expect(os.fstat(fd).st_ino == os.stat("/proc/self/ns/pid").st_ino, "not our pid ns")
        expect(is_cloexec(fd), "not close-on-exec")
    finally:
        os.close(fd)


@call
def ns_get_parent_eperm(ctx: Ctx) -> None:
    # The initial user namespace has no parent: EPERM, not an fd.  needs=2: the opened path,
    # and the fd older kernels (Debian's 6.1) take for the answer before they find no parent
    # (EMFILE there; 6.18 looks for the parent first).
    with ctx.guard(needs=2):
        try:
            fd = linux_clone.ns_get_parent(ctx.path("/proc/self/ns/user"))
        except PermissionError:
            return
    os.close(fd)
    raise Bad("the initial user namespace has a parent")


@call
def ns_get_nstype(ctx: Ctx) -> None:
    with ctx.guard(needs=1):
        kind = linux_clone.ns_get_nstype(ctx.path("/proc/self/ns/uts"))
    expect(kind is linux_clone.CloneFlag.NEWUTS, f"{kind!r}")


@call
def ns_get_owner_uid(ctx: Ctx) -> None:
    fd = os.open("/proc/self/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    try:
        with ctx.guard():
            uid = linux_clone.ns_get_owner_uid(ctx.fd(fd))
    finally:
        os.close(fd)
    expect(uid == 0, f"owner uid {uid}")


@call
def pidfd_open(ctx: Ctx) -> None:
    with ctx.guard(needs=1):
        fd = linux_clone.pidfd_open(ctx.index(ctx.holder))
    try:
        expect(fdinfo_pid(fd) == ctx.holder, "the pidfd is not the holder's")
        expect(is_cloexec(fd), "not close-on-exec")
    finally:
        os.close(fd)


# -- children --

class Probe:
    """A child function that reports what the child sees through a pipe, then waits until
    the parent has checked it (so that its pid and pidfd still name it); the checks of that
    report in the parent.  Nothing here waits for an EOF: another thread's fork child may
    hold a copy of any pipe."""

    def __init__(self, ctx: Ctx, code: Any = EXIT_CODE, thread: bool = False,
                 hold: bool = True, shared_fds: bool = False) -> None:
        self.ctx, self.shared_fds = ctx, shared_fds
        self.r, self.w = os.pipe()
        self.hold_r, self.hold_w = os.pipe() if hold else (-1, -1)
        self.fds_before = set(open_fds())
        limits = resource.getrlimit(resource.RLIMIT_NOFILE)

        def child() -> Any:
            resource.setrlimit(resource.RLIMIT_NOFILE, limits)  # the context's, lifted
            report = {"pid": int(os.readlink("/proc/self")), "getpid": os.getpid(),
                      "fds": open_fds(), "threads": threading.active_count(),
                      "uid": os.getuid(), "hook_errors": list(ctx.hook_errors),
                      "ns": {k: os.stat(f"/proc/self/ns/{k}").st_ino
                             for k in ("net", "uts", "user", "pid")}}
            with contextlib.suppress(OSError), open("/proc/self/uid_map") as f:
                report["uid_map"] = f.read().split()
            send_message(self.w, report)
            if hold:  # bounded: a parent that lost track of it must not leave it forever
                select.select([self.hold_r], [], [], CALL_TIMEOUT)
            if thread:
                # A non-daemon thread that outlives func: a Python program waits for it.
                def late() -> None:
                    time.sleep(0.05)
                    os.write(self.w, b"late")
                threading.Thread(target=late).start()
            return code
        self.func = child

    def close(self) -> None:
        for fd in (self.r, self.w, self.hold_r, self.hold_w):
            if fd >= 0:
                os.close(fd)

    def run(self, start: Callable[[Callable[[], Any]], Any], needs: int = 0,
            allow: Tuple[int, ...] = (), code: int = EXIT_CODE) -> Dict[str, Any]:
        """start(func) (a clone call), the checks, the child reaped; the child's report."""
        caller = {k: thread_ns(k) for k in ("net", "uts", "user")}
        try:
            with self.ctx.guard(needs=needs, allow=allow, refused=self.ctx.clone_refused):
                result = start(self.func)
            pid, pidfd = result if isinstance(result, tuple) else (result, None)
            if not self.shared_fds:  # with FILES this would close the child's end too
                os.close(self.w)
                self.w = -1
            report = None
            try:
                report = self.receive(pid)
                self.check(pid, pidfd, report)
            finally:
                if self.hold_w >= 0:
                    os.write(self.hold_w, b"1")
                if report is not None and report["pid"] != pid:
                    pid, pidfd = report["pid"], None  # reap the real child, at least
                status = self.ctx.wait(pid, pidfd)
                if pidfd is not None:
                    os.close(pidfd)
            os.set_blocking(self.r, False)
            report["late"] = b""
            with contextlib.suppress(BlockingIOError):
                report["late"] = os.read(self.r, 100)  # written before the child exited
        finally:
            self.close()
        expect(status in (None, code), f"exit status {status}, not {code}")
        report["caller"] = caller
        return report

    def receive(self, pid: int) -> Dict[str, Any]:
        """The child's report; Bad if it ends without one."""
        deadline = time.monotonic() + CALL_TIMEOUT / 2
        while time.monotonic() < deadline:
            if select.select([self.r], [], [], 0.05)[0]:
                try:
                    return receive_message(self.r)
                except EOFError:
                    break
            try:
                with open(f"/proc/{pid}/stat") as f:
                    alive = f.read().rsplit(")", 1)[1].split()[0] != "Z"
            except (FileNotFoundError, ProcessLookupError):  # ESRCH: gone between open and read
                alive = False
            if not alive and not select.select([self.r], [], [], 0)[0]:
                break
        raise Bad("the child sent no report (did func run?)")

    def check(self, pid: int, pidfd: Optional[int], report: Dict[str, Any]) -> None:
        expect(report["pid"] == pid, f"clone returned {pid}, the child is {report['pid']}")
        expect(report["threads"] == 1, f"{report['threads']} threads in the child")
        extra = {fd: what for fd, what in report["fds"].items()
                 if fd not in self.fds_before and not self.shared_fds}
        expect(not extra, f"fds open in the child that the parent had not: {extra}")
        expect(not report["hook_errors"], f"at-fork hooks failed: {report['hook_errors']}")
        if pidfd is not None:
            expect(fdinfo_pid(pidfd) == pid, "the pidfd is not the child's")
            expect(is_cloexec(pidfd), "the pidfd is not close-on-exec")


def _clone_cell(ctx: Ctx, start: Callable[[Callable[[], Any]], Any], needs: int = 0,
                newpid: bool = False, shared_fds: bool = False,
                **expected: Any) -> Dict[str, Any]:
    allow = (errno.EINVAL,) if newpid and ctx.pidns_moved else ()
    report = Probe(ctx, shared_fds=shared_fds).run(start, needs, allow)
    for key, value in expected.items():
        expect(report[key] == value, f"child's {key}: {report[key]!r}, not {value!r}")
    return report


def _quick_pidfd_cell(ctx: Ctx, start: Callable[[Callable[[], Any]], Any]) -> None:
    """A child that exits at once: the pidfd must come back even if it is already gone
    (reaped, where SIGCHLD is ignored or a handler reaps)."""
    with ctx.guard(needs=1, refused=ctx.clone_refused):
        pid, pidfd = start(lambda: EXIT_CODE)
    try:
        expect(fdinfo_pid(pidfd) in (pid, -1), "the pidfd is not the child's")
        expect(is_cloexec(pidfd), "the pidfd is not close-on-exec")
        status = ctx.wait(pid, pidfd)
    finally:
        os.close(pidfd)
    expect(status in (None, EXIT_CODE), f"exit status {status}, not {EXIT_CODE}")


@call
def clone(ctx: Ctx) -> None:
    _clone_cell(ctx, lambda f: linux_clone.clone(f, ctx.index(0), ctx.index(signal.SIGCHLD)))


@call
def clone_pidfd(ctx: Ctx) -> None:
    _clone_cell(ctx, lambda f: linux_clone.clone(f, 0, ctx.index(PIDFD | signal.SIGCHLD)),
                needs=1)


@call
def clone_pidfd_quick(ctx: Ctx) -> None:
    _quick_pidfd_cell(ctx, lambda f: linux_clone.clone(f, 0, PIDFD | signal.SIGCHLD))


@call
def clone_stack(ctx: Ctx) -> None:
    _clone_cell(ctx, lambda f: linux_clone.clone(f, ctx.index(STACK)))


@call
def clone_maps(ctx: Ctx) -> None:
    # Varying: the flags gain VFORK on the second look, which must not hang.
    report = _clone_cell(ctx, lambda f: linux_clone.clone(
        f, 0, ctx.index(NEWUSER | signal.SIGCHLD, alt=NEWUSER | VFORK | signal.SIGCHLD),
        uid_map="0 0 1", gid_map=[(0, 0, 1)]), needs=3, uid=0)
    expect(report["uid_map"] == ["0", "0", "1"], f"uid_map {report['uid_map']}")
    expect(report["ns"]["user"] != report["caller"]["user"], "not in a new user namespace")


@call
def clone_maps_bad(ctx: Ctx) -> None:
    # Overlapping lines: the kernel refuses the map; the child is killed and reaped.
    probe = Probe(ctx)
    try:
        with ctx.guard(needs=3, refused=ctx.clone_refused):
            pid = linux_clone.clone(probe.func, 0, ctx.index(NEWUSER | signal.SIGCHLD),
                                    uid_map="0 0 1\n0 1 1")
    except OSError as exc:
        expect(exc.errno == errno.EINVAL, f"{exc!r}, not EINVAL")
    else:
        ctx.wait(pid)  # type: ignore[arg-type]
        raise Bad("an overlapping uid_map was accepted")
    finally:
        probe.close()


@call
def clone_vfork_maps(ctx: Ctx) -> None:
    # The README: VFORK with id maps is a ValueError (the parent could not write them).
    try:
        with ctx.guard():
            pid = linux_clone.clone3(lambda: 0, ctx.index(VFORK | NEWUSER), uid_map="0 0 1")
    except ValueError:
        return
    ctx.wait(pid)  # type: ignore[arg-type]
    raise Bad("VFORK with id maps made a child")


@call
def clone_newns(ctx: Ctx) -> None:
    report = _clone_cell(ctx, lambda f: linux_clone.clone(
        f, 0, ctx.index(NEWPID | NEWNET | NEWUTS | signal.SIGCHLD)), newpid=True, getpid=1)
    for kind in ("net", "uts"):
        expect(report["ns"][kind] != report["caller"][kind], f"not in a new {kind} namespace")


@call
def clone3(ctx: Ctx) -> None:
    _clone_cell(ctx, lambda f: linux_clone.clone3(f, ctx.index(0),
                                                  exit_signal=ctx.index(signal.SIGCHLD)))


@call
def clone3_pidfd(ctx: Ctx) -> None:
    _clone_cell(ctx, lambda f: linux_clone.clone3(f, ctx.index(PIDFD)), needs=1)


@call
def clone3_pidfd_quick(ctx: Ctx) -> None:
    _quick_pidfd_cell(ctx, lambda f: linux_clone.clone3(f, PIDFD))


@call
def clone3_stack(ctx: Ctx) -> None:
    _clone_cell(ctx, lambda f: linux_clone.clone3(f, stack_size=ctx.index(STACK)))


@call
def clone3_maps(ctx: Ctx) -> None:
    report = _clone_cell(ctx, lambda f: linux_clone.clone3(
        f, ctx.index(NEWUSER), uid_map=[(0, 0, 1)], gid_map="0 0 1", setgroups="deny"),
        needs=3, uid=0)
    expect(report["ns"]["user"] != report["caller"]["user"], "not in a new user namespace")


@call
def clone3_cgroup(ctx: Ctx) -> None:
    group = ctx.cgroup
    if group is None:
        raise Clean("no cgroup2 mount")
    _clone_cell(ctx, lambda f: linux_clone.clone3(f, cgroup=ctx.path(group)), needs=1)


@call
def clone3_set_tid(ctx: Ctx) -> None:
    _clone_cell(ctx, lambda f: linux_clone.clone3(f, ctx.index(NEWPID), set_tid=[ctx.index(1)]),
                newpid=True, getpid=1)


@call
def clone_files(ctx: Ctx) -> None:
    # A sharing flag: the child shares the fd table -- or, with other threads, the
    # README's RuntimeError (the forked helper could not give it its meaning).
    def start(func: Callable[[], Any]) -> Any:
        return linux_clone.clone(func, 0, ctx.index(int(linux_clone.FILES) | signal.SIGCHLD))
    if not ctx.threaded:
        # The child shares the fd table, with the fd entered() keeps for this thread in it
        # (made here if no call has made it yet): the call must leave that fd alone.
        with linux_clone.entered(ctx.alt["uts"]):
            pass
        kept = linux_clone._core._kept_fd()
        # Still the same open file? kcmp tells, where fstat would not: a pidfd made again
        # for the same thread has the same inode.
        copy = os.dup(kept)
        try:
            _clone_cell(ctx, start, shared_fds=True)
            try:
                same = linux_clone.kcmp(os.getpid(), os.getpid(), linux_clone.KCMP_FILE,
                                        kept, copy) == 0
            except OSError:
                same = False
            expect(same, f"the child closed or replaced the fd {kept} that entered() keeps "
                   "for the caller's thread")
        finally:
            os.close(copy)
            with linux_clone.entered(ctx.alt["uts"]):  # which makes it again if it has to
                pass
        return
    with ctx.guard():
        try:
            pid = start(lambda: 0)
        except RuntimeError:
            return
    ctx.wait(pid)  # type: ignore[arg-type]
    raise Bad("clone(FILES) with other threads running made a child")


@call
def clone_exit_2_63(ctx: Ctx) -> None:
    # As `sys.exit(2**63)` at the top level: a failure status (255), not 0.
    Probe(ctx, code=2**63).run(lambda f: linux_clone.clone(f), code=255)


@call
def clone_raises(ctx: Ctx) -> None:
    def fail() -> None:
        raise KeyError("clone_raises: expected in the log")
    with ctx.guard(refused=ctx.clone_refused):
        pid = linux_clone.clone(fail)
    status = ctx.wait(pid)  # type: ignore[arg-type]
    expect(status in (None, 1), f"exit status {status}, not 1")


@call
def clone_nondaemon_thread(ctx: Ctx) -> None:
    # func returns while a non-daemon thread it started still runs: the child waits for
    # it, as a Python program's end does.
    report = Probe(ctx, thread=True).run(lambda f: linux_clone.clone(f))
    expect(report["late"] == b"late", "the child's non-daemon thread was killed at its exit")


SH_EXIT = ["/bin/sh", "-c", f"exit {EXIT_CODE}"]
ENV = {"PATH": "/usr/bin:/bin"}


def _spawn_cell(ctx: Ctx, argv: List[str], needs: int = 0, newpid: bool = False,
                **kwargs: Any) -> None:
    with ctx.guard(needs=needs, allow=(errno.EINVAL,) if newpid and ctx.pidns_moved else ()):
        result = linux_clone.spawn(argv, env=ctx.env(ENV), **kwargs)
    pid, pidfd = result if isinstance(result, tuple) else (result, None)
    # Where SIGCHLD is ignored or a handler reaps, the program may be gone already.
    gone = (-1,) if ctx.sigchld_ignored or ctx.reaped is not None else ()
    try:
        if pidfd is not None:
            expect(fdinfo_pid(pidfd) in (pid, *gone), "the pidfd is not the child's")
            expect(is_cloexec(pidfd), "the pidfd is not close-on-exec")
    finally:
        status = ctx.wait(pid, pidfd)
        if pidfd is not None:
            os.close(pidfd)
    # Without free fds the program itself may not load its libraries (exit 127).
    allowed = (None, EXIT_CODE) + ((127,) if ctx.free_fds is not None else ())
    expect(status in allowed, f"exit status {status}, not {EXIT_CODE}")


@call
def spawn(ctx: Ctx) -> None:
    _spawn_cell(ctx, SH_EXIT, flags=ctx.index(0))


@call
def spawn_pidfd(ctx: Ctx) -> None:
    _spawn_cell(ctx, SH_EXIT, needs=1, pidfd=True)


@call
def spawn_maps(ctx: Ctx) -> None:
    _spawn_cell(ctx, SH_EXIT, needs=5, flags=ctx.index(NEWUSER), uid_map="0 0 1",
                gid_map="0 0 1")


@call
def spawn_maps_bad(ctx: Ctx) -> None:
    # Overlapping lines: the kernel refuses the map; the child is killed and reaped.
    try:
        with ctx.guard(needs=5):
            pid = linux_clone.spawn(["/bin/true"], ctx.index(NEWUSER), uid_map="0 0 1\n0 1 1")
    except OSError as exc:
        expect(exc.errno == 22, f"{exc!r}, not EINVAL")
    else:
        ctx.wait(pid)  # type: ignore[arg-type]
        raise Bad("an overlapping uid_map was accepted")


@call
def spawn_newns(ctx: Ctx) -> None:
    script = f'read h < /proc/sys/kernel/hostname; [ "$h" = matrix ] && exit {EXIT_CODE}'
    _spawn_cell(ctx, ["/bin/sh", "-c", script + "; exit 3"], needs=1, newpid=True,
                flags=ctx.index(NEWNET | NEWUTS | NEWIPC | NEWPID), hostname="matrix",
                loopback=True)


@call
def spawn_signals(ctx: Ctx) -> None:
    # The program starts with SIGPIPE and SIGXFSZ at their defaults, as subprocess gives
    # them (Python ignores both in itself).
    with ctx.guard():
        pid = linux_clone.spawn(["sleep", "30"], env=ctx.env(ENV))
    try:
        with open(f"/proc/{pid}/status") as f:
            ignored = int([line for line in f if line.startswith("SigIgn:")][0].split()[1], 16)
    finally:
        os.kill(pid, signal.SIGKILL)  # type: ignore[arg-type]
        ctx.wait(pid)  # type: ignore[arg-type]
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        expect(not ignored & (1 << (sig - 1)), f"{sig.name} is ignored in the program")


@call
def spawn_enoent(ctx: Ctx) -> None:
    try:
        with ctx.guard():
            pid = linux_clone.spawn([ctx.path("/nonexistent/program")])
    except FileNotFoundError as exc:
        expect(exc.filename is not None, f"no filename: {exc!r}")
    else:
        ctx.wait(pid)  # type: ignore[arg-type]
        raise Bad("spawn of a missing program succeeded")


# ---- running a context ----

def _run_calls(channel: Any, parts: Tuple[str, ...], names: List[str]) -> None:
    """The sandbox's target: set the context up, run the calls, report each outcome."""
    ctx = Ctx(parts)
    for part in parts:
        SETUPS[part](ctx)
    channel.send(("ready",))
    for name in names:
        channel.send(("start", name))
        ctx.before_call()
        kept = linux_clone._core._kept_fd()
        fds = fd_files()
        kids = children(ctx.exclude_tids)
        hook_errors = len(ctx.hook_errors)
        started = time.monotonic()
        try:
            CALLS[name](ctx)
            outcome = ("ok", "")
        except Clean as exc:
            outcome = ("clean", str(exc))
        except Bad as exc:
            outcome = ("bad", str(exc))
        except BaseException:
            outcome = ("error", traceback.format_exc())
        with contextlib.suppress(BaseException):
            ctx.after_call()
        problems = []
        now, kept_now = fd_files(), linux_clone._core._kept_fd()
        # The README: each thread that uses entered() keeps one close-on-exec fd from its
        # first use on (the calls run on the main thread); no other fd outlives a call, and
        # the kept one stays that file (the calls never close it themselves).
        leaked = {fd: what[0] for fd, what in now.items() if fds.get(fd) != what
                  and not (kept < 0 and fd == kept_now)}
        for _ in range(5):
            # Only an fd that stays is left open: os.fork() in another thread (the
            # thread_forking context) fopen()s /proc/self/stat for a moment to count threads
            # for its DeprecationWarning, and a snapshot can land inside that moment.
            if not leaked:
                break
            time.sleep(0.02)
            again = fd_files()
            leaked = {fd: what for fd, what in leaked.items() if fds.get(fd) != again.get(fd)}
        if kept >= 0 and now.get(kept) != fds.get(kept):
            problems.append(f"the fd entered() keeps, {kept}, was closed or replaced: "
                            f"{fds.get(kept, ('closed',))[0]} -> {now.get(kept, ('closed',))[0]}")
            # Let entered() make its fd again now, so that the next call starts clean.
            with contextlib.suppress(OSError), linux_clone.entered(ctx.alt["uts"]):
                pass
        if kept < 0 <= kept_now and kept_now in now and not is_cloexec(kept_now):
            problems.append(f"the fd entered() keeps, {kept_now}, is not close-on-exec")
        if leaked:
            problems.append(f"fds left open: {leaked}")
        left = {pid: st for pid, st in children(ctx.exclude_tids).items() if pid not in kids}
        if left:
            problems.append(f"children left (pid: state): {left}")
        if ctx.hook_errors[hook_errors:]:
            problems.append(f"at-fork hooks failed: {ctx.hook_errors[hook_errors:]}")
        channel.send(("done", name, outcome, problems, time.monotonic() - started))
    channel.send(("end",))


Outcome = Tuple[str, str, List[str]]  # kind, detail, problems
_RESULTS: Dict[str, Dict[str, Outcome]] = {}
TIMES: Dict[Tuple[str, str], float] = {}  # seconds per (context, call), for a look


def run_context(context: str) -> Dict[str, Outcome]:
    """Every call's outcome in `context`; a call that hangs or kills the process fails, and
    the calls after it run in a new sandbox."""
    parts = tuple(context.split("+"))
    names = list(CALLS)
    results: Dict[str, Outcome] = {}
    while names:
        box = Sandbox(_run_calls, parts, names)
        current = None
        try:
            box.recv(SETUP_TIMEOUT)
            while True:
                message = box.recv(CALL_TIMEOUT)
                if message[0] == "start":
                    current = message[1]
                elif message[0] == "done":
                    results[message[1]] = (message[2][0], message[2][1], message[3])
                    TIMES[context, message[1]] = message[4]
                else:
                    break
            names = []
        except (SandboxHang, SandboxDied) as exc:
            if current is None or current in results:
                raise AssertionError(f"context {context} failed to set up: {exc}") from None
            kind = "hang" if isinstance(exc, SandboxHang) else "died"
            results[current] = (kind, str(exc) + "\n" + box.log(), [])
            names = names[names.index(current) + 1:]
        finally:
            box.close()
    return results


# ---- the library's defects this matrix shows (strict: a fix makes its cells pass) ----

# (A clone(FILES) child closing the caller's kept entered() fd in the table they share was
# one: fixed, the child forgets it and closes only its own.)
DEFECTS: Dict[str, str] = {}
THREADED = {"threads", "c_thread", "blocked_thread", "thread_forking"}


def known_defect(context: str, name: str) -> Optional[str]:
    """The defect that makes this cell fail, if any (a key of DEFECTS)."""
    return None


@pytest.fixture(scope="module")
def outcomes() -> Callable[[str], Dict[str, Outcome]]:
    def get(context: str) -> Dict[str, Outcome]:
        if context not in _RESULTS:
            _RESULTS[context] = run_context(context)
        return _RESULTS[context]
    return get


def _cells() -> Iterator[Any]:
    for context in CONTEXTS:
        for name in CALLS:
            defect = known_defect(context, name)
            marks = [pytest.mark.xfail(strict=True, reason=DEFECTS[defect])] if defect else []
            yield pytest.param(context, name, id=f"{context}-{name}", marks=marks)


@pytest.mark.parametrize("context, name", list(_cells()))
def test_call_in_context(privileged: None, outcomes: Callable[[str], Dict[str, Outcome]],
                         context: str, name: str) -> None:
    kind, detail, problems = outcomes(context)[name]
    assert kind in ("ok", "clean") and not problems, (
        f"{name} in context {context}: {kind}: {detail}\n" + "\n".join(problems))

"""The measurement: one timing loop for Python (timeit's), the C loops of linux_clone._bench,
the interleaved repetitions, the worker process every row runs in, and the facts about the
machine that a result needs next to it."""

from __future__ import annotations

import gc
import os
import pickle
import platform
import signal
import sys
import sysconfig
import time
import timeit
import traceback
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import linux_clone

Loop = Callable[[int], float]  # n -> elapsed ns for n calls

RAW, CIMPORT, LC = "raw C", "cimport", "linux_clone"
PROC_C = "/proc in C"  # entered(): its steps through /proc/thread-self/ns, as older kernels take


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
class Impl:
    """One column of a row: what it runs, in words, and the loop that times n calls of it."""
    what: str
    loop: Loop


# A column as a row declares it: an Impl, why it cannot be measured, or a function that
# makes the Impl or raises Skip (for what needs an optional module or program).
Column = Union[Impl, Skip, Callable[[], Impl]]


@dataclass
class Measured:
    """What a worker sends back: ns per call for each implementation, one per repetition."""
    n: int
    samples: Dict[str, List[float]]
    what: Dict[str, str]
    skipped: Dict[str, str]


def c(what: str, loop: Callable[..., int], *args: Any,
      setup: Optional[Callable[[], object]] = None) -> Impl:
    """A loop of linux_clone._bench, which times itself: loop(*args, n) -> ns.  `setup` runs
    before each loop, off the clock."""
    def run(n: int) -> int:
        if setup is not None:
            setup()
        return loop(*args, n)
    return Impl(what, run)


def py(what: str, statement: str, *, setup: Optional[Callable[[], object]] = None,
       **names: Any) -> Impl:
    """n runs of a Python statement in timeit's loop, its `names` bound as local variables
    of that loop (the cheapest lookup, the same for every column).  `setup` runs before each
    loop, off the clock."""
    bind = "".join(f"{name} = _names[{name!r}]\n" for name in names)
    timer = timeit.Timer(statement, bind + ("_setup()" if setup else ""),
                         timer=time.perf_counter_ns,
                         globals={"_names": names, "_setup": setup})
    return Impl(what, timer.timeit)


def measure(columns: Dict[str, Column], settings: Settings, *, single: bool = False,
            cap: int = 200_000) -> Measured:
    """Run each column's loop once to warm up (a failing comparator is skipped; a raw C loop
    the kernel refuses skips the row; any other failure of raw C, cimport or linux_clone fails
    it), then repetitions of every loop, each round in one of balanced_orders: ns per call, one
    number per round.  A loop is n calls, n chosen so that raw C takes settings.loop_ns (at most
    `cap`); `single` rows (a process or a namespace per call) time single calls."""
    loops: Dict[str, Loop] = {}
    what: Dict[str, str] = {}
    skipped: Dict[str, str] = {}
    for name, column in columns.items():
        try:
            if isinstance(column, Skip):
                raise column
            impl = column if isinstance(column, Impl) else column()
        except Skip as exc:
            skipped[name] = str(exc)
            continue
        loops[name], what[name] = impl.loop, impl.what
    for name, loop in list(loops.items()):
        try:
            loop(1)
        except Exception as exc:
            if name == RAW and isinstance(exc, OSError):
                # Not ours to fix: a kernel without the call, a seccomp filter, a missing
                # capability (Docker's default profile refuses kcmp, for one).
                raise Skip(f"the raw C loop fails here: {exc.strerror}") from None
            if name in (RAW, CIMPORT, LC):
                raise
            skipped[name] = f"failed: {exc!r}"
            del loops[name], what[name]
    if single:
        n, repetitions = 1, settings.proc_repetitions
    else:
        probe = 32
        per_call = max(loops[RAW](probe) / probe, 1.0)
        n, repetitions = max(8, min(cap, int(settings.loop_ns / per_call))), settings.repetitions
    names = list(loops)
    samples: Dict[str, List[float]] = {name: [] for name in names}
    orders = balanced_orders(len(names))
    for rep in range(repetitions):
        for i in orders[rep % len(orders)]:
            samples[names[i]].append(loops[names[i]](n) / n)
    return Measured(n, samples, what, skipped)


def balanced_orders(n: int) -> List[List[int]]:
    """Orders of range(n) in which each column comes first equally often and follows each
    other column equally often (a Williams design: n orders, 2n when n is odd).  A rotation
    kept one neighbour: in the spawn row raw C always came after subprocess, whose netns the
    kernel was still tearing down, and linux_clone always after raw C (0.99× that way,
    1.13× the other way round, the same build)."""
    first = [0]
    low, high = 1, n - 1
    while len(first) < n:
        first.append(low)
        low += 1
        if len(first) < n:
            first.append(high)
            high -= 1
    orders = [[(x + shift) % n for x in first] for shift in range(n)]
    return orders + [order[::-1] for order in orders] if n % 2 else orders


# ---- what the rows use to make their calls ----

def forked(child: Callable[[], object]) -> int:
    """fork(); the child runs child() and _exits, 0 if it returned, else 1: the child's pid."""
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            child()
            status = 0
        finally:
            os._exit(status)
    return pid


def reap(pid: int) -> None:
    _, status = os.waitpid(pid, 0)
    if status != 0:
        raise RuntimeError(f"benchmark child {pid} ended with wait status {status:#x}")


def optional(module: str) -> Any:
    """`module`, or Skip saying why it does not import."""
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as exc:
        raise Skip(f"{module.split('.')[0]} is not installed ({exc.name})") from None
    except Exception as exc:  # a broken third-party install must not stop the benchmark
        raise Skip(f"{module} failed to import: {exc!r}") from None


def os_function(name: str) -> Any:
    """os.<name>, or Skip: os.setns and os.unshare exist from Python 3.12 on."""
    if not hasattr(os, name):
        raise Skip(f"os.{name} needs Python 3.12 (this is {platform.python_version()})")
    return getattr(os, name)


# ---- workers: every row runs in a forked child, so no namespace of ours ever changes ----

def in_worker(func: Callable[[], Any]) -> Any:
    """Call func() in a forked child and return its result or raise its exception (printing
    the child's traceback first, unless it is a Skip).  The child is killed and reaped if this
    process is interrupted."""
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
        try:
            linux_clone.unshare(linux_clone.NEWNET | linux_clone.NEWUTS)
        except OSError as exc:
            who = "root" if os.geteuid() == 0 else f"uid {os.geteuid()}"
            raise Skip(f"needs CAP_SYS_ADMIN: unshare(NEWNET|NEWUTS) as {who}: "
                       f"{exc.strerror}") from None

    try:
        in_worker(probe)
    except Skip as exc:
        return str(exc)
    return None


# ---- the machine ----

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


# Read once, on import: sysconfig loads its data lazily, from where a process that dropped
# its privileges may no longer read.
_FREE_THREADED_BUILD = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))


def _python() -> str:
    """The implementation and version, and for a free-threaded build whether the GIL is off."""
    text = f"{platform.python_implementation()} {platform.python_version()}"
    if _FREE_THREADED_BUILD:
        gil = getattr(sys, "_is_gil_enabled", lambda: True)()
        text += f" free-threaded ({'GIL on' if gil else 'GIL off'})"
    return text


def machine() -> Dict[str, Any]:
    libc, libc_version = platform.libc_ver()
    return {
        "kernel": platform.release(), "arch": platform.machine(), "cpu": _cpu_model(),
        "cpus": os.cpu_count(), "loadavg": [round(x, 2) for x in os.getloadavg()],
        "clocksource": _read("/sys/devices/system/clocksource/clocksource0/current_clocksource"),
        "python": _python(),
        "libc": f"{libc} {libc_version}".strip(), "euid": os.geteuid(),
    }


def versions() -> Dict[str, Optional[str]]:
    out: Dict[str, Optional[str]] = {}
    for name in ("linux_clone", "lxns", "pyroute2"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out

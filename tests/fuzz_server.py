"""The case runner of test_fuzz.py and the hostile arguments it sends: a small interpreter in
its own mount, network, UTS and IPC namespaces that reads pickled calls on stdin, runs them
in a forked case process, and answers how each call ended.

It imports only linux_clone (and the hostile Fileno and FsPath of conftest), so that forking
stays cheap.  A case process runs calls one
after another until one changes it (a successful unshare, setns, pivot_root or entered) or
it dies; a crash names the call in flight, the calls before it in that process, and whether
the call alone crashes a fresh process.  `Ref` names what exists only here (fds, file
objects, pids of this process family).
"""

from __future__ import annotations

import ctypes
import os
import pickle
import select
import shutil
import signal
import socket
import struct
import sys
import tempfile
from typing import Any, Dict, List, Optional, Tuple

import linux_clone
from conftest import Fileno, FsPath

MS_REC, MS_PRIVATE = 0x4000, 0x40000  # <sys/mount.h>
PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>


class ArgError(Exception):
    """What the hostile arguments raise; it may pass through the library unchanged."""


class Index:
    """An object that is an int through __index__, __int__ and __bool__ -- or raises."""

    def __init__(self, value: Any, raises: bool = False) -> None:
        self.value, self.raises = value, raises

    def __index__(self) -> Any:
        if self.raises:
            raise ArgError("__index__")
        return self.value

    __int__ = __index__

    def __bool__(self) -> bool:
        if self.raises:
            raise ArgError("__bool__")
        return bool(self.value)

    def __repr__(self) -> str:
        return f"Index({self.value!r}, raises={self.raises})"


class BadSequence:
    """A sequence whose len() raises ArgError (length None) or lies, and whose iteration
    raises ArgError after the items."""

    def __init__(self, items: List[Any], length: Optional[int] = None) -> None:
        self.items, self.length = items, length

    def __len__(self) -> int:
        if self.length is None:
            raise ArgError("__len__")
        return self.length

    def __getitem__(self, i: int) -> Any:
        return self.items[i]

    def __iter__(self) -> Any:
        yield from self.items
        raise ArgError("__iter__")

    def __repr__(self) -> str:
        return f"BadSequence({self.items!r}, length={self.length!r})"


class BadMapping(dict):  # type: ignore[type-arg]
    """A mapping whose items() raises ArgError."""

    def items(self) -> Any:
        raise ArgError("items")

    def __reduce__(self) -> Any:
        return BadMapping, (list(dict.items(self)),)


class MyInt(int):
    pass


class MyStr(str):
    pass


class Ref:
    """A value that exists only in the runner: a fixture fd or object, or a pid."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Ref({self.name!r})"


# clone() children: each returns at once.
def ret0() -> int:
    return 0


def ret_none() -> None:
    return None


def ret256() -> int:
    return 256


def raise_zero_division() -> float:
    return 1 / 0


def ret_text() -> str:
    return "text"


def exit_text() -> None:
    sys.exit("bye")


def exit3() -> None:
    sys.exit(3)


def os_exit5() -> None:
    os._exit(5)


CHILD_FUNCS = [ret0, ret_none, ret256, raise_zero_division, ret_text, exit_text, exit3,
               os_exit5, print]


def entered(*args: Any, **kwargs: Any) -> None:
    with linux_clone.entered(*args, **kwargs):
        pass


# Cases that must fail, so that a test sees the runner notice each kind of failure.
def selftest_segv() -> None:
    ctypes.string_at(0)


def selftest_key_error() -> None:
    raise KeyError(0)


def selftest_child_segv() -> int:
    return linux_clone.clone(selftest_segv)  # type: ignore[return-value]


SELFTESTS = {f.__name__: f for f in (selftest_segv, selftest_key_error, selftest_child_segv)}


class Fixtures:
    """Fds of every kind: a regular file, a directory, pipes, sockets, namespace files, a
    pidfd, a closed fd and one never opened."""

    def __init__(self) -> None:
        self.tmp = tempfile.mkdtemp(prefix="linux_clone-fuzz-")
        path = os.path.join(self.tmp, "file")
        with open(path, "w") as f:
            f.write("x")
        closed = os.open("/dev/null", os.O_RDONLY)
        os.close(closed)
        r, w = os.pipe()
        a, b = socket.socketpair()
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.values: Dict[str, Any] = {
            "tmp": self.tmp, "file_path": path, "file_obj": open(path, "rb"), "sock": a,
            "tcp": tcp, "fd:pipe_r": r, "fd:pipe_w": w, "fd:sock": b.fileno(),
            "fd:tcp": tcp.fileno(), "fd:closed": closed, "fd:never": 1000,
            "fd:pidfd": linux_clone.pidfd_open(os.getpid()),
            "fd:dir": os.open(self.tmp, os.O_RDONLY | os.O_DIRECTORY),
            "fd:devnull": os.open("/dev/null", os.O_RDWR)}
        self.values["fd:file"] = self.values["file_obj"].fileno()
        self._b = b
        for ns in NS_NAMES:
            self.values[f"fd:ns_{ns}"] = os.open(f"/proc/self/ns/{ns}", os.O_RDONLY | os.O_CLOEXEC)

    def resolve(self, value: Any) -> Any:
        if isinstance(value, Ref):
            if value.name == "pid:self":
                return os.getpid()
            if value.name == "pid:parent":
                return os.getppid()
            return self.values[value.name]
        if isinstance(value, (Fileno, FsPath, Index)):
            value.value = self.resolve(value.value)
        elif isinstance(value, BadSequence):
            value.items = [self.resolve(v) for v in value.items]
        elif type(value) in (list, tuple):
            return type(value)(self.resolve(v) for v in value)
        elif type(value) is dict:
            return {self.resolve(k): self.resolve(v) for k, v in value.items()}
        return value


NS_NAMES = ("net", "uts", "ipc", "mnt", "user", "pid", "cgroup", "time")
FIXTURE_FDS = ["fd:file", "fd:pipe_r", "fd:pipe_w", "fd:sock", "fd:tcp", "fd:closed", "fd:never",
               "fd:pidfd", "fd:dir", "fd:devnull", *(f"fd:ns_{ns}" for ns in NS_NAMES)]
FIXTURE_OBJECTS = ["file_obj", "sock", "tcp"]
FIXTURE_PATHS = ["tmp", "file_path"]


def _classify(exc: BaseException) -> Optional[str]:
    """None for an exception the library may raise, else what is wrong with it."""
    if isinstance(exc, ArgError):
        return None
    if isinstance(exc, OSError):
        return None if exc.errno is not None else f"OSError without errno: {exc!r}"
    if isinstance(exc, (TypeError, ValueError, OverflowError)):
        return None
    return f"{type(exc).__name__}: {exc}"


def _reap_all() -> List[int]:
    """Wait for every child (clone children may have no exit signal); their statuses."""
    statuses = []
    while True:
        try:
            _, status = os.waitpid(-1, linux_clone.WALL)
        except ChildProcessError:
            return statuses
        statuses.append(status)


# Calls that change the calling process (its namespaces, root, fd table) when they succeed:
# the case process is replaced after one of them.
STATEFUL = ("unshare", "setns", "pivot_root", "entered")


def _read_frame(fd: int) -> Any:
    """One length-prefixed pickle from fd, or None at EOF."""
    data = b""
    while len(data) < 4 or len(data) < 4 + struct.unpack("<I", data[:4])[0]:
        chunk = os.read(fd, 65536)
        if not chunk:
            return None
        data += chunk
    return pickle.loads(data[4:])


def _write_frame(fd: int, value: Any) -> None:
    data = pickle.dumps(value)
    data = struct.pack("<I", len(data)) + data
    while data:
        data = data[os.write(fd, data):]


def _quiet_signals() -> None:
    """Ignore every signal whose default would end the process, so that a clone child's exit
    signal (any of them, as the caller asks) cannot.  A fault still kills: the kernel
    resets an ignored SIGSEGV, SIGBUS, SIGFPE or SIGILL it forces to the default."""
    for sig in range(1, signal.NSIG):
        if sig in (signal.SIGKILL, signal.SIGSTOP, signal.SIGCHLD):
            continue
        try:
            signal.signal(sig, signal.SIG_IGN)
        except (OSError, ValueError):
            pass  # glibc's internal real-time signals


def _case_process(fixtures: Fixtures, rfd: int, wfd: int) -> None:
    """Run the cases the runner sends until one of them changes this process."""
    os.setpgid(0, 0)
    # pivot_root() moves every process of the mount namespace whose root is the old one:
    # each case process has a mount namespace of its own.
    linux_clone.unshare(linux_clone.NEWNS)
    null = os.open("/dev/null", os.O_WRONLY)
    os.dup2(null, 1)  # the runner's stdout is its answer pipe; clone children print here
    os.dup2(null, 2)
    _quiet_signals()
    baseline = set(map(int, os.listdir("/proc/self/fd")))
    while True:
        call = _read_frame(rfd)
        if call is None:
            return
        name, args, kwargs = call
        func = SELFTESTS.get(name) or (entered if name == "entered"
                                       else getattr(linux_clone, name))
        result = None
        try:
            result = func(*fixtures.resolve(args), **fixtures.resolve(kwargs))
            report: Tuple[Any, ...] = ("returned", type(result).__name__, None, None)
        except BaseException as exc:  # noqa: BLE001 -- every escape is classified
            report = ("raised", type(exc).__name__, getattr(exc, "errno", None), _classify(exc))
        report += (_reap_all(),)
        result = None
        last = name in STATEFUL and report[0] == "returned"
        if not last:
            for fd in set(map(int, os.listdir("/proc/self/fd"))) - baseline:
                try:
                    os.close(fd)  # pidfds and namespace fds the calls returned
                except OSError:
                    pass
        _write_frame(wfd, report + (last,))
        if last:
            return


class CaseProcess:
    """A forked process that runs cases one after another; a crash ends it with a signal."""

    def __init__(self, fixtures: Fixtures) -> None:
        to_r, self.to_w = os.pipe()
        self.from_r, from_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            try:
                os.close(self.to_w)
                os.close(self.from_r)
                _case_process(fixtures, to_r, from_w)
            finally:
                os._exit(0)
        os.close(to_r)
        os.close(from_w)
        self.history: List[Any] = []

    def run(self, call: Any, timeout: float) -> Dict[str, Any]:
        self.history.append(call)
        try:
            _write_frame(self.to_w, call)
        except BrokenPipeError:
            pass
        if not select.select([self.from_r], [], [], timeout)[0]:
            self.end()
            return {"hung": True}
        report = _read_frame(self.from_r)
        if report is None:
            return {"crashed": self.end(), "history": self.history[-20:-1]}
        if report[-1]:
            self.end()
        while True:  # CLONE_PARENT children: siblings of this process, children of ours
            try:
                if os.waitpid(-1, os.WNOHANG | linux_clone.WALL)[0] == 0:
                    break
            except ChildProcessError:
                break
        return {"report": report[:-1]}

    def end(self) -> int:
        """Kill what is left of the process group, reap everything, return the wait status
        of the case process."""
        os.close(self.to_w)
        os.close(self.from_r)
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _, status = os.waitpid(self.pid, 0)
        _reap_all()  # orphans of the case process: this process is their subreaper
        self.pid = 0
        return status


def serve(timeout: float) -> None:
    """Read (name, args, kwargs) frames on stdin and answer each with a result frame."""
    linux_clone.unshare(linux_clone.NEWNS | linux_clone.NEWNET | linux_clone.NEWUTS
                        | linux_clone.NEWIPC)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        raise OSError(ctypes.get_errno(), "mount --make-rprivate /")
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_CHILD_SUBREAPER")
    fixtures = Fixtures()
    os.chdir(fixtures.tmp)
    out = os.dup(1)
    os.dup2(os.open("/dev/null", os.O_WRONLY), 1)
    case: Optional[CaseProcess] = None
    try:
        while True:
            call = _read_frame(0)
            if call is None:
                return
            if case is None or case.pid == 0:
                case = CaseProcess(fixtures)
            answer = case.run(call, timeout)
            if "crashed" in answer:
                # Does the case crash on its own, in a fresh process?
                fresh = CaseProcess(fixtures)
                answer["alone"] = fresh.run(call, timeout).get("crashed")
                if fresh.pid:
                    fresh.end()
            _write_frame(out, answer)
    finally:
        if case is not None and case.pid:
            case.end()
        shutil.rmtree(fixtures.tmp, ignore_errors=True)

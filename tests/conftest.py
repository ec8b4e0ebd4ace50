"""Shared helpers: run a function in a forked child (so the runner's namespaces, mounts and
credentials never change), run a Python snippet or one of the programs in tests/programs/ in a
fresh interpreter, the privilege probe whose skips become failures when
LINUX_CLONE_REQUIRE_PRIVILEGE=1 (as in CI), what the tests look at (exit codes, fds, children,
pidfds) and the hostile argument objects."""

from __future__ import annotations

import contextlib
import errno
import os
import pickle
import subprocess
import sys
import threading
import time
import traceback
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import pytest

REQUIRE_PRIVILEGE = os.environ.get("LINUX_CLONE_REQUIRE_PRIVILEGE") == "1"


def in_child(func: Callable[..., Any], *args: Any, timeout: float = 60) -> Any:
    """Call func(*args) in a forked child and return its result, or raise its exception.

    A child that dies by a signal or exits without answering fails the calling test.
    """
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(rfd)
        try:
            try:
                payload = (True, func(*args))
            except BaseException as exc:
                payload = (False, (exc, traceback.format_exc()))
            data = pickle.dumps(payload)
        except BaseException as exc:
            data = pickle.dumps((False, (RuntimeError(repr(exc)), traceback.format_exc())))
        with os.fdopen(wfd, "wb") as f:
            f.write(data)
        os._exit(0)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    if not data:
        pytest.fail(f"test child ended without an answer: wait status {status:#x}")
    ok, value = pickle.loads(data)
    if ok:
        return value
    exc, text = value
    exc.__notes__ = [f"in the child:\n{text}"]
    raise exc


def in_clone(start: Callable[[Callable[[], int]], Any], func: Callable[[], Any]) -> Tuple[int, Any]:
    """Start func() in a child with start(child) (a linux_clone.clone/clone3 call); return the
    child's exit code (-N: killed by signal N) and what func returned (pickled through a pipe,
    None if nothing came).  A pidfd in the result is closed; the child is reaped."""
    rfd, wfd = os.pipe()

    def child() -> int:
        os.close(rfd)
        data = pickle.dumps(func())
        with os.fdopen(wfd, "wb") as f:
            f.write(data)
        return 0

    try:
        result = start(child)
    except BaseException:
        os.close(rfd)
        raise
    finally:
        os.close(wfd)
    if isinstance(result, tuple):
        os.close(result[1])
        result = result[0]
    with os.fdopen(rfd, "rb") as f:
        data = f.read()
    _, status = os.waitpid(result, 0x40000000)  # __WALL: any exit signal
    return os.waitstatus_to_exitcode(status), pickle.loads(data) if data else None


@contextlib.contextmanager
def running_threads(n: int) -> Iterator[None]:
    """n Python threads that keep running (taking and dropping the GIL) inside the block."""
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            sum(range(200))
            time.sleep(0.0002)

    threads = [threading.Thread(target=spin, daemon=True) for _ in range(n)]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join()


def python_env(**extra: str) -> Dict[str, str]:
    """The environment for a child interpreter, as a user has it: no PYTHONUNBUFFERED."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    env.update(extra)
    return env


def run_python(code: str, *, timeout: float = 120, input: Optional[bytes] = None,
               **kwargs: Any) -> subprocess.CompletedProcess:
    """Run `code` in a new interpreter (this one's) with pipes for stdout and stderr, from /
    unless told otherwise: in the checkout the source tree would shadow the installed package."""
    return _run_interpreter(["-c", code], timeout, input, kwargs)


# How many times slower than this machine the tests' time bounds may be: .ci/kernels sets
# LINUX_CLONE_TIME_SCALE for its emulated (TCG) guests.
TIME_SCALE = float(os.environ.get("LINUX_CLONE_TIME_SCALE", "1"))

PROGRAMS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "programs")


def run_program(name: str, *args: Any, options: Sequence[str] = (), timeout: float = 120,
                input: Optional[bytes] = None, **kwargs: Any) -> subprocess.CompletedProcess:
    """Run tests/programs/<name>.py with `args` (as strings) on its command line, as run_python
    runs code, the interpreter given `options` (-I, -S, ...); the program may import the
    helper modules of tests/ (leak_measure, ...)."""
    return _run_interpreter([*options, os.path.join(PROGRAMS, f"{name}.py"), *map(str, args)],
                            timeout, input, kwargs, PYTHONPATH=os.path.dirname(PROGRAMS))


def _run_interpreter(args: List[str], timeout: float, input: Optional[bytes],
                     kwargs: Dict[str, Any], **env: str) -> subprocess.CompletedProcess:
    kwargs.setdefault("cwd", "/")
    return subprocess.run([sys.executable, *args], capture_output=True, timeout=timeout,
                          env=python_env(**env), input=input, **kwargs)


def _probe_privilege() -> Optional[str]:
    """None when this process may create every namespace type, else why not."""
    if os.geteuid() != 0:
        return "needs root"

    def probe() -> None:
        import linux_clone
        linux_clone.unshare(linux_clone.NEWNET | linux_clone.NEWNS | linux_clone.NEWUTS
                            | linux_clone.NEWIPC | linux_clone.NEWUSER)

    try:
        in_child(probe)
    except OSError as exc:
        return f"cannot create namespaces here: {exc}"
    return None


_PRIVILEGE: Dict[str, Optional[str]] = {}


@pytest.fixture
def privileged() -> None:
    """Skip a test that needs root and namespaces when they are missing -- a failure in CI."""
    if "reason" not in _PRIVILEGE:
        _PRIVILEGE["reason"] = _probe_privilege()
    reason = _PRIVILEGE["reason"]
    if reason is not None:
        if REQUIRE_PRIVILEGE:
            pytest.fail(f"LINUX_CLONE_REQUIRE_PRIVILEGE=1 but {reason}")
        pytest.skip(reason)


def drop_privileges(uid: int = 65534, gid: int = 65534) -> None:
    """Become an unprivileged user (in a child: this cannot be undone), dumpable again as a
    user's own process is, so that its /proc/<pid> files (uid_map, ...) belong to it."""
    import ctypes
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    PR_SET_DUMPABLE = 4
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)


def main_as_nobody(main: Callable[[List[str]], int], args: Sequence[str],
                   timeout: float = 60) -> Tuple[int, str, str]:
    """main(args) (a command-line tool's main) in a forked child that has become uid/gid
    65534: (status, stdout, stderr).  In-process, because the interpreter may live where uid
    65534 cannot run it (/root)."""
    import tempfile

    def run() -> Tuple[int, str, str]:
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            os.dup2(out.fileno(), 1)
            os.dup2(err.fileno(), 2)
            sys.stdout, sys.stderr = out, err
            os.chdir("/")
            drop_privileges()
            status = main(list(args))
            for f in (out, err):
                f.flush()
                f.seek(0)
            return status, out.read(), err.read()

    return in_child(run, timeout=timeout)  # type: ignore[no-any-return]


def ns_inode(kind: str, pid: Union[int, str] = "self") -> int:
    """The inode of /proc/<pid>/ns/<kind>: equal inodes, same namespace."""
    return os.stat(f"/proc/{pid}/ns/{kind}").st_ino


def wait_code(pid: int, options: int = 0) -> int:
    """Reap `pid`; its exit code as subprocess reports it (-N: killed by signal N)."""
    _, status = os.waitpid(pid, options)
    return os.waitstatus_to_exitcode(status)


def fd_count() -> int:
    """How many fds this process has open."""
    return len(os.listdir("/proc/self/fd"))


def children_of(pid: int) -> List[int]:
    """The pids whose parent is `pid` (zombies included), from /proc."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        if int(stat[stat.rindex(b")") + 2:].split()[1]) == pid:
            found.append(int(name))
    return found


def pidfd_exit(result: Any, options: int = 0) -> Tuple[int, int, int]:
    """For the (pid, pidfd) a clone or spawn returned: check that the pidfd is close-on-exec
    and refers to pid, wait through it (WEXITED | options) and close it; the child's
    (si_pid, si_code, si_status)."""
    assert isinstance(result, tuple) and len(result) == 2
    pid, pidfd = result
    try:
        assert not os.get_inheritable(pidfd)
        with open(f"/proc/self/fdinfo/{pidfd}") as f:
            assert f"Pid:\t{pid}\n" in f.read()
        info = os.waitid(os.P_PIDFD, pidfd, os.WEXITED | options)
    finally:
        os.close(pidfd)
    assert info is not None
    return info.si_pid, info.si_code, info.si_status


def no_children_left() -> bool:
    """True when this process has no child at all, running or zombie."""
    try:
        os.waitpid(-1, os.WNOHANG | 0x40000000)  # __WALL: any exit signal
    except ChildProcessError:
        return children_of(os.getpid()) == []
    return False


# ---- a sandbox: a process in namespaces of its own, driven through pipes ----

_CLONE_NEWNS, _CLONE_NEWUTS, _CLONE_NEWIPC = 0x20000, 0x4000000, 0x8000000
_CLONE_NEWPID, _CLONE_NEWNET = 0x20000000, 0x40000000
_MS_NOSUID, _MS_NODEV, _MS_NOEXEC, _MS_REC, _MS_PRIVATE = 2, 4, 8, 0x4000, 0x40000


def _libc_call(name: str, *args: Any) -> None:
    """A libc call through ctypes (independent of linux_clone), OSError on failure."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    if getattr(libc, name)(*args) == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"{name}: {os.strerror(err)}")


class SandboxHang(Exception):
    """The sandbox did not answer in time (it has been killed)."""


class SandboxDied(Exception):
    """The sandbox's process ended before answering; `status` is its wait status."""

    def __init__(self, status: int, log: str) -> None:
        super().__init__(f"wait status {status:#x} ({_describe_status(status)}); its "
                         f"stderr ends with:\n{log}")
        self.status = status


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit {os.WEXITSTATUS(status)}"


def send_message(fd: int, obj: Any) -> None:
    """One length-prefixed pickle on fd, written whole (signals may split a write)."""
    data = pickle.dumps(obj)
    view = memoryview(len(data).to_bytes(4, "little") + data)
    while view:
        view = view[os.write(fd, view):]


def _read_exact(fd: int, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = os.read(fd, n - len(out))
        if not chunk:
            raise EOFError
        out += chunk
    return out


def receive_message(fd: int) -> Any:
    """The next message send_message wrote on fd (blocking); EOFError at the end."""
    return pickle.loads(_read_exact(fd, int.from_bytes(_read_exact(fd, 4), "little")))


class Sandbox:
    """target(channel, *args) in a process of its own: new pid, mount (/ private, a /proc of
    its pid namespace), network, UTS and IPC namespaces, under an init process, so that
    namespaces, mounts, hostnames and processes made there stay there; killing the init ends
    every process in it.  Its stdout and stderr go to a log file (`log()` reads the end).

    The target sends messages with channel.send(obj) and reads them with channel.recv().
    recv(timeout) here returns its next message, raises SandboxHang when none came in time
    (the sandbox is then killed) and SandboxDied when the target ended without one.
    """

    def __init__(self, target: Callable[..., Any], *args: Any) -> None:
        import tempfile
        self._log = tempfile.TemporaryFile()
        to_r, to_w = os.pipe()
        from_r, from_w = os.pipe()
        self._status: Optional[int] = None
        pid = os.fork()
        if pid == 0:  # the supervisor: new namespaces, then their init
            try:
                os.close(to_w)
                os.close(from_r)
                _libc_call("unshare", _CLONE_NEWPID | _CLONE_NEWNS | _CLONE_NEWNET
                           | _CLONE_NEWUTS | _CLONE_NEWIPC)
                _libc_call("mount", b"none", b"/", None, _MS_REC | _MS_PRIVATE, None)
                # The init starts the target only once its pid is sent: first message.
                gate_r, gate_w = os.pipe()
                init = os.fork()
                if init == 0:
                    os.close(gate_w)
                    os.read(gate_r, 1)
                    os.close(gate_r)
                    self._init(target, args, to_r, from_w)
                send_message(from_w, ("__init__", init))
                os.write(gate_w, b"1")
                os.waitpid(init, 0)
            except BaseException:
                traceback.print_exc()
            os._exit(0)
        os.close(to_r)
        os.close(from_w)
        self.pid, self._to, self._from = pid, to_w, from_r
        self._init_pid: Optional[int] = None
        kind, self._init_pid = self.recv(30)
        assert kind == "__init__"

    def _init(self, target: Callable[..., Any], args: Tuple[Any, ...], rfd: int,
              wfd: int) -> None:
        """pid 1 of the sandbox: mount its /proc, start the target, reap, report its end."""
        try:
            _libc_call("mount", b"proc", b"/proc", b"proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC,
                       None)
            child = os.fork()
            if child == 0:
                try:
                    os.dup2(self._log.fileno(), 1)
                    os.dup2(self._log.fileno(), 2)
                    sys.stdout = open(1, "w", closefd=False)
                    sys.stderr = open(2, "w", buffering=1, closefd=False)
                    import faulthandler
                    if faulthandler.is_enabled():  # pytest's, to its own stderr: to the log
                        faulthandler.enable(sys.stderr)
                    target(_Channel(rfd, wfd), *args)
                    code = 0
                except BaseException:
                    traceback.print_exc()
                    code = 1
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(code)
            while True:
                pid, status = os.waitpid(-1, 0)
                if pid == child:
                    send_message(wfd, ("__exit__", status))
                    break
        except BaseException:
            traceback.print_exc()
        os._exit(0)

    def send(self, obj: Any) -> None:
        send_message(self._to, obj)

    def recv(self, timeout: float) -> Any:
        import select
        if not select.select([self._from], [], [], timeout)[0]:
            self.kill()
            raise SandboxHang(f"no answer in {timeout} s")
        try:
            message = receive_message(self._from)
        except EOFError:
            self.kill()
            raise SandboxDied(self._reap(), self.log()) from None
        if isinstance(message, tuple) and message and message[0] == "__exit__":
            self.kill()
            raise SandboxDied(message[1], self.log())
        return message

    def log(self, tail: int = 3000) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-tail:]

    def _reap(self) -> int:
        if self._status is None:
            self._status = os.waitpid(self.pid, 0)[1]
        return self._status

    def kill(self) -> None:
        """End every process in the sandbox (its init's death takes the pid namespace)."""
        if self._init_pid is not None and self._status is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._init_pid, 9)
        self._reap()

    def close(self) -> None:
        self.kill()
        for fd in (self._to, self._from):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._log.close()


class _Channel:
    """The target's end of a Sandbox's pipes."""

    def __init__(self, rfd: int, wfd: int) -> None:
        self.rfd, self.wfd = rfd, wfd

    def send(self, obj: Any) -> None:
        send_message(self.wfd, obj)

    def recv(self) -> Any:
        return receive_message(self.rfd)


def remove_cgroup(path: str) -> None:
    """rmdir a test's cgroup, retrying while the kernel still releases exited members."""
    for _ in range(200):
        try:
            os.rmdir(path)
            return
        except OSError as exc:  # EBUSY until the last exited member is released
            if exc.errno != errno.EBUSY:
                raise
            time.sleep(0.005)


# Hostile argument objects: fileno() / __fspath__ answer `value`, or raise it if it is an
# exception.
class Fileno:
    def __init__(self, value: Any) -> None:
        self.value = value

    def fileno(self) -> Any:
        if isinstance(self.value, BaseException):
            raise self.value
        return self.value

    def __repr__(self) -> str:
        return f"Fileno({self.value!r})"


class FsPath:
    def __init__(self, value: Any) -> None:
        self.value = value

    def __fspath__(self) -> Any:
        if isinstance(self.value, BaseException):
            raise self.value
        return self.value

    def __repr__(self) -> str:
        return f"FsPath({self.value!r})"

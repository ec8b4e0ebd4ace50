"""Shared helpers: run a function in a forked child (so the runner's namespaces, mounts and
credentials never change), run a Python snippet in a fresh interpreter, and the privilege
probe whose skips become failures when LINUX_CLONE_REQUIRE_PRIVILEGE=1 (as in CI)."""

from __future__ import annotations

import contextlib
import os
import pickle
import subprocess
import sys
import threading
import time
import traceback
from typing import Any, Callable, Dict, Iterator, Optional, Tuple, Union

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
    kwargs.setdefault("cwd", "/")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=timeout,
                          env=python_env(), input=input, **kwargs)


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


def ns_inode(kind: str, pid: Union[int, str] = "self") -> int:
    """The inode of /proc/<pid>/ns/<kind>: equal inodes, same namespace."""
    return os.stat(f"/proc/{pid}/ns/{kind}").st_ino

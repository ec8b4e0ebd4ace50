"""spawn's stdio options, Popen and run(): each option next to subprocess on the same command."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from typing import Any, Callable, Dict, Tuple

import pytest

import linux_clone

from conftest import in_child

# The program whose fds are compared: {fd: what it is} for every fd it has at start, pipes
# and sockets by kind only (their inodes differ between runs).
FD_STATUS = r"""
import json, os, sys
fds = {}
for name in os.listdir("/proc/self/fd"):
    try:
        target = os.readlink("/proc/self/fd/" + name)
    except OSError:
        continue  # listdir's own fd, closed again
    fds[name] = target.split(":")[0] if target.startswith(("pipe:", "socket:")) else target
json.dump(fds, sys.stdout)
"""
FD_STATUS_ARGV = [sys.executable, "-S", "-c", FD_STATUS]


def both(call: Callable[[Any], Any]) -> Tuple[Any, Any]:
    """call(subprocess) and call(linux_clone), each in a forked child (so fds opened or closed
    for the case stay there): their results."""
    return in_child(call, subprocess), in_child(call, linux_clone)


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


# ---- the names ----

def test_constants_are_subprocess_ones() -> None:
    assert (linux_clone.PIPE, linux_clone.STDOUT, linux_clone.DEVNULL) == (
        subprocess.PIPE, subprocess.STDOUT, subprocess.DEVNULL)


# ---- spawn: stdio without pipes ----

def test_spawn_stdout_to_a_file_object_and_stderr_to_stdout(tmp_path: Any) -> None:
    path = tmp_path / "out"
    with open(path, "wb") as f:
        pid = linux_clone.spawn(["sh", "-c", "echo out; echo err >&2"], stdout=f,
                                stderr=linux_clone.STDOUT)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    assert path.read_bytes() == b"out\nerr\n"


def test_spawn_devnull_and_fd(tmp_path: Any) -> None:
    fd = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC)
    try:
        pid = linux_clone.spawn(["sh", "-c", "cat; echo done"], stdin=linux_clone.DEVNULL,
                                stdout=fd)
    finally:
        os.close(fd)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    assert (tmp_path / "out").read_bytes() == b"done\n"


@pytest.mark.parametrize("kwargs, exc_type", [
    ({"stdout": linux_clone.PIPE}, ValueError),
    ({"stdin": linux_clone.STDOUT}, ValueError),
    ({"stdout": -5}, ValueError),
    ({"pass_fds": [-1]}, ValueError),
    ({"pass_fds": [2**31]}, OverflowError),
    ({"pass_fds": [3.0]}, TypeError),
    ({"umask": -2}, ValueError),
    ({"stdin": "not a file"}, AttributeError),
])
def test_spawn_bad_stdio_options_raise_before_any_child(kwargs: Dict[str, Any],
                                                        exc_type: type) -> None:
    def attempt() -> Tuple[str, int]:
        before = fd_count()
        with pytest.raises(exc_type) as info:
            linux_clone.spawn(["/bin/true"], stdin=linux_clone.DEVNULL if "stdin" not in kwargs
                              else kwargs.pop("stdin"), **kwargs)
        with pytest.raises(ChildProcessError):
            os.waitpid(-1, os.WNOHANG)
        return type(info.value).__name__, fd_count() - before

    assert in_child(attempt) == (exc_type.__name__, 0)


def test_spawn_bad_fd_is_the_oserror_subprocess_raises() -> None:
    def attempt(module: Any) -> Tuple[int, bool]:
        before = fd_count()
        try:
            if module is subprocess:
                subprocess.Popen(["/bin/true"], stdin=99)
            else:
                linux_clone.spawn(["/bin/true"], stdin=99)
        except OSError as exc:
            with pytest.raises(ChildProcessError):
                os.waitpid(-1, os.WNOHANG)
            return exc.errno, fd_count() == before
        raise AssertionError("no error")

    assert both(attempt) == ((errno.EBADF, True), (errno.EBADF, True))

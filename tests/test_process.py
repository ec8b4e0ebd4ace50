"""spawn's stdio options, Popen and run(): each option next to subprocess on the same command."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import signal
import subprocess
import sys
import threading
from typing import Any, Callable, Dict, List, Set, Tuple

import pytest

import linux_clone
from linux_clone import NEWNET, NEWUSER

from conftest import Fileno, fd_count, in_child, run_python

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
    ({"pass_fds": [2**31]}, ValueError),
    ({"pass_fds": [3.0]}, TypeError),
    ({"umask": 2**31}, OverflowError),
    ({"stdin": "not a file"}, TypeError),  # subprocess: AttributeError
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


def outcome(module: Any, argv: List[str], **kwargs: Any) -> Any:
    """module.run(argv, capture_output=True, **kwargs): its (returncode, stdout), or the type of
    what it raised."""
    try:
        result = module.run(argv, capture_output=True, **kwargs)
    except Exception as exc:
        return type(exc).__name__
    return result.returncode, result.stdout


@pytest.mark.parametrize("env", [{"": "x"}, {"A=B": "x"}, {"=A": "x"}, {"A": "x\0"},
                                 {b"A": b"x"}, {"PATH": "/bin", b"PATH": b"/bin"}])
def test_env_names_as_subprocess(env: Dict[Any, Any]) -> None:
    # An empty name is passed through ("=x"), as subprocess's fork_exec passes it (3.13's
    # posix_spawn path, for a program with a slash, refuses it: the other way of the two).
    assert both(lambda module: outcome(module, ["env"], env=env)) == (
        outcome(subprocess, ["env"], env=env),) * 2


@pytest.mark.parametrize("umask", [-1, -2, -2**31, 0o1777, 2**31, -2**31 - 1, 1.0])
def test_umask_values_as_subprocess(umask: Any) -> None:
    # A negative umask, any of them, keeps the caller's; the rest is a C int.
    sp, lc = both(lambda module: outcome(module, ["sh", "-c", "umask"], umask=umask))
    assert lc == sp


@pytest.mark.parametrize("fds", [[-1], [2**31], [2**64], [5, 5, -3]])
def test_pass_fds_out_of_range_as_subprocess(fds: List[int]) -> None:
    sp, lc = both(lambda module: outcome(module, ["true"], pass_fds=fds))
    assert lc == sp == "ValueError"


def test_bufsize_none_is_the_default_as_subprocess() -> None:
    def case(module: Any) -> Any:
        with module.Popen(["echo", "x"], stdout=module.PIPE, bufsize=None) as proc:
            return type(proc.stdout).__name__, proc.communicate()[0]

    sp, lc = both(case)
    assert lc == sp == ("BufferedReader", b"x\n")


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


# ---- the fds the program gets ----

def fd_status(module: Any, **kwargs: Any) -> Dict[str, str]:
    """The fds FD_STATUS_ARGV starts with, run by module.run with its stdout on a pipe."""
    return json.loads(module.run(FD_STATUS_ARGV, stdout=module.PIPE, check=True,
                                 **kwargs).stdout)


def test_close_fds_default_passes_only_0_to_2() -> None:
    def case(module: Any) -> Dict[str, str]:
        fd = os.open("/dev/null", os.O_RDONLY)
        os.set_inheritable(fd, True)
        return fd_status(module)

    theirs, ours = both(case)
    assert ours == theirs and set(ours) == {"0", "1", "2"}


def test_close_fds_false_passes_inheritable_fds() -> None:
    def case(module: Any) -> Dict[str, str]:
        fd = os.open("/dev/null", os.O_RDONLY)
        os.set_inheritable(fd, True)
        os.open("/dev/zero", os.O_RDONLY)  # close-on-exec: never passed
        return fd_status(module, close_fds=False)

    theirs, ours = both(case)
    assert ours == theirs and "/dev/null" in ours.values() and "/dev/zero" not in ours.values()


def test_pass_fds() -> None:
    def case(module: Any) -> Dict[str, str]:
        keep = [os.open(path, os.O_RDONLY) for path in ("/dev/null", "/dev/zero")]
        os.open("/dev/full", os.O_RDONLY)
        return fd_status(module, pass_fds=[keep[1], keep[0], keep[1]])

    theirs, ours = both(case)
    assert ours == theirs
    assert "/dev/zero" in ours.values() and "/dev/full" not in ours.values()


def test_pass_fds_with_close_fds_false_warns_as_subprocess() -> None:
    with pytest.warns(RuntimeWarning, match="pass_fds overriding close_fds"):
        linux_clone.run(["/bin/true"], pass_fds=[0], close_fds=False)


def test_pass_fds_redirected() -> None:
    """CPython issue 32270: pass_fds that are also the program's stdin, stdout, stderr."""
    def case(module: Any) -> Tuple[List[int], Dict[str, str]]:
        fds = [os.open("/dev/null", os.O_RDWR) for _ in range(2)]
        rfd, wfd = os.pipe()
        fds.insert(1, wfd)
        with module.Popen(FD_STATUS_ARGV, stdin=fds[0], stdout=fds[1], stderr=fds[2],
                          pass_fds=fds):
            os.close(wfd)
            with os.fdopen(rfd, "rb") as f:
                return fds, json.loads(f.read())

    theirs, ours = both(case)
    assert ours == theirs
    fds, status = ours
    assert set(status) == {"0", "1", "2", *map(str, fds)}


def test_pass_fds_colliding_with_the_pipes() -> None:
    """pass_fds naming the fds the parent's pipe ends get: the program does not get them,
    so `cat` sees the end of its input."""
    def case(module: Any) -> Tuple[bytes, int]:
        r1, w1 = os.pipe()
        r2, w2 = os.pipe()
        for fd in (r1, w1, r2, w2):
            os.close(fd)
        proc = module.Popen(["cat"], stdin=module.PIPE, stdout=module.PIPE,
                            pass_fds=[r1, w1, r2, w2])
        out, _ = proc.communicate(b"through", timeout=30)
        return out, proc.returncode

    assert both(case) == ((b"through", 0), (b"through", 0))


def _with_stdio_closed(module: Any, call: Callable[[Any], Any]) -> Any:
    """call(module) with fds 0, 1 and 2 closed: the pipes made take their numbers."""
    for fd in (0, 1, 2):
        os.close(fd)
    return call(module)


@pytest.mark.parametrize("kwargs", [
    {"stdin": -1, "stdout": -1, "stderr": -1},
    {"stdout": -1},
    {"stdout": -1, "stderr": -2},
    {"stderr": -1},
    {"stdin": -1, "stderr": -1},
], ids=["all", "stdout", "stdout+STDOUT", "stderr", "stdin+stderr"])
def test_stdio_closed_in_the_parent(kwargs: Dict[str, int]) -> None:
    def case(module: Any) -> Tuple[Any, Any, int]:
        def run(module: Any) -> Any:
            proc = module.Popen(["sh", "-c", "cat; echo out; echo err >&2"], **kwargs)
            return proc.communicate(b"in" if proc.stdin else None, timeout=30) + (
                proc.returncode,)
        return _with_stdio_closed(module, run)

    theirs, ours = both(case)
    assert ours == theirs


@pytest.mark.parametrize("order", [(0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1),
                                   (2, 1, 0)])
def test_swapped_stdio_fds(order: Tuple[int, int, int]) -> None:
    """stdin, stdout, stderr given as fds 0-2 in any order (CPython's _check_swap_fds)."""
    def case(module: Any) -> List[bytes]:
        paths = [f"/tmp/lc-swap-{os.getpid()}-{i}" for i in range(3)]
        try:
            for i, path in enumerate(paths):
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
                os.dup2(fd, i)
                os.close(fd)
            os.write(order[0], b"input")
            os.lseek(order[0], 0, os.SEEK_SET)
            module.run(["sh", "-c", "cat; echo err >&2"], stdin=order[0], stdout=order[1],
                       stderr=order[2], check=True)
            out = []
            for i in range(3):
                os.lseek(i, 0, os.SEEK_SET)
                out.append(os.read(i, 100))
            return out
        finally:
            for path in paths:
                os.unlink(path)

    theirs, ours = both(case)
    assert ours == theirs
    assert ours[order[1]].startswith(b"input") and ours[order[2]].endswith(b"err\n")


def test_stderr_to_stdout_without_stdout_is_the_callers_stdout() -> None:
    def case(module: Any) -> bytes:
        rfd, wfd = os.pipe()
        os.dup2(wfd, 1)
        os.close(wfd)
        sys.__stdout__ = sys.stdout = open(1, "w", closefd=False)
        module.run(["sh", "-c", "echo err >&2"], stderr=module.STDOUT)
        os.close(1)
        return os.read(rfd, 100)

    assert both(case) == (b"err\n", b"err\n")


# close_range is 436 in x86-64's table and in the generic one (aarch64).
CLOSE_RANGE_436 = os.uname().machine in ("x86_64", "aarch64")


def fail_close_range(err: int, only_cloexec: bool) -> None:
    """In a child: from now on, close_range fails with `err` (only with CLOSE_RANGE_CLOEXEC
    in its flags, as on Linux 5.9 and 5.10), as on a kernel without it (before 5.9)."""
    import ctypes

    class SockFilter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8),
                    ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]

    close_range_nr, cloexec = 436, 4
    steps = [(0x20, 0, 0, 0)]                                  # ld [nr]
    if only_cloexec:
        steps += [(0x15, 0, 3, close_range_nr),                # jeq nr, 0, allow
                  (0x20, 0, 0, 32),                            # ld [args[2]]
                  (0x45, 0, 1, cloexec)]                       # jset CLOEXEC, 0, allow
    else:
        steps += [(0x15, 0, 1, close_range_nr)]                # jeq nr, 0, allow
    steps += [(0x06, 0, 0, 0x00050000 | err),                  # ret ERRNO(err)
              (0x06, 0, 0, 0x7FFF0000)]                        # allow: ret ALLOW
    program = (SockFilter * len(steps))(*(SockFilter(*step) for step in steps))
    fprog = SockFprog(len(steps), program)
    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
    assert libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
    assert libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) == 0
    assert libc.syscall(close_range_nr, 1000, 1001, cloexec) == -1
    assert ctypes.get_errno() == err


@pytest.mark.skipif(not CLOSE_RANGE_436, reason="close_range is not 436 here")
@pytest.mark.parametrize("err, only_cloexec", [(errno.ENOSYS, False), (errno.EINVAL, True)],
                         ids=["no-close_range", "no-CLOSE_RANGE_CLOEXEC"])
def test_close_fds_on_older_kernels(err: int, only_cloexec: bool) -> None:
    def case(module: Any) -> Dict[str, str]:
        fail_close_range(err, only_cloexec)
        fds = [os.open(path, os.O_RDONLY) for path in ("/dev/null", "/dev/zero", "/dev/full")]
        for fd in fds:
            os.set_inheritable(fd, True)
        status = fd_status(module, pass_fds=[fds[1]])
        return {fd: target for fd, target in status.items() if int(fd) >= 3}

    theirs, ours = both(case)
    assert ours == theirs
    assert list(ours.values()) == ["/dev/zero"]


# ---- session and umask ----

def test_start_new_session() -> None:
    code = "import os; print(os.getsid(0) == os.getpid(), os.getsid(0) == os.getsid(os.getppid()))"

    def case(module: Any) -> List[str]:
        return [module.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                           start_new_session=new).stdout for new in (False, True)]

    theirs, ours = both(case)
    assert ours == theirs == ["False True\n", "True False\n"]


def test_umask() -> None:
    def case(module: Any) -> str:
        return module.run(["sh", "-c", "umask"], capture_output=True, text=True,
                          umask=0o027).stdout

    assert both(case) == ("0027\n", "0027\n")


# ---- run ----

def test_run_capture_output_check_and_text() -> None:
    argv = ["sh", "-c", "printf 'out\\r\\nline\\n'; printf 'caf\\303\\251' >&2; exit 3"]
    for kwargs in ({}, {"text": True}, {"encoding": "latin-1"},
                   {"encoding": "ascii", "errors": "replace"}):
        theirs = subprocess.run(argv, capture_output=True, **kwargs)
        ours = linux_clone.run(argv, capture_output=True, **kwargs)
        assert (type(ours), ours.args, ours.returncode, ours.stdout, ours.stderr) == (
            type(theirs), theirs.args, theirs.returncode, theirs.stdout, theirs.stderr)
    with pytest.raises(subprocess.CalledProcessError) as info:
        linux_clone.run(argv, capture_output=True, check=True)
    assert (info.value.returncode, info.value.stdout, info.value.stderr) == (
        3, b"out\r\nline\n", b"caf\xc3\xa9")


def test_run_input() -> None:
    for kwargs in ({"input": b"bytes in"}, {"input": "text in", "text": True}):
        theirs = subprocess.run(["cat"], stdout=subprocess.PIPE, **kwargs)
        ours = linux_clone.run(["cat"], stdout=linux_clone.PIPE, **kwargs)
        assert ours.stdout == theirs.stdout == kwargs["input"]
    big = os.urandom(1 << 20)  # more than a pipe holds: written as the program reads
    assert linux_clone.run(["cat"], input=big, capture_output=True).stdout == big


@pytest.mark.parametrize("kwargs, message", [
    ({"input": b"x", "stdin": subprocess.DEVNULL}, "stdin and input"),
    ({"capture_output": True, "stdout": subprocess.DEVNULL}, "capture_output"),
])
def test_run_conflicting_arguments(kwargs: Dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        subprocess.run(["/bin/true"], **kwargs)
    with pytest.raises(ValueError, match=message):
        linux_clone.run(["/bin/true"], **kwargs)


@pytest.mark.timeout(60)
def test_run_timeout_kills_and_keeps_the_partial_output() -> None:
    def case(module: Any) -> Tuple[Any, Any, bool]:
        try:
            module.run(["sh", "-c", "echo partial; exec sleep 30"], capture_output=True,
                       timeout=1)
        except subprocess.TimeoutExpired as exc:
            try:
                os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return exc.stdout, exc.timeout, True
            return exc.stdout, exc.timeout, False
        raise AssertionError("no timeout")

    assert both(case) == ((b"partial\n", 1, True), (b"partial\n", 1, True))


def test_run_exec_error_is_subprocess_one() -> None:
    for argv in (["/nonexistent/program"], ["/dev/null"]):
        with pytest.raises(OSError) as theirs:
            subprocess.run(argv, capture_output=True)
        before = fd_count()
        with pytest.raises(OSError) as ours:
            linux_clone.run(argv, capture_output=True)
        assert (type(ours.value), ours.value.errno, ours.value.filename) == (
            type(theirs.value), theirs.value.errno, theirs.value.filename)
        assert fd_count() == before


def test_run_in_a_new_network_namespace(privileged: None) -> None:
    out = linux_clone.run(["ip", "-o", "link"], NEWNET, capture_output=True, text=True,
                          check=True).stdout
    assert [line.split(":")[1].strip() for line in out.splitlines()] == ["lo"]


def test_run_with_id_maps(privileged: None) -> None:
    out = linux_clone.run(["id", "-u"], NEWUSER, uid_map="0 0 1", capture_output=True,
                          check=True).stdout
    assert out == b"0\n"  # unmapped, it would be the overflow uid


# ---- Popen ----

def test_popen_attributes_poll_wait_and_signals() -> None:
    proc = linux_clone.Popen(["sleep", "30"])
    try:
        assert proc.args == ["sleep", "30"] and proc.returncode is None
        assert proc.pidfd is not None
        assert os.readlink(f"/proc/self/fd/{proc.pidfd}") == "anon_inode:[pidfd]"
        with open(f"/proc/self/fdinfo/{proc.pidfd}") as f:
            assert f"Pid:\t{proc.pid}\n" in f.read()
        assert proc.poll() is None
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=0.05)
        proc.terminate()
        assert proc.wait(timeout=30) == -signal.SIGTERM == proc.returncode
        proc.kill()  # reaped: nothing to signal, as subprocess
        assert proc.poll() == -signal.SIGTERM
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("how", ["send_signal", "kill"])
def test_popen_signal_returncodes_match_subprocess(how: str) -> None:
    results = []
    for module in (subprocess, linux_clone):
        proc = module.Popen(["sleep", "30"])
        if how == "kill":
            proc.kill()
        else:
            proc.send_signal(signal.SIGUSR1)
        results.append(proc.wait(timeout=30))
    assert results[0] == results[1] < 0


def test_popen_context_manager_closes_pipes_waits_and_closes_the_pidfd() -> None:
    def case() -> Tuple[bool, Any, int]:
        before = fd_count()
        with linux_clone.Popen(["sh", "-c", "echo hi"], stdout=linux_clone.PIPE,
                               stdin=linux_clone.PIPE) as proc:
            assert proc.stdout is not None and proc.stdout.read() == b"hi\n"
        assert proc.stdout.closed and proc.stdin.closed
        return proc.pidfd is None, proc.returncode, fd_count() - before

    assert in_child(case) == (True, 0, 0)


@pytest.mark.timeout(60)
def test_popen_communicate_timeout_then_again() -> None:
    results = []
    for module in (subprocess, linux_clone):
        with module.Popen(["sh", "-c", "echo first; sleep 1; echo second >&2"],
                          stdout=module.PIPE, stderr=module.PIPE) as proc:
            with pytest.raises(subprocess.TimeoutExpired) as info:
                proc.communicate(timeout=0.5)
            results.append((info.value.stdout, info.value.stderr,
                             proc.communicate(timeout=30), proc.returncode))
    assert results[1] == results[0] == (b"first\n", None, (b"first\n", b"second\n"), 0)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("timeout", [None, 60])
def test_popen_signals_and_polls_while_another_thread_waits(timeout: Any) -> None:
    """wait() blocks on the pidfd without the lock that reaping takes, so poll() and
    send_signal() from other threads go on (and the pidfd names the child, not its pid)."""
    proc = linux_clone.Popen(["sleep", "30"])
    result: List[int] = []
    waiter = threading.Thread(target=lambda: result.append(proc.wait(timeout)))
    waiter.start()
    try:
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        waiter.join(30)
        assert result == [-signal.SIGTERM]
    finally:
        proc.kill()
        waiter.join()


@pytest.mark.timeout(60)
def test_popen_without_a_pidfd_waits_with_waitpid() -> None:
    """As on Linux < 5.3, which has no pidfds."""
    for timeout in (None, 30):
        proc = linux_clone.Popen(["sh", "-c", "sleep 0.2; exit 5"])
        assert proc.pidfd is not None
        os.close(proc.pidfd)
        proc.pidfd = None
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=0.01)
        assert proc.wait(timeout) == 5
    proc = linux_clone.Popen(["sleep", "30"])
    os.close(proc.pidfd)  # type: ignore[arg-type]
    proc.pidfd = None
    proc.kill()
    assert proc.wait() == -signal.SIGKILL


def test_popen_fds_are_flat_over_many_runs() -> None:
    def case() -> Tuple[int, int]:
        def once(i: int) -> None:
            try:
                linux_clone.run(["sh", "-c", "cat; exit 1"] if i % 3 else ["/nonexistent"],
                                input=b"x", capture_output=True, timeout=30)
            except FileNotFoundError:
                pass
            proc = linux_clone.Popen(["/bin/true"], stdout=linux_clone.DEVNULL)
            proc.wait()
            del proc

        once(0)
        before = fd_count()
        for i in range(60):
            once(i)
        return before, fd_count()

    before, after = in_child(case)
    assert after == before


# ---- asyncio ----

def test_wait_async_runs_many_children_without_threads(privileged: None) -> None:
    async def main() -> Tuple[List[int], int]:
        procs = [linux_clone.Popen(["sh", "-c", f"sleep 0.{i % 3}; exit {i}"], NEWNET)
                 for i in range(20)]
        threads = threading.active_count()
        codes = await asyncio.gather(*(proc.wait_async() for proc in procs))
        return codes, threading.active_count() - threads

    def case() -> Tuple[List[int], int]:
        return asyncio.run(main())

    codes, new_threads = in_child(case)
    assert codes == list(range(20)) and new_threads == 0


def test_wait_async_cancelled_leaves_no_reader() -> None:
    async def main() -> int:
        proc = linux_clone.Popen(["sleep", "30"])
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(proc.wait_async(), 0.1)
        loop = asyncio.get_running_loop()
        assert proc.pidfd is not None and not loop.remove_reader(proc.pidfd)
        proc.kill()
        return await proc.wait_async()

    assert in_child(lambda: asyncio.run(main())) == -signal.SIGKILL


# ---- fd ownership, interrupts, several waiters (found by an outside probe) ----

def fd_is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def cleanup_lines(*funcs: Any) -> Set[int]:
    """The lines of the except and finally clauses of funcs: no code survives an interrupt
    in the middle of its own cleanup."""
    import ast
    import inspect
    import textwrap

    lines = set()
    for func in funcs:
        source, first = inspect.getsourcelines(func)
        for node in ast.walk(ast.parse(textwrap.dedent("".join(source)))):
            if isinstance(node, ast.Try):
                for stmt in [*node.finalbody, *(h for h in node.handlers)]:
                    lines.update(sub.lineno + first - 1 for sub in ast.walk(stmt)
                                 if isinstance(sub, ast.stmt))
    return lines


def interrupted(funcs: Any, k: int, call: Callable[[], Any]) -> bool:
    """call() with a KeyboardInterrupt raised at the k-th line run in one of funcs (as a ^C
    lands between two statements), but in their cleanup clauses; whether it was raised."""
    codes = {func.__code__ for func in funcs}
    skip = cleanup_lines(*funcs)
    count = 0

    def local(frame: Any, event: str, arg: Any) -> Any:
        nonlocal count
        if event == "line" and frame.f_lineno not in skip:
            count += 1
            if count == k:
                raise KeyboardInterrupt
        return local

    sys.settrace(lambda frame, event, arg: local if frame.f_code in codes else None)
    try:
        call()
    except KeyboardInterrupt:
        return True
    finally:
        sys.settrace(None)
    return False


@pytest.mark.parametrize("encoding, exc_type", [("no-such-codec", LookupError),
                                                ("interrupt-here", KeyboardInterrupt)])
def test_popen_failing_to_wrap_its_pipes_closes_each_fd_once(encoding: str,
                                                              exc_type: Any) -> None:
    """A pipe end wrapped in a file object is closed by that object only: before, the error
    path os.close()d it too, and the half-built Popen's stream later closed whatever fd took
    its number (a KeyboardInterrupt showed up as EBADF)."""
    def case() -> Tuple[int, int, int]:
        import codecs
        import gc
        import time

        def search(name: str) -> None:
            if name.replace("-", "_") == "interrupt_here":
                raise KeyboardInterrupt
            return None

        codecs.register(search)
        before = fd_count()
        with pytest.raises(exc_type):
            # A child that outlives the Popen (before, one was started): kept in _active.
            linux_clone.Popen(["sleep", "0.1"], stdin=linux_clone.PIPE,
                              stdout=linux_clone.PIPE, stderr=linux_clone.PIPE,
                              encoding=encoding)
        victims = [os.open(os.devnull, os.O_RDONLY) for _ in range(6)]
        for _ in range(10):  # until a half-built Popen's child is reaped, and it is freed
            time.sleep(0.05)
            linux_clone.run(["true"])
            gc.collect()
        still_open = [fd_is_open(fd) for fd in victims].count(True)
        for fd in victims:
            if fd_is_open(fd):
                os.close(fd)
        return still_open, before, fd_count()

    still_open, before, after = in_child(case)
    assert still_open == 6 and after == before


def test_pass_fds_minus_one_is_the_valueerror_spawn_raises() -> None:
    def case(module: Any) -> Tuple[List[str], int, int]:
        before = fd_count()
        errors = []
        for call in (module.Popen, module.run):
            try:
                call(["true"], pass_fds=[-1], stdout=module.PIPE).communicate()
            except ValueError as exc:
                errors.append(type(exc).__name__)
        return errors, before, fd_count()

    theirs, ours = both(case)
    assert theirs[0] == ours[0] == ["ValueError", "ValueError"]
    assert ours[1] == ours[2]


@pytest.mark.timeout(120)
def test_wait_async_several_waiters_on_one_and_on_several_loops() -> None:
    """As asyncio's Process.wait(): each waiter gets the returncode (before, a second waiter
    on one loop replaced the first's reader, which then never woke)."""
    def case() -> Tuple[List[Any], int]:
        proc = linux_clone.Popen(["sh", "-c", "sleep 0.3; exit 7"])
        results: List[Any] = []

        async def two() -> List[int]:
            return await asyncio.wait_for(asyncio.gather(proc.wait_async(),
                                                         proc.wait_async()), 20)

        def waiter() -> None:
            results.append(asyncio.run(two()))

        threads = [threading.Thread(target=waiter) for _ in range(2)]
        for thread in threads:
            thread.start()
        waiter()
        for thread in threads:
            thread.join(30)
        proc.__exit__(None, None, None)
        return results, fd_count()

    before = in_child(fd_count)
    results, after = in_child(case)
    assert results == [[7, 7]] * 3 and after == before


@pytest.mark.timeout(60)
def test_wait_async_cancelled_waiter_leaves_the_other_waiting() -> None:
    async def main() -> Tuple[int, int]:
        proc = linux_clone.Popen(["sh", "-c", "sleep 0.5; exit 3"])
        before = fd_count()
        other = asyncio.ensure_future(proc.wait_async())
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(proc.wait_async(), 0.05)
        code = await asyncio.wait_for(other, 20)
        return code, fd_count() - before

    assert in_child(lambda: asyncio.run(main())) == (3, 0)


CHROOT_WAIT = r"""
import ctypes, os
import linux_clone

libc = ctypes.CDLL(None, use_errno=True)
root = os.getcwd()
linux_clone.unshare(linux_clone.NEWNS)
assert libc.mount(b"none", b"/", None, 0x40000 | 0x4000, None) == 0  # MS_PRIVATE | MS_REC
for name in ("bin", "lib", "lib64", "usr"):
    if os.path.islink("/" + name):
        os.symlink(os.readlink("/" + name), os.path.join(root, name))
    elif os.path.isdir("/" + name):
        os.mkdir(os.path.join(root, name))
        assert libc.mount(("/" + name).encode(), os.path.join(root, name).encode(), None,
                          0x1000 | 0x4000, None) == 0  # MS_BIND | MS_REC
# A stdlib under /usr (a distribution's python3, e.g. Debian bullseye's 3.9) came in with it.
stdlib = os.path.join(root, os.path.dirname(os.__file__).lstrip("/"))
if os.path.isdir(stdlib):
    assert libc.mount(b"none", stdlib.encode(), b"tmpfs", 0, None) == 0
proc = linux_clone.Popen(["/bin/sleep", "30"])
os.chroot(root)
os.chdir("/")
print(os.path.exists(os.__file__))
try:
    proc.wait(timeout=0.1)
except Exception as exc:
    print(type(exc).__module__, type(exc).__name__)
proc.kill()
print(proc.wait())
print(linux_clone.run(["/bin/sh", "-c", "exit 3"]).returncode)
for kwargs in ({"timeout": 0.1}, {"check": True}):
    try:
        linux_clone.run(["/bin/sh", "-c", "sleep 30; exit 1"] if kwargs.get("timeout")
                        else ["/bin/false"], **kwargs)
    except Exception as exc:
        print(type(exc).__module__, type(exc).__name__)
"""


def test_wait_and_run_after_a_chroot_import_nothing(privileged: None, tmp_path: Any) -> None:
    """A Popen made before a chroot into a root without Python's stdlib: its timed wait and
    later run()s need subprocess's classes, which Popen() imported before its child."""
    result = run_python(CHROOT_WAIT, cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().splitlines() == [
        "False", "subprocess TimeoutExpired", str(-signal.SIGKILL), "3",
        "subprocess TimeoutExpired", "subprocess CalledProcessError"]


def test_popen_interrupted_at_any_line_keeps_its_child_and_leaks_no_fd() -> None:
    """A ^C anywhere in Popen(): its child, once started, is kept for the next Popen to reap
    (as subprocess keeps it), and every fd opened for it is closed."""
    def case() -> Tuple[int, List[Any]]:
        import gc
        import time

        funcs = [linux_clone.Popen.__init__, linux_clone.Popen._open_pipes]
        children = f"/proc/self/task/{os.getpid()}/children"
        before = sorted(os.listdir("/proc/self/fd"))
        problems: List[Any] = []
        k = 0
        while interrupted(funcs, k + 1, lambda: linux_clone.Popen(
                ["sleep", "30"], stdin=linux_clone.PIPE, stdout=linux_clone.PIPE,
                stderr=linux_clone.DEVNULL, text=True)):
            k += 1
            gc.collect()
            with open(children) as f:
                pids = [int(pid) for pid in f.read().split()]
            for pid in pids:
                os.kill(pid, signal.SIGKILL)  # not reaped yet: the pid is still the child's
            for _ in range(100):  # the next Popen reaps what the last one kept
                time.sleep(0.02)
                linux_clone.run(["true"])
                with open(children) as f:
                    if not f.read().split():
                        break
            try:
                lost = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG)
            except ChildProcessError:  # none left, as it should be
                lost = None
            if lost is not None:
                problems.append((k, "child lost", lost.si_pid))
            if sorted(os.listdir("/proc/self/fd")) != before:
                problems.append((k, "fds", sorted(os.listdir("/proc/self/fd"))))
        return k, problems

    lines, problems = in_child(case)
    assert lines >= 20 and problems == []


def test_running_popen_collected_warns_as_subprocess() -> None:
    def case(module: Any) -> List[Tuple[str, str]]:
        import gc
        import warnings

        proc = module.Popen(["sleep", "30"])
        pid = proc.pid
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            del proc
            gc.collect()
        os.kill(pid, signal.SIGKILL)  # still unreaped (kept in _active): the pid is its own
        return [(w.category.__name__, str(w.message).replace(str(pid), "N")) for w in caught]

    theirs, ours = both(case)
    assert ours == theirs == [("ResourceWarning", "subprocess N is still running")]


# ---- an outside probe's findings ----

# Raise KeyboardInterrupt (as a SIGINT handler would) at the k-th profiled event from the
# entry into spawn() (Popen, run) on, for k = 0, 1, ... until a call gets through: after
# each, no child and no pidfd may be left that the caller did not get.  Up to spawn()'s (and
# Popen.__init__'s) return: what it returns is the caller's from there.
INTERRUPT_EVERYWHERE = r"""
import _thread, gc, os, subprocess, sys
import linux_clone
from linux_clone import _process

def leftovers():
    pidfds = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            pidfds += os.readlink("/proc/self/fd/" + name) == "anon_inode:[pidfd]"
        except OSError:
            pass
    try:
        child = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        child = None
    return pidfds, child and child.si_pid

def interrupt_at(k, call):
    events = [0]
    def profile(frame, event, arg):
        code = frame.f_code
        if event == "return" and (
                code is linux_clone.spawn.__code__ or code is linux_clone.Popen.__init__.__code__):
            sys.setprofile(None)  # started: the child is the caller's (Popen's)
            return
        if event == "c_return" and getattr(arg, "__name__", None) == "__enter__" and isinstance(
                getattr(arg, "__self__", None), _thread.LockType):
            # Not covered: 3.14+ calls a with's __enter__ with a CALL, whose exception comes
            # before the with's handler, so no __exit__ releases the lock (CPython gh-148874;
            # the module's _flag_lock as NEWUSER makes CloneFlag).
            return
        if events[0] == k:
            sys.setprofile(None)
            raise KeyboardInterrupt
        events[0] += 1
    sys.setprofile(profile)
    try:
        return call()
    finally:
        sys.setprofile(None)

def sweep(name, call, done):
    for k in range(100000):
        try:
            result = interrupt_at(k, call)
        except KeyboardInterrupt:
            gc.collect()
            _process._cleanup()
            if leftovers() != (0, None):
                print(name, k, leftovers())
                return
        else:
            done(result)
            assert leftovers() == (0, None), leftovers()
            print(name, "ok", k >= 3)
            return

def reap(result):
    pid, pidfd = result
    os.waitpid(pid, 0)
    os.close(pidfd)

env = {"PATH": os.environ["PATH"]}  # os.environ would add some 800 events to each call
sweep("spawn", lambda: linux_clone.spawn(["true"], env=env, pidfd=True), reap)
sweep("spawn stdout", lambda: linux_clone.spawn(["true"], env=env, stdout=linux_clone.DEVNULL,
                                                 pidfd=True), reap)
sweep("spawn maps", lambda: linux_clone.spawn(["true"], linux_clone.NEWUSER, env=env,
                                               uid_map=[(0, 0, 1)], pidfd=True), reap)
sweep("run", lambda: linux_clone.run(["true"], env=env, capture_output=True),
      lambda result: None)
"""


@pytest.mark.timeout(300)
def test_keyboard_interrupt_while_starting_leaves_no_child_or_pidfd(privileged: None) -> None:
    result = run_python(INTERRUPT_EVERYWHERE, timeout=280)
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().splitlines() == [
        "spawn ok True", "spawn stdout ok True", "spawn maps ok True", "run ok True"]


# As INTERRUPT_EVERYWHERE, with stdio fds (pipes, DEVNULL, the parent's file objects): after
# each KeyboardInterrupt no fd may be left open that was not before, and no child.  The
# interrupt also comes at C calls' call events, as a signal handler's can on 3.9 (between
# any two bytecodes there).
INTERRUPT_WITH_PIPES = r"""
import gc, os, subprocess, sys
import linux_clone
from linux_clone import DEVNULL, PIPE, _process

def fds():
    found = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            found.add((name, os.readlink("/proc/self/fd/" + name)))
        except OSError:
            pass  # the listing's own fd
    return found

def leftovers(before):
    try:
        child = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        child = None
    return sorted(fds() - before), child and child.si_pid

def interrupt_at(k, call):
    events = [0]
    def profile(frame, event, arg):
        code = frame.f_code
        if event == "return" and (
                code is linux_clone.spawn.__code__ or code is linux_clone.Popen.__init__.__code__):
            sys.setprofile(None)  # started: the child is the caller's (Popen's)
            return
        if events[0] == k:
            sys.setprofile(None)
            raise KeyboardInterrupt
        events[0] += 1
    sys.setprofile(profile)
    try:
        return call()
    finally:
        sys.setprofile(None)

def sweep(name, call, done):
    before = fds()
    for k in range(100000):
        try:
            result = interrupt_at(k, call)
        except KeyboardInterrupt:
            pass  # checked below, once the traceback's frames are gone
        else:
            done(result)
            assert leftovers(before) == ([], None), leftovers(before)
            print(name, "ok", k >= 3)
            return
        gc.collect()
        _process._cleanup()
        if leftovers(before) != ([], None):
            print(name, k, leftovers(before))
            return

def wait(proc):
    with proc:  # closes the pidfd
        proc.communicate()

def reap(result):
    pid, pidfd = result
    os.waitpid(pid, 0)
    os.close(pidfd)

env = {"PATH": os.environ["PATH"]}  # os.environ would add some 800 events to each call
pipes = dict(stdin=PIPE, stdout=PIPE, stderr=PIPE)
sweep("Popen", lambda: linux_clone.Popen(["true"], env=env, **pipes), wait)
sweep("Popen text", lambda: linux_clone.Popen(["true"], env=env, text=True, **pipes), wait)
sweep("Popen devnull", lambda: linux_clone.Popen(["true"], env=env, stdin=DEVNULL,
                                                 stdout=PIPE, stderr=DEVNULL), wait)
sweep("run", lambda: linux_clone.run(["true"], env=env, input=b"x", capture_output=True),
      lambda result: None)
sweep("spawn devnull", lambda: linux_clone.spawn(["true"], env=env, stdin=DEVNULL, pidfd=True),
      reap)
"""


@pytest.mark.timeout(300)
def test_keyboard_interrupt_while_starting_with_pipes_leaves_no_fd_or_child(
        privileged: None) -> None:
    result = run_python(INTERRUPT_WITH_PIPES, timeout=280)
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().splitlines() == [
        "Popen ok True", "Popen text ok True", "Popen devnull ok True", "run ok True",
        "spawn devnull ok True"]


def test_timeouts_beyond_poll_range_as_subprocess() -> None:
    """Beyond poll()'s INT_MAX ms (24.8 days) and inf: subprocess waits, so do we (and
    communicate() with pipes, an OverflowError in subprocess, waits too)."""
    def case(module: Any) -> List[Any]:
        month = 30 * 86400
        proc = module.Popen(["true"])
        out = [proc.communicate(timeout=month), proc.wait(timeout=month)]
        proc = module.Popen(["true"])
        out.append(proc.wait(timeout=float("inf")))
        out.append(module.run(["true"], timeout=float("inf")).returncode)
        if module is linux_clone:
            out.append(module.run(["echo", "x"], capture_output=True, timeout=month).stdout)
        return out

    theirs, ours = both(case)
    assert theirs == [(None, None), 0, 0, 0]
    assert ours == [*theirs, b"x\n"]


def test_wait_async_costs_no_fd_beyond_the_pidfd() -> None:
    """150 children awaited at once under an fd limit of 200: one fd (the pidfd) each."""
    def case() -> List[int]:
        import resource

        resource.setrlimit(resource.RLIMIT_NOFILE, (200, 200))
        rfd, wfd = os.pipe()

        async def main() -> List[int]:
            # Each blocks reading the pipe until its write end closes: all wait at once.
            procs = [linux_clone.Popen(["cat"], stdin=rfd, stdout=linux_clone.DEVNULL)
                     for _ in range(150)]
            asyncio.get_running_loop().call_later(0.5, os.close, wfd)
            return await asyncio.wait_for(
                asyncio.gather(*(proc.wait_async() for proc in procs)), 60)

        return asyncio.run(main())

    assert in_child(case) == [0] * 150


def test_popen_subscript_and_universal_newlines_as_subprocess() -> None:
    def case(module: Any) -> List[Any]:
        alias = module.Popen[bytes]
        with module.Popen(["true"], text=True) as proc:
            first = proc.universal_newlines
            proc.universal_newlines = False
            return [alias.__origin__ is module.Popen, alias.__args__, first, proc.text_mode]

    theirs, ours = both(case)
    assert ours == theirs == [True, (bytes,), True, False]


def test_env_needs_items_only() -> None:
    """As the README says: an env with items() but no get() runs (subprocess refuses it)."""
    class Items:
        def __init__(self, **values: str) -> None:
            self.values = values

        def items(self) -> Any:
            return self.values.items()

    result = linux_clone.run(["sh", "-c", "echo $X"], env=Items(X="1", PATH=os.defpath),
                             capture_output=True)
    assert result.stdout == b"1\n"
    with pytest.raises(AttributeError):
        subprocess.run(["sh", "-c", "echo $X"], env=Items(X="1", PATH=os.defpath))


class Index:
    def __index__(self) -> int:
        return 1

    def __repr__(self) -> str:
        return "Index(1)"


class NoFileno:
    def __repr__(self) -> str:
        return "NoFileno()"


# (the stdout object, subprocess.Popen's exception, ours; None: the program runs)
ODD_STDOUTS = [
    # As subprocess: fileno() goes through __index__.
    (Fileno("1"), "TypeError", "TypeError"),
    (Fileno(b"1"), "TypeError", "TypeError"),
    (Fileno(1.0), "TypeError", "TypeError"),
    (Fileno(None), "TypeError", "TypeError"),
    (Fileno(True), None, None),
    (Fileno(Index()), None, None),
    (Fileno(2**31), "OverflowError", "OverflowError"),
    (Fileno(2**64), "OverflowError", "OverflowError"),
    (Fileno(1000), "OSError", "OSError"),  # not open: EBADF
    (Fileno(OSError(errno.EBADF, "raised")), "OSError", "OSError"),
    (Fileno(ValueError("raised")), "ValueError", "ValueError"),
    # Differs, as the README says: a negative fd is a ValueError (subprocess: -1 is the
    # caller's stdout, another an EBADF from the child), a non-file a TypeError.
    (Fileno(-1), None, "ValueError"),
    (Fileno(-2), "OSError", "ValueError"),
    (NoFileno(), "AttributeError", "TypeError"),
    (1.5, "AttributeError", "TypeError"),
]


@pytest.mark.parametrize("stdout, theirs, ours", ODD_STDOUTS, ids=repr)
def test_odd_stdio_objects_raise_as_subprocess(stdout: Any, theirs: Any, ours: Any) -> None:
    """Popen, run and spawn raise the same exception class for each, with no fd left (the
    stdin pipe, made first, closed again); subprocess's class, unless the README says."""
    def case(module: Any) -> List[Any]:
        calls = [lambda: module.Popen(["true"], stdin=module.PIPE, stdout=stdout).wait(),
                 lambda: module.run(["true"], stdin=module.DEVNULL, stdout=stdout)]
        if module is linux_clone:
            calls.append(lambda: os.waitpid(module.spawn(["true"], stdin=module.DEVNULL,
                                                         stdout=stdout), 0))
        before = fd_count()
        raised = []
        for call in calls:
            try:
                call()
                raised.append(None)
            except Exception as exc:
                raised.append(type(exc).__name__)
        return [raised, fd_count() - before]

    theirs_raised, _ = in_child(case, subprocess)
    assert theirs_raised == [theirs] * 2
    assert in_child(case, linux_clone) == [[ours] * 3, 0]


# A Popen dropped (its __del__) or reaped by the next Popen (_cleanup) with KeyboardInterrupt
# at each profiled event in turn: its pidfd is closed and its child reaped once _cleanup has
# run (__del__ only prints its exception, and runs once).
INTERRUPT_DROPPED = r"""
import _thread, gc, os, sys, time
import linux_clone
from linux_clone import PIPE, _process

def pidfds():
    found = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            found += os.readlink("/proc/self/fd/" + name) == "anon_inode:[pidfd]"
        except OSError:
            pass  # the listing's own fd
    return found

def leftovers():
    gc.collect()
    for _ in range(1000):  # the exited children still in _active
        _process._cleanup()
        if not _process._active:
            break
        time.sleep(0.01)
    try:
        child = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        child = None
    return pidfds(), child and child.si_pid

def exited(proc):
    os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)

def interrupt_at(k, call):
    events = [0]
    def profile(frame, event, arg):
        # Not covered: __del__'s start, to its first call (_active.append), where nothing
        # keeps the Popen yet (3.10+ runs a handler there only as __del__ starts); the
        # wait lock, held for good by an interrupt as _internal_poll's acquire() returns (as
        # subprocess's), before a with's __exit__ call (3.9) or as a with's __enter__ returns
        # (3.14+: a CALL, whose exception comes before the with's handler, CPython gh-148874).
        code, owner = frame.f_code, getattr(arg, "__self__", None)
        if code is interrupt_at.__code__ or code is _process.Popen._internal_poll.__code__ or (
                isinstance(owner, _thread.LockType) and (
                    event == "c_call" or event == "c_return" and arg.__name__ == "__enter__")) or (
                code is _process.Popen.__del__.__code__ and (
                    event == "call" or (event == "c_call" and owner is _process._active))):
            return
        if events[0] == k:
            sys.setprofile(None)
            raise KeyboardInterrupt
        events[0] += 1
    sys.setprofile(profile)
    try:
        call()
    except KeyboardInterrupt:
        pass
    finally:
        sys.setprofile(None)
    return events[0] == k  # reached: interrupted

def sweep(name, prepare, call):
    for k in range(100000):
        held = prepare()
        interrupted = interrupt_at(k, lambda: call(held))
        del held  # what an interrupt kept from dropping
        if not interrupted:
            print(name, "ok", k >= 3, leftovers())
            return
        if leftovers() != (0, None):
            print(name, k, leftovers())
            return

def waited():
    proc = linux_clone.Popen(["true"], env=env)
    proc.wait()  # reaped, its pidfd still open
    return [proc]

def running():
    proc = linux_clone.Popen(["cat"], env=env, stdin=PIPE)
    stdin, proc.stdin = proc.stdin, None
    return [proc, stdin]

def drop(held):
    held.pop(0)  # __del__

def drop_running(held):
    exit_later = held[1]  # cat exits as the pipe closes: after its Popen is dropped
    drop(held)
    exit_later.close()

def reap_in_cleanup(held):
    proc = held[0]
    drop_running(held)
    exited(proc)
    del proc
    _process._cleanup()

sys.unraisablehook = lambda unraisable: None  # __del__'s KeyboardInterrupt
env = {"PATH": os.environ["PATH"]}
sweep("del waited", waited, drop)
sweep("del running", running, drop_running)
sweep("cleanup", running, reap_in_cleanup)
"""


def test_keyboard_interrupt_in_a_dropped_popen_leaves_no_pidfd_or_child() -> None:
    result = run_python(INTERRUPT_DROPPED, timeout=170)
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().splitlines() == [
        "del waited ok True (0, None)", "del running ok True (0, None)",
        "cleanup ok True (0, None)"]

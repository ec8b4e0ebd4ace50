"""What spawn() skips to run near a raw clone + execve, and what it keeps doing: the
process's own environ instead of a copy of os.environ, one stack kept from spawn to spawn
(never shared by two spawns at once, nor leaked), checked against the kernel's answer."""

from __future__ import annotations

import errno
import inspect
import os
import pathlib
import platform
import resource
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Tuple

import pytest

import linux_clone
import seccomp_eras
from conftest import in_child, run_python

NEWUSER = int(linux_clone.NEWUSER)
STACK_LENGTH = linux_clone._core.SPAWN_STACK_SIZE + resource.getpagesize()  # + guard page


def _output(argv: List[str], **kwargs: object) -> Tuple[int, str]:
    """Spawn argv with its stdout on a pipe; (exit code, what it wrote)."""
    rfd, wfd = os.pipe()
    try:
        pid = linux_clone.spawn(argv, stdout=wfd, **kwargs)  # type: ignore[arg-type]
    finally:
        os.close(wfd)
    with os.fdopen(rfd, "rb") as f:
        out = f.read().decode("utf-8", "surrogateescape")
    _, status = os.waitpid(pid, 0)  # type: ignore[arg-type]
    return os.waitstatus_to_exitcode(status), out


# ---- env=None: the process's environ ----

def test_spawn_env_default_is_the_process_environment() -> None:
    # As subprocess's child: the C environment, where os.putenv writes without os.environ
    # knowing, and no copy of os.environ made for the call.
    def run() -> Tuple[int, List[str], List[str], bool]:
        os.putenv("LC_SPAWN_PUTENV", "c-level")
        code, out = _output(["/usr/bin/env"])
        expected = subprocess.run(["/usr/bin/env"], stdout=subprocess.PIPE, check=True).stdout
        return (code, sorted(out.splitlines()),
                sorted(expected.decode("utf-8", "surrogateescape").splitlines()),
                "LC_SPAWN_PUTENV" in os.environ)
    code, out, expected, in_os_environ = in_child(run)
    assert not in_os_environ
    assert code == 0 and "LC_SPAWN_PUTENV=c-level" in out
    assert out == expected


def test_spawn_env_default_sees_os_environ_changes() -> None:
    # os.environ writes through to environ: a set and a deleted variable reach the child as
    # they reach subprocess's, and PATH is searched as os.environ has it.
    def run() -> Tuple[int, List[str]]:
        os.environ["LC_SPAWN_SET"] = "set"
        os.environ.pop("HOME", None)
        os.environ["PATH"] = "/nonexistent:/usr/bin:/bin"
        code, out = _output(["env"])
        return code, out.splitlines()
    code, out = in_child(run)
    assert code == 0 and "LC_SPAWN_SET=set" in out
    assert not any(line.startswith("HOME=") for line in out)
    assert "PATH=/nonexistent:/usr/bin:/bin" in out


# ---- the kept stack ----

def _code(pid: int) -> int:
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def guard_pages() -> int:
    """The one-page PROT_NONE anonymous mappings of this process: a spawn stack's guard page
    (and a thread stack's)."""
    page, count = resource.getpagesize(), 0
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split()
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if fields[1] == "---p" and fields[4] == "0" and len(fields) == 5 \
                    and end - start == page:
                count += 1
    return count


def fail_stack_mmaps() -> None:
    """From now on (this forked child only), an mmap of a spawn stack's length fails with
    ENOMEM: only a kept stack lets a spawn run."""
    number = {"x86_64": 9, "aarch64": 222}[platform.machine()]
    seccomp_eras.ARCHES[platform.machine()][1]["mmap"] = number  # this child's copy
    seccomp_eras.install([seccomp_eras.Rule("mmap", errno.ENOMEM, arg=1, lo=STACK_LENGTH,
                                            hi=STACK_LENGTH)])


def test_spawn_reuses_its_stack() -> None:
    # No mmap of a new 64 KiB stack (+ guard page) per call: the first spawn's is kept.
    def run() -> List[int]:
        codes = [_code(linux_clone.spawn(["/bin/true"]))]  # type: ignore[arg-type]
        fail_stack_mmaps()
        codes += [_code(linux_clone.spawn(["/bin/true"])) for _ in range(3)]  # type: ignore
        return codes
    assert in_child(run) == [0, 0, 0, 0]


def test_spawn_keeps_its_stack_after_a_failed_spawn() -> None:
    # A child that failed to exec, and a before_start that raised (its child told to exit),
    # leave the stack free and kept, as a spawn that succeeded does.
    def raises(pid: int) -> None:
        raise KeyError("before_start")

    def run() -> List[Any]:
        out: List[Any] = [_code(linux_clone.spawn(["/bin/true"]))]  # type: ignore[arg-type]
        fail_stack_mmaps()
        for call in (lambda: linux_clone.spawn(["/nonexistent/program"]),
                     lambda: linux_clone._core.spawn(["/bin/true"], NEWUSER,
                                                     before_start=raises)):
            try:
                call()
            except (OSError, KeyError) as exc:
                out.append(type(exc).__name__)
        out.append(_code(linux_clone.spawn(["/bin/true"])))  # type: ignore[arg-type]
        return out
    assert in_child(run) == [0, "FileNotFoundError", "KeyError", 0]


def test_spawn_keeps_one_stack() -> None:
    # One stack is mapped for spawns between them, however many ran, also when the clone
    # itself failed; and none before the first (or after the exit handler).
    def clone_fails() -> str:
        seccomp_eras.install([seccomp_eras.Rule(call, errno.EAGAIN)
                              for call in ("clone", "clone3")])
        try:
            linux_clone.spawn(["/bin/true"])
        except BlockingIOError:
            return "EAGAIN"
        return "spawned"

    def run() -> Tuple[int, int, int, str, int]:
        linux_clone._core._unmap_kept_stack()  # the one this process forked with, if any
        before = guard_pages()
        assert _code(linux_clone.spawn(["/bin/true"])) == 0  # type: ignore[arg-type]
        first = guard_pages()
        for _ in range(20):
            assert _code(linux_clone.spawn(["/bin/true"])) == 0  # type: ignore[arg-type]
        many = guard_pages()
        failed = clone_fails()
        return before, first, many, failed, guard_pages()
    before, first, many, failed, after_failure = in_child(run)
    assert failed == "EAGAIN"
    assert (first, many, after_failure) == (before + 1,) * 3


def test_spawn_unmaps_its_stack_at_exit() -> None:
    # The interpreter's exit unmaps the kept stack (the atexit handler registered first runs
    # last, after linux_clone's).
    code = "\n".join([
        "import atexit, os, resource",
        *inspect.getsource(guard_pages).splitlines(),
        "atexit.register(lambda: print('exit:', guard_pages(), flush=True))",
        "import linux_clone",
        "before = guard_pages()",
        "os.waitpid(linux_clone.spawn(['/bin/true']), 0)",
        "print(before, guard_pages(), flush=True)",
    ])
    result = run_python(code, timeout=60)
    assert result.returncode == 0, result.stderr.decode()
    running, exiting = result.stdout.decode().splitlines()
    before, after = (int(x) for x in running.split())
    assert (after, exiting) == (before + 1, f"exit: {before}")


def _maps_count() -> int:
    with open("/proc/self/maps") as f:
        return sum(1 for _ in f)


def _threads_gone() -> None:
    """Wait until the threads this (forked) process started have exited in the kernel too,
    not only for Python's join: glibc reuses a thread's stack for the next thread only then."""
    deadline = time.monotonic() + 30
    while len(os.listdir("/proc/self/task")) > 1 and time.monotonic() < deadline:
        time.sleep(0.001)


THREADS, SPAWNS = 4, 12


def _spawn_in_threads(results: Dict[Tuple[int, int], Any]) -> None:
    """THREADS threads × SPAWNS spawns each of `sh -c 'exit CODE'`, a code of its own per
    spawn; every other spawn's child waits on its stack (NEWUSER, a before_start that sleeps)
    while the other threads spawn."""
    def before_start(pid: int) -> None:
        time.sleep(0.002)

    def body(t: int) -> None:
        for i in range(SPAWNS):
            code = t * SPAWNS + i + 1
            argv = ["/bin/sh", "-c", f"exit {code}"]
            try:
                if i % 2:
                    pid = linux_clone._core.spawn(argv, NEWUSER, before_start=before_start)
                else:
                    pid = linux_clone.spawn(argv)  # type: ignore[assignment]
                results[t, i] = _code(pid)  # type: ignore[arg-type]
            except Exception as exc:
                results[t, i] = repr(exc)

    threads = [threading.Thread(target=body, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    _threads_gone()


@pytest.mark.timeout(120)
def test_spawn_stacks_in_threads(privileged: None) -> None:
    # Concurrent spawns never share a stack: each child execs its own argv and exits with its
    # own code.  A second round leaves the mappings and fds as the first left them (the
    # threads' own stacks are glibc's to cache), one spawn stack kept.
    def run() -> Tuple[List[Any], List[int], int, int, int, int]:
        first: Dict[Tuple[int, int], Any] = {}
        _spawn_in_threads(first)
        maps, fds, guards = _maps_count(), len(os.listdir("/proc/self/fd")), guard_pages()
        second: Dict[Tuple[int, int], Any] = {}
        _spawn_in_threads(second)
        codes = [first[t, i] for t in range(THREADS) for i in range(SPAWNS)]
        codes += [second[t, i] for t in range(THREADS) for i in range(SPAWNS)]
        return (codes, list(range(1, THREADS * SPAWNS + 1)) * 2,
                _maps_count() - maps, len(os.listdir("/proc/self/fd")) - fds,
                guards, guard_pages())
    codes, expected, maps_delta, fds_delta, guards, guards_after = in_child(run, timeout=110)
    assert codes == expected
    assert (maps_delta, fds_delta, guards_after) == (0, 0, guards)




def test_spawn_in_a_fork_while_another_thread_spawns(privileged: None) -> None:
    # A fork taken while a thread's spawn holds the kept stack (its child waits for its maps):
    # the forked child spawns on stacks of its own, and the thread's spawn ends as it would.
    def run() -> Tuple[int, int, int, int]:
        assert _code(linux_clone.spawn(["/bin/true"])) == 0  # type: ignore[arg-type]
        warm = threading.Thread(target=lambda: None)  # glibc keeps its stack for the next
        warm.start()
        warm.join()
        _threads_gone()
        guards = guard_pages()
        waiting, go = threading.Event(), threading.Event()
        codes: List[int] = []

        def before_start(pid: int) -> None:
            waiting.set()
            go.wait(30)

        def spawner() -> None:
            codes.append(_code(linux_clone._core.spawn(["/bin/sh", "-c", "exit 3"], NEWUSER,
                                                       before_start=before_start)))

        thread = threading.Thread(target=spawner)
        thread.start()
        waiting.wait(30)
        pid = os.fork()
        if pid == 0:
            ok = all(_code(linux_clone.spawn(["/bin/sh", "-c", "exit 5"])) == 5  # type: ignore
                     for _ in range(3))
            os._exit(0 if ok else 1)
        forked = _code(pid)
        go.set()
        thread.join()
        _threads_gone()
        return forked, codes[0], guards, guard_pages()
    forked, code, guards, guards_after = in_child(run)
    assert (forked, code) == (0, 3)
    assert guards_after == guards


# ---- signal handlers: reset by the kernel (clone3 CLONE_CLEAR_SIGHAND), else by the child ----

SYSCALLS = {"x86_64": {"rt_sigaction": 13}, "aarch64": {"rt_sigaction": 134}}


def _signal_before_exec(rules: List["seccomp_eras.Rule"]) -> Tuple[int, List[int], int]:
    """In a forked child: a Python handler for SIGUSR1, the seccomp `rules`, then a spawn
    whose child is sent SIGUSR1 while it waits for the parent (blocked until its reset):
    (its exit code, the handler's runs, `yes | head -1`'s exit code: SIGPIPE's default)."""
    ran: List[int] = []
    signal.signal(signal.SIGUSR1, lambda *_: ran.append(1))
    seccomp_eras.ARCHES[platform.machine()][1].update(SYSCALLS[platform.machine()])
    seccomp_eras.install(rules)
    pid = linux_clone._core.spawn(["/bin/sh", "-c", "exit 3"],
                                  before_start=lambda pid: os.kill(pid, signal.SIGUSR1))
    code = _code(pid)
    time.sleep(0.01)
    pipe = _code(linux_clone.spawn(["/bin/sh", "-c", "yes | head -1 >/dev/null; exit $?"]))
    return code, ran, pipe


def _clear_sighand() -> bool:
    return tuple(int(x) for x in platform.release().split(".")[:2]) >= (5, 5)


@pytest.mark.skipif(not _clear_sighand(), reason="kernel without CLONE_CLEAR_SIGHAND (5.5)")
def test_spawn_child_needs_no_signal_query() -> None:
    # The kernel resets the caller's handlers in the child (clone3 CLONE_CLEAR_SIGHAND): no
    # sigaction query per signal there.  Seen by failing every query (act NULL) with EPERM.
    query_fails = seccomp_eras.Rule("rt_sigaction", errno.EPERM, arg=1, lo=0, hi=0)
    assert in_child(_signal_before_exec, [query_fails]) == (-signal.SIGUSR1, [], 0)


@pytest.mark.parametrize("err", [errno.ENOSYS, errno.EINVAL, errno.EPERM],
                         ids=["pre-5.3", "pre-5.5", "container-filter"])
def test_spawn_resets_signal_handlers_without_clear_sighand(err: int) -> None:
    # Without clone3 (ENOSYS, or EPERM from an older container's seccomp filter) or without
    # CLONE_CLEAR_SIGHAND (EINVAL), spawn clones and the child resets the handlers itself.
    rules = [seccomp_eras.Rule("clone3", err)]
    assert in_child(_signal_before_exec, rules) == (-signal.SIGUSR1, [], 0)


# ---- the arguments: converted in C, no Python frame per argument or PATH directory ----

def _python_calls(call: Callable[[], Any]) -> List[str]:
    """The Python functions call() runs (sys.setprofile's view), in order."""
    seen: List[str] = []

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "call":
            seen.append(frame.f_code.co_name)

    sys.setprofile(profile)
    try:
        result = call()
    finally:
        sys.setprofile(None)
    _code(result)
    return seen


def test_spawn_converts_without_os_fsencode_or_path_join() -> None:
    # str and bytes arguments are encoded as os.fsencode would, and the PATH candidates
    # joined as os.path.join would, without their Python frames: once per argument and per
    # PATH directory they were most of spawn's Python work.
    def run() -> List[List[str]]:
        os.environ["PATH"] = "/nonexistent:/usr/bin:/bin"
        args = ["x", b"y", "z\udcff"]
        return [_python_calls(lambda: linux_clone.spawn(["/bin/true", *args])),
                _python_calls(lambda: linux_clone.spawn(["true", *args]))]
    for calls in in_child(run):
        assert "fsencode" not in calls and "join" not in calls, calls


def test_spawn_path_forms(tmp_path: pathlib.Path) -> None:
    # PATH entries with a trailing slash, doubled slashes and the empty entry (the current
    # directory), as os.path.join and execvp take them; non-ASCII names as os.fsencode.
    (tmp_path / "dir").mkdir()
    for name in ("lc-prog", "lc-pr\u00f6g", "lc-\udcff"):
        program = tmp_path / "dir" / name
        program.write_text("#!/bin/sh\necho \"$0\" \"$@\"\n")
        program.chmod(0o755)
    for path in (f"{tmp_path}/dir/", f"/nonexistent:{tmp_path}//dir", ":/nonexistent"):
        for name in ("lc-prog", "lc-pr\u00f6g", "lc-\udcff"):
            code, out = _output([name, "\u00e4", b"\xff"], env={"PATH": path},
                                cwd=tmp_path / "dir")
            expected = subprocess.run([name, "\u00e4", b"\xff"], env={"PATH": path},
                                      cwd=tmp_path / "dir", stdout=subprocess.PIPE,
                                      check=True).stdout.decode("utf-8", "surrogateescape")
            assert (code, out) == (0, expected), (path, name)

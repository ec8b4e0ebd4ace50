"""clone(): exit statuses, the fork-like child, output, namespaces, pidfds, dedicated stacks, id
maps and threaded parents, each checked against the kernel's answer."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Tuple

import pytest

import linux_clone
from linux_clone import (
    FS, NEWCGROUP, NEWIPC, NEWNET, NEWNS, NEWPID, NEWTIME, NEWUSER, NEWUTS, PIDFD,
    DETACHED, SYSVSEM, WALL,
)
from conftest import (TIME_SCALE, children_of, drop_privileges, in_child, in_clone,
                      no_children_left, ns_inode, pidfd_exit, remove_cgroup, run_program,
                      run_python, running_threads, wait_code)

SIGCHLD = signal.SIGCHLD
NOBODY = 65534
PAGE = os.sysconf("SC_PAGESIZE")
MIN_STACK = linux_clone._core.MIN_STACK_SIZE


# ---- helpers ----

def clone_call(func: Callable[[], Any], flags: int = SIGCHLD, stack_size: int = 0,
               **maps: Any) -> Any:
    """Call func() in a clone child and return what it returned."""
    code, value = in_clone(lambda child: linux_clone.clone(child, stack_size, flags, **maps),
                           func)
    assert code == 0, f"clone child exited with {code} (its traceback is on stderr)"
    return value


def ns_inodes(kinds: List[str]) -> Dict[str, int]:
    return {kind: ns_inode(kind) for kind in kinds}


def kernel_has_ns(kind: str) -> bool:
    return os.path.exists(f"/proc/self/ns/{kind}")


# The ways a child is started: on a copy of the caller's stack, on a dedicated stack, from a
# threaded parent (the fork-helper path), and as pid 1 of a new pid namespace.
VARIANTS = [
    pytest.param((0, SIGCHLD, 0), id="fork-like"),
    pytest.param((MIN_STACK, SIGCHLD, 0), id="dedicated-stack"),
    pytest.param((0, SIGCHLD, 3), id="threaded-parent"),
    pytest.param((0, NEWPID | SIGCHLD, 0), id="newpid"),
]


@pytest.fixture
def variant(request: pytest.FixtureRequest) -> Any:
    stack_size, flags, threads = request.param
    if flags & ~0xFF:
        request.getfixturevalue("privileged")
    return stack_size, flags, threads


def clone_variant(func: Callable[[], Any], variant: Any) -> Any:
    stack_size, flags, threads = variant
    with running_threads(threads):
        return clone_call(func, flags, stack_size)


# ---- exit status ----

@pytest.mark.parametrize("value, code", [
    (0, 0), (7, 7), (255, 255), (256, 0), (-1, 255), (None, 0), (True, 1),
])
def test_return_value_is_the_exit_status(value: Any, code: int) -> None:
    pid = linux_clone.clone(lambda: value)
    assert wait_code(pid) == code


@pytest.mark.parametrize("value", ["3", 1.5, [], object()], ids=["str", "float", "list", "object"])
def test_non_int_return_exits_1(value: Any, capfd: pytest.CaptureFixture[str]) -> None:
    pid = linux_clone.clone(lambda: value)
    assert wait_code(pid) == 1
    assert "TypeError" in capfd.readouterr().err


def test_uncaught_exception_exits_1_with_traceback(capfd: pytest.CaptureFixture[str]) -> None:
    def fails_in_child() -> None:
        raise LookupError("no such thing here")

    pid = linux_clone.clone(fails_in_child)
    assert wait_code(pid) == 1
    err = capfd.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert "fails_in_child" in err
    assert "LookupError: no such thing here" in err


@pytest.mark.parametrize("code, status, message", [
    (None, 0, ""), (0, 0, ""), (5, 5, ""), (300, 300 & 0xFF, ""), ("bye", 1, "bye\n"),
])
def test_system_exit_acts_as_at_top_level(code: Any, status: int, message: str,
                                          capfd: pytest.CaptureFixture[str]) -> None:
    capfd.readouterr()
    pid = linux_clone.clone(lambda: sys.exit(code))
    assert wait_code(pid) == status
    assert capfd.readouterr().err == message


class _TwistedInt(int):
    """An int whose arithmetic and conversions lie: only its value may count."""
    def __and__(self, other: Any) -> int:
        return 0

    def __index__(self) -> int:
        return 0

    def __int__(self) -> int:
        return 0


EXIT_CODES = [0, 1, 255, 256, -1, -255, 2**31 - 1, 2**31, 2**32 + 3, 2**63 - 1, 2**63,
              -2**63, -2**63 - 1, 2**100, True, False, _TwistedInt(7), _TwistedInt(2**64)]

# The interpreter's own answer: sys.exit(code) at the top level of a forked child.
TOP_LEVEL_EXIT = """
import json, os, sys
class _TwistedInt(int):
    __and__ = __index__ = __int__ = lambda *args: 0
codes = [0, 1, 255, 256, -1, -255, 2**31 - 1, 2**31, 2**32 + 3, 2**63 - 1, 2**63,
         -2**63, -2**63 - 1, 2**100, True, False, _TwistedInt(7), _TwistedInt(2**64)]
statuses = []
for code in codes:
    pid = os.fork()
    if pid == 0:
        sys.exit(code)
    statuses.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
print(json.dumps(statuses))
"""


@pytest.fixture(scope="module")
def top_level_exit_statuses() -> List[int]:
    proc = run_python(TOP_LEVEL_EXIT)
    assert proc.returncode == 0, proc.stderr.decode()
    statuses = json.loads(proc.stdout)
    assert len(statuses) == len(EXIT_CODES) and statuses[EXIT_CODES.index(2**63)] == 255
    return statuses  # type: ignore[no-any-return]


@pytest.mark.parametrize("how", ["return", "sys.exit"])
def test_int_exit_codes_as_the_interpreter_exits(how: str,
                                                 top_level_exit_statuses: List[int]) -> None:
    # (int)PyLong_AsLong(code), -1 on overflow: 2**63 is 255, never 0; 256 and 2**31 are 0
    # at the top level too.
    statuses = []
    for code in EXIT_CODES:
        func = (lambda code=code: code) if how == "return" else (lambda code=code: sys.exit(code))
        statuses.append(wait_code(linux_clone.clone(func)))
    assert statuses == top_level_exit_statuses


@pytest.mark.parametrize("stack_size", [0, MIN_STACK])
@pytest.mark.parametrize("func", [lambda: 0, lambda: 1 // 0, lambda: sys.exit(3)],
                         ids=["return", "raise", "sys.exit"])
def test_child_never_returns_into_the_caller(func: Callable[[], Any], stack_size: int,
                                             capfd: pytest.CaptureFixture[str]) -> None:
    rfd, wfd = os.pipe()
    try:
        pid = linux_clone.clone(func, stack_size)
    finally:
        # A child that came back here would write its own pid too.
        os.write(wfd, b"%d\n" % os.getpid())
        os.close(wfd)
    wait_code(pid)
    with os.fdopen(rfd, "rb") as f:
        assert f.read() == b"%d\n" % os.getpid()


# ---- the child is a normal Python process, as after os.fork() ----

@pytest.mark.parametrize("threads", [0, 2], ids=["single-threaded", "threaded"])
@pytest.mark.parametrize("stack_size", [0, MIN_STACK])
def test_at_fork_hooks_run(threads: int, stack_size: int) -> None:
    proc = run_program("at_fork", threads, stack_size)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().splitlines() == [
        "child ['before', 'after_in_child']",
        "parent ['before', 'after_in_parent'] 0",
    ]


NESTED_IN_HOOK = """
import os, sys, linux_clone
kind, outer_stack, inner_stack = sys.stdin.read().split()
state = {"busy": False, "inner": None}

def hook():
    if not state["busy"]:  # the inner clone runs the hooks again
        state["busy"] = True
        state["inner"] = linux_clone.clone(lambda: 2, int(inner_stack))

def outer():
    if kind == "after_in_child":  # the inner child is this child's own
        return 40 + os.waitstatus_to_exitcode(os.waitpid(state["inner"], 0)[1])
    return 40

os.register_at_fork(**{kind: hook})
pid = linux_clone.clone(outer, int(outer_stack))
codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])]
if kind != "after_in_child":
    codes.append(os.waitstatus_to_exitcode(os.waitpid(state["inner"], 0)[1]))
print(codes)
"""


@pytest.mark.parametrize("kind", ["before", "after_in_parent", "after_in_child"])
@pytest.mark.parametrize("outer_stack, inner_stack", [(0, 0), (MIN_STACK, 0), (0, MIN_STACK),
                                                      (MIN_STACK, MIN_STACK)])
def test_clone_in_an_at_fork_hook_runs_its_own_func(kind: str, outer_stack: int,
                                                     inner_stack: int) -> None:
    proc = run_python(NESTED_IN_HOOK, input=f"{kind} {outer_stack} {inner_stack}".encode(),
                      timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode() == ("[42]\n" if kind == "after_in_child" else "[40, 2]\n")
    assert proc.stderr == b""


@pytest.mark.parametrize("variant", VARIANTS, indirect=True)
def test_child_has_only_the_calling_thread(variant: Any) -> None:
    stop = threading.Event()
    waiters = [threading.Thread(target=stop.wait, daemon=True) for _ in range(3)]
    for thread in waiters:
        thread.start()
    try:
        assert threading.active_count() >= 4
        count, is_main = clone_variant(
            lambda: (threading.active_count(),
                     threading.current_thread() is threading.main_thread()), variant)
    finally:
        stop.set()
        for thread in waiters:
            thread.join()
    assert (count, is_main) == (1, True)


@pytest.mark.parametrize("variant", VARIANTS, indirect=True)
def test_subprocess_works_in_child(variant: Any) -> None:
    def child() -> Any:
        proc = subprocess.run(["sh", "-c", "echo $PPID; exit 4"], capture_output=True)
        return os.getpid(), proc.returncode, proc.stdout

    pid, returncode, out = clone_variant(child, variant)
    assert (returncode, out) == (4, b"%d\n" % pid)


@pytest.mark.parametrize("variant", VARIANTS, indirect=True)
def test_fork_works_in_child(variant: Any) -> None:
    def child() -> Any:
        rfd, wfd = os.pipe()
        grandchild = os.fork()
        if grandchild == 0:
            os.write(wfd, b"%d" % os.getppid())
            os._exit(9)
        os.close(wfd)
        parent_seen = os.read(rfd, 32)
        return os.getpid(), int(parent_seen), wait_code(grandchild)

    me, parent_seen, code = clone_variant(child, variant)
    assert (parent_seen, code) == (me, 9)


@pytest.mark.parametrize("variant", VARIANTS, indirect=True)
def test_threads_work_in_child(variant: Any) -> None:
    def child() -> Any:
        from concurrent.futures import ThreadPoolExecutor
        results = []
        lock = threading.Lock()

        def work(n: int) -> int:
            with lock:
                results.append(n)
            return n * n

        with ThreadPoolExecutor(4) as pool:
            squares = list(pool.map(work, range(50)))
        return sum(squares), sorted(results) == list(range(50)), threading.active_count()

    assert clone_variant(child, variant) == (sum(n * n for n in range(50)), True, 1)


CHILD_EXIT = """
import atexit, os, sys, threading, time, linux_clone
from concurrent.futures import ThreadPoolExecutor
atexit.register(print, "parent's atexit handler")

def child():
    def work(name):
        time.sleep(0.3)
        print(name, "done", flush=True)

    worker = threading.Thread(target=work, args=("thread",))
    worker.start()
    ThreadPoolExecutor(1).submit(work, "pool")  # never shut down: its atexit hook joins it
    threading.Thread(target=threading.Event().wait, daemon=True).start()  # not waited for
    atexit.register(lambda: print("child's atexit handler, thread alive:", worker.is_alive()))
    print("func returns")
    if ending == "return":
        return 3
    if ending == "sys.exit":
        sys.exit(4)
    raise KeyError("k")

ending, stack_size = sys.stdin.read().split()
pid = linux_clone.clone(child, int(stack_size))
print("exit", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
"""


@pytest.mark.parametrize("ending, code", [("return", 3), ("sys.exit", 4), ("raise", 1)])
@pytest.mark.parametrize("stack_size", [0, MIN_STACK])
def test_child_exits_as_a_multiprocessing_child(ending: str, code: int,
                                                stack_size: int) -> None:
    # Non-daemon threads are joined, then the child's own atexit handlers run; the parent's
    # do not (they would run the parent's cleanup again).
    proc = run_python(CHILD_EXIT, input=f"{ending} {stack_size}".encode(), timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()
    lines = proc.stdout.decode().splitlines()
    assert lines[0] == "func returns"
    assert sorted(lines[1:3]) == ["pool done", "thread done"]
    assert lines[3:] == ["child's atexit handler, thread alive: False", f"exit {code}",
                         "parent's atexit handler"]


# ---- output: written once, never lost ----

@pytest.mark.parametrize("ending, code", [("return", 0), ("exit", 6), ("raise", 1)],
                         ids=["return", "exit", "raise"])
@pytest.mark.parametrize("variant", VARIANTS, indirect=True)
def test_output_reaches_pipes_once(variant: Any, ending: str, code: int) -> None:
    stack_size, flags, threads = variant
    if flags & NEWPID:
        flags &= ~0xFF  # exit signal 0: the child is reaped with WALL
    proc = run_program("output", threads, stack_size, int(flags), ending)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().splitlines() == [
        "parent before clone", "child stdout line", f"parent after {code}"]
    err = proc.stderr.decode()
    assert err.count("parent stderr before clone") == 1
    assert err.count("child stderr") == 1
    assert ("KeyError: 'k'" in err) == (code == 1)


# ---- NEWPID ----

def test_newpid_child_is_pid_1(privileged: None) -> None:
    assert clone_call(lambda: (os.getpid(), os.getppid()), NEWPID | SIGCHLD) == (1, 0)


def test_newpid_exit_signal_0_is_reaped_with_wall(privileged: None) -> None:
    assert WALL == 0x40000000
    pid = linux_clone.clone(lambda: 42 if os.getpid() == 1 else 1, 0, NEWPID)
    try:
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # no SIGCHLD: not a child waitpid() sees without WALL
    finally:
        assert wait_code(pid, WALL) == 42


# ---- new namespaces ----

NS_KINDS = ["net", "uts", "ipc", "mnt", "user", "cgroup", "pid", "pid_for_children"]
NEW_NAMESPACES = [
    (NEWNET, {"net"}), (NEWUTS, {"uts"}), (NEWIPC, {"ipc"}), (NEWNS, {"mnt"}),
    (NEWUSER, {"user"}), (NEWCGROUP, {"cgroup"}), (NEWPID, {"pid", "pid_for_children"}),
    (NEWNET | NEWUTS | NEWIPC | NEWNS, {"net", "uts", "ipc", "mnt"}),
]


@pytest.mark.parametrize("flag, changed", NEW_NAMESPACES,
                         ids=["+".join(sorted(changed)) for _, changed in NEW_NAMESPACES])
def test_namespace_flags_give_new_namespaces(flag: int, changed: set, privileged: None) -> None:
    mine = ns_inodes(NS_KINDS)
    theirs = clone_call(lambda: ns_inodes(NS_KINDS), flag | SIGCHLD)
    assert {kind for kind in NS_KINDS if theirs[kind] != mine[kind]} == changed
    assert ns_inodes(NS_KINDS) == mine


def test_newtime(privileged: None) -> None:
    if not kernel_has_ns("time"):
        pytest.skip("kernel without time namespaces")
    kinds = ["time", "time_for_children", "net", "user"]
    mine = ns_inodes(kinds)
    # 0x80 is NEWTIME, not part of the exit signal: the child still signals SIGCHLD, so a
    # plain waitpid (no WALL) reaps it.
    pid = linux_clone.clone(lambda: 0, 0, NEWTIME | SIGCHLD)
    assert wait_code(pid) == 0
    theirs = clone_call(lambda: ns_inodes(kinds), NEWTIME | SIGCHLD)
    assert theirs["time"] != mine["time"]
    assert theirs["time_for_children"] == theirs["time"]
    assert (theirs["net"], theirs["user"]) == (mine["net"], mine["user"])
    assert ns_inodes(kinds) == mine


def test_hostname_in_newuts_child_does_not_leak(privileged: None) -> None:
    before = socket.gethostname()

    def child() -> Any:
        socket.sethostname("lc-clone-test")
        return socket.gethostname(), os.uname().nodename

    assert clone_call(child, NEWUTS | SIGCHLD) == ("lc-clone-test", "lc-clone-test")
    assert socket.gethostname() == before != "lc-clone-test"


def test_newuser_newnet_works_unprivileged(privileged: None) -> None:
    def attempt() -> Any:
        drop_privileges(NOBODY, NOBODY)
        with pytest.raises(PermissionError) as denied:
            linux_clone.clone(lambda: 0, 0, NEWNET | SIGCHLD)
        mine = ns_inodes(["net", "user"])
        theirs = clone_call(lambda: ns_inodes(["net", "user"]), NEWUSER | NEWNET | SIGCHLD)
        return denied.value.errno, mine, theirs, no_children_left()

    err, mine, theirs, clean = in_child(attempt)
    assert err == errno.EPERM
    assert theirs["net"] != mine["net"] and theirs["user"] != mine["user"]
    assert clean


# ---- PIDFD ----

@pytest.mark.parametrize("variant", VARIANTS, indirect=True)
def test_pidfd_is_returned_and_waitable(variant: Any) -> None:
    stack_size, flags, threads = variant
    with running_threads(threads):
        result = linux_clone.clone(lambda: 17, stack_size, flags | PIDFD)
    assert pidfd_exit(result) == (result[0], os.CLD_EXITED, 17)


def test_pidfd_with_exit_signal_0(privileged: None) -> None:
    pid, pidfd = linux_clone.clone(lambda: 3, 0, NEWPID | PIDFD)
    try:
        info = os.waitid(os.P_PIDFD, pidfd, os.WEXITED | WALL)
    finally:
        os.close(pidfd)
    assert info is not None and (info.si_pid, info.si_status) == (pid, 3)


@pytest.mark.skipif(not hasattr(signal, "pidfd_send_signal"), reason="Python 3.9+")
def test_pidfd_send_signal() -> None:
    rfd, wfd = os.pipe()

    def child() -> int:
        os.write(wfd, b"r")
        while True:
            signal.pause()

    pid, pidfd = linux_clone.clone(child, 0, PIDFD | SIGCHLD)
    try:
        os.close(wfd)
        assert os.read(rfd, 1) == b"r"
        signal.pidfd_send_signal(pidfd, signal.SIGTERM)
        info = os.waitid(os.P_PIDFD, pidfd, os.WEXITED)
    finally:
        os.close(pidfd)
        os.close(rfd)
    assert info is not None
    assert (info.si_pid, info.si_code, info.si_status) == (pid, os.CLD_KILLED, signal.SIGTERM)


# ---- dedicated stacks ----

def _stack_mapping() -> Any:
    """The stack pointer, and the /proc/self/maps lines of the mapping that holds it and of
    the one below."""
    with open("/proc/self/syscall") as f:
        sp = int(f.read().split()[-2], 16)  # "nr args... sp pc" while in this read()
    with open("/proc/self/maps") as f:
        lines = f.read().splitlines()
    for below, line in zip([""] + lines, lines):
        start, end = (int(x, 16) for x in line.split()[0].split("-"))
        if start <= sp < end:
            return sp, line, below
    raise AssertionError(f"stack pointer {sp:#x} is in no mapping")


@pytest.mark.parametrize("stack_size, usable", [
    (MIN_STACK, MIN_STACK), (MIN_STACK + 1, MIN_STACK + PAGE), (3 * MIN_STACK, 3 * MIN_STACK)])
def test_child_runs_on_its_dedicated_stack(stack_size: int, usable: int) -> None:
    sp, line, below = clone_call(_stack_mapping, SIGCHLD, stack_size)
    start, end = (int(x, 16) for x in line.split()[0].split("-"))
    guard_start, guard_end = (int(x, 16) for x in below.split()[0].split("-"))
    # An inaccessible guard page, then the stack; the kernel may merge a neighbour above it
    # into the same line of maps, so the stack's own top is start + usable.
    assert below.split()[1] == "---p" and guard_end == start and guard_end - guard_start >= PAGE
    assert line.split()[1] == "rw-p" and "[stack]" not in line and end - start >= usable
    assert 0 < start + usable - sp < 64 * 1024


def test_stack_size_0_runs_on_the_copied_stack() -> None:
    _, line, _ = clone_call(_stack_mapping, SIGCHLD, 0)
    assert line.endswith("[stack]")


def test_recursion_on_a_dedicated_stack() -> None:
    def child() -> Any:
        def down(n: int) -> int:
            return 0 if n == 0 else 1 + down(n - 1)

        nested: list = []
        for _ in range(300):
            nested = [nested]
        return down(500), len(repr(nested)), len(json.dumps(nested))

    assert clone_call(child, SIGCHLD, 2 * MIN_STACK) == (500, 602, 602)


@pytest.mark.parametrize("threads, clones", [(0, 1000), (2, 300)],
                         ids=["single-threaded", "threaded"])
def test_stack_not_leaked_over_many_clones(threads: int, clones: int) -> None:
    proc = run_program("stack_leak", threads, clones)
    assert proc.returncode == 0, proc.stderr.decode()
    report = json.loads(proc.stdout)
    before, after = report["before"], report["after"]
    assert report["wrong"] == 0 and not report["children"]
    assert after["fds"] == before["fds"]
    assert after["maps"] - before["maps"] <= 8, report
    assert after["vmsize"] - before["vmsize"] < 32 * 1024, report  # KiB; leaks: 1 MiB each
    assert after["rss"] - before["rss"] < 16 * 1024, report


def _raises_without_a_child(call: Callable[[], Any], fds_too: bool = False) -> Any:
    """In a fresh child process: call() must raise; return the exception, and whether the call
    left any process behind (or let one exit: SIGCHLD) -- or, with fds_too, an fd open."""
    def attempt() -> Any:
        chld = []
        signal.signal(signal.SIGCHLD, lambda *_: chld.append(1))
        fds = os.listdir("/proc/self/fd")
        try:
            call()
        except BaseException as exc:
            raised = exc
        else:
            raise AssertionError("the call did not raise")
        return raised, (no_children_left() and not chld
                        and (not fds_too or os.listdir("/proc/self/fd") == fds))

    return in_child(attempt)


@pytest.mark.parametrize("stack_size, exc_type, err", [
    (-1, ValueError, None), (-(1 << 20), ValueError, None),
    (1 << 60, OSError, errno.ENOMEM), ((1 << 63) - 1, OSError, errno.ENOMEM),
    (1 << 63, OverflowError, None), (1 << 64, OverflowError, None),
])
def test_bad_stack_size(stack_size: int, exc_type: type, err: Any) -> None:
    exc, clean = _raises_without_a_child(lambda: linux_clone.clone(lambda: 0, stack_size))
    assert type(exc) is exc_type or (exc_type is OSError and isinstance(exc, OSError))
    assert getattr(exc, "errno", None) == err
    assert clean


def _raises_leaving_nothing(call: Callable[[], Any]) -> Any:
    """As _raises_without_a_child, and the call must leave no fd open either."""
    return _raises_without_a_child(call, fds_too=True)


# ---- bad arguments ----

@pytest.mark.parametrize("func", [42, None, "print"])
def test_func_not_callable(func: Any) -> None:
    exc, clean = _raises_without_a_child(lambda: linux_clone.clone(func))
    assert isinstance(exc, TypeError) and "callable" in str(exc)
    assert clean


@pytest.mark.parametrize("name", ["VM", "THREAD", "SIGHAND", "SETTLS", "PARENT_SETTID",
                                  "CHILD_SETTID", "CHILD_CLEARTID"])
def test_flags_that_cannot_carry_a_python_child(name: str) -> None:
    flag = getattr(linux_clone, name)
    exc, clean = _raises_without_a_child(lambda: linux_clone.clone(lambda: 0, 0, flag | SIGCHLD))
    assert isinstance(exc, ValueError) and name in str(exc)
    assert clean


@pytest.mark.parametrize("flags", [-1, -SIGCHLD, 1 << 64])
def test_flags_out_of_range(flags: int) -> None:
    exc, clean = _raises_without_a_child(lambda: linux_clone.clone(lambda: 0, 0, flags))
    assert isinstance(exc, OverflowError)
    assert clean


@pytest.mark.parametrize("exit_signal", [65, 100, 127, NEWTIME | 65])
def test_exit_signal_out_of_range(exit_signal: int) -> None:
    exc, clean = _raises_without_a_child(lambda: linux_clone.clone(lambda: 0, 0, exit_signal))
    assert isinstance(exc, ValueError)
    assert clean


def test_unknown_flag_bits_are_einval() -> None:
    # Legacy clone(2) would drop bits above 32 silently; clone() hands them to clone3.
    exc, clean = _raises_without_a_child(lambda: linux_clone.clone(lambda: 0, 0,
                                                                    (1 << 40) | SIGCHLD))
    assert isinstance(exc, OSError) and exc.errno == errno.EINVAL
    assert clean


def test_into_cgroup_needs_a_cgroup() -> None:
    exc, clean = _raises_without_a_child(
        lambda: linux_clone.clone(lambda: 0, 0, linux_clone.INTO_CGROUP | SIGCHLD))
    assert isinstance(exc, ValueError) and "cgroup" in str(exc)
    assert clean


def test_clone3_flags_with_an_exit_signal() -> None:
    exc, clean = _raises_without_a_child(lambda: linux_clone.clone3(lambda: 0, SIGCHLD))
    assert isinstance(exc, ValueError) and "exit_signal" in str(exc)
    assert clean


class Shifty:
    """An int argument whose __index__ gives the next of `values` on each call."""
    def __init__(self, *values: Any) -> None:
        self.values, self.calls = list(values), 0

    def __index__(self) -> int:
        self.calls += 1
        value = self.values[min(self.calls, len(self.values)) - 1]
        if isinstance(value, BaseException):
            raise value
        return int(value)


CONVERTED_TWICE = AssertionError("converted a second time")


@pytest.mark.parametrize("call, names", [
    (lambda func, stack_size, flags, **_: linux_clone.clone(func, stack_size, flags),
     ["stack_size", "flags"]),
    (lambda func, stack_size, flags, **_: linux_clone.clone(func, stack_size, flags,
                                                            uid_map="0 0 1"),
     ["stack_size", "flags"]),
    (lambda func, flags, exit_signal, stack_size, tid: linux_clone.clone3(
        func, flags, exit_signal=exit_signal, stack_size=stack_size, set_tid=[tid]),
     ["flags", "exit_signal", "stack_size", "tid"]),
    (lambda func, flags, exit_signal, stack_size, **_: linux_clone.clone3(
        func, flags, exit_signal=exit_signal, stack_size=stack_size, uid_map="0 0 1"),
     ["flags", "exit_signal", "stack_size"]),
], ids=["clone", "clone-maps", "clone3", "clone3-maps"])
def test_each_argument_is_converted_once(call: Callable[..., Any], names: List[str],
                                         privileged: None) -> None:
    # clone() takes the exit signal in flags, clone3() as exit_signal.
    values = {"stack_size": MIN_STACK, "exit_signal": SIGCHLD, "tid": 1,
              "flags": NEWUSER | NEWPID | (0 if "exit_signal" in names else SIGCHLD)}
    args = {name: Shifty(values[name], CONVERTED_TWICE) for name in values}
    pid = call(lambda: 40 + os.getpid(), **args)
    assert wait_code(pid) == 41  # pid 1 in its new pid namespace
    assert {name: args[name].calls for name in names} == {name: 1 for name in names}


FLAGS_BECOME_VFORK = """
import os, linux_clone
from linux_clone import NEWUSER, VFORK
class Shifty:
    calls = 0
    def __index__(self):
        self.calls += 1
        return NEWUSER | 17 | (VFORK if self.calls > 1 else 0)
flags = Shifty()
pid = linux_clone.clone(lambda: os.getuid(), 0, flags, uid_map="0 0 1")
print(flags.calls, os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""


def test_flags_that_become_vfork_on_a_second_look(privileged: None) -> None:
    # Converted twice, the first answer passed the VFORK check and the second made a VFORK
    # child that waits for maps from a parent suspended until it exits.
    proc = run_python(FLAGS_BECOME_VFORK, timeout=30)
    assert (proc.stdout, proc.stderr) == (b"1 0\n", b"")


@pytest.mark.parametrize("call", [
    pytest.param(lambda func, bad, path: linux_clone.clone(func, bad), id="clone(func, bad)"),
    pytest.param(lambda func, bad, path: linux_clone.clone(func, 0, bad),
                 id="clone(func, 0, bad)"),
    pytest.param(lambda func, bad, path: linux_clone.clone(func, 0, bad, uid_map="0 0 1"),
                 id="clone(func, 0, bad, uid_map='0 0 1')"),
    pytest.param(lambda func, bad, path: linux_clone.clone3(func, bad), id="clone3(func, bad)"),
    pytest.param(lambda func, bad, path: linux_clone.clone3(func, exit_signal=bad),
                 id="clone3(func, exit_signal=bad)"),
    pytest.param(lambda func, bad, path: linux_clone.clone3(func, stack_size=bad),
                 id="clone3(func, stack_size=bad)"),
    pytest.param(lambda func, bad, path: linux_clone.clone3(func, set_tid=[bad], cgroup=path),
                 id="clone3(func, set_tid=[bad], cgroup=path)"),
    pytest.param(lambda func, bad, path: linux_clone.clone3(func, stack_size=bad, cgroup=path),
                 id="clone3(func, stack_size=bad, cgroup=path)"),
    pytest.param(lambda func, bad, path: linux_clone.clone3(func, bad, uid_map="0 0 1"),
                 id="clone3(func, bad, uid_map='0 0 1')"),
])
def test_index_that_raises(call: Callable[..., Any], tmp_path: Any) -> None:
    bad = Shifty(LookupError("from __index__"))
    exc, clean = _raises_leaving_nothing(lambda: call(lambda: 0, bad, str(tmp_path)))
    assert isinstance(exc, LookupError) and str(exc) == "from __index__"
    assert clean


def test_index_that_clones() -> None:
    inner = []

    class Cloning:
        def __index__(self) -> int:
            inner.append(linux_clone.clone(lambda: 6))
            return int(SIGCHLD)

    pid = linux_clone.clone(lambda: 5, 0, Cloning())
    assert (wait_code(pid), [wait_code(p) for p in inner]) == (5, [6])


@pytest.mark.parametrize("stack_size", [0, MIN_STACK])
def test_callable_object_that_clones_again(stack_size: int) -> None:
    class Recloning:
        def __init__(self, depth: int) -> None:
            self.depth = depth

        def __call__(self) -> int:
            if self.depth == 0:
                return 9
            child = linux_clone.clone(Recloning(self.depth - 1), stack_size)
            return 1 + wait_code(child)

    assert wait_code(linux_clone.clone(Recloning(3), stack_size)) == 12


@pytest.mark.parametrize("tid, exc_type", [("1", TypeError), (1.0, TypeError),
                                            (1 << 31, OverflowError), (-(1 << 40), OverflowError)])
def test_bad_set_tid_item_names_it(tid: Any, exc_type: type) -> None:
    exc, clean = _raises_leaving_nothing(lambda: linux_clone.clone3(lambda: 0, set_tid=[5, tid]))
    assert type(exc) is exc_type and str(exc).startswith("set_tid[1]: ")
    assert clean


def test_set_tid_list_changed_by_its_items(privileged: None) -> None:
    # What counts is the list as it was passed: its items are converted from a copy.
    tids: List[Any] = []

    class Emptying:
        def __index__(self) -> int:
            tids.clear()
            return 1

    tids.append(Emptying())
    pid = linux_clone.clone3(lambda: 30 + os.getpid(), NEWPID, set_tid=tids)
    assert wait_code(pid) == 31


@pytest.fixture
def cgroup_path(privileged: None) -> Iterator[str]:
    """A new cgroup v2 directory, removed after the test."""
    with open("/proc/self/mounts") as f:
        mounts = [fields[1] for fields in map(str.split, f) if fields[2] == "cgroup2"]
    if not mounts:
        pytest.skip("no cgroup2 mount")
    path = os.path.join(mounts[0], f"linux_clone-test-clone-{os.getpid()}")
    os.mkdir(path)
    try:
        yield path
    finally:
        remove_cgroup(path)


def _fd_targets() -> List[str]:
    """What the open fds of this process are, as /proc/self/fd links read."""
    targets = []
    for name in os.listdir("/proc/self/fd"):
        try:
            targets.append(os.readlink(f"/proc/self/fd/{name}"))
        except FileNotFoundError:  # the directory listdir had open
            pass
    return targets


@pytest.mark.parametrize("stack_size", [0, MIN_STACK])
@pytest.mark.parametrize("threads", [0, 2], ids=["single-threaded", "threaded"])
def test_clone3_child_holds_no_cgroup_fd_it_did_not_open(stack_size: int, threads: int,
                                                          cgroup_path: str) -> None:
    mine = os.open(cgroup_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with running_threads(threads):
            by_path = in_clone(lambda child: linux_clone.clone3(
                child, stack_size=stack_size, cgroup=cgroup_path), _fd_targets)
            by_fd = in_clone(lambda child: linux_clone.clone3(
                child, stack_size=stack_size, cgroup=mine), _fd_targets)
    finally:
        os.close(mine)
    assert by_path[0] == 0 and by_path[1].count(cgroup_path) == 1  # the caller's `mine`
    assert by_fd[0] == 0 and by_fd[1].count(cgroup_path) == 1  # the caller's fd is its own


def test_clone3_files_cgroup_fd_is_closed_by_the_caller(cgroup_path: str) -> None:
    # With a shared fd table the child does not close the cgroup fd: the caller's close is
    # the one (a second close could hit an fd the child has opened under that number).
    def attempt() -> Any:
        rfd, wfd = os.pipe()

        def child() -> int:
            os.read(rfd, 1)  # until the caller's clone3() has returned
            return 50 + (cgroup_path in _fd_targets())

        pid = linux_clone.clone3(child, linux_clone.FILES, cgroup=cgroup_path)
        os.write(wfd, b"g")
        code = wait_code(pid)
        os.close(rfd)
        os.close(wfd)
        return code, _fd_targets()

    code, left = in_child(attempt)
    assert code == 50 and cgroup_path not in left


def test_clear_sighand_is_a_clone3_flag_that_clone_passes_on() -> None:
    pid = linux_clone.clone(lambda: 5, 0, linux_clone.CLEAR_SIGHAND | SIGCHLD)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 5


@pytest.mark.parametrize("flags", [NEWUSER | FS, NEWNS | FS, NEWIPC | SYSVSEM, PIDFD | DETACHED],
                         ids=["NEWUSER|FS", "NEWNS|FS", "NEWIPC|SYSVSEM", "PIDFD|DETACHED"])
def test_flag_combinations_the_kernel_refuses(flags: int, privileged: None) -> None:
    exc, clean = _raises_without_a_child(lambda: linux_clone.clone(lambda: 0, 0, flags | SIGCHLD))
    assert isinstance(exc, OSError) and exc.errno == errno.EINVAL
    assert clean


# ---- uid_map, gid_map, setgroups ----

def _ids() -> Any:
    return os.getuid(), os.geteuid(), os.getgid(), os.getegid()


@pytest.mark.parametrize("maps, ids", [
    ({}, (None,) * 4),
    ({"uid_map": "0 0 1"}, (0, 0, None, None)),
    ({"uid_map": "7 0 1\n", "gid_map": " 9 0 1 "}, (7, 7, 9, 9)),
    ({"uid_map": [(0, 0, 1)], "gid_map": [(0, 0, 1)]}, (0, 0, 0, 0)),
    ({"uid_map": [(0, 0, 1), (1, 100000, 1000)], "gid_map": "0 0 1\n1 200000 1000",
      "setgroups": "deny"}, (0, 0, 0, 0)),
], ids=["no-maps", "uid-text", "both-text", "tuples", "ranges"])
def test_id_maps_as_root(maps: Dict[str, Any], ids: Any, privileged: None) -> None:
    with open("/proc/sys/kernel/overflowuid") as f:
        overflow = int(f.read())
    expected = tuple(overflow if i is None else i for i in ids)
    assert clone_call(_ids, NEWUSER | SIGCHLD, **maps) == expected


def test_id_maps_unprivileged(privileged: None) -> None:
    def attempt() -> Any:
        drop_privileges(NOBODY, NOBODY)
        inner = clone_call(_ids, NEWUSER | SIGCHLD, uid_map=f"0 {NOBODY} 1",
                           gid_map=[(0, NOBODY, 1)], setgroups="deny")
        return inner, no_children_left()

    assert in_child(attempt) == ((0, 0, 0, 0), True)


@pytest.mark.parametrize("setgroups", ["deny", "allow"])
def test_maps_seen_from_the_parent_while_the_child_waits(setgroups: str,
                                                         privileged: None) -> None:
    rfd, wfd = os.pipe()

    def child() -> int:
        os.close(wfd)
        if os.read(rfd, 1) != b"g" or _ids() != (0, 0, 0, 0):
            return 2
        try:
            os.setgroups([0])
        except PermissionError:
            return 10  # denied, as setgroups "deny" says
        return 11

    pid = linux_clone.clone(child, 0, NEWUSER | SIGCHLD, uid_map=[(0, 0, 1)],
                            gid_map="0 0 1\n1 3000 5", setgroups=setgroups)
    try:
        os.close(rfd)
        with open(f"/proc/{pid}/uid_map") as f:
            uid_map = [line.split() for line in f]
        with open(f"/proc/{pid}/gid_map") as f:
            gid_map = [line.split() for line in f]
        with open(f"/proc/{pid}/setgroups") as f:
            seen_setgroups = f.read()
        os.write(wfd, b"g")
    finally:
        os.close(wfd)
        code = wait_code(pid)
    assert uid_map == [["0", "0", "1"]]
    assert gid_map == [["0", "0", "1"], ["1", "3000", "5"]]
    assert seen_setgroups == setgroups + "\n"
    assert code == (10 if setgroups == "deny" else 11)


def _bad_map_attempt(unprivileged: bool, flags: int, maps: Dict[str, Any]) -> Any:
    """In a child: a clone whose maps the kernel refuses; returns the exception, whether any
    process is left, whether func ran, and whether an fd leaked."""
    if unprivileged:
        drop_privileges(NOBODY, NOBODY)
    rfd, wfd = os.pipe()
    fds = len(os.listdir("/proc/self/fd"))
    try:
        linux_clone.clone(lambda: os.write(wfd, b"ran") and 0, 0, flags, **maps)
    except OSError as exc:
        raised = exc
    else:
        raise AssertionError("clone() with a bad map did not raise")
    leaked = len(os.listdir("/proc/self/fd")) - fds
    os.close(wfd)
    ran = os.read(rfd, 16)
    return raised, no_children_left(), ran, leaked


@pytest.mark.parametrize("unprivileged, maps, err", [
    (False, {"uid_map": "0 1000 10\n5 2000 10"}, errno.EINVAL),
    (False, {"uid_map": [(0, 1000, 1)], "gid_map": [(0, 0, 5), (3, 10, 5)]}, errno.EINVAL),
    (True, {"uid_map": "0 0 1"}, errno.EPERM),
    (True, {"uid_map": f"0 {NOBODY} 2"}, errno.EPERM),
    (True, {"uid_map": f"0 {NOBODY} 1", "gid_map": f"0 {NOBODY} 1"}, errno.EPERM),
], ids=["overlap", "gid-overlap", "unmapped-outer", "range", "gid-without-deny"])
@pytest.mark.parametrize("pidfd", [0, PIDFD], ids=["pid", "pidfd"])
def test_bad_map_raises_in_parent_and_reaps_child(unprivileged: bool, maps: Dict[str, Any],
                                                  err: int, pidfd: int,
                                                  privileged: None) -> None:
    raised, clean, ran, leaked = in_child(_bad_map_attempt, unprivileged,
                                          NEWUSER | SIGCHLD | pidfd, maps)
    assert raised.errno == err
    assert clean, "the child was left behind"
    assert ran == b"", "func ran in spite of the failed map"
    assert leaked == 0


@pytest.mark.parametrize("call", [
    pytest.param(lambda: linux_clone.clone(lambda: 0, 0, NEWUSER | linux_clone.FILES | 17,
                                           uid_map="0 0 1"),
                 id="clone(func, 0, NEWUSER | FILES | 17, uid_map='0 0 1')"),
    pytest.param(lambda: linux_clone.clone(lambda: 0, 0, NEWUSER | linux_clone.FILES | 17,
                                           setgroups="deny"),
                 id="clone(func, 0, NEWUSER | FILES | 17, setgroups='deny')"),
    pytest.param(lambda: linux_clone.clone3(lambda: 0, NEWUSER | linux_clone.FILES,
                                            gid_map="0 0 1"),
                 id="clone3(func, NEWUSER | FILES, gid_map='0 0 1')"),
])
def test_files_with_maps_is_a_value_error(call: Callable[[], Any]) -> None:
    # With a shared fd table the child cannot wait on a pipe of its own for the maps.
    exc, clean = _raises_leaving_nothing(call)
    assert isinstance(exc, ValueError) and "FILES" in str(exc)
    assert clean


def test_func_not_callable_with_maps() -> None:
    exc, clean = _raises_without_a_child(
        lambda: linux_clone.clone(None, 0, NEWUSER | SIGCHLD, uid_map="0 0 1"))
    assert isinstance(exc, TypeError) and "callable" in str(exc)
    assert clean


@pytest.mark.parametrize("maps", [
    {"uid_map": "0 1000"}, {"uid_map": "a b c"}, {"uid_map": "0 1000 0"},
    {"uid_map": "-1 1000 1"}, {"uid_map": f"0 {1 << 32} 1"}, {"uid_map": ""},
    {"uid_map": "0 1000 1\n\n1 2000 1"}, {"gid_map": [(0, 1000)]}, {"gid_map": []},
    {"uid_map": "0 0 1", "setgroups": "yes"}, {"setgroups": "Deny"},
], ids=lambda maps: repr(maps))
def test_malformed_map_is_value_error_before_any_child(maps: Dict[str, Any]) -> None:
    exc, clean = _raises_without_a_child(
        lambda: linux_clone.clone(lambda: 0, 0, NEWUSER | SIGCHLD, **maps))
    assert isinstance(exc, ValueError)
    assert clean


# Raise KeyboardInterrupt (as a SIGINT handler would) at the k-th profiled event from the
# entry into clone() or clone3() with id maps on, for k = 0, 1, ... until a call gets through:
# after each, no child (alive or not: one waiting for maps that never come) and no fd may be
# left that the caller did not get.  A busy thread sends the last sweep through the forked
# helper.  An outside probe's SIGALRM storm left 3-12 children waiting and 13-18 fds per run.
INTERRUPT_CLONE_WITH_MAPS = r"""
import gc, os, sys, threading
import linux_clone
from linux_clone import NEWUSER

CHILDREN = f"/proc/self/task/{os.getpid()}/children"

def leftovers():
    with open(CHILDREN) as f:
        return f.read().split(), sorted(os.listdir("/proc/self/fd"))

def interrupt_at(k, call):
    events = [0]
    def profile(frame, event, arg):
        if event == "return" and frame.f_code in (linux_clone.clone.__code__,
                                                  linux_clone.clone3.__code__):
            sys.setprofile(None)  # started: the child is the caller's
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

def reap(result):
    pid, pidfd = result if isinstance(result, tuple) else (result, -1)
    os.waitpid(pid, linux_clone.WALL)
    if pidfd != -1:
        os.close(pidfd)

def sweep(name, call):
    reap(call())  # once through first: an import interrupted may leave its file to the gc
    before = leftovers()
    for k in range(100000):
        try:
            result = interrupt_at(k, call)
        except KeyboardInterrupt:
            gc.collect()
            if leftovers() != before:
                print(name, k, leftovers())
                return
        else:
            reap(result)
            assert leftovers() == before, (leftovers(), before)
            print(name, "ok", k >= 10)
            return

sweep("clone", lambda: linux_clone.clone(lambda: 0, 0, NEWUSER | 17, uid_map="0 0 1",
                                         gid_map=[(0, 0, 1)], setgroups="deny", pidfd=True))
sweep("clone3", lambda: linux_clone.clone3(lambda: 0, NEWUSER, exit_signal=0,
                                           uid_map=[(0, 0, 1)], pidfd=True))
stop = threading.Event()
threading.Thread(target=stop.wait).start()
sweep("clone threaded", lambda: linux_clone.clone(lambda: 0, 0, NEWUSER | 17,
                                                  uid_map="0 0 1"))
stop.set()
"""


@pytest.mark.timeout(300)
def test_keyboard_interrupt_while_clone_writes_maps_leaves_no_child_or_fd(
        privileged: None) -> None:
    result = run_python(INTERRUPT_CLONE_WITH_MAPS, timeout=280)
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().splitlines() == [
        "clone ok True", "clone3 ok True", "clone threaded ok True"]


# ---- threaded parents ----

def test_threaded_parent_clone_newuser_newpid(privileged: None) -> None:
    rfd, wfd = os.pipe()

    def child() -> int:
        os.close(wfd)
        os.read(rfd, 1)
        return 30 + (os.getpid() == 1) + 2 * (os.getppid() == 0) + 4 * (os.getuid() == 0)

    with running_threads(4):
        assert threading.active_count() >= 5
        pid = linux_clone.clone(child, 0, NEWUSER | NEWPID | SIGCHLD)
        os.close(rfd)
        with open(f"/proc/{pid}/status") as f:
            ppid = [line.split()[1] for line in f if line.startswith("PPid:")]
        os.write(wfd, b"g")
        os.close(wfd)
        code = wait_code(pid)  # a plain waitpid: the caller is the parent
    assert ppid == [str(os.getpid())]
    assert code == 30 + 1 + 2  # pid 1, no parent in its namespace, no uid map
    assert children_of(os.getpid()) == []


def test_threaded_parent_newuser_contrast_with_unshare(privileged: None) -> None:
    def attempt() -> Any:
        drop_privileges(NOBODY, NOBODY)
        with running_threads(4):
            with pytest.raises(OSError) as refused:
                linux_clone.unshare(NEWUSER)
            theirs = clone_call(lambda: (_ids(), ns_inode("user"), os.getpid()),
                                NEWUSER | NEWPID | SIGCHLD, uid_map=f"0 {NOBODY} 1")
        return refused.value.errno, ns_inode("user"), theirs, no_children_left()

    err, mine, (ids, theirs, pid), clean = in_child(attempt)
    assert err == errno.EINVAL
    assert theirs != mine and pid == 1 and ids[:2] == (0, 0)
    assert clean


def test_threaded_parent_many_clones_leave_no_helpers(privileged: None) -> None:
    with running_threads(4):
        pids = [linux_clone.clone(lambda i=i: i, 0, NEWUSER | SIGCHLD) for i in range(20)]
        codes = [wait_code(pid) for pid in pids]
        assert children_of(os.getpid()) == []
    assert codes == list(range(20))


# ---- the threaded stress test of issue 3 ----

# With SIGCHLD and no sharing flag, a threaded parent clones through a forked helper.
FORK_SAFE_SETS = [SIGCHLD, NEWPID | SIGCHLD, NEWUSER | SIGCHLD, NEWNET | SIGCHLD,
                  NEWUSER | NEWPID | NEWNET | SIGCHLD, NEWUTS | NEWIPC | NEWNS | SIGCHLD]
# Another exit signal or a flag that shares state with the caller: only without threads.
DIRECT_SETS = [pytest.param(NEWPID, id="NEWPID"),
               pytest.param(linux_clone.FILES | SIGCHLD, id="FILES|SIGCHLD"),
               pytest.param(NEWNET | signal.SIGURG, id="NEWNET|SIGURG")]


def run_stress(n: int, sets: List[int], timeout: float, max_hung: int) -> Dict[str, Any]:
    """Run programs/clone_stress.py for n clones, a clone that takes `timeout` seconds (times
    TIME_SCALE) counting as hung; its report."""
    timeout *= TIME_SCALE
    proc = run_program("clone_stress", n, timeout, max_hung, *map(int, sets),
                       timeout=(120 + n * 0.2) * TIME_SCALE)
    assert proc.returncode == 0, proc.stderr.decode()
    report = json.loads(proc.stdout)
    print(f"stress: {report['n']} clones in {report['seconds']:.1f} s, "
          f"{len(report['hung'])} hung, {len(report['wrong'])} wrong")
    return report


def test_threaded_stress_quick(privileged: None) -> None:
    report = run_stress(100, FORK_SAFE_SETS, timeout=10, max_hung=1)
    assert (report["n"], report["hung"], report["wrong"]) == (100, [], [])


@pytest.mark.slow
@pytest.mark.timeout((180 + int(os.environ.get("LINUX_CLONE_STRESS_N", 2000)) * 0.2) * TIME_SCALE)
def test_threaded_stress(privileged: None) -> None:
    n = int(os.environ.get("LINUX_CLONE_STRESS_N", 2000))
    report = run_stress(n, FORK_SAFE_SETS, timeout=10, max_hung=3)
    assert (report["n"], report["hung"], report["wrong"]) == (n, [], [])


@pytest.mark.parametrize("flags", DIRECT_SETS)
def test_threaded_parent_refuses_what_the_fork_helper_cannot_do(flags: int) -> None:
    # No child could exit with another signal than the helper's SIGCHLD, or share state with
    # the caller rather than the helper: with threads running, clone() says so instead of
    # risking a child that inherits a lock held by another thread.
    def check() -> Tuple[str, bool]:
        stop = threading.Event()
        worker = threading.Thread(target=stop.wait)
        worker.start()
        try:
            try:
                linux_clone.clone(lambda: 0, 0, flags)
            except RuntimeError as exc:
                message = str(exc)
            else:
                message = ""
        finally:
            stop.set()
            worker.join()
        # join() returns before the kernel has removed the thread's task: wait for that.
        deadline = time.monotonic() + 10
        while len(os.listdir("/proc/self/task")) > 1 and time.monotonic() < deadline:
            time.sleep(0.001)
        pid = linux_clone.clone(lambda: 3, 0, flags)  # alone again: the caller clones itself
        return message, os.waitpid(pid, linux_clone.WALL)[1] >> 8 == 3

    message, works_alone = in_child(check)
    assert "other threads" in message
    assert works_alone

"""clone3() (exit signals, pidfds, cgroups, set_tid, id maps) and spawn() (programs in new
namespaces, exec errors, signals, threads, fds), each checked against the kernel's answer."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pathlib
import re
import resource
import signal
import socket
import subprocess
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest

import linux_clone
from linux_clone import (
    FILES, FS, INTO_CGROUP, NEWCGROUP, NEWIPC, NEWNET, NEWNS, NEWPID, NEWTIME, NEWUSER, NEWUTS,
    PARENT, PIDFD, WALL,
)
from conftest import (Fileno, TIME_SCALE, children_of, drop_privileges, fd_count, in_child,
                      in_clone, no_children_left, pidfd_exit, remove_cgroup, run_program,
                      running_threads, wait_code)

NOBODY = 65534
HAS_TIME_NS = os.path.exists("/proc/self/ns/time")
needs_time_ns = pytest.mark.skipif(not HAS_TIME_NS, reason="kernel without time namespaces")
KERNEL = tuple(int(re.match(r"\d*", part)[0] or 0) for part in os.uname().release.split(".")[:2])
# execve enters the new time namespace from Linux 6.2 on: spawn(NEWTIME) is EINVAL before.
needs_exec_timens = pytest.mark.skipif(KERNEL < (6, 2), reason="spawn(NEWTIME) needs Linux 6.2")
BAD_MAP = "0 1000 10\n5 2000 10"  # overlapping ranges: the kernel refuses it with EINVAL


# ---- helpers ----

def raises_cleanly(call: Callable[[], Any]) -> Tuple[BaseException, bool, int]:
    """In a forked child: call() must raise.  The exception, whether no process is left behind,
    and how many fds the call leaked."""
    def attempt() -> Tuple[BaseException, Any, bool, int]:
        before = fd_count()
        try:
            call()
        except BaseException as exc:
            raised = exc
        else:
            raise AssertionError("the call did not raise")
        return raised, getattr(raised, "filename", None), no_children_left(), fd_count() - before

    exc, filename, clean, leaked = in_child(attempt)
    if isinstance(exc, OSError):
        exc.filename = filename  # set after construction, so pickling drops it
    return exc, clean, leaked


def clone3_call(func: Callable[[], Any], flags: int = 0, **kwargs: Any) -> Any:
    """Call func() in a clone3 child and return what it returned."""
    code, value = in_clone(lambda child: linux_clone.clone3(child, flags, **kwargs), func)
    assert code == 0, f"clone3 child exited with {code} (its traceback is on stderr)"
    return value


@contextlib.contextmanager
def stdout_to_pipe() -> Iterator[int]:
    """Point fd 1 at a pipe inside the block (spawned programs inherit it); yields the read
    end, which the caller reads and closes after the block."""
    rfd, wfd = os.pipe()
    saved = os.dup(1)
    os.dup2(wfd, 1)
    os.close(wfd)
    try:
        yield rfd
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def spawn_output(argv: List[Any], flags: int = 0, **kwargs: Any) -> Tuple[int, str]:
    """Spawn argv with its stdout on a pipe; (exit code, what it wrote)."""
    with stdout_to_pipe() as rfd:
        try:
            result = linux_clone.spawn(argv, flags, **kwargs)
        except BaseException:
            os.close(rfd)
            raise
    with os.fdopen(rfd, "rb") as f:
        out = f.read().decode("utf-8", "surrogateescape")
    if isinstance(result, tuple):
        os.close(result[1])
        result = result[0]
    return wait_code(result), out


def ns_link(kind: str, pid: Any = "self") -> str:
    return os.readlink(f"/proc/{pid}/ns/{kind}")


def cgroup2_mount() -> Optional[str]:
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            if fields[2] == "cgroup2":
                return fields[1]
    return None


def cgroup_v2_line(pid: Any = "self") -> List[str]:
    with open(f"/proc/{pid}/cgroup") as f:
        return [line.rstrip("\n") for line in f if line.startswith("0::")]


@pytest.fixture
def cgroup_dir(privileged: None) -> Iterator[Tuple[str, str]]:
    """A new cgroup v2 directory and the "0::/..." line of a process inside it; removed
    after the test (its children are reaped by then)."""
    mount = cgroup2_mount()
    if mount is None:
        pytest.skip("no cgroup2 mount")
    path = os.path.join(mount, f"linux_clone-test-{os.getpid()}")
    os.mkdir(path)
    try:
        yield path, "0::/" + os.path.relpath(path, mount)
    finally:
        remove_cgroup(path)


def free_pid() -> int:
    """A pid no process or thread has, near the top of the range (where the kernel's cyclic
    allocator seldom is)."""
    with open("/proc/sys/kernel/pid_max") as f:
        pid_max = int(f.read())
    for pid in range(pid_max - 50, 1000, -13):
        if not os.path.exists(f"/proc/{pid}"):
            return pid
    raise AssertionError("no free pid")


# ==== clone3 ====

@pytest.mark.parametrize("stack_size", [0, linux_clone._core.MIN_STACK_SIZE])
@pytest.mark.parametrize("value, code", [(0, 0), (42, 42), (None, 0), (300, 300 & 0xFF)])
def test_clone3_exit_status(value: Any, code: int, stack_size: int) -> None:
    pid = linux_clone.clone3(lambda: value, stack_size=stack_size)
    assert isinstance(pid, int)
    assert wait_code(pid) == code


NS_KINDS = ["net", "uts", "ipc", "mnt", "user", "pid", "pid_for_children",
            *(["time", "time_for_children"] if HAS_TIME_NS else [])]
NEW_NAMESPACES = [
    pytest.param(NEWNET, {"net"}, id="net"),
    pytest.param(NEWUTS, {"uts"}, id="uts"),
    pytest.param(NEWPID, {"pid", "pid_for_children"}, id="pid"),
    pytest.param(NEWTIME, {"time", "time_for_children"}, id="time", marks=needs_time_ns),
    pytest.param(NEWUSER, {"user"}, id="user"),
    pytest.param(NEWNET | NEWUTS | NEWPID, {"net", "uts", "pid", "pid_for_children"},
                 id="net+uts+pid"),
]


@pytest.mark.parametrize("flag, changed", NEW_NAMESPACES)
def test_clone3_namespace_flags_give_new_namespaces(flag: int, changed: set,
                                                    privileged: None) -> None:
    mine = {kind: ns_link(kind) for kind in NS_KINDS}
    theirs = clone3_call(lambda: {kind: ns_link(kind) for kind in NS_KINDS}, flag)
    assert {kind for kind in NS_KINDS if theirs[kind] != mine[kind]} == changed
    assert {kind: ns_link(kind) for kind in NS_KINDS} == mine


def test_clone3_exit_signal_0_is_reaped_with_wall() -> None:
    pid = linux_clone.clone3(lambda: 5, exit_signal=0)
    try:
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # no exit signal: waitpid sees it only with WALL
    finally:
        assert wait_code(pid, WALL) == 5


def test_clone3_exit_signal_is_the_one_sent() -> None:
    def run() -> Tuple[int, set]:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2, signal.SIGCHLD})
        pid = linux_clone.clone3(lambda: 4, exit_signal=signal.SIGUSR2)
        code = wait_code(pid, WALL)
        return code, signal.sigpending()

    code, pending = in_child(run)
    assert code == 4
    assert signal.SIGUSR2 in pending and signal.SIGCHLD not in pending


@pytest.mark.parametrize("flags, exit_signal, options", [
    pytest.param(PIDFD, signal.SIGCHLD, 0, id="sigchld"),
    pytest.param(PIDFD, 0, WALL, id="exit-signal-0"),
    pytest.param(PIDFD | NEWPID, 0, WALL, id="newpid"),
])
def test_clone3_pidfd(flags: int, exit_signal: int, options: int, request: Any) -> None:
    if flags & NEWPID:
        request.getfixturevalue("privileged")
    result = linux_clone.clone3(lambda: 17, flags, exit_signal=exit_signal)
    assert pidfd_exit(result, options) == (result[0], os.CLD_EXITED, 17)


# ---- cgroup ----

@pytest.mark.parametrize("form", ["str", "bytes", "pathlib"])
@pytest.mark.parametrize("threads", [0, 2], ids=["single-threaded", "threaded"])
def test_clone3_into_cgroup_by_path(form: str, threads: int,
                                    cgroup_dir: Tuple[str, str]) -> None:
    path, line = cgroup_dir
    group: Any = {"str": path, "bytes": os.fsencode(path), "pathlib": pathlib.Path(path)}[form]
    mine = cgroup_v2_line()
    before = fd_count()
    with running_threads(threads):
        theirs = clone3_call(cgroup_v2_line, cgroup=group)
    assert theirs == [line] != mine
    assert cgroup_v2_line() == mine
    assert fd_count() == before  # the path was opened and closed again


@pytest.mark.parametrize("wrap", [int, Fileno], ids=["int", "fileno"])
@pytest.mark.parametrize("flags", [0, INTO_CGROUP, PIDFD])
def test_clone3_into_cgroup_by_fd(wrap: Any, flags: int, cgroup_dir: Tuple[str, str]) -> None:
    path, line = cgroup_dir
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    rfd, wfd = os.pipe()
    try:
        def child() -> int:
            os.close(wfd)
            os.read(rfd, 1)
            return 0

        result = linux_clone.clone3(child, flags, cgroup=wrap(fd))
        pid = result[0] if isinstance(result, tuple) else result
        if isinstance(result, tuple):
            os.close(result[1])
        try:
            seen = cgroup_v2_line(pid)  # read by the parent while the child waits
        finally:
            os.write(wfd, b"g")
            code = wait_code(pid)
        os.fstat(fd)  # the caller's fd stays open
    finally:
        os.close(fd)
        os.close(rfd)
        os.close(wfd)
    assert (seen, code) == ([line], 0)


def test_clone3_into_cgroup_with_newcgroup(cgroup_dir: Tuple[str, str]) -> None:
    # The new cgroup namespace is rooted where the child starts: inside the new cgroup.
    path, line = cgroup_dir
    rfd, wfd = os.pipe()

    def child() -> int:
        os.close(rfd)
        os.write(wfd, "\n".join(cgroup_v2_line()).encode())
        return 0

    pid = linux_clone.clone3(child, NEWCGROUP, cgroup=path)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as f:
        inside = f.read().decode()
    assert wait_code(pid) == 0
    assert inside == "0::/"


@pytest.mark.parametrize("kind", ["plain-dir", "missing", "plain-dir-fd", "closed-fd"])
def test_clone3_cgroup_that_is_not_one(kind: str, tmp_path: pathlib.Path) -> None:
    missing = str(tmp_path / "missing")
    if kind == "plain-dir":
        group: Any = str(tmp_path)
        want: Tuple[Any, int, Any] = (OSError, errno.EBADF, str(tmp_path))
    elif kind == "missing":
        group, want = missing, (FileNotFoundError, errno.ENOENT, missing)
    elif kind == "plain-dir-fd":
        group, want = None, (OSError, errno.EBADF, None)
    else:
        group, want = 1000, (OSError, errno.EBADF, None)

    def call() -> None:
        cgroup = group if group is not None else os.open(tmp_path, os.O_RDONLY)
        try:
            linux_clone.clone3(lambda: os._exit(0), cgroup=cgroup)
        finally:
            if group is None:
                os.close(cgroup)

    exc, clean, leaked = raises_cleanly(call)
    assert isinstance(exc, want[0])
    assert (exc.errno, exc.filename) == want[1:]  # type: ignore[attr-defined]
    assert clean and leaked == 0


def test_clone3_into_cgroup_flag_without_cgroup() -> None:
    exc, clean, leaked = raises_cleanly(lambda: linux_clone.clone3(lambda: 0, INTO_CGROUP))
    assert isinstance(exc, ValueError) and "cgroup" in str(exc)
    assert clean and leaked == 0


# ---- set_tid ----

def test_set_tid_1_in_a_new_pid_namespace(privileged: None) -> None:
    assert clone3_call(lambda: (os.getpid(), os.getppid()), NEWPID, set_tid=[1]) == (1, 0)


def test_set_tid_chooses_the_pid_at_each_level(privileged: None) -> None:
    want = free_pid()
    rfd, wfd = os.pipe()

    def child() -> int:
        os.close(wfd)
        os.read(rfd, 1)
        return 0 if os.getpid() == 1 else 1

    pid = linux_clone.clone3(child, NEWPID, set_tid=[1, want])
    os.close(rfd)
    try:
        with open(f"/proc/{pid}/status") as f:
            nspid = [line.split()[1:] for line in f if line.startswith("NSpid:")]
    finally:
        os.write(wfd, b"g")
        os.close(wfd)
        code = wait_code(pid)
    assert pid == want
    assert nspid == [[str(want), "1"]]
    assert code == 0


def test_set_tid_without_a_new_pid_namespace(privileged: None) -> None:
    want = free_pid()
    pid = linux_clone.clone3(lambda: 0 if os.getpid() == want else 1, set_tid=(want,))
    assert pid == want
    assert wait_code(pid) == 0


@pytest.mark.parametrize("flags, set_tid, exc_type, err", [
    pytest.param(0, [1] * 33, ValueError, None, id="33-levels"),
    pytest.param(0, {1}, TypeError, None, id="set"),
    pytest.param(0, {1: 1}, TypeError, None, id="dict"),
    pytest.param(0, [1.0], TypeError, None, id="float"),
    pytest.param(0, "1", TypeError, None, id="str"),
    pytest.param(0, "self", FileExistsError, errno.EEXIST, id="used-pid"),
    pytest.param(0, [1], FileExistsError, errno.EEXIST, id="init's-pid"),
    pytest.param(0, [1, 1], OSError, errno.EINVAL, id="more-levels-than-namespaces"),
    pytest.param(NEWPID, [5], OSError, errno.EINVAL, id="first-pid-not-1"),
    pytest.param(NEWPID, [1, 0], OSError, errno.EINVAL, id="pid-0"),
])
def test_bad_set_tid(flags: int, set_tid: Any, exc_type: type, err: Any,
                     privileged: None) -> None:
    tids = [os.getpid()] if set_tid == "self" else set_tid
    exc, clean, leaked = raises_cleanly(
        lambda: linux_clone.clone3(lambda: 0, flags, set_tid=tids))
    assert type(exc) is exc_type
    assert getattr(exc, "errno", None) == err
    assert clean and leaked == 0


def test_set_tid_unprivileged(privileged: None) -> None:
    # Choosing a pid needs CAP_CHECKPOINT_RESTORE over the pid namespace: a user has it in a
    # pid namespace its own new user namespace owns, not in the outer one.
    def attempt() -> Any:
        drop_privileges(NOBODY, NOBODY)
        inner = clone3_call(os.getpid, NEWUSER | NEWPID, set_tid=[1])
        refused = []
        for flags, tids in ((0, [free_pid()]), (NEWUSER | NEWPID, [1, free_pid()])):
            try:
                linux_clone.clone3(lambda: 0, flags, set_tid=tids)
            except OSError as exc:
                refused.append(exc.errno)
        return inner, refused, no_children_left()

    assert in_child(attempt) == (1, [errno.EPERM, errno.EPERM], True)


# ---- id maps ----

def _ids_and_maps() -> Tuple[int, int, List[List[str]], List[List[str]]]:
    maps = []
    for name in ("uid_map", "gid_map"):
        with open(f"/proc/self/{name}") as f:
            maps.append([line.split() for line in f])
    return os.getuid(), os.getgid(), maps[0], maps[1]


def test_clone3_id_maps_as_root(privileged: None) -> None:
    # The caller's uid and gid 0 appear as 5 and 7 inside; unmapped they would be 65534.
    assert clone3_call(_ids_and_maps, NEWUSER | NEWPID, uid_map="5 0 1\n0 1000 2",
                       gid_map=[(7, 0, 1), (1, 3000, 5)]) == (
        5, 7, [["5", "0", "1"], ["0", "1000", "2"]], [["7", "0", "1"], ["1", "3000", "5"]])
    assert clone3_call(_ids_and_maps, NEWUSER, uid_map="0 0 1", gid_map="0 0 1")[:2] == (0, 0)


def test_clone3_id_maps_unprivileged(privileged: None) -> None:
    def attempt() -> Any:
        drop_privileges(NOBODY, NOBODY)
        return clone3_call(_ids_and_maps, NEWUSER, uid_map=f"0 {NOBODY} 1",
                           gid_map=f"0 {NOBODY} 1", setgroups="deny"), no_children_left()

    assert in_child(attempt) == (
        (0, 0, [["0", str(NOBODY), "1"]], [["0", str(NOBODY), "1"]]), True)


@pytest.mark.parametrize("flags", [NEWUSER, NEWUSER | PIDFD])
def test_clone3_bad_map_reaps_the_child(flags: int, privileged: None,
                                        tmp_path: pathlib.Path) -> None:
    marker = tmp_path / "ran"
    exc, clean, leaked = raises_cleanly(
        lambda: linux_clone.clone3(lambda: marker.touch(), flags, uid_map=BAD_MAP))
    assert isinstance(exc, OSError) and exc.errno == errno.EINVAL
    assert clean and leaked == 0
    assert not marker.exists(), "func ran in spite of the failed map"


# ---- bad arguments ----

@pytest.mark.parametrize("args, kwargs, exc_type", [
    pytest.param((), {"exit_signal": 65}, ValueError, id="exit-signal-65"),
    pytest.param((), {"exit_signal": -1}, ValueError, id="exit-signal--1"),
    pytest.param((), {"exit_signal": 15.0}, TypeError, id="exit-signal-float"),
    pytest.param((1.0,), {}, TypeError, id="flags-float"),
    pytest.param((NEWNET * 1.0,), {}, TypeError, id="flags-float-newnet"),
    pytest.param(("0",), {}, TypeError, id="flags-str"),
    pytest.param((linux_clone.VM,), {}, ValueError, id="VM"),
    pytest.param((linux_clone.THREAD,), {}, ValueError, id="THREAD"),
    pytest.param((), {"stack_size": 4096}, ValueError, id="stack-too-small"),
    pytest.param((), {"setgroups": "no"}, ValueError, id="setgroups"),
])
def test_clone3_bad_arguments(args: tuple, kwargs: Dict[str, Any], exc_type: type) -> None:
    exc, clean, leaked = raises_cleanly(lambda: linux_clone.clone3(lambda: 0, *args, **kwargs))
    assert type(exc) is exc_type
    assert clean and leaked == 0


def test_clone3_exit_signal_65_message() -> None:
    with pytest.raises(ValueError, match="exit signal 65 is not a signal number"):
        linux_clone.clone3(lambda: 0, exit_signal=65)


# ==== spawn ====

def test_spawn_runs_the_program() -> None:
    assert spawn_output(["/bin/sh", "-c", 'echo "$0 $1"; exit 7', "zero", "one"]) == (
        7, "zero one\n")


SPAWN_NS = [
    pytest.param(NEWNET, {"net"}, id="net"),
    pytest.param(NEWUTS, {"uts"}, id="uts"),
    pytest.param(NEWIPC, {"ipc"}, id="ipc"),
    pytest.param(NEWNS, {"mnt"}, id="mnt"),
    pytest.param(NEWUSER, {"user"}, id="user"),
    pytest.param(NEWCGROUP, {"cgroup"}, id="cgroup"),
    pytest.param(NEWNET | NEWUTS | NEWIPC, {"net", "uts", "ipc"}, id="net+uts+ipc"),
]
SPAWN_KINDS = ["net", "uts", "ipc", "mnt", "user", "cgroup"]


@pytest.mark.parametrize("flags, changed", SPAWN_NS)
def test_spawn_program_runs_in_new_namespaces(flags: int, changed: set,
                                              privileged: None) -> None:
    mine = [ns_link(kind) for kind in SPAWN_KINDS]
    code, out = spawn_output(["readlink", *(f"/proc/self/ns/{kind}" for kind in SPAWN_KINDS)],
                             flags)
    theirs = out.split()
    assert code == 0 and len(theirs) == len(SPAWN_KINDS)
    assert {kind for kind, a, b in zip(SPAWN_KINDS, mine, theirs) if a != b} == changed
    assert [ns_link(kind) for kind in SPAWN_KINDS] == mine


def test_spawn_hostname(privileged: None) -> None:
    before = socket.gethostname()
    assert spawn_output(["uname", "-n"], NEWUTS, hostname="lc-spawn-test") == (
        0, "lc-spawn-test\n")
    assert spawn_output(["uname", "-n"], NEWUTS) == (0, before + "\n")
    assert socket.gethostname() == before != "lc-spawn-test"


@pytest.mark.parametrize("loopback", [True, False])
def test_spawn_loopback(loopback: bool, privileged: None) -> None:
    code, out = spawn_output(["ip", "-o", "link", "show", "lo"], NEWNET, loopback=loopback)
    assert code == 0
    link_flags = out[out.index("<") + 1:out.index(">")].split(",")
    assert ("UP" in link_flags) == loopback


def test_spawn_newpid_program_is_pid_1(privileged: None) -> None:
    assert spawn_output(["/bin/sh", "-c", "echo $$ $PPID"], NEWPID) == (0, "1 0\n")


@needs_time_ns
def test_spawn_newtime(privileged: None) -> None:
    if KERNEL < (6, 2):
        # The program would stay in the caller's time namespace: refused, nothing left behind.
        exc, clean, leaked = raises_cleanly(lambda: linux_clone.spawn(["/bin/true"], NEWTIME))
        assert (type(exc), exc.errno) == (OSError, errno.EINVAL), repr(exc)
        assert "Linux 6.2" in str(exc) and clean and leaked == 0
        return
    mine = (ns_link("time"), ns_link("time_for_children"))
    code, out = spawn_output(["readlink", "/proc/self/ns/time",
                              "/proc/self/ns/time_for_children"], NEWTIME)
    time_ns, for_children = out.split()
    assert code == 0
    assert time_ns == for_children and time_ns not in mine and time_ns.startswith("time:")
    assert (ns_link("time"), ns_link("time_for_children")) == mine


ID_SCRIPT = "id -u; id -g; cat /proc/self/uid_map /proc/self/gid_map"


@pytest.mark.parametrize("inner_uid, inner_gid", [(0, 0), (5, 7)])
def test_spawn_id_maps_as_root(inner_uid: int, inner_gid: int, privileged: None) -> None:
    code, out = spawn_output(["/bin/sh", "-c", ID_SCRIPT], NEWUSER,
                             uid_map=f"{inner_uid} 0 1\n100 1000 2",
                             gid_map=[(inner_gid, 0, 1)])
    lines = [line.split() for line in out.splitlines()]
    assert code == 0
    assert lines == [[str(inner_uid)], [str(inner_gid)], [str(inner_uid), "0", "1"],
                     ["100", "1000", "2"], [str(inner_gid), "0", "1"]]
    assert spawn_output(["id", "-u"], NEWUSER) == (0, f"{NOBODY}\n")  # unmapped


def test_spawn_id_maps_unprivileged(privileged: None) -> None:
    def attempt() -> Any:
        drop_privileges(NOBODY, NOBODY)
        mapped = spawn_output(["/usr/bin/id", "-u"], NEWUSER, uid_map=f"0 {NOBODY} 1",
                              gid_map=f"0 {NOBODY} 1")
        both = spawn_output(["/bin/sh", "-c", ID_SCRIPT], NEWUSER | NEWNET,
                            uid_map=f"0 {NOBODY} 1", gid_map=f"0 {NOBODY} 1")
        unmapped = spawn_output(["/usr/bin/id", "-u"], NEWUSER)
        return mapped, both, unmapped, no_children_left()

    mapped, (code, out), unmapped, clean = in_child(attempt)
    assert mapped == (0, "0\n")
    assert code == 0 and [line.split() for line in out.splitlines()] == [
        ["0"], ["0"], ["0", str(NOBODY), "1"], ["0", str(NOBODY), "1"]]
    assert unmapped == (0, f"{NOBODY}\n")  # no map: the overflow uid
    assert clean


@pytest.mark.parametrize("env, expected", [
    ({"A": "1", "B": "x y", "EMPTY": ""}, ["A=1", "B=x y", "EMPTY="]),
    ({}, []),
    ({b"BYTES": b"\xff"}, ["BYTES=\udcff"]),
])
def test_spawn_env_is_exactly_the_environment(env: Dict[Any, Any], expected: List[str]) -> None:
    code, out = spawn_output(["/usr/bin/env"], env=env)
    assert code == 0
    assert sorted(out.splitlines()) == expected


def test_spawn_env_default_is_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LC_SPAWN_MARK", "inherited")
    code, out = spawn_output(["/usr/bin/env"])
    assert code == 0 and "LC_SPAWN_MARK=inherited" in out.splitlines()


@pytest.mark.parametrize("form", [str, os.fsencode, pathlib.Path])
def test_spawn_cwd(form: Callable[[str], Any], tmp_path: pathlib.Path) -> None:
    before = os.getcwd()
    assert spawn_output(["pwd", "-P"], cwd=form(str(tmp_path))) == (
        0, os.path.realpath(tmp_path) + "\n")
    assert os.getcwd() == before


def _program(path: pathlib.Path, text: str, mode: int = 0o755) -> None:
    path.parent.mkdir(exist_ok=True)
    path.write_text(f"#!/bin/sh\necho {text} \"$@\"\n")
    path.chmod(mode)


def test_spawn_searches_path(tmp_path: pathlib.Path) -> None:
    # As execvp does: a directory without it and a non-executable file are passed over.
    _program(tmp_path / "a" / "lc-prog", "from-a", mode=0o644)
    _program(tmp_path / "b" / "lc-prog", "from-b")
    _program(tmp_path / "c" / "lc-prog", "from-c")
    path = f"{tmp_path / 'none'}:{tmp_path / 'a'}:{tmp_path / 'b'}:{tmp_path / 'c'}"
    assert spawn_output(["lc-prog", "x"], env={"PATH": path}) == (0, "from-b x\n")
    # With a slash, no search: relative to cwd.
    assert spawn_output(["./c/lc-prog"], cwd=tmp_path, env={"PATH": path}) == (0, "from-c\n")


def test_spawn_default_path_from_os_environ(monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: pathlib.Path) -> None:
    _program(tmp_path / "lc-prog", "found")
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    assert spawn_output(["lc-prog"]) == (0, "found\n")


@pytest.mark.parametrize("how", ["pidfd=True", "PIDFD", "pidfd-with-maps"])
def test_spawn_pidfd(how: str, request: Any) -> None:
    kwargs: Dict[str, Any] = {"pidfd": True} if how != "PIDFD" else {}
    flags = PIDFD if how == "PIDFD" else 0
    if how == "pidfd-with-maps":
        request.getfixturevalue("privileged")
        flags, kwargs["uid_map"] = NEWUSER, "0 0 1"
    result = linux_clone.spawn(["/bin/sh", "-c", "exit 9"], flags, **kwargs)
    assert pidfd_exit(result) == (result[0], os.CLD_EXITED, 9)


def test_spawn_without_pidfd_returns_a_pid() -> None:
    pid = linux_clone.spawn(["/bin/true"])
    assert isinstance(pid, int) and wait_code(pid) == 0


# ---- exec and setup errors arrive as the OSError they were ----

EXEC_ERRORS = [
    pytest.param("missing", FileNotFoundError, errno.ENOENT, id="missing"),
    pytest.param("missing-in-path", FileNotFoundError, errno.ENOENT, id="missing-in-path"),
    pytest.param("not-executable", PermissionError, errno.EACCES, id="not-executable"),
    pytest.param("not-executable-in-path", PermissionError, errno.EACCES,
                 id="not-executable-in-path"),
    pytest.param("directory", PermissionError, errno.EACCES, id="directory"),
    pytest.param("under-a-file", NotADirectoryError, errno.ENOTDIR, id="under-a-file"),
]


@pytest.mark.parametrize("maps", [False, True], ids=["vfork", "with-maps"])
@pytest.mark.parametrize("kind, exc_type, err", EXEC_ERRORS)
def test_spawn_exec_error(kind: str, exc_type: type, err: int, maps: bool,
                          tmp_path: pathlib.Path, request: Any) -> None:
    if maps:
        request.getfixturevalue("privileged")
    _program(tmp_path / "bin" / "plain", "never", mode=0o644)
    program = {"missing": str(tmp_path / "missing"), "missing-in-path": "lc-missing",
               "not-executable": str(tmp_path / "bin" / "plain"),
               "not-executable-in-path": "plain", "directory": str(tmp_path),
               "under-a-file": str(tmp_path / "bin" / "plain" / "x")}[kind]
    kwargs: Dict[str, Any] = {"env": {"PATH": f"{tmp_path}:{tmp_path / 'bin'}"}}
    if maps:
        kwargs["uid_map"] = "0 0 1"
    exc, clean, leaked = raises_cleanly(
        lambda: linux_clone.spawn([program, "arg"], NEWUSER if maps else 0, **kwargs))
    assert type(exc) is exc_type
    assert (exc.errno, exc.filename) == (err, program)  # type: ignore[attr-defined]
    assert clean, "a child (or zombie) was left behind"
    assert leaked == 0


@pytest.mark.parametrize("kind, exc_type, err", [
    ("missing", FileNotFoundError, errno.ENOENT),
    ("file", NotADirectoryError, errno.ENOTDIR),
])
def test_spawn_cwd_error(kind: str, exc_type: type, err: int, tmp_path: pathlib.Path) -> None:
    (tmp_path / "file").write_text("")
    cwd = str(tmp_path / kind)
    exc, clean, leaked = raises_cleanly(lambda: linux_clone.spawn(["/bin/true"], cwd=cwd))
    assert type(exc) is exc_type
    assert (exc.errno, exc.filename) == (err, cwd)  # type: ignore[attr-defined]
    assert clean and leaked == 0


def test_spawn_bad_map_kills_before_exec(privileged: None, tmp_path: pathlib.Path) -> None:
    marker = tmp_path / "ran"
    exc, clean, leaked = raises_cleanly(
        lambda: linux_clone.spawn(["/usr/bin/touch", str(marker)], NEWUSER, uid_map=BAD_MAP,
                                  pidfd=True))
    assert isinstance(exc, OSError) and exc.errno == errno.EINVAL
    assert clean and leaked == 0
    assert not marker.exists(), "the program ran in spite of the failed map"


def test_spawn_unprivileged_newnet_is_permission_error(privileged: None) -> None:
    def attempt() -> Any:
        drop_privileges(NOBODY, NOBODY)
        before = fd_count()
        try:
            linux_clone.spawn(["/bin/true"], NEWNET)
        except PermissionError as exc:
            raised: Any = exc.errno
        else:
            raised = None
        # ... and works in a new user namespace, which the user owns.
        works = spawn_output(["/bin/true"], NEWUSER | NEWNET)
        return raised, works, no_children_left(), fd_count() - before

    assert in_child(attempt) == (errno.EPERM, (0, ""), True, 0)


@pytest.mark.parametrize("args, kwargs, exc_type", [
    pytest.param((["/bin/true"],), {"hostname": "x"}, ValueError, id="hostname-no-newuts"),
    pytest.param((["/bin/true"], NEWNET), {"hostname": "x"}, ValueError,
                 id="hostname-newnet-only"),
    pytest.param((["/bin/true"],), {"loopback": True}, ValueError, id="loopback-no-newnet"),
    pytest.param((["/bin/true"], NEWUTS), {"loopback": True}, ValueError,
                 id="loopback-newuts-only"),
    *(pytest.param((["/bin/true"], getattr(linux_clone, name)), {}, ValueError, id=name)
      for name in ["VM", "VFORK", "THREAD", "SIGHAND", "SETTLS", "CHILD_CLEARTID"]),
    pytest.param((["/bin/true"], signal.SIGCHLD), {}, ValueError, id="exit-signal"),
    pytest.param((["/bin/true"], 1 << 32), {}, ValueError, id="bit-32"),
    pytest.param((["/bin/true"], INTO_CGROUP), {}, ValueError, id="INTO_CGROUP"),
    pytest.param((["/bin/true"], 1.0), {}, TypeError, id="flags-float"),
    pytest.param(([],), {}, ValueError, id="argv-empty"),
    pytest.param(((),), {}, ValueError, id="argv-empty-tuple"),
    pytest.param(("/bin/true",), {}, TypeError, id="argv-str"),
    pytest.param((b"/bin/true",), {}, TypeError, id="argv-bytes"),
    pytest.param(({"/bin/true": 1},), {}, TypeError, id="argv-dict"),
    pytest.param((["/bin/true", 1],), {}, TypeError, id="argv-int-item"),
    pytest.param((["/bin/true"],), {"env": [("A", "1")]}, TypeError, id="env-list"),
    pytest.param((["/bin/true"],), {"env": "A=1"}, TypeError, id="env-str"),
    pytest.param((["/bin/true"],), {"env": {"A=B": "1"}}, ValueError, id="env-key-with-="),
    pytest.param((["/bin/true"],), {"env": {"A": "1\0"}}, ValueError, id="env-value-nul"),
    pytest.param((["/bin/true", "a\0b"],), {}, ValueError, id="arg-nul"),
    pytest.param((["/bin/tr\0ue"],), {}, ValueError, id="program-nul"),
    pytest.param((["/bin/true"],), {"cwd": "/t\0mp"}, ValueError, id="cwd-nul"),
    pytest.param((["/bin/true"], NEWUTS), {"hostname": "a\0b"}, ValueError,
                 id="hostname-nul"),
    pytest.param((["/bin/true"], NEWUSER), {"uid_map": "0 0"}, ValueError, id="bad-map-text"),
])
def test_spawn_bad_arguments(args: tuple, kwargs: Dict[str, Any], exc_type: type) -> None:
    exc, clean, leaked = raises_cleanly(lambda: linux_clone.spawn(*args, **kwargs))
    assert type(exc) is exc_type, repr(exc)
    assert clean and leaked == 0


# ---- flags that share state with the caller ----

@pytest.mark.parametrize("flags", [FS, FILES | NEWUSER, PARENT, linux_clone.SYSVSEM,
                                   linux_clone.IO, linux_clone.PTRACE, linux_clone.UNTRACED],
                         ids=["FS", "FILES|NEWUSER", "PARENT", "SYSVSEM", "IO", "PTRACE",
                              "UNTRACED"])
def test_spawn_refuses_flags_that_tie_the_child_to_the_caller(flags: int) -> None:
    # FS would let the child's chdir(cwd) move the caller, FILES would let it close the
    # caller's pipes, PARENT would make its pid not the caller's to wait for: refused.
    exc, clean, leaked = raises_cleanly(
        lambda: linux_clone.spawn(["/bin/true"], flags, uid_map="0 0 1" if flags & NEWUSER
                                  else None))
    assert type(exc) is ValueError, repr(exc)
    assert clean and leaked == 0


# ---- signals ----

@pytest.mark.parametrize("disposition, expected", [("handler", -signal.SIGUSR1),
                                                   ("ignore", 3)])
def test_spawn_program_does_not_run_the_parents_handler(disposition: str,
                                                        expected: int) -> None:
    def attempt() -> Any:
        ran: List[int] = []
        signal.signal(signal.SIGUSR1, (lambda *_: ran.append(1)) if disposition == "handler"
                      else signal.SIG_IGN)
        code = wait_code(linux_clone.spawn(["/bin/sh", "-c", "kill -USR1 $$; exit 3"]))
        seen = list(ran)
        os.kill(os.getpid(), signal.SIGUSR1)  # the handler does run for the parent's own
        return code, seen, ran

    code, seen, after = in_child(attempt)
    assert code == expected
    assert seen == []
    assert after == ([1] if disposition == "handler" else [])


@pytest.mark.parametrize("disposition, expected", [("handler", -signal.SIGUSR1),
                                                   ("ignore", 3)])
def test_signal_sent_before_exec_meets_default_handling(disposition: str,
                                                        expected: int) -> None:
    # A signal that reaches the child while it waits for its id maps stays blocked until
    # the child has reset the parent's handlers: it then has its default effect (or none,
    # when ignored), and the parent's handler never runs in the shared memory.
    def attempt() -> Any:
        ran: List[int] = []
        signal.signal(signal.SIGUSR1, (lambda *_: ran.append(1)) if disposition == "handler"
                      else signal.SIG_IGN)
        pid = linux_clone._core.spawn(["/bin/sh", "-c", "exit 3"],
                                      before_start=lambda pid: os.kill(pid, signal.SIGUSR1))
        code = wait_code(pid)
        time.sleep(0.01)
        return code, ran

    assert in_child(attempt) == (expected, [])


@pytest.mark.parametrize("outcome", ["runs", "exec-error", "with-maps", "bad-map"])
def test_spawn_restores_the_signal_mask(outcome: str, privileged: None) -> None:
    def attempt() -> Any:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
        blocked = None
        if outcome in ("runs", "with-maps"):
            maps = {"uid_map": "0 0 1"} if outcome == "with-maps" else {}
            code, out = spawn_output(["grep", "SigBlk", "/proc/self/status"],
                                     NEWUSER if maps else 0, **maps)
            assert code == 0, out
            blocked = int(out.split()[1], 16)
        else:
            maps = {"uid_map": BAD_MAP} if outcome == "bad-map" else {}
            with pytest.raises(OSError):
                linux_clone.spawn(["/nonexistent/program"], NEWUSER if maps else 0, **maps)
        return mask, signal.pthread_sigmask(signal.SIG_BLOCK, []), blocked

    before, after, blocked = in_child(attempt)
    assert before == after == {signal.SIGUSR2}
    if blocked is not None:
        assert blocked == 1 << (signal.SIGUSR2 - 1)  # the program starts with the caller's mask


# ---- a threaded parent ----

def test_spawn_in_a_threaded_parent(privileged: None) -> None:
    proc = run_program("threaded_spawn", 300, 10 * TIME_SCALE, timeout=60 * TIME_SCALE)
    assert proc.returncode == 0, proc.stderr.decode()
    report = json.loads(proc.stdout)
    print(f"threaded spawn: 420 programs in {report['seconds']:.1f} s")
    assert (report["hung"], report["wrong"], report["errors"]) == ([], [], [])


# ---- fds ----

def test_spawn_leaves_the_fd_count_flat(privileged: None, tmp_path: pathlib.Path) -> None:
    maps = {"uid_map": "0 0 1"}

    def one(i: int) -> None:
        case = i % 9
        try:
            if case == 0:
                result: Any = linux_clone.spawn(["/bin/true"])
            elif case == 1:
                result = linux_clone.spawn(["/bin/true"], pidfd=True)
            elif case == 2:
                result = linux_clone.spawn(["/bin/true"], NEWUSER | PIDFD, **maps)
            elif case == 3:
                result = linux_clone.spawn(["/bin/true"], NEWUSER | NEWNET, loopback=True,
                                           **maps)
            elif case == 4:
                result = linux_clone.spawn(["/nonexistent/program"], pidfd=True)
            elif case == 5:
                result = linux_clone.spawn(["/nonexistent/program"], NEWUSER, pidfd=True,
                                           **maps)
            elif case == 6:
                result = linux_clone.spawn(["/bin/true"], cwd=str(tmp_path / "missing"))
            elif case == 7:
                result = linux_clone.spawn(["/bin/true"], NEWUSER, uid_map=BAD_MAP)
            else:
                result = linux_clone.spawn([str(tmp_path)], hostname="x")
        except (OSError, ValueError) as exc:
            assert case >= 4, repr(exc)
            return
        assert case < 4, "a failing spawn succeeded"
        if isinstance(result, tuple):
            os.close(result[1])
            result = result[0]
        assert wait_code(result) == 0

    def run() -> Tuple[int, int, bool]:
        for i in range(18):
            one(i)
        before = fd_count()
        for i in range(200):
            one(i)
        return before, fd_count(), no_children_left()

    before, after, clean = in_child(run)
    assert after == before
    assert clean


# ---- id map parsing ----

class _Index:
    """An int-like object (as numpy's ints are): accepted through __index__."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __index__(self) -> int:
        return self.value


@pytest.mark.parametrize("idmap, text", [
    ("0 1000 1\n 5 2000 10 \n", b"0 1000 1\n5 2000 10\n"),
    ([(0, 1000, 1), [5, 2000, 10]], b"0 1000 1\n5 2000 10\n"),
    ([(_Index(0), _Index(1000), _Index(1))], b"0 1000 1\n"),
    ((entry for entry in [(0, 0, 1)]), b"0 0 1\n"),
])
def test_id_map_text(idmap: Any, text: bytes) -> None:
    assert linux_clone._map_text(idmap) == text


@pytest.mark.parametrize("idmap, exc_type", [
    pytest.param([(0, 1000.9, 1.7)], TypeError, id="floats"),
    pytest.param([("0", "1000", "1")], TypeError, id="str-fields"),
    pytest.param([(0, True, 1)], TypeError, id="bool"),
    pytest.param([(0, None, 1)], TypeError, id="none"),
    pytest.param(["0 1000 1"], TypeError, id="str-entries"),
    pytest.param([0, 1000, 1], TypeError, id="flat-list"),
    pytest.param(b"0 1000 1", TypeError, id="bytes"),
    pytest.param(bytearray(b"0 1000 1"), TypeError, id="bytearray"),
    pytest.param({0: 1000}, TypeError, id="dict"),
    pytest.param(0, TypeError, id="int"),
    pytest.param("0 +1000 1", ValueError, id="text-plus"),
    pytest.param("0 1_000 1", ValueError, id="text-underscore"),
    pytest.param("0 \u0661\u0660 1", ValueError, id="text-arabic-digits"),
    pytest.param("0 -1 1", ValueError, id="text-negative"),
    pytest.param([(0, -1, 1)], ValueError, id="negative"),
    pytest.param([(0, 1 << 32, 1)], ValueError, id="too-large"),
    pytest.param([(0, 0, 0)], ValueError, id="count-0"),
    pytest.param([(0, 0)], ValueError, id="two-fields"),
    pytest.param([], ValueError, id="empty"),
])
def test_id_map_refused(idmap: Any, exc_type: type) -> None:
    with pytest.raises(exc_type):
        linux_clone._map_text(idmap)


@pytest.mark.parametrize("which", ["uid_map", "gid_map"])
@pytest.mark.parametrize("idmap", [b"0 0 1", {0: 0}, [(0, 0.0, 1)]], ids=["bytes", "dict", "float"])
def test_spawn_map_type_error_names_the_map(which: str, idmap: Any) -> None:
    exc, clean, leaked = raises_cleanly(
        lambda: linux_clone.spawn(["/bin/true"], NEWUSER, **{which: idmap}))
    assert type(exc) is TypeError and which in str(exc), repr(exc)
    assert clean and leaked == 0


@pytest.mark.parametrize("which", ["uid_map", "gid_map"])
def test_spawn_map_write_error_names_the_file(which: str, privileged: None) -> None:
    maps = {"uid_map": "0 0 1", "gid_map": "0 0 1", which: BAD_MAP}
    exc, clean, leaked = raises_cleanly(
        lambda: linux_clone.spawn(["/bin/true"], NEWUSER, **maps))
    assert isinstance(exc, OSError) and exc.errno == errno.EINVAL
    assert re.fullmatch(rf"/proc/\d+/{which}", exc.filename or ""), exc.filename
    assert clean and leaked == 0


# ---- failures in the child name their step ----

# The syscall numbers, for a seccomp filter that fails one of them (aarch64: the generic
# table of asm-generic/unistd.h).
SYSCALL_NRS = {"x86_64": {"sethostname": 170, "unshare": 272, "socket": 41},
               "aarch64": {"sethostname": 161, "unshare": 97, "socket": 198}}
SYSCALL_NR = SYSCALL_NRS.get(os.uname().machine, {})
needs_syscall_nr = pytest.mark.skipif(not SYSCALL_NR, reason="the seccomp filter knows the "
                                      "syscall numbers of x86-64 and aarch64 only")


def fail_syscall(nr: int, err: int) -> None:
    """In a child: from now on (inherited by its children), syscall `nr` fails with `err`."""
    import ctypes

    class SockFilter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8),
                    ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]

    program = (SockFilter * 4)(
        SockFilter(0x20, 0, 0, 0),               # ld [nr]
        SockFilter(0x15, 0, 1, nr),              # jeq nr, 0, 1
        SockFilter(0x06, 0, 0, 0x00050000 | err),  # ret ERRNO(err)
        SockFilter(0x06, 0, 0, 0x7FFF0000))      # ret ALLOW
    fprog = SockFprog(len(program), program)
    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
    assert libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
    assert libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) == 0


@needs_syscall_nr
@pytest.mark.parametrize("maps", [False, True], ids=["vfork", "with-maps"])
@pytest.mark.parametrize("syscall, flags, kwargs, step", [
    pytest.param("sethostname", NEWUTS, {"hostname": "lc-h"}, "sethostname", id="hostname"),
    pytest.param("socket", NEWNET, {"loopback": True}, "bringing up lo", id="loopback"),
    pytest.param("unshare", NEWTIME, {}, "unshare(CLONE_NEWTIME)", id="time",
                 marks=[needs_time_ns, needs_exec_timens]),
])
def test_spawn_child_failure_names_its_step(syscall: str, flags: int, kwargs: Dict[str, Any],
                                            step: str, maps: bool, privileged: None) -> None:
    def attempt() -> Any:
        fail_syscall(SYSCALL_NR[syscall], errno.EPERM)
        if maps:
            kwargs["uid_map"] = "0 0 1"
        before = fd_count()
        try:
            linux_clone.spawn(["/bin/true"], flags | (NEWUSER if maps else 0), **kwargs)
        except OSError as exc:
            return exc.errno, str(exc), exc.filename, no_children_left(), fd_count() - before
        raise AssertionError("spawn did not raise")

    err, text, filename, clean, leaked = in_child(attempt)
    assert err == errno.EPERM and step in text, text
    assert filename == kwargs.get("hostname")
    assert clean and leaked == 0


def test_spawn_hostname_length(privileged: None) -> None:
    assert spawn_output(["uname", "-n"], NEWUTS, hostname="h" * 64) == (0, "h" * 64 + "\n")
    exc, clean, leaked = raises_cleanly(
        lambda: linux_clone.spawn(["/bin/true"], NEWUTS, hostname="h" * 65))
    assert type(exc) is ValueError and "hostname" in str(exc), repr(exc)
    assert clean and leaked == 0


# ---- signals the program starts with ----

STATUS = ["cat", "/proc/self/status"]  # cat catches no signal (grep catches SIGSEGV)


def signal_lines(status: str) -> Dict[str, str]:
    return dict(line.split() for line in status.splitlines() if line.startswith(("SigIgn:",
                                                                                  "SigCgt:")))


@pytest.mark.parametrize("maps", [False, True], ids=["vfork", "with-maps"])
def test_spawn_program_signal_dispositions_are_subprocess_ones(maps: bool,
                                                               request: Any) -> None:
    # Python ignores SIGPIPE and SIGXFSZ; subprocess (restore_signals) gives programs SIG_DFL,
    # so that `yes | head -1` ends quietly; a handler the caller installed is SIG_DFL too.
    if maps:
        request.getfixturevalue("privileged")

    def attempt() -> Any:
        signal.signal(signal.SIGUSR1, lambda *_: None)
        kwargs = {"uid_map": "0 0 1"} if maps else {}
        code, out = spawn_output(STATUS, NEWUSER if maps else 0, **kwargs)
        assert code == 0, out
        pipe = spawn_output(["/bin/sh", "-c", "yes | head -1 2>&1; echo $?"],
                            NEWUSER if maps else 0, **kwargs)
        usr1 = wait_code(linux_clone.spawn(["/bin/sh", "-c", "kill -USR1 $$; exit 3"],
                                           NEWUSER if maps else 0, **kwargs))
        expected = subprocess.run(STATUS, capture_output=True, check=True).stdout
        return signal_lines(out), signal_lines(expected.decode()), pipe, usr1

    seen, expected, pipe, usr1 = in_child(attempt)
    assert seen == expected
    assert seen["SigCgt:"] == "0" * 16
    assert pipe == (0, "y\n0\n")
    assert usr1 == -signal.SIGUSR1


# ---- the caller's state: SIGPIPE, other processes, fds, SIGCHLD, signal storms ----

def test_spawn_bad_map_never_raises_sigpipe(privileged: None) -> None:
    for _ in range(3):
        proc = run_program("sigpipe_loop", 300, timeout=120)
        assert (proc.returncode, proc.stdout) == (0, b"done\n"), proc.stderr.decode()


def test_spawn_with_maps_never_waits_for_a_forked_process(privileged: None) -> None:
    proc = run_program("forking_thread", 200, timeout=120)
    report = json.loads(proc.stdout.splitlines()[-1])
    assert report["blocked"] is False, "a spawn waited for a process forked meanwhile"
    assert proc.returncode == 0, proc.stderr.decode()
    print(f"longest spawn {report['longest']:.3f} s, {report['forks']} forked processes")


def _spawn_cases(tmp: str) -> List[Tuple[str, Callable[[], Any]]]:
    """Spawns that succeed and spawns that fail, with and without maps and pidfds."""
    maps = {"uid_map": "0 0 1"}
    return [
        ("plain", lambda: linux_clone.spawn(["/bin/true"])),
        ("pidfd", lambda: linux_clone.spawn(["/bin/true"], pidfd=True)),
        ("netns", lambda: linux_clone.spawn(["/bin/true"], NEWNET, loopback=True)),
        ("maps", lambda: linux_clone.spawn(["/bin/true"], NEWUSER, **maps)),
        ("maps-pidfd", lambda: linux_clone.spawn(["/bin/true"], NEWUSER | PIDFD, **maps)),
        ("missing", lambda: linux_clone.spawn(["/nonexistent/program"])),
        ("missing-maps", lambda: linux_clone.spawn(["/nonexistent/program"], NEWUSER, **maps)),
        ("bad-cwd", lambda: linux_clone.spawn(["/bin/true"], cwd=tmp + "/missing")),
        ("bad-map", lambda: linux_clone.spawn(["/bin/true"], NEWUSER, uid_map=BAD_MAP)),
    ]


def _run_case(call: Callable[[], Any]) -> str:
    """'ok' (the program ran and exited 0, reaped) or the error's name."""
    try:
        result = call()
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, "?")
    if isinstance(result, tuple):
        os.close(result[1])
        result = result[0]
    while True:
        try:
            return "ok" if wait_code(result) == 0 else "failed"
        except InterruptedError:  # pragma: no cover - PEP 475 retries; kept for clarity
            continue
        except ChildProcessError:  # SIGCHLD ignored: reaped by the kernel
            return "ok"


EXPECTED_CASES = {"plain": "ok", "pidfd": "ok", "netns": "ok", "maps": "ok", "maps-pidfd": "ok",
                  "missing": "ENOENT", "missing-maps": "ENOENT", "bad-cwd": "ENOENT",
                  "bad-map": "EINVAL"}


@pytest.mark.timeout(120)
def test_spawn_with_few_free_fds(privileged: None, tmp_path: pathlib.Path) -> None:
    def attempt() -> Any:
        results = {}
        highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
        for fd in range(highest):  # no holes below the highest fd: 0 free fds at the limit
            with contextlib.suppress(OSError):
                os.fstat(fd)
                continue
            os.open("/dev/null", os.O_RDONLY)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        for free in range(4):
            for name, call in _spawn_cases(str(tmp_path)):
                before = fd_count()
                resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1 + free, hard))
                try:
                    outcome = _run_case(call)
                finally:
                    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
                results[f"{free}:{name}"] = (outcome, fd_count() - before)
        return results, no_children_left()

    results, clean = in_child(attempt)
    assert clean
    for key, (outcome, leaked) in results.items():
        free, name = key.split(":")
        assert leaked == 0, key
        assert outcome in (EXPECTED_CASES[name], "EMFILE"), (key, outcome)
    # With an fd to spare, everything works as usual.
    assert {key.split(":")[1]: outcome for key, (outcome, _) in results.items()
            if key.startswith("3:")} == EXPECTED_CASES


@pytest.mark.timeout(120)
@pytest.mark.parametrize("state", ["sigchld-ignored", "sigalrm-storm"])
def test_spawn_under_caller_signal_state(state: str, privileged: None,
                                         tmp_path: pathlib.Path) -> None:
    def attempt() -> Any:
        alarms = [0]
        if state == "sigchld-ignored":
            signal.signal(signal.SIGCHLD, signal.SIG_IGN)
        else:
            signal.signal(signal.SIGALRM, lambda *_: alarms.__setitem__(0, alarms[0] + 1))
            signal.setitimer(signal.ITIMER_REAL, 0.0001, 0.0001)
        before = fd_count()
        try:
            results = [(name, _run_case(call)) for _ in range(10)
                       for name, call in _spawn_cases(str(tmp_path))]
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        return results, fd_count() - before, no_children_left(), alarms[0]

    results, leaked, clean, alarms = in_child(attempt)
    assert [outcome for _, outcome in results] == [EXPECTED_CASES[name] for name, _ in results]
    assert leaked == 0 and clean
    assert state != "sigalrm-storm" or alarms > 100


# ---- every argument converted once ----

class _Fickle(os.PathLike):
    """A path whose __fspath__ answers differently each time it is asked."""

    def __init__(self, *answers: str) -> None:
        self.answers = list(answers)
        self.calls = 0

    def __fspath__(self) -> str:
        self.calls += 1
        return self.answers[min(self.calls, len(self.answers)) - 1]


def test_spawn_converts_argv_once(tmp_path: pathlib.Path) -> None:
    _program(tmp_path / "lc-prog", "ran")
    program = _Fickle("lc-prog", "/nonexistent/elsewhere")
    arg = _Fickle("first", "second")
    assert spawn_output([program, arg], env={"PATH": str(tmp_path)}) == (0, "ran first\n")
    assert (program.calls, arg.calls) == (1, 1)


class _Env(dict):
    """A mapping whose items() is counted, and can raise or re-enter spawn."""

    def __init__(self, how: str, **items: str) -> None:
        super().__init__(**items)
        self.how, self.calls = how, 0

    def items(self) -> Any:
        self.calls += 1
        if self.how == "raise":
            raise KeyError("items() refused")
        if self.how == "reenter":
            wait_code(linux_clone.spawn(["/bin/true"], env={}))
        return super().items()

    def get(self, *args: Any) -> Any:  # os.get_exec_path's way in: must not be needed
        raise AssertionError("env read twice")

    __getitem__ = get


@pytest.mark.parametrize("how", ["count", "reenter"])
def test_spawn_reads_env_once(how: str, tmp_path: pathlib.Path) -> None:
    _program(tmp_path / "lc-prog", "ran")
    env = _Env(how, PATH=str(tmp_path), X="1")
    assert spawn_output(["lc-prog"], env=env) == (0, "ran\n")
    assert env.calls == 1


def test_spawn_env_items_raising() -> None:
    exc, clean, leaked = raises_cleanly(
        lambda: linux_clone.spawn(["/bin/true"], env=_Env("raise", X="1")))
    assert type(exc) is KeyError
    assert clean and leaked == 0


def _orphan_waiting_for_maps(flags: int) -> Any:
    """As a subreaper, start a parent that spawns a child with id maps and dies before it
    writes them; the child's exit code (or "hung") and any process left."""
    import ctypes
    PR_SET_CHILD_SUBREAPER = 36
    assert ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    r, w = os.pipe()
    parent = os.fork()
    if parent == 0:
        def die(pid: int) -> None:
            os.write(w, b"%d\n" % pid)
            os._exit(0)
        linux_clone._core.spawn(["/bin/true"], NEWUSER | flags, before_start=die)
        os._exit(3)
    os.close(w)
    child = int(os.read(r, 32))
    assert wait_code(parent) == 0
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        pid, status = os.waitpid(child, os.WNOHANG)
        if pid:
            return os.waitstatus_to_exitcode(status), children_of(os.getpid())
        time.sleep(0.01)
    os.kill(child, signal.SIGKILL)
    os.waitpid(child, 0)
    return "hung", children_of(os.getpid())


@pytest.mark.parametrize("flags", [0, NEWPID], ids=["plain", "NEWPID"])
def test_spawn_child_dies_with_its_parent(flags: int, privileged: None) -> None:
    # No pipe tells the child that its parent died (another process may hold a copy of it):
    # PR_SET_PDEATHSIG does (-SIGKILL), or, when the parent died before it was armed, the
    # parent's pidfd (exit 127) -- also in a new pid namespace, where getppid() is always 0.
    code, left = in_child(_orphan_waiting_for_maps, flags)
    assert code in (-signal.SIGKILL, 127) and left == []

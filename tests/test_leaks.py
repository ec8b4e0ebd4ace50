"""Leaks and fault paths: 10,000 calls of each cheap function and 1,000 of each way to start
a child leave the fd count, the mappings, the RSS and the arguments' refcounts flat and no
zombie behind; the faults (no memory for a stack, a child killed before func, the process
limit, too deep user namespaces, a parent that dies before the maps) end in a clean error or
exit; and an unprivileged user gets EPERM, except inside a user namespace of its own."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import resource
import signal
import socket
import threading
import time
from typing import Any, Callable, Dict, Iterator, List

import pytest

import linux_clone
from conftest import Fileno, TIME_SCALE, drop_privileges, in_child, run_program
from leak_measure import leftover_children, measure, sample

MIN_STACK = linux_clone._core.MIN_STACK_SIZE

CALLS = 10_000
CHILDREN = 1_000
# Slack over a loop: fds and mappings exactly flat; RSS may move by allocator noise.
RSS_SLACK_KB = 1024
MS_REC, MS_PRIVATE = 0x4000, 0x40000  # <sys/mount.h>
PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>
NOBODY = 65534
NPROC_UID = 64977  # a uid of its own, so that nothing else counts against its RLIMIT_NPROC


DELTAS: Dict[str, Dict[str, Any]] = {}


def assert_flat(name: str, delta: Dict[str, Any]) -> None:
    DELTAS[name] = delta
    assert delta["fds"] == 0 and delta["maps"] == 0, delta
    assert delta["rss_kb"] < RSS_SLACK_KB, delta
    assert all(r == 0 for r in delta["refs"]), delta
    assert delta["children"] == [], delta


@pytest.fixture(scope="module", autouse=True)
def _report_deltas(request: pytest.FixtureRequest) -> Iterator[None]:
    """Print the measured deltas under the test results."""
    yield
    if DELTAS:
        lines = ["test_leaks deltas (fds, maps, rss_kb, refs):"] + [
            f"  {name}: {d['fds']} {d['maps']} {d['rss_kb']} {d['refs']}"
            for name, d in DELTAS.items()]
        reporter = request.config.pluginmanager.get_plugin("terminalreporter")
        capture = request.config.pluginmanager.get_plugin("capturemanager")
        if reporter is not None and capture is not None:
            with capture.global_and_fixture_disabled():
                reporter.write_line("\n" + "\n".join(lines))


def _expect_errno(err: int, func: Callable[..., Any], *args: Any) -> Callable[[], None]:
    def step() -> None:
        try:
            func(*args)
        except OSError as exc:
            assert exc.errno == err, exc
        else:
            raise AssertionError(f"{func.__name__}{args!r} did not fail")
    return step


# ---- 10,000 calls of each cheap function ----

def _setns_round_trip() -> Dict[str, Dict[str, Any]]:
    C = linux_clone
    host = os.open("/proc/self/ns/uts", os.O_RDONLY | os.O_CLOEXEC)
    C.unshare(C.NEWUTS)
    mine = os.open("/proc/self/ns/uts", os.O_RDONLY | os.O_CLOEXEC)
    host_obj, path, bpath = Fileno(host), "/proc/self/ns/uts", b"/proc/self/ns/uts"
    mine_path = f"/proc/{os.getpid()}/fd/{mine}"  # a path to the new namespace, held open
    with C.entered(host, C.NEWUTS):  # the fd it keeps per thread must not take `closed`'s
        pass
    closed = os.open("/dev/null", os.O_RDONLY)
    os.close(closed)

    def ints() -> None:
        C.setns(host, C.NEWUTS)
        C.setns(mine, C.NEWUTS)

    def objects_and_paths() -> None:
        C.setns(host_obj)
        C.setns(mine_path, C.NEWUTS)
        C.setns(path)  # the namespace it is in already
        C.setns(bpath, C.NEWUTS)

    def entered_fd() -> None:
        with C.entered(host, C.NEWUTS):
            pass

    def entered_path_and_pid() -> None:
        with C.entered(mine_path):
            pass
        with C.entered(pid=os.getpid(), nstype=C.NEWUTS | C.NEWNET):
            pass

    result = {
        "setns(int)": measure(ints, CALLS),
        "setns(fileno, path)": measure(objects_and_paths, CALLS,
                                       [host_obj, mine_path, path, bpath]),
        "entered(fd)": measure(entered_fd, CALLS),
        "entered(path, pid=)": measure(entered_path_and_pid, CALLS, [mine_path]),
        "setns(closed fd) EBADF": measure(_expect_errno(errno.EBADF, C.setns, closed), CALLS),
        "setns(missing path) ENOENT": measure(
            _expect_errno(errno.ENOENT, C.setns, "/nonexistent/ns"), CALLS),
        "setns(regular file) EINVAL": measure(
            _expect_errno(errno.EINVAL, C.setns, "/etc/passwd"), CALLS),
    }
    assert os.stat("/proc/self/ns/uts").st_ino == os.fstat(mine).st_ino
    return result


def test_setns_and_entered_stay_flat(privileged: None) -> None:
    for name, delta in in_child(_setns_round_trip).items():
        assert_flat(name, delta)


def _ns_ioctls() -> Dict[str, Dict[str, Any]]:
    C = linux_clone
    net = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    user = os.open("/proc/self/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    net_path, user_path, pid_path = "/proc/self/ns/net", "/proc/self/ns/user", "/proc/self/ns/pid"
    net_obj = Fileno(net)

    def userns() -> None:
        os.close(C.ns_get_userns(net))
        os.close(C.ns_get_userns(net_path))

    def nstype() -> None:
        assert C.ns_get_nstype(net) == C.NEWNET
        assert C.ns_get_nstype(net_obj) == C.NEWNET
        assert C.ns_get_nstype(user_path) == C.NEWUSER

    def owner() -> None:
        assert C.ns_get_owner_uid(user) == 0
        assert C.ns_get_owner_uid(user_path) == 0

    return {
        "ns_get_userns(fd, path)": measure(userns, CALLS, [net_path]),
        "ns_get_nstype(fd, fileno, path)": measure(nstype, CALLS, [net_obj, user_path]),
        "ns_get_owner_uid(fd, path)": measure(owner, CALLS, [user_path]),
        "ns_get_parent(init pid ns) EPERM": measure(
            _expect_errno(errno.EPERM, C.ns_get_parent, pid_path), CALLS, [pid_path]),
        "ns_get_nstype(missing path) ENOENT": measure(
            _expect_errno(errno.ENOENT, C.ns_get_nstype, "/nonexistent/ns"), CALLS),
        "ns_get_owner_uid(net ns) EINVAL": measure(
            _expect_errno(errno.EINVAL, C.ns_get_owner_uid, net), CALLS),
    }


def test_ns_ioctls_stay_flat(privileged: None) -> None:
    for name, delta in in_child(_ns_ioctls).items():
        assert_flat(name, delta)


def _cheap_calls() -> Dict[str, Dict[str, Any]]:
    C = linux_clone
    me, parent = os.getpid(), os.getppid()
    r, w = os.pipe()
    C.unshare(C.NEWNET)  # lo starts down here

    def kcmp() -> None:
        assert C.kcmp(me, me, C.KCMP_VM) == 0
        assert C.kcmp(me, me, C.KCMP_FILE, r, r) == 0
        assert C.kcmp(me, me, C.KCMP_FILE, r, w) != 0

    def pidfd() -> None:
        os.close(C.pidfd_open(me))

    def loopback() -> None:
        C.configure_loopback()

    def unshare_uts() -> None:
        C.unshare(C.NEWUTS)

    result = {
        "kcmp": measure(kcmp, CALLS),
        "kcmp(no such pid) ESRCH": measure(
            _expect_errno(errno.ESRCH, C.kcmp, me, 2**22 + 1, C.KCMP_VM), CALLS),
        "pidfd_open": measure(pidfd, CALLS),
        "pidfd_open(no such pid) ESRCH": measure(
            _expect_errno(errno.ESRCH, C.pidfd_open, 2**22 + 1), CALLS),
        "configure_loopback": measure(loopback, CALLS),
        "unshare(NEWUTS)": measure(unshare_uts, CALLS),
        "unshare(unknown bit) EINVAL": measure(
            _expect_errno(errno.EINVAL, C.unshare, C.NEWUTS | 0x1), CALLS),
    }
    assert parent != me
    with open("/sys/class/net/lo/flags") as f:
        assert int(f.read(), 16) & 0x1  # IFF_UP
    return result


def test_cheap_calls_stay_flat(privileged: None) -> None:
    for name, delta in in_child(_cheap_calls).items():
        assert_flat(name, delta)


# ---- 1,000 of each way to start a child, in a fresh interpreter (a cheap fork) ----

def _child_loop(name: str, n: int = CHILDREN) -> Dict[str, Any]:
    result = run_program("child_loops", name, n, timeout=120 * TIME_SCALE)
    assert result.returncode == 0, result.stderr.decode()
    return json.loads(result.stdout)


@pytest.mark.parametrize("name", ["clone", "clone_stack", "clone_pidfd", "clone3", "spawn",
                                  "spawn_pidfd", "spawn_missing"])
def test_children_leave_nothing_behind(name: str) -> None:
    assert_flat(f"{name} x{CHILDREN}", _child_loop(name))


def test_spawn_with_pidfd_flag_leaks_no_fd() -> None:
    # PIDFD in flags means pidfd=True: the pidfd comes back to the caller, nothing is lost.
    def run() -> int:
        before = len(os.listdir("/proc/self/fd"))
        pid, pidfd = linux_clone.spawn(["/bin/true"], flags=linux_clone.PIDFD)  # type: ignore
        os.waitpid(pid, 0)
        os.close(pidfd)
        return len(os.listdir("/proc/self/fd")) - before
    assert in_child(run) == 0


# ---- faults ----

def _limit(kind: int, soft: int) -> None:
    resource.setrlimit(kind, (soft, resource.getrlimit(kind)[1]))


def test_stack_mmap_failure_is_enomem() -> None:
    def run() -> Dict[str, Any]:
        before = sample()
        with open("/proc/self/status") as f:
            vm_kb = int(re.search(r"VmSize:\s+(\d+)", f.read()).group(1))  # type: ignore
        old = resource.getrlimit(resource.RLIMIT_AS)
        _limit(resource.RLIMIT_AS, (vm_kb + 64 * 1024) * 1024)
        try:
            linux_clone.clone(lambda: 0, stack_size=1 << 30)
        except OSError as exc:
            err = exc.errno
        else:
            err = None
        finally:
            resource.setrlimit(resource.RLIMIT_AS, old)
        return {"errno": err, "fds": sample()[0] - before[0],
                "children": leftover_children()}
    assert in_child(run) == {"errno": errno.ENOMEM, "fds": 0, "children": []}


def _marker_func(path: str) -> Callable[[], int]:
    def func() -> int:
        with open(path, "w"):
            return 0
    return func


def test_child_killed_before_func_when_the_map_write_fails(tmp_path: Any) -> None:
    """Without NEWUSER the parent cannot write the child's uid_map (EPERM): the child, still
    waiting for its maps, is killed and reaped, and func never runs."""
    marker = str(tmp_path / "ran")

    def run() -> Dict[str, Any]:
        before = sample()
        out = {}
        for name, start in [
                ("clone", lambda: linux_clone.clone(_marker_func(marker), uid_map="0 0 1")),
                ("clone3", lambda: linux_clone.clone3(_marker_func(marker), uid_map="0 0 1")),
                ("clone PIDFD", lambda: linux_clone.clone(
                    _marker_func(marker), flags=linux_clone.PIDFD | signal.SIGCHLD,
                    uid_map="0 0 1")),
                ("spawn", lambda: linux_clone.spawn(["/bin/touch", marker], uid_map="0 0 1"))]:
            try:
                start()
            except OSError as exc:
                out[name] = exc.errno
        return {"errors": out, "fds": sample()[0] - before[0], "children": leftover_children(),
                "ran": os.path.exists(marker)}
    assert in_child(run) == {"errors": dict.fromkeys(
        ["clone", "clone3", "clone PIDFD", "spawn"], errno.EPERM), "fds": 0, "children": [],
        "ran": False}


def test_child_killed_right_away_is_reaped_cleanly() -> None:
    def run() -> List[Any]:
        statuses = []
        for start in (lambda: linux_clone.clone(lambda: time.sleep(30)),
                      lambda: linux_clone.clone(lambda: time.sleep(30), stack_size=MIN_STACK),
                      lambda: linux_clone.spawn(["sleep", "30"])):
            pid = start()
            os.kill(pid, signal.SIGKILL)  # type: ignore[arg-type]
            statuses.append(os.waitpid(pid, 0)[1])  # type: ignore[arg-type]
        return [statuses, leftover_children()]
    assert in_child(run) == [[signal.SIGKILL] * 3, []]


def _nproc_eagain(threaded: bool) -> Dict[str, Any]:
    stop = threading.Event()
    if threaded:  # clone() then takes the fork-safe path, through a helper process
        threading.Thread(target=stop.wait, daemon=True).start()
    _limit(resource.RLIMIT_NPROC, 1)
    drop_privileges(NPROC_UID, NPROC_UID)
    before = sample()
    out: Dict[str, Any] = {}
    for name, start in [("clone", lambda: linux_clone.clone(lambda: 0)),
                        ("clone stack", lambda: linux_clone.clone(lambda: 0, stack_size=MIN_STACK)),
                        ("clone3", lambda: linux_clone.clone3(lambda: 0)),
                        ("spawn", lambda: linux_clone.spawn(["/bin/true"]))]:
        try:
            start()
            out[name] = "started"
        except BlockingIOError as exc:
            out[name] = errno.errorcode[exc.errno]
    stop.set()
    out["fds"] = sample()[0] - before[0]
    out["children"] = leftover_children()
    return out


@pytest.mark.parametrize("threaded", [False, True], ids=["direct", "fork-safe"])
def test_process_limit_is_eagain(privileged: None, threaded: bool) -> None:
    assert in_child(_nproc_eagain, threaded) == {
        "clone": "EAGAIN", "clone stack": "EAGAIN", "clone3": "EAGAIN", "spawn": "EAGAIN",
        "fds": 0, "children": []}


def _write_own_maps() -> None:
    for name, text in (("uid_map", "0 0 1"), ("setgroups", "deny"), ("gid_map", "0 0 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)


def _nest_user_namespaces() -> Dict[str, Any]:
    C = linux_clone
    levels = 0
    while True:
        try:
            C.unshare(C.NEWUSER)
        except OSError as exc:
            unshare_errno = exc.errno
            break
        levels += 1
        _write_own_maps()  # the next level needs our uid and gid mapped in this one
    out: Dict[str, Any] = {"levels": levels, "unshare": errno.errorcode[unshare_errno]}
    for name, start in [("clone", lambda: C.clone(lambda: 0, flags=C.NEWUSER | signal.SIGCHLD)),
                        ("clone3", lambda: C.clone3(lambda: 0, C.NEWUSER)),
                        ("spawn", lambda: C.spawn(["/bin/true"], C.NEWUSER))]:
        try:
            start()
            out[name] = "started"
        except OSError as exc:
            out[name] = errno.errorcode[exc.errno]
    out["children"] = leftover_children()
    return out


def test_user_namespaces_past_the_limit(privileged: None) -> None:
    # 32 levels below the initial namespace (kernel/user_namespace.c); Linux < 4.9 said
    # EUSERS, later ones ENOSPC.
    result = in_child(_nest_user_namespaces)
    err = result["unshare"]
    assert err in ("ENOSPC", "EUSERS")
    assert result == {"levels": 33, "unshare": err, "clone": err, "clone3": err, "spawn": err,
                      "children": []}


def _orphaned_while_waiting_for_maps(how: str) -> List[Any]:
    """A subreaper starts a parent that starts a user-namespace child, then dies before
    writing the child's maps.  The child must see EOF on its pipe and exit 127."""
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    r, w = os.pipe()
    parent = os.fork()
    if parent == 0:
        def die(pid: int, *maps: Any) -> None:
            os.write(w, b"%d\n" % pid)
            os._exit(0)  # the maps are never written
        linux_clone._write_maps = die  # type: ignore[assignment]
        # clone and clone3 write the maps in C, after the fork hooks: die in one.
        os.register_at_fork(after_in_parent=lambda: die(int(open(
            f"/proc/self/task/{os.getpid()}/children").read().split()[0])))
        if how == "spawn":
            linux_clone.spawn(["/bin/true"], linux_clone.NEWUSER, uid_map="0 0 1")
        else:
            getattr(linux_clone, how)(lambda: 0, flags=linux_clone.NEWUSER | (
                signal.SIGCHLD if how == "clone" else 0), uid_map="0 0 1")
        os._exit(3)
    os.close(w)
    child = int(os.read(r, 32))
    assert os.waitpid(parent, 0)[1] == 0
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        pid, status = os.waitpid(child, os.WNOHANG | 0x40000000)  # __WALL
        if pid:
            return [os.waitstatus_to_exitcode(status), leftover_children()]
        time.sleep(0.01)
    os.kill(child, signal.SIGKILL)
    os.waitpid(child, 0x40000000)
    return ["hung", leftover_children()]


@pytest.mark.parametrize("how", ["clone", "clone3", "spawn"])
def test_parent_dies_before_the_maps(privileged: None, how: str) -> None:
    # spawn's child is killed by its PR_SET_PDEATHSIG, or exits 127 if its parent died first.
    codes = (127, -signal.SIGKILL) if how == "spawn" else (127,)
    code, left = in_child(_orphaned_while_waiting_for_maps, how)
    assert code in codes and left == []


# ---- unprivileged: EPERM, and the same calls inside a user namespace of one's own ----

def _unprivileged_calls() -> Dict[str, str]:
    C = linux_clone
    net = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    out: Dict[str, str] = {}
    for name, call in [
            ("unshare(NEWNET)", lambda: C.unshare(C.NEWNET)),
            ("setns(net)", lambda: C.setns(net, C.NEWNET)),
            ("pivot_root", lambda: C.pivot_root("/", "/")),
            ("configure_loopback", C.configure_loopback),
            ("clone(NEWNET)", lambda: C.clone(lambda: 0, flags=C.NEWNET | signal.SIGCHLD)),
            ("clone3(NEWNET)", lambda: C.clone3(lambda: 0, C.NEWNET)),
            ("spawn(NEWNET)", lambda: C.spawn(["/bin/true"], C.NEWNET)),
            ("entered(net)", lambda: C.entered(net).__enter__())]:
        try:
            call()
            out[name] = "succeeded"
        except OSError as exc:
            out[name] = errno.errorcode[exc.errno]
    return out


def _as_nobody_in_a_down_netns(func: Callable[[], Any]) -> Any:
    # A network namespace whose lo is down, owned by the initial user namespace: bringing
    # lo up there needs CAP_NET_ADMIN, which nobody lacks.
    linux_clone.unshare(linux_clone.NEWNET)
    drop_privileges(NOBODY, NOBODY)
    return func()


def test_unprivileged_gets_eperm(privileged: None) -> None:
    result = in_child(_as_nobody_in_a_down_netns, _unprivileged_calls)
    assert result == dict.fromkeys(result, "EPERM") and len(result) == 8


def _inside_own_user_namespace() -> Dict[str, Any]:
    """As nobody: a child in new user and network namespaces (uid 0 inside) can do what
    nobody outside cannot."""
    C = linux_clone
    r, w = os.pipe()

    def child() -> int:
        os.close(r)
        out: Dict[str, Any] = {"uid": os.getuid()}
        libc = ctypes.CDLL(None, use_errno=True)
        try:
            C.configure_loopback()
            s = socket.create_server(("127.0.0.1", 0))
            socket.create_connection(s.getsockname(), timeout=5).close()
            out["loopback"] = "ok"
            net = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            C.unshare(C.NEWNET | C.NEWNS | C.NEWUTS)
            C.setns(net, C.NEWNET)
            out["unshare, setns"] = "ok"
            assert libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) == 0
            # A tmpfs over /tmp, in this mount namespace only, is the new root.
            assert libc.mount(b"none", b"/tmp", b"tmpfs", 0, None) == 0, ctypes.get_errno()
            os.mkdir("/tmp/old")
            C.pivot_root("/tmp", "/tmp/old")
            out["pivot_root"] = sorted(os.listdir("/"))
            pid = C.clone(lambda: 0, flags=C.NEWNET | signal.SIGCHLD)
            out["clone(NEWNET)"] = os.waitpid(pid, 0)[1]  # type: ignore[arg-type]
        except OSError as exc:
            out["error"] = repr(exc)
        os.write(w, json.dumps(out).encode())
        return 0

    pid = C.clone(child, flags=C.NEWUSER | C.NEWNET | signal.SIGCHLD, uid_map=f"0 {NOBODY} 1",
                  gid_map=f"0 {NOBODY} 1", setgroups="deny")
    os.close(w)
    with os.fdopen(r) as f:
        out = json.loads(f.read() or "{}")
    out["status"] = os.waitpid(pid, 0)[1]  # type: ignore[arg-type]
    out["children"] = leftover_children()
    return out


def test_unprivileged_inside_own_user_namespace(privileged: None) -> None:
    def run() -> Dict[str, Any]:
        "127.0.0.1".encode("idna")  # socket imports this codec, from where nobody cannot read
        drop_privileges(NOBODY, NOBODY)
        return _inside_own_user_namespace()
    assert in_child(run) == {"uid": 0, "loopback": "ok", "unshare, setns": "ok",
                             "pivot_root": ["old"], "clone(NEWNET)": 0, "status": 0,
                             "children": []}

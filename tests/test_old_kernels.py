"""Every public call on older kernels, emulated with seccomp (tests/seccomp_eras.py): in each era a
call works (through an older path, where it has one) or raises the documented OSError (ENOSYS,
EINVAL; ENOTTY from an nsfs ioctl the kernel does not know), and never crashes, hangs, leaves
a child behind or leaks an fd.

One forked child per era installs the era's filter, then runs each call in a grandchild of its
own (so that a crash or a hang is that call's), and sends back one outcome per call."""

from __future__ import annotations

import ctypes
import errno
import faulthandler
import os
import pickle
import platform
import re
import resource
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Any, Callable, Dict, FrozenSet, List, NamedTuple, Optional, Tuple

import pytest
import seccomp_eras as seccomp
from conftest import in_child, python_env, running_threads

import linux_clone
from linux_clone import CloneFlag

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
PR_SET_CHILD_SUBREAPER = 36  # <sys/prctl.h>
MS_REC, MS_PRIVATE, MNT_DETACH = 0x4000, 0x40000, 2  # <sys/mount.h>
CALL_TIMEOUT = 10.0  # seconds, far above what any call takes: past it, the call hangs


class Outcome(NamedTuple):
    result: str               # "ok", "OSError(ENOSYS)", "crash(SIGSEGV)", "hang", "TypeError: .."
    errno: Optional[int]      # the OSError's errno
    leaked_fds: List[str]     # "fd -> target": open after the call, not before
    children_left: List[str]  # "pid (comm) state": the caller's children after the call
    value: Any = None         # what the call returned


# ---- the calls, each in a grandchild: each checks its own result and cleans up ----

def _check_pidfd(fd: int, pid: int) -> None:
    with open(f"/proc/self/fdinfo/{fd}") as f:
        assert f"Pid:\t{pid}\n" in f.read(), f"fd {fd} is not a pidfd of {pid}"


def _exits_7(result: Any) -> None:
    """A clone/clone3/spawn result: the child exits with 7, a pidfd is the child's."""
    if isinstance(result, tuple):
        pid, pidfd = result
        try:
            _check_pidfd(pidfd, pid)
        finally:
            os.close(pidfd)
    else:
        pid = result
    status = os.waitstatus_to_exitcode(os.waitpid(pid, linux_clone.WALL)[1])
    assert status == 7, f"child exit status {status}"


def _seven() -> int:
    return 7


PIDFD = CloneFlag.PIDFD | signal.SIGCHLD
EXIT_7 = ["sh", "-c", "exit 7"]
ROOT_MAP = "0 0 1"


def call_clone() -> None:
    _exits_7(linux_clone.clone(_seven))


def call_clone_threaded() -> None:
    with running_threads(1):
        _exits_7(linux_clone.clone(_seven))


def call_clone_pidfd() -> None:
    _exits_7(linux_clone.clone(_seven, 0, PIDFD))


def call_clone_pidfd_threaded() -> None:
    with running_threads(1):
        _exits_7(linux_clone.clone(_seven, 0, PIDFD))


def call_clone_newtime() -> None:
    _exits_7(linux_clone.clone(_seven, 0, CloneFlag.NEWTIME | signal.SIGCHLD))


def call_clone_userns_maps() -> None:
    _exits_7(linux_clone.clone(_seven, 0, CloneFlag.NEWUSER | PIDFD, uid_map=ROOT_MAP,
                               gid_map=ROOT_MAP))


def call_clone3() -> None:
    _exits_7(linux_clone.clone3(_seven))


def call_clone3_pidfd() -> None:
    _exits_7(linux_clone.clone3(_seven, CloneFlag.PIDFD))


def call_spawn() -> None:
    _exits_7(linux_clone.spawn(EXIT_7))


def call_spawn_pidfd() -> None:
    _exits_7(linux_clone.spawn(EXIT_7, pidfd=True))


def call_spawn_userns_maps_pidfd() -> None:
    _exits_7(linux_clone.spawn(EXIT_7, CloneFlag.NEWUSER, uid_map=ROOT_MAP, gid_map=ROOT_MAP,
                               pidfd=True))


def call_spawn_newtime() -> None:
    _exits_7(linux_clone.spawn(EXIT_7, CloneFlag.NEWTIME))


def call_unshare() -> None:
    linux_clone.unshare(CloneFlag.NEWUTS)


def call_unshare_newtime() -> None:
    linux_clone.unshare(CloneFlag.NEWTIME)


def call_setns_path() -> None:
    linux_clone.setns("/proc/self/ns/uts", CloneFlag.NEWUTS)


def call_setns_pidfd() -> None:
    fd = linux_clone.pidfd_open(os.getpid())
    try:
        linux_clone.setns(fd, CloneFlag.NEWUTS | CloneFlag.NEWNET)
    finally:
        os.close(fd)


def call_entered_ns() -> None:
    with linux_clone.entered("/proc/self/ns/uts"):
        pass


def call_entered_pid() -> None:
    with linux_clone.entered(pid=os.getpid(), nstype=CloneFlag.NEWUTS | CloneFlag.NEWNET):
        pass


def call_kcmp() -> None:
    assert linux_clone.kcmp(os.getpid(), os.getpid(), linux_clone.KCMP_VM) == 0


def call_pidfd_open() -> None:
    fd = linux_clone.pidfd_open(os.getpid())
    try:
        _check_pidfd(fd, os.getpid())
    finally:
        os.close(fd)


def call_ns_get_nstype() -> None:
    assert linux_clone.ns_get_nstype("/proc/self/ns/net") is CloneFlag.NEWNET


def call_ns_get_owner_uid() -> None:
    assert linux_clone.ns_get_owner_uid("/proc/self/ns/user") == 0


def _same_ns(fd: int, path: str) -> None:
    try:
        assert os.stat(f"/proc/self/fd/{fd}").st_ino == os.stat(path).st_ino
    finally:
        os.close(fd)


def call_ns_get_userns() -> None:
    _same_ns(linux_clone.ns_get_userns("/proc/self/ns/net"), "/proc/self/ns/user")


def call_ns_get_parent() -> None:
    linux_clone.unshare(CloneFlag.NEWPID)
    rfd, wfd = os.pipe()
    pid = os.fork()  # the new pid namespace's init, which it needs to be opened
    if pid == 0:
        os.close(wfd)
        os.read(rfd, 1)
        os._exit(0)
    try:
        _same_ns(linux_clone.ns_get_parent(f"/proc/{pid}/ns/pid"), "/proc/self/ns/pid")
    finally:
        os.close(wfd)
        os.close(rfd)
        os.waitpid(pid, 0)


def call_configure_loopback() -> None:
    linux_clone.unshare(CloneFlag.NEWNET)
    linux_clone.configure_loopback()
    with socket.create_server(("127.0.0.1", 0)) as server:
        socket.create_connection(server.getsockname()).close()


def _mount(source: Optional[str], target: str, fstype: Optional[str], flags: int) -> None:
    if _libc.mount(source and source.encode(), target.encode(), fstype and fstype.encode(),
                   ctypes.c_ulong(flags), None) == -1:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), target)


def call_pivot_root() -> None:
    """In a child: with the old root detached there is no /proc left to check the fds in."""
    pid = os.fork()
    if pid == 0:
        code = 255
        try:
            linux_clone.unshare(CloneFlag.NEWNS)
            _mount(None, "/", None, MS_REC | MS_PRIVATE)
            _mount("tmpfs", _PIVOT_DIR, "tmpfs", 0)
            os.chdir(_PIVOT_DIR)
            linux_clone.pivot_root(".", ".")  # the old root ends up stacked on the new one
            if _libc.umount2(b".", MNT_DETACH) == 0 and os.listdir("/") == []:
                code = 0
        except OSError as exc:
            code = exc.errno or 255
        finally:
            os._exit(code)
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    if 0 < code < 255:
        raise OSError(code, os.strerror(code))
    assert code == 0, f"pivot_root child: exit status {code}"


def call_cli_time() -> None:
    """python -m linux_clone --time: exits 0, or 1 with unshare(1)'s message shape
    (`linux_clone: unshare failed: <strerror>`), turned back into that OSError here."""
    proc = subprocess.run([sys.executable, "-m", "linux_clone", "--time", "--", "true"],
                          cwd="/", env=python_env(), capture_output=True, text=True,
                          timeout=CALL_TIMEOUT / 2)
    for err in (errno.ENOSYS, errno.EINVAL):
        message = f"linux_clone: unshare failed: {os.strerror(err)}\n"
        if (proc.returncode, proc.stderr) == (1, message):
            raise OSError(err, os.strerror(err))
    assert (proc.returncode, proc.stderr) == (0, ""), (proc.returncode, proc.stderr)


class Call(NamedTuple):
    func: Callable[[], None]
    needs: FrozenSet[str]          # kernel features (seccomp.MISSING) it may rely on
    also: FrozenSet[int] = frozenset()  # errnos beyond ENOSYS, EINVAL when one is missing


def _call(func: Callable[[], None], *needs: str, also: FrozenSet[int] = frozenset()) -> Call:
    return Call(func, frozenset(needs), also)


ENOTTY = frozenset({errno.ENOTTY})  # a thin ioctl wrapper gives the kernel's own answer
# What the running kernel lacks in every era: execve enters a new time namespace from Linux
# 6.2 on (spawn(NEWTIME) is EINVAL before).
KERNEL = tuple(int(re.match(r"\d*", part)[0] or 0) for part in os.uname().release.split(".")[:2])
KERNEL_MISSING = frozenset({"exec_timens"} if KERNEL < (6, 2) else ())
CALLS: Dict[str, Call] = {
    "clone": _call(call_clone),
    "clone threaded": _call(call_clone_threaded),
    "clone PIDFD": _call(call_clone_pidfd, "clone_pidfd"),
    # The helper of the threaded path cannot hand back a CLONE_PIDFD fd by itself: the parent
    # may use pidfd_open, or receive the fd.
    "clone PIDFD threaded": _call(call_clone_pidfd_threaded, "clone_pidfd", "pidfd_open"),
    "clone NEWTIME": _call(call_clone_newtime, "clone3", "newtime"),
    "clone NEWUSER maps PIDFD": _call(call_clone_userns_maps, "clone_pidfd"),
    "clone3": _call(call_clone3, "clone3"),
    "clone3 PIDFD": _call(call_clone3_pidfd, "clone3"),
    "spawn": _call(call_spawn),
    "spawn pidfd": _call(call_spawn_pidfd, "clone_pidfd"),
    "spawn NEWUSER maps pidfd": _call(call_spawn_userns_maps_pidfd, "clone_pidfd"),
    "spawn NEWTIME": _call(call_spawn_newtime, "newtime", "exec_timens"),
    "unshare": _call(call_unshare),
    "unshare NEWTIME": _call(call_unshare_newtime, "newtime"),
    "setns path": _call(call_setns_path),
    "setns pidfd": _call(call_setns_pidfd, "pidfd_open"),
    "entered ns": _call(call_entered_ns, "ns_get_nstype", also=ENOTTY),  # documented
    "entered pid": _call(call_entered_pid, "pidfd_open"),
    "kcmp": _call(call_kcmp, "kcmp"),
    "pidfd_open": _call(call_pidfd_open, "pidfd_open"),
    "ns_get_nstype": _call(call_ns_get_nstype, "ns_get_nstype", also=ENOTTY),
    "ns_get_owner_uid": _call(call_ns_get_owner_uid, "ns_get_nstype", also=ENOTTY),
    "ns_get_userns": _call(call_ns_get_userns),
    "ns_get_parent": _call(call_ns_get_parent),
    "configure_loopback": _call(call_configure_loopback),
    "pivot_root": _call(call_pivot_root),
    "python -m linux_clone --time": _call(call_cli_time, "clone3", "newtime"),
}


# ---- the filter's own answers, as raw system calls give them ----

CLONE_PIDFD, CLONE_NEWTIME = 0x1000, 0x80
PIDFD_GET_UTS_NAMESPACE = 0xFF0A  # _IO(0xFF, 10)
PROBES: Dict[str, Any] = {  # name: (feature, system call, arguments)
    "clone3(NULL, 0)": ("clone3", "clone3", (0, 0)),
    "pidfd_open(-1, 0)": ("pidfd_open", "pidfd_open", (-1, 0)),
    "pidfd_getfd(-1, 0, 0)": ("pidfd_getfd", "pidfd_getfd", (-1, 0, 0)),
    "pidfd_send_signal(-1, 0, NULL, 0)": ("pidfd_send_signal", "pidfd_send_signal",
                                          (-1, 0, 0, 0)),
    "kcmp(-1, -1, KCMP_VM, 0, 0)": ("kcmp", "kcmp", (-1, -1, 1, 0, 0)),
    # parent_tid 1 is a bad address: a kernel with CLONE_PIDFD fails storing the fd there,
    # with EFAULT, and creates no child.
    "clone(PIDFD|SIGCHLD, 0, 1)": ("clone_pidfd", "clone", (CLONE_PIDFD | signal.SIGCHLD, 0, 1,
                                                           0, 0)),
    "ioctl(-1, PIDFD_GET_UTS_NAMESPACE)": ("pidfs_ioctl", "ioctl", (-1, PIDFD_GET_UTS_NAMESPACE)),
    "ioctl(-1, NS_GET_NSTYPE)": ("ns_get_nstype", "ioctl", (-1, linux_clone.NS_GET_NSTYPE)),
    "unshare(NEWTIME)": ("newtime", "unshare", (CLONE_NEWTIME,)),
}


def probe() -> Dict[str, int]:
    """The errno (0: success) of each probe's raw system call."""
    numbers = seccomp.ARCHES[platform.machine()][1]
    answers = {}
    for name, (_feature, syscall, args) in PROBES.items():
        ctypes.set_errno(0)
        rc = _libc.syscall(ctypes.c_long(numbers[syscall]), *map(ctypes.c_long, args))
        if rc == 0 and syscall == "clone":
            os._exit(0)  # a kernel that let the bad clone through: its child leaves at once
        if rc > 0 and syscall == "clone":
            os.waitpid(rc, 0)
        answers[name] = ctypes.get_errno() if rc == -1 else 0
    return answers


# ---- running an era ----

def _send(fd: int, obj: Any) -> None:
    data = pickle.dumps(obj)
    data = struct.pack("I", len(data)) + data
    while data:
        data = data[os.write(fd, data):]


def _receive(fd: int, deadline: float) -> Any:
    """What _send sent on fd; None at EOF, TimeoutError at the deadline.  Sized, not read to
    EOF: a child left behind may hold the write end open."""
    data = b""
    size = None
    while size is None or len(data) < size + 4:
        if not select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
            raise TimeoutError
        chunk = os.read(fd, 65536)
        if not chunk:
            return None
        data += chunk
        if size is None and len(data) >= 4:
            size = struct.unpack("I", data[:4])[0]
    return pickle.loads(data[4:])


def _fds() -> Dict[int, str]:
    fds = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            fds[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            pass  # the directory listing's own fd, closed by now
    return fds


def _ppid(pid: str) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return 0
    return int(stat[stat.rindex(")") + 2:].split()[1])


def _children() -> List[str]:
    """The calling process's children, alive or zombie, as "pid (comm) state"."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            state, ppid = stat[stat.rindex(")") + 2:].split()[:2]
            if int(ppid) == os.getpid():
                found.append(f"{name} {stat[stat.index('('):stat.rindex(')') + 1]} {state}")
    return found


def _kill_and_reap(children: List[str]) -> None:
    for child in children:
        pid = int(child.split()[0])
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, linux_clone.WALL)
        except (ProcessLookupError, ChildProcessError):
            pass


def _outcome(func: Callable[[], Any]) -> Outcome:
    """Call func and describe what happened, then clean up what it left."""
    before = _fds()
    value, err = None, None
    try:
        value = func()
        result = "ok"
    except OSError as exc:
        result = f"OSError({errno.errorcode.get(exc.errno or 0, exc.errno)})"
        err = exc.errno
    except BaseException as exc:
        result = f"{type(exc).__name__}: {exc}"
    after = _fds()
    kept = linux_clone._core._kept_fd()  # entered()'s one fd per thread, documented
    leaked = [f"{fd} -> {target}" for fd, target in sorted(after.items())
              if fd not in before and fd != kept]
    left = _children()
    _kill_and_reap(left)
    return Outcome(result, err, leaked, left, value)


def _isolated(func: Callable[[], Any], timeout: float = CALL_TIMEOUT) -> Outcome:
    """_outcome(func) in a grandchild of its own process group: a crash or a hang is one
    call's outcome, and everything the call started can be killed."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.setpgid(0, 0)
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crash is expected, a core not
            os.close(rfd)
            _send(wfd, _outcome(func))
        finally:
            os._exit(0)
    os.close(wfd)
    try:
        os.setpgid(pid, pid)
    except OSError:
        pass  # the grandchild did it first, or has exited already
    status = None
    try:
        outcome: Optional[Outcome] = _receive(rfd, time.monotonic() + timeout)
    except TimeoutError:  # still running, or dead with a child of its holding the pipe open
        outcome = None
        done, status = os.waitpid(pid, os.WNOHANG)
        if not done:
            os.killpg(pid, signal.SIGKILL)
            outcome, status = Outcome("hang", None, [], []), None
    finally:
        os.close(rfd)
    if status is None:
        status = os.waitpid(pid, 0)[1]
    if outcome is None:
        if os.WIFSIGNALED(status):
            outcome = Outcome(f"crash({signal.Signals(os.WTERMSIG(status)).name})", None, [], [])
        else:
            outcome = Outcome(f"exit {os.WEXITSTATUS(status)} without an answer", None, [], [])
    # The grandchild's orphans came to us, the subreaper.
    _kill_and_reap(_children())
    return outcome


_PIVOT_DIR = ""


def _run_era_child(era: str) -> Dict[str, Outcome]:
    global _PIVOT_DIR
    _libc.prctl(PR_SET_CHILD_SUBREAPER, ctypes.c_ulong(1), ctypes.c_ulong(0),
                ctypes.c_ulong(0), ctypes.c_ulong(0))
    if seccomp.ERAS[era]:
        seccomp.install(seccomp.ERAS[era])
    _PIVOT_DIR = tempfile.mkdtemp(prefix="linux_clone-pivot-")
    try:
        outcomes = {name: _isolated(call.func) for name, call in CALLS.items()}
        outcomes["(probe)"] = _isolated(probe)
    finally:
        os.rmdir(_PIVOT_DIR)
    return outcomes


# era: its outcomes, or why its child gave none (kept too: one try per era, not per test)
_ERA_RESULTS: Dict[str, Any] = {}


def table() -> str:
    """era x call -> outcome, for the record (python tests/test_old_kernels.py)."""
    lines = []
    for era in seccomp.ERAS:
        for call, outcome in era_outcomes(era).items():
            extra = "".join(f" {what} {items}" for what, items in
                            (("leaked", outcome.leaked_fds), ("left", outcome.children_left))
                            if items)
            lines.append(f"| {era} | {call} | {outcome.result}{extra} |")
    return "\n".join(lines)


def era_outcomes(era: str) -> Dict[str, Outcome]:
    """The outcome of every call in `era`, from one forked child (cached for the module)."""
    if era not in _ERA_RESULTS:
        _ERA_RESULTS[era] = _run_era(era)
    answer = _ERA_RESULTS[era]
    if not isinstance(answer, dict):
        pytest.fail(f"the {era} child failed: {answer}")
    return answer


def _run_era(era: str) -> Any:
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(rfd)
            try:
                _send(wfd, _run_era_child(era))
            except BaseException:
                _send(wfd, traceback.format_exc())
        finally:
            os._exit(0)
    os.close(wfd)
    try:
        answer = _receive(rfd, time.monotonic() + (len(CALLS) + 1) * CALL_TIMEOUT + 30)
    finally:
        os.close(rfd)
        if answer is None:
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    return "no answer in time" if answer is None else answer


# ---- the tests ----

# (era, call): a defect of linux_clone the test shows, as a strict xfail naming it; the test
# asserts the right behaviour.  (Threaded clone(PIDFD) leaving its child behind before 5.3 was
# one: fixed by cloning with CLONE_PIDFD in the helper.)
KNOWN_DEFECTS: Dict[Tuple[str, str], str] = {}


def _cases() -> List[Any]:
    cases = []
    for era in seccomp.ERAS:
        for call in CALLS:
            reason = KNOWN_DEFECTS.get((era, call))
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            cases.append(pytest.param(era, call, marks=marks, id=f"{era}-{call}"))
    return cases


@pytest.mark.parametrize("era, call", _cases())
def test_call_on_old_kernel(privileged: None, era: str, call: str) -> None:
    outcome = era_outcomes(era)[call]
    assert (outcome.leaked_fds, outcome.children_left) == ([], []), outcome
    missing = (seccomp.MISSING[era] | KERNEL_MISSING) & CALLS[call].needs
    if not missing:
        assert outcome.result == "ok", outcome
    else:
        allowed = {errno.ENOSYS, errno.EINVAL} | CALLS[call].also
        assert outcome.result == "ok" or outcome.errno in allowed, (sorted(missing), outcome)


@pytest.mark.parametrize("era", list(seccomp.ERAS))
def test_filter_answers_as_that_kernel(privileged: None, era: str) -> None:
    """The emulation itself: a missing call or ioctl gets the old kernel's errno, a present
    one the running kernel's own answer."""
    now = era_outcomes("now")["(probe)"]
    answers = era_outcomes(era)["(probe)"]
    assert (now.result, answers.result) == ("ok", "ok"), (now, answers)
    rules = {rule.syscall: rule.err for rule in seccomp.ERAS["pre-4.11"] + seccomp.NO_KCMP}
    expected = {}
    for name, (feature, syscall, _args) in PROBES.items():
        if feature in seccomp.MISSING[era]:
            expected[name] = rules[syscall]
        else:
            expected[name] = now.value[name]
            assert now.value[name] != rules[syscall], f"{name}: the kernel answers like the rule"
    assert answers.value == expected


if __name__ == "__main__":
    print(table())


def _leak_fd() -> None:
    os.open("/dev/null", os.O_RDONLY)


def _leave_child() -> None:
    if os.fork() == 0:
        time.sleep(60)
        os._exit(0)


def _crash() -> None:
    faulthandler.disable()  # pytest's, whose report would reach the terminal
    os.kill(os.getpid(), signal.SIGSEGV)


def _hang() -> None:
    time.sleep(60)


def test_the_harness_sees_leaks_crashes_and_hangs() -> None:
    """What the era tests rest on: each failure shows in the outcome, and nothing is left."""
    def child() -> List[Tuple[str, List[str], List[str]]]:
        _libc.prctl(PR_SET_CHILD_SUBREAPER, ctypes.c_ulong(1), ctypes.c_ulong(0),
                    ctypes.c_ulong(0), ctypes.c_ulong(0))
        outcomes = [_isolated(func, timeout=2) for func in (_leak_fd, _leave_child, _crash,
                                                             _hang)]
        assert _children() == []
        return [(o.result, o.leaked_fds, [c.split()[1] for c in o.children_left])
                for o in outcomes]

    leak, left, crash, hang = in_child(child)
    assert leak[0] == "ok" and len(leak[1]) == 1 and leak[1][0].endswith(" -> /dev/null")
    assert left == ("ok", [], ["(python)"]) or left == ("ok", [], ["(pytest)"])
    assert crash == ("crash(SIGSEGV)", [], [])
    assert hang == ("hang", [], [])

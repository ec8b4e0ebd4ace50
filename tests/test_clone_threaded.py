"""clone() in a process with other threads (the forked-helper path): the pid and pidfd it
returns, in pid namespaces and under SIGCHLD handling and signal storms; how it tells a
threaded process from a single-threaded one; no fd, helper or child left behind."""

from __future__ import annotations

import ctypes
import errno
import itertools
import os
import resource
import select
import signal
import threading
import time
from typing import Any, Callable, List, Tuple

import pytest

import linux_clone
from linux_clone import FILES, NEWPID, NEWUSER, PIDFD
from conftest import drop_privileges, in_child, running_threads

SIGCHLD = signal.SIGCHLD
WALL = 0x40000000


# ---- helpers ----

def open_fds() -> List[int]:
    return sorted(int(name) for name in os.listdir("/proc/self/fd"))


def my_children() -> List[int]:
    """Every child of this process (zombies included), from each thread's children list."""
    found = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/children") as f:
                found += [int(pid) for pid in f.read().split()]
        except FileNotFoundError:
            pass
    return sorted(found)


def wait_until(predicate: Callable[[], bool], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def threads_now() -> int:
    return len(os.listdir("/proc/self/task"))


def nspid(pid: int) -> List[int]:
    """The pid of `pid` in each pid namespace it is in, outermost first (NSpid)."""
    with open(f"/proc/{pid}/status") as f:
        return [int(n) for line in f if line.startswith("NSpid:") for n in line.split()[1:]]


def pidfd_pid(pidfd: int) -> int:
    """The pid a pidfd refers to, as the kernel shows it (-1: the process is gone)."""
    with open(f"/proc/self/fdinfo/{pidfd}") as f:
        return [int(line.split()[1]) for line in f if line.startswith("Pid:")][0]


def held_child(release_fd: int, report_fd: int) -> Callable[[], int]:
    """A child that writes its own pid (as it sees it) and waits for a byte."""
    def child() -> int:
        os.write(report_fd, os.getpid().to_bytes(4, "little"))
        os.read(release_fd, 1)
        return 7
    return child


def fill_fd_table(free: int) -> List[int]:
    """Lower RLIMIT_NOFILE and open fds until exactly `free` are left; return those opened."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    held = []
    while True:
        try:
            held.append(os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC))
        except OSError as exc:
            assert exc.errno == errno.EMFILE
            break
    for _ in range(free):
        os.close(held.pop())
    return held


def c_thread(seconds: int) -> Tuple[Any, ctypes.c_ulong]:
    """A thread that Python does not know of: pthread_create(sleep, seconds)."""
    libc = ctypes.CDLL(None)
    tid = ctypes.c_ulong()
    start = ctypes.cast(libc.sleep, ctypes.c_void_p)
    assert libc.pthread_create(ctypes.byref(tid), None, start, ctypes.c_void_p(seconds)) == 0
    return libc, tid


def end_holder(holder: int) -> None:
    """Kill a pid namespace's init and reap every child: the init ends only once each
    process of its namespace is reaped, our clone children included."""
    os.kill(holder, signal.SIGKILL)
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            break


# ---- which path: single-threaded or threaded ----

def test_exited_thread_no_longer_counts_even_without_a_free_fd() -> None:
    def attempt() -> Any:
        thread = threading.Thread(target=lambda: None)
        thread.start()
        thread.join()
        assert wait_until(lambda: threads_now() == 1)
        held = fill_fd_table(0)
        try:
            plain = linux_clone.clone(lambda: 3)
            shared = linux_clone.clone(lambda: 4, 0, FILES | SIGCHLD)
        finally:
            for fd in held:
                os.close(fd)
        codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in (plain, shared)]
        return codes, my_children()

    assert in_child(attempt) == ([3, 4], [])


def test_thread_unknown_to_python_counts() -> None:
    def attempt() -> Any:
        libc, tid = c_thread(1)
        assert wait_until(lambda: threads_now() == 2)
        try:
            with pytest.raises(RuntimeError, match="other threads"):
                linux_clone.clone(lambda: 0, 0, FILES | SIGCHLD)
        finally:
            libc.pthread_join(tid, None)
        return my_children()

    assert in_child(attempt) == []


def test_threaded_without_a_free_fd_is_emfile() -> None:
    def attempt() -> Any:
        with running_threads(1):
            before = open_fds()
            held = fill_fd_table(1)  # one free: not enough for the helper's socket pair
            try:
                with pytest.raises(OSError) as raised:
                    linux_clone.clone(lambda: 0, 0, PIDFD | SIGCHLD)
            finally:
                for fd in held:
                    os.close(fd)
        return raised.value.errno, open_fds() == before, my_children()

    assert in_child(attempt) == (errno.EMFILE, True, [])


# ---- pid namespaces ----

def clone_in_pid_ns(flags: int) -> Any:
    """With a thread running, clone() inside entered(pid=holder, NEWPID): the child's pid in
    this namespace as clone() returned it and as the kernel has it, and the pidfd's."""
    holder = linux_clone.clone(signal.pause, 0, NEWPID | SIGCHLD)
    release_r, release_w = os.pipe()
    report_r, report_w = os.pipe()
    try:
        with running_threads(1):
            with linux_clone.entered(pid=holder, nstype=NEWPID):
                result = linux_clone.clone(held_child(release_r, report_w), 0, flags)
        pid, pidfd = result if isinstance(result, tuple) else (result, None)
        inner = int.from_bytes(os.read(report_r, 4), "little")
        seen = nspid(pid)
        fd_pid = pidfd_pid(pidfd) if pidfd is not None else pid
        ppid = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
        os.write(release_w, b"x")
        code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        if pidfd is not None:
            os.close(pidfd)
    finally:
        end_holder(holder)
        for fd in (release_r, release_w, report_r, report_w):
            os.close(fd)
    return pid, seen, inner, fd_pid, ppid == os.getpid(), code


@pytest.mark.parametrize("flags", [SIGCHLD, PIDFD | SIGCHLD], ids=["pid", "pidfd"])
def test_threaded_clone_in_entered_pid_ns_returns_callers_pid(privileged: None,
                                                             flags: int) -> None:
    pid, seen, inner, fd_pid, is_parent, code = in_child(clone_in_pid_ns, flags)
    # NSpid: this namespace, the holder's, ...; the child saw itself as the last one.
    assert seen[0] == pid and seen[-1] == inner and len(seen) >= 2
    assert fd_pid == pid and is_parent and code == 7


@pytest.mark.timeout(60)
def test_threaded_clone_after_unshare_newpid_is_a_clear_error(privileged: None) -> None:
    def attempt() -> Any:
        fds = open_fds()
        with running_threads(1):  # first: a thread after unshare(NEWPID) is EINVAL
            linux_clone.unshare(NEWPID)
            with pytest.raises(RuntimeError, match="NEWPID") as raised:
                linux_clone.clone(lambda: 0)
        # The thread is still set to start the new namespace: a single-threaded clone does,
        # once the kernel has released the joined thread (it can count it a moment longer).
        assert wait_until(lambda: threads_now() == 1)
        pid = linux_clone.clone(lambda: 10 + os.getpid())
        code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        return str(raised.value), code, open_fds() == fds, my_children()

    message, code, same_fds, children = in_child(attempt)
    assert code == 11 and same_fds and children == []


NEWPID_CALLS = {
    "clone": lambda: linux_clone.clone(lambda: 0, 0, NEWPID | SIGCHLD),
    "clone maps": lambda: linux_clone.clone(lambda: 0, 0, NEWPID | NEWUSER | SIGCHLD,
                                            uid_map="0 0 1"),
    "clone3": lambda: linux_clone.clone3(lambda: 0, NEWPID, exit_signal=SIGCHLD),
    "spawn": lambda: linux_clone.spawn(["true"], NEWPID),
}


def newpid_in_entered_pid_ns(how: str, threads: int) -> Any:
    """NEWPID inside entered(pid=holder, NEWPID): the error (or "started"), whether the fds
    are as before and whether the holder is the only child."""
    holder = linux_clone.clone(signal.pause, 0, NEWPID | SIGCHLD)
    try:
        with running_threads(threads):
            with linux_clone.entered(pid=holder, nstype=NEWPID):
                before = open_fds()  # entered() keeps an fd of its own
                try:
                    NEWPID_CALLS[how]()
                except OSError as exc:
                    result = errno.errorcode[exc.errno]
                else:
                    result = "started"
                same_fds = open_fds() == before
        return result, same_fds, my_children() == [holder]
    finally:
        end_holder(holder)


@pytest.mark.parametrize("how", list(NEWPID_CALLS))
@pytest.mark.parametrize("threads", [0, 1], ids=["single", "threaded"])
def test_newpid_in_entered_pid_ns_is_einval_as_the_kernel_says(how: str, threads: int,
                                                               privileged: None) -> None:
    # copy_pid_ns refuses a new pid namespace when the caller's children go to another one
    # than its own; the forked helper (threaded), in that other one, made a nested one.
    assert in_child(newpid_in_entered_pid_ns, how, threads) == ("EINVAL", True, True)


# ---- pidfds, SIGCHLD handling and signals ----

def test_threaded_pidfd_with_sigchld_ignored() -> None:
    def attempt() -> Any:
        signal.signal(SIGCHLD, signal.SIG_IGN)
        fds = open_fds()
        results = []
        with running_threads(1):
            for _ in range(200):
                pid, pidfd = linux_clone.clone(lambda: 0, 0, PIDFD | SIGCHLD)
                # Readable once the child has exited: a pidfd of that child, not of another.
                assert select.select([pidfd], [], [], 10)[0] == [pidfd]
                results.append(pidfd_pid(pidfd) in (pid, -1))
                os.close(pidfd)
        return all(results), open_fds() == fds, wait_until(lambda: my_children() == [])

    assert in_child(attempt) == (True, True, True)


def reap_all(signum: int, frame: Any) -> None:
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG | WALL)[0] == 0:
                return
        except ChildProcessError:
            return


SIGNAL_SETUPS = {
    "sigchld-ignored": lambda: signal.signal(SIGCHLD, signal.SIG_IGN),
    "sigchld-reaped": lambda: signal.signal(SIGCHLD, reap_all),
    "sigalrm-storm": lambda: (signal.signal(signal.SIGALRM, lambda *_: None),
                              signal.setitimer(signal.ITIMER_REAL, 1e-4, 1e-4)),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("setup", list(SIGNAL_SETUPS), ids=list(SIGNAL_SETUPS))
@pytest.mark.parametrize("caller", ["main", "thread"])
def test_threaded_clone_under_signals(setup: str, caller: str) -> None:
    def clones() -> List[Any]:
        out = []
        for i in range(40):
            release_r, release_w = os.pipe()
            report_r, report_w = os.pipe()
            try:
                result = linux_clone.clone(held_child(release_r, report_w), 0,
                                           (PIDFD if i % 2 else 0) | SIGCHLD)
                pid, pidfd = result if isinstance(result, tuple) else (result, None)
                said = int.from_bytes(os.read(report_r, 4), "little")
                out.append((pid, said, pidfd_pid(pidfd) if pidfd is not None else pid))
                os.write(release_w, b"x")
                if pidfd is not None:
                    select.select([pidfd], [], [], 10)
                    os.close(pidfd)
            finally:
                for fd in (release_r, release_w, report_r, report_w):
                    os.close(fd)
        return out

    def attempt() -> Any:
        fds = open_fds()
        SIGNAL_SETUPS[setup]()
        with running_threads(1):
            if caller == "main":
                out = clones()
            else:
                box: List[Any] = []
                thread = threading.Thread(target=lambda: box.append(clones()))
                thread.start()
                thread.join()
                out = box[0]
        signal.setitimer(signal.ITIMER_REAL, 0)
        if setup == "sigalrm-storm":
            for pid, _, _ in out:
                os.waitpid(pid, 0)
        right = [pid == said == fd_pid for pid, said, fd_pid in out]
        return len(out), all(right), open_fds() == fds, wait_until(lambda: my_children() == [])

    assert in_child(attempt) == (40, True, True, True)


@pytest.mark.timeout(120)
def test_threaded_pidfd_lost_to_emfile_leaves_nothing() -> None:
    """Another process flips this one's fd limit between "room for the socket pair" and
    "no room for the pidfd": each clone returns (pid, pidfd) or raises EMFILE, and leaves
    no fd and no child behind (the pidfd can be lost after the child exists)."""
    def attempt() -> Any:
        first = os.open("/dev/null", os.O_RDONLY)
        probe = os.open("/dev/null", os.O_RDONLY)  # the socket pair's second fd, then the pidfd
        os.close(first)
        os.close(probe)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        parent = os.getpid()
        flipper = os.fork()
        if flipper == 0:
            for i in itertools.count():  # flips about as often as a threaded clone takes
                resource.prlimit(parent, resource.RLIMIT_NOFILE, (probe + 1 - i % 2, hard))
                time.sleep(0.0005)
        fds = open_fds()
        outcomes = {"pidfd": 0, "EMFILE": 0}
        try:
            with running_threads(1):
                for _ in range(300):
                    try:
                        pid, pidfd = linux_clone.clone(lambda: 5, 0, PIDFD | SIGCHLD)
                    except OSError as exc:
                        assert exc.errno == errno.EMFILE
                        outcomes["EMFILE"] += 1
                        time.sleep(0.001)  # spread the attempts over the flips
                        continue
                    # No fd to spare for /proc/self/fdinfo: a pidfd polls readable at exit.
                    assert select.select([pidfd], [], [], 10)[0] == [pidfd]
                    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 5
                    os.close(pidfd)
                    outcomes["pidfd"] += 1
        finally:
            os.kill(flipper, signal.SIGKILL)
            os.waitpid(flipper, 0)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        return outcomes, open_fds() == fds, my_children()

    outcomes, same_fds, children = in_child(attempt)
    assert sum(outcomes.values()) == 300 and same_fds and children == []


def test_threaded_clone_in_pid_ns_of_own_user_ns(privileged: None) -> None:
    """An unprivileged user in its own user namespace may enter a pid namespace it made but
    not go back to its own (EPERM); the pid clone() returns needs neither."""
    def attempt() -> Any:
        drop_privileges()
        linux_clone.unshare(linux_clone.NEWUSER)
        for name, text in (("setgroups", "deny"), ("uid_map", "0 65534 1"),
                           ("gid_map", "0 65534 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
        holder = linux_clone.clone(signal.pause, 0, NEWPID | SIGCHLD)
        release_r, release_w = os.pipe()
        report_r, report_w = os.pipe()
        try:
            with running_threads(1):
                pidfd = linux_clone.pidfd_open(holder)
                linux_clone.setns(pidfd, NEWPID)  # this forked test process never leaves it
                os.close(pidfd)
                pid, pidfd = linux_clone.clone(held_child(release_r, report_w), 0,
                                               PIDFD | SIGCHLD)
                inner = int.from_bytes(os.read(report_r, 4), "little")
                seen, fd_pid = nspid(pid), pidfd_pid(pidfd)
                os.write(release_w, b"x")
                code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
            os.close(pidfd)
        finally:
            end_holder(holder)
        return pid, seen, inner, fd_pid, code

    pid, seen, inner, fd_pid, code = in_child(attempt)
    assert seen == [pid, inner] and fd_pid == pid and code == 7

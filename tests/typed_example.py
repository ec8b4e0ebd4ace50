"""Typed use of every public name of linux_clone, for `mypy --strict` (tests/test_typing.py).
Never run: it only has to type-check.  A `# type: ignore[code]` marks a call the stubs must
reject; --strict reports the ignore as unused if they accept it."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING, List, Tuple, Union

import linux_clone
from linux_clone import CloneFlag, IdMap

if TYPE_CHECKING:
    from typing_extensions import assert_type


def child() -> int:
    return 0


def child_none() -> None:
    pass


def namespaces(fd: int) -> None:
    linux_clone.unshare(linux_clone.NEWNET | linux_clone.NEWUTS)
    linux_clone.setns(fd)
    linux_clone.setns(fd, linux_clone.CLONE_NEWNET)
    linux_clone.setns("/proc/1/ns/net", CloneFlag.NEWNET)
    linux_clone.setns(b"/proc/1/ns/net")
    linux_clone.setns(Path("/proc/1/ns/net"))
    with open("/proc/1/ns/uts", "rb") as f:
        linux_clone.setns(f, linux_clone.NEWUTS)
    linux_clone.pivot_root("/new", Path("/new/old"))
    linux_clone.pivot_root(b"/new", b"/new/old")
    linux_clone.configure_loopback()
    assert_type(linux_clone.ns_get_userns(fd), int)
    assert_type(linux_clone.ns_get_parent("/proc/self/ns/pid"), int)
    assert_type(linux_clone.ns_get_nstype(Path("/proc/self/ns/net")), CloneFlag)
    assert_type(linux_clone.ns_get_owner_uid(fd), int)
    assert_type(linux_clone.pidfd_open(os.getpid()), int)
    assert_type(linux_clone.pidfd_open(os.getpid(), 0), int)
    with linux_clone.entered("/proc/1/ns/net") as inside:
        assert_type(inside, linux_clone.entered)
    with linux_clone.entered(fd, linux_clone.NEWNET):
        pass
    with linux_clone.entered(pid=1, nstype=linux_clone.NEWNET | linux_clone.NEWUTS):
        pass

    linux_clone.unshare("NEWNET")  # type: ignore[arg-type]
    linux_clone.setns(1.5)  # type: ignore[arg-type]
    linux_clone.setns(fd, "net")  # type: ignore[arg-type]


def comparisons(pid: int, epoll_fd: int, fd: int) -> int:
    same: int = linux_clone.kcmp(pid, os.getpid(), linux_clone.KCMP_VM)
    same += linux_clone.kcmp(pid, pid, linux_clone.KCMP_FILE, fd, fd)
    same += linux_clone.kcmp(pid, pid, linux_clone.KCMP_EPOLL_TFD, fd, (epoll_fd, fd, 0))
    linux_clone.kcmp(pid, pid, linux_clone.KCMP_FILE, fd, "x")  # type: ignore[arg-type]
    return same


def children(cgroup_fd: int, want_pidfd: bool) -> List[int]:
    pids: List[int] = [linux_clone.clone(child)]
    pid = linux_clone.clone(child_none, 1 << 20, linux_clone.NEWPID | signal.SIGCHLD)
    assert_type(pid, int)
    os.waitpid(pid, 0)
    pid, pidfd = linux_clone.clone(lambda: 0, 0, linux_clone.NEWNET | signal.SIGCHLD,
                                   pidfd=True)
    assert_type(linux_clone.clone(child, pidfd=False), int)
    assert_type(linux_clone.clone(child, pidfd=want_pidfd), Union[int, Tuple[int, int]])
    assert_type(linux_clone.clone3(child, linux_clone.NEWUTS), int)
    assert_type(linux_clone.clone3(child, pidfd=True), Tuple[int, int])
    assert_type(linux_clone.clone3(child, pidfd=want_pidfd), Union[int, Tuple[int, int]])
    assert_type(linux_clone.spawn(["true"]), int)
    assert_type(linux_clone.spawn(["true"], pidfd=True), Tuple[int, int])
    assert_type(linux_clone.spawn(["true"], pidfd=want_pidfd), Union[int, Tuple[int, int]])
    uid_map: IdMap = [(0, os.getuid(), 1)]
    linux_clone.clone(child, flags=linux_clone.NEWUSER | signal.SIGCHLD, uid_map=uid_map,
                      gid_map="0 1000 1", setgroups="deny")
    linux_clone.clone3(child)
    linux_clone.clone3(child, linux_clone.NEWPID | linux_clone.NEWTIME, exit_signal=0,
                       stack_size=65536, cgroup=cgroup_fd, set_tid=[1, 400])
    linux_clone.clone3(child, cgroup="/sys/fs/cgroup/test", uid_map="0 0 1")
    linux_clone.spawn(["ip", "link"], linux_clone.NEWNET, loopback=True)
    linux_clone.spawn([b"/bin/true", Path("x")], env={"PATH": "/bin"}, cwd="/",
                      hostname="box", pidfd=True, uid_map=uid_map, gid_map=[(0, 0, 1)])
    os.waitpid(pid, linux_clone.WALL)
    os.close(pidfd)

    linux_clone.clone(child, "big")  # type: ignore[call-overload]
    linux_clone.clone(42)  # type: ignore[call-overload]
    linux_clone.clone3(child, exit_signal=None)  # type: ignore[call-overload]
    linux_clone.spawn(["x"], uid_map=5)  # type: ignore[call-overload]
    linux_clone.clone(child, pidfd=None)  # type: ignore[call-overload]
    os.waitpid(linux_clone.clone(child, pidfd=True), 0)  # type: ignore[arg-type]
    return pids


def constants() -> List[int]:
    flags: List[CloneFlag] = [
        linux_clone.FILES, linux_clone.FS, linux_clone.NEWNS, linux_clone.VM,
        linux_clone.THREAD, linux_clone.SIGHAND, linux_clone.SYSVSEM, linux_clone.NEWUSER,
        linux_clone.NEWPID, linux_clone.NEWUTS, linux_clone.NEWIPC, linux_clone.NEWNET,
        linux_clone.NEWCGROUP, linux_clone.NEWTIME, linux_clone.PTRACE, linux_clone.VFORK,
        linux_clone.SETTLS, linux_clone.PARENT_SETTID, linux_clone.CHILD_SETTID,
        linux_clone.CHILD_CLEARTID, linux_clone.PIDFD, linux_clone.DETACHED,
        linux_clone.UNTRACED, linux_clone.IO, linux_clone.PARENT, linux_clone.CLEAR_SIGHAND,
        linux_clone.INTO_CGROUP, linux_clone.CSIGNAL, linux_clone.CLONE_NEWNET,
        linux_clone.CLONE_NEWUSER, linux_clone.CLONE_CSIGNAL, CloneFlag.NEWNET,
    ]
    combined = linux_clone.NEWNET | linux_clone.NEWUTS
    assert_type(combined, CloneFlag)
    numbers: List[int] = [
        linux_clone.KCMP_FILE, linux_clone.KCMP_VM, linux_clone.KCMP_FILES,
        linux_clone.KCMP_FS, linux_clone.KCMP_SIGHAND, linux_clone.KCMP_IO,
        linux_clone.KCMP_SYSVSEM, linux_clone.KCMP_EPOLL_TFD, linux_clone.NS_GET_USERNS,
        linux_clone.NS_GET_PARENT, linux_clone.NS_GET_NSTYPE, linux_clone.NS_GET_OWNER_UID,
        linux_clone.NS_OWNER_UID, linux_clone.WALL,
    ]
    return [*flags, *numbers, combined]

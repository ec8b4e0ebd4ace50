"""unshare, setns, the nsfs ioctls, configure_loopback, pivot_root, kcmp, pidfd_open and the
constants, tested against the running kernel: each call's effect as /proc/self/ns, `ip -o link`,
a TCP connect or the mount table shows it, and each bad input's exact exception."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import pathlib
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
from typing import Any, Callable, Dict, Iterator, List, Optional, Set, Tuple

import pytest
from conftest import Fileno, FsPath, drop_privileges, in_child, ns_inode, run_python

import linux_clone
from linux_clone import CloneFlag

_libc = ctypes.CDLL(None, use_errno=True)
MS_REC, MS_PRIVATE, MNT_DETACH = 0x4000, 0x40000, 2  # <sys/mount.h>
NS_FUNCTIONS = [linux_clone.ns_get_userns, linux_clone.ns_get_parent,
                linux_clone.ns_get_nstype, linux_clone.ns_get_owner_uid]
OTHER_UID = 12345  # an unprivileged uid that is not the overflow uid 65534
SEED_FLAGS = ["FILES", "FS", "NEWNS", "VM", "THREAD", "SIGHAND", "SYSVSEM", "NEWUSER", "NEWPID",
              "NEWUTS", "NEWIPC", "NEWNET", "NEWCGROUP", "NEWTIME", "PTRACE", "VFORK", "SETTLS",
              "PARENT_SETTID", "CHILD_SETTID", "CHILD_CLEARTID", "PIDFD", "DETACHED", "UNTRACED",
              "IO", "CSIGNAL"]
KCMP_NAMES = ["KCMP_FILE", "KCMP_VM", "KCMP_FILES", "KCMP_FS", "KCMP_SIGHAND", "KCMP_IO",
              "KCMP_SYSVSEM", "KCMP_EPOLL_TFD"]
NS_IOCTL_NAMES = ["NS_GET_USERNS", "NS_GET_PARENT", "NS_GET_NSTYPE", "NS_GET_OWNER_UID"]


# ---- helpers ----

def raised(func: Callable[..., Any], *args: Any) -> Any:
    """The exception that func(*args) raises (called in a child, it comes back pickled)."""
    try:
        func(*args)
    except Exception as exc:
        return exc
    raise AssertionError(f"{func.__name__}{args!r} raised nothing")


def become(uid: int) -> None:
    """Become an unprivileged user -- only in a child."""
    drop_privileges(uid, uid)


def as_nobody(func: Callable[..., Any], *args: Any) -> Any:
    """func(*args) as uid/gid 65534 -- call it only in a child."""
    become(65534)
    return func(*args)


def ns_inodes() -> Dict[str, int]:
    """The inode of every /proc/self/ns file: which namespaces this process is in."""
    return {name: ns_inode(name) for name in os.listdir("/proc/self/ns")}


def changed(before: Dict[str, int], after: Dict[str, int]) -> Set[str]:
    return {name for name in before if before[name] != after[name]}


NS_FILES = {linux_clone.NEWNET: "net", linux_clone.NEWUTS: "uts", linux_clone.NEWIPC: "ipc",
            linux_clone.NEWNS: "mnt", linux_clone.NEWCGROUP: "cgroup",
            linux_clone.NEWUSER: "user"}


def unshare_for_setup(flags: int) -> None:
    """unshare(flags) before a test sets a hostname or mounts something: it stops unless the
    namespaces did change, so that a broken unshare() cannot touch the machine's own."""
    before = {name: ns_inode(name) for flag, name in NS_FILES.items() if flags & flag}
    linux_clone.unshare(flags)
    for name, inode in before.items():
        if ns_inode(name) == inode:
            raise RuntimeError(f"unshare({flags!r}) left the {name} namespace as it was")


def inode_of(fd: int) -> int:
    """The inode of a namespace fd returned by an ioctl, which this closes."""
    try:
        return os.fstat(fd).st_ino
    finally:
        os.close(fd)


def is_close_on_exec(fd: int) -> bool:
    """Whether an fd returned by an ioctl is close-on-exec; this closes it."""
    try:
        return not os.get_inheritable(fd)
    finally:
        os.close(fd)


def pid_beyond_pid_max() -> int:
    return int(pathlib.Path("/proc/sys/kernel/pid_max").read_text()) + 1


def open_fds() -> List[str]:
    return sorted(os.listdir("/proc/self/fd"))


@contextlib.contextmanager
def process_in(flags: int, uid: Optional[int] = None,
               setup: Optional[Callable[[], object]] = None) -> Iterator[int]:
    """A process that unshares `flags` (as `uid`, then runs setup()) and stays there until the
    block ends: its pid, whose /proc/<pid>/ns files are the namespaces to look at."""
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    stop_r, stop_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        try:
            if uid is not None:
                become(uid)
            unshare_for_setup(flags)
            if setup is not None:
                setup()
            os.write(ready_w, b"ok")
            os.read(stop_r, 1)
        except BaseException as exc:
            os.write(ready_w, repr(exc).encode())
        finally:
            os._exit(0)
    os.close(ready_w)
    os.close(stop_r)
    try:
        answer = os.read(ready_r, 1000)
        assert answer == b"ok", answer.decode()
        yield pid
    finally:
        os.close(ready_r)
        os.close(stop_w)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def ip(*args: str) -> str:
    return subprocess.run(["ip", "-o", *args], check=True, capture_output=True, text=True,
                          timeout=30).stdout


def links() -> List[Tuple[str, List[str]]]:
    """(name, flags) of each interface, as `ip -o link` shows them."""
    found = re.findall(r"^\d+: ([^:@]+)[^:]*: <([^>]*)>", ip("link"), re.MULTILINE)
    return [(name, flags.split(",")) for name, flags in found]


def tcp_roundtrip(family: socket.AddressFamily, address: str) -> bytes:
    """Listen on `address`, connect to it, send: what the listening side received."""
    with socket.socket(family) as server, socket.socket(family) as client:
        server.bind((address, 0))
        server.listen()
        client.settimeout(10)
        client.connect(server.getsockname())
        peer, _ = server.accept()
        with peer:
            client.sendall(b"ping")
            return peer.recv(4)


def c_path(path: Any) -> Optional[bytes]:
    return None if path is None else os.fsencode(path)


def mount(source: Optional[str], target: Any, fstype: Optional[str], flags: int = 0) -> None:
    if _libc.mount(c_path(source), c_path(target), c_path(fstype), flags, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), target)


def umount(target: str, flags: int = 0) -> None:
    if _libc.umount2(os.fsencode(target), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), target)


def private_mounts() -> None:
    """A mount namespace of our own whose mounts propagate nowhere (`mount --make-rprivate /`)."""
    unshare_for_setup(linux_clone.NEWNS)
    mount(None, "/", None, MS_REC | MS_PRIVATE)


def tmpfs_root(path: pathlib.Path) -> None:
    """Mount a tmpfs at `path` with a file `marker` and a directory `old` for the old root."""
    mount("tmpfs", path, "tmpfs")
    (path / "marker").write_text("new root")
    (path / "old").mkdir()


def start_pid_namespace() -> None:
    """Fork the first process of the pid namespace that unshare(NEWPID) made: only then does
    /proc/self/ns/pid_for_children name it."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)


@pytest.fixture
def regular_file(tmp_path: pathlib.Path) -> str:
    path = tmp_path / "regular"
    path.write_text("not a namespace")
    return str(path)


@pytest.fixture
def closed_fd() -> int:
    """An fd number that was open and is closed now; a high one, so no new fd takes it."""
    with open("/proc/self/ns/net") as f:
        fd = fcntl.fcntl(f, fcntl.F_DUPFD_CLOEXEC, 1000)
    os.close(fd)
    return fd


# ---- constants ----

def c_flag_name(name: str) -> str:
    """The <sched.h> name of a CloneFlag member."""
    return name if name == "CSIGNAL" else "CLONE_" + name


@pytest.fixture(scope="module")
def header(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, int]:
    """The value of each constant as the C compiler reads it from the system's headers."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler to read the headers with")
    names = ([c_flag_name(name) for name in CloneFlag.__members__] + ["__WALL"] + KCMP_NAMES
             + NS_IOCTL_NAMES)
    directory = tmp_path_factory.mktemp("header")
    source = directory / "values.c"
    source.write_text(
        "#define _GNU_SOURCE\n#include <stdio.h>\n#include <sched.h>\n#include <sys/wait.h>\n"
        "#include <linux/sched.h>\n#include <linux/kcmp.h>\n#include <linux/nsfs.h>\n"
        "int main(void) {\n"
        + "".join(f'    printf("{n} %llu\\n", (unsigned long long)({n}));\n' for n in names)
        + "    return 0;\n}\n")
    subprocess.run([compiler, "-o", str(directory / "values"), str(source)], check=True)
    output = subprocess.run([str(directory / "values")], check=True, capture_output=True,
                            text=True).stdout
    return {name: int(value) for name, value in (line.split() for line in output.splitlines())}


def test_clone_flags_are_the_header_values(header: Dict[str, int]) -> None:
    assert {name: int(flag) for name, flag in CloneFlag.__members__.items()} == \
        {name: header[c_flag_name(name)] for name in CloneFlag.__members__}


def test_every_seed_flag_is_a_clone_flag() -> None:
    for name in SEED_FLAGS:
        flag = getattr(linux_clone, name)
        assert type(flag) is CloneFlag and flag is CloneFlag[name], name


def test_clone_names_are_the_same_members() -> None:
    for name, flag in CloneFlag.__members__.items():
        assert getattr(linux_clone, "CLONE_" + name) is flag is getattr(linux_clone, name), name


def test_kcmp_types_are_the_header_values(header: Dict[str, int]) -> None:
    assert {name: getattr(linux_clone, name) for name in KCMP_NAMES} == \
        {name: header[name] for name in KCMP_NAMES}


def test_ns_ioctls_are_the_header_values(header: Dict[str, int]) -> None:
    assert {name: getattr(linux_clone, name) for name in NS_IOCTL_NAMES} == \
        {name: header[name] for name in NS_IOCTL_NAMES}
    assert linux_clone.NS_OWNER_UID == header["NS_GET_OWNER_UID"]


def test_wall_is_the_header_value_and_reaps_a_child(header: Dict[str, int]) -> None:
    assert linux_clone.WALL == header["__WALL"] == 0x40000000
    pid = os.fork()
    if pid == 0:
        os._exit(7)
    assert os.waitpid(pid, linux_clone.WALL) == (pid, 7 << 8)


def test_ns_ioctls_work_with_fcntl_ioctl(privileged: None) -> None:
    with process_in(linux_clone.NEWUSER | linux_clone.NEWNET, uid=OTHER_UID) as pid, \
            open(f"/proc/{pid}/ns/net") as net, open(f"/proc/{pid}/ns/user") as user:
        assert fcntl.ioctl(net, linux_clone.NS_GET_NSTYPE) == linux_clone.NEWNET
        assert inode_of(fcntl.ioctl(net, linux_clone.NS_GET_USERNS)) == ns_inode("user", pid)
        assert inode_of(fcntl.ioctl(user, linux_clone.NS_GET_PARENT)) == ns_inode("user")
        for request in (linux_clone.NS_GET_OWNER_UID, linux_clone.NS_OWNER_UID):
            assert struct.unpack("I", fcntl.ioctl(user, request, bytes(4))) == (OTHER_UID,)


# ---- unshare ----

NAMESPACES = [  # the flag, and the /proc/self/ns file that changes when unshare() gets it
    ("NEWNET", "net"), ("NEWUTS", "uts"), ("NEWIPC", "ipc"), ("NEWNS", "mnt"),
    ("NEWCGROUP", "cgroup"), ("NEWUSER", "user"), ("NEWTIME", "time_for_children"),
]  # NEWPID has its own test: its namespace appears only with its first process


@pytest.mark.parametrize("flag, ns_file", NAMESPACES)
def test_unshare_makes_one_new_namespace(privileged: None, flag: str, ns_file: str) -> None:
    def child() -> Tuple[Dict[str, int], Dict[str, int]]:
        before = ns_inodes()
        linux_clone.unshare(getattr(linux_clone, flag))
        return before, ns_inodes()

    before, after = in_child(child)
    assert changed(before, after) == {ns_file}
    assert ns_inodes() == before  # the runner's namespaces stay as they were


def test_unshare_newpid_makes_the_next_child_pid_1(privileged: None) -> None:
    def child() -> Tuple[Dict[str, int], Tuple[int, Dict[str, int]], Dict[str, int]]:
        before = ns_inodes()
        linux_clone.unshare(linux_clone.NEWPID)
        first = in_child(lambda: (os.getpid(), ns_inodes()))
        return before, first, ns_inodes()

    before, (pid, inside), after = in_child(child)
    assert pid == 1
    assert changed(before, after) == {"pid_for_children"}
    assert changed(before, inside) == {"pid", "pid_for_children"}
    assert inside["pid"] == after["pid_for_children"]


def test_unshare_several_namespaces_with_os_names(privileged: None) -> None:
    def child() -> Set[str]:
        before = ns_inodes()
        linux_clone.unshare(linux_clone.CLONE_NEWNET | linux_clone.CLONE_NEWUTS
                            | linux_clone.CLONE_NEWIPC)
        return changed(before, ns_inodes())

    assert in_child(child) == {"net", "uts", "ipc"}


def test_hostname_stays_in_the_new_uts_namespace(privileged: None) -> None:
    outside = os.uname().nodename

    def child() -> Tuple[str, str]:
        unshare_for_setup(linux_clone.NEWUTS)
        socket.sethostname("linux-clone-test")
        return os.uname().nodename, socket.gethostname()

    assert in_child(child) == ("linux-clone-test", "linux-clone-test")
    assert os.uname().nodename == outside != "linux-clone-test"


def test_unprivileged_unshare_is_refused(privileged: None) -> None:
    exc = in_child(as_nobody, raised, linux_clone.unshare, linux_clone.NEWNET)
    assert (type(exc), exc.errno) == (PermissionError, errno.EPERM)


def test_unprivileged_user_namespace_may_have_a_network_namespace(privileged: None) -> None:
    def child() -> Tuple[Set[str], bytes]:
        before = ns_inodes()
        linux_clone.unshare(linux_clone.NEWUSER | linux_clone.NEWNET)
        linux_clone.configure_loopback()
        return changed(before, ns_inodes()), tcp_roundtrip(socket.AF_INET, "127.0.0.1")

    assert in_child(as_nobody, child) == ({"user", "net"}, b"ping")


@pytest.mark.parametrize("flags, exc_type", [
    (None, TypeError), ("NEWNET", TypeError), (-1, OverflowError), (2**32, OverflowError),
    (2**64, OverflowError),
])
def test_unshare_bad_flags_types(flags: Any, exc_type: type) -> None:
    assert type(in_child(raised, linux_clone.unshare, flags)) is exc_type


@pytest.mark.parametrize("flags", [CloneFlag.PTRACE, CloneFlag.IO, 1])
def test_unshare_unknown_flags_are_einval(flags: int) -> None:
    exc = in_child(raised, linux_clone.unshare, flags)
    assert (type(exc), exc.errno) == (OSError, errno.EINVAL)


# ---- setns ----

def ns_argument(form: str, path: str, f: Any) -> Any:
    """The namespace file at `path` (open as `f`) in one of the forms setns() takes."""
    return {"fd": f.fileno(), "file": f, "str": path, "bytes": os.fsencode(path),
            "pathlike": pathlib.Path(path)}[form]


@pytest.mark.parametrize("form", ["fd", "file", "str", "bytes", "pathlike"])
def test_setns_joins_the_target_namespace(privileged: None, form: str) -> None:
    with process_in(linux_clone.NEWNET) as pid:
        path = f"/proc/{pid}/ns/net"

        def child() -> int:
            with open(path) as f:
                linux_clone.setns(ns_argument(form, path, f), linux_clone.NEWNET)
            return ns_inode("net")

        assert in_child(child) == ns_inode("net", pid) != ns_inode("net")


def test_setns_with_nstype_zero_takes_any_type(privileged: None) -> None:
    with process_in(linux_clone.NEWUTS, setup=lambda: socket.sethostname("setns-target")) as pid:
        def child() -> str:
            linux_clone.setns(f"/proc/{pid}/ns/uts")
            return socket.gethostname()

        assert in_child(child) == "setns-target" != socket.gethostname()


def test_setns_pidfd_enters_several_namespaces(privileged: None) -> None:
    kinds = linux_clone.NEWNET | linux_clone.NEWUTS | linux_clone.NEWIPC
    with process_in(kinds) as pid:
        def child() -> Dict[str, int]:
            pidfd = linux_clone.pidfd_open(pid)
            try:
                linux_clone.setns(pidfd, kinds)
            finally:
                os.close(pidfd)
            return ns_inodes()

        inside = in_child(child)
        target = {name: ns_inode(name, pid) for name in ("net", "uts", "ipc")}
        assert {name: inside[name] for name in target} == target
        assert changed(ns_inodes(), inside) == {"net", "uts", "ipc"}


def test_setns_pidfd_needs_nstype(privileged: None) -> None:
    def child() -> Any:
        pidfd = linux_clone.pidfd_open(os.getpid())
        try:
            return raised(linux_clone.setns, pidfd)
        finally:
            os.close(pidfd)

    exc = in_child(child)
    assert (type(exc), exc.errno) == (OSError, errno.EINVAL)


def test_setns_returns_to_a_saved_namespace(privileged: None) -> None:
    def child() -> Tuple[int, int]:
        with open("/proc/self/ns/net") as home:
            linux_clone.unshare(linux_clone.NEWNET)
            away = ns_inode("net")
            linux_clone.setns(home, linux_clone.NEWNET)
        return away, ns_inode("net")

    away, back = in_child(child)
    assert back == ns_inode("net") != away


def test_setns_by_path_closes_the_file(privileged: None, regular_file: str) -> None:
    def child() -> Tuple[List[str], List[str]]:
        before = open_fds()
        linux_clone.setns("/proc/self/ns/uts", linux_clone.NEWUTS)
        raised(linux_clone.setns, regular_file)
        raised(linux_clone.setns, "/proc/self/ns/uts", linux_clone.NEWNET)
        return before, open_fds()

    before, after = in_child(child)
    assert after == before


@pytest.mark.parametrize("ns, exc_type", [
    (None, TypeError), (1.5, TypeError), ([3], TypeError), (-1, ValueError),
    (2**40, OverflowError),
])
def test_setns_bad_ns_types(ns: Any, exc_type: type) -> None:
    assert type(in_child(raised, linux_clone.setns, ns)) is exc_type


@pytest.mark.parametrize("nstype, exc_type", [
    (None, TypeError), ("NEWNET", TypeError), (2**40, OverflowError),
])
def test_setns_bad_nstype_types(nstype: Any, exc_type: type) -> None:
    assert type(in_child(raised, linux_clone.setns, "/proc/self/ns/net", nstype)) is exc_type


def test_setns_closed_fd_is_ebadf(closed_fd: int) -> None:
    exc = in_child(raised, linux_clone.setns, closed_fd)
    assert (type(exc), exc.errno, exc.filename) == (OSError, errno.EBADF, None)


def test_setns_regular_file_is_einval(regular_file: str) -> None:
    exc = in_child(raised, linux_clone.setns, regular_file)
    assert (type(exc), exc.errno, exc.filename) == (OSError, errno.EINVAL, regular_file)
    with open(regular_file) as f:
        exc = in_child(raised, linux_clone.setns, f.fileno())
    assert (type(exc), exc.errno, exc.filename) == (OSError, errno.EINVAL, None)


@pytest.mark.parametrize("nstype", [linux_clone.NEWUTS, linux_clone.NEWUSER, 1, -1])
def test_setns_wrong_nstype_is_einval(nstype: int) -> None:
    exc = in_child(raised, linux_clone.setns, "/proc/self/ns/net", nstype)
    assert (type(exc), exc.errno, exc.filename) == (OSError, errno.EINVAL, "/proc/self/ns/net")


def test_setns_missing_path_is_file_not_found(tmp_path: pathlib.Path) -> None:
    missing = tmp_path / "missing"
    exc = in_child(raised, linux_clone.setns, missing)
    assert (type(exc), exc.errno, exc.filename) == (FileNotFoundError, errno.ENOENT, missing)


@pytest.mark.parametrize("path", ["/proc/self/ns/net\0", b"/proc/self/\0ns/net"])
def test_setns_path_with_nul_is_value_error(path: Any) -> None:
    assert type(in_child(raised, linux_clone.setns, path)) is ValueError


def test_setns_fileno_exception_passes_through() -> None:
    exc = in_child(raised, linux_clone.setns, Fileno(ZeroDivisionError("fileno failed")))
    assert (type(exc), str(exc)) == (ZeroDivisionError, "fileno failed")


HOSTILE_NS = [
    (2**31, OverflowError), (2**63, OverflowError), (2**64, OverflowError),
    (-2**63 - 1, OverflowError), (-1, ValueError), (Fileno(ZeroDivisionError()), ZeroDivisionError),
    (Fileno("3"), TypeError), (Fileno(2**64), OverflowError), (Fileno(-1), ValueError),
    (FsPath(ZeroDivisionError()), ZeroDivisionError), (FsPath(3), TypeError),
]


@pytest.mark.parametrize("ns, exc_type", HOSTILE_NS)
def test_setns_a_bad_ns_makes_no_call(ns: Any, exc_type: type) -> None:
    # fd 0 a namespace file: a number that became 0 would have entered it.
    def child() -> Tuple[type, bool, bool]:
        os.dup2(os.open("/proc/self/ns/uts", os.O_RDONLY), 0)
        before, home = open_fds(), ns_inode("uts")
        exc = raised(linux_clone.setns, ns)
        return type(exc), open_fds() == before, ns_inode("uts") == home

    assert in_child(child) == (exc_type, True, True)


@pytest.mark.parametrize("ns, exc_type", HOSTILE_NS)
def test_ns_functions_a_bad_ns_makes_no_call(ns: Any, exc_type: type) -> None:
    def child() -> List[Tuple[type, bool]]:
        os.dup2(os.open("/proc/self/ns/user", os.O_RDONLY), 0)
        before = open_fds()
        return [(type(raised(func, ns)), open_fds() == before) for func in NS_FUNCTIONS]

    assert in_child(child) == [(exc_type, True)] * len(NS_FUNCTIONS)


def test_unprivileged_setns_is_refused(privileged: None) -> None:
    with process_in(linux_clone.NEWNET) as pid:
        def child() -> Any:
            fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)  # opened while still root
            return as_nobody(raised, linux_clone.setns, fd, linux_clone.NEWNET)

        exc = in_child(child)
    assert (type(exc), exc.errno) == (PermissionError, errno.EPERM)


# ---- configure_loopback ----

def test_new_network_namespace_has_only_lo_down(privileged: None) -> None:
    def child() -> List[Tuple[str, List[str]]]:
        linux_clone.unshare(linux_clone.NEWNET)
        return links()

    [(name, flags)] = in_child(child)
    assert name == "lo" and "UP" not in flags


def test_configure_loopback_brings_lo_up_with_its_addresses(privileged: None) -> None:
    def child() -> Tuple[List[Tuple[str, List[str]]], str]:
        linux_clone.unshare(linux_clone.NEWNET)
        linux_clone.configure_loopback()
        return links(), ip("addr", "show", "dev", "lo")

    [(name, flags)], addresses = in_child(child)
    assert name == "lo" and "UP" in flags
    assert "inet 127.0.0.1/8" in addresses and "inet6 ::1/128" in addresses


@pytest.mark.parametrize("family, address", [(socket.AF_INET, "127.0.0.1"),
                                             (socket.AF_INET6, "::1")], ids=["ipv4", "ipv6"])
def test_tcp_over_loopback_after_configure_loopback(privileged: None,
                                                    family: socket.AddressFamily,
                                                    address: str) -> None:
    def child() -> bytes:
        linux_clone.unshare(linux_clone.NEWNET)
        linux_clone.configure_loopback()
        return tcp_roundtrip(family, address)

    assert in_child(child) == b"ping"


@pytest.mark.parametrize("family, address, err", [
    (socket.AF_INET, "127.0.0.1", errno.ENETUNREACH),
    (socket.AF_INET6, "::1", errno.EADDRNOTAVAIL),
], ids=["ipv4", "ipv6"])
def test_loopback_is_unreachable_before_configure_loopback(privileged: None,
                                                           family: socket.AddressFamily,
                                                           address: str, err: int) -> None:
    def child() -> Any:
        linux_clone.unshare(linux_clone.NEWNET)
        return raised(tcp_roundtrip, family, address)

    exc = in_child(child)
    assert (type(exc), exc.errno) == (OSError, err)


def test_configure_loopback_twice_is_fine(privileged: None) -> None:
    def child() -> Tuple[List[Tuple[str, List[str]]], bytes]:
        linux_clone.unshare(linux_clone.NEWNET)
        linux_clone.configure_loopback()
        linux_clone.configure_loopback()
        return links(), tcp_roundtrip(socket.AF_INET, "127.0.0.1")

    [(name, flags)], received = in_child(child)
    assert (name, received) == ("lo", b"ping") and "UP" in flags


def test_unprivileged_configure_loopback_is_refused(privileged: None) -> None:
    def child() -> Any:
        linux_clone.unshare(linux_clone.NEWNET)  # owned by root's user namespace
        return as_nobody(raised, linux_clone.configure_loopback)

    exc = in_child(child)
    assert (type(exc), exc.errno) == (PermissionError, errno.EPERM)


# ---- pivot_root ----

PATH_FORMS: Dict[str, Callable[[pathlib.Path], Any]] = {
    "str": str, "bytes": os.fsencode, "pathlike": pathlib.Path,
}


@pytest.mark.parametrize("form", PATH_FORMS)
def test_pivot_root_makes_a_tmpfs_the_root(privileged: None, tmp_path: pathlib.Path,
                                           form: str) -> None:
    convert = PATH_FORMS[form]

    def child() -> Tuple[List[str], str, bool, List[str]]:
        private_mounts()
        tmpfs_root(tmp_path)
        old_etc = os.stat("/etc")
        linux_clone.pivot_root(convert(tmp_path), convert(tmp_path / "old"))
        os.chdir("/")
        listing = sorted(os.listdir("/"))
        marker = pathlib.Path("/marker").read_text()
        old_root_there = os.path.samestat(os.stat("/old/etc"), old_etc)
        umount("/old", MNT_DETACH)
        return listing, marker, old_root_there, os.listdir("/old")

    assert in_child(child) == (["marker", "old"], "new root", True, [])
    assert os.listdir(tmp_path) == []  # the tmpfs was mounted in the child's namespace only


def test_pivot_root_to_a_non_mount_point_is_einval(privileged: None,
                                                   tmp_path: pathlib.Path) -> None:
    new_root = tmp_path / "new"

    def child() -> Any:
        private_mounts()
        mount("tmpfs", tmp_path, "tmpfs")  # off the root file system, which gives EBUSY
        (new_root / "old").mkdir(parents=True)
        return raised(linux_clone.pivot_root, new_root, new_root / "old")

    exc = in_child(child)
    assert (type(exc), exc.errno) == (OSError, errno.EINVAL)
    assert (exc.filename, exc.filename2) == (new_root, new_root / "old")


def test_pivot_root_old_root_outside_new_root_is_einval(privileged: None,
                                                        tmp_path: pathlib.Path) -> None:
    new_root, elsewhere = tmp_path / "new", tmp_path / "elsewhere"

    def child() -> Any:
        private_mounts()
        mount("tmpfs", tmp_path, "tmpfs")  # off the root file system, which gives EBUSY
        new_root.mkdir()
        elsewhere.mkdir()
        tmpfs_root(new_root)
        return raised(linux_clone.pivot_root, str(new_root), str(elsewhere))

    exc = in_child(child)
    assert (type(exc), exc.errno) == (OSError, errno.EINVAL)
    assert (exc.filename, exc.filename2) == (str(new_root), str(elsewhere))


def test_pivot_root_missing_path_is_file_not_found(privileged: None,
                                                   tmp_path: pathlib.Path) -> None:
    missing = str(tmp_path / "missing")

    def child() -> Any:
        private_mounts()
        return raised(linux_clone.pivot_root, missing, missing + "/old")

    exc = in_child(child)
    assert (type(exc), exc.errno) == (FileNotFoundError, errno.ENOENT)
    assert (exc.filename, exc.filename2) == (missing, missing + "/old")


@pytest.mark.parametrize("new_root, old_root, exc_type", [
    (None, "/old", TypeError), ("/", 1, TypeError), ("/new\0", "/old", ValueError),
    ("/", b"/o\0ld", ValueError),
])
def test_pivot_root_bad_path_types(new_root: Any, old_root: Any, exc_type: type) -> None:
    assert type(in_child(raised, linux_clone.pivot_root, new_root, old_root)) is exc_type


def test_unprivileged_pivot_root_is_refused(privileged: None) -> None:
    # Directories nobody can reach: Linux 7.2 (forky's; 6.18 did not yet) looks both paths
    # up before it checks the capability, and pytest's tmp_path, under a 0700 directory,
    # would be EACCES there.
    with tempfile.TemporaryDirectory() as tmp:
        new_root = pathlib.Path(tmp)
        new_root.chmod(0o755)
        (new_root / "old").mkdir()
        exc = in_child(as_nobody, raised, linux_clone.pivot_root, new_root, new_root / "old")
    assert (type(exc), exc.errno) == (PermissionError, errno.EPERM)
    assert (exc.filename, exc.filename2) == (new_root, new_root / "old")


# ---- kcmp ----

@pytest.mark.parametrize("kind", ["KCMP_VM", "KCMP_FILES", "KCMP_FS", "KCMP_SIGHAND",
                                  "KCMP_IO", "KCMP_SYSVSEM"])
def test_kcmp_a_process_with_itself_is_equal(kind: str) -> None:
    me = os.getpid()
    assert linux_clone.kcmp(me, me, getattr(linux_clone, kind)) == 0


@pytest.mark.parametrize("kind", ["KCMP_VM", "KCMP_FILES", "KCMP_FS", "KCMP_SIGHAND"])
def test_kcmp_a_forked_child_has_its_own_copy(kind: str) -> None:
    me, kcmp_type = os.getpid(), getattr(linux_clone, kind)
    with process_in(0) as pid:
        # Different objects are ordered: one way round 1 (less), the other 2 (greater).
        assert {linux_clone.kcmp(me, pid, kcmp_type),
                linux_clone.kcmp(pid, me, kcmp_type)} == {1, 2}


def test_kcmp_file_compares_open_files(regular_file: str) -> None:
    me = os.getpid()
    with open(regular_file) as first, open(regular_file) as second:
        dup = os.dup(first.fileno())
        try:
            assert linux_clone.kcmp(me, me, linux_clone.KCMP_FILE, first.fileno(), dup) == 0
            assert linux_clone.kcmp(me, me, linux_clone.KCMP_FILE, first.fileno(),
                                    second.fileno()) in (1, 2)
        finally:
            os.close(dup)


def test_kcmp_file_inherited_by_a_child_is_the_same(regular_file: str) -> None:
    with open(regular_file) as f, process_in(0) as pid:
        assert linux_clone.kcmp(os.getpid(), pid, linux_clone.KCMP_FILE, f.fileno(),
                                f.fileno()) == 0


def first_free_fd(low: int) -> int:
    open_now = {int(name) for name in open_fds()}
    return next(fd for fd in range(low, low + 1000) if fd not in open_now)


def test_kcmp_file_idx1_is_in_pid1_and_idx2_in_pid2(regular_file: str) -> None:
    # The child has the file also as fd `number`, which this process does not have.
    with open(regular_file) as f:
        number = first_free_fd(100)
        with process_in(0, setup=lambda: os.dup2(f.fileno(), number)) as pid:
            me = os.getpid()
            assert linux_clone.kcmp(me, pid, linux_clone.KCMP_FILE, f.fileno(), number) == 0
            assert linux_clone.kcmp(pid, me, linux_clone.KCMP_FILE, number, f.fileno()) == 0
            exc = raised(linux_clone.kcmp, me, pid, linux_clone.KCMP_FILE, number, f.fileno())
            assert (type(exc), exc.errno) == (OSError, errno.EBADF)


def test_kcmp_orders_pid1_s_object_against_pid2_s(regular_file: str) -> None:
    # Two files, and a child that has them under each other's numbers: from one process the
    # order of `a` against `b` is known, so kcmp(me, child, a, a) must answer the same.
    def swap(a: int, b: int) -> None:
        spare = os.dup(a)
        os.dup2(b, a)
        os.dup2(spare, b)
        os.close(spare)

    me, kind = os.getpid(), linux_clone.KCMP_FILE
    with open(regular_file) as first, open(regular_file) as second:
        a, b = first.fileno(), second.fileno()
        order = linux_clone.kcmp(me, me, kind, a, b)
        assert order in (1, 2)
        with process_in(0, setup=lambda: swap(a, b)) as pid:
            assert linux_clone.kcmp(me, pid, kind, a, a) == order
            assert linux_clone.kcmp(pid, me, kind, a, a) == 3 - order
            assert linux_clone.kcmp(me, pid, kind, a, b) == 0


def test_kcmp_epoll_tfd_finds_the_registered_file() -> None:
    me = os.getpid()
    read_end, write_end = os.pipe()
    try:
        with select.epoll() as epoll:
            epoll.register(read_end, select.EPOLLIN)
            slot = (epoll.fileno(), read_end, 0)
            assert linux_clone.kcmp(me, me, linux_clone.KCMP_EPOLL_TFD, read_end, slot) == 0
            assert linux_clone.kcmp(me, me, linux_clone.KCMP_EPOLL_TFD, write_end,
                                    slot) in (1, 2)
            exc = raised(linux_clone.kcmp, me, me, linux_clone.KCMP_EPOLL_TFD, read_end,
                         (epoll.fileno(), write_end, 0))
            assert (type(exc), exc.errno) == (FileNotFoundError, errno.ENOENT)
    finally:
        os.close(read_end)
        os.close(write_end)


@pytest.mark.parametrize("change, exc_type", [
    ({"pid1": None}, TypeError), ({"pid2": "1"}, TypeError), ({"type": None}, TypeError),
    ({"idx1": "0"}, TypeError), ({"pid1": 2**31}, OverflowError),
    ({"type": 2**31}, OverflowError), ({"idx1": -1}, OverflowError),
    ({"idx2": 2**64}, OverflowError), ({"idx2": (1, 2, 3)}, TypeError),
    ({"type": linux_clone.KCMP_EPOLL_TFD, "idx2": 0}, TypeError),
    ({"type": linux_clone.KCMP_EPOLL_TFD, "idx2": (1, 2)}, TypeError),
    ({"type": linux_clone.KCMP_EPOLL_TFD, "idx2": (1, 2, None)}, TypeError),
    ({"type": linux_clone.KCMP_EPOLL_TFD, "idx2": (1, 2, -1)}, OverflowError),
    ({"type": linux_clone.KCMP_EPOLL_TFD, "idx2": (2**32, 2, 0)}, OverflowError),
    ({"type": linux_clone.KCMP_EPOLL_TFD, "idx2": (1, 2, 2**32)}, OverflowError),
    ({"pid1": 2**32}, OverflowError), ({"pid2": -2**31 - 1}, OverflowError),
    ({"pid2": 2**63}, OverflowError),
    ({"idx1": 2**31}, OverflowError), ({"idx2": 2**32}, OverflowError),
    ({"idx2": -1}, OverflowError), ({"type": linux_clone.KCMP_VM, "idx1": 2**32}, OverflowError),
])
def test_kcmp_bad_argument_types(change: Dict[str, Any], exc_type: type) -> None:
    args = {"pid1": os.getpid(), "pid2": os.getpid(), "type": linux_clone.KCMP_FILE,
            "idx1": 0, "idx2": 0, **change}
    assert type(raised(linux_clone.kcmp, *args.values())) is exc_type


@pytest.mark.parametrize("kcmp_type", [-1, 999])
def test_kcmp_unknown_type_is_einval(kcmp_type: int) -> None:
    me = os.getpid()
    exc = raised(linux_clone.kcmp, me, me, kcmp_type)
    assert (type(exc), exc.errno) == (OSError, errno.EINVAL)


def test_kcmp_missing_process_is_esrch() -> None:
    exc = raised(linux_clone.kcmp, os.getpid(), pid_beyond_pid_max(), linux_clone.KCMP_VM)
    assert (type(exc), exc.errno) == (ProcessLookupError, errno.ESRCH)


def test_kcmp_an_fd_beyond_a_c_int_is_not_cut_to_another(regular_file: str) -> None:
    # The kernel keeps the low 32 bits of an fd: r + 2**32 would have been r.
    me = os.getpid()
    with open(regular_file) as f:
        r = f.fileno()
        for idx1, idx2 in [(r, r + 2**32), (r + 2**32, r), (r, r + 2**63)]:
            exc = raised(linux_clone.kcmp, me, me, linux_clone.KCMP_FILE, idx1, idx2)
            assert type(exc) is OverflowError


def test_kcmp_closed_fd_is_ebadf(closed_fd: int) -> None:
    me = os.getpid()
    exc = raised(linux_clone.kcmp, me, me, linux_clone.KCMP_FILE, closed_fd, closed_fd)
    assert (type(exc), exc.errno) == (OSError, errno.EBADF)


def test_unprivileged_kcmp_with_a_root_process_is_refused(privileged: None) -> None:
    def child() -> Any:
        return raised(linux_clone.kcmp, os.getpid(), os.getppid(), linux_clone.KCMP_VM)

    exc = in_child(as_nobody, child)
    assert (type(exc), exc.errno) == (PermissionError, errno.EPERM)


# ---- pidfd_open ----

def test_pidfd_becomes_readable_when_the_process_exits() -> None:
    with process_in(0) as pid:
        pidfd = linux_clone.pidfd_open(pid)
        try:
            assert not os.get_inheritable(pidfd)
            poller = select.poll()
            poller.register(pidfd, select.POLLIN)
            assert poller.poll(0) == []
            os.kill(pid, signal.SIGKILL)
            assert poller.poll(10_000) == [(pidfd, select.POLLIN)]
        finally:
            os.close(pidfd)


def test_pidfd_open_nonblock_flag() -> None:
    # PIDFD_NONBLOCK is O_NONBLOCK (<linux/pidfd.h>).
    for flags in (0, os.O_NONBLOCK):
        pidfd = linux_clone.pidfd_open(os.getpid(), flags)
        try:
            assert os.get_blocking(pidfd) == (flags == 0)
        finally:
            os.close(pidfd)


@pytest.mark.parametrize("args, exc_type", [
    ((None,), TypeError), (("1",), TypeError), ((2**40,), OverflowError),
    ((1, -1), OverflowError), ((1, 2**40), OverflowError), ((1, None), TypeError),
])
def test_pidfd_open_bad_argument_types(args: Tuple[Any, ...], exc_type: type) -> None:
    assert type(raised(linux_clone.pidfd_open, *args)) is exc_type


@pytest.mark.parametrize("args", [(-1,), (1, 1)])
def test_pidfd_open_negative_pid_or_unknown_flags_are_einval(args: Tuple[int, ...]) -> None:
    exc = raised(linux_clone.pidfd_open, *args)
    assert (type(exc), exc.errno) == (OSError, errno.EINVAL)


def test_pidfd_open_missing_process_is_esrch() -> None:
    exc = raised(linux_clone.pidfd_open, pid_beyond_pid_max())
    assert (type(exc), exc.errno) == (ProcessLookupError, errno.ESRCH)


# ---- a float is not an int ----

@pytest.mark.parametrize("name, args", [
    ("unshare", (1.5,)), ("setns", ("/proc/self/ns/net", 1.5)),
    ("kcmp", (1.0, 1, linux_clone.KCMP_VM)), ("kcmp", (1, 1, 1.0)),
    ("kcmp", (1, 1, linux_clone.KCMP_FILE, 1.5)), ("kcmp", (1, 1, linux_clone.KCMP_FILE, 0, 1.5)),
    ("pidfd_open", (1.5,)), ("pidfd_open", (1, 0.0)),
])
def test_a_float_is_not_an_int(name: str, args: Tuple[Any, ...]) -> None:
    assert type(in_child(raised, getattr(linux_clone, name), *args)) is TypeError


# ---- the nsfs ioctls: ns_get_userns, ns_get_parent, ns_get_nstype, ns_get_owner_uid ----

@pytest.mark.parametrize("ns_file, flag", [
    ("net", "NEWNET"), ("uts", "NEWUTS"), ("ipc", "NEWIPC"), ("mnt", "NEWNS"), ("pid", "NEWPID"),
    ("user", "NEWUSER"), ("cgroup", "NEWCGROUP"), ("time", "NEWTIME"),
])
def test_ns_get_nstype_names_each_namespace_type(ns_file: str, flag: str) -> None:
    assert linux_clone.ns_get_nstype(f"/proc/self/ns/{ns_file}") is getattr(linux_clone, flag)


@pytest.mark.parametrize("form", ["fd", "file", "str", "bytes", "pathlike"])
def test_ns_functions_on_a_rootless_namespace(privileged: None, form: str) -> None:
    # A user namespace created by an unprivileged uid, owning a network namespace.
    with process_in(linux_clone.NEWUSER | linux_clone.NEWNET, uid=OTHER_UID) as pid:
        net, user = f"/proc/{pid}/ns/net", f"/proc/{pid}/ns/user"
        with open(net) as net_file, open(user) as user_file:
            net_ns, user_ns = ns_argument(form, net, net_file), ns_argument(form, user, user_file)
            assert linux_clone.ns_get_nstype(net_ns) is linux_clone.NEWNET
            assert inode_of(linux_clone.ns_get_userns(net_ns)) == ns_inode("user", pid)
            assert inode_of(linux_clone.ns_get_parent(user_ns)) == ns_inode("user")
            assert linux_clone.ns_get_owner_uid(user_ns) == OTHER_UID


def test_ns_get_userns_and_parent_return_close_on_exec_fds(privileged: None) -> None:
    assert is_close_on_exec(linux_clone.ns_get_userns("/proc/self/ns/net"))
    with process_in(linux_clone.NEWPID, setup=start_pid_namespace) as pid:
        assert is_close_on_exec(linux_clone.ns_get_parent(f"/proc/{pid}/ns/pid_for_children"))


@pytest.mark.parametrize("flag, inner, outer, setup", [
    ("NEWUSER", "user", "user", None),
    ("NEWPID", "pid_for_children", "pid", start_pid_namespace),
])
def test_ns_get_parent_of_a_nested_namespace_is_the_outer_one(
        privileged: None, flag: str, inner: str, outer: str,
        setup: Optional[Callable[[], None]]) -> None:
    with process_in(getattr(linux_clone, flag), setup=setup) as pid:
        assert ns_inode(inner, pid) != ns_inode(outer)
        parent = linux_clone.ns_get_parent(f"/proc/{pid}/ns/{inner}")
        assert inode_of(parent) == ns_inode(outer)


@pytest.mark.parametrize("ns_file", ["user", "pid"])
def test_ns_get_parent_above_the_callers_namespace_is_refused(ns_file: str) -> None:
    path = f"/proc/self/ns/{ns_file}"
    exc = raised(linux_clone.ns_get_parent, path)
    assert (type(exc), exc.errno, exc.filename) == (PermissionError, errno.EPERM, path)


def test_ns_get_userns_owned_outside_the_callers_user_namespace_is_refused(
        privileged: None) -> None:
    def child() -> Any:
        linux_clone.unshare(linux_clone.NEWUSER)
        return raised(linux_clone.ns_get_userns, "/proc/self/ns/net")  # owned by the outer one

    exc = in_child(child)
    assert (type(exc), exc.errno) == (PermissionError, errno.EPERM)


@pytest.mark.parametrize("func, ns_file", [
    (linux_clone.ns_get_parent, "net"), (linux_clone.ns_get_parent, "uts"),
    (linux_clone.ns_get_owner_uid, "net"), (linux_clone.ns_get_owner_uid, "pid"),
])
def test_ns_call_for_another_namespace_type_is_einval(func: Callable[[Any], int],
                                                      ns_file: str) -> None:
    path = f"/proc/self/ns/{ns_file}"
    exc = raised(func, path)
    assert (type(exc), exc.errno, exc.filename) == (OSError, errno.EINVAL, path)


@pytest.mark.parametrize("ns, exc_type", [
    (None, TypeError), (1.5, TypeError), ([3], TypeError), (-1, ValueError),
    (2**40, OverflowError), ("/proc/self/ns/net\0", ValueError), (b"/proc\0", ValueError),
])
def test_ns_functions_bad_argument_types(ns: Any, exc_type: type) -> None:
    for func in NS_FUNCTIONS:
        assert type(raised(func, ns)) is exc_type, func.__name__


@pytest.mark.parametrize("func", NS_FUNCTIONS)
def test_ns_function_closed_fd_is_ebadf(func: Callable[[Any], int], closed_fd: int) -> None:
    exc = raised(func, closed_fd)
    assert (type(exc), exc.errno, exc.filename) == (OSError, errno.EBADF, None)


@pytest.mark.parametrize("func", NS_FUNCTIONS)
def test_ns_function_on_a_regular_file_is_enotty(func: Callable[[Any], int],
                                                 regular_file: str) -> None:
    exc = raised(func, regular_file)
    assert (type(exc), exc.errno, exc.filename) == (OSError, errno.ENOTTY, regular_file)
    with open(regular_file) as f:
        exc = raised(func, f)
    assert (type(exc), exc.errno, exc.filename) == (OSError, errno.ENOTTY, None)


@pytest.mark.parametrize("func", NS_FUNCTIONS)
def test_ns_function_missing_path_is_file_not_found(func: Callable[[Any], int],
                                                    tmp_path: pathlib.Path) -> None:
    missing = os.fsencode(tmp_path / "missing")
    exc = raised(func, missing)
    assert (type(exc), exc.errno, exc.filename) == (FileNotFoundError, errno.ENOENT, missing)


@pytest.mark.parametrize("func", NS_FUNCTIONS)
def test_ns_function_fileno_exception_passes_through(func: Callable[[Any], int]) -> None:
    exc = raised(func, Fileno(ZeroDivisionError("fileno failed")))
    assert (type(exc), str(exc)) == (ZeroDivisionError, "fileno failed")


def test_ns_functions_by_path_close_their_files(regular_file: str) -> None:
    before = open_fds()
    linux_clone.ns_get_nstype("/proc/self/ns/net")
    os.close(linux_clone.ns_get_userns("/proc/self/ns/net"))
    for func in NS_FUNCTIONS:
        raised(func, regular_file)
    assert open_fds() == before


PIVOT_INTO_EMPTY_ROOT = r"""
import ctypes, os, sys, tempfile
import linux_clone
from linux_clone import _core
libc = ctypes.CDLL(None, use_errno=True)
MS_REC, MS_PRIVATE, MNT_DETACH = 0x4000, 0x40000, 2
_core.unshare(_core.CLONE_FLAGS["NEWNS"])  # the raw call: no lazily made name touched yet
assert libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) == 0
root = tempfile.mkdtemp()
assert libc.mount(b"none", root.encode(), b"tmpfs", 0, None) == 0
os.mkdir(os.path.join(root, "old"))
os.chdir(root)
linux_clone.pivot_root(".", "old")
os.chdir("/")
assert libc.umount2(b"/old", MNT_DETACH) == 0
try:
    import json  # noqa: F401
    stdlib = "reachable"
except ImportError:
    stdlib = "gone"
out = [stdlib, int(linux_clone.NEWNET), linux_clone.CloneFlag.NEWUTS.name,
       linux_clone.Popen.__name__, linux_clone.run.__name__]
print(out)
"""


def test_names_made_on_first_use_survive_pivot_root(privileged: None) -> None:
    """`import linux_clone` makes CloneFlag and Popen/run on first use; pivot_root() makes
    them before the old root, and the standard library with it, is gone."""
    result = run_python(PIVOT_INTO_EMPTY_ROOT)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().strip() == str(
        ["gone", int(linux_clone.NEWNET), "NEWUTS", "Popen", "run"])


def test_pivot_root_without_a_free_fd_still_makes_the_call() -> None:
    # A fresh interpreter, so that nothing has loaded Popen yet: pivot_root's preload of what
    # the package loads on first use needs an fd, and a failed preload must not stand in for
    # the call's own answer.
    proc = run_python(
        "import errno, resource, linux_clone\n"
        "hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (0, hard))\n"
        "try:\n"
        "    linux_clone.pivot_root('/nonexistent-new', '/nonexistent-old')\n"
        "except OSError as exc:\n"
        "    print(type(exc).__name__, errno.errorcode[exc.errno], exc.filename)\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode() == "FileNotFoundError ENOENT /nonexistent-new\n"

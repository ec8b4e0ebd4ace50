"""entered(): the calling thread moves into a namespace for a block and back, even on an
exception; nesting works, other threads keep their namespaces, no fd stays open but the
one each thread keeps for the way back."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import pathlib
import signal
import socket
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

import pytest
import seccomp_eras

import linux_clone
from conftest import Fileno, FsPath, in_child, running_threads

pytestmark = pytest.mark.usefixtures("privileged")


def thread_ns(kind: str) -> int:
    return os.stat(f"/proc/thread-self/ns/{kind}").st_ino


def fd_count() -> int:
    return len(open_fds())


def every_fd() -> Dict[int, str]:
    """What each of this process's fds is (a namespace fd reads as `net:[4026531840]`)."""
    found = {}
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(FileNotFoundError):  # listdir's own fd, closed by now
            found[int(name)] = os.readlink(f"/proc/self/fd/{name}")
    return found


def open_fds() -> Dict[int, str]:
    """every_fd() but the one the calling thread keeps for entered() from its first use on."""
    found = every_fd()
    found.pop(linux_clone._core._kept_fd(), None)
    return found


def fds_entered_keeps(before: Dict[int, str]) -> Dict[str, int]:
    """The fds opened since `before` by kind: inside an entered() block, those it keeps."""
    return {link.split(":")[0]: fd for fd, link in open_fds().items() if fd not in before}


def dead_pid() -> int:
    return int(pathlib.Path("/proc/sys/kernel/pid_max").read_text()) + 1


def with_holder(flags: int, body: Any) -> Any:
    """Run body(pid) with a process in new `flags` namespaces, in a child of the runner."""
    def run() -> Any:
        r, w = os.pipe()
        go_r, go_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            linux_clone.unshare(flags)
            if flags & linux_clone.NEWUTS:
                socket.sethostname("entered-target")
            os.write(w, b"1")
            os.read(go_r, 1)
            os._exit(0)
        os.read(r, 1)
        try:
            return body(pid)
        finally:
            os.write(go_w, b"1")
            os.waitpid(pid, 0)
    return in_child(run)


def test_enters_and_leaves_by_path_fd_and_file() -> None:
    def body(pid: int) -> List[Any]:
        home, target = thread_ns("net"), os.stat(f"/proc/{pid}/ns/net").st_ino
        seen = []
        before = fd_count()
        with linux_clone.entered(f"/proc/{pid}/ns/net"):
            seen.append(thread_ns("net") == target)
        fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
        with linux_clone.entered(fd, linux_clone.NEWNET):
            seen.append(thread_ns("net") == target)
        os.close(fd)
        with open(f"/proc/{pid}/ns/net") as f, linux_clone.entered(f):
            seen.append(thread_ns("net") == target)
        seen.append(thread_ns("net") == home)
        seen.append(fd_count() == before)
        return seen
    assert with_holder(linux_clone.NEWNET, body) == [True] * 5


def test_leaves_on_exception() -> None:
    def body(pid: int) -> bool:
        home = thread_ns("uts")
        with pytest.raises(KeyError):
            with linux_clone.entered(f"/proc/{pid}/ns/uts"):
                assert socket.gethostname() == "entered-target"
                raise KeyError("inside")
        return thread_ns("uts") == home and socket.gethostname() != "entered-target"
    assert with_holder(linux_clone.NEWUTS, body)


def test_nesting() -> None:
    def body(pid: int) -> List[bool]:
        home_net, home_uts = thread_ns("net"), thread_ns("uts")
        with linux_clone.entered(f"/proc/{pid}/ns/net"):
            inner_net = thread_ns("net")
            with linux_clone.entered(f"/proc/{pid}/ns/uts"):
                both = thread_ns("net") == inner_net and thread_ns("uts") != home_uts
            after_inner = thread_ns("uts") == home_uts and thread_ns("net") == inner_net
        return [inner_net != home_net, both, after_inner, thread_ns("net") == home_net]
    assert with_holder(linux_clone.NEWNET | linux_clone.NEWUTS, body) == [True] * 4


def test_pid_selects_several_namespaces_through_a_pidfd() -> None:
    def body(pid: int) -> List[bool]:
        home = {k: thread_ns(k) for k in ("net", "uts", "ipc")}
        with linux_clone.entered(pid=pid, nstype=linux_clone.NEWNET | linux_clone.NEWUTS
                                 | linux_clone.NEWIPC):
            inside = {k: thread_ns(k) for k in home}
            name = socket.gethostname()
        return ([inside[k] == os.stat(f"/proc/{pid}/ns/{k}").st_ino for k in home]
                + [name == "entered-target"]
                + [thread_ns(k) == home[k] for k in home])
    flags = linux_clone.NEWNET | linux_clone.NEWUTS | linux_clone.NEWIPC
    assert with_holder(flags, body) == [True] * 7


def test_only_the_calling_thread_moves() -> None:
    def body(pid: int) -> Dict[str, bool]:
        home = thread_ns("net")
        ready, leave = threading.Event(), threading.Event()
        seen: Dict[str, int] = {}

        def other() -> None:
            ready.wait()
            seen["other"] = thread_ns("net")  # while the main thread is inside
            leave.set()

        worker = threading.Thread(target=other)
        worker.start()
        with linux_clone.entered(f"/proc/{pid}/ns/net"):
            seen["main"] = thread_ns("net")
            ready.set()
            leave.wait()
        worker.join()
        return {"main inside": seen["main"] != home, "other home": seen["other"] == home,
                "main back": thread_ns("net") == home}
    assert all(with_holder(linux_clone.NEWNET, body).values())


def test_each_thread_has_its_own_stack_of_namespaces() -> None:
    # Unlike one global push/pop stack: two threads inside at once leave in either order.
    def body(pid: int) -> List[bool]:
        home = thread_ns("uts")
        results: List[bool] = []
        first_in, second_out = threading.Event(), threading.Event()

        def first() -> None:
            with linux_clone.entered(f"/proc/{pid}/ns/uts"):
                first_in.set()
                second_out.wait()
                results.append(socket.gethostname() == "entered-target")
            results.append(thread_ns("uts") == home)

        def second() -> None:
            first_in.wait()
            with linux_clone.entered(f"/proc/{pid}/ns/uts"):
                results.append(socket.gethostname() == "entered-target")
            results.append(thread_ns("uts") == home)
            second_out.set()

        threads = [threading.Thread(target=first), threading.Thread(target=second)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return results
    assert with_holder(linux_clone.NEWUTS, body) == [True] * 4


def test_user_namespaces_are_refused() -> None:
    with pytest.raises(ValueError, match="cannot be left"):
        linux_clone.entered("/proc/self/ns/user", linux_clone.NEWUSER)
    with pytest.raises(ValueError, match="cannot be left"):
        with linux_clone.entered("/proc/self/ns/user"):
            pass


def test_bad_arguments() -> None:
    with pytest.raises(TypeError):
        linux_clone.entered()
    with pytest.raises(TypeError):
        linux_clone.entered("/proc/self/ns/net", pid=os.getpid())
    with pytest.raises(ValueError):
        linux_clone.entered(pid=os.getpid())  # which namespaces?
    with pytest.raises(TypeError):
        linux_clone.entered("/proc/self/ns/net", 1.5)
    before = fd_count()
    with pytest.raises(FileNotFoundError) as info:
        with linux_clone.entered("/nonexistent/ns"):
            pass
    assert info.value.filename == "/nonexistent/ns"
    with pytest.raises(OSError) as info2:
        with linux_clone.entered("/proc/self/ns/net", linux_clone.NEWUTS):
            pass
    assert info2.value.errno == errno.EINVAL
    assert fd_count() == before


def test_an_active_entered_cannot_be_entered_again() -> None:
    def run() -> str:
        block = linux_clone.entered("/proc/self/ns/uts")
        with block:
            try:
                with block:
                    pass
            except RuntimeError as exc:
                return str(exc)
        return "entered twice"
    assert "already active" in in_child(run)


# ---- __exit__ without an active __enter__ ----

def test_exit_of_a_fresh_entered_does_nothing() -> None:
    def run() -> bool:
        before = open_fds()
        block = linux_clone.entered("/proc/self/ns/net")
        block.__exit__(None, None, None)
        return open_fds() == before
    assert in_child(run)


def test_exit_after_a_failed_enter_closes_nothing() -> None:
    # ExitStack.push(cm) then cm.__enter__(): the documented way to let __exit__ clean up a
    # partial __enter__, so __exit__ runs after the failed one; fd 0 was closed here once.
    def run() -> Tuple[str, bool]:
        os.dup2(os.open("/proc/self/ns/uts", os.O_RDONLY), 0)
        before = open_fds()
        try:
            with contextlib.ExitStack() as stack:
                block = linux_clone.entered(pid=dead_pid(), nstype=linux_clone.NEWNET)
                stack.push(block)
                block.__enter__()
        except Exception as exc:
            return type(exc).__name__, open_fds() == before
        return "nothing raised", False
    assert in_child(run) == ("ProcessLookupError", True)


def test_exit_twice_goes_back_once() -> None:
    def body(pid: int) -> List[bool]:
        home = thread_ns("net")
        block = linux_clone.entered(f"/proc/{pid}/ns/net")
        block.__enter__()
        inside = thread_ns("net")
        block.__exit__(None, None, None)
        block.__exit__(None, None, None)
        return [inside != home, thread_ns("net") == home]
    assert with_holder(linux_clone.NEWNET, body) == [True, True]


def test_exit_on_another_thread_is_an_error_not_a_wrong_move() -> None:
    """A generator holding an entered() block, advanced on one thread and closed on another:
    __exit__ there would move the closing thread and leave the entering one inside."""
    def body(pid: int) -> List[Any]:
        home = thread_ns("net")
        seen: Dict[str, Any] = {}

        def holder() -> Any:
            with linux_clone.entered(f"/proc/{pid}/ns/net"):
                yield

        gen = holder()

        def enter() -> None:
            next(gen)
            seen["entering thread inside"] = thread_ns("net")

        thread = threading.Thread(target=enter)
        thread.start()
        thread.join()
        with pytest.raises(RuntimeError, match="another thread"):
            gen.close()
        return [seen["entering thread inside"] != home, thread_ns("net") == home]
    assert with_holder(linux_clone.NEWNET, body) == [True, True]


# ---- the fds entered() keeps for the way back ----

def test_a_saved_fd_closed_in_the_block_is_an_error_not_a_wrong_exit() -> None:
    def body(pid: int) -> List[Any]:
        home, target = thread_ns("net"), os.stat(f"/proc/{pid}/ns/net").st_ino
        before = open_fds()
        with pytest.raises(RuntimeError, match="still in the entered net namespace"):
            with linux_clone.entered(f"/proc/{pid}/ns/net"):
                os.close(fds_entered_keeps(before)["net"])
        return [home != target, thread_ns("net") == target, open_fds() == before]
    assert with_holder(linux_clone.NEWNET, body) == [True] * 3


def test_a_saved_fd_number_reused_in_the_block_is_not_entered_nor_closed() -> None:
    # The block closes the saved fd and opens another namespace file on its number: __exit__
    # must neither setns into that file nor close it.
    def body(pid: int) -> List[Any]:
        home, target = thread_ns("net"), os.stat(f"/proc/{pid}/ns/net").st_ino
        before = open_fds()
        with pytest.raises(RuntimeError, match="closed or replaced"):
            with linux_clone.entered(f"/proc/{pid}/ns/net"):
                saved = fds_entered_keeps(before)["net"]
                other = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
                os.dup2(other, saved)
                os.close(other)
        still_open = os.fstat(saved).st_ino == target
        os.close(saved)
        return [home != target, thread_ns("net") == target, still_open, open_fds() == before]
    assert with_holder(linux_clone.NEWNET, body) == [True] * 4


@pytest.mark.parametrize("broken", ["net", "uts"])
def test_exit_goes_back_into_every_namespace_it_still_can(broken: str) -> None:
    def body(pid: int) -> Dict[str, Any]:
        home = {kind: thread_ns(kind) for kind in ("net", "uts")}
        before = open_fds()
        with pytest.raises(RuntimeError, match=f"entered {broken} namespace"):
            with linux_clone.entered(pid=pid, nstype=linux_clone.NEWNET | linux_clone.NEWUTS):
                os.close(fds_entered_keeps(before)[broken])
        return {kind: thread_ns(kind) == home[kind] for kind in home} | {
            "fds": open_fds() == before}
    intact = "uts" if broken == "net" else "net"
    assert with_holder(linux_clone.NEWNET | linux_clone.NEWUTS, body) == {
        broken: False, intact: True, "fds": True}


def test_a_failed_enter_keeps_no_fd() -> None:
    def body(pid: int) -> List[Any]:
        before = open_fds()
        errors = []
        for block in [linux_clone.entered(f"/proc/{pid}/ns/net", linux_clone.NEWUTS),
                      linux_clone.entered(pid=pid, nstype=linux_clone.NEWNS | linux_clone.NEWNET),
                      linux_clone.entered(f"/proc/{pid}/ns/mnt"),
                      linux_clone.entered(pid=dead_pid(), nstype=linux_clone.NEWNET)]:
            # A thread shares the fs: a mount namespace with other types is refused before
            # anything is kept; alone, the kernel's setns refuses it after the saving (of the
            # mount namespace, the root and the working directory).
            with pytest.raises(OSError) as info, running_threads(1):
                with block:
                    pass
            errors.append(info.value.errno)
        return [errors, open_fds() == before, thread_ns("net") != os.stat(
            f"/proc/{pid}/ns/net").st_ino]
    assert with_holder(linux_clone.NEWNET, body) == [
        [errno.EINVAL, errno.EINVAL, errno.EINVAL, errno.ESRCH], True, True]


# ---- mount namespaces: the root and working directory, and threads ----

MS_REC, MS_PRIVATE = 0x4000, 0x40000
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 1, 2


def mount(source: Optional[bytes], target: bytes, fstype: Optional[bytes], flags: int = 0) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(source, target, fstype, flags, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), target)


def drop_effective_caps(*caps: int) -> None:
    """Clear `caps` (numbers below 32) from the effective set; the rest stay."""
    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                    ("inheritable", ctypes.c_uint32)]

    libc = ctypes.CDLL(None, use_errno=True)
    header, data = Header(0x20080522, 0), (Data * 2)()  # _LINUX_CAPABILITY_VERSION_3
    assert libc.capget(ctypes.byref(header), data) == 0, ctypes.get_errno()
    for cap in caps:
        data[0].effective &= ~(1 << cap)
    assert libc.capset(ctypes.byref(header), data) == 0, ctypes.get_errno()


def mount_block(how: str, pid: int) -> linux_clone.entered:
    """entered() of `pid`'s mount namespace: its file alone, or with its UTS namespace through
    a pidfd (the kernel's other path, which copies the fs)."""
    if how == "path":
        return linux_clone.entered(f"/proc/{pid}/ns/mnt")
    return linux_clone.entered(pid=pid, nstype=linux_clone.NEWNS | linux_clone.NEWUTS)


@pytest.mark.parametrize("how", ["path", "pid"])
def test_a_mount_namespace_block_keeps_the_working_directory(
        how: str, tmp_path: pathlib.Path) -> None:
    # setns(NEWNS) moves the thread to the namespace's root, going in and coming back.
    def body(pid: int) -> List[Any]:
        home, target = thread_ns("mnt"), os.stat(f"/proc/{pid}/ns/mnt").st_ino
        os.chdir(tmp_path)
        before = open_fds()
        with mount_block(how, pid):
            inside = [os.getcwd(), thread_ns("mnt") == target]
        return inside + [os.getcwd(), thread_ns("mnt") == home, open_fds() == before]
    assert with_holder(linux_clone.NEWNS | linux_clone.NEWUTS, body) == [
        "/", True, str(tmp_path), True, True]


@pytest.mark.parametrize("how", ["path", "pid"])
def test_a_chrooted_program_stays_in_its_chroot(how: str, tmp_path: pathlib.Path) -> None:
    def body(pid: int) -> List[Any]:
        use_entered()  # the kept fd, made outside the chroot (before Linux 6.9: /proc's)
        ns = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY)
        linux_clone.unshare(linux_clone.NEWNS)
        mount(None, b"/", None, MS_REC | MS_PRIVATE)
        jail = tmp_path / "jail"
        (jail / "sub").mkdir(parents=True)
        (jail / "proc").mkdir()
        (jail / "IN_JAIL").touch()
        mount(b"proc", bytes(jail / "proc"), b"proc")  # for the count of threads
        os.chroot(jail)
        os.chdir("/sub")
        block = (linux_clone.entered(ns, linux_clone.NEWNS) if how == "path"
                 else mount_block(how, pid))
        with block:
            inside = os.path.exists("/IN_JAIL")
        return [inside, os.path.exists("/IN_JAIL"), os.getcwd()]
    assert with_holder(linux_clone.NEWNS | linux_clone.NEWUTS, body) == [False, True, "/sub"]


def test_a_mount_namespace_with_other_threads_is_refused_before_any_setns(
        tmp_path: pathlib.Path) -> None:
    # Through a pidfd with another type the kernel would let the thread in (and move every
    # thread's root and cwd), then refuse the way back.
    def body(pid: int) -> Dict[str, Any]:
        home = {kind: thread_ns(kind) for kind in ("mnt", "uts")}
        os.chdir(tmp_path)
        before = open_fds()
        pidfd = linux_clone.pidfd_open(pid)
        both = linux_clone.NEWNS | linux_clone.NEWUTS
        seen: Dict[str, Any] = {}
        path = f"/proc/{pid}/ns/mnt"
        for name, block, filename in [("pid", linux_clone.entered(pid=pid, nstype=both), None),
                                      ("pidfd", linux_clone.entered(pidfd, both), None),
                                      ("path", linux_clone.entered(path), path)]:
            ran = []
            with running_threads(1):
                with pytest.raises(OSError) as info:
                    with block:
                        ran.append(os.getcwd())
            seen[name] = [info.value.errno, info.value.filename == filename, ran]
        os.close(pidfd)
        seen["home"] = [thread_ns(kind) == home[kind] for kind in home]
        seen["cwd, fds"] = [os.getcwd(), open_fds() == before]
        return seen
    refused = [errno.EINVAL, True, []]
    assert with_holder(linux_clone.NEWNS | linux_clone.NEWUTS, body) == {
        "pid": refused, "pidfd": refused, "path": refused, "home": [True, True],
        "cwd, fds": [str(tmp_path), True]}


def test_a_replaced_namespace_fd_still_returns_to_the_kept_directories(
        tmp_path: pathlib.Path) -> None:
    def body(pid: int) -> List[Any]:
        home = thread_ns("mnt")
        os.chdir(tmp_path)
        before = open_fds()
        with pytest.raises(RuntimeError, match="still in the entered uts namespace"):
            with mount_block("pid", pid):
                os.close(fds_entered_keeps(before)["uts"])
        return [os.getcwd(), thread_ns("mnt") == home, open_fds() == before]
    assert with_holder(linux_clone.NEWNS | linux_clone.NEWUTS, body) == [
        str(tmp_path), True, True]


@pytest.mark.parametrize("which", ["root", "working directory"])
def test_a_kept_directory_fd_closed_in_the_block_is_an_error(
        which: str, tmp_path: pathlib.Path) -> None:
    # The other directory is still returned to; the closed one stays the namespace's root.
    def body(pid: int) -> List[Any]:
        home = thread_ns("mnt")
        os.chdir(tmp_path)
        before = open_fds()
        with pytest.raises(RuntimeError, match=f"thread's {which}, was closed or replaced"):
            with mount_block("path", pid):
                kept = fds_entered_keeps(before)
                os.close(kept["/" if which == "root" else str(tmp_path)])
        return [os.getcwd(), thread_ns("mnt") == home, open_fds() == before]
    cwd = str(tmp_path) if which == "root" else "/"
    assert with_holder(linux_clone.NEWNS, body) == [cwd, True, True]


def test_a_failed_return_to_the_working_directory_names_the_step(
        tmp_path: pathlib.Path) -> None:
    # Without the DAC capabilities, a directory of mode 0 cannot be the cwd (fchdir: EACCES),
    # while the setns back needs only CAP_SYS_ADMIN and CAP_SYS_CHROOT.
    def body(pid: int) -> List[Any]:
        home = thread_ns("mnt")
        locked = tmp_path / "locked"
        locked.mkdir()
        os.chdir(locked)
        before = open_fds()
        with pytest.raises(OSError) as info:
            with mount_block("path", pid):
                locked.chmod(0)
                drop_effective_caps(CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH)
        return [info.value.errno, "fchdir to the kept working directory" in str(info.value),
                thread_ns("mnt") == home, os.getcwd(), open_fds() == before]
    try:
        assert with_holder(linux_clone.NEWNS, body) == [errno.EACCES, True, True, "/", True]
    finally:
        (tmp_path / "locked").chmod(0o700)


# ---- argument checks ----

@pytest.mark.parametrize("nstype", [-1, 1, 0x100, 2**30 | 2**0, linux_clone.NEWNET | 0x2])
def test_an_invalid_nstype_is_named_as_such(nstype: int) -> None:
    with pytest.raises(ValueError, match="invalid nstype"):
        linux_clone.entered("/proc/self/ns/net", nstype)
    with pytest.raises(ValueError, match="invalid nstype"):
        linux_clone.entered(pid=os.getpid(), nstype=nstype)


def test_an_nstype_beyond_a_c_int_is_overflow() -> None:
    with pytest.raises(OverflowError):
        linux_clone.entered("/proc/self/ns/net", 2**40)


def test_a_user_namespace_bit_among_others_is_refused_as_such() -> None:
    with pytest.raises(ValueError, match="cannot be left"):
        linux_clone.entered(pid=os.getpid(), nstype=linux_clone.NEWUSER | linux_clone.NEWNET)


def test_errors_of_a_path_carry_the_path(tmp_path: pathlib.Path) -> None:
    regular = tmp_path / "regular"
    regular.write_text("not a namespace")
    with pytest.raises(OSError) as info:
        with linux_clone.entered(str(regular)):
            pass
    assert (info.value.errno, info.value.filename) == (errno.ENOTTY, str(regular))

    def wrong_type() -> Tuple[Optional[int], Any]:
        try:
            with linux_clone.entered("/proc/self/ns/net", linux_clone.NEWUTS):
                pass
        except OSError as exc:
            return exc.errno, exc.filename
        return 0, None
    assert in_child(wrong_type) == (errno.EINVAL, "/proc/self/ns/net")


def test_a_pid_is_converted_once_for_every_use() -> None:
    calls = []

    class Pid:
        def __index__(self) -> int:
            calls.append(1)
            return dead_pid() if len(calls) > 1 else os.getpid()

    def run() -> List[Any]:
        pid: Any = Pid()
        block = linux_clone.entered(pid=pid, nstype=linux_clone.NEWUTS)
        for _ in range(2):
            with block:
                pass
        return calls
    assert in_child(run) == [1]


@pytest.mark.parametrize("ns, exc_type", [
    (Fileno(ZeroDivisionError("fileno")), ZeroDivisionError), (Fileno("3"), TypeError),
    (Fileno(2**64), OverflowError), (Fileno(-1), ValueError), (2**63, OverflowError),
    (2**64, OverflowError), (-2**63 - 1, OverflowError), (-1, ValueError),
    (FsPath(ZeroDivisionError("fspath")), ZeroDivisionError), (FsPath(3), TypeError),
    (FsPath("/proc/self/ns/net\0"), ValueError),
])
def test_hostile_namespace_arguments(ns: Any, exc_type: type) -> None:
    def run() -> Tuple[type, bool, int]:
        os.dup2(os.open("/proc/self/ns/uts", os.O_RDONLY), 0)  # what a wrong fd 0 would enter
        before, home = open_fds(), thread_ns("uts")
        try:
            with linux_clone.entered(ns):
                pass
        except BaseException as exc:
            return type(exc), open_fds() == before, thread_ns("uts") == home
        return type(None), False, False
    assert in_child(run) == (exc_type, True, True)


# ---- the one fd each thread keeps for the way back ----

def use_entered() -> None:
    with linux_clone.entered("/proc/thread-self/ns/uts", linux_clone.NEWUTS):
        pass


def test_a_thread_keeps_one_close_on_exec_fd_until_it_exits() -> None:
    def run() -> Dict[str, bool]:
        start = every_fd()
        use_entered()
        kept = linux_clone._core._kept_fd()
        link = os.readlink(f"/proc/self/fd/{kept}")
        out = {"one new": set(every_fd()) - set(start) == {kept},
               "close-on-exec": bool(fcntl.fcntl(kept, fcntl.F_GETFD) & fcntl.FD_CLOEXEC),
               # Linux 6.9+: a pidfd of the thread; before, /proc/<pid>/task/<tid>/ns.
               "pidfd or ns dir": link == "anon_inode:[pidfd]" or link.endswith("/ns")}
        for _ in range(3):
            use_entered()
        out["made once"] = set(every_fd()) - set(start) == {kept}
        seen: Dict[str, int] = {}

        def other() -> None:
            use_entered()
            seen["fd"] = linux_clone._core._kept_fd()

        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
        out["another thread, another fd"] = seen["fd"] not in (-1, kept)
        # join() returns when the thread's Python part ends; its C exit (the key destructor
        # that closes the fd) comes just after.
        deadline = time.monotonic() + 10
        while seen["fd"] in every_fd() and time.monotonic() < deadline:
            time.sleep(0.01)
        out["closed when that thread exited"] = set(every_fd()) - set(start) == {kept}
        return out
    assert all(in_child(run).values())


@pytest.mark.parametrize("how", ["os.fork", "clone"])
def test_a_forked_child_goes_back_into_its_own_namespace(how: str) -> None:
    # The parent's kept pidfd names the parent's thread: a child that used its copy would
    # go back into the parent's namespace, not its own.
    def body(pid: int) -> int:
        use_entered()

        def child() -> int:
            linux_clone.unshare(linux_clone.NEWUTS)
            socket.sethostname("child-home")
            with linux_clone.entered(f"/proc/{pid}/ns/uts"):
                inside = socket.gethostname()
            return 0 if (inside, socket.gethostname()) == ("entered-target", "child-home") else 3

        if how == "clone":
            child_pid = linux_clone.clone(child)
        else:
            child_pid = os.fork()
            if child_pid == 0:
                code = 1
                try:
                    code = child()
                finally:
                    os._exit(code)
        return os.waitstatus_to_exitcode(os.waitpid(child_pid, 0)[1])
    assert with_holder(linux_clone.NEWUTS, body) == 0


def test_a_kept_fd_the_program_replaced_is_neither_used_nor_closed() -> None:
    # The number now holds a pidfd of another process, in another namespace: going back
    # through it would land there, silently.
    def body(pid: int) -> List[bool]:
        home = socket.gethostname()
        use_entered()
        kept = linux_clone._core._kept_fd()
        other = linux_clone.pidfd_open(pid)
        os.dup2(other, kept)
        os.close(other)
        with linux_clone.entered(f"/proc/{pid}/ns/uts"):
            inside = socket.gethostname()
        with open(f"/proc/self/fdinfo/{kept}") as info:
            still_theirs = f"Pid:\t{pid}\n" in info.read()
        os.close(kept)
        return [inside == "entered-target", socket.gethostname() == home, still_theirs,
                linux_clone._core._kept_fd() != kept]
    assert with_holder(linux_clone.NEWUTS, body) == [True] * 4


@pytest.mark.parametrize("era", ["pre-6.11", "pre-5.3"])
def test_older_kernels_keep_a_proc_directory_instead(era: str) -> None:
    # pre-6.11: pidfd_open(tid, PIDFD_THREAD) works, the ioctls are ENOTTY (that pidfd is
    # closed again); pre-5.3: no pidfd_open.  Either way /proc/thread-self/ns is the way back.
    def body(pid: int) -> List[bool]:
        seccomp_eras.install(seccomp_eras.ERAS[era])
        home = thread_ns("uts")
        start = every_fd()
        for _ in range(2):
            with linux_clone.entered(f"/proc/{pid}/ns/uts"):
                inside = socket.gethostname()
        kept = linux_clone._core._kept_fd()
        return [inside == "entered-target", thread_ns("uts") == home,
                set(every_fd()) - set(start) == {kept},
                os.readlink(f"/proc/self/fd/{kept}").endswith("/ns")]
    assert with_holder(linux_clone.NEWUTS, body) == [True] * 4


@pytest.mark.parametrize("child_uses_entered", [False, True])
def test_a_files_child_leaves_the_callers_kept_fd_alone(child_uses_entered: bool) -> None:
    """A clone(FILES) child shares the caller's fd table: it must neither close the fd the
    caller's thread keeps for entered() nor leave its own kept fd there when it exits."""
    def body() -> List[Any]:
        with linux_clone.entered("/proc/self/ns/net"):
            pass
        kept = linux_clone._core._kept_fd()
        twin = os.dup(kept)
        before = sorted(os.listdir("/proc/self/fd"))

        def child() -> int:
            if child_uses_entered:
                with linux_clone.entered("/proc/self/ns/net"):
                    pass
            return 0

        pid = linux_clone.clone(child, 0, linux_clone.FILES | signal.SIGCHLD)
        _, status = os.waitpid(pid, 0)
        same = linux_clone.kcmp(os.getpid(), os.getpid(), linux_clone.KCMP_FILE, kept, twin)
        after = sorted(os.listdir("/proc/self/fd"))
        os.close(twin)
        return [status, same, after == before, linux_clone._core._kept_fd() == kept]
    assert in_child(body) == [0, 0, True, True]

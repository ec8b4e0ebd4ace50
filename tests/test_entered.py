"""entered(): the calling thread moves into a namespace for a block and back, even on an
exception; nesting works, other threads keep their namespaces, no fd stays open."""

from __future__ import annotations

import errno
import os
import socket
import threading
from typing import Any, Dict, List

import pytest

import linux_clone
from conftest import in_child

pytestmark = pytest.mark.usefixtures("privileged")


def thread_ns(kind: str) -> int:
    return os.stat(f"/proc/thread-self/ns/{kind}").st_ino


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


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

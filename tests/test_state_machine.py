"""Stateful fuzzing: a hypothesis state machine nests and interleaves entered(), setns(),
unshare(), clone(), clone3() and spawn() on two threads of a worker process (a Sandbox, so
the namespaces it changes are its own) and, after every step, compares what the kernel says
with the model:

- where each thread is: /proc/<pid>/task/<tid>/ns/{net,uts} against the namespaces the
  model says (entered() blocks push and pop, setns moves, unshare makes a new one);
- which fds are open: none beyond the worker's own, the pidfds of live children, the one
  close-on-exec fd each thread that has used entered() keeps (the README's entered row),
  and the namespace fds that active entered() blocks hold (at most three each);
- which children exist: the live ones, and none that was reaped;
- a child is born in the namespaces of the thread that made it.

LINUX_CLONE_FUZZ_EXAMPLES (as for test_fuzz.py) scales the number of examples up.
"""

from __future__ import annotations

import fcntl
import functools
import os
import queue
import signal
import threading
import time
import traceback
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant, precondition,
                                 rule, run_state_machine_as_test)

import linux_clone
from conftest import Sandbox, SandboxDied, SandboxHang

LONG = int(os.environ.get("LINUX_CLONE_FUZZ_EXAMPLES", "0") or 0)
EXAMPLES = max(25, LONG // 100) if LONG else 25
STEPS = 20
STEP_TIMEOUT = 10.0
KINDS = {"net": int(linux_clone.NEWNET), "uts": int(linux_clone.NEWUTS)}
NEWPID = int(linux_clone.NEWPID)
FLAG = {**KINDS, "pid": NEWPID}
# Where a thread is, by kind: for pid, the namespace its children are born in.
THREAD_FILE = {"net": "net", "uts": "uts", "pid": "pid_for_children"}
TARGETS = ("home", "A", "B")
THREADS = (0, 1)
NS_FILE = ("net:[", "uts:[", "pid:[", "anon_inode:[pidfd]", "anon_inode:pidfd")


# ---- the worker, in the sandbox ----

class Worker:
    """Runs the machine's steps: on its main thread (0) or on a second Python thread (1)."""

    def __init__(self, kinds: List[str]) -> None:
        # Namespaces to enter: "home" (where the worker started), A and B (new ones; a pid
        # namespace's init is a child that waits for the end).
        self.kinds = kinds
        self.ns: Dict[Tuple[str, str], int] = {}
        home = {k: os.open(f"/proc/self/ns/{k}", os.O_RDONLY | os.O_CLOEXEC) for k in kinds}
        block_r, self.block_w = os.pipe()
        for target in ("A", "B"):
            linux_clone.unshare(KINDS["net"] | KINDS["uts"])
            for kind in KINDS:
                self.ns[kind, target] = os.open(f"/proc/thread-self/ns/{kind}",
                                                os.O_RDONLY | os.O_CLOEXEC)
            if "pid" in kinds:
                linux_clone.unshare(NEWPID)
                holder = os.fork()
                if holder == 0:
                    os.read(block_r, 1)
                    os._exit(0)
                self.ns["pid", target] = os.open(f"/proc/{holder}/ns/pid",
                                                 os.O_RDONLY | os.O_CLOEXEC)
            for kind, fd in home.items():
                linux_clone.setns(fd, FLAG[kind])
        os.close(block_r)
        for kind, fd in home.items():
            self.ns[kind, "home"] = fd
        self.stacks: Dict[int, List[Any]] = {0: [], 1: []}
        self.pidfds: Dict[int, int] = {}
        self.requests: "queue.Queue[Tuple[Callable[[], Any], queue.Queue[Any]]]" = queue.Queue()
        self.tids = {0: threading.get_native_id()}
        ready = threading.Event()

        def serve() -> None:
            self.tids[1] = threading.get_native_id()
            ready.set()
            while True:
                func, answer = self.requests.get()
                answer.put(self._call(func))
        threading.Thread(target=serve, daemon=True).start()
        ready.wait()

    @staticmethod
    def _call(func: Callable[[], Any]) -> Tuple[bool, Any]:
        try:
            return True, func()
        except BaseException as exc:
            return False, f"{exc!r}\n{traceback.format_exc()}"

    def on(self, thread: int, func: Callable[[], Any]) -> Tuple[bool, Any]:
        if thread == 0:
            return self._call(func)
        answer: "queue.Queue[Tuple[bool, Any]]" = queue.Queue()
        self.requests.put((func, answer))
        return answer.get()

    # -- the steps --

    def enter(self, thread: int, kind: str, target: str, form: str) -> None:
        fd = self.ns[kind, target]
        ns: Any = fd if form == "fd" else f"/proc/self/fd/{fd}"
        ent = linux_clone.entered(ns, FLAG[kind] if form == "fd" else 0)
        ent.__enter__()
        self.stacks[thread].append(ent)

    def leave(self, thread: int) -> None:
        self.stacks[thread].pop().__exit__(None, None, None)

    def setns(self, thread: int, kind: str, target: str) -> None:
        linux_clone.setns(self.ns[kind, target], FLAG[kind])

    def unshare(self, thread: int, kind: str) -> None:
        linux_clone.unshare(KINDS[kind])

    def start(self, thread: int, api: str, pidfd: bool, live: bool) -> Dict[str, Any]:
        """A child that lives until reaped (live) or exits 5 at once and is reaped here."""
        if api == "spawn":
            argv = ["sleep", "60"] if live else ["/bin/sh", "-c", "exit 5"]
            result = linux_clone.spawn(argv, pidfd=pidfd)
        else:
            func = (lambda: time.sleep(60)) if live else (lambda: 5)
            flags = int(linux_clone.PIDFD) if pidfd else 0
            if api == "clone":
                result = linux_clone.clone(func, 0, flags | signal.SIGCHLD)
            else:
                result = linux_clone.clone3(func, flags)
        pid, fd = result if isinstance(result, tuple) else (result, None)
        born = {}
        if live:
            for kind in self.kinds:
                born[kind] = os.stat(f"/proc/{pid}/ns/{kind}").st_ino
            if fd is not None:
                self.pidfds[pid] = fd
            return {"pid": pid, "ns": born}
        status = self.reap(pid, fd)
        return {"pid": pid, "status": status}

    def reap(self, pid: int, fd: Optional[int] = None) -> int:
        """The exit code of child pid (by its pidfd if it has one); bounded, an error if it
        does not end (a wrong pid may name a process that never does)."""
        fd = self.pidfds.pop(pid, fd)
        try:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                if fd is not None:
                    info = os.waitid(os.P_PIDFD, fd,  # type: ignore[attr-defined]
                                     os.WEXITED | os.WNOHANG)
                    if info is not None and info.si_pid:
                        return info.si_status if info.si_code == os.CLD_EXITED \
                            else -info.si_status
                else:
                    done, status = os.waitpid(pid, os.WNOHANG)
                    if done:
                        return os.waitstatus_to_exitcode(status)
                time.sleep(0.001)
            raise TimeoutError(f"child {pid} did not end")
        finally:
            if fd is not None:
                os.close(fd)

    def kill(self, thread: int, pid: int) -> int:
        os.kill(pid, signal.SIGKILL)
        return self.reap(pid)

    # -- what the kernel says --

    def observe(self) -> Dict[str, Any]:
        me = os.getpid()
        where = {t: {k: os.stat(f"/proc/{me}/task/{tid}/ns/{THREAD_FILE[k]}").st_ino
                     for k in self.kinds}
                 for t, tid in self.tids.items()}
        fds = {}
        for name in os.listdir("/proc/self/fd"):
            try:
                fds[int(name)] = os.readlink(f"/proc/self/fd/{name}")
            except OSError:
                pass
        kids: Set[int] = set()
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/children") as f:
                kids.update(int(pid) for pid in f.read().split())
        kept = {t: self.on(t, linux_clone._core._kept_fd)[1] for t in self.tids}
        cloexec = {t: fd >= 0 and fd in fds and bool(fcntl.fcntl(fd, fcntl.F_GETFD)
                                                     & fcntl.FD_CLOEXEC)
                   for t, fd in kept.items()}
        return {"where": where, "fds": fds, "children": kids, "kept": kept,
                "cloexec": cloexec,
                "home": {k: os.fstat(self.ns[k, "home"]).st_ino for k in self.kinds},
                "targets": {f"{k}:{t}": os.fstat(self.ns[k, t]).st_ino
                            for k in self.kinds for t in TARGETS}}


def worker_main(channel: Any, kinds: List[str]) -> None:
    worker = Worker(kinds)
    channel.send(worker.observe())
    while True:
        op, thread, args = channel.recv()
        ok, value = worker.on(thread, functools.partial(getattr(worker, op), thread, *args))
        channel.send((ok, value, worker.observe()))


# ---- the model, in the test process ----

class NamespaceMachine(RuleBasedStateMachine):
    kinds = list(KINDS)  # the kinds entered() and setns() move threads between

    def __init__(self) -> None:
        super().__init__()
        self.box: Optional[Sandbox] = None

    @initialize()
    def start_worker(self) -> None:
        self.box = Sandbox(worker_main, self.kinds)
        first = self.box.recv(STEP_TIMEOUT)
        self.targets: Dict[str, int] = first["targets"]
        self.base_fds = set(first["fds"])
        self.base_children = first["children"]  # the pid namespaces' inits
        # Per thread: where it is, by kind; its entered() stack of (kind, where it was).
        self.where = {t: dict(first["home"]) for t in THREADS}
        self.stacks: Dict[int, List[Tuple[str, int]]] = {t: [] for t in THREADS}
        self.live: Dict[int, bool] = {}  # live child pid -> has a pidfd
        self.used: Set[int] = set()  # the threads that have used entered()
        self.reaped: set = set()
        self.obs = first

    def teardown(self) -> None:
        if self.box is not None:
            self.box.close()

    def step(self, op: str, thread: int, *args: Any) -> Any:
        assert self.box is not None
        try:
            self.box.send((op, thread, args))
            ok, value, self.obs = self.box.recv(STEP_TIMEOUT)
        except (SandboxHang, SandboxDied) as exc:
            raise AssertionError(f"{op}{(thread, *args)}: {exc}") from None
        assert ok, f"{op}{(thread, *args)} raised {value}"
        return value

    # -- rules --

    @rule(data=st.data(), thread=st.sampled_from(THREADS), name=st.sampled_from(TARGETS),
          form=st.sampled_from(["fd", "path"]))
    def enter(self, data: st.DataObject, thread: int, name: str, form: str) -> None:
        kind = data.draw(st.sampled_from(self.kinds))
        self.step("enter", thread, kind, name, form)
        self.used.add(thread)
        self.stacks[thread].append((kind, self.where[thread][kind]))
        self.where[thread][kind] = self.targets[f"{kind}:{name}"]

    @precondition(lambda self: any(self.stacks.values()))
    @rule(data=st.data())
    def leave(self, data: st.DataObject) -> None:
        thread = data.draw(st.sampled_from([t for t in THREADS if self.stacks[t]]))
        self.step("leave", thread)
        kind, before = self.stacks[thread].pop()
        self.where[thread][kind] = before

    @rule(data=st.data(), thread=st.sampled_from(THREADS), name=st.sampled_from(TARGETS))
    def setns(self, data: st.DataObject, thread: int, name: str) -> None:
        kind = data.draw(st.sampled_from(self.kinds))
        self.step("setns", thread, kind, name)
        self.where[thread][kind] = self.targets[f"{kind}:{name}"]

    @rule(thread=st.sampled_from(THREADS), kind=st.sampled_from(list(KINDS)))
    def unshare(self, thread: int, kind: str) -> None:
        # Inode numbers of freed namespaces are reused: new means none the model holds.
        alive = {*self.targets.values(), *(w[k] for w in self.where.values() for k in w),
                 *(before for stack in self.stacks.values() for _, before in stack)}
        self.step("unshare", thread, kind)
        inode = self.obs["where"][thread][kind]
        assert inode not in alive, f"unshare({kind}) on thread {thread}: not a new one"
        self.where[thread][kind] = inode

    @rule(thread=st.sampled_from(THREADS), api=st.sampled_from(["clone", "clone3", "spawn"]),
          pidfd=st.booleans(), live=st.booleans())
    def start(self, thread: int, api: str, pidfd: bool, live: bool) -> None:
        if live and len(self.live) >= 4:
            live = False
        value = self.step("start", thread, api, pidfd, live)
        pid = value["pid"]
        assert pid not in self.live, f"{api} returned the pid of a live child, {pid}"
        if live:
            self.live[pid] = pidfd
            if api != "spawn":  # a spawned program is where its flags (none here) put it
                assert value["ns"] == self.where[thread], (
                    f"{api} child on thread {thread} born in {value['ns']}, "
                    f"the thread is in {self.where[thread]}")
        else:
            self.reaped.add(pid)
            assert value["status"] == 5, f"{api} child's exit status {value['status']}"

    @precondition(lambda self: bool(self.live))
    @rule(data=st.data(), thread=st.sampled_from(THREADS))
    def kill(self, data: st.DataObject, thread: int) -> None:
        pid = data.draw(st.sampled_from(sorted(self.live)))
        status = self.step("kill", thread, pid)
        assert status == -signal.SIGKILL, f"killed child {pid}: status {status}"
        del self.live[pid]
        self.reaped.add(pid)

    # -- invariants --

    @invariant()
    def threads_are_where_the_model_says(self) -> None:
        if self.box is None:
            return
        for thread in THREADS:
            seen = self.obs["where"][thread]
            assert seen == self.where[thread], (
                f"thread {thread} is in {seen}, the model says {self.where[thread]}")

    @invariant()
    def no_fd_beyond_the_model(self) -> None:
        if self.box is None:
            return
        kept = self.obs["kept"]
        for thread in THREADS:
            if thread in self.used:
                assert kept[thread] in self.obs["fds"] and self.obs["cloexec"][thread], (
                    f"thread {thread} used entered(): its kept fd {kept[thread]} is not an "
                    f"open close-on-exec fd")
            else:
                assert kept[thread] == -1, f"thread {thread} keeps fd {kept[thread]} unused"
        extra = {fd: what for fd, what in self.obs["fds"].items()
                 if fd not in self.base_fds and fd not in kept.values()}
        pidfds = sum(self.live.values())
        active = sum(len(stack) for stack in self.stacks.values())
        unknown = {fd: what for fd, what in extra.items() if not what.startswith(NS_FILE)}
        assert not unknown, f"fds the model does not know: {unknown}"
        assert len(extra) <= pidfds + 3 * active, (
            f"{len(extra)} fds beyond the worker's own, the model allows {pidfds} pidfds + "
            f"{active} active entered(): {extra}")

    @invariant()
    def children_are_the_live_ones(self) -> None:
        if self.box is None:
            return
        assert self.obs["children"] == set(self.live) | self.base_children, (
            f"children {sorted(self.obs['children'])}, live {sorted(self.live)} "
            f"(reaped: {sorted(self.reaped)})")


class PidNamespaceMachine(NamespaceMachine):
    kinds = [*KINDS, "pid"]


SETTINGS = settings(max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None,
                    database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def test_namespace_state_machine(privileged: None) -> None:
    run_state_machine_as_test(NamespaceMachine, settings=SETTINGS)


def test_namespace_state_machine_with_pid(privileged: None) -> None:
    # entered()/setns() into pid namespaces too: children are born where the thread's
    # pid_for_children says, and clone() returns their pid in the caller's namespace.
    run_state_machine_as_test(PidNamespaceMachine, settings=SETTINGS)

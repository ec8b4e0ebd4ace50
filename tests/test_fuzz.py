"""Bad input, fuzzed: hypothesis drives every public function of linux_clone with hostile
arguments; each case runs in a forked child, so a crash is seen as a signal and the runner's
namespaces never change.

The cases go to fuzz_server.py, a small interpreter in its own mount (private), network,
UTS and IPC namespaces whose forked case processes make the calls.  A case passes when the
call returns or raises TypeError, ValueError, OverflowError, OSError with an errno, or the
ArgError that our hostile arguments raise.  A signal, a hang, any other exception, or a clone
child killed by a signal fails it, and hypothesis shrinks the input it reports.

LINUX_CLONE_FUZZ_EXAMPLES=20000 selects the long profile: that many examples in total,
shared among the functions (default: the bounded profile, 5,000).
"""

from __future__ import annotations

import errno
import faulthandler
import operator
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import linux_clone
from conftest import Fileno, FsPath, fd_count, in_child, python_env
from fuzz_server import (CHILD_FUNCS, FIXTURE_FDS, FIXTURE_OBJECTS, FIXTURE_PATHS, NS_NAMES,
                         ArgError, BadMapping, BadSequence, Index, MyInt, MyStr, Ref)

FUNCTIONS = ["unshare", "setns", "pivot_root", "kcmp", "configure_loopback", "ns_get_userns",
             "ns_get_parent", "ns_get_nstype", "ns_get_owner_uid", "pidfd_open", "entered",
             "clone", "clone3", "spawn"]
# Shares of the total: a clone or spawn case costs another child.
WEIGHT = {"clone": 0.8, "clone3": 0.8, "spawn": 0.8, "configure_loopback": 0.3}
LONG = int(os.environ.get("LINUX_CLONE_FUZZ_EXAMPLES", "0") or 0)
PROFILE = "linux_clone-long" if LONG else "linux_clone-bounded"
CASE_TIMEOUT = 10.0  # seconds; every call here returns within milliseconds

settings.register_profile(
    "linux_clone-bounded", max_examples=5000, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.filter_too_much])
settings.register_profile("linux_clone-long", parent=settings.get_profile("linux_clone-bounded"),
                          max_examples=LONG or 20000)
TOTAL = settings.get_profile(PROFILE).max_examples

MIN_STACK = 32768  # threading.stack_size's minimum; below it a Python child may overflow

BOUNDARY_INTS = [0, 1, -1, 2, 255, 256, 2**31 - 1, 2**31, -2**31, -2**31 - 1, 2**32 - 1, 2**32,
                 2**63 - 1, 2**63, -2**63, -2**63 - 1, 2**64 - 1, 2**64, 2**100, -2**100]
FLAG_BITS = sorted({int(m) for m in linux_clone.CloneFlag.__members__.values()})
NS_TYPES = [int(linux_clone.CloneFlag[n]) for n in
            ("NEWNS", "NEWNET", "NEWUTS", "NEWIPC", "NEWUSER", "NEWPID", "NEWCGROUP", "NEWTIME")]
PATHS = [*(f"/proc/self/ns/{ns}" for ns in NS_NAMES), "/proc/thread-self/ns/mnt",
         b"/proc/self/ns/ipc", "/proc/self/ns/pid_for_children",
         "/proc/self/ns/time_for_children", "/nonexistent", "", "/", ".", "..", "/dev/null",
         "/etc/passwd", "/proc/self/ns", "/sys/fs/cgroup", "a\0b", b"\0", "/proc/self/ns/net\0",
         "\udcff", "\ud800", "x" * 5000, "/" * 4097, *map(Ref, FIXTURE_PATHS)]
# Programs spawn() may run: harmless ones, or none at all.
PROGRAMS = ["/bin/true", "true", b"/bin/true", FsPath("/bin/true"), "/bin/false",
            "/nonexistent/prog", "nonexistent-prog-fuzz", "", "/", "/etc/passwd", "/dev/null",
            "/tmp", "/bin/true\0x", b"\0", "\udcff", None, 5, FsPath(None),
            FsPath(ArgError("__fspath__"))]


# ---- strategies ----

def ints() -> st.SearchStrategy:
    return st.one_of(st.integers(), st.sampled_from(BOUNDARY_INTS), st.integers(-2**70, 2**70),
                     st.booleans())


def scalars() -> st.SearchStrategy:
    return st.one_of(
        ints(), st.none(), st.floats(), st.text(max_size=20), st.binary(max_size=20),
        st.sampled_from([object(), [], (), {}, set(), 1j, "\0", b"\0"]),
        st.builds(MyInt, ints()), st.builds(MyStr, st.text(max_size=8)),
        st.builds(Index, st.one_of(ints(), st.none(), st.text(max_size=3)), st.booleans()))


fds = st.sampled_from(FIXTURE_FDS).map(Ref)
objects = st.sampled_from(FIXTURE_OBJECTS).map(Ref)
fileno_values = st.one_of(fds, st.sampled_from([-1, -2, 2**31, 2**40, 2**64, "3", b"3", None,
                                                1.0, [], True]), st.builds(Index, ints()))
# Anything: numbers of every size and sign, strings and bytes with NULs, fds of every kind,
# objects whose fileno(), __fspath__ or __index__ raise or return nonsense.
hostile = st.one_of(
    scalars(), fds, objects, st.sampled_from(PATHS),
    st.builds(Fileno, fileno_values | st.builds(ArgError, st.just("fileno"))),
    st.builds(FsPath, st.one_of(st.sampled_from(PATHS), scalars(),
                                st.builds(ArgError, st.just("__fspath__")))))


def flags(signal_byte: bool = False) -> st.SearchStrategy:
    """Flag words: combinations of known bits, with unknown bits, with an exit signal."""
    combos = st.lists(st.sampled_from(FLAG_BITS), max_size=5).map(lambda bits: sum(set(bits)))
    unknown = st.integers(34, 63).map(lambda bit: 1 << bit)
    words = st.one_of(
        combos, st.builds(operator.or_, combos, unknown),
        st.builds(operator.or_, combos, st.integers(0, 70)) if signal_byte else combos,
        st.integers(0, 2**64 - 1), st.sampled_from(NS_TYPES).map(linux_clone.CloneFlag))
    return st.one_of(words, words, words, hostile)


def id_maps() -> st.SearchStrategy:
    line = st.tuples(ints(), ints(), ints())
    return st.one_of(
        st.none(), st.sampled_from(["0 0 1", "0 0 4294967295", "0 65534 1\n1 0 1", "", "0 0",
                                    "a b c", "0 0 0", "-1 0 1"]),
        st.lists(line, max_size=3), st.lists(st.lists(hostile, max_size=4), max_size=2),
        st.text(max_size=12), hostile)


ns = st.one_of(fds, st.sampled_from(PATHS), hostile)
nstype = st.one_of(st.sampled_from([0, *NS_TYPES]), st.sampled_from([0, *NS_TYPES]), flags())
paths = st.one_of(st.sampled_from(PATHS), st.text(max_size=30), st.binary(max_size=30), hostile)
# Pids of the case's own family and of no process: kcmp and pidfd_open take any, but
# entered(pid=) must not enter the namespaces of another process on the host.
own_pids = st.sampled_from(["pid:self", "pid:parent"]).map(Ref)
safe_pids = st.one_of(own_pids, st.sampled_from([0, -1, -2**31, 2**31 - 1, 2**31, 2**63,
                                                 4194305]), scalars())
any_pids = st.one_of(own_pids, ints(), hostile)
stack_sizes = st.one_of(st.sampled_from([0, 0, 0, MIN_STACK, 65536, 1 << 20, 1 << 40, 2**62]),
                        st.integers(-2**64, -1), st.integers(2**63, 2**65), hostile)


def call(name: str, *args: st.SearchStrategy, **kwargs: st.SearchStrategy) -> st.SearchStrategy:
    """(name, args, kwargs) with each argument drawn from its strategy; optional=kwargs."""
    return st.tuples(st.just(name), st.tuples(*args),
                     st.fixed_dictionaries({}, optional=kwargs))


def _as_index(value: Any) -> int:
    """The int the library will see for `value`, as far as the test can tell; 0 if none."""
    if isinstance(value, Ref):
        return 1  # an fd number: small
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Index(True): __index__ returned a bool
            return operator.index(value)
    except Exception:
        return 0


# Exit signals the kernel would send to the case's own process when a clone child ends, as
# the caller asked: SIGKILL and SIGSTOP cannot be ignored there, nor can Python ignore
# glibc's 32 and 33.  The case process ignores every other signal.
FATAL_EXIT_SIGNALS = {signal.SIGKILL, signal.SIGSTOP, 32, 33}


def _steer(case: Tuple[str, tuple, dict]) -> Tuple[str, tuple, dict]:
    """Keep a case off exit signals that would end its own process."""
    name, args, kwargs = case
    if name == "clone" and len(args) > 2 and isinstance(args[2], Ref):
        args = (*args[:2], signal.SIGCHLD)  # an fd number as flags: maybe SIGKILL
    if name == "clone3" and isinstance(kwargs.get("exit_signal"), Ref):
        kwargs = dict(kwargs, exit_signal=signal.SIGCHLD)
    if name == "clone" and len(args) > 2 and _as_index(args[2]) & 0x7F in FATAL_EXIT_SIGNALS:
        args = (*args[:2], _as_index(args[2]) & ~0x7F | signal.SIGCHLD)
    if name == "clone3" and _as_index(kwargs.get("exit_signal", 0)) in FATAL_EXIT_SIGNALS:
        kwargs = dict(kwargs, exit_signal=signal.SIGCHLD)
    return name, args, kwargs


def cases(name: str) -> st.SearchStrategy:
    if name == "unshare":
        return call(name, flags())
    if name == "setns":
        return st.one_of(call(name, ns), call(name, ns, nstype))
    if name == "pivot_root":
        return call(name, paths, paths)
    if name == "kcmp":
        idx = st.one_of(fds, ints(), hostile)
        idx2 = st.one_of(idx, st.tuples(idx, idx, idx), st.tuples(idx), st.tuples(*[idx] * 4))
        return st.one_of(call(name, any_pids, any_pids, st.integers(-1, 9), idx, idx2),
                         call(name, any_pids, any_pids, hostile, idx, idx2),
                         call(name, any_pids, any_pids, st.integers(0, 8)))
    if name == "configure_loopback":
        return st.one_of(call(name), st.lists(hostile, min_size=1, max_size=2).map(
            lambda a: (name, tuple(a), {})))
    if name.startswith("ns_get_"):
        return call(name, ns)
    if name == "pidfd_open":
        return st.one_of(call(name, any_pids),
                         call(name, any_pids, st.one_of(st.just(os.O_NONBLOCK), flags())))
    if name == "entered":
        return st.one_of(call(name, ns, nstype=nstype), call(name, pid=safe_pids, nstype=nstype),
                         call(name, ns, pid=safe_pids), call(name))
    func = st.one_of(st.sampled_from(CHILD_FUNCS), st.sampled_from([None, 0, "f", object()]))
    maps = dict(uid_map=id_maps(), gid_map=id_maps(),
                setgroups=st.one_of(st.sampled_from([None, "allow", "deny", "x", b"deny"]),
                                    hostile))
    if name == "clone":
        return st.one_of(call(name, func, stack_sizes, flags(signal_byte=True), **maps),
                         call(name, func), call(name, func, stack_sizes))
    if name == "clone3":
        set_tid = st.one_of(st.lists(st.one_of(st.integers(0, 2**22), hostile), max_size=34),
                            hostile)
        return call(name, func, flags=flags(), exit_signal=st.one_of(st.integers(-1, 70), hostile),
                    stack_size=stack_sizes, cgroup=paths, set_tid=set_tid, **maps)
    if name == "spawn":
        arg = st.one_of(st.text(max_size=10), st.binary(max_size=10), hostile)
        argv = st.one_of(
            st.tuples(st.sampled_from(PROGRAMS), st.lists(arg, max_size=3)).map(
                lambda t: [t[0], *t[1]]),
            st.sampled_from(PROGRAMS).map(lambda p: (p,)),
            st.builds(BadSequence, st.sampled_from(PROGRAMS).map(lambda p: [p]),
                      st.sampled_from([None, 0, 1, 2, 2**40])),
            st.sampled_from([[], "/bin/true", b"/bin/true", None, 0, {}]))
        key = st.one_of(st.text(max_size=10), st.binary(max_size=10), ints(), st.none(),
                        st.builds(FsPath, st.text(max_size=5)))
        env = st.one_of(st.none(), st.dictionaries(key, arg, max_size=3),
                        st.just(BadMapping({"a": "b"})), st.just({"PATH": "/nonexistent"}),
                        st.just({"A=B": "c"}), st.just({"": "c"}))
        return call(name, argv, flags=flags(), env=env, cwd=paths, uid_map=id_maps(),
                    gid_map=id_maps(),
                    hostname=st.one_of(st.text(max_size=70), st.binary(max_size=70), hostile),
                    loopback=st.one_of(st.booleans(), hostile),
                    pidfd=st.one_of(st.booleans(), hostile))
    raise AssertionError(name)


# ---- the runner in its own namespaces ----

class Server:
    """fuzz_server.py in a child interpreter: one pickled call in, one answer out."""

    def __init__(self) -> None:
        code = ("import sys; sys.path.insert(0, %r); import fuzz_server; "
                "fuzz_server.serve(%r)" % (str(Path(__file__).parent), CASE_TIMEOUT))
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=python_env(), cwd="/")
        self.cases = 0
        self.outcomes: Dict[str, int] = {}

    def run(self, case: Tuple[str, tuple, dict]) -> Dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        data = pickle.dumps(case)
        self.proc.stdin.write(struct.pack("<I", len(data)) + data)
        self.proc.stdin.flush()
        if not select.select([self.proc.stdout], [], [], 2 * CASE_TIMEOUT + 20)[0]:
            raise AssertionError(f"the fuzz server does not answer, case {case!r}")
        header = self.proc.stdout.read(4)
        if len(header) < 4:
            raise AssertionError(f"the fuzz server died ({self.proc.wait()}), case {case!r}")
        self.cases += 1
        return pickle.loads(self.proc.stdout.read(struct.unpack("<I", header)[0]))

    def close(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        try:
            assert self.proc.wait(30) == 0
        finally:
            # SUMMARY keeps the server to the end of the run: an open stdout was an unclosed
            # file warned about at interpreter shutdown, one per fuzzed function (shown when
            # the run's last warning came from a pytest.warns block, whose "always" filter
            # the interpreter still holds at shutdown).
            self.proc.stdout.close()


def _signame(status: Optional[int]) -> str:
    if status is None:
        return "no crash"
    if os.WIFSIGNALED(status):
        try:
            return signal.Signals(os.WTERMSIG(status)).name
        except ValueError:
            return f"signal {os.WTERMSIG(status)}"
    return f"exit {os.WEXITSTATUS(status)}"


def check(server: Server, case: Tuple[str, tuple, dict]) -> None:
    """Run one case and fail on a crash, a hang, a disallowed exception or a clone child
    that died of a signal other than our SIGKILL."""
    answer = server.run(case)
    assert "hung" not in answer, f"hang: no answer in {CASE_TIMEOUT} s from {case!r}"
    assert "crashed" not in answer, (
        f"crash: {_signame(answer['crashed'])} from {case!r}; run alone in a new process: "
        f"{_signame(answer['alone'])}; the cases before it in that process: "
        f"{answer['history']!r}")
    kind, type_name, err, problem, children = answer["report"]
    key = f"{kind} {type_name}" + (f" {errno.errorcode.get(err, err)}" if err else "")
    server.outcomes[key] = server.outcomes.get(key, 0) + 1
    assert problem is None, f"disallowed exception {problem} from {case!r}"
    for child in children:
        assert not (os.WIFSIGNALED(child) and os.WTERMSIG(child) != signal.SIGKILL), (
            f"a child of the call died of {_signame(child)} from {case!r}")


SUMMARY: Dict[str, Server] = {}


@pytest.fixture(scope="module", autouse=True)
def _report_cases(request: pytest.FixtureRequest) -> Iterator[None]:
    """Print how many cases ran, as one line under the test results."""
    yield
    if SUMMARY:
        total = sum(s.cases for s in SUMMARY.values())
        line = (f"test_fuzz ({PROFILE}): {total} cases, " +
                ", ".join(f"{n} {s.cases}" for n, s in SUMMARY.items()))
        if os.environ.get("LINUX_CLONE_FUZZ_VERBOSE"):
            line += "".join(f"\n  {n}: {dict(sorted(s.outcomes.items()))}"
                            for n, s in SUMMARY.items())
        reporter = request.config.pluginmanager.get_plugin("terminalreporter")
        capture = request.config.pluginmanager.get_plugin("capturemanager")
        if reporter is not None and capture is not None:
            with capture.global_and_fixture_disabled():
                reporter.write_line("\n" + line)


@pytest.fixture
def server(privileged: None) -> Iterator[Server]:
    s = Server()
    yield s
    s.close()


@pytest.mark.parametrize("name", FUNCTIONS)
def test_fuzz(name: str, server: Server) -> None:
    share = WEIGHT.get(name, 1.0) / sum(WEIGHT.get(n, 1.0) for n in FUNCTIONS)
    examples = max(20, round(TOTAL * share))
    SUMMARY[name] = server

    @settings(settings.get_profile(PROFILE), max_examples=examples)
    @given(cases(name).map(_steer))
    def fuzz(case: Tuple[str, tuple, dict]) -> None:
        check(server, case)

    fuzz()
    # Hypothesis stops early only when it has exhausted a strategy; these are unbounded.
    assert server.cases >= examples, server.outcomes


@pytest.mark.parametrize("selftest, message", [
    ("selftest_segv", "crash: SIGSEGV"),
    ("selftest_key_error", "disallowed exception KeyError"),
    ("selftest_child_segv", "a child of the call died of SIGSEGV")])
def test_runner_reports_each_failure(server: Server, selftest: str, message: str) -> None:
    with pytest.raises(AssertionError, match=message):
        check(server, (selftest, (), {}))
    check(server, ("configure_loopback", (), {}))  # and goes on with the next case


def test_a_closed_server_leaves_no_fd_open(privileged: None) -> None:
    # SUMMARY keeps every server to the end of the run, where an open pipe end was a
    # ResourceWarning printed at interpreter shutdown.
    before = fd_count()
    server = Server()
    check(server, ("configure_loopback", (), {}))
    server.close()
    assert fd_count() == before


# ---- the known bugs, one reproduction each ----

def _returns_within(func: Any, seconds: int) -> Any:
    """Call func in a child with an alarm: a hang becomes a failed test, not a stuck run."""
    def run() -> Any:
        signal.alarm(seconds)
        try:
            return func()
        finally:
            signal.alarm(0)
    return in_child(run)


def test_clone_vfork_with_maps_is_refused(privileged: None) -> None:
    # The parent sleeps in vfork while the child would wait for its maps: refused up front.
    def clone_vfork() -> str:
        try:
            linux_clone.clone(lambda: 0, flags=linux_clone.VFORK | linux_clone.NEWUSER
                              | signal.SIGCHLD, uid_map="0 0 1")
        except ValueError as exc:
            return str(exc)
        return "started"
    assert "VFORK" in _returns_within(clone_vfork, 5)


def test_tiny_stack_is_refused_or_works() -> None:
    def tiny() -> int:
        faulthandler.disable()  # pytest's, inherited: the crash is the expected failure
        try:
            pid = linux_clone.clone(lambda: 1 / 0, stack_size=4096)
        except ValueError:
            return 0
        return os.waitpid(pid, 0)[1] & 0x7F  # the signal that ended the child, if any
    assert in_child(tiny) == 0


def test_spawn_env_list_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        linux_clone.spawn(["/bin/true"], env=[])  # type: ignore[arg-type]


def test_spawn_argv_dict_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        linux_clone.spawn({"/bin/true": 1})  # type: ignore[arg-type]


@pytest.mark.parametrize("call", ["clone", "spawn"])
def test_flag_bits_above_31_are_refused(call: str) -> None:
    def start() -> Any:
        flags = linux_clone.CLEAR_SIGHAND | (1 << 40)
        try:
            if call == "clone":
                pid = linux_clone.clone(lambda: 0, flags=flags | signal.SIGCHLD)
            else:
                pid = linux_clone.spawn(["/bin/true"], flags=flags)
        except (OSError, ValueError, OverflowError) as exc:
            return type(exc).__name__
        os.waitpid(pid, 0)  # type: ignore[arg-type]
        return pid
    assert isinstance(in_child(start), str)

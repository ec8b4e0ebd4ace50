"""The benchmark: `python -m linux_clone.bench --quick --json` runs and reports every row, and
the raw C loops of linux_clone._bench return plausible times.  Nothing here asserts a speed."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from collections import Counter
from importlib import metadata
from typing import Any, Dict, List, Tuple

import pytest

import linux_clone
from conftest import in_child, main_as_nobody, python_env

_bench = pytest.importorskip("linux_clone._bench")
from linux_clone import bench  # noqa: E402  (after the skip: it imports _bench)
from linux_clone.bench import harness  # noqa: E402
from linux_clone.bench import rows as bench_rows  # noqa: E402


def _run_quick(*args: str) -> subprocess.CompletedProcess:
    # From / so that a source checkout in the working directory cannot shadow the package.
    return subprocess.run([sys.executable, "-m", "linux_clone.bench", "--quick", *args],
                          capture_output=True, text=True, timeout=120, cwd="/",
                          env=python_env())


@pytest.fixture(scope="module")
def quick_report() -> Dict[str, Any]:
    result = _run_quick("--json")
    assert result.returncode == 0, result.stderr
    assert f"[{len(bench.ROWS)}/{len(bench.ROWS)}]" in result.stderr  # progress: stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


# The JSON a user may have scripts for (and the README's table is made from): its keys stay.
REPORT_KEYS = {"benchmark", "versions", "machine", "settings", "rows", "seconds",
               "loadavg_end"}
SETTINGS_KEYS = {"quick", "repetitions", "proc_repetitions", "loop_ns"}
MACHINE_KEYS = {"kernel", "arch", "cpu", "cpus", "loadavg", "clocksource", "python", "libc", "euid"}
ROW_KEYS = {"id", "operation", "unit", "notes", "calls_per_loop", "repetitions", "results",
            "skipped", "targets"}
RESULT_KEYS = {"what", "ns", "ns_min", "ratio", "samples"}
TARGET_KEYS = {"implementation", "target", "kind", "limit", "compared_with", "value", "met",
               "not_here"}
# Columns every machine measures (the others need Python 3.12, lxns, pyroute2, ip or unshare).
ALWAYS = {
    "setns": {"raw C", "cimport", "linux_clone", "ctypes"},
    "unshare": {"raw C", "cimport", "linux_clone", "ctypes"},
    "kcmp": {"raw C", "cimport", "linux_clone", "ctypes"},
    "ns_get_nstype": {"raw C", "cimport", "linux_clone", "fcntl", "ctypes"},
    "ns_get_owner_uid": {"raw C", "cimport", "linux_clone", "fcntl", "ctypes"},
    "entered": {"raw C", "cimport", "/proc in C", "linux_clone"},
    "entered_threads": {"raw C", "linux_clone", "2 threads", "2 threads C"},
    "fork": {"raw C", "linux_clone", "os"},
    "clone": {"raw C", "linux_clone", "os"},
    "spawn": {"raw C", "linux_clone", "os"},
    "spawn_pipe": {"raw C", "linux_clone"},
    "setup": {"raw C", "linux_clone", "spawn", "os"},
    "configure_loopback": {"raw C", "cimport", "linux_clone", "fcntl"},
    "startup": {"raw C", "import", "linux_clone"},
    "getpid": {"raw C", "os", "ctypes"},
}
# The rows that create a process or a namespace per call: one call per loop.
SINGLE = {"fork", "clone", "spawn", "spawn_pipe", "setup", "configure_loopback", "startup"}


def test_quick_json_has_every_row(privileged: None, quick_report: Dict[str, Any]) -> None:
    assert set(quick_report) == REPORT_KEYS
    assert quick_report["benchmark"] == "linux_clone.bench"
    settings = quick_report["settings"]
    assert set(settings) == SETTINGS_KEYS and settings["quick"] is True
    assert set(quick_report["machine"]) == MACHINE_KEYS
    assert quick_report["versions"]["linux_clone"] == metadata.version("linux_clone")
    rows = {row["id"]: row for row in quick_report["rows"]}
    assert list(rows) == [row.key for row in bench.ROWS] == list(ALWAYS)
    for key, row in rows.items():
        assert "skipped_row" not in row and "error" not in row, row
        assert set(row) == ROW_KEYS, key
        results = row["results"]
        assert ALWAYS[key] <= set(results) <= set(bench.COLUMNS), (key, list(results))
        assert not set(results) & set(row["skipped"]), key
        assert all(why for why in row["skipped"].values()), key
        assert row["repetitions"] == settings["proc_repetitions" if key in SINGLE
                                              else "repetitions"], key
        assert (row["calls_per_loop"] == 1) == (key in SINGLE), key
        for name, result in results.items():
            assert set(result) == RESULT_KEYS and result["what"], (key, name)
            assert len(result["samples"]) == row["repetitions"], (key, name)
        for target in row["targets"]:
            assert set(target) == TARGET_KEYS, key
        assert "raw C" in results and ("linux_clone" in results or key == "getpid"), key
        for name, result in results.items():
            assert result["ns"] > 0 and result["ratio"] > 0, (key, name, result)
            assert all(sample > 0 for sample in result["samples"]), (key, name)
        for target in row["targets"]:
            # A difference ("over": import - python -c pass) is within the noise of 0.
            assert target["value"] is not None, (key, target)
            assert target["value"] > 0 or target["kind"] == "over", (key, target)
            # Judged unless the goal is not for this build (2 threads with the GIL).
            assert isinstance(target["met"], bool) == (not target["not_here"]), (key, target)
    assert "cimport" in rows["setns"]["results"]
    assert "os" in rows["clone"]["results"]
    machine = quick_report["machine"]
    assert machine["kernel"] == os.uname().release
    assert sys.version.split()[0] in machine["python"]
    # A free-threaded build says so, and whether the GIL stayed off (the threads row's goal).
    assert ("free-threaded" in machine["python"]) == bench_rows.free_threaded() or (
        sysconfig.get_config_var("Py_GIL_DISABLED") and "GIL on" in machine["python"])


def test_quick_table_and_cleanup(privileged: None) -> None:
    netns_before = sorted(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else []
    with open("/proc/self/mounts") as f:
        mounts_before = f.read()
    result = _run_quick()
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = [line for line in lines if line.startswith("| operation |")]
    assert header and header[0].startswith("| operation | raw C | cimport | linux_clone |")
    assert header[0].endswith("| target | met |")
    assert sum(line.startswith("| ") for line in lines) == 1 + len(bench.ROWS)
    operations = [line.split(" | ")[0][2:] for line in lines if line.startswith("| ")][1:]
    assert operations == [row.title for row in bench.ROWS]
    assert f"Linux {os.uname().release}" in result.stdout
    method = [line for line in lines if line.startswith("- method: ")]
    assert method and "over 9 interleaved repetitions (5 single calls" in method[0]
    after = sorted(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else []
    assert after == netns_before
    with open("/proc/self/mounts") as f:
        assert f.read() == mounts_before


def test_without_cap_sys_admin_it_says_what_it_skipped(privileged: None) -> None:
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("needs setpriv(1) to drop CAP_SYS_ADMIN")
    result = subprocess.run([setpriv, "--bounding-set=-sys_admin", "--inh-caps=-sys_admin",
                             sys.executable, "-m", "linux_clone.bench", "--quick", "--json"],
                            capture_output=True, text=True, timeout=120, cwd="/",
                            env=python_env())
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    rows = {row["id"]: row for row in json.loads(result.stdout)["rows"]}
    for row in bench.ROWS:
        if row.privileged:
            assert "CAP_SYS_ADMIN" in rows[row.key]["skipped_row"], rows[row.key]
            assert "skipped" in result.stderr
        else:
            assert rows[row.key]["results"]["raw C"]["ns"] > 0


def _main_as_nobody(*args: str) -> Tuple[int, str, str]:
    """bench.main(args) as uid/gid 65534: (status, stdout, stderr)."""
    # What the stdlib imports on first use (importlib.metadata's _adapters on 3.13), loaded
    # here while it can be: an interpreter under /root is out of uid 65534's reach.
    harness.versions()
    return main_as_nobody(bench.main, args, timeout=120)


def test_unprivileged_user_gets_skips_not_tracebacks(privileged: None) -> None:
    status, stdout, stderr = _main_as_nobody("--quick", "--json")
    assert status == 0, stderr
    assert "Traceback" not in stderr, stderr
    rows = {row["id"]: row for row in json.loads(stdout)["rows"]}
    for row in bench.ROWS:
        if row.privileged:
            why = rows[row.key]["skipped_row"]
            assert why.startswith("needs CAP_SYS_ADMIN") and "as uid 65534" in why, why
            assert f"{row.title}: skipped, {why}" in stderr
        else:
            assert rows[row.key]["results"]["linux_clone" if row.key != "getpid" else "os"]


def test_a_raw_c_loop_the_kernel_refuses_skips_the_row() -> None:
    def refused(n: int) -> int:
        raise PermissionError(errno.EPERM, os.strerror(errno.EPERM))

    def works(n: int) -> int:
        return n

    settings = bench.QUICK
    with pytest.raises(harness.Skip, match="raw C loop fails here: Operation not permitted"):
        harness.measure({"raw C": harness.Impl("refused", refused),
                         "linux_clone": harness.Impl("works", works)}, settings)
    # The same failure of linux_clone's own loop is a failure, not a skip.
    with pytest.raises(PermissionError):
        harness.measure({"raw C": harness.Impl("works", works),
                         "linux_clone": harness.Impl("refused", refused)}, settings)


@pytest.mark.parametrize("columns", [2, 3, 4, 5])
def test_each_column_follows_each_other_equally_often(columns: int) -> None:
    # What a column leaves behind (a netns the kernel still tears down) slows the next one:
    # no column may always come after the same one.
    calls: List[str] = []

    def column(name: str) -> harness.Impl:
        def loop(n: int) -> int:
            calls.append(name)
            return n
        return harness.Impl(name, loop)

    names = ["raw C", *(f"c{i}" for i in range(1, columns))]
    rounds = 2 * columns * 3
    settings = harness.Settings(repetitions=rounds, loop_ns=1.0, proc_repetitions=rounds)
    harness.measure({name: column(name) for name in names}, settings, single=True)
    timed = calls[columns:]  # after one warm-up call each
    pairs = Counter((a, b) for start in range(0, len(timed), columns)
                    for a, b in zip(timed[start:start + columns - 1],
                                    timed[start + 1:start + columns]))
    assert len(pairs) == columns * (columns - 1) and len(set(pairs.values())) == 1, pairs
    assert Counter(timed[::columns]) == Counter({name: rounds // columns for name in names})


def test_plot_without_matplotlib_is_a_clear_error() -> None:
    code = ("import sys; sys.modules['matplotlib'] = None; "
            "from linux_clone.bench import main; main(['--quick', '--plot', '/dev/null'])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, cwd="/", env=python_env())
    assert result.returncode == 2
    assert "--plot needs matplotlib" in result.stderr


def test_c_loops_unprivileged() -> None:
    pid, n = os.getpid(), 1000
    fd = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    user = os.open("/proc/self/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    try:
        for elapsed in (_bench.getpid_raw(n), _bench.clock_pair(n),
                        _bench.kcmp_raw(pid, pid, linux_clone.KCMP_VM, n),
                        _bench.kcmp_cimport(pid, pid, linux_clone.KCMP_VM, n),
                        _bench.ns_ioctl_raw(fd, linux_clone.NS_GET_NSTYPE, n),
                        _bench.ns_ioctl_cimport(fd, linux_clone.NS_GET_NSTYPE, n),
                        _bench.owner_uid_raw(user, n), _bench.owner_uid_cimport(user, n)):
            assert 0 < elapsed / n < 1e6  # a syscall takes more than 0 and less than 1 ms
        with pytest.raises(OSError):
            _bench.ns_ioctl_raw(-1, linux_clone.NS_GET_NSTYPE, 1)
    finally:
        os.close(fd)
        os.close(user)


def test_c_loops_privileged(privileged: None) -> None:
    def child() -> Dict[str, float]:
        here = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        linux_clone.unshare(linux_clone.NEWNET)
        there = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        linux_clone.setns(here, linux_clone.NEWNET)
        net = int(linux_clone.NEWNET)
        times = {
            "setns_raw": _bench.setns_raw(here, there, net, 100) / 100,
            "setns_cimport": _bench.setns_cimport(here, there, net, 100) / 100,
            "entered_c": _bench.entered_c(there, net, b"/proc/thread-self/ns/net", 100) / 100,
            "entered_steps": _bench.entered_steps(there, net, 100) / 100,
            "clone_reap": _bench.clone_reap(int(linux_clone.NEWUTS), 3) / 3,
            "spawn_reap": _bench.spawn_reap(net, b"/bin/true", 3) / 3,
            "spawn_pipe_reap": _bench.spawn_pipe_reap(net, b"/bin/echo", b"x", 3) / 3,
            "setup_reap": _bench.setup_reap(int(bench_rows.SETUP_FLAGS), b"bench", 3) / 3,
        }
        assert os.stat("/proc/thread-self/ns/net").st_ino == os.fstat(here).st_ino
        times["unshare_raw"] = _bench.unshare_raw(int(linux_clone.NEWUTS), 100) / 100
        times["unshare_cimport"] = _bench.unshare_cimport(int(linux_clone.NEWUTS), 100) / 100
        times["loopback_raw"] = _bench.loopback_fresh(False, 2) / 2
        times["loopback_cimport"] = _bench.loopback_fresh(True, 2) / 2
        return times

    times = in_child(child)
    for name, per_call in times.items():
        assert 0 < per_call < 1e9, (name, per_call)  # more than 0, less than a second
    # A process costs more than a syscall: the loops did what they say.
    assert times["clone_reap"] > times["setns_raw"] / 2


def test_spawn_reap_reports_a_failed_program(privileged: None) -> None:
    with pytest.raises(OSError):
        in_child(lambda: _bench.spawn_reap(0, b"/bin/false", 1))


def test_spawn_pipe_reap_reports_a_failed_program(privileged: None) -> None:
    with pytest.raises(OSError) as info:
        in_child(lambda: _bench.spawn_pipe_reap(0, b"/bin/false", b"x", 1))
    assert info.value.errno == errno.ECHILD


def test_spawn_loops_exec_with_the_process_environment(tmp_path: Any) -> None:
    # As spawn(env=None) and subprocess pass it: the baseline's execve copies the same
    # environment.  The program exits 0 only if it got what os.environ holds.
    script = tmp_path / "check-env"
    script.write_text('#!/bin/sh\ntest "$LC_BENCH_ENV" = passed\n')
    script.chmod(0o755)
    path = os.fsencode(script)

    def child() -> Tuple[int, int]:
        os.environ["LC_BENCH_ENV"] = "passed"
        return _bench.spawn_reap(0, path, 1), _bench.spawn_pipe_reap(0, path, b"x", 1)

    assert all(elapsed > 0 for elapsed in in_child(child))


def test_setup_reap_reports_a_failed_child(privileged: None) -> None:
    # A hostname longer than the kernel's 64 bytes: sethostname fails in the child.
    with pytest.raises(OSError) as info:
        in_child(lambda: _bench.setup_reap(int(bench_rows.SETUP_FLAGS), b"x" * 65, 1))
    assert info.value.errno == errno.ECHILD


# The goals of issue "Speed" (round 2): (implementation, kind, limit, compared with) per row.
GOALS = {
    "setns": [("linux_clone", "ratio", 1.12, "raw C")],
    "kcmp": [("linux_clone", "ratio", 1.15, "raw C")],
    "ns_get_nstype": [("linux_clone", "ratio", 1.25, "raw C")],
    "entered": [("linux_clone", "ratio", 2.0 if bench_rows.pidfd_ioctls() else 4.5, "raw C")],
    "entered_threads": [("2 threads", "speedup", 1.8, "linux_clone")],
    "fork": [("linux_clone", "vs", 1.02, "os")],
    "clone": [("linux_clone", "vs", 1.0, "os")],
    "spawn": [("linux_clone", "ratio", 1.05, "raw C")],
    "startup": [("linux_clone", "ratio", 1.3, "raw C"), ("import", "over", 5e6, "raw C")],
}


def test_the_target_column_is_the_issues_goals() -> None:
    for row in bench.ROWS:
        goals = [(t.impl, t.kind, t.limit, t.other_key) for t in row.targets]
        assert goals == GOALS.get(row.key, []), row.key


def test_targets_follow_the_kernel_and_the_build() -> None:
    rows = {row.key: row for row in bench.ROWS}
    entered = rows["entered"].targets[0]
    assert entered.limit == (2.0 if bench_rows.pidfd_ioctls() else 4.5)
    threads = rows["entered_threads"].targets[0]
    # With the GIL the 2-thread ratio is measured but not judged.
    assert bool(threads.not_here) != bench_rows.free_threaded()
    assert threads.met(1.9) is (True if bench_rows.free_threaded() else None)
    assert ("not a free-threaded build" in rows["entered_threads"].notes) != (
        bench_rows.free_threaded())


def test_markdown_is_the_readmes_block(quick_report: Dict[str, Any]) -> None:
    lines = bench.markdown(quick_report).splitlines()
    assert [line.split(":")[0] for line in lines[:3]] == ["- machine", "- python", "- method"]
    assert "load average" in lines[0] and "at the end" in lines[0]
    assert lines[3] == ""
    assert lines[4].startswith("| operation | raw C |") and lines[4].endswith("| target | met |")
    assert set(lines[5]) == set("|-") and lines[5].count("|") == lines[4].count("|")
    body = lines[6:]
    assert [line.split(" | ")[0][2:] for line in body] == [row.title for row in bench.ROWS]
    assert all(line.count("|") == lines[4].count("|") for line in body)
    title = next(row.title for row in bench.ROWS if row.key == "setup")
    setup = next(line for line in body if line.startswith(f"| {title} |"))
    assert "/s" in setup  # children per second
    # The README's own block has the same shape: the lead pastes the output over it.
    with open(os.path.join(os.path.dirname(__file__), "..", "README.md")) as f:
        readme = f.read()
    assert "\n- machine: Linux " in readme and "\n| operation | raw C |" in readme


def test_markdown_and_json_exclude_each_other() -> None:
    result = subprocess.run([sys.executable, "-m", "linux_clone.bench", "--json", "--markdown"],
                            capture_output=True, text=True, timeout=60, cwd="/",
                            env=python_env())
    assert result.returncode == 2
    assert "not allowed with argument" in result.stderr


def test_startup_runs_write_and_read_the_bytecode_cache(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")  # as this project's machines set it
    code = "import sys; print(sys.flags.dont_write_bytecode)"
    started = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=60, env=bench_rows.startup_env())
    assert started.stdout.strip() == "0"

"""python -m linux_clone, run as a user runs it: a new interpreter, pipes, no PYTHONUNBUFFERED."""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import Any, List

import pytest

from conftest import drop_privileges, in_child, main_as_nobody, python_env, run_program

NS_FILES = {"net": "net", "uts": "uts", "ipc": "ipc", "mount": "mnt", "pid": "pid",
            "user": "user", "cgroup": "cgroup", "time": "time"}


def cli(*args: str, **kwargs: Any) -> subprocess.CompletedProcess:
    # cwd="/": `python -m` puts the working directory first on sys.path, and the source
    # tree's linux_clone (no compiled _core) must not shadow the installed one.
    kwargs.setdefault("timeout", 60)
    return subprocess.run([sys.executable, "-m", "linux_clone", *args], capture_output=True,
                          text=True, env=python_env(), cwd="/", **kwargs)


def links(ip_o_link: str) -> List[tuple]:
    """(name, flags) of each line of `ip -o link`."""
    return re.findall(r"^\d+: ([^:@]+)[^:]*: <([^>]*)>", ip_o_link, re.M)


def test_net_loopback_shows_only_lo_up(privileged: None) -> None:
    result = cli("--net", "--loopback", "--", "ip", "-o", "link")
    assert result.returncode == 0, result.stderr
    [(name, flags)] = links(result.stdout)
    assert name == "lo" and "UP" in flags.split(","), result.stdout


def test_readme_first_example(privileged: None) -> None:
    result = cli("--net", "--loopback", "--", "ip", "addr")
    assert result.returncode == 0, result.stderr
    assert re.findall(r"^\d+: (\S+):", result.stdout, re.M) == ["lo"], result.stdout
    assert ",UP," in result.stdout.splitlines()[0]
    assert "inet 127.0.0.1/8" in result.stdout


def test_net_alone_leaves_lo_down(privileged: None) -> None:
    result = cli("--net", "--", "ip", "-o", "link")
    assert result.returncode == 0, result.stderr
    [(name, flags)] = links(result.stdout)
    assert name == "lo" and "UP" not in flags.split(","), result.stdout


def test_hostname_stays_in_the_new_uts_namespace(privileged: None) -> None:
    before = socket.gethostname()
    result = cli("--hostname", "cli-test-host", "--", "hostname")
    assert (result.returncode, result.stdout) == (0, "cli-test-host\n"), result.stderr
    assert socket.gethostname() == before


def test_pid_mount_proc_is_pid_1(privileged: None) -> None:
    result = cli("--fork", "--pid", "--mount-proc", "--", "sh", "-c", "echo $$ /proc/[0-9]*")
    assert (result.returncode, result.stdout) == (0, "1 /proc/1\n"), result.stderr


@pytest.mark.parametrize("option", sorted(NS_FILES))
def test_each_option_makes_a_new_namespace(privileged: None, option: str) -> None:
    path = f"/proc/self/ns/{NS_FILES[option]}"
    result = cli("--fork", f"--{option}", "--", "readlink", path)
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"\w+:\[\d+\]\n", result.stdout), result.stdout
    assert result.stdout.strip() != os.readlink(path)


def test_mount_does_not_propagate_back(privileged: None, tmp_path: Any) -> None:
    """Under a shared mount (as systemd makes /), a mount made by COMMAND stays in its own
    namespace."""
    shared, inner = tmp_path / "shared", tmp_path / "shared" / "inner"

    def run() -> tuple:
        import linux_clone
        linux_clone.unshare(linux_clone.NEWNS)
        subprocess.run(["mount", "--make-rprivate", "/"], check=True)
        shared.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "none", str(shared)], check=True)
        subprocess.run(["mount", "--make-shared", str(shared)], check=True)
        inner.mkdir()
        result = cli("--mount", "--", "sh", "-c",
                     f"mount -t tmpfs none {inner} && grep -c ' {inner} ' /proc/self/mountinfo")
        with open("/proc/self/mountinfo") as f:
            here = f.read()
        return result.returncode, result.stdout, result.stderr, f" {inner} " in here

    returncode, stdout, stderr, leaked = in_child(run)
    assert (returncode, stdout) == (0, "1\n"), stderr
    assert not leaked


def test_map_root_user_is_root_inside(privileged: None) -> None:
    result = cli("--map-root-user", "--", "sh", "-c", "id -u; id -g; cat /proc/self/uid_map")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0", "0", "0", "0", "1"]


def cli_as_nobody(*args: str) -> tuple:
    """The CLI's main(args) as uid/gid 65534: (status, stdout, stderr)."""
    from linux_clone.__main__ import main

    return main_as_nobody(main, args)


def test_map_root_user_works_unprivileged(privileged: None) -> None:
    status, stdout, stderr = cli_as_nobody(
        "--fork", "--map-root-user", "--net", "--loopback", "--", "sh", "-c",
        "id -u; cat /proc/self/uid_map /proc/self/gid_map /proc/self/setgroups")
    assert status == 0, stderr
    assert stdout.split() == ["0", "0", "65534", "1", "0", "65534", "1", "deny"]


def test_unprivileged_without_user_namespace_fails_cleanly(privileged: None) -> None:
    assert cli_as_nobody("--fork", "--net", "--", "true") == (
        1, "", "linux_clone: unshare failed: Operation not permitted\n")


@pytest.mark.parametrize("script, status", [("exit 0", 0), ("exit 7", 7), ("exit 255", 255),
                                            ("kill -9 $$", -9), ("kill -TERM $$", -15)])
def test_exit_status_passes_through(script: str, status: int) -> None:
    """As unshare --fork: COMMAND's exit status, or death by the signal that killed it."""
    assert cli("--fork", "--", "sh", "-c", script).returncode == status


def test_status_read_even_when_sigchld_is_ignored() -> None:
    """An inherited SIG_IGN for SIGCHLD would let the kernel reap COMMAND unseen."""
    result = cli("--fork", "--", "sh", "-c", "exit 7",
                 preexec_fn=lambda: signal.signal(signal.SIGCHLD, signal.SIG_IGN))
    assert result.returncode == 7, result.stderr


def test_missing_command() -> None:
    result = cli("--", "no-such-command")
    assert (result.returncode, result.stdout) == (127, "")
    assert result.stderr == (
        "linux_clone: failed to execute no-such-command: No such file or directory\n")


def test_command_not_executable(tmp_path: Any) -> None:
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o644)
    result = cli("--", str(script))
    assert result.returncode == 126
    assert result.stderr == f"linux_clone: failed to execute {script}: Permission denied\n"


def test_setup_failure_is_reported(privileged: None) -> None:
    result = cli("--hostname", "x" * 100, "--", "true")
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == "linux_clone: cannot set the hostname: Invalid argument\n"


def test_arguments_after_double_dash_belong_to_command() -> None:
    result = cli("--", "sh", "-c", 'echo "$@"', "sh", "--net", "--", "-x")
    assert (result.returncode, result.stdout) == (0, "--net -- -x\n"), result.stderr


def test_interrupt_is_for_the_command() -> None:
    """As with system(): ^C and ^\\ sent to linux_clone alone do not stop it waiting; sent to
    the whole process group (as a terminal sends them) they kill COMMAND, and the status says
    so."""
    def default_signals() -> None:
        # As a terminal's foreground job has them: a suite started in the background by a
        # script (`cmd &`, nohup) ignores ^C and ^\, and COMMAND rightly inherits that.
        for signum in (signal.SIGINT, signal.SIGQUIT):
            signal.signal(signum, signal.SIG_DFL)

    def start(script: str) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-m", "linux_clone", "-f", "--", "sh", "-c",
                                 script],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                env=python_env(), cwd="/", start_new_session=True,
                                preexec_fn=default_signals)
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        return proc

    # COMMAND waits for its stdin to close, after the signals have reached linux_clone.
    with start("echo ready; read line; exit 3") as proc:
        proc.send_signal(signal.SIGINT)
        proc.send_signal(signal.SIGQUIT)
        proc.stdin.close()  # type: ignore[union-attr]
        assert proc.wait(timeout=60) == 3

    with start("echo ready; exec sleep 60") as proc:
        try:
            os.killpg(proc.pid, signal.SIGINT)
            assert proc.wait(timeout=30) == -signal.SIGINT
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            raise


def signal_state(*argv: str, ignored: tuple = ()) -> List[tuple]:
    """SigIgn and SigBlk of `cat /proc/self/status` run by argv from a plain process (default
    signals, as a shell starts it, but `ignored` set to SIG_IGN)."""
    def preexec() -> None:
        for signum in ignored:
            signal.signal(signum, signal.SIG_IGN)

    result = subprocess.run([*argv, "cat", "/proc/self/status"], capture_output=True, text=True,
                            env=python_env(), cwd="/", timeout=60, restore_signals=True,
                            preexec_fn=preexec)
    assert result.returncode == 0, result.stderr
    return re.findall(r"^(SigIgn|SigBlk):\s*(\w+)$", result.stdout, re.M)


@pytest.fixture
def util_linux_unshare() -> None:
    """Skip a comparison with unshare(1) where util-linux is missing, or newer than the 2.38
    the CLI follows (2.39+ changed messages, options and their abbreviations: Debian forky's
    2.42 is no reference for the drop-in)."""
    if shutil.which("unshare") is None:
        pytest.skip("util-linux unshare is not installed")
    if UNSHARE_VERSION and tuple(map(int, UNSHARE_VERSION.split(".")[:2])) > (2, 38):
        pytest.skip(f"compares with util-linux 2.38's unshare(1), which the CLI follows; "
                    f"this one is util-linux {UNSHARE_VERSION}")


def _unshare_version() -> str:
    """util-linux's version of the unshare(1) here ("" where there is none)."""
    try:
        out = subprocess.run(["unshare", "--version"], capture_output=True, text=True,
                             timeout=60).stdout
    except FileNotFoundError:
        return ""
    found = re.search(r"util-linux (\d+(?:\.\d+)+)", out)
    return found[1] if found else ""


# What the CLI follows is util-linux 2.38's unshare: its --map-users/--map-groups/--map-auto
# (and their names in --ma's ambiguity), --fork's command given the SIGINT, SIGQUIT and SIGTERM
# dispositions unshare found (2.36's are ignored), and --mount-proc=DIR (2.36's fails, EINVAL).
# An older unshare(1), as Debian bullseye's 2.36, is no reference for those.
UNSHARE_VERSION = _unshare_version()
UTIL_LINUX_238 = pytest.mark.skipif(
    bool(UNSHARE_VERSION) and tuple(map(int, UNSHARE_VERSION.split(".")[:2])) < (2, 38),
    reason=f"compares with util-linux 2.38's unshare(1); this one is util-linux "
    f"{UNSHARE_VERSION}")


# As a non-interactive shell starts `command &`: SIGINT and SIGQUIT ignored, for good.
@pytest.mark.parametrize("ignored", [(), (signal.SIGINT, signal.SIGQUIT)])
@pytest.mark.parametrize("fork", [pytest.param(["--fork"], marks=UTIL_LINUX_238), []])
def test_command_signals_are_as_under_unshare(util_linux_unshare: None, ignored: tuple,
                                              fork: List[str]) -> None:
    """Python's SIG_IGN for SIGPIPE and SIGXFSZ (`yes | head -1` would say "Broken pipe") and
    what we block while waiting are not for the command: it gets what unshare(1) gives it."""
    ours = signal_state(sys.executable, "-m", "linux_clone", *fork, "--", ignored=ignored)
    assert ours == signal_state("unshare", *fork, "--", ignored=ignored)
    assert [name for name, _ in ours] == ["SigBlk", "SigIgn"]


def signal_held(pid: int, signum: int) -> bool:
    """Whether signum waits, blocked, in process pid, or was ignored (so is gone for good)."""
    with open(f"/proc/{pid}/status") as f:
        status = dict(line.split(":\t", 1) for line in f.read().splitlines())
    pending, blocked, ignored = (int(status[field], 16) >> (signum - 1) & 1 for field in (
        "ShdPnd", "SigBlk", "SigIgn"))
    return bool(pending and blocked or ignored)


def parent_pid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP,
                                    signal.SIGQUIT])
def test_command_never_outlives_the_wait(signum: int) -> None:
    """As under unshare --fork: SIGTERM (or ^C, a hang-up, ^\\) sent to linux_clone alone
    does not end its wait; COMMAND stays its child, and its status is linux_clone's."""
    with subprocess.Popen(  # its exit closes the pipes (else a ResourceWarning) and waits
            [sys.executable, "-m", "linux_clone", "-f", "--", "sh", "-c",
             "echo $$; read line; exit 5"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=python_env(),
            cwd="/", start_new_session=True) as proc:
        try:
            assert proc.stdin is not None and proc.stdout is not None
            command = int(proc.stdout.readline())
            proc.send_signal(signum)
            while proc.poll() is None and not signal_held(proc.pid, signum):
                time.sleep(0.01)
            assert proc.poll() is None, f"linux_clone ended with {proc.returncode}"
            assert parent_pid(command) == proc.pid
            proc.stdin.close()
            assert proc.wait(timeout=60) == 5
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # COMMAND too, were it left behind


# ---- a drop-in for util-linux 2.38 unshare(1): the same command line, the same outcome ----

def both(*args: str, **kwargs: Any) -> List[tuple]:
    """(exit status, stdout, stderr) of `unshare ARGS` and of `python -m linux_clone ARGS`,
    unshare's name in its messages replaced by ours."""
    kwargs = {"capture_output": True, "text": True, "env": python_env(), "cwd": "/",
              "timeout": 60, **kwargs}
    theirs = subprocess.run(["unshare", *args], **kwargs)
    ours = subprocess.run([sys.executable, "-m", "linux_clone", *args], **kwargs)
    stderr = theirs.stderr.replace("unshare: ", "linux_clone: ").replace(
        "'unshare --help'", "'python -m linux_clone --help'")
    pids = re.compile(r"/proc/\d+/")
    return [(theirs.returncode, theirs.stdout, pids.sub("/proc/PID/", stderr)),
            (ours.returncode, ours.stdout, pids.sub("/proc/PID/", ours.stderr))]


@pytest.mark.parametrize("args", [
    ["--bogus"], ["--bogus=1"], ["-x"], ["-fx"], ["--setuid"], ["-fS"], ["--fork=1"],
    pytest.param(["--ma"], marks=UTIL_LINUX_238), pytest.param(["--ma=1"], marks=UTIL_LINUX_238),
    ["--kill-child=9"], ["--kill-child=FOO"], ["--kill-child=RTMIN"],
    ["--setuid=abc"], ["--setuid=99999999999999999999"], ["--setgid=1x"], ["--monotonic=5"],
    ["--monotonic=abc"], ["--propagation=x"], ["--setgroups=x"], ["--map-user=no-such-user"],
    ["--map-group=no-such-group"], ["-r", "--setgroups=allow"], ["-w", "/no/such/dir"],
    ["-R", "/no/such/dir"], pytest.param(["--mount-p=/no/such/dir"], marks=UTIL_LINUX_238),
    ["--net=/no/such/file"],
])
def test_bad_command_lines_as_unshare(util_linux_unshare: None, privileged: None,
                                      args: List[str]) -> None:
    theirs, ours = both(*args, "true")
    assert theirs[0] != 0
    assert ours == theirs


@pytest.mark.parametrize("args", [["-V"], ["--version"], ["-h"], ["--help"], ["--he"]])
def test_help_and_version(util_linux_unshare: None, args: List[str]) -> None:
    theirs, ours = both(*args, "true")
    assert (ours[0], ours[2]) == (theirs[0], theirs[2]) == (0, "")
    first = ours[1].strip().splitlines()[0]
    assert first.startswith("linux_clone from linux_clone ") if "V" in args[0] or "v" in args[0] \
        else first == "Usage:"


def test_start_up_imports_only_what_it_needs(privileged: None) -> None:
    """Start-up time: the CLI makes no enum (CloneFlag, signal's) and imports neither typing,
    argparse nor anything the options given do not need."""
    import linux_clone
    site = os.path.dirname(os.path.dirname(linux_clone.__file__))
    result = run_program("lean_cli", site, options=["-I", "-S"], text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    made, *imported = result.stdout.split()
    assert "linux_clone._core" in imported, imported
    heavy = {"argparse", "ctypes", "enum", "importlib.metadata", "signal", "socket",
             "threading", "typing"}
    assert (made, heavy.intersection(imported)) == ("False", set()), imported


@pytest.mark.parametrize("fork", [[], ["-f"]])
@pytest.mark.parametrize("args", [
    ["-r"], ["-c"], ["--map-user=1000", "--map-group=100"], ["--map-user=nobody"],
    ["--map-group=nogroup", "-U"], ["-U", "--setgroups=deny"], ["-U", "--setgroups=allow"],
    ["-r", "-S", "0", "-G", "0"], ["--map-root-user", "--setgroups=deny"],
])
def test_ids_as_unshare(util_linux_unshare: None, privileged: None, fork: List[str],
                        args: List[str]) -> None:
    """The same ids and maps, or the same failure (-r denies setgroups: -G then fails)."""
    theirs, ours = both(*fork, *args, "sh", "-c", "id; cat /proc/self/uid_map "
                        "/proc/self/gid_map /proc/self/setgroups")
    assert ours == theirs


def test_setuid_setgid_as_unshare(util_linux_unshare: None, privileged: None) -> None:
    theirs, ours = both("-S", "65534", "-G", "65534", "sh", "-c",
                        "id; grep Groups /proc/self/status")
    assert theirs[0] == 0, theirs
    assert ours == theirs


def propagation(mountinfo: str) -> List[tuple]:
    """(mount point, fs type, propagation fields without peer group numbers) of each line."""
    found = []
    for line in mountinfo.splitlines():
        if line.startswith("pid "):
            found.append(line)
            continue
        fields, _, after = line.partition(" - ")
        fields = fields.split()
        found.append((fields[4], after.split()[0], re.sub(r":\d+", "", " ".join(fields[6:]))))
    return found


@pytest.mark.parametrize("args", [
    ["-m"], ["-m", "--propagation=slave"], ["-m", "--propagation=shared"],
    ["-m", "--propagation=private"], ["-m", "--propagation=unchanged"],
    ["--propagation=shared"], ["-fpm", "--mount-proc"],
    ["-fpm", "--mount-proc", "--propagation=slave"],
])
def test_propagation_as_unshare(util_linux_unshare: None, privileged: None,
                                args: List[str]) -> None:
    """The propagation of each mount the command sees (its mountinfo's optional fields, peer
    group numbers left out), and /proc's, as under unshare(1)."""
    theirs, ours = both(*args, "sh", "-c",
                        "cat /proc/self/mountinfo; if [ $$ = 1 ]; then echo pid 1; fi")
    assert theirs[0] == 0, theirs
    assert propagation(ours[1]) == propagation(theirs[1])
    assert ours[::2] == theirs[::2]


@pytest.mark.parametrize("args", [["-w", "/tmp"], ["--wd=/usr"], ["-R", "/", "-w", "/etc"],
                                  ["--root=/"], ["--root=/usr"], ["-R", "/usr", "-w", "/lib"]])
def test_root_and_wd_as_unshare(util_linux_unshare: None, privileged: None,
                                args: List[str]) -> None:
    theirs, ours = both(*args, "/bin/sh", "-c", "pwd; ls -d /*/ | head -3")
    assert theirs[0] == 0, theirs
    assert ours == theirs


@pytest.mark.parametrize("args", [["-T"], ["-T", "--monotonic=-5", "--boottime", "100"],
                                  ["-fT", "--monotonic", "3600"], ["-T", "--boottime=-1"]])
def test_time_offsets_as_unshare(util_linux_unshare: None, privileged: None,
                                 args: List[str]) -> None:
    theirs, ours = both(*args, "cat", "/proc/self/timens_offsets")
    assert theirs[0] == 0, theirs
    assert ours == theirs


def test_pid_without_fork_is_for_children(util_linux_unshare: None, privileged: None) -> None:
    """As unshare -p without -f: the command stays where it was; its first child is pid 1."""
    theirs, ours = both("-p", "sh", "-c", "sh -c 'echo $$'; test $$ != 1 && echo outside")
    assert ours == theirs == (0, "1\noutside\n", "")


def test_keep_caps_as_unshare(util_linux_unshare: None, privileged: None) -> None:
    theirs, ours = both("-r", "--keep-caps", "sh", "-c", "exec grep ^Cap /proc/self/status")
    assert theirs[0] == 0, theirs
    assert ours == theirs


def test_shell_without_a_command(util_linux_unshare: None) -> None:
    """As unshare(1): $SHELL, as a login shell (argv[0] "-sh"), reading stdin."""
    env = python_env(SHELL="/bin/sh")
    theirs, ours = both(input="echo $0; exit 4\n", env=env)
    assert theirs == (4, "-sh\n", "")
    assert ours == theirs


@pytest.mark.parametrize("option, kind", [
    ("--net", "net"), ("--uts", "uts"), ("--ipc", "ipc"), ("--cgroup", "cgroup"),
    ("-m --user", "user"), ("--mount", "mnt"), ("-f --pid", "pid"), ("-f --time", "time")])
def test_namespace_file_outlives_the_command(util_linux_unshare: None, privileged: None,
                                            tmp_path: Any, option: str, kind: str) -> None:
    """--net=FILE (...) bind-mounts the namespace on FILE, where nsenter joins it once the
    command and linux_clone have exited (in a mount namespace of the test's, so the bind
    mount goes with it).  A pid namespace without processes takes no new ones: nsenter -F
    enters it for children to come, without forking."""
    *fork, name = option.split()
    target = tmp_path / "ns"

    def run(program: List[str]) -> List[str]:
        import linux_clone
        # Seen on Linux 6.18: now and then binding the new mount namespace's file fails with
        # EINVAL (unshare(1)'s too), as if it were older than ours (the kernel's loop check
        # compares namespace sequence numbers); never yet with every process on one CPU.
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        linux_clone.unshare(linux_clone.NEWNS)
        subprocess.run(["mount", "--make-rprivate", "/"], check=True)
        target.touch()
        inside = subprocess.run([*program, *fork, f"{name}={target}", "readlink",
                                 f"/proc/self/ns/{kind}"], capture_output=True, text=True,
                                env=python_env(), cwd="/", timeout=60)
        joined = subprocess.run(
            # An unmapped user namespace: no uid 0 to become in it.
            ["nsenter", "-F", "--preserve-credentials", f"--{NS_OPTION[kind]}={target}",
             "readlink",
             "/proc/self/ns/" + ("pid_for_children" if kind == "pid" else kind)],
            capture_output=True, text=True, timeout=60)
        return [inside.stdout + inside.stderr, joined.stdout + joined.stderr]

    inside, joined = in_child(run, [sys.executable, "-m", "linux_clone"])
    assert re.fullmatch(rf"{kind}:\[\d+\]\n", inside) and inside != os.readlink(
        f"/proc/self/ns/{kind}") + "\n", inside
    assert joined == inside
    theirs = in_child(run, ["unshare"])
    assert theirs[0] == theirs[1]


NS_OPTION = {"net": "net", "uts": "uts", "ipc": "ipc", "cgroup": "cgroup", "user": "user",
             "mnt": "mount", "pid": "pid", "time": "time"}


def test_mount_proc_elsewhere_as_unshare(util_linux_unshare: None, privileged: None,
                                         tmp_path: Any) -> None:
    theirs, ours = both("-fp", f"--mount-proc={tmp_path}", "sh", "-c",
                        f"cd {tmp_path} && echo [0-9]*; grep -c ' {tmp_path} ' "
                        "/proc/self/mountinfo")
    assert ours == (0, "1\n1\n", "")
    if UTIL_LINUX_238.args[0]:
        pytest.skip(UTIL_LINUX_238.kwargs["reason"])
    assert theirs == ours


def process_state(pid: int) -> str:
    """The state letter of /proc/<pid>/stat ("" when the process is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):  # ESRCH: reaped between open and read
        return ""


@pytest.mark.parametrize("options, survives", [
    ([], True), (["--kill-child"], False), (["--kill-child=SIGTERM"], False)])
def test_sigkill_of_linux_clone(options: List[str], survives: bool) -> None:
    """SIGKILL cannot be blocked: COMMAND lives on, reparented -- unless --kill-child."""
    with subprocess.Popen(  # its exit closes the pipe (else a ResourceWarning) and waits
            [sys.executable, "-m", "linux_clone", "-f", *options, "--", "sh", "-c",
             "echo $$; exec sleep 60"],
            stdout=subprocess.PIPE, text=True, env=python_env(), cwd="/",
            start_new_session=True) as proc:
        try:
            assert proc.stdout is not None
            command = int(proc.stdout.readline())
            proc.kill()
            assert proc.wait(timeout=60) == -signal.SIGKILL
            if survives:
                assert process_state(command) not in ("", "Z")
                assert parent_pid(command) != proc.pid
            else:
                while process_state(command) not in ("", "Z"):
                    time.sleep(0.01)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.parametrize("args", [
    ["--map-users=auto"], ["--map-auto"], ["--map-users=1,,3"], ["--map-users=1,2,3,"],
    ["--map-users="], ["--map-groups=1,2"], ["--map-users=1,2,3,4"], ["--map-groups=x,2,3"],
])
@UTIL_LINUX_238
def test_bad_id_ranges_as_unshare(util_linux_unshare: None, args: List[str]) -> None:
    theirs, ours = both(*args, "true")
    assert theirs[0] != 0
    assert ours == theirs


@pytest.mark.parametrize("args", [
    ["--map-users=100000,0,65536"], ["--map-groups=100000,0,65536"],
    ["--map-users=100000,0,65536", "--map-groups=200000,0,1000"],
    ["-r", "--map-users=1000,0,10", "--map-groups=1000,0,10"],
    ["--map-user=5", "--map-users=0,0,100"], ["--map-group=50", "--map-groups=10,20,100"],
    ["-c", "--map-users=0,0,3"],
])
@UTIL_LINUX_238
def test_id_ranges_go_to_newuidmap_as_under_unshare(util_linux_unshare: None,
                                                     privileged: None, tmp_path: Any,
                                                     args: List[str]) -> None:
    """The same newuidmap/newgidmap command lines (stand-ins that print them here: shadow's
    are not needed, nor installed on every test machine), the maps left unwritten."""
    for name in ("newuidmap", "newgidmap"):
        program = tmp_path / name
        # "1": the pid given is of the process that runs "... true" (ours or unshare).
        program.write_text(f'#!/bin/sh\necho "{name} $(grep -c true /proc/$1/cmdline) '
                           f'${{*#* }}" >&2\n')
        program.chmod(0o755)
    env = python_env(PATH=f"{tmp_path}:{os.environ['PATH']}")
    theirs, ours = both(*args, "true", env=env)
    assert theirs[0] == 0 and theirs[2], theirs
    assert all(line.split()[1] == "1" for line in theirs[2].splitlines()), theirs
    assert (ours[0], sorted(ours[2].splitlines())) == (theirs[0], sorted(theirs[2].splitlines()))


# ---- main() called in-process leaves its caller as it was ----

STATE_SIGNALS = ("SIGCHLD", "SIGPIPE", "SIGXFSZ", "SIGINT", "SIGTERM", "SIGQUIT", "SIGHUP",
                 "SIGALRM")


def caller_state() -> dict:
    """What main() could change in the process that calls it."""
    try:
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        children = True
    except ChildProcessError:
        children = False
    return {"handlers": [signal.getsignal(getattr(signal, name)) for name in STATE_SIGNALS],
            "mask": signal.pthread_sigmask(signal.SIG_BLOCK, []), "cwd": os.getcwd(),
            "fds": sorted(os.listdir("/proc/self/fd")), "children": children}


def main_in_process(args: List[str], nobody: bool = False, alarm: float = 0) -> tuple:
    """main(args) in a forked child that set a SIGCHLD handler, blocked SIGUSR1 and is in
    /tmp: (what main returned or the type it raised, the caller state it changed)."""
    from linux_clone.__main__ import main

    def alarmed(signum: int, frame: Any) -> None:
        raise RuntimeError("alarm")

    def run() -> tuple:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        os.close(devnull)
        os.chdir("/tmp")
        if nobody:
            drop_privileges()
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        signal.signal(signal.SIGALRM, alarmed)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
        before = caller_state()
        signal.setitimer(signal.ITIMER_REAL, alarm)
        try:
            outcome: Any = main(list(args))
        except BaseException as exc:
            outcome = type(exc).__name__
        signal.setitimer(signal.ITIMER_REAL, 0)
        after = caller_state()
        return outcome, {key: (before[key], after[key]) for key in before
                         if before[key] != after[key]}

    return in_child(run)


@pytest.mark.parametrize("args, outcome", [
    (["--fork", "--", "true"], 0),
    (["--fork", "--", "/no/such/program"], 127),
    (["--", "/no/such/program"], 127),
    (["--wd", "/", "--", "/no/such/program"], 127),
    (["--fork", "--wd", "/no/such/dir", "--", "true"], 1),
    (["--version"], "SystemExit"),
    (["--bogus"], 1),
])
def test_main_in_process_restores_the_caller(args: List[str], outcome: Any) -> None:
    assert main_in_process(args) == (outcome, {})


def test_main_in_process_restores_the_caller_after_an_exception() -> None:
    # The caller's SIGALRM handler raises while main() waits for COMMAND.
    assert main_in_process(["--fork", "--", "sleep", "60"], alarm=0.5) == ("RuntimeError", {})


def test_main_in_process_reaps_a_forked_child_after_a_failure(privileged: None) -> None:
    # The bind mount of --net=FILE fails once COMMAND is forked.
    assert main_in_process(["--mount", "--net=/no/such/dir/file", "--fork", "--", "sleep",
                            "60"]) == (1, {})


def test_main_in_process_reaps_its_helpers_after_a_failure(privileged: None) -> None:
    # The binder helper is started, then the unshare fails (EPERM).
    assert main_in_process(["--mount", "--net=/tmp/file", "--fork", "--", "true"],
                           nobody=True) == (1, {})


# ---- an outside probe's findings ----

def both_with(redirect: str, *args: str) -> List[tuple]:
    """(exit status, stderr) of `unshare ARGS` and `python -m linux_clone ARGS`, each run by
    sh with `redirect` (such as 1>&-, fd 1 closed when it starts)."""
    results = []
    for argv in (["unshare"], [sys.executable, "-m", "linux_clone"]):
        result = subprocess.run(["sh", "-c", f'"$@" {redirect}', "sh", *argv, *args],
                                capture_output=True, text=True, env=python_env(), cwd="/",
                                timeout=60)
        results.append((result.returncode, result.stderr.replace("unshare:", "linux_clone:")))
    return results


@pytest.mark.parametrize("redirect, args", [
    (">&-", ["-f", "sh", "-c", "echo x >&2"]),
    ("2>&-", ["-f", "sh", "-c", "echo x"]),
    (">&-", ["-f", "true"]),
    (">&-", ["-V"]),
    (">/dev/full", ["-V"]),
    (">/dev/full", ["-h"]),
    (">/dev/full", ["--help"]),
])
def test_closed_or_full_stdio_as_unshare(util_linux_unshare: None, redirect: str,
                                         args: List[str]) -> None:
    theirs, ours = both_with(redirect, *args)
    assert ours == theirs


def busybox_root(path: Any) -> str:
    """A root directory holding only /bin/busybox (no Python, no /proc mounted)."""
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.skip("busybox is not installed")
    os.makedirs(path / "bin")
    os.makedirs(path / "proc")
    shutil.copy(busybox, path / "bin" / "busybox")
    return str(path)


@pytest.mark.parametrize("options, script", [
    (["--keep-caps"], "busybox mount -t proc proc /proc && busybox grep Cap /proc/self/status"),
    (["--hostname", "probe-root"], "busybox hostname"),
])
def test_root_without_python_as_unshare(util_linux_unshare: None, privileged: None,
                                        tmp_path: Any, options: List[str],
                                        script: str) -> None:
    """What --keep-caps and --hostname import is imported before --root takes the standard
    library out of reach; --keep-caps finds the last capability without /proc."""
    root = busybox_root(tmp_path)
    args = ["-r", "-m", "-p", "-f", *options, "-R", root, "/bin/busybox", "sh", "-c", script]
    theirs, ours = both(*args)
    if "--hostname" in options:  # ours only: unshare(1) has no --hostname
        theirs = both("-u", "-r", "-m", "-p", "-f", "-R", root, "/bin/busybox", "sh", "-c",
                      "busybox hostname probe-root && busybox hostname")[0]
    assert theirs[0] == 0, theirs
    assert ours == theirs


def kill_cli_as_its_child_appears(tries: int) -> int:
    """Start `linux_clone --kill-child sleep 1000` `tries` times, SIGKILL it as soon as it
    has a child; return how many of those children were still running 10 s later.  Run as a
    subreaper (in a forked child), so that the orphans come to it to be reaped."""
    ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    survivors = 0
    for _ in range(tries):
        proc = subprocess.Popen([sys.executable, "-m", "linux_clone", "--kill-child", "--",
                                 "sleep", "1000"], env=python_env(), cwd="/")
        children: List[str] = []
        while not children and proc.poll() is None:
            with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
                children = f.read().split()
        proc.kill()
        proc.wait()
        if not children:
            continue
        child = int(children[0])
        deadline = time.monotonic() + 10
        while os.waitpid(child, os.WNOHANG)[0] == 0:
            if time.monotonic() > deadline:
                survivors += 1
                os.kill(child, signal.SIGKILL)
                os.waitpid(child, 0)
                break
            time.sleep(0.005)
    return survivors


@pytest.mark.timeout(600)
def test_kill_child_when_the_cli_dies_right_after_its_fork() -> None:
    """The forked child asks for its death signal first thing, and kills itself if the CLI
    is gone already (unshare(1) leaves a few of them running)."""
    assert in_child(kill_cli_as_its_child_appears, 30) == 0


@pytest.mark.parametrize("by_path", [False, True])
def test_script_without_shebang_runs_under_sh_as_unshare(util_linux_unshare: None,
                                                          tmp_path: Any, by_path: bool) -> None:
    """execvp(3)'s ENOEXEC fallback, which unshare(1) has: /bin/sh runs the file."""
    script = tmp_path / "noshebang"
    script.write_text('echo "ran $0 $*"\n')
    script.chmod(0o755)
    env = python_env(PATH=f"{tmp_path}:{os.environ['PATH']}")
    theirs, ours = both("-f", "noshebang" if by_path else str(script), "a", "b", env=env)
    assert theirs == (0, f"ran {script} a b\n", "")
    assert ours == theirs


@pytest.mark.parametrize("option", ["--h", "--ho", "--hos", "--l", "--lo",
                                    pytest.param("--m", marks=UTIL_LINUX_238),
                                    pytest.param("--map", marks=UTIL_LINUX_238),
                                    "--k", "--he", "--loopback", "--hostname=x"])
def test_abbreviations_as_unshare(util_linux_unshare: None, option: str) -> None:
    """Our --loopback and --hostname are matched in full only: every abbreviation means
    what it means to unshare(1)."""
    theirs, ours = both(option, "true")
    if option.startswith(("--loopback", "--hostname")):
        assert theirs[0] == 1 and ours[0] == 0
    elif option in ("--h", "--he"):  # --help: the texts differ
        assert (ours[0], ours[2]) == (theirs[0], theirs[2]) == (0, "")
        assert ours[1].split()[0] == "Usage:"
    else:
        assert ours == theirs


def _pid_for_children_before_init() -> bool:
    """Whether this kernel shows /proc/self/ns/pid_for_children right after unshare(NEWPID),
    before the namespace has an init (Linux 7.2, forky's kernel; up to 6.18 at least it is
    ENOENT until then).  Asked in a child that then exits without forking."""
    def look() -> bool:
        import linux_clone
        linux_clone.unshare(linux_clone.NEWPID)
        return os.path.exists("/proc/self/ns/pid_for_children")
    return in_child(look)


def test_namespace_files_bound_in_unshares_order(util_linux_unshare: None, privileged: None,
                                                 tmp_path: Any) -> None:
    """Every namespace to a file, no --fork: the pid one (for children, none yet) cannot be
    bound where the kernel hides a pid namespace without an init, and what was bound before
    it is what unshare(1) binds first; where the kernel shows it (Linux 7.2), unshare(1)
    binds it, a pid namespace whose first process will be its init, and so do we."""
    def run(program: List[str], where: Any) -> tuple:
        import fcntl
        import linux_clone
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # see above
        linux_clone.unshare(linux_clone.NEWNS)
        subprocess.run(["mount", "--make-rprivate", "/"], check=True)
        where.mkdir()
        args = []
        for option in ("mount", "uts", "ipc", "net", "pid", "user", "cgroup", "time"):
            (where / option).touch()
            args.append(f"--{option}={where / option}")
        result = subprocess.run([*program, *args, "true"], capture_output=True, text=True,
                                env=python_env(), cwd="/", timeout=60)
        with open("/proc/self/mountinfo") as f:
            mounted = [line.split()[4] for line in f]
        nstype = None
        if str(where / "pid") in mounted:
            fd = os.open(where / "pid", os.O_RDONLY | os.O_CLOEXEC)
            try:
                nstype = fcntl.ioctl(fd, 0xB703)  # NS_GET_NSTYPE
            finally:
                os.close(fd)
        return (result.returncode, re.sub(r"^\w+: |/proc/\d+/", "", result.stderr),
                [os.path.basename(path) for path in mounted if path.startswith(str(where))],
                nstype)

    theirs = in_child(run, ["unshare"], tmp_path / "theirs")
    ours = in_child(run, [sys.executable, "-m", "linux_clone"], tmp_path / "ours")
    if _pid_for_children_before_init():
        import linux_clone
        assert theirs[:2] == (0, "") and theirs[3] == linux_clone.NEWPID, theirs
        assert sorted(theirs[2]) == sorted(NS_FILES), theirs
    else:
        assert theirs[0] == 1 and "pid" not in theirs[2] and theirs[3] is None, theirs
    assert ours == (theirs[0], theirs[1].replace("theirs", "ours"), theirs[2], theirs[3])


@pytest.mark.parametrize("args", [
    ["--map-user=-1"], ["--map-user=4294967295"], ["--map-group=-1"], ["-r", "--map-user=-1"],
    # --map-users/--map-groups are util-linux 2.38's.
    *(pytest.param(args, marks=UTIL_LINUX_238) for args in (
        ["--map-users=0,0,-1"], ["--map-groups=0,0,4294967295"], ["--map-users=-1,0,1"],
        ["--map-users=0,0,18446744073709551615"])),
])
def test_id_minus_one_as_unshare(util_linux_unshare: None, privileged: None,
                                 args: List[str]) -> None:
    """(uid_t)-1: no map for --map-user (the command runs as nobody); an error in a range."""
    theirs, ours = both(*args, "id")
    assert ours == theirs


@pytest.mark.parametrize("args", [[b"-w", b"/no/such/\xff"], [b"--map-user=\xff"],
                                  [b"--bogus\xff"], [b"-f", b"/no/such/\xff"]])
def test_non_utf8_bytes_in_messages_as_unshare(util_linux_unshare: None,
                                               args: List[bytes]) -> None:
    """A byte of the command line that is not UTF-8 comes out as that byte."""
    results = []
    for program in ([b"unshare"], [os.fsencode(sys.executable), b"-m", b"linux_clone"]):
        result = subprocess.run([*program, *args, b"true"], capture_output=True,
                                env=python_env(), cwd="/", timeout=60)
        results.append((result.returncode, result.stderr.replace(b"unshare", b"linux_clone")
                        .replace(b"'linux_clone --help'", b"'python -m linux_clone --help'")))
    theirs, ours = results
    assert b"\xff" in theirs[1]
    assert ours == theirs


@pytest.mark.parametrize("argv", ["-f true", b"-f true"])
def test_main_takes_a_list_not_a_string(argv: Any) -> None:
    def call() -> str:
        from linux_clone.__main__ import main
        try:
            main(argv)
        except BaseException as exc:
            return type(exc).__name__
        return "returned"

    assert in_child(call) == "TypeError"


# ---- probe 4: an empty COMMAND, stderr closed, COMMAND's signal unshare(1) cannot re-raise ----

@pytest.mark.parametrize("fork", [[], ["-f"]])
def test_empty_command_as_unshare(util_linux_unshare: None, fork: List[str]) -> None:
    """glibc's execvp("") is ENOENT: a message and 127, not os.execvp's ValueError."""
    theirs, ours = both(*fork, "--", "")
    assert theirs == (127, "", "linux_clone: failed to execute : No such file or directory\n")
    assert ours == theirs


def main_said(args: List[Any], stderr: str = "file") -> tuple:
    """main(args) in a forked child whose stdout and stderr are files ("closed": fd 2 closed
    and sys.stderr None, as Python starts with 2>&-): (what main returned or the type it
    raised, stdout, stderr)."""
    import tempfile

    from linux_clone.__main__ import main

    def run() -> tuple:
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            os.dup2(out.fileno(), 1)
            sys.stdout = out
            if stderr == "closed":
                os.close(2)
                sys.stderr = None
            else:
                os.dup2(err.fileno(), 2)
                sys.stderr = err
            os.chdir("/")
            try:
                outcome: Any = main(list(args))
            except BaseException as exc:
                outcome = type(exc).__name__
            for f in (out, err):
                f.flush()
                f.seek(0)
            return outcome, out.read(), err.read()

    return in_child(run)


@pytest.mark.parametrize("fork", [[], ["-f"]])
def test_main_in_process_empty_command(fork: List[str]) -> None:
    assert main_said([*fork, "--", ""]) == (
        127, "", "linux_clone: failed to execute : No such file or directory\n")


@pytest.mark.parametrize("args, message", [
    (["-f", "--", "tr\0ue"], "argument contains a NUL byte: 'tr\\x00ue'"),
    (["--", "tr\0ue"], "argument contains a NUL byte: 'tr\\x00ue'"),
    (["-w", "/tmp\0", "true"], "argument contains a NUL byte: '/tmp\\x00'"),
    (["-f", "--", "\ud800"], "argument cannot be encoded: '\\ud800'"),
])
def test_main_in_process_refuses_what_no_c_string_holds(args: List[str], message: str) -> None:
    """Only main() called in-process can pass these: a message and status 1 before anything
    is done (no traceback, no ValueError half-way)."""
    assert main_said(args) == (1, "", f"linux_clone: {message}\n")


@pytest.mark.parametrize("args", [["-f", "--", 1], ["-f", "--", b"true"]])
def test_main_in_process_takes_str_items_only(args: List[Any]) -> None:
    assert main_said(args)[0] == "TypeError"


@pytest.mark.parametrize("args", [["--bogus"], ["-w", "/no/such/dir", "true"],
                                  ["--", "/no/such/program"], ["-f", "--", "/no/such/program"],
                                  ["-f", "--", ""]])
def test_main_in_process_with_stderr_closed(args: List[str]) -> None:
    """Nothing goes to stdout instead; the status is 1, as unshare(1)'s once its message
    could not be written."""
    assert main_said(args, stderr="closed") == (1, "", "")


def stderr_closed() -> None:
    os.close(2)


def stderr_full() -> None:
    os.dup2(os.open("/dev/full", os.O_WRONLY), 2)


@pytest.mark.parametrize("redirect", [stderr_closed, stderr_full])
@pytest.mark.parametrize("args", [["--bogus"], ["-w", "/no/such/dir", "true"],
                                  ["--", "/no/such/program"], ["-f", "--", "/no/such/program"],
                                  ["--", ""], ["-f", "sh", "-c", "echo x; exit 5"]])
def test_messages_never_go_to_stdout_as_unshare(util_linux_unshare: None, redirect: Any,
                                                 args: List[str]) -> None:
    """Started with 2>&- (or 2>/dev/full): no message on stdout, and unshare(1)'s status: 1
    once a message could not be written (util-linux's close_stdout() at exit)."""
    theirs, ours = both(*args, preexec_fn=redirect)
    assert theirs[1:] == ("x\n" if "-f" in args and "sh" in args else "", "")
    assert ours == theirs


@pytest.mark.parametrize("case", ["SIGKILL", "SIGTERM as pid 1"])
def test_command_killed_where_unshare_cannot_kill_itself(request: Any, case: str) -> None:
    """README (differences): when COMMAND dies of SIGKILL we die of it too, and as pid 1 of a
    pid namespace (where the kernel drops a signal pid 1 sends itself) exit 128+N, without a
    message; util-linux 2.38's unshare -f says "sigprocmask unblock failed" (its
    signal(SIGKILL, SIG_DFL) is EINVAL; 2.40 dies of SIGKILL) or "child exit failed" (2.40
    too), and exits 1."""
    command = ["-f", "--", "sh", "-c", "kill -KILL $$" if case == "SIGKILL" else "kill -TERM $$"]
    # As pid 1: the program under test runs in the pid namespace a CLI -p -f makes.
    wrap: List[str] = []
    if case != "SIGKILL":
        request.getfixturevalue("privileged")
        wrap = [sys.executable, "-m", "linux_clone", "-p", "-f", "--"]

    def run(*argv: str) -> tuple:
        result = subprocess.run([*wrap, *argv, *command], capture_output=True, text=True,
                                env=python_env(), cwd="/", timeout=60)
        return (result.returncode, result.stdout,
                result.stderr.replace("unshare:", "linux_clone:"))

    expected = (-signal.SIGKILL if case == "SIGKILL" else 128 + signal.SIGTERM, "", "")
    assert run(sys.executable, "-m", "linux_clone") == expected
    version = tuple(map(int, UNSHARE_VERSION.split(".")[:2])) if UNSHARE_VERSION else ()
    if version < (2, 38):
        return  # no util-linux 2.38 or later to compare with
    theirs = run("unshare")
    if case == "SIGKILL" and version >= (2, 40):
        assert theirs == expected
    else:
        assert theirs[:2] == (1, "")
        assert theirs[2].startswith("linux_clone: sigprocmask unblock failed: Invalid argument"
                                    if case == "SIGKILL" else "linux_clone: child exit failed")

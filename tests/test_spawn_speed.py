"""What spawn() skips to run near a raw clone + execve, and what it keeps doing: the
process's own environ instead of a copy of os.environ, one stack kept from spawn to spawn
(never shared by two spawns at once, nor leaked), checked against the kernel's answer."""

from __future__ import annotations

import os
import subprocess
from typing import List, Tuple

import linux_clone
from conftest import in_child


def _output(argv: List[str], **kwargs: object) -> Tuple[int, str]:
    """Spawn argv with its stdout on a pipe; (exit code, what it wrote)."""
    rfd, wfd = os.pipe()
    try:
        pid = linux_clone.spawn(argv, stdout=wfd, **kwargs)  # type: ignore[arg-type]
    finally:
        os.close(wfd)
    with os.fdopen(rfd, "rb") as f:
        out = f.read().decode("utf-8", "surrogateescape")
    _, status = os.waitpid(pid, 0)  # type: ignore[arg-type]
    return os.waitstatus_to_exitcode(status), out


# ---- env=None: the process's environ ----

def test_spawn_env_default_is_the_process_environment() -> None:
    # As subprocess's child: the C environment, where os.putenv writes without os.environ
    # knowing, and no copy of os.environ made for the call.
    def run() -> Tuple[int, List[str], List[str], bool]:
        os.putenv("LC_SPAWN_PUTENV", "c-level")
        code, out = _output(["/usr/bin/env"])
        expected = subprocess.run(["/usr/bin/env"], stdout=subprocess.PIPE, check=True).stdout
        return (code, sorted(out.splitlines()),
                sorted(expected.decode("utf-8", "surrogateescape").splitlines()),
                "LC_SPAWN_PUTENV" in os.environ)
    code, out, expected, in_os_environ = in_child(run)
    assert not in_os_environ
    assert code == 0 and "LC_SPAWN_PUTENV=c-level" in out
    assert out == expected


def test_spawn_env_default_sees_os_environ_changes() -> None:
    # os.environ writes through to environ: a set and a deleted variable reach the child as
    # they reach subprocess's, and PATH is searched as os.environ has it.
    def run() -> Tuple[int, List[str]]:
        os.environ["LC_SPAWN_SET"] = "set"
        os.environ.pop("HOME", None)
        os.environ["PATH"] = "/nonexistent:/usr/bin:/bin"
        code, out = _output(["env"])
        return code, out.splitlines()
    code, out = in_child(run)
    assert code == 0 and "LC_SPAWN_SET=set" in out
    assert not any(line.startswith("HOME=") for line in out)
    assert "PATH=/nonexistent:/usr/bin:/bin" in out

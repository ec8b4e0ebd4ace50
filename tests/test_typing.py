"""Typed and linted: mypy --strict on the installed stubs and on a typed usage example,
mypy.stubtest of the stubs against the compiled module, ruff on the Python files and
cython-lint on the Cython ones; the README's Python blocks run and pass mypy --strict and
pyright; the run-time face of the types (pidfd=, signatures, dir(), a lean import)."""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterable, List, Tuple, Union

import pytest
from conftest import python_env

import linux_clone

HERE = Path(__file__).parent
ROOT = HERE.parent
SOURCES = [str(ROOT / "linux_clone"), str(HERE)]
PYPROJECT = str(ROOT / "pyproject.toml")


def _run(args: List[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    # The venv's bin first: cython-lint runs pycodestyle from PATH.
    env = dict(os.environ, PATH=os.pathsep.join([os.path.dirname(sys.executable),
                                                 os.environ.get("PATH", "")]))
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def _require(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (the `test` extra installs it)")


@pytest.fixture(scope="module")
def mypy_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _require("mypy")
    return tmp_path_factory.mktemp("mypy")


def _mypy(cache: Path, *targets: str) -> subprocess.CompletedProcess[str]:
    # Run away from the checkout, so that the installed package is what mypy and the
    # interpreter find, never ./linux_clone; the settings are the project's.
    return _run(["-m", "mypy", "--strict", "--no-error-summary", "--config-file", PYPROJECT,
                 "--cache-dir", str(cache / "c"), *targets], cwd=cache)


def test_installed_package_is_checked() -> None:
    assert not (Path(linux_clone.__file__).parent / "_core.pyx").exists(), \
        "run the tests against the installed package, not the checkout"


def test_mypy_strict_stubs(mypy_cache: Path) -> None:
    result = _mypy(mypy_cache, "-p", "linux_clone")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_typed_example(mypy_cache: Path) -> None:
    result = _mypy(mypy_cache, str(HERE / "typed_example.py"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_stubtest(mypy_cache: Path) -> None:
    # Some entries apply to some Python versions only (see the file).
    result = _run(["-m", "mypy.stubtest", "linux_clone", "--mypy-config-file", PYPROJECT,
                   "--allowlist", str(HERE / "stubtest_allowlist.txt"),
                   "--ignore-unused-allowlist"], cwd=mypy_cache)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff() -> None:
    _require("ruff")
    result = _run(["-m", "ruff", "check", "--no-cache", *SOURCES], cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_cython_lint() -> None:
    _require("cython_lint")
    result = _run(["-m", "cython_lint.cython_lint", *SOURCES], cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


# ---- the README's Python blocks ----
# Every ```python block of README.md is a whole program: it is run (as root, in a child
# interpreter: the blocks create namespaces in their own children) and type-checked.  Code
# that is not meant to run goes in a block of another language (```cython, ```sh).


def _readme_blocks() -> List[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.findall(r"^```python\n(.*?)^```$", text, re.MULTILINE | re.DOTALL)


@pytest.fixture(scope="module")
def readme_examples(tmp_path_factory: pytest.TempPathFactory) -> List[Path]:
    directory = tmp_path_factory.mktemp("readme")
    paths = []
    for number, block in enumerate(_readme_blocks(), 1):
        path = directory / f"readme_example_{number}.py"
        path.write_text(block, encoding="utf-8")
        paths.append(path)
    return paths


def test_readme_examples_are_whole(readme_examples: List[Path]) -> None:
    assert len(readme_examples) >= 2
    for path in readme_examples:
        text = path.read_text(encoding="utf-8")
        assert "linux_clone" in text, text
        assert not re.search(r"#\s*(type|pyright):\s*ignore", text), text


def test_readme_examples_mypy_strict(mypy_cache: Path, readme_examples: List[Path]) -> None:
    result = _mypy(mypy_cache, *map(str, readme_examples))
    assert result.returncode == 0, result.stdout + result.stderr


def test_readme_examples_pyright(readme_examples: List[Path]) -> None:
    _require("pyright")
    directory = readme_examples[0].parent
    (directory / "pyrightconfig.json").write_text(json.dumps({"typeCheckingMode": "strict"}))
    # pyright[nodejs] brings node from PyPI; no version check against the network.
    env = dict(os.environ, PYRIGHT_PYTHON_IGNORE_WARNINGS="1")
    result = subprocess.run([sys.executable, "-m", "pyright", "--pythonpath", sys.executable,
                             *map(str, readme_examples), str(HERE / "typed_example.py")],
                            cwd=directory, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr


def test_readme_examples_run(privileged: None, readme_examples: List[Path]) -> None:
    outputs = []
    for path in readme_examples:
        result = subprocess.run([sys.executable, str(path)], cwd=path.parent,
                                env=python_env(), capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"{path.name}: {result.stdout}{result.stderr}"
        outputs.append(result.stdout)
    # The first is `ip addr` in a new network namespace: lo only, up, and exit status 0.
    assert re.findall(r"^\d+: (\w+):", outputs[0], re.MULTILINE) == ["lo"], outputs[0]
    assert "<LOOPBACK,UP," in outputs[0] and outputs[0].endswith("\n0\n"), outputs[0]


# ---- pidfd=: the result type the stubs promise ----


def _exit_3() -> int:
    return 3


@pytest.mark.parametrize("start", [
    lambda: linux_clone.clone(_exit_3, pidfd=True),
    lambda: linux_clone.clone(_exit_3, 0, signal.SIGCHLD, pidfd=True),
    lambda: linux_clone.clone3(_exit_3, pidfd=True),
    lambda: linux_clone.clone(_exit_3, flags=linux_clone.PIDFD | signal.SIGCHLD, pidfd=True),
    lambda: linux_clone.clone(_exit_3, flags=linux_clone.PIDFD | signal.SIGCHLD),
], ids=["clone", "clone-flags", "clone3", "clone-both", "clone-PIDFD-flag"])
def test_pidfd_keyword_returns_pid_and_pidfd(start: Callable[[], object]) -> None:
    result = start()
    assert isinstance(result, tuple)
    pid, pidfd = result
    try:
        info = os.waitid(os.P_PIDFD, pidfd, os.WEXITED)
    finally:
        os.close(pidfd)
    assert info is not None and (info.si_pid, info.si_status) == (pid, 3)


def test_pidfd_keyword_with_id_maps(privileged: None) -> None:
    pid, pidfd = linux_clone.clone(lambda: os.getuid(), 0, linux_clone.NEWUSER | signal.SIGCHLD,
                                   uid_map=[(7, 0, 1)], pidfd=True)
    try:
        info = os.waitid(os.P_PIDFD, pidfd, os.WEXITED)
    finally:
        os.close(pidfd)
    assert info is not None and (info.si_pid, info.si_status) == (pid, 7)


def test_pidfd_false_returns_the_pid() -> None:
    pid = linux_clone.clone3(_exit_3, pidfd=False)
    assert isinstance(pid, int)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 3


def test_pidfd_bad_flags_fail_before_the_clone() -> None:
    with pytest.raises(TypeError):
        linux_clone.clone(_exit_3, 0, "SIGCHLD", pidfd=True)  # type: ignore[call-overload]


# ---- what help(), inspect and dir() show ----


def test_entered_signature() -> None:
    assert str(inspect.signature(linux_clone.entered)) == "(ns=None, nstype=0, *, pid=None)"
    assert linux_clone.entered.__doc__ is not None
    assert linux_clone.entered.__doc__.split()[:3] == ["A", "context", "manager"]


def test_dir_is_the_api() -> None:
    names = dir(linux_clone)
    assert set(linux_clone.__all__) <= set(names)
    assert {"__version__", "__doc__", "__name__"} <= set(names)
    leaked = [name for name in names
              if name not in linux_clone.__all__ and not name.startswith("__")]
    assert leaked == []


def test_idmap_is_the_id_map_type() -> None:
    assert linux_clone.IdMap == Union[str, Iterable[Tuple[int, int, int]]]
    assert "IdMap" in linux_clone.__all__
    with pytest.raises(AttributeError, match="no_such_name"):
        linux_clone.no_such_name  # type: ignore[attr-defined]  # noqa: B018


# ---- import cost ----


def _bare_python(code: str, cwd: Path) -> str:
    """Run code in an interpreter without site (-S: no .pth file or sitecustomize imports
    anything first) that finds the installed linux_clone; return its stdout."""
    site = str(Path(linux_clone.__file__).parent.parent)
    result = subprocess.run([sys.executable, "-I", "-S", "-c",
                             f"import sys; sys.path.insert(0, {site!r}); {code}"],
                            cwd=cwd, env=python_env(), capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_import_needs_no_typing_or_contextlib(tmp_path: Path) -> None:
    # typing, contextlib, signal and enum (signal builds enums; enum brings functools and
    # collections on 3.11) and threading were most of the import's time: the package makes
    # CloneFlag and imports _process on first use.
    heavy = ["contextlib", "enum", "signal", "threading", "typing"]
    code = ("before = set(sys.modules); import linux_clone; "
            f"print(sorted(before & set({heavy!r})), sorted(set(sys.modules) & set({heavy!r})))")
    assert _bare_python(code, tmp_path).split() == ["[]", "[]"]


def test_lazy_names_are_the_api(tmp_path: Path) -> None:
    # ns_get_nstype asked for first still answers with CloneFlag members; the flags, their
    # CLONE_* aliases and _process's names come by attribute, by from-import and by *.
    code = """
import linux_clone
nstype = linux_clone.ns_get_nstype("/proc/self/ns/net")
assert type(nstype) is linux_clone.CloneFlag and nstype is linux_clone.NEWNET, repr(nstype)
from linux_clone import CLONE_NEWUTS, NEWUTS, PIPE, Popen
assert CLONE_NEWUTS is NEWUTS is linux_clone.CloneFlag.NEWUTS and PIPE == -1, PIPE
assert Popen.__module__ == "linux_clone._process", Popen.__module__
names = {}
exec("from linux_clone import *", names)
assert set(linux_clone.__all__) <= set(names), set(linux_clone.__all__) - set(names)
assert linux_clone.CloneFlag.__module__ == "linux_clone"
print("ok")
"""
    assert _bare_python(code, tmp_path) == "ok\n"


# ---- what the types reject, and the subprocess forms they keep ----
# Each line marked `# rejected` must be an error to mypy --strict and to pyright (strict), and
# nothing else may be: a str argv (a program subprocess would take, a TypeError here), the
# options Popen does not take, and a (pid, pidfd) used as a pid.

MISUSES = """
import os
from pathlib import Path
from typing import Any

from linux_clone import Popen, run, spawn


def sink(value: Any) -> None:
    pass


def pid_of_pidfd() -> int:
    return spawn(["true"], pidfd=True)  # rejected


def misuses(flag: bool) -> None:
    sink(spawn("true"))  # rejected
    sink(spawn(b"/bin/true"))  # rejected
    sink(spawn(Path("/bin/true")))  # rejected
    sink(run("ls"))  # rejected
    sink(run(b"ls"))  # rejected
    sink(Popen("ls"))  # rejected
    sink(run([1]))  # rejected
    sink(Popen(["ls"], shell=True))  # rejected
    sink(run(["ls"], universal_newlines=True))  # rejected
    sink(run(["ls"], stdout="out.txt"))  # rejected
    sink(run(["ls"], timeout="5"))  # rejected
    sink(Popen(["ls"], env={"A": 1}))  # rejected
    sink(os.waitpid(spawn(["true"], pidfd=True), 0))  # rejected
    sink(os.waitpid(spawn(["true"], pidfd=flag), 0))  # rejected
"""

ACCEPTED = """
import os
import subprocess
from pathlib import Path
from typing import IO, Any, List, Sequence, Tuple

import linux_clone
from linux_clone import PIPE, STDOUT, Popen, run, spawn


def accepted(args: List[str], paths: Tuple[Path, ...], seq: Sequence[str],
             out: IO[bytes]) -> List[Any]:
    results: List[Any] = [os.waitpid(spawn(["true"]), 0), os.waitpid(spawn(args), 0),
                          os.waitpid(spawn([b"/bin/true", Path("x"), "y"]), 0),
                          spawn(("true",), pidfd=True)[1], spawn(seq, stdout=out)]
    completed: subprocess.CompletedProcess[Any] = run(args, capture_output=True, text=True,
                                                      check=True)
    results.append(completed.stdout)
    results.append(run(paths, linux_clone.NEWNET, loopback=True, stdout=out, stderr=STDOUT,
                       input=b"", timeout=5, pass_fds=[3], close_fds=True,
                       start_new_session=True, umask=0o22, encoding="utf-8",
                       errors="strict", bufsize=None, env={"A": "b"}, cwd=Path("/")))
    with Popen(["cat"], stdin=PIPE, stdout=PIPE, bufsize=0) as proc:
        results.append(proc.communicate(b"x"))
    return results
"""


def _type_errors(directory: Path, text: str) -> Tuple[List[int], List[int], str]:
    """The lines of text that mypy --strict and pyright (strict) report errors on, and
    their output."""
    _require("mypy")
    _require("pyright")
    path = directory / "case.py"
    path.write_text(text, encoding="utf-8")
    (directory / "pyrightconfig.json").write_text(json.dumps({"typeCheckingMode": "strict"}))
    mypy = _mypy(directory, str(path))
    env = dict(os.environ, PYRIGHT_PYTHON_IGNORE_WARNINGS="1")
    pyright = subprocess.run([sys.executable, "-m", "pyright", "--pythonpath", sys.executable,
                              str(path)], cwd=directory, env=env, capture_output=True,
                             text=True, timeout=600)
    mypy_lines = sorted({int(n) for n in re.findall(r"^[^:\n]*case\.py:(\d+): error:",
                                                    mypy.stdout, re.MULTILINE)})
    pyright_lines = sorted({int(n) for n in re.findall(r"case\.py:(\d+):\d+ - error:",
                                                       pyright.stdout)})
    return mypy_lines, pyright_lines, mypy.stdout + pyright.stdout


def test_types_reject_the_misuses(tmp_path: Path) -> None:
    expected = [number for number, line in enumerate(MISUSES.splitlines(), 1)
                if line.endswith("# rejected")]
    mypy_lines, pyright_lines, output = _type_errors(tmp_path, MISUSES)
    assert (mypy_lines, pyright_lines) == (expected, expected), output


def test_types_accept_the_subprocess_forms(tmp_path: Path) -> None:
    mypy_lines, pyright_lines, output = _type_errors(tmp_path, ACCEPTED)
    assert (mypy_lines, pyright_lines) == ([], []), output

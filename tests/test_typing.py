"""Typed and linted: mypy --strict on the installed stubs and on a typed usage example,
mypy.stubtest of the stubs against the compiled module, ruff on the Python files and
cython-lint on the Cython ones."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

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

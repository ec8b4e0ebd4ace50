"""What the README says of subinterpreters: an isolated one (its own GIL) cannot import the
module; a legacy one (sharing the main GIL) can, and there every call but clone()/clone3()
works -- those raise RuntimeError, since a forked child must run in the main interpreter; only
the first interpreter of a process that imports it can."""

from __future__ import annotations

import sys
from typing import Tuple

import pytest

import linux_clone

from conftest import run_program, run_python

# The subinterpreter writes its answers to the fd named in OUT_FD.
INNER = """
import os, linux_clone
out = []
fd = os.open("/proc/self/ns/net", os.O_RDONLY)
out.append(str(int(linux_clone.ns_get_nstype(fd))))
os.close(fd)
for name in ("clone", "clone3"):
    try:
        getattr(linux_clone, name)(lambda: 0)
    except RuntimeError:
        out.append(name + ":RuntimeError")
os.write(int(os.environ["OUT_FD"]), " ".join(out).encode())
"""

LEGACY = f"""
import os, _testcapi
r, w = os.pipe()
os.environ["OUT_FD"] = str(w)
rc = _testcapi.run_in_subinterp({INNER!r})
os.close(w)
print(rc, os.read(r, 1000).decode())
"""

ISOLATED = """
import _interpreters
iid = _interpreters.create()
err = _interpreters.run_string(iid, "import linux_clone")
print(err.type.__name__ if err is not None else "imported")
"""


def test_legacy_subinterpreter_imports_and_refuses_clone() -> None:
    pytest.importorskip("_testcapi")
    result = run_python(LEGACY)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().split() == [
        "0", str(int(linux_clone.NEWNET)), "clone:RuntimeError", "clone3:RuntimeError"]


@pytest.mark.parametrize("order, outcome", [
    (("main", "sub"), "ok failed"),
    (("sub", "sub", "main"), "ok failed ImportError"),
])
def test_only_the_first_interpreter_to_import_it_can(order: Tuple[str, ...], outcome: str) -> None:
    pytest.importorskip("_testcapi")
    result = run_program("import_order", *order)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().strip() == outcome


@pytest.mark.skipif(sys.version_info < (3, 13), reason="_interpreters.create() is 3.13+")
def test_isolated_subinterpreter_cannot_import() -> None:
    result = run_python(ISOLATED)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().strip() == "ImportError"

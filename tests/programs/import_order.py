"""Import linux_clone in the interpreters named on the command line, in that order: "main"
(this one) or "sub" (a new legacy subinterpreter, sharing the GIL); print each outcome: ok,
failed (the subinterpreter's import raised) or ImportError (the main interpreter's did, with
Cython's "Interpreter change detected")."""

import sys

import _testcapi


def attempt(where: str) -> str:
    if where == "sub":
        return "ok" if _testcapi.run_in_subinterp("import linux_clone") == 0 else "failed"
    try:
        import linux_clone  # noqa: F401
    except ImportError as exc:
        return "ImportError" if "Interpreter change" in str(exc) else repr(exc)
    return "ok"


print(" ".join(attempt(where) for where in sys.argv[1:]))

"""What `python -m linux_clone --net -- true` imports, run in an interpreter without site (-I -S:
nothing a .pth file or sitecustomize imports hides an import): prints whether CloneFlag was
made, then the modules imported since runpy's own (those are the interpreter's), just before
the exec.

Arguments: the directory that holds the installed linux_clone."""

import sys

sys.path.insert(0, sys.argv[1])
import os  # noqa: E402
import runpy  # noqa: E402

before, execvp = set(sys.modules), os.execvp


def report_then_exec(file, args):
    made = "CloneFlag" in vars(sys.modules["linux_clone"])
    print(made, *sorted(set(sys.modules) - before), flush=True)
    execvp(file, args)


os.execvp = report_then_exec
sys.argv = ["linux_clone", "--net", "--", "true"]
runpy.run_module("linux_clone", run_name="__main__", alter_sys=True)

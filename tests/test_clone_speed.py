"""What clone()'s fast path keeps: the child's state comes from the caller's frame, not from
globals the parent writes; the flushes, the atexit handlers and threading's shutdown run
exactly when they can be seen.  (The speed itself is the benchmark's, never asserted here.)"""

from __future__ import annotations

import os
import signal
from typing import Any, List

import linux_clone

from conftest import in_child, run_python


def wait_code(pid: int) -> int:
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


# ---- the child's arguments are the caller's locals ----

def test_a_files_childs_own_clone_is_not_a_files_child(privileged: None) -> None:
    """A clone(FILES) child that clones again without FILES: the grandchild has a table of its
    own, so it makes (and closes) its own kept fd, and the FILES child's stays."""
    def body() -> List[Any]:
        def grandchild() -> int:
            with linux_clone.entered("/proc/self/ns/net"):
                pass
            return 5 if linux_clone._core._kept_fd() >= 0 else 6

        def child() -> int:
            with linux_clone.entered("/proc/self/ns/net"):
                pass
            kept = linux_clone._core._kept_fd()
            code = wait_code(linux_clone.clone(grandchild))
            same = linux_clone.kcmp(os.getpid(), os.getpid(), linux_clone.KCMP_FILE, kept, kept)
            return code * 10 + (same == 0 and linux_clone._core._kept_fd() == kept)

        pid = linux_clone.clone(child, 0, linux_clone.FILES | signal.SIGCHLD)
        return [wait_code(pid)]
    assert in_child(body) == [51]


# ---- the flushes of sys.stdout and sys.stderr ----

FLUSHES = """
import os, sys, linux_clone

def code(pid):
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

class Failing:  # not an IOBase, whose finalizer would flush again
    def __init__(self, exc):
        self.exc = exc
    def write(self, text):
        return len(text)
    def flush(self):
        raise self.exc

class Replacing(Failing):  # its flush drops the last reference to itself
    def flush(self):
        sys.stdout = None

out, results = sys.stdout, []
print("buffered before", end="")
for stream in (Failing(ValueError("v")), None, Replacing(None), "missing"):
    if stream == "missing":
        del sys.stdout
    else:
        sys.stdout = stream
    results.append(code(linux_clone.clone(lambda: 7)))
sys.stdout = Failing(KeyboardInterrupt())
try:
    linux_clone.clone(lambda: 8)
except KeyboardInterrupt:
    results.append("interrupted")
sys.stdout = None

def child(stream):
    def run():
        sys.stdout = stream
        return 9
    return run

for stream in (Failing(ValueError("v")), Failing(KeyboardInterrupt()), Failing(SystemExit(3)),
               None, Replacing(None)):
    results.append(code(linux_clone.clone(child(stream))))
sys.stdout = out
print("", results)
"""


def test_the_flushes_skip_or_ignore_what_the_interpreter_exit_does() -> None:
    # The caller's flush ignores an Exception and stops at a KeyboardInterrupt (no child);
    # the child's ignores both and keeps func's exit status; None, a missing stream and a
    # flush that drops the stream's last reference are no error.
    proc = run_python(FLUSHES)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode() == "buffered before [7, 7, 7, 7, 'interrupted', 9, 9, 9, 9, 9]\n"
    assert proc.stderr == b""


# ---- threading._shutdown and the atexit handlers: run whenever they can be seen ----

SHUTDOWN = """
import atexit, os, sys, threading, linux_clone

def code(pid):
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

def quiet():
    return 0

def with_atexit():
    atexit.register(lambda: print("atexit: main thread alive", threading.main_thread().is_alive()))
    return 1

def with_threading_atexit():
    threading._register_atexit(print, "threading atexit")
    return 2

def thread_joined():
    thread = threading.Thread(target=print, args=("thread ran",))
    thread.start()
    thread.join()
    atexit.register(print, "atexit after a joined thread")
    return 3

def thread_left():
    threading.Thread(target=lambda: threading.Event().wait(0.2) or print("thread left")).start()
    return 4

for func in (quiet, with_atexit, with_threading_atexit, thread_joined, thread_left):
    print(func.__name__, code(linux_clone.clone(func)), flush=True)
threading._register_atexit(print, "inherited threading atexit")
print("inherited", code(linux_clone.clone(quiet)), flush=True)
"""


def test_the_childs_exit_runs_what_it_can_see() -> None:
    # threading._shutdown runs before the child's own atexit handlers (they see the main
    # thread stopped), runs threading._register_atexit callbacks (the child's and the ones
    # it inherited) and joins a non-daemon thread func left running.
    proc = run_python(SHUTDOWN, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().splitlines() == [
        "quiet 0",
        "atexit: main thread alive False", "with_atexit 1",
        "threading atexit", "with_threading_atexit 2",
        "thread ran", "atexit after a joined thread", "thread_joined 3",
        "thread left", "thread_left 4",
        "inherited threading atexit", "inherited 0",
        "inherited threading atexit",  # the parent's own exit
    ]
    assert proc.stderr == b""

"""What clone()'s fast path keeps: the child's state comes from the caller's frame, not from
globals the parent writes; the flushes, the atexit handlers and threading's shutdown run
exactly when they can be seen.  (The speed itself is the benchmark's, never asserted here.)"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any, List

import pytest

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

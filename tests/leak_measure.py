"""What test_leaks measures, in the test process and in the programs/child_loops.py it starts:
a process's fds, mappings and RSS, the children it left, and their deltas over n calls."""

from __future__ import annotations

import ctypes
import gc
import os
import re
import sys
from typing import Any, Callable, Dict, List, Sequence


def sample() -> List[int]:
    """[open fds, lines of /proc/self/maps, VmRSS in kB] of the calling process."""
    fds = len(os.listdir("/proc/self/fd"))
    with open("/proc/self/maps") as f:
        maps = sum(1 for _ in f)
    with open("/proc/self/status") as f:
        rss = int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))  # type: ignore[union-attr]
    return [fds, maps, rss]


def leftover_children() -> List[str]:
    """Children still there (zombies included), from the kernel's and from waitpid's view."""
    found = []
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/children") as f:
                found += f.read().split()
        except (FileNotFoundError, ProcessLookupError):
            pass  # a thread that ended after the listdir: its children are the others' now
    try:
        pid, status = os.waitpid(-1, os.WNOHANG | 0x40000000)  # __WALL
        found.append(f"waitpid: {pid} {status:#x}")
    except ChildProcessError:
        pass
    return found


def measure(step: Callable[[], Any], n: int, tracked: Sequence[Any] = ()) -> Dict[str, Any]:
    """Run step() n times after a warm-up; the deltas over the n calls."""
    # No transparent huge pages for this process: where they are on for every mapping
    # (Debian's kernels: CONFIG_TRANSPARENT_HUGEPAGE_ALWAYS), one fault in the heap adds a
    # whole 2 MB page to the RSS, which is no leak.  41: PR_SET_THP_DISABLE (Linux 3.15).
    ctypes.CDLL(None).prctl(41, 1, 0, 0, 0)
    for _ in range(max(n // 20, 50)):
        step()
    gc.collect()
    refs = [sys.getrefcount(obj) for obj in tracked]
    before = sample()
    for _ in range(n):
        step()
    gc.collect()
    after = sample()
    refs_after = [sys.getrefcount(obj) for obj in tracked]
    return {"fds": after[0] - before[0], "maps": after[1] - before[1],
            "rss_kb": after[2] - before[2],
            "refs": [a - b for a, b in zip(refs_after, refs)],
            "children": leftover_children()}

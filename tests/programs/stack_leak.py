"""`clones` clones on dedicated stacks (with `threads` other threads running): prints, as json,
this process's maps, VmSize, VmRSS and fds before and after, how many children exited with
another code than theirs, and whether any child is left.

Arguments: threads clones."""

import json
import os
import sys
import threading

import linux_clone


def snapshot() -> dict:
    with open("/proc/self/status") as f:
        status = dict(line.split(":", 1) for line in f)
    with open("/proc/self/maps") as f:
        maps = len(f.readlines())
    return {"maps": maps, "vmsize": int(status["VmSize"].split()[0]),
            "rss": int(status["VmRSS"].split()[0]), "fds": len(os.listdir("/proc/self/fd"))}


def run(n: int) -> int:
    wrong = 0
    for i in range(n):
        pid = linux_clone.clone(lambda i=i: i % 7, linux_clone._core.MIN_STACK_SIZE)
        wrong += os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) != i % 7
    return wrong


threads, clones = map(int, sys.argv[1:])
stop = threading.Event()
workers = [threading.Thread(target=stop.wait) for _ in range(threads)]
for t in workers:
    t.start()
run(50)
before = snapshot()
wrong = run(clones)
after = snapshot()
try:
    os.waitpid(-1, os.WNOHANG | linux_clone.WALL)
    children = True
except ChildProcessError:
    children = False
stop.set()
print(json.dumps({"before": before, "after": after, "wrong": wrong, "children": children}))

"""clone() from a process with at-fork hooks and `threads` other threads: prints the hooks that
ran by the time the child ran, then those the parent saw and the child's exit code.

Arguments: threads stack_size."""

import os
import sys
import threading

import linux_clone

threads, stack_size = map(int, sys.argv[1:])
events = []
os.register_at_fork(before=lambda: events.append("before"),
                    after_in_parent=lambda: events.append("after_in_parent"),
                    after_in_child=lambda: events.append("after_in_child"))
stop = threading.Event()
workers = [threading.Thread(target=stop.wait) for _ in range(threads)]
for t in workers:
    t.start()
pid = linux_clone.clone(lambda: print("child", events), stack_size)
_, status = os.waitpid(pid, 0)
stop.set()
print("parent", events, os.waitstatus_to_exitcode(status))

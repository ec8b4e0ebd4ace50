"""What a clone child writes to stdout and stderr, with the parent's own lines around it: each
line must reach the pipes once.  The child ends by `return 0`, `raise SystemExit(6)` or
`raise KeyError('k')`.

Arguments: threads stack_size flags ending (return, exit or raise)."""

import os
import sys
import threading

import linux_clone

threads, stack_size, flags = map(int, sys.argv[1:4])
ending = sys.argv[4]
stop = threading.Event()
workers = [threading.Thread(target=stop.wait) for _ in range(threads)]
for t in workers:
    t.start()
print("parent before clone")
sys.stderr.write("parent stderr before clone\n")


def child() -> int:
    print("child stdout", end="")
    print(" line")
    print("child stderr", file=sys.stderr)
    if ending == "exit":
        raise SystemExit(6)
    if ending == "raise":
        raise KeyError("k")
    return 0


pid = linux_clone.clone(child, stack_size, flags)
_, status = os.waitpid(pid, linux_clone.WALL)
stop.set()
print("parent after", os.waitstatus_to_exitcode(status))

"""n spawns whose uid map the kernel refuses, with SIGPIPE at its default (as command-line
tools often set it): each must raise EINVAL, none may kill the process with SIGPIPE; prints
"done".

Arguments: n."""

import errno
import signal
import sys

import linux_clone

N = int(sys.argv[1])
signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # as command-line tools often set it
for _ in range(N):
    try:
        linux_clone.spawn(["/bin/true"], linux_clone.NEWUSER, uid_map="0 1000 10\n5 2000 10")
    except OSError as exc:
        assert exc.errno == errno.EINVAL, exc
    else:
        raise AssertionError("a bad map was accepted")
print("done")

"""n children started one way (clone, clone_stack, clone_pidfd, clone3, spawn, spawn_pidfd
or spawn_missing), each reaped: prints, as json, leak_measure.measure()'s deltas over them.

Arguments: name n."""

import json
import os
import signal
import sys

import linux_clone as C
from leak_measure import measure


def zero():
    return 0


argv, missing, env = ["/bin/true"], ["/nonexistent/prog"], {"PATH": "/bin:/usr/bin"}


def clone():
    assert os.waitpid(C.clone(zero), 0)[1] == 0


def clone_stack():
    assert os.waitpid(C.clone(zero, stack_size=C._core.MIN_STACK_SIZE), 0)[1] == 0


def clone_pidfd():
    pid, fd = C.clone(zero, flags=C.PIDFD | signal.SIGCHLD)
    os.close(fd)
    assert os.waitpid(pid, 0)[1] == 0


def clone3():
    assert os.waitpid(C.clone3(zero, stack_size=C._core.MIN_STACK_SIZE), 0)[1] == 0


def spawn():
    assert os.waitpid(C.spawn(argv, env=env), 0)[1] == 0


def spawn_pidfd():
    pid, fd = C.spawn(argv, pidfd=True)
    os.close(fd)
    assert os.waitpid(pid, 0)[1] == 0


def spawn_missing():
    try:
        C.spawn(missing)
    except FileNotFoundError as exc:
        assert exc.filename == missing[0]
    else:
        raise AssertionError("spawn of a missing program succeeded")


tracked = {"clone": [zero], "clone_stack": [zero], "clone_pidfd": [zero], "clone3": [zero],
           "spawn": [argv, env], "spawn_pidfd": [argv], "spawn_missing": [missing]}
name, n = sys.argv[1], int(sys.argv[2])
print(json.dumps(measure(globals()[name], n, tracked[name])))

"""The threaded stress test of issue 3: clone n times from a parent whose other threads hammer
malloc, regcomp and stdio's locks without the GIL, cycling through the flag words given;
prints, as json, how many clones ran, the children that hung (killed after `timeout`
seconds, at most `max_hung` of them), those that exited with a wrong code, and the time taken.

Arguments: n timeout max_hung flags..."""

import ctypes
import ctypes.util
import json
import os
import select
import signal
import sys
import threading
import time

import linux_clone as lc

N, TIMEOUT, MAX_HUNG = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
SETS = [int(flags) for flags in sys.argv[4:]]
sys.setswitchinterval(1e-4)  # the main thread gets the GIL back quickly between clones

libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.regcomp.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
libc.regfree.argtypes = [ctypes.c_void_p]
libc.fopen.restype, libc.fopen.argtypes = ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_char_p]
libc.fclose.argtypes = [ctypes.c_void_p]
libc.fmemopen.restype = ctypes.c_void_p
libc.fmemopen.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
libc.fflush.argtypes = [ctypes.c_void_p]
PATTERN = b"(" + b"|".join(b"w%dx[a-z]{1,3}" % i for i in range(40)) + b")+y"
# Many open FILEs make fflush(NULL) hold glibc's stdio list lock for a long time per call.
streams = [libc.fmemopen(None, 64, b"w+") for _ in range(2000)]
stop = threading.Event()


def hammer():
    # Every ctypes call runs without the GIL: malloc/free directly, regcomp (thousands of
    # mallocs in one call), fopen/fclose and fflush(NULL) (the stdio list lock).
    regex = ctypes.create_string_buffer(256)
    while not stop.is_set():
        for size in (16, 4000, 300000):
            libc.free(libc.malloc(size))
        libc.regcomp(regex, PATTERN, 1)
        libc.regfree(regex)
        libc.fclose(libc.fopen(b"/dev/null", b"w"))
        libc.fflush(None)


def allocate():
    while not stop.is_set():
        junk = [{"n": i, "s": str(i)} for i in range(2000)]
        del junk


def child(i):
    def run():
        # What a child that inherited a lock held by another thread would hang on.
        libc.free(libc.malloc(100000))
        libc.fclose(libc.fopen(b"/dev/null", b"w"))
        junk = [str(j) * 10 for j in range(500)]
        return i % 100 if junk else 255
    return run


threads = ([threading.Thread(target=hammer) for _ in range(4)]
           + [threading.Thread(target=allocate) for _ in range(2)])
for t in threads:
    t.start()
hung, wrong = [], []
start = time.monotonic()
try:
    for i in range(N):
        flags = SETS[i % len(SETS)]
        pid = lc.clone(child(i), lc._core.MIN_STACK_SIZE if i % 3 == 0 else 0, flags)
        pidfd = os.pidfd_open(pid)
        exited = select.select([pidfd], [], [], TIMEOUT)[0]
        os.close(pidfd)
        if not exited:
            with open(f"/proc/{pid}/wchan") as f:
                hung.append((i, hex(flags), f.read()))
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, lc.WALL)
        if exited and os.waitstatus_to_exitcode(status) != i % 100:
            wrong.append((i, hex(flags), os.waitstatus_to_exitcode(status)))
        if len(hung) >= MAX_HUNG:
            break
finally:
    stop.set()
    for t in threads:
        t.join()
print(json.dumps({"n": i + 1, "hung": hung, "wrong": wrong,
                  "seconds": time.monotonic() - start}))

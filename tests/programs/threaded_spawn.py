"""n spawns (a uid map every 7th) from a parent whose other threads hammer malloc and two of
which spawn 60 programs each at the same time; prints, as json, the programs that hung
(killed after `hang` seconds), those that exited with a wrong code, the exceptions, and the time.

Arguments: n hang."""

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

N, HANG = int(sys.argv[1]), float(sys.argv[2])
sys.setswitchinterval(1e-4)  # spawning threads get the GIL back soon after each syscall

libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
FLAGS = [0, lc.NEWUTS, lc.NEWPID, lc.NEWIPC]
stop = threading.Event()
hung, wrong, errors = [], [], []


def hammer():
    while not stop.is_set():
        for size in (16, 4000, 300000):
            libc.free(libc.malloc(size))


def allocate():
    while not stop.is_set():
        junk = [{"n": i, "s": str(i)} for i in range(2000)]
        del junk


def spawner(first, n):
    try:
        for i in range(first, first + n):
            maps = {"uid_map": "0 0 1"} if i % 7 == 0 else {}
            flags = FLAGS[i % len(FLAGS)] | (lc.NEWUSER if maps else 0)
            pid, pidfd = lc.spawn(["/bin/sh", "-c", "exit %d" % (i % 100)], flags,
                                  pidfd=True, **maps)
            ready = select.select([pidfd], [], [], HANG)[0]
            os.close(pidfd)
            if not ready:
                hung.append(i)
                os.kill(pid, signal.SIGKILL)
            code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
            if ready and code != i % 100:
                wrong.append((i, code))
    except BaseException as exc:
        errors.append(repr(exc))


threads = [threading.Thread(target=f) for f in (hammer, hammer, allocate, allocate)]
threads += [threading.Thread(target=spawner, args=(1000 * k, 60)) for k in (1, 2)]
for t in threads:
    t.start()
start = time.monotonic()
try:
    spawner(0, N)
finally:
    for t in threads[4:]:
        t.join()
    stop.set()
    for t in threads[:4]:
        t.join()
print(json.dumps({"hung": hung, "wrong": wrong, "errors": errors,
                  "seconds": time.monotonic() - start}))

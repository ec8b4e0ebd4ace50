"""n spawns with uid maps (every other one refused) while another thread forks long-lived
processes that hold every fd: prints, as json, whether a spawn blocked for over 5 s (then
exits 3), the longest spawn and how many processes were forked.

Arguments: n."""

import json
import os
import signal
import sys
import threading
import time

import linux_clone

N = int(sys.argv[1])
sys.setswitchinterval(1e-4)
stop = threading.Event()
sleepers, started = [], [None]


def fork_sleepers():
    # A long-lived forked process (a multiprocessing worker) holds every fd the process had
    # at the fork, and never execs.
    while not stop.is_set() and len(sleepers) < 150:
        pid = os.fork()
        if pid == 0:
            time.sleep(30)
            os._exit(0)
        sleepers.append(pid)
        time.sleep(0.001)


def watchdog():
    while not stop.wait(0.1):
        if started[0] is not None and time.monotonic() - started[0] > 5:
            for pid in sleepers:
                os.kill(pid, signal.SIGKILL)
            print(json.dumps({"blocked": True}), flush=True)
            os._exit(3)


threads = [threading.Thread(target=fork_sleepers), threading.Thread(target=watchdog)]
for t in threads:
    t.start()
longest = 0.0
try:
    for i in range(N):
        started[0] = time.monotonic()
        kwargs = {"uid_map": "0 0 1"} if i % 2 else {"uid_map": "0 1000 10\n5 2000 10"}
        try:
            pid = linux_clone.spawn(["/bin/true"], linux_clone.NEWUSER, **kwargs)
        except OSError:
            pass
        else:
            os.waitpid(pid, 0)
        longest = max(longest, time.monotonic() - started[0])
        started[0] = None
finally:
    stop.set()
    for t in threads:
        t.join()
    for pid in sleepers:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
print(json.dumps({"blocked": False, "longest": longest, "forks": len(sleepers)}))

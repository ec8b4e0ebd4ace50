"""python -m linux_clone: run a command in new namespaces, as `unshare --fork` does."""

from __future__ import annotations

import argparse
import ctypes
import errno
import os
import signal
import socket
import sys
from typing import Callable, Iterable, List, Optional, Tuple

from . import (NEWCGROUP, NEWIPC, NEWNET, NEWNS, NEWPID, NEWTIME, NEWUSER, NEWUTS, clone,
               configure_loopback)

NAMESPACES = {
    "net": NEWNET, "uts": NEWUTS, "ipc": NEWIPC, "mount": NEWNS, "pid": NEWPID,
    "user": NEWUSER, "cgroup": NEWCGROUP, "time": NEWTIME,
}
# <sys/mount.h>
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 0x2, 0x4, 0x8, 0x4000, 0x40000
# Python ignores these at start-up; a command expects the default, as subprocess's
# restore_signals gives it (SIGXFZ exists on some systems only).
PYTHON_IGNORED = [getattr(signal, name) for name in ("SIGPIPE", "SIGXFZ", "SIGXFSZ")
                  if hasattr(signal, name)]
# Blocked while we wait, so that none of them ends the wait and leaves COMMAND running
# unseen: SIGINT and SIGTERM as unshare --fork blocks them, SIGQUIT as system() ignores it (a
# terminal sends ^C and ^\ to COMMAND too), SIGHUP as a hang-up reaches COMMAND as well.
WAIT_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGQUIT, signal.SIGHUP}


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m linux_clone", usage="%(prog)s [OPTION]... -- COMMAND [ARG]...",
        description="Run COMMAND in a child process in new namespaces, wait for it and exit "
                    "with its status (128+N when signal N killed it).  Mounts made in a new "
                    "mount namespace stay in it (/ is made private, as unshare(1) does).")
    for name in NAMESPACES:
        parser.add_argument(f"--{name}", action="store_true", help=f"a new {name} namespace")
    parser.add_argument("--loopback", action="store_true",
                        help="bring up lo in the new network namespace (implies --net)")
    parser.add_argument("--hostname", metavar="NAME",
                        help="set the hostname in the new UTS namespace (implies --uts)")
    parser.add_argument("--map-root-user", action="store_true",
                        help="map the current uid and gid to root in the new user namespace "
                             "(implies --user)")
    parser.add_argument("--mount-proc", action="store_true",
                        help="mount a new /proc (implies --mount)")
    parser.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARG...]",
                        help="the program to run (searched in PATH) and its arguments")
    args = parser.parse_args(argv)
    if args.command[:1] == ["--"]:
        del args.command[0]
    if not args.command:
        parser.error("a COMMAND is required")
    args.net |= args.loopback
    args.uts |= args.hostname is not None
    args.user |= args.map_root_user
    args.mount |= args.mount_proc
    return args


def mount(source: str, target: str, fstype: Optional[str], flags: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                           ctypes.c_void_p]
    if libc.mount(source.encode(), target.encode(), fstype and fstype.encode(), flags,
                  None) == -1:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), target)


def child(args: argparse.Namespace, mask: Iterable[int]) -> int:
    """Set up the new namespaces from inside, then become COMMAND."""
    for signum in PYTHON_IGNORED:
        signal.signal(signum, signal.SIG_DFL)
    for signum in WAIT_SIGNALS:
        # A ^C before the exec ends the child as it would end COMMAND, without a traceback.
        if callable(signal.getsignal(signum)):
            signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    steps: List[Tuple[str, Callable[[], object]]] = []
    if args.mount:
        # As unshare(1) does: where / is shared (systemd makes it so), mounts made in the new
        # namespace would otherwise propagate back to the one we came from.
        steps.append(("make / private", lambda: mount("none", "/", None, MS_REC | MS_PRIVATE)))
    if args.mount_proc:
        steps.append(("mount /proc", lambda: mount("proc", "/proc", "proc",
                                                   MS_NOSUID | MS_NODEV | MS_NOEXEC)))
    if args.loopback:
        steps.append(("bring up lo", configure_loopback))
    if args.hostname is not None:
        steps.append(("set the hostname", lambda: socket.sethostname(args.hostname)))
    for what, step in steps:
        try:
            step()
        except OSError as exc:
            print(f"linux_clone: {what}: {exc.strerror}", file=sys.stderr)
            return 1
    try:
        os.execvp(args.command[0], args.command)
    except OSError as exc:
        print(f"linux_clone: {args.command[0]}: {exc.strerror}", file=sys.stderr)
        # As the shells and util-linux do: 127 when there is no such program, 126 otherwise.
        return 127 if exc.errno in (errno.ENOENT, errno.ENOTDIR) else 126


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    flags = int(signal.SIGCHLD)
    for name, flag in NAMESPACES.items():
        if getattr(args, name):
            flags |= flag
    maps = {}
    if args.map_root_user:
        maps = dict(uid_map=f"0 {os.geteuid()} 1", gid_map=f"0 {os.getegid()} 1",
                    setgroups="deny")
    # Blocked before the clone, so that the child starts with them blocked too and unblocks
    # them once it is ready to become COMMAND.  An inherited SIG_IGN for SIGCHLD would reap
    # COMMAND before we could read its status; unshare(1) resets it for COMMAND too.
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, WAIT_SIGNALS)
    sigchld = signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    try:
        pid = clone(lambda: child(args, mask), 0, flags, **maps)
    except OSError as exc:
        print(f"linux_clone: clone: {exc.strerror}", file=sys.stderr)
        return 1
    else:
        _, status = os.waitpid(pid, 0)  # type: ignore[arg-type]
    finally:
        signal.signal(signal.SIGCHLD, sigchld)
        # What came while we waited was for the wait, not for our caller (unshare(1) exits
        # with them still blocked).
        while signal.sigtimedwait(WAIT_SIGNALS - mask, 0) is not None:
            pass
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


if __name__ == "__main__":
    sys.exit(main())

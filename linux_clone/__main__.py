"""python -m linux_clone: run a command in new namespaces, as `unshare --fork` does."""

from __future__ import annotations

import argparse
import ctypes
import errno
import os
import signal
import socket
import sys
from typing import Any, Callable, Dict, List, Optional, Tuple

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


def child(args: argparse.Namespace, saved_handlers: Dict[signal.Signals, Any]) -> int:
    """Set up the new namespaces from inside, then become COMMAND."""
    for signum, handler in saved_handlers.items():
        signal.signal(signum, handler)
    for signum in PYTHON_IGNORED:
        signal.signal(signum, signal.SIG_DFL)
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
    # As system() does: ^C and ^\ are for COMMAND while we wait for it.  An inherited
    # SIG_IGN for SIGCHLD would reap it before we could read its status.
    wanted = {signal.SIGINT: signal.SIG_IGN, signal.SIGQUIT: signal.SIG_IGN,
              signal.SIGCHLD: signal.SIG_DFL}
    saved = {signum: signal.signal(signum, handler) for signum, handler in wanted.items()}
    try:
        pid = clone(lambda: child(args, saved), 0, flags, **maps)
    except OSError as exc:
        print(f"linux_clone: clone: {exc.strerror}", file=sys.stderr)
        return 1
    else:
        _, status = os.waitpid(pid, 0)  # type: ignore[arg-type]
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


if __name__ == "__main__":
    sys.exit(main())

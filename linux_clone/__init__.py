"""Linux namespaces from Python: clone, clone3, unshare, setns, pivot_root, kcmp, the nsfs
ioctls and bringing up `lo` -- a port of Perl's Linux::Clone."""

from __future__ import annotations

import enum
import os
import signal
from typing import Callable, Iterable, Optional, Sequence, Tuple, Union

from . import _core
from ._core import (
    configure_loopback,
    kcmp,
    ns_get_nstype,
    ns_get_owner_uid,
    ns_get_parent,
    ns_get_userns,
    pidfd_open,
    pivot_root,
    setns,
    unshare,
)

CloneFlag = enum.IntFlag("CloneFlag", _core.CLONE_FLAGS, module=__name__)
CloneFlag.__doc__ = """The CLONE_* flags of <sched.h>, under the names of Perl's Linux::Clone.

CSIGNAL is the mask of the exit signal in clone()'s flags; NEWTIME shares its bit 0x80, which
no signal number uses, so clone() reads 0x80 as NEWTIME."""
globals().update(CloneFlag.__members__)
globals().update({"CLONE_" + name: member for name, member in CloneFlag.__members__.items()})
_core._register_nstypes(CloneFlag)

globals().update(_core.KCMP_TYPES)
globals().update(_core.NS_IOCTLS)
NS_OWNER_UID = _core.NS_IOCTLS["NS_GET_OWNER_UID"]  # the name the Perl documentation uses
WALL = _core.WAIT_ALL  # __WALL, for os.waitpid on a child whose exit signal is not SIGCHLD

IdMap = Union[str, Iterable[Tuple[int, int, int]]]


def _map_text(idmap: IdMap) -> bytes:
    """The uid_map/gid_map text for "inner outer count" lines or (inner, outer, count) tuples."""
    if isinstance(idmap, str):
        lines = [line.split() for line in idmap.strip().splitlines()]
    else:
        lines = [list(entry) for entry in idmap]
    if not lines:
        raise ValueError("an id map needs at least one line")
    out = []
    for fields in lines:
        if len(fields) != 3:
            raise ValueError(f"an id map line is 'inner outer count', not {fields!r}")
        numbers = [int(field) for field in fields]
        if any(n < 0 or n > 0xFFFFFFFF for n in numbers) or numbers[2] == 0:
            raise ValueError(f"id map line out of range: {fields!r}")
        out.append("%d %d %d\n" % tuple(numbers))
    return "".join(out).encode()


def _write_proc(pid: int, name: str, data: bytes) -> None:
    path = f"/proc/{pid}/{name}"
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _with_maps(start: Callable[[Callable[[], object]], object], func: Callable[[], object],
               uid_map: Optional[IdMap], gid_map: Optional[IdMap],
               setgroups: Optional[str]) -> object:
    """Start a child with `start`, write its id maps from the parent while it waits on a
    pipe, then let it run func.  A failure kills and reaps the child before it raises."""
    if uid_map is None and gid_map is None and setgroups is None:
        return start(func)
    if setgroups not in (None, "allow", "deny"):
        raise ValueError("setgroups must be 'allow', 'deny' or None")
    uid_text = None if uid_map is None else _map_text(uid_map)
    gid_text = None if gid_map is None else _map_text(gid_map)
    rfd, wfd = os.pipe2(os.O_CLOEXEC)

    def child() -> object:
        os.close(wfd)
        go = os.read(rfd, 1)
        os.close(rfd)
        if go != b"1":
            os._exit(127)
        return func()

    try:
        result = start(child)
    except BaseException:
        os.close(rfd)
        os.close(wfd)
        raise
    os.close(rfd)
    pid = result[0] if isinstance(result, tuple) else result
    try:
        if uid_text is not None:
            _write_proc(pid, "uid_map", uid_text)
        if setgroups is not None:
            _write_proc(pid, "setgroups", setgroups.encode())
        if gid_text is not None:
            _write_proc(pid, "gid_map", gid_text)
        os.write(wfd, b"1")
    except BaseException:
        os.close(wfd)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, WALL)
        if isinstance(result, tuple):
            os.close(result[1])
        raise
    os.close(wfd)
    return result


def clone(func: Callable[[], object], stack_size: int = 0, flags: int = signal.SIGCHLD, *,
          uid_map: Optional[IdMap] = None, gid_map: Optional[IdMap] = None,
          setgroups: Optional[str] = None) -> Union[int, Tuple[int, int]]:
    """Create a child process as clone(2) does and call func() in it; return the child's pid.

    func: called with no arguments in the child; its return value (None -> 0) is the exit
        status, an uncaught exception prints its traceback and exits 1, SystemExit acts as at
        the top level of a script.
    stack_size: 0 runs the child on a copy of the caller's stack, as after fork(); else the
        size of a dedicated stack (rounded up to pages, with a guard page).
    flags: CloneFlag namespace and sharing bits, or'ed with the exit signal (low byte,
        SIGCHLD by default); with PIDFD the result is (pid, pidfd).
    uid_map, gid_map: with NEWUSER, the child's id maps ("inner outer count" lines or
        (inner, outer, count) tuples), written by the parent before func runs.
    setgroups: "deny" or "allow", written to /proc/<pid>/setgroups before gid_map.
    """
    return _with_maps(lambda f: _core.clone(f, stack_size, flags), func,  # type: ignore
                      uid_map, gid_map, setgroups)


__all__ = [
    "CloneFlag", "IdMap", "WALL", "NS_OWNER_UID",
    "clone", "configure_loopback", "kcmp", "ns_get_nstype", "ns_get_owner_uid",
    "ns_get_parent", "ns_get_userns", "pidfd_open", "pivot_root", "setns", "unshare",
    *CloneFlag.__members__,
    *("CLONE_" + name for name in CloneFlag.__members__),
    *_core.KCMP_TYPES, *_core.NS_IOCTLS,
]

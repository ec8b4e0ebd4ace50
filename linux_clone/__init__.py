"""Linux namespaces from Python: clone, clone3, unshare, setns, pivot_root, kcmp, the nsfs
ioctls and bringing up `lo` -- a port of Perl's Linux::Clone."""

from __future__ import annotations

__version__ = "0.2.0.dev0"  # the one source of the version: pyproject.toml reads it here

import os
# The C halves of operator, signal and threading: signal.py builds three enums at import.
from _operator import index as _index
from _signal import SIGCHLD as _SIGCHLD
from _thread import allocate_lock as _allocate_lock

from . import _core
from ._core import (
    configure_loopback,
    entered,
    kcmp,
    ns_get_owner_uid,
    ns_get_parent,
    ns_get_userns,
    pidfd_open,
    setns,
    unshare,
)

globals().update(_core.KCMP_TYPES)
globals().update(_core.NS_IOCTLS)
NS_OWNER_UID = _core.NS_IOCTLS["NS_GET_OWNER_UID"]  # the name the Perl documentation uses
# __WALL, for os.waitpid on a child whose exit signal is not SIGCHLD
WALL = _core.WAIT_FLAGS["WALL"]
_VFORK, _FILES, _PIDFD = (_core.CLONE_FLAGS[name] for name in ("VFORK", "FILES", "PIDFD"))

TYPE_CHECKING = False  # typing costs milliseconds at import; the annotations are strings
if TYPE_CHECKING:
    from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Tuple, Union

    from ._core import _Ns

    IdMap = Union[str, Iterable[Tuple[int, int, int]]]

# Made on first use (PEP 562), so that `import linux_clone` and the CLI need neither enum
# (with functools and collections: most of the import's time on 3.11) nor threading:
# CloneFlag with its members and CLONE_* aliases, ns_get_nstype (its answers are CloneFlag
# members), _process's names and IdMap (it needs typing).
_FLAG_NAMES = {"CloneFlag", "ns_get_nstype", *_core.CLONE_FLAGS,
               *("CLONE_" + name for name in _core.CLONE_FLAGS)}
_PROCESS_NAMES = {"Popen", "run", "PIPE", "DEVNULL", "STDOUT"}
_flag_lock = _allocate_lock()  # one CloneFlag class, even when threads race to make it


def __getattr__(name: str) -> object:
    if name in _FLAG_NAMES:
        with _flag_lock:
            if "CloneFlag" not in globals():
                _make_clone_flag()
        return globals()[name]
    if name in _PROCESS_NAMES:
        from . import _process

        value = globals()[name] = getattr(_process, name)
        return value
    if name == "IdMap":
        from typing import Iterable, Tuple, Union

        global IdMap
        IdMap = Union[str, Iterable[Tuple[int, int, int]]]
        return IdMap
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _make_clone_flag() -> None:
    import enum

    flag = enum.IntFlag("CloneFlag", _core.CLONE_FLAGS, module=__name__)
    flag.__doc__ = """The CLONE_* flags of <sched.h>, under the names of Perl's Linux::Clone.

CSIGNAL is the mask of the exit signal in clone()'s flags; NEWTIME shares its bit 0x80, which
no signal number uses, so clone() reads 0x80 as NEWTIME."""
    _core._register_nstypes(flag)
    globals().update(flag.__members__)
    globals().update({"CLONE_" + name: member for name, member in flag.__members__.items()})
    globals()["ns_get_nstype"] = _core.ns_get_nstype
    globals()["CloneFlag"] = flag  # last: its presence says the rest is there


def pivot_root(new_root: "str | bytes | os.PathLike[str] | os.PathLike[bytes]",
               old_root: "str | bytes | os.PathLike[str] | os.PathLike[bytes]") -> None:
    """Make `new_root` the root of the calling process's mount namespace, as pivot_root(2).

    new_root: the new root, a mount point (str, bytes or os.PathLike).
    old_root: where the old root is mounted, at or under new_root.
    What this package loads on first use (CloneFlag, Popen/run and subprocess) is loaded
    first, where it can be: once the old root is gone, the standard library may be out of
    reach.  A load that fails (no fd left, the library already gone) does not stop the call.
    """
    try:
        __getattr__("CloneFlag")
        __getattr__("Popen")
        import subprocess  # noqa: F401  (Popen and run raise its exceptions)
    except (ImportError, OSError):
        pass
    _core.pivot_root(new_root, old_root)


def __dir__() -> list[str]:
    # The API, without the modules and names the implementation uses.
    return sorted({*__all__, *(name for name in globals() if name.startswith("__"))})


def get_include() -> str:
    """The directory of linux_clone.h, which a Cython module that cimports linux_clone._core
    includes: put it on that module's C include path (as numpy.get_include())."""
    return os.path.dirname(__file__)


def _map_text(idmap: IdMap, name: str = "id map") -> bytes:
    """The uid_map/gid_map text for "inner outer count" lines or (inner, outer, count) tuples
    of ints (bools are refused: an id of True is a mistake); anything else is a TypeError, a
    number out of range a ValueError.  `name` is the argument's name, for the messages."""
    from collections.abc import Mapping  # here, not at import: collections takes milliseconds

    if isinstance(idmap, str):
        lines = [[_map_field(field, name) for field in line.split()]
                 for line in idmap.strip().splitlines()]
    elif isinstance(idmap, (bytes, bytearray, memoryview, Mapping)) or not hasattr(
            idmap, "__iter__"):
        raise TypeError(f"{name} must be 'inner outer count' lines (a str) or (inner, outer, "
                        f"count) tuples of ints, not {type(idmap).__name__}")
    else:
        lines = [_map_entry(entry, name) for entry in idmap]
    if not lines:
        raise ValueError(f"{name} needs at least one line")
    out = []
    for numbers in lines:
        if len(numbers) != 3:
            raise ValueError(f"an id map line is 'inner outer count', not {numbers!r}")
        if any(n < 0 or n > 0xFFFFFFFF for n in numbers) or numbers[2] == 0:
            raise ValueError(f"id map line out of range: {numbers!r}")
        out.append("%d %d %d\n" % tuple(numbers))
    return "".join(out).encode()


def _map_field(field: str, name: str) -> int:
    if not (field.isascii() and field.isdigit()):  # as the kernel reads them, no "+1", "1_0"
        raise ValueError(f"{name}: {field!r} is not a decimal number")
    return int(field)


def _map_entry(entry: object, name: str) -> list:
    if not isinstance(entry, (tuple, list)):
        raise TypeError(f"{name} entries must be (inner, outer, count) tuples of ints, "
                        f"not {type(entry).__name__}")
    numbers = []
    for field in entry:
        if isinstance(field, bool) or not hasattr(type(field), "__index__"):
            raise TypeError(f"{name} ids must be ints, not {type(field).__name__}")
        numbers.append(_index(field))
    return numbers


# spawn's before_start writes the maps with it too: no Python code between open and close.
_write_maps = _core._write_maps


def _check_setgroups(setgroups: Optional[str]) -> None:
    if setgroups not in (None, "allow", "deny"):
        raise ValueError("setgroups must be 'allow', 'deny' or None")


def _id_maps(func: Callable[[], object], uid_map: Optional[IdMap], gid_map: Optional[IdMap],
             setgroups: Optional[str], flags: int) -> Tuple[Optional[bytes], Optional[str],
                                                             Optional[bytes]]:
    """What clone() and clone3() with id maps refuse before any child, then the maps as
    _core takes them: the uid_map text, setgroups, the gid_map text.
    flags: the clone flags, converted already."""
    if not callable(func):
        raise TypeError(f"func must be callable, not {type(func).__name__}")
    _check_setgroups(setgroups)
    if flags & _VFORK:
        raise ValueError("VFORK suspends the caller until the child execs or exits, so it "
                         "cannot write the child's id maps: drop VFORK or the maps")
    if flags & _FILES:
        # The child would wait on a socket whose other end it cannot close (the fd table is
        # the caller's too): a parent that dies before writing the maps would leave it waiting.
        raise ValueError("FILES shares the fd table with the caller, so the child cannot wait "
                         "for its id maps: drop FILES or the maps")
    return (None if uid_map is None else _map_text(uid_map), setgroups,
            None if gid_map is None else _map_text(gid_map))


def clone(func: Callable[[], object], stack_size: int = 0, flags: int = _SIGCHLD, *,
          uid_map: Optional[IdMap] = None, gid_map: Optional[IdMap] = None,
          setgroups: Optional[str] = None, pidfd: bool = False) -> Union[int, Tuple[int, int]]:
    """Create a child process as clone(2) does and call func() in it; return the child's pid.

    func: called with no arguments in the child; its return value (None -> 0) is the exit
        status, an uncaught exception prints its traceback and exits 1, SystemExit acts as at
        the top level of a script (ints as sys.exit takes them: 2**63 exits 255).  Then, as
        a multiprocessing child of CPython 3.13+, the child joins its non-daemon threads,
        runs the atexit handlers it registered (not the parent's: they are dropped before
        func), flushes sys.stdout and sys.stderr, and _exits.
    stack_size: 0 runs the child on a copy of the caller's stack, as after fork(); else the
        size of a dedicated stack, at least _core.MIN_STACK_SIZE (1.75-6.25 MiB by CPython
        version; rounded up to pages, with a guard page); the interpreter's recursion
        limits are fitted to it, with a reserve for the parser's own limits.
    flags: CloneFlag namespace and sharing bits, or'ed with the exit signal (low byte,
        SIGCHLD by default); PIDFD acts as pidfd=True.  With other threads
        running, only SIGCHLD and no sharing flag (FILES, FS, SYSVSEM, IO, PARENT): the child
        is then cloned by a forked helper, so it inherits no lock another thread holds;
        anything else is a RuntimeError.
    uid_map, gid_map: with NEWUSER, the child's id maps ("inner outer count" lines or
        (inner, outer, count) tuples), written by the parent before func runs (not with
        VFORK or FILES: ValueError).
    setgroups: "deny" or "allow", written to /proc/<pid>/setgroups before gid_map.
    pidfd: True returns (pid, pidfd), the pidfd close-on-exec.  PIDFD in flags does too,
        but type checkers see only this keyword: to them that result is an int.
    """
    if pidfd:
        flags = _index(flags) | _PIDFD
    if uid_map is None and gid_map is None and setgroups is None:
        return _core.clone(func, stack_size, flags)
    flags = _index(flags)  # once: _core takes an int as it is
    maps = _id_maps(func, uid_map, gid_map, setgroups, flags)
    child: list[int] = []  # the child's pid and pidfd, once its maps are written
    try:
        return _core.clone(func, stack_size, flags, maps=maps, into=child)
    except BaseException:
        # A signal handler's exception (KeyboardInterrupt) between _core's return and ours
        # would otherwise leave the child running, its pid and pidfd lost.
        _core._discard(child)
        raise


def clone3(func: Callable[[], object], flags: int = 0, *, exit_signal: int = _SIGCHLD,
           stack_size: int = 0, cgroup: Optional[_Ns] = None, set_tid: Sequence[int] = (),
           uid_map: Optional[IdMap] = None, gid_map: Optional[IdMap] = None,
           setgroups: Optional[str] = None, pidfd: bool = False) -> Union[int, Tuple[int, int]]:
    """Create a child process as clone3(2) does and call func() in it; return its pid.

    func, stack_size, uid_map, gid_map, setgroups, pidfd: as for clone().
    flags: CloneFlag bits without an exit signal (ValueError; NEWTIME and CLEAR_SIGHAND are
        allowed here); PIDFD acts as pidfd=True.
    exit_signal: the signal the parent gets when the child exits (0 for none).
    cgroup: an fd or path of a cgroup v2 directory to start the child in (CLONE_INTO_CGROUP);
        the fd opened for a path is closed, in the child too.
    set_tid: the pid to use in each pid namespace level, innermost first.
    A kernel without clone3 (before 5.3) raises OSError(ENOSYS).
    """
    if pidfd:
        flags = _index(flags) | _PIDFD
    if uid_map is None and gid_map is None and setgroups is None:
        return _core.clone3(func, flags, exit_signal=exit_signal,
                            stack_size=stack_size, cgroup=cgroup, set_tid=set_tid)
    flags = _index(flags)  # once: _core takes an int as it is
    maps = _id_maps(func, uid_map, gid_map, setgroups, flags)
    child: list[int] = []  # as in clone()
    try:
        return _core.clone3(func, flags, exit_signal=exit_signal, stack_size=stack_size,
                            cgroup=cgroup, set_tid=set_tid, maps=maps, into=child)
    except BaseException:
        _core._discard(child)
        raise


def spawn(argv: Sequence[Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]],
          flags: int = 0, *, env: Optional[Mapping[str, str]] = None,
          cwd: Optional[Union[str, bytes, "os.PathLike[str]"]] = None,
          uid_map: Optional[IdMap] = None, gid_map: Optional[IdMap] = None,
          hostname: Optional[str] = None, loopback: bool = False,
          pidfd: bool = False, stdin: object = None, stdout: object = None,
          stderr: object = None, pass_fds: Iterable[int] = (), close_fds: bool = True,
          start_new_session: bool = False, umask: int = -1) -> Union[int, Tuple[int, int]]:
    """Run a program in new namespaces as posix_spawn runs one: CLONE_VM|CLONE_VFORK and a
    child that makes only syscalls, then execve.  Return its pid ((pid, pidfd) with pidfd).

    argv: the program (searched in PATH unless it has a slash) and its arguments.
    flags: CloneFlag NEW* bits; NEWTIME needs Linux 6.2, where execve enters the new time
        namespace (OSError EINVAL before).
    env: the environment (default: the process's, os.environ, as subprocess's child gets it);
        cwd: the directory to run in.
    uid_map, gid_map: with NEWUSER, the id maps, written while the child waits ("deny" goes
        to setgroups first when the caller is not root, as the kernel then requires); a
        failed write is an OSError whose filename is the /proc/<pid>/ file.
    hostname: set in the new UTS namespace (needs NEWUTS), at most 64 bytes; loopback: bring
        up lo (needs NEWNET).
    stdin, stdout, stderr: an fd, a file object or DEVNULL (stderr also STDOUT), as for
        subprocess.Popen; PIPE needs Popen.  pass_fds, close_fds (fds 3 and up but pass_fds
        do not reach the program), start_new_session (setsid), umask: as for subprocess.
    The program starts with the caller's signal mask, and SIG_DFL for the signals the caller
    catches and for SIGPIPE and SIGXFSZ (as subprocess gives them).  A failure in the child
    raises the OSError it was (errno kept) in the parent: filename is argv[0] for exec, cwd
    for chdir, and the message names any other step.
    """
    child: list[int] = []  # the child's pid and pidfd, once it exists
    opened: list[int] = []  # the fds opened for its stdio (DEVNULL), until closed
    try:
        if (uid_map is None and gid_map is None and stdin is None and stdout is None
                and stderr is None):
            # Straight to the C call: _spawn's frame and its **options dict cost ~4 us a
            # call (CPython 3.12, the benchmark's machine), a third of spawn's overhead over
            # the C loop.
            return _core.spawn(argv, flags, env=env, cwd=cwd, hostname=hostname,
                               loopback=loopback, pidfd=pidfd, pass_fds=pass_fds,
                               close_fds=close_fds, start_new_session=start_new_session,
                               umask=umask, into=child)
        return _spawn(child, opened, argv, flags, env=env, cwd=cwd, uid_map=uid_map,
                      gid_map=gid_map, hostname=hostname, loopback=loopback, pidfd=pidfd,
                      stdin=stdin, stdout=stdout, stderr=stderr, pass_fds=pass_fds,
                      close_fds=close_fds, start_new_session=start_new_session, umask=umask)
    except BaseException:
        # A signal handler's exception (KeyboardInterrupt) between the clone and our return
        # would otherwise leave the child running, its pid and pidfd lost (or an fd open).
        _core._discard(child, opened)
        raise


def _spawn(child: list[int], opened: list[int],
           argv: Sequence[Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]],
           flags: int, *, uid_map: Optional[IdMap] = None, gid_map: Optional[IdMap] = None,
           stdin: object = None, stdout: object = None, stderr: object = None,
           **options: Any) -> Union[int, Tuple[int, int]]:
    """spawn(), putting the child's pid and pidfd in `child` as soon as it exists and the fds
    it opens for the child's stdio in `opened` (closed again here), for the caller to
    _core._discard if it cannot hand them on (Popen uses it too)."""
    before_start = None
    if uid_map is not None or gid_map is not None:
        uid_text = None if uid_map is None else _map_text(uid_map, "uid_map")
        gid_text = None if gid_map is None else _map_text(gid_map, "gid_map")
        setgroups = "deny" if gid_text is not None and os.geteuid() != 0 else None

        def before_start(pid: int) -> None:
            _write_maps(pid, uid_text, setgroups, gid_text)

    try:
        stdio = None
        if stdin is not None or stdout is not None or stderr is not None:
            from ._process import _Handles

            handles = _Handles(opened)
            handles.resolve(stdin, stdout, stderr, pipes=False)
            stdio = handles.child
        return _core.spawn(argv, flags, before_start=before_start, stdio=stdio, into=child,
                           **options)
    finally:
        _core._close(opened)


__all__ = [
    "CloneFlag", "IdMap", "WALL", "NS_OWNER_UID",
    "clone", "clone3", "spawn", "entered", "configure_loopback", "kcmp", "ns_get_nstype",
    "ns_get_owner_uid", "ns_get_parent", "ns_get_userns", "pidfd_open", "pivot_root", "setns",
    "unshare",
    "Popen", "run", "PIPE", "DEVNULL", "STDOUT", "get_include",
    *_core.CLONE_FLAGS,
    *("CLONE_" + name for name in _core.CLONE_FLAGS),
    *_core.KCMP_TYPES, *_core.NS_IOCTLS,
]

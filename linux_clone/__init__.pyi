"""Type stubs for linux_clone."""

import enum
import os
from types import TracebackType
from typing import (Callable, Iterable, Iterator, Literal, Mapping, Optional, Protocol,
                    Sequence, Tuple, Type, TypeVar, Union, overload)

# Type checkers read typing_extensions from the standard library stubs they bundle (typeshed),
# so this needs no typing_extensions installed; disjoint_base is there from mypy 1.18.
from typing_extensions import disjoint_base

from ._process import (
    DEVNULL as DEVNULL, PIPE as PIPE, STDOUT as STDOUT, Popen as Popen, run as run,
)

_Fd = Union[int, "_HasFileno"]
_Path = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]
_Ns = Union[_Fd, _Path]
IdMap = Union[str, Iterable[Tuple[int, int, int]]]
"""An id map for uid_map= and gid_map=: "inner outer count" lines, or (inner, outer, count)
tuples of ints."""

__version__: str

__all__ = [
    "CloneFlag", "IdMap", "WALL", "NS_OWNER_UID", "clone", "clone3", "spawn", "entered",
    "configure_loopback", "kcmp", "ns_get_nstype", "ns_get_owner_uid", "ns_get_parent",
    "ns_get_userns", "pidfd_open", "pivot_root", "setns", "unshare", "FILES", "FS", "NEWNS",
    "VM", "THREAD", "SIGHAND", "SYSVSEM", "NEWUSER", "NEWPID", "NEWUTS", "NEWIPC", "NEWNET",
    "NEWCGROUP", "NEWTIME", "PTRACE", "VFORK", "SETTLS", "PARENT_SETTID", "CHILD_SETTID",
    "CHILD_CLEARTID", "PIDFD", "DETACHED", "UNTRACED", "IO", "PARENT", "CLEAR_SIGHAND",
    "INTO_CGROUP", "CSIGNAL", "CLONE_FILES", "CLONE_FS", "CLONE_NEWNS", "CLONE_VM",
    "CLONE_THREAD", "CLONE_SIGHAND", "CLONE_SYSVSEM", "CLONE_NEWUSER", "CLONE_NEWPID",
    "CLONE_NEWUTS", "CLONE_NEWIPC", "CLONE_NEWNET", "CLONE_NEWCGROUP", "CLONE_NEWTIME",
    "CLONE_PTRACE", "CLONE_VFORK", "CLONE_SETTLS", "CLONE_PARENT_SETTID", "CLONE_CHILD_SETTID",
    "CLONE_CHILD_CLEARTID", "CLONE_PIDFD", "CLONE_DETACHED", "CLONE_UNTRACED", "CLONE_IO",
    "CLONE_PARENT", "CLONE_CLEAR_SIGHAND", "CLONE_INTO_CGROUP", "CLONE_CSIGNAL", "KCMP_FILE",
    "KCMP_VM", "KCMP_FILES", "KCMP_FS", "KCMP_SIGHAND", "KCMP_IO", "KCMP_SYSVSEM",
    "KCMP_EPOLL_TFD", "NS_GET_USERNS", "NS_GET_PARENT", "NS_GET_NSTYPE", "NS_GET_OWNER_UID",
    "Popen", "run", "PIPE", "DEVNULL", "STDOUT", "get_include",
]

class _HasFileno(Protocol):
    def fileno(self) -> int: ...

_T_co = TypeVar("_T_co", covariant=True)

class _Argv(Protocol[_T_co]):
    """A list or tuple of arguments: a sequence whose __contains__ takes any object, which
    str and bytes (sequences of themselves) do not have -- so that spawn("true"), a program
    subprocess would take, is an error to type checkers too.  (No index() or count(): their
    Any parameters made mypy 2.4 accept a list literal of any item type.)"""
    def __getitem__(self, index: int, /) -> _T_co: ...
    def __contains__(self, value: object, /) -> bool: ...
    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[_T_co]: ...

class CloneFlag(enum.IntFlag):
    FILES = 0x400
    FS = 0x200
    NEWNS = 0x20000
    VM = 0x100
    THREAD = 0x10000
    SIGHAND = 0x800
    SYSVSEM = 0x40000
    NEWUSER = 0x10000000
    NEWPID = 0x20000000
    NEWUTS = 0x4000000
    NEWIPC = 0x8000000
    NEWNET = 0x40000000
    NEWCGROUP = 0x2000000
    NEWTIME = 0x80
    PTRACE = 0x2000
    VFORK = 0x4000
    SETTLS = 0x80000
    PARENT_SETTID = 0x100000
    CHILD_SETTID = 0x1000000
    CHILD_CLEARTID = 0x200000
    PIDFD = 0x1000
    DETACHED = 0x400000
    UNTRACED = 0x800000
    IO = 0x80000000
    PARENT = 0x8000
    CLEAR_SIGHAND = 0x100000000
    INTO_CGROUP = 0x200000000
    CSIGNAL = 0xff

FILES: CloneFlag
FS: CloneFlag
NEWNS: CloneFlag
VM: CloneFlag
THREAD: CloneFlag
SIGHAND: CloneFlag
SYSVSEM: CloneFlag
NEWUSER: CloneFlag
NEWPID: CloneFlag
NEWUTS: CloneFlag
NEWIPC: CloneFlag
NEWNET: CloneFlag
NEWCGROUP: CloneFlag
NEWTIME: CloneFlag
PTRACE: CloneFlag
VFORK: CloneFlag
SETTLS: CloneFlag
PARENT_SETTID: CloneFlag
CHILD_SETTID: CloneFlag
CHILD_CLEARTID: CloneFlag
PIDFD: CloneFlag
DETACHED: CloneFlag
UNTRACED: CloneFlag
IO: CloneFlag
PARENT: CloneFlag
CLEAR_SIGHAND: CloneFlag
INTO_CGROUP: CloneFlag
CSIGNAL: CloneFlag
CLONE_FILES: CloneFlag
CLONE_FS: CloneFlag
CLONE_NEWNS: CloneFlag
CLONE_VM: CloneFlag
CLONE_THREAD: CloneFlag
CLONE_SIGHAND: CloneFlag
CLONE_SYSVSEM: CloneFlag
CLONE_NEWUSER: CloneFlag
CLONE_NEWPID: CloneFlag
CLONE_NEWUTS: CloneFlag
CLONE_NEWIPC: CloneFlag
CLONE_NEWNET: CloneFlag
CLONE_NEWCGROUP: CloneFlag
CLONE_NEWTIME: CloneFlag
CLONE_PTRACE: CloneFlag
CLONE_VFORK: CloneFlag
CLONE_SETTLS: CloneFlag
CLONE_PARENT_SETTID: CloneFlag
CLONE_CHILD_SETTID: CloneFlag
CLONE_CHILD_CLEARTID: CloneFlag
CLONE_PIDFD: CloneFlag
CLONE_DETACHED: CloneFlag
CLONE_UNTRACED: CloneFlag
CLONE_IO: CloneFlag
CLONE_PARENT: CloneFlag
CLONE_CLEAR_SIGHAND: CloneFlag
CLONE_INTO_CGROUP: CloneFlag
CLONE_CSIGNAL: CloneFlag

KCMP_FILE: int
KCMP_VM: int
KCMP_FILES: int
KCMP_FS: int
KCMP_SIGHAND: int
KCMP_IO: int
KCMP_SYSVSEM: int
KCMP_EPOLL_TFD: int
NS_GET_USERNS: int
NS_GET_PARENT: int
NS_GET_NSTYPE: int
NS_GET_OWNER_UID: int
NS_OWNER_UID: int
WALL: int

def get_include() -> str: ...
def unshare(flags: int) -> None: ...
def setns(ns: _Ns, nstype: int = 0) -> None: ...
def pivot_root(new_root: _Path, old_root: _Path) -> None: ...
def kcmp(pid1: int, pid2: int, type: int, idx1: int = 0,
         idx2: Union[int, Tuple[int, int, int]] = 0) -> int: ...
def configure_loopback() -> None: ...
def ns_get_userns(ns: _Ns) -> int: ...
def ns_get_parent(ns: _Ns) -> int: ...
def ns_get_nstype(ns: _Ns) -> CloneFlag: ...
def ns_get_owner_uid(ns: _Ns) -> int: ...
def pidfd_open(pid: int, flags: int = 0) -> int: ...

# clone, clone3 and spawn return (pid, pidfd) with pidfd=True, else the pid.  PIDFD in flags
# gives (pid, pidfd) too, but an or'ed int cannot show it to a type checker: these say int.
@overload
def clone(func: Callable[[], object], stack_size: int = 0, flags: int = ..., *,
          uid_map: Optional[IdMap] = None, gid_map: Optional[IdMap] = None,
          setgroups: Optional[str] = None, pidfd: Literal[False] = False) -> int: ...
@overload
def clone(func: Callable[[], object], stack_size: int = 0, flags: int = ..., *,
          uid_map: Optional[IdMap] = None, gid_map: Optional[IdMap] = None,
          setgroups: Optional[str] = None, pidfd: Literal[True]) -> Tuple[int, int]: ...
@overload
def clone(func: Callable[[], object], stack_size: int = 0, flags: int = ..., *,
          uid_map: Optional[IdMap] = None, gid_map: Optional[IdMap] = None,
          setgroups: Optional[str] = None, pidfd: bool) -> Union[int, Tuple[int, int]]: ...
@overload
def clone3(func: Callable[[], object], flags: int = 0, *, exit_signal: int = ...,
           stack_size: int = 0, cgroup: Optional[_Ns] = None, set_tid: Sequence[int] = (),
           uid_map: Optional[IdMap] = None, gid_map: Optional[IdMap] = None,
           setgroups: Optional[str] = None, pidfd: Literal[False] = False) -> int: ...
@overload
def clone3(func: Callable[[], object], flags: int = 0, *, exit_signal: int = ...,
           stack_size: int = 0, cgroup: Optional[_Ns] = None, set_tid: Sequence[int] = (),
           uid_map: Optional[IdMap] = None, gid_map: Optional[IdMap] = None,
           setgroups: Optional[str] = None, pidfd: Literal[True]) -> Tuple[int, int]: ...
@overload
def clone3(func: Callable[[], object], flags: int = 0, *, exit_signal: int = ...,
           stack_size: int = 0, cgroup: Optional[_Ns] = None, set_tid: Sequence[int] = (),
           uid_map: Optional[IdMap] = None, gid_map: Optional[IdMap] = None,
           setgroups: Optional[str] = None, pidfd: bool) -> Union[int, Tuple[int, int]]: ...
@overload
def spawn(argv: _Argv[_Path], flags: int = 0, *, env: Optional[Mapping[str, str]] = None,
          cwd: Optional[_Path] = None, uid_map: Optional[IdMap] = None,
          gid_map: Optional[IdMap] = None, hostname: Optional[str] = None,
          loopback: bool = False, pidfd: Literal[False] = False, stdin: Optional[_Fd] = None,
          stdout: Optional[_Fd] = None, stderr: Optional[_Fd] = None,
          pass_fds: Iterable[int] = (), close_fds: bool = True,
          start_new_session: bool = False, umask: int = -1) -> int: ...
@overload
def spawn(argv: _Argv[_Path], flags: int = 0, *, env: Optional[Mapping[str, str]] = None,
          cwd: Optional[_Path] = None, uid_map: Optional[IdMap] = None,
          gid_map: Optional[IdMap] = None, hostname: Optional[str] = None,
          loopback: bool = False, pidfd: Literal[True], stdin: Optional[_Fd] = None,
          stdout: Optional[_Fd] = None, stderr: Optional[_Fd] = None,
          pass_fds: Iterable[int] = (), close_fds: bool = True,
          start_new_session: bool = False, umask: int = -1) -> Tuple[int, int]: ...
@overload
def spawn(argv: _Argv[_Path], flags: int = 0, *, env: Optional[Mapping[str, str]] = None,
          cwd: Optional[_Path] = None, uid_map: Optional[IdMap] = None,
          gid_map: Optional[IdMap] = None, hostname: Optional[str] = None,
          loopback: bool = False, pidfd: bool, stdin: Optional[_Fd] = None,
          stdout: Optional[_Fd] = None, stderr: Optional[_Fd] = None,
          pass_fds: Iterable[int] = (), close_fds: bool = True,
          start_new_session: bool = False, umask: int = -1) -> Union[int, Tuple[int, int]]: ...

@disjoint_base
class entered:
    def __init__(self, ns: Optional[_Ns] = None, nstype: int = 0, *,
                 pid: Optional[int] = None) -> None: ...
    def __enter__(self) -> "entered": ...
    def __exit__(self, exc_type: Optional[Type[BaseException]],
                 exc: Optional[BaseException], tb: Optional[TracebackType]) -> None: ...

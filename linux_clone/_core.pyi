"""Type stubs for linux_clone._core, the private compiled module under the package: the
system calls as it takes them (ints as they are, the exit signal in clone()'s flags, stdio as
three fds) and the tables the package builds its names from."""

import enum
import os
from types import TracebackType
from typing import (Callable, Dict, Iterable, List, Mapping, Optional, Protocol, Sequence, Tuple,
                    Type, Union)

# As in __init__.pyi: type checkers read typing_extensions from the typeshed they bundle.
from typing_extensions import disjoint_base

class _HasFileno(Protocol):
    def fileno(self) -> int: ...

_Fd = Union[int, _HasFileno]
_Path = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]
_Ns = Union[_Fd, _Path]

CLONE_FLAGS: Dict[str, int]
KCMP_TYPES: Dict[str, int]
NS_IOCTLS: Dict[str, int]
WAIT_FLAGS: Dict[str, int]
MIN_STACK_SIZE: int
MAX_PID_NS_LEVEL: int
SPAWN_STACK_SIZE: int
HOST_NAME_MAX: int

def _register_nstypes(flag_type: Type[enum.IntFlag]) -> None: ...
def unshare(flags: int) -> None: ...
def setns(ns: _Ns, nstype: int = 0) -> None: ...
def pivot_root(new_root: _Path, old_root: _Path) -> None: ...
def kcmp(pid1: int, pid2: int, type: int, idx1: int = 0,
         idx2: Union[int, Tuple[int, int, int]] = 0) -> int: ...
def configure_loopback() -> None: ...
def ns_get_userns(ns: _Ns) -> int: ...
def ns_get_parent(ns: _Ns) -> int: ...
def ns_get_nstype(ns: _Ns) -> int: ...
def ns_get_owner_uid(ns: _Ns) -> int: ...
def pidfd_open(pid: int, flags: int = 0) -> int: ...

# (pid, pidfd) when flags has PIDFD (spawn: or pidfd=True), else the pid.
# maps: (uid_map text, setgroups, gid_map text), as linux_clone._id_maps makes them.
_Maps = Tuple[Optional[bytes], Optional[str], Optional[bytes]]
def clone(func: Callable[[], object], stack_size: int = 0, flags: int = ..., *,
          maps: Optional[_Maps] = None,
          into: Optional[List[int]] = None) -> Union[int, Tuple[int, int]]: ...
def clone3(func: Callable[[], object], flags: int = 0, *, exit_signal: int = ...,
           stack_size: int = 0, cgroup: Optional[_Ns] = None, set_tid: Sequence[int] = (),
           maps: Optional[_Maps] = None,
           into: Optional[List[int]] = None) -> Union[int, Tuple[int, int]]: ...
def _write_maps(pid: int, uid_text: Optional[bytes], setgroups: Optional[str],
                gid_text: Optional[bytes]) -> int: ...
def spawn(argv: Sequence[_Path], flags: int = 0, *, env: Optional[Mapping[str, str]] = None,
          cwd: Optional[_Path] = None, hostname: Optional[str] = None, loopback: bool = False,
          pidfd: bool = False, before_start: Optional[Callable[[int], object]] = None,
          stdio: Optional[Sequence[int]] = None, pass_fds: Iterable[int] = (),
          close_fds: bool = True, start_new_session: bool = False,
          umask: int = -1, into: Optional[List[int]] = None) -> Union[int, Tuple[int, int]]: ...
def _discard(child: List[int]) -> None: ...

@disjoint_base
class entered:
    def __init__(self, ns: Optional[_Ns] = None, nstype: int = 0, *,
                 pid: Optional[int] = None) -> None: ...
    def __enter__(self) -> "entered": ...
    def __exit__(self, exc_type: Optional[Type[BaseException]],
                 exc: Optional[BaseException], tb: Optional[TracebackType]) -> None: ...

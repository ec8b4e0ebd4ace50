"""stdin, stdout and stderr for spawn(), resolved as subprocess resolves them."""

from __future__ import annotations

import os
import select
import sys
from typing import TYPE_CHECKING, Any, List

if TYPE_CHECKING:
    pass

# subprocess's values (a test checks they are equal); subprocess itself is imported only
# where its exception and result classes are needed, as it adds to import time.
PIPE = -1
STDOUT = -2
DEVNULL = -3

_PIPE_BUF = getattr(select, "PIPE_BUF", 512)  # as subprocess writes input: atomic chunks
_READ_SIZE = 32768


class _Handles:
    """stdin/stdout/stderr as subprocess's _get_handles resolves them: the fds the child gets
    (-1: the caller's), the parent's pipe ends, and the fds opened here that the parent
    closes once the child has them.  pipes: whether PIPE is allowed (spawn has no pipe ends
    to return)."""

    def __init__(self, stdin: Any, stdout: Any, stderr: Any, pipes: bool) -> None:
        self.child = [-1, -1, -1]    # p2cread, c2pwrite, errwrite
        self.parent = [-1, -1, -1]   # p2cwrite, c2pread, errread
        self.opened: List[int] = []  # closed in the parent once the child has them
        self._devnull = -1
        try:
            for i, (name, value) in enumerate((("stdin", stdin), ("stdout", stdout),
                                               ("stderr", stderr))):
                self._resolve(i, name, value, pipes)
        except BaseException:
            self.close_all()
            raise

    def _resolve(self, i: int, name: str, value: Any, pipes: bool) -> None:
        if value is None:
            return
        if value == PIPE:
            if not pipes:
                raise ValueError(f"{name}=PIPE needs Popen: spawn() returns no pipe ends")
            rfd, wfd = os.pipe()
            self.opened.append(rfd if i == 0 else wfd)
            self.child[i], self.parent[i] = (rfd, wfd) if i == 0 else (wfd, rfd)
        elif value == DEVNULL:
            if self._devnull == -1:
                self._devnull = os.open(os.devnull, os.O_RDWR)
                self.opened.append(self._devnull)
            self.child[i] = self._devnull
        elif value == STDOUT:
            if i != 2:
                raise ValueError(f"STDOUT is a value for stderr, not for {name}")
            # subprocess: the child's stdout, or the caller's when that is not redirected.
            if self.child[1] != -1:
                self.child[2] = self.child[1]
            elif sys.__stdout__ is None:
                raise ValueError("stderr=STDOUT without stdout needs sys.__stdout__")
            else:
                self.child[2] = sys.__stdout__.fileno()
        elif isinstance(value, int):
            if value < 0:
                raise ValueError(f"{name} is an fd, PIPE, DEVNULL{', STDOUT' * (i == 2)} or "
                                 f"a file object, not {value}")
            self.child[i] = value
        else:
            self.child[i] = value.fileno()

    def close_child(self) -> None:
        """Close what the parent opened for the child only (once the child has them)."""
        opened, self.opened = self.opened, []
        for fd in opened:
            os.close(fd)

    def close_all(self) -> None:
        self.close_child()
        for fd in self.parent:
            if fd != -1:
                os.close(fd)
        self.parent = [-1, -1, -1]

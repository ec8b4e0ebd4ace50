"""Popen and run(): subprocess's process handle and runner over spawn(), waiting through the
child's pidfd (never through SIGCHLD), with an awaitable wait for asyncio."""

from __future__ import annotations

import io
import os
import select
import sys
import threading
import time
from _operator import index as _index

from . import _core
# typing costs ~5 ms of import (it pulls in re), signal builds three enums: only type
# checkers read these, the interpreter takes the same values from _signal.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import subprocess
    from signal import SIGKILL, SIGTERM, pidfd_send_signal
    from typing import (IO, Any, Dict, Iterable, List, Mapping, Optional, Tuple, Type,
                        TypedDict, cast)

    from typing_extensions import Unpack

    from . import IdMap, _Argv, _Fd, _Path

    class _SpawnOptions(TypedDict, total=False):
        """spawn()'s namespace options, which Popen passes on."""
        env: Optional[Mapping[str, str]]
        cwd: Optional[_Path]
        uid_map: Optional[IdMap]
        gid_map: Optional[IdMap]
        hostname: Optional[str]
        loopback: bool

    class _PopenOptions(_SpawnOptions, total=False):
        """Popen's keyword options, which run() passes on."""
        stdin: Optional[_Fd]
        stdout: Optional[_Fd]
        stderr: Optional[_Fd]
        pass_fds: Iterable[int]
        close_fds: bool
        start_new_session: bool
        umask: int
        text: Optional[bool]
        encoding: Optional[str]
        errors: Optional[str]
        bufsize: Optional[int]
else:
    from _signal import SIGKILL, SIGTERM, pidfd_send_signal

    def cast(kind, value):
        return value

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
    closes once the child has them (the caller's list `opened`, if given).  _core makes
    each fd straight into `opened` or `parent`, so that the caller's
    _core._discard(child, handles.opened, handles.parent) closes every one even after a
    signal handler's exception."""

    def __init__(self, opened: "Optional[List[int]]" = None) -> None:
        self.child = [-1, -1, -1]    # p2cread, c2pwrite, errwrite
        self.parent = [-1, -1, -1]   # p2cwrite, c2pread, errread
        self.opened: List[int] = [] if opened is None else opened
        self._devnull = -1

    def resolve(self, stdin: Any, stdout: Any, stderr: Any, pipes: bool) -> None:
        """pipes: whether PIPE is allowed (spawn has no pipe ends to return)."""
        for i, (name, value) in enumerate((("stdin", stdin), ("stdout", stdout),
                                           ("stderr", stderr))):
            self._resolve(i, name, value, pipes)

    def _resolve(self, i: int, name: str, value: Any, pipes: bool) -> None:
        if value is None:
            return
        if value == PIPE:
            if not pipes:
                raise ValueError(f"{name}=PIPE needs Popen: spawn() returns no pipe ends")
            _core._pipe(self.opened, self.parent, i)
            self.child[i] = self.opened[-1]
        elif value == DEVNULL:
            if self._devnull == -1:
                _core._open(self.opened, os.devnull, os.O_RDWR)
                self._devnull = self.opened[-1]
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
            try:
                fileno = value.fileno
            except AttributeError:
                raise TypeError(f"{name} must be an fd, PIPE, DEVNULL{', STDOUT' * (i == 2)} or "
                                f"a file object, not {type(value).__name__}") from None
            # As subprocess takes it: through __index__ (a str or float is a TypeError).
            fd = _index(fileno())
            if fd < 0:
                raise ValueError(f"{name}.fileno() returned {fd}, not an fd")
            self.child[i] = fd

    def close_child(self) -> None:
        """Close what the parent opened for the child only (once the child has them)."""
        _core._close(self.opened)

    # No comprehension runs in Popen.__init__'s try: 3.12+ inlines them (PEP 709), and a
    # KeyboardInterrupt raised inside one skipped that try's handler (seen on 3.13.0).
    def without_pipe_ends(self, fds: "Iterable[int]") -> "List[int]":
        ends = {fd for fd in self.parent if fd != -1}
        return [fd for fd in fds if fd not in ends]

    def child_stdio(self) -> "List[Optional[int]]":
        return [None if fd == -1 else fd for fd in self.child]


# Popens dropped while their child still ran, reaped by the next Popen (subprocess's _active).
_active: List["Popen"] = []


def _cleanup() -> None:
    for proc in _active[:]:
        if proc._internal_poll() is not None:
            proc._close_pidfd()  # first: its __del__ has run, nothing closes it once dropped
            _active.remove(proc)


class Popen:
    """Popen(argv, flags=0, *, stdin=None, stdout=None, stderr=None, pass_fds=(),
    close_fds=True, start_new_session=False, umask=-1, text=False, encoding=None,
    errors=None, bufsize=-1, env=None, cwd=None, uid_map=None, gid_map=None, hostname=None,
    loopback=False): run a program in new namespaces with spawn(), as subprocess.Popen runs
    one, and wait for it through its pidfd.

    argv, flags, env, cwd, uid_map, gid_map, hostname, loopback: as for spawn().
    stdin, stdout, stderr, pass_fds, close_fds, start_new_session, umask, text, encoding,
        errors, bufsize: as for subprocess.Popen (PIPE, DEVNULL, STDOUT, an fd or a file
        object); pass_fds forces close_fds (with a RuntimeWarning), as in subprocess.
    Attributes as subprocess.Popen's: args, pid, returncode, stdin, stdout, stderr; and
    pidfd, the child's pidfd (None on kernels without pidfds, before Linux 5.3), owned by
    the Popen: closed when it is exited as a context manager or garbage-collected.
    """

    def __init__(self, argv: _Argv[_Path], flags: int = 0, *, stdin: Optional[_Fd] = None,
                 stdout: Optional[_Fd] = None, stderr: Optional[_Fd] = None,
                 pass_fds: Iterable[int] = (), close_fds: bool = True,
                 start_new_session: bool = False, umask: int = -1, text: Optional[bool] = None,
                 encoding: Optional[str] = None, errors: Optional[str] = None,
                 bufsize: Optional[int] = -1, **spawn_options: Unpack[_SpawnOptions]) -> None:
        # The package imports this module before it defines _spawn.  (Its stub has neither.)
        from . import _spawn  # type: ignore[attr-defined]

        # subprocess is imported before the child exists (every Popen passes here), so that a
        # wait with a timeout after a chroot or pivot_root into a root without Python's
        # stdlib finds TimeoutExpired in sys.modules; run() imports it before its Popen.
        _timeout_expired()
        if bufsize is None:
            bufsize = -1  # as subprocess
        if not isinstance(bufsize, int):
            raise TypeError("bufsize must be an integer")  # before io.open owns a pipe end
        _cleanup()
        self.args: Any = argv  # subprocess's CompletedProcess and errors take it as it is
        self.returncode: Optional[int] = None
        self.stdin: Optional[IO[Any]] = None
        self.stdout: Optional[IO[Any]] = None
        self.stderr: Optional[IO[Any]] = None
        self.pid = -1
        self._pidfd = [-1]  # pidfd's value (-1: None), a list that _core._close empties
        self.encoding, self.errors = encoding, errors
        self.text_mode = bool(text or encoding or errors)
        self._waitlock = threading.Lock()      # held by whoever reaps (as subprocess's)
        self._communication_started = False
        self._input: Optional[bytes] = None
        self._input_offset = 0
        self._output: Dict[Any, List[bytes]] = {}  # communicate()'s, by stream
        self._exited: Dict[Any, List[Any]] = {}  # wait_async's, by event loop
        self._sigint_wait_secs = 0.25
        self._child_created = False
        if pass_fds and not close_fds:
            import warnings
            warnings.warn("pass_fds overriding close_fds.", RuntimeWarning, stacklevel=2)
            close_fds = True
        handles = _Handles()
        child: List[int] = []  # the child's pid and pidfd, once it exists
        try:
            handles.resolve(stdin, stdout, stderr, pipes=True)
            # A pass_fds entry that is now one of the parent's pipe ends is not passed: the
            # child's copy of that end is closed, as subprocess closes it before its exec.
            # (-1 marks an unused end, not an fd: spawn rejects it in pass_fds.)
            pass_fds = handles.without_pipe_ends(pass_fds)
            # As subprocess: the pipes are file objects before the child exists, so a bad
            # encoding raises with no child started.
            self._open_pipes(handles.parent, bufsize)
            stdio = handles.child_stdio()
            # [] for what _spawn opens: nothing, the stdio here are fds.
            _spawn(child, [], argv, flags, stdin=stdio[0], stdout=stdio[1], stderr=stdio[2],
                   pass_fds=pass_fds, close_fds=close_fds, start_new_session=start_new_session,
                   umask=umask, pidfd=True, **spawn_options)
            handles.close_child()
            # Last: from here the child is the Popen's (__del__, wait, kill).
            self.pid, pidfd = child
            self._pidfd[0] = pidfd  # -1: Linux < 5.3
            self._child_created = True
        except BaseException:
            # A signal handler's exception (KeyboardInterrupt) once the child exists: the
            # caller never gets this Popen, so the child is killed and reaped here (subprocess
            # would leave it running, unwaited).  First, in one call, what only a list holds;
            # the pipes' file objects close when dropped, or here.
            _core._discard(child, handles.opened, handles.parent)
            self.pid, self.pidfd, self._child_created = -1, None, False
            for stream in (self.stdin, self.stdout, self.stderr):
                if stream is not None:
                    try:
                        stream.close()
                    except OSError:
                        pass
            raise

    # subprocess.Popen[bytes] works at run time (3.9+), so does ours (to type checkers
    # Popen takes no parameter).  type(list[int]) is types.GenericAlias, without importing
    # types.
    if not TYPE_CHECKING:
        __class_getitem__ = classmethod(type(list[int]))

    @property
    def pidfd(self) -> Optional[int]:
        fd = self._pidfd[0]
        return None if fd == -1 else fd

    @pidfd.setter
    def pidfd(self, value: Optional[int]) -> None:
        self._pidfd[0] = -1 if value is None else value

    @property
    def universal_newlines(self) -> bool:
        """subprocess's alias of text_mode (bpo-31756)."""
        return self.text_mode

    @universal_newlines.setter
    def universal_newlines(self, value: bool) -> None:
        self.text_mode = bool(value)

    def _open_pipes(self, parent: List[int], bufsize: int) -> None:
        """Wrap the parent's pipe ends in file objects.  An fd leaves `parent` as io.open
        takes it, so that only its file object closes it (io.open closes it when it fails)."""
        line_buffering = self.text_mode and bufsize == 1
        if line_buffering:
            bufsize = -1  # the binary streams below cannot buffer lines
        for i, name in enumerate(("stdin", "stdout", "stderr")):
            if parent[i] == -1:
                continue
            stream: Any = _core._fdopen(parent, i, "wb" if i == 0 else "rb", bufsize)
            setattr(self, name, stream)
            if self.text_mode:
                # On failure the binary stream stays in the attribute, for the caller to close.
                setattr(self, name, io.TextIOWrapper(
                    stream, write_through=i == 0,
                    line_buffering=line_buffering and i == 0, encoding=self.encoding,
                    errors=self.errors))

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: returncode: {self.returncode} args: {self.args!r}>"

    def __enter__(self) -> "Popen":
        return self

    def __exit__(self, exc_type: Any, value: Any, traceback: Any) -> None:
        if self.stdout:
            self.stdout.close()
        if self.stderr:
            self.stderr.close()
        try:  # flushing a BufferedWriter may raise
            if self.stdin:
                self.stdin.close()
        finally:
            if exc_type is KeyboardInterrupt:
                # As subprocess: a child that got the ^C too has a moment to exit.
                if self._sigint_wait_secs > 0:
                    try:
                        self._wait(self._sigint_wait_secs)
                    except _timeout_expired():
                        pass
                self._sigint_wait_secs = 0
            else:
                self.wait()
            if self.returncode is not None:
                self._close_pidfd()

    _child_created = False  # also when __init__ raised before setting it

    def __del__(self) -> None:
        if not self._child_created:  # an attribute, no call: no signal handler runs here
            return
        # First: whatever a signal handler's exception cuts short below (it is only printed
        # here), the next Popen's _cleanup reaps the child and closes the pidfd.  __del__ runs
        # once: a Popen dropped again has nothing else that would.
        _active.append(self)
        if self.returncode is None:
            # As subprocess warns: nobody waited for this child.  Not at interpreter
            # shutdown, when the import fails.
            try:
                import warnings
                warnings.warn(f"subprocess {self.pid} is still running", ResourceWarning,
                              stacklevel=1, source=self)
            except ImportError:
                pass
        # Else kept until the next Popen can reap it, as subprocess keeps it.
        if self._internal_poll() is not None:
            self._close_pidfd()
            _active.remove(self)

    def _close_pidfd(self) -> None:
        with self._waitlock:
            _core._close(self._pidfd)

    # ---- waiting ----

    def _reaped(self) -> Optional[int]:
        """Reap the child if it has exited (without blocking); its returncode, or None.
        Called with _waitlock held."""
        if self.returncode is not None:
            return self.returncode
        try:
            if self.pidfd is not None:
                info = os.waitid(os.P_PIDFD, self.pidfd, os.WEXITED | os.WNOHANG)
                if info is None or info.si_pid == 0:
                    return None
                self.returncode = (info.si_status if info.si_code == os.CLD_EXITED
                                   else -info.si_status)
            else:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid == 0:
                    return None
                self.returncode = os.waitstatus_to_exitcode(status)
        except ChildProcessError:
            # Reaped by someone else (SIGCHLD ignored, a waitpid(-1)): as subprocess, 0.
            self.returncode = 0
        return self.returncode

    def _internal_poll(self) -> Optional[int]:
        if self.returncode is None and self._waitlock.acquire(False):
            try:
                self._reaped()
            finally:
                self._waitlock.release()
        return self.returncode

    def poll(self) -> Optional[int]:
        """The returncode if the child has exited (reaping it), else None."""
        return self._internal_poll()

    def wait(self, timeout: Optional[float] = None) -> int:
        """Wait for the child to exit and return its returncode (-N: killed by signal N);
        subprocess.TimeoutExpired after `timeout` seconds."""
        return self._wait(timeout)

    def _wait(self, timeout: Optional[float]) -> int:
        endtime = None if timeout is None else time.monotonic() + timeout
        delay = 0.0005
        while True:
            # The lock is held for non-blocking reaps only (but for the blocking waitpid
            # without pidfds), so poll() and send_signal() in other threads go on.
            with self._waitlock:
                if self._reaped() is not None:
                    return self.returncode  # type: ignore[return-value]
                if self.pidfd is None and endtime is None:
                    self._blocking_waitpid()
                    continue
            remaining = _remaining(endtime)
            if remaining is not None and remaining <= 0:
                raise _timeout_expired()(self.args, cast(float, timeout))
            pidfd = self.pidfd
            if pidfd is not None:
                # Readable once the child has exited, and from then on (reaped or not).
                _readable(pidfd, remaining)
            else:
                # As subprocess waits with a timeout: poll, sleeping a little longer each time.
                delay = min(delay * 2, remaining or 0.0, 0.05)
                time.sleep(delay)

    def _blocking_waitpid(self) -> None:
        """The wait without pidfds (Linux < 5.3), as subprocess makes it."""
        try:
            _, status = os.waitpid(self.pid, 0)
        except ChildProcessError:
            self.returncode = 0
        else:
            self.returncode = os.waitstatus_to_exitcode(status)

    async def wait_async(self) -> int:
        """Wait for the child without blocking the running asyncio loop (its reader on the
        pidfd, no thread); return the returncode.  Without pidfds (Linux < 5.3), wait() runs
        in the loop's default executor instead."""
        import asyncio

        loop = asyncio.get_running_loop()
        if self.pidfd is None:
            return await loop.run_in_executor(None, self.wait)
        while self.poll() is None:
            # A reader on the pidfd itself (a copy would make each waiting child cost two
            # fds): a loop has one reader per fd, so the waiters on a loop share its future
            # ([future, waiters, pidfd]).
            entry = self._exited.get(loop)
            if entry is None:
                entry = self._exited[loop] = [loop.create_future(), 0, self.pidfd]
                loop.add_reader(self.pidfd, self._stop_watching, loop, entry)
            entry[1] += 1
            try:
                await asyncio.shield(entry[0])  # a cancelled waiter leaves the others waiting
            finally:
                entry[1] -= 1
                if not entry[1]:  # the last waiter gone, or the child exited
                    self._stop_watching(loop, entry)
        return self.returncode  # type: ignore[return-value]

    def _stop_watching(self, loop: Any, entry: List[Any]) -> None:
        if self._exited.get(loop) is entry:
            del self._exited[loop]
            loop.remove_reader(entry[2])
            if not entry[0].done():
                entry[0].set_result(None)

    # ---- signals ----

    def send_signal(self, sig: int) -> None:
        """Send `sig` to the child through its pidfd (nothing once it has been reaped): a
        pidfd names this child even after another process took its pid."""
        if self.poll() is not None:
            return
        pidfd = self.pidfd
        try:
            if pidfd is not None:
                pidfd_send_signal(pidfd, sig)
            else:
                os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

    def terminate(self) -> None:
        """SIGTERM the child."""
        self.send_signal(SIGTERM)

    def kill(self) -> None:
        """SIGKILL the child."""
        self.send_signal(SIGKILL)

    # ---- communicate ----

    def communicate(self, input: Any = None,
                    timeout: Optional[float] = None) -> Tuple[Any, Any]:
        """Send `input` to stdin, read stdout and stderr to their ends, wait for the child;
        return (stdout, stderr), as subprocess.Popen.communicate (each None unless a PIPE;
        str in text mode).  After a subprocess.TimeoutExpired, call it again to go on."""
        if self._communication_started and input:
            raise ValueError("Cannot send input after starting communication")
        endtime = None if timeout is None else time.monotonic() + timeout
        try:
            stdout, stderr = self._communicate(input, endtime, timeout)
        finally:
            self._communication_started = True
        self._wait(_remaining(endtime))
        return stdout, stderr

    def _communicate(self, input: Any, endtime: Optional[float],
                     orig_timeout: Optional[float]) -> Tuple[Any, Any]:
        if self.stdin and not self._communication_started:
            try:
                self.stdin.flush()
            except BrokenPipeError:
                pass  # as subprocess: the child not reading its input is not an error
            if not input:
                try:
                    self.stdin.close()
                except BrokenPipeError:
                    pass
        if not self._communication_started:
            for stream in (self.stdout, self.stderr):
                if stream:
                    self._output[stream] = []
            stdin: Any = self.stdin  # a TextIOWrapper in text mode
            if stdin and input is not None:
                self._input = (input.encode(stdin.encoding, stdin.errors) if self.text_mode
                               else bytes(memoryview(input)))
        streams = {}
        poller = select.poll()
        if self.stdin and not self.stdin.closed and self._input:
            streams[self.stdin.fileno()] = self.stdin
            poller.register(self.stdin.fileno(), select.POLLOUT)
        for stream in (self.stdout, self.stderr):
            if stream and not stream.closed:
                streams[stream.fileno()] = stream
                poller.register(stream.fileno(), select.POLLIN)
        while streams:
            remaining = _remaining(endtime)
            if remaining is not None and remaining <= 0:
                raise self._timeout(orig_timeout)
            for fd, _ in poller.poll(_poll_ms(remaining)):
                stream = streams[fd]
                if stream is self.stdin:
                    assert self._input is not None
                    chunk = self._input[self._input_offset:self._input_offset + _PIPE_BUF]
                    try:
                        self._input_offset += os.write(fd, chunk)
                    except BrokenPipeError:
                        self._input_offset = len(self._input)
                    if self._input_offset >= len(self._input):
                        poller.unregister(fd)
                        del streams[fd]
                        stream.close()
                else:
                    data = os.read(fd, _READ_SIZE)
                    if data:
                        self._output[stream].append(data)
                    else:
                        poller.unregister(fd)
                        del streams[fd]
                        stream.close()
        return self._collected(self.stdout), self._collected(self.stderr)

    def _collected(self, stream: Any) -> Any:
        """What communicate() read from `stream` so far: bytes, or str in text mode."""
        if stream is None:
            return None
        data = b"".join(self._output.get(stream, ()))
        if not self.text_mode:
            return data
        text = data.decode(stream.encoding, stream.errors)
        return text.replace("\r\n", "\n").replace("\r", "\n")

    def _timeout(self, orig_timeout: Optional[float]) -> subprocess.TimeoutExpired:
        return _timeout_expired()(self.args, cast(float, orig_timeout),
                                  output=self._partial(self.stdout),
                                  stderr=self._partial(self.stderr))

    def _partial(self, stream: Any) -> Optional[bytes]:
        return b"".join(self._output.get(stream, ())) or None


def _remaining(endtime: Optional[float]) -> Optional[float]:
    return None if endtime is None else endtime - time.monotonic()


def _readable(fd: int, timeout: Optional[float]) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(_poll_ms(timeout)))


def _poll_ms(timeout: Optional[float]) -> Optional[float]:
    """poll()'s timeout for `timeout` seconds: at most INT_MAX ms (24.8 days; more is an
    OverflowError, where subprocess takes any timeout and inf), the caller's loop waits on."""
    return None if timeout is None else min(max(0.0, timeout) * 1000, 0x7FFFFFFF)


def _timeout_expired() -> Type[subprocess.TimeoutExpired]:
    """subprocess.TimeoutExpired.  Popen() calls it first: later calls find subprocess in
    sys.modules and read no file (the root may have changed since)."""
    import subprocess
    return subprocess.TimeoutExpired


def run(argv: _Argv[_Path], flags: int = 0, *, input: Any = None, capture_output: bool = False,
        timeout: Optional[float] = None, check: bool = False,
        **popen_options: Unpack[_PopenOptions]) -> subprocess.CompletedProcess[Any]:
    """Run a program in new namespaces, wait for it, return a subprocess.CompletedProcess --
    subprocess.run over Popen.

    argv, flags, **popen_options: as for Popen.
    input: bytes (str in text mode) for its stdin (a PIPE).  capture_output: stdout and
        stderr to PIPEs.  timeout: seconds, after which the child is killed and
        subprocess.TimeoutExpired raised.  check: a nonzero returncode raises
        subprocess.CalledProcessError.
    """
    import subprocess

    if input is not None:
        if popen_options.get("stdin") is not None:
            raise ValueError("stdin and input arguments may not both be used.")
        popen_options["stdin"] = PIPE
    if capture_output:
        if popen_options.get("stdout") is not None or popen_options.get("stderr") is not None:
            raise ValueError("stdout and stderr arguments may not be used with "
                             "capture_output.")
        popen_options["stdout"] = popen_options["stderr"] = PIPE
    with Popen(argv, flags, **popen_options) as process:
        try:
            stdout, stderr = process.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()  # what was read so far is in the exception already
            raise
        except BaseException:
            process.kill()  # __exit__ waits
            raise
        retcode = process.wait()  # reaped by communicate(): subprocess's poll()
        if check and retcode:
            raise subprocess.CalledProcessError(retcode, process.args, output=stdout,
                                                stderr=stderr)
    return subprocess.CompletedProcess(process.args, retcode, stdout, stderr)

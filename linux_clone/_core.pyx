# cython: language_level=3, freethreading_compatible=True, auto_pickle=False
"""The compiled core of linux_clone: thin wrappers over the syscalls, one errno path, entered(),
clone()/clone3() with their child entry, and spawn()."""

import atexit
import os
import sys

from libc.errno cimport errno, EINTR, ECHILD, EINVAL, EMFILE, ENOENT, ENOSYS, ENOTDIR, EPERM
from libc.limits cimport INT_MAX, UINT_MAX
from libc.string cimport memset, strerror
from libc.stdint cimport uint64_t
from posix.fcntl cimport open as c_open, fcntl, F_SETFD, FD_CLOEXEC, O_CLOEXEC, O_DIRECTORY, \
    O_RDONLY
from posix.mman cimport mmap, munmap, mprotect, MAP_PRIVATE, MAP_ANONYMOUS, MAP_FAILED, \
    PROT_READ, PROT_WRITE, PROT_NONE
from posix.resource cimport getrlimit, rlimit, RLIMIT_NOFILE
from posix.types cimport dev_t, ino_t, pid_t, sigset_t, uid_t
from posix.unistd cimport close, dup, dup2, _exit, fork, getpid, setsid, sysconf, _SC_PAGESIZE
from posix.wait cimport waitpid
from cpython.object cimport PyObject, PyObject_AsFileDescriptor
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.long cimport PyLong_AsLong, PyLong_AsLongAndOverflow, PyLong_Check, PyLong_CheckExact
from cpython.number cimport PyNumber_Index

cdef extern from "Python.h":
    void PyOS_BeforeFork()
    void PyOS_AfterFork_Parent()
    void PyOS_AfterFork_Child()
    ctypedef struct PyInterpreterState
    PyInterpreterState *PyInterpreterState_Get()
    PyInterpreterState *PyInterpreterState_Main()
    unsigned long PyThread_get_thread_ident() nogil
    bytes PyUnicode_EncodeFSDefault(object unicode)

cdef extern from "<unistd.h>" nogil:
    int execve(const char *path, char *const argv[], char *const envp[])
    int chdir(const char *path)
    int sethostname(const char *name, size_t length)
    long syscall(long number, ...)
    char **environ

cdef extern from "<signal.h>" nogil:
    const int SIGCHLD
    const int SIGKILL
    const int NSIG "_NSIG"
    const int SIG_SETMASK
    ctypedef struct stack_t:
        void *ss_sp
        int ss_flags
        size_t ss_size
    int sigfillset(sigset_t *s)
    int pthread_sigmask(int how, const sigset_t *s, sigset_t *old)

cdef extern from "<ucontext.h>" nogil:
    ctypedef struct ucontext_t:
        ucontext_t *uc_link
        stack_t uc_stack
    int getcontext(ucontext_t *ucp)
    int setcontext(const ucontext_t *ucp)
    void makecontext(ucontext_t *ucp, void (*func)() noexcept nogil, int argc, ...)

cdef extern from "<sys/prctl.h>" nogil:
    int prctl(int option, unsigned long arg2, unsigned long arg3, unsigned long arg4,
              unsigned long arg5)
    const int PR_SET_PDEATHSIG

cdef extern from "<sys/stat.h>" nogil:
    unsigned int umask(unsigned int mask)

cdef extern from "<sys/syscall.h>" nogil:
    const long SYS_getdents64

cdef extern from *:
    int __builtin_ctz(unsigned int x) nogil  # a compiler builtin, in no header


# ---- constants, as the headers define them (the Python layer builds the enums) ----

CLONE_FLAGS = {
    "FILES": CLONE_FILES, "FS": CLONE_FS, "NEWNS": CLONE_NEWNS, "VM": CLONE_VM,
    "THREAD": CLONE_THREAD, "SIGHAND": CLONE_SIGHAND, "SYSVSEM": CLONE_SYSVSEM,
    "NEWUSER": CLONE_NEWUSER, "NEWPID": CLONE_NEWPID, "NEWUTS": CLONE_NEWUTS,
    "NEWIPC": CLONE_NEWIPC, "NEWNET": CLONE_NEWNET, "NEWCGROUP": CLONE_NEWCGROUP,
    "NEWTIME": CLONE_NEWTIME, "PTRACE": CLONE_PTRACE, "VFORK": CLONE_VFORK,
    "SETTLS": CLONE_SETTLS, "PARENT_SETTID": CLONE_PARENT_SETTID,
    "CHILD_SETTID": CLONE_CHILD_SETTID, "CHILD_CLEARTID": CLONE_CHILD_CLEARTID,
    "PIDFD": CLONE_PIDFD, "DETACHED": CLONE_DETACHED, "UNTRACED": CLONE_UNTRACED,
    "IO": CLONE_IO, "PARENT": CLONE_PARENT, "CLEAR_SIGHAND": CLONE_CLEAR_SIGHAND,
    "INTO_CGROUP": CLONE_INTO_CGROUP, "CSIGNAL": CSIGNAL,
}
KCMP_TYPES = {
    "KCMP_FILE": KCMP_FILE, "KCMP_VM": KCMP_VM, "KCMP_FILES": KCMP_FILES, "KCMP_FS": KCMP_FS,
    "KCMP_SIGHAND": KCMP_SIGHAND, "KCMP_IO": KCMP_IO, "KCMP_SYSVSEM": KCMP_SYSVSEM,
    "KCMP_EPOLL_TFD": KCMP_EPOLL_TFD,
}
NS_IOCTLS = {
    "NS_GET_USERNS": NS_GET_USERNS, "NS_GET_PARENT": NS_GET_PARENT,
    "NS_GET_NSTYPE": NS_GET_NSTYPE, "NS_GET_OWNER_UID": NS_GET_OWNER_UID,
}
WAIT_FLAGS = {"WALL": WALL}  # a dict, as `WALL = WALL` would assign the C constant

# A Python child cannot share the parent's memory, signal handlers or thread identity.
cdef unsigned long long _NOT_FOR_PYTHON = (CLONE_VM | CLONE_THREAD | CLONE_SIGHAND | CLONE_SETTLS
                                           | CLONE_PARENT_SETTID | CLONE_CHILD_SETTID
                                           | CLONE_CHILD_CLEARTID)
# The GIL is released around calls that can sleep on kernel-wide locks: creating a mount,
# user, net or pid namespace (namespace_sem, cred commits, pernet_ops_rwsem), entering a mount
# or user namespace (namespace_sem, cred commits), and setns of an unknown type (nstype 0).
# The rest finish in well under a microsecond, where releasing the GIL costs ~8% of the call.
cdef unsigned long long _MAY_BLOCK_CREATE = (CLONE_NEWNS | CLONE_NEWUSER | CLONE_NEWNET
                                             | CLONE_NEWPID)
cdef unsigned long long _MAY_BLOCK_ENTER = CLONE_NEWNS | CLONE_NEWUSER
# Sharing flags tie the child to the process that calls clone, so the fork-safe path (which
# clones from a forked helper) cannot give them their meaning.
cdef unsigned long long _SHARES_WITH_CALLER = (CLONE_FILES | CLONE_FS | CLONE_SYSVSEM | CLONE_IO
                                               | CLONE_PARENT)

# The CloneFlag member of each single-bit value, by bit number: ns_get_nstype's answer
# without an enum lookup or an int allocation.
cdef list _member_by_bit = [None] * 64


def _register_nstypes(flag_type):
    """Let ns_get_nstype() return members of `flag_type` (CloneFlag)."""
    for member in flag_type.__members__.values():
        value = int(member)
        if value > 0 and value & (value - 1) == 0:
            _member_by_bit[value.bit_length() - 1] = member


# ---- conversions and errors ----

cdef int _raise_errno(int err, object filename=None, object filename2=None) except -1:
    """The one errno path: OSError(err) with its message, and the path(s) involved."""
    raise OSError(err, strerror(err).decode(), filename, None, filename2)


cdef inline object _index(object obj):
    """An int argument as CPython's own functions take it: through __index__, so a float is a
    TypeError rather than a truncated number.  C conversion then gives the OverflowError."""
    if PyLong_Check(obj):  # int, bool, IntFlag: converted directly
        return obj
    return PyNumber_Index(obj)


cdef inline bint _is_path(object obj):
    return isinstance(obj, (str, bytes)) or hasattr(type(obj), "__fspath__")


cdef bytes _fsencode(object path):
    cdef bytes raw
    if type(path) is bytes:
        raw = path
    elif type(path) is str:
        raw = PyUnicode_EncodeFSDefault(path)  # os.fsencode's work, without its frames
    else:
        raw = os.fsencode(path)
    if b"\0" in raw:
        raise ValueError("embedded null byte")
    return raw


cdef class _Opened:
    """An fd opened for one call -- from a path argument, or entered()'s pidfd -- and closed
    again by release()."""
    cdef int fd        # -1 once released
    cdef object path   # the path it was opened from, for OSError.filename; None for a pidfd

    @staticmethod
    cdef _Opened of(int fd, object path):
        cdef _Opened opened = _Opened.__new__(_Opened)
        opened.fd, opened.path = fd, path
        return opened

    cdef int release(self) except -1:
        if self.fd >= 0:
            close(self.fd)
            self.fd = -1
        return 0


cdef inline int _fd_of(object ns) except -2:
    # _fd_arg's fast path, for the common case, an int fd; -1 sends the rest on, out of range
    # ints included, for PyObject_AsFileDescriptor's ValueError or OverflowError.  On an exact
    # int PyLong_AsLongAndOverflow does not raise (an overflow only sets the flag); were it to,
    # the error would propagate rather than become an fd.
    cdef int overflow
    cdef long value
    if PyLong_CheckExact(ns):
        value = PyLong_AsLongAndOverflow(ns, &overflow)
        if 0 <= value <= INT_MAX:
            return <int>value
    return -1


cdef inline _Opened _fd_arg(object arg, int *fd):
    """The fd of a namespace or cgroup argument, in *fd: an int or an object with fileno() as
    it is (None returned); a path opened close-on-exec, returned to be closed by _finish or
    release()."""
    cdef bytes raw
    fd[0] = _fd_of(arg)
    if fd[0] >= 0:
        return None
    if not _is_path(arg):
        fd[0] = PyObject_AsFileDescriptor(arg)
        return None
    raw = _fsencode(arg)
    fd[0] = c_open(raw, O_RDONLY | O_CLOEXEC)
    if fd[0] < 0:
        _raise_errno(errno, arg)
    return _Opened.of(fd[0], arg)


cdef int _finish(int rc, _Opened opened) except -1:
    """After a call on an fd from _fd_arg: close what it opened, then raise from errno if the
    call failed (with the path, if it was one)."""
    cdef int err = errno
    if opened is not None:
        opened.release()
    if rc == -1:
        _raise_errno(err, None if opened is None else opened.path)
    return rc


# ---- the namespace calls: convert, call, check ----

def unshare(flags):
    """Move the calling thread into new namespaces (and unshare state), as unshare(2).

    flags: CloneFlag bits (NEWNET, NEWUTS, NEWNS, ...).
    """
    cdef unsigned int c_flags = _index(flags)
    cdef int rc
    if c_flags & _MAY_BLOCK_CREATE:
        with nogil:
            rc = sys_unshare(<int>c_flags)
    else:
        rc = sys_unshare(<int>c_flags)
    if rc == -1:
        _raise_errno(errno)


def setns(ns, nstype=0):
    """Move the calling thread into the namespace `ns`, as setns(2).

    ns: an fd, an object with fileno(), or the path of a namespace file (or a pidfd).
    nstype: 0 for any type, else the CloneFlag NEW* bit(s) the namespace must have.
    """
    cdef int c_nstype = _index(nstype)
    cdef int rc, fd
    cdef _Opened opened = _fd_arg(ns, &fd)
    if c_nstype == 0 or c_nstype & _MAY_BLOCK_ENTER:
        with nogil:
            rc = sys_setns(fd, c_nstype)
    else:
        rc = sys_setns(fd, c_nstype)
    _finish(rc, opened)


def pivot_root(new_root, old_root):
    """Make `new_root` the root of the calling process's mount namespace, as pivot_root(2).

    new_root: the new root, a mount point (str, bytes or os.PathLike).
    old_root: where the old root is mounted, at or under new_root.
    """
    cdef bytes new = _fsencode(new_root), old = _fsencode(old_root)
    cdef const char *c_new = new
    cdef const char *c_old = old
    cdef int rc
    with nogil:
        rc = sys_pivot_root(c_new, c_old)
    if rc == -1:
        _raise_errno(errno, new_root, old_root)


cdef int _kcmp_index(object idx) except -1:
    """An fd index of kcmp, 0 to INT_MAX: the kernel would cut a larger one to its unsigned
    int fd and compare some other file, so it is an OverflowError, as os.fstat makes it."""
    cdef int fd = _index(idx)
    if fd < 0:
        raise OverflowError(f"an fd index cannot be negative, not {fd}")
    return fd


def kcmp(pid1, pid2, type, idx1=0, idx2=0):
    """Compare kernel resources of two processes, as kcmp(2): 0 equal, 1 less, 2 greater,
    3 not equal (ordering unavailable).

    pid1, pid2: process ids.  type: a KCMP_* constant.
    idx1, idx2: an fd of pid1 and one of pid2 for KCMP_FILE, 0 to INT_MAX (other types ignore
    them); for KCMP_EPOLL_TFD idx2 is (epoll_fd, target_fd, offset) of pid2.
    """
    cdef pid_t c_pid1 = _index(pid1), c_pid2 = _index(pid2)
    cdef int c_type = _index(type)
    cdef unsigned long c_idx1 = _kcmp_index(idx1), c_idx2
    cdef kcmp_epoll_slot slot
    cdef int rc
    if c_type == KCMP_EPOLL_TFD:
        if not isinstance(idx2, tuple) or len(idx2) != 3:
            raise TypeError("KCMP_EPOLL_TFD takes idx2 as a tuple (epoll_fd, target_fd, offset)")
        slot.efd, slot.tfd, slot.toff = [_index(value) for value in idx2]
        c_idx2 = <unsigned long>&slot
    elif isinstance(idx2, tuple):
        raise TypeError("idx2 is a tuple only with KCMP_EPOLL_TFD")
    else:
        c_idx2 = _kcmp_index(idx2)
    rc = sys_kcmp(c_pid1, c_pid2, c_type, c_idx1, c_idx2)
    if rc == -1:
        _raise_errno(errno)
    return rc


def configure_loopback():
    """Bring up `lo` in the calling thread's network namespace (as `ip link set lo up`);
    the kernel then gives it 127.0.0.1 and ::1."""
    if lc_configure_loopback() == -1:
        _raise_errno(errno)


cdef int _ns_ioctl(object ns, unsigned long request) except -1:
    cdef int rc, fd
    cdef _Opened opened = _fd_arg(ns, &fd)
    rc = lc_ns_ioctl(fd, request)
    _finish(rc, opened)
    return rc


def ns_get_userns(ns):
    """A new fd (close-on-exec) for the user namespace that owns `ns` (NS_GET_USERNS).

    ns: an fd, an object with fileno(), or a path of a namespace file.
    """
    return _ns_ioctl(ns, NS_GET_USERNS)


def ns_get_parent(ns):
    """A new fd (close-on-exec) for the parent of the pid or user namespace `ns`
    (NS_GET_PARENT).

    ns: an fd, an object with fileno(), or a path of a namespace file.
    """
    return _ns_ioctl(ns, NS_GET_PARENT)


def ns_get_nstype(ns):
    """The type of the namespace `ns` as a CloneFlag NEW* member (NS_GET_NSTYPE).

    ns: an fd, an object with fileno(), or a path of a namespace file.
    """
    cdef int value = _ns_ioctl(ns, NS_GET_NSTYPE)
    cdef object member = None
    if value > 0 and value & (value - 1) == 0:
        member = _member_by_bit[__builtin_ctz(value)]
    return value if member is None else member


def ns_get_owner_uid(ns):
    """The uid (in the caller's user namespace) of the owner of user namespace `ns`
    (NS_GET_OWNER_UID).

    ns: an fd, an object with fileno(), or a path of a user namespace file.
    """
    cdef uid_t uid
    cdef int rc, fd
    cdef _Opened opened = _fd_arg(ns, &fd)
    rc = lc_ns_get_owner_uid(fd, &uid)
    _finish(rc, opened)
    return uid


def pidfd_open(pid, flags=0):
    """A pidfd (close-on-exec) for process `pid`, as pidfd_open(2).

    pid: a process id.  flags: 0 or os.O_NONBLOCK.
    """
    cdef int fd = sys_pidfd_open(_index(pid), _index(flags))
    if fd == -1:
        _raise_errno(errno)
    return fd


cdef extern from "_entered.h" nogil:
    # The calling thread's current namespace of one type as a new fd, through the one fd
    # per thread that entered() keeps (the header says when it is made, checked and closed).
    int lc_thread_ns_open(int kind, dev_t *dev, ino_t *ino)
    bint lc_same_file(int fd, dev_t dev, ino_t ino)
    void lc_thread_ns_after_fork()
    void lc_thread_ns_forget()
    void lc_thread_ns_drop()
    int lc_thread_ns_kept()
    # The root and working directory a mount namespace's setns resets, kept and returned to.
    int lc_dir_open(const char *path, dev_t *dev, ino_t *ino)
    int lc_dir_return(int root, int cwd, const char **step)


# True in a clone(CLONE_FILES) child: its fd table is its parent's, kept fd included.
cdef bint _shares_fd_table = False


def _thread_ns_after_fork():
    if _shares_fd_table:
        lc_thread_ns_forget()
    else:
        lc_thread_ns_after_fork()


def _kept_fd():
    """The fd the calling thread keeps for entered(), -1 before its first use: for the tests
    that look for leaked fds."""
    return lc_thread_ns_kept()


# A clone child runs PyOS_AfterFork_Child, which runs these, but not glibc's atfork handlers.
os.register_at_fork(after_in_child=_thread_ns_after_fork)

# The files naming the calling thread's own namespace of each type, as setns() changes it:
# what entered() goes back into (on Linux 6.11+ through the pidfd ioctls), in this order.
_THREAD_NS = {
    CLONE_NEWNET: "/proc/thread-self/ns/net", CLONE_NEWUTS: "/proc/thread-self/ns/uts",
    CLONE_NEWIPC: "/proc/thread-self/ns/ipc", CLONE_NEWNS: "/proc/thread-self/ns/mnt",
    CLONE_NEWCGROUP: "/proc/thread-self/ns/cgroup",
    CLONE_NEWPID: "/proc/thread-self/ns/pid_for_children",
    CLONE_NEWTIME: "/proc/thread-self/ns/time",
}
cdef enum:
    _MAX_SAVED = 7
cdef int _SAVE_ORDER[_MAX_SAVED]
_SAVE_ORDER[:] = [<int>CLONE_NEWNET, <int>CLONE_NEWUTS, <int>CLONE_NEWIPC, <int>CLONE_NEWNS,
                  <int>CLONE_NEWCGROUP, <int>CLONE_NEWPID, <int>CLONE_NEWTIME]
# The types entered() can go back from: those of _THREAD_NS.
cdef int _ENTERABLE = (CLONE_NEWNET | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWNS | CLONE_NEWCGROUP
                       | CLONE_NEWPID | CLONE_NEWTIME)
_NO_USER_NS = "a user namespace cannot be left again; use clone() or spawn()"
cdef int _REPLACED = -1  # _go_back's answer for a saved fd the block closed or replaced
# With NEWNS, what entered() keeps besides the namespace: these directories, as the kernel
# resolves them for the calling thread (its root, its working directory).
_KEPT_DIRS = (b"/", b".")
_KEPT_DIR_NAMES = ("root", "working directory")


# The docstring starts with the signature as CPython's types carry it, for inspect.signature
# and help(): Cython keeps the indentation, so its "--" line is at column 0.
cdef class entered:
    """entered(ns=None, nstype=0, *, pid=None)
--

    A context manager that moves the calling thread into a namespace and back on exit, even
    on exceptions.

    ns: an fd, an object with fileno(), or a path of a namespace file.
    nstype: the CloneFlag NEW* type `ns` must have (0: any); with pid=, the types to enter.
    pid: enter these namespaces of process `pid` (through a pidfd) instead of `ns`.
    Only the calling thread moves; other threads keep theirs.  A user namespace cannot be
    left again and is refused; a pid namespace affects only children created inside the
    block; a mount namespace needs a thread that does not share its fs: with other threads
    running it fails with OSError(EINVAL) and nothing moves.  With a mount namespace,
    __exit__ also returns to the root and working directory the thread had (setns resets
    both); if that fails, __exit__ raises OSError naming the step.
    __exit__ goes back into every namespace it can; if the block closed or replaced an fd
    entered() keeps, that type (or directory) stays entered and __exit__ raises RuntimeError.
    __exit__ without an active __enter__ (one that failed undid itself) does nothing; on
    another thread than the one that entered it raises RuntimeError and moves nothing.  Each
    thread that uses entered() keeps one close-on-exec fd (a pidfd of itself on Linux 6.9+)
    from its first use until it exits; no other fd outlives the block.
    """
    cdef object ns
    cdef pid_t pid
    cdef bint by_pid
    cdef bint active
    cdef unsigned long thread   # the thread that entered: only it can go back
    cdef int nstype
    # The namespaces to go back into, in the order saved: an fd, its type, its identity.
    cdef int count
    cdef int fds[_MAX_SAVED]
    cdef int kinds[_MAX_SAVED]
    cdef dev_t devs[_MAX_SAVED]
    cdef ino_t inos[_MAX_SAVED]
    # With NEWNS: O_PATH fds of _KEPT_DIRS (dir_count of them) and their identity.
    cdef int dir_count
    cdef int dirs[2]
    cdef dev_t dir_devs[2]
    cdef ino_t dir_inos[2]

    def __init__(self, ns=None, nstype=0, *, pid=None):
        cdef int c_nstype
        if (ns is None) == (pid is None):
            raise TypeError("entered() takes a namespace or pid=, exactly one of them")
        c_nstype = _index(nstype)
        if c_nstype & ~(_ENTERABLE | CLONE_NEWUSER):
            raise ValueError(f"invalid nstype {c_nstype:#x}: 0 or a combination of NEWNS, "
                             "NEWUTS, NEWIPC, NEWNET, NEWPID, NEWCGROUP, NEWTIME")
        if c_nstype & CLONE_NEWUSER:
            raise ValueError(_NO_USER_NS)
        if pid is not None:
            if c_nstype == 0:
                raise ValueError("entered(pid=...) needs nstype: the namespace types to enter")
            self.pid, self.by_pid = _index(pid), True
        self.ns, self.nstype = ns, c_nstype

    def __dealloc__(self):
        if self.active:  # never left: the thread stays inside, the fds need not
            self._close_saved()

    cdef void _close_saved(self) noexcept:
        cdef int i
        for i in range(self.count):
            if lc_same_file(self.fds[i], self.devs[i], self.inos[i]):
                close(self.fds[i])
        self.count = 0
        for i in range(self.dir_count):
            if lc_same_file(self.dirs[i], self.dir_devs[i], self.dir_inos[i]):
                close(self.dirs[i])
        self.dir_count = 0

    cdef int _save(self, int types) except -1:
        """Keep an fd of the calling thread's current namespace of each type in `types`."""
        cdef int i, kind, fd
        for i in range(_MAX_SAVED):
            kind = _SAVE_ORDER[i]
            if types & kind:
                fd = lc_thread_ns_open(kind, &self.devs[self.count], &self.inos[self.count])
                if fd == -1:
                    _raise_errno(errno, _THREAD_NS[kind])
                self.fds[self.count], self.kinds[self.count] = fd, kind
                self.count += 1
        if types & CLONE_NEWNS:
            for i in range(2):
                fd = lc_dir_open(_KEPT_DIRS[i], &self.dir_devs[i], &self.dir_inos[i])
                if fd == -1:
                    _raise_errno(errno, _KEPT_DIRS[i].decode())
                self.dirs[i] = fd
                self.dir_count += 1
        return 0

    cdef int _go_back(self, int i) noexcept:
        """setns() back into saved namespace i, then close its fd -- unless the fd no longer
        is that file: setns would go somewhere else, and close someone else's fd.  0, an
        errno, or _REPLACED."""
        cdef int rc, err, fd = self.fds[i], kind = self.kinds[i]
        if not lc_same_file(fd, self.devs[i], self.inos[i]):
            return _REPLACED
        if kind & _MAY_BLOCK_ENTER:
            with nogil:
                rc = sys_setns(fd, kind)
        else:
            rc = sys_setns(fd, kind)
        err = errno
        close(fd)
        return 0 if rc == 0 else err

    cdef int _return_to_dirs(self, bint back, int *which, const char **step) noexcept:
        """Once back in the mount namespace (`back`), return to the kept root and working
        directory; close their fds either way -- but one that no longer is that file.  0, an
        errno (the step in *step), or _REPLACED (the directory in *which)."""
        cdef int i, err = 0, fds[2]
        step[0] = NULL
        if self.dir_count == 0:
            return 0
        for i in range(2):
            fds[i] = self.dirs[i]
            if not lc_same_file(fds[i], self.dir_devs[i], self.dir_inos[i]):
                fds[i] = -1
                if err == 0:
                    which[0], err = i, _REPLACED
        if back:
            i = lc_dir_return(fds[0], fds[1], step)
            if err == 0:
                err = i
        for i in range(2):
            if fds[i] >= 0:
                close(fds[i])
        self.dir_count = 0
        return err

    def __enter__(self):
        cdef _Opened target
        cdef int rc, fd, types = self.nstype
        if self.active:
            raise RuntimeError("this entered() is already active; make one per use")
        if self.by_pid:
            fd = sys_pidfd_open(self.pid, 0)
            if fd == -1:
                _raise_errno(errno)
            target = _Opened.of(fd, None)
        else:
            target = _fd_arg(self.ns, &fd)
        self.count = self.dir_count = 0
        try:
            if types == 0:
                types = lc_ns_ioctl(fd, NS_GET_NSTYPE)
                if types == -1:
                    _raise_errno(errno, None if target is None else target.path)
                if types == CLONE_NEWUSER:
                    raise ValueError(_NO_USER_NS)
            if types & CLONE_NEWNS and types != CLONE_NEWNS and not lc_single_threaded():
                # The kernel gives EINVAL for a mount namespace when the thread shares its fs,
                # but not through a pidfd with other types too (Linux 5.8+, fs/nsproxy.c: that
                # setns installs the new root and cwd in the shared fs, moving every thread),
                # and then the way back is the EINVAL.  So that form gets it here, before any
                # setns; NEWNS alone is left to the kernel's check, which is exact.
                _raise_errno(EINVAL, None if target is None else target.path)
            self._save(types)
            if types & _MAY_BLOCK_ENTER:
                with nogil:
                    rc = sys_setns(fd, types)
            else:
                rc = sys_setns(fd, types)
            if rc == -1:
                _raise_errno(errno, None if target is None else target.path)
        except BaseException:
            self._close_saved()
            raise
        finally:
            if target is not None:
                target.release()
        self.active = True
        self.thread = PyThread_get_thread_ident()
        return self

    def __exit__(self, exc_type, exc_value, traceback):
        cdef int i, err, failed = -1, failure = 0, which = 0
        cdef bint mnt_back = False
        cdef const char *step
        if not self.active:
            return None
        if PyThread_get_thread_ident() != self.thread:
            # setns moves only the calling thread: going back from here would move this one
            # and leave the entering thread inside (a generator closed on another thread).
            raise RuntimeError("entered(): __exit__ on another thread than __enter__; the "
                               "entering thread is still in the entered namespace")
        self.active = False
        for i in range(self.count - 1, -1, -1):
            err = self._go_back(i)
            mnt_back |= err == 0 and self.kinds[i] == CLONE_NEWNS
            if err != 0 and failed == -1:
                failed, failure = i, err
        self.count = 0
        # A thread still in the entered mount namespace keeps its root and cwd: the kept
        # ones belong to the other namespace.
        err = self._return_to_dirs(mnt_back, &which, &step)
        if failed == -1:
            self._raise_dirs(err, which, step)
            return None
        path = _THREAD_NS[self.kinds[failed]]
        if failure == _REPLACED:
            raise RuntimeError(f"entered(): fd {self.fds[failed]}, which kept the thread's "
                               f"previous namespace ({path}), was closed or replaced inside "
                               f"the block; the thread is still in the entered "
                               f"{path.rpartition('/')[2]} namespace")
        _raise_errno(failure, path)

    cdef int _raise_dirs(self, int err, int which, const char *step) except -1:
        """_return_to_dirs's failure as __exit__'s exception."""
        if err == 0:
            return 0
        if err == _REPLACED:
            raise RuntimeError(f"entered(): fd {self.dirs[which]}, which kept the thread's "
                               f"{_KEPT_DIR_NAMES[which]}, was closed or replaced inside the "
                               f"block; the thread's {_KEPT_DIR_NAMES[which]} is still the "
                               f"entered mount namespace's root")
        try:
            _raise_errno(err)
        except OSError as exc:
            exc.strerror = (f"{exc.strerror} (entered(): {step.decode()}, back from the mount "
                            f"namespace)")
            raise


# ---- clone: the parent side ----

cdef size_t _page_size = <size_t>sysconf(_SC_PAGESIZE)

cdef extern from "_clone.h" nogil:
    # Whether the caller may clone directly, and the forked helper's channel when it may not.
    bint lc_single_threaded()
    int lc_pid_ns_moved()
    int lc_report_pair(int fds[2], int passcred)
    int lc_send_report(int sock, int value, int fd)
    int lc_recv_report(int sock, int block, int *value, int *fd, int *lost, pid_t *sender)
    void lc_send_go(int sock)
    bint lc_wait_go(int sock)
    int lc_write_proc(pid_t pid, const char *name, const char *data, size_t size)
    # The child's stack as AddressSanitizer must see it (no-ops without ASan).
    void lc_unpoison(void *addr, size_t size)
    void lc_stack_switch_start(const void *bottom, size_t size)
    void lc_stack_switch_finish()

cdef extern from "_clone.h":
    # The interpreter's recursion bounds, fitted to the child's dedicated stack.
    const size_t LC_MIN_STACK_SIZE
    int lc_fit_recursion(char *base, size_t size) except -1
    # sys.stdout and sys.stderr flushed through borrowed references (no page written for
    # the lookups after a fork; as PyObject *, Cython passes its globals without a count).
    int lc_flush_std(PyObject *sysdict, PyObject *names, PyObject *flush,
                     bint keep_base) except -1

# The smallest dedicated stack, for the running CPython: the reserve for the parser and
# unchecked C recursion, and room for what the main thread runs (see lc_fit_recursion).
MIN_STACK_SIZE = LC_MIN_STACK_SIZE

# The child's calls, looked up once: a lookup in the child writes reference counts (the
# module's, the attribute's), and each page the child writes is a copy-on-write fault.
# Called as PyObject *, which Cython passes on without counting a reference.
cdef extern from "Python.h":
    object PyObject_CallNoArgs(PyObject *callable)
cdef object _atexit_clear = atexit._clear
cdef object _atexit_count = atexit._ncallbacks
cdef dict _sys_modules = sys.modules
cdef dict _sys_dict = sys.__dict__  # what sys.stdout reads, as the interpreter's exit does
cdef tuple _STD_STREAMS = ("stdout", "stderr")

# What the child reads once on its dedicated stack (makecontext passes no pointers).  Only
# the child writes these, in its own memory: every page the parent writes between two clones
# is a copy-on-write fault, in the parent and again in a child that touches it.
cdef object _child_func = None
cdef char *_child_stack = NULL
cdef size_t _child_stack_size = 0
cdef ucontext_t _child_context


cdef class _Stack:
    """A dedicated child stack: `size` bytes rounded up to pages, plus a guard page below."""
    cdef char *base
    cdef size_t length

    def __cinit__(self, size_t size):
        cdef size_t usable = (size + _page_size - 1) // _page_size * _page_size
        if usable < size or usable + _page_size < usable:
            raise OverflowError("stack_size is too large")
        self.length = usable + _page_size
        self.base = <char *>mmap(NULL, self.length, PROT_READ | PROT_WRITE,
                                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        if <void *>self.base == MAP_FAILED:
            self.base = NULL
            _raise_errno(errno)
        if mprotect(self.base, _page_size, PROT_NONE) == -1:
            _raise_errno(errno)
        lc_unpoison(self.base, self.length)

    def __dealloc__(self):
        if self.base != NULL:
            munmap(self.base, self.length)


cdef pid_t _raw_clone(unsigned long long flags, int exit_signal, lc_clone_args *args,
                      int *pidfd) noexcept nogil:
    """The clone syscall, fork-like: the child returns 0 on a copy of the caller's stack."""
    if args != NULL:
        args.flags = flags
        args.exit_signal = <unsigned int>exit_signal
        args.pidfd = <uint64_t>pidfd
        return sys_clone3(args, sizeof(lc_clone_args))
    return sys_clone_fork(<unsigned long>(flags | <unsigned int>exit_signal), pidfd)


cdef void _reap(pid_t pid) noexcept nogil:
    cdef int status
    # __WALL: a clone child may exit with another signal than SIGCHLD, or none.
    while waitpid(pid, &status, WALL) == -1 and errno == EINTR:
        pass


cdef pid_t _clone_from_fork(unsigned long long flags, int exit_signal, lc_clone_args *args,
                            bint pid_ns_moved, int *pidfd, int *err) noexcept nogil:
    """Clone as safely as fork() in a threaded process.

    glibc's fork() takes the malloc, stdio and atfork locks, so its child inherits none held
    by another thread; a raw clone does not.  So fork() a helper, which (now single-threaded)
    clones with CLONE_PARENT -- the child becomes the caller's child -- reports the pid (and
    the pidfd of CLONE_PIDFD, as SCM_RIGHTS) through a socket pair and exits.  When the
    calling thread's children go to another pid namespace (pid_ns_moved), the helper is in
    it too and numbers the child there, so the child itself reports: the kernel gives its
    pid as the caller numbers it.  A child whose caller may still fail (no free fd for the
    pidfd, no pid) is gated: it waits for the caller's word and exits without it.  Returns 0
    in the child, the pid or -1 (with *err) in the parent.
    """
    cdef int fds[2]
    cdef int value, lost = 0
    cdef pid_t helper, pid = 0
    cdef bint gated = pid_ns_moved or (flags & CLONE_PIDFD) != 0
    if lc_report_pair(fds, pid_ns_moved) == -1:
        err[0] = errno
        return -1
    helper = fork()
    if helper == 0:
        close(fds[0])  # the child must not hold it; and room for the pidfd with a full table
        return _helper_clone(flags, exit_signal, args, pid_ns_moved, gated, fds[1], pidfd)
    err[0] = errno
    close(fds[1])
    if helper == -1:
        close(fds[0])
        return -1
    _reap(helper)
    value = _read_reports(fds[0], pid_ns_moved, pidfd, &lost, &pid)
    if value > 0 and pid > 0 and not lost:
        if gated:
            lc_send_go(fds[0])
        close(fds[0])
        return pid
    err[0] = -value if value < 0 else EMFILE if lost else ECHILD  # ECHILD: no report
    if pidfd[0] != -1:
        close(pidfd[0])
        pidfd[0] = -1
    close(fds[0])  # a gated child now exits without running anything
    if value > 0 and pid > 0:
        _reap(pid)
    return -1


cdef pid_t _helper_clone(unsigned long long flags, int exit_signal, lc_clone_args *args,
                         bint pid_ns_moved, bint gated, int sock, int *pidfd) noexcept nogil:
    """The forked helper of _clone_from_fork: clone, report on `sock` and _exit; returns 0 only
    in the child, once it has reported itself (pid_ns_moved) and had the word to go (gated)."""
    cdef pid_t pid = _raw_clone(flags | CLONE_PARENT, 0 if args != NULL else exit_signal, args,
                                pidfd)
    if pid == 0:
        if pid_ns_moved and lc_send_report(sock, 0, -1) == -1:
            _exit(127)
        if gated and not lc_wait_go(sock):
            _exit(127)
        close(sock)
        return 0
    lc_send_report(sock, pid if pid > 0 else -errno, pidfd[0] if pid > 0 else -1)
    _exit(0)


cdef int _read_reports(int sock, bint pid_ns_moved, int *pidfd, int *lost,
                       pid_t *pid) noexcept nogil:
    """The helper's report, returned (the child's pid or -errno; 0: none), and with
    pid_ns_moved the child's own, whose sender is the child's pid as we number it (*pid)."""
    cdef int value = 0, report
    cdef pid_t sender
    cdef bint heard_child = False
    # The helper is gone, so its report is queued if it made one; only the child's may still
    # be on its way, and is waited for (the child sends it before anything else, or dies).
    while value == 0 or (pid_ns_moved and value > 0 and not heard_child):
        report = sender = 0
        if lc_recv_report(sock, pid_ns_moved and not heard_child, &report, pidfd, lost,
                          &sender) != 1:
            break
        if report != 0:
            value = report
        else:
            heard_child, pid[0] = True, sender
    if not pid_ns_moved and value > 0:
        pid[0] = value
    return value


cpdef int _write_maps(pid_t pid, bytes uid_text, str setgroups, bytes gid_text) except -1:
    """Write /proc/<pid>/uid_map, setgroups and gid_map (None: not written), in the order the
    kernel needs; a failure is an OSError whose filename is the file."""
    if uid_text is not None:
        _write_proc(pid, b"uid_map", uid_text)
    if setgroups is not None:
        _write_proc(pid, b"setgroups", setgroups.encode())
    if gid_text is not None:
        _write_proc(pid, b"gid_map", gid_text)
    return 0


cdef int _write_proc(pid_t pid, const char *name, bytes data) except -1:
    cdef int err
    if lc_write_proc(pid, name, data, len(data)) == -1:
        err = errno
        _raise_errno(err, f"/proc/{pid}/{name.decode()}")
    return 0


cdef class _MapsGate:
    """The socket pair on which a clone child waits until the caller has written its id maps:
    sock[0] the caller's end, sock[1] the child's.  Both are closed when the gate goes, so a
    _clone that raises at any point leaves neither open."""
    cdef int sock[2]

    def __cinit__(self):
        self.sock[0] = self.sock[1] = -1
        if lc_report_pair(self.sock, False) == -1:
            _raise_errno(errno)

    def __dealloc__(self):
        self.release()

    cdef void release(self) noexcept nogil:
        cdef int i
        for i in range(2):
            if self.sock[i] >= 0:
                close(self.sock[i])
                self.sock[i] = -1

    cdef void wait(self) noexcept nogil:
        """In the child, before any Python code: on the caller's word go on, else (the maps
        failed, or the caller died) _exit(127)."""
        close(self.sock[0])
        if not lc_wait_go(self.sock[1]):
            _exit(127)
        close(self.sock[1])

    cdef int give(self, pid_t pid, int pidfd, tuple maps) except -1:
        """In the caller: write the child's maps and give it the word; if a write fails, kill
        and reap the child and close its pidfd first.  No Python code runs from the clone to
        here, so no signal handler's exception can lose the child."""
        try:
            _write_maps(pid, maps[0], maps[1], maps[2])
        except BaseException:
            c_kill(pid, SIGKILL)
            with nogil:
                _reap(pid)  # ECHILD with PARENT: then the child is not ours to reap
            if pidfd >= 0:
                close(pidfd)
            raise
        lc_send_go(self.sock[0])
        self.release()
        return 0


cdef int _check_clone(object func, Py_ssize_t stack_size, unsigned long long flags,
                      int exit_signal) except -1:
    """What clone() and clone3() refuse before anything else."""
    if not callable(func):
        raise TypeError(f"func must be callable, not {type(func).__name__}")
    if stack_size < 0 or 0 < stack_size < MIN_STACK_SIZE:
        raise ValueError(f"stack_size is 0 (the caller's stack) or at least {MIN_STACK_SIZE}")
    if flags & _NOT_FOR_PYTHON:
        raise ValueError("VM, THREAD, SIGHAND, SETTLS, PARENT_SETTID, CHILD_SETTID and "
                         "CHILD_CLEARTID cannot carry a Python child; use the C-level API "
                         "of linux_clone._core")
    if exit_signal < 0 or exit_signal >= NSIG:
        raise ValueError(f"exit signal {exit_signal} is not a signal number")
    if PyInterpreterState_Get() != PyInterpreterState_Main():
        raise RuntimeError("clone() is not supported in subinterpreters")
    return 0


cdef enum _Way:
    WAY_DIRECT, WAY_FROM_FORK, WAY_FROM_FORK_PID_NS_MOVED   # how _clone makes the child


cdef int _way(unsigned long long flags, int exit_signal) except -1:
    """Directly, or (with other threads running) from a forked helper, which must then be
    able to give the flags their meaning.  Decided only after PyOS_BeforeFork, which may wait
    for the import lock and let other threads run."""
    cdef int pid_ns_moved
    if lc_single_threaded():
        return WAY_DIRECT
    pid_ns_moved = lc_pid_ns_moved()
    if pid_ns_moved and flags & CLONE_NEWPID:
        # The kernel's answer to a direct clone (copy_pid_ns: a new pid namespace's parent
        # must be the caller's own); the helper, in the moved namespace, would make one.
        _raise_errno(EINVAL)
    if flags & _SHARES_WITH_CALLER or exit_signal != SIGCHLD:
        raise RuntimeError(
            "with other threads running, clone() can only make a child that exits with "
            "SIGCHLD and shares nothing with the caller (no FILES, FS, SYSVSEM, IO, PARENT): "
            "it clones from a forked helper, so that no lock another thread holds is "
            "inherited; clone before starting threads, or use the C-level API")
    if pid_ns_moved == -1:
        raise RuntimeError(
            "after unshare(NEWPID), with other threads running, clone() cannot make the init "
            "of the new pid namespace: it clones from a forked helper, which would become that "
            "init; clone before starting threads, or pass NEWPID to clone() instead")
    return WAY_FROM_FORK_PID_NS_MOVED if pid_ns_moved else WAY_FROM_FORK


cdef object _clone(object func, Py_ssize_t stack_size, unsigned long long flags,
                   int exit_signal, lc_clone_args *args, int opened_fd=-1, tuple maps=None,
                   list into=None):
    """The common part of clone() and clone3(): checks, the fork protocol of the interpreter,
    the syscall, and the result (pid, or (pid, pidfd) with CLONE_PIDFD).  opened_fd: an fd
    opened for this call, which the child closes first (the caller closes its own).  maps:
    the id maps (uid_map, setgroups, gid_map) to write while the child waits.  into: a list
    that gets the pid and pidfd (-1 without) before the return, for _discard."""
    cdef _Stack stack = None
    cdef _MapsGate gate = None
    cdef int way, pidfd = -1, err = 0
    cdef pid_t pid
    _check_clone(func, stack_size, flags, exit_signal)
    if stack_size > 0:
        stack = _Stack(stack_size)
    if maps is not None:
        gate = _MapsGate()
    # What the parent has buffered must not be written again by the child.
    lc_flush_std(<PyObject *>_sys_dict, <PyObject *>_STD_STREAMS, <PyObject *>"flush", True)
    PyOS_BeforeFork()
    try:
        way = _way(flags, exit_signal)
    except BaseException:
        PyOS_AfterFork_Parent()
        raise
    if way == WAY_DIRECT:
        pid = _raw_clone(flags, exit_signal, args, &pidfd)
        err = errno
    else:
        pid = _clone_from_fork(flags, exit_signal, args, way == WAY_FROM_FORK_PID_NS_MOVED, &pidfd,
                               &err)
    if pid == 0:
        # The child returns here on its copy of this frame, so it reads these as locals.
        # With a shared fd table the caller's close is the only one.
        if gate is not None:
            gate.wait()
        _child_start(func, stack.base + _page_size if stack is not None else NULL,
                     stack.length - _page_size if stack is not None else 0,
                     opened_fd if not flags & CLONE_FILES else -1, (flags & CLONE_FILES) != 0)
    PyOS_AfterFork_Parent()
    if pid == -1:
        _raise_errno(err)
    if gate is not None:
        gate.give(pid, pidfd, maps)
    if into is not None:
        into.extend((pid, pidfd))
    if flags & CLONE_PIDFD:
        return (pid, pidfd)
    return pid


def clone(func, stack_size=0, flags=SIGCHLD, *, tuple maps=None, list into=None):
    """Create a child process as clone(2) does and call func() in it; return its pid
    ((pid, pidfd) with PIDFD).  The internal form; linux_clone.clone checks and converts
    the id maps (maps: uid_map and gid_map text, setgroups) and passes `into` (see _clone)."""
    cdef unsigned long long c_flags = _index(flags)
    cdef unsigned long long ns_flags = c_flags & ~CSIGNAL
    cdef int exit_signal = <int>(c_flags & CSIGNAL & ~CLONE_NEWTIME)
    cdef lc_clone_args args
    if c_flags & CLONE_INTO_CGROUP:
        raise ValueError("INTO_CGROUP goes with a cgroup: use clone3(func, cgroup=...)")
    if c_flags & CLONE_NEWTIME or c_flags >> 32:
        # Legacy clone(2) reads bit 0x80 as part of the exit signal and drops the high 32
        # bits; only clone3 can say them (and refuses the ones it does not know).
        memset(&args, 0, sizeof(args))
        return _clone(func, _index(stack_size),
                      (ns_flags | (c_flags & CLONE_NEWTIME)) & ~CLONE_DETACHED,
                      exit_signal, &args, -1, maps, into)
    return _clone(func, _index(stack_size), ns_flags, exit_signal, NULL, -1, maps, into)


# ---- clone: the child side ----

cdef void _child_start(object func, char *stack, size_t stack_size, int close_fd,
                       bint shares_fd_table) noexcept:
    """First code of the child: the interpreter's after-fork work, then func() (on `stack`
    unless NULL).  close_fd: an fd the call opened (a cgroup path), closed first."""
    global _child_func, _child_stack, _child_stack_size, _shares_fd_table
    if close_fd >= 0:
        close(close_fd)
    if _shares_fd_table != shares_fd_table:  # written only when it changes: a page less
        _shares_fd_table = shares_fd_table
    PyOS_AfterFork_Child()
    if stack != NULL:
        # Continue on the dedicated stack; the copy of the caller's stack is never used again.
        # _child_on_stack takes no arguments (makecontext passes ints only): it reads these.
        _child_func, _child_stack, _child_stack_size = func, stack, stack_size
        getcontext(&_child_context)
        _child_context.uc_stack.ss_sp = stack
        _child_context.uc_stack.ss_size = stack_size
        _child_context.uc_link = NULL
        makecontext(&_child_context, _child_on_stack, 0)
        lc_stack_switch_start(stack, stack_size)
        setcontext(&_child_context)
        _exit(127)  # setcontext returns only on failure
    _child_main(func)


cdef void _child_on_stack() noexcept nogil:
    lc_stack_switch_finish()
    with gil:
        try:
            lc_fit_recursion(_child_stack, _child_stack_size)
        except BaseException:
            sys.excepthook(*sys.exc_info())
            _exit(1)
        _child_main(_child_func)


cdef int _exit_status(object code) noexcept:
    """The exit status for None or an int, as the interpreter's top level passes
    `sys.exit(code)` to exit(): (int)PyLong_AsLong(code), -1 (255) when it overflows a long."""
    if code is None:
        return 0
    try:
        return <int>PyLong_AsLong(code)
    except OverflowError:
        return -1


cdef void _report_exception() noexcept:
    """Print the exception being handled, as the top level does; a failing hook is ignored."""
    try:
        sys.excepthook(*sys.exc_info())
    except BaseException:
        pass


cdef bint _exit_is_idle(object threading) noexcept:
    """Whether threading._shutdown() and the atexit handlers have nothing to do at the child's
    exit: no atexit handler of the child's own, one thread (any the child started is gone,
    so none is left to join) and no threading._register_atexit callback.  _shutdown's only
    other effect (3.9-3.14), the main thread marked stopped, is then seen by no code of the
    child's; and each page that _shutdown would write is a copy-on-write fault.  Not idle
    when it cannot tell."""
    try:
        return (PyObject_CallNoArgs(<PyObject *>_atexit_count) == 0 and lc_single_threaded()
                and (threading is None or not getattr(threading, "_threading_atexits", True)))
    except BaseException:
        return False


cdef void _child_main(object func) noexcept:
    """Run func() in the child and end it as a multiprocessing child of CPython 3.13+ ends
    (gh-83856): atexit handlers registered before func() are dropped (they are the parent's),
    non-daemon threads are joined (threading._shutdown), then the atexit handlers the child
    registered run, sys.stdout and sys.stderr are flushed, and it _exits; never returns."""
    cdef int status = 1
    cdef bint idle = False
    try:
        try:
            PyObject_CallNoArgs(<PyObject *>_atexit_clear)
            code = func()
        except SystemExit as exc:
            code = exc.code
            if code is not None and not PyLong_Check(code):
                print(code, file=sys.stderr)
                code = 1
        else:
            if code is not None and not PyLong_Check(code):
                raise TypeError(f"clone child returned {type(code).__name__}, "
                                f"not an int or None")
        status = _exit_status(code)
    except BaseException:
        status = 1
        _report_exception()
    try:
        threading = _sys_modules.get("threading")
        idle = _exit_is_idle(threading)
        if threading is not None and not idle:
            threading._shutdown()
    except BaseException:
        _report_exception()
    try:
        if not idle:
            try:
                atexit._run_exitfuncs()
            except BaseException:
                pass  # printed already (3.9 raises the last one again, too)
        lc_flush_std(<PyObject *>_sys_dict, <PyObject *>_STD_STREAMS, <PyObject *>"flush",
                     False)
    finally:
        if _shares_fd_table:
            lc_thread_ns_drop()  # entered()'s fd of this child, in the table the parent keeps
        _exit(status)


# ---- clone3 ----

MAX_PID_NS_LEVEL = 32  # the kernel's limit on nested pid namespaces, so on set_tid's length


def clone3(func, flags=0, *, exit_signal=SIGCHLD, stack_size=0, cgroup=None, set_tid=(),
           tuple maps=None, list into=None):
    """Create a child process as clone3(2) does and call func() in it; return its pid
    ((pid, pidfd) with PIDFD).  The internal form; maps and into as for clone()."""
    cdef unsigned long long c_flags = _index(flags)
    cdef int c_exit_signal = _index(exit_signal)
    cdef Py_ssize_t c_stack_size = _index(stack_size)
    cdef lc_clone_args args
    cdef pid_t tids[32]
    cdef Py_ssize_t i, n
    cdef int group_fd
    cdef _Opened group = None
    if not isinstance(set_tid, (list, tuple)):
        raise TypeError(f"set_tid must be a list or tuple, not {type(set_tid).__name__}")
    set_tid = tuple(set_tid)  # the items' __index__ may change a list under us
    n = len(set_tid)
    if n > MAX_PID_NS_LEVEL:
        raise ValueError(f"set_tid has at most {MAX_PID_NS_LEVEL} pids, not {n}")
    if c_flags & CSIGNAL & ~CLONE_NEWTIME:
        raise ValueError("clone3's flags take no exit signal (bits 0x7f): pass it as "
                         "exit_signal=")
    if c_flags & CLONE_INTO_CGROUP and cgroup is None:
        raise ValueError("INTO_CGROUP goes with a cgroup: pass cgroup=")
    memset(&args, 0, sizeof(args))
    for i in range(n):
        try:
            tids[i] = _index(set_tid[i])
        except (TypeError, OverflowError) as exc:
            raise type(exc)(f"set_tid[{i}]: {exc}") from None
    if n:
        args.set_tid = <uint64_t>tids
        args.set_tid_size = <uint64_t>n
    if cgroup is not None:
        group = _fd_arg(cgroup, &group_fd)
        args.cgroup = <uint64_t>group_fd
        c_flags |= CLONE_INTO_CGROUP
    try:
        return _clone(func, c_stack_size, c_flags, c_exit_signal, &args,
                      group.fd if group is not None else -1, maps, into)
    except OSError as exc:
        if group is None or exc.filename is not None:
            raise
        raise OSError(exc.errno, exc.strerror, group.path) from None
    finally:
        if group is not None:
            group.release()


# ---- spawn: a program in new namespaces, vfork-style ----

cdef extern from "_spawn.h" nogil:
    void lc_reset_signals(const sigset_t *mask, bint handlers)
    void lc_futex_wait_while(int *word, int value)
    void lc_futex_set(int *word, int value)
    bint lc_parent_gone(int pidfd, pid_t parent, bint newpid)
    const unsigned int CLOSE_RANGE_CLOEXEC
    int lc_close_range(unsigned int first, unsigned int last, unsigned int flags)
    char *lc_stack_take(size_t length, size_t guard)
    void lc_stack_keep(char *base, size_t length)


SPAWN_STACK_SIZE = 64 * 1024
cdef size_t _spawn_stack_length = SPAWN_STACK_SIZE + _page_size  # with the guard page below
HOST_NAME_MAX = 64  # the kernel's __NEW_UTS_LEN: a longer name is EINVAL from sethostname
cdef unsigned long long _SPAWN_FLAGS = (CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER
                                        | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWCGROUP
                                        | CLONE_NEWTIME | CLONE_PIDFD)


def _unmap_kept_stack():
    """At exit, as the interpreter frees what it made (an embedder may start another)."""
    lc_stack_keep(NULL, _spawn_stack_length)


atexit.register(_unmap_kept_stack)


cdef enum _Stage:  # the step that failed: the parent's clone, or one of the child's
    STAGE_CLONE, STAGE_MAPS, STAGE_TIME, STAGE_HOSTNAME, STAGE_LOOPBACK, STAGE_FDS, STAGE_CWD,
    STAGE_SETSID, STAGE_EXEC

# What the child was doing when a stage failed, for the OSError's message.
cdef tuple _STAGE_STEPS = ("clone", "waiting for its id maps", "unshare(CLONE_NEWTIME)",
                           "sethostname", "bringing up lo", "pass_fds and stdin/stdout/stderr",
                           "chdir", "setsid", "execve")

cdef enum _Go:
    GO_WAIT, GO_RUN, GO_ABORT   # the parent's word to a child waiting for its id maps

cdef struct _SpawnRequest:
    char **argv
    char **envp         # NULL: the process's environ
    char **paths        # the candidate executables, NULL-terminated
    const char *cwd
    const char *hostname
    size_t hostname_len
    bint loopback
    bint newtime
    bint newpid
    bint reset_sig      # the child resets the signal handlers (no CLONE_CLEAR_SIGHAND)
    bint maps           # wait for `go` (the parent writes the id maps first)
    int go              # a _Go, set by the parent
    int done            # nonzero until the child execs or exits (CLONE_CHILD_CLEARTID)
    int parent_pidfd    # the parent's pidfd (-1 without pidfds), for lc_parent_gone
    pid_t parent_pid
    sigset_t mask       # the parent's signal mask, restored before exec
    int stdio[3]        # the fds to become 0, 1 and 2 (-1: as they are)
    const int *keep     # pass_fds, sorted: made inheritable, and spared by close_fds
    Py_ssize_t nkeep
    bint fds            # stdio or pass_fds given: _spawn_fds runs
    bint close_fds      # no fd but 0-2 and `keep` reaches the program
    bint setsid
    int umask           # -1: the caller's
    int err             # set by the child on failure (the memory is shared)
    int stage


cdef class _CStrings:
    """A NULL-terminated char* array over bytes objects that it keeps alive."""
    cdef list items
    cdef char **array

    def __cinit__(self, items):
        cdef Py_ssize_t i
        self.items = [_fsencode(item) for item in items]
        self.array = <char **>PyMem_Malloc((len(self.items) + 1) * sizeof(char *))
        if self.array == NULL:
            raise MemoryError()
        for i in range(len(self.items)):
            self.array[i] = self.items[i]
        self.array[len(self.items)] = NULL

    def __dealloc__(self):
        PyMem_Free(self.array)


cdef class _Fds:
    """pass_fds as a sorted C array of distinct fds: 0 to INT_MAX, through __index__ (any
    other number is a ValueError, as subprocess has it)."""
    cdef int *array
    cdef Py_ssize_t n

    def __cinit__(self, fds):
        cdef Py_ssize_t i
        distinct = set()
        for item in fds:
            value = _index(item)
            if not 0 <= value <= INT_MAX:
                raise ValueError(f"pass_fds holds fds, not {value}")
            distinct.add(value)
        values = sorted(distinct)
        self.n = len(values)
        self.array = <int *>PyMem_Malloc((self.n + 1) * sizeof(int))
        if self.array == NULL:
            raise MemoryError()
        for i in range(self.n):
            self.array[i] = values[i]

    def __dealloc__(self):
        PyMem_Free(self.array)


cdef class _Spawn:
    """One spawn(): the request its child reads (from the memory they share), and the objects
    the request points into, alive until the child has exec'd or exited."""
    cdef _SpawnRequest req
    cdef _CStrings argv, envp, paths
    cdef char *program[2]  # the paths when argv[0] has a slash: it, then NULL
    cdef bytes cwd, hostname
    cdef _Fds keep
    cdef char *stack      # from lc_stack_take
    cdef bint stack_busy  # a child may still run on it

    def __dealloc__(self):
        if self.stack == NULL:
            return
        if self.stack_busy:
            # Only an exception between the clone and the wait for its exec leaves a child
            # that may still run there: never kept for another spawn.
            munmap(self.stack, _spawn_stack_length)
        else:
            lc_stack_keep(self.stack, _spawn_stack_length)

    cdef int prepare(self, object argv, object env, object cwd, object hostname) except -1:
        """Convert argv, env, cwd and hostname, each once (an __fspath__ or a mapping may
        answer differently the next time): the program searched for is the argv[0] passed."""
        cdef bytes c_cwd, c_hostname
        cdef bytes program
        self.argv = _CStrings(argv)
        if env is not None:
            search = _environ(env)
            self.envp = _CStrings([k + b"=" + v for k, v in search])
            self.req.envp = self.envp.array
        # Else the child execs with the process's own environ (req.envp NULL), which
        # os.environ writes through to, as subprocess's child does: copying os.environ
        # took ~20 us a call (35 variables), a sixth of spawn's overhead over C.
        program = self.argv.items[0]
        if b"/" in program:
            self.program[0], self.program[1] = self.argv.array[0], NULL
            self.req.paths = self.program
        else:
            if env is None:
                path = os.environb.get(b"PATH")
                search = [] if path is None else [(b"PATH", path)]
            self.paths = _CStrings([_exec_candidate(d, program) for d in _exec_path(search)])
            self.req.paths = self.paths.array
        self.req.argv = self.argv.array
        if cwd is not None:
            c_cwd = self.cwd = _fsencode(cwd)
            self.req.cwd = c_cwd
        if hostname is not None:
            c_hostname = self.hostname = _fsencode(hostname)
            if len(c_hostname) > HOST_NAME_MAX:
                raise ValueError(f"hostname is {len(c_hostname)} bytes, more than the kernel's "
                                 f"{HOST_NAME_MAX}")
            self.req.hostname, self.req.hostname_len = c_hostname, len(c_hostname)
        return 0

    cdef int fd_options(self, object stdio, object pass_fds, bint close_fds,
                        bint start_new_session, object umask) except -1:
        """stdio: None, or the fds (-1: none) to become 0, 1 and 2."""
        cdef int i
        if type(pass_fds) is not tuple or len(pass_fds) != 0:
            # Not for the default (): a set, a sort and a malloc less per spawn.
            self.keep = _Fds(pass_fds)
            self.req.keep, self.req.nkeep = self.keep.array, self.keep.n
        self.req.umask = _index(umask)  # as subprocess: any negative one keeps the caller's
        for i in range(3):
            self.req.stdio[i] = -1 if stdio is None else _index(stdio[i])
            if self.req.stdio[i] < -1:
                raise ValueError(f"the fd for {('stdin', 'stdout', 'stderr')[i]} is "
                                 f"{self.req.stdio[i]}")
        self.req.fds = stdio is not None or self.req.nkeep > 0
        self.req.close_fds, self.req.setsid = close_fds, start_new_session
        return 0

    cdef pid_t start(self, int c_flags, bint maps, int *pid_fd) except -2:
        """Clone the child with every signal blocked, as they stay until the caller restores
        req.mask: none of our handlers may run in the child before it has reset them.  The
        pid, or -1 with req.err (STAGE_CLONE)."""
        cdef sigset_t all_signals
        cdef pid_t pid
        self.stack = lc_stack_take(_spawn_stack_length, _page_size)
        if self.stack == NULL:
            _raise_errno(errno)
        lc_unpoison(self.stack, _spawn_stack_length)
        self.req.parent_pidfd = -1
        if not maps:
            c_flags |= CLONE_VFORK
        else:
            # The child waits on `go` while the parent writes its id maps; the kernel clears
            # `done` when the child has exec'd or exited, freeing the shared stack.
            self.req.maps, self.req.done, self.req.parent_pid = True, 1, getpid()
            self.req.parent_pidfd = sys_pidfd_open(self.req.parent_pid, 0)
            if self.req.parent_pidfd == -1 and errno != ENOSYS:
                _raise_errno(errno)
            c_flags |= CLONE_CHILD_CLEARTID
        sigfillset(&all_signals)
        with nogil:
            pthread_sigmask(SIG_SETMASK, &all_signals, &self.req.mask)
            pid = _spawn_clone(&self.req, self.stack, c_flags, pid_fd)
            if pid == -1:
                self.req.err = errno
        # Without maps, CLONE_VFORK returned once the child had exec'd or exited.
        self.stack_busy = pid != -1 and maps
        return pid

    cdef object handshake(self, pid_t pid, object before_start):
        """With id maps: before_start(pid) while the child waits, then the word to go (or to
        exit) and the wait until it has exec'd or exited.  What before_start raised, or None."""
        cdef int go = GO_RUN
        failure = None
        if not self.req.maps:
            return None
        if self.req.parent_pidfd >= 0:
            close(self.req.parent_pidfd)
        if pid != -1:
            try:
                before_start(pid)
            except BaseException as exc:
                failure, go = exc, GO_ABORT
            with nogil:
                lc_futex_set(&self.req.go, go)
                lc_futex_wait_while(&self.req.done, 1)
            self.stack_busy = False
        return failure


def spawn(argv, flags=0, *, env=None, cwd=None, hostname=None,
          bint loopback=False, bint pidfd=False, before_start=None, stdio=None, pass_fds=(),
          bint close_fds=True, bint start_new_session=False, umask=-1, list into=None):
    """Run a program in new namespaces with CLONE_VM|CLONE_VFORK, as posix_spawn runs one
    without them.  The internal form; linux_clone.spawn adds the id maps (before_start(pid)
    runs in the parent while the child waits) and takes file objects for stdio, which here
    is None or three fds (stdin, stdout, stderr; -1 for the caller's).  into: a list that
    gets the child's pid and pidfd (-1 without) before the return, for _discard."""
    cdef unsigned long long ns_flags = _index(flags)
    cdef _Spawn call = _Spawn.__new__(_Spawn)
    cdef int pid_fd = -1
    cdef pid_t pid
    _check_spawn(argv, env, ns_flags, hostname, loopback)
    pidfd = pidfd or (ns_flags & CLONE_PIDFD) != 0
    call.prepare(argv, env, cwd, hostname)
    call.fd_options(stdio, pass_fds, close_fds, start_new_session, umask)
    call.req.loopback = loopback
    call.req.newtime = (ns_flags & CLONE_NEWTIME) != 0
    call.req.newpid = (ns_flags & CLONE_NEWPID) != 0
    pid = call.start(<int>((ns_flags & ~(CLONE_NEWTIME | CLONE_PIDFD)) | CLONE_VM | SIGCHLD
                           | (CLONE_PIDFD if pidfd else 0)),
                     before_start is not None, &pid_fd)
    failure = None
    try:
        failure = call.handshake(pid, before_start)
        if pid != -1 and (failure is not None or call.req.err != 0):
            # Reaped with every signal still blocked, so no handler interrupts it.
            _reap(pid)
            if pid_fd >= 0:
                close(pid_fd)
    finally:
        pthread_sigmask(SIG_SETMASK, &call.req.mask, NULL)
    if failure is not None:
        raise failure
    if call.req.err != 0:
        _raise_stage(call.req.err, call.req.stage, argv[0], cwd, hostname)
    if into is not None:
        # No signal handler runs from the clone to here; one may run (and raise) in the
        # caller before it has stored what we return.
        into.append(pid)
        into.append(pid_fd)
    if pidfd:
        return (pid, pid_fd)
    return pid


from posix.signal cimport kill as c_kill


def _discard(list child, *fds):
    """Kill and reap the child spawn() put in `child` (if any) and close its pidfd, then the
    fds in the lists `fds` (as _close), with no Python code in between: a caller that raised
    before handing them on leaves nothing."""
    cdef pid_t pid
    cdef int pid_fd
    if child:
        pid, pid_fd = child[0], child[1]
        del child[:]
        c_kill(pid, SIGKILL)
        with nogil:
            _reap(pid)
        if pid_fd >= 0:
            close(pid_fd)
    _close(*fds)


# ---- the fds Popen opens for a child: in a list from their creation to their close ----
# A signal handler runs (and may raise KeyboardInterrupt) between any two Python calls, and
# on 3.9 between most bytecodes: an fd held only in a Python variable can be lost there.
# These make an fd and record it, or forget it and close it, in one step.

import io

cdef extern from "<unistd.h>" nogil:
    int pipe2(int pipefd[2], int flags)


def _pipe(list opened, list parent, Py_ssize_t i):
    """A pipe (close-on-exec) for the child's fd i: its end (the read end for stdin, i 0)
    appended to `opened`, the other end put in parent[i]."""
    cdef int ends[2]
    if pipe2(ends, O_CLOEXEC) == -1:
        _raise_errno(errno)
    try:
        opened.append(ends[0] if i == 0 else ends[1])
    except BaseException:
        close(ends[0])
        close(ends[1])
        raise
    parent[i] = ends[1] if i == 0 else ends[0]  # a small int, an index checked by the caller


def _open(list fds, path, int flags):
    """Append the fd of `path` opened with `flags` (close-on-exec) to `fds`."""
    cdef bytes raw = _fsencode(path)
    cdef int fd = c_open(raw, flags | O_CLOEXEC)
    if fd == -1:
        _raise_errno(errno, path)
    try:
        fds.append(fd)
    except BaseException:
        close(fd)
        raise


def _fdopen(list fds, Py_ssize_t i, mode, int bufsize):
    """io.open(fds[i], mode, bufsize), fds[i] becoming -1 as the file object takes the fd
    (bufsize is a C int first: io.open's OverflowError would come before it owned the fd)."""
    fd = fds[i]
    fds[i] = -1
    return io.open(fd, mode, bufsize)


def _close(*fds):
    """Close the fds in the lists `fds`, each entry -1 (none) before its close(); the first
    error (but EINTR: Linux has closed the fd) is raised once all are closed."""
    cdef list each
    cdef Py_ssize_t i
    cdef int fd, err = 0
    for each in fds:
        for i in range(len(each)):
            fd = each[i]
            if fd != -1:
                each[i] = -1
                if close(fd) == -1 and errno != EINTR and err == 0:
                    err = errno
    if err:
        _raise_errno(err)


cdef int _check_spawn(object argv, object env, unsigned long long ns_flags, object hostname,
                      bint loopback) except -1:
    """What spawn() refuses before converting anything."""
    if not isinstance(argv, (list, tuple)):
        raise TypeError(f"argv must be a list or tuple, not {type(argv).__name__}")
    if not argv:
        raise ValueError("argv must not be empty")
    if env is not None and not hasattr(env, "items"):
        raise TypeError(f"env must be a mapping, not {type(env).__name__}")
    if ns_flags & ~_SPAWN_FLAGS:
        raise ValueError("spawn() takes the NEW* namespace flags and PIDFD only: its child "
                         "shares the caller's memory until execve, and nothing after it")
    if hostname is not None and not ns_flags & CLONE_NEWUTS:
        raise ValueError("hostname needs NEWUTS in flags")
    if loopback and not ns_flags & CLONE_NEWNET:
        raise ValueError("loopback needs NEWNET in flags")
    if ns_flags & CLONE_NEWTIME and _linux_before(6, 2):
        # Before Linux 6.2 (exec_task_namespaces) execve leaves a process in its time namespace
        # (only its children enter time_for_children), and the child, sharing the caller's memory,
        # cannot setns into it (EUSERS): the program would run with the caller's clocks.
        raise OSError(EINVAL, "spawn(NEWTIME) needs Linux 6.2 (execve enters the new time "
                      f"namespace from 6.2 on), this is {os.uname().release}")
    return 0


cdef bint _linux_before(int major, int minor) except -1:
    """Whether the running kernel's release is older than major.minor."""
    numbers = []
    for part in os.uname().release.split(".", 2)[:2]:
        digits = len(part) - len(part.lstrip("0123456789"))
        numbers.append(int(part[:digits] or 0))
    return tuple(numbers) < (major, minor)


cdef int _raise_stage(int err, int stage, object program, object cwd,
                      object hostname) except -1:
    """The OSError of a failed step of spawn: the clone's as it is; for the child's, filename is
    the program or the cwd for exec and chdir (as subprocess has them), else the message names
    the step."""
    if stage == STAGE_CLONE:
        _raise_errno(err)
    if stage == STAGE_EXEC:
        _raise_errno(err, program)
    if stage == STAGE_CWD:
        _raise_errno(err, cwd)
    try:
        _raise_errno(err, hostname if stage == STAGE_HOSTNAME else None)
    except OSError as exc:
        exc.strerror = f"{exc.strerror} (spawn child: {_STAGE_STEPS[stage]})"
        raise


cdef list _environ(env):
    out = []
    for key, value in env.items():
        key, value = os.fsencode(key), os.fsencode(value)
        # As subprocess (its fork_exec path): an empty name is passed through as "=value".
        if b"=" in key:
            raise ValueError(f"illegal environment variable name {key!r}")
        out.append((key, value))
    return out


cdef list _exec_path(list environ):
    """The directories to search, as os.get_exec_path() finds them, from the converted
    environment (bytes pairs)."""
    paths = [value for key, value in environ if key == b"PATH"]
    if len(paths) > 1:
        raise ValueError("env cannot contain 'PATH' and b'PATH' keys")
    return (paths[0] if paths else os.fsencode(os.defpath)).split(b":")


cdef pid_t _spawn_clone(_SpawnRequest *req, char *stack, int c_flags,
                        int *pid_fd) noexcept nogil:
    """clone3 with CLONE_CLEAR_SIGHAND (Linux 5.5), so that the kernel resets the caller's
    signal handlers in the child: the child's own reset is a sigaction query per signal,
    ~65 syscalls (~30 us here).  Else (EINVAL before 5.5; ENOSYS before 5.3, on other
    architectures, or from a seccomp filter that refuses clone3, EPERM from older container
    filters) clone, and the child resets them itself; a real error comes again from clone."""
    cdef lc_clone_args args
    cdef pid_t pid
    memset(&args, 0, sizeof(args))
    args.flags = (<unsigned int>c_flags & ~CSIGNAL) | CLONE_CLEAR_SIGHAND
    args.exit_signal = <unsigned int>c_flags & CSIGNAL
    args.pidfd = <uint64_t>pid_fd
    args.child_tid = <uint64_t>&req.done
    args.stack, args.stack_size = <uint64_t>stack, _spawn_stack_length
    req.reset_sig = False
    pid = sys_clone3_fn(&args, sizeof(args), _spawn_child, req)
    if pid == -1 and (errno == ENOSYS or errno == EINVAL or errno == EPERM):
        req.reset_sig = True
        pid = sys_clone(_spawn_child, stack + _spawn_stack_length, c_flags, req, pid_fd, NULL,
                        &req.done)
    return pid


cdef inline bytes _exec_candidate(bytes directory, bytes program):
    """os.path.join(directory, program) for a program without a slash, without its cost."""
    if not directory:
        return program
    return directory + program if directory.endswith(b"/") else directory + b"/" + program


# ---- spawn: the child ----

cdef int _spawn_fail(_SpawnRequest *req, int stage, int err) noexcept nogil:
    req.err = err
    req.stage = stage
    _exit(127)
    return -1


cdef int _spawn_child(void *arg) noexcept nogil:
    """The child of spawn(): syscalls only (it shares the parent's memory), then execve."""
    cdef _SpawnRequest *req = <_SpawnRequest *>arg
    cdef char **path = req.paths
    cdef char **envp
    cdef int err = 0
    if req.maps:
        # A parent that dies before `go` never sends it: PDEATHSIG ends the wait, and a
        # parent already dead when it is armed is seen by lc_parent_gone.
        if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) == -1
                or lc_parent_gone(req.parent_pidfd, req.parent_pid, req.newpid)):
            return _spawn_fail(req, STAGE_MAPS, ECHILD)
        lc_futex_wait_while(&req.go, GO_WAIT)
        if req.go != GO_RUN:
            _exit(127)  # the parent raises what failed
        prctl(PR_SET_PDEATHSIG, 0, 0, 0, 0)
    lc_reset_signals(&req.mask, req.reset_sig)
    # The new time namespace is the children's one; execve moves the process into it.
    if req.newtime and sys_unshare(<int>CLONE_NEWTIME) == -1:
        return _spawn_fail(req, STAGE_TIME, errno)
    if req.hostname != NULL and sethostname(req.hostname, req.hostname_len) == -1:
        return _spawn_fail(req, STAGE_HOSTNAME, errno)
    if req.loopback and lc_configure_loopback() == -1:
        return _spawn_fail(req, STAGE_LOOPBACK, errno)
    if req.fds and _spawn_fds(req) == -1:
        return _spawn_fail(req, STAGE_FDS, errno)
    if req.cwd != NULL and chdir(req.cwd) == -1:
        return _spawn_fail(req, STAGE_CWD, errno)
    if req.umask >= 0:
        umask(<unsigned int>req.umask)
    if req.setsid and setsid() == -1:
        return _spawn_fail(req, STAGE_SETSID, errno)
    if req.close_fds:
        _close_fds(req.keep, req.nkeep)
    # environ is read at the exec, as execv reads it: a putenv may have moved it meanwhile.
    envp = req.envp if req.envp != NULL else environ
    while path[0] != NULL:
        execve(path[0], req.argv, envp)
        # As subprocess does: report the first error that is not "no such file here".
        if err == 0 and errno != ENOENT and errno != ENOTDIR:
            err = errno
        path += 1
    return _spawn_fail(req, STAGE_EXEC, err if err != 0 else errno)


# The fd work of the child follows CPython's Modules/_posixsubprocess.c (child_exec and
# _close_open_fds), system calls only.

cdef inline int _inheritable(int fd, bint inheritable) noexcept nogil:
    # FD_CLOEXEC is the only fd flag, so it is set without reading the flags first.
    return fcntl(fd, F_SETFD, 0 if inheritable else FD_CLOEXEC)


cdef inline int _dup_to(int fd, int target) noexcept nogil:
    if fd == -1:
        return 0
    if fd == target:
        # dup2 onto itself does nothing, so the close-on-exec flag it clears stays (CPython
        # issue 10806): clear it here.
        return _inheritable(fd, True)
    return dup2(fd, target)


cdef int _spawn_fds(_SpawnRequest *req) noexcept nogil:
    """pass_fds made inheritable, then stdin, stdout and stderr put in place; -1 (errno)
    on failure.  The parent's pipe ends are close-on-exec and never in pass_fds."""
    cdef int c2pwrite = req.stdio[1], errwrite = req.stdio[2]
    cdef Py_ssize_t i
    for i in range(req.nkeep):
        if _inheritable(req.keep[i], True) == -1:
            return -1
    # A source fd that a dup2 below would overwrite first moves out of the way, to a
    # close-on-exec copy (CPython issues 12607 and 32270): stdout's from 0, stderr's from 0
    # and 1 (dup may return 0 again when 0 is free).
    if c2pwrite == 0:
        c2pwrite = dup(c2pwrite)
        if c2pwrite == -1 or _inheritable(c2pwrite, False) == -1:
            return -1
    while errwrite == 0 or errwrite == 1:
        errwrite = dup(errwrite)
        if errwrite == -1 or _inheritable(errwrite, False) == -1:
            return -1
    if (_dup_to(req.stdio[0], 0) == -1 or _dup_to(c2pwrite, 1) == -1
            or _dup_to(errwrite, 2) == -1):
        return -1
    return 0


cdef int _close_range_except(unsigned int flags, const int *keep,
                             Py_ssize_t nkeep) noexcept nogil:
    """close_range(flags) over fds 3 and up but those in `keep` (sorted); -1 (errno) when the
    kernel refuses."""
    cdef unsigned int first = 3
    cdef Py_ssize_t i
    for i in range(nkeep):
        if <unsigned int>keep[i] < first:
            continue
        if <unsigned int>keep[i] > first and lc_close_range(first, keep[i] - 1, flags) == -1:
            return -1
        first = keep[i] + 1
    return lc_close_range(first, UINT_MAX, flags)


cdef bint _kept(int fd, const int *keep, Py_ssize_t nkeep) noexcept nogil:
    cdef Py_ssize_t low = 0, high = nkeep, middle
    while low < high:
        middle = (low + high) >> 1
        if keep[middle] == fd:
            return True
        if keep[middle] < fd:
            low = middle + 1
        else:
            high = middle
    return False


cdef struct _Dirent64:  # struct linux_dirent64 of getdents64(2)
    unsigned long long d_ino
    long long d_off
    unsigned short d_reclen
    unsigned char d_type
    char d_name[1]


cdef int _fd_name(const char *name) noexcept nogil:
    """The fd a /proc/self/fd entry names, -1 for "." and ".."."""
    cdef int fd = 0
    if name[0] == 0:
        return -1
    while name[0] != 0:
        if name[0] < c'0' or name[0] > c'9':
            return -1
        fd = fd * 10 + (name[0] - c'0')
        name += 1
    return fd


cdef void _close_listed_fds(const int *keep, Py_ssize_t nkeep) noexcept nogil:
    """Close the fds 3 and up that /proc/self/fd lists, but `keep` -- or, without /proc,
    every fd below RLIMIT_NOFILE (256 if unknown), as CPython's _close_open_fds_safe."""
    cdef unsigned long long buf[128]  # 1 KiB, aligned for the entries
    cdef _Dirent64 *entry
    cdef long n, offset
    cdef int fd, limit = 256, dir_fd = c_open(b"/proc/self/fd", O_RDONLY | O_DIRECTORY
                                              | O_CLOEXEC)
    cdef rlimit nofile
    if dir_fd == -1:
        if getrlimit(RLIMIT_NOFILE, &nofile) == 0:
            limit = <int>min(nofile.rlim_cur, <unsigned long>INT_MAX)
        for fd in range(3, limit):
            if not _kept(fd, keep, nkeep):
                close(fd)
        return
    while True:
        n = syscall(SYS_getdents64, dir_fd, buf, sizeof(buf))
        if n <= 0:
            break
        offset = 0
        while offset < n:
            entry = <_Dirent64 *>(<char *>buf + offset)
            fd = _fd_name(entry.d_name)
            if fd >= 3 and fd != dir_fd and not _kept(fd, keep, nkeep):
                close(fd)
            offset += entry.d_reclen
    close(dir_fd)


cdef void _close_fds(const int *keep, Py_ssize_t nkeep) noexcept nogil:
    """close_fds: the fds 3 and up but `keep` close on exec.  Linux 5.9 and 5.10 have
    close_range without CLOSE_RANGE_CLOEXEC (EINVAL), so they are closed outright, and
    before 5.9 (ENOSYS) the ones /proc/self/fd lists are."""
    if _close_range_except(CLOSE_RANGE_CLOEXEC, keep, nkeep) == 0:
        return
    if errno == EINVAL and _close_range_except(0, keep, nkeep) == 0:
        return
    _close_listed_fds(keep, nkeep)

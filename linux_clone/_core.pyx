# cython: language_level=3, freethreading_compatible=True, auto_pickle=False
"""The compiled core of linux_clone: thin wrappers over the syscalls, one errno path, and the
child entry of clone()/clone3()."""

import atexit
import os
import sys

from libc.errno cimport errno, EINTR, ECHILD, ENOENT, ENOTDIR
from libc.string cimport memset, strerror
from libc.stdint cimport uint64_t
from posix.fcntl cimport open as c_open, O_RDONLY, O_CLOEXEC
from posix.mman cimport mmap, munmap, mprotect, MAP_PRIVATE, MAP_ANONYMOUS, MAP_FAILED, \
    PROT_READ, PROT_WRITE, PROT_NONE
from posix.stat cimport fstat, struct_stat
from posix.types cimport pid_t, sigset_t, uid_t
from posix.unistd cimport close, read, write, _exit, fork, sysconf, _SC_PAGESIZE
from posix.wait cimport waitpid
from cpython.object cimport PyObject_AsFileDescriptor
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.long cimport PyLong_AsLong, PyLong_AsLongAndOverflow, PyLong_Check, PyLong_CheckExact
from cpython.number cimport PyNumber_Index
from libc.limits cimport INT_MAX

cdef extern from "Python.h":
    void PyOS_BeforeFork()
    void PyOS_AfterFork_Parent()
    void PyOS_AfterFork_Child()
    ctypedef struct PyInterpreterState
    PyInterpreterState *PyInterpreterState_Get()
    PyInterpreterState *PyInterpreterState_Main()

cdef extern from "<unistd.h>" nogil:
    int pipe2(int fds[2], int flags)
    int __builtin_ctz(unsigned int x)

cdef extern from "<signal.h>" nogil:
    const int SIGCHLD
    const int SIGKILL
    const int NSIG "_NSIG"
    ctypedef struct stack_t:
        void *ss_sp
        int ss_flags
        size_t ss_size

cdef extern from "<ucontext.h>" nogil:
    ctypedef struct ucontext_t:
        ucontext_t *uc_link
        stack_t uc_stack
    int getcontext(ucontext_t *ucp)
    int setcontext(const ucontext_t *ucp)
    void makecontext(ucontext_t *ucp, void (*func)() noexcept nogil, int argc, ...)

cdef extern from *:
    """
    #include <fcntl.h>
    #include <stdio.h>
    #include <string.h>
    #include <unistd.h>
    /* glibc >= 2.32 defines it; weak, so that a module built for an older glibc (the
       manylinux wheels) loads there and still reads it where the running glibc has it. */
    extern char __libc_single_threaded __attribute__((weak));

    /* True when no other thread can hold a libc lock: glibc >= 2.32 keeps
       __libc_single_threaded false once a second thread has ever existed, so a process that
       had threads reads its current count (field 20 of /proc/self/stat). */
    static int lc_single_threaded(void) {
        char buf[1024], *p;
        ssize_t n;
        int fd, field;
        if (&__libc_single_threaded != NULL && __libc_single_threaded)
            return 1;
        fd = open("/proc/self/stat", O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            return 0;
        n = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (n <= 0)
            return 0;
        buf[n] = 0;
        p = strrchr(buf, ')');
        for (field = 2; p != NULL && field < 20; field++)
            p = strchr(p + 1, ' ');
        return p != NULL && p[1] == '1' && p[2] == ' ';
    }
    """
    bint lc_single_threaded() nogil


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
WAIT_ALL = WALL

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


# ---- the one errno path ----

cdef int _raise_errno(int err, object filename=None, object filename2=None) except -1:
    raise OSError(err, strerror(err).decode(), filename, None, filename2)


# ---- argument conversion ----

cdef class _Ns:
    """An fd argument (a namespace, a cgroup directory): ints and fileno() objects as they
    are, paths opened (close-on-exec) and closed again by release()."""
    cdef int fd        # -1 until a conversion or an open succeeded
    cdef bint owned    # fd was opened here: release() closes it
    cdef object path   # the path argument, for OSError.filename; None for an fd

    def __cinit__(self):
        self.fd = -1

    cdef int release(self) except -1:
        if self.owned:
            self.owned = False
            close(self.fd)
            self.fd = -1
        return 0


cdef inline object _index(object obj):
    """An int argument as CPython's own functions take it: through __index__, so a float is a
    TypeError rather than a truncated number.  C conversion then gives the OverflowError."""
    if PyLong_Check(obj):  # int, bool, IntFlag: converted directly
        return obj
    return PyNumber_Index(obj)


cdef inline bint _is_path(object obj):
    return isinstance(obj, (str, bytes)) or hasattr(type(obj), "__fspath__")


cdef bytes _fsencode(object path):
    cdef bytes raw = os.fsencode(path)
    if b"\0" in raw:
        raise ValueError("embedded null byte")
    return raw


cdef _Ns _open_fd(object ns):
    cdef _Ns r = _Ns.__new__(_Ns)
    cdef bytes raw
    if not _is_path(ns):
        r.fd = PyObject_AsFileDescriptor(ns)
        return r
    raw = _fsencode(ns)
    r.path = ns
    r.fd = c_open(raw, O_RDONLY | O_CLOEXEC)
    if r.fd < 0:
        _raise_errno(errno, ns)
    r.owned = True
    return r


cdef int _finish(int rc, _Ns opened) except -1:
    """After a call on an fd from _fd_of/_open_fd: close what _open_fd opened, then raise
    from errno if the call failed (with the path, if it was one)."""
    cdef int err = errno
    if opened is not None:
        opened.release()
    if rc == -1:
        _raise_errno(err, None if opened is None else opened.path)
    return rc


cdef inline int _fd_of(object ns) except -2:
    # The fast path of _open_fd for the common case, an int fd; -1 sends the rest there, out
    # of range ints included, for _open_fd's ValueError or OverflowError.  On an exact int
    # PyLong_AsLongAndOverflow does not raise (an overflow only sets the flag); were it to,
    # the error would propagate rather than become an fd.
    cdef int overflow
    cdef long value
    if PyLong_CheckExact(ns):
        value = PyLong_AsLongAndOverflow(ns, &overflow)
        if 0 <= value <= INT_MAX:
            return <int>value
    return -1


# ---- the wrappers: convert, call, check ----

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
    cdef int rc, fd = _fd_of(ns)
    cdef _Ns opened = None
    if fd < 0:
        opened = _open_fd(ns)
        fd = opened.fd
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
    cdef int rc, fd = _fd_of(ns)
    cdef _Ns opened = None
    if fd < 0:
        opened = _open_fd(ns)
        fd = opened.fd
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
    cdef int rc, fd = _fd_of(ns)
    cdef _Ns opened = None
    if fd < 0:
        opened = _open_fd(ns)
        fd = opened.fd
    rc = lc_ns_get_owner_uid(fd, &uid)
    _finish(rc, opened)
    return uid


# The files naming the calling thread's own namespace of each type, as setns() changes it.
_THREAD_NS = {
    CLONE_NEWNET: b"/proc/thread-self/ns/net", CLONE_NEWUTS: b"/proc/thread-self/ns/uts",
    CLONE_NEWIPC: b"/proc/thread-self/ns/ipc", CLONE_NEWNS: b"/proc/thread-self/ns/mnt",
    CLONE_NEWCGROUP: b"/proc/thread-self/ns/cgroup",
    CLONE_NEWPID: b"/proc/thread-self/ns/pid_for_children",
    CLONE_NEWTIME: b"/proc/thread-self/ns/time",
}
# The types entered() can go back from: those of _THREAD_NS.
cdef int _ENTERABLE = (CLONE_NEWNET | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWNS | CLONE_NEWCGROUP
                       | CLONE_NEWPID | CLONE_NEWTIME)
_NO_USER_NS = "a user namespace cannot be left again; use clone() or spawn()"


cdef tuple _save_thread_ns(int kind, bytes path):
    """(fd, kind, st_dev, st_ino, path) of the calling thread's namespace of type `kind`:
    the identity lets __exit__ see that the block closed or replaced the fd."""
    cdef struct_stat st
    cdef int err, fd = c_open(path, O_RDONLY | O_CLOEXEC)
    if fd == -1:
        err = errno
        _raise_errno(err, path.decode())
    if fstat(fd, &st) == -1:
        err = errno
        close(fd)
        _raise_errno(err, path.decode())
    return (fd, kind, st.st_dev, st.st_ino, path.decode())


cdef int _go_back(int fd, int kind, object dev, object ino, str path) except -1:
    """setns() back into a namespace _save_thread_ns() saved, then close its fd -- unless the
    fd no longer is that file: setns would go somewhere else, and close someone else's fd."""
    cdef struct_stat st
    cdef int rc, err
    if fstat(fd, &st) == -1 or st.st_dev != dev or st.st_ino != ino:
        raise RuntimeError(f"entered(): fd {fd}, which kept the thread's previous namespace "
                           f"({path}), was closed or replaced inside the block; the thread is "
                           f"still in the entered {path.rpartition('/')[2]} namespace")
    if kind & _MAY_BLOCK_ENTER:
        with nogil:
            rc = sys_setns(fd, kind)
    else:
        rc = sys_setns(fd, kind)
    err = errno
    close(fd)
    if rc == -1:
        _raise_errno(err, path)
    return 0


cdef class entered:
    """entered(ns=None, nstype=0, *, pid=None): a context manager that moves the calling
    thread into a namespace and back on exit, even on exceptions.

    ns: an fd, an object with fileno(), or a path of a namespace file.
    nstype: the CloneFlag NEW* type `ns` must have (0: any); with pid=, the types to enter.
    pid: enter these namespaces of process `pid` (through a pidfd) instead of `ns`.
    Only the calling thread moves; other threads keep theirs.  A user namespace cannot be
    left again and is refused; a pid namespace affects only children created inside the
    block; a mount namespace needs a thread that does not share its fs (no other threads).
    __exit__ goes back into every namespace it can; if the block closed or replaced an fd
    entered() keeps, that type stays entered and __exit__ raises RuntimeError.  __exit__
    without an active __enter__ (one that failed undid itself) does nothing.
    """
    cdef object ns
    cdef pid_t pid
    cdef bint by_pid
    cdef int nstype
    cdef list saved  # _save_thread_ns() of each type entered; None when not active

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

    def __enter__(self):
        cdef _Ns target
        cdef int rc, types = self.nstype
        cdef list saved = []
        if self.saved is not None:
            raise RuntimeError("this entered() is already active; make one per use")
        if self.by_pid:
            target = _Ns.__new__(_Ns)
            target.fd = sys_pidfd_open(self.pid, 0)
            if target.fd == -1:
                _raise_errno(errno)
            target.owned = True
        else:
            target = _open_fd(self.ns)
        try:
            if types == 0:
                types = lc_ns_ioctl(target.fd, NS_GET_NSTYPE)
                if types == -1:
                    _raise_errno(errno, target.path)
                if types == CLONE_NEWUSER:
                    raise ValueError(_NO_USER_NS)
            for kind, path in _THREAD_NS.items():
                if types & kind:
                    saved.append(_save_thread_ns(kind, path))
            if types & _MAY_BLOCK_ENTER:
                with nogil:
                    rc = sys_setns(target.fd, types)
            else:
                rc = sys_setns(target.fd, types)
            if rc == -1:
                _raise_errno(errno, target.path)
        except BaseException:
            for fd, *_identity in saved:
                close(fd)
            raise
        finally:
            target.release()
        self.saved = saved
        return self

    def __exit__(self, *exc_info):
        cdef list saved = self.saved
        if saved is None:
            return None
        self.saved = None
        failure = None
        for fd, kind, dev, ino, path in reversed(saved):
            try:
                _go_back(fd, kind, dev, ino, path)
            except BaseException as exc:
                if failure is None:
                    failure = exc
        if failure is not None:
            raise failure


def pidfd_open(pid, flags=0):
    """A pidfd (close-on-exec) for process `pid`, as pidfd_open(2).

    pid: a process id.  flags: 0 or os.O_NONBLOCK.
    """
    cdef int fd = sys_pidfd_open(_index(pid), _index(flags))
    if fd == -1:
        _raise_errno(errno)
    return fd


# ---- clone: the parent side ----

cdef size_t _page_size = <size_t>sysconf(_SC_PAGESIZE)

cdef extern from *:
    """
    /* In an ASan build (LINUX_CLONE_SANITIZE=ON) only; no-ops otherwise.
       lc_unpoison: a new stack starts with clean shadow.  A spawn child shares the parent's
       memory, shadow included, and never returns from its frames (it execs or _exits), so
       their poisoning outlives it and a later mmap at the same address inherited it.
       lc_stack_switch_*: a clone child's move to its dedicated stack, told to ASan as a
       one-way fiber switch; else ASan keeps the old stack's bounds, and its vfork and
       no-return handling poison or unpoison the wrong range (subprocess in such a child
       died of SIGSEGV). */
    #if defined(__SANITIZE_ADDRESS__)
    #include <sanitizer/asan_interface.h>
    #include <sanitizer/common_interface_defs.h>
    #define lc_unpoison(addr, size) __asan_unpoison_memory_region((addr), (size))
    #define lc_stack_switch_start(bottom, size) \
        __sanitizer_start_switch_fiber(NULL, (bottom), (size))
    #define lc_stack_switch_finish() __sanitizer_finish_switch_fiber(NULL, NULL, NULL)
    #else
    #define lc_unpoison(addr, size) ((void)(addr), (void)(size))
    #define lc_stack_switch_start(bottom, size) ((void)(bottom), (void)(size))
    #define lc_stack_switch_finish() ((void)0)
    #endif
    """
    void lc_unpoison(void *addr, size_t size) nogil
    void lc_stack_switch_start(const void *bottom, size_t size) nogil
    void lc_stack_switch_finish() nogil


# The smallest dedicated stack, for the running CPython: the reserve for the parser and
# unchecked C recursion, and room for what the main thread runs (see lc_fit_recursion).
MIN_STACK_SIZE = LC_MIN_STACK_SIZE

# What the child needs once it runs.  Only the thread holding the GIL writes these, right
# before the clone, and the child reads its own copy.
cdef object _child_func = None
cdef char *_child_stack = NULL
cdef size_t _child_stack_size = 0
cdef int _child_close_fd = -1  # an fd the call opened (a cgroup path), closed by the child
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


cdef pid_t _clone_from_fork(unsigned long long flags, int exit_signal, lc_clone_args *args,
                            int *err) noexcept nogil:
    """Clone as safely as fork() in a threaded process.

    glibc's fork() takes the malloc, stdio and atfork locks, so its child inherits none held
    by another thread; a raw clone does not.  So fork() a helper, which (now single-threaded)
    clones with CLONE_PARENT -- the child becomes the caller's child -- reports the pid
    through a pipe and exits.  Returns 0 in the child, the pid or -1 (with *err) in the parent.
    """
    cdef int fds[2]
    cdef int value = 0, status
    cdef pid_t helper, pid
    cdef ssize_t n
    if pipe2(fds, O_CLOEXEC) == -1:
        err[0] = errno
        return -1
    helper = fork()
    if helper == 0:
        pid = _raw_clone(flags | CLONE_PARENT, 0 if args != NULL else exit_signal, args, NULL)
        if pid == 0:
            close(fds[0])
            close(fds[1])
            return 0
        value = pid if pid > 0 else -errno
        write(fds[1], &value, sizeof(value))
        _exit(0)
    err[0] = errno
    close(fds[1])
    if helper == -1:
        close(fds[0])
        return -1
    while True:
        n = read(fds[0], &value, sizeof(value))
        if n != -1 or errno != EINTR:
            break
    close(fds[0])
    while waitpid(helper, &status, 0) == -1 and errno == EINTR:
        pass
    if n != sizeof(value):
        err[0] = ECHILD  # the helper died before it could report
        return -1
    if value < 0:
        err[0] = -value
        return -1
    return value


cdef extern from *:
    """
    /* CPython bounds recursion for the stack of the thread it runs on, which the clone child
       has just left for its dedicated stack [base, base + size): fit the bounds to that.
       Measured on x86-64 on the main thread with the default limits (README, "Stacks"):

       LC_RESERVE is kept free for C recursion that no recursion check of the running thread
       bounds: on 3.9-3.13 the parser stops at its own MAXSTACK (6000 levels, 750-850 KB;
       3.14's checks the stack pointer too), and on 3.9-3.11 every f-string nested in an
       f-string is parsed by a parser of its own while the outer one waits, up to 5 at once
       by the quote kinds (4.2 MB on 3.9, 3.7 MB on 3.10-3.11).  Nested iterators
       (itertools.chain: 3000 levels take 90 KB, 280 KB on 3.13, 800 KB on 3.14) are
       checked by nothing, even on the main thread; the reserve holds 3000 levels.

       3.9-3.13 count recursion levels; the rest of the stack gets one level per
       LC_LEVEL_BYTES, less the 50 levels CPython grants past the limit to handle the
       RecursionError.  The most C stack per counted level is a key function called by
       sorted(), whose list.sort holds a 5 KB merge state: 1.7 KB on 3.9-3.10, 2.4 KB on
       3.11, 1.6 KB on 3.12, 1.3 KB on 3.13.  3.14 checks the stack pointer against bounds
       of its own: it gets the stack minus the reserve.

       The smallest stack holds LC_MIN_LEVELS besides the reserve: what runs on the main
       thread runs there too -- import json, subprocess, multiprocessing, re.compile of 100
       nested groups (209 levels on 3.9-3.11); pickle.dumps of a 500-deep list and
       json.loads of 1000-deep arrays (1004 C levels on 3.12-3.13; on 3.9-3.11 they pass the
       limit of 1000 on the main thread too). */
    #if PY_VERSION_HEX >= 0x030E0000 && PY_VERSION_HEX < 0x030E0100
    /* 3.14.0 only: no API to set the bounds yet (3.14.1 added one), so set the fields of the
       thread state that it reads, as 3.14.1's PyUnstable_ThreadState_SetStackProtection does. */
    #  define Py_BUILD_CORE 1
    #  include "internal/pycore_tstate.h"
    #  include "internal/pycore_pythonrun.h"
    #  undef Py_BUILD_CORE
    #endif
    #define LC_HEADROOM 50
    #if PY_VERSION_HEX >= 0x030E0000
    #  define LC_RESERVE (1280 * 1024)
    #  define LC_MIN_CHECKED (512 * 1024)
    #elif PY_VERSION_HEX >= 0x030C0000
    #  define LC_RESERVE (1024 * 1024)
    #  define LC_LEVEL_BYTES 2048
    #  define LC_MIN_LEVELS 1100
    #else
    #  define LC_RESERVE (5 * 1024 * 1024)
    #  if PY_VERSION_HEX >= 0x030B0000
    #    define LC_LEVEL_BYTES 3072
    #  else
    #    define LC_LEVEL_BYTES 2048
    #  endif
    #  define LC_MIN_LEVELS 300
    #endif
    #ifndef LC_MIN_CHECKED
    #  define LC_MIN_CHECKED ((LC_MIN_LEVELS + LC_HEADROOM) * LC_LEVEL_BYTES)
    #endif
    /* In whole 256 KiB. */
    #define LC_MIN_STACK_SIZE \\
        ((LC_RESERVE + LC_MIN_CHECKED + (256 * 1024 - 1)) / (256 * 1024) * (256 * 1024))

    static int lc_fit_recursion(char *base, size_t size) {
        PyThreadState *ts = PyThreadState_Get();
    #if PY_VERSION_HEX >= 0x030E0100
        return PyUnstable_ThreadState_SetStackProtection(ts, base + LC_RESERVE,
                                                         size - LC_RESERVE);
    #elif PY_VERSION_HEX >= 0x030E0000
        _PyThreadStateImpl *impl = (_PyThreadStateImpl *)ts;
        impl->c_stack_top = (uintptr_t)base + size;
        impl->c_stack_hard_limit = (uintptr_t)base + LC_RESERVE + _PyOS_STACK_MARGIN_BYTES;
        impl->c_stack_soft_limit = (uintptr_t)base + LC_RESERVE + 2 * _PyOS_STACK_MARGIN_BYTES;
        return 0;
    #else
        int budget = (int)((size - LC_RESERVE) / LC_LEVEL_BYTES) - LC_HEADROOM;
    #  if PY_VERSION_HEX >= 0x030C0000
        /* 3.12, 3.13: C levels have a count of their own (Python calls take no C stack). */
        if (ts->c_recursion_remaining > budget)
            ts->c_recursion_remaining = budget;
    #  else
        /* 3.9-3.11: one count for Python frames and C levels, the recursion limit; the levels
           already entered (on the stack left behind) stay counted. */
    #    if PY_VERSION_HEX >= 0x030B0000
        int depth = ts->recursion_limit - ts->recursion_remaining;
    #    else
        int depth = ts->recursion_depth;
    #    endif
        if (Py_GetRecursionLimit() - depth > budget)
            Py_SetRecursionLimit(depth + budget);
    #  endif
        return 0;
    #endif
    }
    """
    const size_t LC_MIN_STACK_SIZE
    int lc_fit_recursion(char *base, size_t size) except -1


cdef void _child_on_stack() noexcept nogil:
    lc_stack_switch_finish()
    with gil:
        try:
            lc_fit_recursion(_child_stack, _child_stack_size)
        except BaseException:
            sys.excepthook(*sys.exc_info())
            _exit(1)
        _child_main(_child_func)


cdef void _child_start() noexcept:
    """First code of the child: the interpreter's after-fork work, then func()."""
    global _child_func, _child_stack, _child_stack_size
    # Read before the at-fork hooks run: a hook that calls clone() sets these for its own
    # child (and clears _child_func when that clone returns).
    cdef object func = _child_func
    cdef char *stack = _child_stack
    cdef size_t stack_size = _child_stack_size
    if _child_close_fd >= 0:
        close(_child_close_fd)
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


cdef object _clone(object func, Py_ssize_t stack_size, unsigned long long flags,
                   int exit_signal, lc_clone_args *args, int opened_fd=-1):
    """The common part of clone() and clone3(): checks, the fork protocol of the interpreter,
    the syscall, and the result (pid, or (pid, pidfd) with CLONE_PIDFD).  opened_fd: an fd
    opened for this call, which the child closes first (the caller closes its own)."""
    global _child_func, _child_stack, _child_stack_size, _child_close_fd
    cdef _Stack stack = None
    cdef int pidfd = -1, err = 0
    cdef pid_t pid
    cdef bint want_pidfd = (flags & CLONE_PIDFD) != 0
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
    if stack_size > 0:
        stack = _Stack(stack_size)
    # What the parent has buffered must not be written again by the child.
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    PyOS_BeforeFork()
    # Decided and set only now: PyOS_BeforeFork may wait for the import lock and let other
    # threads run.
    direct = lc_single_threaded()
    if not direct and (flags & _SHARES_WITH_CALLER or exit_signal != SIGCHLD):
        PyOS_AfterFork_Parent()
        raise RuntimeError(
            "with other threads running, clone() can only make a child that exits with "
            "SIGCHLD and shares nothing with the caller (no FILES, FS, SYSVSEM, IO, PARENT): "
            "it clones from a forked helper, so that no lock another thread holds is "
            "inherited; clone before starting threads, or use the C-level API")
    _child_func = func
    _child_stack = stack.base + _page_size if stack is not None else NULL
    _child_stack_size = stack.length - _page_size if stack is not None else 0
    # With a shared fd table the caller's close is the only one.
    _child_close_fd = opened_fd if not flags & CLONE_FILES else -1
    if direct:
        pid = _raw_clone(flags, exit_signal, args, &pidfd)
        err = errno
    else:
        pid = _clone_from_fork(flags & ~CLONE_PIDFD, exit_signal, args, &err)
    if pid == 0:
        _child_start()
    # Cleared while the fork lock is still held: in a free-threaded build another thread's
    # clone() sets it as soon as PyOS_AfterFork_Parent lets that thread run.
    _child_func = None
    PyOS_AfterFork_Parent()
    if pid == -1:
        _raise_errno(err)
    if want_pidfd and pidfd == -1:
        pidfd = sys_pidfd_open(pid, 0)
        if pidfd == -1:
            _raise_errno(errno)
    if want_pidfd:
        return (pid, pidfd)
    return pid


def clone(func, stack_size=0, flags=SIGCHLD):
    """Create a child process as clone(2) does and call func() in it; return its pid
    ((pid, pidfd) with PIDFD).  The internal form; linux_clone.clone adds the id maps."""
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
                      exit_signal, &args)
    return _clone(func, _index(stack_size), ns_flags, exit_signal, NULL)


MAX_PID_NS_LEVEL = 32  # the kernel's limit on nested pid namespaces, so on set_tid's length


def clone3(func, flags=0, *, exit_signal=SIGCHLD, stack_size=0, cgroup=None, set_tid=()):
    """Create a child process as clone3(2) does and call func() in it; return its pid
    ((pid, pidfd) with PIDFD).  The internal form; linux_clone.clone3 adds the id maps."""
    cdef unsigned long long c_flags = _index(flags)
    cdef int c_exit_signal = _index(exit_signal)
    cdef Py_ssize_t c_stack_size = _index(stack_size)
    cdef lc_clone_args args
    cdef pid_t tids[32]
    cdef Py_ssize_t i, n
    cdef _Ns group = None
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
        group = _open_fd(cgroup)
        args.cgroup = <uint64_t>group.fd
        c_flags |= CLONE_INTO_CGROUP
    try:
        return _clone(func, c_stack_size, c_flags, c_exit_signal, &args,
                      group.fd if group is not None and group.path is not None else -1)
    except OSError as exc:
        if group is None or group.path is None or exc.filename is not None:
            raise
        raise OSError(exc.errno, exc.strerror, group.path) from None
    finally:
        if group is not None:
            group.release()


# ---- spawn: a program in new namespaces, vfork-style ----

from libc.errno cimport ENOSYS
from posix.unistd cimport getpid

cdef extern from *:
    """
    #include <linux/futex.h>
    #include <poll.h>
    #include <signal.h>
    #include <sys/syscall.h>
    #include <unistd.h>
    /* A spawn child shares the parent's memory, so none of the parent's signal handlers may
       run in it: every caught signal goes back to SIG_DFL, then the parent's mask returns,
       as in posix_spawn.  SIGPIPE and SIGXFSZ, which Python ignores, go back to SIG_DFL too,
       as subprocess's restore_signals does.  glibc's internal signals (32 up to SIGRTMIN)
       are left alone. */
    static inline void lc_reset_signals(const sigset_t *mask) {
        struct sigaction sa;
        int sig;
        for (sig = 1; sig < _NSIG; sig++) {
            if (sig >= 32 && sig < SIGRTMIN)
                continue;
            if (sigaction(sig, NULL, &sa) == 0 && sa.sa_handler != SIG_DFL
                    && (sa.sa_handler != SIG_IGN || sig == SIGPIPE || sig == SIGXFSZ)) {
                memset(&sa, 0, sizeof sa);
                sa.sa_handler = SIG_DFL;
                sigaction(sig, &sa, NULL);
            }
        }
        sigprocmask(SIG_SETMASK, mask, NULL);
    }

    /* Futex words shared by the parent and a spawn child with id maps, in place of pipes:
       any process forked meanwhile by another thread would hold a copy of a pipe's ends.
       Shared (not _PRIVATE) futexes, as the kernel's CLONE_CHILD_CLEARTID wake is one.
       All signals are blocked around both waits, so only a wake or a changed word ends
       them; and neither side's futex call fails while the other may read errno, which the
       child shares with the parent's thread (it has no TLS of its own). */
    static inline void lc_futex_wait_while(int *word, int value) {
        while (__atomic_load_n(word, __ATOMIC_ACQUIRE) == value)
            syscall(SYS_futex, word, FUTEX_WAIT, value, NULL, NULL, 0);
    }
    static inline void lc_futex_set(int *word, int value) {
        __atomic_store_n(word, value, __ATOMIC_RELEASE);
        syscall(SYS_futex, word, FUTEX_WAKE, 1, NULL, NULL, 0);
    }

    /* Whether the parent of a spawn child died before PR_SET_PDEATHSIG was armed: its pidfd
       is readable once it has exited.  Without pidfds (Linux < 5.3), getppid() tells outside
       a new pid namespace; inside one it is 0 either way. */
    static inline int lc_parent_gone(int pidfd, pid_t parent, int newpid) {
        struct pollfd p;
        if (pidfd < 0)
            return !newpid && getppid() != parent;
        p.fd = pidfd;
        p.events = POLLIN;
        p.revents = 0;
        return poll(&p, 1, 0) != 0;
    }
    """
    void lc_reset_signals(const sigset_t *mask) nogil
    void lc_futex_wait_while(int *word, int value) nogil
    void lc_futex_set(int *word, int value) nogil
    bint lc_parent_gone(int pidfd, pid_t parent, bint newpid) nogil

cdef extern from "<signal.h>" nogil:
    int sigfillset(sigset_t *s)
    int pthread_sigmask(int how, const sigset_t *s, sigset_t *old)
    const int SIG_SETMASK

cdef extern from "<sys/prctl.h>" nogil:
    int prctl(int option, unsigned long arg2, unsigned long arg3, unsigned long arg4,
              unsigned long arg5)
    const int PR_SET_PDEATHSIG

cdef extern from "<unistd.h>" nogil:
    int execve(const char *path, char *const argv[], char *const envp[])
    int chdir(const char *path)
    int sethostname(const char *name, size_t length)


cdef enum _Stage:
    STAGE_NONE, STAGE_MAPS, STAGE_TIME, STAGE_HOSTNAME, STAGE_LOOPBACK, STAGE_CWD, STAGE_EXEC

# What the child was doing when a stage failed, for the OSError's message.
cdef tuple _STAGE_STEPS = (None, "waiting for its id maps", "unshare(CLONE_NEWTIME)",
                           "sethostname", "bringing up lo", "chdir", "execve")

cdef enum _Go:
    GO_WAIT, GO_RUN, GO_ABORT   # the parent's word to a child waiting for its id maps

cdef struct _SpawnRequest:
    char **argv
    char **envp
    char **paths        # the candidate executables, NULL-terminated
    const char *cwd
    const char *hostname
    size_t hostname_len
    bint loopback
    bint newtime
    bint newpid
    bint maps           # wait for `go` (the parent writes the id maps first)
    int go              # a _Go, set by the parent
    int done            # nonzero until the child execs or exits (CLONE_CHILD_CLEARTID)
    int parent_pidfd    # the parent's pidfd (-1 without pidfds), for lc_parent_gone
    pid_t parent_pid
    sigset_t mask       # the parent's signal mask, restored before exec
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


cdef int _spawn_fail(_SpawnRequest *req, int stage, int err) noexcept nogil:
    req.err = err
    req.stage = stage
    _exit(127)
    return -1


cdef int _spawn_child(void *arg) noexcept nogil:
    """The child of spawn(): syscalls only (it shares the parent's memory), then execve."""
    cdef _SpawnRequest *req = <_SpawnRequest *>arg
    cdef char **path = req.paths
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
    lc_reset_signals(&req.mask)
    # The new time namespace is the children's one; execve moves the process into it.
    if req.newtime and sys_unshare(<int>CLONE_NEWTIME) == -1:
        return _spawn_fail(req, STAGE_TIME, errno)
    if req.hostname != NULL and sethostname(req.hostname, req.hostname_len) == -1:
        return _spawn_fail(req, STAGE_HOSTNAME, errno)
    if req.loopback and lc_configure_loopback() == -1:
        return _spawn_fail(req, STAGE_LOOPBACK, errno)
    if req.cwd != NULL and chdir(req.cwd) == -1:
        return _spawn_fail(req, STAGE_CWD, errno)
    while path[0] != NULL:
        execve(path[0], req.argv, req.envp)
        # As subprocess does: report the first error that is not "no such file here".
        if err == 0 and errno != ENOENT and errno != ENOTDIR:
            err = errno
        path += 1
    return _spawn_fail(req, STAGE_EXEC, err if err != 0 else errno)


SPAWN_STACK_SIZE = 64 * 1024
HOST_NAME_MAX = 64  # the kernel's __NEW_UTS_LEN: a longer name is EINVAL from sethostname
cdef unsigned long long _SPAWN_FLAGS = (CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER
                                        | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWCGROUP
                                        | CLONE_NEWTIME | CLONE_PIDFD)


def spawn(argv, flags=0, *, env=None, cwd=None, hostname=None,
          bint loopback=False, bint pidfd=False, before_start=None):
    """Run a program in new namespaces with CLONE_VM|CLONE_VFORK, as posix_spawn runs one
    without them.  The internal form; linux_clone.spawn adds the id maps (before_start(pid)
    runs in the parent while the child waits)."""
    cdef unsigned long long ns_flags = _index(flags)
    cdef _SpawnRequest req
    cdef _CStrings c_argv, c_envp, c_paths
    cdef bytes c_cwd = None, c_hostname = None
    cdef _Stack stack
    cdef sigset_t all_signals
    cdef int c_flags, pid_fd = -1, go = GO_RUN
    cdef pid_t pid
    if not isinstance(argv, (list, tuple)):
        raise TypeError(f"argv must be a list or tuple, not {type(argv).__name__}")
    if not argv:
        raise ValueError("argv must not be empty")
    if env is not None and not hasattr(env, "items"):
        raise TypeError(f"env must be a mapping, not {type(env).__name__}")
    if ns_flags & ~_SPAWN_FLAGS:
        raise ValueError("spawn() takes the NEW* namespace flags and PIDFD only: its child "
                         "shares the caller's memory until execve, and nothing after it")
    pidfd = pidfd or (ns_flags & CLONE_PIDFD) != 0
    if hostname is not None and not ns_flags & CLONE_NEWUTS:
        raise ValueError("hostname needs NEWUTS in flags")
    if loopback and not ns_flags & CLONE_NEWNET:
        raise ValueError("loopback needs NEWNET in flags")
    memset(&req, 0, sizeof(req))
    # Each argument is converted once (an __fspath__ or a mapping may answer differently
    # the next time): the program searched for is the argv[0] that is passed.
    c_argv = _CStrings(argv)
    environ = _environ(env)
    c_envp = _CStrings([k + b"=" + v for k, v in environ])
    program = c_argv.items[0]
    dirs = [b""] if b"/" in program else _exec_path(environ)
    c_paths = _CStrings([os.path.join(d, program) for d in dirs])
    req.argv, req.envp, req.paths = c_argv.array, c_envp.array, c_paths.array
    if cwd is not None:
        c_cwd = _fsencode(cwd)
        req.cwd = c_cwd
    if hostname is not None:
        c_hostname = _fsencode(hostname)
        if len(c_hostname) > HOST_NAME_MAX:
            raise ValueError(f"hostname is {len(c_hostname)} bytes, more than the kernel's "
                             f"{HOST_NAME_MAX}")
        req.hostname, req.hostname_len = c_hostname, len(c_hostname)
    req.loopback = loopback
    req.newtime = (ns_flags & CLONE_NEWTIME) != 0
    req.newpid = (ns_flags & CLONE_NEWPID) != 0
    req.parent_pidfd = -1
    stack = _Stack(SPAWN_STACK_SIZE)
    c_flags = <int>((ns_flags & ~(CLONE_NEWTIME | CLONE_PIDFD)) | CLONE_VM | SIGCHLD
                    | (CLONE_PIDFD if pidfd else 0))
    if before_start is None:
        c_flags |= CLONE_VFORK
    else:
        # The child waits on `go` while the parent writes its id maps; the kernel clears
        # `done` when the child has exec'd or exited, freeing the shared stack.
        req.maps, req.done, req.parent_pid = True, 1, getpid()
        req.parent_pidfd = sys_pidfd_open(req.parent_pid, 0)
        if req.parent_pidfd == -1 and errno != ENOSYS:
            _raise_errno(errno)
        c_flags |= CLONE_CHILD_CLEARTID
    sigfillset(&all_signals)
    with nogil:
        # Blocked until the child has reset its handlers: none of ours may run in it.
        pthread_sigmask(SIG_SETMASK, &all_signals, &req.mask)
        pid = sys_clone(_spawn_child, stack.base + stack.length, c_flags, &req, &pid_fd,
                        NULL, &req.done)
        if pid == -1:
            req.err = errno
    failure = None
    try:
        if req.maps:
            if req.parent_pidfd >= 0:
                close(req.parent_pidfd)
            if pid != -1:
                try:
                    before_start(pid)
                except BaseException as exc:
                    failure, go = exc, GO_ABORT
                with nogil:
                    lc_futex_set(&req.go, go)
                    lc_futex_wait_while(&req.done, 1)
        if pid != -1 and (failure is not None or req.err != 0):
            # Reaped with every signal still blocked, so no handler interrupts it.
            waitpid(pid, NULL, 0)
            if pid_fd >= 0:
                close(pid_fd)
    finally:
        pthread_sigmask(SIG_SETMASK, &req.mask, NULL)
    if failure is not None:
        raise failure
    if pid == -1:
        _raise_errno(req.err)
    if req.err != 0:
        _raise_stage(req.err, req.stage, argv[0], cwd, hostname)
    if pidfd:
        return (pid, pid_fd)
    return pid


cdef int _raise_stage(int err, int stage, object program, object cwd,
                      object hostname) except -1:
    """The OSError of a failed step of the spawn child: filename is the program or the cwd
    for exec and chdir (as subprocess has them), else the message names the step."""
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
    if env is None:
        return list(os.environb.items())
    out = []
    for key, value in env.items():
        key, value = os.fsencode(key), os.fsencode(value)
        if b"=" in key or not key:
            raise ValueError(f"illegal environment variable name {key!r}")
        out.append((key, value))
    return out


cdef list _exec_path(list environ):
    """The directories to search, as os.get_exec_path() finds them, from the converted
    environment (bytes pairs)."""
    paths = [value for key, value in environ if key == b"PATH"]
    if len(paths) > 1:
        raise ValueError("env cannot contain 'PATH' and b'PATH' keys")
    return (paths[0] if paths else os.fsencode(os.defpath)).split(os.fsencode(os.pathsep))


# ---- clone: the child side ----

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


cdef void _child_main(object func) noexcept:
    """Run func() in the child and end it as a multiprocessing child of CPython 3.13+ ends
    (gh-83856): atexit handlers registered before func() are dropped (they are the parent's),
    non-daemon threads are joined (threading._shutdown), then the atexit handlers the child
    registered run, sys.stdout and sys.stderr are flushed, and it _exits; never returns."""
    cdef int status = 1
    try:
        try:
            atexit._clear()
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
        threading = sys.modules.get("threading")
        if threading is not None:
            threading._shutdown()
    except BaseException:
        _report_exception()
    try:
        try:
            atexit._run_exitfuncs()
        except BaseException:
            pass  # printed already (3.9 raises the last one again, too)
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:
                pass
    finally:
        _exit(status)

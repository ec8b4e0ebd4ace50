# cython: language_level=3, freethreading_compatible=True
"""A separate extension that uses linux_clone's C contract, as a Cython user would: it cimports
the installed `_core.pxd` and calls the syscalls and the C-level clone API without the GIL.
tests/test_cython.py compiles it at test time."""

from libc.errno cimport errno
from libc.stdlib cimport free, malloc
from libc.string cimport memset, strlen
from posix.types cimport pid_t, uid_t
from posix.unistd cimport _exit, close, execve, gethostname, getpid

from linux_clone._core cimport (
    CLONE_CHILD_CLEARTID, CLONE_CHILD_SETTID, CLONE_CLEAR_SIGHAND, CLONE_DETACHED,
    CLONE_FILES, CLONE_FS, CLONE_INTO_CGROUP, CLONE_IO, CLONE_NEWCGROUP, CLONE_NEWIPC,
    CLONE_NEWNET, CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWTIME, CLONE_NEWUSER, CLONE_NEWUTS,
    CLONE_PARENT, CLONE_PARENT_SETTID, CLONE_PIDFD, CLONE_PTRACE, CLONE_SETTLS,
    CLONE_SIGHAND, CLONE_SYSVSEM, CLONE_THREAD, CLONE_UNTRACED, CLONE_VFORK, CLONE_VM,
    CSIGNAL, KCMP_EPOLL_TFD, KCMP_FILE, KCMP_FILES, KCMP_FS, KCMP_IO, KCMP_SIGHAND,
    KCMP_SYSVSEM, KCMP_VM, NS_GET_NSTYPE, NS_GET_OWNER_UID, NS_GET_PARENT, NS_GET_USERNS,
    WALL, lc_clone_args, lc_configure_loopback, lc_ns_get_owner_uid, lc_ns_ioctl,
    sys_clone, sys_clone3, sys_clone3_fn, sys_clone_fork, sys_kcmp, sys_pidfd_open,
    sys_pivot_root, sys_setns, sys_unshare,
)

cdef extern from "<signal.h>" nogil:
    const int SIGCHLD

cdef extern from "<unistd.h>" nogil:
    int sethostname(const char *name, size_t length)


def constants():
    """Every constant of the contract, as this extension's compiler sees it."""
    return {
        "CSIGNAL": CSIGNAL, "CLONE_VM": CLONE_VM, "CLONE_FS": CLONE_FS,
        "CLONE_FILES": CLONE_FILES, "CLONE_SIGHAND": CLONE_SIGHAND,
        "CLONE_PIDFD": CLONE_PIDFD, "CLONE_PTRACE": CLONE_PTRACE,
        "CLONE_VFORK": CLONE_VFORK, "CLONE_PARENT": CLONE_PARENT,
        "CLONE_THREAD": CLONE_THREAD, "CLONE_NEWNS": CLONE_NEWNS,
        "CLONE_SYSVSEM": CLONE_SYSVSEM, "CLONE_SETTLS": CLONE_SETTLS,
        "CLONE_PARENT_SETTID": CLONE_PARENT_SETTID,
        "CLONE_CHILD_CLEARTID": CLONE_CHILD_CLEARTID, "CLONE_DETACHED": CLONE_DETACHED,
        "CLONE_UNTRACED": CLONE_UNTRACED, "CLONE_CHILD_SETTID": CLONE_CHILD_SETTID,
        "CLONE_NEWCGROUP": CLONE_NEWCGROUP, "CLONE_NEWUTS": CLONE_NEWUTS,
        "CLONE_NEWIPC": CLONE_NEWIPC, "CLONE_NEWUSER": CLONE_NEWUSER,
        "CLONE_NEWPID": CLONE_NEWPID, "CLONE_NEWNET": CLONE_NEWNET, "CLONE_IO": CLONE_IO,
        "CLONE_NEWTIME": CLONE_NEWTIME, "CLONE_CLEAR_SIGHAND": CLONE_CLEAR_SIGHAND,
        "CLONE_INTO_CGROUP": CLONE_INTO_CGROUP,
        "KCMP_FILE": KCMP_FILE, "KCMP_VM": KCMP_VM, "KCMP_FILES": KCMP_FILES,
        "KCMP_FS": KCMP_FS, "KCMP_SIGHAND": KCMP_SIGHAND, "KCMP_IO": KCMP_IO,
        "KCMP_SYSVSEM": KCMP_SYSVSEM, "KCMP_EPOLL_TFD": KCMP_EPOLL_TFD,
        "NS_GET_USERNS": NS_GET_USERNS, "NS_GET_PARENT": NS_GET_PARENT,
        "NS_GET_NSTYPE": NS_GET_NSTYPE, "NS_GET_OWNER_UID": NS_GET_OWNER_UID,
        "WALL": WALL,
    }


def helpers_linked():
    """The contract's functions, as addresses: each one compiles and links."""
    return [<size_t>&sys_unshare, <size_t>&sys_setns, <size_t>&sys_clone,
            <size_t>&sys_kcmp, <size_t>&sys_pivot_root, <size_t>&sys_clone3,
            <size_t>&sys_clone3_fn, <size_t>&sys_clone_fork, <size_t>&sys_pidfd_open,
            <size_t>&lc_ns_ioctl, <size_t>&lc_ns_get_owner_uid, <size_t>&lc_configure_loopback]


cdef int _check(int rc) except -1:
    if rc == -1:
        raise OSError(errno, "syscall failed")
    return rc


def unshare(unsigned long long flags):
    _check(sys_unshare(<int>flags))


def setns_loop(int fd_a, int fd_b, int n):
    """setns() alternately into fd_b and fd_a, n times, without the GIL."""
    cdef int i, rc = 0
    with nogil:
        for i in range(n):
            rc = sys_setns(fd_b if i % 2 == 0 else fd_a, <int>CLONE_NEWUTS)
            if rc == -1:
                break
    _check(rc)


def nstype(int fd):
    cdef int rc
    with nogil:
        rc = lc_ns_ioctl(fd, NS_GET_NSTYPE)
    return _check(rc)


def owner_uid(int fd):
    cdef uid_t uid
    _check(lc_ns_get_owner_uid(fd, &uid))
    return uid


def kcmp_vm(pid_t pid1, pid_t pid2):
    cdef int rc
    with nogil:
        rc = sys_kcmp(pid1, pid2, KCMP_VM, 0, 0)
    return _check(rc)


def pidfd_open(pid_t pid):
    return _check(sys_pidfd_open(pid, 0))


# ---- the C-level clone API: children that share our memory and only make syscalls ----

cdef struct HostnameRequest:
    const char *name
    bint exec_true
    char seen[65]       # the child's hostname after sethostname, written into shared memory


cdef int _hostname_child(void *arg) noexcept nogil:
    cdef HostnameRequest *req = <HostnameRequest *>arg
    cdef char *argv[2]
    cdef char *envp[1]
    if sethostname(req.name, strlen(req.name)) == -1:
        return 100
    if gethostname(req.seen, sizeof(req.seen) - 1) == -1:
        return 101
    if req.exec_true:
        argv[0] = b"/bin/true"
        argv[1] = NULL
        envp[0] = NULL
        execve(b"/bin/true", argv, envp)
        _exit(127)
    return 7


cdef enum:
    STACK_SIZE = 64 * 1024


def clone_sethostname(bytes name, bint exec_true):
    """glibc clone(CLONE_VM|CLONE_VFORK|CLONE_NEWUTS|SIGCHLD) of a child that sets the
    hostname, then returns 7 or execs /bin/true.  Returns (pid, hostname the child saw)."""
    cdef HostnameRequest req
    cdef char *stack = <char *>malloc(STACK_SIZE)
    cdef pid_t pid
    if stack == NULL:
        raise MemoryError()
    memset(&req, 0, sizeof(req))
    req.name = name
    req.exec_true = exec_true
    with nogil:
        pid = sys_clone(_hostname_child, stack + STACK_SIZE,
                        <int>(CLONE_VM | CLONE_VFORK | CLONE_NEWUTS | SIGCHLD), &req)
    free(stack)  # CLONE_VFORK: the child has exited or exec'd, its stack is ours again
    _check(pid)
    return pid, req.seen


cdef int _getpid_child(void *arg) noexcept nogil:
    (<pid_t *>arg)[0] = getpid()
    return getpid()


def clone3_fn(unsigned long long flags, int exit_signal, bint want_pidfd):
    """sys_clone3_fn(flags|CLONE_VM|CLONE_VFORK) of a child that stores its getpid() in our
    memory and exits with it.  Returns (pid, child's getpid(), pidfd or -1)."""
    cdef lc_clone_args args
    cdef char *stack = <char *>malloc(STACK_SIZE)
    cdef pid_t pid, seen = -1
    cdef int pidfd = -1
    if stack == NULL:
        raise MemoryError()
    memset(&args, 0, sizeof(args))
    args.flags = flags | CLONE_VM | CLONE_VFORK | (CLONE_PIDFD if want_pidfd else 0)
    args.exit_signal = <unsigned long long>exit_signal
    args.stack = <unsigned long long>stack
    args.stack_size = STACK_SIZE
    if want_pidfd:
        args.pidfd = <unsigned long long>&pidfd
    with nogil:
        pid = sys_clone3_fn(&args, sizeof(args), _getpid_child, &seen)
    free(stack)
    _check(pid)
    return pid, seen, pidfd


def close_fd(int fd):
    _check(close(fd))

# cython: language_level=3, autotestdict=False, freethreading_compatible=True
"""Raw C loops of the namespace syscalls for `python -m linux_clone.bench`, timed without the
GIL: the baseline every ratio divides by, and the proof that the cimport API of
linux_clone._core costs nothing (its loops call the .pxd helpers, the raw ones syscall())."""

from libc.errno cimport errno, EBADF, ECHILD, EINTR
from libc.signal cimport SIGCHLD
from libc.string cimport memcpy, memset, strerror
from libc.stdlib cimport free, malloc
from posix.fcntl cimport open as c_open, O_RDONLY, O_CLOEXEC
from posix.signal cimport sigfillset, SIG_SETMASK
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC
from posix.types cimport dev_t, ino_t, pid_t, sigset_t, uid_t
from posix.unistd cimport _exit, close, dup2, execve, read

cdef extern from "<unistd.h>" nogil:
    int sethostname(const char *name, size_t length)
from posix.wait cimport waitpid

from linux_clone._core cimport (
    CLONE_NEWNET, CLONE_VFORK, CLONE_VM, NS_GET_OWNER_UID, lc_configure_loopback,
    lc_ns_get_owner_uid, lc_ns_ioctl, sys_clone, sys_clone_fork, sys_kcmp, sys_setns,
    sys_unshare,
)

# What neither linux_clone._core nor Cython's posix/libc declarations have:
cdef extern from "<sys/syscall.h>" nogil:
    const long SYS_getpid
    const long SYS_setns
    const long SYS_unshare
    const long SYS_kcmp
    const long SYS_ioctl
    const long SYS_socket
    const long SYS_close

cdef extern from "<unistd.h>" nogil:
    long syscall(long number, ...)
    int pipe2(int fds[2], int flags)
    char **environ

cdef extern from "<signal.h>" nogil:
    int pthread_sigmask(int how, const sigset_t *s, sigset_t *old)

cdef extern from "<net/if.h>" nogil:
    const short IFF_UP
    struct ifreq:
        char ifr_name[16]
        short ifr_flags

cdef extern from "<sys/ioctl.h>" nogil:
    const unsigned long SIOCGIFFLAGS
    const unsigned long SIOCSIFFLAGS

cdef extern from "<sys/socket.h>" nogil:
    const int AF_UNIX
    const int SOCK_DGRAM
    const int SOCK_CLOEXEC

# For ctypes in the benchmark: the number syscall(2) takes for kcmp on this architecture.
SYS_KCMP = SYS_kcmp


cdef inline long long _now() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <long long>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef int _loopback_raw() noexcept nogil:
    # `ip link set lo up` as four bare syscalls: the floor under lc_configure_loopback.
    cdef ifreq ifr
    cdef long rc, fd = syscall(SYS_socket, AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0)
    if fd < 0:
        return -1
    memset(&ifr, 0, sizeof(ifr))
    memcpy(ifr.ifr_name, b"lo", 3)
    rc = syscall(SYS_ioctl, fd, SIOCGIFFLAGS, &ifr)
    if rc == 0 and not (ifr.ifr_flags & IFF_UP):
        ifr.ifr_flags |= IFF_UP
        rc = syscall(SYS_ioctl, fd, SIOCSIFFLAGS, &ifr)
    syscall(SYS_close, fd)
    return <int>rc


cdef object _elapsed(int err, long long ns):
    if err != 0:
        raise OSError(err, strerror(err).decode())
    return ns


def getpid_raw(long n):
    """n getpid() through syscall(SYS_getpid), the floor of any syscall here: elapsed ns."""
    cdef long _i
    cdef long long start, end
    with nogil:
        start = _now()
        for _i in range(n):
            syscall(SYS_getpid)
        end = _now()
    return end - start


# ---- setns: n round trips, into fd_b and back into fd_a ----

def setns_raw(int fd_a, int fd_b, int nstype, long n):
    """n setns round trips through syscall(SYS_setns): elapsed ns."""
    cdef long _i
    cdef int err = 0
    cdef long long start, end
    with nogil:
        start = _now()
        for _i in range(n):
            if syscall(SYS_setns, fd_b, nstype) == -1 or syscall(SYS_setns, fd_a, nstype) == -1:
                err = errno
                break
        end = _now()
    return _elapsed(err, end - start)


def setns_cimport(int fd_a, int fd_b, int nstype, long n):
    """n setns round trips through the cimport API (sys_setns): elapsed ns."""
    cdef long _i
    cdef int err = 0
    cdef long long start, end
    with nogil:
        start = _now()
        for _i in range(n):
            if sys_setns(fd_b, nstype) == -1 or sys_setns(fd_a, nstype) == -1:
                err = errno
                break
        end = _now()
    return _elapsed(err, end - start)


def entered_c(int fd_target, int nstype, bytes own_path, long n):
    """n times what entered() does, in C: open the thread's own namespace file, setns into
    fd_target, setns back, close: elapsed ns."""
    cdef const char *path = own_path
    cdef long _i
    cdef int fd, err = 0
    cdef long long start, end
    with nogil:
        start = _now()
        for _i in range(n):
            fd = c_open(path, O_RDONLY | O_CLOEXEC)
            if fd == -1:
                err = errno
                break
            if sys_setns(fd_target, nstype) == -1 or sys_setns(fd, nstype) == -1:
                err = errno
                close(fd)
                break
            close(fd)
        end = _now()
    return _elapsed(err, end - start)


cdef extern from "_entered.h" nogil:
    # entered()'s own C (this module gets its own copy of the per-thread fd).
    int lc_thread_ns_open(int kind, dev_t *dev, ino_t *ino)
    bint lc_same_file(int fd, dev_t dev, ino_t ino)


def entered_steps(int fd_target, int nstype, long n):
    """n times the system calls entered(fd_target, nstype) makes, with its C: save the
    thread's namespace (through the kept pidfd on Linux 6.11+, else /proc/thread-self/ns),
    setns into fd_target, check the saved fd, setns back, close: elapsed ns."""
    cdef long _i
    cdef int fd, err = 0
    cdef dev_t dev
    cdef ino_t ino
    cdef long long start, end
    with nogil:
        start = _now()
        for _i in range(n):
            fd = lc_thread_ns_open(nstype, &dev, &ino)
            if fd == -1:
                err = errno
                break
            if (sys_setns(fd_target, nstype) == -1 or not lc_same_file(fd, dev, ino)
                    or sys_setns(fd, nstype) == -1):
                err = errno if errno != 0 else EBADF
                close(fd)
                break
            close(fd)
        end = _now()
    return _elapsed(err, end - start)


# ---- unshare: each call makes a new namespace (run it in a throwaway child) ----

def unshare_raw(int flags, long n):
    """n unshare(flags) through syscall(SYS_unshare): elapsed ns."""
    cdef long _i
    cdef int err = 0
    cdef long long start, end
    with nogil:
        start = _now()
        for _i in range(n):
            if syscall(SYS_unshare, flags) == -1:
                err = errno
                break
        end = _now()
    return _elapsed(err, end - start)


def unshare_cimport(int flags, long n):
    """n unshare(flags) through the cimport API (sys_unshare): elapsed ns."""
    cdef long _i
    cdef int err = 0
    cdef long long start, end
    with nogil:
        start = _now()
        for _i in range(n):
            if sys_unshare(flags) == -1:
                err = errno
                break
        end = _now()
    return _elapsed(err, end - start)


# ---- kcmp ----

def kcmp_raw(pid_t pid1, pid_t pid2, int type, long n):
    """n kcmp(pid1, pid2, type, 0, 0) through syscall(SYS_kcmp): elapsed ns."""
    cdef long _i
    cdef int err = 0
    cdef long long start, end
    with nogil:
        start = _now()
        for _i in range(n):
            if syscall(SYS_kcmp, pid1, pid2, type, 0, 0) == -1:
                err = errno
                break
        end = _now()
    return _elapsed(err, end - start)


def kcmp_cimport(pid_t pid1, pid_t pid2, int type, long n):
    """n kcmp(pid1, pid2, type, 0, 0) through the cimport API (sys_kcmp): elapsed ns."""
    cdef long _i
    cdef int err = 0
    cdef long long start, end
    with nogil:
        start = _now()
        for _i in range(n):
            if sys_kcmp(pid1, pid2, type, 0, 0) == -1:
                err = errno
                break
        end = _now()
    return _elapsed(err, end - start)


# ---- the nsfs ioctls ----

def ns_ioctl_raw(int fd, unsigned long request, long n):
    """n ioctl(fd, request) through syscall(SYS_ioctl): elapsed ns."""
    cdef long _i
    cdef int err = 0
    cdef long long start, end
    with nogil:
        start = _now()
        for _i in range(n):
            if syscall(SYS_ioctl, fd, request) == -1:
                err = errno
                break
        end = _now()
    return _elapsed(err, end - start)


def ns_ioctl_cimport(int fd, unsigned long request, long n):
    """n ioctl(fd, request) through the cimport API (lc_ns_ioctl): elapsed ns."""
    cdef long _i
    cdef int err = 0
    cdef long long start, end
    with nogil:
        start = _now()
        for _i in range(n):
            if lc_ns_ioctl(fd, request) == -1:
                err = errno
                break
        end = _now()
    return _elapsed(err, end - start)


def owner_uid_raw(int fd, long n):
    """n ioctl(fd, NS_GET_OWNER_UID, &uid) through syscall(SYS_ioctl): elapsed ns."""
    cdef uid_t uid
    cdef long _i
    cdef int err = 0
    cdef long long start, end
    with nogil:
        start = _now()
        for _i in range(n):
            if syscall(SYS_ioctl, fd, NS_GET_OWNER_UID, &uid) == -1:
                err = errno
                break
        end = _now()
    return _elapsed(err, end - start)


def owner_uid_cimport(int fd, long n):
    """n NS_GET_OWNER_UID through the cimport API (lc_ns_get_owner_uid): elapsed ns."""
    cdef uid_t uid
    cdef long _i
    cdef int err = 0
    cdef long long start, end
    with nogil:
        start = _now()
        for _i in range(n):
            if lc_ns_get_owner_uid(fd, &uid) == -1:
                err = errno
                break
        end = _now()
    return _elapsed(err, end - start)


# ---- configure_loopback: one timed call per fresh network namespace ----

def loopback_fresh(bint helper, long n):
    """n times: unshare(CLONE_NEWNET) (not timed), then bring up lo with the bare syscalls
    (or lc_configure_loopback with `helper`), timed alone: the summed ns.  Each timed call
    brackets one call with two clock reads, as a Python caller has to."""
    cdef long _i
    cdef int rc, err = 0
    cdef long long total = 0, start
    with nogil:
        for _i in range(n):
            if sys_unshare(<int>CLONE_NEWNET) == -1:
                err = errno
                break
            start = _now()
            rc = lc_configure_loopback() if helper else _loopback_raw()
            total += _now() - start
            if rc == -1:
                err = errno
                break
    return _elapsed(err, total)


def clock_pair(long n):
    """n empty clock-read pairs, as loopback_fresh brackets each call: the summed ns."""
    cdef long _i
    cdef long long total = 0, start
    with nogil:
        for _i in range(n):
            start = _now()
            total += _now() - start
    return total


# ---- processes: a child in new namespaces, reaped ----

def clone_reap(unsigned long flags, long n):
    """n times: a fork-like clone(flags | SIGCHLD) whose child _exits at once, reaped with
    waitpid: elapsed ns.  The child makes no call but _exit, so no lock of the parent's
    matters."""
    cdef long _i
    cdef int status, err = 0
    cdef pid_t pid
    cdef long long start, end
    with nogil:
        start = _now()
        for _i in range(n):
            pid = sys_clone_fork(flags | SIGCHLD, NULL)
            if pid == 0:
                _exit(0)
            if pid == -1 or waitpid(pid, &status, 0) == -1:
                err = errno
                break
        end = _now()
    return _elapsed(err, end - start)


cdef struct _Exec:
    const char *path
    char **argv


cdef int _exec_child(void *arg) noexcept nogil:
    cdef _Exec *request = <_Exec *>arg
    # Signals stay blocked, as the parent left them: the program runs nothing that needs one,
    # and no handler of the parent may run on the memory the child shares with it.
    # The process's environment, as spawn(env=None), subprocess and os.execv pass it: execve
    # copies it into the new program, work an empty one would leave out of the baseline.
    execve(request.path, request.argv, environ)
    _exit(127)
    return 127


def spawn_reap(unsigned long flags, bytes path, long n):
    """n times: clone(CLONE_VM | CLONE_VFORK | flags) of a child that execs `path` with no
    arguments and the process's environment, as posix_spawn would; reaped with waitpid:
    elapsed ns.  Fails with ECHILD if the program did not exit 0."""
    cdef size_t stack_size = 64 * 1024
    cdef char *stack = <char *>malloc(stack_size)
    cdef char *argv[2]
    cdef _Exec request
    cdef sigset_t all_signals, saved
    cdef long _i
    cdef int status, err = 0
    cdef pid_t pid
    cdef long long start, end
    if stack == NULL:
        raise MemoryError()
    argv[0] = path
    argv[1] = NULL
    request.path, request.argv = path, argv
    sigfillset(&all_signals)
    with nogil:
        start = _now()
        for _i in range(n):
            pthread_sigmask(SIG_SETMASK, &all_signals, &saved)
            pid = sys_clone(_exec_child, stack + stack_size,
                            <int>(CLONE_VM | CLONE_VFORK | flags | SIGCHLD), &request)
            err = errno
            pthread_sigmask(SIG_SETMASK, &saved, NULL)
            if pid == -1:
                break
            if waitpid(pid, &status, 0) == -1:
                err = errno
                break
            err = 0 if status == 0 else ECHILD
            if err != 0:
                break
        end = _now()
    free(stack)
    return _elapsed(err, end - start)


cdef struct _PipedExec:
    const char *path
    char **argv
    int out  # becomes fd 1
    int err  # becomes fd 2


cdef int _piped_exec_child(void *arg) noexcept nogil:
    cdef _PipedExec *request = <_PipedExec *>arg
    if dup2(request.out, 1) == -1 or dup2(request.err, 2) == -1:
        _exit(126)
    execve(request.path, request.argv, environ)  # as _exec_child: the process's environment
    _exit(127)
    return 127


cdef int _drain(int fd) noexcept nogil:
    """Read fd to end of file: 0, or -1 (errno)."""
    cdef char buf[4096]
    cdef ssize_t got = 1
    while got != 0:
        got = read(fd, buf, sizeof(buf))
        if got == -1 and errno != EINTR:
            return -1
    return 0


def spawn_pipe_reap(unsigned long flags, bytes path, bytes arg, long n):
    """n times: a close-on-exec pipe each for stdout and stderr, clone(CLONE_VM | CLONE_VFORK
    | flags) of a child that puts their write ends on 1 and 2 and execs `path arg` with the
    process's environment; the parent reads both pipes to end of file and reaps the child with
    waitpid: elapsed ns.  Fails with ECHILD if the program did not exit 0."""
    cdef size_t stack_size = 64 * 1024
    cdef char *stack = <char *>malloc(stack_size)
    cdef char *argv[3]
    cdef _PipedExec request
    cdef int out[2]
    cdef int err_pipe[2]
    cdef sigset_t all_signals, saved
    cdef long _i
    cdef int status, err = 0
    cdef pid_t pid
    cdef long long start, end
    if stack == NULL:
        raise MemoryError()
    argv[0], argv[1], argv[2] = path, arg, NULL
    request.path, request.argv = path, argv
    sigfillset(&all_signals)
    with nogil:
        start = _now()
        for _i in range(n):
            if pipe2(out, O_CLOEXEC) == -1:
                err = errno
                break
            if pipe2(err_pipe, O_CLOEXEC) == -1:
                err = errno
                close(out[0])
                close(out[1])
                break
            request.out, request.err = out[1], err_pipe[1]
            pthread_sigmask(SIG_SETMASK, &all_signals, &saved)
            pid = sys_clone(_piped_exec_child, stack + stack_size,
                            <int>(CLONE_VM | CLONE_VFORK | flags | SIGCHLD), &request)
            err = errno
            pthread_sigmask(SIG_SETMASK, &saved, NULL)
            close(out[1])
            close(err_pipe[1])
            if pid != -1:
                err = 0
                if _drain(out[0]) == -1 or _drain(err_pipe[0]) == -1:
                    err = errno
            close(out[0])
            close(err_pipe[0])
            if pid == -1 or err != 0:
                break
            if waitpid(pid, &status, 0) == -1:
                err = errno
                break
            err = 0 if status == 0 else ECHILD
            if err != 0:
                break
        end = _now()
    free(stack)
    return _elapsed(err, end - start)


def setup_reap(unsigned long flags, bytes hostname, long n):
    """n times: a fork-like clone(flags | SIGCHLD) whose child sets `hostname`, brings up lo
    (lc_configure_loopback) and _exits, reaped with waitpid: elapsed ns.  ECHILD if a child
    failed."""
    cdef const char *name = hostname
    cdef size_t length = len(hostname)
    cdef long _i
    cdef int status, err = 0
    cdef pid_t pid
    cdef long long start, end
    with nogil:
        start = _now()
        for _i in range(n):
            pid = sys_clone_fork(flags | SIGCHLD, NULL)
            if pid == 0:
                _exit(0 if sethostname(name, length) == 0 and lc_configure_loopback() == 0
                      else 1)
            if pid == -1 or waitpid(pid, &status, 0) == -1:
                err = errno
                break
            if status != 0:
                err = ECHILD
                break
        end = _now()
    return _elapsed(err, end - start)

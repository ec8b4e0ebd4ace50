# The C contract of linux_clone: syscall prototypes and constants as the kernel headers give
# them, and the nogil helpers for the calls that have no glibc wrapper (linux_clone.h, beside
# this file).  Cython code cimports this file:  from linux_clone._core cimport sys_setns
# and its build needs linux_clone.get_include() on the C include path.
#
# Naming: sys_X is the system call X (returns -1 and sets errno like libc); lc_X is a helper
# of ours with the same convention.  Everything here is nogil and needs no Python object.

from posix.types cimport pid_t, uid_t


cdef extern from "<sched.h>" nogil:
    const unsigned long long CSIGNAL
    const unsigned long long CLONE_VM
    const unsigned long long CLONE_FS
    const unsigned long long CLONE_FILES
    const unsigned long long CLONE_SIGHAND
    const unsigned long long CLONE_PIDFD
    const unsigned long long CLONE_PTRACE
    const unsigned long long CLONE_VFORK
    const unsigned long long CLONE_PARENT
    const unsigned long long CLONE_THREAD
    const unsigned long long CLONE_NEWNS
    const unsigned long long CLONE_SYSVSEM
    const unsigned long long CLONE_SETTLS
    const unsigned long long CLONE_PARENT_SETTID
    const unsigned long long CLONE_CHILD_CLEARTID
    const unsigned long long CLONE_DETACHED
    const unsigned long long CLONE_UNTRACED
    const unsigned long long CLONE_CHILD_SETTID
    const unsigned long long CLONE_NEWCGROUP
    const unsigned long long CLONE_NEWUTS
    const unsigned long long CLONE_NEWIPC
    const unsigned long long CLONE_NEWUSER
    const unsigned long long CLONE_NEWPID
    const unsigned long long CLONE_NEWNET
    const unsigned long long CLONE_IO
    const unsigned long long CLONE_NEWTIME
    const unsigned long long CLONE_CLEAR_SIGHAND
    const unsigned long long CLONE_INTO_CGROUP

    int sys_unshare "unshare"(int flags)
    int sys_setns "setns"(int fd, int nstype)
    # glibc's clone: fn runs on `stack` (the highest address) in the child, then _exit(fn(arg)).
    int sys_clone "clone"(int (*fn)(void *) noexcept nogil, void *stack, int flags, void *arg, ...)


cdef extern from "<linux/kcmp.h>" nogil:
    enum kcmp_type:
        KCMP_FILE
        KCMP_VM
        KCMP_FILES
        KCMP_FS
        KCMP_SIGHAND
        KCMP_IO
        KCMP_SYSVSEM
        KCMP_EPOLL_TFD

    struct kcmp_epoll_slot:
        unsigned int efd
        unsigned int tfd
        unsigned int toff


cdef extern from "<linux/nsfs.h>" nogil:
    const unsigned long NS_GET_USERNS
    const unsigned long NS_GET_PARENT
    const unsigned long NS_GET_NSTYPE
    const unsigned long NS_GET_OWNER_UID


cdef extern from "<sys/wait.h>" nogil:
    const int WALL "__WALL"


cdef extern from "linux_clone.h" nogil:
    # The calls glibc has no wrapper for, and our helpers; the header also gives the fallback
    # values of the CLONE_* constants older <sched.h> lack.
    struct lc_clone_args:
        unsigned long long flags
        unsigned long long pidfd
        unsigned long long child_tid
        unsigned long long parent_tid
        unsigned long long exit_signal
        unsigned long long stack
        unsigned long long stack_size
        unsigned long long tls
        unsigned long long set_tid
        unsigned long long set_tid_size
        unsigned long long cgroup

    int sys_kcmp(pid_t pid1, pid_t pid2, int type, unsigned long idx1, unsigned long idx2)
    int sys_pivot_root(const char *new_root, const char *put_old)
    pid_t sys_clone3(lc_clone_args *args, size_t size)
    pid_t sys_clone3_fn(lc_clone_args *args, size_t size, int (*fn)(void *) noexcept nogil,
                        void *arg)
    pid_t sys_clone_fork(unsigned long flags, int *parent_tid)
    int sys_pidfd_open(pid_t pid, unsigned int flags)
    int lc_ns_ioctl(int fd, unsigned long request)
    int lc_ns_get_owner_uid(int fd, uid_t *uid)
    int lc_configure_loopback()

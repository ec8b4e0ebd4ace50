/* clone()'s private C: when the caller may clone directly, the forked helper's channel to the
   caller when it may not (see _clone_from_fork in _core.pyx), the id maps' writes, and the
   child's move to its dedicated stack.  Included by _core.pyx only; not in the wheel. */
#ifndef LINUX_CLONE_CLONE_H
#define LINUX_CLONE_CLONE_H

#include <Python.h>

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <linux/nsfs.h>

/* glibc >= 2.32 defines it; weak, so that a module built for an older glibc (the manylinux2014
   wheels, glibc 2.17) loads there and still reads it where the running glibc has it. */
extern char __libc_single_threaded __attribute__((weak));

/* True when no other thread can hold a libc lock: glibc >= 2.32 keeps
   __libc_single_threaded false once a second thread has ever existed, so a process that
   had threads asks procfs, whose link count of /proc/self/task is 2 + the threads alive;
   a stat needs no free fd (an open failed with EMFILE and looked like threads). */
static inline int lc_single_threaded(void) {
    struct stat st;
    if (&__libc_single_threaded != NULL && __libc_single_threaded)
        return 1;
    return stat("/proc/self/task", &st) == 0 && st.st_nlink == 3;
}

/* linux/nsfs.h has it from Linux 6.10; older headers do not. */
#ifndef NS_GET_PID_FROM_PIDNS
#define NS_GET_PID_FROM_PIDNS _IOR(0xb7, 0x6, int)
#endif

/* 1 when the calling thread's children go to another pid namespace than its own (after
   setns or unshare of NEWPID), 0 when not or /proc cannot tell, -1 when that namespace
   has no init: right after unshare(NEWPID).  Up to Linux 6.18 at least, procfs shows no
   pid_for_children until the namespace has an init; Linux 7.2 (forky's kernel) shows it
   at once, so there the nsfs ioctl asks for pid 1 (Linux 6.10+: ESRCH when the namespace
   has none, also once its init has died; ENOTTY before 6.10, where the stat answered).
   Asked before any fork: a forked helper would become the init.  errno is kept. */
static inline int lc_pid_ns_moved(void) {
    struct stat own, children;
    int saved = errno, fd, moved = 1;
    if (stat("/proc/thread-self/ns/pid", &own) != 0)
        moved = 0;
    else if (stat("/proc/thread-self/ns/pid_for_children", &children) != 0)
        moved = errno == ENOENT ? -1 : 0;
    else if (own.st_ino == children.st_ino && own.st_dev == children.st_dev)
        moved = 0;
    else if ((fd = open("/proc/thread-self/ns/pid_for_children", O_RDONLY | O_CLOEXEC)) >= 0) {
        if (ioctl(fd, NS_GET_PID_FROM_PIDNS, 1) == -1 && errno == ESRCH)
            moved = -1;
        close(fd);
    }
    errno = saved;
    return moved;
}

/* The forked helper's channel to the caller (see _clone_from_fork): a seqpacket pair;
   with `passcred` the caller's end gets each sender's pid as its own namespace numbers it
   (SCM_CREDENTIALS: the kernel translates it between pid namespaces). */
static inline int lc_report_pair(int fds[2], int passcred) {
    int one = 1, saved;
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, fds) == -1)
        return -1;
    if (passcred && setsockopt(fds[0], SOL_SOCKET, SO_PASSCRED, &one, sizeof one) == -1) {
        saved = errno;
        close(fds[0]);
        close(fds[1]);
        errno = saved;
        return -1;
    }
    return 0;
}

/* One report: `value` (the helper's: the child's pid or -errno; the child's: 0), with
   `fd` (>= 0) passed along as SCM_RIGHTS. */
static inline int lc_send_report(int sock, int value, int fd) {
    union { struct cmsghdr align; char buf[CMSG_SPACE(sizeof(int))]; } control;
    struct iovec iov = { &value, sizeof value };
    struct msghdr msg;
    struct cmsghdr *cmsg;
    ssize_t n;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (fd >= 0) {
        memset(&control, 0, sizeof control);
        msg.msg_control = control.buf;
        msg.msg_controllen = sizeof control.buf;
        cmsg = CMSG_FIRSTHDR(&msg);
        cmsg->cmsg_level = SOL_SOCKET;
        cmsg->cmsg_type = SCM_RIGHTS;
        cmsg->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(cmsg), &fd, sizeof fd);
    }
    do
        n = sendmsg(sock, &msg, MSG_NOSIGNAL);
    while (n == -1 && errno == EINTR);
    return n == sizeof value ? 0 : -1;
}

/* Receive one report: 1, or 0 at EOF or (without `block`) when none is queued.  *fd gets
   the fd passed along (close-on-exec; fds[0] is left as it was otherwise), *lost is set
   when one could not be received (no free fd: the kernel closed it), *sender is the
   sender's pid in our pid namespace (with SO_PASSCRED). */
static inline int lc_recv_report(int sock, int block, int *value, int *fd, int *lost,
                                 pid_t *sender) {
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(2 * sizeof(int)) + CMSG_SPACE(sizeof(struct ucred))];
    } control;
    struct iovec iov = { value, sizeof *value };
    struct msghdr msg;
    struct cmsghdr *cmsg;
    struct ucred cred;
    ssize_t n;
    int got;
    size_t i;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.buf;
    msg.msg_controllen = sizeof control.buf;
    do
        n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC | (block ? 0 : MSG_DONTWAIT));
    while (n == -1 && errno == EINTR);
    if (n == -1)
        return errno == EAGAIN ? 0 : -1;
    if (msg.msg_flags & MSG_CTRUNC)
        *lost = 1;
    for (cmsg = CMSG_FIRSTHDR(&msg); cmsg != NULL; cmsg = CMSG_NXTHDR(&msg, cmsg)) {
        if (cmsg->cmsg_level == SOL_SOCKET && cmsg->cmsg_type == SCM_RIGHTS) {
            for (i = 0; i < (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int); i++) {
                memcpy(&got, CMSG_DATA(cmsg) + i * sizeof(int), sizeof got);
                if (*fd == -1)
                    *fd = got;
                else
                    close(got);
            }
        } else if (cmsg->cmsg_level == SOL_SOCKET && cmsg->cmsg_type == SCM_CREDENTIALS) {
            memcpy(&cred, CMSG_DATA(cmsg), sizeof cred);
            *sender = cred.pid;
        }
    }
    return n == sizeof *value;
}

/* The caller's word to a gated child: go (1 byte), or none (the caller closes its end). */
static inline void lc_send_go(int sock) {
    while (send(sock, "g", 1, MSG_NOSIGNAL) == -1 && errno == EINTR)
        ;
}

static inline int lc_wait_go(int sock) {
    char go;
    ssize_t n;
    do
        n = recv(sock, &go, 1, 0);
    while (n == -1 && errno == EINTR);
    return n == 1;
}

/* Write `data` to /proc/<pid>/<name> (an id map, setgroups) in one write, as the kernel
   takes a map: 0, or -1 with errno.  Opened and closed here, so that no signal handler runs
   (and raises) while the fd is open. */
static inline int lc_write_proc(pid_t pid, const char *name, const char *data, size_t size) {
    char path[64];
    int fd, saved;
    ssize_t n;
    snprintf(path, sizeof path, "/proc/%d/%s", (int)pid, name);
    if ((fd = open(path, O_WRONLY | O_CLOEXEC)) == -1)
        return -1;
    do
        n = write(fd, data, size);
    while (n == -1 && errno == EINTR);
    saved = errno;
    close(fd);
    errno = saved;
    return n == -1 ? -1 : 0;
}

/* The clone child's exit and the caller's flush use borrowed references only: every
   reference count they wrote would be a page written after the fork -- a copy-on-write
   fault in the parent, and a copy in the child, 3-5 us each here, where a clone is 1-2 ms. */

/* Flush sys.stdout and sys.stderr (`names`, looked up in `sysdict`) as the interpreter's
   exit does; None and a missing stream are skipped.  A failed flush is ignored, except
   that with `keep_base` an exception that is not an Exception (KeyboardInterrupt) stays
   set and stops the flushing: -1. */
static inline int lc_flush_std(PyObject *sysdict, PyObject *names, PyObject *flush,
                               int keep_base) {
    PyObject *stream, *result;
    Py_ssize_t i;
    for (i = 0; i < PyTuple_GET_SIZE(names); i++) {
        /* Held (its page is the one the flush writes anyway): a flush may replace
           sys.stdout, and in a free-threaded build another thread may, at any moment. */
#if PY_VERSION_HEX >= 0x030D0000
        if (PyDict_GetItemRef(sysdict, PyTuple_GET_ITEM(names, i), &stream) < 0)
            stream = NULL;
#else
        stream = PyDict_GetItemWithError(sysdict, PyTuple_GET_ITEM(names, i));
        Py_XINCREF(stream);
#endif
        if (stream != NULL && stream != Py_None) {
            result = PyObject_CallMethodNoArgs(stream, flush);
            Py_XDECREF(result);
        }
        Py_XDECREF(stream);
        if (PyErr_Occurred()) {
            if (keep_base && !PyErr_ExceptionMatches(PyExc_Exception))
                return -1;
            PyErr_Clear();
        }
    }
    return 0;
}

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
#elif PY_VERSION_HEX < 0x030A0000
/* 3.9's compiler recurses unchecked (compile("1" + "+1" * 100000): 4.6 MB with pyenv's
   build, 7.7 MB with Debian bullseye's 3.9.2), so what the main thread survives is what
   its 8 MiB holds: the minimum is 8 MiB. */
#  define LC_RESERVE (7424 * 1024)
#  define LC_LEVEL_BYTES 2048
#  define LC_MIN_LEVELS 300
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
#define LC_MIN_STACK_SIZE \
    ((LC_RESERVE + LC_MIN_CHECKED + (256 * 1024 - 1)) / (256 * 1024) * (256 * 1024))

static inline int lc_fit_recursion(char *base, size_t size) {
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
    (void)base;
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

#endif

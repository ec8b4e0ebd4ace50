/* linux_clone's C contract, as _core.pxd declares it: fallbacks for constants older headers
   lack, and nogil helpers for the calls glibc has no wrapper for, as syscall(2) makes them.
   Shipped in the wheel: a Cython module that cimports linux_clone._core includes this file,
   so its build needs linux_clone.get_include() on the include path.

   Naming: sys_X is the system call X (returns -1 and sets errno like libc); lc_X is a helper
   of ours with the same convention.  A build against headers without a syscall number still
   compiles; the call then fails with ENOSYS. */
#ifndef LINUX_CLONE_H
#define LINUX_CLONE_H

#include <errno.h>
#include <sched.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>
#include <net/if.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <linux/nsfs.h>
#include <linux/sched.h>

/* Fallbacks for older headers, with the kernel's documented values. */
#ifndef CLONE_NEWCGROUP
#define CLONE_NEWCGROUP 0x02000000          /* Linux 4.6 */
#endif
#ifndef CLONE_NEWTIME
#define CLONE_NEWTIME 0x00000080            /* Linux 5.6; overlaps CSIGNAL, clone3/unshare only */
#endif
#ifndef CLONE_PIDFD
#define CLONE_PIDFD 0x00001000              /* Linux 5.2 */
#endif
#ifndef CLONE_CLEAR_SIGHAND
#define CLONE_CLEAR_SIGHAND 0x100000000ULL  /* Linux 5.5, clone3 only */
#endif
#ifndef CLONE_INTO_CGROUP
#define CLONE_INTO_CGROUP 0x200000000ULL    /* Linux 5.7, clone3 only */
#endif

struct lc_clone_args {  /* struct clone_args of <linux/sched.h>, CLONE_ARGS_SIZE_VER2 */
    uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls,
             set_tid, set_tid_size, cgroup;
};

typedef int (*lc_child_fn)(void *);

static inline int lc_enosys(void) {
    errno = ENOSYS;
    return -1;
}

static inline int sys_kcmp(pid_t pid1, pid_t pid2, int type,
                           unsigned long idx1, unsigned long idx2) {
#ifdef SYS_kcmp
    return (int)syscall(SYS_kcmp, pid1, pid2, type, idx1, idx2);
#else
    (void)pid1; (void)pid2; (void)type; (void)idx1; (void)idx2;
    return lc_enosys();
#endif
}

static inline int sys_pivot_root(const char *new_root, const char *put_old) {
    return (int)syscall(SYS_pivot_root, new_root, put_old);
}

static inline pid_t sys_clone3(struct lc_clone_args *args, size_t size) {
#ifdef SYS_clone3
    return (pid_t)syscall(SYS_clone3, args, size);
#else
    (void)args; (void)size;
    return lc_enosys();
#endif
}

/* The fork-like legacy clone: no new stack, so the child returns here like fork() does.
   parent_tid receives the pidfd with CLONE_PIDFD.  The kernel's argument order differs
   (kernel/fork.c): x86-64 and most have (flags, newsp, parent_tid, child_tid, tls); arm64,
   riscv, powerpc, arc and x86-32 select CLONE_BACKWARDS, (flags, newsp, parent_tid, tls,
   child_tid); s390 selects CLONE_BACKWARDS2, (newsp, flags, parent_tid, child_tid, tls).
   The last two are 0 here, so only s390 needs its own call. */
static inline pid_t sys_clone_fork(unsigned long flags, int *parent_tid) {
#if defined(__s390__) || defined(__CRIS__)
    return (pid_t)syscall(SYS_clone, 0, flags, parent_tid, NULL, 0);
#else
    return (pid_t)syscall(SYS_clone, flags, 0, parent_tid, NULL, 0);
#endif
}

/* clone3 that runs fn(arg) in the child on args->stack, then exits with its result --
   what glibc's clone() does for clone(2).  glibc exports no clone3 wrapper, and a child on a
   new stack must not return through the caller's frames, so this is assembly, one variant
   per architecture (x86-64, aarch64); ENOSYS elsewhere (use sys_clone there).  The kernel
   points the child's stack pointer at args->stack + args->stack_size unaligned; each child
   rounds it down to the 16 bytes its ABI wants (aarch64 faults on a misaligned sp). */
#if defined(__x86_64__) && defined(SYS_clone3)
/* ---- x86-64 ---- */
static inline pid_t sys_clone3_fn(struct lc_clone_args *args, size_t size,
                                  lc_child_fn fn, void *arg) {
    long ret;
    register lc_child_fn r_fn __asm__("r12") = fn;
    register void *r_arg __asm__("r13") = arg;
    __asm__ volatile(
        "syscall\n\t"
        "test %%rax, %%rax\n\t"
        "jnz 1f\n\t"
        "xor %%ebp, %%ebp\n\t"
        "and $-16, %%rsp\n\t"
        "mov %%r13, %%rdi\n\t"
        "call *%%r12\n\t"
        "mov %%eax, %%edi\n\t"
        "mov %[nr_exit], %%eax\n\t"
        "syscall\n\t"
        "hlt\n"
        "1:"
        : "=a"(ret)
        : "0"((long)SYS_clone3), "D"(args), "S"(size), "r"(r_fn), "r"(r_arg),
          [nr_exit] "i"(SYS_exit)
        : "rcx", "r11", "memory", "cc");
    if (ret < 0) {
        errno = (int)-ret;
        return -1;
    }
    return (pid_t)ret;
}
/* ---- end x86-64 ---- */
#elif defined(__aarch64__) && defined(SYS_clone3)
/* ---- aarch64 (as glibc's aarch64/clone3.S) ---- */
static inline pid_t sys_clone3_fn(struct lc_clone_args *args, size_t size,
                                  lc_child_fn fn, void *arg) {
    /* svc keeps every register but x0 and the child starts with the parent's registers,
       so fn and arg reach the child in x19/x20.  x29 = 0 ends the frame chain for
       unwinders; sp can only be written by an instruction (and) that does not read it. */
    register long x0 __asm__("x0") = (long)args;
    register size_t x1 __asm__("x1") = size;
    register long x8 __asm__("x8") = SYS_clone3;
    register lc_child_fn x19 __asm__("x19") = fn;
    register void *x20 __asm__("x20") = arg;
    __asm__ volatile(
        "svc #0\n\t"
        "cbnz x0, 1f\n\t"
        "mov x29, xzr\n\t"
        "mov x9, sp\n\t"
        "and sp, x9, #-16\n\t"
        "mov x0, x20\n\t"
        "blr x19\n\t"
        "mov x8, %[nr_exit]\n\t"
        "svc #0\n\t"
        "brk #1000\n"
        "1:"
        : "+r"(x0)
        : "r"(x1), "r"(x8), "r"(x19), "r"(x20), [nr_exit] "i"(SYS_exit)
        : "memory");
    if (x0 < 0) {
        errno = (int)-x0;
        return -1;
    }
    return (pid_t)x0;
}
/* ---- end aarch64 ---- */
#else
static inline pid_t sys_clone3_fn(struct lc_clone_args *args, size_t size,
                                  lc_child_fn fn, void *arg) {
    (void)args; (void)size; (void)fn; (void)arg;
    return lc_enosys();
}
#endif

static inline int sys_pidfd_open(pid_t pid, unsigned int flags) {
#ifdef SYS_pidfd_open
    return (int)syscall(SYS_pidfd_open, pid, flags);
#else
    (void)pid; (void)flags;
    return lc_enosys();
#endif
}

/* The nsfs ioctls.  NS_GET_USERNS and NS_GET_PARENT return new close-on-exec fds. */
static inline int lc_ns_ioctl(int fd, unsigned long request) {
    return ioctl(fd, request);
}

static inline int lc_ns_get_owner_uid(int fd, uid_t *uid) {
    return ioctl(fd, NS_GET_OWNER_UID, uid);
}

/* `ip link set lo up` in the caller's network namespace: read the flags, add IFF_UP.
   The kernel then adds 127.0.0.1/8 and ::1/128 itself. */
static inline int lc_configure_loopback(void) {
    struct ifreq ifr;
    int rc, saved, fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    memset(&ifr, 0, sizeof ifr);
    memcpy(ifr.ifr_name, "lo", 3);
    rc = ioctl(fd, SIOCGIFFLAGS, &ifr);
    if (rc == 0 && !(ifr.ifr_flags & IFF_UP)) {
        ifr.ifr_flags |= IFF_UP;
        rc = ioctl(fd, SIOCSIFFLAGS, &ifr);
    }
    saved = errno;
    close(fd);
    errno = saved;
    return rc;
}

#endif

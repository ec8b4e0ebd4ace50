/* spawn()'s private C, for its child (which shares the parent's memory and makes only
   syscalls): the signal reset, the futex words of the id-map handshake, the parent-death check
   and close_range; and the stack kept between spawns.  Included by _core.pyx only; not in the
   wheel. */
#ifndef LINUX_CLONE_SPAWN_H
#define LINUX_CLONE_SPAWN_H

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <linux/futex.h>

/* A spawn child shares the parent's memory, so none of the parent's signal handlers may
   run in it: every caught signal goes back to SIG_DFL, then the parent's mask returns,
   as in posix_spawn.  SIGPIPE and SIGXFSZ, which Python ignores, go back to SIG_DFL too,
   as subprocess's restore_signals does.  The caught ones are reset by the kernel when the
   child came from clone3 with CLONE_CLEAR_SIGHAND (Linux 5.5), else here (`handlers`), a
   query per signal; glibc's internal signals (32 up to SIGRTMIN) are left alone here. */
static inline void lc_reset_signals(const sigset_t *mask, int handlers) {
    struct sigaction sa;
    int sig;
    for (sig = 1; handlers && sig < _NSIG; sig++) {
        if (sig >= 32 && sig < SIGRTMIN)
            continue;
        if (sigaction(sig, NULL, &sa) == 0 && sa.sa_handler != SIG_DFL
                && (sa.sa_handler != SIG_IGN || sig == SIGPIPE || sig == SIGXFSZ)) {
            memset(&sa, 0, sizeof sa);
            sa.sa_handler = SIG_DFL;
            sigaction(sig, &sa, NULL);
        }
    }
    if (!handlers) {
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = SIG_DFL;
        sigaction(SIGPIPE, &sa, NULL);
        sigaction(SIGXFSZ, &sa, NULL);
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

/* The stack of the last spawn, kept for the next: an mmap, mprotect and munmap less per
   spawn (~12 us).  One slot, swapped atomically (free-threaded builds too): a spawn takes
   the stack out, so no other spawn can get it while its child runs there, and a spawn that
   finds the slot empty maps its own.  Plain memory, no Python object: a forked child's copy
   is its own, and nothing outlives an interpreter that a later one would have to free.
   Every spawn stack is `length` bytes, the lowest page (`guard`) PROT_NONE. */
static char *lc_kept_stack;

/* The kept stack, or a new one; NULL (errno) when none can be mapped. */
static inline char *lc_stack_take(size_t length, size_t guard) {
    char *base = __atomic_exchange_n(&lc_kept_stack, NULL, __ATOMIC_ACQUIRE);
    int err;
    if (base != NULL)
        return base;
    base = mmap(NULL, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED)
        return NULL;
    if (mprotect(base, guard, PROT_NONE) == -1) {
        err = errno;
        munmap(base, length);
        errno = err;
        return NULL;
    }
    return base;
}

/* A stack no child runs on any more, kept (NULL: none); the one it displaces -- another
   spawn's, mapped while this one held the slot's -- is unmapped. */
static inline void lc_stack_keep(char *base, size_t length) {
    char *old = __atomic_exchange_n(&lc_kept_stack, base, __ATOMIC_ACQ_REL);
    if (old != NULL)
        munmap(old, length);
}

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)   /* Linux 5.11 */
#endif
static inline int lc_close_range(unsigned int first, unsigned int last, unsigned int flags) {
#ifdef SYS_close_range
    return (int)syscall(SYS_close_range, first, last, flags);
#else
    (void)first; (void)last; (void)flags;
    errno = ENOSYS;
    return -1;
#endif
}

#endif

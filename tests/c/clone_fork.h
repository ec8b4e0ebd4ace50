/* sys_clone_fork as in linux_clone's C header, with its comment corrected.  Needs <stddef.h>,
   <sys/syscall.h>, <unistd.h>. */

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

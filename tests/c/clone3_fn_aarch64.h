/* sys_clone3_fn for x86-64 and aarch64, to replace the one in linux_clone's C header.
   Needs, as there: <errno.h>, <stddef.h>, <sys/syscall.h>, struct lc_clone_args,
   lc_child_fn and lc_enosys(). */

/* clone3 that runs fn(arg) in the child on args->stack, then exits with its result --
   what glibc's clone() does for clone(2).  glibc exports no clone3 wrapper, and a child
   on a new stack must not return through the caller's frames, so this is assembly:
   x86-64 and aarch64, ENOSYS elsewhere (use sys_clone there).  The kernel points the
   child's stack pointer at args->stack + args->stack_size; the child rounds it down to
   the 16 bytes both ABIs want (aarch64 faults on a misaligned sp). */
static inline pid_t sys_clone3_fn(struct lc_clone_args *args, size_t size,
                                  lc_child_fn fn, void *arg) {
#if defined(__x86_64__) && defined(SYS_clone3)
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
#elif defined(__aarch64__) && defined(SYS_clone3)
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
#else
    (void)args; (void)size; (void)fn; (void)arg;
    return lc_enosys();
#endif
}

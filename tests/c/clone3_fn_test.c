/* Runs sys_clone3_fn (clone3_fn_aarch64.h) the ways linux_clone uses it, and sys_clone_fork
   (clone_fork.h) with the argument that moves between architectures; one line per case,
   exit status 0 when all pass, 77 when they pass but the kernel (or emulator) has no clone3. */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "linux_clone.h"  /* sys_clone3_fn, sys_clone_fork: the code under test */

/* The kernel's value (<linux/wait.h>, Linux 5.4), for glibc before 2.36 (bullseye's 2.31),
   whose idtype_t has no P_PIDFD; where glibc has the enumerator, the macro names the same 3. */
#ifndef P_PIDFD
#define P_PIDFD 3
#endif

#define STACK_SIZE (64 * 1024)

static int failures;

static void check(int ok, const char *name, const char *detail) {
    printf("%s %s%s%s\n", ok ? "ok" : "FAIL", name, detail[0] ? ": " : "", detail);
    fflush(stdout);
    if (!ok)
        failures++;
}

static char *new_stack(void) {
    void *p = mmap(NULL, STACK_SIZE, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

/* The stack pointer as the child's C code sees it, kept from constant folding. */
static uintptr_t sp_here(void) {
    char local __attribute__((aligned(16)));
    uintptr_t p = (uintptr_t)&local;
    __asm__ volatile("" : "+r"(p));
    return p;
}

static int wait_status(pid_t pid) {
    int status;
    if (waitpid(pid, &status, 0) != pid)
        return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 1000 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}

static void init_args(struct lc_clone_args *args, uint64_t flags, char *stack, size_t size) {
    memset(args, 0, sizeof *args);
    args->flags = flags;
    args->exit_signal = SIGCHLD;
    args->stack = (uint64_t)(uintptr_t)stack;
    args->stack_size = stack ? size : 0;
}

/* Writes where its frame is to the pipe, then leaves by _exit(42), not by returning. */
static int pipe_child(void *arg) {
    uintptr_t where = sp_here();
    if (write(*(int *)arg, &where, sizeof where) != sizeof where)
        _exit(2);
    _exit(42);
}

static void test_pipe_exit(void) {
    struct lc_clone_args args;
    char detail[160] = "";
    char *stack = new_stack();
    int fds[2], status;
    uintptr_t where = 0;
    pid_t pid;
    if (!stack || pipe(fds) < 0) {
        check(0, "pipe_exit", "setup");
        return;
    }
    init_args(&args, 0, stack, STACK_SIZE);
    pid = sys_clone3_fn(&args, sizeof args, pipe_child, &fds[1]);
    if (pid < 0) {
        snprintf(detail, sizeof detail, "clone3: %s", strerror(errno));
        check(0, "pipe_exit", detail);
        return;
    }
    close(fds[1]);
    if (read(fds[0], &where, sizeof where) != sizeof where)
        where = 0;
    close(fds[0]);
    status = wait_status(pid);
    snprintf(detail, sizeof detail, "status %d, child frame at stack+%ld", status,
             (long)(where - (uintptr_t)stack));
    check(status == 42 && where > (uintptr_t)stack && where < (uintptr_t)stack + STACK_SIZE,
          "pipe_exit", detail);
    munmap(stack, STACK_SIZE);
}

struct shared {
    pid_t seen;
    uintptr_t sp;
};

/* Runs in the parent's memory (CLONE_VM); its return value is the exit status. */
static int vm_child(void *arg) {
    struct shared *s = arg;
    s->seen = getpid();
    s->sp = sp_here();
    return 43;
}

/* linux_clone's spawn case: CLONE_VM | CLONE_VFORK on a stack of its own. */
static void test_vfork_return(const char *name, size_t stack_size) {
    struct lc_clone_args args;
    struct shared s = {-1, 0};
    char detail[160] = "";
    char *stack = new_stack();
    unsigned long canary = (unsigned long)getpid() * 2654435761u, again;
    pid_t pid;
    int status;
    if (!stack) {
        check(0, name, "setup");
        return;
    }
    init_args(&args, CLONE_VM | CLONE_VFORK, stack, stack_size);
    pid = sys_clone3_fn(&args, sizeof args, vm_child, &s);
    again = (unsigned long)getpid() * 2654435761u;
    if (pid < 0) {
        snprintf(detail, sizeof detail, "clone3: %s", strerror(errno));
        check(0, name, detail);
        return;
    }
    status = wait_status(pid);
    snprintf(detail, sizeof detail, "status %d, seen %d of %d, sp %% 16 = %d", status,
             (int)s.seen, (int)pid, (int)(s.sp % 16));
    check(status == 43 && s.seen == pid && s.sp % 16 == 0 && s.sp > (uintptr_t)stack &&
          s.sp < (uintptr_t)stack + stack_size && canary == again, name, detail);
    munmap(stack, STACK_SIZE);
}

static int return_7(void *arg) {
    return arg == (void *)&failures ? 7 : 8;
}

/* No stack: fork-like, the child runs fn on its copy of our stack. */
static void test_no_stack(void) {
    struct lc_clone_args args;
    char detail[160] = "";
    pid_t pid;
    int status;
    init_args(&args, 0, NULL, 0);
    pid = sys_clone3_fn(&args, sizeof args, return_7, &failures);
    if (pid < 0) {
        snprintf(detail, sizeof detail, "clone3: %s", strerror(errno));
        check(0, "no_stack", detail);
        return;
    }
    status = wait_status(pid);
    snprintf(detail, sizeof detail, "status %d", status);
    check(status == 7, "no_stack", detail);
}

static void test_bad_size(void) {
    struct lc_clone_args args;
    char detail[160] = "";
    pid_t pid;
    int err;
    init_args(&args, 0, NULL, 0);
    errno = 0;
    pid = sys_clone3_fn(&args, 8, return_7, NULL);
    err = errno;
    snprintf(detail, sizeof detail, "returned %d, errno %s", (int)pid, strerror(err));
    check(pid == -1 && err == EINVAL && waitpid(-1, NULL, WNOHANG) == -1 && errno == ECHILD,
          "bad_size", detail);
}

/* parent_tid is the third argument on every architecture we build for: with
   CLONE_PARENT_SETTID the kernel stores the child's pid there, with CLONE_PIDFD a pidfd
   (waited for with P_PIDFD, Linux 5.4). */
static void test_clone_fork(const char *name, unsigned long flag) {
    char detail[160] = "";
    int parent_tid = -1, status;
    siginfo_t info;
    pid_t pid = sys_clone_fork(flag | SIGCHLD, &parent_tid);
    if (pid == 0)
        _exit(5);
    if (pid < 0) {
        snprintf(detail, sizeof detail, "clone: %s", strerror(errno));
        check(0, name, detail);
        return;
    }
    if (flag == CLONE_PIDFD) {
        memset(&info, 0, sizeof info);
        if (waitid(P_PIDFD, (id_t)parent_tid, &info, WEXITED) < 0) {
            snprintf(detail, sizeof detail, "waitid(P_PIDFD, %d): %s", parent_tid,
                     strerror(errno));
            check(0, name, detail);
            wait_status(pid);
            return;
        }
        close(parent_tid);
        parent_tid = info.si_pid;
        status = info.si_code == CLD_EXITED ? info.si_status : 1000;
    } else {
        status = wait_status(pid);
    }
    snprintf(detail, sizeof detail, "status %d, pid %d, %s %d", status, (int)pid,
             flag == CLONE_PIDFD ? "pidfd's child" : "parent_tid", parent_tid);
    check(status == 5 && parent_tid == pid, name, detail);
}

int main(int argc, char **argv) {
    struct lc_clone_args args;
    /* "clone3" leaves out legacy clone: QEMU 7.2's user mode emulates it (no CLONE_PIDFD,
       CLONE_PARENT_SETTID stored in the child's memory), so only a kernel can judge it. */
    if (argc < 2 || strcmp(argv[1], "clone3") != 0) {
        test_clone_fork("clone_fork_parent_settid", CLONE_PARENT_SETTID);
        test_clone_fork("clone_fork_pidfd", CLONE_PIDFD);
    }
    /* EFAULT from a NULL args says clone3 exists; ENOSYS says the kernel or emulator has none. */
    if (sys_clone3_fn(NULL, sizeof args, return_7, NULL) < 0 && errno == ENOSYS) {
        printf("SKIP clone3: %s\n%d failed\n", strerror(ENOSYS), failures);
        return failures ? 1 : 77;
    }
    test_pipe_exit();
    test_vfork_return("vfork_return", STACK_SIZE);
    test_vfork_return("vfork_return_top_misaligned_8", STACK_SIZE - 8);
    test_vfork_return("vfork_return_top_misaligned_3", STACK_SIZE - 3);
    test_no_stack();
    test_bad_size();
    printf("%d failed\n", failures);
    return failures ? 1 : 0;
}

/* entered()'s way back: the calling thread's current namespace of one type, as a new fd (and,
   for a mount namespace, its root and working directory: see lc_dir_open at the end).

   Fast path (Linux 6.11): ioctl(pidfd, PIDFD_GET_<TYPE>_NAMESPACE) on a pidfd of the calling
   thread (pidfd_open(tid, PIDFD_THREAD), Linux 6.9), about a tenth of the cost of opening
   /proc/thread-self/ns/<type>.  Older kernels: openat() of <type> in a directory fd of
   /proc/thread-self/ns, which saves the walk of /proc/thread-self.

   Each thread keeps that one fd (close-on-exec) from its first entered() on:
   - it is closed when the thread exits (a pthread key destructor; the main thread's lives
     until the process exits);
   - a forked child closes its copy at once (it names the parent's thread, whose namespaces
     entered() would go back into) and makes its own on its first entered():
     lc_thread_ns_after_fork runs from pthread_atfork for fork(), and from
     os.register_at_fork (registered by _core) for clone children, which run
     PyOS_AfterFork_Child but not glibc's atfork handlers.  Comparing pids would not do: the
     child of a pid 1 in a new pid namespace is pid 1 too;
   - before each use, fstat() checks it still is that file (the program may have closed it
     and reused the number, say for a pidfd of another process, whose namespaces entered()
     would silently go back to); a file that no longer is ours is left alone, and replaced.
   A clone(CLONE_FILES) child shares the fd table, so it forgets the parent's fd instead of
   closing it, and closes its own (if it made one) before it exits.
   Other threads' fds stay open, close-on-exec, in a forked child that does not exec, as any
   fd another thread holds at the fork.

   Everything here is per thread (__thread) but one process-wide flag that only ever goes
   from 0 to 1, read and written atomically: safe in a free-threaded build. */
#ifndef LINUX_CLONE_ENTERED_H
#define LINUX_CLONE_ENTERED_H

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef PIDFD_THREAD
#define PIDFD_THREAD O_EXCL                         /* Linux 6.9 */
#endif
#ifndef PIDFS_IOCTL_MAGIC
#define PIDFS_IOCTL_MAGIC 0xFF                      /* Linux 6.11, <linux/pidfd.h> */
#endif
#ifndef PIDFD_GET_CGROUP_NAMESPACE
#define PIDFD_GET_CGROUP_NAMESPACE _IO(PIDFS_IOCTL_MAGIC, 1)
#endif
#ifndef PIDFD_GET_IPC_NAMESPACE
#define PIDFD_GET_IPC_NAMESPACE _IO(PIDFS_IOCTL_MAGIC, 2)
#endif
#ifndef PIDFD_GET_MNT_NAMESPACE
#define PIDFD_GET_MNT_NAMESPACE _IO(PIDFS_IOCTL_MAGIC, 3)
#endif
#ifndef PIDFD_GET_NET_NAMESPACE
#define PIDFD_GET_NET_NAMESPACE _IO(PIDFS_IOCTL_MAGIC, 4)
#endif
#ifndef PIDFD_GET_PID_FOR_CHILDREN_NAMESPACE
#define PIDFD_GET_PID_FOR_CHILDREN_NAMESPACE _IO(PIDFS_IOCTL_MAGIC, 6)
#endif
#ifndef PIDFD_GET_TIME_NAMESPACE
#define PIDFD_GET_TIME_NAMESPACE _IO(PIDFS_IOCTL_MAGIC, 7)
#endif
#ifndef PIDFD_GET_UTS_NAMESPACE
#define PIDFD_GET_UTS_NAMESPACE _IO(PIDFS_IOCTL_MAGIC, 10)
#endif
#ifndef CLONE_NEWCGROUP
#define CLONE_NEWCGROUP 0x02000000
#endif
#ifndef CLONE_NEWTIME
#define CLONE_NEWTIME 0x00000080
#endif

struct lc_thread_ns {
    int fd;                     /* -1 until the first use */
    int is_pidfd;               /* else a directory fd of /proc/thread-self/ns */
    dev_t dev;                  /* what fd is, to tell it from a reused number */
    ino_t ino;
};

static __thread struct lc_thread_ns lc_thread_ns = {-1, 0, 0, 0};
static int lc_no_pidfd_ns;      /* set once the kernel said it has no PIDFD_THREAD or ioctls */
static pthread_key_t lc_thread_ns_key;
static int lc_thread_ns_key_made;
static pthread_once_t lc_thread_ns_once = PTHREAD_ONCE_INIT;

/* The pidfd ioctl and the /proc/thread-self/ns name of a type entered() can go back from;
   0 and NULL for any other. */
static inline unsigned long lc_ns_request(int kind, const char **name) {
    switch (kind) {
    case CLONE_NEWNET: *name = "net"; return PIDFD_GET_NET_NAMESPACE;
    case CLONE_NEWUTS: *name = "uts"; return PIDFD_GET_UTS_NAMESPACE;
    case CLONE_NEWIPC: *name = "ipc"; return PIDFD_GET_IPC_NAMESPACE;
    case CLONE_NEWNS: *name = "mnt"; return PIDFD_GET_MNT_NAMESPACE;
    case CLONE_NEWCGROUP: *name = "cgroup"; return PIDFD_GET_CGROUP_NAMESPACE;
    case CLONE_NEWPID: *name = "pid_for_children"; return PIDFD_GET_PID_FOR_CHILDREN_NAMESPACE;
    case CLONE_NEWTIME: *name = "time"; return PIDFD_GET_TIME_NAMESPACE;
    }
    *name = NULL;
    return 0;
}

/* fstat(fd, st); on failure, fd is closed and -1 returned with fstat's errno. */
static inline int lc_fstat_or_close(int fd, struct stat *st) {
    int saved;
    if (fstat(fd, st) == 0)
        return 0;
    saved = errno;
    close(fd);
    errno = saved;
    return -1;
}

/* Whether fd is the file (dev, ino): fstat, errno kept. */
static inline int lc_same_file(int fd, dev_t dev, ino_t ino) {
    struct stat st;
    int saved = errno, same = fstat(fd, &st) == 0 && st.st_dev == dev && st.st_ino == ino;
    errno = saved;
    return same;
}

/* Forget the thread's fd, closing it if it still is ours. */
static inline void lc_thread_ns_drop(void) {
    struct lc_thread_ns *t = &lc_thread_ns;
    int saved = errno;
    if (t->fd >= 0 && lc_same_file(t->fd, t->dev, t->ino))
        close(t->fd);
    t->fd = -1;
    errno = saved;
}

/* Forget the thread's fd without closing it: in a clone(CLONE_FILES) child the fd table is
   the parent's, and so is the fd. */
static inline void lc_thread_ns_forget(void) {
    lc_thread_ns.fd = -1;
}

static void lc_thread_ns_exit(void *unused) {
    (void)unused;
    lc_thread_ns_drop();
}

static void lc_thread_ns_after_fork(void) {
    lc_thread_ns_drop();
}

static void lc_thread_ns_init(void) {
    /* Without the key the fd is kept until the process exits: still one per thread. */
    lc_thread_ns_key_made = pthread_key_create(&lc_thread_ns_key, lc_thread_ns_exit) == 0;
    pthread_atfork(NULL, NULL, lc_thread_ns_after_fork);
}

/* The calling thread's fd, made on first use (and again after a fork, or when the program
   took its number): *is_pidfd tells which kind.  -1 with errno on failure. */
static inline int lc_thread_ns_fd(int *is_pidfd) {
    struct lc_thread_ns *t = &lc_thread_ns;
    struct stat st;
    int fd = -1;
    if (t->fd >= 0) {
        if (lc_same_file(t->fd, t->dev, t->ino)) {
            *is_pidfd = t->is_pidfd;
            return t->fd;
        }
        lc_thread_ns_drop();
    }
    pthread_once(&lc_thread_ns_once, lc_thread_ns_init);
    if (!__atomic_load_n(&lc_no_pidfd_ns, __ATOMIC_RELAXED)) {
    #ifdef SYS_pidfd_open
        fd = (int)syscall(SYS_pidfd_open, (pid_t)syscall(SYS_gettid), PIDFD_THREAD);
    #else
        errno = ENOSYS;
    #endif
        /* ENOSYS before Linux 5.3, EINVAL before 6.9 (no PIDFD_THREAD). */
        if (fd < 0 && (errno == ENOSYS || errno == EINVAL))
            __atomic_store_n(&lc_no_pidfd_ns, 1, __ATOMIC_RELAXED);
    }
    *is_pidfd = fd >= 0;
    if (fd < 0)
        fd = open("/proc/thread-self/ns", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    if (lc_fstat_or_close(fd, &st) == -1)
        return -1;
    t->fd = fd;
    t->is_pidfd = *is_pidfd;
    t->dev = st.st_dev;
    t->ino = st.st_ino;
    if (lc_thread_ns_key_made)
        pthread_setspecific(lc_thread_ns_key, t);
    return fd;
}

/* The fd the calling thread keeps, or -1 (none yet). */
static inline int lc_thread_ns_kept(void) {
    return lc_thread_ns.fd;
}

/* A new close-on-exec fd of the calling thread's namespace of type `kind` (one NEW* bit of
   lc_ns_request's), and its identity in *dev, *ino; -1 with errno on failure. */
static inline int lc_thread_ns_open(int kind, dev_t *dev, ino_t *ino) {
    const char *name;
    unsigned long request = lc_ns_request(kind, &name);
    struct stat st;
    int is_pidfd, base, fd = -1;
    if (name == NULL) {
        errno = EINVAL;
        return -1;
    }
    base = lc_thread_ns_fd(&is_pidfd);
    if (base >= 0 && is_pidfd) {
        fd = ioctl(base, request, 0);
        /* ENOTTY: a kernel before 6.11 (ioctls of pidfds); EINVAL: one without the type. */
        if (fd < 0 && (errno == ENOTTY || errno == EINVAL)) {
            __atomic_store_n(&lc_no_pidfd_ns, 1, __ATOMIC_RELAXED);
            lc_thread_ns_drop();
            base = lc_thread_ns_fd(&is_pidfd);
        }
    }
    if (fd < 0 && base >= 0 && !is_pidfd)
        fd = openat(base, name, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    if (lc_fstat_or_close(fd, &st) == -1)
        return -1;
    *dev = st.st_dev;
    *ino = st.st_ino;
    return fd;
}

/* setns(CLONE_NEWNS) sets the root and working directory to the namespace's root, on the way
   in and on the way back alike (fs/namespace.c, mntns_install): without more, a block would
   leave the program in "/", and a chrooted one outside its chroot.  So entered() keeps O_PATH
   fds of both across the block and returns to them once back in its mount namespace. */

/* A close-on-exec O_PATH fd of directory `path` and its identity; -1 with errno. */
static inline int lc_dir_open(const char *path, dev_t *dev, ino_t *ino) {
    struct stat st;
    int fd = open(path, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0 || lc_fstat_or_close(fd, &st) == -1)
        return -1;
    *dev = st.st_dev;
    *ino = st.st_ino;
    return fd;
}

/* Back to the root kept in fd `root`, then to the working directory kept in `cwd` (-1: leave
   that one as it is): 0, or the errno of the first step that failed, named in *step.  A failed
   root step does not skip the working directory's. */
static inline int lc_dir_return(int root, int cwd, const char **step) {
    int err = 0;
    *step = NULL;
    if (root >= 0) {
        if (fchdir(root) == -1) {
            err = errno;
            *step = "fchdir to the kept root";
        } else if (chroot(".") == -1) {
            err = errno;
            *step = "chroot to the kept root";
        }
    }
    if (cwd >= 0 && fchdir(cwd) == -1 && err == 0) {
        err = errno;
        *step = "fchdir to the kept working directory";
    }
    return err;
}

#endif

/* /init for a throwaway VM: runs each program named on the kernel command line after
   "--" (the kernel passes them as init's argv), prints its exit status, powers off. */
#define _GNU_SOURCE
#include <stdio.h>
#include <sys/reboot.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
    int i, status;
    pid_t pid;
    printf("qemu_init: pid %d\n", (int)getpid());
    fflush(stdout);
    for (i = 1; i < argc; i++) {
        pid = fork();
        if (pid == 0) {
            char *child_argv[] = {argv[i], NULL};
            execv(argv[i], child_argv);
            _exit(127);
        }
        if (pid < 0 || waitpid(pid, &status, 0) != pid)
            status = -1;
        printf("qemu_init: %s exit status %d\n", argv[i],
               WIFEXITED(status) ? WEXITSTATUS(status) : -1);
        fflush(stdout);
    }
    sync();
    reboot(RB_POWER_OFF);
    return 0;
}

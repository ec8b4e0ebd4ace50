/* linux_clone.h on its own, as a C user of the cimport API's header would include it:
   tests/test_cython.py compiles this with -Wall -Wextra -Werror. */
#include "linux_clone.h"

int main(void) {
    struct lc_clone_args args;
    memset(&args, 0, sizeof args);
    return sys_pidfd_open(getpid(), 0) < 0 && errno != ENOSYS;
}

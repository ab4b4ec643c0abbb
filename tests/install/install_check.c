/* install_check.c: a C user's smallest program, built against an installed libflashkda through
 * pkg-config by check_install.sh; it must start without LD_LIBRARY_PATH and call the library. */
#include <stdio.h>
#include <string.h>

#include <flashkda.h>

int main(void)
{
    const char *version = fkda_version();
    fkda_options options = fkda_default_options();
    if (!version || !*version) {
        fprintf(stderr, "install_check: fkda_version() returned nothing\n");
        return 1;
    }
    /* A call that must fail cleanly: the library is loaded and its validation runs. */
    size_t bytes = 0;
    fkda_status s = fkda_prefill_workspace_size(NULL, NULL, &bytes);
    if (s == FKDA_OK || strlen(fkda_last_error()) == 0) {
        fprintf(stderr, "install_check: a NULL call was not rejected with a message\n");
        return 1;
    }
    printf("libflashkda %s loaded (cuda: %d, default gate %d)\n", version, fkda_has_cuda(), (int)options.gate);
    return 0;
}

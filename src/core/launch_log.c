/* launch_log.c: the thread-local list of launched kernels (launch_log.h). */
#include "launch_log.h"

#include <stdio.h>
#include <string.h>

/* One list per thread, as the error message: concurrent calls on different threads (each on its
 * own stream) keep their own. */
static _Thread_local fkda_launch_entry entries[FKDA_LAUNCH_LOG_MAX];
static _Thread_local int noted;

void fkda_launch_log_clear(void) { noted = 0; }

void fkda_launch_log_note(const void *kernel, int cluster)
{
    if (noted < FKDA_LAUNCH_LOG_MAX) {
        entries[noted].kernel = kernel;
        entries[noted].cluster = cluster;
    }
    noted++;
}

const fkda_launch_entry *fkda_launch_log_entries(int *recorded, int *total)
{
    *recorded = noted < FKDA_LAUNCH_LOG_MAX ? noted : FKDA_LAUNCH_LOG_MAX;
    *total = noted;
    return entries;
}

void fkda_kernel_identifier(const char *runtime_name, char *out, size_t size)
{
    if (size == 0) return;
    const char *s = runtime_name;
    if (strncmp(s, "_Z", 2) == 0) {
        s += 2;
        if (*s == 'L') s++;
        size_t length = 0;
        const char *digits = s;
        while (*s >= '0' && *s <= '9' && length < 4096) length = 10 * length + (size_t)(*s++ - '0');
        if (s > digits && length > 0 && strlen(s) >= length) {
            snprintf(out, size, "%.*s", (int)length, s);
            return;
        }
    }
    snprintf(out, size, "%s", runtime_name);
}

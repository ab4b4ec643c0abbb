/* launch_report.c: fkda_last_kernels(), the names of the kernels the last run call launched. */
#include <stdio.h>

#include "../core/launch_log.h"
#include "../cuda/cuda_backend.h"
#include "flashkda.h"

/* Room for every entry's name (the longest kernel names are ~40 characters) and its cluster. */
static _Thread_local char report[FKDA_LAUNCH_LOG_MAX * 64 + 32];

const char *fkda_last_kernels(void)
{
    int recorded = 0, noted = 0;
    const fkda_launch_entry *e = fkda_launch_log_entries(&recorded, &noted);
    size_t used = 0;
    report[0] = '\0';
    for (int i = 0; i < recorded && used < sizeof report; i++) {
        char name[128], cluster[16] = "";
        fkda_cuda_kernel_name(e[i].kernel, name, sizeof name);
        if (e[i].cluster > 1) snprintf(cluster, sizeof cluster, "[%d]", e[i].cluster);
        const int n = snprintf(report + used, sizeof report - used, "%s%s%s", i ? " " : "", name, cluster);
        if (n < 0) break;
        used += (size_t)n;
    }
    if (noted > recorded && used < sizeof report)
        snprintf(report + used, sizeof report - used, " (+%d more)", noted - recorded);
    return report;
}

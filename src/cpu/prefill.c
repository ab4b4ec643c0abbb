/* prefill.c: the CPU prefill entry points; device.reference picks the algorithm. */
#include "cpu_backend.h"
#include "cpu_internal.h"

size_t fkda_cpu_prefill_workspace(const fkda_problem *p)
{
    return p->device.reference ? fkda_cpu_prefill_reference_workspace(p) : fkda_cpu_prefill_chunked_workspace(p);
}

fkda_status fkda_cpu_prefill(const fkda_problem *p, void *workspace, size_t workspace_bytes)
{
    return p->device.reference ? fkda_cpu_prefill_reference(p, workspace, workspace_bytes)
                               : fkda_cpu_prefill_chunked(p, workspace, workspace_bytes);
}

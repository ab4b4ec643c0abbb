/* prefill.c: the CPU prefill entry points; device.reference picks the algorithm. */
#include "cpu_backend.h"
#include "cpu_internal.h"
#include "prefill_states.h"

/* The workspace: the states' part (prefill_states.h) first, then the algorithm's. */
size_t fkda_cpu_prefill_workspace(const fkda_problem *p)
{
    return fkda_prefill_states_workspace(p) +
           (p->device.reference ? fkda_cpu_prefill_reference_workspace(p) : fkda_cpu_prefill_chunked_workspace(p));
}

fkda_status fkda_cpu_prefill(const fkda_problem *p, void *workspace, size_t workspace_bytes)
{
    const size_t states_bytes = fkda_prefill_states_workspace(p);
    fkda_problem staged;
    fkda_prefill_extras extras;
    fkda_prefill_states_prepare(p, workspace, &staged, &extras);
    char *rest = states_bytes ? (char *)workspace + states_bytes : (char *)workspace;
    const size_t rest_bytes = workspace_bytes - states_bytes; /* the dispatch checked the total */
    return p->device.reference ? fkda_cpu_prefill_reference(&staged, &extras, rest, rest_bytes)
                               : fkda_cpu_prefill_chunked(&staged, &extras, rest, rest_bytes);
}

/* dispatch.c: from a validated problem to the backend that runs it; see dispatch.h. */
#include "dispatch.h"

#include <stdint.h>

#include "../cpu/cpu_backend.h"
#include "../cuda/cuda_backend.h"
#include "../core/error.h"

#define FKDA_WORKSPACE_ALIGNMENT 256

fkda_status fkda_dispatch_workspace(const fkda_problem *p, size_t *bytes)
{
    if (p->device.type == FKDA_DEVICE_CPU) {
        switch (p->op) {
        case FKDA_OP_PREFILL: *bytes = fkda_cpu_prefill_workspace(p); break;
        case FKDA_OP_DECODE: *bytes = fkda_cpu_decode_workspace(p); break;
        case FKDA_OP_DECODE_LAYER: *bytes = fkda_cpu_decode_layer_workspace(p); break;
        }
        return FKDA_OK;
    }
    fkda_status s = FKDA_OK;
    switch (p->op) {
    case FKDA_OP_PREFILL: s = fkda_cuda_prefill_workspace(p, bytes); break;
    case FKDA_OP_DECODE: s = fkda_cuda_decode_workspace(p, bytes); break;
    case FKDA_OP_DECODE_LAYER: s = fkda_cuda_decode_layer_workspace(p, bytes); break;
    default: return fkda_fail(FKDA_ERROR_INTERNAL, "dispatch: unknown operation %d", (int)p->op);
    }
    /* A size for a device that does not answer falls back to defaults (the prefill's SM count),
     * and may note why on the way: a successful query leaves no message behind (the header's
     * promise), the run reports the device. */
    if (s == FKDA_OK) fkda_clear_error();
    return s;
}

fkda_status fkda_dispatch_run(const fkda_problem *p, void *workspace, size_t workspace_bytes)
{
    if (p->device.type == FKDA_DEVICE_CUDA) {
        fkda_status s = fkda_cuda_check(p);
        if (s != FKDA_OK) return s;
    }
    size_t needed = 0;
    fkda_status s = fkda_dispatch_workspace(p, &needed);
    if (s != FKDA_OK) return s;
    if (needed > 0) {
        if (workspace == NULL)
            return fkda_fail(FKDA_ERROR_WORKSPACE,
                             "workspace: is NULL, but this call needs %zu bytes "
                             "(ask fkda_*_workspace_size first)",
                             needed);
        if (workspace_bytes < needed)
            return fkda_fail(FKDA_ERROR_WORKSPACE, "workspace_bytes: %zu given, this call needs %zu", workspace_bytes,
                             needed);
        if ((uintptr_t)workspace % FKDA_WORKSPACE_ALIGNMENT != 0)
            return fkda_fail(FKDA_ERROR_WORKSPACE, "workspace: must be aligned to %d bytes", FKDA_WORKSPACE_ALIGNMENT);
    }
    const int cpu = p->device.type == FKDA_DEVICE_CPU;
    switch (p->op) {
    case FKDA_OP_PREFILL:
        return cpu ? fkda_cpu_prefill(p, workspace, workspace_bytes) : fkda_cuda_prefill(p, workspace, workspace_bytes);
    case FKDA_OP_DECODE:
        return cpu ? fkda_cpu_decode(p, workspace, workspace_bytes) : fkda_cuda_decode(p, workspace, workspace_bytes);
    case FKDA_OP_DECODE_LAYER:
        return cpu ? fkda_cpu_decode_layer(p, workspace, workspace_bytes)
                   : fkda_cuda_decode_layer(p, workspace, workspace_bytes);
    }
    return fkda_fail(FKDA_ERROR_INTERNAL, "dispatch: unknown operation %d", (int)p->op);
}

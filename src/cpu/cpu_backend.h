/*
 * cpu_backend.h: the CPU backend, as the API layer calls it.
 *
 * Every function takes a problem that validation has already checked (src/core/problem.h): the
 * backend checks nothing about the arguments again. Workspace is the caller's memory of at least
 * the size the matching *_workspace function returned, aligned to 64 bytes.
 *
 * Two algorithms per operation:
 *   reference  token by token in float64, one (sequence, head) at a time: the ground truth
 *   fast       prefill: the chunked form of docs/design.md in float32; decode: the recurrent form in
 *              float32; both threaded over (sequence, value head, value block)
 */
#ifndef FKDA_CPU_BACKEND_H
#define FKDA_CPU_BACKEND_H

#include <stddef.h>

#include "../core/problem.h"

size_t fkda_cpu_prefill_workspace(const fkda_problem *p);
fkda_status fkda_cpu_prefill(const fkda_problem *p, void *workspace, size_t workspace_bytes);

size_t fkda_cpu_decode_workspace(const fkda_problem *p);
fkda_status fkda_cpu_decode(const fkda_problem *p, void *workspace, size_t workspace_bytes);

/* The fused decode layer (op FKDA_OP_DECODE_LAYER): the conv into the workspace, the decode above
 * on its outputs, then the gated norm into out. */
size_t fkda_cpu_decode_layer_workspace(const fkda_problem *p);
fkda_status fkda_cpu_decode_layer(const fkda_problem *p, void *workspace, size_t workspace_bytes);

/* p->device.reference selects the reference algorithm inside the two entry points above. */

#endif /* FKDA_CPU_BACKEND_H */

/*
 * cuda_backend.h: the CUDA backend, as the API layer calls it.
 *
 * Built from the .cu files when nvcc is found; otherwise cuda_disabled.c provides the same
 * functions, each returning FKDA_ERROR_DEVICE ("built without CUDA").
 *
 * fkda_cuda_check runs after argument validation and before anything is launched: it checks
 * that the device exists and has the features the operation needs, that every tensor is memory
 * on that device, and that this combination of options is supported by the kernels (otherwise
 * FKDA_ERROR_UNSUPPORTED naming the option). The launches then only fail on CUDA errors.
 */
#ifndef FKDA_CUDA_BACKEND_H
#define FKDA_CUDA_BACKEND_H

#include <stddef.h>

#include "../core/problem.h"

#ifdef __cplusplus
extern "C" {
#endif

fkda_status fkda_cuda_check(const fkda_problem *p);

fkda_status fkda_cuda_prefill_workspace(const fkda_problem *p, size_t *bytes);
fkda_status fkda_cuda_prefill(const fkda_problem *p, void *workspace, size_t workspace_bytes);

fkda_status fkda_cuda_decode_workspace(const fkda_problem *p, size_t *bytes);
fkda_status fkda_cuda_decode(const fkda_problem *p, void *workspace, size_t workspace_bytes);

fkda_status fkda_cuda_decode_layer_workspace(const fkda_problem *p, size_t *bytes);
fkda_status fkda_cuda_decode_layer(const fkda_problem *p, void *workspace, size_t workspace_bytes);

/* The identifier of the kernel whose host stub is at `kernel` (launch_log.h's entries) into
 * name[size]: "?" where the runtime does not know it. */
void fkda_cuda_kernel_name(const void *kernel, char *name, size_t size);

#ifdef __cplusplus
}
#endif

#endif /* FKDA_CUDA_BACKEND_H */

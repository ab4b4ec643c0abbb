/*
 * cuda_disabled.c: the CUDA backend of a build without nvcc. Every entry point reports that
 * this library was built without CUDA, so a caller asking for the GPU gets a clear error.
 */
#include <stdio.h>

#include "../core/error.h"
#include "cuda_backend.h"

#define NO_CUDA                                                                                       \
    fkda_fail(FKDA_ERROR_DEVICE, "device: this libflashkda was built without CUDA (no nvcc at build " \
                                 "time); use the CPU device or rebuild with the CUDA toolkit")

fkda_status fkda_cuda_check(const fkda_problem *p) { return NO_CUDA; }
fkda_status fkda_cuda_prefill_workspace(const fkda_problem *p, size_t *bytes) { return NO_CUDA; }
fkda_status fkda_cuda_prefill(const fkda_problem *p, void *ws, size_t n) { return NO_CUDA; }
fkda_status fkda_cuda_decode_workspace(const fkda_problem *p, size_t *bytes) { return NO_CUDA; }
fkda_status fkda_cuda_decode(const fkda_problem *p, void *ws, size_t n) { return NO_CUDA; }
fkda_status fkda_cuda_decode_layer_workspace(const fkda_problem *p, size_t *bytes) { return NO_CUDA; }
fkda_status fkda_cuda_decode_layer(const fkda_problem *p, void *ws, size_t n) { return NO_CUDA; }

/* Nothing is launched without CUDA, so nothing asks; the answer matches the CUDA build's unknown. */
void fkda_cuda_kernel_name(const void *kernel, char *name, size_t size)
{
    if (size > 0) snprintf(name, size, "?");
}

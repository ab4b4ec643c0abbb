/*
 * cuda_internal.h: what the CUDA files share: error checking that turns a CUDA error into an
 * fkda status with a message, and the per-operation hooks fkda_cuda_check() calls.
 *
 * Each operation lives in its own files (decode_*.cu, prefill_*.cu) and provides three
 * functions: *_supported (option checks, FKDA_ERROR_UNSUPPORTED naming the option),
 * *_workspace and the run itself, declared in cuda_backend.h.
 */
#ifndef FKDA_CUDA_INTERNAL_H
#define FKDA_CUDA_INTERNAL_H

#include <cuda_runtime.h>

#include "../core/error.h"
#include "cuda_backend.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Option and shape checks specific to one operation's kernels, given the device's properties. */
fkda_status fkda_cuda_prefill_supported(const fkda_problem *p, const cudaDeviceProp *prop);
fkda_status fkda_cuda_decode_supported(const fkda_problem *p, const cudaDeviceProp *prop);
fkda_status fkda_cuda_decode_layer_supported(const fkda_problem *p, const cudaDeviceProp *prop);

/* Properties of device `index`, cached after the first query (thread-safe). NULL on failure,
 * with the error recorded. */
const cudaDeviceProp *fkda_cuda_device_properties(int index);

#ifdef __cplusplus
}
#endif

/* Returns FKDA_ERROR_DEVICE with the CUDA error text when `call` fails. */
#define FKDA_CUDA_TRY(call)                                                                                    \
    do {                                                                                                       \
        cudaError_t fkda_err_ = (call);                                                                        \
        if (fkda_err_ != cudaSuccess)                                                                          \
            return fkda_fail(FKDA_ERROR_DEVICE, "%s failed: %s (%s:%d)", #call, cudaGetErrorString(fkda_err_), \
                             __FILE__, __LINE__);                                                              \
    } while (0)

/* After a launch: a launch-configuration error is reported; an asynchronous fault is not
 * waited for (that would synchronise the stream). */
#define FKDA_CUDA_CHECK_LAUNCH(what)                                                                             \
    do {                                                                                                         \
        cudaError_t fkda_err_ = cudaGetLastError();                                                              \
        if (fkda_err_ != cudaSuccess)                                                                            \
            return fkda_fail(FKDA_ERROR_DEVICE, "launch of %s failed: %s", what, cudaGetErrorString(fkda_err_)); \
    } while (0)

#endif /* FKDA_CUDA_INTERNAL_H */

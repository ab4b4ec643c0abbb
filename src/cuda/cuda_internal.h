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
#include "../core/launch_log.h"
#include "cuda_backend.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Option and shape checks specific to one operation's kernels, given the device's properties. */
fkda_status fkda_cuda_prefill_supported(const fkda_problem *p, const cudaDeviceProp *prop);
fkda_status fkda_cuda_decode_supported(const fkda_problem *p, const cudaDeviceProp *prop);
fkda_status fkda_cuda_decode_layer_supported(const fkda_problem *p, const cudaDeviceProp *prop);

/* The devices the per-device caches below hold (device indices 0 .. FKDA_MAX_CUDA_DEVICES - 1). */
#define FKDA_MAX_CUDA_DEVICES 64

/* Properties of device `index`, cached after the first query (thread-safe). NULL on failure,
 * with the error recorded. */
const cudaDeviceProp *fkda_cuda_device_properties(int index);

/* How many clusters of C CTAs (2, 4 or 8) device `device` runs at once with every CTA alone on
 * its SM (cluster_room.cu), asked of the driver on the first call outside a graph capture of
 * `stream` and cached; 0 where not known (no clusters, or not asked yet). The driver answers for
 * the current device, so `device` must be current (the launches set it before they choose). */
int fkda_cuda_cluster_room(int device, int C, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

/* Every launch goes through one of these two: cudaLaunchKernel's and cudaLaunchKernelExC's result,
 * unchanged, with an accepted launch noted for fkda_last_kernels() (core/launch_log.h), its
 * cluster size read from the configuration's attributes. */
static inline cudaError_t fkda_launch_kernel(const void *kernel, dim3 grid, dim3 block, void **args, size_t smem,
                                             cudaStream_t stream)
{
    const cudaError_t err = cudaLaunchKernel(kernel, grid, block, args, smem, stream);
    if (err == cudaSuccess) fkda_launch_log_note(kernel, 1);
    return err;
}

static inline cudaError_t fkda_launch_kernel_ex(const cudaLaunchConfig_t *cfg, const void *kernel, void **args)
{
    const cudaError_t err = cudaLaunchKernelExC(cfg, kernel, args);
    if (err == cudaSuccess) {
        int cluster = 1;
        for (unsigned i = 0; i < cfg->numAttrs; i++)
            if (cfg->attrs[i].id == cudaLaunchAttributeClusterDimension) cluster = (int)cfg->attrs[i].val.clusterDim.x;
        fkda_launch_log_note(kernel, cluster);
    }
    return err;
}

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

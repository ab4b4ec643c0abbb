/*
 * decode_launch.cu: placeholder for the CUDA decode until its kernels land: every call reports
 * FKDA_ERROR_UNSUPPORTED, so no caller ever gets a wrong answer from the GPU.
 */
#include "cuda_internal.h"

extern "C" fkda_status fkda_cuda_decode_supported(const fkda_problem *p, const cudaDeviceProp *prop)
{
    return fkda_fail(FKDA_ERROR_UNSUPPORTED, "device: the CUDA decode is not implemented yet; use the CPU device");
}

extern "C" fkda_status fkda_cuda_decode_workspace(const fkda_problem *p, size_t *bytes)
{
    *bytes = 0;
    return FKDA_OK;
}

extern "C" fkda_status fkda_cuda_decode(const fkda_problem *p, void *workspace, size_t workspace_bytes)
{
    return fkda_cuda_decode_supported(p, NULL);
}

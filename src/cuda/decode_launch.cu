/*
 * decode_launch.cu: the CUDA decode as the backend interface sees it: what it supports, its
 * workspace (none), and the run, which turns the validated problem into the kernel's flat
 * parameters (decode_recurrent.h) and launches decode_recurrent.cu on the caller's stream.
 *
 * Nothing here synchronises or allocates, so a call can be captured into a CUDA graph.
 */
#include <string.h>

#include "cuda_internal.h"
#include "decode_recurrent.h"

extern "C" fkda_status fkda_cuda_decode_supported(const fkda_problem *p, const cudaDeviceProp *prop)
{
    /* The library carries sm_80 and sm_90a machine code: it runs on compute capability 8.x and 9.0. */
    if (prop != NULL && !(prop->major == 8 || (prop->major == 9 && prop->minor == 0)))
        return fkda_fail(FKDA_ERROR_UNSUPPORTED,
                         "device: %s has compute capability %d.%d; the CUDA decode is built for 8.x and 9.0",
                         prop->name, prop->major, prop->minor);
    if (p->K < 1 || p->K > 256)
        return fkda_fail(FKDA_ERROR_UNSUPPORTED, "q: K = %lld; the CUDA decode supports key head dims 1 to 256",
                         (long long)p->K);
    if (p->V < 1 || p->V > 256)
        return fkda_fail(FKDA_ERROR_UNSUPPORTED, "v: V = %lld; the CUDA decode supports value head dims 1 to 256",
                         (long long)p->V);
    if (p->state_in.dtype != FKDA_DTYPE_F32 && p->state_in.dtype != FKDA_DTYPE_BF16)
        return fkda_fail(FKDA_ERROR_UNSUPPORTED, "state_pool: the CUDA decode supports float32 and bfloat16 pools");
    if (p->state_in.dtype != p->state_out.dtype)
        return fkda_fail(FKDA_ERROR_UNSUPPORTED, "state_pool: states in and out must share one dtype");
    return FKDA_OK;
}

extern "C" fkda_status fkda_cuda_decode_workspace(const fkda_problem *p, size_t *bytes)
{
    *bytes = 0;
    return FKDA_OK;
}

static void copy_strides(int64_t *dst, const fkda_operand *op, int n)
{
    for (int i = 0; i < n; i++) dst[i] = op->stride[i];
}

extern "C" fkda_status fkda_cuda_decode(const fkda_problem *p, void *workspace, size_t workspace_bytes)
{
    fkda_decode_params k;
    memset(&k, 0, sizeof k);
    k.q = p->q.data; k.k = p->k.data; k.v = p->v.data; k.g = p->g.data; k.beta = p->beta.data;
    k.out = p->out.data;
    copy_strides(k.q_stride, &p->q, 4);
    copy_strides(k.k_stride, &p->k, 4);
    copy_strides(k.v_stride, &p->v, 4);
    copy_strides(k.g_stride, &p->g, 4);
    copy_strides(k.out_stride, &p->out, 4);
    copy_strides(k.beta_stride, &p->beta, 3);
    k.q_dtype = p->q.dtype; k.k_dtype = p->k.dtype; k.v_dtype = p->v.dtype; k.g_dtype = p->g.dtype;
    k.beta_dtype = p->beta.dtype; k.out_dtype = p->out.dtype;

    k.A_log = p->A_log.data;
    k.A_log_stride = p->A_log.stride[0];
    k.A_log_dtype = p->A_log.dtype;
    k.dt_bias = p->dt_bias.data;
    copy_strides(k.dt_bias_stride, &p->dt_bias, 2);
    k.dt_bias_dtype = p->dt_bias.dtype;

    k.cu_seqlens = p->cu_seqlens.data;
    k.cu_stride = p->cu_seqlens.stride[0];
    k.cu_dtype = p->cu_seqlens.dtype;
    k.state_indices = p->state_indices.data;
    copy_strides(k.idx_stride, &p->state_indices, 2);
    k.idx_dtype = p->state_indices.dtype;
    k.idx_2d = p->state_indices.data != NULL && p->indices_per_token;
    k.idx_tokens = p->indices_per_token ? p->indices_tokens : 1;
    if (!k.idx_2d) k.idx_stride[1] = 0;
    k.num_accepted = k.idx_2d ? p->num_accepted_tokens.data : NULL;
    k.acc_stride = p->num_accepted_tokens.stride[0];
    k.acc_dtype = p->num_accepted_tokens.dtype;

    k.state_in = p->state_in.data;
    k.state_out = p->state_out.data;
    copy_strides(k.state_in_stride, &p->state_in, 4);
    copy_strides(k.state_out_stride, &p->state_out, 4);
    k.pool_size = p->pool_size;
    k.state_bf16 = p->state_in.dtype == FKDA_DTYPE_BF16;

    k.T = p->T; k.N = p->N; k.HV = p->HV; k.group = p->group;
    k.K = (int32_t)p->K; k.V = (int32_t)p->V;
    k.scale = p->scale;
    k.lower_bound = p->lower_bound;
    k.gate = p->gate;
    k.use_qk_l2norm = p->use_qk_l2norm;
    k.use_beta_sigmoid = p->use_beta_sigmoid;
    k.allow_neg_eigval = p->allow_neg_eigval;
    k.state_v_first = p->state_v_first;

    const cudaDeviceProp *prop = fkda_cuda_device_properties(p->device.index);
    if (!prop) return FKDA_ERROR_DEVICE;

    /* Launch on the call's device, and leave the caller's current device as it was. */
    int current = -1;
    FKDA_CUDA_TRY(cudaGetDevice(&current));
    if (current != p->device.index) FKDA_CUDA_TRY(cudaSetDevice(p->device.index));
    fkda_status s = fkda_decode_recurrent_launch(&k, prop->multiProcessorCount, prop->major, prop->l2CacheSize,
                                                 (cudaStream_t)p->device.stream);
    if (current != p->device.index) FKDA_CUDA_TRY(cudaSetDevice(current));
    return s;
}

/*
 * decode_launch.cu: the CUDA decode as the backend interface sees it: what it supports, its
 * workspace (none), and the run, which turns the validated problem into the kernels' flat
 * parameters (decode_params.h), asks decode_select.c for the variant and geometry, and launches
 * it (decode_tiles.cu, decode_packed.cu) on the caller's stream. What the kernels assume of a
 * call is checked with the rest of what the decode supports, before anything is launched.
 *
 * Nothing here synchronises or allocates, so a call can be captured into a CUDA graph.
 */
#include <stdint.h>
#include <string.h>

#include "../core/tuning.h"
#include "cuda_internal.h"
#include "decode_params.h"
#include "decode_select.h"

/* The offsets the kernels compute in 32 bits, checked before anything is launched (the fused
 * decode layer runs its conv before the decode, and must not fail between the two). */
static fkda_status kernel_offsets_fit(const fkda_problem *p)
{
    /* Offsets inside one head's state. */
    const int64_t *si = p->state_in.stride, *so = p->state_out.stride;
    const int64_t span_in = (p->K - 1) * si[2] + (p->V - 1) * si[3], span_out = (p->K - 1) * so[2] + (p->V - 1) * so[3];
    if (span_in >= 0x7fffffff || span_out >= 0x7fffffff)
        return fkda_fail(FKDA_ERROR_UNSUPPORTED,
                         "state_pool: the strides of one head's [K, V] state span %lld elements; the CUDA decode "
                         "needs fewer than 2^31",
                         (long long)(span_in > span_out ? span_in : span_out));
    /* Per-element offsets along a token vector (load_elem); a vector of one element (K or V = 1)
     * never multiplies its stride by anything but 0, and the API allows it any stride. */
    const struct {
        const char *name;
        int64_t stride, size;
    } vectors_along[] = {
        {"q", p->q.stride[3], p->K},     {"k", p->k.stride[3], p->K},
        {"g", p->g.stride[3], p->K},     {"v", p->v.stride[3], p->V},
        {"out", p->out.stride[3], p->V}, {"dt_bias", p->dt_bias.data ? p->dt_bias.stride[1] : 0, p->K}};
    for (size_t i = 0; i < sizeof vectors_along / sizeof vectors_along[0]; i++)
        if (vectors_along[i].size > 1 &&
            (vectors_along[i].stride >= (1 << 22) || vectors_along[i].stride <= -(1 << 22)))
            return fkda_fail(FKDA_ERROR_UNSUPPORTED,
                             "%s: the stride of its last dimension (%lld elements) is too large for the CUDA decode "
                             "(at most 2^22)",
                             vectors_along[i].name, (long long)vectors_along[i].stride);
    /* split_head divides in 32 bits. */
    if (p->N * p->HV > 0x7fffffff)
        return fkda_fail(FKDA_ERROR_UNSUPPORTED, "q: N * HV = %lld heads is too many for one launch",
                         (long long)(p->N * p->HV));
    return FKDA_OK;
}

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
    return kernel_offsets_fit(p);
}

extern "C" fkda_status fkda_cuda_decode_workspace(const fkda_problem *p, size_t *bytes)
{
    *bytes = 0;
    return FKDA_OK;
}

/* ---- the launch ---------------------------------------------------------------------------- */

/* Launches `kernel` on the stream; with `pdl`, as a programmatic dependent of the kernel before
 * it: the launch overlaps that kernel's tail (less time per call at small batches), and
 * wait_for_prior_grid (decode_common.cuh) keeps the order of memory. */
static cudaError_t launch_decode_kernel(const void *kernel, dim3 grid, unsigned threads, cudaStream_t stream,
                                        const fkda_decode_params *p, int pdl)
{
    cudaLaunchConfig_t cfg = {}; /* value-initialised: every field not set below is zero */
    cfg.gridDim = grid;
    cfg.blockDim = dim3(threads, 1, 1);
    cfg.dynamicSmemBytes = 0;
    cfg.stream = stream;
    cudaLaunchAttribute attr = {};
    attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr.val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = &attr;
    cfg.numAttrs = pdl ? 1 : 0;
    void *args[] = {(void *)p};
    return fkda_launch_kernel_ex(&cfg, kernel, args);
}

/* Whether the pool allows 16-byte vectors of `vec` elements along its contiguous dimension. */
static int pool_vectorizable(const void *data, const int64_t *stride, int v_first, int K, int V, int elem, int vec)
{
    const int contiguous = v_first ? 2 : 3, other = v_first ? 3 : 2;
    const int extent = v_first ? K : V;
    return (uintptr_t)data % 16 == 0 && stride[contiguous] == 1 && stride[other] % vec == 0 && stride[0] % vec == 0 &&
           stride[1] % vec == 0 && extent % vec == 0 && elem * vec == 16;
}

/* Whether sum_i (extent_i - 1) * |stride_i| < 2^31: then every offset of the tensor, and every
 * partial sum on the way to it, fits in a signed 32-bit integer. */
static int offsets_fit_31_bits(const int64_t *extent, const int64_t *stride, int ndim)
{
    const int64_t limit = INT64_C(0x7fffffff);
    int64_t span = 0;
    for (int i = 0; i < ndim; i++) {
        if (extent[i] <= 1) continue; /* index 0 only: whatever the stride, the term is 0 */
        const int64_t a = stride[i] < 0 ? -stride[i] : stride[i];
        if (a > limit || (a > 0 && extent[i] - 1 > (limit - span) / a)) return 0;
        span += (extent[i] - 1) * a;
    }
    return span < limit;
}

/* The precondition of the kernels compiled for all-bf16 tokens (token_offset): every
 * (row, position, head) offset of q, k, v, g, beta and out, and the head offsets of dt_bias and
 * A_log, in 31 bits. (The element offsets along a vector are checked separately, for every
 * kernel.) */
static int tokens_fit_31_bits(const fkda_decode_params *p)
{
    const int64_t rows = p->cu_seqlens ? 1 : p->N, hq = p->HV / p->group;
    const int64_t qk[3] = {rows, p->T, hq}, vg[3] = {rows, p->T, p->HV}, heads[1] = {p->HV};
    return offsets_fit_31_bits(qk, p->q_stride, 3) && offsets_fit_31_bits(qk, p->k_stride, 3) &&
           offsets_fit_31_bits(vg, p->v_stride, 3) && offsets_fit_31_bits(vg, p->g_stride, 3) &&
           offsets_fit_31_bits(vg, p->out_stride, 3) && offsets_fit_31_bits(vg, p->beta_stride, 3) &&
           (!p->dt_bias || offsets_fit_31_bits(heads, p->dt_bias_stride, 1)) &&
           (!p->A_log || offsets_fit_31_bits(heads, &p->A_log_stride, 1));
}

/* Describes the call to fkda_decode_select (decode_select.c), fills the geometry of *p and
 * launches the chosen kernel on the stream (asynchronously, nothing allocated). What the kernels
 * assume of the call was checked by fkda_cuda_decode_supported. */
static fkda_status launch_decode(fkda_decode_params *p, int sm_count, int cc_major, int64_t l2_bytes,
                                 cudaStream_t stream)
{
    if (p->N == 0 || p->T == 0) return FKDA_OK;
    const int elem = p->state_bf16 ? 2 : 4, vec = 16 / elem;
    const int vectors = pool_vectorizable(p->state_in, p->state_in_stride, p->state_v_first, p->K, p->V, elem, vec) &&
                        pool_vectorizable(p->state_out, p->state_out_stride, p->state_v_first, p->K, p->V, elem, vec);
    const int64_t *si = p->state_in_stride, *so = p->state_out_stride;
    /* Dense 128: K = V = 128 and, in and out, the rows of one head's state 128 elements apart. */
    const int row_stride = p->state_v_first ? 3 : 2;
    const int dense128 = vectors && p->K == 128 && p->V == 128 && si[row_stride] == 128 && so[row_stride] == 128;
    const int64_t heads = p->N * p->HV; /* < 2^31: fkda_cuda_decode_supported */

    fkda_decode_call call;
    memset(&call, 0, sizeof call);
    call.heads = heads;
    call.K = p->K;
    call.V = p->V;
    call.state_bf16 = p->state_bf16 != 0;
    call.v_first = p->state_v_first != 0;
    call.vectorizable = vectors;
    call.dense128 = dense128;
    call.T = p->T;
    call.sequences = p->N;
    call.cu_seqlens = p->cu_seqlens != NULL;
    call.idx_2d = p->idx_2d != 0;
    const int b16 = FKDA_DTYPE_BF16;
    call.tokens_bf16 = p->q_dtype == b16 && p->k_dtype == b16 && p->v_dtype == b16 && p->g_dtype == b16 &&
                       p->beta_dtype == b16 && p->out_dtype == b16;
    /* Checked only where a kernel compiled for bf16 tokens could serve the call. */
    call.tokens_fit_31_bits = call.tokens_bf16 && ((p->T == 1 && !p->idx_2d) || p->cu_seqlens) && tokens_fit_31_bits(p);
    call.sm_count = sm_count;
    call.cc_major = cc_major;
    call.l2_bytes = l2_bytes;

    /* The tuning knobs are read on every call: the benchmark and the tests change them between
     * calls (src/core/tuning.h). */
    fkda_tuning tuning;
    fkda_tuning_read(&tuning);
    fkda_decode_choice choice;
    const fkda_decode_select_status status = fkda_decode_select(&call, &tuning, &choice);
    if (status == FKDA_DECODE_SELECT_K_TOO_LARGE)
        return fkda_fail(FKDA_ERROR_INTERNAL, "decode: K = %d needs more than 32 lanes per column", p->K);
    if (status != FKDA_DECODE_SELECT_OK)
        return fkda_fail(FKDA_ERROR_INTERNAL, "decode: no kernel variant for this pool");
    const fkda_decode_variant *v = &fkda_decode_variant_table[choice.variant];
    const void *kernel = v->family == FKDA_DECODE_FAMILY_PACKED
                             ? fkda_decode_packed_kernel(choice.variant - DECODE_TILE_VARIANT_COUNT)
                             : fkda_decode_tile_kernel(choice.variant);
    p->lanes_k = choice.lanes_k;
    p->warps_per_head = choice.warps_per_head;
    p->warps_per_cta = choice.warps_per_cta;
    p->ctas_per_head = choice.ctas_per_head;
    const cudaError_t err = launch_decode_kernel(kernel, dim3((unsigned)heads, (unsigned)p->ctas_per_head, 1),
                                                 32 * p->warps_per_cta, stream, p, choice.pdl);
    if (err != cudaSuccess) {
        (void)cudaGetLastError(); /* leave no sticky error for a later, unrelated check */
        return fkda_fail(FKDA_ERROR_DEVICE, "decode: launch of %s: %s", v->name, cudaGetErrorString(err));
    }
    return FKDA_OK;
}

static void copy_strides(int64_t *dst, const fkda_operand *op, int n)
{
    for (int i = 0; i < n; i++) dst[i] = op->stride[i];
}

/* Every field of the kernels' parameters that comes from the problem (all but the geometry,
 * which fkda_decode_select chooses). The single-kernel layer fills its decode part here too. */
extern "C" void fkda_cuda_decode_params_of(const fkda_problem *p, fkda_decode_params *k)
{
    memset(k, 0, sizeof *k);
    k->q = p->q.data;
    k->k = p->k.data;
    k->v = p->v.data;
    k->g = p->g.data;
    k->beta = p->beta.data;
    k->out = p->out.data;
    copy_strides(k->q_stride, &p->q, 4);
    copy_strides(k->k_stride, &p->k, 4);
    copy_strides(k->v_stride, &p->v, 4);
    copy_strides(k->g_stride, &p->g, 4);
    copy_strides(k->out_stride, &p->out, 4);
    copy_strides(k->beta_stride, &p->beta, 3);
    k->q_dtype = p->q.dtype;
    k->k_dtype = p->k.dtype;
    k->v_dtype = p->v.dtype;
    k->g_dtype = p->g.dtype;
    k->beta_dtype = p->beta.dtype;
    k->out_dtype = p->out.dtype;

    k->A_log = p->A_log.data;
    k->A_log_stride = p->A_log.stride[0];
    k->A_log_dtype = p->A_log.dtype;
    k->dt_bias = p->dt_bias.data;
    copy_strides(k->dt_bias_stride, &p->dt_bias, 2);
    k->dt_bias_dtype = p->dt_bias.dtype;

    k->cu_seqlens = p->cu_seqlens.data;
    k->cu_stride = p->cu_seqlens.stride[0];
    k->cu_dtype = p->cu_seqlens.dtype;
    k->state_indices = p->state_indices.data;
    copy_strides(k->idx_stride, &p->state_indices, 2);
    k->idx_dtype = p->state_indices.dtype;
    k->idx_2d = p->state_indices.data != NULL && p->indices_per_token;
    k->idx_tokens = p->indices_per_token ? p->indices_tokens : 1;
    if (!k->idx_2d) k->idx_stride[1] = 0;
    k->num_accepted = k->idx_2d ? p->num_accepted_tokens.data : NULL;
    k->acc_stride = p->num_accepted_tokens.stride[0];
    k->acc_dtype = p->num_accepted_tokens.dtype;

    k->state_in = p->state_in.data;
    k->state_out = p->state_out.data;
    copy_strides(k->state_in_stride, &p->state_in, 4);
    copy_strides(k->state_out_stride, &p->state_out, 4);
    k->pool_size = p->pool_size;
    k->state_bf16 = p->state_in.dtype == FKDA_DTYPE_BF16;

    k->T = p->T;
    k->N = p->N;
    k->HV = p->HV;
    k->group = p->group;
    k->K = (int32_t)p->K;
    k->V = (int32_t)p->V;
    k->scale = p->scale;
    k->lower_bound = p->lower_bound;
    k->gate = p->gate;
    k->use_qk_l2norm = p->use_qk_l2norm;
    k->use_beta_sigmoid = p->use_beta_sigmoid;
    k->allow_neg_eigval = p->allow_neg_eigval;
    k->state_v_first = p->state_v_first;
}

extern "C" fkda_status fkda_cuda_decode(const fkda_problem *p, void *workspace, size_t workspace_bytes)
{
    fkda_decode_params k;
    fkda_cuda_decode_params_of(p, &k);

    const cudaDeviceProp *prop = fkda_cuda_device_properties(p->device.index);
    if (!prop) return FKDA_ERROR_DEVICE;

    /* Launch on the call's device, and leave the caller's current device as it was. */
    int current = -1;
    FKDA_CUDA_TRY(cudaGetDevice(&current));
    if (current != p->device.index) FKDA_CUDA_TRY(cudaSetDevice(p->device.index));
    fkda_status s = launch_decode(&k, prop->multiProcessorCount, prop->major, prop->l2CacheSize,
                                  (cudaStream_t)p->device.stream);
    if (current != p->device.index) FKDA_CUDA_TRY(cudaSetDevice(current));
    return s;
}

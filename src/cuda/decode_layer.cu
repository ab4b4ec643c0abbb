/*
 * decode_layer.cu: the CUDA fused decode layer (fkda_decode_layer; the spec is the comment above
 * fkda_decode_layer_args in flashkda.h). The common decode step (one token per sequence, 1-D
 * indices, K = V = 128, HV = H, on sm_90) runs as one kernel (decode_layer_fused.cu, chosen by
 * decode_layer_select.c); every other call, and any call with FKDA_DECODE_LAYER_FUSED=0, in
 * three launches on the caller's stream, the passes of the CPU version (src/cpu/decode_layer.c):
 *
 *   1. conv_kernel   every sequence's channels through the causal conv with SiLU into y (float32
 *                    [B, T, dim] in the workspace); the window is read from the sequence's conv
 *                    slot and the new window written back to it
 *   2. the decode    fkda_cuda_decode (decode_launch.cu) on q, k, v = views of y, its output o
 *                    going to a float32 [B, T, HV, V] buffer in the workspace, so that the norm
 *                    sees o unrounded; a skipped sequence gets o = 0 there
 *   3. norm_kernel   out = o / sqrt(mean(o^2) + eps) * norm_weight * sigmoid(output_gate), one warp
 *                    per (value head, sequence), over its tokens
 *
 * Nothing is allocated and nothing read back to the host, so a call can be captured into a CUDA
 * graph. On sm_90 the conv and the norm are programmatic dependent launches, like the decode: a
 * kernel starts while the one before it finishes and waits (griddepcontrol.wait) before its
 * first memory access.
 *
 * The indices stay in device memory and are never trusted. A sequence runs exactly when the
 * decode runs it (its read slot inside [0, P), accepted counts clamped into [1, T_max]); a
 * running sequence whose conv slot is outside [0, P_conv) convolves from a zero window and
 * writes no conv state; an accepted count whose window would pass the conv state's L rows is
 * clamped to the last window inside them. Every offset is 64-bit.
 */
#include <stdint.h>
#include <string.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "../core/layer_problem.h"
#include "../core/tuning.h"
#include "cuda_internal.h"
#include "decode_layer_fused.h"
#include "decode_layer_select.h"
#include "ptx_mma.cuh"

#define LAYER_MAX_WIDTH 16              /* the largest conv width W the API accepts */
#define CONV_THREADS 128                /* channels per conv CTA */
#define CONV_VEC FKDA_CONV_VEC_CHANNELS /* channels per thread of conv_kernel_w4_vec */
#define NORM_WARPS 8                    /* value heads per norm CTA, one warp each */
#define NORM_PER_LANE 8                 /* V <= 256 = 32 lanes x 8 values */
#define WORKSPACE_ALIGN 256             /* each buffer of the workspace starts on this boundary */
#define MAX_GRID_Y 65535

/* ---- the kernels' parameters (plain structs passed by value) -------------------------------- */

/* Where a sequence's slots come from: the decode's rules (state_indices of fkda_decode_args). */
typedef struct layer_slots {
    const void *idx; /* NULL: sequence n uses slot n */
    int64_t idx_stride[2];
    int32_t idx_dtype;
    int32_t idx_2d;       /* [B, T_max] */
    int64_t idx_tokens;   /* T_max (1 for 1-D indices) */
    const void *accepted; /* num_accepted_tokens, NULL: 1 */
    int64_t acc_stride;
    int32_t acc_dtype;
    int64_t pool_size; /* P of the recurrent pool */
} layer_slots;

typedef struct conv_params {
    const void *x; /* mixed_qkv [B, T, dim] */
    int64_t x_stride[3];
    int32_t x_dtype;
    const void *weight; /* [dim, W] */
    int64_t w_stride[2];
    int32_t w_dtype;
    const void *bias; /* [dim], NULL: 0 */
    int64_t bias_stride;
    int32_t bias_dtype;
    void *state; /* conv_state [P_conv, L, dim] */
    int64_t state_stride[3];
    int32_t state_dtype;
    int64_t conv_slots, conv_rows; /* P_conv, L */
    layer_slots slots;
    float *y; /* [B, T, dim], contiguous */
    int64_t B, T, dim;
    int32_t W;
    int32_t sliding; /* num_accepted_tokens given: the window slides over W - 2 + T rows */
} conv_params;

typedef struct norm_params {
    const float *o;   /* [B, T, HV, V], contiguous */
    const void *gate; /* output_gate [B, T, HV, V] */
    int64_t gate_stride[4];
    int32_t gate_dtype;
    const void *weight; /* norm_weight [V] */
    int64_t weight_stride;
    int32_t weight_dtype;
    void *out; /* [B, T, HV, V] */
    int64_t out_stride[4];
    int32_t out_dtype;
    int64_t B, T, HV;
    int32_t V;
    float eps;
} norm_params;

/* ---- element access in the run-time dtypes (float32, float16, bfloat16; 64-bit offsets) ------ */

static __device__ __forceinline__ float load_float(const void *data, int32_t dtype, int64_t i)
{
    if (dtype == FKDA_DTYPE_BF16) return __bfloat162float(((const __nv_bfloat16 *)data)[i]);
    if (dtype == FKDA_DTYPE_F16) return __half2float(((const __half *)data)[i]);
    return ((const float *)data)[i];
}

/* Rounds to nearest even, as the CPU backend stores (load.h). */
static __device__ __forceinline__ void store_float(void *data, int32_t dtype, int64_t i, float x)
{
    if (dtype == FKDA_DTYPE_BF16)
        ((__nv_bfloat16 *)data)[i] = __float2bfloat16_rn(x);
    else if (dtype == FKDA_DTYPE_F16)
        ((__half *)data)[i] = __float2half_rn(x);
    else
        ((float *)data)[i] = x;
}

static __device__ __forceinline__ int64_t load_index(const void *data, int32_t dtype, int64_t i)
{
    return dtype == FKDA_DTYPE_I64 ? ((const int64_t *)data)[i] : (int64_t)((const int32_t *)data)[i];
}

/* See decode_common.cuh: wait for the kernel before on the stream (a programmatic dependent
 * launch may start before it ends), then let the next one launch. Both return at once when the
 * launch was an ordinary one. */
static __device__ __forceinline__ void wait_for_prior_grid(void)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

/* ---- slots: the decode's rules, read the same way ------------------------------------------- */

/* a_n, the accepted tokens of sequence n, clamped into [1, T_max] (1 without the counts). */
static __device__ int64_t accepted_tokens(const layer_slots *s, int64_t n)
{
    if (!s->idx || !s->idx_2d || !s->accepted) return 1;
    const int64_t a = load_index(s->accepted, s->acc_dtype, n * s->acc_stride);
    return min(max(a, (int64_t)1), s->idx_tokens);
}

/* Whether the decode runs sequence n: its read slot (idx[n], or idx[n, a_n - 1]) inside [0, P). */
static __device__ int sequence_runs(const layer_slots *s, int64_t n)
{
    if (!s->idx) return n < s->pool_size;
    const int64_t col = s->idx_2d ? accepted_tokens(s, n) - 1 : 0;
    const int64_t slot = load_index(s->idx, s->idx_dtype, n * s->idx_stride[0] + col * s->idx_stride[1]);
    return slot >= 0 && slot < s->pool_size;
}

/* The conv slot of sequence n: n, idx[n], or idx[n, 0]. */
static __device__ int64_t conv_slot(const layer_slots *s, int64_t n)
{
    return s->idx ? load_index(s->idx, s->idx_dtype, n * s->idx_stride[0]) : n;
}

/* ---- 1. the conv ----------------------------------------------------------------------------- */

/* A thread's CH consecutive channels of one row (CH = 1: any dtype and stride; CH = 8: a 16-bit
 * dtype, channels contiguous, the 8 values one aligned 16-byte piece, which launch_conv checks). */
static __device__ __forceinline__ void load_channels(float *v, const void *data, int32_t dtype, int64_t i, const int CH)
{
    if (CH == 1) {
        v[0] = load_float(data, dtype, i);
        return;
    }
    const uint4 u = *(const uint4 *)((const uint16_t *)data + i);
    const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int k = 0; k < 4; k++) {
        float2 f;
        if (dtype == FKDA_DTYPE_BF16)
            f = make_float2(__uint_as_float(w[k] << 16), __uint_as_float(w[k] & 0xffff0000u));
        else
            f = __half22float2(*(const __half2 *)&w[k]);
        v[2 * k] = f.x;
        v[2 * k + 1] = f.y;
    }
}

/* Rounds to nearest even, as store_float. */
static __device__ __forceinline__ void store_channels(void *data, int32_t dtype, int64_t i, const float *v,
                                                      const int CH)
{
    if (CH == 1) {
        store_float(data, dtype, i, v[0]);
        return;
    }
    uint32_t w[4];
#pragma unroll
    for (int k = 0; k < 4; k++)
        w[k] = dtype == FKDA_DTYPE_BF16 ? pack_bf16x2(v[2 * k], v[2 * k + 1]) : pack_f16x2(v[2 * k], v[2 * k + 1]);
    *(uint4 *)((uint16_t *)data + i) = make_uint4(w[0], w[1], w[2], w[3]);
}

/* y's CH channels of one token (y is float32 and contiguous: 8 channels are two 16-byte pieces). */
static __device__ __forceinline__ void store_y(float *y, const float *v, const int CH)
{
    if (CH == 1) {
        y[0] = v[0];
        return;
    }
    ((float4 *)y)[0] = make_float4(v[0], v[1], v[2], v[3]);
    ((float4 *)y)[1] = make_float4(v[4], v[5], v[6], v[7]);
}

/* Token t's input of the CH channels: the first token's already in x0 (read before the slot). */
static __device__ __forceinline__ void conv_input(float *xt, const conv_params *p, const float *x0, int64_t x_base,
                                                  int64_t t, const int CH)
{
    if (t == 0) {
#pragma unroll
        for (int k = 0; k < CH; k++) xt[k] = x0[k];
    } else {
        load_channels(xt, p->x, p->x_dtype, x_base + t * p->x_stride[1], CH);
    }
}

/*
 * One thread per (sequence n, channel c), or per CH = CONV_VEC consecutive channels, each
 * channel's arithmetic the same and in the same order (the arrays have CONV_VEC entries per tap;
 * with CH = 1 only the first is ever touched). With the window w_0 .. w_{W-2} (conv state rows
 * first .. first + W - 2) and the tokens' inputs x_0 .. x_{T-1}, the sequence
 * s = (w_0, .., w_{W-2}, x_0, .., x_{T-1}) gives
 *
 *     y_t = silu(bias + sum_{j < W} weight[j] * s[t + j])      silu(a) = a / (1 + e^-a)
 *
 * and the new conv state is a suffix of s written from row 0:
 *     sliding (num_accepted_tokens)  s[1 ..]: rows 1..W-2 of the window, then all T inputs
 *     otherwise                      the last W - 1 of s
 *
 * The last W - 1 values of s live in registers `hist`, right-aligned in an array of
 * LAYER_MAX_WIDTH - 1 so that every index is a compile-time constant after unrolling (hist[i]
 * holds window entry i - (LAYER_MAX_WIDTH - W)); the weights likewise in `wt`, whose last entry
 * meets the newest input. The whole window is read before the state is written, so the update
 * in place is safe (the thread owns its channels of the slot). The first token's input is read
 * before the slot: it does not depend on it, so its load is not one more round trip after the
 * window's.
 */
static __device__ __forceinline__ void conv_channels(const conv_params *p, const int M, const int CH)
{
    wait_for_prior_grid();
    const int64_t c = ((int64_t)blockIdx.x * CONV_THREADS + threadIdx.x) * CH;
    if (c >= p->dim) return;
    /* The arrays keep LAYER_MAX_WIDTH entries so that the indices match for every M; only the
     * last M are touched (low is a constant after inlining, the rest are never allocated). */
    const int MAXW = LAYER_MAX_WIDTH, low = MAXW - M;
    const int W = p->W, lead = MAXW - W; /* hist[i], wt[i] live for i >= lead (>= low: W <= M) */

    float wt[MAXW][CONV_VEC], bias[CONV_VEC];
#pragma unroll
    for (int k = 0; k < CH; k++) {
#pragma unroll
        for (int i = low; i < MAXW; i++)
            wt[i][k] = i >= lead
                           ? load_float(p->weight, p->w_dtype, (c + k) * p->w_stride[0] + (i - lead) * p->w_stride[1])
                           : 0.0f;
        bias[k] = p->bias ? load_float(p->bias, p->bias_dtype, (c + k) * p->bias_stride) : 0.0f;
    }

    for (int64_t n = blockIdx.y; n < p->B; n += gridDim.y) {
        float *y = p->y + n * p->T * p->dim + c;
        const int64_t x_base = n * p->x_stride[0] + c * p->x_stride[2];
        float x0[CONV_VEC];
        load_channels(x0, p->x, p->x_dtype, x_base, CH);
        if (!sequence_runs(&p->slots, n)) {
            /* Skipped: neither pool is touched; y = 0 keeps the workspace defined. */
            const float zero[CONV_VEC] = {};
            for (int64_t t = 0; t < p->T; t++) store_y(y + t * p->dim, zero, CH);
            continue;
        }
        const int64_t slot = conv_slot(&p->slots, n);
        const int has_slot = slot >= 0 && slot < p->conv_slots;
        /* The window's first row: a_n - 1 when sliding, kept inside the L rows. */
        const int64_t first = p->sliding ? min(accepted_tokens(&p->slots, n), p->conv_rows - W + 2) - 1 : 0;
        const int64_t base = slot * p->state_stride[0] + c * p->state_stride[2];

        float hist[MAXW - 1][CONV_VEC];
#pragma unroll
        for (int i = low; i < MAXW - 1; i++) {
            if (has_slot && i >= lead) {
                load_channels(hist[i], p->state, p->state_dtype, base + (first + i - lead) * p->state_stride[1], CH);
            } else {
#pragma unroll
                for (int k = 0; k < CH; k++) hist[i][k] = 0.0f;
            }
        }

        if (has_slot) {
            /* The new state s[from ..], written from row 0: first the window entries
             * from .. W - 2 still in it, then the inputs. */
            const int64_t from = p->sliding ? 1 : p->T;
            const int64_t rows = p->sliding ? W - 2 + p->T : W - 1;
#pragma unroll
            for (int i = low; i < MAXW - 1; i++) {
                const int64_t entry = i - lead; /* window entry of hist[i] */
                if (i >= lead && entry >= from)
                    store_channels(p->state, p->state_dtype, base + (entry - from) * p->state_stride[1], hist[i], CH);
            }
            const int64_t kept = from < W - 1 ? W - 1 - from : 0;
            for (int64_t r = kept; r < rows; r++) {
                const int64_t t = from + r - (W - 1); /* s index from + r, an input */
                float xt[CONV_VEC];
                conv_input(xt, p, x0, x_base, t, CH);
                store_channels(p->state, p->state_dtype, base + r * p->state_stride[1], xt, CH);
            }
        }

        for (int64_t t = 0; t < p->T; t++) {
            float x[CONV_VEC], out[CONV_VEC];
            conv_input(x, p, x0, x_base, t, CH);
#pragma unroll
            for (int k = 0; k < CH; k++) {
                /* acc = bias + sum over the taps, oldest first (the CPU's order) */
                float acc = bias[k];
#pragma unroll
                for (int i = low; i < MAXW - 1; i++)
                    if (i >= lead) acc += wt[i][k] * hist[i][k];
                acc += wt[MAXW - 1][k] * x[k];
                out[k] = acc / (1.0f + expf(-acc));
                /* Slide: the newest input becomes the last history entry. */
#pragma unroll
                for (int i = low; i < MAXW - 2; i++) hist[i][k] = hist[i + 1][k];
                hist[MAXW - 2][k] = x[k];
            }
            store_y(y + t * p->dim, out, CH);
        }
    }
}

/* M, the registers' window width, is a compile-time constant: M = LAYER_MAX_WIDTH serves every
 * width but holds 31 values in registers per thread (126 registers, a quarter of the SM's warps,
 * and each thread's chain of dependent loads then shows); M = 4 serves the common W <= 4 in a
 * few registers, so that a full SM of warps hides that latency. CONV_VEC channels a thread
 * (conv_kernel_w4_vec, the serving engines' case: 16-bit inputs and conv state, channels
 * contiguous) make each row's load and store one 16-byte access instead of eight 2-byte ones,
 * and a sequence's work a fraction of the threads. */
__global__ void __launch_bounds__(CONV_THREADS) conv_kernel(const __grid_constant__ conv_params p)
{
    conv_channels(&p, LAYER_MAX_WIDTH, 1);
}
__global__ void __launch_bounds__(CONV_THREADS) conv_kernel_w4(const conv_params p)
{
    conv_channels(&p, LAYER_SHORT_CONV_WIDTH, 1);
}
__global__ void __launch_bounds__(CONV_THREADS) conv_kernel_w4_vec(const conv_params p)
{
    conv_channels(&p, LAYER_SHORT_CONV_WIDTH, CONV_VEC);
}

/* ---- 3. the gated RMSNorm -------------------------------------------------------------------- */

/*
 * One warp per value head h (blockIdx.x picks NORM_WARPS of them) and sequence n (blockIdx.y,
 * striding), over the T tokens; per row of V <= 256 values, each lane holding j = lane + 32 i:
 *
 *     r   = 1 / sqrt(sum_j o_j^2 / V + eps)        (the sum across the warp by shuffles)
 *     out = o_j * r * norm_weight[j] * sigmoid(output_gate[j])
 *
 * A skipped sequence's o is 0, so its rows of out are 0.
 */
__global__ void __launch_bounds__(NORM_WARPS * 32, 1) norm_kernel(const norm_params p)
{
    wait_for_prior_grid();
    const int lane = threadIdx.x & 31;
    const int64_t h = (int64_t)blockIdx.x * NORM_WARPS + (threadIdx.x >> 5);
    if (h >= p.HV) return;
    for (int64_t n = blockIdx.y; n < p.B; n += gridDim.y)
        for (int64_t t = 0; t < p.T; t++) {
            const float *o = p.o + ((n * p.T + t) * p.HV + h) * p.V;
            float v[NORM_PER_LANE];
            float squares = 0.0f;
#pragma unroll
            for (int i = 0; i < NORM_PER_LANE; i++) {
                const int j = lane + 32 * i;
                v[i] = j < p.V ? o[j] : 0.0f;
                squares += v[i] * v[i];
            }
#pragma unroll
            for (int m = 16; m >= 1; m >>= 1) squares += __shfl_xor_sync(0xffffffffu, squares, m);
            const float r = 1.0f / sqrtf(squares / (float)p.V + p.eps);

            const int64_t g0 = n * p.gate_stride[0] + t * p.gate_stride[1] + h * p.gate_stride[2];
            const int64_t o0 = n * p.out_stride[0] + t * p.out_stride[1] + h * p.out_stride[2];
#pragma unroll
            for (int i = 0; i < NORM_PER_LANE; i++) {
                const int j = lane + 32 * i;
                if (j >= p.V) continue;
                const float g = load_float(p.gate, p.gate_dtype, g0 + j * p.gate_stride[3]);
                const float w = load_float(p.weight, p.weight_dtype, j * p.weight_stride);
                store_float(p.out, p.out_dtype, o0 + j * p.out_stride[3], v[i] * r * w / (1.0f + expf(-g)));
            }
        }
}

/* ---- the workspace and the inner decode ----------------------------------------------------- */

static size_t align_up(size_t bytes) { return (bytes + WORKSPACE_ALIGN - 1) / WORKSPACE_ALIGN * WORKSPACE_ALIGN; }

static size_t y_bytes(const fkda_problem *p) { return align_up((size_t)(p->B * p->T * p->conv_dim) * sizeof(float)); }
static size_t o_bytes(const fkda_problem *p) { return align_up((size_t)(p->B * p->T * p->HV * p->V) * sizeof(float)); }

extern "C" fkda_status fkda_cuda_decode_layer_supported(const fkda_problem *p, const cudaDeviceProp *prop)
{
    const fkda_problem d = fkda_layer_decode_problem(p, NULL, NULL);
    return fkda_cuda_decode_supported(&d, prop);
}

extern "C" fkda_status fkda_cuda_decode_layer_workspace(const fkda_problem *p, size_t *bytes)
{
    const fkda_problem d = fkda_layer_decode_problem(p, NULL, NULL);
    size_t decode_bytes = 0;
    TRY(fkda_cuda_decode_workspace(&d, &decode_bytes));
    *bytes = y_bytes(p) + o_bytes(p) + decode_bytes;
    return FKDA_OK;
}

/* ---- the launches ---------------------------------------------------------------------------- */

/* Launches `kernel(params)` on the stream; with `pdl`, as a programmatic dependent of the
 * kernel before it (the kernels wait for it at wait_for_prior_grid). */
static fkda_status launch(const void *kernel, const char *name, dim3 grid, unsigned threads, cudaStream_t stream,
                          void *params, int pdl)
{
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = dim3(threads, 1, 1);
    cfg.stream = stream;
    cudaLaunchAttribute attr = {};
    attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr.val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = &attr;
    cfg.numAttrs = pdl ? 1 : 0;
    void *args[] = {params};
    const cudaError_t err = fkda_launch_kernel_ex(&cfg, kernel, args);
    if (err != cudaSuccess) {
        (void)cudaGetLastError(); /* leave no sticky error for a later, unrelated check */
        return fkda_fail(FKDA_ERROR_DEVICE, "decode layer: launch of %s: %s", name, cudaGetErrorString(err));
    }
    return FKDA_OK;
}

static layer_slots slots_of(const fkda_problem *p)
{
    layer_slots s;
    memset(&s, 0, sizeof s);
    s.idx = p->state_indices.data;
    s.idx_stride[0] = p->state_indices.stride[0];
    s.idx_2d = s.idx != NULL && p->indices_per_token;
    s.idx_stride[1] = s.idx_2d ? p->state_indices.stride[1] : 0;
    s.idx_dtype = p->state_indices.dtype;
    s.idx_tokens = s.idx_2d ? p->indices_tokens : 1;
    s.accepted = s.idx_2d ? p->num_accepted_tokens.data : NULL;
    s.acc_stride = p->num_accepted_tokens.stride[0];
    s.acc_dtype = p->num_accepted_tokens.dtype;
    s.pool_size = p->pool_size;
    return s;
}

/* Which conv kernel serves the call (decode_layer_select.c). */
static fkda_conv_kernel choose_conv(const conv_params *k, int sm_count, const fkda_tuning *t)
{
    fkda_conv_call c;
    memset(&c, 0, sizeof c);
    c.B = k->B;
    c.dim = k->dim;
    c.W = k->W;
    c.x_dtype = k->x_dtype;
    c.state_dtype = k->state_dtype;
    memcpy(c.x_stride, k->x_stride, sizeof c.x_stride);
    memcpy(c.state_stride, k->state_stride, sizeof c.state_stride);
    c.bases_aligned16 = (((uintptr_t)k->x | (uintptr_t)k->state) & 15) == 0;
    return fkda_decode_layer_conv_kernel(&c, sm_count, t);
}

static fkda_status launch_conv(const fkda_problem *p, float *y, cudaStream_t stream, int pdl, int sm_count,
                               const fkda_tuning *t)
{
    conv_params k;
    memset(&k, 0, sizeof k);
    k.x = p->mixed_qkv.data;
    memcpy(k.x_stride, p->mixed_qkv.stride, sizeof k.x_stride);
    k.x_dtype = p->mixed_qkv.dtype;
    k.weight = p->conv_weight.data;
    memcpy(k.w_stride, p->conv_weight.stride, sizeof k.w_stride);
    k.w_dtype = p->conv_weight.dtype;
    k.bias = p->conv_bias.data;
    k.bias_stride = p->conv_bias.stride[0];
    k.bias_dtype = p->conv_bias.dtype;
    k.state = p->conv_state.data;
    memcpy(k.state_stride, p->conv_state.stride, sizeof k.state_stride);
    k.state_dtype = p->conv_state.dtype;
    k.conv_slots = p->conv_pool_size;
    k.conv_rows = p->conv_rows;
    k.slots = slots_of(p);
    k.y = y;
    k.B = p->B;
    k.T = p->T;
    k.dim = p->conv_dim;
    k.W = (int32_t)p->conv_width;
    k.sliding = p->conv_sliding;
    const fkda_conv_kernel which = choose_conv(&k, sm_count, t);
    const int64_t per_cta = (int64_t)CONV_THREADS * (which == FKDA_CONV_SHORT_VEC ? CONV_VEC : 1);
    const dim3 grid((unsigned)((p->conv_dim + per_cta - 1) / per_cta),
                    (unsigned)(p->B < MAX_GRID_Y ? p->B : MAX_GRID_Y), 1);
    if (which == FKDA_CONV_SHORT_VEC)
        return launch((const void *)conv_kernel_w4_vec, "conv_kernel_w4_vec", grid, CONV_THREADS, stream, &k, pdl);
    if (which == FKDA_CONV_SHORT)
        return launch((const void *)conv_kernel_w4, "conv_kernel_w4", grid, CONV_THREADS, stream, &k, pdl);
    return launch((const void *)conv_kernel, "conv_kernel", grid, CONV_THREADS, stream, &k, pdl);
}

static fkda_status launch_norm(const fkda_problem *p, const float *o, cudaStream_t stream, int pdl)
{
    norm_params k;
    memset(&k, 0, sizeof k);
    k.o = o;
    k.gate = p->output_gate.data;
    memcpy(k.gate_stride, p->output_gate.stride, sizeof k.gate_stride);
    k.gate_dtype = p->output_gate.dtype;
    k.weight = p->norm_weight.data;
    k.weight_stride = p->norm_weight.stride[0];
    k.weight_dtype = p->norm_weight.dtype;
    k.out = p->out.data;
    memcpy(k.out_stride, p->out.stride, sizeof k.out_stride);
    k.out_dtype = p->out.dtype;
    k.B = p->B;
    k.T = p->T;
    k.HV = p->HV;
    k.V = (int32_t)p->V;
    k.eps = (float)p->norm_eps;
    const dim3 grid((unsigned)((p->HV + NORM_WARPS - 1) / NORM_WARPS),
                    (unsigned)(p->B < MAX_GRID_Y ? p->B : MAX_GRID_Y), 1);
    return launch((const void *)norm_kernel, "norm_kernel", grid, NORM_WARPS * 32, stream, &k, pdl);
}

/* Which path serves the call (decode_layer_select.c), under the knobs the call read once at its
 * start (the tests and the benchmark change them between calls). */
static fkda_layer_choice choose_path(const fkda_problem *p, const cudaDeviceProp *prop, const fkda_tuning *t)
{
    fkda_layer_call c;
    memset(&c, 0, sizeof c);
    c.cc_major = prop->major;
    c.sm_count = prop->multiProcessorCount;
    c.T = p->T;
    c.idx_2d = p->state_indices.data != NULL && p->indices_per_token;
    c.accepted = p->num_accepted_tokens.data != NULL;
    c.K = p->K;
    c.V = p->V;
    c.H = p->H;
    c.HV = p->HV;
    c.dense128 = fkda_cuda_decode_layer_fused_pool_fits(p);
    c.heads = p->B * p->HV;
    c.W = p->conv_width;
    c.state_bf16 = p->state_in.dtype == FKDA_DTYPE_BF16;
    c.l2_bytes = prop->l2CacheSize;
    if (c.cc_major >= 9) {
        const cudaStream_t stream = (cudaStream_t)p->device.stream;
        c.room4 = fkda_cuda_cluster_room(p->device.index, 4, stream);
        c.room8 = fkda_cuda_cluster_room(p->device.index, 8, stream);
    }
    return fkda_decode_layer_select(&c, t);
}

static fkda_status run_layer(const fkda_problem *p, char *workspace, size_t workspace_bytes, int pdl,
                             const cudaDeviceProp *prop, const fkda_tuning *t)
{
    const fkda_layer_choice choice = choose_path(p, prop, t);
    if (choice.fused)
        return fkda_cuda_decode_layer_fused(p, choice.cluster, choice.wide, choice.packed, choice.load_ef, pdl);
    const cudaStream_t stream = (cudaStream_t)p->device.stream;
    float *y = (float *)workspace, *o = (float *)(workspace + y_bytes(p));
    const size_t used = y_bytes(p) + o_bytes(p);
    TRY(launch_conv(p, y, stream, pdl, prop->multiProcessorCount, t));
    const fkda_problem d = fkda_layer_decode_problem(p, y, o);
    TRY(fkda_cuda_decode(&d, workspace + used, workspace_bytes - used));
    return launch_norm(p, o, stream, pdl);
}

extern "C" fkda_status fkda_cuda_decode_layer(const fkda_problem *p, void *workspace, size_t workspace_bytes)
{
    if (p->B * p->T == 0) return FKDA_OK;
    const cudaDeviceProp *prop = fkda_cuda_device_properties(p->device.index);
    if (!prop) return FKDA_ERROR_DEVICE;
    /* Programmatic dependent launches on sm_90, as the decode's (FKDA_DECODE_PDL=0 turns them
     * off for the layer's own launches too). */
    fkda_tuning t;
    fkda_tuning_read(&t);
    const int pdl = prop->major == 9 && t.decode_pdl != 0;

    /* Launch on the call's device, and leave the caller's current device as it was. */
    int current = -1;
    FKDA_CUDA_TRY(cudaGetDevice(&current));
    if (current != p->device.index) FKDA_CUDA_TRY(cudaSetDevice(p->device.index));
    const fkda_status s = run_layer(p, (char *)workspace, workspace_bytes, pdl, prop, &t);
    if (current != p->device.index) FKDA_CUDA_TRY(cudaSetDevice(current));
    return s;
}

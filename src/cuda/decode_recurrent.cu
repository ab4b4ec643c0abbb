/*
 * decode_recurrent.cu: the CUDA decode (fla's fused_recurrent_kda on a state pool), one kernel
 * in thirty-six plain, six packed and two (opt-in) streaming specialisations, and its launch.
 *
 * Per sequence n, value head h and token t (the state S is K x V, fp32 in registers):
 *
 *     S  <- diag(exp(a_t)) S
 *     u   = S^T k_t,  w = S^T q_t          (q_t already scaled)
 *     v'  = b_t (v_t - u)
 *     S  <- S + k_t v'^T
 *     o_t = S^T q_t = w + (k_t . q_t) v'    (so one pass over S gives both dot products)
 *
 * The work is memory-bound: every state byte is read once and written once, and the rest is
 * tiny. Columns of S evolve independently, so the V columns of one (sequence, head) are split
 * across warps: each warp holds a slab of columns (all K rows) in registers and reduces over K
 * with shuffles. The warps of one head share a CTA, and the one thing they share is the token:
 * the CTA stages q, k and exp(a) once into shared memory (the gate's exp, sigmoid and log1p once
 * per key, not once per warp) behind one __syncthreads, while the state's loads are in flight.
 * Small batches split a head over several CTAs (down to one warp each), so that they spread
 * over every SM: there the time is latency, not bandwidth, and each warp's path is the time
 * (fewer heads than SMs take "narrow" tiles of 32 values per lane, 16 warps per head).
 * Large one-token batches of bf16 pools keep the state as bf16 pairs (the packed kernel), so
 * that a head needs half the registers and twice the bytes are in flight per SM. On sm_90 every
 * kernel is a programmatic dependent launch: it starts while the kernel before it finishes and
 * waits (griddepcontrol) before its first load. The state's stores are streaming (evict-first
 * in L2), and so are its loads when the pool is small next to L2 (kernels compiled both ways).
 *
 * Inside a warp, `lanes_k` (KL) lanes share each column and split the K rows between them; the
 * other 32 / KL lanes take different columns. State loads and stores are 16 bytes per lane
 * (4 fp32 or 8 bf16 values along the contiguous dimension of the layout; 8 bytes, 4 bf16 values,
 * in the dense bf16 [K, V] tiles, which so hold 4 columns per lane like the fp32 ones):
 *
 *   [K, V] layout (V contiguous): lane = vl + (32/KL) * kl. Register row r is key kl + KL*r;
 *       the lane's columns are one or more 16-byte vectors along V. A warp load covers KL rows,
 *       each 32/KL vectors wide. The reduction over K runs across the kl lane bits (xor 32/KL..16).
 *       Wide fp32 tiles split K between the two warps of a pair (KS = 2): each warp holds 32
 *       columns of 64 keys (KL = 4), so that a warp load reads 128-byte lines, and adds the other
 *       warp's column sums through shared memory (3.6-4.7% faster than 16 columns of all 128 keys,
 *       whose loads read half lines, from 512 heads; docs/decode-notes.md, run 38).
 *   [V, K] layout (K contiguous): lane = kl + KL * jl. Register row r is key
 *       (kl + KL*(r/VEC))*VEC + r%VEC, i.e. 16-byte vectors along K, interleaved across the KL
 *       lanes so that they read one contiguous run; columns are value rows jl + (32/KL)*c.
 *       The reduction runs across the low kl bits (xor 1..KL/2).
 *
 * Each lane keeps 64 state values (32 in narrow tiles; NR rows x NC columns) in registers for
 * the whole call, so a speculative-decoding call with T tokens reads the state once and writes
 * it once per token only where 2-D state_indices ask for it. A scalar variant (VEC = 1, any
 * strides) serves pools whose pointer, strides or sizes do not allow 16-byte vectors.
 *
 * Never-trusted device inputs: cu_seqlens bounds are clamped into [0, T]; an accepted-token
 * count into [1, T_max]; a slot outside [0, P) skips the sequence (reads) or the write.
 */
#include <stdlib.h>
#include <string.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda_internal.h"
#include "decode_recurrent.h"
#include "ptx_copy.cuh"
#include "ptx_mbarrier.cuh"

#define DECODE_MAX_R 16  /* register rows per lane, the largest NR */
#define DECODE_MAX_C 8   /* register columns per lane, the largest NC */
#define DECODE_MAX_WARPS_PER_CTA 8 /* 256 threads: the 8 warps of a K = V = 128 head */
#define DECODE_ROW_PAD 4     /* floats between two lanes' rows in shared memory (banks) */
#define DECODE_STAGE_FLOATS 384 /* per staged vector: KL * (NR + pad) <= 32 * 12 or 16 * 20 */
#define FULL_MASK 0xffffffffu

/* ---- scalar loads and stores of any dtype ------------------------------------------------- */

/* The bits of element i of a float tensor of run-time dtype (f32: 32 bits; bf16, f16: 16 bits,
 * zero-extended). One predicated load in PTX, no branch: the caller converts later, so a warp
 * can have all its input loads in flight at once. (With a branch per dtype, the compiler puts
 * the conversion inside the branch, and every load then waits for the one before it.)
 * load_bits_if loads only where `ok` (else 0), inside the same instructions: no branch either.
 * `volatile`: an asm without it is a pure function to the compiler, which may then hoist it out
 * of a condition that guards it (it did: A_log's load ran with A_log NULL and faulted). */
static __device__ __forceinline__ uint32_t load_bits_if(const void *base, int32_t dtype, int64_t i, int ok)
{
    uint32_t bits = 0u; /* zero bits are 0.0 in every dtype */
    const int wide = dtype == FKDA_DTYPE_F32;
    const char *at = (const char *)base + (i << (wide ? 2 : 1));
    asm volatile("{\n\t.reg .pred p, w;\n\t"
                 "setp.ne.s32 p, %3, 0;\n\t"
                 "setp.ne.and.s32 w, %2, 0, p;\n\t"
                 "setp.eq.and.s32 p, %2, 0, p;\n\t"
                 "@w ld.global.b32 %0, [%1];\n\t"
                 "@p ld.global.u16 %0, [%1];\n\t}"
                 : "+r"(bits)
                 : "l"(at), "r"(wide), "r"(ok));
    return bits;
}

static __device__ __forceinline__ uint32_t load_bits(const void *base, int32_t dtype, int64_t i)
{
    return load_bits_if(base, dtype, i, 1);
}

/* Every conversion, then a select: no branch (at small batches each warp's path is the time). */
static __device__ __forceinline__ float bits_to_float(uint32_t bits, int32_t dtype)
{
    const float f16 = __half2float(__ushort_as_half((unsigned short)bits));
    const float f = __uint_as_float(dtype == FKDA_DTYPE_F32 ? bits : bits << 16);
    return dtype == FKDA_DTYPE_F16 ? f16 : f;
}

/* Element i of a float tensor of run-time dtype = x (rounded to nearest even): one predicated
 * store, as load_bits. */
static __device__ __forceinline__ void store_float(void *base, int32_t dtype, int64_t i, float x)
{
    const int wide = dtype == FKDA_DTYPE_F32;
    const unsigned short b16 = __bfloat16_as_ushort(__float2bfloat16_rn(x)), h16 = __half_as_ushort(__float2half_rn(x));
    const unsigned short half_bits = dtype == FKDA_DTYPE_BF16 ? b16 : h16;
    char *at = (char *)base + (i << (wide ? 2 : 1));
    asm volatile("{\n\t.reg .pred p;\n\t"
                 "setp.ne.s32 p, %3, 0;\n\t"
                 "@p st.global.b32 [%0], %1;\n\t"
                 "@!p st.global.b16 [%0], %2;\n\t}"
                 :
                 : "l"(at), "f"(x), "h"(half_bits), "r"(wide)
                 : "memory");
}

/* The element offset of (row, position, head) in a token tensor. The kernels compiled for
 * all-bf16 tokens with TOK = 1 compute it in 32 bits: their launch checked that every offset of
 * every token tensor fits in 31 bits (tokens_fit_31_bits), and each 64-bit multiply-add is three
 * instructions on a path that, at small batches, is the time (H100, fp32 pool: B = 1 H = 8 4.20
 * -> 4.05 us, 8 x 8 6.50 -> 6.38). TOK = 2 (the narrow bf16-pool kernels) keeps 64 bits: there
 * the 32-bit offsets measured slower (B = 1 H = 32 4.54 -> 4.64 us; why is not known, the
 * compiler scheduled the two differently). */
static __device__ __forceinline__ int64_t token_offset(const int64_t *stride, int64_t row, int64_t pos, int64_t head,
                                                       const int TOK)
{
    if (TOK == 1)
        return (int32_t)row * (int32_t)stride[0] + (int32_t)pos * (int32_t)stride[1] +
               (int32_t)head * (int32_t)stride[2];
    return row * stride[0] + pos * stride[1] + head * stride[2];
}

/* Token tensors are addressed as one 64-bit pointer per (row, position, head), computed once,
 * plus a 32-bit offset per element (the launch checks |last stride| * 256 < 2^31): at small
 * batches every instruction on a warp's path is time, and 64-bit index arithmetic per element
 * was ~15 instructions per load. */
static __device__ __forceinline__ const char *token_vector(const void *base, const int64_t *stride, int32_t dtype,
                                                          int64_t row, int64_t pos, int64_t head, const int TOK)
{
    return (const char *)base + (token_offset(stride, row, pos, head, TOK) << (dtype == FKDA_DTYPE_F32 ? 2 : 1));
}

/* Element e of a token vector (stride in elements). */
static __device__ __forceinline__ uint32_t load_elem(const char *vec, int32_t dtype, int e, int stride)
{
    return load_bits(vec, dtype, (int64_t)(e * stride));
}

static __device__ __forceinline__ void store_elem(const char *vec, int32_t dtype, int e, int stride, float x)
{
    store_float((void *)vec, dtype, (int64_t)(e * stride), x);
}

static __device__ __forceinline__ int64_t load_index(const void *base, int32_t dtype, int64_t i)
{
    if (dtype == FKDA_DTYPE_I64) return ((const int64_t *)base)[i];
    return ((const int32_t *)base)[i];
}

/* ---- state vectors: VEC consecutive elements, 16 bytes when VEC > 1 (8 for 4 bf16) ------- */

static __device__ __forceinline__ float bf16_bits_to_float(uint32_t bits) { return __uint_as_float(bits << 16); }

/* Two floats to two bf16 (round to nearest even), `lo` in the low half. */
static __device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi)
{
    uint32_t r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

/* The address of element `off` of a state pool of 2- or 4-byte elements. */
static __device__ __forceinline__ void *state_at(const void *pool, int64_t off, const int BF16)
{
    return (char *)pool + off * (BF16 ? 2 : 4);
}

/* Cache hints for the pool's vectors. A call reads each state once and writes it once, so its
 * stores are streaming (st.global.cs: evict-first in L2; on the H100 0.5-2% faster at every size)
 * and so are its loads (ld.global.cs) while the pool is small next to L2 (3-8% faster for 17-34
 * MB of state, 1-2% for 67 MB; 1% slower for 134 MB, 5% for 537 MB): the launch picks a kernel
 * compiled with or without them (LOAD_EF).
 *
 * Loads VEC state elements starting at element `off` (scalar: one element at off); the vectors
 * as streaming loads with STREAM (global memory only). */
static __device__ __forceinline__ void load_state_vec(const void *base, int off, float *x,
                                                      const int BF16, const int VEC, const int STREAM)
{
    if (VEC == 1) {
        x[0] = BF16 ? bf16_bits_to_float(((const unsigned short *)base)[off]) : ((const float *)base)[off];
    } else if (BF16 && VEC == 4) { /* 8 bytes */
        const uint2 *at = (const uint2 *)((const unsigned short *)base + off);
        const uint2 u = STREAM ? __ldcs(at) : *at;
        x[0] = __uint_as_float(u.x << 16); x[1] = __uint_as_float(u.x & 0xffff0000u);
        x[2] = __uint_as_float(u.y << 16); x[3] = __uint_as_float(u.y & 0xffff0000u);
    } else if (BF16) { /* VEC == 8 */
        const uint4 *at = (const uint4 *)((const unsigned short *)base + off);
        const uint4 u = STREAM ? __ldcs(at) : *at;
        x[0] = __uint_as_float(u.x << 16); x[1] = __uint_as_float(u.x & 0xffff0000u);
        x[2] = __uint_as_float(u.y << 16); x[3] = __uint_as_float(u.y & 0xffff0000u);
        x[4] = __uint_as_float(u.z << 16); x[5] = __uint_as_float(u.z & 0xffff0000u);
        x[6] = __uint_as_float(u.w << 16); x[7] = __uint_as_float(u.w & 0xffff0000u);
    } else { /* VEC == 4 */
        const uint4 *at = (const uint4 *)((const float *)base + off);
        const uint4 u = STREAM ? __ldcs(at) : *at;
        x[0] = __uint_as_float(u.x); x[1] = __uint_as_float(u.y); x[2] = __uint_as_float(u.z); x[3] = __uint_as_float(u.w);
    }
}

/* Stores VEC state elements to global memory, the vectors as streaming stores. */
static __device__ __forceinline__ void store_state_vec(void *base, int off, const float *x,
                                                       const int BF16, const int VEC)
{
    if (VEC == 1) {
        if (BF16)
            ((__nv_bfloat16 *)base)[off] = __float2bfloat16_rn(x[0]);
        else
            ((float *)base)[off] = x[0];
    } else if (BF16 && VEC == 4) {
        __stcs((uint2 *)((unsigned short *)base + off), make_uint2(pack_bf16x2(x[0], x[1]), pack_bf16x2(x[2], x[3])));
    } else if (BF16) {
        uint4 u;
        u.x = pack_bf16x2(x[0], x[1]); u.y = pack_bf16x2(x[2], x[3]);
        u.z = pack_bf16x2(x[4], x[5]); u.w = pack_bf16x2(x[6], x[7]);
        __stcs((uint4 *)((unsigned short *)base + off), u);
    } else {
        __stcs((float4 *)((float *)base + off), make_float4(x[0], x[1], x[2], x[3]));
    }
}

/* ---- the lane's share of the state: which key row and value column each register holds ---- */

typedef struct lane_tile {
    int kl, KL; /* this lane's index among the KL lanes sharing a column, and KL */
    int kh, kbase; /* split-K tiles (KS = 2): the warp's half of the keys, and its first key */
    int lj, LJ; /* this lane's column group, and the number of groups (32 / KL) */
    int j0;     /* the warp's first column */
    int log2KL;
    int K, V; /* the head's size (compile-time constants in the dense 128 variants) */
} lane_tile;

/* log2 of a power of two up to 32, written so that a constant argument folds to a constant. */
static __device__ __forceinline__ int log2_pow2(int x)
{
    return (x >= 2) + (x >= 4) + (x >= 8) + (x >= 16) + (x >= 32);
}

/* Where key k is staged in shared memory: each lane's NR rows are contiguous (read with
 * compile-time offsets, 16 bytes at a time), and the KL lane groups are DECODE_ROW_PAD floats
 * apart beyond that, so that their 16-byte reads fall in different banks. */
static __device__ __forceinline__ int stage_pos(const lane_tile *w, int k, const int V_FIRST, const int VEC,
                                                const int NR)
{
    int kl, r;
    if (V_FIRST) {
        const int c = k / VEC;
        kl = c & (w->KL - 1);
        r = (c >> w->log2KL) * VEC + k % VEC;
    } else {
        kl = k & (w->KL - 1);
        r = k >> w->log2KL;
    }
    return kl * (NR + DECODE_ROW_PAD) + r;
}

/* Key index of register row r. */
static __device__ __forceinline__ int tile_row(const lane_tile *w, int r, const int V_FIRST, const int VEC)
{
    return w->kbase + (V_FIRST ? (w->kl + w->KL * (r / VEC)) * VEC + r % VEC : w->kl + w->KL * r);
}

/* Value index of register column c. */
static __device__ __forceinline__ int tile_col(const lane_tile *w, int c, const int V_FIRST, const int VEC)
{
    return V_FIRST ? w->j0 + w->lj + w->LJ * c : w->j0 + (w->lj + w->LJ * (c / VEC)) * VEC + c % VEC;
}

/* Loads the lane's NR x NC tile from `lane`, the address of its first row and column, with the
 * head's strides sk (keys) and sv (values) in elements (rows >= K or columns >= V read as 0). In
 * the vector variants the contiguous dimension is a multiple of VEC, so a vector is either
 * wholly inside or wholly outside. */
static __device__ __forceinline__ void load_tile_from(const lane_tile *w, const void *lane, int sk, int sv,
                                                      float s[DECODE_MAX_R][DECODE_MAX_C], const int BF16,
                                                      const int V_FIRST, const int VEC, const int NR, const int NC,
                                                      const int STREAM)
{
    const int k0 = tile_row(w, 0, V_FIRST, VEC), j0 = tile_col(w, 0, V_FIRST, VEC);
    if (!V_FIRST) {
#pragma unroll
        for (int r = 0; r < NR; r++) {
            const int k = tile_row(w, r, 0, VEC);
#pragma unroll
            for (int cv = 0; cv < NC / VEC; cv++) {
                const int j = tile_col(w, cv * VEC, 0, VEC);
                float x[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
                if (k < w->K && j < w->V) load_state_vec(lane, (k - k0) * sk + (j - j0) * sv, x, BF16, VEC, STREAM);
#pragma unroll
                for (int e = 0; e < VEC; e++) s[r][cv * VEC + e] = x[e];
            }
        }
    } else {
#pragma unroll
        for (int c = 0; c < NC; c++) {
            const int j = tile_col(w, c, 1, VEC);
#pragma unroll
            for (int rv = 0; rv < NR / VEC; rv++) {
                const int k = tile_row(w, rv * VEC, 1, VEC);
                float x[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
                if (k < w->K && j < w->V) load_state_vec(lane, (j - j0) * sv + (k - k0) * sk, x, BF16, VEC, STREAM);
#pragma unroll
                for (int e = 0; e < VEC; e++) s[rv * VEC + e][c] = x[e];
            }
        }
    }
}

/* Loads the lane's tile of the state at `slot` from the pool. */
static __device__ __forceinline__ void load_tile(const fkda_decode_params *p, const lane_tile *w,
                                                 int64_t slot, int64_t h,
                                                 float s[DECODE_MAX_R][DECODE_MAX_C], const int BF16,
                                                 const int V_FIRST, const int VEC, const int NR, const int NC,
                                                 const int D128, const int LOAD_EF)
{
    const int64_t *st = p->state_in_stride;
    /* The head's state starts at `head`; offsets inside it fit in 32 bits (checked at launch).
     * The vector variants were chosen because the contiguous stride is 1, the dense 128 ones
     * because the other is 128: let the compiler know (offsets become immediates). */
    const int64_t head = slot * st[0] + h * st[1];
    const int sk = (VEC > 1 && V_FIRST) ? 1 : D128 ? 128 : (int)st[2];
    const int sv = (VEC > 1 && !V_FIRST) ? 1 : D128 ? 128 : (int)st[3];
    /* One 64-bit address per lane (its first row and column); the rest are offsets from it,
     * compile-time constants in the dense 128 variants. */
    const int k0 = tile_row(w, 0, V_FIRST, VEC), j0 = tile_col(w, 0, V_FIRST, VEC);
    const void *lane = state_at(p->state_in, head + (int64_t)k0 * sk + (int64_t)j0 * sv, BF16);
    load_tile_from(w, lane, sk, sv, s, BF16, V_FIRST, VEC, NR, NC, LOAD_EF);
}

static __device__ __forceinline__ void store_tile(const fkda_decode_params *p, const lane_tile *w,
                                                  int64_t slot, int64_t h,
                                                  float s[DECODE_MAX_R][DECODE_MAX_C], const int BF16,
                                                  const int V_FIRST, const int VEC, const int NR, const int NC,
                                                  const int D128)
{
    const int64_t *st = p->state_out_stride;
    /* The head's state starts at `head`; offsets inside it fit in 32 bits (checked at launch).
     * The vector variants were chosen because the contiguous stride is 1, the dense 128 ones
     * because the other is 128: let the compiler know (offsets become immediates). */
    const int64_t head = slot * st[0] + h * st[1];
    const int sk = (VEC > 1 && V_FIRST) ? 1 : D128 ? 128 : (int)st[2];
    const int sv = (VEC > 1 && !V_FIRST) ? 1 : D128 ? 128 : (int)st[3];
    /* One 64-bit address per lane (its first row and column); the rest are offsets from it,
     * compile-time constants in the dense 128 variants. */
    const int k0 = tile_row(w, 0, V_FIRST, VEC), j0 = tile_col(w, 0, V_FIRST, VEC);
    void *lane = state_at(p->state_out, head + (int64_t)k0 * sk + (int64_t)j0 * sv, BF16);
    if (!V_FIRST) {
#pragma unroll
        for (int r = 0; r < NR; r++) {
            const int k = tile_row(w, r, 0, VEC);
#pragma unroll
            for (int cv = 0; cv < NC / VEC; cv++) {
                const int j = tile_col(w, cv * VEC, 0, VEC);
                float x[8];
#pragma unroll
                for (int e = 0; e < VEC; e++) x[e] = s[r][cv * VEC + e];
                if (k < w->K && j < w->V) store_state_vec(lane, (k - k0) * sk + (j - j0) * sv, x, BF16, VEC);
            }
        }
    } else {
#pragma unroll
        for (int c = 0; c < NC; c++) {
            const int j = tile_col(w, c, 1, VEC);
#pragma unroll
            for (int rv = 0; rv < NR / VEC; rv++) {
                const int k = tile_row(w, rv * VEC, 1, VEC);
                float x[8];
#pragma unroll
                for (int e = 0; e < VEC; e++) x[e] = s[rv * VEC + e][c];
                if (k < w->K && j < w->V) store_state_vec(lane, (j - j0) * sv + (k - k0) * sk, x, BF16, VEC);
            }
        }
    }
}

/* ---- one token's q, k and decay, staged once per CTA into shared memory ------------------- */

static __device__ __forceinline__ float warp_sum(float x)
{
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) x += __shfl_xor_sync(FULL_MASK, x, off);
    return x;
}

static __device__ __forceinline__ float sigmoidf_(float x) { return 1.0f / (1.0f + expf(-x)); }

/* fla's softplus: x itself above 20, where log1p(exp(x)) == x in float. */
static __device__ __forceinline__ float softplusf_(float x) { return x > 20.0f ? x : log1pf(expf(x)); }

/* One token's staged vectors, in shared memory, double-buffered across tokens: sq = q and
 * sk = k as loaded (unnormalised), sd = exp(a), in the stage_pos order of the lanes' register
 * rows; and each warp's partial sums of q.q, k.k and q.k. */
typedef struct __align__(16) stage_buffer { /* read with 16-byte loads */
    float q[DECODE_STAGE_FLOATS], k[DECODE_STAGE_FLOATS], d[DECODE_STAGE_FLOATS];
    float partial[DECODE_MAX_WARPS_PER_CTA][4];
    /* Split-K tiles: each warp's column sums of S^T k and S^T q over its half of the keys, per
     * column group of lanes, for the other warp of its pair (add_other_half): 8 warps x 8 groups
     * x 4 columns x 2 sums, or 4 warps x 8 groups x 8 columns x 2 sums (packed). */
    float halves[DECODE_MAX_WARPS_PER_CTA * 8 * 8];
} stage_buffer;

/* The factors that turn the staged vectors into the recurrence's: q_t = qf * sq and
 * k_t = kf * sk (the L2 norms and the scale), k_t . q_t, and the effective beta. Kept out of
 * shared memory so that each key's staging is independent of the others. */
typedef struct staged_token {
    float qf, kf, kq, beta;
} staged_token;

#define DECODE_KEYS_PER_THREAD 4

/* The dtype of a token tensor (q, k, v, g, beta, out) in a kernel compiled for all-bf16 tokens
 * (TOK: the common call of a bf16 model) or read at run time (every other combination). A
 * compile-time dtype leaves one load per element and a shift to convert it, where the run-time
 * one needs both load widths and every conversion. TOK kernels also assume what the launch
 * checked for them: one token per sequence (T = 1, no cu_seqlens, 1-D indices) and token
 * offsets in 31 bits (token_offset). */
#define TOKEN_DTYPE(p, field, TOK) ((TOK) ? (int32_t)FKDA_DTYPE_BF16 : (p)->field)

/* The raw bits of the inputs one thread stages in one round of stage_token: keys base + tid +
 * i * blockDim of q, k, g and dt_bias (zero past K), and beta's and A_log's. Loaded as one batch
 * (nothing waits on them until stage_token converts them), so a caller can issue them early. */
typedef struct token_bits {
    uint32_t q[DECODE_KEYS_PER_THREAD], k[DECODE_KEYS_PER_THREAD], g[DECODE_KEYS_PER_THREAD],
        bias[DECODE_KEYS_PER_THREAD];
    uint32_t beta, A;
} token_bits;

static __device__ __forceinline__ void load_token_bits(const fkda_decode_params *p, const lane_tile *w, int64_t row,
                                                       int64_t pos, int64_t h, int64_t hq, int base, token_bits *tb,
                                                       int skip_empty_slots, const int TOK)
{
    const int tid = threadIdx.x, nthreads = blockDim.x;
    const char *qv = token_vector(p->q, p->q_stride, TOKEN_DTYPE(p, q_dtype, TOK), row, pos, hq, TOK);
    const char *kv = token_vector(p->k, p->k_stride, TOKEN_DTYPE(p, k_dtype, TOK), row, pos, hq, TOK);
    const char *gv = token_vector(p->g, p->g_stride, TOKEN_DTYPE(p, g_dtype, TOK), row, pos, h, TOK);
    const int gated = p->gate != FKDA_GATE_NONE, biased = gated && p->dt_bias;
    /* dt_bias and A_log: 32-bit offsets in TOK kernels too (checked with the token tensors). */
    const int64_t bias_off = TOK == 1 ? (int64_t)((int32_t)h * (int32_t)p->dt_bias_stride[0]) : h * p->dt_bias_stride[0];
    const int64_t A_off = TOK == 1 ? (int64_t)((int32_t)h * (int32_t)p->A_log_stride) : h * p->A_log_stride;
    const char *bv = biased ? (const char *)p->dt_bias + (bias_off << (p->dt_bias_dtype == FKDA_DTYPE_F32 ? 2 : 1))
                            : NULL;
    const int64_t beta_off = token_offset(p->beta_stride, row, pos, h, TOK);
    tb->beta = load_bits(p->beta, TOKEN_DTYPE(p, beta_dtype, TOK), beta_off);
    tb->A = load_bits_if(p->A_log, p->A_log_dtype, A_off, gated && p->A_log);
#pragma unroll
    for (int i = 0; i < DECODE_KEYS_PER_THREAD; i++) {
        tb->q[i] = tb->k[i] = tb->g[i] = tb->bias[i] = 0u;
        /* A slot no thread of the CTA has a key in: one uniform branch. (Measured on an H200: 6%
         * faster for plain CTAs at large batches, but 14% slower in the streaming kernel's loads
         * of the next head, which pass 0.) */
        if (skip_empty_slots && base + i * nthreads >= w->K) continue;
        const int e = base + tid + i * nthreads;
        /* A branch per thread, not loads predicated on e < K: predicated, they measured 9-22%
         * slower at large batches and 3-6% slower at B = 1 (H200). */
        if (e < w->K) {
            tb->q[i] = load_elem(qv, TOKEN_DTYPE(p, q_dtype, TOK), e, (int)p->q_stride[3]);
            tb->k[i] = load_elem(kv, TOKEN_DTYPE(p, k_dtype, TOK), e, (int)p->k_stride[3]);
            tb->g[i] = load_elem(gv, TOKEN_DTYPE(p, g_dtype, TOK), e, (int)p->g_stride[3]);
            if (biased) tb->bias[i] = load_elem(bv, p->dt_bias_dtype, e, (int)p->dt_bias_stride[1]);
        }
    }
}

/* Stages one token for the whole CTA, then waits for every warp (one __syncthreads): thread i
 * handles keys i, i + blockDim, ... (0, 0 and 1 past K, up to the `rows` the registers cover).
 * Up to DECODE_KEYS_PER_THREAD keys per thread are loaded together before any is used, so a
 * CTA stages DECODE_KEYS_PER_THREAD * blockDim keys in one round trip (any CTA covers K <= 128,
 * two warps or more K <= 256), which overlaps the state's own loads that the caller issued
 * just before. With `use_first`, *first holds the first round's bits, loaded by the caller. Every
 * warp of the head shares this work: the gate's exp and log1p run once per key, not once per
 * warp. */
static __device__ __forceinline__ staged_token stage_token(const fkda_decode_params *p, const lane_tile *w,
                                                           int64_t row, int64_t pos, int64_t h, int64_t hq,
                                                           stage_buffer *sb, const token_bits *first, int use_first,
                                                           const int V_FIRST, const int VEC, const int NR, const int TOK)
{
    const int tid = threadIdx.x, nthreads = blockDim.x, lane = tid & 31, warp = tid >> 5;
    const int rows = w->KL * NR; /* keys the lanes' registers cover; K <= rows <= 256 */
    const int gated = p->gate != FKDA_GATE_NONE;
    uint32_t beta_bits = 0u;
    float ssq = 0.0f, ssk = 0.0f, qk = 0.0f, weight = 1.0f;
    for (int base = 0; base < rows; base += DECODE_KEYS_PER_THREAD * nthreads) {
        token_bits tb;
        if (base == 0 && use_first)
            tb = *first;
        else
            load_token_bits(p, w, row, pos, h, hq, base, &tb, 1, TOK);
        if (base == 0) beta_bits = tb.beta;
        const uint32_t *qb = tb.q, *kb = tb.k, *gb = tb.g, *bb = tb.bias;
        const uint32_t A_bits = tb.A;
        if (gated && p->A_log) weight = expf(bits_to_float(A_bits, p->A_log_dtype));
#pragma unroll
        for (int i = 0; i < DECODE_KEYS_PER_THREAD; i++) {
            const int e = base + tid + i * nthreads;
            if (e >= rows) continue;
            const float q = bits_to_float(qb[i], TOKEN_DTYPE(p, q_dtype, TOK)), k = bits_to_float(kb[i], TOKEN_DTYPE(p, k_dtype, TOK));
            float a = bits_to_float(gb[i], TOKEN_DTYPE(p, g_dtype, TOK));
            if (gated) {
                a += bits_to_float(bb[i], p->dt_bias_dtype);
                a = p->gate == FKDA_GATE_LOWER_BOUND ? p->lower_bound * sigmoidf_(weight * a) : -weight * softplusf_(a);
            }
            ssq = fmaf(q, q, ssq);
            ssk = fmaf(k, k, ssk);
            qk = fmaf(q, k, qk);
            const int at = stage_pos(w, e, V_FIRST, VEC, NR);
            sb->q[at] = q;
            sb->k[at] = k;
            sb->d[at] = e < w->K ? expf(a) : 1.0f;
        }
    }
    ssq = warp_sum(ssq);
    ssk = warp_sum(ssk);
    qk = warp_sum(qk);
    if (lane == 0) {
        sb->partial[warp][0] = ssq;
        sb->partial[warp][1] = ssk;
        sb->partial[warp][2] = qk;
    }
    __syncthreads();
    /* Every thread adds the warps' partial sums in the same order: the same factors everywhere. */
    ssq = ssk = qk = 0.0f;
    for (int i = 0; i < (nthreads >> 5); i++) {
        ssq += sb->partial[i][0];
        ssk += sb->partial[i][1];
        qk += sb->partial[i][2];
    }
    staged_token st;
    st.qf = p->scale;
    st.kf = 1.0f;
    if (p->use_qk_l2norm) { /* x / sqrt(sum x^2 + 1e-6), as the CPU backend: x * (1 / sqrt(.)) */
        st.qf *= 1.0f / sqrtf(ssq + 1e-6f);
        st.kf = 1.0f / sqrtf(ssk + 1e-6f);
    }
    st.kq = qk * st.qf * st.kf;
    float beta = bits_to_float(beta_bits, TOKEN_DTYPE(p, beta_dtype, TOK));
    if (p->use_beta_sigmoid) beta = (p->allow_neg_eigval ? 2.0f : 1.0f) * sigmoidf_(beta);
    st.beta = beta;
    return st;
}

/* ---- the CTA's work: one (sequence, value head), or a share of its columns ---------------- */

/* Sequence n and value head h of flat head index `head` (n * HV + h), and the query head of h.
 * 32-bit divisions: the launch checks N * HV < 2^31, and a 64-bit division is a ~70-instruction
 * call that sat on every CTA's path to its first load. */
static __device__ __forceinline__ void split_head(const fkda_decode_params *p, int64_t head, int64_t *n, int64_t *h)
{
    const uint32_t hv = (uint32_t)p->HV, q = (uint32_t)head / hv;
    *n = q;
    *h = (uint32_t)head - q * hv;
}

static __device__ __forceinline__ int64_t query_head(const fkda_decode_params *p, int64_t h)
{
    return (uint32_t)h / (uint32_t)p->group;
}

/* The bits of this lane's columns of v at one token. */
static __device__ __forceinline__ void load_v(const fkda_decode_params *p, const lane_tile *w, int64_t row,
                                              int64_t pos, int64_t h, uint32_t *vbits, const int V_FIRST,
                                              const int VEC, const int NC, const int TOK)
{
    const char *vv = token_vector(p->v, p->v_stride, TOKEN_DTYPE(p, v_dtype, TOK), row, pos, h, TOK);
#pragma unroll
    for (int c = 0; c < NC; c++) {
        const int j = tile_col(w, c, V_FIRST, VEC);
        vbits[c] = j < w->V ? load_elem(vv, TOKEN_DTYPE(p, v_dtype, TOK), j, (int)p->v_stride[3]) : 0u;
    }
}

/* A token's inputs as this thread loads them: the first round of its staged keys and its lanes'
 * columns of v (a caller that loads them early passes them to run_tokens). */
typedef struct token_inputs {
    token_bits keys;
    uint32_t v[DECODE_MAX_C];
} token_inputs;

/* This lane's place in the tile of a warp that owns slab `slab` of a head's columns. */
static __device__ __forceinline__ lane_tile make_lane_tile(const fkda_decode_params *p, int slab, const int V_FIRST,
                                                         const int NR, const int NC, const int D128, const int KS)
{
    const int lane = threadIdx.x & 31;
    lane_tile w;
    w.K = D128 ? 128 : p->K;
    w.V = D128 ? 128 : p->V;
    w.KL = D128 ? 128 / (NR * KS) : p->lanes_k;
    w.LJ = 32 / w.KL;
    w.kl = V_FIRST ? (lane & (w.KL - 1)) : lane / w.LJ;
    w.lj = V_FIRST ? lane / w.KL : (lane & (w.LJ - 1));
    /* Split K (dense 128 kernels only): the two warps of a pair (slabs 2i, 2i + 1) share columns,
     * one half of the keys each. */
    w.kh = KS == 2 ? (slab & 1) : 0;
    w.kbase = w.kh * (128 / KS);
    if (KS == 2) slab >>= 1;
    w.j0 = slab * w.LJ * NC; /* past V for a CTA's spare warps: their columns are all masked */
    w.log2KL = log2_pow2(w.KL);
    return w;
}

/* Sequence n's tokens: row *row, positions *bos .. *bos + len - 1; returns len (0: nothing). */
static __device__ __forceinline__ int64_t sequence_tokens(const fkda_decode_params *p, int64_t n, int64_t *row,
                                                          int64_t *bos)
{
    *row = n;
    *bos = 0;
    if (!p->cu_seqlens) return p->T;
    int64_t a = load_index(p->cu_seqlens, p->cu_dtype, n * p->cu_stride);
    int64_t b = load_index(p->cu_seqlens, p->cu_dtype, (n + 1) * p->cu_stride);
    a = min(max(a, (int64_t)0), p->T);
    b = min(max(b, a), p->T);
    *row = 0;
    *bos = a;
    return b - a;
}

/* The slot sequence n continues from; outside [0, pool_size) means: skip it. */
static __device__ __forceinline__ int64_t read_slot(const fkda_decode_params *p, int64_t n)
{
    if (!p->state_indices) return n;
    int64_t col = 0;
    if (p->idx_2d && p->num_accepted) {
        int64_t acc = load_index(p->num_accepted, p->acc_dtype, n * p->acc_stride);
        col = min(max(acc, (int64_t)1), p->idx_tokens) - 1;
    }
    return load_index(p->state_indices, p->idx_dtype, n * p->idx_stride[0] + col * p->idx_stride[1]);
}

/* A skipped sequence: no state touched, its rows of out zeroed. */
static __device__ __forceinline__ void zero_outputs(const fkda_decode_params *p, const lane_tile *w, int64_t row,
                                                    int64_t bos, int64_t len, int64_t h, const int V_FIRST,
                                                    const int VEC, const int NC, const int TOK)
{
    if (w->kl != 0 || w->kh != 0) return;
    for (int64_t t = 0; t < len; t++) {
        const char *ov = token_vector(p->out, p->out_stride, TOKEN_DTYPE(p, out_dtype, TOK), row, bos + t, h, TOK);
#pragma unroll
        for (int c = 0; c < NC; c++) {
            const int j = tile_col(w, c, V_FIRST, VEC);
            if (j < w->V) store_elem(ov, TOKEN_DTYPE(p, out_dtype, TOK), j, (int)p->out_stride[3], 0.0f);
        }
    }
}

/* Waits for the two warps of pair `pair` of the CTA (named barrier 1 + pair; 0 is
 * __syncthreads'). The ids are immediates, so that the kernel reserves 5 barriers, not 16. */
static __device__ __forceinline__ void pair_barrier(int pair)
{
    switch (pair) {
    case 0: asm volatile("bar.sync 1, 64;" ::: "memory"); break;
    case 1: asm volatile("bar.sync 2, 64;" ::: "memory"); break;
    case 2: asm volatile("bar.sync 3, 64;" ::: "memory"); break;
    default: asm volatile("bar.sync 4, 64;" ::: "memory"); break;
    }
}

/* Split-K tiles: adds to this warp's column sums pk and pq (over its half of the keys, already
 * reduced across its lanes) those of the other warp of its pair, which holds the same columns'
 * other half. Lanes kl = 0 publish, both warps wait for each other, every lane reads. One warp
 * computes a + b and the other b + a: the same sums, bit for bit. Lane group lj < 8 (LJ <= 8). */
static __device__ __forceinline__ void add_other_half(stage_buffer *sb, const lane_tile *w, float *pk, float *pq,
                                                      const int NC)
{
    const int warp = threadIdx.x >> 5;
    float *mine = sb->halves + (warp * 8 + w->lj) * 2 * NC;
    const float *theirs = sb->halves + ((warp ^ 1) * 8 + w->lj) * 2 * NC;
    if (w->kl == 0) {
#pragma unroll
        for (int c = 0; c < NC; c += 4) {
            *(float4 *)(mine + c) = make_float4(pk[c], pk[c + 1], pk[c + 2], pk[c + 3]);
            *(float4 *)(mine + NC + c) = make_float4(pq[c], pq[c + 1], pq[c + 2], pq[c + 3]);
        }
    }
    pair_barrier(warp >> 1);
#pragma unroll
    for (int c = 0; c < NC; c += 4) {
        const float4 tk = *(const float4 *)(theirs + c), tq = *(const float4 *)(theirs + NC + c);
        pk[c] += tk.x; pk[c + 1] += tk.y; pk[c + 2] += tk.z; pk[c + 3] += tk.w;
        pq[c] += tq.x; pq[c + 1] += tq.y; pq[c + 2] += tq.z; pq[c + 3] += tq.w;
    }
}

/* The recurrence over the sequence's tokens, the state in registers (loaded by the caller),
 * and the state's stores: after every token to its 2-D index, else once at the end to `slot`.
 * Every thread of the CTA calls it (stage_token waits for the whole CTA once per token). */
static __device__ __forceinline__ void run_tokens(const fkda_decode_params *p, const lane_tile *wp, stage_buffer *smem,
                                                  int64_t n, int64_t h, int64_t row, int64_t bos, int64_t len,
                                                  int64_t slot, float s[DECODE_MAX_R][DECODE_MAX_C],
                                                  const token_inputs *first, int use_first, const int BF16, const int V_FIRST,
                                                  const int VEC, const int NR, const int NC, const int D128, const int TOK,
                                                  const int KS)
{
    const lane_tile w = *wp;
    const int64_t hq = query_head(p, h);
    const int red_lo = V_FIRST ? 1 : w.LJ, red_hi = V_FIRST ? w.KL : 32;
    for (int64_t t = 0; t < len; t++) {
        const int64_t pos = bos + t;
        /* Two stage buffers: token t + 1 stages into the one token t - 1 read, which every warp
         * had finished before it passed token t's __syncthreads. */
        stage_buffer *sb = smem + (t & 1);
        /* The token's inputs: their loads overlap the state's (first token) or each other, unless
         * the caller loaded the first token's already. */
        uint32_t vbits[DECODE_MAX_C];
        if (t == 0 && use_first) {
#pragma unroll
            for (int c = 0; c < NC; c++) vbits[c] = first->v[c];
        } else {
            load_v(p, &w, row, pos, h, vbits, V_FIRST, VEC, NC, TOK);
        }
        const staged_token tok =
            stage_token(p, &w, row, pos, h, hq, sb, first ? &first->keys : NULL, t == 0 && use_first, V_FIRST, VEC, NR * KS, TOK);
        /* This lane's rows (a split-K warp's, the kh-th half of its kl group's). */
        const int lane_rows = w.kl * (NR * KS + DECODE_ROW_PAD) + w.kh * NR;
        const float *lq = sb->q + lane_rows, *lk = sb->k + lane_rows, *ld = sb->d + lane_rows;

        /* Decay, and the two dot products over this lane's rows (with the unscaled q, k). */
        float pk[DECODE_MAX_C], pq[DECODE_MAX_C];
#pragma unroll
        for (int c = 0; c < NC; c++) pk[c] = pq[c] = 0.0f;
#pragma unroll
        for (int r4 = 0; r4 < NR; r4 += 4) {
            const float4 d4 = *(const float4 *)(ld + r4), k4 = *(const float4 *)(lk + r4),
                         q4 = *(const float4 *)(lq + r4);
            const float d[4] = {d4.x, d4.y, d4.z, d4.w}, kk[4] = {k4.x, k4.y, k4.z, k4.w},
                        qq[4] = {q4.x, q4.y, q4.z, q4.w};
#pragma unroll
            for (int i = 0; i < 4; i++) {
#pragma unroll
                for (int c = 0; c < NC; c++) {
                    s[r4 + i][c] *= d[i];
                    pk[c] = fmaf(s[r4 + i][c], kk[i], pk[c]);
                    pq[c] = fmaf(s[r4 + i][c], qq[i], pq[c]);
                }
            }
        }
        /* Sum over the KL lanes sharing each column; every one of them gets the total. */
        for (int off = red_lo; off < red_hi; off <<= 1) {
#pragma unroll
            for (int c = 0; c < NC; c++) {
                pk[c] += __shfl_xor_sync(FULL_MASK, pk[c], off);
                pq[c] += __shfl_xor_sync(FULL_MASK, pq[c], off);
            }
        }
        if (KS == 2) add_other_half(sb, &w, pk, pq, NC);
        /* Delta rule and output: v' = b (v - S^T k), o = S^T q + (k . q) v', S += k v'^T. */
        float vk[DECODE_MAX_C]; /* kf * v', so that the update can use the unscaled k */
        const char *ov = token_vector(p->out, p->out_stride, TOKEN_DTYPE(p, out_dtype, TOK), row, pos, h, TOK);
#pragma unroll
        for (int c = 0; c < NC; c++) {
            const float vn = tok.beta * (bits_to_float(vbits[c], TOKEN_DTYPE(p, v_dtype, TOK)) - tok.kf * pk[c]);
            vk[c] = tok.kf * vn;
            const int j = tile_col(&w, c, V_FIRST, VEC);
            if (w.kl == 0 && w.kh == 0 && j < w.V) store_elem(ov, TOKEN_DTYPE(p, out_dtype, TOK), j, (int)p->out_stride[3], fmaf(tok.kq, vn, tok.qf * pq[c]));
        }
#pragma unroll
        for (int r4 = 0; r4 < NR; r4 += 4) {
            const float4 k4 = *(const float4 *)(lk + r4);
            const float kk[4] = {k4.x, k4.y, k4.z, k4.w};
#pragma unroll
            for (int i = 0; i < 4; i++) {
#pragma unroll
                for (int c = 0; c < NC; c++) s[r4 + i][c] = fmaf(kk[i], vk[c], s[r4 + i][c]);
            }
        }

        if (!TOK && p->idx_2d) { /* the state after each token goes to its own slot */
            const int64_t ts = t < p->idx_tokens
                                   ? load_index(p->state_indices, p->idx_dtype, n * p->idx_stride[0] + t * p->idx_stride[1])
                                   : -1;
            if (ts >= 0 && ts < p->pool_size) store_tile(p, &w, ts, h, s, BF16, V_FIRST, VEC, NR, NC, D128);
        }
    }
    if (TOK || !p->idx_2d) store_tile(p, &w, slot, h, s, BF16, V_FIRST, VEC, NR, NC, D128);
}

/* A CTA takes `ctas_per_head`-th of the warps of one (sequence, value head): all of them for
 * large batches, so that the token is staged once per head; fewer for small batches, so that
 * the work spreads over every SM. Each warp owns a slab of columns (all K rows) in registers;
 * the only cooperation between warps is the staged token. Every branch that skips work is
 * uniform over the CTA (a whole sequence) or masks a warp's columns, so every thread reaches
 * every __syncthreads. */
static __device__ __forceinline__ void decode_cta(const fkda_decode_params *p, stage_buffer *smem, const int BF16,
                                                  const int V_FIRST, const int VEC, const int NR, const int NC,
                                                  const int D128, const int LOAD_EF, const int TOK, const int KS)
{
    const uint32_t head = blockIdx.x; /* the grid is heads x ctas_per_head */
    const int slab = (int)blockIdx.y * (blockDim.x >> 5) + (threadIdx.x >> 5);
    int64_t n, h;
    split_head(p, head, &n, &h);
    const lane_tile w = make_lane_tile(p, slab, V_FIRST, NR, NC, D128, KS);

    /* TOK kernels serve one-token calls only (T = 1, no cu_seqlens, 1-D indices: the launch
     * checks), so their sequence is row n, position 0, and their slot one index load (H100,
     * fp32 pool: B = 1 H = 32 4.96 -> 4.68 us, 8 x 8 6.38 -> 5.76, though on another H100 B = 1
     * gained only 0.07 us; and without the spills this removed, 2048 heads 1.2-1.7% faster). */
    int64_t row = n, bos = 0;
    const int64_t len = TOK ? 1 : sequence_tokens(p, n, &row, &bos);
    if (len <= 0) return;
    const int64_t slot = TOK ? (p->state_indices ? load_index(p->state_indices, p->idx_dtype, n * p->idx_stride[0]) : n)
                             : read_slot(p, n);
    if (slot < 0 || slot >= p->pool_size) {
        zero_outputs(p, &w, row, bos, len, h, V_FIRST, VEC, NC, TOK);
        return;
    }
    float s[DECODE_MAX_R][DECODE_MAX_C];
    load_tile(p, &w, slot, h, s, BF16, V_FIRST, VEC, NR, NC, D128, LOAD_EF);
    run_tokens(p, &w, smem, n, h, row, bos, len, slot, s, NULL, 0, BF16, V_FIRST, VEC, NR, NC, D128, TOK, KS);
}

/* ---- the packed bf16 variant: one token per sequence, the state held as bf16 pairs -------- */

/* An experiment for large batches of bf16 pools (FKDA_DECODE_PACKED; by default from 2 heads per
 * SM): the plain kernel holds 64 fp32 values per lane, so a bf16 head needs 8 warps and an SM
 * has only ~64 KB of state loads in flight (1.5-1.7x the floor measured). Held as the bf16
 * pairs they arrive in, 64 registers carry 128 values: 4 warps cover a head, one CTA stages its
 * token once, and twice the bytes are in flight per register. Each value is unpacked where it is
 * used and the new state rounded once, on the way to its store, as in the plain kernel, so the
 * results are the same up to the order of the sums. One token per sequence only (T = 1, no
 * cu_seqlens, 1-D indices): across tokens the plain kernel keeps fp32. */
#define PK_NR 16 /* register rows per lane: KL = 8 lanes share a column */
#define PK_NC 8  /* register columns per lane: 4 lane groups x 8 = 32 columns per warp */

/* Register and half of (row r, column c): [K, V] pairs neighbouring columns, [V, K] rows. */
static __device__ __forceinline__ int pk_index(int r, int c, const int V_FIRST)
{
    return V_FIRST ? (r >> 1) * PK_NC + c : r * (PK_NC / 2) + (c >> 1);
}

static __device__ __forceinline__ float pk_get(const uint32_t *sp, int r, int c, const int V_FIRST)
{
    const uint32_t u = sp[pk_index(r, c, V_FIRST)];
    const int high = V_FIRST ? (r & 1) : (c & 1);
    return __uint_as_float(high ? (u & 0xffff0000u) : (u << 16));
}

/* Loads the lane's 128 values as 64 bf16 pairs, 16 bytes per load along the contiguous
 * dimension from `in` (its first row and column); streaming loads with STREAM (load_state_vec). */
static __device__ __forceinline__ void pk_load_state(const lane_tile *w, const unsigned short *in, bool live,
                                                     uint32_t *sp, const int V_FIRST, const int STREAM)
{
    const int NR = PK_NR, NC = PK_NC, VEC = 8;
    const int sk = V_FIRST ? 1 : 128, sv = V_FIRST ? 128 : 1;
    const int k0 = tile_row(w, 0, V_FIRST, VEC), j0 = tile_col(w, 0, V_FIRST, VEC);
    if (!V_FIRST) {
#pragma unroll
        for (int r = 0; r < NR; r++) {
            const uint4 *at = (const uint4 *)(in + (tile_row(w, r, 0, VEC) - k0) * sk);
            uint4 u = make_uint4(0u, 0u, 0u, 0u);
            if (live) u = STREAM ? __ldcs(at) : *at;
            sp[pk_index(r, 0, 0)] = u.x; sp[pk_index(r, 2, 0)] = u.y;
            sp[pk_index(r, 4, 0)] = u.z; sp[pk_index(r, 6, 0)] = u.w;
        }
    } else {
#pragma unroll
        for (int c = 0; c < NC; c++) {
#pragma unroll
            for (int rv = 0; rv < NR; rv += VEC) {
                const uint4 *at = (const uint4 *)(in + (tile_col(w, c, 1, VEC) - j0) * sv + (tile_row(w, rv, 1, VEC) - k0));
                uint4 u = make_uint4(0u, 0u, 0u, 0u);
                if (live) u = STREAM ? __ldcs(at) : *at;
                sp[pk_index(rv, c, 1)] = u.x; sp[pk_index(rv + 2, c, 1)] = u.y;
                sp[pk_index(rv + 4, c, 1)] = u.z; sp[pk_index(rv + 6, c, 1)] = u.w;
            }
        }
    }
}

static __device__ __forceinline__ void decode_cta_packed(const fkda_decode_params *p, stage_buffer *smem,
                                                         const int V_FIRST, const int LOAD_EF, const int KS)
{
    const int NR = PK_NR, NC = PK_NC, VEC = 8;
    const uint32_t head = blockIdx.x; /* the grid is heads x ctas_per_head */
    const int slab = (int)blockIdx.y * (blockDim.x >> 5) + (threadIdx.x >> 5);
    int64_t n, h;
    split_head(p, head, &n, &h);
    const lane_tile w = make_lane_tile(p, slab, V_FIRST, NR, NC, 1, KS);
    const int red_lo = V_FIRST ? 1 : w.LJ, red_hi = V_FIRST ? w.KL : 32;

    int64_t row, bos;
    if (sequence_tokens(p, n, &row, &bos) <= 0) return;
    const int64_t slot = read_slot(p, n);
    if (slot < 0 || slot >= p->pool_size) {
        zero_outputs(p, &w, row, bos, 1, h, V_FIRST, VEC, NC, 0);
        return;
    }

    /* The lane's first row and column of the state, in and out. */
    const int sk = V_FIRST ? 1 : 128, sv = V_FIRST ? 128 : 1;
    const int k0 = tile_row(&w, 0, V_FIRST, VEC), j0 = tile_col(&w, 0, V_FIRST, VEC);
    const int64_t *si = p->state_in_stride;
    const unsigned short *in = (const unsigned short *)p->state_in + slot * si[0] + h * si[1] +
                               (int64_t)k0 * sk + (int64_t)j0 * sv;
    const bool live = j0 < w.V; /* a CTA's spare warp (columns past V) loads and stores nothing */
    uint32_t sp[PK_NR * PK_NC / 2];
    pk_load_state(&w, in, live, sp, V_FIRST, LOAD_EF);

    const int64_t pos = bos, hq = query_head(p, h);
    uint32_t vbits[DECODE_MAX_C];
    load_v(p, &w, row, pos, h, vbits, V_FIRST, VEC, NC, 0);
    const staged_token tok = stage_token(p, &w, row, pos, h, hq, smem, NULL, 0, V_FIRST, VEC, NR * KS, 0);
    const int lane_rows = w.kl * (NR * KS + DECODE_ROW_PAD) + w.kh * NR;
    const float *lq = smem->q + lane_rows, *lk = smem->k + lane_rows, *ld = smem->d + lane_rows;

    /* Decay and the two dot products (the decayed values are recomputed in the update). */
    float pk[PK_NC], pq[PK_NC];
#pragma unroll
    for (int c = 0; c < NC; c++) pk[c] = pq[c] = 0.0f;
#pragma unroll
    for (int r4 = 0; r4 < NR; r4 += 4) {
        const float4 d4 = *(const float4 *)(ld + r4), k4 = *(const float4 *)(lk + r4), q4 = *(const float4 *)(lq + r4);
        const float d[4] = {d4.x, d4.y, d4.z, d4.w}, kk[4] = {k4.x, k4.y, k4.z, k4.w}, qq[4] = {q4.x, q4.y, q4.z, q4.w};
#pragma unroll
        for (int i = 0; i < 4; i++) {
#pragma unroll
            for (int c = 0; c < NC; c++) {
                const float x = pk_get(sp, r4 + i, c, V_FIRST) * d[i];
                pk[c] = fmaf(x, kk[i], pk[c]);
                pq[c] = fmaf(x, qq[i], pq[c]);
            }
        }
    }
    for (int off = red_lo; off < red_hi; off <<= 1) {
#pragma unroll
        for (int c = 0; c < NC; c++) {
            pk[c] += __shfl_xor_sync(FULL_MASK, pk[c], off);
            pq[c] += __shfl_xor_sync(FULL_MASK, pq[c], off);
        }
    }
    if (KS == 2) add_other_half(smem, &w, pk, pq, NC);
    float vk[PK_NC];
    const int64_t *os = p->out_stride;
#pragma unroll
    for (int c = 0; c < NC; c++) {
        const float vn = tok.beta * (bits_to_float(vbits[c], p->v_dtype) - tok.kf * pk[c]);
        vk[c] = tok.kf * vn;
        const int j = tile_col(&w, c, V_FIRST, VEC);
        if (w.kl == 0 && w.kh == 0 && j < w.V)
            store_float(p->out, p->out_dtype, row * os[0] + pos * os[1] + h * os[2] + j * os[3],
                        fmaf(tok.kq, vn, tok.qf * pq[c]));
    }

    /* The update, two values per register, each rounded once: S = diag(d) S + k (kf v')^T. */
    float dr[PK_NR], kr[PK_NR];
#pragma unroll
    for (int r4 = 0; r4 < NR; r4 += 4) {
        const float4 d4 = *(const float4 *)(ld + r4), k4 = *(const float4 *)(lk + r4);
        dr[r4] = d4.x; dr[r4 + 1] = d4.y; dr[r4 + 2] = d4.z; dr[r4 + 3] = d4.w;
        kr[r4] = k4.x; kr[r4 + 1] = k4.y; kr[r4 + 2] = k4.z; kr[r4 + 3] = k4.w;
    }
    if (!V_FIRST) {
#pragma unroll
        for (int r = 0; r < NR; r++) {
#pragma unroll
            for (int c = 0; c < NC; c += 2) {
                const float x0 = fmaf(kr[r], vk[c], pk_get(sp, r, c, 0) * dr[r]);
                const float x1 = fmaf(kr[r], vk[c + 1], pk_get(sp, r, c + 1, 0) * dr[r]);
                sp[pk_index(r, c, 0)] = pack_bf16x2(x0, x1);
            }
        }
    } else {
#pragma unroll
        for (int r = 0; r < NR; r += 2) {
#pragma unroll
            for (int c = 0; c < NC; c++) {
                const float x0 = fmaf(kr[r], vk[c], pk_get(sp, r, c, 1) * dr[r]);
                const float x1 = fmaf(kr[r + 1], vk[c], pk_get(sp, r + 1, c, 1) * dr[r + 1]);
                sp[pk_index(r, c, 1)] = pack_bf16x2(x0, x1);
            }
        }
    }

    const int64_t *so = p->state_out_stride;
    unsigned short *out = (unsigned short *)p->state_out + slot * so[0] + h * so[1] + (int64_t)k0 * sk + (int64_t)j0 * sv;
    if (!live) return;
    if (!V_FIRST) {
#pragma unroll
        for (int r = 0; r < NR; r++)
            __stcs((uint4 *)(out + (tile_row(&w, r, 0, VEC) - k0) * sk),
                   make_uint4(sp[pk_index(r, 0, 0)], sp[pk_index(r, 2, 0)], sp[pk_index(r, 4, 0)], sp[pk_index(r, 6, 0)]));
    } else {
#pragma unroll
        for (int c = 0; c < NC; c++)
#pragma unroll
            for (int rv = 0; rv < NR; rv += VEC)
                __stcs((uint4 *)(out + (tile_col(&w, c, 1, VEC) - j0) * sv + (tile_row(&w, rv, 1, VEC) - k0)),
                       make_uint4(sp[pk_index(rv, c, 1)], sp[pk_index(rv + 2, c, 1)], sp[pk_index(rv + 4, c, 1)],
                                  sp[pk_index(rv + 6, c, 1)]));
    }
}

/* ---- the streaming variant: persistent CTAs, each head's state prefetched into shared memory */

/* Large batches of dense 128 fp32 heads on sm_90, on request (FKDA_DECODE_STREAM=1). The plain
 * kernel's CTAs each wait for their state (an index load, then the state's loads) before they
 * compute, so part of every CTA's life moves no bytes. Here a CTA stays resident and walks heads
 * blockIdx.x, + gridDim.x, ...: one thread resolves the slot of a head DECODE_STREAM_BUFS - 1
 * heads ahead and starts a bulk copy of its whole state (one contiguous block) into a
 * shared-memory ring, so that DRAM always has the next heads' bytes in flight while the CTA
 * computes the current one from registers, and every thread loads the next head's token inputs
 * while it works on this one. It was the default for large fp32 batches until the plain
 * kernel's staging got shorter and measured faster on the H100 (docs/decode-notes.md, run 11);
 * kept, tested and benchmarked as the alternative for GPUs where the balance differs. */
#define DECODE_STREAM_BUFS 3 /* ring slots per CTA: 3 x 64 KB (fp32), so one CTA per SM */

typedef struct stream_ring {
    unsigned long long full[DECODE_STREAM_BUFS]; /* mbarriers: the slot's bytes have landed */
    long long slot[DECODE_STREAM_BUFS];          /* the pool slot being copied in, or -1: none */
} stream_ring;

/* The ring's helpers use sm_90 instructions (bulk copies, mbarrier transactions); the sm_80
 * pass compiles none of the streaming code. */
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900
/* Loads a token's inputs (token_inputs) a head early, for decode_stream_cta. */
static __device__ __forceinline__ void load_token_inputs(const fkda_decode_params *p, const lane_tile *w, int64_t row,
                                                         int64_t pos, int64_t h, token_inputs *ti, const int V_FIRST,
                                                         const int VEC, const int NC)
{
    load_token_bits(p, w, row, pos, h, query_head(p, h), 0, &ti->keys, 0, 0);
    load_v(p, w, row, pos, h, ti->v, V_FIRST, VEC, NC, 0);
}

/* What thread 0 fetches for one of its heads an iteration before it issues the head's copy:
 * the raw loads only (the sequence bounds and the slot, as stored), so that nothing waits on
 * them until stream_pending_slot runs an iteration later. (2-D indices with accepted counts
 * chain two loads; that case waits for the first.) */
typedef struct stream_pending {
    int64_t head;     /* -1: past the last head */
    int64_t cu0, cu1; /* cu_seqlens[n], cu_seqlens[n + 1] as loaded (varlen only) */
    int64_t slot;     /* the index as loaded */
} stream_pending;

static __device__ __forceinline__ stream_pending stream_fetch(const fkda_decode_params *p, int64_t i)
{
    stream_pending f;
    f.head = blockIdx.x + i * (int64_t)gridDim.x;
    f.cu0 = f.cu1 = 0;
    f.slot = -1;
    if (f.head >= p->N * p->HV) {
        f.head = -1;
        return f;
    }
    int64_t n, h;
    split_head(p, f.head, &n, &h);
    if (p->cu_seqlens) {
        f.cu0 = load_index(p->cu_seqlens, p->cu_dtype, n * p->cu_stride);
        f.cu1 = load_index(p->cu_seqlens, p->cu_dtype, (n + 1) * p->cu_stride);
    }
    f.slot = read_slot(p, n);
    return f;
}

/* The slot to copy for a fetched head, or -1 (past the last head, no tokens, skipped); the
 * same clamps as sequence_tokens and decode_cta. */
static __device__ __forceinline__ int64_t stream_pending_slot(const fkda_decode_params *p, const stream_pending *f)
{
    if (f->head < 0) return -1;
    if (p->cu_seqlens) {
        const int64_t a = min(max(f->cu0, (int64_t)0), p->T), b = min(max(f->cu1, a), p->T);
        if (b - a <= 0) return -1;
    } else if (p->T <= 0) {
        return -1;
    }
    return f->slot < 0 || f->slot >= p->pool_size ? -1 : f->slot;
}

/* Thread 0: start the copy of the i-th head of this CTA (in `slot`, from stream_pending_slot) into
 * ring slot i % DECODE_STREAM_BUFS, or mark the ring slot empty. */
static __device__ __forceinline__ void stream_issue(const fkda_decode_params *p, stream_ring *ring,
                                                    unsigned char *bufs, int64_t i, int64_t slot,
                                                    uint32_t head_bytes, const int BF16)
{
    const int b = (int)(i % DECODE_STREAM_BUFS);
    if (slot >= 0) {
        int64_t n, h;
        split_head(p, blockIdx.x + i * (int64_t)gridDim.x, &n, &h);
        const int64_t *st = p->state_in_stride;
        const char *src = (const char *)state_at(p->state_in, slot * st[0] + h * st[1], BF16);
        const uint32_t mbar = (uint32_t)__cvta_generic_to_shared(&ring->full[b]);
        /* The ring slot was last read through the generic proxy: order that before the async
         * proxy's writes. */
        asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
        mbar_arrive_expect_tx(mbar, head_bytes);
        bulk_copy_g2s((uint32_t)__cvta_generic_to_shared(bufs + (size_t)b * head_bytes), src, head_bytes, mbar);
    }
    ring->slot[b] = slot;
}

/* Loads the lane's tile from a head's dense 128 x 128 state in shared memory (the same
 * offsets as load_tile's in global memory). */
static __device__ __forceinline__ void load_tile_shared(const lane_tile *w, const unsigned char *buf,
                                                        float s[DECODE_MAX_R][DECODE_MAX_C], const int BF16,
                                                        const int V_FIRST, const int VEC, const int NR,
                                                        const int NC)
{
    const int sk = V_FIRST ? 1 : 128, sv = V_FIRST ? 128 : 1;
    const int k0 = tile_row(w, 0, V_FIRST, VEC), j0 = tile_col(w, 0, V_FIRST, VEC);
    load_tile_from(w, buf + (size_t)(k0 * sk + j0 * sv) * (BF16 ? 2 : 4), sk, sv, s, BF16, V_FIRST, VEC, NR, NC, 0);
}
#endif /* sm_90 */

static __device__ __forceinline__ void decode_stream_cta(const fkda_decode_params *p, stage_buffer *stage,
                                                         stream_ring *ring, unsigned char *bufs, const int BF16,
                                                         const int V_FIRST, const int VEC, const int NR,
                                                         const int NC)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    const uint32_t head_bytes = 128 * 128 * (BF16 ? 2 : 4);
    const int64_t heads = p->N * p->HV;
    const lane_tile w = make_lane_tile(p, threadIdx.x >> 5, V_FIRST, NR, NC, 1, 1);
    if (threadIdx.x == 0) {
        for (int b = 0; b < DECODE_STREAM_BUFS; b++) mbar_init((uint32_t)__cvta_generic_to_shared(&ring->full[b]), 1);
        mbar_fence_init();
        for (int i = 0; i < DECODE_STREAM_BUFS - 1; i++) {
            const stream_pending f = stream_fetch(p, i);
            stream_issue(p, ring, bufs, i, stream_pending_slot(p, &f), head_bytes, BF16);
        }
    }
    /* Thread 0: the loads for the head the next refill copies, fetched an iteration early. */
    stream_pending next;
    next.head = -1;
    if (threadIdx.x == 0) next = stream_fetch(p, DECODE_STREAM_BUFS - 1);
    /* Every thread: the first token's inputs of its next head, loaded a head early, so that their
     * latency is not on each head's path (sequences of T tokens from row n, position 0; varlen
     * sequences start where cu_seqlens says and load theirs in run_tokens). */
    const int pipelined = p->pipeline_inputs && !p->cu_seqlens;
    token_inputs ahead;
    if (pipelined) {
        int64_t n0, h0;
        split_head(p, blockIdx.x, &n0, &h0);
        load_token_inputs(p, &w, n0, 0, h0, &ahead, V_FIRST, VEC, NC);
    }
    uint32_t parity = 0; /* bit b: the phase of ring slot b's barrier to wait for next */
    for (int64_t i = 0;; i++) {
        const int64_t head = blockIdx.x + i * (int64_t)gridDim.x;
        if (head >= heads) break;
        const token_inputs current = ahead;
        if (pipelined && head + gridDim.x < heads) {
            int64_t n1, h1;
            split_head(p, head + gridDim.x, &n1, &h1);
            load_token_inputs(p, &w, n1, 0, h1, &ahead, V_FIRST, VEC, NC);
        }
        /* Every thread is done with head i - 1 (its ring slot, the stage buffers): refill. */
        __syncthreads();
        if (threadIdx.x == 0) {
            stream_issue(p, ring, bufs, i + DECODE_STREAM_BUFS - 1, stream_pending_slot(p, &next), head_bytes, BF16);
            next = stream_fetch(p, i + DECODE_STREAM_BUFS); /* not waited on until iteration i + 1 */
        }
        const int b = (int)(i % DECODE_STREAM_BUFS);
        const int64_t slot = ring->slot[b];
        /* Whether this ring slot was armed is what stream_issue recorded, nothing else: every
         * armed phase is waited for, so the parities stay in step whatever device memory says. */
        if (slot >= 0) {
            mbar_wait((uint32_t)__cvta_generic_to_shared(&ring->full[b]), (parity >> b) & 1u);
            parity ^= 1u << b;
        }
        int64_t n, h;
        split_head(p, head, &n, &h);
        int64_t row, bos;
        const int64_t len = sequence_tokens(p, n, &row, &bos);
        if (len <= 0) continue;
        if (slot < 0) {
            zero_outputs(p, &w, row, bos, len, h, V_FIRST, VEC, NC, 0);
            continue;
        }
        float s[DECODE_MAX_R][DECODE_MAX_C];
        load_tile_shared(&w, bufs + (size_t)b * head_bytes, s, BF16, V_FIRST, VEC, NR, NC);
        run_tokens(p, &w, stage, n, h, row, bos, len, slot, s, &current, pipelined, BF16, V_FIRST, VEC, NR, NC, 1, 0, 1);
    }
#else
    __trap(); /* never launched below sm_90 (fkda_decode_recurrent_launch checks) */
#endif
}

/* ---- the specialisations ------------------------------------------------------------------ */

/* Launched with programmatic stream serialization (the default on sm_90), a kernel may start
 * while the kernel before it on the stream finishes; it must wait here before it reads anything
 * that kernel may have written (its inputs, the pool). Launched normally, both instructions
 * return at once. */
static __device__ __forceinline__ void wait_for_prior_grid(void)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
    /* Let the next kernel on the stream launch once every CTA of this one is running (it waits
     * for this grid's completion and memory itself, at its own griddepcontrol.wait). */
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

/* name, pool is bf16, [V, K] layout, elements per state vector, register rows, register columns,
 * dense 128 (K = V = 128 and the state's rows 128 elements apart: every offset inside a head is
 * a compile-time constant plus one per lane; the common case, and the fastest), streaming
 * (evict-first) state loads, all-bf16 token tensors (TOKEN_DTYPE, the one-token call of a bf16
 * model: dense 128 pools only; H100, bf16 pool: B = 1 H = 32 5.17 -> 4.53 us, 8 x 8 6.29 -> 5.53; fp32 pool
 * 64 x 8 30.9 -> 30.1, neutral from 2048 heads; 1 or 2, token_offset says which). The "narrow" kernels (32 values per lane, 16 warps per head) serve
 * small batches, whose pools are small next to L2, so their loads are always streaming.
 * Every kernel is launched with up to 256 threads and capped at 128 registers, so that two
 * 8-warp CTAs fit on an SM (16 warps, 128 KB of fp32 state loads in flight at most). The last
 * column: warps sharing the keys of a column (2: split K, the wide fp32 [K, V] tiles). */
#define DECODE_VARIANTS(X)                                      \
    X(decode_f32_kv_128, 0, 0, 4, 16, 4, 1, 0, 0, 1)            \
    X(decode_f32_kv_128_ks, 0, 0, 4, 16, 4, 1, 0, 0, 2)         \
    X(decode_f32_vk_128, 0, 1, 4, 16, 4, 1, 0, 0, 1)            \
    X(decode_bf16_kv_128, 1, 0, 4, 16, 4, 1, 0, 0, 1)           \
    X(decode_bf16_vk_128, 1, 1, 8, 16, 4, 1, 0, 0, 1)           \
    X(decode_f32_kv_128_ef, 0, 0, 4, 16, 4, 1, 1, 0, 1)         \
    X(decode_f32_kv_128_ef_ks, 0, 0, 4, 16, 4, 1, 1, 0, 2)      \
    X(decode_f32_vk_128_ef, 0, 1, 4, 16, 4, 1, 1, 0, 1)         \
    X(decode_bf16_kv_128_ef, 1, 0, 4, 16, 4, 1, 1, 0, 1)        \
    X(decode_bf16_vk_128_ef, 1, 1, 8, 16, 4, 1, 1, 0, 1)        \
    X(decode_f32_kv_128_tok, 0, 0, 4, 16, 4, 1, 0, 1, 1)        \
    X(decode_f32_kv_128_tok_ks, 0, 0, 4, 16, 4, 1, 0, 1, 2)     \
    X(decode_f32_vk_128_tok, 0, 1, 4, 16, 4, 1, 0, 1, 1)        \
    X(decode_bf16_kv_128_tok, 1, 0, 4, 16, 4, 1, 0, 1, 1)       \
    X(decode_bf16_vk_128_tok, 1, 1, 8, 16, 4, 1, 0, 1, 1)       \
    X(decode_f32_kv_128_ef_tok, 0, 0, 4, 16, 4, 1, 1, 1, 1)     \
    X(decode_f32_kv_128_ef_tok_ks, 0, 0, 4, 16, 4, 1, 1, 1, 2)  \
    X(decode_f32_vk_128_ef_tok, 0, 1, 4, 16, 4, 1, 1, 1, 1)     \
    X(decode_bf16_kv_128_ef_tok, 1, 0, 4, 16, 4, 1, 1, 1, 1)    \
    X(decode_bf16_vk_128_ef_tok, 1, 1, 8, 16, 4, 1, 1, 1, 1)    \
    X(decode_f32_kv_128_narrow, 0, 0, 4, 8, 4, 1, 1, 0, 1)      \
    X(decode_f32_vk_128_narrow, 0, 1, 4, 8, 4, 1, 1, 0, 1)      \
    X(decode_bf16_kv_128_narrow, 1, 0, 4, 8, 4, 1, 1, 0, 1)     \
    X(decode_bf16_vk_128_narrow, 1, 1, 8, 8, 4, 1, 1, 0, 1)     \
    X(decode_f32_kv_128_narrow_tok, 0, 0, 4, 8, 4, 1, 1, 1, 1)  \
    X(decode_f32_vk_128_narrow_tok, 0, 1, 4, 8, 4, 1, 1, 1, 1)  \
    X(decode_bf16_kv_128_narrow_tok, 1, 0, 4, 8, 4, 1, 1, 2, 1) \
    X(decode_bf16_vk_128_narrow_tok, 1, 1, 8, 8, 4, 1, 1, 2, 1) \
    X(decode_f32_kv_vec, 0, 0, 4, 16, 4, 0, 0, 0, 1)            \
    X(decode_f32_vk_vec, 0, 1, 4, 16, 4, 0, 0, 0, 1)            \
    X(decode_bf16_kv_vec, 1, 0, 8, 8, 8, 0, 0, 0, 1)            \
    X(decode_bf16_vk_vec, 1, 1, 8, 8, 8, 0, 0, 0, 1)            \
    X(decode_f32_kv_scalar, 0, 0, 1, 16, 4, 0, 0, 0, 1)         \
    X(decode_f32_vk_scalar, 0, 1, 1, 16, 4, 0, 0, 0, 1)         \
    X(decode_bf16_kv_scalar, 1, 0, 1, 16, 4, 0, 0, 0, 1)        \
    X(decode_bf16_vk_scalar, 1, 1, 1, 16, 4, 0, 0, 0, 1)        

#define DECODE_DEFINE_KERNEL(name, BF16, V_FIRST, VEC, NR, NC, D128, LOAD_EF, TOK, KS)           \
    __global__ void __launch_bounds__(32 * DECODE_MAX_WARPS_PER_CTA, 2)                           \
        name(const __grid_constant__ fkda_decode_params p)                                       \
    {                                                                                           \
        __shared__ stage_buffer decode_stage[2];                                                \
        wait_for_prior_grid();                                                                  \
        decode_cta(&p, decode_stage, BF16, V_FIRST, VEC, NR, NC, D128, LOAD_EF, TOK, KS);       \
    }
DECODE_VARIANTS(DECODE_DEFINE_KERNEL)

/* The streaming kernels (dense 128 fp32 heads, 8 warps = one head per CTA): name, bf16, [V, K],
 * VEC, NR, NC, CTAs per SM (the ring's 3 x 64 KB leaves room for one). bf16 pools were measured
 * slower streamed (89 us against 79 us for 2048 heads: the per-head latency chain, not the
 * bytes, bounds a bf16 head; docs/decode-notes.md) and take the plain kernel. */
#define DECODE_STREAM_VARIANTS(X)                     \
    X(decode_f32_kv_stream, 0, 0, 4, 16, 4, 1)        \
    X(decode_f32_vk_stream, 0, 1, 4, 16, 4, 1)

#define DECODE_DEFINE_STREAM_KERNEL(name, BF16, V_FIRST, VEC, NR, NC, PER_SM)                    \
    __global__ void __launch_bounds__(32 * DECODE_MAX_WARPS_PER_CTA, PER_SM)                      \
        name(const __grid_constant__ fkda_decode_params p)                                       \
    {                                                                                           \
        extern __shared__ __align__(128) unsigned char decode_ring_smem[];                      \
        const size_t ring_bytes = (size_t)DECODE_STREAM_BUFS * 128 * 128 * (BF16 ? 2 : 4);      \
        wait_for_prior_grid();                                                                  \
        decode_stream_cta(&p, (stage_buffer *)(decode_ring_smem + ring_bytes),                   \
                          (stream_ring *)(decode_ring_smem + ring_bytes + 2 * sizeof(stage_buffer)), \
                          decode_ring_smem, BF16, V_FIRST, VEC, NR, NC);                        \
    }
DECODE_STREAM_VARIANTS(DECODE_DEFINE_STREAM_KERNEL)

/* The packed bf16 kernels (4 warps = one dense 128 head per CTA, 128 registers): name, [V, K]
 * layout, streaming state loads, warps sharing the keys of a column (2: split K, [K, V] only:
 * 32 columns x 64 keys per warp, 128-byte line loads, as in the wide fp32 tiles). */
#define DECODE_DEFINE_PACKED_KERNEL(name, V_FIRST, LOAD_EF, KS)                                  \
    __global__ void __launch_bounds__(128, 4) name(const __grid_constant__ fkda_decode_params p) \
    {                                                                                           \
        __shared__ stage_buffer decode_stage[1];                                                \
        wait_for_prior_grid();                                                                  \
        decode_cta_packed(&p, decode_stage, V_FIRST, LOAD_EF, KS);                              \
    }
DECODE_DEFINE_PACKED_KERNEL(decode_bf16_kv_packed, 0, 0, 1)
DECODE_DEFINE_PACKED_KERNEL(decode_bf16_vk_packed, 1, 0, 1)
DECODE_DEFINE_PACKED_KERNEL(decode_bf16_kv_packed_ef, 0, 1, 1)
DECODE_DEFINE_PACKED_KERNEL(decode_bf16_vk_packed_ef, 1, 1, 1)
DECODE_DEFINE_PACKED_KERNEL(decode_bf16_kv_packed_ks, 0, 0, 2)
DECODE_DEFINE_PACKED_KERNEL(decode_bf16_kv_packed_ef_ks, 0, 1, 2)

typedef void (*decode_kernel_fn)(const fkda_decode_params);

typedef struct decode_variant {
    decode_kernel_fn kernel;
    const char *name;
    int bf16, v_first, vec, nr, nc, dense128;
    int load_ef; /* streaming (evict-first) state loads */
    int tok;     /* compiled for all-bf16 token tensors (TOKEN_DTYPE); 2: with 64-bit token offsets */
    int ks;      /* warps sharing the keys of a column (split K: 2) */
    int stream_per_sm; /* 0: a plain kernel; else a streaming one and its CTAs per SM */
} decode_variant;

#define DECODE_TABLE_ENTRY(name, BF16, V_FIRST, VEC, NR, NC, D128, LOAD_EF, TOK, KS) \
    {name, #name, BF16, V_FIRST, VEC, NR, NC, D128, LOAD_EF, TOK, KS, 0},
#define DECODE_STREAM_TABLE_ENTRY(name, BF16, V_FIRST, VEC, NR, NC, PER_SM) \
    {name, #name, BF16, V_FIRST, VEC, NR, NC, 1, 0, 0, 1, PER_SM},
static const decode_variant decode_variants[] = {DECODE_VARIANTS(DECODE_TABLE_ENTRY)};
static const decode_variant decode_stream_variants[] = {DECODE_STREAM_VARIANTS(DECODE_STREAM_TABLE_ENTRY)};

/* Launches `kernel` on the stream; with `pdl`, as a programmatic dependent of the kernel before
 * it: the launch overlaps that kernel's tail, and wait_for_prior_grid keeps the order of memory
 * (measured 0.6-0.8 us less per call at small batches in a graph of decodes; docs/decode-notes.md). */
static cudaError_t launch_decode_kernel(decode_kernel_fn kernel, dim3 grid, unsigned threads, size_t smem,
                                        cudaStream_t stream, const fkda_decode_params *p, int pdl)
{
    cudaLaunchConfig_t cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.gridDim = grid;
    cfg.blockDim = dim3(threads, 1, 1);
    cfg.dynamicSmemBytes = smem;
    cfg.stream = stream;
    cudaLaunchAttribute attr;
    memset(&attr, 0, sizeof attr);
    attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr.val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = &attr;
    cfg.numAttrs = pdl ? 1 : 0;
    void *args[] = {(void *)p};
    return cudaLaunchKernelExC(&cfg, (const void *)kernel, args);
}

#define DECODE_MAX_DEVICES 64 /* devices whose shared-memory attribute is remembered */

/* A tuning knob that is on or off: 1 or 0 where the environment variable is "1" or "0", -1 where
 * it is unset or anything else (the launch's own rule then decides). */
static int knob_switch(const char *name)
{
    const char *value = getenv(name);
    if (value == NULL || (value[0] != '0' && value[0] != '1') || value[1] != '\0') return -1;
    return value[0] == '1';
}

static size_t stream_smem_bytes(const decode_variant *v)
{
    return (size_t)DECODE_STREAM_BUFS * 128 * 128 * (v->bf16 ? 2 : 4) + 2 * sizeof(stage_buffer) + sizeof(stream_ring);
}

/* ---- launch ------------------------------------------------------------------------------- */

/* Whether the pool allows 16-byte vectors of `vec` elements along its contiguous dimension. */
static int pool_vectorizable(const void *data, const int64_t *stride, int v_first, int K, int V, int elem,
                             int vec)
{
    const int contiguous = v_first ? 2 : 3, other = v_first ? 3 : 2;
    const int extent = v_first ? K : V;
    return (uintptr_t)data % 16 == 0 && stride[contiguous] == 1 && stride[other] % vec == 0 &&
           stride[0] % vec == 0 && stride[1] % vec == 0 && extent % vec == 0 && elem * vec == 16;
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

extern "C" fkda_status fkda_decode_recurrent_launch(fkda_decode_params *p, int sm_count, int cc_major,
                                                   int64_t l2_bytes, cudaStream_t stream_arg)
{
    if (p->N == 0 || p->T == 0) return FKDA_OK;
    const int elem = p->state_bf16 ? 2 : 4, vec = 16 / elem;
    const int vectors =
        pool_vectorizable(p->state_in, p->state_in_stride, p->state_v_first, p->K, p->V, elem, vec) &&
        pool_vectorizable(p->state_out, p->state_out_stride, p->state_v_first, p->K, p->V, elem, vec);
    /* Offsets inside one head's state are 32-bit in the kernel. */
    const int64_t *si = p->state_in_stride, *so = p->state_out_stride;
    const int64_t span_in = (p->K - 1) * si[2] + (p->V - 1) * si[3], span_out = (p->K - 1) * so[2] + (p->V - 1) * so[3];
    if (span_in >= 0x7fffffff || span_out >= 0x7fffffff)
        return fkda_fail(FKDA_ERROR_UNSUPPORTED,
                         "state_pool: the strides of one head's [K, V] state span %lld elements; the CUDA decode "
                         "needs fewer than 2^31",
                         (long long)(span_in > span_out ? span_in : span_out));
    /* Dense 128: K = V = 128 and, in and out, the rows of one head's state 128 elements apart. */
    const int row_stride = p->state_v_first ? 3 : 2;
    const int dense128 = vectors && p->K == 128 && p->V == 128 && si[row_stride] == 128 && so[row_stride] == 128;
    /* Per-element offsets along a token vector are 32-bit in the kernel (load_elem). */
    const struct { const char *name; int64_t stride; } vectors_along[] = {
        {"q", p->q_stride[3]}, {"k", p->k_stride[3]}, {"g", p->g_stride[3]}, {"v", p->v_stride[3]},
        {"out", p->out_stride[3]}, {"dt_bias", p->dt_bias ? p->dt_bias_stride[1] : 0}};
    for (size_t i = 0; i < sizeof vectors_along / sizeof vectors_along[0]; i++)
        if (vectors_along[i].stride >= (1 << 22) || vectors_along[i].stride <= -(1 << 22))
            return fkda_fail(FKDA_ERROR_UNSUPPORTED,
                             "%s: the stride of its last dimension (%lld elements) is too large for the CUDA decode "
                             "(at most 2^22)",
                             vectors_along[i].name, (long long)vectors_along[i].stride);
    const int64_t heads = p->N * p->HV;
    if (heads > 0x7fffffff) /* split_head divides in 32 bits */
        return fkda_fail(FKDA_ERROR_UNSUPPORTED, "q: N * HV = %lld heads is too many for one launch", (long long)heads);

    /* Tuning knobs for bench/bench_decode_gpu.py and the tests' forced variants (unset: the rules
     * below). Read on every call, not once, because the benchmark changes them between calls. */
    /* Programmatic dependent launch on sm_90 (the wait is in the sm_90a image); FKDA_DECODE_PDL=0 turns it off. */
    const int pdl = cc_major == 9 && knob_switch("FKDA_DECODE_PDL") != 0;
    const char *knob_warps = getenv("FKDA_DECODE_WARPS_PER_CTA");

    /* The streaming kernel (decode_stream_cta: dense fp32 heads on sm_90 through a shared-memory
     * ring) only on request, FKDA_DECODE_STREAM=1: once the plain kernel's staging skipped empty
     * key slots, plain measured faster at every large batch on the H100 (105.9 against 110.8 us
     * at B*H = 2048, 1553 against 1612 at 32768; docs/decode-notes.md). */
    p->pipeline_inputs = knob_switch("FKDA_DECODE_PIPELINE") != 0;
    /* Streaming (evict-first) loads of the state while the heads' states (as if every slot were
     * live) take at most twice the L2: on the H100 (50 MB of L2), faster up to 67 MB of state,
     * slower from 134 MB (load_state_vec; docs/decode-notes.md, run 17). */
    const int64_t state_bytes = heads * p->K * p->V * (p->state_bf16 ? 2 : 4);
    int load_ef = state_bytes <= 2 * l2_bytes;
    const int knob_load_ef = knob_switch("FKDA_DECODE_LOAD_EF");
    if (knob_load_ef >= 0) load_ef = knob_load_ef;
    const int streamable = dense128 && !p->state_bf16 && cc_major == 9;
    const int stream = streamable && knob_switch("FKDA_DECODE_STREAM") == 1;
    if (stream) {
        const decode_variant *sv = NULL;
        for (size_t i = 0; i < sizeof decode_stream_variants / sizeof decode_stream_variants[0]; i++)
            if (decode_stream_variants[i].bf16 == (p->state_bf16 != 0) && decode_stream_variants[i].v_first == (p->state_v_first != 0))
                sv = &decode_stream_variants[i];
        const size_t smem = stream_smem_bytes(sv);
        /* Once per device and kernel (a host call that would otherwise run on every decode). */
        static int smem_set[DECODE_MAX_DEVICES][sizeof decode_stream_variants / sizeof decode_stream_variants[0]];
        int device = 0;
        cudaError_t err = cudaGetDevice(&device);
        if (err != cudaSuccess) return fkda_fail(FKDA_ERROR_DEVICE, "decode: cudaGetDevice: %s", cudaGetErrorString(err));
        int *set = device >= 0 && device < DECODE_MAX_DEVICES ? &smem_set[device][sv - decode_stream_variants] : NULL;
        if (set == NULL || !*set) {
            err = cudaFuncSetAttribute(sv->kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
            if (err != cudaSuccess) return fkda_fail(FKDA_ERROR_DEVICE, "decode: %s: %s", sv->name, cudaGetErrorString(err));
            if (set) *set = 1; /* a race here only repeats the call */
        }
        const int64_t ctas = heads < (int64_t)sm_count * sv->stream_per_sm ? heads : (int64_t)sm_count * sv->stream_per_sm;
        p->lanes_k = 128 / sv->nr;
        p->warps_per_head = DECODE_MAX_WARPS_PER_CTA;
        p->warps_per_cta = DECODE_MAX_WARPS_PER_CTA;
        p->ctas_per_head = 1;
        err = launch_decode_kernel(sv->kernel, dim3((unsigned)ctas, 1, 1), 32 * DECODE_MAX_WARPS_PER_CTA, smem, stream_arg, p, pdl);
        if (err != cudaSuccess) {
            (void)cudaGetLastError(); /* leave no sticky error for a later, unrelated check */
            return fkda_fail(FKDA_ERROR_DEVICE, "decode: launch of %s: %s", sv->name, cudaGetErrorString(err));
        }
        return FKDA_OK;
    }

    /* Wide fp32 and packed bf16 [K, V] heads: K split between two warps (128-byte line loads)
     * beyond one wave of two CTAs per SM. Measured on the H100 (A/B/A/B in one call each), fp32:
     * 2048 heads 104.2 -> 102.6 us, 512 heads 29.1 -> 28.3, 8192 heads 399 -> 393; but 256
     * heads, where every head is on its SM from the start and a head's path is the time, 14.27 ->
     * 14.63 (the pair's barrier). Packed bf16: 2048 heads 55.2 -> 54.3 (64 x 32) and 55.8 -> 54.8
     * (256 x 8), 8192 heads 200.4 -> 199.0, 512 heads unchanged (docs/decode-notes.md, run 39).
     * FKDA_DECODE_KSPLIT=0 or 1 forces it. */
    int ksplit = heads > 2 * (int64_t)sm_count;
    const int knob_ksplit = knob_switch("FKDA_DECODE_KSPLIT");
    if (knob_ksplit >= 0) ksplit = knob_ksplit;

    /* Large batches of one-token bf16 decodes: the packed kernel (decode_cta_packed), from 2
     * heads per SM. */
    const int packable = dense128 && p->state_bf16 && !p->cu_seqlens && p->T == 1 && !p->idx_2d;
    int packed = packable && heads >= 2 * (int64_t)sm_count;
    const int knob_packed = knob_switch("FKDA_DECODE_PACKED");
    if (knob_packed >= 0) packed = packable && knob_packed;
    if (packed) {
        const int ks = !p->state_v_first && ksplit ? 2 : 1;
        decode_kernel_fn kernel = p->state_v_first ? (load_ef ? decode_bf16_vk_packed_ef : decode_bf16_vk_packed)
                                  : ks == 2        ? (load_ef ? decode_bf16_kv_packed_ef_ks : decode_bf16_kv_packed_ks)
                                                   : (load_ef ? decode_bf16_kv_packed_ef : decode_bf16_kv_packed);
        p->lanes_k = 128 / (PK_NR * ks);
        p->warps_per_head = ks * (128 / ((32 / p->lanes_k) * PK_NC));
        int per_cta = p->warps_per_head;
        while (per_cta > ks && 3 * heads * ((p->warps_per_head + per_cta - 1) / per_cta) < sm_count) per_cta /= 2;
        p->warps_per_cta = per_cta;
        p->ctas_per_head = (p->warps_per_head + per_cta - 1) / per_cta;
        const cudaError_t err =
            launch_decode_kernel(kernel, dim3((unsigned)heads, (unsigned)p->ctas_per_head, 1), 32 * per_cta, 0, stream_arg, p, pdl);
        if (err != cudaSuccess) {
            (void)cudaGetLastError();
            return fkda_fail(FKDA_ERROR_DEVICE, "decode: launch of the packed kernel: %s", cudaGetErrorString(err));
        }
        return FKDA_OK;
    }

    /* The variant for this pool: compiled for all-bf16 tokens where they are and their offsets
     * fit in 31 bits (never where not), with streaming loads as load_ef asks, where such
     * variants exist. */
    const int b16 = FKDA_DTYPE_BF16;
    int tok = p->q_dtype == b16 && p->k_dtype == b16 && p->v_dtype == b16 && p->g_dtype == b16 &&
              p->beta_dtype == b16 && p->out_dtype == b16 && p->T == 1 && !p->cu_seqlens && !p->idx_2d &&
              tokens_fit_31_bits(p);
    if (knob_switch("FKDA_DECODE_BF16_TOKENS") == 0) tok = 0;
    /* Small batches of dense heads (fewer heads than SMs): narrow tiles, 32 values per lane and
     * 16 warps per head, so that each warp's path (the time at these sizes) is shorter. bf16
     * pools only below a quarter of the SMs: measured on the H100 (8 x 4 bf16 tiles, generic
     * token kernels), narrow bf16 took 4.82 us against 5.90 at 8 heads and 5.20 against 5.55 at
     * 32, but 7.14 against 6.22 at 64. With the one-token all-bf16 kernels below a sixth: narrow
     * 3.95 us against 4.66 wide at 8 heads, 4.02 / 4.08 at 16, 4.21 / 4.17 at 24, 4.55 / 4.32 at
     * 32 ([K, V] pool, B = 1 and B*8 heads alike). */
    int narrow = dense128 && (!p->state_bf16 ? heads < sm_count : tok ? 6 * heads < sm_count : 4 * heads < sm_count);
    const int knob_narrow = knob_switch("FKDA_DECODE_NARROW");
    if (knob_narrow >= 0) narrow = dense128 && knob_narrow;
    const decode_variant *var = NULL;
    int best = -1;
    for (size_t i = 0; i < sizeof decode_variants / sizeof decode_variants[0]; i++) {
        const decode_variant *d = &decode_variants[i];
        if (d->bf16 != (p->state_bf16 != 0) || d->v_first != (p->state_v_first != 0) || (d->vec > 1) != (vectors != 0) ||
            d->dense128 != dense128 || (d->nr * d->nc == 32) != narrow || (d->tok && !tok))
            continue;
        const int score = 4 * ((d->ks == 2) == ksplit) + 2 * ((d->tok != 0) == tok) + (d->load_ef == load_ef);
        if (score > best) {
            best = score;
            var = d;
        }
    }
    if (var == NULL) return fkda_fail(FKDA_ERROR_INTERNAL, "decode: no kernel variant for this pool");

    /* KL lanes per column: enough that KL * NR rows (of each of KS warps) cover K (a power of
     * two, at most 32). */
    int rows_needed = (p->K + var->nr * var->ks - 1) / (var->nr * var->ks), kl = 1;
    while (kl < rows_needed) kl *= 2;
    if (kl > 32) return fkda_fail(FKDA_ERROR_INTERNAL, "decode: K = %d needs %d lanes per column", p->K, kl);
    const int cols_per_warp = (32 / kl) * var->nc;
    p->lanes_k = kl;
    p->warps_per_head = var->ks * ((p->V + cols_per_warp - 1) / cols_per_warp);

    /* Warps per CTA: 8 (a K = V = 128 fp32 head) or 4 (half a head; measured 5-7% faster than
     * 8 for large bf16 batches; a quarter of a narrow head, 2-9% faster than 8 at B = 1 and 8);
     * fewer while that leaves two thirds of the SMs without a CTA (small batches are
     * latency-bound: spread them). */
    int per_cta = p->state_bf16 || narrow ? 4 : 8;
    while (per_cta > 1 && per_cta / 2 >= p->warps_per_head) per_cta /= 2;
    /* The all-bf16-token kernels (but narrow bf16): 2 warps while that keeps at most two CTAs
     * per SM. Measured on the H100: narrow fp32, B = 1, H = 32: 4.99 us against 5.34 with 4
     * warps (the generic-token kernel the other way round, 5.30 against 5.04: it keeps 4); wide
     * bf16, 8 x 8: 5.25 against 5.53 (8 x 32, eight CTAs per SM with 2 warps: 10.78 against 9.43). */
    if (var->tok && !(narrow && p->state_bf16) && per_cta > 2 &&
        heads * ((p->warps_per_head + 1) / 2) <= 2 * (int64_t)sm_count)
        per_cta = 2;
    /* Narrow bf16 heads keep 4 warps down to fewer heads (B = 1, H = 8: 4.14 us against 4.24
     * with 2 warps). */
    const int spread = narrow && p->state_bf16 ? 6 : 3;
    while (per_cta > 1 && spread * heads * ((p->warps_per_head + per_cta - 1) / per_cta) < sm_count) per_cta /= 2;
    if (knob_warps && (atoi(knob_warps) == 1 || atoi(knob_warps) == 2 || atoi(knob_warps) == 4 || atoi(knob_warps) == 8))
        per_cta = atoi(knob_warps);
    if (per_cta < var->ks) per_cta = var->ks; /* the warps of a split-K pair share a CTA */
    p->warps_per_cta = per_cta;
    p->ctas_per_head = (p->warps_per_head + per_cta - 1) / per_cta;

    const cudaError_t err =
        launch_decode_kernel(var->kernel, dim3((unsigned)heads, (unsigned)p->ctas_per_head, 1), 32 * per_cta, 0, stream_arg, p, pdl);
    if (err != cudaSuccess) {
        (void)cudaGetLastError();
        return fkda_fail(FKDA_ERROR_DEVICE, "decode: launch of %s: %s", var->name, cudaGetErrorString(err));
    }
    return FKDA_OK;
}

/*
 * prefill_common.cuh: what the prefill kernels share: the launch parameters, the layout of the
 * per-chunk record that the prep kernel writes and the chain kernel reads, sequence bounds read
 * on the device, and small numeric helpers.
 *
 * The prefill runs in two kernels (docs/prefill.md has the design, docs/history/prefill.md its history):
 *   prep  (prefill_prep.cu):  token-parallel, one CTA per (16-token chunk, value head): norms,
 *         gate, cumsum, decays, the 16x16 triangular inverse, and the chunk's operands.
 *   chain (prefill_chain.cu): one CTA per (sequence, value head, slice of value columns): walks
 *         the chunks in order with the fp32 state in registers and writes the output.
 * With few heads and long sequences the chain runs as two passes over sequence segments with a
 * small merge kernel between them (prefill_merge.cu; pf_chain_plan below).
 *
 * Chunk algebra (C = 16 tokens, G_i = sum of log-decays up to token i inside the chunk, a vector
 * over keys; b = beta after the sigmoid; all products per key channel):
 *   Kd = k 2^G   Qd = scale q 2^G   Kr = k 2^(G_C - G)   gamma = 2^G_C   (G in log2 units)
 *   L = strict_lower(diag(b) Kd Ki^T),  INV = (I + L)^-1,  bINV = INV diag(b)
 *   W = bINV Kd,  U = bINV V,  Mqk = lower_incl(Qd Ki^T)
 *   Vnew = U - W S,   O = Qd S + Mqk Vnew,   S' = diag(gamma) S + Kr^T Vnew   (S is K x V)
 */
#ifndef FKDA_PREFILL_COMMON_CUH
#define FKDA_PREFILL_COMMON_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "../../include/flashkda.h"
#include "ptx_load.cuh"

#define PF_CHUNK 16 /* tokens per chunk */
#define PF_DK 128   /* keys of the record (K <= 128, zero-padded) */
#define PF_DV 128   /* value head dim */

/* The record of one (chunk, value head), 14,848 bytes, stored in the workspace exactly as the
 * chain kernel wants it in shared memory (one bulk copy moves it). The three 16 x 128 bf16 tiles
 * are swizzled: the 16-byte unit j of row r sits at unit j ^ (r & 7), so that ldmatrix reads of
 * 8 rows hit 8 different bank groups. bINV and Mqk are stored as two bf16 terms (hi + lo, ~16
 * significant bits): they multiply v and Vnew in the chain, and one bf16 rounding of each was
 * the largest error term (docs/history/prefill.md, v2). The order puts what a state-only pass
 * needs first (-W, Kr, gamma, bINV), so a prefix of the record serves it. */
#define PF_REC_NEGW 0       /* -W   [16][128] bf16, swizzled */
#define PF_REC_KR 4096      /* Kr   [16][128] bf16, swizzled */
#define PF_REC_GAMMA 8192   /* gamma [128] fp32 */
#define PF_REC_BINV 8704    /* bINV [16][16] bf16, row-major, high terms */
#define PF_REC_BINV_LO 9216 /*                              low terms */
#define PF_REC_MQK 9728     /* Mqk  [16][16] bf16, row-major (scale folded in, lower incl. diag) */
#define PF_REC_MQK_LO 10240 /*                              low terms */
#define PF_REC_QD 10752     /* Qd   [16][128] bf16, swizzled (scale folded in) */
#define PF_REC_BYTES 14848

/* The fp16 family's record (prefill_prep.cu's fp16 forms, prefill_chain.cu's fp16 chain): the same
 * layout and bytes, with -W, Kr, Qd as fp16 tiles and bINV, Mqk as fp16 hi + lo pairs (11
 * significant bits per operand instead of 8: dev/numerics/README.md, plan (m)). A chunk outside
 * fp16's domain (the prep's check: every gate step <= 0, every beta in [0, 4] with b |k|^2 <= 2,
 * and every q row (times scale) and k row of norm 0 or within [2^-6, 2^7]) is written in the bf16
 * layout instead, and flagged by the sign bit of gamma[0] (gamma = 2^G_C is never negative), so
 * that the chain takes its bf16 step for that chunk. */
#define PF_REC16_BF16_FLAG(rec) (*(const int32_t *)((rec) + PF_REC_GAMMA) < 0)

/* Byte offset of element (row, col) of a swizzled [16][128] bf16 tile. */
static __device__ __forceinline__ uint32_t pf_swz(int row, int col)
{
    return (uint32_t)(row * 256 + ((((col >> 3) ^ (row & 7))) << 4) + ((col & 7) << 1));
}

/* Byte offset of 16-byte unit `unit` (0..15) of row `row` in a swizzled [16][128] tile. */
static __device__ __forceinline__ uint32_t pf_swz_unit(int row, int unit)
{
    return (uint32_t)(row * 256 + ((unit ^ (row & 7)) << 4));
}

/* Byte offset of half `half` (0 or 1: values 0-7 or 8-15) of row `row` of a [16][16] bf16 tile
 * with 32-byte rows, swizzled so that 8 consecutive rows of one half cover all banks. */
static __device__ __forceinline__ uint32_t pf_swz16(int row, int half)
{
    return (uint32_t)(row * 32 + ((half ^ ((row >> 2) & 1)) << 4));
}

/* An integer tensor on the device (cu_seqlens, slot indices, offsets): NULL when absent. */
typedef struct pf_ints {
    const void *data;
    int64_t stride[2];
    int32_t i64; /* int64 elements (else int32; a flag tensor may also be bool, see pf_flag) */
    int32_t bool8;
} pf_ints;

/* A state array, canonical [row, value head, key index, value index] strides; NULL when absent. */
typedef struct pf_states {
    void *data;
    int64_t stride[4];
    int32_t dtype; /* f32, bf16 (or f16 for intermediate states) */
} pf_states;

typedef struct pf_params {
    /* sizes: K <= 128 keys (zero-padded to 128 in the record), V values (vpad: V rounded up to
     * 16, one chain warp per 16 columns) */
    int64_t B, T, H, HV, N, group, K, V, vpad;
    int64_t chunks_per_row; /* ceil(T / 16): record slots per sequence without cu_seqlens */
    int64_t slots;          /* record slots per value head */
    /* cu_seqlens (device memory; NULL for B equal-length rows) */
    const void *cu;
    int64_t cu_stride;
    int32_t cu_i64;
    /* token tensors; strides in elements over (batch row, token, head); q, k, v share a dtype */
    const void *q, *k, *v, *g;
    int64_t q_s[3], k_s[3], v_s[3], g_s[3];
    int32_t qkv_dtype, g_dtype;
    int32_t qkg_load; /* PF_LOAD_*: how the prep loads q, k, g (prefill_prep.cu) */
    /* the fp16 family (fp16 and fp32 q, k, v; docs/prefill.md): fp16 records where a chunk is in
     * fp16's domain (PF_REC16_BF16_FLAG below), and v_stage, when present, an fp32 copy. (It fills
     * the 4 bytes of padding before `beta`, so no other field moves.) */
    int32_t fp16_chain;
    const void *beta;
    int64_t beta_s[3];
    int32_t beta_dtype;
    /* gate: FKDA_GATE_*; A_log [HV] (NULL: absent), dt_bias [HV][K] (NULL: absent) */
    int32_t gate;
    const void *A_log;
    int64_t A_log_s;
    int32_t A_log_dtype;
    const void *dt_bias;
    int64_t dt_s[2];
    int32_t dt_dtype;
    /* v as the chain reads it: the caller's v when it is bf16 with 16-byte rows and V % 8 == 0,
     * else a bf16 copy in the workspace that the prep writes ([HV][slots][16][vpad]) */
    unsigned char *v_stage;
    /* output [B, T, HV, V] in v's dtype; out_mode: PF_OUT_BF16 / PF_OUT_F16 for 16-bit outputs
     * with 16-byte rows and V % 8 == 0 (stored 16 bytes per lane), else PF_OUT_ANY */
    void *out;
    int64_t out_s[3];
    int32_t out_dtype, out_mode;
    /* states: state_in / state_out are initial_state / final_state, or both the pool */
    pf_states state_in, state_out;
    int64_t pool_size;              /* rows of state_in and state_out (a slot >= it is skipped) */
    pf_ints has_initial;            /* [N] flags: 0 = start from the zero state */
    pf_ints initial_idx, final_idx; /* [N] pool slots (negative: zero state / not written) */
    /* checkpoints: offsets [N][C]; states [N * C] rows, or pool slots ck_idx [N][C] */
    pf_ints ck_off, ck_idx;
    int64_t checkpoints;
    pf_states ck_states;
    /* intermediate states (fla's h): one row per ichunk tokens of each sequence */
    pf_states inter;
    int64_t ichunk, inter_rows_per_seq; /* ichunk a multiple of 16; rows per row without cu */
    int64_t inter_rows;                 /* rows of the tensor: a row past it is not written */
    /* options */
    float scale;
    float gate_scale; /* lower bound gate: lower_bound * log2(e), the gate in log2 units */
    int32_t l2norm, beta_sigmoid, neg_eigval;
    int32_t exact_qk; /* the prep's step 4' for every chunk (prefill_select.c, choose_exact_qk) */
    /* workspace: records [HV][slots][PF_REC_BYTES] */
    unsigned char *records;
} pf_params;

enum { PF_OUT_ANY = 0, PF_OUT_BF16 = 1, PF_OUT_F16 = 2 };
enum { PF_LOAD_BF16 = 0, PF_LOAD_TILES = 1, PF_LOAD_ELEMENTS = 2, PF_LOAD_F16 = 3 };

/* Sequence n: its batch row, first token, length, and first record slot. cu_seqlens entries are
 * clamped into [0, T] (and the end to at least the start), so a bad cu_seqlens can give a wrong
 * answer but never an access outside the tensors or the workspace. */
static __device__ __forceinline__ void pf_sequence(const pf_params *p, int64_t n, int64_t *row, int64_t *start,
                                                   int64_t *len, int64_t *slot0)
{
    if (p->cu == NULL) {
        *row = n;
        *start = 0;
        *len = p->T;
        *slot0 = n * p->chunks_per_row;
        return;
    }
    int64_t a, b;
    if (p->cu_i64) {
        a = ((const int64_t *)p->cu)[n * p->cu_stride];
        b = ((const int64_t *)p->cu)[(n + 1) * p->cu_stride];
    } else {
        a = ((const int32_t *)p->cu)[n * p->cu_stride];
        b = ((const int32_t *)p->cu)[(n + 1) * p->cu_stride];
    }
    a = a < 0 ? 0 : (a > p->T ? p->T : a);
    b = b < a ? a : (b > p->T ? p->T : b);
    *row = 0;
    *start = a;
    *len = b - a;
    /* Slots: sequence n's chunks start at slot a / 16 + n; consecutive sequences never overlap
     * (a partial chunk costs at most one extra slot), and slot < T / 16 + N + 1 always. */
    *slot0 = a / PF_CHUNK + n;
}

/* Eight rows of one column of a chunk: element first + r * stride of a float tensor of run-time
 * dtype for rows r = r0..r0 + 7 (0 for r >= rows or where !ok), widened into x. The eight loads
 * are issued before any is converted (ptx_load.cuh): loaded through a branch per dtype, each row
 * waited for its own load, sixteen DRAM round trips in a row for a chunk's column where this
 * makes two; eight rows a call so that the caller stores them before the next eight load (the
 * registers stay few). The prep's element loads of q, k and g, and its copy of v. */
static __device__ __forceinline__ void pf_load_8rows(const void *base, int32_t dtype, int64_t first, int64_t stride,
                                                     int r0, int rows, int ok, float x[8])
{
    uint32_t b32[8], b16[8];
#pragma unroll
    for (int i = 0; i < 8; i++)
        load_bits_pair_if(base, dtype, first + (r0 + i) * stride, ok && r0 + i < rows, &b32[i], &b16[i]);
#pragma unroll
    for (int i = 0; i < 8; i++) {
        hold_until_here(&b32[i]);
        hold_until_here(&b16[i]);
    }
#pragma unroll
    for (int i = 0; i < 8; i++) x[i] = bits_to_float(b32[i] | b16[i], dtype);
}

/* The element form of the prep's q, k and g tiles (strides or dtypes the bulk copy cannot take):
 * the calling thread loads key channel col of every row of the chunk (coalesced along the keys),
 * eight rows a pf_load_8rows, into dst[row * pitch + dst_col] of the fp32 tiles fq, fk, fg; zeros
 * past the rows and where !ok. Both prep families (K <= 128 and K = 256) load so. */
static __device__ __forceinline__ void pf_load_element_tiles(const pf_params &p, int64_t q0, int64_t k0, int64_t g0,
                                                             int64_t t0, int col, int rows, int ok, float *fq,
                                                             float *fk, float *fg, int pitch, int dst_col)
{
#pragma unroll
    for (int which = 0; which < 3; which++) {
        const void *src = which == 0 ? p.q : which == 1 ? p.k : p.g;
        const int32_t dt = which == 2 ? p.g_dtype : p.qkv_dtype;
        const int64_t first = which == 0 ? q0 + t0 * p.q_s[1] : which == 1 ? k0 + t0 * p.k_s[1] : g0 + t0 * p.g_s[1];
        const int64_t ts = which == 0 ? p.q_s[1] : which == 1 ? p.k_s[1] : p.g_s[1];
        float *dst = which == 0 ? fq : which == 1 ? fk : fg;
#pragma unroll
        for (int r0 = 0; r0 < PF_CHUNK; r0 += 8) {
            float x[8];
            pf_load_8rows(src, dt, first + col, ts, r0, rows, ok, x);
#pragma unroll
            for (int i = 0; i < 8; i++) dst[(r0 + i) * pitch + dst_col] = x[i];
        }
    }
}

static __device__ __forceinline__ float pf_bf16_to_float(uint16_t x) { return __uint_as_float((uint32_t)x << 16); }

static __device__ __forceinline__ uint16_t pf_float_to_bf16(float x)
{
    return __bfloat16_as_ushort(__float2bfloat16_rn(x));
}

/* A 16-bit operand of the record: fp16 (f16 != 0) or bf16, and back. */
static __device__ __forceinline__ uint16_t pf_float_to_16(float x, int f16)
{
    return f16 ? __half_as_ushort(__float2half_rn(x)) : pf_float_to_bf16(x);
}

static __device__ __forceinline__ float pf_16_to_float(uint16_t x, int f16)
{
    return f16 ? __half2float(__ushort_as_half(x)) : pf_bf16_to_float(x);
}

static __device__ __forceinline__ float pf_exp2(float x)
{
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

static __device__ __forceinline__ float pf_rcp(float x)
{
    float y;
    asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

/* 1 / (1 + e^-x) from the approximate exp2 and reciprocal (a few ulp). The prep takes it once per
 * key channel and token (the lower bound gate), and the correctly rounded division with __expf's
 * denormal fix-up cost ~20 instructions and a branch there, a tenth of the prep's issue slots; its
 * extra error is fp32 rounding, far below the bf16 / fp16 operands it feeds. The limits are
 * exact: x below -88 gives 1 / inf = 0, x above 88 gives 1 / 1 = 1, and a NaN stays NaN. */
static __device__ __forceinline__ float pf_sigmoid(float x) { return pf_rcp(1.0f + pf_exp2(x * -1.4426950408889634f)); }

/* How the chain kernel splits the work (prefill_launch.cu decides).
 *
 *   PF_CHAIN_WHOLE: one CTA per (sequence, head, value slice) walks the whole sequence.
 *   Segments (few heads, long sequences, B equal-length rows only): each sequence is cut into
 *   P segments of Lc chunks, and the state map over a segment is affine, S -> M S + B:
 *     PF_CHAIN_SEG_A: for segments p < P - 1, in parallel: B_p, the state at the segment's end
 *       from a zero start (from the initial state for p = 0), and, for p >= 1, M_p, the same
 *       chain run on the identity with v = 0 (the "transition" columns);
 *     prefill_merge.cu: S_1 = B_0, S_{p+1} = M_p S_p + B_p, in fp32, serial over p;
 *     PF_CHAIN_SEG_C: every segment again from its true start state S_p, writing the output;
 *       the last one writes the final state.
 *   Segment arrays are [N][HV][P][128 rows][128 keys] fp32, rows in the chain's S^T layout
 *   (value index for B and S, transition column for M). */
enum { PF_CHAIN_WHOLE = 0, PF_CHAIN_SEG_A = 1, PF_CHAIN_SEG_C = 2 };

typedef struct pf_chain_plan {
    int32_t mode;
    int32_t nslices; /* value slices per (sequence, head) */
    int64_t P, Lc;   /* segments per sequence and chunks per segment (mode != WHOLE) */
    float *seg_B, *seg_M, *seg_S;
    int32_t split_out; /* PF_CHAIN_WHOLE, bf16 chain and output or the fp16 chain: each 16-column chain on
                          a chain warp and an output warp (prefill_chain.cu) */
} pf_chain_plan;

/* The launches (each beside its kernel). `vslice` is the number of value columns per chain CTA:
 * 16, 32, 64 or 128 (one warp per 16 columns). */
/* The launches return their own launch's error: each goes through cudaLaunchKernel, never
 * <<<>>> followed by cudaGetLastError, which would also return (and clear) an error that an
 * earlier runtime call of the caller's left pending, and so fail a call whose first kernel was
 * already queued. */
cudaError_t pf_launch_prep(const pf_params *p, cudaStream_t stream);
cudaError_t pf_launch_chain(const pf_params *p, const pf_chain_plan *plan, cudaStream_t stream);
cudaError_t pf_launch_merge(const pf_params *p, const pf_chain_plan *plan, cudaStream_t stream);
size_t pf_chain_smem_bytes(int vslice);
size_t pf_chain16_smem_bytes(int vslice); /* the fp16 family's chain */

#endif /* FKDA_PREFILL_COMMON_CUH */

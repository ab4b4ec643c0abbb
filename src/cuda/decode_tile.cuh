/*
 * decode_tile.cuh: the CUDA decode's register tile: which key rows and value columns of a head's
 * state each lane holds (lane_tile, see decode_common.cuh for the two layouts), where a key is
 * staged in shared memory, and the tile's loads from and stores to the pool.
 */
#ifndef FKDA_CUDA_DECODE_TILE_CUH
#define FKDA_CUDA_DECODE_TILE_CUH

#include "decode_io.cuh"
#include "decode_params.h"

#define DECODE_MAX_R 16  /* register rows per lane, the largest NR */
#define DECODE_MAX_C 8   /* register columns per lane, the largest NC */
#define DECODE_ROW_PAD 4 /* floats between two lanes' rows in shared memory (banks) */

/* ---- the lane's share of the state: which key row and value column each register holds ---- */

typedef struct lane_tile {
    int kl, KL;    /* this lane's index among the KL lanes sharing a column, and KL */
    int kh, kbase; /* split-K tiles (KS = 2): the warp's half of the keys, and its first key */
    int lj, LJ;    /* this lane's column group, and the number of groups (32 / KL) */
    int j0;        /* the warp's first column */
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
static __device__ __forceinline__ void load_tile(const fkda_decode_params *p, const lane_tile *w, int64_t slot,
                                                 int64_t h, float s[DECODE_MAX_R][DECODE_MAX_C], const int BF16,
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

static __device__ __forceinline__ void store_tile(const fkda_decode_params *p, const lane_tile *w, int64_t slot,
                                                  int64_t h, float s[DECODE_MAX_R][DECODE_MAX_C], const int BF16,
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

/* A tile that load_tile read with BF16 = 2 (bf16 pools, vector loads): each pair of values as
 * its raw word in the pair's first register (the pairs run along the vectors: columns in the
 * [K, V] layout, rows in [V, K]). Here they become floats, no earlier than this point
 * (hold_until_here): a conversion right behind the loads waits for them there, before the loads
 * that follow it in the code have issued. */
static __device__ __forceinline__ void finish_raw_tile(float s[DECODE_MAX_R][DECODE_MAX_C], const int V_FIRST,
                                                       const int NR, const int NC)
{
#pragma unroll
    for (int r = 0; r < NR; r += V_FIRST ? 2 : 1) {
#pragma unroll
        for (int c = 0; c < NC; c += V_FIRST ? 1 : 2) {
            uint32_t u = __float_as_uint(s[r][c]);
            hold_until_here(&u);
            s[r][c] = __uint_as_float(u << 16);
            if (V_FIRST)
                s[r + 1][c] = __uint_as_float(u & 0xffff0000u);
            else
                s[r][c + 1] = __uint_as_float(u & 0xffff0000u);
        }
    }
}

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

#endif /* FKDA_CUDA_DECODE_TILE_CUH */

/*
 * decode_packed_tile.cuh: the packed register tile of a dense 128 bf16 head (PK_NR = 16 keys x
 * PK_NC = 8 values a lane, held as the 64 bf16 pairs they arrive in, 4 warps a head): where each
 * value sits, its load and store, and the delta rule's passes over it. Shared by the plain
 * decode's packed kernels (decode_packed.cu) and the single-kernel layer's packed tile
 * (decode_layer_fused.cu).
 *
 * Each value is unpacked where it is used and the new state rounded once, on the way to its
 * store, as the fp32 tiles round it: the results are those of the tiles up to the order of the
 * sums.
 */
#ifndef FKDA_CUDA_DECODE_PACKED_TILE_CUH
#define FKDA_CUDA_DECODE_PACKED_TILE_CUH

#include "decode_common.cuh"

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
            sp[pk_index(r, 0, 0)] = u.x;
            sp[pk_index(r, 2, 0)] = u.y;
            sp[pk_index(r, 4, 0)] = u.z;
            sp[pk_index(r, 6, 0)] = u.w;
        }
    } else {
#pragma unroll
        for (int c = 0; c < NC; c++) {
#pragma unroll
            for (int rv = 0; rv < NR; rv += VEC) {
                const uint4 *at = (const uint4 *)(in + (tile_col(w, c, 1, VEC) - j0) * sv +
                                                  (tile_row(w, rv, 1, VEC) - k0));
                uint4 u = make_uint4(0u, 0u, 0u, 0u);
                if (live) u = STREAM ? __ldcs(at) : *at;
                sp[pk_index(rv, c, 1)] = u.x;
                sp[pk_index(rv + 2, c, 1)] = u.y;
                sp[pk_index(rv + 4, c, 1)] = u.z;
                sp[pk_index(rv + 6, c, 1)] = u.w;
            }
        }
    }
}

/* The lane's partial S^T k and S^T q per column over its rows of diag(d) S (ld, lk, lq: its
 * staged decays, keys and queries, 16-byte aligned). The decayed values are not kept: the update
 * recomputes them. */
static __device__ __forceinline__ void pk_decay_dots(const uint32_t *sp, const float *ld, const float *lk,
                                                     const float *lq, float pk[PK_NC], float pq[PK_NC],
                                                     const int V_FIRST)
{
    const int NR = PK_NR, NC = PK_NC;
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
}

/* The update, two values per register, each rounded once: S = diag(d) S + k vk^T (vk = kf v'). */
static __device__ __forceinline__ void pk_rank1_update(uint32_t *sp, const float *ld, const float *lk,
                                                       const float vk[PK_NC], const int V_FIRST)
{
    const int NR = PK_NR, NC = PK_NC;
    float dr[PK_NR], kr[PK_NR];
#pragma unroll
    for (int r4 = 0; r4 < NR; r4 += 4) {
        const float4 d4 = *(const float4 *)(ld + r4), k4 = *(const float4 *)(lk + r4);
        dr[r4] = d4.x;
        dr[r4 + 1] = d4.y;
        dr[r4 + 2] = d4.z;
        dr[r4 + 3] = d4.w;
        kr[r4] = k4.x;
        kr[r4 + 1] = k4.y;
        kr[r4 + 2] = k4.z;
        kr[r4 + 3] = k4.w;
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
}

/* Stores the lane's 64 pairs to `out` (its first row and column), 16 bytes at a time; streaming
 * (evict-first) stores with STREAM. */
static __device__ __forceinline__ void pk_store_state(const lane_tile *w, unsigned short *out, const uint32_t *sp,
                                                      const int V_FIRST, const int STREAM)
{
    const int NR = PK_NR, NC = PK_NC, VEC = 8;
    const int sk = V_FIRST ? 1 : 128, sv = V_FIRST ? 128 : 1;
    const int k0 = tile_row(w, 0, V_FIRST, VEC), j0 = tile_col(w, 0, V_FIRST, VEC);
    if (!V_FIRST) {
#pragma unroll
        for (int r = 0; r < NR; r++) {
            uint4 *at = (uint4 *)(out + (tile_row(w, r, 0, VEC) - k0) * sk);
            const uint4 u = make_uint4(sp[pk_index(r, 0, 0)], sp[pk_index(r, 2, 0)], sp[pk_index(r, 4, 0)],
                                       sp[pk_index(r, 6, 0)]);
            if (STREAM)
                __stcs(at, u);
            else
                *at = u;
        }
    } else {
#pragma unroll
        for (int c = 0; c < NC; c++)
#pragma unroll
            for (int rv = 0; rv < NR; rv += VEC) {
                uint4 *at = (uint4 *)(out + (tile_col(w, c, 1, VEC) - j0) * sv + (tile_row(w, rv, 1, VEC) - k0));
                const uint4 u = make_uint4(sp[pk_index(rv, c, 1)], sp[pk_index(rv + 2, c, 1)],
                                           sp[pk_index(rv + 4, c, 1)], sp[pk_index(rv + 6, c, 1)]);
                if (STREAM)
                    __stcs(at, u);
                else
                    *at = u;
            }
    }
}

#endif /* FKDA_CUDA_DECODE_PACKED_TILE_CUH */

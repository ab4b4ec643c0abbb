/*
 * decode_tiles.cu: the CUDA decode's tile kernels (decode_variants.h, DECODE_TILE_VARIANTS): each
 * lane holds NR x NC fp32 state values in registers for the whole call, so a call with T tokens
 * reads a head's state once and writes it once (per token only for 2-D state indices). Any head
 * size, layout, pool dtype and number of tokens.
 *
 * Every kernel is launched with up to 256 threads and capped at 128 registers, so that two 8-warp
 * CTAs fit on an SM (16 warps, 128 KB of fp32 state loads in flight at most).
 */
#include "decode_common.cuh"

/* The recurrence over the sequence's tokens, the state in registers (loaded by the caller),
 * and the state's stores: after every token to its 2-D index, else once at the end to `slot`.
 * Every thread of the CTA calls it (stage_token waits for the whole CTA once per token). */
static __device__ __forceinline__ void run_tokens(const fkda_decode_params *p, const lane_tile *wp, stage_buffer *smem,
                                                  int64_t n, int64_t h, int64_t row, int64_t bos, int64_t len,
                                                  int64_t slot, float s[DECODE_MAX_R][DECODE_MAX_C], const int BF16,
                                                  const int V_FIRST, const int VEC, const int NR, const int NC,
                                                  const int D128, const int TOK, const int KS)
{
    const lane_tile w = *wp;
    const int64_t hq = query_head(p, h);
    const int red_lo = V_FIRST ? 1 : w.LJ, red_hi = V_FIRST ? w.KL : 32;
    for (int64_t t = 0; t < len; t++) {
        const int64_t pos = bos + t;
        /* Two stage buffers: token t + 1 stages into the one token t - 1 read, which every warp
         * had finished before it passed token t's __syncthreads. */
        stage_buffer *sb = smem + (t & 1);
        /* The token's inputs: their loads overlap the state's (first token) or each other. */
        uint32_t vbits[DECODE_MAX_C];
        load_v(p, &w, row, pos, h, vbits, V_FIRST, VEC, NC, TOK);
        const staged_token tok = stage_token(p, &w, row, pos, h, hq, sb, V_FIRST, VEC, NR * KS, TOK);
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
            if (w.kl == 0 && w.kh == 0 && j < w.V)
                store_elem(ov, TOKEN_DTYPE(p, out_dtype, TOK), j, (int)p->out_stride[3],
                           fmaf(tok.kq, vn, tok.qf * pq[c]));
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
            const int64_t ts = t < p->idx_tokens ? load_index(p->state_indices, p->idx_dtype,
                                                              n * p->idx_stride[0] + t * p->idx_stride[1])
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
     * checks), so their sequence is row n, position 0, and their slot one index load (measured
     * faster at small batches, and it removed spills). */
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
    run_tokens(p, &w, smem, n, h, row, bos, len, slot, s, BF16, V_FIRST, VEC, NR, NC, D128, TOK, KS);
}

/* ---- the kernels ------------------------------------------------------------------------- */

#define DECODE_DEFINE_KERNEL(name, BF16, V_FIRST, VEC, NR, NC, D128, LOAD_EF, TOK, KS)    \
    __global__ void __launch_bounds__(32 * DECODE_MAX_WARPS_PER_CTA, 2)                   \
        name(const __grid_constant__ fkda_decode_params p)                                \
    {                                                                                     \
        __shared__ stage_buffer decode_stage[2];                                          \
        wait_for_prior_grid();                                                            \
        decode_cta(&p, decode_stage, BF16, V_FIRST, VEC, NR, NC, D128, LOAD_EF, TOK, KS); \
    }
DECODE_TILE_VARIANTS(DECODE_DEFINE_KERNEL)

#define DECODE_KERNEL_ADDRESS(name, ...) (const void *)name,

extern "C" const void *fkda_decode_tile_kernel(int row)
{
    static const void *const kernels[] = {DECODE_TILE_VARIANTS(DECODE_KERNEL_ADDRESS)};
    return row >= 0 && row < DECODE_TILE_VARIANT_COUNT ? kernels[row] : NULL;
}

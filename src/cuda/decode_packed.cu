/*
 * decode_packed.cu: the CUDA decode's packed bf16 kernels (decode_variants.h,
 * DECODE_PACKED_VARIANTS): dense 128 bf16 pools, one token per sequence, the state held in
 * registers as the bf16 pairs it arrives in (PK_NR x PK_NC values per lane). The kernels compiled
 * for cu_seqlens (CU) also serve its longer sequences, in two fp32 passes.
 */
#include "decode_common.cuh"
#include "decode_packed_tile.cuh"

/* For large batches of bf16 pools (by default from 2 heads per SM; FKDA_DECODE_PACKED forces it
 * on or off): the tile kernels hold 64 fp32 values per lane, so a bf16 head needs 8 warps and an
 * SM has only ~64 KB of state loads in flight. Held as the bf16 pairs they arrive in, 64
 * registers carry 128 values: 4 warps cover a head, one CTA stages its token once, and twice the
 * bytes are in flight per register. Each value is unpacked where it is used and the new state
 * rounded once, on the way to its store, as in the tile kernels, so the results are the same up
 * to the order of the sums. 1-D indices, and one token per sequence: T = 1 (CU = 0), or
 * cu_seqlens (CU = 1, vLLM's packed form: a decode step whose lengths only the device knows; an
 * empty sequence is skipped as in the tile kernels, and a longer one runs through packed_tokens). */

/* A sequence of cu_seqlens with more than one token (CU kernels only). Rounding the bf16 pairs
 * after every token would differ from fla (and the tile kernels), which keep the state in fp32
 * across a sequence's tokens, and 128 fp32 values per lane do not fit the registers: so the
 * lane's columns are taken in two passes of PK_NC / 2, each held in fp32 as a dense 128 bf16
 * tile kernel holds its 64 values (the same rows), run through every token (staged again in each
 * pass) and stored. Columns are independent and a pass reads and writes only its own, so the
 * second pass may load after the first has stored, in place. One stage buffer: run_tokens waits
 * for the CTA after each token. Called, not inlined, by the kernel (decode_cta_packed), so that
 * its registers do not crowd the one-token path's. */
static __device__ __forceinline__ void packed_tokens(const fkda_decode_params *p, stage_buffer *smem, const int V_FIRST,
                                                     const int LOAD_EF, const int KS)
{
    const int VEC = V_FIRST ? 8 : 4, NC = PK_NC / 2;
    const int slab = (int)blockIdx.y * (blockDim.x >> 5) + (threadIdx.x >> 5);
    int64_t n, h, row, bos;
    split_head(p, blockIdx.x, &n, &h);
    const lane_tile w = make_lane_tile(p, slab, V_FIRST, PK_NR, PK_NC, 1, KS);
    const int64_t len = sequence_tokens(p, n, &row, &bos);
    const int64_t slot = read_slot(p, n);
    if (slot < 0 || slot >= p->pool_size) {
        zero_outputs(p, &w, row, bos, len, h, V_FIRST, 8, PK_NC, 0);
        return;
    }
#pragma unroll 1
    for (int pass = 0; pass < 2; pass++) {
        /* Packed column c = pass * NC + c' is tile column c' of this tile: [K, V] the lane's 8
         * columns are j0 + 8 lj + c, here j0 + NC (lj + pass) + 4 lj + c' (tile_col, VEC = 4);
         * [V, K] they are j0 + lj + LJ c, here (j0 + NC LJ pass) + lj + LJ c'. */
        lane_tile wp = w;
        wp.j0 = V_FIRST ? w.j0 + NC * w.LJ * pass : w.j0 + NC * (w.lj + pass);
        float s[DECODE_MAX_R][DECODE_MAX_C];
        load_tile(p, &wp, slot, h, s, 1, V_FIRST, VEC, PK_NR, NC, 1, LOAD_EF);
        run_tokens(p, &wp, smem, n, h, row, bos, len, slot, s, 1, V_FIRST, VEC, PK_NR, NC, 1, 0, KS, 1, 0, NULL, 0);
    }
}

typedef void (*packed_tokens_fn)(const fkda_decode_params *p, stage_buffer *smem);

static __device__ __forceinline__ void decode_cta_packed(const fkda_decode_params *p, stage_buffer *smem,
                                                         const int V_FIRST, const int LOAD_EF, const int KS,
                                                         const int CU, packed_tokens_fn several_tokens)
{
    const int NR = PK_NR, NC = PK_NC, VEC = 8;
    const uint32_t head = blockIdx.x; /* the grid is heads x ctas_per_head */
    const int slab = (int)blockIdx.y * (blockDim.x >> 5) + (threadIdx.x >> 5);
    int64_t n, h;
    split_head(p, head, &n, &h);
    const lane_tile w = make_lane_tile(p, slab, V_FIRST, NR, NC, 1, KS);
    const int red_lo = V_FIRST ? 1 : w.LJ, red_hi = V_FIRST ? w.KL : 32;

    int64_t row, bos;
    const int64_t len = sequence_tokens(p, n, &row, &bos);
    if (len <= 0) return; /* an empty sequence of cu_seqlens: nothing written, as in every kernel */
    if (CU && len > 1) {
        several_tokens(p, smem);
        return;
    }
    /* The slot's load waits for the bounds' here (the tile kernels' CU path overlaps them,
     * cu_sequence_and_slot): the packed kernels serve large batches, where other CTAs cover that
     * latency, and the overlap made the [V, K] ones spill. */
    const int64_t slot = read_slot(p, n);
    /* The token's loads in flight with the index's, then the state's: a warp's state registers
     * are idle for one round trip less (its token's first load waited for the state's loads:
     * dev/cuda/load_waits.py), and idle registers are what limits the bytes an SM keeps in flight
     * at these batches. */
    token_loads tl;
    issue_token_loads(p, &w, row, bos, h, &tl, V_FIRST, VEC, NC, 0, 0);
    if (slot < 0 || slot >= p->pool_size) {
        zero_outputs(p, &w, row, bos, 1, h, V_FIRST, VEC, NC, 0);
        return;
    }

    /* The lane's first row and column of the state, in and out. */
    const int sk = V_FIRST ? 1 : 128, sv = V_FIRST ? 128 : 1;
    const int k0 = tile_row(&w, 0, V_FIRST, VEC), j0 = tile_col(&w, 0, V_FIRST, VEC);
    const int64_t *si = p->state_in_stride;
    const unsigned short *in = (const unsigned short *)p->state_in + slot * si[0] + h * si[1] + (int64_t)k0 * sk +
                               (int64_t)j0 * sv;
    const bool live = j0 < w.V; /* a CTA's spare warp (columns past V) loads and stores nothing */
    uint32_t sp[PK_NR * PK_NC / 2];
    pk_load_state(&w, in, live, sp, V_FIRST, LOAD_EF);

    const int64_t pos = bos, hq = query_head(p, h);
    uint32_t vbits[DECODE_MAX_C]; /* (the branched loads' single register) */
#pragma unroll
    for (int c = 0; c < NC; c++) vbits[c] = tl.v[c];
    const staged_token tok = stage_token(p, &w, row, pos, h, hq, smem, V_FIRST, VEC, NR * KS, 0, 0, 1, &tl.tb);
    const int lane_rows = w.kl * (NR * KS + DECODE_ROW_PAD) + w.kh * NR;
    const float *lq = smem->q + lane_rows, *lk = smem->k + lane_rows, *ld = smem->d + lane_rows;

    /* Decay and the two dot products (the decayed values are recomputed in the update). */
    float pk[PK_NC], pq[PK_NC];
    pk_decay_dots(sp, ld, lk, lq, pk, pq, V_FIRST);
    tile_column_sums(pk, pq, red_lo, red_hi, NC);
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
    pk_rank1_update(sp, ld, lk, vk, V_FIRST);

    const int64_t *so = p->state_out_stride;
    unsigned short *out = (unsigned short *)p->state_out + slot * so[0] + h * so[1] + (int64_t)k0 * sk +
                          (int64_t)j0 * sv;
    if (!live) return;
    pk_store_state(&w, out, sp, V_FIRST, 1);
}

/* ---- the kernels ------------------------------------------------------------------------- */

/* The packed bf16 kernels (4 warps = one dense 128 head per CTA, 128 registers): name, [V, K]
 * layout, streaming state loads, warps sharing the keys of a column (2: split K, [K, V] only:
 * 32 columns x 64 keys per warp, 128-byte line loads, as in the wide fp32 tiles), compiled for
 * cu_seqlens; with the function for its longer sequences (the CU kernels call it). */
#define DECODE_DEFINE_PACKED_KERNEL(name, V_FIRST, LOAD_EF, KS, CU)                                    \
    static __device__ __noinline__ void name##_tokens(const fkda_decode_params *p, stage_buffer *smem) \
    {                                                                                                  \
        packed_tokens(p, smem, V_FIRST, LOAD_EF, KS);                                                  \
    }                                                                                                  \
    __global__ void __launch_bounds__(128, 4) name(const __grid_constant__ fkda_decode_params p)       \
    {                                                                                                  \
        __shared__ stage_buffer decode_stage[1];                                                       \
        WARM_PARAMETERS(&p);                                                                           \
        wait_for_prior_grid();                                                                         \
        decode_cta_packed(&p, decode_stage, V_FIRST, LOAD_EF, KS, CU, name##_tokens);                  \
    }
DECODE_PACKED_VARIANTS(DECODE_DEFINE_PACKED_KERNEL)

#define DECODE_KERNEL_ADDRESS(name, ...) (const void *)name,

extern "C" const void *fkda_decode_packed_kernel(int row)
{
    static const void *const kernels[] = {DECODE_PACKED_VARIANTS(DECODE_KERNEL_ADDRESS)};
    return row >= 0 && row < DECODE_PACKED_VARIANT_COUNT ? kernels[row] : NULL;
}

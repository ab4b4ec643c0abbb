/*
 * decode_tiles.cu: the CUDA decode's tile kernels (decode_variants.h, DECODE_TILE_VARIANTS): each
 * lane holds NR x NC fp32 state values in registers for the whole call, so a call with T tokens
 * reads a head's state once and writes it once (per token only for 2-D state indices). Any head
 * size, layout, pool dtype and number of tokens.
 *
 * Every kernel is launched with up to 256 threads and capped at 128 registers, so that two 8-warp
 * CTAs fit on an SM (16 warps, 128 KB of fp32 state loads in flight at most); but the _early one
 * (CTAS = 1, decode_variants.h), which small batches give at most two CTAs of 2 warps an SM.
 */
#include "decode_common.cuh"
#include "decode_spec.cuh"

/* One sequence's work for the CTA: its slot (TOK kernels with 1-D indices: one load), then a
 * skip (its rows of out zeroed) or the state's load, the tokens and the store (after each token
 * for 2-D indices, which reach the generic kernels here). */
static __device__ __forceinline__ void decode_sequence(const fkda_decode_params *p, const lane_tile *w,
                                                       stage_buffer *smem, int64_t n, int64_t h, int64_t row,
                                                       int64_t bos, int64_t len, const int BF16, const int V_FIRST,
                                                       const int VEC, const int NR, const int NC, const int D128,
                                                       const int LOAD_EF, const int TOK, const int KS, const int ONE)
{
    /* ONE (the one-token narrow TOK kernels without cu_seqlens): the token's loads right behind
     * the index's, before anything waits for it (its place is row n, position 0). The index as
     * raw words until then: load_index's int32 form sign-extends at once, which waits for it. */
    int64_t slot;
    token_loads tl;
    if (ONE) {
        const index_words none = {0u, 0u};
        index_words iw = none;
        if (p->state_indices) iw = load_index_words_if(p->state_indices, p->idx_dtype, n * p->idx_stride[0], 1, none);
        issue_token_loads(p, w, row, bos, h, &tl, V_FIRST, VEC, NC, TOK, 1);
        hold_until_here(&iw.lo);
        hold_until_here(&iw.hi);
        slot = p->state_indices ? index_value(iw, p->idx_dtype) : n;
    } else {
        slot = TOK ? (p->state_indices ? load_index(p->state_indices, p->idx_dtype, n * p->idx_stride[0]) : n)
                   : read_slot(p, n);
    }
    if (slot < 0 || slot >= p->pool_size) {
        zero_outputs(p, w, row, bos, len, h, V_FIRST, VEC, NC, TOK);
        return;
    }
    float s[DECODE_MAX_R][DECODE_MAX_C];
    const int RAW = ONE && BF16 && VEC > 1 ? 2 : BF16; /* bf16 words converted after the token's staging */
    load_tile(p, w, slot, h, s, RAW, V_FIRST, VEC, NR, NC, D128, LOAD_EF);
    run_tokens(p, w, smem, n, h, row, bos, len, slot, s, RAW, V_FIRST, VEC, NR, NC, D128, TOK, KS, 2, !TOK,
               ONE ? &tl : NULL, 0);
}

/* The _spec kernels' sequence (CU = 2: cu_seqlens, 2-D indices): its bounds and accepted count,
 * the slot that count selects, the state's load, then its tokens staged in batches
 * (decode_spec.cuh), the state stored after each token. With EARLY (the narrow [K, V] tiles) the
 * first batch's loads issue right behind the slot index's, where the bounds have just told its
 * place, so that it arrives with the index, not a round trip after the state, and is staged while
 * the state is in flight. Not the [V, K] tiles: there a first token's staging loaded early still
 * waited for the state (ptxas gave the state's loads and the token's dt_bias one scoreboard), and
 * the longer code measured slower (docs/history/decode.md). */
static __device__ __forceinline__ void spec_sequence(const fkda_decode_params *p, const lane_tile *w, spec_stage *ss,
                                                     int64_t n, int64_t h, const int BF16, const int V_FIRST,
                                                     const int VEC, const int NR, const int NC, const int D128,
                                                     const int LOAD_EF, const int TOK, const int KS, const int EARLY)
{
    int64_t bos;
    if (!EARLY) {
        int64_t slot;
        const int64_t len = cu_sequence_and_accepted_slot(p, n, &bos, &slot);
        if (len <= 0) return;
        if (slot < 0 || slot >= p->pool_size) {
            zero_outputs(p, w, 0, bos, len, h, V_FIRST, VEC, NC, TOK);
            return;
        }
        float s[DECODE_MAX_R][DECODE_MAX_C];
        const int RAW = BF16 && VEC > 1 ? 2 : BF16; /* bf16 words converted after the first batch's staging */
        load_tile(p, w, slot, h, s, RAW, V_FIRST, VEC, NR, NC, D128, LOAD_EF);
        run_spec_tokens(p, w, ss, n, h, bos, len, s, RAW, V_FIRST, VEC, NR, NC, TOK, KS, NULL);
        return;
    }
    const spec_words sw = load_spec_words(p, n);
    const int64_t col = spec_column(p, sw);
    const index_words none = {0u, 0u};
    index_words iw = load_index_split_if(p->state_indices, p->idx_dtype, n * p->idx_stride[0] + col * p->idx_stride[1],
                                         1, none);
    const int64_t len = clamp_bounds(p, index_value(sw.a, p->cu_dtype), index_value(sw.b, p->cu_dtype), &bos);
    if (len <= 0) return;
    spec_bits first;
    load_spec_batch(p, n, h, query_head(p, h), bos, 0, len, &first, TOK);
    hold_until_here(&iw.lo);
    hold_until_here(&iw.hi);
    const int64_t slot = index_value(iw, p->idx_dtype);
    if (slot < 0 || slot >= p->pool_size) {
        zero_outputs(p, w, 0, bos, len, h, V_FIRST, VEC, NC, TOK);
        return;
    }
    float s[DECODE_MAX_R][DECODE_MAX_C];
    const int RAW = BF16 && VEC > 1 ? 2 : BF16; /* bf16 words converted after the first batch's staging */
    load_tile(p, w, slot, h, s, RAW, V_FIRST, VEC, NR, NC, D128, LOAD_EF);
    run_spec_tokens(p, w, ss, n, h, bos, len, s, RAW, V_FIRST, VEC, NR, NC, TOK, KS, &first);
}

/* The CU kernels' sequences of more than one token: the sequence found again, its tokens in a
 * loop. Called, not inlined, by the kernel (decode_cta), so that its registers do not crowd the
 * one-token path's. */
static __device__ __forceinline__ void several_tokens_cta(const fkda_decode_params *p, stage_buffer *smem,
                                                          const int BF16, const int V_FIRST, const int VEC,
                                                          const int NR, const int NC, const int D128, const int LOAD_EF,
                                                          const int TOK, const int KS)
{
    const int slab = (int)blockIdx.y * (blockDim.x >> 5) + (threadIdx.x >> 5);
    int64_t n, h, bos;
    split_head(p, blockIdx.x, &n, &h);
    const lane_tile w = make_lane_tile(p, slab, V_FIRST, NR, NC, D128, KS);
    const int64_t len = cu_sequence_tokens(p, n, &bos);
    decode_sequence(p, &w, smem, n, h, 0, bos, len, BF16, V_FIRST, VEC, NR, NC, D128, LOAD_EF, TOK, KS, 0);
}

typedef void (*tile_tokens_fn)(const fkda_decode_params *p, stage_buffer *smem);

/* A CTA takes `ctas_per_head`-th of the warps of one (sequence, value head): all of them for
 * large batches, so that the token is staged once per head; fewer for small batches, so that
 * the work spreads over every SM. Each warp owns a slab of columns (all K rows) in registers;
 * the only cooperation between warps is the staged token. Every branch that skips work is
 * uniform over the CTA (a whole sequence) or masks a warp's columns, so every thread reaches
 * every __syncthreads. */
static __device__ __forceinline__ void decode_cta(const fkda_decode_params *p, stage_buffer *smem, const int BF16,
                                                  const int V_FIRST, const int VEC, const int NR, const int NC,
                                                  const int D128, const int LOAD_EF, const int TOK, const int KS,
                                                  const int CU, const int CTAS, tile_tokens_fn several_tokens)
{
    const uint32_t head = blockIdx.x; /* the grid is heads x ctas_per_head */
    const int slab = (int)blockIdx.y * (blockDim.x >> 5) + (threadIdx.x >> 5);
    int64_t n, h;
    split_head(p, head, &n, &h);
    const lane_tile w = make_lane_tile(p, slab, V_FIRST, NR, NC, D128, KS);

    int64_t row = n, bos = 0;
    if (CU == 2) { /* speculative decoding in vLLM's form: each sequence's tokens inline */
        spec_sequence(p, &w, (spec_stage *)smem, n, h, BF16, V_FIRST, VEC, NR, NC, D128, LOAD_EF, TOK, KS,
                      NR * NC <= 32 && !V_FIRST);
        return;
    }
    if (!TOK) {
        const int64_t len = sequence_tokens(p, n, &row, &bos);
        if (len > 0)
            decode_sequence(p, &w, smem, n, h, row, bos, len, BF16, V_FIRST, VEC, NR, NC, D128, LOAD_EF, 0, KS, 0);
        return;
    }
    /* The other TOK kernels serve calls with 1-D indices and one token per sequence: without
     * cu_seqlens (T = 1; CU = 0) sequence n is row n, position 0, compiled as one token (measured
     * faster at small batches, and it removed spills). With cu_seqlens (CU = 1, vLLM's packed form) the
     * bounds are read here: a one-token sequence runs the same one-token code, an empty one is
     * skipped (as in the other kernels), a longer one loops over its tokens (several_tokens).
     * The narrow tiles (the small batches, whose time is one warp's path) issue the token's
     * loads (issue_token_loads, in the tile kernels' split form) before the state's: without
     * cu_seqlens right behind the slot index's (decode_sequence's ONE), with them behind the
     * bounds' (at a guessed place, below); a bf16 pool's words then stay raw until the token is
     * staged (load_tile's BF16 = 2, finish_raw_tile), since converted as they arrive they made
     * the staging wait for the state's round trip (slower than no early loads;
     * docs/history/decode.md). The wide fp32 tiles do not: at their 128-register cap the token's
     * words held across the state's loads spill (ptxas: 16-20 bytes), and their batches hide
     * latency with warps. The wide bf16 ones do without cu_seqlens, where their raw words leave
     * the registers the token needs (no spill); with cu_seqlens their twins would spill (4 bytes,
     * whose store waits for the state's loads before the staging: load_waits.py) and do not, but
     * for the [K, V] one compiled for one CTA an SM's registers (CTAS = 1, the _early kernel of
     * small batches: ~160 registers, no spill, nothing before the staging waiting for the state).
     * (The rules give one-token bf16 [V, K] calls the narrow tile up to the packed kernels'
     * range, so the wide [V, K] ones run only when forced.) */
    const int EARLY = NR * NC <= 32;
    if (!CU) {
        decode_sequence(p, &w, smem, n, h, row, bos, 1, BF16, V_FIRST, VEC, NR, NC, D128, LOAD_EF, TOK, KS,
                        EARLY || (BF16 && VEC > 1));
        return;
    }
    /* decode_sequence's work for one token, with the bounds and the slot loaded together and one
     * branch on both (& rather than &&: no branch on the length before the slot is in). The early
     * tiles guess where the token is: vLLM's decode step passes cu_seqlens = 0, 1, ..., B, so
     * sequence n is token n, and its loads issue right behind the bounds' and the slot's, inside
     * the tensor (n < T), before anything waits. Where the guess holds, the token is in when the
     * state's loads issue, and its staging runs while they are in flight, as without cu_seqlens.
     * Where it fails (an empty or a longer sequence before n) the staging loads the token itself,
     * after the state's. The two branches are two copies of the path (load_tile, run_tokens) on
     * purpose: on one
     * shared path the compiled staging waits for whatever the other branch may have in flight,
     * and its wait then covers the state's loads too (load_waits.py), which took the staging off
     * the state's round trip again (measured: no gain). */
    int64_t slot;
    token_loads tl;
    cu_words cw = load_cu_words(p, n);
    const int guessed = (EARLY || CTAS == 1) && n < p->T; /* CTAS = 1: the _early kernel */
    if (guessed) {
        issue_token_loads(p, &w, 0, n, h, &tl, V_FIRST, VEC, NC, TOK, 1);
        hold_cu_words(&cw);
    }
    const int64_t len = cu_bounds_and_slot(p, cw, &bos, &slot);
    if ((len == 1) & (slot >= 0) & (slot < p->pool_size)) {
        float s[DECODE_MAX_R][DECODE_MAX_C];
        if (guessed && bos == n) {
            const int RAW = BF16 && VEC > 1 ? 2 : BF16; /* bf16 words converted after the staging */
            load_tile(p, &w, slot, h, s, RAW, V_FIRST, VEC, NR, NC, D128, LOAD_EF);
            run_tokens(p, &w, smem, n, h, 0, bos, 1, slot, s, RAW, V_FIRST, VEC, NR, NC, D128, TOK, KS, 2, 0, &tl, 0);
        } else {
            load_tile(p, &w, slot, h, s, BF16, V_FIRST, VEC, NR, NC, D128, LOAD_EF);
            run_tokens(p, &w, smem, n, h, 0, bos, 1, slot, s, BF16, V_FIRST, VEC, NR, NC, D128, TOK, KS, 2, 0, NULL, 0);
        }
    } else if (len == 1) {
        zero_outputs(p, &w, 0, bos, 1, h, V_FIRST, VEC, NC, TOK);
    } else if (len > 1) {
        several_tokens(p, smem);
    }
}

/* ---- the kernels ------------------------------------------------------------------------- */

/* Shared memory, in stage buffers: run_tokens' two, or the _spec kernels' spec_stage. */
#define DECODE_STAGE_BUFFERS(CU) \
    ((CU) == 2 ? (int)((sizeof(spec_stage) + sizeof(stage_buffer) - 1) / sizeof(stage_buffer)) : 2)

/* Each kernel with the function for its longer sequences of cu_seqlens (the CU kernels call it). */
#define DECODE_DEFINE_KERNEL(name, BF16, V_FIRST, VEC, NR, NC, D128, LOAD_EF, TOK, KS, CU, CTAS)                   \
    static __device__ __noinline__ void name##_tokens(const fkda_decode_params *p, stage_buffer *smem)             \
    {                                                                                                              \
        several_tokens_cta(p, smem, BF16, V_FIRST, VEC, NR, NC, D128, LOAD_EF, TOK, KS);                           \
    }                                                                                                              \
    __global__ void __launch_bounds__(32 * DECODE_MAX_WARPS_PER_CTA, CTAS)                                         \
        name(const __grid_constant__ fkda_decode_params p)                                                         \
    {                                                                                                              \
        __shared__ stage_buffer decode_stage[DECODE_STAGE_BUFFERS(CU)];                                            \
        WARM_PARAMETERS(&p);                                                                                       \
        wait_for_prior_grid();                                                                                     \
        decode_cta(&p, decode_stage, BF16, V_FIRST, VEC, NR, NC, D128, LOAD_EF, TOK, KS, CU, CTAS, name##_tokens); \
    }
DECODE_TILE_VARIANTS(DECODE_DEFINE_KERNEL)

#define DECODE_KERNEL_ADDRESS(name, ...) (const void *)name,

extern "C" const void *fkda_decode_tile_kernel(int row)
{
    static const void *const kernels[] = {DECODE_TILE_VARIANTS(DECODE_KERNEL_ADDRESS)};
    return row >= 0 && row < DECODE_TILE_VARIANT_COUNT ? kernels[row] : NULL;
}

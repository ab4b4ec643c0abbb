/*
 * decode_select.c: the CUDA decode's choice of kernel variant (decode_variants.h) and geometry
 * for one call, from a description of the call and the tuning knobs (src/core/tuning.h). Plain
 * C, no CUDA: tests/c/test_decode_select.c pins every decision on the CPU. The measurements
 * behind each rule are in docs/history/decode-split.md.
 */
#include "decode_select.h"

#include <string.h>

#define TILE_ROW(name, BF16, V_FIRST, VEC, NR, NC, D128, LOAD_EF, TOK, KS, CU, CTAS) \
    {#name, FKDA_DECODE_FAMILY_TILES, BF16, V_FIRST, VEC, NR, NC, D128, LOAD_EF, TOK, KS, CU, CTAS},
#define PACKED_ROW(name, V_FIRST, LOAD_EF, KS, CU) \
    {#name, FKDA_DECODE_FAMILY_PACKED, 1, V_FIRST, 8, PK_NR, PK_NC, 1, LOAD_EF, 0, KS, CU, 0},
const fkda_decode_variant fkda_decode_variant_table[] = {DECODE_TILE_VARIANTS(TILE_ROW)
                                                             DECODE_PACKED_VARIANTS(PACKED_ROW)};

int fkda_decode_variant_find(const char *name)
{
    for (int i = 0; i < fkda_decode_variant_count; i++)
        if (strcmp(fkda_decode_variant_table[i].name, name) == 0) return i;
    return -1;
}

/* The call's token tensors are all bf16, every token offset fits in 31 bits, and either one
 * token per sequence (T = 1) with 1-D indices, or cu_seqlens (vLLM's packed form with 1-D
 * indices: the CU = 1 kernels read each sequence's bounds and loop over a longer one's tokens;
 * vLLM's speculative form with 2-D indices: the CU = 2 kernels): what the kernels compiled for
 * bf16 tokens assume. */
static int bf16_token_call(const fkda_decode_call *c)
{
    return c->tokens_bf16 && ((c->T == 1 && !c->idx_2d) || c->cu_seqlens) && c->tokens_fit_31_bits;
}

/* The form of call a TOK or packed kernel is compiled for (its CU): 0 without cu_seqlens, 1 with
 * cu_seqlens and 1-D indices, 2 with cu_seqlens and 2-D indices. */
static int call_form(const fkda_decode_call *c) { return c->cu_seqlens ? (c->idx_2d ? 2 : 1) : 0; }

/* The packed kernels hold one token's state per head as bf16 pairs: dense 128 bf16 pools, 1-D
 * indices, and T = 1 or cu_seqlens (the CU kernels run a sequence of more than one token in two
 * fp32 passes over its tokens, decode_packed.cu). */
static int packable_call(const fkda_decode_call *c)
{
    return c->dense128 && c->state_bf16 && !c->idx_2d && (c->T == 1 || c->cu_seqlens);
}

/* A call of at most one token per sequence: T = 1, or cu_seqlens with T <= N (on average at most
 * one: a decode step, such as vLLM's packed form; the lengths themselves are in device memory). */
static int decode_step(const fkda_decode_call *c) { return c->T == 1 || (c->cu_seqlens && c->T <= c->sequences); }

/* The TOK and packed kernels are compiled for one form of call (call_form). */
static int one_form(const fkda_decode_variant *v) { return v->family == FKDA_DECODE_FAMILY_PACKED || v->bf16_tokens; }

int fkda_decode_variant_serves(const fkda_decode_variant *v, const fkda_decode_call *c)
{
    if (v->bf16_pool != (c->state_bf16 != 0) || v->v_first != (c->v_first != 0)) return 0;
    if (one_form(v) && v->cu_form != call_form(c)) return 0;
    if (v->family == FKDA_DECODE_FAMILY_PACKED) return packable_call(c);
    if (v->vec > 1 && !c->vectorizable) return 0;
    if (v->dense128 && !c->dense128) return 0;
    if (v->bf16_tokens && !bf16_token_call(c)) return 0;
    return 1;
}

static int is_narrow(const fkda_decode_variant *v) { return v->rows * v->cols == 32; }

/* Among the tile variants of the pool's dtype, layout, vector width and density, narrow or not as
 * asked: the one that matches split K first, then bf16 tokens (never one compiled for bf16 tokens
 * where the call's are not, nor for the other form of cu_seqlens), then evict-first loads, then
 * the _early kernel where asked (one CTA an SM's registers: never where not asked). */
static int best_tile_variant(const fkda_decode_call *c, int narrow, int ksplit, int tok, int load_ef, int early)
{
    int found = -1, best = -1;
    for (int i = 0; i < DECODE_TILE_VARIANT_COUNT; i++) {
        const fkda_decode_variant *d = &fkda_decode_variant_table[i];
        if (d->bf16_pool != (c->state_bf16 != 0) || d->v_first != (c->v_first != 0) ||
            (d->vec > 1) != (c->vectorizable != 0) || d->dense128 != c->dense128 || is_narrow(d) != narrow ||
            (d->bf16_tokens && (!tok || d->cu_form != call_form(c))) || (d->ctas_per_sm == 1 && !early))
            continue;
        const int score = 8 * ((d->k_split == 2) == ksplit) + 4 * ((d->bf16_tokens != 0) == tok) +
                          2 * (d->load_ef == load_ef) + (d->ctas_per_sm == 1);
        if (score > best) {
            best = score;
            found = i;
        }
    }
    return found;
}

/* The packed variant of the pool's layout, split K ([K, V] only), loads and form of call. */
static int packed_variant(const fkda_decode_call *c, int ksplit, int load_ef)
{
    const int ks = !c->v_first && ksplit ? 2 : 1;
    for (int i = DECODE_TILE_VARIANT_COUNT; i < fkda_decode_variant_count; i++) {
        const fkda_decode_variant *d = &fkda_decode_variant_table[i];
        if (d->v_first == (c->v_first != 0) && d->k_split == ks && d->load_ef == load_ef &&
            d->cu_form == (c->cu_seqlens != 0))
            return i;
    }
    return -1;
}

/* Geometry of the packed kernels: 4 warps cover a head (8 with split K's pairs); fewer per CTA
 * while that leaves two thirds of the SMs without a CTA. */
static void packed_geometry(const fkda_decode_call *c, const fkda_decode_variant *v, fkda_decode_choice *out)
{
    const int ks = v->k_split;
    out->lanes_k = 128 / (PK_NR * ks);
    out->warps_per_head = ks * (128 / ((32 / out->lanes_k) * PK_NC));
    int per_cta = out->warps_per_head;
    while (per_cta > ks && 3 * c->heads * ((out->warps_per_head + per_cta - 1) / per_cta) < c->sm_count) per_cta /= 2;
    out->warps_per_cta = per_cta;
    out->ctas_per_head = (out->warps_per_head + per_cta - 1) / per_cta;
}

/* Geometry of the tile kernels. */
static fkda_decode_select_status tile_geometry(const fkda_decode_call *c, const fkda_tuning *t,
                                               const fkda_decode_variant *v, fkda_decode_choice *out)
{
    const int narrow = is_narrow(v);
    /* KL lanes per column: enough that KL * NR rows (of each of KS warps) cover K (a power of
     * two, at most 32). */
    const int rows_needed = (c->K + v->rows * v->k_split - 1) / (v->rows * v->k_split);
    int kl = 1;
    while (kl < rows_needed) kl *= 2;
    if (kl > 32) return FKDA_DECODE_SELECT_K_TOO_LARGE;
    const int cols_per_warp = (32 / kl) * v->cols;
    out->lanes_k = kl;
    out->warps_per_head = v->k_split * ((c->V + cols_per_warp - 1) / cols_per_warp);
    const int64_t heads = c->heads, sms = c->sm_count;
    const int wph = out->warps_per_head;

    /* Warps per CTA: 8 (a K = V = 128 fp32 head) or 4 (half a head: faster for large bf16
     * batches; a quarter of a narrow head, faster at the smallest batches); fewer while that
     * leaves two thirds of the SMs without a CTA (small batches are latency-bound: spread them). */
    int per_cta = c->state_bf16 || narrow ? 4 : 8;
    /* The wide bf16 [K, V] _spec tiles from 15 heads an SM: a whole head a CTA (8 warps). Measured
     * on an H100 against 4: 4 % faster at 64 x 32 and 256 x 8 (2,048 heads, 15.5 an SM), 3-9 %
     * slower at 8 and 16 x 32 (2 and 4 heads an SM), where 4 stay; the fp32 and [V, K] _spec rows
     * did not gain from 8 (bench/results/decode.md). */
    if (v->cu_form == 2 && c->state_bf16 && !c->v_first && !narrow && heads >= 15 * sms) per_cta = 8;
    while (per_cta > 1 && per_cta / 2 >= wph) per_cta /= 2;
    /* The one-token all-bf16-token kernels (but narrow bf16): 2 warps while that keeps at most two
     * CTAs per SM (measured faster; the generic-token kernels measured the other way round and
     * keep 4, and so do the _spec kernels, which serve the generic kernels' speculative calls). */
    if (v->bf16_tokens && v->cu_form != 2 && !(narrow && c->state_bf16) && per_cta > 2 &&
        heads * ((wph + 1) / 2) <= 2 * sms)
        per_cta = 2;
    /* Narrow bf16 heads keep 4 warps down to fewer heads (measured faster than 2). */
    const int spread = narrow && c->state_bf16 ? 6 : 3;
    while (per_cta > 1 && spread * heads * ((wph + per_cta - 1) / per_cta) < sms) per_cta /= 2;
    if (t->decode_warps_per_cta) per_cta = t->decode_warps_per_cta;
    if (per_cta < v->k_split) per_cta = v->k_split; /* the warps of a split-K pair share a CTA */
    out->warps_per_cta = per_cta;
    out->ctas_per_head = (wph + per_cta - 1) / per_cta;
    return FKDA_DECODE_SELECT_OK;
}

fkda_decode_select_status fkda_decode_select(const fkda_decode_call *c, const fkda_tuning *t, fkda_decode_choice *out)
{
    memset(out, 0, sizeof *out);
    const int64_t heads = c->heads, sms = c->sm_count;

    /* Programmatic dependent launch on sm_90 (the wait is in the sm_90a image): the launch
     * overlaps the previous kernel's tail. */
    out->pdl = c->cc_major == 9 && t->decode_pdl != 0;

    /* Evict-first loads of the state (fkda_decode_state_loads_ef). */
    const int load_ef = fkda_decode_state_loads_ef(heads * c->K * c->V * (c->state_bf16 ? 2 : 4), c->l2_bytes, t);

    /* Wide fp32 and packed bf16 [K, V] heads: K split between two warps (128-byte line loads)
     * beyond one wave of two CTAs per SM; below that every head is on its SM from the start, a
     * head's path is the time, and the pair's barrier costs more than the loads gain. */
    int ksplit = heads > 2 * sms;
    if (t->decode_ksplit >= 0) ksplit = t->decode_ksplit;

    /* Large batches of one-token bf16 decodes: the packed kernels, from 2 heads per SM. Not where
     * some sequence must have several tokens (cu_seqlens with T > N): the packed kernels' two
     * passes over them would be slower than a tile kernel's one. */
    int packed = packable_call(c) && decode_step(c) && heads >= 2 * sms;
    if (t->decode_packed >= 0) packed = packable_call(c) && t->decode_packed;

    /* The kernels compiled for all-bf16 tokens where the call's are (never where not), for one
     * token per sequence (with cu_seqlens: T <= N; where some sequence must have several tokens,
     * the generic kernels, whose loop over them is inline), and for speculative decoding in
     * vLLM's form (cu_seqlens, 2-D indices: the _spec kernels loop over the tokens inline). */
    int tok = bf16_token_call(c) && (decode_step(c) || c->idx_2d);
    if (t->decode_bf16_tokens == 0) tok = 0;

    /* Small batches of dense heads: narrow tiles, 32 values per lane and 16 warps per head, so
     * that each warp's path (the time at these sizes) is shorter. fp32 pools below one head per
     * SM; bf16 pools below a quarter of the SMs. With the all-bf16-token kernels of one token per
     * sequence, [K, V] bf16 pools below a sixth (the wide tile, its token loaded early too,
     * measured faster beyond), [V, K] ones up to the packed kernels' two heads per SM (there the
     * narrow tile measured faster at every batch: the wide [V, K] tile's staging waits on more of
     * the state). The _spec kernels keep the generic kernels' quarter, but for [V, K] bf16 pools,
     * narrow below one head per SM (measured faster there, slower beyond: docs/history/decode.md). */
    const int one_token_tok = tok && !c->idx_2d, spec_tok = tok && c->idx_2d;
    int bf16_narrow = 4 * heads < sms;
    if (one_token_tok)
        bf16_narrow = c->v_first ? heads < 2 * sms : 6 * heads < sms;
    else if (spec_tok && c->v_first)
        bf16_narrow = heads < sms;
    /* fp32 pools: narrow below one head per SM; one-token all-bf16-token calls on [V, K] pools up
     * to 32 heads an SM (measured faster from 512 to 4,096 heads on an H100, by 6 % at 512 and 1 %
     * at 4,096; within 0.5 % at 8,192; the [K, V] narrow tile there measured 30 % slower:
     * bench/results/decode.md). */
    const int f32_narrow = one_token_tok && c->v_first ? heads <= 32 * sms : heads < sms;
    int narrow = c->dense128 && (!c->state_bf16 ? f32_narrow : bf16_narrow);
    if (t->decode_narrow >= 0) narrow = c->dense128 && t->decode_narrow;
    /* vLLM's packed form (cu_seqlens, one token a sequence) on the wide bf16 [K, V] tile: the
     * _early kernel, which loads the token at a guessed place before the state as the narrow CU
     * tiles do, where tile_geometry gives the wide one-token tile 2 warps a CTA (4 * heads <= 2 *
     * SMs: at most two such CTAs an SM, which its ~160 registers a thread leave room for). Beyond,
     * its 4-warp CTAs would fit three an SM where the other kernel's fit four. */
    const int early = one_token_tok && c->cu_seqlens && c->state_bf16 && !c->v_first && 4 * heads <= 2 * sms;

    /* FKDA_DECODE_VARIANT names a variant: it is taken wherever it can serve the call. */
    int chosen = t->decode_variant[0] ? fkda_decode_variant_find(t->decode_variant) : -1;
    if (chosen >= 0 && !fkda_decode_variant_serves(&fkda_decode_variant_table[chosen], c)) chosen = -1;
    if (chosen < 0)
        chosen = packed ? packed_variant(c, ksplit, load_ef)
                        : best_tile_variant(c, narrow, ksplit, tok, load_ef, early);
    if (chosen < 0) return FKDA_DECODE_SELECT_NO_VARIANT;
    out->variant = chosen;
    const fkda_decode_variant *v = &fkda_decode_variant_table[chosen];
    if (v->family == FKDA_DECODE_FAMILY_PACKED) {
        packed_geometry(c, v, out);
        return FKDA_DECODE_SELECT_OK;
    }
    return tile_geometry(c, t, v, out);
}

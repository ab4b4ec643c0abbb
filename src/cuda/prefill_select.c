/*
 * prefill_select.c: the CUDA prefill's choice of kernels and launch shapes for one call, from a
 * description of the call and the tuning knobs (src/core/tuning.h). Plain C, no CUDA:
 * tests/c/test_prefill_select.c pins every decision on the CPU. The measurements behind each rule
 * are in docs/history/prefill.md (named at each rule).
 */
#include "prefill_select.h"

#include <string.h>

static int64_t vpad(const fkda_prefill_call *c) { return (c->V + 15) / 16 * 16; }

/* The fp16 family (fp16 or fp32 q, k, v with K <= 128: fp16 records and the fp16 chain,
 * docs/prefill.md); FKDA_PREFILL_FP16_CHAIN=0 keeps such inputs on the bf16 kernels, for A/B
 * runs. */
static int choose_fp16_chain(const fkda_prefill_call *c, const fkda_tuning *t)
{
    return c->K <= FKDA_PF_DK && c->fp16_inputs && t->prefill_fp16_chain != 0;
}

/* Segments per sequence (prefill_common.cuh, chain plan). Only for B equal-length rows (with
 * cu_seqlens the lengths stay on the device), and only when the (sequence, head) chains alone
 * leave SMs idle: then the sequence is cut so that pass A (two chains per segment) has about
 * three warps per SM (fewer leave the SMs idle, more only add merge work), with segments of at
 * least 64 chunks, so that each segment's own chain outweighs its share of the merge (the sweep
 * behind this rule: docs/history/prefill.md, v3). Segment arrays are 128 x 128 (V = 128 only, K
 * <= 128); checkpoints and fla's h are written by the single chain as it passes them.
 * FKDA_PREFILL_SEGMENTS overrides (1: off). */
static int64_t choose_segments(const fkda_prefill_call *c, const fkda_tuning *t)
{
    if (c->cu_seqlens || c->T <= 0 || vpad(c) != FKDA_PF_DV || c->K > FKDA_PF_DK || c->states_inside) return 1;
    const int64_t nch = (c->T + FKDA_PF_CHUNK - 1) / FKDA_PF_CHUNK, warps = c->N * c->HV * (FKDA_PF_DV / 16);
    int64_t P;
    if (t->prefill_segments > 0) { /* already clamped to 1..64 */
        P = t->prefill_segments;
        return P > nch ? nch : P;
    }
    if (warps > c->sm_count) return 1;
    P = ((int64_t)c->sm_count * 3 + warps) / (2 * warps) + 1; /* pass A: ~3 warps per SM */
    P = P > 16 ? 16 : P;
    P = P > nch / 64 ? nch / 64 : P;
    return P < 2 ? 1 : P;
}

/* The widest slice of value columns, from `widest` down to 16 by halves, that tiles vp exactly
 * and whose busiest SM carries at most 10 % more 16-column chains than the best slice's: the
 * slices' rule in every chain family (choose_vslice says why). A chain counts the same whatever
 * its warps (one, a pair or a key split's four), since only the ratio of loads decides. widest is
 * 128 at most. */
static int widest_balanced_slice(const fkda_prefill_call *c, int64_t vp, int widest)
{
    int64_t load[4], best = -1;
    int n = 0;
    for (int vs = widest; vs >= 16; vs /= 2, n++) {
        load[n] = -1;
        if (vp % vs) continue; /* slices tile vp exactly: no idle warps */
        const int64_t ctas = c->N * c->HV * (vp / vs);
        load[n] = (ctas + c->sm_count - 1) / c->sm_count * (vs / 16);
        if (best < 0 || load[n] < best) best = load[n];
    }
    for (int i = 0; i < n; i++)
        if (load[i] >= 0 && load[i] * 10 <= best * 11) return widest >> i;
    return 16;
}

/* Value columns per chain CTA (one warp per 16). Every (sequence, head) needs vpad / 16 warps in
 * all, whatever the slice, and a chain warp uses ~248 registers (8 warps fill an SM), so the slice
 * decides how evenly the warps spread over the SMs and how often each record is re-read (once
 * per slice, mostly from L2). Pick the slice whose busiest SM has the fewest warps, preferring
 * wider slices within 10 % of that, which re-read each record fewer times (docs/history/prefill.md,
 * v1). FKDA_PREFILL_VSLICE overrides it (16, 32, 64 or 128), for tuning. */
static int choose_vslice(const fkda_prefill_call *c, const fkda_tuning *t)
{
    const int64_t vp = vpad(c);
    if (t->prefill_vslice && vp % t->prefill_vslice == 0) return t->prefill_vslice; /* 16 .. 128 */
    return widest_balanced_slice(c, vp, 128);
}

/* Whether each 16-column chain runs on a chain warp and an output warp (prefill_chain.cu, split):
 * the chain warp's step loses the output's products and stores, which the output warp does one
 * chunk behind from a handoff in shared memory. That shortens the serial step only where every
 * warp has an SM scheduler (4 an SM) to itself: a chain warp that shares its scheduler with an
 * output warp loses the issue slots the split freed (T = 8192: one split CTA of 4 warps an SM at
 * H = 32 won, one of 8 warps an SM at H = 64 lost; docs/history/prefill.md, "dev/pending 02-07 on
 * the H200"). So it is taken where the split CTAs' warps, 2 per 16 columns, number at most 4 per
 * SM, which also keeps them to one wave. FKDA_PREFILL_SPLIT_OUT=1 takes it wherever the kernel
 * serves, 0 never. */
static int choose_split_out(const fkda_prefill_call *c, const fkda_tuning *t, int fp16_chain, int vslice)
{
    if (t->prefill_split_out == 0) return 0;
    if (!fkda_prefill_split_out_serves(fp16_chain, c->out_bf16_rows16, vslice)) return 0;
    if (t->prefill_split_out == 1) return 1;
    const int64_t ctas = c->N * c->HV * (vpad(c) / vslice);
    return ctas * 2 * (vslice / 16) <= (int64_t)c->sm_count * 4;
}

/* 128 < K <= 256 (prefill_chain_k256.cu): a warp pair per 16 value columns, so at most 64 columns
 * (8 warps) per chain CTA. The slice is chosen as in choose_vslice, from 64 columns down.
 * FKDA_PREFILL_VSLICE overrides (16, 32, 64). */
static int choose_vslice_k256(const fkda_prefill_call *c, const fkda_tuning *t)
{
    const int64_t vp = vpad(c);
    if (t->prefill_vslice && t->prefill_vslice <= 64 && vp % t->prefill_vslice == 0) return t->prefill_vslice;
    return widest_balanced_slice(c, vp, 64);
}

/* Small calls: the prep's step 4' (q.k and k.k as fp32 sums over the keys) for every chunk,
 * instead of step 4's products on tf32 operands. An entry of q k^T whose q and k are nearly
 * orthogonal carries its operands' rounding magnified by 1 / |cos(q, k)|, and in a call of few
 * rows nothing averages that out of the output's error (a one-token call crossed the option
 * sweep's bar: docs/history/prefill.md); fla sums these products in fp32 inside its 16-token
 * blocks. Below FKDA_PF_EXACT_QK_ROWS (token, query/key head) rows the prep is a few CTAs of a
 * latency-bound call, so the slower step costs nothing a caller sees. Not the fp16 family, whose
 * products on hi + lo terms are near fp32 already. */
static int choose_exact_qk(const fkda_prefill_call *c, int fp16_chain)
{
    const int64_t tokens = c->cu_seqlens ? c->T : c->N * c->T;
    return !fp16_chain && tokens * c->H < FKDA_PF_EXACT_QK_ROWS;
}

void fkda_prefill_select(const fkda_prefill_call *c, const fkda_tuning *t, fkda_prefill_choice *out)
{
    memset(out, 0, sizeof *out);
    if (c->K > FKDA_PF_DK) { /* the K = 256 family: no segments, no split output */
        out->segments = 1;
        out->vslice = choose_vslice_k256(c, t);
        out->exact_qk = choose_exact_qk(c, 0);
        return;
    }
    out->fp16_chain = choose_fp16_chain(c, t);
    out->exact_qk = choose_exact_qk(c, out->fp16_chain);
    out->segments = choose_segments(c, t);
    if (out->segments > 1) { /* the segment passes: a warp a 16-column chain, one CTA each */
        out->vslice = 16;
        return;
    }
    out->vslice = choose_vslice(c, t);
    out->split_out = choose_split_out(c, t, out->fp16_chain, out->vslice);
}

/*
 * decode_layer_select.c: the CUDA decode layer's choice of path (decode_layer_select.h). Plain C,
 * no CUDA.
 */
#include "decode_layer_select.h"

#include "flashkda.h"           /* fkda_dtype */
#include "decode_layer_fused.h" /* LAYER_SHORT_CONV_WIDTH */
#include "decode_select.h"      /* fkda_decode_state_loads_ef */

/* The single kernel is written for the common decode step and nothing else:
 *   - sm_90: its image exists only in the sm_90a build (cluster barriers and distributed shared
 *     memory); on sm_80 the three launches serve every call;
 *   - one token per sequence, 1-D indices or none, no accepted counts: the conv window does not
 *     slide and the state is read and written once, at one slot;
 *   - K = V = 128 and a dense pool: the narrow 128 tiles of the plain decode, whose offsets are
 *     constants;
 *   - HV = H: each qk head's conv channels belong to one cluster, which alone reads and writes
 *     them (with GVA several clusters would share them, and their conv-state writes would race
 *     the others' reads);
 *   - at most 65,535 sequences and 2^31 - 1 CTAs for a sequence's heads (the narrow tile's grid
 *     is y and x: fused_layer takes its sequence and head from them without a division; larger
 *     batches, ~100x past the narrow tile's reach and past any decode batch served, take the
 *     three launches). */
int fkda_decode_layer_fused_serves(const fkda_layer_call *c)
{
    return c->cc_major == 9 && c->T == 1 && !c->idx_2d && !c->accepted && c->K == 128 && c->V == 128 && c->HV == c->H &&
           c->dense128 && c->HV > 0 && c->heads / c->HV <= 65535 && c->HV * 8 <= INT64_C(0x7fffffff);
}

/* Waves of a grid of `heads` CTAs at `per_wave` resident at once. */
static int64_t waves(int64_t heads, int64_t per_wave) { return (heads + per_wave - 1) / per_wave; }

fkda_layer_choice fkda_decode_layer_select(const fkda_layer_call *c, const fkda_tuning *t)
{
    fkda_layer_choice out = {0, 1, 0, 0, 0};
    if (!fkda_decode_layer_fused_serves(c)) return out;

    /* The tile. The narrow one (16 warps a head, 78-128 registers a thread) fills an SM with one
     * head, each head spread over C CTAs (below) to shorten its path. The wide tile (8 warps a head,
     * 16 keys x 4 values a lane, at most 128 registers) takes two heads an SM, as the plain decode's
     * large-batch tiles do: one head's conv, barriers and norm overlap the other's state traffic, and
     * 2 x SMs heads are one wave where the narrow tile needs two. It is compiled for W <= 4 only (two
     * conv channels a thread must fit beside its 64 state values). Below one head an SM the narrow
     * tile keeps its lead only where it spreads a head over several CTAs: up to SMs / 4 heads with
     * a bf16 pool (4-8 CTAs a head), up to SMs / 2 with an fp32 pool, whose state traffic per head
     * is twice as long; beyond, the wide tile is faster (measured per tile on the H100 and the
     * H200: docs/history/decode.md, "The layer's tile at small batches", and for bf16 pools again
     * once their state words stayed raw until the state step, "The layer's bf16 state raw").
     * FKDA_DECODE_LAYER_WIDE=0/1 forces it off or on wherever it serves. */
    const int wide_serves = c->W <= LAYER_SHORT_CONV_WIDTH;
    const int narrow_wanted = (c->state_bf16 ? 4 : 2) * c->heads <= (int64_t)c->sm_count;
    const int wide = wide_serves &&
                     (t->decode_layer_wide == FKDA_TUNING_UNSET ? !narrow_wanted : t->decode_layer_wide != 0);

    /* The path. The single kernel saves two launches and the round trips of the conv's output
     * and the recurrence's output through global memory. Without the wide tile, from more than
     * two heads per SM on the three launches are faster than the narrow one (each SM then works
     * through its heads one at a time with nothing to hide each head's conv, barriers and norm,
     * where the three launches' decode takes the large-batch tiles). FKDA_DECODE_LAYER_FUSED=0
     * forces the three launches, =1 the single kernel wherever it serves (never where it does
     * not). */
    const int wanted = t->decode_layer_fused == FKDA_TUNING_UNSET ? wide || c->heads <= 2 * (int64_t)c->sm_count
                                                                  : t->decode_layer_fused != 0;
    if (!wanted) return out;
    out.fused = 1;
    if (wide) {
        out.wide = 1; /* one CTA a head: FKDA_DECODE_LAYER_CLUSTER applies to the narrow tile only */
        /* A bf16 pool's packed form: the plain decode's packed tile (16 keys x 8 values a lane
         * held as 64 bf16 pairs), 4 warps a head and three CTAs an SM, 1.5 times the heads and
         * state bytes in flight per SM of the wide tile (two an SM). A head's own step is slower
         * on it (a quarter of the threads carry the same conv, token and norm), so it pays only
         * where it takes the batch in fewer waves of the GPU: measured on an H200 (132 SMs,
         * docs/history/decode.md), it won at 288, 384, 768 and 2,048 heads (1, 1, 2 and 6
         * waves against 2, 2, 3 and 8) and lost at 256 and 512 (1 and 2 waves either way).
         * FKDA_DECODE_LAYER_PACKED=0/1 forces it off or on for every bf16 pool the wide tile
         * takes. */
        const int64_t sms = c->sm_count;
        const int fewer_waves = waves(c->heads, 3 * sms) < waves(c->heads, 2 * sms);
        out.packed = c->state_bf16 &&
                     (t->decode_layer_packed == FKDA_TUNING_UNSET ? fewer_waves : t->decode_layer_packed != 0);
        /* The packed form's state loads evict-first by the plain decode's rule. */
        out.load_ef = out.packed && fkda_decode_state_loads_ef(c->heads * c->K * c->V * 2, c->l2_bytes, t);
        return out;
    }

    /* CTAs per head. Small batches are latency-bound, so each head is spread over C CTAs (each
     * carries 128 / C columns of the state, and the head's path gets shorter); what a call pays
     * is its busiest SM's columns. Two CTAs of C = 8 (4 warps each) share an SM well, and a
     * cluster's CTAs must sit in one GPC, so clusters get an SM per CTA only up to the device's
     * room (cluster_room.cu: the driver's count; where it is not known, three quarters of the
     * SMs' worth: on the 132-SM H100, 96 CTAs in clusters of 4 or 8 got 96 SMs, 128 got 120-124,
     * the rest doubling up). Hence, up to two CTAs of C = 8 per SM:
     *   - C = 8 where its CTAs get an SM each, and where C = 4's would not either (then C = 4
     *     doubles 32 columns on some SMs, C = 8 spreads 2 x 16 over all);
     *   - between (C = 4 an SM each, C = 8 two on some SMs: 32 columns an SM both ways) a bf16
     *     pool takes C = 4, which saves the second cluster's barriers, and an fp32 pool C = 8,
     *     whose twice longer state traffic gains from the second CTA's loads in flight.
     * Measured at every C on the H100 for H = 12, 16, 32, 64 and B = 1, 2, 4 with the short-conv
     * kernels (W <= 4; wider convs take the same rule unmeasured) (docs/history/decode.md, "...
     * the cluster size at every C"): this picks the fastest C of each row within 0.06 us, and
     * with the driver's rooms (30 of 4, 15 of 8 there) of each bf16 row at 13-30 heads ("The
     * cluster rule from the driver's room"). Past two C = 8 CTAs per SM the rule from before
     * holds, the largest C with C x heads <= SMs, measured best at 64 heads (C = 2); from more
     * heads than half the SMs on, one CTA of 16 warps per head. */
    const int64_t sms = c->sm_count, own_sms = 3 * sms / 4;
    const int64_t room8 = c->room8 > 0 ? c->room8 : own_sms / 8, room4 = c->room4 > 0 ? c->room4 : own_sms / 4;
    int cluster = 1;
    if (8 * c->heads <= 2 * sms)
        cluster = c->state_bf16 && c->heads > room8 && c->heads <= room4 ? 4 : 8;
    else
        while (cluster < 8 && c->heads * cluster * 2 <= sms) cluster *= 2;
    if (t->decode_layer_cluster) cluster = t->decode_layer_cluster;
    out.cluster = cluster;
    return out;
}

/* One channel a thread (64 registers: 1,024 threads an SM) is a short chain of dependent loads
 * (index, window, stores) per thread, hidden by the number of threads. Eight channels a thread
 * make each row one 16-byte access instead of eight 2-byte ones, but hold 8 windows (126
 * registers: 512 threads an SM) in 8 times fewer threads, so less latency is hidden. Measured
 * both ways at B = 1, 8, 64 and H = 12, 32 (docs/history/decode.md): eight channels lose at small
 * batches and win at the largest; the line between is drawn where the one-channel kernel would
 * need more than two full waves of the GPU. */
int fkda_decode_layer_conv_vec(int64_t channels, int sm_count, const fkda_tuning *t)
{
    if (t->decode_layer_conv_vec != FKDA_TUNING_UNSET) return t->decode_layer_conv_vec != 0;
    return channels > 2 * (int64_t)sm_count * 1024;
}

/* The vector form reads and writes each row of CONV_VEC consecutive channels of x and of the conv
 * state as one aligned 16-byte piece: 16-bit dtypes, channels contiguous, dim and the other
 * strides multiples of FKDA_CONV_VEC_CHANNELS, the bases 16-byte aligned (y, in the workspace,
 * always is). The short forms hold the window in arrays of LAYER_SHORT_CONV_WIDTH. */
fkda_conv_kernel fkda_decode_layer_conv_kernel(const fkda_conv_call *c, int sm_count, const fkda_tuning *t)
{
    if (c->W > LAYER_SHORT_CONV_WIDTH) return FKDA_CONV_ANY_WIDTH;
    const int halves = (c->x_dtype == FKDA_DTYPE_BF16 || c->x_dtype == FKDA_DTYPE_F16) &&
                       (c->state_dtype == FKDA_DTYPE_BF16 || c->state_dtype == FKDA_DTYPE_F16);
    const int64_t V = FKDA_CONV_VEC_CHANNELS;
    const int vectorizable = halves && c->dim % V == 0 && c->x_stride[2] == 1 && c->state_stride[2] == 1 &&
                             c->x_stride[0] % V == 0 && c->x_stride[1] % V == 0 && c->state_stride[0] % V == 0 &&
                             c->state_stride[1] % V == 0 && c->bases_aligned16;
    return vectorizable && fkda_decode_layer_conv_vec(c->B * c->dim, sm_count, t) ? FKDA_CONV_SHORT_VEC
                                                                                  : FKDA_CONV_SHORT;
}

int fkda_decode_layer_bf16_io(const fkda_problem *p)
{
    const fkda_dtype bf16 = FKDA_DTYPE_BF16;
    return p->mixed_qkv.dtype == bf16 && p->conv_weight.dtype == bf16 &&
           (p->conv_bias.data == NULL || p->conv_bias.dtype == bf16) && p->conv_state.dtype == bf16 &&
           p->g.dtype == bf16 && p->beta.dtype == bf16 && p->output_gate.dtype == bf16 &&
           p->norm_weight.dtype == bf16 && p->out.dtype == bf16;
}

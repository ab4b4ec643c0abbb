/*
 * decode_layer_fused.cu: the CUDA decode layer (fkda_decode_layer) in one kernel for the common
 * decode step: one token per sequence, 1-D indices or none, K = V = 128, HV = H, a dense fp32 or
 * bf16 pool in either layout, on sm_90. decode_layer.cu picks it (decode_layer_select.c) and keeps
 * its three launches for every other call. docs/decode.md ("The single-kernel layer") has the
 * design; in short:
 *
 * A cluster of C CTAs (C in {1, 2, 4, 8}) takes one (sequence, value head). The head's 16 warps
 * of narrow tiles (decode_tile.cuh: 8 keys x 4 values per lane, 16 lanes per column, 8 columns
 * per warp) are split over the C CTAs, 16 / C warps each, so that CTA `rank` owns value columns
 * rank * 128 / C .. (rank + 1) * 128 / C - 1. Each CTA:
 *
 *   1. loads its conv windows, then its columns of the state (as the plain decode's tiles do),
 *      and while the state is in flight runs the causal conv + SiLU of its share of the
 *      channels (and steps 2 and 3 up to the state step): 256 / C of the head's
 *      q and k channels and the 128 / C v channels of its own columns, one channel per thread.
 *      It alone writes the new conv window of exactly those channels (while its q and k are in
 *      flight to the other CTAs), so no CTA reads a channel that another writes: the conv state
 *      needs no barrier. Each of the 128 / C threads without a conv job (one per column)
 *      computes the norm's scale of its column into shared memory.
 *   2. sends its q and k outputs to every other CTA of the cluster (st.async into their staging
 *      buffers, counted on an mbarrier there) and stores them in its own, computes the decay
 *      exp(a) of all 128 keys itself (cheap, and one gate load per key), then waits until its own
 *      mbarrier has counted every q and k value: the CTA now holds the whole token.
 *   3. every warp sums q.q, k.k and q.k over the 128 keys on its own (the same lanes and order in
 *      every warp: the same factors everywhere, no block barrier), then runs the one-token delta
 *      rule on its columns exactly as the plain decode does (run_tokens' arithmetic), and stores
 *      the state back in the pool's dtype at once, so that those stores drain during step 4.
 *   4. the gated RMSNorm needs sum(o^2) over the head's 128 values: each warp sends its partial
 *      sum to every other CTA of the cluster the same way (a second mbarrier), and every thread adds
 *      the head's partials (16 in the narrow tile) in the same order; the lanes holding o write out.
 *
 * For batches of more heads than SMs the same steps run on the plain decode's large-batch tile
 * (the wide tile: 16 keys x 4 values per lane, 8 warps a head, C = 1, 256 threads and at most 128
 * registers, so that two heads share an SM); there each thread convolves up to two channels
 * (docs/decode.md, "The wide tile").
 *
 * The only cluster barrier is the kernel's first: no CTA sends before every CTA of its cluster
 * runs with its mbarriers initialised. The exchanges themselves need none, whose release half
 * (MEMBAR.ALL.GPU) would wait for every memory operation in flight. With C = 1 they become plain
 * shared-memory stores and __syncthreads. Once a CTA has received both exchanges no other CTA
 * touches its shared memory, so each may exit.
 *
 * A skipped sequence (read slot outside [0, P)) does what the three-pass path does: no pool and
 * no conv state touched, and out = 0 * r * norm_weight * sigmoid(output_gate) with r the norm of
 * an all-zero o, the expression the norm kernel evaluates on the decode's o = 0.
 */
#include <stdint.h>
#include <string.h>

#include "../core/layer_problem.h"
#include "cuda_internal.h"
#include "decode_common.cuh"
#include "decode_layer_fused.h"
#include "decode_layer_select.h"
#include "decode_packed_tile.cuh"
#include "ptx_cluster.cuh"
#include "ptx_mbarrier.cuh"

/* The two tiles of a head (K = V = 128, 4 values per lane in both):
 *   narrow: 8 keys per lane, 16 lanes share a column, 16 warps a head (small batches: C CTAs);
 *   wide:   16 keys per lane, 8 lanes share a column, 8 warps a head, one CTA of 256 threads and
 *           at most 128 registers, two CTAs an SM (large batches), as the plain decode's tiles. */
#define FUSED_NC 4
#define FUSED_NARROW_NR 8
#define FUSED_WIDE_NR 16
#define FUSED_WARPS(NR) (128 * 128 / (32 * (NR)*FUSED_NC)) /* warps a head */
#define FUSED_MAX_WARPS FUSED_WARPS(FUSED_NARROW_NR)
/* Floats per staged vector (stage_pos: lanes of a column x (keys per lane + pad)), the larger of
 * the two tiles'. */
#define FUSED_STAGE_OF(NR) ((128 / (NR)) * ((NR) + DECODE_ROW_PAD))
#define FUSED_STAGE                                                                                    \
    (FUSED_STAGE_OF(FUSED_NARROW_NR) > FUSED_STAGE_OF(FUSED_WIDE_NR) ? FUSED_STAGE_OF(FUSED_NARROW_NR) \
                                                                     : FUSED_STAGE_OF(FUSED_WIDE_NR))
#define FUSED_MAX_WIDTH 16 /* the largest conv width W the API accepts */
#define FUSED_KEYS 2       /* keys whose decay one thread computes: 128 keys over at least 64 threads */
/* Conv channels per thread: a head has 384 (q, k, v), the narrow tiles' CTAs have at least
 * 384 / C threads for theirs (one each), the wide tile's 256 threads take up to two. */
#define FUSED_CHANNELS(NR) ((NR) == FUSED_WIDE_NR ? 2 : 1)
/* The packed tile (bf16 pools, large batches): the plain decode's packed tile
 * (decode_packed_tile.cuh: 16 keys x 8 values a lane held as 64 bf16 pairs), 4 warps a head, one
 * CTA of 128 threads; each thread convolves three of the head's 384 channels. */
#define FUSED_PACKED_WARPS 4
/* The narrow tile's side warps (its short-conv kernels): two warps after the tile's that load and
 * prepare what the tile needs only after the q/k exchange (fused_layer, side_values). */
#define FUSED_SIDE_THREADS 64
#define FUSED_PACKED_CHANNELS 3
#define FUSED_MAX_CHANNELS FUSED_PACKED_CHANNELS
static_assert(PK_NR == FUSED_WIDE_NR, "the packed tile has the wide tile's rows (one CTA a head)");

/* The kernel's parameters: the plain decode's (the pool, the indices, the gate's parameters, g,
 * beta and the options; q, k, v and out unused) and the layer's own tensors. Strides in elements:
 * mixed_qkv [row, position, channel], conv_weight [channel, tap], conv_state [slot, row, channel],
 * output_gate and out [row, position, head, value]. */
typedef struct fused_layer_params {
    fkda_decode_params d;
    const void *x;
    int64_t x_stride[3];
    int32_t x_dtype;
    const void *conv_weight;
    int64_t w_stride[2];
    int32_t w_dtype;
    const void *conv_bias; /* NULL: 0 */
    int64_t bias_stride;
    int32_t bias_dtype;
    void *conv_state;
    int64_t cs_stride[3];
    int32_t cs_dtype;
    int64_t conv_slots; /* P_conv */
    const void *gate;
    int64_t gate_stride[4];
    int32_t gate_dtype;
    const void *norm_weight;
    int64_t nw_stride;
    int32_t nw_dtype;
    void *out;
    int64_t out_stride[4];
    int32_t out_dtype;
    int64_t H;
    int32_t W;
    int32_t cluster_shift; /* log2(C), C the CTAs per head (one cluster) */
    float eps;
} fused_layer_params;

/* Shared memory: the token staged for the lanes' register rows (stage_pos order, as the plain
 * decode), this CTA's v channels by column, and every warp's partial sum of o^2. */
typedef struct __align__(16) fused_smem
{
    float q[FUSED_STAGE], k[FUSED_STAGE], d[FUSED_STAGE];
    float v[128];
    float squares[FUSED_MAX_WARPS];
    float beta;                      /* the side warps' beta (the narrow short-conv kernels) */
    float out_scale[128];            /* the norm's factor by column (out_scale_of) */
    uint64_t token_bar, squares_bar; /* C > 1: the exchanges' mbarriers (send_everywhere) */
}
fused_smem;

/* ---- cluster operations (sm_90 PTX) ----------------------------------------------------------- */

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
/* The kernel's one cluster barrier (ptx_cluster.cuh), in two halves, at its start: every thread of
 * every CTA arrives (relaxed: it orders nothing but the exchanges' barrier initialisation, which a
 * fence releases), and waits for all the others before its first remote store, so that no CTA
 * stores into one that has not started or whose barriers are not initialised yet. */

/*
 * The exchanges (the token's q and k, then each warp's sum of o^2) go CTA to CTA without a cluster
 * barrier: a barrier.cluster.arrive.release compiles to MEMBAR.ALL.GPU, which waits for every
 * memory operation the thread has in flight, on the head's path. Instead each value bound for
 * another CTA is an st.async into that CTA's shared memory that completes its 4 bytes on an
 * mbarrier there (one per exchange, used for one phase); each CTA's thread 0 initialised its own
 * with one arrival and announced (expect_tx) the bytes the other CTAs will send it, so the phase
 * completes when they all have landed, and the receiver's threads wait for it with acquire at
 * cluster scope. A CTA's values for itself are plain shared stores, published by a __syncthreads
 * after the wait. Every CTA receives every byte sent to it before it goes on, so none exits while
 * a store to it is in flight.
 */
static __device__ __forceinline__ uint32_t shared_address(const void *p)
{
    return (uint32_t)__cvta_generic_to_shared(p);
}

/* Thread 0, at the kernel's start (before its cluster arrival): the exchange's barrier expects
 * `bytes`. */
static __device__ __forceinline__ void exchange_init(uint64_t *bar, uint32_t bytes)
{
    const uint32_t b = shared_address(bar);
    mbar_init(b, 1);
    mbar_fence_init(); /* released to the other CTAs by the cluster barrier that follows */
    mbar_arrive_expect_tx(b, bytes);
}

/* x into `local` of every CTA of the cluster: this one's by a plain store (the caller's
 * __syncthreads publishes it), the others' by st.async counted on their `bar`. */
static __device__ __forceinline__ void send_everywhere(float *local, uint64_t *bar, int C, int rank, float x)
{
    *local = x;
    if (C == 1) return;
    const uint32_t at = shared_address(local), b = shared_address(bar);
    for (int r = 0; r < C; r++) {
        if (r == rank) continue;
        asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.b32 [%0], %1, [%2];" ::"r"(
                         cluster_address(at, (uint32_t)r)),
                     "r"(__float_as_uint(x)), "r"(cluster_address(b, (uint32_t)r))
                     : "memory");
    }
}

/* The GPU's wall clock in nanoseconds (the same on every SM, and across a CTA's preemption). */
static __device__ __forceinline__ uint64_t global_ns(void)
{
    uint64_t t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

/* Waits until every byte the exchange's barrier expects has landed (its phase 0 completed). A
 * miscount would wait forever, holding the GPU: after 30 s (far beyond any wait, the skew of a
 * cluster's CTAs being microseconds, milliseconds under a sanitizer) the kernel traps instead, so
 * that the caller gets a CUDA error. A debugger that halts the GPU longer than that inside the
 * wait makes it trap too. */
static __device__ __forceinline__ void wait_received(uint64_t *bar)
{
    const uint32_t b = shared_address(bar);
    const uint64_t start = global_ns();
    while (!mbar_try_wait_cluster(b, 0))
        if (global_ns() - start > 30000000000ull) __trap();
}

/* ---- the conv of one channel ------------------------------------------------------------------ */

/* One channel's conv: its taps, bias and input as raw bits (loaded before the slot is known),
 * then its window (right-aligned in MW - 1 registers, so that every index is a constant after
 * unrolling) and where its conv slot is. Zero bits are 0.0 in every dtype. MW, the widest conv
 * the kernel takes, is a constant of each kernel: 4 (Kimi-Linear's short conv is 4 wide;
 * the loops then issue 7 loads per channel, not 31) or FUSED_MAX_WIDTH. */
typedef struct conv_channel {
    uint32_t wt[FUSED_MAX_WIDTH], hist[FUSED_MAX_WIDTH - 1];
    uint32_t bias, x;
    int64_t ch;   /* the channel */
    int64_t base; /* its element in row 0 of its conv slot */
    int has_slot; /* the slot is inside the conv pool (else a zero window, nothing written) */
} conv_channel;

/* The loads that need no slot: the taps (right-aligned: entry i holds tap i - (M - W)), bias, x;
 * none where !job (a thread without this channel job: all zero bits). Predicated loads, not a
 * branch around them: inside a branch the compiler converted x as soon as it was loaded, and the
 * warp waited there for DRAM before it issued the state's loads. */
static __device__ __forceinline__ void conv_load_inputs(const fused_layer_params *p, int64_t n, int64_t ch, int job,
                                                        conv_channel *cc, const int MW)
{
    const int M = MW, lead = M - p->W;
    cc->ch = ch;
    cc->has_slot = 0;
#pragma unroll
    for (int i = 0; i < M; i++)
        cc->wt[i] = load_bits_split_if(p->conv_weight, p->w_dtype, ch * p->w_stride[0] + (i - lead) * p->w_stride[1],
                                       job && i >= lead);
    cc->bias = load_bits_split_if(p->conv_bias, p->bias_dtype, ch * p->bias_stride, job && p->conv_bias != NULL);
    cc->x = load_bits_split_if(p->x, p->x_dtype, n * p->x_stride[0] + ch * p->x_stride[2], job);
}

/* The window w_0 .. w_{W-2} from conv slot `cslot` (a zero window where it is outside the pool,
 * and nothing loaded where !job). */
static __device__ __forceinline__ void conv_load_window(const fused_layer_params *p, int64_t cslot, int job,
                                                        conv_channel *cc, const int MW)
{
    const int M = MW, lead = M - p->W;
    cc->has_slot = job && cslot >= 0 && cslot < p->conv_slots;
    cc->base = cslot * p->cs_stride[0] + cc->ch * p->cs_stride[2];
#pragma unroll
    for (int i = 0; i < M - 1; i++)
        cc->hist[i] = load_bits_split_if(p->conv_state, p->cs_dtype, cc->base + (i - lead) * p->cs_stride[1],
                                         cc->has_slot && i >= lead);
}

/* y = silu(bias + sum_{j < W} weight[j] * s[j]) over s = (w_0 .. w_{W-2}, x), summed oldest first
 * as the conv kernel of decode_layer.cu does (and the CPU). */
static __device__ __forceinline__ float conv_output(const fused_layer_params *p, const conv_channel *cc, const int MW)
{
    const int M = MW, lead = M - p->W;
    float acc = bits_to_float(cc->bias, p->bias_dtype);
#pragma unroll
    for (int i = 0; i < M - 1; i++)
        if (i >= lead) acc += bits_to_float(cc->wt[i], p->w_dtype) * bits_to_float(cc->hist[i], p->cs_dtype);
    acc += bits_to_float(cc->wt[M - 1], p->w_dtype) * bits_to_float(cc->x, p->x_dtype);
    return acc / (1.0f + expf(-acc));
}

/* The new window (w_1 .. w_{W-2}, x) into rows 0 .. W - 2 of the channel's conv slot: the raw
 * inputs, rounded to the conv state's dtype. One thread per channel: nothing else reads or writes
 * this channel of the slot. */
static __device__ __forceinline__ void conv_write(const fused_layer_params *p, const conv_channel *cc, const int MW)
{
    const int M = MW, W = p->W, lead = M - W;
    if (!cc->has_slot) return;
#pragma unroll
    for (int i = 0; i < M - 1; i++)
        if (i > lead)
            store_float(p->conv_state, p->cs_dtype, cc->base + (i - lead - 1) * p->cs_stride[1],
                        bits_to_float(cc->hist[i], p->cs_dtype));
    store_float(p->conv_state, p->cs_dtype, cc->base + (W - 2) * p->cs_stride[1], bits_to_float(cc->x, p->x_dtype));
}

/* The norm's factor of value j, norm_weight[j] / (1 + exp(-output_gate[j])), from their bits:
 * formed once per column, before the step, so that the output's lanes multiply (store_out). */
static __device__ __forceinline__ float out_scale_of(const fused_layer_params *p, uint32_t gate_bits,
                                                     uint32_t weight_bits)
{
    return bits_to_float(weight_bits, p->nw_dtype) / (1.0f + expf(-bits_to_float(gate_bits, p->gate_dtype)));
}

static __device__ __forceinline__ uint32_t load_gate_bits(const fused_layer_params *p, int64_t n, int64_t h, int j,
                                                          int ok)
{
    return load_bits_split_if(p->gate, p->gate_dtype,
                              n * p->gate_stride[0] + h * p->gate_stride[2] + j * p->gate_stride[3], ok);
}

static __device__ __forceinline__ uint32_t load_weight_bits(const fused_layer_params *p, int j, int ok)
{
    return load_bits_split_if(p->norm_weight, p->nw_dtype, j * p->nw_stride, ok);
}

/* out[j] = o * r * norm_weight[j] * sigmoid(output_gate[j]), as (o * r) * scale with scale =
 * w / (1 + e^-g) (out_scale_of). The norm kernel of decode_layer.cu divides last, ((o r) w) /
 * (1 + e^-g): the two differ by a rounding; here the division is off the step's last stretch,
 * where each lane had four. */
static __device__ __forceinline__ void store_out(const fused_layer_params *p, int64_t n, int64_t h, int j, float o,
                                                 float r, float scale)
{
    store_float(p->out, p->out_dtype, n * p->out_stride[0] + h * p->out_stride[2] + j * p->out_stride[3],
                o * r * scale);
}

/* The side warps and the tile's own form (the kernels without side warps) share the loads and the
 * arithmetic below, so that both give the same bits. */

/* Key e's g and dt_bias bits (dt_bias only where `biased`), predicated on ok. */
static __device__ __forceinline__ void load_key_bits(const fused_layer_params *p, int64_t n, int64_t h, int e, int ok,
                                                     int biased, split_word *g, split_word *bias)
{
    *g = load_split_word(p->d.g, p->d.g_dtype, n * p->d.g_stride[0] + h * p->d.g_stride[2] + e * p->d.g_stride[3], ok);
    *bias = load_split_word(p->d.dt_bias, p->d.dt_bias_dtype, h * p->d.dt_bias_stride[0] + e * p->d.dt_bias_stride[1],
                            ok && biased);
}

/* A_log's bits, and the gate's weight exp(A_log) from them (1 without a gate or an A_log). */
static __device__ __forceinline__ split_word load_A_bits(const fused_layer_params *p, int64_t h, int gated)
{
    return load_split_word(p->d.A_log, p->d.A_log_dtype, h * p->d.A_log_stride, gated && p->d.A_log);
}
static __device__ __forceinline__ float A_weight_of(const fused_layer_params *p, split_word A_bits, int gated)
{
    return gated && p->d.A_log ? expf(bits_to_float(joined_bits(A_bits), p->d.A_log_dtype)) : 1.0f;
}

/* A key's decay exp(a) from its g and dt_bias bits (the gate of decode_stage.cuh's stage_token),
 * and beta from its bits. */
static __device__ __forceinline__ float key_decay(const fused_layer_params *p, split_word g, split_word bias,
                                                  float A_weight)
{
    float a = bits_to_float(joined_bits(g), p->d.g_dtype);
    if (p->d.gate != FKDA_GATE_NONE) {
        a += bits_to_float(joined_bits(bias), p->d.dt_bias_dtype);
        a = p->d.gate == FKDA_GATE_LOWER_BOUND ? p->d.lower_bound * sigmoidf_(A_weight * a) : -A_weight * softplusf_(a);
    }
    return expf(a);
}

static __device__ __forceinline__ float beta_of(const fused_layer_params *p, uint32_t bits)
{
    const float beta = bits_to_float(bits, p->d.beta_dtype);
    return p->d.use_beta_sigmoid ? (p->d.allow_neg_eigval ? 2.0f : 1.0f) * sigmoidf_(beta) : beta;
}

/* The side values of a narrow-tile CTA's step, computed by its two side warps (the short-conv
 * kernels): the decay of every key (into d, at stage_pos), beta (into *beta_out) and the norm's
 * scales of the CTA's columns col0 .. col0 + cols - 1 (into out_scale). Side thread t
 * (0 .. 63) takes keys t and t + 64 and columns col0 + t, col0 + t + 64 (those below cols); the
 * tile's warps read the values after the __syncthreads that ends the q/k exchange. On the tile's
 * warps these loads' address work (~100 instructions) and the decays (~60) sat before the index's
 * load and the q/k send, with one or two warps a scheduler at small batches to hide nothing
 * (docs/history/decode.md, "The layer's path to the state's loads, counted"). The same loads and
 * the same arithmetic as the tile's own form, so the same bits. */
static __device__ __forceinline__ void side_values(const fused_layer_params *p, const lane_tile *w, int64_t n,
                                                   int64_t h, int t, int col0, int cols, float *d, float *beta_out,
                                                   float *out_scale, const int V_FIRST, const int VEC, const int NR)
{
    const int gated = p->d.gate != FKDA_GATE_NONE, biased = gated && p->d.dt_bias != NULL;
    split_word g_bits[2], bias_bits[2];
    uint32_t gate_bits[2], weight_bits[2];
#pragma unroll
    for (int i = 0; i < 2; i++) {
        const int e = t + 64 * i, has_col = e < cols;
        load_key_bits(p, n, h, e, 1, biased, &g_bits[i], &bias_bits[i]);
        gate_bits[i] = load_gate_bits(p, n, h, col0 + e, has_col);
        weight_bits[i] = load_weight_bits(p, col0 + e, has_col);
    }
    const split_word A_bits = load_A_bits(p, h, gated);
    const uint32_t beta_bits = load_bits_split_if(p->d.beta, p->d.beta_dtype,
                                                  n * p->d.beta_stride[0] + h * p->d.beta_stride[2], t == 0);
    const float A_weight = A_weight_of(p, A_bits, gated);
#pragma unroll
    for (int i = 0; i < 2; i++) {
        const int e = t + 64 * i;
        d[stage_pos(w, e, V_FIRST, VEC, NR)] = key_decay(p, g_bits[i], bias_bits[i], A_weight);
        if (e < cols) {
            out_scale[col0 + e] = out_scale_of(p, gate_bits[i], weight_bits[i]);
        }
    }
    if (t == 0) *beta_out = beta_of(p, beta_bits);
}

/* The conv channel of job `job` of CTA `rank`: jobs 0 .. 256 / C - 1 are the CTA's share of the
 * head's q and k channels, the next 128 / C the v channels of its value columns from col0 on. */
static __device__ __forceinline__ int64_t conv_job_channel(const fused_layer_params *p, int job, int rank, int cs,
                                                           int64_t h, int col0)
{
    const int64_t K = 128, H = p->H; /* HV = H: value head h's query and key head is h */
    const int qk_jobs = 256 >> cs;   /* C = 2^cs */
    if (job < qk_jobs) {
        const int i = rank * qk_jobs + job; /* 0..127: q key i; 128..255: k key i - 128 */
        return i < 128 ? h * K + i : H * K + h * K + (i - 128);
    }
    return 2 * H * K + h * 128 + col0 + (job - qk_jobs);
}
#endif

/* ---- the kernel -------------------------------------------------------------------------------- */

/* NR: the tile's keys a lane (FUSED_NARROW_NR or FUSED_WIDE_NR); PACKED (bf16 pools, with
 * NR = PK_NR): the wide tile's rows with PK_NC values a lane held as bf16 pairs, its state loaded
 * evict-first with LOAD_EF. */
static __device__ __forceinline__ void fused_layer(const fused_layer_params *p, const int BF16, const int V_FIRST,
                                                   const int VEC, const int MW, const int NR, const int PACKED,
                                                   const int LOAD_EF)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    __shared__ fused_smem sm;
    const int WIDE = NR == FUSED_WIDE_NR; /* one CTA a head: the wide and the packed tile */
    /* C = 2^cs CTAs a head: the divisions by C are shifts (C is a run-time value, and each division
     * by it was ~20 instructions on the path to the index's load). */
    const int cs = WIDE ? 0 : p->cluster_shift, C = 1 << cs, NC = PACKED ? PK_NC : FUSED_NC;
    const int WARPS = PACKED ? FUSED_PACKED_WARPS : FUSED_WARPS(NR);
    const int CH = PACKED ? FUSED_PACKED_CHANNELS : FUSED_CHANNELS(NR);
    const int KEYS = WIDE ? 1 : FUSED_KEYS;           /* the wide tile's 256 threads, the packed tile's 128:
                                                        * one key each, or none */
    const int rank = C > 1 ? (int)cluster_rank() : 0; /* cluster dims (C, 1, 1): blockIdx.x % C */
    /* The grid. The narrow tile's is (HV x C, B): x the CTAs of a sequence's heads (C a head), y
     * its sequence (the rule keeps B within gridDim.y's 65,535), so that neither needs a division
     * on the B = 1 path. The wide and packed tiles' is 1-D, B x HV (their one division, by HV,
     * is hidden by the other heads' latency; with the 2-D grid ptxas spilled up to 88 bytes in
     * the packed kernels). */
    const uint32_t HV = (uint32_t)p->d.HV;
    const int64_t n = WIDE ? blockIdx.x / HV : blockIdx.y;
    /* Before any CTA writes another's shared memory, all of them must be running with their
     * exchanges' barriers initialised: this arrival is waited for just before the first remote
     * store. */
    if (C > 1) {
        if (threadIdx.x == 0) {
            /* what the other CTAs send: their q and k outputs, their warps' sums of o^2 */
            exchange_init(&sm.token_bar, (256 - (256 >> cs)) * sizeof(float));
            exchange_init(&sm.squares_bar, (FUSED_WARPS(NR) - (FUSED_WARPS(NR) >> cs)) * sizeof(float));
        }
        cluster_arrive_relaxed();
    }
    wait_for_prior_grid();

    /* SIDE: the narrow tile's short-conv kernels run two side warps after the tile's (side_values);
     * nthreads counts the tile's threads. */
    const int SIDE = !WIDE && MW == LAYER_SHORT_CONV_WIDTH;
    const int tid = threadIdx.x, nthreads = SIDE ? (32 * FUSED_WARPS(NR)) >> cs : blockDim.x, warp = tid >> 5,
              lane = tid & 31;
    const int64_t h = WIDE ? blockIdx.x - (uint32_t)n * HV : blockIdx.x >> cs;
    const lane_tile w = make_lane_tile(&p->d, rank * (nthreads >> 5) + warp, V_FIRST, NR, NC, 1, 1);
    const int cols = 128 >> cs, col0 = rank * cols; /* this CTA's value columns */
    if (SIDE && tid >= nthreads) {
        /* A side warp: its values, then every barrier the tile's warps take (the cluster's, both
         * exchanges' waits and both __syncthreads), leaving with them on a skipped slot. The
         * slot's index is issued first, with the values' loads, and read after them: its round
         * trip then overlaps theirs instead of following them and the values' work. */
        const index_words none = {0u, 0u};
        const index_words slot_words = load_index_words_if(p->d.state_indices, p->d.idx_dtype, n * p->d.idx_stride[0],
                                                           p->d.state_indices != NULL, none);
        side_values(p, &w, n, h, tid - nthreads, col0, cols, sm.d, &sm.beta, sm.out_scale, V_FIRST, VEC, NR);
        const int64_t slot = p->d.state_indices ? index_value(slot_words, p->d.idx_dtype) : n;
        if (C > 1) cluster_wait();
        if (slot < 0 || slot >= p->d.pool_size) return;
        if (C > 1) wait_received(&sm.token_bar);
        __syncthreads();
        if (C > 1) wait_received(&sm.squares_bar);
        __syncthreads();
        return;
    }

    /* Every load that needs no slot first, so that they are in flight while the slot's index
     * arrives: the conv's taps, bias and input of this thread's channels (jobs tid and, in the
     * wide tile, tid + 256: 256 / C of the head's q and k channels, then 128 / C of v), the gate's
     * g and dt_bias of its keys, A_log, beta, and output_gate and norm_weight of one column. The
     * packed tile's 128 threads take jobs tid, tid + 128 and tid + 256. */
    const int qk_jobs = 256 >> cs, jobs = qk_jobs + cols;
    conv_channel cc[FUSED_MAX_CHANNELS];
#pragma unroll
    for (int i = 0; i < CH; i++) {
        const int job = tid + i * nthreads;
        conv_load_inputs(p, n, conv_job_channel(p, job, rank, cs, h, col0), job < jobs, &cc[i], MW);
    }
    /* (In the SIDE kernels the side warps load and prepare these, side_values.) */
    const int gated = p->d.gate != FKDA_GATE_NONE, biased = gated && p->d.dt_bias != NULL;
    split_word g_bits[FUSED_KEYS], bias_bits[FUSED_KEYS], A_bits;
    A_bits.b32 = A_bits.b16 = 0u;
    uint32_t beta_bits = 0u;
    if (!SIDE) {
#pragma unroll
        for (int i = 0; i < KEYS; i++) {
            g_bits[i].b32 = g_bits[i].b16 = bias_bits[i].b32 = bias_bits[i].b16 = 0u;
            if (i * nthreads >= 128) continue; /* uniform: only CTAs of 64 threads (C = 8) take 2 keys */
            const int e = tid + i * nthreads;
            load_key_bits(p, n, h, e, e < 128, biased, &g_bits[i], &bias_bits[i]);
        }
        A_bits = load_A_bits(p, h, gated);
        beta_bits = load_bits_split_if(p->d.beta, p->d.beta_dtype, n * p->d.beta_stride[0] + h * p->d.beta_stride[2],
                                       1);
    }
    /* The last `cols` threads (the narrow tile's, one per column, have no conv job; the wide
     * tile's have one where the first 128 have two; the packed tile's are all of its threads):
     * output_gate and norm_weight of column
     * col0 + column, whose factors the thread computes once and shares through shared memory with
     * the lanes that write out. */
    const int column = tid - (nthreads - cols), has_column = column >= 0;
    uint32_t gate_bits = 0u, weight_bits = 0u;
    if (!SIDE) {
        gate_bits = load_gate_bits(p, n, h, col0 + column, has_column);
        weight_bits = load_weight_bits(p, col0 + column, has_column);
    }

    const int64_t slot = p->d.state_indices ? load_index(p->d.state_indices, p->d.idx_dtype, n * p->d.idx_stride[0])
                                            : n;
    if (slot < 0 || slot >= p->d.pool_size) { /* skipped: uniform over the cluster */
        const float r = 1.0f / sqrtf(0.0f / 128.0f + p->eps);
        if (SIDE) { /* (the side warps' factors are for the state step; a skipped slot loads its own) */
            gate_bits = load_gate_bits(p, n, h, col0 + column, has_column);
            weight_bits = load_weight_bits(p, col0 + column, has_column);
        }
        if (has_column) store_out(p, n, h, col0 + column, 0.0f, r, out_scale_of(p, gate_bits, weight_bits));
        if (C > 1) cluster_wait();
        return;
    }

    /* The conv windows, then the state's tile, both at the slot. The windows first: the conv, the
     * q and k exchange and the norms then run while the state streams in, and only the state step
     * waits for it (issued after the state's loads, the windows arrived after all of it, and that
     * work came after the state instead). The state's loads are streaming (evict-first) in the
     * narrow tile, which serves at most one head per SM, whose states are then far below twice
     * the L2 (where the plain decode's rule streams too), and ordinary in the wide one, compiled
     * one way only for every batch it serves (docs/decode.md, "The wide tile"). */
#pragma unroll
    for (int i = 0; i < CH; i++) conv_load_window(p, slot, tid + i * nthreads < jobs, &cc[i], MW);
    float s[DECODE_MAX_R][DECODE_MAX_C];                      /* the unpacked tiles' state (raw bf16
                                                               * words until finish_raw_tile) */
    uint32_t sp[PK_NR * PK_NC / 2];                           /* the packed tile's: bf16 pairs */
    const int sk = V_FIRST ? 1 : 128, sv = V_FIRST ? 128 : 1; /* the packed tile's strides */
    const int64_t lane_at = (int64_t)tile_row(&w, 0, V_FIRST, VEC) * sk + (int64_t)tile_col(&w, 0, V_FIRST, VEC) * sv;
    if (PACKED) {
        const int64_t *si = p->d.state_in_stride;
        pk_load_state(&w, (const unsigned short *)p->d.state_in + slot * si[0] + h * si[1] + lane_at, true, sp, V_FIRST,
                      LOAD_EF);
    } else {
        /* A bf16 pool's words stay raw (BF16 = 2) until the state step (finish_raw_tile): converted
         * as they arrived, they made the conv, the q/k exchange and the norms wait for the state's
         * round trip, which those steps are placed here to overlap. */
        load_tile(&p->d, &w, slot, h, s, BF16 ? 2 : 0, V_FIRST, VEC, NR, NC, 1, WIDE ? 0 : 1);
    }

    /* The decay of every key (each CTA all 128), beta (the side warps' in the SIDE kernels, read
     * after the exchange), and this thread's conv output. */
    float beta = 0.0f;
    if (!SIDE) {
        const float A_weight = A_weight_of(p, A_bits, gated);
#pragma unroll
        for (int i = 0; i < KEYS; i++) {
            const int e = tid + i * nthreads;
            if (e >= 128) continue;
            sm.d[stage_pos(&w, e, V_FIRST, VEC, NR)] = key_decay(p, g_bits[i], bias_bits[i], A_weight);
        }
        beta = beta_of(p, beta_bits);
    }
    float y[FUSED_MAX_CHANNELS];
#pragma unroll
    for (int i = 0; i < CH; i++) y[i] = tid + i * nthreads < jobs ? conv_output(p, &cc[i], MW) : 0.0f;

    /* 2. q and k to every CTA, v to this one; then the whole token is everywhere. */
    if (C > 1) cluster_wait(); /* every CTA of the cluster is running */
#pragma unroll
    for (int i = 0; i < CH; i++) {
        const int job = tid + i * nthreads;
        if (job < qk_jobs) {
            const int key = rank * qk_jobs + job, e = key & 127;
            float *at = (key < 128 ? sm.q : sm.k) + stage_pos(&w, e, V_FIRST, VEC, NR);
            send_everywhere(at, &sm.token_bar, C, rank, y[i]);
        } else if (job < jobs) {
            sm.v[col0 + (job - qk_jobs)] = y[i];
        }
    }
    /* While the q and k are in flight: the new conv windows go out (nothing after this waits for
     * global stores: the exchanges' waits are acquires, and __syncthreads), freeing their
     * registers for the state step, and the norm's scale of this thread's column. */
#pragma unroll
    for (int i = 0; i < CH; i++)
        if (tid + i * nthreads < jobs) conv_write(p, &cc[i], MW);
    if (!SIDE && has_column) {
        sm.out_scale[col0 + column] = out_scale_of(p, gate_bits, weight_bits);
    }
    if (C > 1) wait_received(&sm.token_bar); /* the other CTAs' q and k */
    __syncthreads();                         /* this CTA's own stores: decay, v, norm factors */
    if (SIDE) beta = sm.beta;

    /* 3. The norms, by every warp alone over all 128 keys (the same sums in every warp). */
    float ssq = 0.0f, ssk = 0.0f, qk = 0.0f;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int at = stage_pos(&w, lane + 32 * i, V_FIRST, VEC, NR);
        const float q = sm.q[at], k = sm.k[at];
        ssq = fmaf(q, q, ssq);
        ssk = fmaf(k, k, ssk);
        qk = fmaf(q, k, qk);
    }
    ssq = warp_sum(ssq);
    ssk = warp_sum(ssk);
    qk = warp_sum(qk);
    float qf = p->d.scale, kf = 1.0f;
    if (p->d.use_qk_l2norm) { /* as stage_token: x * (1 / sqrt(sum x^2 + 1e-6)) */
        qf *= 1.0f / sqrtf(ssq + 1e-6f);
        kf = 1.0f / sqrtf(ssk + 1e-6f);
    }
    const float kq = qk * qf * kf;

    /* The one-token delta rule on this warp's columns: run_tokens' arithmetic. */
    const int lane_rows = w.kl * (NR + DECODE_ROW_PAD);
    const float *lq = sm.q + lane_rows, *lk = sm.k + lane_rows, *ld = sm.d + lane_rows;
    float pk[DECODE_MAX_C], pq[DECODE_MAX_C];
    if (PACKED)
        pk_decay_dots(sp, ld, lk, lq, pk, pq, V_FIRST);
    else {
        if (BF16) finish_raw_tile(s, V_FIRST, NR, NC);
        TILE_DECAY_DOTS(s, ld, lk, lq, pk, pq, NR, NC);
    }
    tile_column_sums(pk, pq, V_FIRST ? 1 : w.LJ, V_FIRST ? w.KL : 32, NC);
    float o[DECODE_MAX_C], vk[DECODE_MAX_C], squares = 0.0f;
#pragma unroll
    for (int c = 0; c < NC; c++) {
        const float vn = beta * (sm.v[tile_col(&w, c, V_FIRST, VEC)] - kf * pk[c]);
        vk[c] = kf * vn;
        o[c] = fmaf(kq, vn, qf * pq[c]);
        squares = fmaf(o[c], o[c], squares);
    }
    /* 4. sum(o^2) over the head: each warp's (its kl = 0 lanes hold each of its columns once) to
     * every CTA, then all of them in the same order everywhere. The wide tile sends it before the
     * state's update and stores (its __syncthreads then waits less after them); the narrow and
     * packed tiles after, as measured faster there (docs/history/decode.md, "The layer's side
     * warps"). */
    const int SQUARES_FIRST = WIDE && !PACKED;
    if (SQUARES_FIRST) {
        squares = warp_sum(w.kl == 0 ? squares : 0.0f);
        if (lane == 0) send_everywhere(&sm.squares[rank * (nthreads >> 5) + warp], &sm.squares_bar, C, rank, squares);
    }

    /* The new state out now, not after the norm: its stores (the step's largest traffic) then
     * drain while the sums of o^2 are exchanged, and nothing after them waits for global stores.
     * The packed tile's as the plain decode's packed kernels store theirs (evict-first). */
    if (PACKED) {
        pk_rank1_update(sp, ld, lk, vk, V_FIRST);
        const int64_t *so = p->d.state_out_stride;
        pk_store_state(&w, (unsigned short *)p->d.state_out + slot * so[0] + h * so[1] + lane_at, sp, V_FIRST, 1);
    } else {
        tile_rank1_update(s, lk, vk, NR, NC);
        store_tile(&p->d, &w, slot, h, s, BF16, V_FIRST, VEC, NR, NC, 1);
    }

    if (!SQUARES_FIRST) {
        squares = warp_sum(w.kl == 0 ? squares : 0.0f);
        if (lane == 0) send_everywhere(&sm.squares[rank * (nthreads >> 5) + warp], &sm.squares_bar, C, rank, squares);
    }
    if (C > 1) wait_received(&sm.squares_bar); /* the other CTAs' warps */
    __syncthreads();                           /* this CTA's */
    /* The partials summed as a tree (the same order in every CTA): 4 dependent adds, not 16. */
    float part[FUSED_MAX_WARPS];
#pragma unroll
    for (int i = 0; i < WARPS; i++) part[i] = sm.squares[i];
#pragma unroll
    for (int span = 1; span < WARPS; span *= 2)
#pragma unroll
        for (int i = 0; i + span < WARPS; i += 2 * span) part[i] += part[i + span];
    const float total = part[0];
    const float r = 1.0f / sqrtf(total / 128.0f + p->eps);
    if (w.kl == 0) {
#pragma unroll
        for (int c = 0; c < NC; c++) {
            const int j = tile_col(&w, c, V_FIRST, VEC);
            store_out(p, n, h, j, o[c], r, sm.out_scale[j]);
        }
    }
#endif
}

/* A bf16 model's decode step has every token tensor and parameter of the layer in bf16 but
 * A_log and dt_bias (fp32 in Kimi-Linear and in vLLM's calls): mixed_qkv, the conv's weight, bias
 * and state, g, beta, output_gate, norm_weight and out. The kernels for it (_io16) see those
 * dtypes as constants, as the plain decode's all-bf16 TOK kernels do: one load width and one
 * conversion per value, where the run-time dtype costs both widths and a dispatch per load. */
static __device__ __forceinline__ fused_layer_params with_bf16_io(fused_layer_params q)
{
    q.x_dtype = q.w_dtype = q.bias_dtype = q.cs_dtype = FKDA_DTYPE_BF16;
    q.gate_dtype = q.nw_dtype = q.out_dtype = FKDA_DTYPE_BF16;
    q.d.g_dtype = q.d.beta_dtype = FKDA_DTYPE_BF16;
    return q;
}

/* A kernel and its twin for all-bf16 io (_io16): the same body on with_bf16_io's parameters. */
#define FUSED_KERNEL_AND_IO16(kname, threads, ctas, ...)                                      \
    __global__ void __launch_bounds__(threads, ctas) kname(const fused_layer_params p)        \
    {                                                                                         \
        WARM_PARAMETERS(&p);                                                                  \
        fused_layer(&p, __VA_ARGS__);                                                         \
    }                                                                                         \
    __global__ void __launch_bounds__(threads, ctas) kname##_io16(const fused_layer_params p) \
    {                                                                                         \
        WARM_PARAMETERS(&p);                                                                  \
        const fused_layer_params q = with_bf16_io(p);                                         \
        fused_layer(&q, __VA_ARGS__);                                                         \
    }

/* Per pool dtype and layout, the narrow tile for conv widths up to LAYER_SHORT_CONV_WIDTH (_w4)
 * and up to FUSED_MAX_WIDTH, and the wide tile (_wide) for widths up to LAYER_SHORT_CONV_WIDTH
 * only: two conv channels a thread of any width would not fit beside its 64 state values in the
 * 128 registers that let two CTAs share an SM; the short-conv kernels also for bf16 io (_io16).
 * VEC as the decode's dense 128 tiles (16 bytes; 8 for bf16 [K, V]). */
#define FUSED_KERNELS(name, bf16, v_first, vec)                                                                        \
    __global__ void __launch_bounds__(512, 1) name(const fused_layer_params p)                                         \
    {                                                                                                                  \
        WARM_PARAMETERS(&p);                                                                                           \
        fused_layer(&p, bf16, v_first, vec, FUSED_MAX_WIDTH, FUSED_NARROW_NR, 0, 0);                                   \
    }                                                                                                                  \
    FUSED_KERNEL_AND_IO16(name##_w4, 512 + FUSED_SIDE_THREADS, 1, bf16, v_first, vec, LAYER_SHORT_CONV_WIDTH,          \
                          FUSED_NARROW_NR, 0, 0)                                                                       \
    FUSED_KERNEL_AND_IO16(name##_wide, 32 * FUSED_WARPS(FUSED_WIDE_NR), 2, bf16, v_first, vec, LAYER_SHORT_CONV_WIDTH, \
                          FUSED_WIDE_NR, 0, 0)
FUSED_KERNELS(layer_f32_kv, 0, 0, 4)
FUSED_KERNELS(layer_f32_vk, 0, 1, 4)
FUSED_KERNELS(layer_bf16_kv, 1, 0, 4)
FUSED_KERNELS(layer_bf16_vk, 1, 1, 8)

/* The packed tile, for bf16 pools of either layout (16-byte state vectors in both), widths up to
 * LAYER_SHORT_CONV_WIDTH: 4 warps a head, three CTAs an SM (168 registers; at four, 128 registers,
 * ptxas spilled ~400 bytes a thread: the three conv channels' taps and windows are live beside
 * the 64 pairs while the state streams in), so 1.5 times the wide tile's heads and state bytes in
 * flight per SM; with ordinary and with evict-first (_ef) state loads. */
#define FUSED_PACKED_KERNELS(name, v_first)                                                                           \
    FUSED_KERNEL_AND_IO16(name##_packed, 32 * FUSED_PACKED_WARPS, 3, 1, v_first, 8, LAYER_SHORT_CONV_WIDTH, PK_NR, 1, \
                          0)                                                                                          \
    FUSED_KERNEL_AND_IO16(name##_packed_ef, 32 * FUSED_PACKED_WARPS, 3, 1, v_first, 8, LAYER_SHORT_CONV_WIDTH, PK_NR, \
                          1, 1)
FUSED_PACKED_KERNELS(layer_bf16_kv, 0)
FUSED_PACKED_KERNELS(layer_bf16_vk, 1)

/* ---- the launch -------------------------------------------------------------------------------- */

static void copy_strides(int64_t *dst, const fkda_operand *op, int n)
{
    for (int i = 0; i < n; i++) dst[i] = op->stride[i];
}

static fused_layer_params fused_params_of(const fkda_problem *p, int cluster, int NR, int packed)
{
    fused_layer_params k;
    memset(&k, 0, sizeof k);
    /* The decode part as the three-pass path's decode gets it (its q, k, v and out views of the
     * workspace are unused here: the kernel reads mixed_qkv and writes out itself). */
    const fkda_problem dp = fkda_layer_decode_problem(p, NULL, NULL);
    fkda_cuda_decode_params_of(&dp, &k.d);
    fkda_decode_params *d = &k.d;
    d->lanes_k = 128 / NR;
    d->warps_per_head = packed ? FUSED_PACKED_WARPS : FUSED_WARPS(NR);
    d->warps_per_cta = d->warps_per_head / cluster;
    d->ctas_per_head = cluster;

    k.x = p->mixed_qkv.data;
    copy_strides(k.x_stride, &p->mixed_qkv, 3);
    k.x_dtype = p->mixed_qkv.dtype;
    k.conv_weight = p->conv_weight.data;
    copy_strides(k.w_stride, &p->conv_weight, 2);
    k.w_dtype = p->conv_weight.dtype;
    k.conv_bias = p->conv_bias.data;
    k.bias_stride = p->conv_bias.stride[0];
    k.bias_dtype = p->conv_bias.dtype;
    k.conv_state = p->conv_state.data;
    copy_strides(k.cs_stride, &p->conv_state, 3);
    k.cs_dtype = p->conv_state.dtype;
    k.conv_slots = p->conv_pool_size;
    k.gate = p->output_gate.data;
    copy_strides(k.gate_stride, &p->output_gate, 4);
    k.gate_dtype = p->output_gate.dtype;
    k.norm_weight = p->norm_weight.data;
    k.nw_stride = p->norm_weight.stride[0];
    k.nw_dtype = p->norm_weight.dtype;
    k.out = p->out.data;
    copy_strides(k.out_stride, &p->out, 4);
    k.out_dtype = p->out.dtype;
    k.H = p->H;
    k.W = (int32_t)p->conv_width;
    k.cluster_shift = cluster == 8 ? 3 : cluster == 4 ? 2 : cluster == 2 ? 1 : 0; /* C in 1, 2, 4, 8 */
    k.eps = (float)p->norm_eps;
    return k;
}

extern "C" int fkda_cuda_decode_layer_fused_pool_fits(const fkda_problem *p)
{
    /* The dense 128 tiles: 16-byte aligned, the contiguous stride 1 and the other 128, the slot
     * and head strides multiples of a vector (8 elements covers both dtypes). */
    const fkda_operand *pools[2] = {&p->state_in, &p->state_out};
    for (int i = 0; i < 2; i++) {
        const int64_t *st = pools[i]->stride;
        const int contiguous = p->state_v_first ? 2 : 3, other = p->state_v_first ? 3 : 2;
        if ((uintptr_t)pools[i]->data % 16 != 0 || st[contiguous] != 1 || st[other] != 128 || st[0] % 8 != 0 ||
            st[1] % 8 != 0)
            return 0;
    }
    return 1;
}

extern "C" fkda_status fkda_cuda_decode_layer_fused(const fkda_problem *p, int cluster, int wide, int packed,
                                                    int load_ef, int pdl)
{
    if (cluster != 1 && cluster != 2 && cluster != 4 && cluster != 8)
        return fkda_fail(FKDA_ERROR_INTERNAL, "decode layer: %d CTAs a head (the single kernel takes 1, 2, 4 or 8)",
                         cluster);
    if (wide && (cluster != 1 || p->conv_width > LAYER_SHORT_CONV_WIDTH))
        return fkda_fail(FKDA_ERROR_INTERNAL, "decode layer: the wide single kernel takes one CTA a head and W <= %d",
                         LAYER_SHORT_CONV_WIDTH);
    if (packed && (!wide || p->state_in.dtype != FKDA_DTYPE_BF16))
        return fkda_fail(FKDA_ERROR_INTERNAL, "decode layer: the packed tile takes bf16 pools, one CTA a head");
    const int NR = wide ? FUSED_WIDE_NR : FUSED_NARROW_NR;
    const fused_layer_params k = fused_params_of(p, cluster, NR, packed);
    /* The kernel: its form (the rows), then the pool's dtype and layout (the columns). */
    enum { ANY_WIDTH, SHORT, SHORT_IO16, WIDE, WIDE_IO16 };
    static const void *const kernels[5][4] = {
        {(const void *)layer_f32_kv, (const void *)layer_f32_vk, (const void *)layer_bf16_kv,
         (const void *)layer_bf16_vk},
        {(const void *)layer_f32_kv_w4, (const void *)layer_f32_vk_w4, (const void *)layer_bf16_kv_w4,
         (const void *)layer_bf16_vk_w4},
        {(const void *)layer_f32_kv_w4_io16, (const void *)layer_f32_vk_w4_io16, (const void *)layer_bf16_kv_w4_io16,
         (const void *)layer_bf16_vk_w4_io16},
        {(const void *)layer_f32_kv_wide, (const void *)layer_f32_vk_wide, (const void *)layer_bf16_kv_wide,
         (const void *)layer_bf16_vk_wide},
        {(const void *)layer_f32_kv_wide_io16, (const void *)layer_f32_vk_wide_io16,
         (const void *)layer_bf16_kv_wide_io16, (const void *)layer_bf16_vk_wide_io16}};
    const int io16 = fkda_decode_layer_bf16_io(p);
    const int form = wide                                      ? (io16 ? WIDE_IO16 : WIDE)
                     : p->conv_width <= LAYER_SHORT_CONV_WIDTH ? (io16 ? SHORT_IO16 : SHORT)
                                                               : ANY_WIDTH;
    static const void *const packed_kernels[2][2][2] = {
        {{(const void *)layer_bf16_kv_packed, (const void *)layer_bf16_vk_packed},
         {(const void *)layer_bf16_kv_packed_io16, (const void *)layer_bf16_vk_packed_io16}},
        {{(const void *)layer_bf16_kv_packed_ef, (const void *)layer_bf16_vk_packed_ef},
         {(const void *)layer_bf16_kv_packed_ef_io16, (const void *)layer_bf16_vk_packed_ef_io16}}};
    const void *kernel = packed ? packed_kernels[load_ef != 0][io16][p->state_v_first != 0]
                                : kernels[form][2 * (p->state_in.dtype == FKDA_DTYPE_BF16) + (p->state_v_first != 0)];
    cudaLaunchConfig_t cfg = {};
    /* The narrow tile's grid (HV x C, B), the wide and packed tiles' B x HV (fused_layer). */
    cfg.gridDim = wide ? dim3((unsigned)(p->B * p->HV), 1, 1) : dim3((unsigned)(p->HV * cluster), (unsigned)p->B, 1);
    /* The narrow tile's short-conv kernels have two side warps after the tile's (fused_layer). */
    const int side = form == SHORT || form == SHORT_IO16 ? FUSED_SIDE_THREADS : 0;
    cfg.blockDim = dim3((unsigned)(32 * k.d.warps_per_cta + side), 1, 1);
    cfg.stream = (cudaStream_t)p->device.stream;
    /* The cluster dimension only for C > 1: C = 1 is an ordinary launch (no cluster operation runs). */
    cudaLaunchAttribute attrs[2] = {};
    unsigned count = 0;
    if (cluster > 1) {
        attrs[count].id = cudaLaunchAttributeClusterDimension;
        attrs[count].val.clusterDim.x = (unsigned)cluster;
        attrs[count].val.clusterDim.y = 1;
        attrs[count].val.clusterDim.z = 1;
        count++;
    }
    if (pdl) {
        attrs[count].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        attrs[count].val.programmaticStreamSerializationAllowed = 1;
        count++;
    }
    cfg.attrs = attrs;
    cfg.numAttrs = count;
    void *args[] = {(void *)&k};
    const cudaError_t err = fkda_launch_kernel_ex(&cfg, kernel, args);
    if (err != cudaSuccess) {
        (void)cudaGetLastError(); /* leave no sticky error for a later, unrelated check */
        return fkda_fail(FKDA_ERROR_DEVICE, "decode layer: launch of the single-kernel layer (cluster %d): %s", cluster,
                         cudaGetErrorString(err));
    }
    return FKDA_OK;
}

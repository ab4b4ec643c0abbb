/*
 * decode_common.cuh: what the CUDA decode's kernel families (decode_tiles.cu, decode_packed.cu)
 * share: the algorithm below, the per-CTA pieces (which head, which slot, its v, the split-K
 * exchange, the wait for the kernel before), and the loop over a sequence's tokens with the
 * state in fp32 registers (run_tokens). The device I/O, the register tile and the token's
 * staging are in decode_io.cuh, decode_tile.cuh and decode_stage.cuh; the variants in
 * decode_variants.h; the selection in decode_select.c; the launch in decode_launch.cu.
 *
 * The decode is fla's fused_recurrent_kda on a state pool.
 *
 * Per sequence n, value head h and token t (the state S is K x V, fp32 in registers):
 *
 *     S  <- diag(exp(a_t)) S
 *     u   = S^T k_t,  w = S^T q_t          (q_t already scaled)
 *     v'  = b_t (v_t - u)
 *     S  <- S + k_t v'^T
 *     o_t = S^T q_t = w + (k_t . q_t) v'    (so one pass over S gives both dot products)
 *
 * The work is memory-bound: every state byte is read once and written once, and the rest is
 * tiny. Columns of S evolve independently, so the V columns of one (sequence, head) are split
 * across warps: each warp holds a slab of columns (all K rows) in registers and reduces over K
 * with shuffles. The warps of one head share a CTA, and the one thing they share is the token:
 * the CTA stages q, k and exp(a) once into shared memory (the gate's exp, sigmoid and log1p once
 * per key, not once per warp) behind one __syncthreads, while the state's loads are in flight.
 * Small batches split a head over several CTAs (down to one warp each), so that they spread
 * over every SM: there the time is latency, not bandwidth, and each warp's path is the time
 * (fewer heads than SMs take "narrow" tiles of 32 values per lane, 16 warps per head).
 * Large one-token batches of bf16 pools (T = 1, or cu_seqlens as vLLM calls a decode step) keep
 * the state as bf16 pairs (the packed kernel), so that a head needs half the registers and
 * twice the bytes are in flight per SM. On sm_90 every kernel is a programmatic dependent
 * launch: it starts while the kernel before it finishes and waits (griddepcontrol) before its
 * first load. The state's stores are streaming (evict-first
 * in L2), and so are its loads when the pool is small next to L2 (kernels compiled both ways).
 *
 * Inside a warp, `lanes_k` (KL) lanes share each column and split the K rows between them; the
 * other 32 / KL lanes take different columns. State loads and stores are 16 bytes per lane
 * (4 fp32 or 8 bf16 values along the contiguous dimension of the layout; 8 bytes, 4 bf16 values,
 * in the dense bf16 [K, V] tiles, which so hold 4 columns per lane like the fp32 ones):
 *
 *   [K, V] layout (V contiguous): lane = vl + (32/KL) * kl. Register row r is key kl + KL*r;
 *       the lane's columns are one or more 16-byte vectors along V. A warp load covers KL rows,
 *       each 32/KL vectors wide. The reduction over K runs across the kl lane bits (xor 32/KL..16).
 *       Wide fp32 tiles split K between the two warps of a pair (KS = 2): each warp holds 32
 *       columns of 64 keys (KL = 4), so that a warp load reads 128-byte lines, and adds the other
 *       warp's column sums through shared memory (faster than 16 columns of all 128 keys, whose
 *       loads read half lines, from 512 heads).
 *   [V, K] layout (K contiguous): lane = kl + KL * jl. Register row r is key
 *       (kl + KL*(r/VEC))*VEC + r%VEC, i.e. 16-byte vectors along K, interleaved across the KL
 *       lanes so that they read one contiguous run; columns are value rows jl + (32/KL)*c.
 *       The reduction runs across the low kl bits (xor 1..KL/2).
 *
 * Each lane keeps 64 state values (32 in narrow tiles; NR rows x NC columns) in registers for
 * the whole call, so a speculative-decoding call with T tokens reads the state once and writes
 * it once per token only where 2-D state_indices ask for it. A scalar variant (VEC = 1, any
 * strides) serves pools whose pointer, strides or sizes do not allow 16-byte vectors.
 *
 * Never-trusted device inputs: cu_seqlens bounds are clamped into [0, T]; an accepted-token
 * count into [1, T_max]; a slot outside [0, P) skips the sequence (reads) or the write.
 */
#ifndef FKDA_CUDA_DECODE_COMMON_CUH
#define FKDA_CUDA_DECODE_COMMON_CUH

#include "decode_params.h"
#include "decode_stage.cuh"
#include "decode_variants.h"

/* Sequence n and value head h of flat head index `head` (n * HV + h), and the query head of h.
 * 32-bit divisions: the launch checks N * HV < 2^31, and a 64-bit division is a ~70-instruction
 * call that sat on every CTA's path to its first load. */
static __device__ __forceinline__ void split_head(const fkda_decode_params *p, int64_t head, int64_t *n, int64_t *h)
{
    const uint32_t hv = (uint32_t)p->HV, q = (uint32_t)head / hv;
    *n = q;
    *h = (uint32_t)head - q * hv;
}

static __device__ __forceinline__ int64_t query_head(const fkda_decode_params *p, int64_t h)
{
    return (uint32_t)h / (uint32_t)p->group;
}

/* The bits of this lane's columns of v at one token (SPLIT: load_bits_as's form), in two parts
 * whose or is the value: where the loads are predicated (TOKEN_LOADS_BRANCH) the split form's two
 * registers stay apart until the use, after the token's __syncthreads, so that the token's other
 * loads issue before anything waits for v's; elsewhere vhalf is 0. */
static __device__ __forceinline__ void load_v(const fkda_decode_params *p, const lane_tile *w, int64_t row, int64_t pos,
                                              int64_t h, uint32_t *vbits, uint32_t *vhalf, const int V_FIRST,
                                              const int VEC, const int NC, const int TOK, const int SPLIT)
{
    const int32_t dtype = TOKEN_DTYPE(p, v_dtype, TOK);
    const char *vv = token_vector(p->v, p->v_stride, dtype, row, pos, h, TOK);
#pragma unroll
    for (int c = 0; c < NC; c++) {
        const int j = tile_col(w, c, V_FIRST, VEC);
        vhalf[c] = 0u;
        if (TOKEN_LOADS_BRANCH(SPLIT, TOK))
            vbits[c] = j < w->V ? load_elem(vv, dtype, j, (int)p->v_stride[3], SPLIT) : 0u;
        else
            load_bits_pair_if(vv, dtype, (int64_t)(j * (int)p->v_stride[3]), j < w->V, &vbits[c], &vhalf[c]);
    }
}

/* A token's loads, issued together: its first round of staged words (q, k, g, dt_bias, beta,
 * A_log: load_token_bits) and this lane's columns of v (load_v). The one-token paths of the
 * narrow tiles, of the wide bf16 tiles without cu_seqlens and of the packed kernels (and the
 * narrow [K, V] _spec tiles for a sequence's first token) issue them before the state's loads,
 * and before the slot index's where the token's place is known without it, so that the warp
 * waits for memory once, not once for the index, once for the state and once for the token
 * (decode_tiles.cu, decode_sequence, decode_cta, spec_sequence; decode_packed.cu,
 * decode_cta_packed). */
typedef struct token_loads {
    token_bits tb;
    uint32_t v[DECODE_MAX_C], vhalf[DECODE_MAX_C];
} token_loads;

static __device__ __forceinline__ void issue_token_loads(const fkda_decode_params *p, const lane_tile *w, int64_t row,
                                                         int64_t pos, int64_t h, token_loads *tl, const int V_FIRST,
                                                         const int VEC, const int NC, const int TOK, const int SPLIT)
{
    load_token_bits(p, w, row, pos, h, query_head(p, h), 0, &tl->tb, TOK, SPLIT);
    load_v(p, w, row, pos, h, tl->v, tl->vhalf, V_FIRST, VEC, NC, TOK, SPLIT);
}

/* The bounds [a, b) of a sequence of cu_seqlens clamped into [0, T]: *bos = a; returns b - a. */
static __device__ __forceinline__ int64_t clamp_bounds(const fkda_decode_params *p, int64_t a, int64_t b, int64_t *bos)
{
    a = min(max(a, (int64_t)0), p->T);
    b = min(max(b, a), p->T);
    *bos = a;
    return b - a;
}

/* Sequence n of cu_seqlens (which must be given): positions *bos .. *bos + len - 1 of row 0;
 * returns len (0: nothing). */
static __device__ __forceinline__ int64_t cu_sequence_tokens(const fkda_decode_params *p, int64_t n, int64_t *bos)
{
    const int64_t a = load_index(p->cu_seqlens, p->cu_dtype, n * p->cu_stride);
    const int64_t b = load_index(p->cu_seqlens, p->cu_dtype, (n + 1) * p->cu_stride);
    return clamp_bounds(p, a, b, bos);
}

/* The CU kernels' sequence n (cu_seqlens given, 1-D indices): its bounds and its slot as raw
 * words, the three loads issued together and nothing waiting on them yet (load_index_words), so
 * that a caller can issue more loads behind them before cu_bounds_and_slot reads them. */
typedef struct cu_words {
    index_words a, b, slot;
} cu_words;

static __device__ __forceinline__ cu_words load_cu_words(const fkda_decode_params *p, int64_t n)
{
    const index_words none = {0u, 0u}, slot_n = {(uint32_t)n, 0u}; /* n < 2^31, read as int64 */
    cu_words cw;
    cw.a = load_index_words_if(p->cu_seqlens, p->cu_dtype, n * p->cu_stride, 1, none);
    cw.b = load_index_words_if(p->cu_seqlens, p->cu_dtype, (n + 1) * p->cu_stride, 1, none);
    const int indexed = p->state_indices != NULL; /* else slot n */
    cw.slot = load_index_words_if(p->state_indices, p->idx_dtype, n * p->idx_stride[0], indexed, slot_n);
    return cw;
}

/* Keeps the words raw up to here: loads issued before this point go out before anything waits. */
static __device__ __forceinline__ void hold_cu_words(cu_words *cw)
{
    hold_until_here(&cw->a.lo);
    hold_until_here(&cw->a.hi);
    hold_until_here(&cw->b.lo);
    hold_until_here(&cw->b.hi);
    hold_until_here(&cw->slot.lo);
    hold_until_here(&cw->slot.hi);
}

/* load_cu_words' values: the bounds as cu_sequence_tokens's (returns len, *bos) and *slot. */
static __device__ __forceinline__ int64_t cu_bounds_and_slot(const fkda_decode_params *p, cu_words cw, int64_t *bos,
                                                             int64_t *slot)
{
    *slot = index_value(cw.slot, p->state_indices != NULL ? p->idx_dtype : (int32_t)FKDA_DTYPE_I64);
    return clamp_bounds(p, index_value(cw.a, p->cu_dtype), index_value(cw.b, p->cu_dtype), bos);
}

/* The column of 2-D indices a sequence continues from: that of its last accepted token, counts
 * clamped into [1, T_max] (device memory, never trusted). */
static __device__ __forceinline__ int64_t accepted_column(const fkda_decode_params *p, int64_t acc)
{
    return min(max(acc, (int64_t)1), p->idx_tokens) - 1;
}

/* The _spec kernels' sequence n (cu_seqlens and 2-D indices): its bounds and its accepted count
 * as raw words, the three loads issued together (load_index_words) so that their latencies overlap;
 * the count selects the column of the 2-D indices the state is read from (accepted_column). */
typedef struct spec_words {
    index_words a, b, acc;
} spec_words;

static __device__ __forceinline__ spec_words load_spec_words(const fkda_decode_params *p, int64_t n)
{
    const index_words none = {0u, 0u}, one = {1u, 0u}; /* 1 in either index dtype */
    spec_words sw;
    sw.a = load_index_words_if(p->cu_seqlens, p->cu_dtype, n * p->cu_stride, 1, none);
    sw.b = load_index_words_if(p->cu_seqlens, p->cu_dtype, (n + 1) * p->cu_stride, 1, none);
    sw.acc = load_index_words_if(p->num_accepted, p->acc_dtype, n * p->acc_stride, p->num_accepted != NULL, one);
    return sw;
}

/* The column of the 2-D indices sequence n's state is read from: that of its accepted count. */
static __device__ __forceinline__ int64_t spec_column(const fkda_decode_params *p, spec_words sw)
{
    return accepted_column(p, index_value(sw.acc, p->acc_dtype));
}

/* As cu_sequence_tokens, and in *slot the slot its state is read from, that of its accepted count
 * (accepted_column, as read_slot): the bounds and the count loaded together, then the index they
 * select: two round trips, not three. */
static __device__ __forceinline__ int64_t cu_sequence_and_accepted_slot(const fkda_decode_params *p, int64_t n,
                                                                        int64_t *bos, int64_t *slot)
{
    const spec_words sw = load_spec_words(p, n);
    const int64_t col = spec_column(p, sw);
    *slot = load_index(p->state_indices, p->idx_dtype, n * p->idx_stride[0] + col * p->idx_stride[1]);
    return clamp_bounds(p, index_value(sw.a, p->cu_dtype), index_value(sw.b, p->cu_dtype), bos);
}

/* Sequence n's tokens: row *row, positions *bos .. *bos + len - 1; returns len (0: nothing). */
static __device__ __forceinline__ int64_t sequence_tokens(const fkda_decode_params *p, int64_t n, int64_t *row,
                                                          int64_t *bos)
{
    *row = n;
    *bos = 0;
    if (!p->cu_seqlens) return p->T;
    *row = 0;
    return cu_sequence_tokens(p, n, bos);
}

/* The slot sequence n continues from; outside [0, pool_size) means: skip it. */
static __device__ __forceinline__ int64_t read_slot(const fkda_decode_params *p, int64_t n)
{
    if (!p->state_indices) return n;
    int64_t col = 0;
    if (p->idx_2d && p->num_accepted) {
        col = accepted_column(p, load_index(p->num_accepted, p->acc_dtype, n * p->acc_stride));
    }
    return load_index(p->state_indices, p->idx_dtype, n * p->idx_stride[0] + col * p->idx_stride[1]);
}

/* A skipped sequence: no state touched, its rows of out zeroed. */
static __device__ __forceinline__ void zero_outputs(const fkda_decode_params *p, const lane_tile *w, int64_t row,
                                                    int64_t bos, int64_t len, int64_t h, const int V_FIRST,
                                                    const int VEC, const int NC, const int TOK)
{
    if (w->kl != 0 || w->kh != 0) return;
    for (int64_t t = 0; t < len; t++) {
        const char *ov = token_vector(p->out, p->out_stride, TOKEN_DTYPE(p, out_dtype, TOK), row, bos + t, h, TOK);
#pragma unroll
        for (int c = 0; c < NC; c++) {
            const int j = tile_col(w, c, V_FIRST, VEC);
            if (j < w->V) store_elem(ov, TOKEN_DTYPE(p, out_dtype, TOK), j, (int)p->out_stride[3], 0.0f);
        }
    }
}

/* Waits for the two warps of pair `pair` of the CTA (named barrier 1 + pair; 0 is
 * __syncthreads'). The ids are immediates, so that the kernel reserves 5 barriers, not 16. */
static __device__ __forceinline__ void pair_barrier(int pair)
{
    switch (pair) {
    case 0: asm volatile("bar.sync 1, 64;" ::: "memory"); break;
    case 1: asm volatile("bar.sync 2, 64;" ::: "memory"); break;
    case 2: asm volatile("bar.sync 3, 64;" ::: "memory"); break;
    default: asm volatile("bar.sync 4, 64;" ::: "memory"); break;
    }
}

/* Split-K tiles: adds to this warp's column sums pk and pq (over its half of the keys, already
 * reduced across its lanes) those of the other warp of its pair, which holds the same columns'
 * other half. Lanes kl = 0 publish, both warps wait for each other, every lane reads. One warp
 * computes a + b and the other b + a: the same sums, bit for bit. Lane group lj < 8 (LJ <= 8). */
static __device__ __forceinline__ void add_other_half(stage_buffer *sb, const lane_tile *w, float *pk, float *pq,
                                                      const int NC)
{
    const int warp = threadIdx.x >> 5;
    float *mine = sb->halves + (warp * 8 + w->lj) * 2 * NC;
    const float *theirs = sb->halves + ((warp ^ 1) * 8 + w->lj) * 2 * NC;
    if (w->kl == 0) {
#pragma unroll
        for (int c = 0; c < NC; c += 4) {
            *(float4 *)(mine + c) = make_float4(pk[c], pk[c + 1], pk[c + 2], pk[c + 3]);
            *(float4 *)(mine + NC + c) = make_float4(pq[c], pq[c + 1], pq[c + 2], pq[c + 3]);
        }
    }
    pair_barrier(warp >> 1);
#pragma unroll
    for (int c = 0; c < NC; c += 4) {
        const float4 tk = *(const float4 *)(theirs + c), tq = *(const float4 *)(theirs + NC + c);
        pk[c] += tk.x;
        pk[c + 1] += tk.y;
        pk[c + 2] += tk.z;
        pk[c + 3] += tk.w;
        pq[c] += tq.x;
        pq[c + 1] += tq.y;
        pq[c + 2] += tq.z;
        pq[c + 3] += tq.w;
    }
}

/* Reads one word in every 64 bytes of a kernel's parameters (LINES words 64 bytes apart from
 * `words`, the kernel's own parameter), before wait_for_prior_grid: a CTA launched early
 * (programmatic dependent launch) waits there for the kernel before it, so the constant cache's
 * misses on the parameters are taken before that wait ends and not on the path after it, where
 * each line's first read stalls the warp (docs/history/decode.md, "The parameters read before
 * griddepcontrol.wait"). Parameters are the launch's own copy, never written by another kernel:
 * reading them early is always safe. The words' xor goes to a shared word that nothing reads, or
 * the compiler would drop the reads; it issues them in thread 0's branch, so warp 0 takes the
 * misses for its SM's constant cache. */
static __device__ __forceinline__ void warm_parameter_lines(const uint32_t *words, const int LINES)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    __shared__ uint32_t sink;
    uint32_t x = 0u;
#pragma unroll
    for (int i = 0; i < LINES; i++) x ^= words[16 * i];
    if (threadIdx.x == 0)
        asm volatile("st.shared.u32 [%0], %1;" ::"r"((uint32_t)__cvta_generic_to_shared(&sink)), "r"(x) : "memory");
#endif
}
#define WARM_PARAMETERS(p) warm_parameter_lines((const uint32_t *)(p), (int)(sizeof *(p) / 64))

/* Launched with programmatic stream serialization (the default on sm_90), a kernel may start
 * while the kernel before it on the stream finishes; it must wait here before it reads anything
 * that kernel may have written (its inputs, the pool). Launched normally, both instructions
 * return at once. */
static __device__ __forceinline__ void wait_for_prior_grid(void)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
    /* Let the next kernel on the stream launch once every CTA of this one is running (it waits
     * for this grid's completion and memory itself, at its own griddepcontrol.wait). */
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

/* The delta rule's passes over a lane's NR rows of the state tile, shared by run_tokens and the
 * single-kernel layer (decode_layer_fused.cu). ld, lk, lq: the lane's staged decays, keys and
 * queries (16-byte aligned, NR a multiple of 4). First the decay and the two dot products with the
 * unscaled k and q (pk, pq: this lane's partial S^T k and S^T q per column); then their sums over
 * the lanes of a column; then, once the caller has formed vk = kf v', the update S += k vk^T.
 *
 * The first pass is a macro, not a function: as an inlined function it left 14 of the tile
 * kernels' code scheduled differently (same instructions, other order and registers), and those
 * kernels' speed was tuned on the GPU; the macro keeps their machine code as it was. */
#define TILE_DECAY_DOTS(s, ld, lk, lq, pk, pq, NR, NC)                                              \
    do {                                                                                            \
        _Pragma("unroll") for (int c_ = 0; c_ < (NC); c_++) pk[c_] = pq[c_] = 0.0f;                 \
        _Pragma("unroll") for (int r4_ = 0; r4_ < (NR); r4_ += 4)                                   \
        {                                                                                           \
            const float4 d4_ = *(const float4 *)((ld) + r4_), k4_ = *(const float4 *)((lk) + r4_),  \
                         q4_ = *(const float4 *)((lq) + r4_);                                       \
            const float d_[4] = {d4_.x, d4_.y, d4_.z, d4_.w}, k_[4] = {k4_.x, k4_.y, k4_.z, k4_.w}, \
                        q_[4] = {q4_.x, q4_.y, q4_.z, q4_.w};                                       \
            _Pragma("unroll") for (int i_ = 0; i_ < 4; i_++)                                        \
            {                                                                                       \
                _Pragma("unroll") for (int c_ = 0; c_ < (NC); c_++)                                 \
                {                                                                                   \
                    s[r4_ + i_][c_] *= d_[i_];                                                      \
                    pk[c_] = fmaf(s[r4_ + i_][c_], k_[i_], pk[c_]);                                 \
                    pq[c_] = fmaf(s[r4_ + i_][c_], q_[i_], pq[c_]);                                 \
                }                                                                                   \
            }                                                                                       \
        }                                                                                           \
    } while (0)

/* pk and pq summed over the lanes sharing each column (xor offsets red_lo .. red_hi / 2): every
 * one of them gets the total. */
static __device__ __forceinline__ void tile_column_sums(float pk[DECODE_MAX_C], float pq[DECODE_MAX_C], int red_lo,
                                                        int red_hi, const int NC)
{
    for (int off = red_lo; off < red_hi; off <<= 1) {
#pragma unroll
        for (int c = 0; c < NC; c++) {
            pk[c] += __shfl_xor_sync(FULL_MASK, pk[c], off);
            pq[c] += __shfl_xor_sync(FULL_MASK, pq[c], off);
        }
    }
}

static __device__ __forceinline__ void tile_rank1_update(float s[DECODE_MAX_R][DECODE_MAX_C], const float *lk,
                                                         const float vk[DECODE_MAX_C], const int NR, const int NC)
{
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
}

/* The recurrence over the sequence's tokens, the state in registers (loaded by the caller),
 * and the state's stores: after every token to its 2-D index, else once at the end to `slot`.
 * Every thread of the CTA calls it (stage_token waits for the whole CTA once per token).
 * BUFFERS stage buffers at `smem`: 2 (the tile kernels) alternate between tokens; 1 (the packed
 * kernels' multi-token path, decode_packed.cu) is reused, behind a __syncthreads after each token.
 * The token's tensors, A_log and dt_bias load in load_bits_as's split form in the tile kernels
 * only (SPLIT). IDX2: the kernel can be given 2-D indices (the generic tile kernels and the _spec
 * ones, decode_select.c), so the state goes to each token's slot where the call has them.
 * `first`: the first token's loads, issued by the caller (issue_token_loads; NULL: issued here).
 * t_begin: the sequence's first token to run here (0; a caller that ran token 0 on its own, with
 * len = 1, runs the rest from 1: the stage buffers and the 2-D indices follow t). */
static __device__ __forceinline__ void run_tokens(const fkda_decode_params *p, const lane_tile *wp, stage_buffer *smem,
                                                  int64_t n, int64_t h, int64_t row, int64_t bos, int64_t len,
                                                  int64_t slot, float s[DECODE_MAX_R][DECODE_MAX_C], const int BF16,
                                                  const int V_FIRST, const int VEC, const int NR, const int NC,
                                                  const int D128, const int TOK, const int KS, const int BUFFERS,
                                                  const int IDX2, const token_loads *first, int64_t t_begin)
{
    const lane_tile w = *wp;
    const int64_t hq = query_head(p, h);
    const int red_lo = V_FIRST ? 1 : w.LJ, red_hi = V_FIRST ? w.KL : 32;
    const int SPLIT = BUFFERS == 2;
    /* The token's staging as straight-line code where the keys fit one round (stage_token), but
     * not in the wide bf16 [V, K] TOK tiles: they were slower with it (the one-token calls of
     * 32 and 128 heads, 0.3 us; docs/history/decode.md). */
    const int ONE_ROUND = !(BF16 && V_FIRST && TOK && NR * NC > 32);
    for (int64_t t = t_begin; t < len; t++) {
        const int64_t pos = bos + t;
        /* Two stage buffers: token t + 1 stages into the one token t - 1 read, which every warp
         * had finished before it passed token t's __syncthreads. */
        stage_buffer *sb = BUFFERS == 2 ? smem + (t & 1) : smem;
        /* 2-D indices: the slot this token's state goes to, loaded with the token's inputs and
         * used at the token's end (loaded there, the stores waited for it). */
        const index_words no_slot = {0xffffffffu, 0xffffffffu}; /* -1 in either index dtype */
        const index_words ts_words = IDX2 ? load_index_words_if(p->state_indices, p->idx_dtype,
                                                                n * p->idx_stride[0] + t * p->idx_stride[1],
                                                                p->idx_2d && t < p->idx_tokens, no_slot)
                                          : no_slot;
        /* The token's inputs: their loads overlap the state's (first token) or each other. */
        uint32_t vbits[DECODE_MAX_C], vhalf[DECODE_MAX_C];
        const token_bits *tb0 = NULL;
        if (t == t_begin && first != NULL) {
#pragma unroll
            for (int c = 0; c < NC; c++) vbits[c] = first->v[c], vhalf[c] = first->vhalf[c];
            tb0 = &first->tb;
        } else {
            load_v(p, &w, row, pos, h, vbits, vhalf, V_FIRST, VEC, NC, TOK, SPLIT);
        }
        const staged_token tok = stage_token(p, &w, row, pos, h, hq, sb, V_FIRST, VEC, NR * KS, TOK, SPLIT, ONE_ROUND,
                                             tb0);
        /* v's conversion after the token's other loads and its barrier (hold_until_here) */
#pragma unroll
        for (int c = 0; c < NC; c++) {
            hold_until_here(&vbits[c]);
            hold_until_here(&vhalf[c]);
        }
        if (BF16 == 2 && t == 0) finish_raw_tile(s, V_FIRST, NR, NC); /* the state's words, loaded raw */
        /* This lane's rows (a split-K warp's, the kh-th half of its kl group's). */
        const int lane_rows = w.kl * (NR * KS + DECODE_ROW_PAD) + w.kh * NR;
        const float *lq = sb->q + lane_rows, *lk = sb->k + lane_rows, *ld = sb->d + lane_rows;

        /* Decay, and the two dot products over this lane's rows (with the unscaled q, k), summed
         * over the KL lanes sharing each column. */
        float pk[DECODE_MAX_C], pq[DECODE_MAX_C];
        TILE_DECAY_DOTS(s, ld, lk, lq, pk, pq, NR, NC);
        tile_column_sums(pk, pq, red_lo, red_hi, NC);
        if (KS == 2) add_other_half(sb, &w, pk, pq, NC);
        /* Delta rule and output: v' = b (v - S^T k), o = S^T q + (k . q) v', S += k v'^T. */
        float vk[DECODE_MAX_C]; /* kf * v', so that the update can use the unscaled k */
        const char *ov = token_vector(p->out, p->out_stride, TOKEN_DTYPE(p, out_dtype, TOK), row, pos, h, TOK);
#pragma unroll
        for (int c = 0; c < NC; c++) {
            const float vn = tok.beta *
                             (bits_to_float(vbits[c] | vhalf[c], TOKEN_DTYPE(p, v_dtype, TOK)) - tok.kf * pk[c]);
            vk[c] = tok.kf * vn;
            const int j = tile_col(&w, c, V_FIRST, VEC);
            if (w.kl == 0 && w.kh == 0 && j < w.V)
                store_elem(ov, TOKEN_DTYPE(p, out_dtype, TOK), j, (int)p->out_stride[3],
                           fmaf(tok.kq, vn, tok.qf * pq[c]));
        }
        tile_rank1_update(s, lk, vk, NR, NC);

        if (IDX2 && p->idx_2d) { /* the state after each token goes to its own slot */
            const int64_t ts = index_value(ts_words, p->idx_dtype);
            if (ts >= 0 && ts < p->pool_size) store_tile(p, &w, ts, h, s, BF16, V_FIRST, VEC, NR, NC, D128);
        }
        if (BUFFERS == 1) __syncthreads(); /* every warp has read the buffer: the next token may stage */
    }
    if (!IDX2 || !p->idx_2d) store_tile(p, &w, slot, h, s, BF16, V_FIRST, VEC, NR, NC, D128);
}

#endif /* FKDA_CUDA_DECODE_COMMON_CUH */

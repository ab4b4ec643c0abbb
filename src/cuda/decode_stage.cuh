/*
 * decode_stage.cuh: one token's q, k and decay, staged once per CTA into shared memory (every
 * warp of a head shares them), with the norms, k . q and beta the recurrence needs.
 */
#ifndef FKDA_CUDA_DECODE_STAGE_CUH
#define FKDA_CUDA_DECODE_STAGE_CUH

#include "decode_tile.cuh"
#include "decode_variants.h"
#include "ptx_load.cuh"

#define DECODE_STAGE_FLOATS 384 /* per staged vector: KL * (NR + pad) <= 32 * 12 or 16 * 20 */
#define FULL_MASK 0xffffffffu

static __device__ __forceinline__ float warp_sum(float x)
{
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) x += __shfl_xor_sync(FULL_MASK, x, off);
    return x;
}

static __device__ __forceinline__ float sigmoidf_(float x) { return 1.0f / (1.0f + expf(-x)); }

/* fla's softplus: x itself above 20, where log1p(exp(x)) == x in float. */
static __device__ __forceinline__ float softplusf_(float x) { return x > 20.0f ? x : log1pf(expf(x)); }

/* One token's staged vectors, in shared memory, double-buffered across tokens: sq = q and
 * sk = k as loaded (unnormalised), sd = exp(a), in the stage_pos order of the lanes' register
 * rows; and each warp's partial sums of q.q, k.k and q.k. */
typedef struct __align__(16) stage_buffer
{ /* read with 16-byte loads */
    float q[DECODE_STAGE_FLOATS], k[DECODE_STAGE_FLOATS], d[DECODE_STAGE_FLOATS];
    float partial[DECODE_MAX_WARPS_PER_CTA][4];
    /* Split-K tiles: each warp's column sums of S^T k and S^T q over its half of the keys, per
     * column group of lanes, for the other warp of its pair (add_other_half): 8 warps x 8 groups
     * x 4 columns x 2 sums, or 4 warps x 8 groups x 8 columns x 2 sums (packed). */
    float halves[DECODE_MAX_WARPS_PER_CTA * 8 * 8];
}
stage_buffer;

/* The factors that turn the staged vectors into the recurrence's: q_t = qf * sq and
 * k_t = kf * sk (the L2 norms and the scale), k_t . q_t, and the effective beta. Kept out of
 * shared memory so that each key's staging is independent of the others. */
typedef struct staged_token {
    float qf, kf, kq, beta;
} staged_token;

#define DECODE_KEYS_PER_THREAD 4

/* The dtype of a token tensor (q, k, v, g, beta, out) in a kernel compiled for all-bf16 tokens
 * (TOK: the common call of a bf16 model) or read at run time (every other combination). A
 * compile-time dtype leaves one load per element and a shift to convert it, where the run-time
 * one needs both load widths and every conversion. TOK kernels also assume what the launch
 * checked for them: 1-D indices, one token per sequence (T = 1) or cu_seqlens, and token
 * offsets in 31 bits (token_offset). */
#define TOKEN_DTYPE(p, field, TOK) ((TOK) ? (int32_t)FKDA_DTYPE_BF16 : (p)->field)

/* Whether a token's element loads sit in branches on their bounds, or are predicated on them:
 * branches everywhere (measured faster) but where the split form meets a run-time dtype (the tile
 * kernels' TOK = 0 path). There the split form ors its two registers, and inside a branch the or
 * stays in the branch and waits for the load before the next loads issue: each token of that
 * path made four round trips to memory, one after another (v, beta, the keys, dt_bias; an ncu
 * profile of the speculative call), where predicated loads make one. */
#define TOKEN_LOADS_BRANCH(SPLIT, TOK) (!(SPLIT) || (TOK))

/* The gate's per-head parameters, addressed as the token tensors are (32-bit offsets in the
 * TOK = 1 kernels too: the launch checked them with the token tensors): the element offsets of
 * dt_bias's row of head h and of A_log's entry, and the row's address from its offset (NULL where
 * the call has no dt_bias or no gate). Callers take both offsets, then the address: in that order
 * the kernels compile to the code that was measured (in another, ptxas reschedules six tile
 * kernels; scripts/sass_diff.sh). */
static __device__ __forceinline__ int64_t dt_bias_offset(const fkda_decode_params *p, int64_t h, const int TOK)
{
    return TOK == 1 ? (int64_t)((int32_t)h * (int32_t)p->dt_bias_stride[0]) : h * p->dt_bias_stride[0];
}

static __device__ __forceinline__ int64_t A_log_offset(const fkda_decode_params *p, int64_t h, const int TOK)
{
    return TOK == 1 ? (int64_t)((int32_t)h * (int32_t)p->A_log_stride) : h * p->A_log_stride;
}

static __device__ __forceinline__ const char *dt_bias_row(const fkda_decode_params *p, int64_t off, int biased)
{
    return biased ? (const char *)p->dt_bias + (off << (p->dt_bias_dtype == FKDA_DTYPE_F32 ? 2 : 1)) : NULL;
}

/* The raw bits of the inputs one thread stages in one round of stage_token: keys base + tid +
 * i * blockDim of q, k, g and dt_bias (zero past K), and beta's and A_log's. Loaded as one batch
 * (nothing waits on them until stage_token converts them), so a caller can issue them early. */
typedef struct token_bits {
    uint32_t q[DECODE_KEYS_PER_THREAD], k[DECODE_KEYS_PER_THREAD], g[DECODE_KEYS_PER_THREAD],
        bias[DECODE_KEYS_PER_THREAD], bias16[DECODE_KEYS_PER_THREAD];
    uint32_t beta, A, A16; /* bias16, A16: the 16-bit form's register of a split load, else 0 */
} token_bits;

static __device__ __forceinline__ void load_token_bits(const fkda_decode_params *p, const lane_tile *w, int64_t row,
                                                       int64_t pos, int64_t h, int64_t hq, int base, token_bits *tb,
                                                       const int TOK, const int SPLIT)
{
    const int tid = threadIdx.x, nthreads = blockDim.x;
    const char *qv = token_vector(p->q, p->q_stride, TOKEN_DTYPE(p, q_dtype, TOK), row, pos, hq, TOK);
    const char *kv = token_vector(p->k, p->k_stride, TOKEN_DTYPE(p, k_dtype, TOK), row, pos, hq, TOK);
    const char *gv = token_vector(p->g, p->g_stride, TOKEN_DTYPE(p, g_dtype, TOK), row, pos, h, TOK);
    const int gated = p->gate != FKDA_GATE_NONE, biased = gated && p->dt_bias;
    const int64_t bias_off = dt_bias_offset(p, h, TOK), A_off = A_log_offset(p, h, TOK);
    const char *bv = dt_bias_row(p, bias_off, biased);
    const int64_t beta_off = token_offset(p->beta_stride, row, pos, h, TOK);
    tb->beta = load_bits_as(SPLIT, p->beta, TOKEN_DTYPE(p, beta_dtype, TOK), beta_off, 1);
    tb->A16 = 0u;
    if (SPLIT)
        load_bits_pair_if(p->A_log, p->A_log_dtype, A_off, gated && p->A_log, &tb->A, &tb->A16);
    else
        tb->A = load_bits_if(p->A_log, p->A_log_dtype, A_off, gated && p->A_log);
    const int BRANCH = TOKEN_LOADS_BRANCH(SPLIT, TOK);
#pragma unroll
    for (int i = 0; i < DECODE_KEYS_PER_THREAD; i++) {
        tb->q[i] = tb->k[i] = tb->g[i] = tb->bias[i] = tb->bias16[i] = 0u;
        /* A slot no thread of the CTA has a key in: one uniform branch (measured faster). The
         * unbranched loads take the first slot without it (e < K covers it), so that its loads
         * share one basic block with v's, beta's and A_log's. */
        if ((BRANCH || i > 0) && base + i * nthreads >= w->K) continue;
        const int e = base + tid + i * nthreads;
        if (BRANCH) {
            /* A branch per thread, not loads predicated on e < K: predicated, they measured
             * slower at every batch size (with one load form, where this path serves). */
            if (e < w->K) {
                tb->q[i] = load_elem(qv, TOKEN_DTYPE(p, q_dtype, TOK), e, (int)p->q_stride[3], SPLIT);
                tb->k[i] = load_elem(kv, TOKEN_DTYPE(p, k_dtype, TOK), e, (int)p->k_stride[3], SPLIT);
                tb->g[i] = load_elem(gv, TOKEN_DTYPE(p, g_dtype, TOK), e, (int)p->g_stride[3], SPLIT);
                /* the split form's two registers kept apart (or'ed in stage_token) */
                if (biased && SPLIT)
                    load_bits_pair_if(bv, p->dt_bias_dtype, (int64_t)(e * (int)p->dt_bias_stride[1]), 1, &tb->bias[i],
                                      &tb->bias16[i]);
                else if (biased)
                    tb->bias[i] = load_elem(bv, p->dt_bias_dtype, e, (int)p->dt_bias_stride[1], SPLIT);
            }
        } else {
            const int ok = e < w->K;
            tb->q[i] = load_bits_as(SPLIT, qv, TOKEN_DTYPE(p, q_dtype, TOK), (int64_t)(e * (int)p->q_stride[3]), ok);
            tb->k[i] = load_bits_as(SPLIT, kv, TOKEN_DTYPE(p, k_dtype, TOK), (int64_t)(e * (int)p->k_stride[3]), ok);
            tb->g[i] = load_bits_as(SPLIT, gv, TOKEN_DTYPE(p, g_dtype, TOK), (int64_t)(e * (int)p->g_stride[3]), ok);
            tb->bias[i] = load_bits_as(SPLIT, bv, p->dt_bias_dtype, (int64_t)(e * (int)p->dt_bias_stride[1]),
                                       ok && biased);
        }
    }
}

/* Stages one token for the whole CTA, then waits for every warp (one __syncthreads): thread i
 * handles keys i, i + blockDim, ... (0, 0 and 1 past K, up to the `rows` the registers cover).
 * Up to DECODE_KEYS_PER_THREAD keys per thread are loaded together before any is used, so a
 * CTA stages DECODE_KEYS_PER_THREAD * blockDim keys in one round trip (any CTA covers K <= 128,
 * two warps or more K <= 256), which overlaps the state's own loads that the caller issued
 * just before. Every warp of the head shares this work: the gate's exp and log1p run once per
 * key, not once per warp. ONE_ROUND: the caller's leave to compile the rounds as one where the
 * keys fit it (below). `first`: the first round's bits, loaded by the caller (NULL: loaded
 * here). */
static __device__ __forceinline__ staged_token stage_token(const fkda_decode_params *p, const lane_tile *w, int64_t row,
                                                           int64_t pos, int64_t h, int64_t hq, stage_buffer *sb,
                                                           const int V_FIRST, const int VEC, const int NR,
                                                           const int TOK, const int SPLIT, const int ONE_ROUND,
                                                           const token_bits *first)
{
    const int tid = threadIdx.x, nthreads = blockDim.x, lane = tid & 31, warp = tid >> 5;
    const int rows = w->KL * NR; /* keys the lanes' registers cover; K <= rows <= 256 */
    const int gated = p->gate != FKDA_GATE_NONE;
    uint32_t beta_bits = 0u;
    float ssq = 0.0f, ssk = 0.0f, qk = 0.0f, weight = 1.0f;
    /* One round where the keys fit one (every CTA has a warp at least), known at compile time in
     * the dense 128 kernels: then the rounds are no loop. The head of a loop is where the compiled
     * code waits for every load still in flight (the state's, issued just before): a whole round
     * trip before the token's loads issue (dev/cuda/load_waits.py). Not in the tile kernels of
     * run-time token dtypes (TOK = 0 with the split loads): without the loop they spilled 28-52
     * bytes (ptxas). */
    const int one_round = ONE_ROUND && rows <= DECODE_KEYS_PER_THREAD * 32 && (TOK || !SPLIT);
    for (int base = 0; base < rows; base += DECODE_KEYS_PER_THREAD * nthreads) {
        token_bits tb;
        if (base == 0 && first != NULL) { /* the first round's loads were issued by the caller */
            tb = *first;
        } else {
            load_token_bits(p, w, row, pos, h, hq, base, &tb, TOK, SPLIT);
        }
        /* every load of the round is issued before anything waits for one */
#pragma unroll
        for (int i = 0; i < DECODE_KEYS_PER_THREAD; i++) {
            hold_until_here(&tb.q[i]);
            hold_until_here(&tb.k[i]);
            hold_until_here(&tb.g[i]);
            hold_until_here(&tb.bias[i]);
            hold_until_here(&tb.bias16[i]);
        }
        hold_until_here(&tb.beta);
        hold_until_here(&tb.A);
        hold_until_here(&tb.A16);
        if (base == 0) beta_bits = tb.beta;
        const uint32_t *qb = tb.q, *kb = tb.k, *gb = tb.g;
        uint32_t bb[DECODE_KEYS_PER_THREAD];
#pragma unroll
        for (int i = 0; i < DECODE_KEYS_PER_THREAD; i++) bb[i] = tb.bias[i] | tb.bias16[i];
        const uint32_t A_bits = tb.A | tb.A16;
        if (gated && p->A_log) weight = expf(bits_to_float(A_bits, p->A_log_dtype));
#pragma unroll
        for (int i = 0; i < DECODE_KEYS_PER_THREAD; i++) {
            const int e = base + tid + i * nthreads;
            if (e >= rows) continue;
            const float q = bits_to_float(qb[i], TOKEN_DTYPE(p, q_dtype, TOK)),
                        k = bits_to_float(kb[i], TOKEN_DTYPE(p, k_dtype, TOK));
            float a = bits_to_float(gb[i], TOKEN_DTYPE(p, g_dtype, TOK));
            if (gated) {
                a += bits_to_float(bb[i], p->dt_bias_dtype);
                a = p->gate == FKDA_GATE_LOWER_BOUND ? p->lower_bound * sigmoidf_(weight * a) : -weight * softplusf_(a);
            }
            ssq = fmaf(q, q, ssq);
            ssk = fmaf(k, k, ssk);
            qk = fmaf(q, k, qk);
            const int at = stage_pos(w, e, V_FIRST, VEC, NR);
            sb->q[at] = q;
            sb->k[at] = k;
            sb->d[at] = e < w->K ? expf(a) : 1.0f;
        }
        if (one_round) break;
    }
    ssq = warp_sum(ssq);
    ssk = warp_sum(ssk);
    qk = warp_sum(qk);
    if (lane == 0) {
        sb->partial[warp][0] = ssq;
        sb->partial[warp][1] = ssk;
        sb->partial[warp][2] = qk;
    }
    __syncthreads();
    /* Every thread adds the warps' partial sums in the same order: the same factors everywhere. */
    ssq = ssk = qk = 0.0f;
    for (int i = 0; i < (nthreads >> 5); i++) {
        ssq += sb->partial[i][0];
        ssk += sb->partial[i][1];
        qk += sb->partial[i][2];
    }
    staged_token st;
    st.qf = p->scale;
    st.kf = 1.0f;
    if (p->use_qk_l2norm) { /* x / sqrt(sum x^2 + 1e-6), as the CPU backend: x * (1 / sqrt(.)) */
        st.qf *= 1.0f / sqrtf(ssq + 1e-6f);
        st.kf = 1.0f / sqrtf(ssk + 1e-6f);
    }
    st.kq = qk * st.qf * st.kf;
    float beta = bits_to_float(beta_bits, TOKEN_DTYPE(p, beta_dtype, TOK));
    if (p->use_beta_sigmoid) beta = (p->allow_neg_eigval ? 2.0f : 1.0f) * sigmoidf_(beta);
    st.beta = beta;
    return st;
}

#endif /* FKDA_CUDA_DECODE_STAGE_CUH */

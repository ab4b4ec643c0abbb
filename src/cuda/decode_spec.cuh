/*
 * decode_spec.cuh: the _spec kernels' tokens (speculative decoding in vLLM's form: cu_seqlens,
 * 2-D indices, all-bf16 token tensors, dense 128 heads), staged several at a time: one pass of
 * loads, gates and norms for up to SPEC_BATCH tokens behind one __syncthreads, then their steps
 * back to back, the state stored after each.
 *
 * Why: at small batches a speculative call's time is one warp's instruction path, at ~5 cycles
 * an instruction (a warp a scheduler), and a token staged on its own is a chain of dependent
 * steps (its loads, the gate, three butterflies, the barrier, the partial sums) that issue one
 * after another. Staged together, the tokens' chains interleave, and the first batch's staging
 * runs while the state's loads are in flight; what is left on the path per token is its step.
 *
 * The batch: thread tid's slot i is item f = tid + i * blockDim of the batch's G x 128 (token,
 * key) pairs, token f / 128, key (and value column) f % 128. G = min(SPEC_BATCH, blockDim / 32,
 * tokens left), so that the four slots cover the batch in one round. A 32-item chunk (f / 32) is
 * one warp's slot, so a token's key sums are four chunk sums, each a butterfly over one warp,
 * added in chunk order; in a CTA of 128 threads that is run_tokens' order (its warps' sums in
 * warp order), so both give the same bits.
 */
#ifndef FKDA_CUDA_DECODE_SPEC_CUH
#define FKDA_CUDA_DECODE_SPEC_CUH

#include "decode_common.cuh"

#define SPEC_BATCH 4 /* tokens staged in one pass (vLLM's 1-3 draft tokens and the bonus one) */
#define SPEC_SLOTS 4 /* (token, key) items per thread: G x 128 items over >= 32 G threads */
#define SPEC_CHUNKS (SPEC_BATCH * 128 / 32)

/* Shared memory of the _spec kernels: each batch token's stage buffer (its q, k and decays in
 * the lanes' register order, and the split-K halves of its step), its v by column, the chunk
 * sums of q.q, k.k and q.k (a token's four chunks side by side: one 16-byte read each), its
 * effective beta and the slot its state goes to. */
typedef struct __align__(16) spec_stage
{
    stage_buffer tok[SPEC_BATCH];
    float v[SPEC_BATCH][128];
    float sums[3][SPEC_CHUNKS];
    float beta[SPEC_BATCH];
    int64_t slot[SPEC_BATCH];
}
spec_stage;

/* load_index_words_if with each form (int64: two words; int32: one) loading into registers of its
 * own, as load_bits_pair_if does for floats: where both forms write one register, the compiled
 * code made the int32 form wait for the int64 one (a write after write), and with that wait on a
 * scoreboard the first batch's loads shared, the state's slot index issued only once the batch
 * was in (dev/cuda/load_waits.py): a second round trip before the state's loads. */
static __device__ __forceinline__ index_words load_index_split_if(const void *base, int32_t dtype, int64_t i, int ok,
                                                                  index_words otherwise)
{
    uint32_t lo64 = 0u, hi64 = 0u, lo32 = 0u;
    const int wide = dtype == FKDA_DTYPE_I64;
    const char *at = (const char *)base + (i << (wide ? 3 : 2));
    asm volatile("{\n\t.reg .pred p, w;\n\t"
                 "setp.ne.s32 p, %5, 0;\n\t"
                 "setp.ne.and.s32 w, %4, 0, p;\n\t"
                 "setp.eq.and.s32 p, %4, 0, p;\n\t"
                 "@w ld.global.v2.u32 {%0, %1}, [%3];\n\t"
                 "@p ld.global.u32 %2, [%3];\n\t}"
                 : "+r"(lo64), "+r"(hi64), "+r"(lo32)
                 : "l"(at), "r"(wide), "r"(ok));
    index_words w;
    w.lo = ok ? lo64 | lo32 : otherwise.lo; /* the form that did not load left its 0 */
    w.hi = ok ? hi64 : otherwise.hi;
    return w;
}

/* Tokens in the batch that starts at token t0 of a sequence of len tokens. */
static __device__ __forceinline__ int spec_batch_tokens(int64_t t0, int64_t len)
{
    const int by_threads = (int)(blockDim.x >> 5);
    const int64_t left = len - t0;
    const int g = by_threads < SPEC_BATCH ? by_threads : SPEC_BATCH;
    return left < g ? (int)left : g;
}

/* The raw bits of one batch for one thread: its slots' q, k, g, v and dt_bias (the split form's
 * two registers), A_log's, and for thread g < G token g's beta and 2-D slot index. Loaded as one
 * batch, nothing waiting on them until stage_spec_batch, so that a caller can issue them before
 * the state's loads. */
typedef struct spec_bits {
    uint32_t q[SPEC_SLOTS], k[SPEC_SLOTS], g[SPEC_SLOTS], v[SPEC_SLOTS], bias[SPEC_SLOTS], bias16[SPEC_SLOTS];
    uint32_t A, A16, beta;
    index_words slot;
} spec_bits;

/* The element offset of token g of the batch, key e, in a token tensor whose batch starts at
 * `vec` (token_vector of its first token): 32-bit with TOK = 1 (the launch checked every token
 * offset fits in 31 bits), 64-bit position steps with TOK = 2. */
static __device__ __forceinline__ int64_t spec_offset(const int64_t *stride, int g, int e, const int TOK)
{
    if (TOK == 1) return (int32_t)g * (int32_t)stride[1] + e * (int32_t)stride[3];
    return (int64_t)g * stride[1] + e * (int32_t)stride[3];
}

static __device__ __forceinline__ void load_spec_batch(const fkda_decode_params *p, int64_t n, int64_t h, int64_t hq,
                                                       int64_t bos, int64_t t0, int64_t len, spec_bits *b,
                                                       const int TOK)
{
    const int tid = threadIdx.x, nthreads = blockDim.x;
    const int G = spec_batch_tokens(t0, len);
    const int32_t bf16 = FKDA_DTYPE_BF16;
    const int64_t pos = bos + t0;
    const char *qv = token_vector(p->q, p->q_stride, bf16, 0, pos, hq, TOK);
    const char *kv = token_vector(p->k, p->k_stride, bf16, 0, pos, hq, TOK);
    const char *gv = token_vector(p->g, p->g_stride, bf16, 0, pos, h, TOK);
    const char *vv = token_vector(p->v, p->v_stride, bf16, 0, pos, h, TOK);
    const int gated = p->gate != FKDA_GATE_NONE, biased = gated && p->dt_bias;
    const int64_t bias_off = dt_bias_offset(p, h, TOK), A_off = A_log_offset(p, h, TOK);
    const char *bv = dt_bias_row(p, bias_off, biased);
    load_bits_pair_if(p->A_log, p->A_log_dtype, A_off, gated && p->A_log, &b->A, &b->A16);
    b->beta = load_bits_as(1, p->beta, bf16, token_offset(p->beta_stride, 0, pos + tid, h, TOK), tid < G);
    const index_words no_slot = {0xffffffffu, 0xffffffffu}; /* -1 in either index dtype */
    b->slot = load_index_split_if(p->state_indices, p->idx_dtype, n * p->idx_stride[0] + (t0 + tid) * p->idx_stride[1],
                                  p->idx_2d && tid < G && t0 + tid < p->idx_tokens, no_slot);
#pragma unroll
    for (int i = 0; i < SPEC_SLOTS; i++) {
        const int f = tid + i * nthreads, g = f >> 7, e = f & 127;
        const int ok = g < G; /* uniform over a warp */
        b->q[i] = load_bits_as(1, qv, bf16, spec_offset(p->q_stride, g, e, TOK), ok);
        b->k[i] = load_bits_as(1, kv, bf16, spec_offset(p->k_stride, g, e, TOK), ok);
        b->g[i] = load_bits_as(1, gv, bf16, spec_offset(p->g_stride, g, e, TOK), ok);
        b->v[i] = load_bits_as(1, vv, bf16, spec_offset(p->v_stride, g, e, TOK), ok);
        load_bits_pair_if(bv, p->dt_bias_dtype, (int64_t)(e * (int)p->dt_bias_stride[1]), ok && biased, &b->bias[i],
                          &b->bias16[i]);
    }
}

/* Stages the batch whose bits `b` holds (load_spec_batch) into `ss`, then waits for the whole CTA
 * (one __syncthreads): each slot's q, k and decay exp(a) at stage_pos, its v by column, its
 * chunk's sums of q.q, k.k and q.k; thread g < G token g's effective beta and slot. The
 * arithmetic is stage_token's, key for key, but for the gate's sigmoid (below). */
static __device__ __forceinline__ void stage_spec_batch(const fkda_decode_params *p, const lane_tile *w, spec_stage *ss,
                                                        int64_t t0, int64_t len, spec_bits *b, const int V_FIRST,
                                                        const int VEC, const int NR)
{
    const int tid = threadIdx.x, nthreads = blockDim.x, lane = tid & 31;
    const int G = spec_batch_tokens(t0, len);
    const int gated = p->gate != FKDA_GATE_NONE;
    /* every load of the batch is issued before anything waits for one */
#pragma unroll
    for (int i = 0; i < SPEC_SLOTS; i++) {
        hold_until_here(&b->q[i]);
        hold_until_here(&b->k[i]);
        hold_until_here(&b->g[i]);
        hold_until_here(&b->v[i]);
        hold_until_here(&b->bias[i]);
        hold_until_here(&b->bias16[i]);
    }
    hold_until_here(&b->A);
    hold_until_here(&b->A16);
    hold_until_here(&b->beta);
    hold_until_here(&b->slot.lo);
    hold_until_here(&b->slot.hi);
    const float weight = gated && p->A_log ? expf(bits_to_float(b->A | b->A16, p->A_log_dtype)) : 1.0f;
    /* Straight-line code over the slots (no branch per slot, so that their chains interleave):
     * every slot's values and sums, the butterflies level by level over all slots, then the
     * stores of the slots in the batch (g < G, uniform over a warp). */
    float q[SPEC_SLOTS], k[SPEC_SLOTS], d[SPEC_SLOTS], ssq[SPEC_SLOTS], ssk[SPEC_SLOTS], qk[SPEC_SLOTS];
    float a[SPEC_SLOTS];
#pragma unroll
    for (int i = 0; i < SPEC_SLOTS; i++) {
        a[i] = bf16_bits_to_float(b->g[i]);
        if (gated) a[i] += bits_to_float(b->bias[i] | b->bias16[i], p->dt_bias_dtype);
    }
    /* The gate (stage_token's), one branch on its kind for all slots. The sigmoid's division is
     * __fdividef (within 2 ulp): the IEEE one has a slow path, a branch per slot. */
    if (p->gate == FKDA_GATE_LOWER_BOUND) {
#pragma unroll
        for (int i = 0; i < SPEC_SLOTS; i++) a[i] = p->lower_bound * __fdividef(1.0f, 1.0f + expf(-(weight * a[i])));
    } else if (gated) {
#pragma unroll
        for (int i = 0; i < SPEC_SLOTS; i++) a[i] = -weight * softplusf_(a[i]);
    }
#pragma unroll
    for (int i = 0; i < SPEC_SLOTS; i++) {
        q[i] = bf16_bits_to_float(b->q[i]);
        k[i] = bf16_bits_to_float(b->k[i]);
        d[i] = expf(a[i]);
        ssq[i] = q[i] * q[i];
        ssk[i] = k[i] * k[i];
        qk[i] = q[i] * k[i];
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
#pragma unroll
        for (int i = 0; i < SPEC_SLOTS; i++) {
            ssq[i] += __shfl_xor_sync(FULL_MASK, ssq[i], off);
            ssk[i] += __shfl_xor_sync(FULL_MASK, ssk[i], off);
            qk[i] += __shfl_xor_sync(FULL_MASK, qk[i], off);
        }
    }
#pragma unroll
    for (int i = 0; i < SPEC_SLOTS; i++) {
        const int f = tid + i * nthreads, g = f >> 7, e = f & 127;
        if (g < G) {
            stage_buffer *sb = &ss->tok[g];
            const int at = stage_pos(w, e, V_FIRST, VEC, NR);
            sb->q[at] = q[i];
            sb->k[at] = k[i];
            sb->d[at] = d[i];
            ss->v[g][e] = bf16_bits_to_float(b->v[i]);
            if (lane == 0) {
                const int chunk = f >> 5;
                ss->sums[0][chunk] = ssq[i];
                ss->sums[1][chunk] = ssk[i];
                ss->sums[2][chunk] = qk[i];
            }
        }
    }
    if (tid < G) {
        float beta = bf16_bits_to_float(b->beta);
        if (p->use_beta_sigmoid) beta = (p->allow_neg_eigval ? 2.0f : 1.0f) * sigmoidf_(beta);
        ss->beta[tid] = beta;
        ss->slot[tid] = index_value(b->slot, p->idx_dtype);
    }
    __syncthreads();
}

/* Token g's factors (staged_token) from its four chunk sums, added in chunk order: the same
 * bits in every thread. */
static __device__ __forceinline__ staged_token spec_factors(const fkda_decode_params *p, const spec_stage *ss, int g)
{
    const float4 sq = *(const float4 *)&ss->sums[0][4 * g], sk = *(const float4 *)&ss->sums[1][4 * g],
                 skq = *(const float4 *)&ss->sums[2][4 * g];
    const float ssq = ((0.0f + sq.x) + sq.y + sq.z) + sq.w, ssk = ((0.0f + sk.x) + sk.y + sk.z) + sk.w,
                qk = ((0.0f + skq.x) + skq.y + skq.z) + skq.w;
    staged_token st;
    st.qf = p->scale;
    st.kf = 1.0f;
    if (p->use_qk_l2norm) { /* x / sqrt(sum x^2 + 1e-6), as stage_token */
        st.qf *= 1.0f / sqrtf(ssq + 1e-6f);
        st.kf = 1.0f / sqrtf(ssk + 1e-6f);
    }
    st.kq = qk * st.qf * st.kf;
    st.beta = ss->beta[g];
    return st;
}

/* The sequence's tokens from the state in registers (loaded by the caller: BF16 = 2, its bf16
 * words still raw, converted once the first batch is staged), the state stored after each token
 * to that token's slot. `first`: the first batch's bits, loaded by the caller (NULL: loaded
 * here). The first batch is staged ahead of the loop: at a loop's head the compiled code waits
 * for every load in flight, the state's among them, and the staging is meant to run under them. */
static __device__ __forceinline__ void run_spec_tokens(const fkda_decode_params *p, const lane_tile *wp, spec_stage *ss,
                                                       int64_t n, int64_t h, int64_t bos, int64_t len,
                                                       float s[DECODE_MAX_R][DECODE_MAX_C], const int BF16,
                                                       const int V_FIRST, const int VEC, const int NR, const int NC,
                                                       const int TOK, const int KS, spec_bits *first)
{
    const lane_tile w = *wp;
    const int64_t hq = query_head(p, h);
    const int red_lo = V_FIRST ? 1 : w.LJ, red_hi = V_FIRST ? w.KL : 32;
    const int32_t bf16 = FKDA_DTYPE_BF16;
    /* This lane's rows (a split-K warp's, the kh-th half of its kl group's). */
    const int lane_rows = w.kl * (NR * KS + DECODE_ROW_PAD) + w.kh * NR;
    spec_bits b;
    if (first != NULL)
        b = *first;
    else
        load_spec_batch(p, n, h, hq, bos, 0, len, &b, TOK);
    stage_spec_batch(p, &w, ss, 0, len, &b, V_FIRST, VEC, NR * KS);
    if (BF16 == 2) finish_raw_tile(s, V_FIRST, NR, NC); /* the state's words, loaded raw */
    for (int64_t t0 = 0;;) {
        const int G = spec_batch_tokens(t0, len);
        for (int g = 0; g < G; g++) {
            stage_buffer *sb = &ss->tok[g];
            const staged_token tok = spec_factors(p, ss, g);
            const float *lq = sb->q + lane_rows, *lk = sb->k + lane_rows, *ld = sb->d + lane_rows;
            /* run_tokens' step: decay and dot products, their column sums, the delta rule and the
             * output (v' = b (v - S^T k), o = S^T q + (k . q) v'), the rank-1 update. */
            float pk[DECODE_MAX_C], pq[DECODE_MAX_C];
            TILE_DECAY_DOTS(s, ld, lk, lq, pk, pq, NR, NC);
            tile_column_sums(pk, pq, red_lo, red_hi, NC);
            if (KS == 2) add_other_half(sb, &w, pk, pq, NC);
            float vk[DECODE_MAX_C]; /* kf * v', so that the update can use the unscaled k */
            const char *ov = token_vector(p->out, p->out_stride, bf16, 0, bos + t0 + g, h, TOK);
#pragma unroll
            for (int c = 0; c < NC; c++) {
                const int j = tile_col(&w, c, V_FIRST, VEC); /* past V in a CTA's spare warps */
                const float vn = tok.beta * ((j < w.V ? ss->v[g][j] : 0.0f) - tok.kf * pk[c]);
                vk[c] = tok.kf * vn;
                if (w.kl == 0 && w.kh == 0 && j < w.V)
                    store_elem(ov, bf16, j, (int)p->out_stride[3], fmaf(tok.kq, vn, tok.qf * pq[c]));
            }
            tile_rank1_update(s, lk, vk, NR, NC);
            const int64_t ts = ss->slot[g];
            if (ts >= 0 && ts < p->pool_size) store_tile(p, &w, ts, h, s, BF16 ? 1 : 0, V_FIRST, VEC, NR, NC, 1);
        }
        t0 += G; /* G < SPEC_BATCH in CTAs of fewer than 4 warps */
        if (t0 >= len) break;
        __syncthreads(); /* every warp has run the batch before: its buffers are free */
        load_spec_batch(p, n, h, hq, bos, t0, len, &b, TOK);
        stage_spec_batch(p, &w, ss, t0, len, &b, V_FIRST, VEC, NR * KS);
    }
}

#endif /* FKDA_CUDA_DECODE_SPEC_CUH */

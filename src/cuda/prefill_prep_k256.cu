/*
 * prefill_prep_k256.cu: the prep kernel for 128 < K <= 256. One CTA of 256 threads per (16-token
 * chunk, value head), thread c owning key channel c, writes the chunk's 256-key record
 * (prefill_k256.cuh). The steps are those of prefill_prep.cu:
 *
 *   1. thread c reads key c of every row of q, k, g straight into registers (any dtype, any
 *      strides; keys past K and rows past the sequence end are zeros), and v into the chain's bf16
 *      copy when the chain cannot read the caller's;
 *   2. L2 norms of the q and k rows: a warp sum per row, then the 8 warps' sums;
 *   3. the gate, cumsum G (fp32, log2 units), Qd, Kr, gamma into the record, Kd in registers, and
 *      the exponent-centred operands kc, ki (hi, lo), qc (hi, lo) as bf16 tiles (Gref = row 7);
 *   4. L = strict_lower(diag(b) kc ki^T) and Mqk = scale lower_incl(qc ki^T) by mma.sync, 16
 *      k-steps split over the two key halves (warps 0-3 keys 0-127, warps 4-7 keys 128-255), the
 *      halves' fp32 sums added in shared memory;
 *   4'. or, for a chunk whose centred exponents leave their range (the span check of
 *      prefill_prep.cu, taken by every kernel here: one kernel serves every gate), L and Mqk
 *      pairwise in fp32 from exp(G_i - G_j) <= 1;
 *   5. warp 0: (I + L)^-1 diag(b) by fp32 forward substitution, stored as hi + lo;
 *   6. thread c: -W[:, c] = -bINV Kd[:, c].
 * One compiled form for every dtype and gate: the element loads and the range check cost the prep
 * time, but at K = 256 the chain's step is the larger share (docs/history/prefill.md, v6).
 */
#include "prefill_k256.cuh"
#include "prefill_prep_steps.cuh"
#include "ptx_mma.cuh"

#define P256_THREADS 256
#define P256_UNITS 12 /* 4 KB units of dynamic shared memory: step 4 takes 10, step 4' 12 */
#define P256_SMEM (P256_UNITS * 4096)

/* Step 4': L and Mqk pairwise from the fp32 tiles qn, kn, G ([16][256] each): thread e < 136 sums
 * entry e (i >= j, numbered row by row) over all 256 keys, lane l starting at key l so that the
 * lanes read different banks; the entries above the diagonal are zeros. */
static __device__ __forceinline__ void p256_pairwise(const float *fq, const float *fk, const float *fg,
                                                     float (*s_L)[17], const float *s_b, unsigned char *rec,
                                                     float scale)
{
    const int tid = threadIdx.x, lane = tid & 31;
    {
        const int i = tid >> 4, j = tid & 15; /* 256 threads: one entry of the 16 x 16 each */
        if (j > i) {
            s_L[i][j] = 0.0f;
            *(uint16_t *)(rec + PF256_REC_MQK + tid * 2) = 0;
            *(uint16_t *)(rec + PF256_REC_MQK_LO + tid * 2) = 0;
        }
    }
    if (tid >= 136) return;
    int i, j;
    prep_pair_entry(tid, &i, &j);
    float l = 0.0f, m = 0.0f;
#pragma unroll 8
    for (int cc = 0; cc < PF256_DK; cc++) {
        const int ch = (cc + lane) & (PF256_DK - 1);
        const float kj = fk[j * PF256_DK + ch] * pf_exp2(fg[i * PF256_DK + ch] - fg[j * PF256_DK + ch]);
        l += fk[i * PF256_DK + ch] * kj;
        m += fq[i * PF256_DK + ch] * kj;
    }
    s_L[i][j] = i > j ? s_b[i] * l : 0.0f;
    const float mq = scale * m;
    const uint16_t hi = pf_float_to_bf16(mq);
    *(uint16_t *)(rec + PF256_REC_MQK + (i * 16 + j) * 2) = hi;
    st_bf16(rec + PF256_REC_MQK_LO, (uint32_t)(i * 16 + j) * 2, mq - pf_bf16_to_float(hi));
}

/* Steps 5 and 6 with the 256-key record's offsets (prep_finish of prefill_prep_steps.cuh, K = 128,
 * writes the other layout). */
static __device__ __forceinline__ void p256_finish(float (*s_L)[17], float (*s_binv)[17], const float *s_b,
                                                   const float kd[16], unsigned char *rec, int col, int warp, int lane)
{
    if (warp == 0) {
        const int cc = lane & 15;
        float inv[16];
#pragma unroll
        for (int i = 0; i < 16; i++) {
            float s0 = i == cc ? 1.0f : 0.0f, s1 = 0.0f;
#pragma unroll
            for (int j = 0; j < i; j += 2) {
                s0 -= s_L[i][j] * inv[j];
                if (j + 1 < i) s1 -= s_L[i][j + 1] * inv[j + 1];
            }
            inv[i] = s0 + s1;
        }
        if (lane < 16) {
            const float bc = s_b[cc];
#pragma unroll
            for (int i = 0; i < 16; i++) {
                const float x = inv[i] * bc;
                const uint16_t hi = pf_float_to_bf16(x);
                s_binv[i][cc] = x;
                *(uint16_t *)(rec + PF256_REC_BINV + (i * 16 + cc) * 2) = hi;
                st_bf16(rec + PF256_REC_BINV_LO, (uint32_t)(i * 16 + cc) * 2, x - pf_bf16_to_float(hi));
            }
        }
    }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < 16; i++) {
        float w = 0.0f;
#pragma unroll
        for (int j = 0; j <= i; j++) w += s_binv[i][j] * kd[j];
        st_bf16(rec + PF256_REC_NEGW, pf256_swz(i, col), -w);
    }
}

__global__ void __launch_bounds__(P256_THREADS, 2) pf256_prep_kernel(const pf_params p)
{
    extern __shared__ __align__(128) unsigned char s_dyn[];
    __shared__ float s_L[16][17];
    __shared__ float s_binv[16][17];
    __shared__ float s_part[2][2][16][17]; /* step 4: [key half][L, Mqk][i][j] */
    __shared__ float s_nq[8][16], s_nk[8][16];
    __shared__ float s_rq[16], s_rk[16], s_b[16];
    /* step 4 operands: five [16][256] bf16 tiles of two halves (8 KB each) */
    enum { OP_KC = 0, OP_KI = 1, OP_KI_LO = 2, OP_QC = 3, OP_QC_LO = 4 };
    unsigned char *const ops = s_dyn;
    /* step 4' tiles: [16][256] fp32 each (16 KB) */
    float *const fq = (float *)s_dyn, *const fk = (float *)(s_dyn + 16384), *const fg = (float *)(s_dyn + 32768);

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, col = tid;
    const int64_t h = blockIdx.y, slot = blockIdx.x;
    const int64_t n = prep_find_sequence(&p, slot);
    int64_t row, start, len, slot0;
    pf_sequence(&p, n, &row, &start, &len, &slot0);
    const int64_t c = slot - slot0;
    if (c < 0 || c * PF_CHUNK >= len) return; /* a slot no sequence uses (uniform per CTA) */
    const int64_t t0 = start + c * PF_CHUNK;
    const int rows = (int)(len - c * PF_CHUNK < PF_CHUNK ? len - c * PF_CHUNK : PF_CHUNK);
    const int64_t hq = h / p.group;
    unsigned char *rec = p.records + (h * p.slots + slot) * (int64_t)PF256_REC_BYTES;
    const int64_t q0 = row * p.q_s[0] + hq * p.q_s[2], k0 = row * p.k_s[0] + hq * p.k_s[2];
    const int64_t g0 = row * p.g_s[0] + h * p.g_s[2];
    const int live = col < p.K;

    /* 1. Key `col` of every row, into registers (coalesced along the keys). */
    float qn[16], kn[16], G[16];
#pragma unroll
    for (int r = 0; r < PF_CHUNK; r++) {
        const int ok = live && r < rows;
        const int64_t t = t0 + r;
        qn[r] = ok ? pf_load_float(p.q, p.qkv_dtype, q0 + t * p.q_s[1] + col) : 0.0f;
        kn[r] = ok ? pf_load_float(p.k, p.qkv_dtype, k0 + t * p.k_s[1] + col) : 0.0f;
        G[r] = ok ? pf_load_float(p.g, p.g_dtype, g0 + t * p.g_s[1] + col) : 0.0f;
    }
    if (p.v_stage != NULL) {
        /* the chain's bf16 copy of v: [16][vpad], zeros past V and past the sequence end */
        uint16_t *dst = (uint16_t *)p.v_stage + (h * p.slots + slot) * (int64_t)(PF_CHUNK * p.vpad);
        const int64_t vbase = row * p.v_s[0] + h * p.v_s[2];
        for (int r = 0; r < PF_CHUNK; r++)
            for (int vc = tid; vc < p.vpad; vc += P256_THREADS) {
                const float x = r < rows && vc < p.V ? pf_load_float(p.v, p.qkv_dtype, vbase + (t0 + r) * p.v_s[1] + vc)
                                                     : 0.0f;
                dst[r * p.vpad + vc] = pf_float_to_bf16(x);
            }
    }
    if (tid < 16) {
        float b = 0.0f;
        if (tid < rows) {
            const float x = pf_load_float(p.beta, p.beta_dtype,
                                          row * p.beta_s[0] + (t0 + tid) * p.beta_s[1] + h * p.beta_s[2]);
            b = p.beta_sigmoid ? pf_sigmoid(x) * (p.neg_eigval ? 2.0f : 1.0f) : x;
        }
        s_b[tid] = b;
    }

    /* 2. Row norms: each warp sums its 32 keys of every row, then the 8 warps' sums. */
#pragma unroll
    for (int r = 0; r < PF_CHUNK; r++) {
        float sq = qn[r] * qn[r], sk = kn[r] * kn[r];
#pragma unroll
        for (int m = 16; m > 0; m >>= 1) {
            sq += __shfl_xor_sync(0xffffffffu, sq, m);
            sk += __shfl_xor_sync(0xffffffffu, sk, m);
        }
        if (lane == 0) {
            s_nq[warp][r] = sq;
            s_nk[warp][r] = sk;
        }
    }
    __syncthreads();
    if (tid < 16) {
        float sq = 0.0f, sk = 0.0f;
#pragma unroll
        for (int w = 0; w < 8; w++) {
            sq += s_nq[w][tid];
            sk += s_nk[w][tid];
        }
        s_rq[tid] = p.l2norm ? rsqrtf(sq + 1e-6f) : 1.0f;
        s_rk[tid] = p.l2norm ? rsqrtf(sk + 1e-6f) : 1.0f;
    }
    __syncthreads();

    /* 3. The gate and the cumsum over the chunk; normalised q and k. */
    {
        const float A = p.A_log ? __expf(pf_load_float(p.A_log, p.A_log_dtype, h * p.A_log_s)) : 1.0f;
        const float db = p.dt_bias && live ? pf_load_float(p.dt_bias, p.dt_dtype, h * p.dt_s[0] + col * p.dt_s[1])
                                           : 0.0f;
        float acc = 0.0f;
#pragma unroll
        for (int i = 0; i < 16; i++) {
            const float a = prep_gate(&p, G[i], A, db);
            acc += i < rows && live ? a : 0.0f;
            G[i] = acc;
            qn[i] *= s_rq[i];
            kn[i] *= s_rk[i];
        }
    }
    float span = 0.0f;
#pragma unroll
    for (int i = 0; i < 16; i++) span = fmaxf(span, fabsf(G[i] - G[7]));
    const float span_max = p.l2norm ? PREP_SAFE_SPAN_NORM : PREP_SAFE_SPAN;
    const int pairwise = __syncthreads_or(!(span <= span_max)); /* NaN: pairwise too */

    float kd[16];
    const float Gref = G[7], Gl = G[15];
    *(float *)(rec + PF256_REC_GAMMA + col * 4) = pf_exp2(Gl);
#pragma unroll
    for (int i = 0; i < 16; i++) {
        const uint32_t off = pf256_swz(i, col);
        const float e_ = pf_exp2(G[i]);
        kd[i] = kn[i] * e_;
        st_bf16(rec + PF256_REC_QD, off, p.scale * qn[i] * e_);
        st_bf16(rec + PF256_REC_KR, off, kn[i] * pf_exp2(Gl - G[i]));
        if (!pairwise) {
            const float ec = pf_exp2(G[i] - Gref), ei = pf_exp2(Gref - G[i]);
            const float kc = kn[i] * ec, ki = kn[i] * ei, qc = qn[i] * ec;
            const uint16_t ki_hi = pf_float_to_bf16(ki), qc_hi = pf_float_to_bf16(qc);
            st_bf16(ops + OP_KC * 8192, off, kc);
            *(uint16_t *)(ops + OP_KI * 8192 + off) = ki_hi;
            st_bf16(ops + OP_KI_LO * 8192, off, ki - pf_bf16_to_float(ki_hi));
            *(uint16_t *)(ops + OP_QC * 8192 + off) = qc_hi;
            st_bf16(ops + OP_QC_LO * 8192, off, qc - pf_bf16_to_float(qc_hi));
        } else {
            fq[i * PF256_DK + col] = qn[i];
            fk[i * PF256_DK + col] = kn[i];
            fg[i * PF256_DK + col] = G[i];
        }
    }
    __syncthreads();

    if (pairwise) {
        p256_pairwise(fq, fk, fg, s_L, s_b, rec, p.scale);
        __syncthreads();
        p256_finish(s_L, s_binv, s_b, kd, rec, col, warp, lane);
        return;
    }

    /* 4. Warp w: key half w / 4; product (w / 2) % 2 (L, or Mqk as hi*hi + hi*lo + lo*hi); token
     * tile w % 2. Eight k-steps over its half, as in prefill_prep.cu. */
    {
        const int kh = warp >> 2, prod = (warp >> 1) & 1, nt = warp & 1;
        const int g = lane >> 2, t = lane & 3;
        const unsigned char *half = ops + kh * PF256_HALF;
        float acc[3][4];
#pragma unroll
        for (int m = 0; m < 3; m++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[m][e] = 0.0f;
        const unsigned char *Ahi = half + (prod ? OP_QC : OP_KC) * 8192;
#pragma unroll
        for (int kk = 0; kk < 8; kk++) {
            uint32_t ah[4], bh[4];
            const uint32_t aoff = pf_swz_unit((lane & 7) + ((lane >> 3) & 1) * 8, 2 * kk + (lane >> 4));
            const uint32_t boff = pf_swz_unit((lane & 7) + (lane >> 4) * 8, 2 * kk + ((lane >> 3) & 1));
            ldsm_x4(ah, smem_addr(Ahi + aoff));
            ldsm_x4(bh, smem_addr(half + OP_KI * 8192 + boff));
            const uint32_t bh0 = nt ? bh[2] : bh[0], bh1 = nt ? bh[3] : bh[1];
            mma_bf16_16816(acc[0], ah, bh0, bh1, acc[0]);
            if (prod) { /* warp-uniform */
                uint32_t al[4], bl[4];
                ldsm_x4(al, smem_addr(half + OP_QC_LO * 8192 + aoff));
                ldsm_x4(bl, smem_addr(half + OP_KI_LO * 8192 + boff));
                const uint32_t bl0 = nt ? bl[2] : bl[0], bl1 = nt ? bl[3] : bl[1];
                mma_bf16_16816(acc[1], ah, bl0, bl1, acc[1]);
                mma_bf16_16816(acc[2], al, bh0, bh1, acc[2]);
            }
        }
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int i = g + 8 * (e >> 1), j = 8 * nt + 2 * t + (e & 1);
            s_part[kh][prod][i][j] = prod ? acc[0][e] + (acc[1][e] + acc[2][e]) : acc[0][e];
        }
    }
    __syncthreads();
    {
        /* the two halves' sums: thread tid takes entry (tid / 16, tid % 16) of L and Mqk */
        const int i = tid >> 4, j = tid & 15;
        const float l = s_part[0][0][i][j] + s_part[1][0][i][j];
        s_L[i][j] = i > j ? s_b[i] * l : 0.0f;
        const float m = i >= j ? p.scale * (s_part[0][1][i][j] + s_part[1][1][i][j]) : 0.0f;
        const uint16_t hi = pf_float_to_bf16(m);
        *(uint16_t *)(rec + PF256_REC_MQK + tid * 2) = hi;
        st_bf16(rec + PF256_REC_MQK_LO, (uint32_t)tid * 2, m - pf_bf16_to_float(hi));
    }
    __syncthreads();
    p256_finish(s_L, s_binv, s_b, kd, rec, col, warp, lane);
}

cudaError_t pf256_launch_prep(const pf_params *p, cudaStream_t stream)
{
    const int64_t used_slots = p->cu ? p->slots : p->N * p->chunks_per_row;
    if (used_slots <= 0 || p->HV <= 0) return cudaSuccess;
    if (used_slots > INT32_MAX || p->HV > 65535) return cudaErrorInvalidConfiguration; /* grid limits */
    cudaError_t err = cudaFuncSetAttribute(pf256_prep_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, P256_SMEM);
    if (err != cudaSuccess) return err;
    dim3 grid((unsigned)used_slots, (unsigned)p->HV);
    pf256_prep_kernel<<<grid, P256_THREADS, P256_SMEM, stream>>>(*p);
    return cudaGetLastError();
}

/*
 * prefill_prep_k256.cu: the prep kernel for 128 < K <= 256. One CTA of 256 threads per (16-token
 * chunk, value head), thread c owning key channel c in steps 3 and 6, writes the chunk's 256-key
 * record (prefill_k256.cuh). The steps are those of prefill_prep.cu:
 *
 *   1. the q, k, g tiles ([16][256]): bf16 ones with 16-byte rows by cp.async (keys past K and rows
 *      past the sequence end zero-filled); anything else element by element into fp32 tiles; v,
 *      unless the chain can read the caller's, into the chain's bf16 copy;
 *   2. L2 norms of the q and k rows (fp32, a half warp per row, 16 keys per thread);
 *   3. thread c takes its column of the tiles: the gate, cumsum G (fp32, log2 units), Qd, Kr,
 *      gamma into the record, Kd in registers, and the exponent-centred operands kc, ki (hi, lo),
 *      qc (hi, lo) as bf16 tiles (Gref = row 7), over the input tiles;
 *   4. L = strict_lower(diag(b) kc ki^T) and Mqk = scale lower_incl(qc ki^T) by mma.sync, 16
 *      k-steps split over the two key halves (warps 0-3 keys 0-127, warps 4-7 keys 128-255), the
 *      halves' fp32 sums added in shared memory;
 *   4'. or, in the checked kernels only (a gate that may leave the centred exponents' range: the
 *      span check of prefill_prep.cu, per chunk), L and Mqk pairwise in fp32 from
 *      exp(G_i - G_j) <= 1;
 *   5. warp 0: (I + L)^-1 diag(b) by fp32 forward substitution, stored as hi + lo;
 *   6. thread c: -W[:, c] = -bINV Kd[:, c].
 * Four compiled forms, chosen on the host (pf256_launch_prep) like prefill_prep.cu's: the bf16
 * tile loads or the element loads, each unchecked (the lower bound gate >= -5: no step 4', 64
 * registers and 40 or 48 KB, 4 CTAs per SM) or checked (step 4' too: 128 registers, 2 CTAs).
 */
#include "cuda_internal.h"
#include "prefill_k256.cuh"
#include "prefill_prep_steps.cuh"
#include "ptx_copy.cuh"
#include "ptx_mma.cuh"

#define P256_THREADS 256
/* 4 KB units of dynamic shared memory: the bf16 input tiles take 6 and step 4's operands 10; the
 * fp32 input tiles and step 4' tiles 12. */
#define P256_UNITS_BULK 10
#define P256_UNITS 12

/* Step 4': L and Mqk pairwise from the fp32 tiles qn, kn, G ([16][256] each): thread e < 136 sums
 * entry e (i >= j, numbered row by row) over all 256 keys (prep_pair_sums); the entries above the
 * diagonal are zeros. */
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
    float l, m;
    prep_pair_sums(fq, fk, fg, PF256_DK, i, j, lane, &l, &m);
    s_L[i][j] = i > j ? s_b[i] * l : 0.0f;
    const float mq = scale * m;
    const uint16_t hi = pf_float_to_bf16(mq);
    *(uint16_t *)(rec + PF256_REC_MQK + (i * 16 + j) * 2) = hi;
    st_bf16(rec + PF256_REC_MQK_LO, (uint32_t)(i * 16 + j) * 2, mq - pf_bf16_to_float(hi));
}

/* Steps 5 and 6 with the 256-key record's offsets (the K = 128 prep's, prep_finish and
 * prep_finish_tc of prefill_prep_steps.cuh, write the other layout); step 6's rows by prep_w_row. */
static __device__ __forceinline__ void p256_finish(float (*s_L)[17], float (*s_binv)[16], const float *s_b,
                                                   const float kd[16], unsigned char *rec, int col, int warp, int lane)
{
    if (warp == 0) {
        const int cc = lane & 15;
        float inv[16];
        prep_inverse_column(s_L, cc, inv);
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
    for (int i = 0; i < 16; i++) st_bf16(rec + PF256_REC_NEGW, pf256_swz(i, col), -prep_w_row(s_binv, kd, i));
}

/* The prep of one (chunk, value head). Two constants select the kernel below:
 *   bulk: q, k, g bf16 with 16-byte rows and K a multiple of 8: cp.async into [16][256] bf16
 *         tiles (keys past K zero-filled); else element by element into [16][256] fp32 tiles;
 *   gate_checked: the gate may decay faster than the centred products take (no lower bound of at
 *         least -5): each chunk checks its span and may take step 4'. Without it, step 4' is
 *         compiled out, which keeps the registers and shared memory of the common path. */
static __device__ __forceinline__ void p256_chunk(const pf_params &p, const int bulk, const int gate_checked,
                                                  unsigned char *s_dyn)
{
    __shared__ float s_L[16][17];
    __shared__ __align__(16) float s_binv[16][16];
    __shared__ float s_part[2][2][16][17]; /* step 4: [key half][L, Mqk][i][j] */
    __shared__ float s_rq[16], s_rk[16], s_b[16];
    /* bulk input tiles: [16][256] bf16 (8 KB each); step 4's operands: five [16][256] bf16 tiles of
     * two swizzled halves (8 KB each), over the input tiles once every thread has its column */
    enum { IN_Q = 0, IN_K = 1, IN_G = 2, OP_KC = 0, OP_KI = 1, OP_KI_LO = 2, OP_QC = 3, OP_QC_LO = 4 };
    unsigned char *const ops = s_dyn;
    /* element input tiles, then step 4' tiles: [16][256] fp32 each (16 KB) */
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

    /* 1. Tiles in flight first; beta and the gate's parameters meanwhile. */
    if (bulk) {
        /* each tensor's 512 16-byte units (32 per row): thread tid takes units tid and tid + 256 */
#pragma unroll
        for (int which = 0; which < 3; which++) {
            const uint16_t *base = which == 0   ? (const uint16_t *)p.q + q0
                                   : which == 1 ? (const uint16_t *)p.k + k0
                                                : (const uint16_t *)p.g + g0;
            const int64_t ts = which == 0 ? p.q_s[1] : which == 1 ? p.k_s[1] : p.g_s[1];
#pragma unroll
            for (int i = 0; i < 2; i++) {
                const int u = tid + i * P256_THREADS, r = u >> 5, unit = u & 31;
                const int ok = r < rows && unit * 8 < p.K;
                const uint16_t *src = ok ? base + (t0 + r) * ts + unit * 8 : base;
                cp_async_16(smem_addr(s_dyn + which * 8192 + r * 512 + unit * 16), src, ok ? 16u : 0u);
            }
        }
        cp_async_commit();
    } else {
        pf_load_element_tiles(p, q0, k0, g0, t0, col, rows, live, fq, fk, fg, PF256_DK, col);
    }
    if (p.v_stage != NULL) {
        /* the chain's bf16 copy of v: [16][vpad], zeros past V and past the sequence end */
        uint16_t *dst = (uint16_t *)p.v_stage + (h * p.slots + slot) * (int64_t)(PF_CHUNK * p.vpad);
        const int64_t vbase = row * p.v_s[0] + h * p.v_s[2];
        for (int vc = tid; vc < p.vpad; vc += P256_THREADS) {
#pragma unroll
            for (int r0 = 0; r0 < PF_CHUNK; r0 += 8) {
                float x[8];
                pf_load_8rows(p.v, p.qkv_dtype, vbase + t0 * p.v_s[1] + vc, p.v_s[1], r0, rows, vc < p.V, x);
#pragma unroll
                for (int i = 0; i < 8; i++) dst[(r0 + i) * p.vpad + vc] = pf_float_to_bf16(x[i]);
            }
        }
    }
    /* beta (threads 0-15), A_log and dt_bias: every load issued before any is converted, as in
     * prefill_prep.cu (one DRAM round trip, not three or four in a row). */
    uint32_t beta32, beta16, A32, A16, db32, db16;
    load_bits_pair_if(p.beta, p.beta_dtype, row * p.beta_s[0] + (t0 + tid) * p.beta_s[1] + h * p.beta_s[2], tid < rows,
                      &beta32, &beta16);
    load_bits_pair_if(p.A_log, p.A_log_dtype, h * p.A_log_s, p.A_log != NULL, &A32, &A16);
    load_bits_pair_if(p.dt_bias, p.dt_dtype, h * p.dt_s[0] + col * p.dt_s[1], p.dt_bias != NULL && live, &db32, &db16);
    hold_until_here(&beta32);
    hold_until_here(&beta16);
    hold_until_here(&A32);
    hold_until_here(&A16);
    hold_until_here(&db32);
    hold_until_here(&db16);
    if (tid < 16) {
        const float x = bits_to_float(beta32 | beta16, p.beta_dtype);
        s_b[tid] = tid < rows ? (p.beta_sigmoid ? pf_sigmoid(x) * (p.neg_eigval ? 2.0f : 1.0f) : x) : 0.0f;
    }
    const float A = p.A_log ? __expf(bits_to_float(A32 | A16, p.A_log_dtype)) : 1.0f;
    const float db = bits_to_float(db32 | db16, p.dt_dtype); /* 0 where not loaded */
    if (bulk) CP_ASYNC_WAIT(0);
    __syncthreads();

    /* 2. Row norms: 16 threads per row (a half warp), 16 keys each; thread `part` reads the 16-byte
     * units part, part + 16, ... so that each quarter warp's 16-byte reads cover 128 bytes. */
    {
        const int r = tid >> 4, part = tid & 15;
        float sq = 0.0f, sk = 0.0f;
        if (bulk) {
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const uint4 xq = *(const uint4 *)(s_dyn + IN_Q * 8192 + r * 512 + (part + 16 * e) * 16);
                const uint4 xk = *(const uint4 *)(s_dyn + IN_K * 8192 + r * 512 + (part + 16 * e) * 16);
                const uint32_t wq[4] = {xq.x, xq.y, xq.z, xq.w}, wk[4] = {xk.x, xk.y, xk.z, xk.w};
#pragma unroll
                for (int j = 0; j < 4; j++) {
                    const float a0 = __uint_as_float(wq[j] << 16), a1 = __uint_as_float(wq[j] & 0xffff0000u);
                    const float b0 = __uint_as_float(wk[j] << 16), b1 = __uint_as_float(wk[j] & 0xffff0000u);
                    sq += a0 * a0 + a1 * a1;
                    sk += b0 * b0 + b1 * b1;
                }
            }
        } else {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const float4 xq = *(const float4 *)(fq + r * PF256_DK + (part + 16 * e) * 4);
                const float4 xk = *(const float4 *)(fk + r * PF256_DK + (part + 16 * e) * 4);
                sq += xq.x * xq.x + xq.y * xq.y;
                sq += xq.z * xq.z + xq.w * xq.w;
                sk += xk.x * xk.x + xk.y * xk.y;
                sk += xk.z * xk.z + xk.w * xk.w;
            }
        }
#pragma unroll
        for (int m = 1; m < 16; m <<= 1) {
            sq += __shfl_xor_sync(0xffffffffu, sq, m);
            sk += __shfl_xor_sync(0xffffffffu, sk, m);
        }
        if (part == 0) {
            s_rq[r] = p.l2norm ? rsqrtf(sq + 1e-6f) : 1.0f;
            s_rk[r] = p.l2norm ? rsqrtf(sk + 1e-6f) : 1.0f;
        }
    }
    __syncthreads();

    /* 3. Thread `col` owns key channel col: its column of q, k, g into registers; the gate and the
     * cumsum over the chunk; normalised q and k. */
    float qn[16], kn[16], G[16];
    {
        float acc = 0.0f;
#pragma unroll
        for (int i = 0; i < 16; i++) {
            float xq, xk, xg;
            if (bulk) {
                xq = pf_bf16_to_float(((const uint16_t *)(s_dyn + IN_Q * 8192 + i * 512))[col]);
                xk = pf_bf16_to_float(((const uint16_t *)(s_dyn + IN_K * 8192 + i * 512))[col]);
                xg = pf_bf16_to_float(((const uint16_t *)(s_dyn + IN_G * 8192 + i * 512))[col]);
            } else {
                xq = fq[i * PF256_DK + col];
                xk = fk[i * PF256_DK + col];
                xg = fg[i * PF256_DK + col];
            }
            /* unchecked: the lower bound gate (the only one proven in range) */
            const float a = gate_checked ? prep_gate(&p, p.gate, xg, A, db) : p.gate_scale * pf_sigmoid(A * (xg + db));
            acc += i < rows && live ? a : 0.0f;
            G[i] = acc;
            qn[i] = xq * s_rq[i];
            kn[i] = xk * s_rk[i];
        }
    }
    /* Every thread has its column (s_dyn now takes the operands). Step 4 or 4' for this chunk. */
    float span = 0.0f;
#pragma unroll
    for (int i = 0; i < 16; i++) span = fmaxf(span, fabsf(G[i] - G[7]));
    const float span_max = p.l2norm ? PREP_SAFE_SPAN_NORM : PREP_SAFE_SPAN;
    /* NaN: pairwise too; exact_qk (small calls, prefill_select.c): every chunk */
    const int pairwise = gate_checked ? __syncthreads_or(p.exact_qk || !(span <= span_max)) : (__syncthreads(), 0);

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

    if (gate_checked && pairwise) {
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

/* The unchecked kernels keep 64 registers (4 CTAs, 32 warps per SM, as the K = 128 prep's 8 CTAs of
 * 4 warps); the checked ones hold step 4' beside step 4: 2 CTAs and 128 registers. */
#define P256_KERNEL(name, bulk, gate_checked, ctas)                               \
    __global__ void __launch_bounds__(P256_THREADS, ctas) name(const pf_params p) \
    {                                                                             \
        extern __shared__ __align__(128) unsigned char s_dyn[];                   \
        p256_chunk(p, bulk, gate_checked, s_dyn);                                 \
    }
P256_KERNEL(pf256_prep_bulk, 1, 0, 4)
P256_KERNEL(pf256_prep_bulk_checked, 1, 1, 2)
P256_KERNEL(pf256_prep_any, 0, 0, 4)
P256_KERNEL(pf256_prep_any_checked, 0, 1, 2)
#undef P256_KERNEL

cudaError_t pf256_launch_prep(const pf_params *p, cudaStream_t stream)
{
    const int64_t used_slots = p->cu ? p->slots : p->N * p->chunks_per_row;
    if (used_slots <= 0 || p->HV <= 0) return cudaSuccess;
    if (used_slots > INT32_MAX || p->HV > 65535) return cudaErrorInvalidConfiguration; /* grid limits */
    /* Only the lower bound gate with lower_bound >= -5 is in range for every input; exact_qk
     * asks for step 4', which only the checked kernels hold (as in pf_launch_prep). */
    const int checked = p->exact_qk ||
                        !(p->gate == FKDA_GATE_LOWER_BOUND && p->gate_scale >= -5.0f * 1.4426950408889634f);
    const int bulk = p->qkg_load == PF_LOAD_BF16;
    void (*kernel)(const pf_params) = bulk ? (checked ? pf256_prep_bulk_checked : pf256_prep_bulk)
                                           : (checked ? pf256_prep_any_checked : pf256_prep_any);
    const int smem = (bulk && !checked ? P256_UNITS_BULK : P256_UNITS) * 4096;
    cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (err != cudaSuccess) return err;
    dim3 grid((unsigned)used_slots, (unsigned)p->HV);
    void *args[] = {(void *)p};
    return fkda_launch_kernel((const void *)kernel, grid, dim3(P256_THREADS), args, smem,
                              stream); /* this launch's error only (prefill_common.cuh) */
}

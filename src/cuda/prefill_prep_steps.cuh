/*
 * prefill_prep_steps.cuh: the steps of the prep kernel (prefill_prep.cu) that are functions of their
 * own: the gate of one token and key channel, the layout of the fp32 input tiles, the pairwise
 * form of L and Mqk (step 4') for chunks whose gate leaves the centred factors' range, the
 * forward substitution (step 5) and -W (step 6, in fp32 or on tensor cores). The kernel body and
 * its launch stay in prefill_prep.cu.
 */
#ifndef FKDA_PREFILL_PREP_STEPS_CUH
#define FKDA_PREFILL_PREP_STEPS_CUH

#include "prefill_common.cuh"
#include "ptx_mma.cuh"

#define PREP_THREADS 128
/* The largest |G_i - Gref| (log2 units) the centred-exponent products take. With the L2 norm every
 * q and k entry is at most 1, so the factors k 2^(G - Gref) stay within 2^+-112, inside the normal
 * range of fp32 and bf16 (2^+-126): no factor overflows, and one that underflows is a key entry
 * below 2^-14 whose term is negligible. Without the norm the inputs' own size is unknown: 2^+-64
 * keeps 2^60 of room. The safe gate (lower bound >= -5) spans at most 8 * 5 * log2(e) = 58. */
#define PREP_SAFE_SPAN_NORM 112.0f
#define PREP_SAFE_SPAN 64.0f
#define PREP_LOG2E 1.4426950408889634f

static __device__ __forceinline__ void st_bf16(unsigned char *base, uint32_t off, float x)
{
    *(uint16_t *)(base + off) = pf_float_to_bf16(x);
}

/* A record operand in fp16 (rec16 != 0: an fp16 record, prefill_common.cuh) or bf16. */
static __device__ __forceinline__ void st_16(unsigned char *base, uint32_t off, float x, int rec16)
{
    *(uint16_t *)(base + off) = pf_float_to_16(x, rec16);
}

/* Whether one token's row keeps the fp16 record's operands in fp16's range (the fp16 family,
 * prefill_common.cuh). sq, sk: the squared norms of the raw q and k rows; mq, mk: their largest
 * |entry| (0: a zero row); rq, rk: the norm's factors; b: beta after the sigmoid. The rule and why
 * it is enough, for a chunk whose every row passes and whose gate steps are all <= 0 (so every
 * 2^(G_i - G_j), i >= j, and 2^G_i is <= 1):
 *   - q rows (times |scale|) and k rows of norm 0 or in [2^-6, 2^7]: |Qd|, |Kr| <= 2^7 and
 *     |Mqk| <= 2^14; the lower end keeps rows of normal size clear of fp16's subnormals (below
 *     2^-14), whose few bits would be a silent loss where bf16 keeps 8;
 *   - 0 <= b <= 4 and b |k|^2 <= 2 (2.01 for the rounding of a unit key's norm): each token's
 *     transition I - b k k^T has norm <= 1, so (I + L)^-1 diag(b), whose entries are b_i on the
 *     diagonal and -b_i k_i^T P k_j b_j below it with |P| <= 1, stays within 2 max b <= 8, and
 *     each row of W, b_i k_i^T P', within b |k| <= 3.
 * The L2 norm with the beta sigmoid meets it for any q, k, beta whose norms are not tiny; fla's
 * convention without the norm (unit keys, beta in [0, 1]) meets it too. A NaN fails every test. */
static __device__ __forceinline__ int prep_row_in_fp16(const pf_params *p, float sq, float sk, float mq, float mk,
                                                       float rq, float rk, float b)
{
    const float qrow = fabsf(p->scale) * sqrtf(sq) * rq, krow = sqrtf(sk) * rk;
    const int q_ok = mq == 0.0f || (qrow >= 0x1p-6f && qrow <= 0x1p7f);
    const int k_ok = mk == 0.0f || (krow >= 0x1p-6f && krow <= 0x1p7f);
    return q_ok && k_ok && b >= 0.0f && b <= 4.0f && b * krow * krow <= 2.01f;
}

/* Record slot -> (sequence, chunk). Without cu_seqlens it is a division; with it, a binary search
 * for the last sequence whose first slot (start / 16 + n, strictly increasing in n) is <= slot. */
static __device__ __forceinline__ int64_t prep_find_sequence(const pf_params *p, int64_t slot)
{
    if (p->cu == NULL) return slot / p->chunks_per_row;
    int64_t lo = 0, hi = p->N - 1;
    while (lo < hi) {
        int64_t mid = (lo + hi + 1) >> 1;
        int64_t a = p->cu_i64 ? ((const int64_t *)p->cu)[mid * p->cu_stride]
                              : (int64_t)((const int32_t *)p->cu)[mid * p->cu_stride];
        a = a < 0 ? 0 : (a > p->T ? p->T : a);
        if (a / PF_CHUNK + mid <= slot)
            lo = mid;
        else
            hi = mid - 1;
    }
    return lo;
}

/* One key channel's log decay for one token, in log2 units: the gate of docs/design.md
 * section 1 (FKDA_GATE_NONE: g is the log decay; the others add dt_bias first). */
static __device__ __forceinline__ float prep_gate(const pf_params *p, float g, float A, float db)
{
    float a;
    if (p->gate == FKDA_GATE_NONE) {
        a = g * PREP_LOG2E;
    } else {
        const float x = g + db;
        a = p->gate == FKDA_GATE_LOWER_BOUND ? p->gate_scale * pf_sigmoid(A * x)
                                             : -A * (x > 20.0f ? x : log1pf(__expf(x))) * PREP_LOG2E; /* softplus */
    }
    /* A decay below 2^-150 per token is 0 to every exp2 here (ex2.approx.ftz); clamping it keeps
     * the chunk's running sum finite (a finite g of -3e38 would reach -inf, and -inf - -inf is
     * NaN). A NaN stays NaN (the comparison is false). */
    return a < -150.0f ? -150.0f : a;
}

/* Step 4': L and Mqk from the fp32 tiles qn, kn, G ([16][128] each). The 136 entries i >= j are
 * numbered row by row (e = i (i + 1) / 2 + j): thread tid sums entry tid over all 128 keys
 * (prep_pair_sums), then the last 8 entries are shared out, 16 threads each taking 8 keys, lane l
 * starting at key (l mod 8) of its eight so that the lanes of a row read different banks. */
static __device__ __forceinline__ void prep_pair_entry(int e, int *i, int *j)
{
    int r = (int)((sqrtf(8.0f * (float)e + 1.0f) - 1.0f) * 0.5f);
    while ((r + 1) * (r + 2) / 2 <= e) r++;
    while (r * (r + 1) / 2 > e) r--;
    *i = r;
    *j = e - r * (r + 1) / 2;
}

/* Entry (i, j) of step 4' over dk keys (128 or 256, a constant where inlined): l = sum_c k_i[c]
 * kj[c] and m = sum_c q_i[c] kj[c], kj[c] = k_j[c] 2^(G_i[c] - G_j[c]), from the [16][dk] fp32
 * tiles. Four keys per 16-byte load, a quarter of the loads and their address arithmetic: many
 * CTAs share an SM here, so the loop costs its instructions more than its latency. Lane `lane`
 * starts at unit `lane`: the eight lanes of a quarter-warp read eight consecutive 16-byte units
 * of their rows, eight different bank groups whatever i and j are. */
static __device__ __forceinline__ void prep_pair_sums(const float *fq, const float *fk, const float *fg, int dk, int i,
                                                      int j, int lane, float *l_out, float *m_out)
{
    const float4 *const q4 = (const float4 *)(fq + i * dk), *const ki4 = (const float4 *)(fk + i * dk);
    const float4 *const kj4 = (const float4 *)(fk + j * dk);
    const float4 *const gi4 = (const float4 *)(fg + i * dk), *const gj4 = (const float4 *)(fg + j * dk);
    const int units = dk / 4;
    float l = 0.0f, m = 0.0f;
#pragma unroll 4
    for (int cu = 0; cu < units; cu++) {
        const int u = (cu + lane) & (units - 1);
        const float4 a = kj4[u], gi = gi4[u], gj = gj4[u], b = ki4[u], c = q4[u];
        float kj = a.x * pf_exp2(gi.x - gj.x);
        l += b.x * kj;
        m += c.x * kj;
        kj = a.y * pf_exp2(gi.y - gj.y);
        l += b.y * kj;
        m += c.y * kj;
        kj = a.z * pf_exp2(gi.z - gj.z);
        l += b.z * kj;
        m += c.z * kj;
        kj = a.w * pf_exp2(gi.w - gj.w);
        l += b.w * kj;
        m += c.w * kj;
    }
    *l_out = l;
    *m_out = m;
}

static __device__ __forceinline__ void prep_pair_store(float (*s_L)[17], const float *s_b, unsigned char *rec,
                                                       float scale, int i, int j, float l, float m, int rec16)
{
    s_L[i][j] = i > j ? s_b[i] * l : 0.0f;
    const float mq = scale * m;
    const uint16_t hi = pf_float_to_16(mq, rec16);
    *(uint16_t *)(rec + PF_REC_MQK + (i * 16 + j) * 2) = hi;
    st_16(rec + PF_REC_MQK_LO, (uint32_t)(i * 16 + j) * 2, mq - pf_16_to_float(hi, rec16), rec16);
}

static __device__ __forceinline__ void prep_pairwise(const float *fq, const float *fk, const float *fg,
                                                     float (*s_L)[17], const float *s_b, unsigned char *rec,
                                                     float scale, int rec16)
{
    const int tid = threadIdx.x, lane = tid & 31;
    /* the entries above the diagonal: zero */
    for (int e = tid; e < 256; e += PREP_THREADS) {
        const int i = e >> 4, j = e & 15;
        if (j > i) {
            s_L[i][j] = 0.0f;
            *(uint16_t *)(rec + PF_REC_MQK + e * 2) = 0;
            *(uint16_t *)(rec + PF_REC_MQK_LO + e * 2) = 0;
        }
    }
    int i, j;
    prep_pair_entry(tid, &i, &j);
    float l, m;
    prep_pair_sums(fq, fk, fg, 128, i, j, lane, &l, &m);
    prep_pair_store(s_L, s_b, rec, scale, i, j, l, m, rec16);
    /* entries 128 .. 135: 16 threads each, 8 keys per thread, summed over the 16 */
    prep_pair_entry(PREP_THREADS + (tid >> 4), &i, &j);
    l = 0.0f;
    m = 0.0f;
#pragma unroll
    for (int k = 0; k < 8; k++) {
        const int ch = (tid & 15) * 8 + ((k + lane) & 7);
        const float kj = fk[j * 128 + ch] * pf_exp2(fg[i * 128 + ch] - fg[j * 128 + ch]);
        l += fk[i * 128 + ch] * kj;
        m += fq[i * 128 + ch] * kj;
    }
#pragma unroll
    for (int o = 8; o > 0; o >>= 1) {
        l += __shfl_xor_sync(0xffffffffu, l, o);
        m += __shfl_xor_sync(0xffffffffu, m, o);
    }
    if ((tid & 15) == 0) prep_pair_store(s_L, s_b, rec, scale, i, j, l, m, rec16);
}

/* Step 5: INV = (I + L)^-1 by fp32 forward substitution on warp 0 (lane cc owns column cc), then
 * bINV = INV diag(b) into s_binv and the record as hi + lo terms; rec16: an fp16 record. */
static __device__ __forceinline__ void prep_inverse(float (*s_L)[17], float (*s_binv)[16], const float *s_b,
                                                    unsigned char *rec, int warp, int lane, int rec16)
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
                const uint16_t hi = pf_float_to_16(x, rec16);
                s_binv[i][cc] = x;
                *(uint16_t *)(rec + PF_REC_BINV + (i * 16 + cc) * 2) = hi;
                st_16(rec + PF_REC_BINV_LO, (uint32_t)(i * 16 + cc) * 2, x - pf_16_to_float(hi, rec16), rec16);
            }
        }
    }
}

/* Row i of W = bINV Kd for one key channel, in fp32 (bINV is lower triangular including the
 * diagonal): bINV's 16-byte aligned rows read four entries at a time, the products summed in key
 * order. The K = 128 and K = 256 preps' step 6. */
static __device__ __forceinline__ float prep_w_row(const float (*s_binv)[16], const float kd[16], int i)
{
    float w = 0.0f;
#pragma unroll
    for (int j4 = 0; j4 <= i; j4 += 4) {
        const float4 b4 = *(const float4 *)&s_binv[i][j4];
        const float bb[4] = {b4.x, b4.y, b4.z, b4.w};
#pragma unroll
        for (int e = 0; e < 4; e++)
            if (j4 + e <= i) w += bb[e] * kd[j4 + e];
    }
    return w;
}

/* Steps 5 and 6 for the checked kernels: bINV, then W = bINV Kd in fp32 by thread `col`, stored
 * negated. */
static __device__ __forceinline__ void prep_finish(float (*s_L)[17], float (*s_binv)[16], const float *s_b,
                                                   const float kd[16], unsigned char *rec, int col, int warp, int lane,
                                                   int rec16)
{
    prep_inverse(s_L, s_binv, s_b, rec, warp, lane, rec16);
    __syncthreads();
#pragma unroll
    for (int i = 0; i < 16; i++) st_16(rec + PF_REC_NEGW, pf_swz(i, col), -prep_w_row(s_binv, kd, i), rec16);
}

/* Step 6 for the fp16 family's unchecked kernels, on tensor cores: W = bINV Kd = (bINV kc) diag(2^Gref), kc the
 * centred keys already in shared memory for step 4 (kc[i][c] = Kd[i][c] 2^-Gref_c; the safe gate
 * keeps 2^Gref_c >= 2^-58, so the column factor is exact to fp32's rounding, which a checked gate's
 * 2^Gref below fp32's range would not be: those kernels keep prep_finish). Warp w forms the 16 x 32
 * block of keys 32w..32w+31 as bINV_hi kc_hi + bINV_hi kc_lo + bINV_lo kc_hi (bf16 pairs, fp32
 * accumulation: about 2^-16 relative, below the record's bf16 / fp16 rounding), so the 136 FMAs and
 * shared reads per thread of the fp32 form become 12 mma.sync per warp; its output fragment holds
 * (row g or g + 8, keys 2t and 2t + 1 of each 8-key tile), stored as one 4-byte pair. The factor
 * 2^Gref of key c is lane (c mod 32)'s e_ref: the block's keys are the warp's own key channels.
 * Why the fp16 family only: there kc's lo term is already in shared memory for the L product, and
 * kd's 16 registers no longer live through steps 4 and 5 took pf_prep16_tiles from 172 to 20 bytes
 * of spills (0.247 -> 0.237 ms at T = 8192, H = 32); the bf16 kernels would have to write kc's lo
 * term for it (a sixth 4 KB unit and four instructions a row), which cost what it saved
 * (pf_prep_bulk 0.556 -> 0.562 ms at H = 96, H200). */
static __device__ __forceinline__ void prep_negw_mma(const float (*s_binv)[16], const unsigned char *kc_hi,
                                                     const unsigned char *kc_lo, float e_ref, unsigned char *rec,
                                                     int warp, int lane, int rec16)
{
    const int g = lane >> 2, t = lane & 3;
    /* A = bINV in the m16n8k16 fragment: register r holds row g + 8 (r & 1), columns 2t + 8 (r >> 1)
     * and + 1 (s_binv's rows are 16-byte aligned, so each pair is one 8-byte read) */
    uint32_t ahi[4], alo[4];
#pragma unroll
    for (int r = 0; r < 4; r++) {
        const float2 x = *(const float2 *)&s_binv[g + 8 * (r & 1)][2 * t + 8 * (r >> 1)];
        const uint32_t h = pack_bf16x2(x.x, x.y);
        ahi[r] = h;
        alo[r] = pack_bf16x2(x.x - __uint_as_float(h << 16), x.y - __uint_as_float(h & 0xffff0000u));
    }
    float acc[4][4];
#pragma unroll
    for (int n = 0; n < 4; n++)
#pragma unroll
        for (int e = 0; e < 4; e++) acc[n][e] = 0.0f;
#pragma unroll
    for (int half = 0; half < 2; half++) {
        /* B = kc[token][key] transposed: matrices (tokens 0-7 | 8-15) x (unit u | u + 1) */
        const uint32_t off = pf_swz_unit((lane & 7) + 8 * ((lane >> 3) & 1), 4 * warp + 2 * half + (lane >> 4));
        uint32_t bh[4], bl[4];
        ldsm_x4_trans(bh, smem_addr(kc_hi + off));
        ldsm_x4_trans(bl, smem_addr(kc_lo + off));
#pragma unroll
        for (int n = 0; n < 2; n++) {
            float *d = acc[2 * half + n];
            mma_bf16_16816(d, ahi, bh[2 * n], bh[2 * n + 1], d);
            mma_bf16_16816(d, ahi, bl[2 * n], bl[2 * n + 1], d);
            mma_bf16_16816(d, alo, bh[2 * n], bh[2 * n + 1], d);
        }
    }
#pragma unroll
    for (int n = 0; n < 4; n++) {
        const int c = 32 * warp + 8 * n + 2 * t;
        const float e0 = __shfl_sync(0xffffffffu, e_ref, (c & 31)), e1 = __shfl_sync(0xffffffffu, e_ref, (c & 31) + 1);
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const float w0 = -(acc[n][2 * h] * e0), w1 = -(acc[n][2 * h + 1] * e1);
            *(uint32_t *)(rec + PF_REC_NEGW + pf_swz(g + 8 * h, c)) = rec16 ? pack_f16x2(w0, w1) : pack_bf16x2(w0, w1);
        }
    }
}

/* The fp32 input tiles of prefill_prep.cu's tile and element forms, [16][128]: key c of a row sits
 * at float c ^ ((c >> 3) & 12) of it, i.e. 16-byte unit u at u ^ ((u >> 3) & 3). The permutation
 * keeps each aligned group of 8 units (32 keys) together, so a warp reading one key per lane along
 * a row still covers 32 banks; and it spreads the units 4 part + e (e fixed) that 8 threads of
 * the norms read, 16 keys apart, over 8 different bank groups (unpermuted: 2, a 4-way conflict
 * for a 16-byte read, 16-way for the 4-byte reads this replaces). */
static __device__ __forceinline__ int prep_f32_col(int c) { return c ^ ((c >> 3) & 12); }

#endif /* FKDA_PREFILL_PREP_STEPS_CUH */

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

/* The bf16 lo terms of a pair (x0, x1) whose hi terms are the bf16 pair `hi` (x0's in the low half):
 * x - hi, rounded again, so that hi + lo carries ~16 significant bits. */
static __device__ __forceinline__ uint32_t prep_lo_bf16x2(float x0, float x1, uint32_t hi)
{
    return pack_bf16x2(x0 - __uint_as_float(hi << 16), x1 - __uint_as_float(hi & 0xffff0000u));
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

/* Record slot -> sequence. Without cu_seqlens it is a division. With them, sequence n's chunks
 * start at slot first(n) = clamp(cu[n]) / 16 + n, strictly increasing in n, and the slot's
 * sequence is the last n < N with first(n) <= slot (0 if none): the number of such n, less one.
 * The CTA counts them together, thread i testing n = i, i + blockDim, ..., and __syncthreads_count
 * summing the tests of each pass: one memory round trip for N <= blockDim, where a binary search
 * made ceil(log2 N) dependent ones before the chunk's first load could issue. Every thread of the
 * CTA calls it (block barriers), and gets the same n. */
static __device__ __forceinline__ int64_t prep_find_sequence(const pf_params *p, int64_t slot)
{
    if (p->cu == NULL) return slot / p->chunks_per_row;
    int64_t count = 0;
    for (int64_t base = 0; base < p->N; base += blockDim.x) { /* the same passes in every thread */
        const int64_t n = base + threadIdx.x;
        int64_t a = 0;
        if (n < p->N)
            a = p->cu_i64 ? ((const int64_t *)p->cu)[n * p->cu_stride]
                          : (int64_t)((const int32_t *)p->cu)[n * p->cu_stride];
        a = a < 0 ? 0 : (a > p->T ? p->T : a);
        count += __syncthreads_count(n < p->N && a / PF_CHUNK + n <= slot);
    }
    return count > 0 ? count - 1 : 0;
}

/* One key channel's log decay for one token, in log2 units: the gate of docs/design.md
 * section 1 (FKDA_GATE_NONE: g is the log decay; the others add dt_bias first). `gate` is
 * p->gate, passed apart so that a caller can give it as a constant, which drops the branches. */
static __device__ __forceinline__ float prep_gate(const pf_params *p, int gate, float g, float A, float db)
{
    float a;
    if (gate == FKDA_GATE_NONE) {
        a = g * PREP_LOG2E;
    } else {
        const float x = g + db;
        a = gate == FKDA_GATE_LOWER_BOUND ? p->gate_scale * pf_sigmoid(A * x)
                                          : -A * (x > 20.0f ? x : log1pf(__expf(x))) * PREP_LOG2E; /* softplus */
    }
    /* A decay below 2^-150 per token is 0 to every exp2 here (ex2.approx.ftz), a growth above 2^150
     * is inf to every one; clamping both keeps the chunk's running sums finite (a finite g of -3e38
     * would reach -inf, and -inf - -inf is NaN; the K <= 128 prep also subtracts the first half's
     * total from the first half's sums). A NaN stays NaN (the comparisons are false). */
    return a < -150.0f ? -150.0f : (a > 150.0f ? 150.0f : a);
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

/* One 16-byte unit u (keys 4u .. 4u + 3) of entry (i, j)'s sums in step 4': l += k_i[c] kj[c] and
 * m += q_i[c] kj[c], kj[c] = k_j[c] 2^(G_i[c] - G_j[c]), from rows of the fp32 tiles as float4s. */
static __device__ __forceinline__ void prep_pair_unit(const float4 *q4, const float4 *ki4, const float4 *kj4,
                                                      const float4 *gi4, const float4 *gj4, int u, float *l, float *m)
{
    const float4 a = kj4[u], gi = gi4[u], gj = gj4[u], b = ki4[u], c = q4[u];
    float kj = a.x * pf_exp2(gi.x - gj.x);
    *l += b.x * kj;
    *m += c.x * kj;
    kj = a.y * pf_exp2(gi.y - gj.y);
    *l += b.y * kj;
    *m += c.y * kj;
    kj = a.z * pf_exp2(gi.z - gj.z);
    *l += b.z * kj;
    *m += c.z * kj;
    kj = a.w * pf_exp2(gi.w - gj.w);
    *l += b.w * kj;
    *m += c.w * kj;
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
    for (int cu = 0; cu < units; cu++) prep_pair_unit(q4, ki4, kj4, gi4, gj4, (cu + lane) & (units - 1), &l, &m);
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

/* Step 4''s entries above the diagonal: zero, in L and in the record's Mqk. */
static __device__ __forceinline__ void prep_pair_zero_upper(float (*s_L)[17], unsigned char *rec)
{
    for (int e = threadIdx.x; e < 256; e += PREP_THREADS) {
        const int i = e >> 4, j = e & 15;
        if (j > i) {
            s_L[i][j] = 0.0f;
            *(uint16_t *)(rec + PF_REC_MQK + e * 2) = 0;
            *(uint16_t *)(rec + PF_REC_MQK_LO + e * 2) = 0;
        }
    }
}

static __device__ __forceinline__ void prep_pairwise(const float *fq, const float *fk, const float *fg,
                                                     float (*s_L)[17], const float *s_b, unsigned char *rec,
                                                     float scale, int rec16)
{
    const int tid = threadIdx.x, lane = tid & 31;
    prep_pair_zero_upper(s_L, rec);
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

/* Whether step 4' nested's premise fails in a thread's columns: the G tile (G_7 + D) rising
 * from a row to the next, read off D of its 8 rows and 2 keys (prefill_prep.cu, step 3's end): a
 * D above the one of the row before, or in the second half (hf) its first row's above 0 (row 7's
 * D), a NaN counting as a rise. fp32 rounding is monotone, so where D never rises neither does
 * the tile, and every factor a level forms is at most 1; every chunk whose gate never grows
 * passes. */
static __device__ __forceinline__ int prep_rows_rise(const float D[16], int hf)
{
    int out = 0;
#pragma unroll
    for (int h = 0; h < 2; h++) {
        out |= hf && !(D[h] <= 0.0f);
#pragma unroll
        for (int i = 0; i < 7; i++) out |= !(D[2 * (i + 1) + h] <= D[2 * i + h]);
    }
    return out;
}

/* Step 4' nested, for a checked chunk whose G never rises from a row to the next in any key
 * channel (prep_rows_rise: every chunk whose gate never grows, so every chunk of the lower-bound
 * and softplus gates): every entry i > j of L and Mqk goes on tensor cores, through the highest
 * bit in which i and j differ. With
 * s that bit (8, 4, 2 or 1), i and j share the block b of 2 s rows (b = i / 2s = j / 2s), j lies
 * in its first half and i in its second, and the exponent splits at that half's last row z = 2 s b
 * + s - 1:
 *   2^(G_i - G_j) = 2^(G_i - G_z) 2^(G_z - G_j),   j <= z < i,
 * where both factors are at most 1 (G_i <= G_z <= G_j), so neither overflows, and one that
 * underflows to 0 stands for a term below 2^-126 |k_i| |k_j| of the true one (the other factor is
 * at most 1). So each level s is one product of the same shape for every s: A's rows kc = k_x
 * 2^(G_x - G_z) (and qc for q) on the 8 rows x of the blocks' second halves, B's columns ki = k_y
 * 2^(G_z - G_y) on the 8 rows y of their first halves, lane row g standing for x = 2 s b + s + w
 * and y = 2 s b + w (b = g / s, w = g mod s); of its 8 x 8 outputs the entries with both rows in
 * one block (g / s = g' / s) are L's and Mqk's, the others are products across blocks, dropped.
 * Each entry i > j is one level's, in one lane, once. The diagonal (Mqk_ii = q_i k_i; L's is 0)
 * has no exponent at all (prep_pair_self). Warp w takes level 8 >> w, warp 3 the diagonal too,
 * so the step is the 4 warps' tensor-core products and one exp2 per operand, where summing
 * entries one by one took an exp2 per key of each of them.
 * A G that rises anywhere in the chunk could put G_z outside [G_i, G_j] and a factor above 1
 * (overflow, or a term dropped that the other factor would have raised back): such chunks keep
 * prep_pairwise.
 * The operands for the four keys of 16-byte unit u of lane row g at level s, as prep_pair_level
 * and prep_pair_level16 read them. */
static __device__ __forceinline__ void prep_level_operands(const float *fq, const float *fk, const float *fg, int x,
                                                           int y, int z, int u, float kc[4], float qc[4], float ki[4])
{
    const float4 xk4 = ((const float4 *)(fk + x * 128))[u], xq4 = ((const float4 *)(fq + x * 128))[u];
    const float4 xg4 = ((const float4 *)(fg + x * 128))[u], zg4 = ((const float4 *)(fg + z * 128))[u];
    const float4 yk4 = ((const float4 *)(fk + y * 128))[u], yg4 = ((const float4 *)(fg + y * 128))[u];
    const float xk[4] = {xk4.x, xk4.y, xk4.z, xk4.w}, xq[4] = {xq4.x, xq4.y, xq4.z, xq4.w};
    const float xg[4] = {xg4.x, xg4.y, xg4.z, xg4.w}, zg[4] = {zg4.x, zg4.y, zg4.z, zg4.w};
    const float yk[4] = {yk4.x, yk4.y, yk4.z, yk4.w}, yg[4] = {yg4.x, yg4.y, yg4.z, yg4.w};
#pragma unroll
    for (int c = 0; c < 4; c++) {
        const float fa = pf_exp2(xg[c] - zg[c]), fb = pf_exp2(zg[c] - yg[c]);
        kc[c] = xk[c] * fa;
        qc[c] = xq[c] * fa;
        ki[c] = yk[c] * fb;
    }
}

/* Lane row g's rows at level s (a power of two, 1 to 8): x in the second half of block b = g / s,
 * y in its first, z the first half's last row; with hb = s b (g's bits above s) and w = g mod s,
 * x = 2 hb + s + w = g + hb + s and y = g + hb, by bit operations (s is the warp's, known only
 * at run time, where a division is a long sequence). */
static __device__ __forceinline__ void prep_level_rows(int s, int g, int *x, int *y, int *z)
{
    const int hb = g & ~(s - 1);
    *x = g + hb + s;
    *y = g + hb;
    *z = 2 * hb + s - 1;
}

/* The lane's outputs at level s: L and Mqk at (x, y(2t + c)) for c = 0, 1 (x the lane row's A row),
 * kept where both lane rows lie in one block. */
static __device__ __forceinline__ void prep_level_store(float (*s_L)[17], const float *s_b, unsigned char *rec,
                                                        float scale, int s, int x, int g, int t, const float l[2],
                                                        const float m[2], int rec16)
{
#pragma unroll
    for (int c = 0; c < 2; c++) {
        const int gc = 2 * t + c;
        if ((g ^ gc) < s) { /* g / s == gc / s, s a power of two */
            int xc, y, z;
            prep_level_rows(s, gc, &xc, &y, &z);
            prep_pair_store(s_L, s_b, rec, scale, x, y, l[c], m[c], rec16);
        }
    }
}

/* prep_pair_level, one warp: level s of step 4' nested as one m16n8k8 tf32 tile over 16 k-steps: A's
 * rows 0-7 are kc's (rows x), its rows 8-15 qc's, B = ki^T (rows y); accumulator c0, c1 are L's,
 * c2, c3 Mqk's. tf32, as step 4 has in every unchecked chunk of the bf16 family. The operands
 * are formed from the fp32 tiles as the k-steps need them: lane (g, t) takes the 16-byte units u
 * = 4 s' + t (s' = 0..7) of its rows, k-step 2 s' + h putting key 4u + 2h in slot t and 4u + 2h + 1
 * in slot t + 4: a key's A and B values come from the same lane, and every key is in one slot of
 * one k-step. Lanes of one t read one unit of 8 rows 512 bytes apart, so a quarter-warp's loads
 * meet in pairs (two-way bank conflicts; a shared z row is one address, a broadcast). */
static __device__ __forceinline__ void prep_pair_level(const float *fq, const float *fk, const float *fg,
                                                       float (*s_L)[17], const float *s_b, unsigned char *rec,
                                                       float scale, int s, int lane)
{
    const int g = lane >> 2, t = lane & 3;
    int x, y, z;
    prep_level_rows(s, g, &x, &y, &z);
    float acc[2][4]; /* even and odd k-steps: two chains of 8 */
#pragma unroll
    for (int h = 0; h < 2; h++)
#pragma unroll
        for (int e = 0; e < 4; e++) acc[h][e] = 0.0f;
#pragma unroll 2
    for (int ks = 0; ks < 8; ks++) {
        float kc[4], qc[4], ki[4];
        prep_level_operands(fq, fk, fg, x, y, z, 4 * ks + t, kc, qc, ki);
#pragma unroll
        for (int h = 0; h < 2; h++) {
            uint32_t a[4], b[2];
#pragma unroll
            for (int c = 0; c < 2; c++) { /* slot t + 4 c: key 4u + 2h + c */
                const int e = 2 * h + c;
                a[2 * c] = tf32_operand(kc[e]);     /* row g: kc of row x */
                a[2 * c + 1] = tf32_operand(qc[e]); /* row g + 8: qc of row x */
                b[c] = tf32_operand(ki[e]);         /* column g: ki of row y */
            }
            mma_tf32_1688(acc[h], a, b[0], b[1], acc[h]);
        }
    }
    const float l[2] = {acc[0][0] + acc[1][0], acc[0][1] + acc[1][1]};
    const float m[2] = {acc[0][2] + acc[1][2], acc[0][3] + acc[1][3]};
    prep_level_store(s_L, s_b, rec, scale, s, x, g, t, l, m, 0);
}

/* prep_pair_level16: the same level for the fp16 family, whose chain needs L and Mqk at about 16
 * bits (its step 4's hi*hi + hi*lo + lo*hi on bf16 terms): one m16n8k16 bf16 tile over 8 k-steps,
 * three products a k-step in three accumulators (chains 8 deep). A's registers: row g (kc of row
 * x) and row g + 8 (qc) at k-slots 2t, 2t + 1 and 2t + 8, 2t + 9; B's: k-slots 2t, 2t + 1 and 2t
 * + 8, 2t + 9 at column g (ki of row y). Lane (g, t) takes unit u = t + 4 ks in k-step ks, keys 4u,
 * 4u + 1 in slots 2t, 2t + 1 and 4u + 2, 4u + 3 in 2t + 8, 2t + 9: again a key's A and B values
 * from one lane, every key once. The record's Mqk in the chunk's format (rec16). */
static __device__ __forceinline__ void prep_pair_level16(const float *fq, const float *fk, const float *fg,
                                                         float (*s_L)[17], const float *s_b, unsigned char *rec,
                                                         float scale, int s, int lane, int rec16)
{
    const int g = lane >> 2, t = lane & 3;
    int x, y, z;
    prep_level_rows(s, g, &x, &y, &z);
    float acc[3][4]; /* hi*hi, hi*lo, lo*hi */
#pragma unroll
    for (int m = 0; m < 3; m++)
#pragma unroll
        for (int e = 0; e < 4; e++) acc[m][e] = 0.0f;
#pragma unroll 2
    for (int ks = 0; ks < 8; ks++) {
        float kc[4], qc[4], ki[4];
        prep_level_operands(fq, fk, fg, x, y, z, t + 4 * ks, kc, qc, ki);
        /* A: row g keys 4u, 4u + 1 | row g + 8 the same | row g keys 4u + 2, 4u + 3 | row g + 8 */
        const uint32_t ah[4] = {pack_bf16x2(kc[0], kc[1]), pack_bf16x2(qc[0], qc[1]), pack_bf16x2(kc[2], kc[3]),
                                pack_bf16x2(qc[2], qc[3])};
        const uint32_t al[4] = {prep_lo_bf16x2(kc[0], kc[1], ah[0]), prep_lo_bf16x2(qc[0], qc[1], ah[1]),
                                prep_lo_bf16x2(kc[2], kc[3], ah[2]), prep_lo_bf16x2(qc[2], qc[3], ah[3])};
        const uint32_t bh0 = pack_bf16x2(ki[0], ki[1]), bh1 = pack_bf16x2(ki[2], ki[3]);
        const uint32_t bl0 = prep_lo_bf16x2(ki[0], ki[1], bh0), bl1 = prep_lo_bf16x2(ki[2], ki[3], bh1);
        mma_bf16_16816(acc[0], ah, bh0, bh1, acc[0]);
        mma_bf16_16816(acc[1], ah, bl0, bl1, acc[1]);
        mma_bf16_16816(acc[2], al, bh0, bh1, acc[2]);
    }
    const float l[2] = {acc[0][0] + (acc[1][0] + acc[2][0]), acc[0][1] + (acc[1][1] + acc[2][1])};
    const float m[2] = {acc[0][2] + (acc[1][2] + acc[2][2]), acc[0][3] + (acc[1][3] + acc[2][3])};
    prep_level_store(s_L, s_b, rec, scale, s, x, g, t, l, m, rec16);
}

/* prep_pair_self, one warp: step 4' nested's diagonal, Mqk_ii = q_i k_i in fp32 (L_ii = 0), two
 * lanes a row (64 keys each, summed by one shuffle); lane pair i starts at unit i + 4 half of its
 * half, so that a quarter-warp's eight lanes (four rows, both halves) read eight bank groups. */
static __device__ __forceinline__ void prep_pair_self(const float *fq, const float *fk, float (*s_L)[17],
                                                      const float *s_b, unsigned char *rec, float scale, int lane,
                                                      int rec16)
{
    const int i = lane >> 1, half = lane & 1;
    const float4 *const q4 = (const float4 *)(fq + i * 128), *const k4 = (const float4 *)(fk + i * 128);
    float m = 0.0f;
#pragma unroll 4
    for (int v = 0; v < 16; v++) {
        const int u = 16 * half + ((v + i + 4 * half) & 15);
        const float4 a = q4[u], b = k4[u];
        m += a.x * b.x;
        m += a.y * b.y;
        m += a.z * b.z;
        m += a.w * b.w;
    }
    m += __shfl_xor_sync(0xffffffffu, m, 1);
    if (!half) prep_pair_store(s_L, s_b, rec, scale, i, i, 0.0f, m, rec16);
}

/* Column cc of (I + L)^-1 (L strictly lower, 16 x 16) by fp32 forward substitution: row i is
 * e_cc[i] - sum_{j < i} L[i][j] inv[j], summed as two interleaved partial sums so that
 * consecutive products do not wait on each other. Shared by both record layouts' step 5. */
static __device__ __forceinline__ void prep_inverse_column(float (*s_L)[17], int cc, float inv[16])
{
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
}

/* Step 5: INV = (I + L)^-1 by fp32 forward substitution on warp 0 (lane cc owns column cc), then
 * bINV = INV diag(b) into s_binv and the record as hi + lo terms; rec16: an fp16 record. */
static __device__ __forceinline__ void prep_inverse(float (*s_L)[17], float (*s_binv)[16], const float *s_b,
                                                    unsigned char *rec, int warp, int lane, int rec16)
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
 * order. The K = 256 prep's step 6 (the K = 128 prep's fp32 form, on channel pairs, is
 * prep_negw_half). */
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

/* Two fp32 values as one 4-byte pair of record operands, fp16 (rec16) or bf16: `lo` at the lower
 * address. */
static __device__ __forceinline__ uint32_t pack_16x2(float lo, float hi, int rec16)
{
    return rec16 ? pack_f16x2(lo, hi) : pack_bf16x2(lo, hi);
}

/* Step 6 for one half of the chunk's rows (upper: a constant where inlined, rows 8 upper .. + 7) and
 * the thread's two key channels, in fp32: -W[r][c0 + h] = -sum_{j <= r} bINV[r][j] Kd[j][c0 + h],
 * Kd of rows 0..7 from s_kd in the second half. */
static __device__ __forceinline__ void prep_negw_half(const float (*s_binv)[16], const float *s_kd, const float kd[16],
                                                      unsigned char *rec, int c0, int upper, int rec16)
{
    float k16[32]; /* Kd of rows 0..15 (entry 2 j + h), the rows this half reads */
#pragma unroll
    for (int j = 0; j < 8; j++) {
        if (upper) {
            const float2 x = *(const float2 *)(s_kd + j * 128 + c0);
            k16[2 * j] = x.x;
            k16[2 * j + 1] = x.y;
        }
        k16[2 * (8 * upper + j)] = kd[2 * j];
        k16[2 * (8 * upper + j) + 1] = kd[2 * j + 1];
    }
#pragma unroll
    for (int i = 0; i < 8; i++) {
        const int r = 8 * upper + i;
        float w0 = 0.0f, w1 = 0.0f;
#pragma unroll
        for (int j4 = 0; j4 <= r; j4 += 4) {
            const float4 b4 = *(const float4 *)&s_binv[r][j4];
            const float bb[4] = {b4.x, b4.y, b4.z, b4.w};
#pragma unroll
            for (int e = 0; e < 4; e++)
                if (j4 + e <= r) {
                    w0 += bb[e] * k16[2 * (j4 + e)];
                    w1 += bb[e] * k16[2 * (j4 + e) + 1];
                }
        }
        *(uint32_t *)(rec + PF_REC_NEGW + pf_swz(r, c0)) = pack_16x2(-w0, -w1, rec16);
    }
}

/* Steps 5 and 6 for the K = 128 prep's checked bf16-family kernels on a chunk that took step 4
 * (its exponents' span in range; their step-4' chunks, and every checked chunk of the fp16
 * family, take prep_finish_tc): bINV, then W = bINV Kd in fp32 on the
 * CUDA cores, stored negated. The thread owns key channels c0 and c0 + 1 over rows 8 hf .. 8 hf + 7
 * (prefill_prep.cu, step 3; kd[2 i + h] is Kd of row 8 hf + i, channel c0 + h); row r of W needs
 * Kd of rows 0..r, so the first half's Kd crosses to the second half through s_kd ([8][128] fp32,
 * a dead 4 KB unit of s_buf), written here before the barrier that step 6 waits on anyway (warp
 * 0's inverse). Each row's products are summed in key order, bINV's 16-byte aligned rows read four
 * entries at a time; the pair of channels is one 4-byte store. */
static __device__ __forceinline__ void prep_finish(float (*s_L)[17], float (*s_binv)[16], const float *s_b,
                                                   const float kd[16], float *s_kd, unsigned char *rec, int hf, int c0,
                                                   int warp, int lane, int rec16)
{
    if (hf == 0) {
#pragma unroll
        for (int i = 0; i < 8; i++) *(float2 *)(s_kd + i * 128 + c0) = make_float2(kd[2 * i], kd[2 * i + 1]);
    }
    prep_inverse(s_L, s_binv, s_b, rec, warp, lane, rec16);
    __syncthreads();
    if (hf == 0)
        prep_negw_half(s_binv, s_kd, kd, rec, c0, 0, rec16);
    else
        prep_negw_half(s_binv, s_kd, kd, rec, c0, 1, rec16);
}

/* Step 6 for the fp16 family's unchecked kernels, on tensor cores: W = bINV Kd = (bINV kc) diag(2^Gref), kc the
 * centred keys already in shared memory for step 4 (kc[i][c] = Kd[i][c] 2^-Gref_c; the safe gate
 * keeps 2^Gref_c >= 2^-58, so the column factor is exact to fp32's rounding, which a checked gate's
 * 2^Gref below fp32's range would not be: those take Kd itself, prep_finish_tc). Each warp forms a 16 x 32
 * block of keys as bINV_hi kc_hi + bINV_hi kc_lo + bINV_lo kc_hi (bf16 pairs, fp32
 * accumulation: about 2^-16 relative, below the record's bf16 / fp16 rounding), so the 136 FMAs and
 * shared reads per thread of the fp32 form become 12 mma.sync per warp; its output fragment holds
 * (row g or g + 8, keys 2t and 2t + 1 of each 8-key tile), stored as one 4-byte pair. The factor
 * 2^Gref of key c is held by the warp's lane (c mod 64) / 2 (prefill_prep.cu, step 3): each warp
 * takes a block of keys among its own lanes' channels.
 * Why hi + lo pairs here and tf32 in the bf16 family (prep_negw_tf32): the fp16 family has kc's hi
 * and lo terms in shared memory already for its L product, which shares ki's terms with Mqk, whose
 * operands its 11-bit chain needs at ~16 bits. scaled = 0 (a constant where inlined): the tiles
 * hold Kd's own terms and no factor is applied (the checked kernels, prep_finish_tc). */
static __device__ __forceinline__ void prep_negw_mma(const float (*s_binv)[16], const unsigned char *kc_hi,
                                                     const unsigned char *kc_lo, const float e_ref[2],
                                                     unsigned char *rec, int warp, int lane, int rec16, int scaled)
{
    /* the warp's 32 keys: warps 0 and 2 hold channels 0-63 (lane l: 2l, 2l + 1), warps 1 and 3
     * channels 64-127 */
    const int blk = 2 * (warp & 1) + (warp >> 1);
    const int g = lane >> 2, t = lane & 3;
    /* A = bINV in the m16n8k16 fragment: register r holds row g + 8 (r & 1), columns 2t + 8 (r >> 1)
     * and + 1 (s_binv's rows are 16-byte aligned, so each pair is one 8-byte read) */
    uint32_t ahi[4], alo[4];
#pragma unroll
    for (int r = 0; r < 4; r++) {
        const float2 x = *(const float2 *)&s_binv[g + 8 * (r & 1)][2 * t + 8 * (r >> 1)];
        ahi[r] = pack_bf16x2(x.x, x.y);
        alo[r] = prep_lo_bf16x2(x.x, x.y, ahi[r]);
    }
    float acc[4][4];
#pragma unroll
    for (int n = 0; n < 4; n++)
#pragma unroll
        for (int e = 0; e < 4; e++) acc[n][e] = 0.0f;
#pragma unroll
    for (int half = 0; half < 2; half++) {
        /* B = kc[token][key] transposed: matrices (tokens 0-7 | 8-15) x (unit u | u + 1) */
        const uint32_t off = pf_swz_unit((lane & 7) + 8 * ((lane >> 3) & 1), 4 * blk + 2 * half + (lane >> 4));
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
        const int c = 32 * blk + 8 * n + 2 * t; /* even: keys c and c + 1 are lane (c mod 64) / 2's pair */
        const float e0 = scaled ? __shfl_sync(0xffffffffu, e_ref[0], (c & 63) >> 1) : 1.0f;
        const float e1 = scaled ? __shfl_sync(0xffffffffu, e_ref[1], (c & 63) >> 1) : 1.0f;
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const float w0 = scaled ? -(acc[n][2 * h] * e0) : -acc[n][2 * h];
            const float w1 = scaled ? -(acc[n][2 * h + 1] * e1) : -acc[n][2 * h + 1];
            *(uint32_t *)(rec + PF_REC_NEGW + pf_swz(g + 8 * h, c)) = pack_16x2(w0, w1, rec16);
        }
    }
}

/* Byte offset of element (row, col) of a [16][128] fp32 tile of two s_buf units (512-byte rows),
 * swizzled like pf_swz: the 16-byte unit j of row r sits at j ^ (r & 7), so that ldmatrix's 8 rows
 * of one unit hit 8 different bank groups (step 4), and so do step 6's reads of one key from rows
 * of one parity (prep_negw_tf32). prefill_prep.cu's kc, ki, qc tiles of the bf16 family. */
static __device__ __forceinline__ uint32_t prep_swz32(int row, int col)
{
    return (uint32_t)(row * 512 + (((col >> 2) ^ (row & 7)) << 4) + ((col & 3) << 2));
}

/* Step 6 for the bf16 family's unchecked kernels, on tensor cores: W = bINV Kd = (bINV kc)
 * diag(2^Gref), kc the centred keys that step 3 left in shared memory as a tf32 tile for step 4
 * (kc[i][c] = Kd[i][c] 2^-Gref_c; the safe gate keeps 2^Gref_c >= 2^-58, so the column factor is
 * exact to fp32's rounding, which a checked gate's 2^Gref below fp32's range would not be: those
 * kernels take Kd itself, prep_finish_tc). bINV and kc enter with 11 significant bits (tf32), an eighth of the
 * bf16 rounding that the record's -W then takes (dev/numerics: no change in the output's or the
 * state's error), and the 136 FMAs and ~40 shared reads per thread of the fp32 form become 8
 * mma.sync m16n8k8 per warp, with Kd no longer held in registers from step 3 on. Each warp forms a
 * 16 x 32 block of keys (prep_negw_mma's blocks, whose 2^Gref factors its own lanes hold). A k-step
 * takes 8 tokens in the order the fragments make cheapest to read (the sum over a k-step does not
 * depend on it): lane t's k-slots t and t + 4 are tokens 2t and 2t + 1, so A's pair is one 8-byte
 * read of a bINV row, and B's two values are kc's rows 2t and 2t + 1 at key g, rows of one parity
 * per load, in 8 different bank groups by the tile's swizzle. The output fragment holds (row g or g
 * + 8, keys 2t and 2t + 1 of each 8-key tile), stored as one 4-byte pair. scaled = 0 (a constant
 * where inlined): the tile is Kd itself and no factor is applied (the checked kernels,
 * prep_finish_tc). */
static __device__ __forceinline__ void prep_negw_tf32(const float (*s_binv)[16], const unsigned char *kc,
                                                      const float e_ref[2], unsigned char *rec, int warp, int lane,
                                                      int scaled)
{
    const int blk = 2 * (warp & 1) + (warp >> 1);
    const int g = lane >> 2, t = lane & 3;
    /* B's byte offsets: key 32 blk + 8n + g of row 8 ks + 2t + e is prep_swz32's unit 8 blk + 2n +
     * (g >> 2) XOR (2t + e), i.e. 8 blk + 2 (n ^ t) + ((g >> 2) ^ e): a lane constant per (n, e)
     * (the compiler may form each again at its loads), the k-step 4 KB on */
    uint32_t boff[4][2];
#pragma unroll
    for (int n = 0; n < 4; n++)
#pragma unroll
        for (int e = 0; e < 2; e++)
            boff[n][e] = (2 * t + e) * 512 + 128 * blk + ((2 * (n ^ t) + ((g >> 2) ^ e)) << 4) + ((g & 3) << 2);
    float acc[4][4];
#pragma unroll
    for (int n = 0; n < 4; n++)
#pragma unroll
        for (int e = 0; e < 4; e++) acc[n][e] = 0.0f;
#pragma unroll
    for (int ks = 0; ks < 2; ks++) {
        /* A = bINV: a0, a2 = row g, tokens 8 ks + 2t, + 1; a1, a3 = row g + 8 */
        const float2 x0 = *(const float2 *)&s_binv[g][8 * ks + 2 * t];
        const float2 x1 = *(const float2 *)&s_binv[g + 8][8 * ks + 2 * t];
        const uint32_t a[4] = {tf32_operand(x0.x), tf32_operand(x1.x), tf32_operand(x0.y), tf32_operand(x1.y)};
#pragma unroll
        for (int n = 0; n < 4; n++) {
            /* B = kc[token][key]: b0, b1 = tokens 8 ks + 2t, + 1 at key 32 blk + 8n + g (stored
             * rounded to tf32 already) */
            const uint32_t b0 = *(const uint32_t *)(kc + 4096 * ks + boff[n][0]);
            const uint32_t b1 = *(const uint32_t *)(kc + 4096 * ks + boff[n][1]);
            mma_tf32_1688(acc[n], a, b0, b1, acc[n]);
        }
    }
#pragma unroll
    for (int n = 0; n < 4; n++) {
        const int c = 32 * blk + 8 * n + 2 * t; /* even: keys c and c + 1 are lane (c mod 64) / 2's pair */
        const float e0 = scaled ? __shfl_sync(0xffffffffu, e_ref[0], (c & 63) >> 1) : 1.0f;
        const float e1 = scaled ? __shfl_sync(0xffffffffu, e_ref[1], (c & 63) >> 1) : 1.0f;
#pragma unroll
        for (int h = 0; h < 2; h++)
            *(uint32_t *)(rec + PF_REC_NEGW +
                          pf_swz(g + 8 * h, c)) = scaled ? pack_bf16x2(acc[n][2 * h] * -e0, acc[n][2 * h + 1] * -e1)
                                                         : pack_bf16x2(-acc[n][2 * h], -acc[n][2 * h + 1]);
    }
}

/* Steps 5 and 6 for the K = 128 prep's checked kernels on a chunk that took step 4', and on every
 * checked chunk of the fp16 family (its 2^Gref may leave fp32's range, so not W = (bINV kc)
 * diag(2^Gref) as in the unchecked ones; the bf16 family's step-4 chunks take prep_finish): step 6
 * on tensor cores from a tile of Kd itself (kd[2 i + h]: Kd = k 2^G of row 8 hf + i, key c0 + h,
 * from the chunk's start, so never above |k| for a decaying gate), W = bINV Kd unscaled. The tile
 * takes s_buf's units 0 and 1, dead by the caller's barrier before this (step 4's kc and ki, or
 * step 4''s q tile): the bf16 family's Kd as a tf32 tile (prep_swz32's layout, prep_negw_tf32), the
 * fp16 family's as bf16 hi + lo tiles (pf_swz's layout, unit 0 the hi terms, prep_negw_mma), the
 * precision of their unchecked kernels' step 6. Each thread stores its own 8 rows x 2 keys before
 * warp 0's inverse, whose barrier step 6 waits on anyway. */
static __device__ __forceinline__ void prep_finish_tc(float (*s_L)[17], float (*s_binv)[16], const float *s_b,
                                                      const float kd[16], unsigned char (*s_buf)[4096],
                                                      unsigned char *rec, int hf, int c0, int warp, int lane, int f16,
                                                      int rec16)
{
    const float one[2] = {1.0f, 1.0f}; /* (unread: scaled = 0) */
#pragma unroll
    for (int i = 0; i < 8; i++) {
        const int r = 8 * hf + i;
        if (f16) {
            const uint32_t hi = pack_bf16x2(kd[2 * i], kd[2 * i + 1]);
            *(uint32_t *)(s_buf[0] + pf_swz(r, c0)) = hi;
            *(uint32_t *)(s_buf[1] + pf_swz(r, c0)) = prep_lo_bf16x2(kd[2 * i], kd[2 * i + 1], hi);
        } else {
            *(uint2 *)(s_buf[0] + prep_swz32(r, c0)) = make_uint2(tf32_operand(kd[2 * i]), tf32_operand(kd[2 * i + 1]));
        }
    }
    prep_inverse(s_L, s_binv, s_b, rec, warp, lane, rec16);
    __syncthreads();
    if (f16)
        prep_negw_mma(s_binv, s_buf[0], s_buf[1], one, rec, warp, lane, rec16, 0);
    else
        prep_negw_tf32(s_binv, s_buf[0], one, rec, warp, lane, 0);
}

/* The fp32 input tiles of prefill_prep.cu's tile and element forms, [16][128]: key c of a row sits
 * at float c ^ ((c >> 3) & 12) of it, i.e. 16-byte unit u at u ^ ((u >> 3) & 3). The permutation
 * keeps each aligned group of 8 units (32 keys) together, so a warp reading one key per lane along
 * a row still covers 32 banks; and it spreads the units 4 part + e (e fixed) that 8 threads of
 * the norms read, 16 keys apart, over 8 different bank groups (unpermuted: 2, a 4-way conflict
 * for a 16-byte read, 16-way for the 4-byte reads this replaces). */
static __device__ __forceinline__ int prep_f32_col(int c) { return c ^ ((c >> 3) & 12); }

#endif /* FKDA_PREFILL_PREP_STEPS_CUH */

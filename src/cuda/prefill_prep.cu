/*
 * prefill_prep.cu: the token-parallel half of the prefill. One CTA of 128 threads per (16-token
 * chunk, value head) turns q, k, g, beta into the chunk's record (prefill_common.cuh):
 *
 *   1. the q, k, g tiles (16 x 128 each; keys past K and rows past the sequence end are zeros):
 *      bf16 rows of whole 16-byte pieces by cp.async into bf16 tiles; every other dtype into fp32
 *      tiles (prep_f32_col's layout), 16-byte pieces where the rows are made of them, else
 *      element by element; v, unless the chain can read the caller's, into a bf16 copy;
 *   2. L2 norms of the q and k rows (fp32, 8 threads per row);
 *   3. thread c owns key channel c: the gate, cumsum G (fp32, log2 units), and the decayed
 *      operands Qd, Kr, gamma into the record, Kd in registers, and exponent-centred copies
 *      kc = k 2^(G - Gref), ki = k 2^(Gref - G), qc = q 2^(G - Gref) for the 16 x 16 products
 *      (Gref = G at row 7 keeps every exponent within 8 steps of decay: |x| <= 58 for lb = -5),
 *      qc and ki also as two bf16 terms (hi + lo);
 *      The centred exponents stay in range only while every |G_i - Gref| <= PREP_SAFE_SPAN; a
 *      chunk whose gate decays faster (no lower bound, a lower bound below -5, softplus) takes
 *      step 4' instead, decided per chunk;
 *   4. L = strict_lower(diag(b) kc ki^T) (plain bf16 operands) and Mqk = scale lower_incl(qc ki^T)
 *      as hi*hi + hi*lo + lo*hi (about fp32 accuracy: one bf16 rounding of qc and ki was the
 *      largest output error term; the same rounding in L costs nothing measurable), by mma.sync
 *      with fp32 accumulation, masks by selection; one warp per (product, 8-column tile);
 *   4'. or, pairwise in fp32: L_ij and Mqk_ij = sum_c x_i[c] k_j[c] 2^(G_i[c] - G_j[c]) with
 *      every exponent <= 0 for a decaying gate, so nothing overflows whatever the decay;
 *   5. warp 0: INV = (I + L)^-1 by fp32 forward substitution (lane c owns column c), bINV =
 *      INV diag(b), stored as hi + lo bf16 terms like Mqk;
 *   6. thread c: W[:, c] = bINV Kd[:, c] in fp32, stored negated (the chain adds S^T (-W)^T);
 *      in the fp16 family's unchecked kernels, on tensor cores from bINV and the centred kc
 *      instead (prep_negw_mma);
 *   The record goes straight from registers to the workspace: thread c's 2-byte stores of row i
 *   make one contiguous 64-byte piece per warp (the swizzle only permutes 16-byte units inside
 *   128-byte blocks), so no shared staging is needed; that keeps shared memory at ~22 KB (27 KB
 *   for the kernels whose tiles or step 4' need a sixth 4 KB unit).
 *
 * Rows past the end of a sequence get k = q = 0, b = 0 and no decay, so they add nothing to the
 * state, and their U and W rows are zero (the chain zero-fills their v rows).
 */
#include "prefill_common.cuh"
#include "prefill_prep_steps.cuh"
#include "ptx_copy.cuh"
#include "ptx_mma.cuh"

/* The units of s_buf: the input tiles (bulk: bf16 q, k, g in units 0-2; the other forms: fp32
 * tiles of two units each, at 0, 2, 4), then the operands of the 16 x 16 products. */
enum { IN_Q = 0, IN_K = 1, IN_G = 2, OP_KC = 0, OP_KI = 1, OP_KI_LO = 2, OP_QC = 3, OP_QC_LO = 4, OP_KC_LO = 5 };

/* Step 3's end for step 4, thread `col`'s key channel: Qd, Kr into the record (fp16 if rec16,
 * else bf16), Kd into kd, and the centred operands kc, ki, qc (hi + lo; kc's lo term only in the
 * fp16 family, whose L product and unchecked step 6 read it) into s_buf.
 * Two exp2 a row, the centred pair 2^(G - Gref) and 2^(Gref - G); the other factors are products of
 * those with per-channel constants: 2^(Gl - G) = 2^(Gref - G) 2^(Gl - Gref), every factor within
 * 2^+-span_max (normal: a product in range is accurate to a few ulp, one out of range is the same
 * inf or 0 as the direct form), and 2^G = 2^(G - Gref) 2^Gref only without the gate check, where
 * both factors are at least 2^-58 (G >= -115 for the safe gate); a checked gate may put 2^Gref
 * below fp32's range while 2^G is not, so it takes its own exp2 there. */
static __device__ __forceinline__ void prep_decayed(const pf_params &p, const float qn[16], const float kn[16],
                                                    const float G[16], float kd[16], unsigned char *rec,
                                                    unsigned char (*s_buf)[4096], int col, float Gref, float Gl,
                                                    float e_ref, int gate_checked, int f16, int rec16)
{
    const float e_last = pf_exp2(Gl - Gref);
#pragma unroll
    for (int i = 0; i < 16; i++) {
        const uint32_t off = pf_swz(i, col);
        const float d = G[i] - Gref;
        const float ec = pf_exp2(d), ei = pf_exp2(-d);
        const float e_ = gate_checked ? pf_exp2(G[i]) : ec * e_ref;
        kd[i] = kn[i] * e_;
        st_16(rec + PF_REC_QD, off, p.scale * qn[i] * e_, rec16);
        st_16(rec + PF_REC_KR, off, kn[i] * (ei * e_last), rec16);
        const float kc = kn[i] * ec, ki = kn[i] * ei, qc = qn[i] * ec;
        const uint16_t ki_hi = pf_float_to_bf16(ki), qc_hi = pf_float_to_bf16(qc);
        if (f16) { /* the lo term: the fp16 family's L product and (unchecked) step 6 */
            const uint16_t kc_hi = pf_float_to_bf16(kc);
            *(uint16_t *)(s_buf[OP_KC] + off) = kc_hi;
            st_bf16(s_buf[OP_KC_LO], off, kc - pf_bf16_to_float(kc_hi));
        } else {
            st_bf16(s_buf[OP_KC], off, kc);
        }
        *(uint16_t *)(s_buf[OP_KI] + off) = ki_hi;
        st_bf16(s_buf[OP_KI_LO], off, ki - pf_bf16_to_float(ki_hi));
        *(uint16_t *)(s_buf[OP_QC] + off) = qc_hi;
        st_bf16(s_buf[OP_QC_LO], off, qc - pf_bf16_to_float(qc_hi));
    }
}

/* How the prep loads q, k, g (pf_params.qkg_load; a constant in each kernel below):
 *   PF_LOAD_BF16:     bf16 with 16-byte rows (K <= 128, a multiple of 8): cp.async into bf16
 *                     tiles;
 *   PF_LOAD_TILES:    any dtypes with 16-byte rows (K * esize a multiple of 16): fp32 rows by
 *                     cp.async, 16-bit rows 16 bytes per thread into registers, widened (exactly)
 *                     and stored, each tensor into an fp32 tile of 8 KB;
 *   in both, the 16-byte units past K are zeros (cp.async with source size 0, a zero register),
 *   so the keys past K are zeros as in the element form and every later step is the same;
 *   PF_LOAD_ELEMENTS: anything else: element by element into the same fp32 tiles, zero-padded to
 *                     128 keys.
 * So the tile and element forms read their inputs after the load in one way, whatever the dtypes:
 * one fp32 shared load per value, the norms' 16 keys of a row as four 16-byte loads; the dtype
 * (a run-time value: the kernels are not multiplied by it) is looked at once per 16-byte piece.
 * The prep of one (chunk, value head). Three constants select the kernel below:
 *   load: one of the above;
 *   gate_checked: the gate may decay faster than the centred products take (no lower bound of
 *         at least -5): each chunk checks its span and may take step 4'. Without it, step 4'
 *         is compiled out, which keeps the registers of the common path;
 *   f16: the fp16 family's record (prefill_common.cuh, PF_REC16_BF16_FLAG): the L product on
 *         hi + lo operands like Mqk (its bf16 rounding is the state's floor once the chain has
 *         11 bits: dev/numerics/README.md, plan (m)); each chunk checks that it lies in fp16's
 *         domain and writes fp16 tiles and pairs if so, else the bf16 record, flagged; v, when
 *         the chain cannot read the caller's, copied in fp32. */
static __device__ __forceinline__ void prep_chunk(const pf_params &p, const int load, const int gate_checked,
                                                  const int f16, unsigned char (*s_buf)[4096])
{
    const int bulk = load == PF_LOAD_BF16, tiles = load == PF_LOAD_TILES;
    /* Loading: the q, k, g tiles (bulk: 3 x 4 KB bf16; else 3 x 8 KB fp32, two units each).
     * Then the operands of the 16 x 16 products: kc, ki (hi, lo), qc (hi, lo), swizzled bf16;
     * or, for a chunk that takes step 4', qn, kn, G as fp32 [16][128] tiles. s_buf (declared by
     * each kernel) has 5 units for the bulk unchecked kernel, 6 for the others. */
    __shared__ float s_L[16][17];
    __shared__ __align__(16) float s_binv[16][16];     /* rows 16-byte aligned: step 6 reads them 4 at a time */
    __shared__ __align__(16) float s_rq[16], s_rk[16]; /* aligned: step 3 reads them 4 at a time */
    __shared__ float s_b[16];
    __shared__ int s_out16[16]; /* f16: rows outside fp16's domain */
    float *const fq = (float *)s_buf[0], *const fk = (float *)s_buf[2], *const fg = (float *)s_buf[4];

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int64_t h = blockIdx.y, slot = blockIdx.x;
    const int64_t n = prep_find_sequence(&p, slot);
    int64_t row, start, len, slot0;
    pf_sequence(&p, n, &row, &start, &len, &slot0);
    const int64_t c = slot - slot0;
    if (c < 0 || c * PF_CHUNK >= len) return; /* a slot no sequence uses (uniform per CTA) */
    const int64_t t0 = start + c * PF_CHUNK;
    const int rows = (int)(len - c * PF_CHUNK < PF_CHUNK ? len - c * PF_CHUNK : PF_CHUNK);
    const int64_t hq = h / p.group;
    unsigned char *rec = p.records + (h * p.slots + slot) * (int64_t)PF_REC_BYTES;
    const int64_t q0 = row * p.q_s[0] + hq * p.q_s[2], k0 = row * p.k_s[0] + hq * p.k_s[2];
    const int64_t g0 = row * p.g_s[0] + h * p.g_s[2];

    /* 1. Tiles in flight first; beta meanwhile. */
    uint4 raw[3][2]; /* tiles: the 16-bit rows on their way to the fp32 tiles */
    if (bulk) {
        /* 768 16-byte units: thread tid takes units tid and tid + 128 of each tensor; the units
         * past a row's K keys (K / 8 of 16 are real) are zero-filled like rows past the end. */
        const int kunits = (int)(p.K >> 3);
#pragma unroll
        for (int which = 0; which < 3; which++) {
            const uint16_t *base = which == 0   ? (const uint16_t *)p.q + q0
                                   : which == 1 ? (const uint16_t *)p.k + k0
                                                : (const uint16_t *)p.g + g0;
            const int64_t ts = which == 0 ? p.q_s[1] : which == 1 ? p.k_s[1] : p.g_s[1];
#pragma unroll
            for (int i = 0; i < 2; i++) {
                const int u = tid + i * PREP_THREADS, r = u >> 4, unit = u & 15;
                const int ok = r < rows && unit < kunits;
                const uint16_t *src = ok ? base + (t0 + r) * ts + unit * 8 : base;
                cp_async_16(smem_addr(s_buf[which] + r * 256 + unit * 16), src, ok ? 16u : 0u);
            }
        }
        cp_async_commit();
    } else if (tiles) {
        /* each tensor's 16 rows of 128 keys into an fp32 tile (prep_f32_col): 32-bit rows by
         * cp.async, 4 of a row's 32 16-byte units per thread, each to its permuted place; 16-bit
         * rows 16 bytes per thread twice, into registers now, widened and stored once beta is on
         * its way (below). A row's K keys are its first K * esize / 16 units (a whole number: the
         * host checks it); the units past them are zeros like rows past the end. */
#pragma unroll
        for (int which = 0; which < 3; which++) {
            const int32_t dt = which == 2 ? p.g_dtype : p.qkv_dtype;
            const int esize = dt == FKDA_DTYPE_F32 ? 4 : 2;
            const int kunits = (int)(p.K * esize >> 4);
            const unsigned char *base = which == 0   ? (const unsigned char *)p.q + q0 * esize
                                        : which == 1 ? (const unsigned char *)p.k + k0 * esize
                                                     : (const unsigned char *)p.g + g0 * esize;
            const int64_t ts = (which == 0 ? p.q_s[1] : which == 1 ? p.k_s[1] : p.g_s[1]) * esize;
            if (esize == 4) {
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    const int u = tid + i * PREP_THREADS, r = u >> 5, unit = u & 31;
                    const int ok = r < rows && unit < kunits;
                    const unsigned char *src = ok ? base + (t0 + r) * ts + unit * 16 : base;
                    cp_async_16(smem_addr(s_buf[2 * which] + r * 512 + prep_f32_col(4 * unit) * 4), src, ok ? 16u : 0u);
                }
            } else {
#pragma unroll
                for (int i = 0; i < 2; i++) {
                    const int u = tid + i * PREP_THREADS, r = u >> 4, unit = u & 15;
                    const int ok = r < rows && unit < kunits;
                    raw[which][i] = ok ? *(const uint4 *)(base + (t0 + r) * ts + unit * 16) : make_uint4(0, 0, 0, 0);
                }
            }
        }
        cp_async_commit();
    } else {
        /* thread tid loads key channel tid of every row (coalesced along the keys) */
        const int ok_col = tid < p.K, cc = prep_f32_col(tid);
#pragma unroll
        for (int r = 0; r < PF_CHUNK; r++) {
            const int ok = ok_col && r < rows;
            const int64_t t = t0 + r;
            fq[r * 128 + cc] = ok ? pf_load_float(p.q, p.qkv_dtype, q0 + t * p.q_s[1] + tid) : 0.0f;
            fk[r * 128 + cc] = ok ? pf_load_float(p.k, p.qkv_dtype, k0 + t * p.k_s[1] + tid) : 0.0f;
            fg[r * 128 + cc] = ok ? pf_load_float(p.g, p.g_dtype, g0 + t * p.g_s[1] + tid) : 0.0f;
        }
    }
    if (f16 && p.v_stage != NULL) {
        /* the fp16 chain's fp32 copy of v: [16][vpad], zeros past V and past the sequence end */
        float *dst = (float *)p.v_stage + (h * p.slots + slot) * (int64_t)(PF_CHUNK * p.vpad);
        const int64_t vbase = row * p.v_s[0] + h * p.v_s[2];
        for (int r = 0; r < PF_CHUNK; r++)
            for (int col = tid; col < p.vpad; col += PREP_THREADS)
                dst[r * p.vpad + col] = r < rows && col < p.V
                                            ? pf_load_float(p.v, p.qkv_dtype, vbase + (t0 + r) * p.v_s[1] + col)
                                            : 0.0f;
    } else if (p.v_stage != NULL) {
        /* the chain's bf16 copy of v: [16][vpad], zeros past V and past the sequence end */
        uint16_t *dst = (uint16_t *)p.v_stage + (h * p.slots + slot) * (int64_t)(PF_CHUNK * p.vpad);
        const int64_t vbase = row * p.v_s[0] + h * p.v_s[2];
        for (int r = 0; r < PF_CHUNK; r++)
            for (int col = tid; col < p.vpad; col += PREP_THREADS) {
                const float x = r < rows && col < p.V
                                    ? pf_load_float(p.v, p.qkv_dtype, vbase + (t0 + r) * p.v_s[1] + col)
                                    : 0.0f;
                dst[r * p.vpad + col] = pf_float_to_bf16(x);
            }
    }
    if (tid < 16) {
        float b = 0.0f;
        if (tid < rows) {
            float x = pf_load_float(p.beta, p.beta_dtype,
                                    row * p.beta_s[0] + (t0 + tid) * p.beta_s[1] + h * p.beta_s[2]);
            b = p.beta_sigmoid ? pf_sigmoid(x) * (p.neg_eigval ? 2.0f : 1.0f) : x;
        }
        s_b[tid] = b;
    }
    const int col = tid;
    const float A = p.A_log ? __expf(pf_load_float(p.A_log, p.A_log_dtype, h * p.A_log_s)) : 1.0f;
    const float db = p.dt_bias && col < p.K ? pf_load_float(p.dt_bias, p.dt_dtype, h * p.dt_s[0] + col * p.dt_s[1])
                                            : 0.0f;
    if (tiles) {
        /* the 16-bit rows, widened (exactly) into their fp32 tiles: 8 keys -> two 16-byte units */
#pragma unroll
        for (int which = 0; which < 3; which++) {
            const int32_t dt = which == 2 ? p.g_dtype : p.qkv_dtype;
            if (dt == FKDA_DTYPE_F32) continue;
#pragma unroll
            for (int i = 0; i < 2; i++) {
                const int u = tid + i * PREP_THREADS, r = u >> 4, unit = u & 15;
                const uint32_t w[4] = {raw[which][i].x, raw[which][i].y, raw[which][i].z, raw[which][i].w};
                float x[8];
#pragma unroll
                for (int j = 0; j < 4; j++) {
                    if (dt == FKDA_DTYPE_BF16) {
                        x[2 * j] = __uint_as_float(w[j] << 16);
                        x[2 * j + 1] = __uint_as_float(w[j] & 0xffff0000u);
                    } else {
                        x[2 * j] = __half2float(__ushort_as_half((unsigned short)(w[j] & 0xffffu)));
                        x[2 * j + 1] = __half2float(__ushort_as_half((unsigned short)(w[j] >> 16)));
                    }
                }
                float *row_ = (float *)s_buf[2 * which] + r * 128;
                *(float4 *)(row_ + prep_f32_col(8 * unit)) = make_float4(x[0], x[1], x[2], x[3]);
                *(float4 *)(row_ + prep_f32_col(8 * unit + 4)) = make_float4(x[4], x[5], x[6], x[7]);
            }
        }
    }
    if (bulk || tiles) CP_ASYNC_WAIT(0);
    __syncthreads();

    /* 2. Row norms: 8 threads per row, 16 elements each. */
    {
        const int r = tid >> 3, part = tid & 7;
        float sq = 0.0f, sk = 0.0f, mq = 0.0f, mk = 0.0f; /* mq, mk: f16 only (whether a row is zero) */
        if (bulk) {
#pragma unroll
            for (int e = 0; e < 2; e++) {
                uint4 xq = *(const uint4 *)(s_buf[IN_Q] + r * 256 + (2 * part + e) * 16);
                uint4 xk = *(const uint4 *)(s_buf[IN_K] + r * 256 + (2 * part + e) * 16);
                const uint32_t wq[4] = {xq.x, xq.y, xq.z, xq.w}, wk[4] = {xk.x, xk.y, xk.z, xk.w};
#pragma unroll
                for (int j = 0; j < 4; j++) {
                    float a0 = __uint_as_float(wq[j] << 16), a1 = __uint_as_float(wq[j] & 0xffff0000u);
                    float b0 = __uint_as_float(wk[j] << 16), b1 = __uint_as_float(wk[j] & 0xffff0000u);
                    sq += a0 * a0 + a1 * a1;
                    sk += b0 * b0 + b1 * b1;
                }
            }
        } else {
            /* keys part * 16 .. + 15 of row r: four 16-byte units, summed in key order */
#pragma unroll
            for (int e4 = 0; e4 < 4; e4++) {
                const int c4 = prep_f32_col(part * 16 + e4 * 4);
                const float4 a4 = *(const float4 *)(fq + r * 128 + c4), b4 = *(const float4 *)(fk + r * 128 + c4);
                const float a[4] = {a4.x, a4.y, a4.z, a4.w}, b[4] = {b4.x, b4.y, b4.z, b4.w};
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    sq += a[e] * a[e];
                    sk += b[e] * b[e];
                    if (f16) {
                        mq = fmaxf(mq, fabsf(a[e]));
                        mk = fmaxf(mk, fabsf(b[e]));
                    }
                }
            }
        }
#pragma unroll
        for (int m = 1; m < 8; m <<= 1) {
            sq += __shfl_xor_sync(0xffffffffu, sq, m);
            sk += __shfl_xor_sync(0xffffffffu, sk, m);
            if (f16) {
                mq = fmaxf(mq, __shfl_xor_sync(0xffffffffu, mq, m));
                mk = fmaxf(mk, __shfl_xor_sync(0xffffffffu, mk, m));
            }
        }
        if (part == 0) {
            s_rq[r] = p.l2norm ? rsqrtf(sq + 1e-6f) : 1.0f;
            s_rk[r] = p.l2norm ? rsqrtf(sk + 1e-6f) : 1.0f;
            if (f16) s_out16[r] = !prep_row_in_fp16(&p, sq, sk, mq, mk, s_rq[r], s_rk[r], s_b[r]);
        }
    }
    __syncthreads();

    /* 3. Thread `col` owns key channel col: its column of q, k, g into registers. */
    float qn[16], kn[16], G[16];
    int grows = 0; /* f16: a gate step above 0 (a growing state: outside fp16's domain) */
    {
        float acc = 0.0f;
        const int live = col < p.K, ccol = prep_f32_col(col);
#pragma unroll
        for (int i = 0; i < 16; i++) {
            float xq, xk, xg;
            if (bulk) {
                xq = pf_bf16_to_float(((const uint16_t *)(s_buf[IN_Q] + i * 256))[col]);
                xk = pf_bf16_to_float(((const uint16_t *)(s_buf[IN_K] + i * 256))[col]);
                xg = pf_bf16_to_float(((const uint16_t *)(s_buf[IN_G] + i * 256))[col]);
            } else {
                xq = fq[i * 128 + ccol];
                xk = fk[i * 128 + ccol];
                xg = fg[i * 128 + ccol];
            }
            /* unchecked: the lower bound gate (the only one proven in range) */
            const float a = gate_checked ? prep_gate(&p, xg, A, db) : p.gate_scale * pf_sigmoid(A * (xg + db));
            acc += i < rows && live ? a : 0.0f;
            if (f16) grows |= i < rows && live && !(a <= 0.0f);
            G[i] = acc;
            qn[i] = xq * s_rq[i];
            kn[i] = xk * s_rk[i];
        }
    }
    /* Every thread has its column (s_buf now takes the operands). Step 4 or 4' for this chunk. */
    float span = 0.0f;
#pragma unroll
    for (int i = 0; i < 16; i++) span = fmaxf(span, fabsf(G[i] - G[7]));
    const float span_max = p.l2norm ? PREP_SAFE_SPAN_NORM : PREP_SAFE_SPAN;
    /* (the f16 forms' barrier below serves the unchecked ones as this one) */
    const int pairwise = gate_checked ? __syncthreads_or(!(span <= span_max)) /* NaN: pairwise too */
                                      : (f16 ? 0 : (__syncthreads(), 0));
    /* f16: the whole chunk in fp16's domain, or the bf16 record (flagged in gamma[0]) */
    const int rec16 = f16 ? !__syncthreads_or(grows || (tid < 16 && s_out16[tid])) : 0;

    /* The decayed operands: Qd, Kr, gamma into the record, Kd in registers; then either the
     * centred operands of step 4 or the fp32 tiles of step 4'. */
    float kd[16];
    const float Gref = G[7], Gl = G[15];
    const float e_ref = pf_exp2(Gref); /* unchecked: 2^G = 2^(G - Gref) 2^Gref, Kd = kc 2^Gref */
    *(float *)(rec + PF_REC_GAMMA + col * 4) = pf_exp2(Gl);
    if (f16 && !rec16 && col == 0) *(float *)(rec + PF_REC_GAMMA) = -pf_exp2(Gl); /* the bf16 record's flag */
    if (!pairwise) {
        /* unchecked f16: the record's dtype as a constant of each copy of the loop (a run-time
         * choice per store keeps both conversions' registers live across it); the checked f16
         * kernels, with step 4' beside it, allocate better with one copy that reads rec16 at run
         * time; the bf16 family's record is bf16 (rec16 = 0) */
        if (f16 && !gate_checked && rec16)
            prep_decayed(p, qn, kn, G, kd, rec, s_buf, col, Gref, Gl, e_ref, gate_checked, f16, 1);
        else if (f16 && !gate_checked)
            prep_decayed(p, qn, kn, G, kd, rec, s_buf, col, Gref, Gl, e_ref, gate_checked, f16, 0);
        else
            prep_decayed(p, qn, kn, G, kd, rec, s_buf, col, Gref, Gl, e_ref, gate_checked, f16, rec16);
    } else {
#pragma unroll
        for (int i = 0; i < 16; i++) {
            const uint32_t off = pf_swz(i, col);
            const float e_ = pf_exp2(G[i]);
            st_16(rec + PF_REC_QD, off, p.scale * qn[i] * e_, rec16);
            st_16(rec + PF_REC_KR, off, kn[i] * pf_exp2(Gl - G[i]), rec16);
            fq[i * 128 + col] = qn[i];
            fk[i * 128 + col] = kn[i];
            fg[i * 128 + col] = G[i];
        }
    }
    __syncthreads();

    const int g = lane >> 2, t = lane & 3;
    if (!pairwise) {
        /* 4. Warps 0, 1: L on token tile 8w..8w+8; warps 2, 3: Mqk on token tile 8(w-2)..; Mqk in
         * three accumulators (hi*hi, hi*lo, lo*hi) so each chain is 8 deep, and L too in the f16
         * forms. */
        const int prod = warp >> 1, nt = warp & 1;
        float acc[3][4];
#pragma unroll
        for (int m = 0; m < 3; m++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[m][e] = 0.0f;
        const unsigned char *Ahi = s_buf[prod ? OP_QC : OP_KC];
#pragma unroll
        for (int kk = 0; kk < 8; kk++) {
            uint32_t ah[4], bh[4];
            /* A: (rows 0-7 | 8-15) x (unit 2kk | 2kk+1) in the order a0 a1 a2 a3 */
            const uint32_t aoff = pf_swz_unit((lane & 7) + ((lane >> 3) & 1) * 8, 2 * kk + (lane >> 4));
            /* B = ki^T: b0 b1 of token tile 0, then of token tile 1 */
            const uint32_t boff = pf_swz_unit((lane & 7) + (lane >> 4) * 8, 2 * kk + ((lane >> 3) & 1));
            ldsm_x4(ah, smem_addr(Ahi + aoff));
            ldsm_x4(bh, smem_addr(s_buf[OP_KI] + boff));
            /* this warp's token tile (selects, not a run-time register index) */
            const uint32_t bh0 = nt ? bh[2] : bh[0], bh1 = nt ? bh[3] : bh[1];
            mma_bf16_16816(acc[0], ah, bh0, bh1, acc[0]);
            if (prod || f16) { /* warp-uniform */
                uint32_t al[4], bl[4];
                ldsm_x4(al, smem_addr((f16 ? s_buf[prod ? OP_QC_LO : OP_KC_LO] : s_buf[OP_QC_LO]) + aoff));
                ldsm_x4(bl, smem_addr(s_buf[OP_KI_LO] + boff));
                const uint32_t bl0 = nt ? bl[2] : bl[0], bl1 = nt ? bl[3] : bl[1];
                mma_bf16_16816(acc[1], ah, bl0, bl1, acc[1]);
                mma_bf16_16816(acc[2], al, bh0, bh1, acc[2]);
            }
        }
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int i = g + 8 * (e >> 1), j = 8 * nt + 2 * t + (e & 1);
            if (prod == 0) {
                s_L[i][j] = i > j ? s_b[i] * (f16 ? acc[0][e] + (acc[1][e] + acc[2][e]) : acc[0][e]) : 0.0f;
            } else {
                const float m = i >= j ? p.scale * (acc[0][e] + (acc[1][e] + acc[2][e])) : 0.0f;
                const uint16_t hi = pf_float_to_16(m, rec16);
                *(uint16_t *)(rec + PF_REC_MQK + (i * 16 + j) * 2) = hi;
                st_16(rec + PF_REC_MQK_LO, (uint32_t)(i * 16 + j) * 2, m - pf_16_to_float(hi, rec16), rec16);
            }
        }
    } else {
        prep_pairwise(fq, fk, fg, s_L, s_b, rec, p.scale, rec16);
        __syncthreads();
        /* Kd from the tiles (not kept in registers across the call) */
#pragma unroll
        for (int i = 0; i < 16; i++) kd[i] = fk[i * 128 + col] * pf_exp2(fg[i * 128 + col]);
        prep_finish(s_L, s_binv, s_b, kd, rec, col, warp, lane, rec16);
        return;
    }
    __syncthreads();
    if (gate_checked || !f16) {
        prep_finish(s_L, s_binv, s_b, kd, rec, col, warp, lane, rec16);
    } else {
        prep_inverse(s_L, s_binv, s_b, rec, warp, lane, rec16);
        __syncthreads();
        prep_negw_mma(s_binv, s_buf[OP_KC], s_buf[OP_KC_LO], e_ref, rec, warp, lane, rec16);
    }
}

/* CTAs per SM: 8 (64 registers) for the unchecked tile and bulk kernels, which fit with few
 * spills; the checked kernels hold more live values (step 4' beside step 4): 6 (80 registers);
 * the fp16 family's unchecked element form spills much more at 64 than at 80: 6. */
#define PREP_KERNEL(name, load, gate_checked, f16, ctas, units)                   \
    __global__ void __launch_bounds__(PREP_THREADS, ctas) name(const pf_params p) \
    {                                                                             \
        __shared__ __align__(128) unsigned char s_buf[units][4096];               \
        prep_chunk(p, load, gate_checked, f16, s_buf);                            \
    }
PREP_KERNEL(pf_prep_bulk, PF_LOAD_BF16, 0, 0, 8, 5)
PREP_KERNEL(pf_prep_bulk_checked, PF_LOAD_BF16, 1, 0, 6, 6)
PREP_KERNEL(pf_prep_tiles, PF_LOAD_TILES, 0, 0, 8, 6)
PREP_KERNEL(pf_prep_tiles_checked, PF_LOAD_TILES, 1, 0, 6, 6)
PREP_KERNEL(pf_prep_any, PF_LOAD_ELEMENTS, 0, 0, 8, 6)
PREP_KERNEL(pf_prep_any_checked, PF_LOAD_ELEMENTS, 1, 0, 6, 6)
/* The fp16 family (fp16 and fp32 q, k: never the bf16 tiles): the kc lo term takes unit 5. */
PREP_KERNEL(pf_prep16_tiles, PF_LOAD_TILES, 0, 1, 8, 6)
PREP_KERNEL(pf_prep16_tiles_checked, PF_LOAD_TILES, 1, 1, 6, 6)
PREP_KERNEL(pf_prep16_any, PF_LOAD_ELEMENTS, 0, 1, 6, 6)
PREP_KERNEL(pf_prep16_any_checked, PF_LOAD_ELEMENTS, 1, 1, 6, 6)
#undef PREP_KERNEL

cudaError_t pf_launch_prep(const pf_params *p, cudaStream_t stream)
{
    const int64_t used_slots = p->cu ? p->slots : p->N * p->chunks_per_row;
    if (used_slots <= 0 || p->HV <= 0) return cudaSuccess;
    if (used_slots > INT32_MAX || p->HV > 65535) return cudaErrorInvalidConfiguration; /* grid limits */
    dim3 grid((unsigned)used_slots, (unsigned)p->HV);
    /* Only the lower bound gate with lower_bound >= -5 is in range for every input. */
    const int checked = !(p->gate == FKDA_GATE_LOWER_BOUND && p->gate_scale >= -5.0f * 1.4426950408889634f);
    void (*kernel)(const pf_params) = p->qkg_load == PF_LOAD_BF16    ? (checked ? pf_prep_bulk_checked : pf_prep_bulk)
                                      : p->qkg_load == PF_LOAD_TILES ? (checked ? pf_prep_tiles_checked : pf_prep_tiles)
                                                                     : (checked ? pf_prep_any_checked : pf_prep_any);
    if (p->fp16_chain) /* q, k fp16 or fp32: the tile or element loads */
        kernel = p->qkg_load == PF_LOAD_TILES ? (checked ? pf_prep16_tiles_checked : pf_prep16_tiles)
                                              : (checked ? pf_prep16_any_checked : pf_prep16_any);
    kernel<<<grid, PREP_THREADS, 0, stream>>>(*p);
    return cudaGetLastError();
}

/*
 * prefill_prep.cu: the token-parallel half of the prefill. One CTA of 128 threads per (16-token
 * chunk, value head) turns q, k, g, beta into the chunk's record (prefill_common.cuh):
 *
 *   1. the q, k, g tiles (16 x 128 each; keys past K and rows past the sequence end are zeros):
 *      16-bit rows of whole 16-byte pieces by cp.async into 16-bit tiles (bf16 q, k, g; in the
 *      fp16 family fp16 q, k with a 16-bit g); every other dtype into fp32 tiles
 *      (prep_f32_col's layout), 16-byte pieces where the rows are made of them, else element by
 *      element; v, unless the chain can read the caller's, into a bf16 copy;
 *   2. L2 norms of the q and k rows (fp32, 8 threads per row);
 *   3. each thread owns two adjacent key channels over 8 rows (warps 0-1 rows 0-7, warps 2-3
 *      rows 8-15), so that every conversion and store below handles a pair: the gate, cumsum G
 *      (fp32, log2 units; the halves trade their totals through shared memory), and the decayed
 *      operands Qd, Kr, gamma into the record, Kd in registers (the checked kernels), and
 *      exponent-centred copies
 *      kc = k 2^(G - Gref), ki = k 2^(Gref - G), qc = q 2^(G - Gref) for the 16 x 16 products
 *      (Gref = G at row 7 keeps every exponent within 8 steps of decay: |x| <= 58 for lb = -5),
 *      rounded to tf32 (the fp16 family: as two bf16 terms, hi + lo);
 *      The centred exponents stay in range only while every |G_i - Gref| <= PREP_SAFE_SPAN; a
 *      chunk whose gate decays faster (no lower bound, a lower bound below -5, softplus) takes
 *      step 4' instead, decided per chunk; so does every chunk of a call of few rows (exact_qk,
 *      prefill_select.c: its products' rounding would not average out of the output);
 *   4. L = strict_lower(diag(b) kc ki^T) and Mqk = scale lower_incl(qc ki^T) by mma.sync with
 *      fp32 accumulation, masks by selection, one warp per (product, 8-column tile): on tf32
 *      operands (one bf16 rounding of qc and ki was the largest output error term; tf32's is an
 *      eighth of it, dev/numerics: +0.7 % on the output's error); the fp16 family on hi*hi +
 *      hi*lo + lo*hi of bf16 terms (about fp32 accuracy, which its 11-bit chain needs for Mqk:
 *      tf32 there is +41 % on its output error; L shares ki's terms);
 *   4'. or, nested: for a chunk whose G never rises (a gate that never grows), each entry i > j
 *      as step 4's product on factors centred at the last row z of the first half of the
 *      smallest aligned block that holds both rows, 2^(G_i - G_z) and 2^(G_z - G_j), both <= 1
 *      whatever the decay, so nothing overflows: four levels of blocks (8, 4, 2, 1 rows), one
 *      product each, on the four warps (prefill_prep_steps.cuh, prep_pair_level; the fp16
 *      family's on hi + lo terms, prep_pair_level16), the diagonal in fp32; a chunk whose G rises
 *      somewhere, pairwise in fp32: L_ij and Mqk_ij = sum_c x_i[c] k_j[c] 2^(G_i[c] - G_j[c]);
 *   5. warp 0: INV = (I + L)^-1 by fp32 forward substitution (lane c owns column c), bINV =
 *      INV diag(b), stored as hi + lo bf16 terms like Mqk;
 *   6. W = bINV Kd, stored negated (the chain adds S^T (-W)^T), on tensor cores: in the unchecked
 *      kernels from bINV and the centred kc still in shared memory, W = (bINV kc) diag(2^Gref)
 *      (prep_negw_tf32; the fp16 family's on bf16 hi + lo pairs, prep_negw_mma); in the checked
 *      kernels, whose 2^Gref may leave fp32's range, from Kd itself: from a tile of it
 *      (prep_finish_tc), but for the bf16 family's chunks of step 4, in fp32 on the CUDA cores
 *      from the step-3 ownership (the first half's Kd crossing to the second half through shared
 *      memory; prep_finish);
 *   The record goes straight from registers to the workspace: step 3's 4-byte stores of one row by
 *   a warp make one contiguous 128-byte piece (the swizzle only permutes 16-byte units inside
 *   128-byte blocks), step 6's make 16 bytes of each of 8 rows, so no shared staging is needed;
 *   that keeps shared memory at ~28 KB.
 *
 * Rows past the end of a sequence get k = q = 0, b = 0 and no decay, so they add nothing to the
 * state, and their U and W rows are zero (the chain zero-fills their v rows).
 */
#include "cuda_internal.h"
#include "prefill_common.cuh"
#include "prefill_prep_steps.cuh"
#include "ptx_copy.cuh"
#include "ptx_mma.cuh"

/* The units of s_buf: the input tiles (bulk: 16-bit q, k, g in units 0-2; the other forms: fp32
 * tiles of two units each, at 0, 2, 4), then the operands of the 16 x 16 products: in the bf16
 * family kc, ki, qc as tf32 tiles of two units each (OP32_*, prep_swz32's layout); in the fp16
 * family bf16 hi + lo tiles of one unit each (OP_*, pf_swz's layout). */
enum { IN_Q = 0, IN_K = 1, IN_G = 2, OP_KC = 0, OP_KI = 1, OP_KI_LO = 2, OP_QC = 3, OP_QC_LO = 4, OP_KC_LO = 5 };
enum { OP32_KC = 0, OP32_KI = 2, OP32_QC = 4 };

/* Step 3's end for step 4, on the thread's rows r0 .. r0 + 7 and key channels c0, c0 + 1 (register
 * 2 i + h: row r0 + i, channel c0 + h): Qd, Kr into the record (fp16 if rec16, else bf16), Kd into
 * kd (which only the checked kernels' step 6 reads), and the centred operands kc, ki, qc into
 * s_buf: rounded to tf32 in the bf16 family (step 4's products and the unchecked step 6 on tf32
 * tensor cores; each pair of channels one 8-byte store), as bf16 hi + lo terms in the fp16 family
 * (whose chain has 11 bits, and whose L product's operands the state's error then sees:
 * dev/numerics, plan (m); each pair one packed conversion and one 4-byte store a term). The two
 * channels are adjacent in a swizzled row. D = G - Gref, the centred running sum. Two exp2 a value,
 * the centred pair 2^D and 2^-D; the other operands are the centred
 * ones times per-channel constants: Kr = ki 2^(Gl - Gref), every factor within 2^+-span_max (normal:
 * a product in range is accurate to a few ulp, one out of range is the same inf or 0 as the direct
 * form), and Kd = kc 2^Gref, Qd = qc scale 2^Gref only without the gate check, where both factors
 * are at least 2^-58 (G >= -115 for the safe gate); a checked gate may put 2^Gref below fp32's
 * range while 2^G is not, so it takes its own exp2 there. Each operand is two roundings of fp32
 * products from the values, as in the direct form. */
static __device__ __forceinline__ void prep_decayed(const pf_params &p, const float qn[16], const float kn[16],
                                                    const float D[16], float kd[16], unsigned char *rec,
                                                    unsigned char (*s_buf)[4096], int r0, int c0, const float Gref[2],
                                                    const float e_ref[2], const float e_last[2], int gate_checked,
                                                    int f16, int rec16)
{
    const float qd_ref[2] = {p.scale * e_ref[0], p.scale * e_ref[1]}; /* Qd = qc scale 2^Gref */
#pragma unroll
    for (int i = 0; i < 8; i++) {
        const uint32_t off = pf_swz(r0 + i, c0);
        float qd[2], kr[2], kc[2], ki[2], qc[2];
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int e = 2 * i + h;
            const float ec = pf_exp2(D[e]), ei = pf_exp2(-D[e]);
            kc[h] = kn[e] * ec;
            ki[h] = kn[e] * ei;
            qc[h] = qn[e] * ec;
            kr[h] = ki[h] * e_last[h];
            if (gate_checked) {
                const float e_ = pf_exp2(Gref[h] + D[e]);
                kd[e] = kn[e] * e_;
                qd[h] = p.scale * qn[e] * e_;
            } else { /* 2^G = 2^D 2^Gref: from the centred products, one product each */
                kd[e] = kc[h] * e_ref[h];
                qd[h] = qc[h] * qd_ref[h];
            }
        }
        *(uint32_t *)(rec + PF_REC_QD + off) = pack_16x2(qd[0], qd[1], rec16);
        *(uint32_t *)(rec + PF_REC_KR + off) = pack_16x2(kr[0], kr[1], rec16);
        if (!f16) { /* tf32, each pair one 8-byte store */
            const uint32_t off32 = prep_swz32(r0 + i, c0);
            *(uint2 *)(s_buf[OP32_KC] + off32) = make_uint2(tf32_operand(kc[0]), tf32_operand(kc[1]));
            *(uint2 *)(s_buf[OP32_KI] + off32) = make_uint2(tf32_operand(ki[0]), tf32_operand(ki[1]));
            *(uint2 *)(s_buf[OP32_QC] + off32) = make_uint2(tf32_operand(qc[0]), tf32_operand(qc[1]));
            continue;
        }
        /* the fp16 family: hi + lo bf16 terms (its L product and unchecked step 6 read kc's too) */
        const uint32_t kc_hi = pack_bf16x2(kc[0], kc[1]), ki_hi = pack_bf16x2(ki[0], ki[1]);
        const uint32_t qc_hi = pack_bf16x2(qc[0], qc[1]);
        *(uint32_t *)(s_buf[OP_KC] + off) = kc_hi;
        *(uint32_t *)(s_buf[OP_KC_LO] + off) = prep_lo_bf16x2(kc[0], kc[1], kc_hi);
        *(uint32_t *)(s_buf[OP_KI] + off) = ki_hi;
        *(uint32_t *)(s_buf[OP_KI_LO] + off) = prep_lo_bf16x2(ki[0], ki[1], ki_hi);
        *(uint32_t *)(s_buf[OP_QC] + off) = qc_hi;
        *(uint32_t *)(s_buf[OP_QC_LO] + off) = prep_lo_bf16x2(qc[0], qc[1], qc_hi);
    }
}

/* Two 16-bit values of a word as fp32 (exactly): bf16, or fp16 where f16; the low half first. */
static __device__ __forceinline__ float2 prep_widen2(uint32_t w, int f16)
{
    if (f16) return __half22float2(*(const __half2 *)&w);
    return make_float2(__uint_as_float(w << 16), __uint_as_float(w & 0xffff0000u));
}

/* How the prep loads q, k, g (pf_params.qkg_load; a constant in each kernel below):
 *   PF_LOAD_BF16:     bf16 with 16-byte rows (K <= 128, a multiple of 8): cp.async into bf16
 *                     tiles;
 *   PF_LOAD_F16:      the same for fp16 q, k and a bf16 or fp16 g (the fp16 family only), into
 *                     16-bit tiles of their own dtypes: each value is widened where it is read,
 *                     by an instruction known when compiled (g's dtype: a uniform choice), so
 *                     nothing goes through registers on its way to shared memory;
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
    const int bulk = load == PF_LOAD_BF16 || load == PF_LOAD_F16, tiles = load == PF_LOAD_TILES;
    const int qk16 = load == PF_LOAD_F16, g16 = qk16 && p.g_dtype == FKDA_DTYPE_F16; /* bulk: fp16 tiles */
    /* Loading: the q, k, g tiles (bulk: 3 x 4 KB of 16-bit values; else 3 x 8 KB fp32, two units each).
     * Then the operands of the 16 x 16 products (kc, ki, qc as swizzled tf32 tiles; the fp16
     * family: kc, ki, qc hi and lo as swizzled bf16 tiles); or, for a chunk that takes step 4',
     * qn, kn, G as fp32 [16][128] tiles. s_buf (declared by each kernel) has 6 units. */
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
        /* 768 16-byte units: thread tid takes unit tid % 16 of rows tid / 16 and tid / 16 + 8 of each
         * tensor (shared bytes 16 tid and 16 tid + 2 KB of its tile); the units past a row's K
         * keys (K / 8 of 16 are real) are zero-filled like rows past the end. The addresses: the
         * CTA's first row (uniform) plus the thread's row times the token stride (a 32 x 64-bit
         * product) and its unit; the second row 8 token strides on. */
        const int kunits = (int)(p.K >> 3), r = tid >> 4, unit = tid & 15;
        const int ok0 = r < rows && unit < kunits, ok1 = r + 8 < rows && unit < kunits;
#pragma unroll
        for (int which = 0; which < 3; which++) {
            const int64_t ts = 2 * (which == 0 ? p.q_s[1] : which == 1 ? p.k_s[1] : p.g_s[1]);
            const unsigned char *first = which == 0   ? (const unsigned char *)p.q + 2 * (q0 + t0 * p.q_s[1])
                                         : which == 1 ? (const unsigned char *)p.k + 2 * (k0 + t0 * p.k_s[1])
                                                      : (const unsigned char *)p.g + 2 * (g0 + t0 * p.g_s[1]);
            const unsigned char *src = first + (uint32_t)r * ts + unit * 16;
            cp_async_16(smem_addr(s_buf[which] + tid * 16), ok0 ? src : first, ok0 ? 16u : 0u);
            cp_async_16(smem_addr(s_buf[which] + 2048 + tid * 16), ok1 ? src + 8 * ts : first, ok1 ? 16u : 0u);
        }
        cp_async_commit();
    } else if (tiles) {
        /* each tensor's 16 rows of 128 keys into an fp32 tile (prep_f32_col): 32-bit rows by
         * cp.async, 4 of a row's 32 16-byte units per thread (rows tid / 32 + 4 i), each to its
         * permuted place; 16-bit rows 16 bytes per thread twice (rows tid / 16 and + 8), into
         * registers now, widened and stored once beta is on its way (below). A row's K keys are
         * its first K * esize / 16 units (a whole number: the host checks it); the units past
         * them are zeros like rows past the end. Addresses as in the bulk form. */
#pragma unroll
        for (int which = 0; which < 3; which++) {
            const int32_t dt = which == 2 ? p.g_dtype : p.qkv_dtype;
            const int esize = dt == FKDA_DTYPE_F32 ? 4 : 2;
            const int kunits = (int)(p.K * esize >> 4);
            const int64_t ts = (which == 0 ? p.q_s[1] : which == 1 ? p.k_s[1] : p.g_s[1]) * esize;
            const unsigned char *first = which == 0   ? (const unsigned char *)p.q + (q0 + t0 * p.q_s[1]) * esize
                                         : which == 1 ? (const unsigned char *)p.k + (k0 + t0 * p.k_s[1]) * esize
                                                      : (const unsigned char *)p.g + (g0 + t0 * p.g_s[1]) * esize;
            if (esize == 4) {
                const int r = tid >> 5, unit = tid & 31;
                const unsigned char *src = first + (uint32_t)r * ts + unit * 16;
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    const int ok = r + 4 * i < rows && unit < kunits;
                    cp_async_16(smem_addr(s_buf[2 * which] + (r + 4 * i) * 512 + prep_f32_col(4 * unit) * 4),
                                ok ? src + 4 * i * ts : first, ok ? 16u : 0u);
                }
            } else {
                const int r = tid >> 4, unit = tid & 15;
                const unsigned char *src = first + (uint32_t)r * ts + unit * 16;
#pragma unroll
                for (int i = 0; i < 2; i++) {
                    const int ok = r + 8 * i < rows && unit < kunits;
                    raw[which][i] = ok ? *(const uint4 *)(src + 8 * i * ts) : make_uint4(0, 0, 0, 0);
                }
            }
        }
        cp_async_commit();
    } else {
        pf_load_element_tiles(p, q0, k0, g0, t0, tid, rows, tid < p.K, fq, fk, fg, 128, prep_f32_col(tid));
    }
    /* From step 3 on, thread tid owns key channels c0 = 2 (tid mod 64) and c0 + 1 over rows r0 = 8 (tid /
     * 64) .. r0 + 7: warps 0-1 the chunk's first 8 rows, warps 2-3 its last 8 (see step 3). */
    const int hf = tid >> 6, c0 = 2 * (tid & 63), r0 = 8 * hf;
    /* beta (threads 0-15, one row each), A_log and dt_bias of this thread's two channels: every load
     * issued before any is converted (ptx_load.cuh). Through a branch per dtype each was converted
     * inside its branch and waited for there, three or four DRAM round trips in a row; so they are
     * one, beside the tiles'. */
    uint32_t beta32, beta16, A32, A16, db32[2], db16[2];
    load_bits_pair_if(p.beta, p.beta_dtype, row * p.beta_s[0] + (t0 + tid) * p.beta_s[1] + h * p.beta_s[2], tid < rows,
                      &beta32, &beta16);
    load_bits_pair_if(p.A_log, p.A_log_dtype, h * p.A_log_s, p.A_log != NULL, &A32, &A16);
#pragma unroll
    for (int e = 0; e < 2; e++)
        load_bits_pair_if(p.dt_bias, p.dt_dtype, h * p.dt_s[0] + (c0 + e) * p.dt_s[1],
                          p.dt_bias != NULL && c0 + e < p.K, &db32[e], &db16[e]);
    hold_until_here(&beta32);
    hold_until_here(&beta16);
    hold_until_here(&A32);
    hold_until_here(&A16);
#pragma unroll
    for (int e = 0; e < 2; e++) {
        hold_until_here(&db32[e]);
        hold_until_here(&db16[e]);
    }
    if (tid < 16) {
        const float x = bits_to_float(beta32 | beta16, p.beta_dtype);
        s_b[tid] = tid < rows ? (p.beta_sigmoid ? pf_sigmoid(x) * (p.neg_eigval ? 2.0f : 1.0f) : x) : 0.0f;
    }
    const float A = p.A_log ? __expf(bits_to_float(A32 | A16, p.A_log_dtype)) : 1.0f;
    float db[2], gb[2]; /* the unchecked gate's argument: sigmoid(A (g + db)) = 1 / (1 + 2^(g ga + gb)) */
    const float ga = A * -PREP_LOG2E;
#pragma unroll
    for (int e = 0; e < 2; e++) {
        db[e] = bits_to_float(db32[e] | db16[e], p.dt_dtype); /* 0 where not loaded */
        gb[e] = ga * db[e];
    }
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
                    const float2 xy = prep_widen2(w[j], dt != FKDA_DTYPE_BF16);
                    x[2 * j] = xy.x, x[2 * j + 1] = xy.y;
                }
                float *row_ = (float *)s_buf[2 * which] + r * 128;
                *(float4 *)(row_ + prep_f32_col(8 * unit)) = make_float4(x[0], x[1], x[2], x[3]);
                *(float4 *)(row_ + prep_f32_col(8 * unit + 4)) = make_float4(x[4], x[5], x[6], x[7]);
            }
        }
    }
    if (p.v_stage != NULL) {
        /* the chain's copy of v: [16][vpad], zeros past V and past the sequence end; fp32 for the
         * fp16 chain, else bf16 (here, once the tile kernels' 16-bit rows are widened: its loads
         * beside those rows' registers made ptxas spill) */
        const int64_t at = (h * p.slots + slot) * (int64_t)(PF_CHUNK * p.vpad), vbase = row * p.v_s[0] + h * p.v_s[2];
        for (int col = tid; col < p.vpad; col += PREP_THREADS) {
#pragma unroll
            for (int r0 = 0; r0 < PF_CHUNK; r0 += 8) {
                float x[8];
                pf_load_8rows(p.v, p.qkv_dtype, vbase + t0 * p.v_s[1] + col, p.v_s[1], r0, rows, col < p.V, x);
#pragma unroll
                for (int i = 0; i < 8; i++) {
                    if (f16)
                        ((float *)p.v_stage)[at + (r0 + i) * p.vpad + col] = x[i];
                    else
                        ((uint16_t *)p.v_stage)[at + (r0 + i) * p.vpad + col] = pf_float_to_bf16(x[i]);
                }
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
                    const float2 a = prep_widen2(wq[j], qk16), b = prep_widen2(wk[j], qk16);
                    sq += a.x * a.x + a.y * a.y;
                    sk += b.x * b.x + b.y * b.y;
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
            if (f16 && !qk16) {
                mq = fmaxf(mq, __shfl_xor_sync(0xffffffffu, mq, m));
                mk = fmaxf(mk, __shfl_xor_sync(0xffffffffu, mk, m));
            }
        }
        if (part == 0) {
            s_rq[r] = p.l2norm ? rsqrtf(sq + 1e-6f) : 1.0f;
            s_rk[r] = p.l2norm ? rsqrtf(sk + 1e-6f) : 1.0f;
            /* The fp16 family's test needs to know a zero row (mq, mk == 0). The fp16 tiles tell
             * it by the squares' sum: the least fp16 subnormal, 2^-24, squares to 2^-48, a normal
             * fp32, so a row's sum is 0 only where every entry is (fp32 entries, whose squares can
             * underflow, keep their largest entries). */
            if (f16)
                s_out16[r] = !prep_row_in_fp16(&p, sq, sk, qk16 ? sq : mq, qk16 ? sk : mk, s_rq[r], s_rk[r], s_b[r]);
        }
    }
    __syncthreads();

    /* 3. The thread's two key channels over its 8 rows: q, k, g into registers, register 2 i + h
     * holding row r0 + i, channel c0 + h. Owning two adjacent channels makes each conversion below
     * a packed pair and each store 4 bytes (the instructions the prep is bound by: it issues every
     * cycle it can, ncu); owning 8 rows instead of 16 keeps the registers of one channel's column.
     * G is the gate's running sum from the half's first row: in the first half the chunk's own, in
     * the second half the sum past row 7, i.e. exactly G_i - Gref with Gref = G_7 (the centre of
     * step 4's products); the halves trade their totals through shared memory at the barrier below
     * (s_gx: G_7 from the first half, G_15 - G_7 from the second). */
    __shared__ __align__(8) float s_gx[2][128];
    float qn[16], kn[16], D[16];
    float run[2] = {0.0f, 0.0f};
    int grows = 0; /* f16: a gate step above 0 (a growing state, outside fp16's domain) */
    {
        const int live[2] = {c0 < p.K, c0 + 1 < p.K}, fcol = prep_f32_col(c0); /* c0 even: c0 + 1 at fcol + 1 */
        /* The checked kernels serve three gates: their gate values go first into D, through a
         * loop per gate, so that the gate's test is once in the thread's path instead of once per
         * element (with a constant kind the lower bound and gate none loops have no branch; the
         * softplus keeps its own two, x > 20 and log1pf's). The unchecked kernels (one gate)
         * compute it inline below: a loop of their own cost them spills (pf_prep_tiles 4 -> 156
         * bytes). */
        if (gate_checked) {
#pragma unroll
            for (int i = 0; i < 8; i++) {
                const int r = r0 + i;
                const float2 c = bulk ? prep_widen2(*(const uint32_t *)(s_buf[IN_G] + r * 256 + 2 * c0), g16)
                                      : *(const float2 *)(fg + r * 128 + fcol);
                D[2 * i] = c.x, D[2 * i + 1] = c.y;
            }
            if (p.gate == FKDA_GATE_LOWER_BOUND) {
#pragma unroll
                for (int e = 0; e < 16; e++) D[e] = prep_gate(&p, FKDA_GATE_LOWER_BOUND, D[e], A, db[e & 1]);
            } else if (p.gate == FKDA_GATE_NONE) {
#pragma unroll
                for (int e = 0; e < 16; e++) D[e] = prep_gate(&p, FKDA_GATE_NONE, D[e], A, db[e & 1]);
            } else {
#pragma unroll
                for (int e = 0; e < 16; e++) D[e] = prep_gate(&p, FKDA_GATE_SOFTPLUS, D[e], A, db[e & 1]);
            }
        }
#pragma unroll
        for (int i = 0; i < 8; i++) {
            const int r = r0 + i;
            float xq[2], xk[2], xg[2] = {0.0f, 0.0f};
            if (bulk) {
                const uint32_t wq = *(const uint32_t *)(s_buf[IN_Q] + r * 256 + 2 * c0);
                const uint32_t wk = *(const uint32_t *)(s_buf[IN_K] + r * 256 + 2 * c0);
                const float2 a = prep_widen2(wq, qk16), b = prep_widen2(wk, qk16);
                xq[0] = a.x, xq[1] = a.y, xk[0] = b.x, xk[1] = b.y;
                if (!gate_checked) {
                    const float2 c = prep_widen2(*(const uint32_t *)(s_buf[IN_G] + r * 256 + 2 * c0), g16);
                    xg[0] = c.x, xg[1] = c.y;
                }
            } else {
                const float2 a = *(const float2 *)(fq + r * 128 + fcol), b = *(const float2 *)(fk + r * 128 + fcol);
                xq[0] = a.x, xq[1] = a.y, xk[0] = b.x, xk[1] = b.y;
                if (!gate_checked) {
                    const float2 c = *(const float2 *)(fg + r * 128 + fcol);
                    xg[0] = c.x, xg[1] = c.y;
                }
            }
            const float rq = s_rq[r], rk = s_rk[r];
#pragma unroll
            for (int h = 0; h < 2; h++) {
                /* unchecked: the lower bound gate (the only one proven in range), its sigmoid's
                 * argument in one fma (~1e-7 relative to A (|g| + |db|) off the rounded sum's) */
                const float a = gate_checked ? D[2 * i + h]
                                             : p.gate_scale * pf_rcp(1.0f + pf_exp2(fmaf(xg[h], ga, gb[h])));
                run[h] += r < rows && live[h] ? a : 0.0f;
                if (f16) grows |= r < rows && live[h] && !(a <= 0.0f);
                D[2 * i + h] = run[h];
                qn[2 * i + h] = xq[h] * rq;
                kn[2 * i + h] = xk[h] * rk;
            }
        }
    }
    /* Centred: D = G_i - G_7 (the first half subtracts its own G_7; the second half's sums are
     * centred already). Every thread has its columns (s_buf now takes the operands). Step 4 or 4'
     * for this chunk, by the largest |D| of the chunk. */
    float span = 0.0f;
#pragma unroll
    for (int e = 0; e < 16; e++) {
        D[e] -= hf ? 0.0f : run[e & 1];
        span = fmaxf(span, fabsf(D[e]));
    }
    *(float2 *)&s_gx[hf][c0] = make_float2(run[0], run[1]);
    const float span_max = p.l2norm ? PREP_SAFE_SPAN_NORM : PREP_SAFE_SPAN;
    /* (the f16 forms' barrier below serves the unchecked ones as this one) */
    /* (fmaxf skips a NaN difference: a NaN gate gives NaN operands on either path) */
    /* exact_qk (small calls, the bf16 family only: prefill_select.c): step 4' for every chunk,
     * whole (not nested) */
    const int pairwise = gate_checked ? __syncthreads_or((!f16 && p.exact_qk) || !(span <= span_max))
                                      : (f16 ? 0 : (__syncthreads(), 0));
    /* step 4' nested (prefill_prep_steps.cuh, prep_pair_level): the chunks whose G tile never rises
     * down a column (prep_rows_rise; the fp16 family, which tracks growing steps for its record's
     * dtype anyway, takes only chunks without one, a stricter test), every level's factors then
     * at most 1. A vote of its own, taken only by chunks that take step 4' (`pairwise` is the
     * CTA's), so that the chunks of step 4 pay nothing for it. */
    const int nested = gate_checked && pairwise && !(!f16 && p.exact_qk) &&
                       !__syncthreads_or(f16 ? grows : prep_rows_rise(D, hf));
    /* f16: the whole chunk in fp16's domain, or the bf16 record (flagged in gamma[0]) */
    const int rec16 = f16 ? !__syncthreads_or(grows || (tid < 16 && s_out16[tid])) : 0;

    /* The decayed operands: Qd, Kr, gamma into the record, Kd in registers (read by the checked
     * kernels' step 6 only); then either the centred operands of step 4 or the fp32 tiles of step
     * 4'. Gref = G_7, Gl = G_15 = Gref + (Gl - Gref); 2^Gref: for the unchecked 2^G = 2^(G - Gref)
     * 2^Gref, and their step 6's W = (bINV kc) diag(2^Gref). */
    float kd[16], Gref[2], e_ref[2], e_last[2], gamma[2];
#pragma unroll
    for (int h = 0; h < 2; h++) {
        const float last = s_gx[1][c0 + h]; /* Gl - Gref */
        Gref[h] = s_gx[0][c0 + h];
        e_ref[h] = pf_exp2(Gref[h]);
        e_last[h] = pf_exp2(last);
        gamma[h] = pf_exp2(Gref[h] + last);
    }
    if (hf) { /* the second half stores gamma, and the bf16 record's flag (its sign at channel 0) */
        if (f16 && !rec16 && c0 == 0) gamma[0] = -gamma[0];
        *(float2 *)(rec + PF_REC_GAMMA + c0 * 4) = make_float2(gamma[0], gamma[1]);
    }
    if (!pairwise) {
        /* unchecked f16: the record's dtype as a constant of each copy of the loop (a run-time
         * choice per store keeps both conversions' registers live across it); the checked f16
         * kernels, with step 4' beside it, allocate better with one copy that reads rec16 at run
         * time; the bf16 family's record is bf16 (rec16 = 0) */
        if (f16 && !gate_checked && rec16)
            prep_decayed(p, qn, kn, D, kd, rec, s_buf, r0, c0, Gref, e_ref, e_last, gate_checked, f16, 1);
        else if (f16 && !gate_checked)
            prep_decayed(p, qn, kn, D, kd, rec, s_buf, r0, c0, Gref, e_ref, e_last, gate_checked, f16, 0);
        else
            prep_decayed(p, qn, kn, D, kd, rec, s_buf, r0, c0, Gref, e_ref, e_last, gate_checked, f16, rec16);
    } else {
#pragma unroll
        for (int i = 0; i < 8; i++) {
            const int r = r0 + i;
            const uint32_t off = pf_swz(r, c0);
            float qd[2], kr[2], Gi[2];
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int e = 2 * i + h;
                Gi[h] = Gref[h] + D[e];
                qd[h] = p.scale * qn[e] * pf_exp2(Gi[h]);
                kr[h] = kn[e] * pf_exp2(s_gx[1][c0 + h] - D[e]); /* 2^(Gl - G_i) */
            }
            *(uint32_t *)(rec + PF_REC_QD + off) = pack_16x2(qd[0], qd[1], rec16);
            *(uint32_t *)(rec + PF_REC_KR + off) = pack_16x2(kr[0], kr[1], rec16);
            *(float2 *)(fq + r * 128 + c0) = make_float2(qn[2 * i], qn[2 * i + 1]);
            *(float2 *)(fk + r * 128 + c0) = make_float2(kn[2 * i], kn[2 * i + 1]);
            *(float2 *)(fg + r * 128 + c0) = make_float2(Gi[0], Gi[1]);
        }
    }
    __syncthreads();

    const int g = lane >> 2, t = lane & 3;
    if (!pairwise) {
        /* 4. Warps 0, 1: L on token tile 8w..8w+8; warps 2, 3: Mqk on token tile 8(w-2)... */
        const int prod = warp >> 1, nt = warp & 1;
        float acc[3][4];
#pragma unroll
        for (int m = 0; m < 3; m++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[m][e] = 0.0f;
        if (!f16) {
            /* The bf16 family: tf32 operands (11 bits: below the bf16 record's rounding by a
             * factor of 8, where one bf16 rounding of Mqk's operands was the largest output error
             * term), 16 k-steps of 8 keys, even and odd k-steps in two accumulators (chains 8
             * deep). Each B load serves two k-steps. */
            /* The swizzle XORs only the low 3 bits of a row's 16-byte unit, so unit u of row r sits at
             * r * 512 + 128 (u >> 3) + 16 ((u & 7) ^ (r & 7)): with u = 2 k + b for k-step k (b: the
             * lane's half of it), the lane's byte offset is a constant for each k mod 4 plus 128 (k
             * >> 2), and every ldmatrix below is one register and an immediate. */
            const int x = lane & 7, ab = lane >> 4, bq = lane >> 3;
            const int arow = x + ((lane >> 3) & 1) * 8, brow = 8 * nt + x;
            const uint32_t sA = smem_addr(s_buf[prod ? OP32_QC : OP32_KC]), sB = smem_addr(s_buf[OP32_KI]);
            uint32_t oa[4], ob[2];
#pragma unroll
            for (int m = 0; m < 4; m++) oa[m] = sA + arow * 512 + (((2 * m + ab) ^ x) << 4);
#pragma unroll
            for (int m = 0; m < 2; m++) ob[m] = sB + brow * 512 + (((4 * m + bq) ^ x) << 4);
#pragma unroll
            for (int kk = 0; kk < 16; kk += 2) {
                uint32_t a0[4], a1[4], b[4];
                /* A: (rows 0-7 | 8-15) x (unit 2k | 2k+1) for k-steps k = kk, kk + 1 */
                ldsm_x4(a0, oa[kk & 3] + 128 * (kk >> 2));
                ldsm_x4(a1, oa[(kk + 1) & 3] + 128 * (kk >> 2));
                /* B = ki^T on this warp's token tile: units 2kk .. 2kk + 3, b0 b1 of k-step kk, then of kk + 1 */
                ldsm_x4(b, ob[(kk >> 1) & 1] + 128 * (kk >> 2));
                mma_tf32_1688(acc[0], a0, b[0], b[1], acc[0]);
                mma_tf32_1688(acc[1], a1, b[2], b[3], acc[1]);
            }
#pragma unroll
            for (int e = 0; e < 4; e++) acc[0][e] += acc[1][e];
        } else {
            /* The fp16 family: bf16 hi + lo operands in three accumulators (hi*hi, hi*lo, lo*hi)
             * so each chain is 8 deep. */
            const unsigned char *Ahi = s_buf[prod ? OP_QC : OP_KC], *Alo = s_buf[prod ? OP_QC_LO : OP_KC_LO];
#pragma unroll
            for (int kk = 0; kk < 8; kk++) {
                uint32_t ah[4], bh[4], al[4], bl[4];
                /* A: (rows 0-7 | 8-15) x (unit 2kk | 2kk+1) in the order a0 a1 a2 a3 */
                const uint32_t aoff = pf_swz_unit((lane & 7) + ((lane >> 3) & 1) * 8, 2 * kk + (lane >> 4));
                /* B = ki^T: b0 b1 of token tile 0, then of token tile 1 */
                const uint32_t boff = pf_swz_unit((lane & 7) + (lane >> 4) * 8, 2 * kk + ((lane >> 3) & 1));
                ldsm_x4(ah, smem_addr(Ahi + aoff));
                ldsm_x4(bh, smem_addr(s_buf[OP_KI] + boff));
                ldsm_x4(al, smem_addr(Alo + aoff));
                ldsm_x4(bl, smem_addr(s_buf[OP_KI_LO] + boff));
                /* this warp's token tile (selects, not a run-time register index) */
                const uint32_t bh0 = nt ? bh[2] : bh[0], bh1 = nt ? bh[3] : bh[1];
                const uint32_t bl0 = nt ? bl[2] : bl[0], bl1 = nt ? bl[3] : bl[1];
                mma_bf16_16816(acc[0], ah, bh0, bh1, acc[0]);
                mma_bf16_16816(acc[1], ah, bl0, bl1, acc[1]);
                mma_bf16_16816(acc[2], al, bh0, bh1, acc[2]);
            }
#pragma unroll
            for (int e = 0; e < 4; e++) acc[0][e] += acc[1][e] + acc[2][e];
        }
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int i = g + 8 * (e >> 1), j = 8 * nt + 2 * t + (e & 1);
            if (prod == 0) {
                s_L[i][j] = i > j ? s_b[i] * acc[0][e] : 0.0f;
            } else {
                const float m = i >= j ? p.scale * acc[0][e] : 0.0f;
                const uint16_t hi = pf_float_to_16(m, rec16);
                *(uint16_t *)(rec + PF_REC_MQK + (i * 16 + j) * 2) = hi;
                st_16(rec + PF_REC_MQK_LO, (uint32_t)(i * 16 + j) * 2, m - pf_16_to_float(hi, rec16), rec16);
            }
        }
    } else {
        if (nested) { /* level 8 >> w on warp w's tensor cores, the diagonal on warp 3 */
            prep_pair_zero_upper(s_L, rec);
            if (f16)
                prep_pair_level16(fq, fk, fg, s_L, s_b, rec, p.scale, 8 >> warp, lane, rec16);
            else
                prep_pair_level(fq, fk, fg, s_L, s_b, rec, p.scale, 8 >> warp, lane);
            if (warp == 3) prep_pair_self(fq, fk, s_L, s_b, rec, p.scale, lane, rec16);
        } else {
            prep_pairwise(fq, fk, fg, s_L, s_b, rec, p.scale, rec16);
        }
        __syncthreads();
        /* Kd from the tiles (not kept in registers across the call); fq's units are free for Kd's tile */
#pragma unroll
        for (int i = 0; i < 8; i++)
#pragma unroll
            for (int h = 0; h < 2; h++)
                kd[2 * i + h] = fk[(r0 + i) * 128 + c0 + h] * pf_exp2(fg[(r0 + i) * 128 + c0 + h]);
        prep_finish_tc(s_L, s_binv, s_b, kd, s_buf, rec, hf, c0, warp, lane, f16, rec16);
        return;
    }
    __syncthreads();
    if (gate_checked && !f16) { /* unit 0 (kc's) is dead after step 4: step 6's s_kd */
        prep_finish(s_L, s_binv, s_b, kd, (float *)s_buf[0], rec, hf, c0, warp, lane, rec16);
    } else if (gate_checked) { /* units 0 and 1 (kc's and ki's) are dead after step 4: Kd's tile */
        prep_finish_tc(s_L, s_binv, s_b, kd, s_buf, rec, hf, c0, warp, lane, f16, rec16);
    } else {
        /* step 6 on tensor cores from the centred keys still in shared memory (Kd = kc 2^Gref) */
        prep_inverse(s_L, s_binv, s_b, rec, warp, lane, rec16);
        __syncthreads();
        if (f16)
            prep_negw_mma(s_binv, s_buf[OP_KC], s_buf[OP_KC_LO], e_ref, rec, warp, lane, rec16, 1);
        else
            prep_negw_tf32(s_binv, s_buf[OP32_KC], e_ref, rec, warp, lane, 1);
    }
}

/* Every kernel has 6 units of s_buf (step 4's three tf32 operands, or the fp16 family's six bf16
 * terms, or the fp32 input tiles): 8 CTAs of them fit a Hopper SM's shared memory (the CUDA
 * prefill runs on sm_90 only).
 * CTAs per SM (6, 7 or 8, so 80, 72 or 64 registers a thread): each kernel takes the count that
 * ran fastest against its neighbours on the rows it serves, because the trade (fewer CTAs to hide
 * latency against spills under a tighter register cap) does not follow from the spill counts alone:
 *  - the bulk kernels 7: no spills unchecked (8 spilled a little and was slower); the checked one
 *    spills more at 7 than at 6 and is still faster;
 *  - the tile kernel 8 and the element kernels as first chosen (no row has asked again);
 *  - the checked tile kernel 6: 7 was slower;
 *  - the fp16 family 6: its bf16 term pairs double the operands held in registers, and at 8 the
 *    tile kernel spilled to a 96-byte stack inside the step loop; but its fp16 tile kernel 7, the
 *    bulk kernel's count, where it holds no spill (72 registers; 8 spills 84 bytes). */
#define PREP_KERNEL(name, load, gate_checked, f16, ctas)                          \
    __global__ void __launch_bounds__(PREP_THREADS, ctas) name(const pf_params p) \
    {                                                                             \
        __shared__ __align__(128) unsigned char s_buf[6][4096];                   \
        prep_chunk(p, load, gate_checked, f16, s_buf);                            \
    }
PREP_KERNEL(pf_prep_bulk, PF_LOAD_BF16, 0, 0, 7)
PREP_KERNEL(pf_prep_bulk_checked, PF_LOAD_BF16, 1, 0, 7)
PREP_KERNEL(pf_prep_tiles, PF_LOAD_TILES, 0, 0, 8)
PREP_KERNEL(pf_prep_tiles_checked, PF_LOAD_TILES, 1, 0, 6)
PREP_KERNEL(pf_prep_any, PF_LOAD_ELEMENTS, 0, 0, 8)
PREP_KERNEL(pf_prep_any_checked, PF_LOAD_ELEMENTS, 1, 0, 6)
/* The fp16 family (fp16 and fp32 q, k: never the bf16 tiles). */
PREP_KERNEL(pf_prep16_bulk, PF_LOAD_F16, 0, 1, 7)
PREP_KERNEL(pf_prep16_bulk_checked, PF_LOAD_F16, 1, 1, 6)
PREP_KERNEL(pf_prep16_tiles, PF_LOAD_TILES, 0, 1, 6)
PREP_KERNEL(pf_prep16_tiles_checked, PF_LOAD_TILES, 1, 1, 6)
PREP_KERNEL(pf_prep16_any, PF_LOAD_ELEMENTS, 0, 1, 6)
PREP_KERNEL(pf_prep16_any_checked, PF_LOAD_ELEMENTS, 1, 1, 6)
#undef PREP_KERNEL

cudaError_t pf_launch_prep(const pf_params *p, cudaStream_t stream)
{
    const int64_t used_slots = p->cu ? p->slots : p->N * p->chunks_per_row;
    if (used_slots <= 0 || p->HV <= 0) return cudaSuccess;
    if (used_slots > INT32_MAX || p->HV > 65535) return cudaErrorInvalidConfiguration; /* grid limits */
    dim3 grid((unsigned)used_slots, (unsigned)p->HV);
    /* Only the lower bound gate with lower_bound >= -5 is in range for every input; the checked
     * kernels also hold step 4', which exact_qk asks of every chunk. */
    const int checked = p->exact_qk ||
                        !(p->gate == FKDA_GATE_LOWER_BOUND && p->gate_scale >= -5.0f * 1.4426950408889634f);
    void (*kernel)(const pf_params) = p->qkg_load == PF_LOAD_BF16    ? (checked ? pf_prep_bulk_checked : pf_prep_bulk)
                                      : p->qkg_load == PF_LOAD_TILES ? (checked ? pf_prep_tiles_checked : pf_prep_tiles)
                                                                     : (checked ? pf_prep_any_checked : pf_prep_any);
    if (p->fp16_chain) /* q, k fp16 or fp32: the fp16 tiles, the fp32 tiles or the element loads */
        kernel = p->qkg_load == PF_LOAD_F16     ? (checked ? pf_prep16_bulk_checked : pf_prep16_bulk)
                 : p->qkg_load == PF_LOAD_TILES ? (checked ? pf_prep16_tiles_checked : pf_prep16_tiles)
                                                : (checked ? pf_prep16_any_checked : pf_prep16_any);
    void *args[] = {(void *)p};
    return fkda_launch_kernel((const void *)kernel, grid, dim3(PREP_THREADS), args, 0,
                              stream); /* this launch's error only (prefill_common.cuh) */
}

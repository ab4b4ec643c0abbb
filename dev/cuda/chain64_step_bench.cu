/*
 * chain64_step_bench.cu: the prefill chain's step on 64-token chunks, one warpgroup per 64 value
 * columns with wgmma, checked against a float64 reference and then timed. It asks whether a chain
 * of 64-token chunks (a quarter of the serial steps of today's 16-token chain, each with four
 * times the products) shortens the serial pass enough to carry the few-heads rows of the prefill
 * (T = 16384 H = 16, T = 65536 H = 8: one chain per 64 columns, nothing else to overlap with), and
 * what it costs per column at many heads. chain_step_bench.cu measured the 16-token step: ~400 ns
 * whatever the form, latency-bound (dev/cuda/README.md).
 *
 * The step (S is K x V with K = 128 keys; a warpgroup holds S^T, 64 value columns x 128 keys,
 * fp32, as an m64n128 accumulator; C = 64 tokens):
 *   U = bINV V - W S,   O = Qd S + Mqk U,   S' = diag(gamma) S + Kr^T U
 * with -W, Qd (C x 128), Kr (C x 128), bINV and Mqk (C x C, bf16 hi + lo) from the chunk's record
 * and V (C x 64 columns) bf16. In the transposed form (M = value columns), per chunk:
 *   group 1: U^T  = V^T bINV_lo^T + V^T bINV_hi^T + sum_kk S^T[:, kk] (-W)^T[kk]   16 x m64n64k16
 *   wait; U^T to bf16 (A fragments, k = tokens); S^T *= gamma
 *   group 3: S^T += U^T Kr                                                          4 x m64n128k16
 *   group 2: O^T  = S_old^T Qd^T + U^T Mqk_lo^T + U^T Mqk_hi^T                     16 x m64n64k16
 *   wait for group 3 only; the next chunk's bf16 state
 * The serial path is group 1's eight S products, the conversion, group 3 and the state's
 * conversion; group 2 is issued behind group 3, so the tensor pipe takes it while the chain
 * converts, and its output is stored in the next chunk once that chunk's group 1 is done (stored
 * between a wait for group 2 alone and the wait for group 1, ptxas serialized every wgmma of the
 * kernel: C7514).
 * Group 2 reads the old state's bf16 copy while the next copy is written, so the chain keeps two
 * copies (SA, SN) and runs two chunks an iteration, swapping them.
 *
 * Two forms, one body:
 *   wg64:       the step above, O in the chain;
 *   wg64_noout: without group 2, as a chain that writes its chunk states for another kernel to
 *               form O from (fla's split); the serial path alone.
 *
 * Record layout (every operand a K-major B of wgmma with 128-byte rows, 128B swizzle, at a
 * multiple of 1024 bytes; byte(n, k) of a 64-wide row block = n * 128 + ((((k >> 3) & 7) ^ (n & 7))
 * << 4) + (k & 7) * 2, the 8-row groups 1024 bytes apart (SBO)):
 *   -W, Qd: B = [n = token][k = key], two key halves of 64 rows x 128 bytes (8192 apart); k-step
 *           kk (keys 16kk..) starts at (kk >> 2) * 8192 + (kk & 3) * 32;
 *   Kr^T:   B = [n = key][k = token], 128 rows x 128 bytes; k-step kk (tokens 16kk..) at kk * 32;
 *   bINV, Mqk (hi, lo): B = [n = i][k = j] = X[i][j], 64 rows x 128 bytes; k-step kk at kk * 32;
 *   gamma:  128 fp32.
 * V sits in shared memory per warp as [token][16 values] bf16 rows of 32 bytes (32B swizzle, the
 * shipped v tile's layout, 64 rows), read as V^T A fragments by ldmatrix.trans.
 *
 * The host side (operands, float64 reference, checks, timing) follows chain_step_bench.cu's at 64
 * tokens a chunk, kept apart so that the shipped-step bench stays as it ran. As there, NREC
 * records and v tiles stay in shared memory for the whole run
 * (chunk c uses record c % NREC): no memory traffic, no ring barriers, no v loads. How to build
 * and run it: dev/cuda/README.md.
 */
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/cuda/ptx_mma.cuh"
#include "bench_host.h"
#include "record64.h"
#include "wgmma.cuh"

#define CT 64          /* tokens per chunk */
#define NREC 2         /* records (and v tiles) in shared memory; chunk c uses c % NREC */
#define OUT_RING 8     /* outputs kept in global memory: chunk c writes slot c % OUT_RING */
#define CHECK_CHUNKS 8 /* chunks of the full correctness check (even, <= OUT_RING) */
#define CHECK_COLS 256 /* value columns of the checked problem: 2 CTAs of 2 warpgroups */
#define VTILE 2048     /* a warp's v tile: 64 tokens x 16 values bf16, 32B-swizzled rows */
#define TOL 2.0e-2     /* pass bar: max |gpu - ref| / max |ref| (bf16 operands: ~1e-3) */

/* ---- device ---- */

typedef struct bench_args {
    const unsigned char *rec; /* NREC records */
    const unsigned char *v;   /* [global warp][NREC][VTILE] */
    const float *s0;          /* [global thread][64]: the start state in fragment order */
    float *s_out;             /* [global thread][64]: the state after the last chunk */
    float *o_out;             /* [OUT_RING][global thread][32]: the outputs of the last OUT_RING chunks */
    long long *cycles;        /* [warpgroup]: clock64 cycles of the chunk loop */
    int nch;                  /* chunk steps, even */
} bench_args;

static __device__ __forceinline__ unsigned char *smem_aligned(unsigned char *raw)
{
    return raw + ((1024u - (smem_addr(raw) & 1023u)) & 1023u);
}

static __device__ __forceinline__ uint64_t desc128(uint32_t saddr) { return wg_desc(saddr, 1024, WG_SWIZZLE_128B); }

/* o[4n + e] = (value g + 8 (e >> 1) of the warp's 16, token 8n + 2t + (e & 1)). */
static __device__ __forceinline__ void store_out(const bench_args *a, int c, const float o[32], int64_t gt,
                                                 int64_t nthr)
{
    if (c < a->nch - OUT_RING) return; /* every chunk in the checks; the last ones when timing */
    float4 *od = (float4 *)(a->o_out + ((int64_t)(c & (OUT_RING - 1)) * nthr + gt) * 32);
#pragma unroll
    for (int n = 0; n < 8; n++) od[n] = make_float4(o[4 * n], o[4 * n + 1], o[4 * n + 2], o[4 * n + 3]);
}

/* One chunk: reads the state's bf16 copy SA, leaves the next one in SN (the header comment).
 * va and up are the caller's, so that they keep registers of their own while a group that
 * reads them may still run. */
static __device__ __forceinline__ void wg64_step(const bench_args *a, int c, const unsigned char *s_rec,
                                                 const unsigned char *s_v, int warps, int warp, int lane, float S[64],
                                                 uint32_t SA[8][4], uint32_t SN[8][4], uint32_t va[4][4],
                                                 uint32_t up[4][4], float u[32], float o[32], int with_out, int64_t gt,
                                                 int64_t nthr)
{
    const int r = c & (NREC - 1), t = lane & 3;
    const uint32_t R = smem_addr(s_rec) + r * R_BYTES;
    const unsigned char *Rp = s_rec + r * R_BYTES;
    const unsigned char *VT = s_v + (r * warps + warp) * VTILE;
    {
        const int mi = lane >> 3, rr = lane & 7;
#pragma unroll
        for (int kk = 0; kk < 4; kk++)
            ldsm_x4_trans(va[kk], smem_addr(VT + swz32(16 * kk + rr + 8 * (mi >> 1), 8 * (mi & 1))));
    }
    /* Group 1: U^T = V^T bINV^T (lo, hi) + S^T (-W)^T. */
    wg_fence();
#pragma unroll
    for (int kk = 0; kk < 4; kk++) wg_mma_n64(u, va[kk], desc128(R + R_BINV_LO + kk * 32), kk > 0);
#pragma unroll
    for (int kk = 0; kk < 4; kk++) wg_mma_n64(u, va[kk], desc128(R + R_BINV + kk * 32), 1);
#pragma unroll
    for (int kk = 0; kk < 8; kk++) wg_mma_n64(u, SA[kk], desc128(R + R_NEGW + (kk >> 2) * 8192 + (kk & 3) * 32), 1);
    wg_commit();
    wg_wait0();
    wg_hold_frags(va, 4);
    wg_hold_frags(SA, 8);
#pragma unroll
    for (int i = 0; i < 32; i++) reg_fence_f(&u[i]);
    if (with_out && c > 0) { /* the previous chunk's group 2 is done too: store its output */
        wg_hold_frags(up, 4);
        wg_hold_frags(SN, 8); /* the previous chunk's SA */
#pragma unroll
        for (int i = 0; i < 32; i++) reg_fence_f(&o[i]);
        store_out(a, c - 1, o, gt, nthr);
    }
    wg_acc_to_frags(u, up, 4);
    wg_scale_state_keys(S, Rp + R_GAMMA, t);
    /* Group 3: S^T += U^T Kr; group 2 behind it: O^T = S_old^T Qd^T + U^T Mqk^T (lo, hi). */
    wg_fence();
#pragma unroll
    for (int kk = 0; kk < 4; kk++) wg_mma_n128(S, up[kk], desc128(R + R_KRT + kk * 32));
    wg_commit();
    if (with_out) {
#pragma unroll
        for (int kk = 0; kk < 8; kk++)
            wg_mma_n64(o, SA[kk], desc128(R + R_QD + (kk >> 2) * 8192 + (kk & 3) * 32), kk > 0);
#pragma unroll
        for (int kk = 0; kk < 4; kk++) wg_mma_n64(o, up[kk], desc128(R + R_MQK_LO + kk * 32), 1);
#pragma unroll
        for (int kk = 0; kk < 4; kk++) wg_mma_n64(o, up[kk], desc128(R + R_MQK + kk * 32), 1);
        wg_commit();
        wg_wait1();
    } else {
        wg_wait0();
        wg_hold_frags(up, 4);
    }
#pragma unroll
    for (int i = 0; i < 64; i++) reg_fence_f(&S[i]);
    wg_pack_state(S, SN);
}

static __device__ __forceinline__ void wg64_chain(const bench_args *a, int with_out)
{
    extern __shared__ unsigned char smem_raw[];
    unsigned char *smem = smem_aligned(smem_raw);
    const int warps = blockDim.x >> 5, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    unsigned char *s_rec = smem, *s_v = smem + NREC * R_BYTES;
    {
        const uint4 *src = (const uint4 *)a->rec;
        uint4 *dst = (uint4 *)s_rec;
        for (int i = threadIdx.x; i < NREC * R_BYTES / 16; i += blockDim.x) dst[i] = src[i];
        const uint4 *vsrc = (const uint4 *)a->v;
        uint4 *vdst = (uint4 *)s_v; /* [rec][warp][tile] */
        for (int i = threadIdx.x; i < NREC * warps * (VTILE / 16); i += blockDim.x) {
            const int q = i % (VTILE / 16), w = (i / (VTILE / 16)) % warps, r = i / (warps * (VTILE / 16));
            vdst[(r * warps + w) * (VTILE / 16) + q] =
                vsrc[(((int64_t)blockIdx.x * warps + w) * NREC + r) * (VTILE / 16) + q];
        }
        asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
        __syncthreads();
    }
    const int64_t gt = (int64_t)blockIdx.x * blockDim.x + threadIdx.x, nthr = (int64_t)gridDim.x * blockDim.x;
    float S[64]; /* S^T: S[4j + e] = (value 16 warp + g + 8 (e >> 1), key 8j + 2t + (e & 1)) */
#pragma unroll
    for (int j = 0; j < 16; j++) {
        const float4 x = ((const float4 *)(a->s0 + gt * 64))[j];
        S[4 * j] = x.x, S[4 * j + 1] = x.y, S[4 * j + 2] = x.z, S[4 * j + 3] = x.w;
    }
    uint32_t sa0[8][4], sa1[8][4], va[4][4], up[4][4];
    float u[32], o[32];
#pragma unroll
    for (int i = 0; i < 32; i++) u[i] = 0.0f, o[i] = 0.0f;
    wg_pack_state(S, sa0);
    const long long t0 = clock64();
    for (int c = 0; c < a->nch; c += 2) {
        wg64_step(a, c, s_rec, s_v, warps, warp, lane, S, sa0, sa1, va, up, u, o, with_out, gt, nthr);
        wg64_step(a, c + 1, s_rec, s_v, warps, warp, lane, S, sa1, sa0, va, up, u, o, with_out, gt, nthr);
    }
    if (with_out) {
        wg_wait0();
        wg_hold_frags(up, 4);
        wg_hold_frags(sa0, 8);
#pragma unroll
        for (int i = 0; i < 32; i++) reg_fence_f(&o[i]);
        store_out(a, a->nch - 1, o, gt, nthr);
    }
    const long long t1 = clock64();
#pragma unroll
    for (int j = 0; j < 16; j++)
        ((float4 *)(a->s_out + gt * 64))[j] = make_float4(S[4 * j], S[4 * j + 1], S[4 * j + 2], S[4 * j + 3]);
    if ((threadIdx.x & 127) == 0) a->cycles[gt >> 7] = t1 - t0;
}

/* A launch bound of 256 threads leaves up to 255 registers a thread (1-2 warpgroups an SM). Three
 * warpgroups (384 threads, 168 registers) made ptxas serialize every wgmma of the noout form for
 * lack of registers (C7512), so that run is not offered. */
__global__ void __launch_bounds__(256, 1) wg64_256(const bench_args a) { wg64_chain(&a, 1); }
__global__ void __launch_bounds__(256, 1) wg64_noout_256(const bench_args a) { wg64_chain(&a, 0); }

/* ---- host: data, reference, checks, timing ---- */

/* The logical operands (bf16 values held as floats, gamma fp32), shared by every column. */
typedef struct problem {
    int ncols;
    float negw[NREC][CT][128], kr[NREC][CT][128], qd[NREC][CT][128], gamma[NREC][128];
    float binv_hi[NREC][CT][CT], binv_lo[NREC][CT][CT], mqk_hi[NREC][CT][CT], mqk_lo[NREC][CT][CT];
    float *v;  /* [NREC][CT tokens][ncols] */
    float *s0; /* [ncols][128 keys]: S^T */
} problem;

/* Which operands are live: the diagnostics zero the others so that a failure names the product. */
enum { DATA_FULL = 0, DATA_QD_S, DATA_MQK_BINV_V, DATA_KR_GAMMA, DATA_W_S, DATA_COUNT };
static const char *data_name[DATA_COUNT] = {"full step", "O = Qd S only", "O = Mqk bINV V only",
                                            "S' = gamma S + Kr^T bINV V only", "O = Mqk (-W S) only"};

/* KDA-like operands: unit k rows, beta in [0.1, 0.3], -W = -diag(beta) k, Kr = k, Qd = 0.25 q,
 * gamma in [0.9, 1), bINV lower triangular with beta on the diagonal, Mqk = lower_incl(Qd k^T).
 * S -> (diag(gamma) - k^T diag(beta) k) S is a contraction: 64 random unit rows in 128 dimensions
 * give k^T k a largest eigenvalue of about (1 + sqrt(64 / 128))^2 ~ 2.9, times beta <= 0.3. */
static void problem_fill(problem *p, int ncols, int which, uint64_t seed)
{
    rng_state = seed;
    p->ncols = ncols;
    for (int r = 0; r < NREC; r++) {
        static double k[CT][128], q[CT][128];
        double beta[CT];
        for (int i = 0; i < CT; i++) {
            double nk = 0, nq = 0;
            for (int c = 0; c < 128; c++) {
                k[i][c] = nrand(), q[i][c] = nrand();
                nk += k[i][c] * k[i][c], nq += q[i][c] * q[i][c];
            }
            for (int c = 0; c < 128; c++) k[i][c] /= sqrt(nk), q[i][c] /= sqrt(nq);
            beta[i] = 0.1 + 0.2 * urand();
        }
        for (int i = 0; i < CT; i++)
            for (int c = 0; c < 128; c++) {
                p->negw[r][i][c] = rbf(-beta[i] * k[i][c]);
                p->kr[r][i][c] = rbf(k[i][c]);
                p->qd[r][i][c] = rbf(0.25 * q[i][c]);
            }
        for (int c = 0; c < 128; c++) p->gamma[r][c] = (float)(0.9 + 0.1 * urand());
        for (int i = 0; i < CT; i++)
            for (int j = 0; j < CT; j++) {
                const double b = i == j ? beta[i] : (j < i ? 0.2 * (urand() - 0.5) * beta[j] : 0.0);
                split_hi_lo(b, &p->binv_hi[r][i][j], &p->binv_lo[r][i][j]);
                double m = 0;
                if (j <= i)
                    for (int c = 0; c < 128; c++) m += (double)p->qd[r][i][c] * p->kr[r][j][c];
                split_hi_lo(m, &p->mqk_hi[r][i][j], &p->mqk_lo[r][i][j]);
            }
    }
    p->v = (float *)malloc(sizeof(float) * NREC * CT * ncols);
    p->s0 = (float *)malloc(sizeof(float) * ncols * 128);
    for (int i = 0; i < NREC * CT * ncols; i++) p->v[i] = rbf(2.0 * urand() - 1.0);
    for (int i = 0; i < ncols * 128; i++) p->s0[i] = (float)(urand() - 0.5);
    const int live_s0 = which != DATA_MQK_BINV_V;
    const int live_w = which == DATA_FULL || which == DATA_W_S;
    const int live_qd = which == DATA_FULL || which == DATA_QD_S;
    const int live_kr = which == DATA_FULL || which == DATA_KR_GAMMA;
    const int live_binv_v = which == DATA_FULL || which == DATA_MQK_BINV_V || which == DATA_KR_GAMMA;
    const int live_mqk = which == DATA_FULL || which == DATA_MQK_BINV_V || which == DATA_W_S;
    const int live_gamma = which == DATA_FULL || which == DATA_KR_GAMMA;
    for (int r = 0; r < NREC; r++) {
        for (int i = 0; i < CT; i++)
            for (int c = 0; c < 128; c++) {
                if (!live_w) p->negw[r][i][c] = 0.0f;
                if (!live_kr) p->kr[r][i][c] = 0.0f;
                if (!live_qd) p->qd[r][i][c] = 0.0f;
            }
        for (int c = 0; c < 128; c++)
            if (!live_gamma) p->gamma[r][c] = 1.0f;
        for (int i = 0; i < CT; i++)
            for (int j = 0; j < CT; j++) {
                if (!live_binv_v) p->binv_hi[r][i][j] = p->binv_lo[r][i][j] = 0.0f;
                if (!live_mqk) p->mqk_hi[r][i][j] = p->mqk_lo[r][i][j] = 0.0f;
            }
    }
    if (!live_binv_v) memset(p->v, 0, sizeof(float) * NREC * CT * ncols);
    if (!live_s0) memset(p->s0, 0, sizeof(float) * ncols * 128);
}

/* The NREC records in the layout of the header comment. */
static void build_records(const problem *p, unsigned char *buf)
{
    memset(buf, 0, (size_t)NREC * R_BYTES);
    for (int r = 0; r < NREC; r++) {
        unsigned char *R = buf + (size_t)r * R_BYTES;
        for (int i = 0; i < CT; i++)
            for (int c = 0; c < 128; c++) {
                put_bf16(R, R_NEGW + swz_tok_key(i, c), p->negw[r][i][c]); /* B[k = key c][n = token i] */
                put_bf16(R, R_QD + swz_tok_key(i, c), p->qd[r][i][c]);
                put_bf16(R, R_KRT + swz128(c, i), p->kr[r][i][c]); /* B[k = token i][n = key c], stored [n][k] */
            }
        memcpy(R + R_GAMMA, p->gamma[r], 512);
        for (int i = 0; i < CT; i++)
            for (int j = 0; j < CT; j++) { /* B[k = j][n = i] = X[i][j], stored [n][k] */
                put_bf16(R, R_BINV + swz128(i, j), p->binv_hi[r][i][j]);
                put_bf16(R, R_BINV_LO + swz128(i, j), p->binv_lo[r][i][j]);
                put_bf16(R, R_MQK + swz128(i, j), p->mqk_hi[r][i][j]);
                put_bf16(R, R_MQK_LO + swz128(i, j), p->mqk_lo[r][i][j]);
            }
    }
}

/* v tiles [global warp][NREC][VTILE]; warp gw holds columns 16 gw .. 16 gw + 15, taken modulo the
 * problem's columns (the timing runs have more columns than the checked problem). */
static void build_v_tiles(const problem *p, int nwarps, unsigned char *buf)
{
    for (int gw = 0; gw < nwarps; gw++)
        for (int r = 0; r < NREC; r++)
            for (int tok = 0; tok < CT; tok++)
                for (int vl = 0; vl < 16; vl++) {
                    const int col = (16 * gw + vl) % p->ncols;
                    put_bf16(buf + ((size_t)gw * NREC + r) * VTILE, swz32(tok, vl),
                             p->v[(r * CT + tok) * p->ncols + col]);
                }
}

/* Thread gt, state register i = 4j + e: (column 16 (gt / 32) + g + 8 (e >> 1), key 8j + 2t + (e & 1)). */
static void state_coord(int64_t gt, int i, int *col, int *key)
{
    const int lane = (int)(gt & 31), g = lane >> 2, t = lane & 3, j = i >> 2, e = i & 3;
    *col = (int)(16 * (gt >> 5)) + g + 8 * (e >> 1);
    *key = 8 * j + 2 * t + (e & 1);
}

/* Thread gt, output register i = 4n + e: (token 8n + 2t + (e & 1), column 16 (gt / 32) + g + 8 (e >> 1)). */
static void out_coord(int64_t gt, int i, int *tok, int *col)
{
    const int lane = (int)(gt & 31), g = lane >> 2, t = lane & 3, n = i >> 2, e = i & 3;
    *tok = 8 * n + 2 * t + (e & 1);
    *col = (int)(16 * (gt >> 5)) + g + 8 * (e >> 1);
}

/* float64 reference of nch steps: o_ref [nch][CT][ncols], s_ref [ncols][128] (S^T). */
static void reference(const problem *p, int nch, double *o_ref, double *s_ref)
{
    const int nc = p->ncols;
    for (int i = 0; i < nc * 128; i++) s_ref[i] = p->s0[i];
    for (int c = 0; c < nch; c++) {
        const int r = c % NREC;
        for (int col = 0; col < nc; col++) {
            double *S = s_ref + (size_t)col * 128, U[CT];
            for (int i = 0; i < CT; i++) {
                double x = 0;
                for (int j = 0; j < CT; j++)
                    x += ((double)p->binv_hi[r][i][j] + p->binv_lo[r][i][j]) * p->v[(r * CT + j) * nc + col];
                for (int k = 0; k < 128; k++) x += (double)p->negw[r][i][k] * S[k];
                U[i] = x;
            }
            for (int i = 0; i < CT; i++) {
                double x = 0;
                for (int k = 0; k < 128; k++) x += (double)p->qd[r][i][k] * S[k];
                for (int j = 0; j < CT; j++) x += ((double)p->mqk_hi[r][i][j] + p->mqk_lo[r][i][j]) * U[j];
                o_ref[((size_t)c * CT + i) * nc + col] = x;
            }
            for (int k = 0; k < 128; k++) {
                double x = (double)p->gamma[r][k] * S[k];
                for (int i = 0; i < CT; i++) x += (double)p->kr[r][i][k] * U[i];
                S[k] = x;
            }
        }
    }
}

typedef struct kernel_info {
    const char *name;
    int with_out;    /* 1: O formed in the chain */
    int max_threads; /* launch bound */
    void (*fn)(const bench_args);
    int regs, local_bytes;
} kernel_info;

static kernel_info kernels[] = {
    {"wg64", 1, 256, wg64_256, 0, 0},
    {"wg64_noout", 0, 256, wg64_noout_256, 0, 0},
};
#define NKERNELS ((int)(sizeof(kernels) / sizeof(kernels[0])))

/* What the kernel uses, but at least 120 KB, so that no SM holds two CTAs. */
static size_t smem_bytes(int threads)
{
    const size_t used = (size_t)NREC * R_BYTES + (size_t)NREC * (threads / 32) * VTILE + 1024;
    return used > 120 * 1024 ? used : 120 * 1024;
}

typedef struct device_bufs {
    unsigned char *rec, *v;
    float *s0, *s_out, *o_out;
    long long *cycles;
} device_bufs;

static float launch(const kernel_info *k, const device_bufs *d, int grid, int threads, int nch)
{
    bench_args a;
    a.rec = d->rec, a.v = d->v, a.s0 = d->s0, a.s_out = d->s_out, a.o_out = d->o_out, a.cycles = d->cycles;
    a.nch = nch;
    cudaEvent_t e0, e1;
    CUDA_OK(cudaEventCreate(&e0));
    CUDA_OK(cudaEventCreate(&e1));
    CUDA_OK(cudaEventRecord(e0));
    k->fn<<<grid, threads, smem_bytes(threads)>>>(a);
    CUDA_OK(cudaGetLastError());
    CUDA_OK(cudaEventRecord(e1));
    CUDA_OK(cudaEventSynchronize(e1));
    float ms = 0;
    CUDA_OK(cudaEventElapsedTime(&ms, e0, e1));
    CUDA_OK(cudaEventDestroy(e0));
    CUDA_OK(cudaEventDestroy(e1));
    return ms;
}

static void upload(const problem *p, const device_bufs *d, int64_t nthr)
{
    unsigned char *rec = (unsigned char *)malloc((size_t)NREC * R_BYTES);
    const int nwarps = (int)(nthr / 32);
    unsigned char *vt = (unsigned char *)calloc((size_t)nwarps * NREC, VTILE);
    float *s0 = (float *)malloc(sizeof(float) * nthr * 64);
    build_records(p, rec);
    build_v_tiles(p, nwarps, vt);
    for (int64_t gt = 0; gt < nthr; gt++)
        for (int i = 0; i < 64; i++) {
            int col, key;
            state_coord(gt, i, &col, &key);
            s0[gt * 64 + i] = p->s0[(col % p->ncols) * 128 + key];
        }
    CUDA_OK(cudaMemcpy(d->rec, rec, (size_t)NREC * R_BYTES, cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemcpy(d->v, vt, (size_t)nwarps * NREC * VTILE, cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemcpy(d->s0, s0, sizeof(float) * nthr * 64, cudaMemcpyHostToDevice));
    free(rec), free(vt), free(s0);
}

/* Runs kernel k on problem p for nch chunks (grid x threads / 2 columns) and compares with the
 * reference (O only where the kernel forms it); prints one line; returns 1 on pass. */
static int check(const kernel_info *k, const device_bufs *d, const problem *p, int which, int grid, int threads,
                 int nch)
{
    const int64_t nthr = (int64_t)grid * threads;
    const int nc = p->ncols;
    double *o_ref = (double *)malloc(sizeof(double) * nch * CT * nc),
           *s_ref = (double *)malloc(sizeof(double) * nc * 128);
    float *o_raw = (float *)malloc(sizeof(float) * OUT_RING * nthr * 32),
          *s_raw = (float *)malloc(sizeof(float) * nthr * 64);
    reference(p, nch, o_ref, s_ref);
    upload(p, d, nthr);
    CUDA_OK(cudaMemset(d->o_out, 0xFF, sizeof(float) * OUT_RING * nthr * 32)); /* NaN: an unwritten output fails */
    CUDA_OK(cudaMemset(d->s_out, 0xFF, sizeof(float) * nthr * 64));
    launch(k, d, grid, threads, nch);
    CUDA_OK(cudaMemcpy(o_raw, d->o_out, sizeof(float) * OUT_RING * nthr * 32, cudaMemcpyDeviceToHost));
    CUDA_OK(cudaMemcpy(s_raw, d->s_out, sizeof(float) * nthr * 64, cudaMemcpyDeviceToHost));

    double o_max = 0, o_err = 0, s_max = 0, s_err = 0, o0_err = 0;
    if (k->with_out)
        for (int c = 0; c < nch; c++)
            for (int64_t gt = 0; gt < nthr; gt++)
                for (int i = 0; i < 32; i++) {
                    int tok, col;
                    out_coord(gt, i, &tok, &col);
                    const double ref = o_ref[((size_t)c * CT + tok) * nc + col],
                                 got = o_raw[((size_t)(c & (OUT_RING - 1)) * nthr + gt) * 32 + i];
                    const double err = isnan(got) ? INFINITY : fabs(got - ref);
                    o_max = fmax(o_max, fabs(ref));
                    o_err = fmax(o_err, err);
                    if (c == 0) o0_err = fmax(o0_err, err);
                }
    for (int64_t gt = 0; gt < nthr; gt++)
        for (int i = 0; i < 64; i++) {
            int col, key;
            state_coord(gt, i, &col, &key);
            const double ref = s_ref[(size_t)col * 128 + key], got = s_raw[gt * 64 + i];
            s_max = fmax(s_max, fabs(ref));
            s_err = fmax(s_err, isnan(got) ? INFINITY : fabs(got - ref));
        }
    const double ro = o_err / (o_max > 0 ? o_max : 1.0), rs = s_err / (s_max > 0 ? s_max : 1.0);
    const double ro0 = o0_err / (o_max > 0 ? o_max : 1.0);
    const int pass = ro < TOL && rs < TOL;
    if (k->with_out)
        printf("  %-12s %-33s %d x %-3d %6d  %9.2e  %9.2e  %9.2e  %s\n", k->name, data_name[which], grid, threads, nch,
               ro0, ro, rs, pass ? "pass" : "FAIL");
    else
        printf("  %-12s %-33s %d x %-3d %6d  %9s  %9s  %9.2e  %s\n", k->name, data_name[which], grid, threads, nch, "-",
               "-", rs, pass ? "pass" : "FAIL");
    free(o_ref), free(s_ref), free(o_raw), free(s_raw);
    return pass;
}

int main(int argc, char **argv)
{
    int nch_time = argc > 1 ? atoi(argv[1]) : 2048;
    if (nch_time < 2) {
        fprintf(stderr, "usage: %s [64-token chunk steps per timed run, even, default 2048]\n", argv[0]);
        return 2;
    }
    nch_time &= ~1;
    int dev = 0, nsm = 0;
    CUDA_OK(cudaGetDevice(&dev));
    CUDA_OK(cudaDeviceGetAttribute(&nsm, cudaDevAttrMultiProcessorCount, dev));
    cudaDeviceProp prop;
    CUDA_OK(cudaGetDeviceProperties(&prop, dev));
    printf("device: %s, %d SMs, compute capability %d.%d\n", prop.name, nsm, prop.major, prop.minor);
    if (prop.major != 9 || prop.minor != 0) {
        fprintf(stderr, "needs an sm_90 device (wgmma, built for sm_90a)\n");
        return 2;
    }
    printf("\nkernels (registers per thread; local = stack + spills, bytes per thread):\n");
    for (int i = 0; i < NKERNELS; i++) {
        cudaFuncAttributes fa;
        CUDA_OK(cudaFuncGetAttributes(&fa, kernels[i].fn));
        kernels[i].regs = fa.numRegs;
        kernels[i].local_bytes = (int)fa.localSizeBytes;
        CUDA_OK(cudaFuncSetAttribute(kernels[i].fn, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                     (int)smem_bytes(kernels[i].max_threads)));
        printf("  %-12s %3d registers, %3d local bytes, launch bound %d threads\n", kernels[i].name, fa.numRegs,
               (int)fa.localSizeBytes, kernels[i].max_threads);
    }

    const int64_t max_thr = (int64_t)(nsm > 2 ? nsm : 2) * 256;
    device_bufs d;
    CUDA_OK(cudaMalloc(&d.rec, (size_t)NREC * R_BYTES));
    CUDA_OK(cudaMalloc(&d.v, (size_t)(max_thr / 32) * NREC * VTILE));
    CUDA_OK(cudaMalloc(&d.s0, sizeof(float) * max_thr * 64));
    CUDA_OK(cudaMalloc(&d.s_out, sizeof(float) * max_thr * 64));
    CUDA_OK(cudaMalloc(&d.o_out, sizeof(float) * OUT_RING * max_thr * 32));
    CUDA_OK(cudaMalloc(&d.cycles, sizeof(long long) * (max_thr / 128)));

    printf("\ncorrectness against a float64 reference on the same bf16 operands (pass: max |err| / max |ref| < %.0e\n"
           "for O over all chunks and for the final S; 'O chunk 0' is the first chunk's output alone; the\n"
           "noout forms check S only):\n",
           TOL);
    printf("  %-12s %-33s %-7s %6s  %9s  %9s  %9s\n", "kernel", "data", "grid", "chunks", "O chunk 0", "O", "S");
    int all_pass = 1, kernel_pass[NKERNELS];
    for (int i = 0; i < NKERNELS; i++) kernel_pass[i] = 1;
    problem *p = (problem *)malloc(sizeof(problem));
    /* Diagnostics: two chunks with one product family live (two: the loop runs chunks in pairs),
     * then the full step over CHECK_CHUNKS chunks; 2 CTAs of 256 threads (CHECK_COLS columns). */
    for (int which = 1; which < DATA_COUNT; which++) {
        problem_fill(p, CHECK_COLS, which, 1000 + which);
        for (int i = 0; i < NKERNELS; i++) {
            const int ok = check(&kernels[i], &d, p, which, 2, 256, 2);
            kernel_pass[i] &= ok;
            all_pass &= ok;
        }
        free(p->v), free(p->s0);
    }
    problem_fill(p, CHECK_COLS, DATA_FULL, 7);
    for (int i = 0; i < NKERNELS; i++) {
        const int ok = check(&kernels[i], &d, p, DATA_FULL, 2, 256, CHECK_CHUNKS);
        kernel_pass[i] &= ok;
        all_pass &= ok;
    }
    free(p->v), free(p->s0);

    printf("\ntiming: %d CTAs (one per SM), %d chunk steps of %d tokens per chain, best of 3 runs:\n", nsm, nch_time,
           CT);
    printf("  step ns: kernel time / steps; cycles: clock64 around the chunk loop, mean over chains, / steps;\n"
           "  ns/16tok: step ns / 4, to set beside chain_step_bench's 16-token steps at the same columns;\n"
           "  ns/16tok/16col: the SM's cost of 16 tokens of 16 value columns\n");
    printf("  %-12s %-14s %8s %9s %9s %9s %14s  %s\n", "kernel", "chains/SM", "cols/SM", "step ns", "cycles",
           "ns/16tok", "ns/16tok/16col", "check");
    problem_fill(p, CHECK_COLS, DATA_FULL, 11);
    upload(p, &d, max_thr);
    free(p->v), free(p->s0);
    const struct {
        int kernel, chains;
    } runs[] = {{0, 1}, {0, 2}, {1, 1}, {1, 2}};
    for (size_t ri = 0; ri < sizeof(runs) / sizeof(runs[0]); ri++) {
        const kernel_info *k = &kernels[runs[ri].kernel];
        const int chains = runs[ri].chains, threads = chains * 128, cols = chains * 64;
        char label[32];
        snprintf(label, sizeof label, "%d %s", chains, chains > 1 ? "warpgroups" : "warpgroup");
        int nb = 0;
        CUDA_OK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&nb, k->fn, threads, smem_bytes(threads)));
        if (nb < 1) {
            printf("  %-12s %-14s %8d   not run: %d threads at %d registers do not fit an SM\n", k->name, label, cols,
                   threads, k->regs);
            continue;
        }
        launch(k, &d, nsm, threads, 64); /* warm-up */
        float best = 1e30f;
        double cyc = 0;
        for (int rep = 0; rep < 3; rep++) {
            const float ms = launch(k, &d, nsm, threads, nch_time);
            if (ms < best) {
                best = ms;
                const int nchains = nsm * chains;
                long long *cy = (long long *)malloc(sizeof(long long) * nchains);
                CUDA_OK(cudaMemcpy(cy, d.cycles, sizeof(long long) * nchains, cudaMemcpyDeviceToHost));
                double sum = 0;
                for (int i = 0; i < nchains; i++) sum += (double)cy[i];
                cyc = sum / nchains / nch_time;
                free(cy);
            }
        }
        const double step_ns = best * 1e6 / nch_time;
        printf("  %-12s %-14s %8d %9.1f %9.1f %9.1f %14.2f  %s\n", k->name, label, cols, step_ns, cyc, step_ns / 4,
               step_ns / 4 / (cols / 16), kernel_pass[runs[ri].kernel] ? "passed" : "FAILED");
    }
    printf("\n%s\n",
           all_pass ? "ALL CHECKS PASSED" : "SOME CHECKS FAILED (timings of a failed kernel are not trustworthy)");
    free(p);
    cudaFree(d.rec), cudaFree(d.v), cudaFree(d.s0), cudaFree(d.s_out), cudaFree(d.o_out), cudaFree(d.cycles);
    return all_pass ? 0 : 1;
}

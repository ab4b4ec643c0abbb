/*
 * chain_step_bench.cu: the prefill chain's chunk step in three forms, checked against a float64
 * reference and then timed, to decide whether a wgmma chain, or a chain split over key quarters,
 * is worth building:
 *   (a) "mma":   mma.sync m16n8k16, one warp per 16 value columns (the step of
 *                src/cuda/prefill_chain.cu, simplified: no ring, no v loads, no output tile);
 *   (b) "wgmma": wgmma, one warpgroup (4 warps) per 64 value columns, in the transposed form
 *                where M = value columns;
 *   (c) "ksplit": mma.sync again, 4 warps per 16 value columns, each holding a quarter of the
 *                state's keys and exchanging the products' key-partial sums (ks_chain).
 * How to build, run and read it: dev/cuda/README.md.
 *
 * The step (S is K x V with K = 128 keys; the chains hold S^T, value columns x keys, in fp32):
 *   U = bINV V - W S,   O = Qd S + Mqk U,   S' = diag(gamma) S + Kr^T U
 * with -W, Kr, Qd 16 x 128 bf16 tiles, bINV and Mqk 16 x 16 bf16 hi + lo pairs, gamma 128 fp32,
 * V 16 tokens x the chain's columns in bf16. S and U are rounded to bf16 as operands, as in the
 * shipped chain. The same NREC records (and v tiles) sit in shared memory for the whole run and
 * chunk c uses record c % NREC, so memory traffic is not what is measured.
 *
 * ---- Layout reasoning for the wgmma form (what the diagnostics of the correctness run check) ----
 *
 * Register fragments (PTX ISA, "Matrix Fragments for wgmma.mma_async.m64nNk16"); a warpgroup is
 * 4 consecutive warps starting at a warp index that is a multiple of 4; warp w (0..3) of it owns
 * rows 16w..16w+15 of A and D; lane = 4 g + t.
 *   D (m64nN, f32, N/2 registers): d[4j + e] = row 16w + g + 8 (e >> 1), column 8j + 2t + (e & 1).
 *     That is, per warp, exactly N/8 side-by-side accumulators of mma.sync m16n8 (ptx_mma.cuh).
 *   A (m64nNk16, bf16, 4 registers of 2): a0 = (row g, k 2t..2t+1), a1 = (row g+8, k 2t..),
 *     a2 = (row g, k 2t+8..), a3 = (row g+8, k 2t+8..): mma.sync m16n8k16's A layout per warp.
 *   So columns 16kk..16kk+15 of a D accumulator, packed in register order
 *     {pack(d[8kk], d[8kk+1]), pack(d[8kk+2], d[8kk+3]), pack(d[8kk+4], d[8kk+5]), pack(d[8kk+6], d[8kk+7])}
 *   are the A fragment of k-step kk (FlashAttention-3 turns P into the A operand the same way),
 *   and the state's fragment order S[4j + e] is the same as the mma.sync chain's S[j][e]: the host
 *   maps thread gt, register i to (value column 16 (gt / 32) + g + 8 (e >> 1), key 8j + 2t + (e & 1))
 *   for both forms.
 *
 * Shared-memory operands (B only; every B here is K-major, "N x K, K contiguous", imm-trans-b = 0):
 *   Descriptor (64 bits): [0,14) start address >> 4, [16,30) leading byte offset >> 4,
 *   [32,46) stride byte offset >> 4, [49,52) base offset (0: every tile is aligned to its swizzle
 *   period), [62,64) swizzle: 1 = 128B, 3 = 32B. For swizzled K-major layouts the leading byte
 *   offset is not used (set to 1); the stride byte offset (SBO) is the distance between
 *   consecutive groups of 8 rows (N direction). The hardware swizzle is a function of the
 *   shared-memory address: 128B XORs address bits [4,7) with bits [7,10) (period 1024 bytes),
 *   32B XORs bit 4 with bit 7 (period 256 bytes).
 *   - 128B swizzle, for the 16 x 128 tiles (-W and Qd as B = [token n][key k], K = keys): the
 *     canonical K-major atom is 8 rows of 128 bytes (64 keys); the tile is two key halves of 2048
 *     bytes, each 16 rows x 128 bytes (two atoms, SBO = 1024):
 *       byte(n, k) = (k >> 6) * 2048 + n * 128 + ((((k >> 3) & 7) ^ (n & 7)) << 4) + (k & 7) * 2
 *     (address bits [7,10) of row n are n & 7 because the tile starts at a multiple of 1024). The
 *     k-step kk (keys 16kk..16kk+15) starts at (kk >> 2) * 2048 + (kk & 3) * 32: inside an atom
 *     the hardware adds the row offset to that start and applies the XOR to the sum, so the
 *     32-byte step lands on the swizzled units (the way Hopper GEMMs advance along K).
 *     NOTE: the shipped record stores these tiles as [16 rows][256 bytes] with unit j of row r at
 *     j ^ (r & 7): same bytes per row but a 256-byte row pitch, which no wgmma swizzle mode
 *     describes (128B needs 128-byte rows). A wgmma chain needs the prep to write the halves
 *     apart as above (same 4096 bytes; ldmatrix reads would work on either).
 *   - 32B swizzle, for tiles whose K is 16 tokens (32 bytes per row): bINV^T and Mqk^T as
 *     B = [n = row i][k = column j] of bINV / Mqk (16 rows), and Kr^T as B = [n = key][k = token]
 *     (128 rows; B = Kr, K = tokens, N = keys). Atom 8 rows x 32 bytes, SBO = 256:
 *       byte(n, k) = n * 32 + ((((k >> 3) & 1) ^ ((n >> 2) & 1)) << 4) + (k & 7) * 2
 *     which is the shipped pf_swz16 layout of the v tiles. NOTE: the shipped record stores Kr as
 *     [token][key] (N-major for this B) and bINV, Mqk unswizzled; a wgmma chain needs Kr^T and the
 *     32B swizzle (or an N-major descriptor, imm-trans-b = 1, not tried here).
 *
 * The wgmma step per warpgroup and chunk (u, o: m64n16 accumulators, 8 registers; S: m64n128, 64):
 *   va = V^T fragment by ldmatrix.trans (each warp its own 16 columns, as the shipped chain)
 *   fence; group 1: u  = V^T bINV_lo^T + V^T bINV_hi^T + sum_kk S^T[:, kk] (-W)^T[kk]  (10 x n16)
 *          group 2: o  = sum_kk S^T[:, kk] Qd^T[kk]                                    (8 x n16)
 *   wait(1): u done; up = bf16(u) as an A fragment; S *= gamma (while group 2 runs)
 *   fence; group 3: S += U^T Kr (1 x m64n128k16), o += U^T Mqk_lo^T + U^T Mqk_hi^T (2 x n16)
 *   wait(0); store o; sa = bf16(S) for the next chunk
 * Asynchrony rules followed: wgmma.fence before the first wgmma of each chunk and after any
 * register write to an A fragment or an accumulator (the S scaling, up, sa); accumulators are not
 * read before the wait that covers them, and an empty volatile asm on each accumulator register
 * after the wait keeps the compiler from moving those reads above it. The synthetic data is
 * written to shared memory by ordinary stores, so fence.proxy.async precedes the first wgmma.
 */
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/cuda/ptx_mma.cuh"
#include "bench_host.h"
#include "wgmma.cuh"

#define NREC 4          /* records (and v tiles) in shared memory; chunk c uses c % NREC */
#define OUT_RING 16     /* outputs kept in global memory: chunk c writes slot c % OUT_RING */
#define CHECK_CHUNKS 16 /* chunks of the full correctness check (<= OUT_RING: every output kept) */
#define CHECK_COLS 512  /* value columns of the checked problem: 2 CTAs of 512 threads */
#define TILE16 512      /* a warp's v tile: 16 tokens x 16 values bf16, 32B-swizzled rows */
#define TOL 2.0e-2      /* pass bar: max |gpu - ref| / max |ref|; bf16 operands give ~1e-3 */

/* The mma form's record: the shipped layout (src/cuda/prefill_common.cuh, PF_REC_*). */
#define MR_NEGW 0
#define MR_KR 4096
#define MR_GAMMA 8192
#define MR_BINV 8704
#define MR_BINV_LO 9216
#define MR_MQK 9728
#define MR_MQK_LO 10240
#define MR_QD 10752
#define MR_BYTES 14848

/* The wgmma form's record: same contents, the layouts of the header comment; each record
 * starts at a multiple of 1024 (the 128B swizzle period), so 512 bytes of padding. */
#define WR_NEGW 0        /* (-W) as B = [token][key], 128B swizzle, two key halves */
#define WR_QD 4096       /* Qd, same layout */
#define WR_KRT 8192      /* Kr^T as B = [key][token], 32B swizzle, 128 rows */
#define WR_GAMMA 12288   /* gamma [128] fp32 */
#define WR_BINV 12800    /* bINV as B = [i][j], 32B swizzle, high terms */
#define WR_BINV_LO 13312 /*                               low terms */
#define WR_MQK 13824     /* Mqk as B = [i][j], 32B swizzle, high terms */
#define WR_MQK_LO 14336  /*                               low terms */
#define WR_BYTES 15360

/* ---- layouts (host and device) ---- */

/* Shipped 16 x 128 tile: row pitch 256, 16-byte unit j of row r at j ^ (r & 7). */
static __host__ __device__ __forceinline__ uint32_t swz_ship128(int row, int col)
{
    return (uint32_t)(row * 256 + ((((col >> 3) ^ (row & 7))) << 4) + ((col & 7) << 1));
}

/* 32-byte rows, 32B swizzle (= pf_swz16 for 16 rows; any number of rows). */
static __host__ __device__ __forceinline__ uint32_t swz32(int row, int col)
{
    return (uint32_t)(row * 32 + ((((col >> 3) & 1) ^ ((row >> 2) & 1)) << 4) + ((col & 7) << 1));
}

/* wgmma K-major 128B swizzle for 16 rows x 128 keys: two 64-key halves of 16 x 128 bytes. */
static __host__ __device__ __forceinline__ uint32_t swz128_kmajor(int row, int key)
{
    return (uint32_t)((key >> 6) * 2048 + row * 128 + ((((key >> 3) & 7) ^ (row & 7)) << 4) + ((key & 7) << 1));
}

/* ---- device: the chains ---- */

typedef struct bench_args {
    const unsigned char *rec; /* NREC records in the form's layout (MR_BYTES or WR_BYTES each) */
    const unsigned char *v;   /* [global warp][NREC][TILE16]: each warp's 16 value columns */
    const float *s0;          /* [global thread][64]: the start state in fragment order */
    float *s_out;             /* [global thread][64]: the state after the last chunk */
    float *o_out;             /* [OUT_RING][global thread][8]: outputs in fragment order, of the last
                                 OUT_RING chunks only (a timed run stores no more: memory traffic
                                 would be 16 KB per SM and step, near L2's bandwidth) */
    long long *cycles;        /* [chain]: clock64 cycles of the chunk loop */
    int nch;                  /* chunk steps */
} bench_args;

/* Copies the records and this CTA's v tiles into shared memory (the tiles as [rec][warp][tile]),
 * then makes them visible to the async proxy (wgmma reads shared memory through it). */
static __device__ __forceinline__ void stage_inputs(const bench_args *a, unsigned char *s_rec, int rec_bytes,
                                                    unsigned char *s_v)
{
    const int warps = blockDim.x >> 5;
    const uint4 *src = (const uint4 *)a->rec;
    uint4 *dst = (uint4 *)s_rec;
    for (int i = threadIdx.x; i < NREC * rec_bytes / 16; i += blockDim.x) dst[i] = src[i];
    const uint4 *vsrc = (const uint4 *)a->v;
    uint4 *vdst = (uint4 *)s_v;
    for (int i = threadIdx.x; i < NREC * warps * (TILE16 / 16); i += blockDim.x) {
        const int q = i % (TILE16 / 16), w = (i / (TILE16 / 16)) % warps, r = i / (warps * (TILE16 / 16));
        vdst[(r * warps + w) * (TILE16 / 16) + q] =
            vsrc[(((int64_t)blockIdx.x * warps + w) * NREC + r) * (TILE16 / 16) + q];
    }
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
    __syncthreads();
}

/* The dynamic shared memory, moved up to a multiple of 1024 bytes (the launch adds 1024). */
static __device__ __forceinline__ unsigned char *smem_aligned(unsigned char *raw)
{
    return raw + ((1024u - (smem_addr(raw) & 1023u)) & 1023u);
}

/* The A fragment of one 16-key k-step of the state S^T (the mma forms' S[2kk], S[2kk + 1]),
 * packed to bf16. */
static __device__ __forceinline__ void pack_state_kstep(const float lo[4], const float hi[4], uint32_t sa[4])
{
    sa[0] = pack_bf16x2(lo[0], lo[1]);
    sa[1] = pack_bf16x2(lo[2], lo[3]);
    sa[2] = pack_bf16x2(hi[0], hi[1]);
    sa[3] = pack_bf16x2(hi[2], hi[3]);
}

/* U0^T = V^T bINV^T (hi + lo) of a warp's 16 value columns, A = V^T by a transposed load of the
 * [token][value] tile VT; the two token tiles of the result in u (the mma forms). */
static __device__ __forceinline__ void step_u0(const unsigned char *R, const unsigned char *VT, int lane, float u[2][4])
{
    const float zero4[4] = {0.f, 0.f, 0.f, 0.f};
    uint32_t va[4], bh[4], bl[4];
    const int mi = lane >> 3, rr = lane & 7;
    ldsm_x4_trans(va, smem_addr(VT + swz32(rr + 8 * (mi >> 1), 8 * (mi & 1))));
    const uint32_t boff = ((lane & 7) + 8 * (lane >> 4)) * 32 + ((lane >> 3) & 1) * 16;
    ldsm_x4(bh, smem_addr(R + MR_BINV + boff));
    ldsm_x4(bl, smem_addr(R + MR_BINV_LO + boff));
    mma_bf16_16816(u[0], va, bl[0], bl[1], zero4);
    mma_bf16_16816(u[1], va, bl[2], bl[3], zero4);
    mma_bf16_16816(u[0], va, bh[0], bh[1], u[0]);
    mma_bf16_16816(u[1], va, bh[2], bh[3], u[1]);
}

/* (a) mma.sync: one warp per 16 value columns, the step of src/cuda/prefill_chain.cu. */
static __device__ __forceinline__ void mma_chain(const bench_args *a)
{
    extern __shared__ unsigned char smem_raw[];
    unsigned char *smem = smem_aligned(smem_raw);
    const int warps = blockDim.x >> 5, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int t = lane & 3;
    unsigned char *s_rec = smem, *s_v = smem + NREC * MR_BYTES;
    stage_inputs(a, s_rec, MR_BYTES, s_v);
    const int64_t gt = (int64_t)blockIdx.x * blockDim.x + threadIdx.x, nthr = (int64_t)gridDim.x * blockDim.x;

    float S[16][4];
#pragma unroll
    for (int j = 0; j < 16; j++) {
        const float4 x = ((const float4 *)(a->s0 + gt * 64))[j];
        S[j][0] = x.x, S[j][1] = x.y, S[j][2] = x.z, S[j][3] = x.w;
    }
    uint32_t sa[8][4];
#define MMA_PACK_STATE() \
    _Pragma("unroll") for (int kk = 0; kk < 8; kk++) pack_state_kstep(S[2 * kk], S[2 * kk + 1], sa[kk])
    MMA_PACK_STATE();
    const float zero4[4] = {0.f, 0.f, 0.f, 0.f};

    const long long t0 = clock64();
    for (int c = 0; c < a->nch; c++) {
        const int r = c & (NREC - 1);
        const unsigned char *R = s_rec + r * MR_BYTES;
        const unsigned char *VT = s_v + (r * warps + warp) * TILE16;

        /* S^T (-W)^T in four 4-deep chains (token tile x key half). */
        float vn[2][2][4];
#pragma unroll
        for (int kk = 0; kk < 8; kk++) {
            uint32_t wb[4];
            ldsm_x4(wb, smem_addr(R + MR_NEGW +
                                  swz_ship128((lane & 7) + 8 * (lane >> 4), 16 * kk + 8 * ((lane >> 3) & 1))));
            float(*acc)[4] = vn[kk >> 2];
            mma_bf16_16816(acc[0], sa[kk], wb[0], wb[1], (kk & 3) ? acc[0] : zero4);
            mma_bf16_16816(acc[1], sa[kk], wb[2], wb[3], (kk & 3) ? acc[1] : zero4);
        }

        /* U0^T = V^T bINV^T (hi + lo). */
        float u[2][4];
        step_u0(R, VT, lane, u);

        /* S^T diag(gamma) (sa still holds the old state). */
#pragma unroll
        for (int j = 0; j < 16; j++) {
            const float2 gm = *(const float2 *)(R + MR_GAMMA + (8 * j + 2 * t) * 4);
            S[j][0] *= gm.x;
            S[j][1] *= gm.y;
            S[j][2] *= gm.x;
            S[j][3] *= gm.y;
        }

        /* Vnew^T in bf16: A fragment (m = values, k = tokens), and B fragments of Mqk Vnew. */
        uint32_t vp[4];
#pragma unroll
        for (int e = 0; e < 2; e++) {
            vp[2 * e] = pack_bf16x2(u[e][0] + (vn[0][e][0] + vn[1][e][0]), u[e][1] + (vn[0][e][1] + vn[1][e][1]));
            vp[2 * e + 1] = pack_bf16x2(u[e][2] + (vn[0][e][2] + vn[1][e][2]), u[e][3] + (vn[0][e][3] + vn[1][e][3]));
        }

        /* S^T += Vnew^T Kr (B = Kr by transposed loads: k = tokens, n = keys). */
#pragma unroll
        for (int m = 0; m < 8; m++) {
            uint32_t kb[4];
            ldsm_x4_trans(
                kb, smem_addr(R + MR_KR + swz_ship128((lane & 7) + 8 * ((lane >> 3) & 1), 16 * m + 8 * (lane >> 4))));
            mma_bf16_16816(S[2 * m], vp, kb[0], kb[1], S[2 * m]);
            mma_bf16_16816(S[2 * m + 1], vp, kb[2], kb[3], S[2 * m + 1]);
        }

        /* O = Qd S + Mqk Vnew (Mqk as hi + lo), in four chains. */
        float o[2][4], oh[2][4];
#pragma unroll
        for (int kk = 0; kk < 8; kk++) {
            uint32_t qa[4];
            ldsm_x4(qa,
                    smem_addr(R + MR_QD + swz_ship128((lane & 7) + 8 * ((lane >> 3) & 1), 16 * kk + 8 * (lane >> 4))));
            float(*acc)[4] = kk < 4 ? o : oh;
            mma_bf16_16816(acc[0], qa, sa[kk][0], sa[kk][2], (kk & 3) ? acc[0] : zero4);
            mma_bf16_16816(acc[1], qa, sa[kk][1], sa[kk][3], (kk & 3) ? acc[1] : zero4);
        }
        {
            uint32_t mh[4], ml[4];
            const uint32_t moff = ((lane & 7) + 8 * ((lane >> 3) & 1)) * 32 + (lane >> 4) * 16;
            ldsm_x4(mh, smem_addr(R + MR_MQK + moff));
            ldsm_x4(ml, smem_addr(R + MR_MQK_LO + moff));
            mma_bf16_16816(o[0], ml, vp[0], vp[2], o[0]);
            mma_bf16_16816(o[1], ml, vp[1], vp[3], o[1]);
            mma_bf16_16816(oh[0], mh, vp[0], vp[2], oh[0]);
            mma_bf16_16816(oh[1], mh, vp[1], vp[3], oh[1]);
        }
        if (c >= a->nch - OUT_RING) { /* every chunk in the checks; the last ones when timing */
            float4 *od = (float4 *)(a->o_out + ((int64_t)(c & (OUT_RING - 1)) * nthr + gt) * 8);
            od[0] = make_float4(o[0][0] + oh[0][0], o[0][1] + oh[0][1], o[0][2] + oh[0][2], o[0][3] + oh[0][3]);
            od[1] = make_float4(o[1][0] + oh[1][0], o[1][1] + oh[1][1], o[1][2] + oh[1][2], o[1][3] + oh[1][3]);
        }

        MMA_PACK_STATE();
    }
    const long long t1 = clock64();
#undef MMA_PACK_STATE
#pragma unroll
    for (int j = 0; j < 16; j++) ((float4 *)(a->s_out + gt * 64))[j] = make_float4(S[j][0], S[j][1], S[j][2], S[j][3]);
    if (lane == 0) a->cycles[gt >> 5] = t1 - t0;
}

/* (c) key split: KS warps per 16 value columns, warp q of a chain holding the state's keys
 * 32q..32q+31 (S^T as 4 of the mma form's 16 key octets). Per chunk each warp forms its keys'
 * parts of S^T (-W)^T and of O = Qd S from the old state (4 mma each) and writes both to shared
 * memory, then U0 = V^T bINV^T (4 mma, in every warp) while the other warps' parts arrive; the
 * chain's 4 warps meet at one named barrier; every warp sums the -W S parts in one order (the same
 * Vnew bits in every warp) and updates its keys (4 mma), and warp 0 adds Mqk Vnew (4 mma) and the
 * O parts and stores the output. Per warp and chunk 16 mma (warp 0: 20) where the mma form's warp
 * issues 56, and one exchange on the step's serial path: whether that makes a lone chain's step
 * shorter is what this form is for (docs/history/prefill.md, "The chain's step split over key
 * quarters"). The exchange alternates between two buffers by chunk parity: a buffer is written
 * again two chunks later, after the next chunk's barrier, which every reader of it has passed. Its
 * layout, [kind][q][token tile][lane] of float4, keeps each float4 access of a warp on 512
 * consecutive bytes (no bank conflict). */
#define KS 4                                  /* warps per chain (key quarters of 32 keys) */
#define KS_X_BYTES (2 * 2 * KS * 2 * 32 * 16) /* a chain's exchange: [parity][kind][q][n][lane] float4 */
static __device__ __forceinline__ void bar_sync_named(int id, int threads)
{
    asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(threads) : "memory");
}

static __device__ __forceinline__ void ks_chain(const bench_args *a)
{
    extern __shared__ unsigned char smem_raw[];
    unsigned char *smem = smem_aligned(smem_raw);
    const int warps = blockDim.x >> 5, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int t = lane & 3, q = warp % KS, grp = warp / KS, chains = warps / KS;
    /* whole chains only, and one named barrier each among ids 1..15 (0 is __syncthreads) */
    if (warps % KS != 0 || chains > 15) __trap();
    unsigned char *s_rec = smem, *s_v = smem + NREC * MR_BYTES;
    stage_inputs(a, s_rec, MR_BYTES, s_v); /* each warp gets its chain's v tiles (the host repeats them) */
    float4 *s_x = (float4 *)(s_v + NREC * warps * TILE16) + (size_t)grp * (KS_X_BYTES / 16);
    /* the chain's place in the mma form's order: its outputs and state go where that form's warp
     * of the same 16 columns puts them */
    const int64_t gt = ((int64_t)blockIdx.x * chains + grp) * 32 + lane;
    const int64_t nthr = (int64_t)gridDim.x * chains * 32;
    const int bar = 1 + grp;

    float S[4][4]; /* S[j][e]: the mma form's S[4q + j][e] */
#pragma unroll
    for (int j = 0; j < 4; j++) {
        const float4 x = ((const float4 *)(a->s0 + gt * 64))[4 * q + j];
        S[j][0] = x.x, S[j][1] = x.y, S[j][2] = x.z, S[j][3] = x.w;
    }
    uint32_t sa[2][4]; /* the A fragments of this warp's two key k-steps, kk = 2q + m */
#define KS_PACK_STATE() _Pragma("unroll") for (int m = 0; m < 2; m++) pack_state_kstep(S[2 * m], S[2 * m + 1], sa[m])
    KS_PACK_STATE();
    const float zero4[4] = {0.f, 0.f, 0.f, 0.f};

    const long long t0 = clock64();
    for (int c = 0; c < a->nch; c++) {
        const int r = c & (NREC - 1);
        const unsigned char *R = s_rec + r * MR_BYTES;
        const unsigned char *VT = s_v + (r * warps + warp) * TILE16;
        float4 *xv = s_x + (size_t)(c & 1) * (2 * KS * 2 * 32); /* [q][n][lane]: the -W S parts */
        float4 *xo = xv + KS * 2 * 32;                          /* [q][n][lane]: the O parts */

        /* This warp's keys of S^T (-W)^T and of O = Qd S (old state): k-steps kk = 2q, 2q + 1. */
        float vn[2][4], o[2][4];
#pragma unroll
        for (int m = 0; m < 2; m++) {
            const int kk = 2 * q + m;
            uint32_t wb[4], qa[4];
            ldsm_x4(wb, smem_addr(R + MR_NEGW +
                                  swz_ship128((lane & 7) + 8 * (lane >> 4), 16 * kk + 8 * ((lane >> 3) & 1))));
            mma_bf16_16816(vn[0], sa[m], wb[0], wb[1], m ? vn[0] : zero4);
            mma_bf16_16816(vn[1], sa[m], wb[2], wb[3], m ? vn[1] : zero4);
            ldsm_x4(qa,
                    smem_addr(R + MR_QD + swz_ship128((lane & 7) + 8 * ((lane >> 3) & 1), 16 * kk + 8 * (lane >> 4))));
            mma_bf16_16816(o[0], qa, sa[m][0], sa[m][2], m ? o[0] : zero4);
            mma_bf16_16816(o[1], qa, sa[m][1], sa[m][3], m ? o[1] : zero4);
        }
#pragma unroll
        for (int n = 0; n < 2; n++) {
            xv[(q * 2 + n) * 32 + lane] = make_float4(vn[n][0], vn[n][1], vn[n][2], vn[n][3]);
            if (q != 0) xo[(q * 2 + n) * 32 + lane] = make_float4(o[n][0], o[n][1], o[n][2], o[n][3]);
        }

        /* U0^T = V^T bINV^T (hi + lo) in every warp, while the others' parts arrive. */
        float u[2][4];
        step_u0(R, VT, lane, u);
        bar_sync_named(bar, KS * 32);

        /* Vnew^T = U0^T + the four parts, summed in one order in every warp. */
        float w[2][4];
#pragma unroll
        for (int n = 0; n < 2; n++) {
            const float4 p0 = xv[(0 * 2 + n) * 32 + lane], p1 = xv[(1 * 2 + n) * 32 + lane];
            const float4 p2 = xv[(2 * 2 + n) * 32 + lane], p3 = xv[(3 * 2 + n) * 32 + lane];
            w[n][0] = u[n][0] + ((p0.x + p1.x) + (p2.x + p3.x));
            w[n][1] = u[n][1] + ((p0.y + p1.y) + (p2.y + p3.y));
            w[n][2] = u[n][2] + ((p0.z + p1.z) + (p2.z + p3.z));
            w[n][3] = u[n][3] + ((p0.w + p1.w) + (p2.w + p3.w));
        }
        uint32_t vp[4];
#pragma unroll
        for (int e = 0; e < 2; e++) {
            vp[2 * e] = pack_bf16x2(w[e][0], w[e][1]);
            vp[2 * e + 1] = pack_bf16x2(w[e][2], w[e][3]);
        }

        /* This warp's keys of S^T diag(gamma) + Vnew^T Kr. */
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const float2 gm = *(const float2 *)(R + MR_GAMMA + (8 * (4 * q + j) + 2 * t) * 4);
            S[j][0] *= gm.x;
            S[j][1] *= gm.y;
            S[j][2] *= gm.x;
            S[j][3] *= gm.y;
        }
#pragma unroll
        for (int m = 0; m < 2; m++) {
            uint32_t kb[4];
            ldsm_x4_trans(
                kb, smem_addr(R + MR_KR +
                              swz_ship128((lane & 7) + 8 * ((lane >> 3) & 1), 16 * (2 * q + m) + 8 * (lane >> 4))));
            mma_bf16_16816(S[2 * m], vp, kb[0], kb[1], S[2 * m]);
            mma_bf16_16816(S[2 * m + 1], vp, kb[2], kb[3], S[2 * m + 1]);
        }

        /* Warp 0: O = its part + the others' + Mqk Vnew (hi + lo). */
        if (q == 0) {
            uint32_t mh[4], ml[4];
            const uint32_t moff = ((lane & 7) + 8 * ((lane >> 3) & 1)) * 32 + (lane >> 4) * 16;
            ldsm_x4(mh, smem_addr(R + MR_MQK + moff));
            ldsm_x4(ml, smem_addr(R + MR_MQK_LO + moff));
            float oh[2][4];
            mma_bf16_16816(oh[0], ml, vp[0], vp[2], zero4);
            mma_bf16_16816(oh[1], ml, vp[1], vp[3], zero4);
            mma_bf16_16816(oh[0], mh, vp[0], vp[2], oh[0]);
            mma_bf16_16816(oh[1], mh, vp[1], vp[3], oh[1]);
            float out[2][4];
#pragma unroll
            for (int n = 0; n < 2; n++) {
                const float4 p1 = xo[(1 * 2 + n) * 32 + lane], p2 = xo[(2 * 2 + n) * 32 + lane],
                             p3 = xo[(3 * 2 + n) * 32 + lane];
                out[n][0] = (o[n][0] + (p1.x + (p2.x + p3.x))) + oh[n][0];
                out[n][1] = (o[n][1] + (p1.y + (p2.y + p3.y))) + oh[n][1];
                out[n][2] = (o[n][2] + (p1.z + (p2.z + p3.z))) + oh[n][2];
                out[n][3] = (o[n][3] + (p1.w + (p2.w + p3.w))) + oh[n][3];
            }
            if (c >= a->nch - OUT_RING) { /* every chunk in the checks; the last ones when timing */
                float4 *od = (float4 *)(a->o_out + ((int64_t)(c & (OUT_RING - 1)) * nthr + gt) * 8);
                od[0] = make_float4(out[0][0], out[0][1], out[0][2], out[0][3]);
                od[1] = make_float4(out[1][0], out[1][1], out[1][2], out[1][3]);
            }
        }

        KS_PACK_STATE();
    }
    const long long t1 = clock64();
#undef KS_PACK_STATE
#pragma unroll
    for (int j = 0; j < 4; j++)
        ((float4 *)(a->s_out + gt * 64))[4 * q + j] = make_float4(S[j][0], S[j][1], S[j][2], S[j][3]);
    if (q == 0 && lane == 0) a->cycles[gt >> 5] = t1 - t0;
}

/* (b) wgmma: one warpgroup per 64 value columns, M = value columns (see the header comment). */
static __device__ __forceinline__ void wg_chain(const bench_args *a)
{
    extern __shared__ unsigned char smem_raw[];
    unsigned char *smem = smem_aligned(smem_raw);
    const int warps = blockDim.x >> 5, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int t = lane & 3;
    unsigned char *s_rec = smem, *s_v = smem + NREC * WR_BYTES;
    stage_inputs(a, s_rec, WR_BYTES, s_v);
    const int64_t gt = (int64_t)blockIdx.x * blockDim.x + threadIdx.x, nthr = (int64_t)gridDim.x * blockDim.x;

    float S[64]; /* S^T, m64n128 accumulator: S[4j + e] = (value 16w + g + 8(e >> 1), key 8j + 2t + (e & 1)) */
#pragma unroll
    for (int j = 0; j < 16; j++) {
        const float4 x = ((const float4 *)(a->s0 + gt * 64))[j];
        S[4 * j] = x.x, S[4 * j + 1] = x.y, S[4 * j + 2] = x.z, S[4 * j + 3] = x.w;
    }
    uint32_t sa[8][4]; /* bf16(S^T) as the A fragments of the 8 key steps */
#define WG_PACK_STATE()                                            \
    do {                                                           \
        _Pragma("unroll") for (int kk = 0; kk < 8; kk++)           \
        {                                                          \
            sa[kk][0] = pack_bf16x2(S[8 * kk], S[8 * kk + 1]);     \
            sa[kk][1] = pack_bf16x2(S[8 * kk + 2], S[8 * kk + 3]); \
            sa[kk][2] = pack_bf16x2(S[8 * kk + 4], S[8 * kk + 5]); \
            sa[kk][3] = pack_bf16x2(S[8 * kk + 6], S[8 * kk + 7]); \
        }                                                          \
    } while (0)
    WG_PACK_STATE();

    const uint32_t rec_base = smem_addr(s_rec);
    const long long t0 = clock64();
    for (int c = 0; c < a->nch; c++) {
        const int r = c & (NREC - 1);
        const uint32_t R = rec_base + r * WR_BYTES;
        const unsigned char *Rp = s_rec + r * WR_BYTES;
        const unsigned char *VT = s_v + (r * warps + warp) * TILE16;

        /* V^T (this warp's 16 values x 16 tokens) as an A fragment, as in the mma form. */
        uint32_t va[4];
        {
            const int mi = lane >> 3, rr = lane & 7;
            ldsm_x4_trans(va, smem_addr(VT + swz32(rr + 8 * (mi >> 1), 8 * (mi & 1))));
        }
        float u[8], o[8];
#pragma unroll
        for (int i = 0; i < 8; i++) u[i] = 0.0f, o[i] = 0.0f;

        /* Group 1: U^T = V^T bINV^T (lo, hi) + S^T (-W)^T; group 2: O^T = S^T Qd^T. */
        wg_fence();
        wg_mma_n16(u, va, wg_desc(R + WR_BINV_LO, 256, WG_SWIZZLE_32B), 0);
        wg_mma_n16(u, va, wg_desc(R + WR_BINV, 256, WG_SWIZZLE_32B), 1);
#pragma unroll
        for (int kk = 0; kk < 8; kk++)
            wg_mma_n16(u, sa[kk], wg_desc(R + WR_NEGW + (kk >> 2) * 2048 + (kk & 3) * 32, 1024, WG_SWIZZLE_128B), 1);
        wg_commit();
#pragma unroll
        for (int kk = 0; kk < 8; kk++)
            wg_mma_n16(o, sa[kk], wg_desc(R + WR_QD + (kk >> 2) * 2048 + (kk & 3) * 32, 1024, WG_SWIZZLE_128B), kk > 0);
        wg_commit();

        /* U done (group 2 may still run): its bf16 A fragment (m = values, k = tokens). */
        wg_wait1();
#pragma unroll
        for (int i = 0; i < 8; i++) reg_fence_f(&u[i]);
        uint32_t up[4];
        up[0] = pack_bf16x2(u[0], u[1]);
        up[1] = pack_bf16x2(u[2], u[3]);
        up[2] = pack_bf16x2(u[4], u[5]);
        up[3] = pack_bf16x2(u[6], u[7]);

        /* S^T diag(gamma), while group 2 runs. Not earlier, while group 1 is in flight: ptxas then
         * injects a wait before these multiplies (C7517: "use of registers defined by GMMA"),
         * serializing both groups; here it accepts them. */
        wg_scale_state_keys(S, Rp + WR_GAMMA, t);

        /* Group 3: S^T += U^T Kr (one m64n128k16), O^T += U^T Mqk^T (lo, hi). */
        wg_fence();
        wg_mma_n128(S, up, wg_desc(R + WR_KRT, 256, WG_SWIZZLE_32B));
        wg_mma_n16(o, up, wg_desc(R + WR_MQK_LO, 256, WG_SWIZZLE_32B), 1);
        wg_mma_n16(o, up, wg_desc(R + WR_MQK, 256, WG_SWIZZLE_32B), 1);
        wg_commit();
        wg_wait0();
#pragma unroll
        for (int i = 0; i < 64; i++) reg_fence_f(&S[i]);
#pragma unroll
        for (int i = 0; i < 8; i++) reg_fence_f(&o[i]);

        if (c >= a->nch - OUT_RING) { /* as in the mma form */
            float4 *od = (float4 *)(a->o_out + ((int64_t)(c & (OUT_RING - 1)) * nthr + gt) * 8);
            od[0] = make_float4(o[0], o[1], o[2], o[3]);
            od[1] = make_float4(o[4], o[5], o[6], o[7]);
        }

        WG_PACK_STATE();
#pragma unroll
        for (int kk = 0; kk < 8; kk++)
#pragma unroll
            for (int e = 0; e < 4; e++) reg_fence_u(&sa[kk][e]);
    }
    const long long t1 = clock64();
#undef WG_PACK_STATE
#pragma unroll
    for (int j = 0; j < 16; j++)
        ((float4 *)(a->s_out + gt * 64))[j] = make_float4(S[4 * j], S[4 * j + 1], S[4 * j + 2], S[4 * j + 3]);
    if ((threadIdx.x & 127) == 0) a->cycles[gt >> 7] = t1 - t0;
}

/* One kernel per (form, register budget), so that more chains per SM can be tried: a launch
 * bound of 256 threads leaves up to 255 registers per thread (up to 8 warps per SM), 384 up to
 * 168 (3 warpgroups), 512 caps them at 128 (16 warps or 4 warpgroups; spills expected). */
#define BENCH_KERNEL(name, body, max_threads) \
    __global__ void __launch_bounds__(max_threads, 1) name(const bench_args a) { body(&a); }
BENCH_KERNEL(mma_chain_256, mma_chain, 256)
BENCH_KERNEL(mma_chain_512, mma_chain, 512)
BENCH_KERNEL(wg_chain_384, wg_chain, 384)
BENCH_KERNEL(wg_chain_512, wg_chain, 512)
BENCH_KERNEL(ks_chain_512, ks_chain, 512)

/* ---- host: data, reference, checks, timing ---- */

/* The logical operands (bf16 values held as floats, gamma fp32), shared by every column. */
typedef struct problem {
    int ncols;
    float negw[NREC][16][128], kr[NREC][16][128], qd[NREC][16][128], gamma[NREC][128];
    float binv_hi[NREC][16][16], binv_lo[NREC][16][16], mqk_hi[NREC][16][16], mqk_lo[NREC][16][16];
    float *v;  /* [NREC][16 tokens][ncols] */
    float *s0; /* [ncols][128 keys]: S^T */
} problem;

/* Which operands are live: the diagnostics zero the others so that a failure names the product. */
enum { DATA_FULL = 0, DATA_QD_S, DATA_MQK_BINV_V, DATA_KR_GAMMA, DATA_W_S, DATA_COUNT };
static const char *data_name[DATA_COUNT] = {"full step", "O = Qd S only", "O = Mqk bINV V only",
                                            "S' = gamma S + Kr^T bINV V only", "O = Mqk (-W S) only"};

/* KDA-like operands: unit k rows, beta in [0.3, 0.7], -W = -diag(beta) k, Kr = k, Qd = 0.25 q,
 * gamma in [0.9, 1), bINV lower triangular with beta on the diagonal, Mqk = lower_incl(Qd k^T).
 * The map S -> gamma S - k^T diag(beta) k S is a contraction, so long runs stay finite. */
static void problem_fill(problem *p, int ncols, int which, uint64_t seed)
{
    rng_state = seed;
    p->ncols = ncols;
    for (int r = 0; r < NREC; r++) {
        double k[16][128], q[16][128], beta[16];
        for (int i = 0; i < 16; i++) {
            double nk = 0, nq = 0;
            for (int c = 0; c < 128; c++) {
                k[i][c] = nrand(), q[i][c] = nrand();
                nk += k[i][c] * k[i][c], nq += q[i][c] * q[i][c];
            }
            for (int c = 0; c < 128; c++) k[i][c] /= sqrt(nk), q[i][c] /= sqrt(nq);
            beta[i] = 0.3 + 0.4 * urand();
        }
        for (int i = 0; i < 16; i++)
            for (int c = 0; c < 128; c++) {
                p->negw[r][i][c] = rbf(-beta[i] * k[i][c]);
                p->kr[r][i][c] = rbf(k[i][c]);
                p->qd[r][i][c] = rbf(0.25 * q[i][c]);
            }
        for (int c = 0; c < 128; c++) p->gamma[r][c] = (float)(0.9 + 0.1 * urand());
        for (int i = 0; i < 16; i++)
            for (int j = 0; j < 16; j++) {
                const double b = i == j ? beta[i] : (j < i ? 0.2 * (urand() - 0.5) * beta[j] : 0.0);
                split_hi_lo(b, &p->binv_hi[r][i][j], &p->binv_lo[r][i][j]);
                double m = 0;
                if (j <= i)
                    for (int c = 0; c < 128; c++) m += (double)p->qd[r][i][c] * p->kr[r][j][c];
                split_hi_lo(m, &p->mqk_hi[r][i][j], &p->mqk_lo[r][i][j]);
            }
    }
    p->v = (float *)malloc(sizeof(float) * NREC * 16 * ncols);
    p->s0 = (float *)malloc(sizeof(float) * ncols * 128);
    for (int i = 0; i < NREC * 16 * ncols; i++) p->v[i] = rbf(2.0 * urand() - 1.0);
    for (int i = 0; i < ncols * 128; i++) p->s0[i] = (float)(urand() - 0.5);

    const int live_s0 = which != DATA_MQK_BINV_V;
    const int live_w = which == DATA_FULL || which == DATA_W_S;
    const int live_qd = which == DATA_FULL || which == DATA_QD_S;
    const int live_kr = which == DATA_FULL || which == DATA_KR_GAMMA;
    const int live_binv_v = which == DATA_FULL || which == DATA_MQK_BINV_V || which == DATA_KR_GAMMA;
    const int live_mqk = which == DATA_FULL || which == DATA_MQK_BINV_V || which == DATA_W_S;
    const int live_gamma = which == DATA_FULL || which == DATA_KR_GAMMA;
    for (int r = 0; r < NREC; r++) {
        for (int i = 0; i < 16; i++)
            for (int c = 0; c < 128; c++) {
                if (!live_w) p->negw[r][i][c] = 0.0f;
                if (!live_kr) p->kr[r][i][c] = 0.0f;
                if (!live_qd) p->qd[r][i][c] = 0.0f;
            }
        for (int c = 0; c < 128; c++)
            if (!live_gamma) p->gamma[r][c] = 1.0f;
        for (int i = 0; i < 16; i++)
            for (int j = 0; j < 16; j++) {
                if (!live_binv_v) p->binv_hi[r][i][j] = p->binv_lo[r][i][j] = 0.0f;
                if (!live_mqk) p->mqk_hi[r][i][j] = p->mqk_lo[r][i][j] = 0.0f;
            }
    }
    if (!live_binv_v) memset(p->v, 0, sizeof(float) * NREC * 16 * ncols);
    if (!live_s0) memset(p->s0, 0, sizeof(float) * ncols * 128);
}

/* The NREC records in the mma form's (shipped) layout. */
static void build_mma_records(const problem *p, unsigned char *buf)
{
    memset(buf, 0, (size_t)NREC * MR_BYTES);
    for (int r = 0; r < NREC; r++) {
        unsigned char *R = buf + (size_t)r * MR_BYTES;
        for (int i = 0; i < 16; i++)
            for (int c = 0; c < 128; c++) {
                put_bf16(R, MR_NEGW + swz_ship128(i, c), p->negw[r][i][c]);
                put_bf16(R, MR_KR + swz_ship128(i, c), p->kr[r][i][c]);
                put_bf16(R, MR_QD + swz_ship128(i, c), p->qd[r][i][c]);
            }
        memcpy(R + MR_GAMMA, p->gamma[r], 512);
        for (int i = 0; i < 16; i++)
            for (int j = 0; j < 16; j++) {
                put_bf16(R, MR_BINV + i * 32 + j * 2, p->binv_hi[r][i][j]);
                put_bf16(R, MR_BINV_LO + i * 32 + j * 2, p->binv_lo[r][i][j]);
                put_bf16(R, MR_MQK + i * 32 + j * 2, p->mqk_hi[r][i][j]);
                put_bf16(R, MR_MQK_LO + i * 32 + j * 2, p->mqk_lo[r][i][j]);
            }
    }
}

/* The NREC records in the wgmma form's layout (header comment). */
static void build_wg_records(const problem *p, unsigned char *buf)
{
    memset(buf, 0, (size_t)NREC * WR_BYTES);
    for (int r = 0; r < NREC; r++) {
        unsigned char *R = buf + (size_t)r * WR_BYTES;
        for (int i = 0; i < 16; i++)
            for (int c = 0; c < 128; c++) {
                put_bf16(R, WR_NEGW + swz128_kmajor(i, c), p->negw[r][i][c]); /* B[k = key c][n = token i] */
                put_bf16(R, WR_QD + swz128_kmajor(i, c), p->qd[r][i][c]);
                put_bf16(R, WR_KRT + swz32(c, i), p->kr[r][i][c]); /* B[k = token i][n = key c], stored [n][k] */
            }
        memcpy(R + WR_GAMMA, p->gamma[r], 512);
        for (int i = 0; i < 16; i++)
            for (int j = 0; j < 16; j++) { /* B[k = j][n = i] = X[i][j], stored [n][k] */
                put_bf16(R, WR_BINV + swz32(i, j), p->binv_hi[r][i][j]);
                put_bf16(R, WR_BINV_LO + swz32(i, j), p->binv_lo[r][i][j]);
                put_bf16(R, WR_MQK + swz32(i, j), p->mqk_hi[r][i][j]);
                put_bf16(R, WR_MQK_LO + swz32(i, j), p->mqk_lo[r][i][j]);
            }
    }
}

/* v tiles [global warp][NREC][TILE16] for nwarps warps; warp gw holds columns 16 (gw / ks).. (ks:
 * warps per 16 columns, 1 but in the key-split form, whose warps of one chain each get a copy),
 * taken modulo the problem's columns (the timing runs have more columns than the checked problem). */
static void build_v_tiles(const problem *p, int nwarps, int ks, unsigned char *buf)
{
    for (int gw = 0; gw < nwarps; gw++)
        for (int r = 0; r < NREC; r++)
            for (int tok = 0; tok < 16; tok++)
                for (int vl = 0; vl < 16; vl++) {
                    const int col = (16 * (gw / ks) + vl) % p->ncols;
                    put_bf16(buf + ((size_t)gw * NREC + r) * TILE16, swz32(tok, vl),
                             p->v[(r * 16 + tok) * p->ncols + col]);
                }
}

/* State fragment order, every form (the key-split form writes in the mma form's order, gt counting
 * 32 per chain): thread gt, register i = 4j + e holds S^T at
 * (column 16 (gt / 32) + g + 8 (e >> 1), key 8j + 2t + (e & 1)). */
static void state_coord(int64_t gt, int i, int *col, int *key)
{
    const int lane = (int)(gt & 31), g = lane >> 2, t = lane & 3, j = i >> 2, e = i & 3;
    *col = (int)(16 * (gt >> 5)) + g + 8 * (e >> 1);
    *key = 8 * j + 2 * t + (e & 1);
}

/* Output fragment order: the mma form holds O (tokens x values), o[4n + e] = (token g + 8 (e >> 1),
 * value 8n + 2t + (e & 1)); the wgmma form O^T (values x tokens), o[4n + e] = (value g + 8 (e >> 1),
 * token 8n + 2t + (e & 1)); values are offset by 16 (gt / 32). */
static void out_coord(int wg, int64_t gt, int i, int *tok, int *col)
{
    const int lane = (int)(gt & 31), g = lane >> 2, t = lane & 3, n = i >> 2, e = i & 3;
    const int a = g + 8 * (e >> 1), b = 8 * n + 2 * t + (e & 1);
    *tok = wg ? b : a;
    *col = (int)(16 * (gt >> 5)) + (wg ? a : b);
}

static void build_s0(const problem *p, int64_t nthr, float *buf)
{
    for (int64_t gt = 0; gt < nthr; gt++)
        for (int i = 0; i < 64; i++) {
            int col, key;
            state_coord(gt, i, &col, &key);
            buf[gt * 64 + i] = p->s0[(col % p->ncols) * 128 + key];
        }
}

/* float64 reference of nch steps: o_ref [nch][16][ncols], s_ref [ncols][128] (S^T). */
static void reference(const problem *p, int nch, double *o_ref, double *s_ref)
{
    const int nc = p->ncols;
    for (int i = 0; i < nc * 128; i++) s_ref[i] = p->s0[i];
    for (int c = 0; c < nch; c++) {
        const int r = c % NREC;
        for (int col = 0; col < nc; col++) {
            double *S = s_ref + (size_t)col * 128, U[16];
            for (int i = 0; i < 16; i++) {
                double x = 0;
                for (int j = 0; j < 16; j++)
                    x += ((double)p->binv_hi[r][i][j] + p->binv_lo[r][i][j]) * p->v[(r * 16 + j) * nc + col];
                for (int k = 0; k < 128; k++) x += (double)p->negw[r][i][k] * S[k];
                U[i] = x;
            }
            for (int i = 0; i < 16; i++) {
                double x = 0;
                for (int k = 0; k < 128; k++) x += (double)p->qd[r][i][k] * S[k];
                for (int j = 0; j < 16; j++) x += ((double)p->mqk_hi[r][i][j] + p->mqk_lo[r][i][j]) * U[j];
                o_ref[((size_t)c * 16 + i) * nc + col] = x;
            }
            for (int k = 0; k < 128; k++) {
                double x = (double)p->gamma[r][k] * S[k];
                for (int i = 0; i < 16; i++) x += (double)p->kr[r][i][k] * U[i];
                S[k] = x;
            }
        }
    }
}

typedef struct kernel_info {
    const char *name;
    int wg;          /* 1: the wgmma form */
    int ks;          /* warps per 16-column chain: KS in the key-split form, else 1 */
    int max_threads; /* launch bound */
    void (*fn)(const bench_args);
    int regs, local_bytes;
} kernel_info;

static kernel_info kernels[] = {
    {"mma_256", 0, 1, 256, mma_chain_256, 0, 0},    {"mma_512", 0, 1, 512, mma_chain_512, 0, 0},
    {"wgmma_384", 1, 1, 384, wg_chain_384, 0, 0},   {"wgmma_512", 1, 1, 512, wg_chain_512, 0, 0},
    {"ksplit_512", 0, KS, 512, ks_chain_512, 0, 0},
};
#define NKERNELS ((int)(sizeof(kernels) / sizeof(kernels[0])))

/* Dynamic shared memory of a launch: what the kernel uses, but at least 120 KB, so that no SM can
 * hold two CTAs (228 KB per SM): one CTA per SM, whatever the block scheduler prefers. */
static size_t smem_bytes(const kernel_info *k, int threads)
{
    const size_t used = (size_t)NREC * (k->wg ? WR_BYTES : MR_BYTES) + (size_t)NREC * (threads / 32) * TILE16 +
                        (k->ks > 1 ? (size_t)(threads / 32 / k->ks) * KS_X_BYTES : 0) + 1024;
    return used > 120 * 1024 ? used : 120 * 1024;
}

/* Device buffers sized for the largest launch. */
typedef struct device_bufs {
    unsigned char *rec_mma, *rec_wg, *v;
    float *s0, *s_out, *o_out;
    long long *cycles;
} device_bufs;

/* One launch: grid CTAs of `threads`; returns the kernel's time in ms (CUDA events). */
static float launch(const kernel_info *k, const device_bufs *d, int grid, int threads, int nch)
{
    bench_args a;
    a.rec = k->wg ? d->rec_wg : d->rec_mma;
    a.v = d->v;
    a.s0 = d->s0;
    a.s_out = d->s_out;
    a.o_out = d->o_out;
    a.cycles = d->cycles;
    a.nch = nch;
    cudaEvent_t e0, e1;
    CUDA_OK(cudaEventCreate(&e0));
    CUDA_OK(cudaEventCreate(&e1));
    CUDA_OK(cudaEventRecord(e0));
    k->fn<<<grid, threads, smem_bytes(k, threads)>>>(a);
    CUDA_OK(cudaGetLastError());
    CUDA_OK(cudaEventRecord(e1));
    CUDA_OK(cudaEventSynchronize(e1));
    float ms = 0;
    CUDA_OK(cudaEventElapsedTime(&ms, e0, e1));
    CUDA_OK(cudaEventDestroy(e0));
    CUDA_OK(cudaEventDestroy(e1));
    return ms;
}

/* Uploads a problem's records, v tiles and start state for nthr threads in the mma form's order
 * (ks warps per 16 columns: each of a chain's warps gets its chain's v tiles). */
static void upload(const problem *p, const device_bufs *d, int64_t nthr, int ks)
{
    unsigned char *rm = (unsigned char *)malloc((size_t)NREC * MR_BYTES);
    unsigned char *rw = (unsigned char *)malloc((size_t)NREC * WR_BYTES);
    const int nwarps = (int)(nthr / 32) * ks;
    unsigned char *vt = (unsigned char *)calloc((size_t)nwarps * NREC, TILE16);
    float *s0 = (float *)malloc(sizeof(float) * nthr * 64);
    build_mma_records(p, rm);
    build_wg_records(p, rw);
    build_v_tiles(p, nwarps, ks, vt);
    build_s0(p, nthr, s0);
    CUDA_OK(cudaMemcpy(d->rec_mma, rm, (size_t)NREC * MR_BYTES, cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemcpy(d->rec_wg, rw, (size_t)NREC * WR_BYTES, cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemcpy(d->v, vt, (size_t)nwarps * NREC * TILE16, cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemcpy(d->s0, s0, sizeof(float) * nthr * 64, cudaMemcpyHostToDevice));
    free(rm), free(rw), free(vt), free(s0);
}

/* Runs kernel k on problem p for nch <= OUT_RING chunks (grid x threads / 2 columns, a prefix of
 * p's) and compares with the reference; prints one line; returns 1 on pass. The
 * gathered O and S go to o_gpu / s_gpu (for the cross-form comparison) when not NULL. */
static int check(const kernel_info *k, const device_bufs *d, const problem *p, int which, int grid, int threads,
                 int nch, double *o_gpu, double *s_gpu)
{
    const int64_t nthr = (int64_t)grid * threads / k->ks; /* in the mma form's order */
    const int nc = p->ncols;
    double *o_ref = (double *)malloc(sizeof(double) * nch * 16 * nc),
           *s_ref = (double *)malloc(sizeof(double) * nc * 128);
    float *o_raw = (float *)malloc(sizeof(float) * OUT_RING * nthr * 8),
          *s_raw = (float *)malloc(sizeof(float) * nthr * 64);
    reference(p, nch, o_ref, s_ref);
    upload(p, d, nthr, k->ks);
    CUDA_OK(cudaMemset(d->o_out, 0xFF, sizeof(float) * OUT_RING * nthr * 8)); /* NaN: an unwritten output fails */
    CUDA_OK(cudaMemset(d->s_out, 0xFF, sizeof(float) * nthr * 64));
    launch(k, d, grid, threads, nch);
    CUDA_OK(cudaMemcpy(o_raw, d->o_out, sizeof(float) * OUT_RING * nthr * 8, cudaMemcpyDeviceToHost));
    CUDA_OK(cudaMemcpy(s_raw, d->s_out, sizeof(float) * nthr * 64, cudaMemcpyDeviceToHost));

    double o_max = 0, o_err = 0, s_max = 0, s_err = 0, o0_err = 0;
    for (int c = 0; c < nch; c++)
        for (int64_t gt = 0; gt < nthr; gt++)
            for (int i = 0; i < 8; i++) {
                int tok, col;
                out_coord(k->wg, gt, i, &tok, &col);
                const double ref = o_ref[((size_t)c * 16 + tok) * nc + col],
                             got = o_raw[((size_t)c * nthr + gt) * 8 + i];
                const double err = isnan(got) ? INFINITY : fabs(got - ref);
                o_max = fmax(o_max, fabs(ref));
                o_err = fmax(o_err, err);
                if (c == 0) o0_err = fmax(o0_err, err);
                if (o_gpu) o_gpu[((size_t)c * 16 + tok) * nc + col] = got;
            }
    for (int64_t gt = 0; gt < nthr; gt++)
        for (int i = 0; i < 64; i++) {
            int col, key;
            state_coord(gt, i, &col, &key);
            const double ref = s_ref[(size_t)col * 128 + key], got = s_raw[gt * 64 + i];
            s_max = fmax(s_max, fabs(ref));
            s_err = fmax(s_err, isnan(got) ? INFINITY : fabs(got - ref));
            if (s_gpu) s_gpu[(size_t)col * 128 + key] = got;
        }
    const double ro = o_err / (o_max > 0 ? o_max : 1.0), rs = s_err / (s_max > 0 ? s_max : 1.0);
    const double ro0 = o0_err / (o_max > 0 ? o_max : 1.0);
    const int pass = ro < TOL && rs < TOL;
    printf("  %-10s %-33s %3d x %-3d %6d  %9.2e  %9.2e  %9.2e  %s\n", k->name, data_name[which], grid, threads, nch,
           ro0, ro, rs, pass ? "pass" : "FAIL");
    free(o_ref), free(s_ref), free(o_raw), free(s_raw);
    return pass;
}

/* The largest difference of form b's outputs (CHECK_CHUNKS chunks) and final state from form a's
 * over value columns 0..cols-1, each relative to form a's largest magnitude. */
static void form_difference(const double *o_a, const double *s_a, const double *o_b, const double *s_b, int cols,
                            double *o_rel, double *s_rel)
{
    double od = 0, om = 0, sd = 0, sm = 0;
    for (int c = 0; c < CHECK_CHUNKS; c++)
        for (int i = 0; i < 16; i++)
            for (int col = 0; col < cols; col++) {
                const size_t x = ((size_t)c * 16 + i) * CHECK_COLS + col;
                od = fmax(od, fabs(o_b[x] - o_a[x])), om = fmax(om, fabs(o_a[x]));
            }
    for (int col = 0; col < cols; col++)
        for (int k = 0; k < 128; k++) {
            const size_t x = (size_t)col * 128 + k;
            sd = fmax(sd, fabs(s_b[x] - s_a[x])), sm = fmax(sm, fabs(s_a[x]));
        }
    *o_rel = od / (om > 0 ? om : 1.0);
    *s_rel = sd / (sm > 0 ? sm : 1.0);
}

int main(int argc, char **argv)
{
    const int nch_time = argc > 1 ? atoi(argv[1]) : 8192;
    if (nch_time < 1) {
        fprintf(stderr, "usage: %s [chunk steps per timed run, default 8192]\n", argv[0]);
        return 2;
    }
    int dev = 0, nsm = 0, major = 0, minor = 0;
    CUDA_OK(cudaGetDevice(&dev));
    CUDA_OK(cudaDeviceGetAttribute(&nsm, cudaDevAttrMultiProcessorCount, dev));
    CUDA_OK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
    CUDA_OK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev));
    cudaDeviceProp prop;
    CUDA_OK(cudaGetDeviceProperties(&prop, dev));
    printf("device: %s, %d SMs, compute capability %d.%d\n", prop.name, nsm, major, minor);
    if (major != 9 || minor != 0) {
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
                                     (int)smem_bytes(&kernels[i], kernels[i].max_threads)));
        printf("  %-10s %3d registers, %3d local bytes, launch bound %d threads\n", kernels[i].name, fa.numRegs,
               (int)fa.localSizeBytes, kernels[i].max_threads);
    }

    /* Buffers for the largest launch: nsm CTAs of 512 threads (or the checks' 2 x 512). */
    const int64_t max_thr = (int64_t)(nsm > 2 ? nsm : 2) * 512;
    device_bufs d;
    CUDA_OK(cudaMalloc(&d.rec_mma, (size_t)NREC * MR_BYTES));
    CUDA_OK(cudaMalloc(&d.rec_wg, (size_t)NREC * WR_BYTES));
    CUDA_OK(cudaMalloc(&d.v, (size_t)(max_thr / 32) * NREC * TILE16));
    CUDA_OK(cudaMalloc(&d.s0, sizeof(float) * max_thr * 64));
    CUDA_OK(cudaMalloc(&d.s_out, sizeof(float) * max_thr * 64));
    CUDA_OK(cudaMalloc(&d.o_out, sizeof(float) * OUT_RING * max_thr * 8));
    CUDA_OK(cudaMalloc(&d.cycles, sizeof(long long) * (max_thr / 32)));

    /* ---- correctness: each kernel on 2 CTAs of its largest block, against float64 ---- */
    printf("\ncorrectness against a float64 reference on the same bf16 operands (pass: max |err| / max |ref| < %.0e\n"
           "for O over all chunks and for the final S; 'O chunk 0' is the first chunk's output alone):\n",
           TOL);
    printf("  %-10s %-33s %-9s %6s  %9s  %9s  %9s\n", "kernel", "data", "grid", "chunks", "O chunk 0", "O", "S");
    int all_pass = 1, kernel_pass[NKERNELS];
    for (int i = 0; i < NKERNELS; i++) kernel_pass[i] = 1;
    /* Every check draws the same CHECK_COLS columns (one seed per data set) and compares the
     * columns its launch covers (2 CTAs of the kernel's largest block: 16 per warp). */
    problem *p = (problem *)malloc(sizeof(problem));
    /* Diagnostics: one chunk with one product family live, on the kernels with the full register
     * budget (and the key-split one); then the full step over CHECK_CHUNKS chunks on every kernel. */
    for (int which = 1; which < DATA_COUNT; which++) {
        problem_fill(p, CHECK_COLS, which, 1000 + which);
        for (int i = 0; i < NKERNELS; i++) {
            if (kernels[i].max_threads == 512 && kernels[i].ks == 1) continue;
            const int ok = check(&kernels[i], &d, p, which, 2, kernels[i].max_threads, 1, NULL, NULL);
            kernel_pass[i] &= ok;
            all_pass &= ok;
        }
        free(p->v), free(p->s0);
    }
    problem_fill(p, CHECK_COLS, DATA_FULL, 7);
    double *o_form[3], *s_form[3]; /* mma_256, wgmma_384, ksplit_512 */
    for (int f = 0; f < 3; f++) {
        o_form[f] = (double *)malloc(sizeof(double) * CHECK_CHUNKS * 16 * CHECK_COLS);
        s_form[f] = (double *)malloc(sizeof(double) * CHECK_COLS * 128);
    }
    for (int i = 0; i < NKERNELS; i++) {
        /* mma_256, wgmma_384 and ksplit_512 are kept for the comparisons */
        const int keep = kernels[i].max_threads != 512 || kernels[i].ks > 1;
        const int f = kernels[i].ks > 1 ? 2 : kernels[i].wg;
        const int ok = check(&kernels[i], &d, p, DATA_FULL, 2, kernels[i].max_threads, CHECK_CHUNKS,
                             keep ? o_form[f] : NULL, keep ? s_form[f] : NULL);
        kernel_pass[i] &= ok;
        all_pass &= ok;
    }
    free(p->v), free(p->s0);
    /* Columns 0..255 are covered by both (mma_256: 2 x 8 warps; wgmma_384: 2 x 3 warpgroups). */
    double od, sd;
    form_difference(o_form[0], s_form[0], o_form[1], s_form[1], 256, &od, &sd);
    printf("  mma_256 against wgmma_384 on columns 0-255 (both round S and U to bf16): O %.2e, S %.2e\n", od, sd);
    /* Columns 0..127 are covered by ksplit_512 too (2 x 4 chains of 4 warps). */
    form_difference(o_form[0], s_form[0], o_form[2], s_form[2], 128, &od, &sd);
    printf("  mma_256 against ksplit_512 on columns 0-127 (the same operands, partial sums in another\n"
           "  order): O %.2e, S %.2e\n",
           od, sd);
    for (int f = 0; f < 3; f++) free(o_form[f]), free(s_form[f]);

    /* ---- timing: one CTA per SM holding k chains; best of 3 runs after a warm-up ---- */
    printf("\ntiming: %d CTAs (one per SM), %d chunk steps per chain, best of 3 runs:\n", nsm, nch_time);
    printf("  step ns: kernel time / steps (every chain of the SM runs its steps in that time);\n"
           "  cycles: clock64 around the chunk loop, mean over chains, / steps;\n"
           "  ns/16col: step ns / (16-column units per SM): the SM's cost of one chunk of 16 value columns\n");
    printf("  %-10s %-14s %8s %9s %9s %9s  %s\n", "kernel", "chains/SM", "cols/SM", "step ns", "cycles", "ns/16col",
           "check");
    /* the timing data: one upload per warps-per-chain (the key-split form's warps of a chain share
     * their chain's v tiles, as in its check) */
    int uploaded_ks = 0;
    const struct {
        int kernel;
        int chains;
    } runs[] = {
        {0, 1}, {0, 2}, {0, 4}, {0, 8}, {1, 16}, {1, 32}, {2, 1},
        {2, 2}, {2, 3}, {3, 4}, {3, 8}, {4, 1},  {4, 2},  {4, 4},
    };
    for (size_t ri = 0; ri < sizeof(runs) / sizeof(runs[0]); ri++) {
        const kernel_info *k = &kernels[runs[ri].kernel];
        if (k->ks != uploaded_ks) {
            problem_fill(p, CHECK_COLS, DATA_FULL, 11);
            upload(p, &d, max_thr / k->ks, k->ks);
            free(p->v), free(p->s0);
            uploaded_ks = k->ks;
        }
        const int chains = runs[ri].chains, threads = chains * (k->wg ? 128 : 32 * k->ks),
                  cols = chains * (k->wg ? 64 : 16);
        char label[32];
        if (k->ks > 1)
            snprintf(label, sizeof label, "%d x %d warps", chains, k->ks);
        else
            snprintf(label, sizeof label, "%d %s", chains,
                     k->wg ? (chains > 1 ? "warpgroups" : "warpgroup") : (chains > 1 ? "warps" : "warp"));
        int nb = 0;
        if (threads <= k->max_threads)
            CUDA_OK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&nb, k->fn, threads, smem_bytes(k, threads)));
        if (nb < 1) {
            printf("  %-10s %-14s %8d   not run: %d threads at %d registers do not fit an SM (65536 registers)\n",
                   k->name, label, cols, threads, k->regs);
            continue;
        }
        launch(k, &d, nsm, threads, nch_time < 64 ? nch_time : 64); /* warm-up */
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
        printf("  %-10s %-14s %8d %9.1f %9.1f %9.2f  %s\n", k->name, label, cols, step_ns, cyc, step_ns / (cols / 16),
               kernel_pass[runs[ri].kernel] ? "passed" : "FAILED");
    }
    printf("\n%s\n",
           all_pass ? "ALL CHECKS PASSED" : "SOME CHECKS FAILED (timings of a failed kernel are not trustworthy)");
    free(p);
    cudaFree(d.rec_mma), cudaFree(d.rec_wg), cudaFree(d.v), cudaFree(d.s0), cudaFree(d.s_out), cudaFree(d.o_out),
        cudaFree(d.cycles);
    return all_pass ? 0 : 1;
}

/*
 * record64.h: the 64-token chunk's record (one chunk of 64 tokens of one head, K = V = 128), as
 * dev/cuda/prefill64_bench.cu's prep writes it and dev/cuda/chain64_step_bench.cu's chain reads it: every
 * operand a K-major B tile of wgmma with 128-byte rows (64 bf16) under the 128B swizzle, at a
 * multiple of 1024 bytes:
 *   -W, Qd:   [token][key], two key halves of 64 rows x 128 bytes (8192 apart);
 *   Kr^T:     [key][token], 128 rows x 128 bytes;
 *   bINV, Mqk (bf16 hi and lo terms): [i][j] = X[i][j], 64 rows x 128 bytes;
 *   gamma:    128 fp32.
 * And the 32-byte-row layout of a warp's v tile (the shipped pf_swz16's). With P64_QE defined
 * (prefill64_bench.cu), the Qe record instead (below: Qe in Qd's place, U0 and O0, no bINV or Mqk).
 */
#ifndef FKDA_DEV_RECORD64_H
#define FKDA_DEV_RECORD64_H

#include <stdint.h>

/* Index of U0[tok][col] (or O0's) among the 64 x 128 values stored in the order of the chain's
 * m64n64 accumulators (M = value columns): the thread (warp col / 16, lane 4 (col & 7) +
 * ((tok >> 1) & 3)) holds it as u[4n + e], n = tok >> 3, e = 2 ((col >> 3) & 1) + (tok & 1), and
 * the warp's 32 lanes find their element group n side by side. */
static __host__ __device__ __forceinline__ int frag_index(int tok, int col)
{
    const int warp = col >> 4, lane = 4 * (col & 7) + ((tok >> 1) & 3), n = tok >> 3;
    return ((warp * 8 + n) * 32 + lane) * 4 + 2 * ((col >> 3) & 1) + (tok & 1);
}

#if defined(P64_QE)
/* The Qe record (prefill64_bench.cu's; dev/numerics/README.md, "O off the chain's serial path"): Qe = Qd - Mqk W in Qd's place, U0 = bINV V in fp32 and O0 = Mqk U0 in
 * bf16, both in the accumulators' order (frag_index); no bINV, no Mqk. */
#define R_NEGW 0
#define R_QD 16384 /* Qe */
#define R_KRT 32768
#define R_U0 49152
#define R_O0 81920
#define R_GAMMA 98304
#define R_BYTES 99328 /* 97 KB: the next record starts at a multiple of 1024 */
#else
#define R_NEGW 0
#define R_QD 16384
#define R_KRT 32768
#define R_BINV 49152
#define R_BINV_LO 57344
#define R_MQK 65536
#define R_MQK_LO 73728
#define R_GAMMA 81920
#define R_BYTES 82944 /* 81 KB: the next record starts at a multiple of 1024 */
#endif

#ifdef P64_QE
/* U0[tok][col] as fp32 in the accumulators' order: the warp's 32 lanes read their float4 n
 * (u[4n..4n+3]) from 512 consecutive bytes. */
static __host__ __device__ __forceinline__ uint32_t u0_offset(int tok, int col)
{
    return (uint32_t)(R_U0 + 4 * frag_index(tok, col));
}
/* O0[tok][col] as bf16 in the same order: 8 bytes a lane and element group. */
static __host__ __device__ __forceinline__ uint32_t o0_offset(int tok, int col)
{
    return (uint32_t)(R_O0 + 2 * frag_index(tok, col));
}
#endif

/* 128-byte rows of 64 bf16, 128B swizzle (the tile starts at a multiple of 1024). */
static __host__ __device__ __forceinline__ uint32_t swz128(int row, int col)
{
    return (uint32_t)(row * 128 + ((((col >> 3) & 7) ^ (row & 7)) << 4) + ((col & 7) << 1));
}

/* 32-byte rows of 16 bf16, 32B swizzle (the shipped v tile's layout). */
static __host__ __device__ __forceinline__ uint32_t swz32(int row, int col)
{
    return (uint32_t)(row * 32 + ((((col >> 3) & 1) ^ ((row >> 2) & 1)) << 4) + ((col & 7) << 1));
}

/* -W and Qd: [token][key] in two key halves. */
static __host__ __device__ __forceinline__ uint32_t swz_tok_key(int tok, int key)
{
    return (uint32_t)((key >> 6) * 8192) + swz128(tok, key & 63);
}

#endif /* FKDA_DEV_RECORD64_H */

/*
 * record64.h: the 64-token chunk's record (one chunk of 64 tokens of one head, K = V = 128), as
 * dev/cuda/prep64_bench.cu writes it and dev/cuda/chain64_step_bench.cu's chain reads it: every
 * operand a K-major B tile of wgmma with 128-byte rows (64 bf16) under the 128B swizzle, at a
 * multiple of 1024 bytes:
 *   -W, Qd:   [token][key], two key halves of 64 rows x 128 bytes (8192 apart);
 *   Kr^T:     [key][token], 128 rows x 128 bytes;
 *   bINV, Mqk (bf16 hi and lo terms): [i][j] = X[i][j], 64 rows x 128 bytes;
 *   gamma:    128 fp32.
 * And the 32-byte-row layout of a warp's v tile (the shipped pf_swz16's).
 */
#ifndef FKDA_DEV_RECORD64_H
#define FKDA_DEV_RECORD64_H

#include <stdint.h>

#define R_NEGW 0
#define R_QD 16384
#define R_KRT 32768
#define R_BINV 49152
#define R_BINV_LO 57344
#define R_MQK 65536
#define R_MQK_LO 73728
#define R_GAMMA 81920
#define R_BYTES 82944 /* 81 KB: the next record starts at a multiple of 1024 */

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

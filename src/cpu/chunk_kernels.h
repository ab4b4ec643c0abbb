/*
 * chunk_kernels.h: the dense products of the chunked prefill, register-blocked and compiled
 * once per x86 vector width (AVX-512, AVX2 + FMA, baseline) with the best one picked at run time.
 *
 * Every matrix product of a chunk has one operand with a fixed stride of FKDA_CHUNK = 16 floats
 * per row: the per-chunk arrays stored by key ([K][16]: kd, qd, ki, kr) and the 16 x 16 matrices.
 * That operand is "A" below; B and Y are row-major with any leading dimension. Sizes must be
 * padded by the caller: rows a multiple of 8, cols a multiple of 16 (the padding is zeros, so it
 * changes nothing).
 *
 *   Y[r][j] = init(r, j) + sum_{i < depth} A(r, i) * B[i][j]      r < rows, j < cols
 *
 *   fkda_gemm_at   A(r, i) = A[i * 16 + r]   (A stored by depth: "A transposed", rows <= 16)
 *   fkda_gemm_a    A(r, i) = A[r * 16 + i]   (A stored by row, depth <= 16)
 *
 *   init: FKDA_INIT_ZERO 0;  FKDA_INIT_ADD Y[r][j];  FKDA_INIT_SCALE scale[r] * Y[r][j]
 */
#ifndef FKDA_CPU_CHUNK_KERNELS_H
#define FKDA_CPU_CHUNK_KERNELS_H

#include <stdint.h>

#define FKDA_CHUNK 16

enum { FKDA_INIT_ZERO = 0, FKDA_INIT_ADD = 1, FKDA_INIT_SCALE = 2 };

void fkda_gemm_at(int64_t rows, int64_t cols, int64_t depth, const float *A, const float *B,
                  int64_t ldb, float *Y, int64_t ldy, int init, const float *scale);
void fkda_gemm_a(int64_t rows, int64_t cols, int64_t depth, const float *A, const float *B,
                 int64_t ldb, float *Y, int64_t ldy, int init, const float *scale);

/* The instruction set the kernels run with ("avx512", "avx2", "baseline"), for the benchmark. */
const char *fkda_chunk_kernels_isa(void);

#endif /* FKDA_CPU_CHUNK_KERNELS_H */

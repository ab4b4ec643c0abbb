/*
 * chunk_kernels.h: the dense products of the chunked prefill, register-blocked and compiled
 * once per x86 vector width (AVX-512, AVX2 + FMA, baseline) with the best one picked at run time.
 *
 * One operand, "A", is addressed through a leading dimension lda either way round; B and Y are
 * row-major with leading dimensions ldb and ldy. Sizes must be padded by the caller: rows a
 * multiple of 8 and cols a multiple of 16 (the padding is zeros, so it changes nothing).
 *
 *   Y[r][j] = init(r, j) + sum_{i < depth} A(r, i) * B[i][j]      r < rows, j < cols
 *
 *   fkda_gemm_a    A(r, i) = A[r * lda + i]   (A stored by row)
 *   fkda_gemm_at   A(r, i) = A[i * lda + r]   (A stored by depth: "A transposed")
 *
 *   init: FKDA_INIT_ZERO 0;  FKDA_INIT_ADD Y[r][j];  FKDA_INIT_SCALE scale[r] * Y[r][j]
 */
#ifndef FKDA_CPU_CHUNK_KERNELS_H
#define FKDA_CPU_CHUNK_KERNELS_H

#include <stdint.h>

#define FKDA_CHUNK 16

enum { FKDA_INIT_ZERO = 0, FKDA_INIT_ADD = 1, FKDA_INIT_SCALE = 2 };

void fkda_gemm_a(int64_t rows, int64_t cols, int64_t depth, const float *A, int64_t lda, const float *B, int64_t ldb,
                 float *Y, int64_t ldy, int init, const float *scale);
void fkda_gemm_at(int64_t rows, int64_t cols, int64_t depth, const float *A, int64_t lda, const float *B, int64_t ldb,
                  float *Y, int64_t ldy, int init, const float *scale);

#endif /* FKDA_CPU_CHUNK_KERNELS_H */

/*
 * chunk_kernels.c: see chunk_kernels.h.
 *
 * One C body (gemm_body) holds the algorithm: for each MR x NR tile of Y, keep the tile in
 * accumulators, and for every depth step load NR values of one B row and add A(r, i) times them
 * to row r of the tile. The tile sizes, the A layout and whether to fuse the multiply-add are
 * arguments that are constant at each call site, so after inlining the compiler fully unrolls
 * the tile loops, keeps the accumulators in vector registers and vectorises along j. Each x86
 * variant is the same body compiled for a wider instruction set (GCC/Clang `target` attribute),
 * with a tile that fits its register file:
 *
 *   AVX-512 (32 zmm):      8 x 16   eight 16-wide accumulators, one B load per depth step
 *   AVX2 + FMA (16 ymm):   8 x 8    eight 8-wide accumulators
 *   baseline (SSE2 / any): 2 x 16   eight 4-wide accumulators on SSE2; no FMA
 *
 * (Measured on one Zen 4 core, K = V = 128, 16 rows: about 110, 80 and 40 GFLOP/s.) The FMA
 * variants round differently from the baseline (one rounding per multiply-add), which is well
 * inside the tolerance against the float64 reference.
 */
#include "chunk_kernels.h"

#include "../core/tuning.h"

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define MAX_MR 8
#define MAX_NR 16

#if defined(__GNUC__)
#define ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define ALWAYS_INLINE inline
#endif

static ALWAYS_INLINE void gemm_body(int64_t rows, int64_t cols, int64_t depth, const float *restrict A, int64_t lda,
                                    const float *restrict B, int64_t ldb, float *restrict Y, int64_t ldy, int init,
                                    const float *restrict scale, const int a_transposed, const int MR, const int NR,
                                    const int fused)
{
    for (int64_t j0 = 0; j0 < cols; j0 += NR) {
        for (int64_t r0 = 0; r0 < rows; r0 += MR) {
            float acc[MAX_MR][MAX_NR];
            for (int r = 0; r < MR; r++) {
                const float *restrict y = Y + (r0 + r) * ldy + j0;
                const float s = init == FKDA_INIT_SCALE ? scale[r0 + r] : 1.0f;
                for (int c = 0; c < NR; c++) acc[r][c] = init == FKDA_INIT_ZERO ? 0.0f : s * y[c];
            }
            for (int64_t i = 0; i < depth; i++) {
                const float *restrict b = B + i * ldb + j0;
                for (int c = 0; c < NR; c++) {
                    const float bc = b[c];
                    for (int r = 0; r < MR; r++) {
                        const float a = a_transposed ? A[i * lda + r0 + r] : A[(r0 + r) * lda + i];
                        acc[r][c] = fused ? fmaf(a, bc, acc[r][c]) : acc[r][c] + a * bc;
                    }
                }
            }
            for (int r = 0; r < MR; r++) {
                float *restrict y = Y + (r0 + r) * ldy + j0;
                for (int c = 0; c < NR; c++) y[c] = acc[r][c];
            }
        }
    }
}

#define GEMM_ARGS                                                                                                  \
    int64_t rows, int64_t cols, int64_t depth, const float *A, int64_t lda, const float *B, int64_t ldb, float *Y, \
        int64_t ldy, int init, const float *scale
#define GEMM_PASS rows, cols, depth, A, lda, B, ldb, Y, ldy, init, scale

static void gemm_at_baseline(GEMM_ARGS) { gemm_body(GEMM_PASS, 1, 2, 16, 0); }
static void gemm_a_baseline(GEMM_ARGS) { gemm_body(GEMM_PASS, 0, 2, 16, 0); }

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#define FKDA_X86_VARIANTS 1
#define TARGET_AVX512 __attribute__((target("avx512f,avx512vl,avx2,fma")))
#define TARGET_AVX2 __attribute__((target("avx2,fma")))
TARGET_AVX512 static void gemm_at_avx512(GEMM_ARGS) { gemm_body(GEMM_PASS, 1, 8, 16, 1); }
TARGET_AVX512 static void gemm_a_avx512(GEMM_ARGS) { gemm_body(GEMM_PASS, 0, 8, 16, 1); }
TARGET_AVX2 static void gemm_at_avx2(GEMM_ARGS) { gemm_body(GEMM_PASS, 1, 8, 8, 1); }
TARGET_AVX2 static void gemm_a_avx2(GEMM_ARGS) { gemm_body(GEMM_PASS, 0, 8, 8, 1); }
#endif

typedef enum isa { ISA_BASELINE = 0, ISA_AVX2 = 1, ISA_AVX512 = 2, ISA_UNKNOWN = 3 } isa;

/* The best variant this CPU runs, capped by the environment variable FKDA_CPU_ISA (baseline,
 * avx2, avx512) so that the tests can exercise every variant on one machine. Resolved once;
 * concurrent first calls all compute and store the same value. */
static isa resolve_isa(void)
{
    isa best = ISA_BASELINE;
#ifdef FKDA_X86_VARIANTS
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) best = ISA_AVX2;
    if (best == ISA_AVX2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl")) best = ISA_AVX512;
#endif
    fkda_tuning tuning;
    fkda_tuning_read(&tuning);
    if (tuning.cpu_isa == FKDA_TUNING_ISA_BASELINE) best = ISA_BASELINE;
    if (tuning.cpu_isa == FKDA_TUNING_ISA_AVX2 && best > ISA_AVX2) best = ISA_AVX2;
    return best;
}

static isa current_isa(void)
{
    static atomic_int cached = ISA_UNKNOWN;
    int value = atomic_load_explicit(&cached, memory_order_relaxed);
    if (value == ISA_UNKNOWN) {
        value = (int)resolve_isa();
        atomic_store_explicit(&cached, value, memory_order_relaxed);
    }
    return (isa)value;
}

void fkda_gemm_at(GEMM_ARGS)
{
    switch (current_isa()) {
#ifdef FKDA_X86_VARIANTS
    case ISA_AVX512: gemm_at_avx512(GEMM_PASS); return;
    case ISA_AVX2: gemm_at_avx2(GEMM_PASS); return;
#endif
    default: gemm_at_baseline(GEMM_PASS); return;
    }
}

void fkda_gemm_a(GEMM_ARGS)
{
    switch (current_isa()) {
#ifdef FKDA_X86_VARIANTS
    case ISA_AVX512: gemm_a_avx512(GEMM_PASS); return;
    case ISA_AVX2: gemm_a_avx2(GEMM_PASS); return;
#endif
    default: gemm_a_baseline(GEMM_PASS); return;
    }
}

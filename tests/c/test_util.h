/*
 * test_util.h: small helpers shared by the C tests: a seeded random source, float <-> bf16/f16
 * conversion, host tensors with contiguous strides, error norms, and check macros that count
 * failures instead of aborting (so one run reports every broken case).
 */
#ifndef FKDA_TEST_UTIL_H
#define FKDA_TEST_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "flashkda.h"

/* Failure counting. CHECK(cond, fmt, ...) prints and counts; test_exit() returns the exit code and
 * repeats the first failures and the seed after the summary, so that the tail of a long log (all a
 * remote run may bring back) says what failed and how to repeat it. */
extern int test_failures;
extern int test_checks;
#define CHECK(cond, ...)                                         \
    do {                                                         \
        test_checks++;                                           \
        if (!(cond)) test_fail(__FILE__, __LINE__, __VA_ARGS__); \
    } while (0)
#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
void test_fail(const char *file, int line, const char *fmt, ...);
int test_exit(const char *name);

/* xoshiro-style 64-bit generator; the seed comes from FKDA_TEST_SEED or the clock, and is printed
 * so that a failing run can be repeated. */
typedef struct test_rng {
    uint64_t s[4];
} test_rng;
uint64_t test_seed_from_env(void);
void test_rng_seed(test_rng *r, uint64_t seed);
uint64_t test_rng_next(test_rng *r);
double test_rng_uniform(test_rng *r);                      /* [0, 1) */
double test_rng_normal(test_rng *r);                       /* standard normal */
int64_t test_rng_int(test_rng *r, int64_t lo, int64_t hi); /* [lo, hi] */

/* Conversions (round to nearest even). */
uint16_t test_f32_to_bf16(float x);
float test_bf16_to_f32(uint16_t x);
uint16_t test_f32_to_f16(float x);
float test_f16_to_f32(uint16_t x);

/* Error bars, each a function of what the compared results can reach. All are relative
 * Frobenius errors (test_rel_error_d) of `count` elements of dtype `dtype`.
 *   test_unit_roundoff   u of a dtype: the largest relative error of one round to nearest even,
 *                        2^-24 (f32), 2^-11 (f16), 2^-8 (bf16)
 *   test_bar_reference   a float64 computation narrowed to float, then to `dtype` (the float64
 *                        reference), against an unrounded float64 model of the same math: only
 *                        the narrowing separates them, at most u(dtype) + u(f32) per element and
 *                        so in the norm; 1e-12 covers float64 arithmetic (exp, summation order)
 *   test_bar_arith32     the float32 arithmetic of the fast paths against float64: per step a
 *                        dot product of length K, whose random rounding errors add in quadrature
 *                        (u32 sqrt(K), K counted as at least 16 so that tiny heads with
 *                        cancellation keep some room); decays and the delta rule contract older
 *                        errors, so a sequence adds only a slow log2(1 + T) growth; factor 4
 *                        (measured on the CPU suites: 0.3 to 2 x u32 sqrt(K))
 *   test_bar_rounded     two values within relative error d of each other, each rounded to
 *                        `dtype`: d, plus the elements where the two land on different sides of
 *                        a rounding boundary, each off by at most 2u: a fraction of up to 8d / u
 *                        of them (d / u if every element were off by d; elements below the norm's
 *                        scale have larger relative errors, and the prefill's random cases show
 *                        up to 4x that), with a Poisson margin on small counts
 *                        (3 sqrt(expected) + 2 elements), giving 2u sqrt(flips / count); for f32,
 *                        d + u32 + 1e-12
 *   test_bar_fast        a float32 path against the float64 reference, both rounded to `dtype`:
 *                        test_bar_rounded of test_bar_arith32, the latter times sqrt(64 / count)
 *                        for fewer than 64 elements (the norm of a few elements does not average
 *                        their errors: one element's relative error after cancellation can be
 *                        several times the typical one) */
double test_unit_roundoff(fkda_dtype dtype);
double test_bar_reference(fkda_dtype dtype);
double test_bar_arith32(int64_t steps, int64_t K);
double test_bar_rounded(fkda_dtype dtype, double d, size_t count);
double test_bar_fast(fkda_dtype dtype, int64_t steps, int64_t K, size_t count);

/* A host tensor that owns its memory (contiguous). */
typedef struct test_tensor {
    fkda_tensor t;
    size_t count;
} test_tensor;
test_tensor test_tensor_alloc(fkda_dtype dtype, int32_t ndim, const int64_t *shape);
void test_tensor_free(test_tensor *x);
void test_tensor_fill_normal(test_tensor *x, test_rng *r, double mean, double stddev);
void test_tensor_fill_uniform(test_tensor *x, test_rng *r, double lo, double hi);
void test_tensor_fill_value(test_tensor *x, double value);
double test_tensor_get(const test_tensor *x, size_t i); /* element i in memory order, widened */
void test_tensor_set(test_tensor *x, size_t i, double value);
/* Relative Frobenius error ||a - b|| / ||b||, and whether any element of a is NaN/Inf. */
double test_rel_error(const test_tensor *a, const test_tensor *b);
int test_has_nonfinite(const test_tensor *a);
/* 1 when the bytes of a are unchanged from a copy taken earlier with test_tensor_snapshot. */
void *test_tensor_snapshot(const test_tensor *x);
int test_tensor_unchanged(const test_tensor *x, const void *snapshot);

/* Strided views (added for the CPU backend tests). A view is any fkda_tensor whose elements lie
 * inside memory the caller owns, e.g. a slice of a larger test_tensor. */
/* The elements of a view, widened to double, in row-major order of its shape (malloc'd). */
double *test_gather(const fkda_tensor *t, size_t *count);
/* Writes value into every element of a view (NaN as poison before a run). */
void test_view_fill(const fkda_tensor *t, double value);
/* Relative Frobenius error ||a - b|| / ||b|| of two double arrays, and their non-finite count. */
double test_rel_error_d(const double *a, const double *b, size_t n);
size_t test_count_nonfinite_d(const double *a, size_t n);

/* Random inputs of one KDA call (added for the CPU backend tests): the token tensors q, k, v, g,
 * beta, the gate parameters and cu_seqlens, filled to suit the options (g a log-decay <= 0 when
 * the gate is off; q and k of norm ~1 without the in-kernel L2 norm; beta in (0, 1) without the
 * sigmoid), so that the recurrence stays bounded. */
typedef struct test_kda_spec {
    int64_t B, T, H, HV, K, V;
    int nseq; /* > 0: varlen, B = 1 and T = the sum of lengths[0 .. nseq) */
    const int64_t *lengths;
    int cu_int32;        /* cu_seqlens as int32 instead of int64 */
    fkda_dtype io_dtype; /* q, k, v (and out) */
    fkda_dtype g_dtype, beta_dtype, param_dtype;
    int has_A_log, has_dt_bias, dt_bias_flat;
    int strided;          /* q and k as head slices of one [B, T, 2H + 1, K] buffer */
    double g_mean, g_std; /* the raw g; ignored when the gate is off */
    fkda_options options;
} test_kda_spec;

typedef struct test_kda_inputs {
    test_tensor qk_buf, q_buf, k_buf, v, g, beta, A_log, dt_bias, cu_seqlens;
    fkda_tensor q, k;        /* views into qk_buf (strided) or q_buf / k_buf */
    int64_t N;               /* sequences */
    int64_t *start, *length; /* per sequence: first token (in row 0 when varlen) and length */
} test_kda_inputs;

/* Allocates and fills; spec->B and spec->T are set from the lengths when varlen. */
void test_kda_inputs_make(test_kda_spec *spec, test_rng *r, test_kda_inputs *in);
void test_kda_inputs_free(test_kda_inputs *in);
/* An empty tensor (absent optional argument). */
fkda_tensor test_absent(void);

#endif /* FKDA_TEST_UTIL_H */

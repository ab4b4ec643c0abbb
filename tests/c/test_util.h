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

/* Failure counting. CHECK(cond, fmt, ...) prints and counts; test_exit() returns the exit code. */
extern int test_failures;
extern int test_checks;
#define CHECK(cond, ...)                                                                         \
    do {                                                                                       \
        test_checks++;                                                                         \
        if (!(cond)) {                                                                         \
            test_failures++;                                                                   \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                               \
            fprintf(stderr, __VA_ARGS__);                                                      \
            fprintf(stderr, "\n");                                                             \
        }                                                                                      \
    } while (0)
int test_exit(const char *name);

/* xoshiro-style 64-bit generator; the seed comes from FKDA_TEST_SEED or the clock, and is printed
 * so that a failing run can be repeated. */
typedef struct test_rng { uint64_t s[4]; } test_rng;
uint64_t test_seed_from_env(void);
void test_rng_seed(test_rng *r, uint64_t seed);
uint64_t test_rng_next(test_rng *r);
double test_rng_uniform(test_rng *r);          /* [0, 1) */
double test_rng_normal(test_rng *r);           /* standard normal */
int64_t test_rng_int(test_rng *r, int64_t lo, int64_t hi); /* [lo, hi] */

/* Conversions (round to nearest even). */
uint16_t test_f32_to_bf16(float x);
float test_bf16_to_f32(uint16_t x);
uint16_t test_f32_to_f16(float x);
float test_f16_to_f32(uint16_t x);

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
double test_tensor_get(const test_tensor *x, size_t i);   /* element i in memory order, widened */
void test_tensor_set(test_tensor *x, size_t i, double value);
/* Relative Frobenius error ||a - b|| / ||b||, and whether any element of a is NaN/Inf. */
double test_rel_error(const test_tensor *a, const test_tensor *b);
int test_has_nonfinite(const test_tensor *a);
/* 1 when the bytes of a are unchanged from a copy taken earlier with test_tensor_snapshot. */
void *test_tensor_snapshot(const test_tensor *x);
int test_tensor_unchanged(const test_tensor *x, const void *snapshot);

#endif /* FKDA_TEST_UTIL_H */

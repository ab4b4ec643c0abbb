/* test_util.c: see test_util.h. */
#include "test_util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int test_failures = 0;
int test_checks = 0;

int test_exit(const char *name)
{
    if (test_failures) {
        fprintf(stderr, "%s: %d of %d checks FAILED\n", name, test_failures, test_checks);
        return 1;
    }
    printf("%s: all %d checks passed\n", name, test_checks);
    return 0;
}

uint64_t test_seed_from_env(void)
{
    const char *s = getenv("FKDA_TEST_SEED");
    uint64_t seed = s ? strtoull(s, NULL, 0) : (uint64_t)time(NULL) ^ ((uint64_t)clock() << 32);
    printf("seed %llu (set FKDA_TEST_SEED to repeat)\n", (unsigned long long)seed);
    return seed;
}

static uint64_t splitmix(uint64_t *x)
{
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void test_rng_seed(test_rng *r, uint64_t seed)
{
    for (int i = 0; i < 4; i++) r->s[i] = splitmix(&seed);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t test_rng_next(test_rng *r)
{
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3]; s[2] ^= t; s[3] = rotl(s[3], 45);
    return result;
}

double test_rng_uniform(test_rng *r) { return (double)(test_rng_next(r) >> 11) * 0x1.0p-53; }

double test_rng_normal(test_rng *r)
{
    double u = test_rng_uniform(r), w = test_rng_uniform(r);
    if (u < 1e-300) u = 1e-300;
    return sqrt(-2.0 * log(u)) * cos(6.283185307179586 * w);
}

int64_t test_rng_int(test_rng *r, int64_t lo, int64_t hi)
{
    return lo + (int64_t)(test_rng_next(r) % (uint64_t)(hi - lo + 1));
}

uint16_t test_f32_to_bf16(float x)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float test_bf16_to_f32(uint16_t x)
{
    uint32_t u = (uint32_t)x << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t test_f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t mant = x & 0x7fffffu;
    int32_t exp = (int32_t)((x >> 23) & 0xff);
    if (exp == 0xff) return (uint16_t)(sign | 0x7c00u | (mant ? 0x200u : 0u));
    exp = exp - 127 + 15;
    if (exp >= 0x1f) return (uint16_t)(sign | 0x7c00u);
    if (exp <= 0) {
        if (exp < -10) return (uint16_t)sign;
        mant |= 0x800000u;
        int shift = 14 - exp;
        uint32_t half = 1u << (shift - 1);
        uint32_t rounded = (mant + half - 1 + ((mant >> shift) & 1u)) >> shift;
        return (uint16_t)(sign | rounded);
    }
    uint32_t rounded = mant + 0xfffu + ((mant >> 13) & 1u);
    if (rounded & 0x800000u) {
        rounded = 0;
        exp++;
        if (exp >= 0x1f) return (uint16_t)(sign | 0x7c00u);
    }
    return (uint16_t)(sign | ((uint32_t)exp << 10) | (rounded >> 13));
}

float test_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu, out;
    if (exp == 0) {
        if (mant == 0) {
            out = sign;
        } else {
            exp = 127 - 15 + 1;
            while (!(mant & 0x400u)) { mant <<= 1; exp--; }
            out = sign | (exp << 23) | ((mant & 0x3ffu) << 13);
        }
    } else if (exp == 0x1f) {
        out = sign | 0x7f800000u | (mant << 13);
    } else {
        out = sign | ((exp - 15 + 127) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &out, 4);
    return f;
}

test_tensor test_tensor_alloc(fkda_dtype dtype, int32_t ndim, const int64_t *shape)
{
    test_tensor x;
    size_t count = 1;
    for (int i = 0; i < ndim; i++) count *= (size_t)shape[i];
    x.count = count;
    size_t bytes = count * fkda_dtype_size(dtype);
    void *data = malloc(bytes ? bytes : 1);
    if (!data) { fprintf(stderr, "out of memory\n"); exit(2); }
    x.t = fkda_make_tensor(data, dtype, ndim, shape);
    return x;
}

void test_tensor_free(test_tensor *x)
{
    free(x->t.data);
    x->t.data = NULL;
}

double test_tensor_get(const test_tensor *x, size_t i)
{
    switch (x->t.dtype) {
    case FKDA_DTYPE_F32: return ((const float *)x->t.data)[i];
    case FKDA_DTYPE_F16: return test_f16_to_f32(((const uint16_t *)x->t.data)[i]);
    case FKDA_DTYPE_BF16: return test_bf16_to_f32(((const uint16_t *)x->t.data)[i]);
    case FKDA_DTYPE_I32: return ((const int32_t *)x->t.data)[i];
    case FKDA_DTYPE_I64: return (double)((const int64_t *)x->t.data)[i];
    }
    return 0;
}

void test_tensor_set(test_tensor *x, size_t i, double v)
{
    switch (x->t.dtype) {
    case FKDA_DTYPE_F32: ((float *)x->t.data)[i] = (float)v; break;
    case FKDA_DTYPE_F16: ((uint16_t *)x->t.data)[i] = test_f32_to_f16((float)v); break;
    case FKDA_DTYPE_BF16: ((uint16_t *)x->t.data)[i] = test_f32_to_bf16((float)v); break;
    case FKDA_DTYPE_I32: ((int32_t *)x->t.data)[i] = (int32_t)v; break;
    case FKDA_DTYPE_I64: ((int64_t *)x->t.data)[i] = (int64_t)v; break;
    }
}

void test_tensor_fill_normal(test_tensor *x, test_rng *r, double mean, double sd)
{
    for (size_t i = 0; i < x->count; i++) test_tensor_set(x, i, mean + sd * test_rng_normal(r));
}

void test_tensor_fill_uniform(test_tensor *x, test_rng *r, double lo, double hi)
{
    for (size_t i = 0; i < x->count; i++) test_tensor_set(x, i, lo + (hi - lo) * test_rng_uniform(r));
}

void test_tensor_fill_value(test_tensor *x, double value)
{
    for (size_t i = 0; i < x->count; i++) test_tensor_set(x, i, value);
}

double test_rel_error(const test_tensor *a, const test_tensor *b)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < a->count; i++) {
        double d = test_tensor_get(a, i) - test_tensor_get(b, i), r = test_tensor_get(b, i);
        num += d * d;
        den += r * r;
    }
    if (den == 0) return sqrt(num);
    return sqrt(num / den);
}

int test_has_nonfinite(const test_tensor *a)
{
    for (size_t i = 0; i < a->count; i++)
        if (!isfinite(test_tensor_get(a, i))) return 1;
    return 0;
}

void *test_tensor_snapshot(const test_tensor *x)
{
    size_t bytes = x->count * fkda_dtype_size(x->t.dtype);
    void *copy = malloc(bytes ? bytes : 1);
    if (!copy) { fprintf(stderr, "out of memory\n"); exit(2); }
    memcpy(copy, x->t.data, bytes);
    return copy;
}

int test_tensor_unchanged(const test_tensor *x, const void *snapshot)
{
    return memcmp(x->t.data, snapshot, x->count * fkda_dtype_size(x->t.dtype)) == 0;
}

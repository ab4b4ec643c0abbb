/* test_util.c: see test_util.h. */
#include "test_util.h"

#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int test_failures = 0;
int test_checks = 0;

/* The first TEST_KEPT_FAILURES messages, for the summary. */
#define TEST_KEPT_FAILURES 16
#define TEST_FAILURE_CHARS 320
static char kept_failures[TEST_KEPT_FAILURES][TEST_FAILURE_CHARS];
static int seed_printed;
static unsigned long long last_seed;

void test_fail(const char *file, int line, const char *fmt, ...)
{
    char msg[TEST_FAILURE_CHARS];
    int n = snprintf(msg, sizeof msg, "FAIL %s:%d: ", file, line);
    if (n < 0 || n >= (int)sizeof msg) n = 0;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg + n, sizeof msg - (size_t)n, fmt, ap);
    va_end(ap);
    fprintf(stderr, "%s\n", msg);
    if (test_failures < TEST_KEPT_FAILURES) memcpy(kept_failures[test_failures], msg, sizeof msg);
    test_failures++;
}

int test_exit(const char *name)
{
    fflush(stdout); /* the cases' lines first: stdout may be a buffered file */
    if (test_failures) {
        fprintf(stderr, "%s: %d of %d checks FAILED", name, test_failures, test_checks);
        if (seed_printed) fprintf(stderr, " (seed %llu: FKDA_TEST_SEED=%llu repeats it)", last_seed, last_seed);
        fprintf(stderr, "\n");
        const int kept = test_failures < TEST_KEPT_FAILURES ? test_failures : TEST_KEPT_FAILURES;
        for (int i = 0; i < kept; i++) fprintf(stderr, "  %s\n", kept_failures[i]);
        if (test_failures > kept) fprintf(stderr, "  ... and %d more\n", test_failures - kept);
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
    seed_printed = 1;
    last_seed = (unsigned long long)seed;
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
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
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
            while (!(mant & 0x400u)) {
                mant <<= 1;
                exp--;
            }
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

double test_unit_roundoff(fkda_dtype dtype)
{
    switch (dtype) {
    case FKDA_DTYPE_BF16: return 0x1.0p-8;
    case FKDA_DTYPE_F16: return 0x1.0p-11;
    default: return 0x1.0p-24;
    }
}

double test_bar_reference(fkda_dtype dtype)
{
    return test_unit_roundoff(dtype) + test_unit_roundoff(FKDA_DTYPE_F32) + 1e-12;
}

double test_bar_arith32(int64_t steps, int64_t K)
{
    const double k = (double)(K < 16 ? 16 : K), t = (double)(steps < 0 ? 0 : steps);
    return 4.0 * test_unit_roundoff(FKDA_DTYPE_F32) * sqrt(k) * (1.0 + log2(1.0 + t) / 4.0);
}

double test_bar_rounded(fkda_dtype dtype, double d, size_t count)
{
    const double u = test_unit_roundoff(dtype);
    if (dtype == FKDA_DTYPE_F32 || count == 0) return d + test_bar_reference(dtype);
    const double expected = (double)count * (8.0 * d / u < 1.0 ? 8.0 * d / u : 1.0);
    double flips = expected + 3.0 * sqrt(expected) + 2.0;
    if (flips > (double)count) flips = (double)count;
    return d + 2.0 * u * sqrt(flips / (double)count);
}

double test_bar_fast(fkda_dtype dtype, int64_t steps, int64_t K, size_t count)
{
    const double few = count > 0 && count < 64 ? sqrt(64.0 / (double)count) : 1.0;
    return test_bar_rounded(dtype, few * test_bar_arith32(steps, K), count);
}

test_tensor test_tensor_alloc(fkda_dtype dtype, int32_t ndim, const int64_t *shape)
{
    test_tensor x;
    size_t count = 1;
    for (int i = 0; i < ndim; i++) count *= (size_t)shape[i];
    x.count = count;
    size_t bytes = count * fkda_dtype_size(dtype);
    void *data = malloc(bytes ? bytes : 1);
    if (!data) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
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
    case FKDA_DTYPE_BOOL: return ((const uint8_t *)x->t.data)[i];
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
    case FKDA_DTYPE_BOOL: ((uint8_t *)x->t.data)[i] = v != 0.0; break;
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
    if (!copy) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    memcpy(copy, x->t.data, bytes);
    return copy;
}

int test_tensor_unchanged(const test_tensor *x, const void *snapshot)
{
    return memcmp(x->t.data, snapshot, x->count * fkda_dtype_size(x->t.dtype)) == 0;
}

/* ---- strided views (CPU backend tests) ---- */

static size_t view_count(const fkda_tensor *t)
{
    size_t n = 1;
    for (int d = 0; d < t->ndim; d++) n *= (size_t)t->shape[d];
    return n;
}

/* The memory offset (in elements) of the i-th element in row-major order of the shape. */
static int64_t view_offset(const fkda_tensor *t, size_t i)
{
    int64_t off = 0;
    for (int d = t->ndim - 1; d >= 0; d--) {
        int64_t idx = (int64_t)(i % (size_t)t->shape[d]);
        i /= (size_t)t->shape[d];
        off += idx * t->stride[d];
    }
    return off;
}

double *test_gather(const fkda_tensor *t, size_t *count)
{
    size_t n = view_count(t);
    double *out = malloc((n ? n : 1) * sizeof(double));
    if (!out) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    test_tensor wrap;
    wrap.t = *t;
    for (size_t i = 0; i < n; i++) {
        wrap.count = 0;
        out[i] = test_tensor_get(&wrap, (size_t)view_offset(t, i));
    }
    *count = n;
    return out;
}

void test_view_fill(const fkda_tensor *t, double value)
{
    size_t n = view_count(t);
    test_tensor wrap;
    wrap.t = *t;
    wrap.count = 0;
    for (size_t i = 0; i < n; i++) test_tensor_set(&wrap, (size_t)view_offset(t, i), value);
}

double test_rel_error_d(const double *a, const double *b, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = a[i] - b[i];
        num += d * d;
        den += b[i] * b[i];
    }
    if (den == 0) return sqrt(num);
    return sqrt(num / den);
}

size_t test_count_nonfinite_d(const double *a, size_t n)
{
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) bad += !isfinite(a[i]);
    return bad;
}

/* ---- random KDA inputs (CPU backend tests) ---- */

fkda_tensor test_absent(void)
{
    fkda_tensor t;
    memset(&t, 0, sizeof t);
    return t;
}

static double softplus_d(double x) { return x > 20 ? x : log1p(exp(x)); }

void test_kda_inputs_make(test_kda_spec *sp, test_rng *r, test_kda_inputs *in)
{
    memset(in, 0, sizeof *in);
    if (sp->nseq > 0) {
        int64_t total = 0;
        for (int i = 0; i < sp->nseq; i++) total += sp->lengths[i];
        sp->B = 1;
        sp->T = total;
        in->N = sp->nseq;
    } else {
        in->N = sp->B;
    }
    const int64_t B = sp->B, T = sp->T, H = sp->H, HV = sp->HV, K = sp->K, V = sp->V;
    in->start = malloc((size_t)(in->N + 1) * sizeof(int64_t));
    in->length = malloc((size_t)(in->N + 1) * sizeof(int64_t));
    if (!in->start || !in->length) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    for (int64_t n = 0, c = 0; n < in->N; n++) {
        in->start[n] = sp->nseq > 0 ? c : 0;
        in->length[n] = sp->nseq > 0 ? sp->lengths[n] : T;
        c += in->length[n];
    }

    const fkda_options *o = &sp->options;
    const double qk_std = o->use_qk_l2norm ? 1.0 : 1.0 / sqrt((double)K);
    if (sp->strided) {
        in->qk_buf = test_tensor_alloc(sp->io_dtype, 4, (const int64_t[]){B, T, 2 * H + 1, K});
        test_tensor_fill_normal(&in->qk_buf, r, 0.0, qk_std);
        in->q = fkda_make_tensor(in->qk_buf.t.data, sp->io_dtype, 4, (const int64_t[]){B, T, H, K});
        in->q.stride[0] = in->qk_buf.t.stride[0];
        in->q.stride[1] = in->qk_buf.t.stride[1];
        in->k = in->q;
        in->k.data = (char *)in->qk_buf.t.data + (size_t)(H * K) * fkda_dtype_size(sp->io_dtype);
    } else {
        in->q_buf = test_tensor_alloc(sp->io_dtype, 4, (const int64_t[]){B, T, H, K});
        in->k_buf = test_tensor_alloc(sp->io_dtype, 4, (const int64_t[]){B, T, H, K});
        test_tensor_fill_normal(&in->q_buf, r, 0.0, qk_std);
        test_tensor_fill_normal(&in->k_buf, r, 0.0, qk_std);
        in->q = in->q_buf.t;
        in->k = in->k_buf.t;
    }
    in->v = test_tensor_alloc(sp->io_dtype, 4, (const int64_t[]){B, T, HV, V});
    test_tensor_fill_normal(&in->v, r, 0.0, 1.0);

    in->g = test_tensor_alloc(sp->g_dtype, 4, (const int64_t[]){B, T, HV, K});
    for (size_t i = 0; i < in->g.count; i++) {
        double x = sp->g_mean + sp->g_std * test_rng_normal(r);
        /* Gate off: g is the log-decay itself, logsigmoid(x) = -softplus(-x) <= 0. */
        test_tensor_set(&in->g, i, o->gate == FKDA_GATE_NONE ? -softplus_d(-x) : x);
    }
    in->beta = test_tensor_alloc(sp->beta_dtype, 3, (const int64_t[]){B, T, HV});
    if (o->use_beta_sigmoid)
        test_tensor_fill_normal(&in->beta, r, 0.0, 1.0);
    else
        test_tensor_fill_uniform(&in->beta, r, 0.05, 1.0);

    if (sp->has_A_log) {
        in->A_log = test_tensor_alloc(sp->param_dtype, 1, (const int64_t[]){HV});
        if (o->gate == FKDA_GATE_SOFTPLUS)
            test_tensor_fill_uniform(&in->A_log, r, -2.0, 0.5);
        else
            test_tensor_fill_uniform(&in->A_log, r, -1.0, 1.0);
    }
    if (sp->has_dt_bias) {
        if (sp->dt_bias_flat)
            in->dt_bias = test_tensor_alloc(sp->param_dtype, 1, (const int64_t[]){HV * K});
        else
            in->dt_bias = test_tensor_alloc(sp->param_dtype, 2, (const int64_t[]){HV, K});
        test_tensor_fill_normal(&in->dt_bias, r, 0.0, 0.5);
    }
    if (sp->nseq > 0) {
        in->cu_seqlens = test_tensor_alloc(sp->cu_int32 ? FKDA_DTYPE_I32 : FKDA_DTYPE_I64, 1,
                                           (const int64_t[]){in->N + 1});
        for (int64_t n = 0; n <= in->N; n++)
            test_tensor_set(&in->cu_seqlens, (size_t)n, (double)(n < in->N ? in->start[n] : T));
    }
}

void test_kda_inputs_free(test_kda_inputs *in)
{
    test_tensor *all[] = {&in->qk_buf, &in->q_buf, &in->k_buf,   &in->v,         &in->g,
                          &in->beta,   &in->A_log, &in->dt_bias, &in->cu_seqlens};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        if (all[i]->t.data) test_tensor_free(all[i]);
    free(in->start);
    free(in->length);
}

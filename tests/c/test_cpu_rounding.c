/*
 * test_cpu_rounding.c: every bf16 and f16 store of the CPU paths rounds to nearest, ties to
 * even, bit for bit, checked against a conversion written here that shares nothing with the
 * library's (nor with test_util's): a search for the nearest of all 65536 values of the format.
 *
 * The problems are built so that the float32 result is exact and therefore known: one key
 * channel (q = k = e_0, no L2 norm), no decay (gate none, g = 0), b = 0.5 (no sigmoid), and a
 * state whose row 0 holds s_j. One token then leaves row 0 of the state at
 *     m_j = s_j + 0.5 (v_j - s_j) = (s_j + v_j) / 2
 * (exact in float32 for the values used here: one bit more than s and v have), the other rows
 * unchanged, and the output at o_j = fl32(scale * m_j). The library must store exactly
 * round(m_j) into a bf16 state and round(o_j) into a bf16 / f16 output, whatever path computes
 * them (float32 fast path on 1 or 3 threads, float64 reference, decode and prefill; the
 * chunked prefill only with power-of-two scales and normal outputs, see scale_is_power_of_two).
 *
 * The values: random ones (about half of the bf16 roundings of m are exact ties, which only
 * ties-to-even gets right); scales that push o to the edge of the format (the last finite value,
 * the tie with infinity, float32 overflow); subnormal results; NaN.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"

/* ---- the independent conversion ---------------------------------------------------------- */

/* The value of every bit pattern of a 16-bit format, decoded from its fields (sign, exponent
 * bits e, mantissa bits m). */
static double format_value(fkda_dtype d, uint16_t bits)
{
    const int sign = bits >> 15;
    const int ebits = d == FKDA_DTYPE_BF16 ? 8 : 5, mbits = 15 - ebits;
    const int bias = (1 << (ebits - 1)) - 1;
    const int e = (bits >> mbits) & ((1 << ebits) - 1);
    const int m = bits & ((1 << mbits) - 1);
    double x;
    if (e == (1 << ebits) - 1)
        x = m ? NAN : INFINITY;
    else if (e == 0)
        x = ldexp((double)m, 1 - bias - mbits);
    else
        x = ldexp((double)((1 << mbits) + m), e - bias - mbits);
    return sign ? -x : x;
}

/* The non-negative values in increasing order, infinity last: the patterns 0x0000 .. 0x7c00
 * (f16) or 0x7f80 (bf16), since the order of positive patterns is the order of their values. */
typedef struct format_table {
    fkda_dtype dtype;
    uint16_t inf;
    double value[0x7f81];
} format_table;

static void table_init(format_table *t, fkda_dtype d)
{
    t->dtype = d;
    t->inf = d == FKDA_DTYPE_BF16 ? 0x7f80 : 0x7c00;
    for (uint32_t b = 0; b <= t->inf; b++) t->value[b] = format_value(d, (uint16_t)b);
    /* Infinity takes part in rounding as the value one unit past the largest finite one
     * (IEEE 754: a result at or beyond max + half an ulp rounds to infinity). */
    t->value[t->inf] = 2 * t->value[t->inf - 1] - t->value[t->inf - 2];
}

/* x rounded to nearest, ties to the even pattern; NaN gives a NaN pattern. */
static uint16_t round_to_format(const format_table *t, double x)
{
    if (isnan(x)) return (uint16_t)(t->inf | 0x40);
    const uint16_t sign = signbit(x) ? 0x8000 : 0;
    const double a = fabs(x);
    if (a >= t->value[t->inf]) return (uint16_t)(sign | t->inf);
    uint32_t lo = 0, hi = t->inf; /* value[lo] <= a < value[hi] */
    while (hi - lo > 1) {
        uint32_t mid = (lo + hi) / 2;
        if (t->value[mid] <= a)
            lo = mid;
        else
            hi = mid;
    }
    const double below = a - t->value[lo], above = t->value[hi] - a;
    uint32_t pick = below < above ? lo : above < below ? hi : (lo % 2 == 0 ? lo : hi);
    return (uint16_t)(sign | pick);
}

static format_table bf16_table, f16_table;

static int is_nan16(fkda_dtype d, uint16_t b)
{
    return d == FKDA_DTYPE_BF16 ? (b & 0x7fff) > 0x7f80 : (b & 0x7fff) > 0x7c00;
}

/* The bits a store of x into dtype must produce (f32: the float's own bits, in the low 32). */
static uint32_t expected_bits(fkda_dtype d, float x)
{
    if (d == FKDA_DTYPE_F32) {
        uint32_t u;
        memcpy(&u, &x, 4);
        return u;
    }
    return round_to_format(d == FKDA_DTYPE_BF16 ? &bf16_table : &f16_table, (double)x);
}

static uint32_t stored_bits(const fkda_tensor *t, int64_t i)
{
    if (t->dtype == FKDA_DTYPE_F32) {
        uint32_t u;
        memcpy(&u, (const float *)t->data + i, 4);
        return u;
    }
    return ((const uint16_t *)t->data)[i];
}

static int same_result(fkda_dtype d, uint32_t got, uint32_t want)
{
    if (d == FKDA_DTYPE_F32) {
        float a, b;
        memcpy(&a, &got, 4);
        memcpy(&b, &want, 4);
        if (isnan(a) || isnan(b)) return isnan(a) && isnan(b);
        return got == want || (a == 0.0f && b == 0.0f); /* the sign of an exact zero is free */
    }
    if (is_nan16(d, (uint16_t)want)) return is_nan16(d, (uint16_t)got);
    return got == want || ((got | want) & 0x7fff) == 0;
}

/* Checks the table against a few known patterns, so that the check itself is checked. */
static void check_conversion(void)
{
    const format_table *b = &bf16_table, *h = &f16_table;
    CHECK(round_to_format(b, 1.0) == 0x3f80, "bf16(1)");
    CHECK(round_to_format(b, 1.0 + 0x1.0p-8) == 0x3f80, "bf16 tie 1 + 2^-8 rounds to even 1");
    CHECK(round_to_format(b, 1.0 + 3 * 0x1.0p-8) == 0x3f82, "bf16 tie 1 + 3*2^-8 rounds to even");
    CHECK(round_to_format(b, -(1.0 + 0x1.0p-8 + 0x1.0p-20)) == 0xbf81, "bf16 above the tie");
    CHECK(round_to_format(b, 0x1.fep127) == 0x7f7f, "bf16 max");
    CHECK(round_to_format(b, 0x1.fefffep127) == 0x7f7f, "bf16 just below the tie with inf");
    CHECK(round_to_format(b, 0x1.ffp127) == 0x7f80, "bf16 tie with inf");
    CHECK(round_to_format(b, 0x1.0p-133) == 0x0001, "bf16 smallest subnormal");
    CHECK(round_to_format(b, 0x1.0p-134) == 0x0000, "bf16 half the smallest subnormal: tie to 0");
    CHECK(round_to_format(b, 0x1.8p-133) == 0x0002, "bf16 1.5 subnormal units: tie to even 2");
    CHECK(round_to_format(h, 65504.0) == 0x7bff && round_to_format(h, 65519.0) == 0x7bff, "f16 max");
    CHECK(round_to_format(h, 65520.0) == 0x7c00, "f16 tie with inf");
    CHECK(round_to_format(h, 0x1.0p-24) == 0x0001 && round_to_format(h, 0x1.0p-25) == 0x0000, "f16 subnormal");
    CHECK(round_to_format(h, 0x1.8p-24) == 0x0002, "f16 1.5 subnormal units: tie to even 2");
    CHECK(round_to_format(h, 1.0 + 0x1.0p-11) == 0x3c00 && round_to_format(h, 1.0 + 3 * 0x1.0p-11) == 0x3c02,
          "f16 ties to even");
    CHECK(round_to_format(h, -2.0) == 0xc000 && is_nan16(FKDA_DTYPE_F16, round_to_format(h, NAN)), "f16 -2, NaN");
}

/* ---- the problems --------------------------------------------------------------------------- */

typedef struct exact_case {
    fkda_dtype io, state;
    float scale;
    int64_t V;
    const float *s, *v; /* row 0 of the state, and v: V values each, exact in their dtypes */
    const char *what;
    int subnormal; /* outputs in the subnormal range */
} exact_case;

static void set_float(fkda_tensor *t, int64_t i, float x)
{
    test_tensor w = {*t, 0};
    if (t->dtype == FKDA_DTYPE_F32)
        ((float *)t->data)[i] = x;
    else
        test_tensor_set(&w, (size_t)i, x);
}

enum { K = 16 };

/* Inputs of one token of one head: q = k = e_0, g = 0, beta = 0.5, v; the state (K x V, key
 * major) with row 0 = s and the other rows small values. */
typedef struct exact_inputs {
    test_tensor q, v, g, beta, state;
} exact_inputs;

static exact_inputs exact_make(const exact_case *c, test_rng *r, int64_t state_slots)
{
    exact_inputs in;
    in.q = test_tensor_alloc(c->io, 4, (const int64_t[]){1, 1, 1, K});
    test_tensor_fill_value(&in.q, 0.0);
    test_tensor_set(&in.q, 0, 1.0);
    in.v = test_tensor_alloc(c->io, 4, (const int64_t[]){1, 1, 1, c->V});
    for (int64_t j = 0; j < c->V; j++) set_float(&in.v.t, j, c->v[j]);
    in.g = test_tensor_alloc(FKDA_DTYPE_F32, 4, (const int64_t[]){1, 1, 1, K});
    test_tensor_fill_value(&in.g, 0.0);
    in.beta = test_tensor_alloc(FKDA_DTYPE_F32, 3, (const int64_t[]){1, 1, 1});
    test_tensor_fill_value(&in.beta, 0.5);
    in.state = test_tensor_alloc(c->state, 4, (const int64_t[]){state_slots, 1, K, c->V});
    for (int64_t i = 0; i < in.state.t.shape[0] * K; i++)
        for (int64_t j = 0; j < c->V; j++)
            set_float(&in.state.t, i * c->V + j, i % K == 0 ? c->s[j] : (float)(0.25 * test_rng_normal(r)));
    return in;
}

static void exact_free(exact_inputs *in)
{
    test_tensor *all[] = {&in->q, &in->v, &in->g, &in->beta, &in->state};
    for (int i = 0; i < 5; i++) test_tensor_free(all[i]);
}

static fkda_options exact_options(const exact_case *c)
{
    fkda_options o = fkda_default_options(); /* gate none, no norm, no sigmoid */
    o.scale = c->scale;
    return o;
}

/* Compares out (row 0 of the token) and row 0 of the state with the expected bits; counts the
 * columns that mismatch and prints the first few. */
static void compare(const exact_case *c, const fkda_tensor *out, const fkda_tensor *state, int64_t state_offset,
                    const char *label)
{
    int64_t bad_out = 0, bad_state = 0, skipped = 0;
    for (int64_t j = 0; j < c->V; j++) {
        const double m_exact = (double)c->s[j] + 0.5 * ((double)c->v[j] - (double)c->s[j]);
        const float m = (float)m_exact;
        if (!isnan(m_exact) && (double)m != m_exact) {
            skipped++;
            continue;
        } /* not an exact case */
        const float o = c->scale * m;
        const uint32_t want_o = expected_bits(c->io, o), want_s = expected_bits(c->state, m);
        const uint32_t got_o = stored_bits(out, j), got_s = stored_bits(state, state_offset + j);
        if (!same_result(c->io, got_o, want_o)) {
            if (bad_out++ < 3)
                fprintf(stderr, "  %s: out[%lld]: fl32(%a * %a) = %a: got 0x%x, want 0x%x\n", label, (long long)j,
                        (double)c->scale, (double)m, (double)o, got_o, want_o);
        }
        if (!same_result(c->state, got_s, want_s)) {
            if (bad_state++ < 3)
                fprintf(stderr, "  %s: state[0, %lld] = %a: got 0x%x, want 0x%x\n", label, (long long)j, (double)m,
                        got_s, want_s);
        }
    }
    CHECK(bad_out == 0, "%s: %lld of %lld out elements not rounded to nearest even", label, (long long)bad_out,
          (long long)c->V);
    CHECK(bad_state == 0, "%s: %lld of %lld state elements not rounded to nearest even", label, (long long)bad_state,
          (long long)c->V);
    CHECK(skipped * 10 <= c->V, "%s: %lld of %lld columns not exact in float32 (the case is built wrong)", label,
          (long long)skipped, (long long)c->V);
}

static void run_decode(const exact_case *c, test_rng *r, int threads, int reference)
{
    char label[256];
    snprintf(label, sizeof label, "decode %s: io=%s state=%s scale=%a thr=%d ref=%d", c->what,
             c->io == FKDA_DTYPE_F32   ? "f32"
             : c->io == FKDA_DTYPE_F16 ? "f16"
                                       : "bf16",
             c->state == FKDA_DTYPE_F32 ? "f32" : "bf16", (double)c->scale, threads, reference);
    exact_inputs in = exact_make(c, r, 2);
    test_tensor out = test_tensor_alloc(c->io, 4, (const int64_t[]){1, 1, 1, c->V});
    test_tensor_fill_value(&out, NAN);
    test_tensor idx = test_tensor_alloc(FKDA_DTYPE_I64, 1, (const int64_t[]){1});
    ((int64_t *)idx.t.data)[0] = 1; /* slot 1 of 2 */
    fkda_decode_args a;
    memset(&a, 0, sizeof a);
    a.q = in.q.t;
    a.k = in.q.t;
    a.v = in.v.t;
    a.g = in.g.t;
    a.beta = in.beta.t;
    a.state_pool = in.state.t;
    a.state_indices = idx.t;
    a.out = out.t;
    a.options = exact_options(c);
    fkda_device dev = {FKDA_DEVICE_CPU, 0, NULL, threads, reference};
    size_t bytes = 0;
    fkda_status st = fkda_decode_workspace_size(&a, &dev, &bytes);
    void *ws = aligned_alloc(256, (bytes + 256) / 256 * 256);
    if (st == FKDA_OK) st = fkda_decode(&a, &dev, ws, bytes);
    CHECK(st == FKDA_OK, "%s: %s", label, fkda_last_error());
    compare(c, &out.t, &in.state.t, (int64_t)K * c->V, label);
    free(ws);
    test_tensor_free(&out);
    test_tensor_free(&idx);
    exact_free(&in);
}

static void run_prefill(const exact_case *c, test_rng *r, int threads, int reference)
{
    char label[256];
    snprintf(label, sizeof label, "prefill %s: io=%s final=%s scale=%a thr=%d ref=%d", c->what,
             c->io == FKDA_DTYPE_F32   ? "f32"
             : c->io == FKDA_DTYPE_F16 ? "f16"
                                       : "bf16",
             c->state == FKDA_DTYPE_F32 ? "f32" : "bf16", (double)c->scale, threads, reference);
    /* The initial state is float32 (any state dtype's values are exact in it); the final state
     * takes the dtype under test. */
    exact_case ci = *c;
    ci.state = FKDA_DTYPE_F32;
    exact_inputs in = exact_make(&ci, r, 1);
    test_tensor final = test_tensor_alloc(c->state, 4, (const int64_t[]){1, 1, K, c->V});
    test_tensor out = test_tensor_alloc(c->io, 4, (const int64_t[]){1, 1, 1, c->V});
    test_tensor_fill_value(&out, NAN);
    test_tensor_fill_value(&final, NAN);
    fkda_prefill_args a;
    memset(&a, 0, sizeof a);
    a.q = in.q.t;
    a.k = in.q.t;
    a.v = in.v.t;
    a.g = in.g.t;
    a.beta = in.beta.t;
    a.initial_state = in.state.t;
    a.final_state = final.t;
    a.out = out.t;
    a.options = exact_options(c);
    fkda_device dev = {FKDA_DEVICE_CPU, 0, NULL, threads, reference};
    size_t bytes = 0;
    fkda_status st = fkda_prefill_workspace_size(&a, &dev, &bytes);
    void *ws = aligned_alloc(256, (bytes + 256) / 256 * 256);
    if (st == FKDA_OK) st = fkda_prefill(&a, &dev, ws, bytes);
    CHECK(st == FKDA_OK, "%s: %s", label, fkda_last_error());
    compare(c, &out.t, &final.t, 0, label);
    free(ws);
    test_tensor_free(&out);
    test_tensor_free(&final);
    exact_free(&in);
}

/* The chunked prefill may apply the scale to the two parts of the output (the state's and the
 * chunk's) before adding them: o is then exact only when multiplying by the scale is, i.e. for
 * a power of two and results that stay normal. The other paths compute o = fl32(scale * m). */
static int scale_is_power_of_two(float scale)
{
    int e;
    return fabs(frexp((double)scale, &e)) == 0.5;
}

static void run_everywhere(const exact_case *c, test_rng *r)
{
    static const int threads[] = {1, 3};
    for (int reference = 0; reference < 2; reference++)
        for (int t = 0; t < 2; t++) {
            run_decode(c, r, threads[t], reference);
            if (reference || (scale_is_power_of_two(c->scale) && !c->subnormal))
                run_prefill(c, r, threads[t], reference);
        }
}

/* A value of dtype d (its rounding of x; f32 keeps x). */
static float in_format(fkda_dtype d, double x)
{
    if (d == FKDA_DTYPE_BF16) return test_bf16_to_f32(test_f32_to_bf16((float)x));
    if (d == FKDA_DTYPE_F16) return test_f16_to_f32(test_f32_to_f16((float)x));
    return (float)x;
}

enum { NV = 256 };

int main(void)
{
    test_rng r;
    test_rng_seed(&r, test_seed_from_env());
    table_init(&bf16_table, FKDA_DTYPE_BF16);
    table_init(&f16_table, FKDA_DTYPE_F16);
    check_conversion();

    static const fkda_dtype ios[3] = {FKDA_DTYPE_BF16, FKDA_DTYPE_F16, FKDA_DTYPE_F32};
    static float s[NV], v[NV];
    for (int io = 0; io < 3; io++)
        for (int st = 0; st < 2; st++) {
            exact_case c = {ios[io], st ? FKDA_DTYPE_F32 : FKDA_DTYPE_BF16, 1.0f, NV, s, v, "random", 0};
            /* v in the output's format (bf16 for an f32 output), s in the state's (the same as
             * v's for an f32 state): m then has one bit more than the format, so that its
             * rounding is a tie about half the time. Then scales 1 (o = m) and two full-precision
             * ones (every output needs rounding). */
            const fkda_dtype v_fmt = c.io == FKDA_DTYPE_F32 ? FKDA_DTYPE_BF16 : c.io;
            const fkda_dtype s_fmt = c.state == FKDA_DTYPE_BF16 ? FKDA_DTYPE_BF16 : v_fmt;
            for (int j = 0; j < NV; j++) {
                const double mag = ldexp(1.0, (int)test_rng_int(&r, -6, 6));
                s[j] = in_format(s_fmt, mag * test_rng_normal(&r));
                v[j] = in_format(v_fmt, mag * test_rng_normal(&r));
            }
            run_everywhere(&c, &r);
            c.scale = -0.5f;
            run_everywhere(&c, &r);
            c.scale = 0x1.3c0ca4p+0f; /* 1.2345678: every output needs rounding */
            run_everywhere(&c, &r);
            c.scale = -0x1.6a09e6p-1f;
            run_everywhere(&c, &r);

            /* Subnormal outputs: o of the order of the format's smallest normal. */
            c.what = "subnormal";
            c.subnormal = 1;
            c.scale = c.io == FKDA_DTYPE_F16 ? 0x1.0p-20f : 0x1.0p-126f;
            for (int j = 0; j < NV; j++) {
                const double mag = ldexp(1.0, -(int)test_rng_int(&r, 0, 12));
                s[j] = in_format(s_fmt, mag * test_rng_normal(&r));
                v[j] = in_format(v_fmt, mag * test_rng_normal(&r));
            }
            run_everywhere(&c, &r);

            /* The top of the range: o around the largest finite value of the output format and
             * the tie with infinity (f16: 65504 and 65520; bf16: 0x1.fep127 and 0x1.ffp127),
             * some beyond float32 (fl32 overflow to infinity), and NaN from a NaN v. */
            c.what = "overflow";
            c.subnormal = 0;
            const double top = c.io == FKDA_DTYPE_F16 ? 65504.0 : 0x1.fep127;
            c.scale = c.io == FKDA_DTYPE_F16 ? 2.0f : 0x1.0p99f; /* options allow up to 1e30 */
            for (int j = 0; j < NV; j++) {
                /* m near top / scale: s and v two bf16-representable neighbours of it. */
                const double target = top / c.scale * (1.0 + ldexp((double)test_rng_int(&r, -24, 24), -10));
                s[j] = in_format(s_fmt, target * (1.0 - ldexp(1.0, -9)));
                v[j] = in_format(v_fmt, target * (1.0 + ldexp(1.0, -9)));
            }
            v[NV - 1] = NAN;
            run_everywhere(&c, &r);
        }
    return test_exit("test_cpu_rounding");
}

/*
 * test_cpu_numerics.c: the numerical edges of the chunked float32 prefill, against the float64
 * reference, through the public API.
 *
 * The chunked form factorises exp(G_i - G_j) into exp(G_i) exp(-G_j); with the safe gate at
 * lower_bound = -5 and a saturated sigmoid, 16 tokens of a = -5 give G = -80 and exp(-G) =
 * 5.5e34, the edge of what the factorised form may use. Beyond it (stronger decays) every chunk
 * must switch to the pairwise form. Cases:
 *   - lower_bound -5, g = +20 everywhere (a = -5 per token, G reaches -80 in every chunk), with
 *     and without A_log, and mixed with channels that do not decay at all (G = 0)
 *   - decays far past the factorised range: softplus gate with exp(A_log) = 16, lower_bound
 *     -20, a precomputed g of -100 per token; and chunks alternating between the two forms
 *   - no decay at all (g = 0, pure delta rule, long memory)
 *   - beta at the ends: b ~ 1e-13 and b = 1 - 1e-13 (sigmoid of -30 / +30), raw 0 and 1, the
 *     reflection b = 2 of allow_neg_eigval, identical keys with b = 1
 *   - zero keys and queries under the L2 norm (x / sqrt(0 + 1e-6) = 0), and tiny ones
 *   - a long sequence, T = 4096, where float32 error could accumulate
 * Every case: fast and reference outputs and final states all finite and fully written, and
 * fast within test_bar_fast (float32 arithmetic over T tokens of dot products of length K, see
 * test_util.h) in relative Frobenius error of the reference.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"

typedef struct result {
    double *out, *final;
    size_t n_out, n_final;
} result;

static result run(const test_kda_spec *sp, const test_kda_inputs *in, const test_tensor *initial, int reference,
                  int threads, const char *label)
{
    result res;
    test_tensor out = test_tensor_alloc(FKDA_DTYPE_F32, 4, (const int64_t[]){sp->B, sp->T, sp->HV, sp->V});
    test_tensor final = test_tensor_alloc(FKDA_DTYPE_F32, 4, (const int64_t[]){in->N, sp->HV, sp->K, sp->V});
    test_tensor_fill_value(&out, NAN);
    test_tensor_fill_value(&final, NAN);
    fkda_prefill_args a;
    memset(&a, 0, sizeof a);
    a.q = in->q;
    a.k = in->k;
    a.v = in->v.t;
    a.g = in->g.t;
    a.beta = in->beta.t;
    a.A_log = in->A_log.t;
    a.dt_bias = in->dt_bias.t;
    a.cu_seqlens = in->cu_seqlens.t;
    a.initial_state = initial ? initial->t : test_absent();
    a.final_state = final.t;
    a.out = out.t;
    a.options = sp->options;
    fkda_device device = {FKDA_DEVICE_CPU, 0, NULL, threads, reference};
    size_t bytes = 0;
    fkda_status s = fkda_prefill_workspace_size(&a, &device, &bytes);
    CHECK(s == FKDA_OK, "%s: workspace: %s", label, fkda_last_error());
    void *ws = bytes ? aligned_alloc(256, (bytes + 255) / 256 * 256) : NULL;
    s = fkda_prefill(&a, &device, ws, bytes);
    CHECK(s == FKDA_OK, "%s: prefill: %s", label, fkda_last_error());
    free(ws);
    res.out = test_gather(&out.t, &res.n_out);
    res.final = test_gather(&final.t, &res.n_final);
    CHECK(test_count_nonfinite_d(res.out, res.n_out) == 0, "%s (%s): %zu out elements NaN/Inf or unwritten", label,
          reference ? "reference" : "fast", test_count_nonfinite_d(res.out, res.n_out));
    CHECK(test_count_nonfinite_d(res.final, res.n_final) == 0, "%s (%s): final state NaN/Inf or unwritten", label,
          reference ? "reference" : "fast");
    test_tensor_free(&out);
    test_tensor_free(&final);
    return res;
}

/* Runs fast (on 1 and 3 threads) and reference and compares. */
static void compare(const test_kda_spec *sp, const test_kda_inputs *in, const test_tensor *initial, const char *label)
{
    result ref = run(sp, in, initial, 1, 2, label);
    for (int threads = 1; threads <= 3; threads += 2) {
        result fast = run(sp, in, initial, 0, threads, label);
        /* float32 outputs and states: the float32 arithmetic over the sequence (test_util.h). */
        const double bar = test_bar_fast(FKDA_DTYPE_F32, sp->T, sp->K, ref.n_out);
        double eo = test_rel_error_d(fast.out, ref.out, ref.n_out);
        double ef = test_rel_error_d(fast.final, ref.final, ref.n_final);
        CHECK(eo <= bar, "%s (%d threads): out error %.3e > %.1e", label, threads, eo, bar);
        CHECK(ef <= bar, "%s (%d threads): final state error %.3e > %.1e", label, threads, ef, bar);
        if (getenv("FKDA_TEST_VERBOSE")) printf("  %-60s out %.2e final %.2e (bar %.1e)\n", label, eo, ef, bar);
        free(fast.out);
        free(fast.final);
    }
    free(ref.out);
    free(ref.final);
}

static test_kda_spec base_spec(void)
{
    test_kda_spec sp;
    memset(&sp, 0, sizeof sp);
    sp.B = 2;
    sp.T = 100;
    sp.H = 1;
    sp.HV = 2;
    sp.K = 64;
    sp.V = 64;
    sp.io_dtype = sp.g_dtype = sp.beta_dtype = sp.param_dtype = FKDA_DTYPE_F32;
    sp.g_mean = -3.0; /* lower bound gate: a ~ -0.25 per token, a memory of some tokens */
    sp.g_std = 1.0;
    sp.options = fkda_default_options();
    sp.options.gate = FKDA_GATE_LOWER_BOUND;
    sp.options.lower_bound = -5.0;
    sp.options.use_qk_l2norm = 1;
    sp.options.use_beta_sigmoid = 1;
    return sp;
}

static test_tensor random_state(const test_kda_spec *sp, int64_t N, test_rng *r)
{
    test_tensor s = test_tensor_alloc(FKDA_DTYPE_F32, 4, (const int64_t[]){N, sp->HV, sp->K, sp->V});
    test_tensor_fill_normal(&s, r, 0.0, 1.0);
    return s;
}

/* Sets element (token, head, key) of g [B, T, HV, K] by a rule of (token index, key). */
typedef double (*g_rule)(int64_t t, int64_t key, test_rng *r);

static void set_g(const test_kda_spec *sp, test_kda_inputs *in, g_rule rule, test_rng *r)
{
    for (int64_t b = 0; b < sp->B; b++)
        for (int64_t t = 0; t < sp->T; t++)
            for (int64_t h = 0; h < sp->HV; h++)
                for (int64_t i = 0; i < sp->K; i++)
                    test_tensor_set(&in->g, (size_t)(((b * sp->T + t) * sp->HV + h) * sp->K + i), rule(t, i, r));
}

static double g_plus20(int64_t t, int64_t key, test_rng *r)
{
    (void)t;
    (void)key;
    (void)r;
    return 20.0;
}
static double g_half_saturated(int64_t t, int64_t key, test_rng *r)
{
    (void)t;
    (void)r;
    return key % 2 ? 20.0 : -30.0;
}
static double g_random_strong(int64_t t, int64_t key, test_rng *r)
{
    (void)t;
    (void)key;
    return 2.0 + test_rng_normal(r);
}
static double g_minus100(int64_t t, int64_t key, test_rng *r)
{
    (void)t;
    (void)key;
    (void)r;
    return -100.0;
}
static double g_zero(int64_t t, int64_t key, test_rng *r)
{
    (void)t;
    (void)key;
    (void)r;
    return 0.0;
}
/* Alternating chunks: 16 tokens of mild decay, then 16 of a = -12 (pairwise), ... */
static double g_alternating(int64_t t, int64_t key, test_rng *r)
{
    (void)key;
    return (t / 16) % 2 ? -12.0 : -0.1 * test_rng_uniform(r);
}

int main(void)
{
    test_rng r;
    test_rng_seed(&r, test_seed_from_env());
    test_kda_spec sp;
    test_kda_inputs in;
    test_tensor init;

    /* 1. lower_bound -5, sigmoid saturated: a = -5 every token, G = -80 at every chunk end. */
    for (int variant = 0; variant < 4; variant++) {
        sp = base_spec();
        sp.has_A_log = variant & 1;
        sp.options.use_qk_l2norm = variant < 2;
        test_kda_inputs_make(&sp, &r, &in);
        set_g(&sp, &in, variant == 3 ? g_half_saturated : g_plus20, &r);
        init = random_state(&sp, in.N, &r);
        static const char *const labels[] = {"lb -5, g = +20", "lb -5, g = +20, A_log", "lb -5, g = +20, no L2 norm",
                                             "lb -5: half the keys a = -5, half no decay"};
        compare(&sp, &in, &init, labels[variant]);
        test_tensor_free(&init);
        test_kda_inputs_free(&in);
    }

    /* 2. Decays beyond the factorised range: the pairwise form in every chunk. */
    sp = base_spec();
    sp.options.gate = FKDA_GATE_SOFTPLUS;
    sp.has_A_log = 1;
    sp.has_dt_bias = 1;
    test_kda_inputs_make(&sp, &r, &in);
    for (int64_t h = 0; h < sp.HV; h++) test_tensor_set(&in.A_log, (size_t)h, log(16.0));
    set_g(&sp, &in, g_random_strong, &r);
    init = random_state(&sp, in.N, &r);
    compare(&sp, &in, &init, "softplus, exp(A_log) = 16");
    test_tensor_free(&init);
    test_kda_inputs_free(&in);

    sp = base_spec();
    sp.options.lower_bound = -20.0;
    test_kda_inputs_make(&sp, &r, &in);
    set_g(&sp, &in, g_random_strong, &r);
    init = random_state(&sp, in.N, &r);
    compare(&sp, &in, &init, "lower_bound -20");
    test_tensor_free(&init);
    test_kda_inputs_free(&in);

    sp = base_spec();
    sp.options.gate = FKDA_GATE_NONE;
    test_kda_inputs_make(&sp, &r, &in);
    set_g(&sp, &in, g_minus100, &r);
    init = random_state(&sp, in.N, &r);
    compare(&sp, &in, &init, "gate off, g = -100");
    set_g(&sp, &in, g_alternating, &r);
    compare(&sp, &in, &init, "gate off, chunks alternate factorised / pairwise");
    /* 3. No decay at all: the pure delta rule. */
    set_g(&sp, &in, g_zero, &r);
    compare(&sp, &in, &init, "gate off, g = 0 (no decay)");
    test_tensor_free(&init);
    test_kda_inputs_free(&in);

    /* 4. beta at the ends. */
    static const double betas[] = {-30.0, 30.0};
    for (int i = 0; i < 2; i++)
        for (int neg = 0; neg < 2; neg++) {
            sp = base_spec();
            sp.options.allow_neg_eigval = neg;
            test_kda_inputs_make(&sp, &r, &in);
            test_tensor_fill_value(&in.beta, betas[i]);
            init = random_state(&sp, in.N, &r);
            char label[80];
            snprintf(label, sizeof label, "beta sigmoid(%+.0f)%s", betas[i], neg ? " x 2" : "");
            compare(&sp, &in, &init, label);
            test_tensor_free(&init);
            test_kda_inputs_free(&in);
        }
    for (int i = 0; i < 2; i++) {
        sp = base_spec();
        sp.options.use_beta_sigmoid = 0;
        test_kda_inputs_make(&sp, &r, &in);
        test_tensor_fill_value(&in.beta, (double)i);
        init = random_state(&sp, in.N, &r);
        compare(&sp, &in, &init, i ? "raw beta = 1" : "raw beta = 0");
        test_tensor_free(&init);
        test_kda_inputs_free(&in);
    }
    /* Identical keys with b = 1: each token projects the key direction out of the state. */
    sp = base_spec();
    sp.options.use_beta_sigmoid = 0;
    test_kda_inputs_make(&sp, &r, &in);
    test_tensor_fill_value(&in.beta, 1.0);
    for (size_t i = 0; i < in.k_buf.count; i++)
        test_tensor_set(&in.k_buf, i, test_tensor_get(&in.k_buf, i % (size_t)sp.K));
    init = random_state(&sp, in.N, &r);
    compare(&sp, &in, &init, "identical keys, b = 1");
    test_tensor_free(&init);
    test_kda_inputs_free(&in);

    /* 5. Zero and tiny keys / queries under the L2 norm. */
    for (int tiny = 0; tiny < 2; tiny++) {
        sp = base_spec();
        test_kda_inputs_make(&sp, &r, &in);
        /* every other token's k (and every third token's q) zero or tiny */
        for (int64_t b = 0; b < sp.B; b++)
            for (int64_t t = 0; t < sp.T; t++)
                for (int64_t i = 0; i < sp.H * sp.K; i++) {
                    size_t e = (size_t)((b * sp.T + t) * sp.H * sp.K + i);
                    double scale = tiny ? 1e-20 : 0.0;
                    if (t % 2 == 0) test_tensor_set(&in.k_buf, e, scale * test_tensor_get(&in.k_buf, e));
                    if (t % 3 == 0) test_tensor_set(&in.q_buf, e, scale * test_tensor_get(&in.q_buf, e));
                }
        init = random_state(&sp, in.N, &r);
        compare(&sp, &in, &init, tiny ? "tiny q and k (1e-20), L2 norm" : "zero q and k, L2 norm");
        test_tensor_free(&init);
        test_kda_inputs_free(&in);
    }

    /* 6. A long sequence. */
    sp = base_spec();
    sp.B = 1;
    sp.T = 4096;
    sp.HV = 1;
    sp.K = 128;
    sp.V = 128;
    test_kda_inputs_make(&sp, &r, &in);
    init = random_state(&sp, in.N, &r);
    compare(&sp, &in, &init, "T = 4096");
    test_tensor_free(&init);
    test_kda_inputs_free(&in);
    /* ... with slow decay (long memory) and no norm, the hardest for accumulated error. */
    sp = base_spec();
    sp.B = 1;
    sp.T = 4096;
    sp.HV = 1;
    sp.K = 128;
    sp.V = 64;
    sp.options.gate = FKDA_GATE_NONE;
    sp.options.use_qk_l2norm = 0;
    sp.g_mean = 6.0; /* logsigmoid(6) = -0.0025 per token */
    test_kda_inputs_make(&sp, &r, &in);
    compare(&sp, &in, NULL, "T = 4096, slow decay, no L2 norm");
    test_kda_inputs_free(&in);

    return test_exit("test_cpu_numerics");
}

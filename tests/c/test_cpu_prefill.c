/*
 * test_cpu_prefill.c: the CPU prefill through the public API.
 *
 * Three implementations meet on every case:
 *   naive      written here, in double, straight from docs/design.md section 1 (pre-activations,
 *              head mapping, varlen, state layouts): an independent check of the reference
 *   reference  the library with device.reference = 1 (float64, token by token)
 *   fast       the library's chunked float32 path, on 1..16 threads
 * Checks: reference == naive within the output rounding (test_bar_reference), fast == reference
 * within the float32 arithmetic and the roundings it flips (test_bar_fast), every
 * output element written (outputs are poisoned with NaN before each run), the bytes around a
 * strided output untouched, and every call returning FKDA_OK.
 *
 * The cases: fixed ones for each requirement (lengths 0, 1, 15, 16, 17, 63, 64, 65 and long;
 * both state layouts and dtypes; GVA; every K and V in {16 .. 256}; every gate / beta / norm
 * switch; f16 and bf16 inputs; strided inputs and outputs; T = 0), then random combinations.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"

/* Error bars (test_util.h): the fast path against the reference, test_bar_fast of the output's
 * dtype over the longest sequence (float32 arithmetic, and the roundings it flips in f16 /
 * bf16 outputs); the reference against the naive model, test_bar_reference (the output's
 * rounding only). */
static int64_t longest_sequence(const test_kda_inputs *in)
{
    int64_t most = 0;
    for (int64_t n = 0; n < in->N; n++) most = in->length[n] > most ? in->length[n] : most;
    return most;
}

static const char *dtype_name(fkda_dtype d)
{
    return d == FKDA_DTYPE_F32 ? "f32" : d == FKDA_DTYPE_F16 ? "f16" : d == FKDA_DTYPE_BF16 ? "bf16" : "int";
}

static const char *gate_name(fkda_gate g)
{
    return g == FKDA_GATE_NONE ? "none" : g == FKDA_GATE_LOWER_BOUND ? "lower_bound" : "softplus";
}

/* One prefill case: the inputs' spec plus the states and how to run. */
typedef struct prefill_case {
    test_kda_spec spec;
    int has_initial, has_final;
    fkda_dtype initial_dtype, final_dtype;
    int strided_out; /* out as a [.., V] slice of a [.., V + 3] buffer */
    int threads;     /* for the fast path */
} prefill_case;

/* ---- the naive model ------------------------------------------------------------------------ */

static double sigmoid(double x) { return 1.0 / (1.0 + exp(-x)); }
static double softplus(double x) { return x > 20.0 ? x : log1p(exp(x)); }

/* out [B, T, HV, V] and final [N, HV, K, V] (always key-major here), from the gathered inputs;
 * initial is the gathered initial state in its own layout, or NULL. */
static void naive_prefill(const prefill_case *c, const test_kda_inputs *in, const double *initial, double *out,
                          double *final)
{
    const test_kda_spec *sp = &c->spec;
    const fkda_options *o = &sp->options;
    const int64_t T = sp->T, H = sp->H, HV = sp->HV, K = sp->K, V = sp->V;
    size_t count;
    double *q = test_gather(&in->q, &count), *k = test_gather(&in->k, &count);
    double *v = test_gather(&in->v.t, &count), *g = test_gather(&in->g.t, &count);
    double *beta = test_gather(&in->beta.t, &count);
    double *A_log = in->A_log.t.data ? test_gather(&in->A_log.t, &count) : NULL;
    double *dt_bias = in->dt_bias.t.data ? test_gather(&in->dt_bias.t, &count) : NULL;
    const double scale = o->scale != 0.0 ? o->scale : 1.0 / sqrt((double)K);
    double *S = malloc((size_t)(K * V) * sizeof(double));
    double *qt = malloc((size_t)K * sizeof(double)), *kt = malloc((size_t)K * sizeof(double));
    double *at = malloc((size_t)K * sizeof(double)), *kv = malloc((size_t)V * sizeof(double));

    for (int64_t n = 0; n < in->N; n++) {
        const int64_t row = sp->nseq > 0 ? 0 : n;
        for (int64_t h = 0; h < HV; h++) {
            const int64_t hq = h / (HV / H);
            for (int64_t i = 0; i < K; i++)
                for (int64_t j = 0; j < V; j++) {
                    double s0 = 0.0;
                    if (initial)
                        s0 = o->state_v_first ? initial[((n * HV + h) * V + j) * K + i]
                                              : initial[((n * HV + h) * K + i) * V + j];
                    S[i * V + j] = s0;
                }
            for (int64_t t = in->start[n]; t < in->start[n] + in->length[n]; t++) {
                const int64_t tok = row * T + t;
                double qn = 0.0, kn = 0.0;
                for (int64_t i = 0; i < K; i++) {
                    qt[i] = q[(tok * H + hq) * K + i];
                    kt[i] = k[(tok * H + hq) * K + i];
                    qn += qt[i] * qt[i];
                    kn += kt[i] * kt[i];
                }
                if (o->use_qk_l2norm)
                    for (int64_t i = 0; i < K; i++) {
                        qt[i] /= sqrt(qn + 1e-6);
                        kt[i] /= sqrt(kn + 1e-6);
                    }
                for (int64_t i = 0; i < K; i++) {
                    const double x = g[(tok * HV + h) * K + i] + (dt_bias ? dt_bias[h * K + i] : 0.0);
                    if (o->gate == FKDA_GATE_NONE)
                        at[i] = g[(tok * HV + h) * K + i];
                    else if (o->gate == FKDA_GATE_LOWER_BOUND)
                        at[i] = o->lower_bound * sigmoid((A_log ? exp(A_log[h]) : 1.0) * x);
                    else
                        at[i] = -exp(A_log[h]) * softplus(x);
                }
                double b = beta[tok * HV + h];
                if (o->use_beta_sigmoid) b = (o->allow_neg_eigval ? 2.0 : 1.0) * sigmoid(b);
                for (int64_t i = 0; i < K; i++)
                    for (int64_t j = 0; j < V; j++) S[i * V + j] *= exp(at[i]);
                for (int64_t j = 0; j < V; j++) {
                    kv[j] = 0.0;
                    for (int64_t i = 0; i < K; i++) kv[j] += kt[i] * S[i * V + j];
                }
                for (int64_t i = 0; i < K; i++)
                    for (int64_t j = 0; j < V; j++) S[i * V + j] += b * kt[i] * (v[(tok * HV + h) * V + j] - kv[j]);
                for (int64_t j = 0; j < V; j++) {
                    double acc = 0.0;
                    for (int64_t i = 0; i < K; i++) acc += qt[i] * S[i * V + j];
                    out[(tok * HV + h) * V + j] = scale * acc;
                }
            }
            memcpy(final + (n * HV + h) * K * V, S, (size_t)(K * V) * sizeof(double));
        }
    }
    free(q);
    free(k);
    free(v);
    free(g);
    free(beta);
    free(A_log);
    free(dt_bias);
    free(S);
    free(qt);
    free(kt);
    free(at);
    free(kv);
}

/* ---- one library run ------------------------------------------------------------------------ */

typedef struct run_result {
    double *out, *final; /* gathered; final in the state's own layout (NULL when absent) */
    size_t n_out, n_final;
} run_result;

static int64_t state_shape_last2(const prefill_case *c, int which)
{
    const int v_first = c->spec.options.state_v_first;
    return which == 0 ? (v_first ? c->spec.V : c->spec.K) : (v_first ? c->spec.K : c->spec.V);
}

static run_result run_library(const prefill_case *c, const test_kda_inputs *in, const test_tensor *initial,
                              int reference, const char *label)
{
    const test_kda_spec *sp = &c->spec;
    run_result res = {NULL, NULL, 0, 0};
    const int64_t B = sp->B, T = sp->T, HV = sp->HV, V = sp->V;

    /* out: contiguous, or the first V columns of a [B, T, HV, V + 3] buffer whose extra
     * columns hold a sentinel that must survive. */
    test_tensor out_buf = test_tensor_alloc(sp->io_dtype, 4, (const int64_t[]){B, T, HV, V + (c->strided_out ? 3 : 0)});
    test_tensor_fill_value(&out_buf, 7.0);
    fkda_tensor out = fkda_make_tensor(out_buf.t.data, sp->io_dtype, 4, (const int64_t[]){B, T, HV, V});
    for (int d = 0; d < 3; d++) out.stride[d] = out_buf.t.stride[d];
    test_view_fill(&out, NAN);

    test_tensor final = {test_absent(), 0};
    if (c->has_final) {
        final = test_tensor_alloc(c->final_dtype, 4,
                                  (const int64_t[]){in->N, HV, state_shape_last2(c, 0), state_shape_last2(c, 1)});
        test_tensor_fill_value(&final, NAN);
    }
    void *initial_copy = initial ? test_tensor_snapshot(initial) : NULL;

    fkda_prefill_args args;
    memset(&args, 0, sizeof args);
    args.q = in->q;
    args.k = in->k;
    args.v = in->v.t;
    args.g = in->g.t;
    args.beta = in->beta.t;
    args.A_log = in->A_log.t;
    args.dt_bias = in->dt_bias.t;
    args.cu_seqlens = in->cu_seqlens.t;
    args.initial_state = initial ? initial->t : test_absent();
    args.final_state = final.t;
    args.out = out;
    args.options = sp->options;
    fkda_device device = {FKDA_DEVICE_CPU, 0, NULL, reference ? 2 : c->threads, reference};

    size_t bytes = 0;
    fkda_status s = fkda_prefill_workspace_size(&args, &device, &bytes);
    CHECK(s == FKDA_OK, "%s: workspace size: %s", label, fkda_last_error());
    void *workspace = bytes ? aligned_alloc(256, (bytes + 255) / 256 * 256) : NULL;
    s = fkda_prefill(&args, &device, workspace, bytes);
    CHECK(s == FKDA_OK, "%s: prefill: %s", label, fkda_last_error());
    free(workspace);

    res.out = test_gather(&out, &res.n_out);
    CHECK(test_count_nonfinite_d(res.out, res.n_out) == 0,
          "%s: %zu of %zu out elements not written "
          "(or not finite)",
          label, test_count_nonfinite_d(res.out, res.n_out), res.n_out);
    if (c->strided_out) {
        int intact = 1;
        for (size_t i = 0; i < out_buf.count; i++)
            if (i % (size_t)(V + 3) >= (size_t)V && test_tensor_get(&out_buf, i) != 7.0) intact = 0;
        CHECK(intact, "%s: wrote outside the strided out view", label);
    }
    if (c->has_final) {
        res.final = test_gather(&final.t, &res.n_final);
        CHECK(test_count_nonfinite_d(res.final, res.n_final) == 0, "%s: final_state not fully written", label);
        test_tensor_free(&final);
    }
    if (initial) {
        CHECK(test_tensor_unchanged(initial, initial_copy), "%s: initial_state was modified", label);
        free(initial_copy);
    }
    test_tensor_free(&out_buf);
    return res;
}

/* ---- one case --------------------------------------------------------------------------------- */

static void describe(const prefill_case *c, char *buf, size_t size)
{
    const test_kda_spec *sp = &c->spec;
    const fkda_options *o = &sp->options;
    snprintf(buf, size,
             "B=%lld T=%lld nseq=%d H=%lld HV=%lld K=%lld V=%lld io=%s g=%s beta=%s gate=%s lb=%g "
             "A_log=%d dt_bias=%d%s l2=%d sig=%d neg=%d init=%s final=%s v_first=%d strided=%d/%d thr=%d",
             (long long)sp->B, (long long)sp->T, sp->nseq, (long long)sp->H, (long long)sp->HV, (long long)sp->K,
             (long long)sp->V, dtype_name(sp->io_dtype), dtype_name(sp->g_dtype), dtype_name(sp->beta_dtype),
             gate_name(o->gate), o->lower_bound, sp->has_A_log, sp->has_dt_bias, sp->dt_bias_flat ? "(flat)" : "",
             o->use_qk_l2norm, o->use_beta_sigmoid, o->allow_neg_eigval,
             c->has_initial ? dtype_name(c->initial_dtype) : "-", c->has_final ? dtype_name(c->final_dtype) : "-",
             o->state_v_first, sp->strided, c->strided_out, c->threads);
}

static void run_case(prefill_case *c, test_rng *r, int check_naive)
{
    test_kda_inputs in;
    test_kda_inputs_make(&c->spec, r, &in);
    const test_kda_spec *sp = &c->spec;
    char label[512];
    describe(c, label, sizeof label);

    test_tensor initial = {test_absent(), 0};
    if (c->has_initial) {
        initial = test_tensor_alloc(c->initial_dtype, 4,
                                    (const int64_t[]){in.N, sp->HV, state_shape_last2(c, 0), state_shape_last2(c, 1)});
        test_tensor_fill_normal(&initial, r, 0.0, 0.5);
    }
    const test_tensor *init = c->has_initial ? &initial : NULL;

    run_result ref = run_library(c, &in, init, 1, label);
    run_result fast = run_library(c, &in, init, 0, label);

    const int64_t T_seq = longest_sequence(&in);
    const double bar_out = test_bar_fast(sp->io_dtype, T_seq, sp->K, ref.n_out);
    double e_out = test_rel_error_d(fast.out, ref.out, ref.n_out);
    CHECK(e_out <= bar_out, "%s: fast vs reference: out error %.3e > %.1e", label, e_out, bar_out);
    double e_final = 0.0, bar_final = 0.0;
    if (c->has_final) {
        bar_final = test_bar_fast(c->final_dtype, T_seq, sp->K, ref.n_final);
        e_final = test_rel_error_d(fast.final, ref.final, ref.n_final);
        CHECK(e_final <= bar_final, "%s: fast vs reference: final state error %.3e > %.1e", label, e_final, bar_final);
    }

    if (check_naive) {
        const int64_t n_out = sp->B * sp->T * sp->HV * sp->V, n_state = in.N * sp->HV * sp->K * sp->V;
        double *out = malloc((size_t)(n_out ? n_out : 1) * sizeof(double));
        double *final = malloc((size_t)(n_state ? n_state : 1) * sizeof(double));
        size_t count;
        double *init_d = init ? test_gather(&initial.t, &count) : NULL;
        naive_prefill(c, &in, init_d, out, final);
        double e = test_rel_error_d(ref.out, out, (size_t)n_out);
        CHECK(e <= test_bar_reference(sp->io_dtype), "%s: reference vs naive: out error %.3e > %.1e", label, e,
              test_bar_reference(sp->io_dtype));
        if (c->has_final) {
            /* The library's final state is in its own layout; bring naive's into it. */
            double *laid = malloc((size_t)(n_state ? n_state : 1) * sizeof(double));
            for (int64_t s = 0; s < in.N * sp->HV; s++)
                for (int64_t i = 0; i < sp->K; i++)
                    for (int64_t j = 0; j < sp->V; j++)
                        laid[sp->options.state_v_first ? (s * sp->V + j) * sp->K + i : (s * sp->K + i) * sp->V + j] =
                            final[(s * sp->K + i) * sp->V + j];
            e = test_rel_error_d(ref.final, laid, (size_t)n_state);
            CHECK(e <= test_bar_reference(c->final_dtype), "%s: reference vs naive: final error %.3e > %.1e", label, e,
                  test_bar_reference(c->final_dtype));
            free(laid);
        }
        free(out);
        free(final);
        free(init_d);
    }
    if (getenv("FKDA_TEST_VERBOSE"))
        printf("  out %.2e (bar %.1e) final %.2e (bar %.1e)  %s\n", e_out, bar_out, e_final, bar_final, label);

    free(ref.out);
    free(ref.final);
    free(fast.out);
    free(fast.final);
    if (c->has_initial) test_tensor_free(&initial);
    test_kda_inputs_free(&in);
}

/* A base case: f32, safe gate with A_log and dt_bias, norm and sigmoid on, states in and out. */
static prefill_case base_case(void)
{
    prefill_case c;
    memset(&c, 0, sizeof c);
    test_kda_spec *sp = &c.spec;
    sp->B = 1;
    sp->T = 64;
    sp->H = 2;
    sp->HV = 2;
    sp->K = 64;
    sp->V = 64;
    sp->io_dtype = sp->g_dtype = sp->beta_dtype = sp->param_dtype = FKDA_DTYPE_F32;
    sp->has_A_log = sp->has_dt_bias = 1;
    sp->g_mean = -2.0;
    sp->g_std = 1.5; /* decays from ~0 to ~lower_bound per token */
    sp->options = fkda_default_options();
    sp->options.gate = FKDA_GATE_LOWER_BOUND;
    sp->options.lower_bound = -5.0;
    sp->options.use_qk_l2norm = 1;
    sp->options.use_beta_sigmoid = 1;
    c.has_initial = c.has_final = 1;
    c.initial_dtype = c.final_dtype = FKDA_DTYPE_F32;
    c.threads = 2;
    return c;
}

static const fkda_dtype float_dtypes[3] = {FKDA_DTYPE_F32, FKDA_DTYPE_F16, FKDA_DTYPE_BF16};

/* A random combination of everything, sized so that the reference stays quick. */
static prefill_case random_case(test_rng *r)
{
    static const int64_t dims[] = {16, 32, 64, 128, 256, 8, 48, 100};
    static const int64_t varlens[] = {0, 1, 15, 16, 17, 31, 33, 63, 64, 65, 100, 129};
    prefill_case c = base_case();
    test_kda_spec *sp = &c.spec;
    fkda_options *o = &sp->options;
    sp->K = dims[test_rng_int(r, 0, 7)];
    sp->V = dims[test_rng_int(r, 0, 7)];
    sp->H = test_rng_int(r, 1, 3);
    sp->HV = sp->H * (int64_t[]){1, 2, 4}[test_rng_int(r, 0, 2)];
    const int64_t budget = 3000000 / (sp->K * sp->V * sp->HV) + 1; /* tokens */
    static int64_t lengths[64][8];
    static int slot = 0;
    int64_t *len = lengths[slot++ % 64];
    if (test_rng_int(r, 0, 1)) {
        sp->nseq = (int)test_rng_int(r, 1, 6);
        for (int i = 0; i < sp->nseq; i++) len[i] = varlens[test_rng_int(r, 0, 11)];
        len[0] = budget > 2 ? test_rng_int(r, 0, budget < 300 ? budget : 300) : 1;
        sp->lengths = len;
        sp->cu_int32 = (int)test_rng_int(r, 0, 1);
    } else {
        sp->B = test_rng_int(r, 1, 3);
        sp->T = test_rng_int(r, 0, budget / sp->B < 200 ? budget / sp->B + 1 : 200);
    }
    sp->io_dtype = float_dtypes[test_rng_int(r, 0, 2)];
    sp->g_dtype = float_dtypes[test_rng_int(r, 0, 2)];
    sp->beta_dtype = float_dtypes[test_rng_int(r, 0, 2)];
    sp->param_dtype = float_dtypes[test_rng_int(r, 0, 2)];
    sp->strided = (int)test_rng_int(r, 0, 1);
    c.strided_out = (int)test_rng_int(r, 0, 1);
    o->gate = (fkda_gate)test_rng_int(r, 0, 2);
    sp->g_mean = -3.0 + 4.0 * test_rng_uniform(r);
    o->lower_bound = -(0.5 + 4.5 * test_rng_uniform(r));
    sp->has_A_log = o->gate == FKDA_GATE_SOFTPLUS ? 1 : (int)test_rng_int(r, 0, 1);
    sp->has_dt_bias = (int)test_rng_int(r, 0, 1);
    sp->dt_bias_flat = (int)test_rng_int(r, 0, 1);
    o->use_qk_l2norm = (int)test_rng_int(r, 0, 1);
    o->use_beta_sigmoid = (int)test_rng_int(r, 0, 1);
    o->allow_neg_eigval = o->use_beta_sigmoid && o->use_qk_l2norm && test_rng_int(r, 0, 1);
    o->state_v_first = (int)test_rng_int(r, 0, 1);
    o->scale = test_rng_int(r, 0, 1) ? 0.0 : 0.3;
    c.has_initial = (int)test_rng_int(r, 0, 1);
    c.has_final = (int)test_rng_int(r, 0, 1);
    c.initial_dtype = test_rng_int(r, 0, 1) ? FKDA_DTYPE_F32 : FKDA_DTYPE_BF16;
    c.final_dtype = test_rng_int(r, 0, 1) ? FKDA_DTYPE_F32 : FKDA_DTYPE_BF16;
    c.threads = (int)test_rng_int(r, 0, 4);
    return c;
}

int main(void)
{
    test_rng r;
    test_rng_seed(&r, test_seed_from_env());

    /* Equal lengths, several rows. */
    prefill_case c = base_case();
    c.spec.B = 3;
    c.spec.T = 100;
    run_case(&c, &r, 1);

    /* Varlen with every boundary length, int64 and int32 offsets, GVA 2x. */
    static const int64_t edges[] = {0, 1, 15, 16, 17, 63, 64, 65, 0, 300};
    c = base_case();
    c.spec.nseq = 10;
    c.spec.lengths = edges;
    c.spec.HV = 4;
    c.spec.K = 32;
    c.spec.V = 64;
    run_case(&c, &r, 1);
    c.spec.cu_int32 = 1;
    c.spec.options.state_v_first = 1;
    c.threads = 3;
    run_case(&c, &r, 1);

    /* A long sequence (fast path only against the reference; naive would be slow). */
    static const int64_t long_one[] = {17, 2000, 5};
    c = base_case();
    c.spec.nseq = 3;
    c.spec.lengths = long_one;
    c.spec.H = 1;
    c.spec.HV = 1;
    run_case(&c, &r, 0);

    /* Every K and V, equal and unequal. */
    static const int64_t dims[] = {16, 32, 64, 128, 256};
    for (int i = 0; i < 5; i++)
        for (int j = 0; j < 5; j++) {
            c = base_case();
            c.spec.K = dims[i];
            c.spec.V = dims[j];
            c.spec.H = 1;
            c.spec.HV = 1;
            c.spec.T = dims[i] * dims[j] >= 128 * 256 ? 40 : 70;
            c.spec.options.state_v_first = (i + j) % 2;
            run_case(&c, &r, i == j || i + j == 4);
        }
    /* Sizes that are not multiples of the kernels' tiles. */
    static const int64_t odd[][2] = {{1, 1}, {3, 5}, {8, 24}, {48, 40}, {100, 7}, {17, 130}};
    for (int i = 0; i < 6; i++) {
        c = base_case();
        c.spec.K = odd[i][0];
        c.spec.V = odd[i][1];
        c.spec.T = 37;
        c.threads = 4;
        run_case(&c, &r, 1);
    }

    /* GVA 4x; one head with many threads (the value columns split across them). */
    c = base_case();
    c.spec.H = 1;
    c.spec.HV = 4;
    c.spec.V = 128;
    run_case(&c, &r, 1);
    c = base_case();
    c.spec.H = 1;
    c.spec.HV = 1;
    c.spec.V = 256;
    c.spec.T = 90;
    c.threads = 4;
    run_case(&c, &r, 1);

    /* One head (and two) on every thread count: the fast path splits the V value columns into
     * up to min(threads, V / 32) blocks per head, the last one narrower (V = 40: 32 + 8 columns;
     * V = 200 on 3 threads: 80 + 80 + 40). The reference takes the whole of V per head. */
    static const int split_threads[] = {1, 2, 3, 4, 5, 7, 8, 16};
    for (int i = 0; i < 8; i++)
        for (int j = 0; j < 3; j++) {
            c = base_case();
            c.spec.H = 1;
            c.spec.HV = j == 2 ? 2 : 1;
            c.spec.K = 32;
            c.spec.V = j == 0 ? 40 : 200;
            c.spec.T = 40;
            c.spec.options.state_v_first = (i + j) % 2;
            c.initial_dtype = c.final_dtype = i % 3 == 2 ? FKDA_DTYPE_BF16 : FKDA_DTYPE_F32;
            c.threads = split_threads[i];
            run_case(&c, &r, j == 0);
        }

    /* Every gate and beta / norm switch. */
    for (int gate = 0; gate < 3; gate++)
        for (int variant = 0; variant < 4; variant++) {
            c = base_case();
            fkda_options *o = &c.spec.options;
            o->gate = (fkda_gate)gate;
            c.spec.has_A_log = gate == FKDA_GATE_SOFTPLUS || (variant & 1);
            c.spec.has_dt_bias = variant >= 2;
            c.spec.dt_bias_flat = variant == 3;
            o->lower_bound = variant == 1 ? -1.0 : -5.0;
            o->use_qk_l2norm = variant != 2;
            o->use_beta_sigmoid = variant != 1;
            o->allow_neg_eigval = variant == 3;
            c.spec.T = 80;
            run_case(&c, &r, 1);
        }

    /* Lower bounds outside [-5, 0), where the chunks take the pairwise form. With g spread wide
     * (sigmoids from ~1e-10 to 1) one chunk holds decays that differ by ten orders of magnitude:
     * at -1e30 a running sum of the decays must not absorb the later, smaller ones (it did: the
     * fast path was 1 % off the reference, found by tests/fuzz/fuzz_api.c). */
    static const double far_bounds[] = {-20.0, -1000.0, -1e30};
    for (int i = 0; i < 3; i++) {
        c = base_case();
        c.spec.options.gate = FKDA_GATE_LOWER_BOUND;
        c.spec.options.lower_bound = far_bounds[i];
        c.spec.has_A_log = c.spec.has_dt_bias = 1;
        c.spec.g_mean = 0.0;
        c.spec.g_std = 8.0;
        c.spec.T = 70;
        run_case(&c, &r, 1);
    }

    /* f16 / bf16 inputs and parameters, bf16 states, both layouts, strided inputs and out. */
    for (int d = 1; d < 3; d++)
        for (int layout = 0; layout < 2; layout++) {
            c = base_case();
            c.spec.io_dtype = c.spec.g_dtype = c.spec.beta_dtype = c.spec.param_dtype = float_dtypes[d];
            c.initial_dtype = FKDA_DTYPE_BF16;
            c.final_dtype = layout ? FKDA_DTYPE_F32 : FKDA_DTYPE_BF16;
            c.spec.options.state_v_first = layout;
            c.spec.strided = 1;
            c.strided_out = 1;
            c.spec.T = 75;
            run_case(&c, &r, 1);
        }

    /* T = 0: no tokens, final state = initial state (or zero); and a state-less call. */
    c = base_case();
    c.spec.B = 2;
    c.spec.T = 0;
    run_case(&c, &r, 1);
    c.has_initial = 0;
    run_case(&c, &r, 1);
    c = base_case();
    c.has_initial = c.has_final = 0;
    run_case(&c, &r, 1);

    /* Random combinations. */
    for (int i = 0; i < 60; i++) {
        c = random_case(&r);
        run_case(&c, &r, i % 3 == 0);
    }
    return test_exit("test_cpu_prefill");
}

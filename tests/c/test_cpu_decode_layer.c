/*
 * test_cpu_decode_layer.c: the CPU fused decode layer (fkda_decode_layer) against a float64
 * model of the layer written here from the formulas of flashkda.h (conv with SiLU and its
 * window, the KDA step with the raw gate, beta sigmoid, L2 norm and K^-0.5, the gated RMSNorm),
 * independent of the library.
 *
 * Every scenario is a chain of calls on one pair of pools (conv and recurrent), run twice, fast
 * (float32) and reference (float64), each on its own pools against its own model, and checks
 * after every call:
 *   out                    against the model, rounded to out's dtype (poisoned with NaN before)
 *   the recurrent pool     the slots the call writes, against the model's pool
 *   the conv pool          bitwise against the model's (it holds raw inputs, copied)
 *   untouched slots        every slot of both pools no running sequence writes, bitwise
 *   skipped sequences      (negative read slot) out rows exactly zero
 * Scenarios: single-token chains with 1-D indices, a skipped sequence and a slot zeroed and
 * reused by a new sequence (both gates, f32 and bf16 io); no indices (slot n); speculative
 * decoding with 2-D indices and accepted counts (T = 3, mixed_qkv [B, T, dim], flat g). Then the
 * fused fast path against the unfused sequence through the library (fkda_decode on the conv
 * outputs of the model, then the norm), every validation message with nothing written, and the
 * CUDA device given host tensors (refused, nothing written).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"

typedef struct layer_case {
    int64_t B, T, H, HV, K, V, W, P, PC, L; /* PC conv slots of L rows */
    int has_t;                              /* mixed_qkv [B, T, dim] (else [B, dim], T = 1) */
    int flat_g;
    int index_mode; /* 0 none, 1 [B], 2 [B, T_max] with num_accepted_tokens */
    int64_t TI;     /* T_max of 2-D indices */
    fkda_dtype io;
    double lower_bound, eps;
    int has_bias;
} layer_case;

typedef struct layer_data {
    layer_case c;
    int64_t dim;
    test_tensor x, w, bias, cs, g, beta, A_log, dt, pool, gate, nw, out, idx, acc;
} layer_data;

static int64_t tok_shape(const layer_case *c, int64_t *shape, int64_t a, int64_t b, int nrest)
{
    int n = 0;
    shape[n++] = c->B;
    if (c->has_t) shape[n++] = c->T;
    if (nrest >= 1) shape[n++] = a;
    if (nrest >= 2) shape[n++] = b;
    return n;
}

static void make_data(layer_data *d, const layer_case *c, test_rng *r)
{
    memset(d, 0, sizeof *d);
    d->c = *c;
    const int64_t dim = 2 * c->H * c->K + c->HV * c->V;
    d->dim = dim;
    int64_t s[4];
    int n = tok_shape(c, s, dim, 0, 1);
    d->x = test_tensor_alloc(c->io, n, s);
    d->w = test_tensor_alloc(FKDA_DTYPE_F32, 2, (int64_t[]){dim, c->W});
    test_tensor_fill_normal(&d->w, r, 0.0, 0.5);
    if (c->has_bias) {
        d->bias = test_tensor_alloc(FKDA_DTYPE_F32, 1, (int64_t[]){dim});
        test_tensor_fill_normal(&d->bias, r, 0.0, 0.2);
    }
    d->cs = test_tensor_alloc(c->io, 3, (int64_t[]){c->PC, c->L, dim});
    test_tensor_fill_normal(&d->cs, r, 0.0, 1.0);
    n = c->flat_g ? tok_shape(c, s, c->HV * c->K, 0, 1) : tok_shape(c, s, c->HV, c->K, 2);
    d->g = test_tensor_alloc(FKDA_DTYPE_F32, n, s);
    n = tok_shape(c, s, c->HV, 0, 1);
    d->beta = test_tensor_alloc(FKDA_DTYPE_F32, n, s);
    d->A_log = test_tensor_alloc(FKDA_DTYPE_F32, 1, (int64_t[]){c->HV});
    test_tensor_fill_uniform(&d->A_log, r, -1.0, 0.5);
    d->dt = test_tensor_alloc(FKDA_DTYPE_F32, 2, (int64_t[]){c->HV, c->K});
    test_tensor_fill_normal(&d->dt, r, 0.0, 0.5);
    d->pool = test_tensor_alloc(FKDA_DTYPE_F32, 4, (int64_t[]){c->P, c->HV, c->K, c->V});
    test_tensor_fill_normal(&d->pool, r, 0.0, 0.3);
    n = tok_shape(c, s, c->HV, c->V, 2);
    d->gate = test_tensor_alloc(FKDA_DTYPE_F32, n, s);
    d->out = test_tensor_alloc(c->io, n, s);
    d->nw = test_tensor_alloc(FKDA_DTYPE_F32, 1, (int64_t[]){c->V});
    test_tensor_fill_uniform(&d->nw, r, 0.5, 1.5);
    if (c->index_mode == 1) d->idx = test_tensor_alloc(FKDA_DTYPE_I64, 1, (int64_t[]){c->B});
    if (c->index_mode == 2) {
        d->idx = test_tensor_alloc(FKDA_DTYPE_I64, 2, (int64_t[]){c->B, c->TI});
        d->acc = test_tensor_alloc(FKDA_DTYPE_I32, 1, (int64_t[]){c->B});
    }
}

/* New token inputs for the next call. */
static void fresh_tokens(layer_data *d, test_rng *r)
{
    test_tensor_fill_normal(&d->x, r, 0.0, 1.0);
    test_tensor_fill_normal(&d->g, r, 0.0, 1.0);
    test_tensor_fill_normal(&d->beta, r, 0.0, 1.0);
    test_tensor_fill_normal(&d->gate, r, 0.0, 1.5);
}

static void free_data(layer_data *d)
{
    test_tensor *all[] = {&d->x,  &d->w,    &d->bias, &d->cs, &d->g,   &d->beta, &d->A_log,
                          &d->dt, &d->pool, &d->gate, &d->nw, &d->out, &d->idx,  &d->acc};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        if (all[i]->t.data) test_tensor_free(all[i]);
}

static fkda_decode_layer_args layer_args(layer_data *d)
{
    fkda_decode_layer_args a;
    memset(&a, 0, sizeof a);
    a.mixed_qkv = d->x.t;
    a.conv_weight = d->w.t;
    a.conv_bias = d->bias.t;
    a.conv_state = d->cs.t;
    a.g = d->g.t;
    a.beta = d->beta.t;
    a.A_log = d->A_log.t;
    a.dt_bias = d->dt.t;
    a.lower_bound = d->c.lower_bound;
    a.state_pool = d->pool.t;
    a.state_indices = d->idx.t;
    a.num_accepted_tokens = d->acc.t;
    a.output_gate = d->gate.t;
    a.norm_weight = d->nw.t;
    a.norm_eps = d->c.eps;
    a.out = d->out.t;
    return a;
}

/* ---- the float64 model ------------------------------------------------------------------- */

static double sigmoid(double x) { return 1.0 / (1.0 + exp(-x)); }
static double get(const test_tensor *t, size_t i) { return test_tensor_get(t, i); }
static int64_t index_at(const layer_data *d, int64_t n, int64_t t)
{
    return (int64_t)get(&d->idx, (size_t)(n * (d->c.index_mode == 2 ? d->c.TI : 1) + t));
}
static int64_t accepted(const layer_data *d, int64_t n)
{
    return d->c.index_mode == 2 ? (int64_t)get(&d->acc, (size_t)n) : 1;
}
static int64_t model_read_slot(const layer_data *d, int64_t n)
{
    if (d->c.index_mode == 0) return n;
    return index_at(d, n, d->c.index_mode == 2 ? accepted(d, n) - 1 : 0);
}
static int64_t model_conv_slot(const layer_data *d, int64_t n) { return d->c.index_mode == 0 ? n : index_at(d, n, 0); }
/* The recurrent slot written after token t (-1: none), and at the end of the call. */
static int64_t model_write_slot(const layer_data *d, int64_t n, int64_t t)
{
    if (d->c.index_mode == 2) return t < d->c.TI ? index_at(d, n, t) : -1;
    return t == d->c.T - 1 ? model_read_slot(d, n) : -1;
}

/* One call of the layer on the model's pools (cs: [PC, L, dim] values, pool: [P, HV, K, V]),
 * each stored back rounded as the library stores it; out_model gets the float64 outputs, and
 * y_out (optional, [B, T, dim]) the conv outputs. */
static void model_call(const layer_data *d, double *cs, double *pool, double *out_model, double *y_out)
{
    const layer_case *c = &d->c;
    const int64_t dim = d->dim, T = c->T, W = c->W, K = c->K, V = c->V, HV = c->HV, H = c->H;
    double *y = malloc(sizeof(double) * (size_t)(T * dim));
    double *S = malloc(sizeof(double) * (size_t)(K * V));
    for (int64_t n = 0; n < c->B; n++) {
        const int64_t rs = model_read_slot(d, n);
        if (rs < 0) {
            for (int64_t i = 0; i < T * HV * V; i++) out_model[n * T * HV * V + i] = 0.0;
            continue;
        }
        /* conv: the window, then the state, per channel */
        const int64_t cslot = model_conv_slot(d, n);
        const int64_t first = c->index_mode == 2 ? accepted(d, n) - 1 : 0;
        for (int64_t ch = 0; ch < dim; ch++) {
            double seq[64];
            for (int64_t i = 0; i < W - 1; i++) seq[i] = cs[(cslot * c->L + first + i) * dim + ch];
            for (int64_t t = 0; t < T; t++) seq[W - 1 + t] = get(&d->x, (size_t)((n * T + t) * dim + ch));
            for (int64_t t = 0; t < T; t++) {
                double acc = c->has_bias ? get(&d->bias, (size_t)ch) : 0.0;
                for (int64_t j = 0; j < W; j++) acc += get(&d->w, (size_t)(ch * W + j)) * seq[t + j];
                y[t * dim + ch] = acc * sigmoid(acc);
            }
            /* sliding (2-D indices): window rows 1.. then every input; else the last W - 1 */
            const int64_t rows = c->index_mode == 2 ? W - 2 + T : W - 1;
            const int64_t from = c->index_mode == 2 ? 1 : T;
            for (int64_t i = 0; i < rows; i++) cs[(cslot * c->L + i) * dim + ch] = seq[from + i];
        }
        if (y_out)
            for (int64_t i = 0; i < T * dim; i++) y_out[n * T * dim + i] = y[i];
        /* the KDA step per value head */
        for (int64_t h = 0; h < HV; h++) {
            const int64_t qh = h / (HV / H);
            double *slot = pool + (rs * HV + h) * K * V;
            for (int64_t i = 0; i < K * V; i++) S[i] = slot[i];
            for (int64_t t = 0; t < T; t++) {
                const double *yt = y + t * dim;
                double q[256], k[256], a[256], o[256], u[256], qn = 0, kn = 0;
                for (int64_t i = 0; i < K; i++) {
                    q[i] = yt[qh * K + i];
                    k[i] = yt[H * K + qh * K + i];
                    qn += q[i] * q[i];
                    kn += k[i] * k[i];
                }
                for (int64_t i = 0; i < K; i++) {
                    q[i] /= sqrt(qn + 1e-6);
                    k[i] /= sqrt(kn + 1e-6);
                    const double raw = get(&d->g, (size_t)(((n * T + t) * HV + h) * K + i)) +
                                       get(&d->dt, (size_t)(h * K + i));
                    const double A = exp(get(&d->A_log, (size_t)h));
                    a[i] = c->lower_bound < 0 ? c->lower_bound * sigmoid(A * raw) : -A * log1p(exp(raw));
                }
                const double b = sigmoid(get(&d->beta, (size_t)((n * T + t) * HV + h)));
                for (int64_t j = 0; j < V; j++) u[j] = 0;
                for (int64_t i = 0; i < K; i++)
                    for (int64_t j = 0; j < V; j++) {
                        S[i * V + j] *= exp(a[i]);
                        u[j] += k[i] * S[i * V + j];
                    }
                for (int64_t j = 0; j < V; j++) u[j] = b * (yt[2 * H * K + h * V + j] - u[j]);
                for (int64_t j = 0; j < V; j++) o[j] = 0;
                for (int64_t i = 0; i < K; i++)
                    for (int64_t j = 0; j < V; j++) {
                        S[i * V + j] += k[i] * u[j];
                        o[j] += q[i] / sqrt((double)K) * S[i * V + j];
                    }
                double ms = 0;
                for (int64_t j = 0; j < V; j++) ms += o[j] * o[j] / (double)V;
                for (int64_t j = 0; j < V; j++) {
                    const size_t at = (size_t)(((n * T + t) * HV + h) * V + j);
                    out_model[at] = o[j] / sqrt(ms + c->eps) * get(&d->nw, (size_t)j) * sigmoid(get(&d->gate, at));
                }
                const int64_t ws = model_write_slot(d, n, t);
                if (ws >= 0)
                    for (int64_t i = 0; i < K * V; i++) pool[(ws * HV + h) * K * V + i] = (float)S[i];
            }
        }
    }
    free(y);
    free(S);
}

/* ---- running and checking ---------------------------------------------------------------- */

static fkda_status run_layer(layer_data *d, int reference, int threads)
{
    fkda_decode_layer_args a = layer_args(d);
    fkda_device dev = {FKDA_DEVICE_CPU, 0, NULL, threads, reference};
    size_t bytes = 0;
    fkda_status s = fkda_decode_layer_workspace_size(&a, &dev, &bytes);
    if (s != FKDA_OK) return s;
    void *ws = bytes ? aligned_alloc(256, (bytes + 255) / 256 * 256) : NULL;
    s = fkda_decode_layer(&a, &dev, ws, bytes);
    free(ws);
    return s;
}

static double *values_of(const test_tensor *t)
{
    double *v = malloc(sizeof(double) * (t->count ? t->count : 1));
    for (size_t i = 0; i < t->count; i++) v[i] = get(t, i);
    return v;
}

/* One call on both the library and the model, with every check of the file comment. */
static void call_and_check(layer_data *d, double *model_cs, double *model_pool, int reference, const char *what)
{
    const layer_case *c = &d->c;
    const int64_t HV = c->HV, K = c->K, V = c->V, dim = d->dim;
    void *pool_before = test_tensor_snapshot(&d->pool), *cs_before = test_tensor_snapshot(&d->cs);
    test_tensor_fill_value(&d->out, NAN);
    double *out_model = malloc(sizeof(double) * d->out.count);
    model_call(d, model_cs, model_pool, out_model, NULL);
    fkda_status s = run_layer(d, reference, reference ? 1 : 3);
    CHECK(s == FKDA_OK, "%s: fkda_decode_layer failed: %s", what, fkda_last_error());

    /* out, against the model rounded to out's dtype */
    test_tensor rounded = test_tensor_alloc(c->io, d->out.t.ndim, d->out.t.shape);
    for (size_t i = 0; i < d->out.count; i++) test_tensor_set(&rounded, i, out_model[i]);
    CHECK(!test_has_nonfinite(&d->out), "%s: out has elements not written (NaN poison left)", what);
    const double bar = test_bar_rounded(c->io, reference ? 2e-6 : 2e-4, d->out.count);
    const double err = test_rel_error(&d->out, &rounded);
    CHECK(err <= bar, "%s: out error %.3g > %.3g", what, err, bar);
    for (int64_t n = 0; n < c->B; n++)
        if (model_read_slot(d, n) < 0)
            for (int64_t i = 0; i < c->T * HV * V; i++)
                CHECK(get(&d->out, (size_t)(n * c->T * HV * V + i)) == 0.0, "%s: skipped sequence %lld out not 0", what,
                      (long long)n);

    /* pools: written slots against the model; all others bitwise unchanged */
    char *pool_written = calloc((size_t)c->P, 1), *cs_written = calloc((size_t)c->PC, 1);
    for (int64_t n = 0; n < c->B; n++) {
        if (model_read_slot(d, n) < 0) continue;
        cs_written[model_conv_slot(d, n)] = 1;
        for (int64_t t = 0; t < c->T; t++)
            if (model_write_slot(d, n, t) >= 0) pool_written[model_write_slot(d, n, t)] = 1;
    }
    const size_t slot_elems = (size_t)(HV * K * V), cs_elems = (size_t)(c->L * dim);
    for (int64_t p = 0; p < c->P; p++) {
        const float *now = (const float *)d->pool.t.data + p * slot_elems;
        if (!pool_written[p]) {
            CHECK(memcmp(now, (const char *)pool_before + p * slot_elems * sizeof(float), slot_elems * 4) == 0,
                  "%s: recurrent slot %lld written, but no sequence writes it", what, (long long)p);
            continue;
        }
        double num = 0, den = 0;
        for (size_t i = 0; i < slot_elems; i++) {
            const double m = model_pool[p * slot_elems + i];
            num += (now[i] - m) * (now[i] - m);
            den += m * m;
        }
        const double e = sqrt(num / (den > 0 ? den : 1));
        CHECK(e <= (reference ? 2e-6 : 2e-4), "%s: recurrent slot %lld error %.3g", what, (long long)p, e);
    }
    const size_t esize = fkda_dtype_size(c->io);
    for (int64_t p = 0; p < c->PC; p++) {
        if (!cs_written[p]) {
            CHECK(memcmp((const char *)d->cs.t.data + p * cs_elems * esize,
                         (const char *)cs_before + p * cs_elems * esize, cs_elems * esize) == 0,
                  "%s: conv slot %lld written, but no sequence writes it", what, (long long)p);
            continue;
        }
        int same = 1;
        for (size_t i = 0; i < cs_elems; i++) same &= get(&d->cs, p * cs_elems + i) == model_cs[p * cs_elems + i];
        CHECK(same, "%s: conv slot %lld differs from the model's window", what, (long long)p);
    }
    free(pool_written);
    free(cs_written);
    test_tensor_free(&rounded);
    free(out_model);
    free(pool_before);
    free(cs_before);
}

/* Picks this call's slots: distinct, some skipped, the rest from the pools. */
static void pick_slots(layer_data *d, test_rng *r, int call)
{
    const layer_case *c = &d->c;
    if (c->index_mode == 0) return;
    int64_t *idx = (int64_t *)d->idx.t.data;
    /* recurrent slots: distinct per call; conv slots: idx[n, 0], distinct and < PC */
    int64_t perm[64];
    for (int64_t i = 0; i < c->P; i++) perm[i] = i;
    for (int64_t i = c->P - 1; i > 0; i--) {
        const int64_t j = test_rng_int(r, 0, i), t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    int64_t used = 0;
    for (int64_t n = 0; n < c->B; n++) {
        const int skip = n == (call % c->B) && call % 2 == 1; /* every other call skips one */
        if (c->index_mode == 1) {
            idx[n] = skip ? -1 : n; /* slot n < PC, and reused across calls (a chain) */
            continue;
        }
        int32_t *acc = (int32_t *)d->acc.t.data;
        acc[n] = (int32_t)test_rng_int(r, 1, c->TI);
        idx[n * c->TI] = skip ? -1 : n; /* conv and first-token slot n */
        for (int64_t t = 1; t < c->TI; t++) idx[n * c->TI + t] = c->B + (used++ % (c->P - c->B));
        if (skip) idx[n * c->TI + acc[n] - 1] = -1;
    }
}

static void scenario(const layer_case *c, uint64_t seed, int reference, const char *name)
{
    test_rng r;
    test_rng_seed(&r, seed);
    layer_data d;
    make_data(&d, c, &r);
    double *model_cs = values_of(&d.cs), *model_pool = values_of(&d.pool);
    char what[160];
    for (int call = 0; call < 5; call++) {
        fresh_tokens(&d, &r);
        pick_slots(&d, &r, call);
        if (call == 3 && c->index_mode == 1) {
            /* slot 0 is handed to a new sequence: both pools zeroed there first */
            memset(d.pool.t.data, 0, (size_t)(c->HV * c->K * c->V) * sizeof(float));
            memset(d.cs.t.data, 0, (size_t)(c->L * d.dim) * fkda_dtype_size(c->io));
            for (int64_t i = 0; i < c->HV * c->K * c->V; i++) model_pool[i] = 0;
            for (int64_t i = 0; i < c->L * d.dim; i++) model_cs[i] = 0;
        }
        snprintf(what, sizeof what, "%s %s call %d", name, reference ? "reference" : "fast", call);
        call_and_check(&d, model_cs, model_pool, reference, what);
    }
    free(model_cs);
    free(model_pool);
    free_data(&d);
}

/* ---- fused == unfused -------------------------------------------------------------------- */

/* The fast fused call against the library's unfused sequence on the same pools: the model's
 * conv outputs (rounded to float32) through fkda_decode, then the gated norm here. The two
 * differ only in the conv's float32 arithmetic, a few ulps of y. */
static void check_unfused(uint64_t seed)
{
    layer_case c = {4, 1, 2, 4, 32, 48, 4, 6, 5, 3, 0, 0, 1, 0, FKDA_DTYPE_F32, -5.0, 1e-5, 1};
    test_rng r;
    test_rng_seed(&r, seed);
    layer_data d;
    make_data(&d, &c, &r);
    fresh_tokens(&d, &r);
    pick_slots(&d, &r, 0);
    const int64_t B = c.B, T = c.T, H = c.H, HV = c.HV, K = c.K, V = c.V, dim = d.dim;
    double *model_cs = values_of(&d.cs), *model_pool = values_of(&d.pool);
    double *out_model = malloc(sizeof(double) * d.out.count), *y = malloc(sizeof(double) * (size_t)(B * T * dim));
    void *pool_before = test_tensor_snapshot(&d.pool);
    model_call(&d, model_cs, model_pool, out_model, y);

    /* unfused: fkda_decode on y, on a copy of the pool */
    test_tensor Y = test_tensor_alloc(FKDA_DTYPE_F32, 3, (int64_t[]){B, T, dim});
    for (size_t i = 0; i < Y.count; i++) test_tensor_set(&Y, i, y[i]);
    test_tensor pool2 = test_tensor_alloc(FKDA_DTYPE_F32, 4, d.pool.t.shape);
    memcpy(pool2.t.data, pool_before, pool2.count * sizeof(float));
    test_tensor O = test_tensor_alloc(FKDA_DTYPE_F32, 4, (int64_t[]){B, T, HV, V});
    fkda_decode_args a;
    memset(&a, 0, sizeof a);
    const fkda_tensor qk = {Y.t.data, FKDA_DTYPE_F32, 4, {B, T, H, K}, {T * dim, dim, K, 1}, 0};
    a.q = qk;
    a.k = qk;
    a.k.data = (float *)Y.t.data + H * K;
    a.v = (fkda_tensor){(float *)Y.t.data + 2 * H * K, FKDA_DTYPE_F32, 4, {B, T, HV, V}, {T * dim, dim, V, 1}, 0};
    a.g = (fkda_tensor){d.g.t.data, FKDA_DTYPE_F32, 4, {B, T, HV, K}, {T * HV * K, HV * K, K, 1}, 0};
    a.beta = (fkda_tensor){d.beta.t.data, FKDA_DTYPE_F32, 3, {B, T, HV}, {T * HV, HV, 1}, 0};
    a.A_log = d.A_log.t;
    a.dt_bias = d.dt.t;
    a.state_pool = pool2.t;
    a.state_indices = d.idx.t;
    a.out = O.t;
    a.options = fkda_default_options();
    a.options.gate = FKDA_GATE_LOWER_BOUND;
    a.options.lower_bound = c.lower_bound;
    a.options.use_qk_l2norm = 1;
    a.options.use_beta_sigmoid = 1;
    fkda_device dev = {FKDA_DEVICE_CPU, 0, NULL, 2, 0};
    size_t bytes = 0;
    CHECK(fkda_decode_workspace_size(&a, &dev, &bytes) == FKDA_OK, "unfused: %s", fkda_last_error());
    void *ws = aligned_alloc(256, (bytes + 256) / 256 * 256);
    CHECK(fkda_decode(&a, &dev, ws, bytes) == FKDA_OK, "unfused: %s", fkda_last_error());
    free(ws);
    double *unfused = malloc(sizeof(double) * d.out.count);
    for (int64_t row = 0; row < B * T * HV; row++) {
        double ms = 0;
        for (int64_t j = 0; j < V; j++) ms += get(&O, (size_t)(row * V + j)) * get(&O, (size_t)(row * V + j)) / V;
        for (int64_t j = 0; j < V; j++) {
            const size_t at = (size_t)(row * V + j);
            unfused[at] = get(&O, at) / sqrt(ms + c.eps) * get(&d.nw, (size_t)j) * sigmoid(get(&d.gate, at));
        }
    }

    /* fused, fast */
    test_tensor_fill_value(&d.out, NAN);
    CHECK(run_layer(&d, 0, 2) == FKDA_OK, "fused: %s", fkda_last_error());
    double *fused = values_of(&d.out);
    const double e_out = test_rel_error_d(fused, unfused, d.out.count);
    CHECK(e_out <= 1e-5, "fused vs unfused out: %.3g", e_out);
    double *p1 = values_of(&d.pool), *p2 = values_of(&pool2);
    const double e_pool = test_rel_error_d(p1, p2, d.pool.count);
    CHECK(e_pool <= 1e-5, "fused vs unfused pool: %.3g", e_pool);
    const double e_model = test_rel_error_d(fused, out_model, d.out.count);
    CHECK(e_model <= 2e-4, "fused vs model: %.3g", e_model);
    printf("fused vs unfused: out %.3g, pool %.3g (fused vs model %.3g)\n", e_out, e_pool, e_model);
    free(p1);
    free(p2);
    free(fused);
    free(unfused);
    free(y);
    free(out_model);
    free(model_cs);
    free(model_pool);
    free(pool_before);
    test_tensor_free(&Y);
    test_tensor_free(&pool2);
    test_tensor_free(&O);
    free_data(&d);
}

/* ---- validation -------------------------------------------------------------------------- */

typedef struct bad_case {
    const char *name;
    fkda_status status;
    const char *message; /* a substring of fkda_last_error() */
} bad_case;

/* Applies mutation i to a (valid) argument set; returns 0 past the last one. */
static int mutate(int i, fkda_decode_layer_args *a, layer_data *d, fkda_device *dev, bad_case *want)
{
    static fkda_tensor readonly_cs, small_cs, idx2, acc1;
    static int64_t idx2_data[8], idx_bad[4];
    static int32_t acc_data[4];
    const int64_t B = d->c.B;
    switch (i) {
    case 0:
        a->mixed_qkv.dtype = FKDA_DTYPE_I32;
        *want = (bad_case){"dtype", FKDA_ERROR_INVALID_ARGUMENT, "mixed_qkv: "};
        return 1;
    case 1:
        a->mixed_qkv.shape[1] -= 1;
        *want = (bad_case){"dim", FKDA_ERROR_INVALID_ARGUMENT, "mixed_qkv: dim"};
        return 1;
    case 2:
        a->beta.ndim = 1;
        *want = (bad_case){"beta", FKDA_ERROR_INVALID_ARGUMENT, "beta: "};
        return 1;
    case 3:
        a->norm_weight.shape[0] = 0;
        *want = (bad_case){"V", FKDA_ERROR_INVALID_ARGUMENT, "norm_weight: V = 0"};
        return 1;
    case 4:
        a->g.shape[1] = 3;
        *want = (bad_case){"g", FKDA_ERROR_INVALID_ARGUMENT, "g: "};
        return 1;
    case 5:
        a->conv_weight.shape[1] = 1;
        *want = (bad_case){"W", FKDA_ERROR_INVALID_ARGUMENT, "conv_weight: width"};
        return 1;
    case 6:
        a->conv_bias.shape[0] = 3;
        *want = (bad_case){"bias", FKDA_ERROR_INVALID_ARGUMENT, "conv_bias: "};
        return 1;
    case 7:
        memset(&a->conv_state, 0, sizeof a->conv_state);
        *want = (bad_case){"no conv", FKDA_ERROR_INVALID_ARGUMENT, "conv_state: is required"};
        return 1;
    case 8:
        small_cs = a->conv_state;
        small_cs.shape[1] = d->c.W - 2;
        a->conv_state = small_cs;
        *want = (bad_case){"L", FKDA_ERROR_INVALID_ARGUMENT, "conv_state: L = 2"};
        return 1;
    case 9:
        readonly_cs = a->conv_state;
        readonly_cs.flags = FKDA_TENSOR_READ_ONLY;
        a->conv_state = readonly_cs;
        *want = (bad_case){"read-only", FKDA_ERROR_INVALID_ARGUMENT, "conv_state: "};
        return 1;
    case 10:
        a->output_gate.shape[2] = 7;
        *want = (bad_case){"gate", FKDA_ERROR_INVALID_ARGUMENT, "output_gate: "};
        return 1;
    case 11:
        a->out.dtype = FKDA_DTYPE_BF16;
        *want = (bad_case){"out dtype", FKDA_ERROR_INVALID_ARGUMENT, "out: dtype"};
        return 1;
    case 12:
        a->norm_eps = 0.0;
        *want = (bad_case){"eps", FKDA_ERROR_INVALID_ARGUMENT, "norm_eps: "};
        return 1;
    case 13:
        a->lower_bound = 1.0;
        *want = (bad_case){"lb", FKDA_ERROR_INVALID_ARGUMENT, "lower_bound: "};
        return 1;
    case 14:
        memset(&a->state_pool, 0, sizeof a->state_pool);
        *want = (bad_case){"pool", FKDA_ERROR_INVALID_ARGUMENT, "state_pool: is required"};
        return 1;
    case 15:
        memcpy(idx_bad, d->idx.t.data, sizeof(int64_t) * (size_t)B);
        idx_bad[1] = d->c.PC; /* inside the recurrent pool, outside the conv pool */
        a->state_indices.data = idx_bad;
        *want = (bad_case){"conv slot", FKDA_ERROR_INVALID_ARGUMENT, "outside the conv_state pool"};
        return 1;
    case 16:
        memcpy(idx_bad, d->idx.t.data, sizeof(int64_t) * (size_t)B);
        idx_bad[2] = d->c.P;
        a->state_indices.data = idx_bad;
        *want = (bad_case){"slot", FKDA_ERROR_INVALID_ARGUMENT, "state_indices: "};
        return 1;
    case 17:
        a->out.data = a->conv_state.data;
        a->out.dtype = a->conv_state.dtype;
        *want = (bad_case){"alias", FKDA_ERROR_INVALID_ARGUMENT, "conv_state"};
        return 1;
    case 18:
        a->lower_bound = 0.0;
        memset(&a->A_log, 0, sizeof a->A_log);
        *want = (bad_case){"A_log", FKDA_ERROR_INVALID_ARGUMENT, "A_log: "};
        return 1;
    case 19:
        acc1 = fkda_make_tensor(acc_data, FKDA_DTYPE_I32, 1, (int64_t[]){B});
        for (int64_t n = 0; n < B; n++) acc_data[n] = 1;
        a->num_accepted_tokens = acc1;
        a->conv_state.shape[1] = d->c.L; /* rows enough for T = 1 */
        *want = (bad_case){"accepted 1-D", FKDA_ERROR_INVALID_ARGUMENT, "num_accepted_tokens: "};
        return 1;
    case 20:
        for (int64_t n = 0; n < B; n++) idx2_data[2 * n] = n, idx2_data[2 * n + 1] = n;
        idx2_data[0] = -1; /* no conv slot, but the read slot idx[0, a - 1] = idx[0, 1] runs */
        idx2 = fkda_make_tensor(idx2_data, FKDA_DTYPE_I64, 2, (int64_t[]){B, 2});
        acc1 = fkda_make_tensor(acc_data, FKDA_DTYPE_I32, 1, (int64_t[]){B});
        for (int64_t n = 0; n < B; n++) acc_data[n] = 2;
        a->state_indices = idx2;
        a->num_accepted_tokens = acc1;
        *want = (bad_case){"no conv slot", FKDA_ERROR_INVALID_ARGUMENT, "names no conv slot"};
        return 1;
    case 21:
        a->state_pool.data = a->conv_state.data;
        a->state_pool.dtype = a->conv_state.dtype;
        *want = (bad_case){"pool alias", FKDA_ERROR_INVALID_ARGUMENT, "state_pool"};
        return 1;
    case 22:
        /* T_max = 2 > T = 1: a = 2 is a valid count, but its window (rows 1..3) passes L = 3. */
        for (int64_t n = 0; n < B; n++) idx2_data[2 * n] = n, idx2_data[2 * n + 1] = n;
        idx2 = fkda_make_tensor(idx2_data, FKDA_DTYPE_I64, 2, (int64_t[]){B, 2});
        acc1 = fkda_make_tensor(acc_data, FKDA_DTYPE_I32, 1, (int64_t[]){B});
        for (int64_t n = 0; n < B; n++) acc_data[n] = 2;
        a->state_indices = idx2;
        a->num_accepted_tokens = acc1;
        *want = (bad_case){"window past L", FKDA_ERROR_INVALID_ARGUMENT, "passes the L = 3 rows of conv_state"};
        return 1;
    case 23:
        /* The outputs' overlap tests meet A_log before its own layout check: its byte range must
         * not overflow there (it did, under UBSan; found by tests/fuzz/fuzz_api.c). */
        a->A_log.stride[0] = INT64_MAX;
        *want = (bad_case){"A_log stride", FKDA_ERROR_INVALID_ARGUMENT, "A_log: stride"};
        return 1;
    default: return 0;
    }
}

/* The CUDA device with these host tensors: without CUDA in the build, "built without CUDA";
 * with it, the workspace size (y and o in float32 at least), then a refusal of the host memory
 * (or of the missing GPU); nothing written either way. (CI has no GPU: the CUDA layer itself is
 * tested by tests/cuda/test_decode_layer_cuda.c.) */
static void check_cuda_device(layer_data *d)
{
    fkda_decode_layer_args a = layer_args(d);
    const fkda_device dev = {FKDA_DEVICE_CUDA, 0, NULL, 0, 0};
    test_tensor_fill_value(&d->out, NAN);
    void *out0 = test_tensor_snapshot(&d->out), *pool0 = test_tensor_snapshot(&d->pool),
         *cs0 = test_tensor_snapshot(&d->cs);
    size_t bytes = 0;
    const fkda_status s1 = fkda_decode_layer_workspace_size(&a, &dev, &bytes);
    if (!fkda_has_cuda()) {
        CHECK(s1 == FKDA_ERROR_DEVICE && strstr(fkda_last_error(), "without CUDA"), "cuda workspace: %d %s", (int)s1,
              fkda_last_error());
    } else {
        const layer_case *c = &d->c;
        const size_t floats = (size_t)(c->B * c->T * (d->dim + c->HV * c->V));
        CHECK(s1 == FKDA_OK && bytes >= floats * sizeof(float), "cuda workspace: %d, %zu bytes (%s)", (int)s1, bytes,
              fkda_last_error());
    }
    char ws[256] __attribute__((aligned(256)));
    const fkda_status s2 = fkda_decode_layer(&a, &dev, ws, sizeof ws);
    CHECK(s2 == FKDA_ERROR_DEVICE || s2 == FKDA_ERROR_INVALID_ARGUMENT, "cuda device, host tensors: status %d (%s)",
          (int)s2, fkda_last_error());
    CHECK(test_tensor_unchanged(&d->out, out0) && test_tensor_unchanged(&d->pool, pool0) &&
              test_tensor_unchanged(&d->cs, cs0),
          "cuda device, host tensors: something was written");
    free(out0);
    free(pool0);
    free(cs0);
}

static void check_validation(uint64_t seed)
{
    layer_case c = {3, 1, 1, 2, 8, 8, 4, 6, 4, 3, 0, 0, 1, 0, FKDA_DTYPE_F32, -5.0, 1e-5, 1};
    test_rng r;
    test_rng_seed(&r, seed);
    layer_data d;
    make_data(&d, &c, &r);
    fresh_tokens(&d, &r);
    pick_slots(&d, &r, 0);
    int checked = 0;
    for (int i = 0;; i++) {
        fkda_decode_layer_args a = layer_args(&d);
        fkda_device dev = {FKDA_DEVICE_CPU, 0, NULL, 1, 0};
        bad_case want;
        if (!mutate(i, &a, &d, &dev, &want)) break;
        test_tensor_fill_value(&d.out, NAN);
        void *out0 = test_tensor_snapshot(&d.out), *pool0 = test_tensor_snapshot(&d.pool),
             *cs0 = test_tensor_snapshot(&d.cs);
        size_t bytes = 0;
        fkda_status s1 = fkda_decode_layer_workspace_size(&a, &dev, &bytes);
        char ws[4096] __attribute__((aligned(256)));
        fkda_status s2 = fkda_decode_layer(&a, &dev, ws, sizeof ws);
        const char *msg = fkda_last_error();
        CHECK(s1 == want.status && s2 == want.status, "validation %s: statuses %d, %d, expected %d (%s)", want.name,
              (int)s1, (int)s2, (int)want.status, msg);
        CHECK(strstr(msg, want.message) != NULL, "validation %s: message \"%s\" lacks \"%s\"", want.name, msg,
              want.message);
        CHECK(test_tensor_unchanged(&d.out, out0) && test_tensor_unchanged(&d.pool, pool0) &&
                  test_tensor_unchanged(&d.cs, cs0),
              "validation %s: something was written", want.name);
        free(out0);
        free(pool0);
        free(cs0);
        checked++;
    }
    /* NULL args, and a workspace too small */
    fkda_device dev = {FKDA_DEVICE_CPU, 0, NULL, 1, 0};
    CHECK(fkda_decode_layer(NULL, &dev, NULL, 0) == FKDA_ERROR_INVALID_ARGUMENT &&
              strstr(fkda_last_error(), "args: is NULL"),
          "NULL args: %s", fkda_last_error());
    fkda_decode_layer_args a = layer_args(&d);
    void *cs0 = test_tensor_snapshot(&d.cs);
    CHECK(fkda_decode_layer(&a, &dev, NULL, 0) == FKDA_ERROR_WORKSPACE && strstr(fkda_last_error(), "workspace"),
          "no workspace: %s", fkda_last_error());
    CHECK(test_tensor_unchanged(&d.cs, cs0), "no workspace: conv_state written");
    free(cs0);
    check_cuda_device(&d);
    printf("validation: %d refused argument sets checked\n", checked);
    free_data(&d);
}

int main(void)
{
    const uint64_t seed = test_seed_from_env();
    /* B, T, H, HV, K, V, W, P, PC, L, has_t, flat_g, index_mode, TI, io, lower_bound, eps, bias */
    const layer_case single = {4, 1, 2, 4, 32, 48, 4, 6, 5, 3, 0, 0, 1, 0, FKDA_DTYPE_F32, -5.0, 1e-5, 1};
    layer_case softplus = single;
    softplus.lower_bound = 0.0;
    softplus.has_bias = 0;
    layer_case bf16 = single;
    bf16.io = FKDA_DTYPE_BF16;
    bf16.L = 5; /* rows past W - 1 stay untouched */
    layer_case no_indices = single;
    no_indices.index_mode = 0;
    no_indices.V = 64;
    const layer_case spec = {4, 3, 1, 2, 16, 32, 4, 12, 4, 5, 1, 1, 2, 3, FKDA_DTYPE_F32, -5.0, 1e-6, 1};
    layer_case spec_w2 = spec;
    spec_w2.W = 2;
    spec_w2.L = 3;
    spec_w2.io = FKDA_DTYPE_BF16;
    const struct {
        const layer_case *c;
        const char *name;
    } cases[] = {{&single, "single-token"},   {&softplus, "softplus gate"}, {&bf16, "bf16 io"},
                 {&no_indices, "no indices"}, {&spec, "spec decode"},       {&spec_w2, "spec decode W=2 bf16"}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        for (int reference = 0; reference <= 1; reference++) scenario(cases[i].c, seed + i, reference, cases[i].name);
    check_unfused(seed + 100);
    check_validation(seed + 200);
    return test_exit("test_cpu_decode_layer");
}

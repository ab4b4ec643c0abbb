/*
 * test_cpu_decode_cases.c: the CPU decode against a float64 model written here, on the cases
 * the scenario test (test_cpu_decode.c) does not reach.
 *
 *   splits      few (sequence, head) pairs and many threads: the fast path then splits the V
 *               value columns of each head into blocks, one per thread (fkda_split_columns).
 *               Thread counts 1..16 and V that give 1 to 7 blocks, a last partial block
 *               included, both pool layouts and dtypes (the prefill's: test_cpu_prefill.c).
 *   varlen + 2-D indices with accepted counts (cu_seqlens and speculative decoding together),
 *               and the message when a sequence has more tokens than T_max
 *   explicit scale, padded pools (slot, head and row padding whose bytes must survive),
 *   extreme negative indices (INT64_MIN, INT32_MIN: skip, never an address),
 *   workspace errors (NULL, too small, misaligned) and the device error (a CUDA device from a
 *   library without CUDA, or on a machine without a GPU).
 *
 * The model (naive_decode) is the recurrence of docs/design.md section 1 in double, with the
 * slot rules of flashkda.h; it rounds every state it writes to the pool's dtype, as the
 * library does. Each run is checked against it (fast and reference paths), with out poisoned
 * with NaN before the call and every pool slot that no sequence writes bitwise unchanged.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"

/* One decode problem: the inputs' spec plus how the pool, the indices and the run look. */
typedef struct dcase {
    test_kda_spec spec; /* gate NONE (g is the log decay), no A_log / dt_bias */
    int64_t P;          /* pool slots */
    fkda_dtype pool_dtype, index_dtype;
    int pad;   /* pool as a view of a buffer with one more head and 5 more columns */
    int two_d; /* 2-D indices [N, T_max] */
    int64_t T_max;
    int accepted; /* with num_accepted_tokens */
    int threads;
} dcase;

typedef struct dbuffers {
    test_tensor pool_buf; /* the memory; pool is a view of it */
    fkda_tensor pool;
    test_tensor idx, acc;
} dbuffers;

static const char *dname(fkda_dtype d)
{
    return d == FKDA_DTYPE_F32    ? "f32"
           : d == FKDA_DTYPE_F16  ? "f16"
           : d == FKDA_DTYPE_BF16 ? "bf16"
           : d == FKDA_DTYPE_I32  ? "i32"
                                  : "i64";
}

/* Pool dims 2 and 3 in memory order. */
static int64_t pool_rows(const dcase *c) { return c->spec.options.state_v_first ? c->spec.V : c->spec.K; }
static int64_t pool_cols(const dcase *c) { return c->spec.options.state_v_first ? c->spec.K : c->spec.V; }

static void make_pool(const dcase *c, test_rng *r, dbuffers *b)
{
    const int64_t HV = c->spec.HV, R = pool_rows(c), C = pool_cols(c);
    const int64_t extra_h = c->pad ? 1 : 0, extra_c = c->pad ? 5 : 0;
    b->pool_buf = test_tensor_alloc(c->pool_dtype, 4, (const int64_t[]){c->P, HV + extra_h, R, C + extra_c});
    test_tensor_fill_value(&b->pool_buf, 7.0); /* the padding's sentinel */
    b->pool = fkda_make_tensor(b->pool_buf.t.data, c->pool_dtype, 4, (const int64_t[]){c->P, HV, R, C});
    for (int d = 0; d < 4; d++) b->pool.stride[d] = b->pool_buf.t.stride[d];
    for (int64_t s = 0; s < c->P; s++)
        for (int64_t h = 0; h < HV; h++)
            for (int64_t x = 0; x < R; x++)
                for (int64_t y = 0; y < C; y++)
                    test_tensor_set(&b->pool_buf,
                                    (size_t)(s * b->pool.stride[0] + h * b->pool.stride[1] + x * b->pool.stride[2] + y),
                                    0.5 * test_rng_normal(r));
}

/* Element [slot, head, key i, value j] of the gathered (row-major) pool view. */
static size_t pool_index(const dcase *c, int64_t s, int64_t h, int64_t i, int64_t j)
{
    const int64_t HV = c->spec.HV, R = pool_rows(c), C = pool_cols(c);
    const int64_t x = c->spec.options.state_v_first ? j : i, y = c->spec.options.state_v_first ? i : j;
    return (size_t)(((s * HV + h) * R + x) * C + y);
}

static double round_to(fkda_dtype d, double x)
{
    if (d == FKDA_DTYPE_BF16) return test_bf16_to_f32(test_f32_to_bf16((float)x));
    if (d == FKDA_DTYPE_F16) return test_f16_to_f32(test_f32_to_f16((float)x));
    return (float)x;
}

static int64_t index_at(const test_tensor *t, int64_t i)
{
    return t->t.dtype == FKDA_DTYPE_I32 ? ((const int32_t *)t->t.data)[i] : ((const int64_t *)t->t.data)[i];
}

/* The float64 model. pool: the gathered pool before the call, updated in place (states written
 * rounded to the pool dtype); out: [B, T, HV, V]. */
static void naive_decode(const dcase *c, const test_kda_inputs *in, const dbuffers *b, double *pool, double *out)
{
    const test_kda_spec *sp = &c->spec;
    const fkda_options *o = &sp->options;
    const int64_t T = sp->T, H = sp->H, HV = sp->HV, K = sp->K, V = sp->V;
    size_t count;
    double *q = test_gather(&in->q, &count), *k = test_gather(&in->k, &count);
    double *v = test_gather(&in->v.t, &count), *g = test_gather(&in->g.t, &count);
    double *beta = test_gather(&in->beta.t, &count);
    const double scale = o->scale != 0.0 ? (double)(float)o->scale : (double)(float)(1.0 / sqrt((double)K));
    double *S = malloc((size_t)(K * V) * sizeof(double)), *S0 = malloc((size_t)(in->N * HV * K * V) * sizeof(double));
    double *qt = malloc((size_t)K * sizeof(double)), *kt = malloc((size_t)K * sizeof(double));
    double *kv = malloc((size_t)V * sizeof(double));
    int64_t *read = malloc((size_t)in->N * sizeof(int64_t));

    /* Every read happens before any write (the cases never let one sequence read another's
     * written slot), so take all initial states first. */
    for (int64_t n = 0; n < in->N; n++) {
        int64_t r = n;
        if (b->idx.t.data) {
            int64_t a = c->accepted ? index_at(&b->acc, n) : 1;
            r = c->two_d ? index_at(&b->idx, n * c->T_max + a - 1) : index_at(&b->idx, n);
        }
        read[n] = r;
        for (int64_t h = 0; h < HV; h++)
            for (int64_t i = 0; i < K; i++)
                for (int64_t j = 0; j < V; j++)
                    S0[((n * HV + h) * K + i) * V + j] = r >= 0 ? pool[pool_index(c, r, h, i, j)] : 0.0;
    }
    for (int64_t n = 0; n < in->N; n++) {
        const int64_t row = sp->nseq > 0 ? 0 : n;
        for (int64_t h = 0; h < HV; h++) {
            const int64_t hq = h / (HV / H);
            memcpy(S, S0 + (n * HV + h) * K * V, (size_t)(K * V) * sizeof(double));
            for (int64_t t = 0; t < in->length[n]; t++) {
                const int64_t tok = row * T + in->start[n] + t;
                double *o_row = out + (tok * HV + h) * V;
                if (read[n] < 0) {
                    for (int64_t j = 0; j < V; j++) o_row[j] = 0.0;
                    continue;
                }
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
                double bt = beta[tok * HV + h];
                if (o->use_beta_sigmoid) bt = 1.0 / (1.0 + exp(-bt));
                for (int64_t i = 0; i < K; i++)
                    for (int64_t j = 0; j < V; j++) S[i * V + j] *= exp(g[(tok * HV + h) * K + i]);
                for (int64_t j = 0; j < V; j++) {
                    kv[j] = 0.0;
                    for (int64_t i = 0; i < K; i++) kv[j] += kt[i] * S[i * V + j];
                }
                for (int64_t i = 0; i < K; i++)
                    for (int64_t j = 0; j < V; j++) S[i * V + j] += bt * kt[i] * (v[(tok * HV + h) * V + j] - kv[j]);
                for (int64_t j = 0; j < V; j++) {
                    double acc = 0.0;
                    for (int64_t i = 0; i < K; i++) acc += qt[i] * S[i * V + j];
                    o_row[j] = scale * acc;
                }
                int64_t w = c->two_d ? (t < c->T_max ? index_at(&b->idx, n * c->T_max + t) : -1) : -1;
                if (w >= 0)
                    for (int64_t i = 0; i < K; i++)
                        for (int64_t j = 0; j < V; j++)
                            pool[pool_index(c, w, h, i, j)] = round_to(c->pool_dtype, S[i * V + j]);
            }
            if (!c->two_d && read[n] >= 0)
                for (int64_t i = 0; i < K; i++)
                    for (int64_t j = 0; j < V; j++)
                        pool[pool_index(c, read[n], h, i, j)] = round_to(c->pool_dtype, S[i * V + j]);
        }
    }
    free(q);
    free(k);
    free(v);
    free(g);
    free(beta);
    free(S);
    free(S0);
    free(qt);
    free(kt);
    free(kv);
    free(read);
}

static fkda_decode_args decode_args(const dcase *c, const test_kda_inputs *in, const dbuffers *b, fkda_tensor out)
{
    fkda_decode_args a;
    memset(&a, 0, sizeof a);
    a.q = in->q;
    a.k = in->k;
    a.v = in->v.t;
    a.g = in->g.t;
    a.beta = in->beta.t;
    a.cu_seqlens = in->cu_seqlens.t;
    a.state_pool = b->pool;
    a.state_indices = b->idx.t.data ? b->idx.t : test_absent();
    a.num_accepted_tokens = b->acc.t.data ? b->acc.t : test_absent();
    a.out = out;
    a.options = c->spec.options;
    return a;
}

static void describe(const dcase *c, const char *what, char *buf, size_t size)
{
    const test_kda_spec *sp = &c->spec;
    snprintf(buf, size,
             "%s: N=%lld T=%lld H=%lld HV=%lld K=%lld V=%lld P=%lld pool=%s%s io=%s idx=%s%s%s "
             "v_first=%d scale=%g thr=%d",
             what, (long long)(sp->nseq ? sp->nseq : sp->B), (long long)sp->T, (long long)sp->H, (long long)sp->HV,
             (long long)sp->K, (long long)sp->V, (long long)c->P, dname(c->pool_dtype), c->pad ? "(padded)" : "",
             dname(sp->io_dtype), c->two_d ? "2-D " : "", dname(c->index_dtype), c->accepted ? "+accepted" : "",
             sp->options.state_v_first, sp->options.scale, c->threads);
}

/* After a run: every slot the model leaves alone (its values equal to those before the call)
 * is bitwise unchanged, and every element of the buffer outside the pool view (the padding)
 * still holds its sentinel. `before` is the buffer's bytes before the call. */
static void check_untouched(const dcase *c, const dbuffers *b, const void *before, const double *want_pool,
                            const double *got_pool, size_t n_pool, const char *label, int reference)
{
    test_tensor old = test_tensor_alloc(c->pool_dtype, 4, b->pool_buf.t.shape);
    memcpy(old.t.data, before, b->pool_buf.count * fkda_dtype_size(c->pool_dtype));
    fkda_tensor old_view = b->pool;
    old_view.data = old.t.data;
    size_t n;
    double *old_pool = test_gather(&old_view, &n);
    const size_t per_slot = n_pool / (size_t)c->P;
    int64_t changed = 0;
    for (int64_t s = 0; s < c->P; s++) {
        const size_t at = (size_t)s * per_slot;
        if (memcmp(want_pool + at, old_pool + at, per_slot * sizeof(double)) != 0) continue; /* written */
        if (memcmp(got_pool + at, old_pool + at, per_slot * sizeof(double)) != 0) changed++;
    }
    CHECK(changed == 0, "%s (ref %d): %lld slots changed that no sequence writes", label, reference,
          (long long)changed);

    int64_t bad_pad = 0;
    const int64_t HVb = b->pool_buf.t.shape[1], R = b->pool_buf.t.shape[2], Cb = b->pool_buf.t.shape[3];
    for (int64_t s = 0; s < c->P; s++)
        for (int64_t h = 0; h < HVb; h++)
            for (int64_t x = 0; x < R; x++)
                for (int64_t y = 0; y < Cb; y++)
                    if ((h >= c->spec.HV || y >= pool_cols(c)) &&
                        test_tensor_get(&b->pool_buf, (size_t)(((s * HVb + h) * R + x) * Cb + y)) != 7.0)
                        bad_pad++;
    CHECK(bad_pad == 0, "%s (ref %d): %lld padding elements of the pool written", label, reference, (long long)bad_pad);
    free(old_pool);
    test_tensor_free(&old);
}

/* Runs one case on both paths against the model; `make_indices` fills b->idx / b->acc. */
typedef void (*index_maker)(const dcase *c, const test_kda_inputs *in, test_rng *r, dbuffers *b);

static void run_case(const dcase *cin, test_rng *r, index_maker make_indices, const char *what)
{
    dcase c = *cin;
    test_kda_inputs in;
    test_kda_inputs_make(&c.spec, r, &in);
    char label[512];
    describe(&c, what, label, sizeof label);

    for (int reference = 0; reference < 2; reference++) {
        dbuffers b;
        memset(&b, 0, sizeof b);
        test_rng pool_rng = *r; /* the same pool and indices for both paths */
        make_pool(&c, &pool_rng, &b);
        if (make_indices) make_indices(&c, &in, &pool_rng, &b);
        if (reference) *r = pool_rng;

        size_t n_pool;
        double *want_pool = test_gather(&b.pool, &n_pool);
        void *before = test_tensor_snapshot(&b.pool_buf);
        const int64_t n_out = c.spec.B * c.spec.T * c.spec.HV * c.spec.V;
        double *want_out = malloc((size_t)(n_out ? n_out : 1) * sizeof(double));
        naive_decode(&c, &in, &b, want_pool, want_out);
        for (int64_t i = 0; i < n_out; i++) want_out[i] = round_to(c.spec.io_dtype, want_out[i]);

        test_tensor out = test_tensor_alloc(c.spec.io_dtype, 4,
                                            (const int64_t[]){c.spec.B, c.spec.T, c.spec.HV, c.spec.V});
        test_tensor_fill_value(&out, NAN);
        fkda_decode_args a = decode_args(&c, &in, &b, out.t);
        fkda_device dev = {FKDA_DEVICE_CPU, 0, NULL, c.threads, reference};
        size_t bytes = 0;
        fkda_status st = fkda_decode_workspace_size(&a, &dev, &bytes);
        CHECK(st == FKDA_OK, "%s: workspace size: %s", label, fkda_last_error());
        void *ws = aligned_alloc(256, (bytes + 256) / 256 * 256);
        st = fkda_decode(&a, &dev, ws, bytes);
        CHECK(st == FKDA_OK, "%s (ref %d): decode: %s", label, reference, fkda_last_error());
        free(ws);

        size_t n;
        double *got_out = test_gather(&out.t, &n);
        double *got_pool = test_gather(&b.pool, &n);
        CHECK(test_count_nonfinite_d(got_out, (size_t)n_out) == 0, "%s (ref %d): %zu out elements unwritten", label,
              reference, test_count_nonfinite_d(got_out, (size_t)n_out));
        /* The model rounds out and states as the library does (to float, then to the dtype).
         * The fast path: the float32 arithmetic of T steps and the roundings it flips. The
         * reference: float64 like the model, so only the float64 arithmetic separates them; it
         * flips a rounding with a probability of about 1e-13 per element, and a single flip
         * (one ulp of one element) would fail the bar: this compares the roundings exactly. */
        const int64_t steps = c.spec.T > 0 ? c.spec.T : 1;
        const double bar_out = reference ? test_bar_reference(FKDA_DTYPE_F32)
                                         : test_bar_fast(c.spec.io_dtype, steps, c.spec.K, (size_t)n_out);
        const double bar_pool = reference ? test_bar_reference(FKDA_DTYPE_F32)
                                          : test_bar_fast(c.pool_dtype, steps, c.spec.K, n_pool);
        double e_out = test_rel_error_d(got_out, want_out, (size_t)n_out);
        CHECK(e_out <= bar_out, "%s (ref %d): out error %.3e > %.1e", label, reference, e_out, bar_out);
        double e_pool = test_rel_error_d(got_pool, want_pool, n_pool);
        CHECK(e_pool <= bar_pool, "%s (ref %d): pool error %.3e > %.1e", label, reference, e_pool, bar_pool);
        check_untouched(&c, &b, before, want_pool, got_pool, n_pool, label, reference);
        if (getenv("FKDA_TEST_VERBOSE"))
            printf("  ref %d: out %.2e (bar %.1e) pool %.2e (bar %.1e)  %s\n", reference, e_out, bar_out, e_pool,
                   bar_pool, label);
        free(before);
        free(want_pool);
        free(want_out);
        free(got_out);
        free(got_pool);
        test_tensor_free(&out);
        test_tensor_free(&b.pool_buf);
        if (b.idx.t.data) test_tensor_free(&b.idx);
        if (b.acc.t.data) test_tensor_free(&b.acc);
    }
    test_kda_inputs_free(&in);
}

/* ---- index makers ------------------------------------------------------------------------------ */

static void shuffle(test_rng *r, int64_t *perm, int64_t n)
{
    for (int64_t i = 0; i < n; i++) perm[i] = i;
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = test_rng_int(r, 0, i), t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
}

static void set_index(test_tensor *t, int64_t i, int64_t value)
{
    if (t->t.dtype == FKDA_DTYPE_I32)
        ((int32_t *)t->t.data)[i] = value == INT64_MIN ? INT32_MIN : (int32_t)value;
    else
        ((int64_t *)t->t.data)[i] = value;
}

/* 1-D: distinct random slots; the last sequence skipped with the most negative index. */
static void indices_1d(const dcase *c, const test_kda_inputs *in, test_rng *r, dbuffers *b)
{
    int64_t *perm = malloc((size_t)c->P * sizeof(int64_t));
    shuffle(r, perm, c->P);
    b->idx = test_tensor_alloc(c->index_dtype, 1, (const int64_t[]){in->N});
    for (int64_t n = 0; n < in->N; n++) set_index(&b->idx, n, perm[n]);
    if (in->N > 1) set_index(&b->idx, in->N - 1, INT64_MIN);
    free(perm);
}

/* 2-D [N, T_max]: every (n, t) its own slot, some not kept (-1 or INT64_MIN), accepted counts
 * random in 1..T_max (when c->accepted), the last sequence skipped (its read slot INT64_MIN). */
static void indices_2d(const dcase *c, const test_kda_inputs *in, test_rng *r, dbuffers *b)
{
    int64_t *perm = malloc((size_t)c->P * sizeof(int64_t));
    shuffle(r, perm, c->P);
    b->idx = test_tensor_alloc(c->index_dtype, 2, (const int64_t[]){in->N, c->T_max});
    if (c->accepted) b->acc = test_tensor_alloc(c->index_dtype, 1, (const int64_t[]){in->N});
    for (int64_t n = 0; n < in->N; n++) {
        const int64_t a = c->accepted ? test_rng_int(r, 1, c->T_max) : 1;
        if (c->accepted) set_index(&b->acc, n, a);
        for (int64_t t = 0; t < c->T_max; t++) {
            int64_t slot = perm[n * c->T_max + t];
            if (t != a - 1 && test_rng_int(r, 0, 2) == 0) slot = test_rng_int(r, 0, 1) ? -1 : INT64_MIN;
            set_index(&b->idx, n * c->T_max + t, slot);
        }
        if (n == in->N - 1 && in->N > 1) set_index(&b->idx, n * c->T_max + a - 1, INT64_MIN);
    }
    free(perm);
}

/* ---- cases -------------------------------------------------------------------------------------- */

static dcase base_case(void)
{
    dcase c;
    memset(&c, 0, sizeof c);
    test_kda_spec *sp = &c.spec;
    sp->B = 1;
    sp->T = 2;
    sp->H = 1;
    sp->HV = 1;
    sp->K = 32;
    sp->V = 128;
    sp->io_dtype = sp->g_dtype = sp->beta_dtype = sp->param_dtype = FKDA_DTYPE_F32;
    sp->g_mean = 1.0;
    sp->g_std = 1.0; /* gate none: g = logsigmoid(x), a decay in (0, 1) */
    sp->options = fkda_default_options();
    sp->options.use_qk_l2norm = 1;
    sp->options.use_beta_sigmoid = 1;
    c.P = 8;
    c.pool_dtype = FKDA_DTYPE_F32;
    c.index_dtype = FKDA_DTYPE_I64;
    c.threads = 1;
    return c;
}

/* The blocks the fast path splits V into (the rule of fkda_split_columns, restated): printed so
 * that a change of the rule that stops splitting shows in the log. */
static int64_t expected_blocks(int threads, int64_t heads, int64_t V)
{
    int64_t blocks = 1;
    if (heads < threads) {
        blocks = (threads + heads - 1) / heads;
        const int64_t most = (V + 31) / 32;
        if (blocks > most) blocks = most;
    }
    int64_t width = (V + blocks - 1) / blocks;
    if (blocks > 1) width = (width + 15) / 16 * 16;
    if (width > V) width = V;
    return (V + width - 1) / width;
}

static void split_cases(test_rng *r)
{
    static const int threads[] = {1, 2, 3, 4, 5, 7, 8, 16};
    static const int64_t Vs[] = {40, 128, 200};
    int64_t max_blocks = 0;
    for (int vi = 0; vi < 3; vi++)
        for (int ti = 0; ti < 8; ti++) {
            dcase c = base_case();
            c.spec.V = Vs[vi];
            c.threads = threads[ti];
            c.pool_dtype = (ti + vi) % 2 ? FKDA_DTYPE_BF16 : FKDA_DTYPE_F32;
            c.spec.options.state_v_first = ti % 3 == 1;
            c.spec.io_dtype = ti == 5 ? FKDA_DTYPE_BF16 : FKDA_DTYPE_F32;
            const int64_t blocks = expected_blocks(c.threads, 1, c.spec.V);
            if (blocks > max_blocks) max_blocks = blocks;
            char what[64];
            snprintf(what, sizeof what, "split (%lld blocks)", (long long)blocks);
            run_case(&c, r, NULL, what);
        }
    CHECK(max_blocks >= 7, "the split cases reach only %lld blocks per head", (long long)max_blocks);
    /* Two sequences of one head; one sequence of two value heads (GVA); 1-D indices. */
    for (int i = 0; i < 4; i++) {
        dcase c = base_case();
        c.spec.B = i < 2 ? 2 : 1;
        c.spec.HV = i < 2 ? 1 : 2;
        c.threads = i % 2 ? 7 : 16;
        c.spec.V = 96;
        c.spec.options.state_v_first = i == 1;
        run_case(&c, r, i < 2 ? indices_1d : NULL, "split, 2 heads");
    }
}

/* cu_seqlens with 2-D indices and accepted counts, split and not, int32 and int64 indices. */
static void varlen_speculative_cases(test_rng *r)
{
    static const int64_t lengths[] = {2, 0, 3, 1, 3};
    for (int i = 0; i < 4; i++) {
        dcase c = base_case();
        c.spec.nseq = 5;
        c.spec.lengths = lengths;
        c.spec.cu_int32 = i % 2;
        c.spec.H = 1;
        c.spec.HV = 2;
        c.spec.V = 64;
        c.two_d = 1;
        c.T_max = 3;
        c.accepted = i != 3;
        c.P = 5 * 3 + 1;
        c.index_dtype = i % 2 ? FKDA_DTYPE_I32 : FKDA_DTYPE_I64;
        c.pool_dtype = i == 2 ? FKDA_DTYPE_BF16 : FKDA_DTYPE_F32;
        c.spec.options.state_v_first = i == 1;
        c.threads = i < 2 ? 16 : 2;
        run_case(&c, r, indices_2d, "varlen + 2-D indices");
    }
}

/* Explicit scales (positive and negative), padded pools, INT64_MIN / INT32_MIN skips. */
static void option_cases(test_rng *r)
{
    static const double scales[] = {0.37, -1.5, 2.0};
    for (int i = 0; i < 6; i++) {
        dcase c = base_case();
        c.spec.B = 3;
        c.spec.T = 1;
        c.spec.H = 2;
        c.spec.HV = 4;
        c.spec.K = 48;
        c.spec.V = 40;
        c.spec.options.scale = scales[i % 3];
        c.spec.options.use_qk_l2norm = i != 2;
        c.spec.options.use_beta_sigmoid = i != 4;
        c.pad = i >= 2;
        c.spec.options.state_v_first = i % 2;
        c.pool_dtype = i >= 4 ? FKDA_DTYPE_BF16 : FKDA_DTYPE_F32;
        c.index_dtype = i % 2 ? FKDA_DTYPE_I32 : FKDA_DTYPE_I64;
        c.threads = 1 + i;
        run_case(&c, r, indices_1d, i < 2 ? "explicit scale" : "padded pool, explicit scale");
    }
    /* Padded pool with 2-D indices (INT64_MIN entries among them), one head split 4 ways. */
    dcase c = base_case();
    c.spec.B = 3;
    c.spec.T = 2;
    c.two_d = 1;
    c.T_max = 2;
    c.accepted = 1;
    c.P = 7;
    c.pad = 1;
    c.threads = 4;
    run_case(&c, r, indices_2d, "padded pool, 2-D indices");
}

/* ---- errors -------------------------------------------------------------------------------------- */

static void error_cases(test_rng *r)
{
    /* A sequence longer than T_max under cu_seqlens. */
    static const int64_t lengths[] = {1, 4, 2};
    dcase c = base_case();
    c.spec.nseq = 3;
    c.spec.lengths = lengths;
    c.two_d = 1;
    c.T_max = 3;
    c.accepted = 1;
    c.P = 9;
    test_kda_inputs in;
    test_kda_inputs_make(&c.spec, r, &in);
    dbuffers b;
    memset(&b, 0, sizeof b);
    make_pool(&c, r, &b);
    indices_2d(&c, &in, r, &b);
    test_tensor out = test_tensor_alloc(FKDA_DTYPE_F32, 4, (const int64_t[]){1, c.spec.T, 1, c.spec.V});
    test_tensor_fill_value(&out, 3.0);
    void *out0 = test_tensor_snapshot(&out), *pool0 = test_tensor_snapshot(&b.pool_buf);
    fkda_decode_args a = decode_args(&c, &in, &b, out.t);
    fkda_device cpu = {FKDA_DEVICE_CPU, 0, NULL, 2, 0};
    void *ws = aligned_alloc(256, 1 << 20);
    fkda_status st = fkda_decode(&a, &cpu, ws, 1 << 20);
    CHECK(st == FKDA_ERROR_INVALID_ARGUMENT &&
              strstr(fkda_last_error(),
                     "state_indices: sequence 1 has 4 tokens, but 2-D state_indices has only 3 columns"),
          "varlen sequence longer than T_max: %s (%s)", fkda_status_name(st), fkda_last_error());

    /* An accepted count of INT64_MIN (and INT64_MAX). */
    static const int64_t fine[] = {1, 3, 3}; /* the same 7 tokens, none longer than T_max */
    c.spec.lengths = fine;
    test_kda_inputs_free(&in);
    test_kda_inputs_make(&c.spec, r, &in);
    a = decode_args(&c, &in, &b, out.t);
    CHECK(fkda_decode(&a, &cpu, ws, 1 << 20) == FKDA_OK, "the fixed case fails: %s", fkda_last_error());
    memcpy(b.pool_buf.t.data, pool0, b.pool_buf.count * fkda_dtype_size(c.pool_dtype));
    test_tensor_fill_value(&out, 3.0);
    const int64_t saved = index_at(&b.acc, 1);
    const int64_t extremes[2] = {INT64_MIN, INT64_MAX};
    for (int i = 0; i < 2; i++) {
        set_index(&b.acc, 1, extremes[i]);
        st = fkda_decode(&a, &cpu, ws, 1 << 20);
        CHECK(st == FKDA_ERROR_INVALID_ARGUMENT && strstr(fkda_last_error(), "num_accepted_tokens: entry [1] = "),
              "accepted count %lld: %s (%s)", (long long)extremes[i], fkda_status_name(st), fkda_last_error());
    }
    set_index(&b.acc, 1, saved);
    /* An index of INT64_MAX is outside the pool. */
    const int64_t saved_idx = index_at(&b.idx, 0);
    set_index(&b.idx, 0, INT64_MAX);
    st = fkda_decode(&a, &cpu, ws, 1 << 20);
    CHECK(st == FKDA_ERROR_INVALID_ARGUMENT && strstr(fkda_last_error(), "is outside the pool"),
          "index INT64_MAX: %s (%s)", fkda_status_name(st), fkda_last_error());
    set_index(&b.idx, 0, saved_idx);

    /* Workspace: NULL, one byte short, misaligned. */
    size_t bytes = 0;
    CHECK(fkda_decode_workspace_size(&a, &cpu, &bytes) == FKDA_OK && bytes > 0, "decode workspace size: %zu (%s)",
          bytes, fkda_last_error());
    st = fkda_decode(&a, &cpu, NULL, bytes);
    CHECK(st == FKDA_ERROR_WORKSPACE && strstr(fkda_last_error(), "workspace: is NULL"), "NULL workspace: %s (%s)",
          fkda_status_name(st), fkda_last_error());
    st = fkda_decode(&a, &cpu, ws, bytes - 1);
    CHECK(st == FKDA_ERROR_WORKSPACE && strstr(fkda_last_error(), "workspace_bytes:"), "small workspace: %s (%s)",
          fkda_status_name(st), fkda_last_error());
    st = fkda_decode(&a, &cpu, (char *)ws + 64, bytes);
    CHECK(st == FKDA_ERROR_WORKSPACE && strstr(fkda_last_error(), "aligned"), "misaligned workspace: %s (%s)",
          fkda_status_name(st), fkda_last_error());

    /* The device error: a CUDA device from a library without CUDA, or on a machine without a
     * GPU (with a GPU, these host tensors are refused as not device memory instead). */
    fkda_device cuda = {FKDA_DEVICE_CUDA, 0, NULL, 0, 0};
    st = fkda_decode_workspace_size(&a, &cuda, &bytes);
    if (!fkda_has_cuda()) {
        CHECK(st == FKDA_ERROR_DEVICE && strstr(fkda_last_error(), "device: this libflashkda was built without CUDA"),
              "CUDA decode workspace, no CUDA: %s (%s)", fkda_status_name(st), fkda_last_error());
    } else {
        CHECK(st == FKDA_OK, "CUDA decode workspace size: %s (%s)", fkda_status_name(st), fkda_last_error());
    }
    st = fkda_decode(&a, &cuda, NULL, 0);
    if (!fkda_has_cuda())
        CHECK(st == FKDA_ERROR_DEVICE && strstr(fkda_last_error(), "built without CUDA"),
              "CUDA decode, no CUDA: %s (%s)", fkda_status_name(st), fkda_last_error());
    else
        CHECK((st == FKDA_ERROR_DEVICE && strstr(fkda_last_error(), "device: no CUDA device is usable")) ||
                  (st == FKDA_ERROR_INVALID_ARGUMENT && strstr(fkda_last_error(), "host memory")),
              "CUDA decode of host tensors: %s (%s)", fkda_status_name(st), fkda_last_error());
    cuda.index = 999;
    st = fkda_decode(&a, &cuda, NULL, 0);
    CHECK(st == FKDA_ERROR_DEVICE && strncmp(fkda_last_error(), "device", 6) == 0, "CUDA device 999: %s (%s)",
          fkda_status_name(st), fkda_last_error());
    fkda_prefill_args pa;
    memset(&pa, 0, sizeof pa);
    pa.q = a.q;
    pa.k = a.k;
    pa.v = a.v;
    pa.g = a.g;
    pa.beta = a.beta;
    pa.out = a.out;
    pa.cu_seqlens = a.cu_seqlens;
    pa.options = a.options;
    cuda.index = 0;
    st = fkda_prefill(&pa, &cuda, NULL, 0);
    CHECK(st == FKDA_ERROR_DEVICE || (fkda_has_cuda() && st == FKDA_ERROR_INVALID_ARGUMENT), "CUDA prefill: %s (%s)",
          fkda_status_name(st), fkda_last_error());
    if (!fkda_has_cuda())
        CHECK(strstr(fkda_last_error(), "built without CUDA") != NULL, "CUDA prefill message: %s", fkda_last_error());

    CHECK(test_tensor_unchanged(&out, out0), "out written by a failing call");
    CHECK(test_tensor_unchanged(&b.pool_buf, pool0), "pool written by a failing call");
    free(ws);
    free(out0);
    free(pool0);
    test_tensor_free(&out);
    test_tensor_free(&b.pool_buf);
    test_tensor_free(&b.idx);
    test_tensor_free(&b.acc);
    test_kda_inputs_free(&in);
}

int main(void)
{
    test_rng r;
    test_rng_seed(&r, test_seed_from_env());
    split_cases(&r);
    varlen_speculative_cases(&r);
    option_cases(&r);
    error_cases(&r);
    return test_exit("test_cpu_decode_cases");
}

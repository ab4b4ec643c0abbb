/*
 * test_cpu_prefill_states.c: the prefill's states for serving engines on the CPU: checkpoints,
 * intermediate states (fla's h), has_initial_state and the prefill on a state pool in place.
 *
 * Checks, on both CPU paths (the float64 reference and the chunked fast path) and 1 and 4 threads:
 *   - a checkpoint, and an intermediate state, equals bitwise the final state of a prefill over
 *     that prefix of the sequence (the same path, from the same initial state);
 *   - asking for them leaves out and the final state bitwise unchanged;
 *   - the fast path's checkpoints agree with the reference's within test_bar_fast;
 *   - entries with an offset < 0 or > length keep their poison (NaN), all others are written;
 *   - on a pool: the result equals a plain prefill whose initial states were gathered from the
 *     pool and whose final states and checkpoints are scattered back; slots nobody writes stay
 *     bitwise unchanged, a slot read by one sequence and written by another holds the writer's
 *     state, and the reader started from the old contents;
 *   - every validation error: its status, the argument named in the message, nothing written.
 * Lengths 0, 1, 15, 16, 17, 63, 64, 65 (varlen) and equal rows of 65; GVA (HV = 2 H); both state
 * layouts; f32 and bf16 states; intermediate chunks of 64, 32 and 5 tokens.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"

#define CKPTS 4 /* checkpoint columns per sequence */

typedef struct config {
    int varlen, reference, threads, v_first, chunk;
    fkda_dtype state_dtype, inter_dtype;
} config;

static const int64_t varlen_lengths[] = {1, 15, 16, 0, 17, 63, 64, 65};

static test_kda_spec make_spec(const config *cfg)
{
    test_kda_spec sp;
    memset(&sp, 0, sizeof sp);
    sp.B = 2;
    sp.T = 65;
    if (cfg->varlen) {
        sp.nseq = (int)(sizeof varlen_lengths / sizeof varlen_lengths[0]);
        sp.lengths = varlen_lengths;
    }
    sp.H = 2;
    sp.HV = 4; /* GVA */
    sp.K = 32;
    sp.V = 48;
    sp.io_dtype = sp.g_dtype = sp.beta_dtype = sp.param_dtype = FKDA_DTYPE_F32;
    sp.has_A_log = sp.has_dt_bias = 1;
    sp.g_mean = -2.0;
    sp.g_std = 1.5;
    sp.options = fkda_default_options();
    sp.options.gate = FKDA_GATE_LOWER_BOUND;
    sp.options.lower_bound = -5.0;
    sp.options.use_qk_l2norm = 1;
    sp.options.use_beta_sigmoid = 1;
    sp.options.state_v_first = cfg->v_first;
    return sp;
}

static void state_dims(const test_kda_spec *sp, int64_t rows, int64_t *shape)
{
    shape[0] = rows;
    shape[1] = sp->HV;
    shape[2] = sp->options.state_v_first ? sp->V : sp->K;
    shape[3] = sp->options.state_v_first ? sp->K : sp->V;
}

static test_tensor state_alloc(const test_kda_spec *sp, int64_t rows, fkda_dtype dtype)
{
    int64_t shape[4];
    state_dims(sp, rows, shape);
    return test_tensor_alloc(dtype, 4, shape);
}

static fkda_prefill_args token_args(const test_kda_inputs *in, const test_kda_spec *sp)
{
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
    a.options = sp->options;
    return a;
}

static fkda_status run(const fkda_prefill_args *a, const config *cfg)
{
    fkda_device device = {FKDA_DEVICE_CPU, 0, NULL, cfg->threads, cfg->reference};
    size_t bytes = 0;
    fkda_status s = fkda_prefill_workspace_size(a, &device, &bytes);
    if (s != FKDA_OK) return s;
    void *workspace = bytes ? aligned_alloc(256, (bytes + 255) / 256 * 256) : NULL;
    s = fkda_prefill(a, &device, workspace, bytes);
    free(workspace);
    return s;
}

/* Row r of a state-shaped tensor as a 1-row view. */
static fkda_tensor state_row(const fkda_tensor *t, int64_t r)
{
    fkda_tensor v = *t;
    v.data = (char *)t->data + (size_t)(r * t->stride[0]) * fkda_dtype_size(t->dtype);
    v.shape[0] = 1;
    return v;
}

static size_t row_bytes(const test_tensor *t) { return t->count / (size_t)t->t.shape[0] * fkda_dtype_size(t->t.dtype); }

/* Tokens [start, start + length) of batch row `row` of a token tensor, as a [1, length, ...] view. */
static fkda_tensor token_view(const fkda_tensor *t, int64_t row, int64_t start, int64_t length)
{
    fkda_tensor v = *t;
    v.data = (char *)t->data + (size_t)(row * t->stride[0] + start * t->stride[1]) * fkda_dtype_size(t->dtype);
    v.shape[0] = 1;
    v.shape[1] = length;
    return v;
}

/* The final state (f32, canonical [HV, K, V] per the spec's layout) of a prefill over the first
 * `prefix` tokens of sequence n, from row n of `initial`. Returns a malloc'd f32 copy of the
 * state tensor's memory (layout as the spec's). */
static float *prefix_state(const test_kda_inputs *in, const test_kda_spec *sp, const config *cfg,
                           const test_tensor *initial, int64_t n, int64_t prefix)
{
    const int64_t row = sp->nseq > 0 ? 0 : n, start = in->start[n];
    fkda_prefill_args a = token_args(in, sp);
    a.cu_seqlens = test_absent();
    a.q = token_view(&in->q, row, start, prefix);
    a.k = token_view(&in->k, row, start, prefix);
    a.v = token_view(&in->v.t, row, start, prefix);
    a.g = token_view(&in->g.t, row, start, prefix);
    a.beta = token_view(&in->beta.t, row, start, prefix);
    test_tensor out = test_tensor_alloc(sp->io_dtype, 4, (const int64_t[]){1, prefix > 0 ? prefix : 1, sp->HV, sp->V});
    a.out = out.t;
    a.out.shape[1] = prefix;
    a.initial_state = state_row(&initial->t, n);
    test_tensor final = state_alloc(sp, 1, FKDA_DTYPE_F32);
    a.final_state = final.t;
    fkda_status s = run(&a, cfg);
    CHECK(s == FKDA_OK, "prefix run n=%lld prefix=%lld: %s", (long long)n, (long long)prefix, fkda_last_error());
    float *copy = malloc(final.count * sizeof(float));
    memcpy(copy, final.t.data, final.count * sizeof(float));
    test_tensor_free(&out);
    test_tensor_free(&final);
    return copy;
}

/* Row r of a state tensor equals (bitwise, after rounding the f32 `want` to its dtype) `want`. */
static int row_equals(const test_tensor *t, int64_t r, const float *want)
{
    const size_t per = t->count / (size_t)t->t.shape[0];
    test_tensor probe = *t;
    for (size_t i = 0; i < per; i++) {
        double got = test_tensor_get(&probe, (size_t)r * per + i);
        double exp_rounded;
        switch (t->t.dtype) {
        case FKDA_DTYPE_BF16: exp_rounded = test_bf16_to_f32(test_f32_to_bf16(want[i])); break;
        case FKDA_DTYPE_F16: exp_rounded = test_f16_to_f32(test_f32_to_f16(want[i])); break;
        default: exp_rounded = want[i]; break;
        }
        if (!(got == exp_rounded)) return 0;
    }
    return 1;
}

static int row_all_nan(const test_tensor *t, int64_t r)
{
    const size_t per = t->count / (size_t)t->t.shape[0];
    for (size_t i = 0; i < per; i++)
        if (!isnan(test_tensor_get(t, (size_t)r * per + i))) return 0;
    return 1;
}

static void describe(const config *cfg, char *buf, size_t size)
{
    snprintf(buf, size, "%s %s thr=%d v_first=%d state=%s inter=%s chunk=%d", cfg->varlen ? "varlen" : "equal",
             cfg->reference ? "reference" : "fast", cfg->threads, cfg->v_first,
             cfg->state_dtype == FKDA_DTYPE_BF16 ? "bf16" : "f32",
             cfg->inter_dtype == FKDA_DTYPE_BF16  ? "bf16"
             : cfg->inter_dtype == FKDA_DTYPE_F16 ? "f16"
                                                  : "f32",
             cfg->chunk);
}

/* ---- checkpoints and intermediate states ------------------------------------------------------ */

static void test_marks(const config *cfg, uint64_t seed, test_tensor *ckpt_out)
{
    char label[256];
    describe(cfg, label, sizeof label);
    test_rng r;
    test_rng_seed(&r, seed);
    test_kda_spec sp = make_spec(cfg);
    test_kda_inputs in;
    test_kda_inputs_make(&sp, &r, &in);
    const int64_t N = in.N, chunk = cfg->chunk ? cfg->chunk : 64;

    test_tensor initial = state_alloc(&sp, N, FKDA_DTYPE_F32);
    test_tensor_fill_normal(&initial, &r, 0.0, 0.5);

    /* Offsets: one random inside, the full length, -1 and length + 1 (not written), shuffled by
     * sequence so that entries are not sorted. */
    test_tensor offsets = test_tensor_alloc(cfg->varlen ? FKDA_DTYPE_I32 : FKDA_DTYPE_I64, 2,
                                            (const int64_t[]){N, CKPTS});
    for (int64_t n = 0; n < N; n++) {
        const int64_t len = in.length[n];
        const int64_t vals[CKPTS] = {test_rng_int(&r, 0, len), len, -1, len + 1};
        for (int c = 0; c < CKPTS; c++) test_tensor_set(&offsets, (size_t)(n * CKPTS + (c + n) % CKPTS), vals[c]);
    }
    int64_t inter_rows = 0;
    for (int64_t n = 0; n < N; n++) inter_rows += (in.length[n] + chunk - 1) / chunk;

    /* Plain run. */
    fkda_prefill_args a = token_args(&in, &sp);
    test_tensor out0 = test_tensor_alloc(sp.io_dtype, 4, (const int64_t[]){sp.B, sp.T, sp.HV, sp.V});
    test_tensor final0 = state_alloc(&sp, N, cfg->state_dtype);
    a.out = out0.t;
    a.initial_state = initial.t;
    a.final_state = final0.t;
    CHECK(run(&a, cfg) == FKDA_OK, "%s: plain run: %s", label, fkda_last_error());

    /* With checkpoints and intermediate states, outputs poisoned. */
    test_tensor out1 = test_tensor_alloc(sp.io_dtype, 4, (const int64_t[]){sp.B, sp.T, sp.HV, sp.V});
    test_tensor final1 = state_alloc(&sp, N, cfg->state_dtype);
    test_tensor ckpt = state_alloc(&sp, N * CKPTS, cfg->state_dtype);
    test_tensor inter = state_alloc(&sp, inter_rows, cfg->inter_dtype);
    test_tensor_fill_value(&out1, NAN);
    test_tensor_fill_value(&final1, NAN);
    test_tensor_fill_value(&ckpt, NAN);
    test_tensor_fill_value(&inter, NAN);
    a.out = out1.t;
    a.final_state = final1.t;
    a.checkpoint_offsets = offsets.t;
    a.checkpoint_states = ckpt.t;
    a.intermediate_states = inter.t;
    a.intermediate_chunk_size = cfg->chunk;
    CHECK(run(&a, cfg) == FKDA_OK, "%s: run with states: %s", label, fkda_last_error());

    const size_t out_bytes = out0.count * fkda_dtype_size(sp.io_dtype);
    CHECK(memcmp(out0.t.data, out1.t.data, out_bytes) == 0, "%s: out changed when states were asked for", label);
    CHECK(memcmp(final0.t.data, final1.t.data, final0.count * fkda_dtype_size(cfg->state_dtype)) == 0,
          "%s: final state changed when states were asked for", label);

    int64_t inter_row = 0;
    for (int64_t n = 0; n < N; n++) {
        const int64_t len = in.length[n];
        for (int c = 0; c < CKPTS; c++) {
            const int64_t off = (int64_t)test_tensor_get(&offsets, (size_t)(n * CKPTS + c));
            const int64_t row = n * CKPTS + c;
            if (off < 0 || off > len) {
                CHECK(row_all_nan(&ckpt, row), "%s: checkpoint [%lld, %d] (offset %lld of %lld) was written", label,
                      (long long)n, c, (long long)off, (long long)len);
                continue;
            }
            float *want = prefix_state(&in, &sp, cfg, &initial, n, off);
            CHECK(row_equals(&ckpt, row, want),
                  "%s: checkpoint [%lld, %d] (offset %lld of %lld) differs from a prefill of "
                  "the prefix",
                  label, (long long)n, c, (long long)off, (long long)len);
            free(want);
        }
        for (int64_t i = 0; i * chunk < len; i++, inter_row++) {
            float *want = prefix_state(&in, &sp, cfg, &initial, n, i * chunk);
            CHECK(row_equals(&inter, inter_row, want),
                  "%s: intermediate state %lld (sequence %lld, chunk %lld) "
                  "differs from a prefill of the prefix",
                  label, (long long)inter_row, (long long)n, (long long)i);
            free(want);
        }
    }
    CHECK(inter_row == inter_rows, "%s: intermediate rows %lld, expected %lld", label, (long long)inter_row,
          (long long)inter_rows);

    test_tensor_free(&out0);
    test_tensor_free(&final0);
    test_tensor_free(&out1);
    test_tensor_free(&final1);
    test_tensor_free(&inter);
    test_tensor_free(&offsets);
    test_tensor_free(&initial);
    test_kda_inputs_free(&in);
    *ckpt_out = ckpt;
}

/* ---- the prefill on a state pool ----------------------------------------------------------------- */

/* Sequence n starts from slot init_idx[n] (one sequence has -1, one has has_initial_state 0),
 * writes its final state to final_idx[n] (sequences 0 and 1 into each other's initial slot, one
 * in place, one -1, the others fresh slots), and its checkpoints into fresh slots. The expectation
 * comes from a plain prefill on gathered initial states, scattered back. */
static void test_pool(const config *cfg, uint64_t seed)
{
    char label[256];
    describe(cfg, label, sizeof label);
    test_rng r;
    test_rng_seed(&r, seed);
    test_kda_spec sp = make_spec(cfg);
    test_kda_inputs in;
    test_kda_inputs_make(&sp, &r, &in);
    const int64_t N = in.N, C = 2, P = 3 * N + N * C + 2;
    const fkda_dtype idx_dtype = cfg->varlen ? FKDA_DTYPE_I64 : FKDA_DTYPE_I32;

    test_tensor pool = state_alloc(&sp, P, cfg->state_dtype);
    test_tensor_fill_normal(&pool, &r, 0.0, 0.5);
    test_tensor init_idx = test_tensor_alloc(idx_dtype, 1, (const int64_t[]){N});
    test_tensor final_idx = test_tensor_alloc(idx_dtype, 1, (const int64_t[]){N});
    test_tensor has_init = test_tensor_alloc(FKDA_DTYPE_BOOL, 1, (const int64_t[]){N});
    test_tensor offsets = test_tensor_alloc(FKDA_DTYPE_I64, 2, (const int64_t[]){N, C});
    test_tensor ckpt_idx = test_tensor_alloc(idx_dtype, 2, (const int64_t[]){N, C});
    for (int64_t n = 0; n < N; n++) {
        test_tensor_set(&init_idx, (size_t)n, (double)(2 * N - 1 - 2 * n)); /* odd slots, reversed */
        test_tensor_set(&final_idx, (size_t)n, (double)(2 * N + n));        /* fresh slots */
        test_tensor_set(&has_init, (size_t)n, 1.0);
        test_tensor_set(&offsets, (size_t)(n * C), (double)test_rng_int(&r, 0, in.length[n]));
        test_tensor_set(&offsets, (size_t)(n * C + 1), n % 2 ? (double)in.length[n] : -1.0);
        test_tensor_set(&ckpt_idx, (size_t)(n * C), (double)(3 * N + n * C));
        test_tensor_set(&ckpt_idx, (size_t)(n * C + 1), n == 1 ? -1.0 : (double)(3 * N + n * C + 1));
    }
    /* Sequences 0 and 1 swap: each writes the slot the other starts from. */
    test_tensor_set(&final_idx, 0, test_tensor_get(&init_idx, 1));
    test_tensor_set(&final_idx, 1, test_tensor_get(&init_idx, 0));
    if (N >= 6) {
        test_tensor_set(&final_idx, 2, test_tensor_get(&init_idx, 2)); /* in place */
        test_tensor_set(&final_idx, 3, -1.0);                          /* not written */
        test_tensor_set(&init_idx, 4, -1.0);                           /* from zero by the index */
        test_tensor_set(&has_init, 5, 0.0);                            /* from zero by the flag */
    }

    /* The expectation: gather, run plainly, scatter. */
    test_tensor initial = state_alloc(&sp, N, cfg->state_dtype);
    const size_t rb = row_bytes(&pool);
    for (int64_t n = 0; n < N; n++) {
        const int64_t slot = (int64_t)test_tensor_get(&init_idx, (size_t)n);
        char *dst = (char *)initial.t.data + (size_t)n * rb;
        if (slot < 0 || test_tensor_get(&has_init, (size_t)n) == 0.0)
            memset(dst, 0, rb); /* zero in f32 and bf16 */
        else
            memcpy(dst, (char *)pool.t.data + (size_t)slot * rb, rb);
    }
    fkda_prefill_args a = token_args(&in, &sp);
    test_tensor out0 = test_tensor_alloc(sp.io_dtype, 4, (const int64_t[]){sp.B, sp.T, sp.HV, sp.V});
    test_tensor final0 = state_alloc(&sp, N, cfg->state_dtype);
    test_tensor ckpt0 = state_alloc(&sp, N * C, cfg->state_dtype);
    a.out = out0.t;
    a.initial_state = initial.t;
    a.final_state = final0.t;
    a.checkpoint_offsets = offsets.t;
    a.checkpoint_states = ckpt0.t;
    CHECK(run(&a, cfg) == FKDA_OK, "%s: pool expectation run: %s", label, fkda_last_error());
    char *expected = malloc(pool.count * fkda_dtype_size(cfg->state_dtype));
    int *written = calloc((size_t)P, sizeof(int));
    memcpy(expected, pool.t.data, pool.count * fkda_dtype_size(cfg->state_dtype));
    for (int64_t n = 0; n < N; n++) {
        const int64_t slot = (int64_t)test_tensor_get(&final_idx, (size_t)n);
        if (slot >= 0) {
            memcpy(expected + (size_t)slot * rb, (char *)final0.t.data + (size_t)n * rb, rb);
            written[slot] = 1;
        }
        for (int64_t c = 0; c < C; c++) {
            const int64_t off = (int64_t)test_tensor_get(&offsets, (size_t)(n * C + c));
            const int64_t cs = (int64_t)test_tensor_get(&ckpt_idx, (size_t)(n * C + c));
            if (cs < 0 || off < 0 || off > in.length[n]) continue;
            memcpy(expected + (size_t)cs * rb, (char *)ckpt0.t.data + (size_t)(n * C + c) * rb, rb);
            written[cs] = 1;
        }
    }

    /* The pool run. */
    test_tensor out1 = test_tensor_alloc(sp.io_dtype, 4, (const int64_t[]){sp.B, sp.T, sp.HV, sp.V});
    test_tensor_fill_value(&out1, NAN);
    a.out = out1.t;
    a.initial_state = test_absent();
    a.final_state = test_absent();
    a.checkpoint_states = test_absent();
    a.state_pool = pool.t;
    a.initial_state_indices = init_idx.t;
    a.final_state_indices = final_idx.t;
    a.has_initial_state = has_init.t;
    a.checkpoint_indices = ckpt_idx.t;
    CHECK(run(&a, cfg) == FKDA_OK, "%s: pool run: %s", label, fkda_last_error());
    CHECK(memcmp(out0.t.data, out1.t.data, out0.count * fkda_dtype_size(sp.io_dtype)) == 0,
          "%s: pool run: out differs from the plain run on gathered states", label);
    for (int64_t s = 0; s < P; s++)
        CHECK(memcmp((char *)pool.t.data + (size_t)s * rb, expected + (size_t)s * rb, rb) == 0,
              "%s: pool slot %lld (%s) differs from the expectation", label, (long long)s,
              written[s] ? "written" : "untouched");

    free(expected);
    free(written);
    test_tensor *all[] = {&pool,    &init_idx, &final_idx, &has_init, &offsets, &ckpt_idx,
                          &initial, &out0,     &final0,    &ckpt0,    &out1};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) test_tensor_free(all[i]);
    test_kda_inputs_free(&in);
}

/* ---- validation ---------------------------------------------------------------------------------- */

typedef struct bad_fixture {
    test_kda_spec sp;
    test_kda_inputs in;
    test_tensor out, pool, idx, idx_big, flags, offsets, offsets_1d, offsets_f, ckpt, ckpt_idx, inter, states, fidx;
} bad_fixture;

static void expect_error(bad_fixture *f, const fkda_prefill_args *a, fkda_status status, const char *message)
{
    void *out_copy = test_tensor_snapshot(&f->out), *pool_copy = test_tensor_snapshot(&f->pool);
    void *ckpt_copy = test_tensor_snapshot(&f->ckpt), *inter_copy = test_tensor_snapshot(&f->inter);
    void *states_copy = test_tensor_snapshot(&f->states);
    fkda_device device = {FKDA_DEVICE_CPU, 0, NULL, 2, 0};
    size_t bytes = 0;
    fkda_status s = fkda_prefill_workspace_size(a, &device, &bytes);
    CHECK(s == status && strstr(fkda_last_error(), message) != NULL,
          "workspace size: expected status %d with \"%s\", got %d \"%s\"", (int)status, message, (int)s,
          fkda_last_error());
    char workspace[1 << 16] __attribute__((aligned(256)));
    s = fkda_prefill(a, &device, workspace, sizeof workspace);
    CHECK(s == status && strstr(fkda_last_error(), message) != NULL,
          "prefill: expected status %d with \"%s\", got %d \"%s\"", (int)status, message, (int)s, fkda_last_error());
    CHECK(test_tensor_unchanged(&f->out, out_copy) && test_tensor_unchanged(&f->pool, pool_copy) &&
              test_tensor_unchanged(&f->ckpt, ckpt_copy) && test_tensor_unchanged(&f->inter, inter_copy) &&
              test_tensor_unchanged(&f->states, states_copy),
          "\"%s\": an output was written on error", message);
    free(out_copy);
    free(pool_copy);
    free(ckpt_copy);
    free(inter_copy);
    free(states_copy);
}

static void test_validation(void)
{
    bad_fixture f;
    const config cfg = {0, 0, 2, 0, 0, FKDA_DTYPE_F32, FKDA_DTYPE_F32};
    test_rng r;
    test_rng_seed(&r, 7);
    f.sp = make_spec(&cfg);
    f.sp.T = 5;
    f.sp.K = f.sp.V = 16;
    test_kda_inputs_make(&f.sp, &r, &f.in);
    const int64_t N = f.in.N; /* 2 */
    f.out = test_tensor_alloc(FKDA_DTYPE_F32, 4, (const int64_t[]){f.sp.B, f.sp.T, f.sp.HV, f.sp.V});
    f.pool = state_alloc(&f.sp, 3, FKDA_DTYPE_F32);
    f.states = state_alloc(&f.sp, N, FKDA_DTYPE_F32);
    f.ckpt = state_alloc(&f.sp, N * 2, FKDA_DTYPE_F32);
    f.inter = state_alloc(&f.sp, N, FKDA_DTYPE_F32); /* B * ceil(5 / 64) = 2 rows */
    f.idx = test_tensor_alloc(FKDA_DTYPE_I32, 1, (const int64_t[]){N});
    f.idx_big = test_tensor_alloc(FKDA_DTYPE_I64, 1, (const int64_t[]){N});
    f.fidx = test_tensor_alloc(FKDA_DTYPE_F32, 1, (const int64_t[]){N});
    f.flags = test_tensor_alloc(FKDA_DTYPE_BOOL, 1, (const int64_t[]){N});
    f.offsets = test_tensor_alloc(FKDA_DTYPE_I64, 2, (const int64_t[]){N, 2});
    f.offsets_1d = test_tensor_alloc(FKDA_DTYPE_I64, 1, (const int64_t[]){N});
    f.offsets_f = test_tensor_alloc(FKDA_DTYPE_F32, 2, (const int64_t[]){N, 2});
    f.ckpt_idx = test_tensor_alloc(FKDA_DTYPE_I32, 2, (const int64_t[]){N, 2});
    test_tensor_fill_value(&f.out, NAN);
    test_tensor_fill_normal(&f.pool, &r, 0.0, 1.0);
    test_tensor_fill_value(&f.states, 3.0);
    test_tensor_fill_value(&f.ckpt, NAN);
    test_tensor_fill_value(&f.inter, NAN);
    test_tensor_fill_value(&f.idx, 1.0);
    test_tensor_fill_value(&f.idx_big, 1.0);
    test_tensor_set(&f.idx_big, 1, 3.0); /* the pool has 3 slots */
    test_tensor_fill_value(&f.flags, 1.0);
    test_tensor_fill_value(&f.offsets, 2.0);
    test_tensor_fill_value(&f.ckpt_idx, 0.0);

    fkda_prefill_args base = token_args(&f.in, &f.sp);
    base.out = f.out.t;
    fkda_prefill_args pooled = base;
    pooled.state_pool = f.pool.t;
    pooled.initial_state_indices = f.idx.t;
    pooled.final_state_indices = f.idx.t;
    const fkda_status BAD = FKDA_ERROR_INVALID_ARGUMENT;
    fkda_prefill_args a;

    a = pooled, a.initial_state = f.states.t;
    expect_error(&f, &a, BAD, "state_pool: excludes initial_state");
    a = pooled, a.final_state = f.states.t;
    expect_error(&f, &a, BAD, "state_pool: excludes final_state");
    a = base, a.initial_state_indices = f.idx.t;
    expect_error(&f, &a, BAD, "initial_state_indices: needs state_pool");
    a = base, a.final_state_indices = f.idx.t;
    expect_error(&f, &a, BAD, "final_state_indices: needs state_pool");
    a = pooled, a.initial_state_indices = f.offsets.t;
    expect_error(&f, &a, BAD, "initial_state_indices: expected 1 dimensions [N]");
    a = pooled, a.final_state_indices = f.fidx.t;
    expect_error(&f, &a, BAD, "final_state_indices: dtype float32 is not accepted");
    a = pooled, a.initial_state_indices = f.idx_big.t;
    expect_error(&f, &a, BAD, "initial_state_indices: entry [1] = 3 is outside the state_pool of 3 slots");
    a = pooled, a.final_state_indices = f.idx_big.t;
    expect_error(&f, &a, BAD, "final_state_indices: entry [1] = 3 is outside the state_pool of 3 slots");
    a = pooled, a.state_pool = f.pool.t, a.state_pool.shape[0] = 1, a.initial_state_indices = test_absent();
    expect_error(&f, &a, BAD, "state_pool: has 1 slots, but without initial_state_indices");
    a = pooled, a.state_pool.flags = FKDA_TENSOR_READ_ONLY;
    expect_error(&f, &a, BAD, "state_pool: is read-only");
    a = pooled, a.state_pool.dtype = FKDA_DTYPE_F16;
    expect_error(&f, &a, BAD, "state_pool: dtype float16 is not accepted");
    a = base, a.has_initial_state = f.flags.t;
    expect_error(&f, &a, BAD, "has_initial_state: needs initial_state or state_pool");
    a = pooled, a.has_initial_state = f.fidx.t;
    expect_error(&f, &a, BAD, "has_initial_state: dtype float32 is not accepted");
    a = pooled, a.has_initial_state = f.offsets.t;
    expect_error(&f, &a, BAD, "has_initial_state: expected 1 dimensions [N]");

    a = base, a.checkpoint_states = f.ckpt.t;
    expect_error(&f, &a, BAD, "checkpoint_states: needs checkpoint_offsets");
    a = pooled, a.checkpoint_indices = f.ckpt_idx.t;
    expect_error(&f, &a, BAD, "checkpoint_indices: needs checkpoint_offsets");
    a = base, a.checkpoint_offsets = f.offsets.t;
    expect_error(&f, &a, BAD, "checkpoint_offsets: needs checkpoint_states or checkpoint_indices");
    a = pooled, a.checkpoint_offsets = f.offsets.t, a.checkpoint_states = f.ckpt.t, a.checkpoint_indices = f.ckpt_idx.t;
    expect_error(&f, &a, BAD, "checkpoint_indices: give either checkpoint_states or checkpoint_indices");
    a = base, a.checkpoint_offsets = f.offsets.t, a.checkpoint_indices = f.ckpt_idx.t;
    expect_error(&f, &a, BAD, "checkpoint_indices: needs state_pool");
    a = base, a.checkpoint_offsets = f.offsets_1d.t, a.checkpoint_states = f.ckpt.t;
    expect_error(&f, &a, BAD, "checkpoint_offsets: expected 2 dimensions [N, C]");
    a = base, a.checkpoint_offsets = f.offsets_f.t, a.checkpoint_states = f.ckpt.t;
    expect_error(&f, &a, BAD, "checkpoint_offsets: dtype float32 is not accepted");
    a = base, a.checkpoint_offsets = f.offsets.t, a.checkpoint_states = f.states.t;
    expect_error(&f, &a, BAD, "checkpoint_states: expected shape [N * C, HV, K, V]");
    a = pooled, a.checkpoint_offsets = f.offsets.t, a.checkpoint_indices = f.offsets_f.t;
    expect_error(&f, &a, BAD, "checkpoint_indices: dtype float32 is not accepted");
    a = pooled, a.checkpoint_offsets = f.offsets.t, a.checkpoint_indices = f.idx.t;
    expect_error(&f, &a, BAD, "checkpoint_indices: expected 2 dimensions [N, C] (as checkpoint_offsets)");
    test_tensor_set(&f.ckpt_idx, 1, 5.0);
    a = pooled, a.checkpoint_offsets = f.offsets.t, a.checkpoint_indices = f.ckpt_idx.t;
    expect_error(&f, &a, BAD, "checkpoint_indices: entry [0, 1] = 5 is outside the state_pool of 3 slots");
    test_tensor_set(&f.ckpt_idx, 1, 0.0);

    a = base, a.intermediate_chunk_size = -1;
    expect_error(&f, &a, BAD, "intermediate_chunk_size: -1 is negative");
    a = base, a.intermediate_states = f.ckpt.t;
    expect_error(&f, &a, BAD, "intermediate_states: expected shape [B * ceil(T / chunk), HV, K, V] = [2,");
    a = base, a.intermediate_states = f.inter.t, a.intermediate_chunk_size = 2;
    expect_error(&f, &a, BAD, "intermediate_states: expected shape [B * ceil(T / chunk), HV, K, V] = [6,");
    a = base, a.intermediate_states = f.inter.t, a.intermediate_states.dtype = FKDA_DTYPE_I32;
    expect_error(&f, &a, BAD, "intermediate_states: dtype int32 is not accepted");

    /* Overlaps: a new output against an input, another output, and an index tensor. */
    a = base, a.checkpoint_offsets = f.offsets.t, a.checkpoint_states = f.ckpt.t,
    a.checkpoint_states.data = f.out.t.data;
    expect_error(&f, &a, BAD, "checkpoint_states: shares memory with out");
    a = pooled, a.intermediate_states = f.inter.t, a.intermediate_states.data = f.pool.t.data;
    expect_error(&f, &a, BAD, "state_pool: shares memory with intermediate_states");
    a = pooled, a.initial_state_indices = f.idx.t, a.initial_state_indices.data = f.pool.t.data;
    expect_error(&f, &a, BAD, "state_pool: shares memory with initial_state_indices");
    a = base, a.initial_state = f.states.t, a.has_initial_state = f.flags.t, a.has_initial_state.data = f.out.t.data;
    expect_error(&f, &a, BAD, "shares memory with has_initial_state");

    /* Valid calls of the same fixture succeed (the fixture itself is sound). */
    a = pooled, a.checkpoint_offsets = f.offsets.t, a.checkpoint_indices = f.ckpt_idx.t,
    a.has_initial_state = f.flags.t;
    fkda_device device = {FKDA_DEVICE_CPU, 0, NULL, 2, 0};
    char workspace[1 << 16] __attribute__((aligned(256)));
    size_t bytes = 0;
    CHECK(fkda_prefill_workspace_size(&a, &device, &bytes) == FKDA_OK && bytes <= sizeof workspace,
          "valid pool call: workspace size: %s", fkda_last_error());
    CHECK(fkda_prefill(&a, &device, workspace, sizeof workspace) == FKDA_OK, "valid pool call: %s", fkda_last_error());
    a = base, a.intermediate_states = f.inter.t;
    CHECK(fkda_prefill(&a, &device, workspace, sizeof workspace) == FKDA_OK, "valid intermediate call: %s",
          fkda_last_error());

    test_tensor *all[] = {&f.out,  &f.pool,  &f.states,  &f.ckpt,       &f.inter,     &f.idx,     &f.idx_big,
                          &f.fidx, &f.flags, &f.offsets, &f.offsets_1d, &f.offsets_f, &f.ckpt_idx};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) test_tensor_free(all[i]);
    test_kda_inputs_free(&f.in);
}

/* ---- all of it ----------------------------------------------------------------------------------- */

int main(void)
{
    const uint64_t seed = test_seed_from_env();
    test_validation();

    /* Every path and thread count, on both layouts and state dtypes, varlen and equal rows. */
    static const struct {
        int varlen, v_first, chunk;
        fkda_dtype state, inter;
    } shapes[] = {
        {1, 0, 0, FKDA_DTYPE_F32, FKDA_DTYPE_F32},   {1, 1, 32, FKDA_DTYPE_BF16, FKDA_DTYPE_BF16},
        {0, 0, 5, FKDA_DTYPE_F32, FKDA_DTYPE_F16},   {0, 1, 64, FKDA_DTYPE_BF16, FKDA_DTYPE_F32},
        {1, 0, 17, FKDA_DTYPE_BF16, FKDA_DTYPE_F32},
    };
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
        for (int threads = 1; threads <= 4; threads += 3) {
            test_tensor ckpt[2];
            for (int reference = 1; reference >= 0; reference--) {
                config cfg = {shapes[i].varlen, reference,       threads,        shapes[i].v_first,
                              shapes[i].chunk,  shapes[i].state, shapes[i].inter};
                const uint64_t case_seed = seed + i;
                test_marks(&cfg, case_seed, &ckpt[reference]);
                test_pool(&cfg, case_seed + 100);
            }
            /* The fast path's checkpoints against the reference's (the same inputs and offsets);
             * the rows that were not written are NaN in both and left out. */
            size_t n = ckpt[0].count, live = 0;
            double *a = malloc(n * sizeof(double)), *b = malloc(n * sizeof(double));
            for (size_t j = 0; j < n; j++) {
                const double x = test_tensor_get(&ckpt[0], j), y = test_tensor_get(&ckpt[1], j);
                CHECK(isnan(x) == isnan(y), "shape %zu thr=%d: checkpoint element %zu written by one path only", i,
                      threads, j);
                if (isnan(x) || isnan(y)) continue;
                a[live] = x;
                b[live] = y;
                live++;
            }
            const double bar = test_bar_fast(shapes[i].state, 65, 32, live), e = test_rel_error_d(a, b, live);
            CHECK(e <= bar, "shape %zu thr=%d: fast vs reference checkpoints: error %.3e > %.1e", i, threads, e, bar);
            free(a);
            free(b);
            test_tensor_free(&ckpt[0]);
            test_tensor_free(&ckpt[1]);
        }
    return test_exit("test_cpu_prefill_states");
}

/*
 * test_cpu_decode.c: the CPU decode through the public API, against the prefill on the same
 * tokens.
 *
 * Decode reads a sequence's state from a pool slot, runs its few tokens with the recurrent form
 * and writes the state back; a chain of single-token decode calls must therefore reproduce one
 * prefill over all the tokens, started from the slot's content. Every scenario runs the decode
 * twice, fast (float32) and reference (float64), on copies of the pool, and checks:
 *   fast == reference decode         within the float32 arithmetic and the roundings it flips
 *   reference decode == prefill      the reference prefill (float64) on the same tokens, with
 *                                    the slots' contents as initial states: outputs and states,
 *                                    within the rounding of the state into the pool per call
 *                                    (the bars: tol_* below, built from test_util.h)
 *   skipped sequences                (negative read slot) out rows exactly zero, no slot written
 *   untouched slots                  every slot no sequence writes is bitwise unchanged
 *   every out element written        (out poisoned with NaN before each call)
 *
 * Scenarios: chains of single-token calls with random slots, skipped sequences, and a slot
 * zeroed and reused by a new sequence; decode without indices (slot n); varlen decode with
 * cu_seqlens (several tokens per sequence, one of them empty); speculative decoding with 2-D
 * indices and num_accepted_tokens (the state after every draft token lands in its own slot,
 * checked against a prefill over that many tokens). Each for f32 and bf16 pools, both layouts.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"

typedef struct setup {
    int64_t N, H, HV, K, V, P; /* sequences, heads, dims, pool slots */
    fkda_dtype pool_dtype, io_dtype, index_dtype;
    fkda_options options;
    int threads;
} setup;

static const char *dtype_name(fkda_dtype d)
{
    return d == FKDA_DTYPE_F32 ? "f32" : d == FKDA_DTYPE_F16 ? "f16" : "bf16";
}

/* Error bars (test_util.h), as functions of the case: `calls` decode calls that each round the
 * state into the pool, `tokens` tokens of the sequence.
 *
 * drift: the state the reference decode carries from call to call is rounded to the pool dtype
 * each time: an error uniform in half an ulp either way, u / sqrt(3) in relative Frobenius norm
 * (the norm of many elements is their root mean square), the calls' errors adding in
 * quadrature (decays and the delta rule only shrink the older ones). */
static double drift(const setup *s, int64_t calls)
{
    return test_unit_roundoff(s->pool_dtype) / sqrt(3.0) * sqrt((double)(calls < 1 ? 1 : calls));
}

/* Fast vs reference decode: per call the float32 arithmetic of one token plus the pool
 * roundings it flips, accumulated in quadrature over the calls, plus the float32 arithmetic
 * within the sequence; then out rounds both (to the io dtype). */
static double pool_gap(const setup *s, int64_t calls)
{
    const size_t state = (size_t)(s->HV * s->K * s->V);
    return sqrt((double)(calls < 1 ? 1 : calls)) * test_bar_rounded(s->pool_dtype, test_bar_arith32(1, s->K), state);
}

static double tol_fast_out(const setup *s, int64_t calls, int64_t tokens)
{
    return test_bar_rounded(s->io_dtype, pool_gap(s, calls) + test_bar_arith32(tokens, s->K),
                            (size_t)(tokens * s->HV * s->V));
}

/* Reference decode vs reference prefill (float64 both): the drift, then out rounds both. */
static double tol_prefill_out(const setup *s, int64_t calls, int64_t tokens)
{
    return test_bar_rounded(s->io_dtype, drift(s, calls), (size_t)(tokens * s->HV * s->V));
}

/* A decode state (rounded into the pool) vs the prefill's float32 final state: the drift, and
 * for the fast path also its float32 arithmetic over the tokens. */
static double tol_prefill_state(const setup *s, int64_t calls, int64_t tokens, int fast)
{
    return drift(s, calls) + (fast ? test_bar_arith32(tokens, s->K) : 0.0) + test_bar_reference(FKDA_DTYPE_F32);
}

static test_kda_spec token_spec(const setup *s, int64_t B, int64_t T, int nseq, const int64_t *lengths)
{
    test_kda_spec sp;
    memset(&sp, 0, sizeof sp);
    sp.B = B;
    sp.T = T;
    sp.H = s->H;
    sp.HV = s->HV;
    sp.K = s->K;
    sp.V = s->V;
    sp.nseq = nseq;
    sp.lengths = lengths;
    sp.io_dtype = s->io_dtype;
    sp.g_dtype = sp.beta_dtype = sp.param_dtype = FKDA_DTYPE_F32;
    sp.has_A_log = sp.has_dt_bias = 1;
    sp.g_std = 1.0;
    sp.options = s->options;
    return sp;
}

/* A view of tokens [t0, t0 + count) of every row of a [B, T, ...] token tensor. */
static fkda_tensor token_view(fkda_tensor t, int64_t t0, int64_t count)
{
    t.data = (char *)t.data + (size_t)(t0 * t.stride[1]) * fkda_dtype_size(t.dtype);
    t.shape[1] = count;
    return t;
}

/* Pool element (slot, head, key i, value j), whatever the layout. */
static double pool_at(const setup *s, const double *pool, int64_t slot, int64_t h, int64_t i, int64_t j)
{
    return s->options.state_v_first ? pool[((slot * s->HV + h) * s->V + j) * s->K + i]
                                    : pool[((slot * s->HV + h) * s->K + i) * s->V + j];
}

static test_tensor make_pool(const setup *s, test_rng *r)
{
    const int64_t a = s->options.state_v_first ? s->V : s->K, b = s->options.state_v_first ? s->K : s->V;
    test_tensor pool = test_tensor_alloc(s->pool_dtype, 4, (const int64_t[]){s->P, s->HV, a, b});
    test_tensor_fill_normal(&pool, r, 0.0, 0.5);
    return pool;
}

static test_tensor copy_tensor(const test_tensor *x)
{
    test_tensor y = test_tensor_alloc(x->t.dtype, x->t.ndim, x->t.shape);
    memcpy(y.t.data, x->t.data, x->count * fkda_dtype_size(x->t.dtype));
    return y;
}

/* One decode call; out is poisoned first and checked fully written afterwards. */
static void decode_call(const setup *s, const test_kda_inputs *in, int64_t t0, int64_t count, int varlen,
                        test_tensor *pool, const test_tensor *indices, const test_tensor *accepted, fkda_tensor out,
                        int reference, const char *label)
{
    fkda_decode_args a;
    memset(&a, 0, sizeof a);
    a.q = varlen ? in->q : token_view(in->q, t0, count);
    a.k = varlen ? in->k : token_view(in->k, t0, count);
    a.v = varlen ? in->v.t : token_view(in->v.t, t0, count);
    a.g = varlen ? in->g.t : token_view(in->g.t, t0, count);
    a.beta = varlen ? in->beta.t : token_view(in->beta.t, t0, count);
    a.A_log = in->A_log.t;
    a.dt_bias = in->dt_bias.t;
    a.cu_seqlens = in->cu_seqlens.t;
    a.state_pool = pool->t;
    a.state_indices = indices ? indices->t : test_absent();
    a.num_accepted_tokens = accepted ? accepted->t : test_absent();
    a.out = varlen ? out : token_view(out, t0, count);
    a.options = s->options;
    test_view_fill(&a.out, NAN);
    fkda_device device = {FKDA_DEVICE_CPU, 0, NULL, reference ? 2 : s->threads, reference};
    size_t bytes = 0;
    fkda_status st = fkda_decode_workspace_size(&a, &device, &bytes);
    CHECK(st == FKDA_OK, "%s: decode workspace: %s", label, fkda_last_error());
    void *ws = bytes ? aligned_alloc(256, (bytes + 255) / 256 * 256) : NULL;
    st = fkda_decode(&a, &device, ws, bytes);
    CHECK(st == FKDA_OK, "%s: decode: %s", label, fkda_last_error());
    free(ws);
    size_t n;
    double *o = test_gather(&a.out, &n);
    CHECK(test_count_nonfinite_d(o, n) == 0, "%s: decode left %zu of %zu out elements unwritten", label,
          test_count_nonfinite_d(o, n), n);
    free(o);
}

/* The reference prefill over tokens [0, T) of every sequence (or the varlen batch), starting
 * from initial [N, HV, K, V] (float32, key-major); out and final (same shapes) returned. */
static void prefill_ref(const setup *s, const test_kda_inputs *in, int64_t T, int varlen, const test_tensor *initial,
                        test_tensor *out, test_tensor *final)
{
    fkda_prefill_args a;
    memset(&a, 0, sizeof a);
    a.q = varlen ? in->q : token_view(in->q, 0, T);
    a.k = varlen ? in->k : token_view(in->k, 0, T);
    a.v = varlen ? in->v.t : token_view(in->v.t, 0, T);
    a.g = varlen ? in->g.t : token_view(in->g.t, 0, T);
    a.beta = varlen ? in->beta.t : token_view(in->beta.t, 0, T);
    a.A_log = in->A_log.t;
    a.dt_bias = in->dt_bias.t;
    a.cu_seqlens = in->cu_seqlens.t;
    a.initial_state = initial->t;
    const int64_t B = varlen ? 1 : in->N;
    *out = test_tensor_alloc(FKDA_DTYPE_F32, 4, (const int64_t[]){B, T, s->HV, s->V});
    *final = test_tensor_alloc(FKDA_DTYPE_F32, 4, (const int64_t[]){in->N, s->HV, s->K, s->V});
    a.out = out->t;
    /* out must have v's dtype: for f16 / bf16 tokens, write into that dtype and widen. */
    test_tensor narrow = {test_absent(), 0};
    if (s->io_dtype != FKDA_DTYPE_F32) {
        narrow = test_tensor_alloc(s->io_dtype, 4, (const int64_t[]){B, T, s->HV, s->V});
        a.out = narrow.t;
    }
    a.final_state = final->t;
    a.options = s->options;
    a.options.state_v_first = 0;
    fkda_device device = {FKDA_DEVICE_CPU, 0, NULL, 2, 1};
    size_t bytes = 0;
    fkda_status st = fkda_prefill_workspace_size(&a, &device, &bytes);
    CHECK(st == FKDA_OK, "prefill workspace: %s", fkda_last_error());
    void *ws = bytes ? aligned_alloc(256, (bytes + 255) / 256 * 256) : NULL;
    st = fkda_prefill(&a, &device, ws, bytes);
    CHECK(st == FKDA_OK, "prefill: %s", fkda_last_error());
    free(ws);
    if (narrow.t.data) {
        for (size_t i = 0; i < out->count; i++) test_tensor_set(out, i, test_tensor_get(&narrow, i));
        test_tensor_free(&narrow);
    }
}

/* initial [N, HV, K, V] f32 from the pool slots (zeros for slot < 0). */
static test_tensor initial_from_pool(const setup *s, const test_tensor *pool, const int64_t *slot)
{
    size_t n;
    double *p = test_gather(&pool->t, &n);
    test_tensor init = test_tensor_alloc(FKDA_DTYPE_F32, 4, (const int64_t[]){s->N, s->HV, s->K, s->V});
    for (int64_t q = 0; q < s->N; q++)
        for (int64_t h = 0; h < s->HV; h++)
            for (int64_t i = 0; i < s->K; i++)
                for (int64_t j = 0; j < s->V; j++)
                    test_tensor_set(&init, (size_t)(((q * s->HV + h) * s->K + i) * s->V + j),
                                    slot[q] >= 0 ? pool_at(s, p, slot[q], h, i, j) : 0.0);
    free(p);
    return init;
}

/* Relative error of pool slot `slot` against final state n of a [N, HV, K, V] f32 tensor. */
static double slot_error(const setup *s, const test_tensor *pool, int64_t slot, const test_tensor *final, int64_t n)
{
    size_t count;
    double *p = test_gather(&pool->t, &count);
    double num = 0, den = 0;
    for (int64_t h = 0; h < s->HV; h++)
        for (int64_t i = 0; i < s->K; i++)
            for (int64_t j = 0; j < s->V; j++) {
                double want = test_tensor_get(final, (size_t)(((n * s->HV + h) * s->K + i) * s->V + j));
                double d = pool_at(s, p, slot, h, i, j) - want;
                num += d * d;
                den += want * want;
            }
    free(p);
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* Slot-by-slot: 1 when the bytes of slot `slot` are the same in a and b. */
static int slot_unchanged(const test_tensor *a, const test_tensor *b, int64_t slot)
{
    size_t per = a->count / (size_t)a->t.shape[0] * fkda_dtype_size(a->t.dtype);
    return memcmp((char *)a->t.data + (size_t)slot * per, (char *)b->t.data + (size_t)slot * per, per) == 0;
}

/* Output rows of sequence n (tokens [t0, t0 + len) of row `row`) against expected. */
static double rows_error(const setup *s, const test_tensor *got, const test_tensor *want, int64_t row, int64_t t0,
                         int64_t len, int64_t T, int zero_expected, int *all_zero)
{
    double num = 0, den = 0;
    *all_zero = 1;
    for (int64_t t = t0; t < t0 + len; t++)
        for (int64_t e = 0; e < s->HV * s->V; e++) {
            size_t i = (size_t)((row * T + t) * s->HV * s->V + e);
            double g = test_tensor_get(got, i), w = zero_expected ? 0.0 : test_tensor_get(want, i);
            if (g != 0.0) *all_zero = 0;
            num += (g - w) * (g - w);
            den += w * w;
        }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

static void describe(const setup *s, const char *what, char *buf, size_t size)
{
    snprintf(buf, size,
             "%s: N=%lld H=%lld HV=%lld K=%lld V=%lld P=%lld pool=%s io=%s idx=%s v_first=%d gate=%d l2=%d thr=%d",
             what, (long long)s->N, (long long)s->H, (long long)s->HV, (long long)s->K, (long long)s->V,
             (long long)s->P, dtype_name(s->pool_dtype), dtype_name(s->io_dtype),
             s->index_dtype == FKDA_DTYPE_I32 ? "i32" : "i64", s->options.state_v_first, (int)s->options.gate,
             s->options.use_qk_l2norm, s->threads);
}

/* A chain of T single-token decode calls with 1-D indices slot[n] (negative: skipped, or no
 * indices at all when use_indices is 0: slot n), checked against the prefill. Returns nothing;
 * the pool is updated (by the fast decode) so that a next phase can continue from it. */
static void chain(const setup *s, test_rng *r, test_tensor *pool, const int64_t *slot, int64_t T, int use_indices,
                  const char *what)
{
    char label[400];
    describe(s, what, label, sizeof label);
    test_kda_spec sp = token_spec(s, s->N, T, 0, NULL);
    test_kda_inputs in;
    test_kda_inputs_make(&sp, r, &in);

    test_tensor indices = test_tensor_alloc(s->index_dtype, 1, (const int64_t[]){s->N});
    for (int64_t n = 0; n < s->N; n++) test_tensor_set(&indices, (size_t)n, (double)slot[n]);
    test_tensor init = initial_from_pool(s, pool, slot);
    test_tensor pool_ref = copy_tensor(pool), pool_before = copy_tensor(pool);

    test_tensor out_fast = test_tensor_alloc(s->io_dtype, 4, (const int64_t[]){s->N, T, s->HV, s->V});
    test_tensor out_ref = test_tensor_alloc(s->io_dtype, 4, (const int64_t[]){s->N, T, s->HV, s->V});
    for (int64_t t = 0; t < T; t++) {
        decode_call(s, &in, t, 1, 0, pool, use_indices ? &indices : NULL, NULL, out_fast.t, 0, label);
        decode_call(s, &in, t, 1, 0, &pool_ref, use_indices ? &indices : NULL, NULL, out_ref.t, 1, label);
    }
    test_tensor out_pf, final_pf;
    prefill_ref(s, &in, T, 0, &init, &out_pf, &final_pf);

    for (int64_t n = 0; n < s->N; n++) {
        int zero;
        if (slot[n] < 0) {
            rows_error(s, &out_fast, NULL, n, 0, T, T, 1, &zero);
            CHECK(zero, "%s: skipped sequence %lld: fast out rows not zero", label, (long long)n);
            rows_error(s, &out_ref, NULL, n, 0, T, T, 1, &zero);
            CHECK(zero, "%s: skipped sequence %lld: reference out rows not zero", label, (long long)n);
            continue;
        }
        double e1 = rows_error(s, &out_fast, &out_ref, n, 0, T, T, 0, &zero);
        double e2 = rows_error(s, &out_ref, &out_pf, n, 0, T, T, 0, &zero);
        CHECK(e1 <= tol_fast_out(s, T, T), "%s: seq %lld out fast vs ref %.3e > %.1e", label, (long long)n, e1,
              tol_fast_out(s, T, T));
        CHECK(e2 <= tol_prefill_out(s, T, T), "%s: seq %lld out decode vs prefill %.3e > %.1e", label, (long long)n, e2,
              tol_prefill_out(s, T, T));
        double f1 = slot_error(s, &pool_ref, slot[n], &final_pf, n);
        CHECK(f1 <= tol_prefill_state(s, T, T, 0), "%s: seq %lld state decode vs prefill %.3e > %.1e", label,
              (long long)n, f1, tol_prefill_state(s, T, T, 0));
        /* fast vs reference state, through the prefill's layout-free view */
        double f2 = slot_error(s, pool, slot[n], &final_pf, n);
        CHECK(f2 <= tol_prefill_state(s, T, T, 1), "%s: seq %lld fast state vs prefill %.3e > %.1e", label,
              (long long)n, f2, tol_prefill_state(s, T, T, 1));
        if (getenv("FKDA_TEST_VERBOSE"))
            printf("  seq %lld: out %.2e / %.2e state %.2e / %.2e  %s\n", (long long)n, e1, e2, f1, f2, label);
    }
    for (int64_t q = 0; q < s->P; q++) {
        int used = 0;
        for (int64_t n = 0; n < s->N; n++) used |= slot[n] == q;
        if (!used) {
            CHECK(slot_unchanged(pool, &pool_before, q), "%s: fast decode wrote unused slot %lld", label, (long long)q);
            CHECK(slot_unchanged(&pool_ref, &pool_before, q), "%s: reference decode wrote unused slot %lld", label,
                  (long long)q);
        }
    }
    test_tensor *all[] = {&indices, &init, &pool_ref, &pool_before, &out_fast, &out_ref, &out_pf, &final_pf};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) test_tensor_free(all[i]);
    test_kda_inputs_free(&in);
}

/* Distinct random slots for the N sequences, `skipped` of them negative. */
static void random_slots(const setup *s, test_rng *r, int64_t *slot, int skipped)
{
    int64_t *perm = malloc((size_t)s->P * sizeof(int64_t));
    for (int64_t i = 0; i < s->P; i++) perm[i] = i;
    for (int64_t i = s->P - 1; i > 0; i--) {
        int64_t j = test_rng_int(r, 0, i), t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    for (int64_t n = 0; n < s->N; n++) slot[n] = perm[n];
    for (int k = 0; k < skipped; k++) slot[test_rng_int(r, 0, s->N - 1)] = -1 - test_rng_int(r, 0, 2);
    free(perm);
}

/* A slot no sequence uses. */
static int64_t unused_slot(const setup *s, const int64_t *slot)
{
    for (int64_t q = 0; q < s->P; q++) {
        int used = 0;
        for (int64_t n = 0; n < s->N; n++) used |= slot[n] == q;
        if (!used) return q;
    }
    return -1;
}

static void zero_slot(test_tensor *pool, int64_t slot)
{
    size_t per = pool->count / (size_t)pool->t.shape[0] * fkda_dtype_size(pool->t.dtype);
    memset((char *)pool->t.data + (size_t)slot * per, 0, per);
}

/* Varlen decode: one call, sequence n has lengths[n] tokens (one of them none). */
static void varlen_decode(const setup *s, test_rng *r, test_tensor *pool, const int64_t *slot, const int64_t *lengths)
{
    char label[400];
    describe(s, "varlen decode", label, sizeof label);
    test_kda_spec sp = token_spec(s, 1, 0, (int)s->N, lengths);
    test_kda_inputs in;
    test_kda_inputs_make(&sp, r, &in);
    const int64_t T = sp.T;
    test_tensor indices = test_tensor_alloc(s->index_dtype, 1, (const int64_t[]){s->N});
    for (int64_t n = 0; n < s->N; n++) test_tensor_set(&indices, (size_t)n, (double)slot[n]);
    test_tensor init = initial_from_pool(s, pool, slot);
    test_tensor pool_ref = copy_tensor(pool);
    test_tensor out_fast = test_tensor_alloc(s->io_dtype, 4, (const int64_t[]){1, T, s->HV, s->V});
    test_tensor out_ref = test_tensor_alloc(s->io_dtype, 4, (const int64_t[]){1, T, s->HV, s->V});
    decode_call(s, &in, 0, T, 1, pool, &indices, NULL, out_fast.t, 0, label);
    decode_call(s, &in, 0, T, 1, &pool_ref, &indices, NULL, out_ref.t, 1, label);
    test_tensor out_pf, final_pf;
    prefill_ref(s, &in, T, 1, &init, &out_pf, &final_pf);
    for (int64_t n = 0; n < s->N; n++) {
        int zero;
        if (slot[n] < 0) {
            rows_error(s, &out_fast, NULL, 0, in.start[n], in.length[n], T, 1, &zero);
            CHECK(zero, "%s: skipped sequence %lld: out rows not zero", label, (long long)n);
            continue;
        }
        double e1 = rows_error(s, &out_fast, &out_ref, 0, in.start[n], in.length[n], T, 0, &zero);
        double e2 = rows_error(s, &out_ref, &out_pf, 0, in.start[n], in.length[n], T, 0, &zero);
        const int64_t len = in.length[n];
        CHECK(e1 <= tol_fast_out(s, 1, len), "%s: seq %lld out fast vs ref %.3e", label, (long long)n, e1);
        CHECK(e2 <= tol_prefill_out(s, 1, len), "%s: seq %lld out decode vs prefill %.3e", label, (long long)n, e2);
        double f1 = slot_error(s, &pool_ref, slot[n], &final_pf, n), f2 = slot_error(s, pool, slot[n], &final_pf, n);
        CHECK(f1 <= tol_prefill_state(s, 1, len, 0) && f2 <= tol_prefill_state(s, 1, len, 1),
              "%s: seq %lld (length %lld) state vs prefill %.3e / %.3e", label, (long long)n, (long long)len, f1, f2);
    }
    test_tensor *all[] = {&indices, &init, &pool_ref, &out_fast, &out_ref, &out_pf, &final_pf};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) test_tensor_free(all[i]);
    test_kda_inputs_free(&in);
}

/* Speculative decoding: T_max draft tokens per sequence, 2-D indices idx[n, t] (the slot that
 * receives the state after draft token t; some negative), read slot idx[n, a_n - 1]. */
static void speculative(const setup *s, test_rng *r, test_tensor *pool, int64_t T_max, int with_accepted, int skip_one)
{
    char label[400];
    describe(s, with_accepted ? "speculative (accepted tokens)" : "speculative (2-D, no counts)", label, sizeof label);
    test_kda_spec sp = token_spec(s, s->N, T_max, 0, NULL);
    test_kda_inputs in;
    test_kda_inputs_make(&sp, r, &in);

    /* Slots: a permutation of the pool gives every (n, t) its own slot; needs P >= N * T_max. */
    int64_t *perm = malloc((size_t)s->P * sizeof(int64_t));
    for (int64_t i = 0; i < s->P; i++) perm[i] = i;
    for (int64_t i = s->P - 1; i > 0; i--) {
        int64_t j = test_rng_int(r, 0, i), t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    test_tensor idx = test_tensor_alloc(s->index_dtype, 2, (const int64_t[]){s->N, T_max});
    test_tensor acc = test_tensor_alloc(s->index_dtype, 1, (const int64_t[]){s->N});
    int64_t *read = malloc((size_t)s->N * sizeof(int64_t)), *a_n = malloc((size_t)s->N * sizeof(int64_t));
    for (int64_t n = 0; n < s->N; n++) {
        a_n[n] = with_accepted ? test_rng_int(r, 1, T_max) : 1;
        for (int64_t t = 0; t < T_max; t++) {
            int64_t v = perm[n * T_max + t];
            if (t != a_n[n] - 1 && test_rng_int(r, 0, 3) == 0) v = -1; /* state after t not kept */
            test_tensor_set(&idx, (size_t)(n * T_max + t), (double)v);
        }
        if (skip_one && n == s->N - 1) test_tensor_set(&idx, (size_t)(n * T_max + a_n[n] - 1), -1.0);
        test_tensor_set(&acc, (size_t)n, (double)a_n[n]);
        read[n] = (int64_t)test_tensor_get(&idx, (size_t)(n * T_max + a_n[n] - 1));
    }
    test_tensor init = initial_from_pool(s, pool, read);
    test_tensor pool_ref = copy_tensor(pool), pool_before = copy_tensor(pool);
    test_tensor out_fast = test_tensor_alloc(s->io_dtype, 4, (const int64_t[]){s->N, T_max, s->HV, s->V});
    test_tensor out_ref = test_tensor_alloc(s->io_dtype, 4, (const int64_t[]){s->N, T_max, s->HV, s->V});
    decode_call(s, &in, 0, T_max, 0, pool, &idx, with_accepted ? &acc : NULL, out_fast.t, 0, label);
    decode_call(s, &in, 0, T_max, 0, &pool_ref, &idx, with_accepted ? &acc : NULL, out_ref.t, 1, label);

    for (int64_t t = 0; t < T_max; t++) {
        test_tensor out_pf, final_pf;
        prefill_ref(s, &in, t + 1, 0, &init, &out_pf, &final_pf);
        for (int64_t n = 0; n < s->N; n++) {
            if (read[n] < 0) continue;
            int64_t w = (int64_t)test_tensor_get(&idx, (size_t)(n * T_max + t));
            if (w >= 0) {
                double f1 = slot_error(s, &pool_ref, w, &final_pf, n), f2 = slot_error(s, pool, w, &final_pf, n);
                CHECK(f1 <= tol_prefill_state(s, 1, t + 1, 0) && f2 <= tol_prefill_state(s, 1, t + 1, 1),
                      "%s: seq %lld state after draft token %lld (slot %lld) vs prefill %.3e / %.3e", label,
                      (long long)n, (long long)t, (long long)w, f1, f2);
            }
            if (t == T_max - 1) {
                int zero;
                double e1 = rows_error(s, &out_fast, &out_ref, n, 0, T_max, T_max, 0, &zero);
                double e2 = rows_error(s, &out_ref, &out_pf, n, 0, T_max, T_max, 0, &zero);
                CHECK(e1 <= tol_fast_out(s, 1, T_max), "%s: seq %lld out fast vs ref %.3e", label, (long long)n, e1);
                CHECK(e2 <= tol_prefill_out(s, 1, T_max), "%s: seq %lld out vs prefill %.3e", label, (long long)n, e2);
            }
        }
        test_tensor_free(&out_pf);
        test_tensor_free(&final_pf);
    }
    /* Slots nobody writes (not in a non-skipped row of idx) are unchanged; a skipped
     * sequence's out rows are zero. */
    for (int64_t q = 0; q < s->P; q++) {
        int written = 0;
        for (int64_t n = 0; n < s->N; n++)
            for (int64_t t = 0; t < T_max; t++)
                written |= read[n] >= 0 && (int64_t)test_tensor_get(&idx, (size_t)(n * T_max + t)) == q;
        if (!written)
            CHECK(slot_unchanged(pool, &pool_before, q) && slot_unchanged(&pool_ref, &pool_before, q),
                  "%s: slot %lld written though no kept draft token names it", label, (long long)q);
    }
    for (int64_t n = 0; n < s->N; n++) {
        if (read[n] >= 0) continue;
        int zero;
        rows_error(s, &out_fast, NULL, n, 0, T_max, T_max, 1, &zero);
        CHECK(zero, "%s: skipped sequence %lld: out rows not zero", label, (long long)n);
    }
    test_tensor *all[] = {&idx, &acc, &init, &pool_ref, &pool_before, &out_fast, &out_ref};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) test_tensor_free(all[i]);
    free(perm);
    free(read);
    free(a_n);
    test_kda_inputs_free(&in);
}

static setup base_setup(void)
{
    setup s;
    memset(&s, 0, sizeof s);
    s.N = 4;
    s.H = 2;
    s.HV = 4;
    s.K = 64;
    s.V = 48;
    s.P = 24;
    s.pool_dtype = FKDA_DTYPE_F32;
    s.io_dtype = FKDA_DTYPE_F32;
    s.index_dtype = FKDA_DTYPE_I64;
    s.options = fkda_default_options();
    s.options.gate = FKDA_GATE_LOWER_BOUND;
    s.options.lower_bound = -5.0;
    s.options.use_qk_l2norm = 1;
    s.options.use_beta_sigmoid = 1;
    s.threads = 3;
    return s;
}

int main(void)
{
    test_rng r;
    test_rng_seed(&r, test_seed_from_env());

    for (int variant = 0; variant < 8; variant++) {
        setup s = base_setup();
        s.pool_dtype = variant & 1 ? FKDA_DTYPE_BF16 : FKDA_DTYPE_F32;
        s.options.state_v_first = (variant >> 1) & 1;
        s.index_dtype = variant & 2 ? FKDA_DTYPE_I32 : FKDA_DTYPE_I64;
        if (variant >= 4) { /* other options and sizes */
            s.options.gate = variant == 4 ? FKDA_GATE_SOFTPLUS : variant == 5 ? FKDA_GATE_NONE : FKDA_GATE_LOWER_BOUND;
            s.options.use_qk_l2norm = variant != 5;
            s.options.use_beta_sigmoid = variant != 6;
            s.options.allow_neg_eigval = variant == 7;
            s.K = variant == 6 ? 128 : 32;
            s.V = variant == 7 ? 128 : 40;
            s.H = 1;
            s.HV = variant == 7 ? 1 : 2;
            s.io_dtype = variant == 6 ? FKDA_DTYPE_BF16 : variant == 7 ? FKDA_DTYPE_F16 : FKDA_DTYPE_F32;
            s.threads = variant - 4;
        }
        test_tensor pool = make_pool(&s, &r);

        /* Phase 1: a chain of 20 single-token calls, random slots, one sequence skipped. */
        int64_t slot[8];
        random_slots(&s, &r, slot, 1);
        chain(&s, &r, &pool, slot, 20, 1, "chain");
        /* Phase 2: sequence 0 finished; its slot is zeroed and taken by a new sequence (and the
         * skipped one comes back in a fresh slot); 12 more tokens. */
        for (int64_t n = 0; n < s.N; n++)
            if (slot[n] < 0) slot[n] = unused_slot(&s, slot);
        zero_slot(&pool, slot[0]);
        chain(&s, &r, &pool, slot, 12, 1, "chain (slot reused)");

        /* No indices: sequence n in slot n. */
        int64_t identity[8];
        for (int64_t n = 0; n < s.N; n++) identity[n] = n;
        chain(&s, &r, &pool, identity, 5, 0, "chain (no indices)");

        /* Varlen: several tokens per sequence in one call, one sequence empty, one skipped. */
        static const int64_t lengths[4] = {3, 0, 1, 5};
        random_slots(&s, &r, slot, 0);
        slot[2] = -1;
        varlen_decode(&s, &r, &pool, slot, lengths);

        /* Speculative decoding with 2-D indices. */
        speculative(&s, &r, &pool, 4, 1, 0);
        speculative(&s, &r, &pool, 3, 1, 1);
        speculative(&s, &r, &pool, 2, 0, 0);
        test_tensor_free(&pool);
    }
    return test_exit("test_cpu_decode");
}

/*
 * test_api_errors.c: every bad argument gets the right status, a message naming the argument,
 * and leaves every output untouched; the valid edge cases (T = 0, empty sequences) succeed.
 *
 * Each case starts from a valid problem, breaks one thing, and calls both the workspace query
 * and the run. Outputs are filled with a pattern first and compared byte for byte afterwards.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"

enum { B = 2, T = 5, H = 2, HV = 4, K = 8, V = 16 };

/* A valid prefill problem and the buffers behind it. */
typedef struct fixture {
    test_tensor q, k, v, g, beta, A_log, dt_bias, h0, ht, out, cu;
    fkda_prefill_args args;
} fixture;

static void fixture_init(fixture *f, test_rng *r)
{
    memset(f, 0, sizeof *f);
    f->q = test_tensor_alloc(FKDA_DTYPE_F32, 4, (int64_t[]){B, T, H, K});
    f->k = test_tensor_alloc(FKDA_DTYPE_F32, 4, (int64_t[]){B, T, H, K});
    f->v = test_tensor_alloc(FKDA_DTYPE_F32, 4, (int64_t[]){B, T, HV, V});
    f->g = test_tensor_alloc(FKDA_DTYPE_F32, 4, (int64_t[]){B, T, HV, K});
    f->beta = test_tensor_alloc(FKDA_DTYPE_F32, 3, (int64_t[]){B, T, HV});
    f->A_log = test_tensor_alloc(FKDA_DTYPE_F32, 1, (int64_t[]){HV});
    f->dt_bias = test_tensor_alloc(FKDA_DTYPE_F32, 2, (int64_t[]){HV, K});
    f->h0 = test_tensor_alloc(FKDA_DTYPE_F32, 4, (int64_t[]){B, HV, K, V});
    f->ht = test_tensor_alloc(FKDA_DTYPE_F32, 4, (int64_t[]){B, HV, K, V});
    f->out = test_tensor_alloc(FKDA_DTYPE_F32, 4, (int64_t[]){B, T, HV, V});
    f->cu = test_tensor_alloc(FKDA_DTYPE_I64, 1, (int64_t[]){3});
    test_tensor *inputs[] = {&f->q, &f->k, &f->v, &f->g, &f->beta, &f->A_log, &f->dt_bias, &f->h0};
    for (size_t i = 0; i < sizeof inputs / sizeof inputs[0]; i++) test_tensor_fill_normal(inputs[i], r, 0, 1);
    f->args.q = f->q.t;
    f->args.k = f->k.t;
    f->args.v = f->v.t;
    f->args.g = f->g.t;
    f->args.beta = f->beta.t;
    f->args.A_log = f->A_log.t;
    f->args.dt_bias = f->dt_bias.t;
    f->args.initial_state = f->h0.t;
    f->args.final_state = f->ht.t;
    f->args.out = f->out.t;
    f->args.options = fkda_default_options();
    f->args.options.gate = FKDA_GATE_LOWER_BOUND;
    f->args.options.lower_bound = -5.0;
    f->args.options.use_qk_l2norm = 1;
    f->args.options.use_beta_sigmoid = 1;
}

static void fixture_free(fixture *f)
{
    test_tensor *all[] = {&f->q,       &f->k,  &f->v,  &f->g,   &f->beta, &f->A_log,
                          &f->dt_bias, &f->h0, &f->ht, &f->out, &f->cu};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) test_tensor_free(all[i]);
}

static const fkda_device cpu = {FKDA_DEVICE_CPU, 0, NULL, 2, 0};

/* aligned_alloc needs a size that is a multiple of the alignment. */
static void *workspace_alloc(size_t bytes) { return aligned_alloc(256, (bytes + 256) / 256 * 256); }

/* Runs the (broken) prefill and checks status, message and untouched outputs. */
static void expect_prefill_error(const char *what, fixture *f, const fkda_prefill_args *args, fkda_status want,
                                 const char *name_in_message)
{
    test_tensor_fill_value(&f->out, 12345.0);
    test_tensor_fill_value(&f->ht, -777.0);
    void *out0 = test_tensor_snapshot(&f->out), *ht0 = test_tensor_snapshot(&f->ht);
    size_t bytes = 0;
    fkda_status s1 = fkda_prefill_workspace_size(args, &cpu, &bytes);
    const char *m1 = fkda_last_error();
    CHECK(s1 == want, "%s: workspace query returned %s, expected %s (%s)", what, fkda_status_name(s1),
          fkda_status_name(want), m1);
    /* The run gets a generous workspace, so the failure can only come from the broken argument. */
    void *ws = workspace_alloc(1 << 20);
    fkda_status s2 = fkda_prefill(args, &cpu, ws, 1 << 20);
    const char *m2 = fkda_last_error();
    CHECK(s2 == want, "%s: prefill returned %s, expected %s (%s)", what, fkda_status_name(s2), fkda_status_name(want),
          m2);
    CHECK(strstr(m2, name_in_message) != NULL, "%s: message \"%s\" does not name \"%s\"", what, m2, name_in_message);
    CHECK(test_tensor_unchanged(&f->out, out0), "%s: out was written on error", what);
    CHECK(test_tensor_unchanged(&f->ht, ht0), "%s: final_state was written on error", what);
    free(ws);
    free(out0);
    free(ht0);
}

static void prefill_error_cases(test_rng *r)
{
    fixture f;
    fixture_init(&f, r);
    fkda_prefill_args a;

    /* The baseline is valid. */
    size_t bytes = 0;
    CHECK(fkda_prefill_workspace_size(&f.args, &cpu, &bytes) == FKDA_OK, "baseline query: %s", fkda_last_error());
    void *ws = workspace_alloc(bytes + 256);
    CHECK(fkda_prefill(&f.args, &cpu, ws, bytes) == FKDA_OK, "baseline run: %s", fkda_last_error());
    free(ws);

#define CASE(what, want, name, ...)                     \
    do {                                                \
        a = f.args;                                     \
        __VA_ARGS__;                                    \
        expect_prefill_error(what, &f, &a, want, name); \
    } while (0)
#define BAD FKDA_ERROR_INVALID_ARGUMENT

    CASE("q with 3 dims", BAD, "q", a.q.ndim = 3);
    CASE("q with 0 heads", BAD, "q", a.q.shape[2] = 0);
    CASE("K = 300", BAD, "q", a.q.shape[3] = 300; a.k.shape[3] = 300);
    CASE("q integer dtype", BAD, "q", a.q.dtype = FKDA_DTYPE_I32);
    CASE("unknown dtype value", BAD, "q", a.q.dtype = (fkda_dtype)42);
    CASE("q data NULL", BAD, "q", a.q.data = NULL);
    CASE("q misaligned", BAD, "q", a.q.data = (char *)a.q.data + 1);
    CASE("k shape differs from q", BAD, "k", a.k.shape[1] = T - 1);
    CASE("k dtype differs from q", BAD, "k", a.k.dtype = FKDA_DTYPE_BF16);
    CASE("v dtype differs from q", BAD, "v", a.v.dtype = FKDA_DTYPE_F16);
    CASE("HV not a multiple of H", BAD, "v", a.v.shape[2] = 3);
    CASE("V = 0", BAD, "v", a.v.shape[3] = 0);
    CASE("g shape", BAD, "g", a.g.shape[3] = K + 1);
    CASE("beta with 4 dims", BAD, "beta", a.beta.ndim = 4; a.beta.shape[3] = 1);
    CASE("beta shape", BAD, "beta", a.beta.shape[2] = HV - 1);
    CASE("q last dim not contiguous", BAD, "q", a.q.stride[3] = 2);
    CASE("negative stride", BAD, "v", a.v.stride[1] = -1);
    CASE("out read-only", BAD, "out", a.out.flags = FKDA_TENSOR_READ_ONLY);
    CASE("out wrongly shaped", BAD, "out", a.out.shape[2] = HV / 2);
    CASE("out dtype differs from v", BAD, "out", a.out.dtype = FKDA_DTYPE_BF16);
    CASE("out overlapping itself (stride 0)", BAD, "out", a.out.stride[1] = 0);
    CASE("out aliasing v", BAD, "out", a.out = a.v);
    CASE("initial_state wrong heads", BAD, "initial_state", a.initial_state.shape[1] = HV + 1);
    CASE("initial_state int dtype", BAD, "initial_state", a.initial_state.dtype = FKDA_DTYPE_I32);
    CASE("initial_state f16 dtype", BAD, "initial_state", a.initial_state.dtype = FKDA_DTYPE_F16);
    CASE("final_state wrong N", BAD, "final_state", a.final_state.shape[0] = B + 1);
    CASE("final_state read-only", BAD, "final_state", a.final_state.flags = FKDA_TENSOR_READ_ONLY);
    CASE("final_state aliasing q", BAD, "final_state", a.final_state.data = a.q.data);
    CASE("state layout mismatch", BAD, "initial_state", a.options.state_v_first = 1; a.initial_state.shape[2] = K;
         a.initial_state.shape[3] = V);
    CASE("lower_bound = 0", BAD, "lower_bound", a.options.lower_bound = 0.0);
    CASE("lower_bound = +1", BAD, "lower_bound", a.options.lower_bound = 1.0);
    CASE("lower_bound NaN", BAD, "lower_bound", a.options.lower_bound = NAN);
    CASE("softplus gate without A_log", BAD, "A_log", a.options.gate = FKDA_GATE_SOFTPLUS;
         memset(&a.A_log, 0, sizeof a.A_log));
    CASE("A_log wrong size", BAD, "A_log", a.A_log.shape[0] = HV + 2);
    CASE("dt_bias wrong size", BAD, "dt_bias", a.dt_bias.shape[1] = K - 1);
    CASE("dt_bias flat wrong size", BAD, "dt_bias", a.dt_bias.ndim = 1; a.dt_bias.shape[0] = HV * K - 1);
    CASE("unknown gate", BAD, "gate", a.options.gate = (fkda_gate)9);
    CASE("scale infinite", BAD, "scale", a.options.scale = INFINITY);
    CASE("scale beyond float range", BAD, "scale", a.options.scale = 1e39);
    CASE("lower_bound beyond float range", BAD, "lower_bound", a.options.lower_bound = -1e39);
    CASE("element count overflowing int64", BAD, "q", a.q.shape[0] = (int64_t)1 << 32; a.q.shape[1] = (int64_t)1 << 32;
         a.q.data = NULL);
    CASE("strides reaching beyond 2^48", BAD, "v", a.v.stride[0] = (int64_t)1 << 48);
    CASE("huge stride", BAD, "g", a.g.stride[1] = (int64_t)1 << 50);
    CASE("allow_neg_eigval without sigmoid", BAD, "allow_neg_eigval", a.options.use_beta_sigmoid = 0;
         a.options.allow_neg_eigval = 1);

    /* Without a gate in the kernel, A_log and dt_bias are not read: garbage there is ignored. */
    a = f.args;
    a.options.gate = FKDA_GATE_NONE;
    a.A_log.ndim = 1000;
    a.dt_bias.shape[0] = -5;
    {
        void *ws2 = workspace_alloc(1 << 20);
        fkda_status s = fkda_prefill(&a, &cpu, ws2, 1 << 20);
        CHECK(s == FKDA_OK, "gate off with garbage A_log/dt_bias: %s (%s)", fkda_status_name(s), fkda_last_error());
        free(ws2);
    }

    /* cu_seqlens: needs B = 1; the fixture's rows are packed into one for these cases. */
    int64_t *cu = (int64_t *)f.cu.t.data;
    fkda_tensor packed_q = f.q.t, packed_k = f.k.t, packed_v = f.v.t, packed_g = f.g.t, packed_b = f.beta.t,
                packed_o = f.out.t;
    fkda_tensor *packed[] = {&packed_q, &packed_k, &packed_v, &packed_g, &packed_b, &packed_o};
    for (int i = 0; i < 6; i++) {
        packed[i]->shape[0] = 1;
        packed[i]->shape[1] = B * T;
    }
#define PACKED         \
    a.q = packed_q;    \
    a.k = packed_k;    \
    a.v = packed_v;    \
    a.g = packed_g;    \
    a.beta = packed_b; \
    a.out = packed_o;  \
    a.cu_seqlens = f.cu.t
    cu[0] = 0;
    cu[1] = 3;
    cu[2] = B * T;
    CASE("cu_seqlens with B = 2", BAD, "cu_seqlens", a.cu_seqlens = f.cu.t);
    CASE("cu_seqlens float dtype", BAD, "cu_seqlens", PACKED; a.cu_seqlens.dtype = FKDA_DTYPE_F32);
    CASE("cu_seqlens 2-D", BAD, "cu_seqlens", PACKED; a.cu_seqlens.ndim = 2; a.cu_seqlens.shape[1] = 1);
    cu[0] = 1;
    CASE("cu_seqlens not starting at 0", BAD, "cu_seqlens", PACKED);
    cu[0] = 0;
    cu[1] = B * T;
    cu[2] = 4;
    CASE("cu_seqlens decreasing", BAD, "cu_seqlens", PACKED);
    cu[1] = 3;
    cu[2] = B * T - 1;
    CASE("cu_seqlens not ending at T", BAD, "cu_seqlens", PACKED);
    cu[2] = B * T;
    CASE("initial_state N differs from cu_seqlens", BAD, "initial_state", PACKED; a.initial_state.shape[0] = 3);

    /* Device and workspace. */
    fkda_device bad = cpu;
    bad.type = (fkda_device_type)7;
    a = f.args;
    CHECK(fkda_prefill(&a, &bad, NULL, 0) == BAD && strstr(fkda_last_error(), "device"), "bad device type: %s",
          fkda_last_error());
    bad = cpu;
    bad.reference = 1;
    bad.type = FKDA_DEVICE_CUDA;
    CHECK(fkda_prefill(&a, &bad, NULL, 0) == BAD && strstr(fkda_last_error(), "reference"), "reference on CUDA: %s",
          fkda_last_error());
    CHECK(fkda_prefill(&a, NULL, NULL, 0) == BAD, "NULL device");
    CHECK(fkda_prefill(NULL, &cpu, NULL, 0) == BAD && strstr(fkda_last_error(), "args"), "NULL args");
    CHECK(fkda_prefill_workspace_size(&a, &cpu, NULL) == BAD, "NULL bytes");
    fkda_prefill_workspace_size(&a, &cpu, &bytes);
    if (bytes > 0) {
        test_tensor_fill_value(&f.out, 5.0);
        void *out0 = test_tensor_snapshot(&f.out);
        CHECK(fkda_prefill(&a, &cpu, NULL, 0) == FKDA_ERROR_WORKSPACE && strstr(fkda_last_error(), "workspace"),
              "missing workspace: %s", fkda_last_error());
        void *small = workspace_alloc(bytes);
        CHECK(fkda_prefill(&a, &cpu, small, bytes - 1) == FKDA_ERROR_WORKSPACE, "small workspace: %s",
              fkda_last_error());
        CHECK(fkda_prefill(&a, &cpu, (char *)small + 8, bytes - 8) == FKDA_ERROR_WORKSPACE, "misaligned workspace: %s",
              fkda_last_error());
        CHECK(test_tensor_unchanged(&f.out, out0), "out written on workspace error");
        free(small);
        free(out0);
    }
    /* A successful workspace query on the CUDA device leaves no message either, also where no GPU
     * answers (it then sizes for a default SM count). */
    if (fkda_has_cuda()) {
        const fkda_device cuda = {FKDA_DEVICE_CUDA, 0, NULL, 0, 0};
        size_t cuda_bytes = 0;
        CHECK(fkda_prefill_workspace_size(&f.args, &cuda, &cuda_bytes) == FKDA_OK && fkda_last_error()[0] == '\0',
              "CUDA workspace query: a message left after success: %s", fkda_last_error());
    }
    /* A successful call clears the message. */
    ws = workspace_alloc(bytes + 256);
    CHECK(fkda_prefill(&f.args, &cpu, ws, bytes) == FKDA_OK && fkda_last_error()[0] == '\0',
          "message not cleared after success: %s", fkda_last_error());
    free(ws);
    fixture_free(&f);
}

/* Decode-specific arguments: pool, indices, accepted counts. */
static void decode_error_cases(test_rng *r)
{
    enum { N = 3, P = 6, TD = 2 };
    test_tensor q = test_tensor_alloc(FKDA_DTYPE_F32, 4, (int64_t[]){N, TD, H, K});
    test_tensor k = test_tensor_alloc(FKDA_DTYPE_F32, 4, (int64_t[]){N, TD, H, K});
    test_tensor v = test_tensor_alloc(FKDA_DTYPE_F32, 4, (int64_t[]){N, TD, HV, V});
    test_tensor g = test_tensor_alloc(FKDA_DTYPE_F32, 4, (int64_t[]){N, TD, HV, K});
    test_tensor beta = test_tensor_alloc(FKDA_DTYPE_F32, 3, (int64_t[]){N, TD, HV});
    test_tensor out = test_tensor_alloc(FKDA_DTYPE_F32, 4, (int64_t[]){N, TD, HV, V});
    test_tensor pool = test_tensor_alloc(FKDA_DTYPE_F32, 4, (int64_t[]){P, HV, K, V});
    test_tensor idx = test_tensor_alloc(FKDA_DTYPE_I32, 2, (int64_t[]){N, TD});
    test_tensor acc = test_tensor_alloc(FKDA_DTYPE_I64, 1, (int64_t[]){N});
    test_tensor_fill_normal(&q, r, 0, 1);
    test_tensor_fill_normal(&k, r, 0, 1);
    test_tensor_fill_normal(&v, r, 0, 1);
    test_tensor_fill_uniform(&g, r, -0.5, 0.0);
    test_tensor_fill_uniform(&beta, r, 0, 1);
    int32_t *ix = (int32_t *)idx.t.data;
    int64_t *ac = (int64_t *)acc.t.data;
    for (int i = 0; i < N * TD; i++) ix[i] = i; /* one slot per token, none shared */
    for (int i = 0; i < N; i++) ac[i] = 1 + i % TD;

    fkda_decode_args base;
    memset(&base, 0, sizeof base);
    base.q = q.t;
    base.k = k.t;
    base.v = v.t;
    base.g = g.t;
    base.beta = beta.t;
    base.out = out.t;
    base.state_pool = pool.t;
    base.state_indices = idx.t;
    base.num_accepted_tokens = acc.t;
    base.options = fkda_default_options();

    void *ws = workspace_alloc(1 << 20);
    test_tensor_fill_normal(&pool, r, 0, 1);
    CHECK(fkda_decode(&base, &cpu, ws, 1 << 20) == FKDA_OK, "decode baseline: %s", fkda_last_error());

    struct {
        const char *what;
        const char *name;
        fkda_decode_args a;
    } cases[16];
    int n = 0;
#define DCASE(w, nm, ...)                                                                \
    do {                                                                                 \
        if (n >= (int)(sizeof cases / sizeof cases[0])) { /* enlarge cases */            \
            fprintf(stderr, "test_api_errors: more decode cases than the list holds\n"); \
            exit(2);                                                                     \
        }                                                                                \
        cases[n].what = w;                                                               \
        cases[n].name = nm;                                                              \
        cases[n].a = base;                                                               \
        {                                                                                \
            fkda_decode_args *a = &cases[n].a;                                           \
            __VA_ARGS__;                                                                 \
        }                                                                                \
        n++;                                                                             \
    } while (0)
    DCASE("pool missing", "state_pool", memset(&a->state_pool, 0, sizeof a->state_pool));
    DCASE("pool f16", "state_pool", a->state_pool.dtype = FKDA_DTYPE_F16);
    DCASE("pool read-only", "state_pool", a->state_pool.flags = FKDA_TENSOR_READ_ONLY);
    DCASE("pool wrong K", "state_pool", a->state_pool.shape[2] = K + 1);
    DCASE("indices float", "state_indices", a->state_indices.dtype = FKDA_DTYPE_F32);
    DCASE("indices wrong N", "state_indices", a->state_indices.shape[0] = N + 1);
    DCASE("indices too few columns", "state_indices", a->state_indices.shape[1] = 1; a->state_indices.stride[0] = 1;
          memset(&a->num_accepted_tokens, 0, sizeof a->num_accepted_tokens));
    DCASE("accepted without 2-D indices", "num_accepted_tokens", a->state_indices.ndim = 1;
          a->state_indices.shape[0] = N; a->state_indices.stride[0] = 1);
    DCASE("accepted wrong size", "num_accepted_tokens", a->num_accepted_tokens.shape[0] = N - 1);
    DCASE("pool too small without indices", "state_pool", memset(&a->state_indices, 0, sizeof a->state_indices);
          memset(&a->num_accepted_tokens, 0, sizeof a->num_accepted_tokens); a->state_pool.shape[0] = N - 1);
    DCASE("pool aliasing out", "state_pool", a->state_pool.data = a->out.data);
    DCASE("out aliasing state_indices", "out", a->out.data = a->state_indices.data);
    DCASE("out aliasing num_accepted_tokens", "out", a->out.data = a->num_accepted_tokens.data);
    for (int i = 0; i < n; i++) {
        test_tensor_fill_value(&out, 99.0);
        void *out0 = test_tensor_snapshot(&out), *pool0 = test_tensor_snapshot(&pool);
        fkda_status s = fkda_decode(&cases[i].a, &cpu, ws, 1 << 20);
        CHECK(s == FKDA_ERROR_INVALID_ARGUMENT, "%s: got %s (%s)", cases[i].what, fkda_status_name(s),
              fkda_last_error());
        CHECK(strstr(fkda_last_error(), cases[i].name) != NULL, "%s: message \"%s\" does not name %s", cases[i].what,
              fkda_last_error(), cases[i].name);
        CHECK(test_tensor_unchanged(&out, out0), "%s: out written on error", cases[i].what);
        CHECK(test_tensor_unchanged(&pool, pool0), "%s: pool written on error", cases[i].what);
        free(out0);
        free(pool0);
    }
    /* Contents checked on the CPU: a slot outside the pool, an accepted count out of range. */
    void *pool0 = test_tensor_snapshot(&pool);
    ix[1] = P;
    CHECK(fkda_decode(&base, &cpu, ws, 1 << 20) == FKDA_ERROR_INVALID_ARGUMENT &&
              strstr(fkda_last_error(), "state_indices"),
          "index outside pool: %s", fkda_last_error());
    ix[1] = 1;
    ac[2] = TD + 1;
    CHECK(fkda_decode(&base, &cpu, ws, 1 << 20) == FKDA_ERROR_INVALID_ARGUMENT &&
              strstr(fkda_last_error(), "num_accepted_tokens"),
          "accepted count too large: %s", fkda_last_error());
    ac[2] = 0;
    CHECK(fkda_decode(&base, &cpu, ws, 1 << 20) == FKDA_ERROR_INVALID_ARGUMENT, "accepted count 0: %s",
          fkda_last_error());
    CHECK(test_tensor_unchanged(&pool, pool0), "pool written on a contents error");
    free(pool0);
    free(ws);
    test_tensor *all[] = {&q, &k, &v, &g, &beta, &out, &pool, &idx, &acc};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) test_tensor_free(all[i]);
}

/* T = 0 succeeds on both CPU paths: the final state is the initial state, or zero without one.
 * (Varlen batches with empty sequences are checked against the reference in test_cpu_prefill.c.) */
static void empty_cases(test_rng *r)
{
    for (int reference = 0; reference < 2; reference++) {
        fkda_device dev = cpu;
        dev.reference = reference;
        /* T = 0 with equal lengths: the final state equals the initial state. */
        test_tensor q = test_tensor_alloc(FKDA_DTYPE_F32, 4, (int64_t[]){2, 0, H, K});
        test_tensor v = test_tensor_alloc(FKDA_DTYPE_F32, 4, (int64_t[]){2, 0, HV, V});
        test_tensor g = test_tensor_alloc(FKDA_DTYPE_F32, 4, (int64_t[]){2, 0, HV, K});
        test_tensor beta = test_tensor_alloc(FKDA_DTYPE_F32, 3, (int64_t[]){2, 0, HV});
        test_tensor out = test_tensor_alloc(FKDA_DTYPE_F32, 4, (int64_t[]){2, 0, HV, V});
        test_tensor h0 = test_tensor_alloc(FKDA_DTYPE_F32, 4, (int64_t[]){2, HV, K, V});
        test_tensor ht = test_tensor_alloc(FKDA_DTYPE_F32, 4, (int64_t[]){2, HV, K, V});
        test_tensor_fill_normal(&h0, r, 0, 1);
        test_tensor_fill_value(&ht, NAN);
        fkda_prefill_args a;
        memset(&a, 0, sizeof a);
        a.q = q.t;
        a.k = q.t;
        a.v = v.t;
        a.g = g.t;
        a.beta = beta.t;
        a.out = out.t;
        a.initial_state = h0.t;
        a.final_state = ht.t;
        a.options = fkda_default_options();
        size_t bytes = 0;
        fkda_status s = fkda_prefill_workspace_size(&a, &dev, &bytes);
        void *ws = workspace_alloc(bytes + 256);
        if (s == FKDA_OK) s = fkda_prefill(&a, &dev, ws, bytes);
        CHECK(s == FKDA_OK, "T = 0 (reference %d): %s", reference, fkda_last_error());
        CHECK(test_rel_error(&ht, &h0) == 0.0, "T = 0: final state differs from initial state");
        /* Without an initial state the final state is zero. */
        memset(&a.initial_state, 0, sizeof a.initial_state);
        test_tensor_fill_value(&ht, NAN);
        s = fkda_prefill(&a, &dev, ws, bytes);
        double norm = 0;
        for (size_t i = 0; i < ht.count; i++) norm += fabs(test_tensor_get(&ht, i));
        CHECK(s == FKDA_OK && norm == 0.0, "T = 0 without h0: final state not zero (%s)", fkda_last_error());
        free(ws);
        test_tensor *all[] = {&q, &v, &g, &beta, &out, &h0, &ht};
        for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) test_tensor_free(all[i]);

        /* No sequence at all (B = 0): the empty initial_state and has_initial_state are given
         * with data NULL, as every empty torch tensor has (the header allows it for a tensor
         * without elements); the initial state is present all the same. */
        const int64_t no_tokens[4] = {0, 3, H, K}, no_values[4] = {0, 3, HV, V}, no_beta[3] = {0, 3, HV};
        const int64_t no_states[4] = {0, HV, K, V}, no_flags[1] = {0};
        memset(&a, 0, sizeof a);
        a.q = a.k = a.g = fkda_make_tensor(NULL, FKDA_DTYPE_F32, 4, no_tokens);
        a.g.shape[2] = HV;
        a.v = a.out = fkda_make_tensor(NULL, FKDA_DTYPE_F32, 4, no_values);
        a.out.data = NULL;
        a.beta = fkda_make_tensor(NULL, FKDA_DTYPE_F32, 3, no_beta);
        a.initial_state = fkda_make_tensor(NULL, FKDA_DTYPE_F32, 4, no_states);
        a.has_initial_state = fkda_make_tensor(NULL, FKDA_DTYPE_BOOL, 1, no_flags);
        a.options = fkda_default_options();
        s = fkda_prefill_workspace_size(&a, &dev, &bytes);
        ws = workspace_alloc(bytes + 256);
        if (s == FKDA_OK) s = fkda_prefill(&a, &dev, ws, bytes);
        CHECK(s == FKDA_OK, "B = 0, empty initial_state and has_initial_state (reference %d): %s", reference,
              fkda_last_error());
        free(ws);
    }
}

int main(void)
{
    test_rng r;
    test_rng_seed(&r, test_seed_from_env());
    prefill_error_cases(&r);
    decode_error_cases(&r);
    empty_cases(&r);
    return test_exit("test_api_errors");
}

/*
 * test_api_overlap.c: an output that shares even one element with an input is refused, and one
 * that merely touches it (the next address after the input's last element) is accepted.
 *
 * The overlap check compares byte ranges [first byte, one past the last byte] of the tensors;
 * these cases sit exactly on the ends of those ranges, where an off-by-one would let an output
 * that overwrites an input's first or last element through (or refuse adjacent tensors that
 * share no byte). Out and v live in one buffer at chosen offsets; every case calls the prefill
 * on the CPU and checks the status, the message, and that a refused call wrote nothing.
 *
 * Then every output of the prefill (out, final_state and the serving-engine states) is placed on
 * the first element of every token input it must not overwrite (q, k, v, g, beta, A_log,
 * dt_bias, cu_seqlens): each pair is refused, naming both, with the input unchanged.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"

enum { B = 1, T = 3, H = 1, K = 4, V = 8 };
#define NV ((int64_t)B * T * H * V) /* elements of v, and of out */

static const fkda_device cpu = {FKDA_DEVICE_CPU, 0, NULL, 1, 0};

/* A contiguous [B, T, H, V] float tensor over `data`. */
static fkda_tensor token_view(float *data)
{
    fkda_tensor t;
    memset(&t, 0, sizeof t);
    t.data = data;
    t.dtype = FKDA_DTYPE_F32;
    t.ndim = 4;
    const int64_t shape[4] = {B, T, H, V};
    int64_t stride = 1;
    for (int i = 3; i >= 0; i--) {
        t.shape[i] = shape[i];
        t.stride[i] = stride;
        stride *= shape[i];
    }
    return t;
}

/* Prefill with v at element v_at and out at element out_at of one buffer (the other inputs in
 * buffers of their own); expects `want`, and on error the message naming out and v, and the
 * buffer unchanged. */
static void check_case(const char *what, int64_t v_at, int64_t out_at, fkda_status want, test_rng *r)
{
    const int64_t span = (v_at > out_at ? v_at : out_at) + NV;
    test_tensor buf = test_tensor_alloc(FKDA_DTYPE_F32, 1, (int64_t[]){span});
    test_tensor q = test_tensor_alloc(FKDA_DTYPE_F32, 4, (int64_t[]){B, T, H, K});
    test_tensor k = test_tensor_alloc(FKDA_DTYPE_F32, 4, (int64_t[]){B, T, H, K});
    test_tensor g = test_tensor_alloc(FKDA_DTYPE_F32, 4, (int64_t[]){B, T, H, K});
    test_tensor beta = test_tensor_alloc(FKDA_DTYPE_F32, 3, (int64_t[]){B, T, H});
    test_tensor_fill_normal(&buf, r, 0, 1);
    test_tensor_fill_normal(&q, r, 0, 1);
    test_tensor_fill_normal(&k, r, 0, 1);
    test_tensor_fill_normal(&g, r, 0, 1);
    test_tensor_fill_normal(&beta, r, 0, 1);
    void *before = test_tensor_snapshot(&buf);

    fkda_prefill_args a;
    memset(&a, 0, sizeof a);
    a.q = q.t;
    a.k = k.t;
    a.g = g.t;
    a.beta = beta.t;
    a.v = token_view((float *)buf.t.data + v_at);
    a.out = token_view((float *)buf.t.data + out_at);
    a.options = fkda_default_options();
    a.options.gate = FKDA_GATE_LOWER_BOUND;
    a.options.lower_bound = -5.0;
    a.options.use_qk_l2norm = 1;
    a.options.use_beta_sigmoid = 1;

    size_t bytes = 0;
    fkda_status s = fkda_prefill_workspace_size(&a, &cpu, &bytes);
    CHECK(s == want, "%s: workspace query returned %s, expected %s (%s)", what, fkda_status_name(s),
          fkda_status_name(want), fkda_last_error());
    void *ws = aligned_alloc(256, (bytes + 256) / 256 * 256);
    s = fkda_prefill(&a, &cpu, ws, bytes);
    CHECK(s == want, "%s: prefill returned %s, expected %s (%s)", what, fkda_status_name(s), fkda_status_name(want),
          fkda_last_error());
    if (want != FKDA_OK) {
        const char *m = fkda_last_error();
        CHECK(strstr(m, "out: shares memory with v") != NULL, "%s: message \"%s\" does not name out and v", what, m);
        CHECK(test_tensor_unchanged(&buf, before), "%s: a refused call wrote into the buffer", what);
    }
    free(ws);
    free(before);
    test_tensor *all[] = {&buf, &q, &k, &g, &beta};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) test_tensor_free(all[i]);
}

/* A contiguous tensor over `data`. */
static fkda_tensor view(void *data, fkda_dtype dtype, int32_t ndim, const int64_t *shape)
{
    return fkda_make_tensor(data, dtype, ndim, shape);
}

enum { BIG = 1 << 16 }; /* floats per buffer: room for any output placed at an input's start */

static void check_alias(const char *input, const char *output, test_rng *r)
{
    static const char *const input_names[] = {"q", "k", "v", "g", "beta", "A_log", "dt_bias", "cu_seqlens"};
    enum { NIN = 8 };
    float *bufs[NIN];
    for (int i = 0; i < NIN; i++) {
        bufs[i] = malloc(sizeof(float) * BIG);
        for (int e = 0; e < BIG; e++) bufs[i][e] = (float)test_rng_normal(r);
    }
    int64_t *cu = (int64_t *)bufs[7];
    cu[0] = 0;
    cu[1] = T;
    float *out = calloc(BIG, sizeof(float)), *fin = calloc(BIG, sizeof(float)), *st = calloc(BIG, sizeof(float));
    int64_t offsets[1] = {1};

    fkda_prefill_args a;
    memset(&a, 0, sizeof a);
    a.q = view(bufs[0], FKDA_DTYPE_F32, 4, (int64_t[]){B, T, H, K});
    a.k = view(bufs[1], FKDA_DTYPE_F32, 4, (int64_t[]){B, T, H, K});
    a.v = view(bufs[2], FKDA_DTYPE_F32, 4, (int64_t[]){B, T, H, V});
    a.g = view(bufs[3], FKDA_DTYPE_F32, 4, (int64_t[]){B, T, H, K});
    a.beta = view(bufs[4], FKDA_DTYPE_F32, 3, (int64_t[]){B, T, H});
    a.A_log = view(bufs[5], FKDA_DTYPE_F32, 1, (int64_t[]){H});
    a.dt_bias = view(bufs[6], FKDA_DTYPE_F32, 2, (int64_t[]){H, K});
    a.cu_seqlens = view(cu, FKDA_DTYPE_I64, 1, (int64_t[]){2});
    a.out = view(out, FKDA_DTYPE_F32, 4, (int64_t[]){B, T, H, V});
    a.options = fkda_default_options();
    a.options.gate = FKDA_GATE_LOWER_BOUND; /* so that A_log and dt_bias are read */
    a.options.lower_bound = -5.0;
    const int64_t state_shape[4] = {1, H, K, V};
    fkda_tensor *target = &a.out;
    if (strcmp(output, "state_pool") == 0) {
        a.state_pool = view(st, FKDA_DTYPE_F32, 4, state_shape);
        target = &a.state_pool;
    } else {
        a.final_state = view(fin, FKDA_DTYPE_F32, 4, state_shape);
        if (strcmp(output, "final_state") == 0) target = &a.final_state;
        if (strcmp(output, "checkpoint_states") == 0) {
            a.checkpoint_offsets = view(offsets, FKDA_DTYPE_I64, 2, (int64_t[]){1, 1});
            a.checkpoint_states = view(st, FKDA_DTYPE_F32, 4, state_shape);
            target = &a.checkpoint_states;
        }
        if (strcmp(output, "intermediate_states") == 0) {
            a.intermediate_states = view(st, FKDA_DTYPE_F32, 4, state_shape); /* T < 64: one chunk */
            target = &a.intermediate_states;
        }
    }
    int which = 0;
    while (strcmp(input_names[which], input) != 0) which++;
    target->data = bufs[which];
    float *before = malloc(sizeof(float) * BIG);
    memcpy(before, bufs[which], sizeof(float) * BIG);

    size_t bytes = 0;
    fkda_status s = fkda_prefill_workspace_size(&a, &cpu, &bytes);
    char want[96];
    snprintf(want, sizeof want, "%s: shares memory with %s", output, input);
    CHECK(s == FKDA_ERROR_INVALID_ARGUMENT && strstr(fkda_last_error(), want) != NULL,
          "%s on %s: workspace query returned %s (\"%s\"), expected a refusal naming both", output, input,
          fkda_status_name(s), fkda_last_error());
    s = fkda_prefill(&a, &cpu, NULL, 0);
    CHECK(s == FKDA_ERROR_INVALID_ARGUMENT && strstr(fkda_last_error(), want) != NULL,
          "%s on %s: prefill returned %s (\"%s\"), expected a refusal naming both", output, input, fkda_status_name(s),
          fkda_last_error());
    CHECK(memcmp(before, bufs[which], sizeof(float) * BIG) == 0, "%s on %s: a refused call wrote into %s", output,
          input, input);
    free(before);
    free(out);
    free(fin);
    free(st);
    for (int i = 0; i < NIN; i++) free(bufs[i]);
}

int main(void)
{
    test_rng r;
    test_rng_seed(&r, test_seed_from_env());
    /* out's first element is v's last, and v's first element is out's last */
    check_case("out starts on v's last element", 0, NV - 1, FKDA_ERROR_INVALID_ARGUMENT, &r);
    check_case("out ends on v's first element", NV - 1, 0, FKDA_ERROR_INVALID_ARGUMENT, &r);
    /* adjacent, no shared element: valid */
    check_case("out right after v", 0, NV, FKDA_OK, &r);
    check_case("out right before v", NV, 0, FKDA_OK, &r);
    static const char *const inputs[] = {"q", "k", "v", "g", "beta", "A_log", "dt_bias", "cu_seqlens"};
    static const char *const outputs[] = {"out", "final_state", "state_pool", "checkpoint_states",
                                          "intermediate_states"};
    for (size_t o = 0; o < sizeof outputs / sizeof outputs[0]; o++)
        for (size_t i = 0; i < sizeof inputs / sizeof inputs[0]; i++) check_alias(inputs[i], outputs[o], &r);
    return test_exit("test_api_overlap");
}

/*
 * test_api_overlap.c: an output that shares even one element with an input is refused, and one
 * that merely touches it (the next address after the input's last element) is accepted.
 *
 * The overlap check compares byte ranges [first byte, one past the last byte] of the tensors;
 * these cases sit exactly on the ends of those ranges, where an off-by-one would let an output
 * that overwrites an input's first or last element through (or refuse adjacent tensors that
 * share no byte). Out and v live in one buffer at chosen offsets; every case calls the prefill
 * on the CPU and checks the status, the message, and that a refused call wrote nothing.
 */
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
    return test_exit("test_api_overlap");
}

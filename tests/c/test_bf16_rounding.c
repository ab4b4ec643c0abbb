/*
 * test_bf16_rounding.c: a bf16 output is rounded to nearest, ties to even, bit for bit.
 *
 * A problem whose output is known exactly: one token, no initial state, no gate (g = 0, decay
 * 1), no norm or sigmoid, q = k = e_0, v = 1 and K = 4 (scale 1/2), so that every output element
 * of head h is beta_h / 2, computed without rounding in either CPU path. beta (fp32) puts that
 * value just above, exactly on, or just below a bf16 rounding boundary; the output (bf16) must
 * hold the bits round-to-nearest-even gives. Truncation, rounding ties away from zero, or a
 * rounding that loses the sign all change some of them. The float64 reference computes the
 * exact value, so it is held to every case, ties included; the fp32 fast path (its exp is an
 * approximation of exp(0)) to the cases at least 2^-10 from a boundary.
 */
#include <stdlib.h>
#include <string.h>

#include "test_util.h"

enum { B = 1, T = 1, H = 1, K = 4, V = 4 };

typedef struct rounding_case {
    const char *what;
    float value;       /* the exact output beta / 2 */
    uint16_t expect;   /* its bf16 bits, rounded to nearest even */
    int tie;           /* on a boundary: the reference only */
} rounding_case;

static const rounding_case cases[] = {
    {"1 + 2^-8 + 2^-10 rounds up", 1.0f + 0x1p-8f + 0x1p-10f, 0x3f81, 0},
    {"1 + 2^-9 rounds down", 1.0f + 0x1p-9f, 0x3f80, 0},
    {"-(1 + 2^-8 + 2^-10) rounds away from zero", -(1.0f + 0x1p-8f + 0x1p-10f), 0xbf81, 0},
    {"3 - 2^-9 rounds up to 3", 3.0f - 0x1p-9f, 0x4040, 0},
    {"1 + 2^-8 (tie) rounds to even 1", 1.0f + 0x1p-8f, 0x3f80, 1},
    {"1 + 3 * 2^-8 (tie) rounds to even 1 + 2^-6", 1.0f + 3 * 0x1p-8f, 0x3f82, 1},
};
#define HV ((int64_t)(sizeof cases / sizeof cases[0]))

static void check_path(int reference)
{
    test_tensor q = test_tensor_alloc(FKDA_DTYPE_BF16, 4, (int64_t[]){B, T, H, K});
    test_tensor k = test_tensor_alloc(FKDA_DTYPE_BF16, 4, (int64_t[]){B, T, H, K});
    test_tensor v = test_tensor_alloc(FKDA_DTYPE_BF16, 4, (int64_t[]){B, T, HV, V});
    test_tensor g = test_tensor_alloc(FKDA_DTYPE_BF16, 4, (int64_t[]){B, T, HV, K});
    test_tensor beta = test_tensor_alloc(FKDA_DTYPE_F32, 3, (int64_t[]){B, T, HV});
    test_tensor out = test_tensor_alloc(FKDA_DTYPE_BF16, 4, (int64_t[]){B, T, HV, V});
    test_tensor_fill_value(&q, 0.0);
    test_tensor_set(&q, 0, 1.0);
    test_tensor_fill_value(&k, 0.0);
    test_tensor_set(&k, 0, 1.0);
    test_tensor_fill_value(&v, 1.0);
    test_tensor_fill_value(&g, 0.0);
    for (int64_t h = 0; h < HV; h++) ((float *)beta.t.data)[h] = 2.0f * cases[h].value; /* exact */
    test_tensor_fill_value(&out, 12345.0);

    fkda_prefill_args a;
    memset(&a, 0, sizeof a);
    a.q = q.t;
    a.k = k.t;
    a.v = v.t;
    a.g = g.t;
    a.beta = beta.t;
    a.out = out.t;
    a.options = fkda_default_options();
    a.options.gate = FKDA_GATE_NONE;
    a.options.use_qk_l2norm = 0;
    a.options.use_beta_sigmoid = 0;
    const fkda_device cpu = {FKDA_DEVICE_CPU, 0, NULL, 1, reference};
    size_t bytes = 0;
    fkda_status s = fkda_prefill_workspace_size(&a, &cpu, &bytes);
    CHECK(s == FKDA_OK, "workspace size: %s", fkda_last_error());
    void *ws = aligned_alloc(256, (bytes + 256) / 256 * 256); /* the library wants 256-byte alignment */
    if (s == FKDA_OK) s = fkda_prefill(&a, &cpu, ws, bytes);
    CHECK(s == FKDA_OK, "prefill (%s): %s", reference ? "reference" : "fast path", fkda_last_error());
    free(ws);

    for (int64_t h = 0; h < HV; h++) {
        if (cases[h].tie && !reference) continue;
        for (int64_t j = 0; j < V; j++) {
            const uint16_t got = ((const uint16_t *)out.t.data)[h * V + j];
            CHECK(got == cases[h].expect, "%s, %s: bf16 bits 0x%04x, expected 0x%04x",
                  reference ? "reference" : "fast path", cases[h].what, (unsigned)got, (unsigned)cases[h].expect);
        }
    }
    test_tensor *all[] = {&q, &k, &v, &g, &beta, &out};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) test_tensor_free(all[i]);
}

int main(void)
{
    check_path(1);
    check_path(0);
    return test_exit("test_bf16_rounding");
}

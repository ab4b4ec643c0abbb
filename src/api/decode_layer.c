/*
 * decode_layer.c: the public fused decode layer (fkda_decode_layer): validate the layer's own
 * tensors, validate its recurrence as an fkda_decode over views of mixed_qkv, g, beta and out,
 * then dispatch. The spec is the comment above fkda_decode_layer_args in flashkda.h.
 */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "decode_validate.h"
#include "dispatch.h"
#include "../core/error.h"
#include "../core/launch_log.h"
#include "token_inputs.h"
#include "validate.h"

#define MAX_HEAD_DIM 256
#define MAX_CONV_WIDTH 16
#define MAX_MAGNITUDE 1e30

/* The token dimensions of a per-token tensor: [B] or [B, T]. */
typedef struct token_dims {
    int64_t B, T;
    int has_t; /* mixed_qkv has a token dimension, and so does every per-token tensor */
} token_dims;

/* A per-token tensor [B(, T), rest...]: the expected shape in `dims` words and sizes. */
static fkda_status check_token_shape(const fkda_tensor *t, const char *name, const token_dims *d, const char *rest,
                                     int rest_ndim, const int64_t *rest_sizes)
{
    char words[96];
    int64_t sizes[FKDA_MAX_DIMS];
    int ndim = 0;
    sizes[ndim++] = d->B;
    if (d->has_t) sizes[ndim++] = d->T;
    for (int i = 0; i < rest_ndim; i++) sizes[ndim++] = rest_sizes[i];
    snprintf(words, sizeof words, d->has_t ? "[B, T, %s]" : "[B, %s]", rest);
    return fkda_check_shape(t, name, words, ndim, sizes);
}

/* A view with the token dimension T inserted (stride 0, size 1) when the caller's tensor has
 * none, and the last dimension split into [heads, head_dim] when `split` is given. */
static fkda_tensor token_view(const fkda_tensor *t, const token_dims *d, int64_t split)
{
    fkda_tensor v = *t;
    int src = 0;
    v.ndim = 0;
    v.shape[v.ndim] = t->shape[src];
    v.stride[v.ndim++] = t->stride[src++];
    if (d->has_t) {
        v.shape[v.ndim] = t->shape[src];
        v.stride[v.ndim++] = t->stride[src++];
    } else {
        v.shape[v.ndim] = 1;
        v.stride[v.ndim++] = 0;
    }
    for (; src < t->ndim; src++) {
        if (split > 0 && src == t->ndim - 1) {
            v.shape[v.ndim] = t->shape[src] / split;
            v.stride[v.ndim++] = split * t->stride[src];
            v.shape[v.ndim] = split;
            v.stride[v.ndim++] = t->stride[src];
        } else {
            v.shape[v.ndim] = t->shape[src];
            v.stride[v.ndim++] = t->stride[src];
        }
    }
    return v;
}

/* The channels [first, first + heads * dim) of mixed_qkv as a [B, T, heads, dim] tensor. */
static fkda_tensor channel_view(const fkda_tensor *x, const token_dims *d, int64_t first, int64_t heads, int64_t dim)
{
    fkda_tensor v = {0};
    v.dtype = x->dtype;
    v.flags = x->flags;
    v.ndim = 4;
    v.data = x->data ? (char *)x->data + (size_t)first * fkda_dtype_size(x->dtype) : NULL;
    const int64_t last = x->ndim - 1;
    v.shape[0] = d->B;
    v.stride[0] = x->stride[0];
    v.shape[1] = d->T;
    v.stride[1] = d->has_t ? x->stride[1] : 0;
    v.shape[2] = heads;
    v.stride[2] = dim * x->stride[last];
    v.shape[3] = dim;
    v.stride[3] = x->stride[last];
    return v;
}

static fkda_status check_float_tensor(const fkda_tensor *t, const char *name)
{
    TRY(fkda_check_layout(t, name));
    return fkda_check_dtype(t, name, FKDA_FLOAT_DTYPES, "float32, float16 or bfloat16");
}

/* The conv slot of sequence n (see flashkda.h), and its recurrent read slot (fkda_decode's). */
static int64_t conv_slot(const fkda_problem *p, int64_t n)
{
    const fkda_operand *idx = &p->state_indices;
    if (idx->data == NULL) return n;
    return fkda_read_index(idx, n * idx->stride[0]);
}

/* On the CPU: every conv slot inside the conv pool, none missing for a running sequence, and
 * every sliding window inside the conv state's L rows (a_n + W - 2 <= L; a_n <= T_max may pass
 * that when T_max > T). */
static fkda_status check_conv_slots(const fkda_problem *p)
{
    const char *entry = p->indices_per_token ? ", 0" : "";
    for (int64_t n = 0; n < p->N; n++) {
        const int64_t slot = conv_slot(p, n), read = fkda_decode_read_slot(p, n);
        if (slot >= p->conv_pool_size)
            return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT,
                             "state_indices: entry [%lld%s] = %lld is outside the conv_state pool of %lld slots",
                             (long long)n, entry, (long long)slot, (long long)p->conv_pool_size);
        if (slot < 0 && read >= 0)
            return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT,
                             "state_indices: entry [%lld, 0] = %lld names no conv slot, but sequence %lld runs "
                             "(its read slot is %lld); skip a sequence by a negative read slot",
                             (long long)n, (long long)slot, (long long)n, (long long)read);
        if (p->conv_sliding) {
            const int64_t a = fkda_read_index(&p->num_accepted_tokens, n * p->num_accepted_tokens.stride[0]);
            if (a + p->conv_width - 2 > p->conv_rows)
                return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT,
                                 "num_accepted_tokens: entry [%lld] = %lld; the conv window of rows a - 1 .. a + W - 3 "
                                 "passes the L = %lld rows of conv_state (W = %lld: at most %lld accepted)",
                                 (long long)n, (long long)a, (long long)p->conv_rows, (long long)p->conv_width,
                                 (long long)(p->conv_rows - p->conv_width + 2));
        }
    }
    return FKDA_OK;
}

static fkda_status validate_layer(const fkda_decode_layer_args *a, const fkda_device *device, fkda_problem *p)
{
    if (a == NULL) return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT, "args: is NULL");

    /* mixed_qkv fixes B and T; beta the value heads, norm_weight V, g K; then dim gives H. */
    const fkda_tensor *x = &a->mixed_qkv;
    TRY(check_float_tensor(x, "mixed_qkv"));
    if (x->ndim != 2 && x->ndim != 3)
        return fkda_check_shape(x, "mixed_qkv", "[B, dim] or [B, T, dim]", 2, (const int64_t[]){-1, -1});
    token_dims d = {x->shape[0], x->ndim == 3 ? x->shape[1] : 1, x->ndim == 3};
    const int64_t dim = x->shape[x->ndim - 1];

    TRY(check_float_tensor(&a->beta, "beta"));
    TRY(check_token_shape(&a->beta, "beta", &d, "HV", 1, (const int64_t[]){-1}));
    const int64_t HV = a->beta.shape[a->beta.ndim - 1];
    if (HV < 1) return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT, "beta: HV = 0; the layer needs at least one value head");

    TRY(check_float_tensor(&a->norm_weight, "norm_weight"));
    TRY(fkda_check_shape(&a->norm_weight, "norm_weight", "[V]", 1, (const int64_t[]){-1}));
    const int64_t V = a->norm_weight.shape[0];
    if (V < 1 || V > MAX_HEAD_DIM)
        return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT, "norm_weight: V = %lld; the value head dim must be 1 to %d",
                         (long long)V, MAX_HEAD_DIM);

    const fkda_tensor *g = &a->g;
    TRY(check_float_tensor(g, "g"));
    const int flat_g = g->ndim == (d.has_t ? 3 : 2);
    if (flat_g) {
        TRY(check_token_shape(g, "g", &d, "HV * K", 1, (const int64_t[]){-1}));
        if (g->shape[g->ndim - 1] % HV != 0)
            return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT,
                             "g: its last dimension %lld is not a multiple of HV = %lld (flat [.., HV * K])",
                             (long long)g->shape[g->ndim - 1], (long long)HV);
    } else {
        TRY(check_token_shape(g, "g", &d, "HV, K", 2, (const int64_t[]){HV, -1}));
    }
    const int64_t K = flat_g ? g->shape[g->ndim - 1] / HV : g->shape[g->ndim - 1];
    if (K < 1 || K > MAX_HEAD_DIM)
        return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT, "g: K = %lld; the key head dim must be 1 to %d", (long long)K,
                         MAX_HEAD_DIM);

    const int64_t qk = dim - HV * V;
    if (qk <= 0 || qk % (2 * K) != 0 || HV % (qk / (2 * K)) != 0)
        return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT,
                         "mixed_qkv: dim = %lld channels do not split as 2 H K + HV V with K = %lld (from g), "
                         "HV = %lld (from beta), V = %lld (from norm_weight) and H dividing HV",
                         (long long)dim, (long long)K, (long long)HV, (long long)V);
    const int64_t H = qk / (2 * K);

    const fkda_tensor *w = &a->conv_weight;
    TRY(check_float_tensor(w, "conv_weight"));
    TRY(fkda_check_shape(w, "conv_weight", "[dim, W]", 2, (const int64_t[]){dim, -1}));
    const int64_t W = w->shape[1];
    if (W < 2 || W > MAX_CONV_WIDTH)
        return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT, "conv_weight: width W = %lld; expected 2 to %d", (long long)W,
                         MAX_CONV_WIDTH);
    if (fkda_tensor_present(&a->conv_bias)) {
        TRY(check_float_tensor(&a->conv_bias, "conv_bias"));
        TRY(fkda_check_shape(&a->conv_bias, "conv_bias", "[dim]", 1, (const int64_t[]){dim}));
    }

    const int sliding = fkda_tensor_present(&a->num_accepted_tokens);
    const fkda_tensor *cs = &a->conv_state;
    if (!fkda_tensor_present(cs))
        return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT, "conv_state: is required (the conv windows, updated in place)");
    TRY(check_float_tensor(cs, "conv_state"));
    TRY(fkda_check_shape(cs, "conv_state", "[num_slots, L, dim]", 3, (const int64_t[]){-1, -1, dim}));
    const int64_t rows = sliding ? W - 2 + d.T : W - 1;
    if (cs->shape[1] < rows)
        return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT,
                         sliding ? "conv_state: L = %lld rows; with num_accepted_tokens the window slides over "
                                   "W - 2 + T = %lld rows"
                                 : "conv_state: L = %lld rows; the conv needs W - 1 = %lld",
                         (long long)cs->shape[1], (long long)rows);
    TRY(fkda_check_writable(cs, "conv_state"));
    if (!fkda_tensor_present(&a->state_indices) && cs->shape[0] < d.B)
        return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT,
                         "conv_state: has %lld slots, but without state_indices each of the B = %lld sequences "
                         "needs its own slot",
                         (long long)cs->shape[0], (long long)d.B);

    TRY(check_float_tensor(&a->output_gate, "output_gate"));
    TRY(check_token_shape(&a->output_gate, "output_gate", &d, "HV, V", 2, (const int64_t[]){HV, V}));

    TRY(fkda_check_layout(&a->out, "out"));
    TRY(check_token_shape(&a->out, "out", &d, "HV, V", 2, (const int64_t[]){HV, V}));
    if (a->out.dtype != x->dtype)
        return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT, "out: dtype %s differs from mixed_qkv's %s",
                         fkda_dtype_name(a->out.dtype), fkda_dtype_name(x->dtype));

    /* At least the smallest normal float32: the kernels add eps in float32, where a smaller one
     * rounds to 0 and an all-zero o (a skipped sequence) would give 0 / 0. */
    if (!(a->norm_eps >= FLT_MIN && a->norm_eps <= MAX_MAGNITUDE))
        return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT, "norm_eps: %g; expected a finite value in [%g, %g]", a->norm_eps,
                         (double)FLT_MIN, MAX_MAGNITUDE);
    if (!(a->lower_bound <= 0.0 && a->lower_bound >= -MAX_MAGNITUDE))
        return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT,
                         "lower_bound: %g; expected 0 (the softplus gate) or a value in [-%g, 0) (the lower-bound "
                         "gate; the safe gate uses [-5, 0))",
                         a->lower_bound, MAX_MAGNITUDE);

    /* Outputs against everything, named as the caller named them, before the decode's own checks
     * (which see mixed_qkv as q, k and v). */
    const fkda_tensor *inputs[] = {x,
                                   w,
                                   &a->conv_bias,
                                   &a->g,
                                   &a->beta,
                                   &a->A_log,
                                   &a->dt_bias,
                                   &a->state_indices,
                                   &a->num_accepted_tokens,
                                   &a->output_gate,
                                   &a->norm_weight};
    const char *input_names[] = {
        "mixed_qkv", "conv_weight",   "conv_bias",           "g",           "beta",       "A_log",
        "dt_bias",   "state_indices", "num_accepted_tokens", "output_gate", "norm_weight"};
    for (size_t i = 0; i < sizeof inputs / sizeof inputs[0]; i++) {
        TRY(fkda_check_disjoint(&a->out, "out", inputs[i], input_names[i]));
        TRY(fkda_check_disjoint(cs, "conv_state", inputs[i], input_names[i]));
        TRY(fkda_check_disjoint(&a->state_pool, "state_pool", inputs[i], input_names[i]));
    }
    TRY(fkda_check_disjoint(&a->out, "out", cs, "conv_state"));
    TRY(fkda_check_disjoint(&a->state_pool, "state_pool", cs, "conv_state"));

    /* The recurrence, as fkda_decode sees it. */
    fkda_decode_args dec;
    memset(&dec, 0, sizeof dec);
    dec.q = channel_view(x, &d, 0, H, K);
    dec.k = channel_view(x, &d, H * K, H, K);
    dec.v = channel_view(x, &d, 2 * H * K, HV, V);
    dec.g = token_view(g, &d, flat_g ? K : 0);
    dec.beta = token_view(&a->beta, &d, 0);
    dec.A_log = a->A_log;
    dec.dt_bias = a->dt_bias;
    dec.state_pool = a->state_pool;
    dec.state_indices = a->state_indices;
    dec.num_accepted_tokens = a->num_accepted_tokens;
    dec.out = token_view(&a->out, &d, 0);
    dec.options = fkda_default_options();
    dec.options.scale = a->scale;
    dec.options.gate = a->lower_bound < 0.0 ? FKDA_GATE_LOWER_BOUND : FKDA_GATE_SOFTPLUS;
    dec.options.lower_bound = a->lower_bound;
    dec.options.use_qk_l2norm = 1;
    dec.options.use_beta_sigmoid = 1;
    dec.options.state_v_first = a->state_v_first;
    TRY(fkda_validate_decode(&dec, device, p));
    p->op = FKDA_OP_DECODE_LAYER;

    fkda_tensor xv = token_view(x, &d, 0);
    fkda_to_operand(&xv, NULL, &p->mixed_qkv);
    fkda_to_operand(w, NULL, &p->conv_weight);
    if (fkda_tensor_present(&a->conv_bias)) fkda_to_operand(&a->conv_bias, NULL, &p->conv_bias);
    fkda_to_operand(cs, NULL, &p->conv_state);
    fkda_tensor gate = token_view(&a->output_gate, &d, 0);
    fkda_to_operand(&gate, NULL, &p->output_gate);
    fkda_to_operand(&a->norm_weight, NULL, &p->norm_weight);
    p->conv_dim = dim;
    p->conv_width = W;
    p->conv_pool_size = cs->shape[0];
    p->conv_rows = cs->shape[1];
    p->conv_sliding = sliding;
    p->norm_eps = a->norm_eps;

    if (device->type == FKDA_DEVICE_CPU) TRY(check_conv_slots(p));
    return FKDA_OK;
}

fkda_status fkda_decode_layer_workspace_size(const fkda_decode_layer_args *args, const fkda_device *device,
                                             size_t *bytes)
{
    fkda_clear_error();
    if (bytes == NULL) return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT, "bytes: is NULL");
    *bytes = 0;
    TRY(fkda_validate_device(device));
    fkda_problem p;
    TRY(validate_layer(args, device, &p));
    return fkda_dispatch_workspace(&p, bytes);
}

fkda_status fkda_decode_layer(const fkda_decode_layer_args *args, const fkda_device *device, void *workspace,
                              size_t workspace_bytes)
{
    fkda_clear_error();
    fkda_launch_log_clear();
    TRY(fkda_validate_device(device));
    fkda_problem p;
    TRY(validate_layer(args, device, &p));
    return fkda_dispatch_run(&p, workspace, workspace_bytes);
}

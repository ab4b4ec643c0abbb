/*
 * decode_layer.c: the CPU fused decode layer (the spec is the comment above
 * fkda_decode_layer_args in flashkda.h), in three passes over the workspace:
 *
 *   1. conv   each running sequence's channels through the causal conv with SiLU into y (float32
 *             [B, T, dim]), its conv window read from and the new inputs written to its conv slot
 *   2. decode the CPU decode (decode.c, fast or reference) on q, k, v = views of y, its output o
 *             going to a float32 buffer [B, T, HV, V] instead of out, so that the norm sees o
 *             unrounded; a skipped sequence gets o = 0 there, as fkda_decode writes it
 *   3. norm   out = o / sqrt(mean(o^2) + eps) * norm_weight * sigmoid(output_gate) per token and
 *             head (a zero o gives a zero row, so skipped sequences end with zeros in out)
 *
 * The reference (device.reference) runs the conv and the norm in float64 too, but hands y and o
 * between the passes as float32: the tensors the decode reads have no float64 dtype. The conv
 * and the norm are a few operations per channel, against K operations per state element for the
 * recurrence, so they run on the calling thread.
 */
#include <math.h>

#include "../core/layer_problem.h"
#include "../core/error.h"
#include "activations.h"
#include "cpu_backend.h"
#include "cpu_internal.h"
#include "load.h"

#define MAX_WINDOW 16 /* the largest conv width W the API accepts */

typedef struct layer_buffers {
    float *y;   /* conv outputs [B, T, dim] */
    float *o;   /* recurrence outputs [B, T, HV, V] */
    char *rest; /* the decode's workspace, at byte `offset` */
    size_t offset, rest_bytes;
} layer_buffers;

static layer_buffers carve_buffers(const fkda_problem *p, char *base)
{
    fkda_carver c = {base, 0};
    layer_buffers b;
    b.y = fkda_carve(&c, (size_t)(p->B * p->T * p->conv_dim) * sizeof(float));
    b.o = fkda_carve(&c, (size_t)(p->B * p->T * p->HV * p->V) * sizeof(float));
    b.offset = c.used;
    b.rest = base ? base + c.used : NULL;
    const fkda_problem d = fkda_layer_decode_problem(p, NULL, NULL);
    b.rest_bytes = fkda_cpu_decode_workspace(&d);
    return b;
}

size_t fkda_cpu_decode_layer_workspace(const fkda_problem *p)
{
    const layer_buffers b = carve_buffers(p, NULL);
    return b.offset + b.rest_bytes;
}

/* a_n: the accepted tokens of sequence n (1 without num_accepted_tokens). */
static int64_t accepted_tokens(const fkda_problem *p, int64_t n)
{
    if (p->num_accepted_tokens.data == NULL) return 1;
    return fkda_read_index(&p->num_accepted_tokens, n * p->num_accepted_tokens.stride[0]);
}

/* The conv slot of sequence n: slot n, idx[n], or idx[n, 0] (validation made it >= 0 for every
 * running sequence). */
static int64_t conv_slot(const fkda_problem *p, int64_t n)
{
    const fkda_operand *idx = &p->state_indices;
    return idx->data == NULL ? n : fkda_read_index(idx, n * idx->stride[0]);
}

/* Channel c of sequence n: the T conv outputs into y, then the new window into the conv state.
 * The window is read whole before any row is written, so the in-place update is safe. */
static void conv_channel(const fkda_problem *p, int64_t n, int64_t slot, int64_t first_row, int64_t c, float *y)
{
    const fkda_operand *cs = &p->conv_state, *x = &p->mixed_qkv, *w = &p->conv_weight;
    const int64_t W = p->conv_width, T = p->T;
    const int64_t state_base = slot * cs->stride[0] + c * cs->stride[2];
    const int64_t x_base = n * x->stride[0] + c * x->stride[2];
    double window[MAX_WINDOW], weight[MAX_WINDOW];
    for (int64_t i = 0; i < W - 1; i++)
        window[i] = fkda_load_float(cs->data, cs->dtype, state_base + (first_row + i) * cs->stride[1]);
    for (int64_t j = 0; j < W; j++) weight[j] = fkda_load_float(w->data, w->dtype, c * w->stride[0] + j * w->stride[1]);
    const double bias = p->conv_bias.data
                            ? fkda_load_float(p->conv_bias.data, p->conv_bias.dtype, c * p->conv_bias.stride[0])
                            : 0.0;

    /* Output t covers the sequence (window, x_0, .., x_{T-1}) at positions t .. t + W - 1. */
    for (int64_t t = 0; t < T; t++) {
        if (p->device.reference) {
            double acc = bias;
            for (int64_t j = 0; j < W; j++) {
                const int64_t at = t + j - (W - 1); /* < 0: a window row */
                const double value = at < 0 ? window[W - 1 + at]
                                            : fkda_load_float(x->data, x->dtype, x_base + at * x->stride[1]);
                acc += weight[j] * value;
            }
            y[t * p->conv_dim + c] = (float)(acc / (1.0 + exp(-acc)));
        } else {
            float acc = (float)bias;
            for (int64_t j = 0; j < W; j++) {
                const int64_t at = t + j - (W - 1);
                const float value = at < 0 ? (float)window[W - 1 + at]
                                           : fkda_load_float(x->data, x->dtype, x_base + at * x->stride[1]);
                acc += (float)weight[j] * value;
            }
            y[t * p->conv_dim + c] = acc / (1.0f + expf(-acc));
        }
    }

    /* The new state: sliding, rows 1..W-2 of the window then all T inputs (W - 2 + T rows);
     * otherwise the last W - 1 of (window, inputs), from row 0. */
    const int64_t kept = p->conv_sliding ? W - 2 : (W - 1 > T ? W - 1 - T : 0);
    const int64_t inputs = p->conv_sliding ? T : W - 1 - kept;
    for (int64_t i = 0; i < kept; i++)
        fkda_store_float(cs->data, cs->dtype, state_base + i * cs->stride[1],
                         (float)window[(p->conv_sliding ? 1 : T) + i]);
    for (int64_t i = 0; i < inputs; i++) {
        const int64_t t = T - inputs + i;
        fkda_store_float(cs->data, cs->dtype, state_base + (kept + i) * cs->stride[1],
                         fkda_load_float(x->data, x->dtype, x_base + t * x->stride[1]));
    }
}

static void conv_pass(const fkda_problem *p, float *y)
{
    for (int64_t n = 0; n < p->B; n++) {
        if (fkda_decode_read_slot(p, n) < 0) continue; /* skipped: neither pool is touched */
        const int64_t first_row = p->conv_sliding ? accepted_tokens(p, n) - 1 : 0;
        float *y_n = y + n * p->T * p->conv_dim;
        for (int64_t c = 0; c < p->conv_dim; c++) conv_channel(p, n, conv_slot(p, n), first_row, c, y_n);
    }
}

/* out[n, t, h] = o / sqrt(mean(o^2) + eps) * norm_weight * sigmoid(output_gate). */
static void norm_pass(const fkda_problem *p, const float *o)
{
    const int64_t V = p->V;
    const fkda_operand *gate = &p->output_gate, *wt = &p->norm_weight, *out = &p->out;
    for (int64_t n = 0; n < p->B; n++)
        for (int64_t t = 0; t < p->T; t++)
            for (int64_t h = 0; h < p->HV; h++) {
                const float *row = o + ((n * p->T + t) * p->HV + h) * V;
                const int64_t g0 = fkda_token_offset(gate, n, t, h), o0 = fkda_token_offset(out, n, t, h);
                if (p->device.reference) {
                    double squares = 0.0;
                    for (int64_t j = 0; j < V; j++) squares += (double)row[j] * row[j];
                    const double r = 1.0 / sqrt(squares / (double)V + p->norm_eps);
                    for (int64_t j = 0; j < V; j++) {
                        const double g = fkda_load_float(gate->data, gate->dtype, g0 + j * gate->stride[3]);
                        const double w = fkda_load_float(wt->data, wt->dtype, j * wt->stride[0]);
                        fkda_store_float(out->data, out->dtype, o0 + j * out->stride[3],
                                         (float)(row[j] * r * w / (1.0 + exp(-g))));
                    }
                } else {
                    float squares = 0.0f;
                    for (int64_t j = 0; j < V; j++) squares += row[j] * row[j];
                    const float r = 1.0f / sqrtf(squares / (float)V + (float)p->norm_eps);
                    for (int64_t j = 0; j < V; j++) {
                        const float g = fkda_load_float(gate->data, gate->dtype, g0 + j * gate->stride[3]);
                        const float w = fkda_load_float(wt->data, wt->dtype, j * wt->stride[0]);
                        fkda_store_float(out->data, out->dtype, o0 + j * out->stride[3],
                                         row[j] * r * w / (1.0f + expf(-g)));
                    }
                }
            }
}

fkda_status fkda_cpu_decode_layer(const fkda_problem *p, void *workspace, size_t workspace_bytes)
{
    if (p->B * p->T == 0) return FKDA_OK;
    const layer_buffers b = carve_buffers(p, (char *)workspace);
    conv_pass(p, b.y);
    const fkda_problem d = fkda_layer_decode_problem(p, b.y, b.o);
    TRY(fkda_cpu_decode(&d, b.rest, workspace_bytes - b.offset));
    norm_pass(p, b.o);
    return FKDA_OK;
}

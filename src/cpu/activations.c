/* activations.c: see activations.h. The float and double versions are the same formulas. */
#include "activations.h"

#include <math.h>

#include "cpu_internal.h"
#include "fast_math.h"
#include "load.h"

/* fla's softplus (beta 1, threshold 20): x itself above 20, where log1p(exp(x)) == x in float. */
static inline float softplus_f(float x) { return x > 20.0f ? x : log1pf(expf(x)); }
static inline double softplus_d(double x) { return x > 20.0 ? x : log1p(exp(x)); }

/* 1 / (1 + exp(-x)): exp(-x) may overflow to Inf for very negative x, which gives 0, never NaN.
 * (The float version is fkda_sigmoidf, which vectorises.) */
static inline double sigmoid_d(double x) { return 1.0 / (1.0 + exp(-x)); }

fkda_head_gate_f fkda_head_gate_float(const fkda_problem *p, int64_t h, float *bias_buffer)
{
    fkda_head_gate_f gate = {1.0f, NULL};
    if (p->A_log.data) gate.weight = expf(fkda_load_float(p->A_log.data, p->A_log.dtype, h * p->A_log.stride[0]));
    if (p->dt_bias.data) {
        fkda_load_row_float(p->dt_bias.data, p->dt_bias.dtype, h * p->dt_bias.stride[0], p->dt_bias.stride[1], p->K,
                            bias_buffer);
        gate.bias = bias_buffer;
    }
    return gate;
}

fkda_head_gate_d fkda_head_gate_double(const fkda_problem *p, int64_t h, double *bias_buffer)
{
    fkda_head_gate_d gate = {1.0, NULL};
    if (p->A_log.data)
        gate.weight = exp((double)fkda_load_float(p->A_log.data, p->A_log.dtype, h * p->A_log.stride[0]));
    if (p->dt_bias.data) {
        fkda_load_row_double(p->dt_bias.data, p->dt_bias.dtype, h * p->dt_bias.stride[0], p->dt_bias.stride[1], p->K,
                             bias_buffer);
        gate.bias = bias_buffer;
    }
    return gate;
}

/* The sum of squares in 8 independent partial sums, so that the loop vectorises. */
static void l2norm_f(float *restrict x, int64_t n)
{
    float partial[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) partial[j] += x[i + j] * x[i + j];
    float sum = 0.0f;
    for (; i < n; i++) sum += x[i] * x[i];
    for (int j = 0; j < 8; j++) sum += partial[j];
    const float inv = 1.0f / sqrtf(sum + 1e-6f);
    for (i = 0; i < n; i++) x[i] *= inv;
}

static void l2norm_d(double *x, int64_t n)
{
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) sum += x[i] * x[i];
    double inv = 1.0 / sqrt(sum + 1e-6);
    for (int64_t i = 0; i < n; i++) x[i] *= inv;
}

FKDA_VECTOR_CLONES
void fkda_token_float(const fkda_problem *p, const fkda_head_gate_f *gate, int64_t row, int64_t t, int64_t h, float *q,
                      float *k, float *a, float *b)
{
    const int64_t K = p->K, hq = h / p->group;
    if (q) {
        fkda_load_row_float(p->q.data, p->q.dtype, fkda_token_offset(&p->q, row, t, hq), p->q.stride[3], K, q);
        if (p->use_qk_l2norm) l2norm_f(q, K);
    }
    fkda_load_row_float(p->k.data, p->k.dtype, fkda_token_offset(&p->k, row, t, hq), p->k.stride[3], K, k);
    if (p->use_qk_l2norm) l2norm_f(k, K);

    fkda_load_row_float(p->g.data, p->g.dtype, fkda_token_offset(&p->g, row, t, h), p->g.stride[3], K, a);
    /* One loop per gate, with no call inside the lower-bound one, so that it vectorises. */
    const float w = gate->weight, lb = p->lower_bound;
    if (gate->bias && p->gate != FKDA_GATE_NONE)
        for (int64_t i = 0; i < K; i++) a[i] += gate->bias[i];
    if (p->gate == FKDA_GATE_LOWER_BOUND) {
        for (int64_t i = 0; i < K; i++) a[i] = lb * fkda_sigmoidf(w * a[i]);
    } else if (p->gate == FKDA_GATE_SOFTPLUS) {
        for (int64_t i = 0; i < K; i++) a[i] = -w * softplus_f(a[i]);
    }

    float beta = fkda_load_float(p->beta.data, p->beta.dtype,
                                 row * p->beta.stride[0] + t * p->beta.stride[1] + h * p->beta.stride[2]);
    if (p->use_beta_sigmoid) beta = (p->allow_neg_eigval ? 2.0f : 1.0f) * fkda_sigmoidf(beta);
    *b = beta;
}

void fkda_token_double(const fkda_problem *p, const fkda_head_gate_d *gate, int64_t row, int64_t t, int64_t h,
                       double *q, double *k, double *a, double *b)
{
    const int64_t K = p->K, hq = h / p->group;
    if (q) {
        fkda_load_row_double(p->q.data, p->q.dtype, fkda_token_offset(&p->q, row, t, hq), p->q.stride[3], K, q);
        if (p->use_qk_l2norm) l2norm_d(q, K);
    }
    fkda_load_row_double(p->k.data, p->k.dtype, fkda_token_offset(&p->k, row, t, hq), p->k.stride[3], K, k);
    if (p->use_qk_l2norm) l2norm_d(k, K);

    fkda_load_row_double(p->g.data, p->g.dtype, fkda_token_offset(&p->g, row, t, h), p->g.stride[3], K, a);
    if (p->gate != FKDA_GATE_NONE) {
        const double w = gate->weight, lb = p->lower_bound;
        for (int64_t i = 0; i < K; i++) {
            double x = a[i] + (gate->bias ? gate->bias[i] : 0.0);
            a[i] = p->gate == FKDA_GATE_LOWER_BOUND ? lb * sigmoid_d(w * x) : -w * softplus_d(x);
        }
    }

    double beta = (double)fkda_load_float(p->beta.data, p->beta.dtype,
                                          row * p->beta.stride[0] + t * p->beta.stride[1] + h * p->beta.stride[2]);
    if (p->use_beta_sigmoid) beta = (p->allow_neg_eigval ? 2.0 : 1.0) * sigmoid_d(beta);
    *b = beta;
}

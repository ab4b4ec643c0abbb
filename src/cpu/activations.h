/*
 * activations.h: the per-token pre-activations that every CPU path applies before the recurrence.
 *
 * For token (row, t) and value head h they produce the four quantities of docs/design.md section 1:
 *   q, k  [K]  from qk head h / group, optionally L2-normalised (x / sqrt(sum x^2 + 1e-6))
 *   a     [K]  the log-space decay from g by the gate (none, lower bound, softplus)
 *   b          the delta-rule step from beta (raw, sigmoid, or 2 sigmoid)
 * in float (fast paths) and in double (reference). The per-head constants of the gate
 * (exp(A_log[h]) and the dt_bias row) are resolved once per head, not once per token.
 */
#ifndef FKDA_CPU_ACTIVATIONS_H
#define FKDA_CPU_ACTIVATIONS_H

#include <stdint.h>

#include "../core/problem.h"

/* The gate constants of one value head. `bias` points at K widened values, or is NULL. */
typedef struct fkda_head_gate_f {
    float weight; /* exp(A_log[h]), or 1 without A_log */
    const float *bias;
} fkda_head_gate_f;

typedef struct fkda_head_gate_d {
    double weight;
    const double *bias;
} fkda_head_gate_d;

/* Resolves head h's gate constants; `bias_buffer` (K elements) receives the dt_bias row. */
fkda_head_gate_f fkda_head_gate_float(const fkda_problem *p, int64_t h, float *bias_buffer);
fkda_head_gate_d fkda_head_gate_double(const fkda_problem *p, int64_t h, double *bias_buffer);

/* Token (row, t) of value head h: q, k and a receive K values each, *b one value. q may be NULL
 * when the caller does not need it. */
void fkda_token_float(const fkda_problem *p, const fkda_head_gate_f *gate, int64_t row, int64_t t, int64_t h, float *q,
                      float *k, float *a, float *b);
void fkda_token_double(const fkda_problem *p, const fkda_head_gate_d *gate, int64_t row, int64_t t, int64_t h,
                       double *q, double *k, double *a, double *b);

/* Offset of element (row, t, head, 0) of a token operand in canonical order [B, T, heads, dim]. */
static inline int64_t fkda_token_offset(const fkda_operand *x, int64_t row, int64_t t, int64_t head)
{
    return row * x->stride[0] + t * x->stride[1] + head * x->stride[2];
}

#endif /* FKDA_CPU_ACTIVATIONS_H */

/*
 * layer_problem.c: the recurrence pass of the fused decode layer as a plain decode problem
 * (layer_problem.h).
 */
#include "layer_problem.h"

fkda_problem fkda_layer_decode_problem(const fkda_problem *p, float *y, float *o)
{
    fkda_problem d = *p;
    d.op = FKDA_OP_DECODE;
    const int64_t dim = p->conv_dim, H = p->H, K = p->K;
    const fkda_operand qk = {y, FKDA_DTYPE_F32, {p->T * dim, dim, K, 1}};
    d.q = qk;
    d.k = qk;
    d.k.data = y ? y + H * K : NULL;
    d.v = (fkda_operand){y ? y + 2 * H * K : NULL, FKDA_DTYPE_F32, {p->T * dim, dim, p->V, 1}};
    d.out = (fkda_operand){o, FKDA_DTYPE_F32, {p->T * p->HV * p->V, p->HV * p->V, p->V, 1}};
    return d;
}

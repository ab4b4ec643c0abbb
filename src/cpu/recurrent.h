/*
 * recurrent.h: one token of the KDA recurrence on a dense state, in float and in double.
 *
 *     S <- diag(exp(a)) S;   S <- S + k (b (v - S^T k))^T;   o = scale S^T q
 *
 * S is row-major [K][nv] (row kk = key index kk), holding nv value columns; v, o and the scratch
 * u have nv entries. Two passes over S: the first decays each row and accumulates S^T k, the
 * second adds the rank-one update and accumulates S^T q, each inner loop running contiguously
 * along the value index so that the compiler vectorises it. The reference prefill and both
 * decode paths use these; the fast prefill uses the chunked form instead.
 */
#ifndef FKDA_CPU_RECURRENT_H
#define FKDA_CPU_RECURRENT_H

#include <math.h>
#include <stdint.h>

static inline void fkda_recurrent_step_float(float *restrict S, int64_t K, int64_t nv, const float *restrict q,
                                             const float *restrict k, const float *restrict a, float b,
                                             const float *restrict v, float scale, float *restrict u, float *restrict o)
{
    for (int64_t j = 0; j < nv; j++) u[j] = 0.0f;
    for (int64_t kk = 0; kk < K; kk++) {
        float *restrict row = S + kk * nv;
        const float decay = expf(a[kk]), key = k[kk];
        for (int64_t j = 0; j < nv; j++) {
            row[j] *= decay;
            u[j] += key * row[j];
        }
    }
    for (int64_t j = 0; j < nv; j++) {
        u[j] = b * (v[j] - u[j]);
        o[j] = 0.0f;
    }
    for (int64_t kk = 0; kk < K; kk++) {
        float *restrict row = S + kk * nv;
        const float key = k[kk], query = scale * q[kk];
        for (int64_t j = 0; j < nv; j++) {
            row[j] += key * u[j];
            o[j] += query * row[j];
        }
    }
}

static inline void fkda_recurrent_step_double(double *restrict S, int64_t K, int64_t nv, const double *restrict q,
                                              const double *restrict k, const double *restrict a, double b,
                                              const double *restrict v, double scale, double *restrict u,
                                              double *restrict o)
{
    for (int64_t j = 0; j < nv; j++) u[j] = 0.0;
    for (int64_t kk = 0; kk < K; kk++) {
        double *restrict row = S + kk * nv;
        const double decay = exp(a[kk]), key = k[kk];
        for (int64_t j = 0; j < nv; j++) {
            row[j] *= decay;
            u[j] += key * row[j];
        }
    }
    for (int64_t j = 0; j < nv; j++) {
        u[j] = b * (v[j] - u[j]);
        o[j] = 0.0;
    }
    for (int64_t kk = 0; kk < K; kk++) {
        double *restrict row = S + kk * nv;
        const double key = k[kk], query = scale * q[kk];
        for (int64_t j = 0; j < nv; j++) {
            row[j] += key * u[j];
            o[j] += query * row[j];
        }
    }
}

#endif /* FKDA_CPU_RECURRENT_H */

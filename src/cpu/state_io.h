/*
 * state_io.h: moving one head's state between a state operand (any layout, f32 or bf16) and the
 * dense working copy a CPU path computes on.
 *
 * The working copy holds the value columns [v0, v0 + nv) of the state as a row-major array with
 * K rows of `ld` >= nv floats: row kk is key index kk, contiguous over the value index, which is
 * the direction every inner loop runs along (the double version is dense, ld = V). The operand
 * is addressed in canonical order [slot, head, key, value] (stride[2] steps the key index,
 * stride[3] the value index, whatever the memory layout); the loops walk memory along whichever
 * of the two is contiguous.
 */
#ifndef FKDA_CPU_STATE_IO_H
#define FKDA_CPU_STATE_IO_H

#include <stdint.h>
#include <string.h>

#include "../core/problem.h"
#include "load.h"

static inline int64_t fkda_state_offset(const fkda_operand *s, int64_t slot, int64_t head)
{
    return slot * s->stride[0] + head * s->stride[1];
}

/* dst[kk * ld + j] = state[slot, head, kk, v0 + j] for j < nv; zeros when the operand is
 * absent. The columns nv .. ld of dst are left alone. */
static inline void fkda_state_load_float(const fkda_operand *s, int64_t slot, int64_t head, int64_t K, int64_t v0,
                                         int64_t nv, int64_t ld, float *restrict dst)
{
    if (s->data == NULL) {
        for (int64_t kk = 0; kk < K; kk++) memset(dst + kk * ld, 0, (size_t)nv * sizeof(float));
        return;
    }
    const int64_t base = fkda_state_offset(s, slot, head), sk = s->stride[2], sv = s->stride[3];
    if (sv == 1 || sk != 1) {
        for (int64_t kk = 0; kk < K; kk++)
            fkda_load_row_float(s->data, s->dtype, base + kk * sk + v0 * sv, sv, nv, dst + kk * ld);
    } else {
        for (int64_t j = 0; j < nv; j++)
            for (int64_t kk = 0; kk < K; kk++)
                dst[kk * ld + j] = fkda_load_float(s->data, s->dtype, base + kk + (v0 + j) * sv);
    }
}

static inline void fkda_state_store_float(const fkda_operand *s, int64_t slot, int64_t head, int64_t K, int64_t v0,
                                          int64_t nv, int64_t ld, const float *restrict src)
{
    const int64_t base = fkda_state_offset(s, slot, head), sk = s->stride[2], sv = s->stride[3];
    if (sv == 1 || sk != 1) {
        for (int64_t kk = 0; kk < K; kk++)
            fkda_store_row_float(s->data, s->dtype, base + kk * sk + v0 * sv, sv, nv, src + kk * ld);
    } else {
        for (int64_t j = 0; j < nv; j++)
            for (int64_t kk = 0; kk < K; kk++)
                fkda_store_float(s->data, s->dtype, base + kk + (v0 + j) * sv, src[kk * ld + j]);
    }
}

static inline void fkda_state_load_double(const fkda_operand *s, int64_t slot, int64_t head, int64_t K, int64_t V,
                                          double *restrict dst)
{
    if (s->data == NULL) {
        memset(dst, 0, (size_t)(K * V) * sizeof(double));
        return;
    }
    const int64_t base = fkda_state_offset(s, slot, head);
    for (int64_t kk = 0; kk < K; kk++)
        for (int64_t j = 0; j < V; j++)
            dst[kk * V + j] = (double)fkda_load_float(s->data, s->dtype, base + kk * s->stride[2] + j * s->stride[3]);
}

static inline void fkda_state_store_double(const fkda_operand *s, int64_t slot, int64_t head, int64_t K, int64_t V,
                                           const double *restrict src)
{
    const int64_t base = fkda_state_offset(s, slot, head);
    for (int64_t kk = 0; kk < K; kk++)
        for (int64_t j = 0; j < V; j++)
            fkda_store_float(s->data, s->dtype, base + kk * s->stride[2] + j * s->stride[3], (float)src[kk * V + j]);
}

#endif /* FKDA_CPU_STATE_IO_H */

/* prefill_states.c: the staged initial states and the intermediate row table; see prefill_states.h. */
#include "prefill_states.h"

#include <string.h>

#include "cpu_internal.h"
#include "load.h"

static size_t staged_bytes(const fkda_problem *p)
{
    return p->uses_pool ? fkda_align_up((size_t)(p->N * p->HV * p->K * p->V) * sizeof(float)) : 0;
}

static size_t rows_bytes(const fkda_problem *p)
{
    return p->intermediate_states.data ? fkda_align_up((size_t)p->N * sizeof(int64_t)) : 0;
}

size_t fkda_prefill_states_workspace(const fkda_problem *p) { return staged_bytes(p) + rows_bytes(p); }

/* Sequence n's initial state (or zeros) from the pool into staged row n, [HV][K][V] float. */
static void stage_sequence(const fkda_problem *p, int64_t n, float *dst)
{
    const int64_t slot = fkda_initial_slot(p, n), K = p->K, V = p->V;
    for (int64_t h = 0; h < p->HV; h++) {
        float *head = dst + h * K * V;
        if (slot < 0) {
            memset(head, 0, (size_t)(K * V) * sizeof(float));
            continue;
        }
        const fkda_operand *s = &p->state_in;
        const int64_t base = slot * s->stride[0] + h * s->stride[1];
        for (int64_t kk = 0; kk < K; kk++)
            for (int64_t j = 0; j < V; j++)
                head[kk * V + j] = fkda_load_float(s->data, s->dtype, base + kk * s->stride[2] + j * s->stride[3]);
    }
}

void fkda_prefill_states_prepare(const fkda_problem *p, void *workspace, fkda_problem *staged,
                                 fkda_prefill_extras *extras)
{
    *staged = *p;
    extras->first_rows = NULL;
    char *base = (char *)workspace;
    if (p->uses_pool) {
        float *copy = (float *)base;
        const int64_t per_sequence = p->HV * p->K * p->V;
        for (int64_t n = 0; n < p->N; n++) stage_sequence(p, n, copy + n * per_sequence);
        staged->state_in.data = copy;
        staged->state_in.dtype = FKDA_DTYPE_F32;
        staged->state_in.stride[0] = per_sequence;
        staged->state_in.stride[1] = p->K * p->V;
        staged->state_in.stride[2] = p->V;
        staged->state_in.stride[3] = 1;
        /* The staged copy already holds each sequence's choice: row n, zeros where it had none. */
        memset(&staged->initial_state_indices, 0, sizeof staged->initial_state_indices);
        memset(&staged->has_initial_state, 0, sizeof staged->has_initial_state);
        base += staged_bytes(p);
    }
    if (p->intermediate_states.data) {
        int64_t *rows = (int64_t *)base, next = 0;
        for (int64_t n = 0; n < p->N; n++) {
            int64_t row, start, length;
            fkda_sequence_bounds(p, n, &row, &start, &length);
            rows[n] = next;
            next += (length + p->intermediate_chunk - 1) / p->intermediate_chunk;
        }
        extras->first_rows = rows;
    }
}

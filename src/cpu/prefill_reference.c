/*
 * prefill_reference.c: the ground truth. The recurrence of docs/design.md section 1 token by token,
 * in float64, one (sequence, value head) per work item; the state is a double [K][V] array in the
 * worker's workspace slice. Slow (it streams the whole state three times per token) and simple
 * on purpose: every faster path is tested against it.
 */
#include <string.h>

#include "../core/error.h"
#include "activations.h"
#include "cpu_internal.h"
#include "load.h"
#include "prefill_states.h"
#include "recurrent.h"
#include "state_io.h"
#include "thread_pool.h"

typedef struct reference_job {
    const fkda_problem *p;
    const fkda_prefill_extras *extras;
    char *workspace;
    size_t worker_bytes;
} reference_job;

static size_t worker_bytes(const fkda_problem *p) { return fkda_carve_double_scratch(NULL, p->K, p->V).bytes; }

static void reference_item(void *context, int64_t item, int worker)
{
    const reference_job *job = (const reference_job *)context;
    const fkda_problem *p = job->p;
    const int64_t K = p->K, V = p->V, n = item / p->HV, h = item % p->HV;

    const fkda_double_scratch w = fkda_carve_double_scratch(job->workspace + (size_t)worker * job->worker_bytes, K, V);
    double *S = w.S, *q = w.q, *k = w.k, *a = w.a, *bias = w.bias, *v = w.v, *u = w.u, *o = w.o;

    int64_t row, start, length;
    fkda_sequence_bounds(p, n, &row, &start, &length);
    const fkda_head_gate_d gate = fkda_head_gate_double(p, h, bias);
    const fkda_operand none = {0};
    const int64_t in_slot = fkda_initial_slot(p, n);
    fkda_state_load_double(in_slot < 0 ? &none : &p->state_in, in_slot, h, K, V, S);

    /* Token by token, the state after any number of tokens is at hand: write it at each mark. */
    const fkda_marks marks = fkda_marks_for(p, job->extras, n, length);
    int64_t next_mark = length + 1;
    if (fkda_has_marks(p)) {
        fkda_marks_emit_double(&marks, 0, h, K, V, S);
        next_mark = fkda_marks_next(&marks, 0);
    }
    for (int64_t t = start; t < start + length; t++) {
        double b;
        fkda_token_double(p, &gate, row, t, h, q, k, a, &b);
        fkda_load_row_double(p->v.data, p->v.dtype, fkda_token_offset(&p->v, row, t, h), p->v.stride[3], V, v);
        fkda_recurrent_step_double(S, K, V, q, k, a, b, v, (double)p->scale, u, o);
        fkda_store_row_double(p->out.data, p->out.dtype, fkda_token_offset(&p->out, row, t, h), p->out.stride[3], V, o);
        if (t + 1 - start == next_mark) {
            fkda_marks_emit_double(&marks, next_mark, h, K, V, S);
            next_mark = fkda_marks_next(&marks, next_mark);
        }
    }
    const int64_t out_slot = fkda_final_slot(p, n);
    if (out_slot >= 0) fkda_state_store_double(&p->state_out, out_slot, h, K, V, S);
}

size_t fkda_cpu_prefill_reference_workspace(const fkda_problem *p)
{
    const int64_t items = p->N * p->HV;
    if (items <= 0) return 0;
    int workers = fkda_cpu_thread_count(p->device.num_threads);
    if (workers > items) workers = (int)items;
    return (size_t)workers * worker_bytes(p);
}

fkda_status fkda_cpu_prefill_reference(const fkda_problem *p, const fkda_prefill_extras *extras, void *workspace,
                                       size_t bytes)
{
    const int64_t items = p->N * p->HV;
    if (items <= 0) return FKDA_OK;
    reference_job job = {p, extras, (char *)workspace, worker_bytes(p)};
    int workers = fkda_workers_for(fkda_cpu_thread_count(p->device.num_threads), p->device.num_threads <= 0, items,
                                   fkda_problem_work(p), job.worker_bytes, workspace ? bytes : 0);
    if (workers < 1)
        return fkda_fail(FKDA_ERROR_WORKSPACE,
                         "workspace: %zu bytes, the CPU reference prefill "
                         "needs at least %zu",
                         bytes, job.worker_bytes);
    fkda_parallel_for(workers, items, reference_item, &job);
    return FKDA_OK;
}

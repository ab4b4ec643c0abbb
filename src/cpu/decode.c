/*
 * decode.c: the CPU decode, the recurrent form over the few tokens of each sequence, with the
 * states read from and written back to a pool in place (the spec is the comment above
 * fkda_decode_args in flashkda.h).
 *
 * Work item: one (sequence, value head, block of value columns); the fast path runs in float32,
 * the reference (device.reference) in float64 with the whole of V per item. The item copies its
 * state block out of the pool into its workspace, runs the tokens, and writes the block back to
 * the slot(s) the indices name. Copying first makes a write to the slot it read from harmless,
 * and since every item touches only its own columns of its own head, items never race.
 *
 * Slots per sequence n:
 *   no state_indices   read and write slot n
 *   [N]                read and write slot idx[n]; negative: skip
 *   [N, T_max]         read slot idx[n, a_n - 1] (a_n = num_accepted_tokens[n], or 1); negative:
 *                      skip; after token t write slot idx[n, t] when it is >= 0
 * A skipped sequence reads and writes no state and gets zeros in its rows of out.
 */
#include <string.h>

#include "../core/error.h"
#include "activations.h"
#include "cpu_backend.h"
#include "cpu_internal.h"
#include "load.h"
#include "recurrent.h"
#include "state_io.h"
#include "thread_pool.h"

#define MIN_VBLOCK 32

typedef struct decode_plan {
    int threads;
    int64_t vblock, vblocks, items;
    size_t worker_bytes;
} decode_plan;

typedef struct decode_job {
    const fkda_problem *p;
    decode_plan plan;
    char *workspace;
} decode_job;

/* 2-D indices: the slot that receives the state after token t of sequence n (negative: none). */
static int64_t token_slot(const fkda_problem *p, int64_t n, int64_t t)
{
    const fkda_operand *idx = &p->state_indices;
    if (t >= p->indices_tokens) return -1;
    return fkda_read_index(idx, n * idx->stride[0] + t * idx->stride[1]);
}

static void zero_output(const fkda_problem *p, int64_t row, int64_t start, int64_t length, int64_t h, int64_t v0,
                        int64_t nv)
{
    for (int64_t t = start; t < start + length; t++) {
        const int64_t offset = fkda_token_offset(&p->out, row, t, h) + v0 * p->out.stride[3];
        for (int64_t j = 0; j < nv; j++)
            fkda_store_float(p->out.data, p->out.dtype, offset + j * p->out.stride[3], 0.0f);
    }
}

static size_t worker_bytes_float(int64_t K, int64_t nv)
{
    return fkda_align_up((size_t)(K * nv) * sizeof(float)) + 4 * fkda_align_up((size_t)K * sizeof(float)) +
           3 * fkda_align_up((size_t)nv * sizeof(float));
}

static decode_plan make_plan(const fkda_problem *p)
{
    decode_plan plan;
    plan.threads = fkda_cpu_thread_count(p->device.num_threads);
    const int64_t heads = p->N * p->HV;
    if (p->device.reference) {
        plan.vblock = p->V;
        plan.vblocks = 1;
        plan.worker_bytes = fkda_carve_double_scratch(NULL, p->K, p->V).bytes;
    } else {
        fkda_split_columns(plan.threads, heads, p->V, MIN_VBLOCK, &plan.vblock, &plan.vblocks);
        plan.worker_bytes = worker_bytes_float(p->K, plan.vblock);
    }
    plan.items = heads * plan.vblocks;
    return plan;
}

static void decode_item_float(const fkda_problem *p, char *slice, int64_t n, int64_t h, int64_t v0, int64_t nv,
                              int64_t slot)
{
    const int64_t K = p->K;
    fkda_carver c = {slice, 0};
    float *S = fkda_carve(&c, (size_t)(K * nv) * sizeof(float));
    float *q = fkda_carve(&c, (size_t)K * sizeof(float));
    float *k = fkda_carve(&c, (size_t)K * sizeof(float));
    float *a = fkda_carve(&c, (size_t)K * sizeof(float));
    float *bias = fkda_carve(&c, (size_t)K * sizeof(float));
    float *v = fkda_carve(&c, (size_t)nv * sizeof(float));
    float *u = fkda_carve(&c, (size_t)nv * sizeof(float));
    float *o = fkda_carve(&c, (size_t)nv * sizeof(float));

    int64_t row, start, length;
    fkda_sequence_bounds(p, n, &row, &start, &length);
    const fkda_head_gate_f gate = fkda_head_gate_float(p, h, bias);
    fkda_state_load_float(&p->state_in, slot, h, K, v0, nv, nv, S);
    for (int64_t t = 0; t < length; t++) {
        float b;
        fkda_token_float(p, &gate, row, start + t, h, q, k, a, &b);
        fkda_load_row_float(p->v.data, p->v.dtype, fkda_token_offset(&p->v, row, start + t, h) + v0 * p->v.stride[3],
                            p->v.stride[3], nv, v);
        fkda_recurrent_step_float(S, K, nv, q, k, a, b, v, p->scale, u, o);
        fkda_store_row_float(p->out.data, p->out.dtype,
                             fkda_token_offset(&p->out, row, start + t, h) + v0 * p->out.stride[3], p->out.stride[3],
                             nv, o);
        if (p->indices_per_token) {
            const int64_t w = token_slot(p, n, t);
            if (w >= 0) fkda_state_store_float(&p->state_out, w, h, K, v0, nv, nv, S);
        }
    }
    if (!p->indices_per_token) fkda_state_store_float(&p->state_out, slot, h, K, v0, nv, nv, S);
}

static void decode_item_double(const fkda_problem *p, char *slice, int64_t n, int64_t h, int64_t slot)
{
    const int64_t K = p->K, V = p->V;
    const fkda_double_scratch w = fkda_carve_double_scratch(slice, K, V);
    double *S = w.S, *q = w.q, *k = w.k, *a = w.a, *bias = w.bias, *v = w.v, *u = w.u, *o = w.o;

    int64_t row, start, length;
    fkda_sequence_bounds(p, n, &row, &start, &length);
    const fkda_head_gate_d gate = fkda_head_gate_double(p, h, bias);
    fkda_state_load_double(&p->state_in, slot, h, K, V, S);
    for (int64_t t = 0; t < length; t++) {
        double b;
        fkda_token_double(p, &gate, row, start + t, h, q, k, a, &b);
        fkda_load_row_double(p->v.data, p->v.dtype, fkda_token_offset(&p->v, row, start + t, h), p->v.stride[3], V, v);
        fkda_recurrent_step_double(S, K, V, q, k, a, b, v, (double)p->scale, u, o);
        fkda_store_row_double(p->out.data, p->out.dtype, fkda_token_offset(&p->out, row, start + t, h),
                              p->out.stride[3], V, o);
        if (p->indices_per_token) {
            const int64_t w = token_slot(p, n, t);
            if (w >= 0) fkda_state_store_double(&p->state_out, w, h, K, V, S);
        }
    }
    if (!p->indices_per_token) fkda_state_store_double(&p->state_out, slot, h, K, V, S);
}

static void decode_item(void *context, int64_t item, int worker)
{
    const decode_job *job = (const decode_job *)context;
    const fkda_problem *p = job->p;
    const int64_t head_item = item / job->plan.vblocks, block = item % job->plan.vblocks;
    const int64_t n = head_item / p->HV, h = head_item % p->HV;
    const int64_t v0 = block * job->plan.vblock;
    const int64_t nv = p->V - v0 < job->plan.vblock ? p->V - v0 : job->plan.vblock;
    char *slice = job->workspace + (size_t)worker * job->plan.worker_bytes;

    const int64_t slot = fkda_decode_read_slot(p, n);
    if (slot < 0) {
        int64_t row, start, length;
        fkda_sequence_bounds(p, n, &row, &start, &length);
        zero_output(p, row, start, length, h, v0, nv);
        return;
    }
    if (p->device.reference)
        decode_item_double(p, slice, n, h, slot);
    else
        decode_item_float(p, slice, n, h, v0, nv, slot);
}

size_t fkda_cpu_decode_workspace(const fkda_problem *p)
{
    const decode_plan plan = make_plan(p);
    if (plan.items <= 0) return 0;
    const int64_t workers = plan.threads < plan.items ? plan.threads : plan.items;
    return (size_t)workers * plan.worker_bytes;
}

fkda_status fkda_cpu_decode(const fkda_problem *p, void *workspace, size_t workspace_bytes)
{
    decode_job job;
    job.p = p;
    job.plan = make_plan(p);
    job.workspace = (char *)workspace;
    if (job.plan.items <= 0) return FKDA_OK;
    int workers = fkda_workers_for(job.plan.threads, p->device.num_threads <= 0, job.plan.items, fkda_problem_work(p),
                                   job.plan.worker_bytes, workspace ? workspace_bytes : 0);
    if (workers < 1)
        return fkda_fail(FKDA_ERROR_WORKSPACE,
                         "workspace: %zu bytes, the CPU decode needs at "
                         "least %zu",
                         workspace_bytes, job.plan.worker_bytes);
    fkda_parallel_for(workers, job.plan.items, decode_item, &job);
    return FKDA_OK;
}

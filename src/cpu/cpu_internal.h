/*
 * cpu_internal.h: what the CPU backend's files share: the per-algorithm entry points behind
 * cpu_backend.h, and the carving of a workspace into 64-byte aligned per-worker slices.
 *
 * Every algorithm sizes its workspace as (workers x bytes per worker), where the worker count
 * comes from p->device.num_threads (0: the online cores) capped by the number of work items.
 * At run time it may use fewer when there is little work (see fkda_workers_for). The dispatch
 * layer has already rejected a workspace smaller than the size query's answer; the worker cap
 * by workspace size inside fkda_workers_for is only a second line of defence.
 */
#ifndef FKDA_CPU_INTERNAL_H
#define FKDA_CPU_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "../core/problem.h"

struct fkda_prefill_extras; /* prefill_states.h */

size_t fkda_cpu_prefill_reference_workspace(const fkda_problem *p);
fkda_status fkda_cpu_prefill_reference(const fkda_problem *p, const struct fkda_prefill_extras *extras, void *workspace,
                                       size_t bytes);

size_t fkda_cpu_prefill_chunked_workspace(const fkda_problem *p);
fkda_status fkda_cpu_prefill_chunked(const fkda_problem *p, const struct fkda_prefill_extras *extras, void *workspace,
                                     size_t bytes);

/* Elementwise loops (activations, decays) compiled three times, for the baseline x86-64, AVX2
 * and AVX-512, with the loader picking one (GCC's target_clones, an ifunc): the same C, 4, 8 or
 * 16 floats per instruction, the same arithmetic (under -std=c11 no multiply-add is fused, and
 * no reduction order depends on the vector width). Elsewhere, and under ThreadSanitizer
 * (whose runtime is not ready when the loader runs the ifunc resolvers): the plain function. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__) && \
    !defined(__SANITIZE_THREAD__)
#define FKDA_VECTOR_CLONES __attribute__((target_clones("default", "arch=x86-64-v3", "arch=x86-64-v4")))
#else
#define FKDA_VECTOR_CLONES
#endif

#define FKDA_CPU_ALIGN 64

static inline size_t fkda_align_up(size_t n) { return (n + FKDA_CPU_ALIGN - 1) & ~(size_t)(FKDA_CPU_ALIGN - 1); }

/* Hands out consecutive aligned pieces of one worker's slice. With a NULL base it only counts
 * (the pieces are NULL), which is how the workspace functions size a slice with the same code
 * that carves it. */
typedef struct fkda_carver {
    char *base;
    size_t used;
} fkda_carver;

static inline void *fkda_carve(fkda_carver *c, size_t bytes)
{
    void *p = c->base ? c->base + c->used : NULL;
    c->used += fkda_align_up(bytes);
    return p;
}

/* One worker's float64 buffers for the token-by-token recurrence (the reference prefill and the
 * reference decode): the state [K][V] and the vectors of one token. Carved from a NULL base it
 * only sizes the slice (`bytes`). */
typedef struct fkda_double_scratch {
    double *S, *q, *k, *a, *bias, *v, *u, *o;
    size_t bytes;
} fkda_double_scratch;

static inline fkda_double_scratch fkda_carve_double_scratch(char *base, int64_t K, int64_t V)
{
    fkda_carver c = {base, 0};
    fkda_double_scratch w;
    w.S = (double *)fkda_carve(&c, (size_t)(K * V) * sizeof(double));
    w.q = (double *)fkda_carve(&c, (size_t)K * sizeof(double));
    w.k = (double *)fkda_carve(&c, (size_t)K * sizeof(double));
    w.a = (double *)fkda_carve(&c, (size_t)K * sizeof(double));
    w.bias = (double *)fkda_carve(&c, (size_t)K * sizeof(double));
    w.v = (double *)fkda_carve(&c, (size_t)V * sizeof(double));
    w.u = (double *)fkda_carve(&c, (size_t)V * sizeof(double));
    w.o = (double *)fkda_carve(&c, (size_t)V * sizeof(double));
    w.bytes = c.used;
    return w;
}

/* Starting a thread costs some tens of microseconds, about the time of this many units of work
 * (a unit: one state element for one token, i.e. K * V per token and head). When the caller
 * leaves the thread count to the library (num_threads = 0), a call with little work starts
 * fewer threads (decode of a few sequences runs on the caller's thread); an explicit count is
 * taken as given. */
#define FKDA_WORK_PER_WORKER ((int64_t)1 << 20)

/* Workers to use: min(threads, items) (and, when auto_threads, at most one per
 * FKDA_WORK_PER_WORKER units of work) but at least one, then as many as the workspace holds
 * (0: too small). */
static inline int fkda_workers_for(int threads, int auto_threads, int64_t items, int64_t work, size_t worker_bytes,
                                   size_t workspace_bytes)
{
    int64_t w = threads < items ? threads : items;
    if (auto_threads && w > work / FKDA_WORK_PER_WORKER) w = work / FKDA_WORK_PER_WORKER;
    if (w < 1) w = 1;
    if (worker_bytes > 0 && (int64_t)(workspace_bytes / worker_bytes) < w)
        w = (int64_t)(workspace_bytes / worker_bytes);
    return (int)w;
}

/* The units of work of a problem (see FKDA_WORK_PER_WORKER): every token of every row. */
static inline int64_t fkda_problem_work(const fkda_problem *p) { return p->B * p->T * p->HV * p->K * p->V; }

/* How many blocks to split the V value columns of each of `heads` (sequence, head) pairs into:
 * none when there are at least as many pairs as threads (splitting costs recomputation), else
 * enough to give every thread an item, but no block narrower than min_block columns. Blocks are
 * whole multiples of 16 columns (vector width) except the last. */
static inline void fkda_split_columns(int threads, int64_t heads, int64_t V, int64_t min_block, int64_t *vblock,
                                      int64_t *vblocks)
{
    int64_t blocks = 1;
    if (heads > 0 && heads < threads) {
        blocks = (threads + heads - 1) / heads;
        int64_t most = (V + min_block - 1) / min_block;
        if (blocks > most) blocks = most;
    }
    int64_t width = (V + blocks - 1) / blocks;
    if (blocks > 1) width = (width + 15) / 16 * 16;
    if (width > V) width = V;
    if (width < 1) width = 1;
    *vblock = width;
    *vblocks = (V + width - 1) / width;
}

#endif /* FKDA_CPU_INTERNAL_H */

/*
 * thread_pool.h: a parallel-for over independent work items, on threads created for the call.
 *
 * A call starts (num_workers - 1) threads and the calling thread is worker 0; each worker takes
 * the next unclaimed item from a shared atomic counter until none is left, then every thread is
 * joined before the call returns. Threads per call cost some tens of microseconds, which is
 * small beside any problem worth threading, and leave nothing alive between calls (no shutdown,
 * no fork hazards, clean under the sanitizers). If a thread cannot be started, the workers that
 * did start (at least the caller) do all the items: the result is the same, only slower.
 *
 * The worker index (0 .. num_workers-1) lets each item use its worker's slice of the workspace.
 */
#ifndef FKDA_CPU_THREAD_POOL_H
#define FKDA_CPU_THREAD_POOL_H

#include <stdint.h>

typedef void (*fkda_work_fn)(void *context, int64_t item, int worker);

/* Runs fn(context, item, worker) for every item in [0, num_items), on at most num_workers
 * workers (fewer when there are fewer items). */
void fkda_parallel_for(int num_workers, int64_t num_items, fkda_work_fn fn, void *context);

/* The worker count for a requested num_threads: itself when > 0, else the online cores. */
int fkda_cpu_thread_count(int32_t requested);

#endif /* FKDA_CPU_THREAD_POOL_H */

/*
 * thread_pool.h: a parallel-for over independent work items, on a pool of threads kept between calls.
 *
 * The calling thread is worker 0 and pool threads 1 .. num_workers-1 join it; each worker takes the
 * next unclaimed item from a shared atomic counter until none is left, and the call returns when
 * every worker is done. The threads stay alive, asleep, between calls, because starting them per
 * call costs tens of microseconds, which is most of a small decode step. The pool is created on the
 * first call and grows when a call asks for more workers than it has (up to a fixed cap).
 *
 * The rules that keep it safe:
 *   - One call uses the pool at a time. A call that finds it busy (another host thread is in the
 *     library, or a work item itself calls in) runs on threads started for that call instead, the
 *     way every call did before the pool: concurrent callers stay parallel and nothing deadlocks.
 *   - fork(): the pool waits for a pool call in progress to end and stops its threads first, so
 *     the child inherits no pool (whose threads would not exist there) and no lock or condition
 *     variable those threads were using; parent and child each grow a new pool on their next call.
 *   - The library's destructor (dlclose, exit) stops and joins the idle threads.
 *   - Pool threads block the asynchronous signals, so those go to the program's own threads.
 * If a thread cannot be started, the workers that did start (at least the caller) do all the items:
 * the result is the same, only slower.
 *
 * The worker index (0 .. num_workers-1) lets each item use its worker's slice of the workspace: no
 * two items run at the same time with the same index, and an item's result does not depend on
 * which worker ran it, so results are the same bitwise for any number of workers.
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

/* thread_pool.c: see thread_pool.h. */
#define _POSIX_C_SOURCE 200809L
#include "thread_pool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <unistd.h>

/* More threads than this are never useful here and would only cost stack memory. */
#define FKDA_MAX_WORKERS 256

typedef struct parallel_job {
    fkda_work_fn fn;
    void *context;
    int64_t num_items;
    atomic_int_fast64_t next_item;
} parallel_job;

typedef struct worker_arg {
    parallel_job *job;
    int worker;
} worker_arg;

static void run_items(parallel_job *job, int worker)
{
    for (;;) {
        int64_t item = (int64_t)atomic_fetch_add_explicit(&job->next_item, 1, memory_order_relaxed);
        if (item >= job->num_items) return;
        job->fn(job->context, item, worker);
    }
}

static void *worker_main(void *arg)
{
    worker_arg *w = (worker_arg *)arg;
    run_items(w->job, w->worker);
    return NULL;
}

void fkda_parallel_for(int num_workers, int64_t num_items, fkda_work_fn fn, void *context)
{
    if (num_items <= 0) return;
    if (num_workers > FKDA_MAX_WORKERS) num_workers = FKDA_MAX_WORKERS;
    if ((int64_t)num_workers > num_items) num_workers = (int)num_items;
    if (num_workers <= 1) {
        for (int64_t i = 0; i < num_items; i++) fn(context, i, 0);
        return;
    }

    parallel_job job;
    job.fn = fn;
    job.context = context;
    job.num_items = num_items;
    atomic_init(&job.next_item, 0);

    pthread_t threads[FKDA_MAX_WORKERS];
    worker_arg args[FKDA_MAX_WORKERS];
    int started = 0;
    /* Worker indices are handed out densely: a thread that fails to start leaves no gap, so the
     * workspace slices in use are always 0 .. started. */
    for (int w = 1; w < num_workers; w++) {
        args[started + 1].job = &job;
        args[started + 1].worker = started + 1;
        if (pthread_create(&threads[started + 1], NULL, worker_main, &args[started + 1]) != 0)
            break;
        started++;
    }
    run_items(&job, 0);
    for (int w = 1; w <= started; w++) pthread_join(threads[w], NULL);
}

int fkda_cpu_thread_count(int32_t requested)
{
    if (requested > 0) return requested > FKDA_MAX_WORKERS ? FKDA_MAX_WORKERS : (int)requested;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    if (cores < 1) return 1;
    return cores > FKDA_MAX_WORKERS ? FKDA_MAX_WORKERS : (int)cores;
}

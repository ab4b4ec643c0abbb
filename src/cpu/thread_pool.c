/* thread_pool.c: see thread_pool.h. */
#define _POSIX_C_SOURCE 200809L
#include "thread_pool.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <unistd.h>

/* More threads than this are never useful here and would only cost stack memory. */
#define FKDA_MAX_WORKERS 256

typedef struct parallel_job {
    fkda_work_fn fn;
    void *context;
    int64_t num_items;
    atomic_int_fast64_t next_item;
} parallel_job;

static void run_items(parallel_job *job, int worker)
{
    for (;;) {
        int64_t item = (int64_t)atomic_fetch_add_explicit(&job->next_item, 1, memory_order_relaxed);
        if (item >= job->num_items) return;
        job->fn(job->context, item, worker);
    }
}

/* ---- threads started for one call (when the pool is busy) ----------------------------------- */

typedef struct call_thread_arg {
    parallel_job *job;
    int worker;
} call_thread_arg;

static void *call_thread_main(void *arg)
{
    call_thread_arg *a = (call_thread_arg *)arg;
    run_items(a->job, a->worker);
    return NULL;
}

static void run_on_call_threads(parallel_job *job, int num_workers)
{
    pthread_t threads[FKDA_MAX_WORKERS];
    call_thread_arg args[FKDA_MAX_WORKERS];
    int started = 0;
    /* Worker indices are handed out densely: a thread that fails to start leaves no gap, so the
     * workspace slices in use are always 0 .. started. */
    for (int w = 1; w < num_workers; w++) {
        args[started + 1].job = job;
        args[started + 1].worker = started + 1;
        if (pthread_create(&threads[started + 1], NULL, call_thread_main, &args[started + 1]) != 0) break;
        started++;
    }
    run_items(job, 0);
    for (int w = 1; w <= started; w++) pthread_join(threads[w], NULL);
}

/* ---- the pool --------------------------------------------------------------------------------- */

typedef struct pool_thread {
    pthread_t handle;
    int worker;                /* its worker index, 1 .. */
    uint64_t start_generation; /* the job generation when it was started: it waits for the next */
} pool_thread;

/* `busy` is held by the one call using the pool, for the whole call (and by fork, see below), and
 * guards the thread list; `lock` guards the job fields and goes with the two condition variables. */
static pthread_mutex_t pool_busy = PTHREAD_MUTEX_INITIALIZER;
static pool_thread pool_threads[FKDA_MAX_WORKERS]; /* [1 .. pool_size) are alive */
static int pool_size = 1;                          /* workers including the caller */

static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t pool_wake = PTHREAD_COND_INITIALIZER; /* a new job, or shutdown */
static pthread_cond_t pool_done = PTHREAD_COND_INITIALIZER; /* the last pool worker finished */
static uint64_t pool_generation;                            /* counts jobs posted */
static parallel_job *pool_job;
static int pool_job_workers; /* workers in the current job */
static int pool_pending;     /* pool workers still in the job */
static bool pool_shutdown;

static void *pool_thread_main(void *arg)
{
    const pool_thread *self = (const pool_thread *)arg;
    const int worker = self->worker;
    pthread_mutex_lock(&pool_lock);
    uint64_t seen = self->start_generation;
    for (;;) {
        while (pool_generation == seen && !pool_shutdown) pthread_cond_wait(&pool_wake, &pool_lock);
        if (pool_shutdown) break;
        seen = pool_generation;
        /* Threads beyond this job's worker count sit it out. */
        if (worker >= pool_job_workers) continue;
        parallel_job *job = pool_job;
        pthread_mutex_unlock(&pool_lock);
        run_items(job, worker);
        pthread_mutex_lock(&pool_lock);
        if (--pool_pending == 0) pthread_cond_signal(&pool_done);
    }
    pthread_mutex_unlock(&pool_lock);
    return NULL;
}

/* Wakes the pool threads with the shutdown flag and joins them; the caller holds pool_busy. */
static void pool_stop_threads(void)
{
    pthread_mutex_lock(&pool_lock);
    pool_shutdown = true;
    pthread_cond_broadcast(&pool_wake);
    pthread_mutex_unlock(&pool_lock);
    for (int w = 1; w < pool_size; w++) pthread_join(pool_threads[w].handle, NULL);
    pool_size = 1;
    pthread_mutex_lock(&pool_lock);
    pool_shutdown = false;
    pthread_mutex_unlock(&pool_lock);
}

/* fork(): the prepare handler waits for a pool call in progress to end and stops the pool threads,
 * so the child inherits no lock, condition variable or thread list that refers to threads it does
 * not have (a condition variable with waiters that no longer exist can block its next broadcast).
 * Parent and child both start again with no pool and grow one on their next call. */
static void pool_before_fork(void)
{
    pthread_mutex_lock(&pool_busy);
    pool_stop_threads();
}

static void pool_after_fork(void) { pthread_mutex_unlock(&pool_busy); }

static pthread_once_t pool_atfork_once = PTHREAD_ONCE_INIT;
static bool pool_atfork_ok;

static void pool_register_atfork(void)
{
    pool_atfork_ok = pthread_atfork(pool_before_fork, pool_after_fork, pool_after_fork) == 0;
}

/* Starts pool threads until there are num_workers workers or a thread fails to start; returns the
 * workers there are, at most num_workers. The caller holds pool_busy. */
static int pool_grow(int num_workers)
{
    if (pool_size < num_workers) {
        /* Threads inherit the signal mask: block the asynchronous signals while starting them.
         * The synchronous ones stay open, since a fault in a blocked thread kills the process
         * without running the handlers that report it (a sanitizer's, for one). */
        sigset_t async_signals, old;
        sigfillset(&async_signals);
        const int synchronous[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGSYS, SIGABRT};
        for (size_t i = 0; i < sizeof synchronous / sizeof synchronous[0]; i++)
            sigdelset(&async_signals, synchronous[i]);
        pthread_sigmask(SIG_BLOCK, &async_signals, &old);
        pthread_mutex_lock(&pool_lock);
        const uint64_t generation = pool_generation;
        pthread_mutex_unlock(&pool_lock);
        while (pool_size < num_workers) {
            pool_thread *t = &pool_threads[pool_size];
            t->worker = pool_size;
            t->start_generation = generation;
            if (pthread_create(&t->handle, NULL, pool_thread_main, t) != 0) break;
            pool_size++;
        }
        pthread_sigmask(SIG_SETMASK, &old, NULL);
    }
    return pool_size < num_workers ? pool_size : num_workers;
}

static void run_on_pool(parallel_job *job, int num_workers)
{
    pthread_mutex_lock(&pool_lock);
    pool_job = job;
    pool_job_workers = num_workers;
    pool_pending = num_workers - 1;
    pool_generation++;
    pthread_cond_broadcast(&pool_wake);
    pthread_mutex_unlock(&pool_lock);

    run_items(job, 0);

    pthread_mutex_lock(&pool_lock);
    while (pool_pending > 0) pthread_cond_wait(&pool_done, &pool_lock);
    pool_job = NULL;
    pthread_mutex_unlock(&pool_lock);
}

/* dlclose or exit: idle threads must not outlive the library's code. A call still in progress on
 * another thread keeps its pool (the process is exiting under it anyway). */
__attribute__((destructor)) static void pool_stop(void)
{
    if (pthread_mutex_trylock(&pool_busy) != 0) return;
    pool_stop_threads();
    pthread_mutex_unlock(&pool_busy);
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

    pthread_once(&pool_atfork_once, pool_register_atfork);
    /* Without the fork handlers a child could inherit a pool it does not have: no pool then. */
    if (!pool_atfork_ok || pthread_mutex_trylock(&pool_busy) != 0) {
        run_on_call_threads(&job, num_workers);
        return;
    }
    int workers = pool_grow(num_workers);
    if (workers > 1)
        run_on_pool(&job, workers);
    else
        run_items(&job, 0);
    pthread_mutex_unlock(&pool_busy);
}

int fkda_cpu_thread_count(int32_t requested)
{
    if (requested > 0) return requested > FKDA_MAX_WORKERS ? FKDA_MAX_WORKERS : (int)requested;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    if (cores < 1) return 1;
    return cores > FKDA_MAX_WORKERS ? FKDA_MAX_WORKERS : (int)cores;
}

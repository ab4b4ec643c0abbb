/*
 * test_thread_pool.c: the CPU backend's persistent thread pool (src/cpu/thread_pool.c, compiled
 * into this test): every item runs once, no two items share a worker index at the same time, the
 * pool grows to the workers asked for, concurrent and nested callers and fork() children get their
 * parallel-for done, and fkda_prefill gives the same bytes on 1 thread, on 4, and from 4 host
 * threads at once.
 *
 * A hang (a deadlock in the pool) ends the test through alarm() in a forked child and a bounded
 * wait for it in the parent, so it fails instead of waiting.
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "test_util.h"
#include "thread_pool.h"

/* AddressSanitizer's runtime (GCC's at least) takes an internal lock of its thread registry when
 * a thread starts or ends and does not reset it in a fork() child: a fork while another thread
 * is creating one leaves the child's first pthread_create waiting on that lock forever, with
 * signals blocked, so not even alarm() ends it. A sanitizer limitation, not the pool's. */
#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif
#ifndef UNDER_ASAN
#define UNDER_ASAN 0
#endif

#define CHILD_WAIT_SECONDS 60 /* the parent's bound on a child that alarm() cannot end */

#define MAX_ITEMS 4096
#define MAX_WORKERS 64

/* ---- one parallel-for, checked ------------------------------------------------------------------ */

/* What a call's items record. Checks run after the call, in the calling thread, because CHECK's
 * counters are not thread-safe. */
typedef struct call_record {
    int num_workers;
    int64_t num_items;
    int rendezvous;             /* items wait until this many of them run at once (0: no) */
    atomic_int runs[MAX_ITEMS]; /* times each item ran */
    double value[MAX_ITEMS];    /* a result that depends only on the item */
    atomic_int slot_in_use[MAX_WORKERS];
    atomic_int worker_out_of_range;
    atomic_int slot_shared; /* two items ran at once with the same worker index */
    atomic_int in_flight;
    atomic_int rendezvous_missed; /* the wanted concurrency never came (within seconds) */
    atomic_int nested_failures;   /* set by nested_item */
} call_record;

static double item_value(int64_t item)
{
    double x = 0.0;
    for (int i = 1; i <= 200; i++) x += sin((double)(item * 7 + i)) / i;
    return x;
}

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void record_item(void *context, int64_t item, int worker)
{
    call_record *rec = (call_record *)context;
    if (worker < 0 || worker >= rec->num_workers || worker >= MAX_WORKERS) {
        atomic_fetch_add(&rec->worker_out_of_range, 1);
        return;
    }
    if (atomic_exchange(&rec->slot_in_use[worker], 1) != 0) atomic_fetch_add(&rec->slot_shared, 1);
    atomic_fetch_add(&rec->runs[item], 1);
    if (rec->rendezvous > 0) {
        /* Only rendezvous workers running at once can all get past this. */
        atomic_fetch_add(&rec->in_flight, 1);
        double deadline = now_seconds() + 10.0;
        while (atomic_load(&rec->in_flight) < rec->rendezvous) {
            if (now_seconds() > deadline) {
                atomic_fetch_add(&rec->rendezvous_missed, 1);
                break;
            }
            sched_yield();
        }
    }
    rec->value[item] = item_value(item);
    atomic_store(&rec->slot_in_use[worker], 0);
}

static void record_init(call_record *rec, int num_workers, int64_t num_items, int rendezvous)
{
    memset(rec, 0, sizeof *rec);
    rec->num_workers = num_workers;
    rec->num_items = num_items;
    rec->rendezvous = rendezvous;
    for (int64_t i = 0; i < num_items; i++) rec->value[i] = NAN;
}

/* 0 when the call did everything right; else a count of what went wrong (and prints it). */
static int record_errors(const call_record *rec, const char *label)
{
    int errors = 0;
    for (int64_t i = 0; i < rec->num_items; i++) {
        int runs = atomic_load(&rec->runs[i]);
        if (runs != 1) {
            if (errors < 5) fprintf(stderr, "%s: item %lld ran %d times\n", label, (long long)i, runs);
            errors++;
        } else if (memcmp(&rec->value[i], &(double){item_value(i)}, sizeof(double)) != 0) {
            if (errors < 5) fprintf(stderr, "%s: item %lld has a different result\n", label, (long long)i);
            errors++;
        }
    }
    const int out_of_range = atomic_load(&rec->worker_out_of_range);
    const int shared = atomic_load(&rec->slot_shared);
    const int missed = atomic_load(&rec->rendezvous_missed);
    const int nested = atomic_load(&rec->nested_failures);
    if (out_of_range || shared || missed || nested)
        fprintf(stderr,
                "%s: %d worker indices out of range, %d shared slots, %d rendezvous missed, "
                "%d nested failures\n",
                label, out_of_range, shared, missed, nested);
    return errors + out_of_range + shared + missed + nested;
}

static int run_checked(call_record *rec, int num_workers, int64_t num_items, int rendezvous, const char *label)
{
    record_init(rec, num_workers, num_items, rendezvous);
    fkda_parallel_for(num_workers, num_items, record_item, rec);
    return record_errors(rec, label);
}

/* ---- the cases ----------------------------------------------------------------------------------- */

static call_record main_record;

static void many_calls_in_a_row(void)
{
    static const int workers[] = {2, 3, 4, 8, 1, 5, 16, 2};
    static const int64_t items[] = {1, 2, 7, 64, 1000, 3, 4096, 17};
    int errors = 0;
    for (int i = 0; i < 400; i++) {
        char label[64];
        snprintf(label, sizeof label, "call %d in a row", i);
        errors += run_checked(&main_record, workers[i % 8], items[(i / 8) % 8], 0, label);
    }
    CHECK(errors == 0, "many calls in a row: %d errors", errors);
}

/* Every one of num_workers items waits for all the others: only num_workers distinct workers
 * running at once finish it, so the pool must have grown to num_workers. */
static void grows_to_the_workers_asked(void)
{
    static const int workers[] = {2, 8, 3, 16, 4};
    for (int i = 0; i < 5; i++) {
        int errors = run_checked(&main_record, workers[i], workers[i], workers[i], "rendezvous");
        CHECK(errors == 0, "%d workers did not all run at once (%d errors)", workers[i], errors);
    }
}

static void nested_item(void *context, int64_t item, int worker)
{
    call_record *outer = (call_record *)context;
    call_record *inner = malloc(sizeof *inner);
    if (!inner || run_checked(inner, 3, 50, 3, "nested") != 0) atomic_fetch_add(&outer->nested_failures, 1);
    free(inner);
    record_item(context, item, worker);
}

static void nested_calls(void)
{
    record_init(&main_record, 4, 8, 0);
    fkda_parallel_for(4, 8, nested_item, &main_record);
    CHECK(record_errors(&main_record, "nested") == 0, "a parallel-for inside a work item failed");
}

typedef struct caller {
    pthread_t thread;
    int index;
    int errors;
    atomic_int *stop; /* run until set (NULL: a fixed number of calls) */
    call_record rec;
} caller;

static void *caller_main(void *arg)
{
    caller *c = (caller *)arg;
    for (int i = 0; (c->stop ? !atomic_load(c->stop) : i < 150); i++) {
        int workers = 2 + (c->index + i) % 4;
        /* Every tenth call needs its workers at once: a busy pool must not make a caller serial. */
        int rendezvous = i % 10 == 0 ? workers : 0;
        c->errors += run_checked(&c->rec, workers, rendezvous ? workers : 100 + 37 * c->index, rendezvous,
                                 "concurrent caller");
    }
    return NULL;
}

static void concurrent_callers(void)
{
    caller *callers = calloc(4, sizeof *callers);
    for (int i = 0; i < 4; i++) {
        callers[i].index = i;
        CHECK(pthread_create(&callers[i].thread, NULL, caller_main, &callers[i]) == 0, "pthread_create");
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(callers[i].thread, NULL);
        CHECK(callers[i].errors == 0, "concurrent caller %d: %d errors", i, callers[i].errors);
    }
    free(callers);
}

/* The child of a fork has none of the parent's pool threads; its calls must still finish. */
static void child_after_fork(const char *label)
{
    fflush(NULL);
    pid_t pid = fork();
    CHECK(pid >= 0, "fork");
    if (pid == 0) {
        alarm(20);
        int errors = run_checked(&main_record, 4, 4, 4, "child rendezvous");
        errors += run_checked(&main_record, 6, 1000, 0, "child");
        _exit(errors == 0 ? 0 : 1);
    }
    int status = 0;
    pid_t done = 0;
    for (int ms = 0; ms < CHILD_WAIT_SECONDS * 1000 && (done = waitpid(pid, &status, WNOHANG)) == 0; ms += 10)
        nanosleep(&(struct timespec){0, 10000000}, NULL);
    if (done == 0) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
        CHECK(0, "%s: the child did not finish within %d s (killed): a hang", label, CHILD_WAIT_SECONDS);
        return;
    }
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "%s: the child's parallel-for failed (status %d%s)", label,
          status, WIFSIGNALED(status) ? ", killed by a signal: a hang?" : "");
}

static void fork_children(void)
{
    /* The pool exists here (the calls above made it). */
    child_after_fork("fork with an idle pool");

    /* Forks while another thread keeps the pool busy (its pool may be starting threads). */
    if (UNDER_ASAN) {
        printf("fork during calls on another thread: skipped under AddressSanitizer (see UNDER_ASAN)\n");
        return;
    }
    atomic_int stop;
    atomic_init(&stop, 0);
    caller *busy = calloc(1, sizeof *busy);
    busy->stop = &stop;
    CHECK(pthread_create(&busy->thread, NULL, caller_main, busy) == 0, "pthread_create");
    for (int i = 0; i < 10; i++) {
        child_after_fork("fork during calls on another thread");
        nanosleep(&(struct timespec){0, 1000000}, NULL);
    }
    atomic_store(&stop, 1);
    pthread_join(busy->thread, NULL);
    CHECK(busy->errors == 0, "the thread calling during forks: %d errors", busy->errors);
    free(busy);
}

/* ---- through the library: fkda_prefill on 1 thread, on 4, and from 4 host threads at once -------- */

typedef struct prefill_run {
    pthread_t thread;
    const test_kda_inputs *in;
    const test_kda_spec *spec;
    int threads;
    int status;
    float *out; /* [B, T, HV, V] */
} prefill_run;

static void *prefill_main(void *arg)
{
    prefill_run *r = (prefill_run *)arg;
    const test_kda_spec *sp = r->spec;
    const int64_t shape[4] = {sp->B, sp->T, sp->HV, sp->V};
    size_t count = (size_t)(sp->B * sp->T * sp->HV * sp->V);
    r->out = malloc(count * sizeof(float));
    for (size_t i = 0; i < count; i++) r->out[i] = NAN;
    fkda_prefill_args args;
    memset(&args, 0, sizeof args);
    args.q = r->in->q;
    args.k = r->in->k;
    args.v = r->in->v.t;
    args.g = r->in->g.t;
    args.beta = r->in->beta.t;
    args.A_log = r->in->A_log.t;
    args.dt_bias = r->in->dt_bias.t;
    args.cu_seqlens = r->in->cu_seqlens.t;
    args.initial_state = test_absent();
    args.final_state = test_absent();
    args.out = fkda_make_tensor(r->out, FKDA_DTYPE_F32, 4, shape);
    args.options = sp->options;
    fkda_device device = {FKDA_DEVICE_CPU, 0, NULL, r->threads, 0};
    size_t bytes = 0;
    r->status = fkda_prefill_workspace_size(&args, &device, &bytes);
    if (r->status != FKDA_OK) return NULL;
    void *workspace = bytes ? aligned_alloc(256, (bytes + 255) / 256 * 256) : NULL;
    r->status = fkda_prefill(&args, &device, workspace, bytes);
    free(workspace);
    return NULL;
}

static void prefill_same_bytes(test_rng *rng)
{
    test_kda_spec spec;
    memset(&spec, 0, sizeof spec);
    spec.B = 2;
    spec.T = 300;
    spec.H = 4;
    spec.HV = 4;
    spec.K = 64;
    spec.V = 64;
    spec.io_dtype = spec.g_dtype = spec.beta_dtype = spec.param_dtype = FKDA_DTYPE_F32;
    spec.has_A_log = spec.has_dt_bias = 1;
    spec.g_mean = -2.0;
    spec.g_std = 1.5;
    spec.options = fkda_default_options();
    spec.options.gate = FKDA_GATE_LOWER_BOUND;
    spec.options.lower_bound = -5.0;
    spec.options.use_qk_l2norm = 1;
    spec.options.use_beta_sigmoid = 1;
    test_kda_inputs in;
    test_kda_inputs_make(&spec, rng, &in);
    const size_t bytes = (size_t)(spec.B * spec.T * spec.HV * spec.V) * sizeof(float);

    prefill_run single = {.in = &in, .spec = &spec, .threads = 1};
    prefill_main(&single);
    CHECK(single.status == FKDA_OK, "prefill on 1 thread: %s", fkda_last_error());
    size_t unwritten = 0;
    for (size_t i = 0; i < bytes / sizeof(float); i++) unwritten += !isfinite(single.out[i]);
    CHECK(unwritten == 0, "prefill on 1 thread left %zu outputs unwritten (or not finite)", unwritten);

    for (int round = 0; round < 3; round++) {
        prefill_run runs[4];
        for (int i = 0; i < 4; i++) {
            runs[i] = (prefill_run){.in = &in, .spec = &spec, .threads = 4};
            CHECK(pthread_create(&runs[i].thread, NULL, prefill_main, &runs[i]) == 0, "pthread_create");
        }
        for (int i = 0; i < 4; i++) {
            pthread_join(runs[i].thread, NULL);
            CHECK(runs[i].status == FKDA_OK, "concurrent prefill %d failed", i);
            CHECK(memcmp(runs[i].out, single.out, bytes) == 0,
                  "concurrent prefill %d (4 threads) differs from the 1-thread run", i);
            free(runs[i].out);
        }
    }
    free(single.out);
    test_kda_inputs_free(&in);
}

int main(void)
{
    /* A deadlock fails the test instead of hanging it; FKDA_TEST_ALARM gives slow tools
     * (valgrind) longer. */
    const char *alarm_env = getenv("FKDA_TEST_ALARM");
    alarm(alarm_env ? (unsigned)atoi(alarm_env) : 300u);
    test_rng rng;
    test_rng_seed(&rng, test_seed_from_env());
    many_calls_in_a_row();
    grows_to_the_workers_asked();
    nested_calls();
    concurrent_callers();
    fork_children();
    many_calls_in_a_row(); /* the parent's pool still works after the forks */
    prefill_same_bytes(&rng);
    return test_exit("test_thread_pool");
}

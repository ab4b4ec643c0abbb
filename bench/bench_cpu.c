/*
 * bench_cpu.c: throughput of the CPU prefill, fast path against the float64 reference.
 *
 *   bench_cpu [--B 1] [--T 4096] [--H 4] [--HV H] [--K 128] [--V 128] [--threads 0] [--reps 5]
 *             [--no-reference]
 *
 * Inputs are float32, the safe gate (lower_bound -5 with A_log and dt_bias), beta sigmoid, q/k
 * L2 norm, no initial state, a float32 final state: the configuration of Kimi Linear prefill.
 * It prints, for each path, the best time of --reps runs (the reference runs once), tokens/s
 * (B*T per second) and GFLOP/s, then the relative Frobenius error of the fast path's output and
 * final state against the reference's.
 *
 * FLOP count: 6*K*V per token and value head, the useful work of the recurrent form
 * (S^T k: 2KV, the rank-one update k u^T: 2KV, S^T q: 2KV), ignoring the decay (KV) and the
 * O(K + V) terms. Both paths are charged the same count, so their GFLOP/s compare directly;
 * the chunked path performs a similar amount of arithmetic in a different order.
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "flashkda.h"

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint64_t rng_state = 0x2545F4914F6CDD1Dull;
static double uniform(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (double)(rng_state >> 11) * 0x1.0p-53;
}
static float normal(void)
{
    double u = uniform(), w = uniform();
    if (u < 1e-300) u = 1e-300;
    return (float)(sqrt(-2.0 * log(u)) * cos(6.283185307179586 * w));
}

static float *alloc_floats(int64_t count)
{
    float *x = malloc((size_t)(count > 0 ? count : 1) * sizeof(float));
    if (!x) {
        fprintf(stderr, "bench_cpu: out of memory\n");
        exit(2);
    }
    return x;
}

static double rel_error(const float *a, const float *b, int64_t n)
{
    double num = 0.0, den = 0.0;
    for (int64_t i = 0; i < n; i++) {
        double d = (double)a[i] - (double)b[i];
        num += d * d;
        den += (double)b[i] * (double)b[i];
    }
    return den > 0.0 ? sqrt(num / den) : sqrt(num);
}

/* Runs the prefill once with the given device; returns seconds, or a negative value on error. */
static double run_once(fkda_prefill_args *args, const fkda_device *device)
{
    size_t bytes = 0;
    if (fkda_prefill_workspace_size(args, device, &bytes) != FKDA_OK) {
        fprintf(stderr, "bench_cpu: %s\n", fkda_last_error());
        return -1.0;
    }
    void *workspace = bytes ? aligned_alloc(256, (bytes + 255) / 256 * 256) : NULL;
    double t0 = now_seconds();
    fkda_status s = fkda_prefill(args, device, workspace, bytes);
    double t1 = now_seconds();
    free(workspace);
    if (s != FKDA_OK) {
        fprintf(stderr, "bench_cpu: %s\n", fkda_last_error());
        return -1.0;
    }
    return t1 - t0;
}

int main(int argc, char **argv)
{
    int64_t B = 1, T = 4096, H = 4, HV = 0, K = 128, V = 128;
    int threads = 0, reps = 5, reference = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int64_t *target = NULL;
        if (!strcmp(a, "--B"))
            target = &B;
        else if (!strcmp(a, "--T"))
            target = &T;
        else if (!strcmp(a, "--H"))
            target = &H;
        else if (!strcmp(a, "--HV"))
            target = &HV;
        else if (!strcmp(a, "--K"))
            target = &K;
        else if (!strcmp(a, "--V"))
            target = &V;
        if (target && i + 1 < argc) {
            *target = atoll(argv[++i]);
        } else if (!strcmp(a, "--threads") && i + 1 < argc) {
            threads = atoi(argv[++i]);
        } else if (!strcmp(a, "--reps") && i + 1 < argc) {
            reps = atoi(argv[++i]);
        } else if (!strcmp(a, "--no-reference")) {
            reference = 0;
        } else {
            fprintf(stderr, "usage: bench_cpu [--B n] [--T n] [--H n] [--HV n] [--K n] [--V n] "
                            "[--threads n] [--reps n] [--no-reference]\n");
            return 2;
        }
    }
    if (HV == 0) HV = H;
    if (reps < 1) reps = 1;

    const int64_t nq = B * T * H * K, nv = B * T * HV * V, ng = B * T * HV * K, nb = B * T * HV;
    const int64_t ns = B * HV * K * V;
    float *q = alloc_floats(nq), *k = alloc_floats(nq), *v = alloc_floats(nv);
    float *g = alloc_floats(ng), *beta = alloc_floats(nb);
    float *A_log = alloc_floats(HV), *dt_bias = alloc_floats(HV * K);
    float *out_fast = alloc_floats(nv), *out_ref = alloc_floats(nv);
    float *state_fast = alloc_floats(ns), *state_ref = alloc_floats(ns);
    for (int64_t i = 0; i < nq; i++) q[i] = normal(), k[i] = normal();
    for (int64_t i = 0; i < nv; i++) v[i] = normal();
    for (int64_t i = 0; i < ng; i++) g[i] = normal();
    for (int64_t i = 0; i < nb; i++) beta[i] = normal();
    for (int64_t i = 0; i < HV; i++) A_log[i] = (float)(uniform() - 0.5);
    for (int64_t i = 0; i < HV * K; i++) dt_bias[i] = 0.5f * normal();

    fkda_prefill_args args;
    memset(&args, 0, sizeof args);
    args.q = fkda_make_tensor(q, FKDA_DTYPE_F32, 4, (const int64_t[]){B, T, H, K});
    args.k = fkda_make_tensor(k, FKDA_DTYPE_F32, 4, (const int64_t[]){B, T, H, K});
    args.v = fkda_make_tensor(v, FKDA_DTYPE_F32, 4, (const int64_t[]){B, T, HV, V});
    args.g = fkda_make_tensor(g, FKDA_DTYPE_F32, 4, (const int64_t[]){B, T, HV, K});
    args.beta = fkda_make_tensor(beta, FKDA_DTYPE_F32, 3, (const int64_t[]){B, T, HV});
    args.A_log = fkda_make_tensor(A_log, FKDA_DTYPE_F32, 1, (const int64_t[]){HV});
    args.dt_bias = fkda_make_tensor(dt_bias, FKDA_DTYPE_F32, 2, (const int64_t[]){HV, K});
    args.options = fkda_default_options();
    args.options.gate = FKDA_GATE_LOWER_BOUND;
    args.options.lower_bound = -5.0;
    args.options.use_qk_l2norm = 1;
    args.options.use_beta_sigmoid = 1;

    const double flops = 6.0 * (double)K * (double)V * (double)(B * T * HV);
    printf("bench_cpu: B=%lld T=%lld H=%lld HV=%lld K=%lld V=%lld, f32 inputs, safe gate, "
           "threads=%d (0: all cores)\n",
           (long long)B, (long long)T, (long long)H, (long long)HV, (long long)K, (long long)V, threads);

    fkda_device device = {FKDA_DEVICE_CPU, 0, NULL, threads, 0};
    args.out = fkda_make_tensor(out_fast, FKDA_DTYPE_F32, 4, (const int64_t[]){B, T, HV, V});
    args.final_state = fkda_make_tensor(state_fast, FKDA_DTYPE_F32, 4, (const int64_t[]){B, HV, K, V});
    double best = 1e300;
    for (int r = 0; r < reps + 1; r++) { /* the first run warms up and is not counted */
        double s = run_once(&args, &device);
        if (s < 0) return 1;
        if (r > 0 && s < best) best = s;
    }
    printf("  fast (chunked, f32)     %10.4f s  %12.0f tokens/s  %8.2f GFLOP/s\n", best, (double)(B * T) / best,
           flops / best * 1e-9);

    if (reference) {
        device.reference = 1;
        args.out = fkda_make_tensor(out_ref, FKDA_DTYPE_F32, 4, (const int64_t[]){B, T, HV, V});
        args.final_state = fkda_make_tensor(state_ref, FKDA_DTYPE_F32, 4, (const int64_t[]){B, HV, K, V});
        double s = run_once(&args, &device);
        if (s < 0) return 1;
        printf("  reference (token, f64)  %10.4f s  %12.0f tokens/s  %8.2f GFLOP/s\n", s, (double)(B * T) / s,
               flops / s * 1e-9);
        printf("  speedup %.1fx; relative error: out %.3e, final state %.3e\n", s / best,
               rel_error(out_fast, out_ref, nv), rel_error(state_fast, state_ref, ns));
    }

    free(q);
    free(k);
    free(v);
    free(g);
    free(beta);
    free(A_log);
    free(dt_bias);
    free(out_fast);
    free(out_ref);
    free(state_fast);
    free(state_ref);
    return 0;
}

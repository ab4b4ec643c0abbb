/* prefill.c: a KDA prefill on the CPU through the public C API, checked against the float64
 * reference. Build: cc prefill.c $(pkg-config --cflags --libs flashkda) -o prefill */
#include <flashkda.h>
#include <stdio.h>
#include <stdlib.h>

enum { B = 1, T = 200, H = 2, K = 64, V = 64 };

static float uniform(unsigned *seed) /* in [-1, 1) */
{
    *seed = *seed * 1664525u + 1013904223u;
    return (float)(*seed >> 8) / 8388608.0f - 1.0f;
}

static float *random_array(size_t n, unsigned *seed)
{
    float *x = malloc(n * sizeof *x);
    for (size_t i = 0; x && i < n; i++) x[i] = uniform(seed);
    return x;
}

/* Runs one prefill into out and ht on the CPU: the fast path, or the float64 reference. */
static int run(fkda_prefill_args *a, float *out, float *ht, int reference)
{
    /* num_threads 0: up to one thread per online core, fewer for a small call. */
    fkda_device cpu = {.type = FKDA_DEVICE_CPU, .num_threads = 0, .reference = reference};
    a->out = fkda_make_tensor(out, FKDA_DTYPE_F32, 4, (int64_t[]){B, T, H, V});
    a->final_state = fkda_make_tensor(ht, FKDA_DTYPE_F32, 4, (int64_t[]){B, H, K, V});
    size_t bytes = 0;
    if (fkda_prefill_workspace_size(a, &cpu, &bytes) != FKDA_OK) return -1;
    void *workspace = bytes ? aligned_alloc(256, (bytes + 255) / 256 * 256) : NULL;
    if (bytes && !workspace) return -1;
    fkda_status status = fkda_prefill(a, &cpu, workspace, bytes);
    free(workspace);
    return status == FKDA_OK ? 0 : -1;
}

/* The largest difference from the reference, relative to the reference's largest magnitude. */
static double rel_err(const float *x, const float *ref, size_t n)
{
    double diff = 0, size = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)x[i] - ref[i], r = ref[i];
        if (d < 0) d = -d;
        if (r < 0) r = -r;
        if (d > diff) diff = d;
        if (r > size) size = r;
    }
    return diff / size;
}

int main(void)
{
    unsigned seed = 1;
    size_t nqk = (size_t)B * T * H * K, nv = (size_t)B * T * H * V, ns = (size_t)B * H * K * V;
    float *q = random_array(nqk, &seed), *k = random_array(nqk, &seed);
    float *v = random_array(nv, &seed), *g = random_array(nqk, &seed);
    float *beta = random_array((size_t)B * T * H, &seed), *A_log = random_array(H, &seed);
    float *out = malloc(nv * sizeof *out), *ht = malloc(ns * sizeof *ht);
    float *out_ref = malloc(nv * sizeof *out_ref), *ht_ref = malloc(ns * sizeof *ht_ref);
    if (!q || !k || !v || !g || !beta || !A_log || !out || !ht || !out_ref || !ht_ref) return 1;

    fkda_prefill_args a = {0};
    a.q = fkda_make_tensor(q, FKDA_DTYPE_F32, 4, (int64_t[]){B, T, H, K});
    a.k = fkda_make_tensor(k, FKDA_DTYPE_F32, 4, (int64_t[]){B, T, H, K});
    a.v = fkda_make_tensor(v, FKDA_DTYPE_F32, 4, (int64_t[]){B, T, H, V});
    a.g = fkda_make_tensor(g, FKDA_DTYPE_F32, 4, (int64_t[]){B, T, H, K});
    a.beta = fkda_make_tensor(beta, FKDA_DTYPE_F32, 3, (int64_t[]){B, T, H});
    a.A_log = fkda_make_tensor(A_log, FKDA_DTYPE_F32, 1, (int64_t[]){H});
    a.options = fkda_default_options();
    a.options.gate = FKDA_GATE_LOWER_BOUND; /* the safe gate: decay in [-5, 0) per step */
    a.options.lower_bound = -5.0;
    a.options.use_qk_l2norm = 1;
    a.options.use_beta_sigmoid = 1;

    if (run(&a, out, ht, 0) != 0 || run(&a, out_ref, ht_ref, 1) != 0) {
        fprintf(stderr, "flashkda: %s\n", fkda_last_error());
        return 1;
    }
    double err_out = rel_err(out, out_ref, nv), err_state = rel_err(ht, ht_ref, ns);
    printf("flashkda %s: T=%d H=%d K=%d V=%d, largest error against float64 (relative to the "
           "largest value): output %.2e, final state %.2e\n",
           fkda_version(), T, H, K, V, err_out, err_state);

    /* A wrong argument is refused with a message naming it, and nothing is written. */
    a.v.shape[2] = 3;
    if (run(&a, out, ht, 0) == 0) return 1;
    printf("a bad v is refused: %s\n", fkda_last_error());

    free(q), free(k), free(v), free(g), free(beta), free(A_log);
    free(out), free(ht), free(out_ref), free(ht_ref);
    return err_out < 1e-4 && err_state < 1e-4 ? 0 : 1;
}

/*
 * test_cpu_decode_blocks.c: the CPU decode's fast path splits the value columns into blocks,
 * and each block reads and writes its own columns of the state.
 *
 * With fewer heads than threads the fast path gives each thread a block of value columns
 * [v0, v0 + nv) of one head (one head, V = 128 and 4 threads: four blocks of 32). Every block
 * must load the state's columns v0 .. v0 + nv - 1, run the tokens and store them back there; a
 * block that used the wrong columns would still produce finite, plausible numbers, so the test
 * compares, block by block, the output and the pool after a few calls with the float64
 * reference (which runs the whole of V as one item) on a pool whose columns all differ.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"

enum { N = 1, T = 1, H = 1, HV = 1, K = 16, V = 128, THREADS = 4, BLOCK = 32, CALLS = 3 };

/* ||a - b|| / ||b|| over columns [c0, c0 + n) of rows of V floats */
static double block_error(const float *a, const float *b, size_t rows, int c0, int n)
{
    double num = 0, den = 0;
    for (size_t r = 0; r < rows; r++)
        for (int c = c0; c < c0 + n; c++) {
            const double d = (double)a[r * V + (size_t)c] - b[r * V + (size_t)c];
            num += d * d;
            den += (double)b[r * V + (size_t)c] * b[r * V + (size_t)c];
        }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

int main(void)
{
    test_rng r;
    test_rng_seed(&r, test_seed_from_env());
    const int64_t sq[4] = {N, T, H, K}, sv[4] = {N, T, HV, V}, sg[4] = {N, T, HV, K}, sb[3] = {N, T, HV};
    const int64_t sp[4] = {N, HV, K, V};
    test_tensor q = test_tensor_alloc(FKDA_DTYPE_F32, 4, sq), k = test_tensor_alloc(FKDA_DTYPE_F32, 4, sq);
    test_tensor v = test_tensor_alloc(FKDA_DTYPE_F32, 4, sv), g = test_tensor_alloc(FKDA_DTYPE_F32, 4, sg);
    test_tensor beta = test_tensor_alloc(FKDA_DTYPE_F32, 3, sb);
    test_tensor pool_fast = test_tensor_alloc(FKDA_DTYPE_F32, 4, sp), pool_ref = test_tensor_alloc(FKDA_DTYPE_F32, 4, sp);
    test_tensor out_fast = test_tensor_alloc(FKDA_DTYPE_F32, 4, sv), out_ref = test_tensor_alloc(FKDA_DTYPE_F32, 4, sv);
    test_tensor_fill_normal(&pool_fast, &r, 0, 0.5);
    memcpy(pool_ref.t.data, pool_fast.t.data, pool_fast.count * sizeof(float));

    const fkda_device fast = {FKDA_DEVICE_CPU, 0, NULL, THREADS, 0}, ref = {FKDA_DEVICE_CPU, 0, NULL, 1, 1};
    for (int call = 1; call <= CALLS; call++) {
        test_tensor_fill_normal(&q, &r, 0, 1);
        test_tensor_fill_normal(&k, &r, 0, 1);
        test_tensor_fill_normal(&v, &r, 0, 1);
        test_tensor_fill_normal(&g, &r, 0, 1);
        test_tensor_fill_normal(&beta, &r, 0, 1);
        for (int path = 0; path < 2; path++) {
            fkda_decode_args a;
            memset(&a, 0, sizeof a);
            a.q = q.t;
            a.k = k.t;
            a.v = v.t;
            a.g = g.t;
            a.beta = beta.t;
            a.state_pool = path ? pool_ref.t : pool_fast.t;
            a.out = path ? out_ref.t : out_fast.t;
            a.options = fkda_default_options();
            a.options.gate = FKDA_GATE_LOWER_BOUND;
            a.options.lower_bound = -5.0;
            a.options.use_qk_l2norm = 1;
            a.options.use_beta_sigmoid = 1;
            const fkda_device *dev = path ? &ref : &fast;
            size_t bytes = 0;
            fkda_status s = fkda_decode_workspace_size(&a, dev, &bytes);
            void *ws = aligned_alloc(256, (bytes + 256) / 256 * 256); /* the library wants 256-byte alignment */
            if (s == FKDA_OK) s = fkda_decode(&a, dev, ws, bytes);
            CHECK(s == FKDA_OK, "call %d, %s: %s", call, path ? "reference" : "fast path", fkda_last_error());
            free(ws);
        }
        /* fp32 against float64 arithmetic: the CPU's 1e-5 bar, per block of columns */
        for (int c0 = 0; c0 < V; c0 += BLOCK) {
            const double eo = block_error(out_fast.t.data, out_ref.t.data, (size_t)(N * T * HV), c0, BLOCK);
            const double es = block_error(pool_fast.t.data, pool_ref.t.data, (size_t)(N * HV * K), c0, BLOCK);
            CHECK(eo <= 1e-5, "call %d: output columns %d..%d: error %.3e", call, c0, c0 + BLOCK - 1, eo);
            CHECK(es <= 1e-5, "call %d: state columns %d..%d: error %.3e", call, c0, c0 + BLOCK - 1, es);
        }
    }
    test_tensor *all[] = {&q, &k, &v, &g, &beta, &pool_fast, &pool_ref, &out_fast, &out_ref};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) test_tensor_free(all[i]);
    return test_exit("test_cpu_decode_blocks");
}

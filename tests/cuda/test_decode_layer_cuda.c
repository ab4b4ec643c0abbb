/*
 * test_decode_layer_cuda.c: the CUDA fused decode layer (fkda_decode_layer) against the CPU
 * backend's float64 reference layer (device.reference = 1), on a GPU, over chains of calls that
 * update both pools (recurrent and conv) in place.
 *
 * Each case keeps two copies of every pool, one on the GPU and one on the host, starting from the
 * same random bytes, and makes `steps` calls on both with the same fresh random inputs and slots
 * (the seed is printed; FKDA_TEST_SEED repeats a run). Before every GPU call the output and the
 * workspace are poisoned with NaN (every byte 0xff); every output, pool and workspace sits
 * between guard bytes (cuda_test_util.h). After every call:
 *   out             every element finite; the rows of skipped sequences exactly 0; against the
 *                   reference by ||gpu - ref|| / ||ref|| (the decode's bars, test_decode_cuda.c)
 *   recurrent pool  the slots the call writes against the reference's pool, by the same norm;
 *                   every other slot bitwise unchanged
 *   conv pool       bitwise equal to the reference's (it holds raw inputs, copied and rounded
 *                   the same way), and every slot no running sequence names bitwise unchanged
 *   first call      run twice from the same pools: bitwise the same out and pools
 *   the path        the workspace (poisoned) left untouched by the single kernel, written by
 *                   the three launches: the path forced is the one that ran; and the kernels
 *                   the call launched (fkda_last_kernels): the tile and cluster size forced
 *                   are the ones that ran
 *   guards          intact at the end of the case
 *
 * Paths (decode_layer_select.c): where the single kernel can serve a case (sm_90, T = 1, 1-D
 * indices or none, K = V = 128, HV = H), the case runs three or four times, each against the
 * reference: the three launches forced (FKDA_DECODE_LAYER_FUSED=0), the single kernel forced with
 * the rule's tile and cluster size, its narrow tile with a cluster size forced
 * (FKDA_DECODE_LAYER_WIDE=0, FKDA_DECODE_LAYER_CLUSTER cycling 1, 2, 4, 8 over the cases), and for
 * W <= 4 its wide tile forced (FKDA_DECODE_LAYER_WIDE=1, in its fp32 form: FKDA_DECODE_LAYER_PACKED=0)
 * and, with bf16 pools, the wide tile's packed form forced (FKDA_DECODE_LAYER_PACKED=1), once with
 * ordinary and once with evict-first state loads (FKDA_DECODE_LOAD_EF=0, 1). Elsewhere it runs once
 * with the library's choice, which must be the three launches.
 *
 * Cases: B in {1, 3, 64}, H in {2, 12, 32}, HV = H and 2H at K = V = 128, then small and odd head
 * sizes (64, 24 x 40) and conv widths 2, 3 and 16; fp32 and bf16 pools in both layouts; f32, bf16
 * and f16 io and conv states; softplus and lower-bound gates; no indices, 1-D indices with skipped
 * (negative) slots, 2-D indices with T = 3, T_max = 3 or 4, accepted counts and unwritten
 * (negative) draft slots, 2-D indices without counts, T = 2 with 1-D indices or none (the window
 * not sliding); int32 and int64 indices; then single-kernel cases at B = 1, 3, 64 and H = 2, 12,
 * 32 over both pool dtypes and layouts, conv widths 2 to 16 and f16 io.
 *
 *   test_decode_layer_cuda           every case
 *   test_decode_layer_cuda --small   a few tiny cases, for compute-sanitizer (the single kernel
 *                                    among them, narrow with C = 1 and C = 2 and wide, with
 *                                    run-time dtypes and all-bf16 (_io16), skipped sequences;
 *                                    T = 2 and a sliding window through both conv kernels)
 *
 * The last line is "test_decode_layer_cuda: all N checks passed", or a count of failures after
 * a "FAIL" line per broken check naming the case, the step and the numbers.
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime.h>

#include "cuda_test_util.h"
#include "test_util.h"

enum { IDX_NONE = 0, IDX_1D = 1, IDX_2D = 2 };

/* Which path a run forces (FKDA_DECODE_LAYER_FUSED, FKDA_DECODE_LAYER_CLUSTER): the library's
 * choice, the three launches, or the single kernel with the rule's cluster size or a given one. */
enum { PATH_DEFAULT = 0, PATH_THREE = 1, PATH_FUSED = 2 };

/* The conv of the three launches (FKDA_DECODE_LAYER_CONV_VEC): the rule's kernel, the 8-channel
 * one wherever its 16-byte accesses apply, or the one-channel one. The rule takes 8 channels only
 * at large batches, so the runs of the three launches cycle through the three (add_runs) and
 * the small cases (compute-sanitizer's) run both kernels too. */
enum { CONV_RULE = 0, CONV_VEC_ON = 1, CONV_VEC_OFF = 2 };

/* The single kernel's tile (FKDA_DECODE_LAYER_WIDE, FKDA_DECODE_LAYER_PACKED): the rule's, the
 * wide one forced (it serves W <= 4; with bf16 pools in its fp32 form, the packed form off), the
 * narrow one forced, or the wide tile's packed form forced (bf16 pools, W <= 4) with ordinary
 * or evict-first state loads (FKDA_DECODE_LOAD_EF=0, 1). */
enum { TILE_RULE = 0, TILE_WIDE = 1, TILE_NARROW = 2, TILE_PACKED = 3, TILE_PACKED_EF = 4 };

#define MAX_RUNS 320 /* the runs of the full list (add_runs appends at most 6 a case) */

typedef struct lcase {
    char name[160];
    int64_t B, T, H, HV, K, V, W;
    int idx_mode;
    int no_accepted;     /* 2-D indices without num_accepted_tokens (a_n = 1, the window fixed) */
    int64_t TI;          /* T_max of 2-D indices */
    int64_t extra_rows;  /* conv state rows past the ones the conv uses (never read or written) */
    fkda_dtype io;       /* mixed_qkv and out */
    fkda_dtype cs_dtype; /* conv_state */
    fkda_dtype param;    /* conv_weight, conv_bias, g, beta, A_log, dt_bias, output_gate, norm_weight */
    fkda_dtype pool_dtype, idx_dtype;
    int v_first, softplus, has_bias, flat_g;
    int steps;
    double out_tol, state_tol;
    int path;    /* PATH_* */
    int cluster; /* PATH_FUSED: CTAs per head forced (0: the rule's) */
    int tile;    /* PATH_FUSED: TILE_RULE, or FKDA_DECODE_LAYER_WIDE forced 1 (TILE_WIDE, TILE_PACKED) or 0 */
    int conv;    /* the three launches' conv: CONV_RULE, or FKDA_DECODE_LAYER_CONV_VEC forced 1 or 0 */
    int fused;   /* the single kernel serves this run (the workspace stays untouched) */
} lcase;

/* A tensor on the host (contiguous) and its copy on the GPU (guarded, same strides). */
typedef struct mirror {
    test_tensor h;
    fkda_tensor d;
    size_t bytes;
} mirror;

static mirror mirror_make(fkda_dtype dtype, int ndim, const int64_t *shape)
{
    mirror m;
    m.h = test_tensor_alloc(dtype, ndim, shape);
    m.bytes = m.h.count * fkda_dtype_size(dtype);
    m.d = m.h.t;
    m.d.data = guarded_malloc(m.bytes ? m.bytes : 1);
    return m;
}

static void mirror_free(mirror *m)
{
    if (!m->h.t.data) return;
    guarded_free(m->d.data);
    test_tensor_free(&m->h);
}

static void upload(const mirror *m) { CUDA_OK(cudaMemcpy(m->d.data, m->h.t.data, m->bytes, cudaMemcpyHostToDevice)); }
static void *download(const mirror *m)
{
    void *host = malloc(m->bytes ? m->bytes : 1);
    CUDA_OK(cudaMemcpy(host, m->d.data, m->bytes, cudaMemcpyDeviceToHost));
    return host;
}

static double get_elem(const void *data, fkda_dtype dtype, size_t i)
{
    switch (dtype) {
    case FKDA_DTYPE_F32: return ((const float *)data)[i];
    case FKDA_DTYPE_BF16: return test_bf16_to_f32(((const uint16_t *)data)[i]);
    case FKDA_DTYPE_F16: return test_f16_to_f32(((const uint16_t *)data)[i]);
    case FKDA_DTYPE_I32: return ((const int32_t *)data)[i];
    case FKDA_DTYPE_I64: return (double)((const int64_t *)data)[i];
    default: return NAN;
    }
}

typedef struct layer_bufs {
    int64_t dim, P, L;
    mirror x, w, bias, cs, g, beta, A_log, dt, pool, gate, nw, out, idx, acc;
} layer_bufs;

static int64_t token_shape(const lcase *c, int64_t *s, int nrest, int64_t a, int64_t b)
{
    int n = 0;
    s[n++] = c->B;
    if (c->T > 1 || c->idx_mode == IDX_2D) s[n++] = c->T;
    if (nrest >= 1) s[n++] = a;
    if (nrest >= 2) s[n++] = b;
    return n;
}

static void make_bufs(const lcase *c, layer_bufs *b, test_rng *r)
{
    memset(b, 0, sizeof *b);
    b->dim = 2 * c->H * c->K + c->HV * c->V;
    b->P = c->idx_mode == IDX_NONE ? c->B : c->B * (c->idx_mode == IDX_2D ? c->TI : 1) + 3;
    const int sliding = c->idx_mode == IDX_2D && !c->no_accepted;
    b->L = (sliding ? c->W - 2 + c->T : c->W - 1) + c->extra_rows;
    int64_t s[4];
    int n = (int)token_shape(c, s, 1, b->dim, 0);
    b->x = mirror_make(c->io, n, s);
    b->w = mirror_make(c->param, 2, (int64_t[]){b->dim, c->W});
    test_tensor_fill_normal(&b->w.h, r, 0.0, 0.5);
    if (c->has_bias) {
        b->bias = mirror_make(c->param, 1, (int64_t[]){b->dim});
        test_tensor_fill_normal(&b->bias.h, r, 0.0, 0.2);
    }
    b->cs = mirror_make(c->cs_dtype, 3, (int64_t[]){b->P, b->L, b->dim});
    test_tensor_fill_normal(&b->cs.h, r, 0.0, 1.0);
    n = c->flat_g ? (int)token_shape(c, s, 1, c->HV * c->K, 0) : (int)token_shape(c, s, 2, c->HV, c->K);
    b->g = mirror_make(c->param, n, s);
    n = (int)token_shape(c, s, 1, c->HV, 0);
    b->beta = mirror_make(c->param, n, s);
    b->A_log = mirror_make(c->param, 1, (int64_t[]){c->HV});
    if (c->softplus)
        for (int64_t h = 0; h < c->HV; h++)
            test_tensor_set(&b->A_log.h, (size_t)h, log(1.0 + 4.0 * test_rng_uniform(r)));
    else
        test_tensor_fill_uniform(&b->A_log.h, r, -1.0, 0.5);
    b->dt = mirror_make(c->param, 2, (int64_t[]){c->HV, c->K});
    test_tensor_fill_normal(&b->dt.h, r, 0.0, 0.5);
    const int64_t d2 = c->v_first ? c->V : c->K, d3 = c->v_first ? c->K : c->V;
    b->pool = mirror_make(c->pool_dtype, 4, (int64_t[]){b->P, c->HV, d2, d3});
    test_tensor_fill_normal(&b->pool.h, r, 0.0, 0.3);
    n = (int)token_shape(c, s, 2, c->HV, c->V);
    b->gate = mirror_make(c->param, n, s);
    b->out = mirror_make(c->io, n, s);
    b->nw = mirror_make(c->param, 1, (int64_t[]){c->V});
    test_tensor_fill_uniform(&b->nw.h, r, 0.5, 1.5);
    if (c->idx_mode == IDX_1D) b->idx = mirror_make(c->idx_dtype, 1, (int64_t[]){c->B});
    if (c->idx_mode == IDX_2D) {
        b->idx = mirror_make(c->idx_dtype, 2, (int64_t[]){c->B, c->TI});
        if (sliding) b->acc = mirror_make(c->idx_dtype, 1, (int64_t[]){c->B});
    }
    mirror *params[] = {&b->w, &b->bias, &b->A_log, &b->dt, &b->nw, &b->cs, &b->pool};
    for (size_t i = 0; i < sizeof params / sizeof params[0]; i++)
        if (params[i]->h.t.data) upload(params[i]);
}

static void free_bufs(layer_bufs *b)
{
    mirror *all[] = {&b->x,  &b->w,    &b->bias, &b->cs, &b->g,   &b->beta, &b->A_log,
                     &b->dt, &b->pool, &b->gate, &b->nw, &b->out, &b->idx,  &b->acc};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) mirror_free(all[i]);
}

/* The arguments on the host (gpu = 0) or the GPU (gpu = 1); the pools are the given side's. */
static fkda_decode_layer_args make_args(const lcase *c, const layer_bufs *b, int gpu)
{
#define PICK(m) ((m).h.t.data ? (gpu ? (m).d : (m).h.t) : (fkda_tensor){0})
    fkda_decode_layer_args a;
    memset(&a, 0, sizeof a);
    a.mixed_qkv = PICK(b->x);
    a.conv_weight = PICK(b->w);
    a.conv_bias = PICK(b->bias);
    a.conv_state = PICK(b->cs);
    a.g = PICK(b->g);
    a.beta = PICK(b->beta);
    a.A_log = PICK(b->A_log);
    a.dt_bias = PICK(b->dt);
    a.lower_bound = c->softplus ? 0.0 : -5.0;
    a.state_pool = PICK(b->pool);
    a.state_indices = PICK(b->idx);
    a.num_accepted_tokens = PICK(b->acc);
    a.output_gate = PICK(b->gate);
    a.norm_weight = PICK(b->nw);
    a.norm_eps = 1e-5;
    a.out = PICK(b->out);
    a.state_v_first = c->v_first;
    return a;
#undef PICK
}

/* ---- one step's slots ------------------------------------------------------------------------ */

typedef struct step_slots {
    char *runs;         /* [B]: the sequence runs (its read slot >= 0) */
    char *pool_written; /* [P]: a running sequence writes this recurrent slot */
    char *conv_written; /* [P]: a running sequence writes this conv slot */
} step_slots;

static void shuffle(int64_t *perm, int64_t n, test_rng *r)
{
    for (int64_t i = 0; i < n; i++) perm[i] = i;
    for (int64_t i = n - 1; i > 0; i--) {
        const int64_t j = test_rng_int(r, 0, i), t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
}

/* Draws this step's indices (a fresh permutation of the pool: no two sequences share a slot)
 * and accepted counts, with about one sequence in four skipped and, with 2-D indices, some
 * draft slots negative (not written); records what the step runs and writes. */
static void draw_slots(const lcase *c, layer_bufs *b, test_rng *r, step_slots *s)
{
    memset(s->pool_written, 0, (size_t)b->P);
    memset(s->conv_written, 0, (size_t)b->P);
    int64_t *perm = malloc(sizeof(int64_t) * (size_t)b->P);
    shuffle(perm, b->P, r);
    int64_t next = 0;
    for (int64_t n = 0; n < c->B; n++) {
        /* The last sequence always runs, with a_n = T when counts are given: the only count at
         * which a window clamped one row short of L differs (so every seed tests the clamp). */
        const int last = n == c->B - 1;
        const int skip = c->idx_mode != IDX_NONE && c->B > 1 && !last && test_rng_int(r, 0, 3) == 0;
        if (c->idx_mode == IDX_NONE) {
            s->runs[n] = 1;
            s->pool_written[n] = s->conv_written[n] = 1;
        } else if (c->idx_mode == IDX_1D) {
            const int64_t slot = skip ? -1 - test_rng_int(r, 0, 5) : perm[next++];
            test_tensor_set(&b->idx.h, (size_t)n, (double)slot);
            s->runs[n] = !skip;
            if (!skip) s->pool_written[slot] = s->conv_written[slot] = 1;
        } else {
            /* a_n <= T: inside T_max and inside the L = W - 2 + T rows of a sliding window */
            const int64_t a = c->no_accepted ? 1 : last ? c->T : test_rng_int(r, 1, c->T);
            if (!c->no_accepted) test_tensor_set(&b->acc.h, (size_t)n, (double)a);
            for (int64_t t = 0; t < c->TI; t++) {
                /* Column a - 1 is the read slot (-1 skips), column 0 the conv slot (kept for a
                 * running sequence); other drafts are sometimes not written (-1). */
                int64_t slot = perm[next++];
                if (t == a - 1 && skip) slot = -1;
                if (t != a - 1 && t != 0 && test_rng_int(r, 0, 4) == 0) slot = -1;
                test_tensor_set(&b->idx.h, (size_t)(n * c->TI + t), (double)slot);
            }
            s->runs[n] = !skip;
        }
    }
    if (c->idx_mode == IDX_2D)
        for (int64_t n = 0; n < c->B; n++) {
            if (!s->runs[n]) continue;
            for (int64_t t = 0; t < c->T; t++) {
                const int64_t slot = (int64_t)test_tensor_get(&b->idx.h, (size_t)(n * c->TI + t));
                if (slot >= 0) s->pool_written[slot] = 1;
            }
            s->conv_written[(int64_t)test_tensor_get(&b->idx.h, (size_t)(n * c->TI))] = 1;
        }
    free(perm);
    if (b->idx.h.t.data) upload(&b->idx);
    if (b->acc.h.t.data) upload(&b->acc);
}

/* ---- comparisons ------------------------------------------------------------------------------ */

/* ||a - b|| / ||b|| over the elements [from, to) of two arrays of one dtype, accumulated. */
typedef struct norm_acc {
    double diff, ref;
    size_t nonfinite;
} norm_acc;

static void accumulate(norm_acc *acc, const void *a, const void *b, fkda_dtype dtype, size_t from, size_t to)
{
    for (size_t i = from; i < to; i++) {
        const double x = get_elem(a, dtype, i), y = get_elem(b, dtype, i);
        if (!isfinite(x)) acc->nonfinite++;
        acc->diff += (x - y) * (x - y);
        acc->ref += y * y;
    }
}

static double relative(const norm_acc *acc) { return acc->ref > 0 ? sqrt(acc->diff / acc->ref) : sqrt(acc->diff); }

/* The largest spacing of a dtype's values relative to the value (one ulp at the bottom of a binade). */
static double ulp_rel(fkda_dtype dtype)
{
    return dtype == FKDA_DTYPE_BF16 ? 0x1p-7 : dtype == FKDA_DTYPE_F16 ? 0x1p-10 : 0x1p-23;
}

/* The bars of test_decode_cuda.c's set_bars: fp32 through, 1e-5; a value both sides round to
 * bf16 or f16 differs only where fp32 and float64 fall on two sides of a rounding boundary, by
 * an ulp, for one element in 16 (or two of a small tensor): ulp * max(1/4, 2 / sqrt(n)); an
 * output computed from a bf16 pool adds the pool's bar. The conv (fp32 against float64, its
 * output y handed to the decode as fp32 on both sides) and the norm (a few fp32 operations per
 * element) add errors of order 1e-7, well inside these bars. */
static void set_bars(lcase *c)
{
    /* the pool's compared elements: a slot per sequence, or per draft token with 2-D indices */
    const int64_t slots = c->B * (c->idx_mode == IDX_2D ? c->T : 1);
    const double n_out = (double)(c->B * c->T * c->HV * c->V), n_pool = (double)(slots * c->HV * c->K * c->V);
    const double share_out = fmax(0.25, 2.0 / sqrt(fmax(n_out, 1.0)));
    const double share_pool = fmax(0.25, 2.0 / sqrt(fmax(n_pool, 1.0)));
    c->state_tol = c->pool_dtype == FKDA_DTYPE_F32 ? 1e-5 : ulp_rel(c->pool_dtype) * share_pool;
    c->out_tol = c->io == FKDA_DTYPE_F32 ? 1e-5 : ulp_rel(c->io) * share_out;
    if (c->pool_dtype != FKDA_DTYPE_F32) c->out_tol += c->state_tol;
}

/* ---- one case --------------------------------------------------------------------------------- */

/* One GPU call: out and workspace poisoned, run on the stream, waited for. The stream does not
 * wait for the legacy default stream, where cudaMemcpy uploads ran (a pageable upload may
 * return before its DMA lands): the device is synchronised first, and the poison is written on
 * the stream itself. */
static fkda_status gpu_call(const lcase *c, const layer_bufs *b, void *ws, size_t ws_bytes, cudaStream_t stream)
{
    CUDA_OK(cudaDeviceSynchronize());
    CUDA_OK(cudaMemsetAsync(b->out.d.data, 0xff, b->out.bytes, stream));
    if (ws_bytes) CUDA_OK(cudaMemsetAsync(ws, 0xff, ws_bytes, stream));
    const fkda_decode_layer_args a = make_args(c, b, 1);
    const fkda_device gpu = {FKDA_DEVICE_CUDA, 0, stream, 0, 0};
    char cluster[8];
    snprintf(cluster, sizeof cluster, "%d", c->cluster);
    if (c->path == PATH_DEFAULT)
        unsetenv("FKDA_DECODE_LAYER_FUSED");
    else
        setenv("FKDA_DECODE_LAYER_FUSED", c->path == PATH_FUSED ? "1" : "0", 1);
    if (c->cluster)
        setenv("FKDA_DECODE_LAYER_CLUSTER", cluster, 1);
    else
        unsetenv("FKDA_DECODE_LAYER_CLUSTER");
    if (c->conv != CONV_RULE)
        setenv("FKDA_DECODE_LAYER_CONV_VEC", c->conv == CONV_VEC_ON ? "1" : "0", 1);
    else
        unsetenv("FKDA_DECODE_LAYER_CONV_VEC");
    if (c->tile != TILE_RULE)
        setenv("FKDA_DECODE_LAYER_WIDE", c->tile == TILE_NARROW ? "0" : "1", 1);
    else
        unsetenv("FKDA_DECODE_LAYER_WIDE");
    const int packed = c->tile == TILE_PACKED || c->tile == TILE_PACKED_EF;
    if (c->tile == TILE_WIDE || packed)
        setenv("FKDA_DECODE_LAYER_PACKED", packed ? "1" : "0", 1);
    else
        unsetenv("FKDA_DECODE_LAYER_PACKED");
    if (packed)
        setenv("FKDA_DECODE_LOAD_EF", c->tile == TILE_PACKED_EF ? "1" : "0", 1);
    else
        unsetenv("FKDA_DECODE_LOAD_EF");
    const fkda_status s = fkda_decode_layer(&a, &gpu, ws, ws_bytes);
    unsetenv("FKDA_DECODE_LAYER_FUSED");
    unsetenv("FKDA_DECODE_LAYER_CLUSTER");
    unsetenv("FKDA_DECODE_LAYER_CONV_VEC");
    unsetenv("FKDA_DECODE_LAYER_WIDE");
    unsetenv("FKDA_DECODE_LAYER_PACKED");
    unsetenv("FKDA_DECODE_LOAD_EF");
    CUDA_OK(cudaStreamSynchronize(stream));
    CUDA_OK(cudaGetLastError());
    return s;
}

static int bytes_equal(const void *a, const void *b, size_t n) { return memcmp(a, b, n) == 0; }

/* The kernels the run launched (fkda_last_kernels), against what it forced: the three launches'
 * conv first and norm last (with 8 channels a thread off, never the vector conv); the single
 * kernel alone, for the pool's dtype and layout, of the forced tile (narrow: _w4 for the short
 * conv, the any-width kernel otherwise; _wide, _packed, _packed_ef) and, for the narrow tile with
 * a cluster size forced, launched in clusters of that size ("[C]" for C > 1). Whether the all-bf16
 * twin (_io16) ran is left to test_decode_layer_select's section 6: the name is compared without
 * that suffix. */
static void check_kernels(const lcase *c, int step)
{
    const char *got = fkda_last_kernels();
    char first[96] = "", last[96] = "";
    int count = 0;
    for (const char *p = got; *p;) {
        while (*p == ' ') p++;
        const size_t n = strcspn(p, " ");
        if (n == 0) break;
        snprintf(count == 0 ? first : last, sizeof last, "%.*s", (int)n, p);
        count++;
        p += n;
    }
    if (!c->fused) {
        CHECK(count >= 3 && strncmp(first, "conv_kernel", 11) == 0 && strcmp(last, "norm_kernel") == 0,
              "%s step %d: the three launches should have run; launched \"%s\"", c->name, step, got);
        if (c->conv == CONV_VEC_OFF)
            CHECK(strcmp(first, "conv_kernel_w4_vec") != 0,
                  "%s step %d: the vector conv ran with FKDA_DECODE_LAYER_CONV_VEC=0", c->name, step);
        return;
    }
    CHECK(count == 1, "%s step %d: the single kernel alone should have run; launched \"%s\"", c->name, step, got);
    if (count != 1) return;
    /* Its name without the cluster suffix and the _io16 twin's, and its cluster size. */
    char base[96];
    int cluster = 1;
    snprintf(base, sizeof base, "%s", first);
    char *bracket = strchr(base, '[');
    if (bracket) {
        cluster = atoi(bracket + 1);
        *bracket = '\0';
    }
    const size_t len = strlen(base);
    if (len > 5 && strcmp(base + len - 5, "_io16") == 0) base[len - 5] = '\0';
    char want[96];
    snprintf(want, sizeof want, "layer_%s_%s", c->pool_dtype == FKDA_DTYPE_F32 ? "f32" : "bf16",
             c->v_first ? "vk" : "kv");
    if (c->tile == TILE_RULE) {
        CHECK(strncmp(base, want, strlen(want)) == 0, "%s step %d: launched \"%s\", not a %s kernel", c->name, step,
              got, want);
        return;
    }
    const char *tile = c->tile == TILE_WIDE        ? "_wide"
                       : c->tile == TILE_PACKED    ? "_packed"
                       : c->tile == TILE_PACKED_EF ? "_packed_ef"
                       : c->W <= 4                 ? "_w4"
                                                   : "";
    strncat(want, tile, sizeof want - strlen(want) - 1);
    const int want_cluster = c->tile == TILE_NARROW && c->cluster ? c->cluster : 1;
    CHECK(strcmp(base, want) == 0 && (cluster == want_cluster || (c->tile == TILE_NARROW && !c->cluster)),
          "%s step %d: launched \"%s\", expected %s (or its _io16 twin) in clusters of %d", c->name, step, got, want,
          want_cluster);
}

static void run_case(lcase *c, test_rng *r, cudaStream_t stream)
{
    const int failures_before = test_failures;
    layer_bufs b;
    make_bufs(c, &b, r);
    set_bars(c);

    /* The reference's pools: copies of the starting bytes on the host. */
    mirror *pools[2] = {&b.pool, &b.cs};
    void *ref_pool = malloc(b.pool.bytes), *ref_cs = malloc(b.cs.bytes);
    memcpy(ref_pool, b.pool.h.t.data, b.pool.bytes);
    memcpy(ref_cs, b.cs.h.t.data, b.cs.bytes);

    const fkda_device cpu = {FKDA_DEVICE_CPU, 0, NULL, 0, 1};
    const fkda_device gpu = {FKDA_DEVICE_CUDA, 0, stream, 0, 0};
    step_slots s = {calloc((size_t)c->B, 1), calloc((size_t)b.P, 1), calloc((size_t)b.P, 1)};
    draw_slots(c, &b, r, &s); /* valid indices for the size queries */
    size_t cpu_ws_bytes = 0, gpu_ws_bytes = 0;
    fkda_decode_layer_args ha = make_args(c, &b, 0), ga = make_args(c, &b, 1);
    CHECK(fkda_decode_layer_workspace_size(&ha, &cpu, &cpu_ws_bytes) == FKDA_OK, "%s: CPU workspace size: %s", c->name,
          fkda_last_error());
    CHECK(fkda_decode_layer_workspace_size(&ga, &gpu, &gpu_ws_bytes) == FKDA_OK, "%s: GPU workspace size: %s", c->name,
          fkda_last_error());
    const size_t floats = (size_t)(c->B * c->T * (b.dim + c->HV * c->V));
    CHECK(gpu_ws_bytes >= floats * sizeof(float), "%s: GPU workspace %zu bytes < y and o (%zu floats)", c->name,
          gpu_ws_bytes, floats);
    void *cpu_ws = cpu_ws_bytes ? aligned_alloc(256, (cpu_ws_bytes + 255) / 256 * 256) : NULL;
    void *gpu_ws = guarded_malloc(gpu_ws_bytes ? gpu_ws_bytes : 1);

    double worst_out = 0, worst_pool = 0;
    for (int step = 0; step < c->steps && test_failures == failures_before; step++) {
        if (step > 0) draw_slots(c, &b, r, &s);
        test_tensor_fill_normal(&b.x.h, r, 0.0, 1.0);
        test_tensor_fill_normal(&b.g.h, r, 0.0, 1.0);
        test_tensor_fill_normal(&b.beta.h, r, 0.0, 1.0);
        test_tensor_fill_normal(&b.gate.h, r, 0.0, 1.5);
        mirror *inputs[] = {&b.x, &b.g, &b.beta, &b.gate};
        for (size_t i = 0; i < sizeof inputs / sizeof inputs[0]; i++) upload(inputs[i]);

        /* The reference, on the host pools. */
        memcpy(b.pool.h.t.data, ref_pool, b.pool.bytes);
        memcpy(b.cs.h.t.data, ref_cs, b.cs.bytes);
        test_tensor_fill_value(&b.out.h, NAN);
        ha = make_args(c, &b, 0);
        fkda_status st = fkda_decode_layer(&ha, &cpu, cpu_ws, cpu_ws_bytes);
        CHECK(st == FKDA_OK, "%s step %d: CPU reference: %s", c->name, step, fkda_last_error());
        memcpy(ref_pool, b.pool.h.t.data, b.pool.bytes);
        memcpy(ref_cs, b.cs.h.t.data, b.cs.bytes);
        void *ref_out = malloc(b.out.bytes);
        memcpy(ref_out, b.out.h.t.data, b.out.bytes);

        /* The GPU, on its pools: before, the call, after. */
        void *before[2] = {download(pools[0]), download(pools[1])};
        st = gpu_call(c, &b, gpu_ws, gpu_ws_bytes, stream);
        CHECK(st == FKDA_OK, "%s step %d: GPU call: %s", c->name, step, fkda_last_error());
        void *out = download(&b.out), *after[2] = {download(pools[0]), download(pools[1])};

        /* Which path ran: the three launches write the conv's output into the (poisoned)
         * workspace, the single kernel touches no workspace byte. */
        unsigned char *ws_after = malloc(gpu_ws_bytes ? gpu_ws_bytes : 1);
        if (gpu_ws_bytes) CUDA_OK(cudaMemcpy(ws_after, gpu_ws, gpu_ws_bytes, cudaMemcpyDeviceToHost));
        size_t ws_written = 0;
        for (size_t i = 0; i < gpu_ws_bytes; i++) ws_written += ws_after[i] != 0xff;
        free(ws_after);
        CHECK(c->fused ? ws_written == 0 : ws_written > 0,
              "%s step %d: %zu workspace bytes written, but the %s path should have run", c->name, step, ws_written,
              c->fused ? "single-kernel" : "three-pass");
        check_kernels(c, step);

        if (step == 0) { /* the same call again from the same pools: the same bits */
            for (int i = 0; i < 2; i++)
                CUDA_OK(cudaMemcpy(pools[i]->d.data, before[i], pools[i]->bytes, cudaMemcpyHostToDevice));
            st = gpu_call(c, &b, gpu_ws, gpu_ws_bytes, stream);
            void *out2 = download(&b.out), *again[2] = {download(pools[0]), download(pools[1])};
            CHECK(st == FKDA_OK && bytes_equal(out, out2, b.out.bytes) &&
                      bytes_equal(after[0], again[0], b.pool.bytes) && bytes_equal(after[1], again[1], b.cs.bytes),
                  "%s: a repeat of the first call from the same pools differs (out %d, pool %d, conv %d)", c->name,
                  bytes_equal(out, out2, b.out.bytes), bytes_equal(after[0], again[0], b.pool.bytes),
                  bytes_equal(after[1], again[1], b.cs.bytes));
            free(out2);
            free(again[0]);
            free(again[1]);
        }

        /* out: finite, skipped rows zero, close to the reference. */
        const size_t row = (size_t)(c->T * c->HV * c->V);
        norm_acc oa = {0, 0, 0};
        accumulate(&oa, out, ref_out, c->io, 0, b.out.h.count);
        int64_t nonzero_skipped = 0;
        for (int64_t n = 0; n < c->B; n++)
            if (!s.runs[n])
                for (size_t i = (size_t)n * row; i < (size_t)(n + 1) * row; i++)
                    nonzero_skipped += get_elem(out, c->io, i) != 0.0;
        const double e_out = relative(&oa);
        worst_out = fmax(worst_out, e_out);
        CHECK(oa.nonfinite == 0, "%s step %d: %zu of %zu out elements not finite (poison left or NaN computed)",
              c->name, step, oa.nonfinite, b.out.h.count);
        CHECK(nonzero_skipped == 0, "%s step %d: %lld elements of skipped sequences' out rows are not 0", c->name, step,
              (long long)nonzero_skipped);
        CHECK(e_out <= c->out_tol, "%s step %d: out error %.3e > bar %.3e", c->name, step, e_out, c->out_tol);

        /* The recurrent pool: written slots close to the reference, the others unchanged. */
        const size_t slot_elems = (size_t)(c->HV * c->K * c->V),
                     slot_bytes = slot_elems * fkda_dtype_size(c->pool_dtype);
        norm_acc pa = {0, 0, 0};
        int64_t changed = 0;
        for (int64_t p = 0; p < b.P; p++) {
            if (s.pool_written[p])
                accumulate(&pa, after[0], ref_pool, c->pool_dtype, (size_t)p * slot_elems,
                           (size_t)(p + 1) * slot_elems);
            else
                changed += !bytes_equal((char *)after[0] + p * slot_bytes, (char *)before[0] + p * slot_bytes,
                                        slot_bytes);
        }
        const double e_pool = relative(&pa);
        worst_pool = fmax(worst_pool, e_pool);
        CHECK(pa.nonfinite == 0, "%s step %d: %zu written pool elements not finite", c->name, step, pa.nonfinite);
        CHECK(changed == 0, "%s step %d: %lld recurrent slots no running sequence writes changed", c->name, step,
              (long long)changed);
        CHECK(e_pool <= c->state_tol, "%s step %d: pool error %.3e > bar %.3e", c->name, step, e_pool, c->state_tol);

        /* The conv pool: bitwise the reference's; slots no running sequence names unchanged. */
        const size_t cs_slot = (size_t)(b.L * b.dim) * fkda_dtype_size(c->cs_dtype);
        int64_t differ = 0, conv_changed = 0;
        for (int64_t p = 0; p < b.P; p++) {
            differ += !bytes_equal((char *)after[1] + p * cs_slot, (char *)ref_cs + p * cs_slot, cs_slot);
            if (!s.conv_written[p])
                conv_changed += !bytes_equal((char *)after[1] + p * cs_slot, (char *)before[1] + p * cs_slot, cs_slot);
        }
        CHECK(differ == 0, "%s step %d: %lld conv slots differ from the reference's (they must match bitwise)", c->name,
              step, (long long)differ);
        CHECK(conv_changed == 0, "%s step %d: %lld conv slots no running sequence names changed", c->name, step,
              (long long)conv_changed);

        free(ref_out);
        free(out);
        for (int i = 0; i < 2; i++) {
            free(before[i]);
            free(after[i]);
        }
    }

    mirror *guarded[] = {&b.out, &b.pool, &b.cs};
    for (size_t i = 0; i < sizeof guarded / sizeof guarded[0]; i++)
        CHECK(guards_intact(guarded[i]->d.data, guarded[i]->bytes), "%s: a write past the ends of %s", c->name,
              i == 0   ? "out"
              : i == 1 ? "state_pool"
                       : "conv_state");
    CHECK(guards_intact(gpu_ws, gpu_ws_bytes ? gpu_ws_bytes : 1), "%s: a write past the ends of the workspace",
          c->name);
    printf("%-96s out %.2e (bar %.1e)  pool %.2e (bar %.1e)  %s\n", c->name, worst_out, c->out_tol, worst_pool,
           c->state_tol, test_failures == failures_before ? "ok" : "FAILED");

    guarded_free(gpu_ws);
    free(cpu_ws);
    free(ref_pool);
    free(ref_cs);
    free(s.runs);
    free(s.pool_written);
    free(s.conv_written);
    free_bufs(&b);
}

/* ---- the cases -------------------------------------------------------------------------------- */

static const char *dtype_name(fkda_dtype t)
{
    return t == FKDA_DTYPE_F32 ? "f32" : t == FKDA_DTYPE_BF16 ? "bf16" : t == FKDA_DTYPE_F16 ? "f16" : "int";
}

static lcase make_case(int64_t B, int64_t H, int64_t HV, int64_t K, int64_t V, int idx_mode)
{
    lcase c;
    memset(&c, 0, sizeof c);
    c.B = B;
    c.H = H;
    c.HV = HV;
    c.K = K;
    c.V = V;
    c.W = 4;
    c.T = idx_mode == IDX_2D ? 3 : 1;
    c.TI = c.T;
    c.idx_mode = idx_mode;
    c.io = c.cs_dtype = FKDA_DTYPE_BF16;
    c.param = FKDA_DTYPE_F32;
    c.pool_dtype = FKDA_DTYPE_F32;
    c.idx_dtype = FKDA_DTYPE_I32;
    c.has_bias = 1;
    c.steps = 3;
    return c;
}

static void name_case(lcase *c)
{
    static const char *modes[] = {"no indices", "1-D indices, skips", "2-D indices, accepted",
                                  "2-D indices, no counts"};
    snprintf(c->name, sizeof c->name, "B=%lld H=%lld HV=%lld K=%lld V=%lld W=%lld T=%lld/%lld %s %s pool%s %s io %s %s",
             (long long)c->B, (long long)c->H, (long long)c->HV, (long long)c->K, (long long)c->V, (long long)c->W,
             (long long)c->T, (long long)c->TI, modes[c->idx_mode + (c->no_accepted ? 1 : 0)],
             dtype_name(c->pool_dtype), c->v_first ? " [V,K]" : "", dtype_name(c->io),
             c->softplus ? "softplus" : "lower bound", c->idx_dtype == FKDA_DTYPE_I64 ? "i64" : "i32");
    char path[32] = "";
    if (c->path == PATH_THREE) snprintf(path, sizeof path, " [3-pass]");
    if (c->path == PATH_FUSED) snprintf(path, sizeof path, " [fused narrow C=%d]", c->cluster);
    if (c->path == PATH_FUSED && c->tile == TILE_WIDE) snprintf(path, sizeof path, " [fused wide]");
    if (c->path == PATH_FUSED && c->tile == TILE_PACKED) snprintf(path, sizeof path, " [fused packed]");
    if (c->path == PATH_FUSED && c->tile == TILE_PACKED_EF) snprintf(path, sizeof path, " [fused packed, ef]");
    if (c->path == PATH_FUSED && c->tile == TILE_RULE) snprintf(path, sizeof path, " [fused]");
    if (c->path == PATH_DEFAULT) snprintf(path, sizeof path, c->fused ? " [default: fused]" : " [default: 3-pass]");
    strncat(c->name, path, sizeof c->name - strlen(c->name) - 1);
    if (c->conv != CONV_RULE)
        strncat(c->name, c->conv == CONV_VEC_ON ? " [conv 8 channels]" : " [conv 1 channel]",
                sizeof c->name - strlen(c->name) - 1);
}

/* Whether the single kernel can serve the case on this device (decode_layer_select.c; the test's
 * pools are dense and 16-byte aligned). */
static int fused_serves(const lcase *c, int cc_major)
{
    return cc_major == 9 && c->T == 1 && c->idx_mode != IDX_2D && c->K == 128 && c->V == 128 && c->HV == c->H;
}

/* Appends the runs of case `c`: where the single kernel serves, three to six of them (the three
 * launches forced, the single kernel with the rule's tile and cluster size, its narrow tile with
 * `cluster` forced, and for W <= 4 its wide tile forced, and with bf16 pools its packed form with
 * both kinds of state loads); elsewhere one, with the library's choice, which must be the three
 * launches. Each run of the
 * three launches takes the case's conv setting, or if it has none the next of the three
 * (CONV_RULE, CONV_VEC_ON, _OFF). */
static int add_runs(lcase *cases, int n, lcase c, int cc_major, int cluster)
{
    if (n + 6 > MAX_RUNS) { /* more runs than the list holds: enlarge MAX_RUNS */
        fprintf(stderr, "test_decode_layer_cuda: more than %d runs\n", MAX_RUNS);
        exit(2);
    }
    static int three_pass_runs = 0; /* cycles the conv's kernel over the runs of the three launches */
    const int conv = c.conv != CONV_RULE ? c.conv : three_pass_runs++ % 3; /* a case's own choice first */
    if (!fused_serves(&c, cc_major)) {
        c.path = PATH_DEFAULT;
        c.conv = conv;
        cases[n++] = c;
        return n;
    }
    c.path = PATH_THREE;
    c.conv = conv;
    cases[n++] = c;
    c.conv = CONV_RULE;
    c.path = PATH_FUSED;
    c.fused = 1;
    cases[n++] = c;
    c.cluster = cluster;
    c.tile = TILE_NARROW;
    cases[n++] = c;
    if (c.W <= 4) { /* the wide tile's kernels are compiled for the short conv only */
        c.cluster = 0;
        c.tile = TILE_WIDE;
        cases[n++] = c;
        if (c.pool_dtype == FKDA_DTYPE_BF16) {
            c.tile = TILE_PACKED;
            cases[n++] = c;
            c.tile = TILE_PACKED_EF;
            cases[n++] = c;
        }
    }
    return n;
}

int main(int argc, char **argv)
{
    int small = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--small") == 0)
            small = 1;
        else {
            fprintf(stderr, "usage: test_decode_layer_cuda [--small]\n");
            return 2;
        }
    }
    const uint64_t seed = test_seed_from_env();
    test_rng rng;
    test_rng_seed(&rng, seed);
    int count = 0;
    CUDA_OK(cudaGetDeviceCount(&count));
    if (count == 0) {
        printf("no CUDA device\n");
        return 1;
    }
    struct cudaDeviceProp prop;
    CUDA_OK(cudaGetDeviceProperties(&prop, 0));
    printf("test_decode_layer_cuda on %s (sm_%d%d)%s\n", prop.name, prop.major, prop.minor, small ? ", --small" : "");
    cudaStream_t stream = NULL;
    CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));

    static lcase cases[MAX_RUNS];
    int n = 0;
    if (small) {
        /* T = 2 and a sliding window, each through both conv kernels (8 channels a thread: its
         * in-place window update under the sanitizers too). */
        for (int conv = CONV_VEC_ON; conv <= CONV_VEC_OFF; conv++) {
            cases[n] = make_case(3, 1, 2, 24, 40, IDX_1D);
            cases[n].T = cases[n].TI = 2;
            cases[n].steps = 2;
            cases[n].conv = conv;
            n++;
            cases[n] = make_case(3, 1, 2, 16, 32, IDX_2D);
            cases[n].TI = 4;
            cases[n].steps = 2;
            cases[n].pool_dtype = FKDA_DTYPE_BF16;
            cases[n].v_first = 1;
            cases[n].conv = conv;
            n++;
        }
        lcase c = make_case(2, 1, 1, 128, 128, IDX_NONE);
        c.steps = 2;
        c.softplus = 1;
        c.io = FKDA_DTYPE_F32;
        n = add_runs(cases, n, c, prop.major, 1);
        /* The single kernel: C = 1 and clusters, skipped sequences, bf16 [V, K] pools. */
        c = make_case(3, 2, 2, 128, 128, IDX_1D);
        c.steps = 2;
        n = add_runs(cases, n, c, prop.major, 2);
        c.pool_dtype = FKDA_DTYPE_BF16;
        c.v_first = 1;
        c.W = 16;
        n = add_runs(cases, n, c, prop.major, 1);
        c.W = 4; /* the bf16 [V, K] kernels of W <= 4, the wide one (VEC = 8) among them */
        n = add_runs(cases, n, c, prop.major, 2);
        c.param = FKDA_DTYPE_BF16; /* every layer tensor bf16: the _io16 kernels */
        c.pool_dtype = FKDA_DTYPE_F32;
        c.v_first = 0;
        n = add_runs(cases, n, c, prop.major, 1);
    } else {
        /* K = V = 128 over B x H x HV, the options cycled with coprime periods so that each
         * appears with several others. */
        const int64_t Bs[3] = {1, 3, 64}, Hs[3] = {2, 12, 32};
        static const int clusters[4] = {1, 2, 4, 8};
        int i = 0;
        for (int bi = 0; bi < 3; bi++)
            for (int hi = 0; hi < 3; hi++)
                for (int group = 1; group <= 2; group++, i++) {
                    const int64_t B = Bs[bi], H = Hs[hi];
                    const int mode = B == 1 ? (i % 2 ? IDX_2D : IDX_NONE) : (i % 3 == 0 ? IDX_2D : IDX_1D);
                    lcase c = make_case(B, H, group * H, 128, 128, mode);
                    c.pool_dtype = i % 2 ? FKDA_DTYPE_BF16 : FKDA_DTYPE_F32;
                    c.v_first = (i / 2) % 2;
                    c.softplus = i % 3 == 1;
                    c.io = i % 5 == 2 ? FKDA_DTYPE_F32 : i % 5 == 4 ? FKDA_DTYPE_F16 : FKDA_DTYPE_BF16;
                    c.cs_dtype = i % 4 == 3 ? FKDA_DTYPE_F32 : c.io;
                    c.idx_dtype = i % 2 ? FKDA_DTYPE_I64 : FKDA_DTYPE_I32;
                    c.flat_g = i % 3 == 2;
                    c.has_bias = i % 4 != 1;
                    if (mode == IDX_2D && i % 4 == 0) c.TI = 4; /* T_max > T */
                    if (B == 64) c.steps = 2;
                    n = add_runs(cases, n, c, prop.major, clusters[i % 4]);
                }
        /* Small and odd head sizes, other conv widths, bf16 parameters. */
        /* T > 1 without counts: 1-D indices (the final state written) and 2-D indices without
         * num_accepted_tokens (a_n = 1: the window does not slide). */
        const struct {
            int64_t K, V, W, T;
            int mode, no_accepted;
        } odd[] = {{64, 64, 4, 1, IDX_1D, 0},  {64, 64, 3, 3, IDX_2D, 0},   {24, 40, 2, 1, IDX_1D, 0},
                   {24, 40, 16, 3, IDX_2D, 0}, {40, 24, 4, 1, IDX_NONE, 0}, {32, 32, 4, 3, IDX_2D, 0},
                   {48, 48, 4, 2, IDX_1D, 0},  {64, 32, 4, 3, IDX_2D, 1},   {32, 32, 3, 2, IDX_NONE, 0}};
        for (size_t j = 0; j < sizeof odd / sizeof odd[0]; j++) {
            lcase c = make_case(3, 2, j % 2 ? 4 : 2, odd[j].K, odd[j].V, odd[j].mode);
            c.W = odd[j].W;
            c.T = c.TI = odd[j].T;
            c.no_accepted = odd[j].no_accepted;
            c.pool_dtype = j % 2 ? FKDA_DTYPE_F32 : FKDA_DTYPE_BF16;
            c.v_first = (j / 2) % 2;
            c.softplus = j % 3 == 0;
            c.io = j % 3 == 1 ? FKDA_DTYPE_F32 : FKDA_DTYPE_BF16;
            c.cs_dtype = j % 2 ? FKDA_DTYPE_F16 : c.io;
            c.param = j % 2 ? FKDA_DTYPE_BF16 : FKDA_DTYPE_F32;
            c.extra_rows = j % 3 == 2 ? 2 : 0;
            c.steps = 4;
            /* each through both conv kernels: W = 2 and 3, extra rows, mixed x and state dtypes,
             * T = 2 without sliding, 2-D indices without counts */
            c.conv = CONV_VEC_ON;
            n = add_runs(cases, n, c, prop.major, 1);
            c.conv = CONV_VEC_OFF;
            n = add_runs(cases, n, c, prop.major, 1);
        }
        /* The single kernel at B = 1, 3, 64 and H = 2, 12, 32 over both pool dtypes and layouts,
         * 1-D indices with skipped sequences or none, W from 2 to 16 (each of its kernels: the
         * four for W <= 4 and the four for wider convs), f16 io. */
        const struct {
            int64_t B, H, W;
            int mode, bf16, v_first;
            fkda_dtype io;
        } single[] = {{1, 32, 4, IDX_NONE, 0, 0, FKDA_DTYPE_BF16},  {1, 32, 4, IDX_1D, 1, 1, FKDA_DTYPE_BF16},
                      {1, 2, 2, IDX_1D, 1, 0, FKDA_DTYPE_F16},      {3, 12, 16, IDX_1D, 0, 1, FKDA_DTYPE_BF16},
                      {3, 32, 3, IDX_1D, 1, 0, FKDA_DTYPE_F32},     {64, 32, 4, IDX_1D, 0, 1, FKDA_DTYPE_BF16},
                      {64, 2, 4, IDX_NONE, 1, 1, FKDA_DTYPE_BF16},  {64, 12, 5, IDX_1D, 0, 0, FKDA_DTYPE_F16},
                      {1, 12, 7, IDX_1D, 1, 0, FKDA_DTYPE_F32},     {3, 2, 16, IDX_NONE, 1, 1, FKDA_DTYPE_BF16},
                      {64, 32, 4, IDX_NONE, 1, 0, FKDA_DTYPE_BF16}, {64, 12, 4, IDX_1D, 1, 0, FKDA_DTYPE_BF16}};
        for (size_t j = 0; j < sizeof single / sizeof single[0]; j++) {
            lcase c = make_case(single[j].B, single[j].H, single[j].H, 128, 128, single[j].mode);
            c.W = single[j].W;
            c.pool_dtype = single[j].bf16 ? FKDA_DTYPE_BF16 : FKDA_DTYPE_F32;
            c.v_first = single[j].v_first;
            c.io = c.cs_dtype = single[j].io;
            c.softplus = j % 2 == 1;
            c.idx_dtype = j % 3 == 0 ? FKDA_DTYPE_I64 : FKDA_DTYPE_I32;
            c.has_bias = j % 4 != 2;
            c.flat_g = j % 3 == 1;
            c.param = j % 2 ? FKDA_DTYPE_BF16 : FKDA_DTYPE_F32;
            c.steps = single[j].B == 64 ? 2 : 3;
            n = add_runs(cases, n, c, prop.major, clusters[(j + 1) % 4]);
        }
    }

    for (int i = 0; i < n; i++) {
        name_case(&cases[i]);
        run_case(&cases[i], &rng, stream);
    }
    CUDA_OK(cudaStreamDestroy(stream));
    printf("%d cases\n", n);
    return test_exit("test_decode_layer_cuda");
}

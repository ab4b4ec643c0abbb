/*
 * test_decode_cuda.c: the CUDA decode against the CPU backend's float64 reference, on a GPU,
 * over chains of calls that update a state pool in place.
 *
 * Each case keeps two pools, one on the GPU and one on the host, starting from the same random
 * states, and makes `steps` calls on both with the same fresh random inputs (the seed is
 * printed; FKDA_TEST_SEED repeats a run). The host side is fkda_decode on the CPU device with
 * reference = 1 (float64 arithmetic, rounded to the pool's dtype on store, as the GPU does).
 * Before every GPU call the output, including the padding of strided outputs, is poisoned with
 * NaN; after it, every logical element must be finite and the padding untouched. The output is
 * compared after every call and the whole pool (every slot, also those no sequence names,
 * which must not change) at checkpoints, by ||gpu - ref|| / ||ref||.
 *
 * Cases cover: skipped sequences (negative slots), a slot reused by a new sequence, speculative
 * decoding (2-D indices, num_accepted_tokens), varlen (cu_seqlens with empty sequences), vLLM's
 * packed form of a decode batch (one row of B tokens, cu_seqlens = arange(B + 1) or mixed lengths
 * of 0, 1 and 3 tokens, 1-D indices), both state layouts, fp32 and bf16 pools, GVA, K and V from 3
 * to 256 (16-byte and scalar state paths), the three gates, beta options, bf16/f16/f32 inputs,
 * strided token tensors and pools, a misaligned pool, and replays of a captured CUDA graph. After
 * the cases, the packed form is also decoded beside the same batch as [B, 1] tokens from a copy
 * of the pool: outputs and pools must agree bit for bit (packed_form_bitwise).
 *
 *   test_decode_cuda           every case, the 1000-call fp32 chain and the 10,000-call bf16
 *                              drift report ("DRIFT-REPORT" lines, for bench/results/decode.md)
 *   test_decode_cuda --small   a few short cases, for compute-sanitizer
 *   test_decode_cuda [--small] --variants [NAME ...]
 *                              the kernel variants of src/cuda/decode_variants.h, each forced in
 *                              turn (FKDA_DECODE_VARIANT=NAME, set between passes) on every case
 *                              it can serve (asked of the selection, src/cuda/decode_select.c,
 *                              compiled into this test); all of them, or the NAMEs given. A variant
 *                              that serves no case fails.
 *   test_decode_cuda [--small] --plan
 *                              prints which cases each variant serves (no GPU needed)
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime.h>

#include "../../src/cuda/decode_select.h"
#include "cuda_test_util.h"
#include "test_util.h"

/* ---- tensors that live twice: on the host (for the reference) and on the GPU ------------- */

/* A tensor of logical shape `shape`, stored inside a larger allocation (each dimension padded
 * by pad[i] elements), so that its strides are not the contiguous ones. Host and device hold the
 * same bytes whenever we copy; `offset` elements of slack at the start misalign the data. */
typedef struct dual {
    fkda_tensor host, dev;
    size_t bytes;     /* of the whole allocation */
    int64_t alloc[4]; /* the padded shape */
    int64_t offset;
} dual;

static dual dual_make(fkda_dtype dtype, int ndim, const int64_t *shape, const int64_t *pad, int64_t offset)
{
    dual d;
    memset(&d, 0, sizeof d);
    size_t count = 1;
    for (int i = 0; i < ndim; i++) {
        d.alloc[i] = shape[i] + (pad ? pad[i] : 0);
        count *= (size_t)d.alloc[i];
    }
    count += (size_t)offset;
    d.offset = offset;
    d.bytes = count * fkda_dtype_size(dtype);
    void *h = calloc(1, d.bytes ? d.bytes : 16);
    void *g = NULL;
    CUDA_OK(cudaMalloc(&g, d.bytes ? d.bytes : 16));
    d.host.dtype = dtype;
    d.host.ndim = ndim;
    int64_t stride = 1;
    for (int i = ndim - 1; i >= 0; i--) {
        d.host.shape[i] = shape[i];
        d.host.stride[i] = stride;
        stride *= d.alloc[i];
    }
    d.host.data = (char *)h + offset * fkda_dtype_size(dtype);
    d.dev = d.host;
    d.dev.data = (char *)g + offset * fkda_dtype_size(dtype);
    return d;
}

static void *dual_host_base(const dual *d) { return (char *)d->host.data - d->offset * fkda_dtype_size(d->host.dtype); }
static void *dual_dev_base(const dual *d) { return (char *)d->dev.data - d->offset * fkda_dtype_size(d->dev.dtype); }

static void dual_free(dual *d)
{
    if (!d->bytes && !d->host.data) return;
    free(dual_host_base(d));
    CUDA_OK(cudaFree(dual_dev_base(d)));
    memset(d, 0, sizeof *d);
}

static void dual_upload(const dual *d)
{
    CUDA_OK(cudaMemcpy(dual_dev_base(d), dual_host_base(d), d->bytes, cudaMemcpyHostToDevice));
}

/* Copies the device bytes into `dst` (a host buffer of d->bytes). */
static void dual_download(const dual *d, void *dst)
{
    CUDA_OK(cudaMemcpy(dst, dual_dev_base(d), d->bytes, cudaMemcpyDeviceToHost));
}

static size_t dual_elements(const dual *d)
{
    size_t n = 1;
    for (int i = 0; i < d->host.ndim; i++) n *= (size_t)d->host.shape[i];
    return n;
}

/* Element offset (from data) of logical element i in row-major order. */
static int64_t dual_offset(const fkda_tensor *t, size_t i)
{
    int64_t off = 0;
    for (int dim = t->ndim - 1; dim >= 0; dim--) {
        off += (int64_t)(i % (size_t)t->shape[dim]) * t->stride[dim];
        i /= (size_t)t->shape[dim];
    }
    return off;
}

static double get_at(const void *data, fkda_dtype dtype, int64_t off)
{
    switch (dtype) {
    case FKDA_DTYPE_F32: return ((const float *)data)[off];
    case FKDA_DTYPE_F16: return test_f16_to_f32(((const uint16_t *)data)[off]);
    case FKDA_DTYPE_BF16: return test_bf16_to_f32(((const uint16_t *)data)[off]);
    case FKDA_DTYPE_I32: return ((const int32_t *)data)[off];
    case FKDA_DTYPE_I64: return (double)((const int64_t *)data)[off];
    case FKDA_DTYPE_BOOL: return ((const uint8_t *)data)[off];
    }
    return 0;
}

static void set_at(void *data, fkda_dtype dtype, int64_t off, double v)
{
    switch (dtype) {
    case FKDA_DTYPE_F32: ((float *)data)[off] = (float)v; break;
    case FKDA_DTYPE_F16: ((uint16_t *)data)[off] = test_f32_to_f16((float)v); break;
    case FKDA_DTYPE_BF16: ((uint16_t *)data)[off] = test_f32_to_bf16((float)v); break;
    case FKDA_DTYPE_I32: ((int32_t *)data)[off] = (int32_t)v; break;
    case FKDA_DTYPE_I64: ((int64_t *)data)[off] = (int64_t)v; break;
    case FKDA_DTYPE_BOOL: ((uint8_t *)data)[off] = v != 0.0; break;
    }
}

static double dget(const dual *d, size_t i) { return get_at(d->host.data, d->host.dtype, dual_offset(&d->host, i)); }
static void dset(dual *d, size_t i, double v) { set_at(d->host.data, d->host.dtype, dual_offset(&d->host, i), v); }

/* Fills the whole allocation (padding too) with normal values, so that a kernel reading the
 * padding would show it. */
static void fill_all_normal(dual *d, test_rng *r, double sd)
{
    size_t count = d->bytes / fkda_dtype_size(d->host.dtype);
    void *base = dual_host_base(d);
    for (size_t i = 0; i < count; i++) set_at(base, d->host.dtype, (int64_t)i, sd * test_rng_normal(r));
}

/* ---- one case ---------------------------------------------------------------------------- */

enum { IDX_NONE = 0, IDX_1D = 1, IDX_2D = 2 };

typedef struct dcase {
    const char *name;
    int64_t N, T; /* sequences and tokens each (fixed-length batches) */
    int nvar;     /* > 0: varlen, B = 1, nvar sequences of lengths lens[i % LENS] (seq_len) */
    int64_t lens[12];
    int64_t H, HV, K, V;
    fkda_dtype in_dtype, aux_dtype, pool_dtype; /* aux: g, beta, A_log, dt_bias */
    /* g and beta bf16 whatever aux_dtype (a bf16 model's call: every token tensor bf16, A_log and
     * dt_bias fp32) */
    int bf16_g_beta;
    int v_first;
    fkda_gate gate;
    int has_A, has_dt;
    int l2norm, sigmoid, neg_eig;
    int idx_mode;
    fkda_dtype idx_dtype;
    int skip;       /* some sequences get a negative slot */
    int reuse;      /* every few calls a sequence ends and a new one takes a slot */
    int strided;    /* token tensors and the pool padded in every dimension */
    int misaligned; /* the pool starts one element past a 16-byte boundary */
    int graph;      /* GPU calls through one captured CUDA graph, replayed */
    /* each step decodes twice back to back, no host sync between: the second call reads the pool
     * the first wrote (a PDL launch's wait) */
    int twice;
    int steps;
    int check_every; /* compare the whole pool every this many calls (and at the end) */
    double out_tol, state_tol;
    int no_accepted; /* 2-D indices without num_accepted_tokens (states read from slot column 0) */
    /* the device's accepted counts of sequences 0-2 outside [1, T_max] (0, -5, 10^6); the kernels
     * must clamp them, and the reference gets the clamped counts (its API refuses the others) */
    int wild_accepted;
    int ref_pool_f32;   /* the reference keeps an fp32 pool whatever the GPU's pool dtype */
    int drift_report;   /* print DRIFT-REPORT lines at 1, 10, 100, 1000, 10000 */
    const char *report; /* print "<report> ..." with the final errors */
} dcase;

#define LENS 12 /* entries of dcase.lens; longer varlen batches repeat them */

static int64_t seq_len(const dcase *c, int i) { return c->lens[i % LENS]; }

/* vLLM's packed form of a decode batch: B sequences as one row of tokens, cu_seqlens with the
 * lengths `pattern` repeated (all 1: arange(B + 1)). */
static void set_packed_form(dcase *c, int64_t B, const int64_t *pattern, int n_pattern)
{
    c->nvar = (int)B;
    for (int i = 0; i < LENS; i++) c->lens[i] = pattern[i % n_pattern];
}

typedef struct bufs {
    dual q, k, v, g, beta, A_log, dt_bias, cu, idx, acc, out;
    dual pool;
    dual ref;      /* the reference's pool (host side used): the same layout, its own dtype */
    void *scratch; /* a device-to-host copy of the largest allocation */
} bufs;

static float nan_f32(void) { return nanf(""); }

static void poison_out(const bufs *b)
{
    /* NaN in the output's dtype over the whole allocation, on the device */
    size_t count = b->out.bytes / fkda_dtype_size(b->out.host.dtype);
    void *tmp = malloc(b->out.bytes);
    for (size_t i = 0; i < count; i++) set_at(tmp, b->out.host.dtype, (int64_t)i, nan_f32());
    CUDA_OK(cudaMemcpy(dual_dev_base(&b->out), tmp, b->out.bytes, cudaMemcpyHostToDevice));
    free(tmp);
}

/* Random inputs for one call, written to the host side of every token tensor and uploaded. */
static void draw_inputs(const dcase *c, bufs *b, test_rng *r)
{
    fill_all_normal(&b->q, r, 1.0);
    fill_all_normal(&b->k, r, 1.0);
    fill_all_normal(&b->v, r, 1.0);
    fill_all_normal(&b->g, r, 1.0);
    fill_all_normal(&b->beta, r, 1.0);
    const size_t nk = dual_elements(&b->k), K = (size_t)c->K;
    if (!c->l2norm) { /* the delta rule is stable only for |k| <= 1 (|b| |k|^2 <= 2) */
        for (size_t row = 0; row < nk / K; row++) {
            double ss = 0;
            for (size_t i = 0; i < K; i++) ss += dget(&b->k, row * K + i) * dget(&b->k, row * K + i);
            for (size_t i = 0; i < K; i++) dset(&b->k, row * K + i, dget(&b->k, row * K + i) / sqrt(ss + 1e-12));
        }
    }
    const size_t ng = dual_elements(&b->g);
    if (c->gate == FKDA_GATE_NONE) /* g is the log decay itself: log(sigmoid(x)) in (-inf, 0) */
        for (size_t i = 0; i < ng; i++) {
            double x = 2.0 + test_rng_normal(r);
            dset(&b->g, i, -log1p(exp(-x)));
        }
    const size_t nb = dual_elements(&b->beta);
    if (!c->sigmoid) /* beta itself, in (0, 1) */
        for (size_t i = 0; i < nb; i++) dset(&b->beta, i, test_rng_uniform(r));
    dual_upload(&b->q);
    dual_upload(&b->k);
    dual_upload(&b->v);
    dual_upload(&b->g);
    dual_upload(&b->beta);
}

/* Writes fresh random states into slot `s` of both pools (the device pool and the reference). */
static void fresh_slot(const dcase *c, bufs *b, test_rng *r, int64_t s)
{
    const fkda_tensor *t = &b->pool.host;
    size_t esz = fkda_dtype_size(t->dtype);
    for (int64_t h = 0; h < c->HV; h++)
        for (int64_t i = 0; i < t->shape[2]; i++)
            for (int64_t j = 0; j < t->shape[3]; j++) {
                int64_t off = s * t->stride[0] + h * t->stride[1] + i * t->stride[2] + j * t->stride[3];
                double x = 0.5 * test_rng_normal(r);
                set_at(t->data, t->dtype, off, x);
                set_at(b->ref.host.data, b->ref.host.dtype, off, get_at(t->data, t->dtype, off));
                CUDA_OK(cudaMemcpy((char *)b->pool.dev.data + off * esz, (char *)t->data + off * esz, esz,
                                   cudaMemcpyHostToDevice));
            }
}

static fkda_decode_args make_args(const dcase *c, const bufs *b, int dev, void *pool_data)
{
    fkda_decode_args a;
    memset(&a, 0, sizeof a);
#define PICK(x) (dev ? b->x.dev : b->x.host)
    a.q = PICK(q);
    a.k = PICK(k);
    a.v = PICK(v);
    a.g = PICK(g);
    a.beta = PICK(beta);
    a.out = PICK(out);
    if (c->has_A) a.A_log = PICK(A_log);
    if (c->has_dt) a.dt_bias = PICK(dt_bias);
    if (c->nvar) a.cu_seqlens = PICK(cu);
    if (c->idx_mode) a.state_indices = PICK(idx);
    if (c->idx_mode == IDX_2D && !c->no_accepted) a.num_accepted_tokens = PICK(acc);
    a.state_pool = PICK(pool);
#undef PICK
    if (pool_data) a.state_pool.data = pool_data;
    a.options = fkda_default_options();
    a.options.gate = c->gate;
    a.options.lower_bound = c->gate == FKDA_GATE_LOWER_BOUND ? -5.0 : 0.0;
    a.options.use_qk_l2norm = c->l2norm;
    a.options.use_beta_sigmoid = c->sigmoid;
    a.options.allow_neg_eigval = c->neg_eig;
    a.options.state_v_first = c->v_first;
    return a;
}

/* ||a - b|| / ||b|| over the logical elements of a tensor laid out like `t`, a and b being the
 * bases of two copies of its allocation; also counts non-finite elements of a. */
static double rel_err_logical(const fkda_tensor *t, const void *a_data, fkda_dtype b_dtype, const void *b_data,
                              size_t *nonfinite)
{
    double num = 0, den = 0;
    size_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= (size_t)t->shape[i];
    for (size_t i = 0; i < n; i++) {
        int64_t off = dual_offset(t, i);
        double x = get_at(a_data, t->dtype, off), y = get_at(b_data, b_dtype, off);
        if (!isfinite(x)) (*nonfinite)++;
        num += (x - y) * (x - y);
        den += y * y;
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* 1 when every element of the allocation outside the tensor's logical elements still holds the
 * bits poison_out wrote (compared bit for bit: a kernel storing some other NaN there wrote it). */
static int padding_untouched(const dual *d, const void *base)
{
    const size_t esz = fkda_dtype_size(d->host.dtype), count = d->bytes / esz;
    double poison = 0; /* storage aligned for any dtype; its first esz bytes are the poison */
    set_at(&poison, d->host.dtype, 0, nan_f32());
    char *mark = calloc(count, 1);
    size_t n = dual_elements(d);
    for (size_t i = 0; i < n; i++) mark[d->offset + dual_offset(&d->host, i)] = 1;
    int ok = 1;
    for (size_t i = 0; i < count && ok; i++)
        if (!mark[i] && memcmp((const char *)base + i * esz, &poison, esz) != 0) ok = 0;
    free(mark);
    return ok;
}

/* Marks every slot the index tensor names now (>= 0): slots a sequence may read or write. Called
 * before every call, so that at the end named[s] == 0 means no call could touch slot s. */
static void mark_named(const dcase *c, const bufs *b, char *named, int64_t P)
{
    if (c->idx_mode == IDX_NONE) {
        memset(named, 1, (size_t)P);
        return;
    }
    const size_t n = dual_elements(&b->idx);
    for (size_t i = 0; i < n; i++) {
        const double s = dget(&b->idx, i);
        if (s >= 0 && s < (double)P) named[(int64_t)s] = 1;
    }
}

/* The variant FKDA_DECODE_VARIANT forces in the variant walk (walk_variants), NULL elsewhere. */
static const char *forced_variant;

/* Under the variant walk: the GPU call launched the forced variant's kernel (named after its
 * row of decode_variants.h) and nothing else, or nothing at all for a call with no work. */
static void check_forced_variant(const dcase *c)
{
    if (!forced_variant) return;
    const char *got = fkda_last_kernels();
    CHECK(got[0] == '\0' || strcmp(got, forced_variant) == 0, "%s: FKDA_DECODE_VARIANT=%s, but launched \"%s\"",
          c->name, forced_variant, got);
}

static int run_case(const dcase *c, test_rng *r, cudaStream_t stream)
{
    const int failures_before = test_failures;
    bufs b;
    memset(&b, 0, sizeof b);
    const int64_t B = c->nvar ? 1 : c->N;
    int64_t T = c->T, N = c->N;
    if (c->nvar) {
        N = c->nvar;
        T = 0;
        for (int i = 0; i < c->nvar; i++) T += seq_len(c, i);
    }
    int64_t T_max = c->T;
    if (c->nvar) {
        T_max = 1;
        for (int i = 0; i < c->nvar; i++) T_max = seq_len(c, i) > T_max ? seq_len(c, i) : T_max;
    }
    const int64_t per_seq_slots = c->idx_mode == IDX_2D ? T_max : 1;
    const int64_t P = c->idx_mode ? N * per_seq_slots + 3 + (c->reuse ? N : 0) : N;
    const int64_t s = c->strided ? 1 : 0;
    const int64_t pad4[4] = {s, 2 * s, s, 8 * s}, pad3[3] = {s, 2 * s, s};

    b.q = dual_make(c->in_dtype, 4, (int64_t[]){B, T, c->H, c->K}, pad4, 0);
    b.k = dual_make(c->in_dtype, 4, (int64_t[]){B, T, c->H, c->K}, pad4, 0);
    b.v = dual_make(c->in_dtype, 4, (int64_t[]){B, T, c->HV, c->V}, pad4, 0);
    const fkda_dtype gb_dtype = c->bf16_g_beta ? FKDA_DTYPE_BF16 : c->aux_dtype;
    b.g = dual_make(gb_dtype, 4, (int64_t[]){B, T, c->HV, c->K}, pad4, 0);
    b.beta = dual_make(gb_dtype, 3, (int64_t[]){B, T, c->HV}, pad3, 0);
    b.out = dual_make(c->in_dtype, 4, (int64_t[]){B, T, c->HV, c->V}, pad4, 0);
    b.A_log = dual_make(c->aux_dtype, 1, (int64_t[]){c->HV}, NULL, 0);
    b.dt_bias = dual_make(c->aux_dtype, 2, (int64_t[]){c->HV, c->K}, NULL, 0);
    b.cu = dual_make(c->idx_dtype, 1, (int64_t[]){N + 1}, NULL, 0);
    b.idx = c->idx_mode == IDX_2D ? dual_make(c->idx_dtype, 2, (int64_t[]){N, T_max}, (int64_t[]){0, s}, 0)
                                  : dual_make(c->idx_dtype, 1, (int64_t[]){N}, NULL, 0);
    b.acc = dual_make(c->idx_dtype, 1, (int64_t[]){N}, NULL, 0);
    const int64_t d2 = c->v_first ? c->V : c->K, d3 = c->v_first ? c->K : c->V;
    /* the strided pool keeps 16-byte multiples so that the vector path still runs on it */
    const int64_t ps = c->strided ? (c->pool_dtype == FKDA_DTYPE_F32 ? 4 : 8) : 0;
    b.pool = dual_make(c->pool_dtype, 4, (int64_t[]){P, c->HV, d2, d3}, (int64_t[]){1 * (ps > 0), 0, 0, ps},
                       c->misaligned ? 1 : 0);
    b.ref = dual_make(c->ref_pool_f32 ? FKDA_DTYPE_F32 : c->pool_dtype, 4, (int64_t[]){P, c->HV, d2, d3},
                      (int64_t[]){1 * (ps > 0), 0, 0, ps}, c->misaligned ? 1 : 0);

    /* Gate parameters, sequences and the initial pool. */
    for (int64_t h = 0; h < c->HV; h++) {
        dset(&b.A_log, (size_t)h,
             c->gate == FKDA_GATE_SOFTPLUS ? log(1.0 + 4.0 * test_rng_uniform(r)) : 0.5 * test_rng_normal(r));
        for (int64_t i = 0; i < c->K; i++) dset(&b.dt_bias, (size_t)(h * c->K + i), 0.5 * test_rng_normal(r));
    }
    dual_upload(&b.A_log);
    dual_upload(&b.dt_bias);
    if (c->nvar) {
        int64_t acc = 0;
        dset(&b.cu, 0, 0);
        for (int i = 0; i < c->nvar; i++) dset(&b.cu, (size_t)i + 1, (double)(acc += seq_len(c, i)));
        dual_upload(&b.cu);
    }
    fill_all_normal(&b.pool, r, 0.5);
    dual_upload(&b.pool);
    {
        size_t count = b.pool.bytes / fkda_dtype_size(c->pool_dtype);
        for (size_t i = 0; i < count; i++)
            set_at(dual_host_base(&b.ref), b.ref.host.dtype, (int64_t)i,
                   get_at(dual_host_base(&b.pool), c->pool_dtype, (int64_t)i));
    }
    void *pool_start = malloc(b.pool.bytes);
    memcpy(pool_start, dual_host_base(&b.pool), b.pool.bytes);
    char *named = calloc((size_t)P, 1); /* slots some call's indices named (mark_named) */

    /* Slots: a random permutation of the pool, so sequences land anywhere. */
    int64_t *perm = malloc(sizeof(int64_t) * (size_t)P);
    for (int64_t i = 0; i < P; i++) perm[i] = i;
    for (int64_t i = P - 1; i > 0; i--) {
        int64_t j = test_rng_int(r, 0, i), t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    int64_t next_free = 0;
    if (c->idx_mode == IDX_1D) {
        for (int64_t n = 0; n < N; n++) dset(&b.idx, (size_t)n, (double)perm[next_free++]);
        if (c->skip) {
            dset(&b.idx, 0, -1);
            if (N > 2) dset(&b.idx, (size_t)(N / 2), -7);
        }
    } else if (c->idx_mode == IDX_2D) {
        for (int64_t n = 0; n < N; n++)
            for (int64_t t = 0; t < T_max; t++) dset(&b.idx, (size_t)(n * T_max + t), (double)perm[next_free++]);
        if (c->skip && N > 1) dset(&b.idx, (size_t)(1 * T_max + T_max - 1), -1); /* a token not written */
    }
    if (c->idx_mode) dual_upload(&b.idx);
    for (int64_t i = 0; i < N; i++) dset(&b.acc, (size_t)i, 1.0); /* valid before the first draw */
    dual_upload(&b.acc);

    fkda_device gpu = {FKDA_DEVICE_CUDA, 0, stream, 0, 0};
    fkda_device cpu = {FKDA_DEVICE_CPU, 0, NULL, 0, 1};
    size_t ref_ws_bytes = 0;
    fkda_decode_args ra = make_args(c, &b, 0, NULL);
    ra.state_pool = b.ref.host;
    fkda_status st = fkda_decode_workspace_size(&ra, &cpu, &ref_ws_bytes);
    CHECK(st == FKDA_OK, "%s: CPU workspace size: %s", c->name, fkda_last_error());
    /* the library wants 256-byte aligned workspace, also on the CPU */
    void *ref_ws = ref_ws_bytes ? aligned_alloc(256, (ref_ws_bytes + 255) / 256 * 256) : NULL;
    size_t gpu_ws_bytes = 1;
    fkda_decode_args ga = make_args(c, &b, 1, NULL);
    st = fkda_decode_workspace_size(&ga, &gpu, &gpu_ws_bytes);
    CHECK(st == FKDA_OK && gpu_ws_bytes == 0, "%s: GPU workspace size %zu: %s", c->name, gpu_ws_bytes,
          fkda_last_error());

    cudaGraphExec_t graph_exec = NULL;
    void *out_gpu = malloc(b.out.bytes), *out_ref = malloc(b.out.bytes), *pool_gpu = malloc(b.pool.bytes);
    double worst_out = 0, worst_state = 0, last_out = 0, last_state = 0;
    int next_report = 1;
    double drift_at_10 = 0; /* the drift case's pool error after 10 calls */
    for (int step = 1; step <= c->steps && test_failures == failures_before; step++) {
        draw_inputs(c, &b, r);
        if (c->skip && c->idx_mode == IDX_2D && N > 2) /* sequence 2 skips every other call */
            dset(&b.idx, (size_t)(2 * T_max), step % 2 ? -1.0 : (double)perm[2 * T_max]);
        if (c->idx_mode == IDX_2D) {
            for (int64_t n = 0; n < N; n++) dset(&b.acc, (size_t)n, (double)test_rng_int(r, 1, T_max));
            static const double wild[3] = {0.0, -5.0, 1e6};
            for (int64_t n = 0; c->wild_accepted && n < N && n < 3; n++) dset(&b.acc, (size_t)n, wild[n]);
            dual_upload(&b.acc);
            /* the host's copy, which the reference reads, back in [1, T_max] */
            for (int64_t n = 0; c->wild_accepted && n < N && n < 3; n++)
                dset(&b.acc, (size_t)n, wild[n] < 1.0 ? 1.0 : (double)T_max);
            dual_upload(&b.idx);
        }
        if (c->reuse && step % 3 == 0 && next_free < P) { /* sequence step % N ends; a new one starts */
            int64_t n = step % N, slot = perm[next_free++];
            fresh_slot(c, &b, r, slot);
            dset(&b.idx, (size_t)n, (double)slot);
            dual_upload(&b.idx);
        }

        mark_named(c, &b, named, P);

        /* GPU (under the variant walk, the forced variant must be the kernel that ran) */
        poison_out(&b);
        if (c->graph) {
            if (!graph_exec) {
                cudaGraph_t graph;
                CUDA_OK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
                st = fkda_decode(&ga, &gpu, NULL, 0);
                CUDA_OK(cudaStreamEndCapture(stream, &graph));
                CHECK(st == FKDA_OK, "%s: captured GPU decode: %s", c->name, fkda_last_error());
                check_forced_variant(c);
                CUDA_OK(cudaGraphInstantiate(&graph_exec, graph, 0));
                CUDA_OK(cudaGraphDestroy(graph));
            }
            CUDA_OK(cudaGraphLaunch(graph_exec, stream));
        } else {
            for (int again = 0; again < (c->twice ? 2 : 1); again++) {
                st = fkda_decode(&ga, &gpu, NULL, 0);
                CHECK(st == FKDA_OK, "%s: GPU decode: %s", c->name, fkda_last_error());
                check_forced_variant(c);
            }
        }
        CUDA_OK(cudaStreamSynchronize(stream));
        CUDA_OK(cudaGetLastError());

        /* Reference (host pool pool_ref, host output) */
        memset(dual_host_base(&b.out), 0, b.out.bytes);
        for (int again = 0; again < (c->twice ? 2 : 1); again++) {
            st = fkda_decode(&ra, &cpu, ref_ws, ref_ws_bytes);
            CHECK(st == FKDA_OK, "%s: CPU reference decode: %s", c->name, fkda_last_error());
        }
        memcpy(out_ref, dual_host_base(&b.out), b.out.bytes);

        dual_download(&b.out, out_gpu);
        size_t bad = 0;
        const fkda_tensor *ot = &b.out.host;
        double eo = rel_err_logical(ot, (char *)out_gpu + ((char *)ot->data - (char *)dual_host_base(&b.out)),
                                    ot->dtype, (char *)out_ref + ((char *)ot->data - (char *)dual_host_base(&b.out)),
                                    &bad);
        CHECK(bad == 0, "%s step %d: %zu output elements not written or not finite", c->name, step, bad);
        CHECK(padding_untouched(&b.out, out_gpu), "%s step %d: the kernel wrote outside the output's elements", c->name,
              step);
        CHECK(eo <= c->out_tol, "%s step %d: output error %.3e > %.1e", c->name, step, eo, c->out_tol);
        worst_out = eo > worst_out ? eo : worst_out;
        last_out = eo;

        if (step % c->check_every == 0 || step == c->steps || (c->drift_report && step == next_report)) {
            dual_download(&b.pool, pool_gpu);
            size_t pbad = 0;
            const size_t shift = (size_t)b.pool.offset * fkda_dtype_size(b.pool.host.dtype);
            double es = rel_err_logical(&b.pool.host, (char *)pool_gpu + shift, b.ref.host.dtype, b.ref.host.data,
                                        &pbad);
            CHECK(pbad == 0, "%s step %d: %zu pool elements not finite", c->name, step, pbad);
            CHECK(es <= c->state_tol, "%s step %d: pool error %.3e > %.1e", c->name, step, es, c->state_tol);
            /* the padding of the pool (slack, row and slot padding) keeps its first bits (NaN or not) */
            int same = 1;
            const fkda_tensor *pt = &b.pool.host;
            const size_t esz = fkda_dtype_size(pt->dtype);
            size_t count = b.pool.bytes / esz, n = dual_elements(&b.pool);
            char *mark = calloc(count, 1);
            for (size_t i = 0; i < n; i++) mark[b.pool.offset + dual_offset(pt, i)] = 1;
            for (size_t i = 0; i < count; i++)
                if (!mark[i] && memcmp((char *)pool_gpu + i * esz, (char *)pool_start + i * esz, esz) != 0) same = 0;
            free(mark);
            CHECK(same, "%s step %d: the kernel wrote into the pool's padding", c->name, step);
            worst_state = es > worst_state ? es : worst_state;
            last_state = es;
            if (c->drift_report && step == next_report) {
                printf("DRIFT-REPORT %s: after %d calls, pool rel err %.3e, output rel err %.3e\n", c->name, step, es,
                       eo);
                /* rounding errors that the decay forgets do not grow: later reports stay within
                 * 1.5x of the 10th call's (the measured ratio is about 1) */
                if (step == 10) drift_at_10 = es;
                if (step > 10)
                    CHECK(es <= 1.5 * drift_at_10, "%s step %d: pool error %.3e grew from %.3e after 10 calls", c->name,
                          step, es, drift_at_10);
                next_report *= 10;
            }
        }
    }
    /* A slot that no call's indices named (1-D or 2-D, skipped sequences' old slots, slots never
     * handed out by reuse) keeps its first bytes, bit for bit: no sequence may write it. */
    if (c->idx_mode != IDX_NONE && test_failures == failures_before) {
        dual_download(&b.pool, pool_gpu);
        const fkda_tensor *pt = &b.pool.host;
        const size_t esz = fkda_dtype_size(pt->dtype);
        const size_t shift = (size_t)b.pool.offset * esz, slot_bytes = (size_t)pt->stride[0] * esz;
        const size_t heads_bytes = (size_t)(c->HV * pt->stride[1]) * esz; /* the slot's heads */
        int64_t unnamed = 0;
        for (int64_t slot = 0; slot < P; slot++) {
            if (named[slot]) continue;
            unnamed++;
            CHECK(memcmp((char *)pool_gpu + shift + (size_t)slot * slot_bytes,
                         (char *)pool_start + shift + (size_t)slot * slot_bytes, heads_bytes) == 0,
                  "%s: slot %lld, named by no sequence, changed", c->name, (long long)slot);
        }
        CHECK(unnamed > 0, "%s: every slot was named: the untouched-slot check checked nothing", c->name);
    }
    printf("%-44s %5d calls  out %.2e (worst %.2e)  pool %.2e (worst %.2e)  %s\n", c->name, c->steps, last_out,
           worst_out, last_state, worst_state, test_failures == failures_before ? "ok" : "FAILED");
    if (c->report)
        printf("%s: %d calls, output rel err %.3e (worst %.3e), pool rel err %.3e (worst %.3e)\n", c->report, c->steps,
               last_out, worst_out, last_state, worst_state);
    fflush(stdout);

    if (graph_exec) CUDA_OK(cudaGraphExecDestroy(graph_exec));
    free(out_gpu);
    free(out_ref);
    free(pool_gpu);
    free(pool_start);
    free(named);
    free(perm);
    free(ref_ws);
    dual *all[] = {&b.q,  &b.k,   &b.v,   &b.g,   &b.beta, &b.A_log, &b.dt_bias,
                   &b.cu, &b.idx, &b.acc, &b.out, &b.pool, &b.ref};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) dual_free(all[i]);
    return test_failures == failures_before;
}

/* ---- the cases --------------------------------------------------------------------------- */

/* A default case: bf16 inputs, fp32 pool [K, V], safe gate with A_log and dt_bias, norm and
 * sigmoid in the kernel, 1-D int32 indices, a few calls. */
static dcase base_case(const char *name)
{
    dcase c;
    memset(&c, 0, sizeof c);
    c.name = name;
    c.N = 3;
    c.T = 1;
    c.H = 2;
    c.HV = 4;
    c.K = 128;
    c.V = 128;
    c.in_dtype = FKDA_DTYPE_BF16;
    c.aux_dtype = FKDA_DTYPE_F32;
    c.pool_dtype = FKDA_DTYPE_F32;
    c.gate = FKDA_GATE_LOWER_BOUND;
    c.has_A = 1;
    c.has_dt = 1;
    c.l2norm = 1;
    c.sigmoid = 1;
    c.idx_mode = IDX_1D;
    c.idx_dtype = FKDA_DTYPE_I32;
    c.steps = 4;
    c.check_every = 1;
    return c;
}

/* A serving engine's decode step: every token tensor bf16 (the TOK kernels), skipped slots, the
 * given pool and layout, 3 calls. */
static dcase bf16_token_case(const char *name, fkda_dtype pool, int v_first)
{
    dcase c = base_case(name);
    c.bf16_g_beta = 1;
    c.skip = 1;
    c.pool_dtype = pool;
    c.v_first = v_first;
    c.steps = 3;
    return c;
}

/* vLLM's speculative form with every token tensor bf16 (the _spec kernels' call): set_packed_form's
 * B sequences, 2-D indices with accepted counts, skips, the given pool; `steps` calls. */
#define MAX_CASES 160 /* the full list's cases (add_case stops the run past it) */

/* Appends a case to the list; past MAX_CASES the run stops (enlarge it) rather than write beyond
 * the array. Returns the new count. */
static int add_case(dcase *cases, int n, dcase c)
{
    if (n >= MAX_CASES) {
        fprintf(stderr, "test_decode_cuda: more than %d cases\n", MAX_CASES);
        exit(2);
    }
    cases[n] = c;
    return n + 1;
}

static dcase spec_form_case(const char *name, int64_t B, const int64_t *pattern, int n_pattern, fkda_dtype pool,
                            int v_first, int steps)
{
    dcase c = base_case(name);
    set_packed_form(&c, B, pattern, n_pattern);
    c.idx_mode = IDX_2D;
    c.bf16_g_beta = 1;
    c.skip = 1;
    c.pool_dtype = pool;
    c.v_first = v_first;
    c.steps = steps;
    return c;
}

/* The largest spacing of a dtype's values relative to the value (one ulp at the bottom of a binade). */
static double ulp_rel(fkda_dtype dtype)
{
    return dtype == FKDA_DTYPE_BF16 ? 0x1p-7 : dtype == FKDA_DTYPE_F16 ? 0x1p-10 : 0x1p-23;
}

/* Each case's bars, from what the GPU can reach against the float64 reference:
 *  - fp32 all through (f32 output, fp32 pool): the 1e-5 (the fp32 arithmetic alone;
 *    the 1000-call chains measure about 1e-8 on the pool and 3e-7 on the output).
 *  - a value both backends round to bf16 or f16 (the output, a bf16 pool's stored state) differs
 *    only where the fp32 and float64 values fall on two sides of a rounding boundary, and then
 *    by one ulp. That is rare (the two values agree to ~1e-6, an ulp is 1e-3 or more); the bar
 *    lets one element in 16 differ so, or in a small tensor two elements (of up to 1.4 times the
 *    tensor's RMS): ulp * max(1/4, 2/sqrt(n)) over its n live elements. Truncating instead of
 *    rounding, or any real error, moves most elements and exceeds it.
 *  - an output computed from a bf16 pool inherits the pool's differences: the pool's bar is added.
 *  - the drift case (bf16 pool against a reference on an fp32 pool): the pool's error is the
 *    bf16 rounding of the state itself, at most 2^-8 relative per element (half an ulp, at the
 *    bottom of a binade), and the decay forgets old roundings as fast as new ones come, so it
 *    must stay under 2^-8 after any number of calls (measured: 1.7e-3 to 1.9e-3, flat over
 *    10,000); the output adds its own rounding (2^-8). Its growth is judged too (run_case). */
static void set_bars(dcase *c)
{
    int64_t tokens = c->N * c->T;
    if (c->nvar) {
        tokens = 0;
        for (int i = 0; i < c->nvar; i++) tokens += seq_len(c, i);
    }
    const int64_t seqs = c->nvar ? c->nvar : c->N;
    const double n_out = (double)(tokens * c->HV * c->V), n_pool = (double)(seqs * c->HV * c->K * c->V);
    const double share_out = fmax(0.25, 2.0 / sqrt(fmax(n_out, 1.0)));
    const double share_pool = fmax(0.25, 2.0 / sqrt(fmax(n_pool, 1.0)));
    if (c->ref_pool_f32 && c->pool_dtype == FKDA_DTYPE_BF16) {
        c->state_tol = 0x1p-8;
        c->out_tol = 0x1p-8 + (c->in_dtype == FKDA_DTYPE_F32 ? 0.0 : 0x1p-8);
        return;
    }
    c->state_tol = c->pool_dtype == FKDA_DTYPE_F32 ? 1e-5 : ulp_rel(c->pool_dtype) * share_pool;
    c->out_tol = c->in_dtype == FKDA_DTYPE_F32 ? 1e-5 : ulp_rel(c->in_dtype) * share_out;
    if (c->pool_dtype != FKDA_DTYPE_F32) c->out_tol += c->state_tol;
}

/* ---- vLLM's packed form against the one-token form, bit for bit ------------------------------ */

/* A contiguous tensor descriptor over `data`. */
static fkda_tensor flat_tensor(void *data, fkda_dtype dtype, int ndim, const int64_t *shape)
{
    fkda_tensor t;
    memset(&t, 0, sizeof t);
    t.data = data;
    t.dtype = dtype;
    t.ndim = ndim;
    int64_t stride = 1;
    for (int i = ndim - 1; i >= 0; i--) {
        t.shape[i] = shape[i];
        t.stride[i] = stride;
        stride *= shape[i];
    }
    return t;
}

/* The same B one-token sequences decoded twice from two copies of one pool: as [B, 1, H, K] tokens
 * (no cu_seqlens) and in vLLM's packed form, [1, B, H, K] with cu_seqlens = arange(B + 1) (the
 * same bytes). The selection gives the packed form the one-token form's kernel, or its twin
 * compiled for cu_seqlens, with the same geometry (tests/c/test_decode_select.c), whose one-token
 * path is the same arithmetic: outputs and pools must agree bit for bit, over `steps` calls
 * (sequence 0 skipped by a negative slot). */
static void packed_form_bitwise(int64_t B, int64_t HV, fkda_dtype pool_dtype, int v_first, int bf16_tokens, int steps,
                                test_rng *r, cudaStream_t stream)
{
    const int64_t H = HV, K = 128, V = 128, P = B + 3;
    const fkda_dtype gb = bf16_tokens ? FKDA_DTYPE_BF16 : FKDA_DTYPE_F32;
    char name[128];
    snprintf(name, sizeof name, "packed form = one-token form, B=%lld HV=%lld, %s pool %s, %s", (long long)B,
             (long long)HV, pool_dtype == FKDA_DTYPE_BF16 ? "bf16" : "fp32", v_first ? "[V,K]" : "[K,V]",
             bf16_tokens ? "bf16 tokens" : "f32 g, beta");
    const int64_t shq[4] = {B, 1, H, K}, shv[4] = {B, 1, HV, V}, shg[4] = {B, 1, HV, K}, shb[3] = {B, 1, HV};
    const int64_t shp[4] = {P, HV, v_first ? V : K, v_first ? K : V};
    const size_t nq = (size_t)(B * H * K), nv = (size_t)(B * HV * V), ng = (size_t)(B * HV * K), nb = (size_t)(B * HV);
    const size_t np = (size_t)(P * HV * K * V), psz = fkda_dtype_size(pool_dtype), gsz = fkda_dtype_size(gb);
    void *q, *k, *v, *g, *beta, *out_a, *out_b, *pool_a, *pool_b, *A_log, *dt_bias, *cu, *idx;
    CUDA_OK(cudaMalloc(&q, nq * 2));
    CUDA_OK(cudaMalloc(&k, nq * 2));
    CUDA_OK(cudaMalloc(&v, nv * 2));
    CUDA_OK(cudaMalloc(&g, ng * gsz));
    CUDA_OK(cudaMalloc(&beta, nb * gsz));
    CUDA_OK(cudaMalloc(&out_a, nv * 2));
    CUDA_OK(cudaMalloc(&out_b, nv * 2));
    CUDA_OK(cudaMalloc(&pool_a, np * psz));
    CUDA_OK(cudaMalloc(&pool_b, np * psz));
    CUDA_OK(cudaMalloc(&A_log, (size_t)HV * 4));
    CUDA_OK(cudaMalloc(&dt_bias, (size_t)(HV * K) * 4));
    CUDA_OK(cudaMalloc(&cu, (size_t)(B + 1) * 4));
    CUDA_OK(cudaMalloc(&idx, (size_t)B * 4));
    const size_t host_bytes = np * psz > nq * 4 ? np * psz : nq * 4;
    unsigned char *h = malloc(host_bytes), *h2 = malloc(host_bytes);
    /* upload n random values of `dtype` (sd 1, or 0.5 for the pool) */
#define UPLOAD_RANDOM(dst, dtype, n, sd)                                                              \
    do {                                                                                              \
        for (size_t i_ = 0; i_ < (n); i_++) set_at(h, (dtype), (int64_t)i_, (sd)*test_rng_normal(r)); \
        CUDA_OK(cudaMemcpy((dst), h, (n)*fkda_dtype_size(dtype), cudaMemcpyHostToDevice));            \
    } while (0)
    UPLOAD_RANDOM(pool_a, pool_dtype, np, 0.5);
    CUDA_OK(cudaMemcpy(pool_b, pool_a, np * psz, cudaMemcpyDeviceToDevice));
    UPLOAD_RANDOM(A_log, FKDA_DTYPE_F32, (size_t)HV, 0.5);
    UPLOAD_RANDOM(dt_bias, FKDA_DTYPE_F32, (size_t)(HV * K), 0.5);
    int32_t *hi = (int32_t *)h;
    for (int64_t n = 0; n <= B; n++) hi[n] = (int32_t)n;
    CUDA_OK(cudaMemcpy(cu, hi, (size_t)(B + 1) * 4, cudaMemcpyHostToDevice));
    for (int64_t n = 0; n < B; n++) hi[n] = (int32_t)(P - 1 - n); /* distinct slots, not slot n */
    if (B > 1) hi[0] = -1; /* a skipped sequence, but never the only one (zeros compare equal) */
    CUDA_OK(cudaMemcpy(idx, hi, (size_t)B * 4, cudaMemcpyHostToDevice));

    fkda_decode_args a;
    memset(&a, 0, sizeof a);
    a.q = flat_tensor(q, FKDA_DTYPE_BF16, 4, shq);
    a.k = flat_tensor(k, FKDA_DTYPE_BF16, 4, shq);
    a.v = flat_tensor(v, FKDA_DTYPE_BF16, 4, shv);
    a.g = flat_tensor(g, gb, 4, shg);
    a.beta = flat_tensor(beta, gb, 3, shb);
    a.out = flat_tensor(out_a, FKDA_DTYPE_BF16, 4, shv);
    a.A_log = flat_tensor(A_log, FKDA_DTYPE_F32, 1, (int64_t[]){HV});
    a.dt_bias = flat_tensor(dt_bias, FKDA_DTYPE_F32, 2, (int64_t[]){HV, K});
    a.state_pool = flat_tensor(pool_a, pool_dtype, 4, shp);
    a.state_indices = flat_tensor(idx, FKDA_DTYPE_I32, 1, (int64_t[]){B});
    a.options = fkda_default_options();
    a.options.gate = FKDA_GATE_LOWER_BOUND;
    a.options.lower_bound = -5.0;
    a.options.use_qk_l2norm = 1;
    a.options.use_beta_sigmoid = 1;
    a.options.state_v_first = v_first;
    fkda_decode_args pk = a; /* the packed form: the same bytes as one row of B tokens */
    const int64_t pq[4] = {1, B, H, K}, pv[4] = {1, B, HV, V}, pg[4] = {1, B, HV, K}, pb[3] = {1, B, HV};
    pk.q = flat_tensor(q, FKDA_DTYPE_BF16, 4, pq);
    pk.k = flat_tensor(k, FKDA_DTYPE_BF16, 4, pq);
    pk.v = flat_tensor(v, FKDA_DTYPE_BF16, 4, pv);
    pk.g = flat_tensor(g, gb, 4, pg);
    pk.beta = flat_tensor(beta, gb, 3, pb);
    pk.out = flat_tensor(out_b, FKDA_DTYPE_BF16, 4, pv);
    pk.state_pool = flat_tensor(pool_b, pool_dtype, 4, shp);
    pk.cu_seqlens = flat_tensor(cu, FKDA_DTYPE_I32, 1, (int64_t[]){B + 1});
    fkda_device gpu = {FKDA_DEVICE_CUDA, 0, stream, 0, 0};
    int same = 1;
    for (int step = 0; step < steps && same; step++) {
        UPLOAD_RANDOM(q, FKDA_DTYPE_BF16, nq, 1.0);
        UPLOAD_RANDOM(k, FKDA_DTYPE_BF16, nq, 1.0);
        UPLOAD_RANDOM(v, FKDA_DTYPE_BF16, nv, 1.0);
        UPLOAD_RANDOM(g, gb, ng, 1.0);
        UPLOAD_RANDOM(beta, gb, nb, 1.0);
        CUDA_OK(cudaMemset(out_a, 0xff, nv * 2)); /* NaN poison, both alike */
        CUDA_OK(cudaMemset(out_b, 0xff, nv * 2));
        fkda_status st = fkda_decode(&a, &gpu, NULL, 0);
        CHECK(st == FKDA_OK, "%s: one-token form: %s", name, fkda_last_error());
        st = fkda_decode(&pk, &gpu, NULL, 0);
        CHECK(st == FKDA_OK, "%s: packed form: %s", name, fkda_last_error());
        CUDA_OK(cudaStreamSynchronize(stream));
        CUDA_OK(cudaMemcpy(h, out_a, nv * 2, cudaMemcpyDeviceToHost));
        CUDA_OK(cudaMemcpy(h2, out_b, nv * 2, cudaMemcpyDeviceToHost));
        size_t nonfinite = 0; /* the poison left anywhere (both alike) would compare equal */
        for (size_t i = 0; i < nv; i++) nonfinite += !isfinite(get_at(h, FKDA_DTYPE_BF16, (int64_t)i));
        CHECK(nonfinite == 0, "%s step %d: %zu output elements not written or not finite", name, step, nonfinite);
        size_t nonzero = 0; /* two outputs of zeros (skipped sequences only) would compare equal too */
        for (size_t i = 0; i < nv; i++) nonzero += get_at(h, FKDA_DTYPE_BF16, (int64_t)i) != 0.0;
        CHECK(nonzero > 0, "%s step %d: every output is zero: no sequence ran", name, step);
        same = nonfinite == 0 && memcmp(h, h2, nv * 2) == 0;
        CHECK(memcmp(h, h2, nv * 2) == 0, "%s step %d: the outputs differ", name, step);
        CUDA_OK(cudaMemcpy(h, pool_a, np * psz, cudaMemcpyDeviceToHost));
        CUDA_OK(cudaMemcpy(h2, pool_b, np * psz, cudaMemcpyDeviceToHost));
        CHECK(memcmp(h, h2, np * psz) == 0, "%s step %d: the pools differ", name, step);
        same = same && memcmp(h, h2, np * psz) == 0;
    }
#undef UPLOAD_RANDOM
    printf("%-44s %5d calls  %s\n", name, steps, same ? "bitwise equal" : "FAILED");
    void *all[] = {q, k, v, g, beta, out_a, out_b, pool_a, pool_b, A_log, dt_bias, cu, idx};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) CUDA_OK(cudaFree(all[i]));
    free(h);
    free(h2);
}

/* ---- the variant walk ------------------------------------------------------------------------ */

/* The call as the CUDA launch describes it to the selection (decode_launch.cu), from the layout
 * run_case gives the case's tensors: the pool padded by ps elements per row when strided, one
 * element off a 16-byte boundary when misaligned; small tensors, so token offsets fit in 31 bits. */
static fkda_decode_call describe_call(const dcase *c, const struct cudaDeviceProp *prop)
{
    fkda_decode_call d;
    memset(&d, 0, sizeof d);
    const int64_t N = c->nvar ? c->nvar : c->N;
    int64_t T = c->T;
    if (c->nvar) {
        T = 0;
        for (int i = 0; i < c->nvar; i++) T += seq_len(c, i);
    }
    const int bf16 = c->pool_dtype == FKDA_DTYPE_BF16, vec = bf16 ? 8 : 4;
    const int64_t d2 = c->v_first ? c->V : c->K, d3 = c->v_first ? c->K : c->V;
    const int64_t ps = c->strided ? vec : 0, row = d3 + ps, head = d2 * row, slot = c->HV * head;
    d.heads = N * c->HV;
    d.K = (int)c->K;
    d.V = (int)c->V;
    d.state_bf16 = bf16;
    d.v_first = c->v_first;
    d.vectorizable = !c->misaligned && row % vec == 0 && head % vec == 0 && slot % vec == 0 && d3 % vec == 0;
    d.dense128 = d.vectorizable && c->K == 128 && c->V == 128 && row == 128;
    d.T = T;
    d.sequences = N;
    d.cu_seqlens = c->nvar > 0;
    d.idx_2d = c->idx_mode == IDX_2D;
    const fkda_dtype gb = c->bf16_g_beta ? FKDA_DTYPE_BF16 : c->aux_dtype;
    d.tokens_bf16 = c->in_dtype == FKDA_DTYPE_BF16 && gb == FKDA_DTYPE_BF16;
    d.tokens_fit_31_bits = 1;
    d.sm_count = prop ? prop->multiProcessorCount : 132;
    d.cc_major = prop ? prop->major : 9;
    d.l2_bytes = prop ? prop->l2CacheSize : 50 << 20;
    return d;
}

/* Forces each variant (all, or those named) in turn on every case it serves; with `run` 0 only
 * prints the plan. Returns the number of variants that served no case. */
static int walk_variants(const dcase *cases, int n, const char *const *names, int n_names, int run,
                         const struct cudaDeviceProp *prop, test_rng *r, cudaStream_t stream)
{
    int unserved = 0;
    for (int v = 0; v < fkda_decode_variant_count; v++) {
        const fkda_decode_variant *var = &fkda_decode_variant_table[v];
        int wanted = n_names == 0;
        for (int i = 0; i < n_names; i++) wanted |= strcmp(names[i], var->name) == 0;
        if (!wanted) continue;
        setenv("FKDA_DECODE_VARIANT", var->name, 1);
        forced_variant = var->name;
        printf("== FKDA_DECODE_VARIANT=%s\n", var->name);
        int served = 0;
        for (int i = 0; i < n; i++) {
            const fkda_decode_call call = describe_call(&cases[i], prop);
            if (!fkda_decode_variant_serves(var, &call)) continue;
            served++;
            if (!run) {
                printf("  %s\n", cases[i].name);
                continue;
            }
            dcase c = cases[i];
            if (c.out_tol == 0) set_bars(&c);
            run_case(&c, r, stream);
        }
        printf("  %s: %d case(s)\n", var->name, served);
        CHECK(served > 0, "FKDA_DECODE_VARIANT=%s serves none of the cases", var->name);
        unserved += served == 0;
    }
    for (int i = 0; i < n_names; i++)
        CHECK(fkda_decode_variant_find(names[i]) >= 0, "--variants %s: no such variant in decode_variants.h", names[i]);
    unsetenv("FKDA_DECODE_VARIANT");
    forced_variant = NULL;
    return unserved;
}

int main(int argc, char **argv)
{
    int small = 0, variants = 0, plan = 0, n_names = 0;
    const char *names[64];
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--small") == 0)
            small = 1;
        else if (strcmp(argv[i], "--variants") == 0)
            variants = 1;
        else if (strcmp(argv[i], "--plan") == 0)
            plan = 1;
        else if (variants && argv[i][0] != '-' && n_names < 64)
            names[n_names++] = argv[i];
        else {
            fprintf(stderr, "usage: test_decode_cuda [--small] [--variants [NAME ...] | --plan]\n");
            return 2;
        }
    }
    uint64_t seed = test_seed_from_env();
    printf("test_decode_cuda: seed %llu (FKDA_TEST_SEED=%llu repeats it)%s\n", (unsigned long long)seed,
           (unsigned long long)seed, small ? ", --small" : "");
    test_rng rng;
    test_rng_seed(&rng, seed);
    struct cudaDeviceProp prop;
    memset(&prop, 0, sizeof prop);
    cudaStream_t stream = NULL;
    if (!plan) { /* --plan needs no GPU */
        int count = 0;
        CUDA_OK(cudaGetDeviceCount(&count));
        if (count == 0) {
            printf("no CUDA device\n");
            return 1;
        }
        CUDA_OK(cudaGetDeviceProperties(&prop, 0));
        printf("device: %s (sm_%d%d)\n", prop.name, prop.major, prop.minor);
        CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    }

    dcase cases[MAX_CASES];
    int n = 0;
    dcase c;

    c = base_case("fp32 pool, skipped sequences");
    c.N = 5;
    c.skip = 1;
    n = add_case(cases, n, c);
    c = base_case("bf16 pool [V,K], 2-D indices, accepted, i64");
    c.pool_dtype = FKDA_DTYPE_BF16;
    c.v_first = 1;
    c.idx_mode = IDX_2D;
    c.idx_dtype = FKDA_DTYPE_I64;
    c.T = 3;
    c.N = 4;
    c.skip = 1;
    n = add_case(cases, n, c);
    c = base_case("varlen [2,0,1,3], fp32 [V,K], i64 cu");
    c.nvar = 4;
    c.lens[0] = 2;
    c.lens[1] = 0;
    c.lens[2] = 1;
    c.lens[3] = 3;
    c.v_first = 1;
    c.idx_dtype = FKDA_DTYPE_I64;
    n = add_case(cases, n, c);
    c = base_case("K=100 V=50 (scalar path), softplus, f16");
    c.K = 100;
    c.V = 50;
    c.gate = FKDA_GATE_SOFTPLUS;
    c.in_dtype = FKDA_DTYPE_F16;
    c.aux_dtype = FKDA_DTYPE_BF16;
    n = add_case(cases, n, c);
    c = base_case("strided tokens and pool, graph replays");
    c.strided = 1;
    c.graph = 1;
    c.steps = 3;
    n = add_case(cases, n, c);
    c = base_case("misaligned bf16 pool (scalar path)");
    c.misaligned = 1;
    c.pool_dtype = FKDA_DTYPE_BF16;
    c.steps = 2;
    n = add_case(cases, n, c);
    /* Enough heads (>= 4 per SM) for split-K tiles by default. */
    c = base_case("640 heads, fp32 [K,V], skips");
    c.N = 160;
    c.skip = 1;
    c.steps = 3;
    n = add_case(cases, n, c);
    c = base_case("bf16 pool [V,K], 1-D indices, skips");
    c.N = 5;
    c.skip = 1;
    c.pool_dtype = FKDA_DTYPE_BF16;
    c.v_first = 1;
    n = add_case(cases, n, c);
    c = base_case("300 heads, bf16 pool [K,V], skips (packed)");
    c.N = 75;
    c.skip = 1;
    c.pool_dtype = FKDA_DTYPE_BF16;
    c.steps = 3;
    n = add_case(cases, n, c);
    c = base_case("back to back, fp32 [K,V]");
    c.twice = 1;
    c.steps = 3;
    n = add_case(cases, n, c);
    c = base_case("back to back, 640 heads");
    c.N = 160;
    c.twice = 1;
    c.steps = 2;
    n = add_case(cases, n, c);
    c = base_case("back to back, 300 heads bf16 (packed)");
    c.N = 75;
    c.twice = 1;
    c.steps = 2;
    c.pool_dtype = FKDA_DTYPE_BF16;
    n = add_case(cases, n, c);
    /* Every token tensor bf16: the kernels compiled for it (narrow tiles, TOKEN_DTYPE). */
    c = base_case("bf16 tokens, bf16 pool [K,V], skips");
    c.bf16_g_beta = 1;
    c.N = 5;
    c.skip = 1;
    c.pool_dtype = FKDA_DTYPE_BF16;
    n = add_case(cases, n, c);
    c = base_case("bf16 tokens, fp32 [K,V], 160 heads (wide tiles)");
    c.bf16_g_beta = 1;
    c.N = 40;
    c.skip = 1;
    c.steps = 2;
    n = add_case(cases, n, c);
    /* One token, [V,K] pools: the cases the [V,K] bf16-token kernels serve (CU = 0). */
    c = base_case("bf16 tokens, fp32 [V,K], skips");
    c.bf16_g_beta = 1;
    c.N = 5;
    c.skip = 1;
    c.v_first = 1;
    n = add_case(cases, n, c);
    c = base_case("bf16 tokens, bf16 pool [V,K], skips");
    c.bf16_g_beta = 1;
    c.N = 5;
    c.skip = 1;
    c.pool_dtype = FKDA_DTYPE_BF16;
    c.v_first = 1;
    n = add_case(cases, n, c);
    /* vLLM's packed form (cu_seqlens, 1-D indices), every token bf16: the kernels compiled for
     * cu_seqlens (CU) in each pool dtype and layout, with sequences of 0, 1 and 3 tokens (T = N,
     * so still a decode step to the selection) and the skipped sequences 0 and 6 of 3 tokens. */
    static const int64_t mixed[] = {3, 0, 1, 1, 0, 1}, ones[] = {1};
    static const char *const packed_names[4] = {
        "packed form [3,0,1,1,0,1]x2, bf16 tokens, fp32 [K,V]", "packed form [3,0,1,1,0,1]x2, bf16 tokens, bf16 [K,V]",
        "packed form [3,0,1,1,0,1]x2, bf16 tokens, fp32 [V,K]", "packed form [3,0,1,1,0,1]x2, bf16 tokens, bf16 [V,K]"};
    for (int i = 0; i < 4; i++) {
        c = base_case(packed_names[i]);
        set_packed_form(&c, 12, mixed, 6);
        c.bf16_g_beta = 1;
        c.skip = 1;
        c.pool_dtype = i & 1 ? FKDA_DTYPE_BF16 : FKDA_DTYPE_F32;
        c.v_first = i >> 1;
        c.steps = 3;
        n = add_case(cases, n, c);
    }
    /* The one-token CU kernels guess that sequence n is token n (vLLM's arange) and load it early:
     * here it is wrong for every one-token sequence (sequence 3i + 2 is token i), and from
     * sequence 5 on it lies past T = 4 itself. */
    static const int64_t empties[] = {0, 0, 1};
    for (int i = 0; i < 2; i++) {
        c = bf16_token_case(i ? "packed form [0,0,1]x4, bf16 tokens, bf16 [K,V]"
                              : "packed form [0,0,1]x4, bf16 tokens, fp32 [K,V]",
                            i ? FKDA_DTYPE_BF16 : FKDA_DTYPE_F32, 0);
        set_packed_form(&c, 12, empties, 3);
        c.H = c.HV = 1; /* 12 heads: the narrow tiles, bf16 pools' too */
        n = add_case(cases, n, c);
    }
    /* 12 heads of bf16 pools, every token bf16: the narrow bf16 tiles, whose state words stay raw
     * until the token is staged, in the packed form with its guess held (arange) and in the
     * current form, both layouts. */
    static const char *const narrow_names[4] = {
        "packed form arange(13), bf16 [K,V] (narrow)", "packed form arange(13), bf16 [V,K] (narrow)",
        "one token, 12 heads, bf16 [K,V] (narrow)", "one token, 12 heads, bf16 [V,K] (narrow)"};
    for (int i = 0; i < 4; i++) {
        c = bf16_token_case(narrow_names[i], FKDA_DTYPE_BF16, i & 1);
        if (i < 2) {
            set_packed_form(&c, 12, ones, 1);
            c.H = c.HV = 1;
        }
        n = add_case(cases, n, c);
    }
    /* Every token bf16 with A_log and dt_bias bf16 too (their dtype stays a run-time one in the
     * TOK kernels, whose staging loads dt_bias in both forms, each into a register of its own:
     * bias16 is the only one a bf16 dt_bias lands in), on the narrow tiles of both pool dtypes. */
    for (int i = 0; i < 2; i++) {
        c = bf16_token_case(i ? "one token, 12 heads, bf16 A_log and dt_bias, bf16 [K,V] (narrow)"
                              : "one token, 12 heads, bf16 A_log and dt_bias, fp32 [K,V]",
                            i ? FKDA_DTYPE_BF16 : FKDA_DTYPE_F32, 0);
        c.aux_dtype = FKDA_DTYPE_BF16;
        n = add_case(cases, n, c);
    }
    /* 32 heads of bf16 pools, one token, every token bf16: the wide bf16 [K, V] tile, which loads
     * the token before the state and keeps the state's words raw until it is staged; in [V, K]
     * the rules give the narrow tile (decode_select.c), and the wide [V, K] one runs these cases
     * only when forced (--variants). */
    for (int i = 0; i < 2; i++) {
        c = bf16_token_case(i ? "one token, 32 heads, bf16 [V,K] (narrow by the rules)"
                              : "one token, 32 heads, bf16 [K,V] (wide)",
                            FKDA_DTYPE_BF16, i);
        c.N = 8;
        n = add_case(cases, n, c);
    }
    /* vLLM's speculative form (cu_seqlens, 2-D indices, accepted counts), every token bf16: the
     * _spec kernels (narrow tiles at 32 heads) in each pool dtype and layout, with sequences of 2,
     * 3, 3, 0 and 1 tokens (repeated), int64 indices in one and no accepted counts in another.
     * The skips (run_case) land on tokens that exist: sequence 1's last token has no slot (its
     * store skipped) and sequence 2's first slot is -1 every other call (its state read skipped
     * when that is the accepted column, its first token's store skipped). */
    static const int64_t spec_lens[] = {2, 3, 3, 0, 1};
    static const char *const spec_names[4] = {"spec form [2,3,3,0,1,...], bf16 tokens, fp32 [K,V]",
                                              "spec form [2,3,3,0,1,...], bf16 tokens, bf16 [K,V]",
                                              "spec form [2,3,3,0,1,...], bf16 tokens, fp32 [V,K], i64 indices",
                                              "spec form [2,3,3,0,1,...], bf16 tokens, bf16 [V,K], no accepted counts"};
    for (int i = 0; i < 4; i++) {
        c = spec_form_case(spec_names[i], 8, spec_lens, 5, i & 1 ? FKDA_DTYPE_BF16 : FKDA_DTYPE_F32, i >> 1, 3);
        c.idx_dtype = i == 2 ? FKDA_DTYPE_I64 : FKDA_DTYPE_I32;
        c.no_accepted = i == 3;
        c.wild_accepted = i == 0;
        n = add_case(cases, n, c);
    }
    /* The _spec kernels stage a sequence's tokens in batches of up to 4, fewer in CTAs of fewer
     * than 4 warps (decode_spec.cuh): sequences longer than a batch (the second and third
     * batches, the buffers reused behind a barrier), and batches of 2 and 1 token in the CTAs of
     * 2 and 1 warps that few heads get (4 and 2 heads: narrow tiles of 16 warps a head, one
     * eighth or one sixteenth of a head a CTA on 132 SMs). */
    static const int64_t spec_long_lens[] = {5, 9, 1, 4, 0, 8};
    static const char *const spec_long_names[4] = {
        "spec form [5,9,1,4,0,8], bf16 tokens, fp32 [K,V], 32 heads",
        "spec form [5,9,1,4,0,8], bf16 tokens, bf16 [V,K], 4 heads (2-warp CTAs)",
        "spec form [5,9], bf16 tokens, fp32 [V,K], 2 heads (1-warp CTAs)",
        "spec form [5,9,1,4,0,8], bf16 tokens, bf16 [K,V], 8 heads"};
    static const int64_t spec_long_B[4] = {8, 4, 2, 8};
    for (int i = 0; i < 4; i++) {
        const int bf16_pool = i == 1 || i == 3, v_first = i == 1 || i == 2;
        c = spec_form_case(spec_long_names[i], spec_long_B[i], spec_long_lens, i == 2 ? 2 : 6,
                           bf16_pool ? FKDA_DTYPE_BF16 : FKDA_DTYPE_F32, v_first, 3);
        if (i > 0) c.H = c.HV = 1; /* B heads */
        n = add_case(cases, n, c);
    }
    /* No indices (sequence n continues slot n; the CU kernels' slot is then not loaded). */
    c = base_case("packed form arange(9), bf16 tokens, no indices");
    set_packed_form(&c, 8, ones, 1);
    c.bf16_g_beta = 1;
    c.idx_mode = IDX_NONE;
    c.steps = 3;
    n = add_case(cases, n, c);
    /* 304 and 312 heads of bf16 pools: the packed kernels (from 2 heads per SM), one token per
     * sequence, and mixed lengths (the two fp32 passes over a longer sequence). */
    c = base_case("packed form arange(77), bf16 pool [K,V] (packed)");
    set_packed_form(&c, 76, ones, 1);
    c.pool_dtype = FKDA_DTYPE_BF16;
    c.skip = 1;
    c.steps = 2;
    n = add_case(cases, n, c);
    c = base_case("packed form [3,0,1,1,0,1]x13, bf16 [V,K] (packed)");
    set_packed_form(&c, 78, mixed, 6);
    c.pool_dtype = FKDA_DTYPE_BF16;
    c.v_first = 1;
    c.skip = 1;
    c.steps = 2;
    n = add_case(cases, n, c);
    if (!small) {
        c = base_case("slot reuse by new sequences");
        c.N = 4;
        c.reuse = 1;
        c.steps = 12;
        n = add_case(cases, n, c);
        c = base_case("slot reuse, bf16 pool [V,K]");
        c.N = 4;
        c.reuse = 1;
        c.steps = 12;
        c.pool_dtype = FKDA_DTYPE_BF16;
        c.v_first = 1;
        n = add_case(cases, n, c);
        c = base_case("no indices, gate none, raw beta, f32 in");
        c.idx_mode = IDX_NONE;
        c.gate = FKDA_GATE_NONE;
        c.has_A = c.has_dt = 0;
        c.l2norm = 0;
        c.sigmoid = 0;
        c.in_dtype = FKDA_DTYPE_F32;
        n = add_case(cases, n, c);
        c = base_case("lower bound without A_log, neg eigval");
        c.has_A = 0;
        c.neg_eig = 1;
        n = add_case(cases, n, c);
        c = base_case("lower bound, no dt_bias, bf16 aux");
        c.has_dt = 0;
        c.aux_dtype = FKDA_DTYPE_BF16;
        n = add_case(cases, n, c);
        c = base_case("bf16 tokens, fp32 [K,V], skips");
        c.bf16_g_beta = 1;
        c.N = 5;
        c.skip = 1;
        n = add_case(cases, n, c);
        c = base_case("bf16 tokens, fp32 [V,K], spec T=3, 2-D");
        c.bf16_g_beta = 1;
        c.v_first = 1;
        c.idx_mode = IDX_2D;
        c.T = 3;
        c.N = 4;
        c.skip = 1;
        n = add_case(cases, n, c);
        c = base_case("bf16 tokens, bf16 pool [V,K], reuse, softplus");
        c.bf16_g_beta = 1;
        c.N = 4;
        c.reuse = 1;
        c.steps = 8;
        c.gate = FKDA_GATE_SOFTPLUS;
        c.pool_dtype = FKDA_DTYPE_BF16;
        c.v_first = 1;
        n = add_case(cases, n, c);
        c = base_case("bf16 tokens, bf16 pool [V,K], 64 heads (wide tiles)");
        c.bf16_g_beta = 1;
        c.N = 16;
        c.pool_dtype = FKDA_DTYPE_BF16;
        c.v_first = 1;
        c.skip = 1;
        n = add_case(cases, n, c);
        c = base_case("bf16 tokens, bf16 pool [K,V], 64 heads, T=2, softplus");
        c.bf16_g_beta = 1;
        c.N = 16;
        c.T = 2;
        c.pool_dtype = FKDA_DTYPE_BF16;
        c.gate = FKDA_GATE_SOFTPLUS;
        n = add_case(cases, n, c);
        c = base_case("bf16 tokens, bf16 pool [K,V], 100 heads (wide, 4-warp CTAs)");
        c.bf16_g_beta = 1;
        c.N = 25;
        c.pool_dtype = FKDA_DTYPE_BF16;
        c.skip = 1;
        c.steps = 3;
        n = add_case(cases, n, c);
        c = base_case("bf16 tokens, bf16 pool [K,V], 32 heads (wide, 2-warp CTAs)");
        c.bf16_g_beta = 1;
        c.N = 8;
        c.pool_dtype = FKDA_DTYPE_BF16;
        c.skip = 1;
        c.steps = 3;
        n = add_case(cases, n, c);
        c = base_case("bf16 tokens, fp32 [K,V], 80 heads (narrow, 4-warp CTAs)");
        c.bf16_g_beta = 1;
        c.N = 20;
        c.skip = 1;
        n = add_case(cases, n, c);
        /* More heads than two CTAs per SM hold on a 132-SM card: split-K tiles by default. */
        c = base_case("bf16 tokens, fp32 [K,V], 320 heads (split K)");
        c.bf16_g_beta = 1;
        c.N = 80;
        c.skip = 1;
        c.steps = 2;
        n = add_case(cases, n, c);
        /* The wide _spec kernels: split K (fp32 [K, V], 320 heads), fp32 [V, K] (160), bf16
         * pools (48 heads). */
        static const int64_t spec_wide_lens[] = {3, 2, 3, 1};
        n = add_case(cases, n,
                     spec_form_case("spec form, bf16 tokens, fp32 [K,V], 320 heads (split K)", 80, spec_wide_lens, 4,
                                    FKDA_DTYPE_F32, 0, 2));
        c = spec_form_case("spec form, bf16 tokens, fp32 [V,K], 160 heads", 40, spec_wide_lens, 4, FKDA_DTYPE_F32, 1,
                           2);
        c.skip = 0;
        n = add_case(cases, n, c);
        n = add_case(cases, n,
                     spec_form_case("spec form, bf16 tokens, bf16 [K,V], 48 heads", 12, spec_wide_lens, 4,
                                    FKDA_DTYPE_BF16, 0, 2));
        n = add_case(cases, n,
                     spec_form_case("spec form, bf16 tokens, bf16 [V,K], 48 heads", 12, spec_wide_lens, 4,
                                    FKDA_DTYPE_BF16, 1, 2));
        /* From 15 heads an SM the wide bf16 [K, V] _spec tile takes a whole head a CTA (8 warps;
         * decode_select.c): 2,048 heads on a card of up to 136 SMs. */
        n = add_case(cases, n,
                     spec_form_case("spec form, bf16 tokens, bf16 [K,V], 2048 heads (8-warp CTAs)", 512, spec_wide_lens,
                                    4, FKDA_DTYPE_BF16, 0, 2));
        c = base_case("bf16 tokens, fp32 [V,K], 160 heads, 2-D, T=3");
        c.bf16_g_beta = 1;
        c.N = 40;
        c.v_first = 1;
        c.idx_mode = IDX_2D;
        c.T = 3;
        c.steps = 2;
        n = add_case(cases, n, c);
        c = base_case("softplus, no dt_bias, no norm");
        c.gate = FKDA_GATE_SOFTPLUS;
        c.has_dt = 0;
        c.l2norm = 0;
        n = add_case(cases, n, c);
        c = base_case("GVA H=1 HV=8");
        c.H = 1;
        c.HV = 8;
        n = add_case(cases, n, c);
        c = base_case("GVA H=2 HV=16 bf16 pool");
        c.H = 2;
        c.HV = 16;
        c.pool_dtype = FKDA_DTYPE_BF16;
        n = add_case(cases, n, c);
        c = base_case("spec T=4, 2-D i32 indices, fp32 [K,V], wild accepted counts");
        c.idx_mode = IDX_2D;
        c.T = 4;
        c.N = 5;
        c.skip = 1;
        c.wild_accepted = 1;
        n = add_case(cases, n, c);
        c = base_case("spec varlen [3,1,4,2], 2-D indices");
        c.idx_mode = IDX_2D;
        c.nvar = 4;
        c.lens[0] = 3;
        c.lens[1] = 1;
        c.lens[2] = 4;
        c.lens[3] = 2;
        c.skip = 1;
        n = add_case(cases, n, c);
        c = base_case("spec T=2 bf16 pool [K,V], graph");
        c.idx_mode = IDX_2D;
        c.T = 2;
        c.pool_dtype = FKDA_DTYPE_BF16;
        c.graph = 1;
        n = add_case(cases, n, c);
        c = base_case("varlen i32 cu [1,1,0,5,1,2], bf16 pool");
        c.nvar = 6;
        c.lens[0] = 1;
        c.lens[1] = 1;
        c.lens[2] = 0;
        c.lens[3] = 5;
        c.lens[4] = 1;
        c.lens[5] = 2;
        c.pool_dtype = FKDA_DTYPE_BF16;
        n = add_case(cases, n, c);
        c = base_case("T=3 per sequence, 1-D indices");
        c.T = 3;
        n = add_case(cases, n, c);
        c = base_case("no indices, T=2");
        c.idx_mode = IDX_NONE;
        c.T = 2;
        n = add_case(cases, n, c);
        c = base_case("1200 heads, bf16 pool [V,K], spec T=2, skips");
        c.N = 300;
        c.idx_mode = IDX_2D;
        c.T = 2;
        c.pool_dtype = FKDA_DTYPE_BF16;
        c.v_first = 1;
        c.skip = 1;
        n = add_case(cases, n, c);
        c = base_case("2048 heads, fp32 [V,K], slot reuse");
        c.N = 512;
        c.reuse = 1;
        c.steps = 6;
        c.v_first = 1;
        n = add_case(cases, n, c);
        c = base_case("1024 heads, bf16 pool [K,V], no indices");
        c.N = 256;
        c.idx_mode = IDX_NONE;
        c.pool_dtype = FKDA_DTYPE_BF16;
        n = add_case(cases, n, c);
        /* vLLM's packed form at the benchmark's sizes: B = 1 with 32 heads, 16 x 4 heads, 640 heads
         * (split K in fp32, packed in bf16), in both pool dtypes and layouts, every token bf16 or
         * g and beta f32; mixed lengths with packed split K; i64 cu_seqlens and indices; graphs. */
        static char packed_big[16][80];
        static const int64_t packed_B[4] = {1, 16, 160, 162}, packed_HV[4] = {32, 4, 4, 4};
        for (int i = 0; i < 16; i++) {
            const int size = i >> 2, bf16 = i & 1, vf = (i >> 1) & 1;
            snprintf(packed_big[i], sizeof packed_big[i], "packed form %s B=%lld HV=%lld, %s [%s]",
                     size == 3 ? "[3,0,1,1,0,1]" : "arange", (long long)packed_B[size], (long long)packed_HV[size],
                     bf16 ? "bf16" : "fp32", vf ? "V,K" : "K,V");
            c = base_case(packed_big[i]);
            if (size == 3)
                set_packed_form(&c, packed_B[size], mixed, 6);
            else
                set_packed_form(&c, packed_B[size], ones, 1);
            c.H = c.HV = packed_HV[size];
            c.bf16_g_beta = size != 2;
            c.pool_dtype = bf16 ? FKDA_DTYPE_BF16 : FKDA_DTYPE_F32;
            c.v_first = vf;
            c.idx_dtype = size == 1 ? FKDA_DTYPE_I64 : FKDA_DTYPE_I32;
            c.skip = size != 0;
            c.steps = size >= 2 ? 2 : 3;
            n = add_case(cases, n, c);
        }
        c = base_case("packed form [3,0,1,1,0,1]x2, bf16 tokens, no indices");
        set_packed_form(&c, 12, mixed, 6);
        c.bf16_g_beta = 1;
        c.idx_mode = IDX_NONE;
        c.steps = 3;
        n = add_case(cases, n, c);
        c = base_case("packed form arange(5), bf16 tokens, graph replays");
        set_packed_form(&c, 4, ones, 1);
        c.bf16_g_beta = 1;
        c.graph = 1;
        c.steps = 3;
        n = add_case(cases, n, c);
        c = base_case("packed form [3,0,1,1,0,1]x13, bf16 tokens, graph");
        set_packed_form(&c, 78, mixed, 6);
        c.bf16_g_beta = 1;
        c.pool_dtype = FKDA_DTYPE_BF16;
        c.graph = 1;
        c.steps = 3;
        n = add_case(cases, n, c);
        /* K and V */
        static const int64_t kv[][2] = {{64, 64}, {256, 256}, {64, 256}, {256, 64}, {128, 32},  {32, 128},
                                        {96, 72}, {3, 5},     {1, 1},    {17, 40},  {200, 136}, {256, 255}};
        static char names[sizeof kv / sizeof kv[0]][4][64];
        for (size_t i = 0; i < sizeof kv / sizeof kv[0]; i++) {
            for (int variant = 0; variant < 4; variant++) {
                int bf16 = variant & 1, vf = variant >> 1;
                snprintf(names[i][variant], sizeof names[i][variant], "K=%lld V=%lld %s pool %s", (long long)kv[i][0],
                         (long long)kv[i][1], bf16 ? "bf16" : "fp32", vf ? "[V,K]" : "[K,V]");
                c = base_case(names[i][variant]);
                c.K = kv[i][0];
                c.V = kv[i][1];
                c.pool_dtype = bf16 ? FKDA_DTYPE_BF16 : FKDA_DTYPE_F32;
                c.v_first = vf;
                c.steps = 3;
                n = add_case(cases, n, c);
            }
        }
    }
    if (plan) printf("%d cases (at most %d)\n", n, MAX_CASES);
    if (variants || plan) {
        walk_variants(cases, n, names, n_names, !plan, plan ? NULL : &prop, &rng, stream);
        if (stream) CUDA_OK(cudaStreamDestroy(stream));
        return test_exit("test_decode_cuda");
    }
    /* FKDA_TEST_ONLY=text runs only the cases whose names contain it (to chase one failure). */
    const char *only = getenv("FKDA_TEST_ONLY");
    for (int i = 0; i < n; i++) {
        if (only && !strstr(cases[i].name, only)) continue;
        if (cases[i].out_tol == 0) set_bars(&cases[i]);
        run_case(&cases[i], &rng, stream);
    }
    if (!only || strstr("packed form = one-token form", only)) {
        /* B x HV: 1 x 32 and 8 x 4 (narrow or wide tiles), 76 x 4 (packed in bf16), 160 x 4
         * (split K in fp32); pools, layouts, all-bf16 tokens or f32 g and beta. */
        static const int64_t bw_B[4] = {1, 8, 76, 160}, bw_HV[4] = {32, 4, 4, 4};
        for (int i = 0; i < 32; i++) {
            const int size = i >> 3, bf16 = i & 1, vf = (i >> 1) & 1, tok = (i >> 2) & 1;
            if (small && !(size == 1 || (size == 2 && bf16 && !vf))) continue;
            packed_form_bitwise(bw_B[size], bw_HV[size], bf16 ? FKDA_DTYPE_BF16 : FKDA_DTYPE_F32, vf, tok, 3, &rng,
                                stream);
        }
    }

    if (!small && !only) {
        /* The bar: an fp32 pool within 1e-5 of the float64 reference over 1000 calls
         * (fp32 inputs, so that the output is not rounded to bf16 either). */
        c = base_case("chain of 1000, fp32 pool, f32 inputs");
        c.N = 4;
        c.steps = 1000;
        c.check_every = 100;
        c.in_dtype = FKDA_DTYPE_F32;
        c.skip = 0;
        c.report = "CHAIN-REPORT fp32 pool, f32 inputs";
        set_bars(&c);
        run_case(&c, &rng, stream);
        c = base_case("chain of 1000, fp32 pool [V,K], bf16 inputs");
        c.N = 4;
        c.steps = 1000;
        c.check_every = 100;
        c.v_first = 1;
        c.report = "CHAIN-REPORT fp32 pool [V,K], bf16 inputs";
        set_bars(&c);
        run_case(&c, &rng, stream);

        /* bf16 pool drift: the GPU's bf16 pool against the float64 reference run on an fp32
         * pool (the closest to float64 states the C API offers): reported, and judged by
         * set_bars (the bf16 rounding floor) and run_case (no growth after the 10th call). */
        c = base_case("drift: bf16 pool vs fp64 ref on fp32 pool");
        c.N = 2;
        c.H = 1;
        c.HV = 2;
        c.steps = 10000;
        c.check_every = 1000;
        c.pool_dtype = FKDA_DTYPE_BF16;
        c.idx_mode = IDX_NONE; /* every slot live, so no untouched slot dilutes the error */
        c.drift_report = 1;
        c.ref_pool_f32 = 1;
        set_bars(&c);
        run_case(&c, &rng, stream);
    }
    CUDA_OK(cudaStreamDestroy(stream));
    return test_exit("test_decode_cuda");
}

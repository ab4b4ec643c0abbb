/*
 * fuzz_api.c: random calls of the C API's three operations on the CPU backend, valid and broken,
 * each checked against what the API promises (include/flashkda.h):
 *   - no crash, hang or memory error (the ASan + UBSan build runs this program too);
 *   - a refused call returns a known error status with a message, and every output and pool is
 *     byte for byte as it was;
 *   - an accepted call writes nothing but the elements of its outputs (inputs, and the padding
 *     between an output's elements, unchanged), and its results match the float64 reference
 *     (device.reference = 1) run on the same arguments, within a bar of the output's dtype.
 *
 * One input, a byte string, decides one call: the operation, shapes, dtypes, layouts, options,
 * which optional arguments are given, and up to two deliberate breaks of the valid call (a wrong
 * size, dtype, stride, pointer, index, option, workspace...). The contents of the tensors come
 * from a generator seeded by the input's first bytes. A break may leave the call valid (a float
 * dtype for another one, a slot index that is allowed); then it must run and match the reference
 * like any other.
 *
 * Three builds:
 *   - the plain program (every build; ctest runs it, the ASan + UBSan build included):
 *     `fuzz_api [RUNS [SEED]]` calls the target on RUNS random byte strings from SEED, and
 *     `fuzz_api FILE...` replays inputs saved by libFuzzer;
 *   - fuzz_api_cuda (CUDA builds; scripts/gpu_check.sh fuzz on a GPU machine): the same calls
 *     on the CUDA device, every buffer copied to GPU memory between guard bytes, the results
 *     against the CPU's float64 reference (bars of at least 2e-2: the GPU computes in bf16 and
 *     fp16 arithmetic). The generator keeps to what CUDA defines: checkpoints between 16-token
 *     chunks, intermediate chunks of a multiple of 16, and no sequence starting from a slot
 *     another one writes;
 *   - the libFuzzer target (clang, -DFKDA_FUZZ=ON, docs/contributing.md), which mutates inputs
 *     towards code not reached yet: `build/fuzz/fuzz_api_libfuzzer -max_total_time=600 corpus/`.
 * A failure prints the call's description (every choice made, in order) and aborts.
 */
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"
#ifdef FKDA_FUZZ_CUDA
#include "cuda_test_util.h"
#endif

/* ---- the byte source: every choice reads the input, zeros once it is used up ---------------- */

typedef struct source {
    const uint8_t *data;
    size_t size, used;
} source;

static unsigned next_byte(source *s) { return s->used < s->size ? s->data[s->used++] : 0u; }

/* A choice among n (n <= 65536), 0 once the input is used up. */
static unsigned pick(source *s, unsigned n)
{
    unsigned x = next_byte(s);
    if (n > 256) x = x << 8 | next_byte(s);
    return n ? x % n : 0;
}

/* True with probability about pct / 100; false once the input is used up (a short input
 * stands for the plainest call). */
static int chance(source *s, unsigned pct) { return s->used < s->size && next_byte(s) * 100u < pct * 256u; }

/* ---- one call: its tensors (specs until allocated), its description, the checks ------------- */

enum { MAX_TENSORS = 32, MAX_VALUES = 4096, DESC_BYTES = 4096 };

enum role { ROLE_INPUT, ROLE_OUTPUT }; /* an output: anything the call may write, pools included */

enum fill {
    FILL_NORMAL,  /* normal(a, b) */
    FILL_UNIFORM, /* uniform(a, b) */
    FILL_RESETS,  /* uniform(a, b), and one value in 50 a hard reset: -1e4, -1e30 or -inf */
    FILL_VALUES,  /* the integers values[0 ..] in row-major order (indices, lengths, flags) */
    FILL_POISON   /* NaN for float dtypes, -7 for integers: what an output held before */
};

typedef struct tensor_spec {
    const char *name;
    fkda_tensor *dst; /* the argument it becomes */
    fkda_dtype dtype;
    int ndim;
    int64_t shape[FKDA_MAX_DIMS];
    enum role role;
    enum fill fill;
    double a, b;
    int64_t *values; /* FILL_VALUES: nvalues of them, zeros past those */
    int64_t nvalues;
    int same_as; /* >= 0: the same view as that spec's tensor (an in-place final state) */
    /* layout: dimension order (last dimension always innermost) and padding per dimension */
    int outer_order[FKDA_MAX_DIMS];
    int64_t pad[FKDA_MAX_DIMS];
    int broadcast_dim; /* >= 0: an input whose stride there is 0 (allowed for inputs) */
    /* after allocation */
    uint8_t *buffer;
    size_t bytes;
    uint8_t *device_buffer; /* fuzz_api_cuda: the buffer's copy on the GPU, between guards */
} tensor_spec;

typedef struct call {
    source *src;
    test_rng rng;
    int op; /* 0 prefill, 1 decode, 2 decode layer */
    fkda_prefill_args prefill;
    fkda_decode_args decode;
    fkda_decode_layer_args layer;
    fkda_device device;
    tensor_spec spec[MAX_TENSORS];
    int nspec;
    int64_t values[MAX_VALUES];
    int nvalues;
    int dirty;           /* contents outside what the reference comparison assumes (NaN, huge) */
    int workspace_break; /* 0 none, 1 NULL, 2 one byte short, 3 misaligned */
    int skip;            /* a valid tensor too large to fill here: the input is not run */
    int cuda;            /* the call runs on the CUDA device (fuzz_api_cuda), its results against the CPU */
    char desc[DESC_BYTES];
    size_t desc_used;
} call;

static call *current;                /* for fuzz_fail's description */
static int fuzz_on_cuda;             /* fuzz_api_cuda: calls on the GPU, against the CPU's reference */
static const uint8_t *current_input; /* and the input, saved by the plain program on failure */
static size_t current_size;

#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
static void
note(call *c, const char *fmt, ...)
{
    if (c->desc_used >= DESC_BYTES - 1) return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(c->desc + c->desc_used, DESC_BYTES - c->desc_used, fmt, ap);
    va_end(ap);
    if (n > 0) c->desc_used += (size_t)n < DESC_BYTES - c->desc_used ? (size_t)n : DESC_BYTES - 1 - c->desc_used;
}

/* What failed, the call's description, and (in the plain program; libFuzzer saves its own) the
 * input in fuzz_api-failure.bin, also when a sanitizer stops the program inside the library. */
static void report_input(void)
{
    if (current) fprintf(stderr, "the call: %s\n", current->desc);
#ifndef FKDA_LIBFUZZER
    FILE *f = current_input ? fopen("fuzz_api-failure.bin", "wb") : NULL;
    if (f) {
        fwrite(current_input, 1, current_size, f);
        fclose(f);
        fprintf(stderr, "the input is saved: replay it with `fuzz_api fuzz_api-failure.bin`\n");
    }
#endif
    fflush(stderr);
}

#if defined(__GNUC__)
__attribute__((format(printf, 1, 2), noreturn))
#endif
static void
fuzz_fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "\nfuzz_api: FAILED: ");
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n");
    report_input();
    abort();
}

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define FUZZ_SANITIZED 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#define FUZZ_SANITIZED 1
#endif
#if defined(FUZZ_SANITIZED) && !defined(FKDA_LIBFUZZER)
#include <sanitizer/common_interface_defs.h>
#endif

static int64_t *new_values(call *c, int64_t count)
{
    if (count < 0 || c->nvalues + count > MAX_VALUES)
        fuzz_fail("harness: value pool too small (%lld)", (long long)count);
    int64_t *v = c->values + c->nvalues;
    c->nvalues += (int)count;
    return v;
}

static tensor_spec *add_tensor(call *c, fkda_tensor *dst, const char *name, fkda_dtype dtype, int ndim,
                               const int64_t *shape, enum role role)
{
    if (c->nspec == MAX_TENSORS) fuzz_fail("harness: too many tensors");
    tensor_spec *t = &c->spec[c->nspec++];
    memset(t, 0, sizeof *t);
    t->name = name;
    t->dst = dst;
    t->dtype = dtype;
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++) t->shape[i] = shape[i];
    t->role = role;
    t->fill = role == ROLE_OUTPUT ? FILL_POISON : FILL_NORMAL;
    t->b = 1.0;
    t->same_as = -1;
    t->broadcast_dim = -1;
    for (int i = 0; i < FKDA_MAX_DIMS; i++) t->outer_order[i] = i;
    return t;
}

static void set_fill(tensor_spec *t, enum fill fill, double a, double b)
{
    t->fill = fill;
    t->a = a;
    t->b = b;
}

static int64_t element_count(const tensor_spec *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

static const fkda_dtype float_dtypes[3] = {FKDA_DTYPE_F32, FKDA_DTYPE_F16, FKDA_DTYPE_BF16};
static const char *dtype_short(fkda_dtype d)
{
    static const char *names[] = {"f32", "f16", "bf16", "i32", "i64", "bool"};
    return (unsigned)d < 6 ? names[d] : "?";
}

/* A random layout for each tensor: the outer dimensions in any order, some padded, and now and
 * then an input broadcast along one dimension (stride 0). */
static void choose_layout(call *c, tensor_spec *t)
{
    int outer = t->ndim - 1;
    if (outer > 1 && chance(c->src, 25)) {
        for (int i = outer - 1; i > 0; i--) {
            int j = (int)pick(c->src, (unsigned)i + 1);
            int tmp = t->outer_order[i];
            t->outer_order[i] = t->outer_order[j];
            t->outer_order[j] = tmp;
        }
    }
    for (int i = 0; i < t->ndim; i++) t->pad[i] = chance(c->src, 15) ? 1 + pick(c->src, 5) : 0;
    int shared = 0; /* an input that an output shares (the in-place state) must not repeat elements */
    for (int i = 0; i < c->nspec; i++) shared |= c->spec[i].same_as == (int)(t - c->spec);
    if (t->role == ROLE_INPUT && t->fill != FILL_VALUES && !shared && outer > 0 && chance(c->src, 8))
        t->broadcast_dim = (int)pick(c->src, (unsigned)outer);
}

/* ---- allocation and contents ------------------------------------------------------------ */

static int64_t view_offset(const fkda_tensor *t, int64_t i)
{
    int64_t off = 0;
    for (int d = t->ndim - 1; d >= 0; d--) {
        off += (i % t->shape[d]) * t->stride[d];
        i /= t->shape[d];
    }
    return off;
}

static void set_element(const fkda_tensor *t, int64_t i, double v)
{
    test_tensor w = {*t, 0};
    test_tensor_set(&w, (size_t)view_offset(t, i), v);
}

/* Strides from the layout; the buffer holds exactly the elements' extent (so that ASan sees any
 * access past it). A tensor the library must refuse whatever else is given (a negative size,
 * or one past 2^48) gets a one-element buffer; one that is valid but too large to fill here
 * makes the harness skip the input. */
enum { MAX_FILL = 1 << 22 };

static void allocate(call *c, tensor_spec *t)
{
    fkda_tensor *x = t->dst;
    memset(x, 0, sizeof *x);
    x->dtype = t->dtype;
    x->ndim = t->ndim;
    if (t->ndim == 0) return; /* absent */
    const size_t esize = fkda_dtype_size(t->dtype) ? fkda_dtype_size(t->dtype) : 1;
    int refused = t->ndim < 0 || t->ndim > FKDA_MAX_DIMS;
    int64_t count = 1;
    for (int i = 0; i < t->ndim && !refused; i++) {
        x->shape[i] = t->shape[i];
        if (t->shape[i] < 0 || t->shape[i] > ((int64_t)1 << 48))
            refused = 1;
        else if (count > 0 && t->shape[i] > MAX_FILL / count)
            c->skip = 1;
        else
            count *= t->shape[i];
    }
    if (refused || c->skip || count == 0) {
        /* never addressed: an empty tensor's strides are not checked (any value is allowed) */
        for (int i = 0; i < t->ndim && i < FKDA_MAX_DIMS; i++) x->stride[i] = 1;
        t->bytes = esize;
    } else {
        int64_t stride = t->shape[t->ndim - 1] + t->pad[t->ndim - 1], last = 0;
        x->stride[t->ndim - 1] = 1;
        for (int k = t->ndim - 2; k >= 0; k--) {
            const int d = t->outer_order[k];
            x->stride[d] = stride;
            stride *= t->shape[d] + t->pad[d];
        }
        if (t->broadcast_dim >= 0 && t->broadcast_dim < t->ndim) x->stride[t->broadcast_dim] = 0;
        for (int i = 0; i < t->ndim; i++)
            if (t->shape[i] > 0) last += (t->shape[i] - 1) * x->stride[i];
        if (last > 4 * MAX_FILL) c->skip = 1;
        t->bytes = c->skip ? esize : (size_t)(last + 1) * esize;
    }
    t->buffer = malloc(t->bytes);
    if (!t->buffer) fuzz_fail("harness: out of memory");
    memset(t->buffer, 0xA5, t->bytes);
    x->data = t->buffer;
    if (refused || c->skip) return;
    if (count == 0 && chance(c->src, 50)) x->data = NULL;
    for (int64_t i = 0; i < count; i++) {
        double v = 0;
        switch (t->fill) {
        case FILL_NORMAL: v = t->a + t->b * test_rng_normal(&c->rng); break;
        case FILL_UNIFORM: v = t->a + (t->b - t->a) * test_rng_uniform(&c->rng); break;
        case FILL_RESETS: {
            static const double resets[3] = {-1e4, -1e30, -INFINITY};
            const double u = test_rng_uniform(&c->rng);
            v = u < 0.02 ? resets[(int)(u * 150.0)] : t->a + (t->b - t->a) * test_rng_uniform(&c->rng);
            break;
        }
        case FILL_VALUES: v = i < t->nvalues ? (double)t->values[i] : 0; break;
        case FILL_POISON: v = t->dtype <= FKDA_DTYPE_BF16 ? NAN : -7; break;
        }
        set_element(x, i, v);
    }
}

/* ---- the shared token inputs of prefill and decode ---------------------------------------- */

typedef struct dims {
    int64_t B, T, H, HV, K, V, N;
    int varlen;
    int64_t lengths[8];
    fkda_dtype io, g_dtype, beta_dtype, param_dtype, state_dtype;
} dims;

static int64_t pick_head_dim(call *c, int big_ok)
{
    static const int64_t small[] = {1, 2, 3, 4, 5, 7, 8, 9, 16, 17};
    static const int64_t big[] = {31, 32, 33, 64, 65, 128, 129, 256};
    if (big_ok && chance(c->src, 20)) return big[pick(c->src, 8)];
    return small[pick(c->src, 10)];
}

static int64_t pick_length(call *c, int64_t most)
{
    static const int64_t edges[] = {0, 1, 15, 16, 17, 31, 32, 33, 63, 64, 65};
    int64_t n = chance(c->src, 30) ? edges[pick(c->src, 11)] : (int64_t)pick(c->src, (unsigned)most + 1);
    return n > most ? most : n;
}

static void pick_token_dims(call *c, dims *d, int decode)
{
    d->H = 1 + pick(c->src, 3);
    d->HV = d->H * (1 + pick(c->src, chance(c->src, 70) ? 1 : 3));
    d->K = pick_head_dim(c, 1);
    d->V = pick_head_dim(c, 1);
    const int64_t most = d->K * d->V > 4096 ? 4 : decode ? 4 : 40;
    d->varlen = chance(c->src, 40);
    if (d->varlen) {
        d->N = 1 + pick(c->src, 4);
        d->B = 1;
        d->T = 0;
        for (int64_t n = 0; n < d->N; n++) {
            d->lengths[n] = pick_length(c, most / 2 + 1);
            d->T += d->lengths[n];
        }
    } else {
        d->B = chance(c->src, 5) ? 0 : 1 + pick(c->src, 3); /* B = 0: no sequence, every tensor empty */
        d->N = d->B;
        d->T = decode ? 1 + pick(c->src, (unsigned)most) : pick_length(c, most);
    }
    d->io = float_dtypes[pick(c->src, 3)];
    d->g_dtype = float_dtypes[pick(c->src, 3)];
    d->beta_dtype = float_dtypes[pick(c->src, 3)];
    d->param_dtype = float_dtypes[pick(c->src, 3)];
    d->state_dtype = chance(c->src, 70) ? FKDA_DTYPE_F32 : FKDA_DTYPE_BF16;
    note(c, "B=%lld T=%lld H=%lld HV=%lld K=%lld V=%lld io=%s g=%s beta=%s param=%s state=%s", (long long)d->B,
         (long long)d->T, (long long)d->H, (long long)d->HV, (long long)d->K, (long long)d->V, dtype_short(d->io),
         dtype_short(d->g_dtype), dtype_short(d->beta_dtype), dtype_short(d->param_dtype), dtype_short(d->state_dtype));
    if (d->varlen) {
        note(c, " lengths=[");
        for (int64_t n = 0; n < d->N; n++) note(c, n ? ",%lld" : "%lld", (long long)d->lengths[n]);
        note(c, "]");
    }
    note(c, "; ");
}

/* Options and gate parameters in the ranges where the recurrence stays bounded: a log decay <= 0,
 * keys of norm <= 1 without the in-kernel L2 norm, beta in (0, 1) without the sigmoid. */
static void pick_options(call *c, fkda_options *o, int *has_A_log, int *has_dt_bias)
{
    static const double bounds[] = {-5.0, -1.0, -0.25, -20.0, -1000.0, -1e30};
    *o = fkda_default_options();
    o->gate = (fkda_gate)pick(c->src, 3);
    o->lower_bound = bounds[pick(c->src, 6)];
    o->use_qk_l2norm = chance(c->src, 60);
    o->use_beta_sigmoid = chance(c->src, 60);
    o->allow_neg_eigval = o->use_beta_sigmoid && chance(c->src, 25);
    o->state_v_first = chance(c->src, 40);
    o->scale = chance(c->src, 70) ? 0.0 : 0.05 + 2.0 * test_rng_uniform(&c->rng);
    *has_A_log = o->gate == FKDA_GATE_SOFTPLUS || (o->gate == FKDA_GATE_LOWER_BOUND && chance(c->src, 50));
    *has_dt_bias = o->gate != FKDA_GATE_NONE && chance(c->src, 60);
    note(c, "gate=%d lb=%g norm=%d sigmoid=%d neg=%d vfirst=%d scale=%g A_log=%d dt_bias=%d; ", (int)o->gate,
         o->lower_bound, o->use_qk_l2norm, o->use_beta_sigmoid, o->allow_neg_eigval, o->state_v_first, o->scale,
         *has_A_log, *has_dt_bias);
}

typedef struct token_args {
    fkda_tensor *q, *k, *v, *g, *beta, *A_log, *dt_bias, *cu_seqlens, *out;
} token_args;

static void add_token_tensors(call *c, const dims *d, const fkda_options *o, int has_A_log, int has_dt_bias,
                              token_args a)
{
    const int64_t qk[4] = {d->B, d->T, d->H, d->K}, vv[4] = {d->B, d->T, d->HV, d->V};
    const int64_t gg[4] = {d->B, d->T, d->HV, d->K}, bb[3] = {d->B, d->T, d->HV};
    tensor_spec *q = add_tensor(c, a.q, "q", d->io, 4, qk, ROLE_INPUT);
    tensor_spec *k = add_tensor(c, a.k, "k", d->io, 4, qk, ROLE_INPUT);
    if (!o->use_qk_l2norm) {
        /* |x_i| <= 1 / sqrt(K): a norm of at most 1 */
        set_fill(q, FILL_UNIFORM, -1.0 / sqrt((double)d->K), 1.0 / sqrt((double)d->K));
        set_fill(k, FILL_UNIFORM, -1.0 / sqrt((double)d->K), 1.0 / sqrt((double)d->K));
    }
    add_tensor(c, a.v, "v", d->io, 4, vv, ROLE_INPUT);
    tensor_spec *g = add_tensor(c, a.g, "g", d->g_dtype, 4, gg, ROLE_INPUT);
    if (o->gate == FKDA_GATE_NONE)
        set_fill(g, chance(c->src, 30) ? FILL_RESETS : FILL_UNIFORM, -3.0, 0.0);
    else
        set_fill(g, FILL_NORMAL, 0.0, 2.0);
    tensor_spec *beta = add_tensor(c, a.beta, "beta", d->beta_dtype, 3, bb, ROLE_INPUT);
    if (o->use_beta_sigmoid)
        set_fill(beta, FILL_NORMAL, 0.0, 2.0);
    else
        set_fill(beta, FILL_UNIFORM, 0.0, 1.0);
    if (has_A_log)
        set_fill(add_tensor(c, a.A_log, "A_log", d->param_dtype, 1, &d->HV, ROLE_INPUT), FILL_NORMAL, 0, 0.5);
    if (has_dt_bias) {
        const int64_t two[2] = {d->HV, d->K}, flat = d->HV * d->K;
        if (chance(c->src, 50))
            add_tensor(c, a.dt_bias, "dt_bias", d->param_dtype, 2, two, ROLE_INPUT);
        else
            add_tensor(c, a.dt_bias, "dt_bias", d->param_dtype, 1, &flat, ROLE_INPUT);
    }
    if (d->varlen) {
        const int64_t n1 = d->N + 1;
        tensor_spec *cu = add_tensor(c, a.cu_seqlens, "cu_seqlens",
                                     chance(c->src, 50) ? FKDA_DTYPE_I64 : FKDA_DTYPE_I32, 1, &n1, ROLE_INPUT);
        cu->values = new_values(c, n1);
        cu->nvalues = n1;
        cu->values[0] = 0;
        for (int64_t n = 0; n < d->N; n++) cu->values[n + 1] = cu->values[n] + d->lengths[n];
        cu->fill = FILL_VALUES;
    }
    add_tensor(c, a.out, "out", d->io, 4, vv, ROLE_OUTPUT);
}

/* The dimensions, options and token tensors that prefill and decode share. */
static void gen_token_call(call *c, int decode, dims *d, fkda_options *o, token_args a)
{
    pick_token_dims(c, d, decode);
    int has_A_log, has_dt_bias;
    pick_options(c, o, &has_A_log, &has_dt_bias);
    add_token_tensors(c, d, o, has_A_log, has_dt_bias, a);
}

static void state_shape(const dims *d, int64_t rows, int v_first, int64_t shape[4])
{
    shape[0] = rows;
    shape[1] = d->HV;
    shape[2] = v_first ? d->V : d->K;
    shape[3] = v_first ? d->K : d->V;
}

/* `count` distinct slots of a pool of `pool`, in random order, each replaced by -1 with
 * probability `skip_pct` (serving engines' padding and skipped sequences). */
static void distinct_slots(call *c, int64_t *out, int64_t count, int64_t pool, unsigned skip_pct, int64_t *taken)
{
    for (int64_t i = 0; i < count; i++) {
        int64_t s;
        do s = (int64_t)(test_rng_uniform(&c->rng) * (double)pool);
        while (taken[s]);
        taken[s] = 1;
        out[i] = chance(c->src, skip_pct) ? -1 : s;
    }
}

enum { MAX_POOL = 64 };

static tensor_spec *add_values(call *c, fkda_tensor *dst, const char *name, fkda_dtype dtype, int ndim,
                               const int64_t *shape)
{
    tensor_spec *t = add_tensor(c, dst, name, dtype, ndim, shape, ROLE_INPUT);
    t->fill = FILL_VALUES;
    t->nvalues = element_count(t);
    t->values = new_values(c, t->nvalues);
    return t;
}

static fkda_dtype index_dtype(call *c) { return chance(c->src, 50) ? FKDA_DTYPE_I64 : FKDA_DTYPE_I32; }

static int64_t sequence_length(const dims *d, int64_t n) { return d->varlen ? d->lengths[n] : d->T; }

/* ---- prefill ------------------------------------------------------------------------------- */

static void gen_prefill(call *c)
{
    fkda_prefill_args *a = &c->prefill;
    dims d;
    note(c, "prefill: ");
    gen_token_call(c, 0, &d, &a->options,
                   (token_args){&a->q, &a->k, &a->v, &a->g, &a->beta, &a->A_log, &a->dt_bias, &a->cu_seqlens, &a->out});
    const int vf = a->options.state_v_first;
    int64_t shape[4], taken[MAX_POOL] = {0};
    const int64_t C = chance(c->src, 30) ? 1 + pick(c->src, 3) : 0; /* checkpoints per sequence */
    const int pool_mode = chance(c->src, 35);
    int has_states = 0, checkpoints_in_pool = 0;
    note(c, "pool=%d checkpoints=%lld ", pool_mode, (long long)C);
    if (!pool_mode) {
        int initial = -1;
        if (chance(c->src, 60)) {
            state_shape(&d, d.N, vf, shape);
            initial = c->nspec;
            set_fill(add_tensor(c, &a->initial_state, "initial_state", d.state_dtype, 4, shape, ROLE_INPUT),
                     FILL_NORMAL, 0, 0.5);
            has_states = 1;
        }
        if (chance(c->src, 60)) {
            state_shape(&d, d.N, vf, shape);
            fkda_dtype dt = chance(c->src, 70) ? d.state_dtype : FKDA_DTYPE_F32;
            tensor_spec *f = add_tensor(c, &a->final_state, "final_state", dt, 4, shape, ROLE_OUTPUT);
            if (initial >= 0 && chance(c->src, 30)) {
                f->same_as = initial; /* in place: the very same view */
                f->dtype = d.state_dtype;
                note(c, "final=initial ");
            }
        }
    } else {
        const int64_t P = d.N + d.N * C + pick(c->src, 3);
        state_shape(&d, P, vf, shape);
        set_fill(add_tensor(c, &a->state_pool, "state_pool", d.state_dtype, 4, shape, ROLE_OUTPUT), FILL_NORMAL, 0,
                 0.5);
        has_states = 1;
        const int64_t *finals = NULL;
        if (chance(c->src, 70)) {
            tensor_spec *t = add_values(c, &a->final_state_indices, "final_state_indices", index_dtype(c), 1, &d.N);
            distinct_slots(c, t->values, d.N, P, 15, taken);
            finals = t->values;
        } else {
            for (int64_t n = 0; n < d.N; n++) taken[n] = 1; /* slot n */
        }
        if (C > 0 && chance(c->src, 50)) {
            const int64_t nc[2] = {d.N, C};
            tensor_spec *t = add_values(c, &a->checkpoint_indices, "checkpoint_indices", index_dtype(c), 2, nc);
            distinct_slots(c, t->values, d.N * C, P, 10, taken);
            checkpoints_in_pool = 1;
        }
        if (chance(c->src, 70)) {
            /* Any slot on the CPU, where every initial state is read before any state is written.
             * On CUDA each sequence reads its start when its own chain begins: there a sequence
             * starts from its own final slot or from one that no sequence writes. */
            tensor_spec *t = add_values(c, &a->initial_state_indices, "initial_state_indices", index_dtype(c), 1, &d.N);
            for (int64_t n = 0; n < d.N; n++) {
                int64_t slot = (int64_t)(test_rng_uniform(&c->rng) * (double)P);
                if (c->cuda && taken[slot]) slot = chance(c->src, 50) ? (finals ? finals[n] : n) : -1;
                t->values[n] = chance(c->src, 15) ? -1 : slot;
            }
        }
    }
    if (has_states && chance(c->src, 25)) {
        static const fkda_dtype flag_dtypes[3] = {FKDA_DTYPE_BOOL, FKDA_DTYPE_I32, FKDA_DTYPE_I64};
        tensor_spec *t = add_values(c, &a->has_initial_state, "has_initial_state", flag_dtypes[pick(c->src, 3)], 1,
                                    &d.N);
        for (int64_t n = 0; n < d.N; n++) t->values[n] = chance(c->src, 50) ? 0 : 1 + pick(c->src, 3);
    }
    if (C > 0) {
        const int64_t nc[2] = {d.N, C};
        tensor_spec *t = add_values(c, &a->checkpoint_offsets, "checkpoint_offsets", index_dtype(c), 2, nc);
        for (int64_t n = 0; n < d.N; n++)
            for (int64_t j = 0; j < C; j++) {
                const int64_t length = sequence_length(&d, n);
                int64_t offset = (int64_t)pick(c->src, (unsigned)length + 3) - 1;
                /* CUDA takes checkpoints between 16-token chunks (0, multiples of 16, the end) */
                if (c->cuda && offset > 0 && offset < length && offset % 16) offset -= offset % 16;
                t->values[n * C + j] = offset;
            }
        if (!checkpoints_in_pool) {
            state_shape(&d, d.N * C, vf, shape);
            add_tensor(c, &a->checkpoint_states, "checkpoint_states",
                       chance(c->src, 70) ? d.state_dtype : FKDA_DTYPE_F32, 4, shape, ROLE_OUTPUT);
        }
    }
    if (chance(c->src, 25)) {
        static const int32_t chunks[] = {0, 16, 32, 64, 1, 7}; /* CUDA: multiples of 16 */
        a->intermediate_chunk_size = chunks[pick(c->src, c->cuda ? 4 : 6)];
        const int64_t chunk = a->intermediate_chunk_size ? a->intermediate_chunk_size : 64;
        int64_t rows = 0;
        for (int64_t n = 0; n < d.N; n++) rows += (sequence_length(&d, n) + chunk - 1) / chunk;
        state_shape(&d, rows, vf, shape);
        add_tensor(c, &a->intermediate_states, "intermediate_states", float_dtypes[pick(c->src, 3)], 4, shape,
                   ROLE_OUTPUT);
        note(c, "intermediate chunk=%d ", (int)a->intermediate_chunk_size);
    }
}

/* ---- decode --------------------------------------------------------------------------------- */

/* The pool's slot table: none (slot n), 1-D [N] or 2-D [N, T_max = the longest sequence, or one
 * more] with accepted counts of at most accepted_most; every slot named once in the call (two
 * sequences on one slot are a caller error). Returns the table's spec, NULL without one. */
static tensor_spec *add_slot_table(call *c, const dims *d, int64_t P, int64_t accepted_most, fkda_tensor *indices,
                                   fkda_tensor *accepted)
{
    int64_t taken[MAX_POOL] = {0}, most = d->varlen ? 1 : d->T; /* T tokens a row, also with no row */
    for (int64_t n = 0; n < d->N; n++)
        if (sequence_length(d, n) > most) most = sequence_length(d, n);
    const unsigned form = pick(c->src, 3);
    note(c, "slots=%u ", form);
    if (form == 0) return NULL;
    if (form == 1) {
        tensor_spec *t = add_values(c, indices, "state_indices", index_dtype(c), 1, &d->N);
        distinct_slots(c, t->values, d->N, P, 15, taken);
        return t;
    }
    const int64_t T_max = most + pick(c->src, 2), shape[2] = {d->N, T_max};
    tensor_spec *t = add_values(c, indices, "state_indices", index_dtype(c), 2, shape);
    distinct_slots(c, t->values, d->N * T_max, P, 5, taken);
    if (chance(c->src, 70)) {
        tensor_spec *acc = add_values(c, accepted, "num_accepted_tokens", index_dtype(c), 1, &d->N);
        for (int64_t n = 0; n < d->N; n++)
            acc->values[n] = 1 + (int64_t)pick(c->src, (unsigned)(accepted_most < T_max ? accepted_most : T_max));
    }
    return t;
}

static void gen_decode(call *c)
{
    fkda_decode_args *a = &c->decode;
    dims d;
    note(c, "decode: ");
    gen_token_call(c, 1, &d, &a->options,
                   (token_args){&a->q, &a->k, &a->v, &a->g, &a->beta, &a->A_log, &a->dt_bias, &a->cu_seqlens, &a->out});
    int64_t most = 1;
    for (int64_t n = 0; n < d.N; n++)
        if (sequence_length(&d, n) > most) most = sequence_length(&d, n);
    const int64_t P = d.N * (most + 1) + pick(c->src, 3);
    int64_t shape[4];
    state_shape(&d, P, a->options.state_v_first, shape);
    set_fill(add_tensor(c, &a->state_pool, "state_pool", d.state_dtype, 4, shape, ROLE_OUTPUT), FILL_NORMAL, 0, 0.5);
    add_slot_table(c, &d, P, INT64_MAX, &a->state_indices, &a->num_accepted_tokens);
}

/* ---- decode layer ----------------------------------------------------------------------- */

static void gen_layer(call *c)
{
    fkda_decode_layer_args *a = &c->layer;
    dims d;
    note(c, "layer: ");
    d.H = 1 + pick(c->src, 2);
    d.HV = d.H * (1 + pick(c->src, 2));
    d.K = pick_head_dim(c, 0);
    d.V = pick_head_dim(c, 0);
    d.B = d.N = 1 + pick(c->src, 3);
    d.varlen = 0;
    const int token_dim = chance(c->src, 40);
    d.T = token_dim ? 1 + pick(c->src, 3) : 1;
    d.io = float_dtypes[pick(c->src, 3)];
    d.state_dtype = chance(c->src, 70) ? FKDA_DTYPE_F32 : FKDA_DTYPE_BF16;
    const fkda_dtype param = float_dtypes[pick(c->src, 3)], conv_dtype = float_dtypes[pick(c->src, 3)];
    const int64_t W = chance(c->src, 90) ? 2 + pick(c->src, 3) : 2 + pick(c->src, 15);
    const int64_t dim = 2 * d.H * d.K + d.HV * d.V;
    a->lower_bound = chance(c->src, 40) ? 0.0 : -0.5 - 5.0 * test_rng_uniform(&c->rng);
    a->norm_eps = chance(c->src, 50) ? 1e-5 : 1e-6;
    a->scale = chance(c->src, 70) ? 0.0 : 0.05 + test_rng_uniform(&c->rng);
    a->state_v_first = chance(c->src, 40);
    note(c,
         "B=%lld T=%lld(dim %d) H=%lld HV=%lld K=%lld V=%lld W=%lld io=%s param=%s conv=%s state=%s lb=%g "
         "vfirst=%d; ",
         (long long)d.B, (long long)d.T, token_dim, (long long)d.H, (long long)d.HV, (long long)d.K, (long long)d.V,
         (long long)W, dtype_short(d.io), dtype_short(param), dtype_short(conv_dtype), dtype_short(d.state_dtype),
         a->lower_bound, a->state_v_first);

    /* token tensors: [B, ...] without a token dimension, [B, T, ...] with one */
    int64_t shape[5];
    const int nt = token_dim ? 2 : 1;
    shape[0] = d.B;
    shape[1] = d.T;
    shape[nt] = dim;
    add_tensor(c, &a->mixed_qkv, "mixed_qkv", d.io, nt + 1, shape, ROLE_INPUT);
    shape[nt] = d.HV;
    shape[nt + 1] = d.K;
    if (chance(c->src, 50)) {
        add_tensor(c, &a->g, "g", param, nt + 2, shape, ROLE_INPUT);
    } else {
        shape[nt] = d.HV * d.K;
        add_tensor(c, &a->g, "g", param, nt + 1, shape, ROLE_INPUT);
    }
    shape[nt] = d.HV;
    add_tensor(c, &a->beta, "beta", param, nt + 1, shape, ROLE_INPUT);
    shape[nt + 1] = d.V;
    add_tensor(c, &a->output_gate, "output_gate", param, nt + 2, shape, ROLE_INPUT);
    add_tensor(c, &a->out, "out", d.io, nt + 2, shape, ROLE_OUTPUT);
    const int64_t cw[2] = {dim, W};
    set_fill(add_tensor(c, &a->conv_weight, "conv_weight", param, 2, cw, ROLE_INPUT), FILL_NORMAL, 0, 0.5);
    if (chance(c->src, 50)) add_tensor(c, &a->conv_bias, "conv_bias", param, 1, &dim, ROLE_INPUT);
    if (a->lower_bound == 0.0 || chance(c->src, 50))
        set_fill(add_tensor(c, &a->A_log, "A_log", param, 1, &d.HV, ROLE_INPUT), FILL_NORMAL, 0, 0.5);
    if (chance(c->src, 60)) {
        const int64_t two[2] = {d.HV, d.K}, flat = d.HV * d.K;
        if (chance(c->src, 50))
            add_tensor(c, &a->dt_bias, "dt_bias", param, 2, two, ROLE_INPUT);
        else
            add_tensor(c, &a->dt_bias, "dt_bias", param, 1, &flat, ROLE_INPUT);
    }
    add_tensor(c, &a->norm_weight, "norm_weight", param, 1, &d.V, ROLE_INPUT);

    /* the pools: recurrent [P, HV, K, V], conv [P, L, dim] (slot = the row's first index) */
    const int64_t P = d.N * (d.T + 1) + pick(c->src, 3);
    int64_t state[4];
    state_shape(&d, P, a->state_v_first, state);
    set_fill(add_tensor(c, &a->state_pool, "state_pool", d.state_dtype, 4, state, ROLE_OUTPUT), FILL_NORMAL, 0, 0.5);
    /* The conv state's rows: at least W - 1, and W - 2 + T_max for the sliding window of
     * speculative decoding (T_max <= T + 1), so that every accepted count up to L - W + 2 fits. */
    int64_t L = W - 1 + pick(c->src, 2);
    if (L < W - 2 + d.T + 1) L = W - 2 + d.T + 1;
    tensor_spec *slots = add_slot_table(c, &d, P, L - W + 2, &a->state_indices, &a->num_accepted_tokens);
    const int64_t cs[3] = {P, L, dim};
    set_fill(add_tensor(c, &a->conv_state, "conv_state", conv_dtype, 3, cs, ROLE_OUTPUT), FILL_NORMAL, 0, 1);
    /* a running sequence needs its conv slot, idx[n, 0]: a row without it is skipped whole */
    if (slots && slots->ndim == 2) {
        const int64_t cols = slots->shape[1];
        for (int64_t n = 0; n < d.N; n++)
            if (slots->values[n * cols] < 0)
                for (int64_t j = 0; j < cols; j++) slots->values[n * cols + j] = -1;
    }
}

/* The spec whose buffer a spec's view lies in (following in-place views to their origin). */
static int owner_of(const call *c, int i)
{
    for (int hops = 0; c->spec[i].same_as >= 0 && hops < MAX_TENSORS; hops++) i = c->spec[i].same_as;
    return i;
}

/* ---- breaks of a valid call ------------------------------------------------------------------ */

/* Breaks applied to the specs before allocation (so that every buffer still holds what its
 * tensor describes, and only the library's own checks stand between a break and a memory error). */
static void break_spec(call *c)
{
    if (c->nspec == 0) return;
    tensor_spec *t = &c->spec[pick(c->src, (unsigned)c->nspec)];
    const unsigned what = pick(c->src, 7);
    note(c, "BREAK %s: ", t->name);
    switch (what) {
    case 0: { /* one size */
        static const int64_t sizes[] = {0, 1, 2, 3, 16, 17, 129, 257, -1, (int64_t)1 << 50};
        int i = (int)pick(c->src, (unsigned)t->ndim);
        int64_t s = chance(c->src, 50) ? t->shape[i] + (chance(c->src, 50) ? 1 : -1) : sizes[pick(c->src, 10)];
        note(c, "shape[%d] %lld -> %lld; ", i, (long long)t->shape[i], (long long)s);
        t->shape[i] = s;
        if (t->fill == FILL_VALUES) c->dirty = 1; /* its values no longer match its shape */
        break;
    }
    case 1: /* one dimension more or less */
        if (chance(c->src, 50) && t->ndim < FKDA_MAX_DIMS) {
            t->shape[t->ndim] = 1;
            t->ndim++;
        } else {
            t->ndim--;
        }
        note(c, "ndim -> %d; ", t->ndim);
        c->dirty |= t->fill == FILL_VALUES;
        break;
    case 2: { /* another dtype, known or not */
        static const int dtypes[] = {0, 1, 2, 3, 4, 5, 6, -1, 1000};
        t->dtype = (fkda_dtype)dtypes[pick(c->src, 9)];
        note(c, "dtype -> %d; ", (int)t->dtype);
        break;
    }
    case 3: /* absent */
        t->ndim = 0;
        note(c, "absent; ");
        break;
    case 4: /* an output broadcast (overlapping elements), or an input strided past its buffer */
        t->broadcast_dim = t->ndim > 1 ? (int)pick(c->src, (unsigned)t->ndim - 1) : -1;
        note(c, "stride 0 on dim %d; ", t->broadcast_dim);
        c->dirty |= t->fill == FILL_VALUES; /* slot tables that repeat name slots twice */
        break;
    case 5: /* the in-place final state as another view, or a view given twice */
        if (t->role == ROLE_OUTPUT) {
            const int self = (int)(t - c->spec);
            for (int i = 0; i < c->nspec; i++)
                if (owner_of(c, i) != self && c->spec[i].dtype == t->dtype && chance(c->src, 30)) {
                    t->same_as = i;
                    note(c, "same view as %s; ", c->spec[i].name);
                    break;
                }
        }
        break;
    default: /* contents */
        if (t->fill == FILL_VALUES) {
            static const int64_t odd[] = {-1, -2, 0, 1, 64, 65, 1000, (int64_t)1 << 40, -((int64_t)1 << 40)};
            int64_t n = element_count(t);
            if (n > 0) {
                int64_t i = (int64_t)pick(c->src, (unsigned)(n < 65536 ? n : 65536));
                t->values[i] = chance(c->src, 50) ? t->values[i] + (chance(c->src, 50) ? 1 : -1) : odd[pick(c->src, 9)];
                note(c, "value[%lld] -> %lld; ", (long long)i, (long long)t->values[i]);
            }
        } else {
            t->a = chance(c->src, 50) ? NAN : 1e30;
            t->fill = FILL_NORMAL;
            note(c, "contents %g; ", t->a);
        }
        c->dirty = 1;
        break;
    }
}

/* Breaks applied after allocation: pointers, flags, options, the device and the workspace. */
static void break_call(call *c)
{
    const unsigned what = pick(c->src, 6);
    fkda_options *o = c->op == 0 ? &c->prefill.options : c->op == 1 ? &c->decode.options : NULL;
    tensor_spec *t = c->nspec ? &c->spec[pick(c->src, (unsigned)c->nspec)] : NULL;
    note(c, "BREAK ");
    switch (what) {
    case 0:
        if (t && t->dst->ndim) {
            const size_t esize = fkda_dtype_size(t->dst->dtype);
            if (chance(c->src, 50) || esize < 2 || t->dst->data == NULL || (uintptr_t)t->dst->data % esize) {
                t->dst->data = NULL;
                note(c, "%s data NULL; ", t->name);
            } else {
                t->dst->data = (char *)t->dst->data + 1;
                note(c, "%s misaligned; ", t->name);
            }
        }
        break;
    case 1: /* strides the layout check must refuse (any other may address past the buffer) */
        if (t && t->dst->ndim >= 1 && t->dst->ndim <= FKDA_MAX_DIMS) {
            const int i = (int)pick(c->src, (unsigned)t->dst->ndim);
            static const int64_t strides[] = {2, -1, -4, (int64_t)1 << 62};
            const int64_t s = strides[pick(c->src, 4)];
            if (s >= 0 && s < ((int64_t)1 << 48) && i != t->dst->ndim - 1) break;
            t->dst->stride[i] = s;
            note(c, "%s stride[%d] -> %lld; ", t->name, i, (long long)s);
        }
        break;
    case 2:
        if (t) {
            t->dst->flags |= FKDA_TENSOR_READ_ONLY;
            note(c, "%s read-only; ", t->name);
        }
        break;
    case 3:
        if (o) {
            static const double odd[] = {NAN, INFINITY, -INFINITY, 0.0, 1.0, -1e31, 1e300, -1.0};
            switch (pick(c->src, 7)) {
            case 0: o->gate = (fkda_gate)(chance(c->src, 50) ? 3 : -1); break;
            case 1: o->lower_bound = odd[pick(c->src, 8)]; break;
            case 2: o->scale = odd[pick(c->src, 8)]; break;
            case 3: o->use_qk_l2norm = chance(c->src, 50) ? 2 : -1; break;
            case 4: o->allow_neg_eigval = 1; break;
            case 5: o->state_v_first = chance(c->src, 50) ? 2 : -1; break;
            default: c->prefill.intermediate_chunk_size = chance(c->src, 50) ? -1 : 1 << 30; break;
            }
            note(c, "options gate=%d lb=%g scale=%g norm=%d neg=%d vfirst=%d chunk=%d; ", (int)o->gate, o->lower_bound,
                 o->scale, o->use_qk_l2norm, o->allow_neg_eigval, o->state_v_first,
                 (int)c->prefill.intermediate_chunk_size);
            if (isinf(o->scale) || fabs(o->scale) > 1e30) c->dirty = 1;
        } else {
            static const double odd[] = {NAN, INFINITY, 0.0, -1.0, 1e-45, 1.0};
            if (chance(c->src, 50))
                c->layer.norm_eps = odd[pick(c->src, 6)];
            else
                c->layer.lower_bound = odd[pick(c->src, 6)];
            note(c, "eps=%g lb=%g; ", c->layer.norm_eps, c->layer.lower_bound);
        }
        break;
    case 4:
        switch (pick(c->src, 4)) {
        case 0: c->device.type = (fkda_device_type)(chance(c->src, 50) ? 7 : -1); break;
        case 1: c->device.num_threads = chance(c->src, 50) ? -3 : 100000; break;
        case 2: c->device.reference = chance(c->src, 50) ? 5 : -1; break;
        default: c->device.index = 99; break;
        }
        note(c, "device type=%d threads=%d reference=%d index=%d; ", (int)c->device.type, (int)c->device.num_threads,
             (int)c->device.reference, (int)c->device.index);
        break;
    default:
        c->workspace_break = 1 + (int)pick(c->src, 3);
        note(c, "workspace %d; ", c->workspace_break);
        break;
    }
}

/* ---- running and checking ------------------------------------------------------------------ */

static fkda_status query(call *c, const fkda_device *dev, size_t *bytes)
{
    switch (c->op) {
    case 0: return fkda_prefill_workspace_size(&c->prefill, dev, bytes);
    case 1: return fkda_decode_workspace_size(&c->decode, dev, bytes);
    default: return fkda_decode_layer_workspace_size(&c->layer, dev, bytes);
    }
}

static fkda_status run_op(call *c, const fkda_device *dev, void *ws, size_t bytes)
{
    switch (c->op) {
    case 0: return fkda_prefill(&c->prefill, dev, ws, bytes);
    case 1: return fkda_decode(&c->decode, dev, ws, bytes);
    default: return fkda_decode_layer(&c->layer, dev, ws, bytes);
    }
}

/* Queries the workspace, breaks it if asked, runs. */
static fkda_status run_call(call *c, const fkda_device *dev, int break_workspace)
{
    size_t bytes = 0;
    fkda_status s = query(c, dev, &bytes);
    if (s != FKDA_OK) return s;
    void *ws = NULL;
    size_t given = bytes;
    const int on_gpu = dev->type == FKDA_DEVICE_CUDA && c->cuda;
    if (bytes > 0) {
#ifdef FKDA_FUZZ_CUDA
        if (on_gpu) ws = guarded_malloc(bytes + 256);
#endif
        if (!on_gpu) ws = aligned_alloc(256, (bytes + 256 + 255) / 256 * 256);
        if (!ws) fuzz_fail("harness: out of memory (workspace of %zu bytes)", bytes);
    }
    void *pass = ws;
    if (break_workspace == 1) pass = NULL;
    if (break_workspace == 2) given = bytes ? bytes - 1 : 0;
    if (break_workspace == 3 && ws) pass = (char *)ws + 64;
    s = run_op(c, dev, pass, given);
#ifdef FKDA_FUZZ_CUDA
    if (on_gpu) {
        /* a fault inside a kernel shows at the next synchronisation */
        const cudaError_t e = cudaDeviceSynchronize();
        if (e != cudaSuccess) fuzz_fail("CUDA error after the call (status %d): %s", (int)s, cudaGetErrorString(e));
        if (ws && !guards_intact(ws, bytes + 256)) fuzz_fail("the call wrote past its workspace");
        guarded_free(ws);
        return s;
    }
#endif
    free(ws);
    return s;
}

/* The bytes of each buffer that belong to an output's elements (the only ones a call may write). */
static uint8_t *write_mask(const call *c, int buffer)
{
    const tensor_spec *b = &c->spec[buffer];
    uint8_t *mask = calloc(b->bytes, 1);
    if (!mask) fuzz_fail("harness: out of memory");
    for (int i = 0; i < c->nspec; i++) {
        const tensor_spec *t = &c->spec[i];
        const fkda_tensor *x = t->dst;
        const int owner = owner_of(c, i);
        if (t->role != ROLE_OUTPUT || owner != buffer || x->ndim < 1 || x->data == NULL) continue;
        const size_t esize = fkda_dtype_size(x->dtype);
        int64_t count = 1;
        for (int d = 0; d < x->ndim; d++) count *= x->shape[d];
        for (int64_t e = 0; e < count; e++) {
            const int64_t off = view_offset(x, e) * (int64_t)esize +
                                (int64_t)((uintptr_t)x->data - (uintptr_t)b->buffer);
            if (off >= 0 && (size_t)off + esize <= b->bytes) memset(mask + off, 1, esize);
        }
    }
    return mask;
}

static int is_output_view(const tensor_spec *t) { return t->role == ROLE_OUTPUT && t->dst->ndim >= 1; }

/* Relative error of two gathered views, with a floor for all-zero results. */
static double view_error(const double *a, const double *b, size_t n, size_t *nonfinite)
{
    double num = 0, den = 0;
    *nonfinite = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(a[i]) || !isfinite(b[i])) {
            if (!(isnan(a[i]) && isnan(b[i])) && a[i] != b[i]) (*nonfinite)++;
            continue;
        }
        num += (a[i] - b[i]) * (a[i] - b[i]);
        den += b[i] * b[i];
    }
    return sqrt(num) / fmax(sqrt(den), 1e-6 * sqrt((double)n + 1));
}

/* The bar of a fast result of n elements against the float64 reference, by dtype: both are
 * rounded to it, and differ where float32 arithmetic moves a value across a rounding boundary.
 * Each bar sits well above the worst difference seen over many inputs, so that a systematic
 * error of a fraction of a rounding step still shows. The norm of a few elements does not average
 * their errors (one element that cancels, or an RMS norm over V = 1, shows its own relative
 * error): below 64 elements the bar grows as sqrt(64 / n), as tests/c's test_bar_fast does. */
static double bar_of(fkda_dtype dtype, size_t n)
{
    const double few = n > 0 && n < 64 ? sqrt(64.0 / (double)n) : 1.0;
    switch (dtype) {
    case FKDA_DTYPE_BF16: return 1.6e-2 * few;
    case FKDA_DTYPE_F16: return 4e-3 * few;
    default: return 2e-4 * few;
    }
}

typedef struct stats {
    long runs, skipped, valid, valid_refused, broken, broken_accepted, compared, relaid;
} stats;
static stats totals;

/* A view x of spec i over a copy of the buffers (taken before or after a run) instead of the
 * live ones. */
static fkda_tensor view_over(const call *c, int i, const fkda_tensor *x, uint8_t *const *copies)
{
    const int owner = owner_of(c, i);
    fkda_tensor y = *x;
    const uintptr_t offset = (uintptr_t)x->data - (uintptr_t)c->spec[owner].buffer;
    if (offset >= c->spec[owner].bytes) fuzz_fail("harness: %s lies outside its buffer", c->spec[i].name);
    y.data = copies[owner] + offset;
    return y;
}

static int64_t tensor_elements(const fkda_tensor *x)
{
    int64_t count = 1;
    for (int d = 0; d < x->ndim; d++) count *= x->shape[d];
    return count;
}

/* The same call with every tensor copied, as it was before the run, to a fresh row-major buffer
 * (an in-place view staying in place): the fast path must give bitwise the same outputs whatever
 * the strides, padding and broadcasts were. A stride handled wrongly in code that the fast path
 * and the reference share would pass the comparison with the reference, and fails here. */
static void check_layout_invariance(call *c, uint8_t *const *before, uint8_t *const *after)
{
    fkda_tensor saved[MAX_TENSORS];
    uint8_t *dense[MAX_TENSORS] = {0};
    for (int i = 0; i < c->nspec; i++) saved[i] = *c->spec[i].dst;
    for (int i = 0; i < c->nspec; i++) {
        tensor_spec *t = &c->spec[i];
        fkda_tensor *x = t->dst;
        if (t->same_as >= 0 || !t->buffer || x->ndim < 1 || x->data == NULL) continue;
        const int64_t count = tensor_elements(x), esize = (int64_t)fkda_dtype_size(x->dtype);
        if (count == 0) continue;
        const fkda_tensor old = view_over(c, i, x, before);
        dense[i] = malloc((size_t)(count * esize));
        if (!dense[i]) fuzz_fail("harness: out of memory");
        for (int64_t e = 0; e < count; e++)
            memcpy(dense[i] + e * esize, (const uint8_t *)old.data + view_offset(&old, e) * esize, (size_t)esize);
        const uint32_t flags = x->flags;
        *x = fkda_make_tensor(dense[i], x->dtype, x->ndim, x->shape);
        x->flags = flags;
    }
    for (int i = 0; i < c->nspec; i++)
        if (c->spec[i].same_as >= 0) {
            *c->spec[i].dst = *c->spec[owner_of(c, i)].dst;
            c->spec[i].dst->flags = saved[i].flags;
        }
    const fkda_status s = run_call(c, &c->device, 0);
    if (s != FKDA_OK) fuzz_fail("the same call on row-major copies was refused: %s", fkda_last_error());
    for (int i = 0; i < c->nspec; i++) {
        const tensor_spec *t = &c->spec[i];
        if (!is_output_view(t) || saved[i].data == NULL || tensor_elements(&saved[i]) == 0) continue;
        const fkda_tensor fast = view_over(c, i, &saved[i], after);
        size_t n = 0, m = 0;
        double *want = test_gather(&fast, &n), *got = test_gather(t->dst, &m);
        for (size_t e = 0; e < n; e++)
            if (memcmp(&got[e], &want[e], sizeof(double)) != 0 && !(isnan(got[e]) && isnan(want[e])))
                fuzz_fail("%s: element %zu is %.9g on row-major copies, %.9g in the caller's layout", t->name, e,
                          got[e], want[e]);
        free(want);
        free(got);
    }
    for (int i = 0; i < c->nspec; i++) {
        *c->spec[i].dst = saved[i];
        free(dense[i]);
    }
    totals.relaid++;
}

#ifdef FKDA_FUZZ_CUDA
/* Moves every tensor's data pointer between its host buffer and the buffer's GPU copy (the same
 * offset inside; NULL stays NULL). */
static void point_at(call *c, int device)
{
    for (int i = 0; i < c->nspec; i++) {
        const tensor_spec *owner = &c->spec[owner_of(c, i)];
        fkda_tensor *x = c->spec[i].dst;
        if (x->data == NULL || !owner->buffer || !owner->device_buffer) continue;
        const uint8_t *from = device ? owner->buffer : owner->device_buffer;
        uint8_t *to = device ? owner->device_buffer : owner->buffer;
        x->data = to + ((uintptr_t)x->data - (uintptr_t)from);
    }
}

/* Every buffer copied to the GPU (between guards), and the tensors pointed at the copies. */
static void to_device(call *c)
{
    for (int i = 0; i < c->nspec; i++) {
        tensor_spec *t = &c->spec[i];
        if (!t->buffer) continue;
        t->device_buffer = guarded_malloc(t->bytes);
        CUDA_OK(cudaMemcpy(t->device_buffer, t->buffer, t->bytes, cudaMemcpyHostToDevice));
    }
    point_at(c, 1);
}

/* The GPU copies back into the host buffers (where every check reads them), guards checked. */
static void from_device(call *c)
{
    for (int i = 0; i < c->nspec; i++) {
        tensor_spec *t = &c->spec[i];
        if (!t->device_buffer) continue;
        CUDA_OK(cudaMemcpy(t->buffer, t->device_buffer, t->bytes, cudaMemcpyDeviceToHost));
        if (!guards_intact(t->device_buffer, t->bytes)) fuzz_fail("a write past %s's GPU buffer", t->name);
    }
}

static void free_device(call *c)
{
    for (int i = 0; i < c->nspec; i++) {
        guarded_free(c->spec[i].device_buffer);
        c->spec[i].device_buffer = NULL;
    }
}
#endif

static void check_call(call *c, int broken)
{
    /* buffers: snapshot all, and remember which bytes may change */
    uint8_t *before[MAX_TENSORS] = {0}, *mask[MAX_TENSORS] = {0}, *after[MAX_TENSORS] = {0};
    for (int i = 0; i < c->nspec; i++) {
        if (!c->spec[i].buffer) continue;
        before[i] = malloc(c->spec[i].bytes);
        if (!before[i]) fuzz_fail("harness: out of memory");
        memcpy(before[i], c->spec[i].buffer, c->spec[i].bytes);
    }
    fkda_status s = run_call(c, &c->device, c->workspace_break);
#ifdef FKDA_FUZZ_CUDA
    if (c->cuda) { /* the results into the host buffers, the tensors back at them: every check reads there */
        from_device(c);
        point_at(c, 0);
    }
#endif
    totals.runs++;
    if (s != FKDA_OK) {
        const char *msg = fkda_last_error();
        if ((int)s < 0 || s > FKDA_ERROR_INTERNAL) fuzz_fail("unknown status %d", (int)s);
        if (s == FKDA_ERROR_INTERNAL) fuzz_fail("internal error: %s", msg);
        if (!msg || !*msg) fuzz_fail("status %s without a message", fkda_status_name(s));
        /* the message names what is wrong: "name: ..." or "name.field: ..." */
        const char *colon = strchr(msg, ':');
        if (!colon || colon == msg) fuzz_fail("message does not start with an argument's name: %s", msg);
        for (int i = 0; i < c->nspec; i++)
            if (before[i] && memcmp(before[i], c->spec[i].buffer, c->spec[i].bytes) != 0)
                fuzz_fail("refused (%s: %s) but %s's memory changed", fkda_status_name(s), msg, c->spec[i].name);
        if (broken)
            totals.broken++;
        else {
            totals.valid_refused++;
            fuzz_fail("a valid call was refused: %s", msg);
        }
        goto done;
    }
    if (broken)
        totals.broken_accepted++;
    else
        totals.valid++;
    for (int i = 0; i < c->nspec; i++) {
        if (!before[i]) continue;
        mask[i] = write_mask(c, i);
        for (size_t j = 0; j < c->spec[i].bytes; j++)
            if (!mask[i][j] && before[i][j] != c->spec[i].buffer[j])
                fuzz_fail("byte %zu of %s's buffer changed, which is no output element", j, c->spec[i].name);
    }
    if (c->dirty || c->device.reference) goto done;
    /* the same call on the float64 reference, from the same starting memory */
    for (int i = 0; i < c->nspec; i++) {
        if (!before[i]) continue;
        after[i] = malloc(c->spec[i].bytes);
        if (!after[i]) fuzz_fail("harness: out of memory");
        memcpy(after[i], c->spec[i].buffer, c->spec[i].bytes);
        memcpy(c->spec[i].buffer, before[i], c->spec[i].bytes);
    }
    fkda_device ref = c->device;
#ifdef FKDA_FUZZ_CUDA
    if (c->cuda) { /* the GPU's results against the CPU's reference on the host buffers */
        memset(&ref, 0, sizeof ref);
        ref.type = FKDA_DEVICE_CPU;
    }
#endif
    ref.reference = 1;
    s = run_call(c, &ref, 0);
    if (s != FKDA_OK) fuzz_fail("the fast path ran, the reference refused: %s", fkda_last_error());
    totals.compared++;
    for (int i = 0; i < c->nspec; i++) {
        const tensor_spec *t = &c->spec[i];
        if (!is_output_view(t) || t->dst->data == NULL) continue;
        size_t n = 0, m = 0, bad = 0;
        double *want = test_gather(t->dst, &n);
        const fkda_tensor fast = view_over(c, i, t->dst, after); /* the fast path's values */
        double *got = test_gather(&fast, &m);
        const double err = view_error(got, want, n, &bad);
        const double bar = c->cuda ? fmax(bar_of(t->dst->dtype, n), 2e-2) : bar_of(t->dst->dtype, n);
        if (bad || !(err <= bar)) {
            /* the largest differences, with their row-major index */
            for (int shown = 0; shown < 8; shown++) {
                size_t worst = 0;
                double d = -1;
                for (size_t e = 0; e < n; e++)
                    if (fabs(got[e] - want[e]) > d && got[e] == got[e]) d = fabs(got[(worst = e)] - want[e]);
                fprintf(stderr, "  element %zu: fast %.9g reference %.9g\n", worst, got[worst], want[worst]);
                got[worst] = want[worst];
            }
            fuzz_fail("%s: the fast path is %.3g from the reference (bar %.1g), %zu non-finite mismatches", t->name,
                      err, bar, bad);
        }
        free(want);
        free(got);
    }
    if (!c->cuda) check_layout_invariance(c, before, after);
done:
    for (int i = 0; i < c->nspec; i++) {
        free(before[i]);
        free(mask[i]);
        free(after[i]);
    }
}

/* ---- the target -------------------------------------------------------------------------------- */

static void fuzz_one(const uint8_t *data, size_t size)
{
    static call c;
    memset(&c, 0, sizeof c);
    source src = {data, size, 0};
    c.src = &src;
    uint64_t seed = 0;
    for (int i = 0; i < 8; i++) seed = seed << 8 | next_byte(&src);
    test_rng_seed(&c.rng, seed);
    current = &c;
    current_input = data;
    current_size = size;
    c.cuda = fuzz_on_cuda;
    c.device.type = c.cuda ? FKDA_DEVICE_CUDA : FKDA_DEVICE_CPU;
    c.device.num_threads = (int32_t)pick(&src, 4);
    c.op = (int)pick(&src, 3);
    c.prefill.options = c.decode.options = fkda_default_options();
    if (c.op == 0)
        gen_prefill(&c);
    else if (c.op == 1)
        gen_decode(&c);
    else
        gen_layer(&c);
    for (int i = 0; i < c.nspec; i++) choose_layout(&c, &c.spec[i]);
    /* 0 to 2 breaks (none in half the inputs), each of a spec (before allocation) or of the call */
    int spec_breaks = 0, call_breaks = 0;
    const unsigned breaks = pick(&src, 4) / 2 + (chance(&src, 10) ? 1u : 0u);
    for (unsigned i = 0; i < breaks; i++) {
        if (chance(&src, 50))
            spec_breaks++;
        else
            call_breaks++;
    }
    for (int i = 0; i < spec_breaks; i++) break_spec(&c);
    for (int i = 0; i < c.nspec; i++)
        if (c.spec[i].same_as < 0) allocate(&c, &c.spec[i]);
    for (int i = 0; i < c.nspec; i++) {
        tensor_spec *t = &c.spec[i];
        if (t->same_as < 0) continue;
        t->same_as = owner_of(&c, i);
        *t->dst = *c.spec[t->same_as].dst; /* the same view (shape, strides, dtype) */
    }
    if (!c.skip) {
        for (int i = 0; i < call_breaks; i++) break_call(&c);
#ifdef FKDA_FUZZ_CUDA
        if (c.cuda) to_device(&c);
#endif
        check_call(&c, breaks > 0);
#ifdef FKDA_FUZZ_CUDA
        free_device(&c);
#endif
    } else {
        totals.skipped++;
    }
    for (int i = 0; i < c.nspec; i++) free(c.spec[i].buffer);
    current = NULL;
}

#ifdef FKDA_LIBFUZZER
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_one(data, size);
    return 0;
}
#else
/* fuzz_api [RUNS [SEED]]: RUNS random inputs of 16 to 400 bytes from SEED (default 2000, and
 * FKDA_TEST_SEED or the clock); fuzz_api FILE...: each file as one input. */
int main(int argc, char **argv)
{
#ifdef FKDA_FUZZ_CUDA
    int gpus = 0;
    if (!fkda_has_cuda() || cudaGetDeviceCount(&gpus) != cudaSuccess || gpus == 0) {
        fprintf(stderr, "fuzz_api_cuda: no CUDA device (or a library built without CUDA)\n");
        return 77;
    }
    fuzz_on_cuda = 1;
#endif
    if (argc > 1 && (argv[1][0] < '0' || argv[1][0] > '9')) {
        for (int i = 1; i < argc; i++) {
            FILE *f = fopen(argv[i], "rb");
            if (!f) {
                fprintf(stderr, "fuzz_api: cannot open %s\n", argv[i]);
                return 2;
            }
            static uint8_t buf[1 << 16];
            size_t n = fread(buf, 1, sizeof buf, f);
            fclose(f);
            fuzz_one(buf, n);
        }
        printf("fuzz_api: %d input(s) replayed\n", argc - 1);
        return 0;
    }
#if defined(FUZZ_SANITIZED)
    __sanitizer_set_death_callback(report_input);
#endif
    const long runs = argc > 1 ? strtol(argv[1], NULL, 10) : 2000;
    const uint64_t seed = argc > 2 ? strtoull(argv[2], NULL, 10) : test_seed_from_env();
    test_rng r;
    test_rng_seed(&r, seed);
    static uint8_t buf[400];
    for (long i = 0; i < runs; i++) {
        const size_t n = 16 + (size_t)test_rng_int(&r, 0, (int64_t)sizeof buf - 16);
        for (size_t j = 0; j < n; j++) buf[j] = (uint8_t)test_rng_next(&r);
        if (getenv("FUZZ_TRACE")) fprintf(stderr, "input %ld\n", i);
        fuzz_one(buf, n);
    }
    printf("fuzz_api: seed %llu, %ld inputs: %ld run (%ld skipped as too large); valid: %ld ran, %ld refused; "
           "broken: %ld refused, %ld ran; %ld compared with the reference and on row-major copies\n",
           (unsigned long long)seed, runs, totals.runs, totals.skipped, totals.valid, totals.valid_refused,
           totals.broken, totals.broken_accepted, totals.compared);
    return 0;
}
#endif

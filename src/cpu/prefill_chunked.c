/*
 * prefill_chunked.c: the fast CPU prefill, the chunked form of docs/design.md section 1 in float32.
 *
 * Work item: one (sequence, value head, block of value columns). Every value column of the state
 * evolves independently of the others, so the columns split into blocks with no communication;
 * the plan splits V only as far as needed to give every thread work, because each block
 * recomputes the per-chunk quantities that do not depend on V (the activations, the decays and
 * the two C x C matrices).
 *
 * Per chunk of C = 16 tokens, with the entering state S ([K][nv], rows = key index) and
 * G_i = a_1 + ... + a_i the decay accumulated inside the chunk (a vector over K):
 *
 *   kd_i = k_i exp(G_i)    ki_i = k_i exp(-G_i)    qd_i = scale q_i exp(G_i)    kr_i = k_i exp(G_C - G_i)
 *   L    = strictly_lower(diag(b) kd ki^T)       A = lower_incl_diag(qd ki^T)
 *   U    = (I + L)^-1 diag(b) (V - kd S)        (forward substitution, row by row)
 *   O    = qd S + A U
 *   S'   = diag(exp(G_C)) S + kr^T U
 *
 * kd ki^T factorises exp(G_i - G_j) into exp(G_i) exp(-G_j), which needs both factors inside the
 * float range: the chunk uses it when every G of the chunk lies in [-80, 80] (always, for the safe
 * gate with lower_bound >= -5: 16 x 5 = 80, and exp(80) ~ 5.5e34 < 3.4e38). Otherwise (softplus
 * gate with strong decay, lower_bound < -5, or a precomputed g that large) the chunk computes the
 * two matrices pairwise with exp(G_i - G_j), i >= j, which is <= 1 when the decays are <= 0.
 *
 * The products (kd S, qd S, kd ki^T, qd ki^T, A U, kr^T U) run in chunk_kernels.c. They want
 * whole register tiles, so the working arrays are padded with zeros: the state block to a
 * multiple of 8 rows (key index) and 16 columns, and a chunk shorter than C (the end of a
 * sequence) to C tokens with k = q = v = b = 0 and a = 0. Padding contributes exact zeros and
 * stays zero from chunk to chunk. The per-token arrays are token-major ([C][K]) so that the
 * elementwise work (activations, decays) runs along the key index in vectorised loops; those
 * loops are compiled per instruction set too (FKDA_VECTOR_CLONES in cpu_internal.h).
 */
#include <math.h>
#include <string.h>

#include "../core/error.h"
#include "activations.h"
#include "chunk_kernels.h"
#include "cpu_internal.h"
#include "fast_math.h"
#include "load.h"
#include "prefill_states.h"
#include "state_io.h"
#include "thread_pool.h"

#define C FKDA_CHUNK           /* tokens per chunk */
#define FACTORISED_LIMIT 80.0f /* |G| bound for the factorised kd ki^T */
#define MIN_VBLOCK 32          /* never split the value columns finer than this */

static inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

typedef struct chunk_plan {
    int threads;
    int64_t vblock;  /* value columns per work item (the last block may be narrower) */
    int64_t vblocks; /* blocks per (sequence, head) */
    int64_t items;
    size_t worker_bytes;
} chunk_plan;

typedef struct chunk_job {
    const fkda_problem *p;
    const fkda_prefill_extras *extras;
    chunk_plan plan;
    char *workspace;
} chunk_job;

/* One worker's scratch, carved from its workspace slice. Kp = K rounded up to 8, ld = nv
 * rounded up to 16. The per-token arrays are token-major ([C][K]: row i is token i), so that
 * every elementwise loop runs contiguously along the key index. */
typedef struct chunk_scratch {
    int64_t Kp, ld;
    float *S;               /* [Kp][ld] the state block */
    float *q, *k;           /* [C][K] */
    float *a, *G;           /* [C][K] the log decays a_i and their running sum G_i */
    float *kd, *qd, *ki;    /* [C][K] the decayed keys and queries */
    float *kiT;             /* [K][C] ki transposed (the B operand of kd ki^T) */
    float *kr;              /* [C][Kp] */
    float *decay_last;      /* [Kp] exp(G_C) */
    float *bias;            /* [K] the head's dt_bias */
    float *tmp;             /* [3K] the pairwise form's products and running decay */
    float *b;               /* [C] */
    float *Vc, *W, *QS, *U; /* [C][ld] values, kd S, qd S (then O), U */
    float *L, *A;           /* [C][C] */
    float *S_mark;          /* [Kp][ld] the state at a mark inside a chunk (NULL without marks) */
} chunk_scratch;

static size_t carve_scratch(fkda_carver *c, int64_t K, int64_t nv, int marks, chunk_scratch *s)
{
    const size_t begin = c->used, f = sizeof(float);
    const int64_t Kp = round_up(K, 8), ld = round_up(nv, 16);
    s->Kp = Kp;
    s->ld = ld;
    s->S = fkda_carve(c, (size_t)(Kp * ld) * f);
    s->q = fkda_carve(c, (size_t)(C * K) * f);
    s->k = fkda_carve(c, (size_t)(C * K) * f);
    s->a = fkda_carve(c, (size_t)(C * K) * f);
    s->G = fkda_carve(c, (size_t)(C * K) * f);
    s->kd = fkda_carve(c, (size_t)(C * K) * f);
    s->qd = fkda_carve(c, (size_t)(C * K) * f);
    s->ki = fkda_carve(c, (size_t)(C * K) * f);
    s->kiT = fkda_carve(c, (size_t)(K * C) * f);
    s->kr = fkda_carve(c, (size_t)(C * Kp) * f);
    s->decay_last = fkda_carve(c, (size_t)Kp * f);
    s->bias = fkda_carve(c, (size_t)K * f);
    s->tmp = fkda_carve(c, (size_t)(3 * K) * f);
    s->b = fkda_carve(c, (size_t)C * f);
    s->Vc = fkda_carve(c, (size_t)(C * ld) * f);
    s->W = fkda_carve(c, (size_t)(C * ld) * f);
    s->QS = fkda_carve(c, (size_t)(C * ld) * f);
    s->U = fkda_carve(c, (size_t)(C * ld) * f);
    s->L = fkda_carve(c, (size_t)(C * C) * f);
    s->A = fkda_carve(c, (size_t)(C * C) * f);
    s->S_mark = marks ? fkda_carve(c, (size_t)(Kp * ld) * f) : NULL;
    return c->used - begin;
}

static chunk_plan make_plan(const fkda_problem *p)
{
    chunk_plan plan;
    plan.threads = fkda_cpu_thread_count(p->device.num_threads);
    const int64_t heads = p->N * p->HV;
    fkda_split_columns(plan.threads, heads, p->V, MIN_VBLOCK, &plan.vblock, &plan.vblocks);
    plan.items = heads * plan.vblocks;
    /* Size the scratch with the carving code itself (a NULL base only counts). */
    chunk_scratch s;
    fkda_carver c = {NULL, 0};
    plan.worker_bytes = carve_scratch(&c, p->K, plan.vblock, fkda_has_marks(p), &s);
    return plan;
}

/* A log decay below -110 is exp(a) = 0 in float (exp(-110) ~ 1.7e-48, below the smallest
 * denormal), so raising it to -110 changes no decay, and keeps G finite (a g of -3e38 would sum
 * to -inf, and -inf - -inf is NaN). A NaN stays NaN (the comparison is false). The CUDA prep
 * clamps the same way (at 2^-150). */
#define MIN_LOG_DECAY (-110.0f)

static void clamp_log_decay(int64_t K, float *restrict a)
{
    for (int64_t kk = 0; kk < K; kk++) a[kk] = a[kk] < MIN_LOG_DECAY ? MIN_LOG_DECAY : a[kk];
}

/* Loads the chunk's tokens [t0, t0 + count) (count <= C, the rest padding) into the scratch:
 * q, k, the log decays a and their running sum G, b, and the value block. */
FKDA_VECTOR_CLONES
static void load_chunk(const fkda_problem *p, const fkda_head_gate_f *gate, int64_t row, int64_t t0, int64_t count,
                       int64_t h, int64_t v0, int64_t nv, chunk_scratch *s)
{
    const int64_t K = p->K, ld = s->ld;
    for (int64_t i = 0; i < C; i++) {
        float *restrict q = s->q + i * K, *restrict k = s->k + i * K;
        float *restrict a = s->a + i * K, *restrict G = s->G + i * K;
        const float *restrict Gprev = s->G + (i - 1) * K; /* read only when i > 0 */
        if (i < count) {
            fkda_token_float(p, gate, row, t0 + i, h, q, k, a, &s->b[i]);
            clamp_log_decay(K, a);
            fkda_load_row_float(p->v.data, p->v.dtype, fkda_token_offset(&p->v, row, t0 + i, h) + v0 * p->v.stride[3],
                                p->v.stride[3], nv, s->Vc + i * ld);
            for (int64_t kk = 0; kk < K; kk++) G[kk] = i > 0 ? Gprev[kk] + a[kk] : a[kk];
        } else {
            s->b[i] = 0.0f;
            for (int64_t j = 0; j < nv; j++) s->Vc[i * ld + j] = 0.0f;
            for (int64_t kk = 0; kk < K; kk++) {
                q[kk] = 0.0f;
                k[kk] = 0.0f;
                a[kk] = 0.0f;
                G[kk] = Gprev[kk]; /* count >= 1, so i > 0 here */
            }
        }
    }
}

/* One token's decayed keys and queries (the loops live in functions of their own because GCC
 * honours `restrict` on parameters, and without it would not vectorise these loops). */
static void decay_token_factorised(int64_t K, float scale, const float *restrict G, const float *restrict k,
                                   const float *restrict q, const float *restrict decay_last, float *restrict kd,
                                   float *restrict qd, float *restrict ki, float *restrict kr)
{
    /* One exp per element: exp(-G) and exp(G_C - G) follow from exp(G) and exp(G_C), all of
     * them inside the float range here. */
    for (int64_t kk = 0; kk < K; kk++) {
        const float e = fkda_expf(G[kk]), inv = 1.0f / e;
        kd[kk] = k[kk] * e;
        qd[kk] = scale * q[kk] * e;
        ki[kk] = k[kk] * inv;
        kr[kk] = k[kk] * (decay_last[kk] * inv);
    }
}

/* rest = a_{i+1} + ... + a_C, the decay from token i to the chunk's end, summed from the
 * token's own decays rather than as G_C - G_i (see decay_chunk); then adds a_i to it for the
 * token before. */
static void decay_token_pairwise(int64_t K, float scale, const float *restrict G, const float *restrict a,
                                 const float *restrict k, const float *restrict q, float *restrict rest,
                                 float *restrict kd, float *restrict qd, float *restrict kr)
{
    for (int64_t kk = 0; kk < K; kk++) {
        const float e = fkda_expf(G[kk]);
        kd[kk] = k[kk] * e;
        qd[kk] = scale * q[kk] * e;
        kr[kk] = k[kk] * fkda_expf(rest[kk]);
        rest[kk] += a[kk];
    }
}

/* How many x[i] lie outside [-limit, limit] (NaN counts as inside: it poisons either form). */
static int64_t count_outside(int64_t n, const float *restrict x, float limit)
{
    int64_t count = 0;
    for (int64_t i = 0; i < n; i++) count += (x[i] < -limit) | (x[i] > limit);
    return count;
}

static void exp_row(int64_t n, const float *restrict x, float *restrict y)
{
    for (int64_t i = 0; i < n; i++) y[i] = fkda_expf(x[i]);
}

/* The decayed keys and queries; returns 1 when the chunk's G allows the factorised form.
 *
 * The pairwise form (large decays) takes every decay between two tokens as a sum of the tokens'
 * own a's, never as a difference of running sums: with decays of very different sizes in one
 * chunk (a lower bound of -1000 with sigmoids from 1e-10 to 1), G_i - G_j loses a later token's
 * small a_i against a large G_j (float keeps 24 bits of G_j's magnitude), which put the output
 * 1e-5 (bound -1000) to 1e-2 (bound -1e30, before the clamp above) off the reference. */
FKDA_VECTOR_CLONES
static int decay_chunk(int64_t K, float scale, chunk_scratch *restrict s)
{
    const int64_t Kp = s->Kp;
    const int factorised = count_outside(C * K, s->G, FACTORISED_LIMIT) == 0;
    exp_row(K, s->G + (C - 1) * K, s->decay_last);
    if (factorised) {
        for (int i = 0; i < C; i++)
            decay_token_factorised(K, scale, s->G + i * K, s->k + i * K, s->q + i * K, s->decay_last, s->kd + i * K,
                                   s->qd + i * K, s->ki + i * K, s->kr + i * Kp);
    } else {
        float *rest = s->tmp; /* a_{i+1} + ... + a_C, from the last token back */
        for (int64_t kk = 0; kk < K; kk++) rest[kk] = 0.0f;
        for (int i = C - 1; i >= 0; i--)
            decay_token_pairwise(K, scale, s->G + i * K, s->a + i * K, s->k + i * K, s->q + i * K, rest, s->kd + i * K,
                                 s->qd + i * K, s->kr + i * Kp);
    }
    if (factorised)
        for (int64_t kk = 0; kk < K; kk++)
            for (int i = 0; i < C; i++) s->kiT[kk * C + i] = s->ki[i * K + kk];
    return factorised;
}

/* L = strictly_lower(diag(b) kd ki^T) and A = lower_incl_diag(qd ki^T), factorised. */
static void intra_factorised(int64_t K, chunk_scratch *restrict s)
{
    fkda_gemm_a(C, C, K, s->kd, K, s->kiT, C, s->L, C, FKDA_INIT_ZERO, NULL);
    fkda_gemm_a(C, C, K, s->qd, K, s->kiT, C, s->A, C, FKDA_INIT_ZERO, NULL);
    for (int i = 0; i < C; i++) {
        for (int j = 0; j < C; j++) {
            s->L[i * C + j] = j < i ? s->b[i] * s->L[i * C + j] : 0.0f;
            s->A[i * C + j] = j <= i ? s->A[i * C + j] : 0.0f;
        }
    }
}

/* sum over 8 independent partial sums, so that the loop vectorises */
static float sum_floats(const float *restrict x, int64_t n)
{
    float partial[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) partial[j] += x[i + j];
    float sum = 0.0f;
    for (; i < n; i++) sum += x[i];
    for (int j = 0; j < 8; j++) sum += partial[j];
    return sum;
}

/* kk_terms = ki kj exp(D) and qk_terms = qi kj exp(D), elementwise, with D = a_{j+1} + ... + a_i
 * the decay from token j to token i. */
static void pair_terms(int64_t K, const float *restrict D, const float *restrict ki, const float *restrict kj,
                       const float *restrict qi, float *restrict kk_terms, float *restrict qk_terms)
{
    for (int64_t kk = 0; kk < K; kk++) {
        const float decay = fkda_expf(D[kk]);
        kk_terms[kk] = ki[kk] * kj[kk] * decay;
        qk_terms[kk] = qi[kk] * kj[kk] * decay;
    }
}

static void add_row(int64_t K, const float *restrict x, float *restrict y)
{
    for (int64_t kk = 0; kk < K; kk++) y[kk] += x[kk];
}

/* The same two matrices with exp(a_{j+1} + ... + a_i) per pair (i >= j), the sum running down
 * column j: slower, never out of range, and exact to float for decays of any size. */
FKDA_VECTOR_CLONES
static void intra_pairwise(int64_t K, float scale, chunk_scratch *restrict s)
{
    float *D = s->tmp + 2 * K;
    for (int e = 0; e < C * C; e++) s->L[e] = s->A[e] = 0.0f;
    for (int j = 0; j < C; j++) {
        for (int64_t kk = 0; kk < K; kk++) D[kk] = 0.0f;
        for (int i = j; i < C; i++) {
            if (i > j) add_row(K, s->a + i * K, D);
            pair_terms(K, D, s->k + i * K, s->k + j * K, s->q + i * K, s->tmp, s->tmp + K);
            if (j < i) s->L[i * C + j] = s->b[i] * sum_floats(s->tmp, K);
            s->A[i * C + j] = scale * sum_floats(s->tmp + K, K);
        }
    }
}

/* U = (I + L)^-1 diag(b) (V - W): row i of U needs the rows before it. */
FKDA_VECTOR_CLONES
static void solve_chunk(chunk_scratch *restrict s)
{
    const int64_t ld = s->ld;
    for (int i = 0; i < C; i++) {
        float *restrict u = s->U + i * ld;
        const float *restrict v = s->Vc + i * ld;
        const float *restrict w = s->W + i * ld;
        const float b = s->b[i];
        for (int64_t j = 0; j < ld; j++) u[j] = b * (v[j] - w[j]);
        for (int m = 0; m < i; m++) {
            const float l = s->L[i * C + m];
            const float *restrict um = s->U + m * ld;
            for (int64_t j = 0; j < ld; j++) u[j] -= l * um[j];
        }
    }
}

/* O = QS + A U with A lower triangular: row i reads U rows 0..i only, so that a NaN or inf in a
 * later token's U (0 * NaN is NaN) cannot reach an earlier token's output. */
FKDA_VECTOR_CLONES
static void add_lower_product(chunk_scratch *restrict s)
{
    const int64_t ld = s->ld;
    for (int i = 0; i < C; i++) {
        float *restrict o = s->QS + i * ld;
        for (int m = 0; m <= i; m++) {
            const float a = s->A[i * C + m];
            const float *restrict um = s->U + m * ld;
            for (int64_t j = 0; j < ld; j++) o[j] += a * um[j];
        }
    }
}

static void process_chunk(int64_t K, float scale, chunk_scratch *s)
{
    const int64_t ld = s->ld;
    if (decay_chunk(K, scale, s))
        intra_factorised(K, s);
    else
        intra_pairwise(K, scale, s);
    fkda_gemm_a(C, ld, K, s->kd, K, s->S, ld, s->W, ld, FKDA_INIT_ZERO, NULL);  /* W = kd S */
    fkda_gemm_a(C, ld, K, s->qd, K, s->S, ld, s->QS, ld, FKDA_INIT_ZERO, NULL); /* QS = qd S */
    solve_chunk(s);
    add_lower_product(s); /* O = QS + A U */
    fkda_gemm_at(s->Kp, ld, C, s->kr, s->Kp, s->U, ld, s->S, ld, FKDA_INIT_SCALE,
                 s->decay_last); /* S' = diag(exp(G_C)) S + kr^T U */
}

static void chunked_item(void *context, int64_t item, int worker)
{
    const chunk_job *job = (const chunk_job *)context;
    const fkda_problem *p = job->p;
    const int64_t K = p->K;
    const int64_t head_item = item / job->plan.vblocks, block = item % job->plan.vblocks;
    const int64_t n = head_item / p->HV, h = head_item % p->HV;
    const int64_t v0 = block * job->plan.vblock;
    const int64_t nv = p->V - v0 < job->plan.vblock ? p->V - v0 : job->plan.vblock;

    chunk_scratch s;
    fkda_carver c = {job->workspace + (size_t)worker * job->plan.worker_bytes, 0};
    carve_scratch(&c, K, nv, fkda_has_marks(p), &s);
    const int64_t Kp = s.Kp, ld = s.ld;

    /* The padding: the state block, the value rows, kr (its columns K .. Kp stay zero) and
     * exp(G_C) beyond K start at zero; the loads below fill the live part. */
    memset(s.S, 0, (size_t)(Kp * ld) * sizeof(float));
    memset(s.Vc, 0, (size_t)(C * ld) * sizeof(float));
    memset(s.kr, 0, (size_t)(C * Kp) * sizeof(float));
    memset(s.decay_last + K, 0, (size_t)(Kp - K) * sizeof(float));

    int64_t row, start, length;
    fkda_sequence_bounds(p, n, &row, &start, &length);
    const fkda_head_gate_f gate = fkda_head_gate_float(p, h, s.bias);
    const fkda_operand none = {0};
    const int64_t in_slot = fkda_initial_slot(p, n);
    fkda_state_load_float(in_slot < 0 ? &none : &p->state_in, in_slot, h, K, v0, nv, ld, s.S);

    /* Marks (states wanted inside the sequence, prefill_states.h). One at a chunk's end is the
     * state the chunk leaves. One inside a chunk is computed on a copy of the state entering the
     * chunk, by the same chunk cut short there: exactly what a prefill over that prefix computes,
     * and the main run (so `out`) stays on its grid of C tokens. */
    const fkda_marks marks = fkda_marks_for(p, job->extras, n, length);
    int64_t next_mark = length + 1;
    if (s.S_mark) {
        fkda_marks_emit_float(&marks, 0, h, K, v0, nv, ld, s.S);
        next_mark = fkda_marks_next(&marks, 0);
    }

    for (int64_t t0 = start; t0 < start + length; t0 += C) {
        const int64_t count = start + length - t0 < C ? start + length - t0 : C;
        const int64_t pos = t0 - start; /* tokens before this chunk */
        while (next_mark < pos + count) {
            float *const S_chunk = s.S;
            memcpy(s.S_mark, S_chunk, (size_t)(Kp * ld) * sizeof(float));
            s.S = s.S_mark;
            load_chunk(p, &gate, row, t0, next_mark - pos, h, v0, nv, &s);
            process_chunk(K, p->scale, &s);
            s.S = S_chunk;
            fkda_marks_emit_float(&marks, next_mark, h, K, v0, nv, ld, s.S_mark);
            next_mark = fkda_marks_next(&marks, next_mark);
        }
        load_chunk(p, &gate, row, t0, count, h, v0, nv, &s);
        process_chunk(K, p->scale, &s);
        for (int64_t i = 0; i < count; i++)
            fkda_store_row_float(p->out.data, p->out.dtype,
                                 fkda_token_offset(&p->out, row, t0 + i, h) + v0 * p->out.stride[3], p->out.stride[3],
                                 nv, s.QS + i * ld);
        if (next_mark == pos + count) {
            fkda_marks_emit_float(&marks, next_mark, h, K, v0, nv, ld, s.S);
            next_mark = fkda_marks_next(&marks, next_mark);
        }
    }
    const int64_t out_slot = fkda_final_slot(p, n);
    if (out_slot >= 0) fkda_state_store_float(&p->state_out, out_slot, h, K, v0, nv, ld, s.S);
}

size_t fkda_cpu_prefill_chunked_workspace(const fkda_problem *p)
{
    const chunk_plan plan = make_plan(p);
    if (plan.items <= 0) return 0;
    const int64_t workers = plan.threads < plan.items ? plan.threads : plan.items;
    return (size_t)workers * plan.worker_bytes;
}

fkda_status fkda_cpu_prefill_chunked(const fkda_problem *p, const fkda_prefill_extras *extras, void *workspace,
                                     size_t bytes)
{
    chunk_job job;
    job.p = p;
    job.extras = extras;
    job.plan = make_plan(p);
    job.workspace = (char *)workspace;
    if (job.plan.items <= 0) return FKDA_OK;
    int workers = fkda_workers_for(job.plan.threads, p->device.num_threads <= 0, job.plan.items, fkda_problem_work(p),
                                   job.plan.worker_bytes, workspace ? bytes : 0);
    if (workers < 1)
        return fkda_fail(FKDA_ERROR_WORKSPACE,
                         "workspace: %zu bytes, the CPU prefill needs at "
                         "least %zu",
                         bytes, job.plan.worker_bytes);
    fkda_parallel_for(workers, job.plan.items, chunked_item, &job);
    return FKDA_OK;
}

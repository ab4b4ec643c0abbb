/*
 * prefill_chunked.c: the fast CPU prefill, the chunked form of DESIGN.md section 1 in float32.
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
 * stays zero from chunk to chunk.
 */
#include <math.h>
#include <string.h>

#include "../api/error.h"
#include "activations.h"
#include "chunk_kernels.h"
#include "cpu_internal.h"
#include "fast_math.h"
#include "load.h"
#include "state_io.h"
#include "thread_pool.h"

#define C FKDA_CHUNK           /* tokens per chunk */
#define FACTORISED_LIMIT 80.0f /* |G| bound for the factorised kd ki^T */
#define MIN_VBLOCK 32          /* never split the value columns finer than this */

static inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

typedef struct chunk_plan {
    int threads;
    int64_t vblock;   /* value columns per work item (the last block may be narrower) */
    int64_t vblocks;  /* blocks per (sequence, head) */
    int64_t items;
    size_t worker_bytes;
} chunk_plan;

typedef struct chunk_job {
    const fkda_problem *p;
    chunk_plan plan;
    char *workspace;
} chunk_job;

/* One worker's scratch, carved from its workspace slice. Kp = K rounded up to 8, ld = nv
 * rounded up to 16. */
typedef struct chunk_scratch {
    int64_t Kp, ld;
    float *S;                     /* [Kp][ld] the state block */
    float *qT, *kT, *GT;          /* [K][C] q, k and the cumulative decay G, stored by key */
    float *kdT, *kiT, *qdT;       /* [K][C] the decayed keys and queries, by key */
    float *krT;                   /* [Kp][C] */
    float *decay_last;            /* [Kp] exp(G_C) */
    float *gsum;                  /* [K] running G while loading */
    float *tq, *tk, *ta, *bias;   /* [K] one token's q, k, a; the head's dt_bias */
    float *b;                     /* [C] */
    float *Vc, *W, *QS, *U;       /* [C][ld] values, kd S, qd S (then O), U */
    float *L, *A;                 /* [C][C] */
} chunk_scratch;

static size_t carve_scratch(fkda_carver *c, int64_t K, int64_t nv, chunk_scratch *s)
{
    const size_t begin = c->used, f = sizeof(float);
    const int64_t Kp = round_up(K, 8), ld = round_up(nv, 16);
    s->Kp = Kp;
    s->ld = ld;
    s->S = fkda_carve(c, (size_t)(Kp * ld) * f);
    s->qT = fkda_carve(c, (size_t)(K * C) * f);
    s->kT = fkda_carve(c, (size_t)(K * C) * f);
    s->GT = fkda_carve(c, (size_t)(K * C) * f);
    s->kdT = fkda_carve(c, (size_t)(K * C) * f);
    s->kiT = fkda_carve(c, (size_t)(K * C) * f);
    s->qdT = fkda_carve(c, (size_t)(K * C) * f);
    s->krT = fkda_carve(c, (size_t)(Kp * C) * f);
    s->decay_last = fkda_carve(c, (size_t)Kp * f);
    s->gsum = fkda_carve(c, (size_t)K * f);
    s->tq = fkda_carve(c, (size_t)K * f);
    s->tk = fkda_carve(c, (size_t)K * f);
    s->ta = fkda_carve(c, (size_t)K * f);
    s->bias = fkda_carve(c, (size_t)K * f);
    s->b = fkda_carve(c, (size_t)C * f);
    s->Vc = fkda_carve(c, (size_t)(C * ld) * f);
    s->W = fkda_carve(c, (size_t)(C * ld) * f);
    s->QS = fkda_carve(c, (size_t)(C * ld) * f);
    s->U = fkda_carve(c, (size_t)(C * ld) * f);
    s->L = fkda_carve(c, (size_t)(C * C) * f);
    s->A = fkda_carve(c, (size_t)(C * C) * f);
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
    plan.worker_bytes = carve_scratch(&c, p->K, plan.vblock, &s);
    return plan;
}

/* Loads the chunk's tokens [t0, t0 + count) (count <= C, the rest padding) into the scratch:
 * q, k and the cumulative decay by key, b, and the value block. */
static void load_chunk(const fkda_problem *p, const fkda_head_gate_f *gate, int64_t row,
                       int64_t t0, int64_t count, int64_t h, int64_t v0, int64_t nv,
                       chunk_scratch *s)
{
    const int64_t K = p->K, ld = s->ld;
    for (int64_t kk = 0; kk < K; kk++) s->gsum[kk] = 0.0f;
    for (int64_t i = 0; i < C; i++) {
        if (i < count) {
            fkda_token_float(p, gate, row, t0 + i, h, s->tq, s->tk, s->ta, &s->b[i]);
            fkda_load_row_float(p->v.data, p->v.dtype,
                                fkda_token_offset(&p->v, row, t0 + i, h) + v0 * p->v.stride[3],
                                p->v.stride[3], nv, s->Vc + i * ld);
            for (int64_t kk = 0; kk < K; kk++) {
                s->gsum[kk] += s->ta[kk];
                s->qT[kk * C + i] = s->tq[kk];
                s->kT[kk * C + i] = s->tk[kk];
                s->GT[kk * C + i] = s->gsum[kk];
            }
        } else {
            s->b[i] = 0.0f;
            for (int64_t j = 0; j < nv; j++) s->Vc[i * ld + j] = 0.0f;
            for (int64_t kk = 0; kk < K; kk++) {
                s->qT[kk * C + i] = 0.0f;
                s->kT[kk * C + i] = 0.0f;
                s->GT[kk * C + i] = s->gsum[kk];
            }
        }
    }
}

/* The decayed keys and queries; returns 1 when the chunk's G allows the factorised form. */
static int decay_chunk(int64_t K, float scale, chunk_scratch *restrict s)
{
    float gmin = 0.0f, gmax = 0.0f;
    for (int64_t e = 0; e < K * C; e++) {
        gmin = s->GT[e] < gmin ? s->GT[e] : gmin;
        gmax = s->GT[e] > gmax ? s->GT[e] : gmax;
    }
    const int factorised = gmin >= -FACTORISED_LIMIT && gmax <= FACTORISED_LIMIT;
    for (int64_t kk = 0; kk < K; kk++) {
        const float *restrict G = s->GT + kk * C;
        const float *restrict k = s->kT + kk * C;
        const float *restrict q = s->qT + kk * C;
        float *restrict kd = s->kdT + kk * C;
        float *restrict ki = s->kiT + kk * C;
        float *restrict qd = s->qdT + kk * C;
        float *restrict kr = s->krT + kk * C;
        const float glast = G[C - 1], decay_last = fkda_expf(glast);
        s->decay_last[kk] = decay_last;
        if (factorised) {
            /* One exp per element: exp(-G) and exp(G_C - G) follow from exp(G) and exp(G_C),
             * all of them inside the float range here. */
            for (int i = 0; i < C; i++) {
                const float e = fkda_expf(G[i]), inv = 1.0f / e;
                kd[i] = k[i] * e;
                qd[i] = scale * q[i] * e;
                ki[i] = k[i] * inv;
                kr[i] = k[i] * (decay_last * inv);
            }
        } else {
            for (int i = 0; i < C; i++) {
                const float e = fkda_expf(G[i]);
                kd[i] = k[i] * e;
                qd[i] = scale * q[i] * e;
                kr[i] = k[i] * fkda_expf(glast - G[i]);
            }
        }
    }
    return factorised;
}

/* L = strictly_lower(diag(b) kd ki^T) and A = lower_incl_diag(qd ki^T), factorised. */
static void intra_factorised(int64_t K, chunk_scratch *restrict s)
{
    fkda_gemm_at(C, C, K, s->kdT, s->kiT, C, s->L, C, FKDA_INIT_ZERO, NULL);
    fkda_gemm_at(C, C, K, s->qdT, s->kiT, C, s->A, C, FKDA_INIT_ZERO, NULL);
    for (int i = 0; i < C; i++) {
        for (int j = 0; j < C; j++) {
            s->L[i * C + j] = j < i ? s->b[i] * s->L[i * C + j] : 0.0f;
            s->A[i * C + j] = j <= i ? s->A[i * C + j] : 0.0f;
        }
    }
}

/* The same two matrices with exp(G_i - G_j) per pair: slower, never out of range. */
static void intra_pairwise(int64_t K, float scale, chunk_scratch *restrict s)
{
    for (int e = 0; e < C * C; e++) s->L[e] = s->A[e] = 0.0f;
    for (int64_t kk = 0; kk < K; kk++) {
        const float *restrict G = s->GT + kk * C;
        const float *restrict k = s->kT + kk * C;
        const float *restrict q = s->qT + kk * C;
        for (int i = 0; i < C; i++) {
            for (int j = 0; j <= i; j++) {
                const float decay = fkda_expf(G[i] - G[j]);
                if (j < i) s->L[i * C + j] += k[i] * k[j] * decay;
                s->A[i * C + j] += scale * q[i] * k[j] * decay;
            }
        }
    }
    for (int i = 0; i < C; i++)
        for (int j = 0; j < i; j++) s->L[i * C + j] *= s->b[i];
}

/* U = (I + L)^-1 diag(b) (V - W): row i of U needs the rows before it. */
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

static void process_chunk(int64_t K, float scale, chunk_scratch *s)
{
    const int64_t ld = s->ld;
    if (decay_chunk(K, scale, s))
        intra_factorised(K, s);
    else
        intra_pairwise(K, scale, s);
    fkda_gemm_at(C, ld, K, s->kdT, s->S, ld, s->W, ld, FKDA_INIT_ZERO, NULL);  /* W = kd S */
    fkda_gemm_at(C, ld, K, s->qdT, s->S, ld, s->QS, ld, FKDA_INIT_ZERO, NULL); /* QS = qd S */
    solve_chunk(s);
    fkda_gemm_a(C, ld, C, s->A, s->U, ld, s->QS, ld, FKDA_INIT_ADD, NULL); /* O = QS + A U */
    fkda_gemm_a(s->Kp, ld, C, s->krT, s->U, ld, s->S, ld, FKDA_INIT_SCALE,
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
    carve_scratch(&c, K, nv, &s);
    const int64_t Kp = s.Kp, ld = s.ld;

    /* The padding: whole state block and value rows zero, padded key rows of kr and exp(G_C)
     * zero; the loads below fill the live part. */
    memset(s.S, 0, (size_t)(Kp * ld) * sizeof(float));
    memset(s.Vc, 0, (size_t)(C * ld) * sizeof(float));
    memset(s.krT + K * C, 0, (size_t)((Kp - K) * C) * sizeof(float));
    memset(s.decay_last + K, 0, (size_t)(Kp - K) * sizeof(float));

    int64_t row, start, length;
    fkda_sequence_bounds(p, n, &row, &start, &length);
    const fkda_head_gate_f gate = fkda_head_gate_float(p, h, s.bias);
    fkda_state_load_float(&p->state_in, n, h, K, v0, nv, ld, s.S);

    for (int64_t t0 = start; t0 < start + length; t0 += C) {
        const int64_t count = start + length - t0 < C ? start + length - t0 : C;
        load_chunk(p, &gate, row, t0, count, h, v0, nv, &s);
        process_chunk(K, p->scale, &s);
        for (int64_t i = 0; i < count; i++)
            fkda_store_row_float(p->out.data, p->out.dtype,
                                 fkda_token_offset(&p->out, row, t0 + i, h) + v0 * p->out.stride[3],
                                 p->out.stride[3], nv, s.QS + i * ld);
    }
    if (p->state_out.data) fkda_state_store_float(&p->state_out, n, h, K, v0, nv, ld, s.S);
}

size_t fkda_cpu_prefill_chunked_workspace(const fkda_problem *p)
{
    const chunk_plan plan = make_plan(p);
    if (plan.items <= 0) return 0;
    const int64_t workers = plan.threads < plan.items ? plan.threads : plan.items;
    return (size_t)workers * plan.worker_bytes;
}

fkda_status fkda_cpu_prefill_chunked(const fkda_problem *p, void *workspace, size_t bytes)
{
    chunk_job job;
    job.p = p;
    job.plan = make_plan(p);
    job.workspace = (char *)workspace;
    if (job.plan.items <= 0) return FKDA_OK;
    int workers = fkda_workers_for(job.plan.threads, job.plan.items, job.plan.worker_bytes,
                                   workspace ? bytes : 0);
    if (workers < 1)
        return fkda_fail(FKDA_ERROR_WORKSPACE, "workspace: %zu bytes, the CPU prefill needs at "
                         "least %zu", bytes, job.plan.worker_bytes);
    fkda_parallel_for(workers, job.plan.items, chunked_item, &job);
    return FKDA_OK;
}

/*
 * decode_common.cuh: what the CUDA decode's kernel families (decode_tiles.cu, decode_packed.cu)
 * share: the algorithm below, and the per-CTA pieces (which head, which slot, its v, the split-K
 * exchange, the wait for the kernel before). The device I/O, the register tile and the token's
 * staging are in decode_io.cuh, decode_tile.cuh and decode_stage.cuh; the variants in
 * decode_variants.h; the selection in decode_select.c; the launch in decode_launch.cu.
 *
 * The decode is fla's fused_recurrent_kda on a state pool.
 *
 * Per sequence n, value head h and token t (the state S is K x V, fp32 in registers):
 *
 *     S  <- diag(exp(a_t)) S
 *     u   = S^T k_t,  w = S^T q_t          (q_t already scaled)
 *     v'  = b_t (v_t - u)
 *     S  <- S + k_t v'^T
 *     o_t = S^T q_t = w + (k_t . q_t) v'    (so one pass over S gives both dot products)
 *
 * The work is memory-bound: every state byte is read once and written once, and the rest is
 * tiny. Columns of S evolve independently, so the V columns of one (sequence, head) are split
 * across warps: each warp holds a slab of columns (all K rows) in registers and reduces over K
 * with shuffles. The warps of one head share a CTA, and the one thing they share is the token:
 * the CTA stages q, k and exp(a) once into shared memory (the gate's exp, sigmoid and log1p once
 * per key, not once per warp) behind one __syncthreads, while the state's loads are in flight.
 * Small batches split a head over several CTAs (down to one warp each), so that they spread
 * over every SM: there the time is latency, not bandwidth, and each warp's path is the time
 * (fewer heads than SMs take "narrow" tiles of 32 values per lane, 16 warps per head).
 * Large one-token batches of bf16 pools keep the state as bf16 pairs (the packed kernel), so
 * that a head needs half the registers and twice the bytes are in flight per SM. On sm_90 every
 * kernel is a programmatic dependent launch: it starts while the kernel before it finishes and
 * waits (griddepcontrol) before its first load. The state's stores are streaming (evict-first
 * in L2), and so are its loads when the pool is small next to L2 (kernels compiled both ways).
 *
 * Inside a warp, `lanes_k` (KL) lanes share each column and split the K rows between them; the
 * other 32 / KL lanes take different columns. State loads and stores are 16 bytes per lane
 * (4 fp32 or 8 bf16 values along the contiguous dimension of the layout; 8 bytes, 4 bf16 values,
 * in the dense bf16 [K, V] tiles, which so hold 4 columns per lane like the fp32 ones):
 *
 *   [K, V] layout (V contiguous): lane = vl + (32/KL) * kl. Register row r is key kl + KL*r;
 *       the lane's columns are one or more 16-byte vectors along V. A warp load covers KL rows,
 *       each 32/KL vectors wide. The reduction over K runs across the kl lane bits (xor 32/KL..16).
 *       Wide fp32 tiles split K between the two warps of a pair (KS = 2): each warp holds 32
 *       columns of 64 keys (KL = 4), so that a warp load reads 128-byte lines, and adds the other
 *       warp's column sums through shared memory (faster than 16 columns of all 128 keys, whose
 *       loads read half lines, from 512 heads).
 *   [V, K] layout (K contiguous): lane = kl + KL * jl. Register row r is key
 *       (kl + KL*(r/VEC))*VEC + r%VEC, i.e. 16-byte vectors along K, interleaved across the KL
 *       lanes so that they read one contiguous run; columns are value rows jl + (32/KL)*c.
 *       The reduction runs across the low kl bits (xor 1..KL/2).
 *
 * Each lane keeps 64 state values (32 in narrow tiles; NR rows x NC columns) in registers for
 * the whole call, so a speculative-decoding call with T tokens reads the state once and writes
 * it once per token only where 2-D state_indices ask for it. A scalar variant (VEC = 1, any
 * strides) serves pools whose pointer, strides or sizes do not allow 16-byte vectors.
 *
 * Never-trusted device inputs: cu_seqlens bounds are clamped into [0, T]; an accepted-token
 * count into [1, T_max]; a slot outside [0, P) skips the sequence (reads) or the write.
 */
#ifndef FKDA_CUDA_DECODE_COMMON_CUH
#define FKDA_CUDA_DECODE_COMMON_CUH

#include "decode_params.h"
#include "decode_stage.cuh"
#include "decode_variants.h"

/* Sequence n and value head h of flat head index `head` (n * HV + h), and the query head of h.
 * 32-bit divisions: the launch checks N * HV < 2^31, and a 64-bit division is a ~70-instruction
 * call that sat on every CTA's path to its first load. */
static __device__ __forceinline__ void split_head(const fkda_decode_params *p, int64_t head, int64_t *n, int64_t *h)
{
    const uint32_t hv = (uint32_t)p->HV, q = (uint32_t)head / hv;
    *n = q;
    *h = (uint32_t)head - q * hv;
}

static __device__ __forceinline__ int64_t query_head(const fkda_decode_params *p, int64_t h)
{
    return (uint32_t)h / (uint32_t)p->group;
}

/* The bits of this lane's columns of v at one token. */
static __device__ __forceinline__ void load_v(const fkda_decode_params *p, const lane_tile *w, int64_t row, int64_t pos,
                                              int64_t h, uint32_t *vbits, const int V_FIRST, const int VEC,
                                              const int NC, const int TOK)
{
    const char *vv = token_vector(p->v, p->v_stride, TOKEN_DTYPE(p, v_dtype, TOK), row, pos, h, TOK);
#pragma unroll
    for (int c = 0; c < NC; c++) {
        const int j = tile_col(w, c, V_FIRST, VEC);
        vbits[c] = j < w->V ? load_elem(vv, TOKEN_DTYPE(p, v_dtype, TOK), j, (int)p->v_stride[3]) : 0u;
    }
}

/* Sequence n's tokens: row *row, positions *bos .. *bos + len - 1; returns len (0: nothing). */
static __device__ __forceinline__ int64_t sequence_tokens(const fkda_decode_params *p, int64_t n, int64_t *row,
                                                          int64_t *bos)
{
    *row = n;
    *bos = 0;
    if (!p->cu_seqlens) return p->T;
    int64_t a = load_index(p->cu_seqlens, p->cu_dtype, n * p->cu_stride);
    int64_t b = load_index(p->cu_seqlens, p->cu_dtype, (n + 1) * p->cu_stride);
    a = min(max(a, (int64_t)0), p->T);
    b = min(max(b, a), p->T);
    *row = 0;
    *bos = a;
    return b - a;
}

/* The slot sequence n continues from; outside [0, pool_size) means: skip it. */
static __device__ __forceinline__ int64_t read_slot(const fkda_decode_params *p, int64_t n)
{
    if (!p->state_indices) return n;
    int64_t col = 0;
    if (p->idx_2d && p->num_accepted) {
        int64_t acc = load_index(p->num_accepted, p->acc_dtype, n * p->acc_stride);
        col = min(max(acc, (int64_t)1), p->idx_tokens) - 1;
    }
    return load_index(p->state_indices, p->idx_dtype, n * p->idx_stride[0] + col * p->idx_stride[1]);
}

/* A skipped sequence: no state touched, its rows of out zeroed. */
static __device__ __forceinline__ void zero_outputs(const fkda_decode_params *p, const lane_tile *w, int64_t row,
                                                    int64_t bos, int64_t len, int64_t h, const int V_FIRST,
                                                    const int VEC, const int NC, const int TOK)
{
    if (w->kl != 0 || w->kh != 0) return;
    for (int64_t t = 0; t < len; t++) {
        const char *ov = token_vector(p->out, p->out_stride, TOKEN_DTYPE(p, out_dtype, TOK), row, bos + t, h, TOK);
#pragma unroll
        for (int c = 0; c < NC; c++) {
            const int j = tile_col(w, c, V_FIRST, VEC);
            if (j < w->V) store_elem(ov, TOKEN_DTYPE(p, out_dtype, TOK), j, (int)p->out_stride[3], 0.0f);
        }
    }
}

/* Waits for the two warps of pair `pair` of the CTA (named barrier 1 + pair; 0 is
 * __syncthreads'). The ids are immediates, so that the kernel reserves 5 barriers, not 16. */
static __device__ __forceinline__ void pair_barrier(int pair)
{
    switch (pair) {
    case 0: asm volatile("bar.sync 1, 64;" ::: "memory"); break;
    case 1: asm volatile("bar.sync 2, 64;" ::: "memory"); break;
    case 2: asm volatile("bar.sync 3, 64;" ::: "memory"); break;
    default: asm volatile("bar.sync 4, 64;" ::: "memory"); break;
    }
}

/* Split-K tiles: adds to this warp's column sums pk and pq (over its half of the keys, already
 * reduced across its lanes) those of the other warp of its pair, which holds the same columns'
 * other half. Lanes kl = 0 publish, both warps wait for each other, every lane reads. One warp
 * computes a + b and the other b + a: the same sums, bit for bit. Lane group lj < 8 (LJ <= 8). */
static __device__ __forceinline__ void add_other_half(stage_buffer *sb, const lane_tile *w, float *pk, float *pq,
                                                      const int NC)
{
    const int warp = threadIdx.x >> 5;
    float *mine = sb->halves + (warp * 8 + w->lj) * 2 * NC;
    const float *theirs = sb->halves + ((warp ^ 1) * 8 + w->lj) * 2 * NC;
    if (w->kl == 0) {
#pragma unroll
        for (int c = 0; c < NC; c += 4) {
            *(float4 *)(mine + c) = make_float4(pk[c], pk[c + 1], pk[c + 2], pk[c + 3]);
            *(float4 *)(mine + NC + c) = make_float4(pq[c], pq[c + 1], pq[c + 2], pq[c + 3]);
        }
    }
    pair_barrier(warp >> 1);
#pragma unroll
    for (int c = 0; c < NC; c += 4) {
        const float4 tk = *(const float4 *)(theirs + c), tq = *(const float4 *)(theirs + NC + c);
        pk[c] += tk.x;
        pk[c + 1] += tk.y;
        pk[c + 2] += tk.z;
        pk[c + 3] += tk.w;
        pq[c] += tq.x;
        pq[c + 1] += tq.y;
        pq[c + 2] += tq.z;
        pq[c + 3] += tq.w;
    }
}

/* Launched with programmatic stream serialization (the default on sm_90), a kernel may start
 * while the kernel before it on the stream finishes; it must wait here before it reads anything
 * that kernel may have written (its inputs, the pool). Launched normally, both instructions
 * return at once. */
static __device__ __forceinline__ void wait_for_prior_grid(void)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
    /* Let the next kernel on the stream launch once every CTA of this one is running (it waits
     * for this grid's completion and memory itself, at its own griddepcontrol.wait). */
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

#endif /* FKDA_CUDA_DECODE_COMMON_CUH */

/*
 * prefill_select.h: which CUDA prefill kernels and launch shapes a call gets (the fp16 family or
 * not, segments of a sequence, value columns per chain CTA, the chain's output on warps of its
 * own), as plain C: no CUDA types, so that the CPU tests (tests/c/test_prefill_select.c) pin every
 * decision without a GPU.
 *
 * prefill_launch.cu describes the call (fkda_prefill_call), reads the tuning variables once
 * (src/core/tuning.h) and launches what fkda_prefill_select returns; the kernels' own limits that
 * the rules depend on are stated here, beside the rules, and the launchers check them again.
 */
#ifndef FKDA_CUDA_PREFILL_SELECT_H
#define FKDA_CUDA_PREFILL_SELECT_H

#include <stdint.h>

#include "../core/tuning.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The kernels' fixed sizes (prefill_common.cuh: PF_CHUNK, PF_DK, PF_DV; prefill_launch.cu checks
 * that they agree). */
#define FKDA_PF_CHUNK 16 /* tokens of a chunk */
#define FKDA_PF_DK 128   /* keys of the K <= 128 kernels (K > 128: the K = 256 family) */
#define FKDA_PF_DV 128   /* value columns of a segment pass's state */

/* Calls with fewer (token, query/key head) rows than this take exact products (choose_exact_qk). */
#define FKDA_PF_EXACT_QK_ROWS 256

/* What the selection needs to know about a call and the device. */
typedef struct fkda_prefill_call {
    int64_t N;           /* sequences */
    int64_t H, HV;       /* query/key heads, value heads */
    int64_t T;           /* tokens per batch row; with cu_seqlens, of all sequences together */
    int64_t K, V;        /* head sizes */
    int cu_seqlens;      /* varlen sequences (their lengths are in device memory: unknown here) */
    int states_inside;   /* checkpoints or fla's intermediate states are asked for */
    int fp16_inputs;     /* q is fp16 or fp32 (the fp16 family's inputs) */
    int out_bf16_rows16; /* out is bf16 with 16-byte rows (the chain's 16-byte output stores) */
    int sm_count;        /* the device's SMs */
} fkda_prefill_call;

/* The choice. */
typedef struct fkda_prefill_choice {
    int fp16_chain;   /* the fp16 family's records and chain (K <= 128) */
    int64_t segments; /* P: each sequence's chain cut into P segments (1: whole; K <= 128, V padded to 128) */
    int vslice;       /* value columns per chain CTA (the segment passes: 16) */
    int split_out;    /* the chain's output on warps of its own (the split chain kernels) */
    int exact_qk;     /* every chunk's q.k and k.k products as fp32 sums (the prep's step 4') */
} fkda_prefill_choice;

/* Whether the split chain serves a slice: its body is compiled for the bf16 chain with bf16
 * output (pf_chain_kernel_split) and for the fp16 chain with each of its outputs
 * (pf_chain16_kernel_split_*), and its launch bounds hold 256 threads, the chain and output warps
 * of 64 columns (prefill_chain.cu). (Over whole sequences only: the caller checks the plan's mode.) */
static inline int fkda_prefill_split_out_serves(int fp16_chain, int out_bf16_rows16, int vslice)
{
    return (fp16_chain || out_bf16_rows16) && vslice <= 64;
}

/* Picks the kernels and shapes for the call under the tuning knobs `t` (the variables read once
 * by the caller). */
void fkda_prefill_select(const fkda_prefill_call *c, const fkda_tuning *t, fkda_prefill_choice *out);

#ifdef __cplusplus
}
#endif

#endif /* FKDA_CUDA_PREFILL_SELECT_H */

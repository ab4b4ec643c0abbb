/*
 * decode_select.h: which decode kernel variant serves a call, and its geometry (lanes per column,
 * warps per head and per CTA, CTAs per head), as plain C: no CUDA types, so that the CPU tests
 * (tests/c/test_decode_select.c) pin every decision without a GPU.
 *
 * decode_launch.cu describes the call (fkda_decode_call), reads the tuning variables
 * (src/core/tuning.h) and launches what fkda_decode_select returns.
 */
#ifndef FKDA_CUDA_DECODE_SELECT_H
#define FKDA_CUDA_DECODE_SELECT_H

#include <stdint.h>

#include "../core/tuning.h"
#include "decode_variants.h"

#ifdef __cplusplus
extern "C" {
#endif

/* What the selection needs to know about a call and the device. */
typedef struct fkda_decode_call {
    int64_t heads;          /* N * HV: (sequence, value head) pairs */
    int K, V;               /* head sizes */
    int state_bf16;         /* the pool is bf16 (else fp32) */
    int v_first;            /* the pool is [V, K] (else [K, V]) */
    int vectorizable;       /* the pool in and out allow 16-byte vectors along the contiguous dimension */
    int dense128;           /* vectorizable, K = V = 128, rows 128 elements apart in and out */
    int64_t T;              /* tokens per sequence; with cu_seqlens, of all sequences together */
    int64_t sequences;      /* N */
    int cu_seqlens;         /* varlen sequences (their lengths are in device memory: unknown here) */
    int idx_2d;             /* 2-D state indices (a slot per token) */
    int tokens_bf16;        /* q, k, v, g, beta and out all bf16 */
    int tokens_fit_31_bits; /* every token offset fits in 31 bits (decode_launch.cu checks) */
    int sm_count;           /* the device's SMs */
    int cc_major;           /* its compute capability's major number */
    int64_t l2_bytes;       /* its L2 cache */
} fkda_decode_call;

/* The choice. */
typedef struct fkda_decode_choice {
    int variant;        /* row of fkda_decode_variant_table */
    int lanes_k;        /* lanes of a warp that share one state column (a power of two) */
    int warps_per_head; /* warps splitting the V columns (and with split K, the keys) of a head */
    int warps_per_cta;  /* warps of one CTA, all on the same head */
    int ctas_per_head;  /* CTAs sharing the warps of one head */
    int pdl;            /* launch as a programmatic dependent of the kernel before it */
} fkda_decode_choice;

typedef enum fkda_decode_select_status {
    FKDA_DECODE_SELECT_OK = 0,
    FKDA_DECODE_SELECT_NO_VARIANT = 1, /* no row of the table serves the call (never, by design) */
    FKDA_DECODE_SELECT_K_TOO_LARGE = 2 /* K needs more than 32 lanes per column */
} fkda_decode_select_status;

/* Whether a decode kernel loads its states evict-first (ld.global.cs): while the heads' states
 * (`state_bytes`, as if every slot were live) take at most twice the L2, where streaming loads
 * measured faster, ordinary beyond (docs/history/decode.md, run 17); FKDA_DECODE_LOAD_EF=0/1
 * forces it. The rule of the plain decode's kernels and of the decode layer's packed tile. */
static inline int fkda_decode_state_loads_ef(int64_t state_bytes, int64_t l2_bytes, const fkda_tuning *t)
{
    return t->decode_load_ef == FKDA_TUNING_UNSET ? state_bytes <= 2 * l2_bytes : t->decode_load_ef != 0;
}

/* Whether variant row `v` can serve the call (its pool dtype, layout, vectors, dense 128, token
 * dtypes and number of tokens). */
int fkda_decode_variant_serves(const fkda_decode_variant *v, const fkda_decode_call *c);

/* The row named `name`, or -1. */
int fkda_decode_variant_find(const char *name);

/* Picks the variant and the geometry for the call under the tuning knobs `t`. */
fkda_decode_select_status fkda_decode_select(const fkda_decode_call *c, const fkda_tuning *t, fkda_decode_choice *out);

#ifdef __cplusplus
}
#endif

#endif /* FKDA_CUDA_DECODE_SELECT_H */

/*
 * decode_layer_select.h: which path serves a CUDA decode layer call (fkda_decode_layer): the
 * single kernel (decode_layer_fused.cu) or the three launches (decode_layer.cu), the single
 * kernel's cluster size, and the three launches' conv kernel, as plain C: no CUDA types, so that
 * a CPU test can pin the rules.
 */
#ifndef FKDA_CUDA_DECODE_LAYER_SELECT_H
#define FKDA_CUDA_DECODE_LAYER_SELECT_H

#include <stdint.h>

#include "../core/problem.h"
#include "../core/tuning.h"

#ifdef __cplusplus
extern "C" {
#endif

/* What the rule needs to know about a call and the device. */
typedef struct fkda_layer_call {
    int cc_major;     /* the device's compute capability (the single kernel is sm_90a code) */
    int sm_count;     /* its SMs */
    int64_t T;        /* tokens per sequence */
    int idx_2d;       /* 2-D state indices (a slot per token) */
    int accepted;     /* num_accepted_tokens given (the conv window slides) */
    int64_t K, V;     /* head sizes */
    int64_t H, HV;    /* qk heads and value heads */
    int dense128;     /* the pool, in and out: 16-byte aligned, rows 128 elements apart */
    int64_t heads;    /* B * HV: (sequence, value head) pairs */
    int64_t W;        /* the conv's width */
    int state_bf16;   /* the pool holds bf16 */
    int64_t l2_bytes; /* the device's L2 cache */
    int64_t room4;    /* clusters of 4 CTAs that get an SM per CTA at once (cluster_room.cu); 0 not known */
    int64_t room8;    /* the same for clusters of 8 */
} fkda_layer_call;

typedef struct fkda_layer_choice {
    int fused;   /* 1: the single kernel; 0: the three launches */
    int cluster; /* the single kernel's CTAs per head: 1, 2, 4 or 8 */
    int wide;    /* the single kernel's tile: 1 wide (8 warps a head, cluster 1), 0 narrow (16 warps) */
    int packed;  /* with wide, a bf16 pool's packed form (4 warps a head) */
    int load_ef; /* with packed, the state loaded evict-first */
} fkda_layer_choice;

/* Whether the single kernel can serve the call at all. */
int fkda_decode_layer_fused_serves(const fkda_layer_call *c);

/* The path, tile and cluster size for the call under the knobs FKDA_DECODE_LAYER_FUSED,
 * FKDA_DECODE_LAYER_WIDE, FKDA_DECODE_LAYER_PACKED, FKDA_DECODE_LAYER_CLUSTER and (the packed
 * form's loads) FKDA_DECODE_LOAD_EF (tuning.h). */
fkda_layer_choice fkda_decode_layer_select(const fkda_layer_call *c, const fkda_tuning *t);

/* Whether the call's layer tensors are those of a bf16 model's step: mixed_qkv, the conv's weight,
 * bias (or none) and state, g, beta, output_gate, norm_weight and out all bf16 (A_log, dt_bias and
 * the pool any dtype). The single kernel's _io16 forms, compiled for those dtypes, serve it. */
int fkda_decode_layer_bf16_io(const fkda_problem *p);

/* The three launches' conv for W <= 4: whether to take the kernel with 8 channels a thread
 * (where its 16-byte loads apply: fkda_decode_layer_conv_kernel checks that) for B x conv_dim
 * channels on sm_count SMs, under FKDA_DECODE_LAYER_CONV_VEC. */
int fkda_decode_layer_conv_vec(int64_t channels, int sm_count, const fkda_tuning *t);

/* Channels a thread of the conv's vector form: 16 bytes of 16-bit values per row. */
#define FKDA_CONV_VEC_CHANNELS 8

/* The three launches' conv kernels (decode_layer.cu). */
typedef enum fkda_conv_kernel {
    FKDA_CONV_ANY_WIDTH = 0, /* conv_kernel: one channel a thread, W up to 16 */
    FKDA_CONV_SHORT = 1,     /* conv_kernel_w4: one channel a thread, W <= 4 */
    FKDA_CONV_SHORT_VEC = 2  /* conv_kernel_w4_vec: FKDA_CONV_VEC_CHANNELS channels a thread, W <= 4 */
} fkda_conv_kernel;

/* What the conv's choice needs to know: strides in elements, dtypes as fkda_dtype values. */
typedef struct fkda_conv_call {
    int64_t B, dim, W;        /* sequences, channels (conv_dim), conv width */
    int x_dtype, state_dtype; /* mixed_qkv and conv_state */
    int64_t x_stride[3];      /* mixed_qkv [sequence, token, channel] */
    int64_t state_stride[3];  /* conv_state [slot, row, channel] */
    int bases_aligned16;      /* mixed_qkv's and conv_state's data 16-byte aligned */
} fkda_conv_call;

/* The conv kernel for the call on sm_count SMs, under FKDA_DECODE_LAYER_CONV_VEC. */
fkda_conv_kernel fkda_decode_layer_conv_kernel(const fkda_conv_call *c, int sm_count, const fkda_tuning *t);

#ifdef __cplusplus
}
#endif

#endif /* FKDA_CUDA_DECODE_LAYER_SELECT_H */

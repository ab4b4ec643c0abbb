/*
 * decode_recurrent.h: the CUDA decode kernel's parameters (one flat struct passed by value),
 * filled from a validated fkda_problem by decode_launch.cu and run by decode_recurrent.cu.
 *
 * Strides are in elements, in the canonical dimension order of problem.h:
 *   token tensors  [row, position, head, index]      beta [row, position, head]
 *   states         [slot, value head, key, value]     whatever the memory layout
 */
#ifndef FKDA_CUDA_DECODE_RECURRENT_H
#define FKDA_CUDA_DECODE_RECURRENT_H

#include <stdint.h>

#include <cuda_runtime.h>

#include "flashkda.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct fkda_decode_params {
    /* Token inputs and the output. */
    const void *q, *k, *v, *g, *beta;
    void *out;
    int64_t q_stride[4], k_stride[4], v_stride[4], g_stride[4], out_stride[4], beta_stride[3];
    int32_t q_dtype, k_dtype, v_dtype, g_dtype, beta_dtype, out_dtype;

    /* Gate parameters (NULL when absent). */
    const void *A_log, *dt_bias;
    int64_t A_log_stride, dt_bias_stride[2];
    int32_t A_log_dtype, dt_bias_dtype;

    /* Sequences and slots; all in device memory, never trusted: every value is clamped. */
    const void *cu_seqlens; /* NULL: sequence n is row n with T tokens */
    int64_t cu_stride;
    int32_t cu_dtype;
    const void *state_indices; /* NULL: sequence n uses slot n */
    int64_t idx_stride[2];
    int32_t idx_dtype;
    int32_t idx_2d;     /* [N, T_max]: a slot per token */
    int64_t idx_tokens; /* T_max */
    const void *num_accepted; /* NULL: 1 */
    int64_t acc_stride;
    int32_t acc_dtype;

    /* The pool: read from state_in, written to state_out (the same memory for decode). */
    const void *state_in;
    void *state_out;
    int64_t state_in_stride[4], state_out_stride[4];
    int64_t pool_size;
    int32_t state_bf16; /* 0: float32 */

    /* Sizes and options. */
    int64_t T, N, HV, group;
    int32_t K, V;
    float scale, lower_bound;
    int32_t gate, use_qk_l2norm, use_beta_sigmoid, allow_neg_eigval, state_v_first;

    /* Geometry, chosen by fkda_decode_recurrent_launch. */
    int32_t lanes_k;        /* lanes of a warp that share one state column (a power of two) */
    int32_t warps_per_head; /* warps splitting the V columns of one (sequence, value head) */
    int32_t warps_per_cta;  /* warps of one CTA, all on the same head */
    int32_t ctas_per_head;  /* CTAs sharing the warps of one (sequence, value head) */
    int32_t pipeline_inputs; /* streaming: load the next head's token inputs during this head's work */
} fkda_decode_params;

/* Picks the kernel variant and the geometry for a device of `sm_count` SMs and compute
 * capability `cc_major`.x, fills the last fields of *p and launches on the stream
 * (asynchronously, nothing allocated). Returns FKDA_ERROR_DEVICE on a launch error. */
fkda_status fkda_decode_recurrent_launch(fkda_decode_params *p, int sm_count, int cc_major, int64_t l2_bytes,
                                         cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif /* FKDA_CUDA_DECODE_RECURRENT_H */

/*
 * decode_params.h: the CUDA decode kernels' parameters (one flat struct passed by value), filled
 * from a validated fkda_problem by decode_launch.cu and read by the kernels (decode_tiles.cu,
 * decode_packed.cu), and the kernels' addresses by variant.
 *
 * Strides are in elements, in the canonical dimension order of problem.h:
 *   token tensors  [row, position, head, index]      beta [row, position, head]
 *   states         [slot, value head, key, value]     whatever the memory layout
 */
#ifndef FKDA_CUDA_DECODE_PARAMS_H
#define FKDA_CUDA_DECODE_PARAMS_H

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
    int32_t idx_2d;           /* [N, T_max]: a slot per token */
    int64_t idx_tokens;       /* T_max */
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

    /* Geometry, chosen by fkda_decode_select (decode_select.c). */
    int32_t lanes_k;        /* lanes of a warp that share one state column (a power of two) */
    int32_t warps_per_head; /* warps splitting the V columns of one (sequence, value head) */
    int32_t warps_per_cta;  /* warps of one CTA, all on the same head */
    int32_t ctas_per_head;  /* CTAs sharing the warps of one (sequence, value head) */
} fkda_decode_params;

/* Fills every field of *k from a validated decode problem but the geometry (decode_launch.cu). */
struct fkda_problem;
void fkda_cuda_decode_params_of(const struct fkda_problem *p, fkda_decode_params *k);

/* The kernel of row `row` of DECODE_TILE_VARIANTS (decode_tiles.cu) or DECODE_PACKED_VARIANTS
 * (decode_packed.cu), as cudaLaunchKernelExC takes it; NULL outside the table. */
const void *fkda_decode_tile_kernel(int row);
const void *fkda_decode_packed_kernel(int row);

#ifdef __cplusplus
}
#endif

#endif /* FKDA_CUDA_DECODE_PARAMS_H */

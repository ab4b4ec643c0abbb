/*
 * decode_layer_fused.h: the single-kernel CUDA decode layer (decode_layer_fused.cu), which
 * decode_layer.cu launches where decode_layer_select.c says it serves.
 */
#ifndef FKDA_CUDA_DECODE_LAYER_FUSED_H
#define FKDA_CUDA_DECODE_LAYER_FUSED_H

#include "../core/problem.h"
#include "../core/error.h"

/* The widest conv the short forms of the layer's kernels take (the single kernel's `_w4`, the
 * three launches' conv_kernel_w4 and conv_kernel_w4_vec): Kimi's and Qwen's W = 4. Their windows
 * and taps sit in arrays of this size, 7 conv loads per channel instead of 31 at the API's
 * largest width, 16. */
#define LAYER_SHORT_CONV_WIDTH 4

#ifdef __cplusplus
extern "C" {
#endif

/* Whether the pool (in and out) is what the single kernel's dense 128 tiles read and write:
 * 16-byte aligned, the contiguous dimension's stride 1 and the other's 128, slot and head
 * strides multiples of 8 elements. */
int fkda_cuda_decode_layer_fused_pool_fits(const fkda_problem *p);

/* Launches the single kernel on the call's stream (the current device must be the call's): the
 * narrow tile with `cluster` CTAs per (sequence, value head), 1, 2, 4 or 8, or with `wide` the
 * wide tile (cluster 1, W <= LAYER_SHORT_CONV_WIDTH), with `packed` as well its packed form (bf16
 * pools), whose state loads are evict-first with `load_ef`; with `pdl`, as a programmatic
 * dependent launch. The caller checked that it serves (fkda_decode_layer_fused_serves). */
fkda_status fkda_cuda_decode_layer_fused(const fkda_problem *p, int cluster, int wide, int packed, int load_ef,
                                         int pdl);

#ifdef __cplusplus
}
#endif

#endif /* FKDA_CUDA_DECODE_LAYER_FUSED_H */

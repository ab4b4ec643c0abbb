/*
 * layer_problem.h: the recurrence pass of the fused decode layer (fkda_decode_layer) as a plain
 * decode problem, the one both backends run between their conv and norm passes.
 */
#ifndef FKDA_CORE_LAYER_PROBLEM_H
#define FKDA_CORE_LAYER_PROBLEM_H

#include "problem.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The layer's problem with q, k, v read from the conv outputs y (float32 [B, T, dim], channels
 * q | k | v) and out written to o (float32 [B, T, HV, V]); y and o may be NULL when only the
 * problem's shape is needed (support checks). */
fkda_problem fkda_layer_decode_problem(const fkda_problem *p, float *y, float *o);

#ifdef __cplusplus
}
#endif

#endif

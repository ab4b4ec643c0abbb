/*
 * problem.h: a validated call, as the API layer hands it to a backend.
 *
 * The public arguments (fkda_prefill_args, fkda_decode_args) allow several spellings of the same
 * thing: dt_bias flat or 2-D, states in [K, V] or [V, K], scale 0 for "default". Validation
 * resolves all of them once, so that a backend reads one canonical description and never has to
 * check anything again. Every tensor becomes an fkda_operand whose strides follow a fixed
 * dimension order, listed beside each field below.
 */
#ifndef FKDA_CORE_PROBLEM_H
#define FKDA_CORE_PROBLEM_H

#include <stdint.h>

#include "flashkda.h"

/* A validated tensor: data (NULL when absent), dtype, and strides in elements in the canonical
 * dimension order of its field. Unused trailing strides are 0. */
typedef struct fkda_operand {
    void *data;
    fkda_dtype dtype;
    int64_t stride[4];
} fkda_operand;

typedef enum fkda_op_kind { FKDA_OP_PREFILL = 0, FKDA_OP_DECODE = 1, FKDA_OP_DECODE_LAYER = 2 } fkda_op_kind;

typedef struct fkda_problem {
    fkda_op_kind op;
    fkda_device device;

    /* Sizes. Tokens live at (batch row b, position t), b < B, t < T. */
    int64_t B, T, H, HV, K, V;
    int64_t N;     /* sequences: B, or the number of cu_seqlens entries minus one */
    int64_t group; /* HV / H: value heads per qk head; value head h reads qk head h / group */

    /* Token inputs and the output. */
    fkda_operand q, k; /* [B, T, H, K] */
    fkda_operand v;    /* [B, T, HV, V] */
    fkda_operand g;    /* [B, T, HV, K] */
    fkda_operand beta; /* [B, T, HV] */
    fkda_operand out;  /* [B, T, HV, V] */

    /* Gate parameters (data NULL when absent). */
    fkda_operand A_log;   /* [HV] */
    fkda_operand dt_bias; /* [HV, K] (a flat [HV * K] input is described as [HV, K]) */

    /* Sequences. When cu_seqlens.data is NULL, sequence n is row n with T tokens; otherwise
     * B == 1 and sequence n is tokens [cu[n], cu[n+1]) of row 0. Its dtype is I32 or I64. On
     * the CPU the contents have been checked (0 = c_0 <= ... <= c_N = T); on CUDA they are in
     * device memory and were not read (kernels clamp every bound into [0, T]). */
    fkda_operand cu_seqlens; /* [N + 1] */

    /* States, canonical order [slot, value head, key index, value index] whatever the memory
     * layout: stride[2] steps the key index and stride[3] the value index. state_v_first
     * records which of the two is contiguous in memory (stride[2] == 1 when set). */
    fkda_operand state_in;  /* prefill: initial_state [N, ...]; decode: the pool [P, ...] */
    fkda_operand state_out; /* prefill: final_state [N, ...];   decode: the same pool */
    int64_t pool_size;      /* decode and prefill on a pool: P; prefill: N */

    /* Decode only. */
    fkda_operand state_indices;       /* [N] or [N, T_max]; data NULL when absent */
    int32_t indices_per_token;        /* 1 when state_indices is 2-D */
    int64_t indices_tokens;           /* T_max, the second dimension of 2-D state_indices */
    fkda_operand num_accepted_tokens; /* [N]; data NULL when absent */

    /* Prefill only: states for serving engines (data NULL when absent; see fkda_prefill_args).
     * With state_pool, state_in and state_out are both the pool [P, ...] and pool_size is P;
     * the slots come from fkda_initial_slot and fkda_final_slot below. */
    int32_t uses_pool;                  /* state_pool given */
    fkda_operand has_initial_state;     /* [N], BOOL, I32 or I64 */
    fkda_operand initial_state_indices; /* [N] */
    fkda_operand final_state_indices;   /* [N] */
    fkda_operand checkpoint_offsets;    /* [N, C] */
    int64_t checkpoints;                /* C (0 without checkpoint_offsets) */
    fkda_operand checkpoint_states;     /* [N * C, HV, K, V] canonical, like the states */
    fkda_operand checkpoint_indices;    /* [N, C], slots of the pool (state_out) */
    fkda_operand intermediate_states;   /* [rows, HV, K, V] canonical */
    int64_t intermediate_chunk;         /* tokens per chunk of intermediate_states (>= 1) */
    int64_t intermediate_rows;          /* rows of intermediate_states (its first dimension) */

    /* Decode layer only (fkda_decode_layer; data NULL otherwise). q, k and v above are views of
     * the raw mixed_qkv, whose channels the backend convolves before the recurrence; out above
     * is the layer's output, which receives the gated norm of the recurrence's output. */
    fkda_operand mixed_qkv;   /* [B, T, dim] */
    fkda_operand conv_weight; /* [dim, W] */
    fkda_operand conv_bias;   /* [dim] */
    fkda_operand conv_state;  /* [P_conv, L, dim] */
    fkda_operand output_gate; /* [B, T, HV, V] */
    fkda_operand norm_weight; /* [V] */
    int64_t conv_dim, conv_width, conv_pool_size;
    int64_t conv_rows;    /* L, the rows of each conv slot */
    int32_t conv_sliding; /* num_accepted_tokens given: the window slides (W - 2 + T rows) */
    double norm_eps;

    /* Options, resolved. */
    float scale; /* the actual scale (the default already applied) */
    fkda_gate gate;
    float lower_bound;
    int32_t use_qk_l2norm;
    int32_t use_beta_sigmoid;
    int32_t allow_neg_eigval;
    int32_t state_v_first;
} fkda_problem;

/* First token (row, position) and length of sequence n. On the CPU only (reads cu_seqlens). */
static inline void fkda_sequence_bounds(const fkda_problem *p, int64_t n, int64_t *row, int64_t *start, int64_t *length)
{
    if (p->cu_seqlens.data == NULL) {
        *row = n;
        *start = 0;
        *length = p->T;
        return;
    }
    int64_t s = p->cu_seqlens.stride[0];
    int64_t a, b;
    if (p->cu_seqlens.dtype == FKDA_DTYPE_I64) {
        const int64_t *c = (const int64_t *)p->cu_seqlens.data;
        a = c[n * s];
        b = c[(n + 1) * s];
    } else {
        const int32_t *c = (const int32_t *)p->cu_seqlens.data;
        a = c[n * s];
        b = c[(n + 1) * s];
    }
    *row = 0;
    *start = a;
    *length = b - a;
}

/* Reads the element at `offset` (in elements) of an integer operand (I32 or I64). */
static inline int64_t fkda_read_index(const fkda_operand *x, int64_t offset)
{
    if (x->dtype == FKDA_DTYPE_I64) return ((const int64_t *)x->data)[offset];
    return ((const int32_t *)x->data)[offset];
}

/* Reads element `offset` of a flag operand (BOOL, I32 or I64): 0 or 1. */
static inline int fkda_read_flag(const fkda_operand *x, int64_t offset)
{
    if (x->dtype == FKDA_DTYPE_BOOL) return ((const uint8_t *)x->data)[offset] != 0;
    return fkda_read_index(x, offset) != 0;
}

/* Decode: the slot sequence n reads its state from, a negative one skipping the sequence: n without
 * indices, idx[n] for 1-D ones, and for 2-D ones (a slot per token) the slot of its last accepted
 * token, idx[n, a_n - 1] (a_n = 1 without num_accepted_tokens). On the CPU only (reads the index
 * tensors). */
static inline int64_t fkda_decode_read_slot(const fkda_problem *p, int64_t n)
{
    const fkda_operand *idx = &p->state_indices;
    if (idx->data == NULL) return n;
    if (!p->indices_per_token) return fkda_read_index(idx, n * idx->stride[0]);
    int64_t accepted = 1;
    if (p->num_accepted_tokens.data)
        accepted = fkda_read_index(&p->num_accepted_tokens, n * p->num_accepted_tokens.stride[0]);
    return fkda_read_index(idx, n * idx->stride[0] + (accepted - 1) * idx->stride[1]);
}

/* Prefill: the slot of state_in sequence n starts from, or -1 for the zero state. On the CPU
 * only (reads the index tensors). */
static inline int64_t fkda_initial_slot(const fkda_problem *p, int64_t n)
{
    if (p->state_in.data == NULL) return -1;
    if (p->has_initial_state.data && !fkda_read_flag(&p->has_initial_state, n * p->has_initial_state.stride[0]))
        return -1;
    if (p->initial_state_indices.data == NULL) return n;
    const int64_t slot = fkda_read_index(&p->initial_state_indices, n * p->initial_state_indices.stride[0]);
    return slot < 0 ? -1 : slot;
}

/* Prefill: the slot of state_out that receives sequence n's final state, or -1 for none. */
static inline int64_t fkda_final_slot(const fkda_problem *p, int64_t n)
{
    if (p->state_out.data == NULL) return -1;
    if (p->final_state_indices.data == NULL) return n;
    const int64_t slot = fkda_read_index(&p->final_state_indices, n * p->final_state_indices.stride[0]);
    return slot < 0 ? -1 : slot;
}

#endif /* FKDA_CORE_PROBLEM_H */

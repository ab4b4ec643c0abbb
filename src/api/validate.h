/*
 * validate.h: checks of single tensors, shared by the prefill and decode validators.
 *
 * Each check returns FKDA_OK or fails with a message that starts with the argument's name
 * ("q: ...", "final_state: ..."), so a caller learns which argument is wrong and what was
 * expected. The operation validators (prefill.c, decode.c, token_inputs.c) call these in order
 * and stop at the first failure.
 */
#ifndef FKDA_API_VALIDATE_H
#define FKDA_API_VALIDATE_H

#include "../core/problem.h"

/* Bit masks of accepted dtypes. */
#define FKDA_MASK(dt) (1u << (dt))
#define FKDA_FLOAT_DTYPES (FKDA_MASK(FKDA_DTYPE_F32) | FKDA_MASK(FKDA_DTYPE_F16) | FKDA_MASK(FKDA_DTYPE_BF16))
#define FKDA_STATE_DTYPES (FKDA_MASK(FKDA_DTYPE_F32) | FKDA_MASK(FKDA_DTYPE_BF16))
#define FKDA_INDEX_DTYPES (FKDA_MASK(FKDA_DTYPE_I32) | FKDA_MASK(FKDA_DTYPE_I64))

/* Largest element count, size, stride and element offset of any tensor (2^48). fkda_check_layout
 * checks each product before forming it, so every count and offset of a validated tensor, and
 * sums of a few of them, stay far from int64 overflow. */
#define FKDA_MAX_ELEMENTS ((int64_t)1 << 48)

const char *fkda_dtype_name(fkda_dtype dtype);

/* 1 when an optional tensor is given (anything but an all-zero fkda_tensor). */
int fkda_tensor_present(const fkda_tensor *t);

/* ndim, sizes, strides (non-negative, last dimension contiguous), dtype known, data aligned,
 * data non-NULL unless the tensor is empty. */
fkda_status fkda_check_layout(const fkda_tensor *t, const char *name);

/* Writes "[a, b, c]" into buf (truncated to size) and returns buf; a negative size, which
 * stands for "any size" in an expected shape, is written "*". */
const char *fkda_format_shape(char *buf, size_t size, int ndim, const int64_t *shape);

/* Exactly `ndim` dimensions with the given sizes; `dims` names them for the message, e.g.
 * "[B, T, H, K]". Expected sizes of -1 accept anything (the message shows them as "*"). */
fkda_status fkda_check_shape(const fkda_tensor *t, const char *name, const char *dims, int ndim,
                             const int64_t *expected);

/* dtype is one of `mask`; `what` describes the accepted set for the message. */
fkda_status fkda_check_dtype(const fkda_tensor *t, const char *name, unsigned mask, const char *what);

/* Writable (not FKDA_TENSOR_READ_ONLY) and no two elements at the same address. */
fkda_status fkda_check_writable(const fkda_tensor *t, const char *name);

/* An output must not share memory with another tensor (checked on address ranges). */
fkda_status fkda_check_disjoint(const fkda_tensor *out, const char *out_name, const fkda_tensor *in,
                                const char *in_name);

/* 1 when a and b describe the same view (data, dtype, shape and strides). */
int fkda_same_view(const fkda_tensor *a, const fkda_tensor *b);

/* Copies data, dtype and strides into an operand; `order` permutes dimensions into the
 * canonical order (NULL for the identity). */
void fkda_to_operand(const fkda_tensor *t, const int *order, fkda_operand *op);

#endif /* FKDA_API_VALIDATE_H */

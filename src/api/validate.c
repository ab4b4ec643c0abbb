/* validate.c: checks of single tensors; see validate.h. */
#include "validate.h"

#include <stdio.h>
#include <string.h>

#include "../core/error.h"

const char *fkda_dtype_name(fkda_dtype dtype)
{
    switch (dtype) {
    case FKDA_DTYPE_F32: return "float32";
    case FKDA_DTYPE_F16: return "float16";
    case FKDA_DTYPE_BF16: return "bfloat16";
    case FKDA_DTYPE_I32: return "int32";
    case FKDA_DTYPE_I64: return "int64";
    case FKDA_DTYPE_BOOL: return "bool";
    }
    return "unknown";
}

int fkda_tensor_present(const fkda_tensor *t) { return t->data != NULL || t->ndim != 0; }

/* Elements of a tensor whose layout passed fkda_check_layout (so the product cannot overflow);
 * defensive for any other: a tensor with an impossible ndim or size counts as empty. */
static int64_t element_count(const fkda_tensor *t)
{
    if (t->ndim < 1 || t->ndim > FKDA_MAX_DIMS) return 0;
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) {
        if (t->shape[i] <= 0) return 0;
        if (n > FKDA_MAX_ELEMENTS / t->shape[i]) return 0;
        n *= t->shape[i];
    }
    return n;
}

const char *fkda_format_shape(char *buf, size_t size, int ndim, const int64_t *shape)
{
    size_t used = 0;
    used += (size_t)snprintf(buf + used, size - used, "[");
    for (int i = 0; i < ndim && used < size; i++) {
        if (shape[i] < 0)
            used += (size_t)snprintf(buf + used, size - used, i ? ", *" : "*");
        else
            used += (size_t)snprintf(buf + used, size - used, i ? ", %lld" : "%lld", (long long)shape[i]);
    }
    if (used < size) snprintf(buf + used, size - used, "]");
    return buf;
}

fkda_status fkda_check_layout(const fkda_tensor *t, const char *name)
{
    if (t->ndim < 1 || t->ndim > FKDA_MAX_DIMS)
        return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT, "%s: ndim is %d; expected 1 to %d dimensions", name, (int)t->ndim,
                         FKDA_MAX_DIMS);
    size_t esize = fkda_dtype_size(t->dtype);
    if (esize == 0) return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT, "%s: unknown dtype value %d", name, (int)t->dtype);
    int empty = 0;
    for (int i = 0; i < t->ndim; i++) {
        if (t->shape[i] < 0 || t->shape[i] > FKDA_MAX_ELEMENTS)
            return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT, "%s: size %lld of dimension %d is out of range", name,
                             (long long)t->shape[i], i);
        empty |= t->shape[i] == 0;
    }
    /* A tensor without elements is never addressed: frameworks give such tensors odd strides
     * (0 on the last dimension), and none of them can matter. */
    if (empty) return FKDA_OK;
    /* Every count and offset stays below FKDA_MAX_ELEMENTS, checked before it is formed, so
     * that no later product (here or in a backend) can overflow. */
    int64_t count = 1, last_offset = 0;
    for (int i = 0; i < t->ndim; i++) {
        if (count > FKDA_MAX_ELEMENTS / t->shape[i])
            return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT, "%s: has more than 2^48 elements", name);
        count *= t->shape[i];
        if (t->stride[i] < 0 || t->stride[i] > FKDA_MAX_ELEMENTS)
            return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT,
                             "%s: stride %lld of dimension %d is not supported (strides must be "
                             "non-negative element counts)",
                             name, (long long)t->stride[i], i);
        if (t->shape[i] > 1 && t->stride[i] > FKDA_MAX_ELEMENTS / (t->shape[i] - 1))
            return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT, "%s: its strides reach beyond 2^48 elements", name);
        last_offset += (t->shape[i] - 1) * t->stride[i];
        if (last_offset > FKDA_MAX_ELEMENTS)
            return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT, "%s: its strides reach beyond 2^48 elements", name);
    }
    int last = t->ndim - 1;
    if (t->shape[last] > 1 && t->stride[last] != 1)
        return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT,
                         "%s: the last dimension must be contiguous (stride 1), got stride %lld", name,
                         (long long)t->stride[last]);
    if (t->data == NULL) return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT, "%s: data is NULL", name);
    if ((uintptr_t)t->data % esize != 0)
        return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT, "%s: data is not aligned to its %zu-byte elements", name, esize);
    return FKDA_OK;
}

fkda_status fkda_check_shape(const fkda_tensor *t, const char *name, const char *dims, int ndim,
                             const int64_t *expected)
{
    char got[128], want[128];
    if (t->ndim != ndim)
        return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT, "%s: expected %d dimensions %s, got shape %s", name, ndim, dims,
                         fkda_format_shape(got, sizeof got, t->ndim, t->shape));
    for (int i = 0; i < ndim; i++) {
        if (expected[i] >= 0 && t->shape[i] != expected[i])
            return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT, "%s: expected shape %s = %s, got %s", name, dims,
                             fkda_format_shape(want, sizeof want, ndim, expected),
                             fkda_format_shape(got, sizeof got, t->ndim, t->shape));
    }
    return FKDA_OK;
}

fkda_status fkda_check_dtype(const fkda_tensor *t, const char *name, unsigned mask, const char *what)
{
    if ((unsigned)t->dtype >= 32 || !(mask & FKDA_MASK(t->dtype)))
        return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT, "%s: dtype %s is not accepted; expected %s", name,
                         fkda_dtype_name(t->dtype), what);
    return FKDA_OK;
}

fkda_status fkda_check_writable(const fkda_tensor *t, const char *name)
{
    /* The overlap test below multiplies sizes by strides: only within the layout's bounds. */
    fkda_status s = fkda_check_layout(t, name);
    if (s != FKDA_OK) return s;
    if (t->flags & FKDA_TENSOR_READ_ONLY)
        return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT, "%s: is read-only, but it is an output", name);
    if (element_count(t) <= 1) return FKDA_OK;
    /* Sort the dimensions of size > 1 by stride; then each stride must step over the whole
     * extent of the dimensions below it, or two indices would land on one address. */
    int order[FKDA_MAX_DIMS], n = 0;
    for (int i = 0; i < t->ndim; i++)
        if (t->shape[i] > 1) order[n++] = i;
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && t->stride[order[j]] < t->stride[order[j - 1]]; j--) {
            int tmp = order[j];
            order[j] = order[j - 1];
            order[j - 1] = tmp;
        }
    int64_t extent = 1;
    for (int i = 0; i < n; i++) {
        int d = order[i];
        if (t->stride[d] < extent)
            return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT,
                             "%s: its strides make elements overlap (stride %lld of dimension %d); an "
                             "output needs one address per element",
                             name, (long long)t->stride[d], d);
        extent = t->stride[d] * t->shape[d];
    }
    return FKDA_OK;
}

/* The element offset of a tensor's last element, or -1 when it has no elements or its layout is
 * outside what fkda_check_layout accepts: such a tensor is refused by its own check, and a test
 * that meets it first (an overlap test runs before every input's check) must not overflow on it. */
static int64_t last_element_offset(const fkda_tensor *t)
{
    if (t->ndim < 1 || t->ndim > FKDA_MAX_DIMS) return -1;
    int64_t last = 0;
    for (int i = 0; i < t->ndim; i++) {
        if (t->shape[i] <= 0 || t->shape[i] > FKDA_MAX_ELEMENTS) return -1;
        if (t->stride[i] < 0 || t->stride[i] > FKDA_MAX_ELEMENTS) return -1;
        if (t->shape[i] > 1 && t->stride[i] > FKDA_MAX_ELEMENTS / (t->shape[i] - 1)) return -1;
        last += (t->shape[i] - 1) * t->stride[i];
        if (last > FKDA_MAX_ELEMENTS) return -1;
    }
    return last;
}

/* [first byte, one past the last byte] of a tensor; empty when it has no elements. */
static void byte_range(const fkda_tensor *t, uintptr_t *lo, uintptr_t *hi)
{
    const int64_t last = last_element_offset(t);
    if (t->data == NULL || last < 0) {
        *lo = *hi = 0;
        return;
    }
    *lo = (uintptr_t)t->data;
    *hi = *lo + (uintptr_t)(last + 1) * fkda_dtype_size(t->dtype);
}

fkda_status fkda_check_disjoint(const fkda_tensor *out, const char *out_name, const fkda_tensor *in,
                                const char *in_name)
{
    uintptr_t a0, a1, b0, b1;
    byte_range(out, &a0, &a1);
    byte_range(in, &b0, &b1);
    if (a0 < a1 && b0 < b1 && a0 < b1 && b0 < a1)
        return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT, "%s: shares memory with %s; an output must not overlap an input",
                         out_name, in_name);
    return FKDA_OK;
}

int fkda_same_view(const fkda_tensor *a, const fkda_tensor *b)
{
    if (a->data != b->data || a->dtype != b->dtype || a->ndim != b->ndim) return 0;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i] || a->stride[i] != b->stride[i]) return 0;
    return 1;
}

void fkda_to_operand(const fkda_tensor *t, const int *order, fkda_operand *op)
{
    memset(op, 0, sizeof *op);
    if (!fkda_tensor_present(t)) return;
    op->data = t->data;
    op->dtype = t->dtype;
    for (int i = 0; i < t->ndim && i < 4; i++) op->stride[i] = t->stride[order ? order[i] : i];
}

/* tensor.c: the small public helpers: dtype sizes, contiguous tensors, defaults, version. */
#include <string.h>

#include "flashkda.h"

#include "../cuda/cuda_backend.h"

size_t fkda_dtype_size(fkda_dtype dtype)
{
    switch (dtype) {
    case FKDA_DTYPE_F32: return 4;
    case FKDA_DTYPE_F16: return 2;
    case FKDA_DTYPE_BF16: return 2;
    case FKDA_DTYPE_I32: return 4;
    case FKDA_DTYPE_I64: return 8;
    case FKDA_DTYPE_BOOL: return 1;
    }
    return 0;
}

fkda_tensor fkda_make_tensor(void *data, fkda_dtype dtype, int32_t ndim, const int64_t *shape)
{
    fkda_tensor t;
    memset(&t, 0, sizeof t);
    t.data = data;
    t.dtype = dtype;
    t.ndim = ndim;
    if (ndim < 1 || ndim > FKDA_MAX_DIMS) return t; /* rejected later by validation */
    int64_t stride = 1;
    for (int i = ndim - 1; i >= 0; i--) {
        t.shape[i] = shape[i];
        t.stride[i] = stride;
        stride *= shape[i] > 0 ? shape[i] : 1;
    }
    return t;
}

fkda_options fkda_default_options(void)
{
    fkda_options o;
    memset(&o, 0, sizeof o);
    o.scale = 0.0; /* K^-0.5 */
    o.gate = FKDA_GATE_NONE;
    return o;
}

const char *fkda_version(void) { return "0.2.0"; }

int fkda_has_cuda(void)
{
#ifdef FKDA_WITH_CUDA
    return 1;
#else
    return 0;
#endif
}

/*
 * load.h: element conversion between the tensor dtypes (f32, f16, bf16) and float / double.
 *
 * Every input is widened on load and every output narrowed on store, rounding to nearest even,
 * so the arithmetic of each path runs in one precision (float for the fast paths, double for the
 * reference) whatever the caller's dtypes. The row functions take a stride so that a last
 * dimension of size 1 (any stride allowed) needs no special case; stride 1 takes the fast loop.
 */
#ifndef FKDA_CPU_LOAD_H
#define FKDA_CPU_LOAD_H

#include <stdint.h>
#include <string.h>

#include "flashkda.h"

static inline float fkda_bf16_to_float(uint16_t x)
{
    uint32_t u = (uint32_t)x << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint16_t fkda_float_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) /* NaN: keep it a (quiet) NaN, never round to Inf */
        return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u); /* round to nearest, ties to even */
    return (uint16_t)(u >> 16);
}

static inline float fkda_f16_to_float(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exponent = (h >> 10) & 0x1fu;
    uint32_t mantissa = h & 0x3ffu;
    uint32_t bits;
    if (exponent == 0x1f) { /* Inf / NaN */
        bits = sign | 0x7f800000u | (mantissa << 13);
    } else if (exponent != 0) { /* normal */
        bits = sign | ((exponent + 112u) << 23) | (mantissa << 13);
    } else if (mantissa == 0) { /* zero */
        bits = sign;
    } else { /* subnormal: exact in float, scale by 2^-24 */
        float f = (float)mantissa * 0x1.0p-24f;
        memcpy(&bits, &f, sizeof bits);
        bits |= sign;
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static inline uint16_t fkda_float_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t absx = x & 0x7fffffffu;
    if (absx > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);  /* NaN */
    if (absx >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* rounds to >= 65520: Inf */
    if (absx < 0x38800000u) {
        /* Below the smallest normal half (2^-14): a subnormal half, a multiple of 2^-24. Adding
         * 0.5 moves the value so that the float rounding (nearest even) rounds at 2^-24. */
        float a;
        memcpy(&a, &absx, sizeof a);
        a += 0.5f;
        uint32_t bits;
        memcpy(&bits, &a, sizeof bits);
        return (uint16_t)(sign | (bits - 0x3f000000u));
    }
    uint32_t mantissa_odd = (absx >> 13) & 1u;
    absx += 0xc8000fffu + mantissa_odd; /* rebias exponent (-112 << 23) and round to nearest even */
    return (uint16_t)(sign | (absx >> 13));
}

/* Element i (already scaled by the stride) of a float tensor, widened. */
static inline float fkda_load_float(const void *data, fkda_dtype dtype, int64_t i)
{
    switch (dtype) {
    case FKDA_DTYPE_F16: return fkda_f16_to_float(((const uint16_t *)data)[i]);
    case FKDA_DTYPE_BF16: return fkda_bf16_to_float(((const uint16_t *)data)[i]);
    default: return ((const float *)data)[i];
    }
}

static inline void fkda_store_float(void *data, fkda_dtype dtype, int64_t i, float x)
{
    switch (dtype) {
    case FKDA_DTYPE_F16: ((uint16_t *)data)[i] = fkda_float_to_f16(x); break;
    case FKDA_DTYPE_BF16: ((uint16_t *)data)[i] = fkda_float_to_bf16(x); break;
    default: ((float *)data)[i] = x; break;
    }
}

/* n elements starting at element `offset`, `stride` apart, widened into dst[0..n). */
static inline void fkda_load_row_float(const void *data, fkda_dtype dtype, int64_t offset, int64_t stride, int64_t n,
                                       float *restrict dst)
{
    if (stride == 1 && dtype == FKDA_DTYPE_F32) {
        memcpy(dst, (const float *)data + offset, (size_t)n * sizeof(float));
    } else if (stride == 1 && dtype == FKDA_DTYPE_BF16) {
        const uint16_t *src = (const uint16_t *)data + offset;
        for (int64_t i = 0; i < n; i++) dst[i] = fkda_bf16_to_float(src[i]);
    } else {
        for (int64_t i = 0; i < n; i++) dst[i] = fkda_load_float(data, dtype, offset + i * stride);
    }
}

static inline void fkda_load_row_double(const void *data, fkda_dtype dtype, int64_t offset, int64_t stride, int64_t n,
                                        double *restrict dst)
{
    for (int64_t i = 0; i < n; i++) dst[i] = (double)fkda_load_float(data, dtype, offset + i * stride);
}

/* src[0..n) narrowed into n elements starting at `offset`, `stride` apart. */
static inline void fkda_store_row_float(void *data, fkda_dtype dtype, int64_t offset, int64_t stride, int64_t n,
                                        const float *restrict src)
{
    if (stride == 1 && dtype == FKDA_DTYPE_F32) {
        memcpy((float *)data + offset, src, (size_t)n * sizeof(float));
    } else if (stride == 1 && dtype == FKDA_DTYPE_BF16) {
        uint16_t *dst = (uint16_t *)data + offset;
        for (int64_t i = 0; i < n; i++) dst[i] = fkda_float_to_bf16(src[i]);
    } else {
        for (int64_t i = 0; i < n; i++) fkda_store_float(data, dtype, offset + i * stride, src[i]);
    }
}

/* Doubles are narrowed to float first, then to the dtype (the float rounding decides). */
static inline void fkda_store_row_double(void *data, fkda_dtype dtype, int64_t offset, int64_t stride, int64_t n,
                                         const double *restrict src)
{
    for (int64_t i = 0; i < n; i++) fkda_store_float(data, dtype, offset + i * stride, (float)src[i]);
}

#endif /* FKDA_CPU_LOAD_H */

/*
 * fast_math.h: exp and sigmoid in float that the compiler can vectorise.
 *
 * libm's expf is a function call, so a loop that calls it runs one element at a time, and the
 * chunked prefill evaluates an exponential for every (token, key) pair twice (the gate and the
 * decays). fkda_expf is plain arithmetic and integer bit operations with no branches, so a loop
 * over it vectorises even at the baseline instruction set.
 *
 * Method (the classic one): x = n ln2 + r with n = round(x / ln2) and |r| <= ln2 / 2 (ln2 split
 * in two parts, Cody-Waite, so that r is exact); exp(r) by a degree-7 polynomial (Cephes'
 * coefficients); 2^n built from exponent bits, as 2^(n/2) * 2^(n - n/2) so that n = 128 and the
 * subnormal results come out right. Measured maximum error 1.35 ulp over the normal range. x is
 * clamped to [-104, 88.8] first (exp(-104) is below the smallest subnormal, exp(88.8) above
 * FLT_MAX), so the result is 0 below, +Inf above, and NaN for NaN. The clamp compares the bit
 * patterns as integers: under the default -ftrapping-math GCC does not if-convert float
 * selects, and the loop would not vectorise.
 */
#ifndef FKDA_CPU_FAST_MATH_H
#define FKDA_CPU_FAST_MATH_H

#include <stdint.h>
#include <string.h>

static inline float fkda_bits_to_float(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint32_t fkda_float_to_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static inline float fkda_expf(float x)
{
    const uint32_t ix = fkda_float_to_bits(x);
    const uint32_t hi = 0x42B1999Au;                       /*  88.8f */
    const uint32_t lo = 0xC2D00000u;                       /* -104.0f */
    uint32_t cx = (ix < 0x80000000u && ix > hi) ? hi : ix; /* positive and above 88.8 */
    cx = ix > lo ? lo : cx;                                /* negative and below -104 */
    cx = (ix & 0x7fffffffu) > 0x7f800000u ? ix : cx;       /* NaN stays NaN */
    const float xc = fkda_bits_to_float(cx);

    const float magic = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
    const float t = xc * 1.44269504088896341f + magic;
    const float n = t - magic;
    float r = xc - n * 0.693359375f; /* ln2, high part (exact product) */
    r = r - n * -2.12194440e-4f;     /* ln2, low part */

    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;

    const int32_t ni = (int32_t)(fkda_float_to_bits(t) - 0x4B400000u); /* n, from t's mantissa */
    const int32_t n1 = ni / 2, n2 = ni - n1;
    return p * fkda_bits_to_float((uint32_t)(n1 + 127) << 23) * fkda_bits_to_float((uint32_t)(n2 + 127) << 23);
}

/* 1 / (1 + exp(-x)): exp(-x) = +Inf for very negative x gives 0, never NaN. */
static inline float fkda_sigmoidf(float x) { return 1.0f / (1.0f + fkda_expf(-x)); }

#endif /* FKDA_CPU_FAST_MATH_H */

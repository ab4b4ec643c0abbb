/*
 * bench_host.h: the host helpers the dev/cuda benches share: a CUDA error check that exits, bf16
 * rounding on the host, a seeded generator (splitmix64, uniform and normal draws), a value split
 * into bf16 hi + lo terms, and a bf16 store into a byte buffer.
 */
#ifndef FKDA_DEV_BENCH_HOST_H
#define FKDA_DEV_BENCH_HOST_H

#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CUDA_OK(call)                                                                                 \
    do {                                                                                              \
        const cudaError_t e_ = (call);                                                                \
        if (e_ != cudaSuccess) {                                                                      \
            fprintf(stderr, "CUDA error %s at %s:%d: %s\n", cudaGetErrorName(e_), __FILE__, __LINE__, \
                    cudaGetErrorString(e_));                                                          \
            exit(2);                                                                                  \
        }                                                                                             \
    } while (0)

static uint16_t f2bf(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;
    x += 0x7fffu + ((x >> 16) & 1u);
    return (uint16_t)(x >> 16);
}
static float bf2f(uint16_t h)
{
    const uint32_t x = (uint32_t)h << 16;
    float f;
    memcpy(&f, &x, 4);
    return f;
}
static float rbf(double x) { return bf2f(f2bf((float)x)); }

static uint64_t rng_state = 0x243F6A8885A308D3ull;
static double urand(void) /* [0, 1), splitmix64 */
{
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (double)(z >> 11) * (1.0 / 9007199254740992.0);
}
static double nrand(void) { return sqrt(-2.0 * log(1.0 - urand())) * cos(6.283185307179586 * urand()); }

static void split_hi_lo(double x, float *hi, float *lo)
{
    *hi = rbf(x);
    *lo = rbf(x - (double)*hi);
}

static void put_bf16(unsigned char *buf, uint32_t off, float x)
{
    const uint16_t h = f2bf(x);
    memcpy(buf + off, &h, 2);
}

#endif /* FKDA_DEV_BENCH_HOST_H */

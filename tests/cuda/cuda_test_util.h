/* cuda_test_util.h: what the GPU test programs share on top of tests/c/test_util.h. */
#ifndef FKDA_CUDA_TEST_UTIL_H
#define FKDA_CUDA_TEST_UTIL_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime.h>

/* A failing CUDA call in a test harness ends the program (exit 3): nothing after it can be trusted. */
#define CUDA_OK(call)                                                                                           \
    do {                                                                                                        \
        cudaError_t e_ = (call);                                                                                \
        if (e_ != cudaSuccess) {                                                                                \
            fprintf(stderr, "CUDA error %s at %s:%d: %s\n", cudaGetErrorString(e_), __FILE__, __LINE__, #call); \
            exit(3);                                                                                            \
        }                                                                                                       \
    } while (0)

/* ---- guarded device buffers ------------------------------------------------------------------
 * A device buffer with GUARD_BYTES of a fixed byte pattern right before and right after it, so
 * that a kernel writing past either end of an output shows (the CUDA allocator would otherwise
 * hand the bytes beyond it to nobody, or to another tensor, and the write would go unseen).
 * The guard size keeps the buffer on the allocator's 256-byte alignment. The pattern is not
 * NaN: a kernel writing the outputs' NaN poison into a guard is caught too. */
#define GUARD_BYTES 4096
#define GUARD_BYTE 0xa5

/* Allocates bytes (at least 1) between two guards and fills the guards; returns the buffer. */
static inline void *guarded_malloc(size_t bytes)
{
    char *base = NULL;
    CUDA_OK(cudaMalloc((void **)&base, bytes + 2 * GUARD_BYTES));
    CUDA_OK(cudaMemset(base, GUARD_BYTE, bytes + 2 * GUARD_BYTES));
    return base + GUARD_BYTES;
}

static inline void guarded_free(void *p)
{
    if (p) CUDA_OK(cudaFree((char *)p - GUARD_BYTES));
}

/* 1 when both guards of a buffer of `bytes` still hold the pattern, byte for byte. */
static inline int guards_intact(const void *p, size_t bytes)
{
    unsigned char host[GUARD_BYTES];
    const char *sides[2] = {(const char *)p - GUARD_BYTES, (const char *)p + bytes};
    for (int s = 0; s < 2; s++) {
        CUDA_OK(cudaMemcpy(host, sides[s], GUARD_BYTES, cudaMemcpyDeviceToHost));
        for (size_t i = 0; i < GUARD_BYTES; i++)
            if (host[i] != GUARD_BYTE) return 0;
    }
    return 1;
}

/* 1 when every byte of a device buffer equals `value` (an output poisoned with it and then
 * refused by the library must still hold it). */
static inline int device_bytes_all(const void *p, size_t bytes, unsigned char value)
{
    if (bytes == 0) return 1;
    unsigned char *host = (unsigned char *)malloc(bytes);
    CUDA_OK(cudaMemcpy(host, p, bytes, cudaMemcpyDeviceToHost));
    int ok = 1;
    for (size_t i = 0; i < bytes && ok; i++) ok = host[i] == value;
    free(host);
    return ok;
}

#endif /* FKDA_CUDA_TEST_UTIL_H */

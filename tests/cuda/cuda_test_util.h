/* cuda_test_util.h: what the GPU test programs share on top of tests/c/test_util.h. */
#ifndef FKDA_CUDA_TEST_UTIL_H
#define FKDA_CUDA_TEST_UTIL_H

#include <stdio.h>
#include <stdlib.h>

#include <cuda_runtime.h>

/* A failing CUDA call in a test harness ends the program (exit 3): nothing after it can be trusted. */
#define CUDA_OK(call)                                                                            \
    do {                                                                                       \
        cudaError_t e_ = (call);                                                               \
        if (e_ != cudaSuccess) {                                                               \
            fprintf(stderr, "CUDA error %s at %s:%d: %s\n", cudaGetErrorString(e_), __FILE__,   \
                    __LINE__, #call);                                                          \
            exit(3);                                                                           \
        }                                                                                      \
    } while (0)

#endif /* FKDA_CUDA_TEST_UTIL_H */

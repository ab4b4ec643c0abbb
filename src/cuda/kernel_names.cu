/* kernel_names.cu: a launched kernel's identifier, for fkda_last_kernels() (src/api/launch_report.c). */
#include <stdio.h>

#include "cuda_internal.h"

extern "C" void fkda_cuda_kernel_name(const void *kernel, char *name, size_t size)
{
    if (size == 0) return;
    const char *runtime_name = NULL;
    if (cudaFuncGetName(&runtime_name, kernel) != cudaSuccess || runtime_name == NULL) {
        (void)cudaGetLastError(); /* no sticky error for a later, unrelated check */
        snprintf(name, size, "?");
        return;
    }
    fkda_kernel_identifier(runtime_name, name, size);
}

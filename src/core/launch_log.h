/*
 * launch_log.h: the thread-local list of the kernels a run call launched, behind
 * fkda_last_kernels().
 *
 * fkda_prefill, fkda_decode and fkda_decode_layer empty the list first; each CUDA launch
 * (fkda_launch_kernel[_ex], cuda_internal.h) notes its kernel (the function pointer it launched,
 * and its cluster size) once the launch is accepted. The names are looked up only when
 * fkda_last_kernels() asks, so a launch pays for two stores, not a lookup.
 */
#ifndef FKDA_CORE_LAUNCH_LOG_H
#define FKDA_CORE_LAUNCH_LOG_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The most launches one run call records; a call that launches more (none does today: a prefill
 * launches at most a prep, a chain and a merge, the layer's three-pass path three kernels) has the
 * rest counted, not named. */
#define FKDA_LAUNCH_LOG_MAX 16

typedef struct fkda_launch_entry {
    const void *kernel; /* the host stub's address, as passed to cudaLaunchKernel */
    int cluster;        /* CTAs a cluster; 1 for an ordinary launch */
} fkda_launch_entry;

/* Empties the calling thread's list (every run call, before its first launch). */
void fkda_launch_log_clear(void);

/* Appends one accepted launch to the calling thread's list. */
void fkda_launch_log_note(const void *kernel, int cluster);

/* The calling thread's list: its entries (up to FKDA_LAUNCH_LOG_MAX) and how many launches were
 * noted in all. */
const fkda_launch_entry *fkda_launch_log_entries(int *recorded, int *total);

/* A kernel's identifier from the name the CUDA runtime gives it, into out[size]. The kernels are
 * C++ functions at file scope, so the runtime's name is mangled: "_Z", an optional "L" (internal
 * linkage), the identifier's length in decimal, the identifier, then the parameters' types
 * ("_Z12layer_f32_kv18fused_layer_params" -> "layer_f32_kv"); any other name is copied whole. */
void fkda_kernel_identifier(const char *runtime_name, char *out, size_t size);

#ifdef __cplusplus
}
#endif

#endif /* FKDA_CORE_LAUNCH_LOG_H */

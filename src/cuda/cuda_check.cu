/*
 * cuda_check.cu: the checks every CUDA call passes before anything is launched: the device
 * exists, every tensor is memory on it, and the operation's kernels support the options.
 */
#include <pthread.h>
#include <string.h>

#include "cuda_internal.h"

static cudaDeviceProp device_props[FKDA_MAX_CUDA_DEVICES];
static int device_props_ready[FKDA_MAX_CUDA_DEVICES];
static pthread_mutex_t device_props_lock = PTHREAD_MUTEX_INITIALIZER;

extern "C" const cudaDeviceProp *fkda_cuda_device_properties(int index)
{
    int count = 0;
    cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess) {
        fkda_fail(FKDA_ERROR_DEVICE, "device: no CUDA device is usable (%s)", cudaGetErrorString(err));
        return NULL;
    }
    if (index < 0 || index >= count || index >= FKDA_MAX_CUDA_DEVICES) {
        fkda_fail(FKDA_ERROR_DEVICE, "device.index: %d is not a CUDA device (this machine has %d)", index, count);
        return NULL;
    }
    pthread_mutex_lock(&device_props_lock);
    if (!device_props_ready[index]) {
        err = cudaGetDeviceProperties(&device_props[index], index);
        if (err == cudaSuccess) device_props_ready[index] = 1;
    }
    pthread_mutex_unlock(&device_props_lock);
    if (err != cudaSuccess) {
        fkda_fail(FKDA_ERROR_DEVICE, "cudaGetDeviceProperties(%d) failed: %s", index, cudaGetErrorString(err));
        return NULL;
    }
    return &device_props[index];
}

/* A tensor given to a CUDA call must be device (or managed) memory of the call's device. */
static fkda_status check_on_device(const char *name, const void *ptr, int index)
{
    if (ptr == NULL) return FKDA_OK;
    cudaPointerAttributes attr;
    cudaError_t err = cudaPointerGetAttributes(&attr, ptr);
    if (err != cudaSuccess) {
        cudaGetLastError(); /* this failure is not sticky: clear it, or our next launch check reports it */
        return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT,
                         "%s: the pointer is not CUDA memory (%s); pass a tensor on cuda:%d", name,
                         cudaGetErrorString(err), index);
    }
    if (attr.type != cudaMemoryTypeDevice && attr.type != cudaMemoryTypeManaged)
        return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT, "%s: is host memory; the CUDA device needs a tensor on cuda:%d",
                         name, index);
    if (attr.device != index)
        return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT, "%s: lives on cuda:%d, but the call runs on cuda:%d", name,
                         attr.device, index);
    return FKDA_OK;
}

typedef struct named_pointer {
    const char *name;
    const void *ptr;
} named_pointer;

/* The decode layer's tensors, named as its caller names them (q, k and v are views of mixed_qkv). */
static fkda_status check_layer_on_device(const fkda_problem *p)
{
    const named_pointer tensors[] = {
        {"mixed_qkv", p->mixed_qkv.data},
        {"conv_weight", p->conv_weight.data},
        {"conv_bias", p->conv_bias.data},
        {"conv_state", p->conv_state.data},
        {"g", p->g.data},
        {"beta", p->beta.data},
        {"A_log", p->A_log.data},
        {"dt_bias", p->dt_bias.data},
        {"state_pool", p->state_in.data},
        {"state_indices", p->state_indices.data},
        {"num_accepted_tokens", p->num_accepted_tokens.data},
        {"output_gate", p->output_gate.data},
        {"norm_weight", p->norm_weight.data},
        {"out", p->out.data},
    };
    for (size_t i = 0; i < sizeof tensors / sizeof tensors[0]; i++) {
        fkda_status s = check_on_device(tensors[i].name, tensors[i].ptr, p->device.index);
        if (s != FKDA_OK) return s;
    }
    return FKDA_OK;
}

extern "C" fkda_status fkda_cuda_check(const fkda_problem *p)
{
    const cudaDeviceProp *prop = fkda_cuda_device_properties(p->device.index);
    if (!prop) return FKDA_ERROR_DEVICE;
    if (p->op == FKDA_OP_DECODE_LAYER) {
        fkda_status s = check_layer_on_device(p);
        return s != FKDA_OK ? s : fkda_cuda_decode_layer_supported(p, prop);
    }

    const named_pointer tensors[] = {
        {"q", p->q.data},
        {"k", p->k.data},
        {"v", p->v.data},
        {"g", p->g.data},
        {"beta", p->beta.data},
        {"out", p->out.data},
        {"A_log", p->A_log.data},
        {"dt_bias", p->dt_bias.data},
        {"cu_seqlens", p->cu_seqlens.data},
        {p->op == FKDA_OP_DECODE || p->uses_pool ? "state_pool" : "initial_state", p->state_in.data},
        {p->op == FKDA_OP_DECODE || p->uses_pool ? "state_pool" : "final_state", p->state_out.data},
        {"state_indices", p->state_indices.data},
        {"num_accepted_tokens", p->num_accepted_tokens.data},
        {"has_initial_state", p->has_initial_state.data},
        {"initial_state_indices", p->initial_state_indices.data},
        {"final_state_indices", p->final_state_indices.data},
        {"checkpoint_offsets", p->checkpoint_offsets.data},
        {"checkpoint_states", p->checkpoint_states.data},
        {"checkpoint_indices", p->checkpoint_indices.data},
        {"intermediate_states", p->intermediate_states.data},
    };
    for (size_t i = 0; i < sizeof tensors / sizeof tensors[0]; i++) {
        fkda_status s = check_on_device(tensors[i].name, tensors[i].ptr, p->device.index);
        if (s != FKDA_OK) return s;
    }
    return p->op == FKDA_OP_DECODE ? fkda_cuda_decode_supported(p, prop) : fkda_cuda_prefill_supported(p, prop);
}

/*
 * prefill_launch.cu: the CUDA prefill as the API layer calls it: which problems the kernels take
 * (everything else is FKDA_ERROR_UNSUPPORTED naming the option), the workspace they need, and the
 * two launches on the caller's stream (prefill_prep.cu, then prefill_chain.cu).
 *
 * Nothing here reads device memory or synchronises: cu_seqlens stays on the device (the kernels
 * clamp it), the workspace comes from the caller, so a call can be captured in a CUDA graph.
 */
#include <stdlib.h>
#include <string.h>

#include "../core/tuning.h"
#include "cuda_internal.h"
#include "prefill_common.cuh"

/* Record slots per value head: B rows of ceil(T/16) chunks, or, packed, T/16 + N + 1 (each
 * sequence's partial last chunk costs at most one slot more than its share of T/16). */
static int64_t prefill_slots(const fkda_problem *p)
{
    if (p->cu_seqlens.data != NULL) return p->T / PF_CHUNK + p->N + 1;
    return p->B * ((p->T + PF_CHUNK - 1) / PF_CHUNK);
}

static int aligned16(const void *ptr) { return ((uintptr_t)ptr & 15u) == 0; }

/* A bf16 token tensor read or written in 16-byte pieces along its last dimension. */
static fkda_status check_rows16(const char *name, const fkda_operand *x)
{
    if (x->dtype != FKDA_DTYPE_BF16)
        return fkda_fail(FKDA_ERROR_UNSUPPORTED, "%s: the CUDA prefill takes bf16 only", name);
    if (!aligned16(x->data) || x->stride[0] % 8 || x->stride[1] % 8 || x->stride[2] % 8)
        return fkda_fail(FKDA_ERROR_UNSUPPORTED,
                         "%s: the CUDA prefill needs 16-byte aligned rows (data aligned to 16 bytes and "
                         "every stride a multiple of 8 elements)",
                         name);
    return FKDA_OK;
}

extern "C" fkda_status fkda_cuda_prefill_supported(const fkda_problem *p, const cudaDeviceProp *prop)
{
    /* The states for serving engines run on the CPU only for now. */
    const char *unsupported = p->uses_pool                          ? "state_pool"
                              : p->has_initial_state.data != NULL   ? "has_initial_state"
                              : p->checkpoint_offsets.data != NULL  ? "checkpoint_offsets"
                              : p->intermediate_states.data != NULL ? "intermediate_states"
                                                                    : NULL;
    if (unsupported != NULL)
        return fkda_fail(FKDA_ERROR_UNSUPPORTED, "%s: the CUDA prefill does not support it yet (the CPU device does)",
                         unsupported);
    if (prop != NULL && prop->major != 9)
        return fkda_fail(FKDA_ERROR_UNSUPPORTED,
                         "device: the CUDA prefill needs a Hopper GPU (sm_90); cuda:%d is sm_%d%d", p->device.index,
                         prop->major, prop->minor);
    if (p->K != PF_DK || p->V != PF_DV)
        return fkda_fail(FKDA_ERROR_UNSUPPORTED,
                         "K, V: the CUDA prefill supports K = V = 128 only (got K = %lld, V = %lld)", (long long)p->K,
                         (long long)p->V);
    if (p->gate != FKDA_GATE_LOWER_BOUND)
        return fkda_fail(FKDA_ERROR_UNSUPPORTED,
                         "options.gate: the CUDA prefill supports the safe gate (FKDA_GATE_LOWER_BOUND) only");
    if (!(p->lower_bound >= -5.0f && p->lower_bound < 0.0f))
        return fkda_fail(FKDA_ERROR_UNSUPPORTED, "options.lower_bound: the CUDA prefill supports [-5, 0) (got %g)",
                         (double)p->lower_bound);
    if (p->HV > 65535)
        return fkda_fail(FKDA_ERROR_UNSUPPORTED, "v: the CUDA prefill supports at most 65535 value heads");
    fkda_status s;
    if ((s = check_rows16("q", &p->q)) != FKDA_OK) return s;
    if ((s = check_rows16("k", &p->k)) != FKDA_OK) return s;
    if ((s = check_rows16("v", &p->v)) != FKDA_OK) return s;
    if ((s = check_rows16("g", &p->g)) != FKDA_OK) return s;
    if ((s = check_rows16("out", &p->out)) != FKDA_OK) return s;
    return FKDA_OK;
}

static int device_sms(const fkda_problem *p)
{
    const cudaDeviceProp *prop = fkda_cuda_device_properties(p->device.index);
    return prop ? prop->multiProcessorCount : 132;
}

/* Segments per sequence (prefill_common.cuh, chain plan). Only for B equal-length rows (with
 * cu_seqlens the lengths stay on the device), and only when the (sequence, head) chains alone
 * leave SMs idle: then the sequence is cut so that pass A (two chains per segment) has about
 * three warps per SM (fewer leave the SMs idle, more only add merge work), with segments of at
 * least 64 chunks, so that each segment's own chain outweighs its share of the merge (the sweep
 * behind this rule: docs/history/prefill.md, v3). FKDA_PREFILL_SEGMENTS overrides (1: off). */
static int64_t choose_segments(const fkda_problem *p, int sms)
{
    if (p->cu_seqlens.data != NULL || p->T <= 0) return 1;
    const int64_t nch = (p->T + PF_CHUNK - 1) / PF_CHUNK, warps = p->N * p->HV * (PF_DV / 16);
    int64_t P;
    fkda_tuning tuning;
    fkda_tuning_read(&tuning);
    if (tuning.prefill_segments > 0) { /* already clamped to 1..64 */
        P = tuning.prefill_segments;
        return P > nch ? nch : P;
    }
    if (warps > sms) return 1;
    P = ((int64_t)sms * 3 + warps) / (2 * warps) + 1; /* pass A: ~3 warps per SM */
    P = P > 16 ? 16 : P;
    P = P > nch / 64 ? nch / 64 : P;
    return P < 2 ? 1 : P;
}

static size_t records_bytes(const fkda_problem *p) { return (size_t)prefill_slots(p) * (size_t)p->HV * PF_REC_BYTES; }

/* Workspace: the records, then (with segments) seg_B, seg_M, seg_S of N*HV*P 128x128 fp32. */
static size_t segment_bytes(const fkda_problem *p, int64_t P)
{
    return P > 1 ? (size_t)p->N * (size_t)p->HV * (size_t)P * PF_DV * PF_DK * sizeof(float) : 0;
}

extern "C" fkda_status fkda_cuda_prefill_workspace(const fkda_problem *p, size_t *bytes)
{
    const int64_t P = choose_segments(p, device_sms(p));
    *bytes = records_bytes(p) + 3 * segment_bytes(p, P);
    return FKDA_OK;
}

/* Value columns per chain CTA (one warp per 16). Every (sequence, head) needs 8 warps in all,
 * whatever the slice, and a chain warp uses ~248 registers (8 warps fill an SM), so the slice
 * decides how evenly the warps spread over the SMs and how often each record is re-read (once
 * per slice, mostly from L2). Pick the slice whose busiest SM has the fewest warps, preferring
 * wider slices within 10 % of that, which re-read each record fewer times (docs/history/prefill.md, v1).
 * FKDA_PREFILL_VSLICE overrides it (16, 32, 64 or 128), for tuning. */
static int choose_vslice(const fkda_problem *p, int sms)
{
    fkda_tuning tuning;
    fkda_tuning_read(&tuning);
    if (tuning.prefill_vslice) return tuning.prefill_vslice; /* 16, 32, 64 or 128 */
    int64_t load[4], best = -1;
    for (int i = 0; i < 4; i++) {
        const int vs = 128 >> i;
        const int64_t ctas = p->N * p->HV * (PF_DV / vs);
        load[i] = (ctas + sms - 1) / sms * (vs / 16);
        if (best < 0 || load[i] < best) best = load[i];
    }
    for (int i = 0; i < 4; i++)
        if (load[i] * 10 <= best * 11) return 128 >> i;
    return 16;
}

static void fill_params(const fkda_problem *p, void *workspace, pf_params *q)
{
    memset(q, 0, sizeof *q);
    q->B = p->B;
    q->T = p->T;
    q->H = p->H;
    q->HV = p->HV;
    q->N = p->N;
    q->group = p->group;
    q->chunks_per_row = (p->T + PF_CHUNK - 1) / PF_CHUNK;
    q->slots = prefill_slots(p);
    q->cu = p->cu_seqlens.data;
    q->cu_stride = p->cu_seqlens.stride[0];
    q->cu_i64 = p->cu_seqlens.dtype == FKDA_DTYPE_I64;
    q->q = (const uint16_t *)p->q.data;
    q->k = (const uint16_t *)p->k.data;
    q->v = (const uint16_t *)p->v.data;
    q->g = (const uint16_t *)p->g.data;
    for (int i = 0; i < 3; i++) {
        q->q_s[i] = p->q.stride[i];
        q->k_s[i] = p->k.stride[i];
        q->v_s[i] = p->v.stride[i];
        q->g_s[i] = p->g.stride[i];
        q->beta_s[i] = p->beta.stride[i];
        q->out_s[i] = p->out.stride[i];
    }
    q->beta = p->beta.data;
    q->beta_dtype = p->beta.dtype;
    q->A_log = p->A_log.data;
    q->A_log_s = p->A_log.stride[0];
    q->A_log_dtype = p->A_log.dtype;
    q->dt_bias = p->dt_bias.data;
    q->dt_s[0] = p->dt_bias.stride[0];
    q->dt_s[1] = p->dt_bias.stride[1];
    q->dt_dtype = p->dt_bias.dtype;
    q->out = (uint16_t *)p->out.data;
    q->state_in = p->state_in.data;
    q->state_in_dtype = p->state_in.dtype;
    q->state_out = p->state_out.data;
    q->state_out_dtype = p->state_out.dtype;
    for (int i = 0; i < 4; i++) {
        q->state_in_s[i] = p->state_in.stride[i];
        q->state_out_s[i] = p->state_out.stride[i];
    }
    q->scale = p->scale;
    q->gate_scale = p->lower_bound * 1.4426950408889634f;
    q->l2norm = p->use_qk_l2norm;
    q->beta_sigmoid = p->use_beta_sigmoid;
    q->neg_eigval = p->allow_neg_eigval;
    q->records = (unsigned char *)workspace;
}

extern "C" fkda_status fkda_cuda_prefill(const fkda_problem *p, void *workspace, size_t workspace_bytes)
{
    size_t need = 0;
    fkda_cuda_prefill_workspace(p, &need);
    if (need > 0 && (workspace == NULL || workspace_bytes < need))
        return fkda_fail(FKDA_ERROR_WORKSPACE, "workspace: the CUDA prefill needs %zu bytes", need);
    const cudaDeviceProp *prop = fkda_cuda_device_properties(p->device.index);
    if (!prop) return FKDA_ERROR_DEVICE;

    int previous = -1;
    FKDA_CUDA_TRY(cudaGetDevice(&previous));
    if (previous != p->device.index) FKDA_CUDA_TRY(cudaSetDevice(p->device.index));

    pf_params params;
    fill_params(p, workspace, &params);
    cudaStream_t stream = (cudaStream_t)p->device.stream;
    const int sms = prop->multiProcessorCount;
    const int64_t P = choose_segments(p, sms);
    pf_chain_plan plan;
    memset(&plan, 0, sizeof plan);
    plan.P = P;
    cudaError_t err = pf_launch_prep(&params, stream);
    const char *what = "the prefill prep kernel";
    if (err == cudaSuccess && P <= 1) {
        plan.mode = PF_CHAIN_WHOLE;
        plan.nslices = PF_DV / choose_vslice(p, sms);
        plan.P = 1;
        err = pf_launch_chain(&params, &plan, stream);
        what = "the prefill chain kernel";
    } else if (err == cudaSuccess) {
        const int64_t nch = (p->T + PF_CHUNK - 1) / PF_CHUNK;
        const size_t seg = segment_bytes(p, P);
        unsigned char *base = (unsigned char *)workspace + records_bytes(p);
        plan.nslices = PF_DV / 16;
        plan.Lc = (nch + P - 1) / P;
        plan.seg_B = (float *)base;
        plan.seg_M = (float *)(base + seg);
        plan.seg_S = (float *)(base + 2 * seg);
        plan.mode = PF_CHAIN_SEG_A;
        err = pf_launch_chain(&params, &plan, stream);
        what = "the prefill chain kernel (segment pass A)";
        if (err == cudaSuccess) {
            err = pf_launch_merge(&params, &plan, stream);
            what = "the prefill merge kernel";
        }
        if (err == cudaSuccess) {
            plan.mode = PF_CHAIN_SEG_C;
            err = pf_launch_chain(&params, &plan, stream);
            what = "the prefill chain kernel (segment pass C)";
        }
    }
    if (previous != p->device.index) cudaSetDevice(previous);
    if (err != cudaSuccess)
        return fkda_fail(FKDA_ERROR_DEVICE, "launch of %s failed: %s", what, cudaGetErrorString(err));
    return FKDA_OK;
}

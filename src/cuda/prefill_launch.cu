/*
 * prefill_launch.cu: the CUDA prefill as the API layer calls it: which problems the kernels take
 * (everything else is FKDA_ERROR_UNSUPPORTED naming the option), the workspace they need, and the
 * two launches on the caller's stream (prefill_prep.cu, then prefill_chain.cu; for K > 128
 * prefill_prep_k256.cu, then prefill_chain_k256.cu).
 *
 * Nothing here reads device memory or synchronises: cu_seqlens stays on the device (the kernels
 * clamp it), the workspace comes from the caller, so a call can be captured in a CUDA graph.
 */
#include <stdlib.h>
#include <string.h>

#include "../core/tuning.h"
#include "cuda_internal.h"
#include "prefill_common.cuh"
#include "prefill_k256.cuh"
#include "prefill_select.h"

static_assert(FKDA_PF_CHUNK == PF_CHUNK && FKDA_PF_DK == PF_DK && FKDA_PF_DV == PF_DV,
              "prefill_select.h's sizes are the kernels' (prefill_common.cuh)");

/* Record slots per value head: B rows of ceil(T/16) chunks, or, packed, T/16 + N + 1 (each
 * sequence's partial last chunk costs at most one slot more than its share of T/16). */
static int64_t prefill_slots(const fkda_problem *p)
{
    if (p->cu_seqlens.data != NULL) return p->T / PF_CHUNK + p->N + 1;
    return p->B * ((p->T + PF_CHUNK - 1) / PF_CHUNK);
}

static int aligned16(const void *ptr) { return ((uintptr_t)ptr & 15u) == 0; }

/* A token tensor ([B, T, heads, D]) whose rows the kernels move in 16-byte pieces: data aligned
 * to 16 bytes, and every stride and D a whole number of pieces (8 elements of 16 bits, 4 of 32). */
static int rows16(const fkda_operand *x, int64_t D)
{
    const int64_t per = x->dtype == FKDA_DTYPE_F32 ? 4 : 8;
    return aligned16(x->data) && x->stride[0] % per == 0 && x->stride[1] % per == 0 && x->stride[2] % per == 0 &&
           D % per == 0;
}

static int is16bit(const fkda_operand *x) { return x->dtype == FKDA_DTYPE_BF16 || x->dtype == FKDA_DTYPE_F16; }
static int bf16_rows16(const fkda_operand *x, int64_t D) { return x->dtype == FKDA_DTYPE_BF16 && rows16(x, D); }
static int f16_rows16(const fkda_operand *x, int64_t D) { return x->dtype == FKDA_DTYPE_F16 && rows16(x, D); }

/* How the prep loads q, k, g (PF_LOAD_* in prefill_common.cuh): the tile forms take any K <= 128
 * whose rows are whole 16-byte pieces (rows16 checks K too: K % 8 == 0 for 16-bit dtypes, K % 4
 * == 0 for fp32), and zero-fill the keys past K; the fp16 tiles only in the fp16 family (fp16:
 * its prep, whose kernels alone read them). (K > 128 has a prep of its own that reads none of
 * this.) */
static int qkg_load(const fkda_problem *p, int fp16)
{
    if (p->K > PF_DK) return PF_LOAD_ELEMENTS;
    if (bf16_rows16(&p->q, p->K) && bf16_rows16(&p->k, p->K) && bf16_rows16(&p->g, p->K)) return PF_LOAD_BF16;
    if (fp16 && f16_rows16(&p->q, p->K) && f16_rows16(&p->k, p->K) && is16bit(&p->g) && rows16(&p->g, p->K))
        return PF_LOAD_F16;
    if (rows16(&p->q, p->K) && rows16(&p->k, p->K) && rows16(&p->g, p->K)) return PF_LOAD_TILES;
    return PF_LOAD_ELEMENTS;
}

/* The chain reads the caller's v (else the prep's bf16 copy) and writes out in 16-byte pieces. */
static int out_mode(const fkda_problem *p)
{
    if (!is16bit(&p->out) || !rows16(&p->out, p->V)) return PF_OUT_ANY;
    return p->out.dtype == FKDA_DTYPE_BF16 ? PF_OUT_BF16 : PF_OUT_F16;
}

/* The chain reads the caller's v when it is bf16 with 16-byte rows, or fp16 with 16-byte rows
 * and an fp16 output of the same kind (the fp16-output chain converts its v tiles to bf16). The
 * fp16 chain reads fp16 or fp32 v with 16-byte rows and whole 8-value pieces. */
static int v_direct(const fkda_problem *p, int fp16)
{
    if (fp16) return rows16(&p->v, p->V) && p->V % 8 == 0;
    if (bf16_rows16(&p->v, p->V)) return 1;
    return p->v.dtype == FKDA_DTYPE_F16 && rows16(&p->v, p->V) && out_mode(p) == PF_OUT_F16;
}

static int64_t vpad(const fkda_problem *p) { return (p->V + 15) / 16 * 16; }

/* Workspace of the chain's copy of v: [HV][slots][16][vpad] bf16 (fp32 for the fp16 family), or
 * nothing. */
static size_t v_stage_bytes(const fkda_problem *p, int fp16)
{
    const size_t esize = fp16 ? 4 : 2;
    return v_direct(p, fp16) ? 0 : (size_t)p->HV * (size_t)prefill_slots(p) * PF_CHUNK * (size_t)vpad(p) * esize;
}

extern "C" fkda_status fkda_cuda_prefill_supported(const fkda_problem *p, const cudaDeviceProp *prop)
{
    if (prop != NULL && prop->major != 9)
        return fkda_fail(FKDA_ERROR_UNSUPPORTED,
                         "device: the CUDA prefill needs a Hopper GPU (sm_90); cuda:%d is sm_%d%d", p->device.index,
                         prop->major, prop->minor);
    if (p->K > PF256_DK)
        return fkda_fail(FKDA_ERROR_UNSUPPORTED, "K: the CUDA prefill supports K <= 256 (got K = %lld)",
                         (long long)p->K);
    if (p->HV > 65535)
        return fkda_fail(FKDA_ERROR_UNSUPPORTED, "v: the CUDA prefill supports at most 65535 value heads");
    /* The chain's grid: one CTA per (sequence, head, slice of at least 16 of the V <= 256 value
     * columns), in gridDim.x; refused here rather than failing at the launch (a T = 0 call has no
     * other limit). */
    if (p->N * p->HV > INT32_MAX / 16)
        return fkda_fail(FKDA_ERROR_UNSUPPORTED,
                         "final_state: N * HV = %lld (sequence, head) pairs are too many for one CUDA prefill",
                         (long long)(p->N * p->HV));
    if (p->intermediate_states.data != NULL && p->intermediate_chunk % PF_CHUNK != 0)
        return fkda_fail(FKDA_ERROR_UNSUPPORTED,
                         "intermediate_chunk_size: the CUDA prefill takes multiples of 16 (got %lld; fla uses 64)",
                         (long long)p->intermediate_chunk);
    return FKDA_OK;
}

static size_t records_bytes(const fkda_problem *p)
{
    return (size_t)prefill_slots(p) * (size_t)p->HV * (p->K > PF_DK ? PF256_REC_BYTES : PF_REC_BYTES);
}

/* Workspace: the records, then (with segments) seg_B, seg_M, seg_S of N*HV*P 128x128 fp32, then
 * the bf16 copy of v if the chain needs one. */
static size_t segment_bytes(const fkda_problem *p, int64_t P)
{
    return P > 1 ? (size_t)p->N * (size_t)p->HV * (size_t)P * PF_DV * PF_DK * sizeof(float) : 0;
}

static size_t total_workspace_bytes(const fkda_problem *p, int64_t P, int fp16)
{
    return records_bytes(p) + 3 * segment_bytes(p, P) + v_stage_bytes(p, fp16);
}

/* The call as prefill_select.c sees it, on the device's SM count (132 where the properties are
 * not known, as an H100 or H200 has: the workspace size is then still answered, and the call
 * itself refuses after its workspace check). */
static fkda_prefill_call describe(const fkda_problem *p)
{
    const cudaDeviceProp *prop = fkda_cuda_device_properties(p->device.index);
    fkda_prefill_call c;
    memset(&c, 0, sizeof c);
    c.N = p->N;
    c.H = p->H;
    c.HV = p->HV;
    c.T = p->T;
    c.K = p->K;
    c.V = p->V;
    c.cu_seqlens = p->cu_seqlens.data != NULL;
    c.states_inside = p->checkpoints > 0 || p->intermediate_states.data != NULL;
    c.fp16_inputs = p->q.dtype == FKDA_DTYPE_F16 || p->q.dtype == FKDA_DTYPE_F32;
    c.out_bf16_rows16 = out_mode(p) == PF_OUT_BF16;
    c.sm_count = prop ? prop->multiProcessorCount : 132;
    return c;
}

/* The choice for a call, the tuning variables read once. */
static fkda_prefill_choice select_for(const fkda_problem *p)
{
    const fkda_prefill_call c = describe(p);
    fkda_tuning tuning;
    fkda_tuning_read(&tuning);
    fkda_prefill_choice choice;
    fkda_prefill_select(&c, &tuning, &choice);
    return choice;
}

extern "C" fkda_status fkda_cuda_prefill_workspace(const fkda_problem *p, size_t *bytes)
{
    const fkda_prefill_choice choice = select_for(p);
    *bytes = total_workspace_bytes(p, choice.segments, choice.fp16_chain);
    return FKDA_OK;
}

static pf_ints ints_of(const fkda_operand *x)
{
    pf_ints r;
    memset(&r, 0, sizeof r);
    r.data = x->data;
    r.stride[0] = x->stride[0];
    r.stride[1] = x->stride[1];
    r.i64 = x->dtype == FKDA_DTYPE_I64;
    r.bool8 = x->dtype == FKDA_DTYPE_BOOL;
    return r;
}

static pf_states states_of(const fkda_operand *x)
{
    pf_states r;
    memset(&r, 0, sizeof r);
    r.data = x->data;
    r.dtype = x->dtype;
    for (int i = 0; i < 4; i++) r.stride[i] = x->stride[i];
    return r;
}

static void fill_params(const fkda_problem *p, void *workspace, int fp16, pf_params *q)
{
    memset(q, 0, sizeof *q);
    q->B = p->B;
    q->T = p->T;
    q->H = p->H;
    q->HV = p->HV;
    q->N = p->N;
    q->group = p->group;
    q->K = p->K;
    q->V = p->V;
    q->vpad = vpad(p);
    q->chunks_per_row = (p->T + PF_CHUNK - 1) / PF_CHUNK;
    q->slots = prefill_slots(p);
    q->cu = p->cu_seqlens.data;
    q->cu_stride = p->cu_seqlens.stride[0];
    q->cu_i64 = p->cu_seqlens.dtype == FKDA_DTYPE_I64;
    q->q = p->q.data;
    q->k = p->k.data;
    q->v = p->v.data;
    q->g = p->g.data;
    q->qkv_dtype = p->q.dtype;
    q->g_dtype = p->g.dtype;
    q->qkg_load = qkg_load(p, fp16);
    q->fp16_chain = fp16;
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
    q->gate = p->gate;
    q->A_log = p->A_log.data;
    q->A_log_s = p->A_log.stride[0];
    q->A_log_dtype = p->A_log.dtype;
    q->dt_bias = p->dt_bias.data;
    q->dt_s[0] = p->dt_bias.stride[0];
    q->dt_s[1] = p->dt_bias.stride[1];
    q->dt_dtype = p->dt_bias.dtype;
    q->out = p->out.data;
    q->out_dtype = p->out.dtype;
    q->out_mode = out_mode(p);
    q->state_in = states_of(&p->state_in);
    q->state_out = states_of(&p->state_out);
    q->pool_size = p->pool_size;
    q->has_initial = ints_of(&p->has_initial_state);
    q->initial_idx = ints_of(&p->initial_state_indices);
    q->final_idx = ints_of(&p->final_state_indices);
    q->ck_off = ints_of(&p->checkpoint_offsets);
    q->ck_idx = ints_of(&p->checkpoint_indices);
    q->checkpoints = p->checkpoint_offsets.data != NULL ? p->checkpoints : 0;
    q->ck_states = states_of(&p->checkpoint_states);
    q->inter = states_of(&p->intermediate_states);
    q->ichunk = p->intermediate_chunk > 0 ? p->intermediate_chunk : 64;
    q->inter_rows_per_seq = (p->T + q->ichunk - 1) / q->ichunk;
    q->inter_rows = p->intermediate_rows;
    q->scale = p->scale;
    q->gate_scale = p->lower_bound * 1.4426950408889634f;
    q->l2norm = p->use_qk_l2norm;
    q->beta_sigmoid = p->use_beta_sigmoid;
    q->neg_eigval = p->allow_neg_eigval;
    q->records = (unsigned char *)workspace;
}

/* K <= 128: the prep, then the chain whole (P = 1), or its segment passes A and C around the merge. */
static cudaError_t launch_k128(const fkda_problem *p, const pf_params *params, void *workspace,
                               const fkda_prefill_choice *choice, cudaStream_t stream, const char **what)
{
    const int64_t P = choice->segments;
    *what = "the prefill prep kernel";
    cudaError_t err = pf_launch_prep(params, stream);
    if (err != cudaSuccess) return err;
    pf_chain_plan plan;
    memset(&plan, 0, sizeof plan);
    if (P <= 1) {
        plan.mode = PF_CHAIN_WHOLE;
        plan.nslices = (int32_t)(vpad(p) / choice->vslice);
        plan.split_out = choice->split_out;
        plan.P = 1;
        *what = "the prefill chain kernel";
        return pf_launch_chain(params, &plan, stream);
    }
    const int64_t nch = (p->T + PF_CHUNK - 1) / PF_CHUNK;
    const size_t seg = segment_bytes(p, P);
    unsigned char *base = (unsigned char *)workspace + records_bytes(p);
    plan.P = P;
    plan.nslices = (int32_t)(PF_DV / choice->vslice);
    plan.Lc = (nch + P - 1) / P;
    plan.seg_B = (float *)base;
    plan.seg_M = (float *)(base + seg);
    plan.seg_S = (float *)(base + 2 * seg);
    plan.mode = PF_CHAIN_SEG_A;
    *what = "the prefill chain kernel (segment pass A)";
    if ((err = pf_launch_chain(params, &plan, stream)) != cudaSuccess) return err;
    *what = "the prefill merge kernel";
    if ((err = pf_launch_merge(params, &plan, stream)) != cudaSuccess) return err;
    plan.mode = PF_CHAIN_SEG_C;
    *what = "the prefill chain kernel (segment pass C)";
    return pf_launch_chain(params, &plan, stream);
}

/* 128 < K <= 256 (prefill_prep_k256.cu, prefill_chain_k256.cu): no segments; a warp pair per 16
 * value columns, the slice from prefill_select.c. */
static cudaError_t launch_k256(const fkda_problem *p, const pf_params *params, const fkda_prefill_choice *choice,
                               cudaStream_t stream, const char **what)
{
    /* The prep's q, k, g loads: cp.async into bf16 tiles when all three are bf16 with 16-byte
     * rows (K a multiple of 8; keys past K are zero-filled), else element by element. */
    pf_params prep = *params;
    prep.qkg_load = bf16_rows16(&p->q, p->K) && bf16_rows16(&p->k, p->K) && bf16_rows16(&p->g, p->K) ? PF_LOAD_BF16
                                                                                                     : PF_LOAD_ELEMENTS;
    *what = "the prefill prep kernel (K > 128)";
    cudaError_t err = pf256_launch_prep(&prep, stream);
    if (err != cudaSuccess) return err;
    *what = "the prefill chain kernel (K > 128)";
    return pf256_launch_chain(params, choice->vslice, stream);
}

extern "C" fkda_status fkda_cuda_prefill(const fkda_problem *p, void *workspace, size_t workspace_bytes)
{
    /* the kernels and shapes, the environment read once (the same device properties as the
     * workspace size had, so the same segments and family) */
    const fkda_prefill_choice choice = select_for(p);
    const int fp16 = choice.fp16_chain;
    const int64_t P = choice.segments;
    const size_t need = total_workspace_bytes(p, P, fp16);
    if (need > 0 && (workspace == NULL || workspace_bytes < need))
        return fkda_fail(FKDA_ERROR_WORKSPACE, "workspace: the CUDA prefill needs %zu bytes", need);
    const cudaDeviceProp *prop = fkda_cuda_device_properties(p->device.index);
    if (!prop) return FKDA_ERROR_DEVICE;

    int previous = -1;
    FKDA_CUDA_TRY(cudaGetDevice(&previous));
    if (previous != p->device.index) FKDA_CUDA_TRY(cudaSetDevice(p->device.index));

    pf_params params;
    fill_params(p, workspace, fp16, &params);
    params.exact_qk = choice.exact_qk;
    if (v_stage_bytes(p, fp16) > 0)
        params.v_stage = (unsigned char *)workspace + records_bytes(p) + 3 * segment_bytes(p, P);
    cudaStream_t stream = (cudaStream_t)p->device.stream;
    const char *what = "the prefill prep kernel";
    const cudaError_t err = p->K > PF_DK ? launch_k256(p, &params, &choice, stream, &what)
                                         : launch_k128(p, &params, workspace, &choice, stream, &what);
    if (previous != p->device.index) cudaSetDevice(previous);
    if (err != cudaSuccess)
        return fkda_fail(FKDA_ERROR_DEVICE, "launch of %s failed: %s", what, cudaGetErrorString(err));
    return FKDA_OK;
}

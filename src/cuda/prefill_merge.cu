/*
 * prefill_merge.cu: the serial step between the two segment passes (prefill_common.cuh, chain
 * plan). For each (sequence, head), the start state of every segment from the segment maps of
 * pass A, in fp32:
 *
 *   S_1 = B_0,   S_{p+1} = M_p S_p + B_p   (p = 1 .. P-2),   stored as seg_S[p] for pass C.
 *
 * In the S^T layout of the segment arrays (row = value index v, or transition column j):
 *   S_{p+1}^T[v][key] = sum_j S_p^T[v][j] M_p^T[j][key] + B_p^T[v][key].
 * One CTA of 256 threads per (sequence, head, 16 value rows): the 16 x 128 state slice stays in
 * shared memory, thread (r, kg) computes row r, keys 8 kg .. 8 kg + 7, reading M_p^T rows
 * (64 KB, shared by the 8 CTAs of a head through L2 / L1). P - 2 products of 16 x 128 x 128.
 */
#include "cuda_internal.h"
#include "prefill_common.cuh"

#define MERGE_THREADS 256
#define MERGE_ROWS 16

__global__ void __launch_bounds__(MERGE_THREADS) pf_merge_kernel(const pf_params p, const pf_chain_plan plan)
{
    __shared__ __align__(16) float s_S[MERGE_ROWS][PF_DK];
    const int tid = threadIdx.x, r = tid >> 4, kg = (tid & 15) * 8;
    const int64_t bid = blockIdx.x;
    const int v0 = (int)(bid % (PF_DV / MERGE_ROWS)) * MERGE_ROWS;
    const int64_t nh = bid / (PF_DV / MERGE_ROWS); /* n * HV + h */
    const int64_t head_off = nh * plan.P * (int64_t)(PF_DV * PF_DK);
    const int64_t mat = PF_DV * PF_DK;

    /* S_1 = B_0 */
    const float *B0 = plan.seg_B + head_off + (int64_t)(v0 + r) * PF_DK + kg;
    float acc[8];
#pragma unroll
    for (int e = 0; e < 8; e++) acc[e] = B0[e];

    for (int64_t sp = 1; sp < plan.P; sp++) {
        /* acc holds S_sp (rows v0 + r, keys kg .. kg + 7): publish it */
        float *dst = plan.seg_S + head_off + sp * mat + (int64_t)(v0 + r) * PF_DK + kg;
        *(float4 *)dst = make_float4(acc[0], acc[1], acc[2], acc[3]);
        *(float4 *)(dst + 4) = make_float4(acc[4], acc[5], acc[6], acc[7]);
        if (sp == plan.P - 1) break;
        __syncthreads(); /* everyone is done reading the previous S */
#pragma unroll
        for (int e = 0; e < 8; e++) s_S[r][kg + e] = acc[e];
        __syncthreads();
        const float *Mt = plan.seg_M + head_off + sp * mat;
        const float *Bp = plan.seg_B + head_off + sp * mat + (int64_t)(v0 + r) * PF_DK + kg;
#pragma unroll
        for (int e = 0; e < 8; e++) acc[e] = Bp[e];
#pragma unroll 4
        for (int j = 0; j < PF_DK; j++) {
            const float sj = s_S[r][j];
            const float4 m0 = *(const float4 *)(Mt + (int64_t)j * PF_DK + kg);
            const float4 m1 = *(const float4 *)(Mt + (int64_t)j * PF_DK + kg + 4);
            acc[0] += sj * m0.x;
            acc[1] += sj * m0.y;
            acc[2] += sj * m0.z;
            acc[3] += sj * m0.w;
            acc[4] += sj * m1.x;
            acc[5] += sj * m1.y;
            acc[6] += sj * m1.z;
            acc[7] += sj * m1.w;
        }
    }
}

cudaError_t pf_launch_merge(const pf_params *p, const pf_chain_plan *plan, cudaStream_t stream)
{
    const int64_t blocks = p->N * p->HV * (PF_DV / MERGE_ROWS);
    if (blocks <= 0 || plan->P < 2) return cudaSuccess;
    if (blocks > INT32_MAX) return cudaErrorInvalidConfiguration; /* gridDim.x limit */
    void *args[] = {(void *)p, (void *)plan};
    return fkda_launch_kernel((const void *)pf_merge_kernel, dim3((unsigned)blocks), dim3(MERGE_THREADS), args, 0,
                              stream); /* this launch's error only (prefill_common.cuh) */
}

/*
 * prefill_chain.cu: the serial half of the prefill. One CTA per (sequence, value head, slice of
 * value columns) walks the sequence's chunks in order. Every value column of the state evolves
 * on its own, so a slice needs no other CTA; each warp owns 16 value columns for the whole run.
 *
 * The state lives in registers as the transposed state S^T (16 value rows x 128 keys per warp),
 * fp32, in the accumulator layout of mma.m16n8k16: 16 key tiles x 4 registers. Per chunk:
 *
 *   sa      = bf16(S^T)                       as A fragments (m = values, k = keys), and read
 *                                             as B fragments of S (k = keys, n = values)
 *   Vnew^T  = V^T bINV^T + S^T (-W)^T         16 x 16, two accumulation chains of 4 k-steps
 *   O       = Qd S + Mqk Vnew                 16 tokens x 16 values, fp32, one bf16 rounding
 *   S^T     = S^T diag(gamma) + Vnew^T Kr     16 mma, the state update in place
 *
 * Operands come from the chunk's record (prefill_prep.cu), moved whole by one bulk copy per chunk
 * into a ring of CH_STAGES stages completed on mbarriers; each warp cp.asyncs its own 16 x 16
 * slice of v (zero rows past the sequence end). The output goes through a small per-warp shared
 * tile so that each lane stores 16 contiguous bytes.
 */
#include "prefill_common.cuh"
#include "ptx_copy.cuh"
#include "ptx_mbarrier.cuh"
#include "ptx_mma.cuh"

#define CH_STAGES 4
#define CH_TILE16 512 /* bytes of one 16 x 16 bf16 tile (a warp's v slice, or its output) */

size_t pf_chain_smem_bytes(int vslice)
{
    const int warps = vslice / 16;
    return (size_t)CH_STAGES * PF_REC_BYTES + (size_t)CH_STAGES * warps * CH_TILE16 +
           (size_t)warps * CH_TILE16 + CH_STAGES * sizeof(uint64_t);
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 /* sm_90 only: bulk copies and mbarrier tx */
static __device__ __forceinline__ void chain_load_state(const pf_params *p, int64_t n, int64_t h, int v0,
                                                        int g, int t, float S[16][4])
{
#pragma unroll
    for (int j = 0; j < 16; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) S[j][e] = 0.0f;
    if (p->state_in == NULL) return;
    const int64_t base = n * p->state_in_s[0] + h * p->state_in_s[1];
#pragma unroll
    for (int j = 0; j < 16; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int64_t key = 8 * j + 2 * t + (e & 1), val = v0 + g + 8 * (e >> 1);
            const int64_t off = base + key * p->state_in_s[2] + val * p->state_in_s[3];
            S[j][e] = p->state_in_dtype == FKDA_DTYPE_F32 ? ((const float *)p->state_in)[off]
                                                          : pf_bf16_to_float(((const uint16_t *)p->state_in)[off]);
        }
}

static __device__ __forceinline__ void chain_store_state(const pf_params *p, int64_t n, int64_t h, int v0,
                                                         int g, int t, const float S[16][4])
{
    if (p->state_out == NULL) return;
    const int64_t base = n * p->state_out_s[0] + h * p->state_out_s[1];
#pragma unroll
    for (int j = 0; j < 16; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int64_t key = 8 * j + 2 * t + (e & 1), val = v0 + g + 8 * (e >> 1);
            const int64_t off = base + key * p->state_out_s[2] + val * p->state_out_s[3];
            if (p->state_out_dtype == FKDA_DTYPE_F32)
                ((float *)p->state_out)[off] = S[j][e];
            else
                ((uint16_t *)p->state_out)[off] = pf_float_to_bf16(S[j][e]);
        }
}

#endif

__global__ void __launch_bounds__(256, 1) pf_chain_kernel(const pf_params p, int nslices)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    extern __shared__ __align__(128) unsigned char smem[];
    const int warps = blockDim.x >> 5;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = lane >> 2, t = lane & 3;

    int64_t bid = blockIdx.x;
    const int slice = (int)(bid % nslices);
    bid /= nslices;
    const int64_t h = bid % p.HV, n = bid / p.HV;
    const int v0 = slice * warps * 16 + warp * 16; /* this warp's first value column */

    unsigned char *s_rec = smem;                                            /* [stage][record] */
    unsigned char *s_v = smem + CH_STAGES * PF_REC_BYTES;                   /* [stage][warp][tile] */
    unsigned char *s_out = s_v + CH_STAGES * warps * CH_TILE16;             /* [warp][tile] */
    uint64_t *s_full = (uint64_t *)(s_out + warps * CH_TILE16);             /* [stage] */

    int64_t row, start, len, slot0;
    pf_sequence(&p, n, &row, &start, &len, &slot0);
    const int64_t nch = (len + PF_CHUNK - 1) / PF_CHUNK;
    const unsigned char *rec0 = p.records + (h * p.slots + slot0) * (int64_t)PF_REC_BYTES;

    if (threadIdx.x == 0) {
        for (int s = 0; s < CH_STAGES; s++) mbar_init(smem_addr(&s_full[s]), 1);
        mbar_fence_init();
    }
    __syncthreads();

    float S[16][4];
    chain_load_state(&p, n, h, v0, g, t, S);

    /* Producers: thread 0 moves records, each warp its own v slice (16 tokens x 16 values,
     * lane = token * 2 + half). */
    const int vtok = lane >> 1, vhalf = lane & 1;
    const uint16_t *vsrc = p.v + row * p.v_s[0] + h * p.v_s[2] + v0 + vhalf * 8;
#define CH_ISSUE_RECORD(chunk, stage)                                                               \
    do {                                                                                            \
        const uint32_t mb_ = smem_addr(&s_full[stage]);                                             \
        mbar_arrive_expect_tx(mb_, PF_REC_BYTES);                                                   \
        bulk_copy_g2s(smem_addr(s_rec + (stage) * PF_REC_BYTES), rec0 + (chunk) * (int64_t)PF_REC_BYTES, \
                      PF_REC_BYTES, mb_);                                                           \
    } while (0)
#define CH_ISSUE_V(chunk, stage)                                                                    \
    do {                                                                                            \
        if ((chunk) < nch) {                                                                        \
            const int64_t tk_ = (chunk) * PF_CHUNK + vtok;                                          \
            const int ok_ = tk_ < len;                                                              \
            cp_async_16(smem_addr(s_v + ((stage) * warps + warp) * CH_TILE16 + pf_swz16(vtok, vhalf)), \
                        ok_ ? (const void *)(vsrc + (start + tk_) * p.v_s[1]) : (const void *)p.v,   \
                        ok_ ? 16u : 0u);                                                            \
        }                                                                                           \
        cp_async_commit();                                                                          \
    } while (0)

    if (threadIdx.x == 0)
        for (int s = 0; s < CH_STAGES; s++)
            if (s < nch) CH_ISSUE_RECORD(s, s);
    for (int s = 0; s < CH_STAGES; s++) CH_ISSUE_V((int64_t)s, s);

    const float zero4[4] = {0.f, 0.f, 0.f, 0.f};
    for (int64_t c = 0; c < nch; c++) {
        const int st = (int)(c % CH_STAGES);
        const unsigned char *R = s_rec + st * PF_REC_BYTES;
        const unsigned char *VT = s_v + (st * warps + warp) * CH_TILE16;

        /* The state in bf16: A fragments of S^T (and B fragments of S). */
        uint32_t sa[8][4];
#pragma unroll
        for (int kk = 0; kk < 8; kk++) {
            sa[kk][0] = pack_bf16x2(S[2 * kk][0], S[2 * kk][1]);
            sa[kk][1] = pack_bf16x2(S[2 * kk][2], S[2 * kk][3]);
            sa[kk][2] = pack_bf16x2(S[2 * kk + 1][0], S[2 * kk + 1][1]);
            sa[kk][3] = pack_bf16x2(S[2 * kk + 1][2], S[2 * kk + 1][3]);
        }

        CP_ASYNC_WAIT(CH_STAGES - 1);
        __syncwarp();
        mbar_wait(smem_addr(&s_full[st]), (uint32_t)((c / CH_STAGES) & 1));

        /* U^T = V^T bINV^T: A = V^T by a transposed load of the [token][value] tile. */
        float vna[2][4], vnb[2][4];
        {
            uint32_t va[4], bi[4];
            const int mi = lane >> 3, r = lane & 7;
            ldsm_x4_trans(va, smem_addr(VT + pf_swz16(r + 8 * (mi >> 1), mi & 1)));
            ldsm_x4(bi, smem_addr(R + PF_REC_BINV + ((lane & 7) + 8 * (lane >> 4)) * 32 + ((lane >> 3) & 1) * 16));
            mma_bf16_16816(vna[0], va, bi[0], bi[1], zero4);
            mma_bf16_16816(vna[1], va, bi[2], bi[3], zero4);
        }

        /* Vnew^T += S^T (-W)^T (keys 0-63 into vna, 64-127 into vnb); O = Qd S. */
        float o[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#pragma unroll
        for (int kk = 0; kk < 8; kk++) {
            uint32_t wb[4], qa[4];
            ldsm_x4(wb, smem_addr(R + PF_REC_NEGW + pf_swz_unit((lane & 7) + 8 * (lane >> 4), 2 * kk + ((lane >> 3) & 1))));
            if (kk == 0) {
                mma_bf16_16816(vnb[0], sa[kk], wb[0], wb[1], zero4);
                mma_bf16_16816(vnb[1], sa[kk], wb[2], wb[3], zero4);
            } else if (kk < 4) {
                mma_bf16_16816(vnb[0], sa[kk], wb[0], wb[1], vnb[0]);
                mma_bf16_16816(vnb[1], sa[kk], wb[2], wb[3], vnb[1]);
            } else {
                mma_bf16_16816(vna[0], sa[kk], wb[0], wb[1], vna[0]);
                mma_bf16_16816(vna[1], sa[kk], wb[2], wb[3], vna[1]);
            }
            ldsm_x4(qa, smem_addr(R + PF_REC_QD + pf_swz_unit((lane & 7) + 8 * ((lane >> 3) & 1), 2 * kk + (lane >> 4))));
            mma_bf16_16816(o[0], qa, sa[kk][0], sa[kk][2], o[0]);
            mma_bf16_16816(o[1], qa, sa[kk][1], sa[kk][3], o[1]);
        }

        /* Vnew^T in bf16: the A fragment (m = values, k = tokens) of the state update, and the B
         * fragments (k = tokens, n = values) of Mqk Vnew. */
        uint32_t vp[4];
        vp[0] = pack_bf16x2(vna[0][0] + vnb[0][0], vna[0][1] + vnb[0][1]);
        vp[1] = pack_bf16x2(vna[0][2] + vnb[0][2], vna[0][3] + vnb[0][3]);
        vp[2] = pack_bf16x2(vna[1][0] + vnb[1][0], vna[1][1] + vnb[1][1]);
        vp[3] = pack_bf16x2(vna[1][2] + vnb[1][2], vna[1][3] + vnb[1][3]);

        /* S^T <- S^T diag(gamma) + Vnew^T Kr (B = Kr by transposed loads: k = tokens, n = keys). */
#pragma unroll
        for (int m = 0; m < 8; m++) {
            uint32_t kb[4];
            ldsm_x4_trans(kb, smem_addr(R + PF_REC_KR + pf_swz_unit((lane & 7) + 8 * ((lane >> 3) & 1), 2 * m + (lane >> 4))));
#pragma unroll
            for (int hf = 0; hf < 2; hf++) {
                const int j = 2 * m + hf;
                const float2 gm = *(const float2 *)(R + PF_REC_GAMMA + (8 * j + 2 * t) * 4);
                S[j][0] *= gm.x;
                S[j][1] *= gm.y;
                S[j][2] *= gm.x;
                S[j][3] *= gm.y;
                mma_bf16_16816(S[j], vp, kb[2 * hf], kb[2 * hf + 1], S[j]);
            }
        }

        /* O += Mqk Vnew. */
        {
            uint32_t mq[4];
            ldsm_x4(mq, smem_addr(R + PF_REC_MQK + ((lane & 7) + 8 * ((lane >> 3) & 1)) * 32 + (lane >> 4) * 16));
            mma_bf16_16816(o[0], mq, vp[0], vp[2], o[0]);
            mma_bf16_16816(o[1], mq, vp[1], vp[3], o[1]);
        }

        /* Output: fragment (token g / g+8, values 2t..) -> shared tile -> 16-byte rows. */
        {
            unsigned char *OS = s_out + warp * CH_TILE16;
#pragma unroll
            for (int vt = 0; vt < 2; vt++) {
                *(uint32_t *)(OS + pf_swz16(g, vt) + 4 * t) = pack_bf16x2(o[vt][0], o[vt][1]);
                *(uint32_t *)(OS + pf_swz16(g + 8, vt) + 4 * t) = pack_bf16x2(o[vt][2], o[vt][3]);
            }
            __syncwarp();
            const int64_t tk = c * PF_CHUNK + vtok;
            if (tk < len) {
                const uint4 x = *(const uint4 *)(OS + pf_swz16(vtok, vhalf));
                *(uint4 *)(p.out + row * p.out_s[0] + (start + tk) * p.out_s[1] + h * p.out_s[2] + v0 + vhalf * 8) = x;
            }
        }

        /* Every warp is done with this stage: refill it with chunk c + CH_STAGES. */
        __syncthreads();
        if (threadIdx.x == 0 && c + CH_STAGES < nch) CH_ISSUE_RECORD(c + CH_STAGES, st);
        CH_ISSUE_V(c + CH_STAGES, st);
    }
#undef CH_ISSUE_RECORD
#undef CH_ISSUE_V

    chain_store_state(&p, n, h, v0, g, t, S);
#endif
}

cudaError_t pf_launch_chain(const pf_params *p, int vslice, cudaStream_t stream)
{
    const int nslices = PF_DV / vslice;
    const int64_t blocks = p->N * p->HV * nslices;
    if (blocks <= 0) return cudaSuccess;
    const size_t smem = pf_chain_smem_bytes(vslice);
    cudaError_t err = cudaFuncSetAttribute(pf_chain_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (err != cudaSuccess) return err;
    pf_chain_kernel<<<(unsigned)blocks, vslice * 2, smem, stream>>>(*p, nslices);
    return cudaGetLastError();
}

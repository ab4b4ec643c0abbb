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
 *   Vnew^T  = V^T bINV^T + S^T (-W)^T         16 x 16; S^T (-W)^T in four chains of 4 k-steps
 *   S^T     = S^T diag(gamma) + Vnew^T Kr     16 mma, the state update in place
 *   O       = Qd S + Mqk Vnew                 16 tokens x 16 values, fp32, one bf16 rounding
 *
 * The source order is the dependency order of the serial chain (S -> Vnew -> S'): the products
 * that do not feed the next chunk (U, O) are issued where they fill the chain's latencies, and a
 * chunk's output is stored during the next chunk.
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
    return (size_t)CH_STAGES * PF_REC_BYTES + (size_t)CH_STAGES * warps * CH_TILE16 + (size_t)warps * CH_TILE16 +
           CH_STAGES * sizeof(uint64_t);
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 /* sm_90 only: bulk copies and mbarrier tx */
static __device__ __forceinline__ void chain_load_state(const pf_params *p, int64_t n, int64_t h, int v0, int g, int t,
                                                        float S[16][4])
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

static __device__ __forceinline__ void chain_store_state(const pf_params *p, int64_t n, int64_t h, int v0, int g, int t,
                                                         const float S[16][4])
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

/* A warp's 16 rows of a segment array ([128 rows][128 keys] fp32, S^T layout). */
static __device__ __forceinline__ void chain_load_rows(const float *base, int v0, int g, int t, float S[16][4])
{
#pragma unroll
    for (int j = 0; j < 16; j++) {
        const float2 a = *(const float2 *)(base + (int64_t)(v0 + g) * PF_DK + 8 * j + 2 * t);
        const float2 b = *(const float2 *)(base + (int64_t)(v0 + g + 8) * PF_DK + 8 * j + 2 * t);
        S[j][0] = a.x;
        S[j][1] = a.y;
        S[j][2] = b.x;
        S[j][3] = b.y;
    }
}

static __device__ __forceinline__ void chain_store_rows(float *base, int v0, int g, int t, const float S[16][4])
{
#pragma unroll
    for (int j = 0; j < 16; j++) {
        *(float2 *)(base + (int64_t)(v0 + g) * PF_DK + 8 * j + 2 * t) = make_float2(S[j][0], S[j][1]);
        *(float2 *)(base + (int64_t)(v0 + g + 8) * PF_DK + 8 * j + 2 * t) = make_float2(S[j][2], S[j][3]);
    }
}
#endif

__global__ void __launch_bounds__(256, 1) pf_chain_kernel(const pf_params p, const pf_chain_plan plan)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    extern __shared__ __align__(128) unsigned char smem[];
    const int warps = blockDim.x >> 5;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = lane >> 2, t = lane & 3;

    /* Which job: blockIdx.x = ((n * HV + h) * segments + seg) * columns + column slice, where
     * pass A has twice the column slices (the second half run the transition M). */
    const int mode = plan.mode;
    const int64_t nseg = mode == PF_CHAIN_WHOLE ? 1 : mode == PF_CHAIN_SEG_A ? plan.P - 1 : plan.P;
    const int ncols = mode == PF_CHAIN_SEG_A ? 2 * plan.nslices : plan.nslices;
    int64_t bid = blockIdx.x;
    int slice = (int)(bid % ncols);
    bid /= ncols;
    const int64_t seg = bid % nseg;
    bid /= nseg;
    const int64_t h = bid % p.HV, n = bid / p.HV;
    const int trans = slice >= plan.nslices; /* pass A: a transition (M) slice */
    slice -= trans ? plan.nslices : 0;
    if (trans && seg == 0) return;                 /* M_0 is never needed: S_0 is known (uniform per CTA) */
    const int v0 = slice * warps * 16 + warp * 16; /* this warp's first value (or M) column */
    const int with_v = !trans, with_out = mode != PF_CHAIN_SEG_A;

    unsigned char *s_rec = smem;                                /* [stage][record] */
    unsigned char *s_v = smem + CH_STAGES * PF_REC_BYTES;       /* [stage][warp][tile] */
    unsigned char *s_out = s_v + CH_STAGES * warps * CH_TILE16; /* [warp][tile] */
    uint64_t *s_full = (uint64_t *)(s_out + warps * CH_TILE16); /* [stage] */

    int64_t row, start, len, slot0;
    pf_sequence(&p, n, &row, &start, &len, &slot0);
    int64_t nch = (len + PF_CHUNK - 1) / PF_CHUNK, cb = 0; /* chunks [cb, nch) */
    if (mode != PF_CHAIN_WHOLE) {
        cb = seg * plan.Lc;
        nch = cb + plan.Lc < nch ? cb + plan.Lc : nch;
        cb = cb < nch ? cb : nch;
    }
    const unsigned char *rec0 = p.records + (h * p.slots + slot0) * (int64_t)PF_REC_BYTES;
    const int64_t seg_off = ((n * p.HV + h) * plan.P + seg) * (int64_t)(PF_DV * PF_DK);

    if (threadIdx.x == 0) {
        for (int s = 0; s < CH_STAGES; s++) mbar_init(smem_addr(&s_full[s]), 1);
        mbar_fence_init();
    }
    __syncthreads();

    /* The start state: the caller's (or zero) at a sequence start; zero for pass A's B chains
     * after the first segment, the identity for its M chains; the merged state in pass C. */
    float S[16][4];
    if (mode == PF_CHAIN_SEG_C) {
        chain_load_rows(plan.seg_S + seg_off, v0, g, t, S);
    } else if (seg == 0) {
        chain_load_state(&p, n, h, v0, g, t, S);
        /* Pass C starts segment 0 from this copy, so the caller's initial state is only read in
         * pass A and final_state may be the same tensor (an in-place update). */
        if (mode == PF_CHAIN_SEG_A) chain_store_rows(plan.seg_S + seg_off, v0, g, t, S);
    } else {
#pragma unroll
        for (int j = 0; j < 16; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int key = 8 * j + 2 * t + (e & 1), col = v0 + g + 8 * (e >> 1);
                S[j][e] = trans && key == col ? 1.0f : 0.0f;
            }
    }

    /* Producers: thread 0 moves records, each warp its own v slice (16 tokens x 16 values,
     * lane = token * 2 + half). */
    const int vtok = lane >> 1, vhalf = lane & 1;
    const uint16_t *vsrc = p.v + row * p.v_s[0] + h * p.v_s[2] + v0 + vhalf * 8;
#define CH_ISSUE_RECORD(chunk, stage)                                                                                \
    do {                                                                                                             \
        const uint32_t mb_ = smem_addr(&s_full[stage]);                                                              \
        mbar_arrive_expect_tx(mb_, PF_REC_BYTES);                                                                    \
        bulk_copy_g2s(smem_addr(s_rec + (stage)*PF_REC_BYTES), rec0 + (chunk) * (int64_t)PF_REC_BYTES, PF_REC_BYTES, \
                      mb_);                                                                                          \
    } while (0)
#define CH_ISSUE_V(chunk, stage)                                                                                    \
    do {                                                                                                            \
        if (with_v && (chunk) < nch) {                                                                              \
            const int64_t tk_ = (chunk)*PF_CHUNK + vtok;                                                            \
            const int ok_ = tk_ < len;                                                                              \
            cp_async_16(smem_addr(s_v + ((stage)*warps + warp) * CH_TILE16 + pf_swz16(vtok, vhalf)),                \
                        ok_ ? (const void *)(vsrc + (start + tk_) * p.v_s[1]) : (const void *)p.v, ok_ ? 16u : 0u); \
        }                                                                                                           \
        cp_async_commit();                                                                                          \
    } while (0)

    if (threadIdx.x == 0)
        for (int s = 0; s < CH_STAGES; s++)
            if (cb + s < nch) CH_ISSUE_RECORD(cb + s, s);
    for (int s = 0; s < CH_STAGES; s++) CH_ISSUE_V(cb + s, s);

    const float zero4[4] = {0.f, 0.f, 0.f, 0.f};
    unsigned char *OS = s_out + warp * CH_TILE16;

    /* The state in bf16: A fragments of S^T (and B fragments of S). Loop-carried: each chunk
     * packs the next chunk's copy as soon as its state update is done. */
    uint32_t sa[8][4];
#define CH_PACK_STATE()                                                  \
    do {                                                                 \
        _Pragma("unroll") for (int kk = 0; kk < 8; kk++)                 \
        {                                                                \
            sa[kk][0] = pack_bf16x2(S[2 * kk][0], S[2 * kk][1]);         \
            sa[kk][1] = pack_bf16x2(S[2 * kk][2], S[2 * kk][3]);         \
            sa[kk][2] = pack_bf16x2(S[2 * kk + 1][0], S[2 * kk + 1][1]); \
            sa[kk][3] = pack_bf16x2(S[2 * kk + 1][2], S[2 * kk + 1][3]); \
        }                                                                \
    } while (0)
    CH_PACK_STATE();

    /* The output of a chunk is stored one iteration later, so that its mma chains run while the
     * next chunk's critical products are in flight: fragment (token g / g+8, values 2t..) ->
     * shared tile -> 16 contiguous bytes per lane. */
    float o[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#define CH_STORE_OUTPUT(chunk)                                                                                        \
    do {                                                                                                              \
        _Pragma("unroll") for (int vt = 0; vt < 2; vt++)                                                              \
        {                                                                                                             \
            *(uint32_t *)(OS + pf_swz16(g, vt) + 4 * t) = pack_bf16x2(o[vt][0], o[vt][1]);                            \
            *(uint32_t *)(OS + pf_swz16(g + 8, vt) + 4 * t) = pack_bf16x2(o[vt][2], o[vt][3]);                        \
        }                                                                                                             \
        __syncwarp();                                                                                                 \
        const int64_t tk_ = (chunk)*PF_CHUNK + vtok;                                                                  \
        if (with_out && (chunk) >= cb && tk_ < len) {                                                                 \
            const uint4 x_ = *(const uint4 *)(OS + pf_swz16(vtok, vhalf));                                            \
            *(uint4 *)(p.out + row * p.out_s[0] + (start + tk_) * p.out_s[1] + h * p.out_s[2] + v0 + vhalf * 8) = x_; \
        }                                                                                                             \
    } while (0)

    for (int64_t c = cb; c < nch; c++) {
        const int st = (int)((c - cb) % CH_STAGES);
        const unsigned char *R = s_rec + st * PF_REC_BYTES;
        const unsigned char *VT = s_v + (st * warps + warp) * CH_TILE16;

        CP_ASYNC_WAIT(CH_STAGES - 1);
        __syncwarp();
        mbar_wait(smem_addr(&s_full[st]), (uint32_t)(((c - cb) / CH_STAGES) & 1));

        /* The critical chain first: S^T (-W)^T in four 4-deep chains (token tile x key half). */
        float vn[2][2][4]; /* [key half][token tile] */
#pragma unroll
        for (int kk = 0; kk < 8; kk++) {
            uint32_t wb[4];
            ldsm_x4(wb,
                    smem_addr(R + PF_REC_NEGW + pf_swz_unit((lane & 7) + 8 * (lane >> 4), 2 * kk + ((lane >> 3) & 1))));
            float(*acc)[4] = vn[kk >> 2];
            mma_bf16_16816(acc[0], sa[kk], wb[0], wb[1], (kk & 3) ? acc[0] : zero4);
            mma_bf16_16816(acc[1], sa[kk], wb[2], wb[3], (kk & 3) ? acc[1] : zero4);
        }

        /* The previous chunk's output, now that its products are done. */
        CH_STORE_OUTPUT(c - 1);

        /* U^T = V^T bINV^T (bINV as hi + lo): A = V^T by a transposed load of the [token][value]
         * tile. Off the chain: it does not depend on the state. */
        float u[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
        if (with_v) { /* uniform per CTA */
            uint32_t va[4], bh[4], bl[4];
            const int mi = lane >> 3, r = lane & 7;
            ldsm_x4_trans(va, smem_addr(VT + pf_swz16(r + 8 * (mi >> 1), mi & 1)));
            const uint32_t boff = ((lane & 7) + 8 * (lane >> 4)) * 32 + ((lane >> 3) & 1) * 16;
            ldsm_x4(bh, smem_addr(R + PF_REC_BINV + boff));
            ldsm_x4(bl, smem_addr(R + PF_REC_BINV_LO + boff));
            mma_bf16_16816(u[0], va, bl[0], bl[1], zero4);
            mma_bf16_16816(u[1], va, bl[2], bl[3], zero4);
            mma_bf16_16816(u[0], va, bh[0], bh[1], u[0]);
            mma_bf16_16816(u[1], va, bh[2], bh[3], u[1]);
        }

        /* S^T diag(gamma) meanwhile (the bf16 copy sa still holds the old state). */
#pragma unroll
        for (int j = 0; j < 16; j++) {
            const float2 gm = *(const float2 *)(R + PF_REC_GAMMA + (8 * j + 2 * t) * 4);
            S[j][0] *= gm.x;
            S[j][1] *= gm.y;
            S[j][2] *= gm.x;
            S[j][3] *= gm.y;
        }

        /* Vnew^T in bf16: the A fragment (m = values, k = tokens) of the state update, and the B
         * fragments (k = tokens, n = values) of Mqk Vnew. */
        uint32_t vp[4];
#pragma unroll
        for (int e = 0; e < 2; e++) {
            vp[2 * e] = pack_bf16x2(u[e][0] + (vn[0][e][0] + vn[1][e][0]), u[e][1] + (vn[0][e][1] + vn[1][e][1]));
            vp[2 * e + 1] = pack_bf16x2(u[e][2] + (vn[0][e][2] + vn[1][e][2]), u[e][3] + (vn[0][e][3] + vn[1][e][3]));
        }

        /* S^T += Vnew^T Kr (B = Kr by transposed loads: k = tokens, n = keys). */
#pragma unroll
        for (int m = 0; m < 8; m++) {
            uint32_t kb[4];
            ldsm_x4_trans(
                kb, smem_addr(R + PF_REC_KR + pf_swz_unit((lane & 7) + 8 * ((lane >> 3) & 1), 2 * m + (lane >> 4))));
            mma_bf16_16816(S[2 * m], vp, kb[0], kb[1], S[2 * m]);
            mma_bf16_16816(S[2 * m + 1], vp, kb[2], kb[3], S[2 * m + 1]);
        }

        /* O = Qd S + Mqk Vnew (Mqk as hi + lo), in four chains, while the update completes. */
        if (with_out) {
            float oh[2][4];
#pragma unroll
            for (int kk = 0; kk < 8; kk++) {
                uint32_t qa[4];
                ldsm_x4(qa, smem_addr(R + PF_REC_QD +
                                      pf_swz_unit((lane & 7) + 8 * ((lane >> 3) & 1), 2 * kk + (lane >> 4))));
                float(*acc)[4] = kk < 4 ? o : oh;
                mma_bf16_16816(acc[0], qa, sa[kk][0], sa[kk][2], (kk & 3) ? acc[0] : zero4);
                mma_bf16_16816(acc[1], qa, sa[kk][1], sa[kk][3], (kk & 3) ? acc[1] : zero4);
            }
            uint32_t mh[4], ml[4];
            const uint32_t moff = ((lane & 7) + 8 * ((lane >> 3) & 1)) * 32 + (lane >> 4) * 16;
            ldsm_x4(mh, smem_addr(R + PF_REC_MQK + moff));
            ldsm_x4(ml, smem_addr(R + PF_REC_MQK_LO + moff));
            mma_bf16_16816(o[0], ml, vp[0], vp[2], o[0]);
            mma_bf16_16816(o[1], ml, vp[1], vp[3], o[1]);
            mma_bf16_16816(oh[0], mh, vp[0], vp[2], oh[0]);
            mma_bf16_16816(oh[1], mh, vp[1], vp[3], oh[1]);
#pragma unroll
            for (int e = 0; e < 4; e++) {
                o[0][e] += oh[0][e];
                o[1][e] += oh[1][e];
            }
        }

        CH_PACK_STATE();

        /* Every warp is done with this stage: refill it with chunk c + CH_STAGES. */
        __syncthreads();
        if (threadIdx.x == 0 && c + CH_STAGES < nch) CH_ISSUE_RECORD(c + CH_STAGES, st);
        CH_ISSUE_V(c + CH_STAGES, st);
    }
    if (nch > cb) CH_STORE_OUTPUT(nch - 1);
#undef CH_PACK_STATE
#undef CH_STORE_OUTPUT
#undef CH_ISSUE_RECORD
#undef CH_ISSUE_V

    if (mode == PF_CHAIN_WHOLE || (mode == PF_CHAIN_SEG_C && seg == plan.P - 1))
        chain_store_state(&p, n, h, v0, g, t, S);
    else if (mode == PF_CHAIN_SEG_A)
        chain_store_rows((trans ? plan.seg_M : plan.seg_B) + seg_off, v0, g, t, S);
#endif
}

cudaError_t pf_launch_chain(const pf_params *p, const pf_chain_plan *plan, cudaStream_t stream)
{
    const int vslice = PF_DV / plan->nslices;
    const int64_t nseg = plan->mode == PF_CHAIN_WHOLE ? 1 : plan->mode == PF_CHAIN_SEG_A ? plan->P - 1 : plan->P;
    const int64_t ncols = plan->mode == PF_CHAIN_SEG_A ? 2 * plan->nslices : plan->nslices;
    const int64_t blocks = p->N * p->HV * nseg * ncols;
    if (blocks <= 0) return cudaSuccess;
    if (blocks > INT32_MAX) return cudaErrorInvalidConfiguration; /* gridDim.x limit */
    const size_t smem = pf_chain_smem_bytes(vslice);
    cudaError_t err = cudaFuncSetAttribute(pf_chain_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           (int)pf_chain_smem_bytes(PF_DV));
    if (err != cudaSuccess) return err;
    pf_chain_kernel<<<(unsigned)blocks, vslice * 2, smem, stream>>>(*p, *plan);
    return cudaGetLastError();
}

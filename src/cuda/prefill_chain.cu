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
 *
 * The output on warps of its own (over whole sequences, where the launch takes it,
 * prefill_launch.cu: pf_chain_kernel_split, the bf16 chain with bf16 output, and
 * pf_chain16_kernel_split_*, the fp16 chain, whose handoff also carries the held scale's e): O is
 * off the serial chain, but a warp issues in order, so with one chain warp per scheduler (few
 * heads) its 20 mma and its store lengthen every step. With split, a CTA holds the chain warps
 * and as many output warps above them, one per chain warp and its 16 columns. In chunk c's
 * iteration the chain warp puts the output's operands in a handoff slot (c mod 2): the state's
 * 16-bit copy before the update (its A fragments, which O reads as B fragments of S) and Vnew;
 * the output warp forms chunk c - 1's O from slot (c - 1) mod 2 and the record stage of c - 1,
 * and stores it. The iteration's barrier orders each slot's writes before its reads and its reads
 * before its next writes, two chunks later; the record stage of c - 1 is refilled after the
 * barrier of iteration c, by an output warp (so the ring fetches three chunks ahead instead of
 * four). The products and their operands are the unsplit kernel's, so are the bits of the output
 * and the states. The body is prefill_chain_run.cuh, compiled as chain_run and as
 * chain_run_split.
 *
 * The fp16 chain (fp16 and fp32 q, k, v; kernels pf_chain16_*): the same step on fp16 operands
 * (mma .f16, the record of prefill_common.cuh's fp16 family, v read in its own dtype and rounded
 * to fp16 here; fp16 v at the held scale 1 is used in place), with 11 significant bits where
 * bf16 has 8 (dev/numerics/README.md, plan (m)).
 * fp16's range is the price, so each warp holds its state, v, Vnew and output scaled by 2^-e:
 * every product of a step is linear in (v, S) jointly (U = v bINV - W S, O = Qd S + Mqk U,
 * S' = gamma S + Kr^T U), so the scaling is exact, and 2^e goes back onto the output and onto
 * every state stored. At each chunk the warp checks its largest |operand| of the state's fp16
 * copy and of the chunk's v: above CH16_HI, or every one below CH16_LO, e moves (decided on the
 * fp32 values) so that the largest held value lands in [8, 16) (the state rescaled in place, its
 * copy repacked). Why CH16_HI = 64 is safe: in a chunk of the fp16 domain (|bINV| <= 8, each row
 * of W of norm <= 2.84: prefill_prep_steps.cuh, prep_row_in_fp16) |Vnew| <= (4 + 15 * 8) * 64 +
 * 2.84 * sqrt(128) * 64 ~ 1.0e4 (a row of bINV on v, plus a row of W on a column of S), inside
 * fp16's 65504 with a margin of 6; the state's copy and v are <= 64 by the check. A chunk outside
 * the domain (bf16 record, flagged) takes the bf16 step instead, on the same held state.
 *
 * Where the check sits: not ahead of the chunk's first product, where it would lengthen the
 * serial chain, but after -W S, the previous chunk's output store and U have been issued on the
 * state's fp16 copy and the fp16 v operand as they stand (18 three-input half2 maxima and two
 * votes, while the products run). That is exact: before the check nothing has changed the held
 * state (S, its copy, e; the decay and the update come after it), the products' results (vn, u)
 * are used only if it passes, and passing bounds the very operands they read. If it fails, or the
 * chunk is flagged, a slow path rescales and redoes -W S, the v operand and U in the chunk's
 * format; the products that read an out-of-range copy (an fp16 infinity, say) are thrown away.
 * (In the kernels whose chunk loop has two copies, prefill_chain_step.cuh, the slow path is the
 * second copy's: the first leaves for it at a failed check and starts the chunk again there.)
 * Where the slow path neither rescales nor has a flagged chunk (an all-zero warp, say), the redone
 * products would be the ones held, and are skipped.
 */
#include "cuda_internal.h"
#include "prefill_chain_io.cuh"
#include "prefill_common.cuh"
#include "ptx_copy.cuh"
#include "ptx_mbarrier.cuh"
#include "ptx_mma.cuh"
#include "ptx_sync.cuh"
#include "prefill_select.h"

#define CH_STAGES 4
#define CH_TILE16 512    /* bytes of one 16 x 16 bf16 tile (a warp's v slice) */
#define CH_OUT_TILE 1024 /* a warp's output tile: 16 x 16 bf16, or fp32 for other outputs */
#define CH_VRAW16 1024   /* the fp16 chain: a warp's v slice as read, 32 bytes per lane (8 values) */
#define CH16_HI 64.0f    /* the fp16 chain's window for its held values (see above) */
#define CH16_LO 0.015625f

size_t pf_chain_smem_bytes(int vslice)
{
    const int warps = vslice / 16;
    return (size_t)CH_STAGES * PF_REC_BYTES + (size_t)CH_STAGES * warps * CH_TILE16 + (size_t)warps * CH_OUT_TILE +
           CH_STAGES * sizeof(uint64_t);
}

/* The handoff from a chain warp to its output warp: two slots, each the bf16 copy of S^T before the
 * chunk's update (8 A fragments) and Vnew^T (one), 16 bytes per lane each: [slot][warp][9][lane]. */
#define CH_HAND_WARP (9 * 32 * 16)

/* The fp16 chain: v slices as read (fp16 or fp32), and each warp's fp16 operand tile of v. */
size_t pf_chain16_smem_bytes(int vslice)
{
    const int warps = vslice / 16;
    return (size_t)CH_STAGES * PF_REC_BYTES + (size_t)CH_STAGES * warps * CH_VRAW16 + (size_t)warps * CH_OUT_TILE +
           (size_t)warps * CH_TILE16 + CH_STAGES * sizeof(uint64_t);
}

/* The chain with its output on warps of their own: the same ring and v tiles, output tiles for
 * the output warps, and the handoff slots (the fp16 chain's with the held scale's e). */
static size_t pf_chain_split_smem_bytes(int vslice, int f16)
{
    const int warps = vslice / 16;
    if (f16) return pf_chain16_smem_bytes(vslice) + (size_t)2 * warps * (CH_HAND_WARP + sizeof(int));
    return pf_chain_smem_bytes(vslice) + (size_t)2 * warps * CH_HAND_WARP;
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 /* used by the sm_90 chain only */
/* The fp16 chain: a lane's 8 values of v as read (fp32 when v4, else fp16), widened. */
static __device__ __forceinline__ void ch_read_v8(const unsigned char *raw, int v4, float vf[8])
{
    if (v4) {
        const float4 a = *(const float4 *)raw, b = *(const float4 *)(raw + 16);
        vf[0] = a.x, vf[1] = a.y, vf[2] = a.z, vf[3] = a.w;
        vf[4] = b.x, vf[5] = b.y, vf[6] = b.z, vf[7] = b.w;
    } else {
        const uint4 x = *(const uint4 *)raw;
        const uint32_t w[4] = {x.x, x.y, x.z, x.w};
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const float2 f = __half22float2(*(const __half2 *)&w[e]);
            vf[2 * e] = f.x;
            vf[2 * e + 1] = f.y;
        }
    }
}

/* Where a lane's 8 values of v land in its warp's v slot: fp32 (v4) as read, 32 bytes a lane
 * (lane = token * 2 + half); fp16 in the swizzled 16 x 16 layout of the operand tile (the bf16
 * chain's v tile), so that at e = 0 the slot is U's operand itself. */
static __device__ __forceinline__ int ch_vraw_at(int v4, int vtok, int vhalf)
{
    return v4 ? (2 * vtok + vhalf) * 32 : (int)pf_swz16(vtok, vhalf);
}

/* 2^x as an fp32, for x in [-126, 127]. */
static __device__ __forceinline__ float ch_pow2(int x) { return __int_as_float((127 + x) << 23); }

/* The fp16 chain's v operand: a lane's 8 values times 2^-e, rounded to fp16 (as fp16x2 pairs, in
 * column order). fp16 v at e = 0 is its own operand: the product by 1 and the rounding are exact. */
static __device__ __forceinline__ uint4 ch_v_f16(const unsigned char *raw, int v4, int e)
{
    if (!v4 && e == 0) return *(const uint4 *)raw;
    float vf[8];
    ch_read_v8(raw, v4, vf);
    const float sc = ch_pow2(-e);
    return make_uint4(pack_f16x2(vf[0] * sc, vf[1] * sc), pack_f16x2(vf[2] * sc, vf[3] * sc),
                      pack_f16x2(vf[4] * sc, vf[5] * sc), pack_f16x2(vf[6] * sc, vf[7] * sc));
}

/* The largest |x| over a lane's fp16 operands: the state's copy sa and its v pairs, as fp32 (a NaN
 * is skipped, as fmaxf does; an fp16 infinity counts). A tree of three-input half2 maxima with the
 * absolute value folded in (36 registers -> 12 -> 4 -> 1): 18 instructions, 4 deep, so that the
 * branch on it waits little behind the products issued before it. */
static __device__ __forceinline__ __half2 ch_hmax3(__half2 a, __half2 b, __half2 c)
{
    return __hmax2(__hmax2(a, b), c);
}
static __device__ __forceinline__ float ch16_operand_max(const uint32_t (*sa)[4], uint4 vh)
{
    __half2 x[36];
#pragma unroll
    for (int kk = 0; kk < 8; kk++)
#pragma unroll
        for (int i = 0; i < 4; i++) x[4 * kk + i] = __habs2(*(const __half2 *)&sa[kk][i]);
    const uint32_t w[4] = {vh.x, vh.y, vh.z, vh.w};
#pragma unroll
    for (int i = 0; i < 4; i++) x[32 + i] = __habs2(*(const __half2 *)&w[i]);
#pragma unroll
    for (int i = 0; i < 12; i++) x[i] = ch_hmax3(x[3 * i], x[3 * i + 1], x[3 * i + 2]);
#pragma unroll
    for (int i = 0; i < 4; i++) x[i] = ch_hmax3(x[3 * i], x[3 * i + 1], x[3 * i + 2]);
    const __half2 m = __hmax2(__hmax2(x[0], x[1]), __hmax2(x[2], x[3]));
    return fmaxf(__low2float(m), __high2float(m));
}

/* The lane's largest |held state| in fp32 (the rescale's exact measure). */
static __device__ __forceinline__ float ch16_state_max(const float (*S)[4])
{
    float m0 = 0.0f, m1 = 0.0f;
#pragma unroll
    for (int j = 0; j < 16; j += 2) {
        m0 = fmaxf(m0, fmaxf(fmaxf(fabsf(S[j][0]), fabsf(S[j][1])), fmaxf(fabsf(S[j][2]), fabsf(S[j][3]))));
        m1 = fmaxf(m1,
                   fmaxf(fmaxf(fabsf(S[j + 1][0]), fabsf(S[j + 1][1])), fmaxf(fabsf(S[j + 1][2]), fabsf(S[j + 1][3]))));
    }
    return fmaxf(m0, m1);
}
#endif

#define CH_RUN chain_run
#define CH_SPLIT 0
#define CH_COPIES 0
#include "prefill_chain_run.cuh"
#undef CH_RUN
#undef CH_SPLIT
#undef CH_COPIES
#define CH_RUN chain_run_split
#define CH_SPLIT 1
#define CH_COPIES 0
#include "prefill_chain_run.cuh"
#undef CH_RUN
#undef CH_SPLIT
#undef CH_COPIES
/* The fp16 chain's kernels: the chunk loop in two copies (prefill_chain_step.cuh). */
#define CH_RUN chain_run_copies
#define CH_SPLIT 0
#define CH_COPIES 1
#include "prefill_chain_run.cuh"
#undef CH_RUN
#undef CH_SPLIT
#undef CH_COPIES
#define CH_RUN chain_run_split_copies
#define CH_SPLIT 1
#define CH_COPIES 1
#include "prefill_chain_run.cuh"
#undef CH_RUN
#undef CH_SPLIT
#undef CH_COPIES

__global__ void __launch_bounds__(256, 1) pf_chain_kernel(const pf_params p, const pf_chain_plan plan)
{
    chain_run(p, plan, PF_OUT_BF16, 0);
}
/* The bf16 chain with bf16 output, each 16-column chain on a chain warp and an output warp. */
__global__ void __launch_bounds__(256, 1) pf_chain_kernel_split(const pf_params p, const pf_chain_plan plan)
{
    chain_run_split(p, plan, PF_OUT_BF16, 0);
}
__global__ void __launch_bounds__(256, 1) pf_chain_kernel_f16_out(const pf_params p, const pf_chain_plan plan)
{
    chain_run(p, plan, PF_OUT_F16, 0);
}
__global__ void __launch_bounds__(256, 1) pf_chain_kernel_any_out(const pf_params p, const pf_chain_plan plan)
{
    chain_run(p, plan, PF_OUT_ANY, 0);
}
/* The fp16 chain (fp16 and fp32 q, k, v: the output is fp16 or goes through the fp32 tile). */
__global__ void __launch_bounds__(256, 1) pf_chain16_kernel_f16_out(const pf_params p, const pf_chain_plan plan)
{
    chain_run_copies(p, plan, PF_OUT_F16, 1);
}
__global__ void __launch_bounds__(256, 1) pf_chain16_kernel_any_out(const pf_params p, const pf_chain_plan plan)
{
    chain_run_copies(p, plan, PF_OUT_ANY, 1);
}
/* The fp16 chain with its output warps. */
__global__ void __launch_bounds__(256, 1) pf_chain16_kernel_split_f16_out(const pf_params p, const pf_chain_plan plan)
{
    chain_run_split_copies(p, plan, PF_OUT_F16, 1);
}
__global__ void __launch_bounds__(256, 1) pf_chain16_kernel_split_any_out(const pf_params p, const pf_chain_plan plan)
{
    chain_run_split_copies(p, plan, PF_OUT_ANY, 1);
}

cudaError_t pf_launch_chain(const pf_params *p, const pf_chain_plan *plan, cudaStream_t stream)
{
    const int vslice = (int)(p->vpad / plan->nslices);
    const int64_t nseg = plan->mode == PF_CHAIN_WHOLE ? 1 : plan->mode == PF_CHAIN_SEG_A ? plan->P - 1 : plan->P;
    const int64_t ncols = plan->mode == PF_CHAIN_SEG_A ? 2 * plan->nslices : plan->nslices;
    const int64_t blocks = p->N * p->HV * nseg * ncols;
    if (blocks <= 0) return cudaSuccess;
    if (blocks > INT32_MAX) return cudaErrorInvalidConfiguration; /* gridDim.x limit */
    const int split = plan->split_out && plan->mode == PF_CHAIN_WHOLE &&
                      fkda_prefill_split_out_serves(p->fp16_chain, p->out_mode == PF_OUT_BF16, vslice);
    const size_t smem = split           ? pf_chain_split_smem_bytes(vslice, p->fp16_chain)
                        : p->fp16_chain ? pf_chain16_smem_bytes(vslice)
                                        : pf_chain_smem_bytes(vslice);
    void (*kernel)(const pf_params, const pf_chain_plan) = p->out_mode == PF_OUT_BF16  ? pf_chain_kernel
                                                           : p->out_mode == PF_OUT_F16 ? pf_chain_kernel_f16_out
                                                                                       : pf_chain_kernel_any_out;
    if (p->fp16_chain) kernel = p->out_mode == PF_OUT_F16 ? pf_chain16_kernel_f16_out : pf_chain16_kernel_any_out;
    if (split)
        kernel = !p->fp16_chain              ? pf_chain_kernel_split
                 : p->out_mode == PF_OUT_F16 ? pf_chain16_kernel_split_f16_out
                                             : pf_chain16_kernel_split_any_out;
    cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           (int)(split           ? pf_chain_split_smem_bytes(64, p->fp16_chain)
                                                 : p->fp16_chain ? pf_chain16_smem_bytes(PF_DV)
                                                                 : pf_chain_smem_bytes(PF_DV)));
    if (err != cudaSuccess) return err;
    void *args[] = {(void *)p, (void *)plan};
    return fkda_launch_kernel((const void *)kernel, dim3((unsigned)blocks), dim3(vslice * (split ? 4 : 2)), args, smem,
                              stream); /* this launch's error only (prefill_common.cuh) */
}

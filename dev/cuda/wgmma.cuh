/*
 * wgmma.cuh: the warpgroup tensor-core instructions of the dev/cuda chain benches, as inline PTX in
 * the style of src/cuda/ptx_*.cuh: the shared-memory matrix descriptor of a K-major swizzled B
 * operand, fence / commit / wait, and wgmma.mma_async m64nNk16 (bf16 in, fp32 accumulate, A from
 * registers) for N = 16, 64 and 128. Not used by the library yet; a shipped wgmma chain would move
 * it to src/cuda.
 *
 * A warpgroup is 4 consecutive warps starting at a warp index that is a multiple of 4; warp w of
 * it owns rows 16w..16w+15 of A and D (lane = 4g + t):
 *   D (m64nN, fp32, N/2 registers): d[4j + e] = (row 16w + g + 8 (e >> 1), column 8j + 2t + (e & 1)),
 *     N/8 side-by-side mma.sync m16n8 accumulators per warp;
 *   A (bf16, 4 registers): mma.sync m16n8k16's A layout per warp. Columns 16kk..16kk+15 of a D
 *     accumulator packed in register order (pack(d[8kk], d[8kk+1]), ..., pack(d[8kk+6], d[8kk+7]))
 *     are the A fragment of k-step kk.
 * Rules the callers follow: wgmma.fence before the first wgmma that reads registers written since
 * the last one (an A fragment, an accumulator); no accumulator read before the wait that covers
 * it, with reg_fence_* after the wait so that the compiler cannot move the reads above it; a
 * register A operand left unchanged until its group has been waited for.
 */
#ifndef FKDA_DEV_WGMMA_CUH
#define FKDA_DEV_WGMMA_CUH

#include <stdint.h>

#include "../../src/cuda/ptx_mma.cuh" /* pack_bf16x2 */

#define WG_SWIZZLE_128B 1ull
#define WG_SWIZZLE_32B 3ull

/* Shared-memory matrix descriptor of a K-major swizzled operand (leading byte offset unused: 1). */
static __device__ __forceinline__ uint64_t wg_desc(uint32_t saddr, uint32_t sbo_bytes, uint64_t swizzle)
{
    return (uint64_t)((saddr & 0x3FFFFu) >> 4) | (1ull << 16) | ((uint64_t)((sbo_bytes & 0x3FFFFu) >> 4) << 32) |
           (swizzle << 62);
}

static __device__ __forceinline__ void wg_fence(void) { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
static __device__ __forceinline__ void wg_commit(void)
{
    asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
}
static __device__ __forceinline__ void wg_wait0(void) { asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory"); }
static __device__ __forceinline__ void wg_wait1(void) { asm volatile("wgmma.wait_group.sync.aligned 1;" ::: "memory"); }

/* Ties a register to this point of the instruction stream: reads of an accumulator after a wait
 * cannot be moved above it, nor writes of an operand below the wgmma that reads it. */
static __device__ __forceinline__ void reg_fence_f(float *x) { asm volatile("" : "+f"(*x)::"memory"); }
static __device__ __forceinline__ void reg_fence_u(uint32_t *x) { asm volatile("" : "+r"(*x)::"memory"); }

/* d (m64n16, fp32) = A (registers, bf16) * B (descriptor) + (accumulate ? d : 0). */
static __device__ __forceinline__ void wg_mma_n16(float d[8], const uint32_t a[4], uint64_t desc_b, int accumulate)
{
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %13, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n16k16.f32.bf16.bf16 "
                 "{%0, %1, %2, %3, %4, %5, %6, %7}, {%8, %9, %10, %11}, %12, p, 1, 1, 0;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(accumulate)
                 : "memory");
}

/* d (m64n128, fp32) += A (registers, bf16) * B (descriptor). */
static __device__ __forceinline__ void wg_mma_n128(float d[64], const uint32_t a[4], uint64_t desc_b)
{
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
                 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, "
                 "%21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, "
                 "%40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, "
                 "%59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, p, 1, 1, 0;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
                   "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
                   "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]),
                   "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]),
                   "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]),
                   "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]),
                   "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]),
                   "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]),
                   "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(1)
                 : "memory");
}

/* d (m64n64, fp32, 32 registers) = A (registers, bf16) * B (descriptor) + (accumulate ? d : 0). */
static __device__ __forceinline__ void wg_mma_n64(float d[32], const uint32_t a[4], uint64_t desc_b, int accumulate)
{
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
                 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, "
                 "%21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, p, 1, 1, 0;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
                   "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
                   "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]),
                   "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]),
                   "+f"(d[30]), "+f"(d[31])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(accumulate)
                 : "memory");
}

/* Keeps A fragments that a wgmma group reads live (and unmoved) until here, the wait that covers
 * that group: the compiler does not know the group reads them after issue, and would otherwise
 * give their registers to a later value (ptxas then serializes every wgmma of the kernel). */
static __device__ __forceinline__ void wg_hold_frags(uint32_t x[][4], int n)
{
#pragma unroll
    for (int i = 0; i < n; i++)
#pragma unroll
        for (int e = 0; e < 4; e++) reg_fence_u(&x[i][e]);
}

/* An fp32 accumulator of n k-steps (8 n registers: columns 16 kk.. in registers 8 kk..8 kk + 7) as
 * the bf16 A fragments of those k-steps, the accumulator's columns becoming the next product's k. */
static __device__ __forceinline__ void wg_acc_to_frags(const float *acc, uint32_t fr[][4], int n)
{
#pragma unroll
    for (int kk = 0; kk < n; kk++) {
        fr[kk][0] = pack_bf16x2(acc[8 * kk], acc[8 * kk + 1]);
        fr[kk][1] = pack_bf16x2(acc[8 * kk + 2], acc[8 * kk + 3]);
        fr[kk][2] = pack_bf16x2(acc[8 * kk + 4], acc[8 * kk + 5]);
        fr[kk][3] = pack_bf16x2(acc[8 * kk + 6], acc[8 * kk + 7]);
    }
}

/* An m64n128 fp32 accumulator (64 registers: the state S^T of 64 value columns x 128 keys) as the
 * bf16 A fragments of its 8 key steps, held (wg_hold_frags). */
static __device__ __forceinline__ void wg_pack_state(const float S[64], uint32_t sa[8][4])
{
    wg_acc_to_frags(S, sa, 8);
    wg_hold_frags(sa, 8);
}

/* S^T diag(gamma): the state's key 8 j + 2 t + (e & 1) in S[4 j + e] (the m64n128 accumulator of
 * thread lane, t = lane & 3) times gamma of that key; gamma: 128 fp32 in shared memory. */
static __device__ __forceinline__ void wg_scale_state_keys(float S[64], const unsigned char *gamma, int t)
{
#pragma unroll
    for (int j = 0; j < 16; j++) {
        const float2 gm = *(const float2 *)(gamma + (8 * j + 2 * t) * 4);
        S[4 * j] *= gm.x;
        S[4 * j + 1] *= gm.y;
        S[4 * j + 2] *= gm.x;
        S[4 * j + 3] *= gm.y;
    }
}

#endif /* FKDA_DEV_WGMMA_CUH */

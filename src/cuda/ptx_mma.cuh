/*
 * ptx_mma.cuh: the warp-level tensor-core instructions the prefill kernels use, as inline PTX:
 * mma.sync m16n8k16 (bf16 or fp16 in, fp32 accumulate) and m16n8k8 (tf32 in), ldmatrix (plain
 * and transposed), and the fp32 -> bf16x2 packing that turns an accumulator fragment into an
 * operand fragment.
 *
 * Fragment layouts of mma.m16n8k16.row.col (lane = 4 * g + t, g = lane / 4, t = lane % 4):
 *   A (16 x 16, row-major m x k):  a0 = (g, 2t..2t+1)  a1 = (g+8, 2t..)  a2 = (g, 2t+8..)  a3 = (g+8, 2t+8..)
 *   B (16 x 8, k x n):             b0 = (k 2t..2t+1, n g)   b1 = (k 2t+8..2t+9, n g)
 *   C (16 x 8, fp32):              c0, c1 = (g, 2t..2t+1)   c2, c3 = (g+8, 2t..2t+1)
 * Two C tiles side by side (n-tiles j and j+1), packed to bf16, are exactly one A fragment whose
 * k block is those 16 columns; and the same registers are a B fragment of the transposed
 * product. The chain kernel relies on both identities (prefill_chain.cu).
 */
#ifndef FKDA_PTX_MMA_CUH
#define FKDA_PTX_MMA_CUH

#include <stdint.h>

/* d = a * b + c, bf16 operands, fp32 accumulators. d may alias c. */
static __device__ __forceinline__ void mma_bf16_16816(float d[4], const uint32_t a[4], uint32_t b0, uint32_t b1,
                                                      const float c[4])
{
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
}

/* The same with fp16 operands (the fp16 family's chain, prefill_chain.cu). */
static __device__ __forceinline__ void mma_f16_16816(float d[4], const uint32_t a[4], uint32_t b0, uint32_t b1,
                                                     const float c[4])
{
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
}

/* d = a * b + c, tf32 operands (fp32 bit patterns, of which the tensor core reads the sign, the
 * exponent and the top 10 mantissa bits; tf32_operand rounds them there first), fp32 accumulators.
 * Fragment layouts of mma.m16n8k8.row.col.tf32 (one value per register):
 *   A (16 x 8):  a0 = (g, t)  a1 = (g+8, t)  a2 = (g, t+4)  a3 = (g+8, t+4)
 *   B (8 x 8):   b0 = (k t, n g)   b1 = (k t+4, n g)
 *   C:           as m16n8k16's.
 * ldmatrix reads them from fp32 tiles as it reads 16-bit ones: a row of an 8x8 b16 matrix is 4
 * fp32 values, and lane l receives value l % 4 of row l / 4. */
static __device__ __forceinline__ void mma_tf32_1688(float d[4], const uint32_t a[4], uint32_t b0, uint32_t b1,
                                                     const float c[4])
{
    asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
}

/* An fp32 value as a tf32 operand of the mma above, rounded to nearest (ties away from zero): the
 * tensor core reads an operand's top 19 bits (sign, exponent, 10 mantissa bits) and ignores the low
 * 13, so adding half of the dropped unit first turns that truncation into the rounding that
 * cvt.rna.tf32 gives, in one integer add where cvt takes three instructions (a range test, the
 * add, a mask). A carry into the exponent is the rounding up, so every finite value and inf read
 * as cvt would give them; NaNs do not all stay NaN (0x7ffff000 .. 0x7fffffff, the hardware's own
 * 0x7fffffff among them, carry into the sign and read as -0; 0xfffff000 .. wrap to +0; 0x7f800001
 * .. 0x7f800fff read as inf, as after cvt): the callers' NaN operands come from NaN inputs that
 * reach the results by another path too. No document promises the truncation (CUTLASS's default
 * conversion relies on it as well); dev/cuda/tf32_operand_probe.cu checks it on a GPU. */
static __device__ __forceinline__ uint32_t tf32_operand(float x) { return __float_as_uint(x) + 0x1000u; }

/* Two fp32 values to one bf16x2 register (round to nearest even); `lo` lands in the low half,
 * which is the element with the smaller column index in every fragment above. */
static __device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi)
{
    uint32_t r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

/* The same for fp16 (round to nearest even). */
static __device__ __forceinline__ uint32_t pack_f16x2(float lo, float hi)
{
    uint32_t r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

/* Four 8x8 b16 matrices from shared memory; lane l gives the address of row l % 8 of matrix
 * l / 8 (16 bytes each), and register i receives matrix i in the fragment layout (lane holds row
 * lane / 4, elements 2 (lane % 4) and +1). Volatile with a memory clobber: these read buffers
 * that barriers hand over, and must not move across the waits. */
static __device__ __forceinline__ void ldsm_x4(uint32_t r[4], uint32_t saddr)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(saddr)
                 : "memory");
}

/* The same, transposed: lane holds column lane / 4, rows 2 (lane % 4) and +1 of each matrix. */
static __device__ __forceinline__ void ldsm_x4_trans(uint32_t r[4], uint32_t saddr)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(saddr)
                 : "memory");
}

static __device__ __forceinline__ uint32_t smem_addr(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }

#endif /* FKDA_PTX_MMA_CUH */

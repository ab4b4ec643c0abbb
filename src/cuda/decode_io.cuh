/*
 * decode_io.cuh: the CUDA decode's device loads and stores: elements of token tensors of any
 * dtype (the predicated loads of ptx_load.cuh, one instruction and no branch; the stores here),
 * 32- or 64-bit token offsets, and the state's 16-byte vectors (fp32, bf16) with their cache
 * hints. Included by decode_common.cuh.
 */
#ifndef FKDA_CUDA_DECODE_IO_CUH
#define FKDA_CUDA_DECODE_IO_CUH

#include <stdint.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "flashkda.h"
#include "ptx_load.cuh"

/* ---- scalar loads and stores of any dtype ------------------------------------------------- */

/* load_bits_split_if where SPLIT (a compile-time constant), else load_bits_if: the plain decode's
 * tile kernels load a token's tensors, A_log and dt_bias split, its packed kernels not (the
 * measurements in load_bits_split_if's comment). */
static __device__ __forceinline__ uint32_t load_bits_as(const int SPLIT, const void *base, int32_t dtype, int64_t i,
                                                        int ok)
{
    return SPLIT ? load_bits_split_if(base, dtype, i, ok) : load_bits_if(base, dtype, i, ok);
}

/* Element i of a float tensor of run-time dtype = x (rounded to nearest even): one predicated
 * store, as load_bits. */
static __device__ __forceinline__ void store_float(void *base, int32_t dtype, int64_t i, float x)
{
    const int wide = dtype == FKDA_DTYPE_F32;
    const unsigned short b16 = __bfloat16_as_ushort(__float2bfloat16_rn(x)), h16 = __half_as_ushort(__float2half_rn(x));
    const unsigned short half_bits = dtype == FKDA_DTYPE_BF16 ? b16 : h16;
    char *at = (char *)base + (i << (wide ? 2 : 1));
    asm volatile("{\n\t.reg .pred p;\n\t"
                 "setp.ne.s32 p, %3, 0;\n\t"
                 "@p st.global.b32 [%0], %1;\n\t"
                 "@!p st.global.b16 [%0], %2;\n\t}"
                 :
                 : "l"(at), "f"(x), "h"(half_bits), "r"(wide)
                 : "memory");
}

/* The element offset of (row, position, head) in a token tensor. The kernels compiled for
 * all-bf16 tokens with TOK = 1 compute it in 32 bits: their launch checked that every offset of
 * every token tensor fits in 31 bits (tokens_fit_31_bits), and each 64-bit multiply-add is three
 * instructions on a path that, at small batches, is the time. TOK = 2 (the narrow bf16-pool
 * kernels) keeps 64 bits: there the 32-bit offsets measured slower. */
static __device__ __forceinline__ int64_t token_offset(const int64_t *stride, int64_t row, int64_t pos, int64_t head,
                                                       const int TOK)
{
    if (TOK == 1)
        return (int32_t)row * (int32_t)stride[0] + (int32_t)pos * (int32_t)stride[1] +
               (int32_t)head * (int32_t)stride[2];
    return row * stride[0] + pos * stride[1] + head * stride[2];
}

/* Token tensors are addressed as one 64-bit pointer per (row, position, head), computed once,
 * plus a 32-bit offset per element (the launch checks |last stride| * 256 < 2^31): at small
 * batches every instruction on a warp's path is time, and 64-bit index arithmetic per element
 * was ~15 instructions per load. */
static __device__ __forceinline__ const char *token_vector(const void *base, const int64_t *stride, int32_t dtype,
                                                           int64_t row, int64_t pos, int64_t head, const int TOK)
{
    return (const char *)base + (token_offset(stride, row, pos, head, TOK) << (dtype == FKDA_DTYPE_F32 ? 2 : 1));
}

/* Element e of a token vector (stride in elements), in load_bits_as's form SPLIT. */
static __device__ __forceinline__ uint32_t load_elem(const char *vec, int32_t dtype, int e, int stride, const int SPLIT)
{
    return load_bits_as(SPLIT, vec, dtype, (int64_t)(e * stride), 1);
}

static __device__ __forceinline__ void store_elem(const char *vec, int32_t dtype, int e, int stride, float x)
{
    store_float((void *)vec, dtype, (int64_t)(e * stride), x);
}

static __device__ __forceinline__ int64_t load_index(const void *base, int32_t dtype, int64_t i)
{
    if (dtype == FKDA_DTYPE_I64) return ((const int64_t *)base)[i];
    return ((const int32_t *)base)[i];
}

/* Element i of an index tensor (int32 or int64) as raw 32-bit words, through one predicated
 * load that nothing uses yet (as load_bits_if): a caller issues all its index loads before
 * index_value converts any, so that their latencies overlap. (load_index's int32 path
 * sign-extends its result at once, into the register pair its int64 path loads, and the compiled
 * code waits for that load before it issues the next ones.) An int64 tensor is 8-byte aligned,
 * as load_index assumes. */
typedef struct index_words {
    uint32_t lo, hi;
} index_words;

static __device__ __forceinline__ index_words load_index_words_if(const void *base, int32_t dtype, int64_t i, int ok,
                                                                  index_words otherwise)
{
    index_words w = otherwise; /* kept where !ok: no load, and no branch either */
    const int wide = dtype == FKDA_DTYPE_I64;
    const char *at = (const char *)base + (i << (wide ? 3 : 2));
    asm volatile("{\n\t.reg .pred p, w;\n\t"
                 "setp.ne.s32 p, %4, 0;\n\t"
                 "setp.ne.and.s32 w, %3, 0, p;\n\t"
                 "setp.eq.and.s32 p, %3, 0, p;\n\t"
                 "@w ld.global.v2.u32 {%0, %1}, [%2];\n\t"
                 "@p ld.global.u32 %0, [%2];\n\t}"
                 : "+r"(w.lo), "+r"(w.hi)
                 : "l"(at), "r"(wide), "r"(ok));
    return w;
}

static __device__ __forceinline__ int64_t index_value(index_words w, int32_t dtype)
{
    return dtype == FKDA_DTYPE_I64 ? (int64_t)(((uint64_t)w.hi << 32) | w.lo) : (int64_t)(int32_t)w.lo;
}

/* ---- state vectors: VEC consecutive elements, 16 bytes when VEC > 1 (8 for 4 bf16) ------- */

static __device__ __forceinline__ float bf16_bits_to_float(uint32_t bits) { return __uint_as_float(bits << 16); }

/* Two floats to two bf16 (round to nearest even), `lo` in the low half. */
static __device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi)
{
    uint32_t r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

/* The address of element `off` of a state pool of 2- or 4-byte elements. */
static __device__ __forceinline__ void *state_at(const void *pool, int64_t off, const int BF16)
{
    return (char *)pool + off * (BF16 ? 2 : 4);
}

/* Cache hints for the pool's vectors. A call reads each state once and writes it once, so its
 * stores are streaming (st.global.cs: evict-first in L2; faster at every size) and so are its
 * loads (ld.global.cs) while the pool is small next to L2 (faster there, slower for pools many
 * times L2): the launch picks a kernel compiled with or without them (LOAD_EF).
 *
 * Loads VEC state elements starting at element `off` (scalar: one element at off); the vectors
 * as streaming loads with STREAM (global memory only). */
static __device__ __forceinline__ void load_state_vec(const void *base, int off, float *x, const int BF16,
                                                      const int VEC, const int STREAM)
{
    if (VEC == 1) {
        x[0] = BF16 ? bf16_bits_to_float(((const unsigned short *)base)[off]) : ((const float *)base)[off];
    } else if (BF16 == 2) { /* raw: each pair's word in its first float (finish_raw_tile converts) */
        if (VEC == 4) {
            const uint2 *at = (const uint2 *)((const unsigned short *)base + off);
            const uint2 u = STREAM ? __ldcs(at) : *at;
            x[0] = __uint_as_float(u.x);
            x[2] = __uint_as_float(u.y);
        } else {
            const uint4 *at = (const uint4 *)((const unsigned short *)base + off);
            const uint4 u = STREAM ? __ldcs(at) : *at;
            x[0] = __uint_as_float(u.x);
            x[2] = __uint_as_float(u.y);
            x[4] = __uint_as_float(u.z);
            x[6] = __uint_as_float(u.w);
        }
    } else if (BF16 && VEC == 4) { /* 8 bytes */
        const uint2 *at = (const uint2 *)((const unsigned short *)base + off);
        const uint2 u = STREAM ? __ldcs(at) : *at;
        x[0] = __uint_as_float(u.x << 16);
        x[1] = __uint_as_float(u.x & 0xffff0000u);
        x[2] = __uint_as_float(u.y << 16);
        x[3] = __uint_as_float(u.y & 0xffff0000u);
    } else if (BF16) { /* VEC == 8 */
        const uint4 *at = (const uint4 *)((const unsigned short *)base + off);
        const uint4 u = STREAM ? __ldcs(at) : *at;
        x[0] = __uint_as_float(u.x << 16);
        x[1] = __uint_as_float(u.x & 0xffff0000u);
        x[2] = __uint_as_float(u.y << 16);
        x[3] = __uint_as_float(u.y & 0xffff0000u);
        x[4] = __uint_as_float(u.z << 16);
        x[5] = __uint_as_float(u.z & 0xffff0000u);
        x[6] = __uint_as_float(u.w << 16);
        x[7] = __uint_as_float(u.w & 0xffff0000u);
    } else { /* VEC == 4 */
        const uint4 *at = (const uint4 *)((const float *)base + off);
        const uint4 u = STREAM ? __ldcs(at) : *at;
        x[0] = __uint_as_float(u.x);
        x[1] = __uint_as_float(u.y);
        x[2] = __uint_as_float(u.z);
        x[3] = __uint_as_float(u.w);
    }
}

/* Stores VEC state elements to global memory, the vectors as streaming stores. */
static __device__ __forceinline__ void store_state_vec(void *base, int off, const float *x, const int BF16,
                                                       const int VEC)
{
    if (VEC == 1) {
        if (BF16)
            ((__nv_bfloat16 *)base)[off] = __float2bfloat16_rn(x[0]);
        else
            ((float *)base)[off] = x[0];
    } else if (BF16 && VEC == 4) {
        __stcs((uint2 *)((unsigned short *)base + off), make_uint2(pack_bf16x2(x[0], x[1]), pack_bf16x2(x[2], x[3])));
    } else if (BF16) {
        uint4 u;
        u.x = pack_bf16x2(x[0], x[1]);
        u.y = pack_bf16x2(x[2], x[3]);
        u.z = pack_bf16x2(x[4], x[5]);
        u.w = pack_bf16x2(x[6], x[7]);
        __stcs((uint4 *)((unsigned short *)base + off), u);
    } else {
        __stcs((float4 *)((float *)base + off), make_float4(x[0], x[1], x[2], x[3]));
    }
}

#endif /* FKDA_CUDA_DECODE_IO_CUH */

/*
 * ptx_load.cuh: scalar loads of float tensors whose dtype (fp32, bf16, fp16) is a run-time value,
 * as predicated inline PTX: every form of a load is one instruction under a predicate, never a
 * branch, so that a thread issues all its loads before it waits for any; the conversions come
 * after them. Used by the decode (decode_io.cuh, decode_stage.cuh) and the prefill (the prep's
 * parameter and element loads, prefill_common.cuh; the split chain's initial state,
 * prefill_chain_io.cuh).
 */
#ifndef FKDA_PTX_LOAD_CUH
#define FKDA_PTX_LOAD_CUH

#include <stdint.h>

#include <cuda_fp16.h>

#include "flashkda.h"

/* The bits of element i of a float tensor of run-time dtype (f32: 32 bits; bf16, f16: 16 bits,
 * zero-extended). One predicated load in PTX, no branch: the caller converts later, so a warp
 * can have all its input loads in flight at once. (With a branch per dtype, the compiler puts
 * the conversion inside the branch, and every load then waits for the one before it.)
 * load_bits_if loads only where `ok` (else 0), inside the same instructions: no branch either.
 * `volatile`: an asm without it is a pure function to the compiler, which may then hoist it out
 * of a condition that guards it (it did: A_log's load ran with A_log NULL and faulted). */
static __device__ __forceinline__ uint32_t load_bits_if(const void *base, int32_t dtype, int64_t i, int ok)
{
    uint32_t bits = 0u; /* zero bits are 0.0 in every dtype */
    const int wide = dtype == FKDA_DTYPE_F32;
    const char *at = (const char *)base + (i << (wide ? 2 : 1));
    asm volatile("{\n\t.reg .pred p, w;\n\t"
                 "setp.ne.s32 p, %3, 0;\n\t"
                 "setp.ne.and.s32 w, %2, 0, p;\n\t"
                 "setp.eq.and.s32 p, %2, 0, p;\n\t"
                 "@w ld.global.b32 %0, [%1];\n\t"
                 "@p ld.global.u16 %0, [%1];\n\t}"
                 : "+r"(bits)
                 : "l"(at), "r"(wide), "r"(ok));
    return bits;
}

static __device__ __forceinline__ uint32_t load_bits(const void *base, int32_t dtype, int64_t i)
{
    return load_bits_if(base, dtype, i, 1);
}

/* load_bits_if with each form loading into its own register (*bits32 the 32-bit form's bits,
 * *bits16 the 16-bit form's, 0 where a form does not load): the element's bits are their or. In
 * load_bits_if both forms load into one register, and the compiled code makes the second load
 * wait for the first (a write after write: the wait is in the second instruction, whatever its
 * predicate), a whole DRAM latency where the tensor is fp32, before any later load issues. The
 * compiled code places the or soon after the loads, interleaved with the next loads' address
 * arithmetic, and waits there: a caller that issues other loads after these keeps the two parts
 * until after them (load_v). */
static __device__ __forceinline__ void load_bits_pair_if(const void *base, int32_t dtype, int64_t i, int ok,
                                                         uint32_t *bits32, uint32_t *bits16)
{
    uint32_t b32 = 0u, b16 = 0u; /* zero bits are 0.0 in every dtype */
    const int wide = dtype == FKDA_DTYPE_F32;
    const char *at = (const char *)base + (i << (wide ? 2 : 1));
    asm volatile("{\n\t.reg .pred p, w;\n\t"
                 "setp.ne.s32 p, %4, 0;\n\t"
                 "setp.ne.and.s32 w, %3, 0, p;\n\t"
                 "setp.eq.and.s32 p, %3, 0, p;\n\t"
                 "@w ld.global.b32 %0, [%2];\n\t"
                 "@p ld.global.u16 %1, [%2];\n\t}"
                 : "+r"(b32), "+r"(b16)
                 : "l"(at), "r"(wide), "r"(ok));
    *bits32 = b32;
    *bits16 = b16;
}

/* load_bits_pair_if's or formed at once. The single-kernel decode layer loads its run-time-dtype
 * tensors (all of them, or A_log and dt_bias in its all-bf16 kernels) this way, and the plain
 * decode's tile kernels load a token's q, k, g, beta, A_log and dt_bias this way (1-2 % faster
 * there; v through load_bits_pair_if itself where the loads are predicated, load_v);
 * its packed kernels keep load_bits_if (with this form the packed bf16 kernel measured 3 % slower
 * at 64 x 32: docs/history/decode.md). Where the dtype is a compile-time constant, one form and
 * the or fold away. */
static __device__ __forceinline__ uint32_t load_bits_split_if(const void *base, int32_t dtype, int64_t i, int ok)
{
    uint32_t bits32, bits16;
    load_bits_pair_if(base, dtype, i, ok, &bits32, &bits16);
    return bits32 | bits16;
}

/* One 32-bit load (load_u16_if: 16-bit, zero-extended) where ok, else 0, as one predicated
 * instruction: for a caller that knows a tensor's dtype once for many loads and branches on it
 * once, outside them (prefill_chain_io.cuh's state loads). */
static __device__ __forceinline__ uint32_t load_b32_if(const void *at, int ok)
{
    uint32_t bits = 0u;
    asm volatile("{\n\t.reg .pred p;\n\t"
                 "setp.ne.s32 p, %2, 0;\n\t"
                 "@p ld.global.b32 %0, [%1];\n\t}"
                 : "+r"(bits)
                 : "l"(at), "r"(ok));
    return bits;
}

static __device__ __forceinline__ uint32_t load_u16_if(const void *at, int ok)
{
    uint32_t bits = 0u;
    asm volatile("{\n\t.reg .pred p;\n\t"
                 "setp.ne.s32 p, %2, 0;\n\t"
                 "@p ld.global.u16 %0, [%1];\n\t}"
                 : "+r"(bits)
                 : "l"(at), "r"(ok));
    return bits;
}

/* Every conversion, then a select: no branch (at small batches each warp's path is the time). */
static __device__ __forceinline__ float bits_to_float(uint32_t bits, int32_t dtype)
{
    const float f16 = __half2float(__ushort_as_half((unsigned short)bits));
    const float f = __uint_as_float(dtype == FKDA_DTYPE_F32 ? bits : bits << 16);
    return dtype == FKDA_DTYPE_F16 ? f16 : f;
}

/* Hides x from the compiler up to this point (no instruction). A value loaded inside a branch
 * (the decode's per-key loads, decode_stage.cuh's TOKEN_LOADS_BRANCH) may otherwise have its
 * conversion or its split form's or folded into that branch, right behind the load, and the
 * warp then waits a whole DRAM round trip there before the loads after the branch issue: at
 * B = 1 the decode's time is such round trips (an ncu profile of the one-token fp32 kernel found
 * two, v's and dt_bias's). */
static __device__ __forceinline__ void hold_until_here(uint32_t *x) { asm volatile("" : "+r"(*x)); }

/* A run-time-dtype value loaded in both forms (load_bits_pair_if) and joined only where it is
 * used (joined_bits): joined where they were loaded, the or waited there for the value's round
 * trip before every later load issued, the index's among them (the single-kernel decode layer's
 * parameters: dev/cuda/load_waits.py found dt_bias's in each narrow kernel; where the dtype is a
 * constant the second form folds away). */
typedef struct split_word {
    uint32_t b32, b16;
} split_word;

static __device__ __forceinline__ split_word load_split_word(const void *base, int32_t dtype, int64_t i, int ok)
{
    split_word w;
    load_bits_pair_if(base, dtype, i, ok, &w.b32, &w.b16);
    return w;
}

static __device__ __forceinline__ uint32_t joined_bits(split_word w)
{
    hold_until_here(&w.b32);
    hold_until_here(&w.b16);
    return w.b32 | w.b16;
}

#endif

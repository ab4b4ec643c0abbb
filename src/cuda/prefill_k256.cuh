/*
 * prefill_k256.cuh: the record layout and the launches of the prefill family for 128 < K <= 256
 * (prefill_prep_k256.cu, prefill_chain_k256.cu). The K <= 128 kernels never see these.
 *
 * The algebra is that of prefill_common.cuh; only the key width changes: keys are zero-padded to
 * 256, and every 16 x 256 tile of the record is stored as two 16 x 128 halves (keys 0-127, then
 * 128-255), each swizzled exactly like a K = 128 tile (pf_swz, pf_swz_unit). The chain runs a warp
 * pair per 16 value columns, each warp holding the state's 128 keys of one half, so each warp reads
 * its half as if it were a K = 128 record (docs/prefill.md, "K from 129 to 256").
 */
#ifndef FKDA_PREFILL_K256_CUH
#define FKDA_PREFILL_K256_CUH

#include "prefill_common.cuh"

#define PF256_DK 256    /* keys of the record (K <= 256, zero-padded) */
#define PF256_HALF 4096 /* bytes of one 16 x 128 bf16 half tile */

/* The record of one (chunk, value head), 27,648 bytes: the K = 128 record's fields with 256 keys. */
#define PF256_REC_NEGW 0        /* -W    [2 halves][16][128] bf16, swizzled */
#define PF256_REC_KR 8192       /* Kr    [2 halves][16][128] bf16, swizzled */
#define PF256_REC_GAMMA 16384   /* gamma [256] fp32 */
#define PF256_REC_BINV 17408    /* bINV  [16][16] bf16, row-major, high terms */
#define PF256_REC_BINV_LO 17920 /*                               low terms */
#define PF256_REC_MQK 18432     /* Mqk   [16][16] bf16, row-major (scale folded in, lower incl. diag) */
#define PF256_REC_MQK_LO 18944  /*                               low terms */
#define PF256_REC_QD 19456      /* Qd    [2 halves][16][128] bf16, swizzled (scale folded in) */
#define PF256_REC_BYTES 27648

/* Byte offset of element (row, key) of a two-half swizzled [16][256] tile. */
static __device__ __forceinline__ uint32_t pf256_swz(int row, int key)
{
    return (uint32_t)((key >> 7) * PF256_HALF) + pf_swz(row, key & 127);
}

/* The launches (prefill_launch.cu calls them for K > 128; no segments). `vslice` value columns per
 * chain CTA: 16, 32 or 64 (a warp pair per 16). */
cudaError_t pf256_launch_prep(const pf_params *p, cudaStream_t stream);
cudaError_t pf256_launch_chain(const pf_params *p, int vslice, cudaStream_t stream);
size_t pf256_chain_smem_bytes(int vslice);

#endif /* FKDA_PREFILL_K256_CUH */

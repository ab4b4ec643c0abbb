/*
 * ptx_copy.cuh: asynchronous global -> shared copies as inline PTX.
 *
 *   cp.async (16 bytes per thread, sm_80+): for strided tiles; a source size of 0 fills the
 *     destination with zeros, which is how rows past a sequence's end become zero.
 *   cp.async.bulk (one thread, any multiple of 16 bytes, sm_90): for contiguous blocks (the
 *     prefill's per-chunk records, the streaming decode's 64 KB head states); completion is
 *     counted in bytes on an mbarrier (ptx_mbarrier.cuh).
 */
#ifndef FKDA_PTX_COPY_CUH
#define FKDA_PTX_COPY_CUH

#include <stdint.h>

/* Copies 16 bytes, or writes 16 zero bytes when src_bytes is 0 (src is then not read). */
static __device__ __forceinline__ void cp_async_16(uint32_t sdst, const void *gsrc, uint32_t src_bytes)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" : : "r"(sdst), "l"(gsrc), "r"(src_bytes) : "memory");
}

static __device__ __forceinline__ void cp_async_commit(void) { asm volatile("cp.async.commit_group;" ::: "memory"); }

/* Waits until at most n of this thread's committed groups are pending (n: a constant expression). */
#define CP_ASYNC_WAIT(n) asm volatile("cp.async.wait_group %0;" : : "n"(n) : "memory")

/* One bulk copy of `bytes` (a multiple of 16; both addresses 16-byte aligned) whose completion
 * is signalled on the mbarrier at `mbar` (which must expect these bytes). */
static __device__ __forceinline__ void bulk_copy_g2s(uint32_t sdst, const void *gsrc, uint32_t bytes, uint32_t mbar)
{
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
                 :
                 : "r"(sdst), "l"(gsrc), "r"(bytes), "r"(mbar)
                 : "memory");
}

#endif /* FKDA_PTX_COPY_CUH */

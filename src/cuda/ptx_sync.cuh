/*
 * ptx_sync.cuh: synchronisation between warps of a CTA as inline PTX: named barriers over a subset
 * of the CTA's warps, a relaxed atomic add on shared memory (a counter that picks the last of
 * several warps to release a buffer), and the proxy fence between generic-proxy reads of a buffer
 * and an async-proxy (bulk copy) refill. The mbarriers themselves are in ptx_mbarrier.cuh.
 */
#ifndef FKDA_PTX_SYNC_CUH
#define FKDA_PTX_SYNC_CUH

#include <stdint.h>

/* Named barrier `id` (1 .. 15; 0 is __syncthreads) over `threads` threads (a multiple of 32): the
 * shared-memory accesses each participant made before it are performed for all participants after
 * it. Every participating warp must execute it the same number of times. */
static __device__ __forceinline__ void bar_sync_named(uint32_t id, uint32_t threads)
{
    asm volatile("bar.sync %0, %1;" : : "r"(id), "r"(threads) : "memory");
}

/* Barrier 0 over the whole CTA, as __syncthreads, but in the non-aligned form: for warps that
 * reach it from different places in the code. __syncthreads is barrier.sync.aligned, which
 * requires every thread of the CTA to execute the same barrier instruction. */
static __device__ __forceinline__ void bar_sync_all_unaligned(void) { asm volatile("barrier.sync 0;" ::: "memory"); }

/* Atomic add on a 32-bit shared word, relaxed (no ordering of other accesses: no fence); returns
 * the old value. For counting arrivals where the ordering comes from elsewhere (an mbarrier). */
static __device__ __forceinline__ uint32_t atom_add_relaxed_shared(uint32_t saddr, uint32_t v)
{
    uint32_t old;
    asm volatile("atom.relaxed.cta.shared::cta.add.u32 %0, [%1], %2;" : "=r"(old) : "r"(saddr), "r"(v) : "memory");
    return old;
}

/* Orders this thread's generic-proxy shared-memory accesses, and those ordered before them (e.g.
 * other warps' reads acquired through an mbarrier wait), before its later async-proxy operations
 * on shared memory (a cp.async.bulk into the same bytes): without it the memory model does not
 * order the two proxies, and a refill could land before earlier reads of the buffer are done. */
static __device__ __forceinline__ void fence_proxy_async_shared(void)
{
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
}

#endif /* FKDA_PTX_SYNC_CUH */

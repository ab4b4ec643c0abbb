/*
 * ptx_mbarrier.cuh: shared-memory transaction barriers (sm_90) as inline PTX. A producer thread
 * announces how many bytes a stage will receive (arrive.expect_tx), bulk copies complete those
 * bytes, and consumers wait for the barrier's phase to flip (try_wait.parity); a plain arrival
 * hands a buffer back to its producer.
 */
#ifndef FKDA_PTX_MBARRIER_CUH
#define FKDA_PTX_MBARRIER_CUH

#include <stdint.h>

static __device__ __forceinline__ void mbar_init(uint32_t mbar, uint32_t arrivals)
{
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" : : "r"(mbar), "r"(arrivals) : "memory");
}

/* Makes the initialised barriers visible to the async proxy (the bulk copies); follow it with
 * a block-wide barrier (or, for other CTAs of a cluster, a cluster barrier) before any use. */
static __device__ __forceinline__ void mbar_fence_init(void)
{
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
}

/* One arrival that also announces `bytes` of transactions for the current phase. */
static __device__ __forceinline__ void mbar_arrive_expect_tx(uint32_t mbar, uint32_t bytes)
{
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" : : "r"(mbar), "r"(bytes) : "memory");
}

/* One plain arrival on an mbarrier (release semantics at CTA scope: the arriving thread's earlier
 * accesses, and those ordered before them, e.g. by __syncwarp, happen before the accesses of a
 * thread that observes the phase complete through mbarrier.try_wait). */
static __device__ __forceinline__ void mbar_arrive(uint32_t mbar)
{
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" : : "r"(mbar) : "memory");
}

static __device__ __forceinline__ uint32_t mbar_try_wait(uint32_t mbar, uint32_t parity)
{
    uint32_t done;
    asm volatile("{\n\t.reg .pred p;\n\t"
                 "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n\t"
                 "selp.u32 %0, 1, 0, p;\n\t}"
                 : "=r"(done)
                 : "r"(mbar), "r"(parity)
                 : "memory");
    return done;
}

/* As mbar_try_wait, with acquire at cluster scope: for a barrier whose transactions are other
 * CTAs' st.async into this CTA's shared memory, so that their stores are visible after it. */
static __device__ __forceinline__ uint32_t mbar_try_wait_cluster(uint32_t mbar, uint32_t parity)
{
    uint32_t done;
    asm volatile("{\n\t.reg .pred p;\n\t"
                 "mbarrier.try_wait.parity.acquire.cluster.shared::cta.b64 p, [%1], %2;\n\t"
                 "selp.u32 %0, 1, 0, p;\n\t}"
                 : "=r"(done)
                 : "r"(mbar), "r"(parity)
                 : "memory");
    return done;
}

/* Blocks until the phase with this parity has completed. */
static __device__ __forceinline__ void mbar_wait(uint32_t mbar, uint32_t parity)
{
    while (!mbar_try_wait(mbar, parity)) {
    }
}

#endif /* FKDA_PTX_MBARRIER_CUH */

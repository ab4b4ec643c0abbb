/*
 * ptx_cluster.cuh: thread block clusters (sm_90) as inline PTX: a CTA's rank in its cluster, the
 * address of a shared variable in another CTA of the cluster (mapa), and the cluster barrier in
 * its two halves. The operations that act through those addresses (st.async, remote mbarrier
 * arrivals, multicast bulk copies) sit with the kind of transfer they are: ptx_mbarrier.cuh,
 * ptx_copy.cuh, or the one kernel that uses them.
 */
#ifndef FKDA_PTX_CLUSTER_CUH
#define FKDA_PTX_CLUSTER_CUH

#include <stdint.h>

static __device__ __forceinline__ uint32_t cluster_rank(void)
{
    uint32_t r;
    asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
    return r;
}

/* The address of `local` (a shared address of this CTA) in CTA `rank` of the cluster. */
static __device__ __forceinline__ uint32_t cluster_address(uint32_t local, uint32_t rank)
{
    uint32_t remote;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(local), "r"(rank));
    return remote;
}

/* The cluster barrier: every thread of every CTA arrives, then waits for all the others. The
 * relaxed arrival orders nothing (what it must publish, e.g. barrier initialisation, a fence
 * releases); the release arrival orders the thread's earlier memory operations before the
 * others' accesses after their wait (it compiles to MEMBAR.ALL.GPU: it waits for every memory
 * operation the thread has in flight). */
static __device__ __forceinline__ void cluster_arrive_relaxed(void)
{
    asm volatile("barrier.cluster.arrive.relaxed;" ::: "memory");
}
static __device__ __forceinline__ void cluster_arrive_release(void)
{
    asm volatile("barrier.cluster.arrive.release;" ::: "memory");
}
static __device__ __forceinline__ void cluster_wait(void)
{
    asm volatile("barrier.cluster.wait.acquire;" ::: "memory");
}

#endif /* FKDA_PTX_CLUSTER_CUH */

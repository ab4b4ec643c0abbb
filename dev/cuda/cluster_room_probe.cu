/*
 * cluster_room_probe.cu: does the driver's cluster occupancy count the clusters that get an SM per
 * CTA, which src/cuda/cluster_room.cu asks it for (the decode layer's choice of C)?
 *
 * For C = 2, 4, 8 it prints the driver's answer N (cudaOccupancyMaxActiveClusters for a kernel
 * whose CTAs take more than half an SM's shared memory, so that no SM holds two) beside SMs / C,
 * then checks it on the hardware: a grid of n clusters of such CTAs, each CTA recording its SM and
 * then waiting (up to a time limit) until every CTA of the grid has arrived. If the n clusters
 * are resident together, all arrive, and the CTAs' SMs are n C distinct ones; if not, the first
 * ones time out waiting for CTAs that cannot start until they leave. Expected: n = N passes and
 * n = N + 1 times out, for every C.
 *
 *     nvcc -gencode=arch=compute_90a,code=sm_90a -O3 -o build/cluster_room_probe \
 *         dev/cuda/cluster_room_probe.cu && build/cluster_room_probe
 */
#include "bench_host.h" /* CUDA_OK */

static __global__ void probe(void) {}

/* Each CTA: thread 0 notes its SM, arrives, and waits for the whole grid (at most ~50 ms). */
static __global__ void resident(unsigned *arrived, int *sm_of, int *timed_out, unsigned total)
{
    extern __shared__ char pad[]; /* only its size matters: one CTA an SM */
    if (threadIdx.x != 0) return;
    pad[0] = 0;
    unsigned smid;
    asm volatile("mov.u32 %0, %%smid;" : "=r"(smid));
    const unsigned cta = blockIdx.x;
    sm_of[cta] = (int)smid;
    atomicAdd(arrived, 1u);
    const long long start = clock64();
    while (atomicAdd(arrived, 0u) < total) {
        if (clock64() - start > 100000000LL) { /* ~50 ms at 2 GHz */
            atomicExch(timed_out, 1);
            return;
        }
    }
}

static cudaLaunchConfig_t config(int C, int clusters, size_t smem, cudaLaunchAttribute *attr)
{
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3((unsigned)(C * clusters), 1, 1);
    cfg.blockDim = dim3(128, 1, 1);
    cfg.dynamicSmemBytes = smem;
    attr->id = cudaLaunchAttributeClusterDimension;
    attr->val.clusterDim.x = (unsigned)C;
    attr->val.clusterDim.y = 1;
    attr->val.clusterDim.z = 1;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    return cfg;
}

/* Runs n clusters of C; returns 1 if all were resident together (and prints their SMs' count). */
static int try_resident(int C, int n, size_t smem, int sms)
{
    const unsigned total = (unsigned)(C * n);
    unsigned *arrived;
    int *sm_of, *timed_out;
    CUDA_OK(cudaMalloc(&arrived, sizeof *arrived));
    CUDA_OK(cudaMalloc(&sm_of, total * sizeof *sm_of));
    CUDA_OK(cudaMalloc(&timed_out, sizeof *timed_out));
    CUDA_OK(cudaMemset(arrived, 0, sizeof *arrived));
    CUDA_OK(cudaMemset(timed_out, 0, sizeof *timed_out));
    CUDA_OK(cudaMemset(sm_of, 0xff, total * sizeof *sm_of));
    cudaLaunchAttribute attr;
    cudaLaunchConfig_t cfg = config(C, n, smem, &attr);
    CUDA_OK(cudaLaunchKernelEx(&cfg, resident, arrived, sm_of, timed_out, total));
    CUDA_OK(cudaDeviceSynchronize());
    int to = 0;
    CUDA_OK(cudaMemcpy(&to, timed_out, sizeof to, cudaMemcpyDeviceToHost));
    int *host = (int *)malloc(total * sizeof *host);
    CUDA_OK(cudaMemcpy(host, sm_of, total * sizeof *host, cudaMemcpyDeviceToHost));
    int *seen = (int *)calloc((size_t)sms + 1, sizeof *seen), distinct = 0, most = 0;
    for (unsigned i = 0; i < total; i++) {
        const int s = host[i] >= 0 && host[i] < sms ? host[i] : sms;
        if (seen[s]++ == 0) distinct++;
        if (seen[s] > most) most = seen[s];
    }
    printf("  %3d clusters of %d: %s, %d CTAs on %d SMs (at most %d a SM over the run)\n", n, C,
           to ? "NOT all resident (a CTA timed out)" : "all resident together", total, distinct, most);
    free(host);
    free(seen);
    CUDA_OK(cudaFree(arrived));
    CUDA_OK(cudaFree(sm_of));
    CUDA_OK(cudaFree(timed_out));
    return !to;
}

int main(void)
{
    int dev = 0;
    CUDA_OK(cudaGetDevice(&dev));
    cudaDeviceProp prop;
    CUDA_OK(cudaGetDeviceProperties(&prop, dev));
    const size_t smem = prop.sharedMemPerMultiprocessor / 2 + 1024;
    printf("%s, %d SMs, %zu bytes of shared memory a SM; CTAs of %zu bytes (one a SM)\n", prop.name,
           prop.multiProcessorCount, prop.sharedMemPerMultiprocessor, smem);
    CUDA_OK(cudaFuncSetAttribute((const void *)probe, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    CUDA_OK(cudaFuncSetAttribute((const void *)resident, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    int failures = 0;
    for (int C = 2; C <= 8; C *= 2) {
        cudaLaunchAttribute attr;
        cudaLaunchConfig_t cfg = config(C, 1, smem, &attr);
        int n = 0;
        CUDA_OK(cudaOccupancyMaxActiveClusters(&n, (const void *)probe, &cfg));
        printf("C = %d: the driver's room %d clusters (SMs / C = %d)\n", C, n, prop.multiProcessorCount / C);
        if (!try_resident(C, n, smem, prop.multiProcessorCount)) failures++;
        if (try_resident(C, n + 1, smem, prop.multiProcessorCount)) failures++;
    }
    printf(failures ? "FAILED: the driver's room is not the hardware's (%d)\n"
                    : "passed: every room was resident, and one more cluster was not (%d failures)\n",
           failures);
    return failures != 0;
}

/* decode_floor_probe.cu: the least time a one-token decode call can take at B = 1, measured.
 *
 * Issue 16 asks the plain decode at B = 1 (H = 12..32, K = V = 128) for at most 0.8x fla's time,
 * and both libraries sit at 3.5-5 us per call against a bandwidth floor of 0.2-1 us. This program
 * times, in the decode benchmark's setting (one CUDA graph of N calls, each on its own DRAM-resident
 * state, with and without programmatic dependent launch), kernels that do less than a decode:
 *
 *   empty    griddepcontrol.wait, launch_dependents, nothing else;
 *   copy     each CTA reads its slice of the state (16-byte loads, all issued before any use),
 *            scales it and writes it back: the state traffic of a decode, no token, no index;
 *   copy-ef  the same with evict-first (streaming) loads and stores, as the decode's narrow tiles;
 *   indexed  the same after one dependent load of the slot index (the pool's indirection);
 *   reduced  indexed, plus what every decode must do between its load and its store: a dot
 *            product over the keys of each value column (k . S) summed across the CTA's warps in
 *            shared memory and used to update the slice (a rank-one update, S += k (v - k.S)^T).
 *
 * Whatever the real kernel adds (token loads, norms, gate, output) comes on top of `reduced`, so
 * `reduced` is a lower bound on our call's time in the benchmark's setting, and 0.8x fla is
 * reachable only if it sits well under it. Each kernel is checked once against the host before it
 * is timed.
 *
 * Build and run (H100 / H200):
 *     nvcc -gencode=arch=compute_90a,code=sm_90a -O3 -o build/decode_floor_probe \
 *         dev/cuda/decode_floor_probe.cu && build/decode_floor_probe
 * Exit status 0 when every check passed, 1 when one failed, 2 on a CUDA error. */
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(call)                                                                                \
    do {                                                                                           \
        cudaError_t e_ = (call);                                                                   \
        if (e_ != cudaSuccess) {                                                                   \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
            exit(2);                                                                               \
        }                                                                                          \
    } while (0)

enum { KIND_EMPTY, KIND_COPY, KIND_COPY_EF, KIND_INDEXED, KIND_REDUCED, KIND_COUNT };
static const char *kind_name[KIND_COUNT] = {"empty", "copy", "copy-ef", "indexed", "reduced"};

enum { K = 128, V = 128, MAX_THREADS = 512 };

/* One call's arguments. The state is [heads][K][V] fp32 ([K, V] layout, as the fp32 pool). Each CTA
 * owns `cols` value columns of one head: a K x cols slice, read and written once. */
typedef struct {
    float *state;     /* the pool: slots * heads * K * V */
    const int *index; /* slot of the one sequence */
    const float *k;   /* [heads][K], the key (unit norm not needed here) */
    int heads, cols;
    int kind;
    int threads; /* CTA size: 128, 256 or 512 */
} probe_args;

static __device__ __forceinline__ void pdl_enter(void)
{
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
}

/* The slice of CTA (head, column block): rows 0..K-1, columns c0..c0+cols-1 of head `head`. Thread t
 * handles float4 units u = t, t + THREADS, ... of the slice in row-major order (cols / 4 units a
 * row); at most MAX_UNITS a thread (K x 128 columns / 4 / THREADS). The body is compiled for CTAs
 * of 128, 256 and 512 threads (probe_kernel_128 ...): more threads, more of the slice in flight. */
static __device__ __forceinline__ void probe_body(const probe_args a, const int THREADS, const int EF)
{
    const int MAX_UNITS = K * V / 4 / THREADS;
    pdl_enter();
    if (a.kind == KIND_EMPTY) return;
    const int slices = V / a.cols;
    const int head = blockIdx.x / slices, c0 = (blockIdx.x % slices) * a.cols;
    int64_t slot = 0;
    if (a.kind >= KIND_INDEXED) slot = a.index[0];
    float *S = a.state + (slot * a.heads + head) * (int64_t)(K * V);
    const int units_per_row = a.cols / 4, units = K * units_per_row;
    const int ef = EF; /* evict-first loads and stores (KIND_COPY_EF's kernels), as the decode's narrow tiles */
    float4 x[32];      /* MAX_UNITS at 128 threads */
#pragma unroll
    for (int i = 0; i < MAX_UNITS; i++) {
        const int u = threadIdx.x + i * THREADS;
        if (u < units) {
            const float4 *at = (const float4 *)(S + (u / units_per_row) * V + c0 + (u % units_per_row) * 4);
            x[i] = ef ? __ldcs(at) : *at;
        }
    }
    if (a.kind != KIND_REDUCED) {
#pragma unroll
        for (int i = 0; i < MAX_UNITS; i++) {
            const int u = threadIdx.x + i * THREADS;
            if (u < units) {
                float4 y = x[i];
                y.x *= 0.5f, y.y *= 0.5f, y.z *= 0.5f, y.w *= 0.5f;
                float4 *at = (float4 *)(S + (u / units_per_row) * V + c0 + (u % units_per_row) * 4);
                if (ef)
                    __stcs(at, y);
                else
                    *at = y;
            }
        }
        return;
    }
    /* kS[c] = sum_r k[r] S[r][c] over the slice, then S[r][c] += k[r] (1 - kS[c]). */
    __shared__ float partial[MAX_THREADS * 4];
    __shared__ float ks[V];
    const float *kh = a.k + head * K;
    float acc[4] = {0, 0, 0, 0};
    /* With THREADS a multiple of units_per_row, every unit of a thread has the same columns. */
#pragma unroll
    for (int i = 0; i < MAX_UNITS; i++) {
        const int u = threadIdx.x + i * THREADS;
        if (u < units) {
            const float kr = kh[u / units_per_row];
            acc[0] += kr * x[i].x, acc[1] += kr * x[i].y, acc[2] += kr * x[i].z, acc[3] += kr * x[i].w;
        }
    }
    for (int j = 0; j < 4; j++) partial[threadIdx.x * 4 + j] = acc[j];
    __syncthreads();
    if (threadIdx.x < a.cols) {
        const int unit = threadIdx.x / 4, lane = threadIdx.x % 4;
        float s = 0;
        for (int t = unit; t < THREADS; t += units_per_row) s += partial[t * 4 + lane];
        ks[threadIdx.x] = s;
    }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < MAX_UNITS; i++) {
        const int u = threadIdx.x + i * THREADS;
        if (u < units) {
            const int r = u / units_per_row, c = (u % units_per_row) * 4;
            const float kr = kh[r];
            float4 y = x[i];
            y.x += kr * (1.f - ks[c]), y.y += kr * (1.f - ks[c + 1]);
            y.z += kr * (1.f - ks[c + 2]), y.w += kr * (1.f - ks[c + 3]);
            *(float4 *)(S + r * V + c0 + c) = y;
        }
    }
}

__global__ void __launch_bounds__(128) probe_kernel_128(probe_args a) { probe_body(a, 128, 0); }
__global__ void __launch_bounds__(256) probe_kernel_256(probe_args a) { probe_body(a, 256, 0); }
__global__ void __launch_bounds__(512) probe_kernel_512(probe_args a) { probe_body(a, 512, 0); }
__global__ void __launch_bounds__(128) probe_kernel_128_ef(probe_args a) { probe_body(a, 128, 1); }
__global__ void __launch_bounds__(256) probe_kernel_256_ef(probe_args a) { probe_body(a, 256, 1); }
__global__ void __launch_bounds__(512) probe_kernel_512_ef(probe_args a) { probe_body(a, 512, 1); }

static void launch(const probe_args *a, cudaStream_t stream, int pdl)
{
    cudaLaunchConfig_t cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.gridDim = dim3(a->heads * (V / a->cols), 1, 1);
    cfg.blockDim = dim3(a->threads, 1, 1);
    cfg.stream = stream;
    cudaLaunchAttribute attr;
    memset(&attr, 0, sizeof attr);
    attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr.val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = &attr;
    cfg.numAttrs = pdl ? 1 : 0;
    void *args[] = {(void *)a};
    const int ef = a->kind == KIND_COPY_EF;
    const void *kernel = a->threads == 512 ? (ef ? (const void *)probe_kernel_512_ef : (const void *)probe_kernel_512)
                         : a->threads == 256
                             ? (ef ? (const void *)probe_kernel_256_ef : (const void *)probe_kernel_256)
                             : (ef ? (const void *)probe_kernel_128_ef : (const void *)probe_kernel_128);
    CHECK(cudaLaunchKernelExC(&cfg, kernel, args));
}

/* The kernel once on a small pool against the host: returns 1 when it matches. */
static int check_kind(int kind, int heads, int cols, int threads)
{
    const int slots = 3, slot = 2;
    const size_t n = (size_t)slots * heads * K * V;
    float *h = (float *)malloc(n * sizeof(float)), *want = (float *)malloc(n * sizeof(float));
    float *hk = (float *)malloc((size_t)heads * K * sizeof(float));
    for (size_t i = 0; i < n; i++) h[i] = (float)((i * 2654435761u) % 1000) / 1000.f - 0.5f;
    for (int i = 0; i < heads * K; i++) hk[i] = (float)((i * 40503u) % 100) / 1000.f;
    memcpy(want, h, n * sizeof(float));
    if (kind != KIND_EMPTY) {
        const int s = kind >= KIND_INDEXED ? slot : 0;
        for (int hd = 0; hd < heads; hd++) {
            float *S = want + ((size_t)s * heads + hd) * K * V;
            for (int c = 0; c < V; c++) {
                double kS = 0;
                for (int r = 0; r < K; r++) kS += (double)hk[hd * K + r] * S[r * V + c];
                for (int r = 0; r < K; r++)
                    S[r * V + c] = kind == KIND_REDUCED ? (float)(S[r * V + c] + hk[hd * K + r] * (1.0 - kS))
                                                        : S[r * V + c] * 0.5f;
            }
        }
    }
    float *d, *dk;
    int *di;
    CHECK(cudaMalloc(&d, n * sizeof(float)));
    CHECK(cudaMalloc(&dk, (size_t)heads * K * sizeof(float)));
    CHECK(cudaMalloc(&di, sizeof(int)));
    CHECK(cudaMemcpy(d, h, n * sizeof(float), cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(dk, hk, (size_t)heads * K * sizeof(float), cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(di, &slot, sizeof(int), cudaMemcpyHostToDevice));
    probe_args a = {d, di, dk, heads, cols, kind, threads};
    launch(&a, 0, 0);
    CHECK(cudaDeviceSynchronize());
    CHECK(cudaMemcpy(h, d, n * sizeof(float), cudaMemcpyDeviceToHost));
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        const double e = h[i] > want[i] ? h[i] - want[i] : want[i] - h[i];
        if (e > worst) worst = e;
    }
    CHECK(cudaFree(d));
    CHECK(cudaFree(dk));
    CHECK(cudaFree(di));
    free(h), free(want), free(hk);
    return worst < 1e-4;
}

/* Median over `replays` of one graph of `calls` launches, each on its own state, in us per call. */
static double time_graph(int kind, int heads, int cols, int threads, int pdl, float *pool, const int *index,
                         const float *k, int calls, size_t state_elems)
{
    cudaStream_t stream;
    CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    probe_args *args = (probe_args *)malloc(calls * sizeof(probe_args));
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
    for (int c = 0; c < calls; c++) {
        probe_args a = {pool + (size_t)c * state_elems, index, k, heads, cols, kind, threads};
        args[c] = a;
        launch(&args[c], stream, pdl);
    }
    CHECK(cudaStreamEndCapture(stream, &graph));
    CHECK(cudaGraphInstantiate(&exec, graph, 0));
    cudaEvent_t e0, e1;
    CHECK(cudaEventCreate(&e0));
    CHECK(cudaEventCreate(&e1));
    enum { REPLAYS = 21 };
    float ms[REPLAYS];
    for (int w = 0; w < 3; w++) CHECK(cudaGraphLaunch(exec, stream));
    for (int r = 0; r < REPLAYS; r++) {
        CHECK(cudaEventRecord(e0, stream));
        CHECK(cudaGraphLaunch(exec, stream));
        CHECK(cudaEventRecord(e1, stream));
        CHECK(cudaEventSynchronize(e1));
        CHECK(cudaEventElapsedTime(&ms[r], e0, e1));
    }
    for (int i = 1; i < REPLAYS; i++) /* insertion sort: the median */
        for (int j = i; j > 0 && ms[j] < ms[j - 1]; j--) {
            const float t = ms[j];
            ms[j] = ms[j - 1], ms[j - 1] = t;
        }
    CHECK(cudaGraphExecDestroy(exec));
    CHECK(cudaGraphDestroy(graph));
    CHECK(cudaEventDestroy(e0));
    CHECK(cudaEventDestroy(e1));
    CHECK(cudaStreamDestroy(stream));
    free(args);
    return ms[REPLAYS / 2] * 1e3 / calls;
}

int main(void)
{
    cudaDeviceProp prop;
    CHECK(cudaGetDeviceProperties(&prop, 0));
    printf("device: %s, %d SMs\n", prop.name, prop.multiProcessorCount);
    int failed = 0;
    const int col_choices[] = {128, 64, 32, 16}, thread_choices[] = {128, 256, 512};
    for (int kind = 0; kind < KIND_COUNT; kind++)
        for (int ci = 0; ci < 4; ci++)
            for (int ti = 0; ti < 3; ti++) {
                const int ok = check_kind(kind, 4, col_choices[ci], thread_choices[ti]);
                if (!ok) {
                    printf("check FAILED: %s, %d columns a CTA of %d threads\n", kind_name[kind], col_choices[ci],
                           thread_choices[ti]);
                    failed = 1;
                }
            }
    printf("checks against the host: %s\n", failed ? "FAILED" : "passed");

    /* 128 calls a graph, each on its own state: 128 x 2.1 MB at H = 32 is far past L2 (50-60 MB), so
     * every call's state comes from DRAM, as in bench_decode_gpu.py's B = 1 rows. */
    const int calls = 128, head_choices[] = {12, 16, 32};
    const size_t max_state = (size_t)32 * K * V;
    float *pool, *k;
    int *index;
    CHECK(cudaMalloc(&pool, (size_t)calls * max_state * sizeof(float)));
    CHECK(cudaMemset(pool, 0, (size_t)calls * max_state * sizeof(float)));
    CHECK(cudaMalloc(&k, 32 * K * sizeof(float)));
    CHECK(cudaMemset(k, 0, 32 * K * sizeof(float)));
    CHECK(cudaMalloc(&index, sizeof(int)));
    CHECK(cudaMemset(index, 0, sizeof(int)));
    printf("\nus per call, fp32 [K, V] state, one sequence, %d calls a graph, each on its own state "
           "(median of 21 replays):\n",
           calls);
    printf("%-8s %5s %6s %5s %7s %10s %10s\n", "kernel", "heads", "cols", "CTAs", "threads", "with PDL", "no PDL");
    for (int hi = 0; hi < 3; hi++) {
        const int heads = head_choices[hi];
        for (int kind = 0; kind < KIND_COUNT; kind++)
            for (int ci = 0; ci < 4; ci++)
                for (int ti = 0; ti < 3; ti++) {
                    const int cols = col_choices[ci], threads = thread_choices[ti];
                    if (kind == KIND_EMPTY && (ci > 0 || ti > 0)) continue;
                    const size_t elems = (size_t)heads * K * V;
                    const double t1 = time_graph(kind, heads, cols, threads, 1, pool, index, k, calls, elems);
                    const double t0 = time_graph(kind, heads, cols, threads, 0, pool, index, k, calls, elems);
                    printf("%-8s %5d %6d %5d %7d %10.2f %10.2f\n", kind_name[kind], heads, cols, heads * (V / cols),
                           threads, t1, t0);
                }
    }
    CHECK(cudaFree(pool));
    CHECK(cudaFree(k));
    CHECK(cudaFree(index));
    printf(failed ? "\nA CHECK FAILED\n" : "\nALL CHECKS PASSED\n");
    return failed;
}

/* k256_prep_bench.cu: times the K > 128 prep kernels alone (T = 8192, H = HV = 32, bf16 q, k, g,
 * beta, L2 norm, beta sigmoid, a lower bound gate) and compares their records with those of v6's
 * single kernel (commit 54b4e57), halfword by halfword as bf16. Arguments: K (256), lower bound
 * (-5; below -5 takes the checked kernels). Build, from the repository root:
 *   git show 54b4e57:src/cuda/prefill_prep_k256.cu | sed s/pf256_launch_prep/old256_launch_prep/ \
 *       > /tmp/old256.cu
 *   nvcc -gencode=arch=compute_90a,code=sm_90a -O3 -std=c++17 -Isrc -Iinclude -Isrc/cuda \
 *       --expt-relaxed-constexpr -DFKDA_WITH_CUDA=1 -DFKDA_BUILDING_LIBRARY -o /tmp/k256_prep_bench \
 *       dev/cuda/k256_prep_bench.cu /tmp/old256.cu src/cuda/prefill_prep_k256.cu
 * Rows "bulk" and "any" are the bf16 tile and element forms (qkg_load set by hand). */
#include "prefill_k256.cuh"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
cudaError_t old256_launch_prep(const pf_params *p, cudaStream_t stream);
static uint16_t f2bf(float x)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    return (uint16_t)((u + 0x7fff + ((u >> 16) & 1)) >> 16);
}
static float bf2f(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float x;
    memcpy(&x, &u, 4);
    return x;
}
int main(int argc, char **argv)
{
    const int64_t T = 8192, H = 32, K = argc > 1 ? atoi(argv[1]) : 256, V = 256;
    const double lb = argc > 2 ? atof(argv[2]) : -5.0;
    const int64_t n = T * H * K;
    uint16_t *hq = (uint16_t *)malloc(n * 2), *hk = (uint16_t *)malloc(n * 2), *hg = (uint16_t *)malloc(n * 2),
             *hb = (uint16_t *)malloc(T * H * 2);
    srand(1);
    for (int64_t i = 0; i < n; i++) {
        hq[i] = f2bf((rand() / (float)RAND_MAX - 0.5f) * 2);
        hk[i] = f2bf((rand() / (float)RAND_MAX - 0.5f) * 2);
        hg[i] = f2bf((rand() / (float)RAND_MAX - 0.5f) * 4);
    }
    for (int64_t i = 0; i < T * H; i++) hb[i] = f2bf((rand() / (float)RAND_MAX - 0.5f) * 4);
    void *dq, *dk, *dg, *db, *drec0, *drec1;
    cudaMalloc(&dq, n * 2);
    cudaMalloc(&dk, n * 2);
    cudaMalloc(&dg, n * 2);
    cudaMalloc(&db, T * H * 2);
    cudaMemcpy(dq, hq, n * 2, cudaMemcpyHostToDevice);
    cudaMemcpy(dk, hk, n * 2, cudaMemcpyHostToDevice);
    cudaMemcpy(dg, hg, n * 2, cudaMemcpyHostToDevice);
    cudaMemcpy(db, hb, T * H * 2, cudaMemcpyHostToDevice);
    const int64_t slots = T / 16, rb = slots * H * PF256_REC_BYTES;
    cudaMalloc(&drec0, rb);
    cudaMalloc(&drec1, rb);
    pf_params p;
    memset(&p, 0, sizeof p);
    p.B = 1;
    p.T = T;
    p.H = H;
    p.HV = H;
    p.N = 1;
    p.group = 1;
    p.K = K;
    p.V = V;
    p.vpad = V;
    p.chunks_per_row = slots;
    p.slots = slots;
    p.q = dq;
    p.k = dk;
    p.g = dg;
    p.v = dq;
    const int64_t s[3] = {T * H * K, H * K, K};
    for (int i = 0; i < 3; i++) p.q_s[i] = p.k_s[i] = p.g_s[i] = s[i];
    p.qkv_dtype = FKDA_DTYPE_BF16;
    p.g_dtype = FKDA_DTYPE_BF16;
    p.beta = db;
    p.beta_s[0] = T * H;
    p.beta_s[1] = H;
    p.beta_s[2] = 1;
    p.beta_dtype = FKDA_DTYPE_BF16;
    p.gate = FKDA_GATE_LOWER_BOUND;
    p.gate_scale = (float)(lb * 1.4426950408889634);
    p.scale = 1.0f / 16;
    p.l2norm = 1;
    p.beta_sigmoid = 1;
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    const char *names[5] = {"old", "bulk", "any"};
    uint16_t *r0 = (uint16_t *)malloc(rb), *r1 = (uint16_t *)malloc(rb);
    for (int v = 0; v < 3; v++) {
        p.records = (unsigned char *)(v == 0 ? drec0 : drec1);
        p.qkg_load = v == 1 ? PF_LOAD_BF16 : PF_LOAD_ELEMENTS;
        cudaMemset(p.records, 0, rb);
        float best = 1e9;
        for (int it = 0; it < 20; it++) {
            cudaEventRecord(e0);
            cudaError_t err = v == 0 ? old256_launch_prep(&p, 0) : pf256_launch_prep(&p, 0);
            cudaEventRecord(e1);
            cudaEventSynchronize(e1);
            if (err != cudaSuccess || cudaGetLastError() != cudaSuccess) {
                printf("%s: error %s\n", names[v], cudaGetErrorString(err));
                return 1;
            }
            float ms;
            cudaEventElapsedTime(&ms, e0, e1);
            if (ms < best) best = ms;
        }
        printf("K=%ld lb=%g %s: %.4f ms\n", (long)K, lb, names[v], best);
        if (v > 0) {
            cudaMemcpy(r0, drec0, rb, cudaMemcpyDeviceToHost);
            cudaMemcpy(r1, drec1, rb, cudaMemcpyDeviceToHost);
            /* compare as bf16 (gamma fp32 words: compare raw) */
            int64_t diff = 0, big = 0;
            double maxrel = 0;
            for (int64_t rec = 0; rec < slots * H; rec++) {
                const uint16_t *a = r0 + rec * (PF256_REC_BYTES / 2), *b = r1 + rec * (PF256_REC_BYTES / 2);
                for (int i = 0; i < PF256_REC_BYTES / 2; i++) {
                    if (i >= PF256_REC_GAMMA / 2 && i < PF256_REC_BINV / 2) {
                        if (a[i] != b[i]) diff++;
                        continue;
                    }
                    if (a[i] == b[i]) continue;
                    diff++;
                    const float x = bf2f(a[i]), y = bf2f(b[i]);
                    const double rel = fabs(x - y) / fmax(fabs(x), 1e-3);
                    if (rel > maxrel) maxrel = rel;
                    if (rel > 1e-2) big++;
                }
            }
            printf("   vs old: %ld of %ld halfwords differ, %ld by > 1e-2 rel, max rel %.3g\n", (long)diff,
                   (long)(rb / 2), (long)big, maxrel);
        }
    }
    return 0;
}

/* tf32_operand_probe.cu: what a tensor core does with the 13 low mantissa bits of an fp32 value
 * handed to mma.sync .tf32 as an operand, and whether tf32_operand (src/cuda/ptx_mma.cuh: the bits
 * plus 0x1000, the low bits left to the tensor core) reads as cvt.rna.tf32 rounds. The prep's step
 * 4 and step 6 (src/cuda/prefill_prep.cu, bf16 family) rely on it; no document promises it.
 *
 * One warp multiplies, for each test value x, the 16 x 8 A with a single nonzero entry A[0][0] by
 * the 8 x 8 B with B[0][0] = 1, so that D[0][0] is A[0][0] as the tensor core read it, exactly
 * (one product by 1, fp32 accumulation of zeros). Three readings of each x: its raw bits (the
 * hardware's own treatment: truncation or rounding), cvt.rna.tf32 (the reference), tf32_operand.
 * It prints each and exits 1 if tf32_operand and cvt.rna differ for any finite x.
 * Build and run, from the repository root (the machine with the GPU):
 *   nvcc -gencode=arch=compute_90a,code=sm_90a -O3 -Isrc/cuda -o /tmp/tf32_probe \
 *       dev/cuda/tf32_operand_probe.cu && /tmp/tf32_probe
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "ptx_mma.cuh"

#define NVAL 10

__global__ void probe(const uint32_t *x, float *out)
{
    const int lane = threadIdx.x;
    for (int i = 0; i < NVAL; i++) {
        for (int how = 0; how < 3; how++) {
            uint32_t v;
            float f;
            memcpy(&f, &x[i], 4);
            if (how == 0)
                v = x[i];
            else if (how == 1)
                asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(v) : "f"(f));
            else
                v = tf32_operand(f);
            const uint32_t a[4] = {lane == 0 ? v : 0u, 0u, 0u, 0u}; /* a0 of lane 0: A[0][0] */
            const uint32_t b0 = lane == 0 ? 0x3f800000u : 0u;       /* b0 of lane 0: B[0][0] = 1 */
            float d[4] = {0.0f, 0.0f, 0.0f, 0.0f};
            mma_tf32_1688(d, a, b0, 0u, d);
            if (lane == 0) out[3 * i + how] = d[0];
        }
    }
}

int main(void)
{
    /* 1 + low bits below, at and above half a tf32 unit; a carry into the exponent; negatives; a
     * subnormal; the largest finite float */
    const uint32_t x[NVAL] = {0x3f800fffu, 0x3f801000u, 0x3f801fffu, 0x3fffffffu, 0x3fffefffu,
                              0xbf801000u, 0xbf800fffu, 0x00001fffu, 0x7f7fffffu, 0x3f800000u};
    uint32_t *dx;
    float *dout, out[3 * NVAL];
    cudaMalloc(&dx, sizeof x);
    cudaMalloc(&dout, sizeof out);
    cudaMemcpy(dx, x, sizeof x, cudaMemcpyHostToDevice);
    probe<<<1, 32>>>(dx, dout);
    if (cudaMemcpy(out, dout, sizeof out, cudaMemcpyDeviceToHost) != cudaSuccess) {
        printf("CUDA error: %s\n", cudaGetErrorString(cudaGetLastError()));
        return 2;
    }
    int bad = 0, truncates = 1;
    printf("%-10s %-16s %-16s %-16s\n", "x bits", "raw bits read", "cvt.rna", "tf32_operand");
    for (int i = 0; i < NVAL; i++) {
        uint32_t r[3];
        for (int k = 0; k < 3; k++) memcpy(&r[k], &out[3 * i + k], 4);
        printf("0x%08x 0x%08x       0x%08x       0x%08x       %s\n", x[i], r[0], r[1], r[2],
               r[1] == r[2] ? "" : "DIFFERS");
        bad += r[1] != r[2];
        truncates &= r[0] == (x[i] & 0xffffe000u) || x[i] == 0x00001fffu; /* a subnormal may flush */
    }
    printf("the tensor core %s the low 13 bits of a raw operand\n", truncates ? "drops" : "does not just drop");
    printf("%s\n", bad ? "FAIL: tf32_operand does not read as cvt.rna.tf32" : "OK: tf32_operand reads as cvt.rna.tf32");
    return bad ? 1 : 0;
}

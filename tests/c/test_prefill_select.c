/*
 * test_prefill_select.c: the CUDA prefill's choice of kernels and shapes (src/cuda/prefill_select.c,
 * plain C, compiled into this test), on the CPU, at 132 SMs (an H100 or H200):
 *   1. the benchmark's shapes (bench/bench_prefill_gpu.py, issue 17's rows), each decision spelled
 *      out from the rules' arithmetic: the slice whose busiest SM has the fewest warps (wider ones
 *      within 10 %), the split output where its warps number at most 4 an SM, segments where the
 *      chains alone leave SMs idle;
 *   2. what keeps segments off, one condition at a time (varlen, checkpoints or fla's h, V other
 *      than 128, K > 128, fewer than 128 chunks);
 *   3. the fp16 family (fp16 and fp32 q at K <= 128; never with the split output) and the outputs
 *      the split output does not serve;
 *   4. K > 128: its own slices (at most 64 columns), no segments, no split output;
 *   5. the knobs, read by fkda_tuning_read as tuning.h documents: FKDA_PREFILL_VSLICE,
 *      FKDA_PREFILL_SEGMENTS (clamped to the chunks), FKDA_PREFILL_SPLIT_OUT both ways,
 *      FKDA_PREFILL_FP16_CHAIN=0, and values outside their sets ignored;
 *   6. the prep's exact products for calls of fewer than 256 (token, query/key head) rows, in
 *      both families of K, never the fp16 family.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/core/tuning.h"
#include "../../src/cuda/prefill_select.h"
#include "flashkda.h"
#include "test_util.h"

static const char *const knobs[] = {"FKDA_PREFILL_VSLICE", "FKDA_PREFILL_SEGMENTS", "FKDA_PREFILL_SPLIT_OUT",
                                    "FKDA_PREFILL_FP16_CHAIN"};

/* N sequences of T tokens (with cu_seqlens: T of all of them), HV value heads, bf16 inputs and a
 * bf16 output of 16-byte rows, on 132 SMs. */
static fkda_prefill_call call(int64_t N, int64_t T, int64_t HV, int64_t K, int64_t V, int cu)
{
    fkda_prefill_call c;
    memset(&c, 0, sizeof c);
    c.N = N;
    c.T = T;
    c.H = HV;
    c.HV = HV;
    c.K = K;
    c.V = V;
    c.cu_seqlens = cu;
    c.out_bf16_rows16 = 1;
    c.sm_count = 132;
    return c;
}

static fkda_prefill_choice choose(const fkda_prefill_call *c)
{
    fkda_tuning t;
    fkda_tuning_read(&t);
    fkda_prefill_choice x;
    fkda_prefill_select(c, &t, &x);
    return x;
}

/* One decision, every field of the choice: `want` names the fields that are not 0. */
static void expect(const char *what, const fkda_prefill_call *c, fkda_prefill_choice want)
{
    const fkda_prefill_choice x = choose(c);
    CHECK(x.fp16_chain == want.fp16_chain && x.segments == want.segments && x.vslice == want.vslice &&
              x.split_out == want.split_out && x.exact_qk == want.exact_qk,
          "%s: fp16 chain %d, segments %lld, slice %d, split output %d, exact products %d (want %d, %lld, %d, %d, %d)",
          what, x.fp16_chain, (long long)x.segments, x.vslice, x.split_out, x.exact_qk, want.fp16_chain,
          (long long)want.segments, want.vslice, want.split_out, want.exact_qk);
}

/* The same choice with the prep's exact products (choose_exact_qk: calls of few rows). */
static fkda_prefill_choice exact(fkda_prefill_choice x)
{
    x.exact_qk = 1;
    return x;
}

/* The choices, by their fields that are not 0. */
#define WHOLE(vs) ((fkda_prefill_choice){.segments = 1, .vslice = (vs)})
#define WHOLE_SPLIT(vs) ((fkda_prefill_choice){.segments = 1, .vslice = (vs), .split_out = 1})
#define SEGMENTS(P) ((fkda_prefill_choice){.segments = (P), .vslice = 16})
#define FP16(P, vs) ((fkda_prefill_choice){.fp16_chain = 1, .segments = (P), .vslice = (vs)})
#define FP16_SPLIT(vs) ((fkda_prefill_choice){.fp16_chain = 1, .segments = 1, .vslice = (vs), .split_out = 1})

int main(void)
{
    for (size_t i = 0; i < sizeof knobs / sizeof knobs[0]; i++) unsetenv(knobs[i]);

    /* 1. The bench's shapes. Loads are (CTAs per SM, rounded up) x (warps per CTA) for slices of
     * 128, 64, 32, 16 columns. */
    fkda_prefill_call c = call(1, 8192, 32, 128, 128, 0);
    /* 32 chains of 8 warps: loads 8, 4, 2, 2 -> 32 columns; 128 split CTAs x 4 warps <= 528 */
    expect("T = 8192 H = 32", &c, WHOLE_SPLIT(32));
    c = call(1, 1024, 32, 128, 128, 0);
    expect("T = 1024 H = 32", &c, WHOLE_SPLIT(32));
    c = call(1, 32768, 32, 128, 128, 0);
    expect("T = 32768 H = 32", &c, WHOLE_SPLIT(32));
    /* loads 8, 4, 4, 4 -> 64; 128 split CTAs of 8 warps > 528: unsplit */
    c = call(1, 8192, 64, 128, 128, 0);
    expect("T = 8192 H = 64", &c, WHOLE(64));
    /* loads 8, 8, 6, 6 -> 32; 384 CTAs of 4 split warps > 528 */
    c = call(1, 8192, 96, 128, 128, 0);
    expect("T = 8192 H = 96", &c, WHOLE(32));
    /* varlen of 6: 576 heads x 8 warps: loads 40, 36, 36, 35 -> 64 */
    c = call(6, 8192, 96, 128, 128, 1);
    expect("T = 8192 H = 96, varlen of 6", &c, WHOLE(64));
    /* 8 x 1024: loads 48, 48, 48, 47 -> 128 (the split output serves at most 64) */
    c = call(8, 8192, 96, 128, 128, 1);
    expect("8 x 1024 H = 96", &c, WHOLE(128));
    /* 4 x 8192 H = 12: loads 8, 4, 4, 3 -> 16; 384 CTAs x 2 warps > 528 */
    c = call(4, 32768, 12, 128, 128, 1);
    expect("4 x 8192 H = 12", &c, WHOLE(16));
    /* 8 x 2048 H = 16: loads 8, 8, 8, 8 -> 128 */
    c = call(8, 16384, 16, 128, 128, 1);
    expect("8 x 2048 H = 16", &c, WHOLE(128));
    /* Segments: W = 8 HV warps <= 132; P = (3 x 132 + W) / (2 W) + 1, at most 16 and nch / 64 */
    c = call(1, 8192, 12, 128, 128, 0);
    expect("T = 8192 H = 12 (W = 96: P = 3)", &c, SEGMENTS(3));
    c = call(1, 16384, 16, 128, 128, 0);
    expect("T = 16384 H = 16 (W = 128: P = 3)", &c, SEGMENTS(3));
    c = call(1, 65536, 8, 128, 128, 0);
    expect("T = 65536 H = 8 (W = 64: P = 4)", &c, SEGMENTS(4));
    c = call(1, 8192, 4, 128, 128, 0);
    expect("T = 8192 H = 4 (W = 32: P = 7)", &c, SEGMENTS(7));
    c = call(1, 65536, 1, 128, 128, 0);
    expect("T = 65536 H = 1 (W = 8: P = 16, the cap)", &c, SEGMENTS(16));
    c = call(1, 4096, 1, 128, 128, 0);
    expect("T = 4096 H = 1 (256 chunks: P = 4)", &c, SEGMENTS(4));

    /* 2. What keeps segments off (T = 16384 H = 16 would take 3). One sequence of a varlen batch
     * gets the same slices as B = 1: 16 heads, loads 8, 4, 2, 1 -> 16; 128 split CTAs x 2 warps. */
    c = call(1, 16384, 16, 128, 128, 1);
    expect("varlen", &c, WHOLE_SPLIT(16));
    c = call(1, 16384, 16, 128, 128, 0);
    c.states_inside = 1;
    expect("checkpoints or fla's h", &c, WHOLE_SPLIT(16));
    c = call(1, 16384, 16, 128, 64, 0);
    expect("V = 64 (loads -, 4, 2, 1 -> 16)", &c, WHOLE_SPLIT(16));
    c = call(1, 1024, 16, 128, 128, 0);
    expect("64 chunks", &c, WHOLE_SPLIT(16));
    c = call(1, 2048, 16, 128, 128, 0);
    expect("128 chunks (P = 2)", &c, SEGMENTS(2));
    c = call(1, 0, 16, 128, 128, 0);
    expect("T = 0 (no rows: the exact products' rule holds, and nothing runs)", &c, exact(WHOLE_SPLIT(16)));
    c = call(1, 16384, 17, 128, 128, 0);
    expect("W = 136 > 132 SMs (loads 8, 4, 2, 2 -> 32)", &c, WHOLE_SPLIT(32));

    /* 3. The fp16 family (the split output serves it), and the outputs it does not serve. */
    c = call(1, 8192, 32, 128, 128, 0);
    c.fp16_inputs = 1;
    expect("fp16 or fp32 q (the split rule as for bf16)", &c, FP16_SPLIT(32));
    c.K = 64;
    expect("fp16 or fp32 q, K = 64", &c, FP16_SPLIT(32));
    c = call(1, 8192, 64, 128, 128, 0);
    c.fp16_inputs = 1;
    expect("fp16 or fp32 q at H = 64 (8 split warps an SM: not taken)", &c, FP16(1, 64));
    c = call(1, 8192, 32, 128, 128, 0);
    c.out_bf16_rows16 = 0;
    expect("an output other than bf16 with 16-byte rows", &c, WHOLE(32));
    c = call(1, 16384, 16, 128, 128, 0);
    c.fp16_inputs = 1;
    expect("fp16 family with segments", &c, FP16(3, 16));

    /* 4. K > 128: slices of 64, 32, 16 (two warps a 16 columns): loads 8, 8, 8 -> 64. */
    c = call(1, 8192, 32, 256, 256, 0);
    expect("K = V = 256", &c, WHOLE(64));
    c.fp16_inputs = 1;
    expect("K = V = 256, fp16 q (the K = 256 kernels round to bf16)", &c, WHOLE(64));
    c = call(1, 65536, 8, 200, 128, 0);
    expect("K = 200 T = 65536 H = 8 (no segments; loads 8, 4, 2 -> 16)", &c, WHOLE(16));

    /* 5. The knobs. */
    c = call(1, 8192, 32, 128, 128, 0);
    setenv("FKDA_PREFILL_VSLICE", "64", 1);
    expect("FKDA_PREFILL_VSLICE=64 at H = 32 (64 split CTAs x 8 warps <= 528)", &c, WHOLE_SPLIT(64));
    setenv("FKDA_PREFILL_VSLICE", "128", 1);
    expect("FKDA_PREFILL_VSLICE=128 (no split output past 64)", &c, WHOLE(128));
    setenv("FKDA_PREFILL_VSLICE", "48", 1);
    expect("FKDA_PREFILL_VSLICE=48 (not a slice: ignored)", &c, WHOLE_SPLIT(32));
    setenv("FKDA_PREFILL_VSLICE", "32", 1);
    fkda_prefill_call v48 = call(1, 8192, 32, 128, 48, 0);
    expect("FKDA_PREFILL_VSLICE=32 with V = 48 (does not divide: the rule's 16)", &v48, WHOLE_SPLIT(16));
    fkda_prefill_call k256 = call(1, 8192, 32, 256, 256, 0);
    expect("FKDA_PREFILL_VSLICE=32 at K = 256", &k256, WHOLE(32));
    setenv("FKDA_PREFILL_VSLICE", "128", 1);
    expect("FKDA_PREFILL_VSLICE=128 at K = 256 (ignored: at most 64)", &k256, WHOLE(64));
    unsetenv("FKDA_PREFILL_VSLICE");

    setenv("FKDA_PREFILL_SEGMENTS", "1", 1);
    c = call(1, 16384, 16, 128, 128, 0);
    expect("FKDA_PREFILL_SEGMENTS=1 at T = 16384 H = 16", &c, WHOLE_SPLIT(16));
    setenv("FKDA_PREFILL_SEGMENTS", "8", 1);
    c = call(1, 8192, 32, 128, 128, 0);
    expect("FKDA_PREFILL_SEGMENTS=8 at H = 32", &c, SEGMENTS(8));
    setenv("FKDA_PREFILL_SEGMENTS", "1000", 1);
    expect("FKDA_PREFILL_SEGMENTS=1000 (clamped to 64)", &c, SEGMENTS(64));
    c = call(1, 160, 32, 128, 128, 0);
    expect("FKDA_PREFILL_SEGMENTS=1000 at 10 chunks (one a segment)", &c, SEGMENTS(10));
    c = call(1, 8192, 32, 128, 128, 1);
    expect("FKDA_PREFILL_SEGMENTS with varlen (no segments)", &c, WHOLE_SPLIT(32));
    unsetenv("FKDA_PREFILL_SEGMENTS");

    c = call(1, 8192, 32, 128, 128, 0);
    setenv("FKDA_PREFILL_SPLIT_OUT", "0", 1);
    expect("FKDA_PREFILL_SPLIT_OUT=0 at H = 32", &c, WHOLE(32));
    setenv("FKDA_PREFILL_SPLIT_OUT", "1", 1);
    c = call(1, 8192, 64, 128, 128, 0);
    expect("FKDA_PREFILL_SPLIT_OUT=1 at H = 64", &c, WHOLE_SPLIT(64));
    c = call(8, 8192, 96, 128, 128, 1);
    expect("FKDA_PREFILL_SPLIT_OUT=1 at 128 columns (does not serve)", &c, WHOLE(128));
    c = call(1, 8192, 64, 128, 128, 0);
    c.fp16_inputs = 1;
    expect("FKDA_PREFILL_SPLIT_OUT=1 on the fp16 family at H = 64", &c, FP16_SPLIT(64));
    setenv("FKDA_PREFILL_SPLIT_OUT", "yes", 1);
    c = call(1, 8192, 64, 128, 128, 0);
    expect("FKDA_PREFILL_SPLIT_OUT=yes (not 0 or 1: the rule)", &c, WHOLE(64));
    unsetenv("FKDA_PREFILL_SPLIT_OUT");

    setenv("FKDA_PREFILL_FP16_CHAIN", "0", 1);
    c = call(1, 8192, 32, 128, 128, 0);
    c.fp16_inputs = 1;
    expect("FKDA_PREFILL_FP16_CHAIN=0 (the bf16 kernels, split output and all)", &c, WHOLE_SPLIT(32));
    setenv("FKDA_PREFILL_FP16_CHAIN", "1", 1);
    expect("FKDA_PREFILL_FP16_CHAIN=1", &c, FP16_SPLIT(32));
    unsetenv("FKDA_PREFILL_FP16_CHAIN");

    /* 6. The prep's exact products: fewer than 256 (token, query/key head) rows, both families of
     * K, not the fp16 family; value heads do not count (GVA shares each q.k product). */
    c = call(1, 1, 1, 128, 128, 0);
    expect("T = 1 H = 1", &c, exact(WHOLE_SPLIT(16)));
    c = call(1, 255, 1, 128, 128, 0);
    expect("T = 255 H = 1", &c, exact(WHOLE_SPLIT(16)));
    c = call(1, 256, 1, 128, 128, 0);
    expect("T = 256 H = 1 (256 rows: not exact)", &c, WHOLE_SPLIT(16));
    c = call(1, 7, 32, 128, 128, 0);
    expect("T = 7 H = 32 (224 rows)", &c, exact(WHOLE_SPLIT(32)));
    c = call(4, 2, 32, 128, 128, 0);
    expect("B = 4 T = 2 H = 32 (256 rows: not exact)", &c, WHOLE(128));
    c = call(3, 200, 4, 128, 128, 1);
    expect("varlen, 200 tokens in all, H = 4 (800 rows: not exact)", &c, WHOLE_SPLIT(16));
    c.H = 1;
    expect("varlen, 200 tokens in all, H = 1 (HV = 4)", &c, exact(WHOLE_SPLIT(16)));
    c = call(1, 1, 1, 128, 128, 0);
    c.fp16_inputs = 1;
    expect("T = 1, fp16 or fp32 q (the fp16 family)", &c, FP16_SPLIT(16));
    c = call(1, 1, 1, 256, 256, 0);
    expect("T = 1, K = V = 256", &c, exact(WHOLE(16)));

    return test_exit("test_prefill_select");
}

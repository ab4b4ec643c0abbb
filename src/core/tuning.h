/*
 * tuning.h: every FKDA_* tuning variable of the library, read from the environment in one place
 * into one struct. Unset (or malformed) variables leave the library's own rules in charge.
 *
 * They exist for the benchmarks (bench/bench_decode_gpu.py, bench/bench_prefill_gpu.py,
 * scripts/ab_decode.sh) and for the tests, which force each kernel variant and instruction set.
 *
 * When they are read: the CUDA decode and prefill call fkda_tuning_read on every call, because the
 * benchmark and the tests change them between calls of one process (os.environ, setenv); a read is
 * a dozen getenv calls, nothing next to a launch. The CPU instruction set (FKDA_CPU_ISA) is read
 * once, at the first CPU matrix kernel, and holds for the life of the process: the tests set it
 * per process (ctest's ENVIRONMENT).
 */
#ifndef FKDA_CORE_TUNING_H
#define FKDA_CORE_TUNING_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FKDA_TUNING_UNSET (-1)       /* a switch that is neither "0" nor "1" */
#define FKDA_TUNING_VARIANT_CHARS 64 /* the longest variant name kept, with its NUL */

typedef enum fkda_tuning_isa {
    FKDA_TUNING_ISA_ANY = 0,      /* unset: the best the CPU has */
    FKDA_TUNING_ISA_BASELINE = 1, /* FKDA_CPU_ISA=baseline */
    FKDA_TUNING_ISA_AVX2 = 2      /* FKDA_CPU_ISA=avx2: at most AVX2 */
} fkda_tuning_isa;

typedef struct fkda_tuning {
    /* CUDA decode (src/cuda/decode_select.c). Switches: 1 ("1"), 0 ("0") or FKDA_TUNING_UNSET. */
    int decode_pdl;           /* FKDA_DECODE_PDL: programmatic dependent launch on sm_90 (0 turns it off) */
    int decode_load_ef;       /* FKDA_DECODE_LOAD_EF: evict-first loads of the state */
    int decode_ksplit;        /* FKDA_DECODE_KSPLIT: two warps split the keys of a column */
    int decode_packed;        /* FKDA_DECODE_PACKED: the packed bf16 kernels where they can serve */
    int decode_narrow;        /* FKDA_DECODE_NARROW: narrow tiles (32 values per lane) for dense heads */
    int decode_bf16_tokens;   /* FKDA_DECODE_BF16_TOKENS: 0 keeps all-bf16 tokens on the generic kernels */
    int decode_warps_per_cta; /* FKDA_DECODE_WARPS_PER_CTA: 1, 2, 4 or 8 (0: unset or anything else) */
    /* FKDA_DECODE_VARIANT=<name>: that variant of src/cuda/decode_variants.h wherever it can serve
     * the call ("" : unset). Overrides the switches above for the choice of kernel. */
    char decode_variant[FKDA_TUNING_VARIANT_CHARS];

    /* CUDA decode layer (src/cuda/decode_layer_select.c). */
    int decode_layer_fused;   /* FKDA_DECODE_LAYER_FUSED: 0 the three launches, 1 the single kernel where it serves */
    int decode_layer_cluster; /* FKDA_DECODE_LAYER_CLUSTER: the single kernel's CTAs per head, 1, 2, 4 or 8 (0: unset) */
    int decode_layer_conv_vec; /* FKDA_DECODE_LAYER_CONV_VEC: 1 the conv's 8-channel threads wherever they serve, 0 never */
    int decode_layer_wide;     /* FKDA_DECODE_LAYER_WIDE: 1 the single kernel's wide tile wherever it serves, 0 never */
    int decode_layer_packed; /* FKDA_DECODE_LAYER_PACKED: 1 the wide tile's packed form for every bf16 pool it takes, 0 never */

    /* CUDA prefill (src/cuda/prefill_select.c). */
    int64_t prefill_segments; /* FKDA_PREFILL_SEGMENTS, clamped to 1..64 (0: unset; 1: no segments) */
    int prefill_vslice;       /* FKDA_PREFILL_VSLICE: 16, 32, 64 or 128 (0: unset or anything else) */
    int prefill_fp16_chain;   /* FKDA_PREFILL_FP16_CHAIN: 0 keeps fp16 and fp32 inputs on the bf16 kernels (switch) */
    int prefill_split_out;    /* FKDA_PREFILL_SPLIT_OUT: 1 the chain's output on warps of their own wherever it can
                                 run, 0 never (switch) */

    /* CPU (src/cpu/chunk_kernels.c). */
    fkda_tuning_isa cpu_isa; /* FKDA_CPU_ISA: baseline or avx2 caps the instruction set */
} fkda_tuning;

/* Reads every variable above from the environment into *t. */
void fkda_tuning_read(fkda_tuning *t);

/* The defaults: every knob unset (what fkda_tuning_read gives in an empty environment). */
void fkda_tuning_defaults(fkda_tuning *t);

#ifdef __cplusplus
}
#endif

#endif /* FKDA_CORE_TUNING_H */

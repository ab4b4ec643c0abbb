/* tuning.c: reads the FKDA_* tuning variables (tuning.h) from the environment. */
#include "tuning.h"

#include <stdlib.h>
#include <string.h>

/* 1 or 0 where the variable is exactly "1" or "0", else FKDA_TUNING_UNSET. */
static int read_switch(const char *name)
{
    const char *value = getenv(name);
    if (value == NULL || (value[0] != '0' && value[0] != '1') || value[1] != '\0') return FKDA_TUNING_UNSET;
    return value[0] == '1';
}

/* atoi of the variable where that is one of the `n` allowed values, else 0. */
static int read_choice(const char *name, const int *allowed, int n)
{
    const char *value = getenv(name);
    if (value == NULL) return 0;
    const int v = atoi(value);
    for (int i = 0; i < n; i++)
        if (v == allowed[i]) return v;
    return 0;
}

void fkda_tuning_defaults(fkda_tuning *t)
{
    memset(t, 0, sizeof *t);
    t->decode_pdl = t->decode_load_ef = t->decode_ksplit = FKDA_TUNING_UNSET;
    t->decode_packed = t->decode_narrow = t->decode_bf16_tokens = FKDA_TUNING_UNSET;
    t->decode_layer_fused = FKDA_TUNING_UNSET;
    t->decode_layer_conv_vec = FKDA_TUNING_UNSET;
    t->decode_layer_wide = FKDA_TUNING_UNSET;
    t->decode_layer_packed = FKDA_TUNING_UNSET;
    t->prefill_fp16_chain = FKDA_TUNING_UNSET;
    t->prefill_split_out = FKDA_TUNING_UNSET;
}

void fkda_tuning_read(fkda_tuning *t)
{
    fkda_tuning_defaults(t);
    t->decode_pdl = read_switch("FKDA_DECODE_PDL");
    t->decode_load_ef = read_switch("FKDA_DECODE_LOAD_EF");
    t->decode_ksplit = read_switch("FKDA_DECODE_KSPLIT");
    t->decode_packed = read_switch("FKDA_DECODE_PACKED");
    t->decode_narrow = read_switch("FKDA_DECODE_NARROW");
    t->decode_bf16_tokens = read_switch("FKDA_DECODE_BF16_TOKENS");
    static const int warps[] = {1, 2, 4, 8};
    t->decode_warps_per_cta = read_choice("FKDA_DECODE_WARPS_PER_CTA", warps, 4);
    const char *variant = getenv("FKDA_DECODE_VARIANT");
    if (variant != NULL && strlen(variant) < sizeof t->decode_variant) strcpy(t->decode_variant, variant);
    t->decode_layer_fused = read_switch("FKDA_DECODE_LAYER_FUSED");
    t->decode_layer_conv_vec = read_switch("FKDA_DECODE_LAYER_CONV_VEC");
    t->decode_layer_wide = read_switch("FKDA_DECODE_LAYER_WIDE");
    t->decode_layer_packed = read_switch("FKDA_DECODE_LAYER_PACKED");
    static const int clusters[] = {1, 2, 4, 8};
    t->decode_layer_cluster = read_choice("FKDA_DECODE_LAYER_CLUSTER", clusters, 4);

    /* Present at all: the count, clamped (an empty or non-numeric value is 1: no segments). */
    const char *segments = getenv("FKDA_PREFILL_SEGMENTS");
    if (segments != NULL) {
        const long long p = atoll(segments);
        t->prefill_segments = p < 1 ? 1 : p > 64 ? 64 : p;
    }
    static const int slices[] = {16, 32, 64, 128};
    t->prefill_vslice = read_choice("FKDA_PREFILL_VSLICE", slices, 4);
    t->prefill_fp16_chain = read_switch("FKDA_PREFILL_FP16_CHAIN");
    t->prefill_split_out = read_switch("FKDA_PREFILL_SPLIT_OUT");

    const char *isa = getenv("FKDA_CPU_ISA");
    if (isa && strcmp(isa, "baseline") == 0) t->cpu_isa = FKDA_TUNING_ISA_BASELINE;
    if (isa && strcmp(isa, "avx2") == 0) t->cpu_isa = FKDA_TUNING_ISA_AVX2;
}

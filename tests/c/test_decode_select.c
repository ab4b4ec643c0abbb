/*
 * test_decode_select.c: the CUDA decode's choice of kernel variant and geometry
 * (src/cuda/decode_select.c, plain C, compiled into this test), on the CPU.
 *
 * 1. The pin: over a grid of calls (heads 1 to 32768 across every threshold, 78, 114 and 132 SMs,
 *    compute capability 8 and 9, fp32 and bf16 pools, both layouts, dense 128 / vectorizable /
 *    scalar shapes, one token or several, cu_seqlens (vLLM's packed form T = N among them), 2-D
 *    indices, all-bf16 tokens or not, token offsets in 31 bits or not, L2 sizes that flip
 *    evict-first loads, and a set of knob overrides), every decision must be the one pinned
 *    below: a checksum per block of the grid (a block: one call description, every head count)
 *    and a few decisions spelled out. The pinned values were generated from a transcription of
 *    the selection as it stood before it moved to its own file (commit 8bd0caa,
 *    fkda_decode_recurrent_launch), then regenerated: when the kernels compiled for
 *    cu_seqlens (CU) took vLLM's packed form (the decisions that changed: calls with cu_seqlens,
 *    all-bf16 tokens and at most one token per sequence, and FKDA_DECODE_PACKED=1 with
 *    cu_seqlens), and when the _spec kernels (CU = 2) took its speculative form (the decisions
 *    that changed: dense 128 calls with cu_seqlens, 2-D indices and all-bf16 tokens, under every
 *    knob set but FKDA_DECODE_BF16_TOKENS=0; then those of them with wide fp32 [K, V] heads below
 *    split K's threshold, when the _spec set gained its two fp32 [K, V] rows without split K),
 *    and when bf16 [V, K] pools took the narrow tiles at more heads (the decisions that changed:
 *    dense 128 bf16 [V, K] calls with all-bf16 tokens, one token per sequence or the _spec
 *    form), and when vLLM's packed form took the _early kernel for small batches of wide bf16
 *    [K, V] heads (the decisions that changed: dense 128 bf16 [K, V] calls with cu_seqlens, 1-D
 *    indices, all-bf16 tokens and at most one token per sequence, on the wide tile, at most half
 *    as many heads as SMs), and when fp32 [V, K] pools took the narrow tiles up to 32 heads an SM
 *    (the decisions that changed: dense 128 fp32 [V, K] calls with 1-D indices or none, all-bf16
 *    tokens and one token per sequence, from one to 32 heads an SM), and when the wide bf16 [K, V]
 *    _spec tiles took 8 warps a CTA from 15 heads an SM (the decisions that changed: dense 128
 *    bf16 [K, V] calls with cu_seqlens, 2-D indices and all-bf16 tokens, on the wide tile, from
 *    15 heads an SM, without FKDA_DECODE_BF16_TOKENS=0); a change of any decision
 *    fails here; if the change is intended, regenerate them (FKDA_PIN_PRINT=1 prints the arrays)
 *    and say why in the commit.
 * 2. Every choice serves its call (fkda_decode_variant_serves), with or without
 *    FKDA_DECODE_VARIANT, and a forced variant is taken exactly where it serves; every variant of
 *    the table is taken somewhere on the grid when forced.
 * 3. vLLM's packed form (cu_seqlens, T = N) gets what the one-token form (T = 1) of the same
 *    call gets: the same geometry, and the same kernel, or its CU twin where the kernel is
 *    compiled for one form (TOK, packed), or that twin's _early form (the wide bf16 [K, V] tile
 *    at small batches, decode_select.c); a call where some sequence must have several tokens
 *    (T > N) never gets a CU kernel unless forced.
 * 4. fkda_tuning_read parses the FKDA_* variables as documented in src/core/tuning.h.
 */
#define _POSIX_C_SOURCE 200809L
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/core/tuning.h"
#include "../../src/cuda/decode_select.h"
#include "test_util.h"

/* ---- the grid ------------------------------------------------------------------------------ */

/* Every head count up to 300 (the thresholds of 78, 114 and 132 SMs: sm / 6, sm / 4, sm / 3,
 * sm / 2, sm, 2 sm), then the larger thresholds (2 sm + 1, the L2 size over the state's bytes)
 * and powers of two up to 32768. */
static int64_t heads_list[400];
static int heads_count;

static void make_heads(void)
{
    static const int64_t large[] = {312,  320,  456,  512,   528,   640,   1024,  1279,  1280, 1281, 1599,
                                    1600, 1601, 2048, 2559,  2560,  2561,  3199,  3200,  3201, 4096, 6399,
                                    6400, 6401, 8192, 12799, 12800, 12801, 16384, 25600, 32768};
    heads_count = 0;
    for (int64_t h = 1; h <= 300; h++) heads_list[heads_count++] = h;
    for (size_t i = 0; i < sizeof large / sizeof large[0]; i++) heads_list[heads_count++] = large[i];
}

typedef struct device_desc {
    const char *name;
    int sm_count, cc_major;
    int64_t l2_bytes;
} device_desc;
static const device_desc devices[] = {
    {"78 SMs cc 8 (40 MiB L2)", 78, 8, 40LL << 20},   {"78 SMs cc 9 (40 MiB L2)", 78, 9, 40LL << 20},
    {"114 SMs cc 8 (50 MiB L2)", 114, 8, 50LL << 20}, {"114 SMs cc 9 (50 MiB L2)", 114, 9, 50LL << 20},
    {"132 SMs cc 8 (50 MiB L2)", 132, 8, 50LL << 20}, {"132 SMs cc 9 (50 MiB L2)", 132, 9, 50LL << 20},
};
#define KNOB_DEVICE 5 /* the knob overrides run on this device */

typedef struct shape_desc {
    const char *name;
    int K, V, vectorizable, dense128;
} shape_desc;
static const shape_desc shapes[] = {
    {"K=V=128 dense", 128, 128, 1, 1},     {"K=V=128 vectors, rows padded", 128, 128, 1, 0},
    {"K=64 V=256 vectors", 64, 256, 1, 0}, {"K=100 V=50 scalar", 100, 50, 0, 0},
    {"K=V=256 scalar", 256, 256, 0, 0},
};
#define KNOB_SHAPES 2 /* the knob overrides run on the first two shapes */

typedef struct tokens_desc {
    const char *name;
    int64_t T, N; /* N: sequences (only read with cu_seqlens) */
    int cu_seqlens, idx_2d, tokens_bf16, fit;
} tokens_desc;
static const tokens_desc token_cases[] = {
    {"T=1 all-bf16 tokens", 1, 0, 0, 0, 1, 1},
    {"T=1 all-bf16 tokens, offsets past 31 bits", 1, 0, 0, 0, 1, 0},
    {"T=1 mixed token dtypes", 1, 0, 0, 0, 0, 1},
    {"T=3 all-bf16 tokens", 3, 0, 0, 0, 1, 1},
    {"varlen T=5 N=2 all-bf16 tokens", 5, 2, 1, 0, 1, 1},
    {"varlen T=1 N=1 all-bf16 tokens", 1, 1, 1, 0, 1, 1},
    {"2-D indices T=2 all-bf16 tokens", 2, 0, 0, 1, 1, 1},
    {"2-D indices T=1 all-bf16 tokens", 1, 0, 0, 1, 1, 1},
    /* vLLM's packed form of a decode step: [1, N, H, K] tokens, cu_seqlens = arange(N + 1) (only
     * T and N are known to the host), 1-D indices; and its neighbours. */
    {"varlen T=N=64 all-bf16 tokens", 64, 64, 1, 0, 1, 1},
    {"varlen T=N=64 mixed token dtypes", 64, 64, 1, 0, 0, 1},
    {"varlen T=N=64 all-bf16 tokens, offsets past 31 bits", 64, 64, 1, 0, 1, 0},
    {"varlen T=3 N=4 all-bf16 tokens", 3, 4, 1, 0, 1, 1},
    {"varlen 2-D indices T=8 N=4 all-bf16 tokens", 8, 4, 1, 1, 1, 1},
};

/* Knob overrides, as "NAME=value" pairs applied to fkda_tuning (the first: none). */
static const char *const knob_sets[] = {
    "",
    "FKDA_DECODE_PDL=0",
    "FKDA_DECODE_LOAD_EF=0",
    "FKDA_DECODE_LOAD_EF=1",
    "FKDA_DECODE_KSPLIT=0",
    "FKDA_DECODE_KSPLIT=1",
    "FKDA_DECODE_PACKED=0",
    "FKDA_DECODE_PACKED=1",
    "FKDA_DECODE_NARROW=0",
    "FKDA_DECODE_NARROW=1",
    "FKDA_DECODE_BF16_TOKENS=0",
    "FKDA_DECODE_WARPS_PER_CTA=1",
    "FKDA_DECODE_WARPS_PER_CTA=2",
    "FKDA_DECODE_WARPS_PER_CTA=8",
    "FKDA_DECODE_KSPLIT=1 FKDA_DECODE_NARROW=0 FKDA_DECODE_PACKED=1",
    "FKDA_DECODE_PACKED=1 FKDA_DECODE_NARROW=1",
};
#define KNOB_SETS (int)(sizeof knob_sets / sizeof knob_sets[0])

/* The knobs of one set: the environment is set as written and read back by fkda_tuning_read
 * (so the pin also covers the parsing). */
static void tuning_for(const char *set, fkda_tuning *t)
{
    static const char *const names[] = {"FKDA_DECODE_PDL",           "FKDA_DECODE_LOAD_EF", "FKDA_DECODE_KSPLIT",
                                        "FKDA_DECODE_PACKED",        "FKDA_DECODE_NARROW",  "FKDA_DECODE_BF16_TOKENS",
                                        "FKDA_DECODE_WARPS_PER_CTA", "FKDA_DECODE_VARIANT"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) unsetenv(names[i]);
    char buf[256];
    snprintf(buf, sizeof buf, "%s", set);
    for (char *tok = strtok(buf, " "); tok; tok = strtok(NULL, " ")) {
        char *eq = strchr(tok, '=');
        *eq = '\0';
        setenv(tok, eq + 1, 1);
    }
    fkda_tuning_read(t);
}

typedef struct block {
    int device, knobs, bf16, v_first, shape, tokens;
} block;

static fkda_decode_call call_for(const block *b, int64_t heads)
{
    fkda_decode_call c;
    memset(&c, 0, sizeof c);
    const device_desc *d = &devices[b->device];
    const shape_desc *s = &shapes[b->shape];
    const tokens_desc *tk = &token_cases[b->tokens];
    c.heads = heads;
    c.K = s->K;
    c.V = s->V;
    c.state_bf16 = b->bf16;
    c.v_first = b->v_first;
    c.vectorizable = s->vectorizable;
    c.dense128 = s->dense128;
    c.T = tk->T;
    c.sequences = tk->N;
    c.cu_seqlens = tk->cu_seqlens;
    c.idx_2d = tk->idx_2d;
    c.tokens_bf16 = tk->tokens_bf16;
    c.tokens_fit_31_bits = tk->fit;
    c.sm_count = d->sm_count;
    c.cc_major = d->cc_major;
    c.l2_bytes = d->l2_bytes;
    return c;
}

static void describe_block(const block *b, char *out, size_t n)
{
    snprintf(out, n, "%s, %s pool %s, %s, %s, knobs {%s}", devices[b->device].name, b->bf16 ? "bf16" : "fp32",
             b->v_first ? "[V,K]" : "[K,V]", shapes[b->shape].name, token_cases[b->tokens].name, knob_sets[b->knobs]);
}

static void describe_choice(fkda_decode_select_status s, const fkda_decode_choice *ch, char *out, size_t n)
{
    if (s != FKDA_DECODE_SELECT_OK) {
        snprintf(out, n, "status %d", (int)s);
        return;
    }
    snprintf(out, n, "%s lanes_k %d warps/head %d warps/CTA %d CTAs/head %d pdl %d",
             fkda_decode_variant_table[ch->variant].name, ch->lanes_k, ch->warps_per_head, ch->warps_per_cta,
             ch->ctas_per_head, ch->pdl);
}

static uint32_t fnv1a(uint32_t h, const char *s)
{
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
}

/* The grid's blocks in a fixed order: every device without knobs, then the knob sets on one. */
static int make_blocks(block *out)
{
    int n = 0;
    for (int k = 0; k < KNOB_SETS; k++)
        for (int d = 0; d < (int)(sizeof devices / sizeof devices[0]); d++) {
            if (k > 0 && d != KNOB_DEVICE) continue;
            for (int bf16 = 0; bf16 < 2; bf16++)
                for (int vf = 0; vf < 2; vf++)
                    for (int s = 0; s < (int)(sizeof shapes / sizeof shapes[0]); s++) {
                        if (k > 0 && s >= KNOB_SHAPES) continue;
                        for (int t = 0; t < (int)(sizeof token_cases / sizeof token_cases[0]); t++) {
                            const block b = {d, k, bf16, vf, s, t};
                            out[n++] = b;
                        }
                    }
        }
    return n;
}

#define MAX_BLOCKS 4096

/* One block's checksum over every head count; with `show`, its decisions, one line per run of
 * head counts that share one. */
static uint32_t block_checksum(const block *b, int show)
{
    fkda_tuning t;
    tuning_for(knob_sets[b->knobs], &t);
    uint32_t h = 2166136261u;
    char prev[256] = "", now[256];
    int64_t from = 0;
    for (int i = 0; i < heads_count; i++) {
        const fkda_decode_call c = call_for(b, heads_list[i]);
        fkda_decode_choice ch;
        const fkda_decode_select_status s = fkda_decode_select(&c, &t, &ch);
        describe_choice(s, &ch, now, sizeof now);
        h = fnv1a(fnv1a(h, now), ";");
        if (show && strcmp(now, prev) != 0) {
            if (i > 0) fprintf(stderr, "    heads %" PRId64 "-%" PRId64 ": %s\n", from, heads_list[i - 1], prev);
            from = heads_list[i];
            strcpy(prev, now);
        }
    }
    if (show) fprintf(stderr, "    heads %" PRId64 "-%" PRId64 ": %s\n", from, heads_list[heads_count - 1], prev);
    return h;
}

/* ---- the pinned decisions (generated; see the file's header) -------------------------------- */

/* Spelled out: block {device, knobs, bf16 pool, [V,K], shape, tokens}, heads, the decision. */
typedef struct pinned_row {
    block b;
    int64_t heads;
    const char *decision;
} pinned_row;

#include "test_decode_select_pins.h"

/* ---- the checks ------------------------------------------------------------------------------ */

static void check_pins(void)
{
    static block blocks[MAX_BLOCKS];
    const int n = make_blocks(blocks);
    const int print = getenv("FKDA_PIN_PRINT") != NULL;
    if (print) printf("static const uint32_t pinned_checksums[%d] = {\n", n);
    CHECK(print || n == (int)(sizeof pinned_checksums / sizeof pinned_checksums[0]),
          "the grid has %d blocks, the pin %d", n, (int)(sizeof pinned_checksums / sizeof pinned_checksums[0]));
    int changed = 0;
    for (int i = 0; i < n; i++) {
        const uint32_t h = block_checksum(&blocks[i], 0);
        if (print) {
            printf("%s0x%08" PRIx32 ",%s", i % 8 == 0 ? "    " : "", h, i % 8 == 7 || i == n - 1 ? "\n" : " ");
            continue;
        }
        if (i >= (int)(sizeof pinned_checksums / sizeof pinned_checksums[0])) break;
        char what[512];
        describe_block(&blocks[i], what, sizeof what);
        CHECK(h == pinned_checksums[i],
              "block %d (%s): a decision changed (checksum 0x%08" PRIx32 ", pinned 0x%08" PRIx32
              "); its decisions now:",
              i, what, h, pinned_checksums[i]);
        if (h != pinned_checksums[i] && changed++ < 8) block_checksum(&blocks[i], 1);
    }
    if (print) printf("};\n\nstatic const pinned_row pinned_rows[] = {\n");
    for (size_t i = 0; i < sizeof pinned_rows / sizeof pinned_rows[0]; i++) {
        const pinned_row *r = &pinned_rows[i];
        fkda_tuning t;
        tuning_for(knob_sets[r->b.knobs], &t);
        const fkda_decode_call c = call_for(&r->b, r->heads);
        fkda_decode_choice ch;
        char now[256], what[512];
        describe_choice(fkda_decode_select(&c, &t, &ch), &ch, now, sizeof now);
        if (print) {
            printf("    {{%d, %d, %d, %d, %d, %d}, %" PRId64 ", \"%s\"},\n", r->b.device, r->b.knobs, r->b.bf16,
                   r->b.v_first, r->b.shape, r->b.tokens, r->heads, now);
            continue;
        }
        describe_block(&r->b, what, sizeof what);
        CHECK(strcmp(now, r->decision) == 0, "%s, %" PRId64 " heads: %s, pinned %s", what, r->heads, now, r->decision);
    }
    if (print) printf("};\n");
}

/* Every choice serves its call; a forced variant is taken exactly where it serves; each variant
 * is taken (forced) somewhere on the grid. */
static void check_serving(void)
{
    static block blocks[MAX_BLOCKS];
    const int n = make_blocks(blocks);
    int taken[128] = {0};
    for (int v = -1; v < fkda_decode_variant_count; v++) {
        for (int i = 0; i < n; i++) {
            const block *b = &blocks[i];
            fkda_tuning t;
            tuning_for(knob_sets[b->knobs], &t);
            if (v >= 0) snprintf(t.decode_variant, sizeof t.decode_variant, "%s", fkda_decode_variant_table[v].name);
            for (int j = 0; j < heads_count; j += 7) {
                const fkda_decode_call c = call_for(b, heads_list[j]);
                fkda_decode_choice ch;
                const fkda_decode_select_status s = fkda_decode_select(&c, &t, &ch);
                char what[512];
                describe_block(b, what, sizeof what);
                CHECK(s == FKDA_DECODE_SELECT_OK, "%s, %" PRId64 " heads: status %d", what, heads_list[j], (int)s);
                if (s != FKDA_DECODE_SELECT_OK) continue;
                const fkda_decode_variant *got = &fkda_decode_variant_table[ch.variant];
                CHECK(fkda_decode_variant_serves(got, &c), "%s, %" PRId64 " heads, forced %s: %s cannot serve it", what,
                      heads_list[j], v >= 0 ? fkda_decode_variant_table[v].name : "nothing", got->name);
                CHECK(ch.warps_per_cta >= got->k_split && ch.ctas_per_head * ch.warps_per_cta >= ch.warps_per_head &&
                          ch.lanes_k >= 1 && ch.lanes_k <= 32 && ch.warps_per_cta <= DECODE_MAX_WARPS_PER_CTA,
                      "%s, %" PRId64 " heads: geometry %d %d %d %d", what, heads_list[j], ch.lanes_k, ch.warps_per_head,
                      ch.warps_per_cta, ch.ctas_per_head);
                if (v >= 0) {
                    const int serves = fkda_decode_variant_serves(&fkda_decode_variant_table[v], &c);
                    CHECK(serves == (ch.variant == v), "%s, %" PRId64 " heads: forced %s (serves: %d), took %s", what,
                          heads_list[j], fkda_decode_variant_table[v].name, serves, got->name);
                    if (ch.variant == v) taken[v]++;
                }
            }
        }
    }
    for (int v = 0; v < fkda_decode_variant_count; v++)
        CHECK(taken[v] > 0, "FKDA_DECODE_VARIANT=%s is never taken on the grid", fkda_decode_variant_table[v].name);
    fkda_tuning t;
    tuning_for("", &t);
    snprintf(t.decode_variant, sizeof t.decode_variant, "no_such_variant");
    const block b = {KNOB_DEVICE, 0, 0, 0, 0, 0};
    const fkda_decode_call c = call_for(&b, 8);
    fkda_decode_choice forced, plain;
    fkda_decode_select(&c, &t, &forced);
    tuning_for("", &t);
    fkda_decode_select(&c, &t, &plain);
    CHECK(forced.variant == plain.variant, "an unknown FKDA_DECODE_VARIANT changed the choice");
}

/* Part 3 of the header: the packed form against the one-token form, on every device, pool,
 * layout, shape, token dtype set and head count, under every knob set. */
static void check_packed_form(void)
{
    for (int k = 0; k < KNOB_SETS; k++) {
        fkda_tuning t;
        tuning_for(knob_sets[k], &t);
        for (int d = 0; d < (int)(sizeof devices / sizeof devices[0]); d++)
            for (int bf16 = 0; bf16 < 2; bf16++)
                for (int vf = 0; vf < 2; vf++)
                    for (int s = 0; s < (int)(sizeof shapes / sizeof shapes[0]); s++)
                        for (int tokens_bf16 = 0; tokens_bf16 < 2; tokens_bf16++)
                            for (int i = 0; i < heads_count; i += 3) {
                                const block b = {d, k, bf16, vf, s, 0};
                                fkda_decode_call one = call_for(&b, heads_list[i]);
                                one.tokens_bf16 = tokens_bf16;
                                fkda_decode_call packed = one, several = one;
                                packed.cu_seqlens = several.cu_seqlens = 1;
                                packed.T = packed.sequences = 64;
                                several.T = 65;
                                several.sequences = 64;
                                fkda_decode_choice a, b2, c2;
                                fkda_decode_select(&one, &t, &a);
                                fkda_decode_select(&packed, &t, &b2);
                                fkda_decode_select(&several, &t, &c2);
                                const fkda_decode_variant *va = &fkda_decode_variant_table[a.variant],
                                                          *vb = &fkda_decode_variant_table[b2.variant],
                                                          *vc = &fkda_decode_variant_table[c2.variant];
                                char want[96], what[512];
                                const int twin = va->family == FKDA_DECODE_FAMILY_PACKED || va->bf16_tokens;
                                snprintf(want, sizeof want, "%s%s", va->name, twin ? "_cu" : "");
                                describe_block(&b, what, sizeof what);
                                /* the _early form of the CU twin: the same kernel compiled for one CTA an
                                 * SM's registers, with the token loaded at a guessed place */
                                if (vb->ctas_per_sm == 1 && twin)
                                    strncat(want, "_early", sizeof want - strlen(want) - 1);
                                CHECK(strcmp(vb->name, want) == 0 && a.lanes_k == b2.lanes_k &&
                                          a.warps_per_head == b2.warps_per_head &&
                                          a.warps_per_cta == b2.warps_per_cta && a.ctas_per_head == b2.ctas_per_head &&
                                          a.pdl == b2.pdl,
                                      "%s, tokens bf16 %d, %" PRId64 " heads: T = 1 takes %s, the packed form %s", what,
                                      tokens_bf16, heads_list[i], va->name, vb->name);
                                CHECK(!vc->cu_form || (k > 0 && strstr(knob_sets[k], "PACKED=1")),
                                      "%s, tokens bf16 %d, %" PRId64 " heads: T > N takes %s", what, tokens_bf16,
                                      heads_list[i], vc->name);
                            }
    }
    fkda_tuning none;
    tuning_for("", &none); /* leave no knob set for the checks after this one */
}

static void check_tuning_read(void)
{
    fkda_tuning t;
    setenv("FKDA_DECODE_PDL", "0", 1);
    setenv("FKDA_DECODE_LOAD_EF", "yes", 1); /* neither 0 nor 1: unset */
    setenv("FKDA_DECODE_KSPLIT", "1", 1);
    setenv("FKDA_DECODE_WARPS_PER_CTA", "3", 1); /* not 1, 2, 4 or 8: unset */
    setenv("FKDA_DECODE_VARIANT", "decode_f32_kv_scalar", 1);
    setenv("FKDA_PREFILL_SEGMENTS", "100", 1); /* clamped to 64 */
    setenv("FKDA_PREFILL_VSLICE", "32", 1);
    setenv("FKDA_CPU_ISA", "avx2", 1);
    fkda_tuning_read(&t);
    CHECK(t.decode_pdl == 0 && t.decode_load_ef == FKDA_TUNING_UNSET && t.decode_ksplit == 1 &&
              t.decode_packed == FKDA_TUNING_UNSET && t.decode_warps_per_cta == 0,
          "decode switches read %d %d %d %d %d", t.decode_pdl, t.decode_load_ef, t.decode_ksplit, t.decode_packed,
          t.decode_warps_per_cta);
    CHECK(strcmp(t.decode_variant, "decode_f32_kv_scalar") == 0, "FKDA_DECODE_VARIANT read as '%s'", t.decode_variant);
    CHECK(t.prefill_segments == 64 && t.prefill_vslice == 32 && t.cpu_isa == FKDA_TUNING_ISA_AVX2,
          "prefill and CPU knobs read %lld %d %d", (long long)t.prefill_segments, t.prefill_vslice, (int)t.cpu_isa);
    setenv("FKDA_DECODE_WARPS_PER_CTA", "4", 1);
    setenv("FKDA_PREFILL_SEGMENTS", "", 1); /* present but empty: 1, no segments */
    unsetenv("FKDA_PREFILL_VSLICE");
    setenv("FKDA_CPU_ISA", "baseline", 1);
    fkda_tuning_read(&t);
    CHECK(t.decode_warps_per_cta == 4 && t.prefill_segments == 1 && t.prefill_vslice == 0 &&
              t.cpu_isa == FKDA_TUNING_ISA_BASELINE,
          "second read %d %lld %d %d", t.decode_warps_per_cta, (long long)t.prefill_segments, t.prefill_vslice,
          (int)t.cpu_isa);
    static const char *const all[] = {"FKDA_DECODE_PDL",           "FKDA_DECODE_LOAD_EF", "FKDA_DECODE_KSPLIT",
                                      "FKDA_DECODE_WARPS_PER_CTA", "FKDA_DECODE_VARIANT", "FKDA_PREFILL_SEGMENTS",
                                      "FKDA_PREFILL_VSLICE",       "FKDA_CPU_ISA"};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) unsetenv(all[i]);
    fkda_tuning d;
    fkda_tuning_read(&t);
    fkda_tuning_defaults(&d);
    CHECK(memcmp(&t, &d, sizeof t) == 0, "an empty environment does not read as the defaults");
}

int main(void)
{
    make_heads();
    check_pins();
    if (getenv("FKDA_PIN_PRINT")) return 0;
    check_serving();
    check_packed_form();
    check_tuning_read();
    return test_exit("test_decode_select");
}

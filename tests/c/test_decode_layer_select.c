/*
 * test_decode_layer_select.c: the CUDA decode layer's choice of path (src/cuda/decode_layer_select.c,
 * plain C, compiled into this test), on the CPU:
 *   1. the single kernel serves the common decode step and nothing else: each condition of the
 *      rule, broken alone, sends the call to the three launches;
 *   2. the tile and the cluster size: with W <= 4 the narrow tile for fp32 pools of at most SMs / 2
 *      heads and bf16 pools of at most SMs / 4, with C = 8 up to 2 x SMs / 8 heads (bf16 pools
 *      C = 4 where 4 x heads but not 8 x heads fit in 3/4 of the SMs), beyond that the largest of
 *      1, 2, 4 with C x heads <= SMs, spelled out at 132 SMs, and the wide tile for everything
 *      else; for wider convs the narrow tile up to two heads per SM and the three launches beyond;
 *      with the device's room for clusters known (cluster_room.cu), the bf16 band between its
 *      rooms for 8 and for 4;
 *   3. the knobs: FKDA_DECODE_LAYER_FUSED=0 takes the three launches everywhere, =1 the single
 *      kernel only where it serves; FKDA_DECODE_LAYER_WIDE=0/1 keeps the wide tile off or takes it
 *      wherever it serves (=0 is the rule before the wide tile existed); FKDA_DECODE_LAYER_CLUSTER
 *      forces C of the narrow tile; all read by fkda_tuning_read as tuning.h documents (other
 *      values leave them unset);
 *   4. the three launches' conv: 8 channels a thread from more than two waves of one-channel
 *      threads on, and FKDA_DECODE_LAYER_CONV_VEC forcing either way;
 *   5. the conv's kernel: the vector form only where its 16-byte accesses apply (each condition,
 *      broken alone, takes the one-channel form, even with FKDA_DECODE_LAYER_CONV_VEC=1), the
 *      short forms only for W <= 4 (the GPU test cannot tell which conv kernel ran: they give
 *      the same bits);
 *   6. the single kernel's all-bf16 forms (_io16): taken only when every layer tensor but A_log,
 *      dt_bias and the pool is bf16 (each of the nine, made fp32 alone, refuses them; no bias is
 *      fine);
 *   7. the wide tile's packed form: for bf16 pools where the wide tile serves and the packed form
 *      (three heads an SM) takes fewer waves than the wide tile (two), spelled out at 132 SMs;
 *      never for fp32 pools nor with the narrow tile or the three launches;
 *      FKDA_DECODE_LAYER_PACKED=0/1 keeps it off or takes it wherever the wide tile has a bf16 pool;
 *      its state loads evict-first while the heads' states take at most twice the L2 (the plain
 *      decode's rule), FKDA_DECODE_LOAD_EF=0/1 forcing them, never without the packed form.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/core/tuning.h"
#include "flashkda.h"
#include "../../src/cuda/decode_layer_select.h"
#include "test_util.h"

/* B = 1, H = HV = 32, K = V = 128, one token, 1-D indices, a dense fp32 pool, W = 4, on an H200
 * (132 SMs, 50 MB of L2), the clusters' room not known (0, 0: the rule's estimate). */
static fkda_layer_call common_call(void)
{
    fkda_layer_call c = {9, 132, 1, 0, 0, 128, 128, 32, 32, 1, 32, 4, 0, INT64_C(50) << 20, 0, 0};
    return c;
}

/* The choice as one comparable triple (an fp32 pool's: never the packed form). */
#define SAME_CHOICE(x, f, w, cl) \
    ((x).fused == (f) && (x).wide == (w) && (x).cluster == (cl) && (x).packed == 0 && (x).load_ef == 0)

/* A tuning variable set to `value`, or unset where it is NULL. */
static void set_knob(const char *name, const char *value)
{
    if (value)
        setenv(name, value, 1);
    else
        unsetenv(name);
}

static fkda_layer_choice choose(const fkda_layer_call *c)
{
    fkda_tuning t;
    fkda_tuning_read(&t);
    return fkda_decode_layer_select(c, &t);
}

int main(void)
{
    unsetenv("FKDA_DECODE_LAYER_FUSED");
    unsetenv("FKDA_DECODE_LAYER_CLUSTER");
    unsetenv("FKDA_DECODE_LAYER_WIDE");
    unsetenv("FKDA_DECODE_LAYER_PACKED");
    unsetenv("FKDA_DECODE_LOAD_EF");

    /* 1. What the single kernel serves. */
    fkda_layer_call c = common_call();
    fkda_layer_choice x = choose(&c);
    CHECK(SAME_CHOICE(x, 1, 0, 8), "the common call: fused %d wide %d cluster %d (want 1, 0, 8)", x.fused, x.wide,
          x.cluster);
    for (int broken = 0; broken < 10; broken++) {
        c = common_call();
        switch (broken) {
        case 0: c.cc_major = 8; break;
        case 1: c.T = 2; break;
        case 2: c.idx_2d = 1; break;
        case 3: c.accepted = 1; break;
        case 4: c.K = 64; break;
        case 5: c.V = 256; break;
        case 6: c.HV = 64; break;
        case 7: c.dense128 = 0; break;
        case 8: c.heads = 65536 * c.HV; break; /* B past the grid's y */
        default: c.HV = c.H = INT64_C(1) << 28, c.heads = c.HV; break;
        }
        x = choose(&c);
        CHECK(x.fused == 0 && !fkda_decode_layer_fused_serves(&c), "condition %d broken: still the single kernel",
              broken);
    }
    /* The batch's bound is on sequences, not on (sequence, head) pairs: 65,535 sequences of 2
     * heads are served. */
    c = common_call();
    c.HV = c.H = 2;
    c.heads = 65535 * c.HV;
    CHECK(fkda_decode_layer_fused_serves(&c), "65535 sequences of 2 heads: not served");

    /* 2. Tiles and cluster sizes at 132 SMs, W = 4 and W = 5, fp32 and bf16 pools (cluster 1
     * stands for "none" where the tile is wide or the path the three launches; none of these
     * takes the packed form: one wave either way). */
    static const struct {
        int64_t heads, W;
        int bf16, fused, wide, cluster;
    } sizes[] = {
        {1, 4, 0, 1, 0, 8},     {2, 4, 0, 1, 0, 8},   {16, 4, 0, 1, 0, 8},  {17, 4, 0, 1, 0, 8},   {24, 4, 0, 1, 0, 8},
        {32, 4, 0, 1, 0, 8},    {33, 4, 0, 1, 0, 8},  {34, 4, 0, 1, 0, 2},  {66, 4, 0, 1, 0, 2},   {12, 4, 1, 1, 0, 8},
        {13, 4, 1, 1, 0, 4},    {24, 4, 1, 1, 0, 4},  {25, 4, 1, 1, 0, 8},  {67, 4, 0, 1, 1, 1},   {132, 4, 0, 1, 1, 1},
        {133, 4, 0, 1, 1, 1},   {264, 4, 0, 1, 1, 1}, {265, 4, 0, 1, 1, 1}, {2048, 4, 0, 1, 1, 1}, {1, 2, 0, 1, 0, 8},
        {133, 3, 0, 1, 1, 1},   {1, 5, 0, 1, 0, 8},   {133, 5, 0, 1, 0, 1}, {264, 5, 0, 1, 0, 1},  {265, 5, 0, 0, 0, 1},
        {2048, 16, 0, 0, 0, 1}, {1, 4, 1, 1, 0, 8},   {16, 4, 1, 1, 0, 4},  {17, 4, 1, 1, 0, 4},   {32, 4, 1, 1, 0, 8},
        {33, 4, 1, 1, 0, 8},    {34, 4, 1, 1, 1, 1},  {66, 4, 1, 1, 1, 1},  {132, 4, 1, 1, 1, 1},  {1, 2, 1, 1, 0, 8},
        {1, 5, 1, 1, 0, 8},     {132, 5, 1, 1, 0, 1}};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        c = common_call();
        c.heads = sizes[i].heads;
        c.W = sizes[i].W;
        c.state_bf16 = sizes[i].bf16;
        x = choose(&c);
        CHECK(SAME_CHOICE(x, sizes[i].fused, sizes[i].wide, sizes[i].cluster),
              "%lld heads, W = %lld, %s pool: fused %d wide %d cluster %d (want %d, %d, %d)", (long long)sizes[i].heads,
              (long long)sizes[i].W, sizes[i].bf16 ? "bf16" : "fp32", x.fused, x.wide, x.cluster, sizes[i].fused,
              sizes[i].wide, sizes[i].cluster);
    }

    /* 2b. With the device's room for clusters known (cluster_room.cu), the bf16 pool's C = 4
     * band follows it: here 15 clusters of 8 and 30 of 4 with an SM per CTA (what the driver
     * gave on the thirty-seventh session's H100, and dev/cuda/cluster_room_probe.cu confirmed
     * there: each room resident at once, one cluster more not), so C = 8 up to 15 heads, C = 4
     * from 16 to 30, C = 8 again from 31 to 33; fp32 pools keep C = 8; past 33 heads the room is
     * not used. */
    static const struct {
        int64_t heads;
        int bf16, cluster;
    } roomy[] = {{12, 1, 8}, {13, 1, 8}, {15, 1, 8}, {16, 1, 4}, {24, 1, 4}, {30, 1, 4},
                 {31, 1, 8}, {33, 1, 8}, {14, 0, 8}, {16, 0, 8}, {30, 0, 8}, {34, 0, 2}};
    for (size_t i = 0; i < sizeof roomy / sizeof roomy[0]; i++) {
        c = common_call();
        c.room4 = 30;
        c.room8 = 15;
        c.heads = roomy[i].heads;
        c.state_bf16 = roomy[i].bf16;
        x = choose(&c);
        CHECK(x.fused == 1 && x.wide == 0 && x.cluster == roomy[i].cluster,
              "room 30 / 15, %lld heads, %s pool: fused %d wide %d cluster %d (want 1, 0, %d)",
              (long long)roomy[i].heads, roomy[i].bf16 ? "bf16" : "fp32", x.fused, x.wide, x.cluster, roomy[i].cluster);
    }

    /* 3. The knobs. */
    setenv("FKDA_DECODE_LAYER_FUSED", "0", 1);
    c = common_call();
    x = choose(&c);
    CHECK(x.fused == 0, "FKDA_DECODE_LAYER_FUSED=0: still the single kernel");
    setenv("FKDA_DECODE_LAYER_FUSED", "1", 1);
    x = choose(&c);
    CHECK(x.fused == 1, "FKDA_DECODE_LAYER_FUSED=1: not the single kernel");
    c.heads = 2048;
    x = choose(&c);
    CHECK(SAME_CHOICE(x, 1, 1, 1),
          "FKDA_DECODE_LAYER_FUSED=1 at 2048 heads: fused %d wide %d cluster %d (want 1, 1, 1)", x.fused, x.wide,
          x.cluster);
    c.W = 5;
    x = choose(&c);
    CHECK(SAME_CHOICE(x, 1, 0, 1),
          "FKDA_DECODE_LAYER_FUSED=1 at 2048 heads, W = 5: fused %d wide %d cluster %d (want 1, 0, 1)", x.fused, x.wide,
          x.cluster);
    c = common_call();
    c.idx_2d = 1;
    x = choose(&c);
    CHECK(x.fused == 0, "FKDA_DECODE_LAYER_FUSED=1 took the single kernel where it cannot serve");
    c = common_call();
    c.state_bf16 = 1;
    c.heads = 16; /* a bf16 pool of 16 heads: the rule's C = 4, so that 8 and the rule differ */
    static const char *values[] = {"1", "2", "4", "8", "3", "16", "x"};
    static const int want[] = {1, 2, 4, 8, 4, 4, 4}; /* anything else: the rule's 4 */
    for (int i = 0; i < 7; i++) {
        setenv("FKDA_DECODE_LAYER_CLUSTER", values[i], 1);
        x = choose(&c);
        CHECK(x.cluster == want[i], "FKDA_DECODE_LAYER_CLUSTER=%s: cluster %d (want %d)", values[i], x.cluster,
              want[i]);
    }
    /* The cluster knob leaves the wide tile alone. */
    setenv("FKDA_DECODE_LAYER_CLUSTER", "2", 1);
    c = common_call();
    c.heads = 2048;
    x = choose(&c);
    CHECK(SAME_CHOICE(x, 1, 1, 1),
          "FKDA_DECODE_LAYER_CLUSTER=2 at 2048 heads: fused %d wide %d cluster %d (want 1, 1, 1)", x.fused, x.wide,
          x.cluster);
    setenv("FKDA_DECODE_LAYER_WIDE", "0", 1);
    x = choose(&c);
    CHECK(SAME_CHOICE(x, 1, 0, 2),
          "FKDA_DECODE_LAYER_WIDE=0 CLUSTER=2 at 2048 heads: fused %d wide %d cluster %d (want 1, 0, 2)", x.fused,
          x.wide, x.cluster);
    unsetenv("FKDA_DECODE_LAYER_WIDE");
    unsetenv("FKDA_DECODE_LAYER_CLUSTER");
    unsetenv("FKDA_DECODE_LAYER_FUSED");

    /* FKDA_DECODE_LAYER_WIDE: =0 the rule before the wide tile (narrow up to two heads per SM,
     * then the three launches), =1 the wide tile wherever it serves (W <= 4), below FUSED=0. */
    static const struct {
        const char *wide_knob, *fused_knob;
        int64_t heads, W;
        int fused, wide, cluster;
    } knobs[] = {{"0", NULL, 133, 4, 1, 0, 1}, {"0", NULL, 264, 4, 1, 0, 1},  {"0", NULL, 265, 4, 0, 0, 1},
                 {"0", "1", 2048, 4, 1, 0, 1}, {"1", NULL, 1, 4, 1, 1, 1},    {"1", NULL, 132, 4, 1, 1, 1},
                 {"1", NULL, 1, 5, 1, 0, 8},   {"1", NULL, 2048, 5, 0, 0, 1}, {"1", "0", 2048, 4, 0, 0, 1},
                 {"x", NULL, 133, 4, 1, 1, 1}, {"", NULL, 66, 4, 1, 0, 2}};
    for (size_t i = 0; i < sizeof knobs / sizeof knobs[0]; i++) {
        setenv("FKDA_DECODE_LAYER_WIDE", knobs[i].wide_knob, 1);
        set_knob("FKDA_DECODE_LAYER_FUSED", knobs[i].fused_knob);
        c = common_call();
        c.heads = knobs[i].heads;
        c.W = knobs[i].W;
        x = choose(&c);
        CHECK(SAME_CHOICE(x, knobs[i].fused, knobs[i].wide, knobs[i].cluster),
              "FKDA_DECODE_LAYER_WIDE=%s FUSED=%s, %lld heads, W = %lld: fused %d wide %d cluster %d (want %d, %d, %d)",
              knobs[i].wide_knob, knobs[i].fused_knob ? knobs[i].fused_knob : "(unset)", (long long)knobs[i].heads,
              (long long)knobs[i].W, x.fused, x.wide, x.cluster, knobs[i].fused, knobs[i].wide, knobs[i].cluster);
    }
    unsetenv("FKDA_DECODE_LAYER_WIDE");
    unsetenv("FKDA_DECODE_LAYER_FUSED");

    setenv("FKDA_DECODE_LAYER_FUSED", "yes", 1);
    setenv("FKDA_DECODE_LAYER_WIDE", "2", 1);
    fkda_tuning t;
    fkda_tuning_read(&t);
    CHECK(t.decode_layer_fused == FKDA_TUNING_UNSET, "FKDA_DECODE_LAYER_FUSED=yes read as %d", t.decode_layer_fused);
    CHECK(t.decode_layer_wide == FKDA_TUNING_UNSET, "FKDA_DECODE_LAYER_WIDE=2 read as %d", t.decode_layer_wide);
    unsetenv("FKDA_DECODE_LAYER_FUSED");
    unsetenv("FKDA_DECODE_LAYER_WIDE");

    /* 7. The packed form, bf16 pools: where the wide tile serves (over SMs / 4 heads, W <= 4) and
     * ceil(heads / 396) < ceil(heads / 264) at 132 SMs; under FKDA_DECODE_LAYER_PACKED (x: unset)
     * and the other knobs. */
    static const struct {
        const char *packed_knob, *wide_knob;
        int64_t heads, W;
        int bf16, fused, wide, packed;
    } packs[] = {{NULL, NULL, 2048, 4, 1, 1, 1, 1}, {NULL, NULL, 133, 4, 1, 1, 1, 0},  {NULL, NULL, 132, 4, 1, 1, 1, 0},
                 {NULL, NULL, 256, 4, 1, 1, 1, 0},  {NULL, NULL, 264, 4, 1, 1, 1, 0},  {NULL, NULL, 265, 4, 1, 1, 1, 1},
                 {NULL, NULL, 288, 4, 1, 1, 1, 1},  {NULL, NULL, 384, 4, 1, 1, 1, 1},  {NULL, NULL, 396, 4, 1, 1, 1, 1},
                 {NULL, NULL, 397, 4, 1, 1, 1, 0},  {NULL, NULL, 512, 4, 1, 1, 1, 0},  {NULL, NULL, 528, 4, 1, 1, 1, 0},
                 {NULL, NULL, 529, 4, 1, 1, 1, 1},  {NULL, NULL, 768, 4, 1, 1, 1, 1},  {NULL, NULL, 32, 4, 1, 1, 0, 0},
                 {NULL, NULL, 2048, 4, 0, 1, 1, 0}, {NULL, NULL, 2048, 5, 1, 0, 0, 0}, {NULL, NULL, 264, 5, 1, 1, 0, 0},
                 {"0", NULL, 2048, 4, 1, 1, 1, 0},  {"1", NULL, 2048, 4, 0, 1, 1, 0},  {"1", NULL, 512, 4, 1, 1, 1, 1},
                 {"1", NULL, 132, 4, 1, 1, 1, 1},   {"x", NULL, 2048, 4, 1, 1, 1, 1},  {"x", NULL, 512, 4, 1, 1, 1, 0},
                 {NULL, "1", 1, 4, 1, 1, 1, 0},     {"1", "1", 1, 4, 1, 1, 1, 1},      {"0", "1", 1, 4, 1, 1, 1, 0},
                 {NULL, "0", 2048, 4, 1, 1, 0, 0}};
    for (size_t i = 0; i < sizeof packs / sizeof packs[0]; i++) {
        set_knob("FKDA_DECODE_LAYER_PACKED", packs[i].packed_knob);
        set_knob("FKDA_DECODE_LAYER_WIDE", packs[i].wide_knob);
        /* WIDE=0 at 2048 heads: the narrow tile if the single kernel is forced, else the three launches */
        if (packs[i].wide_knob && strcmp(packs[i].wide_knob, "0") == 0) setenv("FKDA_DECODE_LAYER_FUSED", "1", 1);
        c = common_call();
        c.heads = packs[i].heads;
        c.W = packs[i].W;
        c.state_bf16 = packs[i].bf16;
        x = choose(&c);
        CHECK(x.fused == packs[i].fused && x.wide == packs[i].wide && x.packed == packs[i].packed,
              "FKDA_DECODE_LAYER_PACKED=%s WIDE=%s, %lld heads, W = %lld, bf16 pool %d: fused %d wide %d packed %d "
              "(want %d, %d, %d)",
              packs[i].packed_knob ? packs[i].packed_knob : "(unset)",
              packs[i].wide_knob ? packs[i].wide_knob : "(unset)", (long long)packs[i].heads, (long long)packs[i].W,
              packs[i].bf16, x.fused, x.wide, x.packed, packs[i].fused, packs[i].wide, packs[i].packed);
        unsetenv("FKDA_DECODE_LAYER_FUSED");
    }
    unsetenv("FKDA_DECODE_LAYER_PACKED");
    unsetenv("FKDA_DECODE_LAYER_WIDE");
    /* The packed form's evict-first loads: 32 KB a head, 3,200 heads in twice 50 MB. */
    static const struct {
        const char *ef_knob;
        int64_t heads;
        int bf16, packed, load_ef;
    } efs[] = {{NULL, 2048, 1, 1, 1}, {NULL, 3200, 1, 1, 1}, {NULL, 3201, 1, 1, 0}, {NULL, 4096, 1, 1, 0},
               {NULL, 512, 1, 0, 0},  {NULL, 2048, 0, 0, 0}, {"0", 2048, 1, 1, 0},  {"1", 4096, 1, 1, 1},
               {"1", 512, 1, 0, 0},   {"1", 2048, 0, 0, 0},  {"x", 4096, 1, 1, 0}};
    for (size_t i = 0; i < sizeof efs / sizeof efs[0]; i++) {
        set_knob("FKDA_DECODE_LOAD_EF", efs[i].ef_knob);
        c = common_call();
        c.heads = efs[i].heads;
        c.state_bf16 = efs[i].bf16;
        x = choose(&c);
        CHECK(x.packed == efs[i].packed && x.load_ef == efs[i].load_ef,
              "FKDA_DECODE_LOAD_EF=%s, %lld heads, bf16 pool %d: packed %d load_ef %d (want %d, %d)",
              efs[i].ef_knob ? efs[i].ef_knob : "(unset)", (long long)efs[i].heads, efs[i].bf16, x.packed, x.load_ef,
              efs[i].packed, efs[i].load_ef);
    }
    unsetenv("FKDA_DECODE_LOAD_EF");

    setenv("FKDA_DECODE_LAYER_PACKED", "2", 1);
    fkda_tuning_read(&t);
    CHECK(t.decode_layer_packed == FKDA_TUNING_UNSET, "FKDA_DECODE_LAYER_PACKED=2 read as %d", t.decode_layer_packed);
    unsetenv("FKDA_DECODE_LAYER_PACKED");

    /* 4. The conv's 8-channel threads: beyond two waves of 132 SMs x 1,024 one-channel threads
     * (270,336 channels), and FKDA_DECODE_LAYER_CONV_VEC=0/1 either way. */
    unsetenv("FKDA_DECODE_LAYER_CONV_VEC");
    fkda_tuning_read(&t);
    static const struct {
        int64_t B, dim;
        int want;
    } conv[] = {{1, 12288, 0}, {8, 12288, 0}, {64, 12288, 1}, {64, 4608, 1}, {22, 12288, 0}, {23, 12288, 1}};
    for (size_t i = 0; i < sizeof conv / sizeof conv[0]; i++) {
        const int got = fkda_decode_layer_conv_vec(conv[i].B * conv[i].dim, 132, &t);
        CHECK(got == conv[i].want, "conv at B = %lld, dim %lld: 8 channels a thread %d (want %d)", (long long)conv[i].B,
              (long long)conv[i].dim, got, conv[i].want);
    }
    setenv("FKDA_DECODE_LAYER_CONV_VEC", "1", 1);
    fkda_tuning_read(&t);
    CHECK(fkda_decode_layer_conv_vec(1, 132, &t) == 1, "FKDA_DECODE_LAYER_CONV_VEC=1 kept one channel a thread");
    setenv("FKDA_DECODE_LAYER_CONV_VEC", "0", 1);
    fkda_tuning_read(&t);
    CHECK(fkda_decode_layer_conv_vec(INT64_C(1) << 40, 132, &t) == 0,
          "FKDA_DECODE_LAYER_CONV_VEC=0 took 8 channels a thread");
    unsetenv("FKDA_DECODE_LAYER_CONV_VEC");

    /* 5. The conv's kernel for B = 64, H = 32 (dim 12,288; beyond two waves), W = 4, bf16 x and
     * state, channels contiguous, rows dense, bases aligned: the vector form; each condition of
     * its 16-byte accesses broken alone gives the one-channel short form, also when forced. */
    for (int forced = 0; forced < 2; forced++) {
        if (forced) setenv("FKDA_DECODE_LAYER_CONV_VEC", "1", 1);
        fkda_tuning_read(&t);
        for (int broken = -1; broken < 11; broken++) {
            fkda_conv_call v = {64, 12288, 4, FKDA_DTYPE_BF16, FKDA_DTYPE_BF16, {12288, 12288, 1}, {36864, 12288, 1},
                                1};
            fkda_conv_kernel want = FKDA_CONV_SHORT;
            switch (broken) {
            case -1: want = FKDA_CONV_SHORT_VEC; break;
            case 0: v.x_dtype = FKDA_DTYPE_F32; break;
            case 1: v.state_dtype = FKDA_DTYPE_F32; break;
            case 2: v.dim = 12284; break;
            case 3: v.x_stride[2] = 2; break;
            case 4: v.state_stride[2] = 2; break;
            case 5: v.x_stride[0] = 12292; break;
            case 6: v.x_stride[1] = 12292; break;
            case 7: v.state_stride[0] = 36868; break;
            case 8: v.state_stride[1] = 12292; break;
            case 9: v.bases_aligned16 = 0; break;
            default:
                v.W = 5;
                want = FKDA_CONV_ANY_WIDTH;
                break;
            }
            const fkda_conv_kernel got = fkda_decode_layer_conv_kernel(&v, 132, &t);
            CHECK(got == want, "conv kernel, condition %d broken%s: %d (want %d)", broken,
                  forced ? " (CONV_VEC=1)" : "", (int)got, (int)want);
        }
    }
    /* The same call otherwise: f16 x with a bf16 state is vectorizable; W = 2 and 3 are short;
     * one sequence stays on one channel a thread unless forced. */
    unsetenv("FKDA_DECODE_LAYER_CONV_VEC");
    fkda_tuning_read(&t);
    fkda_conv_call v = {64, 12288, 4, FKDA_DTYPE_F16, FKDA_DTYPE_BF16, {12288, 12288, 1}, {36864, 12288, 1}, 1};
    CHECK(fkda_decode_layer_conv_kernel(&v, 132, &t) == FKDA_CONV_SHORT_VEC, "f16 x, bf16 state: not the vector form");
    v.W = 2;
    CHECK(fkda_decode_layer_conv_kernel(&v, 132, &t) == FKDA_CONV_SHORT_VEC, "W = 2: not the vector form");
    v.W = 3;
    v.B = 1;
    CHECK(fkda_decode_layer_conv_kernel(&v, 132, &t) == FKDA_CONV_SHORT, "B = 1: not the one-channel short form");
    v.W = 16;
    CHECK(fkda_decode_layer_conv_kernel(&v, 132, &t) == FKDA_CONV_ANY_WIDTH, "W = 16: not the any-width form");

    /* 6. The all-bf16 forms: every one of the nine tensors bf16 (fp32 A_log, dt_bias and pool); each
     * made fp32 alone refuses them; no bias at all is fine. */
    static int bias_storage;
    for (int broken = -2; broken < 9; broken++) {
        fkda_problem pr;
        memset(&pr, 0, sizeof pr);
        fkda_operand *nine[9] = {&pr.mixed_qkv, &pr.conv_weight, &pr.conv_bias,   &pr.conv_state, &pr.g,
                                 &pr.beta,      &pr.output_gate, &pr.norm_weight, &pr.out};
        for (int i = 0; i < 9; i++) nine[i]->dtype = FKDA_DTYPE_BF16;
        pr.conv_bias.data = &bias_storage;
        pr.A_log.dtype = pr.dt_bias.dtype = pr.state_in.dtype = pr.state_out.dtype = FKDA_DTYPE_F32;
        int want = 1;
        if (broken == -1) { /* no bias: its dtype says nothing */
            pr.conv_bias.data = NULL;
            pr.conv_bias.dtype = FKDA_DTYPE_F32;
        } else if (broken >= 0) {
            nine[broken]->dtype = FKDA_DTYPE_F32;
            want = 0;
        }
        CHECK(fkda_decode_layer_bf16_io(&pr) == want, "all-bf16 forms, tensor %d made fp32: %d (want %d)", broken,
              fkda_decode_layer_bf16_io(&pr), want);
    }
    return test_exit("test_decode_layer_select");
}

/*
 * decode_variants.h: the table of the CUDA decode's kernel variants, one row per compiled
 * kernel, shared by the kernels (decode_tiles.cu, decode_packed.cu), the selection
 * (decode_select.c) and the tests (tests/cuda/test_decode_cuda.c walks it by name). Plain C.
 *
 * Two families:
 *   tiles   (decode_tiles.cu)  each lane holds rows x cols fp32 state values in registers for the
 *                              whole call; any shape, layout, dtype and number of tokens.
 *   packed  (decode_packed.cu) dense 128 bf16 pools, one token per sequence, 1-D indices:
 *                              the state held as bf16 pairs, 128 values per lane, so 4 warps
 *                              cover a head (the CU ones take a longer sequence of cu_seqlens
 *                              in two fp32 passes).
 *
 * Name parts: f32 / bf16 the pool's dtype; kv / vk its layout ([K, V]: V contiguous; [V, K]);
 * 128 dense 128 heads (below); vec 16-byte state vectors, any K and V; scalar one element at a
 * time, any strides and alignment; _ef evict-first (streaming, ld.global.cs) state loads; _tok
 * compiled for all-bf16 token tensors; _ks split K (two warps share each column, half of the keys
 * each); _narrow narrow tiles (32 values per lane, 16 warps per head) for small batches; _cu
 * compiled for calls with cu_seqlens (CU, below); _spec for speculative decoding in vLLM's form
 * (CU = 2); _early the wide bf16 [K, V] CU tile with its token loaded early (CTAS = 1, below).
 *
 * Columns of DECODE_TILE_VARIANTS:
 *   BF16     the pool is bf16 (else fp32)
 *   V_FIRST  the pool is [V, K] (K contiguous; else [K, V])
 *   VEC      state elements per vector along the contiguous dimension (1: scalar loads)
 *   NR, NC   register rows (keys) and columns (values) per lane; NR x NC = 32: narrow
 *   D128     dense 128: K = V = 128 and the state's rows 128 elements apart, so that every offset
 *            inside a head is a compile-time constant plus one per lane
 *   LOAD_EF  evict-first state loads (stores are always evict-first); always in the narrow
 *            kernels, which serve small batches, whose pools are small next to L2
 *   TOK      all-bf16 token tensors (q, k, v, g, beta, out) compiled in, for calls with 1-D
 *            indices and one token per sequence (T = 1; or cu_seqlens, CU = 1), or with 2-D
 *            indices and cu_seqlens (CU = 2), whose token offsets fit in 31 bits: 1 with 32-bit
 *            token offsets, 2 with 64-bit ones (the narrow bf16-pool kernels, where 32-bit
 *            offsets measured slower)
 *   KS       warps sharing the keys of a column: 2 is split K (wide fp32 [K, V] tiles)
 *   CU       compiled for calls with cu_seqlens and 1-D indices (vLLM's packed form: q [1, B, H, K],
 *            cu_seqlens = arange(B + 1)): each sequence's bounds read on the device, a one-token
 *            sequence through the same one-token code as the CU = 0 twin, an empty one skipped
 *            (as every kernel does), a longer one through a loop over its tokens in a called, not
 *            inlined, function (so that its registers stay out of the one-token path).
 *            CU = 2 (TOK kernels only, _spec): compiled for speculative decoding in vLLM's form,
 *            cu_seqlens with 2-D indices (a slot per token, the state read from the slot of the
 *            accepted count): every sequence runs its tokens inline and stores its state after
 *            each token.
 *            The TOK and packed kernels each serve one form of call (decode_select.c's
 *            call_form): CU = 0 only calls without cu_seqlens, CU = 1 only calls with cu_seqlens
 *            and 1-D indices, CU = 2 only calls with cu_seqlens and 2-D indices. The other tile
 *            kernels read cu_seqlens at run time and serve every form (CU = 0), among them the
 *            speculative calls no _spec kernel serves (tokens not all bf16, heads not dense 128).
 *   CTAS     CTAs of 256 threads per SM the kernel is compiled for (__launch_bounds__): 2 (at most
 *            128 registers a thread), or 1 for the _early kernel, which holds the token's words
 *            across the state's loads at a guessed place, as the narrow CU tiles do (decode_tiles.cu),
 *            and needs ~160 registers for it (at 128 ptxas spilled 4 bytes, whose store waited for
 *            the state's loads before the staging); decode_select.c gives it only batches of few
 *            enough heads that its CTAs fit on the SMs at that count.
 * Columns of DECODE_PACKED_VARIANTS: V_FIRST, LOAD_EF, KS, CU as above (BF16 = 1, VEC = 8,
 * NR = 16, NC = 8, D128 = 1, TOK = 0 for all of them).
 *
 * Kernel names are the first column; the selection refers to rows by their index in
 * fkda_decode_variant_table (the tile rows, then the packed rows).
 */
#ifndef FKDA_CUDA_DECODE_VARIANTS_H
#define FKDA_CUDA_DECODE_VARIANTS_H

/* The tables as written: clang-format leaves them alone (its off comment takes no reason after it
 * in the version CI runs, 14). */
/* clang-format off */
/*  name                                  BF16 V_FIRST VEC NR NC D128 LOAD_EF TOK KS CU CTAS */
#define DECODE_TILE_VARIANTS(X)                                             \
    X(decode_f32_kv_128, 0, 0, 4, 16, 4, 1, 0, 0, 1, 0, 2)                  \
    X(decode_f32_kv_128_ks, 0, 0, 4, 16, 4, 1, 0, 0, 2, 0, 2)               \
    X(decode_f32_vk_128, 0, 1, 4, 16, 4, 1, 0, 0, 1, 0, 2)                  \
    X(decode_bf16_kv_128, 1, 0, 4, 16, 4, 1, 0, 0, 1, 0, 2)                 \
    X(decode_bf16_vk_128, 1, 1, 8, 16, 4, 1, 0, 0, 1, 0, 2)                 \
    X(decode_f32_kv_128_ef, 0, 0, 4, 16, 4, 1, 1, 0, 1, 0, 2)               \
    X(decode_f32_kv_128_ef_ks, 0, 0, 4, 16, 4, 1, 1, 0, 2, 0, 2)            \
    X(decode_f32_vk_128_ef, 0, 1, 4, 16, 4, 1, 1, 0, 1, 0, 2)               \
    X(decode_bf16_kv_128_ef, 1, 0, 4, 16, 4, 1, 1, 0, 1, 0, 2)              \
    X(decode_bf16_vk_128_ef, 1, 1, 8, 16, 4, 1, 1, 0, 1, 0, 2)              \
    X(decode_f32_kv_128_tok, 0, 0, 4, 16, 4, 1, 0, 1, 1, 0, 2)              \
    X(decode_f32_kv_128_tok_ks, 0, 0, 4, 16, 4, 1, 0, 1, 2, 0, 2)           \
    X(decode_f32_vk_128_tok, 0, 1, 4, 16, 4, 1, 0, 1, 1, 0, 2)              \
    X(decode_bf16_kv_128_tok, 1, 0, 4, 16, 4, 1, 0, 1, 1, 0, 2)             \
    X(decode_bf16_vk_128_tok, 1, 1, 8, 16, 4, 1, 0, 1, 1, 0, 2)             \
    X(decode_f32_kv_128_ef_tok, 0, 0, 4, 16, 4, 1, 1, 1, 1, 0, 2)           \
    X(decode_f32_kv_128_ef_tok_ks, 0, 0, 4, 16, 4, 1, 1, 1, 2, 0, 2)        \
    X(decode_f32_vk_128_ef_tok, 0, 1, 4, 16, 4, 1, 1, 1, 1, 0, 2)           \
    X(decode_bf16_kv_128_ef_tok, 1, 0, 4, 16, 4, 1, 1, 1, 1, 0, 2)          \
    X(decode_bf16_vk_128_ef_tok, 1, 1, 8, 16, 4, 1, 1, 1, 1, 0, 2)          \
    X(decode_f32_kv_128_narrow, 0, 0, 4, 8, 4, 1, 1, 0, 1, 0, 2)            \
    X(decode_f32_vk_128_narrow, 0, 1, 4, 8, 4, 1, 1, 0, 1, 0, 2)            \
    X(decode_bf16_kv_128_narrow, 1, 0, 4, 8, 4, 1, 1, 0, 1, 0, 2)           \
    X(decode_bf16_vk_128_narrow, 1, 1, 8, 8, 4, 1, 1, 0, 1, 0, 2)           \
    X(decode_f32_kv_128_narrow_tok, 0, 0, 4, 8, 4, 1, 1, 1, 1, 0, 2)        \
    X(decode_f32_vk_128_narrow_tok, 0, 1, 4, 8, 4, 1, 1, 1, 1, 0, 2)        \
    X(decode_bf16_kv_128_narrow_tok, 1, 0, 4, 8, 4, 1, 1, 2, 1, 0, 2)       \
    X(decode_bf16_vk_128_narrow_tok, 1, 1, 8, 8, 4, 1, 1, 2, 1, 0, 2)       \
    X(decode_f32_kv_vec, 0, 0, 4, 16, 4, 0, 0, 0, 1, 0, 2)                  \
    X(decode_f32_vk_vec, 0, 1, 4, 16, 4, 0, 0, 0, 1, 0, 2)                  \
    X(decode_bf16_kv_vec, 1, 0, 8, 8, 8, 0, 0, 0, 1, 0, 2)                  \
    X(decode_bf16_vk_vec, 1, 1, 8, 8, 8, 0, 0, 0, 1, 0, 2)                  \
    X(decode_f32_kv_scalar, 0, 0, 1, 16, 4, 0, 0, 0, 1, 0, 2)               \
    X(decode_f32_vk_scalar, 0, 1, 1, 16, 4, 0, 0, 0, 1, 0, 2)               \
    X(decode_bf16_kv_scalar, 1, 0, 1, 16, 4, 0, 0, 0, 1, 0, 2)              \
    X(decode_bf16_vk_scalar, 1, 1, 1, 16, 4, 0, 0, 0, 1, 0, 2)              \
    X(decode_f32_kv_128_tok_cu, 0, 0, 4, 16, 4, 1, 0, 1, 1, 1, 2)           \
    X(decode_f32_kv_128_tok_ks_cu, 0, 0, 4, 16, 4, 1, 0, 1, 2, 1, 2)        \
    X(decode_f32_vk_128_tok_cu, 0, 1, 4, 16, 4, 1, 0, 1, 1, 1, 2)           \
    X(decode_bf16_kv_128_tok_cu, 1, 0, 4, 16, 4, 1, 0, 1, 1, 1, 2)          \
    X(decode_bf16_vk_128_tok_cu, 1, 1, 8, 16, 4, 1, 0, 1, 1, 1, 2)          \
    X(decode_f32_kv_128_ef_tok_cu, 0, 0, 4, 16, 4, 1, 1, 1, 1, 1, 2)        \
    X(decode_f32_kv_128_ef_tok_ks_cu, 0, 0, 4, 16, 4, 1, 1, 1, 2, 1, 2)     \
    X(decode_f32_vk_128_ef_tok_cu, 0, 1, 4, 16, 4, 1, 1, 1, 1, 1, 2)        \
    X(decode_bf16_kv_128_ef_tok_cu, 1, 0, 4, 16, 4, 1, 1, 1, 1, 1, 2)       \
    X(decode_bf16_vk_128_ef_tok_cu, 1, 1, 8, 16, 4, 1, 1, 1, 1, 1, 2)       \
    X(decode_f32_kv_128_narrow_tok_cu, 0, 0, 4, 8, 4, 1, 1, 1, 1, 1, 2)     \
    X(decode_f32_vk_128_narrow_tok_cu, 0, 1, 4, 8, 4, 1, 1, 1, 1, 1, 2)     \
    X(decode_bf16_kv_128_narrow_tok_cu, 1, 0, 4, 8, 4, 1, 1, 2, 1, 1, 2)    \
    X(decode_bf16_vk_128_narrow_tok_cu, 1, 1, 8, 8, 4, 1, 1, 2, 1, 1, 2)    \
    X(decode_f32_kv_128_tok_spec, 0, 0, 4, 16, 4, 1, 0, 1, 1, 2, 2)         \
    X(decode_f32_kv_128_ef_tok_spec, 0, 0, 4, 16, 4, 1, 1, 1, 1, 2, 2)      \
    X(decode_f32_kv_128_tok_ks_spec, 0, 0, 4, 16, 4, 1, 0, 1, 2, 2, 2)      \
    X(decode_f32_vk_128_tok_spec, 0, 1, 4, 16, 4, 1, 0, 1, 1, 2, 2)         \
    X(decode_bf16_kv_128_tok_spec, 1, 0, 4, 16, 4, 1, 0, 1, 1, 2, 2)        \
    X(decode_bf16_vk_128_tok_spec, 1, 1, 8, 16, 4, 1, 0, 1, 1, 2, 2)        \
    X(decode_f32_kv_128_ef_tok_ks_spec, 0, 0, 4, 16, 4, 1, 1, 1, 2, 2, 2)   \
    X(decode_f32_vk_128_ef_tok_spec, 0, 1, 4, 16, 4, 1, 1, 1, 1, 2, 2)      \
    X(decode_bf16_kv_128_ef_tok_spec, 1, 0, 4, 16, 4, 1, 1, 1, 1, 2, 2)     \
    X(decode_bf16_vk_128_ef_tok_spec, 1, 1, 8, 16, 4, 1, 1, 1, 1, 2, 2)     \
    X(decode_f32_kv_128_narrow_tok_spec, 0, 0, 4, 8, 4, 1, 1, 1, 1, 2, 2)   \
    X(decode_f32_vk_128_narrow_tok_spec, 0, 1, 4, 8, 4, 1, 1, 1, 1, 2, 2)   \
    X(decode_bf16_kv_128_narrow_tok_spec, 1, 0, 4, 8, 4, 1, 1, 2, 1, 2, 2)  \
    X(decode_bf16_vk_128_narrow_tok_spec, 1, 1, 8, 8, 4, 1, 1, 2, 1, 2, 2)  \
    X(decode_bf16_kv_128_ef_tok_cu_early, 1, 0, 4, 16, 4, 1, 1, 1, 1, 1, 1)

/*  name                                  V_FIRST LOAD_EF KS CU */
#define DECODE_PACKED_VARIANTS(X)              \
    X(decode_bf16_kv_packed, 0, 0, 1, 0)       \
    X(decode_bf16_vk_packed, 1, 0, 1, 0)       \
    X(decode_bf16_kv_packed_ef, 0, 1, 1, 0)    \
    X(decode_bf16_vk_packed_ef, 1, 1, 1, 0)    \
    X(decode_bf16_kv_packed_ks, 0, 0, 2, 0)    \
    X(decode_bf16_kv_packed_ef_ks, 0, 1, 2, 0) \
    X(decode_bf16_kv_packed_cu, 0, 0, 1, 1)    \
    X(decode_bf16_vk_packed_cu, 1, 0, 1, 1)    \
    X(decode_bf16_kv_packed_ef_cu, 0, 1, 1, 1) \
    X(decode_bf16_vk_packed_ef_cu, 1, 1, 1, 1) \
    X(decode_bf16_kv_packed_ks_cu, 0, 0, 2, 1) \
    X(decode_bf16_kv_packed_ef_ks_cu, 0, 1, 2, 1)
/* clang-format on */

/* The packed kernels' register tile: 16 rows (KL = 8 lanes share a column) x 8 columns (4 lane
 * groups x 8 = 32 columns per warp), held as 64 bf16 pairs. */
#define PK_NR 16
#define PK_NC 8

/* Threads per CTA are at most 256: the 8 warps of a K = V = 128 fp32 head. */
#define DECODE_MAX_WARPS_PER_CTA 8

typedef enum fkda_decode_family {
    FKDA_DECODE_FAMILY_TILES = 0, /* decode_tiles.cu */
    FKDA_DECODE_FAMILY_PACKED = 1 /* decode_packed.cu */
} fkda_decode_family;

/* Rows per family; a tile variant's row in the table is its row in DECODE_TILE_VARIANTS, a packed
 * variant's is DECODE_TILE_VARIANT_COUNT + its row in DECODE_PACKED_VARIANTS. */
#define DECODE_COUNT_ROW(...) +1
enum {
    DECODE_TILE_VARIANT_COUNT = 0 DECODE_TILE_VARIANTS(DECODE_COUNT_ROW),
    DECODE_PACKED_VARIANT_COUNT = 0 DECODE_PACKED_VARIANTS(DECODE_COUNT_ROW)
};

/* One row of the table, with the columns' meanings above. */
typedef struct fkda_decode_variant {
    const char *name;
    fkda_decode_family family;
    int bf16_pool, v_first, vec, rows, cols, dense128;
    int load_ef;     /* evict-first state loads */
    int bf16_tokens; /* TOK: 0, or 1 / 2 (32- / 64-bit token offsets) */
    int k_split;     /* KS */
    int cu_form;     /* CU: the form of call a TOK or packed kernel serves (0, 1, 2: above) */
    int ctas_per_sm; /* CTAS: 2, or 1 (the _early kernel; the packed kernels: 0, not used) */
} fkda_decode_variant;

#ifdef __cplusplus
extern "C" {
#endif

/* The table (decode_select.c): every tile variant, then every packed one. */
extern const fkda_decode_variant fkda_decode_variant_table[];
#define fkda_decode_variant_count (DECODE_TILE_VARIANT_COUNT + DECODE_PACKED_VARIANT_COUNT)

#ifdef __cplusplus
}
#endif

#endif /* FKDA_CUDA_DECODE_VARIANTS_H */

/*
 * prefill_chain_io.cuh: what the chain kernel (prefill_chain.cu) reads and writes of the caller's
 * tensors besides the records: the start state (its row or pool slot, has_initial_state), the
 * final state, checkpoints and fla's intermediate states h (all from a warp's accumulator
 * fragments), outputs in any dtype, and the segment arrays of the two-pass chain.
 *
 * Fragment layout of a warp's state (prefill_chain.cu): S[j][e] holds key 8j + 2t + (e & 1) and
 * value v0 + g + 8 (e >> 1), with g = lane / 4 and t = lane % 4.
 */
#ifndef FKDA_PREFILL_CHAIN_IO_CUH
#define FKDA_PREFILL_CHAIN_IO_CUH

#include "prefill_common.cuh"
#include "ptx_load.cuh"
#include "ptx_mma.cuh"

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 /* used by the sm_90 chain only */
/* Element `off` of an integer or flag tensor. */
static __device__ __forceinline__ int64_t chain_int(const pf_ints *x, int64_t off)
{
    if (x->bool8) return ((const uint8_t *)x->data)[off] != 0;
    return x->i64 ? ((const int64_t *)x->data)[off] : (int64_t)((const int32_t *)x->data)[off];
}

/* The state_in row sequence n starts from, or -1 for the zero state (absent, has_initial_state
 * 0, a negative slot, or a slot past the pool). */
static __device__ __forceinline__ int64_t chain_initial_row(const pf_params *p, int64_t n)
{
    if (p->state_in.data == NULL) return -1;
    if (p->has_initial.data && !chain_int(&p->has_initial, n * p->has_initial.stride[0])) return -1;
    const int64_t r = p->initial_idx.data ? chain_int(&p->initial_idx, n * p->initial_idx.stride[0]) : n;
    return r < 0 || r >= p->pool_size ? -1 : r;
}

/* The state_out row of sequence n's final state, or -1 for none. */
static __device__ __forceinline__ int64_t chain_final_row(const pf_params *p, int64_t n)
{
    if (p->state_out.data == NULL) return -1;
    const int64_t r = p->final_idx.data ? chain_int(&p->final_idx, n * p->final_idx.stride[0]) : n;
    return r < 0 || r >= p->pool_size ? -1 : r;
}

/* A warp's 16 value columns of keys key0 .. key0 + 127 of a state row (key0 = 0 but in the K = 256
 * chain): element (key key0 + 8j + 2t + (e & 1), value v0 + g + 8 (e >> 1)) of the accumulator
 * layout; keys past K and values past V are zero. BATCH (a compile-time constant): the dtype is
 * chosen once, outside the loads, and the loads go in four batches of 16, each issued whole before
 * any of it is converted (ptx_load.cuh). Element by element (!BATCH), with a dtype choice and a
 * bounds test each, every bf16 element's conversion waits for its load: 64 DRAM round trips in a
 * row before a chain's first chunk (dev/cuda/load_waits.py). Only the split chain (its chain
 * warps hold the state) takes the batches: in the unsplit bf16 chain they moved ptxas' schedule
 * of the main loop and made every step slower (H200: 8 % at T = 8192 H = 96, more than the
 * batches save), and the fp16 and any-output chains spilled with them. */
static __device__ __forceinline__ void chain_get_state(const pf_params *p, const pf_states *src, int64_t r, int64_t h,
                                                       int v0, int key0, int g, int t, float S[16][4], const int BATCH)
{
    if (BATCH) {
        const int f32 = src->dtype == FKDA_DTYPE_F32;
        const int64_t base = r * src->stride[0] + h * src->stride[1];
#pragma unroll
        for (int j0 = 0; j0 < 16; j0 += 4) {
            uint32_t bits[4][4];
#pragma unroll
            for (int j = 0; j < 4; j++)
#pragma unroll
                for (int e = 0; e < 4; e++) bits[j][e] = 0u; /* 0.0 in either dtype */
            if (r >= 0) {
#define CH_GET_STATE_AS(LOAD, SHIFT)                                                                    \
    do {                                                                                                \
        _Pragma("unroll") for (int j = 0; j < 4; j++) _Pragma("unroll") for (int e = 0; e < 4; e++)     \
        {                                                                                               \
            const int64_t key_ = key0 + 8 * (j0 + j) + 2 * t + (e & 1), val_ = v0 + g + 8 * (e >> 1);   \
            const int64_t off_ = base + key_ * src->stride[2] + val_ * src->stride[3];                  \
            bits[j][e] = LOAD((const char *)src->data + (off_ << (SHIFT)), key_ < p->K && val_ < p->V); \
        }                                                                                               \
    } while (0)
                if (f32)
                    CH_GET_STATE_AS(load_b32_if, 2);
                else
                    CH_GET_STATE_AS(load_u16_if, 1);
#undef CH_GET_STATE_AS
            }
#pragma unroll
            for (int j = 0; j < 4; j++)
#pragma unroll
                for (int e = 0; e < 4; e++) hold_until_here(&bits[j][e]);
#pragma unroll
            for (int j = 0; j < 4; j++)
#pragma unroll
                for (int e = 0; e < 4; e++) S[j0 + j][e] = __uint_as_float(f32 ? bits[j][e] : bits[j][e] << 16);
        }
        return;
    }
#pragma unroll
    for (int j = 0; j < 16; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) S[j][e] = 0.0f;
    if (r < 0) return;
    const int64_t base = r * src->stride[0] + h * src->stride[1];
#pragma unroll
    for (int j = 0; j < 16; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int64_t key = key0 + 8 * j + 2 * t + (e & 1), val = v0 + g + 8 * (e >> 1);
            if (key >= p->K || val >= p->V) continue;
            const int64_t off = base + key * src->stride[2] + val * src->stride[3];
            S[j][e] = src->dtype == FKDA_DTYPE_F32 ? ((const float *)src->data)[off]
                                                   : pf_bf16_to_float(((const uint16_t *)src->data)[off]);
        }
}

/* Every state store of the kernel (final state, h, checkpoints) goes through this body. Inlined:
 * out of line (a call, with the registers copied to the stack) the chain kept fewer registers and
 * its step was 8-10 % slower, although the calls sit outside the loop over a run of chunks. */
static __device__ __forceinline__ void chain_put_state_copy(const pf_states dst, int64_t K, int64_t V, int64_t r,
                                                            int64_t h, int v0, int g, int t, const float (*S)[4],
                                                            int poison)
{
    const int64_t base = r * dst.stride[0] + h * dst.stride[1];
#pragma unroll
    for (int j = 0; j < 16; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int64_t key = 8 * j + 2 * t + (e & 1), val = v0 + g + 8 * (e >> 1);
            if (key >= K || val >= V) continue;
            const int64_t off = base + key * dst.stride[2] + val * dst.stride[3];
            const float x = poison ? __int_as_float(0x7fc00000) : S[j][e];
            if (dst.dtype == FKDA_DTYPE_F32)
                ((float *)dst.data)[off] = x;
            else if (dst.dtype == FKDA_DTYPE_BF16)
                ((uint16_t *)dst.data)[off] = pf_float_to_bf16(x);
            else
                ((uint16_t *)dst.data)[off] = __half_as_ushort(__float2half_rn(x));
        }
}

/* The bf16 chain's state stores: the elements of chain_put_state_copy, stored in the same order
 * with the same values, in fewer instructions. Element (key 8j + 2t + (e & 1), value v0 + g +
 * 8 (e >> 1)) lies 8j key strides past the lane's element e of key tile 0, so each lane forms
 * four pointers once and steps them by 8 key strides per tile, and the dtype is chosen once per
 * store, not per element: an element is then an add and a predicated store, with no branch (the
 * chain's CTAs hold few warps, so these instructions are on the chain's path at every
 * checkpoint). The fp16 chain keeps chain_put_state_copy: the four pointers' registers made it
 * spill inside its chunk loop. */
static __device__ __forceinline__ void chain_put_state_stepped(const pf_states dst, int64_t K, int64_t V, int64_t r,
                                                               int64_t h, int v0, int g, int t, const float (*S)[4],
                                                               int poison, float up)
{
    const int64_t base = r * dst.stride[0] + h * dst.stride[1], step = 8 * dst.stride[2];
    int64_t off[4];
    int ok[4]; /* bit j: element (j, e) is inside K and V */
#pragma unroll
    for (int e = 0; e < 4; e++) {
        const int64_t key = 2 * t + (e & 1), val = v0 + g + 8 * (e >> 1);
        off[e] = base + key * dst.stride[2] + val * dst.stride[3];
        ok[e] = 0;
#pragma unroll
        for (int j = 0; j < 16; j++) ok[e] |= (8 * j + key < K && val < V) << j;
    }
#define CH_PUT_STATE_AS(T, CONV)                                                      \
    do {                                                                              \
        T *d_[4];                                                                     \
        _Pragma("unroll") for (int e = 0; e < 4; e++) d_[e] = (T *)dst.data + off[e]; \
        _Pragma("unroll") for (int j = 0; j < 16; j++)                                \
        {                                                                             \
            _Pragma("unroll") for (int e = 0; e < 4; e++)                             \
            {                                                                         \
                const float x_ = poison ? __int_as_float(0x7fc00000) : S[j][e] * up;  \
                if (ok[e] >> j & 1) *d_[e] = CONV(x_);                                \
                d_[e] += step;                                                        \
            }                                                                         \
        }                                                                             \
    } while (0)
#define CH_CONV_F32(x) (x)
#define CH_CONV_BF16(x) pf_float_to_bf16(x)
#define CH_CONV_F16(x) __half_as_ushort(__float2half_rn(x))
    if (dst.dtype == FKDA_DTYPE_F32)
        CH_PUT_STATE_AS(float, CH_CONV_F32);
    else if (dst.dtype == FKDA_DTYPE_BF16)
        CH_PUT_STATE_AS(uint16_t, CH_CONV_BF16);
    else
        CH_PUT_STATE_AS(uint16_t, CH_CONV_F16);
#undef CH_CONV_F32
#undef CH_CONV_BF16
#undef CH_CONV_F16
#undef CH_PUT_STATE_AS
}

/* `up`: the power of two that takes the registers to the state (the fp16 chain holds its state
 * scaled, prefill_chain.cu; 1 in the bf16 chain). `f16`: the fp16 chain (a constant in each
 * kernel), which keeps the element-wise body chain_put_state_copy; the bf16 chain takes
 * chain_put_state_stepped. */
static __device__ __forceinline__ void chain_put_state(const pf_params *p, const pf_states *dst, int64_t r, int64_t h,
                                                       int v0, int g, int t, const float S[16][4], int poison, float up,
                                                       int f16)
{
    if (r < 0) return;
    if (!f16) {
        chain_put_state_stepped(*dst, p->K, p->V, r, h, v0, g, t, S, poison, up);
        return;
    }
    float copy[16][4];
#pragma unroll
    for (int j = 0; j < 16; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) copy[j][e] = S[j][e] * up;
    chain_put_state_copy(*dst, p->K, p->V, r, h, v0, g, t, copy, poison);
}

/* Checkpoint j of sequence n: its offset, and where it goes (row of checkpoint_states, or pool
 * slot of state_out; -1: nowhere). */
static __device__ __forceinline__ int64_t chain_ck_offset(const pf_params *p, int64_t n, int64_t j)
{
    return chain_int(&p->ck_off, n * p->ck_off.stride[0] + j * p->ck_off.stride[1]);
}

static __device__ __forceinline__ void chain_put_checkpoint(const pf_params *p, int64_t n, int64_t j, int64_t h, int v0,
                                                            int g, int t, const float S[16][4], int poison, float up,
                                                            int f16)
{
    if (p->ck_states.data != NULL) {
        chain_put_state(p, &p->ck_states, n * p->checkpoints + j, h, v0, g, t, S, poison, up, f16);
    } else {
        const int64_t r = chain_int(&p->ck_idx, n * p->ck_idx.stride[0] + j * p->ck_idx.stride[1]);
        if (r >= 0 && r < p->pool_size) chain_put_state(p, &p->state_out, r, h, v0, g, t, S, poison, up, f16);
    }
}

/* The smallest of the warp's 32 offsets (one per lane; -1 for none) past `after`, below `len` and a
 * multiple of 16 (INT64_MAX: none): a warp minimum, no memory access. */
static __device__ __forceinline__ int64_t chain_warp_next_offset(int64_t mine, int64_t after, int64_t len)
{
    long long x = mine > after && mine < len && mine % PF_CHUNK == 0 ? (long long)mine : (long long)INT64_MAX;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const long long y = __shfl_xor_sync(0xffffffffu, x, o);
        x = y < x ? y : x;
    }
    return (int64_t)x;
}

/* The smallest checkpoint offset of sequence n that the chain passes after position `after`: a
 * multiple of 16 below the length (INT64_MAX: none). The warp reads 32 offsets at a time, in
 * parallel (a scan of dependent loads costs ~0.3 us per offset at every boundary). */
static __device__ __forceinline__ int64_t chain_next_checkpoint(const pf_params *p, int64_t n, int64_t after,
                                                                int64_t len, int lane)
{
    int64_t next = INT64_MAX;
    for (int64_t base = 0; base < p->checkpoints; base += 32) {
        const int64_t mine = base + lane < p->checkpoints ? chain_ck_offset(p, n, base + lane) : -1;
        const int64_t m = chain_warp_next_offset(mine, after, len);
        next = m < next ? m : next;
    }
    return next;
}

/* First row of sequence n in the intermediate states: n rows of ceil(T / ichunk), or with
 * cu_seqlens the sum of ceil(length_m / ichunk) over m < n (the warp splits the sum). */
static __device__ __forceinline__ int64_t chain_inter_row0(const pf_params *p, int64_t n, int lane)
{
    if (p->cu == NULL) return n * p->inter_rows_per_seq;
    int64_t rows = 0;
    for (int64_t m = lane; m < n; m += 32) {
        int64_t r, a, l, s0;
        pf_sequence(p, m, &r, &a, &l, &s0);
        rows += (l + p->ichunk - 1) / p->ichunk;
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) rows += __shfl_xor_sync(0xffffffffu, rows, o);
    return rows;
}

/* fp16 v read directly by a bf16 chain (an fp16 output, prefill_launch.cu's v_direct): each lane
 * turns the 16 bytes it loaded into its v tile into bf16, in place. */
static __device__ __forceinline__ void chain_v_f16_to_bf16(uint4 *unit)
{
    uint4 x = *unit;
    uint32_t *w = (uint32_t *)&x;
#pragma unroll
    for (int e = 0; e < 4; e++) {
        const float2 f = __half22float2(*(const __half2 *)&w[e]);
        w[e] = pack_bf16x2(f.x, f.y);
    }
    *unit = x;
}

/* Eight output values of one token (columns col0 .. col0 + 7; those past V are not written), in
 * the output's dtype: the path for outputs that are not bf16 with 16-byte rows. */
static __device__ __forceinline__ void chain_put_output(const pf_params *p, int64_t row, int64_t tok, int64_t h,
                                                        int col0, const float *x)
{
    const int64_t base = row * p->out_s[0] + tok * p->out_s[1] + h * p->out_s[2];
#pragma unroll
    for (int e = 0; e < 8; e++) {
        if (col0 + e >= p->V) break;
        const int64_t off = base + col0 + e;
        if (p->out_dtype == FKDA_DTYPE_F32)
            ((float *)p->out)[off] = x[e];
        else if (p->out_dtype == FKDA_DTYPE_BF16)
            ((uint16_t *)p->out)[off] = pf_float_to_bf16(x[e]);
        else
            ((uint16_t *)p->out)[off] = __half_as_ushort(__float2half_rn(x[e]));
    }
}

/* A warp's 16 rows of a segment array ([128 rows][128 keys] fp32, S^T layout). */
static __device__ __forceinline__ void chain_load_rows(const float *base, int v0, int g, int t, float S[16][4])
{
#pragma unroll
    for (int j = 0; j < 16; j++) {
        const float2 a = *(const float2 *)(base + (int64_t)(v0 + g) * PF_DK + 8 * j + 2 * t);
        const float2 b = *(const float2 *)(base + (int64_t)(v0 + g + 8) * PF_DK + 8 * j + 2 * t);
        S[j][0] = a.x;
        S[j][1] = a.y;
        S[j][2] = b.x;
        S[j][3] = b.y;
    }
}

static __device__ __forceinline__ void chain_store_rows(float *base, int v0, int g, int t, const float S[16][4],
                                                        float up)
{
#pragma unroll
    for (int j = 0; j < 16; j++) {
        *(float2 *)(base + (int64_t)(v0 + g) * PF_DK + 8 * j + 2 * t) = make_float2(S[j][0] * up, S[j][1] * up);
        *(float2 *)(base + (int64_t)(v0 + g + 8) * PF_DK + 8 * j + 2 * t) = make_float2(S[j][2] * up, S[j][3] * up);
    }
}
#endif

#endif /* FKDA_PREFILL_CHAIN_IO_CUH */

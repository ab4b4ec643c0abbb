/*
 * prefill_chain_k256.cu: the chain kernel for 128 < K <= 256. One CTA per (sequence, value head,
 * slice of value columns) walks the sequence's chunks in order, like prefill_chain.cu, but each
 * 16 value columns belong to a warp PAIR (warps 2i and 2i + 1): one warp of the pair holds keys
 * 0 .. 127 of the pair's 16 x 256 state S^T (half 0), the other keys 128 .. 255 (half 1), as fp32
 * mma accumulators, 16 key tiles x 4 registers, as at K = 128 (the whole 16 x 256 state with its
 * bf16 copy would need ~200 registers more than a warp has). Per chunk and warp, on the warp's half
 * of the record's key tiles:
 *
 *   P_h     = S_h^T (-W_h)^T                   16 x 16 partial over the warp's 128 keys
 *   Vnew^T  = V^T bINV^T + (P_0 + P_1)         the pair swaps P through shared memory (a named
 *                                              barrier of the pair's 64 threads); both warps
 *                                              form the same Vnew, summed in this order
 *   S_h^T   = S_h^T diag(gamma_h) + Vnew^T Kr_h
 *   O       = ((Qd_0 S_0 + Mqk Vnew) + Qd_1 S_1)   16 tokens x 16 values; half 0 adds Mqk Vnew
 *                                              (hi + lo) to its partial; each warp stores 8 of
 *                                              the 16 columns (half h the columns 8h .. 8h + 7)
 *                                              and hands the partner its partial of the other 8
 *
 * Only the pair synchronises, once per chunk: there is no CTA barrier in the chunk loop, so the
 * pairs of a CTA (and the two warps of different pairs that share an SM scheduler) drift apart and
 * fill each other's latencies. The hand-offs, and what orders them:
 *   - the Vnew partials: written before the pair's barrier of chunk c, read after it, in buffers
 *     of c's parity, so that a warp's write of chunk c + 1 cannot reach a buffer its partner may
 *     still be reading (the next write to c's buffer, in chunk c + 2, comes after the barrier of
 *     chunk c + 1, which the partner reaches only after its reads of chunk c);
 *   - the output partials of chunk c: written after the barrier of chunk c, read after the barrier
 *     of chunk c + 1 (or the pair's barrier after the last chunk), where the output of chunk c is
 *     stored; again by parity (the next write to the buffer, in chunk c + 2, follows the barrier of
 *     chunk c + 2, which the partner reaches only after its read in chunk c + 1);
 *   - the ring of records: each warp releases a stage when it has read its last operand from it
 *     (every lane arrives on the stage's `empty` mbarrier after its own reads, a release; then
 *     __syncwarp, and lane 0 adds one to the stage's counter, relaxed: the counter only picks
 *     who refills; each lane releases its own reads, rather than lane 0 after a __syncwarp,
 *     so that compute-sanitizer's racecheck sees every read ordered before the refill); the warp whose add
 *     completes the count (the last of the CTA's warps) waits on `empty` (an acquire of every
 *     warp's release; its phase completes with that warp's own arrival or very soon after), then
 *     fences the proxies (fence.proxy.async: the warps read the stage through the generic proxy,
 *     the bulk copy writes it through the async proxy, and only the fence orders the acquired
 *     reads before the copy's writes) and refills the stage with one bulk copy, whose bytes
 *     complete the stage's `full` mbarrier for the warps that wait on it. No warp waits for the
 *     others to finish a chunk, and a warp runs at most the ring's depth ahead of the slowest.
 *     The counter cannot mix rounds: a warp's next release of the stage needs the refill, which
 *     needs every count of this round;
 *   - each warp's v tiles: its own cp.async, refilled after its own __syncwarp.
 *
 * The record (27,648 bytes) comes by one bulk copy per chunk into a ring of 4 stages for a CTA of 8
 * warps (one CTA per SM: a chain warp keeps ~250 registers, so an SM holds 8) and 3 for smaller
 * CTAs (two per SM). No sequence segments (docs/prefill.md).
 */
#include "cuda_internal.h"
#include "prefill_chain_io.cuh"
#include "prefill_k256.cuh"
#include "ptx_copy.cuh"
#include "ptx_mbarrier.cuh"
#include "ptx_mma.cuh"
#include "ptx_sync.cuh"

#define K2_TILE16 512   /* a warp's 16 x 16 bf16 v slice */
#define K2_SWAP 1024    /* a warp's 16 x 16 fp32 Vnew partial: [8 registers][32 lanes] */
#define K2_XO 512       /* a warp's 16 x 8 fp32 output partial for its partner: [4 registers][32 lanes] */
#define K2_OUT_TILE 512 /* a warp's fp32 output tile for outputs that are not 16-bit: 16 tokens x 8 values */
#define K2_MAX_VSLICE 64

/* Ring stages: 4 for a CTA of 8 warps (alone on its SM), 3 for smaller CTAs (two share an SM). */
static __host__ __device__ __forceinline__ int k2_stages(int warps) { return warps == 8 ? 4 : 3; }

size_t pf256_chain_smem_bytes(int vslice)
{
    const int warps = vslice / 8; /* two per 16 columns */
    const int stages = k2_stages(warps);
    /* ring, v tiles, the Vnew swap and the output exchange (two parities each), the fp32 output
     * tiles, mbarriers and release counters */
    return (size_t)stages * PF256_REC_BYTES + (size_t)stages * warps * K2_TILE16 + (size_t)2 * warps * K2_SWAP +
           (size_t)2 * warps * K2_XO + (size_t)warps * K2_OUT_TILE + stages * (2 * sizeof(uint64_t) + sizeof(uint32_t));
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 /* the sm_90 chain only */
/* Stores of the warp's keys: the K = 128 store body on the tensor shifted by key0 keys. */
static __device__ __forceinline__ void k2_put_state(const pf_params *p, const pf_states *dst, int64_t r, int64_t h,
                                                    int v0, int key0, int g, int t, const float S[16][4], int poison)
{
    if (r < 0) return;
    pf_states shifted = *dst;
    const int64_t esize = dst->dtype == FKDA_DTYPE_F32 ? 4 : 2;
    shifted.data = (unsigned char *)dst->data + key0 * dst->stride[2] * esize;
    float copy[16][4];
#pragma unroll
    for (int j = 0; j < 16; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) copy[j][e] = S[j][e];
    chain_put_state_copy(shifted, p->K - key0, p->V, r, h, v0, g, t, copy, poison);
}

static __device__ __forceinline__ void k2_put_checkpoint(const pf_params *p, int64_t n, int64_t j, int64_t h, int v0,
                                                         int key0, int g, int t, const float S[16][4], int poison)
{
    if (p->ck_states.data != NULL) {
        k2_put_state(p, &p->ck_states, n * p->checkpoints + j, h, v0, key0, g, t, S, poison);
    } else {
        const int64_t r = chain_int(&p->ck_idx, n * p->ck_idx.stride[0] + j * p->ck_idx.stride[1]);
        if (r >= 0 && r < p->pool_size) k2_put_state(p, &p->state_out, r, h, v0, key0, g, t, S, poison);
    }
}
#endif

/* The chain of one (sequence, head, value slice); `out_mode` as in prefill_chain.cu. */
static __device__ __forceinline__ void k2_chain_run(const pf_params &p, const int out_mode)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    extern __shared__ __align__(128) unsigned char smem[];
    const int warps = blockDim.x >> 5, pairs = warps >> 1, nst = k2_stages(warps);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    /* The pair is warps 2i, 2i + 1; which of them is half 0 alternates with warp / 4, so that each
     * of the SM's four schedulers (warp % 4) runs one warp of each half (half 0 does more). */
    const int pair = warp >> 1, half = (warp ^ (warp >> 2)) & 1, key0 = half * 128;
    const int g = lane >> 2, t = lane & 3;

    const int nslices = (int)(p.vpad / (pairs * 16));
    int64_t bid = blockIdx.x;
    const int slice = (int)(bid % nslices);
    bid /= nslices;
    const int64_t h = bid % p.HV, n = bid / p.HV;
    const int v0 = slice * pairs * 16 + pair * 16; /* the pair's first value column */

    unsigned char *s_rec = smem;                                          /* [stage][record] */
    unsigned char *s_v = smem + nst * PF256_REC_BYTES;                    /* [stage][warp][tile] */
    float *s_swap = (float *)(s_v + nst * warps * K2_TILE16);             /* [parity][pair][half][8][32] */
    float *s_xo = s_swap + 2 * warps * (K2_SWAP / 4);                     /* [parity][warp][4][32] */
    float *s_otile = s_xo + 2 * warps * (K2_XO / 4);                      /* [warp][16][8] */
    uint64_t *s_full = (uint64_t *)(s_otile + warps * (K2_OUT_TILE / 4)); /* [stage] filled */
    uint64_t *s_empty = s_full + nst;                                     /* [stage] released by every warp */
    uint32_t *s_done = (uint32_t *)(s_empty + nst);                       /* [stage] releases counted */

    int64_t row, start, len, slot0;
    pf_sequence(&p, n, &row, &start, &len, &slot0);
    const int64_t nch = (len + PF_CHUNK - 1) / PF_CHUNK;
    const unsigned char *rec0 = p.records + (h * p.slots + slot0) * (int64_t)PF256_REC_BYTES;

    if (threadIdx.x == 0) {
        for (int s = 0; s < nst; s++) {
            mbar_init(smem_addr(&s_full[s]), 1);
            mbar_init(smem_addr(&s_empty[s]), (uint32_t)warps * 32u); /* every lane arrives */
            s_done[s] = 0;
        }
        mbar_fence_init();
    }
    __syncthreads();

    float S[16][4];
    chain_get_state(&p, &p.state_in, chain_initial_row(&p, n), h, v0, key0, g, t, S, 0);

    /* Producers: the ring's refills come from whichever warp releases a stage last; each warp
     * cp.asyncs its own copy of the pair's v slice (16 tokens x 16 values, lane = token * 2 +
     * half), so that no warp waits on another's cp.async. */
    const int vtok = lane >> 1, vhalf = lane & 1;
    const int v_live = v0 + vhalf * 8 < p.V;
    const uint16_t *vsrc;
    int64_t v_t0, v_ts;
    if (p.v_stage != NULL) {
        vsrc = (const uint16_t *)p.v_stage + h * p.slots * PF_CHUNK * p.vpad + v0 + vhalf * 8;
        v_t0 = slot0 * PF_CHUNK;
        v_ts = p.vpad;
    } else {
        vsrc = (const uint16_t *)p.v + row * p.v_s[0] + h * p.v_s[2] + v0 + vhalf * 8;
        v_t0 = start;
        v_ts = p.v_s[1];
    }
#define K2_ISSUE_RECORD(chunk, stage)                                                                        \
    do {                                                                                                     \
        const uint32_t mb_ = smem_addr(&s_full[stage]);                                                      \
        mbar_arrive_expect_tx(mb_, PF256_REC_BYTES);                                                         \
        bulk_copy_g2s(smem_addr(s_rec + (stage)*PF256_REC_BYTES), rec0 + (chunk) * (int64_t)PF256_REC_BYTES, \
                      PF256_REC_BYTES, mb_);                                                                 \
    } while (0)
    /* The lane's next v row to load (chunks are issued in order, one per K2_ISSUE_V) and how many
     * of the sequence's tokens remain from it. */
    const uint16_t *v_next = vsrc + (v_t0 + vtok) * v_ts;
    int64_t v_left = len - vtok;
#define K2_ISSUE_V(chunk, stage)                                                                     \
    do {                                                                                             \
        if ((chunk) < nch) {                                                                         \
            const int ok_ = v_left > 0 && v_live;                                                    \
            cp_async_16(smem_addr(s_v + ((stage)*warps + warp) * K2_TILE16 + pf_swz16(vtok, vhalf)), \
                        ok_ ? (const void *)v_next : (const void *)vsrc, ok_ ? 16u : 0u);            \
            v_next += PF_CHUNK * v_ts;                                                               \
            v_left -= PF_CHUNK;                                                                      \
        }                                                                                            \
        cp_async_commit();                                                                           \
    } while (0)

    if (threadIdx.x == 0)
        for (int s = 0; s < nst; s++)
            if (s < nch) K2_ISSUE_RECORD(s, s);
    for (int s = 0; s < nst; s++) K2_ISSUE_V(s, s);

    const float zero4[4] = {0.f, 0.f, 0.f, 0.f};
    float *swap_mine = s_swap + (2 * pair + half) * 256; /* + parity * warps * 256 */
    const float *swap_pair = s_swap + 2 * pair * 256;    /* half 0's partial, then half 1's */
    float *xo_mine = s_xo + warp * 128;                  /* + parity * warps * 128 */
    const float *xo_partner = s_xo + (warp ^ 1) * 128;

    uint32_t sa[8][4];
#define K2_PACK_STATE()                                                  \
    do {                                                                 \
        _Pragma("unroll") for (int kk = 0; kk < 8; kk++)                 \
        {                                                                \
            sa[kk][0] = pack_bf16x2(S[2 * kk][0], S[2 * kk][1]);         \
            sa[kk][1] = pack_bf16x2(S[2 * kk][2], S[2 * kk][3]);         \
            sa[kk][2] = pack_bf16x2(S[2 * kk + 1][0], S[2 * kk + 1][1]); \
            sa[kk][3] = pack_bf16x2(S[2 * kk + 1][2], S[2 * kk + 1][3]); \
        }                                                                \
    } while (0)
    K2_PACK_STATE();

    /* The output of chunk `chunk`, columns v0 + 8 half .. + 7 (n-tile `half` of the 16 x 16 O),
     * stored by this warp after the pair's next barrier: its kept partial `okeep` plus the
     * partner's from the exchange buffer of the chunk's parity. Half 0 keeps (Qd_0 S_0 + Mqk Vnew)
     * and receives Qd_1 S_1; half 1 receives the former and keeps the latter: either way the sum
     * of the same two fp32 values (fp32 addition commutes). A 16-bit output goes from the fragment
     * (tokens g, g + 8; values 2t, 2t + 1) straight to memory, 4 bytes per lane and row; any
     * other through an fp32 tile, a token row per lane. */
    float okeep[4] = {0.f, 0.f, 0.f, 0.f};
    const int col0 = v0 + 8 * half;
    /* 16-bit outputs: the lane's element of token g of the next chunk to store (chunks are stored
     * in order, one per K2_STORE_OUTPUT), and how many tokens remain from that token. */
    uint16_t *o_next = out_mode != PF_OUT_ANY ? (uint16_t *)p.out + row * p.out_s[0] + (start + g) * p.out_s[1] +
                                                    h * p.out_s[2] + col0 + 2 * t
                                              : NULL;
    const int64_t o_rows8 = 8 * p.out_s[1];
    int64_t o_left = len - g;
    const int o_live = col0 < p.V; /* V % 8 == 0 for 16-bit outputs */
#define K2_STORE_OUTPUT(chunk)                                                                                  \
    do {                                                                                                        \
        const float *x_ = xo_partner + (int)((chunk)&1) * warps * 128;                                          \
        float o_[4];                                                                                            \
        _Pragma("unroll") for (int e = 0; e < 4; e++) o_[e] = okeep[e] + x_[e * 32 + lane];                     \
        if (out_mode != PF_OUT_ANY) {                                                                           \
            const uint32_t lo_ = out_mode == PF_OUT_F16 ? pack_f16x2(o_[0], o_[1]) : pack_bf16x2(o_[0], o_[1]); \
            const uint32_t hi_ = out_mode == PF_OUT_F16 ? pack_f16x2(o_[2], o_[3]) : pack_bf16x2(o_[2], o_[3]); \
            if (o_live && o_left > 0) *(uint32_t *)o_next = lo_;                                                \
            if (o_live && o_left > 8) *(uint32_t *)(o_next + o_rows8) = hi_;                                    \
            o_next += 2 * o_rows8;                                                                              \
            o_left -= PF_CHUNK;                                                                                 \
        } else {                                                                                                \
            float *OF_ = s_otile + warp * 128; /* [16 tokens][8 values] fp32 */                                 \
            *(float2 *)(OF_ + g * 8 + 2 * t) = make_float2(o_[0], o_[1]);                                       \
            *(float2 *)(OF_ + (g + 8) * 8 + 2 * t) = make_float2(o_[2], o_[3]);                                 \
            __syncwarp();                                                                                       \
            const int64_t tl_ = (chunk)*PF_CHUNK + lane;                                                        \
            if (lane < 16 && tl_ < len) chain_put_output(&p, row, start + tl_, h, col0, OF_ + lane * 8);        \
            __syncwarp();                                                                                       \
        }                                                                                                       \
    } while (0)

    const int64_t inter_row0 = p.inter.data != NULL ? chain_inter_row0(&p, n, lane) : 0;
    int64_t next_ck = p.checkpoints > 0 ? chain_next_checkpoint(&p, n, -1, len, lane) : INT64_MAX;

    /* Runs of chunks between the boundaries where a state is due, as in prefill_chain.cu. */
    int64_t c = 0;
    int st = 0;      /* c's ring stage */
    uint32_t ph = 0; /* the parity of c's fill of that stage: (c / nst) & 1 */
    for (;;) {
        const int64_t pos = c * PF_CHUNK;
        int64_t stop = nch;
        if (p.inter.data != NULL) {
            if (c < nch && pos % p.ichunk == 0 && inter_row0 + pos / p.ichunk < p.inter_rows)
                k2_put_state(&p, &p.inter, inter_row0 + pos / p.ichunk, h, v0, key0, g, t, S, 0);
            const int64_t next = (pos / p.ichunk + 1) * p.ichunk / PF_CHUNK;
            stop = next < stop ? next : stop;
        }
        if (pos == next_ck) {
            next_ck = INT64_MAX;
            for (int64_t base = 0; base < p.checkpoints; base += 32) {
                const int64_t mine = base + lane < p.checkpoints ? chain_ck_offset(&p, n, base + lane) : -1;
                for (unsigned due = __ballot_sync(0xffffffffu, mine == pos); due != 0; due &= due - 1)
                    k2_put_checkpoint(&p, n, base + __ffs(due) - 1, h, v0, key0, g, t, S, 0);
                const int64_t m = chain_warp_next_offset(mine, pos, len);
                next_ck = m < next_ck ? m : next_ck;
            }
        }
        if (next_ck != INT64_MAX && next_ck / PF_CHUNK < stop) stop = next_ck / PF_CHUNK;

        for (; c < stop; c++) {
            const int par = (int)(c & 1);
            const unsigned char *R = s_rec + st * PF256_REC_BYTES;
            unsigned char *VT = s_v + (st * warps + warp) * K2_TILE16;
            const unsigned char *Rneg = R + PF256_REC_NEGW + half * PF256_HALF;
            const unsigned char *Rkr = R + PF256_REC_KR + half * PF256_HALF;
            const unsigned char *Rqd = R + PF256_REC_QD + half * PF256_HALF;
            const unsigned char *Rgam = R + PF256_REC_GAMMA + key0 * 4;

            if (nst == 4) /* this warp's v of chunk c: its oldest pending group */
                CP_ASYNC_WAIT(3);
            else
                CP_ASYNC_WAIT(2);
            if (out_mode == PF_OUT_F16 && p.v_stage == NULL) {
                chain_v_f16_to_bf16((uint4 *)(VT + pf_swz16(vtok, vhalf)));
            }
            __syncwarp();
            mbar_wait(smem_addr(&s_full[st]), ph);

            /* The critical chain: this warp's S_h^T (-W_h)^T in four 4-deep chains. */
            float vn[2][2][4];
#pragma unroll
            for (int kk = 0; kk < 8; kk++) {
                uint32_t wb[4];
                ldsm_x4(wb, smem_addr(Rneg + pf_swz_unit((lane & 7) + 8 * (lane >> 4), 2 * kk + ((lane >> 3) & 1))));
                float(*acc)[4] = vn[kk >> 2];
                mma_bf16_16816(acc[0], sa[kk], wb[0], wb[1], (kk & 3) ? acc[0] : zero4);
                mma_bf16_16816(acc[1], sa[kk], wb[2], wb[3], (kk & 3) ? acc[1] : zero4);
            }

            /* U^T = V^T bINV^T (bINV as hi + lo), in both warps, while the chain's products run. */
            float u[2][4];
            {
                uint32_t va[4], bh[4], bl[4];
                const int mi = lane >> 3, r = lane & 7;
                ldsm_x4_trans(va, smem_addr(VT + pf_swz16(r + 8 * (mi >> 1), mi & 1)));
                const uint32_t boff = ((lane & 7) + 8 * (lane >> 4)) * 32 + ((lane >> 3) & 1) * 16;
                ldsm_x4(bh, smem_addr(R + PF256_REC_BINV + boff));
                ldsm_x4(bl, smem_addr(R + PF256_REC_BINV_LO + boff));
                mma_bf16_16816(u[0], va, bl[0], bl[1], zero4);
                mma_bf16_16816(u[1], va, bl[2], bl[3], zero4);
                mma_bf16_16816(u[0], va, bh[0], bh[1], u[0]);
                mma_bf16_16816(u[1], va, bh[2], bh[3], u[1]);
            }

            /* P_h to the pair's swap buffer of c's parity. */
#pragma unroll
            for (int e = 0; e < 8; e++)
                swap_mine[par * warps * 256 + e * 32 + lane] = vn[0][e >> 2][e & 3] + vn[1][e >> 2][e & 3];

            /* O's Qd_h S_h on the old state (its last use of sa), while the partner's P_h comes. */
            float oa[2][4], ob[2][4];
#pragma unroll
            for (int kk = 0; kk < 8; kk++) {
                uint32_t qa[4];
                ldsm_x4(qa, smem_addr(Rqd + pf_swz_unit((lane & 7) + 8 * ((lane >> 3) & 1), 2 * kk + (lane >> 4))));
                float(*acc)[4] = kk < 4 ? oa : ob;
                mma_bf16_16816(acc[0], qa, sa[kk][0], sa[kk][2], (kk & 3) ? acc[0] : zero4);
                mma_bf16_16816(acc[1], qa, sa[kk][1], sa[kk][3], (kk & 3) ? acc[1] : zero4);
            }

#pragma unroll
            for (int j = 0; j < 16; j++) {
                const float2 gm = *(const float2 *)(Rgam + (8 * j + 2 * t) * 4);
                S[j][0] *= gm.x;
                S[j][1] *= gm.y;
                S[j][2] *= gm.x;
                S[j][3] *= gm.y;
            }

            /* Vnew^T = U^T + (P_0 + P_1): both partials read back from the swap buffer (no registers
             * held across the products above), summed in the same order by both warps of the pair. */
            bar_sync_named((uint32_t)(pair + 1), 64);
            uint32_t vp[4];
            {
                const float *sp_ = swap_pair + par * warps * 256;
                float tot[2][4];
#pragma unroll
                for (int e = 0; e < 8; e++)
                    tot[e >> 2][e & 3] = u[e >> 2][e & 3] + (sp_[e * 32 + lane] + sp_[256 + e * 32 + lane]);
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    vp[2 * e] = pack_bf16x2(tot[e][0], tot[e][1]);
                    vp[2 * e + 1] = pack_bf16x2(tot[e][2], tot[e][3]);
                }
            }

            /* S_h^T += Vnew^T Kr_h. */
#pragma unroll
            for (int m = 0; m < 8; m++) {
                uint32_t kb[4];
                ldsm_x4_trans(kb,
                              smem_addr(Rkr + pf_swz_unit((lane & 7) + 8 * ((lane >> 3) & 1), 2 * m + (lane >> 4))));
                mma_bf16_16816(S[2 * m], vp, kb[0], kb[1], S[2 * m]);
                mma_bf16_16816(S[2 * m + 1], vp, kb[2], kb[3], S[2 * m + 1]);
            }

            /* Half 0 adds Mqk Vnew (hi + lo) to its partial: its last read of the record. */
            if (half == 0) { /* warp-uniform */
                uint32_t mh[4], ml[4];
                const uint32_t moff = ((lane & 7) + 8 * ((lane >> 3) & 1)) * 32 + (lane >> 4) * 16;
                ldsm_x4(mh, smem_addr(R + PF256_REC_MQK + moff));
                ldsm_x4(ml, smem_addr(R + PF256_REC_MQK_LO + moff));
                mma_bf16_16816(oa[0], ml, vp[0], vp[2], oa[0]);
                mma_bf16_16816(oa[1], ml, vp[1], vp[3], oa[1]);
                mma_bf16_16816(ob[0], mh, vp[0], vp[2], ob[0]);
                mma_bf16_16816(ob[1], mh, vp[1], vp[3], ob[1]);
            }

            /* This warp is done with stage st (record and v tile): release it (each lane arrives on the
             * stage's empty barrier), and count the release; the warp that counts last refills the
             * stage, below, once the count is back. */
            mbar_arrive(smem_addr(&s_empty[st]));
            __syncwarp();
            uint32_t done = 0;
            if (lane == 0) done = atom_add_relaxed_shared(smem_addr(&s_done[st]), 1u);

            /* The output of chunk c - 1 (the barrier above published the partner's partial). */
            if (c > 0) {
                K2_STORE_OUTPUT(c - 1);
            }

            /* Chunk c's partials: n-tile `half` kept, the other to the partner (by c's parity). */
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const float o0_ = oa[0][e] + ob[0][e], o1_ = oa[1][e] + ob[1][e];
                okeep[e] = half ? o1_ : o0_;
                xo_mine[par * warps * 128 + e * 32 + lane] = half ? o0_ : o1_;
            }

            K2_PACK_STATE();

            if (lane == 0 && ((done + 1) & (uint32_t)(warps - 1)) == 0 && c + nst < nch) {
                mbar_wait(smem_addr(&s_empty[st]), ph); /* every warp's release, acquired */
                fence_proxy_async_shared();             /* those generic reads before the async refill */
                K2_ISSUE_RECORD(c + nst, st);
            }
            K2_ISSUE_V(c + nst, st);
            st = st + 1 == nst ? 0 : st + 1;
            ph ^= st == 0;
        }
        if (c >= nch) break;
    }
    if (nch > 0) {
        bar_sync_named((uint32_t)(pair + 1), 64); /* publishes the last chunk's output partials */
        K2_STORE_OUTPUT(nch - 1);
    }
#undef K2_PACK_STATE
#undef K2_STORE_OUTPUT
#undef K2_ISSUE_RECORD
#undef K2_ISSUE_V

    for (int64_t j = 0; j < p.checkpoints; j++) {
        const int64_t off = chain_ck_offset(&p, n, j);
        if (off == len || (off > 0 && off < len && off % PF_CHUNK != 0))
            k2_put_checkpoint(&p, n, j, h, v0, key0, g, t, S, off != len);
    }
    k2_put_state(&p, &p.state_out, chain_final_row(&p, n), h, v0, key0, g, t, S, 0);
#endif
}

__global__ void __launch_bounds__(256, 1) pf256_chain_kernel(const pf_params p) { k2_chain_run(p, PF_OUT_BF16); }
__global__ void __launch_bounds__(256, 1) pf256_chain_kernel_f16_out(const pf_params p) { k2_chain_run(p, PF_OUT_F16); }
__global__ void __launch_bounds__(256, 1) pf256_chain_kernel_any_out(const pf_params p) { k2_chain_run(p, PF_OUT_ANY); }

cudaError_t pf256_launch_chain(const pf_params *p, int vslice, cudaStream_t stream)
{
    if (vslice != 16 && vslice != 32 && vslice != K2_MAX_VSLICE) return cudaErrorInvalidValue;
    if (p->vpad % vslice != 0) return cudaErrorInvalidValue;
    const int64_t blocks = p->N * p->HV * (p->vpad / vslice);
    if (blocks <= 0) return cudaSuccess;
    if (blocks > INT32_MAX) return cudaErrorInvalidConfiguration; /* gridDim.x limit */
    const size_t smem = pf256_chain_smem_bytes(vslice);
    void (*kernel)(const pf_params) = p->out_mode == PF_OUT_BF16  ? pf256_chain_kernel
                                      : p->out_mode == PF_OUT_F16 ? pf256_chain_kernel_f16_out
                                                                  : pf256_chain_kernel_any_out;
    cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           (int)pf256_chain_smem_bytes(K2_MAX_VSLICE));
    if (err != cudaSuccess) return err;
    void *args[] = {(void *)p};
    return fkda_launch_kernel((const void *)kernel, dim3((unsigned)blocks), dim3(vslice * 4), args, smem,
                              stream); /* this launch's error only (prefill_common.cuh) */
}

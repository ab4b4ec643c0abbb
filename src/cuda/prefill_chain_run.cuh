/*
 * prefill_chain_run.cuh: the chain's body, chain_run (prefill_chain.cu, whose top describes it),
 * included four times by prefill_chain.cu: as chain_run (CH_SPLIT 0) and as chain_run_split
 * (CH_SPLIT 1, the output on warps of its own), each also with CH_COPIES 1 (_copies: the chunk loop
 * in two copies, for the fp16 chain's kernels). The split parts are compiled only into
 * the split forms, so the unsplit kernels are the same code with or without them (their register
 * allocation moved when the split parts were there as dead branches); likewise the copies. The
 * chunk loop's body, one chunk's step, is prefill_chain_step.cuh (which says why two copies).
 */
/* The chain of one (sequence, head, value slice). `out_mode` (a constant in each kernel below):
 * a bf16 or fp16 output with 16-byte rows is stored through a 16-bit tile, 16 bytes per lane;
 * any other through an fp32 tile, element by element. One kernel per mode, so that the common
 * one carries no code of the others. `f16`: the fp16 chain (see the top of prefill_chain.cu). */
static __device__ __forceinline__ void CH_RUN(const pf_params &p, const pf_chain_plan &plan, const int out_mode,
                                              const int f16)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    extern __shared__ __align__(128) unsigned char smem[];
#if CH_SPLIT
    /* The split parts serve the bf16 chain with bf16 output (pf_chain_kernel_split) and the fp16
     * chain with either of its outputs (pf_chain16_kernel_split_*): on the fp16 chain the output
     * warp takes the chunk's product type from its record's flag and the held scale from the
     * handoff. */
    /* warps [0, warps) run the chain, warps [warps, 2 warps) the output of the chain warp `warps`
     * below them, one chunk behind (prefill_chain.cu, the top) */
    const int warps = blockDim.x >> 6;
    const int out_role = (int)(threadIdx.x >> 5) >= warps; /* warp-uniform */
    const int warp = (threadIdx.x >> 5) - (out_role ? warps : 0), lane = threadIdx.x & 31;
#else
    const int warps = blockDim.x >> 5;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
#endif
    const int g = lane >> 2, t = lane & 3;

    /* Which job: blockIdx.x = ((n * HV + h) * segments + seg) * columns + column slice, where
     * pass A has twice the column slices (the second half run the transition M). */
    const int mode = plan.mode;
    const int64_t nseg = mode == PF_CHAIN_WHOLE ? 1 : mode == PF_CHAIN_SEG_A ? plan.P - 1 : plan.P;
    const int ncols = mode == PF_CHAIN_SEG_A ? 2 * plan.nslices : plan.nslices;
    int64_t bid = blockIdx.x;
    int slice = (int)(bid % ncols);
    bid /= ncols;
    const int64_t seg = bid % nseg;
    bid /= nseg;
    const int64_t h = bid % p.HV, n = bid / p.HV;
    const int trans = slice >= plan.nslices; /* pass A: a transition (M) slice */
    slice -= trans ? plan.nslices : 0;
    if (trans && seg == 0) return;                 /* M_0 is never needed: S_0 is known (uniform per CTA) */
    const int v0 = slice * warps * 16 + warp * 16; /* this warp's first value (or M) column */
#if CH_SPLIT
    const int with_v = !trans && !out_role, with_out = mode != PF_CHAIN_SEG_A;
#else
    const int with_v = !trans, with_out = mode != PF_CHAIN_SEG_A;
#endif

    unsigned char *s_rec = smem;                                                    /* [stage][record] */
    unsigned char *s_v = smem + CH_STAGES * PF_REC_BYTES;                           /* [stage][warp][tile] */
    unsigned char *s_out = s_v + CH_STAGES * warps * (f16 ? CH_VRAW16 : CH_TILE16); /* [warp][output tile] */
    unsigned char *s_vop = s_out + warps * CH_OUT_TILE;                             /* f16: [warp][v operand] */
#if CH_SPLIT
    unsigned char *s_hand = s_vop + (f16 ? warps * CH_TILE16 : 0);     /* [slot][warp][9][lane] 16 bytes */
    int *s_hand_e = (int *)(s_hand + 2 * warps * CH_HAND_WARP);        /* f16: [slot][warp] the held scale's e */
    uint64_t *s_full = (uint64_t *)(s_hand_e + (f16 ? 2 * warps : 0)); /* [stage] */
#else
    uint64_t *s_full = (uint64_t *)(s_vop + (f16 ? warps * CH_TILE16 : 0)); /* [stage] */
#endif

    int64_t row, start, len, slot0;
    pf_sequence(&p, n, &row, &start, &len, &slot0);
    int64_t nch = (len + PF_CHUNK - 1) / PF_CHUNK, cb = 0; /* chunks [cb, nch) */
    if (mode != PF_CHAIN_WHOLE) {
        cb = seg * plan.Lc;
        nch = cb + plan.Lc < nch ? cb + plan.Lc : nch;
        cb = cb < nch ? cb : nch;
    }
    const unsigned char *rec0 = p.records + (h * p.slots + slot0) * (int64_t)PF_REC_BYTES;
    const int64_t seg_off = ((n * p.HV + h) * plan.P + seg) * (int64_t)(PF_DV * PF_DK);

    if (threadIdx.x == 0) {
        for (int s = 0; s < CH_STAGES; s++) mbar_init(smem_addr(&s_full[s]), 1);
        mbar_fence_init();
    }
    __syncthreads();

    /* The start state: the caller's (or zero) at a sequence start; zero for pass A's B chains
     * after the first segment, the identity for its M chains; the merged state in pass C. */
    float S[16][4];
#if CH_SPLIT
    if (out_role) {
#pragma unroll
        for (int j = 0; j < 16; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) S[j][e] = 0.0f; /* unused: the output warp holds no state */
    } else
#endif
        if (mode == PF_CHAIN_SEG_C) {
        chain_load_rows(plan.seg_S + seg_off, v0, g, t, S);
    } else if (seg == 0) {
        chain_get_state(&p, &p.state_in, chain_initial_row(&p, n), h, v0, 0, g, t, S, CH_SPLIT);
        /* Pass C starts segment 0 from this copy, so the caller's initial state is only read in
         * pass A and final_state may be the same tensor (an in-place update). */
        if (mode == PF_CHAIN_SEG_A) chain_store_rows(plan.seg_S + seg_off, v0, g, t, S, 1.0f);
    } else {
#pragma unroll
        for (int j = 0; j < 16; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int key = 8 * j + 2 * t + (e & 1), col = v0 + g + 8 * (e >> 1);
                S[j][e] = trans && key == col ? 1.0f : 0.0f;
            }
    }

    /* Producers: thread 0 moves the first records (in the split form the first output warp's
     * lane 0 the later ones, at the iteration's end), each chain warp its own v slice (16 tokens x
     * 16 values, lane = token * 2 + half). */
    const int vtok = lane >> 1, vhalf = lane & 1;
    const int v_live = v0 + vhalf * 8 < p.V; /* V % 8 == 0 unless v is the staged copy (zeros to vpad) */
    const uint16_t *vsrc;
    int64_t v_t0, v_ts; /* the sequence's first token and the token stride in vsrc */
    if (p.v_stage != NULL) {
        vsrc = (const uint16_t *)p.v_stage + h * p.slots * PF_CHUNK * p.vpad + v0 + vhalf * 8;
        v_t0 = slot0 * PF_CHUNK;
        v_ts = p.vpad;
    } else {
        vsrc = (const uint16_t *)p.v + row * p.v_s[0] + h * p.v_s[2] + v0 + vhalf * 8;
        v_t0 = start;
        v_ts = p.v_s[1];
    }
    /* The fp16 chain reads v in its own dtype (fp16, or fp32: the caller's or the prep's fp32
     * copy), 8 values per lane, two 16-byte pieces for fp32. */
    const int v4 = f16 && (p.v_stage != NULL || p.qkv_dtype == FKDA_DTYPE_F32);
    const unsigned char *vsrc8 = NULL;
    int64_t v_ts8 = 0; /* bytes per token */
    if (f16) {
        const int es = v4 ? 4 : 2;
        vsrc8 = p.v_stage != NULL ? p.v_stage + (h * p.slots * PF_CHUNK * p.vpad + v0 + vhalf * 8) * 4
                                  : (const unsigned char *)p.v + (row * p.v_s[0] + h * p.v_s[2] + v0 + vhalf * 8) * es;
        v_ts8 = v_ts * es;
    }
#define CH_ISSUE_RECORD(chunk, stage)                                                                                \
    do {                                                                                                             \
        const uint32_t mb_ = smem_addr(&s_full[stage]);                                                              \
        mbar_arrive_expect_tx(mb_, PF_REC_BYTES);                                                                    \
        bulk_copy_g2s(smem_addr(s_rec + (stage)*PF_REC_BYTES), rec0 + (chunk) * (int64_t)PF_REC_BYTES, PF_REC_BYTES, \
                      mb_);                                                                                          \
    } while (0)
#define CH_ISSUE_V(chunk, stage)                                                                                     \
    do {                                                                                                             \
        if (f16 && with_v && (chunk) < nch) {                                                                        \
            const int64_t tk_ = (chunk)*PF_CHUNK + vtok;                                                             \
            const int ok_ = tk_ < len && v_live;                                                                     \
            const unsigned char *src_ = ok_ ? vsrc8 + (v_t0 + tk_) * v_ts8 : vsrc8;                                  \
            const uint32_t dst_ = smem_addr(s_v + ((stage)*warps + warp) * CH_VRAW16 + ch_vraw_at(v4, vtok, vhalf)); \
            cp_async_16(dst_, src_, ok_ ? 16u : 0u);                                                                 \
            if (v4) cp_async_16(dst_ + 16, ok_ ? src_ + 16 : src_, ok_ ? 16u : 0u);                                  \
        } else if (with_v && (chunk) < nch) {                                                                        \
            const int64_t tk_ = (chunk)*PF_CHUNK + vtok;                                                             \
            const int ok_ = tk_ < len && v_live;                                                                     \
            cp_async_16(smem_addr(s_v + ((stage)*warps + warp) * CH_TILE16 + pf_swz16(vtok, vhalf)),                 \
                        ok_ ? (const void *)(vsrc + (v_t0 + tk_) * v_ts) : (const void *)vsrc, ok_ ? 16u : 0u);      \
        }                                                                                                            \
        cp_async_commit();                                                                                           \
    } while (0)

/* In the split kernels a chain warp refills its own v tile's stage (chunk c + CH_STAGES) inside
 * step c, right after U, the tile's last reader, while the warp waits on the update's products: the
 * copy's issue then overlaps their latency instead of lengthening the step between the iteration's
 * barrier and the next step's first product. The __syncwarp orders every lane's reads before the
 * copy's writes. The unsplit kernels issue it after the barrier: moved into their step, it made
 * every step slower (docs/history/prefill.md, "v22-refills"). */
#if CH_SPLIT
#define CH_REFILL_V_IN_STEP()          \
    do {                               \
        __syncwarp();                  \
        CH_ISSUE_V(c + CH_STAGES, st); \
    } while (0)
#else
#define CH_REFILL_V_IN_STEP() /* (after the iteration's barrier) */
#endif

    if (threadIdx.x == 0)
        for (int s = 0; s < CH_STAGES; s++)
            if (cb + s < nch) CH_ISSUE_RECORD(cb + s, s);
    for (int s = 0; s < CH_STAGES; s++) CH_ISSUE_V(cb + s, s);

    const float zero4[4] = {0.f, 0.f, 0.f, 0.f};
    unsigned char *OS = s_out + warp * CH_OUT_TILE;

    /* The state in bf16: A fragments of S^T (and B fragments of S). Loop-carried: each chunk
     * packs the next chunk's copy as soon as its state update is done. */
    uint32_t sa[8][4];
#define CH_PACK_STATE_AS(PACK)                                    \
    do {                                                          \
        _Pragma("unroll") for (int kk = 0; kk < 8; kk++)          \
        {                                                         \
            sa[kk][0] = PACK(S[2 * kk][0], S[2 * kk][1]);         \
            sa[kk][1] = PACK(S[2 * kk][2], S[2 * kk][3]);         \
            sa[kk][2] = PACK(S[2 * kk + 1][0], S[2 * kk + 1][1]); \
            sa[kk][3] = PACK(S[2 * kk + 1][2], S[2 * kk + 1][3]); \
        }                                                         \
    } while (0)
#define CH_PACK_STATE()                    \
    do {                                   \
        if (f16)                           \
            CH_PACK_STATE_AS(pack_f16x2);  \
        else                               \
            CH_PACK_STATE_AS(pack_bf16x2); \
    } while (0)
    CH_PACK_STATE();

    /* The fp16 chain's scale: registers hold S 2^-e (and v, Vnew, O the same). */
    int e_held = 0;

    /* The output of a chunk is stored one iteration later, so that its mma chains run while the
     * next chunk's critical products are in flight: fragment (token g / g+8, values 2t..) ->
     * shared tile -> 16 contiguous bytes per lane. */
    float o[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
    /* The fp16 chain's fp32 output (fp32 inputs) in 16-byte pieces where V % 8 == 0 and the rows are
     * 16-byte aligned: a lane's 8 columns are then all inside V or all past it. The bf16 kernels keep
     * the element path. */
    const int out_f4 = f16 && out_mode == PF_OUT_ANY && p.out_dtype == FKDA_DTYPE_F32 && p.V % 8 == 0 &&
                       ((uintptr_t)p.out & 15) == 0 && ((p.out_s[0] | p.out_s[1] | p.out_s[2]) & 3) == 0;
#define CH_STORE_OUTPUT(chunk)                                                                                       \
    do {                                                                                                             \
        const int64_t tk_ = (chunk)*PF_CHUNK + vtok;                                                                 \
        const int ok_ = with_out && (chunk) >= cb && tk_ < len;                                                      \
        if (out_mode != PF_OUT_ANY) {                                                                                \
            _Pragma("unroll") for (int vt = 0; vt < 2; vt++)                                                         \
            {                                                                                                        \
                const uint32_t lo_ = out_mode == PF_OUT_F16 ? pack_f16x2(o[vt][0], o[vt][1])                         \
                                                            : pack_bf16x2(o[vt][0], o[vt][1]);                       \
                const uint32_t hi_ = out_mode == PF_OUT_F16 ? pack_f16x2(o[vt][2], o[vt][3])                         \
                                                            : pack_bf16x2(o[vt][2], o[vt][3]);                       \
                *(uint32_t *)(OS + pf_swz16(g, vt) + 4 * t) = lo_;                                                   \
                *(uint32_t *)(OS + pf_swz16(g + 8, vt) + 4 * t) = hi_;                                               \
            }                                                                                                        \
            __syncwarp();                                                                                            \
            if (ok_ && v_live) {                                                                                     \
                const uint4 x_ = *(const uint4 *)(OS + pf_swz16(vtok, vhalf));                                       \
                *(uint4 *)((uint16_t *)p.out + row * p.out_s[0] + (start + tk_) * p.out_s[1] + h * p.out_s[2] + v0 + \
                           vhalf * 8) = x_;                                                                          \
            }                                                                                                        \
        } else {                                                                                                     \
            float *OF_ = (float *)OS; /* [16 tokens][16 values] fp32 */                                              \
            _Pragma("unroll") for (int vt = 0; vt < 2; vt++)                                                         \
            {                                                                                                        \
                *(float2 *)(OF_ + g * 16 + vt * 8 + 2 * t) = make_float2(o[vt][0], o[vt][1]);                        \
                *(float2 *)(OF_ + (g + 8) * 16 + vt * 8 + 2 * t) = make_float2(o[vt][2], o[vt][3]);                  \
            }                                                                                                        \
            __syncwarp();                                                                                            \
            if (ok_ && out_f4) {                                                                                     \
                if (v_live) {                                                                                        \
                    const float *x_ = OF_ + vtok * 16 + vhalf * 8;                                                   \
                    float4 *d_ = (float4 *)((float *)p.out + row * p.out_s[0] + (start + tk_) * p.out_s[1] +         \
                                            h * p.out_s[2] + v0 + vhalf * 8);                                        \
                    d_[0] = *(const float4 *)x_;                                                                     \
                    d_[1] = *(const float4 *)(x_ + 4);                                                               \
                }                                                                                                    \
            } else if (ok_) {                                                                                        \
                chain_put_output(&p, row, start + tk_, h, v0 + vhalf * 8, OF_ + vtok * 16 + vhalf * 8);              \
            }                                                                                                        \
        }                                                                                                            \
    } while (0)

/* O = Qd S + Mqk Vnew (Mqk as hi + lo) into o, in four chains, from record RX, the state's 16-bit
 * copy SA (its A fragments, read as B fragments of S) and Vnew's VP: the chain warp's products in
 * the unsplit kernels (CH_STEP_UPDATE), the output warp's in the split one, so the same bits. */
#define CH_STEP_OUTPUT(MMA, RX, SA, VP)                                                                    \
    do {                                                                                                   \
        float oh[2][4];                                                                                    \
        _Pragma("unroll") for (int kk = 0; kk < 8; kk++)                                                   \
        {                                                                                                  \
            uint32_t qa[4];                                                                                \
            ldsm_x4(qa, smem_addr((RX) + PF_REC_QD +                                                       \
                                  pf_swz_unit((lane & 7) + 8 * ((lane >> 3) & 1), 2 * kk + (lane >> 4)))); \
            float(*acc)[4] = kk < 4 ? o : oh;                                                              \
            MMA(acc[0], qa, SA[kk][0], SA[kk][2], (kk & 3) ? acc[0] : zero4);                              \
            MMA(acc[1], qa, SA[kk][1], SA[kk][3], (kk & 3) ? acc[1] : zero4);                              \
        }                                                                                                  \
        uint32_t mh[4], ml[4];                                                                             \
        const uint32_t moff = ((lane & 7) + 8 * ((lane >> 3) & 1)) * 32 + (lane >> 4) * 16;                \
        ldsm_x4(mh, smem_addr((RX) + PF_REC_MQK + moff));                                                  \
        ldsm_x4(ml, smem_addr((RX) + PF_REC_MQK_LO + moff));                                               \
        MMA(o[0], ml, VP[0], VP[2], o[0]);                                                                 \
        MMA(o[1], ml, VP[1], VP[3], o[1]);                                                                 \
        MMA(oh[0], mh, VP[0], VP[2], oh[0]);                                                               \
        MMA(oh[1], mh, VP[1], VP[3], oh[1]);                                                               \
        _Pragma("unroll") for (int e = 0; e < 4; e++)                                                      \
        {                                                                                                  \
            o[0][e] += oh[0][e];                                                                           \
            o[1][e] += oh[1][e];                                                                           \
        }                                                                                                  \
    } while (0)

#if CH_SPLIT
/* The output warp's work for chunk X: its record stage's phase is complete (the chain warp waited
 * on it; waiting again gives this warp the bulk copy's data), the handoff slot X mod 2 was written
 * before the barrier that ended chunk X's iteration; O, then the store. On the fp16 chain O is
 * formed in the chunk's product type (a flagged record's chunk ran on bf16, its handoff too) and
 * brought to the caller's units by the held scale the chain warp had then, as the unsplit step
 * does, so the bits are the same. */
#define CH_OUTPUT_WARP(X)                                                                                   \
    do {                                                                                                    \
        const int sx_ = (int)(((X)-cb) % CH_STAGES);                                                        \
        mbar_wait(smem_addr(&s_full[sx_]), (uint32_t)((((X)-cb) / CH_STAGES) & 1));                         \
        const uint4 *h_ = (const uint4 *)(s_hand + (((((X)-cb) & 1) * warps + warp) * 9 * 32 + lane) * 16); \
        uint32_t so_[8][4], vo_[4];                                                                         \
        _Pragma("unroll") for (int kk = 0; kk < 8; kk++)                                                    \
        {                                                                                                   \
            const uint4 x_ = h_[kk * 32];                                                                   \
            so_[kk][0] = x_.x, so_[kk][1] = x_.y, so_[kk][2] = x_.z, so_[kk][3] = x_.w;                     \
        }                                                                                                   \
        const uint4 y_ = h_[8 * 32];                                                                        \
        vo_[0] = y_.x, vo_[1] = y_.y, vo_[2] = y_.z, vo_[3] = y_.w;                                         \
        const unsigned char *rx_ = s_rec + sx_ * PF_REC_BYTES;                                              \
        if (f16 && !PF_REC16_BF16_FLAG(rx_))                                                                \
            CH_STEP_OUTPUT(mma_f16_16816, rx_, so_, vo_);                                                   \
        else                                                                                                \
            CH_STEP_OUTPUT(mma_bf16_16816, rx_, so_, vo_);                                                  \
        if (f16) {                                                                                          \
            const float up_ = ch_pow2(s_hand_e[(((X)-cb) & 1) * warps + warp]);                             \
            _Pragma("unroll") for (int e_ = 0; e_ < 4; e_++)                                                \
            {                                                                                               \
                o[0][e_] *= up_;                                                                            \
                o[1][e_] *= up_;                                                                            \
            }                                                                                               \
        }                                                                                                   \
        CH_STORE_OUTPUT(X);                                                                                 \
    } while (0)
#endif

    /* Checkpoints and intermediate states: the next position where one is due. */
    const int64_t inter_row0 = p.inter.data != NULL ? chain_inter_row0(&p, n, lane) : 0;
    int64_t next_ck = p.checkpoints > 0 ? chain_next_checkpoint(&p, n, -1, len, lane) : INT64_MAX;

    /* Runs of chunks between the boundaries where a state is due (fla's h, checkpoints): the
     * stores sit between the runs, so the loop over a run's chunks stays small. */
    int64_t c = cb;
    for (;;) {
        const int64_t pos = c * PF_CHUNK; /* the state entering chunk c: after 16 c tokens */
        int64_t stop = nch;
        if (p.inter.data != NULL) {
#if CH_SPLIT
            if (!out_role && c < nch && pos % p.ichunk == 0 && inter_row0 + pos / p.ichunk < p.inter_rows)
#else
            if (c < nch && pos % p.ichunk == 0 && inter_row0 + pos / p.ichunk < p.inter_rows)
#endif
                chain_put_state(&p, &p.inter, inter_row0 + pos / p.ichunk, h, v0, g, t, S, 0, ch_pow2(e_held), f16);
            const int64_t next = (pos / p.ichunk + 1) * p.ichunk / PF_CHUNK;
            stop = next < stop ? next : stop;
        }
        if (pos == next_ck) {
            /* The warp reads 32 offsets at a time (lane j offset base + j), stores the due ones
             * and finds the next: C / 32 rounds of parallel loads, none held across the loop. */
            next_ck = INT64_MAX;
            for (int64_t base = 0; base < p.checkpoints; base += 32) {
                const int64_t mine = base + lane < p.checkpoints ? chain_ck_offset(&p, n, base + lane) : -1;
#if CH_SPLIT
                for (unsigned due = __ballot_sync(0xffffffffu, mine == pos && !out_role); due != 0; due &= due - 1)
#else
                for (unsigned due = __ballot_sync(0xffffffffu, mine == pos); due != 0; due &= due - 1)
#endif
                    chain_put_checkpoint(&p, n, base + __ffs(due) - 1, h, v0, g, t, S, 0, ch_pow2(e_held), f16);
                const int64_t m = chain_warp_next_offset(mine, pos, len);
                next_ck = m < next_ck ? m : next_ck;
            }
        }
        if (next_ck != INT64_MAX && next_ck / PF_CHUNK < stop) stop = next_ck / PF_CHUNK;

#define CH_NEG_W_S(MMA)                                                                                    \
    do {                                                                                                   \
        _Pragma("unroll") for (int kk = 0; kk < 8; kk++)                                                   \
        {                                                                                                  \
            uint32_t wb[4];                                                                                \
            ldsm_x4(wb, smem_addr(R + PF_REC_NEGW +                                                        \
                                  pf_swz_unit((lane & 7) + 8 * (lane >> 4), 2 * kk + ((lane >> 3) & 1)))); \
            float(*acc)[4] = vn[kk >> 2];                                                                  \
            MMA(acc[0], sa[kk], wb[0], wb[1], (kk & 3) ? acc[0] : zero4);                                  \
            MMA(acc[1], sa[kk], wb[2], wb[3], (kk & 3) ? acc[1] : zero4);                                  \
        }                                                                                                  \
    } while (0)

/* U^T = V^T bINV^T (bINV as hi + lo), into the caller's u: A = V^T by a transposed load of the [token][value]
 * tile. Off the chain: it does not depend on the state. */
#define CH_STEP_U(MMA, VOPND)                                                               \
    if (with_v) { /* uniform per CTA */                                                     \
        uint32_t va[4], bh[4], bl[4];                                                       \
        const int mi = lane >> 3, r = lane & 7;                                             \
        ldsm_x4_trans(va, smem_addr((VOPND) + pf_swz16(r + 8 * (mi >> 1), mi & 1)));        \
        const uint32_t boff = ((lane & 7) + 8 * (lane >> 4)) * 32 + ((lane >> 3) & 1) * 16; \
        ldsm_x4(bh, smem_addr(R + PF_REC_BINV + boff));                                     \
        ldsm_x4(bl, smem_addr(R + PF_REC_BINV_LO + boff));                                  \
        MMA(u[0], va, bl[0], bl[1], zero4);                                                 \
        MMA(u[1], va, bl[2], bl[3], zero4);                                                 \
        MMA(u[0], va, bh[0], bh[1], u[0]);                                                  \
        MMA(u[1], va, bh[2], bh[3], u[1]);                                                  \
    }

#if CH_SPLIT
/* The output warp's operands, into handoff slot c mod 2: sa (still the old state) and Vnew; on
 * the fp16 chain also the held scale's e they are in (warp-uniform, one lane writes it). */
#define CH_HANDOFF_PUT()                                                                        \
    do {                                                                                        \
        uint4 *h_ = (uint4 *)(s_hand + ((((c - cb) & 1) * warps + warp) * 9 * 32 + lane) * 16); \
        _Pragma("unroll") for (int kk = 0; kk < 8; kk++)                                        \
            h_[kk * 32] = make_uint4(sa[kk][0], sa[kk][1], sa[kk][2], sa[kk][3]);               \
        h_[8 * 32] = make_uint4(vp[0], vp[1], vp[2], vp[3]);                                    \
        if (f16 && lane == 0) s_hand_e[((c - cb) & 1) * warps + warp] = e_held;                 \
    } while (0);
#define CH_CHAIN_OUT 0               /* the output warp forms O and stores it */
#define CH_CHAIN_STORE_OUTPUT(chunk) /* (the same) */
#else
#define CH_HANDOFF_PUT()                                     /* no handoff */
#define CH_CHAIN_OUT with_out                                /* the chain warp forms O... */
#define CH_CHAIN_STORE_OUTPUT(chunk) CH_STORE_OUTPUT(chunk); /* ...and stores it a chunk later */
#endif

/* The state update and the output from vn and u, on MMA's operands (PACK rounds Vnew to them). */
#define CH_STEP_UPDATE(MMA, PACK)                                                                                     \
    do {                                                                                                              \
        /* S^T diag(gamma) meanwhile (the 16-bit copy sa still holds the old state; the fp16 chain's gamma[0] may \
         * carry the bf16 record's flag in its sign). */   \
        _Pragma("unroll") for (int j = 0; j < 16; j++)                                                                \
        {                                                                                                             \
            const float2 gm = *(const float2 *)(R + PF_REC_GAMMA + (8 * j + 2 * t) * 4);                              \
            const float gx = f16 ? fabsf(gm.x) : gm.x;                                                                \
            S[j][0] *= gx;                                                                                            \
            S[j][1] *= gm.y;                                                                                          \
            S[j][2] *= gx;                                                                                            \
            S[j][3] *= gm.y;                                                                                          \
        }                                                                                                             \
                                                                                                                      \
        /* Vnew^T rounded: the A fragment (m = values, k = tokens) of the state update, and the B fragments (k = \
         * tokens, n = values) of Mqk Vnew. */    \
        uint32_t vp[4];                                                                                               \
        _Pragma("unroll") for (int e = 0; e < 2; e++)                                                                 \
        {                                                                                                             \
            vp[2 * e] = PACK(u[e][0] + (vn[0][e][0] + vn[1][e][0]), u[e][1] + (vn[0][e][1] + vn[1][e][1]));           \
            vp[2 * e + 1] = PACK(u[e][2] + (vn[0][e][2] + vn[1][e][2]), u[e][3] + (vn[0][e][3] + vn[1][e][3]));       \
        }                                                                                                             \
        CH_HANDOFF_PUT()                                                                                              \
                                                                                                                      \
        /* S^T += Vnew^T Kr (B = Kr by transposed loads: k = tokens, n = keys). */                                    \
        _Pragma("unroll") for (int m = 0; m < 8; m++)                                                                 \
        {                                                                                                             \
            uint32_t kb[4];                                                                                           \
            ldsm_x4_trans(                                                                                            \
                kb, smem_addr(R + PF_REC_KR + pf_swz_unit((lane & 7) + 8 * ((lane >> 3) & 1), 2 * m + (lane >> 4)))); \
            MMA(S[2 * m], vp, kb[0], kb[1], S[2 * m]);                                                                \
            MMA(S[2 * m + 1], vp, kb[2], kb[3], S[2 * m + 1]);                                                        \
        }                                                                                                             \
                                                                                                                      \
        /* O = Qd S + Mqk Vnew (Mqk as hi + lo), in four chains, while the update completes. */                       \
        if (CH_CHAIN_OUT) CH_STEP_OUTPUT(MMA, R, sa, vp);                                                             \
    } while (0)

/* The rest of the step, on MMA's operands (PACK rounds Vnew to them); VOPND: the v operand tile. */
#define CH_STEP_REST(MMA, PACK, VOPND)                                     \
    do {                                                                   \
        /* The previous chunk's output, now that its products are done. */ \
        CH_CHAIN_STORE_OUTPUT(c - 1)                                       \
                                                                           \
        float u[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};      \
        CH_STEP_U(MMA, VOPND)                                              \
        CH_REFILL_V_IN_STEP();                                             \
        CH_STEP_UPDATE(MMA, PACK);                                         \
    } while (0)

            /* The run's chunks. CH_COPIES: in two copies of the step (prefill_chain_step.cuh says
         * why), the fp16 chain's kernels only (the bf16 chain has no flagged chunk and no
         * rescale). A chain warp leaves the first copy for one chunk of the second and comes
         * back; the split kernels' output warps never leave it: each iteration of either ends in
         * the same barrier 0, reached from either copy. */
#if CH_COPIES
        while (c < stop) {
            for (; c < stop; c++) {
#define CH_STEP_FAST 1
#define CH_ITERATION_END iteration_end_fast
#include "prefill_chain_step.cuh"
#undef CH_ITERATION_END
#undef CH_STEP_FAST
            }
            if (c >= stop) break;
            do { /* chunk c in the second copy, then back to the first (a do, not a bare block:
                  * a break in the step would leave it, not the run's loop, and skip no c++) */
#define CH_STEP_FAST 0
#define CH_ITERATION_END iteration_end_general
#include "prefill_chain_step.cuh"
#undef CH_ITERATION_END
#undef CH_STEP_FAST
            } while (0);
            c++;
        }
#else
        for (; c < stop; c++) {
#define CH_STEP_FAST 0
#define CH_ITERATION_END iteration_end
#include "prefill_chain_step.cuh"
#undef CH_ITERATION_END
#undef CH_STEP_FAST
        }
#endif
        if (c >= nch) break;
    }
#if CH_SPLIT
    if (out_role && nch > cb) CH_OUTPUT_WARP(nch - 1);
#else
    if (nch > cb) CH_STORE_OUTPUT(nch - 1);
#endif
#undef CH_PACK_STATE
#undef CH_PACK_STATE_AS
#undef CH_NEG_W_S
#undef CH_STEP_REST
#undef CH_STEP_U
#undef CH_STEP_UPDATE
#undef CH_HANDOFF_PUT
#undef CH_CHAIN_OUT
#undef CH_CHAIN_STORE_OUTPUT
#undef CH_STEP_OUTPUT
#if CH_SPLIT
#undef CH_OUTPUT_WARP
#endif
#undef CH_STORE_OUTPUT
#undef CH_ISSUE_RECORD
#undef CH_ISSUE_V
#undef CH_REFILL_V_IN_STEP

#if CH_SPLIT
    if (out_role) return; /* the states below are the chain warps' */
#endif
    /* Checkpoints at the sequence's end are its final state; one strictly inside a chunk is not
     * formed by the chunked form, and gets NaN (the documented rule: offsets are multiples of 16).
     * The warp reads 32 offsets at a time (lane j offset base + j) and stores the due ones in
     * order of j: a load per lane, not one per checkpoint after the last one's stores. */
    for (int64_t base = 0; base < p.checkpoints; base += 32) {
        const int64_t off = base + lane < p.checkpoints ? chain_ck_offset(&p, n, base + lane) : -1;
        int mine = 0;
        if (off == len || (off > 0 && off < len && off % PF_CHUNK != 0)) mine = 1;
        for (unsigned due = __ballot_sync(0xffffffffu, mine); due != 0; due &= due - 1) {
            const int j = __ffs(due) - 1;
            const int64_t off_j = __shfl_sync(0xffffffffu, off, j);
            chain_put_checkpoint(&p, n, base + j, h, v0, g, t, S, off_j != len, ch_pow2(e_held), f16);
        }
    }
    if (mode == PF_CHAIN_WHOLE || (mode == PF_CHAIN_SEG_C && seg == plan.P - 1))
        chain_put_state(&p, &p.state_out, chain_final_row(&p, n), h, v0, g, t, S, 0, ch_pow2(e_held), f16);
    else if (mode == PF_CHAIN_SEG_A)
        chain_store_rows((trans ? plan.seg_M : plan.seg_B) + seg_off, v0, g, t, S, ch_pow2(e_held));
#endif
}

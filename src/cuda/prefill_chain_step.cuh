/*
 * prefill_chain_step.cuh: one chunk's step of the chain, the body of chain_run's chunk loop
 * (prefill_chain_run.cuh). Where the chain runs its loop in two copies (CH_COPIES: the fp16
 * chain's kernels), it is included twice: as the first copy (CH_STEP_FAST 1), which
 * serves the chunks of fp16 records whose range check passes, its step compiled with the record's
 * bf16 flag a constant 0 and without the rescale, and as the second (CH_STEP_FAST 0), the step
 * with both products and the rescale, which a chain warp enters for one chunk, a flagged one or
 * one whose check failed, and then leaves for the first again. Elsewhere it is the one loop's body
 * (CH_STEP_FAST 0). Why two copies: with both steps in one loop the state has two definitions (the
 * update on bf16 and on fp16 operands; the state rescaled or not) that meet in the loop, and ptxas
 * paid for the merge with register moves on every chunk's common path (~46 after the state's
 * repack: docs/history/prefill.md, "The fp16 chain's loop in two versions"; 49 for a decision at
 * the chunk's top: "The range check a chunk ahead, measured"). CH_ITERATION_END names the
 * copy's label. Not a header: text of chain_run's body, with no include guard, kept at that
 * body's indentation (clang-format would take a fragment's statements for file scope).
 */
// clang-format off
            const int st = (int)((c - cb) % CH_STAGES);
            const unsigned char *R = s_rec + st * PF_REC_BYTES;
            const unsigned char *VT = s_v + (st * warps + warp) * (f16 ? CH_VRAW16 : CH_TILE16);

#if CH_SPLIT
            if (out_role) {
                /* the output warp: chunk c - 1's output (chunk nch - 1's after the loop), then the
                 * iteration's barrier with the chain warps */
                if (c > cb) CH_OUTPUT_WARP(c - 1);
                goto CH_ITERATION_END;
            }
#endif
            CP_ASYNC_WAIT(CH_STAGES - 1);
            if (!f16 && out_mode == PF_OUT_F16 && p.v_stage == NULL) {
                chain_v_f16_to_bf16((uint4 *)(VT + pf_swz16(vtok, vhalf)));
            }
            __syncwarp();
            mbar_wait(smem_addr(&s_full[st]), (uint32_t)(((c - cb) / CH_STAGES) & 1));
#if CH_STEP_FAST
            /* A flagged record's chunk (bf16, outside fp16's domain) leaves this copy for the second
             * (prefill_chain_run.cuh), which repeats the lines above at once: a wait on a completed
             * phase and the cp.async group wait return at once. Uniform: the CTA shares the record. */
            if (f16 && PF_REC16_BF16_FLAG(R)) break;
#endif

            /* The critical chain first: S^T (-W)^T in four 4-deep chains (token tile x key half). */
            float vn[2][2][4]; /* [key half][token tile] */
            if (!f16) {
                CH_NEG_W_S(mma_bf16_16816);
                CH_STEP_REST(mma_bf16_16816, pack_bf16x2, VT);
            } else {
                /* The fp16 chain: -W S, the previous chunk's output and U first, the range check
                 * after them, before the decay (why that is exact: the top of prefill_chain.cu). */
                CH_NEG_W_S(mma_f16_16816);
                const int bf16_chunk = CH_STEP_FAST ? 0 : PF_REC16_BF16_FLAG(R);
                unsigned char *VOP = s_vop + warp * CH_TILE16;
                const unsigned char *VRAW = VT + ch_vraw_at(v4, vtok, vhalf); /* the lane's v as read */
                /* fp16 v at e = 0 is its own operand, already in the operand tile's layout (warp-uniform) */
                const int v_direct = !v4 && e_held == 0;
                uint4 vh = make_uint4(0u, 0u, 0u, 0u);
                if (with_v) {
                    vh = ch_v_f16(VRAW, v4, e_held);
                    if (!v_direct) *(uint4 *)(VOP + pf_swz16(vtok, vhalf)) = vh;
                }
                __syncwarp();
                CH_CHAIN_STORE_OUTPUT(c - 1)
                float u[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
                CH_STEP_U(mma_f16_16816, v_direct ? VT : VOP)
                /* The range check on the operands: the largest |fp16 value| of the copy sa and of v.
                 * Rounding to fp16 is monotone and 64 and 2^-6 are fp16 values, so "some operand
                 * above CH16_HI" implies "some held fp32 value above it", and "every operand below
                 * CH16_LO" implies "every held value below it": the fp32 test of the rescale below
                 * then holds too. The converse fails in two bands only (round to nearest even): a
                 * held value in (64, 64 + 2^-5] has a copy of 64 (fp16's spacing above 64 is 2^-4),
                 * so e is not raised; the bound on Vnew (the top of prefill_chain.cu) is one on the operands.
                 * A warp whose largest held value is in [2^-6 - 2^-18, 2^-6) has a copy of 2^-6
                 * (the spacing below 2^-6 is 2^-17), so e is not lowered; those values are normal
                 * fp16 values, as at 2^-6 itself. A flagged chunk takes the same slow path. */
                const float m16 = ch16_operand_max(sa, vh);
#if CH_STEP_FAST
                /* A failed check leaves this copy too: the chunk starts again in the second, whose
                 * own check fails the same way and takes the rare path below; the first copy then
                 * carries no rescale, so its state has one definition (the products issued here are
                 * thrown away; the second copy's top orders its v operand's writes after their
                 * reads). Warp-uniform, not CTA-uniform: warps may be in different copies. */
                if (__any_sync(0xffffffffu, m16 > CH16_HI) || __all_sync(0xffffffffu, m16 < CH16_LO)) break;
#else
                if (__any_sync(0xffffffffu, m16 > CH16_HI || bf16_chunk) || __all_sync(0xffffffffu, m16 < CH16_LO)) {
                    /* Rare: rescale (decided on the held fp32 values), then redo -W S, the v operand
                     * and U in the chunk's format where either changed. Without a rescale (d == 0, or
                     * M = 0 or not finite, e.g. a warp whose state and v are all zero) and on an fp16
                     * record, S and e_held are as before the check, so the repack would give the bits
                     * of sa, the v operand those of vh (the same fp32 products and rounding; fp16 v
                     * at e = 0 round-trips exactly through fp32, a NaN staying a NaN), and the redone
                     * products, which start from zero, the very vn and u already held: redo is 0 and
                     * they are kept. redo is warp-uniform (the votes, the shuffled M and e_held are),
                     * so the __syncwarps under it are reached by every lane or by none. */
                    float mv = 0.0f;
                    if (with_v) {
                        float vf[8];
                        ch_read_v8(VRAW, v4, vf);
#pragma unroll
                        for (int e = 0; e < 8; e++) mv = fmaxf(mv, fabsf(vf[e]));
                    }
                    const float m_lane = fmaxf(ch16_state_max(S), mv * ch_pow2(-e_held));
                    const int big = __any_sync(0xffffffffu, m_lane > CH16_HI);
                    const int small = __all_sync(0xffffffffu, m_lane < CH16_LO);
                    int rescaled = 0;
                    if (big || small) {
                        float M = m_lane;
#pragma unroll
                        for (int o_ = 16; o_ > 0; o_ >>= 1) M = fmaxf(M, __shfl_xor_sync(0xffffffffu, M, o_));
                        if (M > 0.0f && M <= 3.4028235e38f) {
                            /* the largest lands in [8, 16): e += ilogb(M) - 3, kept in [-120, 120] */
                            int en = e_held + ((__float_as_int(M) >> 23) - 127) - 3;
                            en = en < -120 ? -120 : (en > 120 ? 120 : en);
                            const int d = e_held - en, d1 = d / 2;
                            if (d != 0) {
                                const float r1 = ch_pow2(d1), r2 = ch_pow2(d - d1);
#pragma unroll
                                for (int j = 0; j < 16; j++)
#pragma unroll
                                    for (int e = 0; e < 4; e++) S[j][e] = S[j][e] * r1 * r2;
                                e_held = en;
                                rescaled = 1;
                            }
                        }
                    }
                    const int redo = bf16_chunk || rescaled;
                    if (redo) {
                        if (bf16_chunk)
                            CH_PACK_STATE_AS(pack_bf16x2);
                        else
                            CH_PACK_STATE_AS(pack_f16x2);
                        __syncwarp(); /* every lane's reads of the v operand tile are done */
                        if (with_v) {
                            float vf[8];
                            ch_read_v8(VRAW, v4, vf);
                            const float sc = ch_pow2(-e_held);
                            uint4 x_;
                            x_.x = bf16_chunk ? pack_bf16x2(vf[0] * sc, vf[1] * sc)
                                              : pack_f16x2(vf[0] * sc, vf[1] * sc);
                            x_.y = bf16_chunk ? pack_bf16x2(vf[2] * sc, vf[3] * sc)
                                              : pack_f16x2(vf[2] * sc, vf[3] * sc);
                            x_.z = bf16_chunk ? pack_bf16x2(vf[4] * sc, vf[5] * sc)
                                              : pack_f16x2(vf[4] * sc, vf[5] * sc);
                            x_.w = bf16_chunk ? pack_bf16x2(vf[6] * sc, vf[7] * sc)
                                              : pack_f16x2(vf[6] * sc, vf[7] * sc);
                            *(uint4 *)(VOP + pf_swz16(vtok, vhalf)) = x_;
                        }
                        __syncwarp();
                        if (bf16_chunk) {
                            CH_NEG_W_S(mma_bf16_16816);
                            CH_STEP_U(mma_bf16_16816, VOP)
                        } else {
                            CH_NEG_W_S(mma_f16_16816);
                            CH_STEP_U(mma_f16_16816, VOP)
                        }
                    }
                }
#endif
                CH_REFILL_V_IN_STEP();
                if (bf16_chunk)
                    CH_STEP_UPDATE(mma_bf16_16816, pack_bf16x2);
                else
                    CH_STEP_UPDATE(mma_f16_16816, pack_f16x2);
#if !CH_SPLIT /* (the split one's output warp does this, CH_OUTPUT_WARP) */
                /* the output in the caller's units */
                const float up = ch_pow2(e_held);
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    o[0][e] *= up;
                    o[1][e] *= up;
                }
#endif
            }

            CH_PACK_STATE();

#if CH_SPLIT
        CH_ITERATION_END:
            /* Every warp is done with chunk c - 1's record (the output warps read it one chunk
             * after the chain warps): refill its stage with chunk c + CH_STAGES - 1, three chunks
             * ahead of the chain. The first output warp issues it, not a chain warp: every chain
             * warp waits at the next barrier for the slowest one, so the copy's issue (its address,
             * the elected lane, the bulk copy) on chain warp 0 would lengthen every step, while the
             * output warps wait at that barrier with time to spare. Where the fp16 chain runs both
             * copies, the output warps reach it in the first while the chain warps may be in the
             * second: the barrier's non-aligned form. */
#if CH_COPIES
            bar_sync_all_unaligned();
#else
            __syncthreads();
#endif
            if (threadIdx.x == warps * 32 && c > cb && c + CH_STAGES - 1 < nch)
                CH_ISSUE_RECORD(c + CH_STAGES - 1, (int)((c - 1 - cb) % CH_STAGES));
#else
            /* Every warp is done with this stage: refill it with chunk c + CH_STAGES. (Where the
             * loop has two copies, warps may be in different ones: the non-aligned barrier.) */
#if CH_COPIES
            bar_sync_all_unaligned();
#else
            __syncthreads();
#endif
            if (threadIdx.x == 0 && c + CH_STAGES < nch) CH_ISSUE_RECORD(c + CH_STAGES, st);
            CH_ISSUE_V(c + CH_STAGES, st);
#endif
// clang-format on

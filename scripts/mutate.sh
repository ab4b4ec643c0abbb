#!/usr/bin/env bash
# mutate.sh: plants deliberate bugs in a copy of the tree, one at a time, and checks the tests catch each.
#
#   scripts/mutate.sh cpu [NAME ...]    the CPU mutants: ctest (CPU build) and pytest tests/python
#   scripts/mutate.sh cuda [NAME ...]   the CUDA mutants (a GPU machine): test_prefill_cuda --quick,
#                                       test_decode_cuda --small, test_decode_layer_cuda --small and
#                                       pytest tests/gpu
#   scripts/mutate.sh list              the mutants, without running anything
#   scripts/mutate.sh apply NAME        plants one mutant in the checkout itself and prints its file
#                                       (for scripts/prebuild_pending.sh, which puts the file back)
#
# A test suite that passes with a bug in the code it covers cannot fail for that bug; each mutant
# below is such a bug, in the spirit of one a change could really introduce. The script works on
# a copy of the checkout under build/mutate/tree (the checkout itself is never edited), with its
# own build directories there (kept between runs, so that each mutant rebuilds one file). It first
# runs the tests on the unmutated copy (they must pass, or every mutant would look killed), then
# for each mutant: replaces an exact snippet (which must occur exactly once in the file, or among
# the files a pattern names: the script stops with an error otherwise), rebuilds, runs the tests
# (stopping at the first failure), and puts the file back. It prints one line per mutant,
# "killed" (some test failed), "SURVIVED" (every test passed: a test is missing) or "INVALID"
# (the mutant did not build: fix the mutant), and exits with the number of survivors and invalid
# mutants. Not run by CI.
#
# Environment: PYTHON (default: build/venv/bin/python, the test environment scripts/run_tests.sh
# makes, where it exists, else python3; it needs numpy and pytest, torch for the CUDA half),
# FKDA_MUTATE_JOBS (build jobs, default: the core count), FKDA_MUTATE_TIMEOUT (seconds per test
# command, default 900: a mutant that hangs a test counts as killed), FKDA_MUTATE_PYTEST_GPU
# (the CUDA half's pytest paths, default tests/gpu), FKDA_MUTATE_BUILD_ONLY=1 (build each mutant
# and run no test: "built" or INVALID, e.g. to check the CUDA mutants on a machine without a GPU).
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
half=${1:-}
[ $# -gt 0 ] && shift
only=("$@")
if [ -z "${PYTHON:-}" ]; then
  PYTHON=python3
  [ -x "$root/build/venv/bin/python" ] && PYTHON=$root/build/venv/bin/python
fi
jobs=${FKDA_MUTATE_JOBS:-$(nproc)}
limit=${FKDA_MUTATE_TIMEOUT:-900}
work=$root/build/mutate
tree=$work/tree
log=$work/log

# ---- the mutants: name, half, file (or a glob), the exact original, its replacement ------------
names=() halves=() files=() origs=() repls=()
mutant() { names+=("$1"); halves+=("$2"); files+=("$3"); origs+=("$4"); repls+=("$5"); }

# The decode item's state block: the fast path splits V into column blocks [v0, v0 + nv); this
# reads every block's state from columns [0, nv).
mutant cpu-decode-state-block-v0 cpu src/cpu/decode.c \
  'fkda_state_load_float(&p->state_in, slot, h, K, v0, nv, nv, S);' \
  'fkda_state_load_float(&p->state_in, slot, h, K, 0, nv, nv, S);'
# bf16 stores truncate instead of rounding to nearest even.
mutant cpu-bf16-store-truncates cpu src/cpu/load.h \
  'u += 0x7fffu + ((u >> 16) & 1u); /* round to nearest, ties to even */' \
  '/* mutant: truncate */'
# The chunked prefill forgets beta in the strictly lower matrix L (factorised form).
mutant cpu-prefill-beta-in-L cpu src/cpu/prefill_chunked.c \
  's->L[i * C + j] = j < i ? s->b[i] * s->L[i * C + j] : 0.0f;' \
  's->L[i * C + j] = j < i ? s->L[i * C + j] : 0.0f;'
# The chunk's running sum of the gate skips key channel 0 (its G is the token's own decay).
mutant cpu-prefill-gate-cumsum cpu src/cpu/prefill_chunked.c \
  'for (int64_t kk = 0; kk < K; kk++) G[kk] = i > 0 ? Gprev[kk] + a[kk] : a[kk];' \
  'for (int64_t kk = 0; kk < K; kk++) G[kk] = i > 0 && kk > 0 ? Gprev[kk] + a[kk] : a[kk];'
# The pairwise form (large decays) leaves out the decay of the step from token j to j + 1.
mutant cpu-prefill-pairwise-decay cpu src/cpu/prefill_chunked.c \
  'if (i > j) add_row(K, s->a + i * K, D);' \
  'if (i > j + 1) add_row(K, s->a + i * K, D);'
# The token inputs' head offset, shared by the fast path and the reference, uses the key stride
# for a head dimension given with stride 0 (a broadcast): only a layout change can see it.
mutant cpu-token-offset-broadcast-head cpu src/cpu/activations.h \
  'return row * x->stride[0] + t * x->stride[1] + head * x->stride[2];' \
  'return row * x->stride[0] + t * x->stride[1] + head * (x->stride[2] ? x->stride[2] : x->stride[3]);'
# The state update's keys kr lose the factor exp(G_C): the carried state is wrong, the
# chunk's own output is not.
mutant cpu-prefill-state-update cpu src/cpu/prefill_chunked.c \
  'kr[kk] = k[kk] * (decay_last[kk] * inv);' \
  'kr[kk] = k[kk] * inv;'
# The last full chunk of a sequence drops its last token.
mutant cpu-prefill-chunk-count cpu src/cpu/prefill_chunked.c \
  'const int64_t count = start + length - t0 < C ? start + length - t0 : C;' \
  'const int64_t count = start + length - t0 < C ? start + length - t0 : C - 1;'
# A tensor's byte range ends one element early: an output overlapping only the last element of
# an input is let through.
mutant cpu-validate-overlap-off-by-one cpu src/api/validate.c \
  '*hi = *lo + (uintptr_t)(last + 1) * fkda_dtype_size(t->dtype);' \
  '*hi = *lo + (uintptr_t)last * fkda_dtype_size(t->dtype);'
# The outputs' overlap check forgets q: an output written over q is let through.
mutant cpu-overlap-forgets-q cpu src/api/token_inputs.c \
  '        {in->q, "q"},' \
  '        {in->k, "k"}, /* q forgotten */'
# A host index equal to the pool size passes the bound check.
mutant cpu-decode-index-bound cpu src/api/decode.c \
  'if (slot >= p->pool_size)' \
  'if (slot > p->pool_size)'
# GVA: value head h reads qk head h % H (interleaved) instead of h / group (blocked), fast path.
mutant cpu-gva-head-map cpu src/cpu/activations.c \
  $'const int64_t K = p->K, hq = h / p->group;\n    if (q) {\n        fkda_load_row_float(' \
  $'const int64_t K = p->K, hq = h % p->H;\n    if (q) {\n        fkda_load_row_float('
# A skipped decode sequence (negative slot) leaves its output rows unwritten.
mutant cpu-decode-skip-no-zeros cpu src/cpu/decode.c \
  'zero_output(p, row, start, length, h, v0, nv);' \
  '/* mutant: no zeros */'
# The single kernel's all-bf16 forms taken with an fp32 norm weight (read as bf16 halves).
mutant cpu-layer-io16-norm-weight cpu src/cuda/decode_layer_select.c \
  'p->norm_weight.dtype == bf16 && ' \
  ''
# The decode layer's conv: the vector form taken with conv-state rows that are not whole 16-byte
# pieces apart (its 16-byte loads would then be misaligned).
mutant cpu-layer-conv-vec-rows cpu src/cuda/decode_layer_select.c \
  'c->state_stride[1] % V == 0 && ' \
  ''
# The decode layer's packed form also where it takes as many waves as the wide tile (where it
# measured slower).
mutant cpu-layer-packed-waves cpu src/cuda/decode_layer_select.c \
  'waves(c->heads, 3 * sms) < waves(c->heads, 2 * sms)' \
  'waves(c->heads, 3 * sms) <= waves(c->heads, 2 * sms)'
# The decodes' evict-first loads only below twice the L2, not up to it: a pool of exactly twice
# the L2 would load ordinarily (the rule of the plain decode and of the layer's packed tile).
mutant cpu-decode-ef-bound cpu src/cuda/decode_select.h \
  'state_bytes <= 2 * l2_bytes' \
  'state_bytes < 2 * l2_bytes'
# The decode's selection: speculative calls in vLLM's form (cu_seqlens, 2-D indices) taken for
# the one-token CU kernels' form (which would store the state only to each sequence's first slot).
mutant cpu-decode-select-spec-form cpu src/cuda/decode_select.c \
  'return c->cu_seqlens ? (c->idx_2d ? 2 : 1) : 0;' \
  'return c->cu_seqlens ? 1 : 0;'
# The decode's selection: the _early kernel (one CTA an SM's registers) up to as many heads as
# SMs, where its 4-warp CTAs would fit three an SM instead of four.
mutant cpu-decode-select-early-heads cpu src/cuda/decode_select.c \
  '!c->v_first && 4 * heads <= 2 * sms;' \
  '!c->v_first && 2 * heads <= 2 * sms;'
# The decode's selection: fp32 [V, K] pools on the narrow tile for every one-token call, also
# with fp32 tokens or 2-D indices, which nothing measured.
mutant cpu-decode-select-f32-vk-narrow cpu src/cuda/decode_select.c \
  'const int f32_narrow = one_token_tok && c->v_first ?' \
  'const int f32_narrow = c->v_first ?'
# The prefill's selection: the split output where its warps number up to 8 an SM (two a
# scheduler), where it measured slower than the unsplit chain.
mutant cpu-prefill-select-split-warps cpu src/cuda/prefill_select.c \
  'return ctas * 2 * (vslice / 16) <= (int64_t)c->sm_count * 4;' \
  'return ctas * 2 * (vslice / 16) <= (int64_t)c->sm_count * 8;'
# The prefill's selection: segments for varlen batches, whose lengths stay on the device.
mutant cpu-prefill-select-varlen-segments cpu src/cuda/prefill_select.c \
  'if (c->cu_seqlens || c->T <= 0' \
  'if (c->T <= 0'
# The prefill's selection: exact products counted over value heads, so GVA calls of few q.k
# rows lose them.
mutant cpu-prefill-select-exact-rows cpu src/cuda/prefill_select.c \
  'return !fp16_chain && tokens * c->H < FKDA_PF_EXACT_QK_ROWS;' \
  'return !fp16_chain && tokens * c->HV < FKDA_PF_EXACT_QK_ROWS;'

# CUDA prefill: prep (gate, beta, the gate's range check), chain (state update, final slot,
# checkpoints), merge.
mutant cuda-prefill-prep-gate cuda src/cuda/prefill_prep.cu \
  'gb[e] = ga * db[e];' \
  'gb[e] = db[e];'
# The prep ignores exact_qk: a small call's chunks take step 4's products on tf32 operands
# (test_small_call_with_nearly_orthogonal_q_and_k: a few per cent of the output, over its bar).
mutant cuda-prefill-prep-exact-qk cuda src/cuda/prefill_prep.cu \
  'gate_checked ? __syncthreads_or((!f16 && p.exact_qk) || !(span <= span_max))' \
  'gate_checked ? __syncthreads_or(!(span <= span_max))'
# The prep's halves: the centring G_i - G_7 applied to the second half's sums (already centred)
# instead of the first half's.
mutant cuda-prefill-prep-pair-centre cuda src/cuda/prefill_prep.cu \
  'D[e] -= hf ? 0.0f : run[e & 1];' \
  'D[e] -= hf ? run[e & 1] : 0.0f;'
# Step 4's tf32 products (the bf16 family): the B operand ki^T from token tile 0 in every warp, so
# L and Mqk's columns 8-15 repeat columns 0-7.
mutant cuda-prefill-prep-tf32-tile cuda src/cuda/prefill_prep.cu \
  'brow = 8 * nt + x;' \
  'brow = x;'
# Step 6 on tf32 tensor cores (the bf16 family's unchecked kernels): both of a lane's B values
# from the even token of its pair, so W sums token 2t twice and skips 2t + 1.
mutant cuda-prefill-prep-negw-tf32 cuda src/cuda/prefill_prep_steps.cuh \
  'boff[n][e] = (2 * t + e) * 512' \
  'boff[n][e] = (2 * t) * 512'
# Step 4' nested (the checked chunks whose G never rises): a level's outputs kept one block too
# far (levels 4, 2 and 1; at level 8 every output is kept anyway), so products across blocks land
# above the diagonal of Mqk (entries the chain reads as 0) and over coarser levels' entries below
# it, with the wrong split.
mutant cuda-prefill-prep-nested-mask cuda src/cuda/prefill_prep_steps.cuh \
  'if ((g ^ gc) < s) {' \
  'if ((g ^ gc) <= s) {'
# The same step's tensor-core levels: every lane column reads unit 4ks, so a quarter of the keys
# is summed four times and the rest never.
mutant cuda-prefill-prep-level-keys cuda src/cuda/prefill_prep_steps.cuh \
  'prep_level_operands(fq, fk, fg, x, y, z, 4 * ks + t, kc, qc, ki);' \
  'prep_level_operands(fq, fk, fg, x, y, z, 4 * ks, kc, qc, ki);'
# The fp16 family's levels (hi + lo terms): the same slip.
mutant cuda-prefill-prep-level16-keys cuda src/cuda/prefill_prep_steps.cuh \
  'prep_level_operands(fq, fk, fg, x, y, z, t + 4 * ks, kc, qc, ki);' \
  'prep_level_operands(fq, fk, fg, x, y, z, 4 * ks, kc, qc, ki);'
# Its diagonal: each row's Mqk_ii summed over one half of the keys only.
mutant cuda-prefill-prep-nested-self cuda src/cuda/prefill_prep_steps.cuh \
  'm += __shfl_xor_sync(0xffffffffu, m, 1);' \
  'm += 0.0f;'
# The checked preps' gate loops (one per gate): the gate-none loop computing the softplus gate.
mutant cuda-prefill-prep-gate-loop-kind cuda src/cuda/prefill_prep.cu \
  'D[e] = prep_gate(&p, FKDA_GATE_NONE, D[e], A, db[e & 1]);' \
  'D[e] = prep_gate(&p, FKDA_GATE_SOFTPLUS, D[e], A, db[e & 1]);'
# The checked kernels' step 6 from Kd's tile: both halves store their Kd into rows 0-7, so rows
# 8-15 of the tile keep step 4's operands.
mutant cuda-prefill-prep-kd-tile cuda src/cuda/prefill_prep_steps.cuh \
  'const int r = 8 * hf + i;' \
  'const int r = i;'
# The bf16 family's checked step 6 after step 4 (prep_negw_half): the second half reads row 0's Kd
# from s_kd for each of rows 0-7, so W's rows 8-15 miss rows 1-7's Kd.
mutant cuda-prefill-prep-negw-half cuda src/cuda/prefill_prep_steps.cuh \
  'const float2 x = *(const float2 *)(s_kd + j * 128 + c0);' \
  'const float2 x = *(const float2 *)(s_kd + c0);'
# The tile loads copy 128 keys whatever K: at K < 128 the keys past K come from the next head
# (or token), not zeros.
mutant cuda-prefill-prep-kpad cuda src/cuda/prefill_prep.cu \
  'const int kunits = (int)(p.K * esize >> 4);' \
  'const int kunits = 8 * esize;'
# The fp32 input tiles: the second half of each widened 16-bit piece lands at its unpermuted place
# (fp16 inputs, and bf16 q, k beside an fp32 g, read keys from the wrong columns).
mutant cuda-prefill-prep-f32-layout cuda src/cuda/prefill_prep.cu \
  '*(float4 *)(row_ + prep_f32_col(8 * unit + 4))' \
  '*(float4 *)(row_ + (8 * unit + 4))'
# The fp16 tiles: an fp16 g widened as if it were bf16 (fp16 q, k and g read the wrong gate).
mutant cuda-prefill-prep-f16-g cuda src/cuda/prefill_prep.cu \
  'g16 = qk16 && p.g_dtype == FKDA_DTYPE_F16;' \
  'g16 = 0;'
# The range check lets every chunk take the centred factors: a fast gate overflows them.
mutant cuda-prefill-prep-span cuda src/cuda/prefill_prep_steps.cuh \
  '#define PREP_SAFE_SPAN_NORM 112.0f' \
  '#define PREP_SAFE_SPAN_NORM 1e30f'
# The final state goes to the sequence's initial slot instead of its final slot.
mutant cuda-prefill-final-slot cuda src/cuda/prefill_chain_io.cuh \
  'p->final_idx.data ? chain_int(&p->final_idx, n * p->final_idx.stride[0]) : n;' \
  'p->initial_idx.data ? chain_int(&p->initial_idx, n * p->initial_idx.stride[0]) : n;'
# The bf16 chain's state stores (checkpoints, fla's h, the final state) keep keys past K: with
# K < 128 they write past each state row (the next row's first keys, or past the buffer).
mutant cuda-prefill-state-store-keys cuda src/cuda/prefill_chain_io.cuh \
  'for (int j = 0; j < 16; j++) ok[e] |= (8 * j + key < K && val < V) << j;' \
  'for (int j = 0; j < 16; j++) ok[e] |= (val < V) << j;'
# The stepped state stores step along the value stride instead of the key stride.
mutant cuda-prefill-state-store-step cuda src/cuda/prefill_chain_io.cuh \
  'const int64_t base = r * dst.stride[0] + h * dst.stride[1], step = 8 * dst.stride[2];' \
  'const int64_t base = r * dst.stride[0] + h * dst.stride[1], step = 8 * dst.stride[3];'
# An offset inside a chunk writes nothing instead of NaN.
mutant cuda-prefill-checkpoint-nan cuda src/cuda/prefill_chain_run.cuh \
  'if (off == len || (off > 0 && off < len && off % PF_CHUNK != 0))' \
  'if (off == len)'
# K > 128, bf16 tiles: keys past K are read from the row (the next head's keys) instead of zeros.
mutant cuda-prefill-k256-prep-keys cuda src/cuda/prefill_prep_k256.cu \
  'const int ok = r < rows && unit * 8 < p.K;' \
  'const int ok = r < rows;'
# K > 128: every lower bound takes the unchecked kernels (no step 4'): a fast gate overflows.
mutant cuda-prefill-k256-prep-checked cuda src/cuda/prefill_prep_k256.cu \
  'p->gate_scale >= -5.0f * 1.4426950408889634f);' \
  'p->gate_scale >= -500.0f * 1.4426950408889634f);'
mutant cuda-prefill-prep-beta cuda src/cuda/prefill_prep.cu \
  'pf_sigmoid(x) * (p.neg_eigval ? 2.0f : 1.0f)' \
  'pf_sigmoid(x)'
# The state's decay diag(gamma) applies key 2t's factor to key 2t + 1 in the lower rows.
mutant cuda-prefill-chain-state-decay cuda src/cuda/prefill_chain_run.cuh \
  'S[j][3] *= gm.y;' \
  'S[j][3] *= gm.x;'
# The fp16 chain's slow path rescales the state but keeps -W S and U from before the rescale.
mutant cuda-prefill-chain16-redo cuda src/cuda/prefill_chain_step.cuh \
  'const int redo = bf16_chunk || rescaled;' \
  'const int redo = bf16_chunk;'
# The fp16 chain's range check lets a flagged chunk (a bf16 record) through to the fp16 step.
mutant cuda-prefill-chain16-flag cuda src/cuda/prefill_chain_step.cuh \
  'm16 > CH16_HI || bf16_chunk' \
  'm16 > CH16_HI'
# The fp16 chain's first loop copy keeps a flagged chunk (a bf16 record) and runs its fp16 step on it.
mutant cuda-prefill-chain16-fast-copy cuda src/cuda/prefill_chain_step.cuh \
  'if (f16 && PF_REC16_BF16_FLAG(R)) break;' \
  'if (f16 && 0) break;'
# The fp16 chain's first loop copy ignores a failed range check (stays, unscaled): v 1e4 times
# larger from token 96 overflows the state's fp16 copy.
mutant cuda-prefill-chain16-fast-check cuda src/cuda/prefill_chain_step.cuh \
  '__all_sync(0xffffffffu, m16 < CH16_LO)) break;' \
  '__all_sync(0xffffffffu, m16 < CH16_LO)) {}'
# K > 128: each warp of a pair forms Vnew from its own key half's partial twice, not both halves'.
mutant cuda-prefill-k256-pair-sum cuda src/cuda/prefill_chain_k256.cu \
  '(sp_[e * 32 + lane] + sp_[256 + e * 32 + lane])' \
  '(sp_[e * 32 + lane] + sp_[e * 32 + lane])'
# K > 128: a warp adds its partner's output partial from the buffer of the other chunk parity
# (the partial of the chunk before, or nothing yet).
mutant cuda-prefill-k256-output-parity cuda src/cuda/prefill_chain_k256.cu \
  'xo_partner + (int)((chunk)&1) * warps * 128' \
  'xo_partner + (int)(((chunk) + 1) & 1) * warps * 128'
mutant cuda-prefill-merge cuda src/cuda/prefill_merge.cu \
  'acc[5] += sj * m1.y;' \
  'acc[5] += sj * m1.x;'
# CUDA decode: these name today's snippets; the pattern finds them in whichever decode file holds
# them (the decode sources may be split into several files).
mutant cuda-decode-slot-bound cuda 'src/cuda/decode*.cu src/cuda/decode*.cuh' \
  $'if (slot < 0 || slot >= p->pool_size) {\n        zero_outputs(p, w, row, bos, len, h, V_FIRST, VEC, NC, TOK);' \
  $'if (slot < 0 || slot > p->pool_size) {\n        zero_outputs(p, w, row, bos, len, h, V_FIRST, VEC, NC, TOK);'
mutant cuda-decode-gate cuda 'src/cuda/decode*.cu src/cuda/decode*.cuh' \
  'p->lower_bound * sigmoidf_(weight * a)' \
  'p->lower_bound * sigmoidf_(a)'
mutant cuda-decode-state-store-rounding cuda 'src/cuda/decode*.cu src/cuda/decode*.cuh' \
  'asm("cvt.rn.bf16x2.f32 %0, %1, %2;"' \
  'asm("cvt.rz.bf16x2.f32 %0, %1, %2;"'
mutant cuda-decode-token-offset cuda 'src/cuda/decode*.cu src/cuda/decode*.cuh' \
  'return row * stride[0] + pos * stride[1] + head * stride[2];' \
  'return row * stride[0] + pos * stride[1] + head * stride[1];'
# The split dtype load (the tile kernels' token loads, the single-kernel layer's) drops its 32-bit
# form: every fp32 token tensor, A_log and dt_bias reads as 0.
mutant cuda-decode-split-load cuda src/cuda/ptx_load.cuh \
  'return bits32 | bits16;' \
  'return bits16;'
# The tile kernels' run-time-dtype path keeps v's split loads apart until the use; this drops the
# 16-bit part (every bf16 or fp16 v there reads as 0).
mutant cuda-decode-v-half cuda src/cuda/decode_common.cuh \
  'bits_to_float(vbits[c] | vhalf[c],' \
  'bits_to_float(vbits[c],'
# The tile kernels' split loads of dt_bias and A_log or'ed without their 16-bit forms' registers
# (the halves kept apart until every load is issued): a bf16 dt_bias, or a bf16 A_log, reads as 0.
mutant cuda-decode-bias16 cuda src/cuda/decode_stage.cuh \
  'bb[i] = tb.bias[i] | tb.bias16[i];' \
  'bb[i] = tb.bias[i];'
mutant cuda-decode-a16 cuda src/cuda/decode_stage.cuh \
  'const uint32_t A_bits = tb.A | tb.A16;' \
  'const uint32_t A_bits = tb.A;'
# 2-D indices: each token's slot, loaded with its inputs, read from token 0's column instead.
mutant cuda-decode-token-slot cuda src/cuda/decode_common.cuh \
  'n * p->idx_stride[0] + t * p->idx_stride[1],' \
  'n * p->idx_stride[0],'
# The _spec kernels' batched staging (decode_spec.cuh): every token of a batch stores its state to
# the batch's first token's slot; a token's key sums without their last 32-key chunk; and the next
# batch taken 4 tokens on where a CTA of fewer than 4 warps staged fewer (tokens skipped).
mutant cuda-decode-spec-batch-slot cuda src/cuda/decode_spec.cuh \
  'n * p->idx_stride[0] + (t0 + tid) * p->idx_stride[1],' \
  'n * p->idx_stride[0] + t0 * p->idx_stride[1],'
mutant cuda-decode-spec-chunk-sums cuda src/cuda/decode_spec.cuh \
  'const float ssq = ((0.0f + sq.x) + sq.y + sq.z) + sq.w,' \
  'const float ssq = ((0.0f + sq.x) + sq.y + sq.z),'
mutant cuda-decode-spec-batch-step cuda src/cuda/decode_spec.cuh \
  't0 += G; /* G < SPEC_BATCH in CTAs of fewer than 4 warps */' \
  't0 += SPEC_BATCH;'
# The _spec kernels read each sequence's state from its first slot, whatever its accepted count.
mutant cuda-decode-spec-accepted cuda src/cuda/decode_common.cuh \
  'return accepted_column(p, index_value(sw.acc, p->acc_dtype));' \
  'return 0;'
# Accepted counts trusted as they come from the device: 0, -5 or 10^6 index outside the sequence's
# row of slots (accepted_column: the generic kernels' read_slot and the _spec kernels' own load).
mutant cuda-decode-accepted-clamp cuda src/cuda/decode_common.cuh \
  'return min(max(acc, (int64_t)1), p->idx_tokens) - 1;' \
  'return acc - 1;'
# The CU twins (vLLM's packed form): a skipped one-token sequence leaves its output unwritten
# instead of zero.
mutant cuda-decode-cu-skip-zeroes cuda src/cuda/decode_tiles.cu \
  $'    } else if (len == 1) {\n        zero_outputs(p, &w, 0, bos, 1, h, V_FIRST, VEC, NC, TOK);\n    } else if (len > 1) {' \
  $'    } else if (len > 1) {'
# The CUDA decode layer: the conv without its SiLU (three-pass and single-kernel); the clamp of a sliding window one row short of
# the conv state's L rows; the output gate's sigmoid of -g.
mutant cuda-layer-silu cuda src/cuda/decode_layer.cu \
  'out[k] = acc / (1.0f + expf(-acc));' \
  'out[k] = acc;'
# The conv's 8-channel form: the two bf16 halves of each 32-bit word read in swapped order.
mutant cuda-layer-conv-vec-halves cuda src/cuda/decode_layer.cu \
  'f = make_float2(__uint_as_float(w[k] << 16), __uint_as_float(w[k] & 0xffff0000u));' \
  'f = make_float2(__uint_as_float(w[k] & 0xffff0000u), __uint_as_float(w[k] << 16));'
mutant cuda-layer-window-clamp cuda src/cuda/decode_layer.cu \
  'min(accepted_tokens(&p->slots, n), p->conv_rows - W + 2) - 1' \
  'min(accepted_tokens(&p->slots, n), p->conv_rows - W + 1) - 1'
mutant cuda-layer-fused-silu cuda src/cuda/decode_layer_fused.cu \
  'return acc / (1.0f + expf(-acc));' \
  'return acc;'
# The single kernel (both tiles): each column's norm factor read from the neighbour's slot.
mutant cuda-layer-wide-factors cuda src/cuda/decode_layer_fused.cu \
  'store_out(p, n, h, j, o[c], r, sm.out_scale[j]);' \
  'store_out(p, n, h, j, o[c], r, sm.out_scale[j ^ 1]);'
# The single kernel's q and k exchange waiting for every CTA's share, its own included (which it
# stores itself): the wait never completes, and the kernel traps.
mutant cuda-layer-exchange-bytes cuda src/cuda/decode_layer_fused.cu \
  'exchange_init(&sm.token_bar, (256 - (256 >> cs)) * sizeof(float));' \
  'exchange_init(&sm.token_bar, 256 * sizeof(float));'
# The single kernel's packed tile updating the state with the query instead of the key.
mutant cuda-layer-packed-update cuda src/cuda/decode_layer_fused.cu \
  'pk_rank1_update(sp, ld, lk, vk, V_FIRST);' \
  'pk_rank1_update(sp, ld, lq, vk, V_FIRST);'
# The layer's launch dropping the packed tile's evict-first loads: the same results from another
# kernel, which only the layer test's kernel check (fkda_last_kernels) tells apart.
mutant cuda-layer-load-ef-dropped cuda src/cuda/decode_layer.cu \
  'choice.wide, choice.packed, choice.load_ef' \
  'choice.wide, choice.packed, 0 * choice.load_ef'
mutant cuda-layer-output-gate cuda src/cuda/decode_layer.cu \
  'v[i] * r * w / (1.0f + expf(-g))' \
  'v[i] * r * w / (1.0f + expf(g))'

if [ "$half" != cpu ] && [ "$half" != cuda ] && [ "$half" != list ] && [ "$half" != apply ]; then
  echo "usage: scripts/mutate.sh cpu|cuda|list [NAME ...] | apply NAME" >&2
  exit 64
fi

# ---- the copy of the tree ----------------------------------------------------------------------
# Files are copied only when their bytes differ, with a fresh modification time, so that the
# build directories rebuild exactly what changed (a file restored with an old time would leave a
# mutant's object file in place).
sync_tree() {
  "$PYTHON" - "$root" "$tree" <<'EOF'
import os, shutil, sys
src, dst = sys.argv[1], sys.argv[2]
skip = {".git", "build", ".whl", "__pycache__", ".pytest_cache", ".ruff_cache"}
seen = set()
for top, dirs, fs in os.walk(src):
    dirs[:] = [d for d in dirs if d not in skip and not d.endswith(".egg-info")]
    for f in fs:
        rel = os.path.relpath(os.path.join(top, f), src)
        seen.add(rel)
        a, b = os.path.join(src, rel), os.path.join(dst, rel)
        if os.path.islink(a):
            continue
        with open(a, "rb") as fa:
            data = fa.read()
        if os.path.exists(b):
            with open(b, "rb") as fb:
                if fb.read() == data:
                    continue
        os.makedirs(os.path.dirname(b), exist_ok=True)
        with open(b, "wb") as fb:
            fb.write(data)
        shutil.copymode(a, b)
for top, dirs, fs in os.walk(dst):
    for f in fs:
        rel = os.path.relpath(os.path.join(top, f), dst)
        if rel not in seen and not rel.split(os.sep)[0] in skip:
            os.remove(os.path.join(dst, rel))
EOF
}

# Replaces the snippet in the one file (of the pattern) that holds it exactly once; prints that
# file. Fails (status 2, with the reason) when no file or several hold it, or one holds it twice.
apply_mutant() { # pattern, original, replacement
  "$PYTHON" - "$tree" "$1" "$2" "$3" <<'EOF'
import glob, os, sys
tree, pattern, orig, repl = sys.argv[1:5]
paths = sorted({p for pat in pattern.split() for p in glob.glob(os.path.join(tree, pat))})
hits = []
for path in paths:
    with open(path, encoding="utf-8") as f:
        n = f.read().count(orig)
    if n:
        hits.append((path, n))
if len(hits) != 1 or hits[0][1] != 1:
    where = ", ".join(f"{os.path.relpath(p, tree)} x{n}" for p, n in hits) or f"none of {pattern}"
    sys.exit(f"the snippet must occur exactly once; found: {where}\n--- snippet:\n{orig}")
path = hits[0][0]
if repl != orig:  # the same text twice only locates the file
    with open(path, encoding="utf-8") as f:
        text = f.read()
    with open(path, "w", encoding="utf-8") as f:
        f.write(text.replace(orig, repl, 1))
print(os.path.relpath(path, tree))
EOF
}

# The file being mutated and its original bytes: put back on any exit (Ctrl-C included), so the
# copy never keeps a mutant either.
current=""
restore() {
  if [ -n "$current" ]; then
    cp "$work/original" "$tree/$current" # a fresh time: the next build recompiles it
    current=""
  fi
}
trap restore EXIT
trap 'exit 130' INT TERM

if [ "$half" = list ]; then # also checks that every snippet occurs once in the checkout
  tree=$root status=0
  for i in "${!names[@]}"; do
    where=$(apply_mutant "${files[$i]}" "${origs[$i]}" "${origs[$i]}") || { where="SNIPPET NOT FOUND ONCE"; status=1; }
    printf '%-36s %-4s %s\n' "${names[$i]}" "${halves[$i]}" "$where"
  done
  exit $status
fi

if [ "$half" = apply ]; then # the one place the checkout itself is edited: its caller restores it
  [ ${#only[@]} -eq 1 ] || { echo "usage: scripts/mutate.sh apply NAME" >&2; exit 64; }
  tree=$root
  for i in "${!names[@]}"; do
    [ "${names[$i]}" = "${only[0]}" ] || continue
    apply_mutant "${files[$i]}" "${origs[$i]}" "${repls[$i]}"
    exit $?
  done
  echo "mutate.sh: no mutant named ${only[0]} (scripts/mutate.sh list)" >&2
  exit 64
fi

mkdir -p "$tree" "$log"
sync_tree || { echo "mutate.sh: copying the tree failed" >&2; exit 100; }

# ---- build and test, per half --------------------------------------------------------------------
# Each test command is announced in the log, so that a kill names the test that made it.
step() { echo "== $*"; timeout "$limit" "$@"; }
if [ "$half" = cpu ]; then
  bdir=$work/build-cpu
  configure() { cmake -S "$tree" -B "$bdir" -DFKDA_WITH_CUDA=OFF -DCMAKE_BUILD_TYPE=Release; }
  build() { cmake --build "$bdir" -j "$jobs"; }
  run_tests() {
    step ctest --test-dir "$bdir" --output-on-failure --stop-on-failure &&
      FLASHKDA_LIBRARY=$bdir/libflashkda.so PYTHONPATH=$tree/python \
        step "$PYTHON" -m pytest -q -x -p no:cacheprovider "$tree/tests/python"
  }
else
  bdir=$work/build-gpu
  gpu_pytest=()
  for path in ${FKDA_MUTATE_PYTEST_GPU:-tests/gpu}; do gpu_pytest+=("$tree/$path"); done
  gen=()
  command -v ninja >/dev/null && gen=(-G Ninja)
  configure() { cmake -S "$tree" -B "$bdir" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release; }
  build() { cmake --build "$bdir" -j "$jobs" --target flashkda test_prefill_cuda test_decode_cuda test_decode_layer_cuda; }
  run_tests() {
    step "$bdir/test_prefill_cuda" --quick &&
      step "$bdir/test_decode_cuda" --small &&
      step "$bdir/test_decode_layer_cuda" --small &&
      FLASHKDA_LIBRARY=$bdir/libflashkda.so PYTHONPATH=$tree/python${PYTHONPATH:+:$PYTHONPATH} \
        step "$PYTHON" -m pytest -q -x -p no:cacheprovider "${gpu_pytest[@]}"
  }
fi

echo "mutate.sh $half: building and testing the unmutated copy (logs in $log)"
if ! { configure && build; } >"$log/baseline-build.log" 2>&1; then
  tail -n 40 "$log/baseline-build.log"
  echo "mutate.sh: the unmutated tree does not build" >&2
  exit 100
fi
build_only=${FKDA_MUTATE_BUILD_ONLY:-0}
if [ "$build_only" != 1 ] && ! run_tests >"$log/baseline-test.log" 2>&1; then
  tail -n 40 "$log/baseline-test.log"
  echo "mutate.sh: the tests fail on the unmutated tree; fix that first" >&2
  exit 100
fi

# The test that failed, from a test log: the ctest test, else pytest's first failure, else the
# last command announced.
killer() {
  local who
  who=$(sed -nE 's/.*Test +#[0-9]+: ([^ ]+) .*\*\*\*.*/ctest \1/p' "$1" | head -n 1)
  [ -n "$who" ] || who=$(grep -m 1 -E '^(FAILED|ERROR) ' "$1" | sed "s|$tree/||g" | cut -c1-90)
  [ -n "$who" ] || who=$(grep '^== ' "$1" | tail -n 1 | sed "s/^== //; s|$work/||g" | cut -c1-60)
  echo "$who"
}

bad=0
for i in "${!names[@]}"; do
  [ "${halves[$i]}" = "$half" ] || continue
  name=${names[$i]}
  if [ ${#only[@]} -gt 0 ] && [[ " ${only[*]} " != *" $name "* ]]; then continue; fi
  # Find the file first (read-only), keep its bytes, then mutate it.
  target=$(apply_mutant "${files[$i]}" "${origs[$i]}" "${origs[$i]}") || {
    echo "mutate.sh: mutant $name: see above" >&2
    exit 100
  }
  cp "$tree/$target" "$work/original"
  current=$target
  apply_mutant "${files[$i]}" "${origs[$i]}" "${repls[$i]}" >/dev/null || exit 100
  start=$(date +%s)
  if ! build >"$log/$name-build.log" 2>&1; then
    verdict=INVALID
    bad=$((bad + 1))
  elif [ "$build_only" = 1 ]; then
    verdict=built
  elif run_tests >"$log/$name-test.log" 2>&1; then
    verdict=SURVIVED
    bad=$((bad + 1))
  else
    verdict=killed
  fi
  restore
  by=""
  [ $verdict = killed ] && by="by $(killer "$log/$name-test.log")"
  printf '%-36s %-8s %-30s %4ds  %s\n' "$name" "$verdict" "$target" $(($(date +%s) - start)) "$by"
done
# Leave the build matching the tree again.
build >"$log/final-build.log" 2>&1
echo "mutate.sh $half: $bad survivor(s) or invalid mutant(s)"
exit $bad

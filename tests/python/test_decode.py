"""flash_kda.decode on the CPU: in-place pools, indices, accepted tokens, against NumPy float64."""

import numpy as np
import pytest

import flash_kda
from helpers import bar, bar_for, bfloat16_dtype, gate_params, make_inputs, poison
from kda_numpy import decode_pool, kda, rel_err

BF16 = bfloat16_dtype()

SAFE = dict(gate="lower_bound", lower_bound=-5.0, use_qk_l2norm=True, use_beta_sigmoid=True)
SAFE_NP = dict(gate="lower_bound", lower_bound=-5.0, l2norm_qk=True, beta_sigmoid=True)


def both(inputs, pool, *, opts=SAFE, np_opts=SAFE_NP, A_log=None, dt_bias=None, num_threads=0,
         **kw):
    """Decode with fast and reference paths on copies of pool; NumPy on a float64 copy."""
    answers = []
    for reference in (False, True):
        p = pool.copy()
        out = poison(inputs["v"].shape, inputs["v"].dtype)
        ret = flash_kda.decode(**inputs, state_pool=p, out=out, A_log=A_log, dt_bias=dt_bias,
                               reference=reference, num_threads=num_threads, **opts, **kw)
        assert ret is out
        assert np.isfinite(out.astype(np.float32)).all(), "an output element was not written"
        answers.append((out, p))
    answers.append(decode_pool(**inputs, pool=pool, A_log=A_log, dt_bias=dt_bias, **np_opts,
                               **kw))
    return answers


def check(answers, inputs):
    """Fast and reference against NumPy, within the bars of their dtypes (helpers.bar)."""
    o_np, p_np = answers[2]
    for (o, p), reference in zip(answers[:2], (False, True)):
        assert rel_err(o, o_np) < bar_for(inputs, o, reference=reference)
        assert rel_err(p, p_np) < bar_for(inputs, p, reference=reference)


@pytest.mark.parametrize("state_v_first", [False, True])
def test_one_token_per_sequence_without_indices(rng, state_v_first):
    N, H, K, V = 3, 2, 16, 32
    inputs = make_inputs(rng, B=N, T=1, H=H, K=K, V=V)
    A_log, dt_bias = gate_params(rng, H, K)
    shape = (N + 2, H, V, K) if state_v_first else (N + 2, H, K, V)  # P > N: extra slots untouched
    pool = rng.standard_normal(shape).astype(np.float32)
    ans = both(inputs, pool, A_log=A_log, dt_bias=dt_bias, state_v_first=state_v_first)
    check(ans, inputs)
    for _, p in ans[:2]:
        np.testing.assert_array_equal(p[N:], pool[N:])


@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
def test_1d_indices_with_skips(rng, index_dtype):
    N, H, K, V, P = 4, 2, 16, 16, 7
    inputs = make_inputs(rng, B=N, T=1, H=H, K=K, V=V)
    pool = rng.standard_normal((P, H, K, V)).astype(np.float32)
    idx = np.array([5, -1, 0, 3], dtype=index_dtype)
    ans = both(inputs, pool, state_indices=idx)
    check(ans, inputs)
    for o, p in ans[:2]:
        assert (o[1] == 0).all(), "a skipped sequence's output rows are zero"
        for slot in (1, 2, 4, 6):
            np.testing.assert_array_equal(p[slot], pool[slot])


def test_varlen_several_tokens(rng):
    lengths = [2, 0, 3, 1]
    cu = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    H, HV, K, V, P = 1, 2, 16, 16, 6
    inputs = make_inputs(rng, B=1, T=int(cu[-1]), H=H, HV=HV, K=K, V=V)
    A_log, dt_bias = gate_params(rng, HV, K)
    pool = rng.standard_normal((P, HV, K, V)).astype(np.float32)
    idx = np.array([4, 1, 0, 2], dtype=np.int64)
    ans = both(inputs, pool, state_indices=idx, cu_seqlens=cu, A_log=A_log, dt_bias=dt_bias,
               opts=dict(SAFE, gate="softplus"), np_opts=dict(SAFE_NP, gate="softplus"))
    check(ans, inputs)


def test_2d_indices_and_accepted_tokens(rng):
    # Speculative decoding: 3 draft tokens per sequence; sequence n continues from the state
    # after its last accepted token and writes the state after each token t to idx[n, t].
    N, T, H, K, V, P = 3, 3, 2, 16, 16, 12
    inputs = make_inputs(rng, B=N, T=T, H=H, K=K, V=V)
    pool = rng.standard_normal((P, H, K, V)).astype(np.float32)
    idx = np.array([[0, 1, 2], [3, -1, 5], [6, 7, 8]], dtype=np.int32)
    acc = np.array([2, 1, 3], dtype=np.int64)
    ans = both(inputs, pool, state_indices=idx, num_accepted_tokens=acc)
    check(ans, inputs)
    for _, p in ans[:2]:
        np.testing.assert_array_equal(p[9:], pool[9:])
        # idx -1: the state after token 1 is not written
        np.testing.assert_array_equal(p[4], pool[4])


def test_2d_negative_read_slot_skips(rng):
    N, T, H, K, V, P = 2, 2, 1, 16, 16, 4
    inputs = make_inputs(rng, B=N, T=T, H=H, K=K, V=V)
    pool = rng.standard_normal((P, H, K, V)).astype(np.float32)
    idx = np.array([[-1, 1], [2, 3]], dtype=np.int64)  # sequence 0 reads idx[0, 0] = -1
    ans = both(inputs, pool, state_indices=idx)
    check(ans, inputs)
    for o, p in ans[:2]:
        assert (o[0] == 0).all()
        np.testing.assert_array_equal(p[1], pool[1])


def test_chain_of_decodes_equals_prefill(rng):
    # 40 single-token decode calls on one pool slot give prefill's output and final state.
    T, H, HV, K, V = 40, 2, 4, 16, 32
    inputs = make_inputs(rng, B=1, T=T, H=H, HV=HV, K=K, V=V)
    A_log, dt_bias = gate_params(rng, HV, K)
    h0 = rng.standard_normal((1, HV, K, V)).astype(np.float32)
    final = np.empty_like(h0)
    o_pre = flash_kda.prefill(**inputs, initial_state=h0, final_state=final, A_log=A_log,
                              dt_bias=dt_bias, **SAFE)
    pool = np.zeros((3, HV, K, V), np.float32)
    pool[2] = h0[0]
    slot = np.array([2], np.int32)
    o_dec = np.empty_like(inputs["v"])
    for t in range(T):
        tok = {n: np.ascontiguousarray(x[:, t:t + 1]) for n, x in inputs.items()}
        o_dec[:, t:t + 1] = flash_kda.decode(**tok, state_pool=pool, state_indices=slot,
                                             A_log=A_log, dt_bias=dt_bias, **SAFE)
    # Each of the T calls stores the state into the float32 pool: T roundings more than prefill.
    chain = bar(np.float32, T, K, state_dtype=np.float32, state_roundings=T)
    assert rel_err(o_dec, o_pre) < 2 * chain  # both sides' float32 arithmetic
    assert rel_err(pool[2:], final) < 2 * chain
    o_np, s_np = kda(**inputs, initial_state=h0, A_log=A_log, dt_bias=dt_bias, **SAFE_NP)
    assert rel_err(o_dec, o_np) < chain and rel_err(pool[2:], s_np) < chain
    assert (pool[:2] == 0).all()


@pytest.mark.parametrize("num_threads", [1, 2, 7, 16])
def test_varlen_2d_indices_accepted_tokens_one_head(rng, num_threads):
    # cu_seqlens and speculative decoding together, one value head so that the fast path splits
    # V over the threads, an explicit scale, and the most negative index (not written / skip).
    lengths = [2, 0, 3, 1]
    cu = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    H, K, V, P = 1, 16, 128, 14  # T_max = 3 columns of idx
    inputs = make_inputs(rng, B=1, T=int(cu[-1]), H=H, K=K, V=V)
    pool = rng.standard_normal((P, H, K, V)).astype(np.float32)
    lowest = np.iinfo(np.int64).min
    idx = np.array([[0, 1, 2], [3, 4, 5], [6, lowest, 8], [lowest, 10, 11]], np.int64)
    acc = np.array([2, 1, 3, 1], np.int32)  # sequence 3 reads idx[3, 0]: skipped
    ans = both(inputs, pool, state_indices=idx, num_accepted_tokens=acc, cu_seqlens=cu,
               scale=0.37, num_threads=num_threads)
    check(ans, inputs)
    for o, p in ans[:2]:
        assert (o[0, 5] == 0).all(), "the skipped sequence's row is zero"
        for slot in (2, 3, 4, 5, 7, 9, 10, 11, 12, 13):  # named by no kept token
            np.testing.assert_array_equal(p[slot], pool[slot])


@pytest.mark.parametrize("reference", [False, True])
def test_padded_pool_view(rng, reference):
    # The pool as a view of a larger array: 3 padding columns per row and a padding head per
    # slot; the padding keeps its bytes, the view is updated like a contiguous pool.
    N, H, K, V, P = 3, 2, 16, 24, 5
    inputs = make_inputs(rng, B=N, T=1, H=H, K=K, V=V)
    big = np.full((P, H + 1, K, V + 3), 7.0, np.float32)
    pool = big[:, :H, :, :V]
    pool[...] = rng.standard_normal(pool.shape)
    assert not pool.flags.c_contiguous
    before = pool.copy()
    idx = np.array([4, np.iinfo(np.int32).min, 1], np.int32)
    out = flash_kda.decode(**inputs, state_pool=pool, state_indices=idx, scale=-0.6,
                           reference=reference, num_threads=4, **SAFE)
    o_np, p_np = decode_pool(**inputs, pool=before, state_indices=idx, scale=-0.6, **SAFE_NP)
    assert rel_err(out, o_np) < bar_for(inputs, reference=reference)
    assert rel_err(pool, p_np) < bar_for(inputs, pool, reference=reference)
    assert (big[:, H:] == 7.0).all() and (big[..., V:] == 7.0).all(), "padding written"
    for slot in (0, 2, 3):
        np.testing.assert_array_equal(pool[slot], before[slot])


def test_varlen_sequence_longer_than_2d_indices(rng):
    cu = np.array([0, 1, 5], np.int64)  # sequence 1 has 4 tokens, T_max is 3
    inputs = make_inputs(rng, B=1, T=5, H=1, K=16, V=16)
    pool = np.zeros((6, 1, 16, 16), np.float32)
    idx = np.arange(6, dtype=np.int64).reshape(2, 3)
    with pytest.raises(ValueError, match=r"^state_indices: sequence 1 has 4 tokens, but 2-D "
                                         r"state_indices has only 3 columns"):
        flash_kda.decode(**inputs, state_pool=pool, state_indices=idx, cu_seqlens=cu,
                         num_accepted_tokens=np.array([1, 3], np.int64))
    assert (pool == 0).all()


@pytest.mark.skipif(BF16 is None, reason="ml_dtypes (NumPy bfloat16) not installed")
def test_bf16_pool(rng):
    N, H, K, V = 2, 2, 16, 16
    inputs = make_inputs(rng, B=N, T=1, H=H, K=K, V=V, dtype=BF16)
    pool = rng.standard_normal((N, H, K, V)).astype(BF16)
    ans = both(inputs, pool)
    check(ans, inputs)


# ---- bf16 / f16 stores: bit-exact rounding to nearest even ---------------------------------------
#
# A problem whose float32 result is exact: one key channel (q = k = e_0, no L2 norm), no decay
# (gate none, g = 0), b = 0.5 (no sigmoid). One token leaves row 0 of the state at
# m = s + 0.5 (v - s) = (s + v) / 2 (exact in float32: one bit more than s and v have) and the
# output at o = fl32(scale * m). The stores must then equal NumPy's / ml_dtypes' own
# round-to-nearest-even conversions of m and o, bit for bit; about half the roundings of m are
# exact ties, which only ties-to-even gets right.

def _random_values(rng, exponents, V=256):
    """Two rows of V normal values scaled by powers of two in the given exponent range."""
    mag = np.exp2(rng.integers(exponents[0], exponents[1] + 1, size=V)).astype(np.float64)
    return mag * rng.standard_normal(V), mag * rng.standard_normal(V)


def _exact_decode_case(rng, io, pool_dtype, scale, s_raw, v_raw, reference, num_threads, K=16):
    fmt = np.dtype(io)
    V = s_raw.size
    # v holds values of the output's format (bf16 ones for a float32 output), s of the state's
    # (v's format for a float32 state).
    v_fmt = BF16 if fmt == np.float32 else fmt
    state_fmt = np.dtype(pool_dtype) if np.dtype(pool_dtype) != np.float32 else v_fmt
    s = s_raw.astype(np.float32).astype(state_fmt).astype(np.float64)
    v = v_raw.astype(np.float32).astype(v_fmt).astype(np.float64)
    m = s + 0.5 * (v - s)
    # Where s and v are too far apart in magnitude for m to fit float32 (rare), take s = v = 1.
    inexact = m.astype(np.float32).astype(np.float64) != m
    assert inexact.sum() <= V // 10, "the case is built wrong"
    s[inexact] = v[inexact] = m[inexact] = 1.0
    q = np.zeros((1, 1, 1, K), fmt)
    q[..., 0] = 1
    pool = (0.25 * rng.standard_normal((2, 1, K, V))).astype(pool_dtype)
    pool[1, 0, 0] = s.astype(np.float32).astype(pool_dtype)
    out = flash_kda.decode(q, q, v.astype(np.float32).astype(fmt).reshape(1, 1, 1, V),
                           np.zeros((1, 1, 1, K), np.float32), np.full((1, 1, 1), 0.5, np.float32),
                           pool, state_indices=np.array([1], np.int64), scale=scale,
                           reference=reference, num_threads=num_threads)
    with np.errstate(over="ignore"):
        o = np.float32(scale) * m.astype(np.float32)  # float32 multiply, rounded once
        return out.reshape(V), o.astype(fmt), pool[1, 0, 0], m.astype(np.float32).astype(pool_dtype)


def _assert_same_bits(got, want):
    g = np.ascontiguousarray(got).view(np.uint16 if got.dtype.itemsize == 2 else np.uint32)
    w = np.ascontiguousarray(want).view(g.dtype)
    sign = np.array(1 << (8 * got.dtype.itemsize - 1), g.dtype)
    same = (g == w) | (((g | w) & ~sign) == 0)  # an exact zero's sign is free
    nan = np.isnan(want.astype(np.float32))
    same |= nan & np.isnan(got.astype(np.float32))
    bad = np.flatnonzero(~same)
    assert bad.size == 0, \
        f"{bad.size} elements differ, first at {bad[:4]}: got {g[bad[:4]]}, want {w[bad[:4]]}"


EXACT_CASES = {
    # name: (scale, exponent range of s and v)
    "ties": (1.0, (-6, 6)),
    "half": (-0.5, (-6, 6)),
    "full_precision_scale": (1.2345678, (-6, 6)),
    "negative_scale": (-0.70710677, (-6, 6)),
}


@pytest.mark.skipif(BF16 is None, reason="ml_dtypes (NumPy bfloat16) not installed")
@pytest.mark.parametrize("case", sorted(EXACT_CASES))
@pytest.mark.parametrize("io", ["bf16", "f16", "f32"])
@pytest.mark.parametrize("pool_dtype", ["bf16", "f32"])
@pytest.mark.parametrize("reference,num_threads", [(False, 1), (False, 3), (True, 2)])
def test_stores_round_to_nearest_even(rng, case, io, pool_dtype, reference, num_threads):
    io = {"bf16": BF16, "f16": np.dtype(np.float16), "f32": np.dtype(np.float32)}[io]
    pool_dtype = BF16 if pool_dtype == "bf16" else np.dtype(np.float32)
    scale, exponents = EXACT_CASES[case]
    s, v = _random_values(rng, exponents)
    out, want_out, state, want_state = _exact_decode_case(rng, io, pool_dtype, scale, s, v,
                                                          reference, num_threads)
    _assert_same_bits(out, want_out)
    _assert_same_bits(state, want_state)


@pytest.mark.skipif(BF16 is None, reason="ml_dtypes (NumPy bfloat16) not installed")
@pytest.mark.parametrize("reference", [False, True])
def test_bf16_stores_at_the_ends_of_the_range(rng, reference):
    # Subnormal outputs (scale 2^-126 on values up to 1), and outputs around the largest bf16
    # (0x1.fep127) and the tie with infinity (0x1.ffp127), some beyond float32's range: m
    # within +-2.3% of 0x1.fep127 / 2^99 in steps of 2^-10, from two bf16 neighbours of it.
    s, v = _random_values(rng, (-12, 0))
    out, want, state, want_state = _exact_decode_case(rng, BF16, BF16, 2.0 ** -126, s, v,
                                                      reference, 3)
    assert (np.abs(want.astype(np.float32)) < 2.0 ** -126).sum() > 100  # mostly subnormal
    _assert_same_bits(out, want)
    _assert_same_bits(state, want_state)
    target = float.fromhex("0x1.fep127") / 2.0 ** 99 * (1 + np.arange(-24, 25) / 1024)
    s, v = target * (1 - 2.0 ** -9), target * (1 + 2.0 ** -9)
    out, want, state, want_state = _exact_decode_case(rng, BF16, BF16, 2.0 ** 99, s, v,
                                                      reference, 3)
    top = np.abs(want.astype(np.float32))
    assert np.isinf(top).sum() > 5 and (top == float.fromhex("0x1.fep127")).sum() >= 1
    _assert_same_bits(out, want)
    _assert_same_bits(state, want_state)

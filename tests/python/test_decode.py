"""flash_kda.decode on the CPU: in-place pools, indices, accepted tokens, against NumPy float64."""

import numpy as np
import pytest

import flash_kda
from helpers import bfloat16_dtype, gate_params, make_inputs, poison
from kda_numpy import decode_pool, kda, rel_err

BF16 = bfloat16_dtype()

SAFE = dict(gate="lower_bound", lower_bound=-5.0, use_qk_l2norm=True, use_beta_sigmoid=True)
SAFE_NP = dict(gate="lower_bound", lower_bound=-5.0, l2norm_qk=True, beta_sigmoid=True)


def both(inputs, pool, *, opts=SAFE, np_opts=SAFE_NP, A_log=None, dt_bias=None, **kw):
    """Decode with fast and reference paths on copies of pool; NumPy on a float64 copy."""
    answers = []
    for reference in (False, True):
        p = pool.copy()
        out = poison(inputs["v"].shape, inputs["v"].dtype)
        ret = flash_kda.decode(**inputs, state_pool=p, out=out, A_log=A_log, dt_bias=dt_bias,
                               reference=reference, **opts, **kw)
        assert ret is out
        assert np.isfinite(out.astype(np.float32)).all(), "an output element was not written"
        answers.append((out, p))
    answers.append(decode_pool(**inputs, pool=pool, A_log=A_log, dt_bias=dt_bias, **np_opts,
                               **kw))
    return answers


def check(answers, tol_out=1e-5, tol_state=1e-5):
    o_np, p_np = answers[2]
    for o, p in answers[:2]:
        assert rel_err(o, o_np) < tol_out
        assert rel_err(p, p_np) < tol_state


@pytest.mark.parametrize("state_v_first", [False, True])
def test_one_token_per_sequence_without_indices(rng, state_v_first):
    N, H, K, V = 3, 2, 16, 32
    inputs = make_inputs(rng, B=N, T=1, H=H, K=K, V=V)
    A_log, dt_bias = gate_params(rng, H, K)
    shape = (N + 2, H, V, K) if state_v_first else (N + 2, H, K, V)  # P > N: extra slots untouched
    pool = rng.standard_normal(shape).astype(np.float32)
    ans = both(inputs, pool, A_log=A_log, dt_bias=dt_bias, state_v_first=state_v_first)
    check(ans)
    for _, p in ans[:2]:
        np.testing.assert_array_equal(p[N:], pool[N:])


@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
def test_1d_indices_with_skips(rng, index_dtype):
    N, H, K, V, P = 4, 2, 16, 16, 7
    inputs = make_inputs(rng, B=N, T=1, H=H, K=K, V=V)
    pool = rng.standard_normal((P, H, K, V)).astype(np.float32)
    idx = np.array([5, -1, 0, 3], dtype=index_dtype)
    ans = both(inputs, pool, state_indices=idx)
    check(ans)
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
    check(ans)


def test_2d_indices_and_accepted_tokens(rng):
    # Speculative decoding: 3 draft tokens per sequence; sequence n continues from the state
    # after its last accepted token and writes the state after each token t to idx[n, t].
    N, T, H, K, V, P = 3, 3, 2, 16, 16, 12
    inputs = make_inputs(rng, B=N, T=T, H=H, K=K, V=V)
    pool = rng.standard_normal((P, H, K, V)).astype(np.float32)
    idx = np.array([[0, 1, 2], [3, -1, 5], [6, 7, 8]], dtype=np.int32)
    acc = np.array([2, 1, 3], dtype=np.int64)
    ans = both(inputs, pool, state_indices=idx, num_accepted_tokens=acc)
    check(ans)
    for _, p in ans[:2]:
        np.testing.assert_array_equal(p[9:], pool[9:])
        np.testing.assert_array_equal(p[4], pool[4])  # idx -1: the state after token 1 is not written


def test_2d_negative_read_slot_skips(rng):
    N, T, H, K, V, P = 2, 2, 1, 16, 16, 4
    inputs = make_inputs(rng, B=N, T=T, H=H, K=K, V=V)
    pool = rng.standard_normal((P, H, K, V)).astype(np.float32)
    idx = np.array([[-1, 1], [2, 3]], dtype=np.int64)  # sequence 0 reads idx[0, 0] = -1
    ans = both(inputs, pool, state_indices=idx)
    check(ans)
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
    assert rel_err(o_dec, o_pre) < 1e-5
    assert rel_err(pool[2:], final) < 1e-5
    o_np, s_np = kda(**inputs, initial_state=h0, A_log=A_log, dt_bias=dt_bias, **SAFE_NP)
    assert rel_err(o_dec, o_np) < 1e-5 and rel_err(pool[2:], s_np) < 1e-5
    assert (pool[:2] == 0).all()


@pytest.mark.skipif(BF16 is None, reason="ml_dtypes (NumPy bfloat16) not installed")
def test_bf16_pool(rng):
    N, H, K, V = 2, 2, 16, 16
    inputs = make_inputs(rng, B=N, T=1, H=H, K=K, V=V, dtype=BF16)
    pool = rng.standard_normal((N, H, K, V)).astype(BF16)
    ans = both(inputs, pool)
    check(ans, tol_out=1e-2, tol_state=1e-2)

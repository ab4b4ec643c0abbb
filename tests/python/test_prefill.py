"""flash_kda.prefill on the CPU: the fast path and the C float64 reference against NumPy float64.

Every case checks three answers: the C library's fast path, the C library's float64 reference
(reference=True) and kda_numpy.kda, an independent NumPy recurrence. Outputs start as NaN so an
element that is not written shows.
"""

import numpy as np
import pytest

import flash_kda
from helpers import bar, bar_for, bfloat16_dtype, gate_params, log_decay, make_inputs, poison
from kda_numpy import kda, rel_err

BF16 = bfloat16_dtype()
needs_bf16 = pytest.mark.skipif(BF16 is None, reason="ml_dtypes (NumPy bfloat16) not installed")

def run_three(inputs, *, out_dtype, state_dtype=np.float32, initial_state=None, cu_seqlens=None,
              state_v_first=False, opts=None, np_opts=None, A_log=None, dt_bias=None):
    """Runs fast, C reference and NumPy; returns [(o, final_state)] for the three."""
    opts = opts or {}
    q, k, v, g, beta = (inputs[n] for n in ("q", "k", "v", "g", "beta"))
    B, T, HV, V = v.shape
    K = q.shape[3]
    N = B if cu_seqlens is None else len(cu_seqlens) - 1
    sshape = (N, HV, V, K) if state_v_first else (N, HV, K, V)
    results = []
    for reference in (False, True):
        out = poison(v.shape, out_dtype)
        final = poison(sshape, state_dtype)
        ret = flash_kda.prefill(q, k, v, g, beta, out=out, final_state=final,
                                initial_state=initial_state, cu_seqlens=cu_seqlens,
                                state_v_first=state_v_first, A_log=A_log, dt_bias=dt_bias,
                                reference=reference, **opts)
        assert ret is out
        assert np.isfinite(out.astype(np.float32)).all(), "an output element was not written"
        assert np.isfinite(final.astype(np.float32)).all(), "a final-state element was not written"
        results.append((out, final))
    np_opts = dict(np_opts or {})
    results.append(kda(q, k, v, g, beta, initial_state=initial_state, cu_seqlens=cu_seqlens,
                       state_v_first=state_v_first, A_log=A_log, dt_bias=dt_bias, **np_opts))
    return results


def check_three(results, inputs, out_dtype, state_dtype=np.float32):
    """Fast and C reference against NumPy, within the bars of helpers.bar: the reference only
    rounds the stored results; the fast path computes in float32 (T tokens, heads of size K)."""
    (o_fast, s_fast), (o_ref, s_ref), (o_np, s_np) = results
    T, K = inputs["q"].shape[1], inputs["q"].shape[3]
    assert rel_err(o_ref, o_np) < bar(out_dtype, reference=True), "C reference output vs NumPy"
    assert rel_err(s_ref, s_np) < bar(state_dtype, reference=True), \
        "C reference final state vs NumPy"
    assert rel_err(o_fast, o_np) < bar(out_dtype, T, K), "fast output vs NumPy"
    assert rel_err(s_fast, s_np) < bar(state_dtype, T, K), "fast final state vs NumPy"


SAFE = dict(gate="lower_bound", lower_bound=-5.0, use_qk_l2norm=True, use_beta_sigmoid=True)
SAFE_NP = dict(gate="lower_bound", lower_bound=-5.0, l2norm_qk=True, beta_sigmoid=True)


@pytest.mark.parametrize("T", [1, 15, 16, 17, 63, 64, 65, 130])
def test_lengths_safe_gate(rng, T):
    inputs = make_inputs(rng, B=2, T=T, H=2, K=16, V=16)
    A_log, dt_bias = gate_params(rng, 2, 16)
    res = run_three(inputs, out_dtype=np.float32, opts=SAFE, np_opts=SAFE_NP, A_log=A_log,
                    dt_bias=dt_bias)
    check_three(res, inputs, np.float32)


GATE_CASES = {
    "none": (dict(), dict()),
    "none_l2": (dict(use_qk_l2norm=True), dict(l2norm_qk=True)),
    "lower_bound_noA": (dict(gate="lower_bound", lower_bound=-2.0, use_beta_sigmoid=True),
                        dict(gate="lower_bound", lower_bound=-2.0, beta_sigmoid=True)),
    "softplus": (dict(gate="softplus", use_qk_l2norm=True, use_beta_sigmoid=True),
                 dict(gate="softplus", l2norm_qk=True, beta_sigmoid=True)),
    "softplus_neg_eig": (dict(gate="softplus", use_qk_l2norm=True, use_beta_sigmoid=True,
                              allow_neg_eigval=True),
                         dict(gate="softplus", l2norm_qk=True, beta_sigmoid=True,
                              neg_eigval=True)),
    "safe_scale": (dict(SAFE, scale=0.3), dict(SAFE_NP, scale=0.3)),
}


@pytest.mark.parametrize("case", list(GATE_CASES))
@pytest.mark.parametrize("with_bias", [False, True])
def test_gates_and_switches(rng, case, with_bias):
    opts, np_opts = GATE_CASES[case]
    H, K, V = 2, 16, 32
    inputs = make_inputs(rng, B=1, T=40, H=H, K=K, V=V)
    if opts.get("gate", "none") == "none":
        inputs["g"] = log_decay(rng, inputs["g"].shape)
        # without the sigmoid beta must already be a weight in (0, 1)
        inputs["beta"] = rng.uniform(0, 1, inputs["beta"].shape).astype(np.float32)
        if not opts.get("use_qk_l2norm"):
            inputs["k"] = inputs["k"] / np.linalg.norm(inputs["k"], axis=-1, keepdims=True)
    A_log, dt_bias = gate_params(rng, H, K)
    if case == "lower_bound_noA":
        A_log = None
    if not with_bias:
        dt_bias = None
    elif case == "softplus":
        dt_bias = dt_bias.reshape(-1)  # the flat [HV * K] spelling fla uses
    res = run_three(inputs, out_dtype=np.float32, opts=opts, np_opts=np_opts, A_log=A_log,
                    dt_bias=dt_bias)
    check_three(res, inputs, np.float32)


@pytest.mark.parametrize("K,V", [(16, 32), (32, 16), (64, 64)])
def test_gva_and_head_dims(rng, K, V):
    H, HV = 2, 4
    inputs = make_inputs(rng, B=1, T=37, H=H, HV=HV, K=K, V=V)
    A_log, dt_bias = gate_params(rng, HV, K)
    res = run_three(inputs, out_dtype=np.float32, opts=SAFE, np_opts=SAFE_NP, A_log=A_log,
                    dt_bias=dt_bias)
    check_three(res, inputs, np.float32)


@pytest.mark.parametrize("state_v_first", [False, True])
@pytest.mark.parametrize("state_dtype", ["float32", pytest.param("bfloat16", marks=needs_bf16)])
def test_states_in_and_out(rng, state_v_first, state_dtype):
    state_dtype = np.dtype(np.float32) if state_dtype == "float32" else BF16
    H, K, V = 2, 16, 32
    inputs = make_inputs(rng, B=2, T=21, H=H, K=K, V=V)
    A_log, dt_bias = gate_params(rng, H, K)
    shape = (2, H, V, K) if state_v_first else (2, H, K, V)
    h0 = rng.standard_normal(shape).astype(state_dtype)
    res = run_three(inputs, out_dtype=np.float32, state_dtype=state_dtype, initial_state=h0,
                    state_v_first=state_v_first, opts=SAFE, np_opts=SAFE_NP, A_log=A_log,
                    dt_bias=dt_bias)
    check_three(res, inputs, np.float32, state_dtype)


@pytest.mark.parametrize("index_dtype", [np.int64, np.int32])
def test_varlen_with_empty_sequences(rng, index_dtype):
    lengths = [0, 1, 15, 16, 17, 0, 65, 3]
    cu = np.concatenate([[0], np.cumsum(lengths)]).astype(index_dtype)
    T = int(cu[-1])
    H, K, V = 2, 16, 16
    inputs = make_inputs(rng, B=1, T=T, H=H, K=K, V=V)
    A_log, dt_bias = gate_params(rng, H, K)
    h0 = rng.standard_normal((len(lengths), H, K, V)).astype(np.float32)
    res = run_three(inputs, out_dtype=np.float32, initial_state=h0, cu_seqlens=cu, opts=SAFE,
                    np_opts=SAFE_NP, A_log=A_log, dt_bias=dt_bias)
    check_three(res, inputs, np.float32)
    # a zero-length sequence's final state is its initial state
    for _, final in res[:2]:
        np.testing.assert_array_equal(final[0], h0[0])
        np.testing.assert_array_equal(final[5], h0[5])


@pytest.mark.parametrize("dtype", ["float16", pytest.param("bfloat16", marks=needs_bf16)])
def test_half_inputs(rng, dtype):
    dtype = np.dtype(np.float16) if dtype == "float16" else BF16
    H, K, V = 2, 32, 32
    inputs = make_inputs(rng, B=1, T=50, H=H, K=K, V=V, dtype=dtype)
    A_log, dt_bias = gate_params(rng, H, K)
    res = run_three(inputs, out_dtype=dtype, opts=SAFE, np_opts=SAFE_NP, A_log=A_log,
                    dt_bias=dt_bias)
    check_three(res, inputs, dtype)


def test_lower_bound_minus_5_with_large_gates(rng):
    # exp(-G) near the float32 limit inside a chunk: g huge so that every a_t is -5.
    H, K, V = 1, 16, 16
    inputs = make_inputs(rng, B=1, T=80, H=H, K=K, V=V, gate_scale=50.0)
    A_log = np.full(H, 2.0, np.float32)
    res = run_three(inputs, out_dtype=np.float32, opts=SAFE, np_opts=SAFE_NP, A_log=A_log)
    check_three(res, inputs, np.float32)


def test_strided_views(rng):
    # q a slice of a wider array, out a strided view: strides pass through as they are.
    H, K, V = 2, 16, 16
    inputs = make_inputs(rng, B=1, T=24, H=2 * H, K=K, V=V)
    inputs = {n: (x[:, :, ::2] if x.ndim == 4 else x[:, :, :H])
              for n, x in inputs.items()}
    assert not inputs["q"].flags.c_contiguous
    A_log, dt_bias = gate_params(rng, H, K)
    big_out = poison((1, 24, H, 2 * V))
    out = big_out[..., V:]
    flash_kda.prefill(**inputs, out=out, A_log=A_log, dt_bias=dt_bias, **SAFE)
    o_np, _ = kda(**inputs, A_log=A_log, dt_bias=dt_bias, **SAFE_NP)
    assert rel_err(out, o_np) < bar_for(inputs)
    assert np.isnan(big_out[..., :V]).all(), "wrote outside the out view"


def test_out_is_allocated_like_v(rng):
    inputs = make_inputs(rng, B=1, T=9, H=1, K=16, V=8)
    for x in inputs.values():
        x.flags.writeable = False  # read-only inputs are fine; only outputs must be writable
    o = flash_kda.prefill(**inputs, **SAFE)
    assert o.shape == inputs["v"].shape and o.dtype == np.float32
    o_np, _ = kda(**inputs, **SAFE_NP)
    assert rel_err(o, o_np) < bar_for(inputs)


def test_in_place_state_update(rng):
    # final_state may be the same array as initial_state.
    H, K, V = 2, 16, 16
    inputs = make_inputs(rng, B=1, T=30, H=H, K=K, V=V)
    h0 = rng.standard_normal((1, H, K, V)).astype(np.float32)
    state = h0.copy()
    flash_kda.prefill(**inputs, initial_state=state, final_state=state, **SAFE)
    _, s_np = kda(**inputs, initial_state=h0, **SAFE_NP)
    assert rel_err(state, s_np) < bar_for(inputs, state)


def test_threads_give_the_same_answer(rng):
    inputs = make_inputs(rng, B=2, T=70, H=3, K=16, V=32)
    o1 = flash_kda.prefill(**inputs, num_threads=1, **SAFE)
    o2 = flash_kda.prefill(**inputs, num_threads=3, **SAFE)
    np.testing.assert_array_equal(o1, o2)


def test_zero_tokens(rng):
    inputs = make_inputs(rng, B=2, T=0, H=2, K=16, V=16)
    h0 = rng.standard_normal((2, 2, 16, 16)).astype(np.float32)
    final = poison(h0.shape)
    o = flash_kda.prefill(**inputs, initial_state=h0, final_state=final, **SAFE)
    assert o.shape == (2, 0, 2, 16)
    np.testing.assert_array_equal(final, h0)

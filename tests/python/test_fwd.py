"""flash_kda.fwd: FlashKDA's signature and semantics (outputs written in place, V-first states)."""

import inspect

import numpy as np
import pytest

import flash_kda
from helpers import bar_for, bfloat16_dtype, gate_params, make_inputs, poison
from kda_numpy import kda, rel_err

BF16 = bfloat16_dtype()


def test_signature_is_flashkdas():
    params = list(inspect.signature(flash_kda.fwd).parameters.values())
    names = [p.name for p in params]
    assert names == ["q", "k", "v", "g", "beta", "scale", "out", "A_log", "dt_bias", "lower_bound",
                     "initial_state", "final_state", "cu_seqlens", "checkpoint_state",
                     "checkpoint_offsets"]
    assert all(p.default is None for p in params[10:])
    assert all(p.kind is p.KEYWORD_ONLY for p in params[13:])
    assert all(p.default is inspect.Parameter.empty for p in params[:10])


@pytest.mark.parametrize("varlen", [False, True])
def test_writes_out_and_final_state_in_place(rng, varlen):
    H, K, V = 2, 32, 32
    if varlen:
        cu = np.array([0, 5, 5, 40, 47], np.int64)
        inputs = make_inputs(rng, B=1, T=47, H=H, K=K, V=V)
        N = 4
    else:
        cu = None
        inputs = make_inputs(rng, B=2, T=29, H=H, K=K, V=V)
        N = 2
    A_log, dt_bias = gate_params(rng, H, K)
    h0 = rng.standard_normal((N, H, V, K)).astype(np.float32)  # FlashKDA's [N, H, V, K]
    out = poison(inputs["v"].shape)
    final = poison((N, H, V, K))
    ret = flash_kda.fwd(inputs["q"], inputs["k"], inputs["v"], inputs["g"], inputs["beta"], 0.2,
                        out, A_log, dt_bias, -5.0, initial_state=h0, final_state=final,
                        cu_seqlens=cu)
    assert ret is None  # FlashKDA returns nothing: the results are in out and final_state
    o_np, s_np = kda(**inputs, scale=0.2, gate="lower_bound", lower_bound=-5.0, A_log=A_log,
                     dt_bias=dt_bias, l2norm_qk=True, beta_sigmoid=True, initial_state=h0,
                     state_v_first=True, cu_seqlens=cu)
    assert rel_err(out, o_np) < bar_for(inputs, out)
    assert rel_err(final, s_np) < bar_for(inputs, final)


def test_keywords_as_fla_passes_them(rng):
    # fla's backend calls fwd(q, k, v, g, beta, scale, out_buf, A_log=..., dt_bias=...,
    # lower_bound=..., initial_state=..., final_state=..., cu_seqlens=...) with dt_bias [H, K]
    # and final_state allocated as [N, HV, K, V] (the same shape when K == V).
    H, K = 2, 16
    inputs = make_inputs(rng, B=1, T=20, H=H, K=K, V=K)
    A_log, dt_bias = gate_params(rng, H, K)
    out = np.empty_like(inputs["v"])
    final = np.empty((1, H, K, K), np.float32)
    flash_kda.fwd(*(inputs[n] for n in ("q", "k", "v", "g", "beta")), K ** -0.5, out,
                  A_log=A_log, dt_bias=dt_bias, lower_bound=-5.0, initial_state=None,
                  final_state=final, cu_seqlens=None)
    o_np, s_np = kda(**inputs, gate="lower_bound", lower_bound=-5.0, A_log=A_log,
                     dt_bias=dt_bias, l2norm_qk=True, beta_sigmoid=True, state_v_first=True)
    assert rel_err(out, o_np) < bar_for(inputs, out)
    assert rel_err(final, s_np) < bar_for(inputs, final)


def test_state_updated_in_place_when_initial_is_final(rng):
    H, K = 1, 16
    inputs = make_inputs(rng, B=1, T=33, H=H, K=K, V=K)
    A_log, dt_bias = gate_params(rng, H, K)
    h0 = rng.standard_normal((1, H, K, K)).astype(np.float32)
    state = h0.copy()
    out = np.empty_like(inputs["v"])
    flash_kda.fwd(*(inputs[n] for n in ("q", "k", "v", "g", "beta")), None, out, A_log, dt_bias,
                  -3.0, initial_state=state, final_state=state)
    _, s_np = kda(**inputs, gate="lower_bound", lower_bound=-3.0, A_log=A_log, dt_bias=dt_bias,
                  l2norm_qk=True, beta_sigmoid=True, initial_state=h0, state_v_first=True)
    assert rel_err(state, s_np) < bar_for(inputs, state)


@pytest.mark.skipif(BF16 is None, reason="ml_dtypes (NumPy bfloat16) not installed")
def test_bf16_like_flashkda(rng):
    # FlashKDA's dtypes: bf16 inputs and out, fp32 A_log / dt_bias, bf16 states.
    H, K = 2, 32
    inputs = make_inputs(rng, B=1, T=40, H=H, K=K, V=K, dtype=BF16)
    A_log, dt_bias = gate_params(rng, H, K)
    h0 = rng.standard_normal((1, H, K, K)).astype(BF16)
    final = np.empty((1, H, K, K), BF16)
    out = np.empty_like(inputs["v"])
    flash_kda.fwd(*(inputs[n] for n in ("q", "k", "v", "g", "beta")), K ** -0.5, out, A_log,
                  dt_bias, -5.0, initial_state=h0, final_state=final)
    o_np, s_np = kda(**inputs, gate="lower_bound", lower_bound=-5.0, A_log=A_log,
                     dt_bias=dt_bias, l2norm_qk=True, beta_sigmoid=True, initial_state=h0,
                     state_v_first=True)
    assert rel_err(out, o_np) < bar_for(inputs, out)
    assert rel_err(final, s_np) < bar_for(inputs, final)


def test_missing_lower_bound_and_out(rng):
    inputs = make_inputs(rng, B=1, T=4, H=1, K=16, V=16)
    args = [inputs[n] for n in ("q", "k", "v", "g", "beta")]
    with pytest.raises(ValueError, match="lower_bound"):
        flash_kda.fwd(*args, None, np.empty_like(inputs["v"]), None, None, None)
    with pytest.raises(TypeError, match="out"):
        flash_kda.fwd(*args, None, None, None, None, -5.0)


def test_lower_bound_out_of_range_is_the_c_message(rng):
    inputs = make_inputs(rng, B=1, T=4, H=1, K=16, V=16)
    out = poison(inputs["v"].shape)
    with pytest.raises(ValueError, match=r"options\.lower_bound: 0\.5 is out of range"):
        flash_kda.fwd(*(inputs[n] for n in ("q", "k", "v", "g", "beta")), None, out, None, None,
                      0.5)
    assert np.isnan(out).all()

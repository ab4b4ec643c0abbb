"""Where a NaN in one input token goes, on the CPU backend (the behaviour the README states).

A NaN in q, k, v, g or beta of token t of one sequence and head never reaches another sequence or
head, nor a token before t: every form (the chunked fast path, the float64 reference and decode)
confines it to tokens >= t (the chunked path multiplies only the lower triangle of its intra-chunk
matrix, so no 0 * NaN reaches an earlier token of t's chunk). A NaN in q stays in o_t; in k, v, g
or beta it reaches o_t, every later token of the sequence and the final state.
"""

import numpy as np
import pytest

import flash_kda
from helpers import gate_params, make_inputs

B, T, H, K, V = 2, 150, 2, 32, 32
T_NAN = 100  # inside a chunk (of 16 or 64 tokens), not at its start
SAFE = dict(gate="lower_bound", lower_bound=-5.0, use_qk_l2norm=True, use_beta_sigmoid=True)


def with_nan(inputs, name):
    x = {n: a.copy() for n, a in inputs.items()}
    if name == "beta":
        x[name][0, T_NAN, 0] = np.nan
    else:
        x[name][0, T_NAN, 0, 1] = np.nan
    return x


def nan_tokens(o):
    """Tokens of sequence 0, head 0 whose output has a NaN."""
    return np.flatnonzero(np.isnan(o[0, :, 0]).any(axis=1))


def run(mode, x, A_log, dt_bias):
    if mode == "decode":
        state = np.zeros((B, H, K, V), np.float32)
        o = flash_kda.decode(**x, state_pool=state, A_log=A_log, dt_bias=dt_bias, **SAFE)
        return o, state
    state = np.full((B, H, K, V), np.nan, np.float32)
    o = flash_kda.prefill(**x, final_state=state, A_log=A_log, dt_bias=dt_bias, **SAFE,
                          reference=mode == "reference")
    return o, state


@pytest.mark.parametrize("mode", ["fast", "reference", "decode"])
@pytest.mark.parametrize("name", ["q", "k", "v", "g", "beta"])
def test_nan_in_one_token(rng, mode, name):
    inputs = make_inputs(rng, B=B, T=T, H=H, K=K, V=V)
    A_log, dt_bias = gate_params(rng, H, K)
    o_clean, _ = run(mode, inputs, A_log, dt_bias)
    assert np.isfinite(o_clean).all()

    o, state = run(mode, with_nan(inputs, name), A_log, dt_bias)
    # Never another sequence or head.
    assert np.isfinite(o[1]).all() and np.isfinite(o[0, :, 1]).all()
    assert np.isfinite(state[1]).all() and np.isfinite(state[0, 1]).all()
    bad = nan_tokens(o)
    if name == "q":
        # q_t is read by o_t alone.
        assert bad.tolist() == [T_NAN]
        assert np.isfinite(state).all()
        return
    # Every token from t on, and the state.
    assert set(range(T_NAN, T)) <= set(bad.tolist())
    assert np.isnan(state[0, 0]).any()
    assert bad.min() == T_NAN  # never before t

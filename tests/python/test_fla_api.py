"""fla-compatible entry points: chunk_kda, fused_recurrent_kda, fused_recurrent_kda_fwd."""

import inspect
import warnings

import numpy as np
import pytest

import flash_kda
from helpers import bar_for, gate_params, log_decay, make_inputs, poison
from kda_numpy import decode_pool, kda, rel_err

# fla 0.6's public signatures (fla/ops/kda/chunk.py, fused_recurrent.py): names and defaults.
CHUNK_KDA_SIGNATURE = [
    ("q", None), ("k", None), ("v", None), ("g", None), ("beta", None), ("scale", None),
    ("initial_state", None), ("output_final_state", False), ("use_qk_l2norm_in_kernel", False),
    ("use_gate_in_kernel", False), ("use_beta_sigmoid_in_kernel", False),
    ("allow_neg_eigval", False), ("safe_gate", False), ("lower_bound", None),
    ("disable_recompute", False), ("return_intermediate_states", False),
    ("state_v_first", False), ("cu_seqlens", None), ("cu_seqlens_cpu", None),
    ("cp_context", None), ("use_graph", False), ("max_num_seqs", None),
]
FUSED_RECURRENT_SIGNATURE = [
    ("q", None), ("k", None), ("v", None), ("g", None), ("beta", None), ("A_log", None),
    ("dt_bias", None), ("scale", None), ("initial_state", None), ("output_final_state", False),
    ("use_qk_l2norm_in_kernel", False), ("use_gate_in_kernel", False),
    ("use_beta_sigmoid_in_kernel", False), ("allow_neg_eigval", False), ("lower_bound", None),
    ("state_v_first", False), ("cu_seqlens", None),
]
FUSED_RECURRENT_FWD_SIGNATURE = [
    ("q", None), ("k", None), ("v", None), ("g", None), ("beta", None), ("A_log", None),
    ("dt_bias", None), ("initial_state", None), ("scale", None), ("output_final_state", False),
    ("inplace_final_state", True), ("state_v_first", False), ("cu_seqlens", None),
    ("ssm_state_indices", None), ("num_accepted_tokens", None),
    ("use_qk_l2norm_in_kernel", False), ("use_gate_in_kernel", False),
    ("use_beta_sigmoid_in_kernel", False), ("allow_neg_eigval", False), ("lower_bound", None),
    ("out", None),
]


@pytest.mark.parametrize("fn,expected", [
    (flash_kda.chunk_kda, CHUNK_KDA_SIGNATURE),
    (flash_kda.fused_recurrent_kda, FUSED_RECURRENT_SIGNATURE),
    (flash_kda.fused_recurrent_kda_fwd, FUSED_RECURRENT_FWD_SIGNATURE),
])
def test_signatures_match_fla(fn, expected):
    params = list(inspect.signature(fn).parameters.values())
    assert params[-1].kind is inspect.Parameter.VAR_KEYWORD
    got = [(p.name, None if p.default is inspect.Parameter.empty else p.default)
           for p in params[:-1]]
    assert got == expected


FLA_SAFE = dict(use_gate_in_kernel=True, use_qk_l2norm_in_kernel=True,
                use_beta_sigmoid_in_kernel=True, safe_gate=True, lower_bound=-5.0)
NP_SAFE = dict(gate="lower_bound", lower_bound=-5.0, l2norm_qk=True, beta_sigmoid=True)


# ---- chunk_kda -------------------------------------------------------------------------------


@pytest.mark.parametrize("state_v_first", [False, True])
def test_chunk_kda_safe_gate_with_states(rng, state_v_first):
    B, T, H, HV, K, V = 2, 35, 2, 4, 16, 32
    inputs = make_inputs(rng, B=B, T=T, H=H, HV=HV, K=K, V=V)
    A_log, dt_bias = gate_params(rng, HV, K)
    shape = (B, HV, V, K) if state_v_first else (B, HV, K, V)
    h0 = rng.standard_normal(shape).astype(np.float32)
    o, ht = flash_kda.chunk_kda(**inputs, initial_state=h0, output_final_state=True,
                                state_v_first=state_v_first, A_log=A_log,
                                dt_bias=dt_bias.reshape(-1), **FLA_SAFE)
    assert o.shape == (B, T, HV, V) and o.dtype == np.float32
    assert ht.shape == shape and ht.dtype == np.float32
    o_np, s_np = kda(**inputs, initial_state=h0, state_v_first=state_v_first, A_log=A_log,
                     dt_bias=dt_bias, **NP_SAFE)
    assert rel_err(o, o_np) < bar_for(inputs, o) and rel_err(ht, s_np) < bar_for(inputs, ht)


def test_chunk_kda_defaults_g_is_log_decay(rng):
    # Defaults: no gate in kernel (g is the log decay), no norm, beta already a weight.
    inputs = make_inputs(rng, B=1, T=30, H=2, K=16, V=16)
    inputs["g"] = log_decay(rng, inputs["g"].shape)
    inputs["beta"] = rng.uniform(0, 1, inputs["beta"].shape).astype(np.float32)
    inputs["k"] /= np.linalg.norm(inputs["k"], axis=-1, keepdims=True)
    o, ht = flash_kda.chunk_kda(**inputs)
    assert ht is None
    o_np, _ = kda(**inputs)
    assert rel_err(o, o_np) < bar_for(inputs, o)


def test_chunk_kda_softplus_gate_when_no_lower_bound(rng):
    inputs = make_inputs(rng, B=1, T=30, H=2, K=16, V=16)
    A_log, dt_bias = gate_params(rng, 2, 16)
    o, _ = flash_kda.chunk_kda(**inputs, use_gate_in_kernel=True, use_qk_l2norm_in_kernel=True,
                               use_beta_sigmoid_in_kernel=True, allow_neg_eigval=True,
                               A_log=A_log, dt_bias=dt_bias.reshape(-1), scale=0.5)
    o_np, _ = kda(**inputs, gate="softplus", A_log=A_log, dt_bias=dt_bias, l2norm_qk=True,
                  beta_sigmoid=True, neg_eigval=True, scale=0.5)
    assert rel_err(o, o_np) < bar_for(inputs, o)


def test_chunk_kda_lower_bound_without_A_log(rng):
    inputs = make_inputs(rng, B=1, T=30, H=2, K=16, V=16)
    o, _ = flash_kda.chunk_kda(**inputs, use_gate_in_kernel=True, lower_bound=-2.0,
                               use_beta_sigmoid_in_kernel=True)
    o_np, _ = kda(**inputs, gate="lower_bound", lower_bound=-2.0, beta_sigmoid=True)
    assert rel_err(o, o_np) < bar_for(inputs, o)


def test_chunk_kda_varlen(rng):
    cu = np.array([0, 7, 7, 50, 51], np.int64)
    inputs = make_inputs(rng, B=1, T=51, H=2, K=16, V=16)
    A_log, dt_bias = gate_params(rng, 2, 16)
    h0 = rng.standard_normal((4, 2, 16, 16)).astype(np.float32)
    o, ht = flash_kda.chunk_kda(**inputs, initial_state=h0, output_final_state=True,
                                cu_seqlens=cu, cu_seqlens_cpu=cu, A_log=A_log, dt_bias=dt_bias,
                                **FLA_SAFE)
    o_np, s_np = kda(**inputs, initial_state=h0, cu_seqlens=cu, A_log=A_log, dt_bias=dt_bias,
                     **NP_SAFE)
    assert ht.shape == (4, 2, 16, 16)
    assert rel_err(o, o_np) < bar_for(inputs, o) and rel_err(ht, s_np) < bar_for(inputs, ht)


def test_chunk_kda_cu_seqlens_cpu_must_match(rng):
    """h's rows are counted from cu_seqlens_cpu: a host copy that disagrees with cu_seqlens is
    named, rather than surfacing as a shape error of an argument chunk_kda users never pass."""
    cu = np.array([0, 7, 7, 50, 51], np.int64)
    inputs = make_inputs(rng, B=1, T=51, H=2, K=16, V=16)
    A_log, dt_bias = gate_params(rng, 2, 16)
    with pytest.raises(ValueError, match=r"^cu_seqlens_cpu: \[0, 7, 20, 50, 51\] differs from "
                                         r"cu_seqlens \[0, 7, 7, 50, 51\]"):
        flash_kda.chunk_kda(**inputs, cu_seqlens=cu, cu_seqlens_cpu=np.array([0, 7, 20, 50, 51]),
                            A_log=A_log, dt_bias=dt_bias, return_intermediate_states=True,
                            **FLA_SAFE)


def test_chunk_kda_transpose_state_layout_is_deprecated(rng):
    inputs = make_inputs(rng, B=1, T=10, H=1, K=16, V=8)
    A_log, dt_bias = gate_params(rng, 1, 16)
    with pytest.warns(DeprecationWarning, match="transpose_state_layout"):
        _, ht = flash_kda.chunk_kda(**inputs, output_final_state=True,
                                    transpose_state_layout=True, A_log=A_log, **FLA_SAFE)
    assert ht.shape == (1, 1, 8, 16)  # [N, HV, V, K]
    _, s_np = kda(**inputs, state_v_first=True, A_log=A_log, **NP_SAFE)
    assert rel_err(ht, s_np) < bar_for(inputs, ht)
    with pytest.raises(ValueError, match="transpose_state_layout"):
        flash_kda.chunk_kda(**inputs, transpose_state_layout=True, state_v_first=True)


def test_chunk_kda_ignored_fla_options(rng):
    # Options that only steer fla's backward or its Triton launches change nothing.
    inputs = make_inputs(rng, B=1, T=20, H=1, K=16, V=16)
    A_log, _ = gate_params(rng, 1, 16)
    base, _ = flash_kda.chunk_kda(**inputs, A_log=A_log, **FLA_SAFE)
    cu = np.array([0, 20], np.int64)
    for extra in (dict(disable_recompute=True), dict(chunk_size=32),
                  dict(use_graph=True, cu_seqlens=cu, max_num_seqs=1)):
        o, _ = flash_kda.chunk_kda(**inputs, A_log=A_log, **FLA_SAFE, **extra)
        np.testing.assert_array_equal(o, base)


def _chunk(rng, **kw):
    inputs = make_inputs(rng, B=1, T=8, H=1, K=16, V=16)
    return flash_kda.chunk_kda(**inputs, **kw)


@pytest.mark.parametrize("kw,exc,match", [
    (dict(use_gate_in_kernel=True), ValueError, "A_log"),
    (dict(use_gate_in_kernel=True, safe_gate=True, A_log=np.zeros(1, np.float32)), ValueError,
     "lower_bound"),
    (dict(use_gate_in_kernel=True, safe_gate=True, lower_bound=-6.0), ValueError, "-6.0"),
    (dict(use_gate_in_kernel=True, safe_gate=True, lower_bound=0.0), ValueError, "safe range"),
    (dict(allow_neg_eigval=True), ValueError, "use_beta_sigmoid_in_kernel"),
    (dict(chunk_size=128), ValueError, "chunk_size"),
    (dict(cp_context=object()), NotImplementedError, "cp_context"),
    (dict(initial_state=np.zeros((1, 1, 16, 16), np.float16)), TypeError, "float32"),
    (dict(cu_seqlens=np.array([0, 8], np.int64), use_graph=True, max_num_seqs=3), ValueError,
     "max_num_seqs"),
])
def test_chunk_kda_validation_like_fla(rng, kw, exc, match):
    with pytest.raises(exc, match=match):
        _chunk(rng, **kw)


def test_chunk_kda_varlen_validation_like_fla(rng):
    inputs = make_inputs(rng, B=2, T=8, H=1, K=16, V=16)
    with pytest.raises(ValueError, match="batch size"):
        flash_kda.chunk_kda(**inputs, cu_seqlens=np.array([0, 8], np.int64))
    inputs = make_inputs(rng, B=1, T=8, H=1, K=16, V=16)
    with pytest.raises(ValueError, match="one state per sequence"):
        flash_kda.chunk_kda(**inputs, cu_seqlens=np.array([0, 3, 8], np.int64),
                            initial_state=np.zeros((3, 1, 16, 16), np.float32))


def test_chunk_kda_shape_errors_come_from_c(rng):
    inputs = make_inputs(rng, B=1, T=8, H=2, K=16, V=16)
    inputs["beta"] = inputs["beta"][:, :, :1]
    with pytest.raises(ValueError, match=r"^beta: expected shape \[B, T, HV\]"):
        flash_kda.chunk_kda(**inputs)


# ---- fused_recurrent_kda -------------------------------------------------------------------------


def test_fused_recurrent_kda_matches_numpy_and_leaves_h0(rng):
    B, T, H, HV, K, V = 2, 5, 1, 2, 16, 16
    inputs = make_inputs(rng, B=B, T=T, H=H, HV=HV, K=K, V=V)
    A_log, dt_bias = gate_params(rng, HV, K)
    h0 = rng.standard_normal((B, HV, K, V)).astype(np.float32)
    h0_before = h0.copy()
    o, ht = flash_kda.fused_recurrent_kda(**inputs, A_log=A_log, dt_bias=dt_bias.reshape(-1),
                                          initial_state=h0, output_final_state=True,
                                          use_qk_l2norm_in_kernel=True, use_gate_in_kernel=True,
                                          use_beta_sigmoid_in_kernel=True, lower_bound=-5.0)
    np.testing.assert_array_equal(h0, h0_before)  # not in place
    assert ht is not h0 and ht.dtype == np.float32
    o_np, s_np = kda(**inputs, initial_state=h0, A_log=A_log, dt_bias=dt_bias, **NP_SAFE)
    assert rel_err(o, o_np) < bar_for(inputs, o) and rel_err(ht, s_np) < bar_for(inputs, ht)
    o2, ht2 = flash_kda.fused_recurrent_kda(**inputs, A_log=A_log, dt_bias=dt_bias,
                                            initial_state=h0, use_qk_l2norm_in_kernel=True,
                                            use_gate_in_kernel=True,
                                            use_beta_sigmoid_in_kernel=True, lower_bound=-5.0)
    assert ht2 is None
    np.testing.assert_array_equal(o2, o)


def test_fused_recurrent_kda_zero_state_and_varlen_v_first(rng):
    cu = np.array([0, 2, 2, 6], np.int64)
    inputs = make_inputs(rng, B=1, T=6, H=2, K=16, V=8)
    A_log, dt_bias = gate_params(rng, 2, 16)
    o, ht = flash_kda.fused_recurrent_kda(**inputs, A_log=A_log, dt_bias=dt_bias,
                                          output_final_state=True, use_gate_in_kernel=True,
                                          use_beta_sigmoid_in_kernel=True, state_v_first=True,
                                          cu_seqlens=cu)
    assert ht.shape == (3, 2, 8, 16)
    o_np, s_np = kda(**inputs, cu_seqlens=cu, state_v_first=True, gate="softplus", A_log=A_log,
                     dt_bias=dt_bias, beta_sigmoid=True)
    assert rel_err(o, o_np) < bar_for(inputs, o) and rel_err(ht, s_np) < bar_for(inputs, ht)
    assert (ht[1] == 0).all()


def test_fused_recurrent_kda_validation_like_fla(rng):
    inputs = make_inputs(rng, B=2, T=2, H=1, K=16, V=16)
    with pytest.raises(ValueError, match="batch size"):
        flash_kda.fused_recurrent_kda(**inputs, cu_seqlens=np.array([0, 2], np.int64))
    with pytest.raises(ValueError, match="use_beta_sigmoid_in_kernel"):
        flash_kda.fused_recurrent_kda(**inputs, allow_neg_eigval=True)
    with pytest.raises(ValueError, match="transpose_state_layout"):
        flash_kda.fused_recurrent_kda(**inputs, state_v_first=True, transpose_state_layout=True)
    with pytest.raises(ValueError, match="A_log: is required by the softplus gate"):
        flash_kda.fused_recurrent_kda(**inputs, use_gate_in_kernel=True)
    with pytest.raises(NotImplementedError, match="per-value-channel beta"):
        flash_kda.fused_recurrent_kda(**dict(inputs, beta=inputs["v"].copy()))


def test_fused_recurrent_kda_warns_about_pool_keywords(rng):
    inputs = make_inputs(rng, B=1, T=1, H=1, K=16, V=16)
    h0 = np.zeros((1, 1, 16, 16), np.float32)
    with pytest.warns(UserWarning, match="ssm_state_indices"):
        flash_kda.fused_recurrent_kda(**inputs, initial_state=h0,
                                      ssm_state_indices=np.zeros(1, np.int32))
    assert (h0 == 0).all()


def test_fused_recurrent_kda_transpose_state_layout(rng):
    inputs = make_inputs(rng, B=1, T=3, H=1, K=16, V=8)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        _, ht = flash_kda.fused_recurrent_kda(**inputs, output_final_state=True,
                                              transpose_state_layout=True)
    assert any(issubclass(x.category, DeprecationWarning) for x in w)
    assert ht.shape == (1, 1, 8, 16)


# ---- fused_recurrent_kda_fwd (vLLM's in-place pool decode) ---------------------------------------


VLLM = dict(use_qk_l2norm_in_kernel=True, use_gate_in_kernel=True,
            use_beta_sigmoid_in_kernel=True, lower_bound=-5.0)


def test_fwd_inplace_pool_1d_indices_negative_skips(rng):
    N, H, K, V, P = 4, 2, 16, 16, 6
    inputs = make_inputs(rng, B=N, T=1, H=H, K=K, V=V)
    A_log, dt_bias = gate_params(rng, H, K)
    pool = rng.standard_normal((P, H, K, V)).astype(np.float32)
    before = pool.copy()
    idx = np.array([3, -1, 0, 5], np.int32)
    out, state = flash_kda.fused_recurrent_kda_fwd(**inputs, A_log=A_log,
                                                   dt_bias=dt_bias.reshape(-1),
                                                   initial_state=pool, ssm_state_indices=idx,
                                                   **VLLM)
    assert state is pool
    o_np, p_np = decode_pool(**inputs, pool=before, state_indices=idx, A_log=A_log,
                             dt_bias=dt_bias, **NP_SAFE)
    assert rel_err(out, o_np) < bar_for(inputs, out) and rel_err(pool, p_np) < bar_for(inputs, pool)
    assert (out[1] == 0).all()
    for slot in (1, 2, 4):
        np.testing.assert_array_equal(pool[slot], before[slot])


def test_fwd_inplace_2d_indices_accepted_tokens_and_out(rng):
    N, T, H, K, V, P = 2, 3, 1, 16, 16, 8
    inputs = make_inputs(rng, B=N, T=T, H=H, K=K, V=V)
    A_log, dt_bias = gate_params(rng, H, K)
    pool = rng.standard_normal((P, H, K, V)).astype(np.float32)
    before = pool.copy()
    idx = np.array([[0, 1, 2], [3, 4, -1]], np.int64)
    acc = np.array([3, 2], np.int32)
    out = poison(inputs["v"].shape)
    ret_out, _ = flash_kda.fused_recurrent_kda_fwd(**inputs, A_log=A_log, dt_bias=dt_bias,
                                                   initial_state=pool, ssm_state_indices=idx,
                                                   num_accepted_tokens=acc, out=out,
                                                   state_v_first=False, **VLLM)
    assert ret_out is out
    o_np, p_np = decode_pool(**inputs, pool=before, state_indices=idx, num_accepted_tokens=acc,
                             A_log=A_log, dt_bias=dt_bias, **NP_SAFE)
    assert rel_err(out, o_np) < bar_for(inputs, out) and rel_err(pool, p_np) < bar_for(inputs, pool)
    np.testing.assert_array_equal(pool[5:], before[5:])


def test_fwd_inplace_without_indices_and_v_first(rng):
    N, H, K, V = 3, 1, 16, 8
    inputs = make_inputs(rng, B=N, T=1, H=H, K=K, V=V)
    pool = rng.standard_normal((N, H, V, K)).astype(np.float32)
    before = pool.copy()
    out, state = flash_kda.fused_recurrent_kda_fwd(**inputs, initial_state=pool, state_v_first=True)
    assert state is pool
    o_np, p_np = decode_pool(**inputs, pool=before, state_v_first=True)
    assert out.shape == inputs["v"].shape
    assert rel_err(out, o_np) < bar_for(inputs, out)
    assert rel_err(pool, p_np) < bar_for(inputs, pool)


def test_fwd_not_in_place(rng):
    # fla's defaults (no norm, no sigmoid, g the log decay) on the inputs they expect: unit keys,
    # beta in (0, 1), a decaying gate. The error bars assume a contracting delta rule; randn keys
    # and gates grow rounding errors by |1 - beta |k|^2| per token and failed the bar on some seeds.
    inputs = make_inputs(rng, B=2, T=3, H=1, K=16, V=16)
    inputs["k"] /= np.linalg.norm(inputs["k"], axis=-1, keepdims=True)
    inputs["g"] = log_decay(rng, inputs["g"].shape)
    inputs["beta"] = rng.uniform(0.0, 1.0, inputs["beta"].shape).astype(np.float32)
    h0 = rng.standard_normal((2, 1, 16, 16)).astype(np.float32)
    before = h0.copy()
    out, ht = flash_kda.fused_recurrent_kda_fwd(**inputs, initial_state=h0,
                                                inplace_final_state=False,
                                                output_final_state=True)
    np.testing.assert_array_equal(h0, before)
    o_np, s_np = kda(**inputs, initial_state=h0)
    assert rel_err(out, o_np) < bar_for(inputs, out) and rel_err(ht, s_np) < bar_for(inputs, ht)
    _, none = flash_kda.fused_recurrent_kda_fwd(**inputs, initial_state=h0,
                                                inplace_final_state=False)
    assert none is None


def test_fwd_errors(rng):
    inputs = make_inputs(rng, B=2, T=1, H=1, K=16, V=16)
    with pytest.raises(ValueError, match="initial_state: is required"):
        flash_kda.fused_recurrent_kda_fwd(**inputs)
    with pytest.raises(ValueError, match="out: expected the shape of v"):
        flash_kda.fused_recurrent_kda_fwd(**inputs, initial_state=np.zeros((2, 1, 16, 16),
                                                                              np.float32),
                                          out=np.zeros((2, 1, 1, 8), np.float32))
    with pytest.raises(NotImplementedError, match="ssm_state_indices"):
        flash_kda.fused_recurrent_kda_fwd(**inputs, inplace_final_state=False,
                                          ssm_state_indices=np.zeros(2, np.int32))
    pool = np.zeros((2, 1, 16, 16), np.float32)
    with pytest.raises(ValueError, match=r"^state_indices: entry \[1, 0\] = 2 is outside the pool"):
        flash_kda.fused_recurrent_kda_fwd(**inputs, initial_state=pool,
                                          ssm_state_indices=np.array([0, 2], np.int32))
    with pytest.raises(ValueError, match="^num_accepted_tokens: needs 2-D state_indices"):
        flash_kda.fused_recurrent_kda_fwd(**inputs, initial_state=pool,
                                          ssm_state_indices=np.array([0, 1], np.int32),
                                          num_accepted_tokens=np.array([1, 1], np.int32))
    assert (pool == 0).all()

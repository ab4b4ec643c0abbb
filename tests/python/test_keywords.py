"""Keywords: every one fla passes is taken, any other raises ArgumentTypeError naming it.

fla's chunk_kda and fused_recurrent_kda take **kwargs and ignore what they do not read, so a typo
(use_qk_l2norm for use_qk_l2norm_in_kernel) would run without the norm. flash_kda refuses it
before anything is written; the keywords fla reads from **kwargs stay accepted.
"""

import inspect
import warnings

import numpy as np
import pytest

import flash_kda
from helpers import gate_params, log_decay, make_inputs, poison

B, T, H, K, V = 1, 9, 2, 16, 16
REFUSED = (flash_kda.ArgumentTypeError, flash_kda.FlashKDAError, TypeError)


def token_inputs(rng):
    kw = make_inputs(rng, B=B, T=T, H=H, K=K, V=V)
    kw["g"] = log_decay(rng, (B, T, H, K))
    kw["beta"] = rng.uniform(0.1, 0.9, (B, T, H)).astype(np.float32)
    return kw


def assert_refused(exc_info, name, function, suggestion=None):
    e = exc_info.value
    assert all(isinstance(e, cls) for cls in REFUSED)
    message = str(e)
    assert message.startswith(f"{name}: is not a keyword of flash_kda.{function}"), message
    if suggestion is None:
        assert "did you mean" not in message
    else:
        assert message.endswith(f"did you mean {suggestion!r}?"), message


# ---- refused: typos and unknown names --------------------------------------------------------


@pytest.mark.parametrize("function, typo, suggestion", [
    ("chunk_kda", "use_qk_l2norm", "use_qk_l2norm_in_kernel"),
    ("chunk_kda", "use_gate_in_kernal", "use_gate_in_kernel"),
    ("chunk_kda", "A_logs", "A_log"),
    ("chunk_kda", "chunksize", "chunk_size"),
    ("fused_recurrent_kda", "use_qk_l2norm", "use_qk_l2norm_in_kernel"),
    ("fused_recurrent_kda", "dtbias", "dt_bias"),
    ("fused_recurrent_kda_fwd", "ssm_state_indice", "ssm_state_indices"),
    ("fused_recurrent_kda_fwd", "num_accepted_token", "num_accepted_tokens"),
    ("fused_recurrent_kda_fwd", "use_qk_l2norm", "use_qk_l2norm_in_kernel"),
])
def test_fla_entry_points_refuse_a_typo(rng, function, typo, suggestion):
    kw = token_inputs(rng)
    pool = rng.standard_normal((B, H, K, V)).astype(np.float32)
    before = pool.copy()
    out = poison((B, T, H, V))
    extra = dict(initial_state=pool, out=out) if function == "fused_recurrent_kda_fwd" else {}
    with pytest.raises(TypeError) as exc_info:
        getattr(flash_kda, function)(**kw, **extra, **{typo: True})
    assert_refused(exc_info, typo, function, suggestion)
    np.testing.assert_array_equal(pool, before)  # the in-place pool is untouched
    assert np.isnan(out).all()  # and so is out


def test_unknown_keyword_without_a_close_name(rng):
    with pytest.raises(TypeError) as exc_info:
        flash_kda.chunk_kda(**token_inputs(rng), frobnicate=1)
    assert_refused(exc_info, "frobnicate", "chunk_kda")


def test_several_unknown_keywords_are_all_named(rng):
    with pytest.raises(flash_kda.ArgumentTypeError, match=r"^foo: .* \(and 1 more: 'bar'\)$"):
        flash_kda.chunk_kda(**token_inputs(rng), foo=1, bar=2)


def test_public_fused_recurrent_refuses_out(rng):
    # out is a keyword of fla's fused_recurrent_kda_fwd only; the public function would drop it.
    out = poison((B, T, H, V))
    with pytest.raises(TypeError) as exc_info:
        flash_kda.fused_recurrent_kda(**token_inputs(rng), out=out)
    assert_refused(exc_info, "out", "fused_recurrent_kda")
    assert np.isnan(out).all()


@pytest.mark.parametrize("function", ["prefill", "decode"])
@pytest.mark.parametrize("typo, suggestion", [
    ("use_qk_l2norm_in_kernel", "use_qk_l2norm"),  # fla's name given to the low-level API
    ("state_indice", "state_indices"),
    ("num_thread", "num_threads"),
    ("zzz", None),
])
def test_prefill_and_decode_refuse_unknown_keywords(rng, function, typo, suggestion):
    kw = token_inputs(rng)
    out = poison((B, T, H, V))
    pool = rng.standard_normal((B, H, K, V)).astype(np.float32)
    before = pool.copy()
    args = (pool,) if function == "decode" else ()
    if suggestion == "state_indices" and function == "prefill":
        suggestion = "final_state_indices"  # prefill's closest pool keyword
    with pytest.raises(TypeError) as exc_info:
        getattr(flash_kda, function)(*kw.values(), *args, out=out, **{typo: 1})
    assert_refused(exc_info, typo, function, suggestion)
    assert np.isnan(out).all()
    np.testing.assert_array_equal(pool, before)


# ---- accepted: every keyword fla passes ------------------------------------------------------


def test_chunk_kda_takes_the_keywords_fla_reads_from_kwargs(rng):
    kw = make_inputs(rng, B=B, T=T, H=H, K=K, V=V)
    A_log, dt_bias = gate_params(rng, H, K)
    safe = dict(use_gate_in_kernel=True, use_qk_l2norm_in_kernel=True,
                use_beta_sigmoid_in_kernel=True, safe_gate=True, lower_bound=-5.0)
    o_ref, s_ref = flash_kda.chunk_kda(**kw, A_log=A_log, dt_bias=dt_bias, **safe,
                                       output_final_state=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        o, s = flash_kda.chunk_kda(**kw, A_log=A_log, dt_bias=dt_bias, chunk_size=32,
                                   transpose_state_layout=False, **safe, output_final_state=True)
    np.testing.assert_array_equal(o, o_ref)
    np.testing.assert_array_equal(s, s_ref)


def test_chunk_kda_gate_parameters_without_the_gate_are_ignored_as_in_fla(rng):
    kw = token_inputs(rng)
    A_log, dt_bias = gate_params(rng, H, K)
    o_ref, _ = flash_kda.chunk_kda(**kw)
    o, _ = flash_kda.chunk_kda(**kw, A_log=A_log, dt_bias=dt_bias)
    np.testing.assert_array_equal(o, o_ref)


def test_fused_recurrent_kda_fwd_takes_what_vllm_passes(rng):
    # vLLM's call: in-place pool, 1-D slot indices, accepted-token counts absent, varlen.
    kw = {n: x.reshape(1, B * T, *x.shape[2:]) for n, x in token_inputs(rng).items()}
    pool = rng.standard_normal((3, H, K, V)).astype(np.float32)
    out, state = flash_kda.fused_recurrent_kda_fwd(
        **kw, A_log=None, dt_bias=None, initial_state=pool, scale=K ** -0.5,
        output_final_state=True, inplace_final_state=True, cu_seqlens=np.array([0, T]),
        ssm_state_indices=np.array([2], np.int32), num_accepted_tokens=None,
        use_qk_l2norm_in_kernel=True, use_gate_in_kernel=False, out=None)
    assert state is pool and out.shape == (1, B * T, H, V) and np.isfinite(out).all()


def test_fwd_keeps_flashkda_signature():
    params = list(inspect.signature(flash_kda.fwd).parameters.values())
    assert [(p.name, p.default) for p in params] == [
        ("q", inspect.Parameter.empty), ("k", inspect.Parameter.empty),
        ("v", inspect.Parameter.empty), ("g", inspect.Parameter.empty),
        ("beta", inspect.Parameter.empty), ("scale", inspect.Parameter.empty),
        ("out", inspect.Parameter.empty), ("A_log", inspect.Parameter.empty),
        ("dt_bias", inspect.Parameter.empty), ("lower_bound", inspect.Parameter.empty),
        ("initial_state", None), ("final_state", None), ("cu_seqlens", None),
        ("checkpoint_state", None), ("checkpoint_offsets", None)]
    # FlashKDA's thirteen stay positional; vLLM's fork's checkpoint arguments are keyword-only.
    assert all(p.kind is p.POSITIONAL_OR_KEYWORD for p in params[:13])
    assert all(p.kind is p.KEYWORD_ONLY for p in params[13:])

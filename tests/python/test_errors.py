"""Bad arguments: the right exception, the C library's message verbatim, and nothing written.

Each case starts from a valid call with outputs full of NaN (or a pool of known values), breaks
one argument, and checks the exception class, the start of its message (the argument's name and
what was expected), and that every output is still exactly as it was.
"""

import numpy as np
import pytest

import flash_kda
from flash_kda import errors
from helpers import gate_params, make_inputs, poison

SAFE = dict(gate="lower_bound", lower_bound=-5.0, use_qk_l2norm=True, use_beta_sigmoid=True)
B, T, H, K, V = 1, 12, 2, 16, 16


def prefill_call(rng):
    kw = make_inputs(rng, B=B, T=T, H=H, K=K, V=V)
    A_log, dt_bias = gate_params(rng, H, K)
    kw.update(out=poison((B, T, H, V)), final_state=poison((B, H, K, V)), A_log=A_log,
              dt_bias=dt_bias, initial_state=np.ones((B, H, K, V), np.float32), **SAFE)
    return kw


def overlapping_out():
    base = np.full(T * H * V, np.nan, np.float32)
    return np.lib.stride_tricks.as_strided(base, (B, T, H, V), (0, 4 * V, 0, 4))


def varlen(kw, cu):
    return dict(kw, cu_seqlens=np.array(cu, np.int64))


def read_only(x):
    x = x.copy()
    x.flags.writeable = False
    return x


def negative_stride(x):
    return x[:, ::-1]


# (id, mutation of the valid keyword arguments, exception, message regex from the start)
PREFILL_CASES = [
    ("q_3d", lambda kw: dict(kw, q=kw["q"][0]), ValueError, r"q: expected 4 dimensions"),
    ("k_shape", lambda kw: dict(kw, k=kw["k"][:, :5]), ValueError, r"k: expected shape"),
    ("k_dtype", lambda kw: dict(kw, k=kw["k"].astype(np.float16)), TypeError,
     r"k: dtype float16 differs from q's float32"),
    ("q_float64", lambda kw: dict(kw, q=kw["q"].astype(np.float64)), TypeError,
     r"q: NumPy dtype float64 is not supported"),
    ("q_int32", lambda kw: dict(kw, q=kw["q"].astype(np.int32)), TypeError,
     r"q: dtype int32 is not accepted"),
    ("g_int64", lambda kw: dict(kw, g=kw["g"].astype(np.int64)), TypeError,
     r"g: dtype int64 is not accepted"),
    ("v_heads", lambda kw: dict(kw, v=np.zeros((B, T, 3, V), np.float32),
                                out=poison((B, T, 3, V))), ValueError,
     r"v: HV = 3 value heads must be a positive multiple of H = 2"),
    ("K_too_big", lambda kw: dict(kw, q=np.zeros((B, T, H, 300), np.float32)), ValueError,
     r"q: K = 300"),
    ("beta_shape", lambda kw: dict(kw, beta=kw["beta"][..., :1]), ValueError,
     r"beta: expected shape \[B, T, HV\]"),
    ("out_shape", lambda kw: dict(kw, out=poison((B, T, H, V + 1))), ValueError,
     r"out: expected shape"),
    ("out_dtype", lambda kw: dict(kw, out=poison((B, T, H, V), np.float16)), TypeError,
     r"out: dtype float16 differs from v's float32"),
    ("out_read_only", lambda kw: dict(kw, out=read_only(kw["out"])),
     ValueError, r"out: is read-only, but it is an output"),
    ("out_overlaps_itself", lambda kw: dict(kw, out=overlapping_out()), ValueError,
     r"out: its strides make elements overlap"),
    ("out_aliases_q", lambda kw: dict(kw, out=kw["q"]), ValueError,
     r"out: shares memory with q"),
    ("final_read_only", lambda kw: dict(kw, final_state=read_only(kw["final_state"])), ValueError,
     r"final_state: is read-only"),
    ("final_shape", lambda kw: dict(kw, final_state=poison((B, H, V, K + 1))), ValueError,
     r"final_state: expected shape \[N, HV, K, V\]"),
    ("initial_shape_v_first", lambda kw: dict(kw, initial_state=np.zeros((B, H, K, V + 2),
                                                                         np.float32)),
     ValueError, r"initial_state: expected shape"),
    ("initial_dtype", lambda kw: dict(kw, initial_state=np.zeros((B, H, K, V), np.float16)),
     TypeError, r"initial_state: dtype float16 is not accepted; expected float32 or bfloat16"),
    ("cu_start", lambda kw: varlen(kw, [1, 5, T]), ValueError, r"cu_seqlens: must start at 0"),
    ("cu_decreasing", lambda kw: varlen(kw, [0, 6, 4, T]), ValueError,
     r"cu_seqlens: must not decrease"),
    ("cu_end", lambda kw: varlen(kw, [0, 5, T - 1]), ValueError, r"cu_seqlens: must end at T"),
    ("cu_float", lambda kw: dict(kw, cu_seqlens=np.array([0, T], np.float32)), TypeError,
     r"cu_seqlens: dtype float32 is not accepted"),
    ("cu_2d", lambda kw: dict(kw, cu_seqlens=np.array([[0, T]], np.int64)), ValueError,
     r"cu_seqlens: expected 1 dimension"),
    ("lower_bound_positive", lambda kw: dict(kw, lower_bound=0.5), ValueError,
     r"options\.lower_bound: 0\.5 is out of range"),
    ("lower_bound_nan", lambda kw: dict(kw, lower_bound=float("nan")), ValueError,
     r"options\.lower_bound: nan is out of range"),
    ("lower_bound_missing", lambda kw: dict(kw, lower_bound=None), ValueError,
     r"lower_bound: is required by gate='lower_bound'"),
    ("A_log_missing_softplus", lambda kw: dict(kw, gate="softplus", A_log=None), ValueError,
     r"A_log: is required by the softplus gate"),
    ("A_log_shape", lambda kw: dict(kw, A_log=np.zeros(H + 1, np.float32)), ValueError,
     r"A_log: expected shape \[HV\]"),
    ("dt_bias_shape", lambda kw: dict(kw, dt_bias=np.zeros((H, K + 1), np.float32)), ValueError,
     r"dt_bias: expected shape"),
    ("neg_eig_without_sigmoid", lambda kw: dict(kw, use_beta_sigmoid=False,
                                                allow_neg_eigval=True), ValueError,
     r"options\.allow_neg_eigval: needs options\.use_beta_sigmoid"),
    ("scale_nan", lambda kw: dict(kw, scale=float("inf")), ValueError,
     r"options\.scale: must be finite"),
    ("scale_zero", lambda kw: dict(kw, scale=0), ValueError, r"scale: 0 is not supported"),
    ("scale_string", lambda kw: dict(kw, scale="0.1"), TypeError, r"scale: expected a real"),
    ("gate_name", lambda kw: dict(kw, gate="sigmoid"), ValueError, r"gate: 'sigmoid'"),
    ("last_dim_strided", lambda kw: dict(kw, q=np.zeros((B, T, H, 2 * K), np.float32)[..., ::2]),
     ValueError, r"q: the last dimension must be contiguous"),
    ("negative_stride", lambda kw: dict(kw, k=negative_stride(kw["k"])), ValueError,
     r"k: stride -\d+ of dimension 1 is not supported"),
    ("five_dims", lambda kw: dict(kw, g=kw["g"][None]), ValueError, r"g: has 5 dimensions"),
    ("list_input", lambda kw: dict(kw, v=kw["v"].tolist()), TypeError,
     r"v: expected a NumPy array or a torch tensor, got builtins\.list"),
    ("q_none", lambda kw: dict(kw, q=None), TypeError, r"q: is required, got None"),
    ("threads_negative", lambda kw: dict(kw, num_threads=-1), ValueError,
     r"device\.num_threads: -1"),
    ("threads_float", lambda kw: dict(kw, num_threads=1.5), TypeError, r"num_threads"),
]


@pytest.mark.parametrize("case", PREFILL_CASES, ids=[c[0] for c in PREFILL_CASES])
def test_prefill_bad_argument(rng, case):
    _, mutate, exc, pattern = case
    kw = mutate(prefill_call(rng))
    outputs = {n: kw[n].copy() for n in ("out", "final_state") if isinstance(kw[n], np.ndarray)}
    with pytest.raises(exc, match="^" + pattern) as info:
        flash_kda.prefill(**kw)
    assert isinstance(info.value, flash_kda.FlashKDAError)  # from C or from Python alike
    if exc is ValueError:
        assert not isinstance(info.value, TypeError)
    for name, before in outputs.items():
        np.testing.assert_array_equal(kw[name], before, err_msg=f"{name} was written")


def pool_call(rng, N=3, P=5):
    kw = make_inputs(rng, B=N, T=1, H=H, K=K, V=V)
    kw.update(out=poison((N, 1, H, V)), state_pool=np.arange(P * H * K * V, dtype=np.float32)
              .reshape(P, H, K, V), **SAFE)
    return kw


DECODE_CASES = [
    ("pool_missing", lambda kw: dict(kw, state_pool=None), TypeError,
     r"state_pool: is required, got None"),
    ("pool_read_only", lambda kw: dict(kw, state_pool=read_only(kw["state_pool"])),
     ValueError, r"state_pool: is read-only"),
    ("pool_dtype", lambda kw: dict(kw, state_pool=kw["state_pool"].astype(np.float16)),
     TypeError, r"state_pool: dtype float16 is not accepted"),
    ("pool_too_small", lambda kw: dict(kw, state_pool=kw["state_pool"][:2]), ValueError,
     r"state_pool: has 2 slots, but without state_indices"),
    ("index_outside_pool", lambda kw: dict(kw, state_indices=np.array([0, 5, 1], np.int32)),
     ValueError, r"state_indices: entry \[1, 0\] = 5 is outside the pool of 5 slots"),
    ("index_dtype", lambda kw: dict(kw, state_indices=np.array([0, 1, 2], np.float32)),
     TypeError, r"state_indices: dtype float32 is not accepted"),
    ("index_shape", lambda kw: dict(kw, state_indices=np.array([0, 1], np.int64)), ValueError,
     r"state_indices: expected shape \[N\]"),
    ("accepted_without_2d", lambda kw: dict(kw, state_indices=np.array([0, 1, 2], np.int64),
                                            num_accepted_tokens=np.ones(3, np.int64)),
     ValueError, r"num_accepted_tokens: needs 2-D state_indices"),
    ("accepted_zero", lambda kw: dict(kw, state_indices=np.array([[0, 1], [2, 3], [4, -1]]),
                                      num_accepted_tokens=np.array([1, 0, 1])), ValueError,
     r"num_accepted_tokens: entry \[1\] = 0; expected 1 to 2"),
    ("pool_aliases_out", lambda kw: dict(kw, out=kw["state_pool"][:3, :, :1].reshape(
        3, 1, H, V)), ValueError, r"state_pool: shares memory with out"),
]


@pytest.mark.parametrize("case", DECODE_CASES, ids=[c[0] for c in DECODE_CASES])
def test_decode_bad_argument(rng, case):
    _, mutate, exc, pattern = case
    kw = mutate(pool_call(rng))
    outputs = {n: kw[n].copy() for n in ("out", "state_pool") if isinstance(kw[n], np.ndarray)}
    with pytest.raises(exc, match="^" + pattern) as info:
        flash_kda.decode(**kw)
    assert isinstance(info.value, flash_kda.FlashKDAError)
    for name, before in outputs.items():
        np.testing.assert_array_equal(kw[name], before, err_msg=f"{name} was written")


def test_2d_indices_too_few_columns(rng):
    kw = make_inputs(rng, B=2, T=3, H=H, K=K, V=V)
    pool = np.zeros((6, H, K, V), np.float32)
    with pytest.raises(ValueError, match=r"^state_indices: has 2 columns, fewer than the T = 3"):
        flash_kda.decode(**kw, state_pool=pool, state_indices=np.zeros((2, 2), np.int32))


def test_exception_classes_and_status():
    e = errors.error_for_status(1, "q: dtype float64 is not accepted; expected float32")
    assert isinstance(e, TypeError) and isinstance(e, errors.FlashKDAError) and e.status == 1
    e = errors.error_for_status(1, "q: expected 4 dimensions")
    assert isinstance(e, ValueError) and not isinstance(e, TypeError)
    e = errors.error_for_status(2, "prefill on CUDA: K = 64 is not supported yet")
    assert isinstance(e, ValueError) and isinstance(e, NotImplementedError)
    assert str(e) == "prefill on CUDA: K = 64 is not supported yet"
    assert isinstance(errors.error_for_status(3, "workspace: ..."), ValueError)
    assert isinstance(errors.error_for_status(4, "cuda: ..."), RuntimeError)
    assert isinstance(errors.error_for_status(5, "..."), MemoryError)
    assert isinstance(errors.error_for_status(6, "..."), RuntimeError)


def test_message_is_the_c_message_verbatim(rng):
    from flash_kda import _native
    kw = prefill_call(rng)
    kw["beta"] = kw["beta"][..., :1]
    with pytest.raises(ValueError) as info:
        flash_kda.prefill(**kw)
    assert str(info.value) == _native.last_error()
    assert info.value.status == _native.FKDA_ERROR_INVALID_ARGUMENT


def test_mixed_devices_are_refused_before_the_call():
    # The device check is pure Python (CUDA tensors themselves are tested in tests/gpu).
    from flash_kda._tensors import CPU, Location, resolve_location
    assert resolve_location([("q", CPU), ("k", CPU)]) == CPU
    assert resolve_location([("q", Location("cuda", 1)), ("k", Location("cuda", 1))]).index == 1
    with pytest.raises(ValueError, match=r"^k: is on cpu but q is on cuda:0; mixed CPU and CUDA"):
        resolve_location([("q", Location("cuda", 0)), ("k", CPU)])
    with pytest.raises(ValueError, match=r"^out: is on cuda:1 but q is on cuda:0; every tensor"):
        resolve_location([("q", Location("cuda", 0)), ("out", Location("cuda", 1))])

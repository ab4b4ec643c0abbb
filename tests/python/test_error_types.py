"""Every error raised for bad input is a FlashKDAError, and shape messages state the rule.

The C library's errors are mapped in errors.py (test_errors.py covers them); these cases are the
ones the Python layer raises itself (a float64 array, an object that is not an array, a bad
option of an fla entry point), which must be caught by `except flash_kda.FlashKDAError` as well
as by the built-in class they always were. Every case also checks that nothing was written.
"""

import inspect
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

import flash_kda
from helpers import gate_params, make_inputs, poison

B, T, H, K, V = 1, 9, 2, 16, 16
SAFE = dict(gate="lower_bound", lower_bound=-5.0, use_qk_l2norm=True, use_beta_sigmoid=True)
FLA_SAFE = dict(use_gate_in_kernel=True, use_qk_l2norm_in_kernel=True,
                use_beta_sigmoid_in_kernel=True, safe_gate=True, lower_bound=-5.0)


@pytest.fixture
def call(rng):
    """Valid arguments of every entry point, with poisoned outputs and a pool of known values."""
    kw = make_inputs(rng, B=B, T=T, H=H, K=K, V=V)
    A_log, dt_bias = gate_params(rng, H, K)
    pool = rng.standard_normal((B, H, K, V)).astype(np.float32)
    return dict(kw=kw, A_log=A_log, dt_bias=dt_bias, out=poison((B, T, H, V)),
                final=poison((B, H, V, K)), pool=pool, pool_before=pool.copy())


def f64(x):
    return x.astype(np.float64)


# (id, call(c) that must fail, built-in class, message regex from the start)
CASES = [
    ("prefill_q_float64",
     lambda c: flash_kda.prefill(**dict(c["kw"], q=f64(c["kw"]["q"])), out=c["out"]),
     TypeError, r"q: NumPy dtype float64 is not supported"),
    ("decode_beta_float64",
     lambda c: flash_kda.decode(**dict(c["kw"], beta=f64(c["kw"]["beta"])), state_pool=c["pool"],
                                out=c["out"]),
     TypeError, r"beta: NumPy dtype float64 is not supported"),
    ("fwd_v_float64",
     lambda c: flash_kda.fwd(*dict(c["kw"], v=f64(c["kw"]["v"])).values(), None, c["out"],
                             c["A_log"], c["dt_bias"], -5.0, final_state=c["final"]),
     TypeError, r"v: NumPy dtype float64 is not supported"),
    ("chunk_kda_g_float64",
     lambda c: flash_kda.chunk_kda(**dict(c["kw"], g=f64(c["kw"]["g"])), A_log=c["A_log"],
                                   **FLA_SAFE),
     TypeError, r"g: NumPy dtype float64 is not supported"),
    ("chunk_kda_initial_state_float64",
     lambda c: flash_kda.chunk_kda(**c["kw"], initial_state=f64(c["pool"])),
     TypeError, r"initial_state: dtype float64 is not accepted"),
    ("fused_fwd_pool_float64",
     lambda c: flash_kda.fused_recurrent_kda_fwd(**c["kw"], initial_state=f64(c["pool"]),
                                                 out=c["out"]),
     TypeError, r"state_pool: NumPy dtype float64 is not supported"),
    ("byte_swapped",
     lambda c: flash_kda.prefill(**dict(c["kw"], k=c["kw"]["k"].astype(">f4")), out=c["out"]),
     TypeError, r"k: NumPy dtype >f4 is not in native byte order"),
    ("q_is_a_list",
     lambda c: flash_kda.prefill(**dict(c["kw"], q=c["kw"]["q"].tolist()), out=c["out"]),
     TypeError, r"q: expected a NumPy array or a torch tensor, got builtins.list"),
    ("chunk_kda_v_is_a_list",
     lambda c: flash_kda.chunk_kda(**dict(c["kw"], v=c["kw"]["v"].tolist())),
     TypeError, r"v: expected a NumPy array or a torch tensor, got list"),
    ("scale_is_a_string",
     lambda c: flash_kda.prefill(**c["kw"], out=c["out"], scale="0.1"),
     TypeError, r"scale: expected a real number, got str"),
    ("scale_zero",
     lambda c: flash_kda.prefill(**c["kw"], out=c["out"], scale=0),
     ValueError, r"scale: 0 is not supported"),
    ("gate_unknown",
     lambda c: flash_kda.prefill(**c["kw"], out=c["out"], gate="sigmoid"),
     ValueError, r"gate: 'sigmoid'; expected one of"),
    ("gate_not_a_string",
     lambda c: flash_kda.prefill(**c["kw"], out=c["out"], gate=["lower_bound"]),
     ValueError, r"gate: \['lower_bound'\]; expected one of"),
    ("lower_bound_missing",
     lambda c: flash_kda.prefill(**c["kw"], out=c["out"], gate="lower_bound"),
     ValueError, r"lower_bound: is required by gate='lower_bound'"),
    ("flag_is_a_string",
     lambda c: flash_kda.prefill(**c["kw"], out=c["out"], use_qk_l2norm="False"),
     TypeError, r"use_qk_l2norm: expected a bool, got str 'False'"),
    ("chunk_kda_flag_is_a_string",
     lambda c: flash_kda.chunk_kda(**c["kw"], use_qk_l2norm_in_kernel="False"),
     TypeError, r"use_qk_l2norm_in_kernel: expected a bool, got str 'False'"),
    ("num_threads_float",
     lambda c: flash_kda.prefill(**c["kw"], out=c["out"], num_threads=1.5),
     TypeError, r"num_threads: expected an int, got float"),
    ("decode_pool_none",
     lambda c: flash_kda.decode(**c["kw"], state_pool=None, out=c["out"]),
     TypeError, r"state_pool: is required, got None"),
    ("too_many_dimensions",
     lambda c: flash_kda.prefill(**dict(c["kw"], q=c["kw"]["q"][None]), out=c["out"]),
     ValueError, r"q: has 5 dimensions; flash_kda tensors have at most 4"),
    ("odd_byte_stride",
     lambda c: flash_kda.prefill(**dict(c["kw"], beta=np.ndarray(
         (B, T, H), np.float32, np.zeros(2 * B * T * H * 4 + 64, np.uint8).data, 2,
         (T * H * 4 + 2, H * 4 + 2, 4))), out=c["out"]),
     ValueError, r"beta: NumPy byte stride \d+ is not a multiple of the 4-byte element"),
    ("fwd_out_none",
     lambda c: flash_kda.fwd(*c["kw"].values(), None, None, c["A_log"], c["dt_bias"], -5.0,
                             final_state=c["final"]),
     TypeError, r"out: is required"),
    ("fwd_lower_bound_none",
     lambda c: flash_kda.fwd(*c["kw"].values(), None, c["out"], c["A_log"], c["dt_bias"], None,
                             final_state=c["final"]),
     ValueError, r"lower_bound: is required"),
    ("chunk_kda_q_3d",
     lambda c: flash_kda.chunk_kda(**dict(c["kw"], q=c["kw"]["q"][0])),
     ValueError, r"q: expected 4 dimensions \[B, T, H, K\], got shape \[9, 2, 16\]"),
    ("chunk_kda_safe_lower_bound_string",
     lambda c: flash_kda.chunk_kda(**c["kw"], A_log=c["A_log"], **dict(FLA_SAFE,
                                                                     lower_bound="-5")),
     TypeError, r"lower_bound: expected a real number, got str"),
    ("chunk_kda_safe_lower_bound_range",
     lambda c: flash_kda.chunk_kda(**c["kw"], A_log=c["A_log"], **dict(FLA_SAFE,
                                                                     lower_bound=-6.0)),
     ValueError, r"lower_bound: -6.0 is outside the safe range \[-5, 0\)"),
    ("chunk_kda_initial_state_a_list",
     lambda c: flash_kda.chunk_kda(**c["kw"], initial_state=c["pool"].tolist()),
     TypeError, r"initial_state: expected a NumPy array or a torch tensor, got list"),
    ("fused_fwd_cu_seqlens_a_list",
     lambda c: flash_kda.fused_recurrent_kda_fwd(**c["kw"], inplace_final_state=False,
                                                 cu_seqlens=[0, T], out=c["out"]),
     TypeError, r"cu_seqlens: expected a NumPy array or a torch tensor, got list"),
    ("fused_fwd_cu_seqlens_2d",
     lambda c: flash_kda.fused_recurrent_kda_fwd(**c["kw"], inplace_final_state=False,
                                                 cu_seqlens=np.array([[0, T]]), out=c["out"]),
     ValueError, r"cu_seqlens: expected 1 dimension \[N \+ 1\], got shape \[1, 2\]"),
    ("chunk_kda_chunk_size",
     lambda c: flash_kda.chunk_kda(**c["kw"], chunk_size=16),
     ValueError, r"chunk_size: must be 32 or 64, got 16"),
    ("chunk_kda_max_num_seqs_float",
     lambda c: flash_kda.chunk_kda(**{n: x for n, x in c["kw"].items()}, use_graph=True,
                                   cu_seqlens=np.array([0, T]), max_num_seqs=1.0),
     TypeError, r"max_num_seqs: expected an int, got float"),
    ("chunk_kda_varlen_batch",
     lambda c: flash_kda.chunk_kda(**{n: np.concatenate([x, x]) for n, x in c["kw"].items()},
                                   cu_seqlens=np.array([0, T])),
     ValueError, r"cu_seqlens: a packed batch needs batch size 1"),
    ("chunk_kda_varlen_scalar_state",
     lambda c: flash_kda.chunk_kda(**c["kw"], cu_seqlens=np.array([0, T]),
                                   initial_state=np.zeros((), np.float32)),
     ValueError, r"initial_state: expected one state per sequence, 1 \(from cu_seqlens\), "
                 r"got shape \[\]"),
    ("chunk_kda_neg_eigval",
     lambda c: flash_kda.chunk_kda(**c["kw"], allow_neg_eigval=True),
     ValueError, r"allow_neg_eigval: True requires use_beta_sigmoid_in_kernel=True"),
    ("chunk_kda_transpose_and_v_first",
     lambda c: flash_kda.chunk_kda(**c["kw"], state_v_first=True, transpose_state_layout=True),
     ValueError, r"transpose_state_layout: cannot be given together with state_v_first"),
    ("fused_fwd_out_shape",
     lambda c: flash_kda.fused_recurrent_kda_fwd(**c["kw"], initial_state=c["pool"],
                                                 out=poison((B, T, H, V + 1))),
     ValueError, r"out: expected the shape of v \[1, 9, 2, 16\], got \[1, 9, 2, 17\]"),
    ("fused_fwd_pool_missing",
     lambda c: flash_kda.fused_recurrent_kda_fwd(**c["kw"], out=c["out"]),
     ValueError, r"initial_state: is required with inplace_final_state=True"),
    ("fused_fwd_state_shape",
     lambda c: flash_kda.fused_recurrent_kda_fwd(**c["kw"], inplace_final_state=False,
                                                 initial_state=np.zeros((B, H, K, V + 1),
                                                                        np.float32), out=c["out"]),
     ValueError, r"initial_state: expected shape \[N, HV, K, V\] = \[1, 2, 16, 16\], "
                 r"got \[1, 2, 16, 17\]"),
]


@pytest.mark.parametrize("make_call, builtin, pattern",
                         [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_python_layer_errors_are_flashkda_errors(call, make_call, builtin, pattern):
    with pytest.raises(flash_kda.FlashKDAError) as exc_info:
        make_call(call)
    e = exc_info.value
    assert isinstance(e, builtin), type(e).__mro__
    assert re.match(pattern, str(e)), str(e)
    assert e.status == flash_kda.InvalidArgumentError.status
    assert np.isnan(call["out"]).all() and np.isnan(call["final"]).all()
    np.testing.assert_array_equal(call["pool"], call["pool_before"])


def test_dtype_errors_are_dtype_errors(call):
    with pytest.raises(flash_kda.DTypeError):
        flash_kda.prefill(**dict(call["kw"], q=f64(call["kw"]["q"])), out=call["out"])


def test_no_bare_builtin_raise_in_the_package():
    # A bare `raise ValueError(...)` / `raise TypeError(...)` would escape
    # `except flash_kda.FlashKDAError`; the package raises the classes of flash_kda.errors.
    package = Path(flash_kda.__file__).parent
    bare = re.compile(r"raise (ValueError|TypeError|NotImplementedError|RuntimeError)\(")
    found = [f"{p.name}:{i}" for p in sorted(package.glob("*.py"))
             for i, line in enumerate(p.read_text().splitlines(), 1) if bare.search(line)]
    assert not found


# ---- shape messages: the rule and the actual values, never a -1 placeholder -------------------


def _message(fn):
    with pytest.raises(flash_kda.InvalidArgumentError) as exc_info:
        fn()
    return str(exc_info.value)


@pytest.mark.parametrize("case, expected", [
    ("v_tokens", "v: expected shape [B, T, HV, V] (B and T of q) = [1, 9, *, *], "
                 "got [1, 8, 2, 16]"),
    ("pool_V", "state_pool: expected shape [num_slots, HV, K, V] = [*, 2, 16, 16], "
               "got [3, 2, 16, 17]"),
    ("pool_v_first", "state_pool: expected shape [num_slots, HV, V, K] (state_v_first) = "
                     "[*, 2, 16, 16], got [3, 2, 17, 16]"),
    ("indices_2d", "state_indices: expected shape [N, T_max] (or [N]) = [1, *], got [2, 3]"),
    ("dt_bias_3d", "dt_bias: expected shape [HV, K] = [2, 16] or [HV * K] = [32], got [2, 16, 1]"),
    ("dt_bias_flat", "dt_bias: expected shape [HV, K] = [2, 16] or [HV * K] = [32], got [33]"),
    ("dt_bias_2d", "dt_bias: expected shape [HV, K] = [2, 16] or [HV * K] = [32], got [2, 17]"),
    ("final_state", "final_state: expected shape [N, HV, K, V] = [1, 2, 16, 16], "
                    "got [2, 2, 16, 16]"),
])
def test_shape_messages_state_the_rule(call, case, expected):
    kw, out, pool = call["kw"], call["out"], call["pool"]
    gate = dict(SAFE, A_log=call["A_log"])
    calls = {
        "v_tokens": lambda: flash_kda.prefill(**dict(kw, v=kw["v"][:, :8]), out=out),
        "pool_V": lambda: flash_kda.decode(**kw, state_pool=np.zeros((3, H, K, V + 1),
                                                                    np.float32), out=out),
        "pool_v_first": lambda: flash_kda.decode(**kw, state_pool=np.zeros((3, H, V + 1, K),
                                                                          np.float32),
                                                 out=out, state_v_first=True),
        "indices_2d": lambda: flash_kda.decode(**kw, state_pool=pool, out=out,
                                               state_indices=np.zeros((2, 3), np.int64)),
        "dt_bias_3d": lambda: flash_kda.prefill(**kw, out=out, **gate,
                                                dt_bias=np.zeros((H, K, 1), np.float32)),
        "dt_bias_flat": lambda: flash_kda.prefill(**kw, out=out, **gate,
                                                  dt_bias=np.zeros(H * K + 1, np.float32)),
        "dt_bias_2d": lambda: flash_kda.prefill(**kw, out=out, **gate,
                                                dt_bias=np.zeros((H, K + 1), np.float32)),
        "final_state": lambda: flash_kda.prefill(**kw, out=out,
                                                 final_state=poison((2, H, K, V))),
    }
    message = _message(calls[case])
    assert message == expected
    assert "-1" not in message
    assert np.isnan(out).all()
    np.testing.assert_array_equal(pool, call["pool_before"])


# ---- any argument, any junk: a FlashKDAError or a result, never another exception -------------

JUNK = [None, "x", 1.5, -3, True, [1, 2], {"a": 1}, object(), np.float32(2.0), np.zeros(()),
        np.zeros(3), np.zeros(2, np.int64), np.zeros((1, 2, 3, 4, 5), np.float32)]


def _valid_calls():
    A_log, dt_bias = np.zeros(H, np.float32), np.zeros((H, K), np.float32)
    return {
        "prefill": dict(gate="lower_bound", lower_bound=-5.0, A_log=A_log, dt_bias=dt_bias),
        "decode": dict(state_pool=np.zeros((B, H, K, V), np.float32)),
        "chunk_kda": dict(use_gate_in_kernel=True, safe_gate=True, lower_bound=-5.0, A_log=A_log),
        "fused_recurrent_kda": dict(use_gate_in_kernel=True, lower_bound=-5.0),
        "fused_recurrent_kda_fwd": dict(initial_state=np.zeros((B, H, K, V), np.float32)),
        "fwd": dict(scale=None, out=np.zeros((B, T, H, V), np.float32), A_log=A_log,
                    dt_bias=dt_bias, lower_bound=-5.0),
    }


@pytest.mark.parametrize("function", list(_valid_calls()))
def test_junk_in_any_argument_raises_only_flashkda_errors(rng, function):
    fn = getattr(flash_kda, function)
    names = [p.name for p in inspect.signature(fn).parameters.values()
             if p.kind is not p.VAR_KEYWORD]
    escaped = []
    for name in names:
        for junk in JUNK:
            kw = dict(make_inputs(rng, B=B, T=T, H=H, K=K, V=V), **_valid_calls()[function])
            kw[name] = junk
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    fn(**kw)
            except flash_kda.FlashKDAError:
                pass
            except Exception as e:  # noqa: BLE001 (collecting what escapes is the point)
                escaped.append(f"{name}={junk!r:.20}: {type(e).__name__}: {e}")
    assert not escaped, "\n".join(escaped)

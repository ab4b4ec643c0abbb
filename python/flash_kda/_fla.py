"""fla-compatible entry points: chunk_kda, fused_recurrent_kda, fused_recurrent_kda_fwd.

Signatures, defaults, validation conditions and return values follow fla 0.6
(fla/ops/kda/chunk.py and fla/ops/kda/fused_recurrent.py), so that code written for fla runs
unchanged on flash_kda's forward. Where fla raises ValueError, these raise ValueError for the
same condition; where fla only asserts, the C library's validation answers (ValueError or
TypeError with its message). Every keyword of fla's signature is taken, and so is every keyword
fla reads from its **kwargs (A_log, dt_bias, chunk_size, transpose_state_layout); any other
keyword raises ArgumentTypeError naming it (fla would ignore it, so a typo such as
use_qk_l2norm would silently change the result). Differences, all deliberate:

  - Forward only: a call with autograd on and an input that requires grad raises
    UnsupportedError (fla would build a backward graph).
  - chunk_kda: cp_context raises UnsupportedError; disable_recompute, use_graph and
    max_num_seqs are accepted and change nothing (they steer fla's backward or its Triton
    launch; the flash_kda path is already capturable in CUDA graphs). chunk_size (32 or 64)
    only sets the chunks of return_intermediate_states' h; with cu_seqlens on a GPU and no
    cu_seqlens_cpu, counting h's chunks copies cu_seqlens to the host (a sync, as in fla).
  - fused_recurrent_kda with use_gate_in_kernel, no lower_bound and no A_log: fla silently
    computes a = -e * softplus(g + dt_bias) (as if A_log = 1); flash_kda raises ValueError
    ("A_log: is required by the softplus gate"), as fla's chunk_kda does.
  - fused_recurrent_kda: a per-channel beta [B, T, HV, V] raises UnsupportedError.
  - fused_recurrent_kda (the public one) ignores ssm_state_indices / inplace_final_state /
    num_accepted_tokens like fla, but warns: use fused_recurrent_kda_fwd for in-place pools;
    it refuses out (fla would drop it unwritten), which fused_recurrent_kda_fwd takes.
  - fused_recurrent_kda_fwd(inplace_final_state=True) with 1-D ssm_state_indices and several
    tokens per sequence writes the final state to ssm_state_indices[n] (fla writes token t's
    state to ssm_state_indices[n + t]); with inplace_final_state=False it does not take
    ssm_state_indices (UnsupportedError). A negative index skips the sequence (out rows zero).
"""

from __future__ import annotations

import inspect
import numbers
import warnings

import numpy as np

from . import _native, _tensors
from ._ops import _number, decode, flags, prefill
from .errors import (
    ArgumentTypeError,
    DTypeError,
    InvalidArgumentError,
    UnsupportedError,
    reject_unknown_keywords,
)


def _require_array(x, name: str):
    if not _tensors.is_array(x):
        if _tensors.is_torch_tensor(x):  # a nested tensor: the ValueError naming it
            _tensors.describe(x, name, _native.Tensor())
        raise ArgumentTypeError(f"{name}: expected a NumPy array or a torch tensor, got "
                                f"{type(x).__qualname__}")


def _require_ndim(x, name: str, ndim: int, dims: str):
    _require_array(x, name)
    if x.ndim != ndim:
        raise InvalidArgumentError(
            f"{name}: expected {ndim} dimension{'s' if ndim != 1 else ''} {dims}, got "
            f"shape {list(x.shape)}")


def _require_float(x, name: str) -> None:
    """An array copied to float32 here: a float dtype flash_kda takes (float32, float16,
    bfloat16), not anything NumPy could convert (int, bool, float64, complex, object, str)."""
    t = _native.Tensor()
    _tensors.describe(x, name, t)  # the DTypeError for a NumPy dtype without a code
    if t.dtype not in (_native.FKDA_DTYPE_F32, _native.FKDA_DTYPE_F16, _native.FKDA_DTYPE_BF16):
        raise DTypeError(f"{name}: dtype {x.dtype} is not accepted; expected float32, float16 or "
                         "bfloat16")


def _is_float32(x) -> bool:
    if isinstance(x, np.ndarray):
        return x.dtype == np.float32
    return str(x.dtype) == "torch.float32"


def _forbid_autograd(function: str, **tensors) -> None:
    torch = _tensors.torch_module()
    if torch is None or not torch.is_grad_enabled():
        return
    for name, t in tensors.items():
        if _tensors.is_torch_tensor(t) and t.requires_grad:
            raise UnsupportedError(
                f"{name}: requires grad, but flash_kda.{function} is forward-only (no autograd); "
                "call it under torch.no_grad() or torch.inference_mode(), or use fla to train")


def _pop_state_layout_alias(kwargs: dict, state_v_first: bool) -> bool:
    """fla's deprecated name `transpose_state_layout` for `state_v_first`."""
    if "transpose_state_layout" not in kwargs:
        return state_v_first
    if state_v_first:
        raise InvalidArgumentError(
            "transpose_state_layout: cannot be given together with state_v_first "
            "(it is the deprecated name of state_v_first)")
    warnings.warn("`transpose_state_layout` is deprecated; use `state_v_first`",
                  DeprecationWarning, stacklevel=3)
    (value,) = flags(transpose_state_layout=kwargs.pop("transpose_state_layout"))
    return value


def _check_keywords(function, kwargs: dict, extra) -> None:
    """Refuses a keyword that is neither a parameter of `function` nor one of `extra`.

    extra: the keywords fla's function of the same name reads from its **kwargs (and flash_kda's
    own). fla ignores any other silently, so a typo such as use_qk_l2norm would run without the
    norm; here it raises ArgumentTypeError naming it.
    """
    unknown = [name for name in kwargs if name not in extra]
    if unknown:
        params = [n for n, p in inspect.signature(function).parameters.items()
                  if p.kind is not p.VAR_KEYWORD]
        reject_unknown_keywords(f"flash_kda.{function.__name__}", unknown,
                                params + [n for n in extra if not n.startswith("_")])


def _num_sequences(q, cu_seqlens) -> int:
    return q.shape[0] if cu_seqlens is None else int(cu_seqlens.shape[0]) - 1


def _check_varlen(q, initial_state, cu_seqlens) -> None:
    if cu_seqlens is None:
        return
    _require_array(cu_seqlens, "cu_seqlens")
    if q.shape[0] != 1:
        raise InvalidArgumentError(
            f"cu_seqlens: a packed batch needs batch size 1, but q has batch size "
            f"{q.shape[0]}; flatten variable-length inputs to [1, T, ...] first")
    if cu_seqlens.ndim != 1:
        raise InvalidArgumentError(f"cu_seqlens: expected 1 dimension [N + 1], got shape "
                                   f"{list(cu_seqlens.shape)}")
    if initial_state is not None:
        _require_array(initial_state, "initial_state")
        n = int(cu_seqlens.shape[0]) - 1
        if initial_state.ndim < 1 or initial_state.shape[0] != n:
            raise InvalidArgumentError(f"initial_state: expected one state per sequence, {n} (from "
                                       f"cu_seqlens), got shape {list(initial_state.shape)}")


def _gate(use_gate_in_kernel: bool, lower_bound) -> str:
    if not use_gate_in_kernel:
        return "none"
    return "lower_bound" if lower_bound is not None else "softplus"


def _state_shape(N, HV, K, V, state_v_first):
    return (N, HV, V, K) if state_v_first else (N, HV, K, V)


# What fla's chunk_kda reads from its **kwargs (A_log and dt_bias only with use_gate_in_kernel).
_CHUNK_KDA_KEYWORDS = ("A_log", "dt_bias", "chunk_size", "transpose_state_layout")


def chunk_kda(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
              use_qk_l2norm_in_kernel=False, use_gate_in_kernel=False,
              use_beta_sigmoid_in_kernel=False, allow_neg_eigval=False, safe_gate=False,
              lower_bound=None, disable_recompute=False, return_intermediate_states=False,
              state_v_first=False, cu_seqlens=None, cu_seqlens_cpu=None, cp_context=None,
              use_graph=False, max_num_seqs=None, **kwargs):
    """fla's chunk_kda forward (fla 0.6 signature), run by flash_kda.

    q, k [B, T, H, K]; v [B, T, HV, V]; g [B, T, HV, K] (log decay, or the raw gate input with
    use_gate_in_kernel); beta [B, T, HV]; initial_state float32 [N, HV, K, V] ([N, HV, V, K]
    with state_v_first); A_log [HV] and dt_bias [HV * K] or [HV, K] as keywords.

    use_gate_in_kernel: the gate is lower_bound * sigmoid(exp(A_log) * (g + dt_bias)) when
    lower_bound is given (A_log optional), else -exp(A_log) * softplus(g + dt_bias).
    safe_gate with use_gate_in_kernel requires lower_bound in [-5, 0).

    Returns (o, final_state): o [B, T, HV, V] in the input dtype; final_state float32
    [N, HV, K, V] (or [N, HV, V, K]) when output_final_state, else None. With
    return_intermediate_states, (o, final_state, h) as fla: h [B, NT, HV, K, V] in k's dtype,
    the state entering each chunk of chunk_size tokens (NT = ceil(T / chunk_size); with
    cu_seqlens B = 1 and the sequences' chunks are concatenated).
    """
    _check_keywords(chunk_kda, kwargs, _CHUNK_KDA_KEYWORDS)
    (output_final_state, use_qk_l2norm_in_kernel, use_gate_in_kernel, use_beta_sigmoid_in_kernel,
     allow_neg_eigval, safe_gate, return_intermediate_states, state_v_first, use_graph) = flags(
        output_final_state=output_final_state, use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel,
        use_gate_in_kernel=use_gate_in_kernel,
        use_beta_sigmoid_in_kernel=use_beta_sigmoid_in_kernel, allow_neg_eigval=allow_neg_eigval,
        safe_gate=safe_gate, return_intermediate_states=return_intermediate_states,
        state_v_first=state_v_first, use_graph=use_graph)
    state_v_first = _pop_state_layout_alias(kwargs, state_v_first)
    if cp_context is not None:
        raise UnsupportedError("cp_context: context parallelism is not supported by flash_kda")
    _require_ndim(q, "q", 4, "[B, T, H, K]")
    _require_ndim(v, "v", 4, "[B, T, HV, V]")
    _check_varlen(q, initial_state, cu_seqlens)
    if initial_state is not None:
        _require_array(initial_state, "initial_state")
    if initial_state is not None and not _is_float32(initial_state):
        raise DTypeError(f"initial_state: dtype {initial_state.dtype} is not accepted; chunk_kda "
                         "takes a float32 initial state (as fla does)")

    A_log = dt_bias = None
    if use_gate_in_kernel:
        A_log, dt_bias = kwargs.get("A_log"), kwargs.get("dt_bias")
        if A_log is None and lower_bound is None:
            raise InvalidArgumentError(
                "A_log: is required when use_gate_in_kernel=True and lower_bound "
                "is not set")
    chunk_size = kwargs.pop("chunk_size", 64)
    if not isinstance(chunk_size, numbers.Integral) or isinstance(chunk_size, bool):
        raise ArgumentTypeError(
            f"chunk_size: expected an int (32 or 64), got {type(chunk_size).__qualname__}")
    if chunk_size not in (32, 64):
        raise InvalidArgumentError(f"chunk_size: must be 32 or 64, got {chunk_size}")
    if safe_gate and use_gate_in_kernel:
        if lower_bound is None:
            raise InvalidArgumentError("lower_bound: is required when safe_gate=True and "
                                       "use_gate_in_kernel=True")
        if not (-5 <= _number(lower_bound, "lower_bound") < 0):
            raise InvalidArgumentError(
                f"lower_bound: {lower_bound} is outside the safe range [-5, 0)")
    if allow_neg_eigval and not use_beta_sigmoid_in_kernel:
        raise InvalidArgumentError(
            "allow_neg_eigval: True requires use_beta_sigmoid_in_kernel=True")
    if use_graph and cu_seqlens is not None and max_num_seqs is not None:
        if not isinstance(max_num_seqs, numbers.Integral):
            raise ArgumentTypeError(
                f"max_num_seqs: expected an int, got {type(max_num_seqs).__qualname__}")
        if int(cu_seqlens.shape[0]) - 1 != max_num_seqs:
            raise InvalidArgumentError(
                f"cu_seqlens: with use_graph it must hold exactly max_num_seqs + 1 "
                f"= {max_num_seqs + 1} entries (pad with empty sequences), got "
                f"{cu_seqlens.shape[0]}")
    _forbid_autograd("chunk_kda", q=q, k=k, v=v, g=g, beta=beta, A_log=A_log, dt_bias=dt_bias,
                     initial_state=initial_state)

    B, T, H, K = q.shape
    HV, V = v.shape[2], v.shape[3]
    o = _tensors.empty(q, (B, T, HV, V), q.dtype)
    final_state = None
    if output_final_state:
        N = _num_sequences(q, cu_seqlens)
        final_state = _tensors.empty(q, _state_shape(N, HV, K, V, state_v_first), "float32")
    h = None
    if return_intermediate_states:
        # fla's h: [B, NT, HV, K, V] in k's dtype, the state entering each chunk; with
        # cu_seqlens the sequences' chunks one after another in a batch of 1.
        _require_array(k, "k")  # h takes k's dtype
        NT = _chunk_count(T, cu_seqlens, cu_seqlens_cpu, chunk_size)
        h = _tensors.empty(k, (B, NT) + _state_shape(1, HV, K, V, state_v_first)[1:], k.dtype)
    prefill(q, k, v, g, beta, out=o, A_log=A_log, dt_bias=dt_bias, cu_seqlens=cu_seqlens,
            initial_state=initial_state, final_state=final_state, scale=scale,
            gate=_gate(use_gate_in_kernel, lower_bound), lower_bound=lower_bound,
            use_qk_l2norm=use_qk_l2norm_in_kernel, use_beta_sigmoid=use_beta_sigmoid_in_kernel,
            allow_neg_eigval=allow_neg_eigval, state_v_first=state_v_first,
            intermediate_states=h, intermediate_chunk_size=int(chunk_size))
    if return_intermediate_states:
        return o, final_state, h
    return o, final_state


def _chunk_count(T: int, cu_seqlens, cu_seqlens_cpu, chunk_size: int) -> int:
    """Chunks per row of h: ceil(T / chunk_size), or with cu_seqlens the sum over sequences (read
    from cu_seqlens_cpu when given, else from cu_seqlens, which on a GPU costs a copy to host)."""
    if cu_seqlens is None:
        return -(-int(T) // chunk_size)
    name = "cu_seqlens_cpu" if cu_seqlens_cpu is not None else "cu_seqlens"
    bounds = cu_seqlens_cpu if cu_seqlens_cpu is not None else cu_seqlens
    if _tensors.is_torch_tensor(bounds):
        bounds = _tensors.host_integers(bounds, name)
    try:
        bounds = np.asarray(bounds)
    except (TypeError, ValueError):
        raise ArgumentTypeError(f"{name}: expected an array of sequence bounds [N + 1], got "
                                f"{type(bounds).__qualname__}") from None
    if bounds.ndim != 1 or bounds.shape != tuple(cu_seqlens.shape):
        raise InvalidArgumentError(f"{name}: expected shape [N + 1] = {list(cu_seqlens.shape)} "
                                   f"(as cu_seqlens), got {list(bounds.shape)}")
    if bounds.dtype.kind not in "iu":
        raise DTypeError(f"{name}: dtype {bounds.dtype} is not accepted; expected int64 or int32")
    if cu_seqlens_cpu is not None:
        # The host copy must be cu_seqlens itself: compared where that costs no device copy (on a
        # GPU it is trusted, as fla trusts it, and a wrong one leaves rows of h unwritten there).
        host = cu_seqlens
        if _tensors.is_torch_tensor(host):
            host = None if host.is_cuda else _tensors.host_integers(host, "cu_seqlens")
        # (cu_seqlens of another dtype than integers is refused with the other tensors)
        if host is not None and host.dtype.kind in "iu" and not np.array_equal(
                host.astype(np.int64), bounds.astype(np.int64)):
            raise InvalidArgumentError(f"cu_seqlens_cpu: {bounds.tolist()} differs from "
                                       f"cu_seqlens {host.tolist()}")
    lengths = np.diff(bounds.astype(np.int64))
    return int(np.sum(-(-np.maximum(lengths, 0) // chunk_size)))


# fla's fused_recurrent_kda reads transpose_state_layout from its **kwargs and ignores the rest;
# the pool keywords of fused_recurrent_kda_fwd are taken (and ignored, with a warning) because
# code written for fla passes them to either function.
_POOL_KEYWORDS = ("ssm_state_indices", "inplace_final_state", "num_accepted_tokens")
_FUSED_RECURRENT_KDA_KEYWORDS = ("transpose_state_layout",) + _POOL_KEYWORDS
# fla's fused_recurrent_kda_fwd reads nothing from its **kwargs; transpose_state_layout is taken
# as everywhere else, _function names the public caller in messages.
_FUSED_RECURRENT_KDA_FWD_KEYWORDS = ("transpose_state_layout", "_function")


def fused_recurrent_kda(q, k, v, g, beta, A_log=None, dt_bias=None, scale=None,
                        initial_state=None, output_final_state=False,
                        use_qk_l2norm_in_kernel=False, use_gate_in_kernel=False,
                        use_beta_sigmoid_in_kernel=False, allow_neg_eigval=False,
                        lower_bound=None, state_v_first=False, cu_seqlens=None, **kwargs):
    """fla's fused_recurrent_kda (fla 0.6 signature), run by flash_kda's decode.

    The recurrent form over every token; initial_state (float32, float16 or bfloat16) is only
    read: its copy (or zeros) in float32 is updated in place and returned as final_state when
    output_final_state.
    Returns (o, final_state or None).
    """
    _check_keywords(fused_recurrent_kda, kwargs, _FUSED_RECURRENT_KDA_KEYWORDS)
    (use_beta_sigmoid_in_kernel, allow_neg_eigval, state_v_first) = flags(
        use_beta_sigmoid_in_kernel=use_beta_sigmoid_in_kernel, allow_neg_eigval=allow_neg_eigval,
        state_v_first=state_v_first)
    state_v_first = _pop_state_layout_alias(kwargs, state_v_first)
    ignored = [name for name in _POOL_KEYWORDS if name in kwargs]
    if ignored:
        warnings.warn(
            f"fused_recurrent_kda ignores {', '.join(ignored)} (as fla's public function does); "
            "use flash_kda.fused_recurrent_kda_fwd for in-place state pools", UserWarning,
            stacklevel=2)
    _require_ndim(q, "q", 4, "[B, T, H, K]")
    _check_varlen(q, initial_state, cu_seqlens)
    if allow_neg_eigval and not use_beta_sigmoid_in_kernel:
        raise InvalidArgumentError(
            "allow_neg_eigval: True requires use_beta_sigmoid_in_kernel=True")
    return fused_recurrent_kda_fwd(
        q, k, v, g, beta, A_log=A_log, dt_bias=dt_bias, initial_state=initial_state, scale=scale,
        output_final_state=output_final_state, inplace_final_state=False,
        state_v_first=state_v_first, cu_seqlens=cu_seqlens,
        use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel, use_gate_in_kernel=use_gate_in_kernel,
        use_beta_sigmoid_in_kernel=use_beta_sigmoid_in_kernel, allow_neg_eigval=allow_neg_eigval,
        lower_bound=lower_bound, _function="fused_recurrent_kda")


def fused_recurrent_kda_fwd(q, k, v, g, beta, A_log=None, dt_bias=None, initial_state=None,
                            scale=None, output_final_state=False, inplace_final_state=True,
                            state_v_first=False, cu_seqlens=None, ssm_state_indices=None,
                            num_accepted_tokens=None, use_qk_l2norm_in_kernel=False,
                            use_gate_in_kernel=False, use_beta_sigmoid_in_kernel=False,
                            allow_neg_eigval=False, lower_bound=None, out=None, **kwargs):
    """fla's internal fused_recurrent_kda_fwd, the function vLLM calls (fla 0.6 signature).

    inplace_final_state=True (the default): initial_state is the state pool [P, HV, K, V]
    ([P, HV, V, K] with state_v_first), f32 or bf16, updated in place. ssm_state_indices
    (int32/int64) picks the slots: [N] reads and writes back slot idx[n]; [N, T_max] reads
    slot idx[n, num_accepted_tokens[n] - 1] (or idx[n, 0]) and writes the state after token t to
    idx[n, t]; a negative slot skips the sequence (its out rows are zero) or the write. Without
    indices, sequence n uses slot n. Returns (out, initial_state).

    inplace_final_state=False: initial_state (optional, [N, ...], float32, float16 or bfloat16)
    is only read; returns (out, a new float32 final state) when output_final_state, else
    (out, None). num_accepted_tokens needs the in-place form (with 2-D ssm_state_indices).

    out: optional output [B, T, HV, V] written in place (zeros are allocated when None).
    """
    _check_keywords(fused_recurrent_kda_fwd, kwargs, _FUSED_RECURRENT_KDA_FWD_KEYWORDS)
    (output_final_state, inplace_final_state, use_qk_l2norm_in_kernel, use_gate_in_kernel,
     use_beta_sigmoid_in_kernel, allow_neg_eigval, state_v_first) = flags(
        output_final_state=output_final_state, inplace_final_state=inplace_final_state,
        use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel, use_gate_in_kernel=use_gate_in_kernel,
        use_beta_sigmoid_in_kernel=use_beta_sigmoid_in_kernel, allow_neg_eigval=allow_neg_eigval,
        state_v_first=state_v_first)
    function = kwargs.pop("_function", "fused_recurrent_kda_fwd")
    state_v_first = _pop_state_layout_alias(kwargs, state_v_first)
    _require_ndim(q, "q", 4, "[B, T, H, K]")
    _require_ndim(v, "v", 4, "[B, T, HV, V]")
    _require_array(beta, "beta")
    if beta.ndim == v.ndim:
        raise UnsupportedError("beta: a per-value-channel beta [B, T, HV, V] is not supported by "
                               "flash_kda; pass beta as [B, T, HV]")
    _forbid_autograd(function, q=q, k=k, v=v, g=g, beta=beta, A_log=A_log, dt_bias=dt_bias,
                     initial_state=initial_state)
    if out is None:
        out = _tensors.zeros(v, tuple(v.shape))
    else:
        _require_array(out, "out")
        if tuple(out.shape) != tuple(v.shape):
            raise InvalidArgumentError(f"out: expected the shape of v {list(v.shape)}, got "
                                       f"{list(out.shape)}")
    options = dict(scale=scale, gate=_gate(use_gate_in_kernel, lower_bound),
                   lower_bound=lower_bound, use_qk_l2norm=use_qk_l2norm_in_kernel,
                   use_beta_sigmoid=use_beta_sigmoid_in_kernel, allow_neg_eigval=allow_neg_eigval,
                   state_v_first=state_v_first)
    if not use_gate_in_kernel:
        A_log = dt_bias = None

    if inplace_final_state:
        if initial_state is None:
            raise InvalidArgumentError(
                "initial_state: is required with inplace_final_state=True (it is "
                "the state pool updated in place)")
        decode(q, k, v, g, beta, initial_state, state_indices=ssm_state_indices,
               num_accepted_tokens=num_accepted_tokens, cu_seqlens=cu_seqlens, out=out,
               A_log=A_log, dt_bias=dt_bias, **options)
        return out, initial_state

    if ssm_state_indices is not None:
        raise UnsupportedError("ssm_state_indices: needs inplace_final_state=True in flash_kda "
                               "(the states are updated in place in the pool)")
    if num_accepted_tokens is not None:
        raise InvalidArgumentError("num_accepted_tokens: needs 2-D ssm_state_indices, and so "
                                   "inplace_final_state=True")
    if cu_seqlens is not None:
        _require_ndim(cu_seqlens, "cu_seqlens", 1, "[N + 1]")
    N = _num_sequences(q, cu_seqlens)
    shape = _state_shape(N, v.shape[2], q.shape[3], v.shape[3], state_v_first)
    if initial_state is None:
        state = _tensors.zeros(q, shape, "float32")
    else:
        _require_array(initial_state, "initial_state")
        if tuple(initial_state.shape) != shape:
            dims = "[N, HV, V, K]" if state_v_first else "[N, HV, K, V]"
            raise InvalidArgumentError(f"initial_state: expected shape {dims} = {list(shape)}, got "
                                       f"{list(initial_state.shape)}")
        _require_float(initial_state, "initial_state")
        state = _tensors.float32_copy(initial_state, q)
    decode(q, k, v, g, beta, state, cu_seqlens=cu_seqlens, out=out, A_log=A_log,
           dt_bias=dt_bias, **options)
    return out, (state if output_final_state else None)

"""The operations of the C library, one Python function each: prefill, decode, decode_layer.

These are the low-level entry points: every option of fkda_options is a keyword, every tensor of
fkda_prefill_args / fkda_decode_args is an argument, and nothing is checked here that the C
library checks itself (it validates every argument before writing anything, and its message
comes back verbatim in the exception; see errors.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import inspect
import math
import numbers

from . import _native, _tensors
from .errors import (
    ArgumentTypeError,
    InvalidArgumentError,
    check,
    reject_unknown_keywords,
)

_GATES = {
    "none": _native.FKDA_GATE_NONE,
    "lower_bound": _native.FKDA_GATE_LOWER_BOUND,
    "softplus": _native.FKDA_GATE_SOFTPLUS,
}


def _number(value, name: str) -> float:
    # Only host numbers: float() of a CUDA tensor would synchronise the device.
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ArgumentTypeError(f"{name}: expected a real number, got {type(value).__qualname__}")
    try:
        return float(value)
    except OverflowError:  # an int (or Fraction) beyond the range of a double
        raise InvalidArgumentError(
            f"{name}: {type(value).__qualname__} value out of the range of a float") from None


def _flag(value, name: str) -> bool:
    """A yes/no option: anything with a truth value (bool, int, None, a one-element array), but
    not a string, whose truth value is its length: 'False' would silently read as true."""
    if isinstance(value, (str, bytes)):
        raise ArgumentTypeError(
            f"{name}: expected a bool, got {type(value).__qualname__} {value!r}")
    try:
        return bool(value)
    except (TypeError, ValueError, RuntimeError):  # torch: RuntimeError for 0 or 2+ elements
        raise ArgumentTypeError(f"{name}: expected a bool, got {type(value).__qualname__}") \
            from None


def flags(**named) -> tuple:
    """The truth values of the named options, in order; ArgumentTypeError naming a bad one."""
    return tuple(_flag(value, name) for name, value in named.items())


def make_options(*, scale, gate, lower_bound, use_qk_l2norm, use_beta_sigmoid, allow_neg_eigval,
                 state_v_first) -> _native.Options:
    o = _native.Options()
    if scale is None:
        o.scale = 0.0  # the C library's default, K^-0.5
    else:
        o.scale = _number(scale, "scale")
        if o.scale == 0.0:
            raise InvalidArgumentError(
                "scale: 0 is not supported (None selects the default K^-0.5)")
    if gate is None:
        gate = "none"
    if not isinstance(gate, str) or gate not in _GATES:
        raise InvalidArgumentError(
            f"gate: {gate!r}; expected one of {', '.join(map(repr, _GATES))}")
    o.gate = _GATES[gate]
    if lower_bound is not None:
        o.lower_bound = _number(lower_bound, "lower_bound")
    elif gate == "lower_bound":
        raise InvalidArgumentError(
            "lower_bound: is required by gate='lower_bound' (a finite value < 0; "
            "the safe gate uses [-5, 0))")
    o.use_qk_l2norm, o.use_beta_sigmoid, o.allow_neg_eigval, o.state_v_first = flags(
        use_qk_l2norm=use_qk_l2norm, use_beta_sigmoid=use_beta_sigmoid,
        allow_neg_eigval=allow_neg_eigval, state_v_first=state_v_first)
    return o


class _Call:
    """Describes the tensors of one call into an args struct and finds the device."""

    def __init__(self, args):
        self.args = args
        self.locations = []

    def tensor(self, field: str, obj, name: str | None = None, required: bool = False):
        name = name or field
        if obj is None:
            if required:
                raise ArgumentTypeError(f"{name}: is required, got None")
            return  # an absent tensor: all zero in the struct
        loc = _tensors.describe(obj, name, getattr(self.args, field))
        self.locations.append((name, loc))

    def location(self) -> _tensors.Location:
        return _tensors.resolve_location(self.locations)


def _device_context(loc: _tensors.Location):
    if loc.kind == "cuda":
        return _tensors.torch_module().cuda.device(loc.index)
    return contextlib.nullcontext()


def _run(size_fn, run_fn, args, loc: _tensors.Location, reference: bool, num_threads: int) -> None:
    if not isinstance(num_threads, numbers.Integral) or isinstance(num_threads, bool):
        raise ArgumentTypeError(
            f"num_threads: expected an int, got {type(num_threads).__qualname__}")
    if not -2**31 <= int(num_threads) < 2**31:
        # fkda_device.num_threads is an int32: ctypes would keep the low 32 bits silently.
        raise InvalidArgumentError(
            f"num_threads: {int(num_threads)} is out of range; expected 0 (all cores) or a "
            "thread count")
    reference = _flag(reference, "reference")
    if reference and loc.kind != "cpu":
        raise InvalidArgumentError(
            f"reference: the float64 reference runs on CPU tensors only, but the "
            f"tensors are on {loc}")
    with _device_context(loc):
        device = _tensors.make_device(loc, reference, num_threads)
        nbytes = ctypes.c_size_t(0)
        check(size_fn(ctypes.byref(args), ctypes.byref(device), ctypes.byref(nbytes)))
        holder, ptr = _tensors.workspace(loc, nbytes.value)
        check(run_fn(ctypes.byref(args), ctypes.byref(device), ptr, nbytes.value))
        del holder  # after the call: on CUDA, torch reuses it only for later work on the stream


def _reject_unknown(function, unknown: dict) -> None:
    """ArgumentTypeError for keywords `function` does not take, as Python would raise, but a
    FlashKDAError like every other bad argument, with the closest keyword suggested."""
    if unknown:
        known = [n for n, p in inspect.signature(function).parameters.items()
                 if p.kind is p.KEYWORD_ONLY or p.kind is p.POSITIONAL_OR_KEYWORD]
        reject_unknown_keywords(f"flash_kda.{function.__name__}", unknown, known)


def _output_like(v):
    """A new output shaped and typed like v, on v's device (out defaults to this)."""
    if not _tensors.is_array(v):
        _tensors.describe(v, "v", _native.Tensor())  # raises the TypeError naming v
    return _tensors.empty(v, tuple(v.shape))


def _token_tensors(call, q, k, v, g, beta, A_log, dt_bias, cu_seqlens):
    """The token inputs and gate parameters that prefill and decode share."""
    call.tensor("q", q, required=True)
    call.tensor("k", k, required=True)
    call.tensor("v", v, required=True)
    call.tensor("g", g, required=True)
    call.tensor("beta", beta, required=True)
    call.tensor("A_log", A_log)
    call.tensor("dt_bias", dt_bias)
    call.tensor("cu_seqlens", cu_seqlens)


def prefill(q, k, v, g, beta, *, out=None, A_log=None, dt_bias=None, cu_seqlens=None,
            initial_state=None, final_state=None, scale=None, gate="none", lower_bound=None,
            use_qk_l2norm=False, use_beta_sigmoid=False, allow_neg_eigval=False,
            state_v_first=False, has_initial_state=None, state_pool=None,
            initial_state_indices=None, final_state_indices=None, checkpoint_offsets=None,
            checkpoint_states=None, checkpoint_indices=None, intermediate_states=None,
            intermediate_chunk_size=None, reference=False, num_threads=0, **unknown):
    """The chunked KDA forward over whole sequences (fkda_prefill).

    Shapes (N sequences; B rows of T tokens; H qk heads; HV value heads, a multiple of H):
        q, k [B, T, H, K]; v [B, T, HV, V]; g [B, T, HV, K]; beta [B, T, HV];
        A_log [HV]; dt_bias [HV, K] or [HV * K]; cu_seqlens [N + 1] (int64/int32, needs B == 1);
        initial_state, final_state [N, HV, K, V] ([N, HV, V, K] with state_v_first), f32/bf16;
        out [B, T, HV, V] in the dtype of v.

    gate: "none" (g is the log decay), "lower_bound" (lower_bound * sigmoid(exp(A_log) *
    (g + dt_bias)), A_log optional), or "softplus" (-exp(A_log) * softplus(g + dt_bias)).
    scale None means K^-0.5. reference=True runs the float64 token-by-token reference of the
    CPU backend (CPU tensors only); num_threads 0 uses every core (CPU only).

    States for serving engines (the rules are fkda_prefill_args' in flashkda.h):
        has_initial_state [N] bool/int32/int64: 0 starts sequence n from zero;
        state_pool [P, HV, K, V] f32/bf16, read and written in place (excludes initial_state
            and final_state); initial_state_indices / final_state_indices [N] int32/int64: the
            slot sequence n starts from / its final state goes to (negative: zero / not
            written; None: slot n);
        checkpoint_offsets [N, C] int32/int64: the state after that many tokens of sequence n
            goes to checkpoint_states [N, C, HV, K, V] (f32/bf16; [N * C, ...] also taken) or
            to pool slot checkpoint_indices [N, C] (negative: not written); an offset < 0 or
            beyond the sequence writes nothing;
        intermediate_states [B, NT, HV, K, V] (or [B * NT, ...]) f32/bf16/f16: fla's h, the
            state entering each chunk of intermediate_chunk_size tokens (None: 64).

    Writes out (allocated like v when None) and the state outputs in place; returns out.
    CPU arrays run on the CPU; CUDA tensors on their device, on torch's current stream.
    Any other keyword raises ArgumentTypeError naming it (with the closest keyword taken).
    """
    _reject_unknown(prefill, unknown)
    out = _output_like(v) if out is None else out
    args = _native.PrefillArgs()
    call = _Call(args)
    _token_tensors(call, q, k, v, g, beta, A_log, dt_bias, cu_seqlens)
    call.tensor("initial_state", initial_state)
    call.tensor("final_state", final_state)
    call.tensor("out", out)
    call.tensor("has_initial_state", has_initial_state)
    call.tensor("state_pool", state_pool)
    call.tensor("initial_state_indices", initial_state_indices)
    call.tensor("final_state_indices", final_state_indices)
    call.tensor("checkpoint_offsets", checkpoint_offsets)
    call.tensor("checkpoint_states", _tensors.merge_leading(checkpoint_states, "checkpoint_states"))
    call.tensor("checkpoint_indices", checkpoint_indices)
    call.tensor("intermediate_states",
                _tensors.merge_leading(intermediate_states, "intermediate_states"))
    args.intermediate_chunk_size = _chunk_size(intermediate_chunk_size)
    args.options = make_options(scale=scale, gate=gate, lower_bound=lower_bound,
                                use_qk_l2norm=use_qk_l2norm, use_beta_sigmoid=use_beta_sigmoid,
                                allow_neg_eigval=allow_neg_eigval, state_v_first=state_v_first)
    _run(_native.lib.fkda_prefill_workspace_size, _native.lib.fkda_prefill, args, call.location(),
         reference, num_threads)
    return out


def _chunk_size(value) -> int:
    """intermediate_chunk_size: None (64) or a positive int (the C library checks the value)."""
    if value is None:
        return 0
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise ArgumentTypeError(
            f"intermediate_chunk_size: expected an int, got {type(value).__qualname__}")
    if not 1 <= int(value) <= 2**31 - 1:
        raise InvalidArgumentError(
            f"intermediate_chunk_size: {int(value)}; expected a chunk size >= 1 (None: 64)")
    return int(value)


def decode(q, k, v, g, beta, state_pool, *, state_indices=None, num_accepted_tokens=None,
           cu_seqlens=None, out=None, A_log=None, dt_bias=None, scale=None, gate="none",
           lower_bound=None, use_qk_l2norm=False, use_beta_sigmoid=False, allow_neg_eigval=False,
           state_v_first=False, reference=False, num_threads=0, **unknown):
    """The recurrent KDA form, updating states in place inside a pool (fkda_decode).

    Token inputs, options, out and cu_seqlens as for prefill (usually one or a few tokens per
    sequence). state_pool [P, HV, K, V] ([P, HV, V, K] with state_v_first), f32/bf16, is read
    and written in place. state_indices (int32/int64):
        None:       sequence n uses slot n;
        [N]:        sequence n reads and writes back slot idx[n]; negative skips it;
        [N, T_max]: sequence n reads slot idx[n, a_n - 1] (a_n = num_accepted_tokens[n], or 1)
                    and writes the state after its token t to slot idx[n, t] (negative: not
                    written); a negative read slot skips the sequence.
    A skipped sequence's rows of out are zero. Returns out.
    """
    _reject_unknown(decode, unknown)
    out = _output_like(v) if out is None else out
    args = _native.DecodeArgs()
    call = _Call(args)
    _token_tensors(call, q, k, v, g, beta, A_log, dt_bias, cu_seqlens)
    call.tensor("state_pool", state_pool, required=True)
    call.tensor("state_indices", state_indices)
    call.tensor("num_accepted_tokens", num_accepted_tokens)
    call.tensor("out", out)
    args.options = make_options(scale=scale, gate=gate, lower_bound=lower_bound,
                                use_qk_l2norm=use_qk_l2norm, use_beta_sigmoid=use_beta_sigmoid,
                                allow_neg_eigval=allow_neg_eigval, state_v_first=state_v_first)
    _run(_native.lib.fkda_decode_workspace_size, _native.lib.fkda_decode, args, call.location(),
         reference, num_threads)
    return out


def decode_layer(mixed_qkv, conv_weight, conv_state, g, beta, state_pool, output_gate,
                 norm_weight, *, conv_bias=None, A_log=None, dt_bias=None, lower_bound=None,
                 state_indices=None, num_accepted_tokens=None, norm_eps=1e-5, out=None,
                 scale=None, state_v_first=False, reference=False, num_threads=0, **unknown):
    """The fused decode step of a whole KDA layer (fkda_decode_layer): the causal conv with SiLU
    on the packed projection, the KDA decode on the state pool, the gated RMSNorm of its output.

    mixed_qkv [B, dim] or [B, T, dim] (dim = 2 H K + HV V: q, k, v channels), conv_weight
    [dim, W], conv_state [P_conv, L, dim] (token-major: vLLM's conv state transposed), updated in
    place; g [B(, T), HV, K] or [B(, T), HV * K] and beta [B(, T), HV] raw; lower_bound None
    selects the softplus gate -exp(A_log) softplus(g + dt_bias) (A_log required), a value < 0
    the gate lower_bound * sigmoid(exp(A_log) (g + dt_bias)); q, k L2-normalised, beta through a
    sigmoid, scale K^-0.5. state_pool, state_indices, num_accepted_tokens as for decode (the conv
    slot is state_indices[:, 0] with 2-D indices, the window sliding by num_accepted_tokens).
    out [B(, T), HV, V] = rmsnorm(o) * norm_weight * sigmoid(output_gate), in mixed_qkv's dtype.
    CPU arrays run on the CPU; CUDA tensors on their device, on torch's current stream. Returns out.
    """
    _reject_unknown(decode_layer, unknown)
    if out is None:
        if not _tensors.is_array(output_gate) or not _tensors.is_array(mixed_qkv):
            bad = "output_gate" if not _tensors.is_array(output_gate) else "mixed_qkv"
            _tensors.describe(output_gate if bad == "output_gate" else mixed_qkv, bad,
                              _native.Tensor())  # raises the TypeError naming it
        out = _tensors.empty(mixed_qkv, tuple(output_gate.shape))
    args = _native.DecodeLayerArgs()
    call = _Call(args)
    call.tensor("mixed_qkv", mixed_qkv, required=True)
    call.tensor("conv_weight", conv_weight, required=True)
    call.tensor("conv_bias", conv_bias)
    call.tensor("conv_state", conv_state, required=True)
    call.tensor("g", g, required=True)
    call.tensor("beta", beta, required=True)
    call.tensor("A_log", A_log)
    call.tensor("dt_bias", dt_bias)
    call.tensor("state_pool", state_pool, required=True)
    call.tensor("state_indices", state_indices)
    call.tensor("num_accepted_tokens", num_accepted_tokens)
    call.tensor("output_gate", output_gate, required=True)
    call.tensor("norm_weight", norm_weight, required=True)
    call.tensor("out", out)
    if lower_bound is None:
        args.lower_bound = 0.0  # the softplus gate
    else:
        args.lower_bound = _number(lower_bound, "lower_bound")
        if args.lower_bound == 0.0:
            raise InvalidArgumentError(
                "lower_bound: 0 is not a lower bound (None selects the softplus gate)")
    args.norm_eps = _number(norm_eps, "norm_eps")
    if scale is None:
        args.scale = 0.0
    else:
        args.scale = _number(scale, "scale")
        if args.scale == 0.0:
            raise InvalidArgumentError(
                "scale: 0 is not supported (None selects the default K^-0.5)")
    args.state_v_first = _flag(state_v_first, "state_v_first")
    _run(_native.lib.fkda_decode_layer_workspace_size, _native.lib.fkda_decode_layer, args,
         call.location(), reference, num_threads)
    return out


def default_scale(K: int) -> float:
    return 1.0 / math.sqrt(K)

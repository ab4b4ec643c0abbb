"""flash_kda.fwd: MoonshotAI FlashKDA's entry point, with its signature and semantics.

fla's chunk_kda hands work to this function when the package `flash_kda` is installed (see
fla/ops/kda/backends/flash_kda.py), so its argument order, keywords, in-place writes and return
value (None) follow FlashKDA's exactly. Beyond FlashKDA it takes whatever the C library takes:
any K and V up to 256, float32/float16 inputs, GVA, CPU arrays, and A_log or dt_bias absent.
"""

from __future__ import annotations

from . import _native, _tensors
from ._ops import prefill
from .errors import ArgumentTypeError, InvalidArgumentError


def fwd(q, k, v, g, beta, scale, out, A_log, dt_bias, lower_bound, initial_state=None,
        final_state=None, cu_seqlens=None, *, checkpoint_state=None, checkpoint_offsets=None):
    """FlashKDA's forward: KDA prefill with the safe gate, L2 norm and beta sigmoid in kernel.

    Args:
        q, k: [B, T, H, K] queries and keys (bf16 in FlashKDA; f16/f32 also work here), raw:
            they are L2-normalised inside.
        v: [B, T, H, V] values; g: [B, T, H, K] gate input before activation.
        beta: [B, T, H] beta logits (sigmoid applied inside).
        scale: the output scale (None: K^-0.5).
        out: [B, T, H, V] output, written in place.
        A_log: [H] log-gate parameter; dt_bias: [H, K] (or [H * K]) gate bias. The gate is
            a = lower_bound * sigmoid(exp(A_log) * (g + dt_bias)).
        lower_bound: the gate's lower bound, < 0 (FlashKDA expects [-5, 0)).
        initial_state: optional [N, H, V, K] (FlashKDA's V-first layout), f32 or bf16.
        final_state: optional output [N, H, V, K], f32 or bf16, written in place. It may be the
            same tensor as initial_state (an in-place state update).
        cu_seqlens: optional [N + 1] int64 (or int32) for a packed batch with B == 1.
        checkpoint_state, checkpoint_offsets (keyword-only, the names of vLLM's FlashKDA fork):
            prefix-cache checkpoints. Offsets int32/int64 count tokens from each sequence's
            start; the state after that many tokens is written to checkpoint_state, bitwise
            equal to the final state of a prefill over that prefix. One per sequence:
            checkpoint_state [N, H, V, K] with offsets [N]; several: [N, C, H, V, K] with
            [N, C]. f32 or bf16. An offset < 0 or beyond its sequence writes nothing.

    Returns None, as FlashKDA does: the results are in `out` and `final_state`.
    """
    if out is None:
        raise ArgumentTypeError("out: is required (fwd writes the output in place)")
    if lower_bound is None:
        raise InvalidArgumentError(
            "lower_bound: is required (the safe gate needs a finite value < 0, "
            "FlashKDA uses [-5, 0))")
    if (checkpoint_state is None) != (checkpoint_offsets is None):
        given, missing = (("checkpoint_state", "checkpoint_offsets") if checkpoint_offsets is None
                          else ("checkpoint_offsets", "checkpoint_state"))
        raise InvalidArgumentError(f"{missing}: is required together with {given}")
    if checkpoint_offsets is not None:
        _require_array(checkpoint_offsets, "checkpoint_offsets")
        _require_array(checkpoint_state, "checkpoint_state")
        if checkpoint_offsets.ndim == 1:
            # One checkpoint per sequence: offsets [N] as [N, 1], the state [N, H, V, K] is
            # already the merged [N * 1, H, V, K] the C library takes.
            if checkpoint_state.ndim != 4:
                raise InvalidArgumentError(
                    f"checkpoint_state: with 1-D checkpoint_offsets [N] expected 4 dimensions "
                    f"[N, H, V, K], got shape {list(checkpoint_state.shape)}")
            if _tensors.is_torch_tensor(checkpoint_offsets):
                # a sparse or mkldnn tensor has no reshape: the ValueError naming it first
                _tensors.describe(checkpoint_offsets, "checkpoint_offsets", _native.Tensor())
            checkpoint_offsets = checkpoint_offsets.reshape(int(checkpoint_offsets.shape[0]), 1)
        elif checkpoint_state.ndim != 5:
            raise InvalidArgumentError(
                f"checkpoint_state: with 2-D checkpoint_offsets [N, C] expected 5 dimensions "
                f"[N, C, H, V, K], got shape {list(checkpoint_state.shape)}")
    prefill(q, k, v, g, beta, out=out, A_log=A_log, dt_bias=dt_bias, cu_seqlens=cu_seqlens,
            initial_state=initial_state, final_state=final_state, scale=scale, gate="lower_bound",
            lower_bound=lower_bound, use_qk_l2norm=True, use_beta_sigmoid=True,
            state_v_first=True, checkpoint_offsets=checkpoint_offsets,
            checkpoint_states=checkpoint_state)
    return None


def _require_array(x, name: str) -> None:
    if not _tensors.is_array(x):
        if _tensors.is_torch_tensor(x):  # a nested tensor: the ValueError naming it
            _tensors.describe(x, name, _native.Tensor())
        raise ArgumentTypeError(
            f"{name}: expected a NumPy array or a torch tensor, got {type(x).__qualname__}")

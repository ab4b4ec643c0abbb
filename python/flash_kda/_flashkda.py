"""flash_kda.fwd: MoonshotAI FlashKDA's entry point, with its signature and semantics.

fla's chunk_kda hands work to this function when the package `flash_kda` is installed (see
fla/ops/kda/backends/flash_kda.py), so its argument order, keywords, in-place writes and return
value (None) follow FlashKDA's exactly. Beyond FlashKDA it takes whatever the C library takes:
any K and V up to 256, float32/float16 inputs, GVA, CPU arrays, and A_log or dt_bias absent.
"""

from __future__ import annotations

from ._ops import prefill
from .errors import ArgumentTypeError, InvalidArgumentError


def fwd(q, k, v, g, beta, scale, out, A_log, dt_bias, lower_bound, initial_state=None,
        final_state=None, cu_seqlens=None):
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

    Returns None, as FlashKDA does: the results are in `out` and `final_state`.
    """
    if out is None:
        raise ArgumentTypeError("out: is required (fwd writes the output in place)")
    if lower_bound is None:
        raise InvalidArgumentError(
            "lower_bound: is required (the safe gate needs a finite value < 0, "
            "FlashKDA uses [-5, 0))")
    prefill(q, k, v, g, beta, out=out, A_log=A_log, dt_bias=dt_bias, cu_seqlens=cu_seqlens,
            initial_state=initial_state, final_state=final_state, scale=scale, gate="lower_bound",
            lower_bound=lower_bound, use_qk_l2norm=True, use_beta_sigmoid=True,
            state_v_first=True)
    return None

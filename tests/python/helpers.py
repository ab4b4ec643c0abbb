"""Input builders shared by the Python tests."""

import numpy as np


def make_inputs(rng, B=1, T=33, H=2, HV=None, K=16, V=16, dtype=np.float32, gate_scale=1.0):
    """Raw inputs as the kernels take them: randn q, k, v, g (gate input) and beta (logits).

    With gate "none" the caller turns g into a log decay with log_decay().
    """
    HV = HV or H

    def randn(*shape):
        return rng.standard_normal(shape).astype(dtype)

    return dict(
        q=randn(B, T, H, K),
        k=randn(B, T, H, K),
        v=randn(B, T, HV, V),
        g=(gate_scale * rng.standard_normal((B, T, HV, K))).astype(dtype),
        beta=randn(B, T, HV),
    )


def log_decay(rng, shape, dtype=np.float32):
    """A precomputed log-space decay in [-1, 0) (gate "none")."""
    return (-rng.uniform(0.01, 1.0, size=shape)).astype(dtype)


def poison(shape, dtype=np.float32):
    """An output buffer full of NaN, so that an element left unwritten shows."""
    return np.full(shape, np.nan, dtype=dtype)


def gate_params(rng, HV, K):
    A_log = rng.uniform(-1.0, 1.0, size=HV).astype(np.float32)
    dt_bias = (0.5 * rng.standard_normal((HV, K))).astype(np.float32)
    return A_log, dt_bias


def bfloat16_dtype():
    try:
        import ml_dtypes
    except ImportError:
        return None
    return np.dtype(ml_dtypes.bfloat16)


# ---- error bars ----------------------------------------------------------------------------------
#
# Relative Frobenius error (kda_numpy.rel_err) allowed for a library result against kda_numpy's
# unrounded float64, as a function of what the case can reach (the same rules as the C tests'
# test_util.h):
#   the final rounding    the result is stored in its dtype, rounding to nearest: at most
#                         u(dtype) per element and so in the norm (u = 2^-24 f32, 2^-11 f16,
#                         2^-8 bf16), plus u(f32) for the float64 reference's narrowing to float
#                         first
#   float32 arithmetic    the fast path only: per token a dot product of length K whose random
#                         rounding errors add in quadrature (u32 sqrt(K), K at least 16); decays
#                         and the delta rule contract older errors, so a sequence of T tokens adds
#                         a slow log2(1 + T) growth; factor 4
#   state roundings       a state stored into a pool or state of dtype d between calls, r times:
#                         u(d) / sqrt(3) each (the root mean square of a uniform rounding error),
#                         adding in quadrature

U32 = 2.0 ** -24


def unit_roundoff(dtype):
    """u of a NumPy, ml_dtypes or torch float dtype."""
    name = str(dtype).replace("torch.", "")
    name = np.dtype(dtype).name if name not in ("float32", "float16", "bfloat16") else name
    return {"float32": U32, "float16": 2.0 ** -11, "bfloat16": 2.0 ** -8}[name]


def bar(dtype=np.float32, T=1, K=16, *, reference=False, state_dtype=None, state_roundings=0):
    """The error bar of a result of `dtype` from T tokens of heads of size K (see above)."""
    b = unit_roundoff(dtype) + U32 + 1e-12
    if not reference:
        b += 4.0 * U32 * np.sqrt(max(K, 16)) * (1.0 + np.log2(1.0 + T) / 4.0)
    if state_roundings:
        b += unit_roundoff(state_dtype) / np.sqrt(3.0) * np.sqrt(state_roundings)
    return b


def bar_for(inputs, result=None, **kw):
    """bar() for a result (default: an output, v's dtype) computed from these token inputs."""
    q = inputs["q"]
    dtype = (inputs["v"] if result is None else result).dtype
    return bar(dtype, T=q.shape[1], K=q.shape[3], **kw)

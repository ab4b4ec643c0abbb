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

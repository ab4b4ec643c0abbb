"""An independent float64 KDA in plain NumPy, token by token, for the tests.

It shares no code with the C library: it is the function of include/flashkda.h written out once
more, so that agreement with it checks the whole stack (Python argument handling, the ctypes
structs, validation, both CPU algorithms).
"""

import numpy as np


def sigmoid(x):
    # No overflow for large |x|, and full relative precision for very negative x (where
    # 0.5 * (1 + tanh(x / 2)) rounds to 0 below x ~ -37: a beta logit of -45 gave b = 0).
    e = np.exp(-np.abs(x))
    return np.where(np.asarray(x) >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def softplus(x):
    return np.logaddexp(0.0, x)


def l2norm(x):
    return x / np.sqrt(np.sum(x * x, axis=-1, keepdims=True) + 1e-6)


def f64(x):
    return None if x is None else np.asarray(x).astype(np.float64)


def prepare(q, k, v, g, beta, *, scale=None, gate="none", A_log=None, dt_bias=None,
            lower_bound=None, l2norm_qk=False, beta_sigmoid=False, neg_eigval=False):
    """The pre-activations: (q, k, v, a, b, scale, group) in float64, q and k per value head."""
    q, k, v, g, beta = (f64(x) for x in (q, k, v, g, beta))
    H, K = q.shape[2], q.shape[3]
    HV = v.shape[2]
    group = HV // H
    scale = K ** -0.5 if scale is None else scale
    A_log = f64(A_log)
    dt_bias = None if dt_bias is None else f64(dt_bias).reshape(HV, K)
    if l2norm_qk:
        q, k = l2norm(q), l2norm(k)
    q, k = np.repeat(q, group, axis=2), np.repeat(k, group, axis=2)  # value head h reads h // group
    x = g + (dt_bias if dt_bias is not None else 0.0)
    if gate == "none":
        a = g
    elif gate == "lower_bound":
        a = lower_bound * sigmoid((np.exp(A_log)[:, None] if A_log is not None else 1.0) * x)
    elif gate == "softplus":
        a = -np.exp(A_log)[:, None] * softplus(x)
    else:
        raise ValueError(gate)
    b = beta
    if beta_sigmoid:
        b = sigmoid(beta) * (2.0 if neg_eigval else 1.0)
    return q, k, v, a, b, scale


def step(S, qt, kt, vt, at, bt, scale):
    """One token on the states S [HV, K, V] (in place); returns the output [HV, V]."""
    S *= np.exp(at)[:, :, None]
    pred = np.einsum("hk,hkv->hv", kt, S)
    S += bt[:, None, None] * kt[:, :, None] * (vt - pred)[:, None, :]
    return scale * np.einsum("hk,hkv->hv", qt, S)


def sequences(B, T, cu_seqlens):
    """[(row, start, end)] per sequence."""
    if cu_seqlens is None:
        return [(n, 0, T) for n in range(B)]
    cu = [int(c) for c in np.asarray(cu_seqlens)]
    return [(0, cu[n], cu[n + 1]) for n in range(len(cu) - 1)]


def _to_kv(s, state_v_first):
    s = f64(s)
    return s.transpose(0, 2, 1).copy() if state_v_first else s.copy()


def _from_kv(S, state_v_first):
    return S.transpose(0, 2, 1).copy() if state_v_first else S.copy()


def kda(q, k, v, g, beta, *, initial_state=None, state_v_first=False, cu_seqlens=None, **opts):
    """Returns (o [B, T, HV, V], final states [N, HV, K, V] or [N, HV, V, K]), float64.

    initial_state uses the same layout as the returned states (state_v_first decides); opts are
    those of prepare().
    """
    q, k, v, a, b, scale = prepare(q, k, v, g, beta, **opts)
    B, T, HV, K = q.shape
    V = v.shape[3]
    seqs = sequences(B, T, cu_seqlens)
    o = np.zeros((B, T, HV, V))
    final = []
    for n, (row, start, end) in enumerate(seqs):
        if initial_state is None:
            S = np.zeros((HV, K, V))
        else:
            S = _to_kv(initial_state[n], state_v_first)
        for t in range(start, end):
            o[row, t] = step(S, q[row, t], k[row, t], v[row, t], a[row, t], b[row, t], scale)
        final.append(_from_kv(S, state_v_first))
    return o, np.stack(final)


def read_slot(idx, acc, n):
    """The pool slot sequence n of a decode starts from (negative: skipped): slot n without
    indices, idx[n] for 1-D ones, idx[n, a_n - 1] for 2-D ones (a_n accepted tokens, 1 without)."""
    if idx is None:
        return n
    if idx.ndim == 1:
        return int(idx[n])
    return int(idx[n, (int(acc[n]) if acc is not None else 1) - 1])


def decode_pool(q, k, v, g, beta, pool, *, state_indices=None, num_accepted_tokens=None,
                cu_seqlens=None, state_v_first=False, **opts):
    """The decode semantics of flashkda.h on a float64 copy of the pool: returns (o, pool)."""
    q, k, v, a, b, scale = prepare(q, k, v, g, beta, **opts)
    B, T, HV, K = q.shape
    V = v.shape[3]
    pool = f64(pool).copy()
    idx = None if state_indices is None else np.asarray(state_indices)
    acc = None if num_accepted_tokens is None else np.asarray(num_accepted_tokens)
    o = np.zeros((B, T, HV, V))
    for n, (row, start, end) in enumerate(sequences(B, T, cu_seqlens)):
        read = read_slot(idx, acc, n)
        if read < 0:
            continue  # skipped: out rows stay zero, no state read or written
        S = _to_kv(pool[read], state_v_first)
        for j, t in enumerate(range(start, end)):
            o[row, t] = step(S, q[row, t], k[row, t], v[row, t], a[row, t], b[row, t], scale)
            if idx is not None and idx.ndim == 2 and int(idx[n, j]) >= 0:
                pool[int(idx[n, j])] = _from_kv(S, state_v_first)
        if idx is None or idx.ndim == 1:
            pool[read] = _from_kv(S, state_v_first)
    return o, pool


def rel_err(x, ref):
    """Relative Frobenius error of x against ref."""
    x = np.asarray(x, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    den = np.linalg.norm(ref)
    return np.linalg.norm(x - ref) / (den if den > 0 else 1.0)

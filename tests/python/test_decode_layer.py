"""flash_kda.decode_layer on the CPU: the fused conv + decode + gated norm of one KDA layer,
against a float64 NumPy model written here from the formulas (chains of calls, skipped
sequences, 2-D indices with accepted counts, both gates), and its argument errors."""

import numpy as np
import pytest

import flash_kda


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def model_call(x, w, bias, cs, g, beta, A_log, dt, pool, gate, nw, idx, acc, lb, eps, H, K, V):
    """One call on float64 copies of the pools (cs [PC, L, dim], pool [P, HV, K, V]), updated in
    place; returns out [B, T, HV, V]. x etc. carry a T dimension; idx is [B] or [B, T_max]."""
    B, T, dim = x.shape
    W = w.shape[1]
    HV = beta.shape[2]
    out = np.zeros((B, T, HV, V))
    for n in range(B):
        if idx is None:
            read, cslot, first = n, n, 0
        elif idx.ndim == 1:
            read, cslot, first = idx[n], idx[n], 0
        else:
            a = 1 if acc is None else acc[n]
            read, cslot, first = idx[n, a - 1], idx[n, 0], (a - 1 if acc is not None else 0)
        if read < 0:
            continue
        seq = np.concatenate([cs[cslot, first:first + W - 1, :], x[n]], axis=0)  # [W-1+T, dim]
        y = np.stack([(bias if bias is not None else 0) + (w * seq[t:t + W].T).sum(1)
                      for t in range(T)])
        y = y * sigmoid(y)
        if acc is not None:
            cs[cslot, :W - 2 + T] = seq[1:]
        else:
            cs[cslot, :W - 1] = seq[T:]
        q = y[:, :H * K].reshape(T, H, K)
        k = y[:, H * K:2 * H * K].reshape(T, H, K)
        v = y[:, 2 * H * K:].reshape(T, HV, V)
        for h in range(HV):
            S = pool[read, h].copy()
            for t in range(T):
                qh = q[t, h // (HV // H)] / np.sqrt((q[t, h // (HV // H)] ** 2).sum() + 1e-6)
                kh = k[t, h // (HV // H)] / np.sqrt((k[t, h // (HV // H)] ** 2).sum() + 1e-6)
                raw = g[n, t, h] + dt[h]
                A = np.exp(A_log[h])
                decay = lb * sigmoid(A * raw) if lb is not None else -A * np.log1p(np.exp(raw))
                S = np.exp(decay)[:, None] * S
                u = sigmoid(beta[n, t, h]) * (v[t, h] - S.T @ kh)
                S = S + np.outer(kh, u)
                o = S.T @ qh / np.sqrt(K)
                out[n, t, h] = o / np.sqrt((o ** 2).mean() + eps) * nw * sigmoid(gate[n, t, h])
                if idx is not None and idx.ndim == 2:
                    if idx[n, t] >= 0:
                        pool[idx[n, t], h] = S.astype(np.float32)
            if idx is None or idx.ndim == 1:
                pool[read, h] = S.astype(np.float32)
    return out


def make_layer(rng, B, T, H, HV, K, V, W, P, PC, L):
    dim = 2 * H * K + HV * V
    f = np.float32
    return dict(
        mixed_qkv=rng.standard_normal((B, T, dim)).astype(f),
        conv_weight=(0.5 * rng.standard_normal((dim, W))).astype(f),
        conv_bias=(0.2 * rng.standard_normal(dim)).astype(f),
        conv_state=rng.standard_normal((PC, L, dim)).astype(f),
        g=rng.standard_normal((B, T, HV, K)).astype(f),
        beta=rng.standard_normal((B, T, HV)).astype(f),
        A_log=rng.uniform(-1, 0.5, HV).astype(f),
        dt_bias=(0.5 * rng.standard_normal((HV, K))).astype(f),
        state_pool=(0.3 * rng.standard_normal((P, HV, K, V))).astype(f),
        output_gate=(1.5 * rng.standard_normal((B, T, HV, V))).astype(f),
        norm_weight=rng.uniform(0.5, 1.5, V).astype(f),
    )


def run_both(layer, model_pools, H, K, V, lb, eps, idx, acc, squeeze_t):
    """Fast and reference on copies of the pools; the model on its float64 copies."""
    results = []
    for reference in (False, True):
        args = {k: v.copy() for k, v in layer.items()}
        if squeeze_t:
            for name in ("mixed_qkv", "g", "beta", "output_gate"):
                args[name] = args[name][:, 0]
        out = np.full(args["output_gate"].shape, np.nan, np.float32)
        ret = flash_kda.decode_layer(**args, out=out, lower_bound=lb, norm_eps=eps,
                                     state_indices=idx, num_accepted_tokens=acc,
                                     reference=reference, num_threads=2)
        assert ret is out
        assert np.isfinite(out).all()
        results.append((out, args["conv_state"], args["state_pool"]))
    cs, pool = model_pools
    expect = model_call(layer["mixed_qkv"].astype(np.float64), layer["conv_weight"],
                        layer["conv_bias"], cs, layer["g"], layer["beta"], layer["A_log"],
                        layer["dt_bias"], pool, layer["output_gate"], layer["norm_weight"], idx,
                        acc, lb, eps, H, K, V)
    if squeeze_t:
        expect = expect[:, 0]
    return results, expect


def rel(a, b):
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)


@pytest.mark.parametrize("lb", [-5.0, None])
def test_single_token_chain(lb):
    rng = np.random.default_rng(7)
    B, T, H, HV, K, V, W, P, PC, L = 3, 1, 2, 4, 16, 24, 4, 5, 4, 3
    layer = make_layer(rng, B, T, H, HV, K, V, W, P, PC, L)
    cs, pool = layer["conv_state"].astype(np.float64), layer["state_pool"].astype(np.float64)
    for call in range(3):
        layer["mixed_qkv"] = rng.standard_normal(layer["mixed_qkv"].shape).astype(np.float32)
        idx = np.array([2, -1 if call == 1 else 0, 3], np.int64)
        results, expect = run_both(layer, (cs, pool), H, K, V, lb, 1e-5, idx, None, True)
        for (out, conv_state, state_pool), bar in zip(results, (2e-4, 2e-6)):
            assert rel(out, expect) < bar
            assert np.array_equal(conv_state, cs.astype(np.float32))  # raw inputs, copied
            assert rel(state_pool, pool) < bar
            if call == 1:
                assert (out[1] == 0).all()  # the skipped sequence
            assert np.array_equal(state_pool[1], layer["state_pool"][1])  # no sequence's slot
        layer["conv_state"], layer["state_pool"] = results[1][1], results[1][2]


def test_spec_decode_sliding_conv_window():
    rng = np.random.default_rng(11)
    B, T, H, HV, K, V, W, P, PC, L = 3, 3, 1, 2, 16, 16, 4, 10, 3, 6
    layer = make_layer(rng, B, T, H, HV, K, V, W, P, PC, L)
    cs, pool = layer["conv_state"].astype(np.float64), layer["state_pool"].astype(np.float64)
    idx = np.array([[0, 3, 4], [1, 5, 6], [2, 7, 8]], np.int32)
    acc = np.array([1, 3, 2], np.int32)
    results, expect = run_both(layer, (cs, pool), H, K, V, -5.0, 1e-6, idx, acc, False)
    for (out, conv_state, state_pool), bar in zip(results, (2e-4, 2e-6)):
        assert rel(out, expect) < bar
        assert np.array_equal(conv_state, cs.astype(np.float32))
        assert rel(state_pool, pool) < bar
        assert np.array_equal(state_pool[9], layer["state_pool"][9])
        assert np.array_equal(conv_state[:, W - 2 + T:], layer["conv_state"][:, W - 2 + T:])


def test_errors_name_the_argument_and_write_nothing():
    rng = np.random.default_rng(3)
    layer = make_layer(rng, 2, 1, 1, 2, 8, 8, 4, 5, 3, 3)  # 5 recurrent slots, 3 conv slots
    for name in ("mixed_qkv", "g", "beta", "output_gate"):
        layer[name] = layer[name][:, 0]
    before = {k: v.copy() for k, v in layer.items()}
    out = np.full(layer["output_gate"].shape, np.nan, np.float32)
    cases = [
        (dict(norm_eps=0.0), flash_kda.InvalidArgumentError, "norm_eps"),
        (dict(norm_eps=1e-50), flash_kda.InvalidArgumentError, "norm_eps"),
        (dict(lower_bound=0.0), flash_kda.InvalidArgumentError, "lower_bound"),
        (dict(lower_bound=-5.0, state_indices=np.array([0, 3], np.int64)),
         flash_kda.InvalidArgumentError, "conv_state pool"),
        (dict(lower_bound=-5.0, norm_eps="x"), flash_kda.ArgumentTypeError, "norm_eps"),
        (dict(lower_bound=-5.0, conv_wieght=1), flash_kda.FlashKDAError, "conv_wieght"),
    ]
    for kw, error, text in cases:
        with pytest.raises(error, match=text):
            flash_kda.decode_layer(**layer, out=out, **kw)
        assert np.isnan(out).all()
        for k, v in layer.items():
            assert np.array_equal(v, before[k]), k
    bad = dict(layer, conv_state=layer["conv_state"][:, :2])  # L = 2 < W - 1
    with pytest.raises(flash_kda.InvalidArgumentError, match="conv_state: L = 2"):
        flash_kda.decode_layer(**bad, lower_bound=-5.0)


def test_v_first_pool_matches_k_first():
    """vLLM keeps KDA states as [P, HV, V, K]: state_v_first gives the same answer bitwise."""
    rng = np.random.default_rng(13)
    layer = make_layer(rng, 3, 1, 2, 4, 16, 8, 4, 4, 3, 3)
    for name in ("mixed_qkv", "g", "beta", "output_gate"):
        layer[name] = layer[name][:, 0]
    idx = np.array([2, 0, 1], np.int64)
    kv = {k: v.copy() for k, v in layer.items()}
    out_kv = flash_kda.decode_layer(**kv, lower_bound=-5.0, state_indices=idx)
    vk = {k: v.copy() for k, v in layer.items()}
    vk["state_pool"] = np.ascontiguousarray(np.swapaxes(layer["state_pool"], 2, 3))
    out_vk = flash_kda.decode_layer(**vk, lower_bound=-5.0, state_indices=idx,
                                    state_v_first=True)
    assert np.array_equal(out_kv, out_vk)
    assert np.array_equal(kv["state_pool"], np.swapaxes(vk["state_pool"], 2, 3))
    assert np.array_equal(kv["conv_state"], vk["conv_state"])

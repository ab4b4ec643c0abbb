"""The prefill's states for serving engines from Python: checkpoints, intermediate states (fla's
h), has_initial_state and the state pool in place, through prefill, chunk_kda and fwd (NumPy, CPU).

Every written state is checked against kda_numpy's float64 run over that prefix of its sequence;
on the same path, a checkpoint also equals bitwise the final state of a prefill over the prefix.
"""

import numpy as np
import pytest

import flash_kda
from helpers import bar, bfloat16_dtype, gate_params, log_decay, make_inputs, poison
from kda_numpy import kda, rel_err

H, HV, K, V = 2, 4, 16, 16
LENGTHS = [1, 15, 0, 17, 64, 65]
BF16 = bfloat16_dtype()


def bounded_inputs(rng, B, T):
    """Token inputs whose recurrence stays bounded: unit-norm q and k, beta in (0, 1), a log
    decay for the gate "none"."""
    kw = make_inputs(rng, B=B, T=T, H=H, HV=HV, K=K, V=V)
    for name in ("q", "k"):
        x = kw[name]
        kw[name] = (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)
    kw["g"] = log_decay(rng, (B, T, HV, K))
    kw["beta"] = rng.uniform(0.1, 0.9, (B, T, HV)).astype(np.float32)
    return kw


def varlen_inputs(rng, lengths=LENGTHS):
    kw = bounded_inputs(rng, 1, sum(lengths))
    cu = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return kw, cu


def prefix_state(kw, cu, initial, n, offset, state_v_first=False):
    """kda_numpy's state after `offset` tokens of sequence n (float64), from initial[n]."""
    s = int(cu[n])
    part = {name: x[:, s:s + offset] for name, x in kw.items()}
    init = None if initial is None else initial[n:n + 1]
    _, final = kda(**part, initial_state=init, state_v_first=state_v_first)
    return final[0]


def library_prefix_state(kw, cu, initial, n, offset, dtype=np.float32, **opts):
    """The library's final state of a prefill over the first `offset` tokens of sequence n."""
    s = int(cu[n])
    part = {name: x[:, s:s + offset] for name, x in kw.items()}
    final = poison((1,) + initial.shape[1:], dtype)
    flash_kda.prefill(**part, initial_state=initial[n:n + 1], final_state=final, **opts)
    return final[0]


@pytest.mark.parametrize("reference", [False, True])
@pytest.mark.parametrize("offsets_dtype", [np.int32, np.int64])
def test_checkpoints_match_prefix_runs(rng, reference, offsets_dtype):
    kw, cu = varlen_inputs(rng)
    N = len(LENGTHS)
    initial = rng.standard_normal((N, HV, K, V)).astype(np.float32)
    offsets = np.array([[rng.integers(0, n + 1), n, -1, n + 1] for n in LENGTHS], offsets_dtype)
    ckpt = poison((N, 4, HV, K, V))
    out_plain = flash_kda.prefill(**kw, cu_seqlens=cu, initial_state=initial, reference=reference)
    out = flash_kda.prefill(**kw, cu_seqlens=cu, initial_state=initial, checkpoint_offsets=offsets,
                            checkpoint_states=ckpt, reference=reference)
    np.testing.assert_array_equal(out, out_plain)  # asking for checkpoints leaves out alone
    for n, length in enumerate(LENGTHS):
        for c in range(4):
            off = int(offsets[n, c])
            if off < 0 or off > length:
                assert np.isnan(ckpt[n, c]).all(), (n, c, off)
                continue
            want = prefix_state(kw, cu, initial, n, off)
            assert rel_err(ckpt[n, c], want) <= bar(T=length, K=K, reference=reference) + 1e-30
            same_path = library_prefix_state(kw, cu, initial, n, off, reference=reference)
            np.testing.assert_array_equal(ckpt[n, c], same_path)


@pytest.mark.parametrize("chunk_size", [64, 32])
@pytest.mark.parametrize("state_v_first", [False, True])
def test_chunk_kda_returns_flas_intermediate_states(rng, chunk_size, state_v_first):
    kw, cu = varlen_inputs(rng)
    N = len(LENGTHS)
    shape = (N, HV, V, K) if state_v_first else (N, HV, K, V)
    initial = rng.standard_normal(shape).astype(np.float32)
    o, final, h = flash_kda.chunk_kda(**kw, initial_state=initial, output_final_state=True,
                                      cu_seqlens=cu, state_v_first=state_v_first,
                                      return_intermediate_states=True, chunk_size=chunk_size)
    chunks = [-(-n // chunk_size) for n in LENGTHS]
    assert h.shape == (1, sum(chunks)) + shape[1:]
    assert h.dtype == kw["k"].dtype
    row = 0
    for n, length in enumerate(LENGTHS):
        for i in range(chunks[n]):
            want = prefix_state(kw, cu, initial, n, i * chunk_size, state_v_first)
            if i == 0:
                np.testing.assert_array_equal(h[0, row], initial[n])  # the state entering chunk 0
            assert rel_err(h[0, row], want) <= bar(T=length, K=K) + 1e-30, (n, i)
            row += 1
    o2, final2 = flash_kda.chunk_kda(**kw, initial_state=initial, output_final_state=True,
                                     cu_seqlens=cu, state_v_first=state_v_first)
    np.testing.assert_array_equal(o, o2)
    np.testing.assert_array_equal(final, final2)


def test_chunk_kda_intermediate_states_equal_lengths(rng):
    B, T = 2, 70
    kw = bounded_inputs(rng, B, T)
    o, final, h = flash_kda.chunk_kda(**kw, return_intermediate_states=True)
    assert final is None
    assert h.shape == (B, 2, HV, K, V)
    np.testing.assert_array_equal(h[:, 0], 0.0)  # no initial state: zero
    for b in range(B):
        part = {name: x[b:b + 1, :64] for name, x in kw.items()}
        _, want = kda(**part)
        assert rel_err(h[b, 1], want[0]) <= bar(T=T, K=K)


@pytest.mark.parametrize("state_dtype", ["float32", "bfloat16"])
def test_prefill_on_a_state_pool_in_place(rng, state_dtype):
    if state_dtype == "bfloat16" and BF16 is None:
        pytest.skip("ml_dtypes is not installed")
    dtype = np.float32 if state_dtype == "float32" else BF16
    kw, cu = varlen_inputs(rng)
    N, P = len(LENGTHS), 4 * len(LENGTHS)
    pool = rng.standard_normal((P, HV, K, V)).astype(dtype)
    before = pool.copy()
    init_idx = np.array([1, 3, 5, 7, -1, 9], np.int32)
    has_init = np.array([True, True, True, False, True, True])
    # 0 and 1 write each other's initial slot, 2 in place, 3 to a fresh slot, 4 not written.
    final_idx = np.array([3, 1, 5, 12, -1, 13], np.int64)
    offsets = np.array([[n // 2] for n in LENGTHS], np.int64)
    ckpt_idx = np.arange(14, 14 + N, dtype=np.int64)[:, None]
    out = flash_kda.prefill(**kw, cu_seqlens=cu, state_pool=pool, initial_state_indices=init_idx,
                            final_state_indices=final_idx, has_initial_state=has_init,
                            checkpoint_offsets=offsets, checkpoint_indices=ckpt_idx)
    gathered = np.stack([before[s].astype(np.float32) if s >= 0 and f else np.zeros((HV, K, V))
                         for s, f in zip(init_idx, has_init)]).astype(np.float32)
    o_want, final_want = kda(**kw, initial_state=gathered, cu_seqlens=cu)
    assert rel_err(out, o_want) <= bar(T=65, K=K)
    written = set()
    for n in range(N):
        if final_idx[n] >= 0:
            slot = int(final_idx[n])
            written.add(slot)
            assert rel_err(pool[slot].astype(np.float64), final_want[n]) <= bar(
                dtype, T=65, K=K), n
        slot = int(ckpt_idx[n, 0])
        written.add(slot)
        want = prefix_state(kw, cu, gathered, n, int(offsets[n, 0]))
        assert rel_err(pool[slot].astype(np.float64), want) <= bar(dtype, T=65, K=K), n
    for s in range(P):
        if s not in written:
            np.testing.assert_array_equal(pool[s], before[s])  # untouched, bit for bit


def test_fwd_takes_vllms_checkpoint_arguments(rng):
    kw, cu = varlen_inputs(rng)
    N = len(LENGTHS)
    A_log, dt_bias = gate_params(rng, HV, K)
    kw["g"] = rng.standard_normal(kw["g"].shape).astype(np.float32)
    kw["beta"] = rng.standard_normal(kw["beta"].shape).astype(np.float32)
    q, k, v, g, beta = kw["q"], kw["k"], kw["v"], kw["g"], kw["beta"]
    if H != HV:  # fwd has no GVA in FlashKDA's signature; use H value heads
        q = np.repeat(q, HV // H, axis=2)
        k = np.repeat(k, HV // H, axis=2)
    h0 = rng.standard_normal((N, HV, V, K)).astype(np.float32)
    offsets = np.array([n // 3 for n in LENGTHS], np.int32)
    ckpt = poison((N, HV, V, K))
    out = poison(v.shape)
    flash_kda.fwd(q, k, v, g, beta, None, out, A_log, dt_bias, -5.0, h0, None, cu,
                  checkpoint_state=ckpt, checkpoint_offsets=offsets)
    opts = dict(A_log=A_log, dt_bias=dt_bias, gate="lower_bound", lower_bound=-5.0,
                use_qk_l2norm=True, use_beta_sigmoid=True, state_v_first=True)
    parts = dict(q=q, k=k, v=v, g=g, beta=beta)
    for n in range(N):
        want = library_prefix_state(parts, cu, h0, n, int(offsets[n]), **opts)
        np.testing.assert_array_equal(ckpt[n], want)
    # Several per sequence: [N, C, H, V, K] with [N, C].
    offsets2 = np.stack([offsets, np.array(LENGTHS, np.int32)], axis=1)
    ckpt2 = poison((N, 2, HV, V, K))
    flash_kda.fwd(q, k, v, g, beta, None, out, A_log, dt_bias, -5.0, h0, None, cu,
                  checkpoint_state=ckpt2, checkpoint_offsets=offsets2)
    np.testing.assert_array_equal(ckpt2[:, 0], ckpt)
    with pytest.raises(ValueError, match="checkpoint_offsets: is required together with"):
        flash_kda.fwd(q, k, v, g, beta, None, out, A_log, dt_bias, -5.0, checkpoint_state=ckpt)
    with pytest.raises(ValueError, match="checkpoint_state: with 1-D checkpoint_offsets"):
        flash_kda.fwd(q, k, v, g, beta, None, out, A_log, dt_bias, -5.0, h0, None, cu,
                      checkpoint_state=ckpt2, checkpoint_offsets=offsets)


def test_errors_name_the_argument_and_write_nothing(rng):
    kw, cu = varlen_inputs(rng)
    N = len(LENGTHS)
    pool = rng.standard_normal((N, HV, K, V)).astype(np.float32)
    before = pool.copy()
    out = poison(kw["v"].shape)
    with pytest.raises(flash_kda.FlashKDAError, match="state_pool: excludes initial_state"):
        flash_kda.prefill(**kw, cu_seqlens=cu, out=out, state_pool=pool, initial_state=pool.copy())
    with pytest.raises(ValueError, match="initial_state_indices: entry \\[2\\] = 6 is outside"):
        flash_kda.prefill(**kw, cu_seqlens=cu, out=out, state_pool=pool,
                          initial_state_indices=np.array([0, 1, 6, 3, 4, 5], np.int32))
    with pytest.raises(ValueError, match="intermediate_chunk_size"):
        flash_kda.prefill(**kw, cu_seqlens=cu, out=out, intermediate_chunk_size=0)
    with pytest.raises(TypeError, match="intermediate_chunk_size"):
        flash_kda.prefill(**kw, cu_seqlens=cu, out=out, intermediate_chunk_size=2.5)
    strided = poison((N, 4, HV, K, V))[:, :2]  # the two leading dimensions do not merge
    with pytest.raises(ValueError, match="checkpoint_states: its first two dimensions"):
        flash_kda.prefill(**kw, cu_seqlens=cu, out=out, checkpoint_states=strided,
                          checkpoint_offsets=np.zeros((N, 2), np.int64))
    with pytest.raises(ValueError, match="has_initial_state: needs initial_state or state_pool"):
        flash_kda.prefill(**kw, cu_seqlens=cu, out=out, has_initial_state=np.ones(N, bool))
    np.testing.assert_array_equal(pool, before)
    assert np.isnan(out).all()


@pytest.mark.parametrize("flag_dtype", [bool, np.uint8, np.int32, np.int64])
def test_has_initial_state_masks_initial_state(rng, flag_dtype):
    kw, cu = varlen_inputs(rng)
    N = len(LENGTHS)
    initial = rng.standard_normal((N, HV, K, V)).astype(np.float32)
    flags = np.array([1, 0, 1, 0, 0, 1], flag_dtype)
    final = poison((N, HV, K, V))
    out = flash_kda.prefill(**kw, cu_seqlens=cu, initial_state=initial, final_state=final,
                            has_initial_state=flags)
    masked = initial * flags.astype(np.float32)[:, None, None, None]
    final_want = poison((N, HV, K, V))
    out_want = flash_kda.prefill(**kw, cu_seqlens=cu, initial_state=masked,
                                 final_state=final_want)
    np.testing.assert_array_equal(out, out_want)
    np.testing.assert_array_equal(final, final_want)

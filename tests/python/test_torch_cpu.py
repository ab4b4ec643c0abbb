"""torch CPU tensors in, torch tensors out (skipped when torch is not installed)."""

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import flash_kda  # noqa: E402
from helpers import bar_for, gate_params, make_inputs  # noqa: E402
from kda_numpy import decode_pool, kda, rel_err  # noqa: E402

SAFE = dict(gate="lower_bound", lower_bound=-5.0, use_qk_l2norm=True, use_beta_sigmoid=True)
NP_SAFE = dict(gate="lower_bound", lower_bound=-5.0, l2norm_qk=True, beta_sigmoid=True)
FLA_SAFE = dict(use_gate_in_kernel=True, use_qk_l2norm_in_kernel=True,
                use_beta_sigmoid_in_kernel=True, safe_gate=True, lower_bound=-5.0)


def to_torch(d, dtype=None):
    return {n: (torch.from_numpy(x).to(dtype) if dtype is not None else torch.from_numpy(x))
            for n, x in d.items()}


def as_numpy(d):
    return {n: x.float().numpy() for n, x in d.items()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_prefill_torch_dtypes(rng, dtype):
    H, K, V = 2, 16, 32
    x = to_torch(make_inputs(rng, B=2, T=33, H=H, K=K, V=V), dtype)
    A_log, dt_bias = gate_params(rng, H, K)
    final = torch.full((2, H, K, V), float("nan"))
    o = flash_kda.prefill(**x, A_log=torch.from_numpy(A_log), dt_bias=torch.from_numpy(dt_bias),
                          final_state=final, **SAFE)
    assert isinstance(o, torch.Tensor) and o.dtype == dtype and o.shape == x["v"].shape
    o_np, s_np = kda(**as_numpy(x), A_log=A_log, dt_bias=dt_bias, **NP_SAFE)
    assert rel_err(o.float().numpy(), o_np) < bar_for(x, o)
    assert rel_err(final.numpy(), s_np) < bar_for(x, final)


def test_non_contiguous_tensors(rng):
    # [B, H, T, K] storage viewed as [B, T, H, K]: strides pass through as they are.
    H, K, V = 2, 16, 16
    x = make_inputs(rng, B=1, T=20, H=H, K=K, V=V)
    t = {n: torch.from_numpy(np.ascontiguousarray(np.swapaxes(a, 1, 2))).transpose(1, 2)
         for n, a in x.items() if a.ndim == 4}
    t["beta"] = torch.from_numpy(x["beta"])
    assert not t["q"].is_contiguous()
    o = flash_kda.prefill(**t, **SAFE)
    o_np, _ = kda(**x, **NP_SAFE)
    assert rel_err(o.numpy(), o_np) < bar_for(x, o)


def test_chunk_kda_and_fwd_torch(rng):
    H, K = 2, 16
    x = to_torch(make_inputs(rng, B=1, T=30, H=H, K=K, V=K), torch.bfloat16)
    A_log, dt_bias = (torch.from_numpy(a) for a in gate_params(rng, H, K))
    h0 = torch.randn(1, H, K, K)
    with torch.inference_mode():
        o, ht = flash_kda.chunk_kda(**x, initial_state=h0, output_final_state=True,
                                    state_v_first=True, A_log=A_log, dt_bias=dt_bias.view(-1),
                                    **FLA_SAFE)
        out = torch.empty_like(x["v"])
        final = torch.empty(1, H, K, K)
        assert flash_kda.fwd(*(x[n] for n in ("q", "k", "v", "g", "beta")), None, out, A_log,
                             dt_bias, -5.0, initial_state=h0, final_state=final) is None
    assert ht.dtype == torch.float32 and o.dtype == torch.bfloat16
    torch.testing.assert_close(out, o, rtol=0, atol=0)
    torch.testing.assert_close(final, ht, rtol=0, atol=0)
    o_np, s_np = kda(**as_numpy(x), initial_state=h0.numpy(), state_v_first=True,
                     A_log=A_log.numpy(), dt_bias=dt_bias.numpy(), **NP_SAFE)
    assert rel_err(o.float().numpy(), o_np) < bar_for(x, o)
    assert rel_err(ht.numpy(), s_np) < bar_for(x, ht)


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_fused_recurrent_kda_fwd_pool_in_place(rng, index_dtype):
    N, H, K, V, P = 3, 2, 16, 16, 5
    x = to_torch(make_inputs(rng, B=N, T=1, H=H, K=K, V=V))
    pool = torch.randn(P, H, K, V, dtype=torch.bfloat16)
    before = pool.clone()
    idx = torch.tensor([4, -1, 1], dtype=index_dtype)
    out, state = flash_kda.fused_recurrent_kda_fwd(**x, initial_state=pool,
                                                   ssm_state_indices=idx,
                                                   use_qk_l2norm_in_kernel=True,
                                                   use_gate_in_kernel=True, lower_bound=-5.0,
                                                   use_beta_sigmoid_in_kernel=True)
    assert state is pool
    o_np, p_np = decode_pool(**as_numpy(x), pool=before.float().numpy(),
                             state_indices=idx.numpy(), **NP_SAFE)
    assert rel_err(out.numpy(), o_np) < bar_for(x, out)
    assert rel_err(pool.float().numpy(), p_np) < bar_for(x, pool)
    assert torch.equal(pool[0], before[0]) and torch.equal(pool[2], before[2])
    assert (out[1] == 0).all()


def test_fused_recurrent_kda_torch(rng):
    x = to_torch(make_inputs(rng, B=2, T=4, H=1, K=16, V=16))
    h0 = torch.randn(2, 1, 16, 16)
    o, ht = flash_kda.fused_recurrent_kda(**x, initial_state=h0, output_final_state=True,
                                          use_qk_l2norm_in_kernel=True)
    o_np, s_np = kda(**as_numpy(x), initial_state=h0.numpy(), l2norm_qk=True)
    assert rel_err(o.numpy(), o_np) < bar_for(x, o) and rel_err(ht.numpy(), s_np) < bar_for(x, ht)


def test_numpy_and_torch_cpu_mix(rng):
    x = make_inputs(rng, B=1, T=10, H=1, K=16, V=16)
    t = dict(x, q=torch.from_numpy(x["q"]))
    out = torch.empty(1, 10, 1, 16)
    flash_kda.prefill(**t, out=out, **SAFE)
    o_np, _ = kda(**x, **NP_SAFE)
    assert rel_err(out.numpy(), o_np) < bar_for(x, out)


def test_autograd_is_refused(rng):
    x = to_torch(make_inputs(rng, B=1, T=4, H=1, K=16, V=16))
    x["q"].requires_grad_(True)
    with pytest.raises(NotImplementedError, match="q: requires grad"):
        flash_kda.chunk_kda(**x)
    with torch.no_grad():
        o, _ = flash_kda.chunk_kda(**x)
    assert o.shape == (1, 4, 1, 16)


def test_bad_torch_tensors(rng):
    x = to_torch(make_inputs(rng, B=1, T=4, H=1, K=16, V=16))
    with pytest.raises(TypeError, match="^q: torch dtype torch.float64 is not supported"):
        flash_kda.prefill(**dict(x, q=x["q"].double()))
    with pytest.raises(ValueError, match="^k: device meta is not supported"):
        flash_kda.prefill(**dict(x, k=torch.empty(1, 4, 1, 16, device="meta")))
    out = torch.full((1, 4, 1, 16), float("nan"))
    with pytest.raises(ValueError, match=r"^options\.lower_bound"):
        flash_kda.prefill(**x, out=out, gate="lower_bound", lower_bound=1.0)
    assert out.isnan().all()


def test_empty_tensors(rng):
    x = to_torch(make_inputs(rng, B=1, T=0, H=1, K=16, V=16))
    h0 = torch.randn(1, 1, 16, 16)
    final = torch.empty(1, 1, 16, 16)
    o = flash_kda.prefill(**x, initial_state=h0, final_state=final, **SAFE)
    assert o.shape == (1, 0, 1, 16)
    assert torch.equal(final, h0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_stores_round_like_torch(rng, dtype):
    # The exact problem of test_decode.py (q = k = e_0, no decay, b = 0.5): the state's row 0
    # becomes m = (s + v) / 2 and out fl32(scale * m), exactly; torch's own float32 -> bf16 /
    # f16 conversion (round to nearest even) must give the same bits as the library's stores.
    K, V, scale = 16, 256, 1.2345678
    mag = torch.from_numpy(np.exp2(rng.integers(-6, 7, size=V)).astype(np.float32))
    s = (mag * torch.from_numpy(rng.standard_normal(V).astype(np.float32))).to(dtype).float()
    v = (mag * torch.from_numpy(rng.standard_normal(V).astype(np.float32))).to(dtype).float()
    m = s + 0.5 * (v - s)
    exact = (s.double() + 0.5 * (v.double() - s.double())) == m.double()
    s, v, m = (torch.where(exact, x, torch.ones_like(x)) for x in (s, v, m))
    q = torch.zeros(1, 1, 1, K, dtype=dtype)
    q[..., 0] = 1
    pool = torch.randn(2, 1, K, V)
    pool[1, 0, 0] = s
    out = flash_kda.decode(q, q, v.to(dtype).view(1, 1, 1, V), torch.zeros(1, 1, 1, K),
                           torch.full((1, 1, 1), 0.5), pool, state_indices=torch.tensor([1]),
                           scale=scale, num_threads=3)
    want = (torch.tensor(scale, dtype=torch.float32) * m).to(dtype)
    got_bits, want_bits = out.view(V).view(torch.int16), want.view(torch.int16)
    same = (got_bits == want_bits) | ((got_bits | want_bits) & 0x7FFF == 0)
    assert same.all(), f"{(~same).sum().item()} of {V} outputs differ from torch's rounding"
    assert torch.equal(pool[1, 0, 0], m)  # a float32 state keeps m exactly


# ---- found by the torch variant of test_fuzz_args.py ---------------------------------------------


def test_flag_tensors_without_one_truth_value_are_refused(rng):
    """bool() of a torch tensor of 0 or 2+ elements raises RuntimeError (NumPy: ValueError),
    which escaped as it was instead of an ArgumentTypeError naming the flag."""
    x = to_torch(make_inputs(rng, B=1, T=4, H=1, K=16, V=16))
    for flag in (torch.tensor([1, 0]), torch.tensor([])):
        with pytest.raises(flash_kda.ArgumentTypeError, match="^use_qk_l2norm: expected a bool"):
            flash_kda.prefill(**x, use_qk_l2norm=flag)
        with pytest.raises(flash_kda.ArgumentTypeError, match="^output_final_state: expected a "):
            flash_kda.chunk_kda(**x, output_final_state=flag)
    o = flash_kda.prefill(**x, use_qk_l2norm=torch.tensor([True]))  # one element: its truth
    torch.testing.assert_close(o, flash_kda.prefill(**x, use_qk_l2norm=True), rtol=0, atol=0)


def test_nested_tensors_are_refused(rng):
    """A nested tensor's layout reads torch.strided, but reading its shape raises RuntimeError:
    every entry point let that escape instead of a ValueError naming the argument."""
    x = to_torch(make_inputs(rng, B=2, T=4, H=1, K=16, V=16))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch: nested tensors are a prototype
        nested = {n: torch.nested.nested_tensor(list(t.unbind(0))) for n, t in x.items()}
    pool = torch.zeros(2, 1, 16, 16)
    calls = {
        "prefill": lambda **kw: flash_kda.prefill(**kw),
        "decode": lambda **kw: flash_kda.decode(**kw, state_pool=pool),
        "chunk_kda": lambda **kw: flash_kda.chunk_kda(**kw),
        "fused_recurrent_kda": lambda **kw: flash_kda.fused_recurrent_kda(**kw),
        "fused_recurrent_kda_fwd": lambda **kw: flash_kda.fused_recurrent_kda_fwd(
            **kw, initial_state=pool),
        "fwd": lambda **kw: flash_kda.fwd(**kw, scale=None, out=torch.empty(2, 4, 1, 16),
                                          A_log=None, dt_bias=None, lower_bound=-5.0),
    }
    for call in calls.values():
        for name in x:
            with pytest.raises(flash_kda.InvalidArgumentError,
                               match=f"^{name}: torch layout nested is not supported"):
                call(**dict(x, **{name: nested[name]}))
    with pytest.raises(flash_kda.InvalidArgumentError, match="^out: torch layout nested"):
        flash_kda.fused_recurrent_kda_fwd(**x, initial_state=pool, out=nested["v"])


def test_chunk_count_reads_only_integer_tensors(rng):
    """chunk_kda(return_intermediate_states=True) reads cu_seqlens (or cu_seqlens_cpu) to count
    h's chunks: a meta, sparse, float or bfloat16 tensor there raised torch's NotImplementedError,
    TypeError or RuntimeError instead of a FlashKDAError naming it."""
    x = to_torch(make_inputs(rng, B=1, T=6, H=1, K=16, V=16))
    cu = torch.tensor([0, 2, 6])
    bad = [(torch.tensor([0, 2, 6], device="meta"), ValueError, "device meta"),
           (cu.to_sparse(), ValueError, "torch layout torch.sparse_coo"),
           (cu.to(torch.bfloat16), TypeError, "dtype torch.bfloat16 is not accepted"),
           (cu.float().requires_grad_(), TypeError, "dtype torch.float32 is not accepted")]
    for tensor, error, message in bad:
        for name in ("cu_seqlens", "cu_seqlens_cpu"):
            kw = {"cu_seqlens": cu, name: tensor}
            with pytest.raises(error, match=f"^{name}: {message}") as info:
                flash_kda.chunk_kda(**x, **kw, return_intermediate_states=True)
            assert isinstance(info.value, flash_kda.FlashKDAError)
    # a meta cu_seqlens with cu_seqlens_cpu: refused where every tensor is described
    with pytest.raises(flash_kda.InvalidArgumentError, match="^cu_seqlens: device meta"):
        flash_kda.chunk_kda(**x, cu_seqlens=bad[0][0], cu_seqlens_cpu=cu,
                            return_intermediate_states=True)
    # integer tensors of any width are read, as NumPy integer arrays are
    _, _, h = flash_kda.chunk_kda(**x, cu_seqlens=cu, cu_seqlens_cpu=cu.to(torch.int16),
                                  return_intermediate_states=True, chunk_size=32)
    assert h.shape == (1, 2, 1, 16, 16)


def test_fwd_refuses_sparse_checkpoint_offsets(rng):
    """fwd reshapes 1-D checkpoint_offsets [N] to [N, 1]: a sparse tensor raised torch's
    RuntimeError (no reshape for sparse tensors) instead of the ValueError naming it."""
    x = to_torch(make_inputs(rng, B=2, T=4, H=1, K=16, V=16))
    out = torch.full((2, 4, 1, 16), float("nan"))
    for offsets in (torch.tensor([1, 2]).to_sparse(), torch.tensor([1.0, 2.0]).to_mkldnn()):
        with pytest.raises(flash_kda.InvalidArgumentError,
                           match="^checkpoint_offsets: torch layout torch.(sparse_coo|_mkldnn)"):
            flash_kda.fwd(**x, scale=None, out=out, A_log=None, dt_bias=None, lower_bound=-5.0,
                          checkpoint_offsets=offsets, checkpoint_state=torch.zeros(2, 1, 16, 16))
    assert out.isnan().all()


def test_negated_views_are_refused(rng):
    """z.conj().imag is a float tensor whose memory holds minus its values (torch's neg bit):
    its data pointer was passed as it was, and beta of one value head (last dimension 1, where
    its stride of 2 is allowed) gave a wrong answer silently; as an output, minus the results."""
    x = to_torch(make_inputs(rng, B=1, T=3, H=1, K=16, V=16))
    z = torch.complex(torch.zeros_like(x["beta"]), -x["beta"])
    negated = z.conj().imag
    assert negated.is_neg() and torch.equal(negated, x["beta"])
    with pytest.raises(flash_kda.InvalidArgumentError, match=r"^beta: is a negated view"):
        flash_kda.prefill(**dict(x, beta=negated))
    o = flash_kda.prefill(**dict(x, beta=negated.resolve_neg()))
    torch.testing.assert_close(o, flash_kda.prefill(**x), rtol=0, atol=0)
    y = to_torch(make_inputs(rng, B=1, T=3, H=1, K=16, V=1))
    out = torch.complex(torch.zeros(1, 3, 1, 1), torch.full((1, 3, 1, 1), float("nan")))
    with pytest.raises(flash_kda.InvalidArgumentError, match=r"^out: is a negated view"):
        flash_kda.prefill(**y, out=out.conj().imag)
    assert out.imag.isnan().all()


# ---- found in the C library ----------------------------------------------------------------


def test_empty_initial_state_with_has_initial_state(rng):
    """No sequence (B = 0), an empty initial_state and has_initial_state: valid. Every empty torch
    tensor has data_ptr() 0, which the C library took for an absent initial state
    ("has_initial_state: needs initial_state or state_pool"; fixed in src/api/prefill_states.c)."""
    x = make_inputs(rng, B=0, T=3, H=1, K=16, V=16)
    states = dict(initial_state=np.zeros((0, 1, 16, 16), np.float32),
                  has_initial_state=np.zeros(0, bool))
    assert flash_kda.prefill(**x, **states).shape == (0, 3, 1, 16)
    assert flash_kda.prefill(**to_torch(x), **to_torch(states)).shape == (0, 3, 1, 16)

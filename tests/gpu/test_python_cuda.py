"""The Python package on torch CUDA tensors (GPU only; run by scripts/gpu_check.sh).

What the Python layer promises for CUDA tensors, and fla's dispatch to flash_kda.fwd:
  - answers match the C library's float64 reference on the CPU;
  - the call is queued on torch's current stream and never synchronises the host;
  - fwd and fused_recurrent_kda_fwd can be captured in a CUDA graph, and replay gives the same
    bits as an eager call;
  - fla's chunk_kda under torch.inference_mode() dispatches to flash_kda.fwd (fla logs
    "[FLA Backend] ... chunk_kda -> flash_kda") and returns the right answer.
"""

import logging
import os
import secrets

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)

import flash_kda  # noqa: E402

if not flash_kda.has_cuda():
    pytest.skip("libflashkda was built without CUDA", allow_module_level=True)

DEV = torch.device("cuda", 0)
H, K, V = 4, 128, 128
LB = -5.0


@pytest.fixture
def rng(request):
    seed = int(os.environ.get("FKDA_TEST_SEED", secrets.randbits(32)))
    print(f"seed {seed} ({request.node.name}); rerun with FKDA_TEST_SEED={seed}")
    return np.random.default_rng(seed)


def rel_err(x, ref):
    x = np.asarray(x, np.float64)
    ref = np.asarray(ref, np.float64)
    return np.linalg.norm(x - ref) / max(np.linalg.norm(ref), 1e-30)


def cpu32(t):
    return t.float().cpu().numpy()


def make(rng, B, T, dtype=torch.bfloat16, N=None, heads=H):
    """Raw FlashKDA-style inputs on the GPU, plus A_log, dt_bias and an fp32 [N, H, V, K] h0."""
    N = B if N is None else N

    def randn(*shape):
        return torch.from_numpy(rng.standard_normal(shape).astype(np.float32))

    x = {n: randn(B, T, heads, K).to(DEV, dtype) for n in ("q", "k", "g")}
    x["v"] = randn(B, T, heads, V).to(DEV, dtype)
    x["beta"] = randn(B, T, heads).to(DEV, dtype)
    x["A_log"] = torch.from_numpy(rng.uniform(-1, 1, heads).astype(np.float32)).to(DEV)
    x["dt_bias"] = (0.5 * randn(heads, K)).to(DEV)
    x["h0"] = (0.1 * randn(N, heads, V, K)).to(DEV)
    return x


def reference(x, cu_seqlens=None):
    """(out, final_state) of the float64 CPU reference for FlashKDA's options."""
    h0 = cpu32(x["h0"])
    final = np.empty_like(h0)
    out = flash_kda.prefill(*(cpu32(x[n]) for n in ("q", "k", "v", "g", "beta")),
                            A_log=cpu32(x["A_log"]), dt_bias=cpu32(x["dt_bias"]),
                            initial_state=h0, final_state=final,
                            cu_seqlens=None if cu_seqlens is None else cu_seqlens.cpu().numpy(),
                            gate="lower_bound", lower_bound=LB, use_qk_l2norm=True,
                            use_beta_sigmoid=True, state_v_first=True, reference=True)
    return out, final


def run_fwd(x, out, final, cu_seqlens=None):
    return flash_kda.fwd(x["q"], x["k"], x["v"], x["g"], x["beta"], K ** -0.5, out, x["A_log"],
                         x["dt_bias"], LB, initial_state=x["h0"], final_state=final,
                         cu_seqlens=cu_seqlens)


@pytest.mark.parametrize("T", [1, 17, 300])
def test_fwd_matches_cpu_reference(rng, T):
    x = make(rng, 2, T)
    out = torch.full_like(x["v"], float("nan"))
    final = torch.full_like(x["h0"], float("nan"))
    assert run_fwd(x, out, final) is None
    torch.cuda.synchronize()
    ref_out, ref_final = reference(x)
    assert not out.isnan().any() and not final.isnan().any()
    assert rel_err(cpu32(out), ref_out) < 6e-3
    assert rel_err(cpu32(final), ref_final) < 5e-3


def test_fwd_varlen(rng):
    cu = torch.tensor([0, 100, 100, 333, 400], dtype=torch.int64, device=DEV)
    x = make(rng, 1, 400, N=4)
    out = torch.full_like(x["v"], float("nan"))
    final = torch.full_like(x["h0"], float("nan"))
    run_fwd(x, out, final, cu_seqlens=cu)
    ref_out, ref_final = reference(x, cu)
    assert rel_err(cpu32(out), ref_out) < 6e-3
    assert rel_err(cpu32(final), ref_final) < 5e-3
    assert torch.equal(final[1], x["h0"][1])  # the empty sequence keeps its state


def test_last_kernels_names_the_prefill_kernels(rng):
    # fkda_last_kernels after a CUDA call: its prep, then its chain (bf16 inputs: not the fp16
    # family's), by the kernels' own names.
    x = make(rng, 1, 64)
    run_fwd(x, torch.empty_like(x["v"]), torch.empty_like(x["h0"]))
    names = flash_kda.last_kernels().split()
    assert len(names) >= 2, names
    assert names[0].startswith("pf_prep") and not names[0].startswith("pf_prep16"), names
    assert names[1].startswith("pf_chain") and not names[1].startswith("pf_chain16"), names


def test_no_host_synchronisation_and_current_stream(rng):
    # A side stream held busy by a long sleep: fwd must return while the sleep still runs (no
    # synchronisation), and its work must come after the sleep on that stream.
    x = make(rng, 1, 256)
    out = torch.full_like(x["v"], float("nan"))
    final = torch.full_like(x["h0"], float("nan"))
    run_fwd(x, out, final)  # first call: lazy module loading happens outside the measurement
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    done = torch.cuda.Event()
    with torch.cuda.stream(side):
        torch.cuda._sleep(int(1e9))  # about half a second
        # Poisoned on the side stream after the sleep: only a launch ordered after these fills
        # (on the current stream, the side one) can leave the right answer behind.
        out.fill_(float("nan"))
        final.fill_(float("nan"))
        run_fwd(x, out, final)
        done.record(side)
    assert not done.query(), "fwd waited for the stream: the Python path synchronised"
    done.synchronize()
    ref_out, ref_final = reference(x)
    assert rel_err(cpu32(out), ref_out) < 6e-3
    assert rel_err(cpu32(final), ref_final) < 5e-3


def test_no_torch_synchronisation(rng):
    x = make(rng, 1, 64)
    out = torch.empty_like(x["v"])
    final = torch.empty_like(x["h0"])
    torch.cuda.set_sync_debug_mode("error")
    try:
        run_fwd(x, out, final)
        flash_kda.fused_recurrent_kda_fwd(x["q"][:, :1], x["k"][:, :1], x["v"][:, :1],
                                          x["g"][:, :1], x["beta"][:, :1], initial_state=final,
                                          use_qk_l2norm_in_kernel=True)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def _warm_up_on_side_stream(fn):
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()


def test_cuda_graph_capture_of_fwd(rng):
    x = make(rng, 1, 200)
    out = torch.empty_like(x["v"])
    final = torch.empty_like(x["h0"])
    _warm_up_on_side_stream(lambda: run_fwd(x, out, final))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run_fwd(x, out, final)
    for _ in range(2):  # new inputs copied into the captured tensors, then replay
        fresh = make(rng, 1, 200)
        for n in ("q", "k", "v", "g", "beta", "A_log", "dt_bias", "h0"):
            x[n].copy_(fresh[n])
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        eager_out = torch.empty_like(out)
        eager_final = torch.empty_like(final)
        run_fwd(x, eager_out, eager_final)
        torch.cuda.synchronize()
        assert torch.equal(out, eager_out), "graph replay differs from an eager call"
        assert torch.equal(final, eager_final)
    ref_out, ref_final = reference(x)
    assert rel_err(cpu32(out), ref_out) < 6e-3 and rel_err(cpu32(final), ref_final) < 5e-3


def test_cuda_graph_capture_of_pool_decode(rng):
    # One decode step on an fp32 pool with 2-D indices and accepted counts, captured once and
    # replayed as a chain; the same chain eagerly on a copy of the pool gives the same bits.
    N, T, P = 3, 2, 8
    pool = torch.from_numpy(0.1 * rng.standard_normal((P, H, K, V)).astype(np.float32)).to(DEV)
    pool_eager = pool.clone()
    idx = torch.tensor([[0, 1], [2, -1], [4, 5]], dtype=torch.int32, device=DEV)
    acc = torch.tensor([1, 1, 2], dtype=torch.int32, device=DEV)
    steps = [make(rng, N, T, dtype=torch.float32) for _ in range(3)]
    static = {n: steps[0][n].clone() for n in ("q", "k", "v", "g", "beta", "A_log", "dt_bias")}
    out = torch.zeros_like(static["v"])

    def step(x, state, o):
        return flash_kda.fused_recurrent_kda_fwd(
            x["q"], x["k"], x["v"], x["g"], x["beta"], A_log=x["A_log"],
            dt_bias=x["dt_bias"].view(-1), initial_state=state, ssm_state_indices=idx,
            num_accepted_tokens=acc, use_qk_l2norm_in_kernel=True, use_gate_in_kernel=True,
            use_beta_sigmoid_in_kernel=True, lower_bound=LB, out=o)

    scratch = pool.clone()
    _warm_up_on_side_stream(lambda: step(static, scratch, torch.zeros_like(out)))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step(static, pool, out)
    for x in steps:
        for n in static:
            static[n].copy_(x[n])
        graph.replay()
        eager_out = torch.zeros_like(out)
        step(x, pool_eager, eager_out)
        torch.cuda.synchronize()
        assert torch.equal(out, eager_out)
        assert torch.equal(pool, pool_eager)


def test_fla_chunk_kda_dispatches_to_flash_kda(rng, caplog):
    pytest.importorskip("fla")
    from fla.ops.kda import chunk_kda as fla_chunk_kda

    try:  # fla logs a backend choice once per process: forget earlier ones
        from fla import backends as fla_backends
        for registry in fla_backends._function_registries.values():
            registry._logged.clear()
    except (ImportError, AttributeError):
        pass
    caplog.set_level(logging.INFO, logger="fla")
    x = make(rng, 1, 333)
    with torch.inference_mode():
        o, ht = fla_chunk_kda(
            q=x["q"], k=x["k"], v=x["v"], g=x["g"], beta=x["beta"], scale=K ** -0.5,
            initial_state=x["h0"], output_final_state=True, use_gate_in_kernel=True,
            use_qk_l2norm_in_kernel=True, use_beta_sigmoid_in_kernel=True, safe_gate=True,
            lower_bound=LB, state_v_first=True, A_log=x["A_log"], dt_bias=x["dt_bias"].view(-1))
    messages = [r.getMessage() for r in caplog.records]
    assert any("chunk_kda -> flash_kda" in m and "rejected" not in m for m in messages), messages
    ref_out, ref_final = reference(x)
    assert rel_err(cpu32(o), ref_out) < 6e-3
    assert rel_err(cpu32(ht), ref_final) < 5e-3


def test_our_chunk_kda_and_fused_recurrent_on_cuda(rng):
    x = make(rng, 1, 50)
    with torch.inference_mode():
        o, ht = flash_kda.chunk_kda(x["q"], x["k"], x["v"], x["g"], x["beta"],
                                    initial_state=x["h0"], output_final_state=True,
                                    use_gate_in_kernel=True, use_qk_l2norm_in_kernel=True,
                                    use_beta_sigmoid_in_kernel=True, safe_gate=True,
                                    lower_bound=LB, state_v_first=True, A_log=x["A_log"],
                                    dt_bias=x["dt_bias"])
    assert o.device == DEV and ht.device == DEV and ht.dtype == torch.float32
    ref_out, ref_final = reference(x)
    assert rel_err(cpu32(o), ref_out) < 6e-3 and rel_err(cpu32(ht), ref_final) < 5e-3


def test_mixed_devices_are_refused(rng):
    x = make(rng, 1, 8)
    out = torch.empty_like(x["v"])
    with pytest.raises(ValueError, match="mixed CPU and CUDA"):
        flash_kda.fwd(x["q"], x["k"].cpu(), x["v"], x["g"], x["beta"], None, out, x["A_log"],
                      x["dt_bias"], LB)
    with pytest.raises(ValueError, match="reference"):
        flash_kda.prefill(x["q"], x["k"], x["v"], x["g"], x["beta"], reference=True)

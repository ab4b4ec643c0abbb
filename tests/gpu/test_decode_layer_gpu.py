"""flash_kda.decode_layer on CUDA torch tensors against the same call on the CPU backend.

The CPU side runs the float64 reference layer (reference=True) on CPU copies of the same inputs
and pools. Compared: out (the decode's bars: 1e-5 for fp32 through, a bf16 rounding share
otherwise), the recurrent slots the call writes, the conv pool bitwise (it holds raw inputs,
copied), the slots no sequence names bitwise unchanged, skipped rows zero; each case on the
library's default path, with the three launches forced (FKDA_DECODE_LAYER_FUSED=0), with the
single kernel's wide tile forced (FKDA_DECODE_LAYER_WIDE=1, FKDA_DECODE_LAYER_PACKED=0), and with
bf16 pools its packed form forced (FKDA_DECODE_LAYER_PACKED=1), so that the cases the single
kernel serves (T = 1, 1-D indices or none, K = V = 128, HV = H, on sm_90) test every path. Then one
call captured in a CUDA graph and replayed as a chain gives the same bits as eager calls, for a
speculative step (three launches) and a plain decode step (the single kernel on sm_90).
"""

import os
import secrets

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)

# Imported after the skips above: flash_kda loads the library when imported.
import flash_kda  # noqa: E402

if not flash_kda.has_cuda():
    pytest.skip("libflashkda was built without CUDA", allow_module_level=True)

DEV = torch.device("cuda", 0)
TOKEN_TENSORS = ("mixed_qkv", "g", "beta", "output_gate")


@pytest.fixture
def rng(request):
    seed = int(os.environ.get("FKDA_TEST_SEED", secrets.randbits(32)))
    print(f"seed {seed} ({request.node.name}); rerun with FKDA_TEST_SEED={seed}")
    return np.random.default_rng(seed)


def rel_err(x, ref):
    x, ref = x.double().cpu(), ref.double().cpu()
    return ((x - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def same_bytes(a, b):
    return torch.equal(
        a.contiguous().view(torch.uint8).cpu(), b.contiguous().view(torch.uint8).cpu()
    )


def make_layer(rng, B, T, H, HV, K, V, W, P, L, io, pool_dtype, v_first, params=torch.float32):
    """The layer's tensors on the CPU (torch); token tensors [B, T, ...] (T squeezed when 1);
    `params` the dtype of the conv's weight and bias, g, beta, output_gate and norm_weight (A_log
    and dt_bias stay fp32, as in Kimi-Linear)."""

    def randn(*shape, sd=1.0):
        return torch.from_numpy((sd * rng.standard_normal(shape)).astype(np.float32))

    dim = 2 * H * K + HV * V
    lead = (B, T) if T > 1 else (B,)
    pool_shape = (P, HV, V, K) if v_first else (P, HV, K, V)
    return dict(
        mixed_qkv=randn(*lead, dim).to(io),
        conv_weight=randn(dim, W, sd=0.5).to(params),
        conv_bias=randn(dim, sd=0.2).to(params),
        conv_state=randn(P, L, dim).to(io),
        g=randn(*lead, HV, K).to(params),
        beta=randn(*lead, HV).to(params),
        A_log=torch.from_numpy(rng.uniform(-1, 0.5, HV).astype(np.float32)),
        dt_bias=randn(HV, K, sd=0.5),
        state_pool=randn(*pool_shape, sd=0.3).to(pool_dtype),
        output_gate=randn(*lead, HV, V, sd=1.5).to(params),
        norm_weight=torch.from_numpy(rng.uniform(0.5, 1.5, V).astype(np.float32)).to(params),
    )


def fresh_tokens(rng, layer):
    for name in TOKEN_TENSORS:
        x = layer[name]
        sd = 1.5 if name == "output_gate" else 1.0
        layer[name] = torch.from_numpy(
            (sd * rng.standard_normal(tuple(x.shape))).astype(np.float32)
        ).to(x.dtype)


def to_device(layer):
    return {n: None if x is None else x.to(DEV) for n, x in layer.items()}


# B, T, H, HV, K, V, W, indices, io dtype, pool dtype, v_first, lower_bound[, params dtype]
# (the last three: every layer tensor bf16 but A_log and dt_bias, a bf16 model's step, which the
# single kernel's _io16 forms serve; the last of them without a conv bias)
CASES = [
    (3, 1, 2, 4, 128, 128, 4, "1d", torch.bfloat16, torch.float32, False, -5.0),
    (4, 3, 2, 2, 64, 64, 4, "2d", torch.float32, torch.bfloat16, True, None),
    (2, 1, 2, 4, 128, 128, 4, "none", torch.float32, torch.float32, True, -5.0),
    (64, 1, 12, 12, 128, 128, 4, "1d", torch.bfloat16, torch.bfloat16, False, None),
    (1, 1, 32, 32, 128, 128, 4, "none", torch.bfloat16, torch.float32, False, -5.0),
    (3, 1, 2, 2, 128, 128, 16, "1d", torch.float16, torch.bfloat16, True, None),
    (5, 1, 3, 3, 128, 128, 2, "1d", torch.bfloat16, torch.float32, True, -5.0),
    (1, 1, 32, 32, 128, 128, 4, "none", torch.bfloat16, torch.float32, False, -5.0, torch.bfloat16),
    (3, 1, 2, 2, 128, 128, 3, "1d", torch.bfloat16, torch.bfloat16, False, None, torch.bfloat16),
    (4, 1, 4, 4, 128, 128, 4, "1d", torch.bfloat16, torch.bfloat16, True, -5.0, torch.bfloat16),
]


def slots_for(kind, B, T, P, rng):
    """Indices (CPU torch or None), accepted counts, which sequences run, the slots written."""
    if kind == "none":
        return None, None, [True] * B, set(range(B)), set(range(B))
    perm = [int(s) for s in rng.permutation(P)]
    if kind == "1d":
        idx = perm[:B]
        idx[1] = -1  # a skipped sequence
        written = {s for s in idx if s >= 0}
        return torch.tensor(idx, dtype=torch.int64), None, [s >= 0 for s in idx], written, written
    idx = torch.tensor(perm[: B * T], dtype=torch.int32).view(B, T)
    acc = torch.tensor([int(a) for a in rng.integers(1, T + 1, B)], dtype=torch.int32)
    idx[0, acc[0] - 1] = -1  # sequence 0 is skipped (its read slot is negative)
    if acc[1] != T:
        idx[1, T - 1] = -1  # a draft token whose state is not written
    runs = [bool(idx[n, acc[n] - 1] >= 0) for n in range(B)]
    pool_written = {int(idx[n, t]) for n in range(B) if runs[n] for t in range(T) if idx[n, t] >= 0}
    conv_written = {int(idx[n, 0]) for n in range(B) if runs[n]}
    return idx, acc, runs, pool_written, conv_written


def bars(io, pool_dtype):
    state = 1e-5 if pool_dtype == torch.float32 else 2.0**-7 / 4
    out = 1e-5 if io == torch.float32 else 2.0**-7 / 4
    return out + (state if pool_dtype != torch.float32 else 0.0), state


@pytest.mark.parametrize("path", ["default", "three-pass", "wide", "packed"])
@pytest.mark.parametrize(
    "case", CASES, ids=lambda c: f"B{c[0]}T{c[1]}H{c[2]}HV{c[3]}K{c[4]}W{c[6]}-{c[7]}"
)
def test_matches_cpu_reference(rng, case, path, monkeypatch):
    if path == "three-pass":
        monkeypatch.setenv("FKDA_DECODE_LAYER_FUSED", "0")
    B, T, H, HV, K, V, W, kind, io, pool_dtype, v_first, lb, *params = case
    if path in ("wide", "packed"):
        if not (T == 1 and kind != "2d" and K == V == 128 and HV == H and W <= 4):
            pytest.skip("the single kernel's wide tile does not serve this case")
        if path == "packed" and pool_dtype != torch.bfloat16:
            pytest.skip("the wide tile's packed form serves bf16 pools only")
        monkeypatch.setenv("FKDA_DECODE_LAYER_WIDE", "1")
        monkeypatch.setenv("FKDA_DECODE_LAYER_PACKED", "1" if path == "packed" else "0")
        if path == "packed":  # the cases' pools are small: the rule would load them evict-first
            monkeypatch.setenv("FKDA_DECODE_LOAD_EF", str(B % 2))
    P = B * T + 3 if kind != "none" else B
    L = W - 2 + T if kind == "2d" else W - 1
    layer = make_layer(rng, B, T, H, HV, K, V, W, P, L, io, pool_dtype, v_first, *params)
    if params and v_first:  # the all-bf16 case without a conv bias
        layer["conv_bias"] = None
    out_bar, state_bar = bars(io, pool_dtype)
    gpu = to_device(layer)
    for _ in range(3):  # a chain: each side's pools carry over
        fresh_tokens(rng, layer)
        for name in TOKEN_TENSORS:
            gpu[name] = layer[name].to(DEV)
        idx, acc, runs, pool_written, conv_written = slots_for(kind, B, T, P, rng)
        kw = dict(lower_bound=lb, state_v_first=v_first)
        ref_out = flash_kda.decode_layer(
            **layer, state_indices=idx, num_accepted_tokens=acc, reference=True, **kw
        )
        pool_before, cs_before = gpu["state_pool"].clone(), gpu["conv_state"].clone()
        side = torch.cuda.Stream()  # the call runs on torch's current stream
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            out = torch.full(tuple(layer["output_gate"].shape), float("nan"), dtype=io, device=DEV)
            ret = flash_kda.decode_layer(
                **gpu,
                state_indices=None if idx is None else idx.to(DEV),
                num_accepted_tokens=None if acc is None else acc.to(DEV),
                out=out,
                **kw,
            )
        side.synchronize()
        assert ret is out
        assert torch.isfinite(out).all()
        for n in range(B):
            if not runs[n]:
                assert (out[n] == 0).all(), f"skipped sequence {n}: out not zero"
        assert rel_err(out, ref_out) <= out_bar
        for s in range(P):
            if s in pool_written:
                assert rel_err(gpu["state_pool"][s], layer["state_pool"][s]) <= 4 * state_bar, s
            else:
                assert same_bytes(gpu["state_pool"][s], pool_before[s]), f"slot {s} changed"
            if s not in conv_written:
                assert same_bytes(gpu["conv_state"][s], cs_before[s]), f"conv slot {s} changed"
        assert same_bytes(gpu["conv_state"], layer["conv_state"]), (
            "conv pool differs from the CPU's"
        )


@pytest.mark.parametrize("kind", ["spec", "decode"])
def test_cuda_graph_capture_of_one_layer_step(rng, kind):
    # One step captured once and replayed as a chain with fresh inputs; the same chain eagerly on
    # copies of the pools gives the same bits. "spec": a speculative step (2-D indices, accepted
    # counts; the three launches); "decode": a plain decode step (1-D indices with a skipped
    # sequence, HV = H; the single kernel on sm_90).
    spec = kind == "spec"
    B, T, H, HV, K, V, W = (3, 2, 2, 4, 128, 128, 4) if spec else (3, 1, 2, 2, 128, 128, 4)
    P = B * T + 2
    L = W - 2 + T if spec else W - 1
    layer = to_device(
        make_layer(rng, B, T, H, HV, K, V, W, P, L, torch.bfloat16, torch.float32, False)
    )
    if spec:
        idx = torch.tensor([[0, 1], [2, -1], [4, 5]], dtype=torch.int32, device=DEV)
        acc = torch.tensor([1, 1, 2], dtype=torch.int32, device=DEV)
    else:
        idx = torch.tensor([3, -1, 0], dtype=torch.int32, device=DEV)
        acc = None
    eager = {n: layer[n].clone() for n in ("state_pool", "conv_state")}
    out = torch.zeros(*((B, T) if spec else (B,)), HV, V, dtype=torch.bfloat16, device=DEV)

    def step(x, pools, o):
        args = dict(x, **pools)
        return flash_kda.decode_layer(
            **args, state_indices=idx, num_accepted_tokens=acc, out=o, lower_bound=-5.0
        )

    scratch = {n: layer[n].clone() for n in ("state_pool", "conv_state")}
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture
        step(layer, scratch, torch.zeros_like(out))
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step(layer, {}, out)
    for _ in range(3):
        fresh = to_device(
            make_layer(rng, B, T, H, HV, K, V, W, P, L, torch.bfloat16, torch.float32, False)
        )
        for name in TOKEN_TENSORS:
            layer[name].copy_(fresh[name])
        out.fill_(float("nan"))
        graph.replay()
        eager_out = torch.zeros_like(out)
        step({n: layer[n] for n in layer if n not in eager}, eager, eager_out)
        torch.cuda.synchronize()
        assert torch.isfinite(out).all()
        assert torch.equal(out, eager_out), "graph replay differs from an eager call"
        assert same_bytes(layer["state_pool"], eager["state_pool"])
        assert same_bytes(layer["conv_state"], eager["conv_state"])


@pytest.mark.parametrize("tile", ["default", "wide"])
def test_out_of_range_slots_and_counts_follow_the_cuda_rules(rng, tile, monkeypatch):
    """What the CPU refuses and CUDA handles by rule (flashkda.h): a read slot at or past P skips
    the sequence; a running sequence whose conv slot is outside [0, P_conv) convolves from a zero
    window and writes no conv state; accepted counts are clamped into [1, T_max]. The pools are
    the first slots of larger tensors filled with garbage beyond, so a kernel that read or wrote
    past either pool would change what the test sees. The expectation: the CPU reference on the
    same call with those rules applied by hand (index -1, a zeroed conv slot, clamped counts).
    Run on the library's default path (the narrow single kernel on sm_90) and with the single
    kernel's wide tile forced, which stores the conv windows early."""
    if tile == "wide":
        monkeypatch.setenv("FKDA_DECODE_LAYER_WIDE", "1")
    B, H, HV, K, V, W = 4, 2, 2, 128, 128, 4
    P, P_conv = 6, 4
    layer = make_layer(rng, B, 1, H, HV, K, V, W, P + 1, W - 1, torch.float32, torch.float32, False)
    conv_backing = torch.from_numpy(
        rng.standard_normal((P_conv + 2, W - 1, layer["mixed_qkv"].shape[-1])).astype(np.float32)
    )
    layer["conv_state"] = conv_backing
    # sequence 0 and 3 normal; 1 reads recurrent slot 4 (inside P) and conv slot 4 (past P_conv);
    # 2 names recurrent slot P (past the pool): skipped
    idx = [0, P_conv, P, 2]
    gpu = to_device(layer)
    pool_before, conv_before = gpu["state_pool"].clone(), gpu["conv_state"].clone()
    out = torch.full((B, HV, V), float("nan"), dtype=torch.float32, device=DEV)
    gpu_args = dict(gpu, state_pool=gpu["state_pool"][:P], conv_state=gpu["conv_state"][:P_conv])
    flash_kda.decode_layer(
        **gpu_args, state_indices=torch.tensor(idx, dtype=torch.int32, device=DEV), out=out
    )
    torch.cuda.synchronize()

    ref = dict(layer, state_pool=layer["state_pool"][:P].clone(), conv_state=conv_backing.clone())
    ref["conv_state"][P_conv:] = 0.0  # the zero window of a conv slot outside the pool
    ref_idx = torch.tensor([s if s < P else -1 for s in idx], dtype=torch.int64)
    ref_out = flash_kda.decode_layer(**ref, state_indices=ref_idx, reference=True)

    assert torch.isfinite(out).all()
    assert (out[2] == 0).all(), "the sequence of slot P was not skipped"
    for n in (0, 1, 3):
        assert rel_err(out[n], ref_out[n]) <= 1e-5, n
    for s in range(P + 1):
        if s in (0, P_conv, 2):
            assert rel_err(gpu["state_pool"][s], ref["state_pool"][s]) <= 4e-5, s
        else:
            assert same_bytes(gpu["state_pool"][s], pool_before[s]), f"recurrent slot {s} changed"
    for s in range(P_conv + 2):
        if s in (0, 2):
            assert same_bytes(gpu["conv_state"][s], ref["conv_state"][s]), f"conv slot {s}"
        else:
            assert same_bytes(gpu["conv_state"][s], conv_before[s]), f"conv slot {s} changed"


def test_accepted_counts_are_clamped(rng):
    B, T, H, HV, K, V, W = 3, 2, 2, 2, 64, 64, 4
    P = B * T + 1
    layer = make_layer(rng, B, T, H, HV, K, V, W, P, W - 2 + T, torch.float32, torch.float32, True)
    idx = torch.tensor([[0, 1], [2, 3], [4, 5]], dtype=torch.int32)
    acc = torch.tensor([0, T + 1, 1], dtype=torch.int32)  # clamped to 1 and T on CUDA
    gpu = to_device(layer)
    out = flash_kda.decode_layer(
        **gpu,
        state_indices=idx.to(DEV),
        num_accepted_tokens=acc.to(DEV),
        lower_bound=-5.0,
        state_v_first=True,
    )
    torch.cuda.synchronize()
    ref_out = flash_kda.decode_layer(
        **layer,
        state_indices=idx,
        num_accepted_tokens=acc.clamp(1, T),
        lower_bound=-5.0,
        state_v_first=True,
        reference=True,
    )
    assert rel_err(out, ref_out) <= 1e-5
    assert rel_err(gpu["state_pool"], layer["state_pool"]) <= 4e-5
    assert same_bytes(gpu["conv_state"], layer["conv_state"])

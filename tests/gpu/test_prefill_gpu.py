"""The CUDA prefill at scale, through fla's drop-in path: fla's chunk_kda with FlashKDA's options
under torch.inference_mode() dispatches to flash_kda.fwd (our kernels) and returns the right
answer on long sequences and many heads, against a float64 token-by-token reference computed
here in torch (fresh random inputs each run; the seed is printed).

tests/gpu/test_python_cuda.py covers the Python side (dispatch on small cases, streams, CUDA
graph capture); this file is about the kernels' numbers on the shapes that matter.
"""

import os
import random

import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)
fla_kda = pytest.importorskip("fla.ops.kda")
import flash_kda  # noqa: E402

K = V = 128
LB = -5.0


def reference(q, k, v, g, beta, A_log, dt_bias, h0, cu, scale):
    """float64 token-by-token KDA (safe gate, L2 norm, beta sigmoid), states [N, H, V, K]."""
    q, k, v, g, beta = (x.double() for x in (q, k, v, g, beta))
    q = q / torch.sqrt((q * q).sum(-1, keepdim=True) + 1e-6)
    k = k / torch.sqrt((k * k).sum(-1, keepdim=True) + 1e-6)
    a = LB * torch.sigmoid(A_log.double().exp()[:, None] * (g + dt_bias.double()))
    b = torch.sigmoid(beta)
    B, T = q.shape[:2]
    if cu is None:
        bounds = [(n, 0, T) for n in range(B)]
    else:
        bounds = [(0, int(cu[i]), int(cu[i + 1])) for i in range(len(cu) - 1)]
    out = torch.zeros_like(v)
    states = []
    for n, (row, s, e) in enumerate(bounds):
        S = h0[n].double().transpose(-1, -2).clone()  # [H, K, V]
        for t in range(s, e):
            S = S * a[row, t].exp()[:, :, None]
            kv = torch.einsum("hk,hkv->hv", k[row, t], S)
            S = S + b[row, t][:, None, None] * k[row, t][:, :, None] * (v[row, t] - kv)[:, None, :]
            out[row, t] = scale * torch.einsum("hk,hkv->hv", q[row, t], S)
        states.append(S.transpose(-1, -2))
    return out, torch.stack(states)


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


CASES = [
    # (B, T or None, H, seqlens)
    (1, 65536, 8, None),
    (1, None, 16, [4096, 0, 1, 3000, 17, 0, 1000, 63]),
    (4, 1000, 32, None),
]


@pytest.mark.parametrize("B,T,H,seqlens", CASES)
def test_chunk_kda_dropin_matches_float64(B, T, H, seqlens, monkeypatch):
    os.environ.pop("FLA_FLASH_KDA", None)
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    gen = torch.Generator(device="cuda").manual_seed(seed)
    if seqlens is not None:
        T = sum(seqlens)
        cu = torch.tensor([0] + torch.tensor(seqlens).cumsum(0).tolist(), dtype=torch.int64,
                          device="cuda")
        N = len(seqlens)
    else:
        cu, N = None, B

    def randn(*s):
        return torch.randn(*s, generator=gen, device="cuda").to(torch.bfloat16)

    q, k, v, g = randn(B, T, H, K), randn(B, T, H, K), randn(B, T, H, V), randn(B, T, H, K)
    beta = randn(B, T, H)
    A_log = torch.rand(H, generator=gen, device="cuda")
    dt_bias = torch.rand(H * K, generator=gen, device="cuda")  # fla passes it flat
    h0 = torch.randn(N, H, V, K, generator=gen, device="cuda") * 0.5
    scale = K ** -0.5

    calls = []
    real_fwd = flash_kda.fwd

    def counting_fwd(*args, **kwargs):
        calls.append(1)
        return real_fwd(*args, **kwargs)

    monkeypatch.setattr(flash_kda, "fwd", counting_fwd)
    with torch.inference_mode():
        o, ht = fla_kda.chunk_kda(q, k, v, g, beta, scale=scale, initial_state=h0,
                                  output_final_state=True, use_qk_l2norm_in_kernel=True,
                                  use_gate_in_kernel=True, use_beta_sigmoid_in_kernel=True,
                                  safe_gate=True, lower_bound=LB, state_v_first=True,
                                  A_log=A_log, dt_bias=dt_bias, cu_seqlens=cu)
        torch.cuda.synchronize()
    assert len(calls) == 1, "fla's chunk_kda did not dispatch to flash_kda.fwd"
    assert torch.isfinite(o).all() and torch.isfinite(ht).all()

    o_ref, ht_ref = reference(q, k, v, g, beta, A_log, dt_bias.view(H, K), h0, cu, scale)
    e_out, e_st = rel(o, o_ref), rel(ht, ht_ref)
    print(f"B={B} T={T} H={H} seqlens={seqlens}: output {e_out:.3e}, final state {e_st:.3e}")
    assert e_out <= 4e-3
    assert e_st <= 3e-3

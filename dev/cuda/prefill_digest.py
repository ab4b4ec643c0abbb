# prefill_digest.py: SHA-256 digests of the CUDA prefill's outputs and states on fixed inputs,
# to show that two builds compute bitwise the same thing (a change meant to move no bit, e.g. a new
# synchronisation). Run it once per library and diff the two outputs:
#
#   FLASHKDA_LIBRARY=/path/to/base/libflashkda.so python3 dev/cuda/prefill_digest.py > base.txt
#   FLASHKDA_LIBRARY=build/gpu/libflashkda.so     python3 dev/cuda/prefill_digest.py > this.txt
#   diff base.txt this.txt
#
# The cases cover the K <= 128 chain kernels' forms: bf16, fp16 and fp32 inputs (the bf16 chain
# and both fp16-chain kernels), 1 to 8 warps per chain CTA (FKDA_PREFILL_VSLICE), segments
# (FKDA_PREFILL_SEGMENTS), checkpoints and fla's h between runs of chunks, varlen; and K = 256.
# Needs torch with CUDA and this tree's python/ on PYTHONPATH.
import hashlib
import os

import torch

import flash_kda

CASES = [
    # name, B, T, H, K, V, dtype, vslice, segments, extras
    ("subset T=8192 H=32", 1, 8192, 32, 128, 128, torch.bfloat16, 0, 0, ""),
    ("bf16 8 warps T=2000", 1, 2000, 4, 128, 128, torch.bfloat16, 128, 0, ""),
    ("bf16 2 warps ck+h T=1000", 2, 1000, 4, 128, 128, torch.bfloat16, 32, 0, "ck"),
    ("bf16 segments T=4096", 1, 4096, 2, 128, 128, torch.bfloat16, 0, 4, ""),
    ("bf16 varlen 4 warps", 1, 0, 4, 128, 128, torch.bfloat16, 64, 0, "varlen"),
    ("fp16 4 warps T=1000", 1, 1000, 4, 128, 128, torch.float16, 64, 0, ""),
    ("fp32 8 warps T=700", 1, 700, 4, 128, 128, torch.float32, 128, 0, ""),
    ("fp16 segments T=2048", 1, 2048, 2, 128, 128, torch.float16, 0, 3, ""),
    ("K=64 V=64 2 warps", 1, 1000, 4, 64, 64, torch.bfloat16, 32, 0, ""),
    ("K=256 V=256 T=1000", 1, 1000, 2, 256, 256, torch.bfloat16, 0, 0, ""),
]
VARLEN = [300, 0, 17, 1000, 65]


def digest(t):
    return hashlib.sha256(t.contiguous().view(torch.uint8).cpu().numpy().tobytes()).hexdigest()[:16]


def run(name, B, T, H, K, V, dt, vslice, segments, extras, seed):
    for var, val in (("FKDA_PREFILL_VSLICE", vslice), ("FKDA_PREFILL_SEGMENTS", segments)):
        if val:
            os.environ[var] = str(val)
        else:
            os.environ.pop(var, None)
    gen = torch.Generator(device="cuda").manual_seed(seed)
    cu, N = None, B
    if extras == "varlen":
        T, N = sum(VARLEN), len(VARLEN)
        offsets = [0] + torch.tensor(VARLEN).cumsum(0).tolist()
        cu = torch.tensor(offsets, dtype=torch.int64, device="cuda")

    def randn(*s):
        return torch.randn(*s, generator=gen, device="cuda").to(dt)

    q, k, v = randn(B, T, H, K), randn(B, T, H, K), randn(B, T, H, V)
    g = torch.randn(B, T, H, K, generator=gen, device="cuda").to(torch.bfloat16)
    beta = torch.randn(B, T, H, generator=gen, device="cuda").to(torch.bfloat16)
    A_log = torch.rand(H, generator=gen, device="cuda")
    dt_bias = torch.rand(H * K, generator=gen, device="cuda")
    h0 = torch.randn(N, H, K, V, generator=gen, device="cuda") * 0.5
    ht = torch.empty_like(h0)
    kw = {}
    if extras == "ck":
        offs = torch.tensor([[0, 64, 512, 999, T]] * N, dtype=torch.int64, device="cuda")
        kw["checkpoint_offsets"] = offs
        kw["checkpoint_states"] = torch.zeros(N, offs.shape[1], H, K, V, device="cuda")
        kw["intermediate_states"] = torch.zeros(B, (T + 63) // 64, H, K, V, device="cuda")
        kw["intermediate_chunk_size"] = 64
    out = flash_kda.prefill(q, k, v, g, beta, gate="lower_bound", lower_bound=-5.0, A_log=A_log,
                            dt_bias=dt_bias, cu_seqlens=cu, initial_state=h0, final_state=ht,
                            use_qk_l2norm=True, use_beta_sigmoid=True, **kw)
    torch.cuda.synchronize()
    parts = [f"out {digest(out)}", f"state {digest(ht)}"]
    if extras == "ck":
        parts += [f"ck {digest(kw['checkpoint_states'])}", f"h {digest(kw['intermediate_states'])}"]
    print(f"{name:28s} " + "  ".join(parts), flush=True)


if __name__ == "__main__":
    with torch.inference_mode():
        for i, c in enumerate(CASES):
            run(*c, seed=1234 + i)

"""bench_decode_layer_gpu.py: the fused KDA decode layer against its parts, on a GPU.

One decode step of a KDA layer (vLLM's fused_kda_decode) at B sequences, H = HV heads,
K = V = 128, bf16 mixed_qkv, a float32 recurrent pool (--pool bf16: bf16), conv width 4, the
safe gate (lower_bound -5, A_log, dt_bias), int32 state_indices over a shuffled pool, timed four
ways:

  fused     flash_kda.decode_layer: conv with its state, the decode, the gated RMSNorm, on the
            library's default path (the single kernel where it serves, as here on sm_90)
  3-pass    the same call with FKDA_DECODE_LAYER_FUSED=0: the three launches (conv, decode,
            norm) through the workspace, the path every other call takes
  plain     flash_kda.decode alone on q, k, v already convolved (bf16), at the same shape: the
            floor the fused layer is measured against (target: fused / plain <= 1.10)
  separate  the same step as separate calls: the causal-conv update with SiLU in torch ops, then
            flash_kda.decode on views of its bf16 output, then the gated RMSNorm in torch
            (target: separate / fused >= 1.5)

Timing (as bench/bench_decode_gpu.py): each way's STEPS calls are captured in one CUDA graph, as
a model's layers would make them, each step with its own pools (recurrent and conv), as many
distinct pools as it takes to touch at least 256 MB per replay, so that the state comes from
DRAM; the median replay over the steps is the time of one call. Before timing, the fused and the
separate outputs of one call from the same pools are compared (column "fused vs separate": the
relative difference of out, both bf16; the separate path rounds y and o to bf16 in between, so
about 1e-2 is expected, and a broken kernel gives ~1), and so are the two paths of the library
(column "fused vs 3-pass": both keep y and o in float32, so about an ulp of bf16, ~1e-3). The
last column names the kernels that fused call launched (flash_kda.last_kernels(): the tile the
rule chose, and [C] its cluster size), so that a row says which path its time is.

    python3 bench/bench_decode_layer_gpu.py [--out results.md] [--quick | --shapes B,H ...]
                                            [--pool fp32|bf16]
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_decode_gpu import rel, time_graph  # noqa: E402  (one timing method for both)

K = V = 128
W = 4
LOWER_BOUND = -5.0
EPS = 1e-5
STEPS = 20
MAX_LAYERS = 256
BF16 = torch.bfloat16


def make_layer(B, H, gen):
    """The step's inputs and parameters (shared by every step) on the GPU."""
    dim = 2 * H * K + H * V

    def randn(*shape, sd=1.0):
        return sd * torch.randn(*shape, device="cuda", generator=gen)

    return dict(
        mixed_qkv=randn(B, dim).to(BF16),
        conv_weight=randn(dim, W, sd=0.5).to(BF16),
        conv_bias=randn(dim, sd=0.2).to(BF16),
        g=randn(B, H, K).to(BF16),
        beta=randn(B, H).to(BF16),
        A_log=randn(H, sd=0.5),
        dt_bias=randn(H * K, sd=0.5),
        output_gate=randn(B, H, V).to(BF16),
        norm_weight=(1.0 + randn(V, sd=0.1)).to(BF16),
    )


def make_pools(B, H, layers, gen, pool_dtype):
    """Each step's own recurrent pool [B, H, K, V] and conv state [B, W - 1, dim] (bf16)."""
    dim = 2 * H * K + H * V
    return [
        (
            (0.1 * torch.randn(B, H, K, V, device="cuda", generator=gen)).to(pool_dtype),
            torch.randn(B, W - 1, dim, device="cuda", generator=gen).to(BF16),
        )
        for _ in range(layers)
    ]


def fused_step(flash_kda, x, pool, conv_state, idx, out):
    flash_kda.decode_layer(
        x["mixed_qkv"],
        x["conv_weight"],
        conv_state,
        x["g"],
        x["beta"],
        pool,
        x["output_gate"],
        x["norm_weight"],
        conv_bias=x["conv_bias"],
        A_log=x["A_log"],
        dt_bias=x["dt_bias"],
        lower_bound=LOWER_BOUND,
        state_indices=idx,
        norm_eps=EPS,
        out=out,
    )


def decode_step(flash_kda, q, k, v, x, pool, idx, out):
    B, H = x["beta"].shape
    flash_kda.decode(
        q,
        k,
        v,
        x["g"].view(B, 1, H, K),
        x["beta"].view(B, 1, H),
        pool,
        state_indices=idx,
        out=out,
        A_log=x["A_log"],
        dt_bias=x["dt_bias"],
        gate="lower_bound",
        lower_bound=LOWER_BOUND,
        use_qk_l2norm=True,
        use_beta_sigmoid=True,
    )


def torch_conv_update(x, conv_state, idx):
    """The causal-conv update with SiLU in torch ops: y [B, dim] (bf16), the window slid in
    place. conv_state is [slots, W - 1, dim]; sequence n uses slot idx[n] (int64)."""
    window = conv_state.index_select(0, idx)  # [B, W - 1, dim]
    full = torch.cat([window, x["mixed_qkv"].unsqueeze(1)], dim=1)  # [B, W, dim]
    y = (full.float() * x["conv_weight"].float().t().unsqueeze(0)).sum(1) + x["conv_bias"].float()
    conv_state.index_copy_(0, idx, full[:, 1:])
    return torch.nn.functional.silu(y).to(BF16)


def torch_gated_norm(o, x, out):
    """out = o / sqrt(mean(o^2) + eps) * norm_weight * sigmoid(output_gate), per token and head."""
    of = o.float()
    r = torch.rsqrt(of.pow(2).mean(-1, keepdim=True) + EPS)
    # in o's shape [B, 1, H, V]: broadcasting [B, H, V] against it would make [B, B, H, V]
    gate = torch.sigmoid(x["output_gate"].float()).reshape(of.shape)
    out.copy_((of * r * x["norm_weight"].float() * gate).view_as(out))


def separate_step(flash_kda, x, pool, conv_state, idx, idx64, o, out):
    B, H = x["beta"].shape
    y = torch_conv_update(x, conv_state, idx64)
    q = y[:, : H * K].view(B, 1, H, K)
    k = y[:, H * K : 2 * H * K].view(B, 1, H, K)
    v = y[:, 2 * H * K :].view(B, 1, H, V)
    decode_step(flash_kda, q, k, v, x, pool, idx, o)
    torch_gated_norm(o, x, out)


def three_pass(fn):
    """Runs fn() with the library's three-pass path forced (the knob is read at every call, so
    also while a graph is captured)."""
    os.environ["FKDA_DECODE_LAYER_FUSED"] = "0"
    try:
        return fn()
    finally:
        del os.environ["FKDA_DECODE_LAYER_FUSED"]


def bench_case(flash_kda, B, H, gen, pool_dtype):
    x = make_layer(B, H, gen)
    pool_bytes = B * H * K * V * torch.finfo(pool_dtype).bits // 8
    layers = max(1, min(MAX_LAYERS, math.ceil((256 << 20) / pool_bytes)))
    steps = max(STEPS, layers)
    pools = make_pools(B, H, layers, gen, pool_dtype)
    idx = torch.randperm(B, device="cuda", generator=gen).to(torch.int32)
    idx64 = idx.long()  # torch's index_copy_ takes int64 indices
    out = torch.empty(B, H, V, device="cuda", dtype=BF16)
    o = torch.empty(B, 1, H, V, device="cuda", dtype=BF16)
    # plain: the decode on already-convolved q, k, v (one bf16 buffer, as the conv would leave it)
    y = torch.randn(B, 2 * H * K + H * V, device="cuda", generator=gen).to(BF16)
    q = y[:, : H * K].view(B, 1, H, K)
    k = y[:, H * K : 2 * H * K].view(B, 1, H, K)
    v = y[:, 2 * H * K :].view(B, 1, H, V)

    # One call each way from the same pools: the outputs must agree.
    p0, c0 = pools[0]
    fused_out, sep_out, three_out = (torch.empty_like(out) for _ in range(3))
    fused_step(flash_kda, x, p0.clone(), c0.clone(), idx, fused_out)
    fused_kernels = flash_kda.last_kernels()  # the path the rule took, [C] its cluster size
    separate_step(flash_kda, x, p0.clone(), c0.clone(), idx, idx64, o, sep_out)
    three_pass(lambda: fused_step(flash_kda, x, p0.clone(), c0.clone(), idx, three_out))
    torch.cuda.synchronize()
    agree = rel(fused_out, sep_out)
    agree_three = rel(fused_out, three_out)

    layer_steps = [
        lambda p=pools[s % layers]: fused_step(flash_kda, x, p[0], p[1], idx, out)
        for s in range(steps)
    ]
    t_fused = time_graph(layer_steps)
    t_three = three_pass(lambda: time_graph(layer_steps))
    t_plain = time_graph(
        [
            lambda p=pools[s % layers]: decode_step(flash_kda, q, k, v, x, p[0], idx, o)
            for s in range(steps)
        ]
    )
    t_sep = time_graph(
        [
            lambda p=pools[s % layers]: separate_step(flash_kda, x, p[0], p[1], idx, idx64, o, out)
            for s in range(steps)
        ]
    )
    layer_steps.clear()  # its lambdas hold the pools
    del pools
    torch.cuda.empty_cache()
    return t_fused, t_three, t_plain, t_sep, agree, agree_three, layers, fused_kernels


def profile_case(flash_kda, B, H, gen, pool_dtype):
    """Each way twice on one pool, no graphs: a profiler's per-kernel view of one step."""
    x = make_layer(B, H, gen)
    pool, conv_state = make_pools(B, H, 1, gen, pool_dtype)[0]
    idx = torch.randperm(B, device="cuda", generator=gen).to(torch.int32)
    out = torch.empty(B, H, V, device="cuda", dtype=BF16)
    o = torch.empty(B, 1, H, V, device="cuda", dtype=BF16)
    y = torch.randn(B, 2 * H * K + H * V, device="cuda", generator=gen).to(BF16)
    q, k, v = (y[:, i * H * K : (i + 1) * H * K].view(B, 1, H, K) for i in range(3))
    for _ in range(2):
        fused_step(flash_kda, x, pool, conv_state, idx, out)
        three_pass(lambda: fused_step(flash_kda, x, pool, conv_state, idx, out))
        decode_step(flash_kda, q, k, v, x, pool, idx, o)
        separate_step(flash_kda, x, pool, conv_state, idx, idx.long(), o, out)
    torch.cuda.synchronize()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None, help="also write the table to this file")
    ap.add_argument("--quick", action="store_true", help="B = 1 and 64, H = 32 only")
    ap.add_argument(
        "--shapes",
        nargs="+",
        metavar="B,H",
        help="these shapes only (e.g. --shapes 8,12 8,32), instead of the six or --quick's two",
    )
    ap.add_argument(
        "--profile",
        metavar="B,H",
        help="for a profiler (ncu, nsys): no timing, each way run twice at one shape "
        "(fused, 3-pass, plain decode, separate)",
    )
    ap.add_argument(
        "--pool", choices=("fp32", "bf16"), default="fp32", help="the recurrent pool's dtype"
    )
    args = ap.parse_args()
    pool_dtype = torch.float32 if args.pool == "fp32" else BF16
    import flash_kda  # noqa: PLC0415 (after argparse: --help needs no library)

    if not torch.cuda.is_available() or not flash_kda.has_cuda():
        raise SystemExit("needs a CUDA device and a libflashkda built with CUDA")
    gen = torch.Generator(device="cuda")
    gen.manual_seed(0)
    if args.profile:
        profile_case(flash_kda, *(int(n) for n in args.profile.split(",")), gen, pool_dtype)
        return
    if args.shapes:
        shapes = [tuple(int(n) for n in s.split(",")) for s in args.shapes]
    elif args.quick:
        shapes = [(1, 32), (64, 32)]
    else:
        shapes = [(b, h) for h in (12, 32) for b in (1, 8, 64)]
    dev = torch.cuda.get_device_name()
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"decode layer, {dev}, {stamp}: HV = H, K = V = 128, W = {W}, bf16 mixed_qkv, "
        f"{args.pool} pool,",
        "one token per sequence, CUDA graphs of distinct pools per step (times per call, us)",
        "",
        "| B | H | fused | 3-pass | plain decode | separate | fused / plain (<= 1.10) "
        "| separate / fused (>= 1.5) | fused vs separate | fused vs 3-pass | pools "
        "| fused kernels |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    print("\n".join(lines), flush=True)
    for B, H in shapes:
        t_fused, t_three, t_plain, t_sep, agree, agree_three, layers, kernels = bench_case(
            flash_kda, B, H, gen, pool_dtype
        )
        row = (
            f"| {B} | {H} | {t_fused * 1e6:.2f} | {t_three * 1e6:.2f} | {t_plain * 1e6:.2f} "
            f"| {t_sep * 1e6:.2f} | {t_fused / t_plain:.2f} | {t_sep / t_fused:.2f} | {agree:.1e} "
            f"| {agree_three:.1e} | {layers} | {kernels} |"
        )
        lines.append(row)
        print(row, flush=True)
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

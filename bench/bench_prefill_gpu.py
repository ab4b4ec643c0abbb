#!/usr/bin/env python3
"""Prefill speed on the GPU: flash_kda.fwd (our CUDA kernels) next to fla's chunk_kda (Triton),
same inputs, same process, for the seven shapes of docs/design.md section 2 and the other rows
of serving: T = 8192 at H = 32 and H = 12; varlen 4 x 8192 at H = 12 and 8 x 2048 at H = 16.

    python3 bench/bench_prefill_gpu.py [--shapes h96,h8] [--out table.md] [--sweep-vslice]
                                       [--no-fla] [--profile] [--state-dtype bf16]
                                       [--ncu SHAPE [--ncu-dtype fp16] [--ncu-lower-bound -20]]

Inputs as in docs/design.md: randn bf16 q, k, v, g and beta logits, A_log and dt_bias U(0, 1) fp32,
lower_bound -5, L2 norm / gate / beta sigmoid in kernel, fp32 initial and final state in the
[N, H, V, K] layout (--state-dtype bf16: bf16 states, with --no-fla; the row of a serving engine's
bf16 state pool). Times are medians of CUDA-event timings after warm-up; beside fla, ours and
fla are timed in turn --rounds times (default 3), each side's time the least of its per-round
medians (time_alternating), so that a drift of the card falls on both alike. Every shape's inputs
are larger than the 50 MB L2, so one input set is used (no rotation needed).

The memory floor is docs/design.md section 3: (1,026 B read + 256 B written) per token-head plus the
fp32 state in and out, over the copy bandwidth measured in this run (bytes read + written).

fla runs with FLA_FLASH_KDA=0 so that its dispatcher does not route the call to us. Triton
autotunes on the first call of each new shape (a minute or more): keep --shapes short.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time

import torch
from commit_name import commit_name

os.environ["FLA_FLASH_KDA"] = "0"  # the baseline is fla's own Triton path

import flash_kda  # noqa: E402

SHAPES = {
    # name: (T per sequence or total, H, layout)
    "h96": dict(T=8192, H=96, B=1, seqlens=None, label="T=8192 H=96, one sequence"),
    "h96-varlen": dict(T=8192, H=96, B=1, seqlens=[1300, 547, 2048, 963, 271, 3063],
                       label="T=8192 H=96, varlen [1300,547,2048,963,271,3063]"),
    "h96-8x1024": dict(T=1024, H=96, B=8, seqlens=None, label="T=8192 H=96, 8 x 1024"),
    "h64": dict(T=8192, H=64, B=1, seqlens=None, label="T=8192 H=64, one sequence"),
    "h32": dict(T=32768, H=32, B=1, seqlens=None, label="T=32768 H=32, one sequence"),
    "h16": dict(T=16384, H=16, B=1, seqlens=None, label="T=16384 H=16, one sequence"),
    "h8": dict(T=65536, H=8, B=1, seqlens=None, label="T=65536 H=8, one sequence"),
    "h32-8k": dict(T=8192, H=32, B=1, seqlens=None, label="T=8192 H=32, one sequence"),
    "h12": dict(T=8192, H=12, B=1, seqlens=None, label="T=8192 H=12, one sequence"),
    "h12-4x8192": dict(T=32768, H=12, B=1, seqlens=[8192] * 4, label="T=4 x 8192 H=12, varlen"),
    "h16-8x2048": dict(T=16384, H=16, B=1, seqlens=[2048] * 8, label="T=8 x 2048 H=16, varlen"),
    # a short prompt: launch and prologue latency are a visible share of the call
    "h32-1k": dict(T=1024, H=32, B=1, seqlens=None, label="T=1024 H=32, one sequence"),
}
# The speed targets, fla's time over ours: 4x at T = 8192 H = 96 in its three layouts, 3x at every
# other row (the first prefill targets were 2.3x and 1.5x).
TARGET = {"h96": 4.0, "h96-varlen": 4.0, "h96-8x1024": 4.0}  # others: 3.0
K = V = 128
LB = -5.0


def make_inputs(shape, device="cuda", seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    B, T, H = shape["B"], shape["T"], shape["H"]
    cu = None
    if shape["seqlens"]:
        assert sum(shape["seqlens"]) == T
        cu = torch.tensor([0] + list(torch.tensor(shape["seqlens"]).cumsum(0).tolist()),
                          dtype=torch.int64, device=device)
    N = len(shape["seqlens"]) if cu is not None else B

    def randn(*s):
        return torch.randn(*s, generator=g, device=device, dtype=torch.float32).to(torch.bfloat16)

    x = dict(q=randn(B, T, H, K), k=randn(B, T, H, K), v=randn(B, T, H, V), g=randn(B, T, H, K),
             beta=randn(B, T, H),
             A_log=torch.rand(H, generator=g, device=device, dtype=torch.float32),
             dt_bias=torch.rand(H, K, generator=g, device=device, dtype=torch.float32),
             h0=torch.randn(N, H, V, K, generator=g, device=device, dtype=torch.float32) * 0.1,
             cu=cu, N=N)
    return x


def run_ours(x, out, ht):
    flash_kda.fwd(x["q"], x["k"], x["v"], x["g"], x["beta"], K ** -0.5, out, x["A_log"],
                  x["dt_bias"], LB, initial_state=x["h0"], final_state=ht, cu_seqlens=x["cu"])


def run_fla(x):
    from fla.ops.kda import chunk_kda
    o, ht = chunk_kda(x["q"], x["k"], x["v"], x["g"], x["beta"], scale=K ** -0.5,
                      initial_state=x["h0"], output_final_state=True,
                      use_qk_l2norm_in_kernel=True, use_gate_in_kernel=True,
                      use_beta_sigmoid_in_kernel=True, safe_gate=True, lower_bound=LB,
                      state_v_first=True, A_log=x["A_log"], dt_bias=x["dt_bias"],
                      cu_seqlens=x["cu"])
    return o, ht


def time_ms(fn, warmup=3, reps=10, inner=5):
    """Median over `reps` of the mean time of `inner` back-to-back calls between two CUDA events,
    so that a call's host-side work (Python, ctypes, Triton launch) overlaps the previous call's
    GPU work as it does in a model, for ours and fla alike."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(inner):
            fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / inner)
    return statistics.median(times)


def time_alternating(runs, rounds):
    """runs: a list of (fn, time_ms keywords). Times each in turn, `rounds` times over, so that a
    drift of the card's clocks or temperature during the run falls on every side alike (one side
    timed entirely after the other would take all of it); returns, for each, the least and the
    largest of its per-round medians. The least is the side's time: the same statistic for ours
    and fla, from the same stretch of the run."""
    per = [[] for _ in runs]
    for _ in range(max(1, rounds)):
        for i, (fn, kw) in enumerate(runs):
            per[i].append(time_ms(fn, **kw))
    return [(min(t), max(t)) for t in per]


def copy_bandwidth():
    """Device-to-device copy of 1 GiB: bytes read + written over the median time."""
    n = 1 << 30
    src = torch.empty(n, dtype=torch.uint8, device="cuda").random_(0, 255)
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), warmup=3, reps=20)
    return 2 * n / (ms * 1e-3)


def floor_bytes(shape, N, state_bytes=4):
    TH = (shape["B"] * shape["T"]) * shape["H"]
    return TH * (4 * K * 2 + 2 + V * 2) + N * shape["H"] * K * V * state_bytes * 2


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def kernel_times(fn, reps=5):
    """Average device time per call of each kernel whose name contains 'pf_' (ours)."""
    from torch.profiler import ProfilerActivity, profile
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    res = {}
    for e in prof.key_averages():
        if "pf_" in e.key:
            total = getattr(e, "device_time_total", None)
            if total is None:
                total = e.cuda_time_total
            res[e.key.split("(")[0]] = total / reps / 1000.0
    return res


def bench_shape(name, args, bw, t_start):
    """Times ours (and fla unless --no-fla) on one shape, prints its line, returns its table row.
    Its inputs and outputs are locals, so they are freed when it returns."""
    shape = SHAPES[name]
    x = make_inputs(shape)
    N, H = x["N"], shape["H"]
    out = torch.empty_like(x["v"])
    state_dtype = torch.bfloat16 if args.state_dtype == "bf16" else torch.float32
    x["h0"] = x["h0"].to(state_dtype)
    ht = torch.empty(N, H, V, K, dtype=state_dtype, device="cuda")
    with torch.inference_mode():
        # timed alone without fla; beside fla, in turn with it (time_alternating, below)
        ms_ours = time_ms(lambda: run_ours(x, out, ht)) if args.no_fla else float("nan")
        extra = ""
        if args.sweep_vslice:
            sweep = []
            for vs in (16, 32, 64, 128):
                os.environ["FKDA_PREFILL_VSLICE"] = str(vs)
                sweep.append(f"{vs}:{time_ms(lambda: run_ours(x, out, ht), reps=5):.3f}")
            del os.environ["FKDA_PREFILL_VSLICE"]
            extra += " vslice ms " + " ".join(sweep)
        if args.sweep_segments and shape["seqlens"] is None:
            sweep = []
            for P in (1, 2, 4, 8, 16):
                os.environ["FKDA_PREFILL_SEGMENTS"] = str(P)
                sweep.append(f"{P}:{time_ms(lambda: run_ours(x, out, ht), reps=5):.3f}")
            del os.environ["FKDA_PREFILL_SEGMENTS"]
            extra += " segments ms " + " ".join(sweep)
        if args.profile:
            kt = kernel_times(lambda: run_ours(x, out, ht))
            extra += " kernels " + " ".join(f"{k}={v:.3f}ms" for k, v in kt.items())
            chain = [v for k, v in kt.items() if "chain" in k]
            if chain and shape["seqlens"] is None:
                steps = (shape["T"] + 15) // 16
                extra += f" (chain {1000 * chain[0] / steps:.3f} us per 16-token step)"
        ms_fla, err = float("nan"), float("nan")
        if not args.no_fla:
            o_fla, ht_fla = run_fla(x)  # first call autotunes
            torch.cuda.synchronize()
            (ms_ours, hi_ours), (ms_fla, hi_fla) = time_alternating(
                [(lambda: run_ours(x, out, ht), {}), (lambda: run_fla(x), dict(warmup=2, reps=5))],
                args.rounds)
            if args.rounds > 1:
                extra += (f" rounds ours {ms_ours:.3f}-{hi_ours:.3f} fla {ms_fla:.3f}-{hi_fla:.3f}"
                          " ms")
            run_ours(x, out, ht)
            err = rel(out, o_fla)
            err_st = rel(ht, ht_fla)
            extra += f" ours-vs-fla out {err:.2e} state {err_st:.2e}"
    floor_ms = floor_bytes(shape, N, 2 if args.state_dtype == "bf16" else 4) / bw * 1e3
    print(f"{shape['label']}: ours {ms_ours:.3f} ms, fla {ms_fla:.3f} ms, "
          f"x{ms_fla / ms_ours:.2f} fla, {ms_ours / floor_ms:.2f}x floor ({floor_ms:.3f} ms)"
          f"{extra} [{time.time() - t_start:.0f} s]", flush=True)
    return shape["label"], ms_ours, ms_fla, floor_ms, TARGET.get(name, 3.0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--out", default=None)
    ap.add_argument("--no-fla", action="store_true")
    ap.add_argument("--sweep-vslice", action="store_true", help="time ours at every value slice")
    ap.add_argument("--profile", action="store_true",
                    help="per-kernel times of ours (torch.profiler)")
    ap.add_argument("--sweep-segments", action="store_true",
                    help="time ours at 1, 2, 4, 8, 16 sequence segments")
    ap.add_argument("--ncu", metavar="SHAPE", default=None,
                    help="only run ours three times on one shape, untimed (for ncu --launch-skip)")
    ap.add_argument("--ncu-dtype", choices=("bf16", "fp16", "fp32"), default="bf16",
                    help="with --ncu: q, k and v in this dtype (fp16 and fp32 take the fp16 chain)")
    ap.add_argument("--ncu-lower-bound", type=float, default=-5.0,
                    help="with --ncu: the gate's lower bound (below -5 the checked prep runs;"
                         " at -20 most chunks take its step 4')")
    ap.add_argument("--state-dtype", choices=("fp32", "bf16"), default="fp32",
                    help="the initial and final states' dtype (bf16 with --no-fla only: fla's"
                         " comparison is for fp32 states)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="with fla: time ours and fla in turn this many times; each side's time is"
                         " the least of its per-round medians (1: one timing each)")
    args = ap.parse_args()
    if args.state_dtype == "bf16" and not args.no_fla:
        ap.error("--state-dtype bf16 needs --no-fla")

    if args.ncu:
        global LB
        LB = args.ncu_lower_bound
        x = make_inputs(SHAPES[args.ncu])
        dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
        dtype = dtypes[args.ncu_dtype]
        for name in ("q", "k", "v"):
            x[name] = x[name].to(dtype)
        out = torch.empty_like(x["v"])
        ht = torch.empty(x["N"], SHAPES[args.ncu]["H"], V, K, dtype=torch.float32, device="cuda")
        with torch.inference_mode():
            for _ in range(3):
                run_ours(x, out, ht)
        torch.cuda.synchronize()
        return 0

    dev = torch.cuda.get_device_name()
    bw = copy_bandwidth()
    commit = commit_name()
    print(f"device {dev}, copy bandwidth {bw / 1e12:.2f} TB/s, commit {commit}", flush=True)

    rows = []
    t_start = time.time()
    for name in args.shapes.split(","):
        rows.append(bench_shape(name, args, bw, t_start))
        # The shape's tensors were freed when bench_shape returned; hand their cached blocks back
        # before the next shape allocates its own.
        torch.cuda.empty_cache()

    method = ("" if args.no_fla or args.rounds <= 1
              else f", the least of {args.rounds} rounds of ours and fla in turn")
    lines = [f"Prefill, {dev}, {datetime.date.today().isoformat()}, commit {commit}; "
             f"copy bandwidth {bw / 1e12:.2f} TB/s; bf16 inputs, K=V=128, safe gate -5, "
             f"{args.state_dtype} state in and out [N,H,V,K]; "
             "CUDA-event medians of 5 back-to-back calls"
             f"{method}.", "",
             "| case | ms ours | ms fla | fla / ours | target | ours / floor | floor ms |",
             "|---|---|---|---|---|---|---|"]
    for label, mo, mf, fl, tgt in rows:
        lines.append(f"| {label} | {mo:.3f} | {mf:.3f} | {mf / mo:.2f}x | {tgt}x "
                     f"| {mo / fl:.2f} | {fl:.3f} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

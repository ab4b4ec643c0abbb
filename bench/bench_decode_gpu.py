"""bench_decode_gpu.py: flash_kda's CUDA decode against fla's fused_recurrent_kda, side by side.

Both libraries decode one token per sequence on a state pool in place (vLLM's call), with bf16
inputs, K = V = 128, the safe gate (lower_bound -5, A_log, dt_bias), L2 norm and beta sigmoid in
the kernel, int32 state_indices over a shuffled pool. fla is called through its INTERNAL
fla.ops.kda.fused_recurrent.fused_recurrent_kda_fwd(..., inplace_final_state=True,
ssm_state_indices=...), which writes the pool; its public fused_recurrent_kda would silently skip
the write (docs/design.md, "the trap").

Timing: each library's steps are captured in one CUDA graph (STEPS decode calls, as a model's
layers would make them), the two graphs are replayed in turn (so that a drift of the card falls
on both alike), and CUDA events time each replay; the median replay over STEPS is the time of
one call. Each step of a graph uses its own pool (like layers),
as many distinct pools as it takes to touch at least 256 MB per replay where memory allows, so
that the state comes from DRAM and not from the 50 MB L2 (a "hot" table repeats the small
batches with one pool reused by every step, which is what an L2-resident state gives).

The floor is the state bytes read and written over the copy bandwidth measured in the same run
(a large device-to-device copy, bytes read plus bytes written).

Ours launches as a programmatic dependent launch on sm_90 (PDL: in the graph each call's launch
overlaps the tail of the call before it, which fla's kernels do not do); every row also times ours
with FKDA_DECODE_PDL=0, the launch a call gets when the kernel before it is not a PDL launch.

    python3 bench/bench_decode_gpu.py [--out results.md] [--quick] [--sweep | --sweep-only | --vllm]
                                      [--spec]

--vllm times only vLLM's packed form of the call (one row of B tokens, q [1, B, H, K],
cu_seqlens = arange(B + 1), 1-D int32 indices: how vLLM calls fused_recurrent_kda for a decode
step) beside the current form ([B, 1, H, K], no cu_seqlens), for both libraries, both pool
layouts ([K, V] and [V, K]) and pool dtypes, at B = 1 with H = 12, 16 and 32 and at
B x H = 2048 to 8192 (64 x 32, 256 x 32, 1024 x 8), or FKDA_BENCH_VLLM_SHAPES="B,H B,H ...". It
is not part of the default run: fla's Triton kernels autotune once per shape and form.

--spec times speculative decoding as vLLM calls it: 3 tokens per sequence packed in one row
(cu_seqlens), 2-D int32 indices [B, 3], random num_accepted_tokens, both libraries, both pool
dtypes and layouts, at 1 x 32, 64 x 32 and 256 x 8 (FKDA_BENCH_SPEC_SHAPES="B,H B,H ..." picks
others; floor: one state read and three written per sequence and head). With --vllm, both tables.

--sweep adds a table of ours with each kernel family or knob forced (the FKDA_DECODE_* knobs of
src/core/tuning.h; FKDA_DECODE_VARIANT=<name> forces one kernel of src/cuda/decode_variants.h);
FKDA_BENCH_SWEEP_CASES="fp32,64,32 bf16,1,32" and FKDA_BENCH_SWEEP_CONFIGS="default,narrow"
narrow it ("default again" adds a last column, the default timed again: A/B/A),
FKDA_BENCH_SWEEP_WARPS=1 adds CTA sizes, and
FKDA_BENCH_SWEEP_CUSTOM="name:KNOB=1,KNOB2=0;name2:..." adds columns of knobs set together.
    python3 bench/bench_decode_gpu.py --profile fp32,1,32   # two calls of each library, no graph,
                                                             # for ncu (one pool dtype, B, H)
    python3 bench/bench_decode_gpu.py --profile fp32,1,32,spec    # the same for the --spec rows'
                                                                   # call (spec-vk: [V, K] pool)
    python3 bench/bench_decode_gpu.py --profile fp32,1,32,packed  # ... for vLLM's packed form
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import statistics
import sys

import torch
from commit_name import commit_name

K = V = 128
LOWER_BOUND = -5.0
STEPS = 20
REPLAYS = 20
MAX_LAYERS = 1024  # distinct pools per graph (small batches: enough to leave the L2)


def copy_bandwidth() -> float:
    """Bytes read + written per second of a 1 GiB device-to-device copy (median of 10)."""
    n = 1 << 30
    src = torch.empty(n, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    src.fill_(1)
    times = []
    for i in range(13):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        dst.copy_(src)
        b.record()
        b.synchronize()
        if i >= 3:
            times.append(a.elapsed_time(b) * 1e-3)
    del src, dst
    torch.cuda.empty_cache()
    return 2 * n / statistics.median(times)


def make_inputs(B, H, gen):
    dev = "cuda"
    q = torch.randn(B, 1, H, K, device=dev, generator=gen).to(torch.bfloat16)
    k = torch.randn(B, 1, H, K, device=dev, generator=gen).to(torch.bfloat16)
    v = torch.randn(B, 1, H, V, device=dev, generator=gen).to(torch.bfloat16)
    g = torch.randn(B, 1, H, K, device=dev, generator=gen).to(torch.bfloat16)
    beta = torch.randn(B, 1, H, device=dev, generator=gen).to(torch.bfloat16)
    A_log = (0.5 * torch.randn(H, device=dev, generator=gen)).float()
    dt_bias = (0.5 * torch.randn(H * K, device=dev, generator=gen)).float()
    return q, k, v, g, beta, A_log, dt_bias


def ours_call(flash_kda, x, pool, idx, out, v_first=False, num_accepted=None, cu_seqlens=None):
    q, k, v, g, beta, A_log, dt_bias = x
    flash_kda.decode(
        q,
        k,
        v,
        g,
        beta,
        pool,
        state_indices=idx,
        num_accepted_tokens=num_accepted,
        cu_seqlens=cu_seqlens,
        out=out,
        A_log=A_log,
        dt_bias=dt_bias,
        gate="lower_bound",
        lower_bound=LOWER_BOUND,
        use_qk_l2norm=True,
        use_beta_sigmoid=True,
        state_v_first=v_first,
    )


def fla_call(fla_fwd, x, pool, idx, out, v_first=False, num_accepted=None, cu_seqlens=None):
    q, k, v, g, beta, A_log, dt_bias = x
    fla_fwd(
        q=q,
        k=k,
        v=v,
        g=g,
        beta=beta,
        A_log=A_log,
        dt_bias=dt_bias,
        initial_state=pool,
        scale=None,
        output_final_state=False,
        inplace_final_state=True,
        state_v_first=v_first,
        cu_seqlens=cu_seqlens,
        ssm_state_indices=idx,
        num_accepted_tokens=num_accepted,
        use_qk_l2norm_in_kernel=True,
        use_gate_in_kernel=True,
        use_beta_sigmoid_in_kernel=True,
        lower_bound=LOWER_BOUND,
        out=out,
    )


def capture(step_fns):
    """The calls captured in one CUDA graph, after a warm-up (Triton compiles, flash_kda caches
    device properties) and three replays."""
    for f in step_fns:
        f()
    torch.cuda.synchronize()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream):
        with torch.cuda.graph(graph, stream=stream):
            for f in step_fns:
                f()
    torch.cuda.synchronize()
    for _ in range(3):
        graph.replay()
    torch.cuda.synchronize()
    return graph


def time_graphs(fn_lists) -> list:
    """Each list of calls captured in a graph of its own, the graphs then replayed in turn, REPLAYS
    rounds, so that a drift of the card during the run falls on every side alike (one library
    timed entirely after the other would take all of it); returns each graph's median replay
    time / its number of calls, in s."""
    graphs = [capture(fns) for fns in fn_lists]
    times = [[] for _ in graphs]
    for _ in range(REPLAYS):
        for graph, t in zip(graphs, times):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            graph.replay()
            b.record()
            b.synchronize()
            t.append(a.elapsed_time(b) * 1e-3)
    del graphs
    return [statistics.median(t) / len(fns) for t, fns in zip(times, fn_lists)]


def time_graph(step_fns) -> float:
    """Captures the calls in one graph and returns the median replay time / len(calls), in s."""
    return time_graphs([step_fns])[0]


def packed_form(x, B):
    """vLLM's packed form of one-token inputs: the same bytes as one row of B tokens, and
    cu_seqlens = arange(B + 1) (int32, as vLLM's query_start_loc)."""
    toks = [t.view(1, B, *t.shape[2:]) for t in x[:5]]
    return toks + list(x[5:]), torch.arange(B + 1, device="cuda", dtype=torch.int32)


def bench_case(
    flash_kda,
    fla_fwd,
    B,
    H,
    pool_dtype,
    hot,
    gen,
    min_bytes=256 << 20,
    with_fla=True,
    v_first=None,
    packed=False,
    plain_launch=True,
):
    """Times ours and fla (with_fla) on B sequences of one token, H heads, in a CUDA graph of
    distinct pools (one reused if hot); v_first None: FKDA_BENCH_LAYOUT; packed: vLLM's packed
    form (packed_form); plain_launch: also ours without PDL."""
    elem = 4 if pool_dtype == torch.float32 else 2
    pool_bytes = B * H * K * V * elem
    layers = 1 if hot else max(1, min(MAX_LAYERS, math.ceil(min_bytes / pool_bytes)))
    steps = max(STEPS, layers)
    x = make_inputs(B, H, gen)
    pools = [
        (0.1 * torch.randn(B, H, K, V, device="cuda", generator=gen)).to(pool_dtype)
        for _ in range(layers)
    ]
    # Diagnostic knobs for the sweep's custom columns (the tables always use the defaults):
    # FKDA_BENCH_INDICES=identity (slot n for sequence n; default: a shuffled pool) and
    # FKDA_BENCH_LAYOUT=vk (the state stored [V, K]; default [K, V]).
    if os.environ.get("FKDA_BENCH_INDICES", "shuffled") == "identity":
        idx = torch.arange(B, device="cuda", dtype=torch.int32)
    else:
        idx = torch.randperm(B, device="cuda", generator=gen).to(torch.int32)
    vf = os.environ.get("FKDA_BENCH_LAYOUT", "kv") == "vk" if v_first is None else v_first
    out = torch.empty(B, 1, H, V, device="cuda", dtype=torch.bfloat16)
    cu = None
    if packed:
        x, cu = packed_form(x, B)
        out = out.view(1, B, H, V)
    ours = [
        lambda p=pools[s % layers]: ours_call(flash_kda, x, p, idx, out, vf, cu_seqlens=cu)
        for s in range(steps)
    ]
    theirs = [
        lambda p=pools[s % layers]: fla_call(fla_fwd, x, p, idx, out, vf, cu_seqlens=cu)
        for s in range(steps)
    ]
    if with_fla:
        t_ours, t_fla = time_graphs([ours, theirs])
    else:
        t_ours, t_fla = time_graph(ours), float("nan")
    t_plain_launch = float("nan")
    # Ours again, launched without programmatic dependent launch (as in a stream of other kernels).
    if with_fla and plain_launch:
        saved = os.environ.get("FKDA_DECODE_PDL")
        os.environ["FKDA_DECODE_PDL"] = "0"
        t_plain_launch = time_graph(
            [
                lambda p=pools[s % layers]: ours_call(flash_kda, x, p, idx, out, vf, cu_seqlens=cu)
                for s in range(steps)
            ]
        )
        if saved is None:
            os.environ.pop("FKDA_DECODE_PDL")
        else:
            os.environ["FKDA_DECODE_PDL"] = saved
    del pools
    torch.cuda.empty_cache()
    return t_ours, t_fla, 2 * pool_bytes, layers, t_plain_launch


def table_row(pname, B, H, state_bytes, bw, t_ours, t_fla, t_plain_launch, layers):
    floor = state_bytes / bw
    return (
        f"| {pname} | {B} | {H} | {state_bytes / 1e6:.1f} | {floor * 1e6:.2f} "
        f"| {t_ours * 1e6:.2f} | {t_fla * 1e6:.2f} | {t_ours / t_fla:.2f} "
        f"| {t_ours / floor:.2f} | {t_plain_launch * 1e6:.2f} | {t_plain_launch / t_fla:.2f} "
        f"| {layers} |"
    )


def rel(a, b):
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def agreement(flash_kda, fla_fwd, gen):
    """One call of each library from the same pool: outputs and pools must agree (fla is the
    compatibility target). Returns rows of text."""
    rows = []
    B, H, T = 8, 8, 3
    for name, pool_dtype, v_first, spec, varlen, packed in [
        ("fp32 pool [K,V]", torch.float32, False, False, False, False),
        ("bf16 pool [K,V]", torch.bfloat16, False, False, False, False),
        ("fp32 pool [V,K]", torch.float32, True, False, False, False),
        ("fp32 pool, 2-D indices + num_accepted, T=3", torch.float32, False, True, False, False),
        ("fp32 pool, varlen [1,3,2,...], 2-D indices", torch.float32, False, True, True, False),
        ("fp32 pool [K,V], packed form (cu = arange)", torch.float32, False, False, False, True),
        ("bf16 pool [V,K], packed form (cu = arange)", torch.bfloat16, True, False, False, True),
    ]:
        if packed:
            x, cu = packed_form(make_inputs(B, H, gen), B)
        elif varlen:
            lens = [1, 3, 2, 1, 1, 2, 3, 1]
            cu = torch.tensor(
                [0] + list(torch.tensor(lens).cumsum(0)), device="cuda", dtype=torch.int32
            )
            tokens = sum(lens)
            x = list(make_inputs(tokens, H, gen))
            x = [t.reshape(1, tokens, *t.shape[2:]) if t.dim() >= 3 else t for t in x[:5]] + x[5:]
        else:
            cu = None
            x = list(make_inputs(B * (T if spec else 1), H, gen))
            if spec:
                x = [t.reshape(B, T, *t.shape[2:]) if t.dim() >= 3 else t for t in x[:5]] + x[5:]
        P = B * T + 4
        shape = (P, H, V, K) if v_first else (P, H, K, V)
        pool0 = (0.5 * torch.randn(*shape, device="cuda", generator=gen)).to(pool_dtype)
        if spec:
            idx = torch.randperm(P, device="cuda", generator=gen)[: B * T]
            idx = idx.reshape(B, T).to(torch.int32)
            acc = torch.randint(1, T + 1, (B,), device="cuda", generator=gen).to(torch.int32)
        else:
            idx = torch.randperm(P, device="cuda", generator=gen)[:B].to(torch.int32)
            acc = None
        out_shape = x[2].shape
        p_ours, p_fla = pool0.clone(), pool0.clone()
        o_ours = torch.empty(out_shape, device="cuda", dtype=torch.bfloat16)
        o_fla = torch.zeros(out_shape, device="cuda", dtype=torch.bfloat16)
        ours_call(flash_kda, x, p_ours, idx, o_ours, v_first, acc, cu)
        fla_call(fla_fwd, x, p_fla, idx, o_fla, v_first, acc, cu)
        torch.cuda.synchronize()
        rows.append(f"| {name} | {rel(o_ours, o_fla):.2e} | {rel(p_ours, p_fla):.2e} |")
    return rows


def vllm_shapes():
    """The --vllm rows' (B, H): B = 1 at H = 12, 16, 32 and B x H = 2048 to 8192, or
    FKDA_BENCH_VLLM_SHAPES="B,H B,H ..." (fla autotunes each new shape and form)."""
    env = os.environ.get("FKDA_BENCH_VLLM_SHAPES", "").split()
    if env:
        return [tuple(int(x) for x in c.split(",")) for c in env]
    return [(1, 12), (1, 16), (1, 32), (64, 32), (256, 32), (1024, 8)]


def vllm_table(flash_kda, fla_fwd, bw, gen):
    """vLLM's packed form beside the current form (--vllm): rows of text, printed as they come."""
    rows = [
        "",
        "vLLM's packed form (q [1, B, H, K], cu_seqlens = arange(B + 1), 1-D int32 indices) "
        "beside the current form (q [B, 1, H, K], no cu_seqlens), one token per sequence, "
        f"{STEPS}+ calls per CUDA graph, DRAM-resident pools; ours with PDL:",
        "",
        "| pool | layout | B | H | state MB | floor us | ours us | fla us | ours/fla "
        "| ours packed us | fla packed us | packed ours/fla | packed ours/floor "
        "| packed/current ours | pools |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    print("\n".join(rows), flush=True)
    for pool_dtype, pname in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
        for vf in (False, True):
            for B, H in vllm_shapes():
                t_ours, t_fla, state_bytes, layers, _ = bench_case(
                    flash_kda, fla_fwd, B, H, pool_dtype, False, gen, v_first=vf, plain_launch=False
                )
                p_ours, p_fla, _, _, _ = bench_case(
                    flash_kda,
                    fla_fwd,
                    B,
                    H,
                    pool_dtype,
                    False,
                    gen,
                    v_first=vf,
                    packed=True,
                    plain_launch=False,
                )
                floor = state_bytes / bw
                layout = "[V,K]" if vf else "[K,V]"
                row = (
                    f"| {pname} | {layout} | {B} | {H} | {state_bytes / 1e6:.1f} "
                    f"| {floor * 1e6:.2f} | {t_ours * 1e6:.2f} | {t_fla * 1e6:.2f} "
                    f"| {t_ours / t_fla:.2f} | {p_ours * 1e6:.2f} | {p_fla * 1e6:.2f} "
                    f"| {p_ours / p_fla:.2f} | {p_ours / floor:.2f} | {p_ours / t_ours:.2f} "
                    f"| {layers} |"
                )
                rows.append(row)
                print(row, flush=True)
    return rows


SPEC_T = 3  # draft tokens per sequence in the speculative rows


def spec_call_inputs(B, H, pool_dtype, gen, v_first, layers):
    """A speculative-decoding call's tensors (bench_spec_case's form): tokens packed in one row,
    `layers` pools of B * SPEC_T slots, 2-D int32 indices, accepted counts, cu_seqlens, out."""
    T = SPEC_T
    P = B * T
    x = [
        t.reshape(1, B * T, *t.shape[2:]) if t.dim() >= 3 else t for t in make_inputs(B * T, H, gen)
    ]
    shape = (P, H, V, K) if v_first else (P, H, K, V)
    pools = [
        (0.1 * torch.randn(*shape, device="cuda", generator=gen)).to(pool_dtype)
        for _ in range(layers)
    ]
    idx = torch.randperm(P, device="cuda", generator=gen).reshape(B, T).to(torch.int32)
    acc = torch.randint(1, T + 1, (B,), device="cuda", generator=gen).to(torch.int32)
    cu = torch.arange(0, B * T + 1, T, device="cuda", dtype=torch.int32)
    out = torch.empty(1, B * T, H, V, device="cuda", dtype=torch.bfloat16)
    return x, pools, idx, acc, cu, out


def bench_spec_case(flash_kda, fla_fwd, B, H, pool_dtype, gen, v_first, min_bytes=256 << 20):
    """Speculative decoding in vLLM's form: B sequences of SPEC_T tokens packed in one row
    (cu_seqlens = 0, T, 2T, ...), 2-D int32 indices [B, T] (token t's state goes to slot
    idx[n, t]), num_accepted_tokens in [1, T] (the state is read from idx[n, a_n - 1]). Times
    ours and fla in CUDA graphs of distinct pools; returns (ours s, fla s, bytes, pools). Bytes:
    one state read and T written per sequence and head."""
    T = SPEC_T
    elem = 4 if pool_dtype == torch.float32 else 2
    pool_bytes = B * T * H * K * V * elem
    layers = max(1, min(MAX_LAYERS, math.ceil(min_bytes / pool_bytes)))
    steps = max(STEPS, layers)
    x, pools, idx, acc, cu, out = spec_call_inputs(B, H, pool_dtype, gen, v_first, layers)
    ours = [
        lambda p=pools[s % layers]: ours_call(flash_kda, x, p, idx, out, v_first, acc, cu)
        for s in range(steps)
    ]
    theirs = [
        lambda p=pools[s % layers]: fla_call(fla_fwd, x, p, idx, out, v_first, acc, cu)
        for s in range(steps)
    ]
    t_ours, t_fla = time_graphs([ours, theirs])
    del pools
    torch.cuda.empty_cache()
    return t_ours, t_fla, (1 + T) * B * H * K * V * elem, layers


def spec_shapes():
    """The --spec rows' (B, H): FKDA_BENCH_SPEC_SHAPES="B,H B,H ..." or 1 x 32, 64 x 32, 256 x 8."""
    spec = os.environ.get("FKDA_BENCH_SPEC_SHAPES", "1,32 64,32 256,8")
    return [tuple(int(x) for x in item.split(",")) for item in spec.split()]


def spec_table(flash_kda, fla_fwd, bw, gen):
    """Speculative decoding (--spec): rows of text, printed as they come."""
    rows = [
        "",
        f"Speculative decoding in vLLM's form: {SPEC_T} tokens per sequence packed in one row "
        "(cu_seqlens), 2-D int32 indices [B, T], random num_accepted_tokens in [1, T]; "
        f"{STEPS}+ calls per CUDA graph, DRAM-resident pools. Floor: one state read and T "
        "written per sequence and head.",
        "",
        "| pool | layout | B | H | floor us | ours us | fla us | ours/fla | ours/floor | pools |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    print("\n".join(rows), flush=True)
    for pool_dtype, pname in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
        for vf in (False, True):
            for B, H in spec_shapes():
                t_ours, t_fla, nbytes, layers = bench_spec_case(
                    flash_kda, fla_fwd, B, H, pool_dtype, gen, vf
                )
                floor = nbytes / bw
                row = (
                    f"| {pname} | {'[V,K]' if vf else '[K,V]'} | {B} | {H} | {floor * 1e6:.2f} "
                    f"| {t_ours * 1e6:.2f} | {t_fla * 1e6:.2f} | {t_ours / t_fla:.2f} "
                    f"| {t_ours / floor:.2f} | {layers} |"
                )
                rows.append(row)
                print(row, flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--quick", action="store_true", help="fewer batch sizes")
    ap.add_argument(
        "--sweep",
        action="store_true",
        default=os.environ.get("FKDA_BENCH_SWEEP") == "1",
        help="also time each kernel family and CTA size forced (or FKDA_BENCH_SWEEP=1)",
    )
    ap.add_argument(
        "--sweep-only",
        action="store_true",
        help="only the agreement and the sweep (no fla timings)",
    )
    ap.add_argument(
        "--vllm",
        action="store_true",
        help="only the agreement and vLLM's packed form beside the current form",
    )
    ap.add_argument(
        "--spec",
        action="store_true",
        help="only the agreement and speculative decoding (2-D indices, accepted counts)",
    )
    ap.add_argument(
        "--profile",
        default=None,
        metavar="DTYPE,B,H[,spec|,spec-vk]",
        help="only run two calls of each library on one case (for ncu); spec: a --spec call",
    )
    args = ap.parse_args()

    import flash_kda

    try:
        from fla.ops.kda.fused_recurrent import fused_recurrent_kda_fwd as fla_fwd
    except ImportError:
        if not args.profile:  # every table compares with fla
            raise
        fla_fwd = None  # --profile profiles ours alone then

    if args.profile:
        dtype, B, H, *form = args.profile.split(",")
        pool_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
        gen = torch.Generator(device="cuda")
        gen.manual_seed(1234)
        B, H = int(B), int(H)
        if form and form[0] not in ("spec", "spec-vk", "packed"):
            raise SystemExit(f"--profile: unknown form {form[0]!r} (spec, spec-vk or packed)")
        if form and form[0] != "packed":  # the --spec rows' call ([K, V] or [V, K] pool)
            v_first = form[0] == "spec-vk"
            x, (pool,), idx, acc, cu, out = spec_call_inputs(B, H, pool_dtype, gen, v_first, 1)
            for _ in range(2):
                ours_call(flash_kda, x, pool, idx, out, v_first, acc, cu)
            for _ in range(2 if fla_fwd is not None else 0):
                fla_call(fla_fwd, x, pool, idx, out, v_first, acc, cu)
            torch.cuda.synchronize()
            return 0
        x = make_inputs(B, H, gen)
        pool = (0.1 * torch.randn(B, H, K, V, device="cuda", generator=gen)).to(pool_dtype)
        idx = torch.randperm(B, device="cuda", generator=gen).to(torch.int32)
        out = torch.empty(B, 1, H, V, device="cuda", dtype=torch.bfloat16)
        cu = None
        if form:  # packed: vLLM's packed form of the same call (the --vllm table's second half)
            x, cu = packed_form(x, B)
            out = out.view(1, B, H, V)
        for _ in range(2):
            ours_call(flash_kda, x, pool, idx, out, cu_seqlens=cu)
        for _ in range(2 if fla_fwd is not None else 0):
            fla_call(fla_fwd, x, pool, idx, out, cu_seqlens=cu)
        torch.cuda.synchronize()
        return 0

    torch.manual_seed(0)
    gen = torch.Generator(device="cuda")
    gen.manual_seed(1234)
    dev = torch.cuda.get_device_name()
    bw = copy_bandwidth()
    commit = commit_name()
    lines = [
        f"Device: {dev}; copy bandwidth {bw / 1e12:.3f} TB/s (read + written); "
        f"{datetime.date.today().isoformat()}; commit {commit}; torch {torch.__version__}",
        "",
        "Agreement with fla (one call from the same pool, bf16 inputs; relative Frobenius error):",
        "",
        "| case | out vs fla | pool vs fla |",
        "|---|---|---|",
    ]
    lines += agreement(flash_kda, fla_fwd, gen)
    print("\n".join(lines), flush=True)
    if args.vllm or args.spec:
        extra = vllm_table(flash_kda, fla_fwd, bw, gen) if args.vllm else []
        extra += spec_table(flash_kda, fla_fwd, bw, gen) if args.spec else []
        text = "\n".join(lines + extra) + "\n"
        if args.out:
            with open(args.out, "w") as f:
                f.write(text)
        print("\n" + text)
        return 0

    batches = [1, 8, 64, 256, 1024] if not args.quick else [1, 64, 1024]
    header = [
        "",
        "| pool | B | H | state MB | floor us | ours us | fla us | ours/fla | ours/floor "
        "| ours no-PDL us | no-PDL/fla | pools |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    table = [
        "",
        f"Decode, one token per sequence, {STEPS}+ calls per CUDA graph, DRAM-resident pools:",
    ] + header
    hot = ["", "Hot L2: one pool reused by every call of the graph (the state stays in L2):"]
    hot += header
    print("\n".join(table), flush=True)
    if args.sweep_only:
        args.sweep, table, hot = True, [], []
    for pool_dtype, pname in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
        for H in (32, 8) if not args.sweep_only else ():
            for B in batches:
                t_ours, t_fla, state_bytes, layers, t_np = bench_case(
                    flash_kda, fla_fwd, B, H, pool_dtype, False, gen
                )
                row = table_row(pname, B, H, state_bytes, bw, t_ours, t_fla, t_np, layers)
                table.append(row)
                print(row, flush=True)
    print("\n".join(hot[:4]), flush=True)
    for pool_dtype, pname in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
        for H in (32, 8) if not args.sweep_only else ():
            for B in (1, 8):
                t_ours, t_fla, state_bytes, layers, t_np = bench_case(
                    flash_kda, fla_fwd, B, H, pool_dtype, True, gen
                )
                row = table_row(pname, B, H, state_bytes, bw, t_ours, t_fla, t_np, layers)
                hot.append(row)
                print(row, flush=True)
    sweep = []
    if args.sweep:
        # Each kernel family and CTA size forced in turn (src/core/tuning.h's decode knobs).
        configs = [
            ("default", {}),
            ("no PDL", {"FKDA_DECODE_PDL": "0"}),
            ("unpacked", {"FKDA_DECODE_PACKED": "0"}),
            ("narrow", {"FKDA_DECODE_NARROW": "1"}),
            ("wide", {"FKDA_DECODE_NARROW": "0"}),
            ("ef loads", {"FKDA_DECODE_LOAD_EF": "1"}),
            ("plain loads", {"FKDA_DECODE_LOAD_EF": "0"}),
            ("generic tokens", {"FKDA_DECODE_BF16_TOKENS": "0"}),
            ("split K", {"FKDA_DECODE_KSPLIT": "1"}),
            ("no split K", {"FKDA_DECODE_KSPLIT": "0"}),
        ]
        if os.environ.get("FKDA_BENCH_SWEEP_WARPS") == "1":
            configs += [(f"{w}w", {"FKDA_DECODE_WARPS_PER_CTA": w}) for w in ("1", "2", "4", "8")]
        if os.environ.get("FKDA_BENCH_SWEEP_CONFIGS"):  # e.g. "default,no PDL": only these columns
            wanted = os.environ["FKDA_BENCH_SWEEP_CONFIGS"].split(",")
            configs = [c for c in configs if c[0] in wanted]
        # Ad hoc columns, NAME:KNOB=VALUE,... separated by ";", e.g. FKDA_BENCH_SWEEP_CUSTOM=
        # "2w generic:FKDA_DECODE_WARPS_PER_CTA=2,FKDA_DECODE_BF16_TOKENS=0;..."
        for spec in filter(None, os.environ.get("FKDA_BENCH_SWEEP_CUSTOM", "").split(";")):
            name, _, assigns = spec.partition(":")
            configs.append((name, dict(a.split("=", 1) for a in assigns.split(",") if a)))
        if "default again" in os.environ.get("FKDA_BENCH_SWEEP_CONFIGS", "").split(","):
            configs.append(("default again", {}))  # A/B/A: the first column's drift over the sweep
        sweep = [
            "",
            "Kernel families, warps per CTA and programmatic dependent launch forced ("
            "FKDA_DECODE_WARPS_PER_CTA, FKDA_DECODE_PDL, FKDA_DECODE_PACKED, "
            "FKDA_DECODE_NARROW, FKDA_DECODE_LOAD_EF, FKDA_DECODE_BF16_TOKENS, "
            "FKDA_DECODE_KSPLIT, FKDA_DECODE_VARIANT), "
            "ours us:",
            "",
            "| pool | B | H | " + " | ".join(name for name, _ in configs) + " |",
            "|---|---|---|" + "---|" * len(configs),
        ]
        print("\n".join(sweep), flush=True)
        knobs = (
            "FKDA_DECODE_WARPS_PER_CTA",
            "FKDA_DECODE_PDL",
            "FKDA_DECODE_PACKED",
            "FKDA_DECODE_NARROW",
            "FKDA_DECODE_LOAD_EF",
            "FKDA_DECODE_BF16_TOKENS",
            "FKDA_DECODE_KSPLIT",
            "FKDA_DECODE_VARIANT",
        )
        # The custom columns' knobs too.
        knobs += tuple(sorted({k for _, env in configs for k in env} - set(knobs)))
        cases = [
            (d, B, H)
            for d in ("fp32", "bf16")
            for B, H in ((1, 32), (1, 8), (8, 8), (8, 32), (64, 32), (256, 8), (1024, 32))
        ]
        if os.environ.get("FKDA_BENCH_SWEEP_CASES"):  # e.g. "fp32,64,32 bf16,1,32"
            cases = [
                (d, int(B), int(H))
                for d, B, H in (c.split(",") for c in os.environ["FKDA_BENCH_SWEEP_CASES"].split())
            ]
        for pname, B, H in cases:
            pool_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[pname]
            cells = []
            for _, env in configs:
                for kn in knobs:
                    os.environ.pop(kn, None)
                os.environ.update(env)
                t_ours, _, _, _, _ = bench_case(
                    flash_kda, fla_fwd, B, H, pool_dtype, False, gen, with_fla=False
                )
                cells.append(f"{t_ours * 1e6:.2f}")
            for kn in knobs:
                os.environ.pop(kn, None)
            row = f"| {pname} | {B} | {H} | " + " | ".join(cells) + " |"
            sweep.append(row)
            print(row, flush=True)
    text = "\n".join(lines + table + hot + sweep) + "\n"
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    print("\n" + text)


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Prefill speed of the options beyond FlashKDA's subset on the GPU: ours (flash_kda) next to
fla's chunk_kda (Triton), same inputs, same process.

    python3 bench/bench_prefill_options_gpu.py [--cases kimi,gva,k64,k256,options,states]
                                               [--out table.md] [--no-fla] [--fla-rows PIECES]
                                               [--profile]

The cases (groups for --cases; each row names its group):
  kimi     Kimi-Linear's call: bf16 q, k, v; g a float32 log decay computed beforehand as
           -exp(A_log) * softplus(x + dt_bias) (gate none); beta float32 probabilities (no
           sigmoid); L2 norm in kernel; fp32 initial state and output_final_state. T=8192 H=32,
           one sequence and 8 x 1024 varlen.
  gva      the same call with HV = 2 H (H=16, HV=32), T=8192.
  k64      the same call at K = V = 64, T=8192 H=32.
  k256     FlashKDA's subset options (bf16, safe gate -5, norm and beta sigmoid in kernel) at
           K = V = 256, T=8192 H=32: the K = 256 kernels (target: fla / ours >= 1.5).
  options  K = V = 128, T=8192 H=32: FlashKDA's subset (bf16, safe gate -5, norm and beta
           sigmoid in kernel) and, changing one thing each, gate none (fp32 g), softplus,
           lower bound -20, norm off, sigmoid off, fp16 inputs, fp32 inputs; each row's time
           over the subset's (target <= 1.25).
  states   ours only (fla has neither): 16 checkpoints at multiples of 512 tokens (4 per 2048)
           at T=8192 H=32 over the same call without (target <= 1.10); a state pool updated in
           place over plain initial / final states, 8 x 1024 varlen (target <= 1.0).

Rows (i)-(iv) call flash_kda.chunk_kda and fla's chunk_kda with the same keywords (both allocate
their outputs); the states rows call flash_kda.prefill. Times are medians of CUDA-event timings
of back-to-back calls (bench_prefill_gpu.time_ms); on a row with fla, ours and fla are timed in
turn --rounds times (default 3) and each side's time is the least of its per-round medians
(bench_prefill_gpu.time_alternating), so that a drift of the card during the run falls on both
sides alike. The floor is the bytes every call must move
(its inputs read, its outputs written) over the copy bandwidth measured in this run.

--profile adds each row's per-kernel device times of our call (torch.profiler, through
bench_prefill_gpu.kernel_times), e.g. "kernels: pf256_prep_kernel 0.41, pf256_chain_kernel 0.93 ms",
so that one run says which kernel takes the time.

fla runs with FLA_FLASH_KDA=0 (set by bench_prefill_gpu on import) so that its dispatcher does not
route the call to us. Triton autotunes on the first call of each new shape and option set (a
minute or more each): pick a few groups with --cases.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_prefill_gpu as base  # noqa: E402  (sets FLA_FLASH_KDA=0, imports torch, flash_kda)
import torch  # noqa: E402
from commit_name import commit_name  # noqa: E402

import flash_kda  # noqa: E402

GROUPS = ("kimi", "gva", "k64", "k256", "options", "states")
OPTION_TARGET = 1.25
CHECKPOINT_TARGET = 1.10
POOL_TARGET = 1.0


def make_call(
    T=8192,
    H=32,
    HV=None,
    K=128,
    V=128,
    dtype=torch.bfloat16,
    seqlens=None,
    gate="safe",
    lower_bound=-5.0,
    norm=True,
    sigmoid=True,
    state_v_first=True,
    seed=0,
):
    """chunk_kda's keywords (fla's names) for one call, on fresh random inputs.

    gate: "safe" (lower_bound in kernel with safe_gate), "lower_bound" (any bound, no safe_gate),
    "softplus" (in kernel), or "none" (g a float32 log decay computed here, as Kimi-Linear does).
    sigmoid False: beta float32 probabilities."""
    HV = HV or H
    gen = torch.Generator(device="cuda").manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, device="cuda", dtype=torch.float32)

    B = 1
    cu = None
    N = 1
    if seqlens is not None:
        assert sum(seqlens) == T
        bounds = [0]
        for n in seqlens:
            bounds.append(bounds[-1] + n)
        cu = torch.tensor(bounds, dtype=torch.int64, device="cuda")
        N = len(seqlens)
    A_log = torch.rand(HV, generator=gen, device="cuda", dtype=torch.float32)
    dt_bias = torch.rand(HV * K, generator=gen, device="cuda", dtype=torch.float32)
    q, k = randn(B, T, H, K), randn(B, T, H, K)
    if not norm:  # the caller's own L2 norm, as fla expects without the in-kernel one
        q = q / q.norm(dim=-1, keepdim=True)
        k = k / k.norm(dim=-1, keepdim=True)
    kw = dict(
        q=q.to(dtype),
        k=k.to(dtype),
        v=randn(B, T, HV, V).to(dtype),
        scale=K**-0.5,
        initial_state=0.1
        * randn(*((N, HV, V, K) if state_v_first else (N, HV, K, V))).contiguous(),
        output_final_state=True,
        use_qk_l2norm_in_kernel=norm,
        use_beta_sigmoid_in_kernel=sigmoid,
        state_v_first=state_v_first,
        cu_seqlens=cu,
    )
    if sigmoid:
        kw["beta"] = randn(B, T, HV).to(dtype)
    else:
        kw["beta"] = torch.sigmoid(randn(B, T, HV))  # float32 probabilities
    if gate == "none":
        x = randn(B, T, HV, K) + dt_bias.view(HV, K)
        kw["g"] = -torch.exp(A_log)[:, None] * torch.nn.functional.softplus(x)
        kw["use_gate_in_kernel"] = False
    else:
        kw["g"] = randn(B, T, HV, K).to(dtype)
        kw.update(use_gate_in_kernel=True, A_log=A_log, dt_bias=dt_bias)
        if gate == "safe":
            kw.update(safe_gate=True, lower_bound=lower_bound)
        elif gate == "lower_bound":
            kw.update(lower_bound=lower_bound)
        else:
            assert gate == "softplus", gate
    return kw


def call_bytes(kw):
    """Bytes a chunk_kda call must move: every input tensor read once, out and the final state
    written once."""
    read = sum(t.numel() * t.element_size() for t in kw.values() if isinstance(t, torch.Tensor))
    written = kw["v"].numel() * kw["q"].element_size()
    if kw.get("output_final_state") and kw.get("initial_state") is not None:
        written += kw["initial_state"].numel() * 4
    return read + written


def ours(kw):
    return flash_kda.chunk_kda(**kw)


def fla(kw):
    from fla.ops.kda import chunk_kda

    return chunk_kda(**kw)


class Row:
    def __init__(self, group, label, ms_ours, ms_fla, floor_ms, base_ms=None, target=None, note=""):
        self.group, self.label = group, label
        self.ms_ours, self.ms_fla, self.floor_ms = ms_ours, ms_fla, floor_ms
        self.base_ms, self.target, self.note = base_ms, target, note


def wants_fla(args, label):
    """fla is timed unless --no-fla, and with --fla-rows only on rows whose label contains one of
    its comma-separated pieces (each new option set costs fla a minute or more of autotuning)."""
    if args.no_fla:
        return False
    pieces = [x for x in (args.fla_rows or "").split(",") if x]
    return not pieces or any(x in label for x in pieces)


def time_pair(group, label, kw, args, bw, t_start, base_ms=None, target=None):
    """Times ours and fla's chunk_kda on the keywords kw; prints the line, returns the Row."""
    with torch.inference_mode():
        o, ht = ours(kw)  # first call: lazy module loading outside the measurement
        torch.cuda.synchronize()
        with_fla = wants_fla(args, label)
        # timed alone without fla; beside fla, in turn with it (time_alternating, below)
        ms_ours = float("nan") if with_fla else base.time_ms(lambda: ours(kw))
        ms_fla, note = float("nan"), ""
        if args.profile:
            note = kernels_note(base.kernel_times(lambda: ours(kw))) + " "
        if with_fla:
            o_fla, ht_fla = fla(kw)  # first call autotunes
            torch.cuda.synchronize()
            (ms_ours, hi_ours), (ms_fla, hi_fla) = base.time_alternating(
                [(lambda: ours(kw), {}), (lambda: fla(kw), dict(warmup=2, reps=5))], args.rounds
            )
            if args.rounds > 1:
                note += f"rounds ours {ms_ours:.3f}-{hi_ours:.3f}, fla {ms_fla:.3f}-{hi_fla:.3f}; "
            note += f"ours vs fla: out {base.rel(o, o_fla):.1e}, state {base.rel(ht, ht_fla):.1e}"
    floor_ms = call_bytes(kw) / bw * 1e3
    row = Row(group, label, ms_ours, ms_fla, floor_ms, base_ms, target, note)
    print_row(row, t_start)
    return row


def kernels_note(times):
    """'kernels: name ms, ...' from kernel_times' {name: ms} (our kernels)."""
    return "kernels: " + ", ".join(f"{name} {ms:.3f}" for name, ms in times.items()) + " ms"


def print_row(row, t_start):
    ratio = f", x{row.ms_ours / row.base_ms:.2f} of its base" if row.base_ms else ""
    print(
        f"[{row.group}] {row.label}: ours {row.ms_ours:.3f} ms, fla {row.ms_fla:.3f} ms"
        f"{ratio}, {row.ms_ours / row.floor_ms:.2f}x floor ({row.floor_ms:.3f} ms) "
        f"{row.note} [{time.time() - t_start:.0f} s]",
        flush=True,
    )


def kimi_rows(args, bw, t_start):
    rows = [
        time_pair(
            "kimi",
            "Kimi-Linear call, T=8192 H=32, one sequence",
            make_call(gate="none", sigmoid=False, state_v_first=False),
            args,
            bw,
            t_start,
        )
    ]
    torch.cuda.empty_cache()
    rows.append(
        time_pair(
            "kimi",
            "Kimi-Linear call, 8 x 1024 H=32",
            make_call(gate="none", sigmoid=False, state_v_first=False, seqlens=[1024] * 8),
            args,
            bw,
            t_start,
        )
    )
    return rows


def gva_rows(args, bw, t_start):
    kw = make_call(H=16, HV=32, gate="none", sigmoid=False, state_v_first=False)
    return [time_pair("gva", "Kimi-Linear call, GVA H=16 HV=32, T=8192", kw, args, bw, t_start)]


def k64_rows(args, bw, t_start):
    kw = make_call(K=64, V=64, gate="none", sigmoid=False, state_v_first=False)
    return [time_pair("k64", "Kimi-Linear call, K=V=64, T=8192 H=32", kw, args, bw, t_start)]


def k256_rows(args, bw, t_start):
    kw = make_call(K=256, V=256)
    return [
        time_pair("k256", "FlashKDA's subset options, K=V=256 T=8192 H=32", kw, args, bw, t_start)
    ]


OPTION_VARIANTS = [
    # (label, make_call keywords changed from FlashKDA's subset)
    ("gate none (fp32 log decay)", dict(gate="none")),
    ("softplus gate", dict(gate="softplus")),
    ("lower bound -20", dict(gate="lower_bound", lower_bound=-20.0)),
    ("L2 norm off", dict(norm=False)),
    ("beta sigmoid off", dict(sigmoid=False)),
    ("fp16 inputs", dict(dtype=torch.float16)),
    ("fp32 inputs", dict(dtype=torch.float32)),
]


def option_rows(args, bw, t_start):
    subset = time_pair(
        "options", "FlashKDA's subset, K=V=128 T=8192 H=32", make_call(), args, bw, t_start
    )
    rows = [subset]
    for label, change in OPTION_VARIANTS:
        torch.cuda.empty_cache()
        rows.append(
            time_pair(
                "options",
                label,
                make_call(**change),
                args,
                bw,
                t_start,
                base_ms=subset.ms_ours,
                target=OPTION_TARGET,
            )
        )
    return rows


def prefill_keywords(kw):
    """flash_kda.prefill's keywords for FlashKDA's subset from make_call's chunk_kda keywords."""
    return dict(
        A_log=kw["A_log"],
        dt_bias=kw["dt_bias"],
        cu_seqlens=kw["cu_seqlens"],
        scale=kw["scale"],
        gate="lower_bound",
        lower_bound=kw["lower_bound"],
        use_qk_l2norm=True,
        use_beta_sigmoid=True,
        state_v_first=True,
    )


def state_rows(args, bw, t_start):
    torch.cuda.empty_cache()
    return checkpoint_rows(args, bw, t_start) + pool_rows(args, bw, t_start)


def checkpoint_rows(args, bw, t_start):
    """16 checkpoints, every 512 tokens (4 per 2048, multiples of 256), against the same call."""
    rows = []
    kw = make_call()
    token = (kw["q"], kw["k"], kw["v"], kw["g"], kw["beta"])
    opts = prefill_keywords(kw)
    H, K, V = kw["q"].shape[2], kw["q"].shape[3], kw["v"].shape[3]
    out = torch.empty_like(kw["v"])
    final = torch.empty_like(kw["initial_state"])
    offsets = torch.arange(512, 8192 + 1, 512, device="cuda", dtype=torch.int64)[None]
    ckpt = torch.empty(1, offsets.shape[1], H, V, K, device="cuda", dtype=torch.float32)

    def plain():
        flash_kda.prefill(
            *token, out=out, initial_state=kw["initial_state"], final_state=final, **opts
        )

    def with_checkpoints():
        flash_kda.prefill(
            *token,
            out=out,
            initial_state=kw["initial_state"],
            final_state=final,
            checkpoint_offsets=offsets,
            checkpoint_states=ckpt,
            **opts,
        )

    moved = call_bytes(kw)
    for fn in (plain, with_checkpoints):
        fn()
    torch.cuda.synchronize()
    ms_plain = base.time_ms(plain)
    ms_ckpt = base.time_ms(with_checkpoints)
    floor = moved / bw * 1e3
    for row in (
        Row("states", "T=8192 H=32, no checkpoints (base)", ms_plain, float("nan"), floor),
        Row(
            "states",
            "T=8192 H=32, 16 checkpoints (4 per 2048)",
            ms_ckpt,
            float("nan"),
            (moved + ckpt.numel() * 4) / bw * 1e3,
            ms_plain,
            CHECKPOINT_TARGET,
        ),
    ):
        print_row(row, t_start)
        rows.append(row)
    return rows


def pool_rows(args, bw, t_start):
    """The pool updated in place against plain initial / final states, 8 x 1024."""
    rows = []
    kw = make_call(seqlens=[1024] * 8)
    token = (kw["q"], kw["k"], kw["v"], kw["g"], kw["beta"])
    opts = prefill_keywords(kw)
    out = torch.empty_like(kw["v"])
    final = torch.empty_like(kw["initial_state"])
    P = 32
    pool = 0.1 * torch.randn((P,) + kw["initial_state"].shape[1:], device="cuda")
    slots = torch.randperm(P, device="cuda")[:8]
    init_idx, final_idx = slots.to(torch.int32), slots.to(torch.int32)

    def states():
        flash_kda.prefill(
            *token, out=out, initial_state=kw["initial_state"], final_state=final, **opts
        )

    def in_pool():
        flash_kda.prefill(
            *token,
            out=out,
            state_pool=pool,
            initial_state_indices=init_idx,
            final_state_indices=final_idx,
            **opts,
        )

    for fn in (states, in_pool):
        fn()
    torch.cuda.synchronize()
    ms_states = base.time_ms(states)
    ms_pool = base.time_ms(in_pool)
    floor = call_bytes(kw) / bw * 1e3
    for row in (
        Row(
            "states",
            "8 x 1024 H=32, initial/final state tensors (base)",
            ms_states,
            float("nan"),
            floor,
        ),
        Row(
            "states",
            "8 x 1024 H=32, pool in place (32 slots)",
            ms_pool,
            float("nan"),
            floor,
            ms_states,
            POOL_TARGET,
        ),
    ):
        print_row(row, t_start)
        rows.append(row)
    return rows


RUNNERS = {
    "kimi": kimi_rows,
    "gva": gva_rows,
    "k64": k64_rows,
    "k256": k256_rows,
    "options": option_rows,
    "states": state_rows,
}


def table(rows, dev, commit, bw, rounds):
    method = f" (rows with fla: the least of {rounds} rounds, ours and fla in turn)"
    lines = [
        f"Prefill options, {dev}, {datetime.date.today().isoformat()}, commit {commit}; "
        f"copy bandwidth {bw / 1e12:.2f} TB/s; CUDA-event medians of back-to-back calls"
        f"{method if rounds > 1 else ''}; "
        "'x base' is the row's time over its group's base row (the subset, or the same "
        "call without the state feature).",
        "",
        "| group | case | ms ours | ms fla | fla / ours | x base | target | ours / floor |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        fla_ms = "-" if math.isnan(r.ms_fla) else f"{r.ms_fla:.3f}"
        fla_ratio = "-" if math.isnan(r.ms_fla) else f"{r.ms_fla / r.ms_ours:.2f}x"
        x_base = f"{r.ms_ours / r.base_ms:.2f}" if r.base_ms else "-"
        target = f"<= {r.target:.2f}" if r.target else "-"
        lines.append(
            f"| {r.group} | {r.label} | {r.ms_ours:.3f} | {fla_ms} | {fla_ratio} "
            f"| {x_base} | {target} | {r.ms_ours / r.floor_ms:.2f} |"
        )
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--cases",
        default=",".join(GROUPS),
        help=f"comma-separated groups among {', '.join(GROUPS)} (default: all)",
    )
    ap.add_argument("--out", default=None, help="write the markdown table to this file")
    ap.add_argument("--no-fla", action="store_true", help="time ours only")
    ap.add_argument(
        "--fla-rows",
        default=None,
        help="time fla only on rows whose label contains one of these comma-separated pieces, "
        'e.g. "one sequence,fp16 inputs" (default: every row)',
    )
    ap.add_argument(
        "--profile",
        action="store_true",
        help="per-kernel device times of our call on each row (torch.profiler)",
    )
    ap.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="on rows with fla: time ours and fla in turn this many times; each side's time is "
        "the least of its per-round medians (1: one timing each)",
    )
    args = ap.parse_args()
    groups = [g for g in args.cases.split(",") if g]
    unknown = [g for g in groups if g not in RUNNERS]
    if unknown:
        ap.error(f"unknown case group(s) {', '.join(unknown)}; choose among {', '.join(GROUPS)}")

    dev = torch.cuda.get_device_name()
    bw = base.copy_bandwidth()
    commit = commit_name()
    print(f"device {dev}, copy bandwidth {bw / 1e12:.2f} TB/s, commit {commit}", flush=True)
    rows = []
    t_start = time.time()
    for group in groups:
        rows.extend(RUNNERS[group](args, bw, t_start))
        torch.cuda.empty_cache()
    text = table(rows, dev, commit, bw, args.rounds)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""layer_stamps.py: the single-kernel decode layer's path at small batches, phase by phase, from a
probe build of the library (layer_stamps.patch: thread 0 of every CTA records the SM clock after
each phase of src/cuda/decode_layer_fused.cu's path).

Static pictures of that path (instruction counts before a load, which waits cover which loads)
have predicted gains that five A/Bs did not show (docs/history/decode.md), so this measures the
phases instead. Stamps, each taken after an instruction that needed the phase's data:

    0 after griddepcontrol.wait               1 every load that needs no slot issued
    2 the index's load issued                 3 the slot's index has arrived
    4 windows in, q or k convolved and sent   5 the whole token here (q/k exchange done)
    6 the state in, its dot products summed   7 the new state's stores issued
    8 every warp's sum of o^2 here            9 out stored (issued)

and, in the short-conv narrow kernels, the first side thread's clock once the side warps' values
(decays, beta, the norm's scales) are stored, beside the tile's own "token exchanged" (both from
entry: whether the tile's warps wait for the side warps at the __syncthreads after the exchange),
plus globaltimer and clock64 at entry and exit, and the SM. The script runs the layer as
bench/bench_decode_layer_gpu.py does: once alone, then a CUDA graph of 20 steps on distinct pools
(the benchmark's timing), and reads the last call's stamps. Per phase it prints the median and the
largest delta over the CTAs in cycles and ns (the SM clock from the stamps themselves), and the
kernel's span (first entry to last exit, globaltimer).

    git apply dev/cuda/layer_stamps.patch   # then build the library with -DFKDA_LAYER_STAMPS
    FLASHKDA_LIBRARY=.../libflashkda.so python3 dev/cuda/layer_stamps.py [--shapes 1,12 2,32]
                                                                        [--pool fp32|bf16]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench"))
from bench_decode_layer_gpu import fused_step, make_layer, make_pools  # noqa: E402

CTAS, WORDS = 2048, 16
GT_IN, GT_OUT, SM, CLK_IN, CLK_OUT, SIDE = 10, 11, 12, 13, 14, 15
NAMES = [
    "entry -> wait done",
    "-> side loads issued",
    "-> index load issued",
    "-> index in",
    "-> windows in, conv, sent",
    "-> token exchanged",
    "-> state in, dots summed",
    "-> state stores issued",
    "-> o^2 exchanged",
    "-> out stored",
]


def read_stamps(lib, ctas):
    buf = (ctypes.c_ulonglong * (CTAS * WORDS))()
    rc = lib.fkda_dev_layer_stamps(buf)
    if rc != 0:
        raise SystemExit(f"fkda_dev_layer_stamps: CUDA error {rc}")
    rows = [list(buf[i * WORDS : (i + 1) * WORDS]) for i in range(min(ctas, CTAS))]
    # the last call's CTAs only (an earlier, larger call's stamps stay in the rows after them)
    last = max(r[GT_IN] for r in rows)
    return [r for r in rows if r[GT_OUT] >= r[GT_IN] > 0 and r[GT_IN] > last - 100_000]


def report(title, rows):
    gt0 = min(r[GT_IN] for r in rows)
    gt1 = max(r[GT_OUT] for r in rows)
    # the SM clock: cycles over ns from entry to exit, per CTA, median
    rates = sorted((r[CLK_OUT] - r[CLK_IN]) / max(1, r[GT_OUT] - r[GT_IN]) for r in rows)
    ghz = rates[len(rates) // 2]
    print(
        f"{title}: {len(rows)} CTAs on {len(set(r[SM] for r in rows))} SMs, span {gt1 - gt0} ns "
        f"(first entry to last exit), SM clock {ghz:.2f} GHz"
    )
    starts = sorted(r[GT_IN] - gt0 for r in rows)
    print(f"  entry skew over CTAs: median {starts[len(starts) // 2]} ns, max {starts[-1]} ns")
    print(f"  {'phase':34s} {'median cyc':>10s} {'max cyc':>8s} {'median ns':>9s}")
    for i, name in enumerate(NAMES):
        d = sorted((r[i] - (r[CLK_IN] if i == 0 else r[i - 1])) for r in rows)
        med = d[len(d) // 2]
        print(f"  {name:34s} {med:10d} {d[-1]:8d} {med / ghz:9.0f}")
    tot = sorted(r[CLK_OUT] - r[CLK_IN] for r in rows)
    med = tot[len(tot) // 2]
    print(f"  {'entry -> exit':34s} {med:10d} {tot[-1]:8d} {med / ghz:9.0f}")
    side = [r for r in rows if r[SIDE] > r[CLK_IN]]  # kernels with side warps only
    if side:
        for name, i in (
            ("entry -> side values stored", SIDE),
            ("entry -> token exchanged (tile)", 5),
        ):
            d = sorted(r[i] - r[CLK_IN] for r in side)
            med = d[len(d) // 2]
            print(f"  {name:34s} {med:10d} {d[-1]:8d} {med / ghz:9.0f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", nargs="+", default=["1,12", "2,12", "1,32", "2,32"])
    ap.add_argument("--pool", choices=("fp32", "bf16"), default="fp32")
    args = ap.parse_args()
    import flash_kda  # noqa: PLC0415

    lib = ctypes.CDLL(os.environ["FLASHKDA_LIBRARY"])
    lib.fkda_dev_layer_stamps.argtypes = [ctypes.POINTER(ctypes.c_ulonglong)]
    pool_dtype = torch.float32 if args.pool == "fp32" else torch.bfloat16
    gen = torch.Generator(device="cuda")
    gen.manual_seed(0)
    print(f"device {torch.cuda.get_device_name()}, pool {args.pool}")
    for shape in args.shapes:
        B, H = (int(x) for x in shape.split(","))
        x = make_layer(B, H, gen)
        pools = make_pools(B, H, 20, gen, pool_dtype)
        idx = torch.randperm(B, device="cuda", generator=gen).to(torch.int32)
        out = torch.empty(B, H, 128, device="cuda", dtype=torch.bfloat16)
        for _ in range(3):
            fused_step(flash_kda, x, pools[0][0], pools[0][1], idx, out)
        torch.cuda.synchronize()
        rows = read_stamps(lib, CTAS)
        ctas = len(rows)
        report(f"B x H = {B} x {H}, one call alone", rows)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.stream(stream):
            fused_step(flash_kda, x, pools[1][0], pools[1][1], idx, out)  # warm-up off the graph
            with torch.cuda.graph(graph, stream=stream):
                for s in range(20):
                    fused_step(flash_kda, x, pools[s][0], pools[s][1], idx, out)
        torch.cuda.synchronize()
        for _ in range(5):
            graph.replay()
        torch.cuda.synchronize()
        rows = read_stamps(lib, ctas)
        report(f"B x H = {B} x {H}, the last of 20 calls in a graph", rows)
        del graph, pools
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()

"""flash-kda-bench: the main job. Runs one default KDA prefill, prints speed and accuracy.

On a machine where torch sees a CUDA GPU (and libflashkda has its CUDA backend) it runs the
FlashKDA-style problem on the GPU through flash_kda.fwd (FlashKDA's call): bf16 inputs, B=1,
T=8192, H=16, K=V=128, safe gate (lower_bound -5, A_log, dt_bias), L2 norm and beta sigmoid in
kernel, fp32 states in and out ([N, H, V, K]). Elsewhere it runs the same options on the CPU fast
path, NumPy float32 (or --dtype), T=2048, H=4. It times the fast path and compares the output and
final state with the C library's float64 token-by-token reference on the CPU (on a subset of
heads when the problem is large; the output says which), fed the same inputs rounded to --dtype.

    flash-kda-bench                          # GPU when there is one, else CPU
    flash-kda-bench --device cpu --T 4096 --H 8
    flash-kda-bench --device cuda --T 32768 --H 32 --ref-heads 1

A bad option or a problem the library refuses ends with one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

import flash_kda

LOWER_BOUND = -5.0


def _rel_err(x, ref) -> float:
    x = np.asarray(x, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    den = np.linalg.norm(ref)
    return float(np.linalg.norm(x - ref) / (den if den > 0 else 1.0))


def _cuda_available() -> bool:
    if not flash_kda.has_cuda():
        return False
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _inputs_numpy(rng, B, T, H, K, V):
    def randn(*shape):
        return rng.standard_normal(shape, dtype=np.float32)

    return dict(
        q=randn(B, T, H, K), k=randn(B, T, H, K), v=randn(B, T, H, V), g=randn(B, T, H, K),
        beta=randn(B, T, H),
        A_log=rng.uniform(-1.0, 1.0, H).astype(np.float32),
        dt_bias=(0.5 * randn(H, K)).astype(np.float32),
        h0=(0.1 * randn(B, H, V, K)).astype(np.float32),  # FlashKDA's [N, H, V, K]
    )


def _reference(x, heads: int, seqs: int, threads: int):
    """The float64 CPU reference on sequences [0, seqs) and heads [0, heads); x: NumPy f32."""
    sl = (slice(0, seqs), slice(None), slice(0, heads))
    args = {n: np.ascontiguousarray(x[n][sl]) for n in ("q", "k", "v", "g", "beta")}
    h0 = np.ascontiguousarray(x["h0"][:seqs, :heads])
    final = np.empty_like(h0)
    t0 = time.perf_counter()
    out = flash_kda.prefill(**args, A_log=np.ascontiguousarray(x["A_log"][:heads]),
                            dt_bias=np.ascontiguousarray(x["dt_bias"][:heads]), initial_state=h0,
                            final_state=final, scale=x["scale"], gate="lower_bound",
                            lower_bound=LOWER_BOUND, use_qk_l2norm=True, use_beta_sigmoid=True,
                            state_v_first=True, reference=True, num_threads=threads)
    return out, final, time.perf_counter() - t0


def _describe(args, dtype: str) -> str:
    return (f"B={args.B} T={args.T} H={args.H} K={args.K} V={args.V}, {dtype} inputs, safe gate "
            f"(lower_bound {LOWER_BOUND:g}, A_log, dt_bias), L2 norm and beta sigmoid in kernel, "
            "float32 states in and out [N, H, V, K]")


def _ref_subset(args) -> tuple[int, int, str]:
    heads = args.H if args.ref_heads <= 0 else min(args.ref_heads, args.H)
    seqs = args.B if args.ref_seqs <= 0 else min(args.ref_seqs, args.B)
    what = "all heads" if heads == args.H else f"heads 0..{heads - 1} of {args.H}"
    what += ", all sequences" if seqs == args.B else f", sequences 0..{seqs - 1} of {args.B}"
    return heads, seqs, what


def _numpy_dtype(name: str):
    """The NumPy dtype of --dtype; bf16 comes from ml_dtypes (None when it is not installed)."""
    if name == "bf16":
        try:
            import ml_dtypes
        except ImportError:
            return None
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype({"f16": np.float16, "f32": np.float32}[name])


def run_cpu(args) -> dict:
    dtype = _numpy_dtype(args.dtype)
    rng = np.random.default_rng(args.seed)
    x = _inputs_numpy(rng, args.B, args.T, args.H, args.K, args.V)
    # The token inputs in the kernel's dtype; the reference reads the same (rounded) values.
    t = {n: x[n].astype(dtype) for n in ("q", "k", "v", "g", "beta")}
    for n, a in t.items():
        x[n] = a.astype(np.float32)
    x["scale"] = args.K ** -0.5
    out = np.empty_like(t["v"])
    final = np.empty_like(x["h0"])
    threads = f"{args.threads} threads" if args.threads else f"all {os.cpu_count()} cores"
    print(f"device: cpu ({threads}), NumPy arrays")
    print(f"problem: {_describe(args, args.dtype)}")

    def call():
        # flash_kda.fwd's options, through prefill to pass the thread count
        flash_kda.prefill(t["q"], t["k"], t["v"], t["g"], t["beta"], out=out, A_log=x["A_log"],
                          dt_bias=x["dt_bias"], initial_state=x["h0"], final_state=final,
                          scale=x["scale"], gate="lower_bound", lower_bound=LOWER_BOUND,
                          use_qk_l2norm=True, use_beta_sigmoid=True, state_v_first=True,
                          num_threads=args.threads)

    for _ in range(args.warmup):
        call()
    times = []
    for _ in range(args.iters):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    ms = 1e3 * statistics.median(times)
    result = _report(args, ms, f"median of {args.iters}, wall clock")
    if not args.no_ref:
        heads, seqs, what = _ref_subset(args)
        ref_out, ref_final, seconds = _reference(x, heads, seqs, args.threads)
        tokens = seqs * args.T * heads / args.H
        print(f"reference:  {1e3 * seconds:10.1f} ms on {what} "
              f"({tokens / seconds:,.0f} tokens/s at H={args.H}; float64, token by token)")
        result.update(_errors(out[:seqs, :, :heads], final[:seqs, :heads], ref_out, ref_final,
                              what))
    return result


def run_cuda(args) -> dict:
    import torch

    device = torch.device("cuda", torch.cuda.current_device())
    torch_dtype = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}[args.dtype]
    rng = np.random.default_rng(args.seed)
    x = _inputs_numpy(rng, args.B, args.T, args.H, args.K, args.V)
    # Round the token inputs to the kernel's dtype once, so the reference sees the same values.
    for n in ("q", "k", "v", "g", "beta"):
        x[n] = torch.from_numpy(x[n]).to(torch_dtype).float().numpy()
    x["scale"] = args.K ** -0.5
    t = {n: torch.from_numpy(x[n]).to(device=device, dtype=torch_dtype)
         for n in ("q", "k", "v", "g", "beta")}
    A_log = torch.from_numpy(x["A_log"]).to(device)
    dt_bias = torch.from_numpy(x["dt_bias"]).to(device)
    h0 = torch.from_numpy(x["h0"]).to(device)
    out = torch.empty_like(t["v"])
    final = torch.empty_like(h0)
    print(f"device: {device} ({torch.cuda.get_device_name(device)}), torch {torch.__version__}")
    print(f"problem: {_describe(args, args.dtype)}")

    def call():
        flash_kda.fwd(t["q"], t["k"], t["v"], t["g"], t["beta"], x["scale"], out, A_log, dt_bias,
                      LOWER_BOUND, initial_state=h0, final_state=final)

    try:
        call()
    except flash_kda.UnsupportedError as e:
        raise _BenchError(f"the CUDA backend cannot run this problem: {e} (run "
                          "`flash-kda-bench --device cpu` for the CPU backend)") from None
    for _ in range(args.warmup):
        call()
    torch.cuda.synchronize()
    times = []
    for _ in range(args.iters):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    ms = statistics.median(times)
    result = _report(args, ms, f"median of {args.iters}, CUDA events")
    if not args.no_ref:
        heads, seqs, what = _ref_subset(args)
        ref_out, ref_final, seconds = _reference(x, heads, seqs, args.threads)
        print(f"reference:  {1e3 * seconds:10.1f} ms on the CPU for {what} "
              "(float64, token by token)")
        got_out = out[:seqs, :, :heads].float().cpu().numpy()
        got_final = final[:seqs, :heads].float().cpu().numpy()
        result.update(_errors(got_out, got_final, ref_out, ref_final, what))
    return result


def _report(args, ms: float, how: str) -> dict:
    tokens = args.B * args.T
    print(f"fast path:  {ms:10.3f} ms ({how})  {tokens / (ms / 1e3):,.0f} tokens/s  "
          f"({tokens * args.H / (ms / 1e3):,.0f} token-heads/s)")
    return {"ms": ms, "tokens_per_s": tokens / (ms / 1e3)}


def _errors(out, final, ref_out, ref_final, what: str) -> dict:
    e_out, e_final = _rel_err(out, ref_out), _rel_err(final, ref_final)
    print(f"error vs the float64 reference ({what}; relative Frobenius): "
          f"output {e_out:.2e}, final state {e_final:.2e}")
    return {"err_out": e_out, "err_final": e_final}


class _BenchError(Exception):
    """A problem the bench cannot run: main prints its message on one line and returns 2."""


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        """One line on stderr and exit status 2 (argparse would print the usage first)."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="flash-kda-bench",
        description="Time one KDA prefill (flash_kda.fwd) and check it against the float64 "
                    "reference. GPU defaults: B=1 T=8192 H=16 K=V=128 bf16; CPU defaults: "
                    "B=1 T=2048 H=4 K=V=128 float32.")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto: CUDA when torch sees a GPU and the library has CUDA, else CPU")
    positive, non_negative = _int_at_least(1), _int_at_least(0)
    p.add_argument("--B", type=positive, default=1, help="batch rows (sequences)")
    p.add_argument("--T", type=positive, default=None, help="tokens per sequence")
    p.add_argument("--H", type=positive, default=None, help="heads")
    # The library says which head dims it takes (1 to 256 today): its message ends the run.
    p.add_argument("--K", type=positive, default=128, help="key head dim")
    p.add_argument("--V", type=positive, default=128, help="value head dim")
    p.add_argument("--dtype", choices=["bf16", "f16", "f32"], default=None,
                   help="input dtype (default: bf16 on the GPU, f32 on the CPU; bf16 on the CPU "
                        "needs the ml_dtypes package)")
    p.add_argument("--iters", type=positive, default=None, help="timed runs (median reported)")
    p.add_argument("--warmup", type=non_negative, default=None, help="untimed runs first")
    p.add_argument("--threads", type=non_negative, default=0,
                   help="CPU threads of the CPU run and of the float64 reference (0: all cores)")
    p.add_argument("--ref-heads", type=non_negative, default=None,
                   help="heads checked against the float64 reference (0: all)")
    p.add_argument("--ref-seqs", type=non_negative, default=1,
                   help="sequences checked against the reference (0: all)")
    p.add_argument("--no-ref", action="store_true", help="skip the reference check")
    p.add_argument("--seed", type=non_negative, default=0)
    return p


def main(argv=None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, or the parser has printed its one-line error
        return e.code if isinstance(e.code, int) else 2
    try:
        return _main(args)
    except (_BenchError, flash_kda.FlashKDAError) as e:
        print(f"flash-kda-bench: error: {e}", file=sys.stderr)
        return 2


def _main(args) -> int:
    device = args.device
    if device == "auto":
        device = "cuda" if _cuda_available() else "cpu"
    elif device == "cuda" and not _cuda_available():
        raise _BenchError("--device cuda needs torch with a CUDA GPU and a libflashkda built "
                          "with CUDA")
    gpu = device == "cuda"
    if args.dtype is None:
        args.dtype = "bf16" if gpu else "f32"
    if not gpu and _numpy_dtype(args.dtype) is None:
        raise _BenchError("--dtype bf16 on the CPU needs ml_dtypes (NumPy has no bfloat16 of its "
                          "own): pip install ml_dtypes, or use --dtype f32 or f16")
    args.T = args.T if args.T is not None else (8192 if gpu else 2048)
    args.H = args.H if args.H is not None else (16 if gpu else 4)
    args.iters = args.iters if args.iters is not None else (20 if gpu else 5)
    args.warmup = args.warmup if args.warmup is not None else (3 if gpu else 1)
    if args.ref_heads is None:
        args.ref_heads = 2 if gpu else 0
    print(f"flash-kda-bench: libflashkda {flash_kda.library_version} "
          f"(CUDA backend: {'yes' if flash_kda.has_cuda() else 'no'}) at {flash_kda.library_path}")
    (run_cuda if gpu else run_cpu)(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

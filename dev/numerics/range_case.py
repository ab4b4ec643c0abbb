"""The spread over seeds of one out-of-domain test case's error, by the emulation.

The case is test_prefill_cuda's "range: fp32 no norm, |k| ~ 300": fp32 q, k, v without the L2
norm, |q|, |k| ~ 300, beta drawn in [0, 1.5e-5] without the sigmoid. Every chunk lies outside the
fp16 family's domain, so it takes the bf16 record and step (CUDA_PLAN). It is set beside a
normalised case of the same size (bf16 inputs, the norm and the sigmoid in the kernel).

Run: python dev/numerics/range_case.py [--seeds N] [--T 200] [--H 2]
Prints the median, the 99th percentile and the largest output and state errors over N seeds.
"""

import argparse

import emulate_prefill as em
import numpy as np


def test_inputs(seed, T, H, K=128, V=128, out_of_domain=True):
    """Inputs drawn as tests/cuda/test_prefill_cuda.c's run_case draws them."""
    rng = np.random.default_rng(seed)
    if out_of_domain:  # fp32 q, k of norm ~300, beta in [0, 1.5e-5], no norm, no sigmoid
        sd, qkv = 300.0 / np.sqrt(K), "fp32"
        beta = em.rnd(rng.uniform(0.0, 1.5e-5, (1, T, H)), "bf16")
    else:  # bf16 q, k, v of sd 1, beta logits N(0, 1), norm and sigmoid in the kernel
        sd, qkv = 1.0, "bf16"
        beta = em.rnd(rng.standard_normal((1, T, H)), "bf16")
    return dict(
        q=em.rnd(sd * rng.standard_normal((1, T, H, K)), qkv),
        k=em.rnd(sd * rng.standard_normal((1, T, H, K)), qkv),
        v=em.rnd(rng.standard_normal((1, T, H, V)), qkv),
        g=em.rnd(rng.standard_normal((1, T, H, K)), "bf16"),
        beta=beta,
        A_log=em.rnd(rng.uniform(0.0, 1.0, H), "fp32"),
        dt_bias=em.rnd(rng.uniform(0.0, 1.0, (H, K)), "fp32"),
        h0=em.rnd(0.5 * rng.standard_normal((1, H, K, V)), "fp32"),
        dtype=qkv,
        gate="lower_bound",
        lower_bound=-5.0,
        l2norm=not out_of_domain,
        beta_sigmoid=not out_of_domain,
    )


def spread(seeds, T, H, out_of_domain):
    errs = []
    for s in range(seeds):
        x = test_inputs(s, T, H, out_of_domain=out_of_domain)
        errs.append(em.errors(em.cuda_prefill, x, em.reference(x)))
    e = np.array(errs)
    return {name: (np.median(e[:, i]), np.percentile(e[:, i], 99), e[:, i].max())
            for i, name in enumerate(("out", "state"))}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=100)
    ap.add_argument("--T", type=int, default=200)
    ap.add_argument("--H", type=int, default=2)
    args = ap.parse_args()
    cases = (("no norm, |k| ~ 300 (bf16 records)", True), ("bf16, norm + sigmoid", False))
    for label, ood in cases:
        r = spread(args.seeds, args.T, args.H, ood)
        print(f"{label}, T={args.T} H={args.H}, {args.seeds} seeds: " + "; ".join(
            f"{n} median {m:.2e} p99 {p:.2e} max {mx:.2e}" for n, (m, p, mx) in r.items()))


if __name__ == "__main__":
    main()

"""Seeded random-argument fuzzing of the Python API on NumPy arrays (CPU backend).

Each case builds a valid random call of one entry point (prefill, decode, decode_layer, chunk_kda,
fused_recurrent_kda, fused_recurrent_kda_fwd, fwd): small random sizes, float32 / float16 /
bfloat16, equal lengths or varlen with empty sequences, and random options (gates, lower bounds,
norm, sigmoid, negative eigenvalues, state layouts and dtypes, pools with negative slots,
checkpoints, intermediate states, ...). Then, most of the time, it applies one or two mutations
(ARRAY_MUTATIONS, OPTION_MUTATIONS): a wrong ndim, size or dtype, a strided, permuted,
transposed, broadcast, negative-stride, misaligned, byte-swapped or read-only view, a list,
scalar, 0-d array or None for an array, an output aliasing an input or itself, NaN / inf / huge /
mistyped numbers, out-of-range or negative indices, bad cu_seqlens, an argument that does not go
with the others, unknown keywords...

Every call must then keep the project's promise:
  - either it succeeds, and every result matches a float64 NumPy model of the documented
    semantics (kda_numpy's step, written out again here for the pools, checkpoints, intermediate
    states and the decode layer) within a loose bar per dtype, every element the call must not
    write is bitwise unchanged, and no input (nor any byte around a strided output) is written;
  - or it raises a flash_kda.FlashKDAError that is also a ValueError or TypeError, whose message
    starts with the name of an argument, and every array of the call is bitwise unchanged.
Each mutation says what it expects: "raise" (the call is invalid whatever else holds), "ok" (it
keeps the call valid: it must succeed) or "any" (either; a success is still checked against the
model). Never any other exception, and never a crash.

The same cases run again with torch CPU tensors where torch is installed (skipped where it is
not): the same values, dtypes and layouts in torch's memory, plus what only torch has (see "the
same cases with torch CPU tensors" below).

FKDA_FUZZ_CASES (default 560, about a second) sets the number of cases, FKDA_FUZZ_TORCH_CASES
(default 400, under a second once torch is imported) that of torch cases, FKDA_FUZZ_SEED
(default 0) the seed of both; a failure prints its case number, and FKDA_FUZZ_ONLY=<case> reruns
that case alone in both variants (FKDA_FUZZ_TRACE=1 prints each case before it runs, for a
crash). At the end: what the fuzzer found, as plain regression tests, and a bug of the C library
kept as an expected failure.
"""

import collections
import contextlib
import inspect
import math
import os
import re
import sys
import warnings
from fractions import Fraction

import numpy as np
import pytest

import flash_kda
from helpers import bfloat16_dtype
from kda_numpy import prepare, read_slot, sequences, sigmoid, step

N_CASES = int(os.environ.get("FKDA_FUZZ_CASES", "560"))
BASE_SEED = int(os.environ.get("FKDA_FUZZ_SEED", "0"))
ONLY = os.environ.get("FKDA_FUZZ_ONLY")
TRACE = os.environ.get("FKDA_FUZZ_TRACE", "0") not in ("", "0")
CHUNKS = 8

F32, F16 = np.dtype(np.float32), np.dtype(np.float16)
BF16 = bfloat16_dtype()
FLOATS = [F32, F16] + ([BF16] if BF16 is not None else [])
STATES = [F32] + ([BF16] if BF16 is not None else [])
I32, I64 = np.dtype(np.int32), np.dtype(np.int64)
BOOL, U8 = np.dtype(np.bool_), np.dtype(np.uint8)
# NumPy dtypes the package has no code for (DTypeError before the C library sees them).
FOREIGN = [np.dtype(np.float64), np.dtype(np.int8), np.dtype(np.int16), np.dtype(np.uint16),
           np.dtype(np.uint32), np.dtype(np.uint64), np.dtype(np.complex64), np.dtype(object),
           np.dtype("U3"), np.dtype("datetime64[s]")]
HEAD_DIMS = [1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 32]
# Relative error allowed per unit (token or state) for a result stored in this dtype: a bar for
# gross bugs (a wrong slot, a missed option, garbage), far above the rounding of a correct result.
TOL = {"float32": 2e-3, "float16": 8e-3, "bfloat16": 4e-2}
# The smallest normal number of each dtype: below it a result rounds with an absolute error.
TINY = {"float32": 2.0 ** -126, "float16": 2.0 ** -14, "bfloat16": 2.0 ** -126}

# (entry point, outcome) counts over the cases run in this process: "ok" (checked results),
# "raised" (a proper error, nothing written).
STATS = collections.Counter()

ENTRIES = ["prefill", "decode", "decode_layer", "chunk_kda", "fused_recurrent_kda",
           "fused_recurrent_kda_fwd", "fwd"]


class Rand:
    """The random choices of one case."""

    def __init__(self, seed):
        self.g = np.random.default_rng(seed)

    def pick(self, options):
        return options[int(self.g.integers(len(options)))]

    def coin(self, p=0.5):
        return bool(self.g.random() < p)

    def int(self, lo, hi):
        return int(self.g.integers(lo, hi + 1))

    def normal(self, shape, s=1.0):
        return self.g.standard_normal(shape) * s

    def uniform(self, lo, hi, shape=None):
        return self.g.uniform(lo, hi, shape)


def f64(x):
    return None if x is None else np.asarray(x).astype(np.float64)


def poison(shape, dtype):
    return np.full(shape, np.nan, dtype)


def truthy(x):
    try:
        return bool(x)
    except (TypeError, ValueError):
        return False


# ---- valid random calls --------------------------------------------------------------------------


def heads(r, dims=HEAD_DIMS):
    H = r.int(1, 3)

    def dim():
        return r.pick([64, 128]) if r.coin(0.03) else r.pick(dims)

    return H, H * r.pick([1, 1, 2, 3]), dim(), dim()


def batch(r, max_len, decode=False):
    """(B, T, cu_seqlens or None, lengths of the N sequences)."""
    if r.coin(0.4):
        lengths = [0 if r.coin(0.25) else r.int(0, max_len) for _ in range(r.int(1, 5))]
        cu = np.concatenate([[0], np.cumsum(lengths)]).astype(r.pick([I32, I64]))
        return 1, int(cu[-1]), cu, lengths
    B = 0 if r.coin(0.04) else r.int(1, 3)
    T = r.int(1, max_len) if decode and not r.coin(0.1) else r.int(0, max_len)
    return B, T, None, [T] * B


def token_inputs(r, B, T, H, HV, K, V, io, gate, l2, sig):
    """q, k, v, g, beta whose recurrence stays bounded: without the L2 norm, keys of norm <= 1;
    beta in (0, 1.2) without the sigmoid; a log decay <= 0 for the gate "none"."""
    def unit(shape):
        x = r.normal(shape)
        x /= np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-30)
        return x * r.uniform(0.2, 1.0, shape[:-1] + (1,))

    if l2:
        q = r.normal((B, T, H, K), 10.0 ** r.uniform(-1, 1))
        k = r.normal((B, T, H, K), 10.0 ** r.uniform(-1, 1))
    else:
        q, k = unit((B, T, H, K)), unit((B, T, H, K))
    v = r.normal((B, T, HV, V))
    if gate == "none":
        g = -r.uniform(0.0, 3.0, (B, T, HV, K))
        if r.coin(0.1):
            g[r.uniform(0, 1, g.shape) < 0.1] = -1e4  # hard resets
    else:
        g = r.normal((B, T, HV, K), 1.5)
    beta = r.normal((B, T, HV), 2.0) if sig else r.uniform(0.0, 1.2, (B, T, HV))
    if sig and r.coin(0.1):
        beta *= 15.0

    def other():
        return io if r.coin(0.6) else r.pick(FLOATS)

    return dict(q=q.astype(io), k=k.astype(io), v=v.astype(io), g=g.astype(other()),
                beta=beta.astype(other()))


def gate_params(r, gate, HV, K):
    """(A_log, dt_bias, lower_bound) for a gate; A_log is required by softplus only."""
    A_log = dt_bias = None
    if gate == "softplus" or r.coin(0.6 if gate == "lower_bound" else 0.2):
        A_log = r.uniform(-2.0, 1.0, HV).astype(r.pick(FLOATS))
    if r.coin(0.6):
        dt_bias = r.normal((HV, K), 0.5).astype(r.pick(FLOATS))
        if r.coin():
            dt_bias = dt_bias.reshape(-1)
    lb = None
    if gate == "lower_bound":
        lb = r.pick([-5.0, -1.0, -0.5, -float(r.uniform(0.01, 5.0)), -100.0,
                     -1e30 if r.coin(0.3) else -3.0])
    return A_log, dt_bias, lb


def scale_choice(r):
    if r.coin():
        return None
    return float(r.pick([-1, 1]) * r.uniform(0.05, 2.0))


def state_shape(rows, HV, K, V, vf):
    return (rows, HV, V, K) if vf else (rows, HV, K, V)


def states(r, shape, dtype):
    return r.normal(shape, 0.5).astype(dtype)


def distinct_slots(r, pool, count, p_skip=0.2):
    """count distinct slots from `pool` (a list), some replaced by negative ones."""
    slots = [int(s) for s in r.g.permutation(pool)[:count]]
    return [r.pick([-1, -1, -7, -2**31]) if r.coin(p_skip) else s for s in slots]


def options(r, gate=None):
    gate = gate or r.pick(["none", "lower_bound", "softplus"])
    sig = r.coin()
    return dict(gate=gate, l2=r.coin(), sig=sig, neg=sig and r.coin(0.3), vf=r.coin())


def token_call(r, max_len, decode=False):
    """The shapes, options and token keywords that prefill and decode share."""
    H, HV, K, V = heads(r)
    B, T, cu, lengths = batch(r, max_len, decode=decode)
    io, o = r.pick(FLOATS), options(r)
    kw = token_inputs(r, B, T, H, HV, K, V, io, o["gate"], o["l2"], o["sig"])
    A_log, dt_bias, lb = gate_params(r, o["gate"], HV, K)
    kw.update(A_log=A_log, dt_bias=dt_bias, cu_seqlens=cu, gate=o["gate"], lower_bound=lb,
              scale=scale_choice(r), use_qk_l2norm=o["l2"], use_beta_sigmoid=o["sig"],
              allow_neg_eigval=o["neg"], state_v_first=o["vf"])
    return (H, HV, K, V), (B, T, cu, lengths), io, o, kw


def gen_prefill(r):
    (H, HV, K, V), (B, T, cu, lengths), io, o, kw = token_call(r, 40)
    N = len(lengths)
    if r.coin(0.7):
        kw["out"] = poison((B, T, HV, V), io)

    def shape(rows):
        return state_shape(rows, HV, K, V, o["vf"])

    writes, P = set(), 0
    if r.coin(0.35):
        P = N + r.int(0, 4)
        kw["state_pool"] = states(r, shape(P), r.pick(STATES))
        if r.coin(0.6):  # reads may share slots
            kw["initial_state_indices"] = np.array(
                [r.int(-1, P - 1) for _ in range(N)], r.pick([I32, I64]))
        if r.coin(0.6):
            final = distinct_slots(r, list(range(P)), N)
            kw["final_state_indices"] = np.array(final, r.pick([I32, I64]))
            writes = {s for s in final if s >= 0}
        else:
            writes = set(range(N))
    else:
        if r.coin():
            kw["initial_state"] = states(r, shape(N), r.pick(STATES))
        if r.coin():
            if "initial_state" in kw and r.coin(0.3):
                kw["final_state"] = kw["initial_state"]  # an in-place update
            else:
                kw["final_state"] = poison(shape(N), r.pick(STATES))
    if ("initial_state" in kw or "state_pool" in kw) and r.coin(0.3):
        kw["has_initial_state"] = (r.uniform(0, 1, N) < 0.6).astype(
            r.pick([BOOL, U8, I32, I64]))
    if r.coin(0.3):
        C = r.int(1, 3)
        kw["checkpoint_offsets"] = np.array(
            [[r.pick([-1, 0, n, n + 1, r.int(0, n), r.int(0, n)]) for _ in range(C)]
             for n in lengths], r.pick([I32, I64])).reshape(N, C)
        if "state_pool" in kw and r.coin():
            free = [s for s in range(P) if s not in writes]
            idx = distinct_slots(r, free, len(free)) + [-1] * (N * C)
            kw["checkpoint_indices"] = np.array(idx[:N * C], r.pick([I32, I64])).reshape(N, C)
        else:
            ck = poison((N, C) + shape(1)[1:], r.pick(STATES))
            kw["checkpoint_states"] = ck if r.coin() else ck.reshape((N * C,) + ck.shape[2:])
    if r.coin(0.3):
        chunk = r.pick([None, 64, r.int(1, 20), r.int(1, 20)])
        c = chunk or 64
        dt = r.pick(FLOATS)
        if cu is None:
            inter = poison((B, -(-T // c)) + shape(1)[1:], dt)
        else:
            inter = poison((1, sum(-(-n // c) for n in lengths)) + shape(1)[1:], dt)
        kw["intermediate_states"] = inter if r.coin() else inter.reshape((-1,) + inter.shape[2:])
        kw["intermediate_chunk_size"] = chunk
    if r.coin(0.2):
        kw["reference"] = True
    kw["num_threads"] = r.pick([0, 0, 1, 2, 3])
    return kw


def decode_slots(r, N, T, cu, lengths, kw):
    """A pool and its state_indices (none, [N] or [N, T_max]) and accepted counts in kw."""
    mode = r.pick(["none", "1d", "2d"])
    if mode == "none":
        return N + r.int(0, 2)
    if mode == "1d":
        P = N + r.int(0, 3)
        kw["state_indices"] = np.array(distinct_slots(r, list(range(P)), N),
                                       r.pick([I32, I64]))
        return P
    t_max = max(lengths + [1] + ([T] if cu is None else [])) + r.int(0, 2)
    P = N * t_max + r.int(0, 2)
    slots = distinct_slots(r, list(range(P)), N * t_max)
    kw["state_indices"] = np.array(slots, r.pick([I32, I64])).reshape(N, t_max)
    if r.coin():
        kw["num_accepted_tokens"] = np.array([r.int(1, t_max) for _ in range(N)],
                                             r.pick([I32, I64]))
    return P


def gen_decode(r):
    (H, HV, K, V), (B, T, cu, lengths), io, o, kw = token_call(r, 4, decode=True)
    N = len(lengths)
    P = decode_slots(r, N, T, cu, lengths, kw)
    kw["state_pool"] = states(r, state_shape(P, HV, K, V, o["vf"]), r.pick(STATES))
    if r.coin(0.7):
        kw["out"] = poison((B, T, HV, V), io)
    if r.coin(0.2):
        kw["reference"] = True
    kw["num_threads"] = r.pick([0, 0, 1, 2])
    return kw


def gen_decode_layer(r):
    H = r.int(1, 2)
    HV, K, V = H * r.pick([1, 2]), r.pick([1, 2, 3, 4, 8, 16]), r.pick([1, 2, 3, 4, 8, 16])
    dim = 2 * H * K + HV * V
    B = 0 if r.coin(0.04) else r.int(1, 4)
    has_t = r.coin()
    T = r.int(1, 3) if has_t else 1
    W = r.int(2, 5)
    io = r.pick(FLOATS)
    mode = r.pick(["none", "1d", "2d"])
    kw = {}
    sliding = mode == "2d" and r.coin()
    L = (W - 2 + T if sliding else W - 1) + r.int(0, 2)
    if mode == "none":
        P, PC = B + r.int(0, 2), B + r.int(0, 2)
    elif mode == "1d":
        P, PC = B + r.int(0, 2), B + r.int(0, 2)
        kw["state_indices"] = np.array(distinct_slots(r, list(range(min(P, PC))), B),
                                       r.pick([I32, I64]))
    else:
        t_max = T + r.int(0, 2)
        P, PC = B * t_max + r.int(0, 2), B + r.int(0, 2)
        first = [int(s) for s in r.g.permutation(min(P, PC))[:B]]
        rest = [int(s) for s in r.g.permutation([s for s in range(P) if s not in first])]
        idx = np.full((B, t_max), -1, np.int64)
        for n in range(B):
            idx[n, 0] = first[n]
            for c in range(1, t_max):
                if rest and not r.coin(0.2):
                    idx[n, c] = rest.pop()
            if r.coin(0.15):
                idx[n] = -1  # a skipped sequence
        kw["state_indices"] = idx.astype(r.pick([I32, I64]))
        if sliding:
            kw["num_accepted_tokens"] = np.array(
                [r.int(1, min(t_max, L - W + 2)) for _ in range(B)], r.pick([I32, I64]))
    tok = (B, T) if has_t else (B,)
    vf = r.coin()
    lb = None if r.coin(0.4) else r.pick([-5.0, -1.0, -float(r.uniform(0.01, 8.0))])
    kw.update(
        mixed_qkv=r.normal(tok + (dim,)).astype(io),
        conv_weight=r.normal((dim, W), 0.5).astype(r.pick(FLOATS)),
        conv_state=r.normal((PC, L, dim)).astype(r.pick(FLOATS)),
        g=r.normal(tok + (HV, K), 1.5).astype(r.pick(FLOATS)),
        beta=r.normal(tok + (HV,), 2.0).astype(r.pick(FLOATS)),
        state_pool=states(r, state_shape(P, HV, K, V, vf), r.pick(STATES)),
        output_gate=r.normal(tok + (HV, V), 1.5).astype(r.pick(FLOATS)),
        norm_weight=r.uniform(0.5, 1.5, V).astype(r.pick(FLOATS)),
        lower_bound=lb, norm_eps=r.pick([1e-5, 1e-6, 1e-3]), scale=scale_choice(r),
        state_v_first=vf)
    if r.coin():
        kw["g"] = kw["g"].reshape(tok + (HV * K,))
    if r.coin(0.6):
        kw["conv_bias"] = r.normal(dim, 0.2).astype(r.pick(FLOATS))
    if lb is None or r.coin(0.6):
        kw["A_log"] = r.uniform(-2.0, 1.0, HV).astype(r.pick(FLOATS))
    if r.coin(0.6):
        dt = r.normal((HV, K), 0.5).astype(r.pick(FLOATS))
        kw["dt_bias"] = dt if r.coin() else dt.reshape(-1)
    if r.coin(0.6):
        kw["out"] = poison(tok + (HV, V), io)
    if r.coin(0.2):
        kw["reference"] = True
    kw["num_threads"] = r.pick([0, 0, 1, 2])
    return kw


def fla_gate(r):
    """use_gate_in_kernel and lower_bound: the gate "none", lower_bound or softplus."""
    use_gate = r.coin()
    lb = None
    if r.coin(0.6 if use_gate else 0.2):
        lb = r.pick([-5.0, -1.0, -float(r.uniform(0.01, 5.0)), -50.0])
    gate = "none" if not use_gate else ("lower_bound" if lb is not None else "softplus")
    return use_gate, lb, gate


def fla_tokens(r, max_len, decode=False):
    H, HV, K, V = heads(r)
    B, T, cu, lengths = batch(r, max_len, decode)
    io = r.pick(FLOATS)
    use_gate, lb, gate = fla_gate(r)
    o = options(r, gate)
    kw = token_inputs(r, B, T, H, HV, K, V, io, gate, o["l2"], o["sig"])
    A_log, dt_bias, _ = gate_params(r, gate, HV, K)
    kw.update(A_log=A_log, dt_bias=dt_bias, scale=scale_choice(r), cu_seqlens=cu,
              use_qk_l2norm_in_kernel=o["l2"], use_gate_in_kernel=use_gate,
              use_beta_sigmoid_in_kernel=o["sig"], allow_neg_eigval=o["neg"], lower_bound=lb,
              state_v_first=o["vf"])
    dims = dict(B=B, T=T, H=H, HV=HV, K=K, V=V, N=len(lengths), lengths=lengths, io=io)
    return kw, dims


def gen_chunk_kda(r):
    kw, d = fla_tokens(r, 40)
    lb, vf = kw["lower_bound"], kw["state_v_first"]
    if kw["use_gate_in_kernel"] and lb is not None and -5 <= lb < 0 and r.coin():
        kw["safe_gate"] = True
    elif not kw["use_gate_in_kernel"] and r.coin(0.1):
        kw["safe_gate"] = True  # without the gate in the kernel: no lower bound needed
    if r.coin():
        kw["initial_state"] = states(r, state_shape(d["N"], d["HV"], d["K"], d["V"], vf), F32)
    kw["output_final_state"] = r.coin()
    if r.coin(0.3):
        kw["return_intermediate_states"] = True
        if kw["cu_seqlens"] is not None and r.coin():
            kw["cu_seqlens_cpu"] = kw["cu_seqlens"].astype(r.pick([I32, I64]))
    if r.coin(0.3):
        kw["chunk_size"] = r.pick([32, 64])
    if r.coin(0.2):
        kw["disable_recompute"] = r.coin()
    if kw["cu_seqlens"] is not None and r.coin(0.2):
        kw.update(use_graph=True, max_num_seqs=d["N"])
    if vf and r.coin(0.2):
        del kw["state_v_first"]
        kw["transpose_state_layout"] = True
    return kw


def gen_fused_recurrent_kda(r):
    kw, d = fla_tokens(r, 20)
    if r.coin():
        kw["initial_state"] = states(
            r, state_shape(d["N"], d["HV"], d["K"], d["V"], kw["state_v_first"]), F32)
    kw["output_final_state"] = r.coin()
    return kw


def gen_fused_recurrent_kda_fwd(r):
    if r.coin(0.3):
        kw = gen_fused_recurrent_kda(r)
        kw["inplace_final_state"] = False
        B, T, HV, V = kw["q"].shape[0], kw["q"].shape[1], kw["v"].shape[2], kw["v"].shape[3]
    else:
        kw, d = fla_tokens(r, 4, decode=True)
        B, T, HV, V = d["B"], d["T"], d["HV"], d["V"]
        sub = {}
        P = decode_slots(r, d["N"], T, kw["cu_seqlens"], d["lengths"], sub)
        kw["initial_state"] = states(r, state_shape(P, HV, d["K"], V, kw["state_v_first"]),
                                     r.pick(STATES))
        if "state_indices" in sub:
            kw["ssm_state_indices"] = sub["state_indices"]
        if "num_accepted_tokens" in sub:
            kw["num_accepted_tokens"] = sub["num_accepted_tokens"]
        if r.coin(0.8):
            kw["inplace_final_state"] = True
        kw["output_final_state"] = r.coin()
    if r.coin():
        kw["out"] = poison((B, T, HV, V), kw["v"].dtype)
    return kw


def gen_fwd(r):
    H, HV, K, V = heads(r)
    B, T, cu, lengths = batch(r, 40)
    N = len(lengths)
    io = r.pick(FLOATS)
    kw = token_inputs(r, B, T, H, HV, K, V, io, "lower_bound", True, True)
    A_log, dt_bias, _ = gate_params(r, "lower_bound", HV, K)
    kw.update(scale=scale_choice(r), out=poison((B, T, HV, V), io), A_log=A_log, dt_bias=dt_bias,
              lower_bound=r.pick([-5.0, -1.0, -float(r.uniform(0.01, 5.0))]), cu_seqlens=cu)
    shape = state_shape(N, HV, K, V, True)
    if r.coin():
        kw["initial_state"] = states(r, shape, r.pick(STATES))
    if r.coin():
        if "initial_state" in kw and r.coin(0.3):
            kw["final_state"] = kw["initial_state"]
        else:
            kw["final_state"] = poison(shape, r.pick(STATES))
    if r.coin(0.3):
        dt = r.pick([I32, I64])
        if r.coin():
            kw["checkpoint_offsets"] = np.array([r.int(-1, n + 1) for n in lengths], dt)
            kw["checkpoint_state"] = poison(shape, r.pick(STATES))
        else:
            C = r.int(1, 3)
            kw["checkpoint_offsets"] = np.array(
                [[r.int(-1, n + 1) for _ in range(C)] for n in lengths], dt).reshape(N, C)
            kw["checkpoint_state"] = poison((N, C) + shape[1:], r.pick(STATES))
    return kw


GENERATORS = {"prefill": gen_prefill, "decode": gen_decode, "decode_layer": gen_decode_layer,
              "chunk_kda": gen_chunk_kda, "fused_recurrent_kda": gen_fused_recurrent_kda,
              "fused_recurrent_kda_fwd": gen_fused_recurrent_kda_fwd, "fwd": gen_fwd}


# ---- what the arguments are --------------------------------------------------------------------

INDEX_NAMES = ("cu_seqlens", "state_indices", "num_accepted_tokens", "initial_state_indices",
               "final_state_indices", "checkpoint_offsets", "checkpoint_indices",
               "ssm_state_indices")
FLOAT_NAMES = ("g", "beta", "A_log", "dt_bias", "conv_weight", "conv_bias", "output_gate",
               "norm_weight")


def inplace_fwd(kw):
    return truthy(kw.get("inplace_final_state", True))


def outputs(entry, kw):
    """The arguments a call writes in place."""
    return {
        "prefill": ("out", "final_state", "state_pool", "checkpoint_states",
                    "intermediate_states"),
        "decode": ("out", "state_pool"),
        "decode_layer": ("out", "conv_state", "state_pool"),
        "chunk_kda": (),
        "fused_recurrent_kda": (),
        "fused_recurrent_kda_fwd": ("out", "initial_state") if inplace_fwd(kw) else ("out",),
        "fwd": ("out", "final_state", "checkpoint_state"),
    }[entry]


def role(entry, kw, name):
    """io: the input dtype (q, k, v, mixed_qkv); io_out: an output of that dtype; float: any
    float dtype; state(_out): float32 or bfloat16; state_f32: float32 only; state_copy: copied
    to float32 by the Python layer; inter_out: float32, bfloat16 or float16; index: int32 or
    int64; flags: bool, uint8, int32 or int64; cpu_index: read by NumPy only."""
    if name in ("q", "k", "v", "mixed_qkv"):
        return "io"
    if name == "out":
        return "io_out"
    if name in FLOAT_NAMES:
        return "float"
    if name == "conv_state":
        return "float_out"
    if name == "initial_state":
        if entry == "chunk_kda":
            return "state_f32"
        if entry == "fused_recurrent_kda" or (entry == "fused_recurrent_kda_fwd"
                                              and not inplace_fwd(kw)):
            return "state_copy"
        return "state_out" if entry == "fused_recurrent_kda_fwd" else "state"
    if name in ("final_state", "state_pool", "checkpoint_states", "checkpoint_state"):
        return "state_out"
    if name == "intermediate_states":
        return "inter_out"
    if name in INDEX_NAMES:
        return "index"
    if name == "has_initial_state":
        return "flags"
    if name == "cu_seqlens_cpu":
        return "cpu_index"
    return None


ALLOWED = {"float": FLOATS, "float_out": FLOATS, "state": STATES, "state_out": STATES,
           "state_copy": FLOATS,
           "state_f32": [F32], "inter_out": FLOATS, "index": [I32, I64],
           "flags": [BOOL, U8, I32, I64]}


def live(entry, kw, name):
    """Whether the call reads the argument (fla drops A_log and dt_bias without the gate in the
    kernel, the C library does not look at them with the gate "none")."""
    if name in ("A_log", "dt_bias"):
        if entry in ("prefill", "decode"):
            return kw.get("gate", "none") not in (None, "none")
        if entry in ("chunk_kda", "fused_recurrent_kda", "fused_recurrent_kda_fwd"):
            return truthy(kw.get("use_gate_in_kernel"))
        return True
    if name == "cu_seqlens_cpu":
        return truthy(kw.get("return_intermediate_states")) and kw.get("cu_seqlens") is not None
    return True


def described(entry, kw, name):
    """Whether the Python layer describes the argument to the C library (so a non-array or a
    NumPy dtype without a C code raises even where the C library would not read it)."""
    if entry in ("prefill", "decode", "decode_layer", "fwd"):
        return True
    return live(entry, kw, name) and role(entry, kw, name) != "cpu_index"


def c_visible(entry, kw, name):
    """Whether the C library sees (and checks for overlap) this array of the call."""
    if not live(entry, kw, name) or name == "cu_seqlens_cpu":
        return False
    return role(entry, kw, name) != "state_copy"


def required(entry, kw, name):
    base = {"prefill": "q k v g beta", "decode": "q k v g beta state_pool",
            "decode_layer": "mixed_qkv conv_weight conv_state g beta state_pool output_gate "
                            "norm_weight",
            "chunk_kda": "q k v g beta", "fused_recurrent_kda": "q k v g beta",
            "fused_recurrent_kda_fwd": "q k v g beta", "fwd": "q k v g beta out"}[entry]
    if entry == "fused_recurrent_kda_fwd" and inplace_fwd(kw) and name == "initial_state":
        return True
    return name in base.split()


# ---- the model: what a valid call must compute ---------------------------------------------------


def to_kv(s, vf):
    s = f64(s)
    return s.swapaxes(-1, -2).copy() if vf else s.copy()


def from_kv(S, vf):
    return S.swapaxes(-1, -2).copy() if vf else S.copy()


def gate_options(gate, A_log, dt_bias, lower_bound, l2, sig, neg, scale):
    """kda_numpy.prepare's options for a call's gate and flags."""
    gated = gate != "none"
    return dict(gate=gate, A_log=A_log if gated else None, dt_bias=dt_bias if gated else None,
                lower_bound=float(lower_bound) if gate == "lower_bound" else None,
                l2norm_qk=truthy(l2), beta_sigmoid=truthy(sig), neg_eigval=truthy(neg),
                scale=None if scale is None else float(scale))


def run_sequences(a, opts, cu, start, record):
    """Every sequence of the token inputs in a, from start(n) (a [HV, K, V] state or None).
    Returns out [B, T, HV, V] and per sequence its states after 0..L tokens (record) or its
    final state only."""
    q, k, v, al, b, scale = prepare(a["q"], a["k"], a["v"], a["g"], a["beta"], **opts)
    B, T, HV, K = q.shape
    V = v.shape[3]
    out = np.zeros((B, T, HV, V))
    per_seq = []
    for n, (row, s, e) in enumerate(sequences(B, T, cu)):
        S0 = start(n)
        S = np.zeros((HV, K, V)) if S0 is None else S0.copy()
        trail = [S.copy()]
        for t in range(s, e):
            out[row, t] = step(S, q[row, t], k[row, t], v[row, t], al[row, t], b[row, t], scale)
            if record:
                trail.append(S.copy())
        per_seq.append(trail if record else [S])
    return out, per_seq


def merged(x):
    return x.reshape((-1,) + x.shape[2:]) if x.ndim == 5 else x


def stack_states(states_, shape):
    return np.stack(states_) if states_ else np.zeros(shape)


def model_prefill(a):
    """{name: (want, written)} for flash_kda.prefill's in-place outputs; a holds the arguments
    (arrays as they were before the call)."""
    gate = a.get("gate") or "none"
    vf = truthy(a.get("state_v_first"))
    opts = gate_options(gate, a.get("A_log"), a.get("dt_bias"), a.get("lower_bound"),
                        a.get("use_qk_l2norm"), a.get("use_beta_sigmoid"),
                        a.get("allow_neg_eigval"), a.get("scale"))
    q, v = a["q"], a["v"]
    B, T, K = q.shape[0], q.shape[1], q.shape[3]
    HV, V = v.shape[2], v.shape[3]
    cu = a.get("cu_seqlens")
    lengths = [e - s for _, s, e in sequences(B, T, cu)]
    N = len(lengths)
    pool, init, has = a.get("state_pool"), a.get("initial_state"), a.get("has_initial_state")
    ii, fi = a.get("initial_state_indices"), a.get("final_state_indices")

    def start(n):
        if has is not None and not has[n]:
            return None
        if pool is not None:
            slot = n if ii is None else int(ii[n])
            return None if slot < 0 else to_kv(pool[slot], vf)
        return None if init is None else to_kv(init[n], vf)

    offs, inter = a.get("checkpoint_offsets"), a.get("intermediate_states")
    out, per_seq = run_sequences(a, opts, cu, start, offs is not None or inter is not None)
    want = {"out": (out, None)}
    finals = [trail[-1] for trail in per_seq]
    if pool is not None:
        pool_want, pool_written = f64(pool), np.zeros(len(pool), np.int8)

        def put(slot, S):  # a slot written twice in one call is a caller error: unspecified
            pool_want[slot], pool_written[slot] = from_kv(S, vf), min(pool_written[slot] + 1, 2)

        for n in range(N):
            slot = n if fi is None else int(fi[n])
            if slot >= 0:
                put(slot, finals[n])
    if a.get("final_state") is not None:
        want["final_state"] = (stack_states([from_kv(S, vf) for S in finals],
                                            state_shape(0, HV, K, V, vf)), None)
    if offs is not None:
        C = offs.shape[1]
        ck, cidx = a.get("checkpoint_states"), a.get("checkpoint_indices")
        if ck is not None:
            ck_want = f64(merged(ck))
            ck_written = np.zeros(len(ck_want), bool)
        for n in range(N):
            for c in range(C):
                off = int(offs[n, c])
                if not 0 <= off <= lengths[n]:
                    continue
                S = per_seq[n][off]
                if ck is not None:
                    ck_want[n * C + c], ck_written[n * C + c] = from_kv(S, vf), True
                elif int(cidx[n, c]) >= 0:
                    put(int(cidx[n, c]), S)
        if ck is not None:
            want["checkpoint_states"] = (ck_want, ck_written)
    if inter is not None:
        chunk = a.get("intermediate_chunk_size") or 64
        rows = [from_kv(trail[i * chunk], vf) for n, trail in enumerate(per_seq)
                for i in range(-(-lengths[n] // chunk))]
        want["intermediate_states"] = (stack_states(rows, (0,) + merged(inter).shape[1:]), None)
    if pool is not None:
        want["state_pool"] = (pool_want, pool_written)
    return want


def model_decode(a, opts, pool, idx, acc, vf):
    """(out, pool, written slots) of a decode on a float64 copy of the pool."""
    q, k, v, al, b, scale = prepare(a["q"], a["k"], a["v"], a["g"], a["beta"], **opts)
    B, T, HV = q.shape[0], q.shape[1], q.shape[2]
    out = np.zeros((B, T, HV, v.shape[3]))
    pool_want, written = f64(pool), np.zeros(len(pool), bool)
    for n, (row, s, e) in enumerate(sequences(B, T, a.get("cu_seqlens"))):
        read = read_slot(idx, acc, n)
        if read < 0:
            continue
        S = to_kv(pool[read], vf)
        for j, t in enumerate(range(s, e)):
            out[row, t] = step(S, q[row, t], k[row, t], v[row, t], al[row, t], b[row, t], scale)
            if idx is not None and idx.ndim == 2 and int(idx[n, j]) >= 0:
                pool_want[int(idx[n, j])], written[int(idx[n, j])] = from_kv(S, vf), True
        if idx is None or idx.ndim == 1:
            pool_want[read], written[read] = from_kv(S, vf), True
    return out, pool_want, written


def model_decode_layer(a):
    x = f64(a["mixed_qkv"])
    has_t = x.ndim == 3

    def tokens(y):
        y = f64(y)
        return y if has_t else y[:, None]

    x = tokens(x)
    B, T, dim = x.shape
    beta, gate_out = tokens(a["beta"]), tokens(a["output_gate"])
    HV, nw = beta.shape[-1], f64(a["norm_weight"])
    V = nw.shape[0]
    g = f64(a["g"])
    K = g.shape[-1] // HV if g.ndim == (3 if has_t else 2) else g.shape[-1]
    g = tokens(g).reshape(B, T, HV, K)
    H = (dim - HV * V) // (2 * K)
    w = f64(a["conv_weight"])
    W = w.shape[1]
    bias = f64(a["conv_bias"]) if a.get("conv_bias") is not None else 0.0
    cs = a["conv_state"]
    cs_want, cs_written = f64(cs), np.zeros(cs.shape[:2], bool)
    pool, idx, acc = a["state_pool"], a.get("state_indices"), a.get("num_accepted_tokens")
    pool_want, written = f64(pool), np.zeros(len(pool), bool)
    vf = truthy(a.get("state_v_first"))
    lb = a.get("lower_bound")
    opts = gate_options("softplus" if lb is None else "lower_bound", a.get("A_log"),
                        a.get("dt_bias"), lb, True, True, False, a.get("scale"))
    eps = float(a["norm_eps"])
    out = np.zeros((B, T, HV, V))
    for n in range(B):
        if idx is None:
            read = cslot = n
        elif idx.ndim == 1:
            read = cslot = int(idx[n])
        else:
            read = int(idx[n, (int(acc[n]) if acc is not None else 1) - 1])
            cslot = int(idx[n, 0])
        if read < 0:
            continue
        first = int(acc[n]) - 1 if acc is not None else 0
        seq = np.concatenate([f64(cs[cslot, first:first + W - 1]), x[n]])
        y = np.stack([bias + (w * seq[t:t + W].T).sum(1) for t in range(T)])
        y = y * sigmoid(y)
        new = seq[1:] if acc is not None else seq[T:]
        cs_want[cslot, :len(new)], cs_written[cslot, :len(new)] = new, True
        qkv = dict(q=y[None, :, :H * K].reshape(1, T, H, K),
                   k=y[None, :, H * K:2 * H * K].reshape(1, T, H, K),
                   v=y[None, :, 2 * H * K:].reshape(1, T, HV, V), g=g[n:n + 1],
                   beta=beta[n:n + 1])
        qq, kk, vv, al, bb, scale = prepare(**qkv, **opts)
        S = to_kv(pool[read], vf)
        for t in range(T):
            o = step(S, qq[0, t], kk[0, t], vv[0, t], al[0, t], bb[0, t], scale)
            rms = np.sqrt(np.mean(o * o, axis=-1, keepdims=True) + eps)
            out[n, t] = o / rms * nw * sigmoid(gate_out[n, t])
            if idx is not None and idx.ndim == 2 and int(idx[n, t]) >= 0:
                pool_want[int(idx[n, t])], written[int(idx[n, t])] = from_kv(S, vf), True
        if idx is None or idx.ndim == 1:
            pool_want[read], written[read] = from_kv(S, vf), True
    return {"out": (out if has_t else out[:, 0], None),
            "conv_state": (cs_want, cs_written.reshape(-1)),
            "state_pool": (pool_want, written)}


def fla_options(a):
    use_gate = truthy(a.get("use_gate_in_kernel"))
    lb = a.get("lower_bound")
    gate = "none" if not use_gate else ("lower_bound" if lb is not None else "softplus")
    return gate_options(gate, a.get("A_log"), a.get("dt_bias"), lb,
                        a.get("use_qk_l2norm_in_kernel"), a.get("use_beta_sigmoid_in_kernel"),
                        a.get("allow_neg_eigval"), a.get("scale"))


def fla_v_first(a):
    return truthy(a.get("state_v_first")) or truthy(a.get("transpose_state_layout"))


def model_recurrent(a, record=False):
    """out and final states of an fla-style call from initial_state [N, ...] (or zero)."""
    vf, init = fla_v_first(a), a.get("initial_state")
    out, per_seq = run_sequences(
        a, fla_options(a), a.get("cu_seqlens"),
        lambda n: None if init is None else to_kv(init[n], vf), record)
    q, v = a["q"], a["v"]
    finals = stack_states([from_kv(trail[-1], vf) for trail in per_seq],
                          state_shape(0, v.shape[2], q.shape[3], v.shape[3], vf))
    return out, finals, per_seq


# ---- checking results ----------------------------------------------------------------------------


def bits(x, units):
    """The bytes of each unit of x: [units, bytes per unit]."""
    raw = np.ascontiguousarray(x).view(np.uint8)
    return raw.reshape(units, -1) if units else raw.reshape(0, 0)


def check_array(problems, name, got, want, written=None, before=None, lead=1, exact=False):
    """got against want unit by unit (a unit: the first `lead` dimensions of want); units not
    written must be bitwise as before."""
    if not isinstance(got, np.ndarray):
        problems.append(f"{name}: expected an array, got {type(got).__name__}")
        return
    if got.shape != want.shape:
        if got.size != want.size:
            problems.append(f"{name}: shape {got.shape}, expected {want.shape}")
            return
        got = got.reshape(want.shape)
        before = None if before is None else before.reshape(want.shape)
    units = int(np.prod(want.shape[:lead]))
    if units == 0:
        return
    gu = f64(got).reshape(units, -1)
    wu = want.reshape(units, -1)
    # Per unit: 0 not written (bitwise as before), 1 written (compared), 2 unspecified.
    marks = np.ones(units, np.int8) if written is None else np.asarray(written, np.int8).ravel()
    written, unspecified = marks == 1, marks == 2
    if before is not None and not written.all():
        same = (bits(got, units) == bits(before, units)).all(axis=1)
        bad = np.flatnonzero(~written & ~unspecified & ~same)
        if bad.size:
            problems.append(f"{name}: unit {bad[0]} was written but should not have been")
    if exact:
        cast = np.asarray(want).astype(got.dtype).astype(np.float64).reshape(units, -1)
        bad = np.flatnonzero(written & ~(gu == cast).all(axis=1))
        if bad.size:
            problems.append(f"{name}: unit {bad[0]} is {gu[bad[0]][:4]}, expected "
                            f"{cast[bad[0]][:4]} exactly")
        return
    tol = TOL[got.dtype.name]
    finite_ref = np.isfinite(wu).all(axis=1)
    finite_got = np.isfinite(gu).all(axis=1)
    bad = np.flatnonzero(written & finite_ref & ~finite_got)
    if bad.size:
        problems.append(f"{name}: unit {bad[0]} is not finite ({gu[bad[0]][:4]}), expected "
                        f"{wu[bad[0]][:4]}")
        return
    rows = written & finite_ref
    if not rows.any():
        return
    ref_norm = np.linalg.norm(wu[rows], axis=1)
    floor = 0.1 * np.sqrt(np.mean(ref_norm ** 2)) + 1e-30
    diff = np.maximum(np.linalg.norm(gu[rows] - wu[rows], axis=1)
                      - TINY[got.dtype.name] * np.sqrt(gu.shape[1]), 0.0)
    err = diff / np.maximum(ref_norm, floor)
    worst = int(np.argmax(err))
    if err[worst] > tol:
        unit = int(np.flatnonzero(rows)[worst])
        problems.append(f"{name}: unit {unit} has relative error {err[worst]:.3g} > {tol:g} "
                        f"(got {gu[unit][:4]}, expected {wu[unit][:4]})")


def check_prefill(kw, a, result, problems):
    want = model_prefill(a)
    if kw.get("out") is not None and result is not kw["out"]:
        problems.append("prefill: did not return out")
    check_array(problems, "out", result, want["out"][0], lead=2)
    for name in ("final_state", "state_pool", "checkpoint_states", "intermediate_states"):
        if name in want:
            w, written = want[name]
            check_array(problems, name, merged(kw[name]), w, written, merged(a[name]))


def check_decode(kw, a, result, problems):
    opts = gate_options(a.get("gate") or "none", a.get("A_log"), a.get("dt_bias"),
                        a.get("lower_bound"), a.get("use_qk_l2norm"), a.get("use_beta_sigmoid"),
                        a.get("allow_neg_eigval"), a.get("scale"))
    out, pool, written = model_decode(a, opts, a["state_pool"], a.get("state_indices"),
                                      a.get("num_accepted_tokens"), truthy(a.get("state_v_first")))
    if kw.get("out") is not None and result is not kw["out"]:
        problems.append("decode: did not return out")
    check_array(problems, "out", result, out, lead=2)
    check_array(problems, "state_pool", kw["state_pool"], pool, written, a["state_pool"])


def check_decode_layer(kw, a, result, problems):
    want = model_decode_layer(a)
    if kw.get("out") is not None and result is not kw["out"]:
        problems.append("decode_layer: did not return out")
    check_array(problems, "out", result, want["out"][0], lead=kw["mixed_qkv"].ndim - 1)
    cs_want, cs_written = want["conv_state"]
    check_array(problems, "conv_state", kw["conv_state"], cs_want, cs_written, a["conv_state"],
                lead=2, exact=True)
    check_array(problems, "state_pool", kw["state_pool"], *want["state_pool"], a["state_pool"])


def check_chunk_kda(kw, a, result, problems):
    h_wanted = truthy(a.get("return_intermediate_states"))
    if not isinstance(result, tuple) or len(result) != (3 if h_wanted else 2):
        problems.append(f"chunk_kda: returned {type(result).__name__}")
        return
    out, finals, per_seq = model_recurrent(a, record=h_wanted)
    o = result[0]
    if o.dtype != kw["q"].dtype:
        problems.append(f"chunk_kda: o has dtype {o.dtype}, q {kw['q'].dtype}")
    check_array(problems, "o", o, out, lead=2)
    if truthy(a.get("output_final_state")):
        if result[1] is None or result[1].dtype != F32:
            problems.append("chunk_kda: final_state is not a float32 array")
        else:
            check_array(problems, "final_state", result[1], finals)
    elif result[1] is not None:
        problems.append("chunk_kda: final_state returned without output_final_state")
    if h_wanted:
        chunk = int(a.get("chunk_size", 64))
        vf = fla_v_first(a)
        lengths = [len(trail) - 1 for trail in per_seq]
        rows = [from_kv(trail[i * chunk], vf) for n, trail in enumerate(per_seq)
                for i in range(-(-lengths[n] // chunk))]
        h = result[2]
        if h.dtype != kw["k"].dtype or h.ndim != 5:
            problems.append(f"chunk_kda: h has dtype {h.dtype} and shape {h.shape}")
            return
        check_array(problems, "h", merged(h), stack_states(rows, (0,) + h.shape[2:]))


def check_fused_recurrent_kda(kw, a, result, problems):
    if not isinstance(result, tuple) or len(result) != 2:
        problems.append(f"fused_recurrent_kda: returned {type(result).__name__}")
        return
    out, finals, _ = model_recurrent(a)
    check_array(problems, "o", result[0], out, lead=2)
    if result[0].dtype != kw["v"].dtype:
        problems.append(f"o: dtype {result[0].dtype}, v {kw['v'].dtype}")
    if truthy(a.get("output_final_state")):
        check_array(problems, "final_state", result[1], finals)
    elif result[1] is not None:
        problems.append("final_state returned without output_final_state")


def check_fused_recurrent_kda_fwd(kw, a, result, problems):
    if not isinstance(result, tuple) or len(result) != 2:
        problems.append(f"fused_recurrent_kda_fwd: returned {type(result).__name__}")
        return
    if kw.get("out") is not None and result[0] is not kw["out"]:
        problems.append("fused_recurrent_kda_fwd: did not return out")
    if not inplace_fwd(a):
        check_fused_recurrent_kda(kw, a, result, problems)
        return
    if result[1] is not kw["initial_state"]:
        problems.append("fused_recurrent_kda_fwd: did not return the pool")
    out, pool, written = model_decode(a, fla_options(a), a["initial_state"],
                                      a.get("ssm_state_indices"), a.get("num_accepted_tokens"),
                                      fla_v_first(a))
    check_array(problems, "out", result[0], out, lead=2)
    check_array(problems, "initial_state", kw["initial_state"], pool, written, a["initial_state"])


def check_fwd(kw, a, result, problems):
    if result is not None:
        problems.append(f"fwd: returned {type(result).__name__}, not None")
    p = dict(a, gate="lower_bound", use_qk_l2norm=True, use_beta_sigmoid=True,
             allow_neg_eigval=False, state_v_first=True)
    p.pop("checkpoint_state", None)
    offs = a.get("checkpoint_offsets")
    if offs is not None:
        p["checkpoint_offsets"] = offs[:, None] if offs.ndim == 1 else offs
        p["checkpoint_states"] = a["checkpoint_state"]
    want = model_prefill(p)
    check_array(problems, "out", kw["out"], want["out"][0], lead=2)
    if "final_state" in want:
        check_array(problems, "final_state", kw["final_state"], want["final_state"][0])
    if "checkpoint_states" in want:
        w, written = want["checkpoint_states"]
        check_array(problems, "checkpoint_state", merged(kw["checkpoint_state"]), w, written,
                    merged(a["checkpoint_state"]))


CHECKS = {"prefill": check_prefill, "decode": check_decode, "decode_layer": check_decode_layer,
          "chunk_kda": check_chunk_kda, "fused_recurrent_kda": check_fused_recurrent_kda,
          "fused_recurrent_kda_fwd": check_fused_recurrent_kda_fwd, "fwd": check_fwd}


# ---- mutations -----------------------------------------------------------------------------------
#
# Each takes (r, entry, kw, name) and returns (value, expectation, description), or None where it
# does not apply to that argument. Array mutations get array arguments; the others pick their own.


ABSENT = object()  # an argument the call did not have


def arrays(kw):
    return [n for n, x in kw.items() if isinstance(x, np.ndarray)]


def expect_if(condition, otherwise="any"):
    return "raise" if condition else otherwise


def m_junk(r, entry, kw, name):
    x = kw[name]
    junk = r.pick([x.tolist(), 1.5, 3, "x", {"a": 1}, object(), b"ab", (1, 2)])
    if name == "cu_seqlens_cpu" and isinstance(junk, (list, tuple)):
        return None  # a list of bounds is read as well as an array
    fatal = described(entry, kw, name) or (live(entry, kw, name) and name == "cu_seqlens_cpu")
    return junk, expect_if(fatal), f"{name} = {type(junk).__name__}"


def m_none(r, entry, kw, name):
    return None, expect_if(required(entry, kw, name)), f"{name} = None"


def m_zero_d(r, entry, kw, name):
    x = kw[name]
    value = np.asarray(x.reshape(-1)[0] if x.size else np.zeros((), x.dtype)).copy()
    return value, expect_if(live(entry, kw, name)), f"{name} 0-d"


def m_add_axis(r, entry, kw, name):
    x = kw[name]
    return (np.broadcast_to(x, (13,) + x.shape), expect_if(live(entry, kw, name)),
            f"{name} with a leading axis of 13")


def m_drop_axis(r, entry, kw, name):
    x = kw[name]
    if x.ndim == 0 or x.shape[0] == 0:
        return None
    return x[0].copy(), "any", f"{name}[0]"


def m_resize(r, entry, kw, name):
    x = kw[name]
    if x.ndim == 0:
        return None
    axis = r.int(0, x.ndim - 1)
    if x.shape[axis] > 0 and r.coin():
        return np.take(x, range(x.shape[axis] - 1), axis).copy(), "any", f"{name} axis {axis} - 1"
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, 1)
    rl = role(entry, kw, name)
    if name in ("cu_seqlens", "cu_seqlens_cpu"):
        y = np.pad(x, pad, mode="edge") if x.size else np.pad(x, pad)
    elif rl == "index":
        y = np.pad(x, pad, constant_values=-1)
    elif rl == "flags":
        y = np.pad(x, pad)
    else:
        fill = np.nan if name in outputs(entry, kw) else 0.5
        y = np.pad(x.astype(np.float64), pad, constant_values=fill).astype(x.dtype)
    return y, "any", f"{name} axis {axis} + 1"


def m_dtype(r, entry, kw, name):
    x = kw[name]
    new = r.pick(FOREIGN + KNOWN_DTYPES)
    if new == x.dtype:
        return None
    return as_dtype(x, new), dtype_expect(entry, kw, name, new), f"{name} as {new}"


# The dtypes the package has codes for.
KNOWN_DTYPES = [F32, F16, I32, I64, BOOL, U8] + ([BF16] if BF16 is not None else [])


def as_dtype(x, new):
    """The values of x in dtype new (zeros for object, str and datetime, no NaN in integers)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if new.kind in "OUM":
            return np.zeros(x.shape, new)
        if x.dtype.kind == "f" and new.kind in "iub":
            return np.nan_to_num(f64(x), nan=0.0).astype(new)
        return x.astype(new)


def dtype_expect(entry, kw, name, new):
    """What the call with argument `name` in dtype `new` must do. new: a NumPy dtype, or the
    name of a torch dtype NumPy has no equivalent for ("float8_e4m3fn"): foreign, not integer."""
    rl = role(entry, kw, name)
    if rl == "cpu_index":  # read by NumPy: any integer dtype
        if not live(entry, kw, name):
            return "any"
        return "ok" if getattr(new, "kind", "?") in "iu" else "raise"
    if not isinstance(new, np.dtype) or new not in KNOWN_DTYPES:
        return expect_if(described(entry, kw, name))
    if not live(entry, kw, name):
        return "any"
    if rl == "io":
        ok = name == "mixed_qkv" and kw.get("out") is None and new in FLOATS
        return "ok" if ok else "raise"
    if rl == "io_out":
        return "raise"
    return "ok" if new in ALLOWED[rl] else "raise"


def copy_in(view, x):
    view[...] = x
    return view


def m_stride_1d(r, entry, kw, name):
    x = kw[name]
    if x.ndim != 1 or x.size > 1:
        return None  # the last dimension must be contiguous, unless it has one element
    buf = np.zeros(3, x.dtype)
    return copy_in(buf[::3][:x.size], x), "ok", f"{name} with stride 3"


def mergeable(x):
    """Whether a 5-D state array's first two dimensions merge without a copy (else the Python
    layer refuses it: the C library takes 4-D views)."""
    if x.ndim != 5:
        return True
    view = x.view()
    try:
        view.shape = (-1,) + x.shape[2:]
    except AttributeError:
        return False
    return True


def m_strided(r, entry, kw, name):
    """The same values in a buffer with gaps between elements of a dimension other than the
    last (a valid layout)."""
    x = kw[name]
    if x.ndim < 2:
        return m_stride_1d(r, entry, kw, name)
    axis = r.int(0, x.ndim - 2)
    shape = list(x.shape)
    step_ = r.int(2, 3)
    shape[axis] = shape[axis] * step_ + 1
    fill = np.nan if x.dtype.kind == "f" else (-3 if x.dtype.kind == "i" else 0)
    buf = np.full(shape, fill, x.dtype)
    index = [slice(None)] * x.ndim
    index[axis] = slice(1, None, step_)
    view = copy_in(buf[tuple(index)], x)
    return view, "ok" if mergeable(view) else "raise", f"{name} strided along axis {axis}"


def m_permuted(r, entry, kw, name):
    """The same values with the dimensions before the last stored in another order."""
    x = kw[name]
    if x.ndim < 3:
        return None
    order = [int(i) for i in r.g.permutation(x.ndim - 1)] + [x.ndim - 1]
    buf = np.empty([x.shape[i] for i in order], x.dtype)
    view = buf.transpose(np.argsort(order))
    view = copy_in(view, x)
    return view, "ok" if mergeable(view) else "raise", f"{name} stored in axis order {order}"


def m_broadcast(r, entry, kw, name):
    """Values repeated along a dimension by a zero stride (a read-only NumPy view)."""
    x = kw[name]
    if name in outputs(entry, kw) or role(entry, kw, name) not in ("io", "float", "state",
                                                                    "state_f32", "state_copy"):
        return None
    axes = [i for i in range(x.ndim - 1) if x.shape[i] > 1]
    if not axes:
        return None
    axis = r.pick(axes)
    index = [slice(None)] * x.ndim
    index[axis] = slice(0, 1)
    return np.broadcast_to(x[tuple(index)], x.shape), "ok", f"{name} broadcast along {axis}"


def m_read_only(r, entry, kw, name):
    y = kw[name].copy()
    y.flags.writeable = False
    return y, "raise" if name in outputs(entry, kw) else "ok", f"{name} read-only"


def m_negative_stride(r, entry, kw, name):
    x = kw[name]
    if x.ndim == 0:
        return None
    axis = r.int(0, x.ndim - 1)
    index = [slice(None)] * x.ndim
    index[axis] = slice(None, None, -1)
    fatal = x.shape[axis] > 1 and x.size > 0 and c_visible(entry, kw, name)
    return x[tuple(index)], expect_if(fatal), f"{name} reversed along axis {axis}"


def m_last_strided(r, entry, kw, name):
    x = kw[name]
    if x.ndim == 0:
        return None
    buf = np.zeros(x.shape[:-1] + (2 * x.shape[-1],), x.dtype)
    view = copy_in(buf[..., ::2], x)
    fatal = x.shape[-1] > 1 and x.size > 0 and c_visible(entry, kw, name)
    if entry == "fwd" and name == "checkpoint_offsets" and x.ndim == 1:
        fatal = False  # fwd passes offsets [N] on as [N, 1]: the stride moves to dimension 0
    return view, expect_if(fatal), f"{name} with a strided last dimension"


def m_transposed(r, entry, kw, name):
    """The same values stored with the last two dimensions swapped (x.T-style, as a state of
    the other layout would be): the last dimension is no longer contiguous."""
    x = kw[name]
    if x.ndim < 2:
        return None
    buf = np.ascontiguousarray(x.swapaxes(-1, -2))
    view = buf.swapaxes(-1, -2)
    fatal = x.shape[-1] > 1 and x.shape[-2] > 1 and x.size > 0 and c_visible(entry, kw, name)
    return view, expect_if(fatal, "ok" if mergeable(view) else "raise"), \
        f"{name} stored transposed"


def m_misaligned(r, entry, kw, name):
    x = kw[name]
    if x.itemsize == 1 or x.ndim == 0:
        return None
    raw = np.zeros(x.nbytes + x.itemsize, np.uint8)
    view = np.ndarray(x.shape, x.dtype, buffer=raw, offset=1)
    view[...] = x
    fatal = x.size > 0 and c_visible(entry, kw, name)
    return view, expect_if(fatal), f"{name} misaligned by one byte"


def m_byte_swapped(r, entry, kw, name):
    x = kw[name]
    if x.itemsize == 1 or x.dtype == BF16:
        return None
    return (x.astype(x.dtype.newbyteorder("S")), expect_if(described(entry, kw, name)),
            f"{name} byte-swapped")


def m_odd_byte_stride(r, entry, kw, name):
    x = kw[name]
    if x.itemsize == 1 or x.ndim < 2:
        return None
    strides = list(np.zeros(x.shape, x.dtype).strides)
    strides[0] += 1
    raw = np.zeros(x.nbytes + strides[0] * max(x.shape[0], 1) + 16, np.uint8)
    view = np.ndarray(x.shape, x.dtype, buffer=raw, offset=0, strides=strides)
    # A 5-D state array of one row merges into a 4-D view that no longer has the odd stride.
    fatal = described(entry, kw, name) and not (x.ndim == 5 and x.shape[0] <= 1)
    return view, expect_if(fatal), f"{name} with an odd byte stride"


def m_self_overlap(r, entry, kw, name):
    x = kw[name]
    if name not in outputs(entry, kw):
        return None
    axes = [i for i in range(x.ndim - 1) if x.shape[i] > 1]
    if not axes:
        return None
    axis = r.pick(axes)
    strides = list(x.strides)
    strides[axis] = 0
    buf = x.copy()
    view = np.lib.stride_tricks.as_strided(buf, x.shape, strides)
    fatal = c_visible(entry, kw, name) and x.size > 0
    return view, expect_if(fatal), f"{name} overlapping itself"


def m_alias(r, entry, kw, name):
    """An output made a view of the memory of another array of the call."""
    x = kw[name]
    if name not in outputs(entry, kw) or x.size == 0:
        return None
    others = [n for n in arrays(kw) if n != name and kw[n].nbytes >= x.nbytes and kw[n].size
              and kw[n].flags.c_contiguous and kw[n].flags.writeable
              and not kw[n].dtype.hasobject]
    if not others:
        return None
    other = r.pick(others)
    view = kw[other].reshape(-1).view(np.uint8)[:x.nbytes].view(x.dtype).reshape(x.shape)
    if {name, other} == {"initial_state", "final_state"} and same_view(view, kw[other]):
        return view, "ok", f"{name} the same view as {other}"  # the in-place update
    # Refused if the two still share memory once every mutation is applied: aliased() decides.
    return view, "any", f"{name} in the memory of {other}"


def m_slot_outside(r, entry, kw, name):
    pool_name = {"decode_layer": "state_pool", "decode": "state_pool", "prefill": "state_pool",
                 "fused_recurrent_kda_fwd": "initial_state"}.get(entry)
    x = kw[name]
    if (name not in ("state_indices", "initial_state_indices", "final_state_indices",
                     "checkpoint_indices", "ssm_state_indices") or x.size == 0
            or pool_name is None or not isinstance(kw.get(pool_name), np.ndarray)
            or kw[pool_name].ndim == 0):
        return None
    y = x.copy()
    P = kw[pool_name].shape[0]
    big = r.pick([P, P + 1, 2**31 - 1] + ([2**40] if y.dtype == I64 else []))
    y.reshape(-1)[r.int(0, y.size - 1)] = big
    return y, "raise", f"{name} with slot {big} of {P}"


def m_slot_negative(r, entry, kw, name):
    x = kw[name]
    if (name not in ("state_indices", "initial_state_indices", "final_state_indices",
                     "checkpoint_indices", "ssm_state_indices") or x.size == 0):
        return None
    y = x.copy()
    y.reshape(-1)[r.int(0, y.size - 1)] = r.pick([-1, -2**31] + ([-2**40] if y.dtype == I64
                                                                   else []))
    ok = not (entry == "decode_layer" and y.ndim == 2)  # a running sequence needs its conv slot
    return y, "ok" if ok else "any", f"{name} with a negative slot"


def m_accepted(r, entry, kw, name):
    x = kw[name]
    if name != "num_accepted_tokens" or x.size == 0:
        return None
    idx = kw.get("state_indices", kw.get("ssm_state_indices"))
    y = x.copy()
    t_max = idx.shape[1] if isinstance(idx, np.ndarray) and idx.ndim == 2 else 98
    y[r.int(0, y.size - 1)] = r.pick([0, -1, t_max + 1])
    return y, "raise", f"{name} out of range"


def m_cu_seqlens(r, entry, kw, name):
    x = kw[name]
    if name == "cu_seqlens_cpu" and x.size > 1:  # bounds that disagree with cu_seqlens
        y = x.copy()
        y[r.int(1, y.size - 1)] += r.pick([1, -1, 40])
        return y, "any", "cu_seqlens_cpu differs from cu_seqlens"
    if name != "cu_seqlens":
        return None
    y = x.copy()
    kind = r.pick(["start", "end", "decrease"])
    if kind == "start":
        y[0] = r.pick([1, -1])
    elif kind == "end":
        y[-1] += r.pick([1, -1]) if y[-1] > 0 else 1
    else:
        rises = [i for i in range(1, len(y) - 1) if y[i] > y[i - 1]] if len(y) > 2 else []
        if not rises:
            return None
        i = r.pick(rises)
        y[i] = y[i - 1] - 1 if r.coin() else y[i + 1] + 1
        if y[i] < 0 and i == 0:
            return None
    return y, "raise", f"cu_seqlens bad {kind}"


def m_offsets(r, entry, kw, name):
    if name not in ("checkpoint_offsets", "has_initial_state"):
        return None
    y = kw[name].copy()
    if y.size == 0:
        return None
    if name == "has_initial_state":
        if y.dtype.kind not in "iu":
            return None
        y.reshape(-1)[r.int(0, y.size - 1)] = r.pick([2, 255] + ([-1] if y.dtype.kind == "i"
                                                                 else []))
        return y, "ok", f"{name} with a nonzero value other than 1"
    big = np.iinfo(y.dtype).max
    y.reshape(-1)[r.int(0, y.size - 1)] = r.pick([-1, -5, big, np.iinfo(y.dtype).min, 10**6])
    return y, "ok", f"{name} outside its sequence"


ARRAY_MUTATIONS = [m_junk, m_none, m_zero_d, m_add_axis, m_drop_axis, m_resize, m_dtype, m_dtype,
                   m_strided, m_strided, m_permuted, m_broadcast, m_read_only, m_negative_stride,
                   m_last_strided, m_transposed, m_misaligned, m_byte_swapped, m_odd_byte_stride,
                   m_self_overlap, m_alias, m_slot_outside, m_slot_negative, m_accepted,
                   m_cu_seqlens, m_offsets]

BAD_REALS = [float("nan"), float("inf"), -float("inf"), 1e31, -1e31, 10**400, -10**400, "0.5",
             True, 1j, np.array(0.5), [0.5], None]


def real(value):
    """Whether value is a real number as the package takes it (not a bool, an array, ...)."""
    return isinstance(value, (int, float, np.integer, np.floating, Fraction)) and not isinstance(
        value, (bool, np.bool_))


def magnitude(value):
    return abs(value) if isinstance(value, (int, Fraction)) else abs(float(value))


def m_scale(r, entry, kw):
    value = r.pick(BAD_REALS + [0, 0.0, np.float64(-0.0), np.float32(0.3), np.float16(0.5), 2,
                                Fraction(1, 3), -0.7, 1e-3, np.int64(1)])
    ok = value is None or (real(value) and value != 0 and magnitude(value) <= 1e30)
    return "scale", value, "ok" if ok else "raise"


def lower_bound_live(entry, kw):
    if entry in ("prefill", "decode"):
        return kw.get("gate") == "lower_bound"
    if entry in ("chunk_kda", "fused_recurrent_kda", "fused_recurrent_kda_fwd"):
        return truthy(kw.get("use_gate_in_kernel"))
    return True


def m_lower_bound(r, entry, kw):
    value = r.pick(BAD_REALS[:-1] + [0.0, 0.5, -1e30, -2.5, np.float32(-3.0), Fraction(-1, 2),
                                     -6.0])
    if not real(value):
        return "lower_bound", value, "raise"
    if not lower_bound_live(entry, kw):  # not read, but a float all the same
        return "lower_bound", value, "ok" if magnitude(value) < 1e300 else "any"
    v = value if isinstance(value, (int, Fraction)) else float(value)
    ok = -1e30 <= v < 0
    if entry == "chunk_kda" and truthy(kw.get("safe_gate")):
        ok = -5 <= v < 0
    return "lower_bound", value, "ok" if ok else "raise"


def m_norm_eps(r, entry, kw):
    if entry != "decode_layer":
        return None
    value = r.pick([0, 1e-50, float("nan"), float("inf"), -1.0, 1e31, "x", None, True,
                    1e-6, np.float32(1e-3), 1, 1e30])
    ok = real(value) and value in (1e-6, 1, 1e30) or isinstance(value, np.float32)
    return "norm_eps", value, "ok" if ok else "raise"


def m_num_threads(r, entry, kw):
    if entry not in ("prefill", "decode", "decode_layer"):
        return None
    value = r.pick([-1, 4097, 1.5, "2", True, None, 2**31, 2**32, 2**32 + 1, 2**64 + 2,
                    np.int64(2), 1, 3, np.uint8(2)])
    ok = not isinstance(value, (bool, float, str)) and value is not None and 0 <= value <= 4096
    return "num_threads", value, "ok" if ok else "raise"


def m_chunk(r, entry, kw):
    if entry == "prefill":
        value = r.pick([0, -1, 2**31, 1.5, "64", True, np.int64(7), 1, None, 2**63])
        ok = value is None or (isinstance(value, (int, np.integer)) and not isinstance(
            value, bool) and 1 <= value < 2**31)
        if ok and kw.get("intermediate_states") is not None:
            # Valid while intermediate_states keeps its number of rows (when readable).
            old, new = kw.get("intermediate_chunk_size") or 64, value or 64
            try:
                B, T = kw["q"].shape[:2]
                cu = kw.get("cu_seqlens")
                lengths = [T] * B if cu is None else [int(n) for n in np.diff(cu)]
                ok = sum(-(-n // old) for n in lengths) == sum(-(-n // int(new)) for n in lengths)
            except (AttributeError, TypeError, ValueError):
                return "intermediate_chunk_size", value, "any"
        return "intermediate_chunk_size", value, "ok" if ok else "raise"
    if entry == "chunk_kda":
        value = r.pick([16, 0, "64", 128, np.array([32, 64]), None, 32, 64, np.int64(32), 1.5])
        ok = isinstance(value, (int, np.integer)) and value in (32, 64)
        return "chunk_size", value, "ok" if ok else "raise"
    return None


def m_gate(r, entry, kw):
    if entry not in ("prefill", "decode"):
        return None
    return "gate", r.pick(["sigmoid", 1, ["none"], "NONE", b"none"]), "raise"


FLAGS = {"prefill": ("use_qk_l2norm", "use_beta_sigmoid", "allow_neg_eigval", "state_v_first",
                     "reference"),
         "decode": ("use_qk_l2norm", "use_beta_sigmoid", "allow_neg_eigval", "state_v_first",
                    "reference"),
         "decode_layer": ("state_v_first", "reference"),
         "chunk_kda": ("output_final_state", "use_qk_l2norm_in_kernel", "use_gate_in_kernel",
                       "use_beta_sigmoid_in_kernel", "allow_neg_eigval", "safe_gate",
                       "return_intermediate_states", "state_v_first", "use_graph"),
         "fused_recurrent_kda": ("output_final_state", "use_qk_l2norm_in_kernel",
                                 "use_gate_in_kernel", "use_beta_sigmoid_in_kernel",
                                 "allow_neg_eigval", "state_v_first"),
         "fused_recurrent_kda_fwd": ("output_final_state", "inplace_final_state",
                                     "use_qk_l2norm_in_kernel", "use_gate_in_kernel",
                                     "use_beta_sigmoid_in_kernel", "allow_neg_eigval",
                                     "state_v_first"),
         "fwd": ()}


def m_flag(r, entry, kw):
    names = FLAGS[entry]
    if not names:
        return None
    name = r.pick(list(names))
    default = name == "inplace_final_state"
    value = truthy(kw.get(name, default))
    new = r.pick([np.array([1, 0]), np.array([]), np.bool_(value), int(value), np.array(value),
                  np.array([value])])
    if isinstance(new, np.ndarray) and new.size != 1:
        return name, new, "raise"
    return name, new, "ok"


UNKNOWN = {"prefill": ["use_qk_l2norm_in_kernel", "state_indices", "zzz", "scal"],
           "decode": ["use_qk_l2norm_in_kernel", "final_state", "checkpoint_offsets"],
           "decode_layer": ["conv_wieght", "gate", "use_qk_l2norm"],
           "chunk_kda": ["use_qk_l2norm", "out", "gate", "A_logs"],
           "fused_recurrent_kda": ["out", "use_qk_l2norm", "chunk_size"],
           "fused_recurrent_kda_fwd": ["chunk_size", "ssm_state_indice", "gate"]}


def m_unknown(r, entry, kw):
    if entry not in UNKNOWN:
        return None  # fwd keeps FlashKDA's exact signature: Python itself refuses a keyword
    return r.pick(UNKNOWN[entry]), r.pick([True, 1, None, np.zeros(1)]), "raise"


def m_extra(r, entry, kw):
    """An optional argument that does not go with the others of the call."""
    x = kw.get("mixed_qkv" if entry == "decode_layer" else "q")
    cu = kw.get("cu_seqlens")
    if not isinstance(x, np.ndarray) or x.ndim < 1 or (cu is not None and (
            not isinstance(cu, np.ndarray) or cu.ndim != 1 or cu.size == 0)):
        return None
    N = x.shape[0] if cu is None else len(cu) - 1
    ones = np.ones(N, r.pick([I32, I64]))

    def absent(*names):
        return all(kw.get(n) is None for n in names)

    idx = kw.get("ssm_state_indices" if entry == "fused_recurrent_kda_fwd" else "state_indices")
    one_d = idx is None or not isinstance(idx, np.ndarray) or idx.ndim != 2
    options_ = {
        "prefill": [("has_initial_state", absent("initial_state", "state_pool")),
                    ("initial_state", not absent("state_pool")),
                    ("final_state", not absent("state_pool")),
                    ("initial_state_indices", absent("state_pool")),
                    ("checkpoint_indices", absent("state_pool", "checkpoint_indices"))],
        "decode": [("num_accepted_tokens", one_d and absent("num_accepted_tokens"))],
        "decode_layer": [("num_accepted_tokens", one_d and absent("num_accepted_tokens"))],
        "fused_recurrent_kda_fwd": [("num_accepted_tokens", not inplace_fwd(kw)),
                                    ("ssm_state_indices", not inplace_fwd(kw))],
        "fwd": [("checkpoint_offsets", absent("checkpoint_state", "checkpoint_offsets"))],
        "chunk_kda": [("cu_seqlens_cpu", cu is None)],
    }.get(entry, [])
    options_ = [(n, fatal) for n, fatal in options_ if fatal]
    if not options_:
        return None
    name, _ = r.pick(options_)
    value = ones
    if name in ("initial_state", "final_state"):
        pool = kw["state_pool"]
        if not isinstance(pool, np.ndarray) or pool.ndim < 2:
            return None
        value = np.zeros((N,) + pool.shape[1:], F32)
    elif name == "checkpoint_indices":
        value = ones.reshape(N, 1)
    elif name == "cu_seqlens_cpu":
        return name, np.array([0, 1]), "ok"  # without cu_seqlens it is not read
    return name, value, "raise"


OPTION_MUTATIONS = [m_extra, m_scale, m_lower_bound, m_norm_eps, m_num_threads, m_chunk, m_gate,
                    m_flag, m_flag, m_unknown]


def mutate(r, entry, kw, notes):
    """Applies one mutation to kw in place; returns its expectation (or None: none applied)."""
    for _ in range(20):
        if r.coin(0.7):
            names = [n for n in arrays(kw) if n not in notes["touched"]]
            if not names:
                continue
            name = r.pick(names)
            how = r.pick(ARRAY_MUTATIONS)
            res = how(r, entry, kw, name)
            if res is None:
                continue
            value, expect, desc = res
        else:
            how = r.pick(OPTION_MUTATIONS)
            res = how(r, entry, kw)
            if res is None or res[0] in notes["touched"]:
                continue
            name, value, expect = res
            desc = f"{name} = {value!r:.40}"
        notes["touched"].add(name)
        notes["desc"].append(desc)
        if value is None and name not in kw:
            notes["desc"][-1] += " (absent anyway)"
        # What the torch variant needs to undo or re-judge a mutation torch cannot express.
        notes["log"].append(dict(name=name, old=kw.get(name, ABSENT), expect=expect,
                                 how=how.__name__, desc=desc))
        kw[name] = value
        return expect
    return None


def same_view(a, b):
    return (a is b or (a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
                       and a.shape == b.shape and a.strides == b.strides
                       and a.dtype == b.dtype))


def aliased(entry, kw):
    """Whether an output shares memory with another array the C library sees (refused, except an
    initial_state given again as final_state: the in-place update)."""
    visible = [n for n in arrays(kw) if kw[n].size and c_visible(entry, kw, n)]
    for o in outputs(entry, kw):
        if o not in visible:
            continue
        for n in visible:
            if n == o:
                continue
            if {n, o} == {"initial_state", "final_state"} and same_view(kw[n], kw[o]):
                continue
            if np.may_share_memory(kw[o], kw[n]):
                return True
    return False


# ---- running a case ------------------------------------------------------------------------------

KNOWN_NAMES = {"options", "device", "args", "workspace", "state_pool", "state_indices",
               "checkpoint_states", "intermediate_chunk_size", "chunk_size", "max_num_seqs",
               "transpose_state_layout", "A_log", "dt_bias", "cu_seqlens"}
for _fn in [getattr(flash_kda, e) for e in ENTRIES]:
    KNOWN_NAMES.update(inspect.signature(_fn).parameters)
NAME = re.compile(r"^([A-Za-z_][\w]*)(?:\.[\w]+)?(?:\[[^\]]*\])?: ")


def root_of(a):
    root, b = a, a.base
    while b is not None:
        if isinstance(b, np.ndarray):
            root = b
        b = getattr(b, "base", None)
    return root


def byte_mask(root, view):
    """Which bytes of the contiguous root array `view` covers."""
    mask = np.zeros(root.nbytes, bool)
    if view.size == 0:
        return mask
    offset = view.__array_interface__["data"][0] - root.__array_interface__["data"][0]
    marks = np.lib.stride_tricks.as_strided(
        mask[offset:], view.shape + (view.itemsize,), view.strides + (1,))
    marks[...] = True
    return mask


def raw_bytes(root):
    if root.dtype.hasobject:  # no bytes to compare: the objects themselves
        return np.array([repr(x) for x in root.reshape(-1)] + [""] * (root.nbytes - root.size))
    return np.ascontiguousarray(root).view(np.uint8).reshape(-1).copy()


def title(case, entry, notes, expect):
    return (f"case {case} ({entry}; {'; '.join(notes['desc']) or 'valid call'}; expected "
            f"{expect}); rerun with FKDA_FUZZ_ONLY={case}")


def combine(expects):
    return "raise" if "raise" in expects else ("any" if "any" in expects else "ok")


def make_case(case):
    """(entry, kw, notes) of a case: its valid random call, then most of the time one or two
    mutations, which notes["log"] lists with their expectations."""
    r = Rand([BASE_SEED, case])
    entry = ENTRIES[case % len(ENTRIES)]
    kw = GENERATORS[entry](r)
    notes = {"touched": set(), "desc": [], "log": []}
    if r.coin(0.75):
        for _ in range(1 if r.coin(0.7) else 2):
            mutate(r, entry, kw, notes)
    return entry, kw, notes


def run_case(case):
    """Runs one case; returns the problems found (strings)."""
    entry, kw, notes = make_case(case)
    expect = combine([m["expect"] for m in notes["log"]])
    if expect != "raise" and aliased(entry, kw):
        expect = "raise"
    return execute(title(case, entry, notes, expect), entry, kw, expect, entry)


def execute(where, entry, kw, expect, stats, call_kw=None, returned=None, mode=None):
    """Calls `entry` with call_kw (default: kw) and checks the outcome; returns the problems.

    kw holds the call's NumPy arrays: its arguments themselves, or (the torch variant) NumPy
    views of the very memory of the torch tensors of call_kw, in which the writes are checked.
    returned(result) gives (problems, the result in terms of kw) for a torch call; mode is a
    context manager around the call (torch's grad mode). stats: the key of STATS.
    """
    if TRACE:
        print(where, file=sys.stderr, flush=True)
    call_kw = kw if call_kw is None else call_kw

    # The memory of every array of the call, whole: the buffer a view was cut from included.
    names = arrays(kw)
    key = {n: id(root_of(kw[n])) for n in names}
    roots = {key[n]: root_of(kw[n]) for n in names}
    assert all(root.flags.c_contiguous for root in roots.values())
    snapshot = {k: raw_bytes(root) for k, root in roots.items()}
    before = {n: kw[n].copy() for n in names}
    problems = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with mode if mode is not None else contextlib.nullcontext():
                result = getattr(flash_kda, entry)(**call_kw)
        except flash_kda.FlashKDAError as e:
            message = str(e)
            m = NAME.match(message)
            if not isinstance(e, (ValueError, TypeError)):
                problems.append(f"{type(e).__name__} is neither a ValueError nor a TypeError: "
                                f"{message}")
            if not m or (m.group(1) not in KNOWN_NAMES and m.group(1) not in kw):
                problems.append(f"the message does not start with an argument's name: {message}")
            for k, root in roots.items():
                if not np.array_equal(raw_bytes(root), snapshot[k]):
                    holders = [n for n in names if key[n] == k]
                    problems.append(f"raised {message!r} but wrote into {holders}")
            STATS[stats, "raised"] += 1
            if expect == "ok":
                problems.append(f"a valid call raised {type(e).__name__}: {message}")
            return [f"{where}: {p}" for p in problems]
        except Exception as e:  # noqa: BLE001 (what escapes is the finding)
            return [f"{where}: raised {type(e).__module__}.{type(e).__name__}, not a "
                    f"FlashKDAError: {e}"]
    STATS[stats, "ok"] += 1
    if expect == "raise":
        problems.append("succeeded, but the call is invalid")
    if returned is not None:
        found, result = returned(result)
        problems += found
    # Nothing outside the outputs written: no input, no gap of a strided output.
    written = [n for n in outputs(entry, kw) if n in names]
    for k, root in roots.items():
        allowed = np.zeros(root.nbytes, bool)
        for n in written:
            if key[n] == k:
                allowed |= byte_mask(root, kw[n])
        changed = np.flatnonzero((raw_bytes(root) != snapshot[k]) & ~allowed)
        if changed.size:
            holders = [n for n in names if key[n] == k]
            problems.append(f"wrote byte {changed[0]} of the memory of {holders}, outside the "
                            "outputs")
    if not problems:
        a = dict(kw)
        a.update(before)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                CHECKS[entry](kw, a, result, problems)
        except Exception as e:  # noqa: BLE001
            problems.append(f"succeeded, but the model cannot read these arguments "
                            f"({type(e).__name__}: {e}): accepted an invalid call?")
    return [f"{where}: {p}" for p in problems]


def cases_of(chunk, cases=None, chunks=None):
    """The case numbers of one chunk: every chunks-th of `cases` (the NumPy variant's counts by
    default), or FKDA_FUZZ_ONLY's case alone in chunk 0."""
    if ONLY is not None:
        return [int(ONLY)] if chunk == 0 else []
    cases, chunks = (N_CASES if cases is None else cases), (CHUNKS if chunks is None else chunks)
    return list(range(chunk, cases, chunks))


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_fuzz_arguments(chunk):
    seen = STATS.copy()
    problems = []
    for case in cases_of(chunk):
        problems += run_case(case)
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems[:30])
    outcomes = {outcome for (_, outcome), n in (STATS - seen).items() if n}
    if len(cases_of(chunk)) >= 50:  # both kinds of call were made, not only one
        assert outcomes == {"ok", "raised"}, outcomes


# ---- the same cases with torch CPU tensors -------------------------------------------------------
#
# Torch case c is case c above, the same call with the same mutations, with every array argument
# made a torch CPU tensor of the same dtype, shape, strides and values, in memory torch allocated
# (each NumPy buffer copied into a torch storage at a random storage offset, its views rebuilt
# there with as_strided, so that views of one buffer still share one storage). The checks are
# those above, run on NumPy views of that very memory (kw); what the call returns must be torch
# tensors of the right dtype and shape (the outputs passed in, themselves), not requiring grad.
#
# What torch cannot express (negative and odd byte strides, byte-swapped, object, str and
# datetime arrays) is left a NumPy array (a mixed call, which the package takes on the CPU), or
# the argument gets its value from before the mutation and a torch mutation instead: a tensor
# that requires grad (a leaf, an nn.Parameter or a view of one; the fla entry points refuse it
# while autograd is on), a tensor on the meta device, a dtype flash_kda has no code for (float64,
# complex, int8, uint16..., float8) or another one, a sparse, mkldnn or nested tensor, a
# channels-last layout. Read-only NumPy arrays become writable tensors (torch has no read-only
# tensors), so an output that was read-only must now be written. Each case also runs under one
# of autograd on, torch.no_grad() or torch.inference_mode(), and some tensors get strides of
# their own on dimensions of size 1 (torch's views make such strides; they address nothing).
#
# FKDA_FUZZ_TORCH_CASES (default 400) sets the number of torch cases; FKDA_FUZZ_SEED and
# FKDA_FUZZ_ONLY act on both variants. CUDA tensors need a GPU (tests/gpu).

TORCH_CASES = int(os.environ.get("FKDA_FUZZ_TORCH_CASES", "400"))
TORCH_CHUNKS = 4
# The arguments whose kind decides the kind of what a call returns (out is allocated like v,
# chunk_kda's o and final state like q, h like k, decode_layer's out like mixed_qkv): never left
# NumPy arrays, so that a successful call must return torch tensors only.
ANCHORS = ("q", "k", "v", "mixed_qkv")
# What the fla entry points refuse, while autograd is on, when it requires grad.
AUTOGRAD_INPUTS = ("q", "k", "v", "g", "beta", "A_log", "dt_bias", "initial_state")
FLA_ENTRIES = ("chunk_kda", "fused_recurrent_kda", "fused_recurrent_kda_fwd")


class TorchOnly:
    """Stands in kw for a tensor whose memory NumPy cannot view (meta, sparse, nested...)."""

    def __init__(self, what):
        self.what = what

    def __repr__(self):
        return f"<torch-only {self.what}>"


def torch_dtypes(torch):
    """NumPy dtype -> torch dtype, for each dtype both have."""
    names = {F32: "float32", F16: "float16", I32: "int32", I64: "int64", BOOL: "bool",
             U8: "uint8", np.dtype(np.float64): "float64", np.dtype(np.int8): "int8",
             np.dtype(np.int16): "int16", np.dtype(np.uint16): "uint16",
             np.dtype(np.uint32): "uint32", np.dtype(np.uint64): "uint64",
             np.dtype(np.complex64): "complex64", np.dtype(np.complex128): "complex128"}
    if BF16 is not None:
        names[BF16] = "bfloat16"
    return {d: getattr(torch, n) for d, n in names.items() if hasattr(torch, n)}


def tensor_from_numpy(torch, x):
    """torch.from_numpy, bfloat16 (ml_dtypes) included: the tensor shares x's memory."""
    if BF16 is not None and x.dtype == BF16:
        return torch.from_numpy(x.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(x)


def to_numpy(torch, x):
    """A NumPy view of a CPU tensor's memory (bfloat16 as ml_dtypes' bfloat16)."""
    x = x.detach()
    if x.dtype == torch.bfloat16 and BF16 is not None:
        return x.view(torch.int16).numpy().view(BF16)
    return x.numpy()


class TorchCall:
    """The torch tensors of one case, and NumPy views (mirrors) of their memory."""

    def __init__(self, torch, t, mode):
        self.torch, self.t, self.mode = torch, t, mode
        self.td = torch_dtypes(torch)
        self.stores = {}  # id(NumPy buffer) -> (torch uint8 storage, NumPy view of it, offset)
        self.made = {}  # id(NumPy array) -> (tensor, mirror)
        self.size1 = {}  # a view's address, shape, strides, dtype -> its torch strides
        self.desc = []

    def expressible(self, x):
        return (x.dtype.isnative and x.dtype in self.td
                and all(s >= 0 and s % x.itemsize == 0 for s in x.strides))

    def share(self, roots):
        """One storage for the buffers of several arguments, one after another (disjoint)."""
        offsets, size = [], 0
        for root in roots:
            size += 16 * self.t.int(0, 2)
            offsets.append(size)
            size += root.nbytes + -root.nbytes % 16
        st = self.torch.zeros(size + 16, dtype=self.torch.uint8)
        view = st.numpy()
        for root, pre in zip(roots, offsets):
            view[pre:pre + root.nbytes] = raw_bytes(root)
            self.stores[id(root)] = (st, view, pre)

    def store(self, root):
        if id(root) not in self.stores:
            pre = 16 * self.t.int(0, 4)  # where the buffer starts in the storage
            size = pre + root.nbytes + 16
            st = self.torch.zeros(size + -size % 16, dtype=self.torch.uint8)
            view = st.numpy()
            view[pre:pre + root.nbytes] = raw_bytes(root)
            self.stores[id(root)] = (st, view, pre)
        return self.stores[id(root)]

    def tensor(self, x):
        """(tensor, mirror): x in torch memory, sharing a storage with the other views of x's
        buffer, and a NumPy view of the same elements."""
        if id(x) in self.made:
            return self.made[id(x)]
        root = root_of(x)
        st, view, pre = self.store(root)
        offset = pre + x.__array_interface__["data"][0] - root.__array_interface__["data"][0]
        mirror = np.ndarray(x.shape, x.dtype, buffer=view, offset=offset, strides=x.strides)
        size = x.itemsize
        strides = [s // size for s in x.strides]
        if offset % size == 0:
            typed = st[:st.numel() - st.numel() % size].view(self.td[x.dtype])
            tensor = self.torch.as_strided(typed, x.shape, strides, offset // size)
        else:  # misaligned: only from_numpy makes such a tensor
            tensor = tensor_from_numpy(self.torch, mirror)
        tensor = self.size1_strides(x, tensor)
        self.made[id(x)] = tensor, mirror
        return tensor, mirror

    def size1_strides(self, x, tensor):
        """Sometimes other strides on dimensions of size 1 (the same for every view of those
        elements, so that a final state given as the initial state's view stays that view)."""
        sig = (x.__array_interface__["data"][0], x.shape, x.strides, x.dtype.str)
        if sig not in self.size1:
            strides = list(tensor.stride())
            if 1 in x.shape and self.t.coin(0.1):
                for i, n in enumerate(x.shape):
                    if n == 1:
                        strides[i] = self.t.pick([0, 1, 3, x.size, self.t.int(1, 2**20)])
                self.desc.append(f"strides {strides} for shape {list(x.shape)}")
            self.size1[sig] = strides
        strides = self.size1[sig]
        if strides == list(tensor.stride()):
            return tensor
        return tensor.as_strided(tensor.shape, strides, tensor.storage_offset())

    def place(self, x, strides=None, dtype=None):
        """(tensor, mirror): the values of x in a storage of their own, with these element
        strides (default: contiguous)."""
        torch = self.torch
        dtype = dtype or self.td[x.dtype]
        if strides is None:
            strides = list(torch.empty(x.shape, dtype=torch.uint8).stride())
        size = x.itemsize
        extent = sum((n - 1) * s for n, s in zip(x.shape, strides)) + 1 if x.size else 0
        st = torch.zeros(extent * size + 16, dtype=torch.uint8)
        typed = st[:st.numel() - st.numel() % size].view(dtype)
        tensor = torch.as_strided(typed, x.shape, strides, 0)
        mirror = np.ndarray(x.shape, x.dtype, buffer=st.numpy(),
                            strides=[s * size for s in strides])
        mirror[...] = x
        return tensor, mirror

    def grad_on(self):
        return self.mode == "grad"


def tm_requires_grad(c, entry, kw, name, x):
    """A float tensor that requires grad: a leaf, an nn.Parameter or a view of such a leaf."""
    torch = c.torch
    tensor, mirror = c.tensor(x)
    if not tensor.dtype.is_floating_point:
        return None
    own = tensor.as_strided(tensor.shape, tensor.stride(), tensor.storage_offset())
    how = c.t.pick(["leaf", "parameter", "view"])
    if how == "parameter":
        own = torch.nn.Parameter(own)
    else:
        own.requires_grad_(True)
        if how == "view":
            own = own.as_strided(own.shape, own.stride(), own.storage_offset())
    expect = "ok"
    if entry in FLA_ENTRIES and c.grad_on() and name in AUTOGRAD_INPUTS:
        # chunk_kda does not take A_log and dt_bias without the gate in the kernel
        unused = entry == "chunk_kda" and name in ("A_log", "dt_bias") and not truthy(
            kw.get("use_gate_in_kernel"))
        expect = "any" if unused else "raise"
    return own, mirror, expect, f"{name} requires grad ({how}, {c.mode})"


def torch_refused(entry, kw, name):
    """The expectation for an argument that is no tensor the package can take."""
    return expect_if(described(entry, kw, name)
                     or (name == "cu_seqlens_cpu" and live(entry, kw, name)))


def tm_meta(c, entry, kw, name, x):
    tensor, _ = c.tensor(x)
    meta = c.torch.empty_strided(tuple(tensor.shape), tensor.stride(), dtype=tensor.dtype,
                                 device="meta")
    return meta, TorchOnly("meta"), torch_refused(entry, kw, name), f"{name} on the meta device"


TORCH_ONLY_DTYPES = ["float8_e4m3fn", "float8_e5m2", "complex32"]


def tm_dtype(c, entry, kw, name, x):
    """Another dtype: one NumPy has too (float64, complex, int8, uint16..., or one of flash_kda's),
    or one only torch has (float8, complex32)."""
    torch = c.torch
    options = list(c.td) + [n for n in TORCH_ONLY_DTYPES if hasattr(torch, n)]
    new = c.t.pick(options)
    if isinstance(new, str):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            values = tensor_from_numpy(torch, np.ascontiguousarray(f64(x).astype(np.float32)))
            tensor = values.to(getattr(torch, new))
        int_of = {1: torch.uint8, 2: torch.int16, 4: torch.int32}[tensor.element_size()]
        return (tensor, to_numpy(torch, tensor.view(int_of)), dtype_expect(entry, kw, name, new),
                f"{name} as torch.{new}")
    if new == x.dtype:
        return None
    tensor, mirror = c.place(as_dtype(x, new))
    return tensor, mirror, dtype_expect(entry, kw, name, new), f"{name} as {tensor.dtype}"


def tm_layout(c, entry, kw, name, x):
    """A sparse (COO or CSR), mkldnn or nested tensor of the same values."""
    torch = c.torch
    dense, _ = c.place(x)
    how = c.t.pick(["sparse_coo", "sparse_csr", "mkldnn", "nested"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if how == "sparse_coo" and x.ndim >= 1:
            tensor = dense.to_sparse()
        elif how == "sparse_csr" and x.ndim == 2:
            tensor = dense.to_sparse_csr()
        elif how == "mkldnn" and x.ndim >= 1 and dense.dtype == torch.float32:
            tensor = dense.to_mkldnn()
        elif how == "nested" and x.ndim >= 2 and x.shape[0] >= 1:
            tensor = torch.nested.nested_tensor(list(dense.unbind(0)))
        else:
            return None
    return tensor, TorchOnly(how), torch_refused(entry, kw, name), f"{name} {how}"


def layout_expect(entry, kw, name, shape, strides):
    """What the call with a tensor of this layout must do (see the C library's rules, and the 5-D
    state arrays' merge)."""
    size = int(np.prod(shape))
    if len(shape) == 5 and size and shape[0] > 1 and shape[1] > 1 \
            and strides[0] != strides[1] * shape[1]:
        return "raise"
    if not c_visible(entry, kw, name):
        return "any"
    if size and shape[-1] > 1 and strides[-1] != 1:
        return "raise"
    return "ok"


def tm_channels_last(c, entry, kw, name, x):
    torch = c.torch
    if x.ndim not in (4, 5):
        return None
    fmt = torch.channels_last if x.ndim == 4 else torch.channels_last_3d
    strides = list(torch.empty(x.shape, dtype=torch.uint8, memory_format=fmt).stride())
    tensor, mirror = c.place(x, strides)
    return (tensor, mirror, layout_expect(entry, kw, name, x.shape, strides),
            f"{name} channels-last {strides}")


def tm_negated(c, entry, kw, name, x):
    """A float32 tensor of the same values whose memory holds minus them (z.conj().imag, with
    torch's neg bit; strides of 2)."""
    if x.dtype != F32:
        return None
    torch = c.torch
    values, _ = c.place(x)
    z = torch.complex(torch.zeros_like(values), -values)
    return (z.conj().imag, z.numpy().imag, torch_refused(entry, kw, name),
            f"{name} a negated view")


def tm_numpy(c, entry, kw, name, x):
    if name in ANCHORS:
        return None
    return x, x, "ok", f"{name} left a NumPy array"


TORCH_MUTATIONS = [tm_requires_grad, tm_requires_grad, tm_meta, tm_dtype, tm_dtype, tm_layout,
                   tm_channels_last, tm_negated, tm_numpy]


def pack_inputs(entry, kw, log, desc):
    """q and k (and v, of the same dtype and shape) as slices of one buffer along the heads, as a
    fused projection's output split into them ([B, T, 3 H, K]): views that share memory."""
    names = [n for n in ("q", "k", "v") if isinstance(kw.get(n), np.ndarray) and n not in log]
    if names[:2] != ["q", "k"] or kw["q"].ndim != 4:
        return
    q = kw["q"]
    names = [n for n in names if kw[n].shape == q.shape and kw[n].dtype == q.dtype]
    if len(names) < 2:
        return
    H = q.shape[2]
    buf = np.empty(q.shape[:2] + (len(names) * H,) + q.shape[3:], q.dtype)
    for i, n in enumerate(names):
        kw[n] = copy_in(buf[:, :, i * H:(i + 1) * H], kw[n])
    desc.append(f"{', '.join(names)} slices of one buffer")


def torch_case(torch, case):
    """(where, entry, kw, tkw, expect, mode) of torch case `case`: kw the NumPy mirrors (or the
    NumPy arrays left as they are), tkw the arguments of the call."""
    entry, kw, notes = make_case(case)
    t = Rand([BASE_SEED, case, 1])
    mode = t.pick(["grad", "grad", "grad", "no_grad", "inference_mode"])
    c = TorchCall(torch, t, mode)
    log = {m["name"]: m for m in notes["log"]}
    expects = {m["name"]: m["expect"] for m in notes["log"]}
    desc = list(notes["desc"]) + [mode]
    keep, redo = set(), []
    for name in arrays(kw):
        x = kw[name]
        if c.expressible(x):
            how = log.get(name, {}).get("how")
            if how == "m_read_only":
                expects[name] = "ok"  # torch has no read-only tensors
                desc.append(f"{name} writable in torch")
            elif how == "m_add_axis" and name in outputs(entry, kw) and x.size == 0:
                # NumPy's broadcast view is read-only; a writable one of no elements may be
                # valid: 13 x 0 rows of a 5-D state array merge into the 0 rows expected.
                expects[name] = "any"
            continue
        assert name in log, name  # only a mutation makes what torch cannot express
        if name not in ANCHORS and t.coin(0.5):
            keep.add(name)
            desc.append(f"{name} left a NumPy array")
            continue
        old = log[name]["old"]
        del expects[name]
        desc.append(f"{name} not a torch tensor: as before")
        if old is ABSENT:
            del kw[name]
        else:
            kw[name] = old
            if isinstance(old, np.ndarray):
                redo.append(name)
    if t.coin(0.15):
        pack_inputs(entry, kw, log, desc)
    converted = [n for n in arrays(kw) if n not in keep]
    roots = list({id(root_of(kw[n])): root_of(kw[n]) for n in converted}.values())
    if len(roots) > 1 and t.coin(0.2):
        shared = [roots[i] for i in sorted(t.g.permutation(len(roots))[:t.int(2, len(roots))])]
        c.share(shared)
        desc.append(f"{len(shared)} buffers in one storage")
    tkw, nkw = dict(kw), dict(kw)
    for name in converted:
        tkw[name], nkw[name] = c.tensor(kw[name])
    free = [n for n in arrays(kw) if role(entry, kw, n) and n not in log and n not in keep]
    if free and t.coin(0.4 if notes["log"] else 0.6):
        redo.append(t.pick(free))
    for name in redo:
        for _ in range(10):
            res = t.pick(TORCH_MUTATIONS)(c, entry, nkw, name, kw[name])
            if res is not None:
                break
        else:
            continue
        tkw[name], nkw[name], expects[name], d = res
        desc.append(d)
    desc += c.desc
    expect = combine(list(expects.values()))
    if expect != "raise" and aliased(entry, nkw):
        expect = "raise"
    where = title(case, entry, dict(notes, desc=desc), expect)
    context = {"grad": torch.enable_grad, "no_grad": torch.no_grad,
               "inference_mode": torch.inference_mode}[mode]()
    return f"torch {where}", entry, nkw, tkw, expect, context


def torch_returned(torch, entry, tkw, kw, result):
    """(problems, result with NumPy arrays for tensors): what a call on torch tensors returns
    must be torch tensors, the outputs passed in themselves, others new, of the right dtype and
    shape, on the CPU and not requiring grad."""
    problems = []

    def check(what, x, dtype=None, shape=None, given=None):
        if given is not None:
            if x is not given:
                problems.append(f"{what}: returned {type(x).__name__}, not the tensor passed in")
            return
        if not isinstance(x, torch.Tensor):
            problems.append(f"{what}: returned {type(x).__name__}, not a torch tensor")
            return
        if (x.device.type != "cpu" or x.dtype != dtype or tuple(x.shape) != tuple(shape)
                or x.requires_grad or x.layout != torch.strided):
            problems.append(f"{what}: returned {x.dtype} {list(x.shape)} on {x.device} "
                            f"(requires_grad {x.requires_grad}, {x.layout}), expected {dtype} "
                            f"{list(shape)} on the CPU")

    q, v = tkw.get("q"), tkw.get("v")
    if entry in ("prefill", "decode"):
        check("out", result, v.dtype, v.shape, tkw.get("out"))
    elif entry == "decode_layer":
        check("out", result, tkw["mixed_qkv"].dtype, tkw["output_gate"].shape, tkw.get("out"))
    elif entry == "fwd":
        if result is not None:
            problems.append(f"fwd: returned {type(result).__name__}")
    elif isinstance(result, tuple) and len(result) >= 2:
        B, T, H, K = q.shape
        HV, V = v.shape[2], v.shape[3]
        cu = kw.get("cu_seqlens")
        N = B if cu is None else len(cu) - 1
        vf = fla_v_first(kw)
        state = state_shape(N, HV, K, V, vf)
        if entry == "chunk_kda":
            check("o", result[0], q.dtype, (B, T, HV, V))
        else:
            check("o", result[0], v.dtype, v.shape, tkw.get("out"))
        if entry == "fused_recurrent_kda_fwd" and inplace_fwd(kw):
            check("initial_state", result[1], given=tkw["initial_state"])
        elif truthy(kw.get("output_final_state")):
            check("final_state", result[1], torch.float32, state)
        if entry == "chunk_kda" and len(result) == 3:
            NT = tuple(getattr(result[2], "shape", (0, 0))[1:2])
            check("h", result[2], tkw["k"].dtype, (B,) + NT + state[1:])

    mirrors = {id(x): kw[n] for n, x in tkw.items() if isinstance(x, torch.Tensor)}

    def back(x):
        if isinstance(x, tuple):
            return tuple(back(y) for y in x)
        if isinstance(x, torch.Tensor):
            return mirrors[id(x)] if id(x) in mirrors else to_numpy(torch, x)
        return x

    try:
        return problems, back(result)
    except Exception as e:  # noqa: BLE001
        return problems + [f"the result cannot be read ({type(e).__name__}: {e})"], result


def run_torch_case(torch, case):
    where, entry, kw, tkw, expect, context = torch_case(torch, case)
    return execute(where, entry, kw, expect, ("torch", entry), call_kw=tkw, mode=context,
                   returned=lambda result: torch_returned(torch, entry, tkw, kw, result))


@pytest.mark.parametrize("chunk", range(TORCH_CHUNKS))
def test_fuzz_arguments_torch(chunk):
    torch = pytest.importorskip("torch")
    seen = STATS.copy()
    problems = []
    for case in cases_of(chunk, TORCH_CASES, TORCH_CHUNKS):
        problems += run_torch_case(torch, case)
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems[:30])
    outcomes = {outcome for (_, outcome), n in (STATS - seen).items() if n}
    if len(cases_of(chunk, TORCH_CASES, TORCH_CHUNKS)) >= 50:
        assert outcomes == {"ok", "raised"}, outcomes


# ---- what the fuzzer found in the Python layer, as fixed cases -----------------------------------
#
# Each was found by the cases above (before the fix in python/flash_kda) and is kept here as a
# plain call, so that it does not depend on the generator staying as it is.


def small_prefill():
    r = Rand([7, 1])
    kw = token_inputs(r, 1, 5, 2, 2, 4, 4, F32, "none", False, False)
    kw["out"] = poison((1, 5, 2, 4), F32)
    return kw


def small_layer():
    r = Rand([7, 2])
    B, H, HV, K, V, W = 2, 1, 1, 4, 4, 3
    dim = 2 * H * K + HV * V
    return dict(mixed_qkv=r.normal((B, dim)).astype(F32),
                conv_weight=r.normal((dim, W), 0.5).astype(F32),
                conv_state=r.normal((B, W - 1, dim)).astype(F32),
                g=r.normal((B, HV, K)).astype(F32), beta=r.normal((B, HV)).astype(F32),
                state_pool=r.normal((B, HV, K, V)).astype(F32),
                output_gate=r.normal((B, HV, V)).astype(F32),
                norm_weight=np.ones(V, F32), A_log=np.zeros(HV, F32),
                out=poison((B, HV, V), F32))


def call_prefill(**extra):
    return lambda: flash_kda.prefill(**small_prefill(), **extra)


def call_chunk_kda(**extra):
    kw = small_prefill()
    del kw["out"]
    if extra.get("k") == "list":
        extra["k"] = kw["k"].tolist()
    kw.update(extra)
    return lambda: flash_kda.chunk_kda(**kw)


def call_layer(**extra):
    return lambda: flash_kda.decode_layer(**dict(small_layer(), **extra))


def call_fused(function="fused_recurrent_kda", **extra):
    kw = small_prefill()
    del kw["out"]
    return lambda: getattr(flash_kda, function)(**kw, **extra)


CU = np.array([0, 2, 5], np.int64)
FOUND = [
    # float() of an int beyond a double's range raised OverflowError
    ("scale_huge_int", call_prefill(scale=10**400), flash_kda.InvalidArgumentError, "scale"),
    ("lower_bound_huge_int", call_prefill(gate="lower_bound", lower_bound=-10**400),
     flash_kda.InvalidArgumentError, "lower_bound"),
    ("layer_lower_bound_huge_int", call_layer(lower_bound=-10**400),
     flash_kda.InvalidArgumentError, "lower_bound"),
    ("layer_norm_eps_huge_int", call_layer(norm_eps=10**400), flash_kda.InvalidArgumentError,
     "norm_eps"),
    ("chunk_kda_safe_gate_huge_int", call_chunk_kda(use_gate_in_kernel=True, safe_gate=True,
                                                    lower_bound=-10**400),
     flash_kda.InvalidArgumentError, "lower_bound"),
    ("layer_scale_huge_fraction", call_layer(scale=Fraction(10**400, 3)),
     flash_kda.InvalidArgumentError, "scale"),
    # ctypes kept the low 32 bits of num_threads: 2**32 + 1 ran on one thread
    ("num_threads_2_32_plus_1", call_prefill(num_threads=2**32 + 1),
     flash_kda.InvalidArgumentError, "num_threads"),
    ("num_threads_2_64_plus_2", call_layer(num_threads=2**64 + 2),
     flash_kda.InvalidArgumentError, "num_threads"),
    ("num_threads_2_31", call_prefill(num_threads=2**31), flash_kda.InvalidArgumentError,
     "num_threads"),
    # chunk_kda: `chunk_size not in (32, 64)` on an array raised NumPy's ValueError
    ("chunk_size_array", call_chunk_kda(chunk_size=np.array([32, 64])),
     flash_kda.ArgumentTypeError, "chunk_size"),
    # chunk_kda(return_intermediate_states=True) read k.dtype before checking k
    ("h_with_k_a_list", call_chunk_kda(return_intermediate_states=True, k="list"),
     flash_kda.ArgumentTypeError, "k"),
    ("h_with_k_none", call_chunk_kda(return_intermediate_states=True, k=None),
     flash_kda.ArgumentTypeError, "k"),
    # chunk_kda: cu_seqlens_cpu went to NumPy unchecked (int() of a str, np.diff of a 0-d array)
    ("cu_seqlens_cpu_str", call_chunk_kda(cu_seqlens=CU, cu_seqlens_cpu="ab",
                                          return_intermediate_states=True),
     flash_kda.FlashKDAError, "cu_seqlens_cpu"),
    ("cu_seqlens_cpu_0d", call_chunk_kda(cu_seqlens=CU, cu_seqlens_cpu=np.array(5),
                                         return_intermediate_states=True),
     flash_kda.InvalidArgumentError, "cu_seqlens_cpu"),
    ("cu_seqlens_cpu_object", call_chunk_kda(cu_seqlens=CU, cu_seqlens_cpu=object(),
                                             return_intermediate_states=True),
     flash_kda.FlashKDAError, "cu_seqlens_cpu"),
    ("cu_seqlens_cpu_float", call_chunk_kda(cu_seqlens=CU, cu_seqlens_cpu=CU.astype(F32),
                                            return_intermediate_states=True),
     flash_kda.DTypeError, "cu_seqlens_cpu"),
    # ... and compared cu_seqlens of any dtype with it: int() of a str raised NumPy's ValueError
    ("cu_seqlens_str_with_cu_seqlens_cpu", call_chunk_kda(cu_seqlens=np.zeros(3, "U3"),
                                                          cu_seqlens_cpu=CU,
                                                          return_intermediate_states=True),
     flash_kda.DTypeError, "cu_seqlens"),
    # fused_recurrent_kda copied any initial_state NumPy could convert: str raised NumPy's
    # ValueError, object arrays of None became NaN states, int8 / float64 / byte-swapped ran
    ("initial_state_str", call_fused(initial_state=np.full((1, 2, 4, 4), "a")),
     flash_kda.DTypeError, "initial_state"),
    ("initial_state_none_objects", call_fused(initial_state=np.full((1, 2, 4, 4), None)),
     flash_kda.DTypeError, "initial_state"),
    ("initial_state_int8", call_fused(initial_state=np.zeros((1, 2, 4, 4), np.int8)),
     flash_kda.DTypeError, "initial_state"),
    ("initial_state_int32", call_fused(initial_state=np.zeros((1, 2, 4, 4), np.int32)),
     flash_kda.DTypeError, "initial_state"),
    ("initial_state_float64", call_fused(initial_state=np.zeros((1, 2, 4, 4))),
     flash_kda.DTypeError, "initial_state"),
    ("initial_state_byte_swapped", call_fused(initial_state=np.zeros((1, 2, 4, 4), ">f4")),
     flash_kda.DTypeError, "initial_state"),
    ("fwd_not_in_place_initial_state_bool", call_fused(
        "fused_recurrent_kda_fwd", inplace_final_state=False,
        initial_state=np.zeros((1, 2, 4, 4), bool)), flash_kda.DTypeError, "initial_state"),
    # fused_recurrent_kda_fwd(inplace_final_state=False) ignored num_accepted_tokens silently;
    # in place the C library refuses it without 2-D indices
    ("fwd_not_in_place_accepted_tokens", call_fused(
        "fused_recurrent_kda_fwd", inplace_final_state=False,
        num_accepted_tokens=np.ones(1, np.int32)),
     flash_kda.InvalidArgumentError, "num_accepted_tokens"),
]


@pytest.mark.parametrize("make_call, error, name", [c[1:] for c in FOUND],
                         ids=[c[0] for c in FOUND])
def test_found_by_fuzzing(make_call, error, name):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a NumPy conversion warning would be a finding too
        with pytest.raises(error) as info:
            make_call()
    e = info.value
    assert isinstance(e, flash_kda.FlashKDAError) and isinstance(e, (ValueError, TypeError))
    assert str(e).startswith(f"{name}: "), str(e)


def test_found_by_fuzzing_writes_nothing():
    kw = small_layer()
    before = {n: x.copy() for n, x in kw.items()}
    for bad in (dict(num_threads=2**32 + 1), dict(scale=10**400), dict(norm_eps=-10**400)):
        with pytest.raises(flash_kda.InvalidArgumentError):
            flash_kda.decode_layer(**kw, **bad)
        for n, x in kw.items():
            np.testing.assert_array_equal(x, before[n], err_msg=n)
    # and the in-range neighbours still run
    flash_kda.decode_layer(**kw, num_threads=2, scale=Fraction(1, 2), norm_eps=10**-5)
    assert np.isfinite(kw["out"]).all()


def test_fused_recurrent_kda_still_takes_float_initial_states():
    """The fix refuses what is not a float; float32, float16 and bfloat16 states still run, and
    give what a float32 copy gives."""
    kw = small_prefill()
    del kw["out"]
    h0 = Rand([7, 3]).normal((1, 2, 4, 4)).astype(F32)
    o32, s32 = flash_kda.fused_recurrent_kda(**kw, initial_state=h0, output_final_state=True)
    for dtype in FLOATS[1:]:
        low = h0.astype(dtype)
        o, s = flash_kda.fused_recurrent_kda(**kw, initial_state=low, output_final_state=True)
        o_ref, s_ref = flash_kda.fused_recurrent_kda(**kw, initial_state=low.astype(F32),
                                                     output_final_state=True)
        np.testing.assert_array_equal(o, o_ref)
        np.testing.assert_array_equal(s, s_ref)
    assert np.isfinite(o32).all() and s32.dtype == F32


# ---- found in the C library ----------------------------------------------------------------


def test_fast_prefill_keeps_small_decays_after_a_huge_one():
    """The fast CPU prefill formed a pair's decay as G_i - G_j of float32 running sums: after a
    decay of -1e10 the later -0.5s vanished in G's rounding (fixed in src/cpu/prefill_chunked.c;
    the C test is test_cpu_prefill's far lower bounds)."""
    one = np.ones((1, 3, 1, 1), F32)  # q = k = v = 1
    g = np.array([-1e10, -0.5, -0.5], F32).reshape(1, 3, 1, 1)  # the gate "none": log decays
    beta = np.full((1, 3, 1), 0.5, F32)
    exact = flash_kda.prefill(one, one, one, g, beta, scale=1.0, reference=True)
    np.testing.assert_allclose(exact.ravel(), [0.5, 0.651633, 0.697618], rtol=1e-5)
    fast = flash_kda.prefill(one, one, one, g, beta, scale=1.0)  # gives [0.5, 0.75, 0.875]
    np.testing.assert_allclose(fast, exact, rtol=1e-5)


def test_kda_numpy_sigmoid_keeps_relative_precision():
    """The model's b = sigmoid(beta) for a logit of -45 was 0 (1 + tanh rounded), which made a
    correct decode look wrong by a factor of 1e11."""
    x = np.array([-745.0, -45.0, -10.0, 0.0, 10.0, 45.0, 800.0])
    want = np.array([math.exp(-745.0)] + [1.0 / (1.0 + math.exp(-v)) for v in x[1:]])
    np.testing.assert_allclose(sigmoid(x), want, rtol=1e-12, atol=0)


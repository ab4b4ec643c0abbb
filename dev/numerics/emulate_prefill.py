"""A float64 CPU emulation of the CUDA prefill's roundings (and of fla's chunk_kda): error budgets.

Every value is a float64 array; a rounding function applied where the kernels round stands for each
storage or tensor-core operand, and each can be switched per plan to exact (fp64), fp32, tf32, bf16,
fp16 or a bf16 hi + lo pair. The algebra is that of src/cuda/prefill_prep.cu and prefill_chain.cu
(docs/prefill.md, docs/design.md section 1.5); with every rounding set to exact the emulation equals
the float64 token-by-token reference (tests/python/kda_numpy.py) to ~1e-13.

What it cannot mirror exactly (see dev/numerics/README.md): the order and rounding of the fp32
additions inside one mma (taken here as an exact 16-term sum rounded once to fp32 per k-step of 16;
Hopper's tensor cores truncate some low bits instead), ex2.approx/rsqrtf's last-ulp errors (taken as
correctly rounded fp32), nvcc's FMA contractions in the fp32 loops (a float64 step rounded once to
fp32 stands for an FMA), and, for fla, Triton's tf32 operand conversion (round to nearest here).

Run: python dev/numerics/emulate_prefill.py [--quick] (prints the tables of dev/numerics/README.md).
"""

import argparse
import pathlib
import sys

import ml_dtypes
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "python"))
import kda_numpy  # noqa: E402  (the float64 reference of the tests)

LOG2E = 1.4426950408889634
CHUNK = 16  # the CUDA prefill's chunk
REF_ROW = 7  # the centre of the exponents (prefill_prep.cu: Gref = G[7])
KSTEP = 16  # keys (or tokens) per mma k-step: fp32 rounding of the accumulator after each

# ---- roundings -----------------------------------------------------------------------------------

MODES = ("exact", "fp32", "tf32", "tf32z", "bf16", "fp16", "hilo", "hilo16")
PAIRS = {"hilo": "bf16", "hilo16": "fp16"}  # two-term operands and the dtype of their terms


def _tf32(x, truncate=False):
    """fp32 range, 10 explicit mantissa bits: round to nearest (ties away, as cvt.rna.tf32), or
    the low 13 bits dropped (truncate: what a tensor core does with fp32 bits it is handed)."""
    f = np.asarray(x, dtype=np.float32)
    bits = f.view(np.uint32)
    finite = np.isfinite(f)
    bias = np.uint32(0) if truncate else np.uint32(0x1000)
    rounded = ((bits + bias) & np.uint32(0xFFFFE000)).view(np.float32)
    return np.where(finite, rounded, f).astype(np.float64)


def rnd(x, mode):
    """x (float64) rounded to one operand of the given mode ('hilo' gives hi + lo back, summed)."""
    x = np.asarray(x, dtype=np.float64)
    if mode == "exact":
        return x
    if mode == "fp32":
        return x.astype(np.float32).astype(np.float64)
    if mode in ("tf32", "tf32z"):
        return _tf32(x, truncate=mode == "tf32z")
    with np.errstate(over="ignore"):
        f = x.astype(np.float32)
        if mode == "bf16":
            return f.astype(ml_dtypes.bfloat16).astype(np.float64)
        if mode == "fp16":
            return f.astype(np.float16).astype(np.float64)  # overflow to inf, subnormals kept
    if mode in PAIRS:
        return sum(split(x, mode))
    raise ValueError(mode)


def split(x, mode):
    """The terms an operand enters a tensor-core product with: [hi, lo] for a pair ('hilo': bf16
    terms, 'hilo16': fp16 terms), else [x]."""
    if mode not in PAIRS:
        return [rnd(x, mode)]
    f = np.asarray(x, dtype=np.float64).astype(np.float32).astype(np.float64)
    hi = rnd(f, PAIRS[mode])
    return [hi, rnd(f - hi, PAIRS[mode])]  # x - hi is exact in fp32 (prefill_prep.cu)


class Num:
    """The arithmetic of one run: `r32` rounds an fp32 result (identity in the exact plan), and
    `dot` is a tensor-core product with fp32 accumulation per k-step."""

    def __init__(self, fp32=True):
        self.fp32 = fp32

    def r32(self, x):
        return rnd(x, "fp32") if self.fp32 else np.asarray(x, dtype=np.float64)

    def dot(self, a, b, ma, mb, acc=None, kstep=KSTEP):
        """a @ b over the last axis of a / first of b, each operand rounded to its mode; a 'hilo'
        operand enters as hi and lo (hi*hi + hi*lo + lo*hi when both are pairs; the small terms
        first). The fp32 accumulator is rounded after every k-step."""
        ta, tb = split(a, ma), split(b, mb)
        pairs = [(i, j) for i in range(len(ta)) for j in range(len(tb)) if i + j < 2]
        pairs.sort(key=lambda p: -(p[0] + p[1]))
        n = a.shape[-1]
        out = np.zeros(a.shape[:-1] + b.shape[1:]) if acc is None else acc
        for i, j in pairs:
            for k0 in range(0, n, kstep):
                out = self.r32(out + ta[i][..., k0 : k0 + kstep] @ tb[j][k0 : k0 + kstep])
        return out


# ---- plans ---------------------------------------------------------------------------------------

# Every operand the CUDA prefill rounds, with the mode the kernels use (bf16 inputs).
CUDA_PLAN = dict(
    prep="fp32",  # elementwise prep arithmetic (norms, gate, exponents, forward substitution)
    acc="fp32",  # tensor-core accumulation
    L_ops="tf32",  # kc, ki of the L product (prep step 4), rounded to nearest tf32
    Mqk_ops="tf32",  # qc, ki of the Mqk product
    W_ops="tf32",  # step 6, W = bINV Kd: fp32 sums, or (unchecked gates) a product of bINV and kc
    #                in this mode times 2^Gref (the tensor-core form); checked gates keep fp32 sums
    bINV="hilo",  # record: (I + L)^-1 diag(b)
    Mqk="hilo",  # record: the masked scale qd ki^T
    W="bf16",  # record: -W
    Kr="bf16",  # record: Kr
    Qd="bf16",  # record: Qd
    v="bf16",  # the chain's copy of v
    S="bf16",  # the chain's copy of the state (for W S and Qd S)
    Vnew="bf16",  # U = U0 - W S as the operand of Kr^T U and Mqk U
    U0="chain",  # U0 = bINV V: formed by the chain from the record's bINV ("chain"), or by
    #             the prep (tf32 bINV, v as read) and stored in this mode (fla's u)
    O0="chain",  # O = Qd S + Mqk U in the chain ("chain"), or, with U0 by the prep, as
    #             O = Qe S + O0: Qe = Qd - Mqk W and O0 = Mqk U0 formed by the prep (tf32
    #             products), Qe rounded as Qd, O0 stored in this mode; O then needs S alone
    U0_ops="tf32",  # the operands of the prep's U0 = bINV V (with U0 by the prep)
    O0_ops="tf32",  # the operands of the prep's Mqk W and Mqk U0 (with O0 by the prep)
    out="dtype",  # the output, stored in v's dtype (not a choice of the kernels)
)

# Every rounding exact, in the kernels' form (U0 and O in the chain; the prep's forms are chosen
# by setting U0 / O0 to "exact" on top of it).
EXACT_PLAN = dict({name: "exact" for name in CUDA_PLAN}, U0="chain", O0="chain")


def plan(**changes):
    p = dict(CUDA_PLAN)
    for name, mode in changes.items():
        if name not in p:
            raise KeyError(name)
        p[name] = mode
    return p


# ---- inputs --------------------------------------------------------------------------------------


def make_inputs(seed, dtype, T=1024, H=2, K=128, V=128, gate="lower_bound", lower_bound=-5.0,
                h0_scale=0.5, log_rate=(-4.0, 1.0), v_scale=1.0):
    """Inputs as tests/gpu/test_prefill_options_gpu.py draws them for fla's comparison: randn q, k,
    v rounded to `dtype`, beta logits in `dtype`, g in fp32 (raw gate input, or for gate "none" a
    log decay -exp(A) softplus(x) with a per-head rate exp(A), A uniform in log_rate), A_log and
    dt_bias fp32, an fp32 initial state. All as float64 arrays holding the rounded values."""
    rng = np.random.default_rng(seed)
    d = {"bf16": "bf16", "fp16": "fp16", "fp32": "fp32"}[dtype]
    x = dict(
        q=rnd(rng.standard_normal((1, T, H, K)), d),
        k=rnd(rng.standard_normal((1, T, H, K)), d),
        v=rnd(v_scale * rng.standard_normal((1, T, H, V)), d),
        beta=rnd(rng.standard_normal((1, T, H)), d),
        h0=rnd(h0_scale * rng.standard_normal((1, H, K, V)), "fp32"),
        dtype=dtype,
        gate=gate,
    )
    if gate == "none":
        rate = np.exp(rng.uniform(log_rate[0], log_rate[1], H))[:, None]
        x["g"] = rnd(-rate * np.logaddexp(0.0, rng.standard_normal((1, T, H, K))), "fp32")
        x["A_log"] = x["dt_bias"] = None
        x["lower_bound"] = None
    else:
        x["g"] = rnd(rng.standard_normal((1, T, H, K)), "fp32")
        x["A_log"] = rnd(rng.uniform(-1.0, 1.0, H), "fp32")
        x["dt_bias"] = rnd(0.5 * rng.standard_normal((H, K)), "fp32")
        x["lower_bound"] = lower_bound
    return x


def reference(x):
    """The float64 token-by-token recurrence (docs/design.md 1.1) on the rounded inputs."""
    o, st = kda_numpy.kda(x["q"], x["k"], x["v"], x["g"], x["beta"], initial_state=x["h0"],
                          gate=x["gate"], A_log=x["A_log"], dt_bias=x["dt_bias"],
                          lower_bound=x["lower_bound"], l2norm_qk=x.get("l2norm", True),
                          beta_sigmoid=x.get("beta_sigmoid", True))
    return o[0], st[0]  # [T, H, V], [H, K, V]


# ---- the shared pre-activations ------------------------------------------------------------------


def _sigmoid(x, num):
    return num.r32(1.0 / num.r32(1.0 + num.r32(np.exp(-x))))


def _head_inputs(x, h, num):
    """q, k after the L2 norm, the log2 decay a, b after the sigmoid, for head h (fp32 math)."""
    q, k = x["q"][0, :, h], x["k"][0, :, h]

    def norm(y):
        r = num.r32(1.0 / np.sqrt(num.r32(np.sum(y * y, axis=-1, keepdims=True)) + 1e-6))
        return num.r32(y * r)

    qn, kn = (norm(q), norm(k)) if x.get("l2norm", True) else (q, k)
    g = x["g"][0, :, h]
    if x["gate"] == "none":
        a = num.r32(g * LOG2E)
    else:
        A = num.r32(np.exp(x["A_log"][h]))
        gate_scale = num.r32(x["lower_bound"] * LOG2E)
        a = num.r32(gate_scale * _sigmoid(num.r32(A * num.r32(g + x["dt_bias"][h])), num))
    a = np.maximum(a, -150.0)
    b = _sigmoid(x["beta"][0, :, h], num) if x.get("beta_sigmoid", True) else x["beta"][0, :, h]
    return qn, kn, a, b


def _chunks(y, C):
    """[T, ...] -> [T / C, C, ...], zero rows past the end."""
    T = y.shape[0]
    n = -(-T // C)
    pad = np.zeros((n * C - T,) + y.shape[1:])
    return np.concatenate([y, pad]).reshape((n, C) + y.shape[1:])


def _cumsum(a, num):
    """G inside each chunk, summed token by token in fp32. a: [n, C, K]."""
    G = np.empty_like(a)
    acc = np.zeros(a[:, 0].shape)
    for i in range(a.shape[1]):
        acc = num.r32(acc + a[:, i])
        G[:, i] = acc
    return G


# ---- the CUDA prefill ----------------------------------------------------------------------------


def _forward_substitution(L, num):
    """INV = (I + L)^-1 for strictly lower L [n, 16, 16], fp32, as prefill_prep_steps.cuh step 5:
    two partial sums (even and odd j) per entry, one rounding per FMA."""
    n, C, _ = L.shape
    inv = np.zeros_like(L)
    eye = np.eye(C)
    for i in range(C):
        s0 = np.broadcast_to(eye[i], (n, C)).copy()
        s1 = np.zeros((n, C))
        for j in range(0, i, 2):
            s0 = num.r32(s0 - L[:, i, j, None] * inv[:, j])
            if j + 1 < i:
                s1 = num.r32(s1 - L[:, i, j + 1, None] * inv[:, j + 1])
        inv[:, i] = num.r32(s0 + s1)
    return inv


def cuda_records(qn, kn, a, b, scale, p, num, gate_checked, l2norm=True, chunk=CHUNK,
                 pairwise_prep=False):
    """The prep kernel for one head: the per-chunk records (rounded to the plan's modes). chunk:
    tokens per chunk (64 only with pairwise_prep; cuda64_records is the 64-token prep's plan).
    pairwise_prep: L and Mqk pairwise in fp32 and W in fp32 for every chunk, as
    the checked kernels do where the centred form leaves its range: an upper bound on the prep's
    accuracy, so that two chunk sizes on it differ by the chain's roundings alone."""
    qc_, kc_, G = _chunks(qn, chunk), _chunks(kn, chunk), _cumsum(_chunks(a, chunk), num)
    b_ = _chunks(b[:, None], chunk)[..., 0]
    if pairwise_prep:
        gate_checked = True
    n, C, K = kc_.shape
    Gref, Gl = G[:, REF_ROW : REF_ROW + 1], G[:, C - 1 : C]
    e = num.r32(np.exp2(G))
    kd = num.r32(kc_ * e)
    Qd = num.r32(num.r32(scale * qc_) * e)
    Kr = num.r32(kc_ * num.r32(np.exp2(num.r32(Gl - G))))
    gamma = num.r32(np.exp2(Gl[:, 0]))
    with np.errstate(over="ignore"):
        kc = num.r32(kc_ * num.r32(np.exp2(num.r32(G - Gref))))  # step 6's centred keys
    L, M, pairwise = _step4(qc_, kc_, G, b_, scale, p, num, gate_checked, l2norm, pairwise_prep)
    inv = _forward_substitution(L, num)
    bINV = num.r32(inv * b_[:, None, :])
    if p["W_ops"] == "fp32" or gate_checked:
        W = num.r32(bINV @ kd)  # step 6: fp32 sums of 16 terms (the rounding of each step not kept)
    else:  # W = (bINV kc) diag(2^Gref), the safe gate keeping 2^Gref in range
        W = num.r32(_batched(num, bINV, kc, p["W_ops"]) * num.r32(np.exp2(Gref)))
    return dict(negW=-W, Kr=Kr, Qd=Qd, gamma=gamma, bINV=bINV, Mqk=M, n=n,
                pairwise=int(pairwise.sum()))


def _step4(qc_, kc_, G, b_, scale, p, num, gate_checked, l2norm=True, pairwise_prep=False):
    """L = strict_lower(diag(b) k k^T decayed) and Mqk = scale lower_incl(q k^T decayed) of 16-token
    blocks [n, 16, K]: step 4 (factors centred at row 7, the plan's L_ops / Mqk_ops), or step 4'
    (pairwise fp32) for the blocks whose centred span leaves the range (checked gates) or for all
    (pairwise_prep). Returns L, M and the per-block pairwise flags."""
    C = G.shape[1]
    Gref = G[:, REF_ROW : REF_ROW + 1]
    lower, incl = np.tril(np.ones((C, C)), -1), np.tril(np.ones((C, C)))
    span = np.max(np.abs(G - Gref), axis=(1, 2))
    pairwise = gate_checked & ~(span <= (112.0 if l2norm else 64.0))
    if pairwise_prep:
        pairwise[:] = True
    with np.errstate(over="ignore", invalid="ignore"):
        ec, ei = num.r32(np.exp2(num.r32(G - Gref))), num.r32(np.exp2(num.r32(Gref - G)))
        kc, ki, qc = num.r32(kc_ * ec), num.r32(kc_ * ei), num.r32(qc_ * ec)
        kiT = np.swapaxes(ki, 1, 2)
        Lp = _batched(num, kc, kiT, p["L_ops"])
        Mp = _batched(num, qc, kiT, p["Mqk_ops"])
    with np.errstate(invalid="ignore"):  # an overflowed centred product: replaced below
        L = num.r32(b_[:, :, None] * Lp) * lower
        M = num.r32(scale * Mp) * incl
    if pairwise.any():
        idx = np.nonzero(pairwise)[0]
        dG = G[idx][:, :, None, :] - G[idx][:, None, :, :]  # [m, i, j, K]
        kj = kc_[idx][:, None, :, :] * np.exp2(np.minimum(dG, 0.0))
        Lpw = num.r32(np.sum(kc_[idx][:, :, None, :] * kj, axis=-1))
        Mpw = num.r32(np.sum(qc_[idx][:, :, None, :] * kj, axis=-1))
        L[idx] = num.r32(b_[idx][:, :, None] * Lpw) * lower
        M[idx] = num.r32(scale * Mpw) * incl
    return L, M, pairwise


SUB = 16  # the 64-token prep's sub-blocks (docs/history/prefill.md, "v18-chunk64")


def cuda64_records(qn, kn, a, b, scale, p, num):
    """The planned 64-token prep for one head (docs/history/prefill.md, "v18-chunk64"):
    per chunk of 64 tokens, four sub-blocks of 16.
      - G: the chunk's running log2 decay from its first token (every factor 2^G, 2^(Gl - G) <= 1).
      - L and Mqk on the diagonal 16 x 16 blocks: today's step 4 (factors centred at the
        sub-block's row 7, the plan's L_ops / Mqk_ops), or step 4' (pairwise fp32) where the
        centred span is out of range.
      - Off the diagonal (sub-block s > r): the sub-block's first row n = 16 s as the reference,
        x_i 2^(G_i - G_n) and k_j 2^(G_n - G_j), both factors <= 1 for a decaying gate, one
        16 x 16 product over the keys (the same operand modes).
      - INV = (I + L)^-1 by blocks: D_s = (I + L_ss)^-1 by today's forward substitution, then
        INV_sr = -D_s sum_{r <= t < s} L_st INV_tr in fp32.
      - W = bINV Kd on W_ops operands; Qd, Kr, gamma as at 16 tokens."""
    C = 4 * SUB
    qc_, kc_, G = _chunks(qn, C), _chunks(kn, C), _cumsum(_chunks(a, C), num)
    b_ = _chunks(b[:, None], C)[..., 0]
    n, _, K = kc_.shape
    Gl = G[:, C - 1 : C]
    e = num.r32(np.exp2(G))
    kd = num.r32(kc_ * e)
    Qd = num.r32(num.r32(scale * qc_) * e)
    Kr = num.r32(kc_ * num.r32(np.exp2(num.r32(Gl - G))))
    gamma = num.r32(np.exp2(Gl[:, 0]))
    L, M = np.zeros((n, C, C)), np.zeros((n, C, C))
    pairwise = 0
    for sb in range(4):
        rows = slice(SUB * sb, SUB * sb + SUB)
        # the diagonal block: today's 16-token step 4 / 4' on the sub-block's rows
        Ld, Md, pw = _step4(qc_[:, rows], kc_[:, rows], G[:, rows], b_[:, rows], scale, p, num,
                            gate_checked=True)
        L[:, rows, rows], M[:, rows, rows] = Ld, Md
        pairwise += int(pw.sum())
        if sb == 0:
            continue
        with np.errstate(over="ignore", under="ignore", invalid="ignore"):
            gn = G[:, SUB * sb : SUB * sb + 1]
            fi = num.r32(np.exp2(num.r32(G[:, rows] - gn)))
            ki, qi = num.r32(kc_[:, rows] * fi), num.r32(qc_[:, rows] * fi)
            cols = slice(0, SUB * sb)
            fj = num.r32(np.exp2(num.r32(gn - G[:, cols])))
            kjT = np.swapaxes(num.r32(kc_[:, cols] * fj), 1, 2)
            L[:, rows, cols] = num.r32(b_[:, rows, None] * _batched(num, ki, kjT, p["L_ops"]))
            M[:, rows, cols] = num.r32(scale * _batched(num, qi, kjT, p["Mqk_ops"]))
    inv = np.zeros_like(L)
    for sb in range(4):
        rs = slice(SUB * sb, SUB * sb + SUB)
        D = _forward_substitution(L[:, rs, rs], num)
        inv[:, rs, rs] = D
        for r in range(sb):
            cr = slice(SUB * r, SUB * r + SUB)
            acc = np.zeros((n, SUB, SUB))
            for t in range(r, sb):
                ct = slice(SUB * t, SUB * t + SUB)
                acc = num.r32(acc + L[:, rs, ct] @ inv[:, ct, cr])
            inv[:, rs, cr] = num.r32(-(D @ acc))
    bINV = num.r32(inv * b_[:, None, :])
    W = num.r32(_batched(num, bINV, kd, p["W_ops"]))
    return dict(negW=-W, Kr=Kr, Qd=Qd, gamma=gamma, bINV=bINV, Mqk=M, n=n, pairwise=pairwise)


def _batched(num, A, B, mode):
    """A tensor-core product per chunk: A [n, m, K] @ B [n, K, c]."""
    out = np.zeros(A.shape[:-1] + B.shape[-1:])
    ta, tb = split(A, mode), split(B, mode)
    pairs = sorted([(i, j) for i in range(len(ta)) for j in range(len(tb)) if i + j < 2],
                   key=lambda q: -(q[0] + q[1]))
    for i, j in pairs:
        for k0 in range(0, A.shape[-1], KSTEP):
            out = num.r32(out + ta[i][..., k0 : k0 + KSTEP] @ tb[j][:, k0 : k0 + KSTEP])
    return out


HELD_HI, HELD_LO = 64.0, 2.0**-6  # the fp16 chain's window (src/cuda/prefill_chain.cu)
HELD_WINDOW = (HELD_HI, HELD_LO, 3)  # (hi, lo, t): a move puts the largest value in [2^t, 2^t+1)


def _held_rescale(S, v, e, window=HELD_WINDOW, seen=None, v_own=None):
    """The fp16 chain's range rule, per warp (16 value columns): S [K, V] held scaled by 2^-e[b]
    per block b of 16 columns, v [16, V] as read. Where the largest |held| value of S and of v
    2^-e leaves [lo, hi], e[b] moves so that it lands in [2^t, 2^(t+1)) (the kernels: [8, 16));
    S is rescaled in place (powers of two: exact). seen: the state the decision reads, where it
    is not S (the check a chunk ahead: the state entering the chunk before, in the same units).
    v_own: the form written for the kernels (dev/pending 02 of the thirty-eighth session, dropped
    as slower: docs/history/prefill.md) of the check a chunk ahead: seen and v
    only say whether a decision is due; the decision itself (the same test, and the move) reads
    S and the chunk's own v, v_own. Returns S, e."""
    hi, lo, t = window
    seen = S if seen is None else seen
    for b in range(e.shape[0]):
        cols = slice(16 * b, 16 * b + 16)
        m = max(np.max(np.abs(seen[:, cols]), initial=0.0),
                np.max(np.abs(v[:, cols]), initial=0.0) * 2.0 ** -e[b])
        if v_own is not None:
            if not (m > hi or m < lo):  # not due
                continue
            m = max(np.max(np.abs(S[:, cols]), initial=0.0),
                    np.max(np.abs(v_own[:, cols]), initial=0.0) * 2.0 ** -e[b])
        if (m > hi or m < lo) and 0.0 < m < np.inf:
            en = int(np.clip(e[b] + (np.frexp(m)[1] - 1) - t, -120, 120))
            S[:, cols] *= 2.0 ** (e[b] - en)
            if seen is not S:
                seen[:, cols] *= 2.0 ** (e[b] - en)
            e[b] = en
    return S, e


def cuda_prefill(x, p=CUDA_PLAN, held_scale=False, chunk=CHUNK, pairwise_prep=False,
                 held_window=HELD_WINDOW, held_lag=False, stats=None):
    """The CUDA prefill of inputs x under plan p: (output [T, H, V], final state [H, K, V]).
    held_scale: the fp16 chain's per-warp power-of-two scale of S, v, Vnew and O (_held_rescale),
    which changes no rounding of a value in fp16's normal range, only keeps values in it;
    held_window its (hi, lo, t), held_lag: the decision on the state entering the chunk before
    and the v of that chunk and this one (the check a chunk ahead; the first chunk decides on its
    own state and v); "kernel": the form written for the kernels, where that only says whether
    the chunk decides, on its own state and v (_held_rescale's v_own). stats: a dict that gets the
    largest |held S| and |held Vnew| over the run ("S", "Vnew").
    chunk, pairwise_prep: chunk 16 and the centred prep are the kernels; chunk 64 the planned
    64-token prefill (cuda64_records' prep, the chain's products in the same modes at four times
    the size), or with pairwise_prep that chain on cuda_records' all-pairwise prep."""
    num = Num(p["prep"] == "fp32")
    acc = Num(p["acc"] == "fp32")
    T, H, K = x["q"].shape[1:]
    V = x["v"].shape[3]
    scale = K**-0.5
    gate_checked = not (x["gate"] == "lower_bound" and x["lower_bound"] >= -5.0)
    out = np.zeros((T, H, V))
    final = np.zeros((H, K, V))
    half = min(64, K)  # the two key halves of W S and Qd S (of the record's 128 keys)
    for h in range(H):
        qn, kn, a, b = _head_inputs(x, h, num)
        if chunk == 4 * SUB and not pairwise_prep:
            R = cuda64_records(qn, kn, a, b, scale, p, num)
        else:
            R = cuda_records(qn, kn, a, b, scale, p, num, gate_checked, x.get("l2norm", True),
                             chunk, pairwise_prep)
        negW, Kr, Qd = rnd(R["negW"], p["W"]), rnd(R["Kr"], p["Kr"]), rnd(R["Qd"], p["Qd"])
        KrT = np.swapaxes(Kr, 1, 2)
        vv = _chunks(x["v"][0, :, h], chunk)
        S = x["h0"][0, h].copy()
        o = np.zeros((R["n"], chunk, V))
        e = np.zeros(-(-V // 16), dtype=np.int64)  # held scale per 16 columns (0: none)
        entering = None  # the state entering the chunk before (held_lag)
        for c in range(R["n"]):
            vc = vv[c]
            if held_scale:
                seen, vs = None, vc
                v_own = None
                if held_lag and entering is not None:
                    # the state entering the chunk before, and the v of both chunks: the
                    # chunk before's v is part of how far the state grew since (a move up
                    # scales it too)
                    seen, vs = entering, np.concatenate([vv[c - 1], vc])
                    v_own = vc if held_lag == "kernel" else None
                S, e = _held_rescale(S, vs, e, held_window, seen, v_own)
                entering = S.copy()
                vc = vc * np.repeat(2.0 ** -e, 16)[:V]
            if stats is not None:
                stats["S"] = max(stats.get("S", 0.0), float(np.max(np.abs(S))))
            # U = U0 - W S: S^T (-W)^T in two key halves, then V^T bINV^T (lo, then hi)
            vn0 = acc.dot(negW[c][:, :half], S[:half], p["W"], p["S"])
            vn1 = acc.dot(negW[c][:, half:], S[half:], p["W"], p["S"]) if half < K else 0.0
            if p["U0"] == "chain":
                u0 = acc.dot(R["bINV"][c], vc, p["bINV"], p["v"])
            else:  # the prep's product of bINV (tf32) and v as read, rounded for the record
                ops = "exact" if p["U0"] == "exact" else p["U0_ops"]
                u0 = rnd(acc.dot(R["bINV"][c], vc, ops, p["v"]), p["U0"])
            vnew = acc.r32(u0 + acc.r32(vn0 + vn1))
            if stats is not None:
                stats["Vnew"] = max(stats.get("Vnew", 0.0), float(np.max(np.abs(vnew))))
            vr = vnew if p["Vnew"] in PAIRS else rnd(vnew, p["Vnew"])
            if p["O0"] != "chain":  # O = Qe S + O0, both of the prep
                ops = "exact" if p["O0"] == "exact" else p["O0_ops"]
                qe = rnd(num.r32(R["Qd"][c] + _batched(num, R["Mqk"][c][None], R["negW"][c][None],
                                                        ops)[0]), p["Qd"])
                o0 = rnd(acc.dot(R["Mqk"][c], u0, ops, ops), p["O0"])
                oa = acc.dot(qe[:, :half], S[:half], p["Qd"], p["S"])
                ob = acc.dot(qe[:, half:], S[half:], p["Qd"], p["S"]) if half < K else 0.0
                o[c] = acc.r32(acc.r32(oa + ob) + o0) * np.repeat(2.0**e, 16)[:V]
                S = acc.r32(S * R["gamma"][c][:, None])
                S = acc.dot(KrT[c], vr, "exact", p["Vnew"], acc=S)
                continue
            # O = Qd S + Mqk Vnew with the state entering the chunk, in two chains
            oa = acc.dot(Qd[c][:, :half], S[:half], p["Qd"], p["S"])
            ob = acc.dot(Qd[c][:, half:], S[half:], p["Qd"], p["S"]) if half < K else 0.0
            mt = split(R["Mqk"][c], p["Mqk"])
            if len(mt) == 2:
                oa = acc.dot(mt[1], vr, "exact", p["Vnew"], acc=oa)
                ob = acc.dot(mt[0], vr, "exact", p["Vnew"], acc=ob)
            else:
                ob = acc.dot(mt[0], vr, "exact", p["Vnew"], acc=ob)
            o[c] = acc.r32(oa + ob) * np.repeat(2.0**e, 16)[:V]
            # S' = diag(gamma) S + Kr^T Vnew
            S = acc.r32(S * R["gamma"][c][:, None])
            S = acc.dot(KrT[c], vr, "exact", p["Vnew"], acc=S)
        out[:, h] = rnd(o.reshape(-1, V)[:T], x["dtype"] if p["out"] == "dtype" else p["out"])
        final[h] = S * np.repeat(2.0**e, 16)[:V]
    return out, final


# ---- fla's chunk_kda (chunk 64), as its Triton kernels store and multiply ------------------------


def fla_prefill(x, tf32="tf32", exact=False):
    """fla's chunk_kda forward as far as its source tells: intermediate tensors (q, k after the
    norm, Aqk, (I + Akk)^-1, w, u, kg, qg, h, v_new, o) stored in the input dtype, the state in
    fp32 registers, every dot on operands of the input dtype (tf32 for fp32 inputs), the inverse
    and the diagonal 16 x 16 blocks of Akk / Aqk in fp32, the off-diagonal blocks by tf32 dots."""
    num = Num(not exact)
    D = "exact" if exact else x["dtype"]
    P = tf32 if D == "fp32" else D  # the dot operands' precision
    tf = "exact" if exact else tf32  # the off-diagonal blocks' dots
    T, H, K = x["q"].shape[1:]
    V = x["v"].shape[3]
    scale = K**-0.5
    BT, BC = 64, 16
    out = np.zeros((T, H, V))
    final = np.zeros((H, K, V))
    lower, incl = np.tril(np.ones((BT, BT)), -1), np.tril(np.ones((BT, BT)))
    blockdiag = np.kron(np.eye(BT // BC), np.ones((BC, BC)))
    for h in range(H):
        qn, kn, a, b = _head_inputs(x, h, num)
        qn, kn = rnd(qn, D), rnd(kn, D)  # l2norm_fwd writes q, k in their dtype
        q_, k_, G = _chunks(qn, BT), _chunks(kn, BT), _cumsum(_chunks(a, BT), num)
        b_ = _chunks(b[:, None], BT)[..., 0]
        v_ = _chunks(x["v"][0, :, h], BT)
        n = q_.shape[0]
        with np.errstate(over="ignore", under="ignore", invalid="ignore"):
            # Akk, Aqk: exact fp32-rounded sums on the diagonal 16 x 16 blocks (token-parallel
            # kernel), tf32 dots of the sub-block-centred factors off them (k-steps of 16 keys).
            Akk_d, Aqk_d = np.zeros((n, BT, BT)), np.zeros((n, BT, BT))
            for bi in range(BT // BC):
                rows = slice(bi * BC, (bi + 1) * BC)
                Gs, ks, qs = G[:, rows], k_[:, rows], q_[:, rows]
                f = np.exp2(np.minimum(Gs[:, :, None, :] - Gs[:, None, :, :], 0.0))
                kk = np.sum(ks[:, :, None, :] * ks[:, None, :, :] * f, -1)
                qk = np.sum(qs[:, :, None, :] * ks[:, None, :, :] * f, -1)
                Akk_d[:, rows, rows] = num.r32(b_[:, rows, None] * num.r32(kk))
                Aqk_d[:, rows, rows] = num.r32(scale * num.r32(qk))
            Akk_o, Aqk_o = np.zeros_like(Akk_d), np.zeros_like(Aqk_d)
            for bi in range(1, BT // BC):
                rows = slice(bi * BC, (bi + 1) * BC)
                gn = G[:, bi * BC : bi * BC + 1]
                fi = num.r32(np.exp2(num.r32(G[:, rows] - gn)))
                qg, kg_i = num.r32(q_[:, rows] * fi), num.r32(k_[:, rows] * fi)
                for bj in range(bi):
                    cols = slice(bj * BC, (bj + 1) * BC)
                    fj = num.r32(np.exp2(num.r32(gn - G[:, cols])))
                    kgt = np.swapaxes(num.r32(k_[:, cols] * fj), 1, 2)
                    Aqk_o[:, rows, cols] = num.r32(scale * _batched(num, qg, kgt, tf))
                    Akk_o[:, rows, cols] = num.r32(b_[:, rows, None] * _batched(num, kg_i, kgt, tf))
        Akk = np.where(blockdiag > 0, Akk_d, Akk_o) * lower
        Aqk = rnd(np.where(blockdiag > 0, Aqk_d, Aqk_o) * incl, D)
        Ainv = rnd(num.r32(np.linalg.inv(np.eye(BT) + Akk)), D)  # tf32x3 / fp32: ~fp32 accurate
        e = num.r32(np.exp2(G))
        kbg = rnd(num.r32(num.r32(k_ * b_[:, :, None]) * e), D)
        vb = rnd(num.r32(v_ * b_[:, :, None]), D)
        w = rnd(_batched(num, Ainv, kbg, P), D)
        u = rnd(_batched(num, Ainv, vb, P), D)
        kg = rnd(num.r32(k_ * num.r32(np.exp2(num.r32(G[:, -1:] - G)))), D)
        qg = rnd(num.r32(q_ * e), D)
        gl = num.r32(np.exp2(G[:, -1]))
        S = x["h0"][0, h].copy()
        o = np.zeros((n, BT, V))
        for c in range(n):
            hD = rnd(S, D)  # h stored for the output kernel; the same cast feeds w h
            ws = np.zeros((BT, V))
            for k0 in range(0, K, 64):  # one dot per 64 keys, summed
                ws = num.r32(ws + num.dot(w[c][:, k0 : k0 + 64], hD[k0 : k0 + 64], P, P))
            vnew = rnd(num.r32(u[c] - ws), D)
            S = num.r32(S * gl[c][:, None])
            S = num.r32(S + num.dot(kg[c].T, vnew, P, P))
            oc = num.r32(scale * num.dot(qg[c], hD, P, P))
            o[c] = num.r32(oc + num.dot(Aqk[c], vnew, P, P))
        out[:, h] = rnd(o.reshape(-1, V)[:T], D)
        final[h] = S
    return out, final


# ---- errors and tables ---------------------------------------------------------------------------


def rel(x, ref):
    return kda_numpy.rel_err(x, ref)


def errors(fn, x, ref):
    o, s = fn(x)
    return rel(o, ref[0]), rel(s, ref[1])


# Ablation: the CUDA plan with one rounding raised to exact (or a pair to one bf16 term).
ABLATION = [
    ("cuda (as the kernels round)", {}),
    ("S copy exact", dict(S="exact")),
    ("-W exact", dict(W="exact")),
    ("Kr exact", dict(Kr="exact")),
    ("Qd exact", dict(Qd="exact")),
    ("v exact", dict(v="exact")),
    ("Vnew exact", dict(Vnew="exact")),
    ("bINV exact", dict(bINV="exact")),
    ("Mqk exact", dict(Mqk="exact")),
    ("L operands exact", dict(L_ops="exact")),
    ("Mqk operands exact", dict(Mqk_ops="exact")),
    ("accumulation exact", dict(acc="exact")),
    ("bINV one bf16", dict(bINV="bf16")),
    ("Mqk one bf16", dict(Mqk="bf16")),
    ("Mqk operands one bf16", dict(Mqk_ops="bf16")),
]

# Candidate plans for fp16 and fp32 inputs. Costs: extra bf16-mma per warp-chunk (56 now) and
# record bytes (14,848 now); a tf32 mma of the same shape counted as two bf16 ones (half rate).
HL = "hilo"
# The fp16 family's prep keeps Mqk's operands as bf16 hi + lo (hi*hi + hi*lo + lo*hi) and forms
# step 6 from bf16 hi + lo pairs, taken here as fp32 sums (the pairs carry ~16 bits).
CHAIN16 = dict(W="fp16", Kr="fp16", Qd="fp16", S="fp16", v="fp16", Vnew="fp16", bINV="hilo16",
               Mqk="hilo16", Mqk_ops="hilo", W_ops="fp32")
CANDIDATES = [
    ("(a) every product tf32", dict(L_ops="tf32", Mqk_ops="tf32", bINV="tf32", Mqk="tf32",
                                    W="tf32", Kr="tf32", Qd="tf32", v="tf32", S="tf32",
                                    Vnew="tf32")),
    ("(b) S copy hi+lo", dict(S=HL)),
    ("(c) S, Kr, -W hi+lo", dict(S=HL, Kr=HL, W=HL)),
    ("(d) v, Vnew hi+lo", dict(v=HL, Vnew=HL)),
    ("(e) v, Vnew, Kr hi+lo", dict(v=HL, Vnew=HL, Kr=HL)),
    ("(f) v, Vnew, Kr, -W hi+lo", dict(v=HL, Vnew=HL, Kr=HL, W=HL)),
    ("(g) v, Vnew, Kr, -W, S hi+lo", dict(v=HL, Vnew=HL, Kr=HL, W=HL, S=HL)),
    ("(h) (g) + Qd hi+lo", dict(v=HL, Vnew=HL, Kr=HL, W=HL, S=HL, Qd=HL)),
    ("(i) (h) + L operands hi+lo", dict(v=HL, Vnew=HL, Kr=HL, W=HL, S=HL, Qd=HL, L_ops=HL)),
    ("(n) v, Vnew, Kr, S, Qd hi+lo", dict(v=HL, Vnew=HL, Kr=HL, S=HL, Qd=HL)),
    ("(o) v, Vnew, S, Qd hi+lo", dict(v=HL, Vnew=HL, S=HL, Qd=HL)),
    ("(k) fp16 chain (bINV, Mqk fp16 pairs)", dict(CHAIN16)),
    ("(l) fp16 chain, bINV and Mqk one fp16", dict(CHAIN16, bINV="fp16", Mqk="fp16")),
    ("(m) fp16 chain + L operands hi+lo", dict(CHAIN16, L_ops=HL)),
]


# The bf16 family's prep products on tf32 operands (the kernels since 2026-12-05) against the
# plan before them (bf16 L operands, hi + lo Mqk operands, fp32 step 6).
PREP_TF32 = [
    ("before: L bf16, Mqk hi+lo, W fp32", dict(L_ops="bf16", Mqk_ops="hilo", W_ops="fp32")),
    ("(p) L and Mqk operands tf32", dict(W_ops="fp32")),
    ("(p) truncated instead of rounded", dict(L_ops="tf32z", Mqk_ops="tf32z", W_ops="fp32")),
    ("(q) (p) + W from tf32 bINV and kc: as the kernels round", {}),
]

# The fp16 family's prep products (plan (m), the kernels today: L's operands bf16 hi + lo, Mqk's
# hi + lo, step 6 from hi + lo pairs) with operands in tf32 instead, as the bf16 family's are.
PREP16_TF32 = [
    ("(m) as the kernels round", {}),
    ("(m) + L operands tf32", dict(L_ops="tf32")),
    ("(m) + L operands tf32, W from tf32 bINV and kc", dict(L_ops="tf32", W_ops="tf32")),
    ("(m) + Mqk operands tf32", dict(Mqk_ops="tf32")),
    ("(m) + L and Mqk operands tf32", dict(L_ops="tf32", Mqk_ops="tf32")),
]


def cost(p):
    """(extra bf16-mma per warp-chunk, extra record bytes) of plan p against the CUDA plan."""

    def prod(ma, mb):  # mma per product, relative to one bf16 mma
        if {"tf32", "tf32z", "fp32"} & {ma, mb}:
            return 2
        ta, tb = 1 + (ma in PAIRS), 1 + (mb in PAIRS)
        return 3 if ta == tb == 2 else ta * tb

    n = (16 * prod(p["W"], p["S"]) + 2 * prod(p["bINV"], p["v"]) + 16 * prod(p["Kr"], p["Vnew"])
         + 16 * prod(p["Qd"], p["S"]) + 2 * prod(p["Mqk"], p["Vnew"]))
    size = {"bf16": 2, "fp16": 2, "hilo": 4, "hilo16": 4, "tf32": 4, "tf32z": 4, "fp32": 4,
            "exact": 8}
    rec = (2048 * (size[p["W"]] + size[p["Kr"]] + size[p["Qd"]]) + 512
           + 256 * (size[p["bINV"]] + size[p["Mqk"]]))
    return n - 56, rec - 14848


def median_errors(fn, dtype, seeds, **kw):
    eo, es = [], []
    for s in seeds:
        x = make_inputs(s, dtype, **kw)
        ref = reference(x)
        o, st = errors(fn, x, ref)
        eo.append(o)
        es.append(st)
    return float(np.median(eo)), float(np.median(es))


def match(plans, dtypes, seeds, **kw):
    """Per seed, ours / fla's error for each plan; prints the largest ratio over the seeds (the
    GPU test asks ours <= 1.2 x fla + 1e-4 case by case)."""
    worst = {name: {d: [0.0, 0.0] for d in dtypes} for name, _ in plans}
    for s in seeds:
        for d in dtypes:
            x = make_inputs(s, d, **kw)
            ref = reference(x)
            fo, fs = errors(fla_prefill, x, ref)
            for name, ch in plans:
                o, st = errors(lambda y, ch=ch: cuda_prefill(y, plan(**ch)), x, ref)
                w = worst[name][d]
                w[0], w[1] = max(w[0], o / fo), max(w[1], st / fs)
    print("| plan | " + " | ".join(f"{d} in: out / state" for d in dtypes) + " |")
    print("|---|" + "---|" * len(dtypes))
    for name, _ in plans:
        print(f"| {name} | " + " | ".join(f"{worst[name][d][0]:.2f} / {worst[name][d][1]:.2f}"
                                          for d in dtypes) + " |", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="T=256, one seed")
    ap.add_argument("--T", type=int, default=1024)
    ap.add_argument("--H", type=int, default=2)
    ap.add_argument("--K", type=int, default=128)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--gate", default="lower_bound", choices=["lower_bound", "none"])
    ap.add_argument("--lower-bound", type=float, default=-5.0)
    ap.add_argument("--log-rate", default="-4,1", help="gate none: range of the per-head log rate")
    ap.add_argument("--only", default="",
                    help="comma list of sections: check,fla,ablation,plans,match,range,prep,prep16,"
                         "chunk64,chunk64ops,heldlag")
    args = ap.parse_args()
    T = 256 if args.quick else args.T
    seeds = range(1 if args.quick else args.seeds)
    kw = dict(T=T, H=args.H, K=args.K, V=args.K, gate=args.gate, lower_bound=args.lower_bound,
              log_rate=tuple(float(r) for r in args.log_rate.split(",")))
    only = set(args.only.split(",")) if args.only else {"check", "fla", "ablation", "plans",
                                                        "match", "range", "prep"}
    dtypes = ("bf16", "fp16", "fp32")
    print(f"T={T} H={args.H} K=V={args.K} gate={args.gate}"
          + (f"({args.lower_bound})" if args.gate == "lower_bound"
             else f" log rate {args.log_rate}")
          + f" seeds={list(seeds)}; relative Frobenius error (output / fp32 final state), median")

    if "check" in only:
        x = make_inputs(0, "fp32", **kw)
        ref = reference(x)
        eo, es = errors(lambda y: cuda_prefill(y, EXACT_PLAN), x, ref)
        print(f"cuda, exact plan vs float64 reference: output {eo:.2e}, state {es:.2e}")
        eo, es = errors(lambda y: fla_prefill(y, exact=True), x, ref)
        print(f"fla, exact vs float64 reference: output {eo:.2e}, state {es:.2e}")

    def row(name, fn):
        cells = []
        for d in dtypes:
            eo, es = median_errors(fn, d, seeds, **kw)
            cells.append(f"{eo:.2e} / {es:.2e}")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)

    head = "| plan | bf16 in | fp16 in | fp32 in |\n|---|---|---|---|"
    if "fla" in only:
        print(head)
        row("fla emulation (tf32 rounded)", fla_prefill)
        row("fla emulation (tf32 truncated)", lambda y: fla_prefill(y, tf32="tf32z"))
        row("cuda (as the kernels round)", cuda_prefill)
    if "ablation" in only:
        print(head)
        for name, ch in ABLATION[1:]:
            row(name, lambda y, ch=ch: cuda_prefill(y, plan(**ch)))
    if "plans" in only:
        print(head.replace("| plan |", "| plan (+mma, +bytes) |"))
        for name, ch in CANDIDATES:
            extra = cost(plan(**ch))
            row(f"{name} (+{extra[0]}, +{extra[1]})", lambda y, ch=ch: cuda_prefill(y, plan(**ch)))
    if "match" in only:
        print("largest ratio ours / fla (rounded tf32) over the seeds")
        chosen = [("cuda (as the kernels round)", {})] + [c for c in CANDIDATES if c[0][:3] in
                                                          ("(a)", "(h)", "(n)", "(k)", "(m)")]
        match(chosen, ("fp16", "fp32"), seeds, **kw)
    if "range" in only:
        print("where fp16 operands break (plan (k), fp32 inputs, seed 0)")
        k16 = dict(next(c for c in CANDIDATES if c[0].startswith("(k)"))[1])
        for what, p, extra in (
            ("(k) as it is", k16, {}),
            ("(k), v x 1e5 (past fp16's range)", k16, dict(v_scale=1e5)),
            ("cuda plan, v x 1e5", {}, dict(v_scale=1e5)),
            ("(k), initial state x 1e5", k16, dict(h0_scale=0.5e5)),
            ("(k) + the centred L, Mqk operands in fp16", dict(k16, L_ops="fp16",
                                                             Mqk_ops="hilo16"), {}),
        ):
            x = make_inputs(0, "fp32", **dict(kw, **extra))
            with np.errstate(all="ignore"):
                eo, es = errors(lambda y, p=p: cuda_prefill(y, plan(**p)), x, reference(x))
            print(f"| {what} | {eo:.2e} / {es:.2e} |")
        print("the fp16 chain's held scale (plan (m), fp32 inputs, seed 0)")
        m16 = dict(next(c for c in CANDIDATES if c[0].startswith("(m)"))[1])
        for what, extra in (("as it is", {}), ("v x 1e5", dict(v_scale=1e5)),
                            ("initial state x 1e5", dict(h0_scale=0.5e5)),
                            ("v and initial state x 1e-6", dict(v_scale=1e-6, h0_scale=0.5e-6))):
            x = make_inputs(0, "fp32", **dict(kw, **extra))
            ref = reference(x)
            with np.errstate(all="ignore"):
                plain = errors(lambda y: cuda_prefill(y, plan(**m16)), x, ref)
                held = errors(lambda y: cuda_prefill(y, plan(**m16), held_scale=True), x, ref)
            print(f"| (m), {what} | without: {plain[0]:.2e} / {plain[1]:.2e} "
                  f"| held scale: {held[0]:.2e} / {held[1]:.2e} |", flush=True)
    if "heldlag" in only:
        # docs/history/prefill.md, "Next for the fp16 row: the range check a chunk ahead": the
        # decision on the state entering the chunk before, in a lower window, against the rule.
        print("the fp16 chain's held scale decided a chunk ahead (plan (m)); output / state error,")
        print("the largest |held S| and |held Vnew| of the run (fp16's largest: 65504)")
        m16 = dict(next(c for c in CANDIDATES if c[0].startswith("(m)"))[1])
        rules = (("the rule at the chunk: [2^-6, 64], t = 3", HELD_WINDOW, False),
                 ("a chunk ahead, the same window", HELD_WINDOW, True),
                 ("due a chunk ahead, decided at the chunk", HELD_WINDOW, "kernel"),
                 ("a chunk ahead, [2^-9, 8], t = 0", (8.0, 2.0**-9, 0), True))
        cases = (("fp16 in", "fp16", {}), ("fp32 in", "fp32", {}),
                 ("fp32 in, v x 1e5", "fp32", dict(v_scale=1e5)),
                 ("fp32 in, initial state x 1e5", "fp32", dict(h0_scale=0.5e5)),
                 ("fp32 in, v and initial state x 1e-6", "fp32",
                  dict(v_scale=1e-6, h0_scale=0.5e-6)))
        print("| inputs | " + " | ".join(r[0] for r in rules) + " |")
        print("|---|" + "---|" * len(rules))
        for what, dtype, extra in cases:
            cells = [[] for _ in rules]
            for sd in seeds:
                x = make_inputs(sd, dtype, **dict(kw, **extra))
                ref = reference(x)
                for i, (_, win, lag) in enumerate(rules):
                    st = {}
                    with np.errstate(all="ignore"):
                        eo, es = errors(lambda y, win=win, lag=lag, st=st: cuda_prefill(
                            y, plan(**m16), held_scale=True, held_window=win, held_lag=lag,
                            stats=st), x, ref)
                    cells[i].append((eo, es, st["S"], st["Vnew"]))
            print(f"| {what} | " + " | ".join(
                f"{max(c[0] for c in cl):.2e} / {max(c[1] for c in cl):.2e}, "
                f"S {max(c[2] for c in cl):.3g}, Vnew {max(c[3] for c in cl):.3g}" for cl in cells)
                + " |", flush=True)
    if "prep" in only:
        print("the bf16 family's prep on tf32 operands, bf16 inputs")
        print("| plan | bf16 in |\n|---|---|")
        for name, ch in PREP_TF32:
            eo, es = median_errors(lambda y, ch=ch: cuda_prefill(y, plan(**ch)), "bf16", seeds,
                                   **kw)
            print(f"| {name} | {eo:.2e} / {es:.2e} |", flush=True)
    if "chunk64" in only:
        print("64-token chunks (docs/history/prefill.md, v18-chunk64): the chain's roundings of")
        print("the CUDA plan at C = 16 and 64, both on the fp32 pairwise prep (cuda_records)")
        print(head)
        row("fla emulation (tf32 rounded)", fla_prefill)
        row("cuda, C = 16 (as the kernels round)", cuda_prefill)
        row("cuda, C = 16, fp32 pairwise prep", lambda y: cuda_prefill(y, pairwise_prep=True))
        row("cuda, C = 64, fp32 pairwise prep",
            lambda y: cuda_prefill(y, chunk=64, pairwise_prep=True))
        row("cuda, C = 64, the planned prep (cuda64_records)", lambda y: cuda_prefill(y, chunk=64))
        row("cuda, C = 64, Mqk bf16 only (no lo term)",
            lambda y: cuda_prefill(y, plan(Mqk="bf16"), chunk=64))
        for u0 in ("bf16", "fp32"):
            row(f"cuda, C = 64, U0 = bINV V by the prep (tf32 bINV), {u0} in the record",
                lambda y, u0=u0: cuda_prefill(y, plan(U0=u0), chunk=64))
        row("cuda, C = 64, U0 by the prep, fp32; Mqk bf16 only",
            lambda y: cuda_prefill(y, plan(U0="fp32", Mqk="bf16"), chunk=64))
        for o0 in ("fp32", "bf16"):
            row(f"cuda, C = 64, U0 fp32; O = Qe S + O0 by the prep, O0 {o0}",
                lambda y, o0=o0: cuda_prefill(y, plan(U0="fp32", O0=o0), chunk=64))
    if "chunk64ops" in only:
        print("the 64-token prep's products on bf16 operands, in the Qe form (U0 fp32, O0 bf16,")
        print("as dev/cuda/prefill64_bench.cu -DP64_QE stores them), bf16 inputs")
        print("| plan | bf16 in |\n|---|---|")
        qe = dict(U0="fp32", O0="bf16")
        bf = "bf16"
        for name, ch in (("tf32 operands (the prototype)", {}),
                         ("W = bINV Kd on bf16", dict(W_ops=bf)),
                         ("U0 = bINV V on bf16", dict(U0_ops=bf)),
                         ("Mqk W and Mqk U0 on bf16", dict(O0_ops=bf)),
                         ("W, U0, O0 on bf16", dict(W_ops=bf, U0_ops=bf, O0_ops=bf)),
                         ("and L, Mqk on bf16", dict(W_ops=bf, U0_ops=bf, O0_ops=bf, L_ops=bf,
                                                     Mqk_ops=bf))):
            p64 = plan(**dict(qe, **ch))
            eo, es = median_errors(lambda y, p64=p64: cuda_prefill(y, p64, chunk=64), "bf16",
                                   seeds, **kw)
            print(f"| {name} | {eo:.2e} / {es:.2e} |", flush=True)
    if "prep16" in only:
        print("the fp16 family's prep products on tf32 operands (held scale on)")
        print("| plan | fp16 in | fp32 in | fla, fp16 in | fla, fp32 in |\n|---|---|---|---|---|")
        m16 = dict(next(c for c in CANDIDATES if c[0].startswith("(m)"))[1])
        fla = [median_errors(fla_prefill, d, seeds, **kw) for d in ("fp16", "fp32")]
        for name, ch in PREP16_TF32:
            cells = [median_errors(lambda y, ch=ch: cuda_prefill(y, plan(**dict(m16, **ch)),
                                                                 held_scale=True), d, seeds, **kw)
                     for d in ("fp16", "fp32")]
            print(f"| {name} | " + " | ".join(f"{o:.2e} / {s:.2e}" for o, s in cells + fla) + " |",
                  flush=True)


if __name__ == "__main__":
    main()

"""The CUDA prefill beyond FlashKDA's subset: every option, dtype, head size and state of
flash_kda.prefill on the GPU, against a float64 token-by-token reference written here in torch
and against the CPU backend on the same inputs (fresh random inputs each run; the seed is
printed, FKDA_TEST_SEED reruns one).

What is covered: the gates "none" (any float g), "lower_bound" (any finite bound < 0, also far
below -5) and "softplus", with and without A_log / dt_bias; L2 norm and beta sigmoid on and off,
allow_neg_eigval; GVA; bf16 / fp16 / fp32 q, k, v and any float g, beta and gate parameters;
K 1..256 and V 1..256 (K > 128 by the K = 256 kernels); fp32 / bf16 states in both layouts; the
serving-engine states (has_initial_state, the state pool with its indices, checkpoints at the
offsets the CUDA backend takes, intermediate states), chunk_kda with fla's keywords, bitwise
repeatability, CUDA graph capture, hard inputs, and, when fla imports, fla's own chunk_kda.

FKDA_SWEEP_DEVICE=cpu runs the same tests on CPU tensors, against the CPU backend's float64
reference (no GPU needed): the tests of rules that only the CUDA backend has skip there.
FKDA_SWEEP_CASES sets the number of random option sets (default 60).
"""

import math
import os
import random
import secrets

import pytest

torch = pytest.importorskip("torch")

DEVICE_NAME = os.environ.get("FKDA_SWEEP_DEVICE", "cuda")
if DEVICE_NAME not in ("cuda", "cpu"):
    raise ValueError(f"FKDA_SWEEP_DEVICE={DEVICE_NAME!r}; expected cuda or cpu")
if DEVICE_NAME == "cuda" and not torch.cuda.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)

# Imported after the skips above, as in the other GPU tests: flash_kda loads the library when
# imported, and a machine without torch or a CUDA device skips this module without loading it.
import flash_kda  # noqa: E402

if DEVICE_NAME == "cuda" and not flash_kda.has_cuda():
    pytest.skip("libflashkda was built without CUDA", allow_module_level=True)

DEV = torch.device(DEVICE_NAME)
HOST = torch.device("cpu")
ON_CUDA = DEV.type == "cuda"
# The cross-check on the CPU backend: its float32 fast path when the device under test is the
# GPU; its float64 reference when the device under test is the CPU fast path itself.
CROSS_REFERENCE = not ON_CUDA
cuda_only = pytest.mark.skipif(not ON_CUDA, reason="a rule of the CUDA backend only")

SEED = int(os.environ.get("FKDA_TEST_SEED", secrets.randbits(32)))
SWEEP_CASES = int(os.environ.get("FKDA_SWEEP_CASES", "60"))

BF16, F16, F32 = torch.bfloat16, torch.float16, torch.float32
FLOATS = (F32, BF16, F16)

# ---- error bars ----------------------------------------------------------------------------------
#
# Relative Frobenius error of a result against the float64 reference, which reads the inputs as
# given (already rounded to their dtypes), so the error is only what the kernels add. Every
# tensor-core product of the CUDA prefill takes bf16 operands (u = 2^-8 relative, half of it per
# rounding), whatever the input dtype; fp16 and fp32 v are rounded to bf16 once more before the
# chain. So the bars follow the number of roundings a result passes, not the input dtype:
#   - FlashKDA's own subset (bf16 q, k, v, K = V = 128, the safe gate with a bound in [-5, 0)):
#     the library's stated 4e-3 for the output and 3e-3 for an fp32 state (runs measure 2-3e-3);
#   - every other option set with K >= 32: the same roundings plus at most one of v, and sums
#     over at least 32 keys that average them: 5e-3 for the output, 4e-3 for an fp32 state (the
#     first H200 sweep measured at most 3.2e-3 and 3.5e-3);
#   - K < 16: a product sums too few terms to average its operands' roundings, and with one key
#     of norm 1 the delta rule nearly cancels the state (S ~ v of the last tokens), which magnifies
#     them further: 2e-2 (K = 1 measured up to 1.2e-2 for a 15-entry state, 6-7e-3 for outputs);
#     the same bar for a state of fewer than 256 entries (K * V), whose relative error is an
#     average over too few of them (K = 33, V = 1 measured 4.1e-3);
#   - 16 <= K < 32: the same effect, weaker: twice the bars of K >= 32 (K = 16 with fp16 inputs
#     and a negative eigenvalue measured 4.5e-3 for a 1024-entry fp32 state);
#   - an output of few rows (T = 1 with one qk head, say) takes no bar of its own: the relative
#     error of a q.k product on rounded operands grows as 1 / |cos(q, k)|, and with few rows no
#     well-conditioned row carries the Frobenius norm (on tf32 operands T = 1, H = 1, cos(q, k) =
#     -0.014 measured 5.8e-3), so calls of fewer than 256 (token, qk head) rows form their
#     products as fp32 sums (prefill_select.c, choose_exact_qk);
#   - the output's own rounding to v's dtype lies inside each bar;
#   - a state stored in bf16 or fp16 adds its storage rounding, u of that dtype at most.
OUT_BAR_SUBSET = 4e-3
STATE_BAR_SUBSET = 3e-3
OUT_BAR, STATE_BAR_F32 = 5e-3, 4e-3
FEW_KEYS, FEW_STATE_ENTRIES, FEW_KEYS_BAR = 16, 256, 2e-2
SOME_KEYS, SOME_KEYS_FACTOR = 32, 2.0
STORAGE_U = {F32: 0.0, BF16: 2.0**-8, F16: 2.0**-11}
# The fp16 family (fp16 or fp32 q, k, v, K >= 64: fp16 records and chain operands, docs/prefill.md):
# the float64 emulation of its roundings (dev/numerics/README.md, plan (m)) gives 3.0-4.4e-4 for
# the output and the fp32 state over three gate regimes (fla's chunk_kda 3.6-6.2e-4; bf16
# operands 2.4-3.5e-3). The bar allows about three times that, and a third of bf16's: a chain
# that leaves one operand in bf16 fails it. An fp16 output's own rounding (2^-11) lies inside.
FP16_FAMILY_BAR = 1.2e-3


def is_subset(c):
    """FlashKDA's own options: bf16 q/k/v, K = V = 128, safe gate bound in [-5, 0)."""
    return (
        c["dtype"] == BF16
        and c["K"] == 128
        and c["V"] == 128
        and c["gate"] == "lower_bound"
        and -5.0 <= c["lower_bound"] < 0.0
    )


def out_bar(c):
    if c["K"] < FEW_KEYS:
        return FEW_KEYS_BAR
    if is_subset(c):
        return OUT_BAR_SUBSET
    return OUT_BAR * (SOME_KEYS_FACTOR if c["K"] < SOME_KEYS else 1.0)


def state_bar(c, dtype):
    """The bar of a state result stored in `dtype` (see the rules above)."""
    if is_subset(c):
        base = STATE_BAR_SUBSET
    else:
        few = c["K"] < FEW_KEYS or c["K"] * c["V"] < FEW_STATE_ENTRIES
        base = FEW_KEYS_BAR if few else STATE_BAR_F32
        if not few and c["K"] < SOME_KEYS:
            base *= SOME_KEYS_FACTOR
    return base + STORAGE_U[dtype]


def rel(x, ref):
    """Relative Frobenius error of x against ref (0 for two empty or all-zero tensors)."""
    x, ref = x.double().cpu(), ref.double().cpu()
    if x.numel() == 0:
        return 0.0
    den = ref.norm().item()
    num = (x - ref).norm().item()
    if den == 0.0:
        return num
    return num / den


def same_bits(a, b):
    """Bitwise equality, NaN included."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))


def finite(t):
    return bool(torch.isfinite(t.float()).all())


# ---- option sets ---------------------------------------------------------------------------------

LENGTHS = (1, 15, 16, 17, 63, 64, 65)


def base_case(**kw):
    """One option set with every field: FlashKDA's subset unless overridden."""
    c = dict(
        dtype=BF16,
        K=128,
        V=128,
        H=2,
        HV=2,
        gate="lower_bound",
        lower_bound=-5.0,
        A_log=True,
        dt_bias=True,
        dt_flat=False,
        param_dtype=F32,
        g_dtype=BF16,
        beta_dtype=BF16,
        norm=True,
        sigmoid=True,
        neg=False,
        scale=None,
        B=1,
        T=100,
        seqlens=None,
        cu_dtype=torch.int64,
        state_mode="tensors",
        v_first=True,
        state_scale=0.5,
        init_dtype=F32,
        final_dtype=F32,
        final=True,
        has_init=None,
        has_init_dtype=torch.bool,
        pool_size=0,
        init_idx=None,
        final_idx=None,
        idx_dtype=torch.int32,
        ckpt=None,
        ckpt_dest="states",
        ckpt_dtype=F32,
        ckpt_5d=True,
        ckpt_idx=None,
        inter_chunk=None,
        inter_dtype=F32,
        route="prefill",
        safe_gate=False,
        # the fp16 family's own cases (test_fp16_family): its bars, and the range draws
        fp16_bars=False,
        v_scale=1.0,
        qk_scale=1.0,
        beta_max=None,
    )
    c.update(kw)
    if c["seqlens"] is not None:
        c["B"], c["T"] = 1, sum(c["seqlens"])
    return c


def num_sequences(c):
    return c["B"] if c["seqlens"] is None else len(c["seqlens"])


def sequences(c):
    """[(row, start, length)] per sequence."""
    if c["seqlens"] is None:
        return [(b, 0, c["T"]) for b in range(c["B"])]
    out, start = [], 0
    for n in c["seqlens"]:
        out.append((0, start, n))
        start += n
    return out


def draw_pool(r, c):
    """Slots for a pool case: a random permutation; some sequences start from zero (-1); each
    final slot is the sequence's own initial slot or a slot no other sequence reads, or -1; the
    checkpoint slots are slots nobody reads or writes (or -1)."""
    N = num_sequences(c)
    C = len(c["ckpt"][0]) if c["ckpt"] else 0
    P = 2 * N + N * C + r.randint(1, 3)
    slots = r.sample(range(P), P)
    reads, free = slots[:N], slots[N:]
    if r.random() < 0.15 and not (c["ckpt"] and c["ckpt_dest"] == "pool"):
        c.update(pool_size=P, init_idx=None, final_idx=None)  # sequence n reads and writes slot n
        return
    init_idx = [s if r.random() > 0.2 else -1 for s in reads]
    final_idx = []
    for s in init_idx:
        roll = r.random()
        if roll < 0.2:
            final_idx.append(-1)
        elif roll < 0.6 and s >= 0:
            final_idx.append(s)
        else:
            final_idx.append(free.pop())
    ckpt_idx = None
    if c["ckpt"] and c["ckpt_dest"] == "pool":
        ckpt_idx = [[free.pop() if r.random() > 0.2 else -1 for _ in row] for row in c["ckpt"]]
    c.update(pool_size=P, init_idx=init_idx, final_idx=final_idx, ckpt_idx=ckpt_idx)


def draw_checkpoints(r, c):
    """1 to 3 offsets per sequence among those the CUDA backend writes: multiples of 16, the
    length, 0, and out of range (< 0 or > length: nothing written)."""
    C = r.randint(1, 3)
    rows = []
    for _, _, n in sequences(c):
        row = []
        for _ in range(C):
            roll = r.random()
            if roll < 0.45:
                row.append(16 * r.randint(0, n // 16))
            elif roll < 0.7:
                row.append(n)
            elif roll < 0.8:
                row.append(0)
            elif roll < 0.9:
                row.append(-1)
            else:
                row.append(n + r.randint(1, 20))
        rows.append(row)
    return rows


def draw_case(r):
    """A random option set over every dimension the CUDA prefill now takes."""
    c = base_case()
    c["dtype"] = r.choice([BF16, BF16, F16, F32])
    c["K"] = r.choice(
        [128, 128, 64, 32, 16, 1, 7, 33, 100, r.randint(1, 128), 256, 129, r.randint(129, 256)]
    )
    c["V"] = r.choice([128, 128, 256, 64, 1, 15, 200, r.randint(1, 256)])
    c["H"] = r.choice([1, 2, 3])
    group = r.choice([1, 1, 2, 4])
    c["HV"] = c["H"] * (group if c["H"] * group <= 8 else 1)
    c["gate"] = r.choice(["none", "lower_bound", "softplus"])
    if c["gate"] == "lower_bound":
        c["lower_bound"] = r.choice(
            [-5.0, -1.0, -0.5, -8.0, -20.0, round(-r.uniform(0.1, 30.0), 3)]
        )
    else:
        c["lower_bound"] = None
    c["A_log"] = c["gate"] == "softplus" or (c["gate"] == "lower_bound" and r.random() < 0.7)
    c["dt_bias"] = c["gate"] != "none" and r.random() < 0.7
    c["dt_flat"] = r.random() < 0.5
    c["param_dtype"] = r.choice(FLOATS)
    c["g_dtype"] = r.choice([F32, F32, BF16, F16])
    c["beta_dtype"] = r.choice(FLOATS)
    c["norm"] = r.random() < 0.6
    c["sigmoid"] = r.random() < 0.6
    c["neg"] = c["sigmoid"] and r.random() < 0.3
    c["scale"] = None if r.random() < 0.6 else round(r.uniform(0.05, 1.5), 4)
    if r.random() < 0.5:
        lengths = LENGTHS + (0, 0, r.randint(100, 300))
        c["seqlens"] = [r.choice(lengths) for _ in range(r.randint(1, 5))]
        c["B"], c["T"] = 1, sum(c["seqlens"])
        c["cu_dtype"] = r.choice([torch.int64, torch.int32])
    else:
        c["seqlens"] = None
        c["B"] = r.randint(1, 3)
        c["T"] = r.choice(LENGTHS + (r.randint(100, 300),))
    # About one set in five goes through chunk_kda with fla's keywords: it takes only a float32
    # initial state and returns a float32 final state and h in k's dtype, without the pool,
    # has_initial_state or checkpoints.
    via_chunk_kda = r.random() < 0.2
    modes = ["none", "tensors"] if via_chunk_kda else ["none", "tensors", "same", "pool", "pool"]
    c["state_mode"] = r.choice(modes)
    c["v_first"] = r.random() < 0.5
    c["state_scale"] = r.choice([0.01, 0.5, 3.0])
    c["init_dtype"] = F32 if via_chunk_kda else r.choice([F32, F32, BF16])
    c["final_dtype"] = c["init_dtype"] if r.random() < 0.8 else r.choice([F32, BF16])
    c["final"] = c["state_mode"] != "none" or r.random() < 0.5
    N = num_sequences(c)
    if c["state_mode"] != "none" and not via_chunk_kda and r.random() < 0.3:
        c["has_init"] = [int(r.random() < 0.6) for _ in range(N)]
        c["has_init_dtype"] = r.choice([torch.bool, torch.int32, torch.int64])
    c["idx_dtype"] = r.choice([torch.int32, torch.int64])
    if not via_chunk_kda and r.random() < 0.3:
        c["ckpt"] = draw_checkpoints(r, c)
        c["ckpt_dest"] = "pool" if c["state_mode"] == "pool" and r.random() < 0.5 else "states"
        c["ckpt_dtype"] = r.choice([F32, BF16])
        c["ckpt_5d"] = r.random() < 0.5
    if c["state_mode"] == "pool":
        draw_pool(r, c)
    if r.random() < 0.3:
        c["inter_chunk"] = r.choice([64, 32] if via_chunk_kda else [64, 64, 32, 32, 16, 48])
        c["inter_dtype"] = r.choice(FLOATS)
    if via_chunk_kda:
        c["route"] = "chunk_kda"
        c["final_dtype"] = F32
        c["inter_dtype"] = c["dtype"]
        c["safe_gate"] = (
            c["gate"] == "lower_bound" and -5.0 <= c["lower_bound"] < 0.0 and r.random() < 0.5
        )
    return c


def describe(c):
    dt = {F32: "f32", BF16: "bf16", F16: "f16"}
    parts = [
        f"{c['route']} {dt[c['dtype']]} K={c['K']} V={c['V']} H={c['H']} HV={c['HV']}",
        f"gate={c['gate']}"
        + (f"({c['lower_bound']})" if c["gate"] == "lower_bound" else "")
        + f" A_log={int(c['A_log'])} dt_bias={int(c['dt_bias'])}"
        f" g={dt[c['g_dtype']]} beta={dt[c['beta_dtype']]}",
        f"norm={int(c['norm'])} sigmoid={int(c['sigmoid'])} neg={int(c['neg'])} scale={c['scale']}",
        f"seqlens={c['seqlens']}" if c["seqlens"] is not None else f"B={c['B']} T={c['T']}",
        f"states={c['state_mode']} v_first={int(c['v_first'])}"
        f" init={dt[c['init_dtype']]} final={dt[c['final_dtype']] if c['final'] else '-'}"
        f" has_init={c['has_init']}",
    ]
    if c["state_mode"] == "pool":
        parts.append(f"pool P={c['pool_size']} init_idx={c['init_idx']} final_idx={c['final_idx']}")
    if c["ckpt"]:
        parts.append(
            f"ckpt={c['ckpt']} -> {c['ckpt_dest']}"
            + (f" {c['ckpt_idx']}" if c["ckpt_dest"] == "pool" else f" {dt[c['ckpt_dtype']]}")
        )
    if c["inter_chunk"]:
        parts.append(f"intermediate chunk {c['inter_chunk']} {dt[c['inter_dtype']]}")
    return "; ".join(parts)


SWEEP = [draw_case(random.Random(SEED * 1000 + i)) for i in range(SWEEP_CASES)]


@pytest.fixture
def seed(request):
    print(f"seed {SEED} ({request.node.name}); rerun with FKDA_TEST_SEED={SEED}")
    return SEED


# ---- inputs --------------------------------------------------------------------------------------


def unit(x):
    return x / x.norm(dim=-1, keepdim=True)


def state_shape(c, rows):
    K, V = c["K"], c["V"]
    return (rows, c["HV"], V, K) if c["v_first"] else (rows, c["HV"], K, V)


def chunk_rows(c, chunk):
    """Rows of intermediate_states per batch row: ceil(T / chunk), or with cu_seqlens the sum of
    ceil(length / chunk) over the sequences."""
    if c["seqlens"] is None:
        return -(-c["T"] // chunk)
    return sum(-(-n // chunk) for n in c["seqlens"])


def make_inputs(c, seed):
    """Host tensors of case c from a seeded generator (identical on every device)."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    def uniform(lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(*shape, generator=gen, dtype=torch.float64)

    B, T, H, HV, K, V = c["B"], c["T"], c["H"], c["HV"], c["K"], c["V"]
    N = num_sequences(c)
    q, k = randn(B, T, H, K), randn(B, T, H, K)
    if not c["norm"]:
        # The caller's own normalisation, as fla expects without the in-kernel norm: unit rows,
        # keys a little shorter so that b |k|^2 < 2 after rounding even with allow_neg_eigval.
        q, k = unit(q), 0.99 * unit(k)
    q, k = c["qk_scale"] * q, c["qk_scale"] * k
    v = c["v_scale"] * randn(B, T, HV, V)
    x = dict(q=q.to(c["dtype"]), k=k.to(c["dtype"]), v=v.to(c["dtype"]))
    if c["gate"] == "none":
        # A realistic log decay: -exp(A) softplus(u) with a per-head rate from slow to fast.
        rate = torch.exp(uniform(-4.0, 1.0, HV))[:, None]
        x["g"] = (-rate * torch.nn.functional.softplus(randn(B, T, HV, K))).to(c["g_dtype"])
    else:
        x["g"] = randn(B, T, HV, K).to(c["g_dtype"])
    if c["sigmoid"]:
        x["beta"] = randn(B, T, HV).to(c["beta_dtype"])
    elif c["beta_max"] is not None:
        x["beta"] = uniform(0.0, c["beta_max"], B, T, HV).to(c["beta_dtype"])
    else:
        x["beta"] = uniform(0.02, 0.98, B, T, HV).to(c["beta_dtype"])
    x["A_log"] = uniform(-1.0, 1.0, HV).to(c["param_dtype"]) if c["A_log"] else None
    if c["dt_bias"]:
        dt = 0.5 * randn(HV, K)
        x["dt_bias"] = (dt.reshape(HV * K) if c["dt_flat"] else dt).to(c["param_dtype"])
    else:
        x["dt_bias"] = None
    x["cu_seqlens"] = None
    if c["seqlens"] is not None:
        bounds = [0]
        for n in c["seqlens"]:
            bounds.append(bounds[-1] + n)
        x["cu_seqlens"] = torch.tensor(bounds, dtype=c["cu_dtype"])
    s = c["state_scale"]
    x["initial_state"] = None
    if c["state_mode"] in ("tensors", "same"):
        x["initial_state"] = (s * randn(*state_shape(c, N))).to(c["init_dtype"])
    x["state_pool"] = None
    if c["state_mode"] == "pool":
        x["state_pool"] = (s * randn(*state_shape(c, c["pool_size"]))).to(c["init_dtype"])
    x["has_initial_state"] = None
    if c["has_init"] is not None:
        x["has_initial_state"] = torch.tensor(c["has_init"]).to(c["has_init_dtype"])
    for name in ("init_idx", "final_idx"):
        x[name] = None if c[name] is None else torch.tensor(c[name], dtype=c["idx_dtype"])
    x["ckpt_offsets"] = None if c["ckpt"] is None else torch.tensor(c["ckpt"], dtype=c["idx_dtype"])
    x["ckpt_idx"] = (
        None if c["ckpt_idx"] is None else torch.tensor(c["ckpt_idx"], dtype=c["idx_dtype"])
    )
    return x


def nan_tensor(shape, dtype, device):
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


def copies_on(x, device):
    """Copies of the host inputs x on `device` (None stays None)."""
    return {n: (None if t is None else t.to(device, copy=True)) for n, t in x.items()}


def run(c, x, device, reference=False):
    """Runs case c on `device` with copies of the host inputs x, every output poisoned with NaN
    first; returns the results as host tensors: out, final, pool, ckpt, inter (those present)."""
    d = copies_on(x, device)
    N = num_sequences(c)
    res = {}
    final = None
    if c["final"] and c["state_mode"] in ("none", "tensors"):
        final = nan_tensor(state_shape(c, N), c["final_dtype"], device)
    elif c["state_mode"] == "same":
        final = d["initial_state"]  # the in-place state update: one tensor in and out
    ckpt = None
    if c["ckpt"] is not None and c["ckpt_dest"] == "states":
        C = len(c["ckpt"][0])
        shape = state_shape(c, N * C)
        if c["ckpt_5d"]:
            shape = (N, C) + shape[1:]
        ckpt = nan_tensor(shape, c["ckpt_dtype"], device)
    inter = None
    if c["inter_chunk"] is not None:
        rows = chunk_rows(c, c["inter_chunk"])
        inter = nan_tensor((c["B"], rows) + state_shape(c, 1)[1:], c["inter_dtype"], device)
    if c["route"] == "chunk_kda":
        use_gate = c["gate"] != "none"
        extra = {}
        if use_gate:
            extra = dict(A_log=d["A_log"], dt_bias=d["dt_bias"])
        if c["inter_chunk"] is not None:
            extra["chunk_size"] = c["inter_chunk"]
        cu_cpu = x["cu_seqlens"].to(torch.int64) if x["cu_seqlens"] is not None else None
        with torch.inference_mode():
            result = flash_kda.chunk_kda(
                d["q"],
                d["k"],
                d["v"],
                d["g"],
                d["beta"],
                scale=c["scale"],
                initial_state=d["initial_state"],
                output_final_state=c["final"],
                use_qk_l2norm_in_kernel=c["norm"],
                use_gate_in_kernel=use_gate,
                use_beta_sigmoid_in_kernel=c["sigmoid"],
                allow_neg_eigval=c["neg"],
                safe_gate=c["safe_gate"],
                lower_bound=c["lower_bound"] if c["gate"] == "lower_bound" else None,
                return_intermediate_states=c["inter_chunk"] is not None,
                state_v_first=c["v_first"],
                cu_seqlens=d["cu_seqlens"],
                cu_seqlens_cpu=cu_cpu,
                **extra,
            )
        res["out"] = result[0]
        if c["final"]:
            res["final"] = result[1]
        else:
            assert result[1] is None
        if c["inter_chunk"] is not None:
            assert result[2].shape == inter.shape and result[2].dtype == inter.dtype, (
                f"h: {tuple(result[2].shape)} {result[2].dtype}, expected "
                f"{tuple(inter.shape)} {inter.dtype}"
            )
            res["inter"] = result[2]
    else:
        out = nan_tensor(tuple(x["v"].shape), c["dtype"], device)
        flash_kda.prefill(
            d["q"],
            d["k"],
            d["v"],
            d["g"],
            d["beta"],
            out=out,
            A_log=d["A_log"] if c["gate"] != "none" else None,
            dt_bias=d["dt_bias"] if c["gate"] != "none" else None,
            cu_seqlens=d["cu_seqlens"],
            initial_state=d["initial_state"],
            final_state=final,
            scale=c["scale"],
            gate=c["gate"],
            lower_bound=c["lower_bound"] if c["gate"] == "lower_bound" else None,
            use_qk_l2norm=c["norm"],
            use_beta_sigmoid=c["sigmoid"],
            allow_neg_eigval=c["neg"],
            state_v_first=c["v_first"],
            has_initial_state=d["has_initial_state"],
            state_pool=d["state_pool"],
            initial_state_indices=d["init_idx"],
            final_state_indices=d["final_idx"],
            checkpoint_offsets=d["ckpt_offsets"],
            checkpoint_states=ckpt,
            checkpoint_indices=d["ckpt_idx"],
            intermediate_states=inter,
            intermediate_chunk_size=c["inter_chunk"],
            reference=reference,
        )
        res["out"] = out
        if final is not None:
            res["final"] = final
        if ckpt is not None:
            res["ckpt"] = ckpt.reshape(state_shape(c, -1))
        if inter is not None:
            res["inter"] = inter
        if d["state_pool"] is not None:
            res["pool"] = d["state_pool"]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return {n: t.to(HOST, copy=True) for n, t in res.items()}


# ---- the float64 reference -----------------------------------------------------------------------


def preactivations(c, x, device):
    """q, k (per value head), v, a (log decay), b, scale in float64 on `device`."""
    q, k, v, g, beta = (x[n].to(device).double() for n in ("q", "k", "v", "g", "beta"))
    H, K, HV = c["H"], c["K"], c["HV"]
    if c["norm"]:
        q = q / torch.sqrt((q * q).sum(-1, keepdim=True) + 1e-6)
        k = k / torch.sqrt((k * k).sum(-1, keepdim=True) + 1e-6)
    q = q.repeat_interleave(HV // H, dim=2)  # value head h reads qk head h // (HV / H)
    k = k.repeat_interleave(HV // H, dim=2)
    z = g
    if c["gate"] != "none" and x["dt_bias"] is not None:
        z = g + x["dt_bias"].to(device).double().reshape(HV, K)
    if c["gate"] == "none":
        a = g
    elif c["gate"] == "lower_bound":
        rate = 1.0
        if x["A_log"] is not None:
            rate = torch.exp(x["A_log"].to(device).double())[:, None]
        a = c["lower_bound"] * torch.sigmoid(rate * z)
    else:
        softplus = torch.logaddexp(z, torch.zeros_like(z))
        a = -torch.exp(x["A_log"].to(device).double())[:, None] * softplus
    b = beta
    if c["sigmoid"]:
        b = torch.sigmoid(beta) * (2.0 if c["neg"] else 1.0)
    scale = K**-0.5 if c["scale"] is None else c["scale"]
    return q, k, v, a, b, scale


def to_kv(c, s):
    """A state in the case's layout as float64 [.., K, V]."""
    s = s.double()
    return s.transpose(-1, -2) if c["v_first"] else s


def from_kv(c, s):
    return s.transpose(-1, -2) if c["v_first"] else s


def initial_states(c, x, device):
    """Each sequence's starting state as float64 [HV, K, V] (zeros where it starts from zero)."""
    zero = torch.zeros(c["HV"], c["K"], c["V"], dtype=torch.float64, device=device)
    states = []
    for n in range(num_sequences(c)):
        s = zero
        if c["state_mode"] in ("tensors", "same"):
            s = to_kv(c, x["initial_state"][n].to(device))
        elif c["state_mode"] == "pool":
            slot = n if c["init_idx"] is None else c["init_idx"][n]
            if slot >= 0:
                s = to_kv(c, x["state_pool"][slot].to(device))
        if c["has_init"] is not None and not c["has_init"][n]:
            s = zero
        states.append(s.clone())
    return states


def reference(c, x, record, device=DEV):
    """float64 token by token: (out [B, T, HV, V], final states [HV, K, V] per sequence, recorded
    {(n, offset): the state [HV, K, V] after offset tokens of sequence n} for record[n])."""
    q, k, v, a, b, scale = preactivations(c, x, device)
    out = torch.zeros(v.shape, dtype=torch.float64, device=device)
    finals, recorded = [], {}
    for n, ((row, start, length), S) in enumerate(zip(sequences(c), initial_states(c, x, device))):
        if 0 in record[n]:
            recorded[(n, 0)] = S.clone()
        for j in range(length):
            t = start + j
            S = S * torch.exp(a[row, t])[:, :, None]
            pred = torch.einsum("hk,hkv->hv", k[row, t], S)
            S = S + b[row, t][:, None, None] * k[row, t][:, :, None] * (v[row, t] - pred)[:, None]
            out[row, t] = scale * torch.einsum("hk,hkv->hv", q[row, t], S)
            if j + 1 in record[n]:
                recorded[(n, j + 1)] = S.clone()
        finals.append(S)
    return out, finals, recorded


def cuda_writes_checkpoint(offset, length):
    """The offsets at which the CUDA backend writes a real checkpoint (others in range: NaN)."""
    return offset == 0 or offset == length or offset % 16 == 0


def recorded_offsets(c):
    """Per sequence, the token counts whose state the results need: checkpoints in range and
    the starts of the intermediate chunks."""
    record = []
    for n, (_, _, length) in enumerate(sequences(c)):
        offsets = set()
        if c["ckpt"] is not None:
            offsets.update(o for o in c["ckpt"][n] if 0 <= o <= length)
        if c["inter_chunk"] is not None:
            offsets.update(range(0, length, c["inter_chunk"]))
        record.append(offsets)
    return record


def expected(c, x, ref, nan_rule):
    """What each result of run() must hold, from ref = reference(c, x, recorded_offsets(c)), as
    float64 host tensors with NaN where nothing is written (or, under nan_rule, where the CUDA
    backend writes NaN); and the pool slots that must keep their bytes."""
    seqs = sequences(c)
    N = len(seqs)
    out, finals, recorded = ref
    want = {"out": out.cpu()}
    if "final" in result_names(c):
        want["final"] = torch.stack([from_kv(c, s) for s in finals]).cpu()
    nan_state = torch.full(state_shape(c, 1)[1:], float("nan"), dtype=torch.float64)

    def checkpoint(n, offset, length):
        if not 0 <= offset <= length:
            return None  # nothing written
        if nan_rule and not cuda_writes_checkpoint(offset, length):
            return nan_state
        return from_kv(c, recorded[(n, offset)]).cpu()

    untouched = []
    if c["state_mode"] == "pool":
        pool = x["state_pool"].double().clone()
        written = set()
        for n in range(N):
            slot = n if c["final_idx"] is None else c["final_idx"][n]
            if slot >= 0:
                pool[slot] = from_kv(c, finals[n]).cpu()
                written.add(slot)
        if c["ckpt_idx"] is not None:
            for n, (_, _, length) in enumerate(seqs):
                for j, offset in enumerate(c["ckpt"][n]):
                    slot = c["ckpt_idx"][n][j]
                    state = checkpoint(n, offset, length)
                    if slot >= 0 and state is not None:
                        pool[slot] = state
                        written.add(slot)
        want["pool"] = pool
        want["pool_written"] = sorted(written)
        untouched = [s for s in range(c["pool_size"]) if s not in written]
    if "ckpt" in result_names(c):
        C = len(c["ckpt"][0])
        ck = torch.full(state_shape(c, N * C), float("nan"), dtype=torch.float64)
        for n, (_, _, length) in enumerate(seqs):
            for j, offset in enumerate(c["ckpt"][n]):
                state = checkpoint(n, offset, length)
                if state is not None:
                    ck[n * C + j] = state
        want["ckpt"] = ck
    if c["inter_chunk"] is not None:
        rows = []
        if c["seqlens"] is None:
            rows = [
                [from_kv(c, recorded[(n, o)]).cpu() for o in range(0, c["T"], c["inter_chunk"])]
                for n in range(N)
            ]
            want["inter"] = (
                torch.stack([torch.stack(r) for r in rows])
                if c["T"]
                else torch.zeros((c["B"], 0) + state_shape(c, 1)[1:], dtype=torch.float64)
            )
        else:
            flat = [
                from_kv(c, recorded[(n, o)]).cpu()
                for n, (_, _, length) in enumerate(seqs)
                for o in range(0, length, c["inter_chunk"])
            ]
            want["inter"] = (
                torch.stack(flat)[None]
                if flat
                else torch.zeros((1, 0) + state_shape(c, 1)[1:], dtype=torch.float64)
            )
    return want, untouched


def result_names(c):
    names = ["out"]
    if (c["final"] and c["state_mode"] in ("none", "tensors")) or c["state_mode"] == "same":
        names.append("final")
    if c["state_mode"] == "pool":
        names.append("pool")
    if c["ckpt"] is not None and c["ckpt_dest"] == "states":
        names.append("ckpt")
    if c["inter_chunk"] is not None:
        names.append("inter")
    return names


# ---- comparison ----------------------------------------------------------------------------------


def bar_of(c, name, result):
    if c["fp16_bars"]:
        return FP16_FAMILY_BAR + (0.0 if name == "out" else STORAGE_U[result.dtype])
    if name == "out":
        return out_bar(c)
    return state_bar(c, result.dtype)


def compare(
    c, got, want, x, untouched, label, lines, problems, ref_label="float64", want_error=None
):
    """Checks the results `got` of one run against `want` (float64, NaN where nothing or NaN is
    due); appends one printed line per result to lines and each failure to problems. Where `want`
    is itself a result with an error against float64 (want_error, by name), that error is added to
    the bar: the two results may each lie their error away from the float64 values, on opposite
    sides. Returns the error of each result compared."""
    errors = {}
    for name in result_names(c):
        g, w = got[name], want[name]
        if name == "pool":
            for s in untouched:
                if not same_bits(g[s], x["state_pool"][s]):
                    problems.append(f"{label} pool slot {s}: written, but no sequence names it")
            g, w = g[want["pool_written"]], w[want["pool_written"]]
        if name in ("ckpt", "pool"):
            # Whole states are due or not: a state due as NaN (not written, or the CUDA rule for
            # an offset off the 16-token grid) must be all NaN; the others are compared.
            due = ~torch.isnan(w).flatten(1).all(1)
            if not bool(torch.isnan(g[~due].float()).all()):
                problems.append(f"{label} {name}: a state that must stay or become NaN is not")
            g, w = g[due], w[due]
        if not finite(g):
            problems.append(f"{label} {name}: NaN or Inf where a value is due")
            lines.append(f"  {label} {name}: not finite")
            continue
        err = errors[name] = rel(g, w)
        bar = bar_of(c, name, got[name]) + (want_error or {}).get(name, 0.0)
        lines.append(f"  {label} {name} vs {ref_label}: {err:.2e} (bar {bar:.1e})")
        if not err <= bar:
            problems.append(f"{label} {name} vs {ref_label}: {err:.3e} > {bar:.1e}")
    return errors


def check_case(c, seed, x=None):
    """Runs case c on the device and on the CPU backend, compares both with the float64
    reference and the device's results with the CPU backend's; returns (device results, what
    was due, the problems found). x: the case's inputs where a test shaped them itself (else
    make_inputs(c, seed))."""
    if x is None:
        x = make_inputs(c, seed)
    got = run(c, x, DEV)
    cpu = run(c, x, HOST, reference=CROSS_REFERENCE)
    ref = reference(c, x, recorded_offsets(c))
    want, untouched = expected(c, x, ref, nan_rule=ON_CUDA)
    want_cpu, _ = expected(c, x, ref, nan_rule=False)
    lines, problems = [], []
    compare(c, got, want, x, untouched, DEVICE_NAME, lines, problems)
    cpu_error = compare(c, cpu, want_cpu, x, untouched, "cpu", lines, problems)
    # The CPU backend's results as the reference, NaN where the device is due NaN.
    cross = {n: cpu[n].double() for n in result_names(c)}
    if "pool" in cross:
        cross["pool_written"] = want["pool_written"]
        for s in want["pool_written"]:
            if bool(torch.isnan(want["pool"][s]).all()):
                cross["pool"][s] = float("nan")
    if "ckpt" in cross:
        cross["ckpt"] = torch.where(torch.isnan(want["ckpt"]), want["ckpt"], cross["ckpt"])
    compare(
        c, got, cross, x, untouched, DEVICE_NAME, lines, problems,
        ref_label="cpu", want_error=cpu_error,
    )
    print("\n".join(lines))
    return got, want, problems


@pytest.mark.parametrize("i", range(SWEEP_CASES), ids=lambda i: f"case{i:02d}")
def test_option_sweep(seed, i):
    c = SWEEP[i]
    print(f"case {i}: {describe(c)}")
    _, _, problems = check_case(c, seed * 1000 + i)
    assert not problems, "\n".join(problems)


# ---- refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize("K", [129, 256])
def test_k_above_128_runs(seed, K):
    """K > 128 (the K = 256 kernels; refused before them): fp16 inputs, gate none, varlen with
    an empty sequence, the pool in place with indices, against the reference and the CPU
    backend."""
    c = base_case(
        K=K,
        V=64,
        dtype=F16,
        gate="none",
        state_mode="pool",
        idx_dtype=torch.int64,
        seqlens=[20, 0, 33],
        pool_size=4,
        init_idx=[2, -1, 0],
        final_idx=[2, 3, 1],
    )
    _, _, problems = check_case(c, seed)
    assert not problems, "\n".join(problems)


@cuda_only
@pytest.mark.parametrize("dtype", [BF16, F32])
def test_k256_eight_warps_with_checkpoints_and_intermediate_states(seed, dtype, monkeypatch):
    """K = 256 in 64-column slices (FKDA_PREFILL_VSLICE=64: the chain's CTAs of 8 warps and its
    ring of 4 stages, which the default slice choice takes only for many heads): checkpoints and
    intermediate states cut the chain's chunk loop into runs; varlen with empty sequences and
    ones shorter than the ring; bf16 q, k, v (the 16-bit output) and fp32 (the fp32-tile
    output)."""
    monkeypatch.setenv("FKDA_PREFILL_VSLICE", "64")
    c = base_case(
        K=256,
        V=128,
        dtype=dtype,
        seqlens=[130, 0, 17, 1, 64, 200],
        ckpt=[[16, 130, 128], [0, -1, 0], [17, 16, 30], [1, 0, -1], [64, 32, 48], [200, 96, 0]],
        inter_chunk=48,
        inter_dtype=BF16,
        v_first=False,
    )
    print(f"vslice 64: {describe(c)}")
    _, _, problems = check_case(c, seed)
    assert not problems, "\n".join(problems)


@cuda_only
@pytest.mark.parametrize("dtype", [BF16, F16, F32])
def test_k128_eight_warps_with_checkpoints_and_intermediate_states(seed, dtype, monkeypatch):
    """K = V = 128 in one 128-column slice (FKDA_PREFILL_VSLICE=128: chain CTAs of 8 warps, which
    the default slice choice takes only for many heads), through the chain's state stores:
    checkpoints and intermediate states cut the chunk loop into runs;
    varlen with empty sequences and ones shorter than the ring; bf16 (the bf16 chain) and fp16,
    fp32 q, k, v (the fp16 chain)."""
    monkeypatch.setenv("FKDA_PREFILL_VSLICE", "128")
    c = base_case(
        dtype=dtype,
        seqlens=[130, 0, 17, 1, 64, 200],
        ckpt=[[16, 130, 128], [0, -1, 0], [17, 16, 30], [1, 0, -1], [64, 32, 48], [200, 96, 0]],
        inter_chunk=48,
        inter_dtype=BF16,
    )
    print(f"vslice 128: {describe(c)}")
    _, _, problems = check_case(c, seed)
    assert not problems, "\n".join(problems)


@cuda_only
@pytest.mark.parametrize("cu_dtype", [torch.int32, torch.int64], ids=["cu32", "cu64"])
@pytest.mark.parametrize("K", [128, 256])
def test_more_sequences_than_a_prep_cta_has_threads(seed, K, cu_dtype):
    """300 short sequences (empty ones among them), more than the 128 or 256 threads of a prep
    CTA, which finds its chunk's sequence among cu_seqlens' entries: every sequence's output and
    final state against the reference, with int32 and with int64 cu_seqlens."""
    r = random.Random(seed)
    seqlens = [r.choice((0, 1, 5, 15, 16, 17, 33)) for _ in range(300)]
    c = base_case(K=K, V=64, H=1, HV=1, seqlens=seqlens, cu_dtype=cu_dtype)
    print(f"300 sequences: {describe(c)}")
    _, _, problems = check_case(c, seed)
    assert not problems, "\n".join(problems)


@cuda_only
@pytest.mark.parametrize("chunk", [40, 100, 8])
def test_intermediate_chunk_not_multiple_of_16_is_refused(seed, chunk):
    c = base_case(T=130, B=2, inter_chunk=chunk)
    x = make_inputs(c, seed)
    d = copies_on(x, DEV)
    out = nan_tensor(tuple(x["v"].shape), BF16, DEV)
    final = nan_tensor(state_shape(c, 2), F32, DEV)
    inter = nan_tensor((2, chunk_rows(c, chunk)) + state_shape(c, 1)[1:], F32, DEV)
    with pytest.raises(flash_kda.UnsupportedError) as info:
        flash_kda.prefill(
            d["q"],
            d["k"],
            d["v"],
            d["g"],
            d["beta"],
            out=out,
            A_log=d["A_log"],
            dt_bias=d["dt_bias"],
            initial_state=d["initial_state"],
            final_state=final,
            gate="lower_bound",
            lower_bound=-5.0,
            use_qk_l2norm=True,
            use_beta_sigmoid=True,
            state_v_first=True,
            intermediate_states=inter,
            intermediate_chunk_size=chunk,
        )
    torch.cuda.synchronize()
    print(f"chunk {chunk}: {info.value}")
    for name, t in (("out", out), ("final_state", final), ("intermediate_states", inter)):
        assert bool(torch.isnan(t).all()), f"{name} was written by a refused call"


# ---- bitwise repeat and CUDA graphs --------------------------------------------------------------

REPEAT_CASES = {
    "gva-f16-softplus-pool": base_case(
        dtype=F16,
        K=64,
        V=200,
        H=2,
        HV=4,
        gate="softplus",
        g_dtype=F32,
        beta_dtype=F16,
        seqlens=[0, 100, 17, 64, 1],
        state_mode="pool",
        pool_size=12,
        v_first=False,
        init_idx=[3, 7, -1, 0, 5],
        final_idx=[3, 9, 10, -1, 11],
        init_dtype=BF16,
        ckpt=[[0, -1], [16, 100], [16, 17], [48, 64], [1, 0]],
        ckpt_dest="states",
        inter_chunk=32,
        inter_dtype=BF16,
    ),
    "bf16-none-nosigmoid": base_case(
        gate="none",
        g_dtype=F32,
        sigmoid=False,
        beta_dtype=F32,
        A_log=False,
        dt_bias=False,
        B=3,
        T=257,
        lower_bound=None,
    ),
    "f32-lb20-nonorm": base_case(
        dtype=F32,
        K=33,
        V=7,
        H=3,
        HV=3,
        gate="lower_bound",
        lower_bound=-20.0,
        norm=False,
        seqlens=[65, 0, 300],
        init_dtype=BF16,
        final_dtype=BF16,
        inter_chunk=64,
    ),
}


# Sequence segments (few heads, long equal-length rows: src/cuda/prefill_launch.cu) are chosen only
# for T of thousands, which the sweep never reaches; FKDA_PREFILL_SEGMENTS forces three segments on
# short rows, so that the new options also pass through the segment passes and the merge: the bf16
# copy of fp16/fp32 v read in both passes, V between 113 and 128, K < 128 (padded keys whose
# transitions stay the identity), the pool, has_initial_state, GVA, outputs through the fp32 tile.
SEGMENT_CASES = {
    "f16-K100-V120-pool-gate-none": base_case(
        dtype=F16,
        K=100,
        V=120,
        H=2,
        HV=4,
        gate="none",
        lower_bound=None,
        A_log=False,
        dt_bias=False,
        g_dtype=F32,
        beta_dtype=F32,
        sigmoid=False,
        B=2,
        T=200,
        state_mode="pool",
        pool_size=5,
        init_idx=[3, -1],
        final_idx=[3, 0],
        idx_dtype=torch.int64,
    ),
    "f32-softplus-has-init": base_case(
        dtype=F32,
        gate="softplus",
        lower_bound=None,
        B=2,
        T=160,
        has_init=[1, 0],
        final_dtype=BF16,
    ),
    "bf16-V113-gva": base_case(V=113, H=1, HV=3, B=1, T=300, v_first=False),
}


@pytest.mark.parametrize("name", list(SEGMENT_CASES))
def test_segments_with_new_options(seed, name, monkeypatch):
    monkeypatch.setenv("FKDA_PREFILL_SEGMENTS", "3")
    c = SEGMENT_CASES[name]
    print(f"segments 3: {describe(c)}")
    _, _, problems = check_case(c, seed)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", list(REPEAT_CASES))
def test_bitwise_repeat(seed, name):
    c = REPEAT_CASES[name]
    x = make_inputs(c, seed)
    first = run(c, x, DEV)
    second = run(c, x, DEV)
    for n in first:
        assert same_bits(first[n], second[n]), f"{n}: two identical calls differ"


# ---- the fp16 family ----------------------------------------------------------------------------

# fp16 and fp32 q, k, v take fp16 records and the fp16 chain (src/cuda/prefill_chain.cu): bars of
# about a third of bf16's, through every path of that family: v read in place (16-byte rows) or
# staged in fp32 (V not a multiple of 8), the tile and element loads of the prep (K = 128, K < 128),
# varlen with empty and one-token sequences, GVA, gate none / softplus / lower bound, no norm or
# sigmoid (fla's convention), negative eigenvalues, checkpoints and intermediate states (stored
# from the chain's scaled state), and the segment passes.
FP16_CASES = {
    "f16-varlen-gate-none": base_case(
        dtype=F16,
        gate="none",
        lower_bound=None,
        A_log=False,
        dt_bias=False,
        g_dtype=F32,
        seqlens=[1, 17, 0, 300, 65],
        fp16_bars=True,
    ),
    "f32-K64-gva-softplus": base_case(
        dtype=F32, K=64, V=64, H=2, HV=4, gate="softplus", lower_bound=None, T=200, fp16_bars=True
    ),
    "f32-K100-V100-staged-v": base_case(dtype=F32, K=100, V=100, B=2, T=130, fp16_bars=True),
    "f16-V72-no-norm-no-sigmoid": base_case(
        dtype=F16,
        V=72,
        norm=False,
        sigmoid=False,
        beta_dtype=F32,
        T=250,
        v_first=False,
        fp16_bars=True,
    ),
    "f32-neg-eigval-lb-20": base_case(
        dtype=F32, neg=True, lower_bound=-20.0, T=200, fp16_bars=True
    ),
    "f32-ckpt-inter-v3e4": base_case(
        dtype=F32,
        seqlens=[200, 33, 96],
        ckpt=[[16, 96, 200], [0, 32, 33], [96, 48, -1]],
        inter_chunk=32,
        inter_dtype=F32,
        v_scale=3e4,
        state_scale=3e4,
        fp16_bars=True,
    ),
    "f16-state-x1e4-bf16-final": base_case(
        dtype=F16, T=120, state_scale=1e4, final_dtype=BF16, init_dtype=F32, fp16_bars=True
    ),
    "f32-v-tiny": base_case(dtype=F32, T=150, v_scale=1e-6, state_scale=1e-6, fp16_bars=True),
}


@pytest.mark.parametrize("name", list(FP16_CASES))
def test_fp16_family(seed, name):
    c = FP16_CASES[name]
    print(f"fp16 family: {describe(c)} v x {c['v_scale']:g}")
    _, _, problems = check_case(c, seed)
    assert not problems, "\n".join(problems)


def test_fp16_family_through_segments(seed, monkeypatch):
    monkeypatch.setenv("FKDA_PREFILL_SEGMENTS", "3")
    c = base_case(dtype=F32, B=2, T=300, state_scale=3.0, v_scale=100.0, fp16_bars=True)
    print(f"segments 3: {describe(c)}")
    _, _, problems = check_case(c, seed)
    assert not problems, "\n".join(problems)


def test_fp16_family_range_past_the_domain(seed):
    # No norm, q and k of norm ~300 (past the fp16 records' 2^7) and beta below 2e-5 (so that
    # b |k|^2 < 2 keeps the recurrence stable): every chunk is written as a bf16 record and takes
    # the chain's bf16 step. Finite, at bf16's bars.
    c = base_case(
        dtype=F32, norm=False, sigmoid=False, beta_dtype=F32, qk_scale=300.0, beta_max=2e-5, T=200
    )
    print(f"past the fp16 domain: {describe(c)}")
    got, _, problems = check_case(c, seed)
    for n, t in got.items():
        assert finite(t), f"{n}: not finite"
    assert not problems, "\n".join(problems)


@cuda_only
def test_fp16_chain_switch(seed, monkeypatch):
    # FKDA_PREFILL_FP16_CHAIN=0 keeps fp32 inputs on the bf16 kernels (for A/B runs): the result
    # is then at bf16's level, and the default (the fp16 chain) several times closer.
    c = base_case(dtype=F32, T=400, fp16_bars=True)
    x = make_inputs(c, seed)
    want, _ = expected(c, x, reference(c, x, recorded_offsets(c)), nan_rule=False)
    errors = {}
    for switch in ("1", "0"):
        monkeypatch.setenv("FKDA_PREFILL_FP16_CHAIN", switch)
        got = run(c, x, DEV)
        errors[switch] = rel(got["out"], want["out"])
    print(f"output error: fp16 chain {errors['1']:.2e}, bf16 kernels {errors['0']:.2e}")
    assert errors["1"] <= FP16_FAMILY_BAR
    assert errors["0"] <= out_bar(c)
    assert errors["0"] > 2.0 * errors["1"], "the switch made no difference"


@cuda_only
def test_cuda_graph_capture_of_new_options(seed):
    # gate none on an fp32 log decay, beta probabilities (no sigmoid): options FlashKDA lacks
    c = base_case(
        gate="none",
        lower_bound=None,
        g_dtype=F32,
        sigmoid=False,
        beta_dtype=F32,
        A_log=False,
        dt_bias=False,
        H=4,
        HV=4,
        B=1,
        T=200,
    )
    x = make_inputs(c, seed)
    static = copies_on(x, DEV)
    out = torch.empty(tuple(x["v"].shape), dtype=BF16, device=DEV)
    final = torch.empty(state_shape(c, 1), dtype=F32, device=DEV)

    def call(o, f):
        flash_kda.prefill(
            static["q"],
            static["k"],
            static["v"],
            static["g"],
            static["beta"],
            out=o,
            initial_state=static["initial_state"],
            final_state=f,
            gate="none",
            use_qk_l2norm=True,
            use_beta_sigmoid=False,
            state_v_first=True,
        )

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        call(out, final)  # warm-up outside the capture
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        call(out, final)
    for k in range(2):  # fresh inputs copied into the captured tensors, then replay
        fresh = make_inputs(c, seed + 1 + k)
        for n, t in fresh.items():
            if t is not None:
                static[n].copy_(t)
        out.fill_(float("nan"))
        final.fill_(float("nan"))
        graph.replay()
        eager_out = nan_tensor(tuple(out.shape), BF16, DEV)
        eager_final = nan_tensor(tuple(final.shape), F32, DEV)
        call(eager_out, eager_final)
        torch.cuda.synchronize()
        assert same_bits(out, eager_out), "graph replay differs from an eager call"
        assert same_bits(final, eager_final)
        want, finals, _ = reference(c, fresh, [set()])
        e_out, e_st = rel(out, want), rel(final[0], from_kv(c, finals[0]))
        print(f"replay {k}: output {e_out:.2e}, final state {e_st:.2e}")
        assert e_out <= out_bar(c) and e_st <= state_bar(c, F32)


# ---- hard numerics -------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [BF16, F32])
@pytest.mark.parametrize("gate", ["none", "lower_bound"])
def test_collinear_keys_and_a_tiny_key(seed, dtype, gate):
    # Every key is one unit vector plus 1e-3 noise, normalised: the delta rule's triangular
    # systems are as badly conditioned as real keys make them. One token's key is 1e-30 (with
    # the norm: a zero key, which must add nothing and divide by nothing).
    c = base_case(
        dtype=dtype,
        gate=gate,
        lower_bound=-5.0 if gate == "lower_bound" else None,
        g_dtype=F32,
        A_log=gate != "none",
        dt_bias=gate != "none",
        seqlens=[200, 65, 1],
        H=2,
        HV=4,
    )
    x = make_inputs(c, seed)
    gen = torch.Generator().manual_seed(seed + 7)
    base = unit(torch.randn(c["K"], generator=gen, dtype=torch.float64))
    noise = torch.randn(tuple(x["k"].shape), generator=gen, dtype=torch.float64)
    k = unit(base + 1e-3 * noise)
    k[0, 50] = 1e-30
    x["k"] = k.to(dtype)
    if gate == "none":
        x["g"] = torch.full(tuple(x["g"].shape), -0.01, dtype=F32)  # slow decay: long memory
    print(describe(c))
    got, _, problems = check_case(c, seed, x)
    for n, t in got.items():
        assert finite(t), f"{n}: not finite"
    assert not problems, "\n".join(problems)


# ---- states for serving engines ------------------------------------------------------------------


@pytest.mark.parametrize("v_first", [False, True])
@pytest.mark.parametrize("pool_dtype", [F32, BF16])
def test_pool_in_place(seed, pool_dtype, v_first):
    # a random permutation of slots; sequence 1 starts from zero, sequence 3 keeps no final state;
    # finals go to the sequence's own slot or to a slot nobody reads
    r = random.Random(seed)
    P, N = 11, 5
    slots = r.sample(range(P), P)
    init_idx = [slots[0], -1, slots[2], slots[3], slots[4]]
    final_idx = [slots[0], slots[5], slots[6], -1, slots[4]]
    c = base_case(
        state_mode="pool",
        pool_size=P,
        init_idx=init_idx,
        final_idx=final_idx,
        init_dtype=pool_dtype,
        v_first=v_first,
        seqlens=[40, 0, 17, 64, 130],
        dtype=BF16,
        K=128,
        V=128,
        H=2,
        HV=4,
        gate="softplus",
        lower_bound=None,
    )
    print(describe(c))
    assert N == num_sequences(c)
    _, _, problems = check_case(c, seed)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("mode", ["tensors", "pool"])
def test_has_initial_state_zeros(seed, mode):
    extra = {}
    if mode == "pool":
        extra = dict(pool_size=6, init_idx=[4, 1, 0, 5], final_idx=[4, 2, 0, 3])
    c = base_case(
        state_mode=mode,
        seqlens=[33, 16, 0, 90],
        has_init=[1, 0, 0, 1],
        has_init_dtype=torch.int32,
        **extra,
    )
    print(describe(c))
    _, _, problems = check_case(c, seed)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("ckpt_dtype", [F32, BF16])
def test_checkpoints_at_multiples_of_16(seed, ckpt_dtype):
    lengths = [200, 64, 0, 37]
    ckpt = [[16, 128, 200, 0], [64, 32, -1, 64], [0, 5, -1, 0], [32, 37, 16, 99]]
    c = base_case(
        seqlens=lengths,
        ckpt=ckpt,
        ckpt_dtype=ckpt_dtype,
        final_dtype=ckpt_dtype,
        ckpt_5d=ckpt_dtype == F32,
        dtype=F16,
        K=96,
        V=160,
        gate="none",
        lower_bound=None,
        g_dtype=F32,
    )
    print(describe(c))
    got, _, problems = check_case(c, seed)
    assert not problems, "\n".join(problems)
    # the checkpoint at a sequence's length is its final state, bitwise
    C = len(ckpt[0])
    for n, length in enumerate(lengths):
        for j, offset in enumerate(ckpt[n]):
            if offset == length:
                assert same_bits(got["ckpt"][n * C + j], got["final"][n]), (
                    f"sequence {n}: checkpoint at its length {length} differs from its final state"
                )
    # checkpoints leave out unchanged, bitwise
    plain = dict(c, ckpt=None)
    x = make_inputs(plain, seed)
    assert same_bits(run(plain, x, DEV)["out"], got["out"]), "checkpoints changed out"


def test_checkpoint_indices_into_the_pool(seed):
    c = base_case(
        state_mode="pool",
        pool_size=12,
        seqlens=[96, 50, 0],
        init_idx=[0, 1, -1],
        final_idx=[0, 2, 3],
        ckpt=[[16, 96, 48], [48, 50, 64], [0, 1, -1]],
        ckpt_dest="pool",
        ckpt_idx=[[4, 5, -1], [6, 7, 8], [9, -1, 10]],
        init_dtype=BF16,
        v_first=False,
        HV=4,
        H=1,
        K=64,
        V=64,
    )
    print(describe(c))
    _, _, problems = check_case(c, seed)
    assert not problems, "\n".join(problems)


@cuda_only
@pytest.mark.parametrize("dest", ["states", "pool"])
def test_checkpoint_off_the_16_grid_is_nan_on_cuda(seed, dest):
    # In range, not 0, not the length, not a multiple of 16: the CUDA backend fills it with NaN
    # (the CPU backend writes the state); the other checkpoints of the call are exact.
    ckpt = [[5, 16, 33, 70], [1, 0, 16, 15]]
    extra = dict(ckpt_dest="states")
    if dest == "pool":
        extra = dict(
            state_mode="pool",
            pool_size=12,
            init_idx=[0, 1],
            final_idx=[0, 1],
            ckpt_dest="pool",
            ckpt_idx=[[2, 3, 4, 5], [6, 7, 8, 9]],
        )
    c = base_case(seqlens=[70, 40], ckpt=ckpt, **extra)
    print(describe(c))
    got, want, problems = check_case(c, seed)
    assert not problems, "\n".join(problems)
    if dest == "states":
        nan_rows = [0, 2, 4, 7]
        assert all(bool(torch.isnan(got["ckpt"][r]).all()) for r in nan_rows)
        assert all(finite(got["ckpt"][r]) for r in (1, 3, 5, 6))
    else:
        assert all(bool(torch.isnan(got["pool"][s]).all()) for s in (2, 4, 6, 9))
        assert all(finite(got["pool"][s]) for s in (3, 5, 7, 8))


@pytest.mark.parametrize("chunk", [64, 32])
@pytest.mark.parametrize("route", ["prefill", "chunk_kda"])
def test_intermediate_states(seed, chunk, route):
    dtype = BF16
    c = base_case(
        seqlens=[130, 0, 64, 1, 65],
        inter_chunk=chunk,
        inter_dtype=dtype,
        route=route,
        gate="lower_bound",
        lower_bound=-5.0,
        safe_gate=True,
        v_first=False,
    )
    print(describe(c))
    _, _, problems = check_case(c, seed)
    assert not problems, "\n".join(problems)


@cuda_only
def test_no_write_beyond_the_given_state_memory(seed):
    # On the GPU the library cannot read cu_seqlens or the slot indices before the launch, so it
    # cannot check them against the sizes of intermediate_states and the pool: the kernels must
    # not write past the memory they were given. Here intermediate_states is two rows short and
    # a final slot and a checkpoint slot name slot P, one past the pool; both are views of larger
    # tensors whose tails must keep their bytes (what lands inside the given memory for such a
    # caller error is not specified, so it is not checked).
    c = base_case(seqlens=[130, 0, 64], inter_chunk=32, inter_dtype=F32)
    x = make_inputs(c, seed)
    d = copies_on(x, DEV)
    rows = chunk_rows(c, 32)
    inter_all = nan_tensor((1, rows + 2) + state_shape(c, 1)[1:], F32, DEV)
    inter = inter_all[:, : rows - 2]
    P = 4
    gen = torch.Generator().manual_seed(seed)
    pool_all = (0.5 * torch.randn(state_shape(c, P + 2), generator=gen)).to(DEV)
    pool_tail = pool_all[P:].clone()
    out = nan_tensor(tuple(x["v"].shape), BF16, DEV)
    idx = torch.tensor([0, 1, 2], dtype=torch.int32, device=DEV)
    final_idx = torch.tensor([0, P, 2], dtype=torch.int32, device=DEV)
    offsets = torch.tensor([[16], [0], [64]], dtype=torch.int64, device=DEV)
    ckpt_idx = torch.tensor([[3], [-1], [P]], dtype=torch.int32, device=DEV)
    flash_kda.prefill(
        d["q"],
        d["k"],
        d["v"],
        d["g"],
        d["beta"],
        out=out,
        A_log=d["A_log"],
        dt_bias=d["dt_bias"],
        cu_seqlens=d["cu_seqlens"],
        gate="lower_bound",
        lower_bound=-5.0,
        use_qk_l2norm=True,
        use_beta_sigmoid=True,
        state_v_first=True,
        state_pool=pool_all[:P],
        initial_state_indices=idx,
        final_state_indices=final_idx,
        checkpoint_offsets=offsets,
        checkpoint_indices=ckpt_idx,
        intermediate_states=inter,
        intermediate_chunk_size=32,
    )
    torch.cuda.synchronize()
    assert bool(torch.isnan(inter_all[:, rows - 2 :]).all()), "written past intermediate_states"
    assert same_bits(pool_all[P:], pool_tail), "written past the state pool"


# ---- fla -----------------------------------------------------------------------------------------


def fla_chunk_kda(c, d, **kw):
    """fla's own chunk_kda on device tensors d (FLA_FLASH_KDA=0: not routed to flash_kda)."""
    from fla.ops.kda import chunk_kda

    use_gate = c["gate"] != "none"
    extra = {}
    if use_gate:
        extra["A_log"] = None if d["A_log"] is None else d["A_log"].float()
        extra["dt_bias"] = None if d["dt_bias"] is None else d["dt_bias"].float().reshape(-1)
    cu = None if d["cu_seqlens"] is None else d["cu_seqlens"].long()
    with torch.inference_mode():
        return chunk_kda(
            d["q"],
            d["k"],
            d["v"],
            d["g"],
            d["beta"],
            scale=c["scale"],
            initial_state=d["initial_state"],
            output_final_state=True,
            use_qk_l2norm_in_kernel=c["norm"],
            use_gate_in_kernel=use_gate,
            use_beta_sigmoid_in_kernel=c["sigmoid"],
            allow_neg_eigval=c["neg"],
            safe_gate=c["safe_gate"],
            lower_bound=c["lower_bound"] if c["gate"] == "lower_bound" else None,
            state_v_first=c["v_first"],
            cu_seqlens=cu,
            **extra,
            **kw,
        )


def fla_case(r):
    """An option set of the sweep that fla's chunk_kda takes: fp32 states in and out, no pool,
    no checkpoints; K = V in {64, 128} and H fixed to keep Triton's autotuning to a few shapes."""
    c = draw_case(r)
    K = r.choice([64, 128])
    c.update(
        K=K,
        V=K,
        H=2,
        HV=2 * r.choice([1, 2]),
        state_mode="tensors",
        init_dtype=F32,
        final_dtype=F32,
        final=True,
        has_init=None,
        ckpt=None,
        ckpt_idx=None,
        inter_chunk=None,
        pool_size=0,
        init_idx=None,
        final_idx=None,
        route="chunk_kda",
        g_dtype=F32,
        beta_dtype=c["dtype"],
        param_dtype=F32,
    )
    if c["seqlens"] is None:
        c["B"] = 1
    return c


FLA_CASES = [fla_case(random.Random(SEED * 1000 + 10**6 + i)) for i in range(8)]


@cuda_only
@pytest.mark.parametrize("i", range(len(FLA_CASES)), ids=lambda i: f"fla{i}")
def test_not_worse_than_fla(seed, i, monkeypatch):
    pytest.importorskip("fla.ops.kda")
    monkeypatch.setenv("FLA_FLASH_KDA", "0")
    c = FLA_CASES[i]
    print(f"fla case {i}: {describe(c)}")
    x = make_inputs(c, seed * 1000 + 10**6 + i)
    d = copies_on(x, DEV)
    o_fla, ht_fla = fla_chunk_kda(c, d)
    torch.cuda.synchronize()
    ours = run(c, x, DEV)
    want, _ = expected(c, x, reference(c, x, recorded_offsets(c)), nan_rule=False)
    errors = {}
    for name, o, f in (("out", ours["out"], o_fla), ("final", ours["final"], ht_fla)):
        assert tuple(f.shape) == tuple(o.shape), f"{name}: fla {tuple(f.shape)} ours {o.shape}"
        errors[name] = (rel(o, want[name]), rel(f, want[name]))
        print(f"  {name}: ours {errors[name][0]:.3e}, fla {errors[name][1]:.3e} vs float64")
    for name, (e_ours, e_fla) in errors.items():
        assert e_ours <= 1.2 * e_fla + 1e-4, (
            f"{name}: ours {e_ours:.3e} > 1.2 x fla {e_fla:.3e} + 1e-4"
        )


@pytest.mark.parametrize("H", [1, 2])
def test_small_call_with_nearly_orthogonal_q_and_k(seed, H):
    # Each q_i nearly orthogonal to every key k_j, j <= i, of its head (q_i . k_j ~ 1e-3, unit
    # rows, no decay): every entry of q k^T cancels to a thousandth of its terms, which magnifies
    # its operands' rounding a thousand times, and a call of T x H < 256 rows has nothing to
    # average it with (products on tf32 operands, emulated in float64: 1.8-4.0e-2 of the
    # output). Such calls form the products as fp32 sums (prefill_select.c, choose_exact_qk):
    # the output must meet the sweep's bar (the CPU backend: 1.6-1.7e-3, the roundings of u and
    # of the output).
    c = base_case(
        H=H, HV=H, T=8, gate="none", A_log=False, dt_bias=False, g_dtype=F32, state_mode="none"
    )
    x = make_inputs(c, seed)
    x["g"] = torch.zeros(tuple(x["g"].shape), dtype=F32)  # no decay: q_i . k_j as built
    k = unit(x["k"].double())
    gen = torch.Generator().manual_seed(seed + 11)
    q = torch.randn(tuple(k.shape), generator=gen, dtype=torch.float64)
    for t in range(c["T"]):
        for h in range(H):
            basis, _ = torch.linalg.qr(k[0, : t + 1, h, :].T)  # K x (t + 1), orthonormal
            r = q[0, t, h] - basis @ (basis.T @ q[0, t, h])
            q[0, t, h] = unit(r) + 1e-3 * k[0, t, h]
    x["q"], x["k"] = q.to(c["dtype"]), k.to(c["dtype"])
    print(describe(c))
    _, _, problems = check_case(c, seed, x)
    assert not problems, "\n".join(problems)


@cuda_only
@pytest.mark.parametrize("chunk", [64, 32])
def test_intermediate_states_like_fla(seed, chunk, monkeypatch):
    pytest.importorskip("fla.ops.kda")
    monkeypatch.setenv("FLA_FLASH_KDA", "0")
    c = base_case(
        seqlens=[130, 0, 64, 1, 65],
        inter_chunk=chunk,
        inter_dtype=BF16,
        route="chunk_kda",
        gate="softplus",
        lower_bound=None,
        v_first=False,
        H=2,
        HV=4,
    )
    x = make_inputs(c, seed)
    d = copies_on(x, DEV)
    o_fla, ht_fla, h_fla = fla_chunk_kda(c, d, return_intermediate_states=True, chunk_size=chunk)
    torch.cuda.synchronize()
    ours = run(c, x, DEV)
    h = ours["inter"]
    print(f"h: ours {tuple(h.shape)} {h.dtype}, fla {tuple(h_fla.shape)} {h_fla.dtype}")
    assert tuple(h.shape) == tuple(h_fla.shape) and h.dtype == h_fla.dtype
    want, _ = expected(c, x, reference(c, x, recorded_offsets(c)), nan_rule=False)
    e_ours, e_fla = rel(h, want["inter"]), rel(h_fla, want["inter"])
    e_cross = rel(h, h_fla)
    print(f"h vs float64: ours {e_ours:.3e}, fla {e_fla:.3e}; ours vs fla {e_cross:.3e}")
    assert e_ours <= state_bar(c, BF16)
    assert e_cross <= state_bar(c, BF16) + e_fla


def test_sweep_covers_every_dimension():
    """The drawn option sets reach each value of each dimension (a guard on the generator at
    the default count; a small FKDA_SWEEP_CASES skips it)."""
    if SWEEP_CASES < 60:
        pytest.skip("fewer than 60 option sets")
    seen = {
        key: {repr(c[key]) for c in SWEEP}
        for key in ("dtype", "gate", "norm", "sigmoid", "neg", "state_mode", "v_first", "route")
    }
    assert len(seen["dtype"]) == 3 and len(seen["gate"]) == 3, seen
    for key in ("norm", "sigmoid", "neg", "v_first", "route"):
        assert len(seen[key]) == 2, (key, seen[key])
    assert len(seen["state_mode"]) == 4, seen["state_mode"]
    assert any(c["ckpt"] for c in SWEEP) and any(c["inter_chunk"] for c in SWEEP)
    assert any(c["HV"] > c["H"] for c in SWEEP)
    assert any(c["K"] < 128 for c in SWEEP) and any(c["V"] > 128 for c in SWEEP)
    assert any(c["K"] > 128 for c in SWEEP)
    assert math.isfinite(min(c["lower_bound"] or 0.0 for c in SWEEP))

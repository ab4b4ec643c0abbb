"""The CUDA decode skips a sequence whose slot lies outside the pool, one past the end included.

On the GPU the state indices live in device memory, so the library cannot check them before the
launch (the CPU API refuses such an index instead); the kernels must treat any slot outside
[0, P) as a skip: the sequence reads and writes no state and its rows of out are zero. The pool
here is the first P slots of a larger tensor, so slot P exists in memory and a kernel that took
it would change bytes the test sees. The sequences with valid slots are compared with the CPU
float64 reference, and the slots no sequence names must keep their bytes.
"""

import os
import secrets

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)

# Imported after the skips above, as in the other GPU tests: flash_kda loads the library when
# imported, and a machine without torch or a CUDA device skips this module without loading it.
import flash_kda  # noqa: E402

if not flash_kda.has_cuda():
    pytest.skip("libflashkda was built without CUDA", allow_module_level=True)

DEV = torch.device("cuda", 0)
N, HV, K, V, P = 4, 4, 128, 128, 5
OPTIONS = {
    "gate": "lower_bound",
    "lower_bound": -5.0,
    "use_qk_l2norm": True,
    "use_beta_sigmoid": True,
}
# sequence 0 names slot P (one past the last), sequence 2 is skipped (-1); 1 and 3 are live
INDICES = [P, 1, -1, 3]
LIVE = [1, 3]
UNNAMED_SLOTS = [0, 2, 4]


@pytest.fixture
def rng(request):
    seed = int(os.environ.get("FKDA_TEST_SEED", secrets.randbits(32)))
    print(f"seed {seed} ({request.node.name}); rerun with FKDA_TEST_SEED={seed}")
    return np.random.default_rng(seed)


def rel_err(x, ref):
    x, ref = x.double(), ref.double()
    return ((x - ref).norm() / ref.norm()).item()


def same_bytes(a, b):
    return torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))


def check_skips(rng, indices, T, pool_dtype, v_first, packed, pool_size=P):
    """One decode of len(indices) sequences of T tokens (packed: vLLM's form, one row of N T
    tokens and cu_seqlens = 0, T, 2T, ...) on the first pool_size slots of a pool of one more:
    every sequence whose slot is outside [0, pool_size) must be skipped, the rest match the CPU
    reference. The valid slots must be distinct, as a serving engine's are: two sequences on one
    slot in one call race on the GPU, while the reference runs them in order."""
    n_seq = len(indices)
    valid = [s for s in indices if 0 <= s < pool_size]
    assert len(set(valid)) == len(valid), "a slot named twice"

    def randn(*shape, sd=1.0):
        return torch.from_numpy((sd * rng.standard_normal(shape)).astype(np.float32))

    tokens = {n: randn(n_seq, T, HV, K).to(torch.bfloat16) for n in ("q", "k", "g")}
    tokens["v"] = randn(n_seq, T, HV, V).to(torch.bfloat16)
    tokens["beta"] = randn(n_seq, T, HV).to(torch.bfloat16)
    A_log = torch.from_numpy(rng.uniform(-1, 1, HV).astype(np.float32))
    dt_bias = randn(HV, K, sd=0.5)
    backing = randn(pool_size + 1, HV, K, V, sd=0.5).to(pool_dtype)  # [V, K]: the same shape

    def call(toks, pool, idx, out, **kw):
        toks = [toks[n] for n in ("q", "k", "v", "g", "beta")]
        cu = None
        if packed:  # the same bytes as one row of n_seq * T tokens
            toks = [t.reshape(1, n_seq * T, *t.shape[2:]) for t in toks]
            out = out.view(1, n_seq * T, *out.shape[2:])
            cu = torch.arange(0, n_seq * T + 1, T, dtype=torch.int32, device=pool.device)
        flash_kda.decode(
            *toks,
            pool,
            state_indices=idx,
            out=out,
            cu_seqlens=cu,
            state_v_first=v_first,
            **kw,
            **OPTIONS,
        )

    # GPU: the pool is backing[:P] on the device; slot P is the extra one
    dev_backing = backing.to(DEV)
    out = torch.full((n_seq, T, HV, V), float("nan"), dtype=torch.bfloat16, device=DEV)
    call(
        {n: t.to(DEV) for n, t in tokens.items()},
        dev_backing[:pool_size],
        torch.tensor(indices, dtype=torch.int32, device=DEV),
        out,
        A_log=A_log.to(DEV),
        dt_bias=dt_bias.to(DEV),
    )
    torch.cuda.synchronize()
    got_pool, got_out = dev_backing.cpu(), out.cpu()

    # the reference: the same call on the CPU, the out-of-pool sequences skipped explicitly
    ref_backing = backing.clone()
    ref_out = torch.zeros((n_seq, T, HV, V), dtype=torch.bfloat16)
    ref_indices = torch.tensor(
        [s if 0 <= s < pool_size else -1 for s in indices], dtype=torch.int32
    )
    call(
        tokens,
        ref_backing[:pool_size],
        ref_indices,
        ref_out,
        A_log=A_log,
        dt_bias=dt_bias,
        reference=True,
    )

    assert same_bytes(got_pool[pool_size], backing[pool_size]), (
        "the slot one past the pool was written"
    )
    named = {s for s in indices if 0 <= s < pool_size}
    for slot in range(pool_size):
        if slot not in named:
            assert same_bytes(got_pool[slot], backing[slot]), (
                f"slot {slot}, named by no sequence, changed"
            )
    for n, slot in enumerate(indices):
        if not 0 <= slot < pool_size:
            assert torch.count_nonzero(got_out[n]) == 0, (
                f"sequence {n} (slot {slot}) has nonzero rows"
            )
            continue
        assert torch.isfinite(got_out[n]).all()
        # both round the same fp32 / float64 values: at most a few elements differ by an ulp
        assert rel_err(got_out[n], ref_out[n]) < 4e-3
        state_bar = 4e-3 if pool_dtype == torch.bfloat16 else 1e-5
        assert rel_err(got_pool[slot], ref_backing[slot]) < state_bar


@pytest.mark.parametrize("packed", [False, True], ids=["batch", "packed"])
@pytest.mark.parametrize("v_first", [False, True])
@pytest.mark.parametrize("pool_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("T", [1, 2])
def test_slot_at_pool_size_is_skipped(rng, T, pool_dtype, v_first, packed):
    assert [s for s in INDICES if 0 <= s < P] == [INDICES[n] for n in LIVE]
    check_skips(rng, INDICES, T, pool_dtype, v_first, packed)


@pytest.mark.parametrize("packed", [False, True], ids=["batch", "packed"])
@pytest.mark.parametrize("v_first", [False, True])
def test_slot_at_pool_size_is_skipped_many_heads(rng, v_first, packed, monkeypatch):
    """Enough bf16 heads for the packed kernels (two or more per SM), with FKDA_DECODE_PACKED=1
    making sure they serve: every fourth sequence names the slot one past the pool, one names -1,
    the others a slot of their own."""
    monkeypatch.setenv("FKDA_DECODE_PACKED", "1")
    n_seq = 2 * torch.cuda.get_device_properties(DEV).multi_processor_count // HV * 2 + 1
    pool_size = n_seq
    indices = [pool_size if n % 4 == 0 else n for n in range(n_seq)]
    indices[1] = -1
    check_skips(rng, indices, 1, torch.bfloat16, v_first, packed, pool_size)

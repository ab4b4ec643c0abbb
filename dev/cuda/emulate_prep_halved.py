"""emulate_prep_halved.py: runs the prep's step 4' halved (src/cuda/prefill_prep_steps.cuh,
prep_pair_block, the fp16 family's prep_pair_block16, and prep_pair_diagonal) and its checked
step 6 from a tile of Kd (prep_finish_tc, bf16 family: prep_negw_tf32 unscaled) on the CPU, lane
by lane, under the PTX ISA's fragment models of mma.m16n8k8 .tf32 and mma.m16n8k16 .bf16, and
compares L, Mqk and -W with a float64 reference of the same chunk.

What it checks:
  - the maps: prep_pair_block's and prep_pair_block16's k-steps put every key in exactly one slot
    of one k-step, with a key's A and B values from the same lane; prep_pair_diagonal's 72
    entries are the two triangles (i >= j within a half) with every key once; together with the
    block they cover the 136 entries i >= j once each, and nothing above the diagonal;
  - bank conflicts of both forms' 16-byte shared loads (the fp32 tiles' rows are 512 bytes, so
    only the unit decides the bank group): the diagonal form's quarter-warps meet none, the
    block's meet in pairs (lanes of one t, different rows);
  - the numbers: for decaying gates from gentle to 2^-150 a token (the span that sends a chunk to
    step 4'), the halved form's L and Mqk (the block's on tf32 operands, or on bf16 hi + lo terms
    for the fp16 family; the triangles in fp32) and -W (tf32 Kd) against float64, with the bars
    below, every entry finite; and that a growing gate would break both blocks' factors (the
    reason the kernel keeps such chunks whole-pairwise), shown on one chunk;
  - the halved vote (prep_block_unbounded on step 3's running sums): on 3,000 random chunks,
    decaying, growing here and there or steeply, full and partial, every chunk it halves has
    every block exponent <= 0 in fp32, every chunk whose gate never grows is halved, and the
    second half's test alone would let a positive exponent through.

It mirrors the device code by hand: when prep_block_operands, prep_pair_block, prep_pair_block16,
prep_pair_diagonal, prep_finish_tc or prep_block_unbounded change, change this too. It cannot catch
a hardware that departs from the documented fragment models, nor a race.

Run: /work/venv/bin/python dev/cuda/emulate_prep_halved.py (numpy; a few seconds). Exit status 0
when every check passes, 1 when not.
"""

import sys

import ml_dtypes
import numpy as np

K = 128


def f32(x):
    return np.asarray(x, np.float64).astype(np.float32)


def tf32(x):
    """tf32_operand: + 0x1000 to the bits, then the tensor core's read of the top 19 bits."""
    b = np.atleast_1d(f32(x)).view(np.uint32).astype(np.uint64)
    b = ((b + 0x1000) & 0xFFFFFFFF) & 0xFFFFE000
    return b.astype(np.uint32).view(np.float32).astype(np.float64).reshape(np.shape(x))


def ex2(x):
    """ex2.approx.ftz.f32: the exact power, rounded to fp32, subnormal results flushed to 0."""
    y = f32(np.exp2(np.asarray(x, np.float64)))
    return np.where(np.abs(y) < np.float32(2.0**-126), np.float32(0), y)


def pair_entry(e):  # prep_pair_entry
    r = int((np.sqrt(8.0 * e + 1.0) - 1.0) * 0.5)
    while (r + 1) * (r + 2) // 2 <= e:
        r += 1
    while r * (r + 1) // 2 > e:
        r -= 1
    return r, e - r * (r + 1) // 2


def triangle_entries():
    """prep_pair_diagonal's walk: (quad q, row i, column j) for warps 1-3, rounds 0-2, quads 0-7."""
    for warp in (1, 2, 3):
        for rnd in range(3):
            for q in range(8):
                d = (warp - 1) * 24 + rnd * 8 + q
                upper = d >= 36
                i, j = pair_entry(d - 36 if upper else d)
                yield q, i + 8 * upper, j + 8 * upper


def block_keys(s, h, t):
    """k-step 2 s + h: (key in slot t, key in slot t + 4) of lane column t."""
    u = 4 * s + t
    return 4 * u + 2 * h, 4 * u + 2 * h + 1


def block16_keys(s, t):
    """prep_pair_block16, k-step s: lane column t's keys in k-slots 2t, 2t + 1, 2t + 8, 2t + 9."""
    u = t + 4 * s
    return 4 * u, 4 * u + 1, 4 * u + 2, 4 * u + 3


def bf16(x):
    """Round to nearest even bf16, back to float64."""
    return np.asarray(x, np.float32).astype(ml_dtypes.bfloat16).astype(np.float64)


def hi_lo(x):
    """pack_bf16x2 and prep_lo_bf16x2: hi = bf16(x), lo = bf16(x - hi) (the difference in fp32)."""
    hi = bf16(x)
    return hi, bf16(f32(np.float32(x) - np.float32(hi)))


def check_maps():
    ok = True
    # the block: every key once over (k-step, slot)
    seen = np.zeros(K, int)
    for s in range(8):
        for h in range(2):
            for t in range(4):
                a, b = block_keys(s, h, t)
                seen[a] += 1
                seen[b] += 1
    if not (seen == 1).all():
        print("FAIL block: keys not covered once")
        ok = False
    seen = np.zeros(K, int)
    for s in range(8):
        for t in range(4):
            for c in block16_keys(s, t):
                seen[c] += 1
    if not (seen == 1).all():
        print("FAIL block16: keys not covered once")
        ok = False
    # the triangles: warps 1-3, rounds 0-2, quads 0-7
    entries = {}
    for q, i, j in triangle_entries():
        keys = []
        for kq in range(4):
            for v in range(8):
                u = 8 * kq + ((v + 2 * kq + q) & 7)
                keys += [4 * u + x for x in range(4)]
        if sorted(keys) != list(range(K)):
            print(f"FAIL diagonal entry ({i}, {j}): keys not covered once")
            ok = False
        entries[(i, j)] = entries.get((i, j), 0) + 1
    block = {(i, j): 1 for i in range(8, 16) for j in range(8)}
    for e, n in block.items():
        entries[e] = entries.get(e, 0) + n
    want = {(i, j) for i in range(16) for j in range(i + 1)}
    if set(entries) != want or any(n != 1 for n in entries.values()):
        print("FAIL entries: the block and the triangles do not cover i >= j once each")
        ok = False
    return ok


def bank_groups():
    """Worst count of lanes meeting in one 16-byte bank group per quarter-warp phase."""
    worst_diag = 0
    for v in range(8):
        for phase in range(4):
            lanes = range(8 * phase, 8 * phase + 8)
            groups = [((8 * (ln & 3) + ((v + 2 * (ln & 3) + (ln >> 2)) & 7)) & 7) for ln in lanes]
            worst_diag = max(worst_diag, max(groups.count(x) for x in set(groups)))
    worst_block = 0
    for s in range(8):
        for phase in range(4):
            lanes = range(8 * phase, 8 * phase + 8)
            # rows 8 + g (or g) differ per g, one unit per t: group = unit mod 8
            addrs = [((8 + (ln >> 2)), 4 * s + (ln & 3)) for ln in lanes]
            groups = {}
            for row, u in addrs:
                groups.setdefault(u & 7, set()).add((row, u))
            worst_block = max(worst_block, max(len(a) for a in groups.values()))
    return worst_diag, worst_block


def reference(q, k, G, b, scale):
    """float64: L_ij = b_i sum_c k_i k_j 2^(G_i - G_j) (i > j), Mqk_ij from q_i (i >= j); and
    each entry's sum of |terms|, the scale a dot product's rounding error is relative to."""
    L, M, Ls, Ms = (np.zeros((16, 16)) for _ in range(4))
    for i in range(16):
        for j in range(i + 1):
            kj = k[j] * np.exp2(G[i] - G[j])
            if i > j:
                L[i, j] = b[i] * np.dot(k[i], kj)
                Ls[i, j] = b[i] * np.abs(k[i] * kj).sum()
            M[i, j] = scale * np.dot(q[i], kj)
            Ms[i, j] = scale * np.abs(q[i] * kj).sum()
    return L, M, Ls, Ms


def block16(fq, fk, fg):
    """prep_pair_block16 (the fp16 family), lane by lane into mma.m16n8k16's fragment model: the
    16 x 8 tile D, rows 0-7 L's block before b, rows 8-15 Mqk's before scale."""
    hh, hl, lh = np.zeros((16, 8)), np.zeros((16, 8)), np.zeros((16, 8))
    for s in range(8):
        Ah, Al = np.zeros((16, 16)), np.zeros((16, 16))
        Bh, Bl = np.zeros((16, 8)), np.zeros((16, 8))
        for lane in range(32):
            g, t = lane >> 2, lane & 3
            slots = (2 * t, 2 * t + 1, 2 * t + 8, 2 * t + 9)
            for slot, c in zip(slots, block16_keys(s, t)):
                fa = ex2(np.float32(fg[8 + g, c]) - np.float32(fg[7, c]))
                fb = ex2(np.float32(fg[7, c]) - np.float32(fg[g, c]))
                Ah[g, slot], Al[g, slot] = hi_lo(np.float32(fk[8 + g, c]) * fa)
                Ah[g + 8, slot], Al[g + 8, slot] = hi_lo(np.float32(fq[8 + g, c]) * fa)
                Bh[slot, g], Bl[slot, g] = hi_lo(np.float32(fk[g, c]) * fb)
        hh += Ah @ Bh
        hl += Ah @ Bl
        lh += Al @ Bh
    return f32(f32(hh) + f32(f32(hl) + f32(lh)))


def emulate(fq, fk, fg, b, scale, f16=False):
    """The kernel's halved step 4' on fp32 tiles (fq, fk, fg as the pairwise branch writes them);
    f16: the fp16 family's block (prep_pair_block16)."""
    L = np.zeros((16, 16))
    M = np.zeros((16, 16))
    if f16:
        D = block16(fq, fk, fg)
        for i in range(8, 16):
            for j in range(8):
                L[i, j] = f32(b[i] * D[i - 8, j])
                M[i, j] = f32(scale * D[i, j])
        return triangles(fq, fk, fg, b, scale, L, M)
    # warp 0: the block, lane by lane into the fragment model
    Amat = {}  # (k-step, row m, slot) -> value; B (k-step, slot, column n)
    Bmat = {}
    for lane in range(32):
        g, t = lane >> 2, lane & 3
        for s in range(8):
            for h in range(2):
                for x in range(2):
                    c = block_keys(s, h, t)[x]
                    fa = ex2(np.float32(fg[8 + g, c]) - np.float32(fg[7, c]))
                    fb = ex2(np.float32(fg[7, c]) - np.float32(fg[g, c]))
                    Amat[(2 * s + h, g, t + 4 * x)] = tf32(np.float32(fk[8 + g, c]) * fa)
                    Amat[(2 * s + h, g + 8, t + 4 * x)] = tf32(np.float32(fq[8 + g, c]) * fa)
                    Bmat[(2 * s + h, t + 4 * x, g)] = tf32(np.float32(fk[g, c]) * fb)
    D = np.zeros((16, 8))
    for ks in range(16):
        A = np.array([[Amat[(ks, m, kk)] for kk in range(8)] for m in range(16)])
        B = np.array([[Bmat[(ks, kk, n)] for n in range(8)] for kk in range(8)])
        D += A @ B
    D = f32(D)
    for lane in range(32):
        g, t = lane >> 2, lane & 3
        for x in range(2):
            i, j = 8 + g, 2 * t + x
            L[i, j] = f32(b[i] * D[g, j])
            M[i, j] = f32(scale * D[g + 8, j])
    return triangles(fq, fk, fg, b, scale, L, M)


def triangles(fq, fk, fg, b, scale, L, M):
    """Warps 1-3: the triangles, fp32 terms as the device forms them (sums in float64 here)."""
    for _, i, j in triangle_entries():
        kj = f32(fk[j] * ex2(f32(fg[i]) - f32(fg[j])))
        lsum = np.dot(f32(fk[i]).astype(np.float64), kj)
        msum = np.dot(f32(fq[i]).astype(np.float64), kj)
        L[i, j] = f32(b[i] * lsum) if i > j else 0.0
        M[i, j] = f32(scale * msum)
    return L, M


def negw_reference(L, b, k, G):
    inv = np.linalg.inv(np.eye(16) + L)
    binv = inv * b[None, :]
    return -(binv @ (k * np.exp2(G))), binv


def negw_emulated(binv, fk, fg):
    """prep_finish_tc, bf16 family: -W = -(tf32(bINV) tf32(Kd)) with Kd = k 2^G formed in fp32."""
    kd = f32(f32(fk) * ex2(f32(fg)))
    return -(tf32(binv) @ tf32(kd))


def chunk(rng, step_lo, step_hi, norm=True):
    q = rng.standard_normal((16, K))
    k = rng.standard_normal((16, K))
    if norm:
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        k /= np.linalg.norm(k, axis=1, keepdims=True)
    # log2 decay per token, clamped as prep_gate does
    steps = rng.uniform(step_lo, step_hi, (16, K))
    steps = np.clip(steps, -150, 150)
    G = np.cumsum(steps, axis=0)
    b = rng.uniform(0, 1, 16)
    return q, k, G, b


def block_vote(a, rows):
    """prefill_prep.cu's step 3 and prep_block_unbounded on the gate steps a [16, K] (log2 units)
    of a chunk of `rows` tokens: each half's running sums in fp32 (the second half's from 0), D =
    G_r - G_7, the vote (True: halved) and the G tile the pairwise branch writes (G_7 + D)."""
    run = np.zeros((16, K), np.float32)
    for half in (0, 1):
        acc = np.zeros(K, np.float32)
        for r in range(8 * half, 8 * half + 8):
            if r < rows:
                acc = np.float32(acc + np.float32(a[r]))
            run[r] = acc
    gref = run[7].copy()
    D = run.copy()
    D[:8] = np.float32(run[:8] - gref)
    with np.errstate(invalid="ignore"):
        breaks = np.any(~(D[:8] >= 0)) or np.any(~(D[8:] <= 0))
    return not breaks, np.float32(gref + D)


def check_vote(rng):
    """The halved vote's rule: wherever it halves, every exponent the block forms (G_i - G_7 for
    i >= 8, G_7 - G_j for j < 8, in fp32 on the G tile) is <= 0; every chunk whose gate never
    grows is halved; and the rule has teeth (halving on the second half's test alone lets a
    positive exponent through)."""
    ok, seen, halved_growing, teeth = True, 0, 0, False
    for trial in range(3000):
        rows = 16 if trial % 3 else int(rng.integers(1, 17))
        lo = [-34.6, -3.0, -150.0][trial % 3]
        hi = [0.0, 0.72, 1.5, 60.0][trial % 4]  # 0.72: the tests' e^0.5 growth in log2 units
        a = rng.uniform(lo, hi, size=(16, K))
        if trial % 4 == 1:  # growth only here and there, as the tests' gate
            a = np.where(rng.random((16, K)) < 0.02, a, np.minimum(a, 0.0))
        vote, G = block_vote(a, rows)
        with np.errstate(over="ignore", invalid="ignore"):
            up = np.float32(G[8:] - G[7])  # rows 8..15 against row 7
            down = np.float32(G[7] - G[:8])  # row 7 against rows 0..7
        worst = max(up.max(), down.max())
        if vote and not worst <= 0:
            print(f"FAIL vote: halved with a block exponent {worst} > 0 (trial {trial})")
            ok = False
        if hi == 0.0 and not vote:
            print(f"FAIL vote: a gate that never grows was not halved (trial {trial})")
            ok = False
        seen += vote
        halved_growing += vote and hi > 0
        # the planted slip: the first half's test dropped
        second_only = not np.any(~(np.float32(G[8:] - G[7]) <= 0))
        teeth |= second_only and down.max() > 0
    print(
        f"halved vote: {seen} of 3000 chunks halved ({halved_growing} with growing steps), "
        f"no block exponent above 0; the second half's test alone would let one through: {teeth}"
    )
    return ok and teeth


def main():
    ok = check_maps()
    wd, wb = bank_groups()
    print(f"bank groups: diagonal form {wd} lane(s) a group (want 1), block {wb} (two-way)")
    ok &= wd == 1 and wb == 2
    rng = np.random.default_rng(7)
    scale = K**-0.5
    # (name, step range in log2 units): the lower bound -20 of the bench (up to 28.9 a token), gate
    # none at -24 nats (34.6), and the clamp (150): every one decays at every step
    worst, worst16 = {}, {}
    cases = [
        ("lb -20", -28.9, -8.0),
        ("gate none -24", -34.6, 0.0),
        ("clamped", -150.0, -40.0),
        ("slow", -3.0, 0.0),
    ]
    for name, lo, hi in cases:
        for _ in range(6):
            q, k, G, b = chunk(rng, lo, hi)
            fq, fk, fg = f32(q), f32(k), f32(G)
            Lr, Mr, Ls, Ms = reference(*(x.astype(np.float64) for x in (fq, fk, fg)), b, scale)
            Le, Me = emulate(fq, fk, fg, b, scale)
            L16, M16 = emulate(fq, fk, fg, b, scale, f16=True)
            if not (np.isfinite(L16).all() and np.isfinite(M16).all()):
                print(f"FAIL {name}: non-finite L or Mqk in the fp16 family's form")
                ok = False
            with np.errstate(divide="ignore", invalid="ignore"):
                # the fp16 family per entry too, but against at least 2^-24: its lo terms of an
                # entry of terms near 2^-120 fall below fp32's normal range in the products (the
                # tensor core drops them), and its record holds nothing below fp16's 2^-24 anyway
                e16 = max(
                    np.nanmax(np.abs(L16 - Lr) / np.maximum(Ls, 2.0**-24)),
                    np.nanmax(np.abs(M16 - Mr) / np.maximum(Ms, 2.0**-24)),
                )
            worst16[name] = max(worst16.get(name, 0.0), e16)
            if not (np.isfinite(Le).all() and np.isfinite(Me).all()):
                print(f"FAIL {name}: non-finite L or Mqk")
                ok = False
                continue
            # each entry against the sum of its terms' magnitudes (the block's tf32 operands: a few
            # 2^-11 at most; the triangles' fp32 terms: ~2^-20); entries whose terms all underflow
            # (below 2^-126 of the largest) must come out as 0 or as their tiny true value
            with np.errstate(divide="ignore", invalid="ignore"):
                eL = np.nanmax(
                    np.where(Ls > 2.0**-126, np.abs(Le - Lr) / Ls, np.abs(Le - Lr) / 2.0**-126)
                )
                eM = np.nanmax(
                    np.where(Ms > 2.0**-126, np.abs(Me - Mr) / Ms, np.abs(Me - Mr) / 2.0**-126)
                )
            Wr, binv = negw_reference(Lr, b, fk.astype(np.float64), fg.astype(np.float64))
            We = negw_emulated(binv, fk, fg)
            eW = np.abs(We - Wr).max() / max(1e-30, np.abs(Wr).max(), 1.0)
            worst[name] = max(worst.get(name, 0.0), eL, eM, eW)
    for name, e in worst.items():
        good = e < 2.0**-9  # tf32's 2^-11 a term, twice over (A and B), with room; -W: relative
        print(
            f"{name}: worst error of L, Mqk (per |terms|), -W {e:.2e} ({'ok' if good else 'FAIL'})"
        )
        ok &= good
    for name, e in worst16.items():
        good = e < 2.0**-14  # bf16 hi + lo: ~2^-16 a term, the lo * lo product dropped
        verdict = "ok" if good else "FAIL"
        print(f"{name}, the fp16 family's block: worst error of L, Mqk {e:.2e} ({verdict})")
        ok &= good
    # a growing gate: the block's factors leave fp32's range while the true entries do not
    q, k, G, b = chunk(rng, -1.0, 0.0)
    steps = np.zeros((16, K))
    steps[1:8] = -120.0  # rows 1..7 fall far below row 0 ...
    steps[8:] = 100.0  # ... and rows 8.. climb back: G_15 - G_0 = -40, inside fp32's range
    G = np.cumsum(steps, axis=0)
    fq, fk, fg = f32(q), f32(k), f32(G)
    Lr, Mr, _, _ = reference(*(x.astype(np.float64) for x in (fq, fk, fg)), b, scale)
    with np.errstate(all="ignore"):
        Le, Me = emulate(fq, fk, fg, b, scale)
        L16, M16 = emulate(fq, fk, fg, b, scale, f16=True)
    broken = not np.allclose(Le[8:, :8], Lr[8:, :8], rtol=1e-2, atol=1e-6)
    broken &= not np.allclose(L16[8:, :8], Lr[8:, :8], rtol=1e-2, atol=1e-6)
    verdict = "differs from" if broken else "matches"
    print(f"growing gate: the block's factored form {verdict} the true entries")
    ok &= broken
    ok &= check_vote(rng)
    print("emulate_prep_halved:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

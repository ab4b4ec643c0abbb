"""emulate_prep_nested.py: runs the prep's step 4' nested (src/cuda/prefill_prep_steps.cuh,
prep_pair_level on tf32, the fp16 family's prep_pair_level16 on bf16 hi + lo terms, and the
diagonal's prep_pair_self) and its checked step 6 from a tile of Kd (prep_finish_tc, bf16 family:
prep_negw_tf32 unscaled) on the CPU, lane by lane, under the PTX ISA's fragment models of
mma.m16n8k8 .tf32 and mma.m16n8k16 .bf16, and compares L, Mqk and -W with a float64 reference of
the same chunk.

What it checks:
  - the maps: each level's k-steps put every key in exactly one slot of one k-step, with a key's A
    and B values from the same lane; the four levels' kept outputs and the diagonal cover the 136
    entries i >= j once each, and nothing above the diagonal;
  - bank conflicts of the 16-byte shared loads (the fp32 tiles' rows are 512 bytes, so only the
    unit decides the bank group): the levels' quarter-warps meet in pairs (lanes of one t,
    different rows), the diagonal's meet none;
  - the numbers: for decaying gates from gentle to 2^-150 a token (the span that sends a chunk to
    step 4'), the nested form's L and Mqk (on tf32 operands, or on bf16 hi + lo terms for the fp16
    family; the diagonal in fp32) and -W (tf32 Kd) against float64, with the bars below, every
    entry finite; and that a growing gate would break the factored form (the reason the kernel
    keeps such chunks whole-pairwise), shown on one chunk;
  - the vote (prep_rows_rise on step 3's D): on 3,000 random chunks, decaying, growing here and
    there or steeply, full and partial, every chunk it sends to the levels has every exponent a
    level forms <= 0 in fp32 (from the G tile the pairwise branch writes, G_7 + D), every chunk
    whose gate never grows is sent there, and dropping its test of row 8 would let a positive
    exponent through.

What it does not mirror: the products' sums run in float64 here (the kernel's in fp32 chains, a
few 2^-24 of an entry), b and scale are not rounded to fp32, and -W is formed from the reference's
L (so it sees step 6's roundings, not L's error). Partial chunks and K < 128 appear in the vote's
check only.

It mirrors the device code by hand: when prep_level_rows, prep_level_operands, prep_pair_level,
prep_pair_level16, prep_level_store, prep_pair_self, prep_rows_rise or prep_finish_tc change,
change this too. It cannot catch a hardware that departs from the documented fragment models, nor
a race.

Run: build/venv/bin/python dev/cuda/emulate_prep_nested.py (numpy, ml_dtypes; a few seconds). Exit
status 0 when every check passes, 1 when not.
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


LEVELS = (8, 4, 2, 1)  # warp w takes level 8 >> w


def level_rows(s, g):
    """prep_level_rows: lane row g's (x, y, z) at level s, by the kernel's bit operations (and
    checked against the block form x = 2 s b + s + w, y = 2 s b + w, b = g / s, w = g mod s)."""
    hb = g & ~(s - 1)
    x, y, z = g + hb + s, g + hb, 2 * hb + s - 1
    b, w = g // s, g % s
    assert (x, y, z) == (2 * s * b + s + w, 2 * s * b + w, 2 * s * b + s - 1)
    return x, y, z


def level_kept(s, g, gc):
    """prep_level_store: the output (A row g, B column gc) is kept when both lie in one block."""
    return (g ^ gc) < s


def level_keys(ks, h, t):
    """prep_pair_level, k-step 2 ks + h: (key in slot t, key in slot t + 4) of lane column t."""
    u = 4 * ks + t
    return 4 * u + 2 * h, 4 * u + 2 * h + 1


def level16_keys(ks, t):
    """prep_pair_level16, k-step ks: lane column t's keys in k-slots 2t, 2t + 1, 2t + 8, 2t + 9."""
    u = t + 4 * ks
    return 4 * u, 4 * u + 1, 4 * u + 2, 4 * u + 3


def self_units(lane):
    """prep_pair_self: the 16 units of lane (row lane >> 1, half lane & 1), in its order."""
    i, half = lane >> 1, lane & 1
    return [16 * half + ((v + i + 4 * half) & 15) for v in range(16)]


def bf16(x):
    """Round to nearest even bf16, back to float64."""
    return np.asarray(x, np.float32).astype(ml_dtypes.bfloat16).astype(np.float64)


def hi_lo(x):
    """pack_bf16x2 and prep_lo_bf16x2: hi = bf16(x), lo = bf16(x - hi) (the difference in fp32)."""
    hi = bf16(x)
    return hi, bf16(f32(np.float32(x) - np.float32(hi)))


def check_maps():
    ok = True
    seen = np.zeros(K, int)
    for ks in range(8):
        for h in range(2):
            for t in range(4):
                a, b = level_keys(ks, h, t)
                seen[a] += 1
                seen[b] += 1
    if not (seen == 1).all():
        print("FAIL level: keys not covered once")
        ok = False
    seen = np.zeros(K, int)
    for ks in range(8):
        for t in range(4):
            for c in level16_keys(ks, t):
                seen[c] += 1
    if not (seen == 1).all():
        print("FAIL level16: keys not covered once")
        ok = False
    for lane in range(0, 32, 2):
        keys = [4 * u + x for u in self_units(lane) + self_units(lane + 1) for x in range(4)]
        if sorted(keys) != list(range(K)):
            print(f"FAIL diagonal row {lane >> 1}: keys not covered once")
            ok = False
    entries = {}
    for s in LEVELS:
        for g in range(8):
            for gc in range(8):
                if level_kept(s, g, gc):
                    x, _, z = level_rows(s, g)
                    _, y, zc = level_rows(s, gc)
                    if not (zc == z and y <= z < x):
                        print(f"FAIL level {s}: kept ({x}, {y}) is not split at its block's z")
                        ok = False
                    entries[(x, y)] = entries.get((x, y), 0) + 1
    for i in range(16):
        entries[(i, i)] = entries.get((i, i), 0) + 1
    want = {(i, j) for i in range(16) for j in range(i + 1)}
    if set(entries) != want or any(n != 1 for n in entries.values()):
        print("FAIL entries: the levels and the diagonal do not cover i >= j once each")
        ok = False
    return ok


def bank_groups():
    """Worst count of lanes meeting in one 16-byte bank group per quarter-warp phase."""
    worst_self = 0
    for v in range(16):
        for phase in range(4):
            groups = [self_units(ln)[v] & 7 for ln in range(8 * phase, 8 * phase + 8)]
            worst_self = max(worst_self, max(groups.count(x) for x in set(groups)))
    worst_level = 0
    for s in LEVELS:
        for ks in range(8):
            for phase in range(4):
                lanes = range(8 * phase, 8 * phase + 8)
                for pick in (0, 1, 2):  # the x rows, the y rows, the z rows
                    addrs = {(level_rows(s, ln >> 2)[pick], 4 * ks + (ln & 3)) for ln in lanes}
                    groups = {}
                    for row, u in addrs:  # one address is one access (a broadcast)
                        groups.setdefault(u & 7, set()).add((row, u))
                    worst_level = max(worst_level, max(len(a) for a in groups.values()))
    return worst_self, worst_level


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


def level16(fq, fk, fg, s):
    """prep_pair_level16 (the fp16 family) at level s, lane by lane into mma.m16n8k16's fragment
    model: the 16 x 8 tile D, rows 0-7 L's level before b, rows 8-15 Mqk's before scale."""
    hh, hl, lh = np.zeros((16, 8)), np.zeros((16, 8)), np.zeros((16, 8))
    for ks in range(8):
        Ah, Al = np.zeros((16, 16)), np.zeros((16, 16))
        Bh, Bl = np.zeros((16, 8)), np.zeros((16, 8))
        for lane in range(32):
            g, t = lane >> 2, lane & 3
            x, y, z = level_rows(s, g)
            slots = (2 * t, 2 * t + 1, 2 * t + 8, 2 * t + 9)
            for slot, c in zip(slots, level16_keys(ks, t)):
                fa = ex2(np.float32(fg[x, c]) - np.float32(fg[z, c]))
                fb = ex2(np.float32(fg[z, c]) - np.float32(fg[y, c]))
                Ah[g, slot], Al[g, slot] = hi_lo(np.float32(fk[x, c]) * fa)
                Ah[g + 8, slot], Al[g + 8, slot] = hi_lo(np.float32(fq[x, c]) * fa)
                Bh[slot, g], Bl[slot, g] = hi_lo(np.float32(fk[y, c]) * fb)
        hh += Ah @ Bh
        hl += Ah @ Bl
        lh += Al @ Bh
    return f32(f32(hh) + f32(f32(hl) + f32(lh)))


def level32(fq, fk, fg, s):
    """prep_pair_level (the bf16 family) at level s, lane by lane into mma.m16n8k8 .tf32's
    fragment model: the same 16 x 8 tile."""
    Amat, Bmat = {}, {}  # (k-step, row m, slot) -> value; B (k-step, slot, column n)
    for lane in range(32):
        g, t = lane >> 2, lane & 3
        x, y, z = level_rows(s, g)
        for ks in range(8):
            for h in range(2):
                for c2 in range(2):
                    c = level_keys(ks, h, t)[c2]
                    fa = ex2(np.float32(fg[x, c]) - np.float32(fg[z, c]))
                    fb = ex2(np.float32(fg[z, c]) - np.float32(fg[y, c]))
                    Amat[(2 * ks + h, g, t + 4 * c2)] = tf32(np.float32(fk[x, c]) * fa)
                    Amat[(2 * ks + h, g + 8, t + 4 * c2)] = tf32(np.float32(fq[x, c]) * fa)
                    Bmat[(2 * ks + h, t + 4 * c2, g)] = tf32(np.float32(fk[y, c]) * fb)
    D = np.zeros((16, 8))
    for kk in range(16):
        A = np.array([[Amat[(kk, m, sl)] for sl in range(8)] for m in range(16)])
        B = np.array([[Bmat[(kk, sl, n)] for n in range(8)] for sl in range(8)])
        D += A @ B
    return f32(D)


def emulate(fq, fk, fg, b, scale, f16=False):
    """The kernel's nested step 4' on fp32 tiles (fq, fk, fg as the pairwise branch writes them);
    f16: the fp16 family's levels (prep_pair_level16)."""
    L = np.zeros((16, 16))
    M = np.zeros((16, 16))
    for s in LEVELS:
        D = level16(fq, fk, fg, s) if f16 else level32(fq, fk, fg, s)
        for g in range(8):
            x = level_rows(s, g)[0]
            for gc in range(8):
                if level_kept(s, g, gc):
                    y = level_rows(s, gc)[1]
                    L[x, y] = f32(b[x] * D[g, gc])
                    M[x, y] = f32(scale * D[g + 8, gc])
    for i in range(16):  # prep_pair_self: fp32 terms (sums in float64 here)
        M[i, i] = f32(scale * np.dot(f32(fq[i]).astype(np.float64), f32(fk[i]).astype(np.float64)))
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
    G = g_tile(steps, 16)[1].astype(np.float64)  # the tile step 3 writes, in fp32
    b = rng.uniform(0, 1, 16)
    return q, k, G, b


def g_tile(a, rows):
    """prefill_prep.cu's step 3 on the gate steps a [16, K] (log2 units) of a chunk of `rows`
    tokens: each half's running sums in fp32 (the second half's from 0), D = G_r - G_7, and the G
    tile the pairwise branch writes (G_7 + D)."""
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
    return D, np.float32(gref + D)


def rows_rise(D, boundary=True):
    """prep_rows_rise over the whole chunk (the CTA's vote): D above the row before it within a
    half, or row 8's above 0 (row 7's D); a NaN counts as a rise. boundary=False drops the second
    half's first-row test (the slip the check below shows would let a rise through)."""
    with np.errstate(invalid="ignore"):
        rise = False
        for half in (0, 1):
            h = D[8 * half : 8 * half + 8]
            rise |= bool(np.any(~(h[1:] <= h[:-1])))
        if boundary:
            rise |= bool(np.any(~(D[8] <= 0)))
    return rise


def level_exponents(G):
    """The largest exponent any level forms from the G tile, in fp32."""
    worst = -np.inf
    with np.errstate(over="ignore", invalid="ignore"):
        for s in LEVELS:
            for g in range(8):
                x, y, z = level_rows(s, g)
                worst = max(worst, np.float32(G[x] - G[z]).max(), np.float32(G[z] - G[y]).max())
    return worst


def check_vote(rng):
    """The nested vote (prep_rows_rise on step 3's D): on 3,000 random chunks, decaying, growing
    here and there or steeply, full and partial, every chunk it takes forms no exponent above 0 in
    fp32; every chunk whose gate never grows is taken; and the rule has teeth (without the second
    half's first-row test it would take a chunk with a positive exponent)."""
    ok, taken, taken_growing, teeth = True, 0, 0, False
    for trial in range(3000):
        rows = 16 if trial % 3 else int(rng.integers(1, 17))
        lo = [-34.6, -3.0, -150.0][trial % 3]
        hi = [0.0, 0.72, 1.5, 60.0][trial % 4]  # 0.72: the tests' e^0.5 growth in log2 units
        a = rng.uniform(lo, hi, size=(16, K))
        if trial % 4 == 1:  # growth only here and there, as the tests' gate
            a = np.where(rng.random((16, K)) < 0.02, a, np.minimum(a, 0.0))
        if trial % 7 == 0:  # growth at row 8 alone, past a flat first half
            a = np.minimum(a, 0.0)
            a[:8] = 0.0
            a[8] = np.abs(a[8]) + 1.0
        D, G = g_tile(a, rows)
        vote = not rows_rise(D)
        worst = level_exponents(G)
        if vote and not worst <= 0:
            print(f"FAIL vote: nested with a level exponent {worst} > 0 (trial {trial})")
            ok = False
        if hi == 0.0 and trial % 7 and not vote:
            print(f"FAIL vote: a gate that never grows was not taken (trial {trial})")
            ok = False
        taken += vote
        taken_growing += vote and hi > 0
        teeth |= not rows_rise(D, boundary=False) and worst > 0
    print(
        f"nested vote: {taken} of 3000 chunks taken ({taken_growing} with growing steps), no level "
        f"exponent above 0; without row 8's test one would get through: {teeth}"
    )
    return ok and teeth


def main():
    ok = check_maps()
    ws, wl = bank_groups()
    print(f"bank groups: diagonal {ws} lane(s) a group (want 1), levels {wl} (two-way)")
    ok &= ws == 1 and wl == 2
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
            # each entry against the sum of its terms' magnitudes (the levels' tf32 operands: a few
            # 2^-11 at most; the diagonal's fp32 terms: ~2^-20); entries whose terms all underflow
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
        print(f"{name}, the fp16 family's levels: worst error of L, Mqk {e:.2e} ({verdict})")
        ok &= good
    # a growing gate: the level 8 factors leave fp32's range while the true entries do not
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
    print(f"growing gate: the factored form {verdict} the true entries")
    ok &= broken
    ok &= check_vote(rng)
    print("emulate_prep_nested:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

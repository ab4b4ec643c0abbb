"""check_prep_tf32_layout.py: checks, without a GPU, step 4 in the bf16 family's
prep (src/cuda/prefill_prep.cu): that the tf32 tiles kc, ki, qc which step 3's threads write
(prep_swz32) are read back by step 4's ldmatrix calls (at its per-lane offsets oa, ob) as the
operand fragments of mma.m16n8k8.row.col.tf32, so that warp w's accumulator is L (w = 0, 1) or
Mqk (w = 2, 3) on token tile w % 2; that step 6 (prep_negw_tf32) reads kc's
tokens and keys where its fragments need them; and that step 3's stores, step 4's ldmatrix phases
and step 6's kc loads are free of bank conflicts (step 6's four 8-byte bINV reads a thread, not
modelled, are 2-way conflicted: rows g and g + 2 share banks).

Models (PTX ISA): ldmatrix .m8n8.x4.b16, lane l gives the address of row l % 8 of matrix l // 8
(16 bytes), and register i of lane l receives matrix i's row l // 4, bytes 4 (l % 4) .. + 3, i.e.
fp32 value l % 4 of that row; tf32 m16n8k8 fragments, g = l // 4, t = l % 4: a0 (g, t), a1 (g+8, t),
a2 (g, t+4), a3 (g+8, t+4); b0 (k t, n g), b1 (k t+4, n g). Banks: 32 of 4 bytes; a warp's store
takes as many wavefronts as the most 128-byte lines that meet in one bank (256 bytes: 2 at best),
and an ldmatrix phase (the 8 rows of one matrix) is conflict-free when its 8 rows fall in 8
different 16-byte bank groups.
Run: python3 check_prep_tf32_layout.py (prints OK or the first mismatch).
"""


def swz32(row, col):  # prep_swz32
    return row * 512 + (((col >> 2) ^ (row & 7)) << 4) + ((col & 3) << 2)


UNIT = 4096
OP32_KC, OP32_KI, OP32_QC = 0, 2, 4


def main():
    # Step 3's writers: thread tid owns rows r0 .. r0 + 7 (r0 = 8 (tid // 64)) and channels c0,
    # c0 + 1 (c0 = 2 (tid % 64)); register pair i is one 8-byte store at swz32(r0 + i, c0).
    mem = {}
    for tid in range(128):
        r0, c0 = 8 * (tid >> 6), 2 * (tid & 63)
        for i in range(8):
            off = swz32(r0 + i, c0)
            assert off % 8 == 0, "8-byte store not aligned"
            for tile, base in (("kc", OP32_KC), ("ki", OP32_KI), ("qc", OP32_QC)):
                for h in range(2):
                    a = base * UNIT + off + 4 * h
                    assert a not in mem, f"two writers of byte {a}"
                    assert a < 6 * UNIT
                    mem[a] = (tile, r0 + i, c0 + h)
    assert len(mem) == 3 * 16 * 128, "tiles not fully written"
    # Their bank conflicts: per warp and i, 32 lanes x 8 bytes = 256 bytes, at best 2 wavefronts.
    for w in range(4):
        for i in range(8):
            banks = {}
            for lane in range(32):
                tid = 32 * w + lane
                r0, c0 = 8 * (tid >> 6), 2 * (tid & 63)
                off = swz32(r0 + i, c0)
                for b in (off // 4 % 32, off // 4 % 32 + 1):
                    banks.setdefault(b, set()).add(off // 128)
            assert max(len(s) for s in banks.values()) <= 2, f"store conflict w{w} i{i}"

    def ldsm(addrs):
        """addrs[ln]: lane ln's row address; returns regs[ln][i] = the (tile, row, col) read."""
        out = [[None] * 4 for _ in range(32)]
        for mat in range(4):
            # conflicts: the 8 rows of one matrix are one phase of the access
            rows = [addrs[8 * mat + j] for j in range(8)]
            groups = {(a // 16) % 8 for a in rows}
            assert len(groups) == 8, f"ldmatrix bank conflict in matrix {mat}: {rows}"
            for ln in range(32):
                a = addrs[8 * mat + ln // 4] + 4 * (ln % 4)
                out[ln][mat] = mem[a]
        return out

    for warp in range(4):
        prod, nt = warp >> 1, warp & 1
        A = OP32_QC if prod else OP32_KC
        # step 4's per-lane offsets (the kernel's oa, ob): unit u of row r at r * 512 + 128 (u >> 3)
        # + 16 ((u & 7) ^ (r & 7)), constant per k-step mod 4
        oa, ob = [], []
        for ln in range(32):
            x, ab, bq = ln & 7, ln >> 4, ln >> 3
            arow, brow = x + ((ln >> 3) & 1) * 8, 8 * nt + x
            oa.append([A * UNIT + arow * 512 + (((2 * m + ab) ^ x) << 4) for m in range(4)])
            ob.append([OP32_KI * UNIT + brow * 512 + (((4 * m + bq) ^ x) << 4) for m in range(2)])
        for kk in range(0, 16, 2):
            a0 = ldsm([oa[ln][kk & 3] + 128 * (kk >> 2) for ln in range(32)])
            a1 = ldsm([oa[ln][(kk + 1) & 3] + 128 * (kk >> 2) for ln in range(32)])
            b = ldsm([ob[ln][(kk >> 1) & 1] + 128 * (kk >> 2) for ln in range(32)])
            for ln in range(32):
                g, t = ln // 4, ln % 4
                for step, a in ((kk, a0), (kk + 1, a1)):
                    want = [(g, t), (g + 8, t), (g, t + 4), (g + 8, t + 4)]
                    for r in range(4):
                        row, k = want[r]
                        exp = ("qc" if prod else "kc", row, 8 * step + k)
                        got = a[ln][r]
                        assert got == exp, f"A w{warp} kk{step} lane{ln} a{r}: {got} != {exp}"
                for step, regs in ((kk, (0, 1)), (kk + 1, (2, 3))):
                    for j, r in enumerate(regs):
                        exp = ("ki", 8 * nt + g, 8 * step + t + 4 * j)  # B[k][n] = ki[n][k]
                        got = b[ln][r]
                        assert got == exp, f"B w{warp} kk{step} lane{ln} b{j}: {got} != {exp}"
    # Step 6 (prep_negw_tf32): warp w's block blk of 32 keys; lane (g, t)'s k-slots t and t + 4 of
    # k-step ks are tokens 8 ks + 2t and + 1: A from s_binv (row g or g + 8, those tokens), B from
    # kc at boff[n][e] + 4096 ks, which must be kc[8 ks + 2t + e][32 blk + 8n + g]; the B loads of
    # one instruction (fixed n, e, ks) must be free of bank conflicts.
    for warp in range(4):
        blk = 2 * (warp & 1) + (warp >> 1)
        for ks in range(2):
            for n in range(4):
                for e in range(2):
                    addrs = []
                    for ln in range(32):
                        g, t = ln >> 2, ln & 3
                        boff = ((2 * t + e) * 512 + 128 * blk
                                + ((2 * (n ^ t) + ((g >> 2) ^ e)) << 4) + ((g & 3) << 2))
                        a = OP32_KC * UNIT + boff + 4096 * ks
                        exp = ("kc", 8 * ks + 2 * t + e, 32 * blk + 8 * n + g)
                        assert mem[a] == exp, f"step 6 B w{warp} ks{ks} n{n} e{e} lane{ln}"
                        addrs.append(a)
                    assert len({a // 4 % 32 for a in addrs}) == 32, f"step 6 conflict n{n} e{e}"
    print("OK")


if __name__ == "__main__":
    main()

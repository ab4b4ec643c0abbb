"""emulate_wg_step.py: runs the wgmma form of chain_step_bench.cu on the CPU, thread by thread,
under the PTX ISA's documented models (wgmma register fragments, K-major swizzled descriptors,
ldmatrix), and compares it with a float64 reference of the same chunk steps.

It catches index slips in the kernel's own arithmetic (which register packs which accumulator
element, which descriptor starts where, how the host maps fragments back to columns); it cannot
catch a model that the hardware does not follow. It mirrors, by hand, the device code of wg_chain
and the host's writers and maps: when either changes, change this too.
Run: /work/venv/bin/python dev/cuda/emulate_wg_step.py (needs numpy and ml_dtypes; ~10 s).
"""

import ml_dtypes
import numpy as np

NREC, WR_BYTES = 4, 15360
WR = {"NEGW": 0, "QD": 4096, "KRT": 8192, "GAMMA": 12288, "BINV": 12800, "BINV_LO": 13312}
WR.update({"MQK": 13824, "MQK_LO": 14336})
TILE16 = 512


def bf16(x):
    return np.asarray(x, np.float32).astype(ml_dtypes.bfloat16).astype(np.float32)


def swz128_kmajor(row, key):
    return (key >> 6) * 2048 + row * 128 + ((((key >> 3) & 7) ^ (row & 7)) << 4) + ((key & 7) << 1)


def swz32(row, col):
    return row * 32 + ((((col >> 3) & 1) ^ ((row >> 2) & 1)) << 4) + ((col & 7) << 1)


class Smem:
    """Shared memory as bf16 / fp32 cells addressed by byte."""

    def __init__(self, nbytes):
        self.b = np.zeros(nbytes, np.uint8)

    def put_bf16(self, addr, x):
        self.b[addr : addr + 2] = np.frombuffer(
            bf16(x).astype(ml_dtypes.bfloat16).tobytes(), np.uint8
        )

    def get_bf16(self, addr):
        return float(np.frombuffer(self.b[addr : addr + 2].tobytes(), ml_dtypes.bfloat16)[0])

    def put_f32(self, addr, x):
        self.b[addr : addr + 4] = np.frombuffer(np.float32(x).tobytes(), np.uint8)

    def get_f32(self, addr):
        return float(np.frombuffer(self.b[addr : addr + 4].tobytes(), np.float32)[0])


def desc_b(smem, start, sbo, width, n_rows):
    """B (16 x N) read through a K-major swizzled descriptor (the model of check_layouts.py)."""
    bits = {128: 3, 32: 1}[width]
    B = np.zeros((16, n_rows), np.float64)
    for n in range(n_rows):
        for k in range(16):
            a = start + (n // 8) * sbo + (n % 8) * width + 2 * k
            a ^= ((a >> 7) & ((1 << bits) - 1)) << 4
            B[k, n] = smem.get_bf16(a)
    return B


def a_from_regs(a):
    """A (64 x 16) from the per-thread fragments a[tid][4][2] (low, high halves)."""
    A = np.zeros((64, 16))
    for tid in range(128):
        w, lane = tid // 32, tid % 32
        g, t = lane // 4, lane % 4
        for r, (dm, dk) in enumerate(((0, 0), (8, 0), (0, 8), (8, 8))):
            A[16 * w + g + dm, 2 * t + dk] = a[tid][r][0]
            A[16 * w + g + dm, 2 * t + dk + 1] = a[tid][r][1]
    return A


def d_get(d, n):
    """D (64 x n) from per-thread accumulators d[tid][n / 2]."""
    D = np.zeros((64, n))
    for tid in range(128):
        w, lane = tid // 32, tid % 32
        g, t = lane // 4, lane % 4
        for i in range(n // 2):
            j, e = i // 4, i % 4
            D[16 * w + g + 8 * (e >> 1), 8 * j + 2 * t + (e & 1)] = d[tid][i]
    return D


def d_put(d, D):
    for tid in range(128):
        w, lane = tid // 32, tid % 32
        g, t = lane // 4, lane % 4
        for i in range(len(d[tid])):
            j, e = i // 4, i % 4
            d[tid][i] = np.float32(D[16 * w + g + 8 * (e >> 1), 8 * j + 2 * t + (e & 1)])


def wgmma(d, a, B, accumulate):
    n = B.shape[1]
    D = (d_get(d, n) if accumulate else 0.0) + a_from_regs(a) @ B
    d_put(d, D)


def pack(lo, hi):
    return (float(bf16(lo)), float(bf16(hi)))


def ldsm_x4_trans(smem, addr_of_lane):
    """ldmatrix .x4 .trans: matrix i's rows at the addresses of lanes 8i..8i+7; lane gets
    (row 2t, col g) and (row 2t + 1, col g) of each matrix."""
    out = []
    for lane in range(32):
        g, t = lane // 4, lane % 4
        regs = []
        for i in range(4):
            r0, r1 = addr_of_lane(8 * i + 2 * t), addr_of_lane(8 * i + 2 * t + 1)
            regs.append((smem.get_bf16(r0 + 2 * g), smem.get_bf16(r1 + 2 * g)))
        out.append(regs)
    return out


def main():
    rng = np.random.default_rng(5)
    cols, nch = 64, 6  # one warpgroup; records cycle through the ring
    recs = []
    for _ in range(NREC):
        k = rng.standard_normal((16, 128))
        k /= np.linalg.norm(k, axis=1, keepdims=True)
        beta = 0.3 + 0.4 * rng.random(16)
        q = rng.standard_normal((16, 128))
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        rec = {"negw": bf16(-beta[:, None] * k), "kr": bf16(k), "qd": bf16(0.25 * q)}
        rec["gamma"] = (0.9 + 0.1 * rng.random(128)).astype(np.float32)
        binv = np.tril(0.2 * (rng.random((16, 16)) - 0.5) * beta[None, :], -1) + np.diag(beta)
        mqk = np.tril(rec["qd"].astype(np.float64) @ rec["kr"].astype(np.float64).T)
        for name, x in (("binv", binv), ("mqk", mqk)):
            rec[name + "_hi"] = bf16(x)
            rec[name + "_lo"] = bf16(x - rec[name + "_hi"])
        rec["v"] = bf16(2 * rng.random((16, cols)) - 1)
        recs.append(rec)
    s0 = (rng.random((cols, 128)) - 0.5).astype(np.float32)

    # shared memory as the host and stage_inputs lay it out (one CTA of one warpgroup)
    smem = Smem(NREC * WR_BYTES + NREC * 4 * TILE16)
    s_v = NREC * WR_BYTES
    for r, rec in enumerate(recs):
        base = r * WR_BYTES
        for i in range(16):
            for c in range(128):
                smem.put_bf16(base + WR["NEGW"] + swz128_kmajor(i, c), rec["negw"][i, c])
                smem.put_bf16(base + WR["QD"] + swz128_kmajor(i, c), rec["qd"][i, c])
                smem.put_bf16(base + WR["KRT"] + swz32(c, i), rec["kr"][i, c])
        for c in range(128):
            smem.put_f32(base + WR["GAMMA"] + 4 * c, rec["gamma"][c])
        for i in range(16):
            for j in range(16):
                smem.put_bf16(base + WR["BINV"] + swz32(i, j), rec["binv_hi"][i, j])
                smem.put_bf16(base + WR["BINV_LO"] + swz32(i, j), rec["binv_lo"][i, j])
                smem.put_bf16(base + WR["MQK"] + swz32(i, j), rec["mqk_hi"][i, j])
                smem.put_bf16(base + WR["MQK_LO"] + swz32(i, j), rec["mqk_lo"][i, j])
        for w in range(4):
            for tok in range(16):
                for vl in range(16):
                    addr = s_v + (r * 4 + w) * TILE16 + swz32(tok, vl)
                    smem.put_bf16(addr, rec["v"][tok, 16 * w + vl])

    def state_coord(tid, i):  # the host's state_coord
        lane, j, e = tid % 32, i >> 2, i & 3
        return 16 * (tid // 32) + lane // 4 + 8 * (e >> 1), 8 * j + 2 * (lane % 4) + (e & 1)

    def out_coord(tid, i):  # the host's out_coord, wgmma form: (token, column)
        lane, n, e = tid % 32, i >> 2, i & 3
        return 8 * n + 2 * (lane % 4) + (e & 1), 16 * (tid // 32) + lane // 4 + 8 * (e >> 1)

    S = [[0.0] * 64 for _ in range(128)]
    for tid in range(128):
        for i in range(64):
            c, key = state_coord(tid, i)
            S[tid][i] = float(s0[c, key])

    def pack_state():
        return [
            [
                [pack(S[tid][8 * kk + 2 * q], S[tid][8 * kk + 2 * q + 1]) for q in range(4)]
                for kk in range(8)
            ]
            for tid in range(128)
        ]

    sa = pack_state()
    outs = []
    for c in range(nch):
        r = c % NREC
        R = r * WR_BYTES
        va = []
        for w in range(4):
            vt = s_v + (r * 4 + w) * TILE16

            def addr(lane, vt=vt):
                mi, rr = lane >> 3, lane & 7
                return vt + swz32(rr + 8 * (mi >> 1), 8 * (mi & 1))

            va += ldsm_x4_trans(smem, addr)
        u = [[0.0] * 8 for _ in range(128)]
        o = [[0.0] * 8 for _ in range(128)]
        wgmma(u, va, desc_b(smem, R + WR["BINV_LO"], 256, 32, 16), False)
        wgmma(u, va, desc_b(smem, R + WR["BINV"], 256, 32, 16), True)
        for kk in range(8):
            start = R + WR["NEGW"] + (kk >> 2) * 2048 + (kk & 3) * 32
            wgmma(u, [sa[tid][kk] for tid in range(128)], desc_b(smem, start, 1024, 128, 16), True)
        for kk in range(8):
            start = R + WR["QD"] + (kk >> 2) * 2048 + (kk & 3) * 32
            wgmma(
                o, [sa[tid][kk] for tid in range(128)], desc_b(smem, start, 1024, 128, 16), kk > 0
            )
        up = [[pack(u[tid][2 * q], u[tid][2 * q + 1]) for q in range(4)] for tid in range(128)]
        for tid in range(128):
            t = (tid % 32) % 4
            for j in range(16):
                gx = smem.get_f32(R + WR["GAMMA"] + (8 * j + 2 * t) * 4)
                gy = smem.get_f32(R + WR["GAMMA"] + (8 * j + 2 * t) * 4 + 4)
                S[tid][4 * j] *= gx
                S[tid][4 * j + 1] *= gy
                S[tid][4 * j + 2] *= gx
                S[tid][4 * j + 3] *= gy
        wgmma(S, up, desc_b(smem, R + WR["KRT"], 256, 32, 128), True)
        wgmma(o, up, desc_b(smem, R + WR["MQK_LO"], 256, 32, 16), True)
        wgmma(o, up, desc_b(smem, R + WR["MQK"], 256, 32, 16), True)
        o_cols = np.zeros((16, cols))
        for tid in range(128):
            for i in range(8):
                tok, col = out_coord(tid, i)
                o_cols[tok, col] = o[tid][i]
        outs.append(o_cols)
        sa = pack_state()

    # float64 reference (the host's reference())
    Sr = s0.astype(np.float64).copy()  # [col][key]
    worst_o = worst_s = 0.0
    for c in range(nch):
        rec = recs[c % NREC]
        binv = rec["binv_hi"].astype(np.float64) + rec["binv_lo"]
        mqk = rec["mqk_hi"].astype(np.float64) + rec["mqk_lo"]
        U = binv @ rec["v"] + rec["negw"].astype(np.float64) @ Sr.T  # [token][col]
        Or = rec["qd"].astype(np.float64) @ Sr.T + mqk @ U
        Sr = Sr * rec["gamma"][None, :] + (rec["kr"].astype(np.float64).T @ U).T
        worst_o = max(worst_o, np.abs(outs[c] - Or).max() / np.abs(Or).max())
    Sg = np.zeros((cols, 128))
    for tid in range(128):
        for i in range(64):
            col, key = state_coord(tid, i)
            Sg[col, key] = S[tid][i]
    worst_s = np.abs(Sg - Sr).max() / np.abs(Sr).max()
    ok = worst_o < 2e-2 and worst_s < 2e-2
    print(
        f"emulated wgmma form, {nch} chunks, 64 columns: O {worst_o:.2e}, S {worst_s:.2e}: "
        f"{'pass' if ok else 'FAIL'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""check_layouts.py: checks, without a GPU, that the wgmma form's shared-memory tiles in
chain_step_bench.cu are where its descriptors say they are, under the documented model of a
K-major swizzled wgmma operand (PTX ISA, "Shared Memory Matrix Layout" and "Matrix Descriptor"):

  element (n, k) of a k16 step, n < N, k < 16, sits before swizzling at
      start + (n // 8) * SBO + (n % 8) * W + 2 k        (W = swizzle width: 128 or 32 bytes)
  and the swizzle XORs address bits [4, 4 + b) with bits [7, 7 + b) (b = 3 for 128B, 1 for 32B).

It mirrors the writers (swz128_kmajor, swz32) and the descriptor starts of the .cu file; what it
cannot check is whether the hardware follows this model: the program's correctness run decides that.
Run: python3 dev/cuda/check_layouts.py (prints OK or the first mismatch).
"""


def swizzle(addr, width):
    bits = {128: 3, 32: 1}[width]
    return addr ^ (((addr >> 7) & ((1 << bits) - 1)) << 4)


def model(start, sbo, width, n, k):
    return swizzle(start + (n // 8) * sbo + (n % 8) * width + 2 * k, width)


def swz128_kmajor(row, key):  # chain_step_bench.cu, the writer of -W and Qd
    return (key >> 6) * 2048 + row * 128 + ((((key >> 3) & 7) ^ (row & 7)) << 4) + ((key & 7) << 1)


def swz32(row, col):  # chain_step_bench.cu, the writer of Kr^T, bINV, Mqk and the v tiles
    return row * 32 + ((((col >> 3) & 1) ^ ((row >> 2) & 1)) << 4) + ((col & 7) << 1)


def main():
    rec_bytes, wr = (
        15360,
        {
            "NEGW": 0,
            "QD": 4096,
            "KRT": 8192,
            "BINV": 12800,
            "BINV_LO": 13312,
            "MQK": 13824,
            "MQK_LO": 14336,
        },
    )
    for base in (0, 1 * rec_bytes, 3 * rec_bytes):  # records r = 0, 1, 3 of the ring (1024-aligned)
        assert base % 1024 == 0
        for tile in ("NEGW", "QD"):  # B = [token n][key k], 8 k-steps, SBO 1024, 128B
            for kk in range(8):
                start = base + wr[tile] + (kk >> 2) * 2048 + (kk & 3) * 32
                for n in range(16):
                    for k in range(16):
                        want = base + wr[tile] + swz128_kmajor(n, 16 * kk + k)
                        got = model(start, 1024, 128, n, k)
                        assert got == want, (tile, kk, n, k, got, want)
        for tile, rows in (
            ("KRT", 128),
            ("BINV", 16),
            ("BINV_LO", 16),
            ("MQK", 16),
            ("MQK_LO", 16),
        ):
            start = base + wr[tile]
            assert start % 256 == 0
            for n in range(rows):
                for k in range(16):
                    want = start + swz32(n, k)
                    got = model(start, 256, 32, n, k)
                    assert got == want, (tile, n, k, got, want)
    # every writer covers its tile once (no two elements on one address)
    assert len({swz128_kmajor(n, k) for n in range(16) for k in range(128)}) == 16 * 128
    assert len({swz32(n, k) for n in range(128) for k in range(16)}) == 128 * 16
    print("OK: every descriptor start, SBO and swizzle mode matches its tile's writer")


if __name__ == "__main__":
    main()

"""load_waits.py: where a kernel's warps wait for a global load while later loads of the same path
have not issued yet, read from the SASS alone (no GPU).

At small batches a kernel's time is its warp's path, and each wait for a DRAM load before the
next loads issue costs a whole round trip (~0.5-1 us). The compiler places those waits: a
conversion folded into the branch that loads a value, or a split load's or, sits right behind
its load (docs/history/decode.md, "The narrow kernel's B = 1 profile"). This script finds them
from the scoreboard bits that sm_70+ SASS carries in each instruction's control word: an
instruction with write barrier b (a variable-latency producer: LDG, LDS, LDC, MUFU, ...) sets
scoreboard b, and a later instruction whose wait mask has bit b stalls until every producer on b
has completed. For each wait that covers a global load, it prints the wait's offset and
instruction, the loads it waits for, and how many global loads come after it in address order
(in straight-line code, the loads the wait holds back; across branches only a hint), and whether
the wait sits in a loop whose loads it waits for were all issued before the loop: the compiled
code waits at a loop's head for everything in flight from before it, so a load placed at the
head of a loop that runs once waits for the loads before the loop (dev/pending/04).

    cuobjdump -sass -fun KERNEL lib.cubin > k.sass   # or the whole cubin: every kernel
    python3 dev/cuda/load_waits.py k.sass [--kernel SUBSTRING] [--min-after N]

The control word is the top 23 bits of an instruction's second 64-bit word: stall [0:4], yield
[4], write barrier [5:8] (7: none), read barrier [8:11] (7: none), wait mask [11:17], reuse
[17:21]. cuobjdump comes with the CUDA toolkit or the nvidia-cuda-cuobjdump wheel
(scripts/sass_diff.sh says how).
"""

from __future__ import annotations

import argparse
import re
import sys

FUNC = re.compile(r"^\s*Function : (\S+)")
INSN = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;\s*/\* 0x([0-9a-f]{16}) \*/")
WORD2 = re.compile(r"^\s*/\* 0x([0-9a-f]{16}) \*/")
GLOBAL_LOADS = ("LDG", "LD")  # LD: generic loads, which may be global
BRANCH = re.compile(r"\bBRA\b.*?0x([0-9a-f]+)\s*$")


def opcode(text: str) -> str:
    """The opcode without predicate and modifiers: '@!P1 LDG.E.U16 R0, ...' -> 'LDG'."""
    words = text.split()
    word = words[1] if words[0].startswith("@") else words[0]
    return word.split(".")[0]


def control(hi: int) -> tuple[int, int, int]:
    """(write barrier, read barrier, wait mask) of an instruction's control word."""
    ctrl = hi >> 41
    return (ctrl >> 5) & 7, (ctrl >> 8) & 7, (ctrl >> 11) & 0x3F


def read_kernels(lines: list[str]) -> dict[str, list[tuple[int, str, int]]]:
    """kernel -> [(offset, instruction, second word)] from cuobjdump -sass text."""
    kernels: dict[str, list[tuple[int, str, int]]] = {}
    current, pending = None, None
    for line in lines:
        m = FUNC.match(line)
        if m:
            current = kernels.setdefault(m.group(1), [])
            continue
        m = INSN.match(line)
        if m and current is not None:
            pending = (int(m.group(1), 16), m.group(2))
            continue
        m = WORD2.match(line)
        if m and pending is not None and current is not None:
            current.append((pending[0], pending[1], int(m.group(1), 16)))
            pending = None
    return kernels


Wait = tuple[int, str, list[tuple[int, str]], int]


def early_waits(code: list[tuple[int, str, int]]) -> list[Wait]:
    """Each wait on a global load: (offset, instruction, loads waited for, loads after it)."""
    producers: list[list[tuple[int, str]]] = [[] for _ in range(6)]
    loads_at = [i for i, (_, text, _) in enumerate(code) if opcode(text) in GLOBAL_LOADS]
    out = []
    for i, (off, text, hi) in enumerate(code):
        wbar, _, wait = control(hi)
        waited: list[tuple[int, str]] = []
        for b in range(6):
            if wait >> b & 1:
                waited += [x for x in producers[b] if opcode(x[1]) in GLOBAL_LOADS]
                producers[b] = []
        if waited:
            after = sum(1 for j in loads_at if j > i)
            out.append((off, text, waited, after))
        if wbar != 7:
            producers[wbar].append((off, text))
    return out


def loops(code: list[tuple[int, str, int]]) -> list[tuple[int, int]]:
    """(head, back edge) of every backward branch: cuobjdump prints targets as offsets."""
    out = []
    for off, text, _ in code:
        m = BRANCH.search(text)
        if m and int(m.group(1), 16) <= off:
            out.append((int(m.group(1), 16), off))
    return out


def carried_into(off: int, waited: list[tuple[int, str]], spans: list[tuple[int, int]]) -> int:
    """The head of a loop that `off` is in while every load it waits for was issued before that
    head (-1 if none): the compiled code waits at a loop's head for what is still in flight from
    before the loop, since scoreboard counts do not carry around a back edge."""
    for head, end in spans:
        if head <= off <= end and all(o < head for o, _ in waited):
            return head
    return -1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sass", help="cuobjdump -sass output")
    ap.add_argument("--kernel", default="", help="only kernels whose name contains this")
    ap.add_argument(
        "--min-after", type=int, default=1, help="only waits with at least this many loads after"
    )
    args = ap.parse_args()
    with open(args.sass) as f:
        kernels = read_kernels(f.read().split("\n"))
    if not kernels:
        print("load_waits: no encoded kernel in the input (cuobjdump -sass)", file=sys.stderr)
        return 2
    for name, code in kernels.items():
        if args.kernel not in name:
            continue
        waits = [w for w in early_waits(code) if w[3] >= args.min_after]
        spans = loops(code)
        print(f"{name}: {len(code)} instructions, {len(waits)} waits on loads before later loads")
        for off, text, waited, after in waits:
            what = ", ".join(f"{o:04x} {t.split(',')[0]}" for o, t in waited[:3])
            more = f" (+{len(waited) - 3})" if len(waited) > 3 else ""
            head = carried_into(off, waited, spans)
            where = f"; in the loop from {head:04x}, for loads from before it" if head >= 0 else ""
            print(f"  {off:04x} {text[:48]:48s} waits for {what}{more}; {after} loads after{where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

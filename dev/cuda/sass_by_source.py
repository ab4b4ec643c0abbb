"""sass_by_source.py: an ncu per-instruction count file attributed to the source that made each
instruction, through the same kernel compiled here with line information.

gpu_check.sh's profile steps write every executed SASS instruction of one kernel with its count
and stall samples ($OUT/sass-*.tsv: offset, executed, samples, instruction). Offsets are the
kernel's own, so a cubin built here from the same tree with the same nvcc and -lineinfo (which
does not change the code) has the same instruction at each offset; nvdisasm -gi then names, for
each one, the source line and the chain of inlined calls it came from. This script checks that
the opcodes agree at every offset (a different tree or compiler fails loudly) and sums the counts
by region: a region is a line range of one file, matched against every frame of the inline chain,
so a helper's instructions count where the caller called it from.

    nvcc -gencode=arch=compute_90a,code=sm_90a -O3 -lineinfo -cubin -Isrc/cuda \\
        -o /tmp/prep.cubin src/cuda/prefill_prep.cu
    python3 dev/cuda/sass_by_source.py /tmp/prep.cubin _Z12pf_prep_bulk9pf_params \\
        sass-prefill-h96.tsv --per 49152 \\
        --region "decayed operands=prefill_prep.cu:77-124" \\
        --region "1 loads=prefill_prep.cu:178-318" ...

Regions are tried in the order given (the frames' order plays no part): an instruction goes to the
first region that any frame of its chain falls in, else to "other", so give a nested region (a
helper's lines) before the region around its call. A file is named by its base name (a path is
cut to it); a region that no instruction falls in is reported on stderr. --per divides the counts
(e.g. by the kernel's CTAs: then a row is warp instructions per CTA). nvdisasm comes with the
CUDA toolkit (or the nvidia-cuda-nvdisasm wheel).
"""

from __future__ import annotations

import argparse
import collections
import csv
import re
import subprocess
import sys

FRAME = re.compile(r'\s*//## File "([^"]+)", line (\d+)(?: inlined at "([^"]+)", line (\d+))?')
INSN = re.compile(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")


def opcode(text: str) -> str:
    """The opcode of one SASS instruction, without its predicate and modifiers."""
    words = text.split()
    word = words[1] if words[0].startswith("@") else words[0]
    return word.split(".")[0]


def disassemble(cubin: str, kernel: str) -> dict[int, tuple[str, list[tuple[str, int]]]]:
    """offset -> (instruction, frames), the frames (file base name, line) innermost first."""
    text = subprocess.run(
        ["nvdisasm", "-gi", "-c", cubin], capture_output=True, text=True, check=True
    ).stdout.split("\n")
    try:
        start = text.index(f"{kernel}:")
    except ValueError:
        raise SystemExit(f"sass_by_source: no kernel {kernel} in {cubin}") from None
    out, frames, pending = {}, [], []
    for line in text[start + 1 :]:
        if line.startswith(".text.") and kernel not in line:
            break  # the next function
        m = FRAME.match(line)
        if m:
            pending.append((m.group(1).rsplit("/", 1)[-1], int(m.group(2))))
            if m.group(3):
                pending.append((m.group(3).rsplit("/", 1)[-1], int(m.group(4))))
            continue
        m = INSN.match(line)
        if m:
            if pending:  # a new chain starts here; without one the previous still holds
                frames, pending = pending, []
            out[int(m.group(1), 16)] = (m.group(2), frames)
    return out


def parse_region(spec: str) -> tuple[str, str, int, int]:
    """NAME=FILE:FIRST-LAST, FILE cut to its base name (the frames carry base names)."""
    name, _, where = spec.partition("=")
    file, _, lines = where.rpartition(":")
    first, _, last = lines.partition("-")
    if not (name and file and first.isdigit() and last.isdigit()) or int(first) > int(last):
        raise SystemExit(
            f"sass_by_source: region {spec!r} is not NAME=FILE:FIRST-LAST with FIRST <= LAST"
        )
    return name, file.rsplit("/", 1)[-1], int(first), int(last)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cubin")
    ap.add_argument("kernel", help="the mangled name, as nvdisasm prints it")
    ap.add_argument("tsv", help="ncu's per-instruction counts (gpu_check.sh's sass-*.tsv)")
    ap.add_argument("--region", action="append", default=[], metavar="NAME=FILE:FIRST-LAST")
    ap.add_argument("--per", type=float, default=1.0, help="divide the counts by this")
    args = ap.parse_args()

    code = disassemble(args.cubin, args.kernel)
    regions = [parse_region(r) for r in args.region]
    executed, samples = collections.Counter(), collections.Counter()
    kinds: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    with open(args.tsv) as f:
        rows = list(csv.reader(f, delimiter="\t"))[1:]
    for offset, count, stalls, text in rows:
        at = int(offset, 16)
        if at not in code or opcode(code[at][0]) != opcode(text):
            here = code[at][0] if at in code else "nothing"
            raise SystemExit(
                f"sass_by_source: at {offset} the profile has {text!r}, this build {here!r}: "
                "not the same code (tree or compiler)"
            )
        frames = code[at][1]
        name = next(
            (
                n
                for n, file, first, last in regions
                if any(fl == file and first <= ln <= last for fl, ln in frames)
            ),
            "other",
        )
        executed[name] += int(count)
        samples[name] += int(stalls)
        kinds[name][opcode(text)] += int(count)
    for name, *_ in regions:
        if name not in executed:
            print(f"sass_by_source: no instruction falls in region {name!r}", file=sys.stderr)
    total, total_samples = sum(executed.values()), max(1, sum(samples.values()))
    print(f"{len(rows)} instructions, {total / args.per:.0f} executed (per {args.per:g})")
    print("| region | executed | share | stall samples | largest kinds |")
    print("|---|---|---|---|---|")
    for name, count in executed.most_common():
        top = ", ".join(f"{k} {c / args.per:.0f}" for k, c in kinds[name].most_common(5))
        print(
            f"| {name} | {count / args.per:.0f} | {100 * count / total:.1f} % "
            f"| {100 * samples[name] / total_samples:.1f} % | {top} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

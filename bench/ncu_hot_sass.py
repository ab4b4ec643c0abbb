#!/usr/bin/env python3
"""ncu_hot_sass.py: the hottest SASS instructions of one profiled kernel, from the CSV that
`ncu --import REPORT --page source --print-source sass --csv` prints (read from stdin).

    ncu --import r.ncu-rep --page source --print-source sass --csv \
        | python3 bench/ncu_hot_sass.py [N] [--dump F]

Prints the N (default 30) instructions with the most warp-stall samples, each with its share of
all samples and its per-reason samples, in address order, so that a latency-bound kernel shows
where its warps wait, and the warp instructions executed in all (the path length times the
warps). Column names differ between ncu versions: the script looks for the
columns whose names contain "Sampling" (the counts) and falls back to listing the header.
"""

import csv
import sys


def number(text):
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return 0.0


def main():
    args = sys.argv[1:]
    dump = None
    if "--dump" in args:  # also write every executed instruction, in address order, to a file
        i = args.index("--dump")
        dump = args[i + 1]
        del args[i:i + 2]
    top = int(args[0]) if args else 30
    lines = [line for line in sys.stdin if line.strip()]
    start = next((i for i, line in enumerate(lines)
                  if line.startswith('"') and "Source" in line), None)
    if start is None:
        print("no source table in the input; first lines:")
        print("".join(lines[:10]))
        return 1
    rows = list(csv.DictReader(lines[start:]))
    if not rows:
        print("empty source table")
        return 1
    columns = list(rows[0].keys())
    sampled = [c for c in columns if "Sampling" in c]
    if not sampled:
        print("no sampling columns; columns:", columns)
        return 1
    total_col = next((c for c in sampled if "All" in c), sampled[0])
    total = sum(number(r[total_col]) for r in rows) or 1.0
    hot = sorted(rows, key=lambda r: number(r[total_col]), reverse=True)[:top]
    hot_ids = {id(r) for r in hot}
    executed = next((c for c in columns if c.strip() == "Instructions Executed"), None)
    # Warp-level instructions, all warps: divide by the grid's warps for one warp's path.
    if executed:
        print(f"{sum(number(r[executed]) for r in rows):.0f} warp instructions executed in all")
        if dump:
            with open(dump, "w") as f:
                f.write("offset\texecuted\tsamples\tinstruction\n")
                first = None
                for r in rows:
                    try:
                        address = int(r.get("Address", "0"), 16)
                    except ValueError:
                        address = 0
                    first = address if first is None else first
                    if number(r[executed]) > 0:
                        f.write(f"{address - first:#06x}\t{number(r[executed]):.0f}\t"
                                f"{number(r[total_col]):.0f}\t{r.get('Source', '').strip()}\n")
    print(f"{len(rows)} instructions, {total:.0f} samples in '{total_col}'; "
          f"the {len(hot)} hottest, in order:")
    for r in rows:
        if id(r) not in hot_ids:
            continue
        share = 100.0 * number(r[total_col]) / total
        print(f"{share:5.1f}%  {r.get('Address', ''):>6}  {r.get('Source', '').strip()[:70]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""param_lines.py: how many 64-byte lines of the constant bank each decode kernel touches, in all
and up to its first read of fkda_decode_params.state_in (the state's load), from an object's
sm_90a SASS.

    python3 dev/cuda/param_lines.py build/.../decode_tiles.cu.o [more objects]

Why: a kernel's parameters live in constant bank 0 (from 0x210 on sm_90), and the first read of
each 64-byte line is a miss that stalls the warp; at B = 1 those misses sit one after another on
the call's path (docs/history/decode.md, "B = 1: the constant-cache misses"). The field offsets
come from compiling a small C program against src/cuda/decode_params.h (gcc, the CUDA headers);
cuobjdump must be on PATH (scripts/sass_diff.sh says where to get it).
"""

import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PARAM_BASE = 0x210  # where sm_90 puts a kernel's parameters in bank 0


def state_in_offset():
    src = (
        '#include <stdio.h>\n#include <stddef.h>\n#include "decode_params.h"\n'
        "int main(void) {\n"
        '    printf("%zu\\n", offsetof(fkda_decode_params, state_in));\n'
        "    return 0;\n}\n"
    )
    with tempfile.TemporaryDirectory() as d:
        c, exe = os.path.join(d, "off.c"), os.path.join(d, "off")
        open(c, "w").write(src)
        cuda_inc = os.environ.get("CUDA_INCLUDE", "/usr/local/cuda/include")
        inc = [os.path.join(ROOT, "include"), os.path.join(ROOT, "src/cuda"), cuda_inc]
        subprocess.run(["gcc"] + [f"-I{i}" for i in inc] + [c, "-o", exe], check=True)
        run = subprocess.run([exe], capture_output=True, text=True, check=True)
        return PARAM_BASE + int(run.stdout)


def kernels(obj):
    run = subprocess.run(["cuobjdump", "-sass", obj], capture_output=True, text=True, check=True)
    out = run.stdout
    arch, fn, found = None, None, {}
    for line in out.splitlines():
        if "code for sm_" in line:
            arch = line.split()[-1]
        m = re.search(r"Function : (\S+)", line)
        if m:
            fn = m.group(1)
            if arch == "sm_90a":
                found[fn] = []
        m = re.match(r"\s+/\*[0-9a-f]{4,}\*/\s+(.*?);", line)
        if m and arch == "sm_90a" and fn in found:
            found[fn].append(m.group(1))
    return found


def main():
    si = state_in_offset()
    for obj in sys.argv[1:]:
        for fn, ins in sorted(kernels(obj).items()):
            seen, before = [], None
            for x in ins:
                for off in re.findall(r"c\[0x0\]\[(0x[0-9a-f]+)\]", x):
                    o = int(off, 16)
                    if o // 64 not in seen:
                        seen.append(o // 64)
                    if o == si and before is None:
                        before = len(seen)
            print(f"{fn}\tlines up to the state's load {before}\tlines in all {len(seen)}")


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# sass_diff.sh: whether a change alters the machine code of CUDA files, kernel by kernel, without
# a GPU: a refactor that claims "no change to the kernels" proves it here, and a kernel change
# shows which kernels it touched and by how many instructions.
#
#   scripts/sass_diff.sh [-r REF] FILE.cu [FILE.cu ...]
#
# Compiles each FILE.cu twice, as the library does (the compile command CMake gives it: sm_90a and
# sm_80), from the commit REF (default HEAD) and from the working tree, disassembles both with cuobjdump,
# drops the instruction encodings (so that only the instruction text and the offsets compare), and
# prints one line per kernel and architecture: "same" or "DIFF", with the instruction counts before
# and after ("new" / "gone" for a kernel only one side has). The exit status is the number of
# kernels that differ, appear or disappear.
#
# cuobjdump comes with a full CUDA toolkit; where nvcc was installed without it (as on the CI
# machine), PyPI has it: `pip download --no-deps nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm -d D`,
# unzip both wheels in D, and put D/nvidia/cu13/bin on PATH. NVCC (default: nvcc on PATH, else
# /usr/local/cuda/bin/nvcc) picks the compiler. cmake and ninja configure each side (as for the
# library's own build); the compiler's messages (ptxas' spill warnings among them) are shown only
# when a compile fails.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
ref=HEAD
if [ "${1:-}" = -r ]; then
    ref=${2:?usage: scripts/sass_diff.sh [-r REF] FILE.cu [FILE.cu ...]}
    shift 2
fi
[ $# -gt 0 ] || { echo "usage: scripts/sass_diff.sh [-r REF] FILE.cu [FILE.cu ...]" >&2; exit 2; }
nvcc=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
[ -x "$nvcc" ] || { echo "sass_diff.sh: no nvcc (set NVCC)" >&2; exit 2; }
command -v cuobjdump >/dev/null || { echo "sass_diff.sh: no cuobjdump on PATH (see the top of this script)" >&2; exit 2; }
for tool in cmake ninja; do
    command -v $tool >/dev/null || { echo "sass_diff.sh: no $tool on PATH" >&2; exit 2; }
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The REF side: the whole tracked tree at REF, so that the file's headers are REF's too.
mkdir -p "$work/ref"
git -C "$root" archive "$ref" | tar -x -C "$work/ref" || { echo "sass_diff.sh: cannot read $ref" >&2; exit 2; }

# One kernel per line: "arch<TAB>function<TAB>instructions<TAB>hash of their text", from an object.
disassemble() { # object -> stdout
    cuobjdump -sass "$1" | python3 -c '
import hashlib, re, sys
arch, fn, kernels = "", None, {}
for line in sys.stdin:
    m = re.match(r"\s*arch = (\S+)", line)
    if m:
        arch, fn = m.group(1), None
        continue
    m = re.search(r"Function : (\S+)", line)
    if m:
        fn = m.group(1)
        kernels[(arch, fn)] = []
        continue
    m = re.match(r"\s+(/\*[0-9a-f]{4,}\*/.*?)\s*(/\* 0x[0-9a-f]+ \*/)?\s*$", line)
    if m and fn is not None:
        kernels[(arch, fn)].append(" ".join(m.group(1).split()))
for (a, f), text in sorted(kernels.items()):
    print(a, f, len(text), hashlib.md5("\n".join(text).encode()).hexdigest(), sep="\t")
'
}

# Each side compiles a file with the command its own CMakeLists.txt gives it: a throwaway configure
# of the tree (compile_commands.json), the command run as written with its output redirected, so
# that the flags compared are the library's, at REF and in the working tree.
configure() { # tree build-dir
    cmake -S "$1" -B "$2" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_EXPORT_COMPILE_COMMANDS=ON \
        -DFKDA_WITH_CUDA=ON -DCMAKE_CUDA_COMPILER="$nvcc" >"$2.log" 2>&1 || {
        tail -20 "$2.log" >&2
        echo "sass_diff.sh: cmake failed on $1 (above: the end of its output)" >&2
        exit 2
    }
}

compile() { # tree build-dir file object
    python3 - "$2/compile_commands.json" "$1/$3" "$4" <<'EOF'
import json, os, shlex, subprocess, sys
db, source, obj = sys.argv[1], os.path.realpath(sys.argv[2]), sys.argv[3]
for entry in json.load(open(db)):
    if os.path.realpath(os.path.join(entry["directory"], entry["file"])) != source:
        continue
    args = shlex.split(entry["command"]) if "command" in entry else entry["arguments"]
    args[args.index("-o") + 1] = obj
    run = subprocess.run(args, cwd=entry["directory"], capture_output=True, text=True)
    if run.returncode:
        sys.stderr.write(run.stdout + run.stderr)
    sys.exit(run.returncode)
sys.exit("sass_diff.sh: %s is not compiled by the library" % source)
EOF
}

configure "$work/ref" "$work/cfg-ref"
configure "$root" "$work/cfg-tree"
changed=0
for file in "$@"; do
    rel=${file#"$root"/}
    echo "== $rel ($ref -> working tree)"
    if [ ! -f "$work/ref/$rel" ]; then
        echo "   (not in $ref)"
        : >"$work/a.txt"
    else
        compile "$work/ref" "$work/cfg-ref" "$rel" "$work/a.o" || { echo "sass_diff.sh: $rel does not compile at $ref" >&2; exit 2; }
        disassemble "$work/a.o" >"$work/a.txt"
    fi
    compile "$root" "$work/cfg-tree" "$rel" "$work/b.o" || { echo "sass_diff.sh: $rel does not compile in the tree" >&2; exit 2; }
    disassemble "$work/b.o" >"$work/b.txt"
    # Join on arch + function: "same" / "DIFF" with counts, "new" / "gone".
    while IFS='|' read -r arch fn na ha nb hb; do
        if [ -z "$na" ]; then
            printf '   %-7s new   %s (%s instructions)\n' "$arch" "$fn" "$nb"
            changed=$((changed + 1))
        elif [ -z "$nb" ]; then
            printf '   %-7s gone  %s (%s instructions)\n' "$arch" "$fn" "$na"
            changed=$((changed + 1))
        elif [ "$ha" = "$hb" ]; then
            printf '   %-7s same  %s (%s)\n' "$arch" "$fn" "$na"
        else
            printf '   %-7s DIFF  %s (%s -> %s)\n' "$arch" "$fn" "$na" "$nb"
            changed=$((changed + 1))
        fi
    done < <(python3 - "$work/a.txt" "$work/b.txt" <<'EOF'
import sys
def read(path):
    out = {}
    for line in open(path):
        arch, fn, n, h = line.rstrip("\n").split("\t")
        out[(arch, fn)] = (n, h)
    return out
a, b = read(sys.argv[1]), read(sys.argv[2])
for key in sorted(set(a) | set(b)):
    na, ha = a.get(key, ("", ""))
    nb, hb = b.get(key, ("", ""))
    print("|".join([key[0], key[1], na, ha, nb, hb]))  # "|": empty fields stay fields
EOF
)
done
exit "$changed"

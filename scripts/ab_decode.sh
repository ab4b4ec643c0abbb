#!/usr/bin/env bash
# ab_decode.sh: the decode of this tree timed against a baseline tree, alternately in one device
# call (baseline, this, baseline, this), so that both run on the same card.
#
#   scripts/ab_decode.sh BASE_TREE
#
# BASE_TREE is a whole source tree of the baseline (any commit whose public C API this tree's
# Python package can load). Keep it under an ignored path such as build-ab/ and carry it to the
# device, e.g. from the repository root:
#   rm -rf build-ab/base && mkdir -p build-ab/base && git archive 8bd0caa | tar -x -C build-ab/base
#   run(command="scripts/ab_decode.sh build-ab/base", carry=[".whl", "build-ab"])
# Both libraries are built (the baseline's in /tmp/fkda-ab-base, this tree's in build/gpu), then
# this tree's bench/bench_decode_gpu.py --sweep-only runs four times with FLASHKDA_LIBRARY pointing
# at each library in turn, with the sweep's cases and columns from the environment
# (FKDA_BENCH_SWEEP_CASES, FKDA_BENCH_SWEEP_CONFIGS, FKDA_BENCH_SWEEP_CUSTOM; a knob one tree does
# not know is ignored there, e.g. FKDA_DECODE_VARIANT before it existed). Each table goes to
# $OUT/ab-N-WHO.md, the build logs to $OUT/ab-build.log.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
base_tree=${1:?usage: scripts/ab_decode.sh BASE_TREE}
[ -f "$base_tree/CMakeLists.txt" ] || { echo "ab_decode.sh: $base_tree is not a source tree (no CMakeLists.txt)"; exit 2; }
base_tree=$(cd "$base_tree" && pwd)
OUT=${OUT:-$PWD/build/gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null && [ ! -d /tmp/fkda-site/fla ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/fkda-site .whl/*.whl || exit 100
fi
export PYTHONPATH=$PWD/python:/tmp/fkda-site${PYTHONPATH:+:$PYTHONPATH}

echo "== build (this tree, and the baseline in $base_tree)"
build_library() { # source dir, build dir
  cmake -S "$1" -B "$2" -G Ninja -DCMAKE_BUILD_TYPE=Release >>"$OUT/ab-build.log" 2>&1 &&
    cmake --build "$2" -j 16 --target flashkda >>"$OUT/ab-build.log" 2>&1
}
: >"$OUT/ab-build.log"
if ! build_library "$PWD" build/gpu || ! build_library "$base_tree" /tmp/fkda-ab-base; then
  tail -n 40 "$OUT/ab-build.log"
  exit 101
fi

this_lib=$PWD/build/gpu/libflashkda.so base_lib=/tmp/fkda-ab-base/libflashkda.so
i=0
for who in base this base this; do
  i=$((i + 1))
  lib=$([ $who = base ] && echo "$base_lib" || echo "$this_lib")
  echo "== $i: $who"
  FLASHKDA_LIBRARY=$lib python3 bench/bench_decode_gpu.py --sweep-only --out "$OUT/ab-$i-$who.md" |
    grep -E '^\| (fp32|bf16|pool) ' | grep -v '^| pool | B | H | state'
done

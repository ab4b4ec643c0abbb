#!/usr/bin/env bash
# ab_decode.sh: the decode of this tree timed against a baseline that differs in a few files,
# alternately in one device call (A/B/A/B), so that both run on the same card.
#
#   scripts/ab_decode.sh BASE_DIR
#
# BASE_DIR holds the baseline's versions of the files that differ, at their repository paths
# (BASE_DIR/src/cuda/decode_recurrent.cu, ...). Keep it under an ignored path such as
# build-ab/ and carry it to the device, e.g. from the repository root:
#   mkdir -p build-ab/src/cuda && git show main:src/cuda/decode_recurrent.cu > build-ab/src/cuda/decode_recurrent.cu
#   run(command="scripts/ab_decode.sh build-ab", carry=[".whl", "build-ab"])
# The baseline is this tree with those files replaced, its library built in /tmp/fkda-ab-base;
# this tree's library in build/gpu. bench/bench_decode_gpu.py --sweep-only runs four times
# (baseline, this, baseline, this) with the sweep's cases and columns from the environment
# (FKDA_BENCH_SWEEP_CASES, FKDA_BENCH_SWEEP_CONFIGS, FKDA_BENCH_SWEEP_CUSTOM); each table goes
# to $OUT/ab-N-WHO.md.
set -uo pipefail
cd "$(dirname "$0")/.."
base_dir=${1:?usage: scripts/ab_decode.sh BASE_DIR}
OUT=${OUT:-$PWD/build/gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null && [ ! -d /tmp/fkda-site/fla ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/fkda-site .whl/*.whl || exit 100
fi
export PYTHONPATH=$PWD/python:/tmp/fkda-site${PYTHONPATH:+:$PYTHONPATH}

base_src=/tmp/fkda-ab-src
rm -rf "$base_src" && mkdir -p "$base_src"
# The tree without build outputs (build*/: also the baseline's own files) and git metadata.
tar --exclude='./build*' --exclude=./.git -cf - . | tar -xf - -C "$base_src"
cp -r "$base_dir"/. "$base_src"/
echo "== build (this tree, and the baseline: $(cd "$base_dir" && find . -type f | tr '\n' ' '))"
build_library() { # source dir, build dir
  cmake -S "$1" -B "$2" -G Ninja -DCMAKE_BUILD_TYPE=Release >>"$OUT/ab-build.log" 2>&1 &&
    cmake --build "$2" -j 16 --target flashkda >>"$OUT/ab-build.log" 2>&1
}
: >"$OUT/ab-build.log"
if ! build_library "$PWD" build/gpu || ! build_library "$base_src" /tmp/fkda-ab-base; then
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

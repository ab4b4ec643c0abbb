#!/usr/bin/env bash
# ab.sh: any command run against a baseline library and this tree's, alternately, in one device
# call (baseline, this, baseline, this, ...), so that both sides see the same card.
#
#   scripts/ab.sh BASE -- COMMAND [ARG ...]
#
# BASE is either
#   - a whole source tree of the baseline (a directory: `git archive <commit> | tar -x -C
#     build-ab/base`, under an ignored path, carried to the device), or
#   - a patch file (FILE.patch): the baseline is this tree with that patch taken back out
#     (`git diff > build-ab/change.patch` before the call: the device's copy of the tree has no
#     git history, so the patch is what says what changed), or
#   - a tarball of scripts/prebuild_gpu.sh (FILE.tar.xz, carried): the baseline's library built on
#     the development machine, used as it is.
# Both libraries are built at once (this tree's in build/ab-this, the baseline's in
# /tmp/fkda-ab-base/build), but a prebuilt baseline, and this tree's library when FKDA_PREBUILT
# names a tarball built from exactly these sources (scripts/source_hash.sh): with both prebuilt
# the call builds nothing (a cold build of the library takes minutes of device time). COMMAND
# then runs FKDA_AB_ROUNDS times (default 2) for each, alternating, with FLASHKDA_LIBRARY pointing
# at that side's library, PYTHONPATH at this tree's Python package (and fla's private site directory when .whl is carried), and AB_RUN set to
# "I-base" or "I-this" (I = 1, 2, ...), so that a command can name its own output after it.
# Each run's output goes to $OUT/ab-AB_RUN.log and to stdout under a "== AB_RUN" line; the
# builds' log to $OUT/ab-build.log. FKDA_AB_CMAKE_ARGS adds cmake arguments to both builds
# (e.g. -DFKDA_WITH_CUDA=OFF to try the script on a machine without a GPU). The exit status is the
# number of runs that failed (101: a build failed).
#
# Example (the Kimi rows, this tree against main):
#   rm -rf build-ab && mkdir -p build-ab/base && git archive HEAD | tar -x -C build-ab/base
#   run(command="scripts/ab.sh build-ab/base -- python3 bench/bench_prefill_options_gpu.py --no-fla
#       --cases kimi", carry=["build-ab"])
# The same with both libraries built here (the change committed on HEAD, its parent the baseline):
#   git worktree add /tmp/base HEAD~1 && /tmp/base/scripts/prebuild_gpu.sh $PWD/build-ab/base.tar.xz
#   scripts/prebuild_gpu.sh build-ab/this.tar.xz
#   run(command="FKDA_PREBUILT=build-ab/this.tar.xz scripts/ab.sh build-ab/base.tar.xz -- ...",
#       carry=["build-ab"])
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
base=${1:?usage: scripts/ab.sh BASE -- COMMAND [ARG ...]}
shift
[ "${1:-}" = -- ] && shift
[ $# -gt 0 ] || { echo "ab.sh: no command (usage: scripts/ab.sh BASE -- COMMAND [ARG ...])"; exit 2; }
export OUT=${OUT:-$PWD/build/gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

base_tree=/tmp/fkda-ab-base base_lib="" this_lib=""
if [[ "$base" == *.tar.xz ]]; then
  # the baseline prebuilt (from any tree: its source hash is not checked)
  scripts/unpack_prebuilt.sh "$base" /tmp/fkda-ab-base-prebuilt || { echo "ab.sh: $base is not a prebuilt tarball"; exit 2; }
  base_lib=/tmp/fkda-ab-base-prebuilt/libflashkda.so
  echo "baseline prebuilt: $(head -n 1 /tmp/fkda-ab-base-prebuilt/BUILT)"
elif [ -d "$base" ]; then
  [ -f "$base/CMakeLists.txt" ] || { echo "ab.sh: $base is not a source tree (no CMakeLists.txt)"; exit 2; }
  base_tree=$(cd "$base" && pwd)
elif [ -f "$base" ]; then
  # This tree without the change: a copy (builds and carried folders left out), the patch reversed.
  patch=$(cd "$(dirname "$base")" && pwd)/$(basename "$base")
  rm -rf "$base_tree" && mkdir -p "$base_tree" || exit 2
  tar --exclude=./build --exclude=./build-ab --exclude=./.whl --exclude=./.git -cf - . | tar -xf - -C "$base_tree"
  (cd "$base_tree" && git apply -R "$patch") || { echo "ab.sh: $base does not come back out of this tree"; exit 2; }
else
  echo "ab.sh: $base is neither a source tree, a patch file nor a prebuilt tarball"
  exit 2
fi
# This tree's library prebuilt (FKDA_PREBUILT, as gpu_check.sh takes it), if built from exactly
# these sources.
if [ -n "${FKDA_PREBUILT:-}" ]; then
  if scripts/unpack_prebuilt.sh "$FKDA_PREBUILT" /tmp/fkda-ab-this-prebuilt --this-tree; then
    this_lib=/tmp/fkda-ab-this-prebuilt/libflashkda.so
    echo "this tree prebuilt: $(head -n 1 /tmp/fkda-ab-this-prebuilt/BUILT)"
  else
    echo "!! FKDA_PREBUILT=$FKDA_PREBUILT is not this tree's build: building it"
  fi
fi

if compgen -G ".whl/*.whl" >/dev/null && [ ! -d /tmp/fkda-site/fla ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/fkda-site .whl/*.whl || exit 100
fi
export PYTHONPATH=$PWD/python:/tmp/fkda-site${PYTHONPATH:+:$PYTHONPATH}

jobs=$(( $(nproc) / 2 > 0 ? $(nproc) / 2 : 1 ))
build_library() { # source dir, build dir, log
  scripts/clear_stale_build.sh "$2" "$1" &&
  # shellcheck disable=SC2086
  cmake -S "$1" -B "$2" -G Ninja -DCMAKE_BUILD_TYPE=Release -DFKDA_BUILD_TESTS=OFF ${FKDA_AB_CMAKE_ARGS:-} >"$3" 2>&1 &&
    cmake --build "$2" -j "$jobs" --target flashkda >>"$3" 2>&1
}
: >/tmp/fkda-ab-this.log
: >/tmp/fkda-ab-base.log
this_rc=0 base_rc=0
if [ -z "$this_lib" ]; then
  echo "== build (this tree)"
  build_library "$PWD" build/ab-this /tmp/fkda-ab-this.log &
  this_pid=$!
  this_lib=$PWD/build/ab-this/libflashkda.so
fi
if [ -z "$base_lib" ]; then
  echo "== build (the baseline in $base_tree)"
  build_library "$base_tree" "$base_tree/build" /tmp/fkda-ab-base.log
  base_rc=$?
  base_lib=$base_tree/build/libflashkda.so
fi
# `wait PID`, not a bare `wait`: a bare one also waits for any process substitution of the
# caller's shell (a `tee` of its log), which never ends.
if [ -n "${this_pid:-}" ]; then
  wait "$this_pid"
  this_rc=$?
fi
cat /tmp/fkda-ab-this.log /tmp/fkda-ab-base.log >"$OUT/ab-build.log"
if [ $this_rc -ne 0 ] || [ $base_rc -ne 0 ]; then
  echo "ab.sh: build failed (this tree: $this_rc, baseline: $base_rc)"
  tail -n 40 "$OUT/ab-build.log"
  exit 101
fi

failed=0 i=0
for _ in $(seq "${FKDA_AB_ROUNDS:-2}"); do
  for who in base this; do
    i=$((i + 1))
    lib=$([ $who = base ] && echo "$base_lib" || echo "$this_lib")
    export AB_RUN=$i-$who
    echo "== $AB_RUN"
    FLASHKDA_LIBRARY=$lib "$@" 2>&1 | tee "$OUT/ab-$AB_RUN.log"
    [ "${PIPESTATUS[0]}" -eq 0 ] || { echo "!! $AB_RUN failed"; failed=$((failed + 1)); }
  done
done
exit $failed

#!/usr/bin/env bash
# prebuild_gpu.sh: builds the CUDA library and the GPU test programs on this machine (nvcc, no GPU
# needed) and packs them into one tarball for the device machine, so that a device call spends its
# minutes on tests and timings instead of a cold build (a cold build there takes minutes of the
# session's 30).
#
#   scripts/prebuild_gpu.sh [TARBALL]        default build/prebuilt.tar.xz (ignored by git)
#
# Then carry the tarball and name it: run(command="FKDA_PREBUILT=build/prebuilt.tar.xz
# scripts/gpu_check.sh ...", carry=["build/prebuilt.tar.xz", ".whl"]). gpu_check.sh unpacks it and
# uses it only if its source hash (scripts/source_hash.sh) matches the device's copy of the tree;
# otherwise it says so and builds as usual. scripts/ab.sh takes such a tarball as its baseline.
#
# The build is gpu_check.sh's (Release, Ninja, the same CMakeLists) in build/prebuild, kept between
# runs so that a rebuild after a small change is incremental. The tarball holds the library (with
# its soname links), the GPU test programs and fuzz_api_cuda, the CUDA runtime they link
# (libcudart, from this machine's toolkit: the device's nvcc is the same 13.0), the ptxas register
# and spill lines, and two stamps: SOURCE (the source hash) and BUILT (git's name of the tree, the
# date, nvcc's version). xz: the library's ~36 MB of cubins pack to ~7 MB, so two tarballs (an A/B)
# and fla's wheel fit the device tool's 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-build/prebuilt.tar.xz}
build=build/prebuild
command -v nvcc >/dev/null || { echo "prebuild_gpu.sh: nvcc not found (the CUDA toolkit is needed)"; exit 2; }

# The hash must cover what the device's copy will hold: the files git sends (tracked, and untracked
# but not ignored) under the hashed paths, no more and no less.
sent=$(git ls-files -co --exclude-standard -- CMakeLists.txt flashkda.pc.in src include tests/c tests/cuda \
  tests/fuzz bench/bench_cpu.c | LC_ALL=C sort)
if [ "$sent" != "$(scripts/source_hash.sh --list)" ]; then
  echo "prebuild_gpu.sh: the files hashed differ from those the device's copy gets:"
  diff <(echo "$sent") <(scripts/source_hash.sh --list) | head -n 20
  exit 1
fi

# On a fresh clone build/ does not exist yet, and the log below is written beside the build folder.
mkdir -p "$build"
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release >"$build.cmake.log" 2>&1 ||
  { tail -n 30 "$build.cmake.log"; exit 1; }
# An object whose entry in ninja's deps log lists no headers is not rebuilt when a header it
# includes changes, so a level of prebuild_pending.sh would ship the previous level's kernels under
# the new table (seen: decode_tiles.cu.o without decode_variants.h's new row). Such objects are
# removed so that they rebuild; every object of a complete compile lists at least one header.
if [ -f "$build/.ninja_deps" ]; then
  ninja -C "$build" -t deps | sed -n 's/^\(.*\.o\): #deps 0,.*/\1/p' | while read -r obj; do
    echo "prebuild_gpu.sh: $obj has no recorded headers; rebuilding it"
    rm -f "$build/$obj"
  done
fi
# The ptxas warnings come only from files that compile: a full log each run keeps them all.
cmake --build "$build" -j "$(nproc)" 2>&1 | tee "$build.log" | grep -E "error:|FAILED:" || true
[ "${PIPESTATUS[0]}" -eq 0 ] || { tail -n 40 "$build.log"; exit 1; }
[ -x "$build/test_prefill_cuda" ] || { echo "prebuild_gpu.sh: no GPU test programs built (FKDA_WITH_CUDA off?)"; exit 1; }

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
cp -P "$build"/libflashkda.so* "$stage/"
cp "$build"/test_*_cuda "$build"/fuzz_api_cuda "$stage/"
cudart=$(ldd "$build/test_prefill_cuda" | awk '/libcudart/ {print $3}')
[ -n "$cudart" ] && cp -L "$cudart" "$stage/"
grep -E "spill|registers" "$build.log" | sort -u >"$stage/ptxas.txt" || true
scripts/source_hash.sh >"$stage/SOURCE"
{
  echo "tree $(git describe --always --dirty 2>/dev/null || echo unknown)"
  echo "built $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -m)"
  nvcc --version | tail -n 1
} >"$stage/BUILT"
mkdir -p "$(dirname "$out")"
XZ_OPT=${XZ_OPT:--3 -T0} tar -cJf "$out" -C "$stage" .
echo "$out: $(du -h "$out" | cut -f1), source $(cat "$stage/SOURCE"), $(head -n 1 "$stage/BUILT")"

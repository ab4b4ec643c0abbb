#!/usr/bin/env bash
# source_hash.sh: one hash of everything the C/CUDA build reads (CMakeLists.txt, src, include, the C
# and CUDA test programs, the fuzzer, the CPU benchmark), by content, so that a library built on one
# machine can be matched to the tree on another that has no git history (scripts/prebuild_gpu.sh
# writes it beside the library; scripts/gpu_check.sh compares it before it uses the library).
set -euo pipefail
cd "$(dirname "$0")/.."
# `--list`: the files hashed, one a line. The device's copy has no git (or a stale .git), so the
# list comes from find; prebuild_gpu.sh checks here that it is exactly what git would send there.
files() {
  find CMakeLists.txt flashkda.pc.in src include tests/c tests/cuda tests/fuzz bench/bench_cpu.c -type f \
    ! -name '*.pyc' ! -name '*.so' ! -path '*/__pycache__/*' -print0 | LC_ALL=C sort -z
}
if [ "${1:-}" = --list ]; then
  files | tr '\0' '\n'
else
  files | xargs -0 sha256sum | sha256sum | cut -c1-16
fi

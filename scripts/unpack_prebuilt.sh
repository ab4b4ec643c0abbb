#!/usr/bin/env bash
# unpack_prebuilt.sh: a tarball of scripts/prebuild_gpu.sh unpacked into a folder, for
# scripts/gpu_check.sh (FKDA_PREBUILT) and scripts/ab.sh.
#
#   scripts/unpack_prebuilt.sh TARBALL DIR [--this-tree]
#
# Exit status 0: DIR holds the library (and the test programs, stamps); 1: the tarball could not be
# unpacked or holds no library; 2 (--this-tree only): it was built from other sources than this
# tree's (scripts/source_hash.sh), so using it would test something else.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
tarball=${1:?usage: scripts/unpack_prebuilt.sh TARBALL DIR [--this-tree]}
dir=${2:?usage: scripts/unpack_prebuilt.sh TARBALL DIR [--this-tree]}
rm -rf "$dir" && mkdir -p "$dir" || exit 1
# Python's tarfile where tar has no xz.
{ tar -xJf "$tarball" -C "$dir" 2>/dev/null ||
  python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' "$tarball" "$dir"; } &&
  [ -f "$dir/libflashkda.so" ] || exit 1
if [ "${3:-}" = --this-tree ] && [ "$(cat "$dir/SOURCE")" != "$(scripts/source_hash.sh)" ]; then
  exit 2
fi
exit 0

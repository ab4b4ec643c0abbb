#!/usr/bin/env bash
# clear_stale_build.sh BUILD_DIR [SOURCE_DIR]: empties BUILD_DIR when the sources it was built from
# have changed, whatever their timestamps say.
#
# Why: the GPU machine keeps ignored build outputs between calls but copies the working tree anew
# each time, and a copied file may be older than the object built from its previous version, so
# make and ninja take the stale object (a call with a patch applied, then one without, linked
# objects of both). A digest of what the build compiles (the C, CUDA and CMake files under src, include
# and tests), kept beside the build, says whether the build can be reused.
set -euo pipefail
build=${1:?usage: clear_stale_build.sh BUILD_DIR [SOURCE_DIR]}
src=${2:-.}
paths=()
for x in src include tests cmake CMakeLists.txt; do [ -e "$src/$x" ] && paths+=("$x"); done
digest=$(cd "$src" && find "${paths[@]}" -type f \( -name '*.[ch]' -o -name '*.cu' -o -name '*.cuh' -o \
  -name '*.cmake' -o -name CMakeLists.txt -o -name '*.in' \) -print0 | LC_ALL=C sort -z | xargs -0 sha1sum | sha1sum | cut -d' ' -f1)
if [ -d "$build" ] && [ "$(cat "$build/.source-digest" 2>/dev/null)" != "$digest" ]; then
  rm -rf "$build"
fi
mkdir -p "$build"
echo "$digest" >"$build/.source-digest"

#!/usr/bin/env bash
# prebuild_pending.sh: one prebuilt library per level of dev/pending, built here, for a device call
# that tests the patches and times them against main (scripts/pending_check.sh).
#
#   scripts/prebuild_pending.sh [DIR]        default build-ab/pending (ignored by git; carry it)
#
# Level 0 is this tree as committed; level i is it with dev/pending's first i patches applied, in
# order (each patch is written against the ones before it). Each level goes through
# scripts/prebuild_gpu.sh into DIR/pending-<i>.tar.xz (incremental: the build folder is shared,
# so a level costs what its patch recompiles, ~1 minute for one CUDA file), and DIR/pending.txt
# lists the levels and their patches; the tarballs of an earlier run are removed first. ~7 MB a
# level: up to 8 levels fit the device tool's 64 MiB. The tree is restored afterwards, also on failure, so its
# tracked files must have no uncommitted changes under the paths the patches touch.
#
# FKDA_PENDING_MUTANTS="NAME ..." also builds, for each CUDA mutant of scripts/mutate.sh named
# (usually the ones the patches add), the top level with that mutant planted, into
# DIR/mutant-NAME.tar.xz: scripts/pending_check.sh runs the test programs on each and expects
# them to fail. Levels and mutants together: at most 8 tarballs (the 64 MiB carried).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-build-ab/pending}
patches=(dev/pending/0*.patch)
[ -e "${patches[0]}" ] || { echo "prebuild_pending.sh: no patches in dev/pending"; exit 1; }
# Every path a patch touches, docs included: the restore must put each one back, or the tree
# carried to the device holds half-applied patches (a later `git apply` there then fails).
mapfile -t touched < <(for p in "${patches[@]}"; do git apply --numstat "$p" | cut -f3; done | sort -u)
paths=(src include tests scripts CMakeLists.txt "${touched[@]}")
if ! git diff --quiet HEAD -- "${paths[@]}"; then
  echo "prebuild_pending.sh: uncommitted changes under ${paths[*]}; commit or stash them first"
  exit 1
fi
if [ -n "$(git ls-files --others --exclude-standard -- "${paths[@]}")" ]; then
  echo "prebuild_pending.sh: untracked files under ${paths[*]} (the restore would remove them)"
  exit 1
fi
# A new file of a patch is not in HEAD: checkout skips it and clean removes it.
restore() {
  git checkout -q HEAD -- $(git ls-tree -r --name-only HEAD -- "${paths[@]}" | sort -u)
  git reset -q -- "${paths[@]}"
  git clean -qfd -- "${paths[@]}"
}
trap restore EXIT

# Only once the tree is known to be buildable: a refused run leaves an earlier run's tarballs.
mkdir -p "$dir"
rm -f "$dir"/pending-*.tar.xz "$dir"/mutant-*.tar.xz "$dir/pending.txt"

echo "0 main ($(git describe --always --dirty))" >"$dir/pending.txt"
scripts/prebuild_gpu.sh "$dir/pending-0.tar.xz"
i=0
for p in "${patches[@]}"; do
  i=$((i + 1))
  git apply "$p" || { echo "prebuild_pending.sh: $p does not apply on level $((i - 1))"; exit 1; }
  echo "$i + $(basename "$p")" >>"$dir/pending.txt"
  scripts/prebuild_gpu.sh "$dir/pending-$i.tar.xz"
done
# Each mutant on the top level: planted, built, and its file put back before the next.
for name in ${FKDA_PENDING_MUTANTS:-}; do
  file=$(scripts/mutate.sh list | awk -v n="$name" '$1 == n {print $3}')
  [ -f "$file" ] || { echo "prebuild_pending.sh: mutant $name: no such mutant, or its snippet is not in level $i"; exit 1; }
  saved=$(mktemp)
  cp -p "$file" "$saved"
  scripts/mutate.sh apply "$name" >/dev/null || { echo "prebuild_pending.sh: mutant $name not planted"; exit 1; }
  echo "mutant $name ($file) on level $i" >>"$dir/pending.txt"
  scripts/prebuild_gpu.sh "$dir/mutant-$name.tar.xz"
  cp "$saved" "$file" # a fresh time: the next build recompiles it
  rm -f "$saved"
done
cat "$dir/pending.txt"

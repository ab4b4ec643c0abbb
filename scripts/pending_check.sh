#!/usr/bin/env bash
# pending_check.sh: the device call for dev/pending's patches: their GPU tests on the top level,
# then a benchmark that alternates main and every level, all from libraries built on the
# development machine (scripts/prebuild_pending.sh), so that the call builds nothing.
#
#   FKDA_PENDING_TESTS="test_decode_layer_cuda" \
#   FKDA_PENDING_BENCH="python3 bench/bench_decode_layer_gpu.py --pool fp32 --shapes 1,12 64,32" \
#   scripts/pending_check.sh [DIR]           default build-ab/pending (carried)
#
# Steps, in this order, each skipped with a line saying so when less than its share of the call's
# FKDA_PENDING_LIMIT seconds (default 540) is left, so that a short budget still gets the verdicts
# that matter first:
#   1. each test program of FKDA_PENDING_TESTS with --small on the top level (a fast failure);
#   2. FKDA_PENDING_BENCH once with each level, main first (FLASHKDA_LIBRARY names the level's
#      library, LD_LIBRARY_PATH its folder; PYTHONPATH this tree's package);
#   3. each test program on its full case list, on the top level;
#   4. compute-sanitizer racecheck and memcheck of each test program's --small, top level;
#   5. FKDA_PENDING_BENCH again with each level, in reverse order (A/B/A against a drift of the
#      card).
# Logs go to $OUT/pending/, one per step; stdout has one verdict line per step, and the
# benchmark's table rows (lines starting with "| " and a digit) and its own "== " lines. FKDA_PENDING_BENCH is run by
# bash -c, with LEVEL set to the level's number. The exit status counts the failed steps.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
dir=${1:-build-ab/pending}
limit=${FKDA_PENDING_LIMIT:-540}
tests=${FKDA_PENDING_TESTS:-}
bench=${FKDA_PENDING_BENCH:-}
log=${OUT:-/tmp}/pending
mkdir -p "$log"
t0=$(date +%s)
failed=0
elapsed() { echo $(($(date +%s) - t0)); }
# fits N: N more seconds fit in the limit; else say which step is skipped.
fits() {
  if [ $(($(elapsed) + $1)) -lt "$limit" ]; then return 0; fi
  echo "-- skipped ($2): $(elapsed) s of $limit used"
  return 1
}

levels=()
for t in "$dir"/pending-*.tar.xz; do
  [ -e "$t" ] || { echo "pending_check.sh: no $dir/pending-*.tar.xz (scripts/prebuild_pending.sh)"; exit 2; }
  levels+=("$(basename "$t" .tar.xz | sed 's/^pending-//')")
done
mapfile -t levels < <(printf '%s\n' "${levels[@]}" | sort -n)
top=${levels[-1]}
for l in "${levels[@]}"; do
  scripts/unpack_prebuilt.sh "$dir/pending-$l.tar.xz" "/tmp/fkda-pending/$l" ||
    { echo "pending_check.sh: level $l does not unpack"; exit 2; }
done
echo "$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1); levels ${levels[*]}"
[ -f "$dir/pending.txt" ] && cat "$dir/pending.txt"
lib=/tmp/fkda-pending/$top

run_tests() { # $1: the programs' arguments (--small, or none), $2: the step's name
  local args=()
  [ -n "$1" ] && args=("$1")
  for prog in $tests; do
    fits "${3:-60}" "$prog $2" || continue
    LD_LIBRARY_PATH=$lib timeout $((limit - $(elapsed))) "$lib/$prog" "${args[@]}" >"$log/$prog-$2.log" 2>&1
    local rc=$?
    echo "$prog $2 (level $top) rc=$rc at $(elapsed) s: $(tail -n 1 "$log/$prog-$2.log")"
    if [ $rc -ne 0 ]; then
      failed=$((failed + 1))
      grep -E "FAIL" "$log/$prog-$2.log" | head -n 6
    fi
  done
}

run_bench() { # $1: round, then the levels in order
  local round=$1
  shift
  [ -n "$bench" ] || return 0
  for l in "$@"; do
    fits 45 "bench round $round level $l" || continue
    LD_LIBRARY_PATH=/tmp/fkda-pending/$l FLASHKDA_LIBRARY=/tmp/fkda-pending/$l/libflashkda.so \
      PYTHONPATH=$PWD/python LEVEL=$l \
      timeout $((limit - $(elapsed))) bash -c "$bench" >"$log/bench-$round-$l.log" 2>&1
    local rc=$?
    [ $rc -ne 0 ] && failed=$((failed + 1))
    echo "== bench round $round level $l rc=$rc at $(elapsed) s"
    grep -E "^(\| [0-9]|== )" "$log/bench-$round-$l.log"
  done
}

run_tests --small small 30
run_bench 1 "${levels[@]}"
run_tests "" full 120
for tool in racecheck memcheck; do
  for prog in $tests; do
    fits 90 "$prog $tool" || continue
    LD_LIBRARY_PATH=$lib timeout $((limit - $(elapsed))) compute-sanitizer --tool $tool --error-exitcode 1 "$lib/$prog" --small \
      >"$log/$prog-$tool.log" 2>&1
    rc=$?
    [ $rc -ne 0 ] && failed=$((failed + 1))
    echo "$prog $tool (level $top) rc=$rc at $(elapsed) s: $(grep -E "SUMMARY" "$log/$prog-$tool.log" | tail -n 1)"
  done
done
mapfile -t reversed < <(printf '%s\n' "${levels[@]}" | sort -rn)
run_bench 2 "${reversed[@]}"
exit "$failed"

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
#   4. compute-sanitizer racecheck and memcheck of each test program's --small, top level
#      (FKDA_PENDING_SANITIZE_TESTS: other programs instead; FKDA_PENDING_SANITIZE_ENV="KNOB=1 ...":
#      under those settings, e.g. a tuning knob that puts the small cases on a new kernel's geometry);
#   5. each test program's --small on the top level under each setting of FKDA_PENDING_VARIANTS
#      (";"-separated, each "KNOB=1 KNOB2=0"): the same kernels on the geometries the knobs force;
#   6. each mutant DIR/mutant-NAME.tar.xz (FKDA_PENDING_MUTANTS of scripts/prebuild_pending.sh):
#      the test programs' --small, which must fail ("killed"; "SURVIVED" counts as a failed step);
#   7. FKDA_PENDING_BENCH again with each level, in reverse order (A/B/A against a drift of the
#      card).
# The fla wheels, where .whl holds them (carried), go to a private site folder on PYTHONPATH, so
# that a benchmark that times fla beside ours finds it.
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

site=""
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/fkda-site .whl/*.whl >"$log/fla-install.log" 2>&1 && site=:/tmp/fkda-site ||
    echo "pending_check.sh: the wheels in .whl did not install ($log/fla-install.log)"
fi

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
      PYTHONPATH=$PWD/python$site LEVEL=$l \
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
senv=${FKDA_PENDING_SANITIZE_ENV:-}
for tool in racecheck memcheck; do
  for prog in ${FKDA_PENDING_SANITIZE_TESTS:-$tests}; do
    fits 90 "$prog $tool" || continue
    # shellcheck disable=SC2086
    env $senv LD_LIBRARY_PATH=$lib timeout $((limit - $(elapsed))) compute-sanitizer --tool $tool --error-exitcode 1 \
      "$lib/$prog" --small >"$log/$prog-$tool.log" 2>&1
    rc=$?
    [ $rc -ne 0 ] && failed=$((failed + 1))
    echo "$prog $tool${senv:+ ($senv)} (level $top) rc=$rc at $(elapsed) s: $(grep -E "SUMMARY" "$log/$prog-$tool.log" | tail -n 1)"
  done
done
IFS=';' read -ra variants <<<"${FKDA_PENDING_VARIANTS:-}"
for i in "${!variants[@]}"; do
  for prog in $tests; do
    fits 30 "$prog --small under ${variants[$i]}" || continue
    # shellcheck disable=SC2086
    env ${variants[$i]} LD_LIBRARY_PATH=$lib timeout $((limit - $(elapsed))) "$lib/$prog" --small \
      >"$log/$prog-variant-$i.log" 2>&1
    rc=$?
    [ $rc -ne 0 ] && failed=$((failed + 1))
    echo "$prog --small under ${variants[$i]} (level $top) rc=$rc at $(elapsed) s: $(tail -n 1 "$log/$prog-variant-$i.log")"
  done
done
for t in "$dir"/mutant-*.tar.xz; do
  [ -e "$t" ] || break
  name=$(basename "$t" .tar.xz | sed 's/^mutant-//')
  fits 30 "mutant $name" || continue
  mdir=/tmp/fkda-pending/mutant-$name
  scripts/unpack_prebuilt.sh "$t" "$mdir" || { echo "mutant $name: does not unpack"; failed=$((failed + 1)); continue; }
  verdict=SURVIVED
  for prog in $tests; do
    LD_LIBRARY_PATH=$mdir timeout $((limit - $(elapsed))) "$mdir/$prog" --small >"$log/mutant-$name-$prog.log" 2>&1 ||
      { verdict="killed by $prog --small: $(grep -m 1 FAIL "$log/mutant-$name-$prog.log" | cut -c1-160)"; break; }
  done
  [ "$verdict" = SURVIVED ] && failed=$((failed + 1))
  echo "mutant $name at $(elapsed) s: $verdict"
done
mapfile -t reversed < <(printf '%s\n' "${levels[@]}" | sort -rn)
run_bench 2 "${reversed[@]}"
exit "$failed"

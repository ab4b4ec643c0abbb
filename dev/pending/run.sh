#!/usr/bin/env bash
# run.sh: the device plan of dev/pending/README.md ("The next session with a device", item 0),
# one step per device call, each under the device tool's 10-minute limit:
#
#   dev/pending/run.sh 0a      the prefill GPU test programs and their sanitizers (~8 minutes)
#   dev/pending/run.sh 0a-py   pytest tests/gpu/test_prefill_options_gpu.py (~5 minutes)
#   dev/pending/run.sh 0b      the key split's bench: off and on, forced forms, multicast off and on
#   dev/pending/run.sh 0c      the key split's GPU mutants (01-03)
#   dev/pending/run.sh 0d      04's GPU mutants, then its A/B against the tree without it
#
# Run from the repository root through the device tool, carrying the fla wheel where a step
# uses fla (0a, 0a-py): run(command="dev/pending/run.sh 0a", carry=[".whl"]). The device's copy
# of the tree is fresh in every call (no git history), so each step first applies every pending
# patch in order, as the README says. Full logs go to $OUT (the tool brings them back); what is
# printed is each command's verdict lines only, since a call's output comes back as its last
# 12,000 characters. The exit status is the number of commands that failed.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 100
step=${1:?usage: dev/pending/run.sh 0a|0a-py|0b|0c|0d}
case $step in
0a | 0a-py | 0b | 0c | 0d) ;;
*) echo "unknown step $step (0a, 0a-py, 0b, 0c, 0d)"; exit 100 ;;
esac
export OUT=${OUT:-$PWD/build/gpu-out}
mkdir -p "$OUT"
# (A copy that has them already, e.g. a second step in the same copy, is left as it is: the last
# patch taken back out cleanly means all are in.)
patches=(dev/pending/0*.patch)
if git apply --reverse --check "${patches[-1]}" 2>/dev/null; then
  echo "the pending patches are applied already"
else
  for p in "${patches[@]}"; do
    git apply "$p" || { echo "!! $p does not apply"; exit 100; }
  done
  echo "applied: ${patches[*]}"
fi
failed=0

# run LOG PATTERN COMMAND...: COMMAND's output into $OUT/LOG, its lines matching PATTERN printed.
# FKDA_PENDING_DRY=1 prints the commands instead (to check this script on a machine without a GPU).
run() {
  local log=$1 pattern=$2
  shift 2
  echo "== $log: $*"
  [ "${FKDA_PENDING_DRY:-0}" = 1 ] && return 0
  "$@" >"$OUT/$log" 2>&1
  local rc=$?
  grep -E "$pattern" "$OUT/$log" | tail -n 60
  [ $rc -eq 0 ] || { echo "!! $log exited $rc (full log: \$OUT/$log)"; failed=$((failed + 1)); }
}

# The verdict lines of scripts/gpu_check.sh's steps and of the test programs.
checks='^== |!! |passed|FAIL|failed|ERROR SUMMARY|hazard|Killed|timed out'
# bench_prefill_gpu.py's and bench_prefill_options_gpu.py's result lines.
bench=' ms, fla |\] .*ours [0-9.]+ ms|^device |!! |Error|error'

# shellcheck disable=SC2317 # (called through run)
bench_prefill() { # ENV... -- ARGS...: bench_prefill_gpu.py through gpu_check (it builds and sets the paths)
  local envs=()
  while [ "$1" != -- ]; do envs+=("$1"); shift; done
  shift
  env "${envs[@]}" FKDA_NO_FLA=1 FKDA_BENCH_PREFILL_ARGS="--no-fla --profile $*" scripts/gpu_check.sh bench-prefill
}
# shellcheck disable=SC2317
bench_options() {
  local envs=()
  while [ "$1" != -- ]; do envs+=("$1"); shift; done
  shift
  env "${envs[@]}" FKDA_NO_FLA=1 FKDA_BENCH_PREFILL_OPTIONS_ARGS="--no-fla --profile $*" \
    scripts/gpu_check.sh bench-prefill-options
}

case $step in
0a)
  run 0a-programs-sanitize.log "$checks" env FKDA_STEP_TIMEOUT=280 FKDA_GPU_TESTS=prefill \
    scripts/gpu_check.sh programs sanitize ;;
0a-py)
  run 0a-pytest.log "$checks" env FKDA_STEP_TIMEOUT=280 \
    FKDA_PYTEST_ARGS="tests/gpu/test_prefill_options_gpu.py" scripts/gpu_check.sh pytest ;;
0b)
  for ks in 0 1; do
    run "0b-shapes-ks$ks.log" "$bench" bench_prefill FKDA_PREFILL_KEY_SPLIT=$ks -- \
      --shapes h32-8k,h32-1k,h32,h96,h64,h12-4x8192
    run "0b-few-heads-ks$ks.log" "$bench" bench_prefill FKDA_PREFILL_KEY_SPLIT=$ks FKDA_PREFILL_SEGMENTS=1 -- \
      --shapes h16,h8,h12
    run "0b-kimi-ks$ks.log" "$bench" bench_options FKDA_PREFILL_KEY_SPLIT=$ks -- --cases kimi
  done
  # the split with today's segments; each form forced where the other is the default
  run 0b-split-segments.log "$bench" bench_prefill FKDA_PREFILL_KEY_SPLIT=1 -- --shapes h16,h8
  run 0b-quarters-forced.log "$bench" bench_prefill FKDA_PREFILL_KEY_SPLIT=1 FKDA_PREFILL_KEY_PARTS=4 -- \
    --shapes h64,h12-4x8192
  run 0b-halves-forced.log "$bench" bench_prefill FKDA_PREFILL_KEY_PARTS=2 -- --shapes h32-8k
  # the L2 question: a time that follows the slices a head without multicast and not with it
  for mc in 0 1; do
    run "0b-vslice-mc$mc.log" "$bench|vslice ms" bench_prefill FKDA_PREFILL_KEY_MULTICAST=$mc \
      FKDA_PREFILL_KEY_SPLIT=1 -- --sweep-vslice --shapes h96,h32-8k
  done ;;
0c)
  run 0c-mutants.log 'killed|SURVIVED|INVALID|survivor' env \
    FKDA_MUTATE_PYTEST_GPU=tests/gpu/test_prefill_options_gpu.py scripts/mutate.sh cuda \
    cuda-prefill-keys-gamma cuda-prefill-keys2-sum cuda-prefill-keys-multicast-piece \
    cuda-prefill-keys-output-end cuda-prefill-keys-checkpoint-nan cuda-prefill-checkpoint-nan ;;
0d)
  run 0d-mutants.log 'killed|SURVIVED|INVALID|survivor' env \
    FKDA_MUTATE_PYTEST_GPU=tests/gpu/test_prefill_options_gpu.py scripts/mutate.sh cuda \
    cuda-prefill-prep-halved-upper cuda-prefill-prep-block-keys cuda-prefill-prep-block16-keys \
    cuda-prefill-prep-kd-tile
  # the A/B: the patch file names what to take back out (scripts/ab.sh builds both sides)
  run 0d-ab.log "== [0-9]|$bench" scripts/ab.sh dev/pending/04-prep-checked-halved.patch -- \
    python3 bench/bench_prefill_options_gpu.py --no-fla --profile --cases options ;;
esac
echo "run.sh $step: $failed failed command(s); logs in \$OUT"
exit "$failed"

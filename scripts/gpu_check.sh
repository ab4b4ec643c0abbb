#!/usr/bin/env bash
# gpu_check.sh: everything a Hopper GPU machine is for, in one call: build, test, sanitize, benchmark.
#
#   scripts/gpu_check.sh [step ...]      steps: test programs pytest sanitize fuzz variants bench-decode bench-prefill all
#
#   test           the C GPU test programs (build/gpu/test_*_cuda) and pytest tests/gpu
#   programs       only the C GPU test programs, each run $FKDA_REPEAT times (default 1; every run
#                  draws fresh seeds, so repeats catch a bar that some seeds cross, or a race)
#   pytest         only pytest, on $FKDA_PYTEST_ARGS (default tests/gpu: the whole suite, many minutes)
#   sanitize       compute-sanitizer memcheck and racecheck on each GPU test program's --small case,
#                  and (with the prefill) memcheck of our kernels on 8 cases of the option sweep
#                  through Python (torch's caching allocator off, so that every tensor is its own
#                  allocation)
#   variants       test_decode_cuda --variants: every kernel variant of src/cuda/decode_variants.h
#                  forced in turn in one process (the test sets FKDA_DECODE_VARIANT=NAME between
#                  passes) on every case it can serve, failing a variant that serves none;
#                  FKDA_VARIANTS="NAME ..." limits it to those variants. Then the default kernels
#                  without programmatic dependent launch (FKDA_DECODE_PDL=0), and compute-sanitizer
#                  memcheck and racecheck on the --small cases of a few forced variants (split-K
#                  fp32 and packed tiles, packed [V,K], narrow bf16-token tiles, the _early CU tile).
#   fuzz           build/gpu/fuzz_api_cuda: $FKDA_FUZZ_RUNS (default 2000) random calls of the C
#                  API on the GPU, valid and broken, against the CPU's float64 reference
#                  (tests/fuzz/fuzz_api.c), then 200 of them under compute-sanitizer memcheck
#   bench-decode   bench/bench_decode_gpu.py  ($FKDA_BENCH_DECODE_ARGS adds arguments)
#   bench-decode-layer  bench/bench_decode_layer_gpu.py ($FKDA_BENCH_DECODE_LAYER_ARGS, e.g. --quick),
#                  the same without the single kernel's wide tile (FKDA_DECODE_LAYER_WIDE=0: the
#                  narrow tile or the three launches), both again --quick with a bf16 pool; with
#                  FKDA_BENCH_LAYER_CLUSTERS="1 2 4 8" (or some of them) also the --quick rows with
#                  the narrow tile and each of those cluster sizes forced
#   profile-decode ncu on one decode call of ours and of fla (B=1 H=32, fp32 and bf16 pools, or
#                  $FKDA_PROFILE_CASES="fp32,64,32 ..."; "fp32,1,32,spec" or ",spec-vk" for the
#                  speculative call of bench_decode_gpu.py --spec, ",packed" for vLLM's packed
#                  form; FKDA_PROFILE_WHO=ours for ours only): speed of light, warp states, and the
#                  hottest SASS instructions by stall samples (bench/ncu_hot_sass.py), and every
#                  executed instruction with its count in $OUT/sass-WHO-CASE.tsv
#   profile-decode-layer  ncu on one call of the single-kernel decode layer (layer_*) at B,H in
#                  $FKDA_PROFILE_LAYER_CASES (default "1,32 64,32"; the library's rule picks the
#                  kernel, FKDA_DECODE_LAYER_* knobs force one; FKDA_PROFILE_LAYER_POOL=bf16 for a
#                  bf16 pool): as profile-decode, the hottest SASS
#                  by stall samples and every executed instruction in $OUT/sass-layer-B-H.tsv
#   profile-prefill  ncu on one call of the prefill's chain kernel (T = 8192 at H = 32 and H = 96,
#                  or $FKDA_PROFILE_SHAPES; $FKDA_PROFILE_KERNEL=regex:pf_prep for the prep;
#                  FKDA_PROFILE_DTYPE=fp16 or fp32: q, k, v in that dtype, the fp16 chain;
#                  FKDA_PROFILE_LOWER_BOUND=-20: the gate's lower bound, the checked prep): as
#                  profile-decode, the hottest SASS by stall samples and $OUT/sass-prefill-NAME.tsv
#                  (NAME: the shape, then -DTYPE and -lbBOUND where they are not the defaults)
#   bench-prefill  bench/bench_prefill_gpu.py ($FKDA_BENCH_PREFILL_ARGS adds arguments, e.g.
#                  "--shapes h16,h32": fla autotunes ~100 s per new shape)
#   bench-prefill-options  bench/bench_prefill_options_gpu.py ($FKDA_BENCH_PREFILL_OPTIONS_ARGS,
#                  e.g. "--cases kimi": fla autotunes each option set too)
#
# FKDA_GPU_TESTS=decode (or prefill) limits test and sanitize to that GPU test program.
# FKDA_PREBUILT=build/prebuilt.tar.xz (carried; made here by scripts/prebuild_gpu.sh) takes the
# library and test programs from that tarball instead of building them, if it was built from
# exactly these sources (scripts/source_hash.sh); otherwise the script builds as usual.
# FKDA_CALL_BUDGET=SECONDS (default 560, under the device tool's 600; 0 for none) cuts or skips the
# steps that would run past it, so that the call ends with its logs packed and its verdicts printed.
# FKDA_STEP_TIMEOUT=SECONDS stops any step that runs longer (SIGINT: pytest still reports the
# failures it has seen; a stopped step counts as failed), so that one slow step leaves time for the rest.
# fla is required by the steps that use it (test and pytest: the pytest GPU tests; bench-decode,
# bench-prefill): without it they would skip or print NaN columns and still succeed, so a missing
# fla is a failed step of its own (fla-import) and pytest fails instead of skipping
# (FKDA_REQUIRE_FLA=1, tests/gpu/conftest.py). FKDA_NO_FLA=1 runs without fla on purpose.
# The device's copy of the tree has no git history of its own: pass FKDA_COMMIT=<hash> for the results.
#
# Run it through the device tool from the repository root, carrying the fla wheel:
#   run(command="scripts/gpu_check.sh all", carry=[".whl"])
# Result tables (bench_*.md, sass-*.tsv, the Triton cache) go to $OUT (the device tool brings them
# back), else to build/gpu-out; the step logs, build.log and device.txt go to one tarball there,
# logs-TIME-PID.tar.gz, packed on exit, because the tool brings back at most 8 files a call.
# The build always runs first; a failing step is reported and the next step still runs; the exit
# status is the number of failed steps.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 100
OUT=${OUT:-$PWD/build/gpu-out}
mkdir -p "$OUT"
LOGS=$(mktemp -d /tmp/fkda-logs.XXXXXX)
trap 'tar -czf "$OUT/logs-$(date -u +%H%M%S)-$$.tar.gz" -C "$LOGS" . && rm -rf "$LOGS"' EXIT
export PYTHONUNBUFFERED=1
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(test)
[ "${steps[0]}" = all ] && steps=(test sanitize variants bench-decode bench-prefill)

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$LOGS/device.txt"
# FKDA_PREBUILT=<tarball of scripts/prebuild_gpu.sh>, carried: the library and test programs built on
# the development machine, used in place of the build when their source hash matches this copy of
# the tree (a cold build here takes minutes of the session's device time).
BIN=$PWD/build/gpu prebuilt=0
if [ -n "${FKDA_PREBUILT:-}" ]; then
  pre=/tmp/fkda-prebuilt
  scripts/unpack_prebuilt.sh "$FKDA_PREBUILT" "$pre" --this-tree
  case $? in
  1) echo "!! FKDA_PREBUILT=$FKDA_PREBUILT cannot be unpacked: building instead" ;;
  2) echo "!! FKDA_PREBUILT=$FKDA_PREBUILT was built from other sources ($(head -n 1 "$pre/BUILT")): building instead" ;;
  *)
    BIN=$pre prebuilt=1
    export LD_LIBRARY_PATH=$pre${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    sed 's/^/prebuilt: /' "$pre/BUILT" | tee -a "$LOGS/device.txt"
    # its tree's name as git gave it there (with -dirty for uncommitted changes)
    : "${FKDA_COMMIT:=$(sed -n 's/^tree //p' "$pre/BUILT") (prebuilt)}" ;;
  esac
fi
# Unset, git's answer is named with a mark: the copy may carry a stale .git (bench/commit_name.py).
export FKDA_COMMIT=${FKDA_COMMIT:-"$(git rev-parse --short HEAD 2>/dev/null || echo unknown)? (git's word; FKDA_COMMIT unset)"}
echo "commit $FKDA_COMMIT, $(date -u +%Y-%m-%d)" | tee -a "$LOGS/device.txt"

# fla (and anything else carried) goes to a private site directory.
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/fkda-site .whl/*.whl || exit 100
  export PYTHONPATH=/tmp/fkda-site${PYTHONPATH:+:$PYTHONPATH}
fi

# Triton's cache (fla's compiled kernels and, with fla's cache_results, its autotuning choices) in a
# known folder; FKDA_TRITON_CACHE=<tarball> (carried) fills it first, and the end of the run packs
# it into $OUT/triton-cache.tar.gz, to be carried into the next call: fla autotunes once per shape.
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/fkda-triton-cache}
mkdir -p "$TRITON_CACHE_DIR"
if [ -n "${FKDA_TRITON_CACHE:-}" ] && [ -f "$FKDA_TRITON_CACHE" ]; then
  tar -xzf "$FKDA_TRITON_CACHE" -C "$TRITON_CACHE_DIR" && echo "Triton cache from $FKDA_TRITON_CACHE"
fi

if [ "$prebuilt" = 0 ]; then
  echo "== build"
  scripts/clear_stale_build.sh build/gpu
  if ! { cmake -S . -B build/gpu -G Ninja -DCMAKE_BUILD_TYPE=Release >"$LOGS/build.log" 2>&1 &&
    cmake --build build/gpu -j 16 >>"$LOGS/build.log" 2>&1; }; then
    tail -n 60 "$LOGS/build.log"; exit 101
  fi
  grep -E "spill|registers" "$LOGS/build.log" | sort -u | head -n 40
else
  echo "== prebuilt (no build)"
  head -n 40 "$BIN/ptxas.txt"
fi
# The Python package loads the library just built (no pip install needed on the device).
export FLASHKDA_LIBRARY=$BIN/libflashkda.so
export PYTHONPATH=$PWD/python${PYTHONPATH:+:$PYTHONPATH}

failed=0
# words NAME: the words of the variable NAME split as the shell would split a command line, quotes
# honoured, into the array WORDS (so that FKDA_BENCH_PREFILL_OPTIONS_ARGS='--fla-rows "fp16 inputs"'
# passes one argument with a space, where an unquoted expansion would pass two pieces).
words() {
  mapfile -t WORDS < <(python3 -c 'import shlex, sys; sys.stdout.write("".join(w + "\n" for w in shlex.split(sys.argv[1])))' "${!1:-}")
}
if [ "${FKDA_NO_FLA:-0}" = 1 ]; then
  echo "FKDA_NO_FLA=1: the fla comparisons and fla-dispatch tests are skipped"
  export FKDA_REQUIRE_FLA=0
else
  export FKDA_REQUIRE_FLA=1
  for step in "${steps[@]}"; do
    case $step in
    test | pytest | bench-decode | bench-prefill | bench-prefill-options)
      echo "== fla-import"
      if ! fla_error=$(python3 -c "import fla.ops.kda" 2>&1); then
        echo "$fla_error" | tail -n 5 | tee "$LOGS/fla-import.log"
        echo "!! step fla-import failed: fla cannot be imported, and step $step needs it (carry the fla wheel:"
        echo "   carry=[\".whl\"]; or set FKDA_NO_FLA=1 to run without fla)"
        failed=$((failed + 1))
      fi
      break ;;
    esac
  done
fi
# The call's budget: the device tool kills a command at 600 s, and a kill then loses the logs'
# tarball (packed on exit) and the verdicts not yet printed. So no step runs past
# FKDA_CALL_BUDGET seconds from the script's start (default 560, leaving time to pack; 0: none):
# a step is cut at what is left, and one with less than 10 s left is skipped. Both count as
# failed steps.
budget=${FKDA_CALL_BUDGET:-560}
run_step() { # name, command...
  local name=$1; shift
  local limit=${FKDA_STEP_TIMEOUT:-}
  if [ "$budget" -gt 0 ]; then
    local left=$((budget - SECONDS))
    if [ "$left" -lt 10 ]; then
      echo "!! step $name skipped: ${SECONDS} s of the call's $budget s spent (FKDA_CALL_BUDGET)"
      failed=$((failed + 1))
      return 0
    fi
    if [ -z "$limit" ] || [ "$limit" -gt "$left" ]; then limit=$left; fi
  fi
  echo "== $name"
  if [ -n "$limit" ] && ! declare -F "$1" >/dev/null; then
    # SIGINT, not SIGTERM: pytest stops on it and still prints the failures it has seen
    # (a shell function, which timeout cannot run, applies the limit to its own command)
    timeout -s INT -k 15 "$limit" "$@" 2>&1 | tee "$LOGS/$name.log"
  else
    "$@" 2>&1 | tee "$LOGS/$name.log"
  fi
  local rc=${PIPESTATUS[0]}
  [ "$rc" -ne 0 ] && { echo "!! step $name failed ($rc)"; failed=$((failed + 1)); }
  return 0
}

for step in "${steps[@]}"; do
  case $step in
  test)
    for exe in "$BIN"/test_${FKDA_GPU_TESTS:-*}_cuda; do [ -x "$exe" ] && run_step "$(basename "$exe")" "$exe"; done
    run_step pytest-gpu python3 -m pytest -q -rs tests/gpu ;;
  programs)
    for exe in "$BIN"/test_${FKDA_GPU_TESTS:-*}_cuda; do
      [ -x "$exe" ] || continue
      for r in $(seq "${FKDA_REPEAT:-1}"); do run_step "$(basename "$exe")-$r" "$exe"; done
    done ;;
  pytest)
    # shellcheck disable=SC2086
    words FKDA_PYTEST_ARGS
    [ ${#WORDS[@]} -gt 0 ] || WORDS=(tests/gpu)
    run_step pytest-gpu python3 -m pytest -q -rs "${WORDS[@]}" ;;
  sanitize)
    for exe in "$BIN"/test_${FKDA_GPU_TESTS:-*}_cuda; do
      [ -x "$exe" ] || continue
      name=$(basename "$exe")
      run_step "$name-memcheck" compute-sanitizer --tool memcheck --error-exitcode 1 "$exe" --small
      run_step "$name-racecheck" compute-sanitizer --tool racecheck --error-exitcode 1 "$exe" --small
    done
    if [ "${FKDA_GPU_TESTS:-prefill}" = prefill ]; then
      PYTORCH_NO_CUDA_MEMORY_CACHING=1 FKDA_SWEEP_CASES=8 run_step prefill-options-memcheck \
        compute-sanitizer --tool memcheck --error-exitcode 1 --kernel-name kns=pf_ \
        python3 -m pytest -q -p no:cacheprovider tests/gpu/test_prefill_options_gpu.py -k "sweep or checkpoints_at"
    fi ;;
  fuzz)
    run_step fuzz-api "$BIN"/fuzz_api_cuda "${FKDA_FUZZ_RUNS:-2000}"
    run_step fuzz-api-memcheck compute-sanitizer --tool memcheck --error-exitcode 1 "$BIN"/fuzz_api_cuda 200 ;;
  variants)
    # shellcheck disable=SC2086
    run_step decode-variants "$BIN"/test_decode_cuda --variants ${FKDA_VARIANTS:-}
    FKDA_DECODE_PDL=0 run_step decode-no-pdl "$BIN"/test_decode_cuda
    FKDA_DECODE_PDL=0 run_step decode-layer-no-pdl "$BIN"/test_decode_layer_cuda
    sanitized_variants=(decode_f32_kv_128_ef_ks decode_bf16_kv_packed_ef_ks decode_bf16_vk_packed
                        decode_bf16_kv_128_narrow_tok decode_bf16_kv_128_ef_tok_cu_early)
    for tool in memcheck racecheck; do
      run_step decode-variants-$tool compute-sanitizer --tool $tool --error-exitcode 1 \
        "$BIN"/test_decode_cuda --small --variants "${sanitized_variants[@]}"
    done ;;
  profile-decode)
    for case in ${FKDA_PROFILE_CASES:-fp32,1,32 bf16,1,32}; do
      for who in ${FKDA_PROFILE_WHO:-ours fla}; do
        kernel=$([ "$who" = ours ] && echo regex:decode_ || echo regex:fused_recurrent)
        rep=/tmp/prof-$who-${case//,/-}
        ncu --set full -k "$kernel" --launch-skip 1 --launch-count 1 -f -o "$rep" \
          python3 bench/bench_decode_gpu.py --profile "$case" >"$rep.log" 2>&1 || tail -n 20 "$rep.log"
        run_step "profile-$who-${case//,/-}" bash -c "ncu --import $rep.ncu-rep --page details \
          --section SpeedOfLight --section LaunchStats --section Occupancy --section WarpStateStats \
          --print-details all; ncu --import $rep.ncu-rep --page source --print-source sass --csv \
          | python3 bench/ncu_hot_sass.py 40 --dump $OUT/sass-$who-${case//,/-}.tsv"
      done
    done ;;
  profile-decode-layer)
    # bench_decode_layer_gpu.py --profile runs each way twice; the second single-kernel call.
    for case in ${FKDA_PROFILE_LAYER_CASES:-1,32 64,32}; do
      rep=/tmp/prof-layer-${case//,/-}
      ncu --set full -k regex:layer_ --launch-skip 1 --launch-count 1 -f -o "$rep" \
        python3 bench/bench_decode_layer_gpu.py --profile "$case" --pool "${FKDA_PROFILE_LAYER_POOL:-fp32}" \
        >"$rep.log" 2>&1 || tail -n 20 "$rep.log"
      run_step "profile-layer-${case//,/-}" bash -c "ncu --import $rep.ncu-rep --page details \
        --section SpeedOfLight --section LaunchStats --section Occupancy --section WarpStateStats \
        --print-details all; ncu --import $rep.ncu-rep --page source --print-source sass --csv \
        | python3 bench/ncu_hot_sass.py 40 --dump $OUT/sass-layer-${case//,/-}.tsv"
    done ;;
  bench-decode)
    words FKDA_BENCH_DECODE_ARGS
    run_step bench-decode python3 bench/bench_decode_gpu.py --out "$OUT/bench_decode.md" "${WORDS[@]}" ;;
  bench-decode-layer)
    words FKDA_BENCH_DECODE_LAYER_ARGS
    run_step bench-decode-layer python3 bench/bench_decode_layer_gpu.py --out "$OUT/bench_decode_layer.md" \
      "${WORDS[@]}"
    FKDA_DECODE_LAYER_WIDE=0 run_step bench-decode-layer-narrow python3 bench/bench_decode_layer_gpu.py \
      --out "$OUT/bench_decode_layer_narrow.md" "${WORDS[@]}"
    run_step bench-decode-layer-bf16 python3 bench/bench_decode_layer_gpu.py --quick --pool bf16 \
      --out "$OUT/bench_decode_layer_bf16.md"
    FKDA_DECODE_LAYER_WIDE=0 run_step bench-decode-layer-bf16-narrow python3 bench/bench_decode_layer_gpu.py \
      --quick --pool bf16 --out "$OUT/bench_decode_layer_bf16_narrow.md"
    # (at most 8 files come back from a device call: the cluster sweep only when asked for)
    for c in ${FKDA_BENCH_LAYER_CLUSTERS:-}; do
      FKDA_DECODE_LAYER_WIDE=0 FKDA_DECODE_LAYER_CLUSTER=$c run_step "bench-decode-layer-c$c" \
        python3 bench/bench_decode_layer_gpu.py --quick --out "$OUT/bench_decode_layer_c$c.md"
    done ;;
  profile-prefill)
    # The chain kernel (or $FKDA_PROFILE_KERNEL, e.g. regex:pf_prep) on each shape of
    # $FKDA_PROFILE_SHAPES (bench_prefill_gpu.py's names): the second of three calls.
    dtype=${FKDA_PROFILE_DTYPE:-bf16} lb=${FKDA_PROFILE_LOWER_BOUND:--5}
    for shape in ${FKDA_PROFILE_SHAPES:-h32-8k h96}; do
      name=$shape
      [ "$dtype" = bf16 ] || name=$name-$dtype
      [ "$lb" = -5 ] || name=$name-lb${lb#-}
      rep=/tmp/prof-prefill-$name
      ncu --set full -k "${FKDA_PROFILE_KERNEL:-regex:pf_chain}" --launch-skip 1 --launch-count 1 -f \
        -o "$rep" python3 bench/bench_prefill_gpu.py --ncu "$shape" --ncu-dtype "$dtype" \
        --ncu-lower-bound "$lb" >"$rep.log" 2>&1 || tail -n 20 "$rep.log"
      run_step "profile-prefill-$name" bash -c "ncu --import $rep.ncu-rep --page details \
        --section SpeedOfLight --section LaunchStats --section Occupancy --section WarpStateStats \
        --print-details all; ncu --import $rep.ncu-rep --page source --print-source sass --csv \
        | python3 bench/ncu_hot_sass.py 40 --dump $OUT/sass-prefill-$name.tsv"
    done ;;
  bench-prefill)
    words FKDA_BENCH_PREFILL_ARGS
    run_step bench-prefill python3 bench/bench_prefill_gpu.py --out "$OUT/bench_prefill.md" "${WORDS[@]}" ;;
  bench-prefill-options)
    words FKDA_BENCH_PREFILL_OPTIONS_ARGS
    run_step bench-prefill-options python3 bench/bench_prefill_options_gpu.py --out "$OUT/bench_prefill_options.md" \
      "${WORDS[@]}" ;;
  *) echo "unknown step $step"; failed=$((failed + 1)) ;;
  esac
done
if [ -n "${FKDA_TRITON_CACHE:-}" ]; then
  # The device tool brings back files of at most 16 MiB. Past that, only the autotuning choices
  # (*.autotune.json, a few KB): the next call then compiles fla's chosen configurations (seconds)
  # instead of timing every configuration of every kernel (a minute or more per shape).
  tar -czf "$OUT/triton-cache.tar.gz" -C "$TRITON_CACHE_DIR" .
  if [ "$(stat -c %s "$OUT/triton-cache.tar.gz")" -gt $((15 * 1024 * 1024)) ]; then
    (cd "$TRITON_CACHE_DIR" && find . -name '*.autotune.json' -print0 | tar -czf "$OUT/triton-cache.tar.gz" --null -T -)
    echo "Triton cache over 15 MiB: packed its autotuning choices only"
  fi
  ls -l "$OUT/triton-cache.tar.gz"
fi
echo "== done: $failed failed step(s)"
exit $failed

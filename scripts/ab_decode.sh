#!/usr/bin/env bash
# ab_decode.sh: the decode of this tree timed against a baseline, alternately in one device call
# (baseline, this, baseline, this), so that both run on the same card: scripts/ab.sh with the
# decode benchmark's sweep as its command.
#
#   scripts/ab_decode.sh BASE
#
# BASE is what scripts/ab.sh takes: a whole source tree of the baseline (any commit whose public C
# API this tree's Python package can load), kept under an ignored path such as build-ab/ and
# carried, or a patch file to take back out of this tree. E.g. from the repository root:
#   rm -rf build-ab/base && mkdir -p build-ab/base && git archive 8bd0caa | tar -x -C build-ab/base
#   run(command="scripts/ab_decode.sh build-ab/base", carry=[".whl", "build-ab"])
# this tree's bench/bench_decode_gpu.py --sweep-only runs with each library in turn, with the
# sweep's cases and columns from the environment (FKDA_BENCH_SWEEP_CASES, FKDA_BENCH_SWEEP_CONFIGS,
# FKDA_BENCH_SWEEP_CUSTOM; a knob one tree does not know is ignored there, e.g. FKDA_DECODE_VARIANT
# before it existed). Each table goes to $OUT/ab-N-WHO.md, the build logs to $OUT/ab-build.log.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
base=${1:?usage: scripts/ab_decode.sh BASE}
# The run fails if the benchmark does; the filter that keeps the table's rows never does.
# shellcheck disable=SC2016 # expanded by the inner shell, once per run
exec scripts/ab.sh "$base" -- bash -c 'set -o pipefail; python3 bench/bench_decode_gpu.py --sweep-only --out "$OUT/ab-$AB_RUN.md" |
  { grep -E "^\| (fp32|bf16|pool) " | grep -v "^| pool | B | H | state"; true; }'

#!/usr/bin/env bash
# run_tests.sh: every test that runs without a GPU, on a fresh clone.
#
#   1. installs the Python package into a private virtual environment (build/venv); this builds
#      libflashkda with the CUDA backend when nvcc is found, exactly as a user's `pip install .`
#   2. style: ruff over the Python sources (its rules are in pyproject.toml) and clang-format over
#      the C and CUDA sources (.clang-format), both as checks that change nothing; and every
#      planted bug of scripts/mutate.sh still finds the code it targets, and every kernel change
#      waiting in dev/pending still applies (and leaves every mutant its snippet), and so does
#      every probe patch of dev/cuda
#   3. the C tests (ctest) in a Release build, which also compiles the GPU test programs
#   4. the C tests again under AddressSanitizer and UndefinedBehaviorSanitizer (CPU backend)
#   5. the Python tests (pytest) against the installed package, torch's included
# The C builds here treat warnings as errors (FKDA_WERROR); a user's build does not.
#
# GPU tests run on a machine with a GPU through scripts/gpu_check.sh instead.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc 2>/dev/null || echo 2)

echo "== python package (build/venv)"
python3 -m venv build/venv
build/venv/bin/python -m pip install -q --upgrade pip
# The torch extra is for tests/python/test_torch_cpu.py: PyPI's default torch wheel, which brings
# its CUDA libraries (about 2.5 GB to download, 5.4 GB installed, a minute or two); PyPI has no
# CPU-only build under another name. The Python tests below require it (FKDA_REQUIRE_TORCH).
build/venv/bin/python -m pip install -q ".[test,torch]"

echo "== style (ruff, clang-format, mutants' snippets)"
build/venv/bin/ruff check .
git ls-files '*.c' '*.h' '*.cu' '*.cuh' | xargs -r clang-format --dry-run --Werror
# Every planted bug of scripts/mutate.sh must still find its snippet, exactly once: a change to
# the code a mutant targets updates the mutant with it, so the suite's strength stays checkable.
scripts/mutate.sh list >/dev/null || { scripts/mutate.sh list | grep "NOT FOUND"; exit 1; }
# The kernel changes waiting for a GPU (dev/pending) must still apply, in order, to this tree: a
# change to the files they touch rebases them in the same commit, or they rot unseen. With all of
# them applied the mutants must still find their snippets too, so that landing one cannot break
# the check above (a patch that moves code a mutant targets moves the mutant with it).
if compgen -G "dev/pending/0*.patch" >/dev/null; then
    pending_tree=$(mktemp -d)
    git ls-files -z | tar --null -T - -cf - | tar -xf - -C "$pending_tree"
    for p in dev/pending/0*.patch; do
        (cd "$pending_tree" && git apply "$OLDPWD/$p") || { echo "$p no longer applies"; exit 1; }
    done
    "$pending_tree/scripts/mutate.sh" list >/dev/null || {
        "$pending_tree/scripts/mutate.sh" list | grep "NOT FOUND"
        echo "with dev/pending applied, a mutant no longer finds its snippet"
        rm -rf "$pending_tree"
        exit 1
    }
    rm -rf "$pending_tree"
fi
# The probes' patches (dev/cuda/*.patch, e.g. the layer's stamps) must apply to this tree too: a
# probe that no longer applies costs the device call that needed it.
for p in dev/cuda/*.patch; do
    [ -e "$p" ] || continue
    git apply --check "$p" || { echo "$p no longer applies to this tree (rebase it with the change)"; exit 1; }
done

echo "== C tests, Release"
cmake -S . -B build/test -DCMAKE_BUILD_TYPE=Release -DFKDA_WERROR=ON >/dev/null
cmake --build build/test -j "$jobs"
ctest --test-dir build/test --output-on-failure

echo "== C tests, AddressSanitizer + UndefinedBehaviorSanitizer"
cmake -S . -B build/asan -DCMAKE_BUILD_TYPE=Debug -DFKDA_SANITIZE=ON -DFKDA_WITH_CUDA=OFF -DFKDA_WERROR=ON >/dev/null
cmake --build build/asan -j "$jobs"
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 ctest --test-dir build/asan --output-on-failure

echo "== Python tests"
# torch and ml_dtypes are installed above: their tests must run, not skip (tests/python/conftest.py).
(cd build && FKDA_REQUIRE_TORCH=1 FKDA_REQUIRE_ML_DTYPES=1 venv/bin/python -m pytest -q ../tests/python)
echo "== all tests passed"

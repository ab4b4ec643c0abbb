#!/usr/bin/env bash
# check_install.sh: installs the built library into a temporary prefix, builds C programs against it
# with pkg-config, and runs them without LD_LIBRARY_PATH; the .pc file's -Wl,-rpath is what lets
# them find libflashkda, so the test fails if that is missing.
#
#   check_install.sh CMAKE BUILD_DIR SOURCE_DIR LIBDIR C_COMPILER
# Exits 77 (a skip for ctest) when pkg-config is not installed.
set -euo pipefail
cmake_bin=$1 build_dir=$2 source_dir=$3 libdir=$4 cc=$5

if ! command -v pkg-config >/dev/null; then
    echo "check_install: pkg-config not found, skipping"
    exit 77
fi
prefix=$(mktemp -d "${TMPDIR:-/tmp}/flashkda-install.XXXXXX")
trap 'rm -rf "$prefix"' EXIT

"$cmake_bin" --install "$build_dir" --prefix "$prefix" >/dev/null
flags=$(PKG_CONFIG_PATH="$prefix/$libdir/pkgconfig" pkg-config --cflags --libs flashkda)
echo "pkg-config --cflags --libs flashkda: $flags"
case "$flags" in
    *"$prefix"*) ;;
    *) echo "check_install: the flags do not point into the install prefix $prefix"; exit 1 ;;
esac

# shellcheck disable=SC2086  # the flags are several words
"$cc" "$source_dir/tests/install/install_check.c" $flags -o "$prefix/install_check"
env -u LD_LIBRARY_PATH "$prefix/install_check"
# The program must have loaded the installed copy, not one from the build tree.
# ldd's output is taken whole before it is searched: under pipefail, `ldd | grep -q` fails at random
# when grep stops reading at its first match and ldd dies of SIGPIPE on the lines after it.
if command -v ldd >/dev/null; then
    resolved=$(env -u LD_LIBRARY_PATH ldd "$prefix/install_check")
    grep -q "libflashkda.* => $prefix/" <<<"$resolved" || {
        echo "check_install: install_check did not resolve libflashkda inside $prefix"
        echo "$resolved"
        exit 1
    }
fi

# The example a user starts from, when the repository has it: it must build the same way.
if [ -f "$source_dir/examples/prefill.c" ]; then
    # shellcheck disable=SC2086
    "$cc" "$source_dir/examples/prefill.c" $flags -lm -o "$prefix/prefill_example"
    echo "check_install: examples/prefill.c builds against the installed library"
fi
echo "check_install: ok"

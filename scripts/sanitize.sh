#!/usr/bin/env bash
# Builds fusedrnn._core with AddressSanitizer and UndefinedBehaviorSanitizer and runs the test
# suite against that build; any report fails the run. See scripts/README.md.
#
#   scripts/sanitize.sh [pytest arguments]       e.g. scripts/sanitize.sh -x tests/test_fuzz.py
#
# Environment: PYTHON (default python3; needs numpy, pytest, pybind11, scipy-openblas32, cmake,
# ninja, and hypothesis/torch for the tests that use them), CXX (default c++), BUILD_DIR
# (default build/sanitize).
set -euo pipefail
cd "$(dirname "$0")/.."

python="${PYTHON:-python3}"
cxx="${CXX:-c++}"
build="${BUILD_DIR:-build/sanitize}"
# float-cast-overflow is undefined behaviour in C++ but not part of GCC's -fsanitize=undefined.
sanitizers="-fsanitize=address,undefined,float-cast-overflow -fno-sanitize-recover=all"

cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_COMPILER="$cxx" -DPython_EXECUTABLE="$("$python" -c 'import sys; print(sys.executable)')" \
  -Dpybind11_DIR="$("$python" -c 'import pybind11; print(pybind11.get_cmake_dir())')" \
  -DCMAKE_CXX_FLAGS="$sanitizers -fno-omit-frame-pointer" \
  -DCMAKE_MODULE_LINKER_FLAGS="$sanitizers" >/dev/null
cmake --build "$build" -j "${JOBS:-2}"

# The package from the source tree with the sanitized extension in it, outside the tree so that
# a developer's own build in python/fusedrnn stays as it is.
pkg="$(mktemp -d)"
trap 'rm -rf "$pkg"' EXIT
cp -r python/fusedrnn "$pkg/"
rm -f "$pkg"/fusedrnn/_core*.so
cp "$build"/_core*.so "$pkg/fusedrnn/"

# Only the test run gets the sanitizer environment (LeakSanitizer would, for one, flag mktemp).
# The interpreter is not instrumented, so the ASan runtime must be loaded before anything else;
# libstdc++ too: ASan's wrapper of __cxa_throw looks the real one up when it starts, and the
# interpreter does not load libstdc++ until the extension is imported (else the first C++
# exception aborts the process). CPython keeps its interned objects and module state alive at
# exit by design: leak detection would report those, not ours. PYTHONMALLOC=malloc sends
# Python's small objects through malloc, where ASan sees them (numpy's array data goes there
# already).
sanitized=(env
  LD_PRELOAD="$("$cxx" -print-file-name=libasan.so) $("$cxx" -print-file-name=libstdc++.so)"
  ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=1:strict_string_checks=1:check_initialization_order=1:detect_stack_use_after_return=1"
  UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:abort_on_error=1"
  PYTHONMALLOC=malloc
  PYTHONPATH="$pkg${PYTHONPATH:+:$PYTHONPATH}")
"${sanitized[@]}" "$python" -c 'import fusedrnn, sys; assert fusedrnn._core is not None, fusedrnn.CORE_ERROR; print("sanitized build:", fusedrnn._core.__file__, file=sys.stderr)'
# Every kind of report stops the process (halt_on_error, -fno-sanitize-recover), so a clean exit
# means no reports. --capture=sys leaves file descriptor 2 alone: the sanitizers write their
# report there, and pytest's default capture would swallow it along with the process.
"${sanitized[@]}" "$python" -m pytest -p no:cacheprovider --capture=sys -q "$@"
echo "sanitizer reports: none" >&2

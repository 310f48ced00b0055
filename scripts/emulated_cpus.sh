#!/usr/bin/env bash
# The installed fusedrnn on x86-64 CPUs older than this one, emulated by qemu-x86_64's user mode:
# it runs this machine's Python and wheels, reports only the named CPU's features to them, and
# stops at the first instruction that CPU lacks. Nehalem has SSE4.2 and no AVX (NumPy 2 needs
# SSE4.2); Sandy Bridge has AVX and neither AVX2 nor FMA. Each must get the portable recurrent
# kernel and the baseline pointwise rows, and pass, against the NumPy reference, the kernel tests
# that meet every panel, tile and stacking edge, and the extremes (NaN and Inf, 10,000 steps,
# saturated gates). Arguments go to pytest, in place of that selection.
set -euo pipefail
# qemu-x86_64 opens its program by the path it is given, without searching PATH: the venv's
# python, by its own path (not the interpreter its symlink leads to, which has no fusedrnn).
python=$(command -v "${PYTHON:-python}")
python="$(cd "$(dirname "$python")" && pwd)/$(basename "$python")"
cd "$(dirname "$0")/.."
selection=(tests/test_kernels.py tests/test_extremes.py
           -k "panel_edges or odd_sizes or stacking or extremes")
[ "$#" -gt 0 ] && selection=("$@")

# qemu warns of the features of a CPU model that it does not emulate and that no program in user
# mode can see (x2apic, tsc-deadline). OPENBLAS_CORETYPE goes: it holds OpenBLAS (NumPy's and
# fusedrnn's) to a named kernel rather than the one the CPU's features pick: on a machine whose
# environment names Haswell's (a Zen 5 of ours), NumPy's import faulted on Nehalem.
on_cpu() {
  env -u OPENBLAS_CORETYPE qemu-x86_64 -cpu "$cpu" "$@" \
    2> >(grep --line-buffered -v -E "requested feature: CPUID.01H:ECX.(x2apic|tsc-deadline)" >&2)
}

# What NumPy sees of each CPU (its run-time dispatch reads CPUID as fusedrnn's does), then what
# fusedrnn picks.
declare -A expected_features=(
  [Nehalem]="SSE42 True AVX False AVX2 False FMA3 False AVX512F False"
  [SandyBridge]="SSE42 True AVX True AVX2 False FMA3 False AVX512F False")
for cpu in Nehalem SandyBridge; do
  echo "+ qemu-x86_64 -cpu $cpu"
  features=$(on_cpu "$python" -c "from numpy._core._multiarray_umath import __cpu_features__ as f
print(' '.join(f'{k} {f[k]}' for k in ('SSE42', 'AVX', 'AVX2', 'FMA3', 'AVX512F')))") ||
    { echo "$cpu: python did not run under qemu" >&2; exit 1; }
  [ "$features" = "${expected_features[$cpu]}" ] ||
    { echo "$cpu: qemu showed $features" >&2; exit 1; }
  picked=$(on_cpu "$python" -c "import fusedrnn._core as c
i = c.build_info(); print(i['recurrent_kernel'] + ' | ' + i['simd'] + ' | ' + i['blas'])")
  echo "$features; $picked"
  case "$picked" in
    "portable | sse2 (x86-64 baseline) | "*) ;;
    *) echo "$cpu: expected the portable kernel and the sse2 rows" >&2; exit 1 ;;
  esac
  on_cpu "$python" -m pytest -q -p no:cacheprovider "${selection[@]}"
done

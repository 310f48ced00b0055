#!/usr/bin/env bash
# The installed fusedrnn on x86-64 CPUs older than this one, emulated by qemu-x86_64's user mode:
# it runs this machine's Python and wheels, reports only the named CPU's features to them, and
# stops at the first instruction that CPU lacks. Nehalem has SSE4.2 and no AVX (NumPy 2 needs
# SSE4.2); Sandy Bridge has AVX and neither AVX2 nor FMA. Each must get the portable recurrent
# kernel and the baseline pointwise rows, and pass, against the NumPy reference, the kernel tests
# that meet every panel, tile and stacking edge, and the extremes (NaN and Inf, 10,000 steps,
# saturated gates). Arguments go to pytest, in place of that selection.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python}
selection=(tests/test_kernels.py tests/test_extremes.py -k "odd_sizes or stacking or extremes")
[ "$#" -gt 0 ] && selection=("$@")

# qemu warns of each feature of the CPU model it does not emulate (x2apic, tsc-deadline...),
# which no user-mode program can see.
on_cpu() { qemu-x86_64 -cpu "$cpu" "$@" 2> >(grep -v "TCG doesn't support requested feature" >&2); }

for cpu in Nehalem SandyBridge; do
  echo "+ qemu-x86_64 -cpu $cpu"
  picked=$(on_cpu "$python" -c "import fusedrnn._core as c
i = c.build_info(); print(i['recurrent_kernel'] + ' | ' + i['simd'] + ' | ' + i['blas'])")
  echo "$picked"
  case "$picked" in
    "portable | sse2 (x86-64 baseline) | "*) ;;
    *) echo "$cpu: expected the portable kernel and the sse2 rows" >&2; exit 1 ;;
  esac
  on_cpu "$python" -m pytest -q -p no:cacheprovider "${selection[@]}"
done

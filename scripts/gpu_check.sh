#!/usr/bin/env bash
# The GPU checks, for a machine with an NVIDIA GPU, nvcc, torch with CUDA and CuPy but no package
# registry (CI has no GPU): build the wheel with the CUDA backend for the GPU present, install it,
# run the tests that use the GPU, time `fusedrnn bench --device cuda --quick` against torch.nn on
# cuDNN, and run the compute-sanitizer tests last (the slowest). The wheel, logs and the
# benchmark's JSON go to $OUT (default ./gpu_out). scipy-openblas32, which the CPU kernels link,
# is installed from .whl/ when it is there (pip download it beside the checkout first).
set -uo pipefail
out="${OUT:-gpu_out}"
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps .whl/*.whl || exit 1
fi
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv |
  tee "$out/gpu.txt"
arch="$(python3 -c "import torch; print('%d%d' % torch.cuda.get_device_capability())")" || exit 1

start=$SECONDS
if ! CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" FUSEDRNN_CUDA=ON python3 -m pip wheel -q \
    --no-build-isolation --no-deps -w "$out" \
    -C cmake.define.FUSEDRNN_CUDA_ARCHITECTURES="$arch" . >"$out/build.log" 2>&1; then
  tail -40 "$out/build.log"
  exit 1
fi
python3 -m pip install -q --no-index --no-deps --force-reinstall "$out"/fusedrnn-*.whl || exit 1
echo "built and installed for sm_$arch in $((SECONDS - start)) s"
# The console script may land off PATH (pip as root into another prefix); the module does not.
cli=(python3 -c "from fusedrnn.cli import main; raise SystemExit(main())")
"${cli[@]}" info

# The tests that use the GPU: the backend's own, and the torch and JAX bindings on device arrays.
# -p no:benchmark: pytest-benchmark warns under xdist, and pyproject.toml makes warnings errors.
timeout 200 python3 -m pytest tests/test_cuda.py tests/test_torch_module.py tests/test_jax.py \
  -q -ra -p no:cacheprovider -p no:benchmark -n 8 -k "not sanitizer" 2>&1 |
  tee "$out/test_gpu.log" | tail -30
timeout 150 "${cli[@]}" bench --device cuda --quick --json "$out/bench_cuda.json" 2>&1 | tee "$out/bench_cuda.log"
timeout 100 python3 -m pytest tests/test_cuda.py -q -ra -p no:cacheprovider -k sanitizer 2>&1 |
  tee "$out/sanitizer.log" | tail -15

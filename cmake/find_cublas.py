"""Prints the include directory and library file of the nvidia-cublas wheel that this Python
sees, one per line (with --root: the folder holding both, for FUSEDRNN_CUBLAS_ROOT); exits 1
when there is none. Used by cmake/cuda.cmake and .ci/run."""

import importlib.metadata
import sys

try:
    files = importlib.metadata.files("nvidia-cublas") or []
except importlib.metadata.PackageNotFoundError:
    sys.exit(1)
include = library = None
for f in files:
    if f.name == "cublas_v2.h":
        include = f.locate().parent
    elif f.name.startswith("libcublas.so"):  # libcublas.so.13, not libcublasLt
        library = f.locate()
if include is None or library is None:
    sys.exit(1)
if sys.argv[1:] == ["--root"]:
    print(include.parent)
else:
    print(include)
    print(library)

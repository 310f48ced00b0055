"""What every example's command line shares (--quick, --seed, --threads) and the BLAS thread
limit it runs under."""

import argparse
import contextlib

import fusedrnn as fr


def parser(doc):
    """An ArgumentParser described by the first line of the example's docstring."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a shorter run (well under a minute)")
    p.add_argument("--seed", type=int, default=0, help="seeds parameters, dropout and batches")
    p.add_argument("--threads", type=int, default=1,
                   help="threads for fusedrnn's kernels and NumPy's BLAS (default 1)")
    return p


@contextlib.contextmanager
def blas_threads(threads):
    """A context that runs fusedrnn's kernels, and NumPy's BLAS, on `threads` threads, and
    restores both when it ends (a test that runs an example in its process goes on with the
    threads it had). The examples' models are small: one thread is fastest for their matrix
    products, and NumPy's BLAS threads, which wait on each other, are many times slower while
    other programs share the cores. threadpoolctl (installed with fusedrnn[examples]) limits
    NumPy's BLAS."""
    kernels = "cpu" in fr.backends()
    before = fr.get_num_threads() if kernels else None
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        limit = contextlib.nullcontext()
    else:
        limit = threadpool_limits(threads, user_api="blas")
    try:
        if kernels:
            fr.set_num_threads(threads)
        with limit:
            yield
    finally:
        if kernels:
            fr.set_num_threads(before)

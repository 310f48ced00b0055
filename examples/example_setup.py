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


def blas_threads(threads):
    """A context that runs fusedrnn's kernels, and NumPy's BLAS, on `threads` threads. The
    examples' models are small: one thread is fastest for their matrix products, and NumPy's
    BLAS threads, which wait on each other, are many times slower while other programs share the
    cores. fusedrnn's threads are set for the process; threadpoolctl (installed with
    fusedrnn[examples]) limits NumPy's BLAS and restores it afterwards."""
    if "cpu" in fr.backends():
        fr.set_num_threads(threads)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(threads, user_api="blas")

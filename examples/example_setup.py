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
    p.add_argument("--threads", type=int, default=1, help="BLAS threads (default 1)")
    return p


def blas_threads(threads):
    """A context that runs the BLAS behind fusedrnn's kernels, and NumPy's own, on `threads`
    threads. The examples' models are small: one thread is fastest for their matrix products,
    and several that wait on each other while other programs share the cores are many times
    slower. threadpoolctl (installed with fusedrnn[examples]) limits both libraries and restores
    them afterwards; without it only fusedrnn's is set, and left so."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        if "cpu" in fr.backends():
            fr.set_num_threads(threads)
        return contextlib.nullcontext()
    return threadpool_limits(threads, user_api="blas")

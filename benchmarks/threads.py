"""Two Python threads running forward+backward on two models against the same work done one
after the other, for 1 kernel thread per call and for the default. Prints the median wall times.

    python benchmarks/threads.py [--repeats 7]

The kernels release the GIL, so with one kernel thread per call two threads on two cores should
take about half the serial time. With the default, the first caller takes fusedrnn's threads and
a caller that finds them busy runs on its own thread (see csrc/thread_pool.h)."""

import argparse
import statistics
import threading
import time

import numpy as np

import fusedrnn as fr


def step(model, x):
    y, state, tape = model.forward(x, training=True)
    model.backward(tape, np.ones_like(y))


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7)
    opts = p.parse_args()
    rng = np.random.default_rng(0)
    models = [fr.LSTM(64, 128, seed=i) for i in range(2)]
    xs = [rng.uniform(-1, 1, (100, 16, 64)).astype(np.float32) for _ in range(2)]
    default = fr._core.build_info()["threads"]

    def serial():
        for m, x in zip(models, xs):
            step(m, x)

    def concurrent():
        threads = [threading.Thread(target=step, args=(m, x)) for m, x in zip(models, xs)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    for threads in sorted({1, default}):
        fr.set_num_threads(threads)
        serial()  # warm-up
        s, c = timed(serial, opts.repeats), timed(concurrent, opts.repeats)
        print(f"kernel threads {threads}: serial {s * 1e3:.1f} ms, two threads "
              f"{c * 1e3:.1f} ms, speed-up {s / c:.2f}x")
    fr.set_num_threads(default)


if __name__ == "__main__":
    main()

"""ops_cpu.py — CPU micro-benchmarks of pipec against NumPy, measured in the same run.

  1. float32 GEMM, 1024 x 1024 @ 1024 x 1024: pipec.mm vs NumPy `@` (median of repeats after
     a warm-up; GFLOP/s and the time ratio pipec / NumPy). Both go through an OpenBLAS, so the
     ratio mostly shows the binding's overhead and the BLAS build each links.
  2. Per-call overhead of pipec.add on 16-element float32 tensors vs NumPy `np.add` on
     16-element arrays (timeit, best-of-repeats median; microseconds per call).

Every row carries a correctness column: the max relative difference from NumPy's result.

Usage: python bench/ops_cpu.py [--repeats N] [--size N]
"""
import argparse
import statistics
import time
import timeit

import numpy as np

import pipec


def bench_mm(n, repeats):
    g = np.random.default_rng(0)
    a = g.standard_normal((n, n)).astype(np.float32)
    b = g.standard_normal((n, n)).astype(np.float32)
    ta, tb = pipec.from_numpy(a), pipec.from_numpy(b)

    def run_np():
        return a @ b

    def run_pc():
        return pipec.mm(ta, tb)

    for fn in (run_np, run_pc):  # warm-up: thread pools, page faults
        fn()
        fn()
    t_np, t_pc = [], []
    for _ in range(repeats):  # interleave so both see the same machine state
        t0 = time.perf_counter()
        ref = run_np()
        t1 = time.perf_counter()
        out = run_pc()
        t2 = time.perf_counter()
        t_np.append(t1 - t0)
        t_pc.append(t2 - t1)
    ref64 = a.astype(np.float64) @ b.astype(np.float64)
    scale = np.abs(ref64).max()
    err_pc = float(np.abs(out.numpy() - ref64).max() / scale)
    err_np = float(np.abs(ref - ref64).max() / scale)
    flops = 2.0 * n ** 3
    m_np, m_pc = statistics.median(t_np), statistics.median(t_pc)
    return [
        (f"mm f32 {n}x{n}", "numpy @", m_np * 1e3, "ms", flops / m_np / 1e9, 1.0, err_np),
        (f"mm f32 {n}x{n}", "pipec.mm", m_pc * 1e3, "ms", flops / m_pc / 1e9, m_pc / m_np, err_pc),
    ]


def bench_add_overhead(repeats):
    a = np.arange(16, dtype=np.float32)
    b = np.ones(16, dtype=np.float32)
    ta, tb = pipec.from_numpy(a), pipec.from_numpy(b)
    number = 20000

    def per_call(stmt):
        times = timeit.repeat(stmt, number=number, repeat=repeats)
        return statistics.median(times) / number

    us_np = per_call(lambda: np.add(a, b)) * 1e6
    us_pc = per_call(lambda: pipec.add(ta, tb)) * 1e6
    us_op = per_call(lambda: ta + tb) * 1e6
    ref = a + b
    err = float(np.abs(pipec.add(ta, tb).numpy() - ref).max())
    err_op = float(np.abs((ta + tb).numpy() - ref).max())
    return [
        ("add 16 elem", "numpy np.add", us_np, "us/op", None, 1.0, 0.0),
        ("add 16 elem", "pipec.add", us_pc, "us/op", None, us_pc / us_np, err),
        ("add 16 elem", "pipec a + b", us_op, "us/op", None, us_op / us_np, err_op),
    ]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--size", type=int, default=1024)
    args = ap.parse_args()

    rows = bench_mm(args.size, args.repeats) + bench_add_overhead(args.repeats)
    print(f"pipec {getattr(pipec, '__version__', '?')} vs NumPy {np.__version__}; "
          f"medians of {args.repeats} repeats after warm-up")
    head = f"{'benchmark':<16} {'impl':<14} {'time':>10} {'unit':<6} {'GFLOP/s':>8} " \
           f"{'ratio':>7} {'max rel err':>12}"
    print(head)
    print("-" * len(head))
    for name, impl, t, unit, gflops, ratio, err in rows:
        gf = f"{gflops:8.1f}" if gflops is not None else f"{'':>8}"
        print(f"{name:<16} {impl:<14} {t:10.3f} {unit:<6} {gf} {ratio:7.2f} {err:12.2e}")
    print("ratio = time / NumPy's time (lower is better); error vs a float64 (mm) or NumPy "
          "float32 (add) reference")


if __name__ == "__main__":
    main()

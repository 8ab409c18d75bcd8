"""bench/ops_cuda.py — pipec's CUDA kernels against torch on one GPU, in one process.

Sections (each row: pipec and torch times, their ratio, and a correctness column):
  1. GEMM at 8192^3, 128x4096x4096 and 64x1024x1024 (m x k x n) in float32, TF32 and
     bfloat16: median milliseconds, TFLOP/s, pipec/torch time ratio, max relative error of
     pipec's result against torch's.
  2. Elementwise add, mul, relu on 64M float32 elements: achieved GB/s (bytes read + written)
     against torch's same op and torch's copy_ bandwidth (the practical memory ceiling).
  3. Python overhead per small op (4-element tensors): host microseconds per call.

Timing: device events on each library's own current stream after warm-up; every number is the
median over `--trials` trials of the mean over `--reps` back-to-back calls. Inputs are created
once by torch and shared with pipec through DLPack, so both compute on identical data.

Usage: python3 bench/ops_cuda.py [--trials 9] [--reps 10] [--quick] [--out FILE]
"""
import argparse
import statistics
import sys
import time

import numpy as np

import pipec
import pipec.nn.functional as F


def _from_torch(t):
    fn = getattr(pipec, "from_dlpack", None) or pipec._C._from_dlpack
    return fn(t)


def _to_numpy(x):
    """float64 host copy of a pipec or torch tensor."""
    if isinstance(x, pipec.Tensor):
        return x.detach().cpu().to(pipec.float64).numpy()
    return x.detach().double().cpu().numpy()


def time_pipec(fn, reps, trials, warmup=3):
    for _ in range(warmup):
        fn()
    pipec.cuda.synchronize()
    out = []
    for _ in range(trials):
        start = pipec.cuda.Event(enable_timing=True)
        end = pipec.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        end.synchronize()
        out.append(start.elapsed_time(end) / reps)
    return statistics.median(out)


def time_torch(torch, fn, reps, trials, warmup=3):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(trials):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        end.synchronize()
        out.append(start.elapsed_time(end) / reps)
    return statistics.median(out)


class Table:
    def __init__(self, title, columns, out):
        self.columns = columns
        self.out = out
        self.rows = []
        self._print(f"\n== {title} ==")
        self._print("  ".join(f"{c:>14}" for c in columns))

    def _print(self, s):
        print(s, flush=True)
        if self.out:
            self.out.write(s + "\n")
            self.out.flush()

    def row(self, *vals):
        cells = []
        for v in vals:
            if isinstance(v, float):
                cells.append(f"{v:>14.4g}")
            else:
                cells.append(f"{str(v):>14}")
        self._print("  ".join(cells))
        self.rows.append(vals)


def bench_gemm(torch, args, out):
    shapes = [(8192, 8192, 8192), (128, 4096, 4096), (64, 1024, 1024)]
    if args.quick:
        shapes = [(2048, 2048, 2048), (128, 4096, 4096), (64, 1024, 1024)]
    modes = [("float32", torch.float32, False), ("tf32", torch.float32, True),
             ("bfloat16", torch.bfloat16, False)]
    tab = Table("GEMM C = A @ B (m x k) @ (k x n)",
                ["mode", "m x k x n", "pipec ms", "torch ms", "ratio p/t", "pipec TF/s",
                 "torch TF/s", "max rel err", "ok"], out)
    for name, tdt, tf32 in modes:
        torch.backends.cuda.matmul.allow_tf32 = tf32
        pipec.backends.cuda.matmul.allow_tf32 = tf32
        for m, k, n in shapes:
            ta = torch.randn(m, k, device="cuda").to(tdt)
            tb = torch.randn(k, n, device="cuda").to(tdt)
            pa, pb = _from_torch(ta), _from_torch(tb)
            flops = 2.0 * m * n * k
            reps = max(1, min(args.reps, int(2e13 / flops)))
            tp = time_pipec(lambda: pa @ pb, reps, args.trials)
            tt = time_torch(torch, lambda: ta @ tb, reps, args.trials)
            ref = _to_numpy(ta @ tb)
            got = _to_numpy(pa @ pb)
            err = float(np.max(np.abs(got - ref)) / max(np.max(np.abs(ref)), 1e-30))
            limit = {"float32": 1e-4, "tf32": 5e-3, "bfloat16": 2e-2}[name]
            tab.row(name, f"{m}x{k}x{n}", tp, tt, tp / tt, flops / tp / 1e9, flops / tt / 1e9,
                    err, "yes" if err <= limit else "NO")
            del ta, tb, pa, pb
    torch.backends.cuda.matmul.allow_tf32 = False
    pipec.backends.cuda.matmul.allow_tf32 = False


def bench_elementwise(torch, args, out):
    n = (16 if args.quick else 64) << 20
    ta = torch.randn(n, device="cuda")
    tb = torch.randn(n, device="cuda")
    tdst = torch.empty(n, device="cuda")
    pa, pb = _from_torch(ta), _from_torch(tb)
    tab = Table(f"elementwise on {n >> 20}M float32 (GB/s = bytes read + written / time)",
                ["op", "pipec ms", "torch ms", "ratio p/t", "pipec GB/s", "torch GB/s",
                 "copy GB/s", "max abs err", "ok"], out)
    nbytes = 4.0 * n
    tcopy = time_torch(torch, lambda: tdst.copy_(ta), args.reps, args.trials)
    copy_bw = 2 * nbytes / tcopy / 1e6
    ops = [
        ("add", 3, lambda: pa + pb, lambda: ta + tb),
        ("mul", 3, lambda: pa * pb, lambda: ta * tb),
        ("relu", 2, lambda: F.relu(pa), lambda: torch.relu(ta)),
        ("add_scalar", 2, lambda: pa + 1.5, lambda: ta + 1.5),
        ("bias_bcast", 3, lambda: pa.view(-1, 1024) + pb[:1024], lambda: ta.view(-1, 1024) + tb[:1024]),
    ]
    for name, passes, pf, tf in ops:
        tp = time_pipec(pf, args.reps, args.trials)
        tt = time_torch(torch, tf, args.reps, args.trials)
        err = float(np.max(np.abs(_to_numpy(pf()) - _to_numpy(tf()))))
        tab.row(name, tp, tt, tp / tt, passes * nbytes / tp / 1e6, passes * nbytes / tt / 1e6,
                copy_bw, err, "yes" if err <= 1e-6 else "NO")


def bench_overhead(torch, args, out):
    iters = 2000 if args.quick else 20000
    tab = Table("Python overhead per small op (4 elements, host time per call)",
                ["op", "pipec us", "torch us", "ratio p/t"], out)
    pa = pipec.ones(4, device="cuda")
    pb = pipec.ones(4, device="cuda")
    pm = pipec.ones(4, 4, device="cuda")
    ta = torch.ones(4, device="cuda")
    tb = torch.ones(4, device="cuda")
    tm = torch.ones(4, 4, device="cuda")
    cases = [
        ("a + b", lambda: pa + pb, lambda: ta + tb),
        ("a * 2", lambda: pa * 2.0, lambda: ta * 2.0),
        ("relu", lambda: F.relu(pa), lambda: torch.relu(ta)),
        ("mm 4x4", lambda: pm @ pm, lambda: tm @ tm),
        ("sum", lambda: pa.sum(), lambda: ta.sum()),
    ]

    def host_time(fn, sync):
        for _ in range(100):
            fn()
        sync()
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        t1 = time.perf_counter()
        sync()
        return (t1 - t0) / iters * 1e6

    for name, pf, tf in cases:
        up = statistics.median(host_time(pf, pipec.cuda.synchronize) for _ in range(3))
        ut = statistics.median(host_time(tf, torch.cuda.synchronize) for _ in range(3))
        tab.row(name, up, ut, up / ut)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=9)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="smaller sizes (smoke test)")
    ap.add_argument("--out", default=None, help="also write the tables to this file")
    args = ap.parse_args(argv)
    if not pipec.cuda.is_available():
        print("bench/ops_cuda.py: no CUDA device (pipec.cuda.is_available() is False)")
        return 0
    try:
        import torch
    except ImportError:
        print("bench/ops_cuda.py: torch is not importable; the reference is missing")
        return 1
    if not torch.cuda.is_available():
        print("bench/ops_cuda.py: torch sees no CUDA device")
        return 1
    out = open(args.out, "w") if args.out else None
    try:
        dev = pipec.cuda.get_device_name()
        line = f"device: {dev}; pipec {pipec.__version__}; torch {torch.__version__}"
        print(line)
        if out:
            out.write(line + "\n")
        bench_gemm(torch, args, out)
        bench_elementwise(torch, args, out)
        bench_overhead(torch, args, out)
    finally:
        if out:
            out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

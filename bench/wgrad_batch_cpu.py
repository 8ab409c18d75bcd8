"""Weight-gradient batching on CPU: LocalPipeline step time with it off and on.

    OPENBLAS_NUM_THREADS=1 python bench/wgrad_batch_cpu.py [--d 1024] [--batch 256]

A MultiMLP of 4 layers split in two stages, 1F1B over 2 CPU ranks, for 8 and 32
microbatches: steps alternate between batching off (0) and on (1024 rows), and each prints
the median of 7 timed steps after one warm-up step per setting, plus the largest relative
difference between the two settings' gradients of the last step.
"""
import argparse
import copy
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import pipec  # noqa: E402
from pipec import nn  # noqa: E402
from pipec.pipelining import (LocalPipeline, SplitPoint, pipeline,  # noqa: E402
                              set_weight_grad_batching)
from model_registry import MultiMLP  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--d", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=256)
    args = ap.parse_args()
    d, batch = args.d, args.batch
    before = set_weight_grad_batching(0)
    for n_mb in (8, 32):
        pipec.manual_seed(0)
        base = MultiMLP(d, n_layers=4)
        x, y = pipec.randn(batch, d), pipec.randn(batch, d)
        loss_fn = nn.MSELoss(reduction="sum")
        runs = {}
        for rows in (0, 1024):
            m = copy.deepcopy(base)
            pipe = pipeline(m, (x[:batch // n_mb],),
                            split_spec={"layers.2": SplitPoint.BEGINNING})
            runs[rows] = (m, LocalPipeline(pipe, "1F1B", n_mb, ["cpu", "cpu"],
                                           loss_fn=loss_fn, scale_grads=False))
        times = {0: [], 1024: []}
        for rep in range(8):
            for rows, (m, lp) in runs.items():
                set_weight_grad_batching(rows)
                m.zero_grad()
                t0 = time.perf_counter()
                lp.step(x, target=y, return_outputs=False)
                if rep:
                    times[rows].append((time.perf_counter() - t0) * 1e3)
        grads = {rows: dict(m.named_parameters()) for rows, (m, _) in runs.items()}
        err = max(float(np.abs(grads[1024][k].grad.numpy() - p.grad.numpy()).max() /
                        max(np.abs(p.grad.numpy()).max(), 1e-30))
                  for k, p in grads[0].items())
        print(f"d={d} batch={batch} n_microbatches={n_mb}: off "
              f"{statistics.median(times[0]):.1f} ms, on {statistics.median(times[1024]):.1f} "
              f"ms, max rel diff of grads {err:.1e}", flush=True)
    set_weight_grad_batching(before)


if __name__ == "__main__":
    main()

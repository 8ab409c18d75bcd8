"""Train the model zoo's MultiMLP on a small synthetic regression task, on CPU.

The task: inputs x ~ N(0, 1) in R^d and targets y = tanh(x @ A) for a fixed random A with
N(0, 1/d) entries.
The same initial model is trained twice, with SGD (momentum and weight decay) and with
AdamW, on the same minibatches. A progress bar shows each run; the last line sums both up:

    train_mlp: MultiMLP(d_hid=32, n_layers=2) 300 steps x 64 | SGD 0.3891 -> 0.1059 (3.7x) | ...

Exits with status 1 if either run fails to halve its full-data loss.

    python examples/train_mlp.py [--steps 300] [--d-hid 32] [--layers 2] [--batch 64]
"""
import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np

import pipec
from pipec import nn, optim

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from model_registry import MultiMLP  # noqa: E402  (the zoo lives with the tests)


def make_data(n, d, seed):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((d, d)) / np.sqrt(d)
    x = rng.standard_normal((n, d))
    y = np.tanh(x @ a)
    return x.astype(np.float32), y.astype(np.float32)


class Progress:
    """A one-line progress bar on a terminal; a few plain lines otherwise."""

    def __init__(self, total, label, enabled=True, width=30):
        self.total, self.label, self.width = total, label, width
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.next_mark = 0

    def update(self, done, loss):
        if not self.enabled:
            return
        frac = done / self.total
        if not self.tty:
            if frac < self.next_mark and done != self.total:
                return
            self.next_mark += 0.25
        filled = int(self.width * frac)
        bar = "#" * filled + "." * (self.width - filled)
        line = f"{self.label:<6} [{bar}] {done:>5}/{self.total} loss {loss:.4f}"
        if self.tty:
            sys.stderr.write("\r" + line)
            if done == self.total:
                sys.stderr.write("\n")
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()


def full_loss(model, x, y):
    with pipec.no_grad():
        return float(nn.functional.mse_loss(model(pipec.tensor(x)), pipec.tensor(y)).item())


def train(model, opt, x, y, steps, batch, seed, progress):
    """steps minibatch updates; x, y are NumPy arrays, sampled without replacement."""
    loss_fn = nn.MSELoss()
    rng = np.random.default_rng(seed)
    n = x.shape[0]
    for step in range(1, steps + 1):
        idx = rng.choice(n, size=batch, replace=False)
        xb, yb = pipec.tensor(x[idx]), pipec.tensor(y[idx])
        opt.zero_grad()
        loss = loss_fn(model(xb), yb)
        loss.backward()
        opt.step()
        progress.update(step, float(loss.item()))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--d-hid", type=int, default=32)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--samples", type=int, default=2048)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)

    pipec.manual_seed(args.seed)
    x, y = make_data(args.samples, args.d_hid, args.seed)
    initial = MultiMLP(args.d_hid, n_layers=args.layers)
    runs = {
        "SGD": lambda params: optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4),
        "AdamW": lambda params: optim.AdamW(params, lr=3e-3, weight_decay=1e-2),
    }
    results = {}
    t0 = time.perf_counter()
    for name, make_opt in runs.items():
        model = copy.deepcopy(initial)
        opt = make_opt(model.parameters())
        before = full_loss(model, x, y)
        train(model, opt, x, y, args.steps, args.batch, args.seed + 1,
              Progress(args.steps, name, enabled=not args.no_progress))
        results[name] = (before, full_loss(model, x, y))
    elapsed = time.perf_counter() - t0

    parts = [f"{name} {b:.4f} -> {a:.4f} ({b / max(a, 1e-12):.1f}x)"
             for name, (b, a) in results.items()]
    print(f"train_mlp: MultiMLP(d_hid={args.d_hid}, n_layers={args.layers}) "
          f"{args.steps} steps x {args.batch} | " + " | ".join(parts) + f" | {elapsed:.1f} s")
    ok = all(after < 0.5 * before for before, after in results.values())
    if not ok:
        print("train_mlp: the loss did not fall by half", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

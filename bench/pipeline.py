"""Pipeline step time: pipec LocalPipeline (one process, one host thread per GPU) on the
configs of shared/bench/torch_baseline_2xH200.md, next to torch measured in the same job.

Run on a machine with 2 GPUs:  python3 bench/pipeline.py [--configs small,large] [--out FILE]
On one GPU, ``--devices cuda:0,cuda:0`` runs both ranks on the same GPU: not a pipeline
speed-up, but a measure of each schedule's overhead, since every schedule then does the same
work on one device and the step time should approach the GPU busy time.

For every config and schedule: median / min / max step time over timed steps (after warm-up,
host-timed around a full step including device sync; every step starts with .grad set to
None, as torch_baseline.py's does), peak memory per GPU, and a correctness
column: the pipelined losses and gradients of the first step against an unpipelined pipec
run of the same model (max relative error). torch's single-GPU step (whole model, full
batch) is measured in the same process when torch is importable; torch.distributed.pipelining
numbers (torchrun, 2 processes) are read from shared/bench/torch_baseline_2xH200.md when
present (run shared/bench/torch_baseline.py with torchrun to refresh them).
"""

import argparse
import copy
import gc
import os
import re
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

import numpy as np  # noqa: E402

import pipec  # noqa: E402
from pipec import nn  # noqa: E402
from pipec.pipelining import LocalPipeline, pipeline  # noqa: E402
from model_registry import MultiMLP  # noqa: E402

from _common import CONFIGS, MULTI, SCHEDULES  # noqa: E402


def torch_baseline_table(path):
    """{(config, schedule): median_ms} parsed from the torch baseline markdown."""
    out = {}
    if not os.path.exists(path):
        return out
    cfg = None
    for line in open(path):
        m = re.match(r"### (\w+):", line)
        if m:
            cfg = m.group(1)
            continue
        m = re.match(r"\| ([\w ()]+?) \| ([\d.]+) \|", line)
        if cfg and m:
            out[(cfg, m.group(1).strip())] = float(m.group(2))
    return out


def sync_all(devices):
    for d in sorted(set(devices)):
        pipec.cuda.synchronize(d)


def torch_single_gpu(cfg, steps):
    try:
        import torch
    except ImportError:
        return None
    dt = torch.bfloat16 if cfg["dtype"] == "bfloat16" else torch.float32
    d, L = cfg["d_hid"], cfg["layers"]
    layers = []
    for _ in range(L):
        layers += [torch.nn.Linear(d, d), torch.nn.ReLU(), torch.nn.Linear(d, d)]
    model = torch.nn.Sequential(*layers).to("cuda:0", dt)
    x = torch.randn(cfg["batch"], d, device="cuda:0", dtype=dt)
    y = torch.randn(cfg["batch"], d, device="cuda:0", dtype=dt)
    loss_fn = torch.nn.MSELoss(reduction="sum")
    times = []
    for i in range(steps + 3):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        model.zero_grad()  # set to None, as torch_baseline.py's step does
        loss_fn(model(x), y).backward()
        torch.cuda.synchronize()
        if i >= 3:
            times.append((time.perf_counter() - t0) * 1e3)
    del model
    torch.cuda.empty_cache()
    return statistics.median(times)


def pipec_single_gpu(model, x, y, loss_fn, steps):
    times = []
    for i in range(steps + 3):
        sync_all(["cuda:0"])
        t0 = time.perf_counter()
        model.zero_grad()  # set to None, as torch_baseline.py's step does
        loss_fn(model(x), y).backward()
        sync_all(["cuda:0"])
        if i >= 3:
            times.append((time.perf_counter() - t0) * 1e3)
    model.zero_grad()
    return statistics.median(times)


def rel_err(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def busy_ms(timeline, ranks_of_device):
    """GPU busy time per device (ms): the union of the recorded action intervals of the
    ranks that run on it; [(device, ms)]."""
    out = []
    for dev, ranks in ranks_of_device.items():
        iv = sorted((s, e) for r, _, s, e in timeline if r in ranks)
        total, end = 0.0, float("-inf")
        for s, e in iv:
            if s > end:
                total += e - s
                end = e
            elif e > end:
                total += e - end
                end = e
        out.append((dev, total / 1e3))
    return out


def run_config(name, cfg, schedules, steps, devices, baseline, out_lines):
    dt = pipec.bfloat16 if cfg["dtype"] == "bfloat16" else pipec.float32
    d, n_mb = cfg["d_hid"], cfg["n_mb"]
    pipec.manual_seed(0)
    base = MultiMLP(d, n_layers=cfg["layers"]).to("cuda:0", dt)
    x = pipec.randn(cfg["batch"], d, device="cuda:0", dtype=dt)
    y = pipec.randn(cfg["batch"], d, device="cuda:0", dtype=dt)
    loss_fn = nn.MSELoss(reduction="sum")

    single = pipec_single_gpu(base, x, y, loss_fn, steps)
    t_single = torch_single_gpu(cfg, steps)
    # reference gradients for the correctness column: per-microbatch losses, summed grads
    mb = cfg["batch"] // n_mb
    ref_losses = []
    for m in range(n_mb):
        ls = loss_fn(base(x[m * mb:(m + 1) * mb]), y[m * mb:(m + 1) * mb])
        ls.backward()
        ref_losses.append(ls.float().item())
    ref_grads = {k: p.grad.float().numpy() for k, p in base.named_parameters()}
    base.zero_grad()
    # the schedules' models are copies of this one: kept on the host, it does not count in
    # their peak memory
    base.to("cpu")

    out_lines.append(f"\n### {name}: d_hid={d}, batch={cfg['batch']}, n_microbatches={n_mb}, "
                     f"layers={cfg['layers']}, {cfg['dtype']}\n")
    out_lines.append("| schedule | pipec median ms | min | max | GPU busy ms | peak MiB | "
                     "torch pipelining ms | pipec/torch | correct (max rel err) |")
    out_lines.append("|---|---|---|---|---|---|---|---|---|")
    ts = f"{t_single:.2f}" if t_single else "n/a"
    out_lines.append(f"| single GPU, no pipeline | {single:.2f} | | | | | torch {ts} | "
                     f"{(single / t_single) if t_single else float('nan'):.2f} | |")
    print("\n".join(out_lines[-4:]), flush=True)
    for sched in schedules:
        model = copy.deepcopy(base).to(devices[0])
        pipe = pipeline(model, (x[:mb],), split_spec={
            f"layers.{i}": pipec.pipelining.SplitPoint.BEGINNING
            for i in range(cfg["layers"] // (4 if sched in MULTI else 2),
                           cfg["layers"], cfg["layers"] // (4 if sched in MULTI else 2))})
        try:
            lp = LocalPipeline(pipe, sched, n_mb, devices, loss_fn=loss_fn, scale_grads=False)
        except ValueError as e:
            out_lines.append(f"| {sched} | not run: {e} | | | | | | | |")
            continue
        losses = []
        lp.step(x, target=y, losses=losses)
        sync_all(devices)
        got = {k: p.grad.float().cpu().numpy() for k, p in model.named_parameters()}
        err = max(rel_err(got[k], ref_grads[k]) for k in ref_grads)
        err = max(err, rel_err([l.float().item() for l in losses], ref_losses))
        for g in sorted(set(devices)):
            pipec.cuda.reset_peak_memory_stats(g)
        times = []
        for i in range(steps + 2):
            sync_all(devices)
            t0 = time.perf_counter()
            model.zero_grad()  # a training step's grads start from None, as in torch_baseline.py
            lp.step(x, target=y, return_outputs=False)
            sync_all(devices)
            if i >= 2:
                times.append((time.perf_counter() - t0) * 1e3)
        gpus = sorted(set(devices))
        peaks = "/".join(f"{pipec.cuda.max_memory_allocated(g) / 2**20:.0f}" for g in gpus)
        model.zero_grad()
        lp.step(x, target=y, return_outputs=False, record_timeline=True)
        sync_all(devices)
        busy = "/".join(f"{ms:.1f}" for _, ms in busy_ms(
            lp.timeline(), {g: {r for r, d in enumerate(devices) if d == g} for g in gpus}))
        med = statistics.median(times)
        tb = baseline.get((name, sched))
        ratio = f"{med / tb:.2f}" if tb else "n/a"
        out_lines.append(f"| {sched} | {med:.2f} | {min(times):.2f} | {max(times):.2f} | "
                         f"{busy} | {peaks} | {tb if tb else 'n/a'} | {ratio} | {err:.1e} |")
        print(out_lines[-1], flush=True)
        del lp, pipe, model
        gc.collect()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", default="small,large,large_bf16,large_mb32")
    ap.add_argument("--schedules", default=",".join(SCHEDULES))
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--out", default=None)
    ap.add_argument("--devices", default="cuda:0,cuda:1",
                    help="one device per rank; cuda:0,cuda:0 measures schedule overhead on "
                         "one GPU")
    ap.add_argument("--wgrad-batch-rows", type=int, default=None,
                    help="pipec.pipelining.set_weight_grad_batching(N) (0: off; default: "
                         "pipec's default)")
    args = ap.parse_args()
    if args.wgrad_batch_rows is not None:
        pipec.pipelining.set_weight_grad_batching(args.wgrad_batch_rows)
    devices = args.devices.split(",")
    n = pipec.cuda.device_count()
    if n <= max(int(d.split(":")[1]) for d in devices):
        sys.exit(f"bench/pipeline.py --devices {args.devices}: found {n} GPU(s)")
    baseline = {}
    for cand in (os.path.join(HERE, "..", "shared", "bench", "torch_baseline_2xH200.md"),
                 os.path.join(HERE, "results", "torch_baseline_2xH200.md")):
        baseline = torch_baseline_table(cand)
        if baseline:
            break
    if len(set(devices)) < len(devices):  # ranks share a GPU: no pipeline to compare
        baseline = {}
        lines = [f"# pipec LocalPipeline, ranks on {','.join(devices)}: schedule overhead", "",
                 "Every schedule does the same work on one GPU here, so the step time should "
                 "match the GPU busy time (the union of the actions' CUDA-event intervals). "
                 "Correctness: max relative error of first-step losses and gradients against "
                 "an unpipelined pipec run."]
    else:
        lines = ["# pipec LocalPipeline vs torch.distributed.pipelining, 2 GPUs", "",
                 "torch pipelining column: shared/bench/torch_baseline_2xH200.md (torchrun, 2 "
                 "processes, H200). Correctness: max relative error of first-step losses and "
                 "gradients against an unpipelined pipec run."]
    rows = pipec.pipelining.get_weight_grad_batching()
    lines += ["", "Weight-gradient batching: " + (
        "auto (1024 rows on ranks without W actions, off on zero-bubble ranks)." if rows == "auto"
        else f"{rows} rows" + (" (off)." if rows == 0 else "."))]
    for name in args.configs.split(","):
        run_config(name, CONFIGS[name], args.schedules.split(","), args.steps, devices,
                   baseline, lines)
        gc.collect()
        pipec.cuda.empty_cache()
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

"""Multi-process pipeline benchmark: pipec and torch.distributed.pipelining side by side.

One job runs both, one process per GPU each: pipec through ``python -m pipec.run`` (NCCL
communicator in C) and torch through ``torchrun`` (ProcessGroupNCCL), on the configs of
shared/bench/torch_baseline_2xH200.md and the seven schedules, and writes one table:

    python3 bench/pipeline_mp.py [--configs small,large,large_bf16,large_mb32]
                                 [--schedules GPipe,...] [--steps 10] [--nproc 2]
                                 [--out bench/results/pipeline_mp_2xH200.md]

Both sides build the same model (``layers`` MLP blocks of Linear-ReLU-Linear, d_hid wide,
cut into world x stages-per-rank stages; loop placement, V placement for ZBV/DualPipeV),
use MSE (mean) loss, zero the gradients in every step, and are timed the same way: after 2
warm-up steps, each timed step starts after a barrier and a device sync and ends with a
device sync; the median, min and max over --steps steps are reported, with each rank's
peak allocated memory. Correctness (pipec): after its first step, every rank compares the
gradients of its stages and the last rank the per-microbatch losses with an unpipelined
pipec run of the same model (max relative error over ranks).

``--device cpu`` runs the pipec side on CPU processes over TCP (a smoke test of the script;
add ``--configs tiny``); the torch side is skipped when torch is not importable.
"""

import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _common import CONFIGS, SCHEDULES, launch, report  # noqa: E402
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
from gpu_share import share_gpus_for_nccl  # noqa: E402

STAGES_PER_RANK = {"GPipe": 1, "1F1B": 1}
V_STYLE = {"ZBVZeroBubble", "DualPipeV"}
CLASS_NAME = {"GPipe": "ScheduleGPipe", "1F1B": "Schedule1F1B",
              "Interleaved1F1B": "ScheduleInterleaved1F1B", "LoopedBFS": "ScheduleLoopedBFS",
              "InterleavedZeroBubble": "ScheduleInterleavedZeroBubble",
              "ZBVZeroBubble": "ScheduleZBVZeroBubble", "DualPipeV": "ScheduleDualPipeV"}
WARMUP = 2


def stage_ids(sched, rank, world):
    spr = STAGES_PER_RANK.get(sched, 2)
    if sched in V_STYLE:
        return world * spr, [rank, 2 * world - 1 - rank]
    return world * spr, [rank + i * world for i in range(spr)]


def emit(rank, **kw):
    if rank == 0:
        print("RESULT " + json.dumps(kw), flush=True)


# ---- pipec worker ----

def pipec_worker(args):
    import pipec
    import pipec.distributed as dist
    from pipec import nn
    from pipec import pipelining as P

    class Block(nn.Module):
        """The zoo's MLPModule (Linear-ReLU-Linear), made on the device: initialising
        8192-wide layers on the host would dominate the benchmark's run time."""

        def __init__(self, d, dt):
            super().__init__()
            self.net1 = nn.Linear(d, d, device=dev, dtype=dt)
            self.relu = nn.ReLU()
            self.net2 = nn.Linear(d, d, device=dev, dtype=dt)

        def forward(self, h):
            return self.net2(self.relu(self.net1(h)))

    cuda = args.device == "cuda"
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        local = share_gpus_for_nccl(local, int(os.environ["LOCAL_WORLD_SIZE"]),
                                    pipec.cuda.device_count())
        pipec.cuda.set_device(local)
    dev = f"cuda:{local}" if cuda else "cpu"
    dist.init_process_group("nccl" if cuda else "tcp", timeout=600)
    rank, world = dist.get_rank(), dist.get_world_size()

    def sync():
        if cuda:
            pipec.cuda.synchronize(local)

    def gather(value):
        out = []
        for r in range(world):
            obj = [value]
            dist.broadcast_object_list(obj, src=r)
            out.append(obj[0])
        return out

    def layer(i, d, dt):
        pipec.manual_seed(1000 + i)
        return Block(d, dt)

    def rel_err(a, b):
        a, b = a.float(), b.float()
        den = float(b.abs().max().item())
        return float((a - b).abs().max().item()) / max(den, 1e-30)

    for name in args.configs.split(","):
        cfg = CONFIGS[name]
        d, n_mb, L = cfg["d_hid"], cfg["n_mb"], cfg["layers"]
        dt = pipec.bfloat16 if cfg["dtype"] == "bfloat16" else pipec.float32
        pipec.manual_seed(7)
        x = pipec.randn(cfg["batch"], d).to(dev, dt)
        tgt = pipec.randn(cfg["batch"], d).to(dev, dt)
        loss_fn = nn.MSELoss()
        # the unpipelined reference, once per config: per-microbatch losses and gradients
        full = [layer(i, d, dt) for i in range(L)]
        ref_losses = []
        for m, (xm, tm) in enumerate(zip(pipec.tensor_split(x, n_mb, 0),
                                         pipec.tensor_split(tgt, n_mb, 0))):
            h = xm
            for blk in full:
                h = blk(h)
            loss = loss_fn(h, tm)
            loss.backward()
            ref_losses.append(loss.detach())
        # kept on the host, so the timed steps' peak memory holds only what torch's holds
        ref_grads = {i: [(p.grad * (1.0 / n_mb)).cpu() for p in blk.parameters()]
                     for i, blk in enumerate(full)}
        del full
        for sched in args.schedules.split(","):
            n_stages, ids = stage_ids(sched, rank, world)
            if L % n_stages:
                emit(rank, side="pipec", config=name, sched=sched, error="layers % stages")
                continue
            per = L // n_stages
            mods = {s: nn.Sequential(*[layer(s * per + j, d, dt) for j in range(per)])
                    for s in ids}
            try:
                stages = [P.PipelineStage(mods[s], s, n_stages, dev) for s in ids]
                cls = getattr(P, CLASS_NAME[sched])
                sch = cls(stages[0] if len(stages) == 1 else stages, n_mb, loss_fn=loss_fn)
            except ValueError as e:
                emit(rank, side="pipec", config=name, sched=sched, error=str(e)[:200])
                continue
            first, last = 0 in ids, n_stages - 1 in ids

            def step(losses=None):
                for m in mods.values():
                    m.zero_grad()
                kw = {"target": tgt, "losses": losses if losses is not None else []} \
                    if last else {}
                sch.step(*((x,) if first else ()), **kw)

            losses = []
            step(losses)
            sync()
            err = 0.0
            for s in ids:
                for j, blk in enumerate(mods[s]):
                    for p, r in zip(blk.parameters(), ref_grads[s * per + j]):
                        err = max(err, rel_err(p.grad, r.to(dev)))
            if last:
                for a, b in zip(losses, ref_losses):
                    err = max(err, rel_err(a, b))
            errs = gather(err)
            for _ in range(WARMUP - 1):
                step()
            if cuda:
                pipec.cuda.reset_peak_memory_stats(local)
            times = []
            for _ in range(args.steps):
                dist.barrier()
                sync()
                t0 = time.perf_counter()
                step()
                sync()
                times.append((time.perf_counter() - t0) * 1e3)
            peak = pipec.cuda.max_memory_allocated(local) / 2**20 if cuda else 0.0
            peaks = gather(round(peak))
            # one more step with this rank's timeline (GPU times from CUDA events): its
            # bubble = 1 - busy / the step's span over all ranks
            sch.record_timeline = True
            dist.barrier()
            step()
            sync()
            sch.record_timeline = False
            ev = sch.timeline()
            spans = gather((min(e[2] for e in ev), max(e[3] for e in ev),
                            sum(e[3] - e[2] for e in ev)) if ev else None)
            bubble = None
            if all(spans):
                # each rank's clock starts at its own step start: compare busy to span
                bubble = statistics.mean(1.0 - b / max(t1 - t0, 1e-9) for t0, t1, b in spans)
            emit(rank, side="pipec", config=name, sched=sched, ms=statistics.median(times),
                 min_ms=min(times), max_ms=max(times), peak_MiB=peaks, err=max(errs),
                 bubble=bubble)
            del sch, stages, mods
            if cuda:
                pipec.cuda.empty_cache()
        del ref_grads, ref_losses
    dist.barrier()
    dist.destroy_process_group()


# ---- torch worker ----

def torch_worker(args):
    import torch
    import torch.distributed as dist
    from torch.distributed import pipelining as P

    local = share_gpus_for_nccl(int(os.environ.get("LOCAL_RANK", "0")),
                                int(os.environ["LOCAL_WORLD_SIZE"]), torch.cuda.device_count())
    dev = torch.device("cuda", local)
    torch.cuda.set_device(dev)
    dist.init_process_group("nccl")
    rank, world = dist.get_rank(), dist.get_world_size()

    class Block(torch.nn.Module):
        def __init__(self, d):
            super().__init__()
            self.net1 = torch.nn.Linear(d, d)
            self.relu = torch.nn.ReLU()
            self.net2 = torch.nn.Linear(d, d)

        def forward(self, h):
            return self.net2(self.relu(self.net1(h)))

    for name in args.configs.split(","):
        cfg = CONFIGS[name]
        d, n_mb, L = cfg["d_hid"], cfg["n_mb"], cfg["layers"]
        dt = torch.bfloat16 if cfg["dtype"] == "bfloat16" else torch.float32
        torch.manual_seed(7)
        x = torch.randn(cfg["batch"], d, device=dev, dtype=dt)
        tgt = torch.randn(cfg["batch"], d, device=dev, dtype=dt)
        loss_fn = torch.nn.MSELoss()
        for sched in args.schedules.split(","):
            n_stages, ids = stage_ids(sched, rank, world)
            if L % n_stages:
                continue
            per = L // n_stages
            mods = {}
            for s in ids:
                torch.manual_seed(1000 + s)
                mods[s] = torch.nn.Sequential(*[Block(d) for _ in range(per)]).to(dev, dt)
            try:
                stages = [P.PipelineStage(mods[s], s, n_stages, dev) for s in ids]
                cls = getattr(P, CLASS_NAME[sched])
                sch = cls(stages[0] if len(stages) == 1 else stages, n_microbatches=n_mb,
                          loss_fn=loss_fn)
            except Exception as e:  # a schedule this torch does not have or allow
                emit(rank, side="torch", config=name, sched=sched, error=repr(e)[:200])
                continue
            first, last = 0 in ids, n_stages - 1 in ids

            def step():
                for m in mods.values():
                    m.zero_grad(set_to_none=True)
                kw = {"target": tgt, "losses": []} if last else {}
                sch.step(*((x,) if first else ()), **kw)

            for _ in range(WARMUP):
                step()
            torch.cuda.reset_peak_memory_stats(dev)
            times = []
            for _ in range(args.steps):
                dist.barrier()
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                step()
                torch.cuda.synchronize()
                times.append((time.perf_counter() - t0) * 1e3)
            peaks = [None] * world
            dist.all_gather_object(peaks, round(torch.cuda.max_memory_allocated(dev) / 2**20))
            emit(rank, side="torch", config=name, sched=sched, ms=statistics.median(times),
                 min_ms=min(times), max_ms=max(times), peak_MiB=peaks)
            del sch, stages, mods
            torch.cuda.empty_cache()
    dist.barrier()
    dist.destroy_process_group()


# ---- driver ----

def _gpu_count():
    try:
        import pipec
        return pipec.cuda.device_count() if pipec.cuda.is_available() else 0
    except Exception:  # noqa: BLE001 - a build without CUDA
        return 0


def run_side(side, args):
    """Launch one side's job; returns its RESULT records."""
    return launch(side, args.nproc, [
        os.path.abspath(__file__), "--worker", side, "--configs", args.configs, "--schedules",
        args.schedules, "--steps", str(args.steps), "--device", args.device], 29600)


def table(pipec_res, torch_res, args):
    key = lambda r: (r["config"], r["sched"])  # noqa: E731
    tres = {key(r): r for r in torch_res}
    lines = [f"# pipec vs torch.distributed.pipelining, {args.nproc} processes "
             f"(one per GPU), same job", ""]
    n_gpus = _gpu_count() if args.device == "cuda" else 0
    if 0 < n_gpus < args.nproc:
        lines = [f"# pipec vs torch.distributed.pipelining, {args.nproc} processes sharing "
                 f"{n_gpus} GPU(s), same job", "",
                 "**The ranks share GPUs and talk over NCCL's socket transport "
                 "(tests/gpu_share.py): this checks the scripts and pipec's correctness; "
                 "the step times are not a benchmark.**", ""]
    lines += [
             "Step time in ms (median over timed steps; min-max), peak allocated MiB per "
             "rank, pipec/torch ratio of medians, and pipec's correctness: max relative "
             "error of its first step's gradients and losses against an unpipelined run.",
             "", "pipec's weight-gradient batching (PIPEC_WGRAD_BATCH_ROWS, inherited by the "
             f"ranks): {os.environ.get('PIPEC_WGRAD_BATCH_ROWS') or 'auto (the default: 1024 rows on ranks without W actions)'}."]
    for name in args.configs.split(","):
        c = CONFIGS[name]
        lines += ["", f"### {name}: d_hid={c['d_hid']}, batch={c['batch']}, "
                      f"n_microbatches={c['n_mb']}, layers={c['layers']}, {c['dtype']}", "",
                  "| schedule | pipec ms | pipec min-max | pipec peak MiB | pipec bubble | "
                  "torch ms | torch min-max | torch peak MiB | pipec/torch | "
                  "correct (max rel err) |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in pipec_res:
            if r["config"] != name:
                continue
            t = tres.get(key(r), {})
            if "error" in r:
                lines.append(f"| {r['sched']} | not run: {r['error']} | | | | | | | | |")
                continue
            tms = t.get("ms")
            ratio = f"{r['ms'] / tms:.2f}" if tms else "n/a"
            tcell = f"{tms:.2f}" if tms else t.get("error", "n/a")
            trange = f"{t['min_ms']:.2f}-{t['max_ms']:.2f}" if tms else ""
            tpeak = "/".join(map(str, t.get("peak_MiB", []))) if tms else ""
            bub = f"{r['bubble']:.2f}" if r.get("bubble") is not None else "n/a"
            lines.append(f"| {r['sched']} | {r['ms']:.2f} | {r['min_ms']:.2f}-{r['max_ms']:.2f}"
                         f" | {'/'.join(map(str, r['peak_MiB']))} | {bub} | {tcell} | "
                         f"{trange} | {tpeak} | {ratio} | {r['err']:.1e} |")
    return "\n".join(lines) + "\n"


def scaling(args):
    """pipec alone at several process counts: samples/s per GPU against the first count."""
    counts = [int(c) for c in args.scaling.split(",")]
    res = {}
    for n in counts:
        args.nproc = n
        res[n] = {(r["config"], r["sched"]): r for r in run_side("pipec", args)
                  if "ms" in r}
    lines = [f"# pipec scaling over {', '.join(map(str, counts))} GPUs (one process each)", "",
             "Samples/s per GPU = batch / step time / GPUs; relative to "
             f"{counts[0]} GPUs. Bubble: mean over ranks of 1 - busy/step span (timeline).",
             "", "| config | schedule | " +
             " | ".join(f"{n} GPUs ms / bubble / rel" for n in counts) + " |",
             "|---|---|" + "---|" * len(counts)]
    for name in args.configs.split(","):
        for sched in args.schedules.split(","):
            base = res[counts[0]].get((name, sched))
            cells = []
            for n in counts:
                r = res[n].get((name, sched))
                if not r:
                    cells.append("n/a")
                    continue
                tput = CONFIGS[name]["batch"] / r["ms"] / n
                rel = tput / (CONFIGS[name]["batch"] / base["ms"] / counts[0]) if base else 0
                bub = f"{r['bubble']:.2f}" if r.get("bubble") is not None else "n/a"
                cells.append(f"{r['ms']:.1f} / {bub} / {rel:.2f}")
            lines.append(f"| {name} | {sched} | " + " | ".join(cells) + " |")
    report("\n".join(lines) + "\n", args.out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configs", default="small,large,large_bf16,large_mb32")
    ap.add_argument("--schedules", default=",".join(SCHEDULES))
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--sides", default="pipec,torch")
    ap.add_argument("--out", default=None)
    ap.add_argument("--worker", choices=["pipec", "torch"], default=None)
    ap.add_argument("--scaling", default=None,
                    help="comma-separated process counts (e.g. 2,4,8): pipec's throughput "
                         "per GPU at each, relative to the first")
    args = ap.parse_args()
    if args.worker == "pipec":
        return pipec_worker(args)
    if args.worker == "torch":
        return torch_worker(args)
    if args.scaling:
        return scaling(args)
    sides = args.sides.split(",")
    pres = run_side("pipec", args) if "pipec" in sides else []
    tres = []
    if "torch" in sides and args.device == "cuda":
        try:
            import torch  # noqa: F401
            tres = run_side("torch", args)
        except ImportError:
            print("torch is not importable: pipec side only", flush=True)
    report(table(pres, tres, args), args.out)


if __name__ == "__main__":
    main()

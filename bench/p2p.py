"""Point-to-point bandwidth and latency: pipec.distributed vs torch.distributed, 2 processes.

    python3 bench/p2p.py [--out bench/results/p2p_2xH200.md] [--device cuda|cpu] [--max-mib 512]

One job runs both sides on the same GPUs: pipec through ``python -m pipec.run`` (NCCL
communicator in C, or TCP with --device cpu), torch through ``torchrun`` (NCCL). For each
message size from 4 KiB to 512 MiB, rank 0 sends a float32 tensor to rank 1 ``reps`` times
in a row (after 3 warm-up sends and a barrier); time per message and bandwidth are measured
on rank 0 around the whole loop, ending with a device sync; latency is half of a ping-pong
round trip of a 4-byte message, averaged over 200 round trips. With one GPU both ranks share
it (tests/gpu_share.py: NCCL over sockets): that checks the script, the times mean nothing.
"""

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _common import launch, report  # noqa: E402
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
from gpu_share import share_gpus_for_nccl  # noqa: E402
SIZES = [4 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20, 64 << 20, 256 << 20,
         512 << 20]


def sizes(args):
    return [n for n in SIZES if n <= args.max_mib << 20]


def reps_for(nbytes):
    return 50 if nbytes <= (4 << 20) else 20


def measure(rank, send, recv, make, sync, barrier, sizes):
    """{size: us per message} and the ping-pong latency (us) on rank 0."""
    out = {}
    for n in sizes:
        t = make(n // 4)
        reps = reps_for(n)
        for _ in range(3):
            send(t, 1) if rank == 0 else recv(t, 0)
        sync()
        barrier()
        t0 = time.perf_counter()
        for _ in range(reps):
            send(t, 1) if rank == 0 else recv(t, 0)
        sync()
        out[n] = (time.perf_counter() - t0) / reps * 1e6
        barrier()
    t = make(1)
    for i in range(220):
        if i == 20:
            sync()
            t0 = time.perf_counter()
        if rank == 0:
            send(t, 1)
            recv(t, 1)
        else:
            recv(t, 0)
            send(t, 0)
        sync()  # a round trip ends when the data is there, not when it is queued
    lat = (time.perf_counter() - t0) / 200 / 2 * 1e6
    return out, lat


def pipec_worker(args):
    import pipec
    import pipec.distributed as dist
    cuda = args.device == "cuda"
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:  # with one GPU both ranks share it, over NCCL's sockets (a check, not a benchmark)
        local = share_gpus_for_nccl(local, 2, pipec.cuda.device_count())
        pipec.cuda.set_device(local)
    dist.init_process_group("nccl" if cuda else "tcp")
    rank = dist.get_rank()
    dev = f"cuda:{local}" if cuda else "cpu"
    res, lat = measure(rank, dist.send, dist.recv,
                       lambda n: pipec.ones(n, device=dev),
                       (lambda: pipec.cuda.synchronize(local)) if cuda else (lambda: None),
                       dist.barrier, sizes(args))
    if rank == 0:
        print("RESULT " + json.dumps({"side": "pipec", "us": res, "lat_us": lat}), flush=True)
    dist.destroy_process_group()


def torch_worker(args):
    import torch
    import torch.distributed as dist
    local = share_gpus_for_nccl(int(os.environ.get("LOCAL_RANK", "0")), 2,
                                torch.cuda.device_count())
    torch.cuda.set_device(local)
    dist.init_process_group("nccl")
    rank = dist.get_rank()
    res, lat = measure(rank, dist.send, dist.recv,
                       lambda n: torch.ones(n, device=f"cuda:{local}"),
                       torch.cuda.synchronize, dist.barrier, sizes(args))
    if rank == 0:
        print("RESULT " + json.dumps({"side": "torch", "us": res, "lat_us": lat}), flush=True)
    dist.destroy_process_group()


def run_side(side, args):
    res = launch(side, 2, [os.path.abspath(__file__), "--worker", side, "--device",
                           args.device, "--max-mib", str(args.max_mib)], 29601)
    return res[0] if res else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--out", default=None)
    ap.add_argument("--max-mib", type=int, default=512, help="largest message size (MiB)")
    ap.add_argument("--worker", choices=["pipec", "torch"], default=None)
    args = ap.parse_args()
    if args.worker == "pipec":
        return pipec_worker(args)
    if args.worker == "torch":
        return torch_worker(args)
    p = run_side("pipec", args)
    t = run_side("torch", args) if args.device == "cuda" else None
    lines = ["# point-to-point send/recv, 2 processes, rank 0 -> rank 1", "",
             "| size | pipec us/msg | pipec GB/s | torch us/msg | torch GB/s | pipec/torch time |",
             "|---|---|---|---|---|---|"]
    for n in sizes(args):
        pu = p["us"].get(str(n)) if p else None
        tu = t["us"].get(str(n)) if t else None
        cell = lambda u: (f"{u:.1f}", f"{n / u / 1e3:.1f}") if u else ("n/a", "n/a")  # noqa
        size = f"{n >> 20} MiB" if n >= (1 << 20) else f"{n >> 10} KiB"
        ratio = f"{pu / tu:.2f}" if pu and tu else "n/a"
        lines.append(f"| {size} | {' | '.join(cell(pu))} | {' | '.join(cell(tu))} | {ratio} |")
    pl = f"{p['lat_us']:.1f}" if p else "n/a"
    tl = f"{t['lat_us']:.1f}" if t else "n/a"
    lines += ["", f"Latency (half a ping-pong of 4 bytes): pipec {pl} us, torch {tl} us."]
    report("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    main()

"""NCCL smoke test and p2p bandwidth: run with `python -m pipec.run --nproc-per-node 2
tools/nccl_smoke.py` on a machine with 2 GPUs. Checks send/recv both ways, all_reduce and
barrier over pipec's NCCL backend, then times one-direction send/recv for several sizes."""
import os
import time

import pipec
import pipec.distributed as dist

rank = int(os.environ["RANK"])
pipec.cuda.set_device(rank)
dist.init_process_group("nccl", timeout=60)
dev = f"cuda:{rank}"
x = pipec.arange(8, dtype=pipec.float32, device=dev) + 100 * rank
y = pipec.zeros(8, device=dev)
if rank == 0:
    dist.send(x, 1)
    dist.recv(y, 1)
else:
    dist.recv(y, 0)
    dist.send(x, 0)
pipec.cuda.synchronize(rank)
other = 1 - rank
expect = [float(i + 100 * other) for i in range(8)]
assert y.cpu().tolist() == expect, (rank, y.cpu().tolist())
s = pipec.ones(4, device=dev) * (rank + 1)
dist.all_reduce(s)
pipec.cuda.synchronize(rank)
assert s.cpu().tolist() == [3.0] * 4, s.cpu().tolist()
dist.barrier()
print(f"rank {rank}: send/recv and all_reduce OK", flush=True)
for nbytes in (4096, 262144, 4 << 20, 64 << 20, 512 << 20):
    t = pipec.empty(nbytes // 4, device=dev)
    for it in range(3 + 10):
        if it == 3:
            pipec.cuda.synchronize(rank)
            dist.barrier()
            t0 = time.perf_counter()
        if rank == 0:
            dist.send(t, 1)
        else:
            dist.recv(t, 0)
    pipec.cuda.synchronize(rank)
    dt = (time.perf_counter() - t0) / 10
    if rank == 1:
        print(f"p2p {nbytes:>10d} B: {dt * 1e6:9.1f} us  {nbytes / dt / 1e9:7.1f} GB/s", flush=True)
dist.destroy_process_group()

"""NCCL smoke test and p2p bandwidth: run with `python -m pipec.run --nproc-per-node 2
tools/nccl_smoke.py [--quick]` on a machine with 2 GPUs (or one, which the ranks share). Checks send/recv both ways,
all_reduce, barrier, broadcast_object_list and byte messages of several sizes (the paths the
first pipeline step's shape and fingerprint exchange takes) over pipec's NCCL backend, then,
unless --quick, times one-direction send/recv for several sizes."""
import os
import sys
import time

import pipec
import pipec.distributed as dist

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from gpu_share import share_gpus_for_nccl  # noqa: E402

rank = int(os.environ["RANK"])
gpu = share_gpus_for_nccl(rank, 2)  # on one GPU both ranks share it (over NCCL's sockets)
pipec.cuda.set_device(gpu)
dist.init_process_group("nccl", timeout=60)
dev = f"cuda:{gpu}"
x = pipec.arange(8, dtype=pipec.float32, device=dev) + 100 * rank
y = pipec.zeros(8, device=dev)
if rank == 0:
    dist.send(x, 1)
    dist.recv(y, 1)
else:
    dist.recv(y, 0)
    dist.send(x, 0)
pipec.cuda.synchronize(gpu)
other = 1 - rank
expect = [float(i + 100 * other) for i in range(8)]
assert y.cpu().tolist() == expect, (rank, y.cpu().tolist())
s = pipec.ones(4, device=dev) * (rank + 1)
dist.all_reduce(s)
pipec.cuda.synchronize(gpu)
assert s.cpu().tolist() == [3.0] * 4, s.cpu().tolist()
dist.barrier()
objs = [{"rank": rank, "blob": bytes(range(256)) * 300}, None] if rank == 0 else [None, None]
dist.broadcast_object_list(objs, src=0)
assert objs[0] == {"rank": 0, "blob": bytes(range(256)) * 300}, (rank, str(objs)[:80])
comm = dist._default_comm()
for n in (0, 1, 7, 4096, 1 << 20):
    payload = bytes((i * 7 + rank) % 251 for i in range(n))
    if rank == 0:
        comm.send_bytes(payload, 1, 5)
        got = comm.recv_bytes(1, 6)
    else:
        got = comm.recv_bytes(0, 5)
        comm.send_bytes(payload, 0, 6)
    assert got == bytes((i * 7 + other) % 251 for i in range(n)), (rank, n)
print(f"rank {rank}: send/recv, all_reduce, broadcast_object_list and byte messages OK",
      flush=True)
if "--quick" in sys.argv[1:]:
    dist.destroy_process_group()
    sys.exit(0)
for nbytes in (4096, 262144, 4 << 20, 64 << 20, 512 << 20):
    t = pipec.empty(nbytes // 4, device=dev)
    for it in range(3 + 10):
        if it == 3:
            pipec.cuda.synchronize(gpu)
            dist.barrier()
            t0 = time.perf_counter()
        if rank == 0:
            dist.send(t, 1)
        else:
            dist.recv(t, 0)
    pipec.cuda.synchronize(gpu)
    dt = (time.perf_counter() - t0) / 10
    if rank == 1:
        print(f"p2p {nbytes:>10d} B: {dt * 1e6:9.1f} us  {nbytes / dt / 1e9:7.1f} GB/s", flush=True)
dist.destroy_process_group()

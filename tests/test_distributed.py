"""test_distributed.py — pipec.distributed, the TCP communicator and store, and pipec.run.

Multi-process tests run this same file as the worker script: ``python -m pipec.run
--nproc-per-node N tests/test_distributed.py <case>`` (or spawn the ranks directly with the
launcher's variables when a test must see every rank's own error). Each worker case prints
``OK`` when all its checks pass; the tests assert on exit codes, on those lines and on the
error messages. Timeouts are a few seconds and ports come from binding port 0, so the file runs
in well under a minute on a 2-core machine.

Fault tests: a rank killed mid-message, a rank killed while others wait on each other, a rank
that never joins, a rank that stops answering, a wrong master port, a port already taken, a
corrupted frame header, and a failing rank under the launcher.
"""
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time

import numpy as np
import pytest

HERE = os.path.abspath(__file__)
ROOT = os.path.dirname(os.path.dirname(HERE))


# ---- helpers (test side) ----

def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
              "MASTER_PORT"):
        env.pop(k, None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _launch(nproc, case, *args, timeout=60):
    """Run `case` on nproc ranks through pipec.run; returns (CompletedProcess, seconds)."""
    cmd = [sys.executable, "-m", "pipec.run", "--nproc-per-node", str(nproc), "--stop-timeout",
           "2", HERE, case, *map(str, args)]
    t0 = time.monotonic()
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                         env=_env())
    return res, time.monotonic() - t0


def _spawn(ranks, world, case, *args, port=None, timeout=60):
    """Start the given ranks of `case` directly (no launcher) and wait for all of them.
    Returns ({rank: (returncode, stdout, stderr)}, seconds)."""
    port = port or _free_port()
    t0 = time.monotonic()
    procs = {r: subprocess.Popen([sys.executable, HERE, case, *map(str, args)], cwd=ROOT,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env=_env(RANK=r, WORLD_SIZE=world, LOCAL_RANK=r,
                                          LOCAL_WORLD_SIZE=world, MASTER_ADDR="127.0.0.1",
                                          MASTER_PORT=port))
             for r in ranks}
    out = {}
    try:
        for r, p in procs.items():
            so, se = p.communicate(timeout=timeout)
            out[r] = (p.returncode, so, se)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
    return out, time.monotonic() - t0


def _fnv1a(b):
    h = 2166136261
    for x in b:
        h = ((h ^ x) * 16777619) & 0xFFFFFFFF
    return h


def _frame_header(src, seq, tag, size, kind=1):
    """A P2P frame header exactly as csrc/comm/tcp.c writes it."""
    head = struct.pack("<IHHIIQQ", 0x31544350, kind, 1, src, seq, tag, size)
    return head + struct.pack("<II", _fnv1a(head), 0)


# ---- worker cases (run in the rank processes) ----

DTYPES = ["float32", "float64", "float16", "bfloat16", "int64", "bool"]
SIZES = [(0,), (1,), (7, 3), (1000,), (256, 1024)]  # the last: 1 MiB as float32


def _pattern(pipec, src, tag, shape, dtype):
    n = int(np.prod(shape))
    vals = (np.arange(n, dtype=np.int64) * 7 + src * 13 + tag) % 251
    t = pipec.from_numpy(vals.astype(np.float64).reshape(shape))
    return t.to(getattr(pipec, dtype))


def _np(t):
    return t.double().numpy() if str(t.dtype) == "pipec.bfloat16" else t.numpy()


def case_basic(timeout="20"):
    import pipec
    import pipec.distributed as dist
    dist.init_process_group(backend="tcp", timeout=float(timeout))
    rank, world = dist.get_rank(), dist.get_world_size()
    assert dist.is_initialized() and dist.get_backend() == "tcp"
    assert dist._default_comm().world == world

    # store: every rank's key is visible to every rank
    store = dist._default_store()
    store.set(f"test/{rank}", f"value-{rank}".encode())
    for r in range(world):
        assert store.get(f"test/{r}") == f"value-{r}".encode()

    # point to point: ring, every dtype and size; odd ranks receive first and in reverse tag
    # order, so messages arrive early, late, and out of order
    nxt, prv = (rank + 1) % world, (rank - 1) % world
    cases = [(d, s) for d in DTYPES for s in SIZES]
    outs = [pipec.zeros(*s, dtype=getattr(pipec, d)) for d, s in cases]

    def send_all():
        for tag, (d, s) in enumerate(cases):
            dist.send(_pattern(pipec, rank, tag, s, d), nxt, tag=tag)

    def recv_all():
        for tag in reversed(range(len(cases))):
            assert dist.recv(outs[tag], prv, tag=tag) == prv

    if rank % 2 == 0:
        send_all()
        recv_all()
    else:
        recv_all()
        send_all()
    for tag, (d, s) in enumerate(cases):
        got, want = _np(outs[tag]), _np(_pattern(pipec, prv, tag, s, d))
        assert got.shape == want.shape and np.array_equal(got, want), (d, s)

    # a receive posted before the message arrives (filled in place), then raw bytes
    big = pipec.zeros(1 << 20)
    if rank == 0:
        dist.recv(big, 1, tag=99)
        assert np.array_equal(big.numpy(), np.arange(1 << 20, dtype=np.float32))
    elif rank == 1:
        time.sleep(0.1)
        dist.send(pipec.arange(1 << 20, dtype=pipec.float32), 0, tag=99)
    comm = dist._default_comm()
    comm.send_bytes(b"x" * rank, nxt, tag=5)
    assert comm.recv_bytes(prv, tag=5) == b"x" * prv

    # size mismatch is an error naming both sizes (and the stream stays usable)
    if rank == 0:
        dist.send(pipec.zeros(5), 1, tag=7)
    elif rank == 1:
        try:
            dist.recv(pipec.zeros(4), 0, tag=7)
            raise AssertionError("size mismatch not detected")
        except pipec.PipelineError as e:
            assert "16 bytes" in str(e) and "20 bytes" in str(e), e

    # all_reduce: exact integer-valued sums, sizes below and above the world size
    for d in ("float32", "float64", "int64", "bfloat16", "float16"):
        for n in (1, 3, 1001):
            t = pipec.from_numpy(np.arange(n, dtype=np.float64) % 7 + rank).to(
                getattr(pipec, d))
            dist.all_reduce(t)
            want = world * (np.arange(n) % 7) + world * (world - 1) / 2
            assert np.array_equal(_np(t), want), (d, n)
    flags = pipec.from_numpy(np.array([rank == 1, False])).to(pipec.bool)
    dist.all_reduce(flags)
    assert flags.numpy().tolist() == [True, False]

    # broadcast of a pickled object and of a tensor
    objs = [{"shapes": [(4, 8), (8,)], "from": rank}, None] if rank == 1 else [None, None]
    dist.broadcast_object_list(objs, src=1)
    assert objs[0] == {"shapes": [(4, 8), (8,)], "from": 1} and objs[1] is None
    t = pipec.arange(10, dtype=pipec.float32) if rank == world - 1 else pipec.zeros(10)
    dist.broadcast(t, src=world - 1)
    assert np.array_equal(t.numpy(), np.arange(10, dtype=np.float32))

    # barrier really waits for the slowest rank
    if rank == 0:
        time.sleep(0.3)
    t0 = time.monotonic()
    dist.barrier()
    if rank != 0:
        assert time.monotonic() - t0 > 0.2

    # a sub-group of the first and last rank (tied parameters): sum, barrier, objects
    g = dist.new_group([0, world - 1])
    if rank in (0, world - 1):
        assert dist.get_rank(g) == (0 if rank == 0 else 1) and dist.get_world_size(g) == 2
        t = pipec.full((6,), float(rank + 1))
        dist.all_reduce(t, group=g)
        assert np.array_equal(t.numpy(), np.full(6, 1.0 + world, dtype=np.float32))
        dist.barrier(group=g)
        o = ["tied"] if rank == 0 else [None]
        dist.broadcast_object_list(o, src=0, group=g)
        assert o == ["tied"]
    else:
        assert g is dist.GroupMember.NON_GROUP_MEMBER and dist.get_rank(g) == -1
    dist.barrier()
    dist.destroy_process_group()
    assert not dist.is_initialized()
    print(f"OK rank {rank} of {world}")


def case_kill_mid_message():
    """Rank 1 writes a header announcing 1 MiB, 1000 bytes of it, and dies."""
    import pipec
    import pipec.distributed as dist
    dist.init_process_group(backend="tcp", timeout=20)
    comm = dist._default_comm()
    if dist.get_rank() == 1:
        time.sleep(0.3)  # rank 0's receive is posted: the payload goes straight into it
        comm._send_raw(0, _frame_header(1, 0, 3, 1 << 20) + b"\0" * 1000)
        time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGKILL)
    t0 = time.monotonic()
    try:
        dist.recv(pipec.zeros(1 << 18), 1, tag=3)
    except pipec.PipelineError as e:
        print(f"ERROR after {time.monotonic() - t0:.2f}s: {e}")
        raise


def case_nccl_long_compute_before_transfer():
    """World of one on NCCL, timeout 2 s: several seconds of GPU compute queued ahead of an
    all-reduce are not a stall (the watchdog times a transfer from when it could start)."""
    import pipec
    import pipec.distributed as dist
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0,
                            world_size=1, timeout=2)
    x = pipec.randn(8192, 8192, device="cuda:0")
    pipec.cuda.synchronize()
    t0 = time.monotonic()
    for _ in range(250):  # about 5 s of float32 GEMMs on an H100/H200
        y = x @ x
    del y
    t = pipec.ones(1024, device="cuda:0")
    dist.all_reduce(t)
    pipec.cuda.synchronize()
    print("queued compute took %.1f s" % (time.monotonic() - t0), flush=True)
    dist.all_reduce(t)
    pipec.cuda.synchronize()
    assert float(t.sum().item()) == 1024.0
    dist.destroy_process_group()
    print("OK", flush=True)


def case_nccl_failed_call():
    """World of one on NCCL: a refused call (a send to oneself) raises an error naming it,
    and the group stays usable: later calls work (the failed one left no lock held and
    nothing for the watchdog), also after waiting longer than the timeout (the watchdog has
    nothing to abort). Since sends are held to pair them with the next receive (nccl.c),
    pipec refuses the peer itself, a ValueError, before NCCL sees the call."""
    import pipec
    import pipec.distributed as dist
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0,
                            world_size=1, timeout=2)
    t = pipec.ones(1024, device="cuda:0")
    try:
        dist.send(t, 0)
        print("send to self was accepted", flush=True)
    except (pipec.PipelineError, ValueError) as e:
        print("send to self: %s" % e, flush=True)
    dist.all_reduce(t)
    pipec.cuda.synchronize()
    time.sleep(2.5)
    dist.all_reduce(t)
    dist.barrier()
    pipec.cuda.synchronize()
    assert float(t.sum().item()) == 1024.0
    dist.destroy_process_group()
    print("OK", flush=True)


def case_kill_third():
    """Ranks 0 and 1 each wait for the other; rank 2 dies. Both must fail naming rank 2."""
    import pipec
    import pipec.distributed as dist
    dist.init_process_group(backend="tcp", timeout=20)
    rank = dist.get_rank()
    dist.barrier()
    if rank == 2:
        time.sleep(0.3)
        os.kill(os.getpid(), signal.SIGKILL)
    t0 = time.monotonic()
    try:
        dist.recv(pipec.zeros(4), 1 - rank, tag=0)
    except pipec.PipelineError as e:
        print(f"ERROR after {time.monotonic() - t0:.2f}s: {e}")
        raise


def case_silent_peer():
    """Rank 1 stays alive but never sends: rank 0's receive times out naming it."""
    import pipec
    import pipec.distributed as dist
    dist.init_process_group(backend="tcp", timeout=1.5)
    if dist.get_rank() == 1:
        time.sleep(3)
        return
    t0 = time.monotonic()
    try:
        dist.recv(pipec.zeros(4), 1, tag=11)
    except pipec.PipelineError as e:
        print(f"ERROR after {time.monotonic() - t0:.2f}s: {e}")
        raise


def case_nccl_silent_peer():
    """NCCL, two ranks: rank 1 stays alive but never sends. Rank 0 queues the receive
    and then blocks in a CUDA synchronize (not a pipec wait with a deadline): the watchdog
    must abort the communicator after the 2 s timeout, releasing the synchronize, and the
    next call must fail naming the reason. On one GPU the two ranks share it (gpu_share.py)."""
    import pipec
    import pipec.distributed as dist
    from gpu_share import share_gpus_for_nccl
    share_gpus_for_nccl(int(os.environ["RANK"]), 2)
    dist.init_process_group(backend="nccl", timeout=2)
    if dist.get_rank() == 1:
        time.sleep(10)
        return
    t = pipec.zeros(1 << 16, device="cuda:0")
    t0 = time.monotonic()
    dist.recv(t, 1)
    try:
        pipec.cuda.synchronize()
    except Exception as e:  # an aborted NCCL kernel may surface as a CUDA error here
        print(f"synchronize raised: {type(e).__name__}: {e}", flush=True)
    print(f"released after {time.monotonic() - t0:.2f}s", flush=True)
    dist.barrier()  # must raise


def case_join(timeout="3"):
    import pipec.distributed as dist
    dist.init_process_group(backend="tcp", timeout=float(timeout))
    print("joined")


def case_corrupt_header():
    """Rank 1 sends a frame header with one bit of its size flipped."""
    import pipec
    import pipec.distributed as dist
    dist.init_process_group(backend="tcp", timeout=10)
    comm = dist._default_comm()
    if dist.get_rank() == 1:
        h = bytearray(_frame_header(1, 0, 4, 16))
        h[24] ^= 0x40
        comm._send_raw(0, bytes(h) + b"\0" * 16)
        time.sleep(1.0)
        return
    try:
        dist.recv(pipec.zeros(4), 1, tag=4)
    except pipec.PipelineError as e:
        print(f"ERROR: {e}")
        raise


def case_launcher_failure():
    """Rank 1 raises; rank 0 sleeps (not in a communicator wait) and must be stopped."""
    import pipec.distributed as dist
    dist.init_process_group(backend="tcp", timeout=20)
    print(f"hello from {dist.get_rank()}")
    if dist.get_rank() == 1:
        raise ValueError("boom from rank 1")
    time.sleep(60)


# ---- tests: working jobs ----

@pytest.mark.parametrize("nproc", [2, 4])
def test_collectives_and_p2p_under_launcher(nproc):
    res, secs = _launch(nproc, "case_basic")
    assert res.returncode == 0, res.stdout + res.stderr
    for r in range(nproc):
        assert f"[rank{r}]: OK rank {r} of {nproc}" in res.stdout, res.stdout + res.stderr


def test_single_process_group_in_process():
    import pipec
    import pipec.distributed as dist
    port = _free_port()
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0,
                            world_size=1, timeout=5)
    try:
        assert dist.get_rank() == 0 and dist.get_world_size() == 1
        with pytest.raises(RuntimeError, match="twice"):
            dist.init_process_group("tcp", init_method=f"tcp://127.0.0.1:{port}", rank=0,
                                    world_size=1)
        # a message to oneself is delivered through the mailbox
        dist.send(pipec.arange(5, dtype=pipec.float32), 0, tag=1)
        out = pipec.zeros(5)
        dist.recv(out, 0, tag=1)
        assert out.numpy().tolist() == [0, 1, 2, 3, 4]
        t = pipec.ones(3)
        dist.all_reduce(t)
        assert t.numpy().tolist() == [1, 1, 1]
        objs = [{"a": 1}]
        dist.broadcast_object_list(objs, src=0)
        assert objs == [{"a": 1}]
        # a broadcast of bytes, and an all-reduce of an empty tensor (no memory behind it)
        comm = dist._default_comm()
        blob = bytes(range(256)) * 64
        assert comm.broadcast_bytes(blob, 0) == blob
        empty = pipec.ones(0)
        dist.all_reduce(empty)
        assert empty.shape == (0,)
        dist.barrier()
        with pytest.raises(ValueError, match="tag"):
            dist.send(t, 0, tag=1 << 62)
        with pytest.raises(ValueError, match="reserved for the pipeline runtime"):
            dist.send(t, 0, tag=1 << 61)
        with pytest.raises(ValueError, match="dst rank 1"):
            dist.send(t, 1)
        with pytest.raises(NotImplementedError):
            dist.all_reduce(t, op="max")
    finally:
        dist.destroy_process_group()
    assert not dist.is_initialized()
    with pytest.raises(ValueError, match="not been initialized"):
        dist.get_rank()


@pytest.mark.cuda
def test_nccl_group_of_one_process():
    """The NCCL communicator in a world of one (what one GPU allows): creation with the
    peer warm-up and the watchdog thread, all-reduce (of an empty tensor too), broadcast of
    objects and bytes, barrier, many watched transfers, and a clean destroy (the watchdog
    joins)."""
    import pipec
    import pipec.distributed as dist
    port = _free_port()
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=0,
                            world_size=1, timeout=20)
    try:
        assert dist.get_backend() == "nccl"
        t = pipec.ones(1 << 20, device="cuda:0")
        for _ in range(50):
            dist.all_reduce(t)
        assert float(t.sum().item()) == float(1 << 20)
        objs = [{"a": 1}]
        dist.broadcast_object_list(objs, src=0)
        assert objs == [{"a": 1}]
        # the byte path stages through the device on the comm stream
        comm = dist._default_comm()
        blob = bytes(range(256)) * 64
        assert comm.broadcast_bytes(blob, 0) == blob
        # an empty tensor has no memory to keep for the comm stream: not an error
        empty = pipec.ones(0, device="cuda:0")
        dist.all_reduce(empty)
        assert empty.shape == (0,)
        dist.barrier()
        time.sleep(0.3)  # the watchdog looks every 100 ms and must leave a healthy group be
        dist.all_reduce(t)
        pipec.cuda.synchronize()
    finally:
        dist.destroy_process_group()
    assert not dist.is_initialized()


@pytest.mark.cuda
def test_nccl_failed_call_leaves_the_group_usable():
    """A send to oneself is refused: the error names the call and the peer, and the
    communicator goes on working (no lock left held, no false abort)."""
    res = subprocess.run([sys.executable, HERE, "case_nccl_failed_call"],
                         capture_output=True, text=True, timeout=90, cwd=ROOT, env=_env())
    out = res.stdout + res.stderr
    assert res.returncode == 0 and "OK" in res.stdout, out
    assert "send to self: nccl send: peer 0 is not another rank" in res.stdout, out


@pytest.mark.cuda
def test_nccl_watchdog_leaves_long_compute_alone():
    """The other side of the watchdog: a transfer queued behind more GPU compute than the
    timeout is not aborted, since it could not start before that compute finished."""
    res = subprocess.run([sys.executable, HERE, "case_nccl_long_compute_before_transfer"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT, env=_env())
    out = res.stdout + res.stderr
    assert res.returncode == 0 and "OK" in res.stdout, out
    secs = float(re.search(r"queued compute took ([\d.]+) s", res.stdout).group(1))
    assert secs > 3.0, f"the compute must outlast the 2 s timeout to test anything: {out}"


def test_rendezvous_variables():
    from pipec.distributed import _rendezvous_info as info
    torchrun = dict(RANK="3", WORLD_SIZE="8", LOCAL_RANK="1", LOCAL_WORLD_SIZE="2",
                    MASTER_ADDR="node0", MASTER_PORT="1234")
    assert info(torchrun) == (3, 8, 1, 2, "node0", 1234)
    slurm = dict(SLURM_PROCID="5", SLURM_NTASKS="8", SLURM_LOCALID="1",
                 SLURM_NTASKS_PER_NODE="4(x2)", SLURM_JOB_NODELIST="gpu[07-08,11],cpu1",
                 SLURM_JOB_ID="4242")
    assert info(slurm) == (5, 8, 1, 4, "gpu07", 20000 + 4242 % 20000)
    ompi = dict(OMPI_COMM_WORLD_RANK="2", OMPI_COMM_WORLD_SIZE="4",
                OMPI_COMM_WORLD_LOCAL_RANK="0", OMPI_COMM_WORLD_LOCAL_SIZE="2",
                MASTER_ADDR="10.0.0.1", MASTER_PORT="29400")
    assert info(ompi) == (2, 4, 0, 2, "10.0.0.1", 29400)
    # arguments and init_method win over the environment
    assert info(torchrun, rank=0, world_size=2, init_method="tcp://h:99")[:2] == (0, 2)
    assert info(torchrun, init_method="tcp://h:99")[4:] == ("h", 99)
    with pytest.raises(ValueError, match="RANK and WORLD_SIZE"):
        info({})
    with pytest.raises(ValueError, match="MASTER_PORT"):
        info(dict(RANK="0", WORLD_SIZE="1", MASTER_ADDR="x"))
    with pytest.raises(ValueError, match="out of range"):
        info(dict(torchrun, RANK="8"))
    with pytest.raises(ValueError, match="init_method"):
        info(torchrun, init_method="file:///tmp/x")


# ---- tests: faults ----

def test_killed_rank_mid_message_is_named():
    out, secs = _spawn([0, 1], 2, "case_kill_mid_message")
    rc, so, se = out[0]
    assert rc != 0 and "PipelineError" in se, so + se
    assert "rank 1 died" in se and "part-way" in se, se
    assert out[1][0] == -signal.SIGKILL
    assert secs < 15  # far below the 20 s timeout: the dead socket is noticed at once


def test_killed_rank_fails_every_other_rank_fast():
    out, secs = _spawn([0, 1, 2], 3, "case_kill_third")
    for r in (0, 1):
        rc, so, se = out[r]
        assert rc != 0 and "PipelineError" in se and "rank 2 died" in se, (r, so + se)
        waited = float(so.split("ERROR after ")[1].split("s:")[0])
        assert waited < 10, so
    assert out[2][0] == -signal.SIGKILL


def test_silent_rank_times_out_naming_it():
    out, secs = _spawn([0, 1], 2, "case_silent_peer")
    rc, so, se = out[0]
    assert rc != 0 and "PipelineError" in se, so + se
    assert "timed out after 1.5s" in se and "from rank 1 (tag 11)" in se, se
    waited = float(so.split("ERROR after ")[1].split("s:")[0])
    assert 1.3 < waited < 5, so


@pytest.mark.nccl_ranks
def test_nccl_silent_rank_is_aborted_by_the_watchdog():
    out, secs = _spawn([0, 1], 2, "case_nccl_silent_peer")
    rc, so, se = out[0]
    assert rc != 0 and "PipelineError" in se, so + se
    assert "made no progress" in se, se
    released = float(so.split("released after ")[1].split("s")[0])
    assert 1.5 < released < 8, so  # the 2 s timeout plus the watchdog's 100 ms look


def test_rank_that_never_joins_is_named():
    out, secs = _spawn([0, 1], 3, "case_join", 2)  # rank 2 of 3 never starts
    for r in (0, 1):
        rc, so, se = out[r]
        assert rc != 0 and "PipelineError" in se, (r, so + se)
        assert "rank 2 of world size 3 never arrived" in se, se
        assert "joined" not in so
    assert secs < 10


def test_wrong_master_port_is_a_clear_error():
    import pipec
    import pipec.distributed as dist
    port = _free_port()  # nobody listens there
    t0 = time.monotonic()
    with pytest.raises(pipec.PipelineError, match=f"127.0.0.1:{port}.*MASTER_PORT={port}"):
        dist.init_process_group("tcp", init_method=f"tcp://127.0.0.1:{port}", rank=1,
                                world_size=2, timeout=1.0)
    assert time.monotonic() - t0 < 4
    assert not dist.is_initialized()


def test_master_port_in_use_is_a_clear_error():
    import pipec
    import pipec.distributed as dist
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(pipec.PipelineError, match=f"MASTER_PORT {port} is already in use"):
            dist.init_process_group("tcp", init_method=f"tcp://127.0.0.1:{port}", rank=0,
                                    world_size=2, timeout=1.0)
    assert not dist.is_initialized()


def test_corrupted_header_is_a_pipeline_error():
    out, secs = _spawn([0, 1], 2, "case_corrupt_header")
    rc, so, se = out[0]
    assert rc != 0 and "PipelineError" in se, so + se
    assert "corrupted message header from rank 1" in se and "checksum" in se, se


def test_launcher_stops_the_job_when_a_rank_fails():
    res, secs = _launch(2, "case_launcher_failure")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "[rank0]: hello from 0" in res.stdout and "[rank1]: hello from 1" in res.stdout
    assert "[rank1]: ValueError: boom from rank 1" in res.stderr, res.stderr
    assert "pipec.run: rank 1 (local rank 1" in res.stderr and "exited with code 1" in res.stderr
    assert "  ValueError: boom from rank 1" in res.stderr.split("rank 1's error:")[1]
    assert secs < 15  # rank 0 (sleeping 60 s) was stopped


def test_launcher_arguments():
    res = subprocess.run([sys.executable, "-m", "pipec.run", "--nproc-per-node", "0", HERE],
                         capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=30)
    assert res.returncode != 0 and "--nproc-per-node must be >= 1" in res.stderr


# ---- worker entry point ----

if __name__ == "__main__":
    fn = globals()[sys.argv[1]]
    fn(*sys.argv[2:])


@pytest.mark.parametrize("visible,current,local_rank,expect", [
    (2, 0, 1, 1),   # one GPU per local rank
    (1, 0, 1, 0),   # per-rank CUDA_VISIBLE_DEVICES: the one visible GPU
    (4, 3, 0, 3),   # the program chose a device with pipec.cuda.set_device
    (2, 0, 3, 1),   # more local ranks than GPUs: shared round-robin
    (0, 0, 1, 1),   # no GPU: left to the communicator to report
])
def test_default_nccl_device(monkeypatch, visible, current, local_rank, expect):
    import pipec
    import pipec.distributed as dist
    monkeypatch.setattr(pipec.cuda, "device_count", lambda: visible)
    monkeypatch.setattr(pipec.cuda, "current_device", lambda: current)
    assert dist._default_nccl_device(local_rank) == expect

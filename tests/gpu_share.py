"""gpu_share.py — let a test job's NCCL ranks share GPUs when it has more ranks than GPUs.

NCCL refuses two ranks of one host on one GPU ("Duplicate GPU detected"). A rank that calls
`share_gpus_for_nccl(rank, world)` before `init_process_group("nccl")` on a machine with
fewer GPUs than ranks claims a host id of its own (NCCL_HOSTID), so NCCL sees one host per
rank and joins them through its socket transport on the loopback interface. Everything
pipec does is its real multi-process NCCL path (communicators, send/recv on the comm stream,
collectives, the watchdog and the abort); only the wire differs from two GPUs over NVLink,
and the speed means nothing (the ranks time-slice one GPU and their data goes through
host sockets). With one GPU per rank it does nothing.
"""
import os


def share_gpus_for_nccl(rank, world, n_gpus=None):
    """Set up NCCL for `world` ranks on this machine's `n_gpus` GPUs (default: pipec's
    count); returns this rank's device index (rank modulo the GPUs). Must run before NCCL's
    first call in this process."""
    if n_gpus is None:
        import pipec
        n_gpus = pipec.cuda.device_count()
    if n_gpus < world:
        os.environ["NCCL_HOSTID"] = f"pipec-test-rank{rank}"
        os.environ.setdefault("NCCL_SOCKET_IFNAME", "lo")
        os.environ.setdefault("NCCL_IB_DISABLE", "1")
    return rank % n_gpus

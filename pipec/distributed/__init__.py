"""pipec.distributed: process groups for multi-process pipelines, with torch.distributed's names.

A job is a set of processes (ranks), started by ``python -m pipec.run`` (or torchrun, srun,
mpirun). Each calls :func:`init_process_group`; rank 0 hosts a small key-value store over TCP
that the others reach at ``MASTER_ADDR:MASTER_PORT``; through it the ranks find each other and
build a communicator in C: ``tcp`` (CPU processes, sockets) or ``nccl`` (GPUs).

Rank and world come from, in order: the ``rank``/``world_size`` arguments; torchrun's
``RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE``; Slurm's ``SLURM_PROCID, SLURM_NTASKS,
SLURM_LOCALID``; Open MPI's ``OMPI_COMM_WORLD_RANK, _SIZE, _LOCAL_RANK, _LOCAL_SIZE``.
``MASTER_ADDR``/``MASTER_PORT`` default under Slurm to the job's first node and a port derived
from the job id.

Every wait has a deadline (``timeout`` of init_process_group): a rank that never arrives, dies
or stops answering makes the others raise :class:`pipec.PipelineError` naming it, never hang.

Groups: :func:`new_group` (called by every rank, in the same order) gives a sub-group; its
collectives run over the default communicator's point-to-point messages with tags at or above
``2**62``; the pipeline runtime's messages use ``[2**61, 2**62)``. User point-to-point tags
must be below ``2**61``.
"""
import atexit
import datetime
import os
import pickle
import re
import threading
from urllib.parse import urlparse

from .. import _C
from .._C import PipelineError

__all__ = [
    "Backend", "ReduceOp", "ProcessGroup", "GroupMember", "PipelineError",
    "init_process_group", "destroy_process_group", "is_available", "is_initialized",
    "is_nccl_available", "get_rank", "get_world_size", "get_backend", "get_node_local_rank",
    "new_group", "get_process_group_ranks", "get_global_rank", "get_group_rank",
    "barrier", "send", "recv", "all_reduce", "broadcast", "broadcast_object_list",
]

DEFAULT_TIMEOUT = datetime.timedelta(minutes=5)
_USER_TAG_LIMIT = 1 << 61     # user tags are below; [2**61, 2**62): the pipeline runtime
_TAG_LIMIT = 1 << 62          # group collectives use the range from here up
_GROUP_TAG_BITS = 40          # per group: 2**40 collective tags before they wrap


class Backend(str):
    """Backend names: ``Backend.TCP`` ("tcp", CPU processes) and ``Backend.NCCL`` ("nccl").
    ``"gloo"`` is accepted as another name for "tcp" so torch scripts port unchanged."""
    TCP = "tcp"
    NCCL = "nccl"

    def __new__(cls, name):
        low = str(name).lower()
        if low == "gloo":
            low = "tcp"
        if low not in ("tcp", "nccl"):
            raise ValueError(f"Unknown backend {name!r}: pipec has 'tcp' (CPU processes; "
                             "'gloo' is an alias) and 'nccl' (GPUs)")
        return str.__new__(cls, low)


class ReduceOp:
    """Reduction operations; pipec's collectives implement SUM."""
    SUM = "sum"


class ProcessGroup:
    """A set of ranks. The default group (``GroupMember.WORLD``) spans the job; others come
    from :func:`new_group`. ``rank()`` is this process's rank within the group."""

    def __init__(self, ranks, group_id, my_rank):
        self._ranks = list(ranks)
        self._id = group_id
        self._seq = 0
        self._rank = self._ranks.index(my_rank) if my_rank in self._ranks else -1
        self._destroyed = False

    def rank(self):
        return self._rank

    def size(self):
        return len(self._ranks)

    @property
    def ranks(self):
        return list(self._ranks)

    def _next_tag(self):
        seq = self._seq & ((1 << _GROUP_TAG_BITS) - 1)
        tag = _TAG_LIMIT | (self._id << _GROUP_TAG_BITS) | seq
        self._seq += 1
        return tag

    def __repr__(self):
        return f"ProcessGroup(ranks={self._ranks}, rank={self._rank})"


class GroupMember:
    """``WORLD``: the default group once initialised (else None). ``NON_GROUP_MEMBER``: what
    :func:`new_group` returns on ranks outside the new group."""
    WORLD = None
    NON_GROUP_MEMBER = object()


class _State:
    """The default process group (module state; guarded by _lock)."""

    def __init__(self):
        self.store = None        # _C.Store
        self.comm = None         # _C.Comm
        self.world = None        # ProcessGroup over every rank
        self.backend = None
        self.rank = -1
        self.world_size = -1
        self.local_rank = -1
        self.local_world_size = -1
        self.timeout = None
        self.n_groups = 0


_state = _State()
_lock = threading.RLock()
_atexit_registered = False


# ---- environment ----

def _first(env, *names):
    for n in names:
        v = env.get(n)
        if v is not None and str(v).strip() != "":
            return n, str(v).strip()
    return None, None


def _int_var(env, names, what):
    name, v = _first(env, *names)
    if name is None:
        return None
    try:
        return int(v)
    except ValueError:
        raise ValueError(f"{name}={v!r} is not an integer ({what})") from None


def _slurm_first_host(nodelist):
    """First host of a Slurm node list: 'gpu[03-05,9],login1' -> 'gpu03'."""
    m = re.match(r"\s*([^\[,]+)(?:\[([^\]]+)\])?", nodelist)
    if not m:
        return None
    prefix, ranges = m.group(1), m.group(2)
    if not ranges:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


def _local_size_from_slurm(v):
    """SLURM_NTASKS_PER_NODE / SLURM_TASKS_PER_NODE ('4', '4(x2)', '4,2') -> 4."""
    m = re.match(r"\s*(\d+)", v)
    return int(m.group(1)) if m else None


def _rendezvous_info(env=None, rank=-1, world_size=-1, init_method=None):
    """(rank, world_size, local_rank, local_world_size, master_addr, master_port) from the
    arguments, an init_method URL and the launcher's variables. Raises ValueError naming
    what is missing or malformed."""
    env = os.environ if env is None else env
    if rank is None or rank < 0:
        rank = _int_var(env, ("RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "PMI_RANK"),
                        "this process's rank")
    if world_size is None or world_size < 0:
        world_size = _int_var(env, ("WORLD_SIZE", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE",
                                    "PMI_SIZE"), "the number of ranks")
    if rank is None or world_size is None:
        raise ValueError("init_process_group: cannot tell this process's rank and the world "
                         "size: start the job with `python -m pipec.run --nproc-per-node N "
                         "script.py` (or torchrun, srun, mpirun), set RANK and WORLD_SIZE, or "
                         "pass rank= and world_size=")
    if world_size < 1:
        raise ValueError(f"init_process_group: world size must be >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"init_process_group: rank {rank} is out of range for world size "
                         f"{world_size}")
    local_rank = _int_var(env, ("LOCAL_RANK", "SLURM_LOCALID", "OMPI_COMM_WORLD_LOCAL_RANK",
                                "MPI_LOCALRANKID"), "the rank on this node")
    _, lws = _first(env, "LOCAL_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS",
                    "SLURM_NTASKS_PER_NODE", "SLURM_TASKS_PER_NODE")
    local_world_size = _local_size_from_slurm(lws) if lws is not None else None
    if local_rank is None:
        local_rank = rank if local_world_size in (None, world_size) else rank % local_world_size
    if local_world_size is None:
        local_world_size = world_size

    addr = port = None
    if init_method not in (None, "", "env://"):
        url = urlparse(init_method)
        if url.scheme != "tcp" or not url.hostname or not url.port:
            raise ValueError(f"init_process_group: init_method {init_method!r} is not "
                             "supported: use 'env://' or 'tcp://HOST:PORT'")
        addr, port = url.hostname, url.port
    if addr is None:
        _, addr = _first(env, "MASTER_ADDR")
    if addr is None:
        _, nodes = _first(env, "SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST")
        if nodes:
            addr = _slurm_first_host(nodes)
    if addr is None:
        raise ValueError("init_process_group: MASTER_ADDR is not set (the host of rank 0; "
                         "pipec.run sets it, or pass init_method='tcp://HOST:PORT')")
    if port is None:
        port = _int_var(env, ("MASTER_PORT",), "the port of rank 0's store")
    if port is None:
        _, job = _first(env, "SLURM_JOB_ID", "SLURM_JOBID")
        if job is not None and job.isdigit():
            port = 20000 + int(job) % 20000
    if port is None:
        raise ValueError("init_process_group: MASTER_PORT is not set (a free port on rank 0's "
                         "host; pipec.run picks one, or pass init_method='tcp://HOST:PORT')")
    if not 0 < port < 65536:
        raise ValueError(f"init_process_group: MASTER_PORT must be in [1, 65535], got {port}")
    return rank, world_size, local_rank, local_world_size, addr, port


def _timeout_seconds(timeout):
    if timeout is None:
        timeout = DEFAULT_TIMEOUT
    secs = timeout.total_seconds() if isinstance(timeout, datetime.timedelta) else float(timeout)
    if not secs > 0:
        raise ValueError(f"init_process_group: timeout must be positive, got {timeout!r}")
    return secs


def _choose_backend(backend, device_id):
    if backend is not None:
        return Backend(backend)
    dev_type = None
    if device_id is not None:
        dev_type = getattr(device_id, "type", None) or str(device_id).split(":")[0]
    elif is_nccl_available():
        try:
            from .. import cuda
            dev_type = "cuda" if cuda.is_available() else "cpu"
        except Exception:
            dev_type = "cpu"
    return Backend("nccl" if dev_type == "cuda" else "tcp")


# ---- the default group ----

def is_available():
    """pipec.distributed is always built (the tcp backend needs nothing but sockets)."""
    return True


def is_nccl_available():
    return bool(getattr(_C, "_comm_has_nccl", 0))


def is_initialized():
    return _state.comm is not None


def _default_group():
    if _state.comm is None:
        raise ValueError("Default process group has not been initialized, please make sure to "
                         "call init_process_group.")
    return _state.world


def _default_comm():
    """The default group's communicator (``pipec._C.Comm``), for the pipeline runtime."""
    _default_group()
    return _state.comm


def _default_store():
    """The default group's key-value store (``pipec._C.Store``)."""
    _default_group()
    return _state.store


def _default_nccl_device(local_rank):
    """The GPU of this rank when init_process_group is not told: the current device when
    the program chose one (``pipec.cuda.set_device``, anything but 0), else the local rank,
    modulo the visible devices (one GPU visible per process, as with per-rank
    ``CUDA_VISIBLE_DEVICES``, gives device 0)."""
    from .. import cuda
    n = cuda.device_count()
    if n <= 0:
        return local_rank  # the communicator reports the missing device
    cur = cuda.current_device()
    return cur if cur != 0 else local_rank % n


def init_process_group(backend=None, init_method=None, timeout=None, world_size=-1, rank=-1,
                       store=None, group_name="", pg_options=None, device_id=None):
    """Join the job's default process group (blocks until every rank has joined).

    backend: "tcp" (CPU processes; "gloo" is an alias) or "nccl" (GPUs); None picks nccl
    when this process drives a CUDA device (``device_id``, or CUDA available) and NCCL is
    built in, else tcp. init_method: "env://" (default: the variables in the module doc) or
    "tcp://HOST:PORT". timeout: a ``datetime.timedelta`` or seconds (default 5 minutes);
    every later wait of the group uses it too. On NCCL it bounds a stall: a transfer that
    could start (the GPU work it depends on is done) but has not finished after `timeout`
    aborts the communicator, and later calls raise pipec.PipelineError with the reason.
    device_id (NCCL): this rank's GPU; by default the current device when the program set
    one, else the local rank modulo the visible GPUs. ``store`` / ``group_name`` /
    ``pg_options`` are accepted for torch compatibility; a custom store is not supported.

    Raises ValueError for missing or malformed settings and pipec.PipelineError when the
    rendezvous fails (port in use, master unreachable, a rank that never arrives: the error
    names it).
    """
    global _atexit_registered
    del group_name, pg_options
    if store is not None:
        raise NotImplementedError("init_process_group: a user-provided store is not supported; "
                                  "use init_method ('env://' or 'tcp://HOST:PORT')")
    with _lock:
        if _state.comm is not None:
            raise RuntimeError("trying to initialize the default process group twice!")
        be = _choose_backend(backend, device_id)
        secs = _timeout_seconds(timeout)
        r, w, lr, lw, addr, port = _rendezvous_info(None, rank, world_size, init_method)
        device = -1
        if be == Backend.NCCL:
            if device_id is not None and getattr(device_id, "index", None) is not None:
                device = int(device_id.index)
            elif isinstance(device_id, int):
                device = device_id
            else:
                device = _default_nccl_device(lr)
        st = comm = None
        try:
            st = _C.Store(addr, port, r == 0, w, secs)
            st.barrier("init", r)
            comm = _C.Comm(st, r, w, secs, str(be), device)
            # Nobody leaves before everyone is connected: rank 0's store must outlive the
            # other ranks' reads of it.
            st.barrier("ready", r)
        except BaseException:
            if comm is not None:
                comm.destroy()
            if st is not None:
                st.close()
            raise
        _state.store, _state.comm, _state.backend = st, comm, be
        _state.rank, _state.world_size = r, w
        _state.local_rank, _state.local_world_size = lr, lw
        _state.timeout = secs
        _state.n_groups = 1
        _state.world = ProcessGroup(range(w), 0, r)
        GroupMember.WORLD = _state.world
        if not _atexit_registered:
            atexit.register(_destroy_at_exit)
            _atexit_registered = True


def destroy_process_group(group=None):
    """Leave the default group (group None or WORLD): say goodbye to the peers, free the
    communicator, and (rank 0) stop the store. A sub-group is only marked destroyed."""
    with _lock:
        if group is not None and group is not _state.world:
            if group is GroupMember.NON_GROUP_MEMBER:
                return
            group._destroyed = True
            return
        comm, st = _state.comm, _state.store
        if comm is None:
            raise ValueError("Default process group has not been initialized, please make "
                             "sure to call init_process_group.")
        _state.__init__()
        GroupMember.WORLD = None
        try:
            comm.destroy()
        finally:
            st.close()


def _destroy_at_exit():
    if _state.comm is not None:
        try:
            destroy_process_group()
        except Exception:  # exiting anyway; never mask the real error
            pass


def _group(group):
    if group is None:
        return _default_group()
    _default_group()
    if group is GroupMember.NON_GROUP_MEMBER:
        raise ValueError("this rank is not a member of the group")
    if not isinstance(group, ProcessGroup):
        raise TypeError(f"group must be a ProcessGroup or None, got {type(group).__name__}")
    if group._destroyed:
        raise ValueError("the group was destroyed")
    if group.rank() < 0:
        raise ValueError(f"rank {_state.rank} is not a member of {group}")
    return group


def get_rank(group=None):
    """This process's rank in group (default: the world); -1 when not a member."""
    if group is GroupMember.NON_GROUP_MEMBER:
        return -1
    g = _default_group() if group is None else group
    return g.rank()


def get_world_size(group=None):
    if group is GroupMember.NON_GROUP_MEMBER:
        return -1
    g = _default_group() if group is None else group
    return g.size()


def get_backend(group=None):
    _group(group)
    return _state.backend


def get_node_local_rank(fallback_rank=None):
    """This process's rank on its node (LOCAL_RANK and its Slurm/Open MPI equivalents)."""
    if _state.comm is not None:
        return _state.local_rank
    v = _int_var(os.environ, ("LOCAL_RANK", "SLURM_LOCALID", "OMPI_COMM_WORLD_LOCAL_RANK"),
                 "the rank on this node")
    if v is not None:
        return v
    if fallback_rank is not None:
        return int(fallback_rank)
    raise RuntimeError("LOCAL_RANK is not set (start the job with pipec.run)")


def new_group(ranks=None, timeout=None, backend=None, pg_options=None,
              use_local_synchronization=False):
    """A sub-group of the given global ranks (all ranks when None). Every rank of the job must
    call it, in the same order; ranks outside get ``GroupMember.NON_GROUP_MEMBER``. The group
    shares the default communicator (same backend and timeout)."""
    del timeout, pg_options, use_local_synchronization
    with _lock:
        _default_group()
        if backend is not None and Backend(backend) != _state.backend:
            raise ValueError(f"new_group: backend {backend!r} differs from the default group's "
                             f"{_state.backend!r}; pipec groups share its communicator")
        ranks = list(range(_state.world_size)) if ranks is None else sorted(int(r) for r in ranks)
        if len(set(ranks)) != len(ranks) or any(not 0 <= r < _state.world_size for r in ranks):
            raise ValueError(f"new_group: ranks must be distinct and in [0, "
                             f"{_state.world_size}), got {ranks}")
        gid = _state.n_groups
        _state.n_groups += 1
        if gid >= 1 << (62 - _GROUP_TAG_BITS):
            raise RuntimeError("new_group: too many groups")
        if _state.rank not in ranks:
            return GroupMember.NON_GROUP_MEMBER
        return ProcessGroup(ranks, gid, _state.rank)


def get_process_group_ranks(group):
    return _group(group).ranks


def get_global_rank(group, group_rank):
    g = _group(group)
    if not 0 <= group_rank < g.size():
        raise ValueError(f"group rank {group_rank} is out of range for {g}")
    return g.ranks[group_rank]


def get_group_rank(group, global_rank):
    g = _group(group)
    if global_rank not in g.ranks:
        raise ValueError(f"rank {global_rank} is not in {g}")
    return g.ranks.index(global_rank)


# ---- communication ----

def _check_tag(tag):
    if not 0 <= tag < _USER_TAG_LIMIT:
        raise ValueError(f"tag must be in [0, 2**61), got {tag} (larger tags are reserved for "
                         "the pipeline runtime and group collectives)")


def _check_member(g, rank, what):
    if rank not in g.ranks:
        raise ValueError(f"{what} rank {rank} is not a member of {g}")


def send(tensor, dst, group=None, tag=0):
    """Send a contiguous tensor to global rank dst (returns when it is on its way)."""
    g = _group(group)
    _check_member(g, dst, "dst")
    _check_tag(tag)
    _state.comm.send(tensor, dst, tag)


def recv(tensor, src=None, group=None, tag=0):
    """Receive into tensor the message that global rank src sent with tag; returns src.
    The sizes must match. Receiving from any source (src=None) is not supported."""
    g = _group(group)
    if src is None:
        raise NotImplementedError("recv: src=None (any source) is not supported; name the "
                                  "sender")
    _check_member(g, src, "src")
    _check_tag(tag)
    _state.comm.recv(tensor, src, tag)
    return src


def barrier(group=None, async_op=False, device_ids=None):
    """Wait until every rank of the group has called barrier()."""
    del device_ids
    if async_op:
        raise NotImplementedError("barrier: async_op=True is not supported")
    g = _group(group)
    comm = _state.comm
    if g is _state.world:
        comm.barrier()
        return
    tag, leader, me = g._next_tag(), g.ranks[0], _state.rank
    if me == leader:
        for r in g.ranks[1:]:
            comm.recv_bytes(r, tag)
        for r in g.ranks[1:]:
            comm.send_bytes(b"", r, tag)
    else:
        comm.send_bytes(b"", leader, tag)
        comm.recv_bytes(leader, tag)


def all_reduce(tensor, op=ReduceOp.SUM, group=None, async_op=False):
    """Sum tensor over the group, in place; every rank ends with the same values."""
    if op != ReduceOp.SUM and str(op).lower() not in ("sum", "reduceop.sum"):
        raise NotImplementedError(f"all_reduce: only ReduceOp.SUM is supported, got {op!r}")
    if async_op:
        raise NotImplementedError("all_reduce: async_op=True is not supported")
    g = _group(group)
    comm = _state.comm
    if g is _state.world:
        comm.all_reduce_sum(tensor)
        return
    from ..autograd import no_grad
    from .._tensor import empty_like
    tag, leader, me = g._next_tag(), g.ranks[0], _state.rank
    with no_grad():
        if me == leader:
            tmp = empty_like(tensor)
            for r in g.ranks[1:]:       # fixed order: the same sum on every run
                comm.recv(tmp, r, tag)
                tensor.add_(tmp)
            for r in g.ranks[1:]:
                comm.send(tensor, r, tag)
        else:
            comm.send(tensor, leader, tag)
            comm.recv(tensor, leader, tag)


def broadcast(tensor, src, group=None, async_op=False):
    """Copy global rank src's tensor into tensor on every rank of the group."""
    if async_op:
        raise NotImplementedError("broadcast: async_op=True is not supported")
    g = _group(group)
    _check_member(g, src, "src")
    tag, me, comm = g._next_tag(), _state.rank, _state.comm
    if me == src:
        for r in g.ranks:
            if r != src:
                comm.send(tensor, r, tag)
    else:
        comm.recv(tensor, src, tag)


def broadcast_object_list(object_list, src=0, group=None, device=None):
    """Replace object_list's items on every rank with global rank src's (pickled)."""
    del device
    g = _group(group)
    _check_member(g, src, "src")
    me, comm = _state.rank, _state.comm
    data = pickle.dumps(list(object_list)) if me == src else None
    if g is _state.world:
        data = comm.broadcast_bytes(data, src)
    else:
        tag = g._next_tag()
        if me == src:
            for r in g.ranks:
                if r != src:
                    comm.send_bytes(data, r, tag)
        else:
            data = comm.recv_bytes(src, tag)
    if me != src:
        objs = pickle.loads(data)
        if len(objs) != len(object_list):
            raise ValueError(f"broadcast_object_list: rank {src} sent {len(objs)} objects, this "
                             f"rank's list has {len(object_list)}")
        object_list[:] = objs

"""Multi-process pipelines: a schedule whose stages live in several processes.

Each process (one rank of ``pipec.distributed``'s process group, or of the stages' group)
holds the stages the schedule places on it and runs its own lowered action list in C; the
runtime moves activations and gradients to the other ranks through the group's
communicator (TCP between CPU processes, NCCL between GPUs).

The first step prepares the runtime on every rank, in this order:
  1. the ranks compare what each will run (schedule, microbatches, stages, placement, the
     lowered orders), so that a mismatch is an error naming the rank, not a hang;
  2. shape inference: stages are visited in order; each rank runs its stages forward once on
     the first microbatch (inputs from other ranks are zeros of the announced shape), with
     autograd on so that ``requires_grad`` of every value is known, and announces its
     outputs' (dtype, shape, requires_grad) to the ranks that consume them. Manual stages are
     traced into Programs here;
  3. the C runtime gets every stage's wiring and, for its own stages, the metadata of what
     crosses ranks; values that do not match it later are "shape mismatch" / "dtype
     mismatch" errors (:class:`PipeliningShapeError` for model inputs, checked here).
As in torch, every microbatch must have the shapes of the first one.
"""

import hashlib
import pickle

from .. import _C
from .._tensor import zeros
from ..autograd import enable_grad
from ._IR import _KeepBuffers
from ._runtime import _check_keywords_reach, _Executor, _pipe_sources, _to_device

Tensor = _C.Tensor

# Tags in [2**61, 2**62) belong to the pipeline runtime (csrc/runtime/runtime.c: bit 61,
# then direction, step (16 bits), stage (12), input (12), microbatch (20)); these two
# families use the gradient direction with every step, stage and input bit set, which the
# runtime only reaches at step 65535 of a 4096-stage pipeline with 4096 inputs.
_TAG_BASE = (1 << 61) | (1 << 60) | (0xFFFF << 44) | (0xFFF << 32) | (0xFFF << 20)
_FP_TAG = _TAG_BASE | 0xFFFFF


def _meta_tag(stage):
    return _TAG_BASE | stage


def _tied_tag(k):  # tied parameter k's gradient sum (stages < 4096 < 2**19)
    if not 0 <= k < (1 << 19) - 1:
        raise ValueError(f"a pipeline may have at most {(1 << 19) - 1} tied parameters")
    return _TAG_BASE | (1 << 19) | k


class PipeliningShapeError(RuntimeError):
    """A stage input or output whose shape or dtype differs from what shape inference fixed
    at the first step (message: "shape mismatch" or "dtype mismatch")."""


def _meta_of(t):
    """(dtype name, shape, requires_grad) of a tensor: what crosses ranks."""
    return (str(t.dtype).rsplit(".", 1)[-1], tuple(t.shape), bool(t.requires_grad))


def _dtype(name):
    import pipec
    return getattr(pipec, name)


def _c_metas(metas):
    """Metas as the C runtime takes them: (dtype object, shape, requires_grad)."""
    return [(_dtype(a), tuple(b), bool(c)) for a, b, c in metas]


def _check_value(t, meta, what):
    name, shape, _ = meta
    got = str(t.dtype).rsplit(".", 1)[-1]
    if got != name:
        raise PipeliningShapeError(f"{what}: dtype mismatch: expected {name} (from shape "
                                   f"inference at the first step), got {got}")
    if tuple(t.shape) != tuple(shape):
        raise PipeliningShapeError(f"{what}: shape mismatch: expected {tuple(shape)} (from "
                                   f"shape inference at the first step), got {tuple(t.shape)}")


class _DistExecutor(_Executor):
    """Runs this process's rank of a schedule whose stages span processes.

    stages: this rank's PipelineStage objects; stage_to_rank: pipeline rank of every stage;
    orders: lowered action lists of every pipeline rank; ranks: global rank of each
    pipeline rank; comm: the group's ``_C.Comm``; fingerprint: what every rank must agree on."""

    def __init__(self, stages, num_stages, stage_to_rank, orders, n_microbatches, loss_fn,
                 scale_grads, ranks, comm, fingerprint):
        self.num_stages = num_stages
        self.ranks = list(ranks)
        self.comm = comm
        self.my_global = comm.rank
        self.my_pp = self.ranks.index(self.my_global)
        self.local = {s.stage_index: s for s in stages}
        self.fingerprint = dict(fingerprint)
        super().__init__(stages, stage_to_rank, orders, n_microbatches, loss_fn, scale_grads,
                         timeout=comm.timeout)
        self._model_in_meta = {}   # model input index -> meta (for the local stages)
        self._broken = None        # why a failed step left the ranks out of step

    def _check_indices(self):
        pass  # only this rank's stages are here

    @property
    def holds_last(self):
        return self.num_stages - 1 in self.local

    def _pipe(self):
        st = next(iter(self.local.values()))
        return st._pipe_wiring[0] if st._pipe_wiring is not None else None

    def _first_stage(self):
        return self.local.get(0)

    def _last_stage(self):
        return self.local.get(self.num_stages - 1)

    def _retrace(self, chunk):
        """Stages whose modules changed training mode: the runtime was built together with
        the other ranks (shape inference), so it is kept when the stage traced in the new
        mode is the same code (no dropout and the like); otherwise this raises."""
        for st in [st for st in self.stages if st._retrace_needed()]:
            dev = str(st.device)
            if st.stage_index == 0:
                args, kwargs = _to_device(chunk, dev)
            else:
                args = [zeros(m[1], dtype=_dtype(m[0]), device=dev)
                        for m in self._in_metas[st.stage_index]]
                kwargs = {}
            if st.stage_index == 0 and not (args or kwargs):
                same = False
            else:  # the same code on the same parameters (not an EMA copy in eval, say)
                prog, ext_names = st._trace_program(args, kwargs)[:2]
                same = prog.same_code(st._program) and list(ext_names) == list(st._ext_names)
            if not same:
                raise RuntimeError(
                    f"stage {st.stage_index} changed training mode (train()/eval()) since it "
                    "was traced at the first step, and traced in the new mode it runs other "
                    "code or reads other parameters (dropout, say); a multi-process "
                    "pipeline keeps the programs traced at its first step, so build new "
                    "stages and a new schedule for the other mode")
            st._traced_modes = st._modes()

    def _peer(self, stage):
        return self.ranks[self.stage_to_rank[stage]]

    # -- step 1: every rank runs the same pipeline --

    def _exchange_fingerprints(self, n_inputs, input_stages):
        """Compare pipelines with every other rank, and check that the ranks whose stages
        read the model's inputs (input_stages) were given some (n_inputs here)."""
        mine = dict(self.fingerprint)
        mine["orders"] = hashlib.sha256(repr(sorted(self.orders.items())).encode()).hexdigest()
        # the tied-gradient exchange needs every holder (keep the setting fixed afterwards)
        mine["sum_tied_grads"] = bool(self.sum_tied_grads)
        data = pickle.dumps((mine, n_inputs))
        problems = []
        given = {self.my_global: n_inputs}
        # pairwise, lower rank first: safe on transports that match in posting order; every
        # pair exchanges before anyone raises, so all ranks fail together with the reason
        for peer in self.ranks:
            if peer == self.my_global:
                continue
            if self.my_global < peer:
                self.comm.send_bytes(data, peer, _FP_TAG)
                theirs, given[peer] = pickle.loads(self.comm.recv_bytes(peer, _FP_TAG))
            else:
                theirs, given[peer] = pickle.loads(self.comm.recv_bytes(peer, _FP_TAG))
                self.comm.send_bytes(data, peer, _FP_TAG)
            for key in mine:
                if theirs.get(key) != mine[key]:
                    detail = "" if key == "orders" else f": {theirs.get(key)!r} there, " \
                                                        f"{mine[key]!r} here"
                    problems.append(f"rank {peer} runs a different pipeline than rank "
                                    f"{self.my_global}: the {key} differs{detail}")
                    break
        if problems:
            raise _C.PipelineError("; ".join(problems))
        for s in sorted(input_stages):
            r = self._peer(s)
            if not given.get(r):
                raise ValueError(f"stage {s} takes the model's inputs, but rank {r} called "
                                 "step()/eval() without them: pass the inputs on that rank")

    # -- step 2: shape inference; step 3: the C runtime --

    def _build(self, first_call):
        n = self.num_stages
        any_stage = next(iter(self.local.values()))
        pipe_srcs = None
        first = self.local.get(0)
        if first is not None and first._program is None and (first_call[0] or first_call[1]):
            # a manual first stage is traced on the model's inputs as called
            args, kwargs = _to_device(first_call, str(first.device))
            _check_keywords_reach(self.stages, kwargs)
            first._ensure_program(args, kwargs)
            first_call = (args, kwargs)
        first_chunk = self._input_leaves(first_call)
        if any_stage._pipe_wiring is not None:
            pipe_srcs = _pipe_sources(any_stage._pipe_wiring[0], n)
            input_stages = {s for s, srcs in enumerate(pipe_srcs) if any(p < 0 for p, _ in srcs)}
        else:
            input_stages = {0}
        self._exchange_fingerprints(len(first_chunk), input_stages)
        if pipe_srcs is not None:
            if self.comm.backend == "nccl":
                # NCCL matches messages by order, not tag, and the lowered orders only
                # order values between a stage and the next one
                for c, srcs in enumerate(pipe_srcs):
                    for p, _ in srcs:
                        if p >= 0 and p != c - 1 and self._peer(p) != self._peer(c):
                            raise NotImplementedError(
                                f"stage {c} reads an output of stage {p} on another rank "
                                "(a skip connection across processes, or a model output made "
                                "before the last stage, which the last stage passes on): the "
                                "nccl backend "
                                "moves only values between consecutive stages across "
                                "ranks; pass the value through the stages in between, or "
                                "use the tcp backend")
        meta_out, vals_out, in_metas = {}, {}, {}

        def outputs_meta(ps):
            if ps not in meta_out:  # announced by the producer's rank
                meta_out[ps] = pickle.loads(self.comm.recv_bytes(self._peer(ps),
                                                                 _meta_tag(ps)))
            return meta_out[ps]

        def sources(s):
            if pipe_srcs is not None:
                return pipe_srcs[s]
            if s == 0:
                return [(-1, k) for k in range(len(first_chunk))]
            return [(s - 1, k) for k in range(len(outputs_meta(s - 1)))]

        def consumers(s):
            if pipe_srcs is not None:
                return [c for c in range(s + 1, n) if any(p == s for p, _ in pipe_srcs[c])]
            return [s + 1] if s + 1 < n else []

        for s in range(n):
            st = self.local.get(s)
            if st is None:
                continue
            dev = str(st.device)
            vals, metas = [], []
            for ps, pi in sources(s):
                if ps < 0:
                    if pi >= len(first_chunk):
                        raise ValueError(
                            f"stage {s} takes the model's input {pi}: pass the inputs to "
                            f"step()/eval() on rank {self.my_global}")
                    v = first_chunk[pi].to(dev)
                    m = _meta_of(v)
                    m = (m[0], m[1], False)
                    self._model_in_meta[pi] = m
                elif ps in self.local:
                    v = vals_out[ps][pi]
                    m = meta_out[ps][pi]
                else:
                    m = outputs_meta(ps)[pi]
                    v = zeros(m[1], dtype=_dtype(m[0]), device=dev)
                    if m[2]:
                        v.requires_grad_(True)
                vals.append(v)
                metas.append(m)
            if st._program is None:
                st._ensure_program(vals)
            with enable_grad(), _KeepBuffers(st.submod):  # not a training step
                outs = list(st._program.run(vals, st._externals()))
            st._check_static(vals, outs)
            meta_out[s] = [_meta_of(o) for o in outs]
            vals_out[s] = []
            for o in outs:
                d = o.detach()
                if o.requires_grad:
                    d.requires_grad_(True)
                vals_out[s].append(d)
            in_metas[s] = metas
            data = pickle.dumps(meta_out[s])
            for peer in sorted({self._peer(c) for c in consumers(s)} - {self.my_global}):
                self.comm.send_bytes(data, peer, _meta_tag(s))
        del vals_out
        self._in_metas = in_metas

        desc = []
        for s in range(n):
            st = self.local.get(s)
            rank = self._peer(s)
            if st is None:
                # another rank's stage: only its wiring (what this rank can know of it)
                if pipe_srcs is not None:
                    srcs = pipe_srcs[s]
                    n_out = len(any_stage._pipe_wiring[0].stage_wiring(s)[1])
                else:
                    srcs = [(s - 1, k) for k in range(len(meta_out.get(s - 1, ())))] \
                        if s > 0 else []
                    n_out = len(meta_out.get(s, ()))
                desc.append((rank, "cpu", None, [], srcs, n_out))
                continue
            prog = st._program
            desc.append((rank, str(st.device), prog, list(st._externals()),
                         [tuple(x) for x in sources(s)], len(prog.output_slots),
                         _c_metas(in_metas[s]), _c_metas(meta_out[s])))
        self._make_runtime(desc)
        self._rt.set_comm(self.comm, self.my_global)

    # -- each step --

    def _check_inputs(self, per_mb, arg_mbs):
        if per_mb and per_mb[0] and self._pipe() is not None:
            # a Pipe may have been traced on microbatches of other shapes than these
            super()._check_inputs(per_mb, arg_mbs)
        for m, ts in enumerate(per_mb):
            for i, meta in self._model_in_meta.items():
                if i >= len(ts):
                    raise ValueError(f"microbatch {m} has {len(ts)} tensor inputs; stage "
                                     f"inputs need {i + 1}")
                _check_value(ts[i], meta, f"microbatch {m} input {i}")

    def run(self, *args, **kwargs):
        if self._broken:
            raise _C.PipelineError(
                f"an earlier step of this pipeline failed ({self._broken}); the ranks' "
                "messages are no longer in step: build new stages and a new schedule"
                + (" in a new process group" if self.comm.backend == "nccl" else ""))
        return super().run(*args, **kwargs)

    def _drive(self, errors):
        try:
            self._rt.run_rank(self.my_global, self.orders[self.my_pp])
        except BaseException as e:
            msg = str(e)
            self._broken = msg.splitlines()[0][:300] if msg else type(e).__name__
            if self.comm.backend == "nccl":
                self.comm.abort()  # receives still queued on the GPU would misalign
            if isinstance(e, RuntimeError) and ("shape mismatch" in msg or
                                                "dtype mismatch" in msg):
                e = PipeliningShapeError(msg)
            errors[self.my_global] = e

    def _sum_tied(self, tied):
        """The exchange is part of the step: on failure the pipeline is broken (and an NCCL
        communicator aborted, so no unmatched transfer pairs with a later one); on NCCL the
        step ends when the exchanged sums have arrived."""
        self._exchanged = False
        try:
            super()._sum_tied(tied)
            if self._exchanged and self.comm.backend == "nccl":
                self.comm.wait_idle()
        except BaseException as e:
            msg = str(e)
            self._broken = "tied gradient exchange: " + (msg.splitlines()[0][:280] if msg
                                                          else type(e).__name__)
            if self.comm.backend == "nccl":
                self.comm.abort()
            raise

    def _sum_tied_across_ranks(self, k, holders, like, total):
        """Adds the sums of the other ranks holding copies of tied parameter k: a pairwise
        exchange with each, pairs taken in one global order and the lower rank of a pair
        sending first, so neither TCP nor NCCL's in-order matching can deadlock."""
        peers = sorted({self._peer(s) for s in holders})
        me = self.my_global
        if peers == [me]:
            return total
        from ..autograd import no_grad
        self._exchanged = True
        with no_grad():
            mine = total if total is not None else zeros(like.shape, dtype=like.dtype,
                                                         device=str(like.device))
            if self.comm.backend != "nccl":  # host transports move host memory
                mine = mine.to("cpu")
            mine = mine.contiguous()
            acc = mine.clone()
            for a in peers:
                for b in peers:
                    if a >= b or me not in (a, b):
                        continue
                    other = b if me == a else a
                    buf = zeros(mine.shape, dtype=mine.dtype, device=str(mine.device))
                    if me < other:
                        self.comm.send(mine, other, _tied_tag(k))
                        self.comm.recv(buf, other, _tied_tag(k))
                    else:
                        self.comm.recv(buf, other, _tied_tag(k))
                        self.comm.send(mine, other, _tied_tag(k))
                    acc.add_(buf)
            return acc.to(str(like.device))

    def _collect_outputs(self):
        if not self.holds_last:
            return None
        return super()._collect_outputs()

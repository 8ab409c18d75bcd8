"""Schedule classes and LocalPipeline on top of the C runtime (csrc/runtime/).

Python here only prepares a step: it splits inputs into microbatches, turns the schedule
into lowered per-rank action lists (the C generators in csrc/sched/), and starts one host
thread per rank; each thread runs its whole action list in C with the GIL released. Python
runs again only for the loss function, custom autograd Functions and dW runners.
"""

import contextlib
import itertools
import signal
import threading
import time

from .. import _C
from ..autograd import is_grad_enabled
from ..nn.modules.module import changes
from . import microbatch as _mb
from . import schedules as _sched
from ._IR import _KeepBuffers, _flatten, _unflatten
from .stage import PipelineStage, _stage_from_pipe

__all__ = ["PipelineScheduleSingle", "PipelineScheduleMulti", "ScheduleGPipe", "Schedule1F1B",
           "ScheduleInterleaved1F1B", "ScheduleLoopedBFS", "ScheduleInterleavedZeroBubble",
           "ScheduleZBVZeroBubble", "ScheduleDualPipeV", "get_schedule_class", "LocalPipeline"]

Tensor = _C.Tensor


# ---- the executor shared by schedules and LocalPipeline ----

def _pipe_sources(pipe, n_stages):
    """Per stage of a Pipe, where each input comes from: (-1, model input) or
    (stage, output)."""
    produced = {}
    srcs_all = []
    for i in range(n_stages):
        in_slots, out_slots = pipe.stage_wiring(i)
        srcs = []
        for s in in_slots:
            if s in produced:
                srcs.append(produced[s])
            elif s in pipe._input_slots:
                srcs.append((-1, pipe._input_slots.index(s)))
            else:
                raise RuntimeError(f"stage {i} input slot {s} has no producer")
        for o, s in enumerate(out_slots):
            produced[s] = (i, o)
        srcs_all.append(srcs)
    return srcs_all


class _Executor:
    """Runs a schedule over stages that all live in this process.

    stages: PipelineStage objects for every stage (any order); ranks: stage -> rank;
    orders: per-rank lowered action lists (strings)."""

    def __init__(self, stages, stage_to_rank, orders, n_microbatches, loss_fn, scale_grads,
                 timeout=300.0):
        self.stages = sorted(stages, key=lambda s: s.stage_index)
        self._check_indices()
        self.stage_to_rank = stage_to_rank
        self.orders = orders
        self.n_microbatches = n_microbatches
        self.loss_fn = loss_fn
        self.scale_grads = scale_grads
        self.timeout = timeout
        self._rt = None
        self._targets = None
        self._timeline = []
        self.custom_fns = {}      # action type name -> fn(action, ctx)
        self.schedule_ref = None
        self._arg_mbs = None
        self.sum_tied_grads = True

    def _tied_groups(self):
        """[(number, stage indices holding a copy, {local stage index: Parameter})] for the
        parameters pipeline() copied into several stages (tied weights), by number (the
        same order on every rank). Looked up at each step: parameters may be replaced."""
        groups = {}
        for st in self.stages:
            tied = getattr(st.submod, "_tied", None) or {}
            if not tied:
                continue
            params = dict(st.submod.named_parameters())
            for name, (k, holders) in tied.items():
                p = params.get(name)
                if p is not None:
                    groups.setdefault(k, (tuple(holders), {}))[1][st.stage_index] = p
        return [(k, h, loc) for k, (h, loc) in sorted(groups.items())]

    def _check_indices(self):
        idx = [s.stage_index for s in self.stages]
        if idx != list(range(len(idx))):
            raise ValueError(f"the pipeline's stages must be 0..{len(idx) - 1}, got {idx}")

    # -- building the runtime on the first step (traces manual stages) --

    def _wiring(self, n_inputs):
        """Input sources per stage (n_inputs: tensors among the model's inputs)."""
        pipe_stage = self.stages[0]._pipe_wiring
        if pipe_stage is not None:
            return _pipe_sources(pipe_stage[0], len(self.stages))
        # manual stages form a chain: stage i's inputs are stage i-1's outputs in order
        srcs_all = []
        n_prev = None
        for st in self.stages:
            if st.stage_index == 0:
                srcs_all.append([(-1, k) for k in range(n_inputs)])
            else:
                srcs_all.append([(st.stage_index - 1, k) for k in range(n_prev)])
            n_prev = len(st._program.output_slots)
        return srcs_all

    def _signature(self):
        """The InputSignature the model's inputs are bound with (None: not known here)."""
        pipe = self._pipe()
        if pipe is not None:
            return pipe._in_sig
        first = self._first_stage()
        return first._in_sig if first is not None else None

    def _pipe(self):
        st = self.stages[0]
        return st._pipe_wiring[0] if st._pipe_wiring is not None else None

    def _first_stage(self):
        return self.stages[0]

    def _last_stage(self):
        return self.stages[-1]

    def _input_leaves(self, chunk):
        """The tensors of one microbatch's (args, kwargs), in the stage Programs' order."""
        args, kwargs = chunk
        if not args and not kwargs:
            return []
        sig = self._signature()
        if sig is None:  # a hand-made Program: tensors by position
            return _flatten((tuple(args), dict(kwargs)))[0]
        return sig.bind(args, kwargs, "the pipeline's inputs")

    def _run_chain(self, chunk, program_of, check_static=False):
        """Run manual stages one after another on one microbatch, without autograd and
        leaving their buffers as they were (not a training step). program_of(stage, args,
        kwargs) gives the Program to run and its input tensors, or None to stop there
        (then False is returned)."""
        from ..autograd import no_grad
        with contextlib.ExitStack() as keep:
            for st in self.stages:
                keep.enter_context(_KeepBuffers(st.submod))
            args, kwargs = chunk
            for st in self.stages:
                args, kwargs = _to_device((tuple(args), dict(kwargs)), str(st.device))
                got = program_of(st, args, kwargs)
                if got is None:
                    return False
                prog, vals = got
                with no_grad():
                    outs = list(prog.run(vals, st._externals()))
                if check_static:
                    st._check_static(vals, outs)
                args, kwargs = outs, {}
        return True

    def _trace_chain(self, chunk):
        """Trace manual stages one after another on the first microbatch."""
        _check_keywords_reach(self.stages, chunk[1])

        def program_of(st, args, kwargs):
            if st._program is None:
                st._ensure_program(args, kwargs)
            first = st is self.stages[0]
            return st._program, self._input_leaves((args, kwargs)) if first else list(args)

        self._run_chain(chunk, program_of, check_static=True)

    def _build(self, first_chunk):
        if self.stages[0]._pipe_wiring is None:
            self._trace_chain(first_chunk)
        srcs = self._wiring(len(self._input_leaves(first_chunk)))
        desc = []
        for st, s in zip(self.stages, srcs):
            prog = st._program
            desc.append((self.stage_to_rank[st.stage_index], str(st.device), prog,
                         list(st._externals()), list(s), len(prog.output_slots)))
        self._make_runtime(desc)

    def _make_runtime(self, desc):
        dw = {st.stage_index: (lambda b=st.dw_builder: (lambda mb: b()()))()
              for st in self.stages if st.dw_builder is not None}
        self._rt = _C.Runtime(desc, self.n_microbatches,
                              self._loss if self.loss_fn is not None else None, dw or None,
                              self.timeout, self._custom if self.custom_fns else None,
                              list(self.custom_fns) or None)
        self._built_externals = {st.stage_index: list(st._externals())
                                 for st in self.stages if st._program is not None}
        self._out_structure = self._output_structure()
        self._owners = {st.stage_index: st._external_owners() for st in self.stages
                        if st.stage_index in self._built_externals}
        self._seen_changes = changes()
        self._verified_shapes = set()
        self._held_params = None  # made by _hold_grads

    def _output_structure(self):
        """(positions, spec): the model's outputs as positions among the last stage's
        outputs, and the structure to rebuild them in (None: the outputs as they come)."""
        last = self._last_stage()
        if last is None:
            return None
        pipe = self._pipe()
        if pipe is not None:
            outs = list(pipe.stage_wiring(pipe.num_stages - 1)[1])
            return [outs.index(s) for s in pipe._out_slots], pipe._out_spec
        if last._out_spec is None:
            return None
        return list(range(len(last._program.output_slots))), last._out_spec

    def _structured(self, outputs):
        """One microbatch's last-stage outputs as the model returns them."""
        if outputs is None:
            return None
        if self._out_structure is None:
            return outputs[0] if len(outputs) == 1 else tuple(outputs)
        pos, spec = self._out_structure
        return _unflatten([outputs[i] for i in pos], spec)

    def _refresh(self, chunk):
        """Before a step: follow changes to the stages since the runtime was built. A
        manual stage whose modules changed training mode is traced again (the runtime is
        rebuilt; chunk: this step's first microbatch); a replaced parameter or buffer is
        handed to the runtime. Modes and the module tree are looked at only when a Module
        attribute changed (nn's change counter); the parameters themselves every step,
        by identity through cached owner dicts (load_state_dict(assign=True), .to() and
        direct _parameters edits replace them without an attribute assignment)."""
        if self._rt is None:
            return
        if changes() != self._seen_changes:
            if any(st._retrace_needed() for st in self.stages):
                self._retrace(chunk)
                if self._rt is None:
                    return
            self._owners = {st.stage_index: st._external_owners() for st in self.stages
                            if st.stage_index in self._built_externals}
            self._seen_changes = changes()
            self._held_params = None
        for st in self.stages:
            owners = self._owners.get(st.stage_index)
            if owners is None:
                continue
            before = self._built_externals[st.stage_index]
            now = [d.get(k) for d, k in owners]
            if all(a is b for a, b in zip(now, before)):
                continue
            for name, old, new in zip(st._ext_name_list(), before, now):
                if new is None:
                    raise RuntimeError(f"stage {st.stage_index}: {name} was removed "
                                       "after the stage was traced")
                if new is not old and (new.dtype != old.dtype or
                                       tuple(new.shape) != tuple(old.shape) or
                                       str(new.device) != str(old.device)):
                    raise ValueError(
                        f"stage {st.stage_index}: {name} was replaced by a tensor of "
                        f"another dtype, shape or device ({new.dtype}, "
                        f"{tuple(new.shape)}, {new.device}; traced with {old.dtype}, "
                        f"{tuple(old.shape)}, {old.device})")
            self._rt.set_externals(st.stage_index, now)
            self._built_externals[st.stage_index] = now
            self._held_params = None

    def _retrace(self, chunk):
        for st in self.stages:
            if st._retrace_needed():
                st._forget_program()
        self._rt = None

    def _custom(self, rank, text):
        action = _sched._Action.from_str(text)
        fn = self.custom_fns[str(action.computation_type)]
        ctx = _PipelineContext(self.schedule_ref, [a for a, _ in self._arg_mbs],
                               [k for _, k in self._arg_mbs], self._targets, self._losses,
                               self._rt, rank)
        fn(action, ctx)

    def _loss(self, outputs, mb):
        return self.loss_fn(self._structured(outputs), self._targets[mb])

    # -- one step --

    def run(self, arg_mbs, target_mbs, losses, training, record_timeline=False):
        """One step. arg_mbs: per microbatch, (args tuple, kwargs dict)."""
        self._refresh(arg_mbs[0])
        if self._rt is None:
            self._build(arg_mbs[0])
        per_mb = [self._input_leaves(chunk) for chunk in arg_mbs]
        n_in = len(per_mb[0])
        if any(len(ts) != n_in for ts in per_mb):
            raise ValueError("every microbatch must have the same number of tensor inputs")
        leaves = [t for ts in per_mb for t in ts]
        self._check_inputs(per_mb, arg_mbs)
        self._targets = target_mbs
        self._arg_mbs = arg_mbs
        self._losses = losses
        # scale_grads divides only this step's gradients by n: the gradients accumulated by
        # earlier steps are set aside and added back unscaled (torch divides the whole
        # accumulated .grad every step, which breaks gradient accumulation: torchtitan#1733)
        self._rt.begin_step(leaves, n_in or 0, training, record_timeline)
        scale = self.scale_grads and self.n_microbatches > 1
        tied = self._tied_groups() if training and self.sum_tied_grads else []
        # the step works on its own gradients (to scale them, to sum tied copies) and adds
        # them to the earlier ones only when it succeeded: a failed or interrupted step
        # leaves .grad as it was (free when .grad starts as None, the usual case)
        held = self._hold_grads() if training else None
        errors = {}
        try:
            self._drive(errors)
            if errors:
                # the first failing rank's error is the cause; others were aborted
                rank = min(errors, key=lambda r: (
                    "pipeline aborted" in str(errors[r]), r))
                raise errors[rank]
            outs = self._collect_outputs()
            if losses is not None and outs is not None:
                losses.clear()
                for m in range(self.n_microbatches):
                    losses.append(self._rt.loss(m))
            if held is not None:
                if scale:
                    for p, _ in held:
                        if p.grad is not None:
                            p.grad.mul_(1.0 / self.n_microbatches)
                if tied:
                    self._sum_tied(tied)
                for p, prev in held:
                    if p.grad is not None:
                        if prev is not None:
                            prev.add_(p.grad)  # keep the user's .grad tensor
                            p.grad = prev
                    elif prev is not None:
                        p.grad = prev
                held = None
            if training:
                self._input_grads(per_mb)
            if record_timeline:
                self._timeline = self._rt.timeline()
            return outs
        finally:
            if held is not None:  # the step failed: put the earlier gradients back
                for p, prev in held:
                    p.grad = prev
            self._rt.end_step()
            self._targets = None

    def _check_inputs(self, per_mb, arg_mbs):
        """In one process microbatches may differ in shape (a batch that n does not
        divide). If the traced code read a shape, the first microbatch's sizes may be
        constants of the Programs: the stages are traced again on each new shape, which
        must give the same Programs (checked once per shape)."""
        shapes = [tuple(tuple(t.shape) for t in ts) for ts in per_mb]
        sig = self._signature()
        traced = sig.shapes if sig is not None else shapes[0]
        if all(sh == traced for sh in shapes):
            return
        pipe = self._pipe()
        # a Pipe holds every stage's Program, also those run by other ranks
        progs = [pipe.get_stage_module(i).program for i in range(pipe.num_stages)] \
            if pipe is not None else [st._program for st in self.stages]
        if not any(p.reads_shapes for p in progs):
            return
        verified = self._verified_shapes
        for m, sh in enumerate(shapes):
            if sh == traced or sh in verified:
                continue
            if pipe is not None and getattr(pipe, "_batch_free", False) and \
                    _rows_differ_only(traced, sh):
                verified.add(sh)
                continue
            same, why = self._same_programs_for(arg_mbs[m])
            if not same:
                raise ValueError(
                    f"microbatch inputs of shapes {list(sh)}, but the stages were traced with "
                    f"{list(traced)} and read a tensor's shape while tracing (.shape, size(), "
                    f"len()); {why}, so sizes of the traced call may be constants of the "
                    "Programs. Use microbatches of the traced shapes (for pipeline(): the "
                    "mb_args given; a batch n_microbatches divides), or keep sizes out of "
                    "Python (view(-1, d) rather than view(x.shape[0], d))")
            verified.add(sh)

    def _same_programs_for(self, chunk):
        """(True, "") when tracing the stages on this microbatch gives the Programs they
        run, else (False, why not)."""
        pipe = self._pipe()
        if pipe is not None:
            from ._IR import _trace_pieces
            source = getattr(pipe, "_source", None)
            module = source[0]() if source else None
            if module is None:
                return False, "the model pipeline() traced is gone, so they cannot be traced " \
                              "again on these shapes to check"
            try:
                pieces = _trace_pieces(module, chunk[0], chunk[1], *source[1:])[1]
            except Exception as e:  # noqa: BLE001 - e.g. the model now spread over devices
                return False, f"tracing the model again on these shapes failed ({e})"
            same = len(pieces) == pipe.num_stages and all(
                piece[0].same_code(pipe.get_stage_module(i).program)
                for i, piece in enumerate(pieces))
            return same, "" if same else "traced again, they differ"

        def program_of(st, args, kwargs):
            prog, _, _, sig = st._trace_program(args, kwargs)
            return (prog, sig.bind(args, kwargs)) if prog.same_code(st._program) else None

        same = self._run_chain(chunk, program_of)
        return same, "" if same else "traced again, they differ"

    def _input_grads(self, per_mb):
        """Model inputs that require grad get this step's gradients, through the
        microbatches (views) into the tensors passed to step(); not scaled by
        scale_grads (which is about parameters), as in torch."""
        from ..autograd import backward
        sums = {}
        for m, leaves in enumerate(per_mb):
            if not any(t.requires_grad for t in leaves):
                continue
            for i, g in self._rt.input_grads(m):
                t = leaves[i]
                if t.requires_grad:
                    g = g.to(str(t.device))
                    sums[(m, i)] = g if (m, i) not in sums else sums[(m, i)].add_(g)
        if sums:
            backward([per_mb[m][i] for m, i in sums], list(sums.values()))

    def _sum_tied(self, tied):
        """Every copy of a tied parameter (that requires grad) gets the sum of this step's
        gradients of all copies, what the unpipelined model's one parameter gets."""
        from ..autograd import no_grad
        with no_grad():
            for k, holders, local in tied:
                first = next(iter(local.values()))
                total = None
                for p in local.values():
                    if p.grad is not None:
                        g = p.grad.to(str(first.device))
                        total = g.clone() if total is None else total.add_(g)
                total = self._sum_tied_across_ranks(k, holders, first, total)
                if total is None:
                    continue
                for p in local.values():
                    if p.requires_grad:
                        p.grad = total.to(str(p.device)).clone()

    def _sum_tied_across_ranks(self, k, holders, like, total):
        return total  # every stage is in this process

    def _drive(self, errors):
        """Run every rank's action list, one thread per rank; errors: rank -> exception."""
        def worker(rank, done):
            try:
                self._rt.run_rank(rank, self.orders[rank])
            except BaseException as e:  # reported after all threads stop
                errors[rank] = e
            finally:
                done.set()

        ranks = sorted(self.orders)
        if len(ranks) == 1:
            worker(ranks[0], threading.Event())
            return
        done = [threading.Event() for _ in ranks]
        threads = [threading.Thread(target=worker, args=(r, ev), name=f"pipec-rank{r}")
                   for r, ev in zip(ranks, done)]
        # Ctrl-C (a notebook's stop button) must never leave a rank running on after this
        # returns: the step's state is freed then. While the threads start, SIGINT is only
        # noted (Python raises KeyboardInterrupt wherever the main thread happens to be);
        # afterwards it arrives in the wait, which stops every rank at its next action and
        # waits for all of them. (Events, not Thread.join: an interrupted join can leave a
        # running thread looking finished.)
        noted = []
        prev = None
        if threading.current_thread() is threading.main_thread():
            prev = signal.signal(signal.SIGINT, lambda signum, frame: noted.append(signum))
        try:
            for t in threads:
                t.start()
            if prev is not None:
                signal.signal(signal.SIGINT, prev)
                prev = None
            if noted:  # deliver it now to whatever handler the program has
                signal.raise_signal(signal.SIGINT)
            for ev in done:
                ev.wait()
        except BaseException:
            if prev is not None:
                signal.signal(signal.SIGINT, prev)
            self._rt.interrupt()
            for t, ev in zip(threads, done):
                while t.ident is not None and not ev.is_set():  # started ones only
                    try:
                        ev.wait()
                    except KeyboardInterrupt:
                        pass
            raise
        finally:
            # every started rank has finished its work here; let the threads exit (a stop
            # pressed now still reaches the caller, after the join)
            stop = False
            for t in (t for t in threads if t.ident is not None):
                while True:
                    try:
                        t.join()
                        break
                    except KeyboardInterrupt:
                        stop = True
            if stop:
                raise KeyboardInterrupt

    def _collect_outputs(self):
        """The model's outputs per microbatch, in the model's structure."""
        return [self._structured(self._rt.outputs(m)) for m in range(self.n_microbatches)]

    def _hold_grads(self):
        """[(parameter, its .grad)] for every distinct parameter of the stages and their
        Programs, with .grad cleared so that the step's backward starts from zero. The list
        is made again only after _refresh saw a change (it drops it then)."""
        if self._held_params is None:
            seen, params = set(), []
            programs = (t for ts in self._built_externals.values() for t in ts
                        if t is not None and t._is_param)
            for p in itertools.chain((p for st in self.stages for p in st.submod.parameters()),
                                     programs):
                if id(p) not in seen:
                    seen.add(id(p))
                    params.append(p)
            self._held_params = params
        held = [(p, p.grad) for p in self._held_params]
        for p in self._held_params:
            p.grad = None
        return held


class _PipelineContext:
    """What a custom function registered with ``register_custom_function`` receives:
    ``schedule_ref``, ``arg_mbs``, ``kwarg_mbs``, ``target_mbs``, ``losses`` (torch's fields),
    plus ``rank`` and ``run_builtin(action)``, which runs pipec's own handler for an action
    (the stage work is C, so this is how a custom function delegates to it)."""

    def __init__(self, schedule_ref, arg_mbs, kwarg_mbs, target_mbs, losses, rt, rank):
        self.schedule_ref = schedule_ref
        self.arg_mbs = arg_mbs
        self.kwarg_mbs = kwarg_mbs
        self.target_mbs = target_mbs
        self.losses = losses
        self.rank = rank
        self._rt = rt

    def run_builtin(self, action):
        self._rt.run_builtin(self.rank, str(action))


def _split_inputs(args, kwargs, n, args_chunk_spec, kwargs_chunk_spec):
    """Per microbatch, (args, kwargs) of the model's inputs. Keyword arguments are matched
    to the traced call by name (InputSignature.bind)."""
    arg_mbs, kwarg_mbs = _mb.split_args_kwargs_into_chunks(
        tuple(args), dict(kwargs), n, args_chunk_spec, kwargs_chunk_spec if kwargs else None)
    return list(zip(arg_mbs, kwarg_mbs))


def _to_device(obj, dev):
    """obj with every tensor in its nested tuples, lists and dicts moved to dev."""
    leaves, spec = _flatten(obj)
    return _unflatten([t.to(dev) for t in leaves], spec)


def _rows_differ_only(a, b):
    """Two lists of tensor shapes that differ at most in their first sizes."""
    return len(a) == len(b) and all(len(x) == len(y) and len(x) >= 1 and x[1:] == y[1:]
                                    for x, y in zip(a, b))


def _check_keywords_reach(stages, kwargs):
    """Manual stages: the model's keyword arguments go to the first stage only (later
    stages get their predecessor's outputs). Refuse a keyword that a later stage's forward
    takes by name, rather than leave it at its default there without a word; warn when a
    later stage takes ``**kwargs``."""
    if not kwargs:
        return
    import inspect
    for st in stages[1:]:
        try:
            params = inspect.signature(st.submod.forward).parameters
        except (TypeError, ValueError):
            continue
        if any(p.kind is p.VAR_KEYWORD for p in params.values()):
            import warnings
            warnings.warn(f"stage {st.stage_index}'s forward takes **kwargs, but the keyword "
                          f"arguments {list(kwargs)} go to the first stage only", stacklevel=4)
        shared = [k for k in kwargs if k in params]
        if shared:
            raise NotImplementedError(
                f"keyword arguments {shared} go to the first stage only, but stage "
                f"{st.stage_index}'s forward takes them too: pass the values on through the "
                "stages' outputs (or trace the whole model with pipeline())")


def _split_target(target, n):
    if target is None:
        return None
    if not isinstance(target, Tensor):
        raise TypeError(f"target must be a Tensor, got {type(target).__name__}")
    if target.ndim == 0 or target.shape[0] < n:
        raise ValueError(f"target's batch ({target.shape[0] if target.ndim else 0}) is smaller "
                         f"than n_microbatches ({n})")
    from .._tensor import tensor_split
    return list(tensor_split(target, n, 0))


def _merge(outs, output_merge_spec):
    return _mb.merge_chunks(list(outs), output_merge_spec)


# ---- schedule classes ----

class _PipelineSchedule:
    """Common step()/eval() of every schedule (torch's contract, section 4.1 of the spec)."""

    _name = None          # generator name in csrc/sched
    _style = "loop"
    _multi = True

    def __init__(self, stages, n_microbatches, loss_fn=None, args_chunk_spec=None,
                 kwargs_chunk_spec=None, output_merge_spec=None, scale_grads=True,
                 pp_size=None):
        if isinstance(stages, PipelineStage):
            stages = [stages]
        stages = list(stages)
        if not stages or not all(isinstance(s, PipelineStage) for s in stages):
            raise TypeError(f"{type(self).__name__} expects PipelineStage objects")
        if not isinstance(n_microbatches, int) or n_microbatches < 1:
            raise ValueError(f"n_microbatches must be a positive int, got {n_microbatches!r}")
        self._stages = stages
        self._n_microbatches = n_microbatches
        self._loss_fn = loss_fn
        self._args_chunk_spec = args_chunk_spec
        self._kwargs_chunk_spec = kwargs_chunk_spec
        self._output_merge_spec = output_merge_spec
        self.scale_grads = scale_grads
        num_stages = stages[0].num_stages
        local = len(stages)
        if pp_size is None:
            pp_size = max(1, num_stages // local)
        self.pp_size = pp_size
        self._num_stages = num_stages
        self.stages_per_rank = num_stages // pp_size
        if num_stages != pp_size * self.stages_per_rank and type(self)._name is not None:
            # (a custom schedule may place stages unevenly; its order says where)
            raise ValueError(f"{num_stages} stages cannot be spread evenly over {pp_size} ranks")
        # the compute order and its lowering (raise ValueError for invalid configurations)
        self._custom_fns = {}
        self.pipeline_order = self._compute_order()
        self._executor = None

    def _compute_order(self):
        if type(self)._name is None:
            # a custom schedule: its subclass sets pipeline_order (or _load_csv is used)
            self._custom_order = True
            return {r: [] for r in range(self.pp_size)}
        if not self._multi and self.stages_per_rank != 1:
            raise ValueError(f"{type(self).__name__} runs one stage per rank")
        rows = _C._sched_generate(self._name, self.pp_size, self.stages_per_rank,
                                  self._n_microbatches, fix_1f1b=True)
        return {r: list(row) for r, row in enumerate(rows)}

    def _order_rows(self, order):
        """pipeline_order as one list of action strings (None = idle) per rank."""
        if isinstance(order, dict):
            if self._custom_order and order:
                self.pp_size = max(order) + 1
            missing = [r for r in range(self.pp_size) if r not in order]
            if missing:
                raise ValueError(f"pipeline_order has no actions for ranks {missing}")
            order = [order[r] for r in range(self.pp_size)]
        rows = [[None if a is None else str(a) for a in row] for row in order]
        if self._custom_order:
            self.pp_size = len(rows)
        if len(rows) != self.pp_size:
            raise ValueError(f"pipeline_order has {len(rows)} ranks, the pipeline {self.pp_size}")
        return rows

    def _validate_and_set_stage_mapping(self, actions):
        """Check a custom order (torch's hook for subclasses that set pipeline_order) and
        set ``stage_index_to_group_rank`` from it; returns that {stage: rank} mapping."""
        rows = self._order_rows(actions)
        self.stage_index_to_group_rank = _sched.validate(rows, self._n_microbatches,
                                                         self._num_stages)
        return self.stage_index_to_group_rank

    def _lowered(self):
        override = getattr(self, "_lowered_override", None)
        if override is not None:
            self._custom_order = True
            rows = self._order_rows(override)
            mapping = getattr(self, "_stage_to_rank_override")
            return {r: [a for a in rows[r] if a] for r in range(self.pp_size)}, mapping
        rows = self._order_rows(self.pipeline_order)
        if type(self)._name is None or self._custom_order:
            # a custom order (CSV or a subclass): check it, read the placement off it
            placed = _sched.validate(rows, self._n_microbatches, self._num_stages)
            mapping = [placed[s] for s in range(self._num_stages)]
        else:
            mapping = list(_C._sched_stage_to_rank(self._style, self.pp_size,
                                                   self._num_stages))
        lowered = _sched.lower(rows, self._n_microbatches, mapping, merge_bw=False,
                               unshard=False)
        return {r: lowered[r] for r in range(self.pp_size)}, mapping

    _custom_order = False
    #: set True to record the next steps' timelines (``timeline()``): per compute action its
    #: rank, text and start/end in microseconds (GPU time, from CUDA events, on CUDA stages)
    record_timeline = False
    #: tied weights (one parameter used by several stages, which pipeline() gives a copy
    #: each): after every training step each copy's gradient is the sum over all copies,
    #: across ranks too, as the unpipelined model's parameter would get. Set False for
    #: torch's behaviour (each copy keeps its own part), e.g. for code that all-reduces
    #: them itself.
    sum_tied_grads = True

    _CUSTOM_TYPES = ("F", "B", "I", "W", "OVERLAP_F_B", "UNSHARD", "RESHARD", "REDUCE_GRAD")

    def register_custom_function(self, computation_type, custom_function):
        """Run ``custom_function(action, ctx)`` instead of the built-in handler for every
        action of ``computation_type`` (F, B, I, W, OVERLAP_F_B, UNSHARD, RESHARD,
        REDUCE_GRAD). ``ctx.run_builtin(action)`` runs the built-in one."""
        name = str(getattr(computation_type, "value", computation_type))
        if name not in self._CUSTOM_TYPES:
            raise ValueError(f"register_custom_function: {name!r} is not one of "
                             f"{list(self._CUSTOM_TYPES)}")
        if not callable(custom_function):
            raise TypeError("register_custom_function: custom_function must be callable")
        if name in self._custom_fns:
            import warnings
            warnings.warn(f"replacing the custom function registered for {name}")
        if self._executor is not None and self._is_distributed() and \
                self._executor._rt is not None:
            # a rebuild would repeat the set-up exchanges on this rank only
            raise RuntimeError("register_custom_function: in a multi-process pipeline, "
                               "register custom functions before the first step")
        self._custom_fns[name] = custom_function
        if self._executor is not None:  # rebuilt with the new callbacks at the next step
            self._executor.custom_fns = dict(self._custom_fns)
            self._executor._rt = None

    def _load_csv(self, filename, format="compute_only"):
        """Use the schedule in a CSV file (one row per rank, torch's format) instead of the
        generated one. ``compute_only``: F/I/W/B actions, lowered here; ``compute_comms``:
        an already lowered order with SEND/RECV actions, run as is."""
        if self._executor is not None:
            raise RuntimeError("_load_csv must be called before the first step")
        rows = _sched.load_csv(filename)
        if format == "compute_only":
            self.pipeline_order = {r: row for r, row in enumerate(rows)}
            self._custom_order = True
            self._lowered()  # validate now, not at the first step
        elif format == "compute_comms":
            compute = [[a for a in row if a and "SEND" not in a and "RECV" not in a
                        and "SHARD" not in a and "REDUCE_GRAD" not in a] for row in rows]
            placed = _sched.validate(compute, self._n_microbatches, self._num_stages)
            self._stage_to_rank_override = [placed[s] for s in range(self._num_stages)]
            self._lowered_override = rows
        else:
            raise ValueError(f"format must be 'compute_only' or 'compute_comms', got {format!r}")

    def _dump_csv(self, filename, format="compute_only"):
        """Write the schedule as CSV (``compute_only`` or the lowered ``compute_comms``)."""
        if format == "compute_only":
            _sched.dump_csv(filename, self._order_rows(self.pipeline_order))
        elif format == "compute_comms":
            lowered, _ = self._lowered()
            _sched.dump_csv(filename, [lowered[r] for r in range(self.pp_size)])
        else:
            raise ValueError(f"format must be 'compute_only' or 'compute_comms', got {format!r}")

    def _is_distributed(self):
        return len(self._stages) != self._num_stages

    def _holds_last(self):
        return any(s.is_last for s in self._stages)

    def _ensure_executor(self):
        if self._executor is None:
            orders, mapping = self._lowered()
            if self._is_distributed():
                self._executor = self._dist_executor(orders, mapping)
            else:
                self._executor = _Executor(self._stages, mapping, orders,
                                           self._n_microbatches, self._loss_fn,
                                           self.scale_grads)
            self._executor.custom_fns = dict(self._custom_fns)
            self._executor.schedule_ref = self
        return self._executor

    def _dist_executor(self, orders, mapping):
        """The executor of a pipeline spread over processes: this process runs one rank of
        the stages' process group (pipec.distributed)."""
        from .. import distributed as dist
        from ._dist import _DistExecutor
        if not dist.is_initialized():
            raise RuntimeError(
                f"{type(self).__name__}: this process holds {len(self._stages)} of "
                f"{self._num_stages} stages, so the others run in other processes: call "
                "pipec.distributed.init_process_group() first (or use LocalPipeline to run "
                "every rank in this process)")
        group = self._stages[0].group
        ranks = group.ranks if group is not None else list(range(dist.get_world_size()))
        if len(ranks) != self.pp_size:
            raise ValueError(f"{type(self).__name__}: the schedule has {self.pp_size} ranks "
                             f"but the stages' process group has {len(ranks)}")
        me = dist.get_rank()
        if me not in ranks:
            raise ValueError(f"rank {me} is not in the stages' process group {ranks}")
        pp_rank = ranks.index(me)
        mine = sorted(s.stage_index for s in self._stages)
        placed = sorted(s for s in range(self._num_stages) if mapping[s] == pp_rank)
        if mine != placed:
            raise ValueError(f"{type(self).__name__} places stages {placed} on rank {me}, "
                             f"but this process holds stages {mine}")
        # a rank without a loss_fn would run forward only while the others train
        fingerprint = {"schedule": type(self).__name__, "n_microbatches": self._n_microbatches,
                       "loss_fn given": self._loss_fn is not None,
                       "num_stages": self._num_stages, "ranks": self.pp_size,
                       "stage placement": list(mapping)}
        return _DistExecutor(self._stages, self._num_stages, mapping, orders,
                             self._n_microbatches, self._loss_fn, self.scale_grads, ranks,
                             dist._default_comm(), fingerprint)

    def _run(self, args, kwargs, target, losses, return_outputs, training):
        # without a loss_fn there is nothing to differentiate: step() runs the forward
        # passes only, as torch's schedules do
        training = training and self._loss_fn is not None
        if training and not is_grad_enabled():
            raise RuntimeError("step() requires gradients: grad mode is disabled (use eval() "
                               "for inference)")
        if losses is not None and not isinstance(losses, list):
            raise TypeError(f"losses must be a list, got {type(losses).__name__}")
        if self._loss_fn is not None and target is None and self._holds_last():
            # the last stage computes loss_fn(output, target) after every forward, eval()
            # included (torch's contract: with a loss_fn the last stage must get a target)
            raise RuntimeError("this schedule has a loss_fn: pass target= to step() and eval()"
                               " on the rank that holds the last stage")
        ex = self._ensure_executor()
        for st in self._stages:  # what hand-driven per-microbatch calls left (as torch)
            if "_chunks" in st.__dict__:
                st.clear_runtime_states()
        arg_mbs = _split_inputs(args, kwargs, self._n_microbatches, self._args_chunk_spec,
                                self._kwargs_chunk_spec)
        target_mbs = _split_target(target, self._n_microbatches) if self._loss_fn else None
        ex.sum_tied_grads = self.sum_tied_grads
        outs = ex.run(arg_mbs, target_mbs, losses, training, self.record_timeline)
        if not return_outputs or outs is None:  # outputs live on the last stage's rank
            return None
        return _merge(outs, self._output_merge_spec)

    def step(self, *args, target=None, losses=None, return_outputs=True, **kwargs):
        """Run one training step over the whole batch: forward and backward of every
        microbatch in the schedule's order. Gradients accumulate into the stages'
        parameters; per-microbatch losses go into ``losses``. Returns the merged output.
        Without a ``loss_fn`` the step runs the forward passes only (as torch's does).

        The step's gradients are added to an existing ``.grad`` only once the step
        succeeded (a failed or interrupted step leaves ``.grad`` as it was), so a ``.grad``
        kept from earlier steps costs one more set of gradients while the step runs; call
        ``zero_grad()`` (set to None) between steps unless you accumulate on purpose."""
        return self._run(args, kwargs, target, losses, return_outputs, training=True)

    def eval(self, *args, target=None, losses=None, **kwargs):
        """Forward only (losses still computed when a target is given)."""
        return self._run(args, kwargs, target, losses, True, training=False)

    def timeline(self):
        """[(rank, action, start_us, end_us)] of the last step run with record_timeline."""
        return list(self._executor._timeline) if self._executor else []


class PipelineScheduleSingle(_PipelineSchedule):
    _multi = False

    def __init__(self, stage, n_microbatches, loss_fn=None, args_chunk_spec=None,
                 kwargs_chunk_spec=None, output_merge_spec=None, scale_grads=True):
        super().__init__([stage], n_microbatches, loss_fn, args_chunk_spec, kwargs_chunk_spec,
                         output_merge_spec, scale_grads, pp_size=stage.num_stages)
        self._stage = stage


class PipelineScheduleMulti(_PipelineSchedule):
    def __init__(self, stages, n_microbatches, loss_fn=None, args_chunk_spec=None,
                 kwargs_chunk_spec=None, output_merge_spec=None, use_full_backward=None,
                 scale_grads=True, backward_requires_autograd=True):
        if use_full_backward is not None:
            import warnings
            warnings.warn("use_full_backward is deprecated and has no effect (torch deprecated "
                          "it too): schedules with I/W actions split the backward, the others "
                          "run it whole", FutureWarning, stacklevel=2)
        super().__init__(stages, n_microbatches, loss_fn, args_chunk_spec, kwargs_chunk_spec,
                         output_merge_spec, scale_grads)


class ScheduleGPipe(PipelineScheduleSingle):
    """Fill-drain: all forwards, then all backwards."""
    _name = "GPipe"


class Schedule1F1B(PipelineScheduleSingle):
    """One forward, one backward in the steady state (n_microbatches >= stages)."""
    _name = "1F1B"


class ScheduleInterleaved1F1B(PipelineScheduleMulti):
    """Several stages per rank (loop placement), depth-first 1F1B."""
    _name = "Interleaved1F1B"


class ScheduleLoopedBFS(PipelineScheduleMulti):
    """Several stages per rank, breadth-first (GPipe per stage)."""
    _name = "LoopedBFS"

    def __init__(self, stages, n_microbatches, loss_fn=None, output_merge_spec=None,
                 scale_grads=True, backward_requires_autograd=True):
        super().__init__(stages, n_microbatches, loss_fn, None, None, output_merge_spec,
                         scale_grads=scale_grads)


class ScheduleInterleavedZeroBubble(PipelineScheduleMulti):
    """ZB1P: input gradients (I) and weight gradients (W) scheduled separately."""
    _name = "InterleavedZeroBubble"


class ScheduleZBVZeroBubble(PipelineScheduleMulti):
    """ZB-V: two stages per rank in a V, split backward."""
    _name = "ZBVZeroBubble"
    _style = "v"


class ScheduleDualPipeV(PipelineScheduleMulti):
    """DualPipe 'cut in half': two stages per rank in a V, overlapped F and B."""
    _name = "DualPipeV"
    _style = "v"


class _ScheduleForwardOnly(PipelineScheduleSingle):
    """Forward passes only: every microbatch through the stage, no backward (``step()``
    runs as ``eval()``), as torch's class of that name."""
    _name = "GPipe"

    def _run(self, args, kwargs, target, losses, return_outputs, training):
        return super()._run(args, kwargs, target, losses, return_outputs, False)


#: torch's name for the schedule class that runs a lowered (compute + comms) order: every
#: pipec schedule does (``_load_csv(..., format="compute_comms")`` loads one)
_PipelineScheduleRuntime = PipelineScheduleMulti


_CLASSES = {
    "1F1B": Schedule1F1B, "Interleaved1F1B": ScheduleInterleaved1F1B, "GPipe": ScheduleGPipe,
    "LoopedBFS": ScheduleLoopedBFS, "InterleavedZeroBubble": ScheduleInterleavedZeroBubble,
    "PipelineScheduleSingle": PipelineScheduleSingle,
    "PipelineScheduleMulti": PipelineScheduleMulti, "ZBVZeroBubble": ScheduleZBVZeroBubble,
    "DualPipeV": ScheduleDualPipeV,
}


def get_schedule_class(schedule_name):
    """The schedule class for a name (case-insensitive), e.g. ``"1F1B"``."""
    if not isinstance(schedule_name, str):
        raise TypeError(f"schedule name must be a str, got {type(schedule_name).__name__}")
    for k, v in _CLASSES.items():
        if k.lower() == schedule_name.lower():
            return v
    raise ValueError(f"Unknown schedule name '{schedule_name}'. The valid options are "
                     f"{list(_CLASSES)}")


# ---- LocalPipeline ----

class LocalPipeline:
    """Every rank of a pipeline driven from this process, one host thread per rank.

    pipe_or_stages: a Pipe (from pipeline()) or a list of PipelineStage / stage modules;
    schedule: a name (``"1F1B"``, ``"ZBVZeroBubble"``...) or schedule class;
    devices: one device per rank (``["cpu"] * k`` or ``["cuda:0", "cuda:1"]``); the number of
    ranks is ``len(devices)`` and each rank gets ``num_stages / len(devices)`` stages
    (loop placement, or V placement for the V schedules).

    ``step(*args, target=, losses=, return_outputs=True)`` has a schedule's contract. The
    given Pipe's stage modules are trained in place."""

    def __init__(self, pipe_or_stages, schedule, n_microbatches, devices, loss_fn=None,
                 args_chunk_spec=None, kwargs_chunk_spec=None, output_merge_spec=None,
                 scale_grads=True, dw_builders=None, timeout=300.0):
        from ._IR import Pipe
        cls = get_schedule_class(schedule) if isinstance(schedule, str) else schedule
        if not (isinstance(cls, type) and issubclass(cls, _PipelineSchedule)) or cls._name is None:
            raise TypeError(f"schedule must be a schedule name or class, got {schedule!r}")
        devices = list(devices)
        if not devices:
            raise ValueError("LocalPipeline needs at least one device")
        pp = len(devices)
        dw_builders = dict(dw_builders or {})
        if isinstance(pipe_or_stages, Pipe):
            n_stages = pipe_or_stages.num_stages
        else:
            n_stages = len(pipe_or_stages)
        if n_stages % pp:
            raise ValueError(f"{n_stages} stages cannot be spread over {pp} devices")
        mapping = _C._sched_stage_to_rank(cls._style, pp, n_stages)
        if isinstance(pipe_or_stages, Pipe):
            stages = [_stage_from_pipe(pipe_or_stages, i, devices[mapping[i]],
                                       dw_builder=dw_builders.get(i)) for i in range(n_stages)]
        else:
            stages = []
            for i, s in enumerate(pipe_or_stages):
                if isinstance(s, PipelineStage):
                    stages.append(s)
                else:
                    s.to(devices[mapping[i]])
                    stages.append(PipelineStage(s, i, n_stages, devices[mapping[i]],
                                                dw_builder=dw_builders.get(i)))
        self.pipe = pipe_or_stages if isinstance(pipe_or_stages, Pipe) else None
        self.stages = stages
        self.devices = devices
        self.n_microbatches = n_microbatches
        self._loss_fn = loss_fn
        self._args_chunk_spec = args_chunk_spec
        self._kwargs_chunk_spec = kwargs_chunk_spec
        self._output_merge_spec = output_merge_spec
        # a schedule object over all stages with pp ranks gives the order and its checks
        self.schedule = cls.__new__(cls)
        _PipelineSchedule.__init__(self.schedule, stages, n_microbatches, loss_fn,
                                   args_chunk_spec, kwargs_chunk_spec, output_merge_spec,
                                   scale_grads, pp_size=pp)
        orders, mapping = self.schedule._lowered()
        self._executor = _Executor(stages, mapping, orders, n_microbatches, loss_fn,
                                   scale_grads, timeout)
        self.schedule._executor = self._executor
        self.last_step_seconds = None

    #: see the schedules' ``sum_tied_grads``: copies of a tied weight get the sum of the
    #: copies' gradients after every training step (False: torch's behaviour)
    sum_tied_grads = True

    @property
    def pipeline_order(self):
        return self.schedule.pipeline_order

    def _run(self, args, kwargs, target, losses, return_outputs, training, record_timeline):
        training = training and self._loss_fn is not None  # (forward only, as a schedule)
        if training and not is_grad_enabled():
            raise RuntimeError("step() requires gradients: grad mode is disabled (use eval())")
        if self._loss_fn is not None and target is None:
            # the last stage computes loss_fn(output, target) after every forward, eval()
            # included (torch's contract: with a loss_fn the last stage must get a target)
            raise RuntimeError("this pipeline has a loss_fn: pass target= to step() and eval()")
        if losses is not None and not isinstance(losses, list):
            raise TypeError(f"losses must be a list, got {type(losses).__name__}")
        args, kwargs = _to_device((tuple(args), dict(kwargs)), str(self.stages[0].device))
        if target is not None and isinstance(target, Tensor):
            target = target.to(str(self.stages[-1].device))
        arg_mbs = _split_inputs(args, kwargs, self.n_microbatches, self._args_chunk_spec,
                                self._kwargs_chunk_spec)
        target_mbs = _split_target(target, self.n_microbatches) if self._loss_fn else None
        t0 = time.perf_counter()
        self._executor.sum_tied_grads = self.sum_tied_grads
        outs = self._executor.run(arg_mbs, target_mbs, losses, training, record_timeline)
        self.last_step_seconds = time.perf_counter() - t0
        if not return_outputs:
            return None
        return _merge(outs, self._output_merge_spec)

    def step(self, *args, target=None, losses=None, return_outputs=True,
             record_timeline=False, **kwargs):
        """One training step over the batch (see the class docstring). As for a schedule's
        step, an existing ``.grad`` gets this step's gradients only once the step succeeded,
        which costs one more set of gradients while the step runs."""
        return self._run(args, kwargs, target, losses, return_outputs, True, record_timeline)

    def eval(self, *args, target=None, losses=None, record_timeline=False, **kwargs):
        return self._run(args, kwargs, target, losses, True, False, record_timeline)

    def timeline(self):
        """[(rank, action, start_us, end_us)] of the last step run with record_timeline=True."""
        return list(self._executor._timeline)

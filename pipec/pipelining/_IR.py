"""pipeline() and Pipe: trace a model into a C Program and cut it into pipeline stages.

How it works (shared/ARCHITECTURE.md section 5):
  1. ``split_spec`` entries temporarily wrap the named submodules' ``forward`` so that
     ``pipe_split()`` runs before (BEGINNING) or after (END) them; the model is restored
     afterwards.
  2. The model's forward runs once on the example microbatch with tracing on: the C binding
     records every op into a Program over value slots, pipe_split() records a boundary,
     custom autograd Functions are recorded as Python-backed calls.
  3. Tensors the trace met that existed before it are parameters/buffers of the model
     (passed at run time, by name) or captured constants (owned by the Program).
  4. The Program is cut at the boundaries (in C): a value made in stage i and used in stage
     j > i becomes an output of i and an input of j.
Each stage becomes a ``pipec.nn.Module`` whose parameters keep their original dotted names
and whose forward replays its Program without Python (unless it holds a custom Function).
"""

import collections
import weakref

from .. import _C
from .. import nn
from ..autograd import no_grad
from . import _split
from ._policy import TracedGraph, _FixedBoundaries, boundaries_from
from ._signature import InputSignature
from ._split import SplitPoint

__all__ = ["pipeline", "Pipe", "PipeInfo", "annotate_split_points"]

Tensor = _C.Tensor

PipeInfo = collections.namedtuple("PipeInfo", ["graph", "num_stages", "has_loss_and_backward"])


# ---- flattening of nested inputs/outputs ----

def _flatten(obj):
    """Tensors of a nested tuple/list/dict structure, in order, and a spec to rebuild it."""
    if isinstance(obj, Tensor):
        return [obj], ("T",)
    if isinstance(obj, (tuple, list)):
        leaves, specs = [], []
        for x in obj:
            lv, sp = _flatten(x)
            leaves += lv
            specs.append(sp)
        return leaves, (type(obj).__name__, specs)
    if isinstance(obj, dict):
        leaves, specs = [], []
        for k, x in obj.items():
            lv, sp = _flatten(x)
            leaves += lv
            specs.append((k, sp))
        return leaves, ("dict", specs)
    return [], ("C", obj)


def _unflatten(leaves, spec):
    it = iter(leaves)

    def build(sp):
        kind = sp[0]
        if kind == "T":
            return next(it)
        if kind == "C":
            return sp[1]
        if kind in ("tuple", "list"):
            vals = [build(s) for s in sp[1]]
            return tuple(vals) if kind == "tuple" else vals
        return {k: build(s) for k, s in sp[1]}

    return build(spec)


# ---- split points ----

def _resolve(module, qualname):
    mod = module
    done = []
    for part in qualname.split("."):
        if not hasattr(mod, part) or not isinstance(getattr(mod, part), nn.Module):
            prefix = ".".join(done + [part])
            raise AttributeError(f"Specified target {qualname} referenced nonexistent module "
                                 f"{prefix}")
        mod = getattr(mod, part)
        done.append(part)
    return mod


class _SplitAnnotations:
    """Context manager: wrap the named submodules' forward with pipe_split() calls and undo
    it on exit, leaving the user's model as it was."""

    def __init__(self, module, split_spec):
        self.module = module
        self.spec = dict(split_spec or {})
        self.patched = []

    def __enter__(self):
        try:
            for name, point in self.spec.items():
                if not isinstance(point, SplitPoint):
                    raise ValueError(f"Unknown split point {point!r} for {name!r}: expected "
                                     "SplitPoint.BEGINNING or SplitPoint.END")
                sub = _resolve(self.module, name)
                self._patch(sub, point)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _patch(self, sub, point):
        had_own = "forward" in sub.__dict__
        original = sub.__dict__.get("forward", None)
        bound = sub.forward

        if point is SplitPoint.BEGINNING:
            def forward(*args, **kwargs):
                _split.pipe_split()
                return bound(*args, **kwargs)
        else:
            def forward(*args, **kwargs):
                try:
                    return bound(*args, **kwargs)
                finally:
                    _split.pipe_split()
        object.__setattr__(sub, "forward", forward)
        self.patched.append((sub, had_own, original))

    def __exit__(self, *exc):
        for sub, had_own, original in reversed(self.patched):
            if had_own:
                object.__setattr__(sub, "forward", original)
            else:
                sub.__dict__.pop("forward", None)
        self.patched.clear()
        return False


def annotate_split_points(module, split_spec):
    """Check a split_spec against a module (AttributeError for a bad path, ValueError for a
    bad split point). pipec applies split points only while tracing, so the module itself is
    never changed; this function exists for torch compatibility and validation."""
    with _SplitAnnotations(module, split_spec):
        pass


# ---- tracing ----

class _KeepBuffers:
    """Context manager: the module's buffers after the block are what they were before it
    (the same tensor objects, with the same values). Tracing runs the forward once for its
    effects on the trace only; a buffer it updates (a step counter, running statistics)
    must not count that run."""

    def __init__(self, module):
        self.saved = []
        with no_grad():
            for mod in module.modules():
                for name, b in mod._buffers.items():
                    if b is not None:
                        self.saved.append((mod, name, b, b.clone()))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.restore()
        return False

    def restore(self):
        with no_grad():
            for mod, name, b, copy in self.saved:
                if mod._buffers.get(name) is not b:
                    mod._buffers[name] = b
                b.copy_(copy)


def _trace(module, args, kwargs, split_spec):
    """Run module(*args, **kwargs) once with tracing on, leaving the module's buffers as
    they were. Returns (Program, input tensors, output spec, InputSignature of the call)."""
    parameters = InputSignature.parameters_of(module)
    args, kwargs = InputSignature.canonical(parameters, args, kwargs, "pipeline()")
    in_leaves, in_spec = _flatten((tuple(args), dict(kwargs)))
    signature = InputSignature(in_spec, tuple(tuple(t.shape) for t in in_leaves), parameters)
    prev_hook = _split._pipe_split_hook
    keep = _KeepBuffers(module)  # (copies made before tracing starts: not part of it)
    _C._trace_begin()
    try:
        seen = set()
        for t in in_leaves:
            if id(t) in seen:
                raise ValueError("pipeline(): the same tensor is passed twice as an input")
            seen.add(id(t))
            _C._trace_input(t)
        _split._pipe_split_hook = _C._trace_mark
        with _SplitAnnotations(module, split_spec), no_grad():
            out = module(*args, **kwargs)
        out_leaves, out_spec = _flatten(out)
        if not out_leaves:
            raise ValueError("pipeline(): the model's forward returned no tensor")
        prog = _C._trace_end(out_leaves)
    except BaseException:
        _C._trace_abort()
        raise
    finally:
        _split._pipe_split_hook = prev_hook
        keep.restore()
    return prog, in_leaves, out_spec, signature


# ---- stage modules ----

def _ensure_child(root, path):
    """The submodule at dotted `path` under root, creating plain containers as needed."""
    mod = root
    for part in path:
        child = mod._modules.get(part) if hasattr(mod, "_modules") else None
        if child is None:
            child = nn.Module()
            mod.register_module(part, child)
        mod = child
    return mod


class _StageModule(nn.Module):
    """One pipeline stage: a replayable C Program plus the parameters and buffers it uses,
    registered under their names in the original model (``layers.1.net1.weight``)."""

    def __init__(self, program, stage_index, param_names, tensors, buffer_names):
        super().__init__()
        object.__setattr__(self, "_program", program)
        object.__setattr__(self, "_stage_index", stage_index)
        object.__setattr__(self, "_ext_names", tuple(param_names))
        for name in param_names:
            *path, leaf = name.split(".")
            owner = _ensure_child(self, path)
            t = tensors[name]
            if name in buffer_names:
                owner.register_buffer(leaf, t)
            else:
                owner.register_parameter(leaf, t)

    def _externals(self):
        out = []
        for name in self._ext_names:
            *path, leaf = name.split(".")
            mod = self
            for p in path:
                mod = mod._modules[p]
            t = mod._parameters.get(leaf)
            if t is None:
                t = mod._buffers.get(leaf)
            out.append(t)
        return out

    def forward(self, *inputs):
        outs = self._program.run(inputs, self._externals())
        return outs[0] if len(outs) == 1 else outs

    @property
    def program(self):
        """The stage's C Program (``print(stage.program.format())`` shows it)."""
        return self._program

    def extra_repr(self):
        return (f"stage={self._stage_index}, instructions={self._program.num_instructions}, "
                f"inputs={len(self._program.input_slots)}, "
                f"outputs={len(self._program.output_slots)}")


# ---- Pipe ----

class Pipe(nn.Module):
    """A model cut into pipeline stages (``submod_0`` ... ``submod_{n-1}``).

    ``Pipe(*args, **kwargs)`` runs every stage in order locally and returns the model's
    output structure: the numerics reference for pipelined runs."""

    def __init__(self, stages, wiring, input_slots, out_slots, out_spec, replicated_params,
                 signature):
        super().__init__()
        for i, st in enumerate(stages):
            self.register_module(f"submod_{i}", st)
        object.__setattr__(self, "_wiring", wiring)  # per stage: (in_slots, out_slots)
        object.__setattr__(self, "_input_slots", tuple(input_slots))
        object.__setattr__(self, "_out_slots", tuple(out_slots))
        object.__setattr__(self, "_out_spec", out_spec)
        object.__setattr__(self, "_in_sig", signature)  # the traced call's structure
        self.num_stages = len(stages)
        self.has_loss_and_backward = False
        self.loss_spec = None
        self.replicated_params = replicated_params

    def get_stage_module(self, stage_idx):
        """The nn.Module of stage ``stage_idx``."""
        if not isinstance(stage_idx, int) or not 0 <= stage_idx < self.num_stages:
            raise ValueError(f"Invalid stage index {stage_idx!r}: the pipe has "
                             f"{self.num_stages} stages")
        return self._modules[f"submod_{stage_idx}"]

    def info(self):
        """The pipe's PipeInfo; its ``graph`` is the Pipe itself (the stages' wiring, what
        build_stage needs)."""
        return PipeInfo(graph=self, num_stages=self.num_stages, has_loss_and_backward=False)

    def stage_wiring(self, stage_idx):
        """(input slots, output slots) of a stage in the traced Program's numbering: which
        values a stage receives and sends (a slot made by stage i and used by j > i)."""
        return self._wiring[stage_idx]

    def forward(self, *args, **kwargs):
        leaves = self._in_sig.bind(args, kwargs, "Pipe")
        env = dict(zip(self._input_slots, leaves))
        for i in range(self.num_stages):
            in_slots, out_slots = self._wiring[i]
            missing = [s for s in in_slots if s not in env]
            if missing:
                raise RuntimeError(f"Pipe: stage {i} needs values {missing} that no earlier "
                                   "stage produced")
            outs = self.get_stage_module(i)(*[env[s] for s in in_slots])
            if isinstance(outs, Tensor):
                outs = (outs,)
            env.update(zip(out_slots, outs))
        return _unflatten([env[s] for s in self._out_slots], self._out_spec)

    def print_readable(self):
        """Print each stage's Program."""
        for i in range(self.num_stages):
            mod = self.get_stage_module(i)
            names = ", ".join(mod._ext_names) or "-"
            print(f"submod_{i}: params [{names}]")
            print(mod.program.format())

    def build_stage(self, stage_index, device, group=None):
        """A PipelineStage running stage ``stage_index`` on ``device``."""
        from .stage import _stage_from_pipe
        return _stage_from_pipe(self, stage_index, device, group)


def pipeline(module, mb_args, mb_kwargs=None, split_spec=None, split_policy=None):
    """Trace ``module`` on one microbatch (``mb_args``, ``mb_kwargs``) and cut it into a
    :class:`Pipe` at its ``pipe_split()`` calls and ``split_spec`` points, or where
    ``split_policy`` says: a callable given the traced :class:`TracedGraph` that returns the
    stage boundaries (``split_into_equal_size(n)``, ``split_on_size_threshold(elements)``,
    ``split_into_equal_flops(n)``)."""
    if split_spec is not None and split_policy is not None:
        raise ValueError("Cannot specify both `split_spec` and `split_policy`")
    if split_policy is not None and not callable(split_policy):
        raise TypeError(f"split_policy must be callable (TracedGraph -> boundaries), got "
                        f"{type(split_policy).__name__}")
    if not isinstance(module, nn.Module):
        raise TypeError(f"pipeline() expects a pipec.nn.Module, got {type(module).__name__}")
    if isinstance(mb_args, Tensor):
        mb_args = (mb_args,)
    mb_args = tuple(mb_args)
    mb_kwargs = dict(mb_kwargs or {})
    prog, pieces, slot_name, buffer_names, out_spec, signature = _trace_pieces(
        module, mb_args, mb_kwargs, split_spec, split_policy)
    # traced again later (other shapes): cut where this trace was cut
    split_policy = _FixedBoundaries(prog.marks) if split_policy is not None else None
    users = collections.defaultdict(list)
    for si, (_, _, exts, _) in enumerate(pieces):
        for s in exts:
            users[slot_name[s][0]].append(si)
    replicated = [{f"submod_{si}": name for si in sis} for name, sis in users.items()
                  if len(sis) > 1]
    multi = {name for name, sis in users.items() if len(sis) > 1}

    # tied parameters by one global number (their order by name), the same on every rank
    tied_index = {n: k for k, n in enumerate(sorted(multi - buffer_names))}
    stages, wiring = [], []
    for si, (sprog, ins, exts, outs) in enumerate(pieces):
        pnames, tensors = [], {}
        for s in exts:
            name, t = slot_name[s]
            pnames.append(name)
            if name in multi:  # each consuming stage owns a copy
                with no_grad():
                    data = t.detach().clone()
                t = (nn.Parameter(data, requires_grad=t.requires_grad)
                     if name not in buffer_names else data)
            tensors[name] = t
        stage = _StageModule(sprog, si, pnames, tensors, {n for n in pnames if n in buffer_names})
        # tied parameters: their number and the stages holding a copy (their gradients are
        # summed after each step)
        object.__setattr__(stage, "_tied", {n: (tied_index[n], tuple(users[n]))
                                            for n in pnames if n in tied_index})
        stages.append(stage)
        wiring.append((tuple(ins), tuple(outs)))
    pipe = Pipe(stages, wiring, prog.input_slots, prog.output_slots, out_spec, replicated,
                signature)
    # what it was traced from, to trace again on microbatches of other shapes (weakly: the
    # pipe need not keep the model alive)
    object.__setattr__(pipe, "_source", (weakref.ref(module), split_spec, split_policy))
    object.__setattr__(pipe, "_batch_free", not prog.reads_shapes or _same_on_fewer_rows(
        module, mb_args, mb_kwargs, split_spec, split_policy, pieces))
    return pipe


def _same_on_fewer_rows(module, args, kwargs, split_spec, split_policy, pieces):
    """Whether the traced stages do not depend on the microbatch's size along dim 0 (the
    dim inputs are split on by default): tracing again with one row fewer gives the same
    Programs. Checked here, while the model is at hand and on one device, for code that
    read a shape while tracing (nn.Linear checks its input's width, for one)."""
    leaves, spec = _flatten((tuple(args), dict(kwargs)))
    if not leaves or any(t.ndim == 0 or t.shape[0] < 2 for t in leaves):
        return False
    with no_grad():
        fewer = [t[: t.shape[0] - 1] for t in leaves]
    args2, kwargs2 = _unflatten(fewer, spec)
    try:
        again = _trace_pieces(module, args2, kwargs2, split_spec, split_policy)[1]
    except Exception:  # noqa: BLE001 - the model needs its traced size (a default tensor...)
        return False
    return len(again) == len(pieces) and all(a[0].same_code(b[0])
                                             for a, b in zip(again, pieces))


def _trace_pieces(module, args, kwargs, split_spec, split_policy=None):
    """Trace and cut: (whole Program, pieces of Program.split(), {external slot: (name,
    tensor)}, buffer names, output spec, InputSignature). Externals that are not the
    module's parameters or buffers become constants. A split policy, when given, sets the
    boundaries before the cut."""
    prog, in_leaves, out_spec, signature = _trace(module, args, kwargs, split_spec)
    # externals: parameters / buffers (by identity, first name wins) or captured constants
    names = {}
    buffer_names = set()
    for name, p in module.named_parameters():
        names.setdefault(id(p), name)
    for name, b in module.named_buffers():
        if id(b) not in names:
            names[id(b)] = name
            buffer_names.add(name)
    ext_slots = prog.external_slots
    slot_name = {}
    for i in reversed(range(len(ext_slots))):
        t = prog.external_tensor(i)
        name = names.get(id(t)) if t is not None else None
        if name is None:
            prog.make_const(i)
        else:
            slot_name[ext_slots[i]] = (name, t)
    if split_policy is not None:
        graph = TracedGraph(prog, slot_name, [t.numel() for t in in_leaves])
        prog.set_marks(boundaries_from(split_policy, graph))
    return prog, prog.split(), slot_name, buffer_names, out_spec, signature


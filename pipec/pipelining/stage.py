"""PipelineStage: one stage of a pipeline, as torch.distributed.pipelining's.

A stage wraps a module (a ``Pipe`` stage module holding a traced C Program, or any
``pipec.nn.Module``). The runtime executes stages as C Programs: a manual stage's module is
traced on the first step with that step's first microbatch (pipec's form of torch's runtime
shape inference), so its forward must be traceable (pipec ops, custom Functions).
"""

from .. import _C
from .. import nn
from .._types import device as _device_cls
from ._chunk import _ChunkMethods

__all__ = ["PipelineStage", "build_stage"]


class StageArgsError(ValueError, AssertionError):
    """Inconsistent PipelineStage arguments (an AssertionError too, as torch raises)."""


def _metas(values):
    from ._IR import _flatten
    return [(t.dtype, tuple(t.shape)) for t in _flatten(values)[0]]


class PipelineStage(_ChunkMethods):
    """One pipeline stage.

    submodule: the stage's module; stage_index / num_stages: its place in the pipeline;
    device: where it runs; input_args / output_args: example inputs and outputs of one
    microbatch (optional: shapes are inferred when the first step runs; given, the first
    step checks the stage's actual inputs and outputs against their dtypes and shapes and
    raises PipeliningShapeError on a difference; output_args needs input_args); group: the
    process group of the pipeline (None: the default group, or this process alone); dw_builder: a zero-argument callable returning a
    function that computes this stage's weight gradients for one microbatch (used by W
    actions of zero-bubble schedules, right after B otherwise).

    Schedules run the stage in the C runtime. Code that drives a stage itself, one
    microbatch at a time, uses torch's per-microbatch methods: ``forward_one_chunk``,
    ``backward_one_chunk``, ``backward_weight_one_chunk``, ``set_local_fwd_input``,
    ``get_local_bwd_output``, ``set_local_bwd_input``, ``clear_runtime_states`` and
    ``scale_grads`` (eager, in this process; see ``pipelining/_chunk.py``)."""

    def __init__(self, submodule, stage_index, num_stages, device, input_args=None,
                 output_args=None, group=None, dw_builder=None):
        if not isinstance(submodule, nn.Module):
            raise TypeError(f"PipelineStage: submodule must be a pipec.nn.Module, got "
                            f"{type(submodule).__name__}")
        if not isinstance(num_stages, int) or num_stages < 1:
            raise ValueError(f"PipelineStage: num_stages must be a positive int, got {num_stages!r}")
        if not isinstance(stage_index, int) or not 0 <= stage_index < num_stages:
            raise ValueError(f"Stage index {stage_index} is out of range of {num_stages}")
        if output_args is not None and input_args is None:
            raise StageArgsError("PipelineStage: output_args without input_args (give both, "
                                 "or neither to infer shapes at the first step)")
        if dw_builder is not None and not callable(dw_builder):
            raise TypeError("PipelineStage: dw_builder must be callable")
        self.submod = submodule
        self.stage_index = stage_index
        self.num_stages = num_stages
        self.device = _device_cls(device) if not isinstance(device, _device_cls) else device
        self.group = group
        self.dw_builder = dw_builder
        self.inputs_meta = input_args
        self.outputs_meta = output_args
        # set when the stage comes from a Pipe (build_stage): its Program and wiring
        self._program = getattr(submodule, "_program", None)
        self._pipe_wiring = None
        self._in_sig = None       # manual stages: what the trace was made with
        self._out_spec = None

    @property
    def is_first(self):
        return self.stage_index == 0

    @property
    def is_last(self):
        return self.stage_index == self.num_stages - 1

    def __repr__(self):
        return (f"PipelineStage(stage_index={self.stage_index}, num_stages={self.num_stages}, "
                f"device={self.device})")

    # ---- program and parameters for the runtime ----

    def _ensure_program(self, example_args, example_kwargs=None):
        """The stage's C Program, tracing the module on an example call if needed (a manual
        stage: its structure, output structure and the modules' training modes are kept to
        check later calls against)."""
        if self._program is not None:
            return self._program
        prog, self._ext_names, self._out_spec, self._in_sig = self._trace_program(
            example_args, example_kwargs)
        self._program = prog
        self._traced_modes = self._modes()
        return prog

    def _trace_program(self, args, kwargs=None):
        """Trace the module on one call: (Program, its parameters' and buffers' names,
        output spec, InputSignature); other tensors it captured become constants."""
        from ._IR import _trace
        prog, _, out_spec, signature = _trace(self.submod, tuple(args), dict(kwargs or {}),
                                              None)
        names = {}
        for name, p in self.submod.named_parameters():
            names.setdefault(id(p), name)
        for name, b in self.submod.named_buffers():
            names.setdefault(id(b), name)
        for i in reversed(range(len(prog.external_slots))):
            t = prog.external_tensor(i)
            if t is None or id(t) not in names:
                prog.make_const(i)
        ext_names = [names[id(prog.external_tensor(i))]
                     for i in range(len(prog.external_slots))]
        if len(prog.output_slots) == 0:
            raise ValueError(f"stage {self.stage_index}: the module returned no tensor")
        return prog, ext_names, out_spec, signature

    def _check_static(self, inputs, outputs):
        """Given input_args / output_args: the first step's actual values must match
        their tensors' dtypes and shapes (raises PipeliningShapeError)."""
        from ._dist import PipeliningShapeError
        for what, given, actual in (("input", self.inputs_meta, inputs),
                                    ("output", self.outputs_meta, outputs)):
            if given is None:
                continue
            want, got = _metas(given), _metas(tuple(actual))
            if len(want) != len(got):
                raise PipeliningShapeError(
                    f"stage {self.stage_index}: {len(got)} {what} tensors, but {what}_args "
                    f"has {len(want)}")
            for i, ((wd, ws), (gd, gs)) in enumerate(zip(want, got)):
                if wd != gd:
                    raise PipeliningShapeError(
                        f"stage {self.stage_index} {what} {i}: dtype mismatch: {what}_args "
                        f"says {wd}, the first step has {gd}")
                if ws != gs:
                    raise PipeliningShapeError(
                        f"stage {self.stage_index} {what} {i}: shape mismatch: {what}_args "
                        f"says {ws}, the first step has {gs}")

    def _modes(self):
        """The training flag of every module of a manual stage (what tracing baked in)."""
        return tuple(m.training for m in self.submod.modules())

    def _retrace_needed(self):
        """True when a traced manual stage's modules changed training mode since tracing
        (``model.eval()`` after training: dropout and the like must follow)."""
        return (self._pipe_wiring is None and getattr(self, "_traced_modes", None) is not None
                and self._modes() != self._traced_modes)

    def _forget_program(self):
        self._program = None
        self._traced_modes = None

    def _ext_name_list(self):
        """Names of the Program's parameters and buffers, in its order (a Pipe stage
        module keeps them itself)."""
        if getattr(self.submod, "_program", None) is self._program and \
                hasattr(self.submod, "_ext_names"):
            return self.submod._ext_names
        return self._ext_names

    def _external_owners(self):
        """[(dict, name)] holding each of the Program's parameters and buffers, in order
        (a module's _parameters or _buffers): a cheap look-up of the current tensors while
        the module tree stays the same."""
        out = []
        for name in self._ext_name_list():
            *path, leaf = name.split(".")
            mod = self.submod
            for p in path:
                mod = mod._modules[p]
            out.append((mod._parameters if leaf in mod._parameters else mod._buffers, leaf))
        return out

    def _externals(self):
        """Current parameter/buffer tensors in the Program's order."""
        return [d.get(k) for d, k in self._external_owners()]


def _stage_from_pipe(pipe, stage_index, device, group=None, dw_builder=None):
    mod = pipe.get_stage_module(stage_index)
    mod.to(device)
    mod.program.consts_to(str(device))
    st = PipelineStage(mod, stage_index, pipe.num_stages, device, group=group,
                       dw_builder=dw_builder)
    st._pipe_wiring = (pipe, stage_index)
    return st


def build_stage(stage_module, stage_index, pipe_info, device, group=None):
    """A PipelineStage for stage ``stage_index`` of a module made by pipeline() (torch's
    build_stage): ``pipe_info`` is ``pipe.info()``, which carries the stages' wiring."""
    if getattr(stage_module, "_program", None) is None:
        raise TypeError("build_stage expects a stage module from pipeline(); use PipelineStage "
                        "for hand-written stage modules")
    pipe = getattr(pipe_info, "graph", None)
    from ._IR import Pipe
    if not isinstance(pipe, Pipe):
        raise TypeError("build_stage: pipe_info must come from Pipe.info() (it carries the "
                        "wiring between the stages)")
    if pipe.get_stage_module(stage_index) is not stage_module:
        raise ValueError(f"build_stage: the module is not stage {stage_index} of the pipe "
                         "that pipe_info describes")
    return _stage_from_pipe(pipe, stage_index, device, group)

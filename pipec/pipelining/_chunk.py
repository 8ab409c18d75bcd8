"""PipelineStage's per-microbatch methods, torch's names: forward_one_chunk,
backward_one_chunk, backward_weight_one_chunk and the local hand-offs between stages.

pipec's schedules run their F, B, I and W actions in the C runtime and never call these.
They exist for code that drives stages itself, one microbatch at a time, in one process: a
custom loop, a schedule written against torch's stage API, a test. They run the stage's
module eagerly with pipec's autograd (the same kernels the runtime replays), keep the
per-microbatch state torch keeps (``fwd_cache``, ``bwd_cache``, ``output_chunks``,
``backward_state``, ``dw_runner``) and follow torch's rules:

  * a non-first stage's inputs are leaves that require grad (its input gradients are what
    backward_one_chunk produces for the stage before); they come from ``args`` or from
    ``set_local_fwd_input`` (the previous stage's outputs, detached);
  * backward_one_chunk roots the last stage's backward at ``loss`` and the others' at the
    gradients given by ``set_local_bwd_input`` (or ``grads``); ``full_backward=False`` runs
    phase I only and leaves the weights' work for backward_weight_one_chunk; with a
    ``dw_builder`` the backward is always full and the builder's runner computes the
    weights' gradients (at once, or at W);
  * nothing runs backward while ``has_backward`` is False (set it for training, as
    torch's schedules do).
Communication between processes is the runtime's; these methods do not send or receive.
"""

from .. import _C
from ..autograd import no_grad
from ._backward import stage_backward, stage_backward_input, stage_backward_weight

Tensor = _C.Tensor


def _as_tuple(x):
    if x is None:
        return ()
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def _state(key, doc):
    """A read-only property for one of the per-microbatch state containers."""
    return property(lambda self: self._chunk_state()[key], doc=doc)


class _ChunkMethods:
    """Mixed into PipelineStage (see the module's docstring)."""

    fwd_cache = _state("fwd_cache", "{microbatch: (outputs, inputs, number of positional "
                                    "inputs)} kept by forward_one_chunk for its backward.")
    bwd_cache = _state("bwd_cache", "{microbatch: input gradients} made by backward_one_chunk.")
    output_chunks = _state("output_chunks",
                           "The last stage's outputs of forward_one_chunk, in call order.")
    backward_state = _state("backward_state",
                            "{microbatch: (parameters, WeightGradHandle)} between I and W.")
    dw_runner = _state("dw_runner", "{microbatch: the weight-gradient work W will run}.")

    def _chunk_state(self):
        st = self.__dict__.get("_chunks")
        if st is None:
            st = self.__dict__["_chunks"] = {
                "fwd_cache": {}, "bwd_cache": {}, "output_chunks": [], "backward_state": {},
                "dw_runner": {}, "fwd_in": {}, "bwd_in": {}}
        return st

    @property
    def has_backward(self):
        return self.__dict__.get("_has_backward", False)

    @has_backward.setter
    def has_backward(self, value):
        self.__dict__["_has_backward"] = bool(value)

    def forward_one_chunk(self, fwd_chunk_id, args=None, kwargs=None,
                          save_forward_output=True):
        """Run the stage's module on microbatch ``fwd_chunk_id``: the first stage on
        ``args``/``kwargs``, the others on ``args`` when given, else on what
        set_local_fwd_input left for this microbatch. Returns the module's output."""
        st = self._chunk_state()
        if fwd_chunk_id in st["fwd_cache"]:
            raise RuntimeError(f"stage {self.stage_index}: microbatch {fwd_chunk_id} was "
                               "already run forward and not backward yet")
        args = _as_tuple(args)
        if not args and not self.is_first:
            if fwd_chunk_id not in st["fwd_in"]:
                raise RuntimeError(
                    f"stage {self.stage_index}: no inputs for microbatch {fwd_chunk_id}: "
                    "pass args or call set_local_fwd_input on this stage first")
            args = st["fwd_in"].pop(fwd_chunk_id)
        elif not self.is_first:
            args = tuple(self._receive(a) for a in args)
        kwargs = dict(kwargs or {})
        wiring = self._pipe_wiring
        if wiring is not None:
            needed = len(wiring[0].stage_wiring(wiring[1])[0])
            if len(args) != needed:
                raise RuntimeError(
                    f"stage {self.stage_index} of a Pipe takes {needed} inputs (values from "
                    f"earlier stages in Pipe.stage_wiring({self.stage_index}) order, skip "
                    f"connections included), got {len(args)}; set_local_fwd_input hands "
                    "over only the previous stage's outputs")
        try:
            out = self.submod(*args, **kwargs)
        except Exception as e:
            raise RuntimeError(f"stage {self.stage_index}: forward of microbatch "
                               f"{fwd_chunk_id} failed: {e}") from e
        outputs = tuple(out) if isinstance(out, (tuple, list)) else (out,)
        flat_inputs = args + tuple(kwargs.values())
        st["fwd_cache"][fwd_chunk_id] = (outputs, flat_inputs, len(args))
        if self.is_last and save_forward_output:
            st["output_chunks"].append(out)
        return out

    @staticmethod
    def _receive(t):
        """A received activation: detached, a leaf that requires grad (when it can)."""
        if not isinstance(t, Tensor):
            return t
        with no_grad():
            leaf = t.detach()
        if leaf.dtype.is_floating_point:
            leaf.requires_grad_(True)
        return leaf

    def backward_one_chunk(self, bwd_chunk_id, loss=None, full_backward=True,
                           last_backward=False, grads=None):
        """Backward of microbatch ``bwd_chunk_id``: the last stage from ``loss``, the others
        from ``grads`` or what set_local_bwd_input left. Input gradients go to
        ``bwd_cache``. ``full_backward=False``: phase I only (W later), as torch; a
        ``dw_builder`` makes it a full autograd backward plus the builder's runner."""
        if not self.has_backward:
            return
        st = self._chunk_state()
        if bwd_chunk_id not in st["fwd_cache"]:
            raise RuntimeError(f"stage {self.stage_index}: microbatch {bwd_chunk_id} has no "
                               "forward to run backward from (forward_one_chunk first)")
        if self.is_last and loss is None:
            raise RuntimeError(f"stage {self.stage_index} is the last: backward_one_chunk "
                               "needs the microbatch's loss")
        if not self.is_last and grads is None and bwd_chunk_id not in st["bwd_in"]:
            raise RuntimeError(
                f"stage {self.stage_index}: no output gradients for microbatch "
                f"{bwd_chunk_id}: pass grads or call set_local_bwd_input first")
        outputs, inputs, n_args = st["fwd_cache"].pop(bwd_chunk_id)
        if self.is_last:
            roots, root_grads = loss, None
        else:
            if grads is None:
                grads = st["bwd_in"].pop(bwd_chunk_id)
            roots, root_grads = outputs, tuple(_as_tuple(grads))
        if self.dw_builder is not None or full_backward:
            in_grads = stage_backward(roots, root_grads, inputs)
            if self.dw_builder is not None:
                runner = self.dw_builder()
                if full_backward:
                    runner()
                else:
                    st["dw_runner"][bwd_chunk_id] = runner
        else:
            params = list(self.submod.parameters())
            in_grads, handle = stage_backward_input(roots, root_grads, inputs, params)
            st["backward_state"][bwd_chunk_id] = (params, handle)
            st["dw_runner"][bwd_chunk_id] = lambda: stage_backward_weight(params, handle)
        # the positional inputs' gradients: what the previous stage's outputs need (torch
        # drops the keyword inputs' too)
        st["bwd_cache"][bwd_chunk_id] = tuple(in_grads[:n_args])

    def backward_weight_one_chunk(self, bwd_chunk_id, last_backward=False):
        """The weight-gradient work (W) that backward_one_chunk(full_backward=False) left
        for microbatch ``bwd_chunk_id``."""
        if not self.has_backward:
            return
        st = self._chunk_state()
        if bwd_chunk_id not in st["dw_runner"]:
            raise AssertionError(
                f"stage {self.stage_index}: no weight-gradient work for microbatch "
                f"{bwd_chunk_id}; call backward_one_chunk(..., full_backward=False) first")
        st["backward_state"].pop(bwd_chunk_id, None)
        st["dw_runner"].pop(bwd_chunk_id)()

    def set_local_fwd_input(self, prev_stage_outputs, mb_index):
        """The previous stage's outputs of microbatch ``mb_index`` become this stage's
        inputs (detached leaves that require grad)."""
        self._chunk_state()["fwd_in"][mb_index] = tuple(
            self._receive(t) for t in _as_tuple(prev_stage_outputs))

    def get_local_bwd_output(self, mb_index):
        """This stage's input gradients of microbatch ``mb_index`` (popped)."""
        st = self._chunk_state()
        if mb_index not in st["bwd_cache"]:
            raise RuntimeError(f"stage {self.stage_index}: no input gradients for microbatch "
                               f"{mb_index} (backward_one_chunk first)")
        return st["bwd_cache"].pop(mb_index)

    def set_local_bwd_input(self, next_stage_bwd_outputs, mb_index):
        """The next stage's input gradients of microbatch ``mb_index`` become the gradients
        of this stage's outputs."""
        self._chunk_state()["bwd_in"][mb_index] = tuple(_as_tuple(next_stage_bwd_outputs))

    def clear_runtime_states(self):
        """Forget every microbatch's cached forward, gradients and outputs."""
        for v in self._chunk_state().values():
            v.clear()

    def scale_grads(self, grad_scale_factor):
        """Divide the stage's parameter gradients by ``grad_scale_factor`` (1: no-op)."""
        if grad_scale_factor != 1:
            with no_grad():
                for p in self.submod.parameters():
                    if p.grad is not None:
                        p.grad.div_(grad_scale_factor)

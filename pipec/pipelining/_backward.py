"""One stage's backward pass by hand, as torch.distributed.pipelining._backward offers it.

pipec's runtime runs B, I and W actions in C; these functions are for code that drives a
stage's autograd itself (a custom training loop, tests of split backward):

  * :func:`stage_backward` — a full backward from a stage's outputs (or its loss): parameters
    accumulate their ``.grad``; returns the gradients of the stage's inputs;
  * :func:`stage_backward_input` — phase I of a split backward: the inputs' gradients now
    (also accumulated into their ``.grad``, as torch does), the weights' work queued;
  * :func:`stage_backward_weight` — phase W: runs the queued work, accumulating the weights'
    ``.grad``. I then W gives the gradients of one full backward.

torch's ``param_groups`` (autograd hooks on the intermediate nodes where weights meet the
input path) are, in pipec, a :class:`pipec.autograd.WeightGradHandle`: the C autograd engine
records the weight-gradient work that phase I skipped and replays it in phase W.
"""

import warnings

from .. import _C
from .. import autograd
from ..autograd import WeightGradHandle

__all__ = ["stage_backward", "stage_backward_input", "stage_backward_weight"]

Tensor = _C.Tensor


def _pairs(outputs, grads, given, out_t, out_g):
    """Collect (output, gradient) pairs over matching tuples/lists/dicts: tensors that take
    part in autograd. With gradients ``given``, an output whose gradient is None is
    skipped; without, every output is a loss (gradient None, meaning 1)."""
    if isinstance(outputs, Tensor):
        if (outputs.requires_grad or outputs.grad_fn is not None) and (grads is not None
                                                                      or not given):
            out_t.append(outputs)
            out_g.append(grads)
        return
    if given and grads is None:
        return  # a subtree without gradients
    if isinstance(outputs, (tuple, list)):
        if not given:
            grads = [None] * len(outputs)
        if not isinstance(grads, (tuple, list)) or len(grads) != len(outputs):
            raise ValueError(f"output gradients {_describe(grads)} do not match the "
                             f"{len(outputs)} outputs")
        for o, g in zip(outputs, grads):
            _pairs(o, g, given, out_t, out_g)
        return
    if isinstance(outputs, dict):
        if not given:
            grads = {}
        if not isinstance(grads, dict):
            raise ValueError(f"output gradients {_describe(grads)} do not match a dict output")
        for k, o in outputs.items():
            _pairs(o, grads.get(k), given, out_t, out_g)


def _describe(x):
    return f"of type {type(x).__name__}" + (f" and length {len(x)}"
                                             if isinstance(x, (tuple, list)) else "")


def _collect(stage_output, output_grads, what):
    outs, grads = [], []
    _pairs(stage_output, output_grads, output_grads is not None, outs, grads)
    for o, g in zip(outs, grads):
        if g is None and o.numel() != 1:
            raise ValueError(f"{what}: no output gradients were given, and an output of shape "
                             f"{tuple(o.shape)} is not a single-element loss")
    return outs, grads


def stage_backward(stage_output, output_grads, input_values, outputs_with_grads_idxs=None):
    """Full backward of one stage: ``stage_output`` (a loss, or the stage's outputs in any
    nesting of tuples, lists and dicts) against ``output_grads`` (None for a loss or
    several single-element losses; the same structure otherwise, a None entry skipping
    that output). Parameters' ``.grad``
    accumulate; returns ``[v.grad]`` for each of ``input_values`` (None for a value that is
    not a tensor or got no gradient)."""
    if outputs_with_grads_idxs is not None:
        warnings.warn("outputs_with_grads_idxs is deprecated (as in torch); pass only the "
                      "outputs that have gradients", FutureWarning, stacklevel=2)
        stage_output = [stage_output[i] for i in outputs_with_grads_idxs]
        if output_grads is not None:
            output_grads = [output_grads[i] for i in outputs_with_grads_idxs]
    outs, grads = _collect(stage_output, output_grads, "stage_backward")
    if outs:
        autograd.backward(outs, grads)
    return [v.grad if isinstance(v, Tensor) else None for v in input_values]


def stage_backward_input(stage_outputs_or_loss, output_grads, input_values, weights):
    """Phase I of a split backward: returns ``(dinputs, param_groups)``. ``dinputs`` holds
    the gradient of each of ``input_values`` (None where it needs none), also accumulated
    into the inputs' ``.grad``; the weights' ``.grad`` stay untouched until
    :func:`stage_backward_weight` runs ``param_groups`` (a WeightGradHandle). ``weights``
    are the stage's parameters (torch's signature; pipec's engine finds them itself)."""
    weights = list(weights)
    for w in weights:
        if not isinstance(w, Tensor):
            raise TypeError(f"stage_backward_input: weights must be tensors, got "
                            f"{type(w).__name__}")
    outs, grads = _collect(stage_outputs_or_loss, output_grads, "stage_backward_input")
    needing = [v for v in input_values if isinstance(v, Tensor) and v.requires_grad]
    if not outs:
        return [None] * len(input_values), WeightGradHandle(None)
    in_grads, handle = autograd.backward_input(outs, grads, needing)
    by_id = {}
    for v, g in zip(needing, in_grads):
        if g is not None:
            by_id[id(v)] = g
            v.grad = g if v.grad is None else v.grad + g
    return [by_id.get(id(v)) for v in input_values], handle


def stage_backward_weight(weights, param_groups, retain_graph=False):
    """Phase W: run the work ``stage_backward_input`` queued in ``param_groups``,
    accumulating the weights' ``.grad``. Returns each weight's ``.grad``."""
    if not isinstance(param_groups, WeightGradHandle):
        raise TypeError("stage_backward_weight: param_groups must be what "
                        "stage_backward_input returned (a pipec.autograd.WeightGradHandle), "
                        f"got {type(param_groups).__name__}")
    weights = list(weights)
    param_groups.backward_weight(retain_graph=retain_graph)
    return tuple(w.grad for w in weights)

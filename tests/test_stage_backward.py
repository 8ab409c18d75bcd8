"""pipec.pipelining._backward: one stage's backward by hand, ported from torch's
test/distributed/pipelining/test_backward.py (StageBackwardTests), on CPU and CUDA.

  - stage_backward from a loss: the returned input gradient and every parameter gradient
    equal a plain loss.backward() on a copy of the module;
  - stage_backward_input: the input's gradient (returned and in x.grad) equals the
    reference, and no parameter has a gradient yet;
  - stage_backward_weight after it: the parameter gradients equal the reference's;
  - 10 rounds of I then W accumulate like 10 full backwards;
  - a weight used at two places on the path from the input (several intermediates) and a
    stage with two outputs, one given no gradient;
  - pipec additions: outputs with gradients in a dict, a stage whose inputs need no
    gradient (the first stage: I does nothing to the inputs, W gives every parameter its
    gradient), and the errors (a non-scalar output without a gradient, W without I's
    handle, W twice).
torch's test_stage_backward_weight_grad_validation overwrites torch's internal param-group
dicts; pipec's param groups are a C-recorded WeightGradHandle, so it has no counterpart.

Tolerance: the split and the full backward run the same kernels on the same values, but in
another order of accumulation for weights used twice: float32 rtol 1e-5, atol 1e-5 x max|ref|
(MSE sums over 32 x 64 elements).
"""
import copy

import numpy as np
import pytest

import pipec
from pipec import nn
from pipec.pipelining._backward import (stage_backward, stage_backward_input,
                                        stage_backward_weight)

from model_registry import MLPModule

DEVICE_KINDS = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
D_HID = 64
BATCH = 32


def _dev(kind):
    return "cuda:0" if kind == "cuda" else "cpu"


def _np(t):
    return t.detach().cpu().numpy().astype(np.float64)


def _close(a, e, what):
    e = _np(e)
    np.testing.assert_allclose(_np(a), e, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(e).max()),
                               err_msg=what)


def _setup(kind, module=None):
    dev = _dev(kind)
    pipec.manual_seed(0)
    mod = (module or MLPModule(D_HID)).to(dev)
    ref = copy.deepcopy(mod)
    x = pipec.randn(BATCH, D_HID, device=dev)
    target = pipec.randn(BATCH, D_HID, device=dev)
    return dev, mod, ref, x, target


def _mse_sum(out, target):
    return ((out - target) ** 2).sum()


def _reference(ref, x, target):
    x_ref = x.detach().clone().requires_grad_(True)
    _mse_sum(ref(x_ref), target).backward()
    return x_ref.grad


def _assert_params(mod, ref, what):
    for (name, p), (_, r) in zip(mod.named_parameters(), ref.named_parameters()):
        assert p.grad is not None, f"{what}: {name} has no gradient"
        _close(p.grad, r.grad, f"{what}: {name}")


@pytest.mark.parametrize("kind", DEVICE_KINDS)
def test_stage_backward(kind):
    _, mod, ref, x, target = _setup(kind)
    x = x.requires_grad_(True)
    loss = _mse_sum(mod(x), target)
    (gx,) = stage_backward(loss, None, (x,))
    _close(gx, _reference(ref, x, target), "input grad")
    _assert_params(mod, ref, "stage_backward")


@pytest.mark.parametrize("kind", DEVICE_KINDS)
def test_stage_backward_input_then_weight(kind):
    _, mod, ref, x, target = _setup(kind)
    x = x.requires_grad_(True)
    loss = _mse_sum(mod(x), target)
    params = list(mod.parameters())
    dinputs, groups = stage_backward_input((loss,), None, [x], iter(params))
    x_ref_grad = _reference(ref, x, target)
    _close(dinputs[0], x_ref_grad, "dinputs")
    _close(x.grad, x_ref_grad, "x.grad")
    assert all(p.grad is None for p in params), "phase I must leave the weights alone"
    grads = stage_backward_weight(params, groups, retain_graph=True)
    assert len(grads) == len(params) and all(g is p.grad for g, p in zip(grads, params))
    _assert_params(mod, ref, "I then W")


@pytest.mark.parametrize("kind", DEVICE_KINDS)
def test_stage_backward_weight_multiple_iters(kind):
    dev, mod, ref, _, _ = _setup(kind)
    params = list(mod.parameters())
    for i in range(10):
        x = pipec.randn(BATCH, D_HID, device=dev, requires_grad=True)
        target = pipec.randn(BATCH, D_HID, device=dev)
        dinputs, groups = stage_backward_input((_mse_sum(mod(x), target),), None, [x],
                                               params)
        stage_backward_weight(params, groups)
        _close(dinputs[0], _reference(ref, x, target), f"iteration {i}: dinputs")
    _assert_params(mod, ref, "10 iterations")


class _SharedWeight(nn.Module):
    """One Linear used twice on the path from the input (two intermediates meet its weight),
    and two outputs."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(D_HID, D_HID)
        self.other = nn.Linear(D_HID, D_HID)

    def forward(self, x):
        h = self.lin(x)
        y = self.lin(pipec.relu(h)) + self.other(h)
        return y, h


@pytest.mark.parametrize("kind", DEVICE_KINDS)
def test_stage_backward_multi_output_intermediate(kind):
    dev, mod, ref, x, _ = _setup(kind, _SharedWeight())
    x = x.requires_grad_(True)
    gy = pipec.randn(BATCH, D_HID, device=dev)
    gh = pipec.randn(BATCH, D_HID, device=dev)
    for grads in ((gy, gh), (gy, None)):
        for p in list(mod.parameters()) + list(ref.parameters()):
            p.grad = None
        x.grad = None
        outs = mod(x)
        dinputs, groups = stage_backward_input(outs, grads, [x], mod.parameters())
        stage_backward_weight(mod.parameters(), groups)
        x_ref = x.detach().clone().requires_grad_(True)
        y_ref, h_ref = ref(x_ref)
        pairs = [(y_ref, gy)] + ([(h_ref, gh)] if grads[1] is not None else [])
        pipec.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
        what = "both outputs" if grads[1] is not None else "second output without gradient"
        _close(dinputs[0], x_ref.grad, f"{what}: dinputs")
        _assert_params(mod, ref, what)


def test_dict_outputs_and_non_tensor_inputs():
    _, mod, ref, x, _ = _setup("cpu", _SharedWeight())
    x = x.requires_grad_(True)
    y, h = mod(x)
    gy = pipec.randn(BATCH, D_HID)
    grads = stage_backward({"y": y, "h": h}, {"y": gy}, [x, 3, None])
    assert grads[1] is None and grads[2] is None
    x_ref = x.detach().clone().requires_grad_(True)
    ref(x_ref)[0].backward(gy)
    _close(grads[0], x_ref.grad, "dict outputs: input grad")
    _assert_params(mod, ref, "dict outputs")


def test_first_stage_inputs_need_no_gradient():
    """A first stage's input needs no gradient: phase I returns None for it and W gives
    every parameter its full gradient."""
    _, mod, ref, x, target = _setup("cpu")
    params = list(mod.parameters())
    dinputs, groups = stage_backward_input((_mse_sum(mod(x), target),), None, [x], params)
    assert dinputs == [None] and x.grad is None
    assert all(p.grad is None for p in params)
    assert len(groups) > 0
    stage_backward_weight(params, groups)
    _reference(ref, x, target)
    _assert_params(mod, ref, "first stage")


def test_errors():
    _, mod, _, x, target = _setup("cpu")
    x = x.requires_grad_(True)
    with pytest.raises(ValueError, match="not a single-element loss"):
        stage_backward(mod(x), None, [x])
    with pytest.raises(ValueError, match="do not match"):
        stage_backward((mod(x), mod(x)), [pipec.ones(BATCH, D_HID)], [x])
    params = list(mod.parameters())
    with pytest.raises(TypeError, match="WeightGradHandle"):
        stage_backward_weight(params, [{"params": params}])
    with pytest.raises(TypeError, match="weights must be tensors"):
        stage_backward_input(_mse_sum(mod(x), target), None, [x], ["w"])
    _, groups = stage_backward_input(_mse_sum(mod(x), target), None, [x], params)
    stage_backward_weight(params, groups)
    with pytest.raises(RuntimeError, match="already run"):
        stage_backward_weight(params, groups)

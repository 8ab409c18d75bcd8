"""The model zoo (tests/model_registry.py) against independent NumPy float64 models.

For every zoo model: the forward output, the MSE loss (sum and mean) and every parameter's
gradient equal a NumPy float64 implementation of the same model with the same weights
(copied out through state_dict()/.numpy()). The NumPy side is written from the math: each
reference runs its layers forward on a small tape and then walks the tape backwards.

Tolerance: pipec computes in float32 (unit roundoff 6e-8); sums here run over at most 512
terms, so rounding stays well under rtol 1e-5 plus atol 1e-5 x (largest reference magnitude).
The absolute part, relative to scale, covers elements much smaller than the tensor's scale,
whose relative error cancellation can inflate.
"""
import copy

import numpy as np
import pytest

import pipec
from pipec import nn
from pipec.pipelining import SplitPoint

from model_registry import (CustomLinearDx, CustomLinearDxDw, ExampleCode, MLPKWargModule,
                            MLPModule, MLPModuleWithDw, ModelWithKwargs, ModelWithParamAlias,
                            MultiMLP, MultiMLPKwargs, MultiMLPWithDw)

RTOL = 1e-5
ATOL_REL = 1e-5


def assert_close(actual, ref, what=""):
    actual = np.asarray(actual, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert actual.shape == ref.shape, f"{what}: shape {actual.shape} != {ref.shape}"
    scale = max(float(np.abs(ref).max()) if ref.size else 0.0, 1e-30)
    np.testing.assert_allclose(actual, ref, rtol=RTOL, atol=ATOL_REL * scale, err_msg=what)


def np64(t):
    return t.detach().numpy().astype(np.float64)


def weights_of(model):
    """The model's weights as float64 NumPy arrays, through state_dict()."""
    return {k: np64(v) for k, v in model.state_dict().items()}


# ---- the NumPy reference: a tape of layers over one chain of activations ----

class Tape:
    """Forward ops on float64 arrays that record what their backward needs. Gradients of
    named weights accumulate in .grads (a weight used twice gets the sum)."""

    def __init__(self, weights):
        self.w = weights
        self.ops = []
        self.grads = {}

    def _acc(self, name, g):
        self.grads[name] = self.grads.get(name, 0.0) + g

    def mm(self, x, wname):                      # x @ W
        self.ops.append(("mm", x, wname))
        return x @ self.w[wname]

    def linear(self, x, wname, bname):           # x @ W^T + b
        self.ops.append(("linear", x, wname, bname))
        return x @ self.w[wname].T + self.w[bname]

    def relu(self, x):
        self.ops.append(("relu", x > 0))
        return np.where(x > 0, x, 0.0)

    def add_const(self, x, c):                   # + a value that needs no gradient
        self.ops.append(("add",))
        return x + c

    def backward(self, dy):
        """Walk the tape backwards from d(loss)/d(output); returns d(loss)/d(input)."""
        for op in reversed(self.ops):
            kind = op[0]
            if kind == "mm":
                _, x, wn = op
                self._acc(wn, x.T @ dy)
                dy = dy @ self.w[wn].T
            elif kind == "linear":
                _, x, wn, bn = op
                self._acc(wn, dy.T @ x)
                self._acc(bn, dy.sum(axis=0))
                dy = dy @ self.w[wn]
            elif kind == "relu":
                dy = dy * op[1]
            elif kind == "add":
                pass
        return dy


def np_mse(out, target, reduction):
    diff = out - target
    if reduction == "sum":
        return float((diff ** 2).sum()), 2.0 * diff
    return float((diff ** 2).mean()), 2.0 * diff / diff.size


def ref_example_code(w, x, splits):
    t = Tape(w)
    h = t.relu(t.mm(x, "mm_param0"))
    h = t.linear(h, "lin0.weight", "lin0.bias")
    h = t.add_const(t.relu(h), w["cval"])
    h = t.mm(h, "mm_param1")
    for k in range(1, splits - 1):  # splits > 2 adds lin1, ..., splits > 7 adds lin6
        h = t.relu(t.linear(h, f"lin{k}.weight", f"lin{k}.bias"))
    return t, h


def ref_model_with_kwargs(w, x, y, splits):
    t = Tape(w)
    h = t.add_const(t.mm(x, "mm_param0"), y)
    h = t.relu(t.linear(h, "lin0.weight", "lin0.bias"))
    h = t.mm(h, "mm_param1")
    h = t.relu(t.linear(h, "lin1.weight", "lin1.bias"))
    for k in range(2, splits):  # splits > 2 adds lin2, ..., splits > 7 adds lin7
        h = t.relu(t.linear(h, f"lin{k}.weight", f"lin{k}.bias"))
    return t, h


def ref_param_alias(w, x, y):
    # mm_param0 is mm_param1 and lin0 is lin1: use the first names for both sites.
    t = Tape(w)
    h = t.add_const(t.mm(x, "mm_param1"), y)
    h = t.relu(t.linear(h, "lin1.weight", "lin1.bias"))
    h = t.mm(h, "mm_param1")
    h = t.relu(t.linear(h, "lin1.weight", "lin1.bias"))
    return t, h


def ref_mlp(t, h, prefix):
    h = t.relu(t.linear(h, f"{prefix}net1.weight", f"{prefix}net1.bias"))
    return t.linear(h, f"{prefix}net2.weight", f"{prefix}net2.bias")


def ref_multi_mlp(w, x, n_layers):
    t = Tape(w)
    h = x
    for i in range(n_layers):
        h = ref_mlp(t, h, f"layers.{i}.")
    return t, h


def ref_mlp_with_dw(t, h, prefix):
    h = t.relu(t.linear(h, f"{prefix}fc1_weight", f"{prefix}fc1_bias"))
    return t.linear(h, f"{prefix}fc2_weight", f"{prefix}fc2_bias")


def ref_multi_mlp_with_dw(w, x, n_layers):
    t = Tape(w)
    h = x
    for i in range(n_layers):
        h = ref_mlp_with_dw(t, h, f"layers.{i}.")
    return t, h


# ---- running a pipec model and checking it ----

def make_inputs(rng, *shapes):
    return [rng.standard_normal(s).astype(np.float32) for s in shapes]


def run_and_check(model, args_np, kwargs_np, ref_fn, reduction):
    """Forward, MSE loss and backward in pipec; the same through ref_fn in NumPy; compare
    output, loss, every parameter's gradient and the input gradient."""
    weights = weights_of(model)
    rng = np.random.default_rng(7)
    args = [pipec.tensor(a) for a in args_np]
    args[0].requires_grad_(True)
    kwargs = {k: pipec.tensor(v) for k, v in kwargs_np.items()}
    out = model(*args, **kwargs)
    target_np = rng.standard_normal(out.shape).astype(np.float32)
    loss = nn.functional.mse_loss(out, pipec.tensor(target_np), reduction=reduction)
    loss.backward()

    tape, ref_out = ref_fn(weights, *[a.astype(np.float64) for a in args_np],
                           **{k: v.astype(np.float64) for k, v in kwargs_np.items()})
    ref_loss, dout = np_mse(ref_out, target_np.astype(np.float64), reduction)
    ref_dx = tape.backward(dout)

    assert_close(out.detach().numpy(), ref_out, "output")
    assert_close(float(loss.item()), ref_loss, f"loss ({reduction})")
    assert_close(args[0].grad.numpy(), ref_dx, "input gradient")
    names = [n for n, _ in model.named_parameters()]
    assert set(tape.grads) <= set(names), "the reference uses names the model lacks"
    for name, p in model.named_parameters():
        if name in tape.grads:
            assert p.grad is not None, f"{name} has no gradient"
            assert_close(p.grad.numpy(), tape.grads[name], f"grad of {name}")
        else:  # a layer this configuration does not use (ExampleCode's spare lin*)
            assert p.grad is None, f"unused {name} got a gradient"
    return out, loss


D = 16
B = 8


@pytest.fixture(autouse=True)
def _seed():
    pipec.manual_seed(1234)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("splits", range(2, 9))
def test_example_code(splits, reduction):
    model = ExampleCode(D, splits=splits)
    (x,) = make_inputs(np.random.default_rng(splits), (B, D))
    run_and_check(model, [x], {}, lambda w, x: ref_example_code(w, x, splits), reduction)


def test_example_code_structure():
    model = ExampleCode(D)
    assert [n for n, _ in model.named_parameters()] == (
        ["mm_param0", "mm_param1"] + [f"lin{i}.{k}" for i in range(7) for k in ("weight", "bias")])
    assert [n for n, _ in model.named_buffers()] == ["cval"]
    assert not model.cval.requires_grad
    assert list(model.state_dict())[:3] == ["mm_param0", "mm_param1", "cval"]
    assert model.mm_param0.shape == (D, D) and model.cval.shape == (D,)
    with pytest.raises(AssertionError):
        ExampleCode(D, splits=9)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("splits", [2, 3, 8])
def test_model_with_kwargs(splits, reduction):
    model = ModelWithKwargs(D, splits=splits)
    x, y = make_inputs(np.random.default_rng(splits), (B, D), (B, D))
    run_and_check(model, [x], {"y": y},
                  lambda w, x, y: ref_model_with_kwargs(w, x, y, splits), reduction)


def test_model_with_kwargs_default_y():
    # The default y is zeros(DEFAULT_BATCH_SIZE, DEFAULT_DHID), so this runs at full size.
    assert ModelWithKwargs.DEFAULT_DHID == 512 and ModelWithKwargs.DEFAULT_BATCH_SIZE == 256
    model = ModelWithKwargs()
    d, b = ModelWithKwargs.DEFAULT_DHID, ModelWithKwargs.DEFAULT_BATCH_SIZE
    (x,) = make_inputs(np.random.default_rng(0), (b, d))
    x /= np.sqrt(d)
    zeros = np.zeros((b, d))
    run_and_check(model, [x], {}, lambda w, x: ref_model_with_kwargs(w, x, zeros, 2), "mean")


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_model_with_param_alias(reduction):
    model = ModelWithParamAlias(D)
    assert model.mm_param0 is model.mm_param1 and model.lin0 is model.lin1
    params = list(model.parameters())
    assert len(params) == 3
    assert [n for n, _ in model.named_parameters()] == ["mm_param1", "lin1.weight", "lin1.bias"]
    assert [n for n, _ in model.named_modules()] == ["", "lin1"]
    assert len(list(model.named_parameters(remove_duplicate=False))) == 6
    assert list(model.state_dict()) == ["mm_param1", "mm_param0", "lin1.weight", "lin1.bias",
                                        "lin0.weight", "lin0.bias"]
    x, y = make_inputs(np.random.default_rng(3), (B, D), (B, D))
    run_and_check(model, [x, y], {}, ref_param_alias, reduction)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_mlp_module(reduction):
    model = MLPModule(D)
    assert [n for n, _ in model.named_children()] == ["net1", "relu", "net2"]
    (x,) = make_inputs(np.random.default_rng(4), (B, D))
    run_and_check(model, [x], {}, _ref_single_mlp, reduction)


def _ref_single_mlp(w, x):
    t = Tape(w)
    return t, ref_mlp(t, x, "")


@pytest.mark.parametrize("with_kwarg", [False, True])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_mlp_kwarg_module(with_kwarg, reduction):
    model = MLPKWargModule(D, layer_num=0)
    assert model.layer_num == 0
    (x,) = make_inputs(np.random.default_rng(5), (B, D))
    kwargs = {"unused_kwarg": np.ones((1,), np.float32)} if with_kwarg else {}
    run_and_check(model, [x], kwargs, lambda w, x, **_: _ref_single_mlp(w, x), reduction)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("n_layers", [1, 2, 4])
def test_multi_mlp(n_layers, reduction):
    model = MultiMLP(D, n_layers=n_layers)
    assert model.split_spec == {f"layers.{i}": SplitPoint.BEGINNING for i in range(1, n_layers)}
    assert len(model.layers) == n_layers
    (x,) = make_inputs(np.random.default_rng(n_layers), (B, D))
    run_and_check(model, [x], {}, lambda w, x: ref_multi_mlp(w, x, n_layers), reduction)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_multi_mlp_kwargs(reduction):
    model = MultiMLPKwargs(D, n_layers=3)
    assert model.split_spec == {"layers.1": SplitPoint.BEGINNING,
                                "layers.2": SplitPoint.BEGINNING}
    assert [layer.layer_num for layer in model.layers] == [0, 1, 2]
    (x,) = make_inputs(np.random.default_rng(6), (B, D))
    run_and_check(model, [x], {"unused_kwarg": np.zeros((1,), np.float32)},
                  lambda w, x, **_: ref_multi_mlp(w, x, 3), reduction)


def test_multi_mlp_param_names():
    model = MultiMLP(D, n_layers=2)
    assert list(model.state_dict()) == [
        f"layers.{i}.{n}.{k}" for i in range(2) for n in ("net1", "net2")
        for k in ("weight", "bias")]


# ---- the custom-Function models ----

def test_mlp_module_with_dw_init():
    model = MLPModuleWithDw(D)
    assert [n for n, _ in model.named_parameters()] == [
        "fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias"]
    for name, p in model.named_parameters():
        a = p.detach().numpy()
        assert np.abs(a).max() <= 0.001, name
        assert np.abs(a).max() > 0.0001, name  # really drawn, not zero
    assert model.cached_context == {"fc1": [], "fc2": [], "fc1_input": [], "fc2_input": []}
    assert model.use_custom_logic is False


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_mlp_module_with_dw(reduction):
    model = MLPModuleWithDw(D)
    (x,) = make_inputs(np.random.default_rng(8), (B, D))
    run_and_check(model, [x], {}, _ref_one_with_dw, reduction)


def _ref_one_with_dw(w, x):
    t = Tape(w)
    return t, ref_mlp_with_dw(t, x, "")


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("n_layers", [1, 3])
def test_multi_mlp_with_dw_untoggled(n_layers, reduction):
    model = MultiMLPWithDw(D, n_layers=n_layers)
    (x,) = make_inputs(np.random.default_rng(9), (B, D))
    run_and_check(model, [x], {}, lambda w, x: ref_multi_mlp_with_dw(w, x, n_layers),
                  reduction)


def test_multi_mlp_with_dw_compute_dw_requires_toggle():
    model = MultiMLPWithDw(D, n_layers=2)
    with pytest.raises(RuntimeError, match="Need to call toggle"):
        model.compute_dW()


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_multi_mlp_with_dw_toggled(reduction):
    """toggle(): backward leaves weight gradients unset and queues (grad_output, input) per
    layer; compute_dW() per microbatch, in order, then gives the untoggled model's gradients
    (and NumPy's)."""
    n_layers, n_mb = 3, 4
    model = MultiMLPWithDw(D, n_layers=n_layers)
    ref_model = copy.deepcopy(model)
    model.toggle()
    assert model.use_custom_logic and all(layer.use_custom_logic for layer in model.layers)
    assert not ref_model.use_custom_logic

    rng = np.random.default_rng(10)
    xs = make_inputs(rng, *[(B, D)] * n_mb)
    targets = make_inputs(rng, *[(B, D)] * n_mb)
    weights = weights_of(model)
    ref_grads = {}
    for mb, (x_np, t_np) in enumerate(zip(xs, targets)):
        x = pipec.tensor(x_np).requires_grad_(True)
        out = model(x)
        loss = nn.functional.mse_loss(out, pipec.tensor(t_np), reduction=reduction)
        loss.backward()
        for name, p in model.named_parameters():
            assert p.grad is None, f"{name}.grad set by a toggled backward"
        for layer in model.layers:
            for key in ("fc1", "fc2", "fc1_input", "fc2_input"):
                assert len(layer.cached_context[key]) == mb + 1

        x_ref = pipec.tensor(x_np).requires_grad_(True)
        out_ref = ref_model(x_ref)
        loss_ref = nn.functional.mse_loss(out_ref, pipec.tensor(t_np), reduction=reduction)
        loss_ref.backward()
        np.testing.assert_array_equal(out.detach().numpy(), out_ref.detach().numpy())
        assert_close(x.grad.numpy(), x_ref.grad.numpy(), "input gradient, toggled")

        tape, ref_out = ref_multi_mlp_with_dw(weights, x_np.astype(np.float64), n_layers)
        _, dout = np_mse(ref_out, t_np.astype(np.float64), reduction)
        tape.backward(dout)
        for k, g in tape.grads.items():
            ref_grads[k] = ref_grads.get(k, 0.0) + g
        # What the last layer queued: d(loss)/d(fc2 output) and fc2's input.
        last = model.layers[n_layers - 1]
        assert_close(last.cached_context["fc2"][-1].numpy(), dout, "queued grad_output")

    for mb in range(n_mb):
        model.compute_dW()
    for layer in model.layers:
        assert all(len(v) == 0 for v in layer.cached_context.values())
    ref_params = dict(ref_model.named_parameters())
    for name, p in model.named_parameters():
        assert_close(p.grad.numpy(), ref_params[name].grad.numpy(), f"{name} vs untoggled")
        assert_close(p.grad.numpy(), ref_grads[name], f"{name} vs NumPy")

    # toggling back restores the ordinary full backward
    model.toggle()
    model.zero_grad()
    out = model(pipec.tensor(xs[0]))
    nn.functional.mse_loss(out, pipec.tensor(targets[0]), reduction=reduction).backward()
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(RuntimeError, match="Need to call toggle"):
        model.compute_dW()


def test_custom_linear_functions():
    rng = np.random.default_rng(11)
    x_np, w_np, b_np, dy_np = make_inputs(rng, (B, D), (D + 1, D), (D + 1,), (B, D + 1))
    x = pipec.tensor(x_np).requires_grad_(True)
    w = nn.Parameter(pipec.tensor(w_np))
    b = nn.Parameter(pipec.tensor(b_np))
    y = CustomLinearDxDw.apply(x, w, b)
    x64, w64 = x_np.astype(np.float64), w_np.astype(np.float64)
    dy64 = dy_np.astype(np.float64)
    assert_close(y.detach().numpy(), x64 @ w64.T + b_np, "CustomLinearDxDw forward")
    y.backward(pipec.tensor(dy_np))
    assert_close(x.grad.numpy(), dy64 @ w64, "dx")
    assert_close(w.grad.numpy(), dy64.T @ x64, "dW")
    assert_close(b.grad.numpy(), dy64.sum(0), "db")

    holder = MLPModuleWithDw(2)  # anything with a cached_context dict
    holder.cached_context["lin"] = []
    holder.cached_context["lin_input"] = []
    x.grad = None
    w.grad = None
    b.grad = None
    y = CustomLinearDx.apply(x, w, b, holder, "lin")
    assert_close(y.detach().numpy(), x64 @ w64.T + b_np, "CustomLinearDx forward")
    y.backward(pipec.tensor(dy_np))
    assert_close(x.grad.numpy(), dy64 @ w64, "dx (Dx only)")
    assert w.grad is None and b.grad is None
    assert_close(holder.cached_context["lin"][0].numpy(), dy64, "stashed grad_output")
    assert_close(holder.cached_context["lin_input"][0].numpy(), x64, "stashed input")


def test_zoo_models_deepcopy_and_load():
    """Every zoo model survives deepcopy and a state_dict round trip with equal outputs."""
    rng = np.random.default_rng(12)
    cases = [(ExampleCode(D, 4), 1), (ModelWithKwargs(D, 3), 2), (ModelWithParamAlias(D), 2),
             (MLPModule(D), 1), (MLPKWargModule(D, 1), 1), (MultiMLP(D, 3), 1),
             (MultiMLPKwargs(D, 2), 1), (MLPModuleWithDw(D), 1), (MultiMLPWithDw(D, 2), 1)]
    for model, n_args in cases:
        args = [pipec.tensor(a) for a in make_inputs(rng, *[(B, D)] * n_args)]
        clone = copy.deepcopy(model)
        fresh = type(model)(*_ctor_args(model))
        fresh.load_state_dict(model.state_dict())
        ref = model(*args).detach().numpy()
        np.testing.assert_array_equal(clone(*args).detach().numpy(), ref, err_msg=type(model).__name__)
        np.testing.assert_array_equal(fresh(*args).detach().numpy(), ref, err_msg=type(model).__name__)
        with pipec.no_grad():
            next(clone.parameters()).add_(1.0)
        assert not np.array_equal(clone(*args).detach().numpy(), ref), type(model).__name__


def _ctor_args(model):
    name = type(model).__name__
    if name in ("ExampleCode", "ModelWithKwargs"):
        return (D, model.splits)
    if name == "MLPKWargModule":
        return (D, model.layer_num)
    if name in ("MultiMLP", "MultiMLPKwargs", "MultiMLPWithDw"):
        return (D, len(model.layers))
    return (D,)


# ---- pipe_split and SplitPoint ----

def test_pipe_split_is_a_noop_unless_a_tracer_hooks_it():
    from pipec.pipelining import _split
    assert pipec.pipelining.pipe_split() is None
    assert pipec.pipe_split is pipec.pipelining.pipe_split
    assert SplitPoint.BEGINNING.value == 1 and SplitPoint.END.value == 2
    assert pipec.SplitPoint is SplitPoint
    x = pipec.tensor(np.ones((2, D), np.float32))
    y = pipec.tensor(np.zeros((2, D), np.float32))
    calls = []
    assert _split._pipe_split_hook is None
    _split._pipe_split_hook = lambda: calls.append(1)
    try:
        for splits in (2, 5, 8):
            calls.clear()
            ExampleCode(D, splits=splits)(x)
            assert len(calls) == splits - 1
        calls.clear()
        ModelWithKwargs(D, splits=3)(x, y)
        assert len(calls) == 2
        calls.clear()
        ModelWithParamAlias(D)(x, y)
        assert len(calls) == 1
        calls.clear()
        MultiMLP(D, 3)(x)  # split by split_spec, not by pipe_split calls
        assert calls == []
    finally:
        _split._pipe_split_hook = None

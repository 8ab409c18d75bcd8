"""pipec.nn: Module semantics, layers, functional ops, init, and custom autograd Functions.

Numerical checks compare with NumPy float64 written from the math. Tolerance for float32
results: rtol 1e-5 and atol 1e-5 x (largest reference magnitude) (float32 unit roundoff
is 6e-8 and the reductions here are short); float64 results: 1e-12.
"""
import copy
import math
import re
from collections import OrderedDict

import numpy as np
import pytest

import pipec
from pipec import nn
from pipec.nn import functional as F
from pipec.nn import init

from model_registry import MLPModule, ModelWithParamAlias, MultiMLP


def assert_close(actual, ref, what="", rtol=1e-5, atol_rel=1e-5):
    actual = np.asarray(actual, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert actual.shape == ref.shape, f"{what}: shape {actual.shape} != {ref.shape}"
    scale = max(float(np.abs(ref).max()) if ref.size else 0.0, 1e-30)
    np.testing.assert_allclose(actual, ref, rtol=rtol, atol=atol_rel * scale, err_msg=what)


def randn_np(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


@pytest.fixture(autouse=True)
def _seed():
    pipec.manual_seed(0)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


class Net(nn.Module):
    """A small model exercising every kind of registration."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(pipec.ones(3))
        self.lin = nn.Linear(3, 2)
        self.register_buffer("running", pipec.zeros(3))
        self.register_buffer("scratch", pipec.zeros(1), persistent=False)
        self.seq = nn.Sequential(nn.Linear(2, 4), nn.ReLU())
        self.plain = pipec.zeros(2)  # a plain attribute, not a buffer

    def forward(self, x):
        return self.seq(self.lin(x * self.w))


# ---- registration ----

def test_attribute_registration():
    net = Net()
    assert list(net._parameters) == ["w"]
    assert list(net._buffers) == ["running", "scratch"]
    assert list(net._modules) == ["lin", "seq"]
    assert "plain" in net.__dict__ and "plain" not in net._buffers
    assert isinstance(net.w, nn.Parameter) and isinstance(net.w, pipec.Tensor)
    # re-registering a name moves it between kinds
    net.lin = nn.Parameter(pipec.zeros(1))
    assert "lin" in net._parameters and "lin" not in net._modules
    net.lin = None  # a parameter slot accepts None
    assert net.lin is None and "lin" in net._parameters
    # a Buffer assigned as an attribute becomes a buffer and loses its marker
    net.extra = nn.Buffer(pipec.ones(2))
    assert "extra" in net._buffers and not isinstance(net.extra, nn.Buffer)
    net.extra2 = nn.Buffer(pipec.ones(2), persistent=False)
    assert "extra2" in net._buffers and "extra2" not in net.state_dict()
    # deleting
    del net.w
    assert "w" not in net._parameters
    with pytest.raises(AttributeError, match="no attribute 'w'"):
        net.w


def test_registration_errors():
    net = Net()
    with pytest.raises(TypeError, match="cannot assign .*Tensor.* as parameter 'w'"):
        net.w = pipec.ones(3)  # a plain tensor into a parameter slot
    with pytest.raises(TypeError, match=r"parameter 'p'.*Parameter or None required"):
        net.register_parameter("p", pipec.ones(3))
    with pytest.raises(TypeError, match="parameter 'p'"):
        net.register_parameter("p", [1.0, 2.0])
    with pytest.raises(TypeError, match="expects a pipec.Tensor"):
        nn.Parameter([1.0, 2.0])
    with pytest.raises(KeyError, match="contain"):
        net.register_parameter("a.b", nn.Parameter(pipec.ones(1)))
    with pytest.raises(KeyError, match="empty"):
        net.register_buffer("", pipec.ones(1))
    with pytest.raises(KeyError, match="already exists"):
        net.register_buffer("plain", pipec.ones(1))
    with pytest.raises(TypeError, match="buffer 'b'"):
        net.register_buffer("b", 3.0)
    with pytest.raises(TypeError, match="buffer 'running'"):
        net.running = "text"
    with pytest.raises(TypeError, match="is not a Module subclass"):
        net.add_module("m", "not a module")
    with pytest.raises(TypeError, match="child module 'seq'"):
        net.seq = pipec.ones(1)

    class Early(nn.Module):
        def __init__(self):
            self.p = nn.Parameter(pipec.ones(1))  # before super().__init__()

    with pytest.raises(AttributeError, match="before Module.__init__"):
        Early()
    with pytest.raises(TypeError, match="unexpected arguments"):
        nn.Module(3)


def test_parameter_basics():
    data = pipec.tensor([1.0, 2.0, 3.0])
    p = nn.Parameter(data)
    assert p.requires_grad and p.grad_fn is None and p.is_leaf
    assert type(p) is nn.Parameter and isinstance(p, pipec.Tensor)
    with pipec.no_grad():
        p.mul_(2.0)
    np.testing.assert_array_equal(data.numpy(), [2.0, 4.0, 6.0])  # shares storage
    assert not nn.Parameter(data, requires_grad=False).requires_grad
    assert nn.Parameter().shape == (0,)
    assert repr(p).startswith("Parameter containing:\ntensor([2., 4., 6.]")
    q = copy.deepcopy(p)
    assert type(q) is nn.Parameter and q.requires_grad and q is not p
    with pipec.no_grad():
        q.zero_()
    np.testing.assert_array_equal(p.detach().numpy(), [2.0, 4.0, 6.0])


def test_buffer_marker():
    b = nn.Buffer(pipec.ones(2))
    assert isinstance(b, nn.Buffer) and isinstance(b, pipec.Tensor)
    assert not isinstance(pipec.ones(2), nn.Buffer)
    assert not b.requires_grad and b.persistent


# ---- iteration ----

def test_named_members_order_and_prefixes():
    net = Net()
    assert [n for n, _ in net.named_parameters()] == [
        "w", "lin.weight", "lin.bias", "seq.0.weight", "seq.0.bias"]
    assert [n for n, _ in net.named_parameters(prefix="m")][0] == "m.w"
    assert [n for n, _ in net.named_parameters(recurse=False)] == ["w"]
    assert [n for n, _ in net.named_buffers()] == ["running", "scratch"]
    assert len(list(net.buffers())) == 2
    assert [n for n, _ in net.named_children()] == ["lin", "seq"]
    assert [n for n, _ in net.named_modules()] == ["", "lin", "seq", "seq.0", "seq.1"]
    assert len(list(net.modules())) == 5 and len(list(net.children())) == 2
    assert list(net.state_dict()) == ["w", "running", "lin.weight", "lin.bias",
                                      "seq.0.weight", "seq.0.bias"]


def test_shared_parameters_and_modules_listed_once():
    shared = nn.Linear(2, 2)
    m = nn.Module()
    m.a = shared
    m.b = nn.Sequential(shared, nn.ReLU())
    m.p = nn.Parameter(pipec.ones(1))
    m.q = m.p
    assert [n for n, _ in m.named_parameters()] == ["p", "a.weight", "a.bias"]
    assert len(list(m.parameters())) == 3
    assert [n for n, _ in m.named_parameters(remove_duplicate=False)] == [
        "p", "q", "a.weight", "a.bias", "b.0.weight", "b.0.bias"]
    assert [n for n, _ in m.named_modules()] == ["", "a", "b", "b.1"]
    assert len(list(m.named_modules(remove_duplicate=False))) == 5
    assert list(m.state_dict()) == ["p", "q", "a.weight", "a.bias", "b.0.weight", "b.0.bias"]

    alias = ModelWithParamAlias(4)
    assert len(list(alias.parameters())) == 3
    assert len(list(alias.children())) == 1


def test_get_submodule_parameter_buffer():
    model = MultiMLP(4, n_layers=3)
    assert model.get_submodule("layers.1.net2") is model.layers[1].net2
    assert model.get_submodule("") is model
    assert model.get_parameter("layers.2.net1.bias") is model.layers[2].net1.bias
    with pytest.raises(AttributeError, match="`layers.5`|submodule `5`"):
        model.get_submodule("layers.5")
    with pytest.raises(AttributeError, match="net3"):
        model.get_submodule("layers.0.net3")
    with pytest.raises(AttributeError, match="no parameter `gamma`"):
        model.get_parameter("layers.0.net1.gamma")
    net = Net()
    assert net.get_buffer("running") is net.running


# ---- state dict ----

def test_state_dict_values():
    net = Net()
    sd = net.state_dict()
    assert all(not v.requires_grad for v in sd.values())
    assert "scratch" not in sd
    with pipec.no_grad():
        net.w.fill_(5.0)
    np.testing.assert_array_equal(sd["w"].numpy(), [5.0, 5.0, 5.0])  # shares storage
    kv = net.state_dict(keep_vars=True)
    assert kv["w"] is net.w and kv["lin.weight"] is net.lin.weight


def test_load_state_dict_round_trip(rng):
    src, dst = MultiMLP(6, 2), MultiMLP(6, 2)
    x = pipec.tensor(randn_np(rng, 3, 6))
    assert not np.array_equal(src(x).detach().numpy(), dst(x).detach().numpy())
    params_before = list(dst.parameters())
    result = dst.load_state_dict(src.state_dict())
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert repr(result) == "<All keys matched successfully>"
    np.testing.assert_array_equal(src(x).detach().numpy(), dst(x).detach().numpy())
    assert all(a is b for a, b in zip(params_before, dst.parameters()))  # copied in place
    with pipec.no_grad():
        src.layers[0].net1.weight.fill_(0.0)
    assert not np.array_equal(src(x).detach().numpy(), dst(x).detach().numpy())  # independent afterwards


def test_load_state_dict_errors():
    model = MLPModule(4)
    sd = model.state_dict()
    missing = OrderedDict((k, v) for k, v in sd.items() if k != "net2.bias")
    with pytest.raises(RuntimeError, match=r'(?s)MLPModule.*Missing key\(s\) in state_dict: '
                                           r'"net2.bias"'):
        model.load_state_dict(missing)
    extra = OrderedDict(sd, **{"net3.weight": pipec.ones(1), "gamma": pipec.ones(1)})
    with pytest.raises(RuntimeError, match=r'Unexpected key\(s\) in state_dict: '
                                           r'"net3.weight", "gamma"'):
        model.load_state_dict(extra)
    res = model.load_state_dict(missing, strict=False)
    assert res.missing_keys == ["net2.bias"] and res.unexpected_keys == []
    res = model.load_state_dict(extra, strict=False)
    assert res.missing_keys == [] and sorted(res.unexpected_keys) == ["gamma", "net3.weight"]
    bad = OrderedDict(sd)
    bad["net1.weight"] = pipec.ones(4, 5)
    for strict in (True, False):
        with pytest.raises(RuntimeError, match=re.escape(
                "size mismatch for net1.weight: copying a param with shape (4, 5) from "
                "checkpoint, the shape in current model is (4, 4).")):
            model.load_state_dict(bad, strict=strict)
    bad["net1.weight"] = [[1.0] * 4] * 4
    with pytest.raises(RuntimeError, match='"net1.weight".*received list'):
        model.load_state_dict(bad)
    with pytest.raises(TypeError, match="dict-like"):
        model.load_state_dict([("net1.weight", pipec.ones(4, 4))])


def test_load_state_dict_assign():
    a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    sd = a.state_dict()
    b.load_state_dict(sd, assign=True)
    assert isinstance(b.weight, nn.Parameter) and b.weight.requires_grad
    np.testing.assert_array_equal(b.weight.detach().numpy(), a.weight.detach().numpy())


# ---- modes and bulk operations ----

def test_zero_grad(rng):
    model = MLPModule(3)
    model(pipec.tensor(randn_np(rng, 2, 3))).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.zero_grad(set_to_none=False)
    for p in model.parameters():
        np.testing.assert_array_equal(p.grad.numpy(), np.zeros(p.shape))
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_train_eval_and_dropout():
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
    assert model.training and model[1].training
    assert model.eval() is model
    assert not model.training and not model[1].training
    model.train()
    assert model[1].training
    with pytest.raises(ValueError, match="boolean"):
        model.train("yes")
    drop = nn.Dropout(p=0.3)
    x = pipec.ones(400, 250)
    y = drop(x).numpy()
    zero_frac = (y == 0).mean()
    assert abs(zero_frac - 0.3) < 0.01, zero_frac  # 100k draws: sd of the fraction 0.0014
    np.testing.assert_allclose(y[y != 0], 1 / 0.7, rtol=1e-6)
    drop.eval()
    np.testing.assert_array_equal(drop(x).numpy(), x.numpy())
    with pytest.raises(ValueError, match="between 0 and 1"):
        nn.Dropout(1.5)


def test_dropout_backward():
    x = pipec.ones(50, 40).requires_grad_(True)
    y = F.dropout(x, 0.25, training=True)
    y.sum().backward()
    keep = y.detach().numpy() != 0
    np.testing.assert_allclose(x.grad.numpy(), keep / 0.75, rtol=1e-6)


def test_to_dtype_keeps_parameters_and_aliases(rng):
    model = ModelWithParamAlias(4)
    params = list(model.parameters())
    x = randn_np(rng, 2, 4)
    y = randn_np(rng, 2, 4)
    out32 = model(pipec.tensor(x), pipec.tensor(y)).detach().numpy()
    assert model.to(pipec.float64) is model
    assert all(p.dtype == pipec.float64 for p in model.parameters())
    assert all(a is b for a, b in zip(params, model.parameters()))
    assert model.mm_param0 is model.mm_param1
    out64 = model(pipec.tensor(x.astype(np.float64)), pipec.tensor(y.astype(np.float64)))
    assert out64.dtype == pipec.float64
    assert_close(out64.detach().numpy(), out32.astype(np.float64), "float64 forward", rtol=1e-4,
                 atol_rel=1e-5)
    model.float()
    assert all(p.dtype == pipec.float32 for p in model.parameters())
    model.to("cpu")
    model.to(device="cpu", dtype=pipec.float32)
    with pytest.raises(TypeError, match="floating point"):
        model.to(pipec.int64)
    with pytest.raises(TypeError, match="invalid argument"):
        model.to(3.5)


def test_to_converts_buffers_and_grads():
    net = Net()
    net(pipec.ones(2, 3)).sum().backward()
    net.double()
    assert net.running.dtype == pipec.float64 and net.scratch.dtype == pipec.float64
    assert net.w.grad.dtype == pipec.float64


def test_requires_grad_and_apply():
    model = MultiMLP(3, 2)
    assert model.requires_grad_(False) is model
    assert not any(p.requires_grad for p in model.parameters())
    model.requires_grad_()
    assert all(p.requires_grad for p in model.parameters())
    seen = []
    assert model.apply(lambda m: seen.append(type(m).__name__)) is model
    assert seen == ["Linear", "ReLU", "Linear", "MLPModule", "Linear", "ReLU", "Linear",
                    "MLPModule", "ModuleList", "MultiMLP"]

    def fill(m):
        if isinstance(m, nn.Linear):
            init.constant_(m.weight, 0.5)

    model.apply(fill)
    assert all((l.weight.detach().numpy() == 0.5).all() for l in model.modules()
               if isinstance(l, nn.Linear))


# ---- calling and hooks ----

def test_call_errors_name_the_module():
    model = MLPModule(4)
    with pytest.raises(TypeError, match=r"MLPModule\.forward\(x\)"):
        model(pipec.ones(2, 4), pipec.ones(2, 4))
    with pytest.raises(TypeError, match=r"MLPModule\.forward"):
        model()
    with pytest.raises(TypeError, match="unexpected keyword"):
        model(pipec.ones(2, 4), y=pipec.ones(2, 4))
    with pytest.raises(ValueError, match=re.escape(
            "Linear(in_features=4, out_features=4): expected input of shape (..., 4), "
            "got (2, 5)")):
        model(pipec.ones(2, 5))
    with pytest.raises(NotImplementedError, match="forward"):
        nn.Module()(pipec.ones(1))

    class Inner(nn.Module):
        def forward(self, x):
            return len(x, 3)  # a TypeError inside forward is not re-worded

    with pytest.raises(TypeError, match=r"len\(\) takes exactly one argument"):
        Inner()(pipec.ones(1))


def test_forward_hooks():
    lin = nn.Linear(2, 2)
    init.eye_(lin.weight)
    init.zeros_(lin.bias)
    calls = []

    def pre(mod, args):
        calls.append("pre")
        return (args[0] * 2,)

    def pre_first(mod, args):
        calls.append("pre_first")

    def post(mod, args, out):
        calls.append("post")
        return out + 1

    h1 = lin.register_forward_pre_hook(pre)
    h2 = lin.register_forward_pre_hook(pre_first, prepend=True)
    h3 = lin.register_forward_hook(post)
    out = lin(pipec.tensor([[1.0, 2.0]]))
    np.testing.assert_allclose(out.detach().numpy(), [[3.0, 5.0]], rtol=1e-6)
    assert calls == ["pre_first", "pre", "post"]
    for h in (h1, h2, h3):
        h.remove()
    calls.clear()
    np.testing.assert_allclose(lin(pipec.tensor([[1.0, 2.0]])).detach().numpy(),
                               [[1.0, 2.0]], rtol=1e-6)
    assert calls == []

    def pre_kw(mod, args, kwargs):
        return args, {"y": pipec.ones(1) * 7}

    def post_kw(mod, args, kwargs, out):
        calls.append(float(kwargs["y"].item()))

    class Add(nn.Module):
        def forward(self, x, y=None):
            return x + y

    add = Add()
    add.register_forward_pre_hook(pre_kw, with_kwargs=True)
    add.register_forward_hook(post_kw, with_kwargs=True)
    np.testing.assert_array_equal(add(pipec.zeros(1)).numpy(), [7.0])
    assert calls == [7.0]

    with nn.Linear(2, 2).register_forward_hook(post) as handle:
        assert isinstance(handle, nn.RemovableHandle)

    class Boom(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    seen = []
    boom = Boom()
    boom.register_forward_hook(lambda m, a, o: seen.append(o), always_call=True)
    with pytest.raises(RuntimeError, match="boom"):
        boom(pipec.ones(1))
    assert seen == [None]


# ---- printing ----

def test_repr():
    assert repr(nn.Linear(3, 4)) == "Linear(in_features=3, out_features=4, bias=True)"
    assert repr(nn.Linear(3, 4, bias=False)) == \
        "Linear(in_features=3, out_features=4, bias=False)"
    assert repr(nn.ReLU()) == "ReLU()"
    assert repr(nn.GELU(approximate="tanh")) == "GELU(approximate='tanh')"
    assert repr(nn.Dropout(0.1)) == "Dropout(p=0.1, inplace=False)"
    assert repr(nn.LayerNorm(8)) == "LayerNorm((8,), eps=1e-05, elementwise_affine=True)"
    assert repr(nn.Embedding(10, 3, padding_idx=0)) == "Embedding(10, 3, padding_idx=0)"
    assert repr(nn.MSELoss()) == "MSELoss()"
    assert repr(MLPModule(4)) == (
        "MLPModule(\n"
        "  (net1): Linear(in_features=4, out_features=4, bias=True)\n"
        "  (relu): ReLU()\n"
        "  (net2): Linear(in_features=4, out_features=4, bias=True)\n"
        ")")
    assert repr(MultiMLP(4, 3)) == (
        "MultiMLP(\n"
        "  (layers): ModuleList(\n"
        "    (0-2): 3 x MLPModule(\n"
        "      (net1): Linear(in_features=4, out_features=4, bias=True)\n"
        "      (relu): ReLU()\n"
        "      (net2): Linear(in_features=4, out_features=4, bias=True)\n"
        "    )\n"
        "  )\n"
        ")")
    assert repr(nn.Sequential(nn.Linear(1, 2), nn.ReLU())) == (
        "Sequential(\n"
        "  (0): Linear(in_features=1, out_features=2, bias=True)\n"
        "  (1): ReLU()\n"
        ")")
    assert repr(nn.ModuleList([nn.ReLU(), nn.GELU(), nn.GELU()])) == (
        "ModuleList(\n  (0): ReLU()\n  (1-2): 2 x GELU(approximate='none')\n)")
    assert repr(nn.ModuleList()) == "ModuleList()"


# ---- deep copy ----

def test_deepcopy_is_independent(rng):
    model = MultiMLP(4, 2)
    model.register_buffer("stat", pipec.ones(2))
    twin = copy.deepcopy(model)
    x = pipec.tensor(randn_np(rng, 2, 4))
    np.testing.assert_array_equal(model(x).detach().numpy(), twin(x).detach().numpy())
    for (n1, p1), (n2, p2) in zip(model.named_parameters(), twin.named_parameters()):
        assert n1 == n2 and p1 is not p2 and isinstance(p2, nn.Parameter) and p2.requires_grad
    with pipec.no_grad():
        for p in twin.parameters():
            p.add_(1.0)
        twin.stat.add_(1.0)
    assert not np.array_equal(model(x).detach().numpy(), twin(x).detach().numpy())
    np.testing.assert_array_equal(model.stat.numpy(), [1.0, 1.0])
    alias = copy.deepcopy(ModelWithParamAlias(4))
    assert alias.mm_param0 is alias.mm_param1 and alias.lin0 is alias.lin1


# ---- layers ----

def test_linear_init_distribution():
    pipec.manual_seed(3)
    fan_in, fan_out = 400, 300
    lin = nn.Linear(fan_in, fan_out)
    bound = 1 / math.sqrt(fan_in)
    w = lin.weight.detach().numpy()
    b = lin.bias.detach().numpy()
    assert w.shape == (fan_out, fan_in) and b.shape == (fan_out,)
    assert np.abs(w).max() <= bound and np.abs(b).max() <= bound
    # U(-a, a): std a/sqrt(3); 120k draws put the sample std within 1% of it
    assert abs(w.std() / (bound / math.sqrt(3)) - 1) < 0.01
    assert abs(w.mean()) < 3 * bound / math.sqrt(3) / math.sqrt(w.size) * 2
    assert np.abs(w).max() > 0.99 * bound  # fills the whole range
    assert lin.weight.requires_grad and lin.bias.requires_grad
    assert nn.Linear(3, 2, bias=False).bias is None
    assert [n for n, _ in nn.Linear(3, 2, bias=False).named_parameters()] == ["weight"]
    with pytest.raises(ValueError, match="in_features"):
        nn.Linear(-1, 2)
    assert nn.Linear(2, 3, dtype=pipec.float64).weight.dtype == pipec.float64


def test_linear_forward_backward(rng):
    lin = nn.Linear(5, 3)
    x_np = randn_np(rng, 2, 4, 5)  # leading batch dims
    dy = randn_np(rng, 2, 4, 3).astype(np.float64)
    x = pipec.tensor(x_np).requires_grad_(True)
    y = lin(x)
    W = lin.weight.detach().numpy().astype(np.float64)
    b = lin.bias.detach().numpy().astype(np.float64)
    x64 = x_np.astype(np.float64)
    assert_close(y.detach().numpy(), x64 @ W.T + b, "linear forward")
    (y * pipec.tensor(dy.astype(np.float32))).sum().backward()
    assert_close(x.grad.numpy(), dy @ W, "dx")
    assert_close(lin.weight.grad.numpy(), np.einsum("bno,bni->oi", dy, x64), "dW")
    assert_close(lin.bias.grad.numpy(), dy.sum((0, 1)), "db")


def test_identity_and_activations(rng):
    x_np = randn_np(rng, 3, 7)
    x = pipec.tensor(x_np)
    assert nn.Identity(5, foo=1)(x) is x
    np.testing.assert_array_equal(nn.ReLU()(x).numpy(), np.maximum(x_np, 0))
    x64 = x_np.astype(np.float64)
    erf = np.vectorize(math.erf)
    assert_close(nn.GELU()(x).numpy(), 0.5 * x64 * (1 + erf(x64 / math.sqrt(2))), "gelu")
    tanh_ref = 0.5 * x64 * (1 + np.tanh(math.sqrt(2 / math.pi) * (x64 + 0.044715 * x64 ** 3)))
    assert_close(F.gelu(x, approximate="tanh").numpy(), tanh_ref, "gelu tanh")
    with pytest.raises(ValueError, match="approximate"):
        nn.GELU("fast")

    xg = pipec.tensor(x_np).requires_grad_(True)
    F.gelu(xg).sum().backward()
    pdf = np.exp(-x64 ** 2 / 2) / math.sqrt(2 * math.pi)
    assert_close(xg.grad.numpy(), 0.5 * (1 + erf(x64 / math.sqrt(2))) + x64 * pdf, "gelu'")

    y = pipec.tensor(x_np)
    assert F.relu(y, inplace=True) is y
    np.testing.assert_array_equal(y.numpy(), np.maximum(x_np, 0))


def np_softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_softmax_log_softmax(rng, dim):
    x_np = randn_np(rng, 4, 6)
    g_np = randn_np(rng, 4, 6)
    x64, g64 = x_np.astype(np.float64), g_np.astype(np.float64)
    s = np_softmax(x64, dim)
    for fn, ref, dref in (
            (F.softmax, s, s * (g64 - (g64 * s).sum(dim, keepdims=True))),
            (F.log_softmax, np.log(s), g64 - s * g64.sum(dim, keepdims=True))):
        x = pipec.tensor(x_np).requires_grad_(True)
        y = fn(x, dim)
        assert_close(y.detach().numpy(), ref, fn.__name__)
        (y * pipec.tensor(g_np)).sum().backward()
        assert_close(x.grad.numpy(), dref, fn.__name__ + " grad")
    with pytest.warns(UserWarning, match="Implicit dimension"):
        y = F.softmax(pipec.tensor(x_np))
    assert_close(y.numpy(), np_softmax(x64, 1), "implicit dim")
    y = F.softmax(pipec.tensor(x_np), 1, dtype=pipec.float64)
    assert y.dtype == pipec.float64


def test_layer_norm(rng):
    n, d = 5, 8
    x_np = randn_np(rng, n, d) * 3 + 1
    g_np = randn_np(rng, n, d)
    ln = nn.LayerNorm(d)
    np.testing.assert_array_equal(ln.weight.detach().numpy(), np.ones(d))
    np.testing.assert_array_equal(ln.bias.detach().numpy(), np.zeros(d))
    init.normal_(ln.weight)
    init.normal_(ln.bias)
    w = ln.weight.detach().numpy().astype(np.float64)
    b = ln.bias.detach().numpy().astype(np.float64)
    x = pipec.tensor(x_np).requires_grad_(True)
    y = ln(x)
    x64, g64 = x_np.astype(np.float64), g_np.astype(np.float64)
    mu = x64.mean(1, keepdims=True)
    var = x64.var(1, keepdims=True)
    rstd = 1 / np.sqrt(var + 1e-5)
    xhat = (x64 - mu) * rstd
    assert_close(y.detach().numpy(), xhat * w + b, "layer_norm")
    (y * pipec.tensor(g_np)).sum().backward()
    dxhat = g64 * w
    dx = rstd / d * (d * dxhat - dxhat.sum(1, keepdims=True)
                     - xhat * (dxhat * xhat).sum(1, keepdims=True))
    assert_close(x.grad.numpy(), dx, "layer_norm dx", rtol=1e-4)
    assert_close(ln.weight.grad.numpy(), (g64 * xhat).sum(0), "layer_norm dw")
    assert_close(ln.bias.grad.numpy(), g64.sum(0), "layer_norm db")
    plain = nn.LayerNorm([d], elementwise_affine=False)
    assert plain.weight is None and list(plain.parameters()) == []
    assert_close(plain(pipec.tensor(x_np)).numpy(), xhat, "layer_norm no affine")
    with pytest.raises(ValueError, match="normalized_shape"):
        ln(pipec.ones(3, d + 1))


def test_mse_loss(rng):
    a_np, b_np = randn_np(rng, 4, 3), randn_np(rng, 4, 3)
    diff = a_np.astype(np.float64) - b_np
    a, b = pipec.tensor(a_np), pipec.tensor(b_np)
    assert_close(nn.MSELoss()(a, b).item(), (diff ** 2).mean(), "mean")
    assert_close(nn.MSELoss(reduction="sum")(a, b).item(), (diff ** 2).sum(), "sum")
    assert_close(F.mse_loss(a, b, reduction="none").numpy(), diff ** 2, "none")
    with pytest.raises(ValueError, match="not a valid value for reduction"):
        nn.MSELoss(reduction="avg")
    with pytest.raises(ValueError, match="not a valid value for reduction"):
        F.mse_loss(a, b, reduction="max")
    with pytest.raises(TypeError, match="target"):
        F.mse_loss(a, b_np)


def test_cross_entropy(rng):
    n, c = 6, 5
    x_np = randn_np(rng, n, c)
    t_np = rng.integers(0, c, size=n)
    x64 = x_np.astype(np.float64)
    p = np_softmax(x64, 1)
    onehot = np.eye(c)[t_np]

    def check(target, q, reduction, label_smoothing=0.0):
        x = pipec.tensor(x_np).requires_grad_(True)
        loss = nn.CrossEntropyLoss(reduction=reduction, label_smoothing=label_smoothing)(
            x, target)
        per_row = -(q * np.log(p)).sum(1)
        ref = {"mean": per_row.mean(), "sum": per_row.sum(), "none": per_row}[reduction]
        assert_close(loss.detach().numpy(), ref, f"ce {reduction} {label_smoothing}")
        loss.sum().backward()
        scale = 1 / n if reduction == "mean" else 1.0
        dx = (p * q.sum(1, keepdims=True) - q) * scale
        assert_close(x.grad.numpy(), dx, f"ce grad {reduction} {label_smoothing}")

    idx = pipec.tensor(t_np, dtype=pipec.int64)
    for reduction in ("mean", "sum", "none"):
        check(idx, onehot, reduction)
    check(idx, onehot * 0.9 + 0.1 / c, "mean", label_smoothing=0.1)
    probs = np_softmax(rng.standard_normal((n, c)), 1)
    check(pipec.tensor(probs.astype(np.float32)), probs.astype(np.float32), "mean")
    with pytest.raises(ValueError, match="float target"):
        F.cross_entropy(pipec.tensor(x_np), pipec.ones(n))
    with pytest.raises(ValueError, match="label_smoothing"):
        F.cross_entropy(pipec.tensor(x_np), idx, label_smoothing=2.0)
    absent = next(k for k in range(c) if k not in t_np)
    plain = F.cross_entropy(pipec.tensor(x_np), idx).item()
    assert F.cross_entropy(pipec.tensor(x_np), idx, ignore_index=absent).item() == plain
    with pytest.raises(NotImplementedError, match="ignore_index"):
        F.cross_entropy(pipec.tensor(x_np), idx, ignore_index=int(t_np[0]))


def test_embedding(rng):
    emb = nn.Embedding(7, 3, padding_idx=2)
    w = emb.weight.detach().numpy().astype(np.float64)
    np.testing.assert_array_equal(w[2], np.zeros(3))
    idx_np = np.array([[0, 2, 6], [2, 2, 1]])
    out = emb(pipec.tensor(idx_np, dtype=pipec.int64))
    assert_close(out.detach().numpy(), w[idx_np], "embedding")
    g = randn_np(rng, 2, 3, 3)
    (out * pipec.tensor(g)).sum().backward()
    ref = np.zeros((7, 3))
    np.add.at(ref, idx_np.ravel(), g.reshape(-1, 3).astype(np.float64))
    ref[2] = 0.0  # the padding row gets no gradient
    assert_close(emb.weight.grad.numpy(), ref, "embedding grad")
    pipec.manual_seed(5)
    big = nn.Embedding(300, 100).weight.detach().numpy()
    assert abs(big.std() - 1) < 0.02 and abs(big.mean()) < 0.02  # N(0, 1), 30k draws
    with pytest.raises(ValueError, match="padding_idx"):
        nn.Embedding(3, 2, padding_idx=3)


# ---- containers ----

def test_sequential():
    a, b, c = nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)
    seq = nn.Sequential(a, b, c)
    assert len(seq) == 3 and seq[0] is a and seq[-1] is c and list(seq) == [a, b, c]
    assert isinstance(seq[1:], nn.Sequential) and list(seq[1:]) == [b, c]
    assert [n for n, _ in seq.named_parameters()] == ["0.weight", "0.bias", "2.weight",
                                                      "2.bias"]
    x = pipec.ones(4, 2)
    np.testing.assert_array_equal(seq(x).detach().numpy(), c(b(a(x))).detach().numpy())
    named = nn.Sequential(OrderedDict([("fc", a), ("act", b)]))
    assert named.fc is a and list(named._modules) == ["fc", "act"]
    seq.append(nn.ReLU())
    assert len(seq) == 4
    del seq[1]
    assert list(seq._modules) == ["0", "1", "2"] and seq[1] is c
    seq.insert(0, nn.Identity())
    assert isinstance(seq[0], nn.Identity) and len(seq) == 4
    with pytest.raises(IndexError, match="out of range"):
        seq[10]
    with pytest.raises(TypeError, match="integers or slices"):
        seq["0"]


def test_module_list_and_dict():
    layers = nn.ModuleList([nn.Linear(2, 2) for _ in range(3)])
    assert len(layers) == 3 and layers[-1] is layers[2]
    layers.append(nn.ReLU())
    layers.extend([nn.ReLU()])
    layers.insert(1, nn.GELU())
    assert [type(m).__name__ for m in layers] == ["Linear", "GELU", "Linear", "Linear", "ReLU",
                                                  "ReLU"]
    assert list(layers._modules) == [str(i) for i in range(6)]
    assert isinstance(layers[1:3], nn.ModuleList) and len(layers[1:3]) == 2
    popped = layers.pop(1)
    assert isinstance(popped, nn.GELU) and len(layers) == 5
    layers += nn.ModuleList([nn.Identity()])
    assert len(layers) == 6
    assert len(list(layers.parameters())) == 6
    with pytest.raises(NotImplementedError):
        layers(pipec.ones(1))
    with pytest.raises(TypeError, match="iterable"):
        layers.extend(3)
    with pytest.raises(TypeError, match="not a Module subclass"):
        layers.append(3)

    d = nn.ModuleDict({"a": nn.Linear(1, 1), "b": nn.ReLU()})
    assert list(d.keys()) == ["a", "b"] and "a" in d and len(d) == 2
    d["c"] = nn.GELU()
    d.update([("e", nn.Identity())])
    assert [n for n, _ in d.named_children()] == ["a", "b", "c", "e"]
    assert [n for n, _ in d.named_parameters()] == ["a.weight", "a.bias"]
    assert isinstance(d.pop("c"), nn.GELU) and "c" not in d


# ---- init ----

def test_init_functions():
    pipec.manual_seed(11)
    t = nn.Parameter(pipec.empty(200, 300))
    assert init.uniform_(t, -2.0, 3.0) is t  # works on a parameter that requires grad
    a = t.detach().numpy()
    assert a.min() >= -2.0 and a.max() <= 3.0 and abs(a.mean() - 0.5) < 0.03
    init.normal_(t, 1.0, 2.0)
    a = t.detach().numpy()
    assert abs(a.mean() - 1.0) < 0.03 and abs(a.std() - 2.0) < 0.03
    np.testing.assert_array_equal(init.zeros_(t).detach().numpy(), 0.0)
    np.testing.assert_array_equal(init.ones_(t).detach().numpy(), 1.0)
    np.testing.assert_array_equal(init.constant_(t, 0.25).detach().numpy(), 0.25)
    assert t.grad_fn is None and t.requires_grad

    init.kaiming_uniform_(t, nonlinearity="relu")  # fan_in 300, gain sqrt(2)
    bound = math.sqrt(2) * math.sqrt(3 / 300)
    a = t.detach().numpy()
    assert np.abs(a).max() <= bound and abs(a.std() / (bound / math.sqrt(3)) - 1) < 0.02
    init.kaiming_uniform_(t, mode="fan_out", nonlinearity="relu")
    assert np.abs(t.detach().numpy()).max() <= math.sqrt(2) * math.sqrt(3 / 200)
    init.kaiming_normal_(t, nonlinearity="relu")
    assert abs(t.detach().numpy().std() / (math.sqrt(2) / math.sqrt(300)) - 1) < 0.02
    init.xavier_uniform_(t, gain=2.0)
    bound = 2.0 * math.sqrt(6 / 500)
    a = t.detach().numpy()
    assert np.abs(a).max() <= bound and abs(a.std() / (bound / math.sqrt(3)) - 1) < 0.02
    init.xavier_normal_(t)
    assert abs(t.detach().numpy().std() / math.sqrt(2 / 500) - 1) < 0.02
    np.testing.assert_array_equal(init.eye_(pipec.empty(2, 3)).numpy(), np.eye(2, 3))

    assert init.calculate_gain("tanh") == pytest.approx(5 / 3)
    assert init.calculate_gain("leaky_relu", 0.2) == pytest.approx(math.sqrt(2 / 1.04))
    with pytest.raises(ValueError, match="Unsupported nonlinearity"):
        init.calculate_gain("swish")
    with pytest.raises(ValueError, match="fewer than 2 dimensions"):
        init.xavier_uniform_(pipec.empty(5))
    with pytest.raises(ValueError, match="Mode"):
        init.kaiming_uniform_(t, mode="fan_avg")
    with pytest.raises(TypeError, match="pipec.Tensor"):
        init.zeros_(np.zeros(3))


# ---- custom autograd Functions ----

class ScaleBy(pipec.autograd.Function):
    """y = x * k for a Python number k; records what the framework hands it."""
    seen = {}

    @staticmethod
    def forward(ctx, x, k, tag):
        ctx.k = k
        ctx.tag = tag
        ScaleBy.seen["needs"] = ctx.needs_input_grad
        return x * k

    @staticmethod
    def backward(ctx, g):
        ScaleBy.seen["tag"] = ctx.tag
        return g * ctx.k, None, None


class MulAdd(pipec.autograd.Function):
    """(a * b, a + b): two inputs, two outputs, saved tensors."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a * b, a + b

    @staticmethod
    def backward(ctx, g_prod, g_sum):
        a, b = ctx.saved_tensors
        ga = g_prod * b + g_sum if ctx.needs_input_grad[0] else None
        gb = g_prod * a + g_sum if ctx.needs_input_grad[1] else None
        return ga, gb


def test_function_non_tensor_args_and_ctx_attributes(rng):
    x_np = randn_np(rng, 3, 2)
    x = pipec.tensor(x_np).requires_grad_(True)
    y = ScaleBy.apply(x, 2.5, {"layer": "fc1"})
    assert y.requires_grad and y.grad_fn is not None
    assert ScaleBy.seen["needs"] == (True, False, False)
    y.sum().backward()
    assert ScaleBy.seen["tag"] == {"layer": "fc1"}
    np.testing.assert_allclose(x.grad.numpy(), np.full((3, 2), 2.5), rtol=1e-7)
    # through ordinary ops on both sides, accumulating across two backward passes
    (ScaleBy.apply(x * 2, -1.0, None) ** 2).sum().backward()
    ref = 2.5 + 2 * (-1.0) * 2 * (-(2 * x_np.astype(np.float64)))
    assert_close(x.grad.numpy(), ref, "accumulated grad")


def test_function_multiple_outputs_and_saved_tensors(rng):
    a_np, b_np, g1, g2 = (randn_np(rng, 4) for _ in range(4))
    a = pipec.tensor(a_np).requires_grad_(True)
    b = pipec.tensor(b_np)  # needs no grad: backward returns None for it
    prod, s = MulAdd.apply(a, b)
    assert_close(prod.detach().numpy(), a_np.astype(np.float64) * b_np, "a*b")
    assert_close(s.detach().numpy(), a_np.astype(np.float64) + b_np, "a+b")
    ((prod * pipec.tensor(g1)).sum() + (s * pipec.tensor(g2)).sum()).backward()
    assert_close(a.grad.numpy(), g1.astype(np.float64) * b_np + g2, "d/da")
    assert b.grad is None
    # only one output used: the other output's gradient arrives as zeros
    a.grad = None
    prod, s = MulAdd.apply(a, b)
    (prod * pipec.tensor(g1)).sum().backward()
    assert_close(a.grad.numpy(), g1.astype(np.float64) * b_np, "d/da, one output used")


def test_function_needs_input_grad_and_no_grad_mode():
    a = pipec.ones(2).requires_grad_(True)
    b = pipec.ones(2).requires_grad_(True)
    with pipec.no_grad():
        out, _ = MulAdd.apply(a, b)
    assert not out.requires_grad
    prod, _ = MulAdd.apply(a, pipec.ones(2))
    prod.sum().backward()
    np.testing.assert_array_equal(a.grad.numpy(), [1.0, 1.0])


def test_function_backward_errors():
    class WrongCount(pipec.autograd.Function):
        @staticmethod
        def forward(ctx, x, y):
            return x + y

        @staticmethod
        def backward(ctx, g):
            return (g,)

    x = pipec.ones(2).requires_grad_(True)
    with pytest.raises(RuntimeError, match="incorrect number of gradients|expected 2"):
        WrongCount.apply(x, pipec.ones(2)).sum().backward()

    class WrongShape(pipec.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 1.0

        @staticmethod
        def backward(ctx, g):
            return pipec.ones(5)

    with pytest.raises((RuntimeError, ValueError), match=r"shape|size"):
        WrongShape.apply(x).sum().backward()


# ---- finite differences for the functional paths composed in Python ----

def finite_difference_check(fn, x_np, what, h=1e-6, tol=1e-7):
    """fn maps a float64 pipec tensor to a scalar tensor. Compare its autograd gradient
    with central differences (truncation O(h^2) ~ 1e-12, rounding ~ 1e-16 / h ~ 1e-10)."""
    x = pipec.tensor(x_np).requires_grad_(True)
    fn(x).backward()
    num = np.zeros_like(x_np)
    flat = x_np.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + h
        up = float(fn(pipec.tensor(x_np)).item())
        flat[i] = old - h
        down = float(fn(pipec.tensor(x_np)).item())
        flat[i] = old
        num.reshape(-1)[i] = (up - down) / (2 * h)
    np.testing.assert_allclose(x.grad.numpy(), num, rtol=tol, atol=tol, err_msg=what)


def test_composed_functionals_finite_differences(rng):
    x = rng.standard_normal((3, 4))
    r = pipec.tensor(rng.standard_normal((3, 4)))
    finite_difference_check(lambda t: (F.gelu(t, approximate="tanh") * r).sum(), x.copy(),
                            "gelu tanh")
    idx = pipec.tensor(np.array([0, 3, 1]), dtype=pipec.int64)
    finite_difference_check(lambda t: F.cross_entropy(t, idx, label_smoothing=0.2), x.copy(),
                            "cross_entropy label smoothing")
    probs = pipec.tensor(np_softmax(rng.standard_normal((3, 4)), 1))
    finite_difference_check(lambda t: F.cross_entropy(t, probs, reduction="sum"), x.copy(),
                            "cross_entropy probabilities")
    ids = pipec.tensor(np.array([[1, 0], [2, 1]]), dtype=pipec.int64)
    g = pipec.tensor(rng.standard_normal((2, 2, 4)))
    finite_difference_check(lambda t: (F.embedding(ids, t) * g).sum(), x.copy(),
                            "embedding")
    # With padding_idx the padding row still feeds the output but gets no gradient; the
    # other rows get exactly the gradient they get without padding_idx.
    w = pipec.tensor(x).requires_grad_(True)
    (F.embedding(ids, w) * g).sum().backward()
    w_pad = pipec.tensor(x).requires_grad_(True)
    out = F.embedding(ids, w_pad, padding_idx=1)
    np.testing.assert_array_equal(out.detach().numpy(), x[ids.numpy()])
    (out * g).sum().backward()
    np.testing.assert_array_equal(w_pad.grad.numpy()[1], np.zeros(4))
    np.testing.assert_array_equal(w_pad.grad.numpy()[[0, 2]], w.grad.numpy()[[0, 2]])


def test_parameter_is_flagged_as_weight():
    p = nn.Parameter(pipec.ones(2))
    assert p._is_param
    assert not pipec.ones(2)._is_param
    assert copy.deepcopy(p)._is_param
    assert nn.Linear(2, 2).weight._is_param

"""pipec.optim: SGD and AdamW against NumPy float64 implementations of the update rules, the
Optimizer API (param groups, zero_grad, state_dict round trips, errors), and the training
example.

Each update check runs several steps with fresh random gradients, so momentum buffers, step
counts and bias corrections are all exercised; one parameter only gets gradients from the
third step on, so its state starts later than the others'. Both the C kernel path
(foreach=None) and the per-tensor Python path (foreach=False) are checked. Tolerance: the
float32 parameters drift from float64 by a few ulps per step: rtol 1e-5, atol 1e-5 x scale.
"""
import copy
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import pipec
from pipec import nn, optim

from model_registry import MLPModule, MultiMLP

SHAPES = [(4, 3), (3,), (2, 2, 2)]
LATE = 2           # index of the parameter that gets its first gradient at step LATE_STEP
LATE_STEP = 2
N_STEPS = 6


def assert_close(actual, ref, what=""):
    actual = np.asarray(actual, np.float64)
    ref = np.asarray(ref, np.float64)
    scale = max(float(np.abs(ref).max()), 1e-30)
    np.testing.assert_allclose(actual, ref, rtol=1e-5, atol=1e-5 * scale, err_msg=what)


def make_problem(seed=0):
    rng = np.random.default_rng(seed)
    init = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    grads = [[rng.standard_normal(s).astype(np.float32) for s in SHAPES]
             for _ in range(N_STEPS)]
    return init, grads


def run_pipec(opt_cls, init, grads, **kw):
    params = [nn.Parameter(pipec.tensor(a)) for a in init]
    opt = opt_cls(params, **kw)
    for step, gs in enumerate(grads):
        for i, (p, g) in enumerate(zip(params, gs)):
            p.grad = None if (i == LATE and step < LATE_STEP) else pipec.tensor(g)
        opt.step()
    return [p.detach().numpy() for p in params], opt


# ---- NumPy references (float64, from the update rules) ----

def np_sgd(init, grads, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False,
           maximize=False):
    params = [a.astype(np.float64) for a in init]
    bufs = [None] * len(params)
    for step, gs in enumerate(grads):
        for i, g in enumerate(gs):
            if i == LATE and step < LATE_STEP:
                continue
            d = -g.astype(np.float64) if maximize else g.astype(np.float64)
            d = d + weight_decay * params[i]
            if momentum:
                if bufs[i] is None:
                    bufs[i] = d.copy()
                else:
                    bufs[i] = momentum * bufs[i] + (1 - dampening) * d
                d = d + momentum * bufs[i] if nesterov else bufs[i]
            params[i] = params[i] - lr * d
    return params


def np_adamw(init, grads, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
             amsgrad=False, maximize=False):
    b1, b2 = betas
    params = [a.astype(np.float64) for a in init]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    vmax = [np.zeros_like(p) for p in params]
    t = [0] * len(params)
    for step, gs in enumerate(grads):
        for i, g in enumerate(gs):
            if i == LATE and step < LATE_STEP:
                continue
            g = -g.astype(np.float64) if maximize else g.astype(np.float64)
            t[i] += 1
            params[i] = params[i] * (1 - lr * weight_decay)
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            vmax[i] = np.maximum(vmax[i], v[i])
            vh = vmax[i] if amsgrad else v[i]
            denom = np.sqrt(vh) / math.sqrt(1 - b2 ** t[i]) + eps
            params[i] = params[i] - lr / (1 - b1 ** t[i]) * m[i] / denom
    return params


def _case_id(kw):
    return ",".join(f"{k}={v}" for k, v in kw.items())


SGD_CASES = [
    dict(lr=0.1),
    dict(lr=0.1, momentum=0.9),
    dict(lr=0.05, momentum=0.8, dampening=0.3, weight_decay=0.01),
    dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1),
    dict(lr=0.1, momentum=0.5, maximize=True),
]


@pytest.mark.parametrize("foreach", [None, False])
@pytest.mark.parametrize("kw", SGD_CASES, ids=_case_id)
def test_sgd_matches_numpy(kw, foreach):
    init, grads = make_problem()
    got, opt = run_pipec(optim.SGD, init, grads, foreach=foreach, **kw)
    ref = np_sgd(init, grads, **kw)
    for i, (a, r) in enumerate(zip(got, ref)):
        assert_close(a, r, f"param {i}")
    if kw.get("momentum"):
        assert all("momentum_buffer" in opt.state[p] for p in opt.param_groups[0]["params"])


ADAMW_CASES = [
    dict(lr=0.01),
    dict(lr=0.01, weight_decay=0.0),
    dict(lr=0.02, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1),
    dict(lr=0.01, maximize=True),
    dict(lr=0.01, amsgrad=True),
]


@pytest.mark.parametrize("foreach", [None, False])
@pytest.mark.parametrize("kw", ADAMW_CASES, ids=_case_id)
def test_adamw_matches_numpy(kw, foreach):
    init, grads = make_problem(1)
    got, opt = run_pipec(optim.AdamW, init, grads, foreach=foreach, **kw)
    ref = np_adamw(init, grads, **kw)
    for i, (a, r) in enumerate(zip(got, ref)):
        assert_close(a, r, f"param {i}")
    params = opt.param_groups[0]["params"]
    assert float(opt.state[params[0]]["step"].item()) == N_STEPS
    assert float(opt.state[params[LATE]]["step"].item()) == N_STEPS - LATE_STEP


def test_param_groups_and_defaults():
    a = nn.Parameter(pipec.ones(2))
    b = nn.Parameter(pipec.ones(2))
    opt = optim.SGD([{"params": [a]}, {"params": b, "lr": 0.5, "momentum": 0.9}], lr=0.1)
    assert opt.param_groups[0]["lr"] == 0.1 and opt.param_groups[0]["momentum"] == 0
    assert opt.param_groups[1]["lr"] == 0.5 and opt.param_groups[1]["params"] == [b]
    a.grad = pipec.ones(2)
    b.grad = pipec.ones(2)
    opt.step()
    np.testing.assert_allclose(a.detach().numpy(), [0.9, 0.9], rtol=1e-6)
    np.testing.assert_allclose(b.detach().numpy(), [0.5, 0.5], rtol=1e-6)
    c = nn.Parameter(pipec.ones(1))
    opt.add_param_group({"params": [c], "weight_decay": 0.1})
    assert opt.param_groups[2]["lr"] == 0.1 and opt.param_groups[2]["weight_decay"] == 0.1
    assert opt.defaults["lr"] == 0.1
    # a parameter without a gradient is left alone and gets no state
    c_before = c.detach().numpy().copy()
    opt.step()
    np.testing.assert_array_equal(c.detach().numpy(), c_before)
    assert c not in opt.state


def test_zero_grad():
    model = MLPModule(3)
    opt = optim.SGD(model.parameters(), lr=0.1)
    model(pipec.ones(2, 3)).sum().backward()
    opt.zero_grad(set_to_none=False)
    assert all((p.grad.numpy() == 0).all() for p in model.parameters())
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_closure_and_named_params():
    model = MLPModule(3)
    opt = optim.AdamW(model.named_parameters(), lr=0.01)
    assert opt.param_groups[0]["param_names"] == ["net1.weight", "net1.bias", "net2.weight",
                                                   "net2.bias"]
    x = pipec.ones(2, 3)

    def closure():
        opt.zero_grad()
        loss = model(x).pow(2).mean()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert isinstance(loss, pipec.Tensor) and loss.grad_fn is not None


@pytest.mark.parametrize("opt_cls,kw", [(optim.SGD, dict(lr=0.05, momentum=0.9)),
                                        (optim.AdamW, dict(lr=0.01))])
def test_state_dict_round_trip(opt_cls, kw):
    """Stopping, saving both state dicts, loading them into fresh objects and continuing
    gives exactly the parameters of an uninterrupted run."""
    rng = np.random.default_rng(2)
    xs = [pipec.tensor(rng.standard_normal((4, 5)).astype(np.float32)) for _ in range(6)]

    def train(model, opt, batches):
        for x in batches:
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()

    pipec.manual_seed(0)
    model = MultiMLP(5, 2)
    start = copy.deepcopy(model)
    opt = opt_cls(model.parameters(), **kw)
    train(model, opt, xs)

    first = copy.deepcopy(start)
    opt1 = opt_cls(first.parameters(), **kw)
    train(first, opt1, xs[:3])
    model_sd, opt_sd = first.state_dict(), opt1.state_dict()
    assert sorted(opt_sd) == ["param_groups", "state"]
    assert opt_sd["param_groups"][0]["params"] == list(range(8))
    assert sorted(opt_sd["state"]) == list(range(8))

    buf_key = "momentum_buffer" if opt_cls is optim.SGD else "exp_avg"
    saved_buf = opt_sd["state"][0][buf_key].numpy().copy()

    second = MultiMLP(5, 2)
    second.load_state_dict(model_sd)
    opt2 = opt_cls(second.parameters(), lr=123.0)  # the loaded groups replace this lr
    opt2.load_state_dict(opt_sd)
    assert opt2.param_groups[0]["lr"] == kw["lr"]
    train(second, opt2, xs[3:])
    for (name, p), q in zip(model.named_parameters(), second.parameters()):
        np.testing.assert_array_equal(p.detach().numpy(), q.detach().numpy(), err_msg=name)
    # the loaded state is a copy: stepping opt2 left opt1's buffers as they were
    np.testing.assert_array_equal(opt1.state[next(first.parameters())][buf_key].numpy(),
                                  saved_buf)


def test_load_state_dict_errors():
    a, b = nn.Parameter(pipec.ones(1)), nn.Parameter(pipec.ones(1))
    opt = optim.SGD([a, b], lr=0.1)
    sd = opt.state_dict()
    with pytest.raises(ValueError, match="different number of parameter groups"):
        optim.SGD([{"params": [a]}, {"params": [b]}], lr=0.1).load_state_dict(sd)
    with pytest.raises(ValueError, match="doesn't match the size"):
        optim.SGD([a], lr=0.1).load_state_dict(sd)
    with pytest.raises(ValueError, match="'state' and 'param_groups'"):
        opt.load_state_dict({"state": {}})


def test_constructor_errors():
    p = nn.Parameter(pipec.ones(1))
    with pytest.raises(ValueError, match="empty parameter list"):
        optim.SGD([], lr=0.1)
    with pytest.raises(TypeError, match="iterable of Tensors"):
        optim.SGD(p, lr=0.1)
    with pytest.raises(TypeError, match="optimize Tensors"):
        optim.SGD([p, 3.0], lr=0.1)
    with pytest.raises(ValueError, match="non-leaf"):
        optim.SGD([p * 2], lr=0.1)
    with pytest.raises(ValueError, match="more than one parameter group"):
        optim.SGD([{"params": [p]}, {"params": [p]}], lr=0.1)
    with pytest.raises(TypeError, match="ordered collections"):
        optim.SGD({p}, lr=0.1)
    with pytest.raises(TypeError, match="ordered collections"):
        optim.SGD([{"params": {p}}], lr=0.1)
    with pytest.raises(ValueError, match="Invalid learning rate"):
        optim.SGD([p], lr=-1.0)
    with pytest.raises(ValueError, match="Invalid momentum"):
        optim.SGD([p], lr=0.1, momentum=-0.5)
    with pytest.raises(ValueError, match="Nesterov"):
        optim.SGD([p], lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="Invalid beta parameter at index 1"):
        optim.AdamW([p], betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="Invalid epsilon"):
        optim.AdamW([p], eps=-1.0)
    with pytest.raises(ValueError, match="Invalid weight_decay"):
        optim.AdamW([p], weight_decay=-0.1)


def test_repr():
    p = nn.Parameter(pipec.ones(1))
    text = repr(optim.SGD([p], lr=0.1, momentum=0.9))
    assert text.startswith("SGD (\nParameter Group 0\n    dampening: 0\n")
    assert "    lr: 0.1\n" in text and "    momentum: 0.9\n" in text and text.endswith("\n)")


def test_train_mlp_example_loss_falls():
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(root)] + [p for p in [env.get("PYTHONPATH")] if p])
    proc = subprocess.run(
        [sys.executable, str(root / "examples" / "train_mlp.py"), "--no-progress"],
        capture_output=True, text=True, timeout=300, cwd=root, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = proc.stdout.strip().splitlines()[-1]
    assert summary.startswith("train_mlp:") and "SGD" in summary and "AdamW" in summary

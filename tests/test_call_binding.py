"""How a pipeline's call is bound to the traced one, and what it hands back.

A stage runs the C Program traced from its module on one example call; later calls are
matched to that call (pipec/pipelining/_signature.py) and the runtime follows the stages'
modules between steps. Checked here, each against the eager (unpipelined) model:

  - keyword arguments are bound by name, not by the order they are given in: a hand-built
    PipelineStage whose forward takes ``scale=None, bias=None`` (``eval(x, bias=b)`` must
    add b, not multiply by it), and a traced model called with its keywords in another
    order than pipeline()'s mb_kwargs (Pipe.__call__ and LocalPipeline); positional and
    keyword forms of one parameter bind alike;
  - non-tensor arguments are constants of the trace: the traced value is used, another
    value raises InputMismatchError (a TypeError and a ValueError) naming the argument, as
    do missing and unexpected keywords;
  - output structure: a dict output whose entries come from different stages (one made
    before the last split point, passed through the last stage) comes back as that dict
    from eval(), and a loss_fn reading both entries trains to the eager gradients; a
    1-tuple returned by a hand-built last stage stays a 1-tuple;
  - build_stage() on a Pipe's stage modules keeps the Pipe's wiring (a skip connection
    from stage 0 and 1 to stage 3 reaches it), and refuses a module that is not stage i of
    the pipe pipe_info describes;
  - a parameter replaced after the first step is used by the next eval() and gets the next
    step's gradient; a replacement of another shape raises ValueError;
  - a hand-built stage traced in train mode (dropout) follows ``module.eval()``;
  - a buffer updated in place counts exactly the microbatches run (tracing leaves buffers
    as they were), and pipeline() leaves the model's buffers unchanged;
  - manual stages: a keyword argument that a later stage's forward also takes (by name or
    through **kwargs) raises NotImplementedError (it would reach the first stage only); one
    that only the first stage takes runs and binds by name.

Tolerances as in test_schedules.py (assert_close / assert_grads); outputs of forward-only
runs are compared to a per-microbatch eager reference bit for bit where the brief says
"exactly" (same kernels, same shapes).
"""
import copy

import numpy as np
import pytest

import pipec
from pipec import nn
from pipec.pipelining import (LocalPipeline, PipelineStage, ScheduleGPipe,
                              ScheduleLoopedBFS, build_stage, pipe_split, pipeline)
from pipec.pipelining._signature import InputMismatchError

from model_registry import SkipConnections
from test_schedules import (DEVICE_KINDS, assert_close, assert_grads, check_close, mse_sum,
                            np_, ref_step)

D = 8
BATCH = 8


def _seeded(seed):
    pipec.manual_seed(seed)


def _mbs(t, n):
    return pipec.tensor_split(t, n, 0)


# ---- models ----

class ScaleBias(nn.Module):
    """forward(x, scale=None, bias=None): lin(x) * scale + bias (each when given)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(D, D)

    def forward(self, x, scale=None, bias=None):
        h = self.lin(x)
        if scale is not None:
            h = h * scale
        if bias is not None:
            h = h + bias
        return h


class TwoKeywords(nn.Module):
    """Two stages; ``a`` is used in stage 0, ``b`` in stage 1 (where a is also read)."""

    def __init__(self):
        super().__init__()
        self.l0 = nn.Linear(D, D)
        self.l1 = nn.Linear(D, D)

    def forward(self, x, a=None, b=None):
        h = pipec.relu(self.l0(x)) * a
        pipe_split()
        return self.l1(h) + b - a


class Factor(nn.Module):
    """forward(x, factor=1.0): a non-tensor argument, a constant of the trace."""

    def __init__(self, split=True):
        super().__init__()
        self.l0 = nn.Linear(D, D)
        self.l1 = nn.Linear(D, D)
        self.split = split

    def forward(self, x, factor=1.0):
        h = pipec.relu(self.l0(x)) * factor
        if self.split:
            pipe_split()
        return self.l1(h)


class FactorKwOnly(Factor):
    """factor is keyword-only."""

    def forward(self, x, *, factor=1.0):
        return super().forward(x, factor)


class DictOut(nn.Module):
    """{"out": b(h), "aux": h} with h made in stage 0, before the split point."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(D, D)
        self.b = nn.Linear(D, D)

    def forward(self, x):
        h = pipec.relu(self.a(x))
        pipe_split()
        return {"out": self.b(h), "aux": h}


class TupleOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(D, D)

    def forward(self, x):
        return (self.lin(x),)


class Lin(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(D, D)

    def forward(self, x):
        return self.lin(x)


class WithDropout(nn.Module):
    def __init__(self):
        super().__init__()
        self.l0 = nn.Linear(D, D)
        self.drop = nn.Dropout(0.5)
        self.l1 = nn.Linear(D, D)

    def forward(self, x):
        return self.l1(self.drop(pipec.relu(self.l0(x))))


class Counter(nn.Module):
    """Counts its forward calls in a buffer (an in-place update during the forward)."""

    def __init__(self, split=False):
        super().__init__()
        self.l0 = nn.Linear(D, D)
        self.l1 = nn.Linear(D, D)
        self.register_buffer("n", pipec.zeros(1))
        self.split = split

    def forward(self, x):
        self.n.add_(1.0)
        h = pipec.relu(self.l0(x))
        if self.split:
            pipe_split()
        return self.l1(h)


class Scaled(nn.Module):
    """A manual stage module taking keywords: lin(x) * scale + shift."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(D, D)

    def forward(self, x, shift=None, scale=None):
        h = self.lin(x)
        if scale is not None:
            h = h * scale
        return h if shift is None else h + shift


def _eager(model, n, *args, **kwargs):
    """The eager model run per microbatch (tensors split along dim 0), outputs concatenated
    (the numbers a pipeline's forward must reproduce bit for bit)."""
    arg_mbs = [_mbs(a, n) if isinstance(a, pipec.Tensor) else [a] * n for a in args]
    kw_mbs = {k: _mbs(v, n) if isinstance(v, pipec.Tensor) else [v] * n
              for k, v in kwargs.items()}
    outs = []
    with pipec.no_grad():
        for m in range(n):
            outs.append(model(*[a[m] for a in arg_mbs], **{k: v[m] for k, v in kw_mbs.items()}))
    if isinstance(outs[0], dict):
        return {k: pipec.cat([o[k] for o in outs], 0) for k in outs[0]}
    if isinstance(outs[0], tuple):
        return tuple(pipec.cat([o[i] for o in outs], 0) for i in range(len(outs[0])))
    return pipec.cat(outs, 0)


def assert_equal(actual, expected, what):
    assert isinstance(actual, pipec.Tensor), f"{what}: got {type(actual).__name__}"
    a, e = np_(actual), np_(expected)
    assert a.shape == e.shape, f"{what}: shape {a.shape} != {e.shape}"
    np.testing.assert_array_equal(a, e, err_msg=what)


def _no_grads(model):
    for p in model.parameters():
        p.grad = None


# ---- 1. keyword arguments bind by name ----

def test_manual_stage_keyword_binds_by_name():
    """eval(x, bias=b) on a stage whose forward is (x, scale=None, bias=None): b is the
    bias (bound by order it would become the scale)."""
    _seeded(0)
    m = ScaleBias()
    ref = copy.deepcopy(m)
    x, b = pipec.randn(BATCH, D), pipec.randn(BATCH, D)
    sched = ScheduleGPipe(PipelineStage(m, 0, 1, "cpu"), 2)
    out = sched.eval(x, bias=b)
    assert_equal(out, _eager(ref, 2, x, bias=b), "eval(x, bias=b)")
    assert_close(out, ref(x, bias=b), "eval(x, bias=b) vs the whole batch")
    # again, and with the keyword given positionally / every argument by name
    assert_equal(sched.eval(x, bias=b), _eager(ref, 2, x, bias=b), "second eval")
    assert_equal(sched.eval(x, None, b), _eager(ref, 2, x, bias=b), "eval(x, None, b)")
    assert_equal(sched.eval(bias=b, x=x), _eager(ref, 2, x, bias=b), "eval(bias=b, x=x)")


def test_manual_stage_keyword_training_binds_by_name():
    _seeded(1)
    m = ScaleBias()
    ref = copy.deepcopy(m)
    x, s, t = pipec.randn(BATCH, D), pipec.randn(BATCH, D), pipec.randn(BATCH, D)
    sched = ScheduleGPipe(PipelineStage(m, 0, 1, "cpu"), 4, loss_fn=mse_sum, scale_grads=False)
    losses = []
    out = sched.step(x, bias=s, target=t, losses=losses)
    ref_out, ref_losses = ref_step(ref, [x], t, 4, mse_sum, kwargs={"bias": s})
    assert_close(out, ref_out, "step(x, bias=s): output")
    for i, (g, r) in enumerate(zip(losses, ref_losses)):
        assert_close(g, r, f"loss {i}")
    assert_grads([(m, "")], ref, 1.0, "step(x, bias=s)")


def _two_keywords(n=2):
    _seeded(2)
    m = TwoKeywords()
    ref = copy.deepcopy(m)
    x, A, B = (pipec.randn(BATCH, D) for _ in range(3))
    pipe = pipeline(m, (_mbs(x, n)[0],), {"a": _mbs(A, n)[0], "b": _mbs(B, n)[0]})
    return m, ref, pipe, x, A, B


def test_pipe_call_keywords_bind_by_name():
    m, ref, pipe, x, A, B = _two_keywords()
    xm, Am, Bm = (_mbs(t, 2)[0] for t in (x, A, B))
    with pipec.no_grad():
        expected = ref(xm, a=Am, b=Bm)
        assert_close(pipe(xm, b=Bm, a=Am), expected, "pipe(x, b=B, a=A)")
        assert_close(pipe(xm, a=Am, b=Bm), expected, "pipe(x, a=A, b=B)")
        assert_close(pipe(xm, Am, Bm), expected, "pipe(x, A, B)")
        assert_close(pipe(xm, Am, b=Bm), expected, "pipe(x, A, b=B)")
        assert_close(pipe(b=Bm, x=xm, a=Am), expected, "pipe(b=B, x=x, a=A)")


@pytest.mark.parametrize("schedule", ["GPipe", "1F1B"])
def test_local_pipeline_keywords_bind_by_name(schedule):
    m, ref, pipe, x, A, B = _two_keywords()
    lp = LocalPipeline(pipe, schedule, 2, ["cpu", "cpu"])
    expected = _eager(ref, 2, x, a=A, b=B)
    assert_equal(lp.eval(x, b=B, a=A), expected, "eval(x, b=B, a=A)")
    assert_equal(lp.eval(x, a=A, b=B), expected, "eval(x, a=A, b=B)")
    assert_equal(lp.eval(x, A, B), expected, "eval(x, A, B)")
    assert_close(lp.eval(x, b=B, a=A), ref(x, a=A, b=B), "vs the whole batch")


def test_local_pipeline_keywords_by_name_training():
    m, ref, pipe, x, A, B = _two_keywords()
    t = pipec.randn(BATCH, D)
    lp = LocalPipeline(pipe, "1F1B", 2, ["cpu", "cpu"], loss_fn=mse_sum, scale_grads=False)
    out = lp.step(x, b=B, a=A, target=t)
    ref_out, _ = ref_step(ref, [x], t, 2, mse_sum, kwargs={"a": A, "b": B})
    assert_close(out, ref_out, "step(x, b=B, a=A): output")
    assert_grads([(pipe.get_stage_module(i), "") for i in range(2)], ref, 1.0,
                 "step(x, b=B, a=A)")


# ---- 2. non-tensor arguments ----

def test_input_mismatch_error_is_type_and_value_error():
    assert issubclass(InputMismatchError, TypeError)
    assert issubclass(InputMismatchError, ValueError)


@pytest.mark.parametrize("model_cls", [Factor, FactorKwOnly])
def test_traced_non_tensor_argument(model_cls):
    _seeded(3)
    m = model_cls()
    ref = copy.deepcopy(m)
    x = pipec.randn(BATCH, D)
    pipe = pipeline(m, (_mbs(x, 2)[0],), {"factor": 2.0})
    xm = _mbs(x, 2)[0]
    with pipec.no_grad():
        assert_close(pipe(xm, factor=2.0), ref(xm, factor=2.0), "pipe(x, factor=2.0)")
        # the traced value is 2.0, not the default 1.0
        assert not np.allclose(np_(pipe(xm, factor=2.0)), np_(ref(xm)))
    lp = LocalPipeline(pipe, "GPipe", 2, ["cpu", "cpu"])
    assert_equal(lp.eval(x, factor=2.0), _eager(ref, 2, x, factor=2.0), "eval(x, factor=2.0)")
    for call in (lambda: lp.eval(x, factor=5.0), lambda: pipe(xm, factor=5.0)):
        with pytest.raises(InputMismatchError) as ei:
            call()
        msg = str(ei.value)
        assert "factor" in msg, f"the message does not name the argument: {msg!r}"
        assert "5.0" in msg and "2.0" in msg, msg
    # the pipeline still runs with the traced value
    assert_equal(lp.eval(x, factor=2.0), _eager(ref, 2, x, factor=2.0), "after the error")


def test_traced_non_tensor_argument_default_is_traced_value():
    """Traced without factor: the default (1.0) is the traced value; 1.0 given explicitly
    binds alike, another value raises."""
    _seeded(4)
    m = Factor()
    ref = copy.deepcopy(m)
    x = pipec.randn(BATCH, D)
    pipe = pipeline(m, (_mbs(x, 2)[0],))
    lp = LocalPipeline(pipe, "GPipe", 2, ["cpu", "cpu"])
    expected = _eager(ref, 2, x)
    assert_equal(lp.eval(x), expected, "eval(x)")
    assert_equal(lp.eval(x, factor=1.0), expected, "eval(x, factor=1.0)")
    with pytest.raises(InputMismatchError, match="factor|argument 1"):
        lp.eval(x, factor=3.0)


def test_manual_stage_non_tensor_argument():
    _seeded(5)
    m = Factor(split=False)
    ref = copy.deepcopy(m)
    x = pipec.randn(BATCH, D)
    sched = ScheduleGPipe(PipelineStage(m, 0, 1, "cpu"), 2)
    out = sched.eval(x, factor=2.0)
    assert_equal(out, _eager(ref, 2, x, factor=2.0), "eval(x, factor=2.0)")
    assert not np.allclose(np_(out), np_(_eager(ref, 2, x)))
    assert_equal(sched.eval(x, 2.0), _eager(ref, 2, x, factor=2.0), "eval(x, 2.0)")
    with pytest.raises(InputMismatchError) as ei:
        sched.eval(x, factor=5.0)
    assert "factor" in str(ei.value), f"the message does not name the argument: {ei.value}"
    with pytest.raises(InputMismatchError):
        sched.eval(x)  # factor back at its default 1.0: not what was traced


def test_missing_and_unexpected_keywords_raise():
    m, ref, pipe, x, A, B = _two_keywords()
    xm, Am, Bm = (_mbs(t, 2)[0] for t in (x, A, B))
    lp = LocalPipeline(pipe, "GPipe", 2, ["cpu", "cpu"])
    lp.eval(x, a=A, b=B)
    for call in (lambda: pipe(xm, a=Am), lambda: lp.eval(x, a=A)):
        with pytest.raises(InputMismatchError):  # b missing (None where a tensor was traced)
            call()
    for call in (lambda: pipe(xm, a=Am, b=Bm, c=Bm), lambda: lp.eval(x, a=A, b=B, c=B)):
        with pytest.raises(InputMismatchError, match="c"):
            call()
    with pytest.raises(InputMismatchError):  # a tensor where a tensor was not traced
        pipe(xm, Am, Bm, Bm)


def test_manual_stage_missing_and_unexpected_keywords_raise():
    _seeded(6)
    m = ScaleBias()
    x, b = pipec.randn(BATCH, D), pipec.randn(BATCH, D)
    sched = ScheduleGPipe(PipelineStage(m, 0, 1, "cpu"), 2)
    sched.eval(x, bias=b)
    with pytest.raises(InputMismatchError):  # bias missing
        sched.eval(x)
    with pytest.raises(InputMismatchError):  # scale instead of bias
        sched.eval(x, scale=b)
    with pytest.raises(InputMismatchError, match="shift"):
        sched.eval(x, bias=b, shift=b)


# ---- 3. output structure ----

def test_dict_output_eval():
    _seeded(7)
    m = DictOut()
    ref = copy.deepcopy(m)
    x = pipec.randn(BATCH, D)
    pipe = pipeline(m, (_mbs(x, 2)[0],))
    assert pipe.num_stages == 2
    with pipec.no_grad():
        po = pipe(_mbs(x, 2)[0])
        pr = ref(_mbs(x, 2)[0])
    assert isinstance(po, dict) and set(po) == {"out", "aux"}
    for k in ("out", "aux"):
        assert_close(po[k], pr[k], f"Pipe call: {k}")
    lp = LocalPipeline(pipe, "GPipe", 2, ["cpu", "cpu"])
    out = lp.eval(x)
    assert isinstance(out, dict), f"eval returned {type(out).__name__}"
    assert set(out) == {"out", "aux"}
    expected = _eager(ref, 2, x)
    for k in ("out", "aux"):
        assert_equal(out[k], expected[k], f"eval: {k}")
    whole = ref(x)
    for k in ("out", "aux"):
        assert_close(out[k], whole[k], f"eval vs the whole batch: {k}")


def dict_loss(o, t):
    return ((o["out"] - t) ** 2).sum() + (o["aux"] ** 2).sum()


@pytest.mark.parametrize("kind", DEVICE_KINDS)
@pytest.mark.parametrize("schedule", ["GPipe", "1F1B"])
@pytest.mark.parametrize("scale_grads", [False, True])
def test_dict_output_training(schedule, scale_grads, kind):
    _seeded(8)
    n = 4
    dev = "cuda:0" if kind == "cuda" else "cpu"
    m = DictOut().to(dev)
    ref = copy.deepcopy(m)
    pipe = pipeline(m, (pipec.randn(BATCH // n, D, device=dev),))
    lp = LocalPipeline(pipe, schedule, n, [dev, dev], loss_fn=dict_loss,
                       scale_grads=scale_grads)
    mods = [(pipe.get_stage_module(i), "") for i in range(2)]
    for step in range(2):  # gradients accumulate over the steps
        x, t = pipec.randn(BATCH, D, device=dev), pipec.randn(BATCH, D, device=dev)
        losses = []
        out = lp.step(x, target=t, losses=losses)
        assert isinstance(out, dict) and set(out) == {"out", "aux"}
        ref_losses = []
        for xm, tm in zip(_mbs(x, n), _mbs(t, n)):
            loss = dict_loss(ref(xm), tm)
            loss.backward()
            ref_losses.append(loss.detach())
        whole = ref(x)
        for k in ("out", "aux"):
            assert_close(out[k], whole[k].detach(), f"step {step}: output {k}")
        assert len(losses) == n
        for i, (g, r) in enumerate(zip(losses, ref_losses)):
            assert_close(g, r, f"step {step}: loss {i}")
        assert_grads(mods, ref, 1.0 / n if scale_grads else 1.0, f"{schedule} step {step}")


def test_manual_last_stage_one_tuple():
    _seeded(9)
    m = TupleOut()
    ref = copy.deepcopy(m)
    x = pipec.randn(BATCH, D)
    out = ScheduleGPipe(PipelineStage(m, 0, 1, "cpu"), 2).eval(x)
    assert isinstance(out, tuple) and len(out) == 1, f"eval returned {out!r}"
    assert_equal(out[0], _eager(ref, 2, x)[0], "1-tuple")


def test_manual_two_stages_last_returns_one_tuple():
    _seeded(10)
    m0, m1 = Lin(), TupleOut()
    r0, r1 = copy.deepcopy(m0), copy.deepcopy(m1)
    x = pipec.randn(BATCH, D)
    out = LocalPipeline([m0, m1], "GPipe", 2, ["cpu", "cpu"]).eval(x)
    assert isinstance(out, tuple) and len(out) == 1, f"eval returned {out!r}"
    with pipec.no_grad():
        expected = pipec.cat([r1(r0(xm))[0] for xm in _mbs(x, 2)], 0)
    assert_equal(out[0], expected, "1-tuple after two stages")


def test_manual_stage_dict_output():
    _seeded(11)

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(D, D)

        def forward(self, x):
            h = self.lin(x)
            return {"h": h, "r": pipec.relu(h)}

    m = M()
    ref = copy.deepcopy(m)
    x = pipec.randn(BATCH, D)
    out = ScheduleGPipe(PipelineStage(m, 0, 1, "cpu"), 2).eval(x)
    assert isinstance(out, dict) and set(out) == {"h", "r"}, f"eval returned {out!r}"
    expected = _eager(ref, 2, x)
    for k in ("h", "r"):
        assert_equal(out[k], expected[k], k)


# ---- 4. build_stage keeps the Pipe's wiring ----

def _skip_model(n):
    _seeded(12)
    model = SkipConnections(D)
    ref = copy.deepcopy(model)
    x = pipec.randn(BATCH, D)
    pipe = pipeline(model, (_mbs(x, n)[0],))
    assert pipe.num_stages == 4
    return model, ref, pipe, x


def test_build_stage_skip_connections_local_pipeline():
    n = 4
    model, ref, pipe, x = _skip_model(n)
    stages = [build_stage(pipe.get_stage_module(i), i, pipe.info(), "cpu") for i in range(4)]
    lp = LocalPipeline(stages, "GPipe", n, ["cpu"] * 4, loss_fn=mse_sum, scale_grads=False)
    t = pipec.randn(BATCH, D)
    assert_equal(lp.eval(x, target=t), _eager(ref, n, x), "eval")
    out = lp.step(x, target=t)
    ref_out, _ = ref_step(ref, [x], t, n, mse_sum)
    assert_close(out, ref_out, "step: output")
    assert_grads([(pipe.get_stage_module(i), "") for i in range(4)], ref, 1.0, "build_stage")


def test_build_stage_skip_connections_schedule():
    n = 4
    model, ref, pipe, x = _skip_model(n)
    stages = [build_stage(pipe.get_stage_module(i), i, pipe.info(), "cpu") for i in range(4)]
    sched = ScheduleLoopedBFS(stages, n, loss_fn=mse_sum, scale_grads=False)
    t = pipec.randn(BATCH, D)
    out = sched.step(x, target=t)
    ref_out, _ = ref_step(ref, [x], t, n, mse_sum)
    assert_close(out, ref_out, "schedule over build_stage stages: output")
    assert_grads([(pipe.get_stage_module(i), "") for i in range(4)], ref, 1.0,
                 "schedule over build_stage stages")


def test_build_stage_rejects_a_module_that_is_not_stage_i():
    model, ref, pipe, x = _skip_model(2)
    with pytest.raises(ValueError):
        build_stage(pipe.get_stage_module(1), 0, pipe.info(), "cpu")
    with pytest.raises(ValueError):
        build_stage(pipe.get_stage_module(0), 3, pipe.info(), "cpu")
    other = pipeline(copy.deepcopy(ref), (_mbs(x, 2)[0],))
    with pytest.raises(ValueError):
        build_stage(other.get_stage_module(0), 0, pipe.info(), "cpu")
    # the right one works
    st = build_stage(pipe.get_stage_module(2), 2, pipe.info(), "cpu")
    assert st.stage_index == 2 and st.num_stages == 4


# ---- 5. a parameter replaced after the first step ----

@pytest.mark.parametrize("kind", DEVICE_KINDS)
def test_replaced_parameter_used_by_eval_and_step(kind):
    _seeded(13)
    dev = "cuda:0" if kind == "cuda" else "cpu"
    m = Lin().to(dev)
    x, t = pipec.randn(BATCH, D, device=dev), pipec.randn(BATCH, D, device=dev)
    sched = ScheduleGPipe(PipelineStage(m, 0, 1, dev), 2, loss_fn=mse_sum,
                          scale_grads=False)
    sched.step(x, target=t)
    old = m.lin.weight
    assert old.grad is not None
    m.lin.weight = nn.Parameter(pipec.zeros(D, D, device=dev))
    new = m.lin.weight
    assert new is not old
    out = sched.eval(x, target=t)
    assert_equal(out, _eager(m, 2, x), "eval after the replacement")
    # (zero weight: every row is the bias)
    check_close(np_(out), np.broadcast_to(np_(m.lin.bias), (BATCH, D)), "rows are the bias")
    old_grad = np_(old.grad)
    old.grad = None
    _no_grads(m)
    ref = copy.deepcopy(m)
    sched.step(x, target=t)
    ref_step(ref, [x], t, 2, mse_sum)
    assert new.grad is not None, "the step put no gradient on the new parameter"
    assert old.grad is None, "the step's gradient went to the replaced parameter"
    assert_grads([(m, "")], ref, 1.0, "after the replacement")
    assert not np.allclose(np_(new.grad), old_grad)


def test_replaced_parameter_in_a_pipe_stage():
    """The same through pipeline(): replacing a stage module's parameter."""
    _seeded(14)
    n = 2
    model = DictOut()
    x, t = pipec.randn(BATCH, D), pipec.randn(BATCH, D)
    pipe = pipeline(model, (_mbs(x, n)[0],))
    lp = LocalPipeline(pipe, "GPipe", n, ["cpu", "cpu"], loss_fn=dict_loss, scale_grads=False)
    lp.step(x, target=t)
    s1 = pipe.get_stage_module(1)
    s1.b.weight = nn.Parameter(pipec.zeros(D, D))
    model.b.weight = s1.b.weight  # the eager reference with the same weights
    out = lp.eval(x, target=t)
    expected = _eager(model, n, x)
    for k in ("out", "aux"):
        assert_equal(out[k], expected[k], f"eval after the replacement: {k}")
    _no_grads(pipe)
    lp.step(x, target=t)
    assert s1.b.weight.grad is not None


def test_replaced_parameter_of_another_shape_raises():
    _seeded(15)
    m = Lin()
    x, t = pipec.randn(BATCH, D), pipec.randn(BATCH, D)
    sched = ScheduleGPipe(PipelineStage(m, 0, 1, "cpu"), 2, loss_fn=mse_sum)
    sched.step(x, target=t)
    m.lin.weight = nn.Parameter(pipec.zeros(D, D + 1))
    with pytest.raises(ValueError, match="weight"):
        sched.eval(x, target=t)
    with pytest.raises(ValueError, match="weight"):
        sched.step(x, target=t)


# ---- 6. training mode ----

def test_manual_stage_follows_module_eval():
    _seeded(16)
    m = WithDropout()
    m.train()
    x, t = pipec.randn(BATCH, D), pipec.randn(BATCH, D)
    sched = ScheduleGPipe(PipelineStage(m, 0, 1, "cpu"), 2, loss_fn=mse_sum)
    out_train = sched.step(x, target=t)
    m.eval()
    expected = _eager(m, 2, x)
    # dropout was active in the training step
    assert not np.allclose(np_(out_train), np_(expected))
    out = sched.eval(x, target=t)
    assert_equal(out, expected, "eval after m.eval()")
    assert_close(out, m(x), "eval after m.eval() vs the whole batch")
    assert_equal(sched.eval(x, target=t), expected, "second eval after m.eval()")
    # and back to training: dropout again (outputs differ from the eval-mode ones)
    m.train()
    out2 = sched.step(x, target=t)
    assert not np.allclose(np_(out2), np_(expected))


def test_local_pipeline_manual_stages_follow_module_eval():
    _seeded(17)
    m0, m1 = WithDropout(), Lin()
    x, t = pipec.randn(BATCH, D), pipec.randn(BATCH, D)
    lp = LocalPipeline([m0, m1], "1F1B", 2, ["cpu", "cpu"], loss_fn=mse_sum)
    lp.step(x, target=t)
    m0.eval()
    with pipec.no_grad():
        expected = pipec.cat([m1(m0(xm)) for xm in _mbs(x, 2)], 0)
    assert_equal(lp.eval(x, target=t), expected, "eval after m0.eval()")


# ---- 7. buffers ----

def test_buffer_counts_exactly_the_microbatches_run():
    _seeded(18)
    m = Counter()
    x = pipec.randn(BATCH, D)
    sched = ScheduleGPipe(PipelineStage(m, 0, 1, "cpu"), 4)
    assert float(np_(m.n)[0]) == 0.0
    sched.eval(x)
    assert float(np_(m.n)[0]) == 4.0, f"after one eval of 4 microbatches: {np_(m.n)}"
    sched.eval(x)
    assert float(np_(m.n)[0]) == 8.0, f"after two evals of 4 microbatches: {np_(m.n)}"


def test_buffer_counts_training_steps():
    _seeded(19)
    m = Counter()
    ref = copy.deepcopy(m)
    x, t = pipec.randn(BATCH, D), pipec.randn(BATCH, D)
    sched = ScheduleGPipe(PipelineStage(m, 0, 1, "cpu"), 4, loss_fn=mse_sum,
                          scale_grads=False)
    out = sched.step(x, target=t)
    assert float(np_(m.n)[0]) == 4.0, np_(m.n)
    ref_out, _ = ref_step(ref, [x], t, 4, mse_sum)
    assert_close(out, ref_out, "output")
    assert_grads([(m, "")], ref, 1.0, "Counter")


def test_pipeline_leaves_model_buffers_unchanged():
    _seeded(20)
    model = Counter(split=True)
    buf = model.n
    x = pipec.randn(BATCH, D)
    pipe = pipeline(model, (_mbs(x, 4)[0],))
    assert model.n is buf, "pipeline() replaced the buffer"
    assert float(np_(model.n)[0]) == 0.0, f"pipeline() changed the buffer: {np_(model.n)}"
    assert pipe.num_stages == 2
    lp = LocalPipeline(pipe, "GPipe", 4, ["cpu", "cpu"])
    lp.eval(x)
    lp.eval(x)
    stage_n = pipe.get_stage_module(0).n
    assert float(np_(stage_n)[0]) == 8.0, f"two evals of 4 microbatches: {np_(stage_n)}"


# ---- 8. manual stages: keywords reach the first stage only ----

def test_manual_keyword_taken_by_a_later_stage_raises():
    _seeded(21)
    m0, m1 = Scaled(), Scaled()
    x, s = pipec.randn(BATCH, D), pipec.randn(BATCH, D)
    lp = LocalPipeline([m0, m1], "GPipe", 2, ["cpu", "cpu"])
    with pytest.raises(NotImplementedError, match="scale"):
        lp.eval(x, scale=s)


def test_manual_keyword_taken_by_a_later_stage_raises_schedule():
    _seeded(22)
    m0, m1 = Scaled(), Scaled()
    x, s, t = pipec.randn(BATCH, D), pipec.randn(BATCH, D), pipec.randn(BATCH, D)
    stages = [PipelineStage(m, i, 2, "cpu") for i, m in enumerate((m0, m1))]
    sched = ScheduleLoopedBFS(stages, 2, loss_fn=mse_sum)
    with pytest.raises(NotImplementedError, match="scale"):
        sched.step(x, scale=s, target=t)


class ScaledVarKw(nn.Module):
    """A later stage taking its keywords through **kwargs."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(D, D)

    def forward(self, x, **kwargs):
        h = self.lin(x)
        return h * kwargs["scale"] if "scale" in kwargs else h


def test_manual_keyword_and_a_later_stage_with_var_keyword_warns():
    """A later stage whose forward has **kwargs may or may not want a keyword (blocks often
    pass **kwargs on unused): pipec runs, and warns that the keyword reaches the first
    stage only."""
    _seeded(24)
    x, s = pipec.randn(BATCH, D), pipec.randn(BATCH, D)
    lp = LocalPipeline([Scaled(), ScaledVarKw()], "GPipe", 2, ["cpu", "cpu"])
    with pytest.warns(UserWarning, match="first stage only"):
        lp.eval(x, scale=s)


def test_manual_keyword_for_the_first_stage_only_runs():
    """A keyword only the first stage takes is fine (and bound by name)."""
    _seeded(23)
    m0, m1 = Scaled(), Lin()
    r0, r1 = copy.deepcopy(m0), copy.deepcopy(m1)
    x, s = pipec.randn(BATCH, D), pipec.randn(BATCH, D)
    out = LocalPipeline([m0, m1], "GPipe", 2, ["cpu", "cpu"]).eval(x, scale=s)
    with pipec.no_grad():
        expected = pipec.cat([r1(r0(xm, scale=sm)) for xm, sm in zip(_mbs(x, 2), _mbs(s, 2))],
                             0)
    assert_equal(out, expected, "eval(x, scale=s)")


# ---- step() without a loss_fn, torch's import paths ----

def test_step_without_loss_fn_runs_forward_only():
    """torch's schedules run forward only when they have no loss_fn; so does step()."""
    _seeded(20)
    m = nn.Linear(D, D)
    x = pipec.randn(BATCH, D)
    from pipec.pipelining import Schedule1F1B
    for cls in (ScheduleGPipe, Schedule1F1B):
        sched = cls(PipelineStage(m, 0, 1, "cpu"), 2)
        out = sched.step(x)
        np.testing.assert_array_equal(np_(out), np_(m(x).detach()))
        assert m.weight.grad is None
    pipe = LocalPipeline([nn.Linear(D, D), nn.Linear(D, D)], "1F1B", 2, ["cpu", "cpu"])
    out = pipe.step(x)
    assert tuple(out.shape) == (BATCH, D)
    assert all(p.grad is None for st in pipe.stages for p in st.submod.parameters())


def test_forward_only_schedule_and_torch_import_paths():
    from pipec.pipelining.schedules import (ScheduleGPipe as FromSchedules, _PipelineSchedule,
                                            _PipelineScheduleRuntime, _ScheduleForwardOnly,
                                            get_schedule_class)
    assert FromSchedules is ScheduleGPipe
    assert get_schedule_class("gpipe") is ScheduleGPipe
    assert issubclass(_PipelineScheduleRuntime, _PipelineSchedule)
    with pytest.raises(ImportError):
        from pipec.pipelining.schedules import ScheduleNoSuchThing  # noqa: F401
    _seeded(21)
    m = nn.Linear(D, D)
    x = pipec.randn(BATCH, D)
    sched = _ScheduleForwardOnly(PipelineStage(m, 0, 1, "cpu"), 4, loss_fn=mse_sum)
    out = sched.step(x, target=pipec.zeros(BATCH, D))
    np.testing.assert_array_equal(np_(out), np_(m(x).detach()))
    assert m.weight.grad is None


def test_validate_and_set_stage_mapping():
    """torch's custom schedules call this hook on the order they set."""
    from pipec.pipelining import PipelineScheduleMulti
    from pipec.pipelining.schedules import ScheduleValidationError, _Action

    class Lockstep(PipelineScheduleMulti):
        def __init__(self, stages, n, **kw):
            super().__init__(stages, n, **kw)
            order = {0: [], 1: []}
            for mb in range(n):
                order[0].append(_Action.from_str(f"0F{mb}"))
                order[1].append(_Action.from_str(f"1F{mb}"))
            for mb in range(n):
                order[0].append(_Action.from_str(f"0B{mb}"))
                order[1].append(_Action.from_str(f"1B{mb}"))
            self.pipeline_order = order
            self._validate_and_set_stage_mapping(order)

    stages = [PipelineStage(nn.Linear(D, D), i, 2, "cpu") for i in range(2)]
    sched = Lockstep(stages, 2, loss_fn=mse_sum)
    assert sched.stage_index_to_group_rank == {0: 0, 1: 1}
    bad = {0: [_Action.from_str("0B0")], 1: [_Action.from_str("1F0")]}
    with pytest.raises(ScheduleValidationError):
        sched._validate_and_set_stage_mapping(bad)


# ---- gradients of the model's inputs ----

class _InputEverywhere(nn.Module):
    """Reads the model input x in stage 0 and again in the last stage (a skip connection
    from the input), so x's gradient is the sum of two stages' input gradients."""

    def __init__(self, n_stages):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(D, D) for _ in range(n_stages)])

    def forward(self, x):
        h = x
        for i, layer in enumerate(self.layers):
            if i:
                pipe_split()
            h = pipec.tanh(layer(h))
        return h + x * 0.5


@pytest.mark.parametrize("kind", DEVICE_KINDS)
@pytest.mark.parametrize("schedule", ["GPipe", "1F1B", "Interleaved1F1B", "LoopedBFS",
                                      "InterleavedZeroBubble", "ZBVZeroBubble", "DualPipeV"])
def test_model_input_gets_its_gradient(schedule, kind):
    """torch fills x.grad of a model input that requires grad (its autograd runs through
    the microbatch views); pipec's runtime hands the stages' input gradients back the same
    way: the eager gradient, unscaled, also for an input read by two stages."""
    n_stages = 2 if schedule in ("GPipe", "1F1B") else 4
    n = 4
    _seeded(30)
    dev = "cuda:0" if kind == "cuda" else "cpu"
    model = _InputEverywhere(n_stages).to(dev)
    ref = copy.deepcopy(model)
    x = pipec.randn(BATCH, D, device=dev)
    y = pipec.randn(BATCH, D, device=dev)
    pipe = pipeline(model, (pipec.tensor_split(x, n, 0)[0],))
    assert pipe.num_stages == n_stages
    lp = LocalPipeline(pipe, schedule, n, [dev, dev], loss_fn=mse_sum)
    xp = x.detach().clone().requires_grad_(True)
    lp.step(xp, target=y)
    xr = x.detach().clone().requires_grad_(True)
    for xm, ym in zip(pipec.tensor_split(xr, n, 0), pipec.tensor_split(y, n, 0)):
        mse_sum(ref(xm), ym).backward()
    assert xp.grad is not None, "x.grad was not filled"
    assert_close(xp.grad, xr.grad, f"{schedule}: x.grad")
    # eval() and inputs that need no gradient are left alone
    xe = x.detach().clone().requires_grad_(True)
    lp.eval(xe, target=y)
    assert xe.grad is None
    lp.step(x, target=y)
    assert x.grad is None


def test_model_input_gradient_accumulates_and_survives_a_failed_step():
    _seeded(31)
    m1, m2 = nn.Linear(D, D), nn.Linear(D, D)
    calls = []

    def flaky(out, target):
        calls.append(1)
        if len(calls) == 3:
            raise ValueError("loss failed on purpose")
        return mse_sum(out, target)

    lp = LocalPipeline([m1, m2], "1F1B", 2, ["cpu", "cpu"], loss_fn=flaky)
    x = pipec.randn(BATCH, D, requires_grad=True)
    y = pipec.randn(BATCH, D)
    lp.step(x, target=y)
    first = np_(x.grad).copy()
    with pytest.raises(ValueError, match="on purpose"):
        lp.step(x, target=y)
    np.testing.assert_array_equal(np_(x.grad), first)  # the failed step added nothing
    lp.step(x, target=y)
    np.testing.assert_allclose(np_(x.grad), 2 * first, rtol=1e-5, atol=1e-6)


# ---- microbatches of different shapes (one process) ----

class _Reshaping(nn.Module):
    """Two stages; the second reshapes with a size read in Python (baked into the trace)
    or with -1 (not)."""

    def __init__(self, read_batch):
        super().__init__()
        self.a = nn.Linear(D, D)
        self.b = nn.Linear(D, D)
        self.read_batch = read_batch

    def forward(self, x):
        h = self.a(x)
        pipe_split()
        rows = x.shape[0] if self.read_batch else -1
        return self.b(h).view(rows, 2, D // 2).sum(1)


@pytest.mark.parametrize("kind", DEVICE_KINDS)
@pytest.mark.parametrize("traced", ["pipeline", "manual"])
def test_uneven_microbatches_with_a_baked_size_raise(traced, kind):
    """A batch of 9 in 2 microbatches gives 5 and 4 rows. Code that reads x.shape[0] into
    view() was traced with 5: the second microbatch must not run with it (torch would run
    its eager code; pipec re-traces on the new shape and refuses when the Program differs).
    With view(-1, ...) the Programs agree and the step runs, equal to the eager model."""
    dev = "cuda:0" if kind == "cuda" else "cpu"
    for read_batch in (True, False):
        _seeded(40)
        model = _Reshaping(read_batch).to(dev)
        x = pipec.randn(9, D, device=dev)
        if traced == "pipeline":
            pipe = pipeline(model, (pipec.tensor_split(x, 2, 0)[0],))
            lp = LocalPipeline(pipe, "GPipe", 2, [dev, dev])
        else:
            class First(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.a = model.a

                def forward(self, x):
                    return self.a(x)

            class Second(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.b = model.b

                def forward(self, h):
                    rows = h.shape[0] if read_batch else -1
                    return self.b(h).view(rows, 2, D // 2).sum(1)

            lp = LocalPipeline([First(), Second()], "GPipe", 2, [dev, dev])
        if read_batch:
            with pytest.raises(ValueError, match="were traced with"):
                lp.eval(x)
        else:
            out = lp.eval(x)
            assert_close(out, model(x), f"{traced}: uneven microbatches")


def test_uneven_microbatches_without_the_model():
    """pipeline() checks, while the model is at hand, whether its Programs depend on the
    microbatch's rows: a plain model then runs uneven microbatches after the model is gone;
    one that baked in the size refuses them (it cannot be traced again to check)."""
    import gc
    _seeded(41)
    model = _Reshaping(False)
    x = pipec.randn(9, D)
    pipe = pipeline(model, (pipec.tensor_split(x, 2, 0)[0],))
    del model
    gc.collect()
    lp = LocalPipeline(pipe, "GPipe", 2, ["cpu", "cpu"])
    lp.eval(x)  # pipeline() found its Programs free of the batch size
    _seeded(42)
    baked = _Reshaping(True)
    pipe = pipeline(baked, (pipec.tensor_split(x, 2, 0)[0],))
    assert not pipe._batch_free
    del baked
    gc.collect()
    lp = LocalPipeline(pipe, "GPipe", 2, ["cpu", "cpu"])
    with pytest.raises(ValueError, match=r"model pipeline\(\) traced is gone"):
        lp.eval(x)
    lp.eval(pipec.randn(10, D))  # the traced shapes (5 rows) need no second trace


@pytest.mark.parametrize("traced", ["pipeline", "manual"])
def test_later_steps_of_another_microbatch_size_are_checked_too(traced):
    """Every microbatch of a later step may share one size that is not the traced one
    (traced on 4 rows, run on 8): checked against the traced shapes, not each other."""
    _seeded(43)
    model = _Reshaping(True)
    x = pipec.randn(8, D)
    if traced == "pipeline":
        lp = LocalPipeline(pipeline(model, (x[:4],)), "GPipe", 2, ["cpu", "cpu"])
    else:
        class Whole(nn.Module):
            def __init__(self):
                super().__init__()
                self.m = model

            def forward(self, x):
                return self.m(x)

        lp = LocalPipeline([Whole()], "GPipe", 2, ["cpu"])
        lp.eval(x)  # traced on 4 rows
    with pytest.raises(ValueError, match="were traced with"):
        lp.eval(pipec.randn(16, D))


# ---- PipelineStage(input_args=, output_args=) ----

def test_static_stage_arguments_are_checked():
    """torch's static mode: output_args needs input_args (an AssertionError there, here
    also a ValueError); given ones must match the first step's values (a training step
    with matching ones equals the eager model, as torch's test_grad_with_manual)."""
    from pipec.pipelining import PipeliningShapeError
    _seeded(50)
    m = nn.Linear(D, D)
    x = pipec.randn(BATCH, D)
    y = pipec.randn(BATCH, D)
    mb = pipec.tensor_split(x, 2, 0)[0]
    with pytest.raises(AssertionError, match="output_args without input_args"):
        PipelineStage(m, 0, 1, "cpu", output_args=(m(mb).detach(),))
    with pytest.raises(ValueError):
        PipelineStage(m, 0, 1, "cpu", output_args=(m(mb).detach(),))
    ref = copy.deepcopy(m)
    stage = PipelineStage(m, 0, 1, "cpu", input_args=(mb,), output_args=m(mb).detach())
    ScheduleGPipe(stage, 2, loss_fn=mse_sum, scale_grads=False).step(x, target=y)
    for xm, ym in zip(pipec.tensor_split(x, 2, 0), pipec.tensor_split(y, 2, 0)):
        mse_sum(ref(xm), ym).backward()
    assert_close(m.weight.grad, ref.weight.grad, "static stage: weight grad")
    wrong = PipelineStage(nn.Linear(D, D), 0, 1, "cpu", input_args=(pipec.randn(3, D),))
    with pytest.raises(PipeliningShapeError, match="shape mismatch"):
        ScheduleGPipe(wrong, 2).eval(x)
    wrong = PipelineStage(nn.Linear(D, D), 0, 1, "cpu", input_args=(mb,),
                          output_args=(pipec.randn(4, D).to(pipec.float64),))
    with pytest.raises(PipeliningShapeError, match="dtype mismatch"):
        ScheduleGPipe(wrong, 2).eval(x)


def test_use_full_backward_is_deprecated():
    from pipec.pipelining import ScheduleInterleaved1F1B
    stages = [PipelineStage(nn.Linear(D, D), i, 2, "cpu") for i in range(2)]
    with pytest.warns(FutureWarning, match="use_full_backward"):
        ScheduleInterleaved1F1B(stages, 2, loss_fn=mse_sum, use_full_backward=True)


class _SizeUse(nn.Module):
    def __init__(self, how):
        super().__init__()
        self.a = nn.Linear(D, D)
        self.b = nn.Linear(D, D)
        self.how = how

    def forward(self, x):
        h = self.a(x)
        pipe_split()
        if self.how == "negative_slice":   # resolved with the traced size
            h = pipec.cat([h[:-1], h[-1:]], 0)
        elif self.how == "constant":       # a size turned into a captured constant
            h = h / pipec.full((1,), float(x.shape[0]), device=h.device)
        elif self.how == "open_slice":     # x[1:], x[:] replay on any size
            h = pipec.cat([h[:1], h[1:]], 0)[:]
        return self.b(h)


@pytest.mark.parametrize("kind", DEVICE_KINDS)
@pytest.mark.parametrize("how", ["negative_slice", "constant", "open_slice"])
def test_sizes_hidden_in_slices_and_constants(how, kind):
    """Slices counted from the end and constants made from a size are size-dependent code
    too (refused for other shapes); open and non-negative slices replay on any size."""
    _seeded(44)
    dev = "cuda:0" if kind == "cuda" else "cpu"
    model = _SizeUse(how).to(dev)
    x = pipec.randn(7, D, device=dev)
    lp = LocalPipeline(pipeline(model, (x[:4],)), "GPipe", 2, [dev, dev])
    if how == "open_slice":
        assert_close(lp.eval(x), pipec.cat([model(c) for c in pipec.tensor_split(x, 2, 0)], 0),
                     "open slices on 4 + 3 rows")
    else:
        with pytest.raises(ValueError, match="were traced with"):
            lp.eval(x)


@pytest.mark.parametrize("how", ["load_state_dict_assign", "direct", "to_double"])
def test_parameters_replaced_without_an_attribute_assignment(how):
    """load_state_dict(assign=True), .to() and direct _parameters edits change tensors
    without Module.__setattr__: the next step still uses the new ones."""
    _seeded(60)
    m = nn.Linear(D, D)
    sched = ScheduleGPipe(PipelineStage(m, 0, 1, "cpu"), 2)
    x = pipec.randn(BATCH, D)
    sched.eval(x)
    if how == "load_state_dict_assign":
        m.load_state_dict({"weight": nn.Parameter(pipec.zeros(D, D)),
                           "bias": nn.Parameter(pipec.ones(D))}, assign=True)
    elif how == "direct":
        m._parameters["bias"] = nn.Parameter(pipec.full((D,), 3.0))
    else:  # parameters converted in place (same objects), buffers would be replaced
        m.to(pipec.float64)
        x = x.to(pipec.float64)
        out = sched.eval(x)
        assert out.dtype == pipec.float64
        np.testing.assert_allclose(np_(out), np_(m(x).detach()), rtol=1e-12, atol=1e-12)
        return
    assert_close(sched.eval(x), m(x).detach(), how)


def test_directly_replaced_parameter_gets_the_step_gradient():
    """A parameter put into _parameters directly (no attribute assignment, so no change is
    signalled) is still held, scaled and accumulated like the others."""
    _seeded(61)
    m = nn.Linear(D, D)
    x, t = pipec.randn(BATCH, D), pipec.randn(BATCH, D)
    sched = ScheduleGPipe(PipelineStage(m, 0, 1, "cpu"), 2, loss_fn=mse_sum)
    sched.step(x, target=t)
    m._parameters["weight"] = nn.Parameter(m.weight.detach().clone() * 0.5)
    for p in m.parameters():
        p.grad = None
    ref = copy.deepcopy(m)
    for _ in range(2):  # the second step accumulates onto the first
        sched.step(x, target=t)
        ref_step(ref, [x], t, 2, mse_sum)
    assert_grads([(m, "")], ref, 0.5, "directly replaced weight, two steps")

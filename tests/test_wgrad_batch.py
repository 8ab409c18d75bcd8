"""Weight-gradient batching across microbatches (pipec.pipelining.set_weight_grad_batching).

Inside a pipeline step, a Linear's weight-gradient products of several microbatches run as
one GEMM over their stacked rows (csrc/ops/wgrad_batch.c). Checked for every schedule, on
CPU and (marked cuda) on one GPU: with batching off, with batches that close mid-step
(max_rows = two microbatches) and with one batch per step, the gradients over two steps
without zero_grad equal the unpipelined reference (the tolerance of test_schedules.py), the
products really ran batched (a process-wide counter) or really did not (batching off), and
outside a pipeline step (plain backward) nothing is deferred. The default, "auto", batches
(1024 rows) on ranks without W actions and not on the zero-bubble schedules' ranks. Also the
setting's contract.
"""
import copy

import numpy as np
import pytest

import pipec
from pipec import _C, nn
from pipec.pipelining import (LocalPipeline, SplitPoint, get_weight_grad_batching, pipeline,
                              set_weight_grad_batching)

from model_registry import MultiMLP

D = 16
BATCH = 16
N_MB = 8
SCHEDULES = ["GPipe", "1F1B", "Interleaved1F1B", "LoopedBFS", "InterleavedZeroBubble",
             "ZBVZeroBubble", "DualPipeV"]
MULTI = set(SCHEDULES) - {"GPipe", "1F1B"}
WITH_W = {"InterleavedZeroBubble", "ZBVZeroBubble", "DualPipeV"}  # separate W actions


@pytest.fixture
def rows_setting():
    before = get_weight_grad_batching()
    yield
    set_weight_grad_batching(before)


def _device(kind):
    if kind == "cuda" and not pipec.cuda.is_available():
        pytest.skip("no CUDA device")
    return "cpu" if kind == "cpu" else "cuda:0"


def _reference(base, xs, ys, loss_fn):
    """Per-microbatch backward of the unpipelined model over the steps: summed gradients."""
    ref = copy.deepcopy(base)
    for x, y in zip(xs, ys):
        for m in range(N_MB):
            sl = slice(m * BATCH // N_MB, (m + 1) * BATCH // N_MB)
            loss_fn(ref(x[sl]), y[sl]).backward()
    return {k: p.grad.float().cpu().numpy().astype(np.float64)
            for k, p in ref.named_parameters()}


@pytest.mark.parametrize("kind", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("rows", [0, 4, 1024, "auto"])
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_batched_weight_grads_match_reference(schedule, rows, kind, rows_setting):
    dev = _device(kind)
    pipec.manual_seed(1)
    base = MultiMLP(D, n_layers=4).to(dev)
    xs = [pipec.randn(BATCH, D).to(dev) for _ in range(2)]
    ys = [pipec.randn(BATCH, D).to(dev) for _ in range(2)]
    loss_fn = nn.MSELoss(reduction="sum")
    expected = _reference(base, xs, ys, loss_fn)

    set_weight_grad_batching(rows)
    model = copy.deepcopy(base)
    per = 1 if schedule in MULTI else 2  # layers per stage: 4 stages or 2
    pipe = pipeline(model, (xs[0][:BATCH // N_MB],),
                    split_spec={f"layers.{i}": SplitPoint.BEGINNING for i in range(per, 4, per)})
    lp = LocalPipeline(pipe, schedule, N_MB, [dev, dev], loss_fn=loss_fn, scale_grads=False)
    before = _C._wgrad_batched_count()
    for x, y in zip(xs, ys):  # no zero_grad: the second step adds to the first
        lp.step(x, target=y)
    batched = _C._wgrad_batched_count() - before
    if rows == 0 or (rows == "auto" and schedule in WITH_W):
        assert batched == 0  # auto: off where the schedule places W actions itself
    else:
        # every Linear weight (8) of every microbatch (8) of both steps ran in a batch
        assert batched == 8 * N_MB * 2
    for k, p in model.named_parameters():
        got = p.grad.float().cpu().numpy().astype(np.float64)
        scale = float(np.abs(expected[k]).max())
        np.testing.assert_allclose(got, expected[k], rtol=1e-5, atol=4e-5 * min(1.0, scale),
                                   err_msg=f"{schedule} rows={rows}: {k}")


def test_plain_backward_is_not_deferred(rows_setting):
    """Outside a pipeline step there is no batching window: .grad is complete after each
    backward, and nothing counts as batched."""
    set_weight_grad_batching(1024)
    lin = nn.Linear(4, 3)
    x = pipec.randn(2, 4)
    before = _C._wgrad_batched_count()
    lin(x).sum().backward()
    g1 = lin.weight.grad.numpy().copy()
    lin(x).sum().backward()
    np.testing.assert_allclose(lin.weight.grad.numpy(), 2 * g1, rtol=1e-6)
    assert _C._wgrad_batched_count() == before


def test_setting_contract(rows_setting):
    prev = set_weight_grad_batching(7)
    assert prev == "auto" or isinstance(prev, int)
    assert get_weight_grad_batching() == 7
    assert set_weight_grad_batching(0) == 7
    assert get_weight_grad_batching() == 0
    with pytest.raises(ValueError, match=">= 0"):
        set_weight_grad_batching(-1)
    with pytest.raises(TypeError, match="int"):
        set_weight_grad_batching(2.5)
    with pytest.raises(TypeError, match="int"):
        set_weight_grad_batching(True)
    with pytest.raises(TypeError, match="'auto'"):
        set_weight_grad_batching("on")
    assert get_weight_grad_batching() == 0
    assert set_weight_grad_batching("auto") == 0
    assert get_weight_grad_batching() == "auto"
    assert set_weight_grad_batching(3) == "auto"


def test_default_comes_from_the_environment():
    import subprocess
    import sys
    code = ("import pipec.pipelining as p; print(p.get_weight_grad_batching())")
    # unreadable values turn batching off (the conservative reading)
    for env_value, want in (("256", "256"), ("0", "0"), (None, "auto"), ("", "auto"),
                            ("auto", "auto"), (" AUTO ", "auto"), (" 64 ", "64"),
                            ("off", "0"), ("false", "0"), ("-1", "0"), ("1e3", "0"),
                            ("junk", "0")):
        env = dict(__import__("os").environ)
        env.pop("PIPEC_WGRAD_BATCH_ROWS", None)
        if env_value is not None:
            env["PIPEC_WGRAD_BATCH_ROWS"] = env_value
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, check=True).stdout.strip()
        assert out == want, (env_value, out)



def test_custom_functions_see_complete_grads(rows_setting):
    """A schedule's custom action function may read .grad: the deferred products run before
    it is called. Here a custom F handler (Interleaved1F1B, 4 stages on 2 ranks) checks,
    before running the built-in F, that its stage's weight gradients hold exactly the
    microbatches whose built-in B came earlier in the rank's order; those B's deferred their
    products, so without the flush before the callback they would still be missing."""
    from pipec.pipelining import PipelineStage, ScheduleInterleaved1F1B
    set_weight_grad_batching(1024)
    n_stages, n_mb, batch = 4, 4, 8
    pipec.manual_seed(5)
    model = MultiMLP(D, n_layers=n_stages)
    ref = copy.deepcopy(model)
    x, y = pipec.randn(batch, D), pipec.randn(batch, D)
    loss_fn = nn.MSELoss(reduction="sum")
    per_mb = []  # per microbatch: {name: its own gradient}
    for xm, ym in zip(pipec.tensor_split(x, n_mb), pipec.tensor_split(y, n_mb)):
        ref.zero_grad()
        loss_fn(ref(xm), ym).backward()
        per_mb.append({k: p.grad.numpy().astype(np.float64).copy()
                       for k, p in ref.named_parameters()})
    stages = [PipelineStage(model.layers[i], i, n_stages, "cpu") for i in range(n_stages)]
    sched = ScheduleInterleaved1F1B(stages, n_mb, loss_fn=loss_fn, scale_grads=False)
    seen_grads = []

    def on_forward(action, ctx):
        s = action.stage_index
        order = [str(a) for a in sched.pipeline_order[ctx.rank] if a is not None]
        earlier = order[:order.index(str(action))]
        done = [int(a.split("B")[1]) for a in earlier if a.startswith(f"{s}B")]
        for name, p in model.layers[s].named_parameters():
            key = f"layers.{s}.{name}"
            if not done:
                assert p.grad is None, key
                continue
            want = sum(per_mb[k][key] for k in done)
            np.testing.assert_allclose(p.grad.numpy(), want, rtol=1e-5, atol=1e-6,
                                       err_msg=f"{key} before {action}")
            seen_grads.append(key)
        ctx.run_builtin(action)

    sched.register_custom_function("F", on_forward)
    deferred = _C._wgrad_deferred_count()
    sched.step(x, target=y)
    assert seen_grads, "no forward came after a backward of its stage: nothing was checked"
    assert _C._wgrad_deferred_count() > deferred, "the built-in B's deferred nothing"
    for k, p in model.named_parameters():
        np.testing.assert_allclose(p.grad.numpy(), sum(g[k] for g in per_mb), rtol=1e-5,
                                   atol=1e-6, err_msg=k)



class _Lin(nn.Module):
    def __init__(self):
        super().__init__()
        self.l0 = nn.Linear(D, D)

    def forward(self, x):
        return self.l0(x)


class _AddmmOnInput(nn.Module):
    """The stage input is addmm's first matrix: its gradient takes the same GEMM path as a
    weight gradient, but the runtime reads it back right after the backward and sends it to
    the previous stage, so it must never be deferred."""

    def __init__(self):
        super().__init__()
        self.W = nn.Parameter(pipec.randn(D, D) * 0.25)
        self.b = nn.Parameter(pipec.randn(D))

    def forward(self, x):
        return pipec.addmm(self.b, x, self.W)


@pytest.mark.parametrize("dw", [False, True], ids=["plain", "dw_builder"])
@pytest.mark.parametrize("schedule", ["GPipe", "1F1B"])
def test_stage_input_gradients_are_not_deferred(schedule, dw, rows_setting):
    pipec.manual_seed(0)
    s0, s1 = _Lin(), _AddmmOnInput()
    x, y = pipec.randn(BATCH, D), pipec.randn(BATCH, D)
    loss_fn = nn.MSELoss(reduction="sum")
    r0, r1 = copy.deepcopy(s0), copy.deepcopy(s1)
    n_mb = 4
    for m in range(n_mb):
        sl = slice(m * BATCH // n_mb, (m + 1) * BATCH // n_mb)
        loss_fn(r1(r0(x[sl])), y[sl]).backward()
    set_weight_grad_batching(1024)
    m0, m1 = copy.deepcopy(s0), copy.deepcopy(s1)
    extra = {"dw_builders": {1: lambda: (lambda: None)}} if dw else {}
    lp = LocalPipeline([m0, m1], schedule, n_mb, ["cpu", "cpu"], loss_fn=loss_fn,
                       scale_grads=False, **extra)
    deferred = _C._wgrad_deferred_count()
    lp.step(x, target=y)
    assert _C._wgrad_deferred_count() > deferred  # the weights' products still were
    for (k, p), (_, q) in zip(list(m0.named_parameters()) + list(m1.named_parameters()),
                              list(r0.named_parameters()) + list(r1.named_parameters())):
        assert p.grad is not None, f"{k}: no gradient reached it"
        want = q.grad.numpy()
        np.testing.assert_allclose(p.grad.numpy(), want, rtol=1e-5,
                                   atol=4e-5 * min(1.0, float(np.abs(want).max())), err_msg=k)



def test_operand_modified_in_place_before_its_batch_is_an_error(rows_setting):
    """Stage 0's Linear keeps its input, a view of the caller's batch, for its deferred
    product. A dW runner (dw_builders; it runs with batching paused, after each backward of
    stage 0) that modifies that batch in place after the last backward, before the flush,
    would change the gradient silently; pipec raises instead. With batching off the products
    ran inside the backwards: no error."""
    pipec.manual_seed(2)
    x, y = pipec.randn(BATCH, D), pipec.randn(BATCH, D)
    base0, base1 = _Lin(), _Lin()
    n_mb = 4
    calls = []

    def build_runner():
        def runner():
            calls.append(1)
            if len(calls) == n_mb:  # stage 0's last backward is done, its flush is not
                x.mul_(1.0)  # same values, new version
        return runner

    for rows in (0, 1024):
        set_weight_grad_batching(rows)
        calls.clear()
        lp = LocalPipeline([copy.deepcopy(base0), copy.deepcopy(base1)], "1F1B", n_mb,
                           ["cpu", "cpu"], loss_fn=nn.MSELoss(reduction="sum"),
                           scale_grads=False, dw_builders={0: build_runner})
        if rows == 0:
            lp.step(x, target=y)
        else:
            with pytest.raises(Exception, match="modified in place before that gradient"):
                lp.step(x, target=y)
        assert len(calls) == n_mb


@pytest.mark.parametrize("rows", [0, 1024])
def test_end_of_step_flush_is_in_the_timeline(rows, rows_setting):
    """The products left for the step's end run in one WGRAD_FLUSH event per rank, after the
    rank's actions, so busy times include them; charts of actions leave it out."""
    set_weight_grad_batching(rows)
    pipec.manual_seed(4)
    model = MultiMLP(D, n_layers=4)
    x, y = pipec.randn(BATCH, D), pipec.randn(BATCH, D)
    pipe = pipeline(model, (x[:BATCH // N_MB],), split_spec={"layers.2": SplitPoint.BEGINNING})
    lp = LocalPipeline(pipe, "1F1B", N_MB, ["cpu", "cpu"], loss_fn=nn.MSELoss(reduction="sum"),
                       scale_grads=False)
    lp.step(x, target=y, record_timeline=True)
    events = lp.timeline()
    flushes = [e for e in events if e[1] == "WGRAD_FLUSH"]
    if rows == 0:
        assert flushes == []
        return
    assert sorted(e[0] for e in flushes) == [0, 1]
    for rank, _, start, end in flushes:
        last = max(e[3] for e in events if e[0] == rank and e[1] != "WGRAD_FLUSH")
        assert start >= last and end >= start
    from pipec import viz
    assert all(a != "WGRAD_FLUSH" for _, a, _, _ in viz._compute_only(viz._normalize(events)[0]))


class _Recompute(pipec.autograd.Function):
    """x @ w whose backward recomputes the product on detached leaves and runs its own
    backward (the reentrant checkpoint pattern): it reads the leaves' .grad at once."""

    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return pipec.matmul(x, w)

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        xd, wd = x.detach().requires_grad_(), w.detach().requires_grad_()
        with pipec.autograd.enable_grad():
            y = pipec.matmul(xd, wd)
        pipec.autograd.backward(y, g)
        return xd.grad, wd.grad


class _RecomputeBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(pipec.randn(D, D) * 0.1)

    def forward(self, x):
        return pipec.relu(_Recompute.apply(x, self.w))


@pytest.mark.parametrize("rows", [0, 1024, "auto"])
def test_custom_backward_running_its_own_backward(rows, rows_setting):
    """A custom Function's backward runs with batching paused: the backward it runs itself
    finds its leaves' .grad complete (deferred, they were None and every gradient of the
    step was lost)."""
    pipec.manual_seed(5)
    base = [_RecomputeBlock(), _RecomputeBlock()]
    x, y = pipec.randn(32, D), pipec.randn(32, D)
    loss_fn = nn.MSELoss(reduction="sum")
    ref = copy.deepcopy(base)
    for xm, ym in zip(pipec.tensor_split(x, 4, 0), pipec.tensor_split(y, 4, 0)):
        loss_fn(ref[1](ref[0](xm)), ym).backward()
    set_weight_grad_batching(rows)
    mods = copy.deepcopy(base)
    LocalPipeline(mods, "1F1B", 4, ["cpu", "cpu"], loss_fn=loss_fn,
                  scale_grads=False).step(x, target=y)
    for m, r in zip(mods, ref):
        assert m.w.grad is not None, f"rows={rows}: gradient lost"
        np.testing.assert_allclose(m.w.grad.numpy(), r.w.grad.numpy(), rtol=1e-5, atol=1e-6)

"""Schedule numerics: every schedule class run end to end against the unpipelined model.

What runs: LocalPipeline (one host thread per rank, activations and gradients through the C
runtime's in-process mailboxes) and the schedule classes used as in torch (all stages of a
pipeline in this process), for the seven schedules GPipe, 1F1B, Interleaved1F1B, LoopedBFS,
InterleavedZeroBubble (ZB1P), ZBVZeroBubble and DualPipeV.

Reference (torch's test_schedule_multiproc.py semantics): a deep copy of the model taken
before pipelining runs each microbatch (``tensor_split`` of the batch along dim 0, as the
schedule splits it) forward, computes that microbatch's loss and runs its backward;
gradients accumulate over the microbatches and over steps. With ``scale_grads=True`` (the
default, used with mean losses) the pipelined gradients of one step are the reference's
divided by ``n_microbatches``; with ``scale_grads=False`` (sum losses) they are equal.

Checked for every schedule, with MultiMLP over 2 and 4 ranks (1 stage per rank for GPipe and
1F1B, 2 per rank for the others), n_microbatches 1 (where the schedule allows it), 4 and 8,
and losses MSE sum, MSE mean and cross-entropy (int64 class targets; the model's last dim
is the classes): the merged output, every microbatch's loss and every parameter gradient,
over 3 consecutive steps without zero_grad (fresh inputs each step, gradients must be the
running sum; torch re-divides the *accumulated* gradient every step, which torchtitan#1733
reports as a bug: pipec must not). Also ExampleCode (a non-grad constant crossing a stage
boundary) and ModelWithKwargs (a keyword input) through pipeline(), hand-written stages
(PipelineStage over plain modules, traced on the first step), MultiMLPWithDw with
dw_builders running compute_dW() (InterleavedZeroBubble as the issue asks, the other
schedules too), eval then train, eval under no_grad, return_outputs=False, and the error
contract (missing target, too-small batches, step under no_grad, construction-time
constraint violations, get_schedule_class).

Tolerance: rtol 1e-5 and atol 4e-5 elementwise (torch's values for these tests), the atol
shrunk in proportion for tensors whose largest magnitude is below 1 (atol = 4e-5 *
min(1, max|ref|)): mean losses over an 8-stage MLP give early-layer gradients of 1e-5..1e-3,
which a fixed 4e-5 would not check at all. Forward values replay the same kernels on the
same microbatch shapes as the reference, so outputs and losses agree to the bit; gradients
differ only in the order in which the microbatches' contributions are summed (LoopedBFS
runs backwards in descending microbatch order, zero-bubble schedules add W work in their own
order, steps add to earlier steps' sums): float32 reassociation of at most 8 terms per
step. Measured worst case over this file: 5.6e-7 of the tensor's largest magnitude, so no
case needs a looser tolerance, interleaved orders included. ExampleCode/ModelWithKwargs'
randn matrices are scaled by 1/sqrt(d) and MultiMLPWithDw is re-initialised (see
new_multimlp_with_dw) so that activations and gradients stay O(1e-3..10).

Keyword inputs: step(x, y=y) feeds the keyword tensors after the positional ones, in the
order given, which must be the order of pipeline()'s mb_kwargs (Pipe records no names).

GPU: the same numerics with devices ["cuda:0"] * ranks (``@pytest.mark.cuda``) and
["cuda:0", "cuda:1"] (``@pytest.mark.multigpu``); the reference runs on cuda:0. They skip
when no device is present.
"""
import copy

import numpy as np
import pytest

import pipec
from pipec.pipelining import (LocalPipeline, PipelineStage, Schedule1F1B, ScheduleDualPipeV,
                              ScheduleGPipe, ScheduleInterleaved1F1B,
                              ScheduleInterleavedZeroBubble, ScheduleLoopedBFS,
                              ScheduleZBVZeroBubble, get_schedule_class, pipeline)
from pipec.pipelining._runtime import PipelineScheduleMulti, PipelineScheduleSingle

from model_registry import ExampleCode, ModelWithKwargs, MultiMLP, MultiMLPWithDw

RTOL = 1e-5
ATOL = 4e-5

D_HID = 16
BATCH = 16
N_STEPS = 3

SCHEDULES = ["GPipe", "1F1B", "Interleaved1F1B", "LoopedBFS", "InterleavedZeroBubble",
             "ZBVZeroBubble", "DualPipeV"]
SINGLE = {"GPipe", "1F1B"}
V_SCHEDULES = {"ZBVZeroBubble", "DualPipeV"}
CLASSES = {"GPipe": ScheduleGPipe, "1F1B": Schedule1F1B,
           "Interleaved1F1B": ScheduleInterleaved1F1B, "LoopedBFS": ScheduleLoopedBFS,
           "InterleavedZeroBubble": ScheduleInterleavedZeroBubble,
           "ZBVZeroBubble": ScheduleZBVZeroBubble, "DualPipeV": ScheduleDualPipeV}


def stages_per_rank(schedule):
    return 1 if schedule in SINGLE else 2


def allowed(schedule, ranks, n):
    """torch's construction-time constraints (spec section 4)."""
    n_stages = ranks * stages_per_rank(schedule)
    if schedule in ("1F1B", "DualPipeV"):
        return n >= n_stages
    if schedule in ("Interleaved1F1B", "InterleavedZeroBubble"):
        rounds = max(1, n // ranks)
        return n % rounds == 0
    return True


# ---- devices ----

def _devices(kind, ranks):
    if kind == "cpu":
        return ["cpu"] * ranks
    if kind == "cuda":
        return ["cuda:0"] * ranks
    assert kind == "multigpu" and ranks == 2
    return ["cuda:0", "cuda:1"]


def _ref_device(kind):
    return "cpu" if kind == "cpu" else "cuda:0"


DEVICE_KINDS = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
# for tests over 2 ranks: also one rank per GPU
DEVICE_KINDS_2 = DEVICE_KINDS + [pytest.param("multigpu", marks=pytest.mark.multigpu)]


def _configs(kinds=("cpu", "cuda", "multigpu")):
    """(schedule, ranks, n, device kind) for every allowed combination."""
    out = []
    for kind in kinds:
        for s in SCHEDULES:
            for ranks in ((2, 4) if kind != "multigpu" else (2,)):
                for n in (1, 4, 8):
                    if not allowed(s, ranks, n):
                        continue
                    marks = {"cpu": (), "cuda": (pytest.mark.cuda,),
                             "multigpu": (pytest.mark.multigpu,)}[kind]
                    out.append(pytest.param(s, ranks, n, kind, marks=marks,
                                            id=f"{s}-r{ranks}-n{n}-{kind}"))
    return out


# ---- losses ----

def mse_sum(out, target):
    return pipec.nn.functional.mse_loss(out, target, reduction="sum")


def mse_mean(out, target):
    return pipec.nn.functional.mse_loss(out, target)


def cross_entropy(out, target):
    return pipec.nn.functional.cross_entropy(out, target)


# name -> (loss_fn, scale_grads, target kind)
LOSSES = {"mse_sum": (mse_sum, False, "float"), "mse_mean": (mse_mean, True, "float"),
          "cross_entropy": (cross_entropy, True, "class")}


def make_target(kind, batch, device):
    if kind == "float":
        return pipec.randn(batch, D_HID).to(device)
    idx = np.random.default_rng().integers(0, D_HID, size=batch)
    return pipec.tensor(idx, dtype=pipec.int64).to(device)


# ---- comparisons ----

def np_(t):
    return t.detach().cpu().numpy().astype(np.float64)


def _atol(expected):
    """ATOL for tensors of magnitude >= 1, proportionally less for smaller ones (a gradient
    of scale 1e-3 would otherwise be compared at 4% of its size)."""
    scale = float(np.abs(expected).max()) if expected.size else 0.0
    return ATOL * min(1.0, scale)


def check_close(a, e, what):
    """a, e: NumPy arrays (float64)."""
    assert a.shape == e.shape, f"{what}: shape {a.shape} != {e.shape}"
    np.testing.assert_allclose(a, e, rtol=RTOL, atol=_atol(e), err_msg=what)


def assert_close(actual, expected, what):
    assert isinstance(actual, pipec.Tensor), f"{what}: got {type(actual).__name__}"
    check_close(np_(actual), np_(expected), what)


def stage_grads(modules):
    """{parameter name: gradient} over stage modules. A parameter copied into several stages
    (tied weights) must have the same gradient in every copy, the sum over copies (pipec sums
    them after each step); names of parameters without a gradient map to None."""
    out = {}
    for mod, prefix in modules:
        for name, p in mod.named_parameters():
            key = prefix + name
            g = None if p.grad is None else np_(p.grad)
            if key in out:
                prev = out[key]
                assert (prev is None) == (g is None), f"{key}: a copy without a gradient"
                if g is not None:
                    np.testing.assert_allclose(g, prev, rtol=1e-6, atol=1e-7,
                                               err_msg=f"tied copies of {key} differ")
            else:
                out[key] = g
    return out


def assert_grads(pipe_modules, ref_model, scale, what):
    """Every parameter gradient of the pipelined stages equals the reference's * scale;
    every reference parameter that has a gradient is present in some stage."""
    got = stage_grads(pipe_modules)
    ref = {name: p.grad for name, p in ref_model.named_parameters()}
    with_grad = {k for k, v in ref.items() if v is not None}
    missing = with_grad - set(got)
    assert not missing, f"{what}: parameters with reference gradients not in any stage: {missing}"
    for name, g in got.items():
        assert name in ref, f"{what}: stage parameter {name} is not a model parameter"
        r = ref[name]
        if r is None:
            assert g is None or not np.any(g), f"{what}: {name} has a gradient, reference none"
            continue
        assert g is not None, f"{what}: {name} has no gradient"
        check_close(g, np_(r) * scale, f"{what}: grad {name}")


def pipe_modules(pipe):
    return [(pipe.get_stage_module(i), "") for i in range(pipe.num_stages)]


def step_matches_reference(lp, pipe, ref, x, target, n, loss_fn, what):
    """One LocalPipeline step (mse-like loss, scale_grads off) against the unpipelined
    reference: the output, the per-microbatch losses and every gradient."""
    losses = []
    out = lp.step(x, target=target, losses=losses)
    ref_out, ref_losses = ref_step(ref, [x], target, n, loss_fn)
    assert_close(out, ref_out, f"{what}: output")
    assert_losses(losses, ref_losses, what)
    assert_grads(pipe_modules(pipe), ref, 1.0, what)


def ref_step(ref_model, args_list, target, n, loss_fn, kwargs=None):
    """The unpipelined reference of one step: per microbatch forward, loss, backward.
    Returns (merged output, [loss per microbatch])."""
    arg_mbs = [pipec.tensor_split(a, n, 0) for a in args_list]
    kw_mbs = {k: pipec.tensor_split(v, n, 0) for k, v in (kwargs or {}).items()}
    tgt_mbs = pipec.tensor_split(target, n, 0) if target is not None else None
    outs, losses = [], []
    for m in range(n):
        out = ref_model(*[a[m] for a in arg_mbs], **{k: v[m] for k, v in kw_mbs.items()})
        outs.append(out.detach())
        if loss_fn is not None:
            loss = loss_fn(out, tgt_mbs[m])
            loss.backward()
            losses.append(loss.detach())
    return pipec.cat(outs, 0), losses


def assert_losses(got, ref, what):
    assert isinstance(got, list) and len(got) == len(ref), \
        f"{what}: {len(got) if isinstance(got, list) else got!r} losses, expected {len(ref)}"
    for m, (g, r) in enumerate(zip(got, ref)):
        assert_close(g, r, f"{what}: loss of microbatch {m}")


def new_multimlp(n_stages, device="cpu"):
    pipec.manual_seed(1234)
    return MultiMLP(D_HID, n_layers=n_stages).to(device)


def trace(model, example, **kw):
    return pipeline(model, mb_args=example, split_spec=getattr(model, "split_spec", None), **kw)


# ---- the main numerics: every schedule, MultiMLP via pipeline() ----

@pytest.mark.parametrize("loss_name", list(LOSSES))
@pytest.mark.parametrize("schedule,ranks,n,kind", _configs())
def test_multimlp_numerics(schedule, ranks, n, kind, loss_name):
    loss_fn, scale_grads, tkind = LOSSES[loss_name]
    n_stages = ranks * stages_per_rank(schedule)
    rdev = _ref_device(kind)
    model = new_multimlp(n_stages, rdev)
    ref = copy.deepcopy(model)
    x0 = pipec.randn(BATCH, D_HID).to(rdev)
    pipe = trace(model, (pipec.tensor_split(x0, n, 0)[0],))
    assert pipe.num_stages == n_stages
    lp = LocalPipeline(pipe, schedule, n, _devices(kind, ranks), loss_fn=loss_fn,
                       scale_grads=scale_grads)
    scale = 1.0 / n if scale_grads else 1.0
    for step in range(N_STEPS):  # no zero_grad: gradients accumulate over the steps
        x = pipec.randn(BATCH, D_HID).to(rdev)
        target = make_target(tkind, BATCH, rdev)
        losses = []
        out = lp.step(x, target=target, losses=losses)
        ref_out, ref_losses = ref_step(ref, [x], target, n, loss_fn)
        what = f"{schedule} ranks={ranks} n={n} {loss_name} step {step}"
        assert_close(out, ref_out, f"{what}: output")
        assert_losses(losses, ref_losses, what)
        assert_grads(pipe_modules(pipe), ref, scale, what)


# ---- hand-written stages (PipelineStage over plain modules) ----

@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("kind", DEVICE_KINDS_2)
def test_manual_stages_numerics(schedule, kind):
    ranks, n = 2, 4
    n_stages = ranks * stages_per_rank(schedule)
    rdev = _ref_device(kind)
    model = new_multimlp(n_stages, rdev)
    ref = copy.deepcopy(model)
    lp = LocalPipeline(list(model.layers), schedule, n, _devices(kind, ranks), loss_fn=mse_sum,
                       scale_grads=False)
    mods = [(model.layers[i], f"layers.{i}.") for i in range(n_stages)]
    for step in range(2):
        x = pipec.randn(BATCH, D_HID).to(rdev)
        target = pipec.randn(BATCH, D_HID).to(rdev)
        losses = []
        out = lp.step(x, target=target, losses=losses)
        ref_out, ref_losses = ref_step(ref, [x], target, n, mse_sum)
        what = f"manual {schedule} step {step}"
        assert_close(out, ref_out, f"{what}: output")
        assert_losses(losses, ref_losses, what)
        assert_grads(mods, ref, 1.0, what)


# ---- ExampleCode and ModelWithKwargs through pipeline() ----

def new_example_code(n_stages, device):
    pipec.manual_seed(99)
    model = ExampleCode(D_HID, splits=n_stages)
    with pipec.no_grad():  # randn matrices: keep activations O(1) (see the module docstring)
        model.mm_param0.mul_(D_HID ** -0.5)
        model.mm_param1.mul_(D_HID ** -0.5)
    return model.to(device)


def new_model_with_kwargs(n_stages, device):
    pipec.manual_seed(7)
    model = ModelWithKwargs(D_HID, splits=n_stages)
    with pipec.no_grad():
        model.mm_param0.mul_(D_HID ** -0.5)
        model.mm_param1.mul_(D_HID ** -0.5)
    return model.to(device)


def _zoo_configs(kinds=("cpu", "cuda")):
    out = []
    for kind in kinds:
        for s in SCHEDULES:
            for ranks in (2, 4):
                n = 8 if s == "DualPipeV" and ranks == 4 else 4
                marks = (pytest.mark.cuda,) if kind == "cuda" else ()
                out.append(pytest.param(s, ranks, n, kind, marks=marks,
                                        id=f"{s}-r{ranks}-n{n}-{kind}"))
    out.append(pytest.param("1F1B", 2, 4, "multigpu", marks=(pytest.mark.multigpu,),
                            id="1F1B-r2-n4-multigpu"))
    out.append(pytest.param("InterleavedZeroBubble", 2, 4, "multigpu",
                            marks=(pytest.mark.multigpu,), id="ZB1P-r2-n4-multigpu"))
    return out


@pytest.mark.parametrize("schedule,ranks,n,kind", _zoo_configs())
def test_example_code_numerics(schedule, ranks, n, kind):
    n_stages = ranks * stages_per_rank(schedule)
    rdev = _ref_device(kind)
    model = new_example_code(n_stages, rdev)
    ref = copy.deepcopy(model)
    x0 = pipec.randn(BATCH, D_HID).to(rdev)
    pipe = trace(model, (pipec.tensor_split(x0, n, 0)[0],))
    assert pipe.num_stages == n_stages
    lp = LocalPipeline(pipe, schedule, n, _devices(kind, ranks), loss_fn=mse_mean)
    for step in range(2):
        x = pipec.randn(BATCH, D_HID).to(rdev)
        target = pipec.randn(BATCH, D_HID).to(rdev)
        losses = []
        out = lp.step(x, target=target, losses=losses)
        ref_out, ref_losses = ref_step(ref, [x], target, n, mse_mean)
        what = f"ExampleCode {schedule} ranks={ranks} step {step}"
        assert_close(out, ref_out, f"{what}: output")
        assert_losses(losses, ref_losses, what)
        assert_grads(pipe_modules(pipe), ref, 1.0 / n, what)


@pytest.mark.parametrize("as_keyword", [True, False], ids=["y_keyword", "y_positional"])
@pytest.mark.parametrize("schedule,ranks,n,kind", _zoo_configs())
def test_model_with_kwargs_numerics(schedule, ranks, n, kind, as_keyword):
    """ModelWithKwargs traced with mb_kwargs={"y": ...}; step() gets y as a keyword (torch's
    step(x, y=y)) or positionally after x (the traced input order)."""
    n_stages = ranks * stages_per_rank(schedule)
    rdev = _ref_device(kind)
    model = new_model_with_kwargs(n_stages, rdev)
    ref = copy.deepcopy(model)
    x0 = pipec.randn(BATCH, D_HID).to(rdev)
    y0 = pipec.randn(BATCH, D_HID).to(rdev)
    pipe = pipeline(model, mb_args=(pipec.tensor_split(x0, n, 0)[0],),
                    mb_kwargs={"y": pipec.tensor_split(y0, n, 0)[0]})
    assert pipe.num_stages == n_stages
    lp = LocalPipeline(pipe, schedule, n, _devices(kind, ranks), loss_fn=mse_sum,
                       scale_grads=False)
    for step in range(2):
        x = pipec.randn(BATCH, D_HID).to(rdev)
        y = pipec.randn(BATCH, D_HID).to(rdev)
        target = pipec.randn(BATCH, D_HID).to(rdev)
        losses = []
        if as_keyword:
            out = lp.step(x, y=y, target=target, losses=losses)
        else:
            out = lp.step(x, y, target=target, losses=losses)
        ref_out, ref_losses = ref_step(ref, [x], target, n, mse_sum, kwargs={"y": y})
        what = f"ModelWithKwargs {schedule} ranks={ranks} step {step}"
        assert_close(out, ref_out, f"{what}: output")
        assert_losses(losses, ref_losses, what)
        assert_grads(pipe_modules(pipe), ref, 1.0, what)


# ---- custom dW: MultiMLPWithDw with dw_builders ----

def _dw_configs():
    out = []
    for kind in ("cpu", "cuda", "multigpu"):
        marks = {"cpu": (), "cuda": (pytest.mark.cuda,),
                 "multigpu": (pytest.mark.multigpu,)}[kind]
        scheds = SCHEDULES if kind == "cpu" else ["InterleavedZeroBubble", "ZBVZeroBubble"]
        for s in scheds:
            for ranks in ((2, 4) if kind != "multigpu" else (2,)):
                n = 8 if s == "DualPipeV" and ranks == 4 else 4
                out.append(pytest.param(s, ranks, n, kind, marks=marks,
                                        id=f"{s}-r{ranks}-n{n}-{kind}"))
        if kind == "cpu":
            out.append(pytest.param("InterleavedZeroBubble", 2, 2, "cpu", id="ZB1P-r2-n2-cpu"))
            out.append(pytest.param("InterleavedZeroBubble", 4, 8, "cpu", id="ZB1P-r4-n8-cpu"))
    return out


def _unit_gain(model, device):
    """Every parameter re-initialised with U(-b, b), b = sqrt(3 / d) (unit variance gain per
    linear layer), then moved to device."""
    b = (3.0 / D_HID) ** 0.5
    for p in model.parameters():
        pipec.nn.init.uniform_(p, -b, b)
    return model.to(device)


def new_multimlp_with_dw(n_stages, device):
    """The zoo's U(-0.001, 0.001) initialisation makes the first stages' gradients of an
    8-stage model underflow (~1e-43), which any tolerance accepts: unit gain instead."""
    pipec.manual_seed(4321)
    return _unit_gain(MultiMLPWithDw(D_HID, n_layers=n_stages), device)


@pytest.mark.parametrize("schedule,ranks,n,kind", _dw_configs())
def test_custom_dw_numerics(schedule, ranks, n, kind):
    """torch's test_schedule_with_weight_update_mlp_e2e: the reference is copied before
    toggle() (full custom backward); the pipelined model runs CustomLinearDx (dX only) and
    every stage's dw_builder returns its layer's compute_dW, which must run once per
    microbatch and stage, in the stage's backward order (compute_dW pops FIFO)."""
    n_stages = ranks * stages_per_rank(schedule)
    rdev = _ref_device(kind)
    model = new_multimlp_with_dw(n_stages, rdev)
    ref = copy.deepcopy(model)
    model.toggle()
    x0 = pipec.randn(BATCH, D_HID).to(rdev)
    pipe = trace(model, (pipec.tensor_split(x0, n, 0)[0],))
    assert pipe.num_stages == n_stages
    calls = [0] * n_stages

    def builder(i):
        layer = model.layers[i]

        def runner():
            calls[i] += 1
            layer.compute_dW()
        return lambda: runner

    lp = LocalPipeline(pipe, schedule, n, _devices(kind, ranks), loss_fn=mse_mean,
                       dw_builders={i: builder(i) for i in range(n_stages)})
    for step in range(N_STEPS):
        x = pipec.randn(BATCH, D_HID).to(rdev)
        target = pipec.randn(BATCH, D_HID).to(rdev)
        losses = []
        out = lp.step(x, target=target, losses=losses)
        ref_out, ref_losses = ref_step(ref, [x], target, n, mse_mean)
        what = f"MultiMLPWithDw {schedule} ranks={ranks} n={n} step {step}"
        assert calls == [n * (step + 1)] * n_stages, f"{what}: dW runner calls {calls}"
        for i, layer in enumerate(model.layers):
            left = {k: len(v) for k, v in layer.cached_context.items() if v}
            assert not left, f"{what}: layer {i} has unconsumed dW context {left}"
        assert_close(out, ref_out, f"{what}: output")
        assert_losses(losses, ref_losses, what)
        assert_grads(pipe_modules(pipe), ref, 1.0 / n, what)


# ---- the schedule classes used directly (torch's API, all stages in this process) ----

@pytest.mark.parametrize("n", [1, 2, 4])
@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("frontend", ["tracer", "manual"])
@pytest.mark.parametrize("kind", DEVICE_KINDS)
def test_schedule_class_in_process(schedule, n, frontend, kind):
    """torch's test_schedule_with_single_stage / test_grad_with_v_schedule: a single-stage
    schedule over a 1-stage pipeline; a multi-stage one over both stages of a 2-stage
    pipeline held by this one rank. Cross-entropy (mean), default scale_grads, 2 steps with
    zero_grad and 1 without."""
    n_stages = 1 if schedule in SINGLE else 2
    if schedule == "DualPipeV" and n < n_stages:
        pytest.skip("DualPipeV needs n_microbatches >= stages (tested in the error tests)")
    dev = _ref_device(kind)
    model = new_multimlp(n_stages, dev)
    ref = copy.deepcopy(model)
    x0 = pipec.randn(BATCH, D_HID).to(dev)
    if frontend == "tracer":
        pipe = trace(model, (pipec.tensor_split(x0, n, 0)[0],))
        stages = [pipe.build_stage(i, dev) for i in range(n_stages)]
        mods = pipe_modules(pipe)
    else:
        stages = [PipelineStage(model.layers[i], i, n_stages, dev) for i in range(n_stages)]
        mods = [(model.layers[i], f"layers.{i}.") for i in range(n_stages)]
    cls = CLASSES[schedule]
    sched = cls(stages[0] if schedule in SINGLE else stages, n, loss_fn=cross_entropy)
    for step in range(3):
        if step < 2:
            model.zero_grad()
            ref.zero_grad()
        x = pipec.randn(BATCH, D_HID).to(dev)
        target = make_target("class", BATCH, dev)
        losses = []
        out = sched.step(x, target=target, losses=losses)
        ref_out, ref_losses = ref_step(ref, [x], target, n, cross_entropy)
        what = f"{cls.__name__} {frontend} n={n} step {step}"
        assert_close(out, ref_out, f"{what}: output")
        assert_losses(losses, ref_losses, what)
        assert_grads(mods, ref, 1.0 / n, what)


# ---- eval, no_grad, return_outputs ----

@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("kind", DEVICE_KINDS_2)
def test_eval_then_train(schedule, kind):
    """Two eval() calls (outputs and losses, no gradients anywhere), then two training
    steps whose numerics equal the reference's (the backward state is prepared lazily)."""
    ranks, n = 2, 4
    n_stages = ranks * stages_per_rank(schedule)
    rdev = _ref_device(kind)
    model = new_multimlp(n_stages, rdev)
    ref = copy.deepcopy(model)
    x0 = pipec.randn(BATCH, D_HID).to(rdev)
    pipe = trace(model, (pipec.tensor_split(x0, n, 0)[0],))
    lp = LocalPipeline(pipe, schedule, n, _devices(kind, ranks), loss_fn=mse_mean)
    for i in range(2):
        x = pipec.randn(BATCH, D_HID).to(rdev)
        target = pipec.randn(BATCH, D_HID).to(rdev)
        losses = []
        out = lp.eval(x, target=target, losses=losses)
        with pipec.no_grad():
            ref_out, ref_losses = ref_step(ref, [x], target, n, None)
            ref_losses = [mse_mean(o, t) for o, t in
                          zip(pipec.tensor_split(ref_out, n, 0), pipec.tensor_split(target, n, 0))]
        assert_close(out, ref_out, f"eval {i}: output")
        assert_losses(losses, ref_losses, f"eval {i}")
        grads = {k: g for k, g in stage_grads(pipe_modules(pipe)).items() if g is not None}
        assert not grads, f"eval {i} produced gradients for {sorted(grads)}"
        assert not out.requires_grad, "eval output requires grad"
    for step in range(2):
        x = pipec.randn(BATCH, D_HID).to(rdev)
        target = pipec.randn(BATCH, D_HID).to(rdev)
        losses = []
        out = lp.step(x, target=target, losses=losses)
        ref_out, ref_losses = ref_step(ref, [x], target, n, mse_mean)
        what = f"{schedule} train step {step} after eval"
        assert_close(out, ref_out, f"{what}: output")
        assert_losses(losses, ref_losses, what)
        assert_grads(pipe_modules(pipe), ref, 1.0 / n, what)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_eval_under_no_grad(schedule):
    """torch's test_eval_inference_mode: eval() inside no_grad works, leaves no .grad, and
    fills the losses."""
    ranks, n = 2, 4
    n_stages = ranks * stages_per_rank(schedule)
    model = new_multimlp(n_stages)
    ref = copy.deepcopy(model)
    x = pipec.randn(BATCH, D_HID)
    target = pipec.randn(BATCH, D_HID)
    pipe = trace(model, (pipec.tensor_split(x, n, 0)[0],))
    lp = LocalPipeline(pipe, schedule, n, ["cpu"] * ranks, loss_fn=mse_sum, scale_grads=False)
    losses = []
    with pipec.no_grad():
        out = lp.eval(x, target=target, losses=losses)
        ref_out = ref(x)
    assert_close(out, ref_out, "eval under no_grad: output")
    assert len(losses) == n
    assert all(p.grad is None for _, p in model.named_parameters())


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("kind", DEVICE_KINDS_2)
def test_return_outputs_false(schedule, kind):
    ranks, n = 2, 4
    n_stages = ranks * stages_per_rank(schedule)
    rdev = _ref_device(kind)
    model = new_multimlp(n_stages, rdev)
    ref = copy.deepcopy(model)
    x = pipec.randn(BATCH, D_HID).to(rdev)
    target = pipec.randn(BATCH, D_HID).to(rdev)
    pipe = trace(model, (pipec.tensor_split(x, n, 0)[0],))
    lp = LocalPipeline(pipe, schedule, n, _devices(kind, ranks), loss_fn=mse_sum,
                       scale_grads=False)
    losses = []
    assert lp.step(x, target=target, losses=losses, return_outputs=False) is None
    _, ref_losses = ref_step(ref, [x], target, n, mse_sum)
    assert_losses(losses, ref_losses, "return_outputs=False")
    assert_grads(pipe_modules(pipe), ref, 1.0, "return_outputs=False")
    # the schedule classes' contract is the same (all stages in this process)
    n_cls = 1 if schedule in SINGLE else 2
    model2 = new_multimlp(n_cls, rdev)
    pipe2 = trace(model2, (pipec.tensor_split(x, n, 0)[0],))
    stages = [pipe2.build_stage(i, rdev) for i in range(n_cls)]
    sched = CLASSES[schedule](stages[0] if schedule in SINGLE else stages, n, loss_fn=mse_sum)
    losses = []
    assert sched.step(x, target=target, losses=losses, return_outputs=False) is None
    assert len(losses) == n


# ---- errors ----

def _small_pipe(n_stages=2, n=4):
    model = new_multimlp(n_stages)
    x = pipec.randn(BATCH, D_HID)
    return model, trace(model, (pipec.tensor_split(x, n, 0)[0],)), x


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_missing_target(schedule):
    ranks, n = 2, 4
    model, pipe, x = _small_pipe(ranks * stages_per_rank(schedule), n)
    lp = LocalPipeline(pipe, schedule, n, ["cpu"] * ranks, loss_fn=mse_sum)
    with pytest.raises(RuntimeError, match="target"):
        lp.step(x)
    with pytest.raises(RuntimeError, match="target"):
        lp.step(x, losses=[])
    with pytest.raises(RuntimeError, match="target"):  # the last stage computes the loss
        lp.eval(x)
    assert all(p.grad is None for _, p in model.named_parameters())
    # the pipeline still works afterwards
    losses = []
    lp.step(x, target=pipec.randn(BATCH, D_HID), losses=losses)
    assert len(losses) == n


def test_missing_target_schedule_class():
    model, pipe, x = _small_pipe(1, 2)
    sched = ScheduleGPipe(pipe.build_stage(0, "cpu"), 2, loss_fn=mse_sum)
    with pytest.raises(RuntimeError, match="target"):
        sched.step(x)
    with pytest.raises(RuntimeError, match="target"):
        sched.eval(x)


def test_training_without_loss_fn():
    """Without a loss_fn, step() runs the forward passes only (torch's behaviour): the
    output of eval(), no gradients."""
    model, pipe, x = _small_pipe(2, 4)
    lp = LocalPipeline(pipe, "GPipe", 4, ["cpu"] * 2)
    out = lp.step(x)
    np.testing.assert_array_equal(np_(out), np_(lp.eval(x)))
    assert tuple(out.shape) == (BATCH, D_HID)
    assert all(p.grad is None for p in pipe.parameters())


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_batch_smaller_than_n_microbatches(schedule):
    ranks, n = 2, 8
    model, pipe, _ = _small_pipe(ranks * stages_per_rank(schedule), n)
    lp = LocalPipeline(pipe, schedule, n, ["cpu"] * ranks, loss_fn=mse_sum)
    small = pipec.randn(n - 1, D_HID)
    with pytest.raises(ValueError):
        lp.step(small, target=pipec.randn(n - 1, D_HID))
    with pytest.raises(ValueError):  # input fine, target too short
        lp.step(pipec.randn(BATCH, D_HID), target=pipec.randn(n - 1, D_HID))
    with pytest.raises(ValueError):
        lp.eval(small, target=pipec.randn(BATCH, D_HID))
    assert all(p.grad is None for _, p in model.named_parameters())


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_step_under_no_grad(schedule):
    ranks, n = 2, 4
    model, pipe, x = _small_pipe(ranks * stages_per_rank(schedule), n)
    lp = LocalPipeline(pipe, schedule, n, ["cpu"] * ranks, loss_fn=mse_sum)
    with pipec.no_grad():
        with pytest.raises(RuntimeError, match="(?i)grad"):
            lp.step(x, target=pipec.randn(BATCH, D_HID))
    assert all(p.grad is None for _, p in model.named_parameters())


def test_step_under_no_grad_schedule_class():
    model, pipe, x = _small_pipe(2, 4)
    sched = ScheduleInterleaved1F1B([pipe.build_stage(i, "cpu") for i in range(2)], 4,
                                    loss_fn=mse_sum)
    with pipec.no_grad():
        with pytest.raises(RuntimeError, match="(?i)grad"):
            sched.step(x, target=pipec.randn(BATCH, D_HID))


def test_losses_must_be_a_list():
    model, pipe, x = _small_pipe(2, 4)
    lp = LocalPipeline(pipe, "GPipe", 4, ["cpu"] * 2, loss_fn=mse_sum)
    with pytest.raises(TypeError):
        lp.step(x, target=pipec.randn(BATCH, D_HID), losses=())


def _disallowed_configs():
    out = []
    for s in SCHEDULES:
        for ranks in (2, 4):
            for n in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 14):
                if not allowed(s, ranks, n):
                    out.append(pytest.param(s, ranks, n, id=f"{s}-r{ranks}-n{n}"))
    return out


@pytest.mark.parametrize("schedule,ranks,n", _disallowed_configs())
def test_disallowed_configurations_raise_at_construction(schedule, ranks, n):
    """The complement of the numerics grid (which shows that allowed ones construct and
    run): 1F1B and DualPipeV with n < stages, interleaved schedules whose rounds do not
    divide n."""
    _, pipe, _ = _small_pipe(ranks * stages_per_rank(schedule), 4)
    with pytest.raises(ValueError):
        LocalPipeline(pipe, schedule, n, ["cpu"] * ranks, loss_fn=mse_sum)


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("ranks", [2, 4])
def test_allowed_odd_microbatch_counts_run(schedule, ranks):
    """Allowed n that do not divide the batch evenly (tensor_split: first chunks larger)."""
    n = next(k for k in (3, 5, 6, 10) if allowed(schedule, ranks, k))
    n_stages = ranks * stages_per_rank(schedule)
    model = new_multimlp(n_stages)
    ref = copy.deepcopy(model)
    x = pipec.randn(BATCH, D_HID)
    t = pipec.randn(BATCH, D_HID)
    pipe = trace(model, (pipec.tensor_split(x, n, 0)[0],))
    lp = LocalPipeline(pipe, schedule, n, ["cpu"] * ranks, loss_fn=mse_sum, scale_grads=False)
    step_matches_reference(lp, pipe, ref, x, t, n, mse_sum, f"{schedule} ranks={ranks} n={n}")


@pytest.mark.parametrize("ranks,n", [(2, 1), (4, 1), (4, 2), (4, 3)])
def test_1f1b_needs_n_at_least_stages(ranks, n):
    _, pipe, _ = _small_pipe(ranks, 4)
    with pytest.raises(ValueError):
        LocalPipeline(pipe, "1F1B", n, ["cpu"] * ranks, loss_fn=mse_sum)
    model = new_multimlp(ranks)
    stage = PipelineStage(model.layers[0], 0, ranks, "cpu")
    with pytest.raises(ValueError):
        Schedule1F1B(stage, n, loss_fn=mse_sum)
    LocalPipeline(pipe, "1F1B", ranks, ["cpu"] * ranks, loss_fn=mse_sum)  # n == stages is fine


@pytest.mark.parametrize("schedule", sorted(V_SCHEDULES))
@pytest.mark.parametrize("ranks,n_stages", [(2, 2), (2, 6), (1, 1), (1, 3), (2, 8)])
def test_v_schedules_need_two_stages_per_rank(schedule, ranks, n_stages):
    _, pipe, _ = _small_pipe(n_stages, 8)
    with pytest.raises(ValueError):
        LocalPipeline(pipe, schedule, 8, ["cpu"] * ranks, loss_fn=mse_sum)
    # the schedule class sees this rank's stages: n_stages / ranks of them
    stages = [pipe.build_stage(i, "cpu") for i in range(n_stages // ranks)]
    with pytest.raises(ValueError):
        CLASSES[schedule](stages, 8, loss_fn=mse_sum)


@pytest.mark.parametrize("ranks,n", [(2, 1), (2, 3), (4, 4), (4, 7)])
def test_dualpipev_needs_n_at_least_stages(ranks, n):
    _, pipe, _ = _small_pipe(2 * ranks, 8)
    with pytest.raises(ValueError):
        LocalPipeline(pipe, "DualPipeV", n, ["cpu"] * ranks, loss_fn=mse_sum)


@pytest.mark.parametrize("schedule", ["Interleaved1F1B", "InterleavedZeroBubble"])
@pytest.mark.parametrize("ranks,n", [(4, 9), (4, 14), (2, 5)])
def test_interleaved_microbatch_divisibility(schedule, ranks, n):
    """rounds = max(1, n // pp) must divide n (pp=4: 9 -> rounds 2, 14 -> 3; pp=2: 5 -> 2)."""
    _, pipe, _ = _small_pipe(2 * ranks, 4)
    with pytest.raises(ValueError):
        LocalPipeline(pipe, schedule, n, ["cpu"] * ranks, loss_fn=mse_sum)


def test_stages_not_divisible_by_devices():
    _, pipe, _ = _small_pipe(3, 4)
    with pytest.raises(ValueError):
        LocalPipeline(pipe, "GPipe", 4, ["cpu"] * 2, loss_fn=mse_sum)


def test_single_schedules_run_one_stage_per_rank():
    _, pipe, _ = _small_pipe(4, 4)
    for name in SINGLE:
        with pytest.raises(ValueError):
            LocalPipeline(pipe, name, 4, ["cpu"] * 2, loss_fn=mse_sum)


@pytest.mark.parametrize("n", [0, -1, 2.0])
def test_bad_n_microbatches(n):
    _, pipe, _ = _small_pipe(2, 4)
    with pytest.raises((ValueError, TypeError)):
        LocalPipeline(pipe, "GPipe", n, ["cpu"] * 2, loss_fn=mse_sum)


# ---- get_schedule_class ----

@pytest.mark.parametrize("name,cls", [
    ("1F1B", Schedule1F1B), ("1f1b", Schedule1F1B), ("Interleaved1F1B", ScheduleInterleaved1F1B),
    ("INTERLEAVED1F1B", ScheduleInterleaved1F1B), ("GPipe", ScheduleGPipe),
    ("gpipe", ScheduleGPipe), ("LoopedBFS", ScheduleLoopedBFS),
    ("InterleavedZeroBubble", ScheduleInterleavedZeroBubble),
    ("interleavedzerobubble", ScheduleInterleavedZeroBubble),
    ("ZBVZeroBubble", ScheduleZBVZeroBubble), ("zbvzerobubble", ScheduleZBVZeroBubble),
    ("DualPipeV", ScheduleDualPipeV), ("DUALPIPEV", ScheduleDualPipeV),
    ("PipelineScheduleSingle", PipelineScheduleSingle),
    ("PipelineScheduleMulti", PipelineScheduleMulti),
])
def test_get_schedule_class(name, cls):
    assert get_schedule_class(name) is cls


def test_get_schedule_class_unknown_lists_valid_names():
    with pytest.raises(ValueError) as info:
        get_schedule_class("ScheduleThatDoesNotExist")
    msg = str(info.value)
    assert "ScheduleThatDoesNotExist" in msg
    for valid in ["1F1B", "Interleaved1F1B", "GPipe", "LoopedBFS", "InterleavedZeroBubble",
                  "ZBVZeroBubble", "DualPipeV"]:
        assert valid in msg, f"{valid!r} not listed in {msg!r}"


def test_unknown_schedule_name_in_local_pipeline():
    _, pipe, _ = _small_pipe(2, 4)
    with pytest.raises(ValueError, match="NoSuchSchedule"):
        LocalPipeline(pipe, "NoSuchSchedule", 4, ["cpu"] * 2, loss_fn=mse_sum)


# ---- tied weights: copies in several stages, gradients summed ----

def new_tied(n_stages, device="cpu"):
    from model_registry import TiedWeights
    pipec.manual_seed(5)
    return _unit_gain(TiedWeights(D_HID, n_layers=n_stages), device)


def new_tied_chain(n_stages, device="cpu"):
    from model_registry import TiedChain
    assert n_stages == 4
    pipec.manual_seed(6)
    return _unit_gain(TiedChain(D_HID), device)


@pytest.mark.parametrize("schedule,ranks", [("GPipe", 4), ("1F1B", 4),
                                            ("Interleaved1F1B", 2), ("DualPipeV", 2)])
def test_tied_weights_shared_unevenly(schedule, ranks):
    """TiedChain: a.weight on stages 0 and 3, b on stages 1, 2 and 3: each copy ends up
    with the model's gradient, whatever set of tied copies a rank holds."""
    n = 4
    model = new_tied_chain(ranks * stages_per_rank(schedule))
    ref = copy.deepcopy(model)
    x = pipec.randn(BATCH, D_HID)
    y = pipec.randn(BATCH, D_HID)
    pipe = trace(model, (pipec.tensor_split(x, n, 0)[0],))
    assert sorted(sorted(d.values())[0] for d in pipe.replicated_params) == \
        ["a.weight", "b.bias", "b.weight"]
    lp = LocalPipeline(pipe, schedule, n, ["cpu"] * ranks, loss_fn=mse_sum, scale_grads=False,
                       timeout=20)
    losses = []
    lp.step(x, target=y, losses=losses)
    _, ref_losses = ref_step(ref, [x], y, n, mse_sum)
    what = f"TiedChain {schedule} ranks={ranks}"
    assert_losses(losses, ref_losses, what)
    assert_grads(pipe_modules(pipe), ref, 1.0, what)


@pytest.mark.parametrize("schedule,ranks,kind", [(s, 2, "cpu") for s in SCHEDULES] +
                         [("1F1B", 4, "cpu"), ("ZBVZeroBubble", 4, "cpu"),
                          pytest.param("1F1B", 2, "multigpu", marks=pytest.mark.multigpu),
                          pytest.param("Interleaved1F1B", 2, "multigpu",
                                       marks=pytest.mark.multigpu)])
def test_tied_weights_gradients_are_summed(schedule, ranks, kind):
    """TiedWeights: emb.weight is used by the first and the last stage, which pipeline()
    gives a copy each. After every step each copy holds the sum of both copies' gradients,
    the unpipelined model's gradient, also when steps accumulate into .grad (two steps,
    scale_grads on: only this step's part is summed and scaled)."""
    n = 4
    n_stages = ranks * stages_per_rank(schedule)
    dev = _ref_device(kind)
    model = new_tied(n_stages, dev)
    ref = copy.deepcopy(model)
    pipe = trace(model, (pipec.tensor_split(pipec.randn(BATCH, D_HID, device=dev), n, 0)[0],))
    assert pipe.replicated_params == [{"submod_0": "emb.weight",
                                       f"submod_{n_stages - 1}": "emb.weight"}]
    lp = LocalPipeline(pipe, schedule, n, _devices(kind, ranks), loss_fn=mse_mean, timeout=20)
    what = f"TiedWeights {schedule} ranks={ranks} {kind}"
    for step in range(2):
        x = pipec.randn(BATCH, D_HID, device=dev)
        y = pipec.randn(BATCH, D_HID, device=dev)
        losses = []
        lp.step(x, target=y, losses=losses)
        _, ref_losses = ref_step(ref, [x], y, n, mse_mean)
        assert_losses(losses, ref_losses, f"{what} step {step}")
    # the reference accumulated 2 steps x n microbatch backwards; scale_grads divided each
    # step's pipelined gradients by n
    assert_grads(pipe_modules(pipe), ref, 1.0 / n, what)
    copies = [pipe.get_stage_module(i).emb.weight for i in (0, n_stages - 1)]
    assert copies[0] is not copies[1]


def test_tied_weights_sum_can_be_turned_off():
    """sum_tied_grads = False keeps torch's behaviour (each copy keeps its own gradient, for
    code that all-reduces tied gradients itself): the copies' gradients then add up to the
    reference."""
    n = 4
    model = new_tied(2)
    ref = copy.deepcopy(model)
    x = pipec.randn(BATCH, D_HID)
    y = pipec.randn(BATCH, D_HID)
    pipe = trace(model, (pipec.tensor_split(x, n, 0)[0],))
    lp = LocalPipeline(pipe, "1F1B", n, ["cpu"] * 2, loss_fn=mse_sum, scale_grads=False)
    lp.sum_tied_grads = False
    lp.step(x, target=y)
    ref_step(ref, [x], y, n, mse_sum)
    g0 = np_(pipe.get_stage_module(0).emb.weight.grad)
    g1 = np_(pipe.get_stage_module(1).emb.weight.grad)
    check_close(g0 + g1, np_(ref.emb.weight.grad), "sum of the copies")
    assert not np.allclose(g0, g1)


# ---- skip connections across ranks ----

def _skip_configs():
    out = [pytest.param(s, r, "cpu", id=f"{s}-r{r}-cpu")
           for s, r in [("ZBVZeroBubble", 2), ("DualPipeV", 2), ("1F1B", 4), ("GPipe", 4),
                        ("Interleaved1F1B", 2)]]
    # one rank per GPU: values and gradients with two consumers cross GPUs (peer copies, and
    # the sum of a gradient from each GPU)
    out += [pytest.param(s, 2, "multigpu", marks=pytest.mark.multigpu, id=f"{s}-r2-multigpu")
            for s in ("ZBVZeroBubble", "DualPipeV", "Interleaved1F1B")]
    return out


@pytest.mark.parametrize("schedule,ranks,kind", _skip_configs())
def test_skip_connections_across_ranks(schedule, ranks, kind):
    """SkipConnections: stage 1's output feeds stage 3 as well. With the V placement (rank 0:
    stages 0 and 3, rank 1: 1 and 2) that edge crosses ranks while stage 2 is on stage 1's
    rank, so the lowered order has no SEND_F for stage 1: the runtime must move such values
    when they are made (and their gradients when the consumer's backward is done)."""
    from model_registry import SkipConnections
    n = 4
    pipec.manual_seed(3)
    dev = _ref_device(kind)
    model = SkipConnections(D_HID).to(dev)
    ref = copy.deepcopy(model)
    x = pipec.randn(BATCH, D_HID, device=dev)
    y = pipec.randn(BATCH, D_HID, device=dev)
    pipe = pipeline(model, (pipec.tensor_split(x, n, 0)[0],))
    assert pipe.num_stages == 4
    lp = LocalPipeline(pipe, schedule, n, _devices(kind, ranks), loss_fn=mse_sum,
                       scale_grads=False, timeout=20)
    step_matches_reference(lp, pipe, ref, x, y, n, mse_sum,
                           f"SkipConnections {schedule} ranks={ranks}")


# ---- interrupting a step (a notebook's stop button) ----

_INTERRUPT_SCRIPT = r"""
import copy, os, signal, sys, threading, time
import numpy as np
sys.path.insert(0, sys.argv[1])
import pipec
from pipec import nn
from pipec.pipelining import LocalPipeline, pipeline
from model_registry import MultiMLP
pipec.manual_seed(0)
d, n = 256, 64
model = MultiMLP(d, n_layers=2)
ref = copy.deepcopy(model)
x, y = pipec.randn(n * 8, d), pipec.randn(n * 8, d)
mse = nn.MSELoss(reduction="sum")
calls = []
def loss_fn(out, target):  # Ctrl-C from inside the step, after a quarter of the losses
    calls.append(1)
    if armed and len(calls) == n // 4:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)  # the main thread handles it meanwhile (it needs the GIL)
    return mse(out, target)
armed = False
pipe = pipeline(model, (x[:8],), split_spec=model.split_spec)
lp = LocalPipeline(pipe, "GPipe", n, ["cpu", "cpu"], loss_fn=loss_fn, scale_grads=False)
lp.step(x, target=y)
params = [p for i in range(2) for p in pipe.get_stage_module(i).parameters()]
before = [p.grad.numpy().copy() for p in params]
calls.clear()
armed = True
try:
    lp.step(x, target=y)
    print("NOT INTERRUPTED", len(calls))
except KeyboardInterrupt:
    armed = False
    stopped_at = len(calls)
    assert stopped_at < n, stopped_at  # the ranks stopped instead of finishing the step
    for _ in range(200):  # the rank threads have stopped working; they exit at once
        alive = [t.name for t in threading.enumerate() if t.name.startswith("pipec-rank")]
        if not alive:
            break
        time.sleep(0.01)
    assert not alive, alive
    for p, b in zip(params, before):  # the interrupted step added nothing
        assert np.array_equal(p.grad.numpy(), b)
    losses = []
    lp.step(x, target=y, losses=losses)  # at once: the pipeline is usable again
    for p in params:
        p.grad = None
    lp.step(x, target=y, losses=losses)
    for m in range(n):
        lr = mse(ref(x[m * 8:(m + 1) * 8]), y[m * 8:(m + 1) * 8])
        lr.backward()
        assert abs(float(losses[m].item()) - float(lr.item())) <= 1e-4 * abs(float(lr.item()))
    rg = dict(ref.named_parameters())
    for i in range(2):
        for name, p in pipe.get_stage_module(i).named_parameters():
            np.testing.assert_allclose(p.grad.numpy(), rg[name].grad.numpy(), rtol=1e-4,
                                       atol=1e-5)
    print("OK", stopped_at)
"""


def test_keyboard_interrupt_stops_the_step_and_keeps_the_pipeline_usable():
    """Ctrl-C (a notebook's stop button) during LocalPipeline.step: every rank stops at its
    next action, the threads are gone when KeyboardInterrupt reaches the caller, the step's
    gradients are not added, and the next step runs at once with the right numbers."""
    import os
    import subprocess
    import sys
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.dirname(here) + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run([sys.executable, "-c", _INTERRUPT_SCRIPT, here], capture_output=True,
                         text=True, timeout=120, env=env)
    out = res.stdout + res.stderr
    assert res.returncode == 0 and "OK" in res.stdout, out

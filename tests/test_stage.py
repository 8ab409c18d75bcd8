"""PipelineStage and dw_builder behaviour (torch's test_stage.py, single process).

  - constructor checks: stage_index outside [0, num_stages), num_stages < 1, a submodule
    that is not a pipec Module, a dw_builder that is not callable;
  - is_first / is_last; build_stage refuses modules that are not pipeline() stages; a
    pipeline() stage's parameter names are a subset of the original model's (test_tracer);
  - a hand-written stage has no Program until its first step traces it; its output equals
    the model's (test_manual);
  - custom dW on a plain model (test_custom_dw_with_fb_schedule): with a dw_builder the stage
    runs a full backward and then the runner, once per microbatch: the runner count is
    n_microbatches per stage and step, and the gradients still equal the reference's, for
    every schedule (B-only ones call the runner right after B, zero-bubble ones at W);
  - errors raised by a dw runner or by loss_fn come out of step() with their own type and
    message; with scale_grads=True the gradients accumulated by earlier steps are left as
    they were (with scale_grads=False a failed step leaves its partial sums, as torch
    does); the pipeline runs normally afterwards.
Numerics tolerance as in test_schedules.py.
"""
import copy

import pytest

import pipec
from pipec.pipelining import LocalPipeline, PipelineStage, build_stage

from model_registry import MultiMLP
from test_schedules import (BATCH, D_HID, SCHEDULES, assert_close, assert_grads, mse_mean,
                            mse_sum, new_multimlp, pipe_modules, ref_step, stage_grads,
                            stages_per_rank, trace)


# ---- construction ----

@pytest.mark.parametrize("index,num", [(2, 2), (5, 2), (-1, 2), (0, 0), (0, -1)])
def test_stage_index_out_of_range(index, num):
    with pytest.raises(ValueError):
        PipelineStage(MultiMLP(D_HID, 1), index, num, "cpu")


def test_stage_rejects_non_module_and_bad_dw_builder():
    with pytest.raises(TypeError):
        PipelineStage(lambda x: x, 0, 1, "cpu")
    with pytest.raises(TypeError):
        PipelineStage(MultiMLP(D_HID, 1), 0, 1, "cpu", dw_builder=3)


def test_stage_first_last():
    mods = MultiMLP(D_HID, 3).layers
    stages = [PipelineStage(mods[i], i, 3, "cpu") for i in range(3)]
    assert [s.is_first for s in stages] == [True, False, False]
    assert [s.is_last for s in stages] == [False, False, True]
    assert str(stages[1].device) == "cpu"
    one = PipelineStage(mods[0], 0, 1, "cpu")
    assert one.is_first and one.is_last


def test_build_stage_needs_a_pipeline_stage_module():
    model = new_multimlp(2)
    x = pipec.randn(4, D_HID)
    pipe = trace(model, (x,))
    with pytest.raises(TypeError):
        build_stage(model.layers[0], 0, pipe.info(), "cpu")
    st = build_stage(pipe.get_stage_module(1), 1, pipe.info(), "cpu")
    assert st.stage_index == 1 and st.num_stages == 2 and st.is_last


def test_tracer_stage_parameter_names_subset_of_model():
    model = new_multimlp(4)
    x = pipec.randn(4, D_HID)
    pipe = trace(model, (x,))
    names = set(model.state_dict())
    seen = set()
    for i in range(pipe.num_stages):
        keys = set(pipe.get_stage_module(i).state_dict())
        assert keys and keys <= names, f"stage {i}: {keys - names}"
        seen |= keys
    assert seen == names


def test_manual_stage_traced_on_first_step():
    model = new_multimlp(2)
    ref = copy.deepcopy(model)
    stages = [PipelineStage(model.layers[i], i, 2, "cpu") for i in range(2)]
    assert all(s._program is None for s in stages)
    lp = LocalPipeline(stages, "GPipe", 4, ["cpu", "cpu"], loss_fn=mse_sum, scale_grads=False)
    x = pipec.randn(BATCH, D_HID)
    t = pipec.randn(BATCH, D_HID)
    out = lp.step(x, target=t)
    assert all(s._program is not None for s in stages)
    ref_out, _ = ref_step(ref, [x], t, 4, mse_sum)
    assert_close(out, ref_out, "manual stages: output")
    mods = [(model.layers[i], f"layers.{i}.") for i in range(2)]
    assert_grads(mods, ref, 1.0, "manual stages")


# ---- custom dW with a plain model ----

def _counting_builders(n_stages, calls, fail_at=None):
    """Runners counting their calls; with fail_at, stage 0's runner raises once, on its
    fail_at-th call."""
    def builder(i):
        def runner():
            calls[i] += 1
            if i == 0 and calls[i] == fail_at:
                raise ValueError(f"dw runner of stage {i} failed on purpose")
        return lambda: runner
    return {i: builder(i) for i in range(n_stages)}


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_custom_dw_runner_count_and_full_backward(schedule):
    ranks, n = 2, 4
    n_stages = ranks * stages_per_rank(schedule)
    model = new_multimlp(n_stages)
    ref = copy.deepcopy(model)
    x0 = pipec.randn(BATCH, D_HID)
    pipe = trace(model, (pipec.tensor_split(x0, n, 0)[0],))
    calls = [0] * n_stages
    lp = LocalPipeline(pipe, schedule, n, ["cpu"] * ranks, loss_fn=mse_sum, scale_grads=False,
                       dw_builders=_counting_builders(n_stages, calls))
    for step in range(2):
        x = pipec.randn(BATCH, D_HID)
        t = pipec.randn(BATCH, D_HID)
        out = lp.step(x, target=t)
        ref_out, _ = ref_step(ref, [x], t, n, mse_sum)
        assert calls == [n * (step + 1)] * n_stages, f"step {step}: runner calls {calls}"
        assert_close(out, ref_out, f"{schedule} step {step}: output")
        assert_grads(pipe_modules(pipe), ref, 1.0, f"{schedule} step {step}")


# ---- errors inside a step ----

@pytest.mark.parametrize("schedule", ["GPipe", "InterleavedZeroBubble", "ZBVZeroBubble"])
def test_dw_runner_error_propagates_and_keeps_earlier_grads(schedule):
    ranks, n = 2, 4
    n_stages = ranks * stages_per_rank(schedule)
    model = new_multimlp(n_stages)
    ref = copy.deepcopy(model)
    x0 = pipec.randn(BATCH, D_HID)
    pipe = trace(model, (pipec.tensor_split(x0, n, 0)[0],))
    calls = [0] * n_stages
    # stage 0's runner fails on its 6th call: second step, second microbatch
    builders = _counting_builders(n_stages, calls, fail_at=n + 2)
    lp = LocalPipeline(pipe, schedule, n, ["cpu"] * ranks, loss_fn=mse_mean,
                       dw_builders=builders)
    x = pipec.randn(BATCH, D_HID)
    t = pipec.randn(BATCH, D_HID)
    lp.step(x, target=t)
    ref_step(ref, [x], t, n, mse_mean)
    before = stage_grads(pipe_modules(pipe))
    with pytest.raises(ValueError, match="failed on purpose"):
        lp.step(pipec.randn(BATCH, D_HID), target=pipec.randn(BATCH, D_HID))
    after = stage_grads(pipe_modules(pipe))
    assert before.keys() == after.keys()
    for k in before:
        assert (before[k] == after[k]).all(), f"{k}: gradient changed by a failed step"
    # the pipeline still works: the next step adds its gradients to the first step's
    x = pipec.randn(BATCH, D_HID)
    t = pipec.randn(BATCH, D_HID)
    losses = []
    out = lp.step(x, target=t, losses=losses)
    ref_out, ref_losses = ref_step(ref, [x], t, n, mse_mean)
    assert_close(out, ref_out, "after a failed step: output")
    assert_grads(pipe_modules(pipe), ref, 1.0 / n, "after a failed step")


@pytest.mark.parametrize("schedule", ["1F1B", "DualPipeV"])
def test_loss_fn_error_propagates(schedule):
    ranks, n = 2, 4
    n_stages = ranks * stages_per_rank(schedule)
    model = new_multimlp(n_stages)
    x = pipec.randn(BATCH, D_HID)
    pipe = trace(model, (pipec.tensor_split(x, n, 0)[0],))
    state = {"fail": True}

    def loss_fn(out, target):
        if state["fail"]:
            raise KeyError("loss failed on purpose")
        return mse_sum(out, target)

    lp = LocalPipeline(pipe, schedule, n, ["cpu"] * ranks, loss_fn=loss_fn)
    with pytest.raises(KeyError, match="on purpose"):
        lp.step(x, target=pipec.randn(BATCH, D_HID))
    assert all(p.grad is None for p in model.parameters())
    state["fail"] = False
    losses = []
    lp.step(x, target=pipec.randn(BATCH, D_HID), losses=losses)
    assert len(losses) == n

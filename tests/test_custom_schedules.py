"""Custom schedules: an order loaded from CSV (compute-only and lowered) and a subclass that
builds pipeline_order itself, run on CPU against the unpipelined model."""
import copy
import os
import re

import numpy as np
import pytest

import pipec
from pipec import nn
from pipec.pipelining import (PipelineScheduleMulti, PipelineStage, ScheduleGPipe,
                              ScheduleInterleaved1F1B, schedule_ops, dump_csv)
from model_registry import MultiMLP

D, B, N = 16, 16, 4


def _setup(n_stages):
    pipec.manual_seed(3)
    model = MultiMLP(D, n_layers=n_stages)
    ref = copy.deepcopy(model)
    stages = [PipelineStage(model.layers[i], i, n_stages, "cpu") for i in range(n_stages)]
    x, y = pipec.randn(B, D), pipec.randn(B, D)
    return model, ref, stages, x, y


def _check(model, ref, x, y, losses, out):
    loss_fn = nn.MSELoss(reduction="sum")
    ref_losses = []
    for xm, ym in zip(pipec.tensor_split(x, N), pipec.tensor_split(y, N)):
        l = loss_fn(ref(xm), ym)
        l.backward()
        ref_losses.append(l.item())
    np.testing.assert_allclose([l.item() for l in losses], ref_losses, rtol=1e-5)
    np.testing.assert_allclose(out.numpy(), ref(x).detach().numpy(), rtol=1e-5, atol=1e-6)
    got = dict(model.named_parameters())
    for name, p in ref.named_parameters():
        np.testing.assert_allclose(got[name].grad.numpy(), p.grad.numpy(), rtol=1e-5,
                                   atol=1e-6, err_msg=name)


@pytest.mark.parametrize("fmt", ["compute_only", "compute_comms"])
def test_schedule_from_csv(tmp_path, fmt):
    model, ref, stages, x, y = _setup(4)
    order = schedule_ops("Interleaved1F1B", 2, N, with_comms=(fmt == "compute_comms"))
    path = os.path.join(tmp_path, "order.csv")
    dump_csv(path, order)
    sched = ScheduleInterleaved1F1B(stages, N, loss_fn=nn.MSELoss(reduction="sum"),
                                    scale_grads=False)
    sched._load_csv(path, format=fmt)
    losses = []
    out = sched.step(x, target=y, losses=losses)
    _check(model, ref, x, y, losses, out)
    assert sched.pp_size == 2


def test_dump_then_load_round_trip(tmp_path):
    _, _, stages, _, _ = _setup(2)
    sched = ScheduleGPipe(stages[0], N)
    path = os.path.join(tmp_path, "gpipe.csv")
    sched._dump_csv(path)
    assert pipec.pipelining.load_csv(path) == [[a for a in row] for row in
                                               [sched.pipeline_order[r] for r in range(sched.pp_size)]]


class BackwardFirstGPipe(PipelineScheduleMulti):
    """A hand-written schedule: GPipe on 2 ranks, but each rank runs its backwards in
    descending microbatch order (still valid: each B after its F)."""

    def __init__(self, stages, n_microbatches, loss_fn=None, scale_grads=True):
        super().__init__(stages, n_microbatches, loss_fn=loss_fn, scale_grads=scale_grads)
        self.pipeline_order = {
            r: [f"{r}F{m}" for m in range(n_microbatches)] +
               [f"{r}B{m}" for m in reversed(range(n_microbatches))]
            for r in range(2)}


def test_subclass_builds_pipeline_order():
    model, ref, stages, x, y = _setup(2)
    sched = BackwardFirstGPipe(stages, N, loss_fn=nn.MSELoss(reduction="sum"),
                               scale_grads=False)
    losses = []
    out = sched.step(x, target=y, losses=losses)
    _check(model, ref, x, y, losses, out)


def test_invalid_custom_order_is_rejected():
    _, _, stages, x, y = _setup(2)
    sched = BackwardFirstGPipe(stages, N, loss_fn=nn.MSELoss(reduction="sum"))
    sched.pipeline_order[1] = ["1B0"] + sched.pipeline_order[1]  # backward before forward
    with pytest.raises(ValueError):
        sched.step(x, target=y)


class DualPipeVOrder(PipelineScheduleMulti):
    """DualPipeV's 2-rank order (V placement, OVERLAP_F_B actions) as a custom schedule."""

    def __init__(self, stages, n_microbatches, loss_fn=None, scale_grads=True):
        super().__init__(stages, n_microbatches, loss_fn=loss_fn, scale_grads=scale_grads)
        self.pipeline_order = dict(enumerate(schedule_ops("DualPipeV", 2, n_microbatches)))


def test_register_custom_function_wraps_builtins():
    """A custom F and OVERLAP_F_B handler (DualPipeV) that delegate to the built-in one:
    same numerics, and every action of those types went through the custom function."""
    model, ref, stages, x, y = _setup(4)
    sched = DualPipeVOrder(stages, N, loss_fn=nn.MSELoss(reduction="sum"), scale_grads=False)
    seen = {"F": [], "OVERLAP_F_B": []}

    def on_forward(action, ctx):
        seen["F"].append((ctx.rank, str(action)))
        ctx.run_builtin(action)

    def on_overlap(action, ctx):
        seen["OVERLAP_F_B"].append(str(action))
        assert action.sub_actions
        for sub in action.sub_actions:
            ctx.run_builtin(sub)

    sched.register_custom_function("F", on_forward)
    sched.register_custom_function("OVERLAP_F_B", on_overlap)
    losses = []
    out = sched.step(x, target=y, losses=losses)
    _check(model, ref, x, y, losses, out)
    plain_f = sum(1 for row in sched.pipeline_order.values() for a in row
                  if a and re.fullmatch(r"\d+F\d+", a))
    assert len(seen["F"]) == plain_f > 0
    assert len(seen["OVERLAP_F_B"]) > 0
    with pytest.raises(ValueError):
        sched.register_custom_function("SEND_F", on_forward)


def test_custom_function_error_surfaces():
    model, ref, stages, x, y = _setup(2)
    sched = BackwardFirstGPipe(stages, N, loss_fn=nn.MSELoss(reduction="sum"))

    def boom(action, ctx):
        raise KeyError("custom failure")

    sched.register_custom_function("B", boom)
    with pytest.raises(KeyError, match="custom failure"):
        sched.step(x, target=y)

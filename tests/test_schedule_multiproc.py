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

def _env(backend="tcp", extra=None):
    env = dict(os.environ)
    env.update(extra or {})
    env["PIPEC_TEST_BACKEND"] = backend
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
              "MASTER_PORT"):
        env.pop(k, None)
    return env


def _launch(nproc, case, *args, timeout=120, backend="tcp", env=None):
    cmd = [sys.executable, "-m", "pipec.run", "--nproc-per-node", str(nproc), "--stop-timeout",
           "2", HERE, case, *map(str, args)]
    t0 = time.monotonic()
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                         env=_env(backend, env))
    return res, time.monotonic() - t0


def _assert_ok(res, nproc, ranks=None):
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    for r in (range(nproc) if ranks is None else ranks):
        assert f"[rank{r}]: OK" in res.stdout, out


# ---- worker side ----

DEV = "cpu"  # this rank's device: cpu (tcp backend) or cuda:<local rank> (nccl)


def _setup(timeout=60):
    """Join the job: PIPEC_TEST_BACKEND=tcp (CPU processes, the default), nccl (one GPU per
    rank; with fewer GPUs than ranks the ranks share them, gpu_share.py) or tcp-cuda (stages
    on GPUs, shared round-robin, messages staged through the host over TCP)."""
    global DEV
    import pipec
    import pipec.distributed as dist
    from gpu_share import share_gpus_for_nccl
    backend = os.environ.get("PIPEC_TEST_BACKEND", "tcp")
    if backend in ("nccl", "tcp-cuda"):
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if backend == "tcp-cuda":
            local %= pipec.cuda.device_count()
            backend = "tcp"
        else:
            local = share_gpus_for_nccl(local, int(os.environ["LOCAL_WORLD_SIZE"]))
        DEV = f"cuda:{local}"
        pipec.cuda.set_device(local)
    dist.init_process_group(backend, timeout=timeout)
    return dist.get_rank(), dist.get_world_size()


def _placement(schedule, world):
    from pipec import _C
    import test_schedules as ts
    n_stages = world * ts.stages_per_rank(schedule)
    style = "v" if schedule in ts.V_SCHEDULES else "loop"
    return n_stages, list(_C._sched_stage_to_rank(style, world, n_stages))


def _join(schedule):
    """Join the job and place the schedule's stages: (rank, world, n_stages, stage -> rank,
    this rank's stages)."""
    rank, world = _setup()
    n_stages, mapping = _placement(schedule, world)
    return rank, world, n_stages, mapping, [s for s in range(n_stages) if mapping[s] == rank]


def _data(step, batch, d, target_kind, n_classes):
    """Inputs and targets of a step: the same on every rank (seeded)."""
    import pipec
    rng = np.random.default_rng(100 + step)
    x = pipec.tensor(rng.standard_normal((batch, d)).astype(np.float32))
    if target_kind == "class":
        t = pipec.tensor(rng.integers(0, n_classes, size=batch), dtype=pipec.int64)
    else:
        t = pipec.tensor(rng.standard_normal((batch, d)).astype(np.float32))
    return x.to(DEV), t.to(DEV)


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
    rank, world, n_stages, mapping, mine = _join(schedule)
    n, steps = int(n), int(steps)
    loss_fn, scale_grads, tkind = ts.LOSSES[loss_name]
    model = ts.new_multimlp(n_stages, DEV)
    ref = copy.deepcopy(model)
    batch = 2 * n
    if frontend == "tracer":
        x0, _ = _data(0, batch, ts.D_HID, tkind, ts.D_HID)
        pipe = ts.trace(model, (pipe_chunk(x0, n),))
        stages = [pipe.build_stage(s, DEV) for s in mine]
        modules = [(pipe.get_stage_module(s), "") for s in mine]
    else:
        stages = [PipelineStage(model.layers[s], s, n_stages, DEV) for s in mine]
        modules = [(model.layers[s], f"layers.{s}.") for s in mine]
    cls = ts.CLASSES[schedule]
    sched = cls(stages[0] if schedule in ts.SINGLE else stages, n, loss_fn=loss_fn,
                scale_grads=scale_grads)
    scale = 1.0 / n if scale_grads and n > 1 else 1.0
    sched.record_timeline = True  # this rank's compute actions, timed
    _run_steps(sched, rank, {mapping[0]}, {mapping[-1]}, ref, loss_fn, n, steps, batch,
               ts.D_HID, tkind, modules, scale, f"{schedule}/{frontend}/{loss_name}")
    events = sched.timeline()
    from pipec.pipelining.schedules import _Action
    n_compute = sum(1 for a in sched._executor.orders[rank]
                    if str(_Action.from_str(a).computation_type) in
                    ("F", "B", "I", "W", "OVERLAP_F_B"))
    flushes = [e for e in events if e[1] == "WGRAD_FLUSH"]  # weight-gradient batching's
    events = [e for e in events if e[1] != "WGRAD_FLUSH"]
    assert len(flushes) <= 1
    assert len(events) == n_compute and all(e[0] == rank and e[3] >= e[2] for e in events), \
        (len(events), n_compute, events[:3])
    if (os.environ.get("PIPEC_WGRAD_BATCH_ROWS") or "0").isdigit() and \
            int(os.environ.get("PIPEC_WGRAD_BATCH_ROWS") or 0) > 0:  # the weight-gradient batching
        from pipec import _C  # tests: the products really were deferred on this rank
        assert _C._wgrad_deferred_count() > 0, "weight-gradient batching deferred nothing"
    print(f"OK {schedule} rank {rank} stages {mine}", flush=True)


def pipe_chunk(x, n):
    import pipec
    return pipec.tensor_split(x, n, 0)[0]


def case_kwargs(schedule, n):
    """torch's test_kwargs_with_tracer: ModelWithKwargs split over the world, the first
    stage's rank passes step(x, y=y)."""
    import pipec
    import test_schedules as ts
    from pipec.pipelining import pipeline
    rank, world, n_stages, mapping, mine = _join(schedule)
    n = int(n)
    model = ts.new_model_with_kwargs(n_stages, DEV)
    ref = copy.deepcopy(model)
    batch = 2 * n
    rng = np.random.default_rng(5)
    x, y, t = (pipec.tensor(rng.standard_normal((batch, ts.D_HID)).astype(np.float32)).to(DEV)
               for _ in range(3))
    pipe = pipeline(model, mb_args=(pipe_chunk(x, n),), mb_kwargs={"y": pipe_chunk(y, n)})
    stages = [pipe.build_stage(s, DEV) for s in mine]
    cls = ts.CLASSES[schedule]
    sched = cls(stages[0] if schedule in ts.SINGLE else stages, n, loss_fn=ts.mse_sum,
                scale_grads=False)
    ref_out, ref_losses = ts.ref_step(ref, [x], t, n, ts.mse_sum, kwargs={"y": y})
    losses = []
    kw = {"y": y} if rank == mapping[0] else {}
    if rank == mapping[-1]:
        kw.update(target=t, losses=losses)
    out = sched.step(*((x,) if rank == mapping[0] else ()), **kw)
    if rank == mapping[-1]:
        ts.assert_close(out, ref_out, "kwargs: output")
        ts.assert_losses(losses, ref_losses, "kwargs")
    _check_local_grads([(pipe.get_stage_module(s), "") for s in mine], ref, 1.0, "kwargs")
    print(f"OK kwargs {schedule} rank {rank}", flush=True)


def case_custom_dw(schedule, n):
    """torch's test_schedule_with_weight_update_mlp_e2e: MultiMLPWithDw, manual stages with
    a dw_builder each; the dW runner runs once per microbatch and local stage."""
    import test_schedules as ts
    from pipec.pipelining import PipelineStage
    rank, world, n_stages, mapping, mine = _join(schedule)
    n = int(n)
    model = ts.new_multimlp_with_dw(n_stages, DEV)
    ref = copy.deepcopy(model)
    model.toggle()
    calls = {s: 0 for s in mine}

    def builder(i):
        def runner():
            calls[i] += 1
            model.layers[i].compute_dW()
        return lambda: runner

    stages = [PipelineStage(model.layers[s], s, n_stages, DEV, dw_builder=builder(s))
              for s in mine]
    cls = ts.CLASSES[schedule]
    sched = cls(stages[0] if schedule in ts.SINGLE else stages, n, loss_fn=ts.mse_mean)
    _run_steps(sched, rank, {mapping[0]}, {mapping[-1]}, ref, ts.mse_mean, n, 2, 2 * n,
               ts.D_HID, "float", [(model.layers[s], f"layers.{s}.") for s in mine], 1.0 / n,
               f"dW {schedule}")
    assert calls == {s: 2 * n for s in mine}, calls
    print(f"OK dw {schedule} rank {rank}", flush=True)


def case_eval(schedule, n):
    """torch's test_eval_inference_mode and test_return_output: eval under no_grad leaves no
    gradient and fills the last rank's losses; then training steps with
    return_outputs=False return None everywhere and still train correctly."""
    import pipec
    import test_schedules as ts
    from pipec.pipelining import PipelineStage
    rank, world, n_stages, mapping, mine = _join(schedule)
    n = int(n)
    model = ts.new_multimlp(n_stages, DEV)
    ref = copy.deepcopy(model)
    stages = [PipelineStage(model.layers[s], s, n_stages, DEV) for s in mine]
    cls = ts.CLASSES[schedule]
    sched = cls(stages[0] if schedule in ts.SINGLE else stages, n, loss_fn=ts.mse_sum,
                scale_grads=False)
    x, t = _data(0, 2 * n, ts.D_HID, "float", ts.D_HID)
    for _ in range(2):
        losses = []
        kw = {"target": t, "losses": losses} if rank == mapping[-1] else {}
        with pipec.no_grad():
            out = sched.eval(*((x,) if rank == mapping[0] else ()), **kw)
        if rank == mapping[-1]:
            with pipec.no_grad():
                ref_out = ref(x)
            ts.assert_close(out, ref_out, "eval output")
            assert len(losses) == n, losses
        else:
            assert out is None
    for mod in stages:
        for name, p in mod.submod.named_parameters():
            assert p.grad is None, f"eval left a gradient on {name}"
    _run_steps(sched, rank, {mapping[0]}, {mapping[-1]}, ref, ts.mse_sum, n, 2, 2 * n,
               ts.D_HID, "float", [(model.layers[s], f"layers.{s}.") for s in mine], 1.0,
               f"eval-then-train {schedule}", return_outputs=False)
    print(f"OK eval {schedule} rank {rank}", flush=True)


def case_multi_iter(schedule, n, iters):
    """torch's test_multi_iter: many steps in a row (tags carry the step; nothing leaks
    from one step into the next)."""
    import test_schedules as ts
    from pipec.pipelining import PipelineStage
    rank, world, n_stages, mapping, mine = _join(schedule)
    n, iters = int(n), int(iters)
    model = ts.new_multimlp(n_stages, DEV)
    ref = copy.deepcopy(model)
    stages = [PipelineStage(model.layers[s], s, n_stages, DEV) for s in mine]
    cls = ts.CLASSES[schedule]
    sched = cls(stages[0] if schedule in ts.SINGLE else stages, n, loss_fn=ts.mse_sum,
                scale_grads=False)
    _run_steps(sched, rank, {mapping[0]}, {mapping[-1]}, ref, ts.mse_sum, n, iters, 2 * n,
               ts.D_HID, "float", [(model.layers[s], f"layers.{s}.") for s in mine], 1.0,
               f"multi-iter {schedule}")
    print(f"OK multi-iter {schedule} rank {rank}", flush=True)


def _custom_classes():
    from pipec.pipelining._runtime import PipelineScheduleMulti
    from pipec.pipelining.schedules import schedule_ops

    def fill_drain(placement, doc):
        """A custom schedule over 2 ranks: each rank runs the forwards of its stages in
        stage order, then the backwards in reverse order (placement: rank -> stages)."""
        class FillDrain(PipelineScheduleMulti):
            def __init__(self, stages, n_microbatches, loss_fn=None, scale_grads=True):
                super().__init__(stages, n_microbatches, loss_fn=loss_fn,
                                 scale_grads=scale_grads)
                m = range(n_microbatches)
                self.pipeline_order = {
                    r: [f"{s}F{i}" for s in mine for i in m] +
                       [f"{s}B{i}" for s in reversed(mine) for i in m]
                    for r, mine in placement.items()}
        FillDrain.__doc__ = doc
        return FillDrain

    ScheduleVShaped = fill_drain({0: [0, 3], 1: [1, 2]},
                                 "4 stages on 2 ranks: rank 0 holds the first and the last.")
    ScheduleUnbalanced = fill_drain({0: [0, 3, 4], 1: [1, 2]},
                                    "5 stages on 2 ranks: rank 0 holds 0, 3 and 4.")

    class DualPipeVOrder(PipelineScheduleMulti):
        def __init__(self, stages, n_microbatches, loss_fn=None, scale_grads=True):
            super().__init__(stages, n_microbatches, loss_fn=loss_fn, scale_grads=scale_grads)
            self.pipeline_order = dict(enumerate(schedule_ops("DualPipeV", 2, n_microbatches)))

    return {"VShaped": (ScheduleVShaped, {0: [0, 3], 1: [1, 2]}),
            "Unbalanced": (ScheduleUnbalanced, {0: [0, 3, 4], 1: [1, 2]}),
            "DualPipeVCustomFns": (DualPipeVOrder, {0: [0, 3], 1: [1, 2]})}


def case_custom_schedule(name, n):
    """torch's CustomSchedulesTest (non-symmetric stage placement, rank 0 holding the first
    and the last stage) and test_custom_function_callback (F and OVERLAP_F_B re-implemented
    by custom functions delegating to the built-ins)."""
    import re
    import test_schedules as ts
    from pipec.pipelining import PipelineStage
    rank, world = _setup()
    assert world == 2
    n = int(n)
    cls, placement = _custom_classes()[name]
    mine = placement[rank]
    n_stages = sum(len(v) for v in placement.values())
    model = ts.new_multimlp(n_stages, DEV)
    ref = copy.deepcopy(model)
    stages = [PipelineStage(model.layers[s], s, n_stages, DEV) for s in mine]
    sched = cls(stages, n, loss_fn=ts.mse_sum, scale_grads=False)
    seen = {"F": 0, "OVERLAP_F_B": 0}
    if name == "DualPipeVCustomFns":
        def on_forward(action, ctx):
            assert action.stage_index in mine, action
            seen["F"] += 1
            ctx.run_builtin(action)

        def on_overlap(action, ctx):
            seen["OVERLAP_F_B"] += 1
            for sub in action.sub_actions:
                ctx.run_builtin(sub)
        sched.register_custom_function("F", on_forward)
        sched.register_custom_function("OVERLAP_F_B", on_overlap)
    _run_steps(sched, rank, {0}, {0}, ref, ts.mse_sum, n, 2, 2 * n, ts.D_HID, "float",
               [(model.layers[s], f"layers.{s}.") for s in mine], 1.0, f"custom {name}")
    if name == "DualPipeVCustomFns":
        plain_f = sum(1 for a in sched.pipeline_order[rank] if a and re.fullmatch(r"\d+F\d+",
                                                                                  str(a)))
        assert seen["F"] == 2 * plain_f > 0 and seen["OVERLAP_F_B"] > 0, seen
    print(f"OK custom {name} rank {rank}", flush=True)


def case_shape_mismatch():
    """torch's StageNegativeTest.test_shape_prop_mismatch: after a good step, rank 0 feeds
    an input with one more row ("shape mismatch") and one of another dtype ("dtype
    mismatch"); both are refused before anything is sent, so a good step still follows."""
    import pipec
    import pipec.distributed as dist
    import test_schedules as ts
    from pipec.pipelining import PipelineStage, PipeliningShapeError, ScheduleGPipe
    rank, world = _setup()
    n = 2
    model = ts.new_multimlp(world, DEV)
    ref = copy.deepcopy(model)
    stage = PipelineStage(model.layers[rank], rank, world, DEV)
    sched = ScheduleGPipe(stage, n, loss_fn=ts.mse_sum, scale_grads=False)
    modules = [(model.layers[rank], f"layers.{rank}.")]
    _run_steps(sched, rank, {0}, {world - 1}, ref, ts.mse_sum, n, 1, 2 * n, ts.D_HID, "float",
               modules, 1.0, "before mismatch")
    if rank == 0:
        x, _ = _data(0, 2 * n + 2, ts.D_HID, "float", ts.D_HID)
        for bad, words in ((x, "shape mismatch"), (x[:2 * n].to(pipec.float64),
                                                    "dtype mismatch")):
            try:
                sched.step(bad)
            except PipeliningShapeError as e:
                assert words in str(e), str(e)
            else:
                raise AssertionError(f"no {words} error")
    dist.barrier()
    _run_steps(sched, rank, {0}, {world - 1}, ref, ts.mse_sum, n, 1, 2 * n, ts.D_HID, "float",
               modules, 1.0, "after mismatch")
    print(f"OK mismatch rank {rank}", flush=True)


def case_rank_fails(mode):
    """Rank 1 fails in its second step (its loss_fn raises, or the process is killed); rank
    0, waiting for its gradients, must raise PipelineError naming rank 1 within the timeout,
    never hang."""
    import signal
    import pipec
    import pipec.distributed as dist
    import test_schedules as ts
    from pipec.pipelining import PipelineStage, Schedule1F1B
    rank, _ = _setup(timeout=8)
    model = ts.new_multimlp(2, DEV)
    stage = PipelineStage(model.layers[rank], rank, 2, DEV)
    count = [0]

    def loss_fn(out, target):
        count[0] += 1
        if count[0] > 4:
            if mode == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise ValueError("loss_fn failed on purpose")
        return ts.mse_sum(out, target)

    sched = Schedule1F1B(stage, 4, loss_fn=loss_fn)
    x, t = _data(0, 8, ts.D_HID, "float", ts.D_HID)
    t0 = time.monotonic()
    for step in range(2):
        try:
            sched.step(*((x,) if rank == 0 else ()), **({"target": t} if rank == 1 else {}))
        except pipec.PipelineError as e:
            print(f"rank {rank} PipelineError after {time.monotonic() - t0:.1f}s: {e}",
                  flush=True)
            sys.exit(3)
    print(f"rank {rank} finished", flush=True)


def case_disagree(what):
    """Ranks that build different pipelines (schedule class or microbatch count) get an
    error naming the other rank at the first step, not a hang."""
    import pipec
    import test_schedules as ts
    from pipec.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe
    rank, world = _setup()
    model = ts.new_multimlp(world, DEV)
    stage = PipelineStage(model.layers[rank], rank, world, DEV)
    cls = ScheduleGPipe if (what == "schedule" and rank == 1) else Schedule1F1B
    n = 8 if (what == "n_microbatches" and rank == 1) else 4
    loss_fn = None if (what == "loss_fn" and rank == 0) else ts.mse_sum
    sched = cls(stage, n, loss_fn=loss_fn)
    sched.sum_tied_grads = not (what == "sum_tied_grads" and rank == 1)
    x, t = _data(0, 8, ts.D_HID, "float", ts.D_HID)
    try:
        sched.step(*((x,) if rank == 0 else ()),
                   **({"target": t} if rank == world - 1 else {}))
    except pipec.PipelineError as e:
        print(f"rank {rank} refused: {e}", flush=True)
        return
    raise AssertionError("ranks with different pipelines ran a step")


def case_subgroups():
    """Two 2-stage pipelines side by side in a 4-rank job, each over its own new_group
    (ranks 0-1 and 2-3), as in data parallelism over pipelines: each matches the
    reference, and the groups' messages do not mix."""
    import pipec.distributed as dist
    import test_schedules as ts
    from pipec.pipelining import PipelineStage, Schedule1F1B
    rank, world = _setup()
    assert world == 4
    groups = [dist.new_group([0, 1]), dist.new_group([2, 3])]
    g = groups[rank // 2]
    me = g.rank()
    model = ts.new_multimlp(2, DEV)
    ref = copy.deepcopy(model)
    stage = PipelineStage(model.layers[me], me, 2, DEV, group=g)
    sched = Schedule1F1B(stage, 4, loss_fn=ts.mse_sum, scale_grads=False)
    first, last = g.ranks[0], g.ranks[1]
    _run_steps(sched, rank, {first}, {last}, ref, ts.mse_sum, 4, 2, 8, ts.D_HID, "float",
               [(model.layers[me], f"layers.{me}.")], 1.0, f"group {g.ranks}")
    print(f"OK subgroup rank {rank}", flush=True)


def case_zoo(model_name, schedule, n):
    """The model zoo through pipeline() with world x stages-per-rank stages: MultiMLP or
    ExampleCode (a constant that does not require grad crosses a stage boundary, so no
    gradient message may travel back for it)."""
    import test_schedules as ts
    rank, world, n_stages, mapping, mine = _join(schedule)
    n = int(n)
    def skip_model(n_stages, dev):
        from model_registry import SkipConnections
        assert n_stages == 4
        import pipec
        pipec.manual_seed(3)
        return SkipConnections(ts.D_HID).to(dev)

    make = {"MultiMLP": ts.new_multimlp, "ExampleCode": ts.new_example_code,
            "SkipConnections": skip_model, "TiedWeights": ts.new_tied,
            "TiedChain": ts.new_tied_chain}[model_name]
    model = make(n_stages, DEV)
    ref = copy.deepcopy(model)
    x0, _ = _data(0, 2 * n, ts.D_HID, "float", ts.D_HID)
    pipe = ts.trace(model, (pipe_chunk(x0, n),))
    assert pipe.num_stages == n_stages, pipe.num_stages
    stages = [pipe.build_stage(s, DEV) for s in mine]
    sched = ts.CLASSES[schedule](stages[0] if schedule in ts.SINGLE else stages, n,
                                 loss_fn=ts.mse_mean)
    _run_steps(sched, rank, {mapping[0]}, {mapping[-1]}, ref, ts.mse_mean, n, 2, 2 * n,
               ts.D_HID, "float", [(pipe.get_stage_module(s), "") for s in mine], 1.0 / n,
               f"{model_name} {schedule} world {world}")
    print(f"OK zoo {model_name} {schedule} rank {rank}", flush=True)


def case_large_messages(schedule, n, d, rows):
    """Every rank: MultiMLP of width d, microbatches of `rows` rows, so each activation and
    gradient message is rows * d * 4 bytes, far above NCCL's internal buffers (a few MiB):
    a send then cannot finish before its receive is posted. Output, losses and gradients
    against the reference, within a 30 s deadline (a transfer deadlock fails, not hangs)."""
    import pipec
    import test_schedules as ts
    from model_registry import MultiMLP
    from pipec.pipelining import PipelineStage
    schedule, n, d, rows = schedule, int(n), int(d), int(rows)
    rank, world = _setup(timeout=30)
    n_stages, mapping = _placement(schedule, world)
    mine = [s for s in range(n_stages) if mapping[s] == rank]
    pipec.manual_seed(77)
    model = MultiMLP(d, n_layers=n_stages).to(DEV)
    ref = copy.deepcopy(model)
    loss_fn, scale_grads, tkind = ts.LOSSES["mse_sum"]
    stages = [PipelineStage(model.layers[s], s, n_stages, DEV) for s in mine]
    cls = ts.CLASSES[schedule]
    sched = cls(stages[0] if schedule in ts.SINGLE else stages, n, loss_fn=loss_fn,
                scale_grads=scale_grads)
    _run_steps(sched, rank, {mapping[0]}, {mapping[-1]}, ref, loss_fn, n, 2, n * rows, d,
               tkind, [(model.layers[s], f"layers.{s}.") for s in mine], 1.0,
               f"{schedule} {rows}x{d} messages")
    print(f"OK large messages {schedule} rank {rank}", flush=True)


# Two ranks, one stage each, the lowered order given as is (compute_comms): each rank's
# send and its receive from the other rank are adjacent and cross (rank 0 sends F1 before it
# receives B0; rank 1 sends B0 before it receives F1). With messages too large for NCCL's
# buffers, each send waits for its receive, which the other rank queued behind its own send:
# only issuing each send with the receive after it as one group (nccl.c) lets both progress.
CROSSING_ORDER = [
    ["0F0", "0SEND_F0", "0F1", "0SEND_F1", "0RECV_B0", "0B0", "0RECV_B1", "0B1"],
    ["1RECV_F0", "1F0", "1B0", "1SEND_B0", "1RECV_F1", "1F1", "1B1", "1SEND_B1"]]


def case_crossing_transfers(d, rows):
    """Every rank: CROSSING_ORDER (2 microbatches of `rows` x d) against the reference."""
    import tempfile
    import pipec
    import test_schedules as ts
    from model_registry import MultiMLP
    from pipec.pipelining import PipelineStage
    from pipec.pipelining._runtime import PipelineScheduleMulti
    from pipec.pipelining.schedules import dump_csv
    d, rows = int(d), int(rows)
    rank, world = _setup(timeout=30)
    assert world == 2
    pipec.manual_seed(78)
    model = MultiMLP(d, n_layers=2).to(DEV)
    ref = copy.deepcopy(model)
    sched = PipelineScheduleMulti([PipelineStage(model.layers[rank], rank, 2, DEV)], 2,
                                  loss_fn=ts.mse_sum, scale_grads=False)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "crossing.csv")
        dump_csv(path, {r: row for r, row in enumerate(CROSSING_ORDER)})
        sched._load_csv(path, format="compute_comms")
    _run_steps(sched, rank, {0}, {1}, ref, ts.mse_sum, 2, 2, 2 * rows, d, "float",
               [(model.layers[rank], f"layers.{rank}.")], 1.0, f"crossing {rows}x{d}")
    print(f"OK crossing transfers rank {rank}", flush=True)


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



@pytest.mark.parametrize("backend", ["tcp", pytest.param("nccl", marks=pytest.mark.nccl_ranks)])
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_schedule_numerics_with_wgrad_batching(schedule, backend):
    """Weight-gradient batching (tests/test_wgrad_batch.py) in every rank of a multi-process
    job, batches closing mid-step (4 rows: every two microbatches of 2 rows): the same
    numerics, and each rank asserts that products were deferred."""
    res, _ = _launch(2, "case_numerics", schedule, 8, "tracer", "mse_sum", backend=backend,
                     env={"PIPEC_WGRAD_BATCH_ROWS": "4"})
    _assert_ok(res, 2)


@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_example_code(schedule, world):
    res, _ = _launch(world, "case_zoo", "ExampleCode", schedule, 4 if world == 2 else 8)
    _assert_ok(res, world)


@pytest.mark.parametrize("schedule,world", [("ZBVZeroBubble", 2), ("DualPipeV", 2),
                                            ("Interleaved1F1B", 2), ("1F1B", 4)])
def test_skip_connections_across_processes(schedule, world):
    """Stage 1's output also feeds stage 3 on another process (with V placement, stage 2
    sits on stage 1's rank, so no SEND_F action carries it)."""
    res, _ = _launch(world, "case_zoo", "SkipConnections", schedule, 4)
    _assert_ok(res, world)


@pytest.mark.parametrize("schedule,world", [("1F1B", 2), ("Interleaved1F1B", 2),
                                            ("ZBVZeroBubble", 2), ("DualPipeV", 2),
                                            ("GPipe", 4), ("LoopedBFS", 4)])
def test_tied_weights_across_processes(schedule, world):
    """emb.weight has a copy on the first and on the last stage: after each step both copies
    hold the unpipelined gradient, summed across processes (or on one process for the V
    placement, where stages 0 and 2*world-1 share rank 0); two accumulating steps."""
    res, _ = _launch(world, "case_zoo", "TiedWeights", schedule, 4)
    _assert_ok(res, world)


@pytest.mark.parametrize("schedule,world", [("GPipe", 4), ("1F1B", 4), ("Interleaved1F1B", 2)])
def test_tied_weights_shared_unevenly_across_processes(schedule, world):
    """TiedChain on one stage per rank: a.weight's copies on ranks 0 and 3, b's on ranks 1, 2
    and 3, so ranks hold different sets of tied parameters and b's sum spans three ranks
    (exchanged by number, in one global pair order)."""
    res, _ = _launch(world, "case_zoo", "TiedChain", schedule, 4)
    _assert_ok(res, world)


@pytest.mark.parametrize("schedule,n", [("GPipe", 8), ("1F1B", 16), ("Interleaved1F1B", 16),
                                        ("ZBVZeroBubble", 32), ("DualPipeV", 16)])
def test_eight_ranks(schedule, n):
    """8 CPU processes (16 stages for the multi-stage schedules): the deeper pipelines of
    the scale-out issue, on CPUs."""
    res, _ = _launch(8, "case_zoo", "MultiMLP", schedule, n, timeout=300)
    _assert_ok(res, 8)


@pytest.mark.parametrize("schedule,world", [("GPipe", 2), ("1F1B", 2), ("1F1B", 4),
                                            ("Interleaved1F1B", 2), ("ZBVZeroBubble", 2)])
def test_kwargs_with_tracer(schedule, world):
    res, _ = _launch(world, "case_kwargs", schedule, 4)
    _assert_ok(res, world)


@pytest.mark.parametrize("schedule,world", [("InterleavedZeroBubble", 2), ("ZBVZeroBubble", 2),
                                            ("1F1B", 2), ("InterleavedZeroBubble", 4)])
def test_custom_dw(schedule, world):
    res, _ = _launch(world, "case_custom_dw", schedule, 4 if world == 2 else 8)
    _assert_ok(res, world)


@pytest.mark.parametrize("schedule", ["GPipe", "1F1B", "Interleaved1F1B", "LoopedBFS",
                                      "InterleavedZeroBubble"])
def test_eval_inference_and_return_outputs(schedule):
    res, _ = _launch(2, "case_eval", schedule, 4)
    _assert_ok(res, 2)


@pytest.mark.parametrize("schedule", ["GPipe", "1F1B"])
def test_multi_iter(schedule):
    res, _ = _launch(2, "case_multi_iter", schedule, 4, 20)
    _assert_ok(res, 2)


@pytest.mark.parametrize("name", ["VShaped", "Unbalanced", "DualPipeVCustomFns"])
def test_custom_schedules(name):
    res, _ = _launch(2, "case_custom_schedule", name, 2 if name != "DualPipeVCustomFns" else 4)
    _assert_ok(res, 2)


def test_pipelines_in_subgroups():
    res, _ = _launch(4, "case_subgroups")
    _assert_ok(res, 4)


def case_failed_step_breaks_pipeline():
    """After a step fails on some rank (its loss_fn raises once, caught), every later step
    of that pipeline raises instead of pairing stale messages with new ones."""
    import pipec
    import test_schedules as ts
    from pipec.pipelining import PipelineStage, ScheduleGPipe
    rank, world = _setup(timeout=10)
    model = ts.new_multimlp(2, DEV)
    stage = PipelineStage(model.layers[rank], rank, 2, DEV)
    calls = [0]

    def loss_fn(out, target):
        calls[0] += 1
        if calls[0] == 2:
            raise ValueError("boom")
        return ts.mse_sum(out, target)

    sched = ScheduleGPipe(stage, 4, loss_fn=loss_fn)
    x, t = _data(0, 8, ts.D_HID, "float", ts.D_HID)
    errors = []
    for _ in range(2):
        try:
            with pipec.no_grad():
                sched.eval(*((x,) if rank == 0 else ()), **({"target": t} if rank == 1 else {}))
        except Exception as e:  # noqa: BLE001 - recorded and checked below
            errors.append(e)
    import pipec.distributed as dist
    dist.barrier()  # rank 0's second step sends into rank 1's mailbox: keep rank 1 alive
    if rank == 1:
        assert "boom" in str(errors[0]) and "earlier step" in str(errors[1]), errors
    else:  # rank 0 only sends in eval: its first step succeeded
        assert not errors, errors
    print(f"OK broken rank {rank}", flush=True)


def case_skip_refused_on_nccl():
    """On NCCL a value that skips stages across processes is refused at set-up with a clear
    error (NCCL matches by order, and the lowered orders only order consecutive stages)."""
    import test_schedules as ts
    from model_registry import SkipConnections
    from pipec.pipelining import ScheduleZBVZeroBubble, pipeline
    import pipec
    rank, world = _setup()
    pipec.manual_seed(3)
    model = SkipConnections(ts.D_HID).to(DEV)
    x, t = _data(0, 8, ts.D_HID, "float", ts.D_HID)
    pipe = pipeline(model, (pipe_chunk(x, 4),))
    mine = [rank, 3 - rank]
    sched = ScheduleZBVZeroBubble([pipe.build_stage(s, DEV) for s in mine], 4,
                                  loss_fn=ts.mse_sum)
    try:
        sched.step(*((x,) if rank == 0 else ()), **({"target": t} if rank == 0 else {}))
    except NotImplementedError as e:
        assert "skip connection" in str(e), str(e)
        print(f"OK refused rank {rank}", flush=True)
        return
    raise AssertionError("a skip connection across processes ran over NCCL")


@pytest.mark.nccl_ranks
def test_skip_connection_refused_on_nccl():
    res, _ = _launch(2, "case_skip_refused_on_nccl", backend="nccl")
    _assert_ok(res, 2)


def case_stage_on_other_gpu():
    """Over NCCL each rank's stages must be on the communicator's GPU. With every rank's
    stage on the other rank's GPU, set-up fails on every rank with an error naming both
    devices, before any transfer (where the peer would wait out its timeout)."""
    import test_schedules as ts
    from pipec.pipelining import PipelineStage, Schedule1F1B
    rank, world = _setup(timeout=30)
    other = f"cuda:{(rank + 1) % world}"
    model = ts.new_multimlp(world, other)
    stage = PipelineStage(model.layers[rank], rank, world, other)
    sched = Schedule1F1B(stage, 4, loss_fn=ts.mse_sum)
    x, t = _data(0, 8, ts.D_HID, "float", ts.D_HID)
    t0 = time.monotonic()
    try:
        sched.step(*((x.to(other),) if rank == 0 else ()),
                   **({"target": t.to(other)} if rank == world - 1 else {}))
    except Exception as e:
        msg = str(e)
        assert f"stage {rank} is on {other}" in msg and f"memory of cuda:{rank}" in msg, msg
        assert time.monotonic() - t0 < 20
        print(f"OK wrong GPU rank {rank}", flush=True)
        return
    raise AssertionError("a stage on another rank's GPU ran over NCCL")


@pytest.mark.multigpu
def test_stage_on_another_gpu_is_refused_on_nccl():
    res, _ = _launch(2, "case_stage_on_other_gpu", backend="nccl")
    _assert_ok(res, 2)


def case_missing_inputs():
    """Rank 0 (stage 0) calls step() without the inputs: every rank raises a ValueError
    naming rank 0 at the first step, none waits for a timeout."""
    import test_schedules as ts
    from pipec.pipelining import PipelineStage, Schedule1F1B
    rank, world = _setup(timeout=30)
    model = ts.new_multimlp(world, DEV)
    stage = PipelineStage(model.layers[rank], rank, world, DEV)
    sched = Schedule1F1B(stage, 4, loss_fn=ts.mse_sum)
    _, t = _data(0, 8, ts.D_HID, "float", ts.D_HID)
    t0 = time.monotonic()
    try:
        sched.step(**({"target": t} if rank == world - 1 else {}))
    except ValueError as e:
        assert "rank 0 called step()/eval() without them" in str(e), str(e)
        assert time.monotonic() - t0 < 10
        print(f"OK missing inputs rank {rank}", flush=True)
        return
    raise AssertionError("a step without inputs ran")


def case_mode_change():
    """model.eval() after a training step: a stage without mode-dependent code keeps its
    runtime (eval runs, equal to the eager model); one with dropout refuses (rank 0), and
    the other rank stops with an error instead of waiting."""
    import pipec
    import test_schedules as ts
    from pipec import nn
    from pipec.pipelining import PipelineStage, ScheduleGPipe
    rank, world = _setup(timeout=10)
    for dropout in (False, True):
        model = ts.new_multimlp(2, DEV)
        mod = model.layers[rank]
        if dropout and rank == 0:
            mod = nn.Sequential(mod, nn.Dropout(0.5))
        sched = ScheduleGPipe(PipelineStage(mod, rank, 2, DEV), 4, loss_fn=ts.mse_sum)
        x, t = _data(0, 8, ts.D_HID, "float", ts.D_HID)
        args, kw = ((x,), {}) if rank == 0 else ((), {"target": t})
        sched.step(*args, **kw)
        mod.eval()
        try:
            out = sched.eval(*args, **kw)
        except (RuntimeError, pipec.PipelineError) as e:
            assert dropout, f"no dropout, yet: {e}"
            assert rank == 1 or "changed training mode" in str(e), str(e)
            print(f"OK rank {rank} refused with dropout", flush=True)
            continue
        assert not dropout, "a dropout stage ran eval() with its training-mode trace"
        if rank == 1:
            with pipec.no_grad():
                ts.assert_close(out, model(x), "eval after mod.eval()")
        print(f"OK rank {rank} eval without dropout", flush=True)


def test_mode_change_across_processes():
    res, _ = _launch(2, "case_mode_change")
    assert res.returncode == 0, res.stdout + res.stderr
    for r in (0, 1):
        assert f"[rank{r}]: OK rank {r} eval without dropout" in res.stdout, res.stdout
        assert f"[rank{r}]: OK rank {r} refused with dropout" in res.stdout, res.stdout


def case_baked_size_on_another_rank():
    """A Pipe traced on 4-row microbatches whose second stage (rank 1) divides by
    x.shape[0]: run on 8-row microbatches, rank 0 (which holds the inputs, and the Pipe
    with every stage's Program) traces again, sees rank 1's stage differ and refuses;
    rank 1 stops with an error instead of computing with the baked size."""
    import pipec
    from pipec import nn
    from pipec.pipelining import ScheduleGPipe, pipe_split, pipeline

    class Baked(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(8, 8)
            self.b = nn.Linear(8, 8)

        def forward(self, x):
            h = self.a(x)
            pipe_split()
            return self.b(h) / x.shape[0]

    rank, world = _setup(timeout=10)
    pipec.manual_seed(0)
    model = Baked()
    pipe = pipeline(model, (pipec.randn(4, 8),))
    sched = ScheduleGPipe(pipe.build_stage(rank, DEV), 2)
    x = pipec.randn(16, 8)
    try:
        sched.eval(x) if rank == 0 else sched.eval()
    except ValueError as e:
        assert rank == 0 and "were traced with" in str(e), str(e)
        print(f"OK rank {rank} refused", flush=True)
        return
    except pipec.PipelineError as e:
        assert rank == 1, str(e)
        print(f"OK rank {rank} stopped", flush=True)
        return
    raise AssertionError("a baked size ran on other shapes")


def test_baked_size_on_another_rank_is_refused():
    out, _ = _spawn(2, "case_baked_size_on_another_rank")
    for r in (0, 1):
        assert out[r][0] == 0 and "OK" in out[r][1], out[r][1] + out[r][2]


def test_missing_inputs_are_named_on_every_rank():
    res, _ = _launch(2, "case_missing_inputs")
    _assert_ok(res, 2)


def case_requires_grad_changed():
    """Stage 0's parameters are frozen at the first step (so no gradient is expected for
    its output) and unfrozen later: rank 0 refuses to send an output whose gradient would
    be lost; rank 1 gets a PipelineError when rank 0 leaves, not wrong gradients."""
    import pipec
    import test_schedules as ts
    from pipec.pipelining import PipelineStage, Schedule1F1B
    rank, world = _setup(timeout=10)
    model = ts.new_multimlp(2, DEV)
    stage = PipelineStage(model.layers[rank], rank, 2, DEV)
    sched = Schedule1F1B(stage, 4, loss_fn=ts.mse_sum)
    x, t = _data(0, 8, ts.D_HID, "float", ts.D_HID)
    args = (x,) if rank == 0 else ()
    kw = {"target": t} if rank == 1 else {}
    if rank == 0:
        for p in model.layers[0].parameters():
            p.requires_grad_(False)
    sched.step(*args, **kw)
    if rank == 0:
        for p in model.layers[0].parameters():
            p.requires_grad_(True)
        try:
            sched.step(*args, **kw)
        except RuntimeError as e:
            assert "now requires grad" in str(e), str(e)
            print("OK refused rank 0", flush=True)
            return
        raise AssertionError("unfreezing went unnoticed")
    try:
        sched.step(*args, **kw)
    except pipec.PipelineError as e:
        print(f"OK rank 1 stopped: {str(e)[:80]}", flush=True)
        return
    raise AssertionError("rank 1 finished a step without rank 0")


def test_requires_grad_change_is_refused():
    out, _ = _spawn(2, "case_requires_grad_changed")
    for r in (0, 1):
        assert out[r][0] == 0 and "OK" in out[r][1], out[r][1] + out[r][2]


def test_failed_step_breaks_the_pipeline():
    res, _ = _launch(2, "case_failed_step_breaks_pipeline")
    _assert_ok(res, 2)


def test_shape_and_dtype_mismatch():
    res, _ = _launch(2, "case_shape_mismatch")
    _assert_ok(res, 2)


def _spawn(world, case, *args, timeout=60, backend="tcp"):
    """Start the ranks of `case` directly (no launcher: every rank's own exit is seen)."""
    import socket
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        port = sk.getsockname()[1]
    procs = []
    for r in range(world):
        env = _env(backend)
        env.update(RANK=str(r), WORLD_SIZE=str(world), LOCAL_RANK=str(r),
                   LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        procs.append(subprocess.Popen([sys.executable, HERE, case, *map(str, args)], cwd=ROOT,
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    t0 = time.monotonic()
    out = []
    try:
        for p in procs:
            so, se = p.communicate(timeout=timeout)
            out.append((p.returncode, so, se))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return out, time.monotonic() - t0


@pytest.mark.parametrize("backend", ["tcp", pytest.param("nccl", marks=pytest.mark.nccl_ranks)])
@pytest.mark.parametrize("mode", ["raise", "kill"])
def test_failing_rank_is_named_not_a_hang(mode, backend):
    out, secs = _spawn(2, "case_rank_fails", mode, backend=backend)
    rc0, so0, se0 = out[0]
    assert rc0 == 3, so0 + se0
    assert "PipelineError" in so0, so0 + se0
    if backend == "tcp":  # NCCL reports the abort, not who caused it
        assert "rank 1" in so0, so0 + se0
    assert secs < 30, secs  # well within the 8 s timeout plus start-up, never a hang
    rc1, so1, se1 = out[1]
    assert rc1 != 0
    if mode == "raise":
        assert "loss_fn failed on purpose" in se1, se1


@pytest.mark.parametrize("what", ["schedule", "n_microbatches", "sum_tied_grads", "loss_fn"])
def test_ranks_that_disagree_are_refused(what):
    res, _ = _launch(2, "case_disagree", what)
    assert res.returncode == 0, res.stdout + res.stderr
    for r, other in ((0, 1), (1, 0)):
        line = [ln for ln in res.stdout.splitlines() if ln.startswith(f"[rank{r}]: rank {r} refused")]
        assert line, res.stdout + res.stderr
        assert f"rank {other} runs a different pipeline" in line[0], line[0]


# ---- GPU stages, messages over TCP through the host (runs on one GPU) ----

@pytest.mark.cuda
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_schedule_numerics_gpu_stages_over_tcp(schedule):
    res, _ = _launch(2, "case_numerics", schedule, 8, "tracer", "mse_mean",
                     backend="tcp-cuda")
    _assert_ok(res, 2)


@pytest.mark.cuda
@pytest.mark.parametrize("case,args", [
    ("case_numerics", ("Interleaved1F1B", 8, "manual", "cross_entropy")),
    ("case_kwargs", ("1F1B", 4)), ("case_custom_dw", ("ZBVZeroBubble", 4)),
    ("case_eval", ("Interleaved1F1B", 4)), ("case_zoo", ("ExampleCode", "1F1B", 4)),
    ("case_zoo", ("SkipConnections", "ZBVZeroBubble", 4)),
    ("case_custom_schedule", ("DualPipeVCustomFns", 4)), ("case_shape_mismatch", ())])
def test_ported_cases_gpu_stages_over_tcp(case, args):
    res, _ = _launch(2, case, *args, backend="tcp-cuda")
    _assert_ok(res, 2)


# ---- the same over NCCL: one GPU per rank, or ranks sharing one GPU (gpu_share.py) ----

@pytest.mark.nccl_ranks
@pytest.mark.parametrize("frontend", ["tracer", "manual"])
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_schedule_numerics_nccl(schedule, frontend):
    res, _ = _launch(2, "case_numerics", schedule, 8, frontend,
                     "mse_sum" if frontend == "tracer" else "mse_mean", backend="nccl")
    _assert_ok(res, 2)


@pytest.mark.nccl_ranks
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_large_messages_nccl(schedule):
    """32 MiB activations and gradients, so every send waits for its receive (rendezvous):
    the lowered orders must not put a rank's comm stream behind a send whose receive the
    peer queued behind a transfer waiting on this rank (test_nccl_ordering.py checks the
    same on a model; here NCCL runs it)."""
    res, _ = _launch(2, "case_large_messages", schedule, 4, 1024, 8192, backend="nccl",
                     timeout=240)
    _assert_ok(res, 2)


@pytest.mark.parametrize("backend,rows", [("tcp", 8), pytest.param("nccl", 8192,
                                                                     marks=pytest.mark.nccl_ranks)])
def test_crossing_transfers(backend, rows):
    """CROSSING_ORDER: on NCCL with 32 MiB messages this deadlocks when the sends and
    receives between two compute actions are issued one by one (PIPEC_NCCL_GROUP=0); TCP
    buffers early arrivals, so there it checks the order's numerics."""
    res, _ = _launch(2, "case_crossing_transfers", 1024 if backend == "nccl" else 16, rows,
                     backend=backend, timeout=240)
    _assert_ok(res, 2)


@pytest.mark.nccl_ranks
@pytest.mark.parametrize("case,args", [
    *[("case_numerics", (sched, 8, "tracer", "mse_sum")) for sched in SCHEDULES],
    ("case_zoo", ("TiedChain", "1F1B", 4)), ("case_zoo", ("TiedWeights", "LoopedBFS", 4))],
    ids=lambda v: v if isinstance(v, str) else "-".join(map(str, v)))
def test_four_ranks_nccl(case, args):
    """Four NCCL ranks (on fewer GPUs they share them): every schedule with each rank talking
    to two neighbours, the V schedules' four-rank placement, and tied-weight sums spanning
    three ranks and the pipeline's two ends."""
    res, _ = _launch(4, case, *args, backend="nccl", timeout=180)
    _assert_ok(res, 4)


@pytest.mark.nccl_ranks
@pytest.mark.parametrize("case,args", [
    ("case_kwargs", ("1F1B", 4)), ("case_custom_dw", ("ZBVZeroBubble", 4)),
    ("case_eval", ("Interleaved1F1B", 4)), ("case_multi_iter", ("1F1B", 4, 20)),
    ("case_custom_schedule", ("Unbalanced", 2)),
    ("case_custom_schedule", ("DualPipeVCustomFns", 4)), ("case_shape_mismatch", ()),
    ("case_zoo", ("TiedWeights", "1F1B", 4))])
def test_ported_cases_nccl(case, args):
    res, _ = _launch(2, case, *args, backend="nccl")
    _assert_ok(res, 2)


def test_readme_example_runs():
    """examples/pipeline_multiproc.py (the README's command) trains: the loss goes down."""
    cmd = [sys.executable, "-m", "pipec.run", "--nproc-per-node", "2",
           os.path.join(ROOT, "examples", "pipeline_multiproc.py"), "--schedule",
           "ZBVZeroBubble", "--steps", "6"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT, env=_env())
    assert res.returncode == 0, res.stdout + res.stderr
    losses = [float(ln.rsplit(" ", 1)[1]) for ln in res.stdout.splitlines() if "loss" in ln]
    assert len(losses) == 2 and losses[-1] < losses[0], res.stdout


if __name__ == "__main__":
    case = sys.argv[1]
    globals()[case](*sys.argv[2:])

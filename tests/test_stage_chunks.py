"""PipelineStage's per-microbatch methods (torch's forward_one_chunk, backward_one_chunk,
backward_weight_one_chunk, the local hand-offs, clear_runtime_states, scale_grads), driven
by hand in one process the way torch's schedules drive them.

  - a GPipe-style loop over 2 hand-written stages and 4 microbatches (forward all, then
    backward all, activations and gradients passed with set_local_fwd_input /
    get_local_bwd_output / set_local_bwd_input): outputs, losses and every parameter
    gradient equal the unsplit model's per-microbatch backward; the same with phase I and W
    split (full_backward=False then backward_weight_one_chunk), on CPU and CUDA;
  - stages of a Pipe (build_stage) driven the same way;
  - torch's test_stage cases: a counting dw_builder runs once per microbatch (at B with a
    full backward, at W otherwise) and W without I raises an AssertionError naming
    backward_one_chunk; test_output_chunks_memory_usage (fwd_cache empty after the
    backward, output_chunks only on the last stage, emptied by clear_runtime_states);
  - has_backward False makes backward a no-op; scale_grads; the errors.

Tolerance: the same kernels on the same microbatches as the reference; gradients are sums
of 4 microbatches in float32 (rtol 1e-5, atol 1e-6 x max|ref|).
"""
import copy

import numpy as np
import pytest

import pipec
from pipec import nn
from pipec.pipelining import PipelineStage, pipeline

from model_registry import MLPModule, MultiMLP

DEVICE_KINDS = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
D = 16
N_MB = 4
BATCH = 16


def _np(t):
    return t.detach().cpu().numpy().astype(np.float64)


def _mse_sum(out, target):
    return ((out - target) ** 2).sum()


def _close_grads(modules, ref, scale=1.0):
    ref_grads = {k: p.grad for k, p in ref.named_parameters()}
    seen = set()
    for prefix, mod in modules:
        for name, p in mod.named_parameters():
            r = _np(ref_grads[prefix + name]) * scale
            assert p.grad is not None, prefix + name
            np.testing.assert_allclose(_np(p.grad), r, rtol=1e-5,
                                       atol=1e-6 * max(1.0, np.abs(r).max()),
                                       err_msg=prefix + name)
            seen.add(prefix + name)
    assert seen == set(ref_grads)


def _drive(stages, x, target, split_w=False):
    """GPipe by hand: every microbatch forward through the stages, then every one backward.
    Returns (outputs, losses)."""
    for st in stages:
        st.has_backward = True
    xs, ts = pipec.tensor_split(x, N_MB, 0), pipec.tensor_split(target, N_MB, 0)
    outs, losses = [], []
    for m in range(N_MB):
        out = stages[0].forward_one_chunk(m, (xs[m],))
        for st in stages[1:]:
            st.set_local_fwd_input(out, m)
            out = st.forward_one_chunk(m)
        outs.append(out)
    for m in range(N_MB):
        loss = _mse_sum(outs[m], ts[m])
        losses.append(loss)
        stages[-1].backward_one_chunk(m, loss=loss, full_backward=not split_w)
        for i in range(len(stages) - 2, -1, -1):
            stages[i].set_local_bwd_input(stages[i + 1].get_local_bwd_output(m), m)
            stages[i].backward_one_chunk(m, full_backward=not split_w)
    if split_w:
        for m in range(N_MB):
            for st in stages:
                st.backward_weight_one_chunk(m)
    return outs, losses


def _reference(ref, x, target):
    outs, losses = [], []
    for xm, tm in zip(pipec.tensor_split(x, N_MB, 0), pipec.tensor_split(target, N_MB, 0)):
        out = ref(xm)
        loss = _mse_sum(out, tm)
        loss.backward()
        outs.append(out)
        losses.append(loss)
    return outs, losses


@pytest.mark.parametrize("kind", DEVICE_KINDS)
@pytest.mark.parametrize("split_w", [False, True])
def test_hand_driven_stages_match_the_model(split_w, kind):
    dev = "cuda:0" if kind == "cuda" else "cpu"
    pipec.manual_seed(0)
    model = nn.Sequential(MLPModule(D), MLPModule(D)).to(dev)
    ref = copy.deepcopy(model)
    stages = [PipelineStage(model[i], i, 2, dev) for i in range(2)]
    x = pipec.randn(BATCH, D, device=dev)
    target = pipec.randn(BATCH, D, device=dev)
    outs, losses = _drive(stages, x, target, split_w)
    ref_outs, ref_losses = _reference(ref, x, target)
    for a, b in zip(outs, ref_outs):
        np.testing.assert_array_equal(_np(a), _np(b))
    np.testing.assert_allclose([_np(v) for v in losses], [_np(v) for v in ref_losses],
                               rtol=1e-6)
    _close_grads([("0.", model[0]), ("1.", model[1])], ref)
    assert not stages[0].fwd_cache and not stages[1].fwd_cache
    assert not stages[0].dw_runner and not stages[1].dw_runner


def test_pipe_stages_driven_by_hand():
    pipec.manual_seed(1)
    model = MultiMLP(D, n_layers=2)
    ref = copy.deepcopy(model)
    x = pipec.randn(BATCH, D)
    target = pipec.randn(BATCH, D)
    pipe = pipeline(model, (pipec.tensor_split(x, N_MB, 0)[0],), split_spec=model.split_spec)
    stages = [pipe.build_stage(i, "cpu") for i in range(2)]
    outs, _ = _drive(stages, x, target)
    for a, b in zip(outs, _reference(ref, x, target)[0]):
        np.testing.assert_array_equal(_np(a), _np(b))
    _close_grads([("", pipe.get_stage_module(i)) for i in range(2)], ref)


def test_dw_builder_runs_once_per_microbatch_and_w_needs_i():
    """torch's test_custom_dw_with_fb_schedule and test_custom_dw_errors."""
    pipec.manual_seed(2)
    model = nn.Sequential(MLPModule(D), MLPModule(D))
    counts = [0, 0]

    def builder(i):
        def build():
            def run():
                counts[i] += 1
            return run
        return build

    stages = [PipelineStage(model[i], i, 2, "cpu", dw_builder=builder(i)) for i in range(2)]
    x, target = pipec.randn(BATCH, D), pipec.randn(BATCH, D)
    _drive(stages, x, target)
    assert counts == [N_MB, N_MB]
    _drive(stages, x, target, split_w=True)
    assert counts == [2 * N_MB, 2 * N_MB]
    with pytest.raises(AssertionError, match="backward_one_chunk"):
        stages[0].backward_weight_one_chunk(0)


def test_output_chunks_and_clear_runtime_states():
    """torch's test_output_chunks_memory_usage: after a training step nothing stays in
    fwd_cache; only the last stage keeps its outputs, until clear_runtime_states()."""
    pipec.manual_seed(3)
    model = nn.Sequential(MLPModule(D), MLPModule(D))
    stages = [PipelineStage(model[i], i, 2, "cpu") for i in range(2)]
    assert stages[1].output_chunks == []
    _drive(stages, pipec.randn(BATCH, D), pipec.randn(BATCH, D))
    assert all(not st.fwd_cache for st in stages)
    assert len(stages[1].output_chunks) == N_MB and stages[0].output_chunks == []
    for st in stages:
        st.clear_runtime_states()
    assert stages[1].output_chunks == []


def test_no_backward_without_has_backward_and_scale_grads():
    pipec.manual_seed(4)
    mod = MLPModule(D)
    st = PipelineStage(mod, 0, 1, "cpu")
    out = st.forward_one_chunk(0, (pipec.randn(4, D),))
    st.backward_one_chunk(0, loss=out.sum())  # has_backward is False: nothing happens
    assert all(p.grad is None for p in mod.parameters())
    assert 0 in st.fwd_cache
    st.has_backward = True
    st.backward_one_chunk(0, loss=out.sum())
    g = _np(mod.net1.weight.grad)
    st.scale_grads(4)
    np.testing.assert_allclose(_np(mod.net1.weight.grad), g / 4, rtol=1e-6)
    st.scale_grads(1)
    np.testing.assert_allclose(_np(mod.net1.weight.grad), g / 4, rtol=1e-6)


def test_errors():
    model = nn.Sequential(MLPModule(D), MLPModule(D))
    first, last = (PipelineStage(model[i], i, 2, "cpu") for i in range(2))
    for st in (first, last):
        st.has_backward = True
    x = pipec.randn(4, D)
    out = first.forward_one_chunk(0, (x,))
    with pytest.raises(RuntimeError, match="already run forward"):
        first.forward_one_chunk(0, (x,))
    with pytest.raises(RuntimeError, match="set_local_fwd_input"):
        last.forward_one_chunk(0)
    with pytest.raises(RuntimeError, match="no forward"):
        last.backward_one_chunk(0, loss=out.sum())
    with pytest.raises(RuntimeError, match="set_local_bwd_input"):
        first.backward_one_chunk(0)
    last.forward_one_chunk(0, (out,))
    with pytest.raises(RuntimeError, match="needs the microbatch's loss"):
        last.backward_one_chunk(0)
    with pytest.raises(RuntimeError, match="backward_one_chunk first"):
        last.get_local_bwd_output(3)
    with pytest.raises(RuntimeError, match="forward of microbatch 5 failed"):
        first.forward_one_chunk(5, (pipec.randn(4, D + 1),))


class _Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(D, D)

    def forward(self, x, scale=None):
        return self.lin(x) * scale


def test_keyword_inputs_of_a_later_stage():
    """A non-first stage called with a keyword tensor: its bwd_cache holds the positional
    inputs' gradients only (what the previous stage's outputs need), as torch."""
    pipec.manual_seed(5)
    first, second = MLPModule(D), _Scaled()
    ref = [copy.deepcopy(first), copy.deepcopy(second)]
    stages = [PipelineStage(first, 0, 2, "cpu"), PipelineStage(second, 1, 2, "cpu")]
    for st in stages:
        st.has_backward = True
    x, scale = pipec.randn(4, D), pipec.randn(4, D)
    out = stages[0].forward_one_chunk(0, (x,))
    y = stages[1].forward_one_chunk(0, (out,), {"scale": scale})
    stages[1].backward_one_chunk(0, loss=y.sum())
    grads = stages[1].get_local_bwd_output(0)
    assert len(grads) == 1
    stages[0].set_local_bwd_input(grads, 0)
    stages[0].backward_one_chunk(0)
    ref[1](ref[0](x), scale=scale).sum().backward()
    _close_grads([("0.", first), ("1.", second)],
                 nn.Sequential(*ref))


def test_pipe_stage_with_skip_inputs_names_them():
    from model_registry import SkipConnections
    pipec.manual_seed(6)
    model = SkipConnections(D)
    x = pipec.randn(4, D)
    pipe = pipeline(model, (x,), split_spec=getattr(model, "split_spec", None))
    k = next(i for i in range(pipe.num_stages) if len(pipe.stage_wiring(i)[0]) > 1)
    st = pipe.build_stage(k, "cpu")
    st.set_local_fwd_input(pipec.randn(4, D), 0)
    with pytest.raises(RuntimeError, match="skip connections included"):
        st.forward_one_chunk(0)


def test_a_failed_backward_keeps_the_microbatch():
    model = nn.Sequential(MLPModule(D), MLPModule(D))
    first, last = (PipelineStage(model[i], i, 2, "cpu") for i in range(2))
    first.has_backward = last.has_backward = True
    out = first.forward_one_chunk(0, (pipec.randn(4, D),))
    with pytest.raises(RuntimeError, match="set_local_bwd_input"):
        first.backward_one_chunk(0)
    first.set_local_bwd_input(pipec.ones(4, D), 0)
    first.backward_one_chunk(0)  # the forward was kept
    assert model[0].net1.weight.grad is not None and 0 not in first.fwd_cache
    assert out.shape == (4, D)


def test_a_schedule_step_clears_hand_driven_state():
    from pipec.pipelining import ScheduleGPipe
    pipec.manual_seed(7)
    mod = MLPModule(D)
    st = PipelineStage(mod, 0, 1, "cpu")
    st.forward_one_chunk(0, (pipec.randn(4, D),))
    assert st.fwd_cache and st.output_chunks
    ScheduleGPipe(st, 2, loss_fn=_mse_sum).step(pipec.randn(4, D), target=pipec.randn(4, D))
    assert not st.fwd_cache and not st.output_chunks

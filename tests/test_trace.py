"""Traced C Programs (csrc/graph/program.h through pipec._C): tracing, replay, format,
splitting, constants and Python-backed calls, below the level of pipeline()/Pipe.

What is checked:
  - replaying a traced Program on inputs other than the traced ones equals the eager forward,
    for a range of ops (views, reductions, broadcasting with Python scalars, reflected
    operators, in-place ops, dtype casts, nn layers), and its autograd gives the eager input
    and parameter gradients: an op the tracer missed would show up as a stale constant;
  - a replay without custom Functions makes no Python-level call (sys.setprofile), one with
    them calls each Function's forward once per recorded call; num_python_calls counts them;
  - Program.format() lists inputs, params, constants, each recorded call and the pipe_split
    boundaries; marks and num_instructions match the model's structure;
  - make_const / external_tensor, split() wiring (per stage Programs agree with their
    in/param/out slot lists), tracing errors and clean-up.
Tolerance: replay runs the same kernels on the same shapes as the eager forward, so values
agree to rounding; rtol 1e-5 plus 1e-5 x (largest reference magnitude) (float32).
"""
import sys

import numpy as np
import pytest

import pipec
from pipec import _C, nn
from pipec.pipelining import pipe_split
from pipec.pipelining._IR import _flatten, _trace

from model_registry import (ExampleCode, MLPModuleWithDw, ModelWithKwargs, MultiMLP,
                            MultiMLPWithDw)

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
F = nn.functional


def np_(t):
    if isinstance(t, np.ndarray):
        return t.astype(np.float64)
    return t.detach().cpu().numpy().astype(np.float64)


def assert_close(a, r, what=""):
    a, r = np_(a), np_(r)
    assert a.shape == r.shape, f"{what}: shape {a.shape} != {r.shape}"
    scale = max(float(np.abs(r).max()) if r.size else 0.0, 1e-30)
    np.testing.assert_allclose(a, r, rtol=1e-5, atol=1e-5 * scale, err_msg=what)


def python_calls_during(fn, *args):
    names = []

    def prof(frame, event, arg):
        if event == "call":
            names.append(frame.f_code.co_name)

    sys.setprofile(prof)
    try:
        res = fn(*args)
    finally:
        sys.setprofile(None)
    return res, names


def externals_of(prog):
    return [prog.external_tensor(i) for i in range(len(prog.external_slots))]


class Lambda(nn.Module):
    """A model whose forward is f(self, x): its layers live on the module."""

    def __init__(self, f, d=8):
        super().__init__()
        self.f = f
        self.lin = nn.Linear(d, d)
        self.ln = nn.LayerNorm(d)
        self.w = nn.Parameter(pipec.randn(d, d) * 0.3)

    def forward(self, x):
        return self.f(self, x)


def _inplace_add(m, x):
    h = m.lin(x)
    h.add_(x)
    h.mul_(0.5)
    return h


def _iadd(m, x):
    h = x * 1.0
    h += m.lin(x)
    return h


OPS = {
    "linear_relu": lambda m, x: pipec.relu(m.lin(x)),
    "mm_param": lambda m, x: pipec.mm(x, m.w),
    "matmul_at": lambda m, x: x @ m.w,
    "layernorm": lambda m, x: m.ln(x),
    "gelu_tanh_sigmoid": lambda m, x: F.gelu(x) + pipec.tanh(x) * pipec.sigmoid(x),
    "softmax": lambda m, x: pipec.softmax(m.lin(x), -1),
    "log_softmax": lambda m, x: pipec.log_softmax(x, 1),
    "getitem_slice": lambda m, x: m.lin(x)[:, 2:6] * 1.0,
    "getitem_row": lambda m, x: m.lin(x)[1] + 0.0,
    "reshape_view": lambda m, x: m.lin(x).reshape(-1, 4).view(2, -1),
    "transpose_t_T": lambda m, x: x.t() @ m.lin(x).T.transpose(0, 1),
    "permute_contiguous": lambda m, x: x.permute(1, 0).contiguous(),
    "scalars_reflected": lambda m, x: 2.0 * x + 1.0 - (3.0 - x) / 2.0,
    "rtruediv_pow_neg": lambda m, x: -(1.0 / (x.abs() + 1.0)) ** 2,
    "exp_log_sqrt": lambda m, x: pipec.log(pipec.exp(x * 0.1)) + (x * x + 1.0).sqrt(),
    "sum_mean_dims": lambda m, x: x.sum(1, keepdim=True) * x.mean(0),
    "sum_all": lambda m, x: m.lin(x).sum(),
    "chunk_split": lambda m, x: pipec.chunk(x, 2, 1)[1] * pipec.split(x, 4, 1)[0],
    "cat_stack": lambda m, x: pipec.stack([pipec.cat([x, m.lin(x)], 1)] * 2, 0),
    "unsqueeze_squeeze_expand": lambda m, x: x[:1].squeeze(0).unsqueeze(0).expand(3, 8) * x,
    "flatten": lambda m, x: m.lin(x).flatten(),
    "clone_detach": lambda m, x: x.clone() * x.detach(),
    "maximum": lambda m, x: pipec.maximum(x, m.lin(x)),
    "compare_masks": lambda m, x: x * (m.lin(x) > x) + m.lin(x) * (0.25 >= x) * x.ge(-0.5),
    "iterate_rows": lambda m, x: pipec.stack([r * (k + 1) for k, r in enumerate(m.lin(x))]),
    "to_float64_and_back": lambda m, x: (x.to(pipec.float64) * 2).to(pipec.float32),
    "mse_loss": lambda m, x: F.mse_loss(m.lin(x), x),
    "inplace_add_mul": _inplace_add,
    "iadd": _iadd,
    "dropout_eval": lambda m, x: F.dropout(m.lin(x), 0.5, training=False),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", sorted(OPS))
def test_replay_equals_eager_on_new_inputs(op, device):
    pipec.manual_seed(0)
    m = Lambda(OPS[op]).to(device)
    x0 = pipec.randn(3, 8, device=device)
    prog, leaves, _, _ = _trace(m, (x0,), {}, None)
    assert leaves[0] is x0
    assert prog.marks == ()
    assert prog.num_python_calls == 0
    exts = externals_of(prog)
    assert all(t is not None for t in exts)
    x = pipec.randn(3, 8, device=device, requires_grad=True)  # not the traced input
    outs, calls = python_calls_during(prog.run, [x], exts)
    assert calls == [], f"replay ran Python: {calls}"
    ref = m(x)
    assert len(outs) == 1
    assert outs[0].dtype == ref.dtype and outs[0].device == ref.device
    assert_close(outs[0], ref, f"{op}: replay vs eager")
    # gradients: replay and eager from the same output gradient
    pipec.manual_seed(1)
    dout = pipec.randn(*ref.shape, device=device)
    pipec.autograd.backward([ref], [dout])
    ref_x = np_(x.grad)
    ref_p = {n: (None if p.grad is None else np_(p.grad)) for n, p in m.named_parameters()}
    x.grad = None
    m.zero_grad()
    pipec.autograd.backward([outs[0]], [dout])
    assert_close(x.grad, ref_x, f"{op}: input grad")
    for n, p in m.named_parameters():
        if ref_p[n] is None:
            assert p.grad is None, n
        else:
            assert_close(p.grad, ref_p[n], f"{op}: grad of {n}")


def test_replay_without_grad_records_nothing():
    pipec.manual_seed(0)
    m = MultiMLP(8, n_layers=2)
    x = pipec.randn(3, 8)
    prog, _, _, _ = _trace(m, (x,), {}, None)
    with pipec.no_grad():
        out, = prog.run([x], externals_of(prog))
    assert out.grad_fn is None and not out.requires_grad
    out, = prog.run([x], externals_of(prog))
    assert out.grad_fn is not None and out.requires_grad     # parameters require grad


def test_trace_leaves_model_and_tensors_alone():
    pipec.manual_seed(0)
    m = MultiMLP(8, n_layers=2)
    x = pipec.randn(3, 8)
    before = {n: np_(p) for n, p in m.named_parameters()}
    prog, _, _, _ = _trace(m, (x,), {}, None)
    assert not _C._trace_active()
    for n, p in m.named_parameters():
        assert p.grad is None and p.requires_grad
        np.testing.assert_array_equal(np_(p), before[n])
    assert not x.requires_grad


def test_format_lists_calls_params_and_boundaries():
    pipec.manual_seed(0)
    m = ExampleCode(8, splits=3)
    x = pipec.randn(2, 8)
    prog, _, _, _ = _trace(m, (x,), {}, None)
    # mm, relu, clone, linear | relu, add, mm | linear, relu
    assert prog.num_instructions == 9
    assert prog.marks == (4, 7)
    assert len(prog.input_slots) == 1 and len(prog.output_slots) == 1
    # mm_param0, cval, lin0.{weight,bias}, mm_param1, lin1.{weight,bias}
    assert len(prog.external_slots) == 7
    text = prog.format()
    lines = text.splitlines()
    assert lines[0].startswith("program(%") and "params(" in lines[0]
    assert text.count("---- pipe_split ----") == 2
    body = [ln.strip() for ln in lines[1:] if "=" in ln]
    assert [ln.split(" = ")[1].split("(")[0] for ln in body] == [
        "mm", "relu", "clone", "linear", "relu", "add", "mm", "linear", "relu"]
    assert text.count("[param]") == 7          # mm, clone, linear (w, b), mm, linear (w, b)
    assert "[const]" not in text
    assert lines[-1].strip().startswith("return (%")
    # the boundaries fall between the right calls
    i1, i2 = [k for k, ln in enumerate(lines) if "pipe_split" in ln]
    assert "linear" in lines[i1 - 1] and "relu" in lines[i1 + 1]
    assert "mm" in lines[i2 - 1] and "linear" in lines[i2 + 1]


def test_split_pieces_agree_with_their_wiring():
    pipec.manual_seed(0)
    m = ExampleCode(8, splits=4)
    x = pipec.randn(2, 8)
    prog, _, _, _ = _trace(m, (x,), {}, None)
    pieces = prog.split()
    assert len(pieces) == 4
    seen_ext = []
    for i, (p, ins, exts, outs) in enumerate(pieces):
        assert len(p.input_slots) == len(ins)
        assert len(p.external_slots) == len(exts)
        assert len(p.output_slots) == len(outs)
        assert p.marks == ()
        assert "pipe_split" not in p.format()
        assert p.num_instructions > 0
        assert set(exts) <= set(prog.external_slots)
        seen_ext += exts
        # a split piece holds no trace-time tensors
        assert all(p.external_tensor(k) is None for k in range(len(exts)))
    assert sum(p.num_instructions for p, *_ in pieces) == prog.num_instructions
    assert sorted(seen_ext) == sorted(prog.external_slots)      # each used by one stage
    # every stage input is the model input or an earlier stage's output
    made = set(prog.input_slots)
    for p, ins, exts, outs in pieces:
        assert set(ins) <= made
        made |= set(outs)
    assert set(prog.output_slots) <= set(pieces[-1][3])
    # the cloned buffer (stage 0) goes to stage 1 alongside the activation
    assert len(pieces[1][1]) == 2 and set(pieces[1][1]) == set(pieces[0][3])


def test_replay_of_split_pieces_chains_to_the_model_output():
    pipec.manual_seed(0)
    m = ExampleCode(8, splits=5)
    x = pipec.randn(2, 8)
    prog, _, _, _ = _trace(m, (x,), {}, None)
    ext_t = dict(zip(prog.external_slots, externals_of(prog)))
    x2 = pipec.randn(5, 8)
    env = {prog.input_slots[0]: x2}
    for p, ins, exts, outs in prog.split():
        res, calls = python_calls_during(p.run, [env[s] for s in ins], [ext_t[s] for s in exts])
        assert calls == []
        env.update(zip(outs, res))
    assert_close(env[prog.output_slots[0]], m(x2))


def test_python_calls_for_custom_functions():
    pipec.manual_seed(0)
    m = MultiMLPWithDw(8, n_layers=3)
    x = pipec.randn(2, 8)
    prog, _, _, _ = _trace(m, (x,), {}, m.split_spec)
    # the Function bodies (mm, t, add) are not recorded, only the calls themselves
    assert prog.num_instructions == 9          # per layer: fn, relu, fn
    assert prog.num_python_calls == 6
    assert prog.format().count("custom_function(") == 6
    assert len(prog.marks) == 2
    (out,), calls = python_calls_during(prog.run, [x], externals_of(prog))
    assert calls.count("forward") == 6 and calls.count("apply") == 6
    assert_close(out, m(x))
    pieces = prog.split()
    assert [p.num_python_calls for p, *_ in pieces] == [2, 2, 2]
    # a plain model, for contrast
    plain, _, _, _ = _trace(MultiMLP(8, 3), (x,), {}, None)
    assert plain.num_python_calls == 0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("toggled", [False, True])
def test_custom_function_replay_gradients(device, toggled):
    """MLPModuleWithDw through a replayed Program: input and weight gradients equal the
    eager ones (toggled: dX from backward, dW from compute_dW)."""
    pipec.manual_seed(0)
    m = MLPModuleWithDw(8).to(device)
    if toggled:
        m.toggle()
    x0 = pipec.randn(4, 8, device=device)
    prog, _, _, _ = _trace(m, (x0,), {}, None)
    assert prog.num_python_calls == 2
    x = pipec.randn(4, 8, device=device, requires_grad=True)
    dout = pipec.randn(4, 8, device=device)

    def grads():
        if toggled:
            m.compute_dW()
        g = {n: np_(p.grad) for n, p in m.named_parameters()}
        m.zero_grad()
        gx = np_(x.grad)
        x.grad = None
        return gx, g

    ref = m(x)
    pipec.autograd.backward([ref], [dout])
    ref_x, ref_p = grads()
    (out,), calls = python_calls_during(prog.run, [x], externals_of(prog))
    assert calls.count("forward") == 2
    assert_close(out, ref)
    pipec.autograd.backward([out], [dout])
    got_x, got_p = grads()
    assert_close(got_x, ref_x, "input grad")
    assert set(got_p) == set(ref_p)
    for n in ref_p:
        assert_close(got_p[n], ref_p[n], n)


def test_captured_default_kwarg_is_a_constant():
    pipec.manual_seed(0)
    m = ModelWithKwargs()
    x = pipec.randn(ModelWithKwargs.DEFAULT_BATCH_SIZE, ModelWithKwargs.DEFAULT_DHID)
    prog, leaves, _, _ = _trace(m, (x,), {}, None)
    assert len(leaves) == 1
    params = {id(p) for p in m.parameters()}
    exts = externals_of(prog)
    not_params = [i for i, t in enumerate(exts) if id(t) not in params]
    assert len(not_params) == 1                 # the default y
    i = not_params[0]
    y_default = exts[i]
    assert y_default.shape == (256, 512)
    n_ext = len(prog.external_slots)
    prog.make_const(i)
    assert len(prog.external_slots) == n_ext - 1
    assert prog.format().count("[const]") == 1
    out, = prog.run([x], externals_of(prog))
    assert_close(out, m(x))
    with pytest.raises(Exception):
        prog.make_const(len(prog.external_slots))     # no such external


def test_run_argument_errors():
    pipec.manual_seed(0)
    m = MultiMLP(8, n_layers=1)
    x = pipec.randn(2, 8)
    prog, _, _, _ = _trace(m, (x,), {}, None)
    exts = externals_of(prog)
    with pytest.raises(ValueError):
        prog.run([], exts)
    with pytest.raises(ValueError):
        prog.run([x, x], exts)
    with pytest.raises(ValueError):
        prog.run([x], exts[:-1])
    with pytest.raises(TypeError):
        prog.run([np.ones((2, 8), np.float32)], exts)
    assert prog.external_tensor(len(exts)) is None
    assert prog.external_tensor(-1) is None


def test_trace_errors_clean_up():
    x = pipec.randn(2, 8)
    _C._trace_begin()
    try:
        with pytest.raises(RuntimeError):
            _C._trace_begin()                  # one trace per thread
    finally:
        _C._trace_abort()
    assert not _C._trace_active()
    with pytest.raises(RuntimeError):
        _C._trace_mark()                       # no active trace
    # a forward that fails mid-trace leaves no tracer behind
    m = MultiMLP(8, n_layers=2)
    with pytest.raises(Exception):
        _trace(m, (pipec.randn(2, 3),), {}, None)
    assert not _C._trace_active()
    prog, _, _, _ = _trace(m, (x,), {}, None)
    assert prog.num_instructions == 6


def test_pipe_split_marks_where_called():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)

        def forward(self, x):
            pipe_split()                       # before any call: index 0
            x = self.a(x)
            pipe_split()
            pipe_split()                       # twice at the same place
            x = pipec.relu(x)
            x = x * 2.0
            pipe_split()                       # after the last call
            return x

    prog, _, _, _ = _trace(M(), (pipec.randn(2, 4),), {}, None)
    assert prog.num_instructions == 3
    assert prog.marks == (0, 1, 1, 3)
    assert len(prog.split()) == 2               # empty stages dropped

"""pipeline() and Pipe: tracing a pipec model into a C Program and cutting it into stages.

Ports of torch's test/distributed/pipelining tests, on pipec:
  - test_pipe.py (PipeTests.test_model_split): the file's own ExampleCode (three
    pipe_split() calls, mm_param1 used in two stages, a skip connection from stage 0 to stage
    2: 4 stages), its MultiMLP (4 MLPModules, returns x - y: 4 stages) and the zoo's
    ModelWithParamAlias (2 stages); stage parameter names are a subset of the original's
    and pipe(x, y) equals model(x, y). pipec's Pipe returns the model's own output
    structure (one tensor here), so the port compares pipe(x, y) where torch indexes [0].
  - test_unflatten.py: two Blocks of Linear layers (pipec has no Conv2d) with an in-place
    add of a kwarg constant after a pipe_split, another split between the blocks: 4 stages.
  - test_transformer.py: a Sequential of 8 MLPModules cut by split_spec {"layers.4":
    BEGINNING} into exactly 2 stages holding all of the original layers between them.
  - test_microbatch.py's test_chunk_spec: a Pipe traced on one microbatch of ModelWithKwargs
    runs the whole batch; split -> per-microbatch pipe -> merge equals the full batch.
And, for every model of the zoo (tests/model_registry.py) and every stage:
  - stage count, stage parameter names within the original's, every parameter the forward
    uses present in some stage, pipe output equal to the model's;
  - running the stages one after another with autograd, stage inputs as fresh leaves,
    gives input and parameter gradients equal to the unsplit model's (a parameter copied
    into several stages: the sum over its copies);
  - replaying a stage's Program makes no Python-level call (counted with sys.setprofile)
    unless the stage holds a custom autograd Function, whose replay does call it.
The per-model checks also cover two local models: FanOut (one value used by three later
stages and returned, a model input returned as is, a nested output) and the unflatten model
(in-place adds on received activations: replay writes into copies, so stage inputs that are
autograd leaves work and are never modified).
Plus the issue's edge cases: split_spec errors, the model left untouched, replicated
parameters, consecutive boundaries, get_stage_module bounds, values crossing several
stages, captured default kwargs. Every test runs on CPU and, marked cuda, on a GPU.

Tolerance: stages replay the very same kernels on the same shapes as the eager model, so
forward values normally agree to the bit; gradients of values used in several places may
be summed in a different order. Checks use rtol 1e-5 plus an absolute 1e-5 x (largest
reference magnitude) (float32, at most a few hundred terms per sum), which also covers
elements much smaller than the tensor's scale.
"""
import sys

import numpy as np
import pytest

import pipec
from pipec import nn
from pipec.pipelining import Pipe, SplitPoint, pipe_split, pipeline
from pipec.pipelining import _split as split_mod
from pipec.pipelining._IR import _flatten
from pipec.pipelining.microbatch import (TensorChunkSpec, merge_chunks,
                                         split_args_kwargs_into_chunks)

from model_registry import (ExampleCode, MLPKWargModule, MLPModule, MLPModuleWithDw,
                            ModelWithKwargs, ModelWithParamAlias, MultiMLP, MultiMLPKwargs,
                            MultiMLPWithDw)

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
RTOL = 1e-5
ATOL_REL = 1e-5

D_HID = 16        # small widths keep the suite fast; test_pipe.py's 512 is run once below
MB = 8            # microbatch rows


# ---- helpers ----

def np_(t):
    return t.detach().cpu().numpy().astype(np.float64)


def assert_close(actual, ref, what=""):
    a = np_(actual) if isinstance(actual, pipec.Tensor) else np.asarray(actual, np.float64)
    r = np_(ref) if isinstance(ref, pipec.Tensor) else np.asarray(ref, np.float64)
    assert a.shape == r.shape, f"{what}: shape {a.shape} != {r.shape}"
    scale = max(float(np.abs(r).max()) if r.size else 0.0, 1e-30)
    np.testing.assert_allclose(a, r, rtol=RTOL, atol=ATOL_REL * scale, err_msg=what)


def assert_outputs_close(actual, ref, what=""):
    """Same nested structure (tuples, lists, dicts) and close tensors."""
    la, sa = _flatten(actual)
    lr, sr = _flatten(ref)
    assert sa == sr, f"{what}: structure {sa} != {sr}"
    for i, (a, r) in enumerate(zip(la, lr)):
        assert_close(a, r, f"{what} [output {i}]")


def count_python_calls(fn, *args):
    """fn(*args) with a profiler counting Python-level 'call' events (frames of Python
    functions) raised inside it; fn itself should be a C callable. Returns (result, names)."""
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


def stage_state(pipe, i):
    return pipe.get_stage_module(i).state_dict()


def all_submodules(mod):
    return [m for _, m in mod.named_modules()]


# ---- models local to the ports ----

class PipeExampleCode(nn.Module):
    """test_pipe.py's ExampleCode: mm_param1 used in stages 0 and 1, a skip connection from
    stage 0 into stage 2, three pipe_split() calls."""

    def __init__(self, d_hid):
        super().__init__()
        self.mm_param1 = nn.Parameter(pipec.randn(d_hid, d_hid))
        self.mm_param2 = nn.Parameter(pipec.randn(d_hid, d_hid))
        self.lin1 = nn.Linear(d_hid, d_hid)
        self.lin2 = nn.Linear(d_hid, d_hid)

    def forward(self, x, y):
        x = pipec.mm(x, self.mm_param1)  # multi-use param
        skip_connection = x
        x = x + y
        x = pipec.relu(x)
        pipe_split()
        x = pipec.mm(x, self.mm_param1)  # multi-use param
        x = self.lin1(x)
        pipe_split()
        x = pipec.relu(x)
        x = x + skip_connection
        x = pipec.mm(x, self.mm_param2)
        pipe_split()
        x = self.lin2(x)
        x = pipec.relu(x)
        return x


class PipeMultiMLP(nn.Module):
    """test_pipe.py's MultiMLP: four MLPModules, y used only by the last stage."""

    def __init__(self, d_hid):
        super().__init__()
        self.mlp0 = MLPModule(d_hid)
        self.mlp1 = MLPModule(d_hid)
        self.mlp2 = MLPModule(d_hid)
        self.mlp3 = MLPModule(d_hid)

    def forward(self, x, y):
        x = self.mlp0(x)
        pipe_split()
        x = self.mlp1(x)
        pipe_split()
        x = self.mlp2(x)
        pipe_split()
        x = self.mlp3(x)
        return x - y


class UnflattenBlock(nn.Module):
    """test_unflatten.py's Block with Linear in place of Conv2d."""

    def __init__(self, d):
        super().__init__()
        self.lin_in = nn.Linear(d, d)
        self.lin0 = nn.Linear(d, d)
        self.relu = nn.ReLU()
        self.lin1 = nn.Linear(d, d)

    def forward(self, x, constant=None):
        x = self.lin_in(x)
        x = self.lin0(x)
        pipe_split()
        x.add_(constant)
        x = self.lin1(x)
        return self.relu(x)


class UnflattenM(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.block0 = UnflattenBlock(d)
        self.block1 = UnflattenBlock(d)

    def forward(self, x, constant=None):
        x = self.block0(x, constant=constant)
        pipe_split()
        x = self.block1(x, constant=constant)
        return x


class FanOut(nn.Module):
    """One value (h) used by three later stages and returned; a model input (y) used by
    stage 1 only; x returned as is; a nested (tuple, dict) output."""

    def __init__(self, d):
        super().__init__()
        self.a = nn.Linear(d, d)
        self.b = nn.Linear(d, d)
        self.c = nn.Linear(d, d)

    def forward(self, x, y):
        h = self.a(x)
        pipe_split()
        u = self.b(h) + y
        pipe_split()
        v = self.c(u) * h
        pipe_split()
        w = pipec.relu(v + h + u)
        return w, {"h": h, "x": x, "u": u}


class TransformerLike(nn.Module):
    """test_transformer.py's model: a Sequential of 8 MLPModules."""

    def __init__(self, d_hid=16, n_layers=8):
        super().__init__()
        self.layers = nn.Sequential(*[MLPModule(d_hid) for _ in range(n_layers)])

    def forward(self, x):
        return self.layers(x)


# ---- the zoo: (model, args, kwargs, split_spec, expected stages, custom Functions) ----

def _x(*shape, device):
    return pipec.randn(*shape, device=device)


def _zoo_cases():
    cases = []
    for k in range(2, 9):
        cases.append((f"ExampleCode-splits{k}", k))
    for k in (2, 3, 5, 8):
        cases.append((f"ModelWithKwargs-splits{k}", k))
    cases.append(("ModelWithKwargs-default-y", 2))
    cases.append(("ModelWithParamAlias", 2))
    cases.append(("MLPModule", 1))
    cases.append(("MLPKWargModule", 1))
    for n in (1, 2, 4):
        cases.append((f"MultiMLP-{n}", n))
    for n in (2, 3):
        cases.append((f"MultiMLPKwargs-{n}", n))
    cases.append(("MLPModuleWithDw", 1))
    cases.append(("MultiMLPWithDw-2", 2))
    cases.append(("MultiMLPWithDw-3-toggled", 3))
    cases.append(("PipeExampleCode", 4))
    cases.append(("PipeMultiMLP", 4))
    cases.append(("FanOut", 4))
    cases.append(("Unflatten", 4))
    return cases


ZOO = _zoo_cases()
ZOO_IDS = [c[0] for c in ZOO]


def build_case(name, device):
    """(model, args, kwargs, split_spec, number of custom Function calls per replay)."""
    pipec.manual_seed(0)
    d, mb = D_HID, MB
    kind, _, tail = name.partition("-")
    x = _x(mb, d, device=device)
    if kind == "ExampleCode":
        return ExampleCode(d, splits=int(tail[len("splits"):])).to(device), (x,), {}, None, 0
    if kind == "ModelWithKwargs":
        if tail == "default-y":  # the default y is zeros(256, 512): use those sizes
            if device != "cpu":
                pytest.skip("the default y is a CPU tensor: the eager model runs on CPU only")
            m = ModelWithKwargs().to(device)
            x = _x(ModelWithKwargs.DEFAULT_BATCH_SIZE, ModelWithKwargs.DEFAULT_DHID,
                   device=device)
            return m, (x,), {}, None, 0
        m = ModelWithKwargs(d, splits=int(tail[len("splits"):])).to(device)
        return m, (x,), {"y": _x(mb, d, device=device)}, None, 0
    if kind == "ModelWithParamAlias":
        return ModelWithParamAlias(d).to(device), (x, _x(mb, d, device=device)), {}, None, 0
    if kind == "MLPModule":
        return MLPModule(d).to(device), (x,), {}, None, 0
    if kind == "MLPKWargModule":
        return MLPKWargModule(d, 0).to(device), (x,), {}, None, 0
    if kind == "MultiMLP":
        m = MultiMLP(d, n_layers=int(tail)).to(device)
        return m, (x,), {}, m.split_spec, 0
    if kind == "MultiMLPKwargs":
        m = MultiMLPKwargs(d, n_layers=int(tail)).to(device)
        return m, (x,), {}, m.split_spec, 0
    if kind == "MLPModuleWithDw":
        return MLPModuleWithDw(d).to(device), (x,), {}, None, 2
    if kind == "MultiMLPWithDw":
        n, _, toggled = tail.partition("-")
        m = MultiMLPWithDw(d, n_layers=int(n)).to(device)
        if toggled:
            m.toggle()
        return m, (x,), {}, m.split_spec, 2
    if kind == "PipeExampleCode":
        return PipeExampleCode(d).to(device), (x, _x(mb, d, device=device)), {}, None, 0
    if kind == "PipeMultiMLP":
        return PipeMultiMLP(d).to(device), (x, _x(mb, d, device=device)), {}, None, 0
    if kind == "Unflatten":  # in-place adds of a kwarg on activations received by stages
        return (UnflattenM(d).to(device), (x,), {"constant": _x(mb, d, device=device)}, None,
                0)
    if kind == "FanOut":
        return FanOut(d).to(device), (x, _x(mb, d, device=device)), {}, None, 0
    raise AssertionError(name)


def make_pipe(model, args, kwargs, split_spec):
    return pipeline(model, args, kwargs, split_spec=split_spec)


def flat_inputs(args, kwargs):
    return list(args) + list(kwargs.values())


# ---- stage-by-stage autograd ----

def run_stages(pipe, leaves):
    """Forward through the stages one after another, each stage's inputs fresh leaves
    (detached clones; requires_grad where the value it stands for required grad).
    Returns per-stage records (inputs, outputs, in_slots, out_slots) and the output slots'
    values."""
    env = dict(zip(pipe._input_slots, leaves))
    records = []
    for i in range(pipe.num_stages):
        in_slots, out_slots = pipe.stage_wiring(i)
        ins = []
        for s in in_slots:
            v = env[s]
            leaf = v.detach().clone()
            if v.requires_grad:
                leaf.requires_grad_(True)
            ins.append(leaf)
        before = [np_(t) for t in ins]
        outs = pipe.get_stage_module(i)(*ins)
        if isinstance(outs, pipec.Tensor):
            outs = (outs,)
        assert len(outs) == len(out_slots), f"stage {i}: {len(outs)} outputs for {out_slots}"
        for k, (t, v) in enumerate(zip(ins, before)):  # replay never writes into its inputs
            np.testing.assert_array_equal(np_(t), v, err_msg=f"stage {i} input {k} changed")
        records.append((ins, tuple(outs), in_slots, out_slots))
        env.update(zip(out_slots, outs))
    return records, [env[s] for s in pipe._out_slots]


def backward_stages(pipe, records, output_grads):
    """Backward through the stages in reverse: each stage's output gradients are the sums
    of its consumers' input-leaf gradients (plus the model output gradient). Returns the
    gradient of every value slot that received one, including the model's inputs."""
    grads = {}

    def acc(s, g):
        grads[s] = g if s not in grads else grads[s] + g

    for s, g in zip(pipe._out_slots, output_grads):
        acc(s, g)
    for i in reversed(range(pipe.num_stages)):
        ins, outs, in_slots, out_slots = records[i]
        ts, gs = [], []
        for s, o in zip(out_slots, outs):
            g = grads.pop(s, None)  # the stage that produced a value consumes its gradient
            if g is not None and o.requires_grad:
                ts.append(o)
                gs.append(g)
        if ts:
            pipec.autograd.backward(ts, gs)
        for s, leaf in zip(in_slots, ins):
            if leaf.requires_grad:
                assert leaf.grad is not None, f"stage {i} input slot {s} got no gradient"
                acc(s, leaf.grad)
    return grads


def param_grads_of(modules):
    """name -> summed gradient (NumPy) over modules; None where no module had one."""
    out = {}
    for m in modules:
        for name, p in m.named_parameters():
            g = None if p.grad is None else np_(p.grad)
            if name in out and out[name] is not None and g is not None:
                out[name] = out[name] + g
            elif name not in out or out[name] is None:
                out[name] = g
    return out


def unsplit_reference(model, args, kwargs, douts):
    """Input and parameter gradients of the eager model for output gradients douts (one
    per output tensor, in flattening order)."""
    out = model(*args, **kwargs)
    pipec.autograd.backward(_flatten(out)[0], douts)
    if getattr(model, "use_custom_logic", False):
        model.compute_dW()
    in_grads = [None if t.grad is None else np_(t.grad) for t in flat_inputs(args, kwargs)]
    pgrads = param_grads_of([model])
    model.zero_grad(set_to_none=True)
    return out, in_grads, pgrads


# =====================================================================================
# the ports of test_pipe.py
# =====================================================================================

EXPECTED_N_STAGES = {PipeExampleCode: 4, PipeMultiMLP: 4, ModelWithParamAlias: 2}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("model_class", [PipeExampleCode, PipeMultiMLP, ModelWithParamAlias],
                         ids=lambda c: c.__name__)
def test_model_split(model_class, device):
    """test_pipe.py: d_hid 512, microbatch 16."""
    d_hid, mb = 512, 16
    pipec.manual_seed(0)
    mod = model_class(d_hid).to(device)
    x = pipec.randn(mb, d_hid, device=device)
    y = pipec.randn(mb, d_hid, device=device)
    pipe = pipeline(mod, mb_args=(x, y))
    assert pipe.num_stages == EXPECTED_N_STAGES[model_class]
    assert isinstance(pipe, Pipe)
    ref = mod(x, y)
    out = pipe(x, y)
    assert isinstance(out, pipec.Tensor)
    assert out.device == ref.device
    assert_close(out, ref, "pipe(x, y) vs mod(x, y)")
    old_names = set(mod.state_dict().keys())
    new_names = set()
    for i in range(pipe.num_stages):
        names = set(stage_state(pipe, i).keys())
        assert names <= old_names, f"stage {i}: {names - old_names} not in the original"
        assert names, f"stage {i} holds no parameters"
        new_names |= names
    # every parameter is used, so all of them (up to aliases) appear somewhere
    assert {n for n, _ in mod.named_parameters()} <= new_names


def test_pipe_example_code_wiring_and_replication():
    """The skip connection is an output of stage 0 and an input of stage 2 only;
    mm_param1 (stages 0 and 1) is replicated, each stage holding its own copy."""
    pipec.manual_seed(0)
    mod = PipeExampleCode(D_HID)
    x, y = pipec.randn(MB, D_HID), pipec.randn(MB, D_HID)
    pipe = pipeline(mod, (x, y))
    assert pipe.num_stages == 4
    wiring = [pipe.stage_wiring(i) for i in range(4)]
    # the skip value: made by stage 0, consumed by stage 2 (not routed through stage 1)
    skip = set(wiring[0][1]) & set(wiring[2][0])
    assert len(skip) == 1, wiring
    assert not skip & set(wiring[1][0]) and not skip & set(wiring[1][1])
    assert len(wiring[0][1]) == 2            # relu(x + y) for stage 1, the skip for stage 2
    assert len(wiring[2][0]) == 2            # lin1's output and the skip
    # y is a model input used by stage 0 only; stage 3 gets only stage 2's value
    assert wiring[0][0] == tuple(pipe._input_slots)
    assert len(wiring[3][0]) == 1 and set(wiring[3][0]) <= set(wiring[2][1])
    assert pipe.replicated_params == [{"submod_0": "mm_param1", "submod_1": "mm_param1"}]
    p0 = pipe.get_stage_module(0).mm_param1
    p1 = pipe.get_stage_module(1).mm_param1
    assert p0 is not p1 and p0 is not mod.mm_param1 and p1 is not mod.mm_param1
    assert isinstance(p0, nn.Parameter) and p0.requires_grad and p1.requires_grad
    assert_close(p0, mod.mm_param1)
    assert_close(p1, mod.mm_param1)
    # copies do not alias: changing one leaves the other and the original as they were
    with pipec.no_grad():
        p0.mul_(2.0)
    assert_close(p1, mod.mm_param1)
    assert not np.allclose(np_(p0), np_(p1))
    # a parameter used by one stage is shared with the model (no copy)
    assert pipe.get_stage_module(2).mm_param2 is mod.mm_param2
    assert pipe.get_stage_module(1).lin1.weight is mod.lin1.weight


def test_multimlp_last_stage_takes_model_input():
    """PipeMultiMLP returns x - y in its last stage: y is a model input fed straight to
    stage 3, not passed through stages 0-2."""
    pipec.manual_seed(0)
    mod = PipeMultiMLP(D_HID)
    x, y = pipec.randn(MB, D_HID), pipec.randn(MB, D_HID)
    pipe = pipeline(mod, (x, y))
    sx, sy = pipe._input_slots
    ins = [set(pipe.stage_wiring(i)[0]) for i in range(4)]
    outs = [set(pipe.stage_wiring(i)[1]) for i in range(4)]
    assert ins[0] == {sx} and sy in ins[3]
    assert all(sy not in ins[i] | outs[i] for i in range(3))
    assert pipe.replicated_params == []
    assert_close(pipe(x, y), mod(x, y))


def test_param_alias_is_replicated():
    """ModelWithParamAlias: mm_param1 is mm_param0 and lin1 is lin0, used on both sides of
    the split: each stage owns a copy, both listed in replicated_params."""
    pipec.manual_seed(0)
    mod = ModelWithParamAlias(D_HID)
    x, y = pipec.randn(MB, D_HID), pipec.randn(MB, D_HID)
    pipe = pipeline(mod, (x, y))
    assert pipe.num_stages == 2
    rep = pipe.replicated_params
    assert len(rep) == 3, rep                          # the matrix, lin weight, lin bias
    for entry in rep:
        assert set(entry) == {"submod_0", "submod_1"}
        assert entry["submod_0"] == entry["submod_1"]
    orig = dict(mod.state_dict(keep_vars=True))
    for entry in rep:
        name = entry["submod_0"]
        t0 = pipe.get_stage_module(0).state_dict(keep_vars=True)[name]
        t1 = pipe.get_stage_module(1).state_dict(keep_vars=True)[name]
        assert t0 is not t1 and t0 is not orig[name] and t1 is not orig[name]
        assert_close(t0, orig[name])
        assert_close(t1, orig[name])


# =====================================================================================
# the port of test_unflatten.py (Linear in place of Conv2d)
# =====================================================================================

@pytest.mark.parametrize("device", DEVICES)
def test_unflatten(device):
    pipec.manual_seed(0)
    d = 32
    mod = UnflattenM(d).to(device)
    x = pipec.randn(4, d, device=device)
    constant = pipec.ones(4, d, device=device)
    pipe = pipeline(mod, (x,), {"constant": constant})
    assert pipe.num_stages == 4
    orig = set(mod.state_dict().keys())
    seen = set()
    for i in range(pipe.num_stages):
        names = set(stage_state(pipe, i).keys())
        assert names <= orig, f"stage {i}: {names - orig}"
        seen |= names
    assert seen == orig
    # stage parameter names keep the block hierarchy
    assert set(stage_state(pipe, 0)) == {f"block0.{n}.{w}" for n in ("lin_in", "lin0")
                                         for w in ("weight", "bias")}
    # the in-place add consumes the kwarg in stages 1 and 3
    cslot = pipe._input_slots[1]
    users = [i for i in range(4) if cslot in pipe.stage_wiring(i)[0]]
    assert users == [1, 3]
    ref = mod(x, constant)
    out = pipe(x, constant)
    assert_close(out, ref, "pipe(x, constant) vs mod(x, constant)")
    # the kwarg form binds the same way, and the inputs are left as they were
    x_before = np_(x)
    assert_close(pipe(x, constant=constant), ref)
    np.testing.assert_array_equal(np_(x), x_before)
    np.testing.assert_array_equal(np_(constant), np.ones((4, d)))


@pytest.mark.parametrize("device", DEVICES)
def test_unflatten_gradients_through_pipe(device):
    """Backward through Pipe.forward (stage outputs passed on directly, so the in-place
    add acts on a non-leaf) equals the eager model's gradients."""
    pipec.manual_seed(1)
    d = 16
    mod = UnflattenM(d).to(device)
    x = pipec.randn(4, d, device=device, requires_grad=True)
    constant = pipec.randn(4, d, device=device)
    pipe = pipeline(mod, (x,), {"constant": constant})
    dout = pipec.randn(4, d, device=device)
    ref = mod(x, constant)
    pipec.autograd.backward([ref], [dout])
    ref_x = np_(x.grad)
    ref_p = param_grads_of([mod])
    x.grad = None
    mod.zero_grad()
    out = pipe(x, constant=constant)
    assert_close(out, ref)
    pipec.autograd.backward([out], [dout])
    assert_close(x.grad, ref_x, "x.grad")
    got = param_grads_of([pipe.get_stage_module(i) for i in range(pipe.num_stages)])
    assert set(got) == set(ref_p)
    for n, g in ref_p.items():
        assert got[n] is not None, n
        assert_close(got[n], g, n)


def test_unflatten_stage_with_leaf_input():
    """Stage 1 of the unflatten model starts with x.add_(constant) on its received x. Run
    as a pipeline stage, x is a fresh leaf that requires grad: the replay writes into a
    copy (the Program is functionalised at its inputs), so the leaf keeps its values and
    gets the gradient."""
    pipec.manual_seed(0)
    d = 8
    mod = UnflattenM(d)
    x = pipec.randn(2, d)
    constant = pipec.randn(2, d)
    pipe = pipeline(mod, (x,), {"constant": constant})
    st = pipe.get_stage_module(1)
    assert st.program.format().splitlines()[1].split(" = ")[1].startswith("add(")
    in_slots, _ = pipe.stage_wiring(1)
    assert in_slots[0] == pipe._input_slots[1]          # (constant, x)
    h = pipe.get_stage_module(0)(x)
    leaf = h.detach().clone().requires_grad_(True)
    before, c_before = np_(leaf), np_(constant)
    out = st(constant, leaf)
    np.testing.assert_array_equal(np_(leaf), before)
    np.testing.assert_array_equal(np_(constant), c_before)
    assert leaf.grad_fn is None
    # eager reference on a non-leaf copy of the same value
    ref_in = h.detach().clone().requires_grad_(True)
    h2 = ref_in * 1.0
    h2.add_(constant)
    ref = mod.block0.relu(mod.block0.lin1(h2))
    assert_close(out, ref)
    dout = pipec.randn(2, d)
    pipec.autograd.backward([out], [dout])
    pipec.autograd.backward([ref], [dout])
    assert_close(leaf.grad, ref_in.grad, "grad of the received activation")


class MutatesInput(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.lin = nn.Linear(d, d)

    def forward(self, x, c):
        x.mul_(2.0)
        x.add_(c)
        pipe_split()
        return self.lin(x)


def test_replay_does_not_mutate_caller_inputs():
    """A forward that writes into its own input: the pipe computes the same output, but
    writes into a copy, leaving the caller's tensor as it was (eager mutates it)."""
    pipec.manual_seed(0)
    mod = MutatesInput(4)
    x, c = pipec.randn(3, 4), pipec.randn(3, 4)
    pipe = pipeline(mod, (x.clone(), c))
    assert pipe.num_stages == 2
    x0 = np_(x)
    out = pipe(x, c)
    np.testing.assert_array_equal(np_(x), x0)
    ref = mod(x, c)                                     # eager: x becomes 2x + c
    np.testing.assert_allclose(np_(x), 2 * x0 + np_(c), rtol=1e-6)
    assert_close(out, ref)


# =====================================================================================
# the port of test_transformer.py
# =====================================================================================

@pytest.mark.parametrize("device", DEVICES)
def test_transformer_ir(device):
    pipec.manual_seed(0)
    n_layers, num_stages = 8, 2
    transformer = TransformerLike(16, n_layers).to(device)
    x = pipec.randn(4, 16, device=device)
    split_spec = {f"layers.{n_layers // num_stages}": SplitPoint.BEGINNING}
    pipe = pipeline(transformer, (x,), split_spec=split_spec)
    assert pipe.num_stages == num_stages

    def get_layers(module):
        return [name for name, _ in module.layers.named_children()]

    layers = []
    for i in range(pipe.num_stages):
        layers += get_layers(pipe.get_stage_module(i))
    assert sorted(layers) == sorted(get_layers(transformer))
    assert get_layers(pipe.get_stage_module(0)) == ["0", "1", "2", "3"]
    assert get_layers(pipe.get_stage_module(1)) == ["4", "5", "6", "7"]
    assert_close(pipe(x), transformer(x))


@pytest.mark.parametrize("point,expected", [(SplitPoint.BEGINNING, ["0", "1", "2"]),
                                            (SplitPoint.END, ["0", "1", "2", "3"])])
def test_split_point_end_vs_beginning(point, expected):
    pipec.manual_seed(0)
    model = TransformerLike(8, 8)
    x = pipec.randn(2, 8)
    pipe = pipeline(model, (x,), split_spec={"layers.3": point})
    assert pipe.num_stages == 2
    assert [n for n, _ in pipe.get_stage_module(0).layers.named_children()] == expected
    assert_close(pipe(x), model(x))


# =====================================================================================
# test_microbatch.py's test_chunk_spec through a traced Pipe; split/merge round trips
# =====================================================================================

@pytest.mark.parametrize("device", DEVICES)
def test_chunk_spec(device):
    """ModelWithKwargs (d_hid 512, batch 256), 4 chunks: the Pipe traced on chunk 0 runs
    the whole batch and equals the eager model."""
    pipec.manual_seed(0)
    mod = ModelWithKwargs().to(device)
    batch, d = ModelWithKwargs.DEFAULT_BATCH_SIZE, ModelWithKwargs.DEFAULT_DHID
    x = pipec.randn(batch, d, device=device)
    y = pipec.randn(batch, d, device=device)
    args_split, kwargs_split = split_args_kwargs_into_chunks(
        (x,), {"y": y}, 4, TensorChunkSpec.from_tuple((0,)), TensorChunkSpec.from_dict({"y": 0}))
    assert args_split[0][0].shape == (batch // 4, d)
    pipe = pipeline(mod, mb_args=args_split[0], mb_kwargs=kwargs_split[0])
    assert pipe.num_stages == 2
    ref = mod(x, y)
    out = pipe(x, y)
    assert out.shape == (batch, d)
    assert_close(out, ref, "whole batch through a microbatch-traced pipe")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("chunks", [1, 2, 3, 8])
def test_split_pipe_merge_round_trip(device, chunks):
    """split_args_kwargs_into_chunks -> pipe per microbatch -> merge_chunks equals the
    model on the whole batch, and every microbatch equals its rows of it."""
    pipec.manual_seed(0)
    mod = ModelWithKwargs(D_HID, splits=3).to(device)
    x = pipec.randn(24, D_HID, device=device)
    y = pipec.randn(24, D_HID, device=device)
    a_chunks, k_chunks = split_args_kwargs_into_chunks((x,), {"y": y}, chunks)
    assert len(a_chunks) == chunks
    pipe = pipeline(mod, a_chunks[0], k_chunks[0])
    outs = [pipe(*a, **k) for a, k in zip(a_chunks, k_chunks)]
    ref = mod(x, y)
    merged = merge_chunks(outs, TensorChunkSpec(0))
    assert_close(merged, ref, "merged microbatch outputs")
    row = 0
    for o in outs:
        n = o.shape[0]
        assert_close(o, np_(ref)[row:row + n])
        row += n
    assert row == 24
    # the inputs come back from a merge of their chunks unchanged
    np.testing.assert_array_equal(
        np_(merge_chunks([a[0] for a in a_chunks], TensorChunkSpec(0))), np_(x))
    np.testing.assert_array_equal(
        np_(merge_chunks([k["y"] for k in k_chunks], TensorChunkSpec(0))), np_(y))


# =====================================================================================
# the zoo: split, gradients, Python calls
# =====================================================================================

def used_param_names(model, args, kwargs):
    """Names of the parameters the forward uses: those that get a gradient (custom dW
    models: after compute_dW), plus buffers (named explicitly by the models)."""
    out = [o for o in _flatten(model(*args, **kwargs))[0] if o.requires_grad]
    pipec.autograd.backward(out, [pipec.ones_like(o) for o in out])
    if getattr(model, "use_custom_logic", False):
        model.compute_dW()
    used = {n for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    return used


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", ZOO, ids=ZOO_IDS)
def test_zoo_split(case, device):
    name, n_stages = case
    model, args, kwargs, spec, _ = build_case(name, device)
    ref = model(*args, **kwargs)
    pipe = make_pipe(model, args, kwargs, spec)
    assert pipe.num_stages == n_stages
    assert [f"submod_{i}" for i in range(n_stages)] == [n for n, _ in pipe.named_children()]
    orig = dict(model.state_dict(keep_vars=True))
    stage_names = set()
    for i in range(pipe.num_stages):
        sd = pipe.get_stage_module(i).state_dict(keep_vars=True)
        assert set(sd) <= set(orig), f"stage {i}: {set(sd) - set(orig)}"
        for k, t in sd.items():
            assert_close(t, orig[k], f"stage {i} {k}")
            assert t.device == orig[k].device
        stage_names |= set(sd)
    for i in range(pipe.num_stages):  # parameters stay parameters
        for k, p in pipe.get_stage_module(i).named_parameters():
            assert isinstance(p, nn.Parameter) and p.requires_grad, k
    used = used_param_names(model, args, kwargs)
    assert used, "the model uses no parameter?"
    assert used <= stage_names, f"used but in no stage: {used - stage_names}"
    if name.startswith("ExampleCode"):
        k = n_stages
        want = {"mm_param0", "mm_param1", "cval", "lin0.weight", "lin0.bias"}
        want |= {f"lin{j}.{w}" for j in range(1, k - 1) for w in ("weight", "bias")}
        assert stage_names == want  # the spare lin layers are dropped, cval is kept
        assert "cval" in dict(pipe.get_stage_module(0).named_buffers())
    out = pipe(*args, **kwargs)
    assert_outputs_close(out, ref, f"{name}: pipe vs model")
    assert_outputs_close(pipe(*args, **kwargs), ref, f"{name}: second pipe call")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", ZOO, ids=ZOO_IDS)
def test_zoo_stage_gradients(case, device):
    """Stages run one after another with autograd (stage inputs as leaves) give the model's
    input and parameter gradients; a parameter copied into several stages gets its
    gradient as the sum over the copies."""
    name, n_stages = case
    model, args, kwargs, spec, _ = build_case(name, device)
    pipe = make_pipe(model, args, kwargs, spec)
    assert pipe.num_stages == n_stages
    leaves = []
    for t in flat_inputs(args, kwargs):
        t.requires_grad_(True)
        leaves.append(t)
    pipec.manual_seed(123)
    douts = [pipec.randn(*o.shape, device=device) for o in _flatten(model(*args, **kwargs))[0]]
    ref_out, ref_in, ref_p = unsplit_reference(model, args, kwargs, douts)
    assert all(g is not None for g in ref_in)
    for t in leaves:
        t.grad = None

    records, outs = run_stages(pipe, leaves)
    ref_leaves = _flatten(ref_out)[0]
    assert len(outs) == len(ref_leaves)
    for a, b in zip(outs, ref_leaves):
        assert_close(a, b, "stage-by-stage output")
    # stage inputs are leaves, so each stage is its own autograd island
    for ins, _, _, _ in records:
        assert all(t.grad_fn is None for t in ins)
    grads = backward_stages(pipe, records, douts)
    if getattr(model, "use_custom_logic", False):
        # the replayed CustomLinearDx stashed its (grad_output, input) in the model's
        # layers; compute_dW turns them into the weights' gradients
        model.compute_dW()
    for slot, (t, g) in enumerate(zip(leaves, ref_in)):
        s = pipe._input_slots[slot]
        assert s in grads, f"input {slot} got no gradient from the stages"
        assert_close(grads[s], g, f"{name}: input {slot} grad")
        assert t.grad is None, "stages must not reach the model's own input leaves"
    stages = [pipe.get_stage_module(i) for i in range(pipe.num_stages)]
    got = param_grads_of(stages)
    for n, g in got.items():
        assert g is not None, f"{name}: stage parameter {n} got no gradient"
        assert ref_p.get(n) is not None, f"{name}: {n} has a stage gradient, none in the model"
        assert_close(g, ref_p[n], f"{name}: grad of {n}")
    missing = {n for n, g in ref_p.items() if g is not None} - set(got)
    assert not missing, f"{name}: parameters with a model gradient in no stage: {missing}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", ZOO, ids=ZOO_IDS)
def test_zoo_replay_python_calls(case, device):
    """A stage Program's replay makes no Python-level call, except for custom Functions
    (whose forward runs in Python at replay)."""
    name, _ = case
    model, args, kwargs, spec, fn_per_stage = build_case(name, device)
    pipe = make_pipe(model, args, kwargs, spec)
    env = dict(zip(pipe._input_slots, flat_inputs(args, kwargs)))
    total_fn = 0
    for i in range(pipe.num_stages):
        st = pipe.get_stage_module(i)
        prog = st.program
        in_slots, out_slots = pipe.stage_wiring(i)
        ins = [env[s] for s in in_slots]
        exts = st._externals()
        outs, calls = count_python_calls(prog.run, ins, exts)
        assert prog.num_python_calls == fn_per_stage
        if fn_per_stage == 0:
            assert calls == [], f"stage {i} replay ran Python: {calls}"
        else:
            assert calls.count("forward") >= fn_per_stage, calls
            assert "apply" in calls, calls
        total_fn += prog.num_python_calls
        eager = st(*ins)
        eager = (eager,) if isinstance(eager, pipec.Tensor) else eager
        for a, b in zip(outs, eager):
            assert_close(a, b)
        env.update(zip(out_slots, outs))
    ref = _flatten(model(*args, **kwargs))[0]
    assert len(ref) == len(pipe._out_slots)
    for s, r in zip(pipe._out_slots, ref):
        assert_close(env[s], r)


def test_python_call_counter_counts():
    """The counter used above sees Python frames run from C (so a 0 means something)."""
    def f():
        return 1

    _, calls = count_python_calls(map(lambda v: f(), [1, 2]).__next__)
    assert calls.count("f") == 1


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("toggled", [False, True])
def test_custom_function_replay_calls_function(device, toggled):
    """MultiMLPWithDw: the trace records each CustomLinear* call; replaying a stage calls
    the Function's forward (and autograd then its backward) once per recorded call."""
    pipec.manual_seed(0)
    model = MultiMLPWithDw(D_HID, n_layers=2).to(device)
    if toggled:
        model.toggle()
    x = pipec.randn(MB, D_HID, device=device)
    pipe = pipeline(model, (x,), split_spec=model.split_spec)
    assert pipe.num_stages == 2
    fn = "CustomLinearDx" if toggled else "CustomLinearDxDw"
    seen = []
    cls = __import__("model_registry").__dict__[fn]
    orig_fwd, orig_bwd = cls.forward, cls.backward

    def fwd(ctx, *a):
        seen.append("F")
        return orig_fwd(ctx, *a)

    def bwd(ctx, *g):
        seen.append("B")
        return orig_bwd(ctx, *g)

    cls.forward, cls.backward = staticmethod(fwd), staticmethod(bwd)
    try:
        st = pipe.get_stage_module(0)
        assert "custom_function" in st.program.format()
        xi = x.detach().clone().requires_grad_(True)
        out = st(xi)
        assert seen == ["F", "F"]
        out.sum().backward()
        assert seen == ["F", "F", "B", "B"]
        assert xi.grad is not None
        if toggled:
            assert len(model.layers[0].cached_context["fc1"]) == 1
            model.layers[0].compute_dW()
        w = dict(st.named_parameters())["layers.0.fc1_weight"]
        assert w is model.layers[0].fc1_weight and w.grad is not None
    finally:
        cls.forward, cls.backward = orig_fwd, orig_bwd


# =====================================================================================
# edge cases from the issue
# =====================================================================================

@pytest.mark.parametrize("path,missing", [("layerz.1", "layerz"), ("layers.7", "layers.7"),
                                          ("layers.5.net1", "layers.5"),
                                          ("layers.1.net3", "layers.1.net3"),
                                          ("layers.1.net1.weight", "layers.1.net1.weight")])
def test_bad_split_spec_path_names_missing_part(path, missing):
    """The AttributeError names the first part of the path that does not exist (not just
    the whole path)."""
    model = MultiMLP(8, n_layers=2)
    x = pipec.randn(2, 8)
    with pytest.raises(AttributeError) as info:
        pipeline(model, (x,), split_spec={path: SplitPoint.BEGINNING})
    msg = str(info.value)
    assert missing in msg, msg
    if missing != path:
        assert missing in msg.replace(path, ""), msg
    else:  # the whole path is missing: named as the missing module, not only as the target
        assert msg.count(path) >= 2 or msg.rstrip(".'\"").endswith(path), msg
    _assert_untouched(model)


@pytest.mark.parametrize("point", ["BEGINNING", 1, None])
def test_bad_split_point_raises_value_error(point):
    model = MultiMLP(8, n_layers=2)
    x = pipec.randn(2, 8)
    with pytest.raises(ValueError):
        pipeline(model, (x,), split_spec={"layers.1": point})
    # a bad entry after a good one leaves no wrapped forward behind
    with pytest.raises(ValueError):
        pipeline(model, (x,), split_spec={"layers.0": SplitPoint.END, "layers.1": point})
    _assert_untouched(model)


def test_split_spec_and_policy_are_exclusive():
    model = MultiMLP(8, n_layers=2)
    x = pipec.randn(2, 8)
    with pytest.raises(ValueError):
        pipeline(model, (x,), split_spec=model.split_spec, split_policy=lambda g: g)


def _assert_untouched(model):
    for m in all_submodules(model):
        assert "forward" not in m.__dict__, f"{type(m).__name__}.forward left wrapped"
    assert split_mod._pipe_split_hook is None
    assert not pipec._C._trace_active()


def test_model_unchanged_after_pipeline():
    pipec.manual_seed(0)
    model = MultiMLP(8, n_layers=3)
    x = pipec.randn(4, 8)
    ref = np_(model(x))
    params = {n: p for n, p in model.named_parameters()}
    values = {n: np_(p) for n, p in params.items()}
    pipe = pipeline(model, (x,), split_spec=model.split_spec)
    assert pipe.num_stages == 3
    _assert_untouched(model)
    assert {n: p for n, p in model.named_parameters()} == params  # same objects
    for n, p in model.named_parameters():
        np.testing.assert_array_equal(np_(p), values[n])
        assert p.grad is None
    np.testing.assert_array_equal(np_(model(x)), ref)
    # pipe_split outside tracing is a no-op: an eager run of the zoo model still works
    assert pipe_split() is None


def test_model_unchanged_after_failed_trace():
    """A forward that raises during tracing leaves the model, the hook and the tracer as
    they were, and a later pipeline() works."""
    model = MultiMLP(8, n_layers=2)
    bad = pipec.randn(4, 5)
    with pytest.raises(Exception):
        pipeline(model, (bad,), split_spec=model.split_spec)
    _assert_untouched(model)
    x = pipec.randn(4, 8)
    pipe = pipeline(model, (x,), split_spec=model.split_spec)
    assert pipe.num_stages == 2
    assert_close(pipe(x), model(x))


class Consecutive(nn.Module):
    def __init__(self, d, lead=False, trail=False):
        super().__init__()
        self.a = nn.Linear(d, d)
        self.b = nn.Linear(d, d)
        self.lead, self.trail = lead, trail

    def forward(self, x):
        if self.lead:
            pipe_split()
        x = self.a(x)
        pipe_split()
        pipe_split()
        pipe_split()
        x = self.b(x)
        if self.trail:
            pipe_split()
        return x


@pytest.mark.parametrize("lead,trail", [(False, False), (True, False), (False, True),
                                        (True, True)])
def test_consecutive_boundaries_make_no_empty_stage(lead, trail):
    pipec.manual_seed(0)
    model = Consecutive(8, lead, trail)
    x = pipec.randn(3, 8)
    pipe = pipeline(model, (x,))
    assert pipe.num_stages == 2
    for i in range(2):
        assert pipe.get_stage_module(i).program.num_instructions > 0
    assert set(stage_state(pipe, 0)) == {"a.weight", "a.bias"}
    assert set(stage_state(pipe, 1)) == {"b.weight", "b.bias"}
    assert_close(pipe(x), model(x))


def test_split_spec_end_and_beginning_at_same_place():
    """END of layers.0 and BEGINNING of layers.1 fall on the same boundary."""
    pipec.manual_seed(0)
    model = MultiMLP(8, n_layers=2)
    x = pipec.randn(3, 8)
    pipe = pipeline(model, (x,), split_spec={"layers.0": SplitPoint.END,
                                             "layers.1": SplitPoint.BEGINNING})
    assert pipe.num_stages == 2
    assert_close(pipe(x), model(x))


def test_no_split_is_one_stage():
    pipec.manual_seed(0)
    model = MultiMLP(8, n_layers=3)
    x = pipec.randn(3, 8)
    pipe = pipeline(model, (x,))
    assert pipe.num_stages == 1
    assert set(stage_state(pipe, 0)) == set(model.state_dict())
    assert pipe.info().num_stages == 1
    assert_close(pipe(x), model(x))


@pytest.mark.parametrize("bad", [2, 3, -1, 1.0, "0", None])
def test_get_stage_module_out_of_range(bad):
    model = MultiMLP(8, n_layers=2)
    pipe = pipeline(model, (pipec.randn(2, 8),), split_spec=model.split_spec)
    assert pipe.num_stages == 2
    with pytest.raises(ValueError):
        pipe.get_stage_module(bad)
    assert pipe.get_stage_module(1) is pipe.submod_1


def test_non_grad_constant_crosses_split():
    """ExampleCode's cval.clone() is made in stage 0, needs no gradient and is used in
    stage 1; through the pipe it carries the buffer's current values."""
    pipec.manual_seed(0)
    model = ExampleCode(D_HID, splits=3)
    x = pipec.randn(MB, D_HID)
    pipe = pipeline(model, (x,))
    assert pipe.num_stages == 3
    s0 = pipe.get_stage_module(0)
    assert s0.cval is model.cval            # a buffer, passed at run time
    in1, _ = pipe.stage_wiring(1)
    _, out0 = pipe.stage_wiring(0)
    assert len(in1) == 2 and set(in1) == set(out0)
    outs = s0(x)
    clone = [t for t in outs if t.shape == (D_HID,)]
    assert len(clone) == 1
    np.testing.assert_array_equal(np_(clone[0]), np_(model.cval))
    x.requires_grad_(True)
    outs = s0(x)
    cl = [t for t in outs if t.shape == (D_HID,)][0]
    act = [t for t in outs if t.shape == (MB, D_HID)][0]
    assert not cl.requires_grad and act.requires_grad
    # changing the buffer changes the constant carried to stage 1 (no re-trace)
    with pipec.no_grad():
        model.cval.add_(1.0)
    x.requires_grad_(False)
    assert_close(pipe(x), model(x))


def test_default_kwarg_is_captured_as_constant():
    """ModelWithKwargs traced without y: the default zeros(256, 512) becomes a constant of
    stage 0's Program, and the pipe takes x alone."""
    pipec.manual_seed(0)
    model = ModelWithKwargs()
    x = pipec.randn(ModelWithKwargs.DEFAULT_BATCH_SIZE, ModelWithKwargs.DEFAULT_DHID)
    pipe = pipeline(model, (x,))
    assert pipe.num_stages == 2
    prog = pipe.get_stage_module(0).program
    assert len(prog.input_slots) == 1
    text = prog.format()
    assert text.count("[const]") == 1, text
    assert "[param]" in text
    assert set(stage_state(pipe, 0)) == {"mm_param0", "lin0.weight", "lin0.bias"}
    assert_close(pipe(x), model(x))
    with pytest.raises(ValueError):
        pipe(x, pipec.randn(*x.shape))      # traced with one tensor input
    # traced with y explicitly, y is an input instead
    y = pipec.randn(*x.shape)
    pipe2 = pipeline(model, (x,), {"y": y})
    assert "[const]" not in pipe2.get_stage_module(0).program.format()
    assert len(pipe2._input_slots) == 2
    assert_close(pipe2(x, y=y), model(x, y))


def test_pipe_follows_parameter_updates():
    """Stage Programs take parameters at run time: in-place updates of the model's
    parameters (shared with the stages) show up in the pipe without re-tracing."""
    pipec.manual_seed(0)
    model = MultiMLP(8, n_layers=2)
    x = pipec.randn(3, 8)
    pipe = pipeline(model, (x,), split_spec=model.split_spec)
    before = np_(pipe(x))
    with pipec.no_grad():
        for p in model.parameters():
            p.mul_(0.5)
    after = pipe(x)
    assert not np.allclose(np_(after), before)
    assert_close(after, model(x))


def test_pipe_rejects_wrong_input_count():
    model = ModelWithParamAlias(8)
    x, y = pipec.randn(2, 8), pipec.randn(2, 8)
    pipe = pipeline(model, (x, y))
    with pytest.raises(ValueError):
        pipe(x)


def test_pipeline_rejects_non_module_and_same_input_twice():
    with pytest.raises(TypeError):
        pipeline(lambda x: x, (pipec.randn(2),))
    model = ModelWithParamAlias(8)
    x = pipec.randn(2, 8)
    with pytest.raises(ValueError):
        pipeline(model, (x, x))
    assert not pipec._C._trace_active()


def test_print_readable(capsys):
    model = MultiMLP(8, n_layers=2)
    pipe = pipeline(model, (pipec.randn(2, 8),), split_spec=model.split_spec)
    pipe.print_readable()
    text = capsys.readouterr().out
    assert "submod_0" in text and "submod_1" in text
    assert "layers.1.net2.weight" in text
    assert text.count("linear(") == 4 and text.count("relu(") == 2

"""pipec.pipelining.microbatch: cutting step() inputs into microbatches and merging outputs.

Mirrors torch's test/distributed/pipelining/test_microbatch.py (test_split_and_merge,
test_chunk_spec run eagerly instead of through a traced Pipe; BlockMask has no pipec
counterpart) and adds: chunk views sharing memory with the input, uneven splits, specs on
other dims, replication of non-tensors, nested containers, every error path, merge reducers,
and a model run per microbatch against the full batch (forward and input gradient).

Tolerances: splitting and concatenation copy values, so round trips are compared exactly.
A Linear layer run per microbatch does the same float32 dot products as on the whole batch,
only possibly blocked differently by the GEMM: a few ulps, under 1e-6 absolute for outputs of
size ~1 (d=8). Deeper models with unscaled weights grow their outputs, so that check is
relative (1e-5, float32 with a few hundred terms per dot product).
"""
from collections import OrderedDict, namedtuple

import numpy as np
import pytest

import pipec
from pipec.pipelining.microbatch import (DEFAULT_CHUNK_DIM, TensorChunkSpec, _CustomReducer,
                                         _Replicate, merge_chunks,
                                         split_args_kwargs_into_chunks, sum_reducer)

from model_registry import ModelWithKwargs

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]

Pair = namedtuple("Pair", ["a", "b"])


def np_(t):
    return t.detach().cpu().numpy()


def split_sizes(n, chunks):
    """tensor_split's sizes: n // chunks each, the first n % chunks one larger."""
    base, extra = divmod(n, chunks)
    return [base + (i < extra) for i in range(chunks)]


# ---- TensorChunkSpec ----

def test_tensor_chunk_spec_str_and_factories():
    s = TensorChunkSpec(1)
    assert s.split_dim == 1
    assert str(s) == "TensorChunkSpec(1)" and repr(s) == "TensorChunkSpec(1)"
    assert str(TensorChunkSpec(-1)) == "TensorChunkSpec(-1)"
    assert TensorChunkSpec(0) == TensorChunkSpec(0) and TensorChunkSpec(0) != TensorChunkSpec(1)
    assert DEFAULT_CHUNK_DIM == 0

    t = TensorChunkSpec.from_tuple((0, 0, 1))
    assert isinstance(t, tuple) and [x.split_dim for x in t] == [0, 0, 1]
    assert all(isinstance(x, TensorChunkSpec) for x in t)
    assert TensorChunkSpec.from_tuple(()) == ()

    d = TensorChunkSpec.from_dict({"y": 0, "z": 2})
    assert list(d) == ["y", "z"] and d["y"] == TensorChunkSpec(0) and d["z"].split_dim == 2


def test_tensor_chunk_spec_rejects_bad_input():
    with pytest.raises(TypeError, match="split_dim"):
        TensorChunkSpec(1.0)
    with pytest.raises(TypeError, match="split_dim"):
        TensorChunkSpec(True)
    with pytest.raises(TypeError, match="tuple"):
        TensorChunkSpec.from_tuple([0, 1])
    with pytest.raises(TypeError, match="dict"):
        TensorChunkSpec.from_dict((("y", 0),))
    with pytest.raises(TypeError, match="split_dim"):
        TensorChunkSpec.from_tuple((0, "1"))


# ---- split and merge (torch's test_split_and_merge) ----

@pytest.mark.parametrize("device", DEVICES)
def test_split_and_merge(device):
    x0 = pipec.randn(128, 512, device=device)
    x1 = pipec.randn(256, 512, device=device)
    x2 = pipec.randn(512, 512, device=device)
    args = (x0, x1, x2)
    kwargs = {"x0": x0, "x1": x1, "x2": x2}

    arg_chunks, kwarg_chunks = split_args_kwargs_into_chunks(args, kwargs, 2)
    assert len(arg_chunks) == 2 and len(kwarg_chunks) == 2
    for ac, kc in zip(arg_chunks, kwarg_chunks):
        assert isinstance(ac, tuple) and isinstance(kc, dict)
        assert [a.shape for a in ac] == [(64, 512), (128, 512), (256, 512)]
        assert list(kc) == ["x0", "x1", "x2"]
        assert [kc[k].shape for k in kc] == [(64, 512), (128, 512), (256, 512)]
        assert all(a.device.type == device for a in ac)

    args_after = merge_chunks(arg_chunks, (TensorChunkSpec(0),) * 3)
    kwargs_after = merge_chunks(kwarg_chunks, {k: TensorChunkSpec(0) for k in kwargs})
    assert isinstance(args_after, tuple) and isinstance(kwargs_after, dict)
    for before, after in zip(args, args_after):
        assert after.shape == before.shape
        np.testing.assert_array_equal(np_(after), np_(before))
    for k in kwargs:
        np.testing.assert_array_equal(np_(kwargs_after[k]), np_(kwargs[k]))
    # the default merge spec (None) concatenates every tensor along dim 0 as well
    for before, after in zip(args, merge_chunks(arg_chunks, None)):
        np.testing.assert_array_equal(np_(after), np_(before))


def test_chunks_are_views_of_the_input():
    x = pipec.randn(6, 4)
    ref = np_(x).copy()
    arg_chunks, _ = split_args_kwargs_into_chunks((x,), None, 3)
    c0, c1, c2 = (a[0] for a in arg_chunks)
    for i, c in enumerate((c0, c1, c2)):
        np.testing.assert_array_equal(np_(c), ref[2 * i:2 * i + 2])
        assert c.data_ptr() == x.data_ptr() + 2 * i * 4 * x.element_size()
    c1.fill_(5.0)
    ref[2:4] = 5.0
    np.testing.assert_array_equal(np_(x), ref)
    c2.mul_(0.0)
    ref[4:6] = 0.0
    np.testing.assert_array_equal(np_(x), ref)


def test_chunks_along_dim1_are_strided_views():
    x = pipec.randn(3, 8)
    ref = np_(x).copy()
    arg_chunks, _ = split_args_kwargs_into_chunks((x,), None, 4, (TensorChunkSpec(1),))
    for i, (c,) in enumerate(arg_chunks):
        assert c.shape == (3, 2)
        np.testing.assert_array_equal(np_(c), ref[:, 2 * i:2 * i + 2])
    arg_chunks[3][0].fill_(-1.0)
    ref[:, 6:8] = -1.0
    np.testing.assert_array_equal(np_(x), ref)


@pytest.mark.parametrize("n,chunks", [(10, 4), (7, 7), (9, 2), (5, 3), (1, 1), (100, 8)])
def test_uneven_splits(n, chunks):
    x = pipec.randn(n, 3)
    y = pipec.randn(2, n)
    arg_chunks, kwarg_chunks = split_args_kwargs_into_chunks(
        (x,), {"y": y}, chunks, kwargs_chunk_spec={"y": TensorChunkSpec(1)})
    assert len(arg_chunks) == chunks == len(kwarg_chunks)
    want = split_sizes(n, chunks)
    assert [c[0].shape[0] for c in arg_chunks] == want
    assert [kw["y"].shape for kw in kwarg_chunks] == [(2, s) for s in want]
    assert max(want) - min(want) <= 1 and sum(want) == n
    np.testing.assert_array_equal(np_(merge_chunks(arg_chunks, None)[0]), np_(x))
    merged = merge_chunks(kwarg_chunks, {"y": TensorChunkSpec(1)})
    np.testing.assert_array_equal(np_(merged["y"]), np_(y))


def test_kwargs_with_specs_and_negative_dims():
    x = pipec.randn(4, 6, 5)
    y = pipec.randn(6, 2)
    z = pipec.randn(3, 6)
    arg_chunks, kwarg_chunks = split_args_kwargs_into_chunks(
        (x,), {"y": y, "z": z}, 3, args_chunk_spec=TensorChunkSpec.from_tuple((1,)),
        kwargs_chunk_spec=TensorChunkSpec.from_dict({"y": 0, "z": -1}))
    for i in range(3):
        np.testing.assert_array_equal(np_(arg_chunks[i][0]), np_(x)[:, 2 * i:2 * i + 2])
        np.testing.assert_array_equal(np_(kwarg_chunks[i]["y"]), np_(y)[2 * i:2 * i + 2])
        np.testing.assert_array_equal(np_(kwarg_chunks[i]["z"]), np_(z)[:, 2 * i:2 * i + 2])
    np.testing.assert_array_equal(
        np_(merge_chunks(arg_chunks, (TensorChunkSpec(1),))[0]), np_(x))
    merged = merge_chunks(kwarg_chunks, TensorChunkSpec.from_dict({"y": 0, "z": -1}))
    np.testing.assert_array_equal(np_(merged["z"]), np_(z))
    np.testing.assert_array_equal(np_(merged["y"]), np_(y))


def test_kwargs_none_and_no_tensors():
    arg_chunks, kwarg_chunks = split_args_kwargs_into_chunks((pipec.randn(4),), None, 2)
    assert kwarg_chunks == [{}, {}]
    arg_chunks, kwarg_chunks = split_args_kwargs_into_chunks((), {}, 3)
    assert arg_chunks == [(), (), ()] and kwarg_chunks == [{}, {}, {}]
    arg_chunks, kwarg_chunks = split_args_kwargs_into_chunks((1, "a"), {"k": None}, 2)
    assert arg_chunks == [(1, "a")] * 2 and kwarg_chunks == [{"k": None}] * 2


# ---- replication of non-tensors ----

def test_non_tensors_are_replicated():
    class Config:
        lr = 0.1

    marker = object()
    cfg = Config()
    x = pipec.randn(4, 2)
    args = (x, 3, "name", None, marker, 2.5, cfg)
    arg_chunks, kwarg_chunks = split_args_kwargs_into_chunks(
        args, {"flag": True, "obj": marker}, 4)
    for ac, kc in zip(arg_chunks, kwarg_chunks):
        assert ac[0].shape == (1, 2)
        assert ac[1:6] == (3, "name", None, marker, 2.5)
        assert ac[4] is marker
        # replicated leaves are the same objects, not copies
        assert ac[6] is cfg
        assert kc["flag"] is True and kc["obj"] is marker


@pytest.mark.parametrize("rep", [_Replicate, _Replicate()], ids=["class", "instance"])
def test_replicate_spec_passes_a_tensor_whole(rep):
    x = pipec.randn(6, 3)
    w = pipec.randn(3, 3)
    arg_chunks, kwarg_chunks = split_args_kwargs_into_chunks(
        (x, w), {"b": w}, 3, args_chunk_spec=(TensorChunkSpec(0), rep),
        kwargs_chunk_spec={"b": rep})
    for ac, kc in zip(arg_chunks, kwarg_chunks):
        assert ac[0].shape == (2, 3)
        assert ac[1] is w and kc["b"] is w


# ---- nested structures ----

def test_nested_structures_default_specs():
    x = pipec.randn(6, 2)
    h = pipec.randn(6, 3, 2)
    m = pipec.randn(6)
    args = ((x, [h, "tag"]), {"mask": m, "n": 7}, Pair(a=x, b=None))
    kwargs = {"state": OrderedDict([("h", h), ("step", 4)]), "lst": [m, (m, 1)]}
    arg_chunks, kwarg_chunks = split_args_kwargs_into_chunks(args, kwargs, 3)
    for i, (ac, kc) in enumerate(zip(arg_chunks, kwarg_chunks)):
        rows = slice(2 * i, 2 * i + 2)
        (cx, (ch, tag)), d, p = ac
        assert isinstance(ac[0], tuple) and isinstance(ac[0][1], list)
        np.testing.assert_array_equal(np_(cx), np_(x)[rows])
        np.testing.assert_array_equal(np_(ch), np_(h)[rows])
        assert tag == "tag"
        assert type(d) is dict and list(d) == ["mask", "n"] and d["n"] == 7
        np.testing.assert_array_equal(np_(d["mask"]), np_(m)[rows])
        assert type(p) is Pair and p.b is None
        np.testing.assert_array_equal(np_(p.a), np_(x)[rows])
        assert type(kc["state"]) is OrderedDict and list(kc["state"]) == ["h", "step"]
        assert kc["state"]["step"] == 4
        np.testing.assert_array_equal(np_(kc["state"]["h"]), np_(h)[rows])
        assert isinstance(kc["lst"], list) and isinstance(kc["lst"][1], tuple)
        assert kc["lst"][1][1] == 1
        np.testing.assert_array_equal(np_(kc["lst"][1][0]), np_(m)[rows])

    merged = merge_chunks(arg_chunks, None)
    assert type(merged) is tuple and type(merged[2]) is Pair
    np.testing.assert_array_equal(np_(merged[0][0]), np_(x))
    np.testing.assert_array_equal(np_(merged[0][1][0]), np_(h))
    assert merged[0][1][1] == "tag" and merged[1]["n"] == 7 and merged[2].b is None
    np.testing.assert_array_equal(np_(merged[1]["mask"]), np_(m))
    merged_kw = merge_chunks(kwarg_chunks, None)
    assert type(merged_kw["state"]) is OrderedDict
    np.testing.assert_array_equal(np_(merged_kw["state"]["h"]), np_(h))


def test_nested_specs_and_subtree_specs():
    x = pipec.randn(4, 6)
    y = pipec.randn(8, 6)
    w = pipec.randn(6, 6)
    args = ((x, w), {"y": y, "k": 2})
    spec = ((TensorChunkSpec(1), _Replicate), {"y": TensorChunkSpec(0), "k": None})
    arg_chunks, _ = split_args_kwargs_into_chunks(args, None, 2, args_chunk_spec=spec)
    for i, ((cx, cw), d) in enumerate(arg_chunks):
        np.testing.assert_array_equal(np_(cx), np_(x)[:, 3 * i:3 * i + 3])
        assert cw is w and d["k"] == 2
        np.testing.assert_array_equal(np_(d["y"]), np_(y)[4 * i:4 * i + 4])

    # one leaf spec stands for every leaf below it
    arg_chunks, kwarg_chunks = split_args_kwargs_into_chunks(
        ([x, x],), {"pair": (y, y)}, 2, args_chunk_spec=(TensorChunkSpec(1),),
        kwargs_chunk_spec={"pair": _Replicate})
    for i, (ac, kc) in enumerate(zip(arg_chunks, kwarg_chunks)):
        assert [t.shape for t in ac[0]] == [(4, 3), (4, 3)]
        assert kc["pair"][0] is y and kc["pair"][1] is y
    merged = merge_chunks(arg_chunks, (TensorChunkSpec(1),))
    assert isinstance(merged[0], list)
    for t in merged[0]:
        np.testing.assert_array_equal(np_(t), np_(x))


# ---- merge reducers and non-tensor outputs ----

def test_merge_non_tensor_outputs_come_from_first_chunk():
    chunks = [(pipec.full((2, 3), float(i)), {"n": i, "name": "out"}) for i in range(3)]
    out, extra = merge_chunks(chunks, None)
    np.testing.assert_array_equal(np_(out), np.repeat([0.0, 1.0, 2.0], 2)[:, None] * np.ones(3))
    assert extra == {"n": 0, "name": "out"}


def test_merge_reducers():
    losses = [pipec.randn(5).sum() for _ in range(4)]
    assert losses[0].shape == ()
    total = merge_chunks(losses, sum_reducer)
    np.testing.assert_allclose(float(total.item()), sum(float(l.item()) for l in losses),
                               rtol=1e-6)

    outs = [(pipec.randn(2, 3), float(i)) for i in range(4)]
    biggest = _CustomReducer(float("-inf"), max)
    merged, m = merge_chunks(outs, (TensorChunkSpec(0), biggest))
    assert merged.shape == (8, 3) and m == 3.0
    merged, s = merge_chunks(outs, (None, sum_reducer))
    assert s == 6.0
    with pytest.raises(TypeError, match="callable"):
        _CustomReducer(0, "add")


def test_merge_replicate_keeps_one_value():
    w = pipec.randn(3)
    chunks = [(pipec.randn(1, 3), w, "cfg") for _ in range(3)]
    out, rw, cfg = merge_chunks(chunks, (TensorChunkSpec(0), _Replicate, _Replicate()))
    assert out.shape == (3, 3) and rw is w and cfg == "cfg"
    with pytest.raises(ValueError, match="replicated"):
        merge_chunks([(1,), (2,)], (_Replicate,))
    # a tensor where chunk 0 holds a number differs, even one equal in value (== on tensors
    # is elementwise, so it must not decide this)
    for other in (pipec.tensor(1), pipec.tensor([1, 1])):
        with pytest.raises(ValueError, match="replicated"):
            merge_chunks([(1,), (other,)], (_Replicate,))


# ---- errors ----

def test_too_few_rows_for_the_chunks_raises():
    x = pipec.randn(3, 4)
    with pytest.raises(ValueError, match=r"args\[0\] has size 3 along dim 0.*chunks=4"):
        split_args_kwargs_into_chunks((x,), None, 4)
    with pytest.raises(ValueError, match=r"kwargs\['y'\] has size 2 along dim 1"):
        split_args_kwargs_into_chunks((pipec.randn(8, 2),), {"y": pipec.randn(8, 2)}, 4,
                                      kwargs_chunk_spec={"y": TensorChunkSpec(1)})
    with pytest.raises(ValueError, match=r"args\[1\]\[0\]\['h'\]"):
        split_args_kwargs_into_chunks((x, ({"h": pipec.randn(1, 4)},)), None, 2)
    with pytest.raises(ValueError, match="0-dimensional"):
        split_args_kwargs_into_chunks((pipec.randn(4).sum(),), None, 2)
    # a 0-d tensor is fine when replicated
    s = pipec.randn(4).sum()
    ac, _ = split_args_kwargs_into_chunks((s,), None, 2, (_Replicate,))
    assert ac[0][0] is s and ac[1][0] is s


def test_spec_errors():
    x = pipec.randn(4, 4)
    with pytest.raises(ValueError, match="args_chunk_spec has 1 entries but there are 2"):
        split_args_kwargs_into_chunks((x, x), None, 2, (TensorChunkSpec(0),))
    with pytest.raises(ValueError, match="args_chunk_spec has 3 entries"):
        split_args_kwargs_into_chunks((x, x), None, 2, TensorChunkSpec.from_tuple((0, 0, 0)))
    with pytest.raises(TypeError, match="args_chunk_spec must be a tuple"):
        split_args_kwargs_into_chunks((x,), None, 2, TensorChunkSpec(0))
    with pytest.raises(ValueError, match=r"no spec for \['z'\]"):
        split_args_kwargs_into_chunks((), {"y": x, "z": x}, 2,
                                      kwargs_chunk_spec=TensorChunkSpec.from_dict({"y": 0}))
    with pytest.raises(ValueError, match=r"spec for absent keywords \['q'\]"):
        split_args_kwargs_into_chunks((), {"y": x}, 2,
                                      kwargs_chunk_spec=TensorChunkSpec.from_dict({"y": 0,
                                                                                  "q": 0}))
    with pytest.raises(ValueError, match=r"spec at args\[0\] has 2 entries"):
        split_args_kwargs_into_chunks(((x, x, x),), None, 2,
                                      ((TensorChunkSpec(0), TensorChunkSpec(0)),))
    with pytest.raises(ValueError, match="not a tuple or list"):
        split_args_kwargs_into_chunks((x,), None, 2, ((TensorChunkSpec(0),),))
    with pytest.raises(ValueError, match="keys"):
        split_args_kwargs_into_chunks(({"a": x},), None, 2, ({"b": TensorChunkSpec(0)},))
    with pytest.raises(TypeError, match=r"TensorChunkSpec\(0\)"):
        split_args_kwargs_into_chunks((x,), None, 2, (0,))
    with pytest.raises(TypeError, match="not a Tensor"):
        split_args_kwargs_into_chunks((x, 3), None, 2, TensorChunkSpec.from_tuple((0, 0)))
    with pytest.raises(TypeError, match="merge-only"):
        split_args_kwargs_into_chunks((x,), None, 2, (sum_reducer,))
    with pytest.raises(IndexError, match="out of range"):
        split_args_kwargs_into_chunks((x,), None, 2, (TensorChunkSpec(2),))


def test_argument_errors():
    x = pipec.randn(4, 4)
    with pytest.raises(ValueError, match="chunks must be at least 1"):
        split_args_kwargs_into_chunks((x,), None, 0)
    with pytest.raises(TypeError, match="chunks must be an int"):
        split_args_kwargs_into_chunks((x,), None, 2.0)
    with pytest.raises(TypeError, match="args must be a tuple"):
        split_args_kwargs_into_chunks(x, None, 2)
    with pytest.raises(TypeError, match="kwargs must be a dict"):
        split_args_kwargs_into_chunks((x,), [x], 2)


def test_merge_errors():
    with pytest.raises(ValueError, match="no chunks"):
        merge_chunks([], None)
    with pytest.raises(ValueError, match="different structure"):
        merge_chunks([(pipec.randn(1, 2),), (pipec.randn(1, 2), 3)], None)
    with pytest.raises(ValueError, match="different structure"):
        merge_chunks([{"a": pipec.randn(1)}, {"b": pipec.randn(1)}], None)
    with pytest.raises(TypeError, match="not a Tensor"):
        merge_chunks([(1,), (2,)], (TensorChunkSpec(0),))
    with pytest.raises(ValueError, match="0-dimensional"):
        merge_chunks([pipec.randn(3).sum(), pipec.randn(3).sum()], None)
    with pytest.raises(ValueError, match="spec at output has 1 entries but the value"):
        merge_chunks([(pipec.randn(1), pipec.randn(1))] * 2, (TensorChunkSpec(0),))
    with pytest.raises(Exception, match=r"merge_chunks: cannot concatenate output\[0\]"):
        merge_chunks([(pipec.randn(1, 2),), (pipec.randn(1, 3),)], None)


# ---- running a model per microbatch ----

def _linear_or_matmul():
    nn = getattr(pipec, "nn", None)
    if nn is not None and hasattr(nn, "Linear"):
        return nn.Linear(8, 8)
    w = pipec.randn(8, 8)
    return lambda x: pipec.matmul(x, w)


@pytest.mark.parametrize("chunks", [1, 2, 4, 5])
def test_model_per_microbatch_matches_full_batch(chunks):
    model = _linear_or_matmul()
    x = pipec.randn(20, 8, requires_grad=True)
    full = model(x)
    full.sum().backward()
    full_grad = np_(x.grad).copy()
    x.grad = None

    arg_chunks, kwarg_chunks = split_args_kwargs_into_chunks((x,), None, chunks)
    outs = [model(*a, **k) for a, k in zip(arg_chunks, kwarg_chunks)]
    merged = merge_chunks(outs, TensorChunkSpec(0))
    assert merged.shape == full.shape
    np.testing.assert_allclose(np_(merged), np_(full), rtol=0, atol=1e-6)
    # gradients flow back through the concatenation and the chunk views into x
    merged.sum().backward()
    np.testing.assert_allclose(np_(x.grad), full_grad, rtol=0, atol=1e-6)


def test_model_with_kwargs_and_chunk_spec():
    """torch's test_chunk_spec, eagerly: ModelWithKwargs on 4 microbatches with
    from_tuple((0,)) and from_dict({"y": 0}) equals the whole-batch forward."""
    d, batch, chunks = 32, 256, 4
    mod = ModelWithKwargs(d_hid=d)
    x = pipec.randn(batch, d)
    y = pipec.randn(batch, d)
    ref = mod(x, y)
    arg_chunks, kwarg_chunks = split_args_kwargs_into_chunks(
        (x,), {"y": y}, chunks, TensorChunkSpec.from_tuple((0,)),
        TensorChunkSpec.from_dict({"y": 0}))
    outs = [mod(*a, **k) for a, k in zip(arg_chunks, kwarg_chunks)]
    assert [o.shape for o in outs] == [(batch // chunks, d)] * chunks
    out = merge_chunks(outs, TensorChunkSpec(0))
    scale = max(float(np.abs(np_(ref)).max()), 1.0)
    np.testing.assert_allclose(np_(out), np_(ref), rtol=1e-5, atol=1e-5 * scale)

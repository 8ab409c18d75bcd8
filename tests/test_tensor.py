"""test_tensor.py — tensor basics: creation and dtypes, repr, NumPy interop (shared memory),
indexing views, conversions (float16/bfloat16 round trips), factories, the random generator,
in-place fills and copies, the small Tensor methods (size, numel, item, tolist, ...), the
elementwise comparisons (==, <, ..., eq, lt, ...: bool results against NumPy, scalars on
either side, dtype promotion, never requiring grad, identity hashing, `in`) and iteration
along dim 0 (CUDA variants marked `cuda`).

Values are compared exactly where the operation is exact (copies, fills, indexing,
conversions of representable values) and with helpers.TOL elsewhere.
"""
import operator

import numpy as np
import pytest

import pipec
from helpers import make, to_np, assert_close, rng, LAYOUTS


# ---- creation and dtypes ----

def test_tensor_from_python_lists_infers_torch_dtypes():
    f = pipec.tensor([1.0, 2.0, 3.5])
    assert f.dtype == pipec.float32
    assert tuple(f.shape) == (3,)
    assert f.tolist() == [1.0, 2.0, 3.5]
    i = pipec.tensor([[1, 2], [3, 4]])
    assert i.dtype == pipec.int64
    assert tuple(i.shape) == (2, 2)
    assert i.tolist() == [[1, 2], [3, 4]]
    b = pipec.tensor([True, False])
    assert b.dtype == pipec.bool
    assert b.tolist() == [True, False]
    s = pipec.tensor(2.5)
    assert s.ndim == 0 and tuple(s.shape) == () and s.item() == 2.5


def test_tensor_from_numpy_keeps_float_precision_and_copies():
    a = np.array([1.0, 2.0], dtype=np.float64)
    t = pipec.tensor(a)
    assert t.dtype == pipec.float64
    a[0] = 99.0
    assert t.tolist() == [1.0, 2.0], "pipec.tensor must copy its data"


@pytest.mark.parametrize("dtype", [pipec.float32, pipec.float64, pipec.float16,
                                   pipec.bfloat16, pipec.int64, pipec.bool])
def test_tensor_explicit_dtype(dtype):
    t = pipec.tensor([0, 1, 2], dtype=dtype)
    assert t.dtype == dtype
    expected = [False, True, True] if dtype == pipec.bool else [0, 1, 2]
    assert to_np(t).tolist() == expected


def test_dtype_objects():
    assert pipec.float32 != pipec.float64
    assert pipec.float32 == pipec.float32
    assert pipec.float32.is_floating_point and not pipec.int64.is_floating_point
    assert pipec.float32.itemsize == 4 and pipec.float16.itemsize == 2
    assert pipec.bfloat16.itemsize == 2 and pipec.int64.itemsize == 8
    assert pipec.float == pipec.float32 and pipec.double == pipec.float64
    assert "float16" in repr(pipec.float16)


def test_requires_grad_argument():
    t = pipec.tensor([1.0, 2.0], requires_grad=True)
    assert t.requires_grad and t.grad is None and t.grad_fn is None
    u = pipec.tensor([1.0, 2.0])
    assert not u.requires_grad
    assert u.requires_grad_() is u and u.requires_grad
    u.requires_grad_(False)
    assert not u.requires_grad


# ---- repr ----

def test_repr_like_numpy_values():
    assert repr(pipec.tensor([1.0, 2.0])) == "tensor([1., 2.])"
    assert repr(pipec.tensor([1, 2, 3])) == "tensor([1, 2, 3])"
    assert repr(pipec.tensor([[1.0, 2.0], [3.0, 4.0]])) == \
        "tensor([[1., 2.],\n        [3., 4.]])"
    assert repr(pipec.tensor([1.0, 2.0], requires_grad=True)) == \
        "tensor([1., 2.], requires_grad=True)"
    assert str(pipec.tensor(3.0)) == "tensor(3.)"


def test_repr_shows_non_default_dtype_and_grad_fn():
    r = repr(pipec.tensor([1.0, 2.0], dtype=pipec.float64))
    assert r.startswith("tensor([1., 2.]") and "float64" in r
    x = pipec.tensor([1.0, 2.0], requires_grad=True)
    assert "grad_fn=<MulBackward0>" in repr(x * 2)
    assert repr(pipec.zeros(0, 3)) == "tensor([], size=(0, 3))"


# ---- NumPy interop ----

@pytest.mark.parametrize("np_dtype,pc_dtype", [(np.float32, pipec.float32),
                                              (np.float64, pipec.float64),
                                              (np.float16, pipec.float16),
                                              (np.int64, pipec.int64),
                                              (np.bool_, pipec.bool)])
def test_from_numpy_dtypes(np_dtype, pc_dtype):
    a = (np.arange(6) % 3).astype(np_dtype).reshape(2, 3)
    t = pipec.from_numpy(a)
    assert t.dtype == pc_dtype
    assert tuple(t.shape) == (2, 3)
    np.testing.assert_array_equal(t.numpy(), a)


def test_from_numpy_shares_memory_both_ways():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    t = pipec.from_numpy(a)
    a[0, 1] = 42.0
    assert t[0, 1].item() == 42.0
    t.fill_(7.0)
    assert np.all(a == 7.0)


def test_from_numpy_strided_array_values_and_sharing():
    base = np.arange(12, dtype=np.float64).reshape(3, 4)
    a = base.T  # non-contiguous, positive strides
    t = pipec.from_numpy(a)
    assert tuple(t.shape) == (4, 3)
    np.testing.assert_array_equal(to_np(t), a)
    base[1, 2] = -5.0
    assert t[2, 1].item() == -5.0


def test_from_numpy_keeps_array_alive():
    t = pipec.from_numpy(np.arange(1000, dtype=np.float64))
    import gc
    gc.collect()
    assert t.sum().item() == sum(range(1000))


def test_numpy_shares_memory_with_tensor():
    t = pipec.zeros(3)
    a = t.numpy()
    a[1] = 5.0
    assert t.tolist() == [0.0, 5.0, 0.0]


def test_numpy_of_view_has_the_view_values():
    t = pipec.tensor(np.arange(12.0).reshape(3, 4))
    v = t.t()
    np.testing.assert_array_equal(v.numpy(), np.arange(12.0).reshape(3, 4).T)
    s = t[:, 1:3]
    np.testing.assert_array_equal(s.numpy(), np.arange(12.0).reshape(3, 4)[:, 1:3])


def test_array_protocol():
    t = pipec.tensor([[1.0, 2.0], [3.0, 4.0]])
    a = np.asarray(t)
    np.testing.assert_array_equal(a, [[1.0, 2.0], [3.0, 4.0]])


# ---- tolist, item, size ----

def test_tolist_and_item():
    t = pipec.tensor(np.arange(6.0).reshape(2, 3), dtype=pipec.float64)
    assert t.tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    assert isinstance(t.tolist()[0][0], float)
    i = pipec.tensor([[4]])
    assert i.item() == 4 and isinstance(i.item(), int)
    assert isinstance(pipec.tensor(True).item(), bool)
    assert pipec.tensor(1.5).tolist() == 1.5
    assert pipec.zeros(0, 2).tolist() == []


def test_size_numel_dims_contiguity():
    t = pipec.zeros(2, 3, 4)
    assert tuple(t.size()) == (2, 3, 4)
    assert t.size(1) == 3 and t.size(-1) == 4
    assert tuple(t.shape) == (2, 3, 4)
    assert t.numel() == 24 and t.ndim == 3 and t.dim() == 3
    assert t.is_contiguous()
    tt = t.transpose(0, 2)
    assert not tt.is_contiguous()
    c = tt.contiguous()
    assert c.is_contiguous() and tuple(c.shape) == (4, 3, 2)
    np.testing.assert_array_equal(to_np(c), to_np(tt))
    assert t.contiguous() is t
    assert pipec.zeros(0, 5).numel() == 0


# ---- indexing: views that share memory ----

def test_indexing_values_match_numpy():
    a = np.arange(24.0).reshape(2, 3, 4)
    t = pipec.tensor(a, dtype=pipec.float64)
    cases = [(1,), (-1,), (slice(1, 3),), (0, 2), (1, -1, 3), (slice(None), 1),
             (slice(None), slice(None), slice(None, None, 2)), (0, slice(1, 3), slice(0, 4, 3)),
             (slice(5, 10),), (slice(-2, None),)]
    for idx in cases:
        got = t[idx]
        np.testing.assert_array_equal(to_np(got), a[idx], err_msg=str(idx))
        assert tuple(got.shape) == a[idx].shape, idx


def test_indexing_returns_views_sharing_memory():
    t = pipec.zeros(3, 4)
    row = t[1]
    row.fill_(2.0)
    col = t[:, 3]
    col.fill_(5.0)
    expected = np.zeros((3, 4))
    expected[1] = 2.0
    expected[:, 3] = 5.0
    np.testing.assert_array_equal(to_np(t), expected)
    strided = t[::2]
    assert not strided.is_contiguous()
    strided.zero_()
    expected[::2] = 0.0
    np.testing.assert_array_equal(to_np(t), expected)


def test_integer_index_gives_zero_dim_tensor():
    t = pipec.tensor([[1.0, 2.0], [3.0, 4.0]])
    e = t[1, 0]
    assert isinstance(e, pipec.Tensor) and e.ndim == 0 and e.item() == 3.0


def test_view_ops_share_memory():
    t = pipec.zeros(2, 6)
    for v in (t.view(3, 4), t.reshape(12), t.transpose(0, 1), t.t(), t.unsqueeze(0),
              t.flatten(), t.permute(1, 0), t.detach()):
        v.fill_(1.0)
        assert to_np(t).sum() == 12.0
        t.zero_()


def test_expand_is_a_stride_zero_view():
    base = pipec.tensor([[1.0], [2.0], [3.0]])
    e = base.expand(3, 4)
    np.testing.assert_array_equal(to_np(e), np.broadcast_to([[1.0], [2.0], [3.0]], (3, 4)))
    e2 = base.expand(2, -1, 4)
    assert tuple(e2.shape) == (2, 3, 4)
    base.fill_(9.0)
    assert np.all(to_np(e) == 9.0)


# ---- conversions ----

def test_float16_round_trip_matches_numpy_rounding():
    g = np.random.default_rng()
    x = (g.standard_normal(1000) * 100).astype(np.float32)
    x[:6] = [0.0, -0.0, 65504.0, 1e-7, 70000.0, -3.0e-5]
    t = pipec.tensor(x, dtype=pipec.float32)
    h = t.to(pipec.float16)
    assert h.dtype == pipec.float16
    back = h.to(pipec.float32).numpy()
    with np.errstate(over="ignore"):  # 70000 overflows to inf on purpose
        expected = x.astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(back, expected)
    assert t.half().dtype == pipec.float16


def _np_bf16_round(x):
    """float32 -> bfloat16 (round to nearest even) -> float32, in NumPy."""
    u = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    r = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return (r << 16).astype(np.uint32).view(np.float32)


def test_bfloat16_round_trip_rounds_to_nearest_even():
    g = np.random.default_rng()
    x = (g.standard_normal(1000) * 10).astype(np.float32)
    x[:4] = [0.0, 1.0, -2.5, 3.0e38]
    t = pipec.tensor(x, dtype=pipec.float32)
    b = t.to(pipec.bfloat16)
    assert b.dtype == pipec.bfloat16
    back = b.to(pipec.float32).numpy()
    np.testing.assert_array_equal(back, _np_bf16_round(x))
    assert t.bfloat16().dtype == pipec.bfloat16


@pytest.mark.parametrize("dtype", [pipec.float16, pipec.bfloat16, pipec.float64])
def test_exact_values_survive_round_trips(dtype):
    vals = [0.0, 1.0, -2.0, 0.5, 1.5, -0.25, 3.0, 96.0]
    t = pipec.tensor(vals).to(dtype)
    assert t.to(pipec.float32).tolist() == vals
    assert t.float().dtype == pipec.float32


def test_float_to_int64_truncates_and_bool_is_nonzero():
    t = pipec.tensor([1.7, -1.7, 0.0, 2.0])
    assert t.to(pipec.int64).tolist() == [1, -1, 0, 2]
    assert t.long().dtype == pipec.int64
    assert t.to(pipec.bool).tolist() == [True, True, False, True]
    assert pipec.tensor([3, 0]).to(pipec.float64).tolist() == [3.0, 0.0]


def test_to_same_dtype_and_device_returns_self():
    t = pipec.tensor([1.0])
    assert t.to(pipec.float32) is t
    assert t.to("cpu") is t
    assert t.to(pipec.device("cpu")) is t
    assert t.cpu() is t
    d = t.to(pipec.float64)
    assert d is not t and d.dtype == pipec.float64
    assert t.device == pipec.device("cpu")
    assert str(t.device) == "cpu" and t.device.type == "cpu"


def test_conversion_of_noncontiguous_view():
    a = np.arange(12.0).reshape(3, 4)
    t = pipec.tensor(a).t()
    h = t.to(pipec.float64)
    np.testing.assert_array_equal(to_np(h), a.T)


# ---- factories ----

def test_zeros_ones_full_empty():
    z = pipec.zeros(2, 3)
    assert tuple(z.shape) == (2, 3) and z.dtype == pipec.float32
    assert np.all(to_np(z) == 0)
    o = pipec.ones((4,), dtype=pipec.float64)
    assert o.dtype == pipec.float64 and o.tolist() == [1.0] * 4
    f = pipec.full((2, 2), 3.5)
    assert f.tolist() == [[3.5, 3.5], [3.5, 3.5]]
    fi = pipec.full((2,), 7)
    assert fi.dtype == pipec.int64 and fi.tolist() == [7, 7]
    e = pipec.empty(3, 0, 2)
    assert tuple(e.shape) == (3, 0, 2) and e.numel() == 0
    s = pipec.zeros(())
    assert s.ndim == 0 and s.item() == 0.0


def test_arange():
    assert pipec.arange(5).tolist() == [0, 1, 2, 3, 4]
    assert pipec.arange(5).dtype == pipec.int64
    a = pipec.arange(0, 1, 0.25)
    assert a.dtype == pipec.float32 and a.tolist() == [0.0, 0.25, 0.5, 0.75]
    assert pipec.arange(5, 0, -2).tolist() == [5, 3, 1]
    assert pipec.arange(2, 2).numel() == 0
    assert pipec.arange(3, dtype=pipec.float64).dtype == pipec.float64


def test_like_factories_keep_shape_and_dtype():
    t = pipec.tensor(np.ones((2, 5)), dtype=pipec.float64)
    for fn in (pipec.zeros_like, pipec.ones_like, pipec.empty_like, pipec.randn_like):
        u = fn(t)
        assert tuple(u.shape) == (2, 5) and u.dtype == pipec.float64, fn.__name__
        assert not u.requires_grad
    assert np.all(to_np(pipec.zeros_like(t)) == 0)
    assert np.all(to_np(pipec.ones_like(t)) == 1)
    assert pipec.zeros_like(t, dtype=pipec.float32).dtype == pipec.float32


def test_randn_and_rand_statistics():
    pipec.manual_seed(1234)
    n = pipec.randn(20000, dtype=pipec.float64)
    a = to_np(n)
    assert abs(a.mean()) < 0.03 and abs(a.std() - 1.0) < 0.03
    u = to_np(pipec.rand(20000))
    assert u.min() >= 0.0 and u.max() < 1.0
    assert abs(u.mean() - 0.5) < 0.02
    assert np.unique(u).size > 19000, "uniform samples repeat too often"


def test_manual_seed_reproducible():
    pipec.manual_seed(7)
    a1, b1 = to_np(pipec.randn(16)), to_np(pipec.rand(3, 3))
    pipec.manual_seed(7)
    a2, b2 = to_np(pipec.randn(16)), to_np(pipec.rand(3, 3))
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_array_equal(b1, b2)
    assert not np.array_equal(a1, to_np(pipec.randn(16))), "the stream must advance"
    pipec.manual_seed(8)
    assert not np.array_equal(a1, to_np(pipec.randn(16))), "seeds must differ"


def test_uniform_and_normal_in_place():
    pipec.manual_seed(3)
    t = pipec.empty(10000, dtype=pipec.float64)
    assert t.uniform_(-2.0, 3.0) is t
    a = to_np(t)
    assert a.min() >= -2.0 and a.max() < 3.0 and abs(a.mean() - 0.5) < 0.05
    t.normal_(5.0, 0.5)
    a = to_np(t)
    assert abs(a.mean() - 5.0) < 0.02 and abs(a.std() - 0.5) < 0.02
    pipec.manual_seed(3)
    t2 = pipec.empty(10000, dtype=pipec.float64).uniform_(-2.0, 3.0)
    pipec.manual_seed(3)
    t3 = pipec.empty(10000, dtype=pipec.float64).uniform_(-2.0, 3.0)
    np.testing.assert_array_equal(to_np(t2), to_np(t3))


# ---- in-place fills and copies ----

def test_fill_zero_copy():
    t = pipec.empty(2, 3)
    assert t.fill_(2.5) is t
    assert np.all(to_np(t) == 2.5)
    assert t.zero_() is t
    assert np.all(to_np(t) == 0)
    src = pipec.tensor([1.0, 2.0, 3.0])
    assert t.copy_(src) is t
    np.testing.assert_array_equal(to_np(t), [[1, 2, 3], [1, 2, 3]])
    t.copy_(pipec.tensor([[1.5], [2.5]], dtype=pipec.float64))
    np.testing.assert_array_equal(to_np(t), [[1.5] * 3, [2.5] * 3])
    assert t.dtype == pipec.float32


@pytest.mark.parametrize("layout", LAYOUTS)
def test_copy_into_noncontiguous_destination(layout):
    g = np.random.default_rng()
    src = g.standard_normal((3, 4))
    dst = make(np.zeros((3, 4)), "float64", layout)
    dst.copy_(pipec.tensor(src))
    assert_close(dst, src)


def test_clone_does_not_share_memory():
    t = pipec.tensor([1.0, 2.0])
    c = t.clone()
    c.fill_(0.0)
    assert t.tolist() == [1.0, 2.0]
    c2 = pipec.clone(t)
    assert c2.tolist() == [1.0, 2.0]


def test_int64_and_bool_tensors_basic_ops():
    a = pipec.tensor([1, 2, 3])
    assert (a + a).tolist() == [2, 4, 6] and (a + a).dtype == pipec.int64
    assert (a * 3).tolist() == [3, 6, 9] and (a * 3).dtype == pipec.int64
    assert a.sum().item() == 6
    f = a + pipec.tensor([0.5, 0.5, 0.5])
    assert f.dtype == pipec.float32 and f.tolist() == [1.5, 2.5, 3.5]


# ---- comparisons ----
# Exact against NumPy: the values are small integers and halves (exact in every dtype here,
# bfloat16 and float16 included) with many ties, plus NaN for the floating dtypes, so every
# relation has true and false cases and no rounding can move one.

CMP_OPS = {
    "eq": (operator.eq, np.equal), "ne": (operator.ne, np.not_equal),
    "lt": (operator.lt, np.less), "le": (operator.le, np.less_equal),
    "gt": (operator.gt, np.greater), "ge": (operator.ge, np.greater_equal),
}
CMP_DTYPES = [pipec.float32, pipec.float64, pipec.float16, pipec.bfloat16, pipec.int64]
CMP_DTYPE_IDS = [str(d).split(".")[-1] for d in CMP_DTYPES]


def _cmp_values(g, shape, dtype):
    """Halves in [-2, 2] (integers for int64), with NaN sprinkled in for float dtypes."""
    if dtype == pipec.int64:
        return g.integers(-2, 3, size=shape).astype(np.float64)
    a = g.integers(-4, 5, size=shape) / 2.0
    if a.size:
        a.flat[g.integers(0, a.size, size=max(1, a.size // 8))] = np.nan
    return a


def _cmp_tensor(a, dtype, layout="contiguous", device="cpu", requires_grad=False):
    t = make(a, dtype, layout).to(device)
    if requires_grad:
        t.requires_grad_(True)
    return t


def _check_cmp(res, expected, device="cpu"):
    assert isinstance(res, pipec.Tensor)
    assert res.dtype == pipec.bool, res.dtype
    assert res.device == pipec.device(device)
    assert not res.requires_grad and res.grad_fn is None
    assert tuple(res.shape) == expected.shape
    np.testing.assert_array_equal(to_np(res), expected)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", CMP_DTYPES, ids=CMP_DTYPE_IDS)
@pytest.mark.parametrize("name", sorted(CMP_OPS))
def test_compare_tensors_broadcast_against_numpy(name, dtype, layout):
    op, np_op = CMP_OPS[name]
    g = rng()
    a = _cmp_values(g, (3, 1, 4), dtype)
    b = _cmp_values(g, (5, 4), dtype)
    b[0] = a[0, 0]  # guaranteed ties beside the NaNs
    want = np_op(a, b)
    ta, tb = _cmp_tensor(a, dtype, layout), _cmp_tensor(b, dtype, layout)
    _check_cmp(op(ta, tb), want)
    _check_cmp(getattr(ta, name)(tb), want)
    _check_cmp(getattr(pipec, name)(ta, tb), want)
    _check_cmp(getattr(pipec, name)(ta, other=tb), want)
    # the reversed operands broadcast the other way round
    _check_cmp(op(tb, ta), np_op(b, a))


@pytest.mark.parametrize("dtype", CMP_DTYPES, ids=CMP_DTYPE_IDS)
@pytest.mark.parametrize("name", sorted(CMP_OPS))
def test_compare_with_python_scalars_on_either_side(name, dtype):
    op, np_op = CMP_OPS[name]
    a = _cmp_values(rng(), (4, 6), dtype)
    t = _cmp_tensor(a, dtype)
    for s in (0, 1, -2, 0.5, -1.5, True, float("nan"), float("inf")):
        _check_cmp(op(t, s), np_op(a, s))
        _check_cmp(op(s, t), np_op(s, a))  # e.g. 0 < t: Python calls t > 0
        _check_cmp(getattr(t, name)(s), np_op(a, s))
        _check_cmp(getattr(pipec, name)(t, s), np_op(a, s))


def test_compare_promotes_dtypes_like_the_arithmetic_ops():
    i = pipec.tensor([1, 2, 3])
    f = pipec.tensor([1.5, 2.0, 2.5])
    _check_cmp(i < f, np.array([True, False, False]))   # int64 vs float32: in float32
    _check_cmp(f.to(pipec.float64) >= i, np.array([True, True, False]))
    _check_cmp(i.to(pipec.bfloat16) == f.to(pipec.float16), np.array([False, True, False]))
    _check_cmp(i == 2.0, np.array([False, True, False]))  # int tensor, float scalar
    _check_cmp(i > 1.5, np.array([False, True, True]))
    b = pipec.tensor([True, False])
    _check_cmp(b == 1, np.array([True, False]))
    _check_cmp(b == 2, np.array([False, False]))  # 2 is not True: compared as int64
    _check_cmp(b == True, np.array([True, False]))  # noqa: E712
    _check_cmp(b < pipec.tensor([1, 0]), np.array([False, False]))
    _check_cmp(b != pipec.tensor([True, True]), np.array([False, True]))


def test_compare_int64_is_exact_beyond_float64():
    big = 2 ** 62
    a = pipec.tensor([big, big + 1, -big])
    b = pipec.tensor([big + 1, big + 1, -big - 1])
    _check_cmp(a == b, np.array([False, True, False]))
    _check_cmp(a < b, np.array([True, False, False]))
    _check_cmp(a >= b, np.array([False, True, True]))


def test_compare_nan_is_unordered_and_unequal():
    x = pipec.tensor([float("nan"), 1.0, float("nan")])
    y = pipec.tensor([float("nan"), float("nan"), 1.0])
    assert (x == x).tolist() == [False, True, False]
    assert (x != x).tolist() == [True, False, True]
    for op in (operator.lt, operator.le, operator.gt, operator.ge, operator.eq):
        assert op(x, y).tolist() == [False, False, False]
    assert (x != y).tolist() == [True, True, True]


@pytest.mark.parametrize("name", sorted(CMP_OPS))
def test_compare_never_requires_grad(name):
    op, _ = CMP_OPS[name]
    x = pipec.tensor([-1.0, 0.0, 2.0], requires_grad=True)
    y = x * 2.0  # a non-leaf with history
    for res in (op(x, 0.0), op(0.0, x), op(x, y), getattr(x, name)(y),
                getattr(pipec, name)(y, x)):
        assert res.dtype == pipec.bool
        assert not res.requires_grad and res.grad_fn is None
    # a comparison used as a mask passes the gradient only through the other factor
    mask = op(x, 0.0)
    (x * mask).sum().backward()
    np.testing.assert_array_equal(to_np(x.grad), to_np(mask).astype(np.float64))


def test_compare_0d_results_convert_to_bool():
    t = pipec.tensor(3.0)
    assert bool(t > 2) and not bool(t < 2) and (t == 3).ndim == 0
    assert bool(2 < t) and bool(pipec.tensor(2) <= 2)


def test_compare_errors():
    a, b = pipec.zeros(2, 3), pipec.zeros(4)
    with pytest.raises(ValueError, match="broadcast|shape"):
        a == b
    with pytest.raises(TypeError, match="'other' must be a Tensor or a number"):
        a.eq("x")
    with pytest.raises(TypeError, match="'other' must be a Tensor or a number"):
        pipec.lt(a, [1, 2, 3])
    with pytest.raises(TypeError):
        a < "x"
    with pytest.raises(TypeError):
        None >= a


def test_equality_with_other_objects_falls_back_to_identity():
    t = pipec.tensor([1.0, 2.0])
    assert (t == None) is False  # noqa: E711 (as torch: no elementwise meaning)
    assert (t != "abc") is True
    assert (t == object()) is False


def test_tensors_stay_hashable_by_identity():
    a = pipec.tensor([1.0, 2.0])
    b = pipec.tensor([1.0, 2.0])  # equal values, another object
    assert hash(a) == hash(a) and hash(a) != hash(b)
    d = {a: "a", b: "b"}
    assert d[a] == "a" and d[b] == "b" and len(d) == 2
    s = {a, b, a}
    assert len(s) == 2 and a in s and b in s
    assert pipec.tensor([1.0, 2.0]) not in s
    # list search goes through ==: the very object is found by identity, but passing another
    # tensor on the way compares elementwise, which has no truth value (as in torch)
    assert a in [a] and [a, b].index(a) == 0
    with pytest.raises(RuntimeError, match="ambiguous"):
        [a, b].index(b)


# ---- iteration ----

def test_iteration_yields_views_along_dim0():
    a = rng().standard_normal((3, 4))
    t = pipec.tensor(a, dtype=pipec.float64)
    rows = list(t)
    assert len(rows) == 3
    for i, r in enumerate(rows):
        assert tuple(r.shape) == (4,)
        np.testing.assert_array_equal(to_np(r), a[i])
    rows[1].fill_(7.0)  # views: writing a row writes t
    assert np.all(to_np(t)[1] == 7.0)
    first, second, third = t  # unpacking
    assert second.tolist() == [7.0] * 4
    assert [x.item() for x in pipec.tensor([1, 2, 3])] == [1, 2, 3]
    assert [r.tolist() for r in t.t()][0] == to_np(t)[:, 0].tolist()  # non-contiguous
    assert list(pipec.zeros(0, 2)) == []


def test_iteration_rows_carry_autograd():
    x = pipec.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    total = None
    for k, row in enumerate(x):
        assert row.requires_grad and row.grad_fn is not None
        total = row.sum() * (k + 1) if total is None else total + row.sum() * (k + 1)
    total.backward()
    np.testing.assert_array_equal(to_np(x.grad), [[1.0, 1.0], [2.0, 2.0]])


def test_membership_is_any_element_equal():
    t = pipec.tensor([[1.0, 2.0], [3.0, float("nan")]])
    assert 2 in t and 3.0 in t and True not in pipec.tensor([0, 2])
    assert 5 not in t and float("nan") not in t  # NaN equals nothing
    assert pipec.tensor([3.0, 7.0]) in t and pipec.tensor([9.0]) not in t  # broadcast rows
    assert 0 in pipec.tensor(0) and 1 not in pipec.zeros(0)
    with pytest.raises(RuntimeError, match="needs x to be a tensor or a number"):
        "a" in t


def test_iteration_over_0d_tensor_raises():
    with pytest.raises(TypeError, match="iteration over a 0-d tensor"):
        iter(pipec.tensor(1.0))
    with pytest.raises(TypeError, match="iteration over a 0-d tensor"):
        for _ in pipec.tensor(1):
            pass


# ---- comparisons and iteration on CUDA (same checks against the CPU result) ----

@pytest.mark.cuda
@pytest.mark.parametrize("dtype", CMP_DTYPES, ids=CMP_DTYPE_IDS)
@pytest.mark.parametrize("name", sorted(CMP_OPS))
def test_cuda_compare_matches_numpy(name, dtype):
    op, np_op = CMP_OPS[name]
    g = rng()
    a = _cmp_values(g, (3, 1, 4), dtype)
    b = _cmp_values(g, (5, 4), dtype)
    b[0] = a[0, 0]
    for layout in LAYOUTS:
        ta = _cmp_tensor(a, dtype, layout, "cuda", requires_grad=dtype != pipec.int64)
        tb = _cmp_tensor(b, dtype, layout, "cuda")
        _check_cmp(op(ta, tb), np_op(a, b), "cuda:0")
        _check_cmp(getattr(pipec, name)(tb, ta), np_op(b, a), "cuda:0")
        for s in (0, 0.5, -2, float("nan")):
            _check_cmp(op(ta, s), np_op(a, s), "cuda:0")
            _check_cmp(op(s, ta), np_op(s, a), "cuda:0")
            _check_cmp(getattr(ta, name)(s), np_op(a, s), "cuda:0")


@pytest.mark.cuda
def test_cuda_compare_int64_exact_and_bool_scalars():
    big = 2 ** 62
    a = pipec.tensor([big, big + 1], device="cuda")
    b = pipec.tensor([big + 1, big + 1], device="cuda")
    _check_cmp(a < b, np.array([True, False]), "cuda:0")
    _check_cmp(a == b, np.array([False, True]), "cuda:0")
    m = pipec.tensor([True, False], device="cuda")
    _check_cmp(m == 2, np.array([False, False]), "cuda:0")
    _check_cmp(m >= 1, np.array([True, False]), "cuda:0")


@pytest.mark.cuda
def test_cuda_iteration_yields_cuda_views():
    t = pipec.arange(6, dtype=pipec.float32, device="cuda").reshape(2, 3)
    rows = list(t)
    assert len(rows) == 2 and all(r.device == t.device for r in rows)
    assert rows[1].tolist() == [3.0, 4.0, 5.0]
    rows[0].fill_(-1.0)
    assert t.cpu().tolist()[0] == [-1.0] * 3
    with pytest.raises(TypeError, match="iteration over a 0-d tensor"):
        iter(t.sum())

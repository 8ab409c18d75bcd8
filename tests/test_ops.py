"""test_ops.py — every tensor op, forward and backward, against NumPy float64.

Each op runs on fresh random inputs of several shapes (broadcasting, size-0 and size-1 dims,
0-d tensors) and layouts (contiguous, transposed views, strided slices), in float64
(tolerance rtol 1e-10: same formulas in double) and float32 (rtol 1e-5: the reference is
computed in float64 from the float32-rounded inputs, so only pipec's float32 arithmetic
differs). Gradients are compared with the analytic NumPy derivative and, in float64, with
central finite differences (helpers.check_grad).

CUDA: the last section repeats a representative op set on a GPU against the CPU result
(rtol 1e-4: different summation orders and device libm; no TF32, as torch's default).
"""
import math

import numpy as np
import pytest

import pipec
import pipec.nn.functional as F
from helpers import (make, to_np, assert_close, check_grad, np_gelu, np_gelu_grad,
                     np_sigmoid, np_softmax, np_log_softmax, sum_to_shape, LAYOUTS, TOL)

DT = ("float64", "float32")


def _rand(shape, domain="any", g=None):
    g = g or np.random.default_rng()
    x = g.standard_normal(shape)
    if domain == "pos":
        x = np.abs(x) + 0.5
    elif domain == "nonzero":
        x = np.where(np.abs(x) < 0.2, np.sign(x + 1e-30) * 0.2 + x, x)
    return x


def _rounded(x, dtype):
    """Values the op actually sees: x rounded to dtype, back in float64."""
    return x.astype(np.float32).astype(np.float64) if dtype == "float32" else x


def _dt(dtype):
    return pipec.float64 if dtype == "float64" else pipec.float32


# ---- unary elementwise ----

UNARY = {
    "relu": (lambda x: np.maximum(x, 0.0), lambda x: (x > 0) * 1.0, "nonzero"),
    "gelu": (np_gelu, np_gelu_grad, "any"),
    "tanh": (np.tanh, lambda x: 1.0 - np.tanh(x) ** 2, "any"),
    "sigmoid": (np_sigmoid, lambda x: np_sigmoid(x) * (1.0 - np_sigmoid(x)), "any"),
    "exp": (np.exp, np.exp, "any"),
    "log": (np.log, lambda x: 1.0 / x, "pos"),
    "neg": (np.negative, lambda x: -np.ones_like(x), "any"),
    "abs": (np.abs, np.sign, "nonzero"),
    "sqrt": (np.sqrt, lambda x: 0.5 / np.sqrt(x), "pos"),
}
UNARY_SHAPES = [(), (1,), (7,), (3, 4), (2, 3, 4), (0, 3), (1, 1), (4, 1, 3)]


@pytest.mark.parametrize("dtype", DT)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", UNARY_SHAPES, ids=str)
@pytest.mark.parametrize("op", sorted(UNARY))
def test_unary_forward(op, shape, layout, dtype):
    f, _, domain = UNARY[op]
    x = _rounded(_rand(shape, domain), dtype)
    t = make(x, dtype, layout)
    y = getattr(pipec, op)(t)
    assert y.dtype == _dt(dtype) and tuple(y.shape) == shape
    assert_close(y, f(x), dtype, msg=op)
    assert_close(getattr(t, op)(), f(x), dtype, msg=op + " method")


@pytest.mark.parametrize("dtype", DT)
@pytest.mark.parametrize("shape", [(), (5,), (3, 4), (0, 2)], ids=str)
@pytest.mark.parametrize("op", sorted(UNARY))
def test_unary_backward(op, shape, dtype):
    f, df, domain = UNARY[op]
    x = _rounded(_rand(shape, domain), dtype)
    R = _rounded(np.random.default_rng().standard_normal(shape), dtype)
    t = make(x, dtype, requires_grad=True)
    y = getattr(pipec, op)(t)
    assert y.requires_grad and y.grad_fn is not None
    y.backward(pipec.tensor(R, dtype=_dt(dtype)))
    assert t.grad is not None and t.grad.dtype == _dt(dtype)
    assert_close(t.grad, R * df(x), dtype, msg=op)


@pytest.mark.parametrize("op", sorted(UNARY))
def test_unary_finite_differences(op):
    _, _, domain = UNARY[op]
    check_grad(lambda t: getattr(pipec, op)(t), [_rand((2, 3), domain)])


@pytest.mark.parametrize("op", sorted(UNARY))
def test_unary_noncontiguous_backward(op):
    _, df, domain = UNARY[op]
    x = _rand((3, 4), domain)
    base = pipec.tensor(np.ascontiguousarray(x.T), requires_grad=True)
    y = getattr(pipec, op)(base.t())
    R = np.random.default_rng().standard_normal((3, 4))
    y.backward(pipec.tensor(R))
    assert_close(base.grad, (R * df(x)).T)


def test_functional_activations_match_top_level():
    x = pipec.tensor(_rand((4, 5)))
    for name in ("relu", "gelu"):
        np.testing.assert_array_equal(to_np(getattr(F, name)(x)), to_np(getattr(pipec, name)(x)))


def test_relu_gelu_values_at_known_points():
    x = pipec.tensor([-2.0, -0.5, 0.0, 0.5, 2.0], dtype=pipec.float64)
    assert pipec.relu(x).tolist() == [0.0, 0.0, 0.0, 0.5, 2.0]
    # gelu(1) = 0.5 * (1 + erf(1/sqrt(2))) = 0.8413447460685429
    assert abs(pipec.gelu(pipec.tensor(1.0, dtype=pipec.float64)).item() - 0.8413447460685429) < 1e-14
    assert pipec.sigmoid(pipec.tensor([0.0])).item() == 0.5
    big = pipec.tensor([-1000.0, 1000.0], dtype=pipec.float64)
    assert pipec.sigmoid(big).tolist() == [0.0, 1.0]
    assert pipec.tanh(big).tolist() == [-1.0, 1.0]


@pytest.mark.parametrize("dtype", DT)
@pytest.mark.parametrize("exponent", [2, 3, 0.5, -1, 1.5, 0])
def test_pow(exponent, dtype):
    x = _rounded(_rand((3, 4), "pos"), dtype)
    t = make(x, dtype, requires_grad=True)
    for y in (pipec.pow(t, exponent), t.pow(exponent), t ** exponent):
        assert_close(y, x ** exponent, dtype, msg=f"pow {exponent}")
    y = pipec.pow(t, exponent)
    y.sum().backward()
    assert_close(t.grad, exponent * x ** (exponent - 1) if exponent != 0 else np.zeros_like(x),
                 dtype)


def test_pow_finite_differences_negative_base_integer_exponent():
    check_grad(lambda t: pipec.pow(t, 3), [_rand((4,))])
    check_grad(lambda t: t ** 2, [_rand((2, 2))])


# ---- binary elementwise with broadcasting ----

BINARY = {
    "add": (np.add, lambda a, b, R: (R, R)),
    "sub": (np.subtract, lambda a, b, R: (R, -R)),
    "mul": (np.multiply, lambda a, b, R: (R * b, R * a)),
    "div": (np.divide, lambda a, b, R: (R / b, -R * a / (b * b))),
}
OPERATOR = {"add": lambda a, b: a + b, "sub": lambda a, b: a - b,
            "mul": lambda a, b: a * b, "div": lambda a, b: a / b}
BCAST = [((3, 4), (3, 4)), ((3, 4), (4,)), ((3, 4), (3, 1)), ((2, 1, 4), (3, 1)),
         ((5,), ()), ((), (2, 3)), ((0, 3), (3,)), ((1,), (2, 3)), ((2, 3, 1), (1, 1, 5)),
         ((), ())]


@pytest.mark.parametrize("dtype", DT)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shapes", BCAST, ids=str)
@pytest.mark.parametrize("op", sorted(BINARY))
def test_binary_forward_backward(op, shapes, layout, dtype):
    f, grads = BINARY[op]
    sa, sb = shapes
    a = _rounded(_rand(sa), dtype)
    b = _rounded(_rand(sb, "nonzero" if op == "div" else "any"), dtype)
    ta = make(a, dtype, layout, requires_grad=True)
    tb = make(b, dtype, "contiguous", requires_grad=True)
    expected = f(a, b)
    y = getattr(pipec, op)(ta, tb)
    assert tuple(y.shape) == expected.shape and y.dtype == _dt(dtype)
    assert_close(y, expected, dtype, msg=op)
    assert_close(getattr(ta, op)(tb), expected, dtype, msg=op + " method")
    assert_close(OPERATOR[op](ta, tb), expected, dtype, msg=op + " operator")
    R = _rounded(np.random.default_rng().standard_normal(expected.shape), dtype)
    y.backward(pipec.tensor(R, dtype=_dt(dtype)))
    ga, gb = grads(a, b, R)
    assert_close(ta.grad, sum_to_shape(np.broadcast_to(ga, expected.shape), sa), dtype,
                 msg=op + " grad a")
    assert_close(tb.grad, sum_to_shape(np.broadcast_to(gb, expected.shape), sb), dtype,
                 msg=op + " grad b")


@pytest.mark.parametrize("op", sorted(BINARY))
def test_binary_finite_differences(op):
    dom = "nonzero" if op == "div" else "any"
    fn = getattr(pipec, op)
    check_grad(fn, [_rand((2, 3)), _rand((3,), dom)])
    check_grad(fn, [_rand((2, 1)), _rand((1, 3), dom)])


@pytest.mark.parametrize("alpha", [2.0, -0.5])
def test_add_sub_alpha(alpha):
    a, b = _rand((3, 4)), _rand((4,))
    ta = pipec.tensor(a, requires_grad=True)
    tb = pipec.tensor(b, requires_grad=True)
    assert_close(pipec.add(ta, tb, alpha=alpha), a + alpha * b)
    assert_close(ta.sub(tb, alpha=alpha), a - alpha * b)
    pipec.add(ta, tb, alpha=alpha).sum().backward()
    assert_close(tb.grad, np.full(4, 3 * alpha))
    check_grad(lambda x, y: pipec.sub(x, y, alpha=alpha), [a, b])


SCALAR_CASES = [
    ("t+s", lambda t: t + 2.5, lambda x: x + 2.5),
    ("s+t", lambda t: 2.5 + t, lambda x: 2.5 + x),
    ("t-s", lambda t: t - 2.5, lambda x: x - 2.5),
    ("s-t", lambda t: 2.5 - t, lambda x: 2.5 - x),
    ("t*s", lambda t: t * -1.5, lambda x: x * -1.5),
    ("s*t", lambda t: 3 * t, lambda x: 3 * x),
    ("t/s", lambda t: t / 4.0, lambda x: x / 4.0),
    ("s/t", lambda t: 2.0 / t, lambda x: 2.0 / x),
    ("-t", lambda t: -t, lambda x: -x),
    ("add(t,s)", lambda t: pipec.add(t, 1.5), lambda x: x + 1.5),
    ("mul(t,s)", lambda t: pipec.mul(t, 0.5), lambda x: x * 0.5),
]


@pytest.mark.parametrize("dtype", DT)
@pytest.mark.parametrize("case", SCALAR_CASES, ids=lambda c: c[0])
def test_scalar_operands(case, dtype):
    _, fn, ref = case
    x = _rounded(_rand((3, 4), "nonzero"), dtype)
    t = make(x, dtype, "transposed")
    y = fn(t)
    assert y.dtype == _dt(dtype), "a Python scalar must not change the tensor's dtype"
    assert_close(y, ref(x), dtype)
    if dtype == "float64":
        check_grad(fn, [x])


def test_dtype_promotion_between_tensors():
    a32 = pipec.tensor([1.0, 2.0])
    a64 = pipec.tensor([0.5, 0.25], dtype=pipec.float64)
    r = a32 + a64
    assert r.dtype == pipec.float64 and r.tolist() == [1.5, 2.25]
    i = pipec.tensor([1, 2])
    assert (i * a32).dtype == pipec.float32
    assert (i * 2).dtype == pipec.int64 and (i * 2).tolist() == [2, 4]


def test_inplace_operators_update_the_same_tensor():
    a, b = _rand((3, 4)), _rand((4,), "nonzero")
    t = pipec.tensor(a)
    alias = t
    view = t[0]
    t += pipec.tensor(b)
    assert t is alias
    assert_close(t, a + b)
    assert_close(view, (a + b)[0], msg="in-place ops write through to views")
    t -= 1.0
    assert_close(t, a + b - 1.0)
    t *= pipec.tensor(b)
    assert_close(t, (a + b - 1.0) * b)
    t *= 2
    assert_close(t, (a + b - 1.0) * b * 2)
    assert t is alias


def test_inplace_on_noncontiguous_view():
    a = _rand((3, 4))
    t = pipec.tensor(a)
    tt = t.t()
    tt += pipec.tensor(np.arange(3.0))  # broadcasts along tt's last dim (= t's dim 0)
    assert_close(t, a + np.arange(3.0)[:, None])


def test_inplace_broadcast_result_shape_must_match():
    t = pipec.zeros(3)
    with pytest.raises(ValueError):
        t += pipec.ones(2, 3)


# ---- matrix products ----

def _assert_product_close(actual, x, y, dtype, msg=""):
    """actual (pipec tensor) == x @ y for 2-D float64 arrays x (m, k), y (k, n) holding
    dtype-rounded values, within the forward error bound of a floating-point dot product.

    A length-k dot product summed in any order (blocked, with or without FMA) satisfies
    |fl(x.y) - x.y| <= gamma_k |x|.|y|, gamma_k = k u / (1 - k u) (Higham, Accuracy and
    Stability of Numerical Algorithms, 2nd ed., sec. 3.1), u = 2^-24 (float32) or 2^-53
    (float64). The error scales with |x|.|y|, not with the result, so where the terms cancel
    TOL's rtol/atol alone is too tight for long sums: for (17, 33) @ (33, 8) in float32,
    |x|.|y| is 15..36 and a correct sgemm is off by ~1e-6 (about one ulp of |x|.|y|), over
    atol 1e-6 + rtol 1e-5 * |result| in ~0.65% of random draws with A transposed (OpenBLAS
    sgemm called directly and NumPy's float32 matmul alike; a plain sequential float32 loop
    0.76%). Allowed per element: TOL[dtype] + gamma_k(dtype) |x|.|y| for pipec's rounding
    + gamma_k(float64) |x|.|y| for the float64 reference's."""
    a, e = to_np(actual), x @ y
    assert a.shape == e.shape, f"{msg} shape {a.shape} != expected {e.shape}"
    k, tol, mag = x.shape[1], TOL[dtype], np.abs(x) @ np.abs(y)
    u, u64 = (2.0 ** -24 if dtype == "float32" else 2.0 ** -53), 2.0 ** -53
    gamma = k * u / (1 - k * u) + k * u64 / (1 - k * u64)
    allowed = tol["atol"] + tol["rtol"] * np.abs(e) + gamma * mag
    err = np.abs(a - e)
    bad = ~(err <= allowed)  # NaN fails too
    if bad.any():
        i = tuple(int(v) for v in
                  np.unravel_index(np.argmax(np.where(bad, np.inf, err / allowed)), e.shape))
        raise AssertionError(f"{msg} {int(bad.sum())}/{e.size} elements off; at {i}: got "
                             f"{a[i]!r}, expected {e[i]!r}, |error| {err[i]:.3g} > allowed "
                             f"{allowed[i]:.3g} (|x|.|y| = {mag[i]:.3g}, k = {k})")


MM_SHAPES = [((3, 4), (4, 5)), ((1, 1), (1, 1)), ((0, 4), (4, 5)), ((3, 0), (0, 2)),
             ((5, 1), (1, 7)), ((2, 9), (9, 0)), ((17, 33), (33, 8))]


@pytest.mark.parametrize("dtype", DT)
@pytest.mark.parametrize("layouts", [("contiguous", "contiguous"), ("transposed", "contiguous"),
                                     ("contiguous", "transposed"), ("transposed", "transposed"),
                                     ("sliced", "sliced")], ids=str)
@pytest.mark.parametrize("shapes", MM_SHAPES, ids=str)
def test_mm_forward_backward(shapes, layouts, dtype):
    (sa, sb), (la, lb) = shapes, layouts
    a, b = _rounded(_rand(sa), dtype), _rounded(_rand(sb), dtype)
    ta = make(a, dtype, la, requires_grad=True)
    tb = make(b, dtype, lb, requires_grad=True)
    y = pipec.mm(ta, tb)
    assert tuple(y.shape) == (sa[0], sb[1])
    _assert_product_close(y, a, b, dtype)
    _assert_product_close(ta.mm(tb), a, b, dtype, "Tensor.mm")
    _assert_product_close(ta @ tb, a, b, dtype, "@")
    assert y.grad_fn.name() == "MmBackward0"
    R = _rounded(np.random.default_rng().standard_normal((sa[0], sb[1])), dtype)
    y.backward(pipec.tensor(R, dtype=_dt(dtype)))
    _assert_product_close(ta.grad, R, b.T, dtype, "grad self")
    _assert_product_close(tb.grad, a.T, R, dtype, "grad mat2")


def test_mm_large_float32_against_float64():
    g = np.random.default_rng()
    a, b = g.standard_normal((64, 200)), g.standard_normal((200, 48))
    y = pipec.mm(pipec.tensor(a, dtype=pipec.float32), pipec.tensor(b, dtype=pipec.float32))
    ref = a.astype(np.float32).astype(np.float64) @ b.astype(np.float32).astype(np.float64)
    # k = 200 products summed in float32: error ~ sqrt(k) * 6e-8 * |a||b| well below 1e-4.
    assert_close(y, ref, "float32", rtol=1e-4, atol=1e-4)


MATMUL_SHAPES = [((4,), (4,)), ((3, 4), (4,)), ((4,), (4, 5)), ((3, 4), (4, 5)),
                 ((2, 3, 4), (2, 4, 5)), ((2, 3, 4), (4, 5)), ((3, 4), (2, 4, 5)),
                 ((2, 1, 3, 4), (5, 4, 2)), ((2, 3, 4), (4,)), ((4,), (2, 4, 3)),
                 ((0, 3, 4), (4, 2))]


@pytest.mark.parametrize("dtype", DT)
@pytest.mark.parametrize("shapes", MATMUL_SHAPES, ids=str)
def test_matmul_forward(shapes, dtype):
    sa, sb = shapes
    a, b = _rounded(_rand(sa), dtype), _rounded(_rand(sb), dtype)
    ta, tb = make(a, dtype), make(b, dtype, "transposed")
    ref = np.matmul(a, b)
    y = pipec.matmul(ta, tb)
    assert tuple(y.shape) == ref.shape
    assert_close(y, ref, dtype)
    assert_close(ta @ tb, ref, dtype)
    assert_close(ta.matmul(tb), ref, dtype)


@pytest.mark.parametrize("shapes", [s for s in MATMUL_SHAPES if 0 not in s[0]], ids=str)
def test_matmul_finite_differences(shapes):
    sa, sb = shapes
    check_grad(pipec.matmul, [_rand(sa), _rand(sb)])


@pytest.mark.parametrize("dtype", DT)
@pytest.mark.parametrize("bias_shape", [(5,), (3, 5), (1, 5), (3, 1), ()], ids=str)
@pytest.mark.parametrize("beta,alpha", [(1.0, 1.0), (0.5, 2.0), (0.0, 1.0)])
def test_addmm(bias_shape, beta, alpha, dtype):
    c = _rounded(_rand(bias_shape), dtype)
    a, b = _rounded(_rand((3, 4)), dtype), _rounded(_rand((4, 5)), dtype)
    tc, ta, tb = (make(v, dtype, requires_grad=True) for v in (c, a, b))
    y = pipec.addmm(tc, ta, tb, beta=beta, alpha=alpha)
    ref = beta * c + alpha * (a @ b)
    assert tuple(y.shape) == (3, 5)
    assert_close(y, ref, dtype)
    assert_close(tc.addmm(ta, tb, beta=beta, alpha=alpha), ref, dtype)
    R = _rounded(np.random.default_rng().standard_normal((3, 5)), dtype)
    y.backward(pipec.tensor(R, dtype=_dt(dtype)))
    assert_close(tc.grad, sum_to_shape(beta * R, bias_shape), dtype)
    assert_close(ta.grad, alpha * R @ b.T, dtype)
    assert_close(tb.grad, alpha * a.T @ R, dtype)


def test_addmm_finite_differences():
    check_grad(lambda c, a, b: pipec.addmm(c, a, b, beta=0.7, alpha=-1.3),
               [_rand((4,)), _rand((2, 3)), _rand((3, 4))])


LINEAR_CASES = [((4, 3), (5, 3), True), ((4, 3), (5, 3), False), ((2, 4, 3), (5, 3), True),
                ((3,), (2, 3), True), ((0, 3), (2, 3), True), ((1, 1), (1, 1), True)]


@pytest.mark.parametrize("dtype", DT)
@pytest.mark.parametrize("wlayout", ("contiguous", "transposed"))
@pytest.mark.parametrize("case", LINEAR_CASES, ids=str)
def test_linear(case, wlayout, dtype):
    sx, sw, has_bias = case
    x, w = _rounded(_rand(sx), dtype), _rounded(_rand(sw), dtype)
    bias = _rounded(_rand((sw[0],)), dtype) if has_bias else None
    tx = make(x, dtype, requires_grad=True)
    tw = make(w, dtype, wlayout, requires_grad=True)
    tb = make(bias, dtype, requires_grad=True) if has_bias else None
    y = F.linear(tx, tw, tb)
    ref = x @ w.T + (bias if has_bias else 0.0)
    assert tuple(y.shape) == ref.shape
    assert_close(y, ref, dtype)
    R = _rounded(np.random.default_rng().standard_normal(ref.shape), dtype)
    y.backward(pipec.tensor(R, dtype=_dt(dtype)))
    R2, x2 = R.reshape(-1, sw[0]), x.reshape(-1, sw[1])
    assert_close(tx.grad, (R2 @ w).reshape(sx), dtype)
    assert_close(tw.grad, R2.T @ x2, dtype)
    if has_bias:
        assert_close(tb.grad, R2.sum(axis=0), dtype)


def test_linear_finite_differences():
    check_grad(F.linear, [_rand((2, 3, 4)), _rand((5, 4)), _rand((5,))])
    check_grad(lambda x, w: F.linear(x, w), [_rand((3, 4)), _rand((2, 4))])


# ---- reductions ----

RED_DIMS = [None, 0, 1, -1, (0, 2), (2, 0, 1)]


@pytest.mark.parametrize("dtype", DT)
@pytest.mark.parametrize("keepdim", [False, True])
@pytest.mark.parametrize("dim", RED_DIMS, ids=str)
@pytest.mark.parametrize("op", ["sum", "mean"])
def test_sum_mean(op, dim, keepdim, dtype):
    x = _rounded(_rand((3, 4, 5)), dtype)
    t = make(x, dtype, "transposed", requires_grad=True)
    npf = np.sum if op == "sum" else np.mean
    if dim is None:
        y = getattr(pipec, op)(t)
        ref = npf(x)
        assert y.ndim == 0
    else:
        y = getattr(pipec, op)(t, dim=dim, keepdim=keepdim)
        ref = npf(x, axis=dim, keepdims=keepdim)
        assert_close(getattr(t, op)(dim, keepdim=keepdim), ref, dtype)
    assert tuple(y.shape) == np.shape(ref)
    assert_close(y, ref, dtype)
    R = _rounded(np.random.default_rng().standard_normal(np.shape(ref)), dtype)
    y.backward(pipec.tensor(R, dtype=_dt(dtype)))
    n = x.size / max(np.size(ref), 1)
    if dim is None:
        g = np.broadcast_to(R, x.shape)
    else:
        Rk = R if keepdim else np.expand_dims(R, tuple(d % 3 for d in np.atleast_1d(dim)))
        g = np.broadcast_to(Rk, x.shape)
    assert_close(t.grad, g / n if op == "mean" else g, dtype)


def test_sum_mean_finite_differences():
    check_grad(lambda t: pipec.sum(t, dim=1), [_rand((2, 3, 2))])
    check_grad(lambda t: pipec.mean(t, dim=(0, 2), keepdim=True), [_rand((2, 3, 2))])
    check_grad(lambda t: t.mean(), [_rand((3, 2))])


def test_reductions_of_empty_and_size_one():
    z = pipec.zeros(0, 3)
    assert pipec.sum(z).item() == 0.0
    assert pipec.sum(z, dim=0).tolist() == [0.0, 0.0, 0.0]
    assert math.isnan(pipec.mean(z).item())
    o = pipec.tensor([[2.5]])
    assert pipec.sum(o).item() == 2.5 and pipec.mean(o, dim=0).tolist() == [2.5]
    assert pipec.sum(pipec.tensor(3.0)).item() == 3.0
    assert pipec.tensor([1, 2, 3]).sum().item() == 6


@pytest.mark.parametrize("dtype", DT)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_max_all(layout, dtype):
    x = _rounded(_rand((4, 6)), dtype)
    t = make(x, dtype, layout, requires_grad=True)
    m = pipec.max(t)
    assert m.ndim == 0 and m.item() == x.max()
    assert t.max().item() == x.max()
    m.backward()
    g = np.zeros_like(x)
    g[np.unravel_index(np.argmax(x), x.shape)] = 1.0
    assert_close(t.grad, g, dtype)


@pytest.mark.parametrize("dtype", DT)
@pytest.mark.parametrize("keepdim", [False, True])
@pytest.mark.parametrize("dim", [0, 1, -1])
def test_max_dim(dim, keepdim, dtype):
    x = _rounded(_rand((3, 5, 4)), dtype)
    t = make(x, dtype, "transposed", requires_grad=True)
    res = pipec.max(t, dim=dim, keepdim=keepdim)
    values, indices = res
    assert res.values is values and res.indices is indices
    assert indices.dtype == pipec.int64
    assert_close(values, np.max(x, axis=dim, keepdims=keepdim), dtype)
    np.testing.assert_array_equal(to_np(indices), np.argmax(x, axis=dim) if not keepdim
                                  else np.expand_dims(np.argmax(x, axis=dim), dim))
    v2, i2 = t.max(dim, keepdim=keepdim)
    np.testing.assert_array_equal(to_np(i2), to_np(indices))
    R = np.random.default_rng().standard_normal(tuple(values.shape))
    values.backward(pipec.tensor(R, dtype=_dt(dtype)))
    g = np.zeros_like(x)
    idx = np.expand_dims(np.argmax(x, axis=dim), dim)
    Rk = R if keepdim else np.expand_dims(R, dim)
    np.put_along_axis(g, idx, Rk, axis=dim)
    assert_close(t.grad, _rounded(g, dtype), dtype)


def test_max_finite_differences():
    check_grad(lambda t: pipec.max(t, dim=1).values, [_rand((3, 4))])
    check_grad(lambda t: pipec.max(t), [_rand((2, 3))])


# ---- views, reshapes and joins (forward vs NumPy, backward by finite differences) ----

SHAPE_CASES = [
    ("reshape", (2, 3, 4), lambda t: pipec.reshape(t, (6, -1)), lambda a: a.reshape(6, -1)),
    ("reshape_m", (2, 3, 4), lambda t: t.reshape(4, 3, 2), lambda a: a.reshape(4, 3, 2)),
    ("reshape_1", (2, 3), lambda t: t.reshape(-1), lambda a: a.reshape(-1)),
    ("reshape_0d", (1, 1), lambda t: t.reshape(()), lambda a: a.reshape(())),
    ("view", (2, 3, 4), lambda t: t.view(2, 12), lambda a: a.reshape(2, 12)),
    ("view_m1", (2, 3, 4), lambda t: t.view(-1, 4), lambda a: a.reshape(-1, 4)),
    ("flatten", (2, 3, 4), lambda t: pipec.flatten(t), lambda a: a.reshape(-1)),
    ("flatten1", (2, 3, 4), lambda t: t.flatten(1), lambda a: a.reshape(2, 12)),
    ("flatten01", (2, 3, 4), lambda t: t.flatten(0, 1), lambda a: a.reshape(6, 4)),
    ("transpose", (2, 3, 4), lambda t: pipec.transpose(t, 0, 2), lambda a: a.transpose(2, 1, 0)),
    ("transpose_neg", (2, 3, 4), lambda t: t.transpose(-1, -2), lambda a: a.swapaxes(-1, -2)),
    ("t2", (3, 5), lambda t: pipec.t(t), lambda a: a.T),
    ("t1", (4,), lambda t: t.t(), lambda a: a),
    ("permute", (2, 3, 4), lambda t: pipec.permute(t, (2, 0, 1)), lambda a: a.transpose(2, 0, 1)),
    ("permute_m", (2, 3, 4), lambda t: t.permute(1, 2, 0), lambda a: a.transpose(1, 2, 0)),
    ("unsqueeze0", (3, 4), lambda t: pipec.unsqueeze(t, 0), lambda a: a[None]),
    ("unsqueeze_neg", (3, 4), lambda t: t.unsqueeze(-1), lambda a: a[..., None]),
    ("unsqueeze1", (3, 4), lambda t: t.unsqueeze(1), lambda a: a[:, None]),
    ("squeeze_all", (1, 3, 1, 2), lambda t: pipec.squeeze(t), lambda a: a.squeeze()),
    ("squeeze0", (1, 3, 1, 2), lambda t: t.squeeze(0), lambda a: a.squeeze(0)),
    ("squeeze_noop", (1, 3, 1, 2), lambda t: t.squeeze(1), lambda a: a),
    ("squeeze_neg", (1, 3, 1, 2), lambda t: t.squeeze(-2), lambda a: a.squeeze(-2)),
    ("expand", (3, 1), lambda t: t.expand(3, 4), lambda a: np.broadcast_to(a, (3, 4))),
    ("expand_new", (3, 1), lambda t: t.expand(2, -1, 4), lambda a: np.broadcast_to(a, (2, 3, 4))),
    ("contiguous", (3, 4), lambda t: t.t().contiguous(), lambda a: a.T),
    ("clone", (3, 4), lambda t: pipec.clone(t), lambda a: a),
    ("clone_m", (3, 4), lambda t: t.t().clone(), lambda a: a.T),
    ("index_int", (3, 4), lambda t: t[1], lambda a: a[1]),
    ("index_slice", (3, 4), lambda t: t[:, 1:3], lambda a: a[:, 1:3]),
    ("index_step", (5, 4), lambda t: t[::2], lambda a: a[::2]),
    ("index_mixed", (3, 4, 2), lambda t: t[-1, ::3, 1], lambda a: a[-1, ::3, 1]),
    ("index_empty", (3, 4), lambda t: t[2:2], lambda a: a[2:2]),
]


# view() needs strides compatible with the new shape: it runs on contiguous inputs here and
# on strided ones in test_view_of_noncontiguous.
SHAPE_PARAMS = [pytest.param(c, lay, id=f"{c[0]}-{lay}") for c in SHAPE_CASES for lay in LAYOUTS
                if lay == "contiguous" or not c[0].startswith("view")]


@pytest.mark.parametrize("case,layout", SHAPE_PARAMS)
def test_shape_op_forward(case, layout):
    name, shape, fn, ref = case
    x = _rand(shape)
    t = make(x, "float64", layout)
    y = fn(t)
    r = ref(x)
    assert tuple(y.shape) == r.shape, name
    np.testing.assert_array_equal(to_np(y), r, err_msg=name)


@pytest.mark.parametrize("case", SHAPE_CASES, ids=lambda c: c[0])
def test_shape_op_backward(case):
    name, shape, fn, _ = case
    check_grad(fn, [_rand(shape)])


def test_view_of_noncontiguous():
    t = pipec.tensor(_rand((3, 4))).t()
    with pytest.raises((RuntimeError, ValueError), match="view"):
        t.view(12)
    r = t.reshape(12)  # reshape copies when needed
    np.testing.assert_array_equal(to_np(r), to_np(t).reshape(12))
    # a transposed view can still be viewed along dims that stay compatible
    u = pipec.tensor(_rand((2, 3, 4))).transpose(0, 1)
    assert tuple(u.view(3, 2, 2, 2).shape) == (3, 2, 2, 2)


def test_reshape_and_transpose_grad_fn_names():
    x = pipec.tensor(_rand((2, 3)), requires_grad=True)
    assert x.transpose(0, 1).grad_fn.name() == "TransposeBackward0"
    assert x.permute(1, 0).grad_fn.name() == "PermuteBackward0"
    assert x.unsqueeze(0).grad_fn.name() == "UnsqueezeBackward0"
    assert x.view(6).grad_fn.name() == "ViewBackward0"
    assert pipec.cat([x, x]).grad_fn.name() == "CatBackward0"


CAT_CASES = [
    ("dim0", [(2, 3), (4, 3)], 0),
    ("dim1", [(2, 3), (2, 1), (2, 2)], 1),
    ("neg", [(2, 3, 2), (2, 3, 1)], -1),
    ("empty", [(0, 3), (2, 3)], 0),
    ("single", [(3,)], 0),
    ("1d", [(2,), (3,), (1,)], 0),
]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", CAT_CASES, ids=lambda c: c[0])
def test_cat(case, layout):
    _, shapes, dim = case
    xs = [_rand(s) for s in shapes]
    ts = [make(x, "float64", layout) for x in xs]
    y = pipec.cat(ts, dim=dim)
    np.testing.assert_array_equal(to_np(y), np.concatenate(xs, axis=dim))
    y2 = pipec.cat(tuple(ts), dim)
    np.testing.assert_array_equal(to_np(y2), np.concatenate(xs, axis=dim))
    check_grad(lambda *a: pipec.cat(list(a), dim=dim), xs)


@pytest.mark.parametrize("dim", [0, 1, 2, -1])
def test_stack(dim):
    xs = [_rand((2, 3)) for _ in range(3)]
    y = pipec.stack([make(x, "float64", "transposed") for x in xs], dim=dim)
    np.testing.assert_array_equal(to_np(y), np.stack(xs, axis=dim))
    check_grad(lambda *a: pipec.stack(list(a), dim), xs)


def _np_sizes(pieces, dim):
    return [p.shape[dim] for p in pieces]


SPLIT_CASES = [
    ("chunk3", lambda t: pipec.chunk(t, 3), [3, 3, 1], 0),
    ("chunk_m", lambda t: t.chunk(2, dim=1), [2, 1], 1),
    ("chunk_more_than_n", lambda t: pipec.chunk(t, 10), [1] * 7, 0),
    ("split2", lambda t: pipec.split(t, 2), [2, 2, 2, 1], 0),
    ("split_list", lambda t: t.split([1, 4, 2]), [1, 4, 2], 0),
    ("split_dim1", lambda t: pipec.split(t, 1, dim=1), [1, 1, 1], 1),
    ("split_big", lambda t: pipec.split(t, 10), [7], 0),
    ("tensor_split3", lambda t: pipec.tensor_split(t, 3), [3, 2, 2], 0),
    ("tensor_split_idx", lambda t: t.tensor_split([1, 5]), [1, 4, 2], 0),
    ("tensor_split_dim", lambda t: pipec.tensor_split(t, 2, dim=1), [2, 1], 1),
    ("tensor_split_more", lambda t: pipec.tensor_split(t, 9), [1] * 7 + [0, 0], 0),
]


@pytest.mark.parametrize("case", SPLIT_CASES, ids=lambda c: c[0])
def test_chunk_split_tensor_split(case):
    _, fn, sizes, dim = case
    x = _rand((7, 3))
    pieces = fn(pipec.tensor(x))
    assert isinstance(pieces, (tuple, list))
    assert [p.shape[dim] for p in pieces] == sizes
    offsets = np.cumsum([0] + sizes)
    for p, lo, hi in zip(pieces, offsets[:-1], offsets[1:]):
        np.testing.assert_array_equal(to_np(p), np.take(x, range(lo, hi), axis=dim))
    # pieces are views: writing into one writes into the source
    t = pipec.tensor(x)
    fn(t)[0].fill_(123.0)
    assert to_np(t).reshape(-1).tolist().count(123.0) == sizes[0] * (3 if dim == 0 else 7)

    def glued(a):
        ps = fn(a)
        return pipec.cat([p * float(i + 1) for i, p in enumerate(ps)], dim=dim)
    check_grad(glued, [x])


# ---- softmax family ----

@pytest.mark.parametrize("dtype", DT)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape,dim", [((5,), 0), ((3, 4), 1), ((3, 4), 0), ((3, 4), -1),
                                       ((2, 3, 4), 1), ((2, 3, 4), -1), ((1, 1), 1),
                                       ((0, 4), 1)], ids=str)
@pytest.mark.parametrize("log", [False, True])
def test_softmax(shape, dim, layout, dtype, log):
    x = _rounded(_rand(shape) * 3, dtype)
    t = make(x, dtype, layout, requires_grad=True)
    ref = np_log_softmax(x, dim) if log else np_softmax(x, dim)
    name = "log_softmax" if log else "softmax"
    for y in (getattr(pipec, name)(t, dim), getattr(F, name)(t, dim=dim),
              getattr(t, name)(dim)):
        assert_close(y, ref, dtype, msg=name)
    y = getattr(pipec, name)(t, dim)
    R = _rounded(np.random.default_rng().standard_normal(shape), dtype)
    y.backward(pipec.tensor(R, dtype=_dt(dtype)))
    if log:
        g = R - np.exp(ref) * R.sum(axis=dim, keepdims=True)
    else:
        g = ref * (R - (R * ref).sum(axis=dim, keepdims=True))
    assert_close(t.grad, g, dtype, msg=name + " grad")


def test_softmax_is_stable_for_large_inputs():
    x = np.array([[1000.0, 1001.0, 1002.0], [-1000.0, -1001.0, -1002.0]])
    for dtype in DT:
        t = pipec.tensor(x, dtype=_dt(dtype))
        s = to_np(pipec.softmax(t, -1))
        ls = to_np(pipec.log_softmax(t, -1))
        assert np.all(np.isfinite(s)) and np.all(np.isfinite(ls)), dtype
        assert_close(s, np_softmax(x, -1), dtype)
        assert_close(ls, np_log_softmax(x, -1), dtype)


@pytest.mark.parametrize("log", [False, True])
def test_softmax_finite_differences(log):
    fn = pipec.log_softmax if log else pipec.softmax
    check_grad(lambda t: fn(t, 1), [_rand((2, 3, 2))])
    check_grad(lambda t: fn(t, -1), [_rand((3, 4))])


# ---- losses ----

@pytest.mark.parametrize("dtype", DT)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", [(4, 3), (5,), (), (2, 0)], ids=str)
def test_mse_loss(shape, reduction, dtype):
    x, y = _rounded(_rand(shape), dtype), _rounded(_rand(shape), dtype)
    tx = make(x, dtype, "transposed", requires_grad=True)
    ty = make(y, dtype, requires_grad=True)
    loss = F.mse_loss(tx, ty, reduction=reduction)
    d = (x - y) ** 2
    ref = {"mean": d.mean() if d.size else np.nan, "sum": d.sum(), "none": d}[reduction]
    if reduction == "mean" and d.size == 0:
        assert math.isnan(loss.item())
        return
    assert_close(loss, ref, dtype)
    if reduction == "none":
        loss.backward(pipec.ones_like(loss))
        scale = np.ones(shape)
    else:
        loss.backward()
        scale = np.full(shape, 1.0 / d.size if reduction == "mean" else 1.0)
    assert_close(tx.grad, 2 * (x - y) * scale, dtype)
    assert_close(ty.grad, -2 * (x - y) * scale, dtype)


def test_mse_loss_default_reduction_and_finite_differences():
    x, y = _rand((3, 4)), _rand((3, 4))
    assert_close(F.mse_loss(pipec.tensor(x), pipec.tensor(y)), ((x - y) ** 2).mean())
    check_grad(lambda a, b: F.mse_loss(a, b), [x, y])
    check_grad(lambda a, b: F.mse_loss(a, b, reduction="none"), [x, y])


def _np_cross_entropy(x, target, reduction):
    ls = np_log_softmax(x, -1)
    if x.ndim == 1:
        per = -ls[target]
    else:
        per = -ls[np.arange(x.shape[0]), target]
    return {"mean": np.mean(per), "sum": np.sum(per), "none": per}[reduction]


@pytest.mark.parametrize("dtype", DT)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("n,c", [(5, 4), (1, 3), (3, 1), (None, 6)], ids=str)
def test_cross_entropy(n, c, reduction, dtype):
    g = np.random.default_rng()
    shape = (c,) if n is None else (n, c)
    x = _rounded(_rand(shape) * 2, dtype)
    target = g.integers(0, c, size=() if n is None else (n,))
    tx = make(x, dtype, "transposed", requires_grad=True)
    tt = pipec.tensor(target, dtype=pipec.int64)
    loss = F.cross_entropy(tx, tt, reduction=reduction)
    ref = _np_cross_entropy(x, target, reduction)
    assert_close(loss, ref, dtype)
    R = np.random.default_rng().standard_normal(np.shape(ref))
    loss.backward(pipec.tensor(R, dtype=_dt(dtype)))
    p = np_softmax(x, -1)
    onehot = np.zeros(shape)
    if n is None:
        onehot[target] = 1.0
    else:
        onehot[np.arange(n), target] = 1.0
    scale = {"mean": R / (1 if n is None else n), "sum": R, "none": R}[reduction]
    if n is not None:
        scale = np.broadcast_to(np.reshape(scale, (-1, 1)) if reduction == "none" else scale,
                                (n, 1))
    assert_close(tx.grad, (p - onehot) * scale, dtype)


def test_cross_entropy_finite_differences():
    target = pipec.tensor([2, 0, 1], dtype=pipec.int64)
    check_grad(lambda x: F.cross_entropy(x, target), [_rand((3, 4))])
    check_grad(lambda x: F.cross_entropy(x, target, reduction="none"), [_rand((3, 4))])


# ---- layer norm ----

@pytest.mark.parametrize("dtype", DT)
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape,norm", [((4, 6), (6,)), ((2, 3, 4), (3, 4)), ((5,), (5,)),
                                        ((3, 1), (1,)), ((0, 4), (4,))], ids=str)
def test_layer_norm(shape, norm, affine, dtype):
    eps = 1e-5
    x = _rounded(_rand(shape) * 2 + 1, dtype)
    w = _rounded(_rand(norm), dtype) if affine else None
    b = _rounded(_rand(norm), dtype) if affine else None
    tx = make(x, dtype, "transposed", requires_grad=True)
    tw = make(w, dtype, requires_grad=True) if affine else None
    tb = make(b, dtype, requires_grad=True) if affine else None
    y = F.layer_norm(tx, norm, tw, tb, eps=eps)
    axes = tuple(range(len(shape) - len(norm), len(shape)))
    mu = x.mean(axis=axes, keepdims=True) if x.size else np.zeros(shape)
    var = x.var(axis=axes, keepdims=True) if x.size else np.ones(shape)
    xhat = (x - mu) / np.sqrt(var + eps)
    ref = xhat * w + b if affine else xhat
    # float32 layer norm: the variance of a few values in float32 loses ~1e-6 relative
    tol = {} if dtype == "float64" else dict(rtol=1e-4, atol=1e-5)
    assert_close(y, ref, dtype, **tol)
    R = _rounded(np.random.default_rng().standard_normal(shape), dtype)
    y.backward(pipec.tensor(R, dtype=_dt(dtype)))
    if affine:
        red = tuple(range(len(shape) - len(norm)))
        assert_close(tw.grad, (R * xhat).sum(axis=red), dtype, **tol)
        assert_close(tb.grad, R.sum(axis=red), dtype, **tol)
    gx = R * (w if affine else 1.0)
    m = int(np.prod(norm))
    dx = (gx - gx.mean(axis=axes, keepdims=True) -
          xhat * (gx * xhat).mean(axis=axes, keepdims=True)) / np.sqrt(var + eps) if m > 1 \
        else np.zeros(shape)
    assert_close(tx.grad, dx, dtype, **(tol or dict(atol=1e-9)))


def test_layer_norm_finite_differences():
    check_grad(lambda x, w, b: F.layer_norm(x, (4,), w, b), [_rand((3, 4)), _rand((4,)),
                                                             _rand((4,))])
    check_grad(lambda x: F.layer_norm(x, (2, 3)), [_rand((2, 2, 3))])


# ---- dropout ----

def test_dropout_identity_cases():
    x = pipec.tensor(_rand((50, 40)))
    np.testing.assert_array_equal(to_np(F.dropout(x, p=0.0)), to_np(x))
    np.testing.assert_array_equal(to_np(F.dropout(x, p=0.5, training=False)), to_np(x))
    assert np.all(to_np(F.dropout(x, p=1.0)) == 0.0)


@pytest.mark.parametrize("p", [0.2, 0.5, 0.9])
def test_dropout_mask_statistics_and_gradient(p):
    x = _rand((100, 100), "nonzero")
    t = pipec.tensor(x, requires_grad=True)
    y = F.dropout(t, p=p)
    out = to_np(y)
    kept = out != 0.0
    np.testing.assert_allclose(out[kept], x[kept] / (1 - p), rtol=1e-6)
    frac = 1.0 - kept.mean()
    # 10,000 Bernoulli(p) draws: std of the fraction <= 0.005; allow 6 sigma.
    assert abs(frac - p) < 0.03, f"dropped fraction {frac}, expected {p}"
    y.sum().backward()
    np.testing.assert_allclose(to_np(t.grad), kept / (1 - p), rtol=1e-6)


def test_dropout_is_seeded():
    x = pipec.ones(1000)
    pipec.manual_seed(11)
    a = to_np(F.dropout(x, 0.5))
    pipec.manual_seed(11)
    b = to_np(F.dropout(x, 0.5))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, to_np(F.dropout(x, 0.5)))


# ---- clone / detach ----

def test_clone_and_detach_autograd():
    x = pipec.tensor(_rand((3,)), requires_grad=True)
    c = pipec.clone(x)
    assert c.requires_grad and c.grad_fn.name() == "CloneBackward0"
    (c * 2).sum().backward()
    assert_close(x.grad, np.full(3, 2.0))
    d = pipec.detach(x)
    assert not d.requires_grad and d.grad_fn is None
    d2 = x.detach()
    d2.fill_(0.0)  # shares memory
    assert np.all(to_np(x) == 0.0)


# ---- CUDA: the same ops on a GPU against the CPU ----

CUDA_CASES = [
    ("relu", lambda a: pipec.relu(a[0]), [(64, 33)]),
    ("gelu", lambda a: pipec.gelu(a[0]), [(64, 33)]),
    ("tanh_exp", lambda a: pipec.tanh(a[0]) + pipec.exp(a[0] * 0.1), [(8, 5)]),
    ("sigmoid_log_sqrt", lambda a: pipec.sigmoid(a[0]) * pipec.log(a[0].abs() + 1)
     + pipec.sqrt(a[0].abs()), [(9, 7)]),
    ("broadcast_binary", lambda a: (a[0] + a[1]) * a[1] / (a[1].abs() + 1) - a[0], [(4, 5, 6), (5, 1)]),
    ("mm", lambda a: pipec.mm(a[0], a[1].t()), [(33, 17), (9, 17)]),
    ("matmul_batched", lambda a: pipec.matmul(a[0], a[1]), [(3, 4, 5), (5, 2)]),
    ("addmm", lambda a: pipec.addmm(a[2], a[0], a[1], beta=0.5, alpha=2.0), [(6, 4), (4, 3), (3,)]),
    ("linear", lambda a: F.linear(a[0], a[1], a[2]), [(2, 5, 8), (7, 8), (7,)]),
    ("sum_mean_max", lambda a: a[0].sum(1) + a[0].mean(1) + a[0].max(1).values, [(6, 300)]),
    ("softmax", lambda a: pipec.softmax(a[0], -1) + pipec.log_softmax(a[0], 0), [(7, 129)]),
    ("shape_ops", lambda a: pipec.cat([a[0].t(), a[0].t()[1:]], 0).reshape(-1).unsqueeze(0),
     [(4, 6)]),
    ("stack_split", lambda a: pipec.stack(pipec.split(a[0], 2), 0), [(6, 3)]),
    ("layer_norm", lambda a: F.layer_norm(a[0], (16,), a[1], a[2]), [(5, 16), (16,), (16,)]),
    ("mse", lambda a: F.mse_loss(a[0], a[1]), [(8, 4), (8, 4)]),
]


@pytest.mark.cuda
@pytest.mark.parametrize("case", CUDA_CASES, ids=lambda c: c[0])
def test_cuda_matches_cpu(case):
    _, fn, shapes = case
    xs = [_rand(s) for s in shapes]
    cpu = [pipec.tensor(x, dtype=pipec.float32, requires_grad=True) for x in xs]
    gpu = [pipec.tensor(x, dtype=pipec.float32).cuda().requires_grad_(True) for x in xs]
    yc, yg = fn(cpu), fn(gpu)
    assert yg.device.type == "cuda"
    assert_close(yg.cpu(), to_np(yc), "float32", rtol=1e-4, atol=1e-5)
    R = np.random.default_rng().standard_normal(tuple(yc.shape))
    yc.backward(pipec.tensor(R, dtype=pipec.float32))
    yg.backward(pipec.tensor(R, dtype=pipec.float32).cuda())
    for c, g in zip(cpu, gpu):
        assert g.grad.device.type == "cuda"
        assert_close(g.grad.cpu(), to_np(c.grad), "float32", rtol=1e-4, atol=1e-5)


@pytest.mark.cuda
def test_cuda_cross_entropy_and_half_types():
    x = _rand((6, 5))
    target = pipec.tensor([0, 4, 2, 2, 1, 3])
    lc = F.cross_entropy(pipec.tensor(x, dtype=pipec.float32), target)
    lg = F.cross_entropy(pipec.tensor(x, dtype=pipec.float32).cuda(), target.cuda())
    assert abs(lc.item() - lg.item()) < 1e-5
    for dt in (pipec.float16, pipec.bfloat16):
        a = pipec.tensor(_rand((16, 32)), dtype=dt).cuda()
        b = pipec.tensor(_rand((32, 8)), dtype=dt).cuda()
        ref = to_np(a.cpu()) @ to_np(b.cpu())
        # half inputs, float32 accumulation, result rounded to the half type (~2^-8 rel.)
        assert_close(pipec.mm(a, b).cpu(), ref, "float32", rtol=2e-2, atol=5e-2)


@pytest.mark.cuda
def test_cuda_random_matches_cpu():
    pipec.manual_seed(5)
    c = to_np(pipec.randn(1000))
    pipec.manual_seed(5)
    g = to_np(pipec.randn(1000, device="cuda").cpu())
    np.testing.assert_allclose(g, c, rtol=1e-6, atol=1e-6)

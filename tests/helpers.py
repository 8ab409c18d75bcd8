"""helpers.py — shared tools for the tensor-core tests: conversions between NumPy and pipec,
layouts (contiguous, transposed, sliced views), tolerances per dtype, and a generic
finite-difference gradient check.

Tolerances (stated once, used everywhere):
  float64: rtol 1e-10, atol 1e-12 — pipec and NumPy run the same formulas in double; the
           differences are summation order and libm rounding, a few ulps (~1e-15 relative)
           times the reduction length.
  float32: rtol 1e-5, atol 1e-6 — float32 has a 6e-8 unit roundoff; sums of up to a few
           hundred terms and transcendental functions accumulate well under 1e-5 relative.
  float16 / bfloat16: only round trips are checked (exact up to the format's rounding).

check_grad compares the autograd vector-Jacobian product with central finite differences
in float64 (step 1e-6; truncation error O(h^2) ~ 1e-12, rounding error ~ 1e-16/1e-6 = 1e-10
times the function's scale), so its default tolerance is rtol 1e-5, atol 1e-6.
"""
import math

import numpy as np

import pipec

TOL = {
    "float64": dict(rtol=1e-10, atol=1e-12),
    "float32": dict(rtol=1e-5, atol=1e-6),
}

DTYPES = {"float64": pipec.float64, "float32": pipec.float32}
NP_DTYPES = {"float64": np.float64, "float32": np.float32}


def rng(seed=None):
    """A fresh NumPy generator: a new seed every call unless one is given (the failing seed
    is part of the assertion message wherever it matters)."""
    return np.random.default_rng(seed)


def to_np(t):
    """A float64 (or int/bool) NumPy copy of a pipec tensor's values, whatever its layout."""
    assert isinstance(t, pipec.Tensor), f"expected a pipec.Tensor, got {type(t).__name__}"
    t = t.detach()
    if t.dtype in (pipec.float16, pipec.bfloat16):
        t = t.to(pipec.float32)
    a = np.array(t.cpu().numpy(), copy=True)
    if a.dtype.kind == "f":
        a = a.astype(np.float64)
    return a


def make(a, dtype="float64", layout="contiguous", requires_grad=False):
    """A pipec tensor with the values of NumPy array `a`, in one of three layouts:
    'contiguous'; 'transposed' (a transposed view of a contiguous tensor of the swapped
    shape, for ndim >= 2); 'sliced' (every other element of a larger tensor along the last
    dim). The result is a leaf when requires_grad (the view is made without history)."""
    a = np.asarray(a, dtype=np.float64)
    dt = DTYPES[dtype] if isinstance(dtype, str) else dtype
    if layout == "contiguous" or a.ndim == 0:
        t = pipec.tensor(a, dtype=dt)
    elif layout == "transposed" and a.ndim >= 2:
        base = pipec.tensor(np.ascontiguousarray(np.swapaxes(a, -1, -2)), dtype=dt)
        t = base.transpose(-1, -2)
        assert a.shape[-1] <= 1 or a.shape[-2] <= 1 or not t.is_contiguous()
    elif layout == "transposed":  # 1-D: fall back to a strided slice
        return make(a, dtype, "sliced", requires_grad)
    elif layout == "sliced":
        big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],))
        big[..., ::2] = a
        base = pipec.tensor(big, dtype=dt)
        t = base[(slice(None),) * (a.ndim - 1) + (slice(None, None, 2),)]
    else:
        raise ValueError(layout)
    if requires_grad:
        t = t.detach().requires_grad_(True)
    assert tuple(t.shape) == a.shape, (t.shape, a.shape)
    return t


LAYOUTS = ("contiguous", "transposed", "sliced")


def assert_close(actual, expected, dtype="float64", rtol=None, atol=None, msg=""):
    """actual: pipec tensor or array; expected: array. Shapes must match exactly."""
    a = to_np(actual) if isinstance(actual, pipec.Tensor) else np.asarray(actual, np.float64)
    e = np.asarray(expected, dtype=np.float64)
    assert a.shape == e.shape, f"{msg} shape {a.shape} != expected {e.shape}"
    tol = dict(TOL[dtype])
    if rtol is not None:
        tol["rtol"] = rtol
    if atol is not None:
        tol["atol"] = atol
    np.testing.assert_allclose(a, e, err_msg=msg, **tol)


def vjp(fn, tensors, cotangent):
    """Gradients of sum(fn(*tensors) * cotangent) w.r.t. each tensor, through
    pipec.autograd.grad (tensors must require grad). Returns NumPy arrays."""
    out = fn(*tensors)
    grads = pipec.autograd.grad(out, tensors, grad_outputs=cotangent, allow_unused=True)
    res = []
    for t, g in zip(tensors, grads):
        res.append(np.zeros(tuple(t.shape)) if g is None else to_np(g))
    return res


def check_grad(fn, inputs, eps=1e-6, rtol=1e-5, atol=1e-6, seed=None):
    """Central finite differences in float64 against autograd.

    fn: takes pipec float64 tensors (one per input) and returns one pipec tensor.
    inputs: NumPy arrays (converted to float64 leaves requiring grad).
    A random cotangent R of the output's shape turns the output into the scalar
    L = sum(fn(x) * R); the autograd gradient of L must equal (L(x + eps e_j) -
    L(x - eps e_j)) / (2 eps) for every element j of every input.
    Returns the analytic gradients (NumPy) for further checks."""
    g = np.random.default_rng(seed)
    arrays = [np.array(a, dtype=np.float64, copy=True) for a in inputs]
    leaves = [pipec.tensor(a, dtype=pipec.float64).requires_grad_(True) for a in arrays]
    out = fn(*leaves)
    assert isinstance(out, pipec.Tensor), f"fn returned {type(out).__name__}"
    assert out.dtype == pipec.float64, f"fn output dtype {out.dtype}, expected float64"
    R = g.standard_normal(tuple(out.shape))
    R_t = pipec.tensor(R, dtype=pipec.float64)
    grads = pipec.autograd.grad(out, leaves, grad_outputs=R_t, allow_unused=True)
    analytic = [np.zeros(a.shape) if gr is None else to_np(gr) for a, gr in zip(arrays, grads)]
    for a, gr in zip(arrays, analytic):
        assert gr.shape == a.shape, f"grad shape {gr.shape} != input shape {a.shape}"

    def loss(vals):
        with pipec.no_grad():
            o = fn(*[pipec.tensor(v, dtype=pipec.float64) for v in vals])
        return float(np.sum(to_np(o) * R))

    for i, a in enumerate(arrays):
        numeric = np.zeros(a.shape)
        flat = numeric.reshape(-1)
        for j in range(a.size):
            plus = [x.copy() for x in arrays]
            minus = [x.copy() for x in arrays]
            plus[i].reshape(-1)[j] += eps
            minus[i].reshape(-1)[j] -= eps
            flat[j] = (loss(plus) - loss(minus)) / (2 * eps)
        np.testing.assert_allclose(analytic[i], numeric, rtol=rtol, atol=atol,
                                   err_msg=f"gradient of input {i} (shape {a.shape})")
    return analytic


# ---- NumPy references for functions NumPy lacks ----

_erf = np.vectorize(math.erf, otypes=[np.float64])


def np_gelu(x):
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def np_gelu_grad(x):
    cdf = 0.5 * (1.0 + _erf(x / math.sqrt(2.0)))
    pdf = np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
    return cdf + x * pdf


def np_sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def np_softmax(x, dim):
    m = np.max(x, axis=dim, keepdims=True)
    e = np.exp(x - m)
    return e / np.sum(e, axis=dim, keepdims=True)


def np_log_softmax(x, dim):
    m = np.max(x, axis=dim, keepdims=True)
    return x - m - np.log(np.sum(np.exp(x - m), axis=dim, keepdims=True))


def sum_to_shape(g, shape):
    """Reduce a broadcast gradient g back to `shape` (NumPy rules)."""
    while g.ndim > len(shape):
        g = g.sum(axis=0)
    for i, s in enumerate(shape):
        if s == 1 and g.shape[i] != 1:
            g = g.sum(axis=i, keepdims=True)
    return g

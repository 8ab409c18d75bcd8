"""The CUDA backend against the CPU backend (the reference), plus the CUDA runtime API.

Every kernel is run on the same inputs on the CPU and on the GPU and compared:
float64 to 1e-12, float32 to rtol 1e-5 (reductions and GEMMs also get an absolute term that
grows with the reduction length, since both backends sum in a different order), float16 to
rtol 2e-3 and bfloat16 to 1.6e-2 (two roundings of 11- and 8-bit mantissas). Philox numbers
must be bit-identical for uniform draws and within one float32 ulp for normal draws (the
device's double log/cos may differ from libm in the last bit before rounding to float32).

Every test carries @pytest.mark.cuda and is skipped without a GPU. With
PIPEC_TEST_CUDA_AS_CPU=1 the comparisons run with "cuda" replaced by "cpu", which checks the
test logic itself on a machine without a GPU (tests of the CUDA runtime still skip).
"""
import gc
import math
import os

import numpy as np
import pytest

import pipec
import pipec.nn as nn
import pipec.nn.functional as F

_AS_CPU = os.environ.get("PIPEC_TEST_CUDA_AS_CPU") == "1"
HAS_GPU = pipec.cuda.is_available()
DEV = "cpu" if _AS_CPU else "cuda"

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not (HAS_GPU or _AS_CPU), reason="needs a CUDA device"),
]
gpu_only = pytest.mark.skipif(not HAS_GPU, reason="exercises the CUDA runtime itself")
multigpu = pytest.mark.skipif(not HAS_GPU or pipec.cuda.device_count() < 2,
                              reason="needs two CUDA devices")

FLOATS = [pipec.float32, pipec.float64, pipec.float16, pipec.bfloat16]
ALL = FLOATS + [pipec.int64, pipec.bool]
# (rtol, atol) per dtype for results of O(1) magnitude
TOL = {
    pipec.float32: (1e-5, 1e-6),
    pipec.float64: (1e-12, 1e-12),
    pipec.float16: (2e-3, 1e-3),
    pipec.bfloat16: (1.6e-2, 1e-2),
}


# ---- helpers ----

def _rng(seed=0):
    return np.random.default_rng(seed)


def host(arr, dtype=pipec.float32):
    """A CPU tensor with the values of `arr` (rounded once to dtype)."""
    arr = np.asarray(arr)
    if arr.dtype == np.bool_:
        return pipec.tensor(arr, dtype=pipec.bool)
    if np.issubdtype(arr.dtype, np.integer):
        return pipec.tensor(arr.astype(np.int64)).to(dtype)
    return pipec.tensor(arr.astype(np.float64)).to(dtype)


def randn(*shape, dtype=pipec.float32, seed=0, scale=1.0):
    return host(_rng(seed).standard_normal(shape) * scale, dtype)


def uniform(*shape, dtype=pipec.float32, seed=0, lo=0.0, hi=1.0):
    return host(_rng(seed).uniform(lo, hi, shape), dtype)


def npy(t):
    """float64 (or int64/bool) NumPy copy of any tensor."""
    t = t.detach().cpu()
    if t.dtype in (pipec.int64, pipec.bool):
        return t.numpy().copy()
    return t.to(pipec.float64).numpy().copy()


def close(got, want, dtype=None, rtol=None, atol=None):
    """got (any device) matches want (CPU tensor or array) within dtype's tolerance."""
    dtype = dtype or got.dtype
    r, a = TOL.get(dtype, (0, 0))
    rtol = r if rtol is None else rtol
    atol = a if atol is None else atol
    if isinstance(got, pipec.Tensor):
        assert str(got.device).startswith(DEV), f"result is on {got.device}, expected {DEV}"
    g = npy(got)
    w = npy(want) if isinstance(want, pipec.Tensor) else np.asarray(want)
    assert g.shape == w.shape, f"shape {g.shape} != {w.shape}"
    np.testing.assert_allclose(g, w, rtol=rtol, atol=atol, equal_nan=True)


def both(fn, *cpu_inputs, grad=False):
    """fn on the CPU inputs and on copies on DEV; with grad=True also d(sum of outputs * w)/d
    of every float input, w a fixed random weight. Returns ((cpu_out, dev_out), grads pairs)."""
    def run(inputs):
        ins = [x.detach().clone() for x in inputs]
        if grad:
            for x in ins:
                if x.dtype in FLOATS:
                    x.requires_grad_(True)
        out = fn(*ins)
        grads = []
        if grad:
            outs = out if isinstance(out, (tuple, list)) else (out,)
            total = None
            for i, o in enumerate(outs):
                if o.dtype not in FLOATS:
                    continue
                w = randn(*o.shape, dtype=o.dtype, seed=100 + i).to(o.device)
                term = (o * w).sum()
                total = term if total is None else total + term
            total.backward()
            grads = [x.grad for x in ins if x.dtype in FLOATS]
        return out, grads

    out_c, g_c = run(cpu_inputs)
    out_d, g_d = run([x.to(DEV) for x in cpu_inputs])
    return (out_c, out_d), list(zip(g_c, g_d))


# ---- devices and copies ----

@gpu_only
def test_device_api():
    n = pipec.cuda.device_count()
    assert n >= 1 and pipec.cuda.is_available() and pipec.cuda.is_built()
    assert 0 <= pipec.cuda.current_device() < n
    pipec.cuda.set_device(n - 1)
    assert pipec.cuda.current_device() == n - 1
    with pipec.cuda.device(0):
        assert pipec.cuda.current_device() == 0
    assert pipec.cuda.current_device() == n - 1
    pipec.cuda.set_device(0)
    pipec.cuda.synchronize()
    assert isinstance(pipec.cuda.get_device_name(0), str) and pipec.cuda.get_device_name(0)
    assert pipec.cuda.get_device_capability(0) >= (7, 0)
    free, total = pipec.cuda.mem_get_info()
    assert 0 < free <= total == pipec.cuda.get_device_properties(0).total_memory
    with pytest.raises(RuntimeError):
        pipec.zeros(2, device=f"cuda:{n}")


@pytest.mark.parametrize("dtype", ALL, ids=str)
def test_roundtrip_every_dtype(dtype):
    x = host(_rng(1).uniform(-50, 50, (17, 33)), dtype) if dtype != pipec.bool else \
        host(_rng(1).uniform(size=(17, 33)) > 0.5)
    y = x.to(DEV)
    assert y.dtype == dtype and str(y.device).startswith(DEV)
    back = y.cpu()
    np.testing.assert_array_equal(npy(back), npy(x))
    arr = np.asarray(y.numpy())  # bfloat16 arrives as float32
    np.testing.assert_array_equal(arr.astype(bool if dtype == pipec.bool else np.float64),
                                  npy(x))
    if HAS_GPU and not _AS_CPU:
        np.testing.assert_array_equal(npy(x.cuda()), npy(x))


def test_large_copies_use_staging_correctly():
    # 48 MiB: several 8 MiB pinned staging chunks each way, plus an odd tail
    a = _rng(2).standard_normal(12 * (1 << 20) + 3).astype(np.float32)
    t = pipec.from_numpy(a).to(DEV)
    np.testing.assert_array_equal(t.cpu().numpy(), a)
    np.testing.assert_array_equal(t.numpy(), a)
    # a non-contiguous host tensor goes through a contiguous copy first
    m = pipec.from_numpy(a[: 1000 * 1000].reshape(1000, 1000)).t()
    np.testing.assert_array_equal(m.to(DEV).cpu().numpy(), a[: 1000 * 1000].reshape(1000, 1000).T)


def test_device_to_device_copy_and_clone():
    x = randn(300, 257).to(DEV)
    y = x.clone()
    y.add_(1.0)
    close(x + 1.0, y)
    z = pipec.empty(300, 257, device=DEV)
    z.copy_(x)
    np.testing.assert_array_equal(npy(z), npy(x))


@pytest.mark.parametrize("src", ALL, ids=str)
def test_dtype_conversions_match_cpu(src):
    vals = _rng(3).uniform(-300, 300, 4099)
    vals[:8] = [0.0, -0.0, 0.5, -0.5, 1.5, 2.5, -2.7, 65504.0]
    x = host(vals > 0) if src == pipec.bool else host(vals, src)
    xd = x.to(DEV)
    for dst in ALL:
        want = x.to(dst)
        got = xd.to(dst)
        assert got.dtype == dst
        np.testing.assert_array_equal(npy(got), npy(want), err_msg=f"{src} -> {dst}")


def test_strided_and_broadcast_copies():
    x = randn(64, 96, seed=4)
    for view in (lambda t: t.t(), lambda t: t[1:, ::3], lambda t: t.unsqueeze(0).expand(3, 64, 96),
                 lambda t: t.transpose(0, 1)[5:50:7]):
        (c, d), _ = both(lambda t: view(t).contiguous(), x)
        np.testing.assert_array_equal(npy(d), npy(c))
    # conversion while copying from a strided view
    (c, d), _ = both(lambda t: t.t().to(pipec.bfloat16).contiguous(), x)
    np.testing.assert_array_equal(npy(d), npy(c))


# ---- elementwise ----

UNARY = {
    "neg": lambda t: -t,
    "abs": lambda t: t.abs(),
    "exp": lambda t: t.exp(),
    "log": lambda t: (t.abs() + 0.1).log(),
    "sqrt": lambda t: (t.abs() + 0.1).sqrt(),
    "tanh": lambda t: t.tanh(),
    "sigmoid": lambda t: t.sigmoid(),
    "relu": lambda t: t.relu(),
    "gelu": lambda t: F.gelu(t),
    "pow": lambda t: (t.abs() + 0.1).pow(2.5),
    "add_s": lambda t: t + 2.5,
    "mul_s": lambda t: t * -1.5,
    "rsub_s": lambda t: 3.0 - t,
    "rdiv_s": lambda t: 2.0 / (t.abs() + 0.5),
}


def _views(x):
    """contiguous (aligned), offset by one element (unaligned), transposed (strided)."""
    return {"contig": x, "offset": x.reshape(-1)[1:].reshape(-1)[: x.numel() - 1],
            "strided": x.t()}


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("name", list(UNARY))
def test_unary_matches_cpu(name, dtype):
    x = randn(37, 129, dtype=dtype, seed=5)
    for vname, v in _views(x).items():
        (c, d), grads = both(UNARY[name], v, grad=True)
        close(d, c, dtype)
        for gc_, gd in grads:
            close(gd, gc_, dtype)


def test_unary_int64():
    x = host(_rng(6).integers(-1000, 1000, (55, 77)), pipec.int64)
    for fn in (lambda t: -t, lambda t: t.abs(), lambda t: t + 3, lambda t: t * -2):
        (c, d), _ = both(fn, x)
        np.testing.assert_array_equal(npy(d), npy(c))


BINARY = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / (b.abs() + 0.5),
    "maximum": lambda a, b: pipec.maximum(a, b),
    "add_alpha": lambda a, b: pipec.add(a, b, alpha=2.5),
}
SHAPES = [((1000,), (1000,)), ((64, 128), (128,)), ((64, 1), (1, 128)), ((5, 1, 7), (1, 6, 1)),
          ((33, 17), ())]


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("name", list(BINARY))
def test_binary_broadcast_matches_cpu(name, dtype):
    for i, (sa, sb) in enumerate(SHAPES):
        a = randn(*sa, dtype=dtype, seed=7 + i)
        b = randn(*sb, dtype=dtype, seed=70 + i)
        (c, d), grads = both(BINARY[name], a, b, grad=True)
        close(d, c, dtype)
        for gc_, gd in grads:
            close(gd, gc_, dtype, atol=TOL[dtype][1] * 200)  # summed over broadcast dims


def test_binary_int64_and_inplace():
    a = host(_rng(8).integers(-99, 99, (40, 50)), pipec.int64)
    b = host(_rng(9).integers(-99, 99, (50,)), pipec.int64)
    for fn in (lambda x, y: x + y, lambda x, y: x - y, lambda x, y: x * y):
        (c, d), _ = both(fn, a, b)
        np.testing.assert_array_equal(npy(d), npy(c))
    x = randn(300, 41, seed=10)
    y = randn(41, seed=11)
    xd, yd = x.to(DEV), y.to(DEV)
    x.mul_(y).add_(y, alpha=0.5).sub_(1.25).div_(y.abs() + 1.0)
    xd.mul_(yd).add_(yd, alpha=0.5).sub_(1.25).div_(yd.abs() + 1.0)
    close(xd, x)


def test_fill_and_zero():
    for dtype in ALL:
        t = pipec.empty(1001, 3, dtype=dtype, device=DEV)
        t.fill_(1)
        assert npy(t).min() == 1 and npy(t).max() == 1
        t.zero_()
        assert not npy(t).any()
    s = pipec.zeros(50, 60, device=DEV)
    s.t()[::2].fill_(-2.5)  # strided fill
    ref = np.zeros((50, 60))
    ref.T[::2] = -2.5
    np.testing.assert_array_equal(npy(s), ref)


# ---- reductions ----

@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_sum_mean_max_match_cpu(dtype):
    cases = [((1000,), None), ((64, 1000), 1), ((64, 1000), 0), ((8, 300, 17), (0, 2)),
             ((3, 5, 7), (0, 1, 2)), ((1, 1), 0)]
    for shape, dims in cases:
        x = randn(*shape, dtype=dtype, seed=12)
        n = int(np.prod([shape[d] for d in (dims if isinstance(dims, tuple) else
                                            (range(len(shape)) if dims is None else (dims,)))]))
        atol = TOL[dtype][1] * max(1.0, math.sqrt(n)) * 4
        for keep in (False, True):
            for op in ("sum", "mean"):
                if dims is None:
                    fn = (lambda t, op=op: getattr(t, op)())
                else:
                    fn = (lambda t, op=op, k=keep: getattr(t, op)(dims, keepdim=k))
                (c, d), grads = both(fn, x, grad=True)
                close(d, c, dtype, atol=atol)
                for gc_, gd in grads:
                    close(gd, gc_, dtype)
        (c, d), grads = both(lambda t: t.max(), x, grad=False)
        close(d, c, dtype)


def test_large_reductions_use_split_paths():
    # long rows (block per output with splits), tall columns (outer kernel with splits),
    # and everything at once
    for shape, dim in (((3, 1 << 20), 1), ((1 << 20, 3), 0), ((4096, 4096), 0),
                       ((4096, 4096), 1), ((1 << 22,), 0)):
        x = uniform(*shape, seed=13)
        n = shape[dim]
        for op in ("sum", "mean"):
            (c, d), _ = both(lambda t, op=op: getattr(t, op)(dim), x)
            # positive inputs: no cancellation; float32 summation error grows ~ sqrt(n) eps
            close(d, c, rtol=2e-5 * max(1.0, math.log2(n)) / 4, atol=1e-6)
        x64 = uniform(*shape, dtype=pipec.float64, seed=13)
        (c, d), _ = both(lambda t: t.sum(dim), x64)
        close(d, c, rtol=1e-11)


def test_max_dim_ties_and_nan():
    # many ties: the first maximal index must win on both backends
    x = host(_rng(14).integers(0, 4, (300, 257)), pipec.float32)
    for dim in (0, 1):
        c = pipec.max(x, dim=dim)
        d = pipec.max(x.to(DEV), dim=dim)
        np.testing.assert_array_equal(npy(d[0]), npy(c[0]))
        np.testing.assert_array_equal(npy(d[1]), npy(c[1]))
    a = _rng(15).standard_normal((20, 2000))
    a[3, 5] = np.nan
    a[3, 700] = np.nan
    a[7, 1999] = np.nan
    x = host(a)
    c_vals, c_idx = pipec.max(x, dim=1)
    d_vals, d_idx = pipec.max(x.to(DEV), dim=1)
    assert npy(d_idx)[3] == 5 and npy(d_idx)[7] == 1999
    np.testing.assert_array_equal(npy(d_idx), npy(c_idx))
    close(d_vals, c_vals)
    assert np.isnan(npy(x.to(DEV).max()))


def test_int64_sum():
    x = host(_rng(16).integers(-1 << 40, 1 << 40, (123, 4567)), pipec.int64)
    for dim in (0, 1):
        (c, d), _ = both(lambda t: t.sum(dim), x)
        np.testing.assert_array_equal(npy(d), npy(c))


# ---- matrix products ----

GEMM_SHAPES = [(64, 64, 64), (127, 65, 33), (1, 300, 7), (256, 1, 128), (5, 7, 1), (513, 257, 1029)]


def _gemm_tol(dtype, k):
    r, a = TOL[dtype]
    return dict(rtol=r * (10 if dtype == pipec.float32 else 1), atol=a * math.sqrt(k) * 4)


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_mm_and_transposes(dtype):
    for m, n, k in GEMM_SHAPES:
        a = uniform(m, k, dtype=dtype, seed=17, lo=-1, hi=1)
        b = uniform(k, n, dtype=dtype, seed=18, lo=-1, hi=1)
        ref = npy(a) @ npy(b)
        tol = _gemm_tol(dtype, k)
        close(a.to(DEV) @ b.to(DEV), ref, dtype, **tol)
        at = a.t().contiguous().t()  # (m, k) view of a (k, m) buffer
        bt = b.t().contiguous().t()
        close(at.to(DEV) @ b.to(DEV), ref, dtype, **tol)
        close(a.to(DEV) @ bt.to(DEV), ref, dtype, **tol)
        close(pipec.mm(at.to(DEV), bt.to(DEV)), ref, dtype, **tol)
        # backward (dA = dC B^T, dB = A^T dC)
        (_, _), grads = both(lambda x, y: x @ y, a, b, grad=True)
        for gc_, gd in grads:
            close(gd, gc_, dtype, **_gemm_tol(dtype, max(m, n)))


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_batched_and_broadcast_matmul(dtype):
    a = uniform(4, 33, 17, dtype=dtype, seed=19, lo=-1, hi=1)
    b = uniform(4, 17, 9, dtype=dtype, seed=20, lo=-1, hi=1)
    w = uniform(17, 9, dtype=dtype, seed=21, lo=-1, hi=1)
    tol = _gemm_tol(dtype, 17)
    close(a.to(DEV) @ b.to(DEV), npy(a) @ npy(b), dtype, **tol)
    close(a.to(DEV) @ w.to(DEV), npy(a) @ npy(w), dtype, **tol)
    (_, _), grads = both(lambda x, y: x @ y, a, w, grad=True)
    for gc_, gd in grads:
        close(gd, gc_, dtype, **_gemm_tol(dtype, 4 * 33))


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_linear_bias_relu_epilogue(dtype):
    for batch, fin, fout in ((64, 128, 256), (33, 17, 9), (1, 1024, 4096)):
        x = uniform(batch, fin, dtype=dtype, seed=22, lo=-1, hi=1)
        w = uniform(fout, fin, dtype=dtype, seed=23, lo=-1, hi=1)
        b = uniform(fout, dtype=dtype, seed=24, lo=-1, hi=1)
        ref = npy(x) @ npy(w).T + npy(b)
        tol = _gemm_tol(dtype, fin)
        close(F.linear(x.to(DEV), w.to(DEV), b.to(DEV)), ref, dtype, **tol)
        close(F.relu(F.linear(x.to(DEV), w.to(DEV), b.to(DEV))), np.maximum(ref, 0), dtype, **tol)
        # an unaligned bias (offset view) takes the unfused path
        b2 = uniform(fout + 1, dtype=dtype, seed=25, lo=-1, hi=1)
        ref2 = npy(x) @ npy(w).T + npy(b2)[1:]
        close(F.linear(x.to(DEV), w.to(DEV), b2.to(DEV)[1:]), ref2, dtype, **tol)
        (_, _), grads = both(lambda x_, w_, b_: F.relu(F.linear(x_, w_, b_)), x, w, b, grad=True)
        for gc_, gd in grads:
            close(gd, gc_, dtype, **_gemm_tol(dtype, max(batch, fout)))
    # addmm with beta and alpha
    c = uniform(30, 40, seed=26)
    a = uniform(30, 50, seed=27)
    bb = uniform(50, 40, seed=28)
    ref = 0.5 * npy(c) + 2.0 * (npy(a) @ npy(bb))
    close(pipec.addmm(c.to(DEV), a.to(DEV), bb.to(DEV), beta=0.5, alpha=2.0), ref,
          **_gemm_tol(pipec.float32, 50))


def test_tf32_is_off_by_default_and_switchable():
    assert pipec.backends.cuda.matmul.allow_tf32 is False
    # 1 + 2^-20 is exact in float32 but rounds to 1 in TF32 (10-bit mantissa)
    v = 1.0 + 2.0 ** -20
    a = pipec.full((64, 64), v, device=DEV)
    b = pipec.zeros(64, 64, device=DEV)
    b[0].fill_(1.0)  # every dot product is v * 1 + 0 + ... + 0: exact in float32
    got = npy(a @ b)
    np.testing.assert_array_equal(got, np.full((64, 64), np.float32(v)))
    x = uniform(512, 512, seed=29, lo=-1, hi=1)
    y = uniform(512, 512, seed=30, lo=-1, hi=1)
    ref = npy(x) @ npy(y)
    pipec.backends.cuda.matmul.allow_tf32 = True
    try:
        assert pipec.backends.cuda.matmul.allow_tf32 is True
        close(x.to(DEV) @ y.to(DEV), ref, rtol=1e-2, atol=5e-2)
    finally:
        pipec.backends.cuda.matmul.allow_tf32 = False
    close(x.to(DEV) @ y.to(DEV), ref, **_gemm_tol(pipec.float32, 512))


# ---- row-wise kernels ----

ROW_SHAPES = [(7, 1), (33, 5), (64, 1000), (16, 1025), (4, 5000), (2, 70000), (3, 4, 31)]


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("log", [False, True])
def test_softmax_forward_backward(dtype, log):
    fn = (lambda t: F.log_softmax(t, dim=-1)) if log else (lambda t: F.softmax(t, dim=-1))
    for shape in ROW_SHAPES:
        x = randn(*shape, dtype=dtype, seed=31, scale=3.0)
        (c, d), grads = both(fn, x, grad=True)
        close(d, c, dtype, atol=TOL[dtype][1] * (10 if log else 1))
        for gc_, gd in grads:
            close(gd, gc_, dtype)
    # softmax over a leading dim (a strided input the op layer makes contiguous)
    x = randn(50, 20, dtype=dtype, seed=32)
    (c, d), _ = both(lambda t: F.softmax(t, dim=0), x)
    close(d, c, dtype)


def test_softmax_masked_rows():
    a = _rng(33).standard_normal((4, 300))
    a[0, 10:] = -np.inf
    a[1, :] = -np.inf
    x = host(a)
    (c, d), _ = both(lambda t: F.softmax(t, dim=-1), x)
    close(d, c)
    assert np.isnan(npy(d)[1]).all()


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_layer_norm_forward_backward(dtype):
    for shape in ((64, 32), (8, 1000), (4, 4096), (3, 20000), (2, 3, 48)):
        d_ = shape[-1]
        x = randn(*shape, dtype=dtype, seed=34, scale=2.0)
        w = uniform(d_, dtype=dtype, seed=35, lo=0.5, hi=1.5)
        b = uniform(d_, dtype=dtype, seed=36, lo=-1, hi=1)
        (c, d), grads = both(lambda t, w_, b_: F.layer_norm(t, (d_,), w_, b_, 1e-5), x, w, b,
                             grad=True)
        close(d, c, dtype, atol=TOL[dtype][1] * 4)
        rows = int(np.prod(shape[:-1]))
        for gc_, gd in grads:
            close(gd, gc_, dtype, atol=TOL[dtype][1] * 4 * math.sqrt(rows))
        (c, d), grads = both(lambda t: F.layer_norm(t, (d_,)), x, grad=True)
        close(d, c, dtype, atol=TOL[dtype][1] * 4)
        for gc_, gd in grads:
            close(gd, gc_, dtype, atol=TOL[dtype][1] * 4)


@pytest.mark.parametrize("dtype", [pipec.float32, pipec.float64, pipec.bfloat16], ids=str)
def test_cross_entropy(dtype):
    for n, c_ in ((64, 10), (16, 50000), (1, 3)):
        logits = randn(n, c_, dtype=dtype, seed=37, scale=2.0)
        target = host(_rng(38).integers(0, c_, n), pipec.int64)
        for red in ("mean", "sum", "none"):
            (c, d), grads = both(lambda x, t: F.cross_entropy(x, t, reduction=red), logits,
                                 target, grad=True)
            close(d, c, dtype, atol=TOL[dtype][1] * 10 * (n if red == "sum" else 1))
            for gc_, gd in grads:
                close(gd, gc_, dtype)


def test_embedding_and_index_errors():
    w = randn(1000, 64, seed=39)
    idx = host(_rng(40).integers(0, 1000, (8, 33)), pipec.int64)
    idx_np = npy(idx)
    idx_np[0, :5] = 7  # repeats accumulate in the backward
    idx = host(idx_np, pipec.int64)
    (c, d), grads = both(lambda ww, ii: F.embedding(ii, ww), w, idx, grad=True)
    np.testing.assert_array_equal(npy(d), npy(c))
    for gc_, gd in grads:
        close(gd, gc_, atol=1e-5)
    if HAS_GPU and not _AS_CPU:
        bad = host(np.array([1, 2, 1000]), pipec.int64).to(DEV)
        with pytest.raises(IndexError):
            F.embedding(bad, w.to(DEV))
        # the process and the device stay usable
        close(F.embedding(idx.to(DEV), w.to(DEV)), c)


# ---- random numbers ----

@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_philox_same_numbers_on_cpu_and_cuda(dtype):
    n = 1_000_003
    for seed in (0, 1234, 2 ** 40 + 7):
        pipec.manual_seed(seed)
        c1 = pipec.rand(n, dtype=dtype)
        c2 = pipec.randn(n, dtype=dtype)
        pipec.manual_seed(seed)
        d1 = pipec.rand(n, dtype=dtype, device=DEV)
        d2 = pipec.randn(n, dtype=dtype, device=DEV)
        np.testing.assert_array_equal(npy(d1), npy(c1))  # uniform: bit-identical
        if dtype == pipec.float64:
            np.testing.assert_allclose(npy(d2), npy(c2), rtol=1e-13, atol=1e-13)
        elif dtype == pipec.float32:
            np.testing.assert_array_max_ulp(d2.cpu().numpy(), c2.numpy(), maxulp=1)
        else:
            diff = np.abs(npy(d2) - npy(c2))
            assert (diff <= np.abs(npy(c2)) * TOL[dtype][0]).mean() > 0.9999
    # in-place fills draw from the same stream
    pipec.manual_seed(5)
    a = pipec.empty(1000, 7).uniform_(-2, 3)
    b = pipec.empty(1000, 7).normal_(1.0, 0.5)
    pipec.manual_seed(5)
    ad = pipec.empty(1000, 7, device=DEV).uniform_(-2, 3)
    bd = pipec.empty(1000, 7, device=DEV).normal_(1.0, 0.5)
    np.testing.assert_array_equal(npy(ad), npy(a))
    np.testing.assert_allclose(npy(bd), npy(b), rtol=1e-6)


def test_dropout_masks_match_cpu():
    x = uniform(300, 301, seed=41, lo=0.5, hi=1.5)
    pipec.manual_seed(99)
    c = F.dropout(x, p=0.3, training=True)
    pipec.manual_seed(99)
    d = F.dropout(x.to(DEV), p=0.3, training=True)
    np.testing.assert_array_equal(npy(d) == 0, npy(c) == 0)
    close(d, c)


# ---- optimisers ----

def _params(seed, sizes):
    return [randn(*s, seed=seed + i) for i, s in enumerate(sizes)]


# > 36 tensors (several launches) and tensors > 65536 elements (several chunks)
OPT_SIZES = [(3,), (70000,), (129, 1031)] + [(17, 5)] * 40


@pytest.mark.parametrize("kind", ["sgd", "sgd_nesterov", "sgd_plain", "adamw"])
def test_fused_optimizers_match_cpu(kind):
    def run(device):
        ps = [nn.Parameter(p.to(device)) for p in _params(42, OPT_SIZES)]
        if kind == "sgd":
            opt = pipec.optim.SGD(ps, lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01)
        elif kind == "sgd_nesterov":
            opt = pipec.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True, maximize=True)
        elif kind == "sgd_plain":
            opt = pipec.optim.SGD(ps, lr=0.3)
        else:
            opt = pipec.optim.AdamW(ps, lr=1e-2, betas=(0.9, 0.99), eps=1e-8,
                                    weight_decay=0.05)
        for step in range(4):
            grads = _params(1000 + 100 * step, OPT_SIZES)
            for p, g in zip(ps, grads):
                p.grad = g.to(device)
            opt.step()
        return ps

    for pc_, pd in zip(run("cpu"), run(DEV)):
        close(pd, pc_, rtol=1e-5, atol=1e-6)


# ---- interop ----

def _torch():
    try:
        import torch  # noqa: F401
    except Exception:  # noqa: BLE001
        pytest.skip("torch is not importable")
    import torch
    if not _AS_CPU and not torch.cuda.is_available():
        pytest.skip("torch has no CUDA")
    return torch


def _from_dlpack(obj):
    fn = getattr(pipec, "from_dlpack", None) or pipec._C._from_dlpack
    return fn(obj)


def test_dlpack_roundtrip_with_torch_shares_memory():
    torch = _torch()
    tdev = "cpu" if _AS_CPU else "cuda"
    # pipec -> torch: a write on the torch side is seen by pipec
    x = pipec.zeros(1000, 33, device=DEV)
    y = randn(1000, 33, seed=43).to(DEV)
    x.add_(y)  # queued on pipec's stream: torch must see it without an explicit sync
    tx = torch.from_dlpack(x)
    assert tx.device.type == tdev and tuple(tx.shape) == (1000, 33)
    np.testing.assert_array_equal(tx.cpu().numpy(), npy(y).astype(np.float32))
    tx[3, 4] = 123.0
    if tdev == "cuda":
        torch.cuda.synchronize()
    assert npy(x)[3, 4] == 123.0
    # torch -> pipec: a write on the pipec side is seen by torch
    t = torch.arange(24, dtype=torch.float32, device=tdev).reshape(4, 6)[:, 1:5]
    p = _from_dlpack(t)
    assert tuple(p.shape) == (4, 4) and str(p.device).startswith(DEV)
    np.testing.assert_array_equal(npy(p), t.cpu().numpy())
    p.fill_(-1.0)
    if tdev == "cuda":
        pipec.cuda.synchronize()
    assert (t.cpu().numpy() == -1.0).all()
    assert (torch.arange(24, dtype=torch.float32, device=tdev).reshape(4, 6)[:, 0] >= 0).all()
    # every dtype crosses both ways
    for dt, tdt in ((pipec.float64, torch.float64), (pipec.float16, torch.float16),
                    (pipec.bfloat16, torch.bfloat16), (pipec.int64, torch.int64),
                    (pipec.bool, torch.bool)):
        src = torch.ones(5, 3, dtype=tdt, device=tdev)
        q = _from_dlpack(src)
        assert q.dtype == dt
        assert torch.from_dlpack(q).dtype == tdt
    # the producer's memory stays alive while pipec holds it
    t2 = torch.full((1 << 20,), 7.0, device=tdev)
    p2 = _from_dlpack(t2)
    del t2
    gc.collect()
    assert npy(p2.sum()) == 7.0 * (1 << 20)


@gpu_only
def test_cuda_array_interface_with_torch():
    torch = _torch()
    x = pipec.arange(12, dtype=pipec.float32, device="cuda").reshape(3, 4)
    cai = x.__cuda_array_interface__
    assert cai["version"] == 3 and cai["typestr"] == "<f4" and cai["shape"] == (3, 4)
    assert cai["data"][0] == x.data_ptr()
    t = torch.as_tensor(x, device="cuda")
    assert t.data_ptr() == x.data_ptr()
    t[0, 0] = 5.0
    torch.cuda.synchronize()
    assert npy(x)[0, 0] == 5.0
    assert not hasattr(pipec.zeros(2), "__cuda_array_interface__")


# ---- memory ----

@gpu_only
def test_allocator_statistics():
    pipec.cuda.synchronize()
    gc.collect()
    base = pipec.cuda.memory_allocated()
    x = pipec.empty(1000, device="cuda")  # 4000 bytes -> one 4096-byte block
    assert pipec.cuda.memory_allocated() == base + 4096
    assert pipec.cuda.max_memory_allocated() >= base + 4096
    reserved = pipec.cuda.memory_reserved()
    assert reserved >= pipec.cuda.memory_allocated()
    del x
    assert pipec.cuda.memory_allocated() == base
    # a freed block is reused on the same stream: no new reservation
    y = pipec.empty(1000, device="cuda")
    assert pipec.cuda.memory_reserved() == reserved
    del y
    pipec.cuda.reset_peak_memory_stats()
    assert pipec.cuda.max_memory_allocated() == pipec.cuda.memory_allocated()
    big = pipec.empty(64 << 20, device="cuda")  # 256 MiB, its own segment
    assert pipec.cuda.max_memory_allocated() >= base + (256 << 20)
    del big
    before = pipec.cuda.memory_reserved()
    pipec.cuda.empty_cache()
    assert pipec.cuda.memory_reserved() <= before - (256 << 20)
    stats = pipec.cuda.memory_stats()
    assert stats["allocated_bytes.all.current"] == pipec.cuda.memory_allocated()


@gpu_only
def test_out_of_memory_raises_and_recovers():
    free, total = pipec.cuda.mem_get_info()
    with pytest.raises(MemoryError) as ei:
        pipec.empty(total // 2 + (1 << 20), dtype=pipec.float32, device="cuda")  # 2x device
    msg = str(ei.value)
    assert "tried to allocate" in msg and "reserved" in msg and "cuda:0" in msg
    # fill the device in 1 GiB pieces until it fails, then free and allocate again
    chunks = []
    with pytest.raises(MemoryError):
        for _ in range(total // (1 << 30) + 8):
            chunks.append(pipec.empty(1 << 28, device="cuda"))
    assert len(chunks) > 0
    del chunks
    gc.collect()
    pipec.cuda.empty_cache()
    z = pipec.ones(1 << 28, device="cuda")
    assert abs(float(npy(z.sum())) - float(1 << 28)) <= 1e-6 * (1 << 28)
    del z
    assert pipec.cuda.memory_stats()["num_ooms"] >= 2


@gpu_only
def test_training_loop_memory_stays_flat():
    pipec.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 1)).to("cuda")
    opt = pipec.optim.AdamW(model.parameters(), lr=1e-3)
    x = randn(128, 32, seed=44).cuda()
    y = randn(128, 1, seed=45).cuda()

    def step():
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        return loss

    first = float(step().item())
    for _ in range(20):
        step()
    pipec.cuda.synchronize()
    base = pipec.cuda.memory_allocated()
    reserved = pipec.cuda.memory_reserved()
    peak = 0
    for i in range(10_000):
        loss = step()
        del loss
        if i % 500 == 0:
            peak = max(peak, pipec.cuda.memory_allocated())
    pipec.cuda.synchronize()
    assert pipec.cuda.memory_allocated() == base
    assert peak == base
    assert pipec.cuda.memory_reserved() == reserved
    assert float(step().item()) < first


# ---- streams and events ----

@gpu_only
def test_streams_and_events():
    cuda = pipec.cuda
    default = cuda.default_stream()
    assert cuda.current_stream() == default
    s = cuda.Stream()
    assert s != default and s.device_index == cuda.current_device()
    a = uniform(2048, 2048, seed=46, lo=-1, hi=1).cuda()
    ref = npy(a @ a)
    start, end = cuda.Event(enable_timing=True), cuda.Event(enable_timing=True)
    s.wait_stream(default)  # `a` was produced on the default stream
    with cuda.stream(s):
        assert cuda.current_stream() == s
        start.record()
        b = a @ a
        for _ in range(5):
            b = (b @ a) * 1e-3
        end.record()
    assert cuda.current_stream() == default
    end.synchronize()
    assert end.query() and start.query()
    ms = start.elapsed_time(end)
    assert ms > 0.0
    default.wait_stream(s)
    c = b.sum()
    assert np.isfinite(npy(c))
    s.synchronize()
    assert s.query()
    # a computation on a side stream gives the same numbers
    s2 = cuda.Stream(priority=-1)
    s2.wait_stream(default)
    with cuda.stream(s2):
        d = a @ a
    ev = s2.record_event()
    ev.wait(default)
    close(d, ref, **_gemm_tol(pipec.float32, 2048))
    pipec._C._cuda_record_stream(d, s2.cuda_stream)
    del d
    cuda.synchronize()
    with pytest.raises(RuntimeError):
        cuda.Event().elapsed_time(cuda.Event())


@multigpu
@pytest.mark.multigpu
def test_cross_device_copies():
    x = randn(513, 257, seed=47)
    a = x.to("cuda:0")
    b = a.to("cuda:1")
    assert str(b.device) == "cuda:1"
    np.testing.assert_array_equal(npy(b), npy(x))
    c = a.t().to("cuda:1").contiguous()
    np.testing.assert_array_equal(npy(c), npy(x).T)
    d = a.to("cuda:1").to(pipec.bfloat16)
    np.testing.assert_array_equal(npy(d), npy(x.to(pipec.bfloat16)))
    with pipec.cuda.device(1):
        close(b @ b.t(), npy(x) @ npy(x).T, **_gemm_tol(pipec.float32, 257))

"""test_autograd.py — autograd semantics (torch's): accumulation into leaves, freeing the
graph and retain_graph, grad mode (no_grad / enable_grad), detach, grad_fn names, in-place
rules and version counters, pipec.autograd.grad, and split backward (backward_input then
backward_weight equals one full backward) on a two-layer MLP.

Gradients of composite functions are compared with hand-derived NumPy float64 values
(tolerance helpers.TOL["float64"]) or with finite differences (helpers.check_grad).
"""
import numpy as np
import pytest

import pipec
import pipec.nn.functional as F
from helpers import to_np, assert_close, check_grad


def _r(*shape):
    return np.random.default_rng().standard_normal(shape)


def leaf(a, dtype=pipec.float64):
    return pipec.tensor(np.asarray(a, dtype=np.float64), dtype=dtype, requires_grad=True)


# ---- accumulation and graph lifetime ----

def test_grad_accumulates_across_backward_calls():
    x0 = _r(4)
    x = leaf(x0)
    (x * x).sum().backward()
    assert_close(x.grad, 2 * x0)
    (x * 3.0).sum().backward()
    assert_close(x.grad, 2 * x0 + 3.0)
    x.grad.zero_()
    (x * x * x).sum().backward()
    assert_close(x.grad, 3 * x0 ** 2)


def _linear_case(seed=0):
    rng = np.random.default_rng(seed)
    w = pipec.tensor(rng.standard_normal((5, 7)), dtype=pipec.float64, requires_grad=True)
    xs = [pipec.tensor(rng.standard_normal((3, 7)), dtype=pipec.float64) for _ in range(3)]
    gs = [rng.standard_normal((3, 5)) for _ in range(3)]
    return w, xs, gs


def test_linear_weight_grad_is_added_into_dot_grad():
    """Once W.grad exists, linear's backward adds dY^T X into it with one GEMM (beta = 1)
    instead of making a temporary and adding it: same numbers, same .grad tensor, one fused
    accumulation per backward after the first."""
    from pipec import _C
    w, xs, gs = _linear_case()
    before = _C._fused_grad_count()
    expect = np.zeros((5, 7))
    ptr = None
    for x, g in zip(xs, gs):
        F.linear(x, w).backward(pipec.tensor(g, dtype=pipec.float64))
        expect += g.T @ to_np(x)
        assert_close(w.grad, expect)
        ptr = ptr or w.grad.data_ptr()
        assert w.grad.data_ptr() == ptr
    assert _C._fused_grad_count() - before == 2
    # a .grad that Python holds, or that the graph reads, is accumulated the ordinary way
    held = w.grad
    F.linear(xs[0], w).backward(pipec.tensor(gs[0], dtype=pipec.float64))
    assert _C._fused_grad_count() - before == 2
    assert_close(held, expect + gs[0].T @ to_np(xs[0]))


def test_fusion_never_writes_a_buffer_the_pass_reads():
    """.grad used as an operand of the fused product, or saved by another node of the same
    pass: the sum must be right and no saved value may look modified."""
    rng = np.random.default_rng(4)
    n = 64
    w = pipec.tensor(rng.standard_normal((n, n)), dtype=pipec.float64, requires_grad=True)
    g0 = rng.standard_normal((n, n))
    gout = rng.standard_normal((n, n))
    w.grad = pipec.tensor(g0, dtype=pipec.float64)
    # linear(w.grad, w): dW = gout^T @ w.grad reads the buffer it would add into
    F.linear(w.grad, w).backward(pipec.tensor(gout, dtype=pipec.float64))
    assert_close(w.grad, g0 + gout.T @ g0)
    # the root gradient is w.grad itself
    g1 = to_np(w.grad).copy()
    x = rng.standard_normal((n, n))
    (pipec.tensor(x, dtype=pipec.float64) @ w).backward(w.grad)
    assert_close(w.grad, g1 + x.T @ g1)
    # another node of the pass saved w.grad: no "modified by an inplace operation"
    g2 = to_np(w.grad).copy()
    xt = pipec.tensor(x, dtype=pipec.float64)
    ((w * w.grad).sum() + F.linear(xt, w).sum()).backward()
    assert_close(w.grad, g2 + g2 + np.ones((n, n)).T @ x)


def test_matmul_weight_grad_is_added_into_dot_grad():
    """x @ W with a 2-D leaf W: batched and vector x too (the batch folds into one GEMM
    that adds into W.grad)."""
    from pipec import _C
    rng = np.random.default_rng(2)
    w = pipec.tensor(rng.standard_normal((6, 4)), dtype=pipec.float64, requires_grad=True)
    expect = np.zeros((6, 4))
    before = _C._fused_grad_count()
    for shape in [(3, 6), (2, 3, 6), (6,), (5, 6)]:
        x = rng.standard_normal(shape)
        out = pipec.matmul(pipec.tensor(x, dtype=pipec.float64), w)
        g = rng.standard_normal(tuple(out.shape))
        out.backward(pipec.tensor(g, dtype=pipec.float64))
        expect += x.reshape(-1, 6).T @ g.reshape(-1, 4)
        assert_close(w.grad, expect)
    assert _C._fused_grad_count() - before == 3


def test_addmm_operand_grads_are_added_into_dot_grad():
    """addmm(bias, m1, m2, alpha=) with leaf m1 and m2: both gradients (alpha-scaled) go
    straight into their .grad from the second backward on."""
    from pipec import _C
    rng = np.random.default_rng(3)
    m1 = pipec.tensor(rng.standard_normal((3, 5)), dtype=pipec.float64, requires_grad=True)
    m2 = pipec.tensor(rng.standard_normal((5, 4)), dtype=pipec.float64, requires_grad=True)
    bias = pipec.tensor(rng.standard_normal(4), dtype=pipec.float64)
    e1, e2 = np.zeros((3, 5)), np.zeros((5, 4))
    before = _C._fused_grad_count()
    for _ in range(3):
        g = rng.standard_normal((3, 4))
        pipec.addmm(bias, m1, m2, alpha=0.5).backward(pipec.tensor(g, dtype=pipec.float64))
        e1 += 0.5 * g @ to_np(m2).T
        e2 += 0.5 * to_np(m1).T @ g
        assert_close(m1.grad, e1)
        assert_close(m2.grad, e2)
    assert _C._fused_grad_count() - before == 4


def test_linear_weight_grad_fusion_respects_the_pass():
    """autograd.grad returns W's gradient and leaves W.grad alone; a .grad that is not a
    plain contiguous tensor of W's shape is accumulated the ordinary way."""
    from pipec import _C
    w, xs, gs = _linear_case(1)
    F.linear(xs[0], w).backward(pipec.tensor(gs[0], dtype=pipec.float64))
    g0 = to_np(w.grad).copy()
    before = _C._fused_grad_count()
    (dw,) = pipec.autograd.grad(F.linear(xs[1], w), [w],
                                grad_outputs=[pipec.tensor(gs[1], dtype=pipec.float64)])
    assert_close(dw, gs[1].T @ to_np(xs[1]))
    assert_close(w.grad, g0)
    # a transposed (non-contiguous) .grad: no fusion, still the right sum
    w.grad = pipec.tensor(g0.T.copy(), dtype=pipec.float64).t()
    F.linear(xs[2], w).backward(pipec.tensor(gs[2], dtype=pipec.float64))
    assert_close(w.grad, g0 + gs[2].T @ to_np(xs[2]))
    assert _C._fused_grad_count() == before


def test_grad_reset_to_none():
    x = leaf(_r(3))
    x.sum().backward()
    x.grad = None
    (2 * x).sum().backward()
    assert_close(x.grad, np.full(3, 2.0))


def test_diamond_and_reuse():
    x0 = _r(5)
    x = leaf(x0)
    y = x * x + pipec.exp(x) - x / 2.0
    y.sum().backward()
    assert_close(x.grad, 2 * x0 + np.exp(x0) - 0.5)


def test_retain_graph_and_second_backward_error():
    x0 = _r(3)
    x = leaf(x0)
    y = (pipec.tanh(x) * x).sum()
    g = (1 - np.tanh(x0) ** 2) * x0 + np.tanh(x0)
    y.backward(retain_graph=True)
    y.backward(retain_graph=True)
    assert_close(x.grad, 2 * g)
    y.backward()
    assert_close(x.grad, 3 * g)
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        y.backward()


def test_freed_graph_error_through_intermediate():
    x = leaf(_r(2, 2))
    h = pipec.mm(x, x)
    a = h.sum()
    b = (h * 2).sum()
    a.backward()
    # b shares MmBackward0 with a, whose saved tensors a's backward freed
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        b.backward()


def test_backward_needs_gradient_for_non_scalar():
    x = leaf(_r(3))
    y = x * 2
    with pytest.raises((RuntimeError, ValueError), match="scalar"):
        y.backward()
    y.backward(pipec.ones(3, dtype=pipec.float64))
    assert_close(x.grad, np.full(3, 2.0))


def test_backward_gradient_shape_must_match():
    x = leaf(_r(3))
    y = x * 2
    with pytest.raises((ValueError, RuntimeError), match="shape"):  # torch: RuntimeError
        y.backward(pipec.ones(4, dtype=pipec.float64))


def test_non_leaf_grad_is_none_and_leaf_flags():
    x = leaf(_r(3))
    y = x * 2
    y.sum().backward()
    assert y.grad is None
    assert x.grad_fn is None and x.requires_grad
    assert y.grad_fn is not None and y.requires_grad


def test_tensor_without_grad_gets_no_grad():
    x = leaf(_r(3))
    c = pipec.tensor(_r(3))
    (x * c).sum().backward()
    assert c.grad is None
    assert_close(x.grad, to_np(c))


def test_backward_on_tensor_that_does_not_require_grad():
    y = pipec.tensor(_r(3)).sum()
    with pytest.raises(RuntimeError):
        y.backward()


# ---- grad mode ----

def test_no_grad_context_and_decorator():
    x = leaf(_r(3))
    assert pipec.is_grad_enabled()
    with pipec.no_grad():
        assert not pipec.is_grad_enabled()
        y = x * 2
        assert not y.requires_grad and y.grad_fn is None
        with pipec.enable_grad():
            assert pipec.is_grad_enabled()
            z = x * 2
            assert z.requires_grad and z.grad_fn is not None
        assert not pipec.is_grad_enabled()
    assert pipec.is_grad_enabled()

    @pipec.no_grad()
    def f(t):
        return t * 3

    assert not f(x).requires_grad
    assert pipec.is_grad_enabled()


def test_no_grad_restored_after_exception():
    with pytest.raises(ZeroDivisionError):
        with pipec.no_grad():
            1 / 0
    assert pipec.is_grad_enabled()


def test_inplace_on_leaf_allowed_under_no_grad():
    x = leaf([1.0, 2.0])
    with pipec.no_grad():
        x *= 2
        x.zero_()
        x.fill_(3.0)
        x += 1.0
    assert x.tolist() == [4.0, 4.0]
    assert x.requires_grad and x.grad_fn is None


# ---- detach ----

def test_detach_stops_gradient_and_shares_memory():
    x0 = _r(3)
    x = leaf(x0)
    d = x.detach()
    assert not d.requires_grad and d.grad_fn is None
    y = (x * d).sum()  # d is a constant
    y.backward()
    assert_close(x.grad, x0)
    d.fill_(1.0)
    assert x.tolist() == [1.0, 1.0, 1.0]


# ---- grad_fn ----

def test_grad_fn_names_follow_torch():
    x = leaf(_r(2, 2))
    w = leaf(_r(2, 2))
    cases = {
        "MmBackward0": pipec.mm(x, w),
        "AddBackward0": x + w,
        "SubBackward0": x - w,
        "MulBackward0": x * w,
        "DivBackward0": x / (w * w + 1),
        "ReluBackward0": pipec.relu(x),
        "TanhBackward0": pipec.tanh(x),
        "SigmoidBackward0": pipec.sigmoid(x),
        "ExpBackward0": pipec.exp(x),
        "NegBackward0": -x,
        "SumBackward0": x.sum(),
        "MeanBackward0": x.mean(),
        "SoftmaxBackward0": pipec.softmax(x, 1),
        "LogSoftmaxBackward0": pipec.log_softmax(x, 1),
        "AddmmBackward0": pipec.addmm(w[0], x, w),
        "TBackward0": x.t(),
    }
    for name, t in cases.items():
        assert t.grad_fn is not None, name
        assert t.grad_fn.name() == name
    assert x.grad_fn is None


# ---- in-place rules ----

@pytest.mark.parametrize("op", ["iadd", "isub", "imul", "zero_", "fill_", "copy_", "uniform_",
                                "normal_"])
def test_inplace_on_leaf_requiring_grad_raises(op):
    x = leaf([1.0, 2.0])
    fns = {
        "iadd": lambda t: t.__iadd__(1.0),
        "isub": lambda t: t.__isub__(pipec.ones(2, dtype=pipec.float64)),
        "imul": lambda t: t.__imul__(2.0),
        "zero_": lambda t: t.zero_(),
        "fill_": lambda t: t.fill_(0.5),
        "copy_": lambda t: t.copy_(pipec.zeros(2, dtype=pipec.float64)),
        "uniform_": lambda t: t.uniform_(),
        "normal_": lambda t: t.normal_(),
    }
    with pytest.raises(RuntimeError, match="leaf"):
        fns[op](x)
    assert x.tolist() == [1.0, 2.0], "a refused in-place op must not write"


def test_inplace_on_view_of_leaf_requiring_grad_raises():
    x = leaf([1.0, 2.0, 3.0])
    with pytest.raises(RuntimeError):
        x[0:2].fill_(0.0)


def test_inplace_on_non_leaf_rebases_history():
    x0, y0 = _r(3), _r(3)
    x, y = leaf(x0), leaf(y0)
    a = x * 2
    a *= 3
    a += y
    a -= x
    assert a.requires_grad
    a.sum().backward()
    assert_close(x.grad, np.full(3, 5.0))
    assert_close(y.grad, np.ones(3))


def test_inplace_after_save_raises_version_error():
    x = leaf(_r(3))
    a = x * 2
    b = a * a  # MulBackward0 saves a
    a += 1.0
    with pytest.raises(RuntimeError, match="(?i)in-?place"):
        b.sum().backward()


def test_inplace_on_input_of_exp_output_saved():
    x = leaf(_r(3))
    e = pipec.exp(x * 1.0)  # ExpBackward0 saves its output e
    e *= 2  # modifies the saved output
    with pytest.raises(RuntimeError, match="(?i)in-?place"):
        e.sum().backward()


def test_version_unaffected_by_unrelated_tensor():
    x0 = _r(3)
    x = leaf(x0)
    a = x * 2
    b = a * a
    other = pipec.zeros(3, dtype=pipec.float64)
    other += 1.0
    b.sum().backward()
    assert_close(x.grad, 8 * x0)


def test_requires_grad_on_non_leaf_cannot_be_turned_off():
    x = leaf(_r(2))
    y = x * 2
    with pytest.raises(RuntimeError):
        y.requires_grad_(False)


# ---- autograd.grad ----

def test_autograd_grad_returns_tuple_and_leaves_grad_untouched():
    x0, w0 = _r(3, 4), _r(4, 2)
    x, w = leaf(x0), leaf(w0)
    y = pipec.mm(x, w)
    R = _r(3, 2)
    gx, gw = pipec.autograd.grad(y, (x, w), grad_outputs=pipec.tensor(R))
    assert_close(gx, R @ w0.T)
    assert_close(gw, x0.T @ R)
    assert x.grad is None and w.grad is None


def test_autograd_grad_of_scalar_and_intermediate():
    x0 = _r(4)
    x = leaf(x0)
    h = x * x
    loss = (h * 3.0).sum()
    (gh,) = pipec.autograd.grad(loss, [h], retain_graph=True)
    assert_close(gh, np.full(4, 3.0))
    (gx,) = pipec.autograd.grad(loss, x)
    assert_close(gx, 6 * x0)


def test_autograd_grad_unused_input():
    x, z = leaf(_r(3)), leaf(_r(3))
    y = (x * 2).sum()
    with pytest.raises(RuntimeError):
        pipec.autograd.grad(y, (x, z), retain_graph=True)
    gx, gz = pipec.autograd.grad(y, (x, z), allow_unused=True)
    assert gz is None
    assert_close(gx, np.full(3, 2.0))


def test_autograd_grad_frees_graph_unless_retained():
    x = leaf(_r(3))
    y = (pipec.exp(x)).sum()
    pipec.autograd.grad(y, x)
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        pipec.autograd.grad(y, x)


def test_autograd_grad_multiple_outputs():
    x0 = _r(3)
    x = leaf(x0)
    a, b = (x * 2).sum(), (x * x).sum()
    (g,) = pipec.autograd.grad([a, b], [x])
    assert_close(g, 2 + 2 * x0)


def test_check_grad_detects_a_wrong_gradient():
    """The finite-difference helper itself must be able to fail: a function whose autograd
    gradient is deliberately wrong (detach drops a term) is caught."""
    with pytest.raises(AssertionError):
        check_grad(lambda t: t * t.detach(), [_r(3)])


# ---- split backward (zero-bubble): I then W equals one full backward ----

def _mlp_params(dtype, d_in=5, d_hid=7, d_out=3, seed=None):
    g = np.random.default_rng(seed)
    vals = [g.standard_normal((d_hid, d_in)), g.standard_normal(d_hid),
            g.standard_normal((d_out, d_hid)), g.standard_normal(d_out)]
    return vals, [leaf(v, dtype) for v in vals]


def _mlp(x, p):
    h = pipec.relu(F.linear(x, p[0], p[1]))
    return F.linear(h, p[2], p[3])


@pytest.mark.parametrize("dtype,tol", [(pipec.float64, 1e-12), (pipec.float32, 1e-5)])
def test_split_backward_equals_full_backward(dtype, tol):
    g = np.random.default_rng()
    x0, R = g.standard_normal((4, 5)), g.standard_normal((4, 3))
    vals, p_full = _mlp_params(dtype, seed=1)
    _, p_split = _mlp_params(dtype, seed=1)

    x_full = leaf(x0, dtype)
    y = _mlp(x_full, p_full)
    y.backward(pipec.tensor(R, dtype=dtype))

    x_split = leaf(x0, dtype)
    y2 = _mlp(x_split, p_split)
    (gx,), handle = pipec.autograd.backward_input([y2], [pipec.tensor(R, dtype=dtype)],
                                                  [x_split])
    np.testing.assert_allclose(to_np(gx), to_np(x_full.grad), rtol=tol, atol=tol)
    assert x_split.grad is None, "backward_input returns input grads, it does not accumulate"
    assert all(p.grad is None for p in p_split), "weights must wait for backward_weight"
    assert len(handle) > 0
    handle.backward_weight()
    for pf, ps in zip(p_full, p_split):
        assert ps.grad is not None
        np.testing.assert_allclose(to_np(ps.grad), to_np(pf.grad), rtol=tol, atol=tol)
    with pytest.raises(RuntimeError):
        handle.backward_weight()


def test_split_backward_matches_numpy_and_accumulates():
    g = np.random.default_rng()
    x0, R = g.standard_normal((6, 5)), g.standard_normal((6, 3))
    vals, p = _mlp_params(pipec.float64)
    W1, b1, W2, b2 = vals
    z = x0 @ W1.T + b1
    h = np.maximum(z, 0)
    dh = (R @ W2) * (z > 0)
    expected = {"gx": dh @ W1, "W1": dh.T @ x0, "b1": dh.sum(0), "W2": R.T @ h, "b2": R.sum(0)}

    for step in (1, 2):
        x = leaf(x0)
        y = _mlp(x, p)
        (gx,), handle = pipec.autograd.backward_input(y, pipec.tensor(R), x)
        assert_close(gx, expected["gx"])
        handle.backward_weight()
        for name, t in zip(("W1", "b1", "W2", "b2"), p):
            assert_close(t.grad, step * expected[name], msg=f"{name} after {step} step(s)")


def test_split_backward_weight_grads_can_run_later_after_other_work():
    """Phase W after unrelated forward/backward work still produces the right gradients."""
    g = np.random.default_rng()
    x0, R = g.standard_normal((3, 5)), g.standard_normal((3, 3))
    vals, p = _mlp_params(pipec.float64, seed=4)
    _, p_ref = _mlp_params(pipec.float64, seed=4)
    x = leaf(x0)
    (gx,), handle = pipec.autograd.backward_input(_mlp(x, p), pipec.tensor(R), x)
    other = leaf(_r(4))
    (other * other).sum().backward()
    handle.backward_weight()
    _mlp(leaf(x0), p_ref).backward(pipec.tensor(R))
    for a, b in zip(p, p_ref):
        assert_close(a.grad, to_np(b.grad))

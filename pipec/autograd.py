"""pipec.autograd: grad mode, backward, grad, split (zero-bubble) backward and custom
Functions. The engine is C (csrc/autograd/); this module only adapts arguments."""

import functools

from . import _C

__all__ = ["no_grad", "enable_grad", "set_grad_enabled", "is_grad_enabled", "backward", "grad",
           "backward_input", "WeightGradHandle", "Function", "FunctionCtx"]

Tensor = _C.Tensor
is_grad_enabled = _C.is_grad_enabled


class _GradMode:
    """Base of the grad-mode context managers; also usable as decorators."""

    _mode = True

    def __enter__(self):
        self._prev = _C._set_grad_enabled(self._mode)
        return self

    def __exit__(self, *exc):
        _C._set_grad_enabled(self._prev)
        return False

    def __call__(self, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with type(self)():
                return fn(*args, **kwargs)
        return wrapper


class no_grad(_GradMode):
    """Context manager / decorator: operations inside record no autograd history."""
    _mode = False


class enable_grad(_GradMode):
    """Context manager / decorator: turn autograd recording back on."""
    _mode = True


class set_grad_enabled(_GradMode):
    """``set_grad_enabled(mode)``: sets grad mode now; as a context manager restores it."""

    def __init__(self, mode):
        self._prev = _C._set_grad_enabled(bool(mode))
        self._mode = bool(mode)

    def __enter__(self):
        return self


def _as_tuple(x, what):
    if x is None:
        return None
    if isinstance(x, Tensor):
        return (x,)
    if isinstance(x, (list, tuple)):
        return tuple(x)
    raise TypeError(f"{what} must be a Tensor or a sequence of Tensors, got {type(x).__name__}")


def backward(tensors, grad_tensors=None, retain_graph=None, create_graph=False, inputs=None):
    """Accumulate gradients of ``tensors`` into the ``.grad`` of the graph's leaves.

    ``grad_tensors`` may be omitted for single-element outputs. The graph's saved tensors are
    freed unless ``retain_graph``. ``create_graph`` (higher-order gradients) and ``inputs`` are
    not supported."""
    if create_graph:
        raise NotImplementedError("pipec does not support create_graph=True")
    if inputs is not None:
        raise NotImplementedError("backward(inputs=...) is not supported; use autograd.grad")
    tensors = _as_tuple(tensors, "tensors")
    grads = _as_tuple(grad_tensors, "grad_tensors")
    _C._backward(tensors, grads, bool(retain_graph))


def grad(outputs, inputs, grad_outputs=None, retain_graph=None, create_graph=False,
         allow_unused=False):
    """Gradients of ``outputs`` with respect to ``inputs`` (a tuple), without touching .grad."""
    if create_graph:
        raise NotImplementedError("pipec does not support create_graph=True")
    outputs = _as_tuple(outputs, "outputs")
    inputs = _as_tuple(inputs, "inputs")
    grads = _as_tuple(grad_outputs, "grad_outputs")
    return _C._grad(outputs, inputs, grads, bool(retain_graph), bool(allow_unused))


class WeightGradHandle:
    """The weight-gradient work queued by :func:`backward_input`. ``backward_weight()`` runs
    it once, accumulating into the weights' ``.grad``."""

    __slots__ = ("_cap", "_done")

    def __init__(self, cap):
        self._cap = cap
        self._done = False

    def __len__(self):
        return 0 if self._cap is None else _C._weight_work_size(self._cap)

    def backward_weight(self, retain_graph=False):
        if self._done:
            raise RuntimeError("backward_weight() was already run for this handle")
        if self._cap is not None:  # None: nothing was queued
            _C._weight_work_run(self._cap, bool(retain_graph))
        self._done = True


def backward_input(outputs, grad_outputs, inputs):
    """Split backward, phase I (zero-bubble schedules): return the gradients of ``outputs``
    with respect to ``inputs`` now, and a :class:`WeightGradHandle` whose
    ``backward_weight()`` later accumulates every other leaf's (the weights') gradient.
    I followed by W gives exactly the gradients of one full backward."""
    outputs = _as_tuple(outputs, "outputs")
    inputs = _as_tuple(inputs, "inputs")
    grads = _as_tuple(grad_outputs, "grad_outputs")
    input_grads, cap = _C._backward_input(outputs, grads, inputs)
    return input_grads, WeightGradHandle(cap)


class FunctionCtx:
    """The ``ctx`` of a custom Function: save tensors, store any attribute."""

    def save_for_backward(self, *tensors):
        for t in tensors:
            if t is not None and not isinstance(t, Tensor):
                raise TypeError("save_for_backward can only save tensors (or None), got "
                                f"{type(t).__name__}")
        self._saved = tensors

    @property
    def saved_tensors(self):
        if not hasattr(self, "_saved"):
            return ()
        if self._saved is None:
            raise RuntimeError("Trying to backward through the graph a second time (saved "
                               "tensors were freed)")
        return self._saved

    def mark_non_differentiable(self, *tensors):
        self._non_diff = tensors

    def set_materialize_grads(self, value):
        self._materialize = bool(value)


class Function:
    """Base class for custom differentiable operations, as torch.autograd.Function::

        class MyOp(Function):
            @staticmethod
            def forward(ctx, x, w): ...
            @staticmethod
            def backward(ctx, grad_out): ...   # one gradient (or None) per forward argument
        y = MyOp.apply(x, w)
    """

    def __init__(self, *args, **kwargs):
        raise RuntimeError("Function subclasses are used through .apply(...), not instantiated")

    @staticmethod
    def forward(ctx, *args):
        raise NotImplementedError("Function subclasses must implement forward")

    @staticmethod
    def backward(ctx, *grad_outputs):
        raise NotImplementedError("Function subclasses must implement backward")

    @classmethod
    def apply(cls, *args, **kwargs):
        if kwargs:
            raise TypeError(f"{cls.__name__}.apply() takes positional arguments only")
        ctx = FunctionCtx()
        ctx.needs_input_grad = tuple(isinstance(a, Tensor) and a.requires_grad and
                                     is_grad_enabled() for a in args)
        paused = _C._trace_pause(True)  # a traced forward records the Function, not its body
        try:
            with no_grad():
                outputs = cls.forward(ctx, *args)
        finally:
            _C._trace_pause(paused)
        if not isinstance(outputs, (Tensor, tuple)):
            raise TypeError(f"{cls.__name__}.forward must return a Tensor or a tuple, got "
                            f"{type(outputs).__name__}")
        return _C._function_record(ctx, cls.backward, cls.__name__ + "Backward", args, outputs,
                                   cls)

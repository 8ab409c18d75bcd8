"""Tensor methods written in Python (the hot ones are in C: csrc/py/methods.c), factories
and the functional forms that are not plain C entry points."""

import builtins
import copy as _copy
import math as _math

import numpy as _np

from . import _C
from ._types import (dtype, device, float32, float64, bfloat16, int64, all_dtypes,
                     _from_numpy_dtype)
from . import _types

Tensor = _C.Tensor

__all__ = ["Tensor", "tensor", "from_numpy", "as_tensor", "empty", "zeros", "ones", "full",
           "arange", "rand", "randn", "empty_like", "zeros_like", "ones_like", "full_like",
           "rand_like", "randn_like", "chunk", "split", "tensor_split", "manual_seed",
           "initial_seed", "is_tensor", "numel", "from_dlpack"]


# ---- creation ----

def _default_dtype_for(arr):
    if arr.dtype == _np.bool_:
        return _types.bool
    if _np.issubdtype(arr.dtype, _np.integer):
        return int64
    if _np.issubdtype(arr.dtype, _np.floating):
        # Python floats and nested lists become float32 (torch's default dtype); explicit
        # NumPy float arrays keep their precision, as torch.tensor(ndarray) does.
        return None
    raise TypeError(f"tensor(): can't convert data of type {arr.dtype} to a tensor")


def tensor(data, dtype=None, device=None, requires_grad=False):
    """A new tensor holding a copy of ``data`` (nested lists, scalars, NumPy arrays, or a
    Tensor). Python floats give float32, ints int64, bools bool, like torch."""
    if isinstance(data, Tensor):
        t = data.detach().clone()
        if dtype is not None or device is not None:
            t = t.to(dtype=dtype or t.dtype, device=device or t.device)
    else:
        from_np = isinstance(data, _np.ndarray) or isinstance(data, _np.generic)
        try:
            arr = _np.array(data)
        except (ValueError, TypeError) as e:
            raise TypeError(f"tensor(): could not convert data to an array: {e}") from None
        if arr.dtype == object:
            raise TypeError(f"tensor(): could not infer a dtype for {type(data).__name__} data "
                            "(ragged nested sequences or non-numeric items?)")
        inferred = _default_dtype_for(arr)
        if inferred is None:
            inferred = _from_numpy_dtype(arr.dtype) if from_np and arr.dtype in (
                _np.float16, _np.float32, _np.float64) else float32
        target = dtype if dtype is not None else inferred
        if not isinstance(target, _types.dtype):
            raise TypeError(f"tensor(): dtype must be a pipec dtype, got {target!r}")
        np_target = target._np if target._np is not None else _np.float32
        arr = _np.array(arr, dtype=np_target, order="C", copy=True)  # keeps 0-d shapes
        t = _C.from_numpy(arr)
        if target is bfloat16:
            t = t.to(bfloat16)
        if device is not None:
            t = t.to(device)
    if requires_grad:
        t.requires_grad_(True)
    return t


def as_tensor(data, dtype=None, device=None):
    """Like tensor(), but shares memory with a Tensor or a suitable NumPy array."""
    if isinstance(data, Tensor):
        return data.to(dtype=dtype or data.dtype, device=device or data.device)
    if isinstance(data, _np.ndarray) and dtype is None and device is None:
        try:
            return _C.from_numpy(data)
        except (TypeError, ValueError):
            pass
    return tensor(data, dtype=dtype, device=device)


def from_dlpack(obj):
    """A tensor sharing memory with ``obj`` (anything with ``__dlpack__``, e.g. a torch or
    CuPy tensor, or a DLPack capsule)."""
    return _C._from_dlpack(obj)


def from_numpy(arr):
    """A tensor sharing memory with the NumPy array ``arr`` (no copy)."""
    return _C.from_numpy(arr)


def _size(size):
    if len(size) == 1 and isinstance(size[0], (tuple, list)):
        return tuple(size[0])
    return tuple(size)


def _finish(t, requires_grad):
    if requires_grad:
        t.requires_grad_(True)
    return t


def empty(*size, dtype=None, device=None, requires_grad=False):
    """An uninitialised tensor of the given shape."""
    return _finish(_C._empty(_size(size), dtype, device), requires_grad)


def zeros(*size, dtype=None, device=None, requires_grad=False):
    return _finish(_C._full(_size(size), 0.0, dtype, device), requires_grad)


def ones(*size, dtype=None, device=None, requires_grad=False):
    return _finish(_C._full(_size(size), 1.0, dtype, device), requires_grad)


def full(size, fill_value, dtype=None, device=None, requires_grad=False):
    """A tensor of the given shape filled with ``fill_value``."""
    if not isinstance(fill_value, (int, builtins.float)) and not (
            hasattr(fill_value, "__float__") and not isinstance(fill_value, (str, bytes))):
        raise TypeError(f"full(): fill_value must be a number, got {type(fill_value).__name__}")
    if dtype is None:
        dtype = (_types.bool if isinstance(fill_value, builtins.bool) else
                 int64 if isinstance(fill_value, int) else float32)
    return _finish(_C._full(tuple(size) if not isinstance(size, int) else (size,),
                            float(fill_value), dtype, device), requires_grad)


def arange(start, end=None, step=1, dtype=None, device=None, requires_grad=False):
    """Values from start (default 0) up to end, exclusive, by step."""
    if end is None:
        start, end = 0, start
    for name, v in (("start", start), ("end", end), ("step", step)):
        if isinstance(v, builtins.bool) or not isinstance(v, (int, builtins.float)):
            raise TypeError(f"arange(): {name} must be a number, got {type(v).__name__}")
    if step == 0:
        raise ValueError("arange: step must be nonzero")
    if dtype is None:
        dtype = int64 if all(isinstance(v, int) for v in (start, end, step)) else float32
    return _finish(_C._arange(float(start), float(end), float(step), dtype, device),
                   requires_grad)


def rand(*size, dtype=None, device=None, requires_grad=False):
    """Uniform [0, 1) samples from the seeded Philox generator."""
    return _finish(_C._rand(_size(size), dtype, device), requires_grad)


def randn(*size, dtype=None, device=None, requires_grad=False):
    """Standard normal samples from the seeded Philox generator."""
    return _finish(_C._randn(_size(size), dtype, device), requires_grad)


def _like(fn, t, dtype, device, requires_grad, *extra):
    if not isinstance(t, Tensor):
        raise TypeError(f"expected a pipec.Tensor, got {type(t).__name__}")
    return fn(t.shape, *extra, dtype=dtype or t.dtype, device=device or t.device,
              requires_grad=requires_grad)


def empty_like(t, dtype=None, device=None, requires_grad=False):
    return _like(empty, t, dtype, device, requires_grad)


def zeros_like(t, dtype=None, device=None, requires_grad=False):
    return _like(zeros, t, dtype, device, requires_grad)


def ones_like(t, dtype=None, device=None, requires_grad=False):
    return _like(ones, t, dtype, device, requires_grad)


def full_like(t, fill_value, dtype=None, device=None, requires_grad=False):
    if not isinstance(t, Tensor):
        raise TypeError(f"expected a pipec.Tensor, got {type(t).__name__}")
    return full(t.shape, fill_value, dtype=dtype or t.dtype, device=device or t.device,
                requires_grad=requires_grad)


def rand_like(t, dtype=None, device=None, requires_grad=False):
    return _like(rand, t, dtype, device, requires_grad)


def randn_like(t, dtype=None, device=None, requires_grad=False):
    return _like(randn, t, dtype, device, requires_grad)


def manual_seed(seed):
    """Seed the counter-based (Philox) generator: same seed, same numbers on every device."""
    if not isinstance(seed, int):
        raise TypeError(f"manual_seed expects an int, got {type(seed).__name__}")
    _C.manual_seed(seed & 0xFFFFFFFFFFFFFFFF)


def initial_seed():
    return _C.initial_seed()


def is_tensor(obj):
    return isinstance(obj, Tensor)


def numel(t):
    return t.numel()


# ---- splitting ----

def _check_dim(t, dim, op):
    if not isinstance(dim, int):
        raise TypeError(f"{op}: dim must be an int, got {type(dim).__name__}")
    nd = max(t.ndim, 1)
    if not -nd <= dim < nd:
        raise IndexError(f"{op}: Dimension out of range (expected to be in range of "
                         f"[{-nd}, {nd - 1}], but got {dim})")
    if t.ndim == 0:
        raise RuntimeError(f"{op} expects at least a 1-dimensional tensor")
    return dim % t.ndim


def split(t, split_size_or_sections, dim=0):
    """Split into pieces of ``split_size`` (last may be smaller) or of the given sizes."""
    if not isinstance(t, Tensor):
        raise TypeError(f"split: expected a Tensor, got {type(t).__name__}")
    d = _check_dim(t, dim, "split")
    n = t.shape[d]
    if isinstance(split_size_or_sections, int):
        size = split_size_or_sections
        if size <= 0 and not (size == 0 and n == 0):
            raise ValueError(f"split: split_size must be positive, got {size}")
        if n == 0:
            return (t,)
        return tuple(t._slice(d, s, min(s + size, n)) for s in range(0, n, size))
    if not isinstance(split_size_or_sections, (list, tuple)):
        raise TypeError("split: split_size_or_sections must be an int or a sequence of ints, "
                        f"got {type(split_size_or_sections).__name__}")
    sizes = list(split_size_or_sections)
    if any(not isinstance(s, int) or s < 0 for s in sizes) or sum(sizes) != n:
        raise ValueError(f"split: split_sizes {sizes} must be non-negative ints summing to "
                         f"the size of dim {dim} ({n})")
    out, s = [], 0
    for k in sizes:
        out.append(t._slice(d, s, s + k))
        s += k
    return tuple(out)


def chunk(t, chunks, dim=0):
    """Split into ``chunks`` pieces of size ceil(n / chunks) (the last may be smaller; fewer
    pieces when n is small), as torch.chunk."""
    if not isinstance(t, Tensor):
        raise TypeError(f"chunk: expected a Tensor, got {type(t).__name__}")
    if not isinstance(chunks, int) or chunks <= 0:
        raise ValueError(f"chunk: chunks must be a positive int, got {chunks!r}")
    d = _check_dim(t, dim, "chunk")
    n = t.shape[d]
    if n == 0:
        return (t,)
    return split(t, -(-n // chunks), d)


def tensor_split(t, indices_or_sections, dim=0):
    """Split into ``sections`` nearly equal pieces (the first n % sections one larger) or at
    the given indices, as torch.tensor_split."""
    if not isinstance(t, Tensor):
        raise TypeError(f"tensor_split: expected a Tensor, got {type(t).__name__}")
    d = _check_dim(t, dim, "tensor_split")
    n = t.shape[d]
    if isinstance(indices_or_sections, int):
        k = indices_or_sections
        if k <= 0:
            raise ValueError(f"tensor_split: number of sections must be larger than 0, got {k}")
        base, extra = divmod(n, k)
        out, s = [], 0
        for i in range(k):
            sz = base + (1 if i < extra else 0)
            out.append(t._slice(d, s, s + sz))
            s += sz
        return tuple(out)
    idx = list(indices_or_sections)
    out, prev = [], 0
    for i in idx + [n]:
        if not isinstance(i, int):
            raise TypeError("tensor_split: indices must be ints")
        i = max(min(i, n), 0) if i >= 0 else max(n + i, 0)
        out.append(t._slice(d, prev, max(i, prev)))
        prev = max(i, prev)
    return tuple(out)


# ---- Python-level Tensor methods ----

def _repr(self):
    arr = self.detach().cpu()
    if arr.dtype is bfloat16:
        arr = arr.float()
    a = arr.numpy()
    if a.dtype == _np.bool_:
        body = _np.array2string(a, separator=", ", prefix="tensor(")
    elif a.dtype.kind == "f":
        body = _np.array2string(a, separator=", ", prefix="tensor(", precision=4,
                                suppress_small=True, floatmode="maxprec_equal")
    else:
        body = _np.array2string(a, separator=", ", prefix="tensor(")
    extras = []
    if self.ndim and 0 in self.shape:
        extras.append(f"size={self.shape}")
    if self.device.type != "cpu":
        extras.append(f"device='{self.device}'")
    if self.dtype not in (float32, int64, _types.bool):
        extras.append(f"dtype={self.dtype!r}")
    if self.grad_fn is not None:
        extras.append(f"grad_fn=<{self.grad_fn.name()}>")
    elif self.requires_grad:
        extras.append("requires_grad=True")
    return "tensor(" + body + "".join(", " + e for e in extras) + ")"


def _tolist(self):
    return self.detach().cpu().numpy().tolist()


def _array(self, dtype=None, copy=None):
    a = self.detach().numpy()
    if dtype is not None:
        a = a.astype(dtype, copy=False)
    return a


def _backward(self, gradient=None, retain_graph=None, create_graph=False, inputs=None):
    """Accumulate d(self)/d(leaf) into every leaf's .grad (see pipec.autograd.backward)."""
    from . import autograd
    autograd.backward(self, gradient, retain_graph=retain_graph, create_graph=create_graph,
                      inputs=inputs)


def _deepcopy(self, memo):
    if id(self) in memo:
        return memo[id(self)]
    from .autograd import no_grad
    with no_grad():
        data = self.clone()
    if type(self) is Tensor:
        new = data
        if self.requires_grad:
            new.requires_grad_(True)
    else:
        new = Tensor._make_subclass(type(self), data, self.requires_grad)
    memo[id(self)] = new
    if self.grad is not None:
        new.grad = _deepcopy(self.grad, memo)
    for k, v in self.__dict__.items():
        setattr(new, k, _copy.deepcopy(v, memo))
    return new


def _rebuild(cls, arr, dtype_name, dev, requires_grad):
    t = tensor(arr, dtype=_types._dtype_by_name(dtype_name)).to(dev)
    if cls is not Tensor:
        return Tensor._make_subclass(cls, t, requires_grad)
    if requires_grad:
        t.requires_grad_(True)
    return t


def _reduce_ex(self, proto):
    arr = self.detach().cpu()
    if arr.dtype is bfloat16:
        arr = arr.float()
    return (_rebuild, (type(self), arr.numpy().copy(), self.dtype._name, str(self.device),
                       self.requires_grad))


def _T(self):
    return self.permute(*reversed(range(self.ndim)))


def _view_as(self, other):
    return self.view(other.shape)


def _expand_as(self, other):
    return self.expand(other.shape)


def _type_as(self, other):
    return self.to(other.dtype)


def _format(self, spec):
    if self.ndim == 0:
        return format(self.item(), spec)
    return object.__format__(self, spec)


def _iter(self):
    """t[0], t[1], ... along dim 0: views, made one at a time, as torch iterates."""
    if self.ndim == 0:
        raise TypeError("iteration over a 0-d tensor")
    return (self[i] for i in range(self.shape[0]))


def _contains(self, element):
    """torch's rule: whether any element of self equals ``element`` (a number, or a tensor
    that broadcasts against self). Without it `x in t` would iterate and compare rows."""
    if not isinstance(element, (Tensor, int, builtins.float)):
        raise RuntimeError("`x in tensor` needs x to be a tensor or a number, got "
                           f"{type(element).__name__}")
    return (self == element).to(int64).sum().item() > 0


def _rpow(self, base):
    raise TypeError("pipec does not support a tensor as the exponent of a number")


def _install():
    methods = {
        "__repr__": _repr, "__str__": _repr, "tolist": _tolist, "__array__": _array,
        "backward": _backward, "__deepcopy__": _deepcopy, "__reduce_ex__": _reduce_ex,
        "chunk": chunk, "split": split, "tensor_split": tensor_split,
        "view_as": _view_as, "expand_as": _expand_as, "type_as": _type_as,
        "__format__": _format, "__rpow__": _rpow, "__iter__": _iter,
        "__contains__": _contains,
        "T": property(_T), "mT": property(lambda self: self.transpose(-2, -1)),
        "is_floating_point": lambda self: self.dtype.is_floating_point,
        "__array_priority__": 1000,
    }
    for name, fn in methods.items():
        setattr(Tensor, name, fn)


_install()
_C._register_types(all_dtypes, device)

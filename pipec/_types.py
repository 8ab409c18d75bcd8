"""dtype and device objects (pipec.float32, pipec.device("cuda:0"))."""

import numpy as _np

__all__ = ["dtype", "device", "float32", "float64", "float16", "bfloat16", "int64", "bool",
           "float", "double", "half", "long", "all_dtypes"]


class dtype:
    """An element type. Instances are singletons: compare with ``is`` or ``==``."""

    __slots__ = ("_code", "_name", "itemsize", "is_floating_point", "_np")

    def __init__(self, code, name, itemsize, is_float, np_type):
        self._code = code
        self._name = name
        self.itemsize = itemsize
        self.is_floating_point = is_float
        self._np = np_type

    def __repr__(self):
        return f"pipec.{self._name}"

    def __reduce__(self):
        return (_dtype_by_name, (self._name,))


float32 = dtype(0, "float32", 4, True, _np.float32)
float64 = dtype(1, "float64", 8, True, _np.float64)
float16 = dtype(2, "float16", 2, True, _np.float16)
bfloat16 = dtype(3, "bfloat16", 2, True, None)
int64 = dtype(4, "int64", 8, False, _np.int64)
bool = dtype(5, "bool", 1, False, _np.bool_)  # noqa: A001 (torch's name)
all_dtypes = (float32, float64, float16, bfloat16, int64, bool)
float = float32  # noqa: A001
double = float64
half = float16
long = int64


def _dtype_by_name(name):
    for d in all_dtypes:
        if d._name == name:
            return d
    raise ValueError(f"unknown dtype {name!r}")


def _from_numpy_dtype(np_dtype):
    np_dtype = _np.dtype(np_dtype)
    for d in all_dtypes:
        if d._np is not None and _np.dtype(d._np) == np_dtype:
            return d
    raise TypeError(f"numpy dtype {np_dtype} has no pipec equivalent "
                    "(supported: float64, float32, float16, int64, bool)")


class device:
    """A device: ``device("cpu")``, ``device("cuda")``, ``device("cuda:1")``,
    ``device("cuda", 1)``."""

    __slots__ = ("type", "index")

    def __init__(self, type, index=None):  # noqa: A002 (torch's name)
        if isinstance(type, device):
            self.type, self.index = type.type, type.index
            return
        if not isinstance(type, str):
            raise TypeError(f"device() expects a string like 'cpu' or 'cuda:0', got {type!r}")
        if ":" in type:
            if index is not None:
                raise ValueError("device(): index given twice")
            type, _, idx = type.partition(":")
            if not idx.isdigit():
                raise ValueError(f"invalid device string {type + ':' + idx!r}")
            index = int(idx)
        if type not in ("cpu", "cuda"):
            raise ValueError(f"unknown device type {type!r} (expected 'cpu' or 'cuda')")
        if type == "cpu" and index not in (None, 0):
            raise ValueError("the cpu device has no index other than 0")
        if index is not None and (not isinstance(index, int) or index < 0):
            raise ValueError(f"device index must be a non-negative int, got {index!r}")
        self.type = type
        self.index = None if type == "cpu" else index

    def __str__(self):
        return self.type if self.index is None else f"{self.type}:{self.index}"

    def __repr__(self):
        if self.index is None:
            return f"device(type='{self.type}')"
        return f"device(type='{self.type}', index={self.index})"

    def __eq__(self, other):
        if isinstance(other, str):
            try:
                other = device(other)
            except (TypeError, ValueError):
                return False
        if not isinstance(other, device):
            return NotImplemented
        return self.type == other.type and self.index == other.index

    def __hash__(self):
        return hash((self.type, self.index))

    def __reduce__(self):
        return (device, (str(self),))

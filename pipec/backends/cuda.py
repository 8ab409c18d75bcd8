"""pipec.backends.cuda — CUDA backend switches (mirrors ``torch.backends.cuda``).

``matmul.allow_tf32``: when True, float32 GEMMs on CUDA may round their inputs to TF32 (10-bit
mantissa) and run on tensor cores, several times faster with about 1e-3 relative error. Off by
default. The value lives in C (process-wide, read by every GEMM); without CUDA it is kept
here so that scripts setting it still run.
"""

from .. import _C

__all__ = ["matmul", "is_built"]

_BUILT = bool(getattr(_C, "_cuda_built", False))


def is_built():
    """True when pipec was compiled with CUDA support."""
    return _BUILT


class _MatmulConfig:
    """``pipec.backends.cuda.matmul``: settings of CUDA matrix products."""

    __slots__ = ("_tf32",)

    def __init__(self):
        self._tf32 = False

    @property
    def allow_tf32(self):
        """float32 GEMMs may use TF32 tensor cores (default False)."""
        if _BUILT:
            return bool(_C._cuda_get_allow_tf32())
        return self._tf32

    @allow_tf32.setter
    def allow_tf32(self, value):
        if not isinstance(value, bool):
            raise TypeError(f"allow_tf32 must be a bool, got {type(value).__name__}")
        if _BUILT:
            _C._cuda_set_allow_tf32(value)
        self._tf32 = value

    def __setattr__(self, name, value):
        if name not in ("allow_tf32", "_tf32"):
            raise AttributeError(f"Unknown attribute {name}")
        object.__setattr__(self, name, value)

    def __repr__(self):
        return f"matmul(allow_tf32={self.allow_tf32})"


matmul = _MatmulConfig()

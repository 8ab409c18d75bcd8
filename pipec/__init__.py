"""pipec: pipeline-parallel training with the engine in C.

``import pipec`` gives a tensor library with reverse-mode autograd (C kernels on CPU and
CUDA), ``pipec.nn`` modules, ``pipec.optim`` and ``pipec.pipelining`` (torch-style
pipelining: pipe_split, SplitPoint, schedules)."""

from . import _C
from ._types import (dtype, device, float32, float64, float16, bfloat16, int64, bool,
                     float, double, half, long)
from ._tensor import (Tensor, tensor, from_numpy, as_tensor, empty, zeros, ones, full, arange,
                      rand, randn, empty_like, zeros_like, ones_like, full_like, rand_like,
                      randn_like, chunk, split, tensor_split, manual_seed, initial_seed,
                      is_tensor, numel, from_dlpack)
from ._C import (PipelineError, mm, matmul, addmm, relu, gelu, tanh, sigmoid, exp, log, neg,
                 abs, sqrt, pow, add, sub, mul, div, maximum, eq, ne, lt, le, gt, ge, sum,
                 mean, max, clone, detach, reshape, flatten, transpose, t, permute, unsqueeze,
                 squeeze, cat, stack, softmax, log_softmax, is_grad_enabled)
from . import autograd
from .autograd import no_grad, enable_grad, set_grad_enabled

__version__ = "0.1.0"


def _load_optional():
    import importlib
    for name in ("cuda", "backends", "nn", "optim", "pipelining", "viz", "distributed"):
        try:
            globals()[name] = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:  # a part not built yet in this checkout
            if e.name != f"{__name__}.{name}":
                raise


_load_optional()
try:
    from .pipelining import pipe_split, SplitPoint  # noqa: F401
except ImportError:
    pass

"""pipec.backends — switches for the compute backends (mirrors ``torch.backends``).

``pipec.backends.cuda.matmul.allow_tf32`` lets float32 matrix products use TF32 tensor cores
(off by default, as in torch).
"""

from . import cuda

__all__ = ["cuda"]

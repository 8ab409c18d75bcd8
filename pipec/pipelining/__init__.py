"""pipec.pipelining: torch.distributed.pipelining's API on pipec.

``pipe_split``/``SplitPoint`` and ``pipeline()`` trace a model into C Programs cut into
stages (``Pipe``), at boundaries the model marks or a split policy chooses
(``split_into_equal_size``...); ``PipelineStage`` and the seven schedule classes run them on the C runtime;
``LocalPipeline`` drives every rank of a pipeline from one process. ``schedules`` holds the
C schedule generators (``schedule_ops``), the action IR, CSV, validation and simulation;
``microbatch`` the input splitting. A schedule given only some of a pipeline's stages runs
them as one rank of a multi-process job (``pipec.distributed``, launched by ``pipec.run``):
activations and gradients travel over the process group's TCP or NCCL communicator."""

from ._split import pipe_split, SplitPoint  # noqa: F401
from ._IR import pipeline, Pipe, PipeInfo, annotate_split_points  # noqa: F401
from ._policy import (TracedGraph, GraphInstruction, split_into_equal_size,  # noqa: F401
                      split_on_size_threshold, split_into_equal_flops)

try:
    from .schedules import *  # noqa: F401,F403
    from .schedules import __all__ as _sched_all
except ImportError as e:  # the schedule layer not present in this checkout
    if "schedules" not in str(e):
        raise
    _sched_all = []

from .stage import PipelineStage, build_stage  # noqa: F401,E402
from ._runtime import *  # noqa: F401,F403,E402
from ._runtime import __all__ as _rt_all  # noqa: E402
from . import microbatch  # noqa: F401,E402
from ._dist import PipeliningShapeError  # noqa: F401,E402
from ._wgrad import get_weight_grad_batching, set_weight_grad_batching  # noqa: F401,E402

__all__ = (["pipe_split", "SplitPoint", "pipeline", "Pipe", "PipeInfo", "PipelineStage",
            "build_stage", "microbatch", "PipeliningShapeError", "TracedGraph", "GraphInstruction",
            "split_into_equal_size", "split_on_size_threshold", "split_into_equal_flops", "get_weight_grad_batching",
            "set_weight_grad_batching"] + list(_sched_all) + list(_rt_all))

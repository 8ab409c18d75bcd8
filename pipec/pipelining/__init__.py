"""pipec.pipelining: torch.distributed.pipelining's API on pipec.

Available now: ``pipe_split``, ``SplitPoint`` and the schedule generators
(``schedule_ops``, actions, CSV, validation, simulation). Tracing/splitting (``pipeline``,
``Pipe``) and the stage runtime come with later work."""

from ._split import pipe_split, SplitPoint  # noqa: F401
from ._IR import pipeline, Pipe, PipeInfo, annotate_split_points  # noqa: F401

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

__all__ = (["pipe_split", "SplitPoint", "pipeline", "Pipe", "PipeInfo", "PipelineStage",
            "build_stage", "microbatch"] + list(_sched_all) + list(_rt_all))

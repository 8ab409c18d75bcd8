"""pipe_split() and SplitPoint: how a model marks where pipeline stages begin.

pipe_split() does nothing when called eagerly. While a tracer runs a model's forward, it
sets the module-level hook `_pipe_split_hook` (a zero-argument callable) and pipe_split()
calls it, so the tracer records a stage boundary at that point. The hook is process-wide;
tracers set it for the duration of one trace and restore the previous value afterwards.

SplitPoint says whether a split_spec entry puts the boundary before (BEGINNING) or after
(END) the named submodule's forward.

Exports: pipe_split, SplitPoint.
"""
from enum import Enum

__all__ = ["pipe_split", "SplitPoint"]

# Set by the tracer while it records a forward; None otherwise.
_pipe_split_hook = None


def pipe_split():
    """Mark a pipeline stage boundary. A no-op outside tracing; returns None."""
    hook = _pipe_split_hook
    if hook is not None:
        hook()


class SplitPoint(Enum):
    """Where split_spec puts a stage boundary relative to a submodule's forward."""
    BEGINNING = 1
    END = 2

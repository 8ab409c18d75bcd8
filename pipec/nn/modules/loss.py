"""Loss layers: MSELoss, CrossEntropyLoss. Called as loss_fn(input, target).

Exports: MSELoss, CrossEntropyLoss.
"""
from .. import functional as F
from .module import Module

__all__ = ["MSELoss", "CrossEntropyLoss"]


def _legacy_reduction(size_average, reduce, reduction):
    if size_average is None and reduce is None:
        return reduction
    size_average = True if size_average is None else size_average
    reduce = True if reduce is None else reduce
    return ("mean" if size_average else "sum") if reduce else "none"


class _Loss(Module):
    def __init__(self, size_average=None, reduce=None, reduction="mean"):
        super().__init__()
        reduction = _legacy_reduction(size_average, reduce, reduction)
        if reduction not in ("none", "mean", "sum"):
            raise ValueError(f"{reduction!r} is not a valid value for reduction "
                             "(expected 'none', 'mean' or 'sum')")
        self.reduction = reduction


class MSELoss(_Loss):
    """Mean (or sum, or elementwise) squared error between input and target."""

    def forward(self, input, target):
        return F.mse_loss(input, target, reduction=self.reduction)


class CrossEntropyLoss(_Loss):
    """Cross entropy of logits against class indices or class probabilities."""

    def __init__(self, weight=None, size_average=None, ignore_index=-100, reduce=None,
                 reduction="mean", label_smoothing=0.0):
        super().__init__(size_average, reduce, reduction)
        if weight is not None:
            raise NotImplementedError("CrossEntropyLoss: per-class weight is not supported")
        self.register_buffer("weight", None)
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing

    def forward(self, input, target):
        return F.cross_entropy(input, target, ignore_index=self.ignore_index,
                               reduction=self.reduction, label_smoothing=self.label_smoothing)

"""Linear and Identity layers.

Linear keeps weight (out_features, in_features) and bias (out_features,), initialised as
torch does: weight by kaiming_uniform_ with a = sqrt(5) (that is U(-1/sqrt(fan_in),
1/sqrt(fan_in))), bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

Exports: Linear, Identity.
"""
import math

import pipec as _pc

from .. import functional as F
from .. import init
from ..parameter import Parameter
from .module import Module

__all__ = ["Linear", "Identity"]


def _factory_kwargs(device, dtype):
    kw = {}
    if device is not None:
        kw["device"] = device
    if dtype is not None:
        kw["dtype"] = dtype
    return kw


class Identity(Module):
    """Returns its input; accepts and ignores any constructor arguments."""

    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, input):
        return input


class Linear(Module):
    """y = x @ weight.T + bias, for x of shape (..., in_features)."""

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None):
        super().__init__()
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"Linear: {name} must be a non-negative int, got {v!r}")
        self.in_features = in_features
        self.out_features = out_features
        kw = _factory_kwargs(device, dtype)
        self.weight = Parameter(_pc.empty(out_features, in_features, **kw))
        if bias:
            self.bias = Parameter(_pc.empty(out_features, **kw))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self):
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.in_features
            bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
            init.uniform_(self.bias, -bound, bound)

    def forward(self, input):
        shape = input.shape
        if not shape or shape[-1] != self.in_features:
            raise ValueError(
                f"{self._get_name()}(in_features={self.in_features}, out_features="
                f"{self.out_features}): expected input of shape (..., {self.in_features}), "
                f"got {tuple(shape)}")
        return F.linear(input, self.weight, self.bias)

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")

"""pipec.nn.init: in-place initialisers for parameters (torch.nn.init's names and rules).

Every function fills its tensor in place without recording autograd history (so it works
on parameters that require grad) and returns the tensor. Random fills draw from pipec's
global generator (pipec.manual_seed).

Exports: calculate_gain, uniform_, normal_, zeros_, ones_, constant_, eye_,
kaiming_uniform_, kaiming_normal_, xavier_uniform_, xavier_normal_.
"""
import math

import pipec as _pc

__all__ = ["calculate_gain", "uniform_", "normal_", "zeros_", "ones_", "constant_", "eye_",
           "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_", "xavier_normal_"]


def _require_tensor(fn, tensor):
    if not isinstance(tensor, _pc.Tensor):
        raise TypeError(f"nn.init.{fn}: expected a pipec.Tensor, got {type(tensor).__name__}")


def calculate_gain(nonlinearity, param=None):
    """The recommended gain for an activation: 1 for linear/conv/sigmoid, 5/3 for tanh,
    sqrt(2) for relu, sqrt(2 / (1 + slope^2)) for leaky_relu (slope 0.01 by default),
    3/4 for selu."""
    linear_like = ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d",
                   "conv_transpose2d", "conv_transpose3d", "sigmoid")
    if nonlinearity in linear_like:
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        if param is None:
            slope = 0.01
        elif isinstance(param, (int, float)) and not isinstance(param, bool):
            slope = float(param)
        else:
            raise ValueError(f"negative_slope {param} is not a valid number")
        return math.sqrt(2.0 / (1 + slope ** 2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"Unsupported nonlinearity {nonlinearity}")


def _calculate_fan_in_and_fan_out(tensor):
    shape = tuple(tensor.shape)
    if len(shape) < 2:
        raise ValueError("Fan in and fan out can not be computed for tensor with fewer than "
                         f"2 dimensions (got shape {shape})")
    receptive = 1
    for s in shape[2:]:
        receptive *= int(s)
    return int(shape[1]) * receptive, int(shape[0]) * receptive


def _calculate_correct_fan(tensor, mode):
    mode = mode.lower()
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"Mode {mode} not supported, please use one of fan_in, fan_out")
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    return fan_in if mode == "fan_in" else fan_out


def uniform_(tensor, a=0.0, b=1.0, generator=None):
    """Fill with values drawn from U(a, b)."""
    _require_tensor("uniform_", tensor)
    if generator is not None:
        raise NotImplementedError("nn.init.uniform_: generator= is not supported; "
                                  "seed with pipec.manual_seed")
    with _pc.no_grad():
        tensor.uniform_(float(a), float(b))
    return tensor


def normal_(tensor, mean=0.0, std=1.0, generator=None):
    """Fill with values drawn from N(mean, std^2)."""
    _require_tensor("normal_", tensor)
    if generator is not None:
        raise NotImplementedError("nn.init.normal_: generator= is not supported; "
                                  "seed with pipec.manual_seed")
    with _pc.no_grad():
        tensor.normal_(float(mean), float(std))
    return tensor


def constant_(tensor, val):
    _require_tensor("constant_", tensor)
    with _pc.no_grad():
        tensor.fill_(float(val))
    return tensor


def zeros_(tensor):
    _require_tensor("zeros_", tensor)
    with _pc.no_grad():
        tensor.zero_()
    return tensor


def ones_(tensor):
    return constant_(tensor, 1.0)


def eye_(tensor):
    """Fill a 2-D tensor with the identity (ones on the main diagonal)."""
    _require_tensor("eye_", tensor)
    if len(tensor.shape) != 2:
        raise ValueError(f"Only tensors with 2 dimensions are supported, got shape "
                         f"{tuple(tensor.shape)}")
    import numpy as np
    with _pc.no_grad():
        tensor.copy_(_pc.tensor(np.eye(*tensor.shape, dtype=np.float64)))
    return tensor


def kaiming_uniform_(tensor, a=0, mode="fan_in", nonlinearity="leaky_relu", generator=None):
    """He initialisation: U(-bound, bound) with bound = gain * sqrt(3 / fan), gain from
    calculate_gain(nonlinearity, a)."""
    _require_tensor("kaiming_uniform_", tensor)
    if 0 in tuple(tensor.shape):
        return tensor
    fan = _calculate_correct_fan(tensor, mode)
    bound = calculate_gain(nonlinearity, a) * math.sqrt(3.0 / fan)
    return uniform_(tensor, -bound, bound, generator)


def kaiming_normal_(tensor, a=0, mode="fan_in", nonlinearity="leaky_relu", generator=None):
    """He initialisation: N(0, std^2) with std = gain / sqrt(fan)."""
    _require_tensor("kaiming_normal_", tensor)
    if 0 in tuple(tensor.shape):
        return tensor
    fan = _calculate_correct_fan(tensor, mode)
    std = calculate_gain(nonlinearity, a) / math.sqrt(fan)
    return normal_(tensor, 0.0, std, generator)


def xavier_uniform_(tensor, gain=1.0, generator=None):
    """Glorot initialisation: U(-a, a) with a = gain * sqrt(6 / (fan_in + fan_out))."""
    _require_tensor("xavier_uniform_", tensor)
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    a = gain * math.sqrt(6.0 / float(fan_in + fan_out))
    return uniform_(tensor, -a, a, generator)


def xavier_normal_(tensor, gain=1.0, generator=None):
    """Glorot initialisation: N(0, std^2) with std = gain * sqrt(2 / (fan_in + fan_out))."""
    _require_tensor("xavier_normal_", tensor)
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    std = gain * math.sqrt(2.0 / float(fan_in + fan_out))
    return normal_(tensor, 0.0, std, generator)

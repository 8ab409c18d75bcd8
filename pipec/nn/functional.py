"""pipec.nn.functional: stateless layer functions (torch.nn.functional's names and defaults).

Each function validates its Python-level arguments (reduction names, probabilities,
shapes that the C op would only report less clearly) and calls the C op in pipec._C,
which does the math, the autograd recording and the device dispatch.

Exports: linear, relu, gelu, softmax, log_softmax, layer_norm, dropout, embedding,
mse_loss, cross_entropy.
"""
import math
import warnings

import pipec as _pc

__all__ = ["linear", "relu", "gelu", "softmax", "log_softmax", "layer_norm", "dropout",
           "embedding", "mse_loss", "cross_entropy"]

_REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}


def _C():
    return _pc._C


def _reduction_code(reduction, size_average=None, reduce=None):
    """The C reduction code for a reduction name, honouring torch's deprecated
    size_average/reduce pair when either is given."""
    if size_average is not None or reduce is not None:
        size_average = True if size_average is None else size_average
        reduce = True if reduce is None else reduce
        reduction = ("mean" if size_average else "sum") if reduce else "none"
        warnings.warn("size_average and reduce are deprecated, use "
                      f"reduction='{reduction}' instead", DeprecationWarning, stacklevel=3)
    try:
        return _REDUCTIONS[reduction]
    except (KeyError, TypeError):
        raise ValueError(f"{reduction!r} is not a valid value for reduction "
                         "(expected 'none', 'mean' or 'sum')") from None


def _check_tensor(fn, name, t, allow_none=False):
    if t is None and allow_none:
        return
    if not isinstance(t, _pc.Tensor):
        raise TypeError(f"{fn}(): argument '{name}' must be a pipec.Tensor, "
                        f"not {type(t).__name__}")


# ---- linear and activations ----

def linear(input, weight, bias=None):
    """input @ weight.T + bias; input (..., in), weight (out, in), bias (out,) or None."""
    _check_tensor("linear", "input", input)
    _check_tensor("linear", "weight", weight)
    _check_tensor("linear", "bias", bias, allow_none=True)
    return _C().linear(input, weight, bias)


def relu(input, inplace=False):
    _check_tensor("relu", "input", input)
    if inplace:
        input.copy_(_pc.relu(input))
        return input
    return _pc.relu(input)


_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def gelu(input, approximate="none"):
    """x * Phi(x) (approximate='none', the exact erf form) or its tanh approximation
    0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) (approximate='tanh')."""
    _check_tensor("gelu", "input", input)
    if approximate == "none":
        return _pc.gelu(input)
    if approximate == "tanh":
        inner = (input + input * input * input * 0.044715) * _SQRT_2_OVER_PI
        return input * 0.5 * (inner.tanh() + 1.0)
    raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")


def _softmax_dim(fn, ndim, dim):
    if dim is None:
        warnings.warn(f"Implicit dimension choice for {fn} has been deprecated. Change the "
                      "call to include dim=X as an argument.", stacklevel=3)
        return 0 if ndim in (0, 1, 3) else 1
    return dim


def softmax(input, dim=None, dtype=None):
    """exp(x) / sum(exp(x)) along dim (computed stably by the C op)."""
    _check_tensor("softmax", "input", input)
    dim = _softmax_dim("softmax", len(input.shape), dim)
    if dtype is not None:
        input = input.to(dtype)
    return _C().softmax(input, dim)


def log_softmax(input, dim=None, dtype=None):
    """x - log(sum(exp(x))) along dim."""
    _check_tensor("log_softmax", "input", input)
    dim = _softmax_dim("log_softmax", len(input.shape), dim)
    if dtype is not None:
        input = input.to(dtype)
    return _C().log_softmax(input, dim)


# ---- normalisation, dropout, embedding ----

def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    """Normalise over the trailing dims given by normalized_shape; then * weight + bias."""
    _check_tensor("layer_norm", "input", input)
    if isinstance(normalized_shape, int):
        normalized_shape = (normalized_shape,)
    normalized_shape = tuple(int(s) for s in normalized_shape)
    n = len(normalized_shape)
    shape = tuple(input.shape)
    if n == 0 or n > len(shape) or shape[len(shape) - n:] != normalized_shape:
        raise ValueError(
            f"layer_norm: input of shape {shape} does not end with normalized_shape "
            f"{normalized_shape}")
    for name, t in (("weight", weight), ("bias", bias)):
        _check_tensor("layer_norm", name, t, allow_none=True)
        if t is not None and tuple(t.shape) != normalized_shape:
            raise ValueError(f"layer_norm: {name} has shape {tuple(t.shape)}, expected "
                             f"normalized_shape {normalized_shape}")
    return _C().layer_norm(input, n, weight, bias, float(eps))


def dropout(input, p=0.5, training=True, inplace=False):
    """Training: zero each element with probability p and scale the rest by 1/(1-p).
    Not training: input unchanged."""
    _check_tensor("dropout", "input", input)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    out = _C().dropout(input, float(p), bool(training))
    if inplace and out is not input:
        input.copy_(out)
        return input
    return out


def embedding(input, weight, padding_idx=None, max_norm=None, norm_type=2.0,
              scale_grad_by_freq=False, sparse=False):
    """Rows of weight (V, D) picked by the int64 indices in input: (*input.shape, D).
    The row at padding_idx receives no gradient."""
    _check_tensor("embedding", "input", input)
    _check_tensor("embedding", "weight", weight)
    if max_norm is not None or scale_grad_by_freq or sparse:
        raise NotImplementedError(
            "embedding: max_norm, scale_grad_by_freq and sparse are not supported")
    if len(weight.shape) != 2:
        raise ValueError(f"embedding: weight must be 2-D (num_embeddings, embedding_dim), "
                         f"got shape {tuple(weight.shape)}")
    if padding_idx is not None:
        n = int(weight.shape[0])
        if not -n <= padding_idx < n:
            raise ValueError(f"embedding: padding_idx {padding_idx} out of range for "
                             f"{n} embeddings")
        padding_idx %= n
        if weight.requires_grad and _pc.is_grad_enabled():
            # Route the padding row around autograd: the same values, no gradient.
            parts = []
            if padding_idx > 0:
                parts.append(weight[:padding_idx])
            parts.append(weight[padding_idx:padding_idx + 1].detach())
            if padding_idx + 1 < n:
                parts.append(weight[padding_idx + 1:])
            weight = _pc.cat(parts, 0)
    return _C().embedding(weight, input)


# ---- losses ----

def mse_loss(input, target, size_average=None, reduce=None, reduction="mean"):
    """(input - target)^2, averaged ('mean'), summed ('sum') or elementwise ('none')."""
    _check_tensor("mse_loss", "input", input)
    _check_tensor("mse_loss", "target", target)
    code = _reduction_code(reduction, size_average, reduce)
    if tuple(input.shape) != tuple(target.shape):
        warnings.warn(
            f"mse_loss: target size {tuple(target.shape)} differs from input size "
            f"{tuple(input.shape)}; they will be broadcast, which is likely not what you "
            "want. Make sure they have the same size.", stacklevel=2)
    return _C().mse_loss(input, target, code)


def cross_entropy(input, target, weight=None, size_average=None, ignore_index=-100,
                  reduce=None, reduction="mean", label_smoothing=0.0):
    """Cross entropy of logits input (N, C) or (C,) against class indices (int64 target
    (N,) or ()) or class probabilities (float target of input's shape)."""
    _check_tensor("cross_entropy", "input", input)
    _check_tensor("cross_entropy", "target", target)
    code = _reduction_code(reduction, size_average, reduce)
    if weight is not None:
        raise NotImplementedError("cross_entropy: per-class weight is not supported")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be between 0.0 and 1.0, got {label_smoothing}")
    shape = tuple(input.shape)
    if len(shape) not in (1, 2):
        raise ValueError(f"cross_entropy: input must be (C,) or (N, C), got shape {shape}")
    class_dim = len(shape) - 1
    n_classes = shape[class_dim]
    probs_target = tuple(target.shape) == shape and _is_float(target)

    if probs_target:
        logp = log_softmax(input, class_dim)
        if label_smoothing > 0:
            target = target * (1.0 - label_smoothing) + label_smoothing / n_classes
        per_row = -(logp * target).sum(class_dim)
        return _reduce(per_row, code)

    if _is_float(target):
        raise ValueError(
            f"cross_entropy: a float target must have input's shape {shape} (class "
            f"probabilities); got {tuple(target.shape)}. Class indices must be int64.")
    if ignore_index >= 0 and (target.detach().cpu().numpy() == ignore_index).any():
        raise NotImplementedError(
            f"cross_entropy: targets equal to ignore_index ({ignore_index}) are not supported")
    if label_smoothing == 0:
        return _C().cross_entropy(input, target, code)
    # (1 - eps) * NLL + eps * mean over classes of -log p
    nll = _C().cross_entropy(input, target, 0)
    smooth = -log_softmax(input, class_dim).mean(class_dim)
    return _reduce(nll * (1.0 - label_smoothing) + smooth * label_smoothing, code)


def _is_float(t):
    flag = getattr(t, "is_floating_point", None)
    if callable(flag):
        return bool(flag())
    return "float" in str(t.dtype) or "half" in str(t.dtype)


def _reduce(t, code):
    if code == 0:
        return t
    return t.mean() if code == 1 else t.sum()

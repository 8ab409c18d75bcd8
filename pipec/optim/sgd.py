"""SGD with momentum, dampening, Nesterov momentum, weight decay and maximize (torch.optim.SGD
semantics).

For each parameter p with gradient g, per step:
    d = -g if maximize else g
    d = d + weight_decay * p                          (if weight_decay)
    buf = d (first step) or momentum * buf + (1 - dampening) * d     (if momentum)
    d = d + momentum * buf (nesterov) or buf
    p = p - lr * d
The update runs in C (pipec._C._sgd_step, over all of a group's tensors at once); with
foreach=False it runs in Python, one tensor at a time, through in-place tensor ops.

Exports: SGD.
"""
import pipec as _pc

from .optimizer import Optimizer

__all__ = ["SGD"]


class SGD(Optimizer):
    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0,
                 nesterov=False, *, maximize=False, foreach=None, differentiable=False,
                 fused=None):
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        if differentiable:
            raise NotImplementedError("SGD: differentiable=True is not supported")
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening,
                        weight_decay=weight_decay, nesterov=nesterov, maximize=maximize,
                        foreach=foreach, differentiable=False, fused=fused)
        super().__init__(params, defaults)

    def step(self, closure=None):
        """One update of every parameter that has a gradient. Returns closure()'s loss."""
        loss = self._run_closure(closure)
        with _pc.no_grad():
            for group in self.param_groups:
                self._step_group(group)
        return loss

    def _step_group(self, group):
        momentum = float(group["momentum"])
        params, grads, bufs = [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            params.append(p)
            grads.append(p.grad)
            bufs.append(self.state[p].get("momentum_buffer"))
        if not params:
            return
        hyper = (float(group["lr"]), momentum, float(group["dampening"]),
                 float(group["weight_decay"]), bool(group["nesterov"]),
                 bool(group["maximize"]))
        kernel = getattr(_pc._C, "_sgd_step", None)
        if group.get("foreach") is False or kernel is None:
            new_bufs = _sgd_python(params, grads, bufs, *hyper)
        else:
            new_bufs = _sgd_kernel(kernel, params, grads, bufs, *hyper)
        if momentum != 0:
            for p, b in zip(params, new_bufs):
                self.state[p]["momentum_buffer"] = b


def _sgd_kernel(kernel, params, grads, bufs, lr, momentum, dampening, weight_decay,
                nesterov, maximize):
    """Run the C kernel: once for parameters with a momentum buffer and once (first_step)
    for those without. Returns each parameter's buffer (None without momentum)."""
    if momentum == 0:
        kernel(params, grads, None, lr, momentum, dampening, weight_decay, nesterov,
               maximize, False)
        return [None] * len(params)
    out = list(bufs)
    for first in (False, True):
        idx = [i for i, b in enumerate(bufs) if (b is None) == first]
        if not idx:
            continue
        if first:
            for i in idx:
                out[i] = _pc.zeros_like(params[i])
        kernel([params[i] for i in idx], [grads[i] for i in idx], [out[i] for i in idx],
               lr, momentum, dampening, weight_decay, nesterov, maximize, first)
    return out


def _sgd_python(params, grads, bufs, lr, momentum, dampening, weight_decay, nesterov,
                maximize):
    """The same update, one tensor at a time, with tensor ops (runs under no_grad)."""
    out = []
    for p, g, buf in zip(params, grads, bufs):
        d = -g if maximize else g
        if weight_decay != 0:
            d = d + p * weight_decay
        if momentum != 0:
            if buf is None:
                buf = d.clone()
            else:
                buf.mul_(momentum)
                buf.add_(d * (1.0 - dampening))
            d = d + buf * momentum if nesterov else buf
        p.add_(d * (-lr))
        out.append(buf)
    return out

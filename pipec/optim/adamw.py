"""AdamW: Adam with decoupled weight decay (torch.optim.AdamW semantics).

For each parameter p with gradient g, at step t (counted per parameter, from 1):
    p = p * (1 - lr * weight_decay)
    g = -g if maximize
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    v_hat = max(v_hat, v) if amsgrad else v
    p = p - (lr / (1 - beta1^t)) * m / (sqrt(v_hat) / sqrt(1 - beta2^t) + eps)
The update runs in C (pipec._C._adamw_step, one call per group and step count); amsgrad
and foreach=False run in Python through in-place tensor ops. state["step"] is a 0-d float32
tensor as in torch.

Exports: AdamW.
"""
import math

import pipec as _pc

from .optimizer import Optimizer

__all__ = ["AdamW"]


def _step_value(state):
    s = state["step"]
    return int(s.item()) if isinstance(s, _pc.Tensor) else int(s)


class AdamW(Optimizer):
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, *, maximize=False, foreach=None, capturable=False,
                 differentiable=False, fused=None):
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not 0.0 <= betas[0] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
        if not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if differentiable or capturable:
            raise NotImplementedError("AdamW: differentiable and capturable are not supported")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        amsgrad=amsgrad, maximize=maximize, foreach=foreach,
                        capturable=False, differentiable=False, fused=fused)
        super().__init__(params, defaults)

    def step(self, closure=None):
        """One update of every parameter that has a gradient. Returns closure()'s loss."""
        loss = self._run_closure(closure)
        with _pc.no_grad():
            for group in self.param_groups:
                self._step_group(group)
        return loss

    def _step_group(self, group):
        beta1, beta2 = (float(b) for b in group["betas"])
        lr, eps, wd = float(group["lr"]), float(group["eps"]), float(group["weight_decay"])
        maximize, amsgrad = bool(group["maximize"]), bool(group["amsgrad"])
        kernel = getattr(_pc._C, "_adamw_step", None)
        use_kernel = kernel is not None and not amsgrad and group.get("foreach") is not False
        by_step = {}  # step count -> [(p, state)]
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:
                state["step"] = _pc.tensor(0.0)
                state["exp_avg"] = _pc.zeros_like(p)
                state["exp_avg_sq"] = _pc.zeros_like(p)
                if amsgrad:
                    state["max_exp_avg_sq"] = _pc.zeros_like(p)
            step = _step_value(state) + 1
            state["step"] = _pc.tensor(float(step))
            by_step.setdefault(step, []).append((p, state))
        for step, items in by_step.items():
            params = [p for p, _ in items]
            grads = [p.grad for p in params]
            m = [s["exp_avg"] for _, s in items]
            v = [s["exp_avg_sq"] for _, s in items]
            if use_kernel:
                kernel(params, grads, m, v, lr, beta1, beta2, eps, wd, step, maximize)
            else:
                vmax = [s["max_exp_avg_sq"] for _, s in items] if amsgrad else None
                _adamw_python(params, grads, m, v, vmax, lr, beta1, beta2, eps, wd, step,
                              maximize)


def _adamw_python(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, lr, beta1, beta2,
                  eps, weight_decay, step, maximize):
    """The same update, one tensor at a time, with tensor ops (runs under no_grad)."""
    bc1 = 1.0 - beta1 ** step
    bc2_sqrt = math.sqrt(1.0 - beta2 ** step)
    for i, (p, g, m, v) in enumerate(zip(params, grads, exp_avgs, exp_avg_sqs)):
        if maximize:
            g = -g
        if weight_decay != 0:
            p.mul_(1.0 - lr * weight_decay)
        m.mul_(beta1)
        m.add_(g * (1.0 - beta1))
        v.mul_(beta2)
        v.add_(g * g * (1.0 - beta2))
        if max_exp_avg_sqs is not None:
            vmax = max_exp_avg_sqs[i]
            maximum = getattr(_pc, "maximum", None)
            if maximum is not None:
                vmax.copy_(maximum(vmax, v))
            else:  # max(a, b) = (a + b + |a - b|) / 2
                vmax.copy_((vmax + v + (vmax - v).abs()) * 0.5)
            v = vmax
        denom = v.sqrt() / bc2_sqrt + eps
        p.add_(m / denom * (-lr / bc1))

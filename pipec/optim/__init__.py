"""pipec.optim: optimizers with torch.optim's API (param_groups, state, zero_grad, step,
state_dict/load_state_dict). The update math runs in C kernels over lists of tensors.

Exports: Optimizer, SGD, AdamW.
"""
from .adamw import AdamW
from .optimizer import Optimizer
from .sgd import SGD

__all__ = ["Optimizer", "SGD", "AdamW"]

"""The layer classes of pipec.nn, one file per family (module, linear, activation, container,
loss, normalization, sparse, dropout)."""
from .activation import GELU, ReLU
from .container import ModuleDict, ModuleList, Sequential
from .dropout import Dropout
from .linear import Identity, Linear
from .loss import CrossEntropyLoss, MSELoss
from .module import Module, RemovableHandle
from .normalization import LayerNorm
from .sparse import Embedding

__all__ = ["Module", "RemovableHandle", "Linear", "Identity", "ReLU", "GELU", "Sequential",
           "ModuleList", "ModuleDict", "MSELoss", "CrossEntropyLoss", "LayerNorm",
           "Embedding", "Dropout"]

"""pipec.nn: modules, parameters, layers, losses, functional ops and initialisers, with
torch.nn's names and semantics.

    from pipec import nn
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1))
    loss = nn.MSELoss()(model(x), y)

Exports: Parameter, Buffer, Module, the layers listed in modules/, and the submodules
functional and init.
"""
from . import functional, init
from .modules import (CrossEntropyLoss, Dropout, Embedding, GELU, Identity, LayerNorm,
                      Linear, Module, ModuleDict, ModuleList, MSELoss, ReLU, RemovableHandle,
                      Sequential)
from .parameter import Buffer, Parameter

__all__ = ["Parameter", "Buffer", "Module", "RemovableHandle", "Linear", "Identity", "ReLU",
           "GELU", "Sequential", "ModuleList", "ModuleDict", "MSELoss", "CrossEntropyLoss",
           "LayerNorm", "Embedding", "Dropout", "functional", "init"]

"""Optimizer: the base class of pipec's optimizers, with torch.optim.Optimizer's API.

An optimizer holds `param_groups` (a list of dicts: "params" plus per-group hyper-
parameters, defaults filled in from the constructor) and `state` (a dict from parameter to
that parameter's dict of buffers, created lazily at the first step that sees a gradient).
state_dict() refers to parameters by their position across all groups, so it can be loaded
into an optimizer built the same way over another copy of the model.

Exports: Optimizer, required.
"""
import copy
import warnings
from collections import defaultdict

import pipec as _pc

__all__ = ["Optimizer", "required"]


class _RequiredParameter:
    """Marks a hyper-parameter that has no default and must be given."""

    def __repr__(self):
        return "<required parameter>"


required = _RequiredParameter()


def _is_float(t):
    flag = getattr(t, "is_floating_point", None)
    if callable(flag):
        return bool(flag())
    return "float" in str(t.dtype) or "half" in str(t.dtype)


class Optimizer:
    """Base class. Subclasses pass their hyper-parameter defaults and implement step()."""

    def __init__(self, params, defaults):
        self.defaults = defaults
        self.state = defaultdict(dict)
        self.param_groups = []
        if isinstance(params, _pc.Tensor):
            raise TypeError("params argument given to the optimizer should be an iterable of "
                            f"Tensors or dicts, but got {type(params).__name__}")
        if isinstance(params, (set, frozenset)):
            raise TypeError("optimizer parameters need to be organized in ordered "
                            "collections, but the ordering of tensors in sets will change "
                            "between runs. Please use a list instead.")
        groups = list(params)
        if not groups:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)

    # ---- groups ----

    def add_param_group(self, param_group):
        """Add a group {"params": [...], hyper-parameter overrides...}; missing
        hyper-parameters take the constructor's values."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, but got {type(param_group).__name__}")
        params = param_group["params"]
        if isinstance(params, _pc.Tensor):
            params = [params]
        elif isinstance(params, set):
            raise TypeError("optimizer parameters need to be organized in ordered "
                            "collections, but the ordering of tensors in sets will change "
                            "between runs. Please use a list instead.")
        else:
            params = list(params)
        names = None
        if params and isinstance(params[0], tuple):
            # named parameters: [(name, tensor), ...]
            names = [n for n, _ in params]
            params = [p for _, p in params]
        for p in params:
            if not isinstance(p, _pc.Tensor):
                raise TypeError("optimizer can only optimize Tensors, but one of the params "
                                f"is {type(p).__module__}.{type(p).__name__}")
            if p.grad_fn is not None:
                raise ValueError("can't optimize a non-leaf Tensor")
        group = dict(param_group)
        group["params"] = params
        if names is not None:
            group["param_names"] = names
        for name, default in self.defaults.items():
            if default is required and name not in group:
                raise ValueError("parameter group didn't specify a value of required "
                                 f"optimization parameter {name}")
            group.setdefault(name, default)
        ids = [id(p) for p in params]
        if len(set(ids)) != len(ids):
            warnings.warn("optimizer contains a parameter group with duplicate parameters; "
                          "in future, this will cause an error", stacklevel=3)
        seen = set()
        for g in self.param_groups:
            seen.update(id(p) for p in g["params"])
        if seen & set(ids):
            raise ValueError("some parameters appear in more than one parameter group")
        self.param_groups.append(group)

    # ---- gradients ----

    def zero_grad(self, set_to_none=True):
        """Reset the .grad of every parameter: to None (default) or to zeros in place."""
        for group in self.param_groups:
            for p in group["params"]:
                g = p.grad
                if g is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    if g.grad_fn is not None or g.requires_grad:
                        g = g.detach()
                        p.grad = g
                    g.zero_()

    def step(self, closure=None):
        raise NotImplementedError(f"{type(self).__name__} does not implement step()")

    @staticmethod
    def _run_closure(closure):
        if closure is None:
            return None
        with _pc.enable_grad():
            return closure()

    # ---- state dict ----

    def state_dict(self):
        """{"state": {index: {name: value}}, "param_groups": [group with "params" as
        indices]}. Indices count parameters across groups in order. Tensors in "state" are
        the live buffers (not copies)."""
        index_of = {}
        groups = []
        for group in self.param_groups:
            packed = {k: v for k, v in group.items() if k != "params"}
            idx = []
            for p in group["params"]:
                if id(p) not in index_of:
                    index_of[id(p)] = len(index_of)
                idx.append(index_of[id(p)])
            packed["params"] = idx
            groups.append(packed)
        state = {}
        for group in self.param_groups:
            for p in group["params"]:
                if p in self.state:
                    state[index_of[id(p)]] = self.state[p]
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        """Load a state_dict() of an optimizer of the same shape. State tensors are copied
        (to each parameter's device, and its dtype for floating-point buffers other than
        "step"); the loaded group hyper-parameters replace the current ones."""
        if not isinstance(state_dict, dict) or "state" not in state_dict \
                or "param_groups" not in state_dict:
            raise ValueError("optimizer state_dict must be a dict with keys 'state' and "
                             "'param_groups'")
        saved_groups = copy.deepcopy(
            [{k: v for k, v in g.items()} for g in state_dict["param_groups"]])
        groups = self.param_groups
        if len(groups) != len(saved_groups):
            raise ValueError("loaded state dict has a different number of parameter groups "
                             f"({len(saved_groups)} loaded, {len(groups)} in the optimizer)")
        for g, sg in zip(groups, saved_groups):
            if len(g["params"]) != len(sg["params"]):
                raise ValueError(
                    "loaded state dict contains a parameter group that doesn't match the "
                    f"size of optimizer's group ({len(sg['params'])} loaded, "
                    f"{len(g['params'])} in the optimizer)")
        id_map = {}
        for g, sg in zip(groups, saved_groups):
            for idx, p in zip(sg["params"], g["params"]):
                id_map[idx] = p

        def cast(param, key, value):
            if isinstance(value, _pc.Tensor):
                out = value.detach()
                if key != "step" and _is_float(param) and _is_float(out) \
                        and out.dtype != param.dtype:
                    out = out.to(param.dtype)
                if str(out.device) != str(param.device):
                    out = out.to(param.device)
                return out.clone()
            if isinstance(value, dict):
                return {k: cast(param, k, v) for k, v in value.items()}
            return copy.deepcopy(value)

        new_state = defaultdict(dict)
        for idx, value in state_dict["state"].items():
            if idx in id_map:
                p = id_map[idx]
                new_state[p] = cast(p, None, value)
            else:
                new_state[idx] = copy.deepcopy(value)
        new_groups = []
        for g, sg in zip(groups, saved_groups):
            sg["params"] = g["params"]
            if "param_names" in g and "param_names" not in sg:
                sg["param_names"] = g["param_names"]
            new_groups.append(sg)
        self.state = new_state
        self.param_groups = new_groups

    # ---- printing ----

    def __repr__(self):
        out = type(self).__name__ + " ("
        for i, group in enumerate(self.param_groups):
            out += f"\nParameter Group {i}"
            for key in sorted(group):
                if key not in ("params", "param_names"):
                    out += f"\n    {key}: {group[key]}"
        return out + "\n)"

    def __getstate__(self):
        return {"defaults": self.defaults, "state": self.state,
                "param_groups": self.param_groups}

    def __setstate__(self, state):
        self.__dict__.update(state)

"""Module: the base class of every layer and model, with torch.nn.Module's semantics.

What it keeps:
  - Parameters, buffers and submodules are registered by attribute assignment (or
    register_parameter / register_buffer / register_module) into three ordered dicts,
    `_parameters`, `_buffers` and `_modules`; a name lives in at most one of them (or in the
    instance __dict__ as a plain attribute).
  - Iteration (parameters(), named_modules(), ...) walks the tree in registration order and,
    by default, lists a shared object once, under the first name that reaches it.
    state_dict() lists every name, shared or not, as torch does.
  - __call__ runs forward pre-hooks, forward, then forward hooks.

Exports: Module, RemovableHandle.
"""
import collections
import collections.abc
import inspect
import itertools
import weakref
from collections import OrderedDict

import pipec as _pc

from ..parameter import Buffer, Parameter, _unmark_buffer

__all__ = ["Module", "RemovableHandle"]


# ---- hook handles ----

class RemovableHandle:
    """Returned by register_*_hook; .remove() unregisters the hook. Usable as a context
    manager (the hook is removed on exit). Holds weak references to the hook dicts
    (OrderedDicts: plain dicts cannot be weakly referenced), so it does not keep a module
    alive."""

    _ids = itertools.count()

    def __init__(self, hooks_dict, *extra_dicts):
        self.hooks_dict_ref = weakref.ref(hooks_dict)
        self.extra_dicts_refs = tuple(weakref.ref(d) for d in extra_dicts)
        self.id = next(RemovableHandle._ids)

    def remove(self):
        for ref in (self.hooks_dict_ref,) + self.extra_dicts_refs:
            d = ref()
            if d is not None:
                d.pop(self.id, None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()


# ---- helpers ----

def _addindent(text, spaces):
    """Indent every line of text but the first by `spaces` spaces."""
    lines = text.split("\n")
    if len(lines) == 1:
        return text
    pad = " " * spaces
    return lines[0] + "\n" + "\n".join(pad + line for line in lines[1:])


def _check_name(kind, name, module):
    if not isinstance(name, str):
        raise TypeError(f"{kind} name should be a string, got {type(name).__name__}")
    if name == "":
        raise KeyError(f'{kind} name can\'t be empty string ""')
    if "." in name:
        raise KeyError(f'{kind} name can\'t contain ".", got: {name}')


def _fmt_shape(shape):
    return "(" + ", ".join(str(int(s)) for s in shape) + ")"


class _IncompatibleKeys(collections.namedtuple("IncompatibleKeys",
                                               ["missing_keys", "unexpected_keys"])):
    """load_state_dict's result: the missing and the unexpected keys."""

    def __repr__(self):
        if not self.missing_keys and not self.unexpected_keys:
            return "<All keys matched successfully>"
        return super().__repr__()

    __str__ = __repr__


# Counts attribute assignments, deletions and registrations on any Module (training flags,
# replaced parameters and submodules included): a pipeline checks its stages for changes
# only when it moved since the last step (pipec.pipelining's per-step check stays O(1)).
_changes = [0]


def _changed():
    _changes[0] += 1


def changes():
    """A number that grows whenever an attribute of any Module is assigned or deleted or a
    parameter, buffer or submodule is registered."""
    return _changes[0]


_FLOAT_DTYPE_NAMES = ("float16", "bfloat16", "float32", "float64", "half", "float", "double")


def _is_floating_dtype(dtype):
    flag = getattr(dtype, "is_floating_point", None)
    if flag is not None:
        return bool(flag)
    name = str(dtype).rsplit(".", 1)[-1]
    return name in _FLOAT_DTYPE_NAMES


def _is_floating_tensor(t):
    flag = getattr(t, "is_floating_point", None)
    if callable(flag):
        return bool(flag())
    return _is_floating_dtype(t.dtype)


# ---- Module ----

class Module:
    """Base class of all pipec layers and models (torch.nn.Module semantics).

    Subclasses call super().__init__() before assigning parameters or submodules, and define
    forward(). Calling the module runs forward through its hooks.
    """

    training: bool
    _version = 1
    # Whether __call__ checks a TypeError from forward against forward's signature, to name
    # the module in the message (costs nothing unless forward raises TypeError).
    _explain_call_errors = True

    def __init__(self, *args, **kwargs):
        if args or kwargs:
            what = ", ".join([repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()])
            raise TypeError(f"{type(self).__name__}.__init__() got unexpected arguments "
                            f"({what}) for Module.__init__()")
        setattr_ = object.__setattr__
        setattr_(self, "training", True)
        setattr_(self, "_parameters", OrderedDict())
        setattr_(self, "_buffers", OrderedDict())
        setattr_(self, "_non_persistent_buffers_set", set())
        setattr_(self, "_modules", OrderedDict())
        setattr_(self, "_forward_pre_hooks", OrderedDict())
        setattr_(self, "_forward_pre_hooks_with_kwargs", OrderedDict())
        setattr_(self, "_forward_hooks", OrderedDict())
        setattr_(self, "_forward_hooks_with_kwargs", OrderedDict())
        setattr_(self, "_forward_hooks_always_called", OrderedDict())

    # ---- forward ----

    def forward(self, *args, **kwargs):
        raise NotImplementedError(
            f'Module [{type(self).__name__}] is missing the required "forward" function')

    def _call_impl(self, *args, **kwargs):
        forward = self.forward
        if not (self._forward_pre_hooks or self._forward_hooks):
            try:
                return forward(*args, **kwargs)
            except TypeError as e:
                self._explain_type_error(forward, args, kwargs, e)
                raise

        for hook_id, hook in list(self._forward_pre_hooks.items()):
            if hook_id in self._forward_pre_hooks_with_kwargs:
                res = hook(self, args, kwargs)
                if res is not None:
                    if not (isinstance(res, tuple) and len(res) == 2):
                        raise RuntimeError(
                            "a forward pre-hook registered with with_kwargs=True must return "
                            f"None or a tuple (new_args, new_kwargs), got {res!r}")
                    args, kwargs = res
            else:
                res = hook(self, args)
                if res is not None:
                    args = res if isinstance(res, tuple) else (res,)

        called = set()
        try:
            try:
                result = forward(*args, **kwargs)
            except TypeError as e:
                self._explain_type_error(forward, args, kwargs, e)
                raise
            for hook_id, hook in list(self._forward_hooks.items()):
                called.add(hook_id)
                if hook_id in self._forward_hooks_with_kwargs:
                    res = hook(self, args, kwargs, result)
                else:
                    res = hook(self, args, result)
                if res is not None:
                    result = res
        except Exception:
            for hook_id, hook in list(self._forward_hooks.items()):
                if hook_id in self._forward_hooks_always_called and hook_id not in called:
                    try:
                        if hook_id in self._forward_hooks_with_kwargs:
                            hook(self, args, kwargs, None)
                        else:
                            hook(self, args, None)
                    except Exception:
                        pass
            raise
        return result

    __call__ = _call_impl

    def _explain_type_error(self, forward, args, kwargs, err):
        """Re-raise a TypeError from forward as one naming the module and forward's signature
        when the arguments do not fit that signature; otherwise return (caller re-raises)."""
        if not self._explain_call_errors:
            return
        try:
            sig = inspect.signature(forward)
        except (TypeError, ValueError):
            return
        try:
            sig.bind(*args, **kwargs)
        except TypeError as bind_err:
            raise TypeError(
                f"{self._get_name()}.forward{sig} called with {len(args)} positional "
                f"argument(s) and keyword(s) {sorted(kwargs)}: {bind_err}") from err

    # ---- registration ----

    def register_parameter(self, name, param):
        """Register `param` (a Parameter, or None) under `name`."""
        if "_parameters" not in self.__dict__:
            raise AttributeError("cannot assign parameter before Module.__init__() call")
        _check_name("parameter", name, self)
        if hasattr(self, name) and name not in self._parameters:
            raise KeyError(f"attribute '{name}' already exists")
        _changed()
        if param is None:
            self._parameters[name] = None
            return
        if not isinstance(param, Parameter):
            raise TypeError(
                f"cannot assign '{type(param).__module__}.{type(param).__name__}' object to "
                f"parameter '{name}' (pipec.nn.Parameter or None required)")
        if param.grad_fn is not None:
            raise ValueError(
                f"cannot assign non-leaf Tensor to parameter '{name}'. Model parameters must "
                "be created explicitly; to express '{name}' as a function of another Tensor, "
                "compute the value in forward()")
        self._parameters[name] = param

    def register_buffer(self, name, tensor, persistent=True):
        """Register `tensor` (a pipec.Tensor, or None) as a buffer under `name`.
        Non-persistent buffers are left out of state_dict()."""
        if "_buffers" not in self.__dict__:
            raise AttributeError("cannot assign buffer before Module.__init__() call")
        _check_name("buffer", name, self)
        if hasattr(self, name) and name not in self._buffers:
            raise KeyError(f"attribute '{name}' already exists")
        if tensor is not None and not isinstance(tensor, _pc.Tensor):
            raise TypeError(
                f"cannot assign '{type(tensor).__module__}.{type(tensor).__name__}' object to "
                f"buffer '{name}' (pipec.Tensor or None required)")
        if isinstance(tensor, Buffer):
            persistent = _unmark_buffer(tensor) and persistent
        _changed()
        self._buffers[name] = tensor
        if persistent:
            self._non_persistent_buffers_set.discard(name)
        else:
            self._non_persistent_buffers_set.add(name)

    def register_module(self, name, module):
        """Register `module` (a Module, or None) as a child under `name`."""
        if "_modules" not in self.__dict__:
            raise AttributeError("cannot assign module before Module.__init__() call")
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"{type(module).__module__}.{type(module).__name__} is not a "
                            "Module subclass")
        _check_name("module", name, self)
        if hasattr(self, name) and name not in self._modules:
            raise KeyError(f"attribute '{name}' already exists")
        _changed()
        self._modules[name] = module

    add_module = register_module

    # ---- attribute protocol ----

    def __getattr__(self, name):
        # Only reached when normal lookup fails.
        d = self.__dict__
        for store in ("_parameters", "_buffers", "_modules"):
            if store in d and name in d[store]:
                return d[store][name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __setattr__(self, name, value):
        _changed()
        d = self.__dict__

        def drop_from(*stores):
            for store in stores:
                if name in store:
                    del store[name]
            if name in d:
                del d[name]

        params = d.get("_parameters")
        if isinstance(value, Parameter):
            if params is None:
                raise AttributeError("cannot assign parameters before Module.__init__() call")
            drop_from(d["_buffers"], d["_modules"])
            d["_non_persistent_buffers_set"].discard(name)
            self.register_parameter(name, value)
            return
        if params is not None and name in params:
            if value is not None:
                raise TypeError(
                    f"cannot assign '{type(value).__module__}.{type(value).__name__}' as "
                    f"parameter '{name}' (pipec.nn.Parameter or None expected)")
            self.register_parameter(name, value)
            return

        modules = d.get("_modules")
        if isinstance(value, Module):
            if modules is None:
                raise AttributeError("cannot assign module before Module.__init__() call")
            drop_from(params, d["_buffers"])
            d["_non_persistent_buffers_set"].discard(name)
            modules[name] = value
            return
        if modules is not None and name in modules:
            if value is not None:
                raise TypeError(
                    f"cannot assign '{type(value).__module__}.{type(value).__name__}' as "
                    f"child module '{name}' (pipec.nn.Module or None expected)")
            modules[name] = value
            return

        buffers = d.get("_buffers")
        if isinstance(value, Buffer):
            if buffers is None:
                raise AttributeError("cannot assign buffer before Module.__init__() call")
            drop_from(params, modules)
            self.register_buffer(name, value, getattr(value, "persistent", True))
            return
        if buffers is not None and name in buffers:
            if value is not None and not isinstance(value, _pc.Tensor):
                raise TypeError(
                    f"cannot assign '{type(value).__module__}.{type(value).__name__}' as "
                    f"buffer '{name}' (pipec.Tensor or None expected)")
            buffers[name] = value
            return
        object.__setattr__(self, name, value)

    def __delattr__(self, name):
        _changed()
        d = self.__dict__
        if name in d.get("_parameters", ()):
            del d["_parameters"][name]
        elif name in d.get("_buffers", ()):
            del d["_buffers"][name]
            d["_non_persistent_buffers_set"].discard(name)
        elif name in d.get("_modules", ()):
            del d["_modules"][name]
        else:
            object.__delattr__(self, name)

    def __dir__(self):
        keys = set(dir(type(self))) | set(self.__dict__)
        keys |= set(self._parameters) | set(self._buffers) | set(self._modules)
        return sorted(k for k in keys if not k[0].isdigit())

    def __setstate__(self, state):
        self.__dict__.update(state)

    # ---- lookup by dotted name ----

    def get_submodule(self, target):
        """The submodule at dotted path `target` ("" = self). AttributeError names the part
        of the path that does not exist."""
        if target == "":
            return self
        mod = self
        walked = []
        for item in target.split("."):
            if not isinstance(mod, Module) or item not in mod._modules:
                where = ".".join(walked) or type(self).__name__
                if isinstance(mod, Module) and hasattr(mod, item):
                    raise AttributeError(f"`{item}` (in `{target}`) is not an nn.Module")
                raise AttributeError(
                    f"{type(mod).__name__} at `{where}` has no submodule `{item}` "
                    f"(looking up `{target}`)")
            mod = mod._modules[item]
            walked.append(item)
            if mod is None:
                raise AttributeError(f"submodule `{'.'.join(walked)}` is None")
        return mod

    def _split_target(self, target):
        prefix, _, name = target.rpartition(".")
        return self.get_submodule(prefix), name

    def get_parameter(self, target):
        mod, name = self._split_target(target)
        if name not in mod._parameters:
            raise AttributeError(f"{mod._get_name()} has no parameter `{name}` "
                                 f"(looking up `{target}`)")
        return mod._parameters[name]

    def get_buffer(self, target):
        mod, name = self._split_target(target)
        if name not in mod._buffers:
            raise AttributeError(f"{mod._get_name()} has no buffer `{name}` "
                                 f"(looking up `{target}`)")
        return mod._buffers[name]

    # ---- iteration ----

    def _named_members(self, get_members, prefix="", recurse=True, remove_duplicate=True):
        seen = set()
        mods = (self.named_modules(prefix=prefix, remove_duplicate=remove_duplicate)
                if recurse else [(prefix, self)])
        for mod_prefix, mod in mods:
            for name, value in get_members(mod):
                if value is None:
                    continue
                if remove_duplicate:
                    if id(value) in seen:
                        continue
                    seen.add(id(value))
                yield (mod_prefix + "." + name if mod_prefix else name), value

    def named_parameters(self, prefix="", recurse=True, remove_duplicate=True):
        """(name, Parameter) pairs; a shared parameter is listed once, under its first name
        (unless remove_duplicate=False)."""
        yield from self._named_members(lambda m: m._parameters.items(), prefix, recurse,
                                       remove_duplicate)

    def parameters(self, recurse=True):
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(self, prefix="", recurse=True, remove_duplicate=True):
        yield from self._named_members(lambda m: m._buffers.items(), prefix, recurse,
                                       remove_duplicate)

    def buffers(self, recurse=True):
        for _, b in self.named_buffers(recurse=recurse):
            yield b

    def named_children(self):
        seen = set()
        for name, mod in self._modules.items():
            if mod is not None and id(mod) not in seen:
                seen.add(id(mod))
                yield name, mod

    def children(self):
        for _, mod in self.named_children():
            yield mod

    def named_modules(self, memo=None, prefix="", remove_duplicate=True):
        """(dotted name, module) for self and every descendant, depth first in registration
        order; a module reachable under several names is listed once (first name) unless
        remove_duplicate=False."""
        if memo is None:
            memo = set()
        if remove_duplicate:
            if id(self) in memo:
                return
            memo.add(id(self))
        yield prefix, self
        for name, mod in self._modules.items():
            if mod is None:
                continue
            sub = prefix + "." + name if prefix else name
            yield from mod.named_modules(memo, sub, remove_duplicate)

    def modules(self):
        for _, mod in self.named_modules():
            yield mod

    # ---- modes and bulk changes ----

    def train(self, mode=True):
        if not isinstance(mode, bool):
            raise ValueError(f"training mode is expected to be boolean, got {mode!r}")
        self.training = mode
        for mod in self.children():
            mod.train(mode)
        return self

    def eval(self):
        return self.train(False)

    def requires_grad_(self, requires_grad=True):
        for p in self.parameters():
            p.requires_grad_(requires_grad)
        return self

    def zero_grad(self, set_to_none=True):
        """Reset the .grad of every parameter: to None (default) or to zeros in place."""
        for p in self.parameters():
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

    def apply(self, fn):
        """Call fn on every submodule (children first) and then on self; returns self."""
        for mod in self.children():
            mod.apply(fn)
        fn(self)
        return self

    def _apply(self, fn, convert_grads=True):
        """Replace every parameter's and buffer's values by fn(tensor), in place where the
        tensor allows it (so Parameter objects, and optimizers holding them, stay valid).
        Aliased tensors stay aliased."""
        done = {}

        def convert(t):
            with _pc.no_grad():
                return fn(t)

        for mod in self.modules():
            for name, p in list(mod._parameters.items()):
                if p is None:
                    continue
                if id(p) in done:
                    mod._parameters[name] = done[id(p)]
                    continue
                new = convert(p)
                if new is not p:
                    new_p = _set_tensor_data(p, new)
                    if new_p is None:  # tensor type does not allow .data assignment
                        new_p = Parameter(new.detach(), p.requires_grad)
                        g = p.grad
                        if g is not None:
                            new_p.grad = g
                        mod._parameters[name] = new_p
                    else:
                        new_p = p
                    if convert_grads and new_p.grad is not None:
                        g = new_p.grad
                        g_new = convert(g)
                        if g_new is not g:
                            new_p.grad = g_new
                done[id(p)] = mod._parameters[name]
            for name, b in list(mod._buffers.items()):
                if b is None:
                    continue
                if id(b) in done:
                    mod._buffers[name] = done[id(b)]
                    continue
                new = convert(b)
                mod._buffers[name] = new
                done[id(b)] = new
        return self

    def to(self, *args, **kwargs):
        """to(device), to(dtype), to(tensor), to(device, dtype), with keywords device=,
        dtype=, non_blocking=. dtype changes apply to floating-point tensors only."""
        device, dtype = _parse_to(args, kwargs)
        if dtype is not None and not _is_floating_dtype(dtype):
            raise TypeError(f"Module.to only accepts floating point dtypes, got {dtype}")

        def fn(t):
            out = t
            if dtype is not None and _is_floating_tensor(t) and t.dtype != dtype:
                out = out.to(dtype)
            if device is not None and _as_device(out.device) != device:
                out = out.to(device)
            return out

        return self._apply(fn)

    def cpu(self):
        return self.to("cpu")

    def cuda(self, device=None):
        if device is None:
            device = "cuda"
        elif isinstance(device, int):
            device = f"cuda:{device}"
        return self.to(device)

    def float(self):
        return self.to(_pc.float32)

    def double(self):
        return self.to(_pc.float64)

    def half(self):
        return self.to(_pc.float16)

    def bfloat16(self):
        return self.to(_pc.bfloat16)

    # ---- hooks ----

    def register_forward_pre_hook(self, hook, *, prepend=False, with_kwargs=False):
        """hook(module, args) -> None or new args (a tuple, or one value); with_kwargs=True:
        hook(module, args, kwargs) -> None or (new_args, new_kwargs)."""
        handle = RemovableHandle(self._forward_pre_hooks, self._forward_pre_hooks_with_kwargs)
        self._forward_pre_hooks[handle.id] = hook
        if with_kwargs:
            self._forward_pre_hooks_with_kwargs[handle.id] = True
        if prepend:
            self._forward_pre_hooks.move_to_end(handle.id, last=False)
        return handle

    def register_forward_hook(self, hook, *, prepend=False, with_kwargs=False,
                              always_call=False):
        """hook(module, args, output) -> None or a replacement output; with_kwargs=True:
        hook(module, args, kwargs, output). always_call=True runs it even when forward
        raises (with output None)."""
        handle = RemovableHandle(self._forward_hooks, self._forward_hooks_with_kwargs,
                                 self._forward_hooks_always_called)
        self._forward_hooks[handle.id] = hook
        if with_kwargs:
            self._forward_hooks_with_kwargs[handle.id] = True
        if always_call:
            self._forward_hooks_always_called[handle.id] = True
        if prepend:
            self._forward_hooks.move_to_end(handle.id, last=False)
        return handle

    # ---- state dict ----

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        for name, p in self._parameters.items():
            if p is not None:
                destination[prefix + name] = p if keep_vars else p.detach()
        for name, b in self._buffers.items():
            if b is not None and name not in self._non_persistent_buffers_set:
                destination[prefix + name] = b if keep_vars else b.detach()

    def state_dict(self, *, destination=None, prefix="", keep_vars=False):
        """Ordered {dotted name: tensor} of every parameter and persistent buffer, every
        name of a shared tensor included. Values are detached (sharing storage) unless
        keep_vars=True."""
        if destination is None:
            destination = OrderedDict()
        self._save_to_state_dict(destination, prefix, keep_vars)
        for name, mod in self._modules.items():
            if mod is not None:
                mod.state_dict(destination=destination, prefix=prefix + name + ".",
                               keep_vars=keep_vars)
        return destination

    def _load_from_state_dict(self, state_dict, prefix, strict, missing, unexpected,
                              errors, assign):
        local = {}
        for name, p in self._parameters.items():
            if p is not None:
                local[name] = p
        for name, b in self._buffers.items():
            if b is not None and name not in self._non_persistent_buffers_set:
                local[name] = b
        for name, param in local.items():
            key = prefix + name
            if key not in state_dict:
                missing.append(key)
                continue
            value = state_dict[key]
            if not isinstance(value, _pc.Tensor):
                errors.append(f'While copying the parameter named "{key}", expected a '
                              f"pipec.Tensor from the checkpoint but received "
                              f"{type(value).__name__}")
                continue
            if tuple(value.shape) != tuple(param.shape):
                errors.append(
                    f"size mismatch for {key}: copying a param with shape "
                    f"{_fmt_shape(value.shape)} from checkpoint, the shape in current model "
                    f"is {_fmt_shape(param.shape)}.")
                continue
            try:
                if assign:
                    if isinstance(param, Parameter):
                        new = value if isinstance(value, Parameter) else \
                            Parameter(value, param.requires_grad)
                        self._parameters[name] = new
                    else:
                        self._buffers[name] = value
                else:
                    with _pc.no_grad():
                        param.copy_(value)
            except Exception as e:  # noqa: BLE001 - reported with the key below
                errors.append(f'While copying the parameter named "{key}", whose dimensions '
                              f"in the model are {_fmt_shape(param.shape)} and whose "
                              f"dimensions in the checkpoint are {_fmt_shape(value.shape)}, "
                              f"an exception occurred: {e}")
        for key in state_dict:
            if not key.startswith(prefix):
                continue
            head = key[len(prefix):].split(".", 1)[0]
            if head not in self._modules and head not in local:
                unexpected.append(key)

    def load_state_dict(self, state_dict, strict=True, assign=False):
        """Copy values from state_dict into this module's parameters and buffers.

        strict=True: the keys must match state_dict() exactly. Shape mismatches always fail.
        Raises RuntimeError listing every problem; returns (missing_keys, unexpected_keys).
        """
        if not isinstance(state_dict, collections.abc.Mapping):
            raise TypeError(f"Expected state_dict to be dict-like, got {type(state_dict)}.")
        missing, unexpected, errors = [], [], []

        def load(mod, prefix):
            mod._load_from_state_dict(state_dict, prefix, True, missing, unexpected, errors,
                                      assign)
            for name, child in mod._modules.items():
                if child is not None:
                    load(child, prefix + name + ".")

        load(self, "")
        # A key can look unexpected at one level only because it belongs to a child, and
        # can be reported by several parents of an aliased module: keep each key once.
        unexpected = list(dict.fromkeys(unexpected))
        missing = list(dict.fromkeys(missing))
        if strict:
            if unexpected:
                errors.insert(0, "Unexpected key(s) in state_dict: {}. ".format(
                    ", ".join(f'"{k}"' for k in unexpected)))
            if missing:
                errors.insert(0, "Missing key(s) in state_dict: {}. ".format(
                    ", ".join(f'"{k}"' for k in missing)))
        if errors:
            raise RuntimeError("Error(s) in loading state_dict for {}:\n\t{}".format(
                type(self).__name__, "\n\t".join(errors)))
        return _IncompatibleKeys(missing, unexpected)

    # ---- printing ----

    def _get_name(self):
        return type(self).__name__

    def extra_repr(self):
        """Text shown inside this module's parentheses in repr(); override in layers."""
        return ""

    def __repr__(self):
        lines = []
        extra = self.extra_repr()
        if extra:
            lines = extra.split("\n")
        for name, mod in self._modules.items():
            lines.append(f"({name}): " + _addindent(repr(mod), 2))
        main = self._get_name() + "("
        if lines:
            if len(lines) == 1 and not self._modules:
                main += lines[0]
            else:
                main += "\n  " + "\n  ".join(lines) + "\n"
        return main + ")"


# ---- to() argument parsing ----

def _device_type():
    dev = getattr(_pc, "device", None)
    return dev if isinstance(dev, type) else None


def _dtype_type():
    dt = getattr(_pc, "dtype", None)
    return dt if isinstance(dt, type) else type(_pc.float32)


def _as_device(x):
    """A pipec.device for a string, an index or a device (comparable with ==)."""
    dev_t = _device_type()
    if dev_t is not None and isinstance(x, dev_t):
        return x
    return _pc.device(x) if hasattr(_pc, "device") else str(x)


def _parse_to(args, kwargs):
    kwargs = dict(kwargs)
    device = kwargs.pop("device", None)
    dtype = kwargs.pop("dtype", None)
    kwargs.pop("non_blocking", None)
    kwargs.pop("copy", None)
    if kwargs:
        raise TypeError(f"to() got unexpected keyword argument(s) {sorted(kwargs)}")
    if len(args) > 3:
        raise TypeError(f"to() takes at most 3 positional arguments, got {len(args)}")
    for a in args:
        if isinstance(a, bool) or a is None:
            continue  # non_blocking passed positionally
        if isinstance(a, _pc.Tensor):
            device, dtype = a.device, a.dtype
        elif isinstance(a, _dtype_type()):
            dtype = a
        elif isinstance(a, (str, int)) or (_device_type() is not None
                                            and isinstance(a, _device_type())):
            device = a
        else:
            raise TypeError(f"to() received an invalid argument: {a!r} (expected a device, "
                            "a dtype or a Tensor)")
    if isinstance(device, int):
        device = f"cuda:{device}"
    if device is not None:
        device = _as_device(device)
    return device, dtype


def _set_tensor_data(p, new):
    """Point p at new's values in place (p.data = new). Returns p, or None when the tensor
    type does not support it."""
    try:
        p.data = new
    except (AttributeError, TypeError, NotImplementedError):
        return None
    return p

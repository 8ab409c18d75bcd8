"""The inputs a traced stage was made for, and binding later calls to them.

A stage runs the C Program traced from its module on one example call. That Program takes
the call's tensors in one fixed order and has every non-tensor argument baked in. A later
call must therefore give the same arguments: matched to the forward's parameters as Python
matches them (by position or by name, defaults filled in), with tensors where tensors were
and equal non-tensor values. Calls are first put in one canonical form (every parameter
that can be positional given by position, the rest by name), the form the trace is made
with, so that ``f(x, bias=b)``, ``f(x, None, b)`` and ``f(bias=b, x=x)`` bind alike.
``InputSignature.bind`` checks a call and returns its tensors in the Program's order,
raising instead of running the Program on values it was not traced for.
"""

import inspect

from .. import _C

Tensor = _C.Tensor


class InputMismatchError(TypeError, ValueError):
    """A call whose arguments do not match the traced one (a TypeError for a wrong
    structure and a ValueError for a changed value, as Python and earlier pipec raised)."""


def _same_constant(a, b):
    if a is b:
        return True
    if type(a) is not type(b):
        return False
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - values without a usable ==, e.g. arrays
        return False


def _describe(spec):
    kind = spec[0]
    if kind == "T":
        return "a tensor"
    if kind == "C":
        return repr(spec[1])
    return f"a {kind}"


class InputSignature:
    """What a stage was traced with: ``spec`` is ``_IR._flatten``'s spec of the call's
    ``(args, kwargs)``; ``shapes`` those of its tensors, in the Program's order."""

    def __init__(self, spec, shapes, parameters=None):
        self.spec = spec
        self.shapes = shapes  # the traced call's tensor shapes, in order
        self.parameters = parameters  # inspect.Signature of the forward, or None
        # a call of that many positional arguments and no keywords is canonical already
        # (a forward with positional parameters only): bind skips inspect there
        kinds = [p.kind for p in parameters.parameters.values()] if parameters else []
        plain = parameters is not None and all(
            k in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
            for k in kinds)
        self._plain_arity = len(kinds) if plain else -1

    @staticmethod
    def parameters_of(module):
        """The inspect.Signature of module.forward (None when it has none to read)."""
        try:
            return inspect.signature(module.forward)
        except (TypeError, ValueError):
            return None

    @staticmethod
    def canonical(parameters, args, kwargs, what="stage"):
        """(args, kwargs) as Python binds them to the forward: every parameter that can be
        positional by position, the rest by name, non-tensor defaults filled in (unchanged
        without a signature)."""
        if parameters is None:
            return tuple(args), dict(kwargs or {})
        try:
            bound = parameters.bind(*args, **(kwargs or {}))
        except TypeError as e:
            raise InputMismatchError(f"{what}: {e}") from None
        for name, p in parameters.parameters.items():
            # defaults count as given, except tensors: those stay constants of the trace
            # (a default tensor is not an input of the model)
            if (name not in bound.arguments and p.default is not p.empty
                    and not isinstance(p.default, Tensor)):
                bound.arguments[name] = p.default
        return tuple(bound.args), dict(bound.kwargs)

    def bind(self, args, kwargs, what="stage"):
        """The tensors of ``fn(*args, **kwargs)`` in the traced order. Raises
        InputMismatchError when the call's structure differs from the traced one (a missing
        or unexpected argument, a tensor where a non-tensor was) or a non-tensor argument
        has another value than when traced (it is a constant of the Program)."""
        arg_specs = self.spec[1][0][1]
        kw_specs = self.spec[1][1][1]
        args, kwargs = tuple(args), kwargs or {}
        if kwargs or len(args) != self._plain_arity:
            args, kwargs = self.canonical(self.parameters, args, kwargs, what)
        if len(args) != len(arg_specs):
            raise InputMismatchError(f"{what}: traced with {len(arg_specs)} positional "
                                     f"arguments, called with {len(args)}")
        traced_keys = [k for k, _ in kw_specs]
        missing = [k for k in traced_keys if k not in kwargs]
        unexpected = [k for k in kwargs if k not in dict(kw_specs)]
        if missing or unexpected:
            parts = []
            if missing:
                parts.append(f"missing keyword arguments {missing}")
            if unexpected:
                parts.append(f"unexpected keyword arguments {unexpected}")
            raise InputMismatchError(f"{what}: {' and '.join(parts)} (traced with "
                                     f"keywords {traced_keys})")
        names = [] if self.parameters is None else [
            n for n, p in self.parameters.parameters.items()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        out = []
        for i, (a, sp) in enumerate(zip(args, arg_specs)):
            label = f"argument {names[i]!r}" if i < len(names) else f"argument {i}"
            self._walk(a, sp, label, out, what)
        for k, sp in kw_specs:
            self._walk(kwargs[k], sp, f"keyword argument {k!r}", out, what)
        return out

    def _walk(self, value, spec, path, out, what):
        kind = spec[0]
        if kind == "T":
            if not isinstance(value, Tensor):
                raise InputMismatchError(f"{what}: {path} was a tensor when traced, "
                                         f"got {type(value).__name__}")
            out.append(value)
        elif kind == "C":
            if isinstance(value, Tensor):
                raise InputMismatchError(
                    f"{what}: {path} was {spec[1]!r} when traced, got a tensor: the traced "
                    "program holds it as a constant; trace again with a tensor there")
            if not _same_constant(value, spec[1]):
                raise InputMismatchError(
                    f"{what}: {path} was {spec[1]!r} when traced, got {value!r}: non-tensor "
                    "arguments are constants of the traced program, so they cannot change "
                    "between calls; pass a tensor, or trace again (a new pipeline() or "
                    "PipelineStage)")
        elif kind == "dict":
            if not isinstance(value, dict):
                raise InputMismatchError(f"{what}: {path} was a dict when traced, got "
                                         f"{type(value).__name__}")
            keys = [k for k, _ in spec[1]]
            if set(value) != set(keys):
                raise InputMismatchError(f"{what}: {path} had keys {keys} when traced, "
                                         f"got {list(value)}")
            for k, sp in spec[1]:
                self._walk(value[k], sp, f"{path}[{k!r}]", out, what)
        else:  # a tuple, list or other sequence
            if isinstance(value, (Tensor, dict, str)) or not isinstance(value, (tuple, list)):
                raise InputMismatchError(f"{what}: {path} was {_describe(spec)} when "
                                         f"traced, got {type(value).__name__}")
            if len(value) != len(spec[1]):
                raise InputMismatchError(f"{what}: {path} had {len(spec[1])} elements "
                                         f"when traced, got {len(value)}")
            for j, (v, sp) in enumerate(zip(value, spec[1])):
                self._walk(v, sp, f"{path}[{j}]", out, what)

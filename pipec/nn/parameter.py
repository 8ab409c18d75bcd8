"""Parameter and Buffer: the two kinds of tensor a Module registers by attribute assignment.

Parameter is a real subclass of pipec.Tensor built with Tensor._make_subclass, so it shares
the storage of the tensor it wraps and is a leaf; it is flagged (Tensor._is_param) so that the
split backward treats it as a weight. Assigning one to a Module attribute registers it as a
parameter.

Buffer marks a tensor to be registered as a buffer when assigned to a Module attribute. Like
torch.nn.Buffer, Buffer(t) returns a detached plain Tensor carrying a marker (and its
`persistent` flag); isinstance(x, Buffer) is true for such marked tensors.

Exports: Parameter, Buffer.
"""
import pipec as _pc

__all__ = ["Parameter", "Buffer"]


class Parameter(_pc.Tensor):
    """A tensor that is a module parameter. requires_grad defaults to True.

    Parameter(data=None, requires_grad=True): data is shared, not copied. With no data, an
    empty float32 tensor of shape (0,) is used.
    """

    def __new__(cls, data=None, requires_grad=True):
        if data is None:
            data = _pc.empty(0)
        elif not isinstance(data, _pc.Tensor):
            raise TypeError(
                f"Parameter(data=...) expects a pipec.Tensor, got {type(data).__name__}")
        p = _pc.Tensor._make_subclass(cls, data, bool(requires_grad))
        p._is_param = True  # tells split (zero-bubble) backward that this leaf is a weight
        return p

    def __init__(self, data=None, requires_grad=True):
        # All the work is in __new__; accept (and ignore) the same arguments here.
        pass

    def __deepcopy__(self, memo):
        if id(self) in memo:
            return memo[id(self)]
        result = type(self)(self.data.clone(), self.requires_grad)
        memo[id(self)] = result
        return result

    def __repr__(self):
        return "Parameter containing:\n" + _pc.Tensor.__repr__(self)


class _BufferMeta(type):
    """isinstance(t, Buffer) is true for Tensors that Buffer(...) marked."""

    def __instancecheck__(cls, instance):
        if cls is Buffer:
            return isinstance(instance, _pc.Tensor) and getattr(instance, "_is_buffer", False)
        return super().__instancecheck__(instance)


class Buffer(_pc.Tensor, metaclass=_BufferMeta):
    """Buffer(data, *, persistent=True): mark a tensor to be registered as a module buffer.

    Returns a detached Tensor sharing data's storage (with data's requires_grad), marked so
    that `module.name = Buffer(t)` registers it as a buffer. persistent=False keeps it out of
    state_dict().
    """

    def __new__(cls, data=None, *, persistent=True):
        if data is None:
            data = _pc.empty(0)
        if not isinstance(data, _pc.Tensor):
            raise TypeError(
                f"Buffer(data=...) expects a pipec.Tensor, got {type(data).__name__}")
        t = data.detach()
        if data.requires_grad:
            t.requires_grad_(True)
        t._is_buffer = True
        t.persistent = bool(persistent)
        return t


def _unmark_buffer(t):
    """Drop Buffer's marker attributes from t (after registration); returns persistent."""
    persistent = getattr(t, "persistent", True)
    for attr in ("_is_buffer", "persistent"):
        try:
            delattr(t, attr)
        except AttributeError:
            pass
    return persistent

"""Microbatching: cut a whole batch of step() inputs into microbatches, glue outputs back.

``split_args_kwargs_into_chunks(args, kwargs, chunks, args_chunk_spec, kwargs_chunk_spec)``
returns ``chunks`` argument tuples and ``chunks`` kwarg dicts. Each argument is walked like a
pytree (tuple, list, dict, OrderedDict and namedtuple are containers; anything else is a
leaf) and every leaf gets a spec:

* ``TensorChunkSpec(d)``: the tensor is cut along dim ``d`` into ``chunks`` views with
  ``pipec.tensor_split`` (sizes differ by at most one, the first ones larger);
* ``_Replicate`` (the class or an instance): the very same object goes into every chunk;
* no spec (``None``): tensors use ``TensorChunkSpec(0)``, everything else ``_Replicate``.

A spec is a structure matching the argument's, or a single leaf spec, which then applies to
every leaf below it. ``merge_chunks(chunks, spec)`` is the inverse for outputs: tensors are
concatenated along their spec's dim, ``_CustomReducer`` leaves are folded, other leaves are
taken from the first chunk.

Invariants: chunk tensors are views of the inputs (no copies, writing into a chunk writes the
input); every split tensor leaf yields exactly ``chunks`` non-empty pieces; the container
types and dict key order of the inputs are kept in every chunk.

Differences from torch, on purpose:
* A tensor whose split dim is shorter than ``chunks`` raises ``ValueError``; torch silently
  makes fewer microbatches than asked for.
* ``merge_chunks`` with no spec takes non-tensor outputs from the first chunk (torch tries to
  concatenate them and fails); a single leaf spec may stand for a whole subtree (torch
  needs one spec per leaf). Both only accept what torch rejects.
* Bad specs and structure mismatches raise ``ValueError``/``TypeError`` naming the argument
  path (``args[1]['h'][0]``); torch uses asserts for several of them.
* Tensors in one call may have different sizes along their split dims (torch allows it; its
  test_split_and_merge relies on it): each is cut into ``chunks`` pieces of its own size.

Exports: TensorChunkSpec, split_args_kwargs_into_chunks, merge_chunks; also the torch-named
private helpers _Replicate, _CustomReducer, sum_reducer and DEFAULT_CHUNK_DIM.
"""
from collections import OrderedDict

import pipec

__all__ = ["TensorChunkSpec", "split_args_kwargs_into_chunks", "merge_chunks"]

DEFAULT_CHUNK_DIM = 0


# ---- spec types ----

class TensorChunkSpec:
    """Chunk a tensor argument (or merge a tensor output) along ``split_dim``."""

    __slots__ = ("split_dim",)

    def __init__(self, split_dim):
        if isinstance(split_dim, bool) or not isinstance(split_dim, int):
            raise TypeError(f"TensorChunkSpec: split_dim must be an int, got "
                            f"{type(split_dim).__name__} ({split_dim!r})")
        self.split_dim = split_dim

    def __repr__(self):
        return f"{type(self).__name__}({self.split_dim})"

    __str__ = __repr__

    def __eq__(self, other):
        if not isinstance(other, TensorChunkSpec):
            return NotImplemented
        return self.split_dim == other.split_dim

    def __hash__(self):
        return hash((TensorChunkSpec, self.split_dim))

    @staticmethod
    def from_tuple(chunk_dims):
        """``(0, 0, 1)`` -> ``(TensorChunkSpec(0), TensorChunkSpec(0), TensorChunkSpec(1))``,
        an ``args_chunk_spec`` for positional arguments."""
        if not isinstance(chunk_dims, tuple):
            raise TypeError(f"TensorChunkSpec.from_tuple: expected a tuple of ints, got "
                            f"{type(chunk_dims).__name__}")
        return tuple(TensorChunkSpec(d) for d in chunk_dims)

    @staticmethod
    def from_dict(chunk_dims):
        """``{"y": 0}`` -> ``{"y": TensorChunkSpec(0)}``, a ``kwargs_chunk_spec``."""
        if not isinstance(chunk_dims, dict):
            raise TypeError(f"TensorChunkSpec.from_dict: expected a dict of ints, got "
                            f"{type(chunk_dims).__name__}")
        return {k: TensorChunkSpec(d) for k, d in chunk_dims.items()}


class _Replicate:
    """Spec leaf: give every chunk the same object. Usable as the class or an instance."""

    def __repr__(self):
        return "_Replicate()"


class _CustomReducer:
    """Merge spec leaf: fold the chunks' values, ``acc = reduce_fn(acc, value)`` starting
    from ``init_value``."""

    __slots__ = ("init_value", "reduce_fn")

    def __init__(self, init_value, reduce_fn):
        if not callable(reduce_fn):
            raise TypeError(f"_CustomReducer: reduce_fn must be callable, got "
                            f"{type(reduce_fn).__name__}")
        self.init_value = init_value
        self.reduce_fn = reduce_fn

    def __repr__(self):
        return f"_CustomReducer(init_value={self.init_value!r}, reduce_fn={self.reduce_fn!r})"


def _add(a, b):
    return a + b


sum_reducer = _CustomReducer(0.0, _add)


def _is_replicate(spec):
    return spec is _Replicate or isinstance(spec, _Replicate)


def _is_leaf_spec(spec):
    return (spec is None or isinstance(spec, (TensorChunkSpec, _CustomReducer))
            or _is_replicate(spec))


# ---- tree walking ----
# A tree definition is None for a leaf, or (kind, type, keys, child_defs) for a container,
# kind being "seq" (tuple/list/namedtuple) or "map" (dict/OrderedDict). Tree definitions
# compare with ==, so two values have the same structure iff their definitions are equal.

def _is_namedtuple(obj):
    return isinstance(obj, tuple) and hasattr(type(obj), "_fields")


def _flatten(obj, path, leaves, paths):
    """Append obj's leaves (and their paths) in order; return obj's tree definition."""
    t = type(obj)
    if t is tuple or t is list or _is_namedtuple(obj):
        defs = tuple(_flatten(v, f"{path}[{i}]", leaves, paths) for i, v in enumerate(obj))
        return ("seq", t, len(obj), defs)
    if t is dict or t is OrderedDict:
        keys = tuple(obj.keys())
        defs = tuple(_flatten(obj[k], f"{path}[{k!r}]", leaves, paths) for k in keys)
        return ("map", t, keys, defs)
    leaves.append(obj)
    paths.append(path)
    return None


def _unflatten(tdef, it):
    """Rebuild a value of shape tdef, taking leaves from iterator it."""
    if tdef is None:
        return next(it)
    kind, t, keys, defs = tdef
    if kind == "seq":
        items = [_unflatten(d, it) for d in defs]
        if t is list:
            return items
        if t is tuple:
            return tuple(items)
        return t(*items)  # namedtuple
    return t((k, _unflatten(d, it)) for k, d in zip(keys, defs))


def _leaf_count(tdef):
    return 1 if tdef is None else sum(_leaf_count(d) for d in tdef[3])


def _match_spec(spec, tdef, path, out, what):
    """Append one leaf spec per leaf of tdef to out: a leaf spec covers its whole subtree,
    a container spec must mirror the value's container (same length / same keys)."""
    if _is_leaf_spec(spec):
        out.extend([spec] * _leaf_count(tdef))
        return
    if isinstance(spec, (tuple, list)):
        if tdef is None or tdef[0] != "seq":
            raise ValueError(f"{what}: the spec at {path} is a {type(spec).__name__} of "
                             f"{len(spec)} but the value there is not a tuple or list")
        if len(spec) != len(tdef[3]):
            raise ValueError(f"{what}: the spec at {path} has {len(spec)} entries but the "
                             f"value there has {len(tdef[3])}")
        for i, (s, d) in enumerate(zip(spec, tdef[3])):
            _match_spec(s, d, f"{path}[{i}]", out, what)
        return
    if isinstance(spec, dict):
        if tdef is None or tdef[0] != "map":
            raise ValueError(f"{what}: the spec at {path} is a dict but the value there is "
                             f"not a dict")
        keys = tdef[2]
        missing = [k for k in keys if k not in spec]
        extra = [k for k in spec if k not in keys]
        if missing or extra:
            raise ValueError(f"{what}: the spec at {path} does not match the value's keys "
                             f"(no spec for {missing}, spec for absent keys {extra})")
        for k, d in zip(keys, tdef[3]):
            _match_spec(spec[k], d, f"{path}[{k!r}]", out, what)
        return
    hint = (f"; write TensorChunkSpec({spec}) (or TensorChunkSpec.from_tuple/from_dict)"
            if isinstance(spec, int) and not isinstance(spec, bool) else "")
    raise TypeError(f"{what}: invalid chunk spec {spec!r} at {path}: expected "
                    f"TensorChunkSpec, _Replicate, None, or a tuple/list/dict of them{hint}")


# ---- splitting ----

def _split_dim(value, spec, path, chunks, what):
    """The normalised dim a tensor leaf is cut along, after checking it can give `chunks`
    non-empty pieces."""
    d = spec.split_dim
    nd = value.ndim
    if nd == 0:
        raise ValueError(f"{what}: {path} is a 0-dimensional tensor and cannot be cut into "
                         f"{chunks} chunks; give it the spec _Replicate to pass it whole to "
                         f"every chunk")
    if not -nd <= d < nd:
        raise IndexError(f"{what}: {spec} is out of range for {path} with shape "
                         f"{tuple(value.shape)} (valid dims {-nd}..{nd - 1})")
    d %= nd
    n = value.shape[d]
    if n < chunks:
        raise ValueError(f"{what}: {path} has size {n} along dim {d} (shape "
                         f"{tuple(value.shape)}), fewer than chunks={chunks}; each of the "
                         f"{chunks} microbatches needs at least one element (use fewer "
                         f"microbatches or a larger batch)")
    return d


def _split_tree(values, specs, path_prefix, chunks, what):
    """Cut the containers in `values` (dict name -> value, with matching `specs`, a dict or
    None) into `chunks` copies of the same structure. Returns a list of `chunks` lists, one
    entry per key of `values`, in order."""
    leaves, paths, leaf_specs, tdefs = [], [], [], []
    for k, v in values.items():
        path = f"{path_prefix}[{k!r}]"
        tdef = _flatten(v, path, leaves, paths)
        _match_spec(None if specs is None else specs[k], tdef, path, leaf_specs, what)
        tdefs.append(tdef)
    assert len(leaf_specs) == len(leaves)

    per_leaf = []  # per leaf: a tuple of `chunks` values
    for value, spec, path in zip(leaves, leaf_specs, paths):
        if spec is None:
            spec = TensorChunkSpec(DEFAULT_CHUNK_DIM) if pipec.is_tensor(value) else _Replicate
        if _is_replicate(spec):
            per_leaf.append((value,) * chunks)
        elif isinstance(spec, TensorChunkSpec):
            if not pipec.is_tensor(value):
                raise TypeError(f"{what}: {path} has the spec {spec} but is a "
                                f"{type(value).__name__}, not a Tensor; use _Replicate for "
                                f"non-tensor values")
            d = _split_dim(value, spec, path, chunks, what)
            per_leaf.append(pipec.tensor_split(value, chunks, d))
        else:
            raise TypeError(f"{what}: {spec!r} at {path} is a merge-only spec; inputs take "
                            f"TensorChunkSpec, _Replicate or None")

    out = []
    for c in range(chunks):
        it = iter([pieces[c] for pieces in per_leaf])
        out.append([_unflatten(tdef, it) for tdef in tdefs])
    return out


def split_args_kwargs_into_chunks(args, kwargs, chunks, args_chunk_spec=None,
                                  kwargs_chunk_spec=None):
    """Cut whole-batch ``args`` (a tuple) and ``kwargs`` (a dict or None) into ``chunks``
    microbatches. Returns ``(args_chunks, kwargs_chunks)``: a list of ``chunks`` tuples and
    a list of ``chunks`` dicts. ``args_chunk_spec`` is a tuple with one spec per argument,
    ``kwargs_chunk_spec`` a dict with one spec per keyword; None means the defaults (tensors
    on dim 0, other values replicated). Tensor chunks are views of the inputs.

    Raises ValueError when a tensor is too short along its split dim to give every chunk an
    element, when a spec does not match its argument's structure or length, or when
    ``chunks`` is not positive; TypeError for a spec of the wrong kind or a tensor spec on a
    non-tensor."""
    what = "split_args_kwargs_into_chunks"
    if isinstance(chunks, bool) or not isinstance(chunks, int):
        raise TypeError(f"{what}: chunks must be an int, got {type(chunks).__name__}")
    if chunks < 1:
        raise ValueError(f"{what}: chunks must be at least 1, got {chunks}")
    if kwargs is None:
        kwargs = {}
    if not isinstance(args, (tuple, list)):
        raise TypeError(f"{what}: args must be a tuple, got {type(args).__name__}")
    if not isinstance(kwargs, dict):
        raise TypeError(f"{what}: kwargs must be a dict or None, got {type(kwargs).__name__}")
    args = tuple(args)

    if args_chunk_spec is not None:
        if not isinstance(args_chunk_spec, (tuple, list)):
            raise TypeError(f"{what}: args_chunk_spec must be a tuple with one spec per "
                            f"argument, got {type(args_chunk_spec).__name__}")
        if len(args_chunk_spec) != len(args):
            raise ValueError(f"{what}: args_chunk_spec has {len(args_chunk_spec)} entries "
                             f"but there are {len(args)} positional arguments")
        args_chunk_spec = dict(enumerate(args_chunk_spec))
    if kwargs_chunk_spec is not None:
        if not isinstance(kwargs_chunk_spec, dict):
            raise TypeError(f"{what}: kwargs_chunk_spec must be a dict with one spec per "
                            f"keyword argument, got {type(kwargs_chunk_spec).__name__}")
        missing = [k for k in kwargs if k not in kwargs_chunk_spec]
        extra = [k for k in kwargs_chunk_spec if k not in kwargs]
        if missing or extra:
            raise ValueError(f"{what}: kwargs_chunk_spec keys {list(kwargs_chunk_spec)} do not "
                             f"match the keyword arguments {list(kwargs)} (no spec for "
                             f"{missing}, spec for absent keywords {extra})")

    arg_chunks = _split_tree(dict(enumerate(args)), args_chunk_spec, "args", chunks, what)
    kwarg_chunks = _split_tree(kwargs, kwargs_chunk_spec, "kwargs", chunks, what)
    keys = list(kwargs)
    return ([tuple(a) for a in arg_chunks],
            [dict(zip(keys, kw)) for kw in kwarg_chunks])


# ---- merging ----

def _values_equal(a, b):
    if a is b:
        return True
    if pipec.is_tensor(a) or pipec.is_tensor(b):
        # never ask ==: it is elementwise for tensors, and a 1-element tensor would pass as
        # equal to the number chunk 0 holds
        return False
    try:
        return bool(a == b)
    except Exception:  # an __eq__ that does not give a truth value: cannot tell, accept
        return True


def merge_chunks(chunks, chunk_spec):
    """Merge per-microbatch outputs ``chunks`` (a list, one entry per microbatch, all with the
    same structure) into one whole-batch output of that structure.

    ``chunk_spec`` mirrors the output's structure (or is one leaf spec for all of it):
    ``TensorChunkSpec(d)`` concatenates along ``d``, ``_CustomReducer`` folds the chunks'
    values, ``_Replicate`` keeps the first chunk's value (which every chunk must share).
    ``None`` (whole or per subtree) concatenates tensors along dim 0 and takes non-tensor
    values from the first chunk."""
    what = "merge_chunks"
    if not isinstance(chunks, (list, tuple)):
        raise TypeError(f"{what}: chunks must be a list of per-microbatch outputs, got "
                        f"{type(chunks).__name__}")
    if len(chunks) == 0:
        raise ValueError(f"{what}: no chunks to merge")

    flat = []
    tdef0 = None
    paths = None
    for i, c in enumerate(chunks):
        leaves, p = [], []
        tdef = _flatten(c, "output", leaves, p)
        if i == 0:
            tdef0, paths = tdef, p
        elif tdef != tdef0:
            raise ValueError(f"{what}: chunk {i} has a different structure from chunk 0")
        flat.append(leaves)

    leaf_specs = []
    _match_spec(chunk_spec, tdef0, "output", leaf_specs, what)

    merged = []
    for j, (spec, path) in enumerate(zip(leaf_specs, paths)):
        values = [leaves[j] for leaves in flat]
        if spec is None:
            if not pipec.is_tensor(values[0]):
                merged.append(values[0])
                continue
            spec = TensorChunkSpec(DEFAULT_CHUNK_DIM)
        if isinstance(spec, TensorChunkSpec):
            for i, v in enumerate(values):
                if not pipec.is_tensor(v):
                    raise TypeError(f"{what}: {path} of chunk {i} is a {type(v).__name__}, "
                                    f"not a Tensor, so it cannot be concatenated ({spec})")
            if values[0].ndim == 0:
                raise ValueError(f"{what}: {path} is a 0-dimensional tensor and cannot be "
                                 f"concatenated along dim {spec.split_dim}; give it the spec "
                                 f"sum_reducer or _Replicate")
            try:
                merged.append(pipec.cat(list(values), spec.split_dim))
            except (ValueError, TypeError, IndexError, RuntimeError) as e:
                raise type(e)(f"{what}: cannot concatenate {path} along dim "
                              f"{spec.split_dim}: {e}") from None
        elif isinstance(spec, _CustomReducer):
            acc = spec.init_value
            for v in values:
                acc = spec.reduce_fn(acc, v)
            merged.append(acc)
        else:  # _Replicate
            v0 = values[0]
            if not pipec.is_tensor(v0):
                for i, v in enumerate(values[1:], 1):
                    if not _values_equal(v, v0):
                        raise ValueError(f"{what}: {path} is replicated but chunk {i} holds "
                                         f"{v!r} while chunk 0 holds {v0!r}")
            merged.append(v0)
    return _unflatten(tdef0, iter(merged))

"""Split policies: where pipeline() cuts a traced model when no pipe_split() marks it.

``pipeline(model, mb_args, split_policy=policy)`` traces the model as usual and calls
``policy(graph)`` with a :class:`TracedGraph`: the recorded calls in order, the parameters
each reads, what tracing measured (matrix-product flops, output sizes) and the elements of the
values that would cross each possible cut. The policy returns the stage boundaries: the
instruction indices at which stages 1, 2, ... begin. (torch's ``split_policy`` is a pass over
a ``torch.fx.GraphModule``; pipec's graph is its own, so its policies are written against
``TracedGraph``.)

Built-in policies:
  * :func:`split_into_equal_size` — n stages with equal shares of the parameters;
  * :func:`split_on_size_threshold` — a new stage whenever a stage's parameters would pass a
    threshold;
  * :func:`split_into_equal_flops` — n stages with equal shares of the forward compute.
Among cuts that balance equally well (a run of parameter-free calls between two layers, say)
each picks the one across which the fewest activation elements travel, so a residual block is
not cut between its branch and its sum.
"""

import collections
import math

__all__ = ["TracedGraph", "GraphInstruction", "split_into_equal_size",
           "split_on_size_threshold", "split_into_equal_flops"]

GraphInstruction = collections.namedtuple(
    "GraphInstruction", ["index", "op", "params", "flops", "out_elements"])
GraphInstruction.__doc__ = """One recorded call of a traced model.

index: its position; op: the call's name ("linear", "relu", a custom Function's name...);
params: names of the parameters and buffers it reads; flops: floating-point operations of
the matrix products it ran while tracing (a custom Function's body included); out_elements:
elements of its outputs."""


class TracedGraph:
    """A traced model as a split policy sees it (read-only).

    ``instructions``: the :class:`GraphInstruction` list in execution order;
    ``marks``: boundaries the model set itself with ``pipe_split()``;
    ``parameters``: {name: elements} of every parameter and buffer the model read;
    ``param_first_use``: {name: index of the first instruction reading it};
    ``crossing``: ``crossing[c]`` is the number of activation elements (model inputs and
    values made by instructions before ``c`` that are used at ``c`` or later, or returned)
    that a boundary at ``c`` would send from one stage to the next."""

    def __init__(self, program, slot_names, input_numels):
        # slot_names: {external slot: (name, tensor)} of the parameters and buffers
        ext = {s: name for s, (name, _) in slot_names.items()}
        instrs = program.instructions()
        n = len(instrs)
        made_at, size = {}, {}
        for slot, numel in zip(program.input_slots, input_numels):
            made_at[slot], size[slot] = -1, numel
        last_use = {}
        listed = []
        for k, (op, ins, outs, numels, flops) in enumerate(instrs):
            names = []
            for s in ins:
                if s in ext:
                    if ext[s] not in names:
                        names.append(ext[s])
                elif s in made_at:
                    last_use[s] = k
            for s, numel in zip(outs, numels):
                if s not in made_at:  # an in-place call keeps its input's slot
                    made_at[s], size[s] = k, numel
            listed.append(GraphInstruction(k, op, tuple(names), flops, sum(numels)))
        for s in program.output_slots:
            if s in made_at:
                last_use[s] = n  # returned: travels to the last stage
        self.instructions = tuple(listed)
        self.marks = tuple(program.marks)
        # activation elements alive across each cut: +size from the cut after it is made up
        # to its last use
        delta = [0] * (n + 2)
        for s, k in made_at.items():
            end = last_use.get(s, k)
            if end > k:
                delta[k + 1] += size[s]
                delta[end + 1] -= size[s]
        crossing, running = [], 0
        for c in range(n + 1):
            running += delta[c]
            crossing.append(running)
        self.crossing = tuple(crossing)
        self.param_first_use = {}
        for ins in listed:
            for name in ins.params:
                self.param_first_use.setdefault(name, ins.index)
        self.parameters = {name: t.numel() for name, t in slot_names.values()
                           if name in self.param_first_use}

    def __len__(self):
        return len(self.instructions)

    def param_elements(self):
        """Per instruction, the elements of the parameters it is the first to read (a
        parameter shared by several calls counts once, where it is first used)."""
        out = [0] * len(self.instructions)
        for name, k in self.param_first_use.items():
            out[k] += self.parameters[name]
        return out

    def compute(self):
        """Per instruction, an estimate of its forward work: its matrix products' flops plus
        one operation per output element."""
        return [ins.flops + ins.out_elements for ins in self.instructions]

    def balanced_boundaries(self, weights, n_stages, tolerance=0.0):
        """Boundaries cutting the instructions into ``n_stages`` non-empty stages whose sums
        of ``weights`` are as equal as cumulative sums allow: boundary j goes where the
        running sum is nearest j/n of the total. Among cuts whose running sum is within
        ``tolerance`` of a stage's share of that nearest one, the cut with the fewest
        crossing elements wins (ties: the nearest)."""
        n = len(self.instructions)
        if not isinstance(n_stages, int) or isinstance(n_stages, bool) or n_stages < 1:
            raise ValueError(f"n_stages must be a positive int, got {n_stages!r}")
        if len(weights) != n:
            raise ValueError(f"{len(weights)} weights for {n} instructions")
        if n_stages > n:
            raise ValueError(f"cannot cut {n} traced calls into {n_stages} non-empty stages")
        prefix = [0.0]
        for w in weights:
            if w < 0 or not math.isfinite(w):
                raise ValueError(f"weights must be finite and non-negative, got {w!r}")
            prefix.append(prefix[-1] + w)
        total = prefix[-1]
        share = total / n_stages
        cuts, prev = [], 0
        for j in range(1, n_stages):
            lo, hi = prev + 1, n - (n_stages - j)  # leave room for the stages still to come
            target = j * share
            best = min(range(lo, hi + 1), key=lambda c: abs(prefix[c] - target))
            slack = abs(prefix[best] - target) + tolerance * share
            ok = [c for c in range(lo, hi + 1) if abs(prefix[c] - target) <= slack]
            prev = min(ok, key=lambda c: (self.crossing[c], abs(prefix[c] - target), c))
            cuts.append(prev)
        return cuts

    def cheapest_cut_before(self, k, weights, lo):
        """The cut in [lo, k] with the fewest crossing elements among those that leave the
        running sum of ``weights`` as it is at k (only weightless calls lie between)."""
        c = k
        while c - 1 >= lo and weights[c - 1] == 0:
            c -= 1
        return min(range(c, k + 1), key=lambda x: (self.crossing[x], -x))


def _graph_for_policy(graph, name):
    if graph.marks:
        raise ValueError(f"{name}: the model calls pipe_split() itself (boundaries at "
                         f"{list(graph.marks)}); a split policy places every boundary, so "
                         "remove the pipe_split() calls or pass no split_policy")
    return graph


def split_into_equal_size(nstages=1):
    """A split policy cutting the model into ``nstages`` stages holding equal shares of its
    parameter and buffer elements (each counted at its first use)."""
    def policy(graph):
        _graph_for_policy(graph, "split_into_equal_size")
        weights = graph.param_elements()
        if not any(weights):
            raise ValueError("split_into_equal_size: the traced model reads no parameters; "
                             "use split_into_equal_flops")
        return graph.balanced_boundaries(weights, nstages)
    policy.__name__ = f"split_into_equal_size({nstages})"
    return policy


def split_on_size_threshold(threshold):
    """A split policy starting a new stage before the call whose parameters would take the
    current stage past ``threshold`` elements (a stage whose first call alone passes it
    still holds that call)."""
    if not isinstance(threshold, int) or isinstance(threshold, bool) or threshold < 1:
        raise ValueError(f"threshold must be a positive number of elements, got {threshold!r}")

    def policy(graph):
        _graph_for_policy(graph, "split_on_size_threshold")
        weights = graph.param_elements()
        cuts, acc, start = [], 0, 0
        for k, w in enumerate(weights):
            if w and acc and acc + w > threshold:
                cut = graph.cheapest_cut_before(k, weights, start + 1)
                cuts.append(cut)
                start, acc = cut, sum(weights[cut:k])
            acc += w
        return cuts
    policy.__name__ = f"split_on_size_threshold({threshold})"
    return policy


def split_into_equal_flops(nstages=1):
    """A split policy cutting the model into ``nstages`` stages of equal forward work as
    tracing measured it (matrix-product flops plus one per output element). A boundary may
    move by up to 5% of a stage's share to cut where fewer activation elements cross."""
    def policy(graph):
        _graph_for_policy(graph, "split_into_equal_flops")
        return graph.balanced_boundaries(graph.compute(), nstages, tolerance=0.05)
    policy.__name__ = f"split_into_equal_flops({nstages})"
    return policy


class _FixedBoundaries:
    """The boundaries a policy chose, applied again to a later trace of the same model (on
    microbatches of other shapes): the same cut, not the policy's choice for those sizes."""

    def __init__(self, marks):
        self.marks = tuple(marks)

    def __call__(self, graph):
        return self.marks


def boundaries_from(policy, graph):
    """Run ``policy`` on ``graph`` and check its answer: strictly increasing ints in
    [1, len(graph) - 1]."""
    if not callable(policy):
        raise TypeError(f"split_policy must be callable (TracedGraph -> boundaries), got "
                        f"{type(policy).__name__}")
    cuts = policy(graph)
    name = getattr(policy, "__name__", "split_policy")
    if cuts is None:
        raise ValueError(f"{name} returned None; a split policy returns the stage boundaries "
                         "(instruction indices where stages 1, 2, ... begin)")
    try:
        cuts = list(cuts)
    except TypeError:
        raise TypeError(f"{name} returned {type(cuts).__name__}; expected a sequence of "
                        "instruction indices") from None
    n = len(graph)
    for i, c in enumerate(cuts):
        if not isinstance(c, int) or isinstance(c, bool):
            raise TypeError(f"{name}: boundary {i} is {c!r}, not an int")
        if not 1 <= c <= n - 1 or (i and c <= cuts[i - 1]):
            raise ValueError(f"{name} returned boundaries {cuts}: they must be strictly "
                             f"increasing instruction indices in [1, {n - 1}] (the traced "
                             f"model has {n} calls)")
    return cuts

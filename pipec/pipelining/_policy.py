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
The equal policies make the largest stage as small as possible; among the cuttings that do
(within 5% for flops), they take the one across which the fewest activation elements
travel, so a residual block is not cut between its branch and its sum. No policy may cut
where an in-place write would be lost (``TracedGraph.unsafe_cuts``).
"""

import collections
import math
import operator

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
    that a boundary at ``c`` would send from one stage to the next;
    ``live``: per instruction, whether its result reaches the model's outputs (or it
    writes in place); dead calls weigh nothing in the built-in policies;
    ``unsafe_cuts``: boundaries that may separate an in-place write from another view of the
    memory it writes (or a parameter/buffer written in place from another stage using
    it): each stage holds its own copies, so the write could be lost. The built-in
    policies never choose them. The set is cautious: ``pipeline()``'s own check (in C)
    refuses only cuttings that do lose a write, which may allow some of these."""

    def __init__(self, program, slot_names, input_numels):
        # slot_names: {external slot: (name, tensor)} of the parameters and buffers
        ext = {s: name for s, (name, _) in slot_names.items()}
        instrs = program.instructions()
        n = len(instrs)
        inputs = set(program.input_slots)
        made_at, size = {}, {}
        for slot, numel in zip(program.input_slots, input_numels):
            made_at[slot], size[slot] = -1, numel
        last_use, readers = {}, collections.defaultdict(list)
        listed = []
        for k, (op, ins, outs, numels, flops, inplace) in enumerate(instrs):
            names = []
            for s in ins:
                if s < 0:
                    continue
                readers[s].append(k)
                if s in ext:
                    if ext[s] not in names:
                        names.append(ext[s])
                elif s in made_at:
                    last_use[s] = k
            for o, (s, numel) in enumerate(zip(outs, numels)):
                if inplace and o == 0:
                    continue  # an in-place call keeps its input's slot (maybe a buffer)
                if s not in made_at:
                    made_at[s], size[s] = k, numel
            listed.append(GraphInstruction(k, op, tuple(names), flops, sum(numels)))
        returned = set(program.output_slots)
        for s in returned:
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
        self.live = self._liveness(instrs, returned)
        self.unsafe_cuts = self._unsafe_cuts(program, instrs, inputs, made_at, readers)
        self.param_first_use = {}
        for ins in listed:
            if self.live[ins.index]:
                for name in ins.params:
                    self.param_first_use.setdefault(name, ins.index)
        self.parameters = {name: t.numel() for name, t in slot_names.values()
                           if name in self.param_first_use}

    @staticmethod
    def _liveness(instrs, returned):
        """Per instruction: whether an output is returned or read by a live call (in-place
        writes and custom Functions count as live)."""
        needed = set(returned)
        live = [False] * len(instrs)
        for k in range(len(instrs) - 1, -1, -1):
            op, ins, outs, _, _, inplace = instrs[k]
            if inplace or any(o in needed for o in outs):
                live[k] = True
                needed.update(s for s in ins if s >= 0)
        return tuple(live)

    @staticmethod
    def _unsafe_cuts(program, instrs, inputs, made_at, readers):
        """Boundaries c (1 <= c < n) at which an in-place write would be lost (the rule of
        the C split's check, for one cut at a time; a set of cuts is safe when each is)."""
        roots = program.alias_roots
        n = len(instrs)
        if roots is None:
            return frozenset()
        groups = collections.defaultdict(list)
        for s, r in enumerate(roots):
            groups[r].append(s)
        bad = set()
        for k, (_, ins, _, _, _, inplace) in enumerate(instrs):
            if not inplace or not ins or ins[0] < 0:
                continue
            t = ins[0]
            members = groups[roots[t]]
            if any(s not in made_at for s in members):  # a parameter, buffer or constant:
                uses = [j for s in members for j in readers.get(s, ())] + [k]
                bad.update(range(min(uses) + 1, max(uses) + 1))  # all in one stage
                continue
            # another alias made before the cut and read after the write misses it
            for s in members:
                if s == t or not any(j > k for j in readers.get(s, ())) and s not in \
                        program.output_slots:
                    continue
                first = 0 if s in inputs else made_at[s] + 1
                bad.update(range(max(first, 1), k + 1))
        return frozenset(c for c in bad if 1 <= c < n)

    def __len__(self):
        return len(self.instructions)

    def param_elements(self):
        """Per instruction, the elements of the parameters it is the first to read (a
        parameter shared by several calls counts once, where it is first used; calls whose
        results are never used count nothing)."""
        out = [0] * len(self.instructions)
        for name, k in self.param_first_use.items():
            out[k] += self.parameters[name]
        return out

    def compute(self):
        """Per instruction, an estimate of its forward work: its matrix products' flops plus
        one operation per output element (0 for calls whose results are never used)."""
        return [(ins.flops + ins.out_elements) if live else 0
                for ins, live in zip(self.instructions, self.live)]

    def balanced_boundaries(self, weights, n_stages, tolerance=0.0):
        """Boundaries cutting the instructions into ``n_stages`` non-empty stages whose
        largest sum of ``weights`` is the smallest possible (L), avoiding ``unsafe_cuts``.
        Among the cuttings whose stages all stay within ``(1 + tolerance) * L``, the one
        sending the fewest activation elements across its boundaries wins; ties go to the
        cuts nearest their even shares."""
        n_stages = _positive_int(n_stages, "n_stages")
        n = len(self.instructions)
        if len(weights) != n:
            raise ValueError(f"{len(weights)} weights for {n} instructions")
        if n_stages == 1:
            return []
        allowed = [c for c in range(1, n) if c not in self.unsafe_cuts]
        if n_stages - 1 > len(allowed):
            raise ValueError(f"cannot cut {n} traced calls into {n_stages} non-empty stages"
                             + (f" ({n - 1 - len(allowed)} cut positions would lose an "
                                "in-place write)" if len(allowed) < n - 1 else ""))
        prefix = [0.0]
        for w in weights:
            if w < 0 or not math.isfinite(w):
                raise ValueError(f"weights must be finite and non-negative, got {w!r}")
            prefix.append(prefix[-1] + w)
        points = [0] + allowed + [n]

        def stages_needed(cap):
            """Fewest stages with every sum <= cap (None: impossible), cutting greedily at
            the furthest allowed point."""
            count, start, i = 1, 0, 0
            while True:
                j = i
                while j + 1 < len(points) and prefix[points[j + 1]] - prefix[start] <= cap:
                    j += 1
                if points[j] == n:
                    return count
                if j == i:
                    return None
                count, start, i = count + 1, points[j], j

        # the smallest feasible cap, bisected to far below the slack added to it (the
        # whole sum is feasible: one stage, cut further at will)
        lo_v, best = max(weights, default=0.0), prefix[-1]
        for _ in range(100):
            mid = (lo_v + best) / 2
            need = stages_needed(mid)
            if need is not None and need <= n_stages:
                best = mid
            else:
                lo_v = mid
        cap = best * (1 + tolerance) + 1e-9 * max(1.0, prefix[-1])
        return self._cheapest_cutting(points, prefix, cap, n_stages)

    def _cheapest_cutting(self, points, prefix, cap, n_stages):
        """Among cuttings into n_stages at `points` with every stage sum <= cap: the fewest
        crossing elements, then the cuts nearest their even shares (the sum of
        |running sum - j * mean|). Both costs add up per boundary, so each layer of the
        dynamic program takes a sliding-window minimum: O(n_stages * len(points))."""
        n = points[-1]
        m = len(points)
        mean = prefix[-1] / n_stages
        inf = (math.inf, math.inf)
        prev = [inf] * m
        prev[0] = (0, 0.0)
        backs = []
        for j in range(1, n_stages):
            cur, back = [inf] * m, [-1] * m
            window = collections.deque()  # indices q, their prev[q] increasing
            q_next, lo = 0, 0
            for i in range(1, m - 1):
                while q_next < i:  # q < i become candidates
                    if prev[q_next][0] < math.inf:
                        while window and prev[window[-1]] >= prev[q_next]:
                            window.pop()
                        window.append(q_next)
                    q_next += 1
                while prefix[points[i]] - prefix[points[lo]] > cap:
                    lo += 1
                while window and window[0] < lo:
                    window.popleft()
                if window:
                    c = points[i]
                    best = prev[window[0]]
                    cur[i] = (best[0] + self.crossing[c],
                              best[1] + abs(prefix[c] - j * mean))
                    back[i] = window[0]
            prev = cur
            backs.append(back)
        best, at = inf, -1
        for i in range(1, m - 1):
            if prefix[n] - prefix[points[i]] <= cap and prev[i] < best:
                best, at = prev[i], i
        if at < 0:
            raise ValueError("no cutting fits the balanced bound (internal error)")
        cuts = []
        for back in reversed(backs):
            cuts.append(points[at])
            at = back[at]
        return sorted(cuts)

    def cheapest_cut_before(self, k, weights, lo):
        """The safe cut in [lo, k] with the fewest crossing elements among those that leave
        the running sum of ``weights`` as it is at k (only weightless calls lie between);
        None when every one of them is unsafe."""
        c = k
        while c - 1 >= lo and weights[c - 1] == 0:
            c -= 1
        safe = [x for x in range(c, k + 1) if x not in self.unsafe_cuts]
        return min(safe, key=lambda x: (self.crossing[x], -x)) if safe else None


def _as_int(value):
    """value as an int (anything operator.index accepts: NumPy integers too), or None for a
    bool or a non-integer."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def _positive_int(value, what):
    """value as an int >= 1, else ValueError naming `what`."""
    as_int = _as_int(value)
    if as_int is None or as_int < 1:
        raise ValueError(f"{what} must be a positive int, got {value!r}")
    return as_int


def _graph_for_policy(graph, name):
    if graph.marks:
        raise ValueError(f"{name}: the model calls pipe_split() itself (boundaries at "
                         f"{list(graph.marks)}); a split policy places every boundary, so "
                         "remove the pipe_split() calls or pass no split_policy")
    return graph


def split_into_equal_size(nstages=1):
    """A split policy cutting the model into ``nstages`` stages so that the largest stage's
    share of parameter and buffer elements (each counted at its first use) is as small as
    possible."""
    nstages = _positive_int(nstages, "n_stages")

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
    still holds that call). A parameter used by several stages (tied weights) counts in
    each of them: each holds a copy."""
    if isinstance(threshold, float) and threshold.is_integer():
        threshold = int(threshold)
    threshold = _as_int(threshold)
    if threshold is None or threshold < 1:
        raise ValueError("threshold must be a positive number of elements")

    def policy(graph):
        _graph_for_policy(graph, "split_on_size_threshold")
        numel = graph.parameters
        uses = [[p for p in ins.params if p in numel] if graph.live[ins.index]
                else [] for ins in graph.instructions]
        weights = [1 if u else 0 for u in uses]  # which calls hold parameters
        cuts, start, seen, acc = [], 0, set(), 0
        for k, params in enumerate(uses):
            new = [p for p in params if p not in seen]
            w = sum(numel[p] for p in new)
            if w and acc and acc + w > threshold:
                cut = graph.cheapest_cut_before(k, weights, start + 1)
                if cut is not None:
                    cuts.append(cut)
                    start = cut
                    seen = {p for u in uses[cut:k] for p in u}
                    acc = sum(numel[p] for p in seen)
                    new = [p for p in params if p not in seen]
                    w = sum(numel[p] for p in new)
            seen.update(new)
            acc += w
        return cuts
    policy.__name__ = f"split_on_size_threshold({threshold})"
    return policy


def split_into_equal_flops(nstages=1):
    """A split policy cutting the model into ``nstages`` stages so that the largest stage's
    forward work as tracing measured it (matrix-product flops plus one per output element)
    is as small as possible, within 5%: inside that margin the cut sends the fewest
    activation elements across."""
    nstages = _positive_int(nstages, "n_stages")

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
    """Run ``policy`` on ``graph`` and check its answer: non-decreasing ints in [0, n]
    (boundaries at 0 or n and repeats make no stage and are dropped, as pipe_split() at
    the start or twice in a row makes none)."""
    if not callable(policy):
        raise TypeError(f"split_policy must be callable (TracedGraph -> boundaries), got "
                        f"{type(policy).__name__}")
    answer = policy(graph)
    name = getattr(policy, "__name__", "split_policy")
    if answer is None:
        raise ValueError(f"{name} returned None; a split policy returns the stage boundaries "
                         "(instruction indices where stages 1, 2, ... begin)")
    try:
        answer = list(answer)
    except TypeError:
        raise TypeError(f"{name} returned {type(answer).__name__}; expected a sequence of "
                        "instruction indices") from None
    n = len(graph)
    cuts = []
    for i, value in enumerate(answer):
        c = _as_int(value)
        if c is None:
            raise TypeError(f"{name}: boundary {i} is {value!r}, not an int")
        if not 0 <= c <= n or (cuts and c < cuts[-1]):
            raise ValueError(f"{name} returned boundaries {answer}: they must be "
                             f"non-decreasing instruction indices in [0, {n}] (the traced "
                             f"model has {n} calls)")
        cuts.append(c)
    # a cutting that loses an in-place write is refused by Program.split (in C)
    return sorted({c for c in cuts if 0 < c < n})

"""Pictures and traces of pipeline timelines: Gantt charts, Chrome/Perfetto traces, bubbles.

Input ("events") is any of:

* ``LocalPipeline.timeline()`` (or a schedule's ``timeline()``): a flat list of
  ``(rank, action, start_us, end_us)``, times in microseconds;
* a ``schedules.simulate()`` result, or its ``.timeline``: one list per rank of
  ``(action, start, end)``, times in the simulation's cost units;
* a dict ``{rank: [(action, start, end), ...]}``;
* an object with a ``timeline()`` method (a LocalPipeline), which is called.

Actions use the schedule text form (``0F1``, ``3I0``, ``2W5``, ``1B3``,
``(0F3;3B1)OVERLAP_F_B``). Only compute actions (F, I, W, B, OVERLAP_F_B) count as busy
time and get drawn; SEND/RECV/REDUCE_GRAD/UNSHARD/RESHARD from a simulation are skipped by
the chart and the bubble numbers (they keep their place in the Chrome trace).

Exports: ``bubble_fraction``, ``plot_timeline`` (matplotlib, optional dependency, imported
on use), ``export_chrome_trace``.
"""

import json
import os
import re

__all__ = ["bubble_fraction", "plot_timeline", "export_chrome_trace"]

_SIMPLE = re.compile(r"^(\d+)(F|I|W|B)(\d+)$")
_OVERLAP = re.compile(r"^\((.*)\)OVERLAP_F_B$")
_COMPUTE_KINDS = ("F", "I", "W", "B", "OVERLAP_F_B")

# one colour per action type; a rank's second (third...) stage is drawn in a lighter shade
_COLORS = {"F": "#4c72b0", "I": "#dd8452", "W": "#8172b3", "B": "#55a868",
           "OVERLAP_F_B": "#c44e52"}
_KIND_NAMES = {"F": "F forward", "I": "I input grad", "W": "W weight grad",
               "B": "B full backward", "OVERLAP_F_B": "F&B overlapped"}


# ---- reading events ----

def _parse(action):
    """(kind, [(stage, microbatch), ...]) of an action text; kind is None for non-compute
    actions (SEND_F, REDUCE_GRAD, ...)."""
    text = str(action).strip()
    m = _SIMPLE.match(text)
    if m:
        return m.group(2), [(int(m.group(1)), int(m.group(3)))]
    m = _OVERLAP.match(text)
    if m:
        parts = []
        for sub in m.group(1).split(";"):
            s = _SIMPLE.match(sub.strip())
            if s:
                parts.append((int(s.group(1)), int(s.group(3))))
        return "OVERLAP_F_B", parts
    return None, []


def _is_flat_event(item):
    return (isinstance(item, (tuple, list)) and len(item) == 4
            and isinstance(item[0], int) and not isinstance(item[0], bool)
            and isinstance(item[1], str))


def _normalize(events):
    """(list of (rank, action, start, end) floats sorted by rank then start, unit) where unit
    is "us" for LocalPipeline timelines and "units" for simulated ones."""
    if hasattr(events, "timeline"):
        tl = events.timeline
        events = tl() if callable(tl) else tl
        if not callable(tl):  # a SimulationResult
            return _from_rows(enumerate(events)), "units"
    if isinstance(events, dict):
        return _from_rows(sorted(events.items())), "units"
    events = list(events)
    if not events:
        return [], "us"
    if all(_is_flat_event(e) for e in events):
        out = []
        for rank, action, start, end in events:
            start, end = float(start), float(end)
            if end < start:
                raise ValueError(f"event {action!r} on rank {rank} ends ({end}) before it "
                                 f"starts ({start})")
            out.append((rank, action, start, end))
        out.sort(key=lambda e: (e[0], e[2], e[3]))
        return out, "us"
    return _from_rows(enumerate(events)), "units"


def _from_rows(rows):
    out = []
    for rank, row in rows:
        for item in row:
            if not (isinstance(item, (tuple, list)) and len(item) == 3):
                raise TypeError(
                    "events must be LocalPipeline.timeline() tuples (rank, action, start, "
                    "end), a simulate() result, or per-rank lists of (action, start, end); "
                    f"got {item!r} for rank {rank}")
            action, start, end = item
            start, end = float(start), float(end)
            if end < start:
                raise ValueError(f"event {action!r} on rank {rank} ends ({end}) before it "
                                 f"starts ({start})")
            out.append((int(rank), str(action), start, end))
    out.sort(key=lambda e: (e[0], e[2], e[3]))
    return out


def _compute_only(norm):
    return [e for e in norm if _parse(e[1])[0] is not None]


def _busy(intervals):
    """Length of the union of (start, end) intervals."""
    total = 0.0
    cur_s = cur_e = None
    for s, e in sorted(intervals):
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        total += cur_e - cur_s
    return total


def _bubbles(comp, ranks=None):
    if not comp:
        return {r: 0.0 for r in (ranks or [])}
    t0 = min(e[2] for e in comp)
    t1 = max(e[3] for e in comp)
    span = t1 - t0
    if ranks is None:
        ranks = sorted({e[0] for e in comp})
    out = {}
    for r in ranks:
        busy = _busy([(e[2], e[3]) for e in comp if e[0] == r])
        out[r] = 0.0 if span <= 0 else max(0.0, 1.0 - busy / span)
    return out


# ---- public API ----

def bubble_fraction(events):
    """{rank: idle fraction} over the window from the first compute start to the last compute
    end across all ranks (so a rank that starts late or finishes early is charged for it).

    Busy time is the union of the rank's compute actions (F, I, W, B, OVERLAP_F_B);
    communication and bookkeeping actions count as idle. Ranks without compute actions are
    absent (they have nothing to measure); no events gives {}."""
    norm, _ = _normalize(events)
    return _bubbles(_compute_only(norm))


def export_chrome_trace(events, path):
    """Write a Chrome / Perfetto trace (JSON, open in chrome://tracing or ui.perfetto.dev).

    One complete event (``ph: "X"``) per action: ``pid`` = rank, ``tid`` = 0, ``ts`` and
    ``dur`` in microseconds (simulated timelines keep their cost units as microseconds),
    ``name`` = the action text, ``cat`` = its type (F, I, W, B, OVERLAP_F_B, or ``comm`` for
    the rest), ``args`` = stage and microbatch. Each rank also gets a ``process_name``
    metadata event. Returns the trace dict that was written."""
    norm, _ = _normalize(events)
    trace = []
    for rank in sorted({e[0] for e in norm}):
        trace.append({"name": "process_name", "ph": "M", "pid": rank, "tid": 0,
                      "args": {"name": f"rank {rank}"}})
        trace.append({"name": "process_sort_index", "ph": "M", "pid": rank, "tid": 0,
                      "args": {"sort_index": rank}})
    for rank, action, start, end in norm:
        kind, parts = _parse(action)
        args = {}
        if len(parts) == 1:
            args = {"stage": parts[0][0], "microbatch": parts[0][1]}
        elif parts:
            args = {"stages": [p[0] for p in parts], "microbatches": [p[1] for p in parts]}
        trace.append({"name": action, "cat": kind or "comm", "ph": "X", "pid": rank, "tid": 0,
                      "ts": start, "dur": end - start, "args": args})
    doc = {"traceEvents": trace, "displayTimeUnit": "ms"}
    with open(os.fspath(path), "w") as f:
        json.dump(doc, f, indent=None, separators=(",", ":"))
        f.write("\n")
    return doc


def _lighten(color, amount):
    from matplotlib.colors import to_rgb
    r, g, b = to_rgb(color)
    return (r + (1 - r) * amount, g + (1 - g) * amount, b + (1 - b) * amount)


def _luminance(color):
    from matplotlib.colors import to_rgb
    r, g, b = to_rgb(color)
    return 0.299 * r + 0.587 * g + 0.114 * b


def _label(kind, parts):
    """Bar labels from longest to shortest; the chart uses the first that fits."""
    if kind == "OVERLAP_F_B" and len(parts) == 2:
        (s0, m0), (s1, m1) = parts
        return [f"{s0}F{m0}+{s1}B{m1}", f"{m0}+{m1}"]
    if len(parts) == 1:
        s, m = parts[0]
        return [f"{s}{kind}{m}", f"{m}"]
    return []


def plot_timeline(events, path=None, title=None, n_ranks=None, dpi=80, width=12.0):
    """Per-rank Gantt chart of a pipeline timeline; returns the matplotlib Figure.

    One row per rank (rank 0 on top); bars coloured by action type (F, I, W, B, overlapped
    F&B; a rank's later stages in a lighter shade), labelled stage/type/microbatch when the
    bar is wide enough; the grey band behind each row is the step window, so idle time shows
    as grey. Each row label carries the rank's bubble fraction (see bubble_fraction).
    n_ranks: rows to draw (default: highest rank seen + 1). path: also save a PNG there
    (at ``dpi``). Needs matplotlib (drawn with the Agg canvas; pyplot is not touched)."""
    try:
        from matplotlib.figure import Figure
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.patches import Patch
    except ImportError as e:
        raise ImportError("pipec.viz.plot_timeline needs matplotlib: "
                          "pip install matplotlib") from e

    norm, unit = _normalize(events)
    comp = _compute_only(norm)
    seen = sorted({e[0] for e in comp})
    if n_ranks is None:
        n_ranks = (max(seen) + 1) if seen else 1
    if n_ranks < 1:
        raise ValueError(f"n_ranks must be >= 1, got {n_ranks}")
    ranks = list(range(n_ranks))
    bubbles = _bubbles(comp, ranks)

    t0 = min((e[2] for e in comp), default=0.0)
    t1 = max((e[3] for e in comp), default=1.0)
    span = (t1 - t0) or 1.0
    if unit == "us":
        scale, xlabel = (1e-3, "time (ms)") if span >= 2000 else (1.0, "time (µs)")
    else:
        scale, xlabel = 1.0, "time (simulated cost units)"
    span_x = span * scale

    # which stages live on each rank, in first-seen order, for the shade of a bar
    stage_rank_order = {}
    for rank, action, _, _ in comp:
        for s, _ in _parse(action)[1]:
            lst = stage_rank_order.setdefault(rank, [])
            if s not in lst:
                lst.append(s)
    for lst in stage_rank_order.values():
        lst.sort()

    height = 1.3 + 0.75 * n_ranks
    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    fig.subplots_adjust(left=0.11, right=0.99, top=1 - 0.42 / height,
                        bottom=0.62 / height + 0.25 / height)

    ax.set_xlim(-0.01 * span_x, 1.01 * span_x)
    ax.set_ylim(n_ranks - 0.5, -0.5)
    fig.canvas.draw()  # fixes the axes' pixel size for the label-fit test
    ax_px = ax.get_window_extent().width
    px_per_x = ax_px / (1.02 * span_x)
    fontsize = 7
    char_px = 0.62 * fontsize * dpi / 72.0

    for r in ranks:
        ax.broken_barh([(0, span_x)], (r - 0.4, 0.8), facecolors="#e4e4e4", edgecolor="none",
                       zorder=1)
    for rank, action, start, end in comp:
        if rank >= n_ranks:
            continue
        kind, parts = _parse(action)
        color = _COLORS[kind]
        if kind != "OVERLAP_F_B" and parts:
            order = stage_rank_order.get(rank, [])
            pos = order.index(parts[0][0]) if parts[0][0] in order else 0
            if pos:
                color = _lighten(color, min(0.6, 0.4 * pos))
        x = (start - t0) * scale
        w = (end - start) * scale
        ax.broken_barh([(x, w)], (rank - 0.4, 0.8), facecolors=color, edgecolor="white",
                       linewidth=0.4, zorder=2)
        width_px = w * px_per_x
        for text in _label(kind, parts):
            if len(text) * char_px + 3 <= width_px:
                ax.text(x + w / 2, rank, text, ha="center", va="center", fontsize=fontsize,
                        color="white" if _luminance(color) < 0.55 else "black", zorder=3,
                        clip_on=True)
                break

    ax.set_yticks(ranks)
    ax.set_yticklabels([f"rank {r}\nbubble {bubbles[r]:.1%}" for r in ranks], fontsize=9)
    ax.set_xlabel(xlabel, fontsize=9)
    ax.tick_params(axis="x", labelsize=8)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    ax.tick_params(axis="y", length=0)
    if title:
        ax.set_title(title, fontsize=10, loc="left")
    kinds = [k for k in _COMPUTE_KINDS if any(_parse(e[1])[0] == k for e in comp)]
    handles = [Patch(facecolor=_COLORS[k], label=_KIND_NAMES[k]) for k in kinds]
    if any(len(v) > 1 for v in stage_rank_order.values()):
        handles.append(Patch(facecolor=_lighten("#777777", 0.4),
                             label="lighter: the rank's later stage"))
    handles.append(Patch(facecolor="#e4e4e4", label="idle"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8,
               frameon=False, bbox_to_anchor=(0.55, 0.0))
    if path is not None:
        fig.savefig(os.fspath(path), dpi=dpi)
    return fig

"""Pipeline schedules as data: actions, generated orders, CSV, lowering, validation, simulation.

Everything here is a thin layer over the C schedule layer (``csrc/sched/``, reached through
``pipec._C._sched_*``):

* ``schedule_ops(name, pp, n_microbatches, stages_per_rank=None, with_comms=False)``: the
  per-rank action order that ``torch.distributed.pipelining`` (2.11) reports for a schedule
  (``_schedule_visualizer.get_schedule_ops``), as lists of action strings with ``None`` for an
  idle slot; ``with_comms=True`` gives the lowered order torch's runtime executes.
* ``_Action`` / ``_ComputationType``: torch's action tuple and type enum; ``str(action)`` and
  ``_Action.from_str`` use torch's text form (``0F1``, ``2SEND_B3``, ``(0F3;3B1)OVERLAP_F_B``).
* ``load_csv`` / ``dump_csv``: one row per rank, one cell per action, empty cell = idle.
* ``lower``, ``validate``, ``simulate``, ``format_schedule``: lowering passes, the validator
  (errors show the step x rank grid), a cost-based dry run (makespan, bubble fraction, peak
  in-flight activations per rank, deadlock detection).
* torch's private helpers under their torch names (``_add_send_recv``, ``_merge_bw``,
  ``_add_reduce_grad``, ``_add_unshard_reshard``, ``_validate_schedule``,
  ``_simulate_comms_compute``, ``_format_pipeline_order``, ``generate_stage_to_rank_mapping``)
  so torch's schedule tests port by changing imports.

Differences from torch, on purpose:
* ``Schedule1F1B``'s informational order in torch numbers the last rank's forwards 1..n
  (microbatch 0 missing); ``schedule_ops`` reproduces that text, but ``with_comms=True``
  lowers the runnable order (forwards 0..n-1), since torch's own lowering rejects the text.
  Single-stage schedules are lowered too (torch's get_schedule_ops cannot lower them).
* Unknown names, bad ``stages_per_rank`` and constraint violations raise ``ValueError``
  (torch raises ``ValueError`` for constraints and asserts for stages_per_rank).
* Validation failures raise ``ScheduleValidationError``, a ``ValueError`` that is also an
  ``AssertionError`` (what torch raises); the action parser rejects trailing text.
"""
from __future__ import annotations

import operator
from enum import Enum
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

from .. import _C

__all__ = [
    "schedule_ops",
    "schedule_names",
    "load_csv",
    "dump_csv",
    "lower",
    "validate",
    "simulate",
    "format_schedule",
    "SimulationResult",
    "ScheduleValidationError",
    "generate_stage_to_rank_mapping",
]


# ---- actions ----

class _ComputationType(str, Enum):
    """Action types, valued by their text in the action grammar."""

    FORWARD = "F"
    BACKWARD_INPUT = "I"
    BACKWARD_WEIGHT = "W"
    UNSHARD = "UNSHARD"
    RESHARD = "RESHARD"
    SEND_F = "SEND_F"
    RECV_F = "RECV_F"
    SEND_B = "SEND_B"
    RECV_B = "RECV_B"
    FULL_BACKWARD = "B"
    OVERLAP_F_B = "OVERLAP_F_B"
    REDUCE_GRAD = "REDUCE_GRAD"

    def __str__(self) -> str:
        return self.value

    @staticmethod
    def from_str(action: str) -> "_ComputationType":
        try:
            return _ComputationType(action)
        except ValueError as exc:
            raise RuntimeError(f"Invalid computation type {action}") from exc


FORWARD = _ComputationType.FORWARD
BACKWARD_INPUT = _ComputationType.BACKWARD_INPUT
BACKWARD_WEIGHT = _ComputationType.BACKWARD_WEIGHT
UNSHARD = _ComputationType.UNSHARD
RESHARD = _ComputationType.RESHARD
SEND_F = _ComputationType.SEND_F
RECV_F = _ComputationType.RECV_F
SEND_B = _ComputationType.SEND_B
RECV_B = _ComputationType.RECV_B
FULL_BACKWARD = _ComputationType.FULL_BACKWARD
OVERLAP_F_B = _ComputationType.OVERLAP_F_B
REDUCE_GRAD = _ComputationType.REDUCE_GRAD
F = FORWARD
I = BACKWARD_INPUT  # noqa: E741
W = BACKWARD_WEIGHT
B = FULL_BACKWARD

_COMPUTE_TYPES = (FORWARD, FULL_BACKWARD, BACKWARD_INPUT, BACKWARD_WEIGHT, OVERLAP_F_B)


class _Action(NamedTuple):
    """One step of one rank: (stage_index, computation_type, microbatch_index, sub_actions).

    An OVERLAP_F_B container has stage_index -1, no microbatch and its sub-actions."""

    stage_index: int
    computation_type: _ComputationType
    microbatch_index: Optional[int] = None
    sub_actions: Optional[Tuple["_Action", ...]] = None

    def __repr__(self) -> str:
        if self.sub_actions is not None:
            inner = ";".join(repr(a) for a in self.sub_actions)
            return f"({inner}){self.computation_type.value}"
        text = f"{self.stage_index}{self.computation_type.value}"
        if self.microbatch_index is not None:
            text += str(self.microbatch_index)
        return text

    __str__ = __repr__

    @property
    def is_compute_op(self) -> bool:
        return self.computation_type in _COMPUTE_TYPES

    @staticmethod
    def from_str(action_string: str) -> Optional["_Action"]:
        """Parse torch's text form; blank text gives None (an idle slot). RuntimeError for
        anything else that is not an action."""
        parsed = _C._sched_parse_action(action_string)
        if parsed is None:
            return None
        stage, ctype, mb, subs = parsed
        if subs is not None:
            subs = tuple(_Action(s, _ComputationType(t), m) for s, t, m in subs)
        return _Action(stage, _ComputationType(ctype), mb, subs)


ActionLike = Union[_Action, str, None]
Order = Union[Sequence[Sequence[ActionLike]], Dict[int, Sequence[ActionLike]]]


def _rows(order: Order, what: str = "order") -> List[Sequence[ActionLike]]:
    """Per-rank rows of an order given as a list, or as torch's {rank: actions} dict."""
    if isinstance(order, dict):
        ranks = sorted(order)
        if ranks != list(range(len(ranks))):
            raise ValueError(f"{what}: ranks must be 0..{len(ranks) - 1}, got {ranks}")
        return [order[r] for r in ranks]
    return list(order)


def _to_actions(row: Sequence[Optional[str]]) -> List[Optional[_Action]]:
    return [None if a is None else _Action.from_str(a) for a in row]


# ---- schedule generation ----

def schedule_names() -> List[str]:
    """The schedules schedule_ops knows (names are matched case-insensitively)."""
    return list(_C._sched_names())


def _stages_per_rank(name: str, stages_per_rank: Optional[int]) -> Tuple[str, int, str]:
    canonical, is_multi, default_spr, style = _C._sched_info(name)
    if stages_per_rank is None:
        return canonical, default_spr, style
    spr = operator.index(stages_per_rank)
    if not is_multi and spr != 1:
        raise ValueError(f"{canonical} runs one stage per rank: stages_per_rank must be 1, got {spr}")
    if spr < 1:
        raise ValueError(f"{canonical}: stages_per_rank must be >= 1, got {spr}")
    return canonical, spr, style


def schedule_ops(schedule_name: str, pp: int, n_microbatches: int,
                 stages_per_rank: Optional[int] = None,
                 with_comms: bool = False) -> List[List[Optional[str]]]:
    """Per-rank action order of a schedule, as torch.distributed.pipelining reports it.

    schedule_name: GPipe, 1F1B, Interleaved1F1B, LoopedBFS, InterleavedZeroBubble,
    ZBVZeroBubble or DualPipeV (case-insensitive). pp: number of ranks. stages_per_rank:
    default 1 for GPipe/1F1B, 2 otherwise (V schedules need exactly 2). Returns one list per
    rank of action strings (``"0F1"``), None for an idle slot. ``with_comms=True`` returns
    the lowered order (UNSHARD/RESHARD, REDUCE_GRAD, SEND/RECV added, idle slots dropped).
    Raises ValueError for unknown names and for what torch's constructors reject."""
    pp = operator.index(pp)
    n_microbatches = operator.index(n_microbatches)
    name, spr, _ = _stages_per_rank(schedule_name, stages_per_rank)
    if not with_comms:
        return _C._sched_generate(name, pp, spr, n_microbatches)
    order = _C._sched_generate(name, pp, spr, n_microbatches, fix_1f1b=True)
    stage_to_rank = _validate_rows(order, pp, pp * spr, n_microbatches)
    return _C._sched_lower(order, n_microbatches, stage_to_rank, pp * spr)


def generate_stage_to_rank_mapping(pp_size: int, num_stages: int, style: str = "loop") -> Dict[int, int]:
    """{stage: rank}: 'loop' puts stage s on rank s % pp; 'v' walks 0..pp-1 then back."""
    return dict(enumerate(_C._sched_stage_to_rank(style, pp_size, num_stages)))


# ---- CSV ----

def load_csv(path) -> List[List[Optional[str]]]:
    """Read a schedule CSV (row r = rank r; empty cell = idle) into per-rank action lists."""
    return _C._sched_load_csv(path)


def dump_csv(path, order: Order) -> None:
    """Write an order as CSV, one row per rank ("\\r\\n" line ends, as Python's csv.writer)."""
    _C._sched_dump_csv(path, _rows(order))


# ---- lowering ----

def _leaves(rows):
    """Every leaf action of an order (sub-actions of containers included), as _Action."""
    for row in _C._sched_normalize(rows):
        for a in _to_actions(row):
            if a is not None:
                yield from (a.sub_actions or (a,))


def _infer_n_microbatches(rows) -> int:
    mbs = [a.microbatch_index for a in _leaves(rows)
           if a.computation_type == FORWARD and a.microbatch_index is not None]
    if not mbs:
        raise ValueError("cannot infer n_microbatches: the order has no forward actions")
    return max(mbs) + 1


def _num_stages(rows) -> int:
    return max((a.stage_index for a in _leaves(rows)), default=-1) + 1


def _map_list(stage_to_rank, num_stages: Optional[int]) -> Optional[List[int]]:
    if stage_to_rank is None:
        return None
    if callable(stage_to_rank):
        if num_stages is None:
            raise ValueError("num_stages is required when stage_to_rank is a callable")
        return [int(stage_to_rank(s)) for s in range(num_stages)]
    if isinstance(stage_to_rank, dict):
        return [int(stage_to_rank[s]) for s in range(len(stage_to_rank))]
    return [int(r) for r in stage_to_rank]


def lower(order: Order, n_microbatches: Optional[int] = None, stage_to_rank=None,
          merge_bw: bool = False, unshard: bool = True, reduce_grad: bool = True,
          comms: bool = True) -> List[List[str]]:
    """Lower a compute-only order with torch's passes (each can be switched off):
    merge_bw (I+W of one microbatch -> B; off by default, as in torch's runtime),
    unshard (UNSHARD/RESHARD around FSDP stages), reduce_grad (REDUCE_GRAD after each
    stage's last backward), comms (SEND_F/RECV_F/SEND_B/RECV_B between ranks).
    stage_to_rank: list, dict or callable; default: read off the order."""
    rows = _rows(order)
    if n_microbatches is None:
        n_microbatches = _infer_n_microbatches(rows)
    mapping = _map_list(stage_to_rank, _num_stages(rows) if callable(stage_to_rank) else None)
    return _C._sched_lower(rows, n_microbatches, mapping, 0, merge_bw=merge_bw, unshard=unshard,
                           reduce_grad=reduce_grad, comms=comms)


# ---- validation ----

class ScheduleValidationError(ValueError, AssertionError):
    """An impossible schedule. The message names rank, step, stage and microbatch and shows
    the schedule grid around the failing step."""


def _validate_rows(rows, pp: int, num_stages: int, n_microbatches: int) -> List[int]:
    try:
        return _C._sched_validate(rows, pp, num_stages, n_microbatches)
    except ValueError as e:
        raise ScheduleValidationError(str(e)) from None


def validate(order: Order, n_microbatches: Optional[int] = None,
             num_stages: Optional[int] = None) -> Dict[int, int]:
    """Check an order and return its {stage: rank} mapping.

    Rules: one row per rank; each stage on one rank; F/I/W/B microbatches in range and none
    repeated; I/B after the F of that microbatch, W after its I; per stage n forwards,
    #I == #W and #B + #I == n. n_microbatches / num_stages default to what the order uses.
    Raises ScheduleValidationError (a ValueError and an AssertionError)."""
    rows = _rows(order)
    if n_microbatches is None:
        n_microbatches = _infer_n_microbatches(rows)
    mapping = _validate_rows(rows, len(rows), num_stages or 0, n_microbatches)
    return {s: r for s, r in enumerate(mapping) if r >= 0}


def format_schedule(order: Order, error_step: Optional[int] = None) -> str:
    """The order as a text grid: a row per step, a column per rank."""
    return _C._sched_format_grid(_rows(order), -1 if error_step is None else error_step)


# ---- simulation ----

class SimulationResult(NamedTuple):
    """Result of simulate(). Per-rank lists are indexed by rank."""

    makespan: float                 # time until the last rank finishes
    steps: int                      # torch's lock-step simulation length (-1 if it stalls)
    bubble_fraction: List[float]    # 1 - busy / makespan
    peak_inflight: List[int]        # most microbatch activations held at once
    busy: List[float]               # compute time (F, I, W, B, OVERLAP_F_B)
    comm_busy: List[float]          # time in SEND / RECV actions
    finish: List[float]             # end of each rank's last action
    n_actions: List[int]
    timeline: List[List[Tuple[str, float, float]]]  # (action, start, end) per rank
    order: List[List[str]]          # the lowered order that was simulated


_COST_KEYS = {"F", "I", "W", "B", "SEND", "RECV", "COMM", "OVERLAP_F_B", "REDUCE_GRAD",
              "UNSHARD", "RESHARD"}


def _normalize_costs(costs) -> Optional[dict]:
    if costs is None:
        return None
    out = {}
    for key, value in dict(costs).items():
        k = key.value if isinstance(key, Enum) else str(key)
        if k.lower() == "blocking_recv":
            out["blocking_recv"] = float(bool(value))
            continue
        k = k.upper()
        if k not in _COST_KEYS:
            raise ValueError(f"unknown cost key {key!r}; expected one of {sorted(_COST_KEYS)} "
                             "or 'blocking_recv'")
        out[k] = float(value)
    return out


def simulate(order: Order, costs: Optional[dict] = None, stage_to_rank=None) -> SimulationResult:
    """Dry-run an order with per-action costs.

    A compute-only order is lowered first (SEND/RECV and REDUCE_GRAD added). costs: dict with
    keys F, I, W, B (defaults 1, 1, 1, 2), SEND, RECV (time on the rank, default 0), COMM
    (latency from a send to the data landing, default 0), OVERLAP_F_B (default: sum of its
    parts), REDUCE_GRAD, UNSHARD, RESHARD (default 0), blocking_recv (default False: a RECV
    posts and the consumer waits, like torch's runtime). Raises ValueError naming the blocked
    actions when the schedule deadlocks."""
    rows = _C._sched_normalize(_rows(order))
    has_comms = any(a is not None and any(t in a for t in ("SEND_", "RECV_"))
                    for row in rows for a in row)
    mapping = _map_list(stage_to_rank, _num_stages(rows) if callable(stage_to_rank) else None)
    if not has_comms:
        rows = _C._sched_lower(rows, _infer_n_microbatches(rows), mapping, 0, unshard=False,
                               reduce_grad=True, comms=True)
    else:
        rows = [[a for a in row if a is not None] for row in rows]
    res = _C._sched_simulate(rows, _normalize_costs(costs), mapping, 0)
    return SimulationResult(order=rows, **res)


# ---- torch's private helpers, same names and signatures ----

def _format_pipeline_order(pipeline_order, error_step_number: Optional[int] = None) -> str:
    return format_schedule(pipeline_order, error_step_number)


def _add_unshard_reshard(compute_actions, max_active_stages: int = 3) -> List[_Action]:
    return _to_actions(_C._sched_rank_pass("unshard_reshard", list(compute_actions), max_active_stages))


def _add_reduce_grad(actions, n_microbatches: int) -> List[_Action]:
    return _to_actions(_C._sched_rank_pass("reduce_grad", list(actions), n_microbatches))


def _merge_bw(compute_actions) -> List[_Action]:
    return _to_actions(_C._sched_rank_pass("merge_bw", list(compute_actions)))


def _add_send_recv(compute_actions: Dict[int, list], stage_to_rank: Callable[[int], int],
                   num_stages: int) -> Dict[int, List[_Action]]:
    ranks = sorted(compute_actions)
    rows = [compute_actions[r] for r in ranks]
    mapping = [int(stage_to_rank(s)) for s in range(num_stages)]
    lowered = _C._sched_add_send_recv(rows, mapping, num_stages)
    return {r: _to_actions(row) for r, row in zip(ranks, lowered)}


def _validate_schedule(actions: Dict[int, list], pp_group_size: int, num_stages: int,
                       num_microbatches: int) -> Dict[int, int]:
    if len(actions) != pp_group_size:
        raise ScheduleValidationError(
            f"Schedule has incorrect number of ranks - expected {pp_group_size}, actual {len(actions)}")
    for rank in range(pp_group_size):
        if rank not in actions:
            raise ScheduleValidationError(f"Schedule is missing actions for rank {rank}")
    rows = [actions[r] for r in range(pp_group_size)]
    mapping = _validate_rows(rows, pp_group_size, num_stages, num_microbatches)
    return {s: r for s, r in enumerate(mapping) if r >= 0}


def _simulate_comms_compute(pipeline_order, stage_to_rank: Callable[[int], int],
                            num_stages: int) -> Dict[int, List[Optional[_Action]]]:
    ranks = sorted(pipeline_order)
    rows = [pipeline_order[r] for r in ranks]
    mapping = [int(stage_to_rank(s)) for s in range(num_stages)]
    _, timeline = _C._sched_simulate_steps(rows, mapping, num_stages)
    return {r: _to_actions(row) for r, row in zip(ranks, timeline)}


# The schedule classes live in _runtime (which imports this module); code written for torch
# imports them from ``schedules``, so they resolve here on first use.
_RUNTIME_NAMES = frozenset([
    "PipelineScheduleSingle", "PipelineScheduleMulti", "ScheduleGPipe", "Schedule1F1B",
    "ScheduleInterleaved1F1B", "ScheduleLoopedBFS", "ScheduleInterleavedZeroBubble",
    "ScheduleZBVZeroBubble", "ScheduleDualPipeV", "get_schedule_class", "_PipelineSchedule",
    "_PipelineScheduleRuntime", "_ScheduleForwardOnly"])


def __getattr__(name):
    if name in _RUNTIME_NAMES:
        from . import _runtime
        return getattr(_runtime, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

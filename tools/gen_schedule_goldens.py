"""Record torch.distributed.pipelining's schedule orders as goldens for tests/test_schedule_ops.py.

Run where torch (2.11) is installed; no GPU or process group is needed:

    python tools/gen_schedule_goldens.py [OUT.json]     # default: tests/data/schedule_goldens.json

For every schedule, pp in (2, 3, 4) and n_microbatches in (1, 2, 3, 4, 6, 8, 12), with and
without comms, a case holds what ``_schedule_visualizer.get_schedule_ops`` returns (``ranks``:
per-rank lists of ``str(action)``, None for idle) or the exception it raised (``error``,
``error_type``). Extra fields, each computed only when torch can:
  * ``direct_lowering`` (with_comms cases where get_schedule_ops itself failed, e.g. for the
    single-stage schedules, whose mock stage the runtime cannot index): torch's lowering passes
    (_add_unshard_reshard, _add_reduce_grad, _add_send_recv) applied directly to the compute
    order, with REDUCE_GRAD actions taken out first and, for 1F1B, the last rank's forwards
    renumbered from 0 when torch's informational order starts them at 1;
  * ``sim_steps`` (compute cases): the length of torch's _simulate_comms_compute run on
    _add_send_recv of the compute order (idle slots and REDUCE_GRAD removed, same 1F1B fix).
"""
import json
import os
import sys
import traceback

import torch
from torch.distributed.pipelining import schedules as S
from torch.distributed.pipelining import _schedule_visualizer as V

PPS = (2, 3, 4)
NS = (1, 2, 3, 4, 6, 8, 12)
CLASSES = {
    "GPipe": ("ScheduleGPipe", 1),
    "1F1B": ("Schedule1F1B", 1),
    "Interleaved1F1B": ("ScheduleInterleaved1F1B", 2),
    "LoopedBFS": ("ScheduleLoopedBFS", 2),
    "InterleavedZeroBubble": ("ScheduleInterleavedZeroBubble", 2),
    "ZBVZeroBubble": ("ScheduleZBVZeroBubble", 2),
    "DualPipeV": ("ScheduleDualPipeV", 2),
}


def fmt(rows):
    return [[None if a is None else str(a) for a in row] for row in rows]


def get_ops(cls, pp, n, spr, with_comms):
    kwargs = {"num_stages_per_rank": spr if spr > 1 else None}
    if with_comms:
        kwargs["with_comms"] = True
    return V.get_schedule_ops(cls, pp, n, **kwargs)


def stage_to_rank_fn(name, pp, spr):
    style = "v" if name in ("ZBVZeroBubble", "DualPipeV") else "loop"
    num_stages = pp * spr
    if style == "loop":
        return (lambda s: s % pp), num_stages
    order = []
    while len(order) < num_stages:
        order.extend(range(pp))
        order.extend(reversed(range(pp)))
    return (lambda s: order[s]), num_stages


def runnable_compute(name, ops, n):
    """Per-rank compute lists without idle slots and REDUCE_GRAD; 1F1B renumbered if needed."""
    out = {}
    for r, row in enumerate(ops):
        acts = [a for a in row if a is not None and a.computation_type != S.REDUCE_GRAD]
        if name == "1F1B" and any(a.computation_type == S.F and a.microbatch_index == n for a in acts):
            acts = [S._Action(a.stage_index, a.computation_type, a.microbatch_index - 1)
                    if a.computation_type == S.F else a for a in acts]
        out[r] = acts
    return out


def main():
    out_path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "schedule_goldens.json")
    out = {"torch": torch.__version__, "pps": list(PPS), "ns": list(NS), "cases": []}
    for name, (cls_name, spr) in CLASSES.items():
        cls = getattr(S, cls_name)
        for pp in PPS:
            for n in NS:
                compute_ops = None
                for with_comms in (False, True):
                    rec = {"schedule": name, "pp": pp, "n_microbatches": n, "stages_per_rank": spr,
                           "with_comms": with_comms}
                    try:
                        ops = get_ops(cls, pp, n, spr, with_comms)
                        rec["ranks"] = fmt(ops)
                        if not with_comms:
                            compute_ops = ops
                    except Exception as e:  # noqa: BLE001 - recorded as the golden
                        rec["error_type"] = type(e).__name__
                        rec["error"] = f"{type(e).__name__}: {e}"[:600]
                    stage_to_rank, num_stages = stage_to_rank_fn(name, pp, spr)
                    if with_comms and "error" in rec and compute_ops is not None:
                        try:
                            comp = runnable_compute(name, compute_ops, n)
                            lowered = {r: S._add_reduce_grad(S._add_unshard_reshard(comp[r]), n)
                                       for r in comp}
                            lowered = S._add_send_recv(lowered, stage_to_rank, num_stages)
                            rec["direct_lowering"] = fmt([lowered[r] for r in sorted(lowered)])
                        except Exception as e:  # noqa: BLE001
                            rec["direct_lowering_error"] = f"{type(e).__name__}: {e}"[:600]
                    if not with_comms and "ranks" in rec:
                        try:
                            comp = runnable_compute(name, compute_ops, n)
                            comms = S._add_send_recv(comp, stage_to_rank, num_stages)
                            sim = S._simulate_comms_compute(comms, stage_to_rank, num_stages)
                            rec["sim_steps"] = max(len(sim[r]) for r in sim)
                        except Exception as e:  # noqa: BLE001
                            rec["sim_steps_error"] = f"{type(e).__name__}: {e}"[:600]
                    out["cases"].append(rec)

    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with open(out_path, "w") as f:
        json.dump(out, f, indent=0)
        f.write("\n")
    ok = sum("ranks" in c for c in out["cases"])
    print(f"torch {torch.__version__}: {len(out['cases'])} cases, {ok} with orders -> {out_path}")
    for c in out["cases"]:
        if c["pp"] == 2 and c["n_microbatches"] == 4 and not c["with_comms"]:
            print(c["schedule"], c.get("error") or "")
            for r in c.get("ranks", []):
                print("   ", " ".join(a or "_" for a in r))


if __name__ == "__main__":
    try:
        main()
    except Exception:
        traceback.print_exc()
        sys.exit(1)

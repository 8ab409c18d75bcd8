"""Gantt charts of the seven schedules from real LocalPipeline runs on CPU (docs/schedules/).

For each schedule: a MultiMLP (tests/model_registry.py) of 4 layers, split into 2 stages
(GPipe, 1F1B: 2 layers each) or 4 stages (the multi-stage schedules: 1 layer each, 2 stages
per rank), so every schedule does the same work. It runs on 2 CPU "ranks" (one host thread
each, one BLAS thread each) with n_microbatches = 8. After warm-up steps, several steps are
recorded with record_timeline=True; the chart shows the step with the shortest makespan
(the one least disturbed by other work on the machine). Numbers per schedule:

* closed form: the textbook bubble (idle share of the step) for p = 2, m = 8, v = 2,
  T_B = 2 T_F, T_I = T_W = T_F;
* simulate(), unit costs (F = I = W = 1, B = 2), a RECV waiting at its consumer (torch);
* simulate() with the mean F/I/W/B times measured in the chart's step, RECV waiting at the
  consumer, and again with blocking RECV (a rank stops at each RECV until the data is there);
* measured: bubble_fraction of the chart's step, and the median over the recorded steps.

    python tools/make_schedule_charts.py                      # measure, then draw
    python tools/make_schedule_charts.py --measure-only --json /tmp/t.json  # e.g. elsewhere
    python tools/make_schedule_charts.py --from-json docs/schedules/timelines.json  # redraw

Writes <out>/<Schedule>.png (measured), <out>/sim/<Schedule>.png (simulate() with the
measured costs), <out>/timelines.json (chosen steps' events and numbers) and prints the
markdown table used in docs/schedules/README.md.
"""

import argparse
import json
import os
import platform
import statistics
import sys

# one BLAS thread per rank thread: two ranks must not fight over the cores
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

SCHEDULES = ["GPipe", "1F1B", "Interleaved1F1B", "LoopedBFS", "InterleavedZeroBubble",
             "ZBVZeroBubble", "DualPipeV"]
SINGLE = {"GPipe", "1F1B"}
RANKS = 2


def closed_form(name, p, m, v):
    """Textbook bubble fraction with T_B = 2 T_F and T_I = T_W = T_F (pipeline_anchors.md
    1.11): idle time over (idle + useful) per rank."""
    if name in ("GPipe", "1F1B"):             # (p-1)(T_F+T_B) idle vs m(T_F+T_B) useful
        return (p - 1) / (m + p - 1)
    if name in ("Interleaved1F1B", "LoopedBFS"):  # the idle time shrinks by v
        return (p - 1) / (v * m + p - 1)
    if name == "InterleavedZeroBubble":       # ZB-H1 per chunk: (p-1)(T_F+T_I-T_W)/v idle
        idle = (p - 1) * 1.0 / v
        return idle / (3.0 * m + idle)
    if name in ("ZBVZeroBubble", "DualPipeV"):  # zero in the ideal model
        return 0.0
    raise ValueError(name)


# ---- measuring ----

def run_schedule(name, args):
    import pipec
    from pipec import nn
    from pipec.pipelining import LocalPipeline, SplitPoint, pipeline
    from model_registry import MultiMLP

    m, layers = args.microbatches, 4
    n_stages = RANKS if name in SINGLE else 2 * RANKS
    per = layers // n_stages
    pipec.manual_seed(0)
    model = MultiMLP(args.d_hid, n_layers=layers)
    x = pipec.randn(args.batch, args.d_hid)
    y = pipec.randn(args.batch, args.d_hid)
    split = {f"layers.{i}": SplitPoint.BEGINNING for i in range(per, layers, per)}
    pipe = pipeline(model, (x[:args.batch // m],), split_spec=split)
    lp = LocalPipeline(pipe, name, m, ["cpu"] * RANKS, loss_fn=nn.MSELoss(reduction="sum"))
    for _ in range(args.warmup):
        lp.step(x, target=y, return_outputs=False)
    runs = []
    for _ in range(args.steps):
        model.zero_grad()
        lp.step(x, target=y, return_outputs=False, record_timeline=True)
        runs.append(lp.timeline())
    return runs


def makespan(events):
    return max(e[3] for e in events) - min(e[2] for e in events)


def measured_costs(events):
    """Mean duration per action type (F, I, W, B, OVERLAP_F_B) in µs."""
    from pipec.viz import _parse
    by = {}
    for _, action, s, e in events:
        kind = _parse(action)[0]
        if kind:
            by.setdefault(kind, []).append(e - s)
    return {k: statistics.fmean(v) for k, v in by.items()}


def measure(args):
    from pipec import viz
    data = {"config": {"ranks": RANKS, "microbatches": args.microbatches, "d_hid": args.d_hid,
                       "batch": args.batch, "layers": 4, "device": "cpu",
                       "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
                       "host_cpus": os.cpu_count(), "machine": platform.machine(),
                       "python": platform.python_version(), "warmup": args.warmup,
                       "recorded_steps": args.steps, "note": args.note},
            "schedules": {}}
    for name in args.schedules.split(","):
        runs = run_schedule(name, args)
        best = min(runs, key=makespan)
        per_step = [viz.bubble_fraction(r) for r in runs]
        t0 = min(e[2] for e in best)
        data["schedules"][name] = {
            "events": [[r, a, round(s - t0, 1), round(e - t0, 1)] for r, a, s, e in best],
            "makespan_us": makespan(best),
            "makespan_us_median": statistics.median(makespan(r) for r in runs),
            "bubble": {str(k): v for k, v in viz.bubble_fraction(best).items()},
            "bubble_median": {str(k): statistics.median(b[k] for b in per_step)
                              for k in per_step[0]},
            "costs_us": measured_costs(best),
        }
        print(f"{name}: step {makespan(best) / 1e3:.2f} ms, bubble "
              + " / ".join(f"{v:.1%}" for v in viz.bubble_fraction(best).values()), flush=True)
    return data


# ---- drawing ----

def simulated(name, m, costs, blocking=False):
    from pipec.pipelining import schedules as S
    spr = 1 if name in SINGLE else 2
    order = S.schedule_ops(name, RANKS, m, stages_per_rank=spr, with_comms=True)
    c = {k: v for k, v in costs.items() if k in ("F", "I", "W", "B", "OVERLAP_F_B")}
    c["blocking_recv"] = blocking
    return S.simulate(order, c)


def draw(data, out, dpi):
    from pipec import viz
    cfg = data["config"]
    m = cfg["microbatches"]
    os.makedirs(os.path.join(out, "sim"), exist_ok=True)
    rows = ["| schedule | closed form | simulated, unit costs | simulated, measured costs | "
            "simulated, measured costs, blocking RECV | measured (chart step) | "
            "measured (median of steps) |",
            "|---|---|---|---|---|---|---|"]
    times = ["| schedule | measured step ms (chart) | median of steps | simulated ms | "
             "simulated ms, blocking RECV |", "|---|---|---|---|---|"]

    def fmt(v):
        vals = list(v.values()) if isinstance(v, dict) else list(v)
        return " / ".join(f"{x:.1%}" for x in vals)

    for name, d in data["schedules"].items():
        events = [tuple(e) for e in d["events"]]
        what = (f"{cfg['ranks']} ranks x {m} microbatches, MultiMLP d_hid={cfg['d_hid']} "
                f"batch={cfg['batch']}")
        viz.plot_timeline(events, path=os.path.join(out, f"{name}.png"), n_ranks=cfg["ranks"],
                          dpi=dpi, title=f"{name}: LocalPipeline on CPU, {what}, "
                                         f"step {d['makespan_us'] / 1e3:.1f} ms")
        unit = simulated(name, m, {"F": 1, "I": 1, "W": 1, "B": 2})
        meas = simulated(name, m, d["costs_us"])
        blk = simulated(name, m, d["costs_us"], blocking=True)
        sim_events = [(r, a, s, e) for r, row in enumerate(meas.timeline) for a, s, e in row]
        viz.plot_timeline(sim_events, path=os.path.join(out, "sim", f"{name}.png"),
                          n_ranks=cfg["ranks"], dpi=dpi,
                          title=f"{name}: simulate() with the measured mean costs, "
                                f"step {meas.makespan / 1e3:.1f} ms")
        d["closed_form"] = closed_form(name, cfg["ranks"], m, 1 if name in SINGLE else 2)
        d["sim_unit"] = unit.bubble_fraction
        d["sim_measured_costs"] = meas.bubble_fraction
        d["sim_measured_costs_blocking_recv"] = blk.bubble_fraction
        rows.append(f"| {name} | {d['closed_form']:.1%} | {fmt(unit.bubble_fraction)} | "
                    f"{fmt(meas.bubble_fraction)} | {fmt(blk.bubble_fraction)} | "
                    f"{fmt(d['bubble'])} | {fmt(d['bubble_median'])} |")
        d["sim_makespan_us"] = meas.makespan
        d["sim_makespan_us_blocking_recv"] = blk.makespan
        times.append(f"| {name} | {d['makespan_us'] / 1e3:.1f} | "
                     f"{d['makespan_us_median'] / 1e3:.1f} | {meas.makespan / 1e3:.1f} | "
                     f"{blk.makespan / 1e3:.1f} |")
    return "\n".join(rows) + "\n\n" + "\n".join(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "schedules"))
    ap.add_argument("--json", default=None, help="where to write the timelines "
                    "(default: <out>/timelines.json)")
    ap.add_argument("--schedules", default=",".join(SCHEDULES))
    ap.add_argument("--d-hid", type=int, default=512)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--microbatches", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--dpi", type=int, default=80)
    ap.add_argument("--note", default="", help="free text stored with the config")
    ap.add_argument("--measure-only", action="store_true", help="write the JSON, draw nothing")
    ap.add_argument("--from-json", default=None, help="redraw from a timelines.json")
    args = ap.parse_args()

    os.makedirs(args.out, exist_ok=True)
    json_path = args.json or os.path.join(args.out, "timelines.json")
    if args.from_json:
        with open(args.from_json) as f:
            data = json.load(f)
    else:
        data = measure(args)
    if not args.measure_only:
        print(draw(data, args.out, args.dpi))
    with open(json_path, "w") as f:  # with the derived numbers when drawn
        json.dump(data, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()

"""pipec.viz: bubble fractions, Chrome traces and Gantt charts of pipeline timelines.

Hand-made events check the arithmetic exactly; simulate() results and a real LocalPipeline
step check that every accepted input form goes through. The chart tests need matplotlib
and are skipped (with the reason) only when it is not installed.
"""
import json
import struct

import pytest

import pipec
from pipec import viz
from pipec.pipelining import schedules as S

# two ranks, window 0..10: rank 0 busy 0-4 and 6-10 (idle 2), rank 1 busy 2-7 (idle 5)
EVENTS = [
    (0, "0F0", 0.0, 2.0),
    (0, "0F1", 2.0, 4.0),
    (1, "1F0", 2.0, 4.0),
    (1, "1B0", 4.0, 7.0),
    (0, "0B0", 6.0, 10.0),
]


def _png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
    return struct.unpack(">II", head[16:24])


# ---- bubble_fraction ----

def test_bubble_fraction_hand_made():
    b = viz.bubble_fraction(EVENTS)
    assert b == pytest.approx({0: 0.2, 1: 0.5})


def test_bubble_fraction_window_is_global_and_unsorted_input():
    # rank 1 starts late and ends early: charged for both; input order does not matter
    ev = [(1, "1F0", 5.0, 6.0), (0, "0F0", 0.0, 10.0)]
    assert viz.bubble_fraction(ev) == pytest.approx({0: 0.0, 1: 0.9})


def test_bubble_fraction_overlapped_and_split_backward():
    ev = [(0, "0F0", 0.0, 1.0), (0, "(0F1;3B0)OVERLAP_F_B", 1.0, 4.0), (0, "3I1", 5.0, 6.0),
          (0, "3W1", 6.0, 8.0), (1, "1F0", 1.0, 8.0)]
    assert viz.bubble_fraction(ev) == pytest.approx({0: 1 / 8, 1: 1 / 8})


def test_bubble_fraction_ignores_comm_actions():
    # a simulate() row: SEND/RECV/REDUCE_GRAD are not compute; nonzero comm time is idle
    res = [[("0F0", 0.0, 1.0), ("0SEND_F0", 1.0, 3.0), ("0B0", 3.0, 4.0)],
           [("1RECV_F0", 0.0, 2.0), ("1F0", 2.0, 3.0), ("1B0", 3.0, 4.0)]]
    assert viz.bubble_fraction(res) == pytest.approx({0: 0.5, 1: 0.5})


def test_bubble_fraction_empty_and_bad_input():
    assert viz.bubble_fraction([]) == {}
    with pytest.raises(ValueError, match="ends"):
        viz.bubble_fraction([(0, "0F0", 2.0, 1.0)])
    with pytest.raises(TypeError, match="timeline"):
        viz.bubble_fraction([["0F0"]])


def test_bubble_fraction_matches_simulate():
    for name, spr in [("1F1B", 1), ("Interleaved1F1B", 2), ("ZBVZeroBubble", 2),
                      ("DualPipeV", 2)]:
        res = S.simulate(S.schedule_ops(name, 2, 8, stages_per_rank=spr, with_comms=True))
        ours = viz.bubble_fraction(res)
        assert list(ours.values()) == pytest.approx(res.bubble_fraction), name
        assert viz.bubble_fraction(res.timeline) == ours
        assert viz.bubble_fraction(dict(enumerate(res.timeline))) == ours
    # GPipe / 1F1B at p=2, m=8 with T_B = 2 T_F: (p-1)/(m+p-1) = 1/9
    res = S.simulate(S.schedule_ops("GPipe", 2, 8, with_comms=True), {"F": 1, "B": 2})
    assert viz.bubble_fraction(res) == pytest.approx({0: 1 / 9, 1: 1 / 9})


# ---- export_chrome_trace ----

def test_chrome_trace_structure(tmp_path):
    path = tmp_path / "trace.json"
    ev = EVENTS + [(1, "(1F1;2B0)OVERLAP_F_B", 7.0, 9.5)]
    doc = viz.export_chrome_trace(ev, path)
    with open(path) as f:
        loaded = json.load(f)
    assert loaded == doc
    assert set(loaded) >= {"traceEvents"}
    xs = [e for e in loaded["traceEvents"] if e["ph"] == "X"]
    assert len(xs) == len(ev)
    for e in xs:
        assert set(e) >= {"name", "ph", "pid", "tid", "ts", "dur"}
        assert isinstance(e["ts"], (int, float)) and e["dur"] >= 0
    by_name = {e["name"]: e for e in xs}
    assert set(by_name) == {a for _, a, _, _ in ev}
    b = by_name["1B0"]
    assert (b["pid"], b["ts"], b["dur"], b["cat"]) == (1, 4.0, 3.0, "B")
    assert b["args"] == {"stage": 1, "microbatch": 0}
    o = by_name["(1F1;2B0)OVERLAP_F_B"]
    assert o["cat"] == "OVERLAP_F_B" and o["args"]["stages"] == [1, 2]
    assert o["args"]["microbatches"] == [1, 0] and o["dur"] == pytest.approx(2.5)
    names = {(e["pid"], e["args"]["name"]) for e in loaded["traceEvents"]
             if e["ph"] == "M" and e["name"] == "process_name"}
    assert names == {(0, "rank 0"), (1, "rank 1")}


def test_chrome_trace_from_simulation_keeps_comm_actions(tmp_path):
    res = S.simulate(S.schedule_ops("1F1B", 2, 4, with_comms=True))
    doc = viz.export_chrome_trace(res, str(tmp_path / "t.json"))
    xs = [e for e in doc["traceEvents"] if e["ph"] == "X"]
    assert len(xs) == sum(len(r) for r in res.timeline)
    assert {e["cat"] for e in xs} == {"F", "B", "comm"}
    assert {e["pid"] for e in xs} == {0, 1}


# ---- a real LocalPipeline step ----

@pytest.fixture(scope="module")
def local_timeline():
    import sys
    import os
    sys.path.insert(0, os.path.dirname(__file__))
    from model_registry import MultiMLP
    from pipec.pipelining import LocalPipeline, SplitPoint, pipeline

    pipec.manual_seed(0)
    model = MultiMLP(16, n_layers=2)
    x = pipec.randn(8, 16)
    y = pipec.randn(8, 16)
    pipe = pipeline(model, (x[:2],), split_spec={"layers.1": SplitPoint.BEGINNING})
    lp = LocalPipeline(pipe, "1F1B", 4, ["cpu", "cpu"],
                       loss_fn=pipec.nn.MSELoss(reduction="sum"))
    lp.step(x, target=y, return_outputs=False, record_timeline=True)
    return lp


def test_local_pipeline_timeline(local_timeline, tmp_path):
    events = local_timeline.timeline()
    # F and B of 4 microbatches on 2 ranks (and, with weight-gradient batching on, each
    # rank's end-of-step WGRAD_FLUSH)
    assert len([e for e in events if e[1] != "WGRAD_FLUSH"]) == 2 * 2 * 4
    b = viz.bubble_fraction(events)
    assert set(b) == {0, 1} and all(0.0 <= v < 1.0 for v in b.values())
    assert viz.bubble_fraction(local_timeline) == b  # an object with timeline() works too
    doc = viz.export_chrome_trace(events, tmp_path / "t.json")
    assert len([e for e in doc["traceEvents"] if e["ph"] == "X"]) == len(events)


# ---- plot_timeline ----

def test_plot_timeline_writes_png(tmp_path):
    pytest.importorskip("matplotlib", reason="plot_timeline needs matplotlib")
    path = tmp_path / "chart.png"
    fig = viz.plot_timeline(EVENTS, path=path, title="hand-made", dpi=50)
    assert path.stat().st_size > 1000
    w, h = _png_size(path)
    assert (w, h) == (round(fig.get_figwidth() * 50), round(fig.get_figheight() * 50))
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == ["rank 0\nbubble 20.0%", "rank 1\nbubble 50.0%"]
    assert ax.get_title(loc="left") == "hand-made"


def test_plot_timeline_inputs(tmp_path, local_timeline):
    pytest.importorskip("matplotlib", reason="plot_timeline needs matplotlib")
    res = S.simulate(S.schedule_ops("DualPipeV", 2, 8, with_comms=True))
    fig = viz.plot_timeline(res, path=tmp_path / "sim.png")
    assert (tmp_path / "sim.png").stat().st_size > 1000
    assert "simulated" in fig.axes[0].get_xlabel()
    fig = viz.plot_timeline(local_timeline.timeline(), n_ranks=3)  # no path: nothing saved
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert len(labels) == 3 and labels[2] == "rank 2\nbubble 100.0%"
    assert "time (" in fig.axes[0].get_xlabel()
    assert list(tmp_path.iterdir()) == [tmp_path / "sim.png"]


def test_plot_timeline_without_matplotlib(monkeypatch):
    import builtins
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        viz.plot_timeline(EVENTS)


@pytest.mark.cuda
def test_cuda_timeline_measures_gpu_time():
    """On CUDA stages the timeline holds GPU execution times (CUDA events), not enqueue
    times: a stage whose forward is a 4096^3 float32 GEMM (~2.6 ms on an H100, far more on
    anything slower) shows forwards of at least 0.5 ms, although enqueueing one takes a few
    microseconds; and one rank's actions do not overlap on its stream."""
    import sys
    import os
    sys.path.insert(0, os.path.dirname(__file__))
    from pipec.pipelining import LocalPipeline, SplitPoint, pipeline

    class Big(pipec.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = pipec.nn.Linear(4096, 4096)
            self.b = pipec.nn.Linear(4096, 4096)

        def forward(self, x):
            return self.b(self.a(x))

    pipec.manual_seed(0)
    model = Big().to("cuda:0")
    x = pipec.randn(8192, 4096, device="cuda:0")
    y = pipec.randn(8192, 4096, device="cuda:0")
    pipe = pipeline(model, (x[:4096],), split_spec={"b": SplitPoint.BEGINNING})
    lp = LocalPipeline(pipe, "GPipe", 2, ["cuda:0", "cuda:0"],
                       loss_fn=pipec.nn.MSELoss(reduction="sum"))
    lp.step(x, target=y, return_outputs=False)  # warm-up (cuBLAS handles, allocator)
    lp.step(x, target=y, return_outputs=False, record_timeline=True)
    events = lp.timeline()
    fwd = [e for e in events if "F" in e[1] and "B" not in e[1]]
    assert len(fwd) == 4, events
    for rank, action, t0, t1 in fwd:
        assert t1 - t0 >= 500.0, f"{action} on rank {rank}: {t1 - t0:.1f} us"
    for r in (0, 1):
        mine = sorted((e for e in events if e[0] == r), key=lambda e: e[2])
        for a, b in zip(mine, mine[1:]):
            assert b[2] >= a[3] - 1.0, f"rank {r}: {a} overlaps {b}"

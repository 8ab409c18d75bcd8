"""examples/pipelining.ipynb runs top to bottom as a notebook would run it.

Its code cells are executed in order, in one namespace, from the examples folder, so a
notebook that drifts from the API fails here. The notebook checks its own results with
assertions: the pipelined step's losses and gradients must equal the unpipelined model's,
and training must halve the loss.
"""
import json
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _code_cells(path):
    nb = json.loads(path.read_text())
    assert nb["nbformat"] == 4
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


def test_pipelining_notebook_runs_top_to_bottom(monkeypatch, capsys):
    path = EXAMPLES / "pipelining.ipynb"
    monkeypatch.chdir(EXAMPLES)  # Jupyter starts a notebook in its own folder
    ns = {"__name__": "__main__"}
    cells = _code_cells(path)
    assert len(cells) >= 5
    for i, src in enumerate(cells):
        try:
            exec(compile(src, f"{path.name}, code cell {i + 1}", "exec"), ns)
        except Exception as e:
            pytest.fail(f"{path.name}, code cell {i + 1} raised {type(e).__name__}: {e}")
    out = capsys.readouterr().out
    assert "losses equal: True" in out
    assert ns["history"][-1] < 0.5 * ns["history"][0]
    # every schedule ran and left a timeline with compute on both ranks
    assert set(ns["timelines"]) == set(ns["SCHEDULES"])
    for name, tl in ns["timelines"].items():
        assert {r for r, *_ in tl} == {0, 1}, name
        assert all(np.isfinite(e - s) and e >= s for _, _, s, e in tl), name
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert ns["fig"] is None and "matplotlib" in out
    else:
        assert ns["fig"] is not None and len(ns["fig"].axes) >= 1

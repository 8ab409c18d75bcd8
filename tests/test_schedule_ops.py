"""Schedule layer: generated orders against torch 2.11's goldens, plus golden-free checks.

Goldens: tests/data/schedule_goldens.json, written by tools/gen_schedule_goldens.py where
torch is installed (the golden tests skip, saying so, when the file is absent). Each case is
what torch's get_schedule_ops returned for (schedule, pp, n_microbatches, with_comms), or the
error it raised. The golden-free tests check properties that hold by construction (GPipe is
all F then all B, 1F1B warm-up, validity of every order) and torch's own documented examples
and lowering-test expectations.
"""
import json
import os

import pytest

from pipec.pipelining import schedules as S
from pipec.pipelining.schedules import (B, F, I, W, ScheduleValidationError, _Action,
                                        _ComputationType, schedule_ops)

GOLDENS = os.path.join(os.path.dirname(__file__), "data", "schedule_goldens.json")
NAMES = ["GPipe", "1F1B", "Interleaved1F1B", "LoopedBFS", "InterleavedZeroBubble",
         "ZBVZeroBubble", "DualPipeV"]
PPS = (2, 3, 4)
NS = (1, 2, 3, 4, 6, 8, 12)
V_SCHEDULES = ("ZBVZeroBubble", "DualPipeV")


def _load_goldens():
    if not os.path.exists(GOLDENS):
        return None
    with open(GOLDENS) as f:
        return json.load(f)


_GOLDENS = _load_goldens()
_CASES = _GOLDENS["cases"] if _GOLDENS else []
_NO_GOLDENS = pytest.mark.skipif(
    _GOLDENS is None,
    reason="tests/data/schedule_goldens.json is absent: run tools/gen_schedule_goldens.py where "
           "torch 2.11 is installed to create it")


def _case_id(c):
    return f"{c['schedule']}-pp{c['pp']}-n{c['n_microbatches']}-{'comms' if c['with_comms'] else 'compute'}"


def _parse(row):
    return [_Action.from_str(a) if a else None for a in row]


def _leaves(row):
    for a in _parse(row):
        if a is not None:
            yield from (a.sub_actions or (a,))


# ---- goldens ----

@_NO_GOLDENS
def test_goldens_cover_the_grid():
    keys = {(c["schedule"], c["pp"], c["n_microbatches"], c["with_comms"]) for c in _CASES}
    for name in NAMES:
        for pp in PPS:
            for n in NS:
                for wc in (False, True):
                    assert (name, pp, n, wc) in keys
    assert _GOLDENS["torch"].startswith("2.11"), _GOLDENS["torch"]


@_NO_GOLDENS
@pytest.mark.parametrize("case", _CASES, ids=[_case_id(c) for c in _CASES])
def test_schedule_ops_matches_torch(case):
    name, pp, n = case["schedule"], case["pp"], case["n_microbatches"]
    spr, with_comms = case["stages_per_rank"], case["with_comms"]
    if "ranks" in case:
        got = schedule_ops(name, pp, n, stages_per_rank=spr, with_comms=with_comms)
        assert len(got) == len(case["ranks"])
        for rank, (mine, theirs) in enumerate(zip(got, case["ranks"])):
            assert mine == theirs, f"rank {rank}\n mine  {mine}\n torch {theirs}"
    elif case["error_type"] == "ValueError":
        # a constraint torch's constructor enforces: same exception, same text
        with pytest.raises(ValueError) as info:
            schedule_ops(name, pp, n, stages_per_rank=spr, with_comms=with_comms)
        assert case["error"] == f"ValueError: {info.value}"
    else:
        # torch's get_schedule_ops cannot lower single-stage schedules (its mock stage is
        # not indexable); the golden holds torch's lowering passes applied directly
        assert with_comms and "direct_lowering" in case, case.get("error")
        got = schedule_ops(name, pp, n, stages_per_rank=spr, with_comms=True)
        assert got == case["direct_lowering"]


@_NO_GOLDENS
@pytest.mark.parametrize("case", [c for c in _CASES if "sim_steps" in c],
                         ids=[_case_id(c) for c in _CASES if "sim_steps" in c])
def test_simulated_steps_match_torch(case):
    """torch's _simulate_comms_compute over _add_send_recv of the compute order."""
    from pipec import _C
    name, pp, n, spr = case["schedule"], case["pp"], case["n_microbatches"], case["stages_per_rank"]
    compute = _C._sched_generate(name, pp, spr, n, fix_1f1b=True)
    compute = {r: [a for a in row if a is not None and not a.endswith("REDUCE_GRAD")]
               for r, row in enumerate(compute)}
    style = "v" if name in V_SCHEDULES else "loop"
    mapping = S.generate_stage_to_rank_mapping(pp, pp * spr, style)
    lowered = S._add_send_recv(compute, lambda s: mapping[s], pp * spr)
    sim = S._simulate_comms_compute(lowered, lambda s: mapping[s], pp * spr)
    assert max(len(row) for row in sim.values()) == case["sim_steps"]


# ---- torch's documented examples (2 ranks, 4 microbatches) ----

EXAMPLES = {
    "GPipe": ["0F0 0F1 0F2 0F3 0B0 0B1 0B2 0B3 0REDUCE_GRAD",
              "1F0 1F1 1F2 1F3 1B0 1B1 1B2 1B3 1REDUCE_GRAD"],
    "1F1B": ["0F0 0F1 0B0 0F2 0B1 0F3 0B2 0B3 0REDUCE_GRAD",
             "1F1 1B0 1F2 1B1 1F3 1B2 1F4 1B3 1REDUCE_GRAD"],
    "Interleaved1F1B": [
        "0F0 0F1 2F0 2F1 _ _ 0F2 2B0 0F3 2B1 2F2 0B0 2F3 0B1 _ 2B2 _ 2B3 _ 0B2 _ 0B3",
        "_ 1F0 1F1 _ 3F0 3B0 3F1 3B1 1F2 1B0 1F3 1B1 3F2 3B2 3F3 3B3 _ 1B2 _ 1B3"],
    "LoopedBFS": ["0F0 0F1 0F2 0F3 2F0 2F1 2F2 2F3 _ _ 2B3 2B2 2B1 2B0 0B3 0B2 0B1 0B0",
                  "_ 1F0 1F1 1F2 1F3 3F0 3F1 3F2 3F3 3B3 3B2 3B1 3B0 1B3 1B2 1B1 1B0"],
    "InterleavedZeroBubble": [
        "0F0 0F1 2F0 _ 2F1 2I0 2W0 0F2 2I1 2W1 0F3 0I0 0W0 2F2 0I1 0W1 2F3 2I2 2W2 2I3 2W3 0I2 0W2 0I3 0W3",
        "_ 1F0 1F1 3F0 3I0 3F1 3I1 3W0 1F2 1I0 3W1 1F3 1I1 1W0 3F2 3I2 1W1 3F3 3I3 3W2 1I2 3W3 1I3 1W2 1W3"],
    "ZBVZeroBubble": [
        "0F0 0F1 0F2 3F0 3I0 3W0 3F1 3I1 3W1 0F3 0I0 0W0 3F2 3I2 3W2 0I1 0W1 3F3 3I3 3W3 0I2 0W2 0I3 0W3",
        "_ 1F0 2F0 1F1 2F1 2I0 2W0 1F2 1I0 1W0 2F2 2I1 2W1 1F3 1I1 1W1 2F3 2I2 2W2 1I2 2I3 1I3 1W2 2W3 1W3"],
    "DualPipeV": [
        "0F0 0F1 0F2 3F0 3I0 3W0 3F1 (0F3;3B1)OVERLAP_F_B (3F2;0B0)OVERLAP_F_B 3B2 "
        "(3F3;0B1)OVERLAP_F_B 3B3 0I2 0W2 0I3 0W3",
        "1F0 2F0 1F1 2F1 1F2 2B0 (2F2;1B0)OVERLAP_F_B (1F3;2B1)OVERLAP_F_B (2F3;1B1)OVERLAP_F_B "
        "2B2 1B2 2I3 1I3 2W3 1W3"],
}


@pytest.mark.parametrize("name", NAMES)
def test_documented_examples(name):
    got = schedule_ops(name, 2, 4)
    want = [[None if a == "_" else a for a in row.split()] for row in EXAMPLES[name]]
    assert got == want


# ---- golden-free properties ----

def _runnable(name, pp, n, spr=None):
    """The order with comms stripped back off: the runnable compute order (1F1B renumbered)."""
    from pipec import _C
    canonical, _, default_spr, _ = _C._sched_info(name)
    return _C._sched_generate(canonical, pp, spr or default_spr, n, fix_1f1b=True)


def _accepted(name, pp, n):
    try:
        schedule_ops(name, pp, n)
        return True
    except ValueError:
        return False


# the (schedule, pp, n) of the golden grid that torch accepts (the others raise: see
# test_constraint_errors and the golden tests)
GRID = [(name, pp, n) for name in NAMES for pp in PPS for n in NS if _accepted(name, pp, n)]


@pytest.mark.parametrize("pp", PPS)
@pytest.mark.parametrize("n", NS)
def test_gpipe_all_forwards_then_all_backwards(pp, n):
    for rank, row in enumerate(schedule_ops("GPipe", pp, n)):
        assert row == [f"{rank}F{m}" for m in range(n)] + [f"{rank}B{m}" for m in range(n)] + [
            f"{rank}REDUCE_GRAD"]


@pytest.mark.parametrize("pp", PPS)
@pytest.mark.parametrize("n", NS)
def test_1f1b_warmup_then_alternate(pp, n):
    if n < pp:
        with pytest.raises(ValueError, match="must be greater than or equal to the number of stages"):
            schedule_ops("1F1B", pp, n)
        return
    for rank, row in enumerate(_runnable("1F1B", pp, n)):
        acts = [a for a in _parse(row) if a is not None and a.computation_type != S.REDUCE_GRAD]
        kinds = "".join(a.computation_type.value for a in acts)
        warmup = pp - 1 - rank
        # warm-up forwards, then F/B pairs, then the remaining backwards
        assert kinds == "F" * warmup + "FB" * (n - warmup) + "B" * warmup
        assert [a.microbatch_index for a in acts if a.computation_type == F] == list(range(n))
        assert [a.microbatch_index for a in acts if a.computation_type == B] == list(range(n))


def test_1f1b_torch_numbering_quirk_is_reproduced():
    """torch's informational 1F1B order numbers the last rank's forwards from 1."""
    order = schedule_ops("1F1B", 3, 4)
    last = [a for a in order[2] if "F" in a and "REDUCE" not in a]
    assert last == ["2F1", "2F2", "2F3", "2F4"]
    with pytest.raises(ScheduleValidationError):
        S.validate(order, 4)
    lowered = schedule_ops("1F1B", 3, 4, with_comms=True)
    assert [a for a in lowered[2] if a.startswith("2F")] == ["2F0", "2F1", "2F2", "2F3"]


@pytest.mark.parametrize("name,pp,n", GRID, ids=[f"{a}-pp{b}-n{c}" for a, b, c in GRID])
def test_orders_are_valid(name, pp, n):
    order = _runnable(name, pp, n)
    spr = 1 if name in ("GPipe", "1F1B") else 2
    n_stages = pp * spr
    mapping = S.validate(order, n)
    style = "v" if name in V_SCHEDULES else "loop"
    assert mapping == S.generate_stage_to_rank_mapping(pp, n_stages, style)
    if style == "v":  # rank r holds stages r and 2pp-1-r
        assert all(mapping[r] == r and mapping[2 * pp - 1 - r] == r for r in range(pp))
    seen = {}
    for rank, row in enumerate(order):
        for a in _leaves(row):
            if a.computation_type not in (F, I, W, B):
                continue
            key = (a.stage_index, a.microbatch_index)
            done = seen.setdefault(key, [])
            if a.computation_type == F:
                assert not done, f"{a} runs twice"
            elif a.computation_type in (I, B):
                assert done == [F], f"{a} before its forward"
            else:
                assert done == [F, I], f"{a} before its input backward"
            done.append(a.computation_type)
    for stage in range(n_stages):
        for m in range(n):
            assert seen.get((stage, m)) in ([F, B], [F, I, W]), (stage, m, seen.get((stage, m)))


@pytest.mark.parametrize("name,pp,n", GRID, ids=[f"{a}-pp{b}-n{c}" for a, b, c in GRID])
def test_with_comms_lowering(name, pp, n):
    lowered = schedule_ops(name, pp, n, with_comms=True)
    mapping = S.validate(lowered, n)
    n_stages = len(mapping)
    sends, recvs = set(), set()
    for rank, row in enumerate(lowered):
        assert None not in row
        done = set()
        for a in _parse(row):
            for leaf in (a.sub_actions or (a,)):
                t, s, m = leaf.computation_type, leaf.stage_index, leaf.microbatch_index
                if t == S.SEND_F:
                    assert (s, F, m) in done and mapping[s + 1] != rank
                    sends.add((s, "F", m))
                elif t == S.SEND_B:
                    assert ((s, I, m) in done or (s, B, m) in done) and mapping[s - 1] != rank
                    sends.add((s, "B", m))
                elif t == S.RECV_F:
                    assert mapping[s - 1] != rank
                    recvs.add((s - 1, "F", m))
                elif t == S.RECV_B:
                    assert mapping[s + 1] != rank
                    recvs.add((s + 1, "B", m))
                elif t == F and s > 0:
                    assert (s, S.RECV_F, m) in done or (s - 1, F, m) in done
                elif t in (I, B) and s < n_stages - 1:
                    assert ((s, S.RECV_B, m) in done or (s + 1, I, m) in done or (s + 1, B, m) in done)
                done.add((s, t, m))
        # one REDUCE_GRAD per local stage, after its last backward work
        for stage in [s for s, r in mapping.items() if r == rank]:
            assert row.count(f"{stage}REDUCE_GRAD") == 1
            last_bw = max(i for i, a in enumerate(row) for leaf in _leaves([a])
                          if leaf.stage_index == stage and leaf.computation_type in (B, W))
            assert row.index(f"{stage}REDUCE_GRAD") > last_bw
    assert sends == recvs
    # every cross-rank hop is covered, and none between stages on one rank
    for s in range(n_stages - 1):
        crosses = mapping[s] != mapping[s + 1]
        assert ((s, "F", 0) in sends) == crosses
        assert ((s + 1, "B", 0) in sends) == crosses
    res = S.simulate(lowered)
    assert res.makespan > 0 and all(0 <= b < 1 for b in res.bubble_fraction)


# ---- names and constraints ----

def test_grid_acceptance():
    """Which grid points torch's constructors reject (1F1B: n < pp; DualPipeV: n < 2 pp)."""
    rejected = {(name, pp, n) for name in NAMES for pp in PPS for n in NS} - set(GRID)
    assert rejected == {("1F1B", pp, n) for pp in PPS for n in NS if n < pp} | {
        ("DualPipeV", pp, n) for pp in PPS for n in NS if n < 2 * pp}


def test_names_case_insensitive_and_unknown():
    assert schedule_ops("gpipe", 2, 2) == schedule_ops("GPipe", 2, 2)
    assert schedule_ops("INTERLEAVED1F1B", 2, 4) == schedule_ops("Interleaved1F1B", 2, 4)
    with pytest.raises(ValueError) as info:
        schedule_ops("ScheduleThatDoesNotExist", 2, 4)
    msg = str(info.value)
    assert "ScheduleThatDoesNotExist" in msg
    for name in NAMES:
        assert f"'{name}'" in msg
    assert S.schedule_names() == NAMES


@pytest.mark.parametrize("name,pp,n,spr,text", [
    ("1F1B", 4, 3, None, "Number of microbatches (3) must be greater than or equal to the number "
                         "of stages (4)."),
    ("Interleaved1F1B", 4, 9, None, "Interleaved 1F1B requires the number of microbatches to be "
                                    "a multiple of the number of rounds (2), but got 9."),
    ("InterleavedZeroBubble", 4, 14, None, "Zero bubble requires the number of microbatches to be "
                                           "a multiple of the number of rounds (3), but got 14."),
    ("ZBVZeroBubble", 2, 4, 3, "ZBV requires exactly 2 stages per rank, but got 3."),
    ("DualPipeV", 2, 8, 1, "ZBV requires exactly 2 stages per rank, but got 1."),
    ("DualPipeV", 4, 6, None, "DualPipeV requires at least as many microbatches as stages, but got "
                              "6 microbatches and 8 stages."),
    ("GPipe", 2, 4, 2, "stages_per_rank must be 1"),
])
def test_constraint_errors(name, pp, n, spr, text):
    with pytest.raises(ValueError) as info:
        schedule_ops(name, pp, n, stages_per_rank=spr)
    assert text in str(info.value)


def test_relaxed_rounds_and_more_stages_per_rank():
    for n in (3, 6, 10):  # rounds 1, 1, 2
        S.validate(_runnable("Interleaved1F1B", 4, n), n)
    order = schedule_ops("Interleaved1F1B", 2, 4, stages_per_rank=3)
    assert S.validate(order, 4) == {s: s % 2 for s in range(6)}
    S.validate(schedule_ops("InterleavedZeroBubble", 2, 4, stages_per_rank=3), 4)
    S.validate(schedule_ops("LoopedBFS", 3, 5, stages_per_rank=4), 5)


def test_stage_to_rank_mapping():
    assert S.generate_stage_to_rank_mapping(2, 4) == {0: 0, 1: 1, 2: 0, 3: 1}
    assert S.generate_stage_to_rank_mapping(2, 4, style="v") == {0: 0, 1: 1, 2: 1, 3: 0}
    assert list(S.generate_stage_to_rank_mapping(4, 12, style="v").values()) == [
        0, 1, 2, 3, 3, 2, 1, 0, 0, 1, 2, 3]
    assert list(S.generate_stage_to_rank_mapping(4, 16, style="v").values())[12:] == [3, 2, 1, 0]
    with pytest.raises(ValueError):
        S.generate_stage_to_rank_mapping(2, 4, style="zigzag")


# ---- actions ----

@pytest.mark.parametrize("text,expected", [
    ("1F0", (1, F, 0)), ("2I1", (2, I, 1)), ("0W3", (0, W, 3)), ("0B3", (0, B, 3)),
    ("1UNSHARD", (1, S.UNSHARD, None)), ("3RESHARD", (3, S.RESHARD, None)),
    ("2SEND_B2", (2, S.SEND_B, 2)), ("1RECV_F1", (1, S.RECV_F, 1)),
    ("0REDUCE_GRAD", (0, S.REDUCE_GRAD, None)), ("2SEND_B3", (2, S.SEND_B, 3)),
])
def test_action_parse_and_round_trip(text, expected):
    a = _Action.from_str(text)
    assert (a.stage_index, a.computation_type, a.microbatch_index) == expected
    assert a.sub_actions is None
    assert str(a) == repr(a) == text
    assert _Action(*expected) == a


def test_overlap_action():
    a = _Action.from_str("(0F3;3B1)OVERLAP_F_B")
    assert a.stage_index == -1 and a.computation_type == S.OVERLAP_F_B and a.microbatch_index is None
    assert a.sub_actions == (_Action(0, F, 3), _Action(3, B, 1))
    assert str(a) == "(0F3;3B1)OVERLAP_F_B"
    assert a.is_compute_op and _Action(0, F, 0).is_compute_op and not _Action(0, S.SEND_F, 0).is_compute_op


@pytest.mark.parametrize("text", ["F0", "1X0", "1F0junk", "(0F3;3B1)", "()OVERLAP_F_B", "0F-1"])
def test_action_parse_errors(text):
    with pytest.raises(RuntimeError, match="Invalid action string"):
        _Action.from_str(text)


def test_blank_action_is_idle():
    assert _Action.from_str("") is None and _Action.from_str("   ") is None


def test_computation_type():
    assert [t.value for t in _ComputationType] == [
        "F", "I", "W", "UNSHARD", "RESHARD", "SEND_F", "RECV_F", "SEND_B", "RECV_B", "B",
        "OVERLAP_F_B", "REDUCE_GRAD"]
    assert _ComputationType.from_str("SEND_F") is S.SEND_F and str(S.FULL_BACKWARD) == "B"
    assert _ComputationType.FORWARD == "F"
    with pytest.raises(RuntimeError):
        _ComputationType.from_str("X")


# ---- CSV ----

def test_csv_round_trip(tmp_path):
    path = tmp_path / "dpv.csv"
    order = schedule_ops("DualPipeV", 4, 10)
    S.dump_csv(path, order)
    raw = path.read_bytes()
    assert raw.count(b"\r\n") == 4 and b"(0F7;7B3)OVERLAP_F_B" in raw
    assert S.load_csv(str(path)) == order
    # idle cells and torch-style {rank: [_Action|None]} input
    zb = {r: _parse(row) for r, row in enumerate(schedule_ops("InterleavedZeroBubble", 2, 8))}
    S.dump_csv(path, zb)
    assert path.read_text().splitlines()[1].startswith(",1F0,1F1,3F0")
    assert S.load_csv(path) == schedule_ops("InterleavedZeroBubble", 2, 8)


def test_csv_errors(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("0F0,0B0\n1F0,oops\n")
    with pytest.raises(RuntimeError, match="row 1"):
        S.load_csv(path)
    with pytest.raises(ValueError, match="cannot open"):
        S.load_csv(tmp_path / "missing.csv")


# ---- lowering passes (torch's TestScheduleLowering expectations) ----

def _acts(text):
    return [None if a == "_" else _Action.from_str(a) for a in text.split()]


def test_unshard_reshard():
    assert S._add_unshard_reshard(["0F0", "0F1", "   ", "0B0", "0B1"]) == _acts(
        "0UNSHARD 0F0 0F1 0B0 0B1 0RESHARD")
    assert S._add_unshard_reshard(_acts("0F0 0F1 1F0 1F1 1B0 1B1 0B0 0B1")) == _acts(
        "0UNSHARD 1UNSHARD 0F0 0F1 1F0 1F1 1B0 1B1 1RESHARD 0B0 0B1 0RESHARD")


def test_reduce_grad():
    assert S._add_reduce_grad(_acts("0F0 0F1 0B0 0B1"), 2) == _acts("0F0 0F1 0B0 0B1 0REDUCE_GRAD")
    assert S._add_reduce_grad(_acts("0F0 0F1 1F0 1F1 1B0 1B1 0B0 0B1"), 2) == _acts(
        "0F0 0F1 1F0 1F1 1B0 1B1 1REDUCE_GRAD 0B0 0B1 0REDUCE_GRAD")


def test_merge_bw():
    assert S._merge_bw(_acts("0F0 0F1 0F2 0I0 0I1 0W0 0I2 0W2 0W1")) == _acts(
        "0F0 0F1 0F2 0I0 0I1 0W0 0B2 0W1")


@pytest.mark.parametrize("compute,comms,mapping,steps", [
    (["0F0 0F1 _ 0B0 _ 0B1", "_ 1F0 1B0 1F1 1B1 _"],
     ["0F0 0SEND_F0 0F1 0SEND_F1 0RECV_B0 0B0 0RECV_B1 0B1",
      "1RECV_F0 1RECV_F1 1F0 1B0 1SEND_B0 1F1 1B1 1SEND_B1"], [0, 1], 11),
    (["0F0 0F1 _ 3F0 3B0 3F1 3B1 0B0 3W0 0B1 3W1 0W0 0W1",
      "_ 1F0 2F0 1F1 2F1 2B0 1B0 2B1 1B1 2W0 2W1 1W0 1W1"],
     ["0F0 0SEND_F0 0F1 0SEND_F1 3RECV_F0 3F0 3B0 3SEND_B0 3RECV_F1 3F1 3B1 3SEND_B1 0RECV_B0 0B0 "
      "3W0 0RECV_B1 0B1 3W1 0W0 0W1",
      "1RECV_F0 1RECV_F1 1F0 2F0 2SEND_F0 1F1 2RECV_B0 2F1 2SEND_F1 2B0 2RECV_B1 1B0 1SEND_B0 2B1 "
      "1B1 1SEND_B1 2W0 2W1 1W0 1W1"], [0, 1, 1, 0], 24),
], ids=["simple_2_rank_2_stage", "v_2_rank_4_stage"])
def test_send_recv(compute, comms, mapping, steps):
    compute = {r: _acts(row) for r, row in enumerate(compute)}
    lowered = S._add_send_recv(compute, lambda s: mapping[s], len(mapping))
    assert lowered == {r: _acts(row) for r, row in enumerate(comms)}
    sim = S._simulate_comms_compute(lowered, lambda s: mapping[s], len(mapping))
    assert max(len(row) for row in sim.values()) == steps


def test_zb1p_merged_lowering_steps():
    """torch's test_csv: ZB1P 2 ranks x 2 stages, 8 mb, merged I+W, lowered: 113 steps."""
    order = schedule_ops("InterleavedZeroBubble", 2, 8)
    merged = {r: S._merge_bw(_parse(row)) for r, row in enumerate(order)}
    lowered = S._add_send_recv(merged, lambda s: s % 2, 4)
    assert [str(a) for a in lowered[0][:13]] == (
        "0F0 0SEND_F0 2RECV_F0 0F1 0SEND_F1 2RECV_F1 2F0 2SEND_F0 2F1 2SEND_F1 2RECV_B0 2B0 "
        "2SEND_B0").split()
    sim = S._simulate_comms_compute(lowered, lambda s: s % 2, 4)
    assert max(len(row) for row in sim.values()) == 113
    assert S.lower(order, merge_bw=True, unshard=False, reduce_grad=False) == [
        [str(a) for a in lowered[r]] for r in range(2)]


def test_malformed_compute_schedule():
    with pytest.raises(ValueError, match="Malformed compute schedule"):
        S._add_send_recv({0: _acts("0B0 0F0"), 1: _acts("1F0 1B0")}, lambda s: s, 2)


# ---- validation ----

def test_validate_ok_and_mapping():
    assert S._validate_schedule({0: _acts("0F0 0B0"), 1: _acts("1F0 1B0")}, 2, 2, 1) == {0: 0, 1: 1}
    assert S._validate_schedule({0: _acts("0F0 0I0 0W0"), 1: _acts("1F0 1I0 1W0")}, 2, 2, 1) == {
        0: 0, 1: 1}


@pytest.mark.parametrize("order,n,text", [
    ({0: "0F0 0B0"}, 1, "incorrect number of ranks - expected 2, actual 1"),
    ({0: "0F0", 1: "1F0"}, 1, "expected 1 total backwards, but got B=0, I=0, W=0"),
    ({0: "0F0 0F1 0B1 0B0", 1: "_ 1B0 1F0 1F1 1B1"}, 2,
     "Rank 1, step 1: Running Full Backward for stage 1, microbatch 0 without first running Forward"),
    ({0: "0F0 0W0 0I0", 1: "1F0 1B0"}, 1,
     "Rank 0, step 1: Running Backward Weight for stage 0, microbatch 0 without first running "
     "Backward Input"),
    ({0: "0F0 1F0 0B0", 1: "1F0 1B0"}, 1, "Stage 1 is assigned to both rank 1 and rank 0"),
    ({0: "0F0 0F0 0B0", 1: "1F0 1B0"}, 1, "runs more than once"),
    ({0: "0F0 0I0 0W0 0B0", 1: "1F0 1B0"}, 1, "both a full backward"),
])
def test_validate_errors(order, n, text):
    actions = {r: _acts(row) for r, row in order.items()}
    with pytest.raises(ScheduleValidationError) as info:
        S._validate_schedule(actions, 2, 2, n)
    assert text in str(info.value)
    assert isinstance(info.value, ValueError) and isinstance(info.value, AssertionError)


def test_validation_error_shows_grid():
    order = [["0F0", "0F1", "0B1", "0B0"], [None, "1B0", "1F0", "1F1", "1B1"]]
    with pytest.raises(ValueError) as info:
        S.validate(order, 2)
    msg = str(info.value)
    lines = msg.splitlines()
    marked = [ln for ln in lines if ln.endswith("<-- ERROR HERE")]
    assert len(marked) == 1 and marked[0].startswith("Step 1:") and "1B0" in marked[0]
    assert any(ln.split() == ["Rank", "0", "Rank", "1"] for ln in lines)
    assert S.format_schedule(order).splitlines()[1].split() == ["Step", "0:", "0F0"]


# ---- simulation ----

def test_simulate_gpipe_bubble():
    res = S.simulate(schedule_ops("GPipe", 2, 4))
    assert res.makespan == pytest.approx(15.0)  # (m + p - 1) * (F + B)
    assert res.bubble_fraction == pytest.approx([0.2, 0.2])  # (p - 1) / (m + p - 1)
    assert res.peak_inflight == [4, 4]
    assert res.busy == pytest.approx([12.0, 12.0])
    # the receive is posted at once; the forward waits for the data
    assert res.timeline[1][:2] == [("1RECV_F0", 0.0, 0.0), ("1F0", 1.0, 2.0)]
    slower = S.simulate(schedule_ops("GPipe", 2, 4), costs={"comm": 0.5})
    assert slower.makespan == pytest.approx(16.0)


def test_simulate_1f1b_memory_and_bubble():
    res = S.simulate(_runnable("1F1B", 4, 8))
    assert res.peak_inflight == [4, 3, 2, 1]  # stage s holds at most pp - s microbatches
    assert res.makespan == pytest.approx(33.0)
    assert res.bubble_fraction[0] == pytest.approx(3 / 11)
    gpipe = S.simulate(schedule_ops("GPipe", 4, 8))
    assert gpipe.makespan == pytest.approx(res.makespan) and gpipe.peak_inflight == [8] * 4


def test_simulate_zero_bubble_beats_1f1b():
    costs = {"F": 1, "B": 2, "I": 1, "W": 1}
    zbv = S.simulate(schedule_ops("ZBVZeroBubble", 4, 8), costs)
    f1b = S.simulate(_runnable("1F1B", 4, 8), costs)
    # ZBV runs 2 half-size stages per rank: give its stages half the cost
    zbv_half = S.simulate(schedule_ops("ZBVZeroBubble", 4, 8), {k: v / 2 for k, v in costs.items()})
    assert zbv_half.makespan < f1b.makespan
    assert max(zbv.bubble_fraction) < max(f1b.bubble_fraction)


def test_simulate_deadlock_names_blocked_actions():
    order = [["0B0", "0F0", "0SEND_F0"], ["1RECV_F0", "1F0", "1B0"]]
    with pytest.raises(ValueError) as info:
        S.simulate(order)
    msg = str(info.value)
    assert "deadlock" in msg
    assert "rank 0 blocked at step 0 on 0B0 (waits for 0F0" in msg
    assert "rank 1 blocked at step 1 on 1F0 (waits for 0SEND_F0 on rank 0)" in msg
    blocking = [["0RECV_B0", "0F0", "0SEND_F0", "0B0"], ["1RECV_F0", "1F0", "1B0", "1SEND_B0"]]
    assert S.simulate(blocking).steps == -1  # torch's blocking lock-step run stalls
    with pytest.raises(ValueError, match="0RECV_B0"):
        S.simulate(blocking, costs={"blocking_recv": True})


def test_simulate_rejects_unknown_cost():
    with pytest.raises(ValueError, match="unknown cost key"):
        S.simulate(schedule_ops("GPipe", 2, 2), costs={"X": 1})

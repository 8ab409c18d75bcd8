"""The order in which the runtime enqueues NCCL work can neither deadlock nor mix messages.

Over NCCL (csrc/comm/nccl.c, runtime multi-process mode) each rank enqueues, in its lowered
action order and without ever blocking the host:
  - compute (F, B, I, W, OVERLAP_F_B) on one compute stream, in order; F waits (an event)
    for its input's posted receive, B/I for their gradients' receives;
  - every SEND and RECV on one communication stream, in order; each first makes that stream
    wait for all compute enqueued before it (the data to send, the buffer to receive into).
NCCL matches point-to-point operations per (sender, receiver) pair in posting order, and a
send and its receive complete together (large messages: rendezvous). This file builds that
dependency graph for every schedule, 2/4/8 ranks and several microbatch counts, with a send
and its matching receive merged into one node, and checks:
  1. no cycle (a cycle is a GPU-side deadlock: a rank's comm stream stuck behind a send
     whose receive sits behind something that waits on it);
  2. the k-th send from A to B and the k-th receive on B from A carry the same value
     (stage, microbatch, direction): NCCL has no tags, so a mismatch would silently deliver
     one tensor into another's buffer.
The model is a chain (MultiMLP-like): stage s sends forward to s+1 and gradients to s-1.
"""
import pytest

from pipec import _C
from pipec.pipelining import schedules as S

SCHEDULES = {"GPipe": ("loop", 1), "1F1B": ("loop", 1), "Interleaved1F1B": ("loop", 2),
             "LoopedBFS": ("loop", 2), "InterleavedZeroBubble": ("loop", 2),
             "ZBVZeroBubble": ("v", 2), "DualPipeV": ("v", 2)}
COMPUTE = {"F", "B", "I", "W", "OVERLAP_F_B"}


def lowered(name, pp, n):
    style, spr = SCHEDULES[name]
    rows = _C._sched_generate(name, pp, spr, n, fix_1f1b=True)
    mapping = list(_C._sched_stage_to_rank(style, pp, pp * spr))
    return S.lower([list(r) for r in rows], n, mapping, merge_bw=False, unshard=False), mapping


def build_graph(orders, mapping):
    """Nodes: ("c", rank, i) compute ops, ("x", rank, i) comm ops (merged with their
    partner). Returns (deps: node -> set of nodes, partner: comm node -> its match)."""
    deps = {}
    posted_recv = {}   # (rank, kind, stage, mb) -> comm node of the receive
    queues = {}        # (src, dst) -> [(value, node)] sends;  recvs likewise
    sends, recvs = {}, {}
    for rank, row in enumerate(orders):
        last_compute, last_comm, computes = None, None, []
        for i, text in enumerate(row):
            a = S._Action.from_str(text)
            kind = str(a.computation_type)
            s, m = a.stage_index, a.microbatch_index
            if kind in COMPUTE:
                node = ("c", rank, i)
                d = {last_compute} if last_compute else set()
                subs = a.sub_actions or [a]
                for sub in subs:
                    sk = str(sub.computation_type)
                    key = (rank, "RECV_F" if sk == "F" else "RECV_B", sub.stage_index,
                           sub.microbatch_index)
                    if sk in ("F", "B", "I") and key in posted_recv:
                        d.add(posted_recv[key])
                deps[node] = d
                last_compute = node
                computes.append(node)
            elif kind in ("SEND_F", "SEND_B", "RECV_F", "RECV_B"):
                node = ("x", rank, i)
                deps[node] = set(computes) | ({last_comm} if last_comm else set())
                last_comm = node
                fwd = kind.endswith("_F")
                if kind.startswith("SEND"):
                    peer_stage = s + 1 if fwd else s - 1
                    value = ("F" if fwd else "B", peer_stage if fwd else s, m)
                    sends.setdefault((rank, mapping[peer_stage]), []).append((value, node))
                else:
                    peer_stage = s - 1 if fwd else s + 1
                    value = ("F" if fwd else "B", s if fwd else peer_stage, m)
                    recvs.setdefault((mapping[peer_stage], rank), []).append((value, node))
                    posted_recv[(rank, kind, s, m)] = node
    partner = {}
    for pair in set(sends) | set(recvs):
        ss, rr = sends.get(pair, []), recvs.get(pair, [])
        assert len(ss) == len(rr), f"{pair}: {len(ss)} sends, {len(rr)} receives"
        for k, ((sv, sn), (rv, rn)) in enumerate(zip(ss, rr)):
            assert sv == rv, (f"ranks {pair}: send #{k} carries {sv} but the receive it "
                              f"meets expects {rv}")
            partner[sn] = rn
            partner[rn] = sn
    return deps, partner


def find_cycle(deps, partner):
    """Kahn's algorithm over merged send/recv nodes; returns the stuck nodes (empty: none)."""
    rep = {n: min(n, partner[n]) if n in partner else n for n in deps}
    merged = {}
    for n, d in deps.items():
        merged.setdefault(rep[n], set()).update(rep[x] for x in d)
    for n in merged:
        merged[n].discard(n)
    indeg = {n: len(d) for n, d in merged.items()}
    users = {}
    for n, d in merged.items():
        for x in d:
            users.setdefault(x, []).append(n)
    ready = [n for n, k in indeg.items() if k == 0]
    done = 0
    while ready:
        n = ready.pop()
        done += 1
        for u in users.get(n, []):
            indeg[u] -= 1
            if indeg[u] == 0:
                ready.append(u)
    return [n for n, k in indeg.items() if k > 0]


def _cases():
    out = []
    for name in SCHEDULES:
        for pp in (2, 4, 8):
            for n in (4, 8, 16, 32):
                spr = SCHEDULES[name][1]
                if name in ("1F1B", "DualPipeV") and n < pp * spr:
                    continue
                if name in ("Interleaved1F1B", "InterleavedZeroBubble") and n % pp:
                    continue
                out.append(pytest.param(name, pp, n, id=f"{name}-pp{pp}-n{n}"))
    return out


@pytest.mark.parametrize("name,pp,n", _cases())
def test_enqueue_order_cannot_deadlock_or_mix_messages(name, pp, n):
    orders, mapping = lowered(name, pp, n)
    deps, partner = build_graph(orders, mapping)
    stuck = find_cycle(deps, partner)
    assert not stuck, (f"{name} pp={pp} n={n}: {len(stuck)} operations can never run, e.g. "
                       f"{sorted(stuck)[:6]}")


def test_the_check_finds_a_deadlock():
    """A hand-made order that deadlocks on one stream per rank: each rank sends before it
    receives what the other sends first... in the opposite order."""
    orders = [["0F0", "0SEND_F0", "0F1", "0SEND_F1", "0RECV_B0", "0B0", "0RECV_B1", "0B1"],
              ["1RECV_F0", "1F0", "1B0", "1SEND_B0", "1RECV_F1", "1F1", "1B1", "1SEND_B1"]]
    deps, partner = build_graph(orders, [0, 1])
    assert find_cycle(deps, partner)


def test_the_check_finds_mixed_messages():
    orders = [["0F0", "0F1", "0SEND_F1", "0SEND_F0", "0RECV_B0", "0B0", "0RECV_B1", "0B1"],
              ["1RECV_F0", "1RECV_F1", "1F0", "1B0", "1SEND_B0", "1F1", "1B1", "1SEND_B1"]]
    with pytest.raises(AssertionError, match="carries"):
        build_graph(orders, [0, 1])

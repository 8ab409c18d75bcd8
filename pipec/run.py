"""pipec.run: start and watch the ranks of a multi-process job (the role torchrun plays).

    python -m pipec.run --nproc-per-node N [--nnodes M --node-rank R
                        --master-addr A --master-port P] script.py args...
    pipec-run ...                  (the same, installed as a command)
    python -m pipec.run --nproc-per-node N -m package.module args...

Each of the N local ranks runs ``python script.py args...`` with ``RANK, WORLD_SIZE,
LOCAL_RANK, LOCAL_WORLD_SIZE, GROUP_RANK, MASTER_ADDR, MASTER_PORT`` set (what
``pipec.distributed.init_process_group`` reads). Their output lines come out prefixed with
``[rankR]: ``. When a rank exits with an error, the launcher stops the others (SIGTERM, then
SIGKILL after ``--stop-timeout`` seconds), prints that rank's error, and exits with its exit
code (128 + signal number when it was killed by a signal). Ctrl-C and SIGTERM stop every rank.

Single node without ``--master-port``: a free port is picked. Multi-node jobs run one launcher
per node with the same ``--nnodes``, ``--master-addr`` and ``--master-port`` (default 29500)
and their own ``--node-rank``.
"""
import argparse
import collections
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time

_STREAM_TAIL = 200  # stderr lines kept per rank for the failure report


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _parser():
    p = argparse.ArgumentParser(
        prog="python -m pipec.run",
        description="Start N ranks of a pipec job on this node and watch them: output is "
                    "prefixed with the rank; if one fails, the others are stopped and the "
                    "launcher exits with its error.")
    p.add_argument("--nproc-per-node", "--nproc_per_node", type=int, required=True,
                   metavar="N", help="ranks to start on this node")
    p.add_argument("--nnodes", type=int, default=1, help="nodes in the job (default 1)")
    p.add_argument("--node-rank", "--node_rank", type=int, default=0,
                   help="this node's index in [0, nnodes) (default 0)")
    p.add_argument("--master-addr", "--master_addr", default="127.0.0.1",
                   help="host of rank 0 (default 127.0.0.1)")
    p.add_argument("--master-port", "--master_port", type=int, default=None,
                   help="port of rank 0's store (default: a free port on one node, 29500 on "
                        "several)")
    p.add_argument("--stop-timeout", type=float, default=5.0, metavar="SECONDS",
                   help="after a failure, how long the other ranks get to exit on SIGTERM "
                        "before SIGKILL (default 5)")
    p.add_argument("-m", "--module", action="store_true",
                   help="run the target as a module (python -m), not a script")
    p.add_argument("script", help="the training script (or module with -m)")
    p.add_argument("script_args", nargs=argparse.REMAINDER, help="its arguments")
    return p


class _Rank:
    """One child process, its output pumps and its stderr tail."""

    def __init__(self, rank, local_rank, proc):
        self.rank = rank
        self.local_rank = local_rank
        self.proc = proc
        self.tail = collections.deque(maxlen=_STREAM_TAIL)
        self.pumps = []


class _Launcher:
    def __init__(self, args):
        self.args = args
        self.ranks = []
        self.exits = queue.Queue()   # (rank index, returncode) in the order they exit
        self.out_lock = threading.Lock()

    # ---- output ----

    def _pump(self, r, stream, out, keep):
        prefix = f"[rank{r.rank}]: ".encode()
        try:
            for line in iter(stream.readline, b""):
                if not line.endswith(b"\n"):
                    line += b"\n"
                if keep:
                    r.tail.append(line.decode("utf-8", "replace").rstrip("\n"))
                with self.out_lock:
                    out.write(prefix + line)
                    out.flush()
        except (OSError, ValueError):  # our own stdout went away; keep draining quietly
            pass
        finally:
            stream.close()

    # ---- processes ----

    def start(self):
        a = self.args
        world = a.nnodes * a.nproc_per_node
        port = a.master_port if a.master_port is not None else (
            _free_port() if a.nnodes == 1 else 29500)
        cmd = [sys.executable, "-u"] + (["-m", a.script] if a.module else [a.script])
        cmd += a.script_args
        for local in range(a.nproc_per_node):
            rank = a.node_rank * a.nproc_per_node + local
            env = dict(os.environ)
            env.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(local),
                       LOCAL_WORLD_SIZE=str(a.nproc_per_node), GROUP_RANK=str(a.node_rank),
                       MASTER_ADDR=a.master_addr, MASTER_PORT=str(port),
                       PYTHONUNBUFFERED="1")
            # each rank leads its own process group, so stopping it stops its children too
            proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    start_new_session=True)
            r = _Rank(rank, local, proc)
            self.ranks.append(r)
            for stream, out, keep in ((proc.stdout, sys.stdout.buffer, False),
                                      (proc.stderr, sys.stderr.buffer, True)):
                t = threading.Thread(target=self._pump, args=(r, stream, out, keep),
                                     daemon=True)
                t.start()
                r.pumps.append(t)
            threading.Thread(target=self._wait, args=(len(self.ranks) - 1,), daemon=True).start()

    def _wait(self, i):
        self.exits.put((i, self.ranks[i].proc.wait()))

    def _signal_all(self, sig):
        for r in self.ranks:
            if r.proc.poll() is None:
                try:
                    os.killpg(r.proc.pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass

    def stop_all(self):
        """SIGTERM every live rank, SIGKILL those still alive after the grace period."""
        self._signal_all(signal.SIGTERM)
        deadline = time.monotonic() + self.args.stop_timeout
        for r in self.ranks:
            try:
                r.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        self._signal_all(signal.SIGKILL)
        for r in self.ranks:
            r.proc.wait()

    def drain(self):
        for r in self.ranks:
            for t in r.pumps:
                t.join(timeout=2.0)

    # ---- the watch loop ----

    def watch(self):
        """Exit status of the job: 0, or the first failing rank's code."""
        left = len(self.ranks)
        while left:
            try:
                i, rc = self.exits.get(timeout=0.2)
            except queue.Empty:
                continue
            left -= 1
            if rc != 0:
                self.stop_all()
                self.drain()
                self.report(self.ranks[i], rc)
                return rc if rc > 0 else 128 - rc
        self.drain()
        return 0

    def report(self, r, rc):
        if rc < 0:
            try:
                name = signal.Signals(-rc).name
            except ValueError:
                name = f"signal {-rc}"
            how = f"was killed by {name}"
        else:
            how = f"exited with code {rc}"
        lines = list(r.tail)
        start = max((k for k, s in enumerate(lines) if s.startswith("Traceback (most recent")),
                    default=max(0, len(lines) - 20))
        err = lines[start:]
        msg = [f"pipec.run: rank {r.rank} (local rank {r.local_rank}, pid {r.proc.pid}) {how}; "
               f"the other ranks were stopped."]
        if err:
            msg.append(f"pipec.run: rank {r.rank}'s error:")
            msg += ["  " + s for s in err]
        with self.out_lock:
            sys.stderr.write("\n".join(msg) + "\n")
            sys.stderr.flush()


class _Interrupted(Exception):
    def __init__(self, sig):
        self.sig = sig


def main(argv=None):
    args = _parser().parse_args(argv)
    if args.nproc_per_node < 1:
        raise SystemExit("pipec.run: --nproc-per-node must be >= 1")
    if args.nnodes < 1 or not 0 <= args.node_rank < args.nnodes:
        raise SystemExit(f"pipec.run: --node-rank must be in [0, --nnodes={args.nnodes})")
    if args.script_args[:1] == ["--"]:
        args.script_args = args.script_args[1:]

    def on_signal(sig, frame):
        raise _Interrupted(sig)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    launcher = _Launcher(args)
    try:
        launcher.start()
        return launcher.watch()
    except _Interrupted as e:
        for s, h in old.items():
            signal.signal(s, h)
        launcher.stop_all()
        launcher.drain()
        sys.stderr.write(f"pipec.run: stopped by {signal.Signals(e.sig).name}\n")
        return 128 + e.sig
    except BaseException:
        launcher.stop_all()
        raise


if __name__ == "__main__":
    sys.exit(main())

"""What the pipeline benchmarks share: the configurations (those of
shared/bench/torch_baseline_2xH200.md, plus a CPU smoke test and the 16-layer scale-out
ones), the schedule names, and launching a multi-process side (pipec.run or torchrun) whose
rank 0 prints ``RESULT <json>`` lines."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIGS = {
    "tiny": dict(d_hid=64, batch=32, n_mb=4, layers=4, dtype="float32"),
    "small": dict(d_hid=1024, batch=256, n_mb=8, layers=8, dtype="float32"),
    "large": dict(d_hid=8192, batch=1024, n_mb=8, layers=8, dtype="float32"),
    "large_bf16": dict(d_hid=8192, batch=1024, n_mb=8, layers=8, dtype="bfloat16"),
    "large_mb32": dict(d_hid=8192, batch=2048, n_mb=32, layers=8, dtype="float32"),
    # the scale-out configs (4 and 8 GPUs): 16 layers
    "deep_f32_mb8": dict(d_hid=8192, batch=1024, n_mb=8, layers=16, dtype="float32"),
    "deep_f32_mb32": dict(d_hid=8192, batch=2048, n_mb=32, layers=16, dtype="float32"),
    "deep_bf16_mb8": dict(d_hid=8192, batch=1024, n_mb=8, layers=16, dtype="bfloat16"),
    "deep_bf16_mb32": dict(d_hid=8192, batch=2048, n_mb=32, layers=16, dtype="bfloat16"),
}
SCHEDULES = ["GPipe", "1F1B", "Interleaved1F1B", "LoopedBFS", "InterleavedZeroBubble",
             "ZBVZeroBubble", "DualPipeV"]
MULTI = {"Interleaved1F1B", "LoopedBFS", "InterleavedZeroBubble", "ZBVZeroBubble", "DualPipeV"}


def launch(side, nproc, worker, master_port):
    """Run `worker` (a script and its arguments) on nproc ranks with pipec.run (side
    "pipec") or torchrun ("torch"), echoing its output; returns rank 0's RESULT records."""
    if side == "pipec":
        cmd = [sys.executable, "-m", "pipec.run", "--nproc-per-node", str(nproc)] + worker
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
               "--master-port", str(master_port)] + worker
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    print("$ " + " ".join(cmd), flush=True)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    out = []
    for line in proc.stdout:
        sys.stdout.write(line)
        # pipec.run prefixes "[rankN]: "; torch's own warnings start "[rank0]:[W..." too
        body = line.split("]: ", 1)[1] if line.startswith("[rank") and "]: " in line else line
        if body.startswith("RESULT "):
            out.append(json.loads(body[len("RESULT "):]))
    proc.wait()
    if proc.returncode:
        print(f"{side} job exited with {proc.returncode}", flush=True)
    return out


def report(text, out=None):
    """Print a result table and write it to `out` when given."""
    print(text)
    if out:
        with open(out, "w") as f:
            f.write(text)
